"""Kubernetes NetworkPolicy end to end (calico-semantics.md §2.12): converted on load, decided by
the evaluator like any Calico policy (tier default, order 1000, kind KubernetesNetworkPolicy).
Verdict and attribution on the inline cluster of `test_evaluator_cluster.py`.
"""

from __future__ import annotations

from enforcer.evaluate import Decision
from tests.test_evaluator_cluster import GNP, KNP, by, cluster, decide, pending_by


def knp(name: str, spec: str, ns: str = "prod") -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n" \
           f"spec:\n{spec}"


def knp_rule(d: Decision, name: str = "k") -> int | None:
    """The rule index of KNP `name` in prod that decided the flow, or None if something else did."""
    got = by(d)
    if got is None or got[:3] != (KNP, "prod", name):
        return None
    assert got[3] == "default"
    return int(str(got[5]))


DENY_ALL_INGRESS = "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: []"


class TestSelectionAndDefaults:
    def test_empty_pod_selector_selects_every_pod_of_the_namespace(self) -> None:
        ev = cluster(knp("k", DENY_ALL_INGRESS))
        for pod in ("prod/db", "prod/api"):
            d = decide(ev, "dev/web", pod, "tcp", 80)
            assert (d.verdict, by(d)) == ("deny", (KNP, "prod", "k", "default", "ingress", -1, "Deny"))
        assert decide(ev, "prod/web", "dev/db", "tcp", 80).verdict == "allow"  # another namespace

    def test_empty_ingress_list_is_deny_all(self) -> None:
        ev = cluster(knp("k", "  podSelector: {matchLabels: {app: db}}\n  ingress: []"))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == -1
        assert decide(ev, "prod/web", "prod/api", "tcp", 9000).verdict == "allow"

    def test_ingress_with_one_empty_rule_is_allow_all(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{}]"))
        d = decide(ev, "external:client", "prod/db", "udp", 53)
        assert (d.verdict, knp_rule(d)) == ("allow", 0)

    def test_egress_deny_all(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  policyTypes: [Egress]"))
        d = decide(ev, "prod/web", "external:client", "tcp", 443)
        assert (d.verdict, by(d)) == ("deny", (KNP, "prod", "k", "default", "egress", -1, "Deny"))
        assert decide(ev, "external:client", "prod/web", "tcp", 8080).verdict == "allow"

    def test_policy_types_defaulted_from_a_non_empty_egress(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]"))
        assert decide(ev, "prod/web", "external:admin", "tcp", 443).verdict == "deny"  # egress governed
        assert knp_rule(decide(ev, "prod/web", "external:client", "tcp", 443)) == 0
        assert knp_rule(decide(ev, "external:admin", "prod/web", "tcp", 8080)) == -1  # and ingress: no rules

    def test_match_expressions(self) -> None:
        spec = ("  podSelector: {matchExpressions: [{key: app, operator: In, values: [db, api]}]}\n"
                "  policyTypes: [Ingress]")
        ev = cluster(knp("k", spec))
        assert decide(ev, "prod/web", "prod/db", "tcp", 5432).verdict == "deny"
        assert decide(ev, "prod/web", "prod/api", "tcp", 9000).verdict == "deny"
        assert decide(ev, "prod/db", "prod/web", "tcp", 8080).verdict == "allow"

    def test_order_1000_in_the_default_tier(self) -> None:
        gnp = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
               "spec: {order: 1000.5, selector: app == 'db', ingress: [{action: Deny}]}")
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{}]"), gnp)
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{}]"), gnp.replace("1000.5", "999.5"))
        assert by(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == (GNP, None, "g", "default", "ingress", 0, "Deny")


class TestPeers:
    def test_pod_selector_peer_is_in_the_policy_namespace(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]"))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "dev/web", "prod/db", "tcp", 5432)) == -1

    def test_namespace_selector_peer(self) -> None:
        peer = "{namespaceSelector: {matchLabels: {env: dev}}}"
        ev = cluster(knp("k", f"  podSelector: {{}}\n  ingress: [{{from: [{peer}]}}]"))
        assert knp_rule(decide(ev, "dev/db", "prod/web", "tcp", 8080)) == 0
        assert knp_rule(decide(ev, "prod/api", "prod/web", "tcp", 8080)) == -1

    def test_empty_namespace_selector_is_every_namespace_pods_only(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]"))
        assert knp_rule(decide(ev, "dev/db", "prod/web", "tcp", 8080)) == 0
        # The orchestrator term keeps non-pods out, even with an all-namespaces selector.
        netset = ("apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: n, namespace: dev}\n"
                  "spec: {nets: [192.0.2.0/24]}")
        ev = cluster(netset, knp("k", "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]"))
        assert knp_rule(decide(ev, "external:client", "prod/web", "tcp", 8080)) == -1

    def test_namespace_and_pod_selector_in_one_peer_are_anded(self) -> None:
        spec = ("  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}},"
                " podSelector: {matchLabels: {app: web}}}]}]")
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "dev/web", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "dev/db", "prod/web", "tcp", 8080)) == -1

    def test_ip_block_with_except(self) -> None:
        spec = "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.48/28]}}]}]"
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "192.0.2.10", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "external:client", "prod/db", "tcp", 5432)) == -1  # .50 is in the except
        assert knp_rule(decide(ev, "external:admin", "prod/db", "tcp", 5432)) == -1

    def test_ip_block_of_the_other_family(self) -> None:
        spec = "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: '2001:db8:0:2::/64'}}]}]"
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "external:client", "prod/db", "tcp", 5432, v6=True)) == 0
        assert knp_rule(decide(ev, "external:client", "prod/db", "tcp", 5432)) == -1

    def test_one_rule_per_peer(self) -> None:
        spec = ("  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}, "
                "{ipBlock: {cidr: 192.0.2.0/24}}]}]")
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "external:client", "prod/db", "tcp", 5432)) == 1

    def test_egress_peer_and_ports_go_to_the_destination(self) -> None:
        spec = ("  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n"
                "  egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}]")
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5433)) == -1
        assert knp_rule(decide(ev, "prod/web", "dev/db", "tcp", 5432)) == -1


