"""ClusterNetworkPolicy in the kernel, end to end: `lab up` enforces it, the denied connection
is logged under its rule id, the collector stores the flow attributed to it (kind
ClusterNetworkPolicy, tier kube-admin) — the evaluator's answer for the same flow."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from enforcer.evaluate import Evaluator, decision_json
from enforcer.lab.state import lab_namespaces
from enforcer.loader import load_paths
from enforcer.resolve import ClusterState
from flowtui.cli.common import scenario_dir
from flowtui.cli.main import cli
from flowtui.cli.policy import build_flow
from flowtui.collector.config import CollectorConfig
from flowtui.collector.service import Collector

FIXTURE = Path(__file__).parent / "fixtures" / "good" / "cnp-article.yaml"
FILES = [str(scenario_dir()), str(FIXTURE)]
# staging/frontend → production/transaction's api port: the kube-admin policy denies it first
CONNECT = ("import socket\nfor _ in range(3):\n    s = socket.socket(); s.settimeout(0.3)\n"
           "    try: s.connect(('10.244.2.10', 9000))\n    except OSError: pass\n    s.close()\n")


@pytest.mark.kernel
def test_denied_flow_is_stored_as_the_cluster_network_policys(lab_id: str, tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    files = [arg for f in FILES for arg in ("-f", f)]
    up = CliRunner().invoke(cli, ["lab", "up", "--lab", lab_id, "--state-dir", state_dir, *files])
    assert up.exit_code == 0, up.output
    state = ClusterState(load_paths(FILES))
    flow = build_flow(state, "staging/frontend", "production/transaction", 6, 9000, None, None, None, False)
    decided = decision_json(Evaluator(state).decide(flow))["decided_by"]
    assert decided is not None and (decided["kind"], decided["name"]) == ("ClusterNetworkPolicy",
                                                                           "staging-stays-out-of-production")
    db = tmp_path / "flows.duckdb"
    rules = Path(state_dir) / "rules.jsonl"
    config = CollectorConfig(db=db, namespaces=tuple(lab_namespaces(lab_id)), rules_path=rules,
                             load_resources=lambda: state.resources, bucket_seconds=1.0, counters_interval=0.5,
                             snapshot_interval=None)
    collector = Collector(config)
    collector.start()
    try:
        command = ["lab", "exec", "--lab", lab_id, "staging/frontend", "--", "python3", "-c", CONNECT]
        sent = CliRunner().invoke(cli, command)
        assert sent.exit_code == 0, sent.output
    finally:
        collector.stop()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT r.kind, r.name, r.tier, r.direction, r.rule, f.action, f.dport FROM flows f "
            "JOIN rules r ON r.id = f.rule_id WHERE f.action = 'Deny' AND f.src_ip = ? AND f.dst_ip = ?",
            # this flow only: the nodes' own chatter (IPv6 neighbour discovery, MLD) meets the article's
            # host endpoint policy too, whenever the kernel happens to send it
            [str(flow.src), str(flow.dst)]).fetchall()
    assert rows and {row[:6] for row in rows} == {("ClusterNetworkPolicy", "staging-stays-out-of-production",
                                                   "kube-admin", "ingress", decided["rule"], "Deny")}
    assert {row[6] for row in rows} == {9000}
