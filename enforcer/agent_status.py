"""Where each agent says how it is: one small JSON file per node, replaced atomically at every change.

    <datastore's local records>/agents/<node>.json      (e.g. /var/lib/flowtui/etcd/<hash>/agents/)

    writer = StatusWriter(records_dir, node="node-a", place="ft-xa1-node-a", datastore="etcd://...")
    writer.update(state="in-sync", revision=42)        # written only when something changed
    read_agents(records_dir)                           # [AgentStatus(...), ...] for `flowtui status`

With a shared store the agent also publishes its state there (`Publisher`, from a thread of its
own: never on the path from a change to the kernel), with what it applied: the table's digest and
rule count, so `flowtui status` and `lab status` on any machine see every node.
The file is the agent's own account (the metrics say the same); a reader adds what the file
cannot say about itself: an agent killed without a word (`kill -9`) left `in-sync` behind, so a
status whose pid is not running on this host reads as `stopped` (with the state it last had).
The records directory is per datastore and per machine (`LocalRecords`), which is where several
agents of one lab (one machine) and `flowtui status --datastore URL` meet.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enforcer.procs import pid_running
from enforcer.safefile import atomic_write, private_dir

AGENTS_DIR = "agents"
FIELDS = ("node", "pid", "host", "place", "datastore", "state", "revision", "error", "since", "updated")
APPLIED = ("digest", "rules")  # published with the state (absent from status files)


@dataclass(frozen=True)
class AgentStatus:
    node: str
    pid: int
    host: str  # hostname of the machine the agent runs on
    place: str  # the namespace it enforces in: a lab namespace name, or `this namespace` (--host)
    datastore: str
    state: str  # starting | in-sync | degraded | failed (enforcer.agent_metrics.STATES); readers: stopped
    revision: int  # the datastore revision the node's table enforces
    error: str | None  # the last error, kept until the next in-sync
    since: float  # when `state` began (epoch seconds)
    updated: float  # when the file was last written
    digest: str = ""  # sha256 of the table the node holds (published state only; "" unknown)
    rules: int | None = None  # rules in that table (published state only)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def agents_dir(records_dir: str | os.PathLike[str]) -> Path:
    return Path(records_dir) / AGENTS_DIR


class StatusWriter:
    """Keeps `<records>/agents/<node>.json` equal to the agent's state."""

    def __init__(self, records_dir: str | os.PathLike[str], node: str, place: str, datastore: str,
                 publisher: Publisher | None = None) -> None:
        self.path = agents_dir(records_dir) / f"{node}.json"
        self.publisher = publisher
        now = time.time()
        self.status = AgentStatus(node=node, pid=os.getpid(), host=socket.gethostname(), place=place,
                                  datastore=datastore, state="starting", revision=0, error=None, since=now,
                                  updated=now)
        self._write()

    def update(self, *, state: str, revision: int, error: str | None = None, table: Any = None) -> AgentStatus:
        """Record the agent's state; the file is rewritten only when state, revision or error moved.
        An error stays on record until the agent is in sync again. `table` (`ir.Table`, when
        known): what the node holds, for the published state."""
        old = self.status
        if state != "in-sync" and error is None:
            error = old.error
        if (state, revision, error) == (old.state, old.revision, old.error):
            return old
        now = time.time()
        self.status = replace(old, state=state, revision=revision, error=error, updated=now,
                              since=now if state != old.state else old.since)
        self._write()
        if self.publisher is not None:
            self.publisher.offer(self.status, table)
        return self.status

    def _write(self) -> None:
        private_dir(self.path.parent)
        atomic_write(self.path, json.dumps(self.status.to_json(), sort_keys=True) + "\n")


