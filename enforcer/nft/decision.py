"""Per-endpoint decision maps: a workload endpoint chain as one lookup instead of a rule walk.

The walk layout (compiler.py) sends a workload's first packet through every selecting policy's
chain, rule by rule. Here the compiler computes the RESULT of that walk ahead of time and the
kernel looks it up:

    fw-d<hash>:   meta nfproto ipv4 ip daddr vmap @da4-<hash>      the peer's class (an interval map)
                  (the same for IPv6)
    dr4-<hash>-<class>:
                  meta l4proto { tcp, udp, sctp, udplite } meta l4proto [. th sport] . th dport vmap @dp4-<hash>-<class>
                  meta l4proto icmp icmp type . icmp code vmap @di4-<hash>-<class>
                  meta l4proto vmap @dn4-<hash>-<class>
    dx-<hash>:    the outcome: Log rules that fired on the way, then the attributed verdict

With one peer class the class's lookups sit in the endpoint chain itself (maps named without
the class). Keying the maps on the class rather than on the address keeps the address ranges
from multiplying the port elements (peers of different classes interleave in address order).

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

import bisect
import hashlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from enforcer.evaluate.evaluator import Evaluator, Hit
from enforcer.evaluate.path import Stage
from enforcer.model import EntityRule, IPAddress, NamedPort, Policy, PortRange, Rule
from enforcer.nft.regions import Box, Outcome, RegionRule, TierRules, bits, interval_mask, walk
from enforcer.resolve.ipsets import IPSet, ip_key
from enforcer.resolve.rules import rule_for_family
from enforcer.resolve.selectors import entity_selector
from enforcer.resolve.state import ClusterState
from enforcer.selector import Selector

__all__ = ["ChainLayout", "DecisionChain", "Outcome", "DEFAULT_BUDGET", "decide", "chain_tag", "outcome_name"]

# Default cells per endpoint chain (see README "Decision maps" for the measurements behind it).
# The region walk makes compile cost grow with rules × regions; cells bound the rendering and
# the map (merged elements are fewer than cells).
DEFAULT_BUDGET = 65536
PORT_PROTOCOLS = (6, 17, 132, 136)  # protocols whose rules may match ports (th sport, th dport)
ICMP_PROTOCOL = {4: 1, 6: 58}
_SPACE = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_HASH = 12
_SELECTOR_CACHE = 500_000

Intervals = list[tuple[int, int]]


@dataclass(frozen=True)
class ChainLayout:
    """How one endpoint chain was laid out, for `apply --dry-run` and metrics."""

    chain: str
    layout: str  # "decision" or "walk"
    elements: int  # map elements (decision) or rules (walk)
    reason: str = ""  # why the walk was kept


@dataclass(frozen=True)
class DecisionChain:
    lines: tuple[str, ...]
    maps: dict[str, tuple[str, frozenset[str], bool]]  # name → (type, elements, is a map)
    elements: int
    chains: dict[str, tuple[str, ...]]  # the classes' chains (dr…), by name


# ---- what the rules test -------------------------------------------------------------------


def _sides(rule: Rule, direction: str) -> tuple[EntityRule, EntityRule]:
    """(peer, local) side of a rule in a workload chain of `direction`."""
    return (rule.source, rule.destination) if direction == "ingress" else (rule.destination, rule.source)


RuleList = list[tuple[Rule, str | None]]  # (rule, its policy's namespace)
Tests = list[list[tuple[int, int, int]]]  # per address test: its (version, first, last) ranges


def unsupported(rules: RuleList) -> str | None:
    """Why these rules cannot be keyed on the packet's peer address, protocol and ports, or None."""
    for rule, _ in rules:
        if rule.http is not None:
            return "HTTP match"
        if rule.source.services is not None or rule.destination.services is not None:
            return "service match"
    return None


def _named(entity: EntityRule) -> list[NamedPort]:
    return [p for p in (*entity.ports, *entity.not_ports) if isinstance(p, NamedPort)]


