"""Policy as others publish it, read unchanged from ../shared/external/material/ (never copied).

Every published file is listed below with what Calico v3.32 does with it: accepted (with the
namespace its tutorial applies it to, as `kubectl apply -n`), or refused, with why and the
fields the FILE:LINE errors name. A file added to the material and not listed here fails the
walk. Then the verdicts the material states (the recipes' READMEs, Calico's tutorials and its
stars demo) are decided by the evaluator, with the cluster each tutorial builds around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from enforcer.datastore import Datastore
from enforcer.evaluate import Evaluator
from enforcer.loader import LoadError, load_paths, load_text
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from flowtui.cli.policy import build_flow, parse_protocol

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material"
SETS = ("calico-docs", "calico-docs/stars", "k8s-recipes", "tigera-cs")


@dataclass(frozen=True)
class Accept:
    namespace: str | None = None  # the tutorial's `kubectl apply -n`


@dataclass(frozen=True)
class Reject:
    why: str
    paths: tuple[str, ...]  # the field paths Calico's errors name, in line order


ICMP_TEXT = "the icmp type/code is an integer; this page's text runs the table's description into the YAML value"
ENTERPRISE = "allowedEgressDomains is a Calico Enterprise field: open-source Calico's GlobalNetworkSet has only nets"

EXPECTED: dict[str, Accept | Reject] = {
    "calico-docs/calico-policy-tutorial-01.yaml": Accept(),
    "calico-docs/calico-policy-tutorial-02.yaml": Accept(),
    "calico-docs/calico-policy-tutorial-03.yaml": Accept(),
    "calico-docs/external-ips-policy-01.yaml": Accept(),
    "calico-docs/external-ips-policy-02.yaml": Accept(),
    "calico-docs/external-ips-policy-03.yaml": Accept(),
    "calico-docs/icmp-ping-01.yaml": Accept(),
    "calico-docs/icmp-ping-02.yaml": Reject(ICMP_TEXT, ("spec.ingress[0].icmp.type", "spec.ingress[1].icmp.type")),
    "calico-docs/icmp-ping-03.yaml": Reject(ICMP_TEXT, ("spec.ingress[0].icmp.type", "spec.ingress[0].icmp.code")),
    "calico-docs/kubernetes-default-deny-01.yaml": Accept(),
    "calico-docs/kubernetes-default-deny-02.yaml": Accept(),
    "calico-docs/kubernetes-default-deny-03.yaml": Accept(),
    "calico-docs/kubernetes-default-deny-04.yaml": Accept(),
    "calico-docs/kubernetes-policy-advanced-01.yaml": Accept(),
    "calico-docs/kubernetes-policy-advanced-02.yaml": Accept(),
    "calico-docs/kubernetes-policy-advanced-03.yaml": Accept(),
    "calico-docs/kubernetes-policy-advanced-04.yaml": Accept(),
    "calico-docs/kubernetes-policy-advanced-05.yaml": Accept(),
    "calico-docs/kubernetes-policy-basic-01.yaml": Accept(),
    "calico-docs/kubernetes-policy-basic-02.yaml": Accept(),
    "calico-docs/namespace-policy-01.yaml": Accept(),
    "calico-docs/namespace-policy-02.yaml": Accept(),
    "calico-docs/namespace-policy-03.yaml": Accept(),
    "calico-docs/service-accounts-01.yaml": Accept(),
    "calico-docs/service-accounts-02.yaml": Accept(),
    "calico-docs/service-accounts-03.yaml": Accept(),
    "calico-docs/tiered-policy-01.yaml": Accept(),
    "calico-docs/tiered-policy-02.yaml": Accept(),  # ClusterNetworkPolicy
    "calico-docs/tiered-policy-03.yaml": Accept(),  # ClusterNetworkPolicy
    "calico-docs/tiered-policy-04.yaml": Accept(),
    "calico-docs/tiered-policy-05.yaml": Accept(),
    # the stars demo: `kubectl create -f` for the manifests, `-n stars` / `-n client` for default-deny
    "calico-docs/stars/00-namespace.yaml": Accept(),
    "calico-docs/stars/01-management-ui.yaml": Accept(),
    "calico-docs/stars/02-backend.yaml": Accept(),
    "calico-docs/stars/03-frontend.yaml": Accept(),
    "calico-docs/stars/04-client.yaml": Accept(),
    "calico-docs/stars/allow-ui-client.yaml": Accept(),
    "calico-docs/stars/allow-ui.yaml": Accept(),
    "calico-docs/stars/backend-policy.yaml": Accept(),
    "calico-docs/stars/default-deny.yaml": Accept("stars"),
    "calico-docs/stars/frontend-policy.yaml": Accept(),
    # the recipes are applied with `kubectl apply -f` (namespace default) unless they name one
    **{f"k8s-recipes/{p.name}": Accept() for p in sorted((MATERIAL / "k8s-recipes").glob("*.yaml"))},
    "tigera-cs/fortinet__1-tier-fortinet.yaml": Accept(),
    "tigera-cs/fortinet__2-gnetpol-microservice.yaml": Accept(),
    "tigera-cs/manifests__1-ingress-nginx-hipstershop.yaml": Accept(),  # an Ingress: skipped
    "tigera-cs/manifests__10-gnetpol-deny-default.yaml": Accept(),
    "tigera-cs/manifests__2-hep-external.yaml": Accept(),
    "tigera-cs/manifests__3-tiers.yaml": Accept(),
    "tigera-cs/manifests__4-globalnetworksets.yaml": Reject(
        ENTERPRISE, ("spec.allowedEgressDomains", "spec.allowedEgressDomains")),
    "tigera-cs/manifests__5-netpol-ingress-allow-pods-to-kubedns.yaml": Accept(),
    "tigera-cs/manifests__6-gnetpol-egress-allow-from-and-to-host.yaml": Accept(),
    "tigera-cs/manifests__7-netpol-pass-hipstershop.yaml": Accept(),
    "tigera-cs/manifests__8-netpol-app-hipstershop.yaml": Accept(),
    "tigera-cs/manifests__9-gnetpol-hep-external.yaml": Reject(ENTERPRISE, ("spec.allowedEgressDomains",)),
    **{f"tigera-cs/scripts__{n}.yaml": Accept() for n in
       ("blab1", "blab2", "blab3", "blab4", "blab5", "blab6", "blab7", "blab8", "blab9",
        "flab21", "flab41", "flab61", "flab71", "flab81", "flab91")},  # blab2, flab21: crd.projectcalico.org/v1
}


def material_files() -> list[str]:
    return sorted(str(p.relative_to(MATERIAL)) for s in SETS for p in (MATERIAL / s).glob("*.yaml"))


def test_every_published_file_has_an_expectation() -> None:
    assert material_files(), f"no published material under {MATERIAL}"
    assert set(material_files()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_file_is_decided_as_calico_decides_it(name: str) -> None:
    path = MATERIAL / name
    expected = EXPECTED[name]
    if isinstance(expected, Accept):
        res = load_paths([str(path)], expected.namespace)
        assert res != ResourceSet() or res.skipped, f"{name}: nothing read"
        return
    with pytest.raises(LoadError) as err:
        load_paths([str(path)])
    problems = err.value.problems
    assert all(p.file == str(path) and p.line > 0 for p in problems), problems
    assert tuple(p.path for p in problems) == expected.paths


def test_a_whole_repository_checks_at_once_with_every_error_of_every_file(tmp_path: Path) -> None:
    """`check -f material/` as a user would run it on a repo: the refused files' errors all at
    once, nothing else reported."""
    # the workshop's scripts__* files are successive versions of the same policies: left out
    paths = [str(MATERIAL / "k8s-recipes"), *map(str, sorted((MATERIAL / "tigera-cs").glob("manifests__*.yaml")))]
    with pytest.raises(LoadError) as err:
        load_paths(paths)
    found = sorted((p.file.removeprefix(f"{MATERIAL}/"), p.line, p.path) for p in err.value.problems)
    assert found == [
        # two recipes are alternatives for the same policy name: one directory cannot hold both
        ("k8s-recipes/11-deny-egress-traffic-from-an-application.yaml", 4, "metadata.name"),
        ("tigera-cs/manifests__4-globalnetworksets.yaml", 29, "spec.allowedEgressDomains"),
        ("tigera-cs/manifests__4-globalnetworksets.yaml", 39, "spec.allowedEgressDomains"),
        ("tigera-cs/manifests__9-gnetpol-hep-external.yaml", 9, "spec.allowedEgressDomains"),
    ]


# --------------------------------------------------------------------------------------------
# Verdicts the material states


def decide(res: ResourceSet, src: str, dst: str, proto: str = "tcp", port: int | None = 80) -> str:
    state = ClusterState(res)
    number = parse_protocol(proto)
    flow = build_flow(state, src, dst, number, port if number not in (1, 58) else None, None, None, None, False)
    return Evaluator(state).decide(flow).verdict


def merged(*sets: ResourceSet) -> ResourceSet:
    fields = [f for f in ResourceSet.__dataclass_fields__ if f not in ("felix", "skipped")]
    return ResourceSet(**{f: tuple(x for s in sets for x in getattr(s, f)) for f in fields})


def recipe(name: str, namespace: str | None = None) -> ResourceSet:
    return load_paths([str(MATERIAL / "k8s-recipes" / name)], namespace)


# The clusters the recipes' READMEs build (`kubectl run web --labels=app=web` etc.), as pods.
RECIPE_CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {purpose: production}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {purpose: testing}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: operations}}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
"""
PODS = [  # (namespace, name, labels, ip)
    ("default", "web", {"app": "web"}, "10.0.1.1"),
    ("default", "client", {"run": "test"}, "10.0.1.2"),
    ("default", "apiserver", {"app": "bookstore", "role": "api"}, "10.0.1.3"),
    ("default", "frontend", {"app": "bookstore", "role": "frontend"}, "10.0.1.4"),
    ("default", "coolapp", {"app": "coolapp"}, "10.0.1.5"),
    ("default", "api5000", {"app": "apiserver"}, "10.0.1.6"),
    ("default", "monitor", {"role": "monitoring"}, "10.0.1.7"),
    ("default", "db", {"app": "bookstore", "role": "db"}, "10.0.1.8"),
    ("default", "search", {"app": "bookstore", "role": "search"}, "10.0.1.9"),
    ("default", "inventory", {"app": "inventory", "role": "web"}, "10.0.1.10"),
    ("default", "foo", {"app": "foo"}, "10.0.1.11"),
    ("prod", "client", {"run": "test"}, "10.0.2.1"),
    ("dev", "client", {"run": "test"}, "10.0.3.1"),
    ("other", "monitoring", {"type": "monitoring"}, "10.0.4.1"),
    ("other", "client", {"run": "test"}, "10.0.4.2"),
    ("dev", "monitoring", {"type": "monitoring"}, "10.0.3.2"),
    ("kube-system", "kube-dns", {"k8s-app": "kube-dns"}, "10.0.5.1"),
]


