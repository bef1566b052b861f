"""A flow to decide, and the peers at its two ends."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from enforcer.model import IPAddress, protocol_name
from enforcer.resolve.endpoints import Endpoint
from enforcer.resolve.ipsets import ip_key
from enforcer.resolve.state import ClusterState
from enforcer.resolve.workloads import (
    SERVICE_REFS,
    WORKLOAD_REFS,
    WorkloadError,
    find_workload,
    service_target,
    workload_pod_ref,
)


@dataclass(frozen=True)
class Flow:
    """The first packet of a connection, as the dataplane sees it."""

    src: IPAddress
    dst: IPAddress
    protocol: int
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"source {self.src} and destination {self.dst} are of different IP versions")

    @property
    def version(self) -> int:
        return self.src.version

    @cached_property
    def src_key(self) -> int:
        return ip_key(self.src)

    @cached_property
    def dst_key(self) -> int:
        return ip_key(self.dst)

    def describe(self) -> str:
        proto = protocol_name(self.protocol)
        if self.protocol in (1, 58):
            detail = "" if self.icmp_type is None else f" type {self.icmp_type}"
            detail += "" if self.icmp_code is None else f" code {self.icmp_code}"
            return f"{proto}{detail} {self.src} → {self.dst}"
        sport = f":{self.src_port}" if self.src_port is not None else ""
        dport = f":{self.dst_port}" if self.dst_port is not None else ""
        return f"{proto} {self.src}{sport} → {self.dst}{dport}"


PeerKind = Literal["pod", "node", "external", "outside"]


@dataclass(frozen=True)
class Peer:
    """One end of a flow: a pod, a node (host), a lab outside host, or any other address."""

    kind: PeerKind
    name: str
    address: IPAddress
    node: str | None = None  # the pod's node, or the node itself
    endpoint: Endpoint | None = None  # the pod's workload endpoint

    def describe(self) -> str:
        if self.kind == "pod":
            return f"pod {self.name}"
        if self.kind == "node":
            return f"node {self.name} ({self.address})"
        if self.kind == "external":
            return f"outside host {self.name} ({self.address})"
        return f"outside address {self.address}"


class RefError(ValueError):
    """A flow end that cannot be resolved."""


def resolve_ref(state: ClusterState, ref: str, version: int | None = None) -> Peer:
    """`ns/pod`, `hep:NAME`, `node:NAME`, `external:NAME`, a workload (`deploy/NS/NAME`,
    `sts/`, `ds/`, `rs/`, `job/`, `cronjob/`), or an IP address. A Service (`svc/NS/NAME`) needs
    its port: see `resolve_service`."""
    try:
        ip = ipaddress.ip_address(ref)
    except ValueError:
        return _resolve_named(state, ref, version)
    return peer_for_address(state, ip)


def peer_for_address(state: ClusterState, ip: IPAddress) -> Peer:
    owner = state.owners.get(ip)
    if owner is None:
        return Peer("outside", str(ip), ip)
    kind, name = owner
    if kind == "pod":
        ep = state.pods_by_ref[name]
        return Peer("pod", name, ip, ep.node, ep)
    if kind == "node":
        return Peer("node", name, ip, name)
    return Peer("external", name, ip)


def _pick(addresses: tuple[IPAddress, ...], version: int | None, what: str) -> IPAddress:
    for ip in addresses:
        if version is None or ip.version == version:
            return ip
    wanted = f" IPv{version}" if version else ""
    raise RefError(f"{what} has no{wanted} address")


def _resolve_named(state: ClusterState, ref: str, version: int | None) -> Peer:
    kind, _, name = ref.partition(":")
    if kind == "hep" and name:
        hep = state.heps_by_name.get(name)
        if hep is None:
            raise RefError(f"no HostEndpoint named {name!r}")
        node = state.nodes.get(hep.node or "")
        addrs = hep.ips or (node.addresses if node is not None else ())
        return Peer("node", hep.node or name, _pick(addrs, version, f"host endpoint {name}"), hep.node)
    if kind == "node" and name:
        node = state.nodes.get(name)
        if node is None:
            raise RefError(f"no Node named {name!r}")
        return Peer("node", name, _pick(node.addresses, version, f"node {name}"), name)
    if kind == "external" and name:
        ext = state.externals.get(name)
        if ext is None:
            raise RefError(f"no ExternalHost named {name!r}")
        return Peer("external", name, _pick(ext.addresses, version, f"outside host {name}"))
    parts = ref.split("/")
    if len(parts) == 3 and ":" not in ref and all(parts):
        return _resolve_controller(state, parts, version)
    if "/" in ref and ":" not in ref:
        ep = state.pods_by_ref.get(ref)
        if ep is None:
            raise RefError(f"no Pod {ref!r} (expected NAMESPACE/POD)")
        return Peer("pod", ref, _pick(ep.ips, version, f"pod {ref}"), ep.node, ep)
    raise RefError(
        f"cannot read {ref!r}: expected NAMESPACE/POD, deploy/NAMESPACE/NAME (or sts/, ds/, rs/, job/, cronjob/, "
        "svc/), hep:NAME, node:NAME, external:NAME or an IP address"
    )


def _resolve_controller(state: ClusterState, parts: list[str], version: int | None) -> Peer:
    kind_text, namespace, name = parts
    kind = WORKLOAD_REFS.get(kind_text.lower())
    if kind_text.lower() in SERVICE_REFS:
        raise RefError(f"svc/{namespace}/{name}: a Service is a destination reached on a port "
                       f"(--to svc/{namespace}/{name} --port N)")
    if kind is None:
        allowed = "deploy, sts, ds, rs, job, cronjob, svc"
        raise RefError(f"cannot read {'/'.join(parts)!r}: unknown kind {kind_text!r} (allowed: {allowed})")
    try:
        ref = workload_pod_ref(state.resources, find_workload(state.resources, kind, namespace, name))
    except WorkloadError as err:
        raise RefError(str(err)) from None
    ep = state.pods_by_ref[ref]
    return Peer("pod", ref, _pick(ep.ips, version, f"pod {ref} of {kind} {namespace}/{name}"), ep.node, ep)


def resolve_service(state: ClusterState, ref: str, protocol: int, port: int, version: int | None) -> tuple[Peer, int]:
    """`svc/NS/NAME` at `port`: the pod kube-proxy would deliver to and its target port."""
    kind_text, namespace, name = ref.split("/")
    try:
        pod, target = service_target(state.resources, namespace, name, protocol, port)
    except WorkloadError as err:
        raise RefError(str(err)) from None
    peer = resolve_ref(state, f"{pod.namespace}/{pod.name}", version)
    return peer, target


def is_service_ref(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 3 and all(parts) and parts[0].lower() in SERVICE_REFS
