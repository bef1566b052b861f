"""Bad input: one test per validation rule, each checking file, line, field path and message.

The fixtures in tests/fixtures/bad/ mark the line each problem must be reported on with a
`# ERROR <rule-id>` comment. `test_rule` finds the problem for each rule id; `test_no_stray`
checks that a fixture produces exactly its marked problems, no more.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from enforcer.loader import LoadError, Problem, load_paths, load_text

BAD = Path(__file__).parent / "fixtures" / "bad"
MARKER = re.compile(r"#\s*ERROR\s+([a-z0-9-]+)")

# (fixture, rule id, field path, distinctive part of the message)
RULES: list[tuple[str, str, str, str]] = [
    # --- documents and envelopes
    ("documents.yaml", "document-is-list", "", "a document must be a mapping"),
    ("documents.yaml", "document-not-mapping", "", "a document must be a mapping"),
    ("documents.yaml", "unknown-apiversion", "kind", "unsupported apiVersion/kind projectcalico.org/v2"),
    ("documents.yaml", "unknown-kind", "kind", 'unsupported kind "GlobalNetworkPolcy"'),
    ("documents.yaml", "kind-missing", "kind", "kind is missing"),
    ("documents.yaml", "list-item-not-mapping", "", "a document must be a mapping"),
    ("documents.yaml", "yaml-duplicate-key", "", 'duplicate key "name" (first at line'),
    # --- metadata
    ("metadata.yaml", "name-required", "metadata.name", "metadata.name is required"),
    ("metadata.yaml", "metadata-required", "metadata", "required field is missing"),
    ("metadata.yaml", "gnp-name-two-dots", "metadata.name", "two labels joined by one '.'"),
    ("metadata.yaml", "np-name-invalid", "metadata.name", 'name "UpperCase" is invalid'),
    ("metadata.yaml", "namespace-type", "metadata.namespace", "must be a string, not the integer 5"),
    ("metadata.yaml", "namespace-forbidden", "metadata.namespace", "GlobalNetworkPolicy is not namespaced"),
    ("metadata.yaml", "namespace-invalid", "metadata.namespace", "is not a DNS-1123 label"),
    ("metadata.yaml", "label-key-invalid", 'metadata.labels["-bad"]', "is not a qualified name"),
    ("metadata.yaml", "label-key-empty-name", 'metadata.labels["example.com/"]', "empty name part"),
    ("metadata.yaml", "label-key-prefix", 'metadata.labels["Bad_Prefix/name"]', 'prefix "Bad_Prefix"'),
    ("metadata.yaml", "label-value-invalid", "metadata.labels.good", "is not a valid label value"),
    ("metadata.yaml", "label-value-long", "metadata.labels.long", "at most 63 allowed"),
    ("metadata.yaml", "label-value-not-string", "metadata.labels.version", "must be a string, not the number 1.0"),
    ("metadata.yaml", "annotation-key-invalid", 'metadata.annotations["bad key!"]', "not a qualified name"),
    (
        "metadata.yaml",
        "disabled-annotation-value",
        'metadata.annotations["flowtui.dev/disabled"]',
        'must be "true" or "false"',
    ),
    ("metadata.yaml", "metadata-unknown-field", "metadata.owner", 'unknown field "owner"'),
    ("metadata.yaml", "top-level-unknown-field", "extra", 'unknown field "extra"'),
    ("duplicate.yaml", "duplicate-object", "metadata.name", "defined twice: here and at"),
    # --- policy level
    ("policy.yaml", "policy-unknown-field", "spec.frobnicate", 'unknown field "frobnicate" (allowed: tier,'),
    ("policy.yaml", "policy-order-type", "spec.order", 'must be a number, not the string "100"'),
    ("policy.yaml", "policy-tier-name", "spec.tier", 'tier "Bad_Tier" is not a DNS-1123 subdomain'),
    ("policy.yaml", "policy-selector-syntax", "spec.selector", "(at column 7)"),
    ("policy.yaml", "policy-types-invalid", "spec.types[0]", 'invalid policy type "ingress"'),
    ("policy.yaml", "policy-types-duplicate", "spec.types[1]", "listed more than once"),
    ("policy.yaml", "policy-performance-hint", "spec.performanceHints[0]", "AssumeNeededOnEveryNode"),
    ("policy.yaml", "policy-selector-global", "spec.selector", "global() can only be used"),
    ("policy.yaml", "policy-sa-selector-global", "spec.serviceAccountSelector", "global() can only be used"),
    ("policy.yaml", "policy-nsselector-global", "spec.namespaceSelector", "global() can only be used"),
    ("policy.yaml", "prednat-and-donottrack", "spec.preDNAT", "preDNAT and doNotTrack cannot both be true"),
    ("policy.yaml", "prednat-egress-rules", "spec.egress", "preDNAT policy cannot have egress rules"),
    ("policy.yaml", "prednat-egress-type", "spec.types", "cannot have the Egress type"),
    ("policy.yaml", "donottrack-needs-applyonforward", "spec.applyOnForward", "applyOnForward must be true"),
    ("policy.yaml", "prednat-needs-applyonforward", "spec.applyOnForward", "applyOnForward must be true"),
    ("policy.yaml", "np-no-donottrack", "spec.doNotTrack", 'unknown field "doNotTrack"'),
    ("policy.yaml", "np-no-namespaceselector", "spec.namespaceSelector", 'unknown field "namespaceSelector"'),
    ("policy.yaml", "selector-too-long", "spec.selector", "at most 1024 allowed"),
    ("policy.yaml", "staged-action-invalid", "spec.stagedAction", "allowed: Set, Delete, Learn, Ignore"),
    ("policy.yaml", "staged-delete-nonzero", "spec.selector", "must not be set when stagedAction is Delete"),
    ("policy.yaml", "sknp-delete-nonzero", "spec.podSelector", "must not be set when stagedAction is Delete"),
    # --- rules
    ("rules.yaml", "action-required", "spec.ingress[0].action", "required field is missing"),
    ("rules.yaml", "action-invalid", "spec.ingress[1].action", "allowed: Allow, Deny, Log, Pass"),
    ("rules.yaml", "ipversion-invalid", "spec.ingress[2].ipVersion", "allowed: 4 or 6"),
    ("rules.yaml", "protocol-case", "spec.ingress[3].protocol", "names are case-sensitive"),
    ("rules.yaml", "protocol-zero", "spec.ingress[4].protocol", "protocol number 0 is invalid"),
    ("rules.yaml", "protocol-range", "spec.ingress[5].protocol", "protocol number 256 is invalid"),
    ("rules.yaml", "notprotocol-invalid", "spec.ingress[6].notProtocol", 'invalid protocol "Tcp"'),
    ("rules.yaml", "icmp-ipversion", "spec.ingress[7].ipVersion", "protocol ICMP requires ipVersion 4"),
    ("rules.yaml", "icmpv6-ipversion", "spec.ingress[8].ipVersion", "protocol ICMPv6 requires ipVersion 6"),
    ("rules.yaml", "noticmp-protocol-ipversion", "spec.ingress[9].ipVersion", "notProtocol ICMP requires ipVersion 4"),
    ("rules.yaml", "icmp-needs-protocol", "spec.ingress[10].icmp", "icmp requires protocol ICMP or ICMPv6"),
    ("rules.yaml", "noticmp-needs-protocol", "spec.ingress[11].notICMP", "notICMP requires protocol ICMP"),
    ("rules.yaml", "icmp-code-needs-type", "spec.ingress[12].icmp.code", "ICMP code specified without an ICMP type"),
    ("rules.yaml", "icmp-type-range", "spec.ingress[13].icmp.type", "255 is out of range (0-254)"),
    ("rules.yaml", "icmp-code-range", "spec.ingress[14].notICMP.code", "256 is out of range (0-255)"),
    ("rules.yaml", "rule-unknown-field", "spec.ingress[15].frobnicate", 'unknown field "frobnicate" (allowed: action,'),
    ("rules.yaml", "entity-unknown-field", "spec.ingress[16].source.frobnicate", "(allowed: nets, notNets,"),
    ("rules.yaml", "port-zero", "spec.ingress[0].destination.ports[0]", "port 0 is out of range"),
    ("rules.yaml", "port-too-big", "spec.ingress[0].destination.ports[1]", "port 65536 is out of range"),
    ("rules.yaml", "port-range-reversed", "spec.ingress[0].destination.ports[2]", "port range 90:80 is reversed"),
    ("rules.yaml", "port-range-zero", "spec.ingress[0].destination.ports[3]", "port 0 is out of range"),
    ("rules.yaml", "port-range-invalid", "spec.ingress[0].destination.ports[4]", 'invalid port range "10:x"'),
    ("rules.yaml", "port-name-invalid", "spec.ingress[0].destination.ports[5]", 'invalid port "bad port"'),
    ("rules.yaml", "port-float", "spec.ingress[0].destination.ports[6]", "invalid port (allowed: an integer"),
    ("rules.yaml", "port-name-too-long", "spec.ingress[1].destination.ports[0]", "port name of up to 128"),
    ("rules.yaml", "ports-need-protocol", "spec.ingress[2].destination.ports", "numeric ports must set protocol"),
    ("rules.yaml", "notports-need-protocol", "spec.ingress[3].source.notPorts", "numeric ports must set protocol"),
    ("rules.yaml", "ports-protocol-without-ports", "spec.ingress[4].destination.ports", "protocol icmp has no ports"),
    ("rules.yaml", "net-not-masked", "spec.egress[0].destination.nets[0]", "did you mean 10.0.0.0/8?"),
    ("rules.yaml", "net-bad-prefix", "spec.egress[0].destination.nets[1]", "prefix length 33 (allowed: 0-32"),
    ("rules.yaml", "net-invalid", "spec.egress[0].destination.nets[2]", '"not-a-cidr" is not a valid CIDR'),
    ("rules.yaml", "net-netmask-form", "spec.egress[0].destination.nets[3]", "is not a valid CIDR"),
    ("rules.yaml", "nets-mixed-in-field", "spec.egress[1].destination.nets", "mixes IPv4 and IPv6"),
    ("rules.yaml", "nets-mixed-across-fields", "spec.egress[2].destination.notNets", "mixes IPv4 and IPv6"),
    ("rules.yaml", "nets-ipversion-mismatch", "spec.egress[3].source.nets", "does not match the rule's ipVersion 6"),
    ("rules.yaml", "notnets-catch-all-v4", "spec.egress[4].destination.notNets[0]", "0.0.0.0/0 excludes every address"),
    ("rules.yaml", "notnets-catch-all-v6", "spec.egress[5].destination.notNets[0]", "::/0 excludes every address"),
    ("rules.yaml", "rule-selector-global", "spec.ingress[0].source.selector", "global() can only be used"),
    (
        "rules.yaml",
        "rule-nsselector-global-combined",
        "spec.ingress[1].source.namespaceSelector",
        "global() cannot be combined",
    ),
    ("rules.yaml", "rule-notselector-syntax", "spec.ingress[2].source.notSelector", "(at column 12)"),
    ("rules.yaml", "sa-selector-syntax", "spec.ingress[4].source.serviceAccounts.selector", "(at column 5)"),
    ("rules.yaml", "services-with-selector", "spec.ingress[0].source.services", "cannot be combined with selector"),
    ("rules.yaml", "services-name-required", "spec.ingress[1].source.services.name", "must give the service name"),
    ("rules.yaml", "services-ingress-destination", "spec.ingress[2].destination.services", "rule's destination"),
    ("rules.yaml", "services-name-invalid", "spec.ingress[3].source.services.name", "is not a DNS-1123 subdomain"),
    ("rules.yaml", "services-egress-source", "spec.egress[0].source.services", "egress rule's source"),
    ("rules.yaml", "services-with-ports", "spec.egress[1].destination.ports", "cannot be combined with services"),
    ("rules.yaml", "gnp-services-namespace", "spec.ingress[0].source.services", "must give services.namespace"),
    ("rules.yaml", "http-not-allow", "spec.ingress[0].http", "only valid on Allow rules"),
    ("rules.yaml", "http-protocol", "spec.ingress[1].http", "requires protocol TCP or no protocol"),
    ("rules.yaml", "http-duplicate-method", "spec.ingress[2].http.methods[1]", 'duplicate HTTP method "GET"'),
    ("rules.yaml", "http-path-both", "spec.ingress[3].http.paths[0]", "sets both exact and prefix"),
    ("rules.yaml", "http-path-neither", "spec.ingress[3].http.paths[1]", "must set exact or prefix"),
    ("rules.yaml", "http-path-slash", "spec.ingress[3].http.paths[2].exact", "must start with '/'"),
    ("rules.yaml", "http-path-query", "spec.ingress[3].http.paths[3].prefix", "not contain '?', '#' or spaces"),
    (
        "rules.yaml",
        "rule-annotation-key",
        'spec.ingress[4].metadata.annotations["bad key!"]',
        "is not a qualified name",
    ),
    ("rules.yaml", "http-egress", "spec.egress[0].http", "not allowed in egress rules"),
    # --- other Calico kinds
    ("tier.yaml", "tier-name-dot", "metadata.name", 'name "my.tier" is not a DNS-1123 label'),
    ("tier.yaml", "tier-name-long", "metadata.name", "name is 64 characters long (at most 63 allowed)"),
    ("tier.yaml", "tier-default-action", "spec.defaultAction", "allowed: Deny, Pass"),
    ("tier.yaml", "tier-default-order", "spec.order", 'built-in tier "default" must have order 1000000'),
    ("hostendpoint.yaml", "hep-node-required", "spec.node", "node is required"),
    ("hostendpoint.yaml", "hep-interface-or-ips", "spec.interfaceName", "interfaceName or expectedIPs"),
    ("hostendpoint.yaml", "hep-interface-invalid", "spec.interfaceName", "invalid interface name"),
    ("hostendpoint.yaml", "hep-expected-ip-invalid", "spec.expectedIPs[0]", "is not a valid IP address"),
    ("hostendpoint.yaml", "hep-profile-name", "spec.profiles[0]", "is not a DNS-1123 subdomain"),
    ("hostendpoint.yaml", "hep-port-name", "spec.ports[0].name", 'port name "HTTP"'),
    ("hostendpoint.yaml", "hep-port-protocol", "spec.ports[1].protocol", "must be TCP, UDP or SCTP"),
    ("hostendpoint.yaml", "hep-port-number", "spec.ports[2].port", "0 is out of range (1-65535)"),
    ("hostendpoint.yaml", "hep-port-required", "spec.ports[3].port", "required field is missing"),
    ("hostendpoint.yaml", "hep-unknown-field", "spec.interface", 'unknown field "interface"'),
    (
        "networkset.yaml",
        "networkset-namespace-label",
        'metadata.labels["projectcalico.org/namespace"]',
        "is reserved",
    ),
    (
        "networkset.yaml",
        "globalnetworkset-namespace-label",
        'metadata.labels["projectcalico.org/namespace"]',
        "is reserved",
    ),
    ("networkset.yaml", "networkset-bad-cidr", "spec.nets[0]", "prefix length 40"),
    ("networkset.yaml", "networkset-unknown-field", "spec.allowedEgressDomains", "(allowed: nets)"),
    ("profile.yaml", "profile-label-key", 'spec.labelsToApply["bad key!"]', "is not a qualified name"),
    ("profile.yaml", "profile-http-protocol", "spec.ingress[0].http", "requires protocol TCP"),
    ("felix.yaml", "felix-endpoint-to-host", "spec.defaultEndpointToHostAction", "allowed: Drop, Accept, Return"),
    ("felix.yaml", "felix-wireguard-bool", "spec.wireguardEnabled", "must be true or false"),
    ("felix.yaml", "felix-failsafe-protocol-case", "spec.failsafeInboundHostPorts[0].protocol", '"tcp"'),
    ("felix.yaml", "felix-failsafe-port-high", "spec.failsafeInboundHostPorts[1].port", "65536 is out of range"),
    ("felix.yaml", "felix-failsafe-port", "spec.failsafeInboundHostPorts[2].port", "-1 is out of range"),
    ("felix.yaml", "felix-failsafe-net", "spec.failsafeInboundHostPorts[3].net", "prefix length 99"),
    ("felix.yaml", "felix-failsafe-protocol-required", "spec.failsafeInboundHostPorts[4].protocol", "required"),
    ("felix.yaml", "felix-failsafe-unknown", "spec.failsafeOutboundHostPorts[0].cidr", 'unknown field "cidr"'),
    ("felix.yaml", "felix-unknown-field", "spec.someNewFelixSetting", 'unknown field "someNewFelixSetting"'),
    ("felix.yaml", "felix-iptables-backend", "spec.iptablesBackend", '"badVal" (allowed: Legacy, NFT, Auto)'),
    ("felix.yaml", "felix-enum-case", "spec.nftablesMode", '"enabled" (allowed: Disabled, Enabled, Auto)'),
    ("felix.yaml", "felix-duration-type", "spec.reportingInterval", "must be a string, not the integer 30"),
    ("felix.yaml", "felix-duration", "spec.iptablesRefreshInterval", 'invalid duration "1m30"'),
    ("felix.yaml", "felix-rate-limit", "spec.logActionRateLimit", 'invalid value "0/second"'),
    ("felix.yaml", "felix-wireguard-port", "spec.wireguardListeningPort", "0 is out of range (1-65535)"),
    ("felix.yaml", "felix-interface", "spec.wireguardInterfaceName", "invalid interface name"),
    ("felix.yaml", "felix-prometheus-host", "spec.prometheusMetricsHost", 'invalid host "bad host"'),
    ("felix.yaml", "felix-regexp", "spec.logDebugFilenameRegex", "invalid regular expression"),
    ("felix.yaml", "felix-openstack-region", "spec.openstackRegion", "openstack region"),
    ("felix.yaml", "felix-external-nodes", "spec.externalNodesList[1]", "an IPv6 CIDR is not allowed here"),
    ("felix.yaml", "felix-mark-mask", "spec.iptablesMarkMask", "4294967296 is out of range"),
    ("felix.yaml", "felix-hto-name", "spec.healthTimeoutOverrides[0].name", 'invalid name "calc/graph"'),
    ("felix.yaml", "felix-per-node-failsafe", "spec.failsafeInboundHostPorts", "no per-node Felix settings"),
    ("felix.yaml", "felix-name", "metadata.name", "allowed names: default, node.<nodename>"),
    # --- Kubernetes NetworkPolicy
    ("knp.yaml", "knp-matchlabels-key", 'spec.podSelector.matchLabels["bad key!"]', "not a qualified name"),
    ("knp.yaml", "knp-matchlabels-value", "spec.podSelector.matchLabels.app", "not a valid label value"),
    ("knp.yaml", "knp-operator-invalid", "spec.podSelector.matchExpressions[0].operator", 'invalid operator "Is"'),
    ("knp.yaml", "knp-in-needs-values", "spec.podSelector.matchExpressions[1].values", "needs at least one value"),
    ("knp.yaml", "knp-exists-no-values", "spec.podSelector.matchExpressions[2].values", "takes no values"),
    ("knp.yaml", "knp-policytypes-invalid", "spec.policyTypes[0]", 'invalid policy type "ingress"'),
    ("knp.yaml", "knp-unknown-field", "spec.selector", "(allowed: podSelector, policyTypes, ingress, egress)"),
    ("knp.yaml", "knp-policytypes-duplicate", "spec.policyTypes[1]", "listed more than once"),
    ("knp.yaml", "knp-peer-empty", "spec.ingress[0].from[0]", "must set podSelector, namespaceSelector or ipBlock"),
    ("knp.yaml", "knp-ipblock-with-selector", "spec.ingress[0].from[1].ipBlock", "cannot be combined"),
    ("knp.yaml", "knp-ipblock-cidr-required", "spec.ingress[0].from[2].ipBlock.cidr", "required field is missing"),
    ("knp.yaml", "knp-ipblock-no-prefix", "spec.ingress[0].from[3].ipBlock.cidr", "has no /prefix"),
    ("knp.yaml", "knp-except-outside", "spec.ingress[0].from[4].ipBlock.except[0]", "strict subset of cidr"),
    ("knp.yaml", "knp-except-not-strict", "spec.ingress[0].from[4].ipBlock.except[1]", "strict subset of cidr"),
    ("knp.yaml", "knp-except-family", "spec.ingress[0].from[4].ipBlock.except[2]", "strict subset of cidr"),
    ("knp.yaml", "knp-ingress-to", "spec.ingress[0].to", "(allowed: from, ports)"),
    ("knp.yaml", "knp-port-protocol", "spec.egress[0].ports[0].protocol", "(allowed: TCP, UDP, SCTP)"),
    ("knp.yaml", "knp-port-zero", "spec.egress[0].ports[1].port", "0 is out of range"),
    ("knp.yaml", "knp-port-numeric-string", "spec.egress[0].ports[2].port", "must contain at least one letter"),
    ("knp.yaml", "knp-port-name-case", "spec.egress[0].ports[3].port", "only lower case alphanumerics"),
    ("knp.yaml", "knp-endport-less", "spec.egress[0].ports[4].endPort", "must be greater than or equal to port 80"),
    ("knp.yaml", "knp-endport-named", "spec.egress[0].ports[5].endPort", "cannot be used with a named port"),
    ("knp.yaml", "knp-endport-no-port", "spec.egress[0].ports[6].endPort", "endPort needs a numeric port"),
    ("knp.yaml", "knp-endport-range", "spec.egress[0].ports[7].endPort", "70000 is out of range"),
    ("knp.yaml", "sknp-no-tier", "spec.tier", 'unknown field "tier"'),
    # --- cluster state
    ("cluster.yaml", "pod-namespace-type", "metadata.namespace", "must be a string, not a list"),
    ("cluster.yaml", "pod-nodename-type", "spec.nodeName", "must be a string, not the integer 5"),
    ("cluster.yaml", "pod-port-name", "spec.containers[0].ports[0].name", 'port name "HTTP"'),
    ("cluster.yaml", "pod-container-port-range", "spec.containers[0].ports[1].containerPort", "70000 is out of range"),
    ("cluster.yaml", "pod-port-protocol", "spec.containers[0].ports[2].protocol", 'invalid protocol "ICMP"'),
    ("cluster.yaml", "pod-container-port-required", "spec.containers[0].ports[3].containerPort", "required"),
    ("cluster.yaml", "pod-ip-invalid", "status.podIP", '"10.0.0.300" is not a valid IP address'),
    ("cluster.yaml", "pod-ips-invalid", "status.podIPs[0].ip", '"not-an-ip" is not a valid IP address'),
    ("cluster.yaml", "node-podcidr-invalid", "spec.podCIDR", "prefix length 99"),
    ("cluster.yaml", "node-address-invalid", "status.addresses[0].address", '"bogus" is not a valid IP address'),
    ("cluster.yaml", "namespace-kind-namespaced", "metadata.namespace", "Namespace is not namespaced"),
    ("cluster.yaml", "namespace-name-invalid", "metadata.name", "is not a DNS-1123 label"),
    ("cluster.yaml", "sa-unknown-field", "data", 'unknown field "data"'),
    # --- lab
    ("lab.yaml", "lab-outside-range", "spec.addresses[0]", "8.8.8.8 is outside the lab's address ranges"),
    ("lab.yaml", "lab-outside-range-v6", "spec.addresses[2]", "2001:db9::1 is outside the lab's address ranges"),
    ("lab.yaml", "lab-not-an-ip", "spec.addresses[3]", "is not a valid IP address"),
    ("lab.yaml", "lab-metadata-labels", "metadata.labels", 'unknown field "labels" (allowed: name)'),
    ("lab.yaml", "lab-no-addresses", "spec.addresses", "needs at least one address"),
    ("lab.yaml", "lab-unknown-field", "spec.ports", 'unknown field "ports" (allowed: addresses)'),
    ("lab.yaml", "lab-spec-required", "spec", "required field is missing"),
]

_cache: dict[str, tuple[Problem, ...]] = {}


def problems_of(fixture: str) -> tuple[Problem, ...]:
    if fixture not in _cache:
        with pytest.raises(LoadError) as info:
            load_paths([str(BAD / fixture)])
        _cache[fixture] = info.value.problems
    return _cache[fixture]


def marker_lines(fixture: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, text in enumerate((BAD / fixture).read_text().splitlines(), start=1):
        match = MARKER.search(text)
        if match:
            assert match.group(1) not in lines, f"marker {match.group(1)} used twice in {fixture}"
            lines[match.group(1)] = number
    return lines


@pytest.mark.parametrize(("fixture", "rule", "path", "fragment"), RULES, ids=[r[1] for r in RULES])
def test_rule(fixture: str, rule: str, path: str, fragment: str) -> None:
    line = marker_lines(fixture)[rule]
    found = [p for p in problems_of(fixture) if p.line == line]
    assert found, f"no problem reported at {fixture}:{line}"
    assert any(p.file == str(BAD / fixture) for p in found)
    assert any(p.path == path and fragment in p.message for p in found), "\n".join(map(str, found))


@pytest.mark.parametrize("fixture", sorted({r[0] for r in RULES}))
def test_no_stray(fixture: str) -> None:
    """Each fixture reports exactly its marked problems: one per marker, on the marked line."""
    markers = marker_lines(fixture)
    covered = {r[1] for r in RULES if r[0] == fixture}
    assert set(markers) == covered, "every marker has a RULES entry and vice versa"
    lines = sorted(p.line for p in problems_of(fixture))
    assert lines == sorted(markers.values()), "\n".join(map(str, problems_of(fixture)))


def test_problem_str_format() -> None:
    problem = next(p for p in problems_of("rules.yaml") if p.path == "spec.ingress[3].protocol")
    assert str(problem) == (
        f"{BAD / 'rules.yaml'}:13: GlobalNetworkPolicy/rules-a: spec.ingress[3].protocol: "
        'invalid protocol "tcp" (allowed: TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite, or a number 1-255; '
        "names are case-sensitive)"
    )
    namespaced = next(p for p in problems_of("rules.yaml") if p.obj.startswith("NetworkPolicy/"))
    assert namespaced.obj == "NetworkPolicy/ns1/rules-selectors"


def test_yaml_syntax_error_is_a_problem_with_the_parsers_line() -> None:
    (problem,) = problems_of("syntax.yaml")
    assert problem.line == 8  # PyYAML reports the end of the stream...
    assert problem.path == ""
    assert "while scanning a quoted scalar (line 6)" in problem.message  # ...and where it began
    assert str(problem).startswith(f"{BAD / 'syntax.yaml'}:8: YAML syntax error:")


def test_json_syntax_error_line() -> None:
    (problem,) = problems_of("syntax.json")
    assert problem.line == 6
    assert "JSON syntax error: expected a string key" in problem.message


def test_all_files_all_problems_in_one_error() -> None:
    with pytest.raises(LoadError) as info:
        load_paths([str(BAD / "tier.yaml"), str(BAD / "lab.yaml"), str(BAD / "nope.yaml")])
    problems = info.value.problems
    files = [p.file for p in problems]
    assert files.count(str(BAD / "tier.yaml")) == 4
    assert files.count(str(BAD / "lab.yaml")) == 7
    missing = [p for p in problems if p.file.endswith("nope.yaml")]
    assert [(p.line, p.message) for p in missing] == [(0, "no such file or directory")]
    assert str(info.value).splitlines() == [str(p) for p in problems]
    assert isinstance(info.value, ValueError)


def test_problems_of_a_file_are_in_line_order() -> None:
    lines = [p.line for p in problems_of("rules.yaml")]
    assert lines == sorted(lines)


GOOD_GNP = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
"""


