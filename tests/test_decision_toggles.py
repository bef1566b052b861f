"""Live toggles under decision maps: only the decision chains of the endpoints a toggled policy
selects are decided again, the result equals a whole compile of the toggled state, and in the
kernel the change is one nfnetlink batch after which the table lists as a fresh full apply."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from enforcer.lab import netns_name
from enforcer.model import EntityRule, PortRange, ResourceSet, Rule
from enforcer.nft import compiler, ir
from enforcer.nft.backend import KernelBackend
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node
from enforcer.nft.decision import DEFAULT_BUDGET
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator
from enforcer.synth import SynthSpec, synth_resources
from tests.test_compiler import canonical_kernel_table

MAPS = CompileOptions(decision_budget=DEFAULT_BUDGET)
Key = tuple[str, str, str]


def _toggled(res: ResourceSet, disabled: set[Key]) -> ResourceSet:
    return replace(res, policies=tuple(replace(p, disabled=p.key in disabled) for p in res.policies))


def _toggle_sequence(seed: int, steps: int) -> Iterator[tuple[ResourceSet, set[Key]]]:
    """A synthetic cluster and random sets of policies switched off, one more or one less each step."""
    res = synth_resources(seed, SynthSpec(nodes=2, pods=8, policies=12))
    rng = random.Random(seed)
    keys = [p.key for p in res.policies]
    disabled: set[Key] = set()
    for _ in range(steps):
        key = rng.choice(keys)
        disabled ^= {key}
        yield res, set(disabled)


@pytest.mark.parametrize("seed", [0, 1, 2, 4, 5])
def test_toggles_decide_only_what_they_change_and_equal_a_whole_compile(seed: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    res = synth_resources(seed, SynthSpec(nodes=2, pods=8, policies=12))
    ids = IdAllocator()
    bases = {n: compile_node(ClusterState(res), n, MAPS, ids=ids) for n in ("node-1", "node-2")}
    assert any(c.redecide is not None for c in bases.values()), "the seed must have decision chains"
    decided: list[str] = []
    real = compiler._NodeCompiler._decision_chain

    def counting(self: compiler._NodeCompiler, prefix: str, stage: object, walk: str) -> str | None:
        decided.append(walk)
        return real(self, prefix, stage, walk)  # type: ignore[arg-type]

    for _, disabled in _toggle_sequence(seed, 10):
        fresh_state = ClusterState(_toggled(res, disabled))
        for node, base in bases.items():
            monkeypatch.setattr(compiler._NodeCompiler, "_decision_chain", counting)
            decided.clear()
            got = base.with_disabled(disabled)
            monkeypatch.undo()
            fresh = compile_node(fresh_state, node, MAPS, ids=ids)
            assert ir.listing(got.table) == ir.listing(fresh.table)
            assert got.layouts == fresh.layouts
            assert {r.id: r for r in got.rules} == {r.id: r for r in fresh.rules}
            # Only chains that a toggled policy selects were decided again.
            changed = {p.key for p in res.policies if p.disabled != (p.key in disabled)}
            if base.redecide is not None:
                nc_decided = _decided(base)
                assert len(decided) == sum(1 for d in nc_decided if d & changed)


def _decided(node: CompiledNode) -> list[frozenset[Key]]:
    """The policy keys of each decision chain of `node` (from its redecide closure)."""
    assert node.redecide is not None
    cells = dict(zip(node.redecide.__code__.co_freevars, node.redecide.__closure__ or (), strict=True))
    return [d.policies for d in cells["nc"].cell_contents.decided.values()]


def test_a_toggle_nothing_decides_on_changes_the_gate_set_only() -> None:
    res = synth_resources(0, SynthSpec(nodes=2, pods=8, policies=12))
    base = compile_node(ClusterState(res), "node-1", MAPS, ids=IdAllocator())
    selected = set().union(*_decided(base))
    others = [p.key for p in res.policies if p.key not in selected and p.key in base.gates]
    assert others, "the seed has a gated policy no decision chain depends on"
    ops = ir.diff(base.table, base.with_disabled({others[0]}).table)
    assert [type(o) for o in ops] == [ir.SetElements] and ops[0].name == "closed"  # type: ignore[union-attr]


@pytest.fixture
def backend(lab_id: str) -> Iterator[KernelBackend]:
    from enforcer.lab.netns import create_netns

    for node in ("n1", "n2"):
        create_netns(netns_name(lab_id, f"node:{node}"))
    kb = KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))
    yield kb
    kb.close()


@pytest.mark.kernel
@pytest.mark.parametrize("seed", [1, 2])
def test_toggles_in_the_kernel_are_one_batch_equal_to_a_full_apply(seed: int, backend: KernelBackend,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Toggle after toggle through the kernel backend: no libnftables (the change is one
    nfnetlink batch of map elements and outcome chains), and the live table lists exactly as the
    same table applied whole to a fresh namespace."""
    from enforcer.nft.libnft import Nft

    res = synth_resources(seed, SynthSpec(nodes=2, pods=8, policies=12))
    base = compile_node(ClusterState(res), "node-1", MAPS, ids=IdAllocator())
    prev = base.table
    backend.apply("n1", prev, ir.full(prev, existing=False))
    real_run = Nft.run

    def no_library(self: Nft, script: str, *, flags: int = 0) -> str:
        raise AssertionError(f"libnftables was used for a toggle: {script[:300]}")

    batches = 0
    for _, disabled in _toggle_sequence(seed, 8):
        table = base.with_disabled(disabled).table
        ops = ir.diff(prev, table)
        if not ops:  # a policy that selects nothing here
            continue
        batches += any(isinstance(o, ir.DefineChain | ir.DeleteChain) or o.name != "closed"  # type: ignore[union-attr]
                       for o in ops)
        monkeypatch.setattr(Nft, "run", no_library)
        backend.apply("n1", table, ops)
        monkeypatch.setattr(Nft, "run", real_run)
        backend.delete("n2")
        backend.apply("n2", table, ir.full(table, existing=False))
        # Elements compared as sets: the kernel lists a pipapo map's elements in insertion order.
        assert canonical_kernel_table(backend.netns("n1")) == canonical_kernel_table(backend.netns("n2"))
        prev = table
    assert batches, "some toggle changed decision maps"


