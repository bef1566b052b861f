"""The validated internal model: frozen dataclasses that the rest of the code trusts.

Everything here has already passed validation at the edge (`enforcer.loader`); nothing below
re-checks input. Kubernetes NetworkPolicies are converted to Calico form on load (kind
`KubernetesNetworkPolicy`, tier `default`, order 1000), and so are ClusterNetworkPolicies (kind
`ClusterNetworkPolicy`, tier `kube-admin` or `kube-baseline`, order = priority), so the evaluator
and the compiler see one policy shape.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from enforcer.selector import Selector

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Action = Literal["Allow", "Deny", "Pass", "Log"]
Direction = Literal["ingress", "egress"]

POLICY_KINDS = (
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "KubernetesNetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "ClusterNetworkPolicy",
)
PolicyKind = Literal[
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "KubernetesNetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "ClusterNetworkPolicy",
]
# Short kinds as Calico v3.32+ writes them in NFLOG prefixes and flow-log strings.
SHORT_KIND: dict[str, str] = {
    "GlobalNetworkPolicy": "gnp",
    "NetworkPolicy": "np",
    "KubernetesNetworkPolicy": "knp",
    "StagedGlobalNetworkPolicy": "sgnp",
    "StagedNetworkPolicy": "snp",
    "StagedKubernetesNetworkPolicy": "sknp",
    "ClusterNetworkPolicy": "kcnp",  # Calico's KubernetesClusterNetworkPolicy
    "Profile": "pro",
}

PROTOCOL_NUMBERS: dict[str, int] = {
    "TCP": 6,
    "UDP": 17,
    "ICMP": 1,
    "ICMPv6": 58,
    "SCTP": 132,
    "UDPLite": 136,
}
PROTOCOL_NAMES: dict[int, str] = {v: k.lower() for k, v in PROTOCOL_NUMBERS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132})


def protocol_name(number: int) -> str:
    """Lower-case name for a protocol number (`tcp`), or the number as text."""
    return PROTOCOL_NAMES.get(number, str(number))


@dataclass(frozen=True)
class Origin:
    """Where an object was written: used in errors and in explanations."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


NO_ORIGIN = Origin("<builtin>", 0)


# --------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    def __contains__(self, port: int) -> bool:
        return self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True)
class NamedPort:
    name: str

    def __str__(self) -> str:
        return self.name


Port = PortRange | NamedPort


@dataclass(frozen=True)
class ICMPMatch:
    type: int
    code: int | None = None


@dataclass(frozen=True)
class ServiceAccountMatch:
    names: tuple[str, ...] = ()
    selector: Selector | None = None


@dataclass(frozen=True)
class ServiceMatch:
    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class EntityRule:
    """A rule's `source` or `destination`. Every field is optional; empty means "any"."""

    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ports: tuple[Port, ...] = ()
    not_ports: tuple[Port, ...] = ()
    service_accounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    @property
    def uses_selectors(self) -> bool:
        return (
            self.selector is not None
            or self.not_selector is not None
            or self.namespace_selector is not None
            or self.service_accounts is not None
        )


ANY_ENTITY = EntityRule()


@dataclass(frozen=True)
class HTTPMatch:
    methods: tuple[str, ...] = ()
    # (kind, path) with kind "exact" or "prefix"
    paths: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Rule:
    action: Action
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = None
    source: EntityRule = ANY_ENTITY
    destination: EntityRule = ANY_ENTITY
    http: HTTPMatch | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    origin: Origin = NO_ORIGIN


# --------------------------------------------------------------------------------------------
# Policies, tiers, profiles


@dataclass(frozen=True)
class Tier:
    name: str
    order: float | None = None
    default_action: Literal["Deny", "Pass"] = "Deny"
    origin: Origin = NO_ORIGIN


DEFAULT_TIER = Tier("default", 1_000_000.0, "Deny")
# The tiers Calico (v3.32+) always creates for ClusterNetworkPolicy's Admin and Baseline tiers.
KUBE_ADMIN_TIER = Tier("kube-admin", 1_000.0, "Pass")
KUBE_BASELINE_TIER = Tier("kube-baseline", 10_000_000.0, "Pass")
BUILTIN_TIERS = (DEFAULT_TIER, KUBE_ADMIN_TIER, KUBE_BASELINE_TIER)
KNP_ORDER = 1000.0


@dataclass(frozen=True)
class Policy:
    """GlobalNetworkPolicy, NetworkPolicy, KubernetesNetworkPolicy, their staged variants, and
    ClusterNetworkPolicy (global, like a GlobalNetworkPolicy)."""

    kind: PolicyKind
    name: str
    namespace: str | None  # None for global kinds
    tier: str = "default"
    order: float | None = None
    selector: Selector | None = None  # None = all()
    namespace_selector: Selector | None = None  # GNP only
    service_account_selector: Selector | None = None
    types: tuple[Direction, ...] = ("ingress",)  # after Calico's defaulting
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False
    staged_action: str | None = None  # Set/Delete/Learn/Ignore for staged kinds
    disabled: bool = False  # flowtui's live toggle: a disabled policy is as if absent
    revision: int = 0
    origin: Origin = NO_ORIGIN

    def __hash__(self) -> int:
        # Identity is (kind, namespace, name); hashing every rule deeply made set lookups dominate.
        return hash((self.kind, self.namespace, self.name, self.revision))

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace or "", self.name)

    @property
    def staged(self) -> bool:
        return self.kind.startswith("Staged")

    @property
    def namespaced(self) -> bool:
        return self.namespace is not None

    @property
    def short_id(self) -> str:
        """`gnp/name`, `np/ns/name`: Calico v3.32+ policy id."""
        short = SHORT_KIND[self.kind]
        return f"{short}/{self.namespace}/{self.name}" if self.namespace else f"{short}/{self.name}"

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress


