"""The reconciler on the fake backend (and once on the kernel), with a small fake compiler.

`fake_compile` stands in for `enforcer.nft.compiler.compile_node`: one chain per active policy
with one rule per ingress rule (ids from the allocator), a base chain jumping to them, and a set
of the node's addresses (so the lab's address filling can be seen). The CLI tests reuse it.
"""

from __future__ import annotations

import json
import statistics
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enforcer.datastore import Datastore
from enforcer.nft import ir
from enforcer.nft.backend import Backend, FakeBackend, KernelBackend
from enforcer.reconcile import Reconciler, compile_nodes, fingerprint, table_from_json, table_to_json
from enforcer.resolve import ClusterState
from enforcer.ruleids import ACTION_LETTER, IdAllocator, RuleRef, RuleTable

SCENARIOS = Path(__file__).resolve().parents[1] / "flowtui" / "scenarios" / "article"
VERDICT = {"Allow": "accept", "Deny": "drop", "Pass": "return", "Log": "continue"}


@dataclass(frozen=True)
class FakeCompiled:
    table: ir.Table
    rules: RuleTable


def fake_compile(state: ClusterState, node: str, options: Any, ids: IdAllocator) -> FakeCompiled:
    """A stand-in compiler: valid nftables, one chain per active policy, stable ids."""
    chains: dict[str, ir.Chain] = {}
    refs: list[RuleRef] = []
    jumps: list[str] = []
    # No policy gates here: a disabled policy is left out (the reconciler then compiles on toggles).
    for pol in sorted((p for p in state.active_policies if not p.disabled), key=lambda p: p.key):
        chain = f"pol-{pol.namespace + '-' if pol.namespace else ''}{pol.name}"
        rules = []
        for i, rule in enumerate(pol.ingress):
            rid = ids.id_for((pol.kind, pol.namespace, pol.name, pol.revision, "ingress", i))
            refs.append(RuleRef(rid, pol.kind, pol.namespace, pol.name, pol.tier, pol.revision, "ingress", i,
                                rule.action))
            tag = f"{ACTION_LETTER[rule.action]}{rid}"
            rules.append(f'meta mark 0x{rid:x} counter {VERDICT[rule.action]} comment "{tag}"')
        chains[chain] = ir.Chain(chain, tuple(rules))
        jumps.append(f"jump {chain}")
    if "deny-ping" in {p.name for p in state.active_policies if not p.disabled}:
        jumps.append("meta l4proto icmp drop")
    chains["forward"] = ir.Chain("forward", tuple(jumps), "type filter hook forward priority filter; policy accept;")
    addresses = next((n.addresses for n in state.resources.nodes if n.name == node), ())
    sets = {"node_v4": ir.NftSet("node_v4", "ipv4_addr", (), frozenset(str(a) for a in addresses if a.version == 4))}
    return FakeCompiled(ir.Table("inet", "flowtui", chains, sets), RuleTable(refs))


def failing_on(bad: str) -> Any:
    def compile_fn(state: ClusterState, node: str, options: Any, ids: IdAllocator) -> FakeCompiled:
        if node == bad:
            raise RuntimeError(f"cannot compile {node}")
        return fake_compile(state, node, options, ids)

    return compile_fn


NODES = ["node-a", "node-b"]


def expected(ds: Datastore, node: str) -> str:
    """The listing of a full compile of the datastore as it is now."""
    return ir.listing(fake_compile(ClusterState(ds.resources()), node, None, IdAllocator.load(ds.ids_path)).table)


@pytest.fixture
def ds(tmp_path: Path) -> Datastore:
    store = Datastore(tmp_path / "state")
    store.apply_documents([str(SCENARIOS)])
    return store


def reconciler(ds: Datastore, backend: Backend, compile_fn: Any = fake_compile, lab_id: str | None = None,
               nodes: list[str] | None = None) -> Reconciler:
    return Reconciler(ds, backend, compile_fn, None, lambda: list(nodes or NODES), lab_id=lab_id)


