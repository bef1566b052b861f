"""The kinds the datastore holds, their keys, and the names users type for them (`gnp`, `pods`...).

A stored object's key is (model kind, namespace, name): the loader's identity, where Kubernetes'
`networking.k8s.io/v1` NetworkPolicy is `KubernetesNetworkPolicy` and Calico's is `NetworkPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from enforcer.loader.objects import KINDS
from enforcer.model import POLICY_KINDS, SHORT_KIND

# model kind -> (preferred short name, other names). Matching is case-insensitive; the model
# kind and its plural are always accepted, so `networkpolicy` is Calico's (as in calicoctl) and
# Kubernetes' is `knp` or `kubernetesnetworkpolicy`.
_NAMES: dict[str, tuple[str, ...]] = {
    "GlobalNetworkPolicy": ("gnp", "gnps"),
    "NetworkPolicy": ("np", "caliconetworkpolicy", "caliconetworkpolicies", "networkpolicy.projectcalico.org"),
    "KubernetesNetworkPolicy": ("knp", "knps", "networkpolicy.networking.k8s.io", "networkpolicies.networking.k8s.io"),
    "StagedGlobalNetworkPolicy": ("sgnp",),
    "StagedNetworkPolicy": ("snp",),
    "StagedKubernetesNetworkPolicy": ("sknp",),
    # kubectl's short name for the CRD; Calico's own short kind (kcnp) is accepted too. The legacy
    # AdminNetworkPolicy / BaselineAdminNetworkPolicy are stored as ClusterNetworkPolicy.
    "ClusterNetworkPolicy": ("cnp", "cnps", "kcnp", "clusternetworkpolicy.policy.networking.k8s.io"),
    "Tier": ("tier",),
    "GlobalNetworkSet": ("gns", "globalnetset", "globalnetsets"),
    "NetworkSet": ("netset", "netsets"),
    "HostEndpoint": ("hep", "heps"),
    "Profile": ("pro",),
    "FelixConfiguration": ("felixconfig", "felixconfigs", "fc"),
    "Namespace": ("ns",),
    "Pod": ("po",),
    "Node": ("no",),
    "ServiceAccount": ("sa",),
    "ExternalHost": ("ext", "external", "externals"),
    "Deployment": ("deploy",),
    "StatefulSet": ("sts",),
    "DaemonSet": ("ds",),
    "ReplicaSet": ("rs",),
    "Job": ("job",),
    "CronJob": ("cj",),
    "Service": ("svc",),
}
POLICY_GROUP = ("policy", "policies", "pol")  # every policy kind at once


class UnknownKind(ValueError):
    """A kind name that matches nothing; the message lists what is accepted."""


@dataclass(frozen=True)
class KindInfo:
    api_version: str
    kind: str  # as written in files
    model_kind: str  # identity
    namespaced: bool
    short: str

    @property
    def is_policy(self) -> bool:
        return self.model_kind in POLICY_KINDS

    @property
    def label(self) -> str:
        """What keys are shown with: Calico's short policy kinds (`gnp`, `knp`), else `pod`..."""
        return SHORT_KIND.get(self.model_kind, self.model_kind.lower()) if self.is_policy else self.model_kind.lower()

    @property
    def resource(self) -> str:
        """kubectl's `kind.group` form: `globalnetworkpolicy.projectcalico.org`, `pod`."""
        group = self.api_version.rpartition("/")[0]
        return f"{self.kind.lower()}.{group}" if group else self.kind.lower()

    def names(self) -> tuple[str, ...]:
        lower = self.model_kind.lower()
        plural = lower[:-1] + "ies" if lower.endswith("y") else lower + "s"
        return (lower, plural, *_NAMES.get(self.model_kind, ()))


@dataclass(frozen=True, order=True)
class ObjectKey:
    """(model kind, namespace, name); namespace is None for cluster-scoped kinds."""

    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        info = BY_MODEL_KIND.get(self.kind)
        short = info.label if info else self.kind
        return f"{short}/{self.namespace}/{self.name}" if self.namespace else f"{short}/{self.name}"


_ALL_INFO: tuple[KindInfo, ...] = tuple(
    KindInfo(k.api_version, k.kind, k.model_kind, k.namespaced, _NAMES.get(k.model_kind, (k.kind.lower(),))[0])
    for k in KINDS.values()
)
# One entry per model kind (the last written: ClusterNetworkPolicy's own, not the legacy kinds
# read as it); every apiVersion/kind the loader reads is still known by BY_API_KIND.
BY_MODEL_KIND: dict[str, KindInfo] = {k.model_kind: k for k in _ALL_INFO}
KIND_INFO: tuple[KindInfo, ...] = tuple(BY_MODEL_KIND.values())
BY_API_KIND: dict[tuple[str, str], KindInfo] = {(k.api_version, k.kind): k for k in _ALL_INFO}
_BY_NAME: dict[str, tuple[KindInfo, ...]] = {}
for _info in KIND_INFO:
    for _name in _info.names():
        _BY_NAME[_name.lower()] = (_info,)
for _name in POLICY_GROUP:
    _BY_NAME[_name] = tuple(BY_MODEL_KIND[k] for k in POLICY_KINDS if k in BY_MODEL_KIND)


def resolve_kinds(text: str) -> tuple[KindInfo, ...]:
    """The kinds a user's kind name means: `gnp`, `GlobalNetworkPolicies`, `pods`, `policy`..."""
    found = _BY_NAME.get(text.strip().lower())
    if not found:
        shorts = ", ".join(f"{k.short} ({k.model_kind})" for k in KIND_INFO)
        raise UnknownKind(f"unknown kind {text!r}; use one of: {shorts}, or policy (every policy kind)")
    return found


def resolve_kind(text: str) -> KindInfo:
    """Exactly one kind (a model kind such as `GlobalNetworkPolicy`, or any name of it)."""
    if text in BY_MODEL_KIND:
        return BY_MODEL_KIND[text]
    found = resolve_kinds(text)
    if len(found) != 1:
        raise UnknownKind(f"{text!r} names several kinds ({', '.join(k.model_kind for k in found)}): name one")
    return found[0]


__all__ = [
    "BY_API_KIND",
    "BY_MODEL_KIND",
    "KIND_INFO",
    "POLICY_GROUP",
    "KindInfo",
    "ObjectKey",
    "UnknownKind",
    "resolve_kind",
    "resolve_kinds",
]
