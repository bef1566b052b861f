"""The per-node agent: watch the etcd datastore and keep one node's kernel table in step with it.

    agent = Agent(EtcdDatastore(...), reconciler, node="node-a", report=print_json,
                  metrics=AgentMetrics("node-a"), status=StatusWriter(...))
    agent.run()                       # until the process is stopped

List, then watch from the list's revision (Calico's Felix does the same through libcalico-go's
watchersyncer), keeping what was listed current with the watch's events (`Mirror`): every batch of
changes is reconciled from that copy (no read of etcd per event) for this node only, through the same
`Reconciler` as `flowtui apply` (so a toggle is still one set element, and a restart adopts the
live table when it matches the record instead of replacing it). When etcd compacted the history
the watch needed, the agent lists again. **Fail static**: when etcd cannot be reached the agent
touches nothing — the kernel keeps the last table — reports `degraded`, and retries with back-off;
while it waits it asks etcd's members for their health every quarter second, so that when etcd is
back (quorum restored) it lists and converges at once rather than at the end of the back-off.

The watch stream is read on a thread of its own, which stamps each event when it arrives (the
start of the programming latency) and queues it; the loop reconciles once for everything queued.
A stream can also go silent without breaking (a node cut from etcd by a firewall: no reset ever
comes), so while it is quiet the loop asks etcd for its revision every `HEARTBEAT` seconds;
when that fails, the node is degraded and the silent stream is abandoned for a fresh list.

States (status file, metrics, JSON lines): starting, in-sync, degraded (etcd unreachable: last
table kept), failed (what is stored cannot be loaded or planned, or the node's table could not be
compiled or applied: previous table kept; retried with back-off and on the next change).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from enforcer.agent_metrics import AgentMetrics
from enforcer.agent_status import StatusWriter
from enforcer.datastore import DatastoreError
from enforcer.datastore.etcd import (
    DESIRED_RANGES,
    SPANNING_RANGE,
    Compacted,
    EtcdDatastore,
    EtcdUnavailable,
    WatchEvent,
    WatchHandle,
)
from enforcer.datastore.mirror import Mirror
from enforcer.lab.names import LabError
from enforcer.loader import LoadError
from enforcer.reconcile import NodeResult, Reconciler

BACKOFF = (0.2, 5.0)  # seconds: first retry, most between retries
HEARTBEAT = 2.0  # seconds of a quiet watch before etcd is asked whether it is still there
# While degraded, etcd's members are asked for their health this often (each for at most
# PROBE_TIMEOUT): the back-off's wait ends as soon as one can serve, so convergence after quorum
# returns is not delayed by the back-off (the issue asks for 5 s; a full list is not the probe).
PROBE_EVERY = 0.25
PROBE_TIMEOUT = 1.0


class _Watch:
    """One watch stream per range (`SPANNING_RANGE`, or `DESIRED_RANGES` where etcd refuses it),
    each read on a daemon thread into one queue of (arrival time, event or error). `abandon()` ends
    them, even when a connection is silent (its socket is shut down), and what they still read goes
    nowhere."""

    def __init__(self, datastore: EtcdDatastore, start_revision: int,
                 ranges: tuple[tuple[str, str], ...] = SPANNING_RANGE) -> None:
        self.items: queue.Queue[tuple[float, WatchEvent | BaseException]] = queue.Queue()
        self._abandoned = threading.Event()
        self._handles = [WatchHandle() for _ in ranges]
        for (low, high), handle in zip(ranges, self._handles, strict=True):
            threading.Thread(target=self._read, args=(datastore, start_revision, low, high, handle),
                             name="etcd watch", daemon=True).start()

    def _read(self, datastore: EtcdDatastore, start_revision: int, low: str, high: str, handle: WatchHandle) -> None:
        try:
            for event in datastore.kv.watch(low, start_revision, high, handle):
                if self._abandoned.is_set():
                    return
                self.items.put((time.perf_counter(), event))
            raise EtcdUnavailable(f"etcd datastore {datastore.url}: the watch stream ended")
        except BaseException as exc:  # handed to the loop, which decides
            if not self._abandoned.is_set():
                self.items.put((time.perf_counter(), exc))

    def abandon(self) -> None:
        self._abandoned.set()
        for handle in self._handles:
            handle.close()  # wakes a read blocked on a silent connection: the thread ends


class Agent:
    def __init__(self, datastore: EtcdDatastore, reconciler: Reconciler, node: str,
                 report: Callable[[dict[str, Any]], None], backoff: tuple[float, float] = BACKOFF, *,
                 metrics: AgentMetrics | None = None, status: StatusWriter | None = None,
                 heartbeat: float = HEARTBEAT) -> None:
        self.datastore = datastore
        self.reconciler = reconciler
        self.node = node
        self.report = report
        self.backoff = backoff
        self.metrics = metrics
        self.status = status
        self.heartbeat = heartbeat
        self.state = "starting"
        self.revision = 0  # the datastore revision this node enforces
        self.error: str | None = None
        self._counted = False  # the table's size is in the metrics
        self._backlog_published = False  # this machine's unpublished refs are in etcd (once per run)
        self._stop = threading.Event()
        # DESIRED_RANGES once etcd refuses the spanning watch
        self._ranges: tuple[tuple[str, str], ...] = SPANNING_RANGE

    def stop(self) -> None:
        """End `run` (from another thread) within a heartbeat; the kernel's table stays."""
        self._stop.set()

    def _set(self, state: str, error: str | None = None, revision: int | None = None) -> None:
        """The one place state and revision change: metrics and the status file first, so whoever
        sees the new `state` or `revision` finds them saying the same."""
        revision = self.revision if revision is None else revision
        if self.metrics is not None:
            self.metrics.state(state)
            self.metrics.revision(revision)
        if self.status is not None:  # with the table the node holds, for the published state
            self.status.update(state=state, revision=revision, error=error, table=self.reconciler.applied(self.node))
        self.revision = revision
        self.state = state
        self.error = error

    def _say(self, event: str, **fields: Any) -> None:
        self.report({"event": event, "node": self.node, "state": self.state, "revision": self.revision, **fields})

    def converge(self, seen_at: float | None = None, mirror: Mirror | None = None) -> int:
        """Reconcile this node with the datastore as `mirror` holds it (None: as etcd lists it
        now); the revision it read (the watch resumes after it).
        `seen_at`: when the change that asked for it arrived (perf_counter), for the latency."""
        start = time.perf_counter()
        with self.datastore.one_read(None if mirror is None else mirror.read()):
            result = self.reconciler.reconcile([self.node])
        seen = result.revision
        done = time.perf_counter()
        failed = [f"{n.node}: {n.error}" for n in result.failed]
        if self.metrics is not None:
            for n in result.nodes:
                self.metrics.reconciled(n.status)
            if seen_at is not None and any(n.status == "applied" for n in result.nodes):
                self.metrics.programmed(done - seen_at)
            self._count_table(result.nodes)
        self._set("failed" if failed else "in-sync", "; ".join(failed) or None, max(seen, result.revision))
        latency = {"latency_ms": round((done - seen_at) * 1000, 1)} if seen_at is not None else {}
        self._say("reconciled", ms=round((done - start) * 1000, 1), **latency,
                  status=[n.status for n in result.nodes], **({"errors": failed} if failed else {}))
        return seen

    def _count_table(self, results: Sequence[NodeResult]) -> None:
        """The table's size for the metrics: the reconciler's copy, else (a toggle served from the
        records, which keep no table) the live one, read only when the kernel changed."""
        assert self.metrics is not None
        table = self.reconciler.applied(self.node)
        if table is None and (not self._counted or any(n.status == "applied" for n in results)):
            try:
                table = self.reconciler.backend.current(self.node)
            except Exception:  # a metric is not worth failing the agent: the last count stays
                return
        if table is not None:
            self.metrics.table(table)
            self._counted = True
        self.metrics.layouts(self.reconciler.layouts(self.node))

    def _follow(self, mirror: Mirror, rounds: int | None, done: int) -> int:
        """Watch from the mirror's revision + 1, keep it current and reconcile each burst of
        changes from it; returns when `rounds` reconciles are done. Raises what the watch or
        etcd raised (the caller recovers, with a fresh list)."""
        watch = _Watch(self.datastore, mirror.revision + 1, self._ranges)
        try:
            while (rounds is None or done < rounds) and not self._stop.is_set():
                try:
                    arrived, item = watch.items.get(timeout=self.heartbeat)
                except queue.Empty:
                    self.datastore.kv.txn([], [])  # quiet: is etcd still there? (EtcdUnavailable if not)
                    continue
                first: float | None = None
                while True:  # everything queued now is one reconcile
                    if isinstance(item, BaseException):
                        raise item
                    # Any change reconciles, even at a revision already enforced: a transaction over
                    # both watched ranges arrives on two streams, and its second half comes after the
                    # first was reconciled.
                    if mirror.apply(item):
                        first = arrived if first is None else first
                    last = item.last
                    try:  # the rest of a transaction's events is waited for: never half of one
                        arrived, item = watch.items.get_nowait() if last else watch.items.get(timeout=self.heartbeat)
                    except queue.Empty:
                        if not last:  # a response that stops midway: its stream is broken
                            raise EtcdUnavailable(f"etcd datastore {self.datastore.url}: a watch response "
                                                  "ended midway") from None
                        break
                if first is not None:
                    self.converge(first, mirror)
                    done += 1
            return done
        finally:
            watch.abandon()

    def _publish_backlog(self) -> None:
        """Once per run, after the node is enforced (never before: the kernel does not wait on
        it): the refs this machine's records hold that etcd lacks, so that any machine can name
        what this node's ids count. Ids etcd gives another meaning are reported, not published.
        Etcd unreachable: tried again after the next list."""
        from enforcer.datastore.shared import publish_missing
        from enforcer.ruleids import RuleIdError

        if self._backlog_published:
            return
        try:
            _ids, local = self.reconciler.rule_ids()
            published, conflicts = publish_missing(self.datastore.kv, local)
        except EtcdUnavailable as err:  # the watch finds out too; tried again after the next list
            self._backlog_published = "permission denied" in str(err)  # a role that may not: said once
            self._say("rules", error=f"publishing this machine's rule ids: {err}")
            return
        except (RuleIdError, DatastoreError) as err:  # a damaged table here or in etcd: said, not retried
            self._backlog_published = True
            self._say("rules", error=f"publishing this machine's rule ids: {err}")
            return
        self._backlog_published = True
        if published or conflicts:
            self._say("rules", published=published, **({"conflicts": conflicts[:20], "error": (
                f"{len(conflicts)} rule ids of this machine's records mean another rule in etcd "
                f"(compiled apart before ids were leased): counters and flows with them are misnamed "
                f"elsewhere")} if conflicts else {}))

    def _await_datastore(self, delay: float) -> None:
        """Wait out the back-off's `delay`, or less: until a member of etcd says it can serve
        (probed every PROBE_EVERY s)."""
        deadline = time.monotonic() + delay
        # at least one probe's interval: a member that says it can serve while our requests
        # still fail must not make this a busy loop
        self._stop.wait(min(PROBE_EVERY, delay))
        while not self._stop.is_set():
            if self.datastore.kv.healthy(PROBE_TIMEOUT) is not None:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(PROBE_EVERY, left))

    def run(self, rounds: int | None = None) -> None:
        """List, reconcile, watch; on compaction list again; on an unreachable etcd wait and retry
        (nothing touched). `rounds`: stop after that many reconciles (tests); None: forever."""
        delay = self.backoff[0]
        done = 0
        while (rounds is None or done < rounds) and not self._stop.is_set():
            try:
                mirror = Mirror.listed(self.datastore.kv)
                self.converge(mirror=mirror)
                done += 1
                delay = self.backoff[0]
                self._publish_backlog()
                done = self._follow(mirror, rounds, done)
            except Compacted as err:
                if self.metrics is not None:
                    self.metrics.relisted()
                self._say("relist", reason=str(err))
            except EtcdUnavailable as err:
                if "permission denied" in str(err) and self._ranges == SPANNING_RANGE:
                    # A login whose role grants the two prefixes alone: watch them apart (a
                    # transaction over both may then be enforced in two steps).
                    self._ranges = DESIRED_RANGES
                    self._say("watch", ranges=[list(r) for r in DESIRED_RANGES], reason=str(err))
                    continue
                if self.metrics is not None:
                    self.metrics.datastore_error()
                self._set("degraded", str(err))
                self._say("degraded", error=str(err), retry_s=delay)
                self._await_datastore(delay)
                delay = min(delay * 2, self.backoff[1])
            except (DatastoreError, LabError, LoadError) as err:  # answered, but cannot be enforced (an
                # object another tool stored that the loader rejects, a lab that cannot be planned)
                if self.metrics is not None:
                    self.metrics.reconciled("failed")
                self._set("failed", str(err))
                self._say("failed", error=str(err), retry_s=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])


__all__ = ["HEARTBEAT", "Agent"]
