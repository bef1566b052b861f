"""The collect loop: one reader thread -> a queue -> one writer thread, with loss accounting.

    reader (epoll over every namespace's NFLOG and conntrack sockets)
        recv() whole skbs straight into pooled 4 MiB buffers; hands a buffer over when it is
        full, or 50 ms old while the writer keeps up. Per event it does nothing: one system
        call and one tuple per skb.
        No free buffer (the writer is behind): it still drains the socket into a scratch
        buffer, counts the events and their sequence range, and reports them as
        `writer_backlog` loss, so the kernel never overruns because of the writer.
    writer (`writer.py`, the only user of the DuckDB connection)
        pipeline.process() per buffer; events inserted in batches of 128k rows (one DuckDB
        row group) or every second; flows flushed per closed bucket; loss and stats rows every
        second; rule counters every 5 s; a snapshot for readers every 5 s; retention every minute.
    counter poller
        nft counters of `ft:` rules in every namespace -> the writer's queue.

Starting closes the runs that died (their open flows kept, the run marked crashed) and counts
the events logged while no collector stored them (`recovery.py`, loss cause `collector_down`).

Stopping drains: the reader keeps reading for the kernel's flush timeout, the rule counters
are read a last time, the writer empties its queue, flushes every bucket and compares the
counters with what arrived (loss at the end of an overrun burst leaves no sequence gap).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from flowtui.collector import counters as nft_counters
from flowtui.collector import recovery
from flowtui.collector.config import CollectorConfig, Source
from flowtui.collector.conntrack import ConntrackSocket, accounting_enabled, enable_accounting
from flowtui.collector.dataset import DatasetSink
from flowtui.collector.loss import LossBook
from flowtui.collector.nflog import NLBUFSIZ_MAX
from flowtui.collector.parse import RawBatch, count_events
from flowtui.collector.writer import STOP, Backlog, Writer
from flowtui.store.duckdb_store import DuckStore, utcnow

log = logging.getLogger(__name__)


def node_of(netns: str | None) -> str:
    """The node a namespace stands for: `ft-<lab>-node-<name>` -> name; the host name otherwise."""
    if netns is None:
        return socket.gethostname()
    from enforcer.lab.names import lab_id_of_netns, target_of_netns

    lab = lab_id_of_netns(netns)
    target = target_of_netns(lab, netns) if lab else None
    return target.name if target is not None and target.kind in ("node", "ext") else netns


class Collector:
    """Open with `start()`, run with `run()` (or your own loop), end with `stop()`."""

    def __init__(self, cfg: CollectorConfig, store: DuckStore | None = None) -> None:
        self.cfg = cfg
        self.store = store or DuckStore(cfg.db, threads=cfg.duckdb_threads, snapshot_interval=cfg.snapshot_interval)
        self.sources: list[Source] = []
        self.q: queue.Queue[Any] = queue.Queue()
        self.pool: queue.Queue[bytearray] = queue.Queue()
        self.backlog = Backlog()
        self.run_id = 0
        self.writer: Writer | None = None
        self._reader_stop = threading.Event()
        self._poller_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._stopped = False
        self.error: BaseException | None = None

    @property
    def book(self) -> LossBook:
        """Loss and other counters of this run (live; safe to read from any thread)."""
        return self.writer.book if self.writer is not None else LossBook(self.run_id)

    # ---------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> None:
        cfg = self.cfg
        sink = None
        try:
            if cfg.flows_dir is not None:  # node mode: this node's rows into the cluster dataset
                if len(cfg.namespaces) != 1:
                    raise ValueError("a flows dataset is written per node: give exactly one namespace")
                sink = DatasetSink(cfg.flows_dir, cfg.node or node_of(cfg.namespaces[0]),
                                   give_up_seconds=cfg.dataset_give_up_seconds)
        except BaseException:
            self.store.close(snapshot=False)
            raise
        # One reading of the rule counters before the sockets are bound ends the previous run's
        # gap and starts this run's count: an event logged in between is this run's, stored or
        # counted lost (a reading after binding would leave the events between uncounted).
        baseline: dict[str | None, tuple[datetime, list[nft_counters.RuleCounter]]] = {}
        try:  # before this run exists and before its sockets are bound (see recovery.py)
            closed = recovery.close_crashed_runs(self.store)
            if cfg.counters:
                for netns in cfg.namespaces:
                    try:
                        baseline[netns] = (utcnow(), nft_counters.read_counters(netns))
                    except OSError as exc:
                        log.warning("cannot read nft counters in %s: %s", netns or "host", exc)
                recovery.count_gaps(self.store, cfg.namespaces, read=_cached(baseline))
            if sink is not None:  # what a dead run committed but never published, and the gap counts
                previous = self.store.query("SELECT max(run_id) FROM runs")[0][0]
                sink.catch_up(self.store, [r for r, _e in closed.runs], previous)
        except BaseException:
            self.store.close(snapshot=False)
            raise
        self.run_id = self.store.begin_run(_config_doc(cfg))
        try:
            for index, netns in enumerate(cfg.namespaces):
                sock = cfg.nflog_socket(netns, cfg.nflog)
                node = cfg.node or node_of(netns)
                source_id = self.store.add_source(self.run_id, netns, node, cfg.nflog.groups, sock.rcvbuf)
                src = Source(index, source_id, netns, node, sock)
                self.sources.append(src)
                if cfg.conntrack:
                    if netns is not None:
                        enable_accounting(netns)
                    elif not accounting_enabled(None):
                        log.warning("net.netfilter.nf_conntrack_acct is 0 here: allowed flows will have no counts")
                    src.conntrack = ConntrackSocket(netns)
            self.writer = Writer(cfg, self.store, self.sources, self.q, self.pool, self.backlog, self.run_id, sink)
        except BaseException:
            self._close_sockets()
            self.store.close(snapshot=False)
            raise
        for _ in range(cfg.buffers):
            self.pool.put(bytearray(cfg.buffer_bytes))
        if cfg.counters:  # the baseline: this run accounts only for its own packets
            groups = set(cfg.nflog.groups)
            for src in self.sources:
                if src.netns in baseline:
                    when, found = baseline[src.netns]
                    self.q.put(("counters", src.index, when, [c for c in found if c.group in groups]))
                else:
                    self._poll_counters_once()
                    break
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._guard(self._reader), name="flowtui reader", daemon=True),
            threading.Thread(target=self._guard(self.writer.run), name="flowtui writer", daemon=True),
        ]
        if cfg.counters:
            self._threads.append(
                threading.Thread(target=self._guard(self._poller), name="flowtui counters", daemon=True)
            )
        for t in self._threads:
            t.start()

    def run(self, duration: float | None = None, stop: threading.Event | None = None) -> None:
        """Collect until `duration` seconds passed or `stop` is set, then stop cleanly."""
        deadline = None if duration is None else time.monotonic() + duration
        stop = stop or threading.Event()
        while not stop.is_set() and self.error is None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
        self.stop()

    def stop(self) -> dict[str, Any]:
        """Drain, take the final counters, flush everything, close. Returns the summary."""
        if self._stopped:
            return self.summary()
        self._stopped = True
        drain = self.cfg.nflog.timeout_cs / 100 + 0.25
        time.sleep(drain)  # the kernel flushes partly filled batches after its timeout
        self._poller_stop.set()
        for t in self._threads:
            if t.name == "flowtui counters":
                t.join()  # so no older reading can land after the final one
        if self.cfg.counters:
            self._poll_counters_once()
        time.sleep(0.1)
        self._reader_stop.set()
        for t in self._threads:
            if t.name == "flowtui reader":
                t.join()
        self.q.put(STOP)
        for t in self._threads:
            t.join()
        self._close_sockets()
        self.store.close()
        if self.error is not None:
            raise RuntimeError("collector failed") from self.error
        return self.summary()

    def _close_sockets(self) -> None:
        for s in self.sources:
            s.nflog.close()
            if s.conntrack is not None:
                s.conntrack.close()

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by run()/stop()
                log.exception("%s failed", threading.current_thread().name)
                self.error = exc
                self._reader_stop.set()

        return run

    # ---------------------------------------------------------------------------------------
    # Reader

    def _reader(self) -> None:
        room = max(NLBUFSIZ_MAX, self.cfg.nflog.copy_range + 4096) + 4096
        ep = select.epoll()
        fds: dict[int, tuple[str, Source]] = {}
        for s in self.sources:
            ep.register(s.nflog.fileno(), select.EPOLLIN)
            fds[s.nflog.fileno()] = ("nflog", s)
            if s.conntrack is not None:
                ep.register(s.conntrack.fileno(), select.EPOLLIN)
                fds[s.conntrack.fileno()] = ("ct", s)
        scratch = bytearray(room)
        scratch_view = memoryview(scratch)
        cur = self._take_buffer()
        first = 0.0
        try:
            while not self._reader_stop.is_set():
                for fd, _mask in ep.poll(0.02):
                    kind, src = fds[fd]
                    if kind == "ct":
                        assert src.conntrack is not None
                        conns = src.conntrack.read()
                        if conns:
                            self.q.put(("ct", src.index, time.time_ns(), conns))
                        continue
                    for _ in range(256):  # then give the other sockets a turn
                        if cur is not None and len(cur.buf) - cur.used < room:
                            self._handoff(cur)
                            cur = self._take_buffer()
                        if cur is None:
                            n = src.nflog.recv_into(scratch_view)
                            if n == 0:
                                break
                            events, group, lo, hi = count_events(scratch, min(n, room))
                            self.q.put(("dropped", src.index, events, group, lo, hi))
                            cur = self._take_buffer()
                            continue
                        n = src.nflog.recv_into(memoryview(cur.buf)[cur.used :])
                        if n == 0:
                            break
                        if not cur.chunks:
                            first = time.monotonic()
                        cur.chunks.append((src.index, cur.used, n, time.time_ns()))
                        cur.used = (cur.used + n + 3) & ~3
                # Hand a partly filled buffer over after 50 ms only while the writer keeps up;
                # when it is behind, fill buffers completely, so the pool holds more events.
                if (
                    cur is not None
                    and cur.chunks
                    and time.monotonic() - first >= self.cfg.handoff_seconds
                    and self.backlog.empty
                ):
                    self._handoff(cur)
                    cur = self._take_buffer()
        finally:
            if cur is not None and cur.chunks:
                self._handoff(cur)
            elif cur is not None:
                self.pool.put(cur.buf)
            ep.close()

    def _take_buffer(self) -> RawBatch | None:
        try:
            return RawBatch(self.pool.get_nowait())
        except queue.Empty:
            return None

    def _handoff(self, batch: RawBatch) -> None:
        self.backlog.handed += batch.used
        self.q.put(batch)

    # ---------------------------------------------------------------------------------------
    # Counter poller

    def _poller(self) -> None:
        while not self._poller_stop.wait(self.cfg.counters_interval):
            self._poll_counters_once()

    def _poll_counters_once(self) -> None:
        for s in self.sources:
            try:
                found = nft_counters.read_counters(s.netns, self.cfg.nflog.groups)
            except OSError as exc:
                log.warning("cannot read nft counters in %s: %s", s.netns or "host", exc)
                continue
            self.q.put(("counters", s.index, utcnow(), found))

    # ---------------------------------------------------------------------------------------
    # Writer

    # ---------------------------------------------------------------------------------------
    # Rules and resources

    # ---------------------------------------------------------------------------------------
    # Reporting

    def summary(self) -> dict[str, Any]:
        doc = self.book.summary()
        doc["run_id"] = self.run_id
        doc["seconds"] = round(time.monotonic() - self._started, 3) if self._started else 0.0
        doc["store"] = asdict(self.store.stats)
        return doc


def _cached(
    readings: dict[str | None, tuple[datetime, list[nft_counters.RuleCounter]]],
) -> recovery.ReadCounters:
    def read(netns: str | None, groups: Iterable[int]) -> list[nft_counters.RuleCounter]:
        if netns not in readings:
            raise OSError("not read")
        wanted = set(groups)
        return [c for c in readings[netns][1] if not wanted or c.group in wanted]

    return read


def _config_doc(cfg: CollectorConfig) -> dict[str, Any]:
    return {
        "db": str(cfg.db),
        "namespaces": list(cfg.namespaces),
        "nflog": asdict(cfg.nflog),
        "rules": str(cfg.rules_file()),
        "bucket_seconds": cfg.bucket_seconds,
        "keep_events": cfg.keep_events,
        "conntrack": cfg.conntrack,
        "counters": cfg.counters,
        "node": cfg.node,
        "flows_dir": None if cfg.flows_dir is None else str(cfg.flows_dir),
        "retention": {k: None if v is None else v.total_seconds() for k, v in asdict(cfg.retention).items()},
    }


def lab_namespaces(lab_id: str) -> list[str]:
    """The node namespaces of a running lab (where the dataplane logs)."""
    from enforcer.lab.names import lab_prefix
    from enforcer.lab.state import lab_namespaces as all_namespaces

    prefix = lab_prefix(lab_id) + "node-"
    return [n for n in all_namespaces(lab_id) if n.startswith(prefix)]


def labs_up() -> list[str]:
    """Ids of the labs with a node namespace on this machine."""
    from enforcer.lab.state import list_labs

    return [lab for lab in list_labs() if lab_namespaces(lab)]


def collect(cfg: CollectorConfig, duration: float | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run a collector to completion (the CLI's entry point)."""
    collector = Collector(cfg)
    collector.start()
    collector.run(duration, stop)
    return collector.summary()


__all__: Sequence[str] = ["Collector", "CollectorConfig", "collect", "lab_namespaces", "labs_up", "node_of"]
