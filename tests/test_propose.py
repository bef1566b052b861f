"""`flowtui propose`: least-privilege policy from observed allowed flows.

The proposal keeps every observed allowed flow allowed (what-if reports none newly denied, also on
random synthetic clusters), denies what was not observed, names workloads by their stable labels
and ports by their names, puts outside peers in NetworkSets (falling back to nets when a set would
change other policies' selectors), and is valid input for the loader."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.loader import load_text
from enforcer.synth import SynthSpec, synth_resources
from flowtui.whatif.edits import merge
from flowtui.whatif.engine import compare
from flowtui.whatif.propose import Proposal, propose, workloads
from tests.test_whatif_fixtures import ADDR, POLICY, SHOP_TRAFFIC, cluster, flow_frame, random_frame


def docs(proposal: Proposal, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in proposal.documents if d["kind"] == kind}


def test_proposal_for_the_shop() -> None:
    res = cluster()
    proposal = propose(flow_frame(SHOP_TRAFFIC, repeat=2), res, "shop")
    assert proposal.newly_denied == 0 and proposal.netsets
    assert proposal.flows == 14  # every allowed flow touching shop (tester -> db is denied today)
    policies = docs(proposal, "NetworkPolicy")
    assert sorted(policies) == ["flowtui-api", "flowtui-db", "flowtui-web"]
    web = policies["flowtui-web"]["spec"]
    assert web["selector"] == "app == 'web' && !has(tier)"  # pod-template-hash is not stable
    assert web["types"] == ["Ingress", "Egress"]
    api = policies["flowtui-api"]["spec"]
    assert api["ingress"] == [{"action": "Allow", "protocol": "TCP",
                               "source": {"selector": "app == 'web' && !has(tier)"},
                               "destination": {"ports": ["http"]}}]  # api names 8080 `http`
    assert {"action": "Allow", "protocol": "TCP", "source": {"nets": ["172.31.0.11/32"]},
            "destination": {"ports": [8080]}} in web["ingress"]  # the kubelet probe from node-a
    netsets = docs(proposal, "NetworkSet")
    assert sorted(netsets) == ["flowtui-web-in-1", "flowtui-web-out-1"]  # per workload, direction, services
    assert [d["spec"]["nets"] for d in netsets.values()] == [["198.51.100.7/32"], ["198.51.100.7/32"]]
    assert {"action": "Allow", "protocol": "TCP", "source": {"selector": "flowtui.dev/netset == 'flowtui-web-in-1'"},
            "destination": {"ports": [443]}} in web["ingress"]
    assert {"action": "Allow", "protocol": "UDP",
            "destination": {"selector": "flowtui.dev/netset == 'flowtui-web-out-1'", "ports": [53]}} in web["egress"]
    assert policies["flowtui-db"]["spec"]["egress"] == []  # db was never seen calling anyone


def test_proposal_is_valid_yaml_for_the_loader() -> None:
    proposal = propose(flow_frame(SHOP_TRAFFIC), cluster(), "shop")
    text = proposal.to_yaml()
    assert text.startswith("# Proposed by `flowtui propose --namespace shop`")
    loaded = load_text(text, "proposal.yaml")
    assert len(loaded.policies) == 3 and len(loaded.network_sets) == 2


def test_unobserved_traffic_is_denied() -> None:
    res = cluster()
    proposal = propose(flow_frame(SHOP_TRAFFIC), res, "shop")
    edited = merge(res, load_text(proposal.to_yaml(), "proposal.yaml"))
    unobserved = flow_frame([("api-1", "internet", 6, 1000, 443), ("internet", "db-1", 6, 1000, 5432),
                             ("node-b", "db-1", 6, 1000, 5432), ("tester", "web-1", 6, 1000, 443),
                             ("web-1", "internet", 6, 1000, 53)])
    cmp = compare(unobserved, res, edited)
    idx = cmp.keyed.key_idx
    assert (cmp.base.verdict[idx] == 0).all() and (cmp.edited.verdict[idx] == 1).all()


def test_netsets_fall_back_to_nets_when_a_set_would_deny() -> None:
    """A GNP that denies anything namespaced into web would also match a NetworkSet in shop."""
    guard = """
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-only-from-outside}
spec:
  order: 1
  selector: app == 'web'
  ingress:
  - action: Deny
    source: {namespaceSelector: all()}
  - action: Pass
