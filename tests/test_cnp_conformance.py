"""The conformance suite of kubernetes-sigs/network-policy-api v0.2.0, as Calico 3.32 runs it
(features ClusterNetworkPolicy and ClusterNetworkPolicyNamedPorts), decided by `flowtui eval`.

Each upstream test applies one base manifest (tests/fixtures/cnp_conformance/, unchanged), then
runs subtests in order; a subtest may patch the policy first (the patches accumulate, as they do
upstream), then pokes servers from clients and expects the connection to succeed or not. Here
every poke also names what decides it, as `eval` reports it (`decided_by`):

    "A" / "D"   allowed / denied by the test's ClusterNetworkPolicy named in the step
    "-"         allowed with no policy deciding (every tier passed: the namespace profile allows)
    "A:Kind:name" / "D:Kind:name"   allowed / denied by that other policy

Expectations are written from the upstream tests' pokes (named after them); the Go code is not
used. The experimental egress tests need node peers, which Calico 3.32 does not support, so
Calico does not run them and neither does this file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from enforcer.evaluate import Evaluator, decision_json
from enforcer.loader import load_text
from enforcer.resolve import ClusterState
from flowtui.cli.main import cli
from flowtui.cli.policy import build_flow

BASE = Path(__file__).parent / "fixtures" / "cnp_conformance"
CLUSTER = BASE / "cluster.yaml"
PODS = {"gryffindor": "harry-potter", "slytherin": "draco-malfoy", "hufflepuff": "cedric-diggory",
        "ravenclaw": "luna-lovegood", "forbidden-forrest": "centaur"}
KNP = "A:KubernetesNetworkPolicy:allow-gress-from-to-slytherin-to-gryffindor"

Docs = list[dict[str, Any]]
Mutation = Callable[[Docs], None]


def ref(short: str) -> str:
    """`gryffindor-0` → `network-policy-conformance-gryffindor/harry-potter-0`."""
    house, _, index = short.rpartition("-")
    return f"network-policy-conformance-{house}/{PODS[house]}-{index}"


def cnp(docs: Docs, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "ClusterNetworkPolicy" and d["metadata"]["name"] == name)


def swap(name: str, direction: str, i: int, j: int) -> Mutation:
    def mutate(docs: Docs) -> None:
        rules = cnp(docs, name)["spec"][direction]
        rules[i], rules[j] = rules[j], rules[i]
    return mutate


def set_action(name: str, direction: str, i: int, action: str) -> Mutation:
    def mutate(docs: Docs) -> None:
        cnp(docs, name)["spec"][direction][i]["action"] = action
    return mutate


def set_priority(name: str, priority: int) -> Mutation:
    def mutate(docs: Docs) -> None:
        cnp(docs, name)["spec"]["priority"] = priority
    return mutate


def named_port(name: str, direction: str, i: int, port: str) -> Mutation:
    def mutate(docs: Docs) -> None:
        cnp(docs, name)["spec"][direction][i]["protocols"] = [{"destinationNamedPort": port}]
    return mutate


def delete_knp(docs: Docs) -> None:
    docs[:] = [d for d in docs if d["kind"] != "NetworkPolicy"]


def allow_pod_ips(name: str, *shorts: str) -> Mutation:
    """CNPAdminTierEgressInlineCIDRPeers: a first egress rule accepting two pods' addresses."""
    def mutate(docs: Docs) -> None:
        state = ClusterState(load_text(CLUSTER.read_text(), str(CLUSTER)))
        nets = [f"{state.pods_by_ref[ref(s)].ips[0]}/32" for s in shorts]
        rule = {"name": "allow-egress-to-specific-podIPs", "action": "Accept", "to": [{"networks": nets}]}
        cnp(docs, name)["spec"]["egress"].insert(0, rule)
    return mutate


@dataclass
class Step:
    """One upstream subtest: an optional patch, then pokes `CLIENT > SERVER PROTO/PORT EXPECT`."""

    pokes: list[str]
    mutate: Mutation | None = None


@dataclass
class Case:
    name: str  # the upstream test's ShortName
    manifest: str
    policy: str  # the ClusterNetworkPolicy that "A"/"D" name
    steps: list[Step] = field(default_factory=list)


