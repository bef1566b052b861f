"""Rule matching (calico-semantics.md §1.8, §2.3, §2.11): namespace scoping of rule selectors,
`global()`, `notSelector`, service accounts, network sets, named ports, IP families, ICMP,
notNets/notPorts. Verdict and attribution on the inline cluster of `test_evaluator_cluster.py`.

Pattern: a policy on db's ingress with a "probe" rule 0 (Deny) followed by `Allow`, so rule 0
matching shows as a Deny by rule 0 and not matching as an Allow by rule 1.
"""

from __future__ import annotations

from enforcer.evaluate import Evaluator
from tests.test_evaluator_cluster import GNP, NP, by, cluster, decide

HEP_A = """apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-a-eth0, labels: {hep: "yes"}}
spec:
  node: node-a
  interfaceName: eth0
  expectedIPs: [172.31.0.11, "fd00:172:31::11"]
  profiles: [projectcalico-default-allow]"""
PARTNERS_PROD = """apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: prod, labels: {set: partners}}
spec: {nets: [192.0.2.0/24]}"""
PARTNERS_GLOBAL = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: admins, labels: {set: partners}}
spec: {nets: [203.0.113.0/24, "2001:db8:0:113::/64"]}"""


def probe(rule0: str, *, kind: str = NP, ns: str = "prod", selector: str = "app == 'db'",
          direction: str = "ingress", rest: str = "{action: Allow}") -> str:
    """A policy named `probe` on `selector`: rule 0 `rule0` (Deny), rule 1 `rest`."""
    meta = f"{{name: probe, namespace: {ns}}}" if kind == NP else "{name: probe}"
    return (f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {meta}\nspec:\n"
            f"  selector: {selector}\n  types: [{direction.capitalize()}]\n"
            f"  {direction}: [{{action: Deny, {rule0}}}, {rest}]")


def probe_rule(ev: Evaluator, src: str, dst: str = "prod/db", proto: str = "tcp", port: int | None = 5432,
               **kw: object) -> int:
    """The index of the `probe` rule that decided the flow (asserting that `probe` decided it)."""
    d = decide(ev, src, dst, proto, port, **kw)  # type: ignore[arg-type]
    got = by(d)
    assert got is not None and got[2] == "probe", f"not decided by the probe policy: {got}"
    return int(str(got[5]))


def matches(ev: Evaluator, src: str, dst: str = "prod/db", proto: str = "tcp", port: int | None = 5432,
            **kw: object) -> bool:
    """Did the probe's rule 0 match the flow? (False: rule 1 decided it.)"""
    return probe_rule(ev, src, dst, proto, port, **kw) == 0


# --------------------------------------------------------------------------------------------
# §2.3 Namespace scoping