def _selector(state: ClusterState, entity: EntityRule, namespace: str | None) -> Selector | None:
    """`entity_selector`, remembered per entity for the state's life (building the namespaced
    selector costs more than the rest of a rule's region)."""
    cache: dict[tuple[int, str | None], tuple[EntityRule, Selector | None]] = state.caches.setdefault(
        "decision.selectors", {})
    key = (id(entity), namespace)
    found = cache.get(key)
    if found is None or found[0] is not entity:
        if len(cache) >= _SELECTOR_CACHE:
            cache.clear()  # edited-away rules would otherwise stay referenced
        found = cache[key] = (entity, entity_selector(entity, namespace))
    return found[1]


def _named_groups(state: ClusterState, entity: EntityRule, namespace: str | None, protocol: int | None,
                  name: str) -> dict[tuple[int, int], frozenset[IPAddress]]:
    """A named port's members as (protocol, port) → the addresses that declare it so."""
    groups: dict[tuple[int, int], set[IPAddress]] = {}
    for ip, proto, port in state.named_ports(_selector(state, entity, namespace), name, protocol).members:
        groups.setdefault((proto, port), set()).add(ip)
    return {k: frozenset(v) for k, v in groups.items()}


class AddressTests:
    """The address tests used on one side of the rules, each with its ranges, by key."""

    def __init__(self) -> None:
        self.ranges: Tests = []
        self.index: dict[object, int] = {}

    def add(self, key: object, ranges: Iterator[tuple[int, int, int]]) -> None:
        if key not in self.index:
            self.index[key] = len(self.ranges)
            self.ranges.append(list(ranges))