class Publisher:
    """Puts the agent's latest state into the shared store from a daemon thread: `offer` only
    hands it over (the agent's loop never waits on the store); the table's digest and rule count
    are computed here too. States offered while one is being written are folded into the newest;
    a write that fails is tried again with the next offer (or after `retry` seconds)."""

    def __init__(self, publish: Callable[[dict[str, Any]], None], retry: float = 2.0) -> None:
        self._publish = publish
        self._retry = retry
        self._cond = threading.Condition()
        self._pending: tuple[AgentStatus, Any] | None = None
        self._table: Any = None  # the last table offered: a state without one keeps it
        self._closed = False
        self.published = 0  # states written (tests wait on it)
        self.error: str | None = None  # the last failure to write, None after a success
        self._thread = threading.Thread(target=self._run, name="agent status publisher", daemon=True)
        self._thread.start()

    def offer(self, status: AgentStatus, table: Any = None) -> None:
        with self._cond:
            self._pending = (status, table if table is not None else self._table)
            self._table = self._pending[1]
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                status, table = self._pending
                self._pending = None
            try:
                self._publish({**status.to_json(), **applied_summary(table)})
                self.error = None
                self.published += 1
            except Exception as exc:  # the store is away: the next state (or a retry) tries again
                self.error = str(exc)
                with self._cond:
                    if self._pending is None and not self._closed:
                        self._pending = (status, table)
                        self._cond.wait(self._retry)


def applied_summary(table: Any) -> dict[str, Any]:
    """digest and rule count of an `ir.Table` (none known: empty)."""
    if table is None:
        return {}
    from enforcer.applied import table_digest

    return {"digest": table_digest(table), "rules": sum(len(c.rules) for c in table.chains.values())}


def _status(doc: Mapping[str, Any]) -> AgentStatus | None:
    try:
        return AgentStatus(**{k: doc[k] for k in FIELDS}, **{k: doc[k] for k in APPLIED if k in doc})
    except (KeyError, TypeError):
        return None


def read_agents(records_dir: str | os.PathLike[str], published: Iterable[Mapping[str, Any]] = ()
                ) -> list[AgentStatus]:
    """Every agent's last status, by node: its status file here, or what it `published` in the
    shared store (any machine's agents), whichever is newer (the published one brings the digest
    and rule count of the node's table). An agent of this host whose pid is gone reads `stopped`
    (its last state is kept in `error` when it had none). Unreadable entries are skipped."""
    by_node: dict[str, AgentStatus] = {}
    folder = agents_dir(records_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            status = _status(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if status is not None:
            by_node[status.node] = status
    for doc in published:
        status = _status(doc)
        if status is None:
            continue
        mine = by_node.get(status.node)
        if mine is None or status.updated >= mine.updated:
            by_node[status.node] = status
        elif (status.pid, status.host) == (mine.pid, mine.host):  # the file is newer (degraded: etcd
            by_node[status.node] = replace(mine, digest=status.digest, rules=status.rules)  # not told)
    found = []
    for status in sorted(by_node.values(), key=lambda s: s.node):
        if status.host == socket.gethostname() and not pid_running(status.pid):
            status = replace(status, state="stopped",
                             error=status.error or f"process {status.pid} is gone (it was {status.state})")
        found.append(status)
    return found


def describe(status: AgentStatus) -> list[str]:
    """`flowtui status`'s lines for one agent: its state (in capitals when it needs attention),
    since when, the revision it enforces, where; then its error."""
    since = datetime.fromtimestamp(status.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    state = status.state.upper() if status.state in ("degraded", "failed", "stopped") else status.state
    applied = f", table {status.digest[:12]} with {status.rules} rules" if status.digest else ""
    lines = [f"agent {status.node}: {state} since {since}, enforcing datastore revision {status.revision}{applied} "
             f"(pid {status.pid} on {status.host}, {status.place}, {status.datastore})"]
    if status.error and status.state != "in-sync":
        lines.append(f"  {status.error}")
    return lines


__all__ = ["AGENTS_DIR", "AgentStatus", "Publisher", "StatusWriter", "agents_dir", "applied_summary", "describe",
           "read_agents"]
