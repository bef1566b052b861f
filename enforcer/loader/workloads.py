"""What a manifest repository brings besides policy: workload controllers and Services.

Workload controllers (`apps/v1` Deployment, StatefulSet, DaemonSet, ReplicaSet; `batch/v1` Job,
CronJob) contribute their pod template — labels, service account, named container ports — so
that a flow to "a pod of this Deployment" can be decided before any pod runs. A `v1` Service
contributes its selector and its ports (`port` → `targetPort`, a number or a container port's
name), so that a flow to the Service is decided as kube-proxy delivers it: to a selected pod, at
the target port.

As for Pods, only the fields that matter are read (and type-checked); the rest of these large
objects is ignored. `metadata` is checked strictly, as for every kind.
"""

from __future__ import annotations

from enforcer.loader.checks import ip_value, k8s_port_name_error, label_map
from enforcer.loader.documents import Scalar
from enforcer.loader.fields import Fields, quote
from enforcer.loader.knp import to_selector
from enforcer.loader.kubernetes import K8S_PORT_PROTOCOLS, container_port, lenient, lenient_items
from enforcer.loader.metadata import Obj
from enforcer.model import IPAddress, NamedPortDef, Pod, Service, ServicePort, Workload

# Where each kind keeps its pod template: CronJob nests a Job's spec.
TEMPLATE_PATHS = {
    "Deployment": ("template",),
    "StatefulSet": ("template",),
    "DaemonSet": ("template",),
    "ReplicaSet": ("template",),
    "Job": ("template",),
    "CronJob": ("jobTemplate", "spec", "template"),
}


def _section(fields: Fields, key: str) -> Fields | None:
    value = fields.get(key)
    return value.as_map((), ignore_unknown=True) if value is not None else None


def load_workload(obj: Obj) -> Workload | None:
    spec = lenient(obj, "spec")
    template: Fields | None = spec
    for key in TEMPLATE_PATHS[obj.kind]:
        template = _section(template, key) if template is not None else None
    if template is None:
        spec.missing(".".join(TEMPLATE_PATHS[obj.kind]), f"a {obj.kind} needs a pod template")
        return None
    meta = _section(template, "metadata")
    labels = label_map(meta.get("labels") if meta is not None else None)
    pod_spec = _section(template, "spec")
    account = "default"
    ports: list[NamedPortDef] = []
    if pod_spec is not None:
        account = pod_spec.get_str("serviceAccountName") or pod_spec.get_str("serviceAccount") or "default"
        for container in lenient_items(pod_spec, "containers"):
            for port in lenient_items(container, "ports"):
                named = container_port(port)
                if named is not None:
                    ports.append(named)
    located = spec.get("selector") if obj.kind != "CronJob" else None
    selector = to_selector(located, pod=False, anchor=located) if located is not None else None
    namespace = obj.meta.namespace or ""
    pod = Pod(name=f"{obj.kind.lower()}.{obj.meta.name}", namespace=namespace, labels=labels,
              service_account=account, ports=tuple(ports), origin=obj.origin)
    return Workload(obj.kind, obj.meta.name, namespace, pod, selector, obj.origin)


def load_service(obj: Obj) -> Service | None:
    spec = lenient(obj, "spec")
    located = spec.get("selector")
    selector = None  # without one (or with an empty one) Kubernetes manages no endpoints for it
    if located is not None and not (isinstance(located.node, Scalar) and located.node.value is None):
        selector = label_map(located) or None
    ports = tuple(p for p in map(_service_port, lenient_items(spec, "ports")) if p is not None)
    names = [p.name for p in ports]
    if len(ports) > 1 and (not all(names) or len(set(names)) != len(names)):
        spec.error_at("ports", "with more than one port, every port needs a unique name")
    ips: list[IPAddress] = []
    for value in spec.get_list("clusterIPs") or ([v] if (v := spec.get("clusterIP")) is not None else []):
        if value.raw in ("None", ""):
            continue
        ip = ip_value(value)
        if ip is not None:
            ips.append(ip)
    return Service(obj.meta.name, obj.meta.namespace or "", selector, ports, tuple(dict.fromkeys(ips)), obj.origin)


def _service_port(fields: Fields) -> ServicePort | None:
    name = fields.get_str("name") or ""
    if name and (problem := k8s_port_name_error(name)):
        fields.error_at("name", problem)
    protocol_text = fields.get_str("protocol") or "TCP"
    protocol = K8S_PORT_PROTOCOLS.get(protocol_text)
    if protocol is None:
        fields.error_at("protocol", f"invalid protocol {quote(protocol_text)} (allowed: TCP, UDP, SCTP)")
    port = fields.get_int("port", 1, 65535)
    if not fields.has("port"):
        fields.missing("port")
    target: int | str | None = port
    located = fields.get("targetPort")
    if located is not None:
        raw = located.raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            target = located.as_int(1, 65535)
        elif isinstance(raw, str):
            target = raw
            if problem := k8s_port_name_error(raw):
                located.error(problem)
                target = None
        else:
            located.error("must be a port number or a container port's name")
            target = None
    if port is None or protocol is None or target is None:
        return None
    return ServicePort(name, protocol, port, target)
