"""Kubernetes NetworkPolicy → Calico form (calico-semantics.md §2.12), exact model objects."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from enforcer.loader import load_paths, load_text
from enforcer.loader.knp import simplify_ports
from enforcer.model import (
    KNP_ORDER,
    EntityRule,
    NamedPort,
    Origin,
    Policy,
    Port,
    PortRange,
    ResourceSet,
    Rule,
)
from enforcer.selector import parse_selector as sel

FILE = str(Path(__file__).parent / "fixtures" / "good" / "knp.yaml")
ORCH = "projectcalico.org/orchestrator == 'k8s'"
net = ipaddress.ip_network


def at(line: int) -> Origin:
    return Origin(FILE, line)


@pytest.fixture(scope="module")
def resources() -> ResourceSet:
    return load_paths([FILE])


def policy(resources: ResourceSet, name: str) -> Policy:
    return next(p for p in resources.policies if p.name == name)


def test_empty_pod_selector_default_deny(resources: ResourceSet) -> None:
    assert policy(resources, "default-deny") == Policy(
        kind="KubernetesNetworkPolicy",
        name="default-deny",
        namespace="prod",
        tier="default",
        order=KNP_ORDER,
        selector=sel(ORCH),
        types=("ingress",),
        origin=at(1),
    )


def test_full_conversion(resources: ResourceSet) -> None:
    web = policy(resources, "web")
    assert web.selector == sel(
        f"{ORCH} && app == 'shop' && tier == 'web' && env in {{ 'prod', 'staging' }} "
        "&& canary not in { 'true' } && has(owner) && ! has(legacy)"
    )
    assert (web.kind, web.tier, web.order, web.types, web.disabled) == (
        "KubernetesNetworkPolicy",
        "default",
        1000.0,
        ("ingress", "egress"),
        False,
    )
    peers = [
        EntityRule(selector=sel(f"{ORCH} && role == 'lb'")),
        EntityRule(selector=sel(ORCH), namespace_selector=sel("all()")),
        EntityRule(selector=sel(f"{ORCH} && role == 'monitor'"), namespace_selector=sel("team == 'ops'")),
        EntityRule(nets=(net("10.1.0.0/16"),), not_nets=(net("10.1.5.0/24"), net("10.1.6.0/24"))),
    ]
    groups = [
        (132, ()),  # SCTP: a port entry without a port means all ports, and wins over `port: 9`
        (6, (NamedPort("http"), PortRange(80, 82), PortRange(443, 443), PortRange(8000, 8080))),
        (17, (PortRange(53, 53),)),
    ]
    # One rule per (protocol group × peer), protocol groups in sorted name order (SCTP, TCP, UDP).
    assert web.ingress == tuple(
        Rule("Allow", protocol=protocol, source=peer, destination=EntityRule(ports=ports), origin=at(25))
        for protocol, ports in groups
        for peer in peers
    )
    kube_system = sel("kubernetes.io/metadata.name == 'kube-system'")
    assert web.egress == (
        Rule(
            "Allow",
            protocol=6,
            destination=EntityRule(selector=sel(ORCH), namespace_selector=kube_system, ports=(PortRange(53, 53),)),
            origin=at(47),
        ),
        Rule(
            "Allow",
            protocol=17,  # `protocol: UDP` without a port overrides the earlier UDP 53
            destination=EntityRule(selector=sel(ORCH), namespace_selector=kube_system),
            origin=at(47),
        ),
        Rule("Allow", origin=at(55)),  # `{}`: no peers, no ports → allow all
    )


def test_policy_types_defaulting_adds_egress_for_egress_rules(resources: ResourceSet) -> None:
    assert policy(resources, "egress-defaulting") == Policy(
        kind="KubernetesNetworkPolicy",
        name="egress-defaulting",
        namespace="prod",
        order=KNP_ORDER,
        selector=sel(f"{ORCH} && app == 'x'"),
        types=("ingress", "egress"),
        egress=(Rule("Allow", protocol=6, destination=EntityRule(ports=(PortRange(443, 443),)), origin=at(66)),),
        origin=at(58),
    )


def test_policy_types_defaulting_ignores_empty_egress(resources: ResourceSet) -> None:
    # Like the API server: `egress: []` does not add Egress. `ingress: [{}]` allows everything.
    empty = policy(resources, "empty-egress-section")
    assert (empty.types, empty.ingress, empty.egress) == (("ingress",), (Rule("Allow", origin=at(76)),), ())


def test_explicit_policy_types(resources: ResourceSet) -> None:
    assert policy(resources, "egress-only").types == ("egress",)


def test_staged_kubernetes_network_policy(resources: ResourceSet) -> None:
    assert policy(resources, "staged-web") == Policy(
        kind="StagedKubernetesNetworkPolicy",
        name="staged-web",
        namespace="prod",
        order=KNP_ORDER,
        selector=sel(f"{ORCH} && app == 'web'"),
        types=("ingress",),
        ingress=(Rule("Allow", source=EntityRule(nets=(net("fd00::/64"),)), origin=at(96)),),
        staged_action="Set",
        origin=at(88),
    )
    deleted = policy(resources, "staged-delete")
    assert (deleted.kind, deleted.staged_action, deleted.ingress, deleted.selector) == (
        "StagedKubernetesNetworkPolicy",
        "Delete",
        (),
        None,
    )


KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: ns}}
spec:
  ingress:
  - {rule}
"""


