"""`ClusterState.derive`: a state derived from another (sharing its index, selector sets and
caches, deriving applicable policies) answers exactly as a state resolved from scratch, through
chains of random edits, eager and lazy; a changed cluster shares nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from enforcer.evaluate import Evaluator
from enforcer.resolve import ClusterState
from enforcer.synth import SynthSpec, synth_flows, synth_resources
from tests.test_whatif_engine import random_edit

SPEC = SynthSpec(nodes=2, namespaces=3, pods=12, externals=2, policies=14, disabled=0.1)


def answers(state: ClusterState) -> dict[object, tuple[tuple[str, str, str], ...]]:
    return {ep.ref if ep.kind == "wep" else ep.name: tuple(sorted(p.key for p in state.applicable_policies(ep)))
            for ep in state.endpoints}


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("lazy", [False, True])
def test_derived_states_answer_as_fresh_ones(seed: int, lazy: bool) -> None:
    res = synth_resources(seed, SPEC)
    state = ClusterState(res, include_disabled=seed % 2 == 0)
    answers(state)  # resolve everything, so the derivation has answers to derive from
    flows = synth_flows(res, seed, 60)
    for step in range(4):  # a chain of edits, each derived from the last
        edited = random_edit(res, seed * 10 + step, SPEC)
        derived = state.derive(edited, lazy=lazy)
        fresh = ClusterState(edited, include_disabled=state.include_disabled)
        assert answers(derived) == answers(fresh)
        if not state.include_disabled:
            got = [Evaluator(derived).decide(f).enforced for f in flows]
            assert got == [Evaluator(fresh).decide(f).enforced for f in flows]
        if edited.pods == res.pods and edited.network_sets == res.network_sets:
            assert derived.index is state.index and derived._ipsets is state._ipsets
            assert derived.caches is state.caches
            if not lazy:
                assert isinstance(derived._applicable, dict)  # nothing refers back to the old state
        else:
            assert derived.caches is not state.caches  # the cluster changed: nothing shared
        res, state = edited, derived


def test_changed_cluster_shares_nothing() -> None:
    res = synth_resources(3, SPEC)
    state = ClusterState(res)
    answers(state)
    pod = res.pods[0]
    moved = replace(res, pods=(replace(pod, labels=(*pod.labels, ("moved", "yes"))), *res.pods[1:]))
    derived = state.derive(moved)
    assert derived._ipsets is not state._ipsets and derived.index is not state.index
    assert answers(derived) == answers(ClusterState(moved))