def single_protocol(name: str, manifest: str, policy: str, direction: str, proto: str,
                    pokes: list[tuple[str, str, int, str, int]], admin: bool) -> Case:
    """The shape every single-protocol test shares. `pokes` lists per subtest (server, client A,
    port A, client B, port B); the deciders follow from the base rules, in order: accept from
    ravenclaw, deny from ravenclaw, [pass from ravenclaw], deny from slytherin at one port,
    [pass from slytherin at it], accept from hufflepuff at one port, deny from hufflepuff."""
    outcomes = [("A", "A"), ("A", "D"), ("D", "D"), ("D", "-"), ("-", "-"), ("-", "-")]
    mutations: list[Mutation | None] = [None, None, swap(policy, direction, 0, 1), None]
    if admin:
        mutations += [swap(policy, direction, 0, 2), swap(policy, direction, 3, 4)]
    steps = []
    for (server, client_a, port_a, client_b, port_b), (a, b), mutate in zip(pokes, outcomes, mutations, strict=False):
        steps.append(Step([f"{client_a} > {server} {proto}/{port_a} {a}",
                           f"{client_b} > {server} {proto}/{port_b} {b}"], mutate))
    return Case(name, manifest, policy, steps)


ADMIN = "admin_tier/standard-"
BASELINE = "baseline_tier/standard-"

