"""The differential oracle in cluster mode: random policy sets on a 3-node lab, written with
`flowtui apply --datastore etcd://...` into a 3-member etcd cluster and enforced by one `flowtui
agent` per node (never by the CLI). Every probe's delivery, reply and NFLOG attribution (read
through the rule table of the node that logged it: each agent allocates its own ids) must be what
the evaluator says of the state stored in etcd; then a third of the policies are toggled with
`flowtui policy disable|enable` and a second round is checked against the toggled state.

Seeds alternate the two layouts of workload chains (decision maps, rule walk: the agents read
FLOWTUI_DECISION_BUDGET as the CLI does). `FLOWTUI_DIFF_SEEDS` widens the run.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from enforcer.evaluate import Evaluator
from enforcer.lab import lab_resources, plan_lab
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from enforcer.ruleids import RuleTable
from enforcer.synth import synth_resources
from tests.cluster_harness import ClusterLab, cluster_lab
from tests.conftest import require_etcd
from tests.manifests import cluster_documents, policy_documents, round_trip_problems
from tests.test_differential_kernel import PROBES_PER_SEED, SPEC, check_round, toggle_some

SEEDS = int(os.environ.get("FLOWTUI_DIFF_SEEDS", "2"))
SPEC3 = replace(SPEC, nodes=3)
BUDGETS = ("0", None)  # by seed: the rule walk, then the default decision budget


def stored_state(lab_url: str, home: Path, lab_id: str) -> tuple[ResourceSet, ClusterState]:
    """What the agents compile: the objects etcd holds, with the lab's addresses."""
    from enforcer.datastore import open_datastore

    stored = open_datastore(lab_url, home).resources()
    res = lab_resources(stored, plan_lab(stored, lab_id))
    return res, ClusterState(res)


def node_tables(lab: ClusterLab) -> dict[str, RuleTable]:
    """Each node's rule table as its agent allocated it (events are read through their node's)."""
    return {node: lab.rules(node) for node in lab.nodes}


def test_the_manifests_are_the_random_clusters() -> None:
    """The YAML the etcd test applies loads back as the cluster synthesised (else the oracle would
    judge one cluster and the kernel enforce another)."""
    for seed in range(max(SEEDS, 4)):
        assert round_trip_problems(synth_resources(seed, SPEC3)) == []


@pytest.mark.kernel
@pytest.mark.parametrize("seed", range(SEEDS))
def test_agents_on_etcd_agree_with_evaluator(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_etcd()

    budget = BUDGETS[seed % len(BUDGETS)]
    if budget is None:
        monkeypatch.delenv("FLOWTUI_DECISION_BUDGET", raising=False)
    else:
        monkeypatch.setenv("FLOWTUI_DECISION_BUDGET", budget)  # the agents' environment
    synth = synth_resources(seed, SPEC3)
    with cluster_lab(synth, tmp_path, members=3) as lab:
        revision = lab.apply(cluster_documents(synth) + policy_documents(synth))
        lab.wait(revision)
        res, state = stored_state(lab.url, tmp_path / "reader", lab.lab_id)
        assert {p.key for p in res.policies} == {p.key for p in synth.policies}
        check_round(lab.lab_id, tmp_path, res, Evaluator(state), node_tables(lab), seed, PROBES_PER_SEED,
                    "compiled")

        # Toggles through the CLI; the agents switch gates.
        toggled = toggle_some(res, seed)
        before = {p.key: p.disabled for p in res.policies}
        for p in toggled.policies:
            if p.disabled != before[p.key]:
                lab.cli("policy", "disable" if p.disabled else "enable", p.name, "--kind", p.kind,
                        *(["-n", p.namespace] if p.namespace else []))
        lab.wait(lab.revision())
        res2, state2 = stored_state(lab.url, tmp_path / "reader", lab.lab_id)
        assert {p.key for p in res2.policies if p.disabled} == {p.key for p in toggled.policies if p.disabled}
        check_round(lab.lab_id, tmp_path, res2, Evaluator(state2), node_tables(lab), seed + 1000,
                    PROBES_PER_SEED // 2, "toggled")
