"""The Calico article's five scenarios: verdicts and attributions, including the subtle ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.evaluate import Decision, Evaluator, decision_json
from enforcer.loader import load_paths
from enforcer.resolve import ClusterState
from flowtui.cli.common import scenario_dir
from flowtui.cli.policy import build_flow, parse_protocol

ARTICLE = scenario_dir()
CLUSTER = ARTICLE / "00-cluster.yaml"


def evaluator(*files: str) -> Evaluator:
    paths = [str(CLUSTER)] + [str(ARTICLE / f) for f in files]
    return Evaluator(ClusterState(load_paths(paths)))


def decide(ev: Evaluator, src: str, dst: str, proto: str, port: int | None = None, *, v6: bool = False) -> Decision:
    flow = build_flow(ev.state, src, dst, parse_protocol(proto), port, None, None, None, v6)
    return ev.decide(flow, explain=True)


def by(d: Decision) -> tuple[object, ...] | None:
    hit = d.enforced.decided_by
    if hit is None:
        return None
    return (hit.kind, hit.namespace, hit.name, hit.tier, hit.direction, hit.rule, hit.action)


S1 = "01-deny-frontend-to-transaction.yaml"
S2 = "02-ordered-policies.yaml"
S3 = "03-log-then-deny.yaml"
S4 = "04-favorite-worker-host.yaml"
S5 = "05-dos-denylist.yaml"
GNP = "GlobalNetworkPolicy"


class TestScenario1DenyFrontendToTransaction:
    ev = evaluator(S1)
    DENY0 = (GNP, None, "deny-frontend-to-transaction", "default", "ingress", 0, "Deny")

    def test_frontend_to_transaction_denied_by_rule_0(self) -> None:
        d = decide(self.ev, "production/frontend", "production/transaction", "tcp", 9000)
        assert d.verdict == "deny"
        assert by(d) == self.DENY0

    def test_across_namespaces(self) -> None:
        d = decide(self.ev, "staging/frontend", "production/transaction", "tcp", 9000)
        assert (d.verdict, by(d)) == ("deny", self.DENY0)

    def test_other_ingress_to_transaction_hits_end_of_tier(self) -> None:
        d = decide(self.ev, "staging/transaction", "production/transaction", "tcp", 9000)
        assert d.verdict == "deny"
        assert by(d) == (GNP, None, "deny-frontend-to-transaction", "default", "ingress", -1, "Deny")

    def test_icmp_from_frontend_is_end_of_tier_not_rule_0(self) -> None:
        d = decide(self.ev, "production/frontend", "production/transaction", "icmp")
        assert by(d) == (GNP, None, "deny-frontend-to-transaction", "default", "ingress", -1, "Deny")

    def test_reverse_direction_unaffected(self) -> None:
        d = decide(self.ev, "production/transaction", "production/frontend", "tcp", 8080)
        assert d.verdict == "allow"
        assert by(d) is None  # namespace profiles allow by default
        assert [s.reason for s in d.enforced.stages][0].startswith("no policy applies; namespace profile")


class TestScenario2OrderedPolicies:
    ev = evaluator(S2)

    def test_outside_client_denied_by_order_20(self) -> None:
        d = decide(self.ev, "external:client", "production/frontend", "tcp", 8080)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "deny-other-ingress", "default", "ingress", 0, "Deny"))

    def test_cluster_internal_allowed_by_order_10(self) -> None:
        d = decide(self.ev, "staging/transaction", "production/transaction", "tcp", 9000)
        assert (d.verdict, by(d)) == ("allow", (GNP, None, "allow-cluster-internal", "default", "ingress", 0, "Allow"))

    def test_ipv6_uses_the_v6_rule_keeping_its_index(self) -> None:
        d = decide(self.ev, "staging/transaction", "production/transaction", "tcp", 9000, v6=True)
        assert (d.verdict, by(d)) == ("allow", (GNP, None, "allow-cluster-internal", "default", "ingress", 1, "Allow"))

    def test_node_address_is_cluster_internal(self) -> None:
        d = decide(self.ev, "node:node-b", "production/frontend", "tcp", 8080)
        assert by(d) == (GNP, None, "allow-cluster-internal", "default", "ingress", 0, "Allow")

    def test_host_to_its_own_pod_is_not_policed(self) -> None:
        d = decide(self.ev, "node:node-a", "production/frontend", "tcp", 8080)
        assert d.verdict == "allow" and d.enforced.stages == ()

    def test_staging_not_selected(self) -> None:
        d = decide(self.ev, "external:client", "staging/frontend", "tcp", 8080)
        assert d.verdict == "allow" and by(d) is None


class TestScenario3LogThenDeny:
    ev = evaluator(S3)

    def test_frontend_logged_then_denied(self) -> None:
        d = decide(self.ev, "staging/frontend", "staging/database", "tcp", 6379)
        assert (d.verdict, by(d)) == (
            "deny", ("NetworkPolicy", "staging", "log-and-deny-frontend", "default", "ingress", 1, "Deny"))
        doc = decision_json(d)
        assert doc["logged"] == [{"kind": "NetworkPolicy", "namespace": "staging", "name": "log-and-deny-frontend",
                                  "direction": "ingress", "rule": 0}]

    def test_rule_selectors_are_scoped_to_the_policy_namespace(self) -> None:
        # role == 'frontend' in a staging policy does not name production's frontend.
        d = decide(self.ev, "production/frontend", "staging/database", "tcp", 6379)
        assert (d.verdict, by(d)) == (
            "allow", ("NetworkPolicy", "staging", "log-and-deny-frontend", "default", "ingress", 2, "Allow"))
        assert d.enforced.logged == ()

    def test_udp_from_frontend_falls_to_allow(self) -> None:
        d = decide(self.ev, "staging/frontend", "staging/database", "udp", 6379)
        assert by(d) == ("NetworkPolicy", "staging", "log-and-deny-frontend", "default", "ingress", 2, "Allow")


class TestScenario4FavoriteWorkerHost:
    ev = evaluator(S4)
    POLICY = (GNP, None, "favorite-worker-host", "default")

    def test_ssh_from_management_is_allowed_by_the_failsafe_first(self) -> None:
        d = decide(self.ev, "external:admin", "node:node-a", "tcp", 22)
        assert d.verdict == "allow" and d.enforced.failsafe and by(d) is None

    def test_ssh_from_anywhere_stays_open_through_the_failsafe(self) -> None:
        d = decide(self.ev, "external:client", "node:node-a", "tcp", 22)
        assert d.verdict == "allow" and d.enforced.failsafe

    def test_kubelet_allowed_by_rule_2(self) -> None:
        d = decide(self.ev, "external:client", "node:node-a", "tcp", 10250)
        assert by(d) == (*self.POLICY, "ingress", 2, "Allow")

    def test_icmp_allowed_by_rule_1(self) -> None:
        d = decide(self.ev, "external:client", "node:node-a", "icmp")
        assert by(d) == (*self.POLICY, "ingress", 1, "Allow")

    def test_other_ports_end_of_tier(self) -> None:
        d = decide(self.ev, "external:client", "node:node-a", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (*self.POLICY, "ingress", -1, "Deny"))

    def test_etcd_out_is_a_failsafe(self) -> None:
        d = decide(self.ev, "node:node-a", "node:node-b", "tcp", 2379)
        assert d.verdict == "allow" and d.enforced.failsafe

    def test_other_egress_end_of_tier(self) -> None:
        d = decide(self.ev, "node:node-a", "external:client", "tcp", 443)
        assert (d.verdict, by(d)) == ("deny", (*self.POLICY, "egress", -1, "Deny"))

    def test_pods_on_the_worker_are_not_affected(self) -> None:
        # Host endpoint policy without applyOnForward does not apply to forwarded traffic.
        assert decide(self.ev, "external:client", "production/frontend", "tcp", 8080).verdict == "allow"
        assert decide(self.ev, "production/frontend", "external:client", "tcp", 443).verdict == "allow"


class TestScenario5DosDenyList:
    ev = evaluator(S5)
    DENY = (GNP, None, "dos-mitigation", "default", "ingress", 0, "Deny")

    def test_attacker_dropped_untracked_at_the_host(self) -> None:
        d = decide(self.ev, "external:attacker", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", self.DENY)
        assert d.enforced.stages[-1].stage.family == "untracked"

    def test_attacker_dropped_on_forward_to_pods(self) -> None:
        d = decide(self.ev, "external:attacker", "production/transaction", "udp", 9000)
        assert (d.verdict, by(d)) == ("deny", self.DENY)

    def test_attacker_ipv6(self) -> None:
        d = decide(self.ev, "external:attacker", "node:node-b", "tcp", 80, v6=True)
        assert (d.verdict, by(d)) == ("deny", self.DENY)

    def test_failsafe_still_reachable_by_the_attacker(self) -> None:
        d = decide(self.ev, "external:attacker", "node:node-b", "tcp", 22)
        assert d.verdict == "allow" and d.enforced.failsafe

    def test_other_clients_pass_through_to_the_profile(self) -> None:
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and by(d) is None
        families = [s.stage.family for s in d.enforced.stages]
        assert families == ["untracked", "prednat", "normal"]  # no untracked policy sees the reply


class TestAllScenariosTogether:
    ev = Evaluator(ClusterState(load_paths([str(ARTICLE)])))

    def test_order_5_deny_beats_order_10_allow(self) -> None:
        d = decide(self.ev, "production/frontend", "production/transaction", "tcp", 9000)
        assert by(d) == (GNP, None, "deny-frontend-to-transaction", "default", "ingress", 0, "Deny")

    def test_no_end_of_tier_when_a_later_policy_allows(self) -> None:
        d = decide(self.ev, "staging/transaction", "production/transaction", "tcp", 9000)
        assert by(d) == (GNP, None, "allow-cluster-internal", "default", "ingress", 0, "Allow")

    @pytest.mark.parametrize("path", sorted(p.name for p in Path(ARTICLE).glob("*.yaml")))
    def test_every_file_loads_alone_with_the_cluster(self, path: str) -> None:
        load_paths([str(CLUSTER), str(ARTICLE / path)] if path != CLUSTER.name else [str(CLUSTER)])
