"""Namespaces as kubectl defaults them (`-n`), the API server's `kubernetes.io/metadata.name`
label, and the built-in tiers' default actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.datastore import Datastore
from enforcer.evaluate import Evaluator
from enforcer.loader import LoadError, load_paths, load_text
from enforcer.resolve import ClusterState
from flowtui.cli.main import cli
from flowtui.cli.policy import build_flow

REPROS = Path(__file__).resolve().parents[2] / "shared" / "repros" / "calico"

KNP_NO_NS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-deny-all}
spec: {podSelector: {matchLabels: {app: web}}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.2}
"""


def test_namespaced_objects_without_a_namespace_go_into_default() -> None:
    res = load_text(KNP_NO_NS, "p.yaml")
    assert [(p.namespace, p.name) for p in res.policies] == [("default", "web-deny-all")]
    assert [(p.namespace, p.name) for p in res.pods] == [("default", "web")]


def test_dash_n_puts_them_into_that_namespace() -> None:
    res = load_text(KNP_NO_NS, "p.yaml", namespace="prod")
    assert {p.namespace for p in res.policies} | {p.namespace for p in res.pods} == {"prod"}


def test_an_object_in_another_namespace_than_dash_n_is_an_error_at_its_line() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: a\n  namespace: dev\n"
    with pytest.raises(LoadError) as err:
        load_text(text, "p.yaml", namespace="prod")
    (problem,) = err.value.problems
    assert (problem.line, problem.path) == (5, "metadata.namespace")
    assert '"dev" does not match the namespace "prod"' in problem.message
    assert load_text(text, "p.yaml", namespace="dev").policies[0].namespace == "dev"


def test_cluster_scoped_objects_ignore_dash_n() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {}\n"
    (policy,) = load_text(text, "g.yaml", namespace="prod").policies
    assert policy.namespace is None


def test_dash_n_on_the_cli_check_and_eval(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(KNP_NO_NS + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: client}\n"
                    "spec: {nodeName: n1}\nstatus: {podIP: 10.0.0.3}\n")
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", "-f", str(path), "-n", "shop", "--from", "shop/client", "--to", "shop/web",
                              "--proto", "tcp", "--port", "80", "-o", "json"])
    assert out.exit_code == 0, out.output
    assert '"verdict": "deny"' in out.output
    wrong = tmp_path / "w.yaml"
    wrong.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: dev}\n")
    result = runner.invoke(cli, ["check", "-n", "shop", "-f", str(wrong)])
    assert result.exit_code == 2
    assert f"{wrong}:3: Pod/dev/p: metadata.namespace" in result.output


def test_the_datastore_stores_the_namespace_an_object_was_put_in(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(KNP_NO_NS)
    ds = Datastore(tmp_path / "state")
    ds.apply_documents([str(path)], namespace="shop")
    assert {(o.key.kind, o.key.namespace) for o in ds.objects()} == {("KubernetesNetworkPolicy", "shop"),
                                                                      ("Pod", "shop")}
    # a new process reads the stored documents without any -n and finds them where they were put
    assert {p.namespace for p in Datastore(tmp_path / "state").resources().policies} == {"shop"}
    changes = ds.delete_documents([str(path)], namespace="shop")
    assert [c.action for c in changes.changes] == ["deleted", "deleted"]


# --------------------------------------------------------------------------------------------
# kubernetes.io/metadata.name


def test_namespaces_carry_their_name_label_as_the_api_server_sets_it() -> None:
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\n"
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {kubernetes.io/metadata.name: wrong}}\n")
    labels = {ns.name: dict(ns.labels) for ns in load_text(text, "ns.yaml").namespaces}
    assert labels == {"x": {"team": "a", "kubernetes.io/metadata.name": "x"},
                      "y": {"kubernetes.io/metadata.name": "y"}}


@pytest.mark.parametrize(
    ("repro", "verdict", "direction"),
    [
        # ingress of y/a allows namespaces with kubernetes.io/metadata.name = x: x/a gets in
        ("k8s-namespace-label-matchlabels.yaml", "allow", "ingress"),
        # egress of x/a allows namespaces whose name label is NotIn [y]: y is not one of them
        ("k8s-namespace-label-notin.yaml", "deny", "egress"),
    ],
)
def test_namespace_label_repros_decide_as_calico(repro: str, verdict: str, direction: str) -> None:
    state = ClusterState(load_paths([str(REPROS / repro)]))
    flow = build_flow(state, "x/a", "y/a", 6, 80, None, None, None, False)
    decision = Evaluator(state).decide(flow)
    assert decision.verdict == verdict
    hit = decision.enforced.decided_by
    assert hit is not None and hit.direction == direction


# --------------------------------------------------------------------------------------------
# Built-in tiers


def test_builtin_tier_actions_as_calicos_validator() -> None:
    with pytest.raises(LoadError) as err:
        load_paths([str(REPROS / "tier-builtin-default-action.yaml")])
    got = {(p.line, p.path, p.obj) for p in err.value.problems}
    assert got == {
        (8, "spec.defaultAction", "Tier/default"),
        (13, "spec.defaultAction", "Tier/kube-admin"),
        (18, "spec.defaultAction", "Tier/kube-baseline"),
    }
    messages = " | ".join(p.message for p in err.value.problems)
    assert "must have defaultAction Pass (none written: Deny)" in messages
    ok = ("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: kube-admin}\n"
          "spec: {order: 1000, defaultAction: Pass}\n---\n"
          "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: default}\nspec: {order: 1000000}\n")
    tiers = {t.name: t.default_action for t in load_text(ok, "t.yaml").tiers}
    assert tiers == {"kube-admin": "Pass", "default": "Deny"}
