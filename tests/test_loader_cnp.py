"""ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) → Calico form, as Calico 3.32's
converter builds it; the upstream CRD's validation as FILE:LINE problems; the legacy v1alpha1
kinds; Antrea's kind of the same name."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.loader import LoadError, load_paths, load_text
from enforcer.model import NO_ORIGIN, EntityRule, NamedPort, Origin, Policy, PortRange, Rule
from enforcer.resolve import ClusterState
from enforcer.selector import parse_selector as sel
from flowtui.cli.main import cli

BAD = Path(__file__).parent / "fixtures" / "bad" / "cnp.yaml"
MATERIAL = Path(__file__).resolve().parents[1].parent / "shared" / "external" / "material" / "calico-docs"
ORCH = "projectcalico.org/orchestrator == 'k8s'"
net = ipaddress.ip_network

CNP = """\
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard-db}
spec:
  tier: Admin
  priority: 20
  subject:
    pods:
      podSelector: {matchLabels: {app: db}}
  ingress:
  - name: from-web
    action: Accept
    from:
    - namespaces: {matchLabels: {team: web}}
    - pods: {namespaceSelector: {}, podSelector: {matchExpressions: [{key: role, operator: Exists}]}}
    protocols:
    - udp: {destinationPort: {number: 53}}
    - tcp: {destinationPort: {range: {start: 5000, end: 5010}}}
    - tcp: {destinationPort: {number: 5011}}
    - destinationNamedPort: pg
  egress:
  - action: Pass
    to:
    - networks: [192.0.2.7/24, "2001:db8::/32"]
"""


def at(line: int) -> Origin:
    return Origin("cnp.yaml", line)


def test_conversion_is_calicos() -> None:
    policy = load_text(CNP, "cnp.yaml").policies[0]
    web = EntityRule(namespace_selector=sel("team == 'web'"))
    roles = EntityRule(selector=sel(f"{ORCH} && has(role)"), namespace_selector=sel("all()"))
    name = (("name", "from-web"),)

    def ingress(protocol: int | None, ports: tuple[NamedPort | PortRange, ...], source: EntityRule) -> Rule:
        return Rule("Allow", protocol=protocol, source=source, destination=EntityRule(ports=ports),
                    annotations=name, origin=at(11))

    named, sixteen, udp = (NamedPort("pg"),), (PortRange(5000, 5011),), (PortRange(53, 53),)
    nets = (net("192.0.2.0/24"), net("2001:db8::/32"))
    assert policy == Policy(
        kind="ClusterNetworkPolicy",
        name="guard-db",
        namespace=None,
        tier="kube-admin",
        order=20.0,
        selector=sel(f"{ORCH} && app == 'db'"),
        namespace_selector=sel("all()"),  # pods.namespaceSelector absent: every namespace
        types=("ingress", "egress"),
        # one rule per (protocol group sorted by name: named ports first, SCTP, TCP, UDP) × peer
        ingress=(ingress(None, named, web), ingress(None, named, roles), ingress(6, sixteen, web),
                 ingress(6, sixteen, roles), ingress(17, udp, web), ingress(17, udp, roles)),
        egress=(Rule("Pass", destination=EntityRule(nets=nets), origin=at(22)),),
        origin=at(1),
    )


def test_subject_by_namespaces_and_types_from_rules() -> None:
    text = CNP.replace("    pods:\n      podSelector: {matchLabels: {app: db}}", "    namespaces: {}")
    text = text[: text.index("  egress:")].replace("Admin", "Baseline")
    policy = load_text(text, "cnp.yaml").policies[0]
    assert (policy.tier, policy.selector, policy.namespace_selector) == ("kube-baseline", sel(ORCH), sel("all()"))
    assert policy.types == ("ingress",)
    bare = load_text(text[: text.index("  ingress:")], "cnp.yaml").policies[0]
    assert bare.types == ("ingress", "egress") and not bare.ingress  # felix: no types = both


def test_builtin_tiers_order_and_pass() -> None:
    """kube-admin (1,000) before default (1,000,000) before kube-baseline (10,000,000), both Pass,
    without the user declaring them."""
    admin = load_text(CNP, "a.yaml").policies[0]
    baseline = replace(admin, name="base", tier="kube-baseline")
    knp = replace(admin, kind="KubernetesNetworkPolicy", name="k", namespace="ns", tier="default")
    state = ClusterState(load_text("", "x.yaml"))
    state = ClusterState(replace(state.resources, policies=(baseline, knp, admin)))
    assert [(t.name, t.exists, t.tier.order, t.tier.default_action) for t in state.tiers] == [
        ("kube-admin", True, 1000.0, "Pass"), ("default", True, 1_000_000.0, "Deny"),
        ("kube-baseline", True, 10_000_000.0, "Pass")]


def test_order_ties_break_on_felixs_kind_name() -> None:
    """A GlobalNetworkPolicy and a ClusterNetworkPolicy of one name and order in kube-admin:
    felix compares "guard-db//GlobalNetworkPolicy" < "guard-db//KubernetesClusterNetworkPolicy"."""
    cnp = load_text(CNP, "a.yaml").policies[0]
    gnp = replace(cnp, kind="GlobalNetworkPolicy")
    state = ClusterState(replace(load_text("", "x.yaml"), policies=(cnp, gnp)))
    assert [p.kind for p in state.tiers[0].policies] == ["GlobalNetworkPolicy", "ClusterNetworkPolicy"]


def test_legacy_admin_network_policy_is_its_cluster_network_policy(caplog: pytest.LogCaptureFixture) -> None:
    legacy = """\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guard-db}
