"""Host endpoints and profiles (calico-semantics.md §2.9–2.10): profiles, default deny, failsafe
ports, untracked (doNotTrack), preDNAT, applyOnForward, DefaultEndpointToHostAction. Verdict and
attribution on the inline cluster of `test_evaluator_cluster.py`.

Node-b's eth0 is the host endpoint under test (`hep-b`, label `host: b`); prod/db and dev/db run
on node-b, so flows from outside to them are forwarded through it.
"""

from __future__ import annotations

from tests.test_evaluator_cluster import GNP, NP, by, cluster, decide, families, logged

PROFILE = "Profile"
PROFILE_TIER = "__PROFILE__"


def hep_b(profiles: str = "[]", name: str = "hep-b", interface: str = "eth0", node: str = "node-b") -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {{name: {name}, labels: {{host: b}}}}\n"
            f"spec: {{node: {node}, interfaceName: '{interface}', expectedIPs: [172.31.0.12, 'fd00:172:31::12'], "
            f"profiles: {profiles}}}")


DEFAULT_ALLOW = "[projectcalico-default-allow]"


def host_policy(name: str, ingress: str = "[{action: Deny}]", *, egress: str = "", extra: str = "",
                selector: str = "host == 'b'", order: float | None = None) -> str:
    """A GlobalNetworkPolicy on node-b's host endpoint."""
    spec = [f"selector: {selector}", f"ingress: {ingress}"]
    if egress:
        spec += [f"egress: {egress}", "types: [Ingress, Egress]"]
    if order is not None:
        spec.append(f"order: {order}")
    if extra:
        spec.append(extra)
    return f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\n" \
           f"spec: {{{', '.join(spec)}}}"


def profile(name: str, ingress: str, egress: str = "[]") -> str:
    return f"apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {name}}}\n" \
           f"spec: {{ingress: {ingress}, egress: {egress}}}"


def felix(spec: str) -> str:
    return f"apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {spec}"


UNTRACKED = "doNotTrack: true, applyOnForward: true"
PREDNAT = "preDNAT: true, applyOnForward: true"
FORWARD = "applyOnForward: true"
DB_DENY = ("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: db-deny, namespace: prod}\n"
           "spec: {selector: app == 'db', ingress: [{action: Deny}]}")


# --------------------------------------------------------------------------------------------
# §2.10 Profiles; host endpoint defaults


