"""The README's collector steps, exactly as a user types them, in the real kernel (root).

`flowtui lab up`, `flowtui apply`, `flowtui collect --db flows.duckdb --duration S` (no rule
table, no resource files: the collector reads the datastore `apply` wrote), traffic through
`flowtui lab exec`, a policy and a pod's labels changed while it runs, Ctrl-C, then `flowtui export
--format jsonl`, `flowtui query`, `flowtui whatif --db` and the dashboard (`flowtui tui --db`,
built as the command builds it and driven with Textual's pilot). Every reader must name the
policy, the rule and the pods from the store alone.

The commands are read from the README's block itself ("From nothing to named flows"), so what
is documented is what runs. Each is a subprocess in a temporary directory, with the README's
`$FLOWTUI_HOME` and a `$FLOWTUI_LAB` of its own (a unique lab id, so parallel runs do not meet).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTICLE = ROOT / "flowtui" / "scenarios" / "article"

CHANGE = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-ping-transaction}
spec:
  order: 1
  selector: tier == 'transaction'
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: ICMP
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  namespace: production
  labels: {app: frontend, tier: frontend, role: frontend, release: canary}
spec:
  nodeName: node-a
  serviceAccountName: frontend
  containers:
  - name: web
    image: nginx
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
status:
  podIP: 10.244.1.10
  podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]
"""