def test_first_run_creates_then_nothing_changes(ds: Datastore) -> None:
    backend = FakeBackend()
    rec = reconciler(ds, backend)
    first = rec.reconcile()
    assert first.ok and [n.status for n in first.nodes] == ["applied", "applied"]
    assert all(n.full for n in first.nodes)
    assert backend.history["node-a"][0].startswith("add table inet flowtui\n")
    assert first.revision == ds.revision and first.rules > 0 and first.new_ids == first.rules
    again = rec.reconcile()
    assert [n.status for n in again.nodes] == ["unchanged", "unchanged"]
    assert len(backend.history["node-a"]) == 1  # no transaction at all
    assert "unchanged" in again.describe()


def test_toggle_changes_only_what_it_must(ds: Datastore) -> None:
    backend = FakeBackend()
    rec = reconciler(ds, backend)
    rec.reconcile()
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    result = rec.reconcile()
    assert [n.status for n in result.nodes] == ["applied", "applied"]
    assert not any(n.full for n in result.nodes)
    script = backend.history["node-a"][-1]
    assert "delete table" not in script and "add table" not in script
    assert "delete chain inet flowtui pol-deny-other-ingress" in script
    assert "flush chain inet flowtui forward" in script
    assert "pol-deny-other-ingress" not in backend.listing("node-a")  # type: ignore[operator]
    for node in NODES:  # the incremental result is the full rebuild
        assert backend.listing(node) == expected(ds, node)
    for n in result.nodes:
        assert n.compile_ms >= 0 and n.apply_ms > 0


def test_failed_node_keeps_its_table_and_others_proceed(ds: Datastore) -> None:
    backend = FakeBackend()
    rec = reconciler(ds, backend)
    rec.reconcile()
    before = backend.listing("node-a")
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    backend.fail_next("node-a", "injected: kernel said no")
    result = rec.reconcile()
    assert not result.ok
    (failed,) = result.failed
    assert failed.node == "node-a" and failed.error == "injected: kernel said no"
    assert backend.listing("node-a") == before
    assert [n.status for n in result.nodes] == ["failed", "applied"]
    healed = rec.reconcile()  # re-checks node-a against the backend, then applies the diff
    assert [n.status for n in healed.nodes] == ["applied", "unchanged"]
    assert not healed.nodes[0].full
    assert backend.listing("node-a") == expected(ds, "node-a")


def test_compile_failure_is_per_node(ds: Datastore) -> None:
    backend = FakeBackend()
    result = reconciler(ds, backend, failing_on("node-a")).reconcile()
    assert [n.status for n in result.nodes] == ["failed", "applied"]
    assert "cannot compile node-a" in (result.nodes[0].error or "")
    assert "node-a" not in backend.tables


def test_ids_are_stable_across_processes_and_rules_append_only(ds: Datastore) -> None:
    rec = reconciler(ds, FakeBackend())
    rec.reconcile()
    first = RuleTable.load(ds.rules_path)
    # A second "process": new reconciler, new backend, same datastore: the same ids.
    other = FakeBackend()
    reconciler(ds, other).reconcile()
    assert RuleTable.load(ds.rules_path).refs == first.refs
    assert IdAllocator.load(ds.ids_path).items() == IdAllocator.load(ds.ids_path).items()
    ids_before = dict((k, v) for k, v in IdAllocator.load(ds.ids_path).items())
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    ds.set_disabled("gnp", "deny-other-ingress", None, False)  # toggles keep the policy's revision: same ids
    assert rec.reconcile().new_ids == 0 and RuleTable.load(ds.rules_path).refs == first.refs
    (_, doc), = ds.object_documents("gnp", name="deny-other-ingress")
    doc["spec"]["order"] = float(doc["spec"].get("order", 0)) + 0.5
    edited = ds.path.parent / "edited.json"
    edited.write_text(json.dumps(doc), encoding="utf-8")
    ds.apply_documents([str(edited)])  # an edit: a new revision, new ids
    result = rec.reconcile()
    after = RuleTable.load(ds.rules_path)
    assert result.new_ids > 0
    assert set(first.refs) < set(after.refs)  # old ids kept (append-only)
    new_ref = max(after.refs.values(), key=lambda r: r.id)
    assert new_ref.name == "deny-other-ingress" and new_ref.revision == ds.revision
    assert new_ref.id > max(ids_before.values())
    assert {v for k, v in IdAllocator.load(ds.ids_path).items() if k in ids_before} == set(ids_before.values())


