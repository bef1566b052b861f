"""Address sets that rule selectors and named ports resolve to (§1.8, §2.11)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from enforcer.model import IPAddress, IPNetwork

V6_BIT = 1 << 128


def ip_key(ip: IPAddress) -> int:
    """One integer per address across both families (IPv6 above 2**128): cheap to hash and compare,
    unlike ipaddress objects, whose hashing and comparison run in Python."""
    return int(ip) | V6_BIT if ip.version == 6 else int(ip)


def net_range(net: IPNetwork) -> tuple[int, int]:
    first = ip_key(net.network_address)
    return first, first + net.num_addresses - 1


@dataclass(frozen=True)
class IPSet:
    """Member addresses of a selector: single hosts hashed, wider networks scanned."""

    hosts: frozenset[IPAddress]
    nets: tuple[IPNetwork, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_host_keys", frozenset(ip_key(h) for h in self.hosts))
        object.__setattr__(self, "_ranges", tuple(net_range(n) for n in self.nets))

    @classmethod
    def of(cls, networks: Iterable[IPNetwork]) -> IPSet:
        hosts: set[IPAddress] = set()
        nets: list[IPNetwork] = []
        for net in networks:
            if net.num_addresses == 1:
                hosts.add(net.network_address)
            else:
                nets.append(net)
        return cls(frozenset(hosts), tuple(sorted(set(nets), key=lambda n: (n.version, n))))

    def contains_key(self, key: int) -> bool:
        """Membership of an address given as `ip_key(address)`: the evaluator's hot path."""
        if key in self._host_keys:  # type: ignore[attr-defined]
            return True
        for first, last in self._ranges:  # type: ignore[attr-defined]
            if first <= key <= last:
                return True
        return False

    def __contains__(self, ip: object) -> bool:
        if ip in self.hosts:
            return True
        return any(ip in net for net in self.nets)

    def networks(self, version: int | None = None) -> list[IPNetwork]:
        """Every member as a network, for rendering into nftables sets."""
        from ipaddress import ip_network

        out: list[IPNetwork] = [ip_network(h) for h in self.hosts]
        out.extend(self.nets)
        if version is not None:
            out = [n for n in out if n.version == version]
        return sorted(set(out), key=lambda n: (n.version, n))

    def __len__(self) -> int:
        return len(self.hosts) + len(self.nets)


@dataclass(frozen=True)
class NamedPortSet:
    """(address, protocol, port) triples for endpoints that declare a port of a given name."""

    members: frozenset[tuple[IPAddress, int, int]]

    def __contains__(self, item: object) -> bool:
        return item in self.members

    def __len__(self) -> int:
        return len(self.members)
