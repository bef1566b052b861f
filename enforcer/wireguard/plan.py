"""The desired WireGuard state of a lab: FelixConfiguration + lab plan + public keys → tunnels.

Pure: no kernel, no root, no I/O. `enforcer.wireguard.manager` applies a plan.

Per node and per enabled family (`wireguardEnabled` → IPv4, `wireguardEnabledV6` → IPv6,
independently, as in Calico):

- one interface: `ftwg0` for IPv4 (Calico's `wireguard.cali`, UDP 51820) and `ftwg0v6` for IPv6
  (Calico's `wg-v6.cali`, UDP 51821), each with its own key pair;
- one peer per other node that has a public key for that family: endpoint = the peer's underlay
  address of that family and the family's port, allowed IPs = the peer's pod prefixes of that
  family (its pod CIDRs, plus any of its pods' addresses outside them: what the lab routes to it);
- routes for exactly those prefixes onto the interface, in routing table 1, used through the
  rule `not iif lo lookup 1` at priority 99 (Calico's wireguardRoutingRulePriority default): the
  main table keeps the plain routes via `eth0`, so removing the rule restores plain routing;
  while the rule is in, a prefix whose device is gone is unreachable, never sent in the clear;
- MTU: the underlay's MTU minus 60 (IPv4) or 80 (IPv6), Calico's WireGuard overheads; the pods'
  veths get the smallest tunnel MTU of the node (Calico's veth MTU), or the underlay MTU when
  no family is encrypted.

What is encrypted: traffic a node forwards between its pods and another node's pods. Traffic the
node itself originates (`iif lo`) keeps to the main table and the underlay — host-to-pod and
host-to-host traffic is encrypted in Calico only with `wireguardHostEncryptionEnabled`, and a
host talking from its underlay address could not pass the peer's allowed-IPs check anyway. It
also keeps the tunnel's own UDP out of the tunnel without a firewall mark.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from enforcer.lab.spec import LabPlan, NodePlan, host_network
from enforcer.model import WIREGUARD_PORTS, FelixConfiguration, IPAddress, IPNetwork

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
INTERFACES: dict[int, str] = {4: "ftwg0", 6: "ftwg0v6"}
CALICO_INTERFACES: dict[int, str] = {4: "wireguard.cali", 6: "wg-v6.cali"}
PORTS: dict[int, int] = WIREGUARD_PORTS
OVERHEAD: dict[int, int] = {4: 60, 6: 80}
ROUTE_TABLE = 1
RULE_PRIORITY = 99
DEFAULT_MTU = 1500
MIN_MTU: dict[int, int] = {4: 576, 6: 1280}


def enabled_families(felix: FelixConfiguration) -> tuple[Family, ...]:
    """The families FelixConfiguration `default` encrypts."""
    out: list[Family] = []
    if felix.wireguard_enabled:
        out.append(4)
    if felix.wireguard_enabled_v6:
        out.append(6)
    return tuple(out)


def tunnel_mtu(underlay_mtu: int, family: int) -> int:
    return underlay_mtu - OVERHEAD[family]


@dataclass(frozen=True)
class PeerPlan:
    node: str
    public_key: str
    endpoint: IPAddress
    port: int
    allowed_ips: tuple[IPNetwork, ...]

    @property
    def endpoint_text(self) -> str:
        host = f"[{self.endpoint}]" if self.endpoint.version == 6 else str(self.endpoint)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class TunnelPlan:
    """One WireGuard interface of one node."""

    node: str
    netns: str
    family: Family
    interface: str
    port: int
    mtu: int
    public_key: str
    peers: tuple[PeerPlan, ...]

    @property
    def routes(self) -> tuple[IPNetwork, ...]:
        """What goes onto the interface: every peer's allowed IPs."""
        return tuple(net for peer in self.peers for net in peer.allowed_ips)


@dataclass(frozen=True)
class PodLink:
    netns: str  # the pod's namespace (its `eth0`)
    interface: str  # the node-side `cali…`


@dataclass(frozen=True)
class NodeWireGuard:
    node: str
    netns: str
    tunnels: tuple[TunnelPlan, ...]  # one per enabled family that the node can have
    underlay_mtu: int
    pod_mtu: int
    pods: tuple[PodLink, ...]

    def tunnel(self, family: int) -> TunnelPlan | None:
        return next((t for t in self.tunnels if t.family == family), None)


