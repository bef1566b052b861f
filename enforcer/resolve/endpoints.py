"""Endpoints and the labels their selectors see (§1.7).

A workload endpoint (pod) sees its own labels plus the automatic `projectcalico.org/*` labels,
then inherits the `pcns.*` labels of its namespace profile and the `pcsa.*` labels of its service
account profile; the first hit wins. Network sets are not policy subjects but are members of rule
selector sets, so they get the same treatment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from enforcer.model import (
    HostEndpoint,
    IPAddress,
    IPNetwork,
    NamedPortDef,
    Namespace,
    NetworkSet,
    Pod,
    Profile,
    ResourceSet,
    Rule,
    ServiceAccount,
)
from enforcer.resolve.selectors import (
    NAME_LABEL,
    NAMESPACE_LABEL,
    NS_PREFIX,
    ORCHESTRATOR_LABEL,
    SA_PREFIX,
    SERVICE_ACCOUNT_LABEL,
)
from enforcer.resolve.workloads import template_pods

EndpointKind = Literal["wep", "hep"]
DEFAULT_ALLOW_PROFILE = "projectcalico-default-allow"


@dataclass(frozen=True)
class Endpoint:
    """A policy subject: a pod's workload endpoint or a host endpoint."""

    kind: EndpointKind
    name: str  # pod name or HEP name
    namespace: str | None
    node: str | None
    labels: Mapping[str, str]  # effective: own, then inherited from profiles
    ips: tuple[IPAddress, ...]
    ports: tuple[NamedPortDef, ...]
    profiles: tuple[str, ...]
    interface_name: str | None = None  # HEPs only

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.kind == "wep" else f"hep:{self.name}"

    def __hash__(self) -> int:
        return hash((self.kind, self.namespace, self.name))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Endpoint)
            and (self.kind, self.namespace, self.name) == (other.kind, other.namespace, other.name)
        )


@dataclass(frozen=True)
class SetMember:
    """Something a rule selector can name: an endpoint's addresses or a network set's nets."""

    kind: Literal["wep", "hep", "netset"]
    name: str
    namespace: str | None
    labels: Mapping[str, str]
    nets: tuple[IPNetwork, ...]
    ports: tuple[NamedPortDef, ...] = ()


def namespace_profile(ns: Namespace) -> Profile:
    labels = {f"{NS_PREFIX}{k}": v for k, v in ns.labels}
    labels[f"{NS_PREFIX}{NAME_LABEL}"] = ns.name
    allow = (Rule(action="Allow"),)
    return Profile(f"kns.{ns.name}", tuple(sorted(labels.items())), ingress=allow, egress=allow)


def service_account_profile(sa: ServiceAccount) -> Profile:
    labels = {f"{SA_PREFIX}{k}": v for k, v in sa.labels}
    labels[f"{SA_PREFIX}{NAME_LABEL}"] = sa.name
    return Profile(f"ksa.{sa.namespace}.{sa.name}", tuple(sorted(labels.items())))


def _inherit(own: Mapping[str, str], parents: list[Profile]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for profile in reversed(parents):  # later parents lose to earlier ones, all lose to own
        merged.update(profile.labels_to_apply)
    merged.update(own)
    return merged


def _host_nets(ips: tuple[IPAddress, ...]) -> tuple[IPNetwork, ...]:
    from ipaddress import ip_network

    return tuple(ip_network(ip) for ip in ips)


@dataclass(frozen=True)
class EndpointIndex:
    endpoints: tuple[Endpoint, ...]
    members: tuple[SetMember, ...]
    profiles: Mapping[str, Profile]


def build_endpoints(res: ResourceSet) -> EndpointIndex:
    """Workload and host endpoints with effective labels, set members, and all profiles."""
    pods = (*res.pods, *template_pods(res))  # workloads without pods: a pod of their template
    namespaces = {ns.name: ns for ns in res.namespaces}
    for pod in pods:
        namespaces.setdefault(pod.namespace, Namespace(pod.namespace))
    for nset in res.network_sets:
        if nset.namespace is not None:
            namespaces.setdefault(nset.namespace, Namespace(nset.namespace))
    accounts = {(sa.namespace, sa.name): sa for sa in res.service_accounts}
    for pod in pods:
        key = (pod.namespace, pod.service_account)
        accounts.setdefault(key, ServiceAccount(pod.service_account, pod.namespace))

    profiles: dict[str, Profile] = {
        DEFAULT_ALLOW_PROFILE: Profile(
            DEFAULT_ALLOW_PROFILE, ingress=(Rule(action="Allow"),), egress=(Rule(action="Allow"),)
        )
    }
    for ns in namespaces.values():
        profiles[f"kns.{ns.name}"] = namespace_profile(ns)
    for sa in accounts.values():
        profiles[f"ksa.{sa.namespace}.{sa.name}"] = service_account_profile(sa)
    for prof in res.profiles:  # user-defined profiles override built-ins of the same name
        profiles[prof.name] = prof

    endpoints: list[Endpoint] = []
    members: list[SetMember] = []
    for pod in pods:
        endpoints.append(_pod_endpoint(pod, profiles))
    for hep in res.host_endpoints:
        endpoints.append(_host_endpoint(hep, profiles))
    for ep in endpoints:
        nets = _host_nets(ep.ips)
        members.append(SetMember(ep.kind, ep.name, ep.namespace, ep.labels, nets, ep.ports))
    for nset in res.network_sets:
        members.append(_netset_member(nset, profiles))
    return EndpointIndex(tuple(endpoints), tuple(members), profiles)


def _pod_endpoint(pod: Pod, profiles: Mapping[str, Profile]) -> Endpoint:
    own = dict(pod.labels)
    own[NAMESPACE_LABEL] = pod.namespace
    own[ORCHESTRATOR_LABEL] = "k8s"
    if len(pod.service_account) < 63:
        own[SERVICE_ACCOUNT_LABEL] = pod.service_account
    parent_names = (f"kns.{pod.namespace}", f"ksa.{pod.namespace}.{pod.service_account}")
    parents = [profiles[n] for n in parent_names if n in profiles]
    return Endpoint(
        kind="wep",
        name=pod.name,
        namespace=pod.namespace,
        node=pod.node,
        labels=_inherit(own, parents),
        ips=pod.ips,
        ports=pod.ports,
        profiles=parent_names,
    )


def _host_endpoint(hep: HostEndpoint, profiles: Mapping[str, Profile]) -> Endpoint:
    parents = [profiles[n] for n in hep.profiles if n in profiles]
    return Endpoint(
        kind="hep",
        name=hep.name,
        namespace=None,
        node=hep.node,
        labels=_inherit(dict(hep.labels), parents),
        ips=hep.expected_ips,
        ports=hep.ports,
        profiles=hep.profiles,
        interface_name=hep.interface_name,
    )


def _netset_member(nset: NetworkSet, profiles: Mapping[str, Profile]) -> SetMember:
    own = dict(nset.labels)
    parents: list[Profile] = []
    if nset.namespace is not None:
        own[NAMESPACE_LABEL] = nset.namespace
        prof = profiles.get(f"kns.{nset.namespace}")
        parents = [prof] if prof else []
    return SetMember("netset", nset.name, nset.namespace, _inherit(own, parents), nset.nets)
