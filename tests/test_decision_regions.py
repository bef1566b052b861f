"""Decision maps against the evaluator, cell by cell, without a kernel.

The compiler computes each workload chain's decision maps with a walk over regions
(enforcer/nft/regions.py), deriving every rule's region from the resolved rule. The oracle is
the evaluator's per-flow walk (`Evaluator.decide_stage`): on random policy sets (synth clusters
whose rules are topped up with source ports, notPorts, named ports on both sides, ICMP type and
code, notICMP, notProtocol, nets and notNets), every flow through a decision chain — looked up in
the rendered map elements as the kernel would — must reach the outcome chain that logs exactly
the evaluator's Log hits and attributes its verdict to the evaluator's deciding rule.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.evaluate.evaluator import Evaluator, Hit, StageResult
from enforcer.evaluate.flow import Flow
from enforcer.evaluate.path import Stage
from enforcer.lab.names import cali_name
from enforcer.model import EntityRule, ICMPMatch, IPAddress, NamedPort, PortRange, ResourceSet, Rule
from enforcer.nft import decision
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node
from enforcer.nft.decision import DEFAULT_BUDGET, PORT_PROTOCOLS, MembershipIndex, memberships
from enforcer.nft.decision_space import SPACE, address_intervals, classes_at_least, merged_ranges
from enforcer.nft.ir import Table
from enforcer.nft.regions import Box, Outcome, RegionRule, TierRules, bits, profile_pos, rewalk, walk_traced
from enforcer.resolve import ClusterState
from enforcer.ruleids import RuleTable
from enforcer.selector import parse_selector
from enforcer.synth import SynthSpec, synth_resources

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PORT_EDGES = (0, 1, 52, 53, 54, 79, 80, 81, 443, 1024, 5432, 8080, 9000, 9100, 9101, 40000, 65535)


def _ports(rng: random.Random) -> tuple[PortRange | NamedPort, ...]:
    out: list[PortRange | NamedPort] = []
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.25:
            out.append(NamedPort("http"))
        else:
            first = rng.choice(PORT_EDGES[:-1])
            out.append(PortRange(first, min(65535, first + rng.choice((0, 0, 1, 20, 1000)))))
    return tuple(out)


def _entity(rng: random.Random, family: int, protocol: int | None) -> EntityRule:
    kw: dict[str, object] = {}
    if rng.random() < 0.3:
        kw["nets"] = (ipaddress.ip_network("10.244.0.0/23" if family == 4 else "fd00:10:244::/62"),)
    if rng.random() < 0.2:
        kw["not_nets"] = (ipaddress.ip_network("10.244.1.0/28" if family == 4 else "fd00:10:244:1::/120"),)
    if rng.random() < 0.3:
        kw["selector"] = parse_selector(f"app == '{rng.choice(('web', 'api', 'db'))}'")
    if rng.random() < 0.15:
        kw["not_selector"] = parse_selector(f"app == '{rng.choice(('web', 'api'))}'")
    if protocol in (6, 17, 132):
        if rng.random() < 0.5:
            kw["ports"] = _ports(rng)
        if rng.random() < 0.2:
            kw["not_ports"] = _ports(rng)
    return EntityRule(**kw)  # type: ignore[arg-type]


def _rule(rng: random.Random) -> Rule:
    action = rng.choice(("Allow", "Allow", "Deny", "Pass", "Log"))
    protocol = rng.choice((6, 17, 132, 1, 58, None, None))
    family = 6 if protocol == 58 else 4 if protocol == 1 else rng.choice((4, 6))
    kw: dict[str, object] = {}
    if protocol in (1, 58):
        if rng.random() < 0.5:
            kw["icmp"] = ICMPMatch(rng.choice((0, 3, 8, 128)), rng.choice((None, 0, 1)))
        elif rng.random() < 0.5:
            kw["not_icmp"] = ICMPMatch(rng.choice((3, 8, 129)), rng.choice((None, 0)))
    elif protocol is None and rng.random() < 0.3:
        kw["not_protocol"] = rng.choice((6, 17, 1))
    return Rule(action, protocol=protocol, source=_entity(rng, family, protocol),  # type: ignore[arg-type]
                destination=_entity(rng, family, protocol), **kw)  # type: ignore[arg-type]


def topped_up(res: ResourceSet, seed: int) -> ResourceSet:
    """The synth cluster with random extra rules in its policies and its staged/disabled flags off
    for some (the maps hold the enforced walk)."""
    rng = random.Random(seed)
    pols = []
    for p in res.policies:
        extra = {d: tuple(_rule(rng) for _ in range(rng.randint(0, 3))) for d in ("ingress", "egress")}
        rules = {d: tuple(rng.sample([*p.rules(d), *extra[d]], len(p.rules(d)) + len(extra[d])))  # type: ignore[arg-type]
                 for d in ("ingress", "egress")}
        pols.append(replace(p, ingress=rules["ingress"], egress=rules["egress"]))
    return replace(res, policies=tuple(pols))


def roomy_compile(seed: int, pods: int, policies: int) -> tuple[ResourceSet, str, CompiledNode]:
    """A one-node synth cluster (topped up) and its compile with the default budgets."""
    spec = SynthSpec(nodes=1, namespaces=2, pods=pods, externals=2, policies=policies, rules_per_policy=3)
    res = topped_up(synth_resources(seed, spec), seed)
    node = next(iter(ClusterState(res).nodes))
    return res, node, compile_node(ClusterState(res), node, CompileOptions(decision_budget=DEFAULT_BUDGET))


def _in(part: str, value: int, parse: object) -> bool:
    first, _, last = part.partition("-")
    lo = int(parse(first))  # type: ignore[operator]
    return lo <= value <= (int(parse(last)) if last else lo)  # type: ignore[operator]


def lookup(table: Table, name: str, key: tuple[int, ...], version: int) -> str | None:
    """The kernel's lookup of `key` in the map `name`: the element's target (or member) or None.
    Addresses (of `version`) are the keys' first field when the map's type starts with one."""
    parse = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    found = []
    for element in table.sets[name].elements:
        k, _, target = element.replace(" : jump ", " : goto ").partition(" : goto ")
        parts = k.split(" . ")
        assert len(parts) == len(key), (element, key)
        addr = table.sets[name].type.startswith("ipv")
        if all(_in(p, v, parse if i == 0 and addr else int) for i, (p, v) in enumerate(zip(parts, key, strict=True))):
            found.append(target or "member")
    assert len(found) <= 1, f"overlapping elements for {key} in {name}: {found}"
    return found[0] if found else None


def class_mark(table: Table, chain: str) -> int:
    """The peer class a class chain (`dr4-<tag>-<class>`) writes into the mark's low 16 bits, read
    from its one rule as the kernel would run it (the field cleared, then the class or'ed in)."""
    (rule,) = table.chains[chain].rules
    m = re.fullmatch(r"meta mark set mark & (0x[0-9a-f]+) \| (0x[0-9a-f]+)", rule)
    assert m is not None, rule
    mark = 0xABCD0000 | 0x1234  # whatever the packet carried before
    return ((mark & int(m[1], 16)) | int(m[2], 16)) & 0xFFFF


def chain_outcome(table: Table, rules: RuleTable, chain: str) -> tuple[tuple[object, ...], ...]:
    """What an outcome chain logs and attributes: (action letter, kind, namespace, name, rule) per log."""
    out = []
    for line in table.chains[chain].rules:
        if 'log prefix "' not in line:
            continue
        prefix = line.split('log prefix "')[1].split('"')[0]
        ref = rules.lookup(prefix)
        assert ref is not None
        out.append((prefix[3], ref.kind, ref.namespace, ref.name, ref.rule))
    return tuple(out)


def expected(res: StageResult) -> tuple[tuple[object, ...], ...]:
    def item(letter: str, h: Hit) -> tuple[object, ...]:
        kind = "EndOfTier" if h.rule < 0 else h.kind
        return (letter, kind, h.namespace, h.name, h.rule)

    out = [item("L", h) for h in res.logged]
    if res.hit is None:
        out.append(("D", "NoProfileMatch", None, "", -1))
    else:
        out.append(item("A" if res.outcome == "allow" else "D", res.hit))
    return tuple(out)


def flows(rng: random.Random, me: IPAddress, peers: list[IPAddress], ingress: bool, count: int) -> list[Flow]:
    out = []
    for _ in range(count):
        peer = rng.choice(peers)
        src, dst = (peer, me) if ingress else (me, peer)
        proto = rng.choice((*PORT_PROTOCOLS, 6, 17, 1, 58, 47))
        if proto in PORT_PROTOCOLS:
            out.append(Flow(src, dst, proto, rng.choice(PORT_EDGES), rng.choice(PORT_EDGES)))
        elif proto == (1 if me.version == 4 else 58):
            out.append(Flow(src, dst, proto, icmp_type=rng.choice((0, 3, 8, 9, 128, 129, 255)),
                            icmp_code=rng.choice((0, 1, 2))))
        else:
            out.append(Flow(src, dst, proto))
    return out


def check(res: ResourceSet, seed: int, per_chain: int = 40) -> int:
    """Compare every decision chain with the evaluator; the number of flows compared."""
    state = ClusterState(res)
    ev = Evaluator(state)
    rng = random.Random(seed)
    addresses = sorted({ip for p in res.pods for ip in p.ips} | {ip for n in res.nodes for ip in n.addresses}
                       | {ip for e in res.external_hosts for ip in e.addresses}, key=lambda ip: (ip.version, ip))
    compared = 0
    for node in state.nodes:
        compiled = compile_node(state, node, CompileOptions(decision_budget=DEFAULT_BUDGET))
        table, rules = compiled.table, compiled.rules
        for ep in state.endpoints:
            if ep.kind != "wep" or ep.node != node:
                continue
            assert ep.namespace is not None
            iface = f'"{cali_name(ep.namespace, ep.name)}" : goto '
            for direction, dispatch in (("ingress", "wl-to"), ("egress", "wl-from")):
                chain = next(e for e in table.sets[dispatch].elements if e.startswith(iface)).removeprefix(iface)
                if not (chain.startswith(("tw-d", "fw-d")) and len(chain) == 16):
                    continue  # the walk (tw-<digest>)
                tag = chain[4:]
                stage = Stage("workload", direction, ep, node)  # type: ignore[arg-type]
                for me in ep.ips:
                    v = me.version
                    peers = [ip for ip in addresses if ip.version == v]
                    peers += [ipaddress.ip_address(int(peers[0]) ^ rng.getrandbits(8 if v == 4 else 16))]
                    for flow in flows(rng, me, peers, direction == "ingress", per_chain):
                        peer = flow.src if direction == "ingress" else flow.dst
                        if f"do{v}-{tag}" in table.sets:
                            assert lookup(table, f"do{v}-{tag}", (int(me),), v) == "member"
                        # the peer's class: its chain writes it into the mark, which keys the maps
                        assert f"da{v}-{tag}" in table.sets or any(
                            r.startswith(f"meta nfproto ipv{v} meta mark set") for r in table.chains[chain].rules)
                        suffix = f"{v}-{tag}"
                        cls = (0,)  # one class: the chain writes 0
                        if f"da{v}-{tag}" in table.sets:
                            row = lookup(table, f"da{v}-{tag}", (int(peer),), v)
                            assert row is not None and row.startswith(f"dr{v}-{tag}-")
                            cls = (class_mark(table, row),)
                        if flow.protocol in PORT_PROTOCOLS:
                            name = f"dp{suffix}"
                            sport = table.sets[name].type.count(".") == 3
                            key = (*cls, flow.protocol, *((flow.src_port,) if sport else ()), flow.dst_port)
                            if lookup(table, f"dh{suffix}", key, v) is not None:  # single ports first
                                name = f"dh{suffix}"
                        elif flow.protocol == (1 if v == 4 else 58) and f"di{suffix}" in table.sets:
                            name = f"di{suffix}"
                            key = (*cls, flow.icmp_type, flow.icmp_code)  # type: ignore[assignment]
                        else:
                            name = f"dn{suffix}"
                            key = (*cls, flow.protocol)
                        target = lookup(table, name, key, v)  # type: ignore[arg-type]
                        assert target is not None, f"{flow.describe()}: no element in {name}"
                        want = expected(ev.decide_stage(stage, flow))
                        assert chain_outcome(table, rules, target) == want, (
                            f"{flow.describe()} {direction} of {ep.name}: map → {target}")
                        compared += 1
    return compared


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), policies=st.integers(1, 12))
def test_decision_maps_agree_with_the_evaluator(seed: int, policies: int) -> None:
    spec = SynthSpec(nodes=2, namespaces=2, pods=5, externals=2, policies=policies, rules_per_policy=3)
    res = topped_up(synth_resources(seed, spec), seed)
    check(res, seed)


