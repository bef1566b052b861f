"""`metadata`: name, namespace, labels and annotations, checked strictly for every kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from enforcer.loader.checks import (
    dns_label_error,
    label_value_error,
    qualified_name_error,
)
from enforcer.loader.fields import Fields, Reporter, Value, quote
from enforcer.model import Origin

META_FIELDS = ("name", "namespace", "labels", "annotations")
# Written by the API server; present in `kubectl get -o yaml` output. Accepted and ignored.
META_SERVER_FIELDS = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "generateName",
    "selfLink",
)
ANNOTATIONS_MAX_BYTES = 256 * 1024
DISABLED_ANNOTATION = "flowtui.dev/disabled"
CALICO_NAMESPACE_LABEL = "projectcalico.org/namespace"
DEFAULT_NAMESPACE = "default"  # where kubectl and calicoctl put a namespaced object without -n

NameCheck = Callable[[str], "str | None"]


@dataclass
class Meta:
    name: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    label_values: dict[str, Value] = field(default_factory=dict)
    annotation_values: dict[str, Value] = field(default_factory=dict)
    line: int = 0  # of metadata.name


@dataclass
class Obj:
    """One object being loaded: its reporter, its top-level fields, metadata and origin."""

    r: Reporter
    kind: str  # the model kind (KubernetesNetworkPolicy for networking.k8s.io NetworkPolicy)
    root: Fields
    meta: Meta
    origin: Origin

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.meta.namespace or "", self.meta.name)


def parse_metadata(
    root: Fields,
    kind: str,
    *,
    namespaced: bool,
    name_check: NameCheck,
    allowed: tuple[str, ...] = META_FIELDS,
    server_fields: tuple[str, ...] = META_SERVER_FIELDS,
    default_namespace: str | None = None,
) -> Meta:
    """Always returns a Meta (with an empty name if there is none), so that the rest of the
    object is still validated and all of its problems are found in one pass.

    A namespaced object without `metadata.namespace` goes into `default_namespace` (kubectl's
    `-n`), else into `default`; one whose namespace differs from `default_namespace` is an error,
    as in kubectl."""
    meta = root.get_map("metadata", allowed, ignored=server_fields, required=True)
    if meta is None:
        return Meta("", None, line=root.line)
    name = meta.get_str("name")
    name_entry = meta.entry("name")
    name_line = name_entry.key_line if name_entry is not None else meta.line
    if name is None and not meta.has("name"):
        meta.missing("name", "metadata.name is required")
    elif name is not None and (problem := name_check(name)):
        meta.error_at("name", problem)
    namespace: str | None = None
    if namespaced:
        namespace = meta.get_str("namespace")
        if not meta.has("namespace") or namespace == "":  # "" is unset in Kubernetes' ObjectMeta
            namespace = default_namespace or DEFAULT_NAMESPACE
        elif namespace is not None and (problem := dns_label_error(namespace, "namespace")):
            meta.error_at("namespace", problem)
        elif namespace is not None and default_namespace is not None and namespace != default_namespace:
            meta.error_at(
                "namespace",
                f"the namespace from the provided object {quote(namespace)} does not match the namespace "
                f"{quote(default_namespace)} given with -n (use -n {namespace}, or no -n)",
            )
    elif meta.has("namespace"):
        meta.error_at("namespace", f"{kind} is not namespaced: remove metadata.namespace")
    labels: list[tuple[str, str]] = []
    label_values: dict[str, Value] = {}
    labels_field = meta.get("labels") if "labels" in allowed else None
    if labels_field is not None:
        for key, text, value in labels_field.as_str_map():
            problem = qualified_name_error(key) or label_value_error(text)
            if problem:
                value.error(problem)
                continue
            labels.append((key, text))
            label_values[key] = value
    annotations: dict[str, str] = {}
    annotation_values: dict[str, Value] = {}
    annotations_field = meta.get("annotations") if "annotations" in allowed else None
    if annotations_field is not None:
        annotations, annotation_values = parse_annotations(annotations_field)
    return Meta(
        name=name or "",
        namespace=namespace,
        labels=tuple(sorted(labels)),
        annotations=annotations,
        label_values=label_values,
        annotation_values=annotation_values,
        line=name_line,
    )


def parse_annotations(value: Value) -> tuple[dict[str, str], dict[str, Value]]:
    """Annotation keys are qualified names (checked lower-cased, as Calico does); the total size
    of keys and values is at most 256 KiB."""
    annotations: dict[str, str] = {}
    located: dict[str, Value] = {}
    size = 0
    for key, text, item in value.as_str_map():
        problem = qualified_name_error(key.lower())
        if problem:
            item.error(problem)
            continue
        annotations[key] = text
        located[key] = item
        size += len(key.encode()) + len(text.encode())
    if size > ANNOTATIONS_MAX_BYTES:
        value.error(f"annotations total {size} bytes (at most {ANNOTATIONS_MAX_BYTES} allowed)")
    return annotations, located


def disabled_flag(obj: Obj) -> bool:
    """flowtui's live toggle: `metadata.annotations["flowtui.dev/disabled"]: "true"`."""
    text = obj.meta.annotations.get(DISABLED_ANNOTATION)
    if text is None:
        return False
    if text not in ("true", "false"):
        value = obj.meta.annotation_values[DISABLED_ANNOTATION]
        value.error(f'{DISABLED_ANNOTATION} must be "true" or "false", not {quote(text)}')
        return False
    return text == "true"


def forbid_calico_namespace_label(obj: Obj) -> None:
    value = obj.meta.label_values.get(CALICO_NAMESPACE_LABEL)
    if value is not None:
        value.error(f"label {CALICO_NAMESPACE_LABEL} is reserved: Calico adds it to namespaced network sets")
