"""What a lab consists of: frozen dataclasses from the cluster view down to links and routes.

`enforcer.lab.plan.plan_lab` fills them in from a ResourceSet; `enforcer.lab.netns` applies
them; `enforcer.lab.state` compares the kernel with them. Pure: no kernel, no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from enforcer.lab.names import UPLINK, Kind, LabError, Target, netns_name, underlay_netns
from enforcer.model import IPAddress, IPNetwork, Pod

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

UNDERLAY_V4 = ipaddress.IPv4Network("172.31.0.0/24")
UNDERLAY_V6 = ipaddress.IPv6Network("fd00:172:31::/64")
# The lab's etcd members: a range of their own, so adding nodes never moves a member (its
# address is in its certificate and in every other member's peer list).
ETCD_V4 = ipaddress.IPv4Network("172.31.254.0/24")
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
CALI_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::ecee:eeff:feee:eeee")  # EUI-64 link-local of CALI_MAC
# The kernel derives it from the MAC anyway; the plan states it so status can check it.
CALI_LINK_LOCAL = ipaddress.IPv6Interface(f"{GATEWAY_V6}/64")
MAX_DEFAULT_INDEX = 255

Sysctls = tuple[tuple[str, str], ...]  # (path under /proc/sys, value)


def default_pod_cidr(index: int, version: int) -> IPNetwork:
    """The pod CIDR of the node at `index` when it declares none for that IP version."""
    if not 0 <= index <= MAX_DEFAULT_INDEX:
        raise LabError(f"node index {index} has no default pod CIDR (more than 256 nodes)")
    if version == 4:
        return ipaddress.IPv4Network(f"10.244.{index}.0/24")
    return ipaddress.IPv6Network(f"fd00:10:244:{index}::/64")


@functools.lru_cache(maxsize=1 << 16)
def host_network(address: IPAddress) -> IPNetwork:
    """The /32 or /128 network of one address (kept: a plan of the lab makes one per route)."""
    return ipaddress.ip_network(address)


@functools.lru_cache(maxsize=1 << 16)
def host_interface(address: IPAddress) -> IPInterface:
    """`address` as a /32 or /128 interface address (kept, as `host_network`)."""
    return ipaddress.ip_interface(address)


# --------------------------------------------------------------------------------------------
# Kernel-level description


@dataclass(frozen=True)
class Route:
    """One route in a namespace's main table."""

    dst: IPNetwork
    dev: str | None = None
    via: IPAddress | None = None
    type: Literal["unicast", "blackhole"] = "unicast"

    @property
    def version(self) -> int:
        return self.dst.version

    @property
    def scope(self) -> Literal["link", "universe"]:
        """Directly connected IPv4 routes are link scope (IPv6 routes have no scope)."""
        if self.version == 4 and self.type == "unicast" and self.via is None:
            return "link"
        return "universe"

    def __str__(self) -> str:
        if self.dst.prefixlen == 0:
            dst = "default"
        elif self.dst.prefixlen == self.dst.max_prefixlen:
            dst = str(self.dst.network_address)
        else:
            dst = str(self.dst)
        parts = [dst] if self.type == "unicast" else [self.type, dst]
        if self.via is not None:
            parts += ["via", str(self.via)]
        if self.dev is not None:
            parts += ["dev", self.dev]
        if self.scope == "link":
            parts += ["scope", "link"]
        return " ".join(parts)


@dataclass(frozen=True)
class InterfaceSpec:
    """How one interface inside a namespace is configured once it exists."""

    name: str
    addresses: tuple[IPInterface, ...] = ()
    master: str | None = None
    sysctls: Sysctls = ()


@dataclass(frozen=True)
class BridgeSpec:
    netns: str
    name: str


@dataclass(frozen=True)
class VethSpec:
    """A veth pair created in `netns` with its peer created directly inside `peer_netns`.

    Created in place, never in the root namespace and never moved: the netlink request that
    creates the pair names the peer's namespace.
    """

    netns: str
    name: str
    peer_netns: str
    peer_name: str
    peer_mac: str | None = None


@dataclass(frozen=True)
class NetnsSpec:
    """One network namespace: its interfaces, routes and sysctls (`sysctls` apply before links)."""

    name: str
    target: Target
    interfaces: tuple[InterfaceSpec, ...] = ()
    routes: tuple[Route, ...] = ()
    sysctls: Sysctls = ()

    @property
    def kind(self) -> Kind:
        return self.target.kind


# --------------------------------------------------------------------------------------------
# Cluster-level description