def _net_ranges(nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> Iterator[tuple[int, int, int]]:
    for net in nets:
        yield net.version, int(net.network_address), int(net.broadcast_address)


def _set_ranges(ipset: IPSet) -> Iterator[tuple[int, int, int]]:
    for h in ipset.hosts:  # a generator: only run for a set not seen yet
        yield h.version, int(h), int(h)
    yield from _net_ranges(ipset.nets)


def address_tests(state: ClusterState, rules: RuleList, direction: str, *, peer: bool = True) -> AddressTests:
    """Per address test used on the peer's (or the endpoint's own) side: its ranges. On the peer
    side, the addresses declaring a named port alike (protocol and number) are a test too."""
    tests = AddressTests()
    for rule, namespace in rules:
        side = _sides(rule, direction)[0 if peer else 1]
        for net in (*side.nets, *side.not_nets):
            tests.add(("net", net), _net_ranges((net,)))
        for sel in (_selector(state, side, namespace), side.not_selector):
            if sel is None:
                continue
            ipset = state.ipset(sel)
            tests.add(("set", ipset), _set_ranges(ipset))
        if peer:
            for np in _named(side):
                for ips in _named_groups(state, side, namespace, rule.protocol, np.name).values():
                    tests.add(("named", ips), ((ip.version, int(ip), int(ip)) for ip in ips))
    return tests


def memberships(tests: Tests, ips: tuple[IPAddress, ...]) -> tuple[frozenset[int], ...]:
    """For each address: the tests that contain it."""
    return tuple(frozenset(t for t, ranges in enumerate(tests)
                           if any(v == ip.version and first <= int(ip) <= last for v, first, last in ranges))
                 for ip in ips)


def tests_own_named_port(rule: Rule, direction: str) -> bool:
    return bool(_named(_sides(rule, direction)[1]))


def local_named_ports(state: ClusterState, rules: RuleList, direction: str, ips: tuple[IPAddress, ...]
                      ) -> tuple[tuple[int, int], ...]:
    """The (protocol, port) of the endpoint's own named ports the rules use: endpoints differing
    there cannot share a decision chain."""
    found: set[tuple[int, int]] = set()
    for rule, namespace in rules:
        local = _sides(rule, direction)[1]
        for np in _named(local):
            for (proto, port), members in _named_groups(state, local, namespace, rule.protocol, np.name).items():
                if any(ip in members for ip in ips):
                    found.add((proto, port))
    return tuple(sorted(found))


def address_intervals(tests: Tests, version: int) -> tuple[list[int], list[frozenset[int]]]:
    """The elementary intervals of the `version` address space (their first addresses, in
    order) and, for each, the tests that contain it."""
    top = _SPACE[version]
    bounds = {0}
    for ranges in tests:
        for v, first, last in ranges:
            if v == version:
                bounds.add(first)
                if last < top:
                    bounds.add(last + 1)
    starts = sorted(bounds)
    members: list[set[int]] = [set() for _ in starts]
    for t, ranges in enumerate(tests):
        for v, first, last in ranges:
            if v != version:
                continue
            for i in range(bisect.bisect_left(starts, first), bisect.bisect_left(starts, last + 1)):
                members[i].add(t)
    return starts, [frozenset(m) for m in members]


def _split(space_last: int, bounds: set[int]) -> Intervals:
    starts = sorted(b for b in bounds | {0} if 0 <= b <= space_last)
    return [(s, (starts[i + 1] - 1) if i + 1 < len(starts) else space_last) for i, s in enumerate(starts)]


def _may_match(rule: Rule, proto: int) -> bool:
    return rule.protocol in (None, proto) and rule.not_protocol != proto


def port_intervals(state: ClusterState, rules: RuleList) -> dict[int, tuple[Intervals, Intervals]]:
    """Per port protocol: its source and destination port intervals, split where the ranges and
    named ports (resolved to numbers) of the rules that may match it begin and end (a TCP rule
    does not split UDP's ports)."""
    bounds: dict[tuple[int, bool], set[int]] = {(p, source): set() for p in PORT_PROTOCOLS for source in (True, False)}
    for rule, namespace in rules:
        protos = [p for p in PORT_PROTOCOLS if _may_match(rule, p)]
        for source, entity in ((True, rule.source), (False, rule.destination)):
            for port in (*entity.ports, *entity.not_ports):
                if isinstance(port, PortRange):
                    for p in protos:
                        bounds[p, source].update((port.first, port.last + 1))
                    continue
                for pr, number in _named_groups(state, entity, namespace, rule.protocol, port.name):
                    if pr in protos:
                        bounds[pr, source].update((number, number + 1))
    return {p: (_split(65535, bounds[p, True]), _split(65535, bounds[p, False])) for p in PORT_PROTOCOLS}


def icmp_intervals(rules: RuleList) -> tuple[Intervals, Intervals] | None:
    """ICMP type and code intervals when some rule matches them (then ICMP gets its own map)."""
    types: set[int] = set()
    codes: set[int] = set()
    for rule, _ in rules:
        for m in (rule.icmp, rule.not_icmp):
            if m is not None:
                types.update((m.type, m.type + 1))
                if m.code is not None:
                    codes.update((m.code, m.code + 1))
    return (_split(255, types), _split(255, codes)) if types else None


def protocol_intervals(rules: RuleList, excluded: tuple[int, ...]) -> Intervals:
    """Intervals of the protocols without a map of their own (port protocols, ICMP when keyed)."""
    bounds: set[int] = set()
    for rule, _ in rules:
        for proto in (rule.protocol, rule.not_protocol):
            if proto is not None:
                bounds.update((proto, proto + 1))
    for proto in excluded:
        bounds.update((proto, proto + 1))
    return [(a, b) for a, b in _split(255, bounds) if a not in excluded]


def _index(intervals: Intervals, value: int) -> int:
    return bisect.bisect_right(intervals, (value, 1 << 130)) - 1


def _mask(intervals: Intervals, first: int, last: int) -> int:
    """The intervals inside first..last (the intervals split at both ends)."""
    return interval_mask(_index(intervals, first), _index(intervals, last))


# ---- the region a rule matches ---------------------------------------------------------------


@dataclass
class _Family:
    """One IP version's decision space for one chain."""

    state: ClusterState
    version: int
    me: IPAddress  # the endpoint's own address (the rules' own-side tests are answered for it)
    peer_tests: AddressTests
    classes: list[frozenset[int]]  # per class: the peer tests its addresses are in
    ports: dict[int, tuple[Intervals, Intervals]]  # port protocol → (source, destination) intervals
    icmp: tuple[Intervals, Intervals] | None
    others: Intervals  # the other protocols

    def __post_init__(self) -> None:
        self.all_classes = (1 << len(self.classes)) - 1
        self._peer: dict[tuple[int, str | None], int] = {}
        self._local: dict[tuple[int, str | None], bool] = {}
        self.test_classes = [0] * len(self.peer_tests.ranges)
        for c, sig in enumerate(self.classes):
            for t in sig:
                self.test_classes[t] |= 1 << c

    def cells(self) -> int:
        n = sum(len(s) * len(d) for s, d in self.ports.values()) + len(self.others)
        if self.icmp is not None:
            n += len(self.icmp[0]) * len(self.icmp[1])
        return len(self.classes) * n

    def _test(self, key: object) -> int:
        return self.test_classes[self.peer_tests.index[key]]

    def peer_classes(self, e: EntityRule, namespace: str | None) -> int:
        """The classes the peer-side address checks (nets, notNets, selector, notSelector) accept."""
        key = (id(e), namespace)  # rules outlive the compile of their chain
        found = self._peer.get(key)
        if found is None:
            found = self._peer[key] = self._peer_classes(e, namespace)
        return found

    def _peer_classes(self, e: EntityRule, namespace: str | None) -> int:
        mask = self.all_classes
        if e.nets:
            mask &= _or(self._test(("net", n)) for n in e.nets)
        for n in e.not_nets:
            mask &= ~self._test(("net", n))
        sel = _selector(self.state, e, namespace)
        if sel is not None:
            mask &= self._test(("set", self.state.ipset(sel)))
        if e.not_selector is not None:
            mask &= ~self._test(("set", self.state.ipset(e.not_selector)))
        return mask

    def local_ok(self, e: EntityRule, namespace: str | None) -> bool:
        """Whether the endpoint's own address passes the own-side address checks."""
        key_ = (id(e), namespace)
        found = self._local.get(key_)
        if found is None:
            found = self._local[key_] = self._local_ok(e, namespace)
        return found

    def _local_ok(self, e: EntityRule, namespace: str | None) -> bool:
        me, key = self.me, ip_key(self.me)
        if e.nets and not any(me in n for n in e.nets if n.version == me.version):
            return False
        if any(me in n for n in e.not_nets if n.version == me.version):
            return False
        sel = _selector(self.state, e, namespace)
        if sel is not None and not self.state.ipset(sel).contains_key(key):
            return False
        return e.not_selector is None or not self.state.ipset(e.not_selector).contains_key(key)

    def port_masks(self, e: EntityRule, namespace: str | None, protocol: int | None, proto: int,
                   axis: Intervals, peer: bool) -> list[tuple[int, int]] | None:
        """The entity's port match on `axis` as (classes, ports) pairs whose union it is (the
        ports of a peer's named port depend on its class); None: no port condition."""
        if not e.ports and not e.not_ports:
            return None
        full = (1 << len(axis)) - 1

        def matched(ports: tuple[PortRange | NamedPort, ...]) -> tuple[int, list[tuple[int, int]]]:
            base = 0
            extra: list[tuple[int, int]] = []  # (classes, ports)
            for p in ports:
                if isinstance(p, PortRange):
                    base |= _mask(axis, p.first, p.last)
                    continue
                for (pr, port), ips in _named_groups(self.state, e, namespace, protocol, p.name).items():
                    if pr != proto:
                        continue
                    if not peer:
                        if self.me in ips:
                            base |= _mask(axis, port, port)
                    else:
                        extra.append((self._test(("named", ips)), _mask(axis, port, port)))
            return base, extra

        pos = matched(e.ports) if e.ports else None
        neg = matched(e.not_ports) if e.not_ports else None
        if not any(x is not None and x[1] for x in (pos, neg)):
            mask = full
            if pos is not None:
                mask &= pos[0]
            if neg is not None:
                mask &= ~neg[0]
            return [(self.all_classes, mask)]
        # Class by class: the ports the peer's own named ports add.
        by_mask: dict[int, int] = {}
        for c in range(len(self.classes)):
            mask = full
            for part, positive in ((pos, True), (neg, False)):
                if part is None:
                    continue
                m = part[0]
                for classes, ports in part[1]:
                    if classes >> c & 1:
                        m |= ports
                mask &= m if positive else ~m
            by_mask[mask] = by_mask.get(mask, 0) | 1 << c
        return [(classes, mask) for mask, classes in by_mask.items()]


def _or(masks: Iterator[int]) -> int:
    out = 0
    for m in masks:
        out |= m
    return out


def _port_boxes(fam: _Family, r: Rule, namespace: str | None, *, direction: str, proto: int) -> tuple[Box, ...]:
    if not _may_match(r, proto) or r.icmp is not None:
        return ()
    peer, local = _sides(r, direction)
    if not fam.local_ok(local, namespace):
        return ()
    classes = fam.peer_classes(peer, namespace)
    sport_axis, dport_axis = fam.ports[proto]
    ingress = direction == "ingress"
    src = fam.port_masks(r.source, namespace, r.protocol, proto, sport_axis, peer=ingress)
    dst = fam.port_masks(r.destination, namespace, r.protocol, proto, dport_axis, peer=not ingress)
    boxes: list[Box] = []
    for sc, sm in src or [(fam.all_classes, (1 << len(sport_axis)) - 1)]:
        for dc, dm in dst or [(fam.all_classes, (1 << len(dport_axis)) - 1)]:
            box = (classes & sc & dc, sm, dm)
            if all(box):
                boxes.append(box)
    return tuple(boxes)


def _icmp_boxes(fam: _Family, r: Rule, namespace: str | None, *, direction: str) -> tuple[Box, ...]:
    assert fam.icmp is not None
    types, codes = fam.icmp
    proto = ICMP_PROTOCOL[fam.version]
    if not _may_match(r, proto) or _has_ports(r):
        return ()
    peer, local = _sides(r, direction)
    if not fam.local_ok(local, namespace):
        return ()
    classes = fam.peer_classes(peer, namespace)
    all_t, all_c = (1 << len(types)) - 1, (1 << len(codes)) - 1
    tc: list[tuple[int, int]] = [(all_t, all_c)]
    if r.icmp is not None:
        c = r.icmp.code
        tc = [(_mask(types, r.icmp.type, r.icmp.type), all_c if c is None else _mask(codes, c, c))]
    if r.not_icmp is not None:
        nt = _mask(types, r.not_icmp.type, r.not_icmp.type)
        nc = all_c if r.not_icmp.code is None else _mask(codes, r.not_icmp.code, r.not_icmp.code)
        tc = [(t & x, c & y) for t, c in tc for x, y in ((all_t & ~nt, all_c), (nt, all_c & ~nc))]
    return tuple((classes, t, c) for t, c in tc if classes and t and c)


def _has_ports(r: Rule) -> bool:
    return bool(r.source.ports or r.source.not_ports or r.destination.ports or r.destination.not_ports)


def _other_boxes(fam: _Family, r: Rule, namespace: str | None, *, direction: str) -> tuple[Box, ...]:
    # Without ports (a portless packet never matches a port condition) nor ICMP type (none to match).
    if _has_ports(r) or r.icmp is not None:
        return ()
    peer, local = _sides(r, direction)
    if not fam.local_ok(local, namespace):
        return ()
    protos = 0
    for i, (first, _) in enumerate(fam.others):
        if _may_match(r, first):
            protos |= 1 << i
    classes = fam.peer_classes(peer, namespace)
    return ((classes, protos),) if classes and protos else ()


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
        last = starts[a1 + 1] - 1 if a1 + 1 < len(starts) else _SPACE[version]
        yield _range(lambda v: _text(version, v), first, last), interval_class[a0]


def _plane(row: tuple[int, ...], outer: Intervals, inner: Intervals) -> Iterator[tuple[str, str, int]]:
    """A 2-axis row as (outer range, inner range, outcome id) elements, equal neighbours merged."""
    n = len(inner)
    lines = [tuple((inner[i0][0], inner[i1][1], row[o * n + i0]) for i0, i1 in _runs(row[o * n:(o + 1) * n]))
             for o in range(len(outer))]
    for o0, o1 in _runs(lines):  # type: ignore[arg-type]
        for lo, hi, oid in lines[o0]:
            yield _range(str, outer[o0][0], outer[o1][1]), _range(str, lo, hi), oid


def _family(ev: Evaluator, rules: RuleList, version: int, me: IPAddress, tests: AddressTests,
            ports: dict[int, tuple[Intervals, Intervals]], icmp: tuple[Intervals, Intervals] | None
            ) -> tuple[_Family, list[int], list[int]]:
    starts, sigs = address_intervals(tests.ranges, version)
    classes = sorted(set(sigs), key=sorted)
    class_of = {sig: i for i, sig in enumerate(classes)}
    excluded = PORT_PROTOCOLS + ((ICMP_PROTOCOL[version],) if icmp else ())
    fam = _Family(ev.state, version, me, tests, classes, ports, icmp, protocol_intervals(rules, excluded))
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
    own = stage.endpoint.ips
    own_tests = address_tests(ev.state, rules, direction, peer=False).ranges
    for version in (4, 6):
        if len(set(memberships(own_tests, tuple(ip for ip in own if ip.version == version)))) > 1:
            return f"the endpoint's IPv{version} addresses differ in the rules' tests"
    tests = address_tests(ev.state, rules, direction)
    icmp = icmp_intervals(rules)
    ports = port_intervals(ev.state, rules)
    families = {v: _family(ev, rules, v, local[v], tests, ports, icmp) for v in (4, 6)}
    total = sum(f.cells() for f, _, _ in families.values())
    if total > budget:
        return f"decision space {total} cells > budget {budget}"

    ingress = direction == "ingress"
    lines: list[str] = []
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, tuple[str, frozenset[str], bool]] = {}
    for version, (fam, starts, interval_class) in families.items():
        l3, nfproto, addr_type = ("ip", "ipv4", "ipv4_addr") if version == 4 else ("ip6", "ipv6", "ipv6_addr")
        if own_tests:
            name_o = f"do{version}-{tag}"
            maps[name_o] = (addr_type, frozenset(_guard(own_tests, version, fam.me)), False)
            lines.append(f"meta nfproto {nfproto} {l3} {'daddr' if ingress else 'saddr'} != @{name_o} "
                         f"goto {walk_chain}")
        render = _Render(ev, stage, fam, target)
        peer_field = f"{l3} {'saddr' if ingress else 'daddr'}"
        one = len(fam.classes) == 1
        if not one:
            # The peer's class picks the class's chain (one interval lookup); its maps are keyed
            # on protocol and ports only, so they hold a class's row, not every address range's.
            dispatch = {f"{addr} : goto dr{version}-{tag}-{c}"
                        for addr, c in _address_runs(starts, interval_class, version)}
            maps[f"da{version}-{tag}"] = (f"{addr_type} : verdict", frozenset(dispatch), True)
            lines.append(f"meta nfproto {nfproto} {peer_field} vmap @da{version}-{tag}")
        rows = render.rows(fam, direction)
        for c in range(len(fam.classes)):
            suffix = "" if one else f"-{c}"
            row_lines = _class_maps(fam, rows, c, f"{version}-{tag}{suffix}", render.goto, maps)
            if one:
                lines += [f"meta nfproto {nfproto} {line}" for line in row_lines]
            else:
                # The maps cover every protocol and port: the drop is never reached.
                chains[f"dr{version}-{tag}-{c}"] = (*row_lines, "drop")
    return DecisionChain(tuple(lines), maps, sum(len(m[1]) for m in maps.values()), chains)