class TestProfiles:
    def test_host_endpoint_without_policy_or_profile_is_default_deny(self) -> None:
        d = decide(cluster(hep_b()), "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "deny" and by(d) is None and not d.enforced.failsafe
        assert families(d) == [("untracked", "ingress"), ("prednat", "ingress"), ("normal", "ingress")]
        assert d.enforced.stages[-1].reason == "no policy applies and no profile allowed the packet (default deny)"

    def test_default_allow_profile(self) -> None:
        d = decide(cluster(hep_b(DEFAULT_ALLOW)), "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and by(d) is None
        assert d.enforced.stages[-1].hit is not None and d.enforced.stages[-1].hit.builtin

    def test_user_profile_allow_and_deny(self) -> None:
        ev = cluster(hep_b("[edge]"), profile(
            "edge", "[{action: Deny, source: {nets: [203.0.113.0/24]}}, {action: Allow, protocol: TCP}]"))
        d = decide(ev, "external:admin", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (PROFILE, None, "edge", PROFILE_TIER, "ingress", 0, "Deny"))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("allow", (PROFILE, None, "edge", PROFILE_TIER, "ingress", 1, "Allow"))
        d = decide(ev, "external:client", "node:node-b", "udp", 80)  # no profile rule matched
        assert (d.verdict, by(d)) == ("deny", None)

    def test_profile_pass_moves_on_to_the_next_profile(self) -> None:
        ev = cluster(hep_b("[first, second]"),
                     profile("first", "[{action: Pass, source: {nets: [203.0.113.0/24]}}, {action: Deny}]"),
                     profile("second", "[{action: Allow}]"))
        d = decide(ev, "external:admin", "node:node-b", "tcp", 80)
        assert by(d) == (PROFILE, None, "second", PROFILE_TIER, "ingress", 0, "Allow")
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert by(d) == (PROFILE, None, "first", PROFILE_TIER, "ingress", 1, "Deny")

    def test_profile_pass_in_the_last_profile_is_the_final_drop(self) -> None:
        ev = cluster(hep_b("[only]"), profile("only", "[{action: Pass}, {action: Allow}]"))
        d = decide(ev, "external:admin", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", None)

    def test_profile_log_is_not_terminal(self) -> None:
        ev = cluster(hep_b("[logging]"), profile("logging", "[{action: Log}, {action: Allow}]"))
        d = decide(ev, "external:admin", "node:node-b", "tcp", 80)
        assert by(d) == (PROFILE, None, "logging", PROFILE_TIER, "ingress", 1, "Allow")
        assert logged(d) == [(PROFILE, None, "logging", "ingress", 0)]

    def test_profile_rule_selectors_are_not_namespace_scoped(self) -> None:
        ev = cluster(hep_b("[web-only]"), profile("web-only", "[{action: Allow, source: {selector: app == 'web'}}]"))
        assert decide(ev, "prod/web", "node:node-b", "tcp", 80).verdict == "allow"
        assert decide(ev, "dev/web", "node:node-b", "tcp", 80).verdict == "allow"
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "deny"

    def test_profiles_come_after_every_tier_passed(self) -> None:
        ev = cluster(hep_b("[edge]"), profile("edge", "[{action: Deny}]"), host_policy("pass", "[{action: Pass}]"))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert by(d) == (PROFILE, None, "edge", PROFILE_TIER, "ingress", 0, "Deny")

    def test_a_policy_allow_skips_the_profiles(self) -> None:
        ev = cluster(hep_b("[edge]"), profile("edge", "[{action: Deny}]"), host_policy("allow", "[{action: Allow}]"))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert by(d) == (GNP, None, "allow", "default", "ingress", 0, "Allow")

    def test_profile_labels_to_apply_are_inherited(self) -> None:
        labelled = ("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: tagger}\n"
                    "spec: {labelsToApply: {zone: dmz}, ingress: [{action: Allow}]}")
        ev = cluster(hep_b("[tagger]"), labelled, host_policy("dmz", selector="zone == 'dmz'"))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert by(d) == (GNP, None, "dmz", "default", "ingress", 0, "Deny")


# --------------------------------------------------------------------------------------------
# §2.2 Which policies select a host endpoint


class TestPolicySelectsHostEndpoints:
    @staticmethod
    def gnp(spec: str) -> str:
        return f"apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec: {spec}"

    def test_gnp_with_an_empty_selector_selects_host_endpoints_too(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.gnp("{ingress: [{action: Deny}]}"))
        assert by(decide(ev, "external:client", "node:node-b", "tcp", 80)) == (
            GNP, None, "g", "default", "ingress", 0, "Deny")
        assert decide(ev, "external:client", "dev/db", "tcp", 80).verdict == "deny"

    def test_gnp_with_selector_all_selects_host_endpoints_too(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.gnp("{selector: all(), ingress: [{action: Deny}]}"))
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "deny"

    def test_gnp_namespace_selector_all_selects_no_host_endpoint(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.gnp("{namespaceSelector: all(), ingress: [{action: Deny}]}"))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and by(d) is None
        d = decide(ev, "external:client", "dev/db", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "g", "default", "ingress", 0, "Deny"))

    def test_gnp_namespace_selector_on_labels(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.gnp("{namespaceSelector: env == 'dev', ingress: [{action: Deny}]}"))
        assert decide(ev, "external:client", "dev/db", "tcp", 80).verdict == "deny"
        assert decide(ev, "external:client", "prod/db", "tcp", 80).verdict == "allow"
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "allow"

    def test_an_np_never_selects_a_host_endpoint(self) -> None:
        np_all = ("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: n, namespace: prod}\n"
                  "spec: {selector: all(), ingress: [{action: Deny}]}")
        ev = cluster(hep_b(DEFAULT_ALLOW), np_all)
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "allow"
        assert decide(ev, "external:client", "prod/db", "tcp", 80).verdict == "deny"

    def test_host_endpoint_labels_only_no_automatic_labels(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.gnp("{selector: has(projectcalico.org/orchestrator), "
                                                   "ingress: [{action: Deny}]}"))
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "allow"


# --------------------------------------------------------------------------------------------
# Failsafes


class TestFailsafes:
    ev = cluster(hep_b(), host_policy("deny-all", egress="[{action: Deny}]", extra=FORWARD))

    def test_inbound_defaults(self) -> None:
        for proto, port in (("tcp", 22), ("udp", 68), ("tcp", 6443)):
            d = decide(self.ev, "external:client", "node:node-b", proto, port)
            assert (d.verdict, by(d), d.enforced.failsafe) == ("allow", None, True), (proto, port)
            assert d.enforced.stages[-1].reason == f"failsafe port {proto}:{port}"
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 68)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "deny-all", "default", "ingress", 0, "Deny"))

    def test_outbound_defaults(self) -> None:
        d = decide(self.ev, "node:node-b", "external:client", "udp", 53)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)
        d = decide(self.ev, "node:node-b", "external:client", "tcp", 53)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "deny-all", "default", "egress", 0, "Deny"))

    def test_ipv6(self) -> None:
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 22, v6=True)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)

    def test_not_for_forwarded_traffic(self) -> None:
        d = decide(self.ev, "external:client", "prod/db", "tcp", 22)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "deny-all", "default", "ingress", 0, "Deny"))

    def test_custom_lists_replace_the_defaults(self) -> None:
        custom = felix("{failsafeInboundHostPorts: [{protocol: TCP, port: 2222, net: 203.0.113.0/24}], "
                       "failsafeOutboundHostPorts: []}")
        ev = cluster(hep_b(), host_policy("deny-all", egress="[{action: Deny}]"), custom)
        d = decide(ev, "external:admin", "node:node-b", "tcp", 2222)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)
        assert d.enforced.stages[-1].reason == "failsafe port tcp:203.0.113.0/24:2222"
        assert decide(ev, "external:client", "node:node-b", "tcp", 2222).verdict == "deny"  # not from the net
        assert decide(ev, "external:admin", "node:node-b", "tcp", 2222, v6=True).verdict == "deny"  # v4 net only
        assert decide(ev, "external:admin", "node:node-b", "tcp", 22).verdict == "deny"  # defaults replaced
        assert decide(ev, "node:node-b", "external:admin", "udp", 53).verdict == "deny"

    def test_outbound_net_is_the_destination(self) -> None:
        custom = felix("{failsafeOutboundHostPorts: [{protocol: UDP, port: 53, net: 192.0.2.0/24}]}")
        ev = cluster(hep_b(), host_policy("deny-all", egress="[{action: Deny}]"), custom)
        assert decide(ev, "node:node-b", "external:client", "udp", 53).enforced.failsafe
        assert decide(ev, "node:node-b", "external:admin", "udp", 53).verdict == "deny"


