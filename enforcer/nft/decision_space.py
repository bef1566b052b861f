"""The decision space of one workload chain: what its rules test, split into elementary
intervals (peer address classes, per protocol source and destination ports, ICMP type and code,
other protocols), and the region of that space each rule matches — derived from the resolved,
family-rendered rule (nets, selector sets, named ports, ports, ICMP), as the evaluator's
`compile_rule` matches it (tests/test_decision_regions.py checks the two agree cell by cell).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from enforcer.model import EntityRule, IPAddress, NamedPort, PortRange, Rule
from enforcer.nft.regions import Box, interval_mask
from enforcer.resolve.ipsets import IPSet, NamedPortSet, ip_key
from enforcer.resolve.selectors import entity_selector
from enforcer.resolve.state import ClusterState
from enforcer.selector import Selector

PORT_PROTOCOLS = (6, 17, 132, 136)  # protocols whose rules may match ports (th sport, th dport)
ICMP_PROTOCOL = {4: 1, 6: 58}
SPACE = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_SELECTOR_CACHE = 500_000

Intervals = list[tuple[int, int]]


# ---- what the rules test -------------------------------------------------------------------


def _sides(rule: Rule, direction: str) -> tuple[EntityRule, EntityRule]:
    """(peer, local) side of a rule in a workload chain of `direction`."""
    return (rule.source, rule.destination) if direction == "ingress" else (rule.destination, rule.source)


RuleList = list[tuple[Rule, str | None]]  # (rule, its policy's namespace)
Tests = list[Sequence[tuple[int, int, int]]]  # per address test: its (version, first, last) ranges


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
    return _named_port(state, entity, namespace, protocol, name)[0]


def _named_port(state: ClusterState, entity: EntityRule, namespace: str | None, protocol: int | None, name: str
                ) -> tuple[dict[tuple[int, int], frozenset[IPAddress]], dict[IPAddress, frozenset[tuple[int, int]]]]:
    """A named port's members grouped by (protocol, port), and the other way round (address →
    what it declares): once per member set for the state's life (every rule naming the port, in
    every chain and for every pod, asks)."""
    named = state.named_ports(_selector(state, entity, namespace), name, protocol)
    cache: dict[int, tuple[NamedPortSet, dict[tuple[int, int], frozenset[IPAddress]],
                           dict[IPAddress, frozenset[tuple[int, int]]]]] = state.caches.setdefault(
        "decision.named_groups", {})
    found = cache.get(id(named))
    if found is None or found[0] is not named:
        groups: dict[tuple[int, int], set[IPAddress]] = {}
        by_ip: dict[IPAddress, set[tuple[int, int]]] = {}
        for ip, proto, port in named.members:
            groups.setdefault((proto, port), set()).add(ip)
            by_ip.setdefault(ip, set()).add((proto, port))
        if len(cache) >= _SELECTOR_CACHE:
            cache.clear()
        found = cache[id(named)] = (named, {k: frozenset(v) for k, v in groups.items()},
                                    {k: frozenset(v) for k, v in by_ip.items()})
    return found[1], found[2]


class AddressTests:
    """The address tests used on one side of the rules, each with its ranges, by key."""

    def __init__(self) -> None:
        self.ranges: Tests = []
        self.index: dict[object, int] = {}

    def add(self, key: object, ranges: Iterable[tuple[int, int, int]]) -> None:
        if key not in self.index:
            self.index[key] = len(self.ranges)
            self.ranges.append(tuple(ranges))  # a set's kept ranges (_set_ranges) are not copied

    def merged(self, version: int, cache: dict[tuple[object, int], tuple[tuple[int, int], ...]]
               ) -> list[tuple[tuple[int, int], ...]]:
        """Each test's `merged_ranges`, kept in `cache` by the test's key (which fixes its ranges):
        the chains of a node test the same sets and nets over and over."""
        if len(cache) >= _SELECTOR_CACHE:
            cache.clear()
        out = []
        for key, ranges in zip(self.index, self.ranges, strict=True):
            found = cache.get((key, version))
            if found is None:
                found = cache[(key, version)] = merged_ranges(ranges, version)
            out.append(found)
        return out


def _net_ranges(nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> Iterator[tuple[int, int, int]]:
    for net in nets:
        yield net.version, int(net.network_address), int(net.broadcast_address)


def _set_ranges(state: ClusterState, ipset: IPSet) -> tuple[tuple[int, int, int], ...]:
    """An address set's ranges, once per set for the state's life (every chain testing it asks)."""
    cache: dict[int, tuple[IPSet, tuple[tuple[int, int, int], ...]]] = state.caches.setdefault(
        "decision.set_ranges", {})
    found = cache.get(id(ipset))
    if found is None or found[0] is not ipset:
        if len(cache) >= _SELECTOR_CACHE:
            cache.clear()
        ranges = tuple((h.version, int(h), int(h)) for h in ipset.hosts) + tuple(_net_ranges(ipset.nets))
        found = cache[id(ipset)] = (ipset, ranges)
    return found[1]


def address_tests(state: ClusterState, rules: RuleList, direction: str, *, peer: bool = True) -> AddressTests:
    """Per address test used on the peer's (or the endpoint's own) side: its ranges. On the peer
    side, the addresses declaring a named port alike (protocol and number) are a test too."""
    tests = AddressTests()
    for rule, namespace in rules:
        for key, ranges in _rule_tests(state, rule, namespace, direction, peer):
            tests.add(key, ranges)
    return tests


def _rule_tests(state: ClusterState, rule: Rule, namespace: str | None, direction: str, peer: bool
                ) -> tuple[tuple[object, tuple[tuple[int, int, int], ...]], ...]:
    """One rule's address tests on a side (key and ranges), once per rule for the state's life:
    a node's rule lists repeat the same policies' rules (1,000 policies over 1,000 pods: 600
    lists, 600,000 rule visits)."""
    cache: dict[tuple[int, str | None, str, bool], tuple[Rule, tuple[tuple[object, tuple[tuple[int, int, int], ...]],
                                                                    ...]]] = state.caches.setdefault(
        "decision.rule_tests", {})
    ckey = (id(rule), namespace, direction, peer)
    found = cache.get(ckey)
    if found is not None and found[0] is rule:
        return found[1]
    out: list[tuple[object, tuple[tuple[int, int, int], ...]]] = []
    side = _sides(rule, direction)[0 if peer else 1]
    for net in (*side.nets, *side.not_nets):
        out.append((("net", net), tuple(_net_ranges((net,)))))
    for sel in (_selector(state, side, namespace), side.not_selector):
        if sel is None:
            continue
        ipset = state.ipset(sel)
        out.append((("set", ipset), _set_ranges(state, ipset)))
    if peer:
        for np in _named(side):
            for ips in _named_groups(state, side, namespace, rule.protocol, np.name).values():
                out.append((("named", ips), _host_ranges(state, ips)))
    if len(cache) >= _SELECTOR_CACHE:
        cache.clear()
    cache[ckey] = (rule, tuple(out))
    return tuple(out)


def _host_ranges(state: ClusterState, ips: frozenset[IPAddress]) -> tuple[tuple[int, int, int], ...]:
    """A named port's member group as ranges, once per group for the state's life (its groups
    are kept, _named_port, and every chain naming the port asks)."""
    cache: dict[int, tuple[frozenset[IPAddress], tuple[tuple[int, int, int], ...]]] = state.caches.setdefault(
        "decision.host_ranges", {})
    found = cache.get(id(ips))
    if found is None or found[0] is not ips:
        if len(cache) >= _SELECTOR_CACHE:
            cache.clear()
        found = cache[id(ips)] = (ips, tuple((ip.version, int(ip), int(ip)) for ip in ips))
    return found[1]


def memberships(tests: Tests, ips: tuple[IPAddress, ...]) -> tuple[frozenset[int], ...]:
    """For each address: the tests that contain it."""
    return tuple(frozenset(t for t, ranges in enumerate(tests)
                           if any(v == ip.version and first <= int(ip) <= last for v, first, last in ranges))
                 for ip in ips)


class MembershipIndex:
    """`memberships` for many addresses against the same tests: each test's ranges of a version
    are merged and sorted once (when first asked), then an address is one bisection per test.

    Not the elementary intervals (`address_intervals`): building those costs every test times
    every interval it covers — with 1,000 policies over 1,000 pods, 12.5 s of CPU for the
    compile's 480 rule lists, 3x the whole rule walk's compile — while an endpoint's key needs
    only its own one or two addresses."""

    def __init__(self, tests: Tests,
                 merged: Callable[[int], list[tuple[tuple[int, int], ...]]] | None = None) -> None:
        self.tests = tests
        # Each test's merged ranges of a version (AddressTests.merged, kept by the tests' keys
        # across rule lists), when the caller has them: else merged here.
        self._merged = merged
        self._by_version: dict[int, list[tuple[int, list[int], list[int]]]] = {}

    def _index(self, version: int) -> list[tuple[int, list[int], list[int]]]:
        spans = self._merged(version) if self._merged is not None else \
            [merged_ranges(ranges, version) for ranges in self.tests]
        return [(t, [f for f, _ in m], [la for _, la in m]) for t, m in enumerate(spans) if m]

    def of(self, ips: tuple[IPAddress, ...]) -> tuple[frozenset[int], ...]:
        out = []
        for ip in ips:
            index = self._by_version.get(ip.version)
            if index is None:
                index = self._by_version[ip.version] = self._index(ip.version)
            x = int(ip)
            out.append(frozenset(t for t, firsts, lasts in index
                                 if (i := bisect.bisect_right(firsts, x) - 1) >= 0 and lasts[i] >= x))
        return tuple(out)


def tests_own_named_port(rule: Rule, direction: str) -> bool:
    return bool(_named(_sides(rule, direction)[1]))


def local_named_ports(state: ClusterState, rules: RuleList, direction: str, ips: tuple[IPAddress, ...]
                      ) -> tuple[tuple[int, int], ...]:
    """The (protocol, port) of the endpoint's own named ports the rules use: endpoints differing
    there cannot share a decision chain."""
    found: set[tuple[int, int]] = set()
    for by_ip in _own_named_ports(state, rules, direction):
        for ip in ips:
            found.update(by_ip.get(ip, ()))
    return tuple(sorted(found))


def _own_named_ports(state: ClusterState, rules: RuleList, direction: str
                     ) -> tuple[dict[IPAddress, frozenset[tuple[int, int]]], ...]:
    """The distinct named ports (each as address → what it declares) that `rules` test on the
    endpoint's own side: found once per rule list, so each endpoint sharing it looks up its own
    addresses in a few indexes instead of testing every rule's members."""
    cache: dict[tuple[int, str], tuple[RuleList, tuple[dict[IPAddress, frozenset[tuple[int, int]]], ...]]] = \
        state.caches.setdefault("decision.own_named_ports", {})
    found = cache.get((id(rules), direction))
    if found is not None and found[0] is rules:
        return found[1]
    distinct: dict[int, dict[IPAddress, frozenset[tuple[int, int]]]] = {}
    for rule, namespace in rules:
        local = _sides(rule, direction)[1]
        for np in _named(local):
            by_ip = _named_port(state, local, namespace, rule.protocol, np.name)[1]
            distinct.setdefault(id(by_ip), by_ip)
    if len(cache) >= _SELECTOR_CACHE:
        cache.clear()
    cache[id(rules), direction] = (rules, tuple(distinct.values()))
    return cache[id(rules), direction][1]