def cluster() -> ResourceSet:
    docs = [RECIPE_CLUSTER]
    for ns, name, labels, ip in PODS:
        label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
        docs.append(f"apiVersion: v1\nkind: Pod\n"
                    f"metadata: {{name: {name}, namespace: {ns}, labels: {{{label_text}}}}}\n"
                    f"spec: {{nodeName: n1}}\nstatus: {{podIP: {ip}}}\n")
    docs.append("apiVersion: lab.flowtui.dev/v1\nkind: ExternalHost\nmetadata: {name: internet}\n"
                "spec: {addresses: [203.0.113.7]}\n")
    return load_text("---\n".join(docs), "recipe-cluster.yaml")


# (recipe file, source, destination, proto, port, verdict): the recipes' README outcomes.
RECIPE_VERDICTS = [
    ("01-deny-all-traffic-to-an-application.yaml", "default/client", "default/web", "tcp", 80, "deny"),
    ("01-deny-all-traffic-to-an-application.yaml", "default/client", "default/coolapp", "tcp", 80, "allow"),
    ("02-limit-traffic-to-an-application.yaml", "default/frontend", "default/apiserver", "tcp", 80, "allow"),
    ("02-limit-traffic-to-an-application.yaml", "default/client", "default/apiserver", "tcp", 80, "deny"),
    ("02a-allow-all-traffic-to-an-application.yaml", "dev/client", "default/web", "tcp", 80, "allow"),
    ("03-deny-all-non-whitelisted-traffic-in-the-namespace.yaml", "default/client", "default/web", "tcp", 80,
     "deny"),
    ("04-deny-traffic-from-other-namespaces.yaml", "dev/client", "default/web", "tcp", 80, "deny"),
    ("04-deny-traffic-from-other-namespaces.yaml", "default/client", "default/web", "tcp", 80, "allow"),
    ("05-allow-traffic-from-all-namespaces.yaml", "dev/client", "default/web", "tcp", 80, "allow"),
    ("06-allow-traffic-from-a-namespace.yaml", "prod/client", "default/web", "tcp", 80, "allow"),
    ("06-allow-traffic-from-a-namespace.yaml", "dev/client", "default/web", "tcp", 80, "deny"),
    ("07-allow-traffic-from-some-pods-in-another-namespace.yaml", "other/monitoring", "default/web", "tcp", 80,
     "allow"),
    ("07-allow-traffic-from-some-pods-in-another-namespace.yaml", "other/client", "default/web", "tcp", 80, "deny"),
    ("07-allow-traffic-from-some-pods-in-another-namespace.yaml", "dev/monitoring", "default/web", "tcp", 80, "deny"),
    ("08-allow-external-traffic.yaml", "external:internet", "default/web", "tcp", 80, "allow"),
    ("09-allow-traffic-only-to-a-port.yaml", "default/monitor", "default/api5000", "tcp", 5000, "allow"),
    ("09-allow-traffic-only-to-a-port.yaml", "default/monitor", "default/api5000", "tcp", 8000, "deny"),
    ("09-allow-traffic-only-to-a-port.yaml", "default/client", "default/api5000", "tcp", 5000, "deny"),
    ("10-allowing-traffic-with-multiple-selectors.yaml", "default/search", "default/db", "tcp", 6379, "allow"),
    ("10-allowing-traffic-with-multiple-selectors.yaml", "default/inventory", "default/db", "tcp", 6379, "allow"),
    ("10-allowing-traffic-with-multiple-selectors.yaml", "default/frontend", "default/db", "tcp", 6379, "deny"),
    ("11-deny-egress-traffic-from-an-application.yaml", "default/foo", "kube-system/kube-dns", "udp", 53, "deny"),
    ("11-deny-egress-traffic-from-an-application-b.yaml", "default/foo", "kube-system/kube-dns", "udp", 53, "allow"),
    ("11-deny-egress-traffic-from-an-application-b.yaml", "default/foo", "default/web", "tcp", 80, "deny"),
    ("12-deny-all-non-whitelisted-traffic-from-the-namespace.yaml", "default/client", "default/web", "tcp", 80,
     "deny"),
    ("12-deny-all-non-whitelisted-traffic-from-the-namespace.yaml", "prod/client", "default/web", "tcp", 80,
     "allow"),
    ("14-deny-external-egress-traffic.yaml", "default/foo", "kube-system/kube-dns", "tcp", 53, "allow"),
    ("14-deny-external-egress-traffic.yaml", "default/foo", "external:internet", "tcp", 443, "deny"),
]


