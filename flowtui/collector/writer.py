"""The writer thread: the only user of the store. Batches in, rows out, every loss counted.

It takes what the reader and the counter poller queue, in order:

- a `RawBatch`: `pipeline.process` (parse, decode, attribute, enrich), events pending for a
  batched commit (128k rows, one DuckDB row group, or every second), the flows aggregator fed,
  the buffer handed back to the reader's pool;
- `("dropped", ...)`: a chunk the reader could not buffer: `writer_backlog` loss, and its
  sequence range so it is not mistaken for a gap;
- `("ct", ...)`: conntrack DESTROY events -> `connections` rows and Allow flows' counts;
- `("counters", ...)`: nft rule counters -> `rule_counters` rows and `kernel_ratelimit` loss.

Each commit is one transaction: the pending events, the flows of the buckets that closed (summed
into their hour's rollups at once: `DuckStore.fold`), the partial flows of the open ones
(`flows_open`), and the rollups of the hours that closed (`pair_hours`, ...: then a compaction, and
the hours merged into `flow_totals`), so a kill -9 loses no committed event's flow and leaves no
rollup stale.
Between items it writes loss and stats rows and the run's heartbeat, reloads the rule
table and the enrichment resources when their files change, snapshots the store for readers
and applies retention. At STOP it flushes everything and, with the last counters, counts the
events lost at the end of an overrun burst (no sequence gap shows those).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from enforcer.model import ResourceSet
from enforcer.ruleids import RuleRef, encode_prefix
from flowtui.collector import counters as nft_counters
from flowtui.collector.aggregate import Aggregator
from flowtui.collector.attribution import Attribution, policy_hit
from flowtui.collector.config import CollectorConfig, Source
from flowtui.collector.conntrack import Connection
from flowtui.collector.dataset import DatasetSink
from flowtui.collector.enrich import Enricher
from flowtui.collector.loss import LossBook, ensure_all_causes
from flowtui.collector.parse import ParseStats, RawBatch, SeqTracker, count_events
from flowtui.collector.pipeline import process
from flowtui.store.duckdb_store import DuckStore, TotalsBusy, utcnow

log = logging.getLogger(__name__)
STOP = object()


@dataclass
class Backlog:
    """Bytes between the reader and the writer (each counter has a single writing thread)."""

    handed: int = 0  # handed over by the reader
    taken: int = 0  # taken by the writer

    @property
    def bytes(self) -> int:
        return max(self.handed - self.taken, 0)

    @property
    def empty(self) -> bool:
        return self.handed == self.taken


class Writer:
    def __init__(
        self,
        cfg: CollectorConfig,
        store: DuckStore,
        sources: list[Source],
        q: queue.Queue[Any],
        pool: queue.Queue[bytearray],
        backlog: Backlog,
        run_id: int,
        sink: DatasetSink | None = None,
    ) -> None:
        self.cfg = cfg
        self.sink = sink  # the cluster flows dataset (`--flows-dir`): this node's rows, appended
        self.store = store
        self.sources = sources
        self.q = q
        self.pool = pool
        self.backlog = backlog
        self.run_id = run_id
        self.book = LossBook(run_id)
        self.attribution = Attribution(cfg.rules_file())
        self.seq = SeqTracker()
        self.parse_stats = ParseStats()
        self.aggregator = Aggregator(cfg.bucket_seconds, grace_seconds=max(2.0, 4 * cfg.batch_seconds + 1.0))
        self.aggregator.track_deltas = sink is not None
        self.rules_stored: dict[int, RuleRef] = {}
        self.received_prefix: dict[tuple[int, str], int] = defaultdict(int)
        self.counter_deltas: dict[int, dict[str, tuple[int | None, int | None, bool]]] = {}
        self.baseline = nft_counters.CounterBaseline()
        self.enricher = Enricher()
        self._resource_stamp: tuple[Any, ...] = ()
        self._last_warning = -10.0
        self._source_ids = np.asarray([s.source_id for s in sources], dtype=np.int32)
        self._offset_us = int(cfg.clock_offset_seconds * 1e6)
        for src in sources:
            for group in cfg.nflog.groups:
                self.seq.start(src.index, group)  # a fresh kernel instance counts from 0
        ensure_all_causes(self.book, [s.source_id for s in sources])
        self.store.defer_totals()  # an hour's end merges the totals on the store's worker, not in our commit
        self._load_resources(force=True)
        self._store_rules()

    def run(self) -> None:
        """Process the queue until STOP, then flush everything and close the run."""
        cfg = self.cfg
        pending: list[pa.Table] = []
        pending_rows = 0
        last = {"flush": time.monotonic(), "stats": 0.0, "retention": time.monotonic(), "resources": 0.0,
                "publish": time.monotonic()}
        while True:
            try:
                item = self.q.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is STOP:
                break
            if isinstance(item, RawBatch):
                if cfg.slow_writer_seconds:
                    time.sleep(cfg.slow_writer_seconds)
                table = self._process(item)
                if table is not None and table.num_rows:
                    pending.append(table)
                    pending_rows += table.num_rows
            elif item is not None:
                self._handle(item)
            now = time.monotonic()
            if pending_rows >= cfg.max_batch_events or now - last["flush"] >= cfg.batch_seconds:
                last["flush"] = now
                self._commit(pending, pending_rows, final=False)
                pending, pending_rows = [], 0
            if now - last["stats"] >= cfg.stats_interval:
                last["stats"] = now
                self._write_stats()
                self.store.heartbeat(self.run_id)
            if now - last["resources"] >= 2.0:
                last["resources"] = now
                self._load_resources()
                self._store_rules()
            if self.sink is not None and now - last["publish"] >= cfg.flush_seconds:
                last["publish"] = now
                self._publish()
            if self.store.snapshot_due():
                self.store.snapshot()
            if now - last["retention"] >= cfg.retention_interval and not self.store.totals_busy:
                last["retention"] = now
                self.store.retain(cfg.retention)
        self._commit(pending, pending_rows, final=True)
        self._store_rules()
        self.book.lose("malformed", self.seq.unresolved())  # at least one event each
        self._end_of_run_comparison()
        self._write_stats(force=True)
        self.store.end_run(self.run_id)
        if self.sink is not None:
            self._publish(final=True)

    def _publish(self, final: bool = False) -> None:
        """Write what the dataset has pending; count the events of flow rows it had to drop."""
        assert self.sink is not None
        if final:  # nothing can be retried after the run: what is still unwritten is lost
            self.sink.give_up_seconds = 0.0
        dropped = self.sink.flush(self.store.read_table)
        self.sink.compact(utcnow())
        for sid, events in dropped.items():
            self.book.lose("dataset_error", events, sid)
        self.book.set("dataset_parts", self.sink.stats.parts)
        self.book.set("dataset_failures", self.sink.stats.failures)
        self.book.set("dataset_compacted_hours", self.sink.stats.compacted_hours)
        if final and dropped:  # the count itself: in the local store, and in the dataset if it can be
            self._write_stats(force=True)
            self.sink.flush(None)

    def _process(self, raw: RawBatch) -> pa.Table | None:
        self.backlog.taken += raw.used
        self.book.peak("queue_peak_bytes", self.backlog.bytes + raw.used)
        before = ParseStats(**asdict(self.parse_stats))
        try:
            result = process(
                raw,
                source_ids=self._source_ids,
                attribution=self.attribution,
                enricher=self.enricher,
                seq=self.seq,
                stats=self.parse_stats,
                clock_offset_us=self._offset_us,
            )
        except Exception:
            log.exception("a batch could not be processed; its events are counted as malformed")
            lost = sum(count_events(memoryview(raw.buf)[s : s + n], n)[0] for _i, s, n, _t in raw.chunks)
            self.book.lose("malformed", lost)
            self.pool.put(raw.buf)
            return None
        self.pool.put(raw.buf)
        st = self.parse_stats
        self._warn_odd(st, before)
        self.book.lose("malformed", st.malformed - before.malformed)
        self.book.count("unexpected_messages", st.unexpected - before.unexpected)
        self.book.count("netlink_errors", st.errors - before.errors)
        self.book.count("unknown_attributes", st.unknown_attrs - before.unknown_attrs)
        for index, n in result.received.items():
            self.book.count("received", n, int(self._source_ids[index]))
        for (index, group), missing in result.missing.items():
            self.book.lose("rcvbuf_overrun", missing, int(self._source_ids[index]))
            self.book.count(f"seq_gap_group_{group}", missing, int(self._source_ids[index]))
        for (index, _group), n in result.malformed_gaps.items():
            self.book.lose("malformed", n, int(self._source_ids[index]))
        for key, n in result.received_prefix.items():
            self.received_prefix[key] += n
        try:
            self.aggregator.add_events(result.columns)
        except Exception:  # the events themselves are still stored
            log.exception("aggregating a batch into flows failed")
            self.book.count("aggregate_errors", 1)
        a = self.attribution.stats
        self.book.set("unknown_rule", a.unknown_rule)
        self.book.set("foreign_prefix", a.foreign_prefix)
        self.book.set("no_prefix", a.no_prefix)
        self.book.set("action_mismatch", a.action_mismatch)
        self.book.set("seq_restarts", self.seq.restarts)
        return result.events

    def _warn_odd(self, st: ParseStats, before: ParseStats) -> None:
        """Log malformed and unexpected messages, at most every 10 s (they are counted anyway)."""
        odd = {
            "malformed": st.malformed - before.malformed,
            "unexpected": st.unexpected - before.unexpected,
            "NLMSG_ERROR": st.errors - before.errors,
            "unknown-attribute": st.unknown_attrs - before.unknown_attrs,
        }
        odd = {k: v for k, v in odd.items() if v}
        now = time.monotonic()
        if odd and now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("odd netlink input (counted, see `flowtui status`): %s", odd)

    def _commit(self, pending: list[pa.Table], rows: int, final: bool) -> None:
        """One transaction: the pending events, the flows of buckets that closed (moved out of
        `flows_open`), and the partial flows of open buckets since the last commit. A crash keeps
        all of it or none, so every committed event has its flow (in `flows` or `flows_open`)."""
        closed = self.aggregator.flush(None if final else time.time_ns() // 1000 + self._offset_us)
        opened = self.aggregator.take_open()
        if not rows and not closed.num_rows and not opened.num_rows:
            return
        ids = ",".join(str(int(i)) for i in self._source_ids) or "NULL"
        before = datetime.fromtimestamp(self.aggregator.flushed_before / 1e6, UTC).replace(tzinfo=None)
        t0 = time.perf_counter()
        try:
            try:
                self._transaction(pending, rows, closed, opened, ids, before)
            except TotalsBusy:  # late rows for hours the store's worker was totalling: once it is done
                self.store.wait_totals()
                self._transaction(pending, rows, closed, opened, ids, before)
        except Exception:
            log.exception("committing %d events and %d flow rows failed", rows, closed.num_rows + opened.num_rows)
            self.book.lose("store_error", rows)
            self.aggregator.take_closed_unsaved()  # lost with the commit: not for the dataset either
            return
        if self.sink is not None:  # what this commit added, as the dataset's append-only rows
            if rows and self.cfg.keep_events:
                self.sink.append("events", pa.concat_tables(pending, promote_options="permissive"))
            delta = self.aggregator.take_closed_unsaved()
            self.sink.append("flows", pa.concat_tables([delta, opened]) if delta.num_rows else opened)
        self.book.peak("commit_max_us", int((time.perf_counter() - t0) * 1e6))  # the writer away from its queue
        self.book.count("stored", rows)
        self.book.count("flow_rows", closed.num_rows)
        self.book.count("open_flow_rows", opened.num_rows)
        self.book.set("late_flow_rows", self.aggregator.late_rows)

    def _transaction(self, pending: list[pa.Table], rows: int, closed: pa.Table, opened: pa.Table, ids: str,
                     before: datetime) -> None:
        with self.store.transaction():
            if rows and self.cfg.keep_events:
                self.store.insert("events", pa.concat_tables(pending, promote_options="permissive"))
            if closed.num_rows:
                self.store.insert("flows", closed)
                self.store.fold(closed)  # into their hour's rollups now, not all at the hour's end
                self.store.query(f"DELETE FROM flows_open WHERE source_id IN ({ids}) AND start_time < ?", [before])
            if opened.num_rows:
                self.store.insert("flows_open", opened)
            if closed.num_rows:  # the hours whose buckets all closed (one at a time: catching up
                # on a large upgraded store must not stall the writer); their totals: the store's worker
                self.store.roll_up(before, max_hours=1)

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "dropped":
            _k, index, events, group, lo, hi = item
            sid = int(self._source_ids[index])
            self.book.lose("writer_backlog", events, sid)
            self.book.count("received", events, sid)
            self.seq.skip(index, group, lo, hi)
        elif kind == "ct":
            _k, index, t_ns, conns = item
            self._connections(index, t_ns, conns)
        elif kind == "counters":
            _k, index, when, found = item
            self._counters(index, when, found)

    def _connections(self, index: int, t_ns: int, conns: list[Connection]) -> None:
        sid = int(self._source_ids[index])
        self.book.count("conntrack_events", len(conns), sid)
        rows = []
        end_us = t_ns // 1000 + self._offset_us
        for c in conns:
            src_ep = self.enricher.lookup(c.src_ip) if c.src_ip else None
            dst_ep = self.enricher.lookup(c.dst_ip) if c.dst_ip else None
            rule_id = self.aggregator.add_connection(
                end_us=end_us,
                source_id=sid,
                proto=c.proto,
                src_ip=c.src_ip,
                dst_ip=c.dst_ip,
                sport=c.sport,
                dport=c.dport,
                packets=c.packets,
                bytes_=c.bytes,
                reply_packets=c.reply_packets,
                reply_bytes=c.reply_bytes,
                src_ep=src_ep,
                dst_ep=dst_ep,
            )
            rows.append(
                {
                    "time": datetime.fromtimestamp(t_ns / 1e9, UTC).replace(tzinfo=None),
                    "source_id": sid,
                    "start_time": None
                    if not c.start_ns
                    else datetime.fromtimestamp(c.start_ns / 1e9, UTC).replace(tzinfo=None),
                    "proto": c.proto,
                    "src_ip": c.src_ip,
                    "dst_ip": c.dst_ip,
                    "sport": c.sport,
                    "dport": c.dport,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "reply_packets": c.reply_packets,
                    "reply_bytes": c.reply_bytes,
                    "rule_id": rule_id,
                }
            )
        try:
            self.store.insert_rows("connections", rows)
        except Exception:
            log.exception("inserting %d connections failed", len(rows))
            return
        if self.sink is not None:
            self.sink.append_rows("connections", rows)

    def _counters(self, index: int, when: datetime, found: list[nft_counters.RuleCounter]) -> None:
        sid = int(self._source_ids[index])
        rows = []
        limited_lost = 0
        per_prefix: dict[str, tuple[int | None, int | None, bool]] = {}
        for c, packets, logged in self.baseline.delta(index, found):
            rows.append(
                {
                    "time": when,
                    "run_id": self.run_id,
                    "source_id": sid,
                    "prefix": c.prefix,
                    "rule_id": c.rule_id,
                    "nft_rule": c.nft_rule,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "logged": c.logged if c.rate_limited else c.packets,
                    "rate_limited": c.rate_limited,
                    "run_packets": packets,
                    "run_logged": logged,
                }
            )
            if c.rate_limited and packets is not None and logged is not None:
                limited_lost += max(0, packets - logged)
            old = per_prefix.get(c.prefix, (0, 0, False))
            per_prefix[c.prefix] = (
                None if old[0] is None or packets is None else old[0] + packets,
                None if old[1] is None or logged is None else old[1] + logged,
                old[2] or c.rate_limited,
            )
        self.counter_deltas[index] = per_prefix
        self.book.set_loss("kernel_ratelimit", limited_lost, sid)
        try:
            self.store.insert_rows("rule_counters", rows)
        except Exception:
            log.exception("inserting rule counters failed")
            return
        if self.sink is not None:
            self.sink.append_rows("rule_counters", rows)

    def _end_of_run_comparison(self) -> None:
        """Events the kernel logged (rule counters) that neither arrived nor left a sequence gap."""
        for s in self.sources:
            per_prefix = self.counter_deltas.get(s.index)
            if not per_prefix:
                continue
            expected = sum(logged for _p, logged, _l in per_prefix.values() if logged is not None)
            arrived = sum(self.received_prefix.get((s.index, p), 0) for p, v in per_prefix.items() if v[1] is not None)
            # Everything already counted for this reader, and (conservatively) the malformed
            # messages we could not tie to one: better to miss a tail loss than count one twice.
            explained = sum(
                v
                for (sid, cause), v in list(self.book.loss.items())
                if (sid == s.source_id and cause not in ("kernel_ratelimit", "dataset_error"))
                or (sid is None and cause == "malformed")
            )
            tail = expected - arrived - explained
            self.book.set("counter_expected", expected, s.source_id)
            self.book.set("counter_arrived", arrived, s.source_id)
            if tail > 0:
                log.warning("%s: %d events lost without a sequence gap (end of an overrun burst)", s.node, tail)
                self.book.lose("rcvbuf_overrun", tail, s.source_id)
                self.book.set("counter_tail_loss", tail, s.source_id)

    def _write_stats(self, force: bool = False) -> None:
        for s in self.sources:
            self.book.set("enobufs", s.nflog.enobufs, s.source_id)
            if s.conntrack is not None:
                self.book.set("conntrack_enobufs", s.conntrack.stats.enobufs, s.source_id)
                self.book.set("conntrack_malformed", s.conntrack.stats.malformed, s.source_id)
        self.book.set("queue_bytes", self.backlog.bytes)
        self.book.set("flow_rows_pending", self.aggregator.pending_rows)
        loss_rows, stat_rows = self.book.rows(utcnow(), force=force)
        try:
            self.store.insert_rows("loss", loss_rows)
            self.store.insert_rows("stats", stat_rows)
        except Exception:
            log.exception("writing loss and stats failed")
        if self.sink is not None:
            self.sink.append_rows("loss", loss_rows)
            self.sink.append_rows("stats", stat_rows)

    def _store_rules(self) -> None:
        self.attribution.reload()
        refs = self.attribution.take_unstored()
        rows = []
        now = utcnow()
        for r in refs:
            if self.rules_stored.get(r.id) == r:
                continue
            self.rules_stored[r.id] = r
            doc = asdict(r)
            doc.update(prefix=encode_prefix(r.action, r.id), policy=policy_hit(r), first_seen=now)
            rows.append(doc)
        if rows:
            ids = [r["id"] for r in rows]
            self.store.query(f"DELETE FROM rules WHERE id IN ({','.join(str(int(i)) for i in ids)})")
            self.store.insert_rows("rules", rows)

    def _load_resources(self, force: bool = False) -> None:
        if self.cfg.load_resources is None:
            if force:
                self._set_enricher(ResourceSet())
            return
        stamp: tuple[Any, ...] = tuple((p, _mtime(p)) for p in self.cfg.resource_paths)
        if self.cfg.resources_stamp is not None:
            try:
                stamp += (self.cfg.resources_stamp(),)
            except Exception as exc:  # the datastore is away: keep the resources we have
                log.warning("cannot tell whether the resources changed: %s", exc)
                if not force:
                    return
        if not force and stamp == self._resource_stamp:
            return
        self._resource_stamp = stamp
        try:
            resources = self.cfg.load_resources()
        except Exception as exc:
            log.error("cannot load resources for enrichment (keeping the previous ones): %s", exc)
            if force:
                self._set_enricher(ResourceSet())
            return
        self._set_enricher(resources)

    def _set_enricher(self, resources: ResourceSet) -> None:
        revision = int(self.store.query("SELECT coalesce(max(revision), 0) + 1 FROM endpoints")[0][0])
        first = self.store.next_id("endpoints", "id")
        self.enricher = Enricher(resources, revision=revision, first_id=first)
        now = utcnow()
        self.store.insert_rows(
            "endpoints",
            [
                {
                    "id": e.id,
                    "revision": e.revision,
                    "type": e.kind,
                    "namespace": e.namespace,
                    "name": e.name,
                    "node": e.node,
                    "labels": e.label_strings,
                    "addresses": list(e.addresses),
                    "loaded_at": now,
                }
                for e in self.enricher.endpoints
            ],
        )


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0