def test_the_property_test_reaches_decision_chains() -> None:
    """The random sets do exercise decision chains (not all fall back to the walk)."""
    spec = SynthSpec(nodes=2, namespaces=2, pods=5, externals=2, policies=8, rules_per_policy=3)
    total = sum(check(topped_up(synth_resources(seed, spec), seed), seed, per_chain=10) for seed in range(5))
    assert total > 100


def test_a_decision_space_over_the_budget_keeps_the_walk_and_says_why() -> None:
    """Never an unbounded map: a chain whose cells exceed the budget keeps its rule walk, and its
    layout names the cells and the budget (what `apply --dry-run` prints)."""
    res, node, roomy = roomy_compile(3, pods=4, policies=8)
    cells = [c for c in roomy.layouts if c.layout == "decision"]
    assert cells, "the default budget lays these chains out as maps"
    tight = compile_node(ClusterState(res), node, CompileOptions(decision_budget=10))
    assert tight.layouts and all(c.layout == "walk" for c in tight.layouts)
    for c in tight.layouts:
        # The cells, or a lower bound when one peer class's cells are already over (decision.py)
        said = re.fullmatch(r"decision space (?:of at least )?(\d+) cells > budget 10", c.reason)
        assert said is not None and int(said[1]) > 10, c.reason
        # The walk: its tier chains (shared by the node's endpoint chains) jump to policy chains.
        tiers = [r.split()[-1] for r in tight.table.chains[c.chain].rules if r.startswith("jump ")]
        assert any(" jump p" in r for t in tiers if "-tier-" in t for r in tight.table.chains[t].rules), \
            "the walk: jumps to policy chains"
    assert not any(name.startswith(("dp", "dh", "dn", "da", "di")) and name[3:4] == "-" for name in tight.table.sets)