def test_first_use_verifies_the_live_table(ds: Datastore) -> None:
    backend = FakeBackend()
    reconciler(ds, backend).reconcile()
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    # A new process whose record matches the live table: an incremental change.
    result = reconciler(ds, backend).reconcile()
    assert [n.full for n in result.nodes] == [False, False]
    # Someone changed node-a's table behind our back: the next new process replaces it whole.
    tampered = backend.tables["node-a"]
    chains = dict(tampered.chains)
    chains.pop("pol-deny-frontend-to-transaction")
    backend.tamper("node-a", ir.Table(tampered.family, tampered.name, chains, tampered.sets))
    ds.set_disabled("gnp", "deny-other-ingress", None, False)
    result = reconciler(ds, backend).reconcile()
    assert [n.full for n in result.nodes] == [True, False]
    assert backend.history["node-a"][-1].startswith("delete table inet flowtui\nadd table inet flowtui\n")
    assert backend.listing("node-a") == expected(ds, "node-a")
    # The table vanished: created again (no delete of a missing table).
    backend.delete("node-b")
    result = reconciler(ds, backend).reconcile()
    assert result.nodes[1].full and backend.history["node-b"][-1].startswith("add table inet flowtui\n")


def test_forced_full_replace(ds: Datastore) -> None:
    backend = FakeBackend()
    rec = reconciler(ds, backend)
    rec.reconcile()
    result = rec.reconcile(full=True)
    assert all(n.full and n.status == "applied" for n in result.nodes)
    assert backend.history["node-a"][-1].startswith("delete table inet flowtui\n")


