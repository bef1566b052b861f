"""ClusterNetworkPolicy past the evaluator: the nftables compiler's chains and NFLOG rule ids
(rules.jsonl), and the exports' kinds (Goldmane's PolicyKind ClusterNetworkPolicy = 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.loader import load_paths
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, RuleRef, RuleTable
from flowtui.cli.common import scenario_dir
from flowtui.cli.main import cli
from flowtui.collector.attribution import policy_hit
from flowtui.interop.calico import _goldmane_hit, _hit
from flowtui.interop.hubble import HUBBLE_KIND
from flowtui.tui.control import staged_document

FIXTURE = Path(__file__).parent / "fixtures" / "good" / "cnp-article.yaml"


def test_compiled_chains_and_rule_ids_name_the_cluster_network_policy(tmp_path: Path) -> None:
    state = ClusterState(load_paths([str(scenario_dir()), str(FIXTURE)]))
    compiled = compile_node(state, "node-a", ids=IdAllocator())
    # Policy chains are loaded where a walk jumps to them: the rule walk's layout (decision maps
    # hold the walk's outcome; their rule ids, below, name the policy all the same).
    walked = compile_node(ClusterState(state.resources), "node-a", CompileOptions(decision_budget=0), ids=IdAllocator())
    chains = [name for name in walked.table.chains if "kcnp-" in name]
    assert any("staging-stays-out-of-production" in c for c in chains), chains
    refs = [r for r in compiled.rules if r.kind == "ClusterNetworkPolicy"]
    got = {(r.name, r.tier, r.direction, r.rule, r.action) for r in refs}
    assert {("staging-stays-out-of-production", "kube-admin", "ingress", 0, "Deny"),
            ("staging-stays-out-of-production", "kube-admin", "ingress", 1, "Pass"),
            ("no-egress-to-documentation-nets", "kube-baseline", "egress", 0, "Deny")} <= got
    # kube-admin and kube-baseline default to Pass: no end-of-tier drop is attributed to them
    assert not [r for r in compiled.rules if r.kind == "EndOfTier" and r.tier in ("kube-admin", "kube-baseline")]
    path = tmp_path / "rules.jsonl"
    compiled.rules.dump(path)
    reloaded = {r.id: r for r in RuleTable.load(path) if r.kind == "ClusterNetworkPolicy"}
    assert {r.id: r for r in refs} == reloaded


def test_exports_name_the_kind() -> None:
    hit = _hit(("ClusterNetworkPolicy", None, "guard", "kube-admin", 0, "Deny", None), 0)
    assert (hit["kind"], hit["tier"], hit["namespace"]) == ("ClusterNetworkPolicy", "kube-admin", "")
    assert _goldmane_hit(hit)["kind"] == 11
    assert HUBBLE_KIND["ClusterNetworkPolicy"] == "ClusterNetworkPolicy"


def test_apply_and_get_cnp(tmp_path: Path) -> None:
    """`get cnp` (kubectl's short name) lists v1alpha2 and legacy policies at their Calico tier
    and order; the legacy one is stored as written, with its warning on stderr."""
    legacy = tmp_path / "anp.yaml"
    legacy.write_text("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n"
                      "metadata: {name: legacy}\nspec: {priority: 7, subject: {namespaces: {}}}\n")
    state = str(tmp_path / "state")
    applied = CliRunner().invoke(cli, ["apply", "--state-dir", state, "-f", str(FIXTURE), "-f", str(legacy)])
    assert applied.exit_code == 0, applied.output
    assert "kcnp/staging-stays-out-of-production created" in applied.output
    got = CliRunner().invoke(cli, ["get", "cnp", "--state-dir", state])
    assert got.exit_code == 0, got.output
    rows = {line.split()[0]: line.split()[2:4] for line in got.output.splitlines()[1:]}
    assert rows == {"legacy": ["kube-admin", "7"], "no-egress-to-documentation-nets": ["kube-baseline", "100"],
                    "staging-stays-out-of-production": ["kube-admin", "10"]}
    stored = CliRunner().invoke(cli, ["get", "cnp", "legacy", "--state-dir", state, "-o", "json"])
    assert json.loads(stored.output)["kind"] == "AdminNetworkPolicy"


def test_staging_a_cluster_network_policy_is_refused_with_the_reason() -> None:
    body = {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "x"}, "spec": {}}
    with pytest.raises(ValueError, match="Calico has no staged ClusterNetworkPolicy"):
        staged_document(body)


def test_flow_log_policy_string_is_calicos() -> None:
    """Goldmane parses `kcnp:NAME` as PolicyKind ClusterNetworkPolicy (goldmane/proto/methods.go)."""
    ref = RuleRef(9, "ClusterNetworkPolicy", None, "guard", "kube-admin", 1, "ingress", 2, "Pass")
    assert policy_hit(ref) == "0|kube-admin|kcnp:guard|pass|2"
