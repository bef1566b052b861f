"""Flows from every node, in the real kernel (root): a two-node lab, one collector per node
(`flowtui collect --node NAME --flows-dir DIR`, what each node's agent runs with --flows-dir)
writing one dataset, traffic between pods on the two nodes, then `flowtui query --cluster DIR`.

Both nodes report each flow (the client's node its egress, the server's its ingress); read
together, each flow is there once with its verdict, and the policy that decided it. Every event
the kernel logged on each node is in the dataset: received = in the flows, nothing lost."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_collector_readme_kernel import ARTICLE, Steps, flowtui_command

FRONTEND, TRANSACTION = "10.244.1.10", "10.244.2.10"


class Lab(Steps):
    """The README steps' runner, plus the long-running commands it started (stopped at the end)."""

    def __init__(self, tmp_path: Path, lab_id: str) -> None:
        super().__init__(tmp_path, lab_id)
        self.procs: list[subprocess.Popen[str]] = []

    def collector(self, node: str, flows: Path) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
        proc, lines, started = self.start("collect", "--node", node, "--flows-dir", str(flows), "--duration", "240")
        self.procs.append(proc)
        return proc, lines, started

    def query(self, flows: Path, sql: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.run("query", "--cluster", str(flows), "--sql", sql,
                                                         "-o", "json").stdout)
        return rows

    def down(self) -> None:
        """Kill what still runs, then take the lab down (idempotent: also after a failed `lab up`)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.run("lab", "down", ok=False)


@pytest.mark.kernel
def test_two_node_collectors_write_one_dataset_with_each_flow_once(lab_id: str, tmp_path: Path) -> None:
    lab = Lab(tmp_path, lab_id)
    flows = tmp_path / "flows"
    try:
        lab.run("lab", "up", "-f", str(ARTICLE / "00-cluster.yaml"))
        lab.run("apply", "-f", str(ARTICLE))
        started = []
        for node in ("node-a", "node-b"):
            proc, lines, ready = lab.collector(node, flows)
            started.append((node, proc, lines, ready))
        for node, _proc, lines, ready in started:
            assert ready.wait(60), f"{node}: {''.join(lines)}"
        lab.run("lab", "exec", "production/frontend", "--", "ping", "-c", "2", "-W", "1", TRANSACTION)  # allowed
        denied = lab.run("lab", "exec", "production/frontend", "--", "curl", "-s", "-m", "2",
                         f"http://{TRANSACTION}:9000/", ok=False)
        assert denied.returncode != 0
        # Live: both nodes' reports are in the dataset within seconds, while the buckets are open.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = (flows / "flows").rglob("*.parquet") if flows.exists() else iter(())
            nodes = {p.relative_to(flows / "flows").parts[0] for p in parts}
            if nodes == {"node=node-a", "node=node-b"}:
                break
            time.sleep(0.2)
        assert nodes == {"node=node-a", "node=node-b"}
        for node, proc, lines, _ready in started:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=90)
            assert proc.returncode == 0, f"{node}: {''.join(lines)}"

        ping = lab.query(flows, f"SELECT denied, packets FROM flows_once WHERE proto = 1 AND src_ip = '{FRONTEND}' "
                                f"AND dst_ip = '{TRANSACTION}'")
        assert [r["denied"] for r in ping] == [False] * len(ping) and len(ping) >= 1
        reports = lab.query(flows, "SELECT node, reporter, action, policy_name FROM flows_v "
                                   f"WHERE proto = 1 AND src_ip = '{FRONTEND}' AND dst_ip = '{TRANSACTION}' "
                                   "GROUP BY ALL ORDER BY node")
        assert {(r["node"], r["reporter"], r["action"]) for r in reports} == {
            ("node-a", "src", "Allow"), ("node-b", "dst", "Allow")}, reports

        tcp = lab.query(flows, "SELECT denied, count(*) OVER () AS n FROM flows_once "
                               f"WHERE proto = 6 AND dst_ip = '{TRANSACTION}' AND dport = 9000")
        assert tcp and all(r["denied"] for r in tcp) and tcp[0]["n"] == len(tcp)
        deny = lab.query(flows, "SELECT DISTINCT node, action, policy_name, rule_index, dst_name FROM flows_v "
                                "WHERE proto = 6 AND dport = 9000 AND action = 'Deny'")
        assert deny == [{"node": "node-b", "action": "Deny", "policy_name": "deny-frontend-to-transaction",
                         "rule_index": 0, "dst_name": "transaction"}]
        # The same flow counted once in the named queries, although two nodes reported it.
        once = lab.query(flows, f"SELECT count(*) AS n FROM flows_once WHERE src_ip = '{FRONTEND}' AND "
                                f"dst_ip = '{TRANSACTION}' AND proto = 6 AND dport = 9000")
        both = lab.query(flows, "SELECT count(DISTINCT s.node) AS n FROM flows f JOIN sources s USING (source_id) "
                                f"WHERE f.src_ip = '{FRONTEND}' AND f.dst_ip = '{TRANSACTION}' AND f.proto = 6")
        assert both == [{"n": 2}] and once == [{"n": len(tcp)}]

        # Loss: zero, and exact per node (what each received is what the dataset holds).
        assert lab.query(flows, "SELECT coalesce(sum(events), 0) AS lost FROM loss_latest") == [{"lost": 0}]
        received = lab.query(flows, "SELECT s.node, sum(t.value) AS n FROM stats_latest t JOIN sources s "
                                    "USING (source_id) WHERE t.name = 'received' GROUP BY ALL ORDER BY 1")
        stored = lab.query(flows, "SELECT s.node, sum(f.events) AS n FROM flows f JOIN sources s USING (source_id) "
                                  "GROUP BY ALL ORDER BY 1")
        assert received == stored and [r["node"] for r in received] == ["node-a", "node-b"], (received, stored)
        assert all(r["n"] > 0 for r in received)
    finally:
        lab.down()


@pytest.mark.kernel
def test_agents_with_flows_dir_write_one_dataset(lab_id: str, tmp_path: Path) -> None:
    """The cluster as it runs: etcd, one `flowtui agent --flows-dir` per node (enforcing and
    collecting), and the flows of both nodes read as one with `--cluster`."""
    from tests.conftest import require_etcd

    require_etcd()
    from tests.etcd_server import etcd_server

    lab = Lab(tmp_path, lab_id)
    flows = tmp_path / "flows"
    with etcd_server() as server:
        lab.env["FLOWTUI_DATASTORE"] = server.url
        try:
            lab.run("lab", "up", "-f", str(ARTICLE / "00-cluster.yaml"), timeout=180)
            lab.run("apply", "-f", str(ARTICLE))
            agents = []
            for node in ("node-a", "node-b"):
                errors = (tmp_path / f"{node}.err").open("w")  # noqa: SIM115 - read in the assertion
                proc = subprocess.Popen([*flowtui_command(), "agent", "--node", node, "--flows-dir", str(flows)],
                                        cwd=tmp_path, env=lab.env, text=True, stdout=subprocess.PIPE,
                                        stderr=errors)
                errors.close()
                lab.procs.append(proc)
                agents.append(proc)
                assert proc.stdout is not None
                first = json.loads(proc.stdout.readline())  # the agent reconciled: it and its collector run
                assert first["event"] == "reconciled", first
            lab.run("lab", "exec", "production/frontend", "--", "ping", "-c", "2", "-W", "1", TRANSACTION)
            deadline = time.monotonic() + 60  # a shared, loaded machine: generous, the bound is in bench/
            seen: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                if (flows / "flows").is_dir():
                    seen = lab.query(flows, "SELECT DISTINCT s.node FROM flows f JOIN sources s USING (source_id) "
                                            f"WHERE f.proto = 1 AND f.dst_ip = '{TRANSACTION}' ORDER BY 1")
                    if len(seen) == 2:
                        break
                time.sleep(0.5)
            logs = "".join((tmp_path / f"{n}.err").read_text() for n in ("node-a", "node-b"))
            assert seen == [{"node": "node-a"}, {"node": "node-b"}], logs  # live, before the agents stop
            for proc in agents:
                proc.send_signal(signal.SIGTERM)  # the collector drains and closes its run first
                proc.communicate(timeout=90)
                assert proc.returncode in (0, -signal.SIGTERM), logs
            once = lab.query(flows, f"SELECT denied FROM flows_once WHERE proto = 1 AND dst_ip = '{TRANSACTION}'")
            assert once and not any(r["denied"] for r in once)
            assert lab.query(flows, "SELECT count(*) AS n FROM runs WHERE outcome = 'stopped'") == [{"n": 2}]
            assert lab.query(flows, "SELECT coalesce(sum(events), 0) AS lost FROM loss_latest") == [{"lost": 0}]
        finally:
            lab.down()
