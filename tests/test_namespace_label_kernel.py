"""The namespace-label repros in the kernel: a Namespace written without
`kubernetes.io/metadata.name` still carries it (the API server always sets it), so policies
selecting namespaces by it are enforced as Calico enforces them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from enforcer.evaluate import Evaluator
from enforcer.lab import lab_down, lab_resources, lab_up, netns_name, plan_lab
from enforcer.lab.probe import Probe, run_probes
from enforcer.loader import load_paths
from enforcer.nft import ir
from enforcer.nft.compiler import compile_node
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator
from flowtui.cli.policy import build_flow

pytestmark = pytest.mark.kernel
REPROS = Path(__file__).resolve().parents[2] / "shared" / "repros" / "calico"


@pytest.mark.parametrize(("repro", "verdict"), [("k8s-namespace-label-matchlabels.yaml", "allow"),
                                                ("k8s-namespace-label-notin.yaml", "deny")])
def test_namespace_label_repro_in_the_kernel(kernel: None, lab_id: str, repro: str, verdict: str) -> None:
    res = load_paths([str(REPROS / repro)])
    plan = plan_lab(res, lab_id)
    try:
        lab_up(plan)
        state = ClusterState(lab_resources(res, plan))
        evaluator = Evaluator(state)
        ids = IdAllocator()
        for node in state.nodes:
            compiled = compile_node(state, node, ids=ids, evaluator=evaluator)
            script = ir.render(compiled.table, ir.full(compiled.table, existing=False))
            subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), "nft", "-f", "-"],
                           input=script, text=True, check=True, capture_output=True)
        flow = build_flow(state, "x/a", "y/a", 6, 8080, 31000, None, None, False)
        assert evaluator.decide(flow).verdict == verdict
        probe = Probe("x/a", flow.src, "y/a", flow.dst, 6, 31000, 8080)
        assert (probe in run_probes(lab_id, [probe])) == (verdict == "allow")
    finally:
        lab_down(lab_id)
