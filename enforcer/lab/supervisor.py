"""The supervisor of a lab in etcd mode: `python -m enforcer.lab.supervisor LAB_ID`.

One process per lab, started by `flowtui lab up --datastore etcd` in a session of its own (it
outlives the CLI) and stopped by `lab down` (SIGTERM). It

- serves the loopback forwarders through which the root namespace reaches the etcd members
  (`enforcer.lab.forward`; the lab's record says which port is which member), and
- keeps one `flowtui agent` running inside every node namespace of the lab: a node that appears
  gets an agent, an agent that exits is restarted after a back-off that doubles from 0.5 s to
  10 s (and starts again from 0.5 s once an agent has run for 30 s), an agent whose node is gone
  is stopped. Each agent's output goes to `agents/<node>.log`; pids and restart counts to
  `agents.json`, which `lab status` reads.
- An agent still `starting` `START_WATCHDOG` seconds after it was started (it never enforced,
  nor said why not: it hangs) is asked for its threads' stacks (SIGUSR1: the agent dumps them
  into its log with `faulthandler`), then stopped and restarted like one that exited; each time
  again it is given twice as long, so a merely slow start on a loaded machine still gets through.

Members are not restarted here: a member that is down stays down until `lab up` (or a test)
starts it, so that faults can be made and observed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

from enforcer.lab.cluster import Cluster, agent_pids, agent_report, read_cluster, stop_pid
from enforcer.lab.forward import Forwarder
from enforcer.lab.names import LabError, netns_name, target_of_netns
from enforcer.lab.spec import ETCD_CLIENT_PORT
from enforcer.lab.state import lab_namespaces

BACKOFF = (0.5, 10.0)  # seconds: first restart delay, longest
STEADY = 30.0  # an agent that ran this long starts its back-off from the beginning again
POLL = 0.5  # seconds between looks at processes and nodes
# An agent enforces within seconds of starting, even on a loaded machine; one still `starting`
# after this long hangs (doubled at each such restart, up to START_WATCHDOG_MAX).
START_WATCHDOG = 45.0
START_WATCHDOG_MAX = 360.0
DUMP_GRACE = 1.0  # seconds for a hung agent to write its stacks before it is stopped


@dataclass
class Supervised:
    node: str
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    delay: float = BACKOFF[0]
    next_start: float = 0.0
    reported: bool = False  # this run of the agent said something beyond `starting`
    watchdog: float = 0.0  # seconds it may stay `starting` (0: START_WATCHDOG)


def agent_argv(cluster: Cluster, node: str) -> list[str]:
    return ["ip", "netns", "exec", netns_name(cluster.lab_id, f"node:{node}"),
            sys.executable, "-c", "from flowtui.cli import main; main()", "agent",
            "--lab", cluster.lab_id, "--node", node, "--datastore", cluster.agent_url,
            "--etcd-ca", cluster.ca, "--etcd-cert", cluster.cert, "--etcd-key", cluster.key,
            "--state-dir", str(cluster.agents_state_dir),
            *(["--flows-dir", cluster.flows_dir] if cluster.flows_dir else [])]


def lab_nodes(lab_id: str) -> list[str]:
    targets = (target_of_netns(lab_id, name) for name in lab_namespaces(lab_id))
    return [t.name for t in targets if t is not None and t.kind == "node"]


class Supervisor:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.agents: dict[str, Supervised] = {}
        self.stopping = threading.Event()

    def _start(self, agent: Supervised) -> None:
        log_path = self.cluster.agent_log(agent.node)
        if agent.log is None:
            agent.log = open(log_path, "ab")  # noqa: SIM115 - kept open while the agent lives
        # Status reads the log's last report: this line ends the previous run's.
        agent.log.write(json.dumps({"event": "started", "node": agent.node, "state": "starting",
                                    "revision": None, "by": "supervisor"}).encode() + b"\n")
        agent.log.flush()
        agent.process = subprocess.Popen(agent_argv(self.cluster, agent.node), stdin=subprocess.DEVNULL,
                                         stdout=agent.log, stderr=subprocess.STDOUT, env={**os.environ})
        agent.started = time.monotonic()
        agent.reported = False
        print(f"agent {agent.node}: started, pid {agent.process.pid}", flush=True)

    def _stop(self, agent: Supervised) -> None:
        if agent.process is not None and agent.process.poll() is None:
            stop_pid(agent.process.pid)
            agent.process.wait()
        if agent.log is not None:
            agent.log.close()
            agent.log = None

    def step(self) -> None:
        """One look: start agents for new nodes, restart exited ones when their back-off is over,
        stop those whose node is gone."""
        now = time.monotonic()
        nodes = set(lab_nodes(self.cluster.lab_id))
        for node in sorted(set(self.agents) - nodes):
            self._stop(self.agents.pop(node))
            print(f"agent {node}: node gone, stopped", flush=True)
        for node in sorted(nodes):
            agent = self.agents.setdefault(node, Supervised(node))
            if agent.process is None:
                self._start(agent)
                continue
            code = agent.process.poll()
            if code is None:
                self._watch_start(agent, now)
                continue
            if not agent.next_start:  # just exited: schedule the restart
                ran = now - agent.started
                agent.delay = BACKOFF[0] if ran >= STEADY else agent.delay
                agent.next_start = now + agent.delay
                print(f"agent {node}: exited {code} after {ran:.1f} s; restart in {agent.delay:.1f} s", flush=True)
                agent.delay = min(agent.delay * 2, BACKOFF[1])
            elif now >= agent.next_start:
                agent.next_start = 0.0
                agent.restarts += 1
                self._start(agent)
        self._write_state()

    def _watch_start(self, agent: Supervised, now: float) -> None:
        """Stop (for a restart) a running agent that has stayed `starting` too long, after it
        wrote its threads' stacks to its log: where it hangs is then on record."""
        if agent.reported or agent.process is None:
            return
        limit = agent.watchdog or START_WATCHDOG
        if now - agent.started < limit:
            return
        report = agent_report(self.cluster, agent.node, agent.process.pid) or {}
        if report.get("state", "starting") != "starting":
            agent.reported = True
            agent.watchdog = 0.0  # a start that got through: the next hang is judged afresh
            return
        pid = agent.process.pid
        print(f"agent {agent.node}: still starting after {now - agent.started:.0f} s (pid {pid}): its stacks go to "
              f"its log, then it is restarted", flush=True)
        try:
            os.kill(pid, signal.SIGUSR1)  # faulthandler in the agent (flowtui.cli.agent)
        except ProcessLookupError:
            return
        self.stopping.wait(DUMP_GRACE)
        stop_pid(pid)
        agent.process.wait()
        agent.watchdog = min(limit * 2, START_WATCHDOG_MAX)

    def _write_state(self) -> None:
        state = {a.node: {"pid": a.process.pid if a.process is not None and a.process.poll() is None else None,
                          "restarts": a.restarts} for a in self.agents.values()}
        path = self.cluster.dir / "agents.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)

    def stop_orphans(self) -> None:
        """Stop agents of this lab that no supervisor of ours runs (a previous supervisor was
        killed with -9): one agent per node. Ours restart them, and a restart adopts the table."""
        for pid, cmdline in agent_pids(self.cluster.lab_id).items():
            print(f"stopping an agent left by a previous supervisor: pid {pid}: {cmdline}", flush=True)
            stop_pid(pid)

    def run(self) -> None:
        self.stop_orphans()
        forwarders = [Forwarder(m.forward_port, self.cluster.netns(m), m.address, ETCD_CLIENT_PORT).start()
                      for m in self.cluster.members]
        print(f"supervisor of lab {self.cluster.lab_id}: forwarding "
              + ", ".join(f"127.0.0.1:{m.forward_port} -> {m.name}" for m in self.cluster.members), flush=True)
        try:
            while not self.stopping.is_set():
                self.step()
                self.stopping.wait(POLL)
        finally:
            for agent in self.agents.values():
                self._stop(agent)
            self._write_state()
            for forwarder in forwarders:
                forwarder.close()
            print("supervisor stopped", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m enforcer.lab.supervisor LAB_ID", file=sys.stderr)
        return 2
    try:
        cluster = read_cluster(argv[0])
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if cluster is None:
        print(f"error: lab {argv[0]} has no etcd cluster", file=sys.stderr)
        return 1
    supervisor = Supervisor(cluster)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