def test_lab_addresses_reach_the_compiler(tmp_path: Path) -> None:
    ds = Datastore(tmp_path / "s")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Node
        metadata: {name: n1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: default}
        spec: {nodeName: n1}
    """))
    ds.apply_documents([str(cluster)])
    plain, lab = FakeBackend(), FakeBackend()
    reconciler(ds, plain, nodes=["n1"]).reconcile()
    assert plain.tables["n1"].sets["node_v4"].elements == frozenset()
    reconciler(ds, lab, lab_id="tlab", nodes=["n1"]).reconcile()
    (address,) = lab.tables["n1"].sets["node_v4"].elements
    assert address.startswith("172.31.0.")  # the lab's underlay address
    compiled = compile_nodes(ds.resources(), fake_compile, None, IdAllocator(), "tlab")
    assert list(compiled) == ["n1"] and compiled["n1"].table.sets["node_v4"].elements == {address}


def test_table_json_round_trip_and_fingerprint(ds: Datastore) -> None:
    table = fake_compile(ClusterState(ds.resources()), "node-a", None, IdAllocator()).table
    assert table_from_json(table_to_json(table)) == table
    assert fingerprint(table) == fingerprint(table_from_json(table_to_json(table)))
    fewer = ir.Table(table.family, table.name, {k: v for k, v in table.chains.items() if k != "forward"}, table.sets)
    assert fingerprint(fewer) != fingerprint(table)


def test_a_missing_node_namespace_is_a_node_failure(ds: Datastore) -> None:
    class Broken(FakeBackend):
        def current(self, node: str) -> ir.Table | None:
            if node == "node-b":
                raise OSError("namespace is gone")
            return super().current(node)

    result = reconciler(ds, Broken()).reconcile()
    assert [n.status for n in result.nodes] == ["applied", "failed"]
    assert "namespace is gone" in (result.nodes[1].error or "")


@pytest.mark.kernel
def test_kernel_toggle_latency_and_restart(ds: Datastore, lab_id: str) -> None:
    from enforcer.lab import netns_name
    from enforcer.lab.netns import create_netns

    for node in NODES:
        create_netns(netns_name(lab_id, f"node:{node}"))
    backend = KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))
    try:
        rec = reconciler(ds, backend)
        assert all(n.full for n in rec.reconcile().nodes)
        applies = []
        totals = []
        for i in range(10):
            start = time.perf_counter()
            ds.set_disabled("gnp", "deny-other-ingress", None, i % 2 == 0)
            result = rec.reconcile()
            totals.append((time.perf_counter() - start) * 1e3)
            assert result.ok and not any(n.full for n in result.nodes)
            applies += [n.apply_ms for n in result.nodes]
        print(f"\ntoggle through the reconciler: apply median {statistics.median(applies):.2f} ms, "
              f"write+reconcile median {statistics.median(totals):.1f} ms")
        assert statistics.median(applies) < 10
        live = backend.listing("node-a", stateless=True)
        # A new process: verified against the kernel, then incremental.
        ds.set_disabled("gnp", "deny-other-ingress", None, True)
        fresh = reconciler(ds, KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}")))
        result = fresh.reconcile()
        assert result.ok and not any(n.full for n in result.nodes)
        assert backend.listing("node-a", stateless=True) != live
    finally:
        backend.close()


# ---- live toggles: policy gates, no compile ----------------------------------------------------


def _options(decision: bool) -> Any:
    from enforcer.nft.compiler import CompileOptions
    from enforcer.nft.decision import DEFAULT_BUDGET

    return CompileOptions(decision_budget=DEFAULT_BUDGET if decision else 0)


def gated(ds: Datastore, backend: Backend, *, decision: bool = False) -> Reconciler:
    """The real compiler; the rule-walk layout (only gates depend on toggles) unless `decision`."""
    from enforcer.nft.compiler import compile_node

    return Reconciler(ds, backend, compile_node, _options(decision), lambda: list(NODES), lab_id="tlab")


def fresh_tables(ds: Datastore, *, decision: bool = False) -> dict[str, str]:
    """What a whole compile of the datastore gives, node by node (canonical listings; the
    datastore's ids, nothing written)."""
    from enforcer.nft.compiler import compile_node

    compiled = compile_nodes(ds.resources(), compile_node, _options(decision), IdAllocator.load(ds.ids_path),
                             "tlab", NODES)
    return {n: ir.listing(c.table) for n, c in compiled.items()}


def test_toggles_switch_gates_without_compiling(ds: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend()
    rec = gated(ds, backend)
    first = rec.reconcile()
    assert not any(n.toggled for n in first.nodes)
    compiles: list[str] = []
    real = rec.compile_fn
    rec.compile_fn = lambda *a: compiles.append(a[1]) or real(*a)  # type: ignore[func-returns-value]
    for name, disabled in (("deny-other-ingress", True), ("allow-cluster-internal", True),
                           ("deny-other-ingress", False), ("allow-cluster-internal", False)):
        seen = {n: len(backend.history.get(n, [])) for n in NODES}
        ds.set_disabled("gnp", name, None, disabled)
        result = rec.reconcile()
        assert all(n.toggled and n.status == "applied" for n in result.nodes), result.describe()
        scripts = [s for n in NODES for s in backend.history[n][seen[n]:]]
        assert len(scripts) == len(NODES) and all(
            s.startswith(("add element inet flowtui closed", "delete element inet flowtui closed"))
            and s.count("\n") == 1 for s in scripts), scripts
        assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds)
    assert compiles == []
    # An edit is not a toggle: it compiles.
    (_, doc), = ds.object_documents("gnp", name="deny-other-ingress")
    doc["spec"]["order"] = float(doc["spec"].get("order", 0)) + 0.5
    edited = ds.path.parent / "edited.json"
    edited.write_text(json.dumps(doc), encoding="utf-8")
    ds.apply_documents([str(edited)])
    result = rec.reconcile()
    assert not any(n.toggled for n in result.nodes) and sorted(compiles) == sorted(NODES)


def test_a_fresh_process_toggles_from_the_recorded_table(ds: Datastore) -> None:
    backend = FakeBackend()
    gated(ds, backend).reconcile()
    whole = {n: ds.applied_dir / f"{n}.json" for n in NODES}
    stamps = {n: p.stat().st_mtime_ns for n, p in whole.items()}
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    other = gated(ds, backend)  # another process: nothing in memory
    other.compile_fn = lambda *a: pytest.fail("compiled for a toggle")
    # Nothing was committed in the namespaces since the record (same generation): the live table
    # is not read back either.
    current = backend.current
    backend.current = lambda node: pytest.fail("read the live table back")  # type: ignore[method-assign]
    result = other.reconcile()
    backend.current = current  # type: ignore[method-assign]
    assert all(n.toggled and n.status == "applied" for n in result.nodes), result.describe()
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds)
    # The toggle wrote the small state record, not the whole-table one...
    assert {n: p.stat().st_mtime_ns for n, p in whole.items()} == stamps
    assert all((ds.applied_dir / f"{n}.state.json").exists() for n in NODES)
    # ...and a third process reads both back as what the backend holds.
    third = gated(ds, backend)
    third.compile_fn = lambda *a: pytest.fail("compiled for a toggle")
    ds.set_disabled("gnp", "deny-other-ingress", None, False)
    assert all(n.toggled for n in third.reconcile().nodes)
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds)


