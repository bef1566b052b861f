"""Edits: merging resources over the current set, deletions by KIND/NAME, what changed, and the
current set from the datastore."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.datastore import Datastore
from enforcer.loader import load_text
from flowtui.whatif.edits import (
    Deletion,
    EditError,
    apply_edits,
    current_resources,
    delete,
    describe_changes,
    diff,
    merge,
    parse_deletion,
)
from tests.test_whatif_fixtures import CLUSTER, POLICY, cluster

EDIT = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  selector: app == 'api'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: brand-new}
spec: {selector: all(), ingress: [{action: Allow}]}
"""


def test_merge_replaces_namesakes_and_adds_the_rest() -> None:
    base = cluster()
    edited = merge(base, load_text(EDIT, "edit.yaml"))
    keys = [p.key for p in edited.policies]
    assert keys == [p.key for p in base.policies] + [("GlobalNetworkPolicy", "", "brand-new")]
    replaced = next(p for p in edited.policies if p.name == "api-from-web")
    assert replaced.ingress[0].action == "Deny" and replaced.origin.file == "edit.yaml"
    assert edited.pods == base.pods and edited.felix == base.felix


def test_knp_and_calico_np_of_one_name_are_different_objects() -> None:
    knp = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
    edited = merge(cluster(), load_text(knp, "knp.yaml"))
    kinds = sorted(p.kind for p in edited.policies if p.name == "api-from-web")
    assert kinds == ["KubernetesNetworkPolicy", "NetworkPolicy"]


@pytest.mark.parametrize("text,expected", [
    ("gnp/deny-dev-to-db", Deletion("GlobalNetworkPolicy", None, "deny-dev-to-db")),
    ("np/shop/api-from-web", Deletion("NetworkPolicy", "shop", "api-from-web")),
    ("snp/shop/lock-db", Deletion("StagedNetworkPolicy", "shop", "lock-db")),
    ("GlobalNetworkPolicy/x", Deletion("GlobalNetworkPolicy", None, "x")),
    ("knp/shop/x", Deletion("KubernetesNetworkPolicy", "shop", "x")),
])
def test_parse_deletion(text: str, expected: Deletion) -> None:
    assert parse_deletion(text) == expected


@pytest.mark.parametrize("text", ["gnp", "gnp/", "nosuchkind/x", "a/b/c/d", "felixconfiguration/default"])
def test_bad_deletions(text: str) -> None:
    with pytest.raises(EditError):
        parse_deletion(text)


def test_delete() -> None:
    base = cluster()
    res = delete(base, [parse_deletion("gnp/deny-dev-to-db"), parse_deletion("np/api-from-web")])
    assert {p.name for p in res.policies} == {"lock-db"}
    with pytest.raises(EditError, match="not found"):
        delete(base, [parse_deletion("gnp/nope")])
    with pytest.raises(EditError, match="not found"):
        delete(base, [parse_deletion("np/dev/api-from-web")])


def test_changes() -> None:
    base = cluster()
    assert diff(base, base).none
    reloaded = cluster()  # same text, different objects: nothing changed
    assert diff(base, reloaded).none
    edited = apply_edits(base, load_text(EDIT, "edit.yaml"), [parse_deletion("gnp/deny-dev-to-db")])
    changes = diff(base, edited)
    assert not changes.cluster_changed
    assert sorted({p.name for p in changes.policies}) == ["api-from-web", "brand-new", "deny-dev-to-db"]
    assert describe_changes(base, edited) == [
        "added gnp/brand-new", "deleted gnp/deny-dev-to-db", "changed np/shop/api-from-web"]
    tier = load_text("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\n"
                     "spec: {order: 100, defaultAction: Deny}", "tier.yaml")
    tiered = diff(base, merge(base, tier))
    assert {p.name for p in tiered.policies} == {"deny-dev-to-db"}  # every policy of the changed tier
    pod = load_text("apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: api}}\n"
                    "spec: {nodeName: node-a, containers: [{name: c, image: x}]}\n"
                    "status: {podIPs: [{ip: 10.244.1.10}]}", "pod.yaml")
    assert diff(base, merge(base, pod)).cluster_changed


def test_current_set_from_files_or_datastore(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER + "---\n" + POLICY)
    from_files = current_resources([str(tmp_path / "c.yaml")], None)
    assert len(from_files.policies) == 3 and len(from_files.tiers) == 1
    store = Datastore(tmp_path / "state")
    with pytest.raises(EditError, match="empty"):
        current_resources([], str(tmp_path / "state"))
    store.apply_documents([str(tmp_path / "c.yaml")])
    stored = current_resources([], str(tmp_path / "state"))
    assert sorted(p.key for p in stored.policies) == sorted(p.key for p in from_files.policies)
    assert len(stored.pods) == 5