def address_intervals(tests: Tests, version: int) -> tuple[list[int], list[frozenset[int]]]:
    """The elementary intervals of the `version` address space (their first addresses, in
    order) and, for each, the tests that contain it."""
    top = SPACE[version]
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


def _test_hash(t: int) -> int:
    """A fixed pseudo-random 64-bit value per test (splitmix64 of its index): deterministic, so a
    compile's choices do not depend on the process."""
    z = (t + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def merged_ranges(ranges: Iterable[tuple[int, int, int]], version: int) -> tuple[tuple[int, int], ...]:
    """A test's `version` ranges sorted, overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted((f, la) for v, f, la in ranges if v == version):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)


def classes_at_least(merged: Iterable[tuple[tuple[int, int], ...]], version: int) -> int:
    """A lower bound on the peer classes `address_intervals` gives (its distinct signatures),
    without building them, from each test's `merged_ranges`: one sweep over their boundaries,
    the signature of each elementary interval kept as the XOR of its tests' hashes (a test's
    merged ranges toggle it in and out once each). Equal signatures hash alike, so the distinct
    hashes are never more than the classes; two signatures colliding only make the count smaller
    (a bound still), which 64-bit hashes make unlikely: the bound is the class count in
    practice. Cost: one dictionary update per range, not every test times the intervals it
    covers."""
    top = SPACE[version]
    toggles: dict[int, int] = {}
    for t, spans in enumerate(merged):
        h = _test_hash(t)
        for first, last in spans:
            toggles[first] = toggles.get(first, 0) ^ h
            if last < top:
                toggles[last + 1] = toggles.get(last + 1, 0) ^ h
    seen = set() if 0 in toggles else {0}  # the space before the first boundary: in no test
    current = 0
    for at in sorted(toggles):
        current ^= toggles[at]
        seen.add(current)
    return len(seen)


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
        for axis, at in _rule_port_bounds(state, rule, namespace):
            bounds[axis].update(at)
    return {p: (_split(65535, bounds[p, True]), _split(65535, bounds[p, False])) for p in PORT_PROTOCOLS}


def _rule_port_bounds(state: ClusterState, rule: Rule, namespace: str | None
                      ) -> tuple[tuple[tuple[int, bool], tuple[int, ...]], ...]:
    """Where one rule splits each (port protocol, source side) axis, once per rule for the
    state's life (a node's rule lists repeat the same policies' rules)."""
    cache: dict[tuple[int, str | None], tuple[Rule, tuple[tuple[tuple[int, bool], tuple[int, ...]], ...]]] = \
        state.caches.setdefault("decision.rule_port_bounds", {})
    found = cache.get((id(rule), namespace))
    if found is not None and found[0] is rule:
        return found[1]
    bounds: dict[tuple[int, bool], set[int]] = {}
    protos = [p for p in PORT_PROTOCOLS if _may_match(rule, p)]
    for source, entity in ((True, rule.source), (False, rule.destination)):
        for port in (*entity.ports, *entity.not_ports):
            if isinstance(port, PortRange):
                for p in protos:
                    bounds.setdefault((p, source), set()).update((port.first, port.last + 1))
                continue
            for pr, number in _named_groups(state, entity, namespace, rule.protocol, port.name):
                if pr in protos:
                    bounds.setdefault((pr, source), set()).update((number, number + 1))
    out = tuple((axis, tuple(sorted(at))) for axis, at in bounds.items())
    if len(cache) >= _SELECTOR_CACHE:
        cache.clear()
    cache[(id(rule), namespace)] = (rule, out)
    return out


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
class Family:
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
        self._peer: dict[tuple[int, str | None], tuple[EntityRule, int]] = {}
        self._local: dict[tuple[int, str | None], tuple[EntityRule, bool]] = {}
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
        key = (id(e), namespace)  # rules outlive the compile of their chain; the entity is kept with
        found = self._peer.get(key)  # its answer: a family lives on in a decision memo
        if found is None or found[0] is not e:
            found = self._peer[key] = (e, self._peer_classes(e, namespace))
        return found[1]

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
        if found is None or found[0] is not e:
            found = self._local[key_] = (e, self._local_ok(e, namespace))
        return found[1]

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


def port_boxes(fam: Family, r: Rule, namespace: str | None, *, direction: str, proto: int) -> tuple[Box, ...]:
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


def icmp_boxes(fam: Family, r: Rule, namespace: str | None, *, direction: str) -> tuple[Box, ...]:
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


def other_boxes(fam: Family, r: Rule, namespace: str | None, *, direction: str) -> tuple[Box, ...]:
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


