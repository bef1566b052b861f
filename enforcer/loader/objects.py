"""From one document to model objects: List expansion, the kinds table, the object envelope
(apiVersion, kind, metadata) and dispatch to the per-kind loaders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from enforcer.loader import calico, crd, felix, kubernetes, lab, workloads
from enforcer.loader.checks import dns_label_error, dns_subdomain_error, gnp_name_error, np_name_error
from enforcer.loader.cnp import load_anp, load_banp, load_cnp
from enforcer.loader.documents import Mapping, Node, Scalar
from enforcer.loader.fields import Problem, Reporter, Value, quote
from enforcer.loader.knp import load_knp
from enforcer.loader.metadata import (
    DEFAULT_NAMESPACE,
    META_FIELDS,
    META_SERVER_FIELDS,
    NameCheck,
    Obj,
    parse_metadata,
)
from enforcer.model import Origin

CALICO = "projectcalico.org/v3"
K8S_NETWORKING = "networking.k8s.io/v1"
K8S_CORE = "v1"
K8S_APPS = "apps/v1"
K8S_BATCH = "batch/v1"
LAB = "lab.flowtui.dev/v1"
K8S_POLICY = "policy.networking.k8s.io/v1alpha2"
K8S_POLICY_LEGACY = "policy.networking.k8s.io/v1alpha1"
ANTREA = "crd.antrea.io/"
# API groups whose kinds flowtui reads: an unknown kind there is a mistake (a typo, a kind
# flowtui does not model yet), reported as an error. Kinds of every other group are skipped.
OWN_GROUPS = ("projectcalico.org", "crd.projectcalico.org", "networking.k8s.io", "policy.networking.k8s.io",
              "lab.flowtui.dev")
# Valid kinds of those groups that say nothing about policy: skipped too.
SKIPPED_KINDS = {
    "projectcalico.org": ("BGPConfiguration", "BGPFilter", "BGPPeer", "BlockAffinity", "CalicoNodeStatus",
                          "ClusterInformation", "IPAMBlock", "IPAMConfig", "IPAMConfiguration", "IPAMHandle",
                          "IPPool", "IPReservation", "KubeControllersConfiguration", "LiveMigration"),
    "networking.k8s.io": ("Ingress", "IngressClass", "IPAddress", "ServiceCIDR"),
}
SKIPPED_KINDS["crd.projectcalico.org"] = SKIPPED_KINDS["projectcalico.org"]


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str  # as written in files
    model_kind: str  # identity in errors and duplicate detection
    namespaced: bool
    name_check: NameCheck
    load: Callable[[Obj], object | None]
    top_fields: tuple[str, ...] = ("spec",)
    top_ignored: tuple[str, ...] = ()
    meta_fields: tuple[str, ...] = META_FIELDS
    meta_server_fields: tuple[str, ...] = META_SERVER_FIELDS
    shown_kind: str = ""  # the kind named in problems, when not the model kind (legacy kinds)


def _label_name(name: str) -> str | None:
    return dns_label_error(name)


def _subdomain(name: str) -> str | None:
    return dns_subdomain_error(name)


POLICY_IGNORED = ("status",)  # newer Calico and Kubernetes write a status on policies
CLUSTER_FIELDS = ("spec", "status")  # read leniently by the cluster-state loaders


def _policy(api_version: str, kind: str, model_kind: str, namespaced: bool, name_check: NameCheck) -> Kind:
    load = load_knp if model_kind.endswith("KubernetesNetworkPolicy") else calico.load_policy
    return Kind(api_version, kind, model_kind, namespaced, name_check, load, top_ignored=POLICY_IGNORED)


def _cluster(kind: str, namespaced: bool, name_check: NameCheck, load: Callable[[Obj], object | None]) -> Kind:
    return Kind(K8S_CORE, kind, kind, namespaced, name_check, load, top_fields=CLUSTER_FIELDS)


_KIND_LIST = [
    _policy(CALICO, "GlobalNetworkPolicy", "GlobalNetworkPolicy", False, gnp_name_error),
    _policy(CALICO, "NetworkPolicy", "NetworkPolicy", True, np_name_error),
    _policy(CALICO, "StagedGlobalNetworkPolicy", "StagedGlobalNetworkPolicy", False, gnp_name_error),
    _policy(CALICO, "StagedNetworkPolicy", "StagedNetworkPolicy", True, np_name_error),
    _policy(CALICO, "StagedKubernetesNetworkPolicy", "StagedKubernetesNetworkPolicy", True, _subdomain),
    Kind(CALICO, "Tier", "Tier", False, _label_name, calico.load_tier),
    Kind(CALICO, "GlobalNetworkSet", "GlobalNetworkSet", False, _subdomain, calico.load_network_set),
    Kind(CALICO, "NetworkSet", "NetworkSet", True, _subdomain, calico.load_network_set),
    Kind(CALICO, "HostEndpoint", "HostEndpoint", False, _subdomain, calico.load_host_endpoint),
    Kind(CALICO, "Profile", "Profile", False, _subdomain, calico.load_profile),
    Kind(CALICO, "FelixConfiguration", "FelixConfiguration", False, _subdomain, felix.load_felix),
    _policy(K8S_NETWORKING, "NetworkPolicy", "KubernetesNetworkPolicy", True, _subdomain),
    # The legacy kinds are read as ClusterNetworkPolicy (one identity: an AdminNetworkPolicy and a
    # ClusterNetworkPolicy of the same name are the same policy); listed before it, so that the
    # datastore's tables by model kind keep ClusterNetworkPolicy's own entry.
    Kind(K8S_POLICY_LEGACY, "AdminNetworkPolicy", "ClusterNetworkPolicy", False, _subdomain, load_anp,
         top_ignored=POLICY_IGNORED, shown_kind="AdminNetworkPolicy"),
    Kind(K8S_POLICY_LEGACY, "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy", False, _subdomain, load_banp,
         top_ignored=POLICY_IGNORED, shown_kind="BaselineAdminNetworkPolicy"),
    Kind(K8S_POLICY, "ClusterNetworkPolicy", "ClusterNetworkPolicy", False, _subdomain, load_cnp,
         top_ignored=POLICY_IGNORED),
    _cluster("Namespace", False, _label_name, kubernetes.load_namespace),
    _cluster("Pod", True, _subdomain, kubernetes.load_pod),
    _cluster("Node", False, _subdomain, kubernetes.load_node),
    Kind(
        K8S_CORE,
        "ServiceAccount",
        "ServiceAccount",
        True,
        _subdomain,
        kubernetes.load_service_account,
        top_fields=(),
        top_ignored=("secrets", "imagePullSecrets", "automountServiceAccountToken"),
    ),
    *(
        Kind(api, kind, kind, True, _subdomain, workloads.load_workload, top_fields=CLUSTER_FIELDS)
        for api, kind in ((K8S_APPS, "Deployment"), (K8S_APPS, "StatefulSet"), (K8S_APPS, "DaemonSet"),
                          (K8S_APPS, "ReplicaSet"), (K8S_BATCH, "Job"), (K8S_BATCH, "CronJob"))
    ),
    _cluster("Service", True, _label_name, workloads.load_service),
    Kind(
        LAB,
        "ExternalHost",
        "ExternalHost",
        False,
        _subdomain,
        lab.load_external_host,
        meta_fields=lab.METADATA_FIELDS,
        meta_server_fields=(),
    ),
]
KINDS: dict[tuple[str, str], Kind] = {(k.api_version, k.kind): k for k in _KIND_LIST}
SUPPORTED = ", ".join(
    [f"{k.api_version} {k.kind}" for k in _KIND_LIST] + [f"{crd.CRD_GROUP_VERSION} {k}" for k in crd.CRD_KINDS]
)


@dataclass
class Loaded:
    """One object read from a document: its identity (None if the envelope was unusable), its
    model value (None if invalid, or for kinds that feed nothing, like per-node Felix config)."""

    obj: Obj | None
    value: object | None
    problems: list[Problem]


def _text(node: Node | None) -> str | None:
    if isinstance(node, Scalar) and isinstance(node.value, str):
        return node.value
    return None


def _peek(node: Mapping, *keys: str) -> str | None:
    current: Node | None = node
    for key in keys:
        if not isinstance(current, Mapping) or key not in current.entries:
            return None
        current = current.entries[key].value
    return _text(current)


def expand(node: Node, file: str, reporter: Reporter) -> Iterator[tuple[Node, str, str]]:
    """Documents → objects: `kind: List` and `*List` kinds are replaced by their items. Items
    without apiVersion/kind inherit the list's (XList → X). Yields (node, apiVersion, kind)
    defaults; reports list-level problems to `reporter`."""
    kind = _peek(node, "kind") if isinstance(node, Mapping) else None
    if not (isinstance(node, Mapping) and kind and kind.endswith("List") and "items" in node.entries):
        yield node, "", ""
        return
    value = Value(reporter, node, "", node.line)
    fields = value.as_map(("apiVersion", "kind", "metadata", "items"))
    if fields is None:
        return
    api_version = _peek(node, "apiVersion") or ""
    item_kind = kind[: -len("List")] if kind != "List" else ""
    for item in fields.get_list("items"):
        inner = _peek(item.node, "kind") if isinstance(item.node, Mapping) else None
        if inner is not None and inner.endswith("List"):
            yield from expand(item.node, file, reporter)
        else:
            yield item.node, api_version if item_kind else "", item_kind


def skipped_kind(node: Node, default_api: str = "", default_kind: str = "") -> str | None:
    """The kind of an object flowtui does not read and skips (a ConfigMap, an Ingress, an
    IPPool...), or None for one it reads or must report."""
    api_version, kind = default_api, default_kind
    if isinstance(node, Mapping):
        api_version = _peek(node, "apiVersion") or default_api
        kind = _peek(node, "kind") or default_kind
    if not api_version or not kind or (api_version, kind) in KINDS:
        return None
    if api_version == crd.CRD_GROUP_VERSION and kind in crd.CRD_KINDS:
        return None
    if api_version.startswith(ANTREA) and kind == "ClusterNetworkPolicy":
        return None  # reported: a user who wrote it expects it enforced (see _report_unknown_kind)
    group = api_version.rpartition("/")[0]
    if group in OWN_GROUPS:
        return kind if kind in SKIPPED_KINDS.get(group, ()) else None
    return kind


def load_object(
    node: Node, file: str, default_api: str = "", default_kind: str = "", namespace: str | None = None
) -> Loaded:
    """Validate one object and build its model value. `namespace`: kubectl's `-n` (see
    `parse_metadata`)."""
    api_version = default_api
    kind_text = default_kind
    if isinstance(node, Mapping):
        api_version = _peek(node, "apiVersion") or default_api
        kind_text = _peek(node, "kind") or default_kind
    conversion = Reporter(file)
    node, api_version = crd.as_v3(node, api_version, kind_text, conversion)
    kind = KINDS.get((api_version, kind_text))
    label_kind = (kind.shown_kind or kind.model_kind) if kind else kind_text
    name = _peek(node, "metadata", "name") if isinstance(node, Mapping) else None
    written_ns = _peek(node, "metadata", "namespace") if isinstance(node, Mapping) else None
    if kind is None:
        shown_namespace = written_ns
    else:
        shown_namespace = (written_ns or namespace or DEFAULT_NAMESPACE) if kind.namespaced else None
    label = "/".join(p for p in (label_kind, shown_namespace, name) if p) if label_kind else ""
    r = Reporter(file, label)
    for problem in conversion.problems:
        r.error(problem.line, problem.path, problem.message)
    root_value = Value(r, node, "", node.line)
    if not isinstance(node, Mapping):
        root_value.error("a document must be a mapping (a Kubernetes or Calico resource)")
        return Loaded(None, None, list(r.problems))
    if kind is None:
        _report_unknown_kind(root_value, node, api_version, kind_text)
        return Loaded(None, None, list(r.problems))
    root = root_value.as_map(("apiVersion", "kind", "metadata", *kind.top_fields), ignored=kind.top_ignored)
    assert root is not None
    meta = parse_metadata(
        root,
        kind.model_kind,
        namespaced=kind.namespaced,
        name_check=kind.name_check,
        allowed=kind.meta_fields,
        server_fields=kind.meta_server_fields,
        default_namespace=namespace,
    )
    obj = Obj(r, kind.model_kind, root, meta, Origin(file, node.line))
    value = kind.load(obj)
    return Loaded(obj, value, list(r.problems))


def _report_unknown_kind(root: Value, node: Mapping, api_version: str, kind: str) -> None:
    if not api_version:
        root.r.error(_key_line(node, "apiVersion"), "apiVersion", "apiVersion is missing or not a string")
    if not kind:
        root.r.error(_key_line(node, "kind"), "kind", "kind is missing or not a string")
    if api_version.startswith(ANTREA) and kind == "ClusterNetworkPolicy":
        message = (
            f"{api_version} ClusterNetworkPolicy is Antrea's, a different kind with the same name that "
            f"Calico does not read; flowtui reads Kubernetes' {K8S_POLICY} ClusterNetworkPolicy (which "
            f"Calico 3.32 enforces)"
        )
        root.r.error(_key_line(node, "apiVersion"), "apiVersion", message)
    elif api_version and kind:
        known_kinds = sorted(k.kind for k in _KIND_LIST if k.api_version == api_version)
        if known_kinds:
            message = f"unsupported kind {quote(kind)} for {api_version} (supported: {', '.join(known_kinds)})"
        else:
            message = f"unsupported apiVersion/kind {api_version} {kind} (supported: {SUPPORTED})"
        root.r.error(_key_line(node, "kind"), "kind", message)


def _key_line(node: Mapping, key: str) -> int:
    entry = node.entries.get(key)
    return entry.key_line if entry is not None else node.line
