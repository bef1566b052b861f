"""The SQL behind the dashboard, over the flow store's tables (`flowtui.store.schema`). Headless.

Every screen reads *stream rows*: one normalized record per logged event (or per flow row when a
store kept no events), with the same columns whatever the source, so one filter language
(`flowtui.tui.filters`) compiles to one `WHERE` clause for all of them:

    time, node, action, verdict, proto, src_ip, dst_ip, sport, dport, icmp_type, icmp_code,
    src_type, src_namespace, src_name, src_labels, dst_type, dst_namespace, dst_name, dst_labels,
    tier, policy_kind, policy_namespace, policy_name, rule_index, direction, policy_revision,
    rule_id, prefix, packets, bytes

`verdict` is the action in lower case (allow, deny, pass, log). Endpoint `type` is `wep` (pod),
`hep`, `node`, `external`, `netset` or `net` as the collector's enrichment names them.
"""

from __future__ import annotations

from typing import Any

STREAM_COLUMNS = (
    "time", "node", "action", "verdict", "proto", "src_ip", "dst_ip", "sport", "dport", "icmp_type", "icmp_code",
    "src_type", "src_namespace", "src_name", "src_labels", "dst_type", "dst_namespace", "dst_name", "dst_labels",
    "tier", "policy_kind", "policy_namespace", "policy_name", "rule_index", "direction", "policy_revision",
    "rule_id", "prefix", "packets", "bytes",
)


def events_stream(events: str = "events") -> str:
    """Stream rows from an events relation (the table, or a registered Arrow batch)."""
    return f"""
SELECT e.time AS time, s.node AS node, e.action AS action, lower(e.action) AS verdict,
  e.proto AS proto, e.src_ip AS src_ip, e.dst_ip AS dst_ip, e.sport AS sport, e.dport AS dport,
  e.icmp_type AS icmp_type, e.icmp_code AS icmp_code,
  se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name, se.labels AS src_labels,
  de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name, de.labels AS dst_labels,
  r.tier AS tier, r.kind AS policy_kind, r.namespace AS policy_namespace, r.name AS policy_name,
  r.rule AS rule_index, r.direction AS direction, r.revision AS policy_revision,
  e.rule_id AS rule_id, e.prefix AS prefix, 1::BIGINT AS packets, coalesce(e.length, 0)::BIGINT AS bytes
FROM {events} e
LEFT JOIN sources s ON s.source_id = e.source_id
LEFT JOIN rules r ON r.id = e.rule_id
LEFT JOIN endpoints se ON se.id = e.src_ep
LEFT JOIN endpoints de ON de.id = e.dst_ep"""


def _ns(column: str) -> str:
    return f"nullif(any_value({column}), '-')"


FLOWS_STREAM = f"""
SELECT min(coalesce(f.first_seen, f.start_time)) AS time, f.node AS node, f.action AS action,
  lower(f.action) AS verdict, f.proto AS proto, f.src_ip AS src_ip, f.dst_ip AS dst_ip, f.sport AS sport,
  f.dport AS dport, NULL::UTINYINT AS icmp_type, NULL::UTINYINT AS icmp_code,
  any_value(f.src_type) AS src_type, {_ns('f.src_namespace')} AS src_namespace, any_value(f.src_name) AS src_name,
  any_value(f.src_labels) AS src_labels,
  any_value(f.dst_type) AS dst_type, {_ns('f.dst_namespace')} AS dst_namespace, any_value(f.dst_name) AS dst_name,
  any_value(f.dst_labels) AS dst_labels,
  any_value(f.tier) AS tier, any_value(f.policy_kind) AS policy_kind,
  any_value(f.policy_namespace) AS policy_namespace, any_value(f.policy_name) AS policy_name,
  any_value(f.rule_index) AS rule_index, any_value(r.direction) AS direction,
  any_value(f.policy_revision) AS policy_revision, f.rule_id AS rule_id, any_value(f.prefix) AS prefix,
  greatest(sum(f.packets), sum(f.events))::BIGINT AS packets, sum(f.bytes)::BIGINT AS bytes
FROM flows_v f LEFT JOIN rules r ON r.id = f.rule_id
GROUP BY f.start_time, f.node, f.action, f.rule_id, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport"""


