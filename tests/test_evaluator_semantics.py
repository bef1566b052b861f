"""Evaluator semantics (calico-semantics.md §2.4–2.8, §4.1): tiers, policy order, actions, types,
staged and disabled policies. Verdict AND attribution, on the inline cluster of
`test_evaluator_cluster.py`.

Most tests police ingress of `prod/db` (on node-b) from `prod/web` (on node-a): web's egress is
left to its namespace profile, so the decision is db's ingress.
"""

from __future__ import annotations

from enforcer.evaluate import Decision
from tests.test_evaluator_cluster import GNP, KNP, NP, by, cluster, decide, logged, pending_by

SNP, SGNP, SKNP = "StagedNetworkPolicy", "StagedGlobalNetworkPolicy", "StagedKubernetesNetworkPolicy"


def gnp(name: str, rules: str = "[{action: Deny}]", *, tier: str = "", order: float | None = None,
        selector: str = "app == 'db'", extra: str = "", kind: str = GNP) -> str:
    """A (Staged)GlobalNetworkPolicy selecting db, with ingress `rules` (YAML flow list)."""
    lines = [f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:",
             f"  selector: {selector}", f"  ingress: {rules}"]
    if tier:
        lines.append(f"  tier: {tier}")
    if order is not None:
        lines.append(f"  order: {order}")
    if extra:
        lines.append(f"  {extra}")
    return "\n".join(lines)


def np(name: str, rules: str = "[{action: Deny}]", *, ns: str = "prod", tier: str = "", order: float | None = None,
       selector: str = "app == 'db'", extra: str = "", kind: str = NP) -> str:
    """A (Staged)NetworkPolicy in `ns` selecting db, with ingress `rules`."""
    head = f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}"
    body = gnp(name, rules, tier=tier, order=order, selector=selector, extra=extra).split("spec:", 1)[1]
    return f"{head}\nspec:{body}"


def knp(name: str, ingress: str = "[]", *, ns: str = "prod", kind: str = "NetworkPolicy",
        api: str = "networking.k8s.io/v1", extra: str = "") -> str:
    """A Kubernetes NetworkPolicy (or StagedKubernetesNetworkPolicy) selecting db."""
    return (f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
            f"  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress]\n  ingress: {ingress}\n"
            + (f"  {extra}\n" if extra else ""))


def tier(name: str, order: float | None = None, default: str = "") -> str:
    spec = []
    if order is not None:
        spec.append(f"order: {order}")
    if default:
        spec.append(f"defaultAction: {default}")
    return f"apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {{{', '.join(spec)}}}"


ALLOW = "[{action: Allow}]"
PASS = "[{action: Pass}]"
NOTHING = "[{action: Allow, protocol: UDP}]"  # a rule that never matches the TCP flows below


def to_db(*docs: str, proto: str = "tcp", port: int = 5432) -> Decision:
    return decide(cluster(*docs), "prod/web", "prod/db", proto, port)


def tier_order(*docs: str) -> list[tuple[str, bool]]:
    return [(t.name, t.exists) for t in cluster(*docs).state.tiers]


# --------------------------------------------------------------------------------------------
# §2.4 Tiers


class TestTierOrdering:
    def test_ascending_order_first_tier_decides(self) -> None:
        d = to_db(tier("late", 200), tier("early", 100),
                  gnp("allow-late", ALLOW, tier="late"), gnp("deny-early", tier="early"))
        assert d.verdict == "deny"
        assert by(d) == (GNP, None, "deny-early", "early", "ingress", 0, "Deny")

    def test_tier_without_order_comes_after_ordered_ones_even_default(self) -> None:
        docs = (tier("unordered"), gnp("deny-unordered", tier="unordered"), gnp("allow-default", ALLOW))
        assert tier_order(*docs) == [("default", True), ("unordered", True)]
        d = to_db(*docs)
        assert by(d) == (GNP, None, "allow-default", "default", "ingress", 0, "Allow")

    def test_equal_order_breaks_on_tier_name(self) -> None:
        docs = (tier("bravo", 100), tier("alpha", 100), gnp("b", ALLOW, tier="bravo"), gnp("a", tier="alpha"))
        assert tier_order(*docs)[:2] == [("alpha", True), ("bravo", True)]
        assert by(to_db(*docs)) == (GNP, None, "a", "alpha", "ingress", 0, "Deny")

    def test_existing_tiers_come_before_referenced_but_missing_ones(self) -> None:
        # "aaa" is missing: it sorts after the unordered, existing "zzz" despite its name.
        docs = (tier("zzz"), gnp("in-missing", tier="aaa"), gnp("in-zzz", ALLOW, tier="zzz"))
        assert tier_order(*docs) == [("default", True), ("zzz", True), ("aaa", False)]
        assert by(to_db(*docs)) == (GNP, None, "in-zzz", "zzz", "ingress", 0, "Allow")

    def test_missing_tier_denies_by_default(self) -> None:
        d = to_db(gnp("ghost-policy", NOTHING, tier="ghost"))
        assert d.verdict == "deny"
        assert by(d) == (GNP, None, "ghost-policy", "ghost", "ingress", -1, "Deny")

    def test_tiers_with_no_policy_for_the_endpoint_are_skipped(self) -> None:
        # A tier whose policies select other endpoints has no end-of-tier deny for db.
        d = to_db(tier("t", 1), gnp("other", NOTHING, tier="t", selector="app == 'api'"))
        assert d.verdict == "allow" and by(d) is None