@dataclass(frozen=True)
class Profile:
    name: str
    labels_to_apply: tuple[tuple[str, str], ...] = ()
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    origin: Origin = NO_ORIGIN

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        return self.ingress if direction == "ingress" else self.egress


# --------------------------------------------------------------------------------------------
# Cluster objects


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class ServiceAccount:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class NamedPortDef:
    """A named port declared by a pod container or a host endpoint."""

    name: str
    protocol: int
    port: int


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    node: str | None = None
    service_account: str = "default"
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[NamedPortDef, ...] = ()
    origin: Origin = NO_ORIGIN


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")


@dataclass(frozen=True)
class Workload:
    """A workload controller (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob): its
    pod template, as the pods it runs would be. `selector` (spec.selector, a Calico selector
    over labels) finds the pods of the input that it runs."""

    kind: str  # one of WORKLOAD_KINDS
    name: str
    namespace: str
    template: Pod  # labels, service account and named ports; no node, no addresses
    selector: Selector | None = None
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: int  # 6, 17 or 132
    port: int
    target: int | str  # targetPort: a number, or a container port's name


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service: kube-proxy delivers `port` to the `target` of a pod `selector` picks."""

    name: str
    namespace: str
    selector: tuple[tuple[str, str], ...] | None  # None: no selector (endpoints managed elsewhere)
    ports: tuple[ServicePort, ...] = ()
    cluster_ips: tuple[IPAddress, ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()  # spec.podCIDRs: where the lab assigns pod addresses
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class HostEndpoint:
    name: str
    node: str
    labels: tuple[tuple[str, str], ...] = ()
    interface_name: str | None = None  # "*" = all interfaces
    expected_ips: tuple[IPAddress, ...] = ()
    profiles: tuple[str, ...] = ()
    ports: tuple[NamedPortDef, ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class NetworkSet:
    """NetworkSet (namespace set) or GlobalNetworkSet (namespace None)."""

    name: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    nets: tuple[IPNetwork, ...] = ()
    origin: Origin = NO_ORIGIN

    @property
    def kind(self) -> str:
        return "NetworkSet" if self.namespace else "GlobalNetworkSet"


@dataclass(frozen=True)
class FailsafePort:
    protocol: int  # 6, 17 or 132
    port: int  # 0-65535 (Calico accepts 0)
    net: IPNetwork | None = None

    def __str__(self) -> str:
        proto = FAILSAFE_PROTOCOL_NAMES[self.protocol]
        if self.net is None:
            return f"{proto}:{self.port}"
        net = f"[{self.net}]" if self.net.version == 6 else str(self.net)
        return f"{proto}:{net}:{self.port}"


FAILSAFE_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


def _failsafes(spec: str) -> tuple[FailsafePort, ...]:
    out = []
    for item in spec.split(","):
        proto, port = item.split(":")
        out.append(FailsafePort(6 if proto == "tcp" else 17, int(port)))
    return tuple(out)


DEFAULT_FAILSAFE_INBOUND = _failsafes(
    "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
)
DEFAULT_FAILSAFE_OUTBOUND = _failsafes(
    "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
)


# Calico's default wireguardListeningPort / wireguardListeningPortV6.
WIREGUARD_PORTS: dict[int, int] = {4: 51820, 6: 51821}


@dataclass(frozen=True)
class FelixConfiguration:
    name: str = "default"
    failsafe_inbound: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_OUTBOUND
    # The standard manifests set Accept (felix's own default is Drop); flowtui follows the manifests.
    default_endpoint_to_host_action: Literal["Drop", "Accept", "Return"] = "Accept"
    wireguard_enabled: bool = False
    wireguard_enabled_v6: bool = False
    origin: Origin = NO_ORIGIN

    def wireguard(self, version: int) -> bool:
        """Whether pod traffic between nodes is encrypted in IP family `version`."""
        return self.wireguard_enabled if version == 4 else self.wireguard_enabled_v6


@dataclass(frozen=True)
class ExternalHost:
    """flowtui's lab resource (`lab.flowtui.dev/v1`): an outside host holding some addresses."""

    name: str
    addresses: tuple[IPAddress, ...] = ()
    origin: Origin = NO_ORIGIN


@dataclass(frozen=True)
class ResourceSet:
    """Everything loaded from a set of files, validated. Order within each tuple is load order."""

    policies: tuple[Policy, ...] = ()
    tiers: tuple[Tier, ...] = ()
    profiles: tuple[Profile, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    pods: tuple[Pod, ...] = ()
    nodes: tuple[Node, ...] = ()
    host_endpoints: tuple[HostEndpoint, ...] = ()
    network_sets: tuple[NetworkSet, ...] = ()
    felix: FelixConfiguration = field(default_factory=FelixConfiguration)
    external_hosts: tuple[ExternalHost, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()  # kinds flowtui does not read: (kind, how many)
