"""The per-node agent against a real etcd and a real lab: it adopts the table `lab up` left,
enforces changes on its own node only, keeps the last table when etcd goes away, and converges
when etcd is back."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from enforcer.datastore import open_datastore
from tests.conftest import require_etcd
from tests.test_datastore import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]


def closed_set(lab_id: str, node: str) -> str:
    from enforcer.lab import netns_name

    done = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), "nft", "list", "set", "inet",
                           "flowtui", "closed"], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


class Lines:
    """The agent's JSON lines, read on a thread (a blocked read never hangs the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.queue.put(json.loads(line))

    def until(self, wanted: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if wanted(event):
                return event


@pytest.mark.kernel
def test_agent_enforces_its_node_and_fails_static(lab_id: str, tmp_path: Path) -> None:
    require_etcd()
    from tests.etcd_server import etcd_server

    with etcd_server() as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "home"),
               "FLOWTUI_DATASTORE": server.url}
        up = subprocess.run([*FLOWTUI, "lab", "up", "--lab", lab_id, "-f", str(SCENARIOS)], capture_output=True,
                            text=True, env=env, timeout=180)
        assert up.returncode == 0, up.stderr
        before_b = closed_set(lab_id, "node-b")
        errors = open(tmp_path / "agent.err", "w")  # noqa: SIM115 - closed below
        from enforcer.agent_status import read_agents
        from tests.etcd_server import free_port

        mport = free_port()
        records = open_datastore(server.url, tmp_path / "home").path
        agent = subprocess.Popen([*FLOWTUI, "agent", "--lab", lab_id, "--node", "node-a", "--metrics",
                                  f"127.0.0.1:{mport}"], stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        try:
            lines = Lines(agent)
            first = lines.until(lambda e: e["event"] == "reconciled")
            assert first["status"] == ["unchanged"] and first["state"] == "in-sync"  # adopted, not replaced
            before_a = closed_set(lab_id, "node-a")
            ds = open_datastore(server.url, tmp_path / "writer")
            toggled = ds.set_disabled("gnp", "allow-cluster-internal", None, True)  # not through the CLI
            event = lines.until(lambda e: e["event"] == "reconciled" and e["revision"] >= toggled.revision)
            assert event["status"] == ["applied"]
            after_a = closed_set(lab_id, "node-a")
            assert after_a != before_a  # the gate closed on the agent's node...
            assert closed_set(lab_id, "node-b") == before_b  # ...and nowhere else
            server.process.kill()  # etcd gone: the table stays, the agent says so
            server.process.wait()
            degraded = lines.until(lambda e: e["event"] == "degraded", timeout=15)
            assert degraded["state"] == "degraded" and server.endpoint in degraded["error"]
            time.sleep(0.5)
            assert closed_set(lab_id, "node-a") == after_a and agent.poll() is None
            [status] = read_agents(records)  # what `flowtui status` and `lab status` read
            assert status.state == "degraded" and server.endpoint in (status.error or "")
            assert status.place == f"ft-{lab_id}-node-node-a" and status.revision >= toggled.revision
            text = scrape(mport)
            assert metric(text, 'flowtui_datastore_state{node="node-a",state="degraded"}') == 1
            assert metric(text, 'flowtui_datastore_state{node="node-a",state="in-sync"}') == 0
            assert metric(text, 'flowtui_reconcile_errors_total{node="node-a"}') >= 1
            # etcd back: the agent lists, converges, and follows changes again
            server.restart()
            back = time.monotonic()
            lines.until(lambda e: e["event"] == "reconciled" and e["state"] == "in-sync", timeout=15)
            assert time.monotonic() - back < 6.5  # back-off tops at 5 s
            assert read_agents(records)[0].state == "in-sync"
            assert metric(scrape(mport), 'flowtui_datastore_state{node="node-a",state="in-sync"}') == 1
            enabled = ds.set_disabled("gnp", "allow-cluster-internal", None, False)
            lines.until(lambda e: e["event"] == "reconciled" and e["revision"] >= enabled.revision)
            assert closed_set(lab_id, "node-a") == before_a
        finally:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            assert agent.stdout is not None
            agent.stdout.close()
            errors.close()


def scrape(port: int, netns: str | None = None) -> str:
    """GET /metrics from 127.0.0.1:`port` in lab namespace `netns` (None: here)."""
    from enforcer.lab.kernel import in_place

    sock = in_place(netns, lambda: socket.create_connection(("127.0.0.1", port), timeout=5))
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in the metrics")


def counted_packets(lab_id: str, node: str) -> int:
    from enforcer.lab import netns_name

    done = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), "nft", "list", "table", "inet",
                           "flowtui"], capture_output=True, text=True, timeout=30, check=True)
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", done.stdout))


