"""A synthetic recording of the article's flows, without a kernel: deterministic, for tests,
benchmarks and screenshots.

    article_recording(Path("x.duckdb"), events=3000)     # a flow store, as the collector writes it
    gen = EventFactory.article()                          # Arrow batches in the events schema
    gen.batch(100_000, start_us)                          # for load tests (vectorised)

Each event is one of the demo's flows (`flowtui.demo.probes.ARTICLE_PROBES`, plus a deny-listed
flood that dominates the count, as in the live demo), decided by the evaluator, and attributed to
the rule identifier the nftables compiler allocates for its deciding rule; `Log` rules that fire
add a group-2 event. The rule table, endpoints, flows per 1 s bucket, loss, stats and rule
counters are filled in like the collector's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from enforcer.evaluate import Evaluator, Flow, Hit
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, RuleRef, RuleTable, encode_prefix
from flowtui.store import schema

START = datetime(2026, 3, 14, 12, 0, 0)
FLOOD_SHARE = 0.6


@dataclass(frozen=True)
class FlowKind:
    """One kind of flow: its tuple template and what the evaluator decided."""

    flow: Flow
    node: str  # the node that reports the deciding rule
    action: str
    rule_id: int
    logged: tuple[int, ...]  # Log rule ids that fired
    weight: float


def _rule_index(refs: RuleTable) -> dict[tuple[Any, ...], int]:
    out: dict[tuple[Any, ...], int] = {}
    for r in refs:
        out.setdefault((r.kind, r.namespace, r.name, r.direction, r.rule), r.id)
    return out


def _hit_id(index: dict[tuple[Any, ...], int], hit: Hit | None) -> int | None:
    if hit is None:
        return None
    if hit.rule < 0 and hit.kind != "Profile":
        return index.get(("EndOfTier", hit.namespace, hit.name, hit.direction, -1))
    return index.get((hit.kind, hit.namespace, hit.name, hit.direction, hit.rule))


class EventFactory:
    """Makes events of the article's flow kinds, fast."""

    def __init__(self, resources: ResourceSet, kinds: list[FlowKind], refs: RuleTable,
                 nodes: Sequence[str]) -> None:
        self.resources = resources
        self.kinds = kinds
        self.refs = refs
        self.nodes = list(nodes)
        self.source_of = {n: i + 1 for i, n in enumerate(self.nodes)}

    @classmethod
    def article(cls) -> EventFactory:
        from enforcer.loader import load_paths
        from enforcer.nft.compiler import compile_node, default_options
        from flowtui.cli.common import scenario_dir
        from flowtui.cli.policy import build_flow, parse_protocol
        from flowtui.demo.probes import ARTICLE_PROBES

        resources = load_paths([str(scenario_dir())])
        state = ClusterState(resources)
        ids = IdAllocator()
        refs = RuleTable()
        for node in state.nodes:
            refs = refs.merged(compile_node(state, node, default_options(), ids).rules)
        index = _rule_index(refs)
        evaluator = Evaluator(state)
        kinds = []
        probes = list(ARTICLE_PROBES)
        for i, p in enumerate(probes):
            proto = parse_protocol(p.proto)
            sport = None if proto in (1, 58) else 40000 + i
            flow = build_flow(state, p.src, p.dst, proto, p.port, sport, None, None, p.ipv6)
            d = evaluator.decide(flow, explain=True)
            rule_id = _hit_id(index, d.enforced.decided_by)
            if rule_id is None:
                continue
            deciding = next((s for s in reversed(d.enforced.stages) if s.hit == d.enforced.decided_by),
                            d.enforced.stages[-1] if d.enforced.stages else None)
            node = (deciding.stage.node if deciding is not None else None) or sorted(state.nodes)[0]
            logged = tuple(i for i in (_hit_id(index, h) for h in d.enforced.logged) if i is not None)
            flood = p.src == "external:attacker" and p.proto == "udp"
            weight = FLOOD_SHARE if flood else (1 - FLOOD_SHARE) / max(1, len(probes) - 1)
            kinds.append(FlowKind(flow, node, "Allow" if d.verdict == "allow" else "Deny", rule_id, logged, weight))
        return cls(resources, kinds, refs, sorted(state.nodes))

    def batch(self, n: int, start_us: int, spacing_us: int = 10, seed: int = 0) -> pa.Table:
        """`n` events (events schema), `spacing_us` apart from `start_us`, kinds drawn by weight."""
        rng = np.random.default_rng(seed)
        weights = np.array([k.weight for k in self.kinds])
        pick = rng.choice(len(self.kinds), size=n, p=weights / weights.sum())
        sport_jitter = rng.integers(0, 2000, size=n)
        cols: dict[str, Any] = {}
        kinds = self.kinds

        def per(fn: Any, dtype: Any) -> np.ndarray:
            table = np.array([fn(k) for k in kinds], dtype=dtype)
            return table[pick]

        def opt(values: list[Any], typ: pa.DataType) -> pa.Array:
            arr = np.array(values, dtype=object)[pick]
            return pa.array(arr.tolist(), type=typ)

        time = start_us + np.arange(n, dtype=np.int64) * spacing_us
        cols["time"] = pa.array(time).cast(pa.timestamp("us"))
        cols["source_id"] = pa.array(per(lambda k: self.source_of[k.node], np.int32))
        cols["nflog_group"] = pa.array(np.ones(n, dtype=np.uint16))
        cols["seq"] = pa.array(np.arange(n, dtype=np.uint32))
        cols["hook"] = pa.array(np.full(n, 2, dtype=np.uint8))
        prefixes = [encode_prefix(k.action, k.rule_id) for k in kinds]
        cols["prefix"] = pa.DictionaryArray.from_arrays(pa.array(pick.astype(np.int32)), pa.array(prefixes))
        cols["action"] = pa.DictionaryArray.from_arrays(pa.array(pick.astype(np.int32)),
                                                        pa.array([k.action for k in kinds]))
        cols["rule_id"] = pa.array(per(lambda k: k.rule_id, np.int32))
        cols["ip_version"] = pa.array(per(lambda k: k.flow.version, np.uint8))
        cols["proto"] = pa.array(per(lambda k: k.flow.protocol, np.uint8))
        cols["src_ip"] = pa.DictionaryArray.from_arrays(pa.array(pick.astype(np.int32)),
                                                        pa.array([str(k.flow.src) for k in kinds]))
        cols["dst_ip"] = pa.DictionaryArray.from_arrays(pa.array(pick.astype(np.int32)),
                                                        pa.array([str(k.flow.dst) for k in kinds]))
        base_sport = per(lambda k: k.flow.src_port if k.flow.src_port is not None else -1, np.int64)
        sport = np.where(base_sport >= 0, base_sport + sport_jitter, -1)
        cols["sport"] = pa.array(np.where(sport >= 0, sport, 0).astype(np.uint16), mask=sport < 0)
        dport = per(lambda k: k.flow.dst_port if k.flow.dst_port is not None else -1, np.int64)
        cols["dport"] = pa.array(np.where(dport >= 0, dport, 0).astype(np.uint16), mask=dport < 0)
        icmp = per(lambda k: k.flow.icmp_type if k.flow.icmp_type is not None else -1, np.int64)
        cols["icmp_type"] = pa.array(np.where(icmp >= 0, icmp, 0).astype(np.uint8), mask=icmp < 0)
        cols["icmp_code"] = pa.array(np.where(icmp >= 0, 0, 0).astype(np.uint8), mask=icmp < 0)
        cols["tcp_flags"] = pa.array(np.where(per(lambda k: k.flow.protocol, np.int64) == 6, 2, 0).astype(np.uint8))
        cols["length"] = pa.array(per(lambda k: 92 if k.flow.protocol == 17 else 60, np.uint32))
        for name in ("indev", "outdev", "mark"):
            cols[name] = pa.nulls(n, pa.uint32())
        cols["src_ep"] = pa.nulls(n, pa.int32())
        cols["dst_ep"] = pa.nulls(n, pa.int32())
        del opt
        return pa.table({f.name: cols[f.name] for f in schema.EVENTS.arrow_schema})