# --------------------------------------------------------------------------------------------
# Untracked (doNotTrack)


class TestUntracked:
    ev = cluster(hep_b(DEFAULT_ALLOW),
                 host_policy("dos", "[{action: Deny, source: {nets: [192.0.2.0/24]}}]",
                             egress="[{action: Deny, destination: {nets: [192.0.2.0/24]}}]", extra=UNTRACKED))
    DENY_IN = (GNP, None, "dos", "default", "ingress", 0, "Deny")

    def test_untracked_deny_to_the_host(self) -> None:
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", self.DENY_IN)
        assert families(d) == [("untracked", "ingress")]

    def test_untracked_deny_to_forwarded_pods(self) -> None:
        d = decide(self.ev, "external:client", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", self.DENY_IN)

    def test_untracked_egress(self) -> None:
        d = decide(self.ev, "node:node-b", "external:client", "tcp", 443)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "dos", "default", "egress", 0, "Deny"))

    def test_no_match_passes_to_normal_processing(self) -> None:
        d = decide(self.ev, "external:admin", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and by(d) is None
        assert [r.outcome for r in d.enforced.stages if not r.reply] == ["continue", "continue", "allow"]
        # The raw table sees the reply too: the untracked egress rules checked it (no match), and
        # the request was tracked, so conntrack lets the reply through without more policy.
        assert [(r.stage.family, r.stage.direction, r.outcome) for r in d.enforced.stages if r.reply] == [
            ("untracked", "egress", "continue")]

    def test_untracked_deny_of_the_reply_denies_the_connection(self) -> None:
        # The request is admitted by normal policy (default-allow profile); its reply to
        # 192.0.2.0/24 meets the untracked egress Deny in the raw table, conntrack or not.
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 22)  # failsafe port: still allowed
        assert d.verdict == "allow"
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("reply-deny", "[]", egress="[{action: Deny, protocol: TCP, "
                                                        "source: {ports: [80]}}]", extra=UNTRACKED))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "reply-deny", "default", "egress", 0, "Deny"))
        assert d.enforced.stages[-1].reply and d.enforced.first_packet == "allow"
        assert decide(ev, "external:client", "node:node-b", "tcp", 81).verdict == "allow"

    def test_failsafe_destination_ports_first(self) -> None:
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 22)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)
        assert d.enforced.stages[0].failsafe and d.enforced.stages[0].outcome == "continue"

    def test_failsafe_source_ports_let_replies_through(self) -> None:
        # Inbound: source port in the outbound list (a DNS reply); outbound: source port in the
        # inbound list (an SSH server's reply). Only the raw table does this.
        d = decide(self.ev, "external:client", "node:node-b", "udp", 40000, sport=53)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)
        assert d.enforced.stages[0].reason == "failsafe port udp:53"
        d = decide(self.ev, "node:node-b", "external:client", "tcp", 40000, sport=22)
        assert (d.verdict, d.enforced.failsafe) == ("allow", True)
        d = decide(self.ev, "external:client", "node:node-b", "udp", 40000, sport=54)
        assert (d.verdict, by(d)) == ("deny", self.DENY_IN)

    def test_failsafe_source_ports_not_in_the_normal_stage(self) -> None:
        ev = cluster(hep_b(), host_policy("deny", "[{action: Deny}]"))
        d = decide(ev, "external:client", "node:node-b", "udp", 40000, sport=53)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "deny", "default", "ingress", 0, "Deny"))

    def test_untracked_allow_skips_normal_host_policy(self) -> None:
        ev = cluster(hep_b(), host_policy("untracked-allow", "[{action: Allow}]", egress="[{action: Allow}]",
                                          extra=UNTRACKED, order=1),
                     host_policy("normal-deny", order=2))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("allow", (GNP, None, "untracked-allow", "default", "ingress", 0, "Allow"))
        assert [(r.stage.family, r.stage.direction, r.outcome, r.skipped, r.reply) for r in d.enforced.stages] == [
            ("untracked", "ingress", "allow", False, False), ("prednat", "ingress", "continue", True, False),
            ("normal", "ingress", "continue", True, False),
            # no conntrack: the reply is checked too, and accepted past normal policy the same way
            ("untracked", "egress", "allow", False, True), ("normal", "egress", "continue", True, True)]

    def test_untracked_allow_without_a_rule_for_the_reply(self) -> None:
        # Calico's donottrack FV (dnt-reply.yaml): the request is NOTRACKed, the SYN-ACK matches
        # no untracked rule and has no conntrack entry: invalid, dropped. UDP's reply is a new
        # flow for conntrack, decided by normal host policy (here: none, no profile: deny).
        ev = cluster(hep_b(), host_policy("untracked-in", "[{action: Allow}]", egress="[]", extra=UNTRACKED))
        for proto, port in (("tcp", 80), ("udp", 80), ("icmp", None)):
            d = decide(ev, "external:client", "node:node-b", proto, port)
            assert (d.verdict, by(d), d.enforced.first_packet) == ("deny", None, "allow"), proto
            last = d.enforced.stages[-1]
            assert (last.reply, last.stage.family, last.stage.direction) == (True, "normal", "egress")
        assert "invalid" in decide(ev, "external:client", "node:node-b", "tcp", 80).enforced.stages[-1].reason
        assert "no profile" in decide(ev, "external:client", "node:node-b", "udp", 80).enforced.stages[-1].reason

    def test_untracked_policy_does_not_apply_to_workloads(self) -> None:
        ev = cluster(host_policy("everything", extra=UNTRACKED, selector="all()"))
        assert decide(ev, "prod/api", "prod/db", "tcp", 5432).verdict == "allow"