@dataclass(frozen=True)
class WireGuardPlan:
    lab_id: str
    families: tuple[Family, ...]  # enabled in FelixConfiguration
    nodes: tuple[NodeWireGuard, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        return bool(self.families)

    def node(self, name: str) -> NodeWireGuard:
        for node in self.nodes:
            if node.node == name:
                return node
        raise KeyError(name)

    def describe(self) -> str:
        """A stable text form (for tests and `--dry-run`-like output)."""
        fams = ", ".join(f"IPv{f}" for f in self.families) or "off"
        lines = [f"wireguard {self.lab_id}: {fams}"]
        for node in self.nodes:
            lines.append(f"node {node.node} ({node.netns}) underlay mtu {node.underlay_mtu}, pod mtu {node.pod_mtu}")
            for t in node.tunnels:
                lines.append(f"  {t.interface} IPv{t.family} port {t.port} mtu {t.mtu} key {t.public_key}")
                for p in t.peers:
                    allowed = ", ".join(map(str, p.allowed_ips))
                    lines.append(f"    peer {p.node} {p.public_key} endpoint {p.endpoint_text} allowed {allowed}")
        lines += [f"warning {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


def owned_prefixes(lab: LabPlan, node: NodePlan) -> tuple[IPNetwork, ...]:
    """What the lab routes to `node`: its pod CIDRs, and its pods' addresses outside them."""
    prefixes: list[IPNetwork] = list(node.pod_cidrs)
    for pod in lab.pods:
        if pod.node != node.name:
            continue
        for address in pod.addresses:
            if not any(address in cidr for cidr in node.pod_cidrs if cidr.version == address.version):
                net = host_network(address)
                if net not in prefixes:
                    prefixes.append(net)
    return tuple(prefixes)


def plan_wireguard(
    felix: FelixConfiguration,
    lab: LabPlan,
    public_keys: Mapping[tuple[str, int], str],
    underlay_mtu: Mapping[str, int] | int = DEFAULT_MTU,
) -> WireGuardPlan:
    """The WireGuard state of every node of `lab`.

    `public_keys` maps (node, family) to the node's published public key for that family; a node
    without one for an enabled family gets no tunnel of that family, and its pods stay reachable
    in the clear (Calico does the same for nodes that are not WireGuard-ready). `underlay_mtu` is
    the MTU of the nodes' `eth0` (one value for all, or per node).
    """
    families = enabled_families(felix)
    warnings: list[str] = []
    prefixes = {n.name: owned_prefixes(lab, n) for n in lab.nodes}

    def mtu_of(node: str) -> int:
        return underlay_mtu if isinstance(underlay_mtu, int) else underlay_mtu.get(node, DEFAULT_MTU)

    nodes: list[NodeWireGuard] = []
    for node in lab.nodes:
        base = mtu_of(node.name)
        tunnels: list[TunnelPlan] = []
        for family in families:
            key = public_keys.get((node.name, family))
            if key is None:
                warnings.append(f"node {node.name} has no IPv{family} public key: no IPv{family} tunnel")
                continue
            if node.next_hop(family) is None:
                warnings.append(f"node {node.name} has no IPv{family} underlay address: no IPv{family} tunnel")
                continue
            mtu = tunnel_mtu(base, family)
            if mtu < MIN_MTU[family]:
                warnings.append(f"node {node.name}: underlay MTU {base} leaves {mtu} for IPv{family}: no tunnel")
                continue
            peers: list[PeerPlan] = []
            for other in lab.nodes:
                if other.name == node.name:
                    continue
                peer_key = public_keys.get((other.name, family))
                endpoint = other.next_hop(family)
                allowed = tuple(p for p in prefixes[other.name] if p.version == family)
                if peer_key is None or endpoint is None or not allowed:
                    continue  # no tunnel to it: its pods stay on the plain route
                peers.append(PeerPlan(other.name, peer_key, endpoint, PORTS[family], allowed))
            tunnels.append(TunnelPlan(node.name, node.netns, family, INTERFACES[family], PORTS[family], mtu, key,
                                      tuple(peers)))
        pod_mtu = min((t.mtu for t in tunnels), default=base)
        pods = tuple(PodLink(p.netns, p.interface) for p in lab.pods if p.node == node.name)
        nodes.append(NodeWireGuard(node.name, node.netns, tuple(tunnels), base, pod_mtu, pods))
    return WireGuardPlan(lab.lab_id, families, tuple(nodes), tuple(warnings))


__all__ = [
    "CALICO_INTERFACES",
    "FAMILIES",
    "INTERFACES",
    "OVERHEAD",
    "PORTS",
    "RULE_PRIORITY",
    "ROUTE_TABLE",
    "Family",
    "NodeWireGuard",
    "PeerPlan",
    "PodLink",
    "TunnelPlan",
    "WireGuardPlan",
    "enabled_families",
    "owned_prefixes",
    "plan_wireguard",
    "tunnel_mtu",
]