class SyntheticFeed:
    """Writes the article's flows into a store as a collector would: run, sources, rules and
    endpoints first, then `push()` batches of enriched events (a stand-in collector)."""

    def __init__(self, store: Any, gen: EventFactory | None = None, start: datetime = START) -> None:
        from flowtui.collector.attribution import policy_hit
        from flowtui.collector.enrich import Enricher

        self.store = store
        self.gen = gen or EventFactory.article()
        self.enricher = Enricher(self.gen.resources)
        self.start = start
        self.run = store.begin_run({"synthetic": True})
        for node in self.gen.nodes:
            store.add_source(self.run, f"ft-synthetic-node-{node}", node, (1, 2), 1 << 26)
        store.insert_rows("rules", [
            {**vars(r), "prefix": encode_prefix(r.action, r.id), "policy": policy_hit(r), "first_seen": start}
            for r in self.gen.refs])
        store.insert_rows("endpoints", [
            {"id": e.id, "revision": e.revision, "type": e.kind, "namespace": e.namespace, "name": e.name,
             "node": e.node, "labels": e.label_strings, "addresses": list(e.addresses), "loaded_at": start}
            for e in self.enricher.endpoints])
        self._codes: dict[str, int] = {}
        self.pushed = 0

    def enrich(self, batch: pa.Table) -> pa.Table:
        for side in ("src", "dst"):
            col = batch.column(f"{side}_ip")
            if pa.types.is_dictionary(col.type):
                chunk = col.combine_chunks()
                texts = [str(x) for x in chunk.dictionary.to_pylist()]
                codes = self.enricher.lookup_codes(texts)
                ids = codes[np.asarray(chunk.indices)]
            else:
                ids = self.enricher.lookup_codes([str(x) for x in col.to_pylist()])
            batch = batch.set_column(batch.schema.get_field_index(f"{side}_ep"), f"{side}_ep",
                                     pa.array(ids, pa.int32()))
        return batch

    def push(self, n: int, start_us: int | None = None, spacing_us: int = 10, seed: int | None = None) -> pa.Table:
        """Insert `n` events (and the Log events they fire); returns the main batch."""
        if start_us is None:
            start_us = int((self.start - datetime(1970, 1, 1)).total_seconds() * 1e6) + self.pushed * spacing_us
        batch = self.enrich(self.gen.batch(n, start_us, spacing_us, self.pushed if seed is None else seed))
        self.store.insert("events", batch)
        logs = _log_events(self.gen, batch)
        if logs is not None:
            self.store.insert("events", logs)
        self.pushed += n
        return batch


