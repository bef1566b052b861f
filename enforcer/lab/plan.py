"""ResourceSet -> LabPlan: what a Calico-like lab of network namespaces consists of.

Pure: no kernel, no root, no I/O. `enforcer.lab.netns` applies a plan; `enforcer.lab.state`
reads back what exists.

Topology (see `enforcer.lab.names` for the naming scheme):

- `ft-<labid>-underlay` holds a Linux bridge `ftbr0`: the machines' L2 network.
- Each node is a namespace whose `eth0` is veth'd to a port of that bridge and carries the
  node's addresses as /32 and /128. Nodes forward. Every underlay member has an on-link host
  route to every other member's addresses, so any address works (no shared subnet needed).
- Each external host is a namespace on the bridge the same way, with exactly its addresses and
  routes to every node's pod prefixes via that node.
- Each pod is a namespace veth'd to its node: `eth0` (pod side) holds the pod IPs as /32 and
  /128 with a default route via 169.254.1.1 (on-link) and via fe80::ecee:eeff:feee:eeee; the
  node side is `cali<hash11>` with MAC ee:ee:ee:ee:ee:ee and that link-local address, proxy
  ARP, proxy NDP and a host route per pod address, as Calico sets it up.
- A node routes the other nodes' pod CIDRs (and any pod address outside them) via that node's
  underlay address, as Calico's BGP mesh would, and blackholes its own pod CIDRs.

Addresses: pods keep `Pod.ips` when given (exactly those); otherwise they get one address per
family from their node's pod CIDR of that family, or from 10.244.<i>.0/24 and
fd00:10:244:<i>::/64 (i = the node's index). Nodes keep their addresses; a family they lack is
assigned from 172.31.0.0/24 or fd00:172:31::/64, so the underlay is always dual-stack. External
hosts have exactly their addresses. Use `lab_resources()` to see the ResourceSet with the lab's
addresses filled in (what the compiler and the evaluator should be given).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from enforcer.lab.names import (
    BRIDGE,
    IFNAMSIZ,
    POD_IF,
    UPLINK,
    LabError,
    Target,
    cali_name,
    check_lab_id,
    netns_name,
    port_name,
    underlay_netns,
)
from enforcer.lab.spec import (
    CALI_LINK_LOCAL,
    CALI_MAC,
    ETCD_V4,
    GATEWAY_V4,
    GATEWAY_V6,
    UNDERLAY_V4,
    UNDERLAY_V6,
    BridgeSpec,
    EtcdMemberPlan,
    ExternalPlan,
    InterfaceSpec,
    IPInterface,
    LabPlan,
    NetnsSpec,
    NodePlan,
    PodPlan,
    Route,
    Sysctls,
    VethSpec,
    default_pod_cidr,
    endpoint_interface,
    host_interface,
    host_network,
)
from enforcer.model import ExternalHost, IPAddress, IPNetwork, Node, Pod, ResourceSet

# --------------------------------------------------------------------------------------------
# Planning


class _Allocator:
    """Hands out addresses from networks, never one that is already taken."""

    def __init__(self, taken: Iterable[IPAddress]) -> None:
        self.taken: set[IPAddress] = set(taken)

    def take(self, network: IPNetwork, what: str) -> IPAddress:
        hosts: Iterator[IPAddress] = iter(network.hosts())
        for address in hosts:
            if address not in self.taken:
                self.taken.add(address)
                return address
        raise LabError(f"no free address left in {network} for {what}")


def _claim(owners: dict[IPAddress, str], addresses: Iterable[IPAddress], owner: str) -> None:
    for address in addresses:
        other = owners.setdefault(address, owner)
        if other != owner:
            raise LabError(f"address {address} is used by both {other} and {owner}")


def _node_order(resources: ResourceSet) -> tuple[list[Node], list[str]]:
    nodes: list[Node] = []
    seen: set[str] = set()
    for node in resources.nodes:
        if node.name in seen:
            raise LabError(f"node {node.name!r} is declared twice")
        seen.add(node.name)
        nodes.append(node)
    implicit: list[str] = []
    for pod in resources.pods:
        if pod.node is not None and pod.node not in seen:
            seen.add(pod.node)
            implicit.append(pod.node)
            nodes.append(Node(name=pod.node))
    return nodes, implicit


def _check_ifname(name: str) -> str:
    if len(name.encode()) >= IFNAMSIZ:
        raise LabError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    return name


MAX_ETCD_MEMBERS = 7


def plan_lab(resources: ResourceSet, lab_id: str = "lab", etcd_members: int = 0) -> LabPlan:
    """Plan the lab for `resources`: namespaces, veths, addresses, routes and sysctls.

    Deterministic: the same resources and id always give the same plan. Raises LabError for
    what cannot be built (duplicate addresses or objects, names too long, address pools full).
    Pods without a node are left out, with a warning in `LabPlan.warnings`. `etcd_members`: that
    many etcd member namespaces (`etcd:m0`...) on the underlay, at fixed addresses of ETCD_V4.
    """
    check_lab_id(lab_id)
    if not 0 <= etcd_members <= MAX_ETCD_MEMBERS:
        raise LabError(f"etcd members: {etcd_members} (use 1 to {MAX_ETCD_MEMBERS}; an odd number keeps a majority)")
    warnings: list[str] = []
    node_objs, implicit = _node_order(resources)
    warnings.extend(f"node {n!r} is not declared; created for its pods" for n in implicit)

    pods: list[Pod] = []
    seen_pods: set[tuple[str, str]] = set()
    for pod in resources.pods:
        if (pod.namespace, pod.name) in seen_pods:
            raise LabError(f"pod {pod.namespace}/{pod.name} is declared twice")
        seen_pods.add((pod.namespace, pod.name))
        if pod.node is None:
            warnings.append(f"pod {pod.namespace}/{pod.name} has no node; left out of the lab")
            continue
        pods.append(pod)

    externals: list[ExternalHost] = []
    seen_ext: set[str] = set()
    for ext in resources.external_hosts:
        if ext.name in seen_ext:
            raise LabError(f"external host {ext.name!r} is declared twice")
        seen_ext.add(ext.name)
        if not ext.addresses:
            warnings.append(f"external host {ext.name!r} has no addresses; unreachable")
        externals.append(ext)

    # Addresses written in the resources are reserved first, then the rest is assigned.
    owners: dict[IPAddress, str] = {}
    for node in node_objs:
        _claim(owners, node.addresses, f"node {node.name} ({node.origin})")
    for ext in externals:
        _claim(owners, ext.addresses, f"external host {ext.name} ({ext.origin})")
    for pod in pods:
        _claim(owners, pod.ips, f"pod {pod.namespace}/{pod.name} ({pod.origin})")
    alloc = _Allocator(owners)

    node_plans: list[NodePlan] = []
    for index, node in enumerate(node_objs):
        addresses = list(node.addresses)
        for version, pool in ((4, UNDERLAY_V4), (6, UNDERLAY_V6)):
            if not any(a.version == version for a in addresses):
                addresses.append(alloc.take(pool, f"node {node.name}"))
        cidrs = list(node.pod_cidrs)
        for version in (4, 6):
            if not any(c.version == version for c in cidrs):
                cidrs.append(default_pod_cidr(index, version))
        node_plans.append(
            NodePlan(
                name=node.name,
                index=index,
                netns=netns_name(lab_id, Target("node", node.name)),
                addresses=tuple(addresses),
                pod_cidrs=tuple(cidrs),
                implicit=node.name in implicit,
            )
        )
    node_by_name = {n.name: n for n in node_plans}

    pod_plans: list[PodPlan] = []
    interfaces: dict[str, str] = {}
    for pod in pods:
        assert pod.node is not None
        node_plan = node_by_name[pod.node]
        key = f"{pod.namespace}/{pod.name}"
        if pod.ips:
            addresses = list(pod.ips)
        else:
            addresses = [
                alloc.take(next(c for c in node_plan.pod_cidrs if c.version == v), f"pod {key}") for v in (4, 6)
            ]
        iface = cali_name(pod.namespace, pod.name)
        if iface in interfaces:
            raise LabError(f"pods {interfaces[iface]} and {key} hash to the same interface {iface}")
        interfaces[iface] = key
        pod_plans.append(
            PodPlan(
                namespace=pod.namespace,
                name=pod.name,
                node=pod.node,
                netns=netns_name(lab_id, Target("pod", key)),
                addresses=tuple(addresses),
                interface=iface,
                assigned=not pod.ips,
            )
        )

    ext_plans = [
        ExternalPlan(ext.name, netns_name(lab_id, Target("ext", ext.name)), ext.addresses) for ext in externals
    ]
    etcd_plans = []
    for i in range(etcd_members):
        member = EtcdMemberPlan(f"m{i}", netns_name(lab_id, Target("etcd", f"m{i}")), ETCD_V4.network_address + 10 + i)
        _claim(owners, member.addresses, f"etcd member {member.name}")
        etcd_plans.append(member)
    return _build(lab_id, node_plans, pod_plans, ext_plans, tuple(warnings), etcd_plans)


# --------------------------------------------------------------------------------------------
# From the cluster view to namespaces, links and routes

_BASE_SYSCTLS: Sysctls = (
    ("net/ipv6/conf/all/accept_dad", "0"),  # addresses usable (and bindable) at once
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv4/conf/all/rp_filter", "0"),  # IPv4 sysctls are inherited from the host: pin them
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/proxy_arp", "0"),
    ("net/ipv4/conf/default/proxy_arp", "0"),
)


def _forwarding(on: bool) -> Sysctls:
    value = "1" if on else "0"
    return (("net/ipv4/ip_forward", value), ("net/ipv6/conf/all/forwarding", value))


def _cali_sysctls(iface: str) -> Sysctls:
    """What Felix writes for a workload interface."""
    return (
        (f"net/ipv4/conf/{iface}/proxy_arp", "1"),
        (f"net/ipv4/neigh/{iface}/proxy_delay", "0"),
        (f"net/ipv4/conf/{iface}/rp_filter", "1"),
        (f"net/ipv4/conf/{iface}/forwarding", "1"),
        (f"net/ipv6/conf/{iface}/proxy_ndp", "1"),
        (f"net/ipv6/conf/{iface}/forwarding", "1"),
    )


def _owned_prefixes(node: NodePlan, pods: list[PodPlan]) -> list[IPNetwork]:
    """What a node announces: its pod CIDRs, plus pod addresses of its own outside them."""
    prefixes = list(node.pod_cidrs)
    for pod in pods:
        if pod.node != node.name:
            continue
        for address in pod.addresses:
            if not any(address in cidr for cidr in node.pod_cidrs if cidr.version == address.version):
                prefixes.append(host_network(address))
    return prefixes


def _routes_to_pods(me: str | None, nodes: list[NodePlan], owned: Mapping[str, list[IPNetwork]],
                    versions: set[int]) -> list[Route]:
    """Routes to every other node's prefixes (`owned`: `_owned_prefixes` of each node, made once
    for the whole plan: per node they would cost nodes x pods again)."""
    routes = []
    for node in nodes:
        if node.name == me:
            continue
        for prefix in owned[node.name]:
            hop = node.next_hop(prefix.version)
            if hop is not None and prefix.version in versions:
                routes.append(Route(prefix, dev=UPLINK, via=hop))
    return routes


def _onlink_routes(me: str, members: list[tuple[str, tuple[IPAddress, ...]]]) -> list[Route]:
    my_versions = {a.version for owner, addrs in members if owner == me for a in addrs}
    return [
        Route(host_network(a), dev=UPLINK)
        for owner, addrs in members
        if owner != me
        for a in addrs
        if a.version in my_versions
    ]


def _build(
    lab_id: str,
    nodes: list[NodePlan],
    pods: list[PodPlan],
    externals: list[ExternalPlan],
    warnings: tuple[str, ...],
    etcd: list[EtcdMemberPlan] | None = None,
) -> LabPlan:
    etcd = etcd or []
    underlay = underlay_netns(lab_id)
    bridges = [BridgeSpec(underlay, BRIDGE)]
    veths: list[VethSpec] = []
    ports: list[InterfaceSpec] = [InterfaceSpec(BRIDGE)]
    members: list[tuple[str, tuple[IPAddress, ...]]] = [(n.netns, n.addresses) for n in nodes]
    members += [(e.netns, e.addresses) for e in externals]
    members += [(m.netns, m.addresses) for m in etcd]

    owned = {node.name: _owned_prefixes(node, pods) for node in nodes}
    node_specs: list[NetnsSpec] = []
    for node in nodes:
        port = _check_ifname(port_name("node", node.name))
        ports.append(InterfaceSpec(port, master=BRIDGE))
        veths.append(VethSpec(node.netns, UPLINK, underlay, port))
        local = [p for p in pods if p.node == node.name]
        ifaces = [InterfaceSpec(UPLINK, tuple(host_interface(a) for a in node.addresses))]
        ifaces += [InterfaceSpec(p.interface, (CALI_LINK_LOCAL,), sysctls=_cali_sysctls(p.interface)) for p in local]
        routes = _onlink_routes(node.netns, members)
        # Proxy ARP answers for 169.254.1.1 only if the node has a route to it elsewhere (a real
        # node's default route); this on-link route plays that part without a default route.
        routes.append(Route(host_network(GATEWAY_V4), dev=UPLINK))
        routes += [Route(host_network(a), dev=p.interface) for p in local for a in p.addresses]
        routes += [Route(cidr, type="blackhole") for cidr in node.pod_cidrs]
        routes += _routes_to_pods(node.name, nodes, owned, {4, 6})
        node_specs.append(
            NetnsSpec(
                node.netns,
                node.target,
                tuple(ifaces),
                tuple(routes),
                _BASE_SYSCTLS + _forwarding(True),
            )
        )

    ext_specs: list[NetnsSpec] = []
    for ext in externals:
        port = _check_ifname(port_name("ext", ext.name))
        ports.append(InterfaceSpec(port, master=BRIDGE))
        veths.append(VethSpec(ext.netns, UPLINK, underlay, port))
        versions: set[int] = {a.version for a in ext.addresses}
        routes = _onlink_routes(ext.netns, members)
        routes += _routes_to_pods(None, nodes, owned, versions)
        ext_specs.append(
            NetnsSpec(
                ext.netns,
                ext.target,
                (InterfaceSpec(UPLINK, tuple(host_interface(a) for a in ext.addresses)),),
                tuple(routes),
                _BASE_SYSCTLS + _forwarding(False),
            )
        )

    etcd_specs: list[NetnsSpec] = []
    for member in etcd:  # on the underlay like an outside host; reaches nodes, not pods
        port = _check_ifname(port_name("etcd", member.name))
        ports.append(InterfaceSpec(port, master=BRIDGE))
        veths.append(VethSpec(member.netns, UPLINK, underlay, port))
        etcd_specs.append(
            NetnsSpec(
                member.netns,
                member.target,
                (InterfaceSpec(UPLINK, (host_interface(member.address),)),),
                tuple(_onlink_routes(member.netns, members)),
                _BASE_SYSCTLS + _forwarding(False),
            )
        )

    pod_specs: list[NetnsSpec] = []
    for pod in pods:
        node_netns = next(n.netns for n in nodes if n.name == pod.node)
        veths.append(VethSpec(pod.netns, POD_IF, node_netns, pod.interface, peer_mac=CALI_MAC))
        routes = []
        if any(a.version == 4 for a in pod.addresses):
            routes += [
                Route(host_network(GATEWAY_V4), dev=POD_IF),
                Route(ipaddress.IPv4Network("0.0.0.0/0"), dev=POD_IF, via=GATEWAY_V4),
            ]
        if any(a.version == 6 for a in pod.addresses):
            routes.append(Route(ipaddress.IPv6Network("::/0"), dev=POD_IF, via=GATEWAY_V6))
        pod_specs.append(
            NetnsSpec(
                pod.netns,
                pod.target,
                (InterfaceSpec(POD_IF, tuple(host_interface(a) for a in pod.addresses)),),
                tuple(routes),
                _BASE_SYSCTLS + _forwarding(False),
            )
        )

    underlay_spec = NetnsSpec(
        underlay,
        Target("underlay", ""),
        tuple(ports),
        (),
        _BASE_SYSCTLS
        + _forwarding(False)
        + (("net/ipv6/conf/all/disable_ipv6", "1"), ("net/ipv6/conf/default/disable_ipv6", "1")),
    )
    return LabPlan(
        lab_id=lab_id,
        nodes=tuple(nodes),
        pods=tuple(pods),
        externals=tuple(externals),
        namespaces=(underlay_spec, *node_specs, *ext_specs, *etcd_specs, *pod_specs),
        bridges=tuple(bridges),
        veths=tuple(veths),
        warnings=warnings,
        etcd=tuple(etcd),
    )


# --------------------------------------------------------------------------------------------
# Helpers for the other stages


def lab_resources(resources: ResourceSet, plan: LabPlan) -> ResourceSet:
    """`resources` with the lab's addresses filled in: what the lab's kernel really holds.

    Pods get their lab addresses (unchanged if they had `ips`), nodes their underlay addresses
    and pod CIDRs, and nodes that pods referenced without declaring them are appended.
    """
    placed = {(p.namespace, p.name): p for p in plan.pods}
    pods = tuple(
        replace(pod, ips=placed[(pod.namespace, pod.name)].addresses) if (pod.namespace, pod.name) in placed else pod
        for pod in resources.pods
    )
    by_name = {n.name: n for n in plan.nodes}
    nodes = [
        replace(node, addresses=by_name[node.name].addresses, pod_cidrs=by_name[node.name].pod_cidrs)
        for node in resources.nodes
    ]
    nodes += [Node(name=n.name, addresses=n.addresses, pod_cidrs=n.pod_cidrs) for n in plan.nodes if n.implicit]
    return replace(resources, pods=pods, nodes=tuple(nodes))


__all__ = [
    "BridgeSpec",
    "ExternalPlan",
    "IPInterface",
    "InterfaceSpec",
    "LabPlan",
    "NetnsSpec",
    "NodePlan",
    "PodPlan",
    "Route",
    "Sysctls",
    "VethSpec",
    "endpoint_interface",
    "lab_resources",
    "plan_lab",
]