@dataclass(frozen=True)
class NodePlan:
    name: str
    index: int
    netns: str
    addresses: tuple[IPAddress, ...]  # on eth0, first of each family is the BGP next hop
    pod_cidrs: tuple[IPNetwork, ...]  # declared, or the defaults for undeclared families
    implicit: bool = False  # only referenced by pods, not declared as a Node
    interface: str = UPLINK

    @property
    def target(self) -> Target:
        return Target("node", self.name)

    def next_hop(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    netns: str
    addresses: tuple[IPAddress, ...]
    interface: str  # node-side cali interface: what the nftables compiler dispatches on
    assigned: bool = False  # addresses came from the lab, not from Pod.ips

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def target(self) -> Target:
        return Target("pod", self.key)


@dataclass(frozen=True)
class ExternalPlan:
    name: str
    netns: str
    addresses: tuple[IPAddress, ...]
    interface: str = UPLINK

    @property
    def target(self) -> Target:
        return Target("ext", self.name)


@dataclass(frozen=True)
class EtcdMemberPlan:
    """One member of the lab's etcd cluster: its own namespace on the underlay, one address."""

    name: str  # m0, m1, ...
    netns: str
    address: ipaddress.IPv4Address

    @property
    def target(self) -> Target:
        return Target("etcd", self.name)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return (self.address,)

    @property
    def client_url(self) -> str:
        return f"https://{self.address}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:{ETCD_PEER_PORT}"


@dataclass(frozen=True)
class LabPlan:
    """Everything a lab consists of, in creation order (underlay, nodes, externals, pods)."""

    lab_id: str
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    externals: tuple[ExternalPlan, ...]
    namespaces: tuple[NetnsSpec, ...]
    bridges: tuple[BridgeSpec, ...]
    veths: tuple[VethSpec, ...]
    warnings: tuple[str, ...] = field(default=())
    etcd: tuple[EtcdMemberPlan, ...] = field(default=())  # the lab's etcd members (`--datastore etcd`)

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"lab {self.lab_id} has no node {name!r}")

    def pod(self, namespace: str, name: str) -> PodPlan:
        for pod in self.pods:
            if pod.namespace == namespace and pod.name == name:
                return pod
        raise LabError(f"lab {self.lab_id} has no pod {namespace}/{name}")

    def external(self, name: str) -> ExternalPlan:
        for ext in self.externals:
            if ext.name == name:
                return ext
        raise LabError(f"lab {self.lab_id} has no external host {name!r}")

    def netns(self, name: str) -> NetnsSpec:
        for spec in self.namespaces:
            if spec.name == name:
                return spec
        raise LabError(f"lab {self.lab_id} has no namespace {name!r}")

    def addresses(self, target: str | Target) -> tuple[IPAddress, ...]:
        """The addresses a target holds (empty for the underlay)."""
        name = netns_name(self.lab_id, target)
        items: tuple[NodePlan | PodPlan | ExternalPlan | EtcdMemberPlan, ...] = (
            *self.nodes, *self.pods, *self.externals, *self.etcd)
        for item in items:
            if item.netns == name:
                return item.addresses
        if name == underlay_netns(self.lab_id):
            return ()
        raise LabError(f"lab {self.lab_id} has no target {target}")

    def describe(self) -> str:
        """A stable text rendering of the plan (for `lab plan` and golden tests)."""
        lines = [f"lab {self.lab_id}"]
        for spec in self.namespaces:
            lines.append(f"netns {spec.name} ({spec.target})")
            for iface in spec.interfaces:
                addrs = " ".join(str(a) for a in iface.addresses)
                master = f" master {iface.master}" if iface.master else ""
                lines.append(f"  link {iface.name}{master}{' ' + addrs if addrs else ''}")
            for route in spec.routes:
                lines.append(f"  route {route}")
            for key, value in spec.sysctls:
                lines.append(f"  sysctl {key}={value}")
            for iface in spec.interfaces:
                for key, value in iface.sysctls:
                    lines.append(f"  sysctl {key}={value}")
        for veth in self.veths:
            lines.append(f"veth {veth.netns}:{veth.name} <-> {veth.peer_netns}:{veth.peer_name}")
        lines.extend(f"warning {w}" for w in self.warnings)
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary: nodes, pods and external hosts with their addresses."""
        return {
            "lab_id": self.lab_id,
            "nodes": [
                {
                    "name": n.name,
                    "netns": n.netns,
                    "addresses": [str(a) for a in n.addresses],
                    "pod_cidrs": [str(c) for c in n.pod_cidrs],
                }
                for n in self.nodes
            ],
            "pods": [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "node": p.node,
                    "netns": p.netns,
                    "interface": p.interface,
                    "addresses": [str(a) for a in p.addresses],
                }
                for p in self.pods
            ],
            "externals": [
                {"name": e.name, "netns": e.netns, "addresses": [str(a) for a in e.addresses]} for e in self.externals
            ],
            "etcd": [{"name": m.name, "netns": m.netns, "address": str(m.address)} for m in self.etcd],
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------
# Helpers for the other stages


def endpoint_interface(plan: LabPlan, pod: Pod | PodPlan | str) -> str:
    """The node-side interface (`cali…`) of a pod in the lab: what nftables dispatches on.

    `pod` is a model Pod, a PodPlan or `NAMESPACE/NAME`. Raises LabError if the pod is not in
    the lab (for instance because it has no node).
    """
    if isinstance(pod, str):
        namespace, sep, name = pod.partition("/")
        if not sep:
            raise LabError(f"expected NAMESPACE/NAME, got {pod!r}")
    else:
        namespace, name = pod.namespace, pod.name
    return plan.pod(namespace, name).interface