@pytest.mark.parametrize("seed", range(6))
def test_edits_on_a_derived_state_decide_again_only_changed_chains(seed: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler compiles each edit from a state derived from the last: kept decisions
    (state caches) are reused where the selecting policies, tiers and endpoint are the same, and
    the table equals a compile from scratch, rule refs included."""
    from enforcer.evaluate import Evaluator
    from enforcer.evaluate.path import Stage
    from enforcer.nft import decision
    from tests.test_compiler import _sequence

    calls: list[Stage] = []
    real = decision.decide

    def counting(*args: object, **kw: object) -> object:
        calls.append(args[1])  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    def selecting(ev: Evaluator, stage: Stage) -> set[Key]:
        return {p.key for st in ev.stage_tiers(stage) for p in st.enforced}

    monkeypatch.setattr(decision, "decide", counting)
    ids = IdAllocator()
    state: ClusterState | None = None
    prev: ResourceSet | None = None
    reused = 0
    for res in _sequence(seed, 8):
        state = ClusterState(res, include_disabled=True) if state is None else state.derive(res)
        for node in ("node-1", "node-2"):
            calls.clear()
            derived = compile_node(state, node, MAPS, ids=ids)
            again = list(calls)
            calls.clear()
            fresh = compile_node(ClusterState(res), node, MAPS, ids=ids)
            assert ir.listing(derived.table) == ir.listing(fresh.table)
            assert derived.layouts == fresh.layouts
            assert {r.id: r for r in derived.rules} == {r.id: r for r in fresh.rules}
            if prev is not None and prev.pods == res.pods and prev.tiers == res.tiers:
                before = {p.key: p for p in prev.policies}
                changed = {p.key for p in res.policies if before.get(p.key) != p}
                old_ev, new_ev = (Evaluator(ClusterState(r, include_disabled=True)) for r in (prev, res))
                for stage in again:  # decided again: a changed policy selects (or selected) it
                    assert (selecting(old_ev, stage) | selecting(new_ev, stage)) & changed, stage
                reused += len(calls) - len(again)
        prev = res
    assert reused > 0, "some decisions were kept"


# ---- incremental re-decision (decision_walks.py) equals a whole decide ----------------------


def _random_steps(seed: int, steps: int) -> Iterator[tuple[str, ResourceSet]]:
    """A topped-up synth cluster (tiers with Deny and Pass defaults, Pass, Log, profiles, nets,
    named ports, ICMP) and a random walk of changes: toggles, rules rewritten (new ports only: the
    space is refined; anything: new address tests too), rules removed, policies staged."""
    from tests.test_decision_regions import _rule, topped_up

    spec = SynthSpec(nodes=1, namespaces=2, pods=5, externals=2, policies=10, rules_per_policy=3)
    res = topped_up(synth_resources(seed, spec), seed)
    rng = random.Random(seed)
    yield "start", res
    for _ in range(steps):
        pols = list(res.policies)
        i = rng.randrange(len(pols))
        p = pols[i]
        kind = rng.choice(("toggle", "toggle", "port", "rule", "remove"))
        if kind == "toggle":
            pols[i] = replace(p, disabled=not p.disabled)
        else:
            direction = rng.choice(p.types)
            rules = list(p.rules(direction))
            k = rng.randrange(len(rules) + 1)
            if kind == "port":
                ports = (PortRange(rng.randrange(1, 65000), rng.randrange(65000, 65536)),)
                new = Rule(rng.choice(("Allow", "Deny", "Pass", "Log")), protocol=rng.choice((6, 17)),
                           destination=EntityRule(ports=ports))
                rules.insert(k, new)
            elif kind == "rule":
                rules.insert(k, _rule(rng))
            elif rules:
                rules.pop(min(k, len(rules) - 1))
            pols[i] = replace(p, revision=p.revision + 1, **{direction: tuple(rules)})
        res = replace(res, policies=tuple(pols))
        yield kind, res


def _mismatches(seed: int, steps: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, int]:
    """(steps whose derived compile differs from a compile from scratch, chains walked again
    incrementally, chains walked whole) over a random sequence of changes; each step is also
    toggled from the last compile (`with_disabled`) and compared with a fresh compile."""
    from enforcer.nft import decision_walks

    counts = {"incremental": 0, "whole": 0}
    real_again, real_all = decision_walks.walk_again, decision_walks.walk_all

    def again(*args: object, **kw: object) -> decision_walks.Walks:
        out = real_again(*args, **kw)  # type: ignore[arg-type]
        counts["incremental" if out.incremental else "whole"] += 1
        return out

    def whole(*args: object, **kw: object) -> decision_walks.Walks:
        counts["whole"] += 1
        return real_all(*args, **kw)  # type: ignore[arg-type]

    from enforcer.nft import decision

    monkeypatch.setattr(decision, "walk_again", again)
    monkeypatch.setattr(decision, "walk_all", whole)
    ids = IdAllocator()
    state: ClusterState | None = None
    bad = 0
    rng = random.Random(seed + 100)
    for _, res in _random_steps(seed, steps):
        state = ClusterState(res, include_disabled=True) if state is None else state.derive(res)
        node = next(iter(state.nodes))
        derived = compile_node(state, node, MAPS, ids=ids)
        fresh = compile_node(ClusterState(res), node, MAPS, ids=ids)
        bad += ir.listing(derived.table) != ir.listing(fresh.table) or derived.layouts != fresh.layouts
        # A toggle served from this compile.
        keys = [p.key for p in res.policies]
        disabled = {p.key for p in res.policies if p.disabled} ^ {rng.choice(keys)}
        try:
            toggled = derived.with_disabled(disabled)
        except compiler.LayoutChanged:
            continue
        fresh = compile_node(ClusterState(_toggled(res, disabled)), node, MAPS, ids=ids)
        bad += ir.listing(toggled.table) != ir.listing(fresh.table)
    return bad, counts["incremental"], counts["whole"]


@pytest.mark.parametrize("seed", range(8))
def test_incremental_redecides_equal_whole_decides(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Toggles, edits that refine the space and edits that do not, rules removed, tiers with Pass
    and Deny defaults, Pass and Log rules, profiles: every decision chain decided from the last
    decide gives the maps a decide from scratch gives, step after step."""
    bad, incremental, whole = _mismatches(seed, 10, monkeypatch)
    assert bad == 0
    assert incremental > 0, "some chains were walked again incrementally"


def test_the_equality_check_catches_a_wrong_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: when the region walked again leaves out where the changed policies' old
    rules matched, the incremental maps differ from a whole decide, and the check above sees it."""
    from enforcer.nft import decision_walks

    def new_rules_only(changed: list[tuple[object, object]], sw: object, boxes: object) -> tuple[object, ...]:
        return real([(None, after) for _, after in changed], sw, boxes)  # type: ignore[arg-type]

    real = decision_walks.touched_boxes
    monkeypatch.setattr(decision_walks, "touched_boxes", new_rules_only)
    assert sum(_mismatches(seed, 10, monkeypatch)[0] for seed in range(4)) > 0
