"""Workload controllers and Services as the endpoints they stand for.

A workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) none of whose pods is
in the input is represented by one pod of its template, `<kind>.<name>` in its namespace (a
Deployment `web` gives pod `deployment.web`), on no node, with an address no other object has,
taken in order from `TEMPLATE_V4` and `TEMPLATE_V6`: policy decides for it exactly as for a
pod the controller would start (labels, service account, named ports), except that CIDR rules
see that stand-in address. A workload whose pods are in the input stands for them instead.

A Service's port leads, as kube-proxy delivers it, to the target port of a pod its selector
picks (`service_target`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace

from enforcer.model import IPAddress, Pod, ResourceSet, Service, ServicePort, Workload

TEMPLATE_V4 = ipaddress.IPv4Network("100.64.0.0/16")  # RFC 6598 shared space: not a usual pod or host range
TEMPLATE_V6 = ipaddress.IPv6Network("fd00:f10e:7e3a::/64")  # ULA
# The names kubectl takes for the workload kinds, as used in refs: `deploy/NS/NAME`.
WORKLOAD_REFS = {
    "deploy": "Deployment", "deployment": "Deployment", "deployments": "Deployment",
    "sts": "StatefulSet", "statefulset": "StatefulSet", "statefulsets": "StatefulSet",
    "ds": "DaemonSet", "daemonset": "DaemonSet", "daemonsets": "DaemonSet",
    "rs": "ReplicaSet", "replicaset": "ReplicaSet", "replicasets": "ReplicaSet",
    "job": "Job", "jobs": "Job",
    "cj": "CronJob", "cronjob": "CronJob", "cronjobs": "CronJob",
}
SERVICE_REFS = ("svc", "service", "services")


class WorkloadError(ValueError):
    """A workload or Service ref that leads to no endpoint."""


def pods_of(res: ResourceSet, workload: Workload) -> list[Pod]:
    """The input's pods the workload runs: its namespace, its selector (else its template's labels)."""
    out = []
    template = dict(workload.template.labels)
    for pod in res.pods:
        if pod.namespace != workload.namespace:
            continue
        labels = dict(pod.labels)
        if workload.selector is not None:
            if workload.selector.matches(labels):
                out.append(pod)
        elif template and all(labels.get(k) == v for k, v in template.items()):
            out.append(pod)
    return sorted(out, key=lambda p: p.name)


def _free(network: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: set[IPAddress]) -> Iterator[IPAddress]:
    for ip in network.hosts():
        if ip not in taken:
            yield ip


def template_pods(res: ResourceSet) -> tuple[Pod, ...]:
    """A stand-in pod for each workload whose pods are not in the input (see the module doc)."""
    if not res.workloads:
        return ()
    taken: set[IPAddress] = {ip for pod in res.pods for ip in pod.ips}
    taken |= {ip for node in res.nodes for ip in node.addresses}
    taken |= {ip for hep in res.host_endpoints for ip in hep.expected_ips}
    taken |= {ip for ext in res.external_hosts for ip in ext.addresses}
    free4, free6 = _free(TEMPLATE_V4, taken), _free(TEMPLATE_V6, taken)
    out = []
    for workload in sorted(res.workloads, key=lambda w: (w.namespace, w.kind, w.name)):
        if pods_of(res, workload):
            continue
        out.append(replace(workload.template, ips=(next(free4), next(free6))))
    return tuple(out)


def find_workload(res: ResourceSet, kind: str, namespace: str, name: str) -> Workload:
    for workload in res.workloads:
        if (workload.kind, workload.namespace, workload.name) == (kind, namespace, name):
            return workload
    raise WorkloadError(f"no {kind} {namespace}/{name}")


def workload_pod_ref(res: ResourceSet, workload: Workload) -> str:
    """`NS/POD` of the pod that stands for the workload: its first pod in the input, else the
    stand-in pod of its template."""
    pods = pods_of(res, workload)
    return f"{workload.namespace}/{pods[0].name if pods else workload.template.name}"


def service_at(res: ResourceSet, address: str) -> Service | None:
    """The Service whose cluster IP is `address` (kube-proxy DNATs it to a backend)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return next((s for s in res.services if ip in s.cluster_ips), None)


def find_service(res: ResourceSet, namespace: str, name: str) -> Service:
    for service in res.services:
        if (service.namespace, service.name) == (namespace, name):
            return service
    raise WorkloadError(f"no Service {namespace}/{name}")


def service_backends(res: ResourceSet, service: Service) -> list[Pod]:
    """The pods (of the input, then stand-ins) the Service's selector picks, in name order."""
    if not service.selector:
        return []
    wanted = dict(service.selector)
    pods = [*res.pods, *template_pods(res)]
    return sorted((p for p in pods if p.namespace == service.namespace and p.ips
                   and all(dict(p.labels).get(k) == v for k, v in wanted.items())), key=lambda p: p.name)


def service_port(service: Service, protocol: int, port: int) -> ServicePort:
    for sp in service.ports:
        if sp.port == port and sp.protocol == protocol:
            return sp
    listed = ", ".join(f"{sp.port}/{_proto(sp.protocol)}" for sp in service.ports) or "none"
    raise WorkloadError(f"Service {service.namespace}/{service.name} has no port {port}/{_proto(protocol)} "
                        f"(its ports: {listed})")


def _proto(number: int) -> str:
    return {6: "TCP", 17: "UDP", 132: "SCTP"}.get(number, str(number))


def service_target(res: ResourceSet, namespace: str, name: str, protocol: int, port: int) -> tuple[Pod, int]:
    """Where kube-proxy delivers `port` of Service NAMESPACE/NAME: (backend pod, target port).
    A named targetPort is the backend's container port of that name (and protocol)."""
    service = find_service(res, namespace, name)
    sp = service_port(service, protocol, port)
    backends = service_backends(res, service)
    if not backends:
        why = "it has no selector" if not service.selector else "its selector picks no pod or workload"
        raise WorkloadError(f"Service {namespace}/{name} has no endpoints: {why}")
    if isinstance(sp.target, int):
        return backends[0], sp.target
    for pod in backends:
        for named in pod.ports:
            if named.name == sp.target and named.protocol == protocol:
                return pod, named.port
    raise WorkloadError(f"Service {namespace}/{name} port {port} targets port {sp.target!r}, which no selected "
                        f"pod names ({', '.join(p.name for p in backends)})")
