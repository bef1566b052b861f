"""`crd.projectcalico.org/v1` objects (what kubectl prints on a Kubernetes-datastore cluster),
converted as Calico's CRD backend converts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.datastore import Datastore
from enforcer.loader import LoadError, load_paths, load_text

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material"

GNP = """\
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  annotations:
    projectcalico.org/metadata: >-
      {"name":"allow-dns","creationTimestamp":null,"labels":{"team":"net"},"annotations":{"note":"x"}}
    projectcalico.org/owned: "yes"
  labels: {projectcalico.org/tier: default}
  generation: 1
  name: default.allow-dns
  resourceVersion: "123"
  uid: 2b9c1a3e-0000-0000-0000-000000000000
spec:
  tier: default
  order: 10
  selector: all()
  types: [Egress]
  egress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53]}
"""


def test_the_metadata_annotation_gives_name_labels_and_annotations() -> None:
    (policy,) = load_text(GNP, "gnp.yaml").policies
    assert (policy.kind, policy.name, policy.tier, policy.order) == ("GlobalNetworkPolicy", "allow-dns", "default", 10)
    assert policy.types == ("egress",)
    assert policy.egress[0].action == "Allow"


def test_without_the_annotation_a_default_tier_policy_loses_the_default_prefix() -> None:
    text = ("apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\n"
            "metadata: {name: default.old-style, namespace: shop}\nspec: {selector: all()}\n---\n"
            "apiVersion: crd.projectcalico.org/v1\nkind: StagedGlobalNetworkPolicy\n"
            "metadata: {name: default.staged}\nspec: {tier: default, selector: all()}\n")
    names = sorted((p.kind, p.name) for p in load_text(text, "np.yaml").policies)
    assert names == [("NetworkPolicy", "old-style"), ("StagedGlobalNetworkPolicy", "staged")]


def test_a_policy_of_another_tier_keeps_its_crd_name() -> None:
    # tigera-cs/scripts__blab2.yaml: a CRD-form policy of tier app-hipstershop
    (policy,) = load_paths([str(MATERIAL / "tigera-cs" / "scripts__blab2.yaml")]).policies
    assert (policy.kind, policy.namespace, policy.name, policy.tier, policy.order) == (
        "NetworkPolicy", "hipstershop", "app-hipstershop.currencyservice", "app-hipstershop", 1650)


def test_crd_tier_and_other_kinds_get_calicos_defaults() -> None:
    text = """\
apiVersion: crd.projectcalico.org/v1
kind: Tier
metadata: {name: security}
spec: {}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkSet
metadata:
  name: deny-list
  annotations: {projectcalico.org/metadata: '{"labels":{"role":"deny"}}'}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: crd.projectcalico.org/v1
kind: FelixConfiguration
metadata: {name: default}
spec: {defaultEndpointToHostAction: Return}
---
apiVersion: crd.projectcalico.org/v1
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: edge}}
spec: {node: n1, interfaceName: eth0}
"""
    res = load_text(text, "crd.yaml")
    assert [(t.name, t.order, t.default_action) for t in res.tiers] == [("security", 1_000_000.0, "Deny")]
    assert [(s.name, s.labels) for s in res.network_sets] == [("deny-list", (("role", "deny"),))]
    assert res.felix.default_endpoint_to_host_action == "Return"
    assert [(h.name, h.labels) for h in res.host_endpoints] == [("n1-eth0", (("role", "edge"),))]


def test_crd_objects_are_validated_as_v3_at_their_lines() -> None:
    text = """\
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata:
  name: bad
  namespace: shop
  annotations: {projectcalico.org/metadata: '{"name": '}
spec:
  selector: all()
  ingress:
  - action: Maybe
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalThing
metadata: {name: thing}
spec: {}
"""
    with pytest.raises(LoadError) as err:
        load_text(text, "bad.yaml")
    got = sorted((p.line, p.path) for p in err.value.problems)
    assert got == [(6, 'metadata.annotations["projectcalico.org/metadata"]'), (10, "spec.ingress[0].action"),
                   (13, "kind")]
    assert "crd.projectcalico.org/v1 GlobalNetworkPolicy" in err.value.problems[-1].message


def test_calico_kinds_that_say_nothing_about_policy_are_skipped_and_counted() -> None:
    text = ("apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: pool}\n"
            "spec: {cidr: 10.0.0.0/16}\n---\n"
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {}\n")
    assert load_text(text, "pools.yaml").skipped == (("BGPConfiguration", 1), ("IPPool", 1))


def test_the_datastore_stores_the_v3_form(tmp_path: Path) -> None:
    path = tmp_path / "gnp.yaml"
    path.write_text(GNP)
    ds = Datastore(tmp_path / "state")
    ds.apply_documents([str(path)])
    ((obj, doc),) = ds.object_documents("gnp")
    assert obj.key.name == "allow-dns"
    assert doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["metadata"]["labels"] == {"projectcalico.org/tier": "default", "team": "net"}
    assert doc["metadata"]["annotations"] == {"projectcalico.org/owned": "yes", "note": "x"}
    # a new process reads it back
    assert [p.name for p in Datastore(tmp_path / "state").resources().policies] == ["allow-dns"]