def _class_maps(fam: _Family, rows: dict[str, list[tuple[int, ...]]], c: int, suffix: str,
                goto: Callable[[int], str], maps: dict[str, tuple[str, frozenset[str], bool]]) -> list[str]:
    """One class's maps (added to `maps`) and the rules that look them up."""
    sport = any(len(s) > 1 for s, _ in fam.ports.values())
    dp: set[str] = set()
    for proto in PORT_PROTOCOLS:
        s_axis, d_axis = fam.ports[proto]
        for sp, dport, oid in _plane(rows[f"port{proto}"][c], s_axis, d_axis):
            dp.add(f"{proto} . {sp} . {dport} : {goto(oid)}" if sport else f"{proto} . {dport} : {goto(oid)}")
    maps[f"dp{suffix}"] = (f"inet_proto . inet_service{' . inet_service' if sport else ''} : verdict",
                           frozenset(dp), True)
    out = [f"meta l4proto {{ {', '.join(map(str, PORT_PROTOCOLS))} }} "
           f"meta l4proto{' . th sport' if sport else ''} . th dport vmap @dp{suffix}"]
    if fam.icmp is not None:
        types, codes = fam.icmp
        di = {f"{t} . {code} : {goto(oid)}" for t, code, oid in _plane(rows["icmp"][c], types, codes)}
        kind = "icmp" if fam.version == 4 else "icmpv6"
        maps[f"di{suffix}"] = (f"{kind}_type . {kind}_code : verdict", frozenset(di), True)
        out.append(f"meta l4proto {ICMP_PROTOCOL[fam.version]} {kind} type . {kind} code vmap @di{suffix}")
    row = rows["other"][c]
    dn: set[str] = set()
    for q0, q1 in _runs(row):
        # adjacent in the list but not in number (a protocol with its own map between): split
        for lo, hi in _contiguous(fam.others[q0:q1 + 1]):
            dn.add(f"{_range(str, lo, hi)} : {goto(row[q0])}")
    maps[f"dn{suffix}"] = ("inet_proto : verdict", frozenset(dn), True)
    out.append(f"meta l4proto vmap @dn{suffix}")
    return out


