"""A ResourceSet written back as the YAML documents `flowtui apply -f` reads (Calico v3, Kubernetes
v1, flowtui's lab kinds), for tests that must go through the CLI with the random clusters of
`enforcer.synth`. It covers what the synthesiser generates, not every field of the model;
`round_trip_problems` says what would not load back equal, so a gap fails loudly instead of
testing a different cluster than the one the evaluator sees.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any

import yaml

from enforcer.loader import load_text
from enforcer.loader.metadata import DISABLED_ANNOTATION
from enforcer.model import (
    DEFAULT_TIER,
    EntityRule,
    ExternalHost,
    FelixConfiguration,
    HostEndpoint,
    NamedPort,
    Namespace,
    NetworkSet,
    Node,
    Pod,
    Policy,
    PortRange,
    ResourceSet,
    Rule,
    Tier,
    protocol_name,
)

CALICO = "projectcalico.org/v3"
DIRECTION = {"ingress": "Ingress", "egress": "Egress"}


def _protocol(number: int) -> str | int:
    name = protocol_name(number)
    return {"tcp": "TCP", "udp": "UDP", "icmp": "ICMP", "icmpv6": "ICMPv6", "sctp": "SCTP"}.get(name, number)


def _entity(e: EntityRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.nets:
        out["nets"] = [str(n) for n in e.nets]
    if e.not_nets:
        out["notNets"] = [str(n) for n in e.not_nets]
    if e.selector is not None:
        out["selector"] = str(e.selector)
    if e.not_selector is not None:
        out["notSelector"] = str(e.not_selector)
    if e.namespace_selector is not None:
        out["namespaceSelector"] = str(e.namespace_selector)
    for key, ports in (("ports", e.ports), ("notPorts", e.not_ports)):
        if ports:
            out[key] = [p.name if isinstance(p, NamedPort) else
                        (p.first if p.first == p.last else f"{p.first}:{p.last}") for p in ports
                        if isinstance(p, NamedPort | PortRange)]
    if e.service_accounts is not None or e.services is not None:
        raise ValueError("service account and service matches are not written by tests/manifests.py")
    return out


def _rule(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"action": r.action}
    if r.ip_version is not None:
        out["ipVersion"] = r.ip_version
    if r.protocol is not None:
        out["protocol"] = _protocol(r.protocol)
    if r.not_protocol is not None:
        out["notProtocol"] = _protocol(r.not_protocol)
    for key, icmp in (("icmp", r.icmp), ("notICMP", r.not_icmp)):
        if icmp is not None:
            out[key] = {"type": icmp.type, **({"code": icmp.code} if icmp.code is not None else {})}
    for key, entity in (("source", r.source), ("destination", r.destination)):
        written = _entity(entity)
        if written:
            out[key] = written
    if r.http is not None or r.annotations:
        raise ValueError("HTTP matches and rule annotations are not written by tests/manifests.py")
    return out


def policy_document(p: Policy) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": p.name}
    if p.namespace is not None:
        meta["namespace"] = p.namespace
    if p.disabled:
        meta["annotations"] = {DISABLED_ANNOTATION: "true"}
    spec: dict[str, Any] = {"tier": p.tier}
    if p.order is not None:
        spec["order"] = p.order
    if p.selector is not None:
        spec["selector"] = str(p.selector)
    if p.namespace_selector is not None:
        spec["namespaceSelector"] = str(p.namespace_selector)
    if p.service_account_selector is not None:
        spec["serviceAccountSelector"] = str(p.service_account_selector)
    spec["types"] = [DIRECTION[t] for t in p.types]
    if p.ingress:
        spec["ingress"] = [_rule(r) for r in p.ingress]
    if p.egress:
        spec["egress"] = [_rule(r) for r in p.egress]
    for key, on in (("doNotTrack", p.do_not_track), ("preDNAT", p.pre_dnat), ("applyOnForward", p.apply_on_forward)):
        if on:
            spec[key] = True
    if p.staged_action is not None and p.staged_action != "Set":
        spec["stagedAction"] = p.staged_action
    return {"apiVersion": CALICO, "kind": p.kind, "metadata": meta, "spec": spec}


def _labels(labels: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(labels)


def _tier(t: Tier) -> dict[str, Any]:
    spec: dict[str, Any] = {"defaultAction": t.default_action}
    if t.order is not None:
        spec["order"] = t.order
    return {"apiVersion": CALICO, "kind": "Tier", "metadata": {"name": t.name}, "spec": spec}


def _namespace(n: Namespace) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": _labels(n.labels)}}


def pod_document(p: Pod) -> dict[str, Any]:
    ports = [{"name": d.name, "containerPort": d.port, "protocol": str(_protocol(d.protocol))} for d in p.ports]
    status: dict[str, Any] = {}
    if p.ips:
        status = {"podIP": str(p.ips[0]), "podIPs": [{"ip": str(ip)} for ip in p.ips]}
    spec: dict[str, Any] = {"serviceAccountName": p.service_account,
                            "containers": [{"name": "c", "image": "busybox", "ports": ports}]}
    if p.node is not None:
        spec["nodeName"] = p.node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": _labels(p.labels)},
            "spec": spec, "status": status}


def _node(n: Node) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": _labels(n.labels)},
            "spec": {"podCIDRs": [str(c) for c in n.pod_cidrs]},
            "status": {"addresses": [{"type": "InternalIP", "address": str(a)} for a in n.addresses]}}


def _hep(h: HostEndpoint) -> dict[str, Any]:
    spec: dict[str, Any] = {"node": h.node, "expectedIPs": [str(ip) for ip in h.expected_ips]}
    if h.interface_name is not None:
        spec["interfaceName"] = h.interface_name
    if h.profiles:
        spec["profiles"] = list(h.profiles)
    if h.ports:
        spec["ports"] = [{"name": d.name, "protocol": _protocol(d.protocol), "port": d.port} for d in h.ports]
    return {"apiVersion": CALICO, "kind": "HostEndpoint", "metadata": {"name": h.name, "labels": _labels(h.labels)},
            "spec": spec}


def _netset(s: NetworkSet) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": s.name, "labels": _labels(s.labels)}
    if s.namespace is not None:
        meta["namespace"] = s.namespace
    return {"apiVersion": CALICO, "kind": s.kind, "metadata": meta, "spec": {"nets": [str(n) for n in s.nets]}}


def _felix(f: FelixConfiguration) -> dict[str, Any]:
    def ports(items: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{"protocol": _protocol(p.protocol), "port": p.port, **({"net": str(p.net)} if p.net else {})}
                for p in items]

    return {"apiVersion": CALICO, "kind": "FelixConfiguration", "metadata": {"name": f.name},
            "spec": {"defaultEndpointToHostAction": f.default_endpoint_to_host_action,
                     "failsafeInboundHostPorts": ports(f.failsafe_inbound),
                     "failsafeOutboundHostPorts": ports(f.failsafe_outbound)}}


def _external(e: ExternalHost) -> dict[str, Any]:
    return {"apiVersion": "lab.flowtui.dev/v1", "kind": "ExternalHost", "metadata": {"name": e.name},
            "spec": {"addresses": [str(a) for a in e.addresses]}}


def cluster_documents(res: ResourceSet) -> list[dict[str, Any]]:
    """Everything but the policies: the topology a lab is built from."""
    if res.profiles or res.service_accounts or res.workloads or res.services:
        raise ValueError("profiles, service accounts, workloads and services are not written by tests/manifests.py")
    docs = [_namespace(n) for n in res.namespaces]
    docs += [_node(n) for n in res.nodes]
    docs += [pod_document(p) for p in res.pods]
    docs += [_external(e) for e in res.external_hosts]
    docs += [_hep(h) for h in res.host_endpoints]
    docs += [_netset(s) for s in res.network_sets]
    docs.append(_felix(res.felix))
    return docs


def policy_documents(res: ResourceSet) -> list[dict[str, Any]]:
    return [_tier(t) for t in res.tiers if t != DEFAULT_TIER] + [policy_document(p) for p in res.policies]


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=200)


def _plain(value: Any) -> Any:
    """`value` with every origin and revision cleared (what loading from a file adds)."""
    if is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
        for name in ("origin", "revision"):
            if name in changes:
                changes.pop(name)
        kept = {k: v for k, v in changes.items() if v is not getattr(value, k)}
        cleared = {n: f.default for f in fields(value) for n in ("origin", "revision") if f.name == n}
        return replace(value, **kept, **cleared)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def round_trip_problems(res: ResourceSet) -> list[str]:
    """What differs between `res` and its manifests loaded back (empty: they are the same cluster)."""
    loaded = load_text(to_yaml(cluster_documents(res) + policy_documents(res)), "<manifests>")
    out = []
    for f in fields(ResourceSet):
        if f.name == "skipped":
            continue
        want, got = _plain(getattr(res, f.name)), _plain(getattr(loaded, f.name))
        if f.name == "namespaces":  # the loader adds the label Kubernetes gives every namespace
            got = tuple(replace(n, labels=tuple(kv for kv in n.labels if kv[0] != "kubernetes.io/metadata.name"))
                        for n in got)
        if f.name == "tiers":  # the loader adds the built-in tiers
            got = tuple(t for t in got if t in want or t.name not in ("default", "kube-admin", "kube-baseline"))
        if want != got:
            out.append(f"{f.name}: wrote {want!r}\nloaded {got!r}")
    return out


__all__ = ["cluster_documents", "policy_document", "policy_documents", "pod_document", "round_trip_problems",
           "to_yaml"]
