"""The nftables compiler: golden output, stability, and incremental changes that equal a rebuild."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from enforcer.lab import netns_name
from enforcer.loader import load_paths
from enforcer.model import Policy, ResourceSet
from enforcer.nft import ir
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.nft.decision import DEFAULT_BUDGET
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, decode_prefix
from enforcer.synth import SynthSpec, synth_resources
from flowtui.cli.common import scenario_dir

GOLDEN = Path(__file__).parent / "golden"
ARTICLE = load_paths([str(scenario_dir())])


def compiled_text(res: ResourceSet, node: str, ids: IdAllocator | None = None,
                  options: CompileOptions | None = None) -> str:
    return ir.listing(compile_node(ClusterState(res), node, options, ids=ids or IdAllocator()).table)


# The default layout (workload chains as decision maps where they fit) and the rule walk.
GOLDEN_LAYOUTS = {"": CompileOptions(decision_budget=DEFAULT_BUDGET), "-walk": CompileOptions(decision_budget=0)}


@pytest.mark.parametrize("suffix", sorted(GOLDEN_LAYOUTS))
@pytest.mark.parametrize("node", ["node-a", "node-b"])
def test_golden_article(node: str, suffix: str) -> None:
    """The article's ruleset, byte for byte. UPDATE_GOLDEN=1 rewrites the files after a reviewed
    change, and only with LAYOUT_VERSION bumped: recorded tables of another layout must not be
    taken for this one's."""
    from enforcer.nft.compiler import LAYOUT_VERSION

    text = compiled_text(ARTICLE, node, options=GOLDEN_LAYOUTS[suffix]) + "\n"
    path = GOLDEN / f"article-{node}{suffix}.nft"
    stamp = GOLDEN / f"article-{node}{suffix}.layout"
    digest = hashlib.sha256(text.encode()).hexdigest()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        if path.exists() and path.read_text() != text and stamp.exists():
            assert int(stamp.read_text().split()[0]) < LAYOUT_VERSION, (
                "the compiled layout changed: bump enforcer.nft.compiler.LAYOUT_VERSION")
        path.write_text(text)
        stamp.write_text(f"{LAYOUT_VERSION} {digest}\n")
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert text == path.read_text()
    version, recorded = stamp.read_text().split()
    assert (int(version), recorded) == (LAYOUT_VERSION, digest), (
        "golden file and layout version disagree: the layout changed without LAYOUT_VERSION (or the stamp is stale)")


def test_compiling_twice_is_identical_and_diffs_to_nothing() -> None:
    ids = IdAllocator()
    a = compile_node(ClusterState(ARTICLE), "node-b", ids=ids)
    b = compile_node(ClusterState(ARTICLE), "node-b", ids=ids)
    assert a.table == b.table
    assert ir.diff(a.table, b.table) == []


def test_every_logged_prefix_resolves_through_the_rule_table() -> None:
    compiled = compile_node(ClusterState(ARTICLE), "node-b")
    prefixes = [w.strip('"') for c in compiled.table.chains.values() for r in c.rules
                for w in r.split() if w.startswith('"ft:')]
    assert prefixes
    for prefix in prefixes:
        decoded = decode_prefix(prefix)
        assert decoded is not None
        ref = compiled.rules.lookup(prefix)
        assert ref is not None and ref.action == decoded[0]


def _edit(res: ResourceSet, name: str, **changes: object) -> ResourceSet:
    policies = tuple(replace(p, **changes) if p.name == name else p for p in res.policies)  # type: ignore[arg-type]
    return replace(res, policies=policies)


DECISION_MAPS = tuple(f"{kind}{v}-" for kind in ("dp", "dh", "dn", "di", "da") for v in (4, 6))


def _decision_op(op: ir.Op, *, edit: bool = False) -> bool:
    """A change inside the decision layout: map elements and outcome (dx-) chains; an edit may
    also split the peer classes anew (class chains dr- and their maps come and go)."""
    chains = ("dx-", "dr") if edit else ("dx-",)
    if isinstance(op, ir.SetElements):
        return op.name.startswith(DECISION_MAPS)
    if isinstance(op, ir.DefineSet | ir.DeleteSet):
        return edit and (op.set.name if isinstance(op, ir.DefineSet) else op.name).startswith(DECISION_MAPS)
    if isinstance(op, ir.DefineChain):
        return op.chain.name.startswith(chains)
    return isinstance(op, ir.DeleteChain) and op.name.startswith(chains)


