"""Per-endpoint decision maps: a workload endpoint chain as one lookup instead of a rule walk.

The walk layout (compiler.py) sends a workload's first packet through every selecting policy's
chain, rule by rule. Here the compiler computes the RESULT of that walk ahead of time and the
kernel looks it up:

    fw-d<hash>:   meta nfproto ipv4 ip daddr vmap @da4-<hash>      the peer's class: an interval map
                                                                    to a chain per class (jump)
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto [. th sport] . th dport vmap @dh4-<hash>
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto [. th sport] . th dport vmap @dp4-<hash>
                  meta nfproto ipv4 meta l4proto icmp meta mark & 0xffff . icmp type . icmp code vmap @di4-<hash>
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto vmap @dn4-<hash>
                  (the same for IPv6)
    dr4-<hash>-<class>:
                  meta mark set mark & 0xffff0000 | <class>        the class into the mark's low bits
    dx-<hash>:    the outcome: Log rules that fired on the way, then the attributed verdict

The maps are keyed on the class, not on the address, so the address ranges do not multiply the
port elements (peers of different classes interleave in address order); a chain with one class
writes 0 itself and has no address map. Every class of a chain shares its four maps: a fixed
number of sets per decision chain, because the kernel's cost of adding a set, and of every rule
and element naming one, grows with the sets already in the table (README "Decision maps").

The space of packets is split into elementary intervals: the peer address at every address test
the rules use (nets, notNets, the address sets of selectors, the members of named ports), each
port protocol's source and destination ports at every boundary its rules name (a TCP rule does
not split UDP), ICMP type and code, the other protocols. Addresses inside the same tests form a
class. The walk itself runs over regions of that space (regions.py): each rule, in the
evaluator's order (`Evaluator.stage_tiers`, its family-rendered rules), splits the undecided
region — cost rules × regions, not rules × cells. The region a rule matches is derived here from
the same resolved rule (nets, sets, named ports, ports, ICMP); tests/test_decision_regions.py
checks it cell by cell against the evaluator's `decide_stage`.

Each distinct outcome is one terminal chain, shared by the node: the verdict with the same rule
ids and NFLOG prefixes the walk logs (end of tier attributed to the last enabled selecting
policy, profiles, no-profile drop), so attribution does not depend on the layout.

What the maps cannot key on keeps the walk: HTTP and service matches, endpoints whose addresses
differ in the rules' tests, and any chain whose decision space (cells) exceeds the budget —
never a wrong verdict, never an unbounded map. Tests of the endpoint's own address and its
named ports are answered at compile time (the chain is shared only by endpoints that answer
alike), with a guard sending a forged own address to the walk.

Only enforced, enabled policies decide (the evaluator's walk); disabled ones change outcomes, so
a toggle rewrites map elements (and adds the terminal chains of outcomes new to the node).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from enforcer.evaluate.evaluator import Evaluator, Hit
from enforcer.evaluate.path import Stage
from enforcer.model import IPAddress, Policy, Rule
from enforcer.nft.decision_space import (
    ICMP_PROTOCOL,
    PORT_PROTOCOLS,
    SPACE,
    AddressTests,
    Family,
    Intervals,
    MembershipIndex,
    RuleList,
    Tests,
    address_intervals,
    address_tests,
    icmp_boxes,
    icmp_intervals,
    local_named_ports,
    memberships,
    other_boxes,
    port_boxes,
    port_intervals,
    protocol_intervals,
    tests_own_named_port,
    unsupported,
)
from enforcer.nft.regions import Box, Outcome, RegionRule, TierRules, bits, walk
from enforcer.resolve.rules import rule_for_family

__all__ = ["WALK_CAUSES", "ChainLayout", "DecisionChain", "MembershipIndex", "Outcome", "DEFAULT_BUDGET", "NODE_BUDGET",
           "PORT_PROTOCOLS", "RuleList", "Tests", "address_tests", "chain_tag", "decide", "local_named_ports",
           "memberships", "outcome_name", "tests_own_named_port"]

# Default cells per endpoint chain (see README "Decision maps" for the measurements behind it).
# The region walk makes compile cost grow with rules × regions; cells bound the rendering and
# the map (merged elements are fewer than cells).
DEFAULT_BUDGET = 65536
# Map elements per node over all its decision chains (CompileOptions.decision_node_budget): ten
# times what 1,000 policies selecting one shared chain need (11,336); a node whose pods each need
# a decision of their own gives maps to the first chains and the walk to the rest.
NODE_BUDGET = 131072
_HASH = 12
# The mark's low bits carrying a packet's peer class from the address lookup to the class-keyed
# maps: the compiler's gate field (compiler.GATE), scratch outside a tier walk (cleared at each
# tier's start), and a decision chain walks no tier.
CLASS_FIELD = 0xFFFF


@dataclass(frozen=True)
class ChainLayout:
    """How one endpoint chain was laid out, for `apply --dry-run` and metrics."""

    chain: str
    layout: str  # "decision" or "walk"
    elements: int  # map elements (decision) or rules (walk)
    reason: str = ""  # why the walk was kept

    @property
    def cause(self) -> str:
        """Why the walk was kept, in a word (a metric's label): `off` (budget 0), `node_budget`
        (the node's maps went to costlier walks first), `budget` (the chain's decision space is
        over the per-chain budget), `unsupported` (what maps cannot key on: HTTP, services,
        own addresses that differ, too many peer classes); "" for decision maps."""
        if self.layout != "walk":
            return ""
        if "(budget 0)" in self.reason:
            return "off"
        if "the node's decision maps are full" in self.reason or "what is left of the node's" in self.reason:
            return "node_budget"
        if "cells > budget" in self.reason:
            return "budget"
        return "unsupported"


WALK_CAUSES = ("off", "node_budget", "budget", "unsupported")


@dataclass(frozen=True)
class DecisionChain:
    lines: tuple[str, ...]
    maps: dict[str, tuple[str, frozenset[str], bool, bool]]  # name → (type, elements, is a map, interval)
    elements: int
    chains: dict[str, tuple[str, ...]]  # the classes' chains (dr…), by name


# ---- the decision --------------------------------------------------------------------------


def _text(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _range(render: Callable[[int], str], first: int, last: int) -> str:
    return render(first) if first == last else f"{render(first)}-{render(last)}"


def _runs(values: list[object] | tuple[object, ...]) -> Iterator[tuple[int, int]]:
    """(first index, last index) of each run of equal adjacent values."""
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            yield start, i - 1
            start = i


def _contiguous(intervals: Intervals) -> Iterator[tuple[int, int]]:
    lo, hi = intervals[0]
    for a, b in intervals[1:]:
        if a == hi + 1:
            hi = b
        else:
            yield lo, hi
            lo, hi = a, b
    yield lo, hi


def _grid(classes: int, sizes: tuple[int, ...], decided: list[tuple[Box, Outcome]],
          ids: dict[Outcome, int]) -> list[tuple[int, ...]]:
    """Per class: the outcome id of every cell of the other axes (row-major)."""
    width = 1
    for n in sizes:
        width *= n
    rows = [[-1] * width for _ in range(classes)]
    for box, out in decided:
        oid = ids[out]
        cells = [0]
        for axis, n in zip(box[1:], sizes, strict=True):
            cells = [base * n + i for base in cells for i in bits(axis)]
        for c in bits(box[0]):
            row = rows[c]
            for cell in cells:
                row[cell] = oid
    return [tuple(r) for r in rows]


def _address_runs(starts: list[int], interval_class: list[int], version: int) -> Iterator[tuple[str, int]]:
    """Adjacent address intervals of the same class, as nft ranges, with their class."""
    for a0, a1 in _runs(interval_class):  # type: ignore[arg-type]
        first = starts[a0]
        last = starts[a1 + 1] - 1 if a1 + 1 < len(starts) else SPACE[version]
        yield _range(lambda v: _text(version, v), first, last), interval_class[a0]


def _plane(row: tuple[int, ...], outer: Intervals, inner: Intervals) -> Iterator[tuple[str, str, int]]:
    """A 2-axis row as (outer range, inner range, outcome id) elements, equal neighbours merged."""
    n = len(inner)
    lines = [tuple((inner[i0][0], inner[i1][1], row[o * n + i0]) for i0, i1 in _runs(row[o * n:(o + 1) * n]))
             for o in range(len(outer))]
    for o0, o1 in _runs(lines):  # type: ignore[arg-type]
        for lo, hi, oid in lines[o0]:
            yield _range(str, outer[o0][0], outer[o1][1]), _range(str, lo, hi), oid


def _excluded(version: int, icmp: tuple[Intervals, Intervals] | None) -> tuple[int, ...]:
    """Protocols with a map of their own (ports, ICMP when keyed): not in the other protocols' map."""
    return PORT_PROTOCOLS + ((ICMP_PROTOCOL[version],) if icmp else ())


def _cells_per_class(rules: RuleList, ports: dict[int, tuple[Intervals, Intervals]],
                     icmp: tuple[Intervals, Intervals] | None, version: int) -> int:
    """One peer class's cells in one family (`Family.cells` is this times the classes)."""
    n = sum(len(s) * len(d) for s, d in ports.values()) + len(protocol_intervals(rules, _excluded(version, icmp)))
    return n + (len(icmp[0]) * len(icmp[1]) if icmp is not None else 0)


def _family(ev: Evaluator, rules: RuleList, version: int, me: IPAddress, tests: AddressTests,
            ports: dict[int, tuple[Intervals, Intervals]], icmp: tuple[Intervals, Intervals] | None
            ) -> tuple[Family, list[int], list[int]]:
    starts, sigs = address_intervals(tests.ranges, version)
    classes = sorted(set(sigs), key=sorted)
    class_of = {sig: i for i, sig in enumerate(classes)}
    others = protocol_intervals(rules, _excluded(version, icmp))
    fam = Family(ev.state, version, me, tests, classes, ports, icmp, others)
    return fam, starts, [class_of[s] for s in sigs]


@dataclass(frozen=True)
class _Skeleton:
    """The stage's walk in one family: the evaluator's tiers, policies and family-rendered rules
    in order, each rule with its hit; the regions are filled in per space."""

    tiers: tuple[tuple[tuple[tuple[Hit, Rule, str | None], ...], Hit | None], ...]
    profiles: tuple[tuple[tuple[Hit, Rule, str | None], ...], ...]

    def regions(self, boxes: Callable[[Rule, str | None], tuple[Box, ...]]
                ) -> tuple[list[TierRules], list[tuple[RegionRule, ...]]]:
        """The walk with each rule's region in one space (rules matching nothing there dropped)."""
        def keep(rules: tuple[tuple[Hit, Rule, str | None], ...]) -> tuple[RegionRule, ...]:
            out = []
            for hit, rule, ns in rules:
                b = boxes(rule, ns)
                if b:
                    out.append(RegionRule(hit, b))
            return tuple(out)

        return [TierRules(keep(rules), end) for rules, end in self.tiers], [keep(p) for p in self.profiles]


def _skeleton(ev: Evaluator, stage: Stage, version: int) -> _Skeleton:
    assert stage.endpoint is not None
    direction = stage.direction
    tiers = []
    for st in ev.stage_tiers(stage):
        if not st.enforced:
            continue
        rules = []
        for pol in st.enforced:
            for index, rule in enumerate(pol.rules(direction)):
                fam_rule = rule_for_family(rule, version)  # as the evaluator's compile_rule renders it
                if fam_rule is not None:
                    hit = Hit(pol.kind, pol.namespace, pol.name, st.tier.name, direction, index, rule.action)
                    rules.append((hit, fam_rule, pol.namespace))
        last = st.enforced[-1]
        end = None if st.tier.tier.default_action == "Pass" else Hit(
            last.kind, last.namespace, last.name, st.tier.name, direction, -1, "Deny")
        tiers.append((tuple(rules), end))
    profiles = []
    for name in stage.endpoint.profiles:
        prof = ev.state.profiles.get(name)
        if prof is None:
            continue
        prules = []
        for index, rule in enumerate(prof.rules(direction)):
            fam_rule = rule_for_family(rule, version)
            if fam_rule is not None:
                prules.append((ev.profile_hit(name, direction, index, rule.action), fam_rule, None))
        profiles.append(tuple(prules))
    return _Skeleton(tuple(tiers), tuple(profiles))


def decide(ev: Evaluator, stage: Stage, rules: RuleList, local: dict[int, IPAddress],
           budget: int, tag: str, target: Callable[[Outcome], str], walk_chain: str) -> DecisionChain | str:
    """The decision maps of `stage`'s chain, or why it keeps the walk.

    `ev` decides with enabled policies only; `rules` are every rule that may decide (selecting
    policies and profiles); `local` is an address of the endpoint per IP version (any address of
    that version when it has none: the rules do not test it); `tag` names the maps; `target`
    gives the terminal chain of an outcome; `walk_chain` is the chain of the rule walk, where a
    packet whose own-side address the decision did not assume goes."""
    reason = unsupported(rules)
    if reason is not None:
        return reason
    assert stage.endpoint is not None
    direction = stage.direction
    icmp = icmp_intervals(rules)
    ports = port_intervals(ev.state, rules)
    # Every peer class has the same cells: with one class (the fewest), the space is already
    # over the budget, and the address tests (the costly part) need not be built.
    least = sum(_cells_per_class(rules, ports, icmp, v) for v in (4, 6))
    if least > budget:
        return f"decision space of at least {least} cells > budget {budget}"
    own = stage.endpoint.ips
    own_tests = address_tests(ev.state, rules, direction, peer=False).ranges
    for version in (4, 6):
        same = tuple(ip for ip in own if ip.version == version)
        if len(same) > 1 and len(set(memberships(own_tests, same))) > 1:
            return f"the endpoint's IPv{version} addresses differ in the rules' tests"
    tests = address_tests(ev.state, rules, direction)
    families = {v: _family(ev, rules, v, local[v], tests, ports, icmp) for v in (4, 6)}
    total = sum(f.cells() for f, _, _ in families.values())
    if total > budget:
        return f"decision space {total} cells > budget {budget}"

    ingress = direction == "ingress"
    lines: list[str] = []
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, tuple[str, frozenset[str], bool, bool]] = {}
    for version, (fam, starts, interval_class) in families.items():
        l3, nfproto, addr_type = ("ip", "ipv4", "ipv4_addr") if version == 4 else ("ip6", "ipv6", "ipv6_addr")
        if own_tests:
            name_o = f"do{version}-{tag}"
            maps[name_o] = (addr_type, frozenset(_guard(own_tests, version, fam.me)), False, True)
            lines.append(f"meta nfproto {nfproto} {l3} {'daddr' if ingress else 'saddr'} != @{name_o} "
                         f"goto {walk_chain}")
        render = _Render(ev, stage, fam, target)
        peer_field = f"{l3} {'saddr' if ingress else 'daddr'}"
        classes = len(fam.classes)
        if classes > CLASS_FIELD + 1:
            return f"{classes} IPv{version} peer classes > {CLASS_FIELD + 1} (the mark's class field)"
        clear = f"meta mark set mark & {0xFFFFFFFF & ~CLASS_FIELD:#x}"
        if classes == 1:
            lines.append(f"meta nfproto {nfproto} {clear} | 0x0")
        else:
            # The peer's class (one interval lookup over every address) is written into the mark's
            # low bits by a one-rule chain per class; the chain's maps are keyed on it, so a chain
            # has a fixed number of maps whatever its classes (see _maps: sets are what the kernel
            # pays for per table, quadratically).
            runs = list(_address_runs(starts, interval_class, version))
            dispatch = {f"{addr} : jump dr{version}-{tag}-{c}" for addr, c in runs}
            maps[f"da{version}-{tag}"] = (f"{addr_type} : verdict", frozenset(dispatch), True, True)
            lines.append(f"meta nfproto {nfproto} {peer_field} vmap @da{version}-{tag}")
            for c in sorted(set(interval_class)):
                chains[f"dr{version}-{tag}-{c}"] = (f"{clear} | {c:#x}",)
        rows = render.rows(fam, direction)
        lines += [f"meta nfproto {nfproto} {line}"
                  for line in _maps(fam, rows, f"{version}-{tag}", render.goto, maps)]
    return DecisionChain(tuple(lines), maps, sum(len(m[1]) for m in maps.values()), chains)