# --------------------------------------------------------------------------------------------
# §2.5 Policy order within a tier


class TestPolicyOrder:
    def test_ascending_order(self) -> None:
        d = to_db(gnp("allow-20", ALLOW, order=20), gnp("deny-10", order=10))
        assert by(d) == (GNP, None, "deny-10", "default", "ingress", 0, "Deny")

    def test_missing_order_comes_last(self) -> None:
        d = to_db(gnp("aaa-no-order"), gnp("zzz-order-99999", ALLOW, order=99999))
        assert by(d) == (GNP, None, "zzz-order-99999", "default", "ingress", 0, "Allow")

    def test_equal_order_breaks_on_name(self) -> None:
        d = to_db(gnp("bravo", ALLOW, order=5), gnp("alpha", order=5))
        assert by(d) == (GNP, None, "alpha", "default", "ingress", 0, "Deny")

    def test_tie_break_string_is_name_namespace_kind(self) -> None:
        # "x//GlobalNetworkPolicy" > "x-y/prod/NetworkPolicy": '/' (0x2f) sorts after '-' (0x2d).
        d = to_db(gnp("x", ALLOW, order=5), np("x-y", order=5))
        assert by(d) == (NP, "prod", "x-y", "default", "ingress", 0, "Deny")
        # Same name: "p//GlobalNetworkPolicy" < "p/prod/NetworkPolicy".
        d = to_db(gnp("p", ALLOW, order=5), np("p", order=5))
        assert by(d) == (GNP, None, "p", "default", "ingress", 0, "Allow")
        # Same name and namespace: the kind decides, "KubernetesNetworkPolicy" < "NetworkPolicy".
        d = to_db(np("p", order=1000), knp("p", "[{}]"))
        assert by(d) == (KNP, "prod", "p", "default", "ingress", 0, "Allow")
        # The name comes before the kind: "o/prod/NetworkPolicy" < "p/prod/KubernetesNetworkPolicy".
        d = to_db(np("o", order=1000), knp("p", "[{}]"))
        assert by(d) == (NP, "prod", "o", "default", "ingress", 0, "Deny")

    def test_gnp_np_and_knp_interleave_purely_by_order(self) -> None:
        # KNP sits at order 1000: a GNP at 999 runs before it, an NP at 1001 after it.
        docs = (gnp("gnp-999", "[{action: Log}]", order=999), knp("k8s", "[{}]"), np("np-1001", order=1001))
        d = to_db(*docs)
        assert by(d) == (KNP, "prod", "k8s", "default", "ingress", 0, "Allow")
        assert logged(d) == [(GNP, None, "gnp-999", "ingress", 0)]
        d = to_db(gnp("gnp-999", order=999), knp("k8s", "[{}]"))
        assert by(d) == (GNP, None, "gnp-999", "default", "ingress", 0, "Deny")
        d = to_db(knp("k8s", "[{from: [{podSelector: {matchLabels: {app: api}}}]}]"), np("np-1001", ALLOW, order=1001))
        assert by(d) == (NP, "prod", "np-1001", "default", "ingress", 0, "Allow")
        d = to_db(knp("k8s", "[{from: [{podSelector: {matchLabels: {app: api}}}]}]"), np("np-none", ALLOW))
        assert by(d) == (NP, "prod", "np-none", "default", "ingress", 0, "Allow")

    def test_first_matching_rule_of_a_policy_decides(self) -> None:
        rules = "[{action: Allow, protocol: UDP}, {action: Deny, protocol: TCP}, {action: Allow}]"
        assert by(to_db(gnp("p", rules))) == (GNP, None, "p", "default", "ingress", 1, "Deny")
        assert by(to_db(gnp("p", rules), proto="udp")) == (GNP, None, "p", "default", "ingress", 0, "Allow")