def test_a_file_with_a_problem_contributes_nothing(tmp_path: Path) -> None:
    # The same name in a good file and in a bad file is not a duplicate: the bad file's objects
    # are all dropped, so only its own problem is reported.
    (tmp_path / "a.yaml").write_text(GOOD_GNP.format(name="shared"))
    (tmp_path / "b.yaml").write_text(GOOD_GNP.format(name="shared") + "spec: {order: x}\n")
    with pytest.raises(LoadError) as info:
        load_paths([str(tmp_path)])
    assert [(p.file, p.path) for p in info.value.problems] == [(str(tmp_path / "b.yaml"), "spec.order")]


def test_duplicates_across_files_name_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD_GNP.format(name="x"))
    (tmp_path / "b.yaml").write_text("---\n" + GOOD_GNP.format(name="x"))
    with pytest.raises(LoadError) as info:
        load_paths([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")])
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == (str(tmp_path / "b.yaml"), 5, "metadata.name")
    assert f"here and at {tmp_path / 'a.yaml'}:1" in problem.message
    assert problem.obj == "GlobalNetworkPolicy/x"


def test_same_name_in_different_kinds_or_namespaces_is_fine() -> None:
    text = "\n---\n".join(
        [
            GOOD_GNP.format(name="x"),
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x, namespace: a}",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: x, namespace: b}",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: a}",
        ]
    )
    assert len(load_text(text, "x.yaml").policies) == 4