def article_recording(db: Path, *, events: int = 3000, seconds: float = 30.0, start: datetime = START,
                      seed: int = 1) -> Path:
    """Write a complete flow store of `events` events over `seconds` to `db` (replaced)."""
    from flowtui.store.duckdb_store import DuckStore

    for stale in (db, db.with_name(db.name + ".wal")):
        if stale.exists():
            stale.unlink()
    spacing = max(1, int(seconds * 1e6 / max(events, 1)))
    store = DuckStore(db, snapshot_interval=None)
    try:
        feed = SyntheticFeed(store, start=start)
        run = feed.run
        feed.push(events, spacing_us=spacing, seed=seed)
        now = start + timedelta(seconds=seconds)
        store.query("""
            INSERT INTO flows BY NAME
            SELECT time_bucket(INTERVAL 1 second, time) AS start_time,
                   time_bucket(INTERVAL 1 second, time) + INTERVAL 1 second AS end_time,
                   source_id, action, rule_id, prefix, proto, src_ip, dst_ip, sport, dport,
                   any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, count(*) AS events,
                   CASE WHEN action = 'Allow' THEN 0 ELSE count(*) END AS packets,
                   CASE WHEN action = 'Allow' THEN 0 ELSE sum(length) END AS bytes,
                   0 AS reply_packets, 0 AS reply_bytes,
                   CASE WHEN action = 'Allow' THEN count(*) ELSE 0 END AS connections_started,
                   0 AS connections_completed, bit_or(tcp_flags) AS tcp_flags,
                   min(time) AS first_seen, max(time) AS last_seen, 'nflog' AS count_source
            FROM events GROUP BY 1, 2, source_id, action, rule_id, prefix, proto, src_ip, dst_ip, sport, dport""")
        received = int(store.query("SELECT count(*) FROM events")[0][0])
        store.insert_rows("stats", [
            {"time": now, "run_id": run, "source_id": None, "name": "received", "value": received},
            {"time": now, "run_id": run, "source_id": None, "name": "stored", "value": received}])
        store.insert_rows("loss", [
            {"time": now, "run_id": run, "source_id": None, "cause": c, "events": 0, "detail": "synthetic"}
            for c in ("kernel_ratelimit", "rcvbuf_overrun", "writer_backlog", "malformed", "store_error")])
        counters = store.query("SELECT source_id, rule_id, prefix, count(*), sum(length) FROM events "
                               "WHERE nflog_group = 1 GROUP BY ALL")
        store.insert_rows("rule_counters", [
            {"time": now, "run_id": run, "source_id": sid, "prefix": prefix, "rule_id": rid, "nft_rule": "synthetic",
             "packets": int(n), "bytes": int(b), "logged": int(n), "rate_limited": False,
             "run_packets": int(n), "run_logged": int(n)}
            for sid, rid, prefix, n, b in counters])
        store.end_run(run)
        store.query("UPDATE runs SET started = ?, ended = ?", [start, now])
    finally:
        store.close(snapshot=False)
    return db


def _log_events(gen: EventFactory, batch: pa.Table) -> pa.Table | None:
    """Group-2 events for the Log rules that fired on the batch's events."""
    logged = {k.rule_id: k.logged for k in gen.kinds if k.logged}
    if not logged:
        return None
    import pyarrow.compute as pc

    parts = []
    for rule_id, log_ids in logged.items():
        rows = batch.filter(pc.equal(batch.column("rule_id"), rule_id))
        for log_id in log_ids:
            ref: RuleRef | None = gen.refs.get(log_id)
            if ref is None or rows.num_rows == 0:
                continue
            t = rows
            n = t.num_rows
            t = t.set_column(t.schema.get_field_index("rule_id"), "rule_id", pa.array(np.full(n, log_id, np.int32)))
            t = t.set_column(t.schema.get_field_index("nflog_group"), "nflog_group",
                             pa.array(np.full(n, 2, np.uint16)))
            t = t.set_column(t.schema.get_field_index("prefix"), "prefix",
                             pa.array([encode_prefix("Log", log_id)] * n))
            t = t.set_column(t.schema.get_field_index("action"), "action", pa.array(["Log"] * n))
            parts.append(t)
    if not parts:
        return None
    return pa.concat_tables([p.cast(schema.EVENTS.arrow_schema) for p in parts])