class TestNamespaceScoping:
    def test_np_rule_selector_is_scoped_to_the_policy_namespace(self) -> None:
        ev = cluster(probe("source: {selector: app == 'web'}"))
        assert matches(ev, "prod/web")
        assert not matches(ev, "dev/web")
        d = decide(ev, "dev/web", "prod/db", "tcp", 5432)
        assert by(d) == (NP, "prod", "probe", "default", "ingress", 1, "Allow")

    def test_gnp_rule_selector_is_not_scoped(self) -> None:
        ev = cluster(probe("source: {selector: app == 'web'}", kind=GNP))
        assert matches(ev, "prod/web") and matches(ev, "dev/web")

    def test_namespace_selector_reaches_across_namespaces(self) -> None:
        ev = cluster(probe("source: {namespaceSelector: env == 'dev'}"))
        assert matches(ev, "dev/web") and matches(ev, "dev/db")
        assert not matches(ev, "prod/web") and not matches(ev, "external:client")

    def test_namespace_selector_and_selector_are_anded(self) -> None:
        ev = cluster(probe("source: {namespaceSelector: env == 'dev', selector: app == 'web'}"))
        assert matches(ev, "dev/web")
        ev2 = cluster(probe("source: {namespaceSelector: env == 'dev', selector: app == 'db'}"))
        assert not matches(ev2, "dev/web")

    def test_namespace_selector_on_the_namespace_name(self) -> None:
        ev = cluster(probe("source: {namespaceSelector: projectcalico.org/name == 'dev'}"))
        assert matches(ev, "dev/web") and not matches(ev, "prod/web")

    def test_namespace_selector_all_matches_every_namespaced_entity_only(self) -> None:
        ev = cluster(HEP_A, PARTNERS_GLOBAL, probe("source: {namespaceSelector: all()}"))
        assert matches(ev, "dev/web") and matches(ev, "prod/web")
        assert not matches(ev, "node:node-a")  # a HEP has no namespace
        assert not matches(ev, "external:admin")  # nor has a GlobalNetworkSet

    def test_global_matches_only_non_namespaced_entities(self) -> None:
        ev = cluster(HEP_A, PARTNERS_GLOBAL, PARTNERS_PROD, probe("source: {namespaceSelector: global()}"))
        assert matches(ev, "node:node-a")  # the HEP's expectedIPs
        assert matches(ev, "external:admin")  # the GlobalNetworkSet's nets
        assert not matches(ev, "external:client")  # the (namespaced) NetworkSet's nets
        assert not matches(ev, "prod/web") and not matches(ev, "dev/web")
        assert not matches(ev, "198.51.100.7")  # not a Calico entity at all

    def test_global_with_a_selector(self) -> None:
        ev = cluster(HEP_A, PARTNERS_GLOBAL, probe("source: {namespaceSelector: global(), selector: hep == 'yes'}"))
        assert matches(ev, "node:node-a")
        assert not matches(ev, "external:admin")

    def test_nets_only_rule_in_a_namespaced_policy_is_not_scoped(self) -> None:
        ev = cluster(probe("source: {nets: [10.244.1.0/24]}"))
        assert matches(ev, "dev/web") and matches(ev, "prod/web")


class TestNotSelector:
    def test_not_selector_matches_non_calico_addresses(self) -> None:
        ev = cluster(probe("source: {notSelector: app == 'web'}", kind=GNP))
        assert matches(ev, "external:client")  # not a Calico endpoint: not in the set
        assert matches(ev, "prod/api")
        assert not matches(ev, "prod/web") and not matches(ev, "dev/web")

    def test_not_selector_is_never_namespaced(self) -> None:
        # Positive side: all namespaces; negative side raw. If notSelector were scoped to prod,
        # dev/web would match.
        ev = cluster(probe("source: {namespaceSelector: all(), notSelector: app == 'web'}"))
        assert not matches(ev, "dev/web")
        assert matches(ev, "dev/db") and matches(ev, "prod/api")
        assert not matches(ev, "external:client")

    def test_only_not_selector_in_an_np_still_scopes_the_positive_side(self) -> None:
        ev = cluster(probe("source: {notSelector: app == 'web'}"))
        assert matches(ev, "prod/api")
        assert not matches(ev, "external:client")  # not in prod
        assert not matches(ev, "prod/web")

    def test_negative_has_only_matches_calico_entities(self) -> None:
        ev = cluster(probe("source: {selector: '!has(app)'}", kind=GNP))
        assert not matches(ev, "external:client")


class TestServiceAccounts:
    def test_names(self) -> None:
        ev = cluster(probe("source: {serviceAccounts: {names: [web-sa]}}"))
        assert matches(ev, "prod/web")
        assert not matches(ev, "prod/api")
        assert not matches(ev, "dev/web")  # sa "default", and another namespace

    def test_selector_on_service_account_labels(self) -> None:
        ev = cluster(probe("source: {serviceAccounts: {selector: role == 'backend'}}"))
        assert matches(ev, "prod/api") and not matches(ev, "prod/web")

    def test_names_and_selector_are_anded(self) -> None:
        ev = cluster(probe("source: {serviceAccounts: {names: [web-sa], selector: role == 'backend'}}"))
        assert not matches(ev, "prod/web") and not matches(ev, "prod/api")

    def test_gnp_service_accounts_across_namespaces(self) -> None:
        ev = cluster(probe("source: {serviceAccounts: {names: [default]}}", kind=GNP))
        assert matches(ev, "dev/web") and not matches(ev, "prod/web")

    def test_policy_service_account_selector(self) -> None:
        doc = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: sa-only}\n"
               "spec: {serviceAccountSelector: role == 'backend', ingress: [{action: Deny}]}")
        ev = cluster(doc)
        assert decide(ev, "prod/db", "prod/api", "tcp", 9000).verdict == "deny"
        assert decide(ev, "prod/api", "prod/web", "tcp", 8080).verdict == "allow"


