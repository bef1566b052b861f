"""A rule's match, as nftables expressions (§2.11 rendered for one IP family).

Selectors become named sets (their membership changes without touching rules); nets and ports
become anonymous sets. A ports list that mixes numbers and named ports is an OR: it renders as two
nft rules with the same action, which is equivalent because both end evaluation the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from enforcer.model import EntityRule, IPNetwork, NamedPort, PortRange, Rule
from enforcer.nft.ir import NftSet
from enforcer.resolve.selectors import entity_selector
from enforcer.resolve.state import ClusterState
from enforcer.selector import Selector

L3 = {4: ("ipv4", "ip", "ipv4_addr", "icmp"), 6: ("ipv6", "ip6", "ipv6_addr", "icmpv6")}
PROTO_WORDS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def proto_word(number: int) -> str:
    return PROTO_WORDS.get(number, str(number))


def collapse(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Merge overlapping and adjacent networks: nftables rejects overlapping intervals."""
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    out: list[IPNetwork] = list(ipaddress.collapse_addresses(v4))
    out += list(ipaddress.collapse_addresses(v6))
    return out


def _net_text(net: IPNetwork) -> str:
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _short_hash(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:16]


@dataclass
class SetBook:
    """The named sets a node's rules refer to, built from cluster state as rules are rendered.

    Rendered sets are kept in the state's `caches` (they depend on cluster objects only), so
    every node of a compile, and every compile of a state derived from this one, renders each
    set once. `sets` holds the ones this compile used; `recording`, when a list, collects the
    sets used meanwhile (a policy chain's, for reusing the chain)."""

    state: ClusterState
    sets: dict[str, NftSet] = field(default_factory=dict)
    recording: list[NftSet] | None = None
    _rendered: dict[tuple[object, ...], NftSet] = field(init=False)

    def __post_init__(self) -> None:
        self._rendered = self.state.caches.setdefault("nft.sets", {})

    def use(self, nset: NftSet) -> str:
        self.sets[nset.name] = nset
        if self.recording is not None:
            self.recording.append(nset)
        return nset.name

    def selector_set(self, selector: Selector, version: int) -> str:
        found = self._rendered.get((selector, version))
        if found is None:  # building and collapsing the members is the costly part: once per set
            nets = collapse(self.state.ipset(selector).networks(version))
            interval = any(n.num_addresses > 1 for n in nets)
            # The set's kind is part of its name, so its type never changes under one name.
            name = f"s{version}{'i' if interval else 'h'}-{_short_hash(selector.uid)}"
            found = self._rendered[(selector, version)] = NftSet(
                name, L3[version][2], ("interval",) if interval else (), frozenset(_net_text(n) for n in nets)
            )
        return self.use(found)

    def named_port_set(self, selector: Selector | None, port: str, protocol: int | None, version: int) -> str:
        key = ("named", selector, port, protocol, version)
        found = self._rendered.get(key)
        if found is None:
            members = self.state.named_ports(selector, port, protocol)
            elements = frozenset(
                f"{ip} . {proto_word(proto)} . {num}" for ip, proto, num in members.members if ip.version == version
            )
            name = f"n{version}-{_short_hash(selector.uid if selector else '*', port, protocol)}"
            found = self._rendered[key] = NftSet(name, f"{L3[version][2]} . inet_proto . inet_service", (), elements)
        return self.use(found)


    def constant_set(self, type_: str, items: list[str]) -> str:
        """`items` as one value, or a named set shared by every rule listing the same ones.

        Not an anonymous set (`{ 80, 443 }`): the kernel binds each anonymous set to its rule by
        walking the whole transaction so far, so a full apply with N of them costs O(N × its
        length) — 5,455 of them were ~60% of a 115k-rule apply (README "Decision maps")."""
        if len(items) == 1:
            return items[0]
        key = ("constant", type_, tuple(items))
        found = self._rendered.get(key)
        if found is None:
            interval = any("-" in i or "/" in i for i in items)
            name = f"k{'i' if interval else 'h'}-{_short_hash(type_, *items)}"
            found = self._rendered[key] = NftSet(name, type_, ("interval",) if interval else (), frozenset(items))
        return f"@{self.use(found)}"


