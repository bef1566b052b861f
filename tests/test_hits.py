"""Per-rule hit counters: summed per identifier and joined with the rule table."""

from __future__ import annotations

import json

from enforcer.nft.hits import Hits, hits_from_json
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.cli.hits import hit_rows, unused_rows


def _rule(comment: str | None, packets: int, nbytes: int) -> dict[str, object]:
    rule: dict[str, object] = {"family": "inet", "table": "flowtui", "chain": "c",
                               "expr": [{"match": {}}, {"counter": {"packets": packets, "bytes": nbytes}}]}
    if comment is not None:
        rule["comment"] = comment
    return {"rule": rule}


def test_counters_are_summed_per_identifier_and_uncommented_rules_ignored() -> None:
    doc = {"nftables": [{"metainfo": {}}, _rule("r7", 3, 300), _rule("r7", 2, 200), _rule(None, 99, 9900),
                        _rule("r8", 0, 0), _rule("not-ours", 5, 5)]}
    assert hits_from_json(json.dumps(doc)) == {7: Hits(5, 500), 8: Hits(0, 0)}


def test_rows_name_the_policy_rule_behind_each_counter() -> None:
    ref = RuleRef(7, "GlobalNetworkPolicy", None, "dos-mitigation", "default", 3, "ingress", 0, "Deny")
    doc = json.dumps({"nftables": [_rule("r7", 4, 40), _rule("r9", 1, 10)]})
    rows = hit_rows({"node-b": doc, "node-a": None}, RuleTable([ref]))
    assert rows == [("node-b", ref, 7, Hits(4, 40)), ("node-b", None, 9, Hits(1, 10))]


def test_only_the_first_counter_of_a_rate_limited_rule_counts() -> None:
    rule = _rule("r3", 100, 6000)
    rule["rule"]["expr"] += [{"limit": {"rate": 10}}, {"counter": {"packets": 10, "bytes": 600}}]  # type: ignore[index]
    assert hits_from_json(json.dumps({"nftables": [rule]})) == {3: Hits(100, 6000)}


def test_unused_means_never_hit_rules_someone_wrote() -> None:
    rule = RuleRef(7, "GlobalNetworkPolicy", None, "web", "default", 3, "ingress", 0, "Allow")
    hit = RuleRef(8, "GlobalNetworkPolicy", None, "web", "default", 3, "ingress", 1, "Deny")
    eot = RuleRef(9, "EndOfTier", None, "web", "default", 0, "ingress", -1, "Deny", trigger_kind="GlobalNetworkPolicy")
    prof = RuleRef(10, "Profile", None, "kns.default", "__PROFILE__", 0, "ingress", 0, "Allow")
    doc = json.dumps({"nftables": [_rule("r7", 0, 0), _rule("r8", 2, 20), _rule("r9", 0, 0), _rule("r10", 0, 0)]})
    rows = hit_rows({"node-a": doc}, RuleTable([rule, hit, eot, prof]))
    assert [r[2] for r in unused_rows(rows)] == [7]