def test_the_nodes_decision_maps_are_bounded_together() -> None:
    """Pods that share no decision each add maps: the node's element budget bounds them together.
    Chains decided once it is spent keep the walk and say so; the maps made fit the budget."""
    res, node, roomy = roomy_compile(5, pods=6, policies=10)
    decided = [c for c in roomy.layouts if c.layout == "decision"]
    assert len(decided) >= 2, "the seed gives several decision chains"
    first = decided[0].elements
    cap = first + min(c.elements for c in decided[1:]) - 1  # room for the first chain, not for two
    capped = compile_node(ClusterState(res), node,
                          CompileOptions(decision_budget=DEFAULT_BUDGET, decision_node_budget=cap))
    made = [c for c in capped.layouts if c.layout == "decision"]
    walked = [c for c in capped.layouts if c.layout == "walk" and "node" in c.reason]
    assert made and walked, capped.layouts
    assert sum(c.elements for c in made) <= cap
    for c in walked:
        assert "node's decision maps are full" in c.reason or "what is left of the node's" in c.reason, c.reason


@given(st.lists(st.lists(st.tuples(st.sampled_from((4, 6)), st.integers(0, 40), st.integers(0, 8)), max_size=4),
                max_size=6),
       st.lists(st.tuples(st.sampled_from((4, 6)), st.integers(0, 50)), max_size=8))