class _Render:
    """One family's walks, space by space, and the terminal chain of each outcome."""

    def __init__(self, ev: Evaluator, stage: Stage, fam: _Family, target: Callable[[Outcome], str]) -> None:
        self.target = target
        self.ids: dict[Outcome, int] = {}
        self.outcomes: list[Outcome] = []
        self.chains: dict[int, str] = {}
        self.skeleton = _skeleton(ev, stage, fam.version)

    def rows(self, fam: _Family, direction: str) -> dict[str, list[tuple[int, ...]]]:
        """Per space: per class, the outcome id of every cell."""
        spaces: dict[str, tuple[Callable[[Rule, str | None], tuple[Box, ...]], tuple[int, ...]]] = {
            f"port{p}": (partial(_port_boxes, fam, direction=direction, proto=p),
                         (len(fam.ports[p][0]), len(fam.ports[p][1]))) for p in PORT_PROTOCOLS}
        if fam.icmp is not None:
            spaces["icmp"] = (partial(_icmp_boxes, fam, direction=direction), (len(fam.icmp[0]), len(fam.icmp[1])))
        spaces["other"] = (partial(_other_boxes, fam, direction=direction), (len(fam.others),))
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
            last = starts[r1 + 1] - 1 if r1 + 1 < len(starts) else _SPACE[version]
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
