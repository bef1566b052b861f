"""A cluster-mode lab for tests and benchmarks: lab namespaces for the topology, a real etcd (one
member or a cluster, on loopback), the desired state written with `flowtui apply --datastore
etcd://...`, and one `flowtui agent` process per node enforcing it.

    with cluster_lab(resources, tmp_path, members=3) as lab:
        revision = lab.apply(documents)          # through the CLI, which enforces nothing
        lab.wait(revision)                       # every agent reported it enforces `revision`
        lab.kill_agent("node-1"); lab.start_agent("node-1")

The lab is built with the lab API (`plan_lab`/`lab_up`: namespaces, links, addresses; no table),
so only the agents program the kernel. The CLI writes with `--lab` naming a lab that is not up
(same plan checks, nothing to reconcile): in cluster mode the agents alone enforce. Each agent
has a state directory of its own (rule ids, applied tables), as each host would.

When `flowtui lab up --datastore etcd` runs the etcd members and agents itself, `ClusterLab`
is the place to point at it: tests only use `apply`, `wait`, `agents`, `rules`, `kill_agent`
and `start_agent`.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enforcer.model import ResourceSet
from enforcer.ruleids import RuleTable
from tests.etcd_server import EtcdCluster

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]
WAIT = 120.0  # seconds an agent may take to enforce a revision (a 2-core machine under a load of 30)


def unique_lab_id(prefix: str = "xd") -> str:
    """`xd` + 5 hex digits, for a lab no namespace exists for yet."""
    from enforcer.lab.state import lab_namespaces

    while True:
        candidate = prefix + secrets.token_hex(3)[:5]
        if not lab_namespaces(candidate) and not lab_namespaces(candidate + "w"):
            return candidate


class AgentLines:
    """An agent's JSON lines, read on a thread; `latest` is its last `reconciled` event."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["t_read"] = time.time()
            with self._lock:
                self.events.append(event)
                if event.get("event") == "reconciled":
                    self.latest = event
            self.queue.put(event)

    def until(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no agent event matched within {timeout} s")
            try:
                event = self.queue.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"no agent event matched within {timeout} s") from None
            if wanted(event):
                return event


@dataclass
class Agent:
    node: str
    process: subprocess.Popen[str]
    lines: AgentLines
    stderr: Path


@dataclass
class ClusterLab:
    lab_id: str
    url: str
    folder: Path
    nodes: tuple[str, ...]
    etcd: EtcdCluster
    agents: dict[str, Agent] = field(default_factory=dict)
    agent_args: tuple[str, ...] = ()

    @property
    def writer_lab(self) -> str:
        return self.lab_id + "w"  # never up: `apply` checks the plan and enforces nothing

    def env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(home), "FLOWTUI_DATASTORE": self.url,
                "FLOWTUI_LAB": self.writer_lab}

    def home(self, node: str) -> Path:
        return self.folder / "homes" / node

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*FLOWTUI, *args], capture_output=True, text=True, env=self.env(self.folder / "cli"),
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"flowtui {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def write(self, name: str, docs: Sequence[dict[str, Any]]) -> Path:
        path = self.folder / "manifests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False, width=200))
        return path

    def apply(self, docs: Sequence[dict[str, Any]], name: str = "apply.yaml") -> int:
        """`flowtui apply -f` the documents; the datastore revision they were stored at."""
        self.cli("apply", "-f", str(self.write(name, docs)))
        return self.revision()

    def revision(self) -> int:
        from enforcer.datastore import open_datastore

        return open_datastore(self.url, self.folder / "cli").revision

    def start_agent(self, node: str) -> Agent:
        old = self.agents.get(node)
        if old is not None:
            assert old.process.poll() is not None, f"{node}'s agent runs"
            self._close(old)
        home = self.home(node)
        home.mkdir(parents=True, exist_ok=True)
        stderr = self.folder / f"agent-{node}.err"
        with open(stderr, "a") as err:
            proc = subprocess.Popen([*FLOWTUI, "agent", "--lab", self.lab_id, "--node", node, *self.agent_args],
                                    stdout=subprocess.PIPE, stderr=err, text=True, env=self.env(home))
        agent = self.agents[node] = Agent(node, proc, AgentLines(proc), stderr)
        return agent

    def kill_agent(self, node: str, sig: int = signal.SIGKILL) -> None:
        agent = self.agents[node]
        agent.process.send_signal(sig)
        agent.process.wait(20)

    def wait(self, revision: int, nodes: Sequence[str] | None = None, timeout: float = WAIT) -> dict[str, Any]:
        """Block until every agent (of `nodes`) reported enforcing `revision` or later, in sync;
        their last `reconciled` events."""
        deadline = time.monotonic() + timeout
        out: dict[str, Any] = {}
        for node in nodes or self.nodes:
            agent = self.agents[node]
            while True:
                latest = agent.lines.latest
                if latest is not None and latest["revision"] >= revision and latest["state"] == "in-sync":
                    out[node] = latest
                    break
                if agent.process.poll() is not None:
                    raise AssertionError(f"{node}'s agent exited {agent.process.returncode}: "
                                         f"{agent.stderr.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{node}'s agent did not enforce revision {revision} in {timeout} s "
                                         f"(last: {latest}); stderr: {agent.stderr.read_text()[-2000:]}")
                time.sleep(0.02)
        return out

    def rules(self, node: str) -> RuleTable:
        """The rule table `node`'s agent allocated (its ids mean these rules on that node)."""
        from enforcer.datastore import open_datastore

        return RuleTable.load(open_datastore(self.url, self.home(node)).rules_path)

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents.values():
            try:
                agent.process.wait(10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
            self._close(agent)

    @staticmethod
    def _close(agent: Agent) -> None:
        agent.lines.thread.join(10)  # the process is gone: its reader is at end of file
        if agent.process.stdout is not None:
            agent.process.stdout.close()


@contextmanager
def cluster_lab(topology: ResourceSet, folder: Path, *, members: int = 1, lab_id: str | None = None,
                agents: bool = True, etcd_flags: tuple[str, ...] = ()) -> Iterator[ClusterLab]:
    """The lab of `topology` (nodes, pods, outside hosts) up, an etcd of `members` members on
    loopback, and an agent per node started; everything stopped and removed afterwards, even on
    failure. Nothing is stored: the caller applies the cluster and its policies."""
    from enforcer.lab import lab_down, lab_up, plan_lab
    from tests.etcd_server import etcd_cluster

    lab_id = lab_id or unique_lab_id()
    plan = plan_lab(topology, lab_id)
    with etcd_cluster(members, extra=etcd_flags) as etcd:
        lab = ClusterLab(lab_id, etcd.url, folder, tuple(n.name for n in plan.nodes), etcd)
        try:
            lab_up(plan)
            if agents:
                for node in lab.nodes:
                    lab.start_agent(node)
            yield lab
        finally:
            lab.stop()
            lab_down(lab_id)


__all__ = ["ClusterLab", "cluster_lab", "unique_lab_id"]