def _port_items(ports: Iterable[PortRange]) -> list[str]:
    """Port ranges as set elements: overlapping and adjacent ones merged (an interval set refuses
    overlaps), in order."""
    merged: list[list[int]] = []
    for first, last in sorted((p.first, p.last) for p in ports):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [str(a) if a == b else f"{a}-{b}" for a, b in merged]


def _entity(
    book: SetBook, entity: EntityRule, policy_ns: str | None, protocol: int | None, version: int, side: str
) -> list[list[str]] | None:
    """Alternatives (OR) of match-lists (AND) for one side; None when it can never match."""
    _, l3, addr_type, _ = L3[version]
    addr = f"{l3} {'saddr' if side == 'source' else 'daddr'}"
    port_field = "th sport" if side == "source" else "th dport"
    base: list[str] = []
    if entity.services is not None:
        return None  # no EndpointSlices are loaded: a service has no known backends
    if entity.nets:
        base.append(f"{addr} {book.constant_set(addr_type, [_net_text(n) for n in collapse(entity.nets)])}")
    if entity.not_nets:
        base.append(f"{addr} != {book.constant_set(addr_type, [_net_text(n) for n in collapse(entity.not_nets)])}")
    positive = entity_selector(entity, policy_ns)
    if positive is not None:
        base.append(f"{addr} @{book.selector_set(positive, version)}")
    if entity.not_selector is not None:
        base.append(f"{addr} != @{book.selector_set(entity.not_selector, version)}")

    def named_match(port: NamedPort, negate: bool) -> str:
        name = book.named_port_set(positive, port.name, protocol, version)
        return f"{addr} . meta l4proto . {port_field} {'!= ' if negate else ''}@{name}"

    if entity.not_ports:
        numbers = _port_items(p for p in entity.not_ports if isinstance(p, PortRange))
        if numbers:
            base.append(f"{port_field} != {book.constant_set('inet_service', numbers)}")
        base += [named_match(p, True) for p in entity.not_ports if isinstance(p, NamedPort)]
    if not entity.ports:
        return [base]
    alternatives: list[list[str]] = []
    numbers = _port_items(p for p in entity.ports if isinstance(p, PortRange))
    if numbers:
        alternatives.append([*base, f"{port_field} {book.constant_set('inet_service', numbers)}"])
    alternatives += [[*base, named_match(p, False)] for p in entity.ports if isinstance(p, NamedPort)]
    return alternatives


def rule_matches(book: SetBook, rule: Rule, policy_ns: str | None, version: int) -> list[str]:
    """nft match expressions for `rule` (already rendered for this family); [] = never matches."""
    nfproto, _, _, icmp_word = L3[version]
    head = [f"meta nfproto {nfproto}"]
    if rule.protocol is not None:
        head.append(f"meta l4proto {proto_word(rule.protocol)}")
    if rule.not_protocol is not None:
        head.append(f"meta l4proto != {proto_word(rule.not_protocol)}")
    if rule.icmp is not None:
        head.append(f"{icmp_word} type {rule.icmp.type}")
        if rule.icmp.code is not None:
            head.append(f"{icmp_word} code {rule.icmp.code}")
    if rule.not_icmp is not None:
        if rule.not_icmp.code is None:
            head.append(f"{icmp_word} type != {rule.not_icmp.type}")
        else:
            head.append(f"{icmp_word} type . {icmp_word} code != {{ {rule.not_icmp.type} . {rule.not_icmp.code} }}")
    src = _entity(book, rule.source, policy_ns, rule.protocol, version, "source")
    dst = _entity(book, rule.destination, policy_ns, rule.protocol, version, "destination")
    if src is None or dst is None:
        return []
    return [" ".join(head + s + d) for s in src for d in dst]