class TestNetworkSets:
    def test_namespaced_network_set_for_its_own_namespace(self) -> None:
        ev = cluster(PARTNERS_PROD, probe("source: {selector: set == 'partners'}"))
        assert matches(ev, "external:client")
        assert not matches(ev, "external:admin")

    def test_namespaced_network_set_is_invisible_to_another_namespace(self) -> None:
        ev = cluster(PARTNERS_PROD, probe("source: {selector: set == 'partners'}", ns="dev"))
        assert not matches(ev, "external:client", "dev/db")

    def test_namespaced_network_set_via_namespace_selector(self) -> None:
        ev = cluster(PARTNERS_PROD, probe("source: {namespaceSelector: env == 'prod', selector: set == 'partners'}",
                                          ns="dev"))
        assert matches(ev, "external:client", "dev/db")

    def test_global_network_set_from_a_gnp(self) -> None:
        ev = cluster(PARTNERS_GLOBAL, PARTNERS_PROD, probe("source: {selector: set == 'partners'}", kind=GNP))
        assert matches(ev, "external:admin") and matches(ev, "external:client")
        assert matches(ev, "external:admin", v6=True)
        assert not matches(ev, "192.0.3.1")

    def test_global_network_set_is_not_visible_to_an_np_selector(self) -> None:
        ev = cluster(PARTNERS_GLOBAL, probe("source: {selector: set == 'partners'}"))
        assert not matches(ev, "external:admin")

    def test_network_set_as_destination(self) -> None:
        ev = cluster(PARTNERS_GLOBAL, probe("destination: {selector: set == 'partners'}", kind=GNP,
                                            selector="app == 'web'", direction="egress"))
        d = decide(ev, "prod/web", "external:admin", "tcp", 443)
        assert by(d) == (GNP, None, "probe", "default", "egress", 0, "Deny")
        d = decide(ev, "prod/web", "external:client", "tcp", 443)
        assert by(d) == (GNP, None, "probe", "default", "egress", 1, "Allow")

    def test_network_set_inherits_namespace_labels(self) -> None:
        ev = cluster(PARTNERS_PROD, probe("source: {selector: pcns.team == 'shop'}", kind=GNP))
        assert matches(ev, "external:client")


# --------------------------------------------------------------------------------------------
# §2.11 Named ports


class TestNamedPorts:
    def test_pod_container_port(self) -> None:
        # web declares http=8080 (prod) and http=80 (dev): the set is per endpoint.
        ev = cluster(probe("protocol: TCP, destination: {ports: [http]}", kind=GNP, selector="app == 'web'"))
        assert matches(ev, "prod/db", "prod/web", port=8080)
        assert not matches(ev, "prod/db", "prod/web", port=80)
        assert matches(ev, "prod/db", "dev/web", port=80)
        assert not matches(ev, "prod/db", "dev/web", port=8080)

    def test_restricted_to_the_positive_selector(self) -> None:
        # api declares http=9000 too, but the rule's destination selector names web only.
        doc = probe("protocol: TCP, destination: {selector: app == 'web', ports: [http]}", kind=GNP,
                    direction="egress")
        ev = cluster(doc)
        assert matches(ev, "prod/db", "prod/web", port=8080)
        assert not matches(ev, "prod/db", "prod/api", port=9000)
        ev = cluster(probe("protocol: TCP, destination: {ports: [http]}", kind=GNP, direction="egress"))
        assert matches(ev, "prod/db", "prod/api", port=9000)

    def test_restricted_to_the_policy_namespace(self) -> None:
        doc = probe("protocol: TCP, destination: {selector: app == 'web', ports: [http]}", direction="egress")
        ev = cluster(doc)
        assert matches(ev, "prod/db", "prod/web", port=8080)
        assert not matches(ev, "prod/db", "dev/web", port=80)

    def test_protocol_must_match(self) -> None:
        # web declares dns=5353/UDP.
        tcp = cluster(probe("protocol: TCP, destination: {ports: [dns]}", kind=GNP, selector="app == 'web'"))
        assert not matches(tcp, "prod/db", "prod/web", "tcp", 5353)
        udp = cluster(probe("protocol: UDP, destination: {ports: [dns]}", kind=GNP, selector="app == 'web'"))
        assert matches(udp, "prod/db", "prod/web", "udp", 5353)

    def test_no_rule_protocol_matches_the_declared_protocol_only(self) -> None:
        ev = cluster(probe("destination: {ports: [dns]}", kind=GNP, selector="app == 'web'"))
        assert matches(ev, "prod/db", "prod/web", "udp", 5353)
        assert not matches(ev, "prod/db", "prod/web", "tcp", 5353)

    def test_named_and_numeric_ports_are_ored(self) -> None:
        ev = cluster(probe("protocol: TCP, destination: {ports: [http, 443]}", kind=GNP, selector="app == 'web'"))
        assert matches(ev, "prod/db", "prod/web", port=443) and matches(ev, "prod/db", "prod/web", port=8080)

    def test_named_not_ports(self) -> None:
        ev = cluster(probe("protocol: TCP, destination: {notPorts: [http]}", kind=GNP, selector="app == 'web'"))
        assert not matches(ev, "prod/db", "prod/web", port=8080)
        assert matches(ev, "prod/db", "prod/web", port=80)

    def test_host_endpoint_named_port(self) -> None:
        hep = HEP_A.replace("profiles:", "ports: [{name: kubelet, protocol: TCP, port: 10250}]\n  profiles:")
        ev = cluster(hep, probe("protocol: TCP, destination: {ports: [kubelet]}", kind=GNP,
                                selector="app == 'web'", direction="egress"))
        assert matches(ev, "prod/web", "node:node-a", port=10250)
        assert not matches(ev, "prod/web", "node:node-b", port=10250)