def test_changing_one_policy_rewrites_only_its_chain() -> None:
    """Walk layout: the policy's chain only. Decision maps: map elements and outcome chains (the
    policy chain is rendered for rule ids but not loaded: no chain jumps to it); no endpoint chain
    is rewritten."""
    for layout in GOLDEN_LAYOUTS.values():
        ids = IdAllocator()
        old = compile_node(ClusterState(ARTICLE), "node-b", layout, ids=ids).table
        pol = next(p for p in ARTICLE.policies if p.name == "log-and-deny-frontend")
        edited = _edit(ARTICLE, pol.name, ingress=pol.ingress[1:], revision=1)
        new = compile_node(ClusterState(edited), "node-b", layout, ids=ids).table
        ops = [op for op in ir.diff(old, new) if not _decision_op(op, edit=True)]
        touched = {op.chain.name for op in ops if isinstance(op, ir.DefineChain)}
        if layout.decision_budget:
            assert touched == set() and "pi-np-staging.log-and-deny-frontend" not in new.chains
        else:
            assert touched == {"pi-np-staging.log-and-deny-frontend"}
        assert not any(isinstance(op, (ir.DeleteChain, ir.DeleteSet, ir.SetElements)) for op in ops)
        if layout.decision_budget:
            assert any(isinstance(op, ir.SetElements) for op in ir.diff(old, new)), "the maps hold the edit"


def test_toggling_a_policy_is_one_set_element() -> None:
    """A toggle keeps the policy's revision (the datastore's generation): the layout stays, and
    only the policy's gate enters or leaves the `disabled` set, whatever the table's size (walk
    layout); with decision maps, their elements and outcome chains change too, no other chain."""
    ids = IdAllocator()
    walk = CompileOptions(decision_budget=0)
    compiled = compile_node(ClusterState(ARTICLE), "node-b", walk, ids=ids)
    off = compile_node(ClusterState(_edit(ARTICLE, "dos-mitigation", disabled=True)), "node-b", walk, ids=ids)
    gate = f"{compiled.gates[('GlobalNetworkPolicy', '', 'dos-mitigation')]:#x}"
    assert ir.diff(compiled.table, off.table) == [ir.SetElements("closed", add=(gate,))]
    assert ir.diff(off.table, compiled.table) == [ir.SetElements("closed", delete=(gate,))]
    keys = {("GlobalNetworkPolicy", "", "dos-mitigation")}
    # Switching gates on the compiled node gives exactly what compiling the toggled state gives.
    assert ir.listing(compiled.with_disabled(keys).table) == ir.listing(off.table)
    assert ir.listing(off.with_disabled(set()).table) == ir.listing(compiled.table)

    # A workload policy under decision maps: its gate, and the cells it decided.
    key = ("NetworkPolicy", "staging", "log-and-deny-frontend")
    maps = GOLDEN_LAYOUTS[""]
    decided = compile_node(ClusterState(ARTICLE), "node-b", maps, ids=ids)
    decided_off = compile_node(ClusterState(_edit(ARTICLE, key[2], disabled=True)), "node-b", maps, ids=ids)
    gate = f"{decided.gates[key]:#x}"
    ops = ir.diff(decided.table, decided_off.table)
    assert ir.SetElements("closed", add=(gate,)) in ops
    assert any(_decision_op(op) for op in ops), "the policy decides some cells: the maps change"
    assert all(op == ir.SetElements("closed", add=(gate,)) or _decision_op(op) for op in ops), ops
    assert ir.listing(decided.with_disabled({key}).table) == ir.listing(decided_off.table)
    assert ir.listing(decided_off.with_disabled(set()).table) == ir.listing(decided.table)


def test_pod_membership_changes_only_set_elements() -> None:
    ids = IdAllocator()
    old = compile_node(ClusterState(ARTICLE), "node-b", ids=ids).table
    # The database joins tier=frontend: it enters the sets of rules naming the frontend tier.
    pods = tuple(replace(p, labels=tuple(kv for kv in p.labels if kv[0] != "tier") + (("tier", "frontend"),))
                 if p.name == "database" else p for p in ARTICLE.pods)
    new = compile_node(ClusterState(replace(ARTICLE, pods=pods)), "node-b", ids=ids).table
    ops = ir.diff(old, new)
    assert ops and all(isinstance(op, ir.SetElements) for op in ops), ops


def _random_edit(res: ResourceSet, r: random.Random) -> ResourceSet:
    pols = list(res.policies)
    i = r.randrange(len(pols))
    p: Policy = pols[i]
    choice = r.random()
    if choice < 0.3:
        pols[i] = replace(p, disabled=not p.disabled, revision=p.revision + 1)
    elif choice < 0.6 and p.ingress:
        pols[i] = replace(p, ingress=p.ingress[:-1], revision=p.revision + 1)
    elif choice < 0.8:
        pols[i] = replace(p, order=float(r.randint(1, 500)), revision=p.revision + 1)
    else:
        pods = list(res.pods)
        j = r.randrange(len(pods))
        pods[j] = replace(pods[j], labels=(("app", r.choice(("web", "api", "db"))), ("tier", "backend")))
        return replace(res, policies=tuple(pols), pods=tuple(pods))
    return replace(res, policies=tuple(pols))


