"""Live toggles under decision maps: only the decision chains of the endpoints a toggled policy
selects are decided again, the result equals a whole compile of the toggled state, and in the
kernel the change is one nfnetlink batch after which the table lists as a fresh full apply."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from enforcer.lab import netns_name
from enforcer.model import ResourceSet
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
