"""Per-endpoint decision maps: a workload endpoint chain as one lookup instead of a rule walk.

The walk layout (compiler.py) sends a workload's first packet through every selecting policy's
chain, rule by rule. Here the compiler computes the RESULT of that walk ahead of time, with the
evaluator's own rule matching (`Evaluator.decide_stage`: one home for the semantics), for every
packet the rules can tell apart, and the kernel looks the result up:

    fw-d<hash>:   meta nfproto ipv4 meta l4proto { tcp, udp, sctp, udplite }
                      ip saddr . meta l4proto . th dport vmap @dp4-<hash>
                  meta nfproto ipv4 ip saddr . meta l4proto vmap @dn4-<hash>
                  (the same for IPv6)
    dx-<hash>:    the outcome: Log rules that fired on the way, then the attributed verdict

The peer address is split into the elementary intervals of every address test the policies use
(nets, notNets, the address sets of selectors); intervals inside the same tests are alike, and
adjacent ones with the same results merge. Ports split at every port range boundary, protocols
at every protocol a rule names. The maps are concatenated interval maps (one pipapo lookup).
Each distinct outcome is one terminal chain, shared by the node: the verdict with the same rule
ids and NFLOG prefixes the walk logs (end of tier attributed to the last enabled selecting
policy, profiles, no-profile drop), so attribution does not depend on the layout.

What the maps cannot key on keeps the walk: rules that test the endpoint's own address, source
ports, named ports or HTTP; and any chain whose decision space (cells the
compiler must decide) exceeds the budget — never a wrong verdict, never an unbounded map.

Only enforced, enabled policies decide (the evaluator's walk); disabled ones change outcomes, so
a toggle rewrites map elements (and adds the terminal chains of outcomes new to the node).
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from enforcer.evaluate.evaluator import Evaluator, Hit, StageResult
from enforcer.evaluate.flow import Flow
from enforcer.evaluate.path import Stage
from enforcer.model import EntityRule, IPAddress, NamedPort, Policy, Rule
from enforcer.resolve.selectors import entity_selector
from enforcer.resolve.state import ClusterState

# Default cells per endpoint chain: the compiler decides each cell with one evaluator walk, so
# this bounds compile time (a few ms per thousand cells for short walks) as well as the map's
# size; merged elements are fewer than cells. 4,096 covers a selector-heavy policy set on a
# node of a few hundred peers and ports; kernel lookups in a pipapo map of that size stay near
# the empty table's cost (kernel-notes.md: 1,000 entries 0.98×).
DEFAULT_BUDGET = 4096
PORT_PROTOCOLS = (6, 17, 132, 136)  # protocols whose rules may match ports (th dport)
_SPACE = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
_HASH = 12


@dataclass(frozen=True)
class ChainLayout:
    """How one endpoint chain was laid out, for `apply --dry-run` and metrics."""

    chain: str
    layout: str  # "decision" or "walk"
    elements: int  # map elements (decision) or rules (walk)
    reason: str = ""  # why the walk was kept


@dataclass(frozen=True)
class Outcome:
    """The walk's result for one cell: Log hits on the way, then the deciding hit (None: no
    profile matched, the no-profile drop)."""

    logged: tuple[Hit, ...]
    verdict: str  # "allow" | "deny"
    hit: Hit | None


@dataclass(frozen=True)
class DecisionChain:
    lines: tuple[str, ...]
    maps: dict[str, tuple[str, frozenset[str], bool]]  # name → (type, elements, is a map)
    elements: int


# ---- what the rules test -------------------------------------------------------------------


def _sides(rule: Rule, direction: str) -> tuple[EntityRule, EntityRule]:
    """(peer, local) side of a rule in a workload chain of `direction`."""
    return (rule.source, rule.destination) if direction == "ingress" else (rule.destination, rule.source)


RuleList = list[tuple[Rule, str | None]]  # (rule, its policy's namespace)
Tests = list[list[tuple[int, int, int]]]  # per address test: its (version, first, last) ranges


def unsupported(rules: RuleList, direction: str) -> str | None:
    """Why these rules cannot be keyed on (peer address, protocol, destination port), or None.

    Tests of the endpoint's own address are answered at compile time for ingress (the packet is
    addressed to the endpoint) and egress alike, with a guard: a packet whose own-side address
    is outside the endpoint's class in those tests (a forged source) goes to the walk."""
    for rule, _ in rules:
        peer, local = _sides(rule, direction)
        if rule.http is not None:
            return "HTTP match"
        if local.services is not None or peer.services is not None:
            return "service match"

        if rule.source.ports or rule.source.not_ports:
            return "source port match"
        if any(isinstance(p, NamedPort) for p in (*rule.destination.ports, *rule.destination.not_ports)):
            return "named port match"
    return None


