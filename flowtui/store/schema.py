"""The flow store's schema: every table and column, with what it means. One source of truth.

The DDL, the `COMMENT ON` documentation inside the database (so `duckdb_columns()` and any SQL
tool show it), the Arrow schemas the writer inserts with, and the Markdown reference
(`python -m flowtui.store.schema`) are all generated from `TABLES` and `VIEWS` below.

Conventions: times are UTC `TIMESTAMP` (microseconds). Identifiers are small integers that join
other tables: `events.rule_id -> rules.id`, `*.source_id -> sources.source_id`,
`events.src_ep/dst_ep -> endpoints.id`. Every table except `rules`, `endpoints`, `runs`,
`sources` and `flows_open` is append-only and time-ordered, which is what retention and the
snapshot rely on. A store written by an older version gains the newer columns and tables in
place the first time a writer opens it (existing rows keep their values; new columns are NULL).
Counters in `loss` and `stats` are cumulative per run: the latest row per (run, source, cause)
is the current value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    sql: str
    doc: str
    # Only some writers have it (imports: a proxy's L7 summary, further deciding rules); the others
    # leave it out of their Arrow tables and it is NULL. Optional columns come last in a table (the
    # collector's batches are then the table's first columns; the store inserts by name anyway).
    optional: bool = False

    @property
    def arrow(self) -> pa.DataType:
        return _ARROW[self.sql]


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        """The columns every writer supplies (the collector's batches have exactly these)."""
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns if not c.optional])

    @property
    def full_arrow_schema(self) -> pa.Schema:
        """Every column, in the DDL's order (optional ones included)."""
        return pa.schema([pa.field(c.name, c.arrow) for c in self.columns])

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def ddl(self) -> str:
        cols = ",\n  ".join(f"{c.name} {c.sql}" for c in self.columns)
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n  {cols}\n)"


