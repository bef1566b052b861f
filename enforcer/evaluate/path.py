"""Which policy stages a flow's first packet crosses, in the order the dataplane runs them.

The topology is the lab's, which is Calico's: pods hang off their node on `cali*` interfaces,
nodes and outside hosts share one underlay on which each node's interface is `eth0`; with
WireGuard on, pod traffic between nodes crosses the tunnel interface instead of `eth0`.

Per node a packet meets the hooks raw (untracked) → mangle (preDNAT) → filter, and each hook picks
the host endpoint of the interface the packet crosses (felix/rules/static.go, dispatch.go,
dataplane/linux/endpoint_mgr.go):

- `eth0` is governed by the HEP naming it (or holding its addresses), else by the node's
  all-interfaces HEP (`interfaceName: "*"`); pod interfaces and the tunnel only by the latter;
- raw PREROUTING skips packets from pods, and doNotTrack policy of an all-interfaces HEP is
  ignored (Felix logs "not supported"): untracked stages exist for named HEPs only;
- mangle PREROUTING dispatches every interface: an all-interfaces HEP's preDNAT policy also sees
  packets from local pods and from the tunnel;
- filter INPUT sends pod traffic to the workload-to-host chain (the pod's egress policy, then
  DefaultEndpointToHostAction) before any host endpoint policy, so no HEP's normal ingress policy
  sees it;
- filter FORWARD runs the incoming interface's HEP forward policy (unless raw/preDNAT accepted the
  packet), the workload chains, then the outgoing interface's HEP forward policy — an
  all-interfaces HEP's applyOnForward policy applies to pod and tunnel traffic too.

An untracked or preDNAT Allow marks the packet accepted: filter then skips that node's host
endpoint normal ingress and forward ingress policy (§2.9, §3.3), never workload policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from enforcer.evaluate.flow import Peer
from enforcer.model import Direction
from enforcer.resolve.endpoints import Endpoint
from enforcer.resolve.state import ClusterState

Family = Literal["workload", "untracked", "prednat", "normal", "forward", "to-host"]
Interface = Literal["eth0", "pod", "tunnel"]  # the kinds of interface a packet crosses on a node
VIA = {"eth0": "eth0", "pod": "a pod interface", "tunnel": "the WireGuard tunnel"}


@dataclass(frozen=True)
class Stage:
    family: Family
    direction: Direction
    endpoint: Endpoint | None  # None only for the to-host stage
    node: str | None
    via: Interface = "eth0"  # for host endpoint stages: the interface the packet crosses

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
        iface = VIA[self.via] if ep.interface_name == "*" else ep.interface_name or "eth0"
        star = ", all interfaces" if ep.interface_name == "*" else ""
        return f"{what} {self.direction} of host endpoint {ep.name} ({iface} on node {self.node}{star})"


def host_endpoint_on(state: ClusterState, node: str, via: Interface) -> Endpoint | None:
    """The HEP governing the interface `via` on `node` (§2.9)."""
    if via == "eth0":
        return state.host_endpoint_for(node, "eth0")
    return state.all_interfaces_endpoint(node)


def _hop(state: ClusterState, node: str, src: Peer, dst: Peer,
         inbound: Interface | None, outbound: Interface | None) -> list[Stage]:
    """The stages on `node` of a packet that enters on `inbound` (None: the host sends it) and
    leaves on `outbound` (None: delivered to the host itself)."""
    stages: list[Stage] = []
    if inbound is None:  # raw OUTPUT, filter OUTPUT
        if outbound == "pod" or outbound is None:
            return stages  # host → local workload is not policed
        hep = host_endpoint_on(state, node, outbound)
        if hep is not None:
            if hep.interface_name != "*":
                stages.append(Stage("untracked", "egress", hep, node, outbound))
            stages.append(Stage("normal", "egress", hep, node, outbound))
        return stages
    hep = host_endpoint_on(state, node, inbound)
    if hep is not None:
        if inbound != "pod" and hep.interface_name != "*":
            stages.append(Stage("untracked", "ingress", hep, node, inbound))
        stages.append(Stage("prednat", "ingress", hep, node, inbound))
    if outbound is None:  # filter INPUT
        if inbound == "pod":
            assert src.endpoint is not None
            return [*stages, Stage("workload", "egress", src.endpoint, node),
                    Stage("to-host", "ingress", None, node)]
        if hep is not None:
            stages.append(Stage("normal", "ingress", hep, node, inbound))
        return stages
    # filter FORWARD
    if hep is not None:
        stages.append(Stage("forward", "ingress", hep, node, inbound))
    if inbound == "pod":
        assert src.endpoint is not None
        stages.append(Stage("workload", "egress", src.endpoint, node))
    if outbound == "pod":
        assert dst.endpoint is not None
        stages.append(Stage("workload", "ingress", dst.endpoint, node))
    out = host_endpoint_on(state, node, outbound)
    if out is not None:
        stages.append(Stage("forward", "egress", out, node, outbound))
    return stages


def stages_for(state: ClusterState, src: Peer, dst: Peer, version: int = 4) -> list[Stage]:
    """The policy stages between `src` and `dst`, source side first."""
    tunnel = (src.kind == "pod" and dst.kind == "pod" and src.node is not None and dst.node is not None
              and src.node != dst.node and state.felix.wireguard(version))
    between: Interface = "tunnel" if tunnel else "eth0"
    stages: list[Stage] = []
    if src.kind == "pod":
        assert src.endpoint is not None
        if src.node is None:
            stages.append(Stage("workload", "egress", src.endpoint, None))
        elif dst.kind == "pod" and dst.node == src.node:
            return _hop(state, src.node, src, dst, "pod", "pod")
        elif dst.kind == "node" and dst.name == src.node:
            return _hop(state, src.node, src, dst, "pod", None)
        else:
            stages += _hop(state, src.node, src, dst, "pod", between)
    elif src.kind == "node":
        if dst.node == src.name:
            return []  # to itself or to a local pod: host → local workload is not policed
        stages += _hop(state, src.name, src, dst, None, "eth0")

    if dst.kind == "pod" and dst.node is None:
        assert dst.endpoint is not None
        stages.append(Stage("workload", "ingress", dst.endpoint, None))
    elif dst.kind in ("pod", "node") and dst.node is not None:
        stages += _hop(state, dst.node, src, dst, between, "pod" if dst.kind == "pod" else None)
    return stages