# --------------------------------------------------------------------------------------------
# §2.7–2.8 Actions


class TestPass:
    def test_pass_skips_the_rest_of_the_tier(self) -> None:
        d = to_db(tier("t1", 10), tier("t2", 20), gnp("pass", PASS, tier="t1", order=1),
                  gnp("deny-after-pass", tier="t1", order=2), gnp("allow-t2", ALLOW, tier="t2"))
        assert d.verdict == "allow"
        assert by(d) == (GNP, None, "allow-t2", "t2", "ingress", 0, "Allow")

    def test_pass_in_the_last_tier_falls_to_the_namespace_profile(self) -> None:
        d = to_db(gnp("pass", PASS))
        assert d.verdict == "allow"
        assert by(d) is None  # a built-in profile's default is not a decision by user policy
        last = d.enforced.stages[-1]
        assert last.hit is not None
        assert (last.hit.kind, last.hit.name, last.hit.builtin) == ("Profile", "kns.prod", True)
        assert last.reason == "every applicable tier passed; namespace profile kns.prod allows by default"
        # The explanation does not depend on whether the steps were asked for.
        quiet = decide(cluster(gnp("pass", PASS)), "prod/web", "prod/db", "tcp", 5432, explain=False)
        assert quiet.enforced.stages[-1].reason == last.reason

    def test_pass_in_the_last_tier_denies_a_host_endpoint_without_profiles(self) -> None:
        hep = ("apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: b, labels: {app: db}}\n"
               "spec: {node: node-b, interfaceName: eth0, expectedIPs: [172.31.0.12]}")
        d = decide(cluster(hep, gnp("pass", PASS)), "external:client", "node:node-b", "tcp", 80)
        assert d.verdict == "deny" and by(d) is None
        assert d.enforced.stages[-1].reason == "every applicable tier passed and no profile allowed the packet " \
                                               "(default deny)"

    def test_tier_default_action_pass(self) -> None:
        d = to_db(tier("soft", 10, "Pass"), gnp("nothing", NOTHING, tier="soft"), gnp("allow", ALLOW))
        assert by(d) == (GNP, None, "allow", "default", "ingress", 0, "Allow")
        d = to_db(tier("soft", 10, "Pass"), gnp("nothing", NOTHING, tier="soft"))
        assert d.verdict == "allow" and by(d) is None  # on to the profiles

    def test_tier_default_action_pass_does_not_override_an_explicit_deny(self) -> None:
        d = to_db(tier("soft", 10, "Pass"), gnp("deny", tier="soft"), gnp("allow", ALLOW))
        assert by(d) == (GNP, None, "deny", "soft", "ingress", 0, "Deny")


class TestEndOfTier:
    def test_attributed_to_the_last_enforced_selecting_policy(self) -> None:
        d = to_db(gnp("first", NOTHING, order=1), np("second", NOTHING, order=2), gnp("third", NOTHING, order=3),
                  gnp("not-selecting", NOTHING, order=4, selector="app == 'api'"))
        assert d.verdict == "deny"
        assert by(d) == (GNP, None, "third", "default", "ingress", -1, "Deny")

    def test_policies_not_governing_the_direction_are_not_triggers(self) -> None:
        egress_only = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: zz-egress}\n"
                       "spec: {selector: app == 'db', types: [Egress], egress: [{action: Allow}]}")
        d = to_db(gnp("ingress-policy", NOTHING), egress_only)
        assert by(d) == (GNP, None, "ingress-policy", "default", "ingress", -1, "Deny")

    def test_staged_policies_are_not_triggers_but_pending_names_the_first(self) -> None:
        d = to_db(gnp("enforced", NOTHING, order=1), gnp("staged", NOTHING, order=2, kind=SGNP))
        assert by(d) == (GNP, None, "enforced", "default", "ingress", -1, "Deny")
        # The pending walk attributes an end-of-tier deny as Calico's userspace checker does:
        # to the first policy of the tier evaluated without a match.
        assert d.pending.verdict == "deny"
        assert pending_by(d) == (GNP, None, "enforced", "default", "ingress", -1, "Deny")
        d = to_db(gnp("enforced", NOTHING, order=2), gnp("staged", NOTHING, order=1, kind=SGNP))
        assert pending_by(d) == (SGNP, None, "staged", "default", "ingress", -1, "Deny")

    def test_a_later_tier_never_runs_after_an_end_of_tier_deny(self) -> None:
        d = to_db(tier("t1", 1), gnp("nothing", NOTHING, tier="t1"), gnp("allow", ALLOW))
        assert by(d) == (GNP, None, "nothing", "t1", "ingress", -1, "Deny")