_ARROW: dict[str, pa.DataType] = {
    "TIMESTAMP": pa.timestamp("us"),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "UINTEGER": pa.uint32(),
    "USMALLINT": pa.uint16(),
    "UTINYINT": pa.uint8(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "VARCHAR": pa.string(),
    "VARCHAR[]": pa.list_(pa.string()),
    "INTEGER[]": pa.list_(pa.int32()),
}


def _c(name: str, sql: str, doc: str, optional: bool = False) -> Column:
    return Column(name, sql, doc, optional)


# What foreign flow sources record beyond the 5-tuple and one rule (imports only; NULL for the collector)
_IMPORTED = (
    _c("l7", "VARCHAR", "A proxy's summary of the request, from imported Hubble L7 records: `http GET "
       "http://x/metrics` (method, URL, status when the record has one), `dns www.example.com. A NOERROR` "
       "(query, types, rcode), `kafka produce orders 0` (API, topic, error code); NULL for packets.",
       optional=True),
    _c("other_rule_ids", "INTEGER[]", "Further rules the source named for this same verdict, in its order -> "
       "rules.id (Hubble lists every policy that allowed or denied a flow; `rule_id` is the first); NULL "
       "when it named one or none.", optional=True),
)


_TUPLE = (
    _c("proto", "UTINYINT", "IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6); NULL if not decoded."),
    _c("src_ip", "VARCHAR", "Source address as text (IPv4 dotted, IPv6 RFC 5952)."),
    _c("dst_ip", "VARCHAR", "Destination address as text."),
    _c("sport", "USMALLINT", "Source port (TCP, UDP, SCTP, UDP-Lite, DCCP); NULL otherwise."),
    _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
)

EVENTS = Table(
    "events",
    "One row per NFLOG event: a packet that an nftables rule logged with an `ft:` prefix. Optional "
    "(`flowtui collect --no-events`); flows are aggregated from the same events.",
    (
        _c("time", "TIMESTAMP", "Kernel timestamp of the packet; the receive time for hooks without one (output)."),
        _c("source_id", "INTEGER", "Which NFLOG reader (run, namespace) received it -> sources."),
        _c("nflog_group", "USMALLINT", "NFLOG group the rule logged to (1 verdicts, 2 Log actions)."),
        _c("seq", "UINTEGER", "Per-group NFLOG sequence number (NFULNL_CFG_F_SEQ); gaps are kernel drops."),
        _c("hook", "UTINYINT", "Netfilter hook (0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting)."),
        _c("prefix", "VARCHAR", "The log prefix as received, e.g. `ft:D7`."),
        _c("action", "VARCHAR", "Allow, Deny, Pass or Log, from the prefix letter; NULL for foreign prefixes."),
        _c("rule_id", "INTEGER", "Rule identifier from the prefix -> rules.id (that id's policy revision)."),
        _c("ip_version", "UTINYINT", "4 or 6; NULL when the payload was not an IP packet."),
        *_TUPLE,
        _c("icmp_type", "UTINYINT", "ICMP/ICMPv6 type; NULL otherwise."),
        _c("icmp_code", "UTINYINT", "ICMP/ICMPv6 code; NULL otherwise."),
        _c("tcp_flags", "UTINYINT", "TCP flags byte (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, ...); NULL if not TCP."),
        _c("length", "UINTEGER", "IP datagram length from its header, in bytes (GSO super-packets count once)."),
        _c("indev", "UINTEGER", "Input interface index in the reporting namespace; NULL if none."),
        _c("outdev", "UINTEGER", "Output interface index; NULL if none."),
        _c("mark", "UINTEGER", "Packet mark; NULL if zero/absent."),
        _c("src_ep", "INTEGER", "Source endpoint -> endpoints.id (as known when the event was stored)."),
        _c("dst_ep", "INTEGER", "Destination endpoint -> endpoints.id."),
        *_IMPORTED,
    ),
)

FLOWS = Table(
    "flows",
    "Events aggregated per time bucket and key (reporter namespace, rule, action, 5-tuple; for imports "
    "also the L7 summary and the further rules), plus the "
    "packet/byte counts of allowed connections from conntrack. Narrow on purpose (ids, not names): "
    "`flows_v` joins in the node, the policy and the endpoints. Rows are partial aggregates: a late "
    "event or a conntrack record adds a row with the same key, so always SUM over the key "
    "(the `flow_summary` view does).",
    (
        _c("start_time", "TIMESTAMP", "Start of the time bucket."),
        _c("end_time", "TIMESTAMP", "End of the time bucket (start + bucket length)."),
        _c("source_id", "INTEGER", "Reporting NFLOG reader (node) -> sources."),
        _c("action", "VARCHAR", "Allow, Deny, Pass or Log. Flows are never merged across actions."),
        _c("rule_id", "INTEGER", "Deciding rule -> rules.id; NULL for foreign prefixes."),
        _c("prefix", "VARCHAR", "NFLOG prefix of the deciding rule."),
        *_TUPLE,
        _c("src_ep", "INTEGER", "Source endpoint -> endpoints.id (resolved when the events were stored)."),
        _c("dst_ep", "INTEGER", "Destination endpoint -> endpoints.id."),
        _c("events", "BIGINT", "NFLOG events aggregated into this row."),
        _c(
            "packets",
            "BIGINT",
            "Packets in the original direction: events for Deny/Pass/Log rows, conntrack counters for "
            "Allow (rows with count_source = 'conntrack'; Allow NFLOG rows carry 0, so sums never double count).",
        ),
        _c("bytes", "BIGINT", "Bytes in the original direction, counted like `packets`."),
        _c("reply_packets", "BIGINT", "Packets in the reply direction (conntrack)."),
        _c("reply_bytes", "BIGINT", "Bytes in the reply direction (conntrack)."),
        _c("connections_started", "BIGINT", "Allowed connections whose first packet was logged in this bucket."),
        _c("connections_completed", "BIGINT", "Connections whose conntrack entry ended in this bucket."),
        _c("tcp_flags", "UTINYINT", "OR of the TCP flags of the events."),
        _c("first_seen", "TIMESTAMP", "Earliest event (or connection end) in this row."),
        _c("last_seen", "TIMESTAMP", "Latest event (or connection end) in this row."),
        _c("count_source", "VARCHAR", "`nflog` (events) or `conntrack` (a connection's counters); for "
           "imports the format (`hubble`, `calico`)."),
        *_IMPORTED,
    ),
)

FLOWS_OPEN = Table(
    "flows_open",
    "Partial flows of the time buckets that are still open, committed in the same transaction as "
    "the events they aggregate (every insert, at least every second), so a crash of the collector "
    "costs no committed event its flow. When a bucket closes its rows move to `flows` (summed, in one "
    "transaction); after a crash the next run moves them. Same columns as `flows`; the query views "
    "read `flows` only.",
    FLOWS.columns,
)

CONNECTIONS = Table(
    "connections",
    "Conntrack DESTROY events with accounting, from each reporting namespace: the packet and byte "
    "counts of allowed connections (needs net.netfilter.nf_conntrack_acct=1 there).",
    (
        _c("time", "TIMESTAMP", "When the connection ended (the event was received)."),
        _c("source_id", "INTEGER", "Reporting namespace's reader -> sources."),
        _c("start_time", "TIMESTAMP", "Connection start if nf_conntrack_timestamp=1, else NULL."),
        *_TUPLE,
        _c("packets", "BIGINT", "Packets in the original direction."),
        _c("bytes", "BIGINT", "Bytes in the original direction."),
        _c("reply_packets", "BIGINT", "Packets in the reply direction."),
        _c("reply_bytes", "BIGINT", "Bytes in the reply direction."),
        _c("rule_id", "INTEGER", "The Allow rule whose event opened it, if one was seen -> rules.id."),
    ),
)

RULES = Table(
    "rules",
    "Every rule identifier the compiler allocated (rules.jsonl), one row per id. An id names one "
    "rule of one policy revision and is never reused.",
    (
        _c("id", "INTEGER", "The identifier in the NFLOG prefix `ft:<A|D|P|L><id>`."),
        _c("kind", "VARCHAR", "Policy kind: GlobalNetworkPolicy, NetworkPolicy, KubernetesNetworkPolicy or "
           "ClusterNetworkPolicy (Calico's KubernetesClusterNetworkPolicy, short kind kcnp); or Profile / "
           "EndOfTier / NoProfileMatch / Default / Failsafe."),
        _c("namespace", "VARCHAR", "Policy namespace; NULL for global kinds (GlobalNetworkPolicy, "
           "ClusterNetworkPolicy) and profiles."),
        _c("name", "VARCHAR", "Policy or profile name (for EndOfTier: the trigger policy)."),
        _c("tier", "VARCHAR", "Tier name."),
        _c("revision", "BIGINT", "Policy revision the rule belongs to."),
        _c("direction", "VARCHAR", "ingress or egress."),
        _c("rule", "INTEGER", "Rule index as written; -1 for end of tier and defaults."),
        _c("action", "VARCHAR", "Allow, Deny, Pass or Log."),
        _c("trigger_kind", "VARCHAR", "For EndOfTier: the trigger policy's kind (one of the policy kinds "
           "above)."),
        _c("prefix", "VARCHAR", "The NFLOG prefix of this id."),
        _c("policy", "VARCHAR", "Calico flow-log hit string for this rule, e.g. "
           "`0|kube-admin|kcnp:deny-south|deny|0`."),
        _c("first_seen", "TIMESTAMP", "When the collector first read this id."),
    ),
)

ENDPOINTS = Table(
    "endpoints",
    "Endpoint metadata by revision: each load of the cluster's resources adds a revision; ids are "
    "never reused, so an event keeps the metadata that was current when it was stored.",
    (
        _c("id", "INTEGER", "Endpoint id (events.src_ep / dst_ep)."),
        _c("revision", "INTEGER", "Resource revision this row belongs to."),
        _c("type", "VARCHAR", "wep (pod), hep (host endpoint), node, external (lab host), netset, net."),
        _c("namespace", "VARCHAR", "Kubernetes namespace (pods, namespaced network sets)."),
        _c("name", "VARCHAR", "Pod, host endpoint, node, host or set name; pvt/pub for `net`."),
        _c("node", "VARCHAR", "Node the endpoint lives on."),
        _c("labels", "VARCHAR[]", "Labels as `key=value`."),
        _c("addresses", "VARCHAR[]", "Addresses or CIDRs that map to it."),
        _c("loaded_at", "TIMESTAMP", "When this revision was loaded."),
    ),
)

RUNS = Table(
    "runs",
    "One row per collector run.",
    (
        _c("run_id", "INTEGER", "Run number."),
        _c("started", "TIMESTAMP", "Start time."),
        _c(
            "ended",
            "TIMESTAMP",
            "End time: the clean stop, or for a crashed run its last heartbeat (set by the next run, which "
            "closes it); NULL while running, or after a crash until the next run starts.",
        ),
        _c("host", "VARCHAR", "Host name."),
        _c("pid", "INTEGER", "Collector process id."),
        _c("config", "VARCHAR", "Collector configuration (JSON)."),
        _c(
            "heartbeat",
            "TIMESTAMP",
            "Last sign of life: the writer updates it every second. `flowtui status` shows a run without "
            "`ended` as running only while its process holds the store (and is alive, on this host).",
        ),
        _c(
            "outcome",
            "VARCHAR",
            "`stopped` (clean end), `crashed` (killed or failed: closed by the next run, its open flows "
            "recovered and the events it never stored counted as `collector_down` loss); NULL while running.",
        ),
    ),
)

SOURCES = Table(
    "sources",
    "One row per NFLOG reader: a (run, network namespace) pair.",
    (
        _c("source_id", "INTEGER", "Reader id."),
        _c("run_id", "INTEGER", "-> runs."),
        _c("netns", "VARCHAR", "Network namespace name; NULL for the host namespace."),
        _c("node", "VARCHAR", "Node name (from the lab namespace name) or host name."),
        _c("groups", "VARCHAR", "NFLOG groups bound, comma separated."),
        _c("rcvbuf", "BIGINT", "Receive buffer granted by the kernel, bytes."),
    ),
)

LOSS = Table(
    "loss",
    "Events lost, by cause, cumulative per run and reader (latest row = current value). Every "
    "event the kernel logged is either stored or counted here.",
    (
        _c("time", "TIMESTAMP", "When the value was recorded."),
        _c("run_id", "INTEGER", "-> runs."),
        _c("source_id", "INTEGER", "-> sources; NULL for process-wide causes."),
        _c(
            "cause",
            "VARCHAR",
            "kernel_ratelimit (nft `limit` before `log`, from rule counters), rcvbuf_overrun (socket "
            "buffer full: sequence gaps, plus counter comparison for losses at the end of a burst), "
            "writer_backlog (received but dropped because the writer was behind), malformed (unreadable "
            "message), store_error (insert failed), dataset_error (flow rows the cluster flows "
            "dataset could not take), collector_down (logged by the kernel while no collector "
            "stored them: events in flight when a run died and events logged until the next run started; "
            "from the rule counters at the next start, attributed to the run before the gap).",
        ),
        _c("events", "BIGINT", "Events lost so far in this run."),
        _c("detail", "VARCHAR", "How it was measured."),
    ),
)

STATS = Table(
    "stats",
    "Other collector counters, cumulative per run (latest row = current value): received, stored, "
    "enobufs (overrun reports), unknown_rule, foreign_prefix, unexpected_messages, unknown_attributes, "
    "conntrack_events, queue_peak_bytes, ...",
    (
        _c("time", "TIMESTAMP", "When the value was recorded."),
        _c("run_id", "INTEGER", "-> runs."),
        _c("source_id", "INTEGER", "-> sources; NULL for process-wide counters."),
        _c("name", "VARCHAR", "Counter name."),
        _c("value", "BIGINT", "Value."),
    ),
)

RULE_COUNTERS = Table(
    "rule_counters",
    "Snapshots of the nftables counters of rules that log with an `ft:` prefix: the exact number "
    "of packets a rule matched, also when its logging is rate-limited.",
    (
        _c("time", "TIMESTAMP", "When the counters were read."),
        _c("run_id", "INTEGER", "-> runs."),
        _c("source_id", "INTEGER", "Namespace's reader -> sources."),
        _c("prefix", "VARCHAR", "Log prefix of the rule."),
        _c("rule_id", "INTEGER", "-> rules.id."),
        _c("nft_rule", "VARCHAR", "`family table chain handle` of the nftables rule."),
        _c("packets", "BIGINT", "Packets the rule matched (its counter before any `limit`)."),
        _c("bytes", "BIGINT", "Bytes the rule matched."),
        _c("logged", "BIGINT", "Packets that reached the log statement (counter after the limit); NULL if unknown."),
        _c("rate_limited", "BOOLEAN", "Whether a `limit` precedes the log statement."),
        _c("run_packets", "BIGINT", "`packets` since the run started (rules created later count from 0)."),
        _c("run_logged", "BIGINT", "`logged` since the run started."),
    ),
)

# Hourly rollup rows become day rows once retention compacts their day (`Retention.hourly`).
_BUCKET_DOC = (
    "Start of the hour (of the flows' bucket start); before `rollup_state.days_until`, start of the day "
    "(UTC): one row per key and day."
)

PAIR_HOURS = Table(
    "pair_hours",
    "Rollup: the flows of `flows_once` (each flow once, both reporters merged) summed per hour, "
    "endpoint pair, protocol, destination port and verdict, for every hour before "
    "`rollup_state.rolled_until`. Kept by the store's writer in the same transaction as the flows "
    "(any writer: collector, imports), rebuilt from `flows` when older flows arrive; the "
    "`flow_pairs` view reads it for whole hours and `flows_once` for the rest, so answers equal "
    "the raw flows'.",
    (
        _c("hour", "TIMESTAMP", _BUCKET_DOC),
        _c("src_ep", "INTEGER", "Source endpoint -> endpoints.id; NULL when the address is unknown."),
        _c("src_ip", "VARCHAR", "Source address when src_ep is NULL, else NULL."),
        _c("dst_ep", "INTEGER", "Destination endpoint -> endpoints.id."),
        _c("dst_ip", "VARCHAR", "Destination address when dst_ep is NULL, else NULL."),
        _c("proto", "UTINYINT", "IP protocol number."),
        _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
        _c("denied", "BOOLEAN", "Whether either side denied these flows."),
        _c("flows", "BIGINT", "Flows (`flows_once` rows)."),
        _c("connections", "BIGINT", "Allowed connections opened."),
        _c("packets", "BIGINT", "Packets in the original direction."),
        _c("bytes", "BIGINT", "Bytes in the original direction."),
        _c("reply_packets", "BIGINT", "Packets in the reply direction."),
        _c("reply_bytes", "BIGINT", "Bytes in the reply direction."),
        _c("first_seen", "TIMESTAMP", "Earliest event of these flows."),
        _c("last_seen", "TIMESTAMP", "Latest event of these flows."),
    ),
)

ROLLUP_STATE = Table(
    "rollup_state",
    "How far the rollups reach: one row. Flows starting before `rolled_until` are summed in "
    "`pair_hours`; later ones are read from `flows`. Writing flows for an earlier hour moves it back.",
    (
        _c("rolled_until", "TIMESTAMP", "Hours before this are rolled up (an hour boundary)."),
        _c(
            "compacted_until",
            "TIMESTAMP",
            "Hours before this are kept as rollups only: retention deleted their raw flows and kept the "
            "hourly rollups longer (`--retain-rollups`). NULL if none. Flows written for these hours "
            "later stay raw (not rolled up) until retention deletes them.",
        ),
        _c(
            "days_until",
            "TIMESTAMP",
            "Days before this (a day boundary, UTC) are compacted: their `pair_hours` and `rule_hours` rows "
            "are one per key and day (`--hourly-rollups`), and a query window that starts or ends inside "
            "such a day counts the whole day. Flows written for them later stay raw, as for "
            "`compacted_until`. NULL: none.",
        ),
        _c(
            "complete_from",
            "TIMESTAMP",
            "The hour rollups (`pair_hours`, `implicit_deny_hours`, `profile_allow_hours`, `denylisted_hours` "
            "and their totals) may miss flows before this: flows of hours whose raw rows were already gone "
            "(`compacted_until`) when a rollup was first built (a store upgraded to it), or when a rule or "
            "network set they depend on was written after them. Answers over earlier hours may undercount; "
            "`flowtui query` says so. NULL: complete.",
        ),
    ),
)

RULE_HOURS = Table(
    "rule_hours",
    "Rollup: the flows of each rule (every action, each reporter's rows as stored) summed per hour, for "
    "every hour before `rollup_state.rolled_until`; kept like `pair_hours`. The `rule_hits` (query "
    "window) and `rule_hits_all` (whole store) views read it for whole hours and `flows` for the rest.",
    (
        _c("hour", "TIMESTAMP", _BUCKET_DOC),
        _c("rule_id", "INTEGER", "Deciding rule -> rules.id (flows without one are left out)."),
        _c("events", "BIGINT", "NFLOG events."),
        _c("packets", "BIGINT", "Packets (as counted in `flows`)."),
        _c("first_seen", "TIMESTAMP", "Earliest flow row's first_seen."),
        _c("last_seen", "TIMESTAMP", "Latest flow row's last_seen."),
        _c("last_hit", "TIMESTAMP", "Latest last_seen of the rows that counted a hit (events or packets > 0)."),
    ),
)

TALKERS = Table(
    "talkers",
    "Rollup: first and last seen per talker (source address, destination address, protocol, "
    "destination port; Allow and Deny flows) over the hours before `rollup_state.rolled_until`. "
    "Merged by `roll_up` (a minimum and a maximum: merging an hour twice changes nothing, so late "
    "flows only need their hours merged again); rebuilt from `flows` when retention deletes some. "
    "The `talkers_seen` view adds the raw flows after it.",
    (
        _c("src_ip", "VARCHAR", "Source address."),
        _c("dst_ip", "VARCHAR", "Destination address."),
        _c("proto", "UTINYINT", "IP protocol number."),
        _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
        _c("first_seen", "TIMESTAMP", "Earliest flow of the talker (its first_seen, or bucket start if NULL)."),
        _c("last_seen", "TIMESTAMP", "Latest flow of the talker (its last_seen, or bucket end if NULL)."),
    ),
)

FLOW_TOTALS = Table(
    "flow_totals",
    "Rollup: the raw flows summed per reporter, action, rule and 5-tuple without the source port, over "
    "the whole store before `totals_state.flows_until`, with the distinct source ports as a list (so "
    "distinct counts merge exactly: a union of lists). Kept by the store's writer: `roll_up` merges "
    "each hour in, flows written later for earlier hours are merged in as they are inserted, retention "
    "recomputes the groups it deleted flows of. The `rule_flows` view reads it (or the raw flows); "
    "top_denied reads that.",
    (
        _c("source_id", "INTEGER", "Reporting reader (node) -> sources."),
        _c("action", "VARCHAR", "Allow, Deny, Pass or Log."),
        _c("rule_id", "INTEGER", "Deciding rule -> rules.id."),
        _c("src_ip", "VARCHAR", "Source address."),
        _c("dst_ip", "VARCHAR", "Destination address."),
        _c("proto", "UTINYINT", "IP protocol number."),
        _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
        _c("src_ep", "INTEGER", "Source endpoint (any of the rows') -> endpoints.id."),
        _c("dst_ep", "INTEGER", "Destination endpoint (any of the rows') -> endpoints.id."),
        _c("events", "BIGINT", "NFLOG events."),
        _c("packets", "BIGINT", "Packets (as counted in `flows`)."),
        _c("bytes", "BIGINT", "Bytes (as counted in `flows`)."),
        _c("connections", "BIGINT", "connections_started, summed."),
        _c("first_seen", "TIMESTAMP", "Earliest first_seen."),
        _c("last_seen", "TIMESTAMP", "Latest last_seen."),
        _c("sports", "INTEGER[]", "The distinct source ports (-1 for rows without one)."),
        _c("first_sport", "INTEGER", "Source port of the row with the earliest first_seen (-1: none)."),
        _c("sport_count", "BIGINT", "len(sports): the distinct source ports, readable without the list."),
    ),
)

PAIR_TOTALS = Table(
    "pair_totals",
    "Rollup: `pair_hours` summed over every hour before `totals_state.pairs_until` (the whole store, "
    "compacted hours included). The `flow_pairs` view reads it instead of `pair_hours` when the query "
    "window covers all of it (the default), so conversations over the whole store sum a row per pair, "
    "not one per pair and hour. `roll_up` adds the hours it rolls up; rebuilt from `pair_hours` when "
    "hours are rolled up again or retention deletes some.",
    tuple(c for c in PAIR_HOURS.columns if c.name != "hour"),
)

TOTALS_STATE = Table(
    "totals_state",
    "How far `flow_totals` and `pair_totals` reach: one row (none: no totals yet, the views read the "
    "raw flows and the hourly rollups). The collector's writer leaves the totals to the store's totals "
    "worker (its own transaction): for the seconds after an hour's end, or after a crash until the next "
    "writer starts, they stop before `rollup_state.rolled_until` and the views read the hours after them.",
    (
        _c("flows_until", "TIMESTAMP", "`flow_totals` holds every flow starting before this; NULL: empty."),
        _c("pairs_until", "TIMESTAMP", "`pair_totals` holds every `pair_hours` hour before this; NULL: empty."),
    ),
)

# Rollups of the flows two named queries single out, by the kind of their deciding rule (a join with
# `rules` at write time: a rule id whose row comes after its flows is rolled up again, `insert`).
# "Flows" are counted as `flows_once` counts them: one 5-tuple in one time bucket. A bucket lies in one
# hour, so hourly counts add up exactly over any run of hours (distinct 5-tuples over a window would not).
_PROTO_NAME = ("CASE f.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' WHEN 1 THEN 'icmp' WHEN 58 THEN 'icmpv6' "
               "WHEN 132 THEN 'sctp' ELSE f.proto::VARCHAR END")
IMPLICIT_DENY_KINDS = ("EndOfTier", "NoProfileMatch", "Default")
PROFILE_ALLOW_KINDS = ("Profile", "Default")

IMPLICIT_DENY_HOURS = Table(
    "implicit_deny_hours",
    "Rollup: the Deny flows decided by an implicit deny (rules of kind EndOfTier, NoProfileMatch or "
    "Default with action Deny) per hour, rule and protected endpoint address (the destination for "
    "ingress, the source for egress), for every hour before `rollup_state.rolled_until`; kept like "
    "`pair_hours`. The `implicit_denies` view reads it (default_deny_attributions).",
    (
        _c("hour", "TIMESTAMP", "Start of the hour (of the flows' bucket start)."),
        _c("rule_id", "INTEGER", "The implicit deny -> rules.id."),
        _c("endpoint_ip", "VARCHAR", "The protected endpoint's address."),
        _c("ep", "INTEGER", "The protected endpoint (any of the rows') -> endpoints.id."),
        _c("flows", "BIGINT", "Flows: distinct (time bucket, 5-tuple)."),
        _c("packets", "BIGINT", "Packets (events)."),
        _c("first_seen", "TIMESTAMP", "Earliest first_seen."),
        _c("last_seen", "TIMESTAMP", "Latest last_seen."),
        _c("example", "VARCHAR", "The 5-tuple (`tcp 10.0.0.1:4000 -> 10.0.0.2:80`) with the earliest "
           "first_seen; ties: the smallest text."),
    ),
)

PROFILE_ALLOW_HOURS = Table(
    "profile_allow_hours",
    "Rollup: the Allow flows decided by a profile or a dataplane default (rules of kind Profile or "
    "Default with action Allow) per hour, rule, source, destination, protocol and destination port, "
    "for every hour before `rollup_state.rolled_until`; kept like `pair_hours`. The "
    "`profile_allows` view reads it (allowed_by_profile_only).",
    (
        _c("hour", "TIMESTAMP", "Start of the hour (of the flows' bucket start)."),
        _c("rule_id", "INTEGER", "The profile or default -> rules.id."),
        _c("src_ip", "VARCHAR", "Source address."),
        _c("dst_ip", "VARCHAR", "Destination address."),
        _c("proto", "UTINYINT", "IP protocol number."),
        _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
        _c("src_ep", "INTEGER", "Source endpoint (any of the rows') -> endpoints.id."),
        _c("dst_ep", "INTEGER", "Destination endpoint (any of the rows') -> endpoints.id."),
        _c("flows", "BIGINT", "Flows: distinct (time bucket, source port)."),
        _c("connections", "BIGINT", "connections_started, summed."),
        _c("packets", "BIGINT", "Packets (as counted in `flows`)."),
        _c("bytes", "BIGINT", "Bytes (as counted in `flows`)."),
        _c("first_seen", "TIMESTAMP", "Earliest first_seen."),
        _c("last_seen", "TIMESTAMP", "Latest last_seen."),
    ),
)


def _totals_of(hours: Table, name: str, view: str) -> Table:
    return Table(
        name,
        f"Rollup: `{hours.name}` summed over every hour before `totals_state.pairs_until` (like `pair_totals`): "
        f"the `{view}` view reads it when the query window covers it (the default).",
        tuple(c for c in hours.columns if c.name != "hour"),
    )


@dataclass(frozen=True)
class HourRollup:
    """An hourly rollup whose rows merge by key (`merges`: the aggregate of each other column over
    partial rows), its whole-store totals (the hours summed, as far as `totals_state.pairs_until`),
    the SELECT that makes its rows from the flows `where` keeps, and the view that answers a query
    window from totals, hours and raw flows."""

    hours: Table
    totals: Table
    keys: tuple[str, ...]
    merges: tuple[tuple[str, str], ...]
    rows: str  # with {joins} and {where} over `flows f`
    view: str
    kinds: tuple[str, ...]  # the rule kinds whose flows it holds (see `DuckStore._reroll_rules`)

    def rows_sql(self, where: str, joins: str = "") -> str:
        return self.rows.format(joins=joins, where=where)

    def merged(self, source: str, with_hour: bool = True) -> str:
        """The rows of `source` merged per key (and hour)."""
        keys = ("hour", *self.keys) if with_hour else self.keys
        aggs = ", ".join(f"{e} AS {c}" for c, e in self.merges)
        return f"SELECT {', '.join(keys)}, {aggs} FROM {source} GROUP BY {', '.join(keys)}"

    @property
    def columns(self) -> str:
        return ", ".join(c.name for c in self.totals.columns)


_SUM, _MIN, _MAX, _ANY = "sum({c})", "min({c})", "max({c})", "any_value({c})"


def _merges(**kinds: str) -> tuple[tuple[str, str], ...]:
    return tuple((c, k.format(c=c)) for c, k in kinds.items())


IMPLICIT_DENY = HourRollup(
    IMPLICIT_DENY_HOURS,
    _totals_of(IMPLICIT_DENY_HOURS, "implicit_deny_totals", "implicit_denies"),
    ("rule_id", "endpoint_ip"),
    _merges(ep=_ANY, flows=_SUM, packets=_SUM, first_seen=_MIN, last_seen=_MAX,
            example="arg_min(example, (first_seen, example))"),
    "SELECT date_trunc('hour', start_time) AS hour, rule_id, endpoint_ip, any_value(ep) AS ep, count(*) AS flows, "
    "sum(packets) AS packets, min(first_seen) AS first_seen, max(last_seen) AS last_seen, "
    "arg_min(example, (first_seen, example)) AS example FROM ("
    "SELECT f.start_time, f.rule_id, CASE WHEN any_value(r.direction) = 'egress' THEN f.src_ip ELSE f.dst_ip END "
    "AS endpoint_ip, any_value(CASE WHEN r.direction = 'egress' THEN f.src_ep ELSE f.dst_ep END) AS ep, "
    "sum(f.packets) AS packets, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen, "
    f"{_PROTO_NAME} || ' ' || f.src_ip || coalesce(':' || f.sport::VARCHAR, '') || ' -> ' || f.dst_ip "
    "|| coalesce(':' || f.dport::VARCHAR, '') AS example "
    "FROM flows f JOIN rules r ON r.id = f.rule_id {joins} WHERE f.action = 'Deny' AND r.action = 'Deny' "
    f"AND r.kind IN {IMPLICIT_DENY_KINDS} AND ({{where}}) "
    "GROUP BY f.start_time, f.rule_id, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport"
    ") GROUP BY ALL",
    "implicit_denies",
    IMPLICIT_DENY_KINDS,
)

PROFILE_ALLOW = HourRollup(
    PROFILE_ALLOW_HOURS,
    _totals_of(PROFILE_ALLOW_HOURS, "profile_allow_totals", "profile_allows"),
    ("rule_id", "src_ip", "dst_ip", "proto", "dport"),
    _merges(src_ep=_ANY, dst_ep=_ANY, flows=_SUM, connections=_SUM, packets=_SUM, bytes=_SUM, first_seen=_MIN,
            last_seen=_MAX),
    "SELECT date_trunc('hour', start_time) AS hour, rule_id, src_ip, dst_ip, proto, dport, any_value(src_ep) AS "
    "src_ep, any_value(dst_ep) AS dst_ep, count(*) AS flows, sum(connections) AS connections, sum(packets) AS "
    "packets, sum(bytes) AS bytes, min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM ("
    "SELECT f.start_time, f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport, any_value(f.src_ep) AS src_ep, "
    "any_value(f.dst_ep) AS dst_ep, sum(f.connections_started) AS connections, sum(f.packets) AS packets, "
    "sum(f.bytes) AS bytes, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen "
    "FROM flows f JOIN rules r ON r.id = f.rule_id {joins} WHERE f.action = 'Allow' AND r.action = 'Allow' "
    f"AND r.kind IN {PROFILE_ALLOW_KINDS} AND ({{where}}) "
    "GROUP BY f.start_time, f.rule_id, f.src_ip, f.dst_ip, f.proto, f.dport, f.sport"
    ") GROUP BY ALL",
    "profile_allows",
    PROFILE_ALLOW_KINDS,
)

NETSET_SOURCES = Table(
    "netset_sources",
    "Every flow source address that lies in a CIDR of a network set (`endpoints` of type netset, any "
    "revision): kept by the writer as flows and endpoints are inserted (matched in Python, a few "
    "addresses per batch), so `denylisted_hours` holds their flows only.",
    (_c("src_ip", "VARCHAR", "A source address in some network set's CIDR (a reader of a store without the "
        "table takes every source: the rollup then holds every flow, and the query still matches the CIDRs)."),),
)

DENYLISTED_HOURS = Table(
    "denylisted_hours",
    "Rollup: the flows from the addresses of `netset_sources` per hour, source, destination, protocol, "
    "destination port, action and rule, for every hour before `rollup_state.rolled_until`; kept like "
    "`pair_hours`. The `denylisted_flows` view reads it (denylisted_traffic).",
    (
        _c("hour", "TIMESTAMP", "Start of the hour (of the flows' bucket start)."),
        _c("src_ip", "VARCHAR", "Source address (in `netset_sources`)."),
        _c("dst_ip", "VARCHAR", "Destination address."),
        _c("proto", "UTINYINT", "IP protocol number."),
        _c("dport", "USMALLINT", "Destination port; NULL for protocols without ports."),
        _c("action", "VARCHAR", "Allow, Deny, Pass or Log."),
        _c("rule_id", "INTEGER", "Deciding rule -> rules.id."),
        _c("src_ep", "INTEGER", "Source endpoint (any of the rows') -> endpoints.id."),
        _c("dst_ep", "INTEGER", "Destination endpoint (any of the rows') -> endpoints.id."),
        _c("flows", "BIGINT", "Flows: distinct (time bucket, source port)."),
        _c("packets", "BIGINT", "Packets (as counted in `flows`)."),
        _c("first_seen", "TIMESTAMP", "Earliest first_seen."),
        _c("last_seen", "TIMESTAMP", "Latest last_seen."),
    ),
)

DENYLISTED = HourRollup(
    DENYLISTED_HOURS,
    _totals_of(DENYLISTED_HOURS, "denylisted_totals", "denylisted_flows"),
    ("src_ip", "dst_ip", "proto", "dport", "action", "rule_id"),
    _merges(src_ep=_ANY, dst_ep=_ANY, flows=_SUM, packets=_SUM, first_seen=_MIN, last_seen=_MAX),
    "SELECT date_trunc('hour', start_time) AS hour, src_ip, dst_ip, proto, dport, action, rule_id, "
    "any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, count(*) AS flows, sum(packets) AS packets, "
    "min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM ("
    "SELECT f.start_time, f.src_ip, f.dst_ip, f.proto, f.dport, f.action, f.rule_id, any_value(f.src_ep) AS "
    "src_ep, any_value(f.dst_ep) AS dst_ep, sum(f.packets) AS packets, min(f.first_seen) AS first_seen, "
    "max(f.last_seen) AS last_seen FROM flows f {joins} "
    "WHERE f.src_ip IN (SELECT src_ip FROM netset_sources) AND ({where}) "
    "GROUP BY f.start_time, f.src_ip, f.dst_ip, f.proto, f.dport, f.action, f.rule_id, f.sport"
    ") GROUP BY ALL",
    "denylisted_flows",
    (),
)
HOUR_ROLLUPS = (IMPLICIT_DENY, PROFILE_ALLOW, DENYLISTED)

TABLES: tuple[Table, ...] = (
    RUNS,
    SOURCES,
    RULES,
    ENDPOINTS,
    EVENTS,
    FLOWS,
    CONNECTIONS,
    LOSS,
    STATS,
    RULE_COUNTERS,
)
# The writer's working state: in the database and documented, but not data a reader or an
# export needs (readers of older stores must not require it).
WORK_TABLES: tuple[Table, ...] = (FLOWS_OPEN,)
# Rollups: derived from `flows` (rebuildable); a reader of a store or export without them creates
# them empty (`ensure_rollups`), and the views then read the raw flows.
ROLLUP_TABLES: tuple[Table, ...] = (PAIR_HOURS, RULE_HOURS, TALKERS, ROLLUP_STATE, FLOW_TOTALS, PAIR_TOTALS,
                                    TOTALS_STATE, NETSET_SOURCES,
                                    *(t for r in HOUR_ROLLUPS for t in (r.hours, r.totals)))
ALL_TABLES = TABLES + ROLLUP_TABLES + WORK_TABLES
BY_NAME = {t.name: t for t in ALL_TABLES}


def flows_once_sql(joins: str, where: str) -> str:
    """The `flows_once` merge over the flows that `where` keeps (`joins` adds relations to it)."""
    return (
        "SELECT f.start_time, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport, bool_or(f.action = 'Deny') AS "
        "denied, greatest(coalesce(sum(f.packets) FILTER (WHERE r.direction = 'egress'), 0), "
        "coalesce(sum(f.packets) FILTER (WHERE r.direction IS DISTINCT FROM 'egress'), 0)) AS packets, "
        "greatest(coalesce(sum(f.bytes) FILTER (WHERE r.direction = 'egress'), 0), coalesce(sum(f.bytes) "
        "FILTER (WHERE r.direction IS DISTINCT FROM 'egress'), 0)) AS bytes, "
        "greatest(coalesce(sum(f.reply_packets) FILTER (WHERE r.direction = 'egress'), 0), "
        "coalesce(sum(f.reply_packets) FILTER (WHERE r.direction IS DISTINCT FROM 'egress'), 0)) AS "
        "reply_packets, greatest(coalesce(sum(f.reply_bytes) FILTER (WHERE r.direction = 'egress'), 0), "
        "coalesce(sum(f.reply_bytes) FILTER (WHERE r.direction IS DISTINCT FROM 'egress'), 0)) AS "
        "reply_bytes, CASE WHEN bool_or(f.action = 'Deny') THEN 0 ELSE "
        "greatest(coalesce(sum(f.connections_started) FILTER (WHERE r.direction = 'egress'), 0), "
        "coalesce(sum(f.connections_started) FILTER (WHERE r.direction IS DISTINCT FROM 'egress'), 0)) END AS "
        "connections, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen, any_value(f.src_ep) AS "
        "src_ep, any_value(f.dst_ep) AS dst_ep FROM flows f LEFT JOIN rules r ON r.id = f.rule_id " + joins + " "
        "WHERE f.action IN ('Allow', 'Deny') AND ("
        + where
        + ") GROUP BY f.start_time, f.proto, f.src_ip, f.dst_ip, f.sport, f.dport"
    )


FLOWS_ONCE_WINDOW = flows_once_sql(
    "CROSS JOIN query_window win", "f.start_time >= win.since_ AND f.start_time < win.until_"
)

# The part of the query window the rollups answer: whole hours from the window's start (rounded up
# to an hour) to its end or `rollup_state.rolled_until`, whichever is first. The rest is raw flows.
# In the compacted days (before `days_until`) a window's ends widen to whole days (the start down,
# the end up): such a day is one row per key, counted whole or not at all, never with raw flows.
_ROLLED = (
    "(SELECT lo, hi, CASE WHEN lo < hi THEN lo ELSE until_ END AS raw_to, "
    "CASE WHEN lo < hi THEN hi ELSE until_ END AS raw_from FROM (SELECT until_, "
    "CASE WHEN isinf(since_) THEN since_ WHEN since_ < d THEN date_trunc('day', since_) "
    "WHEN date_trunc('hour', since_) = since_ THEN since_ "
    "ELSE date_trunc('hour', since_) + INTERVAL 1 hour END AS lo, "
    "least(coalesce((SELECT max(rolled_until) FROM rollup_state), TIMESTAMP '-infinity'), "
    "CASE WHEN isinf(until_) THEN until_ WHEN until_ < d AND date_trunc('day', until_) < until_ "
    "THEN date_trunc('day', until_) + INTERVAL 1 day WHEN until_ < d THEN until_ "
    "ELSE date_trunc('hour', until_) END) AS hi FROM query_window, "
    "(SELECT coalesce(max(days_until), TIMESTAMP '-infinity') AS d FROM rollup_state)))"
)
# Whether `pair_totals` answers the rolled-up part of the query window: it must start at or before
# the first hour in `pair_hours` and reach pairs_until (the hours from there to its end: pair_hours).
def _totals_window(hours: str) -> str:
    return (
        "(SELECT coalesce(s.pairs_until IS NOT NULL AND r.hi >= s.pairs_until AND (isinf(r.lo) OR "
        f"r.lo <= coalesce((SELECT min(hour) FROM {hours}), r.lo)), false) AS use, s.pairs_until "
        f"FROM {_ROLLED} r LEFT JOIN (SELECT max(pairs_until) AS pairs_until FROM totals_state) s ON true)"
    )


def window_view_sql(hours: str, totals: str, columns: str, rows_sql: Any) -> str:
    """Partial rows of an hourly rollup over the query window: its totals when the window covers them
    (then the hours after them), else its whole hours in the window; and `rows_sql(where, joins)` over
    the raw flows before and after those hours, as two ranges. The bounds are scalar subqueries, not
    joins: DuckDB then prunes row groups by them (as joins, every part scanned its whole table)."""
    window = _totals_window(hours)
    rolled = f"(SELECT {{}} FROM {_ROLLED})"
    win = "(SELECT {} FROM query_window)"
    hours_from = f"(SELECT CASE WHEN c.use THEN c.pairs_until ELSE b.lo END FROM {_ROLLED} b, {window} c)"
    raw = [rows_sql(where, "") for where in
           (f"f.start_time >= {win.format('since_')} AND f.start_time < {rolled.format('raw_to')}",
            f"f.start_time >= {rolled.format('raw_from')} AND f.start_time < {win.format('until_')}")]
    return (
        f"SELECT {columns} FROM {totals} WHERE (SELECT use FROM {window}) UNION ALL "
        f"SELECT {columns} FROM {hours} WHERE hour >= {hours_from} AND hour < {rolled.format('hi')}"
        + "".join(f" UNION ALL SELECT {columns} FROM ({r})" for r in raw)
    )


def merged_view_sql(r: HourRollup) -> str:
    """One row per key of `r` over the query window: its totals alone when they answer the window
    alone (they cover it and no flow or hour follows them: a store at rest, the default window), else
    its whole hours in the window and the raw flows around them, merged per key. Readers then need no
    GROUP BY over the totals (a million keys: seconds under load). Each bound of a scan is one scalar
    subquery, which DuckDB prunes row groups by (an expression around subqueries is not pruned)."""
    whole = (  # and no raw flow in the window before or after the rolled-up hours
        f"(SELECT c.use AND c.pairs_until >= b.hi FROM {_totals_window(r.hours.name)} c, {_ROLLED} b) AND NOT EXISTS "
        f"(SELECT 1 FROM flows WHERE start_time >= (SELECT raw_from FROM {_ROLLED}) AND start_time < "
        "(SELECT until_ FROM query_window)) AND NOT EXISTS (SELECT 1 FROM flows WHERE start_time >= "
        f"(SELECT since_ FROM query_window) AND start_time < (SELECT raw_to FROM {_ROLLED}))"
    )
    state = f"(SELECT {whole} AS whole, b.*, w.since_, w.until_ FROM {_ROLLED} b, query_window w)"

    def unless_whole(value: str) -> str:
        return f"(SELECT CASE WHEN whole THEN TIMESTAMP 'infinity' ELSE {value} END FROM {state})"

    def bound(value: str) -> str:
        return f"(SELECT {value} FROM {state})"

    raw = [r.rows_sql(where) for where in
           (f"f.start_time >= {unless_whole('since_')} AND f.start_time < {bound('raw_to')}",
            f"f.start_time >= {unless_whole('raw_from')} AND f.start_time < {bound('until_')}")]
    parts = [f"SELECT {r.columns} FROM {r.hours.name} WHERE hour >= {unless_whole('lo')} AND hour < {bound('hi')}"]
    parts += [f"SELECT {r.columns} FROM ({q})" for q in raw]
    return (f"SELECT {r.columns} FROM {r.totals.name} WHERE {bound('whole')} UNION ALL "
            + r.merged("(" + " UNION ALL ".join(parts) + ")", with_hour=False))


_PAIR_COLUMNS = (
    "src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied, flows, connections, packets, bytes, "
    "reply_packets, reply_bytes, first_seen, last_seen"
)


_RULE_COLUMNS = "rule_id, events, packets, first_seen, last_seen, last_hit"


def rule_hours_sql(where: str, joins: str = "") -> str:
    """`rule_hours` rows (with `hour`) from the flows that `where` keeps."""
    return (
        "SELECT date_trunc('hour', f.start_time) AS hour, f.rule_id, sum(f.events) AS events, "
        "sum(f.packets) AS packets, min(f.first_seen) AS first_seen, max(f.last_seen) AS last_seen, "
        "max(f.last_seen) FILTER (WHERE f.events > 0 OR f.packets > 0) AS last_hit "
        f"FROM flows f {joins} WHERE f.rule_id IS NOT NULL AND ({where}) GROUP BY ALL"
    )


def _rule_hits_sql(rollup_where: str, raw_ranges: list[str], joins: str) -> str:
    parts = [f"SELECT {_RULE_COLUMNS} FROM rule_hours p{joins} WHERE {rollup_where}"]
    parts += [f"SELECT {_RULE_COLUMNS} FROM ({rule_hours_sql(w, joins)})" for w in raw_ranges]
    return (
        "SELECT rule_id, sum(events) AS events, sum(packets) AS packets, min(first_seen) AS first_seen, "
        f"max(last_seen) AS last_seen, max(last_hit) AS last_hit FROM ({' UNION ALL '.join(parts)}) GROUP BY rule_id"
    )


def talkers_sql(where: str) -> str:
    """`talkers` rows from the Allow and Deny flows that `where` keeps."""
    return (
        "SELECT src_ip, dst_ip, proto, dport, min(coalesce(first_seen, start_time)) AS first_seen, "
        "max(coalesce(last_seen, end_time)) AS last_seen FROM flows "
        f"WHERE action IN ('Allow', 'Deny') AND ({where}) GROUP BY src_ip, dst_ip, proto, dport"
    )


def pair_hours_sql(where: str, joins: str = "") -> str:
    """`pair_hours` rows (with `hour`) from the flows that `where` keeps."""
    return (
        "SELECT date_trunc('hour', start_time) AS hour, src_ep, CASE WHEN src_ep IS NULL THEN src_ip END AS src_ip, "
        "dst_ep, CASE WHEN dst_ep IS NULL THEN dst_ip END AS dst_ip, proto, dport, denied, count(*) AS flows, "
        "sum(connections) AS connections, sum(packets) AS packets, sum(bytes) AS bytes, "
        "sum(reply_packets) AS reply_packets, sum(reply_bytes) AS reply_bytes, min(first_seen) AS first_seen, "
        f"max(last_seen) AS last_seen FROM ({flows_once_sql(joins, where)}) GROUP BY ALL"
    )


TOTALS_KEYS = ("source_id", "action", "rule_id", "src_ip", "dst_ip", "proto", "dport")
# Join keys without NULLs: a hash join on plain equality is ~10x faster than on IS NOT DISTINCT FROM
# (measured: 113 ms vs 1.1 s joining an hour of flows to 3.4M totals); the sentinels are no real value.
_TOTALS_NOT_NULL = {"source_id": "-1", "action": "''", "rule_id": "-1", "src_ip": "''", "dst_ip": "''",
                    "proto": "-1", "dport": "-1"}


def totals_on(left: str, right: str) -> str:
    """The join condition of two relations keyed like `flow_totals`."""
    return " AND ".join(
        f"coalesce({left}.{k}{'::INTEGER' if k in ('proto', 'dport') else ''}, {v}) = "
        f"coalesce({right}.{k}{'::INTEGER' if k in ('proto', 'dport') else ''}, {v})"
        for k, v in _TOTALS_NOT_NULL.items()
    )


def flow_totals_sql(where: str, source: str = "flows") -> str:
    """`flow_totals` rows from the rows of `source` (flows or a batch) that `where` keeps: per source
    port first, then per key (3-4x faster than DISTINCT aggregates over the rows)."""
    keys = ", ".join(TOTALS_KEYS)
    return (
        f"SELECT {keys}, any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, sum(events) AS events, "
        "sum(packets) AS packets, sum(bytes) AS bytes, sum(connections) AS connections, "
        "min(first_seen) AS first_seen, max(last_seen) AS last_seen, list(sp) AS sports, "
        "arg_min(sp, first_seen) AS first_sport, count(*) AS sport_count FROM ("
        f"SELECT {keys}, coalesce(sport::INTEGER, -1) AS sp, any_value(src_ep) AS src_ep, "
        "any_value(dst_ep) AS dst_ep, sum(events) AS events, sum(packets) AS packets, sum(bytes) AS bytes, "
        "sum(connections_started) AS connections, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
        f"FROM {source} WHERE {where} GROUP BY {keys}, sp) GROUP BY {keys}"
    )


def totals_merge_exprs(t: str, a: str) -> dict[str, str]:
    """Per column of `flow_totals`: its value for two partial rows `t` and `a` of one key (either may be
    absent: a FULL OUTER JOIN's NULLs). Sums add, minima and maxima merge, source ports unite."""
    out = {k: f"coalesce({t}.{k}, {a}.{k})" for k in (*TOTALS_KEYS, "src_ep", "dst_ep")}
    out.update({c: f"coalesce({t}.{c} + {a}.{c}, {t}.{c}, {a}.{c})" for c in ("events", "packets", "bytes",
                                                                           "connections")})
    out["first_seen"] = f"coalesce(least({t}.first_seen, {a}.first_seen), {t}.first_seen, {a}.first_seen)"
    out["last_seen"] = f"coalesce(greatest({t}.last_seen, {a}.last_seen), {t}.last_seen, {a}.last_seen)"
    out["sports"] = (f"CASE WHEN {a}.sports IS NULL THEN {t}.sports WHEN {t}.sports IS NULL THEN {a}.sports "
                     f"ELSE list_distinct(list_concat({t}.sports, {a}.sports)) END")
    out["first_sport"] = (f"CASE WHEN {a}.first_seen < {t}.first_seen OR ({t}.first_seen IS NULL AND "
                          f"{a}.first_seen IS NOT NULL) THEN {a}.first_sport "
                          f"ELSE coalesce({t}.first_sport, {a}.first_sport) END")
    out["sport_count"] = f"len({out['sports']})"
    return out


def totals_merge_sql(t: str, a: str) -> str:
    return ", ".join(f"{e} AS {c}" for c, e in totals_merge_exprs(t, a).items())


# Whether `flow_totals` answers the query window (it covers every flow before flows_until: the
# window must start at or before the first flow and end at or after flows_until), and where the
# raw flows start then.
_TOTALS_WINDOW = (
    "(SELECT use, CASE WHEN use THEN flows_until ELSE since_ END AS raw_from, until_ AS raw_until FROM ("
    "SELECT win.since_, win.until_, s.flows_until, coalesce(s.flows_until IS NOT NULL AND win.until_ >= "
    "s.flows_until AND (isinf(win.since_) OR win.since_ <= coalesce(s.first, win.since_)), false) AS use "
    "FROM query_window win LEFT JOIN (SELECT max(flows_until) AS flows_until, (SELECT min(start_time) FROM "
    "flows) AS first FROM totals_state) s ON true))"
)
# The totals when they answer the window alone (it covers them and no raw flow follows them: the
# writer has merged every closed hour, the usual state of a store at rest); else the raw flows of the
# window, summed the same way. No join merges the two: DuckDB would build its hash table on the
# totals (it estimates the raw part at the whole table), ~10 s at 10M flows, slower than the raw sums.
RULE_FLOWS = (
    f"WITH w AS (SELECT w.*, w.use AND NOT EXISTS (SELECT 1 FROM flows WHERE start_time >= w.raw_from) AS whole "
    f"FROM {_TOTALS_WINDOW} w) "
    f"SELECT {', '.join(c.name for c in FLOW_TOTALS.columns)} FROM flow_totals, w WHERE w.whole UNION ALL "
    + flow_totals_sql(
        "NOT w.whole AND f.start_time >= w.since_ AND f.start_time < w.raw_until",
        "flows f, (SELECT w.whole, win.since_, w.raw_until FROM w, query_window win) w",
    )
)


# flows_v's names for `other_rule_ids`: a join on the distinct lists (a correlated subquery per row
# made every flows_v query ~100x slower on a 2M-row store), and its column
OTHER_POLICIES_JOIN = (
    " LEFT JOIN (SELECT d.ids, list(o.policy ORDER BY list_position(d.ids, o.id)) AS other_policies FROM "
    "(SELECT DISTINCT other_rule_ids AS ids FROM flows WHERE other_rule_ids IS NOT NULL) d "
    "JOIN rules o ON list_contains(d.ids, o.id) GROUP BY d.ids) op ON op.ids = f.other_rule_ids"
)
OTHER_POLICIES = ", op.other_policies"


def before_other_rules(query: str) -> str:
    """A view's query as stores older than `other_rule_ids` have it (flows_v without other_policies)."""
    return query.replace(OTHER_POLICIES_JOIN, "").replace(OTHER_POLICIES, "")


VIEWS: dict[str, tuple[str, str]] = {
    "query_window": (
        "The time window of the files in queries/: since_, until_ and now_ from the DuckDB variables `since`, "
        "`until` (a time, or a duration back from now) and `now` (default: the end of the latest flow bucket).",
        "SELECT now_, coalesce(try_cast(getvariable('since')::VARCHAR AS TIMESTAMP), now_ - "
        "try_cast(getvariable('since')::VARCHAR AS INTERVAL), CASE WHEN getvariable('since') IS NULL THEN "
        "TIMESTAMP '-infinity' ELSE error('since: not a time or a duration: ' || "
        "getvariable('since')::VARCHAR) END::TIMESTAMP) AS since_, "
        "coalesce(try_cast(getvariable('until')::VARCHAR AS TIMESTAMP), now_ - "
        "try_cast(getvariable('until')::VARCHAR AS INTERVAL), CASE WHEN getvariable('until') IS NULL THEN "
        "TIMESTAMP 'infinity' ELSE error('until: not a time or a duration: ' || "
        "getvariable('until')::VARCHAR) END::TIMESTAMP) AS until_ FROM (SELECT "
        "coalesce(try_cast(getvariable('now')::VARCHAR AS TIMESTAMP), CASE WHEN getvariable('now') IS NOT "
        "NULL THEN error('now: not a time: ' || getvariable('now')::VARCHAR) END::TIMESTAMP, (SELECT "
        "max(end_time) FROM flows), current_timestamp AT TIME ZONE 'UTC') AS now_)",
    ),
    "flows_once": (
        "One row per flow (time bucket and 5-tuple) in the query window, the two nodes' decisions merged: "
        "the source's egress and the destination's ingress (each summed over its partial rows); denied if "
        "either side denied it, counted from the side that counted more (both count the same packets when "
        "both track it). Columns: start_time, proto, src_ip, dst_ip, sport, dport, denied, packets, bytes, "
        "reply_packets, reply_bytes, connections, first_seen, last_seen, src_ep, dst_ep.",
        FLOWS_ONCE_WINDOW,
    ),
    "flow_pairs": (
        "`flows_once` per endpoint pair, protocol, destination port and verdict, in the query window: "
        "from the `pair_hours` rollup for its whole rolled-up hours (`pair_totals` when the window covers "
        "all of them), from the raw flows for the rest (the same answer, fast). "
        "Endpoints as ids; src_ip/dst_ip only where the endpoint is unknown. Columns: "
        + _PAIR_COLUMNS
        + " (flows: how many flows_once rows).",
        window_view_sql("pair_hours", "pair_totals", _PAIR_COLUMNS, pair_hours_sql),
    ),
    **{
        r.view: (
            f"`{r.hours.name}` over the query window, one row per {', '.join(r.keys)}: `{r.totals.name}` "
            f"when it answers the window alone, else `{r.hours.name}` for whole rolled-up hours and the raw "
            f"flows for the rest, merged. Columns: {r.columns}.",
            merged_view_sql(r),
        )
        for r in HOUR_ROLLUPS
    },
    "rule_flows": (
        "The flows of the query window summed per reporter (source_id), action, rule_id, src_ip, dst_ip, proto "
        "and dport, with the distinct source ports as a list (`sports`, -1 for none; its length counts "
        "flows by source port) and the source port of the earliest row (`first_sport`): `flow_totals` "
        "merged with the raw flows after it when the window covers it (the default window), the raw "
        "flows otherwise. Columns: those of `flow_totals`.",
        RULE_FLOWS,
    ),
    "rule_hits": (
        "Per rule id in the query window: events, packets, first_seen, last_seen and last_hit (the latest "
        "row that counted a hit), from the `rule_hours` rollup for whole rolled-up hours and the raw "
        "flows for the rest.",
        _rule_hits_sql(
            "p.hour >= b.lo AND p.hour < b.hi",
            ["f.start_time >= win.since_ AND f.start_time < b.raw_to",
             "f.start_time >= b.raw_from AND f.start_time < win.until_"],
            f", query_window win, {_ROLLED} b",
        ),
    ),
    "rule_hits_all": (
        "`rule_hits` over the whole store, whatever the query window.",
        _rule_hits_sql(
            "p.hour < b.r",
            ["f.start_time >= b.r"],
            ", (SELECT coalesce(max(rolled_until), TIMESTAMP '-infinity') AS r FROM rollup_state) b",
        ),
    ),
    "talkers_seen": (
        "First and last seen per talker (src_ip, dst_ip, proto, dport; Allow and Deny flows) over the whole "
        "store: the `talkers` rollup merged with the raw flows from `rollup_state.rolled_until` on.",
        "SELECT src_ip, dst_ip, proto, dport, min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM ("
        "SELECT src_ip, dst_ip, proto, dport, first_seen, last_seen FROM talkers UNION ALL "
        + talkers_sql(
            "start_time >= coalesce((SELECT max(rolled_until) FROM rollup_state), TIMESTAMP '-infinity')"
        )
        + ") GROUP BY src_ip, dst_ip, proto, dport",
    ),
    "policies": (
        "Policy revisions known to the collector, from the rules table.",
        "SELECT kind, namespace, name, tier, revision, count(*) AS rules, min(first_seen) AS first_seen "
        "FROM rules WHERE kind NOT IN ('EndOfTier', 'NoProfileMatch', 'Default', 'Failsafe') GROUP BY ALL",
    ),
    "events_v": (
        "Events with their rule, policy, node and endpoints spelled out.",
        "SELECT e.*, s.node, r.kind AS policy_kind, r.namespace AS policy_namespace, r.name AS policy_name, "
        "r.tier, r.revision AS policy_revision, r.rule AS rule_index, r.direction, r.policy, "
        "se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name, se.labels AS src_labels, "
        "de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name, de.labels AS dst_labels "
        "FROM events e LEFT JOIN sources s USING (source_id) LEFT JOIN rules r ON r.id = e.rule_id "
        "LEFT JOIN endpoints se ON se.id = e.src_ep LEFT JOIN endpoints de ON de.id = e.dst_ep",
    ),
    "flows_v": (
        "Flows with the reporting node, the deciding policy (Calico flow-log string and fields), both "
        "endpoints (type, namespace, name, labels) and the further policies of `other_rule_ids` "
        "(`other_policies`, flow-log strings) joined in.",
        "SELECT f.*, s.node, CASE r.direction WHEN 'ingress' THEN 'dst' WHEN 'egress' THEN 'src' END AS reporter, "
        "r.policy, r.kind AS policy_kind, r.namespace AS policy_namespace, r.name AS policy_name, r.tier, "
        "r.revision AS policy_revision, r.rule AS rule_index, "
        "se.type AS src_type, coalesce(se.namespace, '-') AS src_namespace, se.name AS src_name, "
        "se.labels AS src_labels, de.type AS dst_type, coalesce(de.namespace, '-') AS dst_namespace, "
        "de.name AS dst_name, de.labels AS dst_labels" + OTHER_POLICIES + " "
        "FROM flows f LEFT JOIN sources s USING (source_id) LEFT JOIN rules r ON r.id = f.rule_id"
        + OTHER_POLICIES_JOIN
        + " LEFT JOIN endpoints se ON se.id = f.src_ep LEFT JOIN endpoints de ON de.id = f.dst_ep",
    ),
    "flow_summary": (
        "Flows summed over their key within each bucket (partial rows merged), with names.",
        "SELECT start_time, end_time, node, reporter, action, rule_id, prefix, policy, proto, src_ip, dst_ip, "
        "sport, dport, any_value(src_type) AS src_type, any_value(src_namespace) AS src_namespace, "
        "any_value(src_name) AS src_name, any_value(dst_type) AS dst_type, "
        "any_value(dst_namespace) AS dst_namespace, any_value(dst_name) AS dst_name, "
        "sum(events) AS events, sum(packets) AS packets, sum(bytes) AS bytes, "
        "sum(reply_packets) AS reply_packets, sum(reply_bytes) AS reply_bytes, "
        "sum(connections_started) AS connections_started, sum(connections_completed) AS connections_completed, "
        "bit_or(tcp_flags) AS tcp_flags, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
        "FROM flows_v GROUP BY start_time, end_time, node, reporter, action, rule_id, prefix, policy, proto, "
        "src_ip, dst_ip, sport, dport",
    ),
    "rule_totals": (
        "Exact packets per rule and run from the nft counters (latest reading), next to what was "
        "logged: for a rate-limited rule, `packets` is the true count and `logged` the sample.",
        "SELECT run_id, source_id, prefix, any_value(rule_id) AS rule_id, bool_or(rate_limited) AS rate_limited, "
        "sum(packets) AS packets, sum(logged) AS logged, max(time) AS time FROM ("
        "SELECT run_id, source_id, prefix, nft_rule, arg_max(rule_id, time) AS rule_id, "
        "arg_max(rate_limited, time) AS rate_limited, arg_max(run_packets, time) AS packets, "
        "arg_max(run_logged, time) AS logged, max(time) AS time "
        "FROM rule_counters GROUP BY run_id, source_id, prefix, nft_rule) "
        "GROUP BY run_id, source_id, prefix",
    ),
    "loss_latest": (
        "Current loss per run, reader and cause.",
        "SELECT run_id, source_id, cause, arg_max(events, time) AS events, max(time) AS time, "
        "arg_max(detail, time) AS detail FROM loss GROUP BY run_id, source_id, cause",
    ),
    "stats_latest": (
        "Current value of every counter per run and reader.",
        "SELECT run_id, source_id, name, arg_max(value, time) AS value, max(time) AS time "
        "FROM stats GROUP BY run_id, source_id, name",
    ),
}


def statements(existing: set[tuple[str, str]] | None = None) -> list[str]:
    """DDL for a new or existing database (idempotent), with the documentation as comments.

    `existing` holds the (table, column) pairs already in the database: the columns a newer
    schema added are added in place (`ALTER TABLE ... ADD COLUMN`, NULL in existing rows), so a
    store written by an older collector opens, upgrades once and keeps every row.
    """
    out = [t.ddl() for t in ALL_TABLES]
    if existing:
        have_tables = {t for t, _c in existing}
        out += [
            f"ALTER TABLE {t.name} ADD COLUMN {c.name} {c.sql}"
            for t in ALL_TABLES
            if t.name in have_tables
            for c in t.columns
            if (t.name, c.name) not in existing
        ]
    for t in ALL_TABLES:
        out.append(f"COMMENT ON TABLE {t.name} IS {_quote(t.doc)}")
        out.extend(f"COMMENT ON COLUMN {t.name}.{c.name} IS {_quote(c.doc)}" for c in t.columns)
    for name, (doc, query) in VIEWS.items():
        out.append(f"CREATE OR REPLACE VIEW {name} AS {query}")
        out.append(f"COMMENT ON VIEW {name} IS {_quote(doc)}")
    return out


_BEFORE_ROLLED = "start_time < coalesce((SELECT max(rolled_until) FROM rollup_state), TIMESTAMP '-infinity')"


def computed_rollup_sql(name: str) -> str:
    """A rollup a store or export lacks (written before it existed, with `rollup_state` already set),
    computed from the raw flows of the hours the others cover: the views then stay exact."""
    if name in ("flow_totals", "pair_totals", "totals_state"):  # none: the views read the hourly and raw rows
        cols = ", ".join(f"CAST(NULL AS {c.sql}) AS {c.name}" for c in BY_NAME[name].columns)
        return f"SELECT {cols} WHERE false"
    if name == NETSET_SOURCES.name:  # every source: a superset (the query matches the CIDRs), exact but slower
        return "SELECT DISTINCT src_ip FROM flows"
    for r in HOUR_ROLLUPS:  # its hours from the raw flows, its totals from those hours (as far as they reach)
        if name == r.hours.name:
            return r.rows_sql("f." + _BEFORE_ROLLED)
        if name == r.totals.name:
            return r.merged(f"(SELECT * FROM {r.hours.name} WHERE hour < (SELECT max(pairs_until) FROM totals_state))",
                            with_hour=False)
    return {
        "pair_hours": lambda: pair_hours_sql("f." + _BEFORE_ROLLED),
        "rule_hours": lambda: rule_hours_sql("f." + _BEFORE_ROLLED),
        "talkers": lambda: talkers_sql(_BEFORE_ROLLED),
    }[name]()


def _widen_rollups(con: Any) -> None:
    """A rollup table of an older store that lacks newer columns (a writer adds them in place; a
    reader cannot): shadowed by a temporary view of the same name with the missing ones NULL."""
    found: dict[str, tuple[str, str, set[str]]] = {}
    for db, sch, table, column in con.execute(
            "SELECT database_name, schema_name, table_name, column_name FROM duckdb_columns() "
            "WHERE database_name <> 'temp'").fetchall():
        found.setdefault(table, (db, sch, set()))[2].add(column)
    for t in ROLLUP_TABLES:
        if t.name not in found:
            continue
        db, sch, columns = found[t.name]
        missing = [c for c in t.columns if c.name not in columns]
        if missing:
            extra = ", ".join(f"NULL::{c.sql.split()[0]} AS {c.name}" for c in missing)
            con.execute(f'CREATE TEMP VIEW {t.name} AS SELECT *, {extra} FROM "{db}"."{sch}".{t.name}')


def ensure_rollups(con: Any) -> None:
    """For a reader of a store or export older than (some of) the rollups: the missing ones as
    temporary views computed from the raw flows (empty when nothing is rolled up), and the views
    that read them, so every query runs with the same answers (slower)."""
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    have |= {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    _widen_rollups(con)
    if ROLLUP_STATE.name not in have:
        con.execute(ROLLUP_STATE.ddl().replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    for t in ROLLUP_TABLES:
        if t.name not in have and t is not ROLLUP_STATE:
            con.execute(f"CREATE TEMP VIEW {t.name} AS {computed_rollup_sql(t.name)}")
    for name, (_doc, query) in VIEWS.items():
        if name not in have:
            con.execute(f"CREATE TEMP VIEW {name} AS {query}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_READERS = (
    "## Reading while the collector writes",
    "",
    "DuckDB lets one process write a database file and then refuses every other process, even",
    "read-only. While `flowtui collect` runs, open its snapshot instead, refreshed every few seconds:",
    "`duckdb -readonly flowtui.snapshot.duckdb` (or `flowtui status`, which picks the right file).",
    "Without a running collector the database itself opens read-only. Details and measurements:",
    "`flowtui/store/duckdb_store.py`.",
)

_TYPED = (
    "## Column types: what is typed, and why the rest is text",
    "",
    "DuckDB already stores every text column of `flows` dictionary-compressed (`pragma storage_info`:",
    "DICT_FSST for `action`, `prefix`, `count_source`, `l7`, `src_ip`, `dst_ip`); numbers are bit-packed",
    "or run-length encoded. `bench/bench_typed_columns.py` copied the 10M flow rows of",
    "`bench/bench_queries.py`'s store three ways and timed the ad-hoc questions the README names, each",
    "on the three copies in turn (DuckDB 2.0.1, 2 cores, load average 21-23, best of 3; two runs):",
    "",
    "| question over 10M raw flows | as stored (VARCHAR) | action ENUM | + addresses as numbers |",
    "|---|---|---|---|",
    "| size of `flows` | 279 MiB | 277 MiB | 295 MiB (UHUGEINT) |",
    "| group by address pair | 3,474-3,725 ms | 3,140-3,477 ms | 1,265-1,501 ms |",
    "| group by action, protocol | 527-564 ms | 197-243 ms | 220-249 ms |",
    "| filter action = 'Deny' | 371-510 ms | 112-133 ms | 137-169 ms |",
    "| one address (source or destination) | 521-589 ms | 526-603 ms | 358-652 ms |",
    "| a /16 of sources | 621-675 ms | 486-761 ms | 172-208 ms |",
    "| group by namespace pair (endpoints joined) | 2,643-3,613 ms | 2,360-3,136 ms | 2,979-3,843 ms |",
    "",
    "Storage gains nothing (the dictionaries already make text small). Queries do: an ENUM `action`",
    "makes filters and groupings by it 2-4x faster, numeric addresses make pair groupings and CIDR",
    "ranges 2-4x faster (a point lookup and the namespace grouping: within the noise). Neither is adopted",
    "yet: not for lack of gain, but adopting either is a schema change this release did not make",
    "safely: an in-place rewrite of the column in every store (not measured), the writers'",
    "Arrow schemas, the Parquet export and import round trip, and for numeric addresses IPv6 (128",
    "bits plus the family), network-set matching and every query that prints an address. The named",
    "queries and screens read rollups and would not change. Next step: `action` (and `count_source`)",
    "as ENUM, migrated in place; addresses as a typed column beside the text, the views keeping the",
    "text as the documented column.",
)


def _cell(text: str) -> str:
    """A Markdown table cell: GitHub splits cells at every `|`, code spans included, unless escaped."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The schema reference as Markdown."""
    lines = ["# flowtui flow store schema", "", (__doc__ or "").strip(), "", *_READERS, "", *_TYPED, ""]
    for t in ALL_TABLES:
        lines += [f"## `{t.name}`", "", t.doc, "", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.sql} | {_cell(c.doc)} |" for c in t.columns]
        lines.append("")
    lines += ["## Views", ""]
    lines += [f"- `{name}`: {doc}" for name, (doc, _q) in VIEWS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(markdown())
