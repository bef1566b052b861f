"""Public keys on the Node objects of the datastore, where Calico publishes them.

Calico's Node resource (`projectcalico.org/v3`) carries the keys as `status.wireguardPublicKey`
and `status.wireguardPublicKeyV6`; with the Kubernetes datastore — the one whose objects flowtui
stores — Calico keeps those fields as annotations on the Kubernetes Node:

    metadata:
      annotations:
        projectcalico.org/WireguardPublicKey: <base64>      # IPv4 tunnel (wireguard.cali / ftwg0)
        projectcalico.org/WireguardPublicKeyV6: <base64>    # IPv6 tunnel (wg-v6.cali / ftwg0v6)

so that is what `publish_keys` writes on each stored `v1` Node, through the datastore's own
validated apply (a new revision of the Node; its source becomes
`<datastore>/wireguard/published/<node>.yaml`, the document written). Peers' keys are read back
from there (`published_keys`), as Felix learns its peers from the datastore. A key that a user's
re-applied Node file drops is written again by the next reconcile (Calico heals it the same way);
turning a family off removes its annotation (Calico clears the field). `get wireguard -o json`
shows the keys in Calico's `status.wireguardPublicKey(V6)` form as well.

Nodes that exist only because pods name them (no stored Node object) cannot carry annotations;
their keys stay in the key store and are reported as unpublished.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from enforcer.datastore import DesiredState, atomic_write
from enforcer.datastore.sources import annotation, dump, with_annotation
from enforcer.wireguard.keys import is_key

ANNOTATIONS: dict[int, str] = {4: "projectcalico.org/WireguardPublicKey", 6: "projectcalico.org/WireguardPublicKeyV6"}
STATUS_FIELDS: dict[int, str] = {4: "wireguardPublicKey", 6: "wireguardPublicKeyV6"}


def published_dir(ds: DesiredState) -> Path:
    return ds.path / "wireguard" / "published"


def published_keys(ds: DesiredState) -> dict[tuple[str, int], str]:
    """(node, family) → the public key annotated on the stored Node (valid keys only)."""
    out: dict[tuple[str, int], str] = {}
    for obj, doc in ds.object_documents("node"):
        for family, key in ANNOTATIONS.items():
            value = annotation(doc, key)
            if value is not None and is_key(value):
                out[(obj.key.name, family)] = value
    return out


def stored_nodes(ds: DesiredState) -> set[str]:
    return {obj.key.name for obj in ds.objects("node")}


def publish_keys(ds: DesiredState, wanted: Mapping[str, Mapping[int, str | None]]) -> list[str]:
    """Annotate each stored Node named in `wanted` with its key per family (None: remove the
    annotation); returns the nodes whose document changed. One datastore revision for all."""
    with ds.locked():
        paths: list[str] = []
        changed: list[str] = []
        for obj, doc in ds.object_documents("node"):
            families = wanted.get(obj.key.name)
            if families is None:
                continue
            body = doc
            for family, key in sorted(families.items()):
                body = with_annotation(body, ANNOTATIONS[family], key)
            if body == doc:
                continue
            path = published_dir(ds) / f"{obj.key.name}.yaml"
            atomic_write(path, dump(body), durable=False)
            paths.append(str(path))
            changed.append(obj.key.name)
        if paths:
            ds.apply_documents(paths)
        return changed


__all__ = ["ANNOTATIONS", "STATUS_FIELDS", "publish_keys", "published_dir", "published_keys", "stored_nodes"]