def flow_rows(since: str | None = None, base: str = "flows", extra: str = "") -> str:
    """One stream-shaped row per stored flow row (not yet summed over its partial rows), straight
    from the tables, with `_bucket`, `_events`, `_src_ep`, `_dst_ep` for the grouping: a filter
    applies here, before the sum, so it reads only the rows it keeps (`since`: a SQL timestamp,
    flows ending after it only; the zone maps of `end_time` skip the rest). `base`: the flows
    relation (`flows`, or a subquery of it), `extra`: more of its columns, `, f.x AS x`."""
    window = f"\nWHERE f.end_time > {since}" if since else ""
    return f"""
SELECT coalesce(f.first_seen, f.start_time) AS time, s.node AS node, f.action AS action,
  lower(f.action) AS verdict, f.proto AS proto, f.src_ip AS src_ip, f.dst_ip AS dst_ip, f.sport AS sport,
  f.dport AS dport, NULL::UTINYINT AS icmp_type, NULL::UTINYINT AS icmp_code,
  se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name, se.labels AS src_labels,
  de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name, de.labels AS dst_labels,
  r.tier AS tier, r.kind AS policy_kind, r.namespace AS policy_namespace, r.name AS policy_name,
  r.rule AS rule_index, r.direction AS direction, r.revision AS policy_revision,
  f.rule_id AS rule_id, f.prefix AS prefix, f.packets AS packets, f.bytes AS bytes,
  f.start_time AS _bucket, f.events AS _events, f.src_ep AS _src_ep, f.dst_ep AS _dst_ep{extra}
FROM {base} f
LEFT JOIN sources s ON s.source_id = f.source_id
LEFT JOIN rules r ON r.id = f.rule_id
LEFT JOIN endpoints se ON se.id = f.src_ep
LEFT JOIN endpoints de ON de.id = f.dst_ep{window}"""


def flows_stream(where: str | None, since: str | None = None) -> str:
    """`FLOWS_STREAM` rows that `where` keeps, filtered per flow row before the sum (a filter
    names only columns that are the same on every partial row of a flow: never time or counts)."""
    rows = filtered(flow_rows(since), where)
    return f"""
SELECT min(time) AS time, node, action, any_value(verdict) AS verdict, proto, src_ip, dst_ip, sport, dport,
  NULL::UTINYINT AS icmp_type, NULL::UTINYINT AS icmp_code,
  any_value(src_type) AS src_type, any_value(src_namespace) AS src_namespace, any_value(src_name) AS src_name,
  any_value(src_labels) AS src_labels, any_value(dst_type) AS dst_type, any_value(dst_namespace) AS dst_namespace,
  any_value(dst_name) AS dst_name, any_value(dst_labels) AS dst_labels, any_value(tier) AS tier,
  any_value(policy_kind) AS policy_kind, any_value(policy_namespace) AS policy_namespace,
  any_value(policy_name) AS policy_name, any_value(rule_index) AS rule_index, any_value(direction) AS direction,
  any_value(policy_revision) AS policy_revision, rule_id, any_value(prefix) AS prefix,
  greatest(sum(packets), sum(_events))::BIGINT AS packets, sum(bytes)::BIGINT AS bytes
FROM ({rows}) AS rows
GROUP BY _bucket, node, action, rule_id, proto, src_ip, dst_ip, sport, dport"""


def stream_where(kind: str, where: str | None, since: str | None = None) -> str:
    """The stream rows `where` keeps, newer than `since` (a SQL timestamp) if given: the filter
    and the time bound reach the table scan (DuckDB cannot push them through `FLOWS_STREAM`'s sums)."""
    if kind == "events":
        return filtered(events_stream() + (f"\nWHERE e.time > {since}" if since else ""), where)
    return flows_stream(where, since)


def stream_span_sql(kind: str) -> str:
    """The oldest and newest stream time (bounds of `stream_where`'s `since`)."""
    if kind == "events":
        return "SELECT min(time), max(time) FROM events"
    return "SELECT min(start_time), max(end_time) FROM flows"


def stream_sql(kind: str) -> str:
    """`events` (per logged packet) or `flows` (per flow row of a bucket)."""
    return events_stream() if kind == "events" else FLOWS_STREAM