def test_the_membership_index_answers_as_the_scan(raw: list[list[tuple[int, int, int]]],
                                                  addrs: list[tuple[int, int]]) -> None:
    """The compiler's per-rule-list index (one bisection per address) gives each address the
    same tests as scanning every test's ranges."""
    tests = [[(v, first, first + width) for v, first, width in ranges] for ranges in raw]
    ips = tuple(ipaddress.IPv4Address(x) if v == 4 else ipaddress.IPv6Address(x) for v, x in addrs)
    assert MembershipIndex(tests).of(ips) == memberships(tests, ips)


@given(st.lists(st.lists(st.tuples(st.sampled_from((4, 6)), st.integers(0, 60), st.integers(0, 12)), max_size=5),
                max_size=8),
       st.booleans())
def test_the_class_bound_never_exceeds_the_classes(raw: list[list[tuple[int, int, int]]], to_top: bool) -> None:
    """decision._space refuses a chain on `classes_at_least` before building its classes: the
    bound must never exceed the classes address_intervals builds (or a chain that fits would be
    refused). Tests overlap, nest, touch, repeat, start at 0 and (to_top) reach the space's end;
    with 64-bit hashes the bound is the class count itself on these."""
    tests = [[(v, first, first + width) for v, first, width in ranges] for ranges in raw]
    if to_top and tests:
        tests[0].append((4, 50, SPACE[4]))
    for version in (4, 6):
        classes = len(set(address_intervals(tests, version)[1]))
        bound = classes_at_least([merged_ranges(t, version) for t in tests], version)
        assert 1 <= bound <= classes
        assert bound == classes