def _maps(fam: Family, rows: dict[str, list[tuple[int, ...]]], suffix: str, goto: Callable[[int], str],
          maps: dict[str, tuple[str, frozenset[str], bool, bool]]) -> list[str]:
    """One family's maps (added to `maps`) and the rules that look them up: every class's row in
    the same four maps, keyed first on the class (the mark's low bits; 0 when there is one, so a
    map keeps its type when an edit changes the number of classes).

    One map per class and kind made ~21k sets for 17 decision chains (1,000 policies over 1,000
    pods), and the kernel finds a set by name by walking the table's list of sets: adding N sets
    (and the rules and elements naming them) costs O(N²) — 8,000 empty maps took 1.9 s, 2,000
    0.21 s — which was most of a 590 s full apply. Anonymous sets count as sets too, so the
    protocol filter before the port maps is left out: their keys start with the protocol, and
    other protocols miss them."""
    classes = len(fam.classes)
    mark = f"meta mark & {CLASS_FIELD:#x} . "
    sport = any(len(s) > 1 for s, _ in fam.ports.values())
    exact: set[str] = set()  # single ports: a hash lookup, O(1) whatever their number
    ranged: set[str] = set()  # the rest: an interval lookup, whose cost grows with its elements
    for c in range(classes):
        cls = f"{c} . "
        for proto in PORT_PROTOCOLS:
            s_axis, d_axis = fam.ports[proto]
            for sp, dport, oid in _plane(rows[f"port{proto}"][c], s_axis, d_axis):
                key = f"{proto} . {sp} . {dport}" if sport else f"{proto} . {dport}"
                (ranged if "-" in key else exact).add(f"{cls}{key} : {goto(oid)}")
    kind = f"mark . inet_proto . inet_service{' . inet_service' if sport else ''} : verdict"
    maps[f"dh{suffix}"] = (kind, frozenset(exact), True, False)
    maps[f"dp{suffix}"] = (kind, frozenset(ranged), True, True)
    ports = f"{mark}meta l4proto{' . th sport' if sport else ''} . th dport"
    # The two maps partition the ports: a packet the hash map misses is in a range.
    out = [f"{ports} vmap @dh{suffix}", f"{ports} vmap @dp{suffix}"]
    if fam.icmp is not None:
        types, codes = fam.icmp
        di = {f"{cls}{t} . {code} : {goto(oid)}"
              for c in range(classes) for cls in [f"{c} . "]
              for t, code, oid in _plane(rows["icmp"][c], types, codes)}
        kind = "icmp" if fam.version == 4 else "icmpv6"
        maps[f"di{suffix}"] = (f"mark . {kind}_type . {kind}_code : verdict", frozenset(di), True, True)
        out.append(f"meta l4proto {ICMP_PROTOCOL[fam.version]} {mark}{kind} type . {kind} code vmap @di{suffix}")
    dn: set[str] = set()
    for c in range(classes):
        cls = f"{c} . "
        row = rows["other"][c]
        for q0, q1 in _runs(row):
            # adjacent in the list but not in number (a protocol with its own map between): split
            for lo, hi in _contiguous(fam.others[q0:q1 + 1]):
                dn.add(f"{cls}{_range(str, lo, hi)} : {goto(row[q0])}")
    maps[f"dn{suffix}"] = ("mark . inet_proto : verdict", frozenset(dn), True, True)
    out.append(f"{mark}meta l4proto vmap @dn{suffix}")
    return out