def filtered(base: str, where: str | None) -> str:
    return f"SELECT * FROM ({base}\n) AS stream" + (f"\nWHERE {where}" if where else "")


ENDPOINT_ROWS = ("SELECT id, type AS ep_type, namespace AS ep_namespace, name AS ep_name, labels AS ep_labels "
                 "FROM endpoints")


def endpoint_ids_sql(need: str) -> str:
    """The ids of the endpoints that meet `need` (one of `CompiledFilter.endpoint_needs`)."""
    return f"SELECT id FROM ({ENDPOINT_ROWS}) WHERE {need} ORDER BY id"


def with_endpoint_ids(where: str | None, ids: list[list[int]]) -> str:
    """`where` over `flow_rows`, first keeping the rows with an end among each list of `ids` (the
    endpoints that meet each need: no other row can match): integers on the flows table itself,
    compared before any join, where the filter compares the joined endpoints' strings per row."""
    parts = [f"(_src_ep IN ({', '.join(map(str, i))}) OR _dst_ep IN ({', '.join(map(str, i))}))" for i in ids]
    return " AND ".join(parts + ([f"({where})"] if where else []))


def recent_sql(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
    """The newest `limit` matching stream rows (newer than `since`, if given), oldest first."""
    inner = f"SELECT * FROM ({stream_where(kind, where, since)})" + f"\nORDER BY time DESC LIMIT {int(limit)}"
    return f"SELECT * FROM ({inner}) ORDER BY time"


def _reduced(rows: str) -> str:
    """Rows with a `second` column -> one row per flow and second, as `flowtable.reduce` makes."""
    from flowtui.tui.flowtable import FIRST, KEY, MAX_PORTS

    keys = ", ".join(KEY)
    firsts = ", ".join(f"arg_min({c}, time) AS {c}" for c in FIRST)
    return f"""
SELECT {keys}, second, min(time) AS first_seen, max(time) AS last_seen,
  coalesce(sum(packets), count(*))::BIGINT AS packets, coalesce(sum(bytes), 0)::BIGINT AS bytes,
  count(*) AS events, list_slice(list(DISTINCT sport) FILTER (WHERE sport IS NOT NULL), 1, {MAX_PORTS}) AS ports,
  {firsts}
FROM ({rows}) AS rows GROUP BY {keys}, second
ORDER BY first_seen, second, {keys}"""  # ties (a Log event and its packet's verdict): by key, stably


def flows_view_sql(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
    """The newest `limit` matching flows of the flows view, reduced as `flowtable.reduce` reduces a
    batch: one row per flow and second of its last `RATE_WINDOW` seconds, and one (second -1) for
    everything before; `FlowTable.append_reduced` folds them in."""
    from flowtui.tui.flowtable import KEY, RATE_WINDOW

    keys = ", ".join(KEY)
    same = " AND ".join(f"s.{k} IS NOT DISTINCT FROM k.{k}" for k in KEY)
    rows = (f"SELECT s.*, CASE WHEN s.time > newest.t - INTERVAL {RATE_WINDOW} SECOND "
            f"THEN epoch_us(s.time) // 1000000 ELSE -1 END AS second FROM s JOIN k ON {same} CROSS JOIN newest")
    return f"""
WITH s AS ({stream_where(kind, where, since)}),
newest AS (SELECT max(time) AS t FROM s),
k AS (SELECT {keys}, max(time) AS last FROM s GROUP BY ALL ORDER BY last DESC LIMIT {int(limit)})
{_reduced(rows)}"""


def flows_window_sql(kind: str, where: str | None) -> str:
    """Matching stream rows with `time` in (?, ?], reduced per flow and second (the flows view's
    live tail: every row counts, however many arrived, unlike `window_sql`'s row limit)."""
    cond = "time > ? AND time <= ?" + (f" AND ({where})" if where else "")
    return _reduced(f"SELECT *, epoch_us(time) // 1000000 AS second FROM ({filtered(stream_sql(kind), cond)})")


def window_sql(kind: str, where: str | None, limit: int) -> str:
    """Matching stream rows with `time` in (?, ?], oldest first (the live tail of a store)."""
    cond = "time > ? AND time <= ?" + (f" AND ({where})" if where else "")
    return filtered(stream_sql(kind), cond) + f"\nORDER BY time LIMIT {int(limit)}"


def endpoint_label(side: str) -> str:
    """How screens name an endpoint: `ns/pod`, `hep:NAME`, `node:NAME`, `external:NAME`, or the IP."""
    return (
        f"CASE {side}_type WHEN 'wep' THEN coalesce({side}_namespace || '/', '') || {side}_name "
        f"WHEN 'hep' THEN 'hep:' || {side}_name WHEN 'node' THEN 'node:' || {side}_name "
        f"WHEN 'external' THEN 'external:' || {side}_name WHEN 'netset' THEN 'netset:' || {side}_name "
        f"ELSE {side}_ip END"
    )


def conversations_sql(kind: str, where: str | None, limit: int = 500) -> str:
    """Stream rows aggregated by endpoint pair (termshark's conversations).

    Counted per flow (5-tuple), by its final verdict: denied if any node denied it (a denied
    connection is also *allowed* by its source's egress policy, and both decisions are logged);
    packets and bytes per flow are those of the reporter (node and direction) that saw the most,
    not the sum of both ends, and `Log` events (copies of packets another rule decided) do not count."""
    base = filtered(stream_sql(kind), where)
    service = ("CASE proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' "
               "ELSE CAST(proto AS VARCHAR) END || coalesce('/' || CAST(dport AS VARCHAR), '')")
    policy = "coalesce(policy_namespace || '/', '') || policy_name"
    return f"""
WITH per_reporter AS (
  SELECT {endpoint_label('src')} AS source, {endpoint_label('dst')} AS destination, proto, src_ip, dst_ip,
    sport, dport, node, direction, bool_or(verdict = 'deny') AS denied, bool_or(verdict = 'log') AS logged,
    coalesce(sum(packets) FILTER (WHERE verdict <> 'log'), 0) AS packets,
    coalesce(sum(bytes) FILTER (WHERE verdict <> 'log'), 0) AS bytes, max(time) AS last_seen,
    list(DISTINCT {policy}) FILTER (WHERE policy_name IS NOT NULL) AS policies
  FROM ({base}) AS s
  GROUP BY ALL
), per_flow AS (
  SELECT source, destination, proto, src_ip, dst_ip, sport, dport, bool_or(denied) AS denied,
    bool_or(logged) AS logged, max(packets) AS packets, max(bytes) AS bytes, max(last_seen) AS last_seen,
    flatten(list(policies)) AS policies
  FROM per_reporter GROUP BY ALL
)
SELECT source, destination,
  count(*) FILTER (WHERE NOT denied) AS allowed,
  count(*) FILTER (WHERE denied) AS denied,
  count(*) FILTER (WHERE logged) AS logged,
  sum(packets)::BIGINT AS packets, sum(bytes)::BIGINT AS bytes,
  string_agg(DISTINCT {service}, ' ' ORDER BY {service}) AS services,
  array_to_string(list_sort(list_distinct(flatten(list(policies)))), ', ') AS policies,
  max(last_seen) AS last_seen
FROM per_flow
GROUP BY source, destination
ORDER BY sum(packets) DESC, count(*) DESC, source, destination
LIMIT {int(limit)}"""


def _pair_label(side: str) -> str:
    """`endpoint_label` for a `flow_pairs` row: its address only when the endpoint is unknown."""
    return (f"coalesce(CASE {side}_type WHEN 'wep' THEN coalesce({side}_namespace || '/', '') || {side}_name "
            f"ELSE {side}_type || ':' || {side}_name END, _{side}_ip)")


def pair_rows_sql(rolled_until: str | None, pairs_until: str | None = None) -> str:
    """`flow_pairs` over the whole store, the rollup's reach `rolled_until` (a SQL timestamp, or None:
    nothing rolled up) spelled out: the raw flows after it are then found by their zone maps, where
    the view's bound, a subquery, makes DuckDB read every row's start_time. With `pairs_until`
    (`totals_state.pairs_until`, at or before `rolled_until`): `pair_totals` for the hours before it
    (one row per pair: ~14x fewer rows than `pair_hours` over 24 h), `pair_hours` from there."""
    from flowtui.store.schema import pair_hours_sql

    cols = ("src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied, flows, connections, packets, bytes, "
            "reply_packets, reply_bytes, first_seen, last_seen")
    if rolled_until is None:
        return f"SELECT {cols} FROM ({pair_hours_sql('true')})"
    hours = f"SELECT {cols} FROM pair_hours WHERE hour < {rolled_until}"
    if pairs_until is not None:
        hours = (f"SELECT {cols} FROM pair_totals UNION ALL "
                 f"SELECT {cols} FROM pair_hours WHERE hour >= {pairs_until} AND hour < {rolled_until}")
    return f"{hours} UNION ALL SELECT {cols} FROM ({pair_hours_sql(f'f.start_time >= {rolled_until}')})"


_ENDS = ("se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name, se.labels AS src_labels, "
         "de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name, de.labels AS dst_labels")
# What a pair's label needs (`_pair_label`): naming ~160k pairs, the labels lists cost 10x more.
_NAMES = ("se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name, "
          "de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name")
_ENDS_JOIN = "LEFT JOIN endpoints se ON se.id = {t}.src_ep LEFT JOIN endpoints de ON de.id = {t}.dst_ep"
_SERVICE = ("CASE proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' "
            "ELSE CAST(proto AS VARCHAR) END || coalesce('/' || CAST(dport AS VARCHAR), '')")


def conversations_rollup_sql(where: str | None, rolled_until: str | None, limit: int = 500,
                             pairs_until: str | None = None) -> str:
    """`conversations_sql` from the `pair_hours` rollup (flows counted as `flows_once` counts them:
    once per 5-tuple and time bucket, both reporters merged, denied if either side denied), for
    filters on what a pair row knows: the endpoints (type, namespace, name, labels), proto, dport
    and the final verdict (allow or deny). Any other column is unknown here, so a filter on it
    fails to bind (DuckDB's BinderException) and the caller falls back to `conversations_sql`.
    Summed per endpoint ids first (few rows), then named, and the pairs' ids listed for the rows
    shown only (the top `limit`); `services`, `logged` and `policies`
    are left empty: `conversation_details_sql` reads them for the pairs shown (`_ids`)."""
    pairs = f"""
SELECT p.src_ep AS _src_ep, p.src_ip AS _src_ip, p.dst_ep AS _dst_ep, p.dst_ip AS _dst_ip, p.proto, p.dport,
  CASE WHEN p.denied THEN 'Deny' ELSE 'Allow' END AS action, CASE WHEN p.denied THEN 'deny' ELSE 'allow' END AS verdict,
  p.flows AS _flows, p.packets AS _packets, p.bytes AS _bytes, p.last_seen AS _last_seen{', ' + _ENDS if where else ''}
FROM ({pair_rows_sql(rolled_until, pairs_until)}) p {_ENDS_JOIN.format(t='p') if where else ''}"""
    return f"""
WITH by_ids AS (
  SELECT _src_ep, _src_ip, _dst_ep, _dst_ip,
    coalesce(sum(_flows) FILTER (WHERE verdict = 'allow'), 0) AS allowed,
    coalesce(sum(_flows) FILTER (WHERE verdict = 'deny'), 0) AS denied,
    sum(_flows) AS flows, sum(_packets) AS packets, sum(_bytes) AS bytes, max(_last_seen) AS last_seen
  FROM ({filtered(pairs, where)}) AS pairs
  GROUP BY _src_ep, _src_ip, _dst_ep, _dst_ip
), named AS (
  SELECT {_pair_label('src')} AS source, {_pair_label('dst')} AS destination, b.* FROM (
    SELECT b.*, {_NAMES} FROM by_ids b
    LEFT JOIN endpoints se ON se.id = b._src_ep LEFT JOIN endpoints de ON de.id = b._dst_ep) b
), top AS (
  SELECT source, destination, sum(allowed)::BIGINT AS allowed, sum(denied)::BIGINT AS denied, 0::BIGINT AS logged,
    sum(packets)::BIGINT AS packets, sum(bytes)::BIGINT AS bytes, '' AS services, '' AS policies,
    max(last_seen) AS last_seen, sum(flows) AS _flows
  FROM named GROUP BY source, destination
  ORDER BY packets DESC, _flows DESC, source, destination LIMIT {int(limit)}
)
SELECT t.* EXCLUDE (_flows),
  list({{'src_ep': _src_ep, 'src_ip': _src_ip, 'dst_ep': _dst_ep, 'dst_ip': _dst_ip}}) AS _ids
FROM top t JOIN named n ON n.source = t.source AND n.destination = t.destination
GROUP BY ALL
ORDER BY t.packets DESC, any_value(t._flows) DESC, t.source, t.destination"""


def _shown_flows(relation: str, columns: str) -> str:
    """The rows of `relation` (flows or pair rows) of the pairs in `_shown` (source, destination and
    one of its endpoint ids each: src_ep, src_ip, dst_ep, dst_ip; the address only where the id is
    NULL), with `_source` and `_destination`: known endpoints joined on their ids (integers: fast),
    pairs with an unknown end on their addresses too, among the rows with an unknown end only."""
    labels = "shown.source AS _source, shown.destination AS _destination"
    second = columns.replace("f.*", "f.* EXCLUDE (_src_addr, _dst_addr)")
    return f"""
SELECT {columns}, {labels} FROM {relation} f
JOIN (SELECT * FROM _shown WHERE src_ep IS NOT NULL AND dst_ep IS NOT NULL) shown
  ON f.src_ep = shown.src_ep AND f.dst_ep = shown.dst_ep
UNION ALL
SELECT {second}, {labels} FROM (SELECT *, CASE WHEN src_ep IS NULL THEN src_ip END AS _src_addr,
    CASE WHEN dst_ep IS NULL THEN dst_ip END AS _dst_addr FROM {relation} WHERE src_ep IS NULL OR dst_ep IS NULL) f
JOIN (SELECT * FROM _shown WHERE src_ep IS NULL OR dst_ep IS NULL) shown
  ON f.src_ep IS NOT DISTINCT FROM shown.src_ep AND f.dst_ep IS NOT DISTINCT FROM shown.dst_ep
  AND f._src_addr IS NOT DISTINCT FROM shown.src_ip AND f._dst_addr IS NOT DISTINCT FROM shown.dst_ip"""


def conversation_details_sql(where: str | None, rolled_until: str | None, pairs_until: str | None = None) -> str:
    """Per pair shown (`_shown`, see `_shown_flows`): its services (proto/dport, from the pair rows),
    the flows a `Log` rule logged and the policies that decided (from its flow rows; `where`
    applies to each as it applies to the stream)."""
    policy = "coalesce(policy_namespace || '/', '') || policy_name"
    pair_cols = ("f.proto, f.dport, CASE WHEN f.denied THEN 'Deny' ELSE 'Allow' END AS action, "
                 "CASE WHEN f.denied THEN 'deny' ELSE 'allow' END AS verdict, f.src_ep, f.dst_ep")
    shown = _shown_flows(f"({pair_rows_sql(rolled_until, pairs_until)})", pair_cols)
    pairs = f"SELECT p.*, {_ENDS} FROM ({shown}) p " + _ENDS_JOIN.format(t="p")
    base = f"({_shown_flows('flows', 'f.*')})"
    rows = filtered(flow_rows(base=base, extra=", f._source AS _source, f._destination AS _destination"), where)
    return f"""
WITH services AS (
  SELECT _source, _destination, string_agg(DISTINCT {_SERVICE}, ' ' ORDER BY {_SERVICE}) AS services
  FROM ({filtered(pairs, where)}) GROUP BY _source, _destination
), extras AS (
  SELECT _source, _destination,
    count(DISTINCT (_bucket, proto, src_ip, dst_ip, sport, dport)) FILTER (WHERE verdict = 'log') AS logged,
    array_to_string(list_sort(list(DISTINCT {policy}) FILTER (WHERE policy_name IS NOT NULL)), ', ') AS policies
  FROM ({rows}) GROUP BY _source, _destination
)
SELECT coalesce(s._source, e._source) AS source, coalesce(s._destination, e._destination) AS destination,
  coalesce(s.services, '') AS services, coalesce(e.logged, 0) AS logged, coalesce(e.policies, '') AS policies
FROM services s FULL JOIN extras e ON s._source = e._source AND s._destination = e._destination"""


def rule_activity_sql(kind: str, relations: frozenset[str] = frozenset()) -> str:
    """Per rule id: how often it decided (events) and when last, from the stored stream: from the
    `rule_hits_all` rollup view (and the open buckets of a store being written) when the store has
    it and flows, else from the events or flows themselves. `relations`: the source's tables and views."""
    if "rule_hits_all" in relations and (kind == "flows" or "has_flows" in relations):
        open_rows = ("UNION ALL SELECT rule_id, sum(events) AS events, max(last_seen) AS last_seen FROM flows_open "
                     "WHERE rule_id IS NOT NULL GROUP BY rule_id " if "flows_open" in relations else "")
        return ("SELECT rule_id, sum(events)::BIGINT AS hits, max(last_seen) AS last_hit FROM ("
                f"SELECT rule_id, events, last_seen FROM rule_hits_all {open_rows}) GROUP BY rule_id")
    if kind == "events":
        return "SELECT rule_id, count(*)::BIGINT AS hits, max(time) AS last_hit FROM events " \
               "WHERE rule_id IS NOT NULL GROUP BY rule_id"
    return "SELECT rule_id, sum(events)::BIGINT AS hits, max(last_seen) AS last_hit FROM flows " \
           "WHERE rule_id IS NOT NULL GROUP BY rule_id"


# The latest nft counter value per rule id and reader, summed over readers, for the latest run.
RULE_COUNTERS_SQL = """
SELECT rule_id, sum(packets)::BIGINT AS packets, max(time) AS time FROM (
  SELECT rule_id, source_id, arg_max(packets, time) AS packets, max(time) AS time
  FROM rule_counters WHERE run_id = (SELECT max(run_id) FROM rule_counters) AND rule_id IS NOT NULL
  GROUP BY rule_id, source_id
) GROUP BY rule_id"""

RULES_SQL = "SELECT id, kind, namespace, name, tier, revision, direction, rule, action FROM rules"

LOSS_SQL = """
SELECT cause, sum(events)::BIGINT FROM loss_latest
WHERE run_id = (SELECT max(run_id) FROM runs) GROUP BY cause ORDER BY cause"""

RECEIVED_SQL = """
SELECT coalesce(sum(value), 0)::BIGINT, max(time) FROM stats_latest
WHERE run_id = (SELECT max(run_id) FROM runs) AND name = 'received'"""

RUN_SQL = "SELECT run_id, started, ended, host, pid FROM runs ORDER BY run_id DESC LIMIT 1"

FLOWS_COUNT_SQL = "SELECT count(*) FROM flows"
EVENTS_COUNT_SQL = "SELECT count(*) FROM events"


RECORDED_EXTRAS_SQL = """
SELECT DISTINCT l7, other_policies FROM flows_v
WHERE src_ip = $src_ip AND dst_ip = $dst_ip AND proto IS NOT DISTINCT FROM $proto
  AND sport IS NOT DISTINCT FROM $sport AND dport IS NOT DISTINCT FROM $dport
  AND rule_id IS NOT DISTINCT FROM $rule_id AND action = $action AND (l7 IS NOT NULL OR other_policies IS NOT NULL)
ORDER BY l7 LIMIT 100"""


def recorded_extras(con: Any, row: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What an import recorded for a stream row's flow beyond its rule: the L7 summaries (Hubble's
    proxy records) and the further policies the source named for the verdict, in its order. Empty
    for the collector's flows and for stores older than these columns."""
    have = {r[0] for r in con.execute("DESCRIBE SELECT * FROM flows_v").fetchall()}
    if not {"l7", "other_policies"} <= have or row.get("src_ip") is None or row.get("dst_ip") is None:
        return [], []
    params = {k: row.get(k) for k in ("src_ip", "dst_ip", "proto", "sport", "dport", "rule_id", "action")}
    l7: dict[str, None] = {}
    policies: dict[str, None] = {}
    for summary, others in con.execute(RECORDED_EXTRAS_SQL, params).fetchall():
        if summary is not None:
            l7[summary] = None
        policies.update(dict.fromkeys(others or ()))
    return list(l7), list(policies)