class TestLog:
    def test_log_is_not_terminal_and_every_log_rule_is_recorded(self) -> None:
        rules = "[{action: Log}, {action: Log, protocol: UDP}, {action: Log, protocol: TCP}, {action: Allow}]"
        d = to_db(tier("t1", 1), gnp("log-first", "[{action: Log}, {action: Pass}]", tier="t1"),
                  gnp("logs", rules, order=1), gnp("never-reached", "[{action: Log}]", order=2))
        assert by(d) == (GNP, None, "logs", "default", "ingress", 3, "Allow")
        assert logged(d) == [
            (GNP, None, "log-first", "ingress", 0),
            (GNP, None, "logs", "ingress", 0),
            (GNP, None, "logs", "ingress", 2),
        ]

    def test_log_then_end_of_tier(self) -> None:
        d = to_db(gnp("only-log", "[{action: Log}]"))
        assert by(d) == (GNP, None, "only-log", "default", "ingress", -1, "Deny")
        assert logged(d) == [(GNP, None, "only-log", "ingress", 0)]

    def test_log_in_both_directions_of_a_flow(self) -> None:
        egress_log = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: web-out}\n"
                      "spec: {selector: app == 'web', egress: [{action: Log}, {action: Allow}]}")
        d = to_db(egress_log, gnp("db-in", "[{action: Log}, {action: Allow}]"))
        assert logged(d) == [(GNP, None, "web-out", "egress", 0), (GNP, None, "db-in", "ingress", 0)]
        # For an allowed flow the policy closest to the destination is named.
        assert by(d) == (GNP, None, "db-in", "default", "ingress", 1, "Allow")


# --------------------------------------------------------------------------------------------
# §2.6 types


class TestTypes:
    def test_egress_only_policy_does_not_govern_ingress(self) -> None:
        egress_deny = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: out}\n"
                       "spec: {selector: app == 'db', types: [Egress], egress: [{action: Deny}]}")
        ev = cluster(egress_deny)
        d = decide(ev, "prod/web", "prod/db", "tcp", 5432)
        assert d.verdict == "allow" and by(d) is None
        d = decide(ev, "prod/db", "prod/web", "tcp", 8080)
        assert by(d) == (GNP, None, "out", "default", "egress", 0, "Deny")

    def test_rules_of_a_direction_not_in_types_are_ignored(self) -> None:
        doc = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n"
               "spec: {selector: app == 'db', types: [Egress], ingress: [{action: Deny}], egress: [{action: Allow}]}")
        d = to_db(doc)
        assert d.verdict == "allow" and by(d) is None

    def test_a_type_with_zero_rules_is_the_default_deny_idiom(self) -> None:
        doc = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: default-deny}\n"
               "spec: {selector: app == 'db', types: [Ingress, Egress]}")
        ev = cluster(doc)
        d = decide(ev, "prod/web", "prod/db", "tcp", 5432)
        assert by(d) == (GNP, None, "default-deny", "default", "ingress", -1, "Deny")
        d = decide(ev, "prod/db", "external:client", "udp", 53)
        assert by(d) == (GNP, None, "default-deny", "default", "egress", -1, "Deny")

    def test_defaulted_types_with_only_egress_rules(self) -> None:
        doc = ("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\n"
               "spec: {selector: app == 'db', egress: [{action: Deny}]}")
        assert to_db(doc).verdict == "allow"  # types defaulted to [Egress]


# --------------------------------------------------------------------------------------------
# §4.1 Staged policies; flowtui's disabled annotation


