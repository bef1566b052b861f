"""`flowtui demo --headless`: the README's main job, end to end in the kernel (root).

Builds the demo lab, enforces the article's policies, collects NFLOG while the traffic generator
runs, and checks that the summary attributes allowed and denied flows to the article's policies
and accounts for loss; then that nothing of the lab is left.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def test_headless_demo_attributes_flows_to_the_articles_policies(tmp_path: Path) -> None:
    from enforcer.lab import lab_down
    from enforcer.lab.state import lab_namespaces

    lab_id = "tdemo" + secrets.token_hex(3)[:5]  # runs beside other labs (and other runs of this test)
    env = {**os.environ, "FLOWTUI_HOME": str(tmp_path / "home")}
    # The 8 s of traffic count from every traffic agent being ready (their start-up takes seconds
    # under load); the timeout only bounds a run that hangs.
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from flowtui.cli import main; main()", "demo", "--headless", "--duration", "8",
             "-o", "json", "--lab", lab_id, "--export", str(tmp_path / "export")],
            capture_output=True, text=True, timeout=300, env=env,
        )
    finally:
        leftover = lab_namespaces(lab_id)
        lab_down(lab_id)  # whatever happened (a timeout kills the demo before its own clean-up)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    by = {(f["verdict"], f["kind"], f["name"], f["rule"]) for f in doc["flows"]}
    # scenario 5: the deny list, untracked, on node-b's host endpoint
    assert ("deny", "GlobalNetworkPolicy", "dos-mitigation", 0) in by
    # scenario 1: frontend -> transaction in both namespaces
    assert ("deny", "GlobalNetworkPolicy", "deny-frontend-to-transaction", 0) in by
    # scenario 4: the favorite worker's end-of-tier deny, attributed to the last policy of the tier
    assert ("deny", "EndOfTier", "favorite-worker-host", -1) in by
    # scenario 3: logged, then denied
    assert ("log", "NetworkPolicy", "log-and-deny-frontend", 0) in by
    assert ("deny", "NetworkPolicy", "log-and-deny-frontend", 1) in by
    # allowed: kns profiles, cluster-internal, the worker's own allow rules
    assert any(v == "allow" and k == "Profile" and n.startswith("kns.") for v, k, n, _r in by)
    assert ("allow", "GlobalNetworkPolicy", "allow-cluster-internal", 0) in by
    assert doc["verdicts"]["allow"] > 0 and doc["verdicts"]["deny"] > 0
    # loss: every cause accounted for; what arrived was stored
    assert set(doc["lost"]) >= {"kernel_ratelimit", "rcvbuf_overrun", "writer_backlog", "malformed", "store_error"}
    assert doc["stats"]["received"] > 0
    assert doc["stats"]["received"] == doc["stats"]["stored"] + sum(doc["lost"].values()) - doc["lost"][
        "kernel_ratelimit"] - doc["lost"]["rcvbuf_overrun"]
    # the deny-listed flood is sampled by the log limit, and the counters say by how much
    assert any(s["name"] == "dos-mitigation" and s["packets"] > s["logged"] for s in doc["sampled"])
    # the traffic generator ran every kind of job
    assert {"call", "attempt", "ping", "flood"} <= set(doc["traffic"])
    # cleaned up, and the recording can be replayed
    assert leftover == []
    assert (tmp_path / "export" / "flows.parquet").exists() and (tmp_path / "export" / "resources.yaml").exists()
    from flowtui.tui.sources import LogsSource

    src = LogsSource(tmp_path / "export")
    assert src.status().flows_stored > 0
    assert src.recent("verdict = 'deny'", 10).num_rows == 10