# --------------------------------------------------------------------------------------------
# §2.11 IP families, ICMP, nets and ports


class TestFamilies:
    def test_ip_version_rule_exists_only_in_its_family(self) -> None:
        ev = cluster(probe("ipVersion: 6"))
        assert not matches(ev, "prod/web") and matches(ev, "prod/web", v6=True)

    def test_nets_filtering_keeps_rule_indexes(self) -> None:
        rules = ("[{action: Deny, source: {nets: ['2001:db8:0:2::/64']}}, "
                 "{action: Deny, source: {nets: [192.0.2.0/24]}}, {action: Allow}]")
        doc = f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\n" \
              f"spec: {{selector: app == 'db', ingress: {rules}}}"
        ev = cluster(doc)
        d = decide(ev, "external:client", "prod/db", "tcp", 5432)
        assert by(d) == (GNP, None, "p", "default", "ingress", 1, "Deny")
        d = decide(ev, "external:client", "prod/db", "tcp", 5432, v6=True)
        assert by(d) == (GNP, None, "p", "default", "ingress", 0, "Deny")
        d = decide(ev, "external:admin", "prod/db", "tcp", 5432, v6=True)
        assert by(d) == (GNP, None, "p", "default", "ingress", 2, "Allow")

    def test_not_nets_of_the_other_family_remove_the_rule(self) -> None:
        # A notNets list with only IPv6 entries is empty for IPv4: the rule is absent there,
        # it does not match every IPv4 address.
        ev = cluster(probe("source: {notNets: ['2001:db8::/32']}", kind=GNP))
        assert not matches(ev, "external:client")
        assert matches(ev, "fd00:172:31::99", v6=True)
        assert not matches(ev, "external:client", v6=True)

    def test_destination_nets_filter_too(self) -> None:
        ev = cluster(probe("destination: {nets: [192.0.2.0/24]}", kind=GNP, selector="app == 'web'",
                           direction="egress"))
        assert matches(ev, "prod/web", "external:client", port=443)
        assert not matches(ev, "prod/web", "external:client", port=443, v6=True)


