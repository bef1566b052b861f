"""The workload walk shared by a node's endpoints (enforcer/nft/shared_walk.py): each endpoint's
chain takes exactly the policies that select it, in Calico's order, while the rules grow with
policies plus endpoints (the product lives in `sel-<direction>` elements)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from enforcer.evaluate.evaluator import Evaluator
from enforcer.evaluate.path import Stage
from enforcer.lab.names import cali_name
from enforcer.model import ResourceSet
from enforcer.nft import ir, shared_walk
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator
from enforcer.synth import SynthSpec, synth_resources

WALK = CompileOptions(decision_budget=0)


def _cluster(seed: int, pods: int = 24, policies: int = 30) -> ResourceSet:
    return synth_resources(seed, SynthSpec(nodes=2, namespaces=3, pods=pods, policies=policies, rules_per_policy=2))


def _taken(compiled: CompiledNode, iface: str, direction: str) -> list[int]:
    """The gates of the policies the walk runs for `iface`, in the order it runs them, read from
    the table: its chain's selection number, the tier chains it jumps to, and which of their
    policy jumps `sel-<direction>` lets through for that number."""
    table = compiled.table
    dispatch = table.sets["wl-to" if direction == "ingress" else "wl-from"]
    chain = next(e.split(" goto ")[1] for e in dispatch.elements if e.startswith(f'"{iface}" '))
    rules = table.chains[chain].rules
    if not rules[0].startswith("meta mark set mark & 0x4ffff | "):
        assert not any("-tier-" in r for r in rules)
        return []
    sel = int(rules[0].split()[-1], 16)
    members = table.sets[f"sel-{direction}"].elements
    gates: list[int] = []
    for tier in (r.split()[1] for r in rules if r.startswith("jump ") and "-tier-" in r):
        for line in table.chains[tier].rules:
            if f"@sel-{direction}" in line:
                gate = int(line.split()[5], 16)  # meta mark & MASK | GATE @sel-...
                if f"{sel | gate:#x}" in members:
                    gates.append(gate)
    return gates


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_endpoint_takes_exactly_its_selecting_policies_in_order(seed: int) -> None:
    res = _cluster(seed)
    state = ClusterState(res)
    ev = Evaluator(state.for_dataplane())
    for node in sorted(state.nodes):
        compiled = compile_node(state, node, WALK)
        for ep in (e for e in ev.state.endpoints if e.kind == "wep" and e.node == node):
            assert ep.namespace is not None
            for direction in ("ingress", "egress"):
                tiers = ev.stage_tiers(Stage("workload", direction, ep, node))
                expected = [compiled.gates[p.key] for st in tiers for p in st.enforced]
                assert _taken(compiled, cali_name(ep.namespace, ep.name), direction) == expected, (ep.name, direction)


def test_rules_grow_with_policies_plus_endpoints() -> None:
    """Endpoint chains hold their tier jumps and profiles only; a tier chain two rules per policy."""
    res = _cluster(4, pods=60, policies=80)
    compiled = compile_node(ClusterState(res), sorted(ClusterState(res).nodes)[0], WALK)
    chains = compiled.table.chains
    endpoint = [c for n, c in chains.items() if n[:3] in ("fw-", "tw-") and "-tier-" not in n]
    tiers = [c for n, c in chains.items() if "-tier-" in n]
    assert endpoint and tiers
    for c in endpoint:
        assert sum(" jump p" in r for r in c.rules) == 0, "no policy jumps in endpoint chains"
        assert len(c.rules) <= 2 * 3 + 8, c  # selection, 2 per tier (3 at most), profiles, the drop
    policies = sum(" jump p" in r for c in tiers for r in c.rules)
    assert sum(len(c.rules) for c in tiers) <= 2 * policies + 2 * len(tiers)
    # Each endpoint chain's policies are elements now: as many as the old chains had jumps.
    sel = sum(len(compiled.table.sets[n].elements) for n in ("sel-ingress", "sel-egress") if n in compiled.table.sets)
    assert sel > policies


def test_a_replica_pod_changes_only_elements() -> None:
    res = _cluster(5)
    state = ClusterState(res)
    node = sorted(state.nodes)[0]
    ids = IdAllocator()
    old = compile_node(state, node, WALK, ids=ids)
    model = next(p for p in res.pods if p.node == node)
    replica = replace(model, name=f"{model.name}-replica", ips=(ipaddress.ip_address("10.250.0.7"),))
    new = compile_node(ClusterState(replace(res, pods=(*res.pods, replica))), node, WALK, ids=ids)
    ops = ir.diff(old.table, new.table)
    assert ops and all(isinstance(op, ir.SetElements) for op in ops), ops
    assert {op.name for op in ops} >= {"wl-from", "wl-to"}


def test_selection_numbers_depend_on_the_set_of_selections_only() -> None:
    keys = [tuple(("NetworkPolicy", "ns", f"p{i}-{j}") for j in range(i % 4 + 1)) for i in range(300)]
    numbers = shared_walk.number(set(keys), "test")
    assert sorted(numbers.values()) == sorted(set(numbers.values()))  # distinct
    assert all(1 <= n <= shared_walk.MAX_SEL for n in numbers.values())
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    assert shared_walk.number(set(shuffled), "test") == numbers
    more = shared_walk.number({*keys, (("NetworkPolicy", "ns", "new"),)}, "test")
    moved = [k for k in keys if more[k] != numbers[k]]
    assert len(moved) <= 1, "a new selection moves another one only on a hash collision"


def test_too_many_selections_is_a_clear_error() -> None:
    keys = {(("NetworkPolicy", "ns", f"p{i}"),) for i in range(shared_walk.MAX_SEL + 1)}
    with pytest.raises(shared_walk.SelectionSpaceExhausted, match=r"node n1, ingress walk: 8192 distinct"):
        shared_walk.number(keys, "node n1, ingress walk")