def flowtui_command() -> list[str]:
    """The `flowtui` console script next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "flowtui"
    found = str(beside) if beside.exists() else shutil.which("flowtui")
    if found is None:
        pytest.fail("no `flowtui` command: install the project (./run.sh test does)")
    return [found]


class Steps:
    def __init__(self, cwd: Path, lab_id: str) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "FLOWTUI_HOME": str(cwd / "state"), "FLOWTUI_LAB": lab_id,
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("CI", None)

    def run(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*flowtui_command(), *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if ok:
            assert done.returncode == 0, f"flowtui {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def start(self, *args: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
        """A long-running command; its stderr lines collected, `started` set at `collecting run`."""
        proc = subprocess.Popen([*flowtui_command(), *args], cwd=self.cwd, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: list[str] = []
        started = threading.Event()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if line.startswith("collecting run"):
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        return proc, lines, started


def readme_steps() -> dict[str, list[str]]:
    """The README's collector walkthrough: the `flowtui` commands by what they do."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"From nothing to named flows.*?```sh\n(.*?)```", text, re.S)
    assert block, "the README lost its collector walkthrough"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    assert "export FLOWTUI_HOME=$PWD/state" in lines
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("flowtui ")]
    steps = {
        "lab up": commands[0], "apply": commands[1], "collect": commands[2], "denied": commands[3],
        "allowed": commands[4], "export": commands[5], "tui": commands[6], "lab down": commands[7],
    }
    assert steps["collect"][0] == "collect" and "curl" in steps["denied"] and "ping" in steps["allowed"]
    assert steps["export"][:3] == ["export", "--format", "jsonl"] and steps["lab down"] == ["lab", "down"]
    for name, argv in steps.items():
        argv[:] = [str(ROOT / a) if a.startswith("flowtui/scenarios/") else a for a in argv]
        assert name.split()[0] in argv[0] or name in ("denied", "allowed"), (name, argv)
    return steps


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.kernel
def test_the_readme_collector_steps_give_named_flows_everywhere(lab_id: str, tmp_path: Path) -> None:
    steps = Steps(tmp_path, lab_id)
    readme = readme_steps()
    (tmp_path / "change.yaml").write_text(CHANGE)
    try:
        steps.run(*readme["lab up"])
        steps.run(*readme["apply"])
        collector, stderr, started = steps.start(*readme["collect"])
        assert started.wait(30), "".join(stderr)
        # denied (scenario 1: TCP from the frontend tier to the transaction tier) and allowed (ICMP)
        assert steps.run(*readme["denied"], ok=False).returncode != 0  # it never connected
        steps.run(*readme["allowed"])
        # while it runs: a new policy (the rule table grows) and the pod's labels (endpoints)
        steps.run("apply", "-f", "change.yaml")
        time.sleep(2.5)  # the collector looks at the datastore every 2 s (what is being tested)
        ping = steps.run(*readme["allowed"], ok=False)
        assert ping.returncode != 0  # now denied
        assert collector.poll() is None, "the traffic outlasted the collection: raise --duration in the README"
        collector.send_signal(signal.SIGINT)  # Ctrl-C: drain, flush, close the run
        out, _ = collector.communicate(timeout=60)
        assert collector.returncode == 0, "".join(stderr)
        assert "events received" in out

        steps.run(*readme["export"])
        flows = records(tmp_path / readme["export"][readme["export"].index("--out") + 1])
        denied = [r for r in flows if r["policy_name"] == "deny-frontend-to-transaction"]
        assert denied, flows
        tcp = denied[0]
        assert (tcp["action"], tcp["rule_index"], tcp["node"], tcp["dport"]) == ("Deny", 0, "node-b", 9000)
        assert (tcp["src_namespace"], tcp["src_name"], tcp["dst_namespace"], tcp["dst_name"]) == (
            "production", "frontend", "production", "transaction")
        assert tcp["policy"] == "0|default|gnp:deny-frontend-to-transaction|deny|0"
        allowed = [r for r in flows if r["policy_name"] == "allow-cluster-internal" and r["proto"] == 1]
        assert allowed and allowed[0]["action"] == "Allow" and allowed[0]["src_name"] == "frontend"
        assert "release=canary" not in allowed[0]["src_labels"]
        changed = [r for r in flows if r["policy_name"] == "deny-ping-transaction"]
        assert changed and changed[0]["action"] == "Deny" and changed[0]["rule_index"] == 0
        assert "release=canary" in changed[0]["src_labels"]  # the pod's labels as they were then

        top = json.loads(steps.run("query", "top_denied", "--db", "flows.duckdb", "-o", "json").stdout)
        assert any("deny-frontend-to-transaction" in json.dumps(row) for row in top)

        whatif = steps.run("whatif", "--delete", "gnp/deny-frontend-to-transaction", "--db", "flows.duckdb",
                           "-o", "json")
        doc = json.loads(whatif.stdout)
        assert doc["summary"]["newly_allowed"] >= 1, whatif.stdout
        group = next(g for g in doc["categories"]["newly_allowed"]["groups"] if g["port"] == 9000)
        assert (group["source"], group["destination"]) == ("production/frontend", "production/transaction")
        assert group["before"]["decided_by"]["name"] == "deny-frontend-to-transaction"
        assert group["after"]["decided_by"]["name"] == "allow-cluster-internal"

        assert readme["tui"][:2] == ["tui", "--db"]
        asyncio.run(dashboard_names_them(tmp_path, lab_id, readme["tui"][2]))
    finally:
        steps.run(*readme_steps()["lab down"], ok=False)


async def dashboard_names_them(tmp_path: Path, lab_id: str, db: str) -> None:
    """`flowtui tui --db flows.duckdb`, built as the command builds it, shows the names."""
    from flowtui.cli.tui import build_app
    from flowtui.tui.widgets.stream.flow_stream import FlowStream

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        app = build_app(db, None, state_dir=str(tmp_path / "state"), lab_id=lab_id, read_only=True)
        async with app.run_test(size=(180, 40)) as pilot:
            stream = app.screen.query_one(FlowStream)
            deadline = time.monotonic() + 20
            while not len(stream.ring) and time.monotonic() < deadline:
                await pilot.pause(0.05)
            rows = stream.ring.rows(stream.ring.first, stream.ring.end)
            row = next(r for r in rows if r["policy_name"] == "deny-frontend-to-transaction")
            assert (row["src_namespace"], row["src_name"], row["dst_name"]) == ("production", "frontend",
                                                                                  "transaction")
            stream.cursor = stream.ring.first + rows.index(row)
            line = "".join(seg.text for seg in stream._strip(row, 180, False))
            assert "production/frontend" in line and "production/transaction" in line
            assert "gnp:deny-frontend-to-transaction #0" in line and "DENY" in line
        app.source.close()
    finally:
        os.chdir(cwd)
