"""Which policy stages a flow's first packet crosses, in the order the dataplane runs them.

The topology is the lab's, which is Calico's: pods hang off their node on `cali*` interfaces,
nodes and outside hosts share one underlay on which each node's interface is `eth0`.

Per node the hooks run raw (untracked) → mangle (preDNAT) → filter. An untracked or preDNAT Allow
marks the packet accepted, and filter then skips host-endpoint policy on that node (normal and
forward) — but never workload policy (§2.9, §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from enforcer.evaluate.flow import Peer
from enforcer.model import Direction
from enforcer.resolve.endpoints import Endpoint
from enforcer.resolve.state import ClusterState

Family = Literal["workload", "untracked", "prednat", "normal", "forward", "to-host"]


@dataclass(frozen=True)
class Stage:
    family: Family
    direction: Direction
    endpoint: Endpoint | None  # None only for the to-host stage
    node: str | None

    def describe(self) -> str:
        ep = self.endpoint
        if self.family == "to-host":
            return f"pod to its own host {self.node}: DefaultEndpointToHostAction"
        assert ep is not None
        if ep.kind == "wep":
            return f"{self.direction} of pod {ep.ref}" + (f" on node {self.node}" if self.node else "")
        what = {
            "untracked": "untracked (doNotTrack, raw table)",
            "prednat": "preDNAT (mangle table)",
            "normal": "host",
            "forward": "forwarded (applyOnForward)",
        }[self.family]
        iface = ep.interface_name or "eth0"
        return f"{what} {self.direction} of host endpoint {ep.name} ({iface} on node {self.node})"


def _host_out(state: ClusterState, node: str) -> list[Stage]:
    """Host-originated traffic leaving through eth0: raw OUTPUT, then filter OUTPUT."""
    hep = state.host_endpoint_for(node)
    if hep is None:
        return []
    return [Stage("untracked", "egress", hep, node), Stage("normal", "egress", hep, node)]


def _arrive(state: ClusterState, node: str, dst: Peer) -> list[Stage]:
    """A packet entering `node` on eth0, bound for the node itself or one of its pods."""
    hep = state.host_endpoint_for(node)
    stages: list[Stage] = []
    if hep is not None:
        stages += [Stage("untracked", "ingress", hep, node), Stage("prednat", "ingress", hep, node)]
        stages.append(Stage("normal" if dst.kind == "node" else "forward", "ingress", hep, node))
    if dst.kind == "pod":
        assert dst.endpoint is not None
        stages.append(Stage("workload", "ingress", dst.endpoint, node))
    return stages


def stages_for(state: ClusterState, src: Peer, dst: Peer, version: int = 4) -> list[Stage]:
    """The policy stages between `src` and `dst`, source side first.

    With WireGuard on for the family, pod-to-pod traffic between nodes leaves and enters through
    the tunnel interface, not `eth0`: no host endpoint stage sees it (only the encrypted UDP).
    """
    if (src.kind == "pod" and dst.kind == "pod" and src.node is not None and dst.node is not None
            and src.node != dst.node and state.felix.wireguard(version)):
        assert src.endpoint is not None and dst.endpoint is not None
        return [Stage("workload", "egress", src.endpoint, src.node),
                Stage("workload", "ingress", dst.endpoint, dst.node)]
    stages: list[Stage] = []
    leaves = True  # does the packet leave the source's node onto the underlay?
    if src.kind == "pod":
        assert src.endpoint is not None
        stages.append(Stage("workload", "egress", src.endpoint, src.node))
        if dst.kind == "pod" and src.node is not None and dst.node == src.node:
            assert dst.endpoint is not None
            stages.append(Stage("workload", "ingress", dst.endpoint, src.node))
            leaves = False
        elif dst.kind == "node" and src.node is not None and dst.name == src.node:
            stages.append(Stage("to-host", "ingress", None, src.node))
            leaves = False
        elif src.node is not None:
            hep = state.host_endpoint_for(src.node)
            if hep is not None:
                stages.append(Stage("forward", "egress", hep, src.node))
    elif src.kind == "node":
        if dst.node == src.name:
            return []  # to itself or to a local pod: host → local workload is not policed
        stages += _host_out(state, src.name)

    if not leaves:
        return stages
    if dst.kind == "pod" and dst.node is None:
        assert dst.endpoint is not None
        stages.append(Stage("workload", "ingress", dst.endpoint, None))
    elif dst.kind in ("pod", "node") and dst.node is not None:
        stages += _arrive(state, dst.node, dst)
    return stages
