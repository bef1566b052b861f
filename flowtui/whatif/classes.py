"""Equivalence classes of addresses and ports: flows whose evaluation cannot differ.

The evaluator decides a flow from nothing but these facts about it (enforcer/evaluate):

* **who each end is** (`peer_for_address`: the owner of the exact address) — for a pod its
  labels, profiles and namespace (what selects it), and which node it is on; for a node which
  host endpoints govern its `eth0` and `cali+` interfaces (`host_endpoint_for`); outside hosts
  and unknown addresses are only "not a pod or node";
* **which node relation holds** between the two ends (same node or not: `stages_for`);
* **the IP version**;
* **the truth of every address test** in every rule and failsafe: membership in each CIDR of
  `nets`/`notNets`, in each selector's address set (`ClusterState.ipset`), in each named-port set
  as (address, protocol, port) (`ClusterState.named_ports`), in failsafe CIDRs;
* **the truth of every port test**: which port ranges contain the port, whether it is a
  failsafe port or a port some endpoint names, whether it is null;
* the protocol and the ICMP type and code, which are kept as they are.

So two addresses with the same owner signature and the same membership in every address set
used by any rule are interchangeable, and so are two ports inside the same elementary interval
of all range boundaries. An address class is computed here for every distinct address of a flow
frame (vectorised membership: sorted addresses and `searchsorted` per CIDR, hash lookups for
single hosts, bit-packed rows and `numpy.unique` to number the signatures), jointly for every
policy set compared, so the classes are valid for all of them.

Node factoring: a pod's class records its node's *host-endpoint signature*, not the node's name;
the flow key then records whether both ends are on the same node. That is exact because the
evaluator uses a node only through its host endpoints and through that equality. It is used when
every compared set places every address on the same node (edits to pods or nodes turn it off and
the node name becomes part of the class instead).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from enforcer.model import EntityRule, IPAddress, IPNetwork, NamedPort
from enforcer.resolve import ClusterState, Endpoint
from enforcer.resolve.ipsets import IPSet, NamedPortSet
from enforcer.resolve.selectors import entity_selector

INVALID = 0  # class of addresses that are not addresses
HEP_INTERFACES = ("eth0", "cali+")  # the interfaces the evaluator asks host_endpoint_for() about
NULL_PORT = 65536  # index of "no port" in the port lookup tables


# --------------------------------------------------------------------------------------------
# What rules test


def rule_sides(state: ClusterState) -> Iterator[tuple[str, EntityRule, str | None, int | None]]:
    """(side, entity, policy namespace, rule protocol) of every rule side of every policy
    (active or not) and profile."""
    for pol in state.resources.policies:
        for rule in (*pol.ingress, *pol.egress):
            yield "source", rule.source, pol.namespace, rule.protocol
            yield "destination", rule.destination, pol.namespace, rule.protocol
    for prof in state.profiles.values():
        for rule in (*prof.ingress, *prof.egress):
            yield "source", rule.source, None, rule.protocol
            yield "destination", rule.destination, None, rule.protocol


@dataclass
class Tests:
    """Every address set and port boundary the rules of some policy sets look at."""

    ipsets: dict[IPSet, int]
    nets: dict[IPNetwork, int]
    named: dict[NamedPortSet, int]
    src_ports: set[int]  # boundaries: a port class starts at each
    dst_ports: set[int]


def collect_tests(states: Sequence[ClusterState]) -> Tests:
    """The union of what the rules of every state test (as `enforcer.evaluate.match` compiles them)."""
    tests = Tests({}, {}, {}, set(), set())
    named_values: set[int] = set()
    seen: set[tuple[int, str, EntityRule, str | None, int | None]] = set()
    for sid, state in enumerate(states):
        # states that share address-set caches answer alike: look at each rule side once
        cache = getattr(state, "_ipsets", None)
        shared = next((i for i, s in enumerate(states[:sid])
                       if cache is not None and getattr(s, "_ipsets", None) is cache), sid)
        for side, entity, namespace, protocol in rule_sides(state):
            if entity.uses_selectors or entity.ports or entity.not_ports or entity.nets or entity.not_nets:
                mark = (shared, side, entity, namespace, protocol)
                if mark in seen:
                    continue
                seen.add(mark)
            else:
                continue
            for net in (*entity.nets, *entity.not_nets):
                tests.nets.setdefault(net, len(tests.nets))
            positive = entity_selector(entity, namespace)
            if positive is not None:
                tests.ipsets.setdefault(state.ipset(positive), len(tests.ipsets))
            if entity.not_selector is not None:
                tests.ipsets.setdefault(state.ipset(entity.not_selector), len(tests.ipsets))
            bounds = tests.src_ports if side == "source" else tests.dst_ports
            for port in (*entity.ports, *entity.not_ports):
                if isinstance(port, NamedPort):
                    tests.named.setdefault(state.named_ports(positive, port.name, protocol), len(tests.named))
                else:
                    bounds.update((port.first, port.last + 1))
        felix = state.felix
        for fs in (*felix.failsafe_inbound, *felix.failsafe_outbound):
            for bounds in (tests.src_ports, tests.dst_ports):
                bounds.update((fs.port, fs.port + 1))
            if fs.net is not None:
                tests.nets.setdefault(fs.net, len(tests.nets))
        for member in state.index.members:
            named_values.update(p.port for p in member.ports)
    for value in named_values:  # named-port sets hold exact ports: each such port is its own class
        for bounds in (tests.src_ports, tests.dst_ports):
            bounds.update((value, value + 1))
    if any(p.do_not_track for state in states for p in state.resources.policies):
        # Untracked policy checks replies, whose ports are the request's swapped.
        both = tests.src_ports | tests.dst_ports
        tests.src_ports, tests.dst_ports = set(both), set(both)
    return tests


# --------------------------------------------------------------------------------------------
# Ports


@dataclass(frozen=True)
class PortClasses:
    """`lut[port]` is the class of a port 0..65535, `lut[NULL_PORT]` the class of "no port";
    `rep[c]` is a port of class c (None for the null class)."""

    lut: npt.NDArray[np.int32]
    rep: tuple[int | None, ...]

    @property
    def count(self) -> int:
        return len(self.rep)

    @property
    def lut64(self) -> npt.NDArray[np.uint64]:
        return self.lut.astype(np.uint64)


def port_classes(bounds: set[int]) -> PortClasses:
    edges = np.array(sorted(b for b in bounds if 0 < b <= 65535), dtype=np.int64)
    ports = np.arange(65536, dtype=np.int64)
    raw = np.searchsorted(edges, ports, side="right")  # interval index; contiguous from 0
    lut = np.empty(65537, dtype=np.int32)
    lut[:65536] = raw
    null = int(raw.max()) + 1
    lut[NULL_PORT] = null
    _, first = np.unique(raw, return_index=True)
    rep: list[int | None] = [int(p) for p in first]
    rep.append(None)
    return PortClasses(lut, tuple(rep))


# --------------------------------------------------------------------------------------------
# Addresses


def parse_address(text: str | None) -> IPAddress | None:
    """`ipaddress.ip_address(text)`, or None when it is not an address. Valid dotted quads and
    plain IPv6 text go through `inet_pton` (several times faster, and it accepts exactly the same
    such texts); anything else (scope ids, invalid text) through `ipaddress`."""
    if not text:
        return None
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        pass
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _endpoint_sig(ep: Endpoint | None) -> object:
    if ep is None:
        return None
    # An all-interfaces HEP differs from a named one (doNotTrack policy never applies to it).
    return (ep.kind, ep.namespace, tuple(sorted(ep.labels.items())), ep.profiles, ep.interface_name == "*")


def node_signature(state: ClusterState, node: str | None) -> object:
    """What the evaluator can tell about a node: the host endpoints that govern it."""
    if node is None:
        return None
    return tuple(_endpoint_sig(state.host_endpoint_for(node, iface)) for iface in HEP_INTERFACES)


Owner = tuple[str, str] | None  # ClusterState.owners: ("pod", "ns/name"), ("node", name), ("external", name)


def owner_signature(state: ClusterState, owner: Owner, factor_nodes: bool) -> tuple[object, ...]:
    """What the evaluator can tell about the owner of an address (see the module docstring)."""
    if owner is None:
        return ("outside",)
    kind, name = owner
    if kind == "pod":
        ep = state.pods_by_ref[name]
        where = node_signature(state, ep.node) if factor_nodes else ep.node
        return ("pod", _endpoint_sig(ep), where)
    if kind == "node":
        return ("node", node_signature(state, name) if factor_nodes else name)
    return ("external",)


def owner_node(state: ClusterState, owner: Owner) -> str | None:
    """The node an owner is on (pods), or is (nodes); None for anything else."""
    if owner is None:
        return None
    kind, name = owner
    if kind == "pod":
        return state.pods_by_ref[name].node
    return name if kind == "node" else None


def owner_label(owner: Owner, text: str) -> str:
    """How reports name a flow end: `ns/pod`, `node:NAME`, `external:NAME`, or the address."""
    if owner is None:
        return text or "(none)"
    kind, name = owner
    return name if kind == "pod" else f"{kind}:{name}"


def peer_label(state: ClusterState, ip: IPAddress | None, text: str) -> str:
    return owner_label(state.owners.get(ip) if ip is not None else None, text)


@dataclass
class AddressClasses:
    """Classes of the distinct addresses of a frame.

    Index i refers to the i-th distinct address (`texts[i]`, `ips[i]`); `cls[i]` is its class
    (INVALID for text that is not an address), `node[i]` its node id (-1 for none) for the
    same-node relation when `factor_nodes`, `label[i]` how reports name it. Per class c:
    `version[c]`, and `reps[c]`, a representative address index for each node id it occurs on.
    """

    texts: list[str]
    ips: list[IPAddress | None]
    cls: npt.NDArray[np.int64]
    node: npt.NDArray[np.int64]
    labels: list[str]
    version: npt.NDArray[np.int64]
    reps: list[dict[int, int]]
    factor_nodes: bool

    @property
    def count(self) -> int:
        return len(self.reps)


class _Members:
    """Membership bits, 64 per word, for the distinct addresses."""

    def __init__(self, ips: list[IPAddress | None], columns: int) -> None:
        self.words = np.zeros((len(ips), max(1, (columns + 63) // 64)), dtype=np.uint64)
        # addresses by integer value: hashing ipaddress objects is slow, hashing ints is not
        # (scoped IPv6 addresses share their twin's integer, but are classes of their own anyway)
        self.pos4: dict[int, int] = {}
        self.pos6: dict[int, int] = {}
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for i, ip in enumerate(ips):
            if ip is None:
                continue
            (v4 if ip.version == 4 else v6).append((int(ip), i))
            if getattr(ip, "scope_id", None) is None:  # the unscoped twin owns the integer
                (self.pos4 if ip.version == 4 else self.pos6)[int(ip)] = i
        v4.sort()
        v6.sort()
        self.v4_int = np.array([a for a, _ in v4], dtype=np.uint64)
        self.v4_idx = np.array([i for _, i in v4], dtype=np.int64)
        self.v6_int = [a for a, _ in v6]
        self.v6_idx = np.array([i for _, i in v6], dtype=np.int64)
        self._rows: list[npt.NDArray[np.int64]] = []
        self._cols: list[int] = []

    def row(self, ip: IPAddress) -> int | None:
        return (self.pos4 if type(ip) is ipaddress.IPv4Address else self.pos6).get(ip._ip)  # type: ignore[union-attr]

    def set(self, rows: npt.NDArray[np.int64] | list[int], column: int) -> None:
        if len(rows):
            self._rows.append(np.asarray(rows, dtype=np.int64))
            self._cols.append(column)

    def finish(self) -> npt.NDArray[np.uint64]:
        """The membership words, every `set` applied at once."""
        if self._rows:
            rows = np.concatenate(self._rows)
            cols = np.repeat(np.array(self._cols, dtype=np.int64), [len(r) for r in self._rows])
            np.bitwise_or.at(self.words, (rows, cols // 64), np.left_shift(np.uint64(1), (cols % 64).astype(np.uint64)))
            self._rows, self._cols = [], []
        return self.words

    def net(self, net: IPNetwork, column: int) -> None:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 4:
            a = int(np.searchsorted(self.v4_int, np.uint64(lo), side="left"))
            b = int(np.searchsorted(self.v4_int, np.uint64(hi), side="right"))
            self.set(self.v4_idx[a:b], column)
        else:
            a = bisect.bisect_left(self.v6_int, lo)
            b = bisect.bisect_right(self.v6_int, hi)
            self.set(self.v6_idx[a:b], column)

    def hosts(self, hosts: frozenset[IPAddress], column: int) -> None:
        p4, p6 = self.pos4, self.pos6
        rows = []
        for h in hosts:
            i = (p4 if type(h) is ipaddress.IPv4Address else p6).get(h._ip)  # type: ignore[union-attr]
            if i is not None:
                rows.append(i)
        self.set(rows, column)


def address_classes(
    texts: list[str], states: Sequence[ClusterState], tests: Tests, *, factor_nodes: bool | None = None
) -> AddressClasses:
    """Number the classes of `texts` (distinct address strings) under every state in `states`."""
    ips = [parse_address(t) for t in texts]
    # owners, once per distinct owner map (paired states share theirs)
    maps: list[Mapping[IPAddress, tuple[str, str]]] = []
    state_map: list[int] = []
    for state in states:
        owners = state.owners
        found = next((i for i, m in enumerate(maps) if m is owners), None)
        if found is None:
            found = len(maps)
            maps.append(owners)
        state_map.append(found)
    owners_of: list[tuple[Owner, ...]] = [
        tuple(m.get(ip) for m in maps) if ip is not None else (None,) * len(maps) for ip in ips
    ]
    node_cache: dict[tuple[int, Owner], str | None] = {}

    def node_in(si: int, owner: Owner) -> str | None:
        key = (si, owner)
        if key not in node_cache:
            node_cache[key] = owner_node(states[si], owner)
        return node_cache[key]

    nodes_by_state = [[node_in(si, o[state_map[si]]) for o in owners_of] for si in range(len(states))]
    if factor_nodes is None:
        factor_nodes = all(n == nodes_by_state[0] for n in nodes_by_state[1:])

    # membership columns: selector sets, CIDRs, then one per (named-port set, protocol, port)
    named_cols: dict[tuple[int, int, int], int] = {}
    named_members: list[tuple[int, IPAddress]] = []
    base = len(tests.ipsets) + len(tests.nets)
    for nps, sid in tests.named.items():
        for address, proto, port in nps.members:
            col = named_cols.setdefault((sid, proto, port), base + len(named_cols))
            named_members.append((col, address))
    members = _Members(ips, base + len(named_cols))
    for ipset, col in tests.ipsets.items():
        members.hosts(ipset.hosts, col)
        for net in ipset.nets:
            members.net(net, col)
    for net, col in tests.nets.items():
        members.net(net, len(tests.ipsets) + col)
    named_rows: dict[int, list[int]] = {}
    for col, member in named_members:
        row = members.row(member)
        if row is not None:
            named_rows.setdefault(col, []).append(row)
    for col, rows in named_rows.items():
        members.set(rows, col)
    words = members.finish()

    # owner signatures, numbered (computed once per distinct owner)
    peer_ids: dict[tuple[object, ...], int] = {}
    by_owners: dict[tuple[Owner, ...], int] = {}
    peers = np.zeros(len(ips), dtype=np.uint64)
    for i, ip in enumerate(ips):
        if ip is None:
            continue
        owned = owners_of[i]
        if getattr(ip, "scope_id", None) is not None:
            # fe80::1%eth0: whether it equals its unscoped twin differs between lookups (hashing
            # ipaddress objects vs. their integers); a class of its own is decided as itself
            peers[i] = peer_ids.setdefault(("scoped", str(ip)), len(peer_ids))
            continue
        pid = by_owners.get(owned)
        if pid is None:
            sig = tuple(owner_signature(s, owned[state_map[si]], factor_nodes) for si, s in enumerate(states))
            pid = by_owners[owned] = peer_ids.setdefault(sig, len(peer_ids))
        peers[i] = pid
    versions = np.array([ip.version if ip is not None else 0 for ip in ips], dtype=np.uint64)

    valid = np.array([ip is not None for ip in ips], dtype=bool)
    cls = np.zeros(len(ips), dtype=np.int64)
    if valid.any():
        table = np.ascontiguousarray(np.column_stack([peers, versions, words])[valid])
        view = table.view(np.dtype((np.void, table.dtype.itemsize * table.shape[1]))).ravel()
        _, inverse = np.unique(view, return_inverse=True)
        cls[valid] = inverse.ravel() + 1
    count = int(cls.max()) + 1 if len(cls) else 1

    node_ids: dict[str, int] = {}
    node = np.full(len(ips), -1, dtype=np.int64)
    if factor_nodes:
        for i, name in enumerate(nodes_by_state[0] if nodes_by_state else []):
            if name is not None:
                node[i] = node_ids.setdefault(name, len(node_ids))
    reps: list[dict[int, int]] = [{} for _ in range(count)]
    version = np.zeros(count, dtype=np.int64)
    version[cls] = versions.astype(np.int64)
    # the first address of each (class, node): one representative per node a class occurs on
    pair = cls * (len(node_ids) + 1) + (node + 1)
    _, first = np.unique(pair, return_index=True)
    for i in first.tolist():
        reps[int(cls[i])][int(node[i])] = i
    last = state_map[-1] if states else 0
    labels = [owner_label(o[last] if maps else None, t) for o, t in zip(owners_of, texts, strict=True)]
    return AddressClasses(texts, ips, cls, node, labels, version, reps, factor_nodes)