spec:
  priority: 20
  subject:
    pods:
      podSelector: {matchLabels: {app: db}}
  ingress:
  - name: from-web
    action: Allow
    from:
    - namespaces: {matchLabels: {team: web}}
    - pods: {namespaceSelector: {}, podSelector: {matchExpressions: [{key: role, operator: Exists}]}}
    ports:
    - portNumber: {protocol: UDP, port: 53}
    - portRange: {start: 5000, end: 5010}
    - portNumber: {protocol: TCP, port: 5011}
    - namedPort: pg
  egress:
  - action: Pass
    to:
    - networks: [192.0.2.7/24, "2001:db8::/32"]
"""
    with caplog.at_level(logging.WARNING, logger="flowtui.loader"):
        translated = load_text(legacy, "anp.yaml").policies[0]
    expected = load_text(CNP, "cnp.yaml").policies[0]

    def without_lines(p: Policy) -> Policy:
        return replace(p, origin=NO_ORIGIN, ingress=tuple(replace(r, origin=NO_ORIGIN) for r in p.ingress),
                       egress=tuple(replace(r, origin=NO_ORIGIN) for r in p.egress))

    # portRange without a protocol is TCP: 5000-5010 and 5011 merge as in the v1alpha2 form
    assert without_lines(translated) == without_lines(expected)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "anp.yaml:1: AdminNetworkPolicy/guard-db: warning" in warning
    assert "Calico >= 3.32 no longer enforces AdminNetworkPolicy" in warning


def test_legacy_baseline_is_kube_baseline_priority_0() -> None:
    banp = """\
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
"""
    policy = load_text(banp, "banp.yaml").policies[0]
    assert (policy.kind, policy.name, policy.tier, policy.order) == ("ClusterNetworkPolicy", "default",
                                                                      "kube-baseline", 0.0)
    assert policy.ingress == (Rule("Deny", source=EntityRule(namespace_selector=sel("all()")),
                                   origin=Origin("banp.yaml", 6)),)


def test_same_name_in_legacy_and_new_kinds_is_one_policy_defined_twice() -> None:
    anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n" \
          "metadata: {name: guard-db}\nspec: {priority: 1, subject: {namespaces: {}}}\n"
    with pytest.raises(LoadError, match="defined twice: here and at both.yaml:1"):
        load_text(CNP + "---\n" + anp, "both.yaml")


# Each `# ERROR id` marker in the fixture: (field path, part of the message).
BAD_RULES = {
    "cnp-tier-enum": ("spec.tier", 'invalid tier "Platform" (allowed: Admin, Baseline)'),
    "cnp-priority-range": ("spec.priority", "1001 is out of range (0-1000)"),
    "cnp-subject-one-of": ("spec.subject", "exactly one of namespaces, pods (got namespaces, pods)"),
    "cnp-action-enum": ("spec.ingress[0].action", 'invalid action "Allow" (allowed: Accept, Deny, Pass)'),
    "cnp-from-min": ("spec.ingress[1].from", "at least 1 entry"),
    "cnp-from-required": ("spec.ingress[2].from", "required field is missing"),
    "cnp-spec-fields-required": ("spec.priority", "required field is missing"),
    "cnp-pod-selector-required": ("spec.subject.pods.podSelector", "podSelector is required"),
    "cnp-nodes-peer": ("spec.egress[0].to[0].nodes", "nodes peers are not supported: Calico 3.32 installs the "
                       "standard channel"),
    "cnp-domain-peer": ("spec.egress[1].to[0].domainNames", "domainNames peers are not supported"),
    "cnp-peer-empty": ("spec.egress[2].to[0]", "exactly one of namespaces, pods, networks"),
    "cnp-networks-set": ("spec.egress[3].to[0].networks[1]", "duplicate value"),
    "cnp-networks-cidr": ("spec.egress[4].to[0].networks[0]", "has no /prefix"),
    "cnp-range-order": ("spec.egress[5].protocols[0].tcp.destinationPort.range", "start port 90 must be less"),
    "cnp-port-range": ("spec.egress[5].protocols[1].udp.destinationPort.number", "0 is out of range (1-65535)"),
    "cnp-destination-port-required": ("spec.egress[5].protocols[2].tcp", "must set destinationPort"),
    "cnp-protocol-one-of": ("spec.egress[5].protocols[3]", "exactly one of tcp, udp, sctp, destinationNamedPort"),
    "cnp-named-port": ("spec.egress[5].protocols[4].destinationNamedPort", 'port name "Web_Port"'),
    "cnp-selector-operator": ("spec.subject.namespaces.matchExpressions[0].operator", 'invalid operator "Is"'),
    "cnp-rule-name-length": ("spec.ingress[0].name", "at most 100 allowed"),
    "cnp-legacy-field": ("spec.ingress[0].ports", 'unknown field "ports" (allowed: name, action, from, protocols)'),
    "cnp-rule-limit": ("spec.egress", "has 26 entries (at most 25 allowed)"),
    "antrea-cnp": ("apiVersion", "is Antrea's, a different kind with the same name"),
    "banp-name": ("metadata.name", 'must be named "default"'),
    "banp-action": ("spec.ingress[0].action", 'invalid action "Pass" (allowed: Allow, Deny)'),
    "anp-port-protocol-required": ("spec.egress[0].ports[0].portNumber.protocol", "required field is missing"),
    "anp-protocol-enum": ("spec.egress[0].ports[1].portRange.protocol", 'invalid protocol "ICMP"'),
}


def test_every_crd_rule_at_its_line() -> None:
    with pytest.raises(LoadError) as info:
        load_paths([str(BAD)])
    problems = info.value.problems
    markers = {m.group(1): n for n, text in enumerate(BAD.read_text().splitlines(), 1)
               if (m := re.search(r"#\s*ERROR\s+([a-z0-9-]+)", text))}
    assert set(markers) == set(BAD_RULES)
    for rule, (path, fragment) in BAD_RULES.items():
        found = [p for p in problems if p.line == markers[rule]]
        assert any(p.path == path and fragment in p.message and p.file == str(BAD) for p in found), (rule, found)
    assert {p.line for p in problems} == set(markers.values()), "no problem off the marked lines"
    legacy = [p.obj for p in problems if p.line in (markers["banp-name"], markers["anp-protocol-enum"])]
    assert legacy == ["BaselineAdminNetworkPolicy/not-default", "AdminNetworkPolicy/anp"]


def test_bad_input_stores_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["apply", "--state-dir", str(tmp_path), "--dry-run", "-f", str(BAD)])
    assert result.exit_code == 2
    assert f"{BAD}:6: ClusterNetworkPolicy/enums: spec.tier" in result.output
    assert not (tmp_path / "state.json").exists()


@pytest.mark.skipif(not MATERIAL.is_dir(), reason="published material not present")
def test_published_calico_tutorial_cluster_network_policies_pass_check() -> None:
    """Calico's tiered-policy tutorial ships ClusterNetworkPolicies; Calico accepts them."""
    files = [str(MATERIAL / "tiered-policy-02.yaml"), str(MATERIAL / "tiered-policy-03.yaml")]
    result = CliRunner().invoke(cli, ["check", "-f", *files])
    assert result.exit_code == 0, result.output
    policies = {p.name: p for p in load_paths(files).policies}
    assert (policies["accept-default"].tier, policies["accept-default"].order) == ("kube-admin", 100.0)
    assert (policies["deny-all"].tier, policies["deny-all"].namespace_selector) == ("kube-baseline", sel("all()"))
