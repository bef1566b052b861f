"""Good input: every projectcalico.org/v3 kind converted into the exact model objects."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from enforcer.loader import load_paths, load_text
from enforcer.model import (
    DEFAULT_FAILSAFE_OUTBOUND,
    EntityRule,
    FailsafePort,
    FelixConfiguration,
    HostEndpoint,
    HTTPMatch,
    ICMPMatch,
    NamedPort,
    NamedPortDef,
    NetworkSet,
    Origin,
    Policy,
    PortRange,
    Profile,
    ResourceSet,
    Rule,
    ServiceAccountMatch,
    ServiceMatch,
    Tier,
)
from enforcer.selector import parse_selector as sel

FILE = str(Path(__file__).parent / "fixtures" / "good" / "calico.yaml")
net = ipaddress.ip_network
ip = ipaddress.ip_address


def at(line: int) -> Origin:
    return Origin(FILE, line)


@pytest.fixture(scope="module")
def resources() -> ResourceSet:
    return load_paths([FILE])


def policy(resources: ResourceSet, name: str) -> Policy:
    return next(p for p in resources.policies if p.name == name)


def test_global_network_policy_every_field(resources: ResourceSet) -> None:
    assert policy(resources, "security.allow-web") == Policy(
        kind="GlobalNetworkPolicy",
        name="security.allow-web",
        namespace=None,
        tier="security",
        order=10.5,
        selector=sel("role == 'web'"),
        namespace_selector=sel("all()"),
        service_account_selector=sel("has(sa)"),
        types=("ingress", "egress"),
        ingress=(
            Rule(
                action="Allow",
                protocol=6,
                source=EntityRule(
                    nets=(net("10.0.0.0/8"), net("10.1.2.3/32")),
                    not_nets=(net("10.9.0.0/16"),),
                    selector=sel("app == 'lb'"),
                    not_selector=sel("bad == 'yes'"),
                    namespace_selector=sel("global()"),
                    not_ports=(PortRange(22, 22),),
                ),
                destination=EntityRule(
                    ports=(PortRange(80, 80), PortRange(443, 443), PortRange(8000, 8080), NamedPort("http-alt"))
                ),
                http=HTTPMatch(methods=("GET", "POST"), paths=(("exact", "/health"), ("prefix", "/api"))),
                annotations=(("why", "lb health checks"),),
                origin=at(19),
            ),
            Rule(
                action="Log",
                ip_version=6,
                protocol=58,
                icmp=ICMPMatch(128, 0),
                not_icmp=ICMPMatch(129),
                origin=at(35),
            ),
            Rule(
                action="Pass",
                protocol=17,
                not_protocol=132,
                source=EntityRule(service_accounts=ServiceAccountMatch(("api", "web"), sel("tier == 'front'"))),
                origin=at(40),
            ),
            Rule(
                action="Allow",
                source=EntityRule(services=ServiceMatch("kube-dns", "kube-system")),
                origin=at(45),
            ),
        ),
        egress=(Rule(action="Deny", destination=EntityRule(ports=(NamedPort("metrics"),)), origin=at(49)),),
        do_not_track=True,
        apply_on_forward=True,
        disabled=True,
        origin=at(1),
    )


def test_network_policy(resources: ResourceSet) -> None:
    assert policy(resources, "allow-db") == Policy(
        kind="NetworkPolicy",
        name="allow-db",
        namespace="prod",
        selector=sel("app == 'db'"),
        types=("ingress", "egress"),  # defaulted: both directions have rules
        ingress=(
            Rule(
                action="Allow",
                protocol=136,
                source=EntityRule(selector=sel("app == 'api'"), namespace_selector=sel("env == 'prod'")),
                origin=at(61),
            ),
        ),
        egress=(Rule(action="Allow", destination=EntityRule(services=ServiceMatch("web")), origin=at(67)),),
        origin=at(53),
    )


def test_types_defaulting_egress_only(resources: ResourceSet) -> None:
    egress_only = policy(resources, "egress-only")
    assert egress_only.types == ("egress",)
    assert egress_only.selector is None and egress_only.order is None and egress_only.tier == "default"


def test_staged_policies(resources: ResourceSet) -> None:
    assert policy(resources, "staged-deny") == Policy(
        kind="StagedGlobalNetworkPolicy",
        name="staged-deny",
        namespace=None,
        order=1.0,
        types=("ingress",),
        ingress=(Rule(action="Deny", origin=at(89)),),
        pre_dnat=True,
        apply_on_forward=True,
        staged_action="Set",
        origin=at(80),
    )
    assert policy(resources, "staged-delete") == Policy(
        kind="StagedNetworkPolicy",
        name="staged-delete",
        namespace="prod",
        tier="security",
        staged_action="Delete",
        origin=at(91),
    )


def test_tiers(resources: ResourceSet) -> None:
    assert resources.tiers == (
        Tier("security", 100.0, "Pass", at(100)),
        Tier("default", 1_000_000.0, "Deny", at(108)),
    )


def test_network_sets_are_normalised(resources: ResourceSet) -> None:
    assert resources.network_sets == (
        NetworkSet(
            "google-dns",
            None,
            (("kind", "dns"),),
            (net("8.8.8.8/32"), net("8.8.4.4/32"), net("2001:4860:4860::8888/128"), net("10.1.2.0/24")),
            at(115),
        ),
        NetworkSet("partners", "prod", (), (net("192.0.2.0/24"),), at(123)),
    )
    assert [s.kind for s in resources.network_sets] == ["GlobalNetworkSet", "NetworkSet"]


def test_host_endpoints(resources: ResourceSet) -> None:
    assert resources.host_endpoints == (
        HostEndpoint(
            name="node1-eth0",
            node="node1",
            labels=(("role", "gateway"),),
            interface_name="eth0",
            expected_ips=(ip("192.168.1.10"), ip("fd00::10")),
            profiles=("projectcalico-default-allow",),
            ports=(NamedPortDef("ssh", 6, 22), NamedPortDef("dns", 17, 53)),
            origin=at(131),
        ),
        HostEndpoint(name="node2-all", node="node2", interface_name="*", origin=at(145)),
    )


def test_profile(resources: ResourceSet) -> None:
    assert resources.profiles == (
        Profile(
            "frontend",
            (("role", "frontend"),),
            ingress=(Rule(action="Allow", source=EntityRule(selector=sel("role == 'lb'")), origin=at(160)),),
            egress=(Rule(action="Allow", origin=at(164)),),
            origin=at(153),
        ),
    )


def test_felix_configuration(resources: ResourceSet) -> None:
    # Only `default` feeds ResourceSet.felix; node.worker-1 sets nothing flowtui models.
    assert resources.felix == FelixConfiguration(
        name="default",
        failsafe_inbound=(
            FailsafePort(6, 22),
            FailsafePort(17, 68, net("10.0.0.0/8")),
            FailsafePort(6, 179, net("fd00::/8")),
        ),
        failsafe_outbound=(),
        default_endpoint_to_host_action="Drop",
        wireguard_enabled=True,
        origin=at(166),
    )


def test_felix_defaults_when_absent() -> None:
    text = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n"
    felix = load_text(text, "f.yaml").felix
    assert felix.failsafe_outbound == DEFAULT_FAILSAFE_OUTBOUND
    assert felix.default_endpoint_to_host_action == "Accept"
    assert load_text("", "empty.yaml").felix == FelixConfiguration()


def test_load_order_is_kept(resources: ResourceSet) -> None:
    assert [p.name for p in resources.policies] == [
        "security.allow-web",
        "allow-db",
        "egress-only",
        "staged-deny",
        "staged-delete",
    ]


GNP = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: p}}
spec:
{spec}
"""


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ("  order: 1", ("ingress",)),  # no rules at all
        ("  ingress: [{action: Allow}]", ("ingress",)),
        ("  egress: [{action: Allow}]", ("egress",)),
        ("  ingress: [{action: Allow}]\n  egress: [{action: Allow}]", ("ingress", "egress")),
        ("  types: [Egress]", ("egress",)),  # given types are kept, even without rules
        ("  types: [Egress, Ingress]\n  ingress: [{action: Allow}]", ("ingress", "egress")),
        ("  types: []\n  egress: [{action: Deny}]", ("egress",)),  # empty list = not given
    ],
)
def test_types_defaulting(spec: str, types: tuple[str, ...]) -> None:
    (loaded,) = load_text(GNP.format(spec=spec), "p.yaml").policies
    assert loaded.types == types


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("{action: Allow, protocol: 6}", Rule("Allow", protocol=6)),
        ("{action: Allow, protocol: '17'}", Rule("Allow", protocol=17)),
        ("{action: Allow, protocol: SCTP}", Rule("Allow", protocol=132)),
        ("{action: Allow, protocol: 255}", Rule("Allow", protocol=255)),
        ("{action: Allow, protocol: ICMP, icmp: {type: 8}}", Rule("Allow", protocol=1, icmp=ICMPMatch(8))),
        ("{action: Allow, protocol: 1, ipVersion: 4}", Rule("Allow", protocol=1, ip_version=4)),
        # named-port-only lists need no protocol (v3.32)
        (
            "{action: Allow, destination: {ports: [http, dns]}}",
            Rule("Allow", destination=EntityRule(ports=(NamedPort("http"), NamedPort("dns")))),
        ),
        # an unquoted range stays a range: YAML 1.1 base-60 integers are not recognised
        (
            "{action: Allow, protocol: TCP, destination: {ports: [1000:1059]}}",
            Rule("Allow", protocol=6, destination=EntityRule(ports=(PortRange(1000, 1059),))),
        ),
        (
            "{action: Allow, source: {nets: ['fd00::/8'], notNets: ['fd00:1::/32']}}",
            Rule("Allow", source=EntityRule(nets=(net("fd00::/8"),), not_nets=(net("fd00:1::/32"),))),
        ),
        ("{action: Allow, source: {serviceAccounts: {}}}", Rule("Allow")),
        ("{action: Allow, source: {selector: '', namespaceSelector: ' '}}", Rule("Allow")),
    ],
)
def test_rule_forms(rule: str, expected: Rule) -> None:
    (loaded,) = load_text(GNP.format(spec=f"  ingress:\n  - {rule}"), "p.yaml").policies
    assert loaded.ingress == (replace(expected, origin=Origin("p.yaml", 6)),)