class _Render:
    """One family's walks, space by space, and the terminal chain of each outcome."""

    def __init__(self, ev: Evaluator, stage: Stage, fam: Family, target: Callable[[Outcome], str]) -> None:
        self.target = target
        self.ids: dict[Outcome, int] = {}
        self.outcomes: list[Outcome] = []
        self.chains: dict[int, str] = {}
        self.skeleton = _skeleton(ev, stage, fam.version)

    def rows(self, fam: Family, direction: str) -> dict[str, list[tuple[int, ...]]]:
        """Per space: per class, the outcome id of every cell."""
        spaces: dict[str, tuple[Callable[[Rule, str | None], tuple[Box, ...]], tuple[int, ...]]] = {
            f"port{p}": (partial(port_boxes, fam, direction=direction, proto=p),
                         (len(fam.ports[p][0]), len(fam.ports[p][1]))) for p in PORT_PROTOCOLS}
        if fam.icmp is not None:
            spaces["icmp"] = (partial(icmp_boxes, fam, direction=direction), (len(fam.icmp[0]), len(fam.icmp[1])))
        spaces["other"] = (partial(other_boxes, fam, direction=direction), (len(fam.others),))
        out = {}
        for name, (boxes, sizes) in spaces.items():
            tiers, profiles = self.skeleton.regions(boxes)
            decided = walk((len(fam.classes), *sizes), tiers, profiles)
            for _, o in decided:
                if o not in self.ids:
                    self.ids[o] = len(self.outcomes)
                    self.outcomes.append(o)
            out[name] = _grid(len(fam.classes), sizes, decided, self.ids)
        return out

    def goto(self, oid: int) -> str:
        chain = self.chains.get(oid)
        if chain is None:
            chain = self.chains[oid] = self.target(self.outcomes[oid])
        return f"goto {chain}"


def _guard(own_tests: Tests, version: int, me: IPAddress) -> set[str]:
    """The own addresses that answer the own-side tests as `me` does: any other (a forged
    source) takes the walk."""
    starts, sigs = address_intervals(own_tests, version)
    mine = memberships(own_tests, (me,))[0]
    inside = [sig == mine for sig in sigs]
    guard: set[str] = set()
    for r0, r1 in _runs(inside):  # type: ignore[arg-type]
        if inside[r0]:
            last = starts[r1 + 1] - 1 if r1 + 1 < len(starts) else SPACE[version]
            guard.add(_range(lambda v: _text(version, v), starts[r0], last))
    return guard


def outcome_name(lines: list[str]) -> str:
    return "dx-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def chain_tag(stage: Stage, policies: tuple[Policy, ...], profiles: tuple[str, ...],
              local: tuple[object, ...]) -> str:
    """Stable across toggles and rule edits: the chain's maps change, not its name. `local`: what
    the rules see of the endpoint itself (its addresses in the rules' tests, its named ports):
    endpoints differing there need their own."""
    key = repr((stage.direction, tuple(p.key for p in policies), profiles, local))
    return hashlib.sha256(key.encode()).hexdigest()[:_HASH]