class TestStaged:
    def test_staged_gnp_gives_a_pending_verdict_only(self) -> None:
        d = to_db(gnp("would-deny", kind=SGNP))
        assert d.verdict == "allow" and by(d) is None
        assert d.pending.verdict == "deny"
        assert pending_by(d) == (SGNP, None, "would-deny", "default", "ingress", 0, "Deny")

    def test_staged_np(self) -> None:
        d = to_db(np("would-deny", kind=SNP))
        assert (d.verdict, d.pending.verdict) == ("allow", "deny")
        assert pending_by(d) == (SNP, "prod", "would-deny", "default", "ingress", 0, "Deny")

    def test_staged_knp_default_deny(self) -> None:
        d = to_db(knp("would-deny", kind="StagedKubernetesNetworkPolicy", api="projectcalico.org/v3"))
        assert (d.verdict, d.pending.verdict) == ("allow", "deny")
        assert pending_by(d) == (SKNP, "prod", "would-deny", "default", "ingress", -1, "Deny")

    def test_staged_policies_never_affect_the_enforced_verdict(self) -> None:
        d = to_db(gnp("staged-allow", ALLOW, order=1, kind=SGNP), gnp("deny", order=2))
        assert by(d) == (GNP, None, "deny", "default", "ingress", 0, "Deny")
        assert d.pending.verdict == "allow"
        assert pending_by(d) == (SGNP, None, "staged-allow", "default", "ingress", 0, "Allow")

    def test_a_tier_with_only_staged_policies_is_a_no_op(self) -> None:
        d = to_db(tier("preview", 1), gnp("staged-nothing", NOTHING, tier="preview", kind=SGNP), gnp("allow", ALLOW))
        assert by(d) == (GNP, None, "allow", "default", "ingress", 0, "Allow")
        assert pending_by(d) == (SGNP, None, "staged-nothing", "preview", "ingress", -1, "Deny")
        steps = [s for r in d.enforced.stages for s in r.steps]
        assert "tier preview: only staged policies select this endpoint; no effect" in steps

    def test_staged_log_rules_are_not_logged_by_the_enforced_walk(self) -> None:
        d = to_db(gnp("staged-log", "[{action: Log}]", order=1, kind=SGNP), gnp("allow", ALLOW, order=2))
        assert logged(d) == []
        assert [(h.kind, h.name, h.rule) for h in d.pending.logged] == [(SGNP, "staged-log", 0)]

    def test_staged_delete_is_ignored(self) -> None:
        # A Delete has an empty spec: if it took part it would select every pod of prod (no rules,
        # types [Ingress]) and end-of-tier deny them in the pending walk.
        delete = ("apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\n"
                  "metadata: {name: allow-db, namespace: prod}\nspec: {stagedAction: Delete}")
        d = to_db(delete)
        assert (d.verdict, d.pending.verdict) == ("allow", "allow")
        assert pending_by(d) is None
        sgnp_delete = ("apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\n"
                       "metadata: {name: x}\nspec: {stagedAction: Delete, tier: default}")
        d = to_db(sgnp_delete, gnp("allow", ALLOW))
        assert pending_by(d) == (GNP, None, "allow", "default", "ingress", 0, "Allow")

    def test_staged_action_set_is_the_default(self) -> None:
        d = to_db(gnp("staged", extra="stagedAction: Set", kind=SGNP))
        assert pending_by(d) == (SGNP, None, "staged", "default", "ingress", 0, "Deny")


DISABLED = "annotations: {flowtui.dev/disabled: 'true'}"


def disabled(doc: str) -> str:
    """The document with the flowtui.dev/disabled annotation set."""
    head, name_line = doc.split("metadata: {", 1)
    return f"{head}metadata: {{{DISABLED}, {name_line}"


class TestDisabled:
    def test_disabled_policy_is_as_if_absent(self) -> None:
        d = to_db(disabled(gnp("deny")))
        assert (d.verdict, d.pending.verdict) == ("allow", "allow")
        assert by(d) is None and pending_by(d) is None

    def test_disabled_policy_is_not_an_end_of_tier_trigger(self) -> None:
        d = to_db(gnp("enforced", NOTHING, order=1), disabled(gnp("later", NOTHING, order=2)))
        assert by(d) == (GNP, None, "enforced", "default", "ingress", -1, "Deny")

    def test_disabled_staged_and_knp(self) -> None:
        d = to_db(disabled(gnp("staged", kind=SGNP)), disabled(knp("k8s")))
        assert (d.verdict, d.pending.verdict) == ("allow", "allow")

    def test_annotation_false_keeps_the_policy(self) -> None:
        doc = gnp("deny").replace("metadata: {", "metadata: {annotations: {flowtui.dev/disabled: 'false'}, ")
        assert to_db(doc).verdict == "deny"
