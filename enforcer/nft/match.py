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

from enforcer.model import EntityRule, IPAddress, IPNetwork, NamedPort, PortRange, Rule
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


def _v4_text(n: int) -> str:
    """str(IPv4Address(n)), several times faster (rendering formats every pod address)."""
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _v6_text(n: int) -> str:
    """str(IPv6Address(n)): hextets in hex, the longest run of two or more zero hextets (the
    first of equals) as `::` (RFC 5952, as ipaddress prints it)."""
    hextets = [n >> shift & 0xFFFF for shift in range(112, -16, -16)]
    start, length, i = -1, 1, 0
    while i < 8:
        if hextets[i]:
            i += 1
            continue
        j = i
        while j < 8 and not hextets[j]:
            j += 1
        if j - i > length:
            start, length = i, j - i
        i = j
    parts = [f"{h:x}" for h in hextets]
    if start < 0:
        return ":".join(parts)
    return ":".join(parts[:start]) + "::" + ":".join(parts[start + length:])


def ip_text(ip: IPAddress) -> str:
    return _v4_text(int(ip)) if ip.version == 4 else _v6_text(int(ip))


def collapsed_texts(hosts: Iterable[IPAddress], nets: Iterable[IPNetwork], version: int) -> list[str]:
    """`_net_text` of `collapse(hosts and nets of `version`)`, in integers: the same minimal
    cover of the union (merged intervals cut into aligned blocks, largest first), without
    ipaddress objects per member (rendering a node's selector sets spent seconds in them)."""
    bits = 32 if version == 4 else 128
    ranges = sorted([(int(h), int(h)) for h in hosts if h.version == version]
                    + [(int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == version])
    merged: list[list[int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    make = _v4_text if version == 4 else _v6_text
    out: list[str] = []
    for first, last in merged:
        while first <= last:
            size = first & -first or 1 << bits  # the largest block aligned at `first`...
            while size > last - first + 1:  # ...that fits in what is left
                size >>= 1
            prefix = bits + 1 - size.bit_length()
            out.append(str(make(first)) if prefix == bits else f"{make(first)}/{prefix}")
            first += size
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
            members = self.state.ipset(selector)
            texts = collapsed_texts(members.hosts, members.nets, version)
            interval = any("/" in t for t in texts)
            # The set's kind is part of its name, so its type never changes under one name.
            name = f"s{version}{'i' if interval else 'h'}-{_short_hash(selector.uid)}"
            found = self._rendered[(selector, version)] = NftSet(
                name, L3[version][2], ("interval",) if interval else (), frozenset(texts)
            )
        return self.use(found)

    def constant(self, kind: str, type_: str, items: list[str]) -> str:
        """`items` as a match: the one item itself, else a named set of exactly them, shared by
        every rule listing them. Anonymous sets cost the kernel per rule at load time (each is
        a new set, named by scanning the table's sets and bound by walking the transaction: a
        full apply of 1,000 policies spent most of its kernel time there) for a few dozen
        distinct port lists and nets."""
        if len(items) == 1:
            return items[0]
        interval = any("-" in i or "/" in i for i in items)
        elements = frozenset(items)
        key = ("constant", type_, elements)
        found = self._rendered.get(key)
        if found is None:
            name = f"c{kind}{'i' if interval else 'h'}-{_short_hash(type_, *sorted(elements))}"
            found = self._rendered[key] = NftSet(name, type_, ("interval",) if interval else (), elements)
        return f"@{self.use(found)}"

    def named_port_set(self, selector: Selector | None, port: str, protocol: int | None, version: int) -> str:
        key = ("named", selector, port, protocol, version)
        found = self._rendered.get(key)
        if found is None:
            members = self.state.named_ports(selector, port, protocol)
            elements = frozenset(
                f"{ip_text(ip)} . {proto_word(proto)} . {num}" for ip, proto, num in members.members
                if ip.version == version
            )
            name = f"n{version}-{_short_hash(selector.uid if selector else '*', port, protocol)}"
            found = self._rendered[key] = NftSet(name, f"{L3[version][2]} . inet_proto . inet_service", (), elements)
        return self.use(found)


def _port_items(ports: Iterable[PortRange]) -> list[str]:
    """Ports and ranges, overlapping and adjacent ones merged (a named interval set refuses
    overlaps, which an anonymous set merged)."""
    merged: list[list[int]] = []
    for first, last in sorted((p.first, p.last) for p in ports):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [str(first) if first == last else f"{first}-{last}" for first, last in merged]


def _entity(
    book: SetBook, entity: EntityRule, policy_ns: str | None, protocol: int | None, version: int, side: str
) -> list[list[str]] | None:
    """Alternatives (OR) of match-lists (AND) for one side; None when it can never match."""
    _, l3, _, _ = L3[version]
    addr = f"{l3} {'saddr' if side == 'source' else 'daddr'}"
    port_field = "th sport" if side == "source" else "th dport"
    base: list[str] = []
    if entity.services is not None:
        return None  # no EndpointSlices are loaded: a service has no known backends
    if entity.nets:
        nets = [_net_text(n) for n in collapse(entity.nets)]
        base.append(f"{addr} {book.constant(str(version), L3[version][2], nets)}")
    if entity.not_nets:
        nets = [_net_text(n) for n in collapse(entity.not_nets)]
        base.append(f"{addr} != {book.constant(str(version), L3[version][2], nets)}")
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
            base.append(f"{port_field} != {book.constant('p', 'inet_service', numbers)}")
        base += [named_match(p, True) for p in entity.not_ports if isinstance(p, NamedPort)]
    if not entity.ports:
        return [base]
    alternatives: list[list[str]] = []
    numbers = _port_items(p for p in entity.ports if isinstance(p, PortRange))
    if numbers:
        alternatives.append([*base, f"{port_field} {book.constant('p', 'inet_service', numbers)}"])
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