def address_tests(state: ClusterState, rules: RuleList, direction: str, *, peer: bool = True) -> Tests:
    """Per address test used on the peer's (or the endpoint's own) side: its ranges."""
    tests: Tests = []
    seen: set[object] = set()

    def add(key: object, ranges: Iterator[tuple[int, int, int]]) -> None:
        if key not in seen:
            seen.add(key)
            tests.append(list(ranges))

    def net_ranges(nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
                   ) -> Iterator[tuple[int, int, int]]:
        for net in nets:
            yield net.version, int(net.network_address), int(net.broadcast_address)

    for rule, namespace in rules:
        side = _sides(rule, direction)[0 if peer else 1]
        for net in (*side.nets, *side.not_nets):
            add(("net", net), net_ranges((net,)))
        for sel in (entity_selector(side, namespace), side.not_selector):
            if sel is None:
                continue
            ipset = state.ipset(sel)
            add(("set", ipset), iter([*((h.version, int(h), int(h)) for h in ipset.hosts),
                                      *net_ranges(ipset.nets)]))
    return tests


def memberships(tests: Tests, ips: tuple[IPAddress, ...]) -> tuple[frozenset[int], ...]:
    """For each address: the tests that contain it."""
    return tuple(frozenset(t for t, ranges in enumerate(tests)
                           if any(v == ip.version and first <= int(ip) <= last for v, first, last in ranges))
                 for ip in ips)


def address_intervals(tests: Tests, version: int
                      ) -> tuple[list[int], list[frozenset[int]]]:
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


def _split(space_last: int, bounds: set[int]) -> list[tuple[int, int]]:
    starts = sorted(b for b in bounds | {0} if 0 <= b <= space_last)
    return [(s, (starts[i + 1] - 1) if i + 1 < len(starts) else space_last) for i, s in enumerate(starts)]


def port_intervals(rules: RuleList) -> list[tuple[int, int]]:
    bounds: set[int] = set()
    for rule, _ in rules:
        for p in (*rule.destination.ports, *rule.destination.not_ports):
            if not isinstance(p, NamedPort):
                bounds.update((p.first, p.last + 1))
    return _split(65535, bounds)


def icmp_intervals(rules: RuleList) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
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


def protocol_intervals(rules: RuleList) -> list[tuple[int, int]]:
    """Intervals of the protocols without ports (each port protocol is keyed on its own)."""
    bounds: set[int] = set()
    for rule, _ in rules:
        for proto in (rule.protocol, rule.not_protocol):
            if proto is not None:
                bounds.update((proto, proto + 1))
    for proto in PORT_PROTOCOLS:
        bounds.update((proto, proto + 1))
    return [(a, b) for a, b in _split(255, bounds) if a not in PORT_PROTOCOLS]


# ---- the decision --------------------------------------------------------------------------


