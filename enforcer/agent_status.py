"""Where each agent says how it is: one small JSON file per node, replaced atomically at every change.

    <datastore's local records>/agents/<node>.json      (e.g. /var/lib/flowtui/etcd/<hash>/agents/)

    writer = StatusWriter(records_dir, node="node-a", place="ft-xa1-node-a", datastore="etcd://...")
    writer.update(state="in-sync", revision=42)        # written only when something changed
    read_agents(records_dir)                           # [AgentStatus(...), ...] for `flowtui status`

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
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enforcer.procs import pid_running
from enforcer.safefile import atomic_write, private_dir

AGENTS_DIR = "agents"
FIELDS = ("node", "pid", "host", "place", "datastore", "state", "revision", "error", "since", "updated")


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def agents_dir(records_dir: str | os.PathLike[str]) -> Path:
    return Path(records_dir) / AGENTS_DIR


class StatusWriter:
    """Keeps `<records>/agents/<node>.json` equal to the agent's state."""

    def __init__(self, records_dir: str | os.PathLike[str], node: str, place: str, datastore: str) -> None:
        self.path = agents_dir(records_dir) / f"{node}.json"
        now = time.time()
        self.status = AgentStatus(node=node, pid=os.getpid(), host=socket.gethostname(), place=place,
                                  datastore=datastore, state="starting", revision=0, error=None, since=now,
                                  updated=now)
        self._write()

    def update(self, *, state: str, revision: int, error: str | None = None) -> AgentStatus:
        """Record the agent's state; the file is rewritten only when state, revision or error moved.
        An error stays on record until the agent is in sync again."""
        old = self.status
        if state != "in-sync" and error is None:
            error = old.error
        if (state, revision, error) == (old.state, old.revision, old.error):
            return old
        now = time.time()
        self.status = replace(old, state=state, revision=revision, error=error, updated=now,
                              since=now if state != old.state else old.since)
        self._write()
        return self.status

    def _write(self) -> None:
        private_dir(self.path.parent)
        atomic_write(self.path, json.dumps(self.status.to_json(), sort_keys=True) + "\n")


def read_agents(records_dir: str | os.PathLike[str]) -> list[AgentStatus]:
    """Every agent's last status, by node; an agent of this host whose pid is gone reads `stopped`
    (its last state is kept in `error` when it had none). Unreadable files are skipped."""
    found = []
    folder = agents_dir(records_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            doc = json.loads(path.read_text())
            status = AgentStatus(**{k: doc[k] for k in FIELDS})
        except (OSError, ValueError, KeyError, TypeError):
            continue
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
    lines = [f"agent {status.node}: {state} since {since}, enforcing datastore revision {status.revision} "
             f"(pid {status.pid} on {status.host}, {status.place}, {status.datastore})"]
    if status.error and status.state != "in-sync":
        lines.append(f"  {status.error}")
    return lines


__all__ = ["AGENTS_DIR", "AgentStatus", "StatusWriter", "agents_dir", "describe", "read_agents"]