def _sequence(seed: int, steps: int) -> list[ResourceSet]:
    r = random.Random(seed)
    res = synth_resources(seed, SynthSpec(nodes=2, pods=8, policies=12))
    out = [res]
    for _ in range(steps):
        out.append(_random_edit(out[-1], r))
    return out


@pytest.mark.parametrize("seed", range(10))
def test_incremental_changes_equal_a_full_rebuild_in_memory(seed: int) -> None:
    ids = IdAllocator()
    live: ir.Table | None = None
    prev: ir.Table | None = None
    for res in _sequence(seed, 12):
        table = compile_node(ClusterState(res), "node-1", ids=ids).table
        ops = ir.full(table, existing=False) if prev is None else ir.diff(prev, table)
        live = ir.apply_ops(live, table.family, table.name, ops)
        prev = table
        assert live is not None and ir.listing(live) == ir.listing(table)


@pytest.mark.parametrize("seed", range(10))
def test_compiling_a_derived_state_equals_compiling_from_scratch(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconciler derives each state from the last (`ClusterState.derive`): the compiler then
    reuses rendered sets and every unchanged policy's chain, and must give exactly the table a
    compile from scratch gives."""
    from enforcer.nft import compiler

    rendered: list[str] = []
    real = compiler._NodeCompiler._rule_lines

    def counting(self: compiler._NodeCompiler, *args: object, **kw: object) -> list[str]:
        if not kw.get("profile"):
            rendered.append("policy chain")
        return real(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(compiler._NodeCompiler, "_rule_lines", counting)
    ids = IdAllocator()
    state: ClusterState | None = None
    prev: ResourceSet | None = None
    for res in _sequence(seed, 8):
        state = ClusterState(res, include_disabled=True) if state is None else state.derive(res)
        changed = None
        if prev is not None and prev.pods == res.pods:
            before = {p.key: p for p in prev.policies}
            changed = {p.key for p in res.policies if before.get(p.key) != p}
        for node in ("node-1", "node-2"):
            rendered.clear()
            derived = compile_node(state, node, ids=ids)
            derived_renders = len(rendered)
            fresh = compile_node(ClusterState(res), node, ids=ids)
            assert ir.listing(derived.table) == ir.listing(fresh.table)
            assert derived.rules.refs == fresh.rules.refs and derived.gates == fresh.gates
            if changed is not None:  # only the edited policies' chains were rendered again
                assert derived_renders <= 2 * len(changed), (derived_renders, changed)
        prev = res


def _nft(ns: str, *args: str, script: str | None = None) -> str:
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def canonical_kernel_table(ns: str) -> str:
    """The live table, independent of creation order: nft lists sets and chains in the order they
    were created and hash-set elements in internal order; rule order within a chain is kept."""
    doc = json.loads(_nft(ns, "-j", "list", "table", "inet", "flowtui"))
    objects: dict[tuple[str, str], object] = {}
    rules: dict[str, list[object]] = {}
    for item in doc["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if kind == "rule":
                # Counter values move with live traffic; the rules themselves are what must match.
                exprs = [{"counter": None} if "counter" in e else e for e in body["expr"]]
                rules.setdefault(body["chain"], []).append(exprs)
                continue
            if "elem" in body:
                body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
            objects[(kind, body.get("name", ""))] = body
    return json.dumps({"objects": sorted(objects.items()), "rules": sorted(rules.items())}, sort_keys=True, indent=1)


@pytest.mark.kernel
def test_incremental_changes_equal_a_full_rebuild_in_the_kernel(lab_id: str) -> None:
    from enforcer.lab import lab_down, lab_up, plan_lab

    seq = _sequence(7, 10)
    plan = plan_lab(seq[0], lab_id)
    lab_up(plan)
    inc, fresh = netns_name(lab_id, "node:node-1"), netns_name(lab_id, "node:node-2")
    ids = IdAllocator()
    prev: ir.Table | None = None
    try:
        for res in seq:
            table = compile_node(ClusterState(res), "node-1", ids=ids).table
            ops = ir.full(table, existing=False) if prev is None else ir.diff(prev, table)
            _nft(inc, "-f", "-", script=ir.render(table, ops))
            # A second namespace gets the same table from scratch every time.
            _nft(fresh, "-f", "-", script=ir.render(table, ir.full(table, existing=prev is not None)))
            prev = table
            assert canonical_kernel_table(inc) == canonical_kernel_table(fresh)
    finally:
        lab_down(lab_id)


@pytest.mark.parametrize("heps", [False, True])
def test_established_packets_meet_the_conntrack_verdict_first(heps: bool) -> None:
    """Every base chain after conntrack starts with the established/related accept, so an
    established packet costs one rule per hook; the raw and mangle hooks exist only when untracked
    or preDNAT policy (a host endpoint) needs them."""
    res = synth_resources(3, SynthSpec(nodes=2, pods=8, policies=12, host_endpoints=heps))
    table = compile_node(ClusterState(res), "node-1", ids=IdAllocator()).table
    bases = {n: c for n, c in table.chains.items() if c.hook}
    for name, chain in bases.items():
        if "priority raw" not in (chain.hook or ""):
            assert chain.rules[0] == "ct state established,related accept", (name, chain.rules[:2])
    hooked = {n for n in bases if n.startswith(("raw-", "mangle-"))}
    if heps:
        assert "mangle-prerouting" in hooked
        assert all(any(" jump " in r for r in bases[n].rules) for n in hooked)
    else:
        assert not hooked, hooked


def test_only_reachable_chains_and_sets_are_loaded() -> None:
    """Every chain and map of a table is reached from a hook (nothing loaded for nothing), and
    everything a rule or map element names exists. Decision maps leave the walk's policy chains
    and end-of-tier drops unreached (not loaded); the rule walk loads them."""
    from enforcer.nft.reach import reachable

    for node in ("node-a", "node-b"):
        for label, layout in GOLDEN_LAYOUTS.items():
            table = compile_node(ClusterState(ARTICLE), node, layout, ids=IdAllocator()).table
            chains, sets = reachable(table.chains, table.sets)
            assert chains == set(table.chains), (node, label, set(table.chains) - chains)
            assert sets <= set(table.sets), (node, label, sets - set(table.sets))
            assert set(table.sets) - sets <= {"closed"}, (node, label)
            policy_chains = {n for n in table.chains if n.startswith(("pi-", "po-", "ei-", "eo-"))}
            # deny-other-ingress selects pods only; dos-mitigation (node-b's host endpoint) stays
            assert ("pi-gnp-deny-other-ingress" in policy_chains) == (not layout.decision_budget), (node, label)
            assert node == "node-a" or "pi-gnp-dos-mitigation" in policy_chains


def test_rule_lists_are_shared_named_sets_never_anonymous_ones() -> None:
    """A rule's port or address list is a named set shared by every rule listing the same values
    (the kernel binds each anonymous set by walking the whole transaction: quadratic in a full
    apply); overlapping ports are merged first (an interval set refuses overlaps)."""
    from enforcer.model import EntityRule, PortRange, Rule
    from enforcer.nft.match import SetBook, rule_matches

    book = SetBook(ClusterState(ARTICLE))
    web = (PortRange(443, 443), PortRange(80, 80))
    (a,) = rule_matches(book, Rule(action="Allow", protocol=6, destination=EntityRule(ports=web)), None, 4)
    (b,) = rule_matches(book, Rule(action="Deny", protocol=6, source=EntityRule(ports=web[::-1])), None, 4)
    name = a.rsplit("th dport @", 1)[1]
    assert b.endswith(f"th sport @{name}") and book.sets[name].elements == {"80", "443"}
    assert not book.sets[name].interval
    (c,) = rule_matches(book, Rule(action="Allow", protocol=17, destination=EntityRule(
        ports=(PortRange(9000, 9000), PortRange(9000, 9100), PortRange(9101, 9101)))), None, 4)
    assert c.endswith("th dport 9000-9101")  # one range: no set at all
    import ipaddress
    (d,) = rule_matches(book, Rule(action="Allow", source=EntityRule(
        nets=(ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.7/32")))), None, 4)
    nets = d.rsplit("ip saddr @", 1)[1]
    assert book.sets[nets].interval and book.sets[nets].elements == {"192.0.2.0/24", "198.51.100.7"}
    # a whole node: the few braces left are the base chains' own (interface names, ICMPv6 types)
    res = synth_resources(2, SynthSpec(nodes=1, namespaces=3, pods=30, policies=100, rules_per_policy=6))
    table = compile_node(ClusterState(res), res.nodes[0].name, CompileOptions(decision_budget=0)).table
    braced = [r for c in table.chains.values() for r in c.rules if "{" in r]
    assert sum(len(c.rules) for c in table.chains.values()) > 500 and len(braced) <= 8, braced
