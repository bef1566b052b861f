"""Prefix -> rule through a live RuleTable; enrichment of addresses with endpoint metadata."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import numpy as np

from enforcer.model import ExternalHost, HostEndpoint, NetworkSet, Node, Pod, ResourceSet
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.collector.attribution import FOREIGN, KNOWN, NO_PREFIX, UNKNOWN_ID, Attribution, policy_hit, reporter
from flowtui.collector.enrich import Enricher

ip = ipaddress.ip_address
net = ipaddress.ip_network


def ref(rule_id: int, action: str = "Deny", **kw: object) -> RuleRef:
    base: dict[str, object] = dict(
        kind="NetworkPolicy",
        namespace="prod",
        name="db",
        tier="default",
        revision=1,
        direction="ingress",
        rule=0,
        action=action,
    )
    base.update(kw)
    return RuleRef(id=rule_id, **base)  # type: ignore[arg-type]


def test_resolve_known_unknown_foreign_and_missing(tmp_path: Path) -> None:
    att = Attribution(None, RuleTable([ref(7), ref(8, "Allow")]))
    res = att.resolve(["ft:D7", "ft:A8", "ft:D99", "DPI|tier1", "", "ft:A7"], np.array([5, 4, 3, 2, 1, 6]))
    assert res.rule_id.tolist() == [7, 8, 99, -1, -1, 7]
    assert res.action == ["Deny", "Allow", "Deny", None, None, "Allow"]
    assert res.status.tolist() == [KNOWN, KNOWN, UNKNOWN_ID, FOREIGN, NO_PREFIX, KNOWN]
    s = att.stats
    assert (s.unknown_rule, s.foreign_prefix, s.no_prefix, s.action_mismatch) == (3, 2, 1, 6)


def test_table_reloads_when_the_file_changes_and_unknown_ids_force_a_look(tmp_path: Path) -> None:
    path = tmp_path / "rules.jsonl"
    RuleTable([ref(1)]).dump(path)
    att = Attribution(path)
    assert att.resolve(["ft:D1"]).status.tolist() == [KNOWN]
    assert [r.id for r in att.take_unstored()] == [1]
    # a new policy revision: id 2 appears in the file a moment later
    RuleTable([ref(1), ref(2, revision=2)]).dump(path)
    os.utime(path, ns=(1, 10**18))  # a different mtime even within the same tick
    res = att.resolve(["ft:D2"])  # unknown id -> immediate reload
    assert res.status.tolist() == [KNOWN]
    assert att.table.get(2).revision == 2  # type: ignore[union-attr]
    assert [r.id for r in att.take_unstored()] == [2]
    assert att.take_unstored() == []


def test_tolerant_loading_counts_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "rules.jsonl"
    good = json.dumps({**ref(3).__dict__, "future_field": 1})
    path.write_text(good + "\n{not json\n" + json.dumps({"id": 4}) + "\n\n")
    att = Attribution(path)
    assert list(att.table.refs) == [3]
    assert att.stats.bad_rule_lines == 2


def test_missing_rules_file_is_an_empty_table(tmp_path: Path) -> None:
    att = Attribution(tmp_path / "nope.jsonl")
    assert att.resolve(["ft:D1"]).status.tolist() == [UNKNOWN_ID]


def test_policy_hit_strings_follow_calico() -> None:
    assert policy_hit(ref(1, "Allow", rule=2)) == "0|default|np:prod/db|allow|2"
    g = ref(2, kind="GlobalNetworkPolicy", namespace=None, name="deny-all", tier="security")
    assert policy_hit(g) == "0|security|gnp:deny-all|deny|0"
    k = ref(3, kind="KubernetesNetworkPolicy", name="knp.default.web", rule=1)
    assert policy_hit(k) == "0|default|knp:prod/knp.default.web|deny|1"
    eot = ref(
        4, kind="EndOfTier", name="tier1.policy1", namespace="ns1", tier="tier1", rule=-1, trigger_kind="NetworkPolicy"
    )
    assert policy_hit(eot) == "0|tier1|np:ns1/tier1.policy1|deny|-1"
    prof = ref(5, "Allow", kind="Profile", namespace=None, name="kns.default", tier=None)
    assert policy_hit(prof) == "0|__PROFILE__|pro:kns.default|allow|0"
    none = ref(6, kind="NoProfileMatch", namespace=None, name="", tier=None, rule=-1)
    assert policy_hit(none) == "0|__PROFILE__|pro:__NO_MATCH__|deny|-1"
    assert reporter(ref(1)) == "dst" and reporter(ref(1, direction="egress")) == "src" and reporter(None) is None


def cluster() -> ResourceSet:
    return ResourceSet(
        pods=(
            Pod("web-1", "prod", labels=(("app", "web"),), node="n1", ips=(ip("10.244.1.5"), ip("fd00::5"))),
            Pod("db-0", "prod", labels=(("app", "db"),), node="n2", ips=(ip("10.244.2.7"),)),
        ),
        nodes=(Node("n1", addresses=(ip("172.31.0.10"),)), Node("n2", addresses=(ip("172.31.0.11"),))),
        host_endpoints=(
            HostEndpoint("n2-eth0", node="n2", labels=(("role", "db-host"),), expected_ips=(ip("192.168.50.2"),)),
        ),
        network_sets=(
            NetworkSet("blocklist", None, labels=(("kind", "bad"),), nets=(net("198.51.100.0/24"),)),
            NetworkSet("one-bad", "prod", nets=(net("198.51.100.7/32"),)),
        ),
        external_hosts=(ExternalHost("web", (ip("203.0.113.10"),)),),
    )


def test_enrichment_precedence_and_longest_prefix() -> None:
    e = Enricher(cluster(), revision=4, first_id=100)
    by = e.by_id()

    def who(address: str) -> tuple[str, str | None, str]:
        info = by[e.lookup(address)]
        return info.kind, info.namespace, info.name

    assert who("10.244.1.5") == ("wep", "prod", "web-1")
    assert who("fd00::5") == ("wep", "prod", "web-1")
    assert by[e.lookup("10.244.1.5")].labels == (("app", "web"),) and by[e.lookup("10.244.1.5")].node == "n1"
    assert who("192.168.50.2") == ("hep", None, "n2-eth0")
    assert who("172.31.0.11") == ("hep", None, "n2-eth0")  # n2 is covered by a host endpoint
    assert who("172.31.0.10") == ("node", None, "n1")
    assert who("203.0.113.10") == ("external", None, "web")
    assert who("198.51.100.7") == ("netset", "prod", "one-bad")  # /32 beats /24
    assert who("198.51.100.8") == ("netset", None, "blocklist")
    assert who("10.9.9.9") == ("net", None, "pvt")
    assert who("8.8.8.8") == ("net", None, "pub")
    assert who("fe80::1") == ("net", None, "pvt")
    assert e.lookup("not an address") == -1
    assert min(by) == 100 and all(i.revision == 4 for i in by.values())
    codes = e.lookup_codes(["10.244.2.7", "8.8.8.8"])
    assert [by[c].name for c in codes.tolist()] == ["db-0", "pub"]


def test_empty_resources_still_name_networks() -> None:
    e = Enricher()
    assert e.by_id()[e.lookup("1.1.1.1")].name == "pub"
