"""The per-node agent: watch the etcd datastore and keep one node's kernel table in step with it.

    agent = Agent(EtcdDatastore(...), reconciler, node="node-a", report=print_json)
    agent.run()                       # until the process is stopped

List, then watch from the list's revision (Calico's Felix does the same through libcalico-go's
watchersyncer): every batch of changes is reconciled for this node only, through the same
`Reconciler` as `flowtui apply` (so a toggle is still one set element, and a restart adopts the
live table when it matches the record instead of replacing it). When etcd compacted the history
the watch needed, the agent lists again. **Fail static**: when etcd cannot be reached the agent
touches nothing — the kernel keeps the last table — reports `degraded`, and retries with back-off;
when etcd is back it lists and converges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from enforcer.datastore.etcd import CALICO_PREFIX, OWN_PREFIX, Compacted, EtcdDatastore, EtcdUnavailable
from enforcer.reconcile import Reconciler

# One watch over [CALICO_PREFIX, end of OWN_PREFIX): both prefixes and what sorts between them.
WATCH_FROM = CALICO_PREFIX
WATCH_TO = OWN_PREFIX[:-1] + chr(ord(OWN_PREFIX[-1]) + 1)
BACKOFF = (0.2, 5.0)  # seconds: first retry, most between retries


def _ours(key: str) -> bool:
    return key.startswith((CALICO_PREFIX, OWN_PREFIX))


class Agent:
    def __init__(self, datastore: EtcdDatastore, reconciler: Reconciler, node: str,
                 report: Callable[[dict[str, Any]], None], backoff: tuple[float, float] = BACKOFF) -> None:
        self.datastore = datastore
        self.reconciler = reconciler
        self.node = node
        self.report = report
        self.backoff = backoff
        self.state = "starting"
        self.revision = 0  # the datastore revision this node enforces

    def _say(self, event: str, **fields: Any) -> None:
        self.report({"event": event, "node": self.node, "state": self.state, "revision": self.revision, **fields})

    def converge(self) -> int:
        """Reconcile this node with the datastore as it is now; the revision read before."""
        seen = self.datastore.kv.txn([], [])[1]
        start = time.perf_counter()
        result = self.reconciler.reconcile([self.node])
        self.revision = max(seen, result.revision)
        failed = [f"{n.node}: {n.error}" for n in result.failed]
        self.state = "failed" if failed else "in-sync"
        self._say("reconciled", ms=round((time.perf_counter() - start) * 1000, 1),
                  status=[n.status for n in result.nodes], **({"errors": failed} if failed else {}))
        return seen

    def run(self, rounds: int | None = None) -> None:
        """List, reconcile, watch; on compaction list again; on an unreachable etcd wait and retry
        (nothing touched). `rounds`: stop after that many reconciles (tests); None: forever."""
        delay = self.backoff[0]
        done = 0
        while rounds is None or done < rounds:
            try:
                seen = self.converge()
                done += 1
                delay = self.backoff[0]
                for event in self.datastore.kv.watch(WATCH_FROM, seen + 1, WATCH_TO):
                    if not _ours(event.kv.key) or event.kv.revision <= self.revision:
                        continue  # outside flowtui's keys, or already enforced
                    if rounds is not None and done >= rounds:
                        return
                    seen = self.converge()
                    done += 1
            except Compacted as err:
                self._say("relist", reason=str(err))
            except EtcdUnavailable as err:
                if self.state != "degraded":
                    self.state = "degraded"
                self._say("degraded", error=str(err), retry_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])


__all__ = ["Agent"]
