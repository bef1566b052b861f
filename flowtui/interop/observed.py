"""What every flow import produces, and the one writer that puts it into a flow store.

Each foreign format (`hubble`, `calico`) parses into a `Parsed`: `Observation`s (one per event
or per aggregated record, with the deciding rule, the endpoints and the counts the format has),
the records it skipped on purpose (replies, trace points: `skipped`, by reason) and the records
it could not read (`problems`, each with its line). `write_import` writes a `Parsed` through the
store's writer API (`DuckStore.begin_run/add_source/insert_rows/insert/end_run`), so imported
flows get whatever the store derives from its tables; `flowtui.whatif.sources` turns the same
`Parsed` into a what-if flow frame. One parser per format, two consumers.

Imports are keyed by content: the run of an import records the SHA-256 of the bytes it read
(`runs.config.sha256`), and `imported_run` finds it, so importing the same file twice stores
nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from enforcer.ruleids import RuleRef
from flowtui.collector.attribution import policy_hit
from flowtui.store import schema

SHOWN_PROBLEMS = 5  # problems reported in full; the rest as a count per reason
CILIUM_SHORT = {"CiliumNetworkPolicy": "cnp", "CiliumClusterwideNetworkPolicy": "ccnp"}
IMPLICIT = ("EndOfTier", "NoProfileMatch", "Default", "ProxyRedirect")


@dataclass(frozen=True)
class RuleKey:
    """A rule as an import names it (the `rules` table's columns but the id)."""

    kind: str
    namespace: str | None
    name: str
    tier: str | None
    revision: int
    direction: str
    rule: int | None
    action: str
    trigger_kind: str | None


@dataclass(frozen=True)
class EndpointKey:
    type: str
    namespace: str | None
    name: str
    labels: tuple[str, ...]


@dataclass
class Observation:
    """One event (`end` None: bucketed like the collector's events) or one aggregated record
    (`end` set: stored as one flow row over [time, end), as Calico's flow logs count)."""

    time: datetime | None  # None: the record had no time (what-if can use it; an import cannot)
    node: str
    action: str
    proto: int | None
    src_ip: str | None
    dst_ip: str | None
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None
    tcp_flags: int | None
    rule: RuleKey
    src: EndpointKey | None
    dst: EndpointKey | None
    src_addresses: tuple[str, ...]
    dst_addresses: tuple[str, ...]
    decision: bool = True  # a policy verdict, a drop, or an event naming a policy
    opening: bool = True  # not a reply; for TCP, SYN without ACK
    end: datetime | None = None
    packets: int = 1
    bytes: int | None = None
    reply_packets: int = 0
    reply_bytes: int = 0
    events: int = 1
    started: int | None = None  # None: one per Allow event
    completed: int = 0
    steps: tuple[RuleKey, ...] = ()  # Pass hits before the verdict (Calico's enforced trace)
    pending: tuple[RuleKey, ...] = ()  # staged policies' verdicts (Calico's pending trace)
    line: int = 0  # where in its file
    l7: str | None = None  # a proxy's request summary (Hubble L7 records): `http GET /x 200`, `dns q A NOERROR`
    others: tuple[RuleKey, ...] = ()  # further rules named for the same verdict (Hubble: every policy listed)


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str
    detail: str


@dataclass
class Parsed:
    format: str
    observations: list[Observation] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # records that are not flows, on purpose
    problems: list[Problem] = field(default_factory=list)  # records that could not be read
    lost: dict[str, int] = field(default_factory=dict)  # node ('' = unknown) -> events the source lost
    lines: int = 0

    def problem(self, line: int, reason: str, detail: str) -> None:
        self.problems.append(Problem(line, reason, detail))

    def problem_lines(self, source: str) -> list[str]:
        """The first problems in full (`FILE:LINE: reason: detail`), then a count per reason."""
        out = [f"{source}:{p.line}: {p.reason}: {p.detail}" for p in self.problems[:SHOWN_PROBLEMS]]
        rest = Counter(p.reason for p in self.problems[SHOWN_PROBLEMS:])
        if rest:
            out.append(f"{source}: {sum(rest.values()):,} more malformed records: "
                       + ", ".join(f"{reason} {n:,}" for reason, n in sorted(rest.items())))
        return out


@dataclass
class ImportResult:
    format: str
    source: str
    sha256: str
    lines: int
    records: int  # observations stored
    flow_rows: int
    run_id: int | None  # None: nothing written (this content was imported before, or nothing read)
    nodes: list[str]
    rules_added: int
    endpoints_added: int
    skipped: dict[str, int]
    malformed: int
    lost: int
    duplicate_of: int | None = None  # the run that imported the same content before

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def imported_run(store: Any, sha256: str) -> int | None:
    """The run that imported content with this digest, if any."""
    rows = store.query("SELECT run_id FROM runs WHERE json_extract_string(config, '$.sha256') = ? "
                       "ORDER BY run_id LIMIT 1", [sha256])
    return int(rows[0][0]) if rows else None


def policy_string(key: RuleKey) -> str:
    """The `rules.policy` text: Calico's flow-log hit string (Cilium kinds keep their own)."""
    if key.kind in CILIUM_SHORT or key.rule is None:
        short = CILIUM_SHORT.get(key.kind, key.kind.lower())
        name = f"{key.namespace}/{key.name}" if key.namespace else key.name
        rule = "-" if key.rule is None else str(key.rule)
        return f"0|{key.tier or 'default'}|{short}:{name}|{key.action.lower()}|{rule}"
    ref = RuleRef(0, key.kind, key.namespace, key.name, key.tier, key.revision, key.direction, key.rule,
                  key.action, key.trigger_kind)
    return policy_hit(ref)


def _when(o: Observation) -> datetime:
    assert o.time is not None, "timeless_to_problems() runs first"
    return o.time


def timeless_to_problems(parsed: Parsed) -> None:
    """A store keeps times: records without one become problems of an import."""
    for o in parsed.observations:
        if o.time is None:
            parsed.problem(o.line, "no_time", "the record has no time")
    parsed.observations = [o for o in parsed.observations if o.time is not None]


def write_import(store: Any, parsed: Parsed, *, source: str, sha256: str, bucket_seconds: float = 15.0,
                 keep_events: bool = True) -> ImportResult:
    """Write `parsed` into `store` (a `flowtui.store.duckdb_store.DuckStore`) as one new run.

    Events are kept as `events` rows and aggregated into `flows` per time bucket like the
    collector does (`count_source` = the format, one packet per event); aggregated records become
    one flow row each with their own window and counts, their Pass steps as `Pass` rows and their
    staged verdicts as `Log` rows (a staged policy observes, it does not decide) of the same key.
    Rules are reused when an identical row exists; endpoints form one new revision.
    """
    timeless_to_problems(parsed)
    obs = parsed.observations
    run_id = store.begin_run({"import": parsed.format, "source": source, "sha256": sha256,
                              "bucket": bucket_seconds})
    nodes = sorted({o.node for o in obs} | {n for n in parsed.lost if n})
    source_ids = {node: store.add_source(run_id, None, node, (), 0) for node in nodes}
    rule_ids, rules_added = _rules(store, obs)
    ep_ids, endpoints_added = _endpoints(store, obs)
    events = [o for o in obs if o.end is None]
    records = [o for o in obs if o.end is not None]
    event_table = _events_table(events, source_ids, rule_ids, ep_ids)
    if keep_events:
        store.insert("events", event_table)
    flows = [_aggregate(event_table, bucket_seconds, parsed.format)] if events else []
    if records:
        flows.append(_record_flows(records, source_ids, rule_ids, ep_ids, parsed.format))
    flow_rows = sum(store.insert("flows", table) for table in flows)
    # What landed, per reporter: every event row (kept in `events` or not, it is in `flows`) and every
    # record, counted from the tables just inserted: `flowtui status` shows it beside `received`.
    stored = Counter(event_table.column("source_id").to_pylist())
    stored.update(source_ids[o.node] for o in records)
    now = max((o.end or _when(o) for o in obs), default=None) or datetime.now()
    store.insert_rows("stats", [
        {"time": now, "run_id": run_id, "source_id": source_ids[node], "name": name, "value": value}
        for node in nodes for name, value in (("received", sum(1 for o in obs if o.node == node)),
                                              ("stored", stored[source_ids[node]]))
    ] + [
        {"time": now, "run_id": run_id, "source_id": None, "name": f"{parsed.format}_skipped_{reason}", "value": n}
        for reason, n in sorted(parsed.skipped.items())
    ] + ([{"time": now, "run_id": run_id, "source_id": None, "name": f"{parsed.format}_malformed",
           "value": len(parsed.problems)}] if parsed.problems else []))
    store.insert_rows("loss", [
        {"time": now, "run_id": run_id, "source_id": source_ids.get(node), "cause": f"{parsed.format}_lost_events",
         "events": n, "detail": f"{parsed.format} LostEvent records in the imported file"}
        for node, n in sorted(parsed.lost.items())
    ])
    store.end_run(run_id)
    return ImportResult(
        format=parsed.format, source=source, sha256=sha256, lines=parsed.lines, records=len(obs),
        flow_rows=flow_rows, run_id=run_id, nodes=nodes, rules_added=rules_added,
        endpoints_added=endpoints_added, skipped={k: v for k, v in parsed.skipped.items() if v},
        malformed=len(parsed.problems), lost=sum(parsed.lost.values()),
    )


def _rules(store: Any, obs: list[Observation]) -> tuple[dict[RuleKey, int], int]:
    existing: dict[RuleKey, int] = {}
    for row in store.query("SELECT id, kind, namespace, name, tier, revision, direction, rule, action, trigger_kind "
                           "FROM rules ORDER BY id"):
        existing.setdefault(RuleKey(row[1], row[2], row[3], row[4], int(row[5] or 0), row[6], row[7], row[8],
                                    row[9]), int(row[0]))
    first_use: dict[RuleKey, datetime] = {}
    for o in obs:
        for key in (*o.steps, o.rule, *o.others, *o.pending):  # trace order: ids ascend along a record's trace
            if key not in first_use or _when(o) < first_use[key]:
                first_use[key] = _when(o)
    next_rule = store.next_id("rules", "id")
    new_rules = []
    ids: dict[RuleKey, int] = {}
    for key in sorted(first_use, key=lambda k: first_use[k]):  # stable: insertion order among equal times
        if key in existing:
            ids[key] = existing[key]
            continue
        ids[key] = next_rule
        new_rules.append({**vars(key), "id": next_rule, "prefix": None, "policy": policy_string(key),
                          "first_seen": first_use[key]})
        next_rule += 1
    store.insert_rows("rules", new_rules)
    return ids, len(new_rules)


def _endpoints(store: Any, obs: list[Observation]) -> tuple[dict[EndpointKey, int], int]:
    revision = store.next_id("endpoints", "revision")
    next_ep = store.next_id("endpoints", "id")
    ids: dict[EndpointKey, int] = {}
    rows: dict[int, dict[str, Any]] = {}
    loaded_at = min((_when(o) for o in obs), default=None)
    for o in obs:
        for key, addresses, local in ((o.src, o.src_addresses, o.rule.direction == "egress"),
                                      (o.dst, o.dst_addresses, o.rule.direction == "ingress")):
            if key is None:
                continue
            if key not in ids:
                ids[key] = next_ep
                rows[next_ep] = {"id": next_ep, "revision": revision, "type": key.type, "namespace": key.namespace,
                                 "name": key.name, "node": key.name if key.type == "hep" else None,
                                 "labels": list(key.labels), "addresses": [], "loaded_at": loaded_at}
                next_ep += 1
            row = rows[ids[key]]
            for address in addresses:
                if address not in row["addresses"]:
                    row["addresses"].append(address)
            if local and row["node"] is None and key.type in ("wep", "node"):
                row["node"] = key.name if key.type == "node" and key.name != "remote-node" else o.node
    store.insert_rows("endpoints", list(rows.values()))
    return ids, len(rows)


def _events_table(obs: list[Observation], source_ids: dict[str, int], rule_ids: dict[RuleKey, int],
                  ep_ids: dict[EndpointKey, int]) -> pa.Table:
    n = len(obs)
    cols: dict[str, list[Any]] = {
        "time": [o.time for o in obs],
        "source_id": [source_ids[o.node] for o in obs],
        "action": [o.action for o in obs],
        "rule_id": [rule_ids[o.rule] for o in obs],
        "ip_version": [None if o.src_ip is None else 6 if ":" in o.src_ip else 4 for o in obs],
        "proto": [o.proto for o in obs],
        "src_ip": [o.src_ip for o in obs],
        "dst_ip": [o.dst_ip for o in obs],
        "sport": [o.sport for o in obs],
        "dport": [o.dport for o in obs],
        "icmp_type": [o.icmp_type for o in obs],
        "icmp_code": [o.icmp_code for o in obs],
        "tcp_flags": [o.tcp_flags for o in obs],
        "src_ep": [ep_ids.get(o.src) if o.src else None for o in obs],
        "dst_ep": [ep_ids.get(o.dst) if o.dst else None for o in obs],
        "l7": [o.l7 for o in obs],
        "other_rule_ids": [_other_ids(o, rule_ids) for o in obs],
    }
    arrays = [pa.array(cols[c.name], c.arrow) if c.name in cols else pa.nulls(n, c.arrow)
              for c in schema.EVENTS.columns]
    return pa.Table.from_arrays(arrays, schema=schema.EVENTS.full_arrow_schema)


def _other_ids(o: Observation, rule_ids: dict[RuleKey, int]) -> list[int] | None:
    return [rule_ids[k] for k in o.others] or None


def _aggregate(events: pa.Table, bucket_seconds: float, count_source: str) -> pa.Table:
    """Events into flow rows per bucket and key, like the collector (one packet per event)."""
    con = duckdb.connect()
    try:
        con.register("observed", events)
        micros = max(1, int(round(bucket_seconds * 1e6)))
        result = con.sql(f"""
            SELECT time_bucket(INTERVAL {micros} MICROSECONDS, time) AS start_time,
                   time_bucket(INTERVAL {micros} MICROSECONDS, time) + INTERVAL {micros} MICROSECONDS AS end_time,
                   source_id, action, rule_id, NULL::VARCHAR AS prefix, proto, src_ip, dst_ip, sport, dport,
                   any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, count(*) AS events, count(*) AS packets,
                   NULL::BIGINT AS bytes, 0::BIGINT AS reply_packets, 0::BIGINT AS reply_bytes,
                   CASE WHEN action = 'Allow' THEN count(*) ELSE 0 END AS connections_started,
                   0::BIGINT AS connections_completed, bit_or(tcp_flags) AS tcp_flags,
                   min(time) AS first_seen, max(time) AS last_seen, $source AS count_source, l7, other_rule_ids
            FROM observed
            GROUP BY 1, 2, source_id, action, rule_id, proto, src_ip, dst_ip, sport, dport, l7, other_rule_ids
            ORDER BY 1, source_id""", params={"source": count_source}).to_arrow_table()
    finally:
        con.close()
    return result.cast(schema.FLOWS.full_arrow_schema)


def _record_flows(records: list[Observation], source_ids: dict[str, int], rule_ids: dict[RuleKey, int],
                  ep_ids: dict[EndpointKey, int], count_source: str) -> pa.Table:
    cols: dict[str, list[Any]] = {c.name: [] for c in schema.FLOWS.columns}  # every column, optional ones too
    counted = ("events", "packets", "bytes", "reply_packets", "reply_bytes", "connections_started",
               "connections_completed")

    def add(o: Observation, action: str, rule: RuleKey, counts: tuple[Any, ...] | None) -> None:
        for name, value in (("start_time", o.time), ("end_time", o.end), ("source_id", source_ids[o.node]),
                            ("action", action), ("rule_id", rule_ids[rule]), ("prefix", None), ("proto", o.proto),
                            ("src_ip", o.src_ip), ("dst_ip", o.dst_ip), ("sport", o.sport), ("dport", o.dport),
                            ("src_ep", ep_ids.get(o.src) if o.src else None),
                            ("dst_ep", ep_ids.get(o.dst) if o.dst else None), ("tcp_flags", o.tcp_flags),
                            ("first_seen", o.time), ("last_seen", o.end), ("count_source", count_source),
                            ("l7", o.l7), ("other_rule_ids", _other_ids(o, rule_ids) if rule == o.rule else None)):
            cols[name].append(value)
        for name, value in zip(counted, counts or (0,) * len(counted), strict=True):
            cols[name].append(value)

    for o in records:
        for step in o.steps:
            add(o, "Pass", step, None)
        add(o, o.action, o.rule, (o.events, o.packets, o.bytes, o.reply_packets, o.reply_bytes,
                                  o.events if o.started is None else o.started, o.completed))
        for hit in o.pending:
            add(o, "Log", hit, None)
    tschema = schema.FLOWS.full_arrow_schema
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in tschema], schema=tschema)


def json_lines(lines: Iterable[str], parsed: Parsed) -> Iterator[tuple[int, Any]]:
    """(line number, document) of each non-blank JSON line; a line that is not JSON is recorded in
    `parsed` as a problem and skipped, and every line read is counted there."""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        parsed.lines += 1
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            parsed.problem(number, "not_json", exc.msg)
        except RecursionError:
            parsed.problem(number, "not_json", "nested too deeply")