def _text(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _range(render: Callable[[int], str], first: int, last: int) -> str:
    return render(first) if first == last else f"{render(first)}-{render(last)}"


def _runs(values: list[object]) -> Iterator[tuple[int, int]]:
    """(first index, last index) of each run of equal adjacent values."""
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            yield start, i - 1
            start = i


def cells(classes: int, ports: int, protos: int) -> int:
    return classes * (len(PORT_PROTOCOLS) * ports + protos)


def decide(ev: Evaluator, stage: Stage, rules: RuleList, local: dict[int, IPAddress],
           budget: int, tag: str, target: Callable[[Outcome], str], walk: str) -> DecisionChain | str:
    """The decision maps of `stage`'s chain, or why it keeps the walk.

    `ev` decides with enabled policies only; `rules` are every rule that may decide (selecting
    policies and profiles); `local` is an address of the endpoint per IP version (any address of
    that version when it has none: the rules do not test it); `tag` names the maps; `target`
    gives the terminal chain of an outcome; `walk` is the chain of the rule walk, where a packet
    whose own-side address the decision did not assume goes."""
    reason = unsupported(rules, stage.direction)
    if reason is not None:
        return reason
    assert stage.endpoint is not None
    own = stage.endpoint.ips
    own_tests = address_tests(ev.state, rules, stage.direction, peer=False)
    for version in (4, 6):
        if len(set(memberships(own_tests, tuple(ip for ip in own if ip.version == version)))) > 1:
            return f"the endpoint's IPv{version} addresses differ in the rules' tests"
    tests = address_tests(ev.state, rules, stage.direction)
    ports = port_intervals(rules)
    protos = protocol_intervals(rules)
    per_version = {v: address_intervals(tests, v) for v in (4, 6)}
    classes = {v: sorted(set(sig)) for v, (_, sig) in per_version.items()}
    icmp = icmp_intervals(rules)
    per_class_icmp = len(icmp[0]) * len(icmp[1]) if icmp else 0
    total = sum(cells(len(c), len(ports), len(protos)) + len(c) * per_class_icmp for c in classes.values())
    if total > budget:
        return f"decision space {total} cells > budget {budget}"

    ingress = stage.direction == "ingress"
    lines: list[str] = []
    maps: dict[str, tuple[str, frozenset[str], bool]] = {}
    elements = 0
    for version, (starts, sigs) in per_version.items():
        l3, nfproto, addr_type = ("ip", "ipv4", "ipv4_addr") if version == 4 else ("ip6", "ipv6", "ipv6_addr")
        me = local[version]
        own_field = f"{l3} {'daddr' if ingress else 'saddr'}"
        if own_tests:
            # The outcomes assume the endpoint's own address answers the own-side tests as `me`
            # does: any other address (a forged source) takes the walk.
            starts_o, sigs_o = address_intervals(own_tests, version)
            mine = memberships(own_tests, (me,))[0]
            inside = [sig == mine for sig in sigs_o]
            guard: set[str] = set()
            for r0, r1 in _runs(inside):  # type: ignore[arg-type]
                if inside[r0]:
                    last = starts_o[r1 + 1] - 1 if r1 + 1 < len(starts_o) else _SPACE[version]
                    guard.add(_text(version, starts_o[r0]) if starts_o[r0] == last
                              else f"{_text(version, starts_o[r0])}-{_text(version, last)}")
            name_o = f"do{version}-{tag}"
            maps[name_o] = (addr_type, frozenset(guard), False)
            elements += len(guard)
            lines.append(f"meta nfproto {nfproto} {own_field} != @{name_o} goto {walk}")

        def flow(peer: IPAddress, proto: int, port: int | None, me: IPAddress = me,
                 icmp_type: int | None = None, icmp_code: int | None = None) -> Flow:
            src, dst = (peer, me) if ingress else (me, peer)
            return Flow(src, dst, proto, 40000 if port is not None else None, port, icmp_type, icmp_code)

        icmp_proto = 1 if version == 4 else 58

        # Per class: the outcome of every (port protocol, port interval) and non-port protocol.
        table: dict[frozenset[int], tuple[Outcome, ...]] = {}
        for sig in classes[version]:
            rep = starts[sigs.index(sig)]
            peer = ipaddress.ip_address(rep) if version == 4 else ipaddress.IPv6Address(rep)
            row = [_outcome(ev.decide_stage(stage, flow(peer, p, first)))
                   for p in PORT_PROTOCOLS for first, _ in ports]
            row += [_outcome(ev.decide_stage(stage, flow(peer, first, None))) for first, _ in protos]
            if icmp:
                row += [_outcome(ev.decide_stage(stage, flow(peer, icmp_proto, None, icmp_type=t, icmp_code=c)))
                        for t, _ in icmp[0] for c, _ in icmp[1]]
            table[sig] = tuple(row)
        rows = [table[s] for s in sigs]
        addr_runs = list(_runs(rows))  # type: ignore[arg-type]
        last_addr = _SPACE[version]
        dp: set[str] = set()
        dn: set[str] = set()
        di: set[str] = set()
        for a0, a1 in addr_runs:
            first = starts[a0]
            last = starts[a1 + 1] - 1 if a1 + 1 < len(starts) else last_addr
            addr = _text(version, first) if first == last else f"{_text(version, first)}-{_text(version, last)}"
            cols = rows[a0]
            for pi, proto in enumerate(PORT_PROTOCOLS):
                cells_ = list(cols[pi * len(ports):(pi + 1) * len(ports)])
                for p0, p1 in _runs(cells_):  # type: ignore[arg-type]
                    dp.add(f"{addr} . {proto} . {_range(str, ports[p0][0], ports[p1][1])} : goto {target(cells_[p0])}")
            rest = list(cols[len(PORT_PROTOCOLS) * len(ports):len(PORT_PROTOCOLS) * len(ports) + len(protos)])
            if icmp:
                types, codes = icmp
                by_type = cols[len(PORT_PROTOCOLS) * len(ports) + len(protos):]
                for ti, (t0, t1) in enumerate(types):
                    per_code = list(by_type[ti * len(codes):(ti + 1) * len(codes)])
                    for c0, c1 in _runs(per_code):  # type: ignore[arg-type]
                        di.add(f"{addr} . {_range(str, t0, t1)} . {_range(str, codes[c0][0], codes[c1][1])} "
                               f": goto {target(per_code[c0])}")
            for q0, q1 in _runs(rest):  # type: ignore[arg-type]
                # adjacent in the list but not in number (a port protocol between): split
                for lo, hi in _contiguous(protos[q0:q1 + 1]):
                    dn.add(f"{addr} . {_range(str, lo, hi)} : goto {target(rest[q0])}")
        name_p, name_n = f"dp{version}-{tag}", f"dn{version}-{tag}"
        maps[name_p] = (f"{addr_type} . inet_proto . inet_service : verdict", frozenset(dp), True)
        maps[name_n] = (f"{addr_type} . inet_proto : verdict", frozenset(dn), True)
        elements += len(dp) + len(dn)
        peer_field = f"{l3} {'saddr' if ingress else 'daddr'}"
        lines.append(f"meta nfproto {nfproto} meta l4proto {{ {', '.join(map(str, PORT_PROTOCOLS))} }} "
                     f"{peer_field} . meta l4proto . th dport vmap @{name_p}")
        if icmp:
            # before the protocol map: ICMP of this family by type and code
            name_i = f"di{version}-{tag}"
            kind = "icmp" if version == 4 else "icmpv6"
            maps[name_i] = (f"{addr_type} . {kind}_type . {kind}_code : verdict", frozenset(di), True)
            elements += len(di)
            lines.append(f"meta nfproto {nfproto} meta l4proto {icmp_proto} "
                         f"{peer_field} . {kind} type . {kind} code vmap @{name_i}")
        lines.append(f"meta nfproto {nfproto} {peer_field} . meta l4proto vmap @{name_n}")
    return DecisionChain(tuple(lines), maps, elements)


def _contiguous(intervals: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    lo, hi = intervals[0]
    for a, b in intervals[1:]:
        if a == hi + 1:
            hi = b
        else:
            yield lo, hi
            lo, hi = a, b
    yield lo, hi


def _outcome(res: StageResult) -> Outcome:
    verdict = "allow" if res.outcome == "allow" else "deny"
    return Outcome(res.logged, verdict, res.hit)


def outcome_name(lines: list[str]) -> str:
    return "dx-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def chain_tag(stage: Stage, policies: tuple[Policy, ...], profiles: tuple[str, ...],
              local: tuple[frozenset[int], ...]) -> str:
    """Stable across toggles and rule edits: the chain's maps change, not its name. `local`: the
    endpoint's own addresses in the rules' tests (endpoints differing there need their own)."""
    key = repr((stage.direction, tuple(p.key for p in policies), profiles, tuple(sorted(map(sorted, local)))))
    return hashlib.sha256(key.encode()).hexdigest()[:_HASH]