class TestICMP:
    def test_icmp_and_icmpv6_rules_imply_their_family(self) -> None:
        rules = "[{action: Allow, protocol: ICMP}, {action: Allow, protocol: ICMPv6}, {action: Deny}]"
        doc = f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\n" \
              f"spec: {{selector: app == 'db', ingress: {rules}}}"
        ev = cluster(doc)
        assert by(decide(ev, "prod/web", "prod/db", "icmp")) == (GNP, None, "p", "default", "ingress", 0, "Allow")
        assert by(decide(ev, "prod/web", "prod/db", "icmpv6")) == (GNP, None, "p", "default", "ingress", 1, "Allow")
        assert by(decide(ev, "prod/web", "prod/db", "tcp", 1)) == (GNP, None, "p", "default", "ingress", 2, "Deny")

    def test_not_protocol_icmp_is_ipv4_only(self) -> None:
        ev = cluster(probe("notProtocol: ICMP", kind=GNP))
        assert matches(ev, "prod/web") and not matches(ev, "prod/web", proto="icmp", port=None)
        assert not matches(ev, "prod/web", v6=True)  # the rule is absent from IPv6

    def test_icmp_type_and_code(self) -> None:
        ev = cluster(probe("protocol: ICMP, icmp: {type: 8, code: 0}", kind=GNP))
        assert matches(ev, "prod/web", proto="icmp", port=None)
        assert not matches(ev, "prod/web", proto="icmp", port=None, icmp_type=8, icmp_code=1)
        assert not matches(ev, "prod/web", proto="icmp", port=None, icmp_type=13)

    def test_icmp_type_only(self) -> None:
        ev = cluster(probe("protocol: ICMPv6, icmp: {type: 128}", kind=GNP))
        assert matches(ev, "prod/web", proto="icmpv6", port=None, icmp_type=128, icmp_code=5)
        assert not matches(ev, "prod/web", proto="icmpv6", port=None, icmp_type=129)

    def test_not_icmp_type(self) -> None:
        ev = cluster(probe("protocol: ICMP, notICMP: {type: 8}", kind=GNP))
        assert not matches(ev, "prod/web", proto="icmp", port=None)
        assert matches(ev, "prod/web", proto="icmp", port=None, icmp_type=0, icmp_code=0)

    def test_not_icmp_type_and_code_is_a_negated_conjunction(self) -> None:
        ev = cluster(probe("protocol: ICMP, notICMP: {type: 3, code: 1}", kind=GNP))
        assert not matches(ev, "prod/web", proto="icmp", port=None, icmp_type=3, icmp_code=1)
        assert matches(ev, "prod/web", proto="icmp", port=None, icmp_type=3, icmp_code=3)
        assert matches(ev, "prod/web", proto="icmp", port=None, icmp_type=8, icmp_code=1)


class TestNetsAndPorts:
    def test_nets(self) -> None:
        ev = cluster(probe("source: {nets: [203.0.113.0/24, 10.244.2.0/24]}", kind=GNP))
        assert matches(ev, "external:admin") and matches(ev, "prod/api")
        assert not matches(ev, "external:client") and not matches(ev, "prod/web")

    def test_not_nets(self) -> None:
        ev = cluster(probe("source: {notNets: [192.0.2.0/24]}", kind=GNP))
        assert matches(ev, "external:admin") and not matches(ev, "external:client")

    def test_ports_and_ranges(self) -> None:
        ev = cluster(probe("protocol: TCP, destination: {ports: [22, '5000:5500']}", kind=GNP))
        assert matches(ev, "prod/web", port=22) and matches(ev, "prod/web", port=5432)
        assert not matches(ev, "prod/web", port=5501)
        assert not matches(ev, "prod/web", proto="udp", port=22)  # protocol

    def test_not_ports(self) -> None:
        ev = cluster(probe("protocol: TCP, destination: {notPorts: [22, '6000:7000']}", kind=GNP))
        assert not matches(ev, "prod/web", port=22) and not matches(ev, "prod/web", port=6500)
        assert matches(ev, "prod/web", port=5432)

    def test_source_ports(self) -> None:
        ev = cluster(probe("protocol: UDP, source: {ports: [53]}", kind=GNP))
        assert matches(ev, "prod/web", "prod/db", "udp", 5432, sport=53)
        assert not matches(ev, "prod/web", "prod/db", "udp", 5432, sport=40000)

    def test_selector_and_nets_are_anded(self) -> None:
        ev = cluster(probe("source: {selector: app == 'web', nets: [10.244.1.16/28]}", kind=GNP))
        assert matches(ev, "dev/web")  # 10.244.1.20
        assert not matches(ev, "prod/web")  # 10.244.1.10

    def test_services_never_match_without_endpoint_slices(self) -> None:
        ev = cluster(probe("source: {services: {name: kube-dns, namespace: kube-system}}", kind=GNP))
        assert not matches(ev, "prod/web")