# --------------------------------------------------------------------------------------------
# preDNAT


class TestPreDNAT:
    ev = cluster(
        hep_b(),
        host_policy("allow-client", "[{action: Allow, source: {nets: [192.0.2.0/24]}}]", extra=PREDNAT, order=1),
        host_policy("host-deny", extra=FORWARD, order=2),
        DB_DENY,
    )
    ALLOW = (GNP, None, "allow-client", "default", "ingress", 0, "Allow")

    def test_prednat_allow_skips_normal_host_policy(self) -> None:
        d = decide(self.ev, "external:client", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("allow", self.ALLOW)
        assert [(r.stage.family, r.outcome, r.skipped) for r in d.enforced.stages] == [
            ("untracked", "continue", False), ("prednat", "allow", False), ("normal", "continue", True)]

    def test_prednat_allow_skips_forward_host_policy_but_not_workload_policy(self) -> None:
        d = decide(self.ev, "external:client", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (NP, "prod", "db-deny", "default", "ingress", 0, "Deny"))
        assert [r.skipped for r in d.enforced.stages] == [False, False, True, False]
        d = decide(self.ev, "external:client", "dev/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("allow", self.ALLOW)  # dev/db: its namespace profile allows

    def test_no_prednat_match_continues_to_normal_policy(self) -> None:
        d = decide(self.ev, "external:admin", "node:node-b", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "host-deny", "default", "ingress", 0, "Deny"))
        d = decide(self.ev, "external:admin", "dev/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "host-deny", "default", "ingress", 0, "Deny"))
        assert families(d)[-1] == ("forward", "ingress")

    def test_prednat_tier_default_is_pass(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("nothing", "[{action: Allow, protocol: UDP}]", extra=PREDNAT))
        d = decide(ev, "external:admin", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and by(d) is None

    def test_prednat_deny(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("block", extra=PREDNAT))
        d = decide(ev, "external:admin", "dev/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "block", "default", "ingress", 0, "Deny"))
        assert families(d)[-1] == ("prednat", "ingress")

    def test_prednat_is_ingress_only(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("block", extra=PREDNAT))
        assert decide(ev, "node:node-b", "external:admin", "tcp", 80).verdict == "allow"

    def test_prednat_policy_does_not_apply_to_workloads(self) -> None:
        ev = cluster(host_policy("everything", extra=PREDNAT, selector="all()"))
        assert decide(ev, "prod/api", "prod/db", "tcp", 5432).verdict == "allow"


# --------------------------------------------------------------------------------------------
# applyOnForward


class TestApplyOnForward:
    def test_plain_host_policy_does_not_apply_to_forwarded_traffic(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("host-only", egress="[{action: Deny}]"))
        assert by(decide(ev, "external:client", "node:node-b", "tcp", 80)) == (
            GNP, None, "host-only", "default", "ingress", 0, "Deny")
        d = decide(ev, "external:client", "prod/db", "tcp", 5432)
        assert d.verdict == "allow" and by(d) is None
        fwd = d.enforced.stages[2]
        assert (fwd.stage.family, fwd.outcome, fwd.reason) == (
            "forward", "continue", "forwarded traffic is allowed unless a policy denies")
        assert decide(ev, "prod/db", "external:client", "tcp", 443).verdict == "allow"

    def test_apply_on_forward_policy_applies_to_forwarded_traffic(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("fwd", egress="[{action: Deny}]", extra=FORWARD))
        d = decide(ev, "external:client", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "ingress", 0, "Deny"))
        assert families(d)[-1] == ("forward", "ingress")
        d = decide(ev, "prod/db", "external:client", "tcp", 443)  # leaving node-b through eth0
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "egress", 0, "Deny"))
        assert families(d) == [("workload", "egress"), ("forward", "egress")]
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)  # and to the host itself
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "ingress", 0, "Deny"))

    def test_forward_end_of_tier_deny(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), host_policy("fwd", "[{action: Allow, protocol: UDP}]", extra=FORWARD))
        d = decide(ev, "external:client", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "ingress", -1, "Deny"))

    def test_forward_allow_then_workload_policy_decides(self) -> None:
        ev = cluster(hep_b(), host_policy("fwd", "[{action: Allow}]", extra=FORWARD),
                     DB_DENY)
        d = decide(ev, "external:client", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (NP, "prod", "db-deny", "default", "ingress", 0, "Deny"))
        d = decide(ev, "external:client", "dev/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("allow", (GNP, None, "fwd", "default", "ingress", 0, "Allow"))

    def test_forward_pass_leaves_the_decision_to_the_workload(self) -> None:
        ev = cluster(hep_b(), host_policy("fwd", "[{action: Pass}]", extra=FORWARD))
        d = decide(ev, "external:client", "dev/db", "tcp", 5432)
        assert d.verdict == "allow" and by(d) is None  # no profiles on the forward path

    def test_pod_to_pod_across_nodes_crosses_both_host_endpoints(self) -> None:
        hep_a = hep_b(name="hep-a", node="node-a").replace("172.31.0.12", "172.31.0.11").replace(
            "fd00:172:31::12", "fd00:172:31::11").replace("host: b", "host: a")
        ev = cluster(hep_a, hep_b(), host_policy("fwd", "[{action: Deny}]", egress="[{action: Deny}]",
                                                  extra=FORWARD, selector="host == 'a'"))
        d = decide(ev, "prod/web", "prod/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "egress", 0, "Deny"))
        d = decide(ev, "prod/db", "prod/web", "tcp", 8080)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "ingress", 0, "Deny"))
        assert families(d) == [("workload", "egress"), ("forward", "egress"), ("untracked", "ingress"),
                               ("prednat", "ingress"), ("forward", "ingress")]