RULE_DOC = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: limits
spec:
  ingress:
"""


@pytest.mark.parametrize(
    ("body", "path", "fragment"),
    [
        ("".join("    - action: Allow\n" for _ in range(1025)), "spec.ingress", "has 1025 entries (at most 1024"),
        (
            "    - action: Allow\n      source:\n        nets: ["
            + ", ".join(f"10.0.{i // 256}.{i % 256}/32" for i in range(257))
            + "]\n",
            "spec.ingress[0].source.nets",
            "has 257 entries (at most 256",
        ),
        (
            "    - action: Allow\n      source:\n        notNets: ["
            + ", ".join(f"10.0.{i // 256}.{i % 256}" for i in range(257))
            + "]\n",
            "spec.ingress[0].source.notNets",
            "has 257 entries (at most 256",
        ),
        (
            "    - action: Allow\n      protocol: TCP\n      destination:\n        ports: ["
            + ", ".join(str(1000 + i) for i in range(51))
            + "]\n",
            "spec.ingress[0].destination.ports",
            "has 51 entries (at most 50",
        ),
        (
            "    - action: Allow\n      protocol: TCP\n      destination:\n        notPorts: ["
            + ", ".join(str(1000 + i) for i in range(51))
            + "]\n",
            "spec.ingress[0].destination.notPorts",
            "has 51 entries (at most 50",
        ),
    ],
    ids=["rules-per-direction", "nets", "not-nets", "ports", "not-ports"],
)
def test_list_limits(body: str, path: str, fragment: str) -> None:
    with pytest.raises(LoadError) as info:
        load_text(RULE_DOC + body, "limits.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.path) == ("limits.yaml", path)
    key = path.rsplit(".", 1)[-1]
    text = RULE_DOC + body
    expected = max(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(key + ":"))
    assert problem.line == expected
    assert fragment in problem.message