@pytest.mark.parametrize(
    ("rule", "source", "protocol", "ports"),
    [
        # endPort turns the port into a range
        ("{ports: [{port: 8000, endPort: 8010}]}", EntityRule(), 6, (PortRange(8000, 8010),)),
        # ranges and single ports merge when they touch or overlap
        (
            "{ports: [{port: 10, endPort: 20}, {port: 21}, {port: 15, endPort: 30}, {port: 40}]}",
            EntityRule(),
            6,
            (PortRange(10, 30), PortRange(40, 40)),
        ),
        # with at most one numeric port the list is kept as written
        ("{ports: [{port: 80}, {port: web}]}", EntityRule(), 6, (PortRange(80, 80), NamedPort("web"))),
        ("{ports: [{}]}", EntityRule(), 6, ()),  # an empty port entry: TCP, all ports
        ("{from: [], ports: []}", EntityRule(), None, ()),  # empty lists mean no constraint
        (
            "{from: [{namespaceSelector: {matchLabels: {team: a}}}]}",
            EntityRule(selector=sel(ORCH), namespace_selector=sel("team == 'a'")),
            None,
            (),
        ),
        (
            "{from: [{podSelector: {matchExpressions: [{key: a, operator: In, values: [y, x]}]}}]}",
            EntityRule(selector=sel(f"{ORCH} && a in {{ 'y', 'x' }}")),
            None,
            (),
        ),
        (
            "{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}",
            EntityRule(nets=(net("0.0.0.0/0"),), not_nets=(net("10.0.0.0/8"),)),
            None,
            (),
        ),
    ],
)
def test_rule_conversion(rule: str, source: EntityRule, protocol: int | None, ports: tuple[Port, ...]) -> None:
    (loaded,) = load_text(KNP.format(rule=rule), "p.yaml").policies
    assert loaded.ingress == (
        Rule(
            "Allow", protocol=protocol, source=source, destination=EntityRule(ports=ports), origin=Origin("p.yaml", 6)
        ),
    )


def test_egress_puts_peers_and_ports_in_destination() -> None:
    text = KNP.format(rule="{}").replace(
        "  ingress:\n  - {}\n", "  egress:\n  - {to: [{podSelector: {}}], ports: [{port: 5432}]}\n"
    )
    (loaded,) = load_text(text, "p.yaml").policies
    assert loaded.egress == (
        Rule(
            "Allow",
            protocol=6,
            destination=EntityRule(selector=sel(ORCH), ports=(PortRange(5432, 5432),)),
            origin=Origin("p.yaml", 6),
        ),
    )
    assert loaded.types == ("ingress", "egress")


def test_simplify_ports_like_calico() -> None:
    # conversion_test.go: [80, 81, 82, 9090, "foo"] → [80-82, 9090, "foo"] (named first here)
    ports = [PortRange(80, 80), PortRange(81, 81), PortRange(82, 82), PortRange(9090, 9090), NamedPort("foo")]
    assert simplify_ports(ports) == (NamedPort("foo"), PortRange(80, 82), PortRange(9090, 9090))
    assert simplify_ports([PortRange(5, 5), PortRange(5, 5)]) == (PortRange(5, 5),)
    assert simplify_ports([PortRange(1, 1)]) == (PortRange(1, 1),)
    assert simplify_ports(None) == ()