# --------------------------------------------------------------------------------------------
# Pod to its own host


class TestDefaultEndpointToHost:
    def test_accept_is_flowtui_default(self) -> None:
        d = decide(cluster(), "prod/web", "node:node-a", "tcp", 10250)
        assert d.verdict == "allow" and by(d) is None
        assert families(d) == [("workload", "egress"), ("to-host", "ingress")]

    def test_drop(self) -> None:
        ev = cluster(felix("{defaultEndpointToHostAction: Drop}"))
        d = decide(ev, "prod/web", "node:node-a", "tcp", 10250)
        assert (d.verdict, by(d)) == ("deny", None)
        assert d.enforced.stages[-1].reason == "DefaultEndpointToHostAction is Drop"
        assert decide(ev, "prod/web", "node:node-b", "tcp", 10250).verdict == "allow"  # another node

    def test_workload_egress_runs_first(self) -> None:
        egress = ("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: no-out, namespace: prod}\n"
                  "spec: {selector: app == 'web', egress: [{action: Deny}]}")
        ev = cluster(egress, felix("{defaultEndpointToHostAction: Accept}"))
        d = decide(ev, "prod/web", "node:node-a", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (NP, "prod", "no-out", "default", "egress", 0, "Deny"))

    def test_return_skips_host_endpoint_policy(self) -> None:
        # Return hands the packet back to the host's INPUT chain, past Calico's rules: no host
        # endpoint's normal policy sees workload → host packets (Calico's ep_to_host_action FV,
        # entry "ACCEPT", "Return", "*", Deny → connectivity; return-wildcard-hep.yaml).
        ev = cluster(felix("{defaultEndpointToHostAction: Return}"), hep_b(name="all-a", interface="*", node="node-a"),
                     host_policy("host-in", "[{action: Deny, protocol: TCP}]", egress="[{action: Allow}]"))
        d = decide(ev, "prod/web", "node:node-a", "tcp", 80)
        assert (d.verdict, by(d)) == ("allow", None)
        assert families(d) == [("prednat", "ingress"), ("workload", "egress"), ("to-host", "ingress")]
        assert "Return" in d.enforced.stages[-1].reason
        # The host endpoint's policy still applies to what arrives on eth0.
        d = decide(ev, "external:client", "node:node-a", "tcp", 80)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "host-in", "default", "ingress", 0, "Deny"))

    def test_host_to_its_own_pods_is_not_policed(self) -> None:
        ev = cluster(hep_b(), host_policy("deny-all", egress="[{action: Deny}]", extra=FORWARD),
                     DB_DENY)
        d = decide(ev, "node:node-b", "prod/db", "tcp", 5432)
        assert d.verdict == "allow" and d.enforced.stages == ()