class TestPorts:
    def test_end_port_range_and_default_tcp(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{ports: [{port: 5000, endPort: 5500}]}]"))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5000)) == 0
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5500)) == 0
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5501)) == -1
        assert knp_rule(decide(ev, "prod/web", "prod/db", "udp", 5432)) == -1  # protocol defaults to TCP

    def test_one_rule_per_protocol_in_sorted_order(self) -> None:
        spec = "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 53}, {port: 5432}]}]"
        ev = cluster(knp("k", spec))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 5432)) == 0  # TCP sorts before UDP
        assert knp_rule(decide(ev, "prod/web", "prod/db", "udp", 53)) == 1
        assert knp_rule(decide(ev, "prod/web", "prod/db", "udp", 5432)) == -1

    def test_protocol_without_port_is_every_port(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{ports: [{protocol: UDP}]}]"))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "udp", 1)) == 0
        assert knp_rule(decide(ev, "prod/web", "prod/db", "tcp", 1)) == -1

    def test_named_port(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]"))
        assert knp_rule(decide(ev, "prod/db", "prod/web", "tcp", 8080)) == 0
        assert knp_rule(decide(ev, "prod/db", "prod/web", "tcp", 80)) == -1
        assert knp_rule(decide(ev, "prod/web", "prod/api", "tcp", 9000)) == 0

    def test_icmp_is_not_allowed_by_a_ports_rule(self) -> None:
        ev = cluster(knp("k", "  podSelector: {}\n  ingress: [{ports: [{port: 5432}]}]"))
        assert knp_rule(decide(ev, "prod/web", "prod/db", "icmp")) == -1


class TestStagedKNP:
    def test_staged_knp_previews_the_conversion(self) -> None:
        staged = ("apiVersion: projectcalico.org/v3\nkind: StagedKubernetesNetworkPolicy\n"
                  "metadata: {name: k, namespace: prod}\nspec:\n  podSelector: {}\n"
                  "  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]")
        ev = cluster(staged)
        d = decide(ev, "prod/web", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d), pending_by(d)) == (
            "allow", None, ("StagedKubernetesNetworkPolicy", "prod", "k", "default", "ingress", 0, "Allow"))
        d = decide(ev, "prod/api", "prod/db", "tcp", 5432)
        assert (d.verdict, d.pending.verdict) == ("allow", "deny")
        assert pending_by(d) == ("StagedKubernetesNetworkPolicy", "prod", "k", "default", "ingress", -1, "Deny")