CASES = [
    single_protocol("CNPAdminTierIngressTCP", ADMIN + "ingress-tcp-rules.yaml", "ingress-tcp", "ingress", "tcp", [
        ("gryffindor-0", "ravenclaw-0", 80, "ravenclaw-1", 8080),
        ("gryffindor-1", "hufflepuff-0", 80, "hufflepuff-1", 8080),
        ("gryffindor-1", "ravenclaw-0", 80, "ravenclaw-1", 8080),
        ("gryffindor-0", "slytherin-0", 80, "slytherin-1", 8080),
        ("gryffindor-0", "ravenclaw-0", 80, "ravenclaw-1", 8080),
        ("gryffindor-0", "slytherin-0", 80, "slytherin-1", 8080)], admin=True),
    single_protocol("CNPAdminTierIngressUDP", ADMIN + "ingress-udp-rules.yaml", "ingress-udp", "ingress", "udp", [
        ("hufflepuff-0", "ravenclaw-0", 53, "ravenclaw-1", 5353),
        ("hufflepuff-1", "gryffindor-0", 53, "gryffindor-1", 5353),
        ("hufflepuff-1", "ravenclaw-0", 53, "ravenclaw-1", 5353),
        ("hufflepuff-0", "slytherin-0", 5353, "slytherin-1", 53),
        ("hufflepuff-1", "ravenclaw-0", 5353, "ravenclaw-1", 53),
        ("hufflepuff-0", "slytherin-0", 5353, "slytherin-1", 53)], admin=True),
    single_protocol("CNPAdminTierIngressSCTP", ADMIN + "ingress-sctp-rules.yaml", "ingress-sctp", "ingress", "sctp", [
        ("ravenclaw-0", "gryffindor-0", 9003, "gryffindor-1", 9005),
        ("ravenclaw-1", "hufflepuff-0", 9003, "hufflepuff-1", 9005),
        ("ravenclaw-1", "gryffindor-0", 9003, "gryffindor-1", 9005),
        ("ravenclaw-0", "slytherin-0", 9003, "slytherin-1", 9005),
        ("ravenclaw-1", "gryffindor-0", 9003, "gryffindor-1", 9005),
        ("ravenclaw-0", "slytherin-0", 9003, "slytherin-1", 9005)], admin=True),
    single_protocol("CNPAdminTierEgressTCP", ADMIN + "egress-tcp-rules.yaml", "egress-tcp", "egress", "tcp", [
        ("ravenclaw-0", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("hufflepuff-1", "gryffindor-0", 8080, "gryffindor-1", 80),
        ("ravenclaw-1", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("slytherin-0", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("ravenclaw-0", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("slytherin-0", "gryffindor-0", 80, "gryffindor-1", 8080)], admin=True),
    single_protocol("CNPAdminTierEgressUDP", ADMIN + "egress-udp-rules.yaml", "egress-udp", "egress", "udp", [
        ("ravenclaw-0", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("gryffindor-1", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("ravenclaw-1", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("slytherin-0", "hufflepuff-0", 5353, "hufflepuff-1", 53),
        ("ravenclaw-1", "hufflepuff-0", 5353, "hufflepuff-1", 53),
        ("slytherin-0", "hufflepuff-0", 5353, "hufflepuff-1", 53)], admin=True),
    single_protocol("CNPAdminTierEgressSCTP", ADMIN + "egress-sctp-rules.yaml", "egress-sctp", "egress", "sctp", [
        ("gryffindor-0", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("hufflepuff-1", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("gryffindor-1", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("slytherin-0", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("gryffindor-1", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("slytherin-0", "ravenclaw-0", 9003, "ravenclaw-1", 9005)], admin=True),
    single_protocol("CNPBaselineTierIngressTCP", BASELINE + "ingress-tcp-rules.yaml", "default", "ingress", "tcp", [
        ("gryffindor-0", "ravenclaw-0", 80, "ravenclaw-1", 8080),
        ("gryffindor-1", "hufflepuff-0", 80, "hufflepuff-1", 8080),
        ("gryffindor-1", "ravenclaw-0", 80, "ravenclaw-1", 8080),
        ("gryffindor-0", "slytherin-0", 80, "slytherin-1", 8080)], admin=False),
    single_protocol("CNPBaselineTierIngressUDP", BASELINE + "ingress-udp-rules.yaml", "default", "ingress", "udp", [
        ("hufflepuff-0", "ravenclaw-0", 53, "ravenclaw-1", 5353),
        ("hufflepuff-1", "gryffindor-0", 53, "gryffindor-1", 5353),
        ("hufflepuff-1", "ravenclaw-0", 53, "ravenclaw-1", 5353),
        ("hufflepuff-0", "slytherin-0", 5353, "slytherin-1", 53)], admin=False),
    single_protocol("CNPBaselineTierIngressSCTP", BASELINE + "ingress-sctp-rules.yaml", "default", "ingress", "sctp", [
        ("ravenclaw-0", "gryffindor-0", 9003, "gryffindor-1", 9005),
        ("ravenclaw-1", "hufflepuff-0", 9003, "hufflepuff-1", 9005),
        ("ravenclaw-1", "gryffindor-0", 9003, "gryffindor-1", 9005),
        ("ravenclaw-0", "slytherin-0", 9003, "slytherin-1", 9005)], admin=False),
    single_protocol("CNPBaselineTierEgressTCP", BASELINE + "egress-tcp-rules.yaml", "default", "egress", "tcp", [
        ("ravenclaw-0", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("hufflepuff-1", "gryffindor-0", 8080, "gryffindor-1", 80),
        ("ravenclaw-1", "gryffindor-0", 80, "gryffindor-1", 8080),
        ("slytherin-0", "gryffindor-0", 80, "gryffindor-1", 8080)], admin=False),
    single_protocol("CNPBaselineTierEgressUDP", BASELINE + "egress-udp-rules.yaml", "default", "egress", "udp", [
        ("ravenclaw-0", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("gryffindor-1", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("ravenclaw-1", "hufflepuff-0", 53, "hufflepuff-1", 5353),
        ("slytherin-0", "hufflepuff-0", 5353, "hufflepuff-1", 53)], admin=False),
    single_protocol("CNPBaselineTierEgressSCTP", BASELINE + "egress-sctp-rules.yaml", "default", "egress", "sctp", [
        ("gryffindor-0", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("hufflepuff-1", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("gryffindor-1", "ravenclaw-0", 9003, "ravenclaw-1", 9005),
        ("slytherin-0", "ravenclaw-0", 9003, "ravenclaw-1", 9005)], admin=False),
    Case("CNPAdminTierIngressNamedPort", ADMIN + "ingress-udp-rules.yaml", "ingress-udp", [
        Step(["gryffindor-0 > hufflepuff-1 udp/53 A", "gryffindor-1 > hufflepuff-1 udp/5353 D"],
             named_port("ingress-udp", "ingress", 5, "dns"))]),
    Case("CNPBaselineTierIngressNamedPort", BASELINE + "ingress-tcp-rules.yaml", "default", [
        Step(["hufflepuff-0 > gryffindor-1 tcp/80 A", "hufflepuff-1 > gryffindor-1 tcp/8080 D"],
             named_port("default", "ingress", 3, "web"))]),
    Case("CNPAdminTierPriorityField", ADMIN + "priority-field.yaml", "priority-50-example", [
        Step(["slytherin-0 > gryffindor-0 tcp/80 D", "slytherin-1 > gryffindor-0 tcp/8080 D"]),
        Step(["gryffindor-0 > slytherin-0 tcp/80 D", "gryffindor-1 > slytherin-0 tcp/8080 D"]),
        Step(["slytherin-0 > gryffindor-0 tcp/80 A:ClusterNetworkPolicy:default",
              "slytherin-1 > gryffindor-0 tcp/8080 A:ClusterNetworkPolicy:default",
              "gryffindor-0 > slytherin-0 tcp/80 A:ClusterNetworkPolicy:default",
              "gryffindor-1 > slytherin-0 tcp/8080 A:ClusterNetworkPolicy:default"],
             set_priority("old-priority-60-new-priority-40-example", 40))]),
    Case("CNPAdminTierIntegration", "api_integration/standard-anp-np-banp.yaml", "pass-example", [
        Step(["slytherin-0 > gryffindor-0 tcp/80 D", "slytherin-1 > gryffindor-0 tcp/8080 D"]),
        Step(["gryffindor-0 > slytherin-0 tcp/80 D", "gryffindor-1 > slytherin-0 tcp/8080 D"]),
        Step([f"slytherin-0 > gryffindor-0 tcp/80 {KNP}", f"slytherin-1 > gryffindor-0 tcp/8080 {KNP}"],
             set_action("pass-example", "ingress", 0, "Pass")),
        Step([f"gryffindor-0 > slytherin-0 tcp/80 {KNP}", f"gryffindor-1 > slytherin-0 tcp/8080 {KNP}"],
             set_action("pass-example", "egress", 0, "Pass")),
        Step(["slytherin-0 > gryffindor-0 tcp/80 D:ClusterNetworkPolicy:default",
              "slytherin-1 > gryffindor-0 tcp/8080 D:ClusterNetworkPolicy:default"], delete_knp),
        Step(["gryffindor-0 > slytherin-0 tcp/80 D:ClusterNetworkPolicy:default",
              "gryffindor-1 > slytherin-0 tcp/8080 D:ClusterNetworkPolicy:default"])]),
]

for _tier, _manifest, _short in (("Admin", ADMIN, "inline-cidr-as-peers-example"),
                                 ("Baseline", BASELINE, "default")):
    _all = ("tcp/80", "udp/53", "sctp/9003")
    CASES.append(Case(f"CNP{_tier}TierEgressInlineCIDRPeers", _manifest + "egress-inline-cidr-rules.yaml", _short, [
        Step([f"gryffindor-1 > {s} {p} {e}" for s, e in (("ravenclaw-0", "D"), ("hufflepuff-0", "D"),
                                                         ("slytherin-0", "A")) for p in _all]),
        Step([f"gryffindor-1 > {s} {p} {e}" for s, e in (("ravenclaw-0", "A"), ("hufflepuff-0", "A"),
                                                         ("ravenclaw-1", "D"), ("hufflepuff-1", "D")) for p in _all],
             allow_pod_ips(_short, "ravenclaw-0", "hufflepuff-0")),
    ]))



def both_swapped(name: str, i: int, j: int) -> Mutation:
    def mutate(docs: Docs) -> None:
        swap(name, "egress", i, j)(docs)
        swap(name, "ingress", i, j)(docs)
    return mutate


def gress_pokes(egress_server: str, egress: list[tuple[str, str, str]], ingress_server: str,
                ingress: list[tuple[str, str, str]]) -> list[str]:
    """One subtest of the combined tests: gryffindor's pods as clients of `egress_server`, then
    other pods as clients of gryffindor's `ingress_server`; (client, proto/port, expect)."""
    return [f"{c} > {egress_server} {p} {e}" for c, p, e in egress] + \
        [f"{c} > {ingress_server} {p} {e}" for c, p, e in ingress]


def gress_case(tier: str, policy: str) -> Case:
    """CNP{Admin,Baseline}TierGress: one policy over gryffindor with egress and ingress rules for
    TCP, UDP and SCTP at once."""
    manifest = (ADMIN if tier == "Admin" else BASELINE) + "gress-rules-combined.yaml"
    allow_at_ports = gress_pokes(
        "hufflepuff-1", [("gryffindor-0", "tcp/8080", "A"), ("gryffindor-1", "tcp/80", "D"),
                         ("gryffindor-0", "udp/5353", "A"), ("gryffindor-1", "udp/53", "D"),
                         ("gryffindor-0", "sctp/9003", "A"), ("gryffindor-1", "sctp/9005", "D")],
        "gryffindor-1", [("hufflepuff-0", "tcp/80", "A"), ("hufflepuff-1", "tcp/8080", "D"),
                         ("hufflepuff-0", "udp/5353", "A"), ("hufflepuff-1", "udp/53", "D"),
                         ("hufflepuff-0", "sctp/9003", "A"), ("hufflepuff-1", "sctp/9005", "D")])

    def slytherin(first: str, second: str) -> list[str]:
        return gress_pokes(
            "slytherin-0", [("gryffindor-0", "tcp/80", first), ("gryffindor-1", "tcp/8080", second),
                            ("gryffindor-0", "udp/53", first), ("gryffindor-1", "udp/5353", second),
                            ("gryffindor-0", "sctp/9003", first), ("gryffindor-1", "sctp/9005", second)],
            "gryffindor-0", [("slytherin-0", "tcp/80", first), ("slytherin-1", "tcp/8080", second),
                             ("slytherin-0", "udp/53", first), ("slytherin-1", "udp/5353", second),
                             ("slytherin-0", "sctp/9003", first), ("slytherin-1", "sctp/9005", second)])

    def ravenclaw(server: str, inner: str, expect: str, udp: str = "udp/53") -> list[str]:
        return gress_pokes(
            server, [("gryffindor-0", "tcp/80", expect), ("gryffindor-1" if udp == "udp/53" else "gryffindor-0",
                                                         udp, expect), ("gryffindor-0", "sctp/9003", expect)],
            inner, [("ravenclaw-0", "tcp/80", expect), ("ravenclaw-1", "udp/53", expect),
                    ("ravenclaw-1", "sctp/9003", expect)])

    steps = [Step(ravenclaw("ravenclaw-0", "gryffindor-0", "A")),
             Step(allow_at_ports),
             Step(ravenclaw("ravenclaw-1", "gryffindor-1", "D"), both_swapped(policy, 0, 1)),
             Step(slytherin("D", "-"))]
    if tier == "Admin":
        steps += [Step(ravenclaw("ravenclaw-0", "gryffindor-0", "-", udp="udp/5353"), both_swapped(policy, 0, 2)),
                  Step(slytherin("-", "-"), both_swapped(policy, 3, 4))]
    return Case(f"CNP{tier}TierGress", manifest, policy, steps)


CASES += [gress_case("Admin", "gress-rules"), gress_case("Baseline", "default")]

def decide(resources_text: str, poke: str) -> dict[str, Any]:
    client, _, server, spec, _expected = poke.split()
    proto, _, port = spec.partition("/")
    state = ClusterState(load_text(resources_text, "conformance.yaml"))
    numbers = {"tcp": 6, "udp": 17, "sctp": 132}
    flow = build_flow(state, ref(client), ref(server), numbers[proto], int(port), None, None, None, False)
    return decision_json(Evaluator(state).decide(flow, explain=True))


def expected(case: Case, token: str) -> tuple[str, str | None]:
    """(verdict, "Kind:name" of decided_by or None)."""
    if token == "A":
        return "allow", f"ClusterNetworkPolicy:{case.policy}"
    if token == "D":
        return "deny", f"ClusterNetworkPolicy:{case.policy}"
    if token == "-":
        return "allow", None
    verdict, _, by = token.partition(":")
    return {"A": "allow", "D": "deny"}[verdict], by


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case: Case) -> None:
    docs: Docs = [d for d in yaml.safe_load_all((BASE / case.manifest).read_text()) if d]
    cluster = CLUSTER.read_text()
    failures = []
    pokes = 0
    for number, step in enumerate(case.steps, 1):
        if step.mutate is not None:
            docs = copy.deepcopy(docs)
            step.mutate(docs)
        text = cluster + "\n---\n" + yaml.safe_dump_all(docs)
        for poke in step.pokes:
            pokes += 1
            verdict, by = expected(case, poke.split()[-1])
            got = decide(text, poke)
            decided = got["decided_by"]
            got_by = f"{decided['kind']}:{decided['name']}" if decided else None
            if (got["verdict"], got_by) != (verdict, by):
                failures.append(f"subtest {number}: {poke}: got {got['verdict']} by {got_by}")
    assert not failures, "\n".join(failures)
    assert pokes >= 2


def test_eval_cli_names_the_cluster_network_policy() -> None:
    """The same verdicts through the command line, text and JSON."""
    manifest = str(BASE / "admin_tier" / "standard-ingress-tcp-rules.yaml")
    args = ["eval", "-f", str(CLUSTER), "-f", manifest, "--from", ref("slytherin-0"), "--to", ref("gryffindor-0"),
            "--proto", "tcp", "--port", "80"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "Verdict: DENY, decided by ClusterNetworkPolicy ingress-tcp in tier kube-admin, ingress rule 3" \
        in text.output
    out = CliRunner().invoke(cli, [*args, "-o", "json"])
    decided = json.loads(out.output)["decided_by"]
    assert decided == {"kind": "ClusterNetworkPolicy", "namespace": None, "name": "ingress-tcp", "tier": "kube-admin",
                       "direction": "ingress", "rule": 3, "action": "Deny"}