def tcp_reaches(lab_id: str, src_node: str, dst: str, port: int) -> bool:
    """Whether a TCP SYN from `src_node` reaches `dst`:`port` (nothing listens: a reset comes back
    when it passed, nothing when a policy dropped it)."""
    from enforcer.lab import netns_name

    code = ("import socket, sys\ns = socket.socket(); s.settimeout(1.5)\n"
            f"try: s.connect(({dst!r}, {port}))\nexcept ConnectionRefusedError: sys.exit(0)\n"
            "except OSError: sys.exit(3)\nsys.exit(0)")
    done = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{src_node}"), sys.executable, "-c",
                           code], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode == 0


class Pinger:
    """From node-b to node-a's address, through node-a's table: one established flow (ping -i 0.2)
    and a new flow every 0.3 s (a fresh ping process, a fresh ICMP id). Counts every loss."""

    def __init__(self, lab_id: str) -> None:
        from enforcer.lab import netns_name

        self.netns = netns_name(lab_id, "node:node-b")
        self.steady = subprocess.Popen(["ip", "netns", "exec", self.netns, "ping", "-n", "-i", "0.2", "-W", "1",
                                        "172.31.0.11"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.fresh = {"sent": 0, "lost": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._new_flows, daemon=True)
        self._thread.start()

    def _new_flows(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run(["ip", "netns", "exec", self.netns, "ping", "-n", "-c", "1", "-W", "1",
                                   "172.31.0.11"], capture_output=True, timeout=15)
            self.fresh["sent"] += 1
            self.fresh["lost"] += done.returncode != 0
            self._stop.wait(0.3)

    def stop(self) -> tuple[int, int]:
        """(sent, lost) over both kinds of flow."""
        self._stop.set()
        self._thread.join(20)
        self.steady.send_signal(signal.SIGINT)  # ping prints its summary
        out, _ = self.steady.communicate(timeout=10)
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert found, out
        sent, received = int(found[1]), int(found[2])
        return sent + self.fresh["sent"], sent - received + self.fresh["lost"]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.kernel
def test_host_mode_adopts_after_kill_9_and_fails_static_when_cut_off(lab_id: str, tmp_path: Path) -> None:
    """`flowtui agent --host` run INSIDE node-a's namespace (the host path, never the root
    namespace), reaching etcd through a proxy in that namespace that can cut it off."""
    require_etcd()
    from enforcer.agent_status import read_agents
    from enforcer.lab import netns_name
    from enforcer.lab.kernel import in_place
    from enforcer.nft.backend import KernelBackend
    from tests.etcd_server import etcd_server, free_port
    from tests.test_agent import Silencer

    with etcd_server() as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path / "home"),
               "FLOWTUI_DATASTORE": server.url}
        up = subprocess.run([*FLOWTUI, "lab", "up", "--lab", lab_id, "-f", str(SCENARIOS)], capture_output=True,
                            text=True, env=env, timeout=180)
        assert up.returncode == 0, up.stderr
        ns_a = netns_name(lab_id, "node:node-a")

        def outside_the_table() -> tuple[str, str, str]:
            """What the agent must never touch: other tables, routes, addresses."""
            def run(*argv: str) -> str:
                return subprocess.run(["ip", "netns", "exec", ns_a, *argv], capture_output=True, text=True,
                                      timeout=30, check=True).stdout
            return (run("nft", "list", "table", "inet", "xaforeign"), run("ip", "route", "show", "table", "all"),
                    run("ip", "-o", "addr", "show"))

        subprocess.run(["ip", "netns", "exec", ns_a, "nft", "-f", "-"], input="table inet xaforeign {\n"
                       " chain input { type filter hook input priority 10; policy accept; tcp dport 9 counter; }\n}\n",
                       text=True, timeout=30, check=True)
        untouched = outside_the_table()
        host, port = server.endpoint.split(":")
        proxy = Silencer((host, int(port)), netns=ns_a, port=int(port))  # same URL inside node-a
        kernel = KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))
        ds = open_datastore(server.url, tmp_path / "writer")
        mport = free_port()
        argv = ["ip", "netns", "exec", ns_a, *FLOWTUI, "agent", "--host", "--lab", lab_id, "--node", "node-a",
                "--metrics", f"127.0.0.1:{mport}"]
        records = open_datastore(server.url, tmp_path / "home").path
        errors = open(tmp_path / "agent.err", "w")  # noqa: SIM115 - closed below
        first = second = None
        pinger = None
        try:
            first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
            lines = Lines(first)
            event = lines.until(lambda e: e["event"] == "reconciled")
            assert event["status"] == ["unchanged"] and event["state"] == "in-sync"  # adopted lab up's table
            [status] = read_agents(records)
            assert (status.state, status.place, status.pid) == ("in-sync", "this namespace", first.pid)
            text = scrape(mport, ns_a)  # served where the agent runs: inside node-a
            assert metric(text, 'flowtui_datastore_state{node="node-a",state="in-sync"}') == 1
            assert metric(text, 'flowtui_table_rules{node="node-a"}') > 10
            # only the table inet flowtui, in node-a: node-b untouched, and the failsafe port listed first
            before_b = kernel.generation("node-b")
            pinger = Pinger(lab_id)
            time.sleep(1)
            toggled = ds.set_disabled("gnp", "allow-cluster-internal", None, True)
            lines.until(lambda e: e["event"] == "reconciled" and e["revision"] >= toggled.revision)
            assert kernel.generation("node-b") == before_b
            text = scrape(mport, ns_a)
            assert metric(text, 'flowtui_policy_programming_seconds_count{node="node-a"}') == 1
            generation = kernel.generation("node-a")
            packets = counted_packets(lab_id, "node-a")
            first.kill()  # kill -9: the table stays, the status says the agent is gone
            first.wait()
            assert read_agents(records)[0].state == "stopped"
            assert kernel.generation("node-a") == generation
            second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
            lines = Lines(second)
            event = lines.until(lambda e: e["event"] == "reconciled")
            assert event["status"] == ["unchanged"] and event["revision"] >= toggled.revision
            assert kernel.generation("node-a") == generation  # adopted: not one commit, nothing flushed
            assert counted_packets(lab_id, "node-a") >= packets  # counters kept
            # node-a's host policy (scenario 4) allows SSH only from 203.0.113.0/24, but tcp:22 and
            # tcp:2380 are Felix's default inbound failsafe ports: open before any policy; tcp:8081 is not.
            assert tcp_reaches(lab_id, "node-b", "172.31.0.11", 22)
            assert tcp_reaches(lab_id, "node-b", "172.31.0.11", 2380)
            assert not tcp_reaches(lab_id, "node-b", "172.31.0.11", 8081)
            # cut off from etcd: the last table stays, the agent says degraded (file and metrics)
            proxy.silent.set()
            lines.until(lambda e: e["event"] == "degraded", timeout=20)
            [status] = read_agents(records)
            assert status.state == "degraded" and server.endpoint in (status.error or "")
            assert metric(scrape(mport, ns_a), 'flowtui_datastore_state{node="node-a",state="degraded"}') == 1
            enabled = ds.set_disabled("gnp", "allow-cluster-internal", None, False)  # while cut off
            time.sleep(1)
            assert kernel.generation("node-a") == generation
            proxy.silent.clear()
            back = time.monotonic()
            lines.until(lambda e: e["event"] == "reconciled" and e["revision"] >= enabled.revision, timeout=20)
            assert time.monotonic() - back < 8  # back-off tops at 5 s
            assert read_agents(records)[0].state == "in-sync"
            sent, lost = pinger.stop()
            pinger = None
            assert sent > 20 and lost == 0, f"{lost} of {sent} pings lost"
            assert second.poll() is None
            # stopped (systemd's SIGTERM): a clean exit, and the table stays as it is
            converged = kernel.generation("node-a")
            second.terminate()
            assert second.wait(15) == 0
            assert kernel.generation("node-a") == converged and kernel.listing("node-a") is not None
            assert in_place(ns_a, lambda: True)  # the namespace is still there and ours
            assert outside_the_table() == untouched  # nothing but inet flowtui was touched
        finally:
            if pinger is not None:
                pinger.stop()
            for proc in (first, second):
                if proc is not None:
                    stop(proc)
            proxy.close()
            errors.close()