"""
    from tests.test_whatif_fixtures import POLICY

    res = cluster(POLICY + guard)
    frame = flow_frame(SHOP_TRAFFIC)
    proposal = propose(frame, res, "shop")
    assert proposal.newly_denied == 0 and not proposal.netsets
    assert not docs(proposal, "NetworkSet")
    assert any("written as nets" in n for n in proposal.notes)
    web = docs(proposal, "NetworkPolicy")["flowtui-web"]["spec"]
    assert {"action": "Allow", "protocol": "TCP", "source": {"nets": [ADDR["internet"] + "/32"]},
            "destination": {"ports": [443]}} in web["ingress"]


def test_workloads_have_exact_selectors() -> None:
    res = cluster()
    by_pod = workloads(res)
    assert by_pod[("shop", "web-1")] is by_pod[("shop", "web-2")]
    assert by_pod[("shop", "api-1")].selector == "app == 'api' && tier == 'backend'"
    assert by_pod[("dev", "tester")].selector == "app == 'tester'"


def test_icmp_and_portless_protocols() -> None:
    res = cluster()
    frame = pl.DataFrame(
        [(ADDR["web-1"], ADDR["db-1"], 1, None, None, 8, 0), (ADDR["web-1"], ADDR["db-1"], 1, None, None, None, None),
         (ADDR["web-1/6"], ADDR["db-1/6"], 58, None, None, 128, 0), (ADDR["web-1"], ADDR["db-1"], 47, None, None,
                                                                     None, None)],
        schema=["src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "icmp_code"], orient="row")
    proposal = propose(frame, res, "shop")
    assert proposal.newly_denied == 0
    egress = docs(proposal, "NetworkPolicy")["flowtui-web"]["spec"]["egress"]
    protocols = sorted(str(r["protocol"]) for r in egress)
    assert protocols == ["47", "ICMP", "ICMPv6"]  # ICMP without a type: the whole protocol
    v6 = next(r for r in egress if r["protocol"] == "ICMPv6")
    assert v6["icmp"] == {"type": 128, "code": 0}
    load_text(proposal.to_yaml(), "p.yaml")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), spec=st.sampled_from([SynthSpec(), SynthSpec(nodes=3, pods=12, policies=12)]))
def test_random_clusters_keep_every_observed_flow(seed: int, spec: SynthSpec) -> None:
    keeps_every_observed_flow(seed, spec)


def keeps_every_observed_flow(seed: int, spec: SynthSpec) -> None:
    res = synth_resources(seed, spec)
    frame = random_frame(res, seed, 300)
    for ns in sorted({p.namespace for p in res.pods}):
        proposal = propose(frame, res, ns)
        assert proposal.newly_denied == 0, proposal.notes
        loaded = load_text(proposal.to_yaml(), f"{ns}.yaml")  # valid for the loader (raises otherwise)
        cmp = compare(frame, res, merge(res, loaded), pending=False)
        assert not ((cmp.base.verdict == 0) & (cmp.edited.verdict == 1)).any()


UNTRACKED_EDGE = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-a-eth0, labels: {role: edge}}
spec: {node: node-a, interfaceName: eth0, expectedIPs: [172.31.0.11]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked-dns-in}
spec:
  selector: role == 'edge'
  doNotTrack: true
  applyOnForward: true
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53]}
"""


POLICY_WITH_EDGE = POLICY + "---\n" + UNTRACKED_EDGE


def test_replies_of_untracked_udp_are_allowed_in_reverse() -> None:
    # The request is NOTRACKed on node-a, so its reply has no conntrack entry: web's workload policy
    # decides web:53 -> internet:5353 as a new flow. The proposal must allow that reply too.
    res = cluster(POLICY_WITH_EDGE)
    frame = flow_frame([("internet", "web-1", 17, 5353, 53), ("web-1", "api-1", 6, 40000, 8080)])
    proposal = propose(frame, res, "shop")
    assert proposal.newly_denied == 0
    web = docs(proposal, "NetworkPolicy")["flowtui-web"]["spec"]
    reply_sets = [n for n, d in docs(proposal, "NetworkSet").items() if n.startswith("flowtui-web-out")]
    assert [docs(proposal, "NetworkSet")[n]["spec"]["nets"] for n in reply_sets] == [["198.51.100.7/32"]]
    assert {"action": "Allow", "protocol": "UDP",
            "destination": {"selector": f"flowtui.dev/netset == '{reply_sets[0]}'", "ports": [5353]}} in web["egress"]
    assert any("reverse direction" in n and n.startswith("1 observed flows") for n in proposal.notes)
    # Tracked replies (web -> api is not untracked anywhere) need nothing: api gets no egress rule.
    assert docs(proposal, "NetworkPolicy")["flowtui-api"]["spec"]["egress"] == []
    # Without the reply rule, the proposal would deny the observed flow (what the check above relies on).
    web["egress"] = [r for r in web["egress"] if r.get("destination", {}).get("ports") != [5353]]
    loaded = load_text(proposal.to_yaml(), "p.yaml")
    cmp = compare(frame, res, merge(res, loaded), pending=False)
    assert ((cmp.base.verdict == 0) & (cmp.edited.verdict == 1)).any()


def test_seed_711_keeps_untracked_replies() -> None:
    # Regression: with untracked host policy on the path, UDP replies are decided by the namespace's
    # workload policy; the proposal once covered only the request direction (1 and 8 flows denied).
    keeps_every_observed_flow(711, SynthSpec())
