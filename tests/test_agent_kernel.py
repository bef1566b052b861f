"""The per-node agent against a real etcd and a real lab: it adopts the table `lab up` left,
enforces changes on its own node only, keeps the last table when etcd goes away, and converges
when etcd is back."""

from __future__ import annotations

import json
import os
import queue
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
        agent = subprocess.Popen([*FLOWTUI, "agent", "--lab", lab_id, "--node", "node-a"], stdout=subprocess.PIPE,
                                 stderr=errors, text=True, env=env)
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
            # etcd back: the agent lists, converges, and follows changes again
            server.restart()
            back = time.monotonic()
            lines.until(lambda e: e["event"] == "reconciled" and e["state"] == "in-sync", timeout=15)
            assert time.monotonic() - back < 6.5  # back-off tops at 5 s
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