def test_a_toggle_killed_after_its_commit_is_adopted(ds: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A toggle served from the records writes its intent (the state it will leave) before the
    commit: a process killed after the kernel took it and before the state record is written
    leaves a table the next process adopts (one more generation, the intent's base), so the next
    toggle is served from the records again instead of reading and replacing the whole table."""
    from enforcer.applied import AppliedRecords

    backend = FakeBackend()
    gated(ds, backend).reconcile()
    ds.set_disabled("gnp", "deny-other-ingress", None, True)

    class Killed(Exception):
        pass

    def killed(*_: object) -> None:
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(AppliedRecords, "write_state", killed)
        with pytest.raises(Killed):
            gated(ds, backend).reconcile()
    # The first node's toggle was committed, not recorded (the kill stopped the run there).
    assert ir.listing(backend.tables[NODES[0]]) == fresh_tables(ds)[NODES[0]]
    ds.set_disabled("gnp", "allow-cluster-internal", None, True)
    after = gated(ds, backend)
    after.compile_fn = lambda *a: pytest.fail("compiled for a toggle")
    backend.current = lambda node: pytest.fail("read the live table back")  # type: ignore[method-assign]
    result = after.reconcile()
    assert all(n.toggled and n.status == "applied" for n in result.nodes), result.describe()
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds)
    # An intent that does not follow the record (another commit came between) is not adopted.
    ds.set_disabled("gnp", "allow-cluster-internal", None, False)
    with monkeypatch.context() as patched:
        patched.setattr(AppliedRecords, "write_state", killed)
        with pytest.raises(Killed):
            gated(ds, backend).reconcile()
    records = AppliedRecords(ds.applied_dir, backend)
    state = records.state(NODES[0])
    backend.tamper(NODES[0], backend.tables[NODES[0]])
    assert records.committed_state(NODES[0], state) is None


def test_recorded_layout_is_not_used_for_another_layout_or_a_changed_table(ds: Datastore) -> None:
    backend = FakeBackend()
    gated(ds, backend).reconcile()
    # Someone changed the live table behind our back: the first-use check fails, so compile.
    node = NODES[0]
    t = backend.tables[node]
    backend.tamper(node, ir.Table(t.family, t.name, {k: c for k, c in t.chains.items() if k != "wl-to-host"}, t.sets))
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    result = gated(ds, backend).reconcile()
    assert not any(n.toggled for n in result.nodes)
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds)


def test_tables_recorded_by_another_layout_version_are_compiled_again(ds: Datastore) -> None:
    """A new flowtui whose compiler lays tables out differently must not serve toggles from a
    table an older one recorded: the options (with LAYOUT_VERSION) are part of the layout key."""
    from enforcer.nft.compiler import LAYOUT_VERSION, CompileOptions, compile_node

    backend = FakeBackend()
    gated(ds, backend).reconcile()
    ds.set_disabled("gnp", "deny-other-ingress", None, True)
    compiles: list[str] = []

    def counting(*a: Any) -> Any:
        compiles.append(a[1])
        return compile_node(*a)

    newer = Reconciler(ds, backend, counting, CompileOptions(layout_version=LAYOUT_VERSION + 1), lambda: list(NODES),
                       lab_id="tlab")
    result = newer.reconcile()
    assert sorted(compiles) == sorted(NODES) and not any(n.toggled for n in result.nodes)


def test_toggles_under_decision_maps_equal_a_fresh_compile(ds: Datastore) -> None:
    """Decision maps hold outcomes of enabled policies: a toggle changes map elements (and the
    outcome chains), in this process from the last compile, in a fresh one by compiling (the
    recorded `closed` set alone would be a wrong verdict) — both equal to a whole compile."""
    backend = FakeBackend()
    rec = gated(ds, backend, decision=True)
    rec.reconcile()
    assert any(name.startswith("dp4-") for name in backend.tables[NODES[0]].sets), "decision maps laid out"
    for name, disabled in (("allow-cluster-internal", True), ("deny-other-ingress", True),
                           ("allow-cluster-internal", False)):
        before = {n: backend.tables[n] for n in NODES}
        ds.set_disabled("gnp", name, None, disabled)
        result = rec.reconcile()
        assert all(n.toggled and n.status == "applied" for n in result.nodes), result.describe()
        assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds, decision=True)
        changed = [op for n in NODES for op in ir.diff(before[n], backend.tables[n])]
        assert any(isinstance(op, ir.SetElements) and op.name.startswith(("dp", "dn")) for op in changed)
        assert all(isinstance(op, ir.SetElements) or op.chain.name.startswith("dx-")  # type: ignore[union-attr]
                   for op in changed if not isinstance(op, ir.DeleteChain)), changed
    other = gated(ds, backend, decision=True)  # a fresh process compiles for the toggle
    ds.set_disabled("gnp", "deny-other-ingress", None, False)
    result = other.reconcile()
    assert all(n.status == "applied" and not n.toggled for n in result.nodes), result.describe()
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds, decision=True)


def test_a_toggle_whose_decision_no_longer_fits_compiles_the_node(ds: Datastore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A toggle whose decided-again chain would keep the walk now (the node's element budget is
    spent) cannot be served from the last compile: the node is compiled whole, not left failing."""
    from enforcer.nft import compiler

    backend = FakeBackend()
    rec = gated(ds, backend, decision=True)
    rec.reconcile()
    real = compiler._NodeCompiler._decision_chain
    monkeypatch.setattr(compiler._NodeCompiler, "_decision_chain",
                        lambda self, *a: None if self.state.resources.policies[0].disabled else real(self, *a))
    first = ds.resources().policies[0]
    ds.set_disabled(first.kind, first.name, first.namespace, True)
    result = rec.reconcile()
    assert result.ok and not any(n.toggled for n in result.nodes), result.describe()
    assert {n: ir.listing(backend.tables[n]) for n in NODES} == fresh_tables(ds, decision=True)
    assert not any(name.startswith("dp4-") for name in backend.tables[NODES[0]].sets), "the walk everywhere"


@pytest.mark.kernel
def test_kernel_toggles_under_decision_maps_are_one_batch_equal_to_a_full_apply(
        ds: Datastore, lab_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the reconciler and the kernel backend: each toggle that changes decision maps
    reaches the kernel as one nfnetlink batch (libnftables is not called), and the live table
    then lists exactly as the same state applied whole to a fresh namespace."""
    from enforcer.lab import netns_name
    from enforcer.lab.netns import create_netns
    from enforcer.nft.libnft import Nft
    from tests.test_compiler import canonical_kernel_table

    for node in NODES:
        for suffix in ("", "-fresh"):
            create_netns(netns_name(lab_id, f"node:{node}{suffix}"))
    backend = KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))
    try:
        rec = gated(ds, backend, decision=True)
        assert rec.reconcile().ok
        real_run = Nft.run

        def no_library(self: Nft, script: str, *, flags: int = 0) -> str:
            raise AssertionError(f"libnftables was used for a toggle: {script[:300]}")

        for name, disabled in (("allow-cluster-internal", True), ("deny-other-ingress", True),
                               ("allow-cluster-internal", False), ("deny-other-ingress", False)):
            ds.set_disabled("gnp", name, None, disabled)
            monkeypatch.setattr(Nft, "run", no_library)
            result = rec.reconcile()
            monkeypatch.setattr(Nft, "run", real_run)
            assert all(n.toggled and n.status == "applied" for n in result.nodes), result.describe()
            compiled = compile_nodes(ds.resources(), rec.compile_fn, _options(True), IdAllocator.load(ds.ids_path),
                                     "tlab", NODES)
            for node, out in compiled.items():
                backend.delete(f"{node}-fresh")
                backend.apply(f"{node}-fresh", out.table, ir.full(out.table, existing=False))
                assert canonical_kernel_table(backend.netns(node)) == \
                    canonical_kernel_table(backend.netns(f"{node}-fresh"))
    finally:
        backend.close()


def test_the_lab_is_planned_again_only_when_its_endpoints_change(ds: Datastore, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy edit reuses the lab's plan (addresses unchanged); a pod added re-plans, and the
    new pod gets its lab address in what is compiled."""
    import enforcer.reconcile as reconcile_module

    plans = []
    real = reconcile_module.plan_lab

    def counted(resources: Any, lab_id: str) -> Any:
        plans.append(lab_id)
        return real(resources, lab_id)

    monkeypatch.setattr(reconcile_module, "plan_lab", counted)
    seen: list[ClusterState] = []

    def compile_and_keep(state: ClusterState, node: str, options: Any, ids: IdAllocator) -> FakeCompiled:
        seen.append(state)
        return fake_compile(state, node, options, ids)

    rec = reconciler(ds, FakeBackend(), compile_and_keep, lab_id="xp2")
    assert rec.reconcile().ok and plans == ["xp2"]
    edit = tmp_path / "edit.yaml"
    edit.write_text(textwrap.dedent("""
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: xp2-edit}
        spec: {order: 5, selector: all(), types: [Ingress], ingress: [{action: Allow}]}
    """))
    ds.apply_documents([str(edit)])
    assert rec.reconcile().ok and plans == ["xp2"]
    pod = tmp_path / "pod.yaml"
    pod.write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Pod
        metadata: {name: xp2-pod, namespace: default, labels: {app: xp2}}
        spec: {nodeName: node-a, containers: [{name: c, image: busybox}]}
    """))
    ds.apply_documents([str(pod)])
    assert rec.reconcile().ok and plans == ["xp2", "xp2"]
    [added] = [p for p in seen[-1].resources.pods if p.name == "xp2-pod"]
    assert added.ips  # the lab's address, from the new plan