@pytest.mark.parametrize(("name", "src", "dst", "proto", "port", "verdict"), RECIPE_VERDICTS,
                         ids=[f"{v[0].split('-traffic')[0]}:{v[1]}->{v[2]}:{v[4]}" for v in RECIPE_VERDICTS])
def test_recipe_verdicts(name: str, src: str, dst: str, proto: str, port: int, verdict: str) -> None:
    assert decide(merged(cluster(), recipe(name)), src, dst, proto, port) == verdict


def test_stars_demo_as_its_tutorial_runs_it(tmp_path: Path) -> None:
    """calico-docs/stars: the manifests, then default-deny in stars and client (`-n`), then the
    UI and the service policies; each step's stated outcome, by Deployment and Service."""
    stars = MATERIAL / "calico-docs" / "stars"
    ds = Datastore(tmp_path / "state")
    ds.apply_documents([str(stars / f) for f in ("00-namespace.yaml", "01-management-ui.yaml", "02-backend.yaml",
                                                  "03-frontend.yaml", "04-client.yaml")])

    def verdict(src: str, dst: str, port: int) -> str:
        return decide(ds.resources(), src, dst, "tcp", port)

    ui = "deploy/management-ui/management-ui"
    assert verdict("deploy/client/client", "svc/stars/frontend", 80) == "allow"  # no policy yet
    for namespace in ("stars", "client"):
        ds.apply_documents([str(stars / "default-deny.yaml")], namespace)
    assert verdict(ui, "svc/stars/backend", 6379) == "deny"  # the UI goes dark
    assert verdict("deploy/client/client", "svc/stars/frontend", 80) == "deny"
    ds.apply_documents([str(stars / "allow-ui.yaml"), str(stars / "allow-ui-client.yaml")])
    assert verdict(ui, "svc/stars/backend", 6379) == "allow"
    assert verdict(ui, "svc/client/client", 9000) == "allow"
    assert verdict("deploy/client/client", "svc/stars/frontend", 80) == "deny"
    ds.apply_documents([str(stars / "backend-policy.yaml"), str(stars / "frontend-policy.yaml")])
    assert verdict("deploy/stars/frontend", "svc/stars/backend", 6379) == "allow"
    assert verdict("deploy/client/client", "svc/stars/frontend", 80) == "allow"
    assert verdict("deploy/client/client", "svc/stars/backend", 6379) == "deny"
    assert verdict("deploy/stars/backend", "svc/stars/frontend", 80) == "deny"
    assert verdict("deploy/stars/frontend", "svc/client/client", 9000) == "deny"