def test_the_class_bound_refuses_without_building_and_changes_no_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the node's budget nearly spent, chains whose cells are over what is left even at the
    class bound are refused before their classes are built (fewer `_family` builds), and every
    chain gets the layout and elements it gets when the classes are always built."""
    built: list[int] = []
    family = decision._family

    def counted(*args: object, **kwargs: object) -> object:
        built.append(1)
        return family(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decision, "_family", counted)
    res, node, roomy = roomy_compile(5, pods=6, policies=10)
    decided = sorted(c.elements for c in roomy.layouts if c.layout == "decision")
    assert len(decided) >= 2
    options = CompileOptions(decision_budget=DEFAULT_BUDGET, decision_node_budget=decided[-1] + 1)

    def layouts() -> tuple[list[tuple[str, str, int]], int]:
        built.clear()
        compiled = compile_node(ClusterState(res), node, options)
        return [(c.chain, c.layout, c.elements) for c in compiled.layouts], len(built)

    bounded, with_bound = layouts()
    monkeypatch.setattr(decision, "classes_at_least", lambda merged, version: 1)
    unbounded, without = layouts()
    assert bounded == unbounded
    assert any(layout == "walk" for _, layout, _ in bounded)
    assert with_bound < without, (with_bound, without)


def test_the_nodes_budget_goes_to_the_costliest_walks_first() -> None:
    """When the node's element budget is short, the chains whose walk tests the most rules get
    the maps (not whichever pod compiles first), the choice is the same compile after compile, and
    each chain left with the walk says why and what its walk tests."""
    res, node, roomy = roomy_compile(7, pods=8, policies=14)
    decided = [c for c in roomy.layouts if c.layout == "decision"]
    assert len(decided) >= 3, "the seed gives several decision chains"
    # Room for the biggest chain's cells (at most three times its merged elements here), not for all.
    cap = 3 * max(c.elements for c in decided)
    options = CompileOptions(decision_budget=DEFAULT_BUDGET, decision_node_budget=cap)
    capped = compile_node(ClusterState(res), node, options)
    assert compile_node(ClusterState(res), node, options).layouts == capped.layouts

    ev = Evaluator(ClusterState(res).for_dataplane())
    cost: dict[str, int] = {}  # each workload chain laid out → the rules its walk tests
    for direction, map_name in (("egress", "wl-from"), ("ingress", "wl-to")):
        goes = dict(e.split(" : goto ") for e in capped.table.sets[map_name].elements)
        for ep in ev.state.endpoints:
            if ep.kind != "wep" or ep.node != node:
                continue
            stage = Stage("workload", direction, ep, node)
            rules = sum(len(p.rules(direction)) for t in ev.stage_tiers(stage) for p in t.enforced)
            rules += sum(len(ev.state.profiles[n].rules(direction)) for n in ep.profiles if n in ev.state.profiles)
            cost[goes[f'"{cali_name(ep.namespace or "", ep.name)}"']] = rules
    made = [c for c in capped.layouts if c.layout == "decision"]
    full = [c for c in capped.layouts if c.layout == "walk" and "node's" in c.reason]
    assert made and full, capped.layouts
    assert sum(c.elements for c in made) <= cap
    for c in full:
        assert f"(this one: {cost[c.chain]})" in c.reason, c.reason
    # Decided in order of cost: the costliest walk is decided first, while the whole budget is left.
    assert max(cost.values()) == max(cost[c.chain] for c in made)


# ---- walking again (regions.rewalk) against walking from scratch ----------------------------


def _random_walk(rng: random.Random, sizes: tuple[int, ...], policies: int
                 ) -> tuple[list[tuple[int, int, str]], dict[int, list[RegionRule]], list[tuple[RegionRule, ...]]]:
    """Random policies over a small space: (tier, position, default) per policy, its rules (any
    action, random boxes), and one profile."""
    def box() -> Box:
        return tuple(rng.randrange(1, 1 << n) for n in sizes)

    def rules(tier: int, pos: int, name: str) -> list[RegionRule]:
        out = []
        for i in range(rng.randint(0, 3)):
            action = rng.choice(("Allow", "Deny", "Pass", "Log"))
            hit = Hit("GlobalNetworkPolicy", None, name, f"t{tier}", "ingress", i, action)
            out.append(RegionRule(hit, tuple(box() for _ in range(rng.randint(1, 2))), (tier, pos, i)))
        return out

    layout = [(rng.randrange(2), i, "") for i in range(policies)]
    by_policy = {i: rules(t, i, f"p{i}") for t, i, _ in layout}
    prof = tuple(RegionRule(Hit("Profile", None, "prof", "__PROFILE__", "ingress", i, rng.choice(("Allow", "Pass"))),
                            (box(),), profile_pos(0, i)) for i in range(2))
    return layout, by_policy, [prof]


def _tiers_of(layout: list[tuple[int, int, str]], by_policy: dict[int, list[RegionRule]], enabled: set[int],
              defaults: dict[int, str]) -> list[TierRules]:
    out = []
    for t in range(3):
        pols = [i for tt, i, _ in layout if tt == t and i in enabled]
        if not pols:
            continue
        end = None if defaults[t] == "Pass" else Hit("GlobalNetworkPolicy", None, f"p{pols[-1]}", f"t{t}",
                                                      "ingress", -1, "Deny")
        out.append(TierRules(tuple(r for i in pols for r in by_policy[i]), end, t))
    return out


def _cells(decided: list[tuple[Box, Outcome, object, object]]) -> dict[tuple[int, ...], Outcome]:
    import itertools

    return {cell: o for b, o, _, _ in decided for cell in itertools.product(*(list(bits(m)) for m in b))}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_walking_again_equals_walking_from_scratch(seed: int) -> None:
    """Toggles and rule rewrites of random policies in random tiers (Pass and Deny defaults, Pass
    and Log rules, a profile with Pass): `rewalk` from the last walk, given the first changed
    position, the changed policies' old and new regions and the end-of-tier outcomes to redo,
    gives every cell the outcome a walk from scratch gives."""
    rng = random.Random(seed)
    sizes = (3, 4, 2)
    layout, by_policy, profiles = _random_walk(rng, sizes, rng.randint(1, 10))
    defaults = {t: rng.choice(("Deny", "Pass")) for t in range(3)}
    enabled = {i for _, i, _ in layout if rng.random() < 0.8}
    tiers = _tiers_of(layout, by_policy, enabled, defaults)
    last = walk_traced(sizes, tiers, profiles)
    for _ in range(6):
        changed = set(rng.sample(sorted(by_policy), rng.randint(1, min(2, len(by_policy)))))
        old_rules = {i: by_policy[i] if i in enabled else [] for i in changed}
        for i in changed:
            if rng.random() < 0.5:
                enabled ^= {i}
            else:
                tier = next(t for t, j, _ in layout if j == i)
                by_policy[i] = _random_walk(rng, sizes, 1)[1][0]
                by_policy[i] = [replace(r, pos=(tier, i, r.pos[2]), hit=replace(r.hit, name=f"p{i}", tier=f"t{tier}"))
                                for r in by_policy[i]]
        new_tiers = _tiers_of(layout, by_policy, enabled, defaults)
        old_ends = {t.index: t.end for t in tiers}
        new_ends = {t.index: t.end for t in new_tiers}
        appeared = old_ends.keys() != new_ends.keys()
        stale = {e for t, e in old_ends.items() if e is not None and new_ends.get(t) != e}
        start = min((next(t for t, j, _ in layout if j == i), i, 0) for i in changed)
        touched = tuple(b for i in changed for r in (*old_rules[i], *(by_policy[i] if i in enabled else []))
                        for b in r.boxes)
        kept, fresh = rewalk(last, start, touched, lambda o, a=appeared, s=stale: a or o.hit in s,  # type: ignore[misc]
                             new_tiers, profiles)
        whole = walk_traced(sizes, new_tiers, profiles)
        assert _cells(kept + fresh) == _cells(whole)
        last, tiers = kept + fresh, new_tiers
