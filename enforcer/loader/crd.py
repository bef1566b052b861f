"""`crd.projectcalico.org/v1`: Calico kinds as stored by its Kubernetes-datastore (CRD) backend.

This is what `kubectl get globalnetworkpolicies.crd.projectcalico.org -o yaml` prints on a
cluster whose Calico keeps its data in Kubernetes. The spec is the `projectcalico.org/v3` spec;
only the metadata differs. Calico's conversion (libcalico-go `lib/backend/k8s/resources/
resources.go`, `ConvertK8sResourceToCalicoResource`) is followed:

* the annotation `projectcalico.org/metadata` holds the v3 object's metadata as JSON; its labels
  and annotations are merged over those written on the CRD (which Calico keeps for its own
  `projectcalico.org/` keys), and the annotation itself is removed;
* the v3 name is the one in that annotation (written there for policies); without it a policy
  in the default tier loses the `default.` prefix that older Calico stored (`determinePolicyName`),
  and every other object keeps the CRD's name.

The object is rewritten, as a node tree, to its `projectcalico.org/v3` form before it is
validated, so both forms are checked by the same code and report the same FILE:LINE problems.
Profiles have no CRD (Calico derives them from namespaces and service accounts), so the kinds
are those in `CRD_KINDS`.
"""

from __future__ import annotations

import json

from enforcer.loader.documents import Entry, Mapping, Node, Scalar
from enforcer.loader.fields import Reporter

CRD_GROUP_VERSION = "crd.projectcalico.org/v1"
CALICO_V3 = "projectcalico.org/v3"
METADATA_ANNOTATION = "projectcalico.org/metadata"
CRD_KINDS = (
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "Tier",
    "GlobalNetworkSet",
    "NetworkSet",
    "HostEndpoint",
    "FelixConfiguration",
)
# Kinds whose v3 name the backend writes into the metadata annotation (and whose old CRD names
# carry the `default.` prefix of the default tier).
_TIERED = ("GlobalNetworkPolicy", "NetworkPolicy", "StagedGlobalNetworkPolicy", "StagedNetworkPolicy")
DEFAULT_TIER_PREFIX = "default."


def _entry(node: Mapping, key: str) -> Node | None:
    entry = node.entries.get(key)
    return entry.value if entry is not None else None


def _string_map(data: object) -> dict[str, str] | None:
    if data is None:
        return {}
    if isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return dict(data)
    return None


def _merged(original: Node | None, extra: dict[str, str], line: int) -> Mapping:
    """`original` (a mapping as written, or nothing) with `extra`'s keys set, located at `line`."""
    entries = dict(original.entries) if isinstance(original, Mapping) else {}
    for key, value in extra.items():
        entries[key] = Entry(line, Scalar(line, value))
    return Mapping(original.line if original is not None else line, entries)


def _tier(spec: Node | None) -> str:
    tier = _entry(spec, "tier") if isinstance(spec, Mapping) else None
    return tier.value if isinstance(tier, Scalar) and isinstance(tier.value, str) else ""


def to_v3(node: Mapping, kind: str, reporter: Reporter) -> Mapping:
    """The `projectcalico.org/v3` form of a `crd.projectcalico.org/v1` object of `kind` (the
    node tree is not changed; a new one is returned). Problems with the metadata annotation go
    to `reporter`; the object is then converted without it."""
    entries = dict(node.entries)
    api = entries.get("apiVersion")
    line = api.key_line if api is not None else node.line
    entries["apiVersion"] = Entry(line, Scalar(api.value.line if api is not None else line, CALICO_V3))
    meta = _entry(node, "metadata")
    if not isinstance(meta, Mapping):
        return Mapping(node.line, entries)  # the v3 validation reports it
    meta_entries = dict(meta.entries)
    annotations = _entry(meta, "annotations")
    stored: dict[str, object] = {}
    if isinstance(annotations, Mapping) and METADATA_ANNOTATION in annotations.entries:
        ann = annotations.entries[METADATA_ANNOTATION]
        stored = _stored_metadata(ann, reporter)
        rest = {k: e for k, e in annotations.entries.items() if k != METADATA_ANNOTATION}
        annotations = Mapping(annotations.line, rest)
        where = ann.key_line
        labels = _string_map(stored.get("labels"))
        more = _string_map(stored.get("annotations"))
        if labels is None or more is None:
            field = "labels" if labels is None else "annotations"
            reporter.error(where, f"metadata.annotations[{json.dumps(METADATA_ANNOTATION)}]",
                           f"its {field} must be a map of strings to strings")
        if labels:
            meta_entries["labels"] = Entry(where, _merged(_entry(meta, "labels"), labels, where))
        annotations = _merged(annotations, more or {}, where)
        if annotations.entries:
            meta_entries["annotations"] = Entry(where, annotations)
        else:
            meta_entries.pop("annotations", None)
    name = stored.get("name")
    name_entry = meta_entries.get("name")
    if isinstance(name, str) and name:
        line = name_entry.key_line if name_entry is not None else meta.line
        meta_entries["name"] = Entry(line, Scalar(line, name))
    elif kind in _TIERED and name_entry is not None and _tier(_entry(node, "spec")) in ("", "default"):
        written = name_entry.value
        if isinstance(written, Scalar) and isinstance(written.value, str):
            v3_name = written.value.removeprefix(DEFAULT_TIER_PREFIX)
            meta_entries["name"] = Entry(name_entry.key_line, Scalar(written.line, v3_name))
    entries["metadata"] = Entry(entries["metadata"].key_line, Mapping(meta.line, meta_entries))
    return Mapping(node.line, entries)


def _stored_metadata(entry: Entry, reporter: Reporter) -> dict[str, object]:
    path = f"metadata.annotations[{json.dumps(METADATA_ANNOTATION)}]"
    value = entry.value
    if not (isinstance(value, Scalar) and isinstance(value.value, str)):
        reporter.error(entry.key_line, path, "must be a string of JSON (the v3 object's metadata)")
        return {}
    try:
        data = json.loads(value.value)
    except json.JSONDecodeError as exc:
        reporter.error(entry.key_line, path, f"is not JSON: {exc.msg} (column {exc.colno})")
        return {}
    if not isinstance(data, dict):
        reporter.error(entry.key_line, path, "must be a JSON object (the v3 object's metadata)")
        return {}
    return data


def as_v3(node: Node, api_version: str, kind: str, reporter: Reporter) -> tuple[Node, str]:
    """(node, apiVersion) in `projectcalico.org/v3` form when `node` is a CRD-form object of a
    kind in `CRD_KINDS`; anything else is returned as it is."""
    if api_version == CRD_GROUP_VERSION and kind in CRD_KINDS and isinstance(node, Mapping):
        return to_v3(node, kind, reporter), CALICO_V3
    return node, api_version