# --------------------------------------------------------------------------------------------
# All-interfaces host endpoints (`interfaceName: "*"`): Felix's dispatch chains make them the
# default for every interface no HEP names — pod interfaces and the WireGuard tunnel too.


class TestAllInterfaces:
    STAR = hep_b(DEFAULT_ALLOW, name="all-b", interface="*")

    def test_forward_policy_sees_pod_to_pod_traffic_on_the_node(self) -> None:
        ev = cluster(self.STAR, host_policy("fwd", "[{action: Deny, protocol: TCP}, {action: Allow}]",
                                            egress="[{action: Allow}]", extra=FORWARD))
        d = decide(ev, "prod/db", "dev/db", "tcp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "ingress", 0, "Deny"))
        assert [(r.stage.family, r.stage.via) for r in d.enforced.stages] == [("prednat", "pod"), ("forward", "pod")]
        d = decide(ev, "prod/db", "dev/db", "udp", 53)  # ingress passes; the egress towards dev/db allows
        assert d.verdict == "allow"
        assert [(r.stage.family, r.stage.direction, r.stage.via) for r in d.enforced.stages] == [
            ("prednat", "ingress", "pod"), ("forward", "ingress", "pod"), ("workload", "egress", "eth0"),
            ("workload", "ingress", "eth0"), ("forward", "egress", "pod")]

    def test_forward_egress_towards_a_pod(self) -> None:
        ev = cluster(self.STAR, host_policy("fwd-out", "[{action: Allow}]", egress="[{action: Deny, protocol: UDP}]",
                                            extra=FORWARD))
        d = decide(ev, "external:client", "prod/db", "udp", 5432)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd-out", "default", "egress", 0, "Deny"))
        assert d.enforced.stages[-1].stage.via == "pod"

    def test_do_not_track_is_ignored_on_an_all_interfaces_hep(self) -> None:
        ev = cluster(self.STAR, host_policy("dnt", "[{action: Deny}]", extra=UNTRACKED))
        d = decide(ev, "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "allow" and "untracked" not in [f for f, _ in families(d)]

    def test_prednat_allow_from_a_pod_skips_forward_ingress_only(self) -> None:
        ev = cluster(self.STAR, host_policy("pre", "[{action: Allow}]", extra=PREDNAT, order=1),
                     host_policy("fwd", "[{action: Deny}]", egress="[{action: Deny}]", extra=FORWARD, order=2))
        d = decide(ev, "prod/db", "external:client", "tcp", 443)
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "fwd", "default", "egress", 0, "Deny"))
        assert [(r.stage.family, r.stage.direction, r.outcome, r.skipped) for r in d.enforced.stages] == [
            ("prednat", "ingress", "allow", False), ("forward", "ingress", "continue", True),
            ("workload", "egress", "allow", False), ("forward", "egress", "deny", False)]

    def test_a_named_hep_keeps_eth0(self) -> None:
        ev = cluster(hep_b(DEFAULT_ALLOW), self.STAR.replace("host: b", "host: star"),
                     host_policy("star-pre", "[{action: Deny}]", extra=PREDNAT, selector="host == 'star'"))
        assert decide(ev, "external:client", "node:node-b", "tcp", 80).verdict == "allow"  # eth0: hep-b
        d = decide(ev, "prod/db", "node:node-b", "tcp", 80)  # from a pod: the '*' HEP
        assert (d.verdict, by(d)) == ("deny", (GNP, None, "star-pre", "default", "ingress", 0, "Deny"))


def test_reply_of() -> None:
    from ipaddress import ip_address

    from enforcer.evaluate.evaluator import reply_of
    from enforcer.evaluate.flow import Flow

    a, b = ip_address("192.0.2.1"), ip_address("198.51.100.2")
    assert reply_of(Flow(a, b, 6, 40000, 80)) == Flow(b, a, 6, 80, 40000)
    assert reply_of(Flow(a, b, 1, icmp_type=8, icmp_code=0)) == Flow(b, a, 1, icmp_type=0, icmp_code=0)
    assert reply_of(Flow(a, b, 1, icmp_type=3, icmp_code=1)) is None
    a6, b6 = ip_address("2001:db8::1"), ip_address("2001:db8::2")
    assert reply_of(Flow(a6, b6, 58, icmp_type=128, icmp_code=0)) == Flow(b6, a6, 58, icmp_type=129, icmp_code=0)
