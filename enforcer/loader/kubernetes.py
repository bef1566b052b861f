"""Kubernetes cluster state (`v1` Namespace, Pod, Node, ServiceAccount).

`kubectl get -o yaml` output carries hundreds of spec and status fields; only the ones flowtui
needs are read (and type-checked), the rest are ignored. `metadata` is always checked strictly.

A pod that is host-networked (`spec.hostNetwork: true`) or finished (`status.phase` Succeeded
or Failed) gets no addresses: Calico creates no workload endpoint for it, so its IPs (for a
host-networked pod, the node's) must not match pod selectors.
"""

from __future__ import annotations

from enforcer.lab.names import Kind, netns_name_error
from enforcer.loader.checks import cidr_value, dns_subdomain_error, ip_value, k8s_port_name_error
from enforcer.loader.fields import Fields, Value, empty_mapping, quote
from enforcer.loader.metadata import Obj
from enforcer.model import (
    IPAddress,
    IPNetwork,
    NamedPortDef,
    Namespace,
    Node,
    Pod,
    ServiceAccount,
)

K8S_PORT_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
# The API server sets this label on every Namespace, to its name, whatever was written
# (NamespaceDefaultLabelName, immutable since Kubernetes 1.22).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
FINISHED_PHASES = ("Succeeded", "Failed")


def lenient(obj: Obj, key: str) -> Fields:
    """A top-level section (spec, status) of which only some fields are read."""
    fields = obj.root.get_map(key, (), ignore_unknown=True)
    return fields if fields is not None else empty_mapping(obj.r, key, obj.root.line)


def lenient_items(fields: Fields, key: str) -> list[Fields]:
    out = []
    for item in fields.get_list(key):
        mapping = item.as_map((), ignore_unknown=True)
        if mapping is not None:
            out.append(mapping)
    return out


def unique(items: list[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys(items))


def load_namespace(obj: Obj) -> Namespace | None:
    labels = dict(obj.meta.labels)
    labels[NAMESPACE_NAME_LABEL] = obj.meta.name
    return Namespace(obj.meta.name, tuple(sorted(labels.items())), obj.origin)


def load_service_account(obj: Obj) -> ServiceAccount | None:
    return ServiceAccount(obj.meta.name, obj.meta.namespace or "", obj.meta.labels, obj.origin)


def load_pod(obj: Obj) -> Pod | None:
    spec, status = lenient(obj, "spec"), lenient(obj, "status")
    node = spec.get_str("nodeName") or None
    if node is not None and (problem := dns_subdomain_error(node, "nodeName") or netns_name_error("node", node)):
        spec.error_at("nodeName", problem)  # the API server's rule; the node becomes a lab namespace
    if obj.meta.name and obj.meta.namespace:
        lab_name_check(obj, "pod", f"{obj.meta.namespace}.{obj.meta.name}")
    service_account = spec.get_str("serviceAccountName") or spec.get_str("serviceAccount") or "default"
    host_network = spec.get_bool("hostNetwork")
    ports: list[NamedPortDef] = []
    for container in lenient_items(spec, "containers"):
        for port in lenient_items(container, "ports"):
            named = container_port(port)
            if named is not None:
                ports.append(named)
    ips: list[IPAddress] = []
    pod_ips = lenient_items(status, "podIPs")
    for item in pod_ips:
        located = item.get("ip", required=True)
        ip = ip_value(located) if located is not None else None
        if ip is not None:
            ips.append(ip)
    if not pod_ips and (located := status.get("podIP")) is not None:
        ip = ip_value(located)
        if ip is not None:
            ips.append(ip)
    if host_network or status.get_str("phase") in FINISHED_PHASES:
        ips = []
    return Pod(
        name=obj.meta.name,
        namespace=obj.meta.namespace or "",
        labels=obj.meta.labels,
        node=node,
        service_account=service_account,
        ips=unique(ips),
        ports=tuple(ports),
        origin=obj.origin,
    )


def container_port(fields: Fields) -> NamedPortDef | None:
    """A container port; only named ones matter to policy (named ports)."""
    name = fields.get_str("name")
    number = fields.get_int("containerPort", 1, 65535)
    if not fields.has("containerPort"):
        fields.missing("containerPort")
    protocol_text = fields.get_str("protocol") or "TCP"
    protocol = K8S_PORT_PROTOCOLS.get(protocol_text)
    if protocol is None:
        fields.error_at("protocol", f"invalid protocol {quote(protocol_text)} (allowed: TCP, UDP, SCTP)")
    if not name:
        return None
    if problem := k8s_port_name_error(name):
        fields.error_at("name", problem)
        return None
    if number is None or protocol is None:
        return None
    return NamedPortDef(name, protocol, number)


def lab_name_check(obj: Obj, kind: Kind, name: str) -> None:
    """Names the lab cannot turn into a network namespace are problems at metadata.name."""
    if problem := netns_name_error(kind, name):
        obj.r.error(obj.meta.line, "metadata.name", problem)


def load_node(obj: Obj) -> Node | None:
    if obj.meta.name:
        lab_name_check(obj, "node", obj.meta.name)
    spec, status = lenient(obj, "spec"), lenient(obj, "status")
    cidr_values: list[Value] = spec.get_list("podCIDRs")
    if not cidr_values and (single := spec.get("podCIDR")) is not None:
        cidr_values = [single]
    pod_cidrs: list[IPNetwork] = []
    for value in cidr_values:
        net = cidr_value(value, strict=False)
        if net is not None:
            pod_cidrs.append(net)
    addresses: list[IPAddress] = []
    for item in lenient_items(status, "addresses"):
        if item.get_str("type") not in NODE_ADDRESS_TYPES:
            continue
        located = item.get("address", required=True)
        ip = ip_value(located) if located is not None else None
        if ip is not None:
            addresses.append(ip)
    return Node(obj.meta.name, obj.meta.labels, unique(addresses), tuple(dict.fromkeys(pod_cidrs)), obj.origin)