TUTORIAL_CLUSTER = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system, labels: {{name: kube-system}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: nginx, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: nginx}}}}
  template:
    metadata: {{labels: {{app: nginx}}}}
    spec: {{containers: [{{name: nginx, image: nginx, ports: [{{containerPort: 80}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: nginx, namespace: {ns}}}
spec: {{selector: {{app: nginx}}, ports: [{{port: 80, targetPort: 80}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: access, namespace: {ns}, labels: {{run: access}}}}
spec: {{nodeName: n1}}
status: {{podIP: 10.0.9.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: cant-access, namespace: {ns}, labels: {{run: cant-access}}}}
spec: {{nodeName: n1}}
status: {{podIP: 10.0.9.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec: {{nodeName: n1}}
status: {{podIP: 10.0.9.53}}
---
apiVersion: lab.flowtui.dev/v1
kind: ExternalHost
metadata: {{name: www}}
spec: {{addresses: [203.0.113.80]}}
"""


def tutorial(ns: str, *files: str) -> ResourceSet:
    return merged(load_text(TUTORIAL_CLUSTER.format(ns=ns), "cluster.yaml"),
                  *(load_paths([str(MATERIAL / "calico-docs" / f)]) for f in files))


def test_kubernetes_policy_basic_tutorial() -> None:
    ns = "policy-demo"
    assert decide(tutorial(ns), f"{ns}/access", f"svc/{ns}/nginx") == "allow"
    denied = tutorial(ns, "kubernetes-policy-basic-01.yaml")
    assert decide(denied, f"{ns}/access", f"svc/{ns}/nginx") == "deny"
    allowed = tutorial(ns, "kubernetes-policy-basic-01.yaml", "kubernetes-policy-basic-02.yaml")
    assert decide(allowed, f"{ns}/access", f"svc/{ns}/nginx") == "allow"
    assert decide(allowed, f"{ns}/cant-access", f"svc/{ns}/nginx") == "deny"


def test_kubernetes_policy_advanced_tutorial() -> None:
    ns = "advanced-policy-demo"
    steps = ["kubernetes-policy-advanced-01.yaml"]
    res = tutorial(ns, *steps)
    assert decide(res, f"{ns}/access", f"svc/{ns}/nginx") == "deny"  # ingress denied
    assert decide(res, f"{ns}/access", "external:www") == "allow"  # egress still open
    steps.append("kubernetes-policy-advanced-02.yaml")
    assert decide(tutorial(ns, *steps), f"{ns}/access", f"svc/{ns}/nginx") == "allow"
    steps.append("kubernetes-policy-advanced-03.yaml")
    res = tutorial(ns, *steps)
    assert decide(res, f"{ns}/access", f"svc/{ns}/nginx") == "deny"  # egress denied
    assert decide(res, f"{ns}/access", "kube-system/kube-dns", "udp", 53) == "deny"
    steps.append("kubernetes-policy-advanced-04.yaml")
    res = tutorial(ns, *steps)
    assert decide(res, f"{ns}/access", "kube-system/kube-dns", "udp", 53) == "allow"
    assert decide(res, f"{ns}/access", f"svc/{ns}/nginx") == "deny"
    steps.append("kubernetes-policy-advanced-05.yaml")
    res = tutorial(ns, *steps)
    assert decide(res, f"{ns}/access", f"svc/{ns}/nginx") == "allow"
    assert decide(res, f"{ns}/access", "external:www") == "deny"
