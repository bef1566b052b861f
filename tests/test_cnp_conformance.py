"""The scenarios of the conformance suite of kubernetes-sigs/network-policy-api v0.2.0, as Calico
3.32 runs it (features ClusterNetworkPolicy and ClusterNetworkPolicyNamedPorts), decided by
`flowtui eval`.

Nothing here is taken from that suite: the policies are built below by small functions that say
what each upstream test's base manifest intends (the subject, the peers, the actions, ports and
priorities), and the expectations are written from the test's pokes, in our own words and names.
The suite's four house namespaces are `north`, `south`, `east` and `west` here (its gryffindor,
slytherin, hufflepuff and ravenclaw), each with pods `app-0` and `app-1`
(tests/fixtures/cnp_conformance/cluster.yaml).

Each test starts from its policies, then runs subtests in order; a subtest may change a policy
first (the changes accumulate, as they do upstream), then pokes servers from clients and expects
the connection to succeed or not. Here every poke also names what decides it, as `eval` reports
it (`decided_by`):

    "A" / "D"   allowed / denied by the test's ClusterNetworkPolicy named in its Case
    "-"         allowed with no policy deciding (every tier passed: the namespace profile allows)
    "A:Kind:name" / "D:Kind:name"   allowed / denied by that other policy

The experimental egress tests need node peers, which Calico 3.32 does not support, so Calico does
not run them and neither does this file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
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

CLUSTER = Path(__file__).parent / "fixtures" / "cnp_conformance" / "cluster.yaml"
KNP = "A:KubernetesNetworkPolicy:north-talks-with-south"

Docs = list[dict[str, Any]]
Mutation = Callable[[Docs], None]


def ref(short: str) -> str:
    """`north-0` → `north/app-0`."""
    team, _, index = short.rpartition("-")
    return f"{team}/app-{index}"


# --- Building the policies --------------------------------------------------------------------
# Peers and subjects come in the three forms the upstream manifests use: a namespace by its
# kubernetes.io/metadata.name, namespaces by a label, and pods by namespace and pod labels.

def named(team: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": team}}}


def labelled(team: str) -> dict[str, Any]:
    return {"namespaces": {"matchLabels": {"team": team}}}


def pods_of(team: str) -> dict[str, Any]:
    selector = {"matchLabels": {"team": team}}
    return {"pods": {"namespaceSelector": selector, "podSelector": selector}}


def rule(direction: str, action: str, about: str, peer: dict[str, Any], ports: Sequence[str] = ()) -> dict[str, Any]:
    """One rule; `ports` as `proto/number`; named for what it does, e.g. `deny-south-tcp-80`."""
    name = "-".join([action.lower(), about, *(p.replace("/", "-") for p in ports)])
    out: dict[str, Any] = {"name": name, "action": action, "to" if direction == "egress" else "from": [peer]}
    if ports:
        out["protocols"] = [{proto: {"destinationPort": {"number": int(number)}}}
                            for proto, _, number in (p.partition("/") for p in ports)]
    return out


def policy(name: str, tier: str, priority: int, subject: dict[str, Any], ingress: Sequence[dict[str, Any]] = (),
           egress: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": tier, "priority": priority, "subject": subject}
    if ingress:
        spec["ingress"] = list(ingress)
    if egress:
        spec["egress"] = list(egress)
    return {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def ladder(tier: str, direction: str, whole: str, blocked: str, blocked_ports: Sequence[str], opened: str,
           opened_ports: Sequence[str]) -> list[dict[str, Any]]:
    """The rule list the protocol tests share, in this order: `whole` accepted, then denied, then
    (Admin only) passed, at every port; `blocked` denied, then (Admin only) passed, at
    `blocked_ports`; `opened` accepted at `opened_ports` and denied at every other port. The
    shadowed rules are there for the subtests that reorder them."""
    def say(action: str, team: str, ports: Sequence[str] = (), about: str = "") -> dict[str, Any]:
        return rule(direction, action, about or team, named(team), ports)

    admin = tier == "Admin"
    rules = [say("Accept", whole), say("Deny", whole)] + ([say("Pass", whole)] if admin else [])
    rules += [say("Deny", blocked, blocked_ports)] + ([say("Pass", blocked, blocked_ports)] if admin else [])
    return rules + [say("Accept", opened, opened_ports), say("Deny", opened, about=f"{opened}-other-ports")]


# Each single-protocol test's policy: (subject, whole, blocked, blocked port, opened, opened port).
PROTOCOL_POLICIES = {
    ("ingress", "tcp"): ("north", "west", "south", "tcp/80", "east", "tcp/80"),
    ("ingress", "udp"): ("east", "west", "south", "udp/5353", "north", "udp/53"),
    ("ingress", "sctp"): ("west", "north", "south", "sctp/9003", "east", "sctp/9003"),
    ("egress", "tcp"): ("north", "west", "south", "tcp/80", "east", "tcp/8080"),
    ("egress", "udp"): ("east", "west", "south", "udp/5353", "north", "udp/53"),
    ("egress", "sctp"): ("west", "north", "south", "sctp/9003", "east", "sctp/9003"),
}
# Admin priorities as the upstream tests set them (each test has one Admin policy, so the value
# decides nothing); every Baseline test has one policy at priority 10.
ADMIN_PRIORITY = {("ingress", "tcp"): 3, ("ingress", "udp"): 4, ("ingress", "sctp"): 5,
                  ("egress", "tcp"): 6, ("egress", "udp"): 7, ("egress", "sctp"): 8}


def protocol_name(tier: str, direction: str, proto: str) -> str:
    return f"{tier.lower()}-{direction}-{proto}"


def protocol_policy(tier: str, direction: str, proto: str) -> Docs:
    subject, whole, blocked, blocked_port, opened, opened_port = PROTOCOL_POLICIES[direction, proto]
    priority = ADMIN_PRIORITY[direction, proto] if tier == "Admin" else 10
    rules = ladder(tier, direction, whole, blocked, [blocked_port], opened, [opened_port])
    return [policy(protocol_name(tier, direction, proto), tier, priority, named(subject), **{direction: rules})]


def gress_policy(tier: str) -> Docs:
    """CNP{Admin,Baseline}TierGress: one policy over north with egress and ingress ladders for
    TCP, UDP and SCTP at once."""
    blocked = ["tcp/80", "udp/53", "sctp/9003"]
    egress = ladder(tier, "egress", "west", "south", blocked, "east", ["tcp/8080", "udp/5353", "sctp/9003"])
    ingress = ladder(tier, "ingress", "west", "south", blocked, "east", ["tcp/80", "udp/5353", "sctp/9003"])
    return [policy(f"{tier.lower()}-gress", tier, 15 if tier == "Admin" else 10, named("north"), ingress, egress)]


def inline_cidr_policy(tier: str) -> Docs:
    """CNP{Admin,Baseline}TierEgressInlineCIDRPeers: north may reach south's pods and no other
    address (every IPv4 and IPv6 network denied); the Admin test selects north by pod labels,
    the Baseline one by namespace name."""
    subject = pods_of("north") if tier == "Admin" else named("north")
    egress = [rule("egress", "Accept", "south", pods_of("south")),
              rule("egress", "Deny", "everywhere", {"networks": ["0.0.0.0/0", "::/0"]})]
    return [policy(f"{tier.lower()}-egress-networks", tier, 85 if tier == "Admin" else 10, subject, egress=egress)]


def both_ways(action: str, peer: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {"ingress": [rule("ingress", action, "south", peer)], "egress": [rule("egress", action, "south", peer)]}


def priority_policies() -> Docs:
    """CNPAdminTierPriorityField: north's traffic with south denied at Admin priority 50, passed
    at 60 (later moved to 40, ahead of the deny), accepted in the Baseline tier."""
    return [policy("deny-south", "Admin", 50, pods_of("north"), **both_ways("Deny", pods_of("south"))),
            policy("pass-south", "Admin", 60, pods_of("north"), **both_ways("Pass", pods_of("south"))),
            policy("accept-south", "Baseline", 10, pods_of("north"), **both_ways("Accept", pods_of("south")))]


def integration_policies() -> Docs:
    """CNPAdminTierIntegration: the three layers over north's traffic with south — an Admin deny
    (later turned into Pass), a namespaced NetworkPolicy allowing it, a Baseline deny."""
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "north-talks-with-south", "namespace": "north"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "south"}}}]}],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "south"}}}]}]}}
    return [policy("admin-south", "Admin", 10, labelled("north"), **both_ways("Deny", labelled("south"))), knp,
            policy("baseline-south", "Baseline", 10, labelled("north"), **both_ways("Deny", labelled("south")))]


# --- Changes the subtests make ----------------------------------------------------------------

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
        rule = {"name": "accept-two-pod-addresses", "action": "Accept", "to": [{"networks": nets}]}
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
    docs: Docs  # the policies it starts from
    policy: str  # the ClusterNetworkPolicy that "A"/"D" name
    steps: list[Step] = field(default_factory=list)


def single_protocol(tier: str, direction: str, proto: str, pokes: list[tuple[str, str, int, str, int]]) -> Case:
    """The shape every single-protocol test shares. `pokes` lists per subtest (server, client A,
    port A, client B, port B); the deciders follow from the ladder (see `ladder`), which the
    subtests reorder: first whole/accept ↔ whole/deny, then (Admin) whole/accept ↔ whole/pass
    and blocked/deny ↔ blocked/pass."""
    name = f"CNP{tier}Tier{direction.capitalize()}{proto.upper()}"
    policy = protocol_name(tier, direction, proto)
    outcomes = [("A", "A"), ("A", "D"), ("D", "D"), ("D", "-"), ("-", "-"), ("-", "-")]
    mutations: list[Mutation | None] = [None, None, swap(policy, direction, 0, 1), None]
    if tier == "Admin":
        mutations += [swap(policy, direction, 0, 2), swap(policy, direction, 3, 4)]
    steps = []
    for (server, client_a, port_a, client_b, port_b), (a, b), mutate in zip(pokes, outcomes, mutations, strict=False):
        steps.append(Step([f"{client_a} > {server} {proto}/{port_a} {a}",
                           f"{client_b} > {server} {proto}/{port_b} {b}"], mutate))
    return Case(name, protocol_policy(tier, direction, proto), policy, steps)


CASES = [
    single_protocol("Admin", "ingress", "tcp", [
        ("north-0", "west-0", 80, "west-1", 8080),
        ("north-1", "east-0", 80, "east-1", 8080),
        ("north-1", "west-0", 80, "west-1", 8080),
        ("north-0", "south-0", 80, "south-1", 8080),
        ("north-0", "west-0", 80, "west-1", 8080),
        ("north-0", "south-0", 80, "south-1", 8080)]),
    single_protocol("Admin", "ingress", "udp", [
        ("east-0", "west-0", 53, "west-1", 5353),
        ("east-1", "north-0", 53, "north-1", 5353),
        ("east-1", "west-0", 53, "west-1", 5353),
        ("east-0", "south-0", 5353, "south-1", 53),
        ("east-1", "west-0", 5353, "west-1", 53),
        ("east-0", "south-0", 5353, "south-1", 53)]),
    single_protocol("Admin", "ingress", "sctp", [
        ("west-0", "north-0", 9003, "north-1", 9005),
        ("west-1", "east-0", 9003, "east-1", 9005),
        ("west-1", "north-0", 9003, "north-1", 9005),
        ("west-0", "south-0", 9003, "south-1", 9005),
        ("west-1", "north-0", 9003, "north-1", 9005),
        ("west-0", "south-0", 9003, "south-1", 9005)]),
    single_protocol("Admin", "egress", "tcp", [
        ("west-0", "north-0", 80, "north-1", 8080),
        ("east-1", "north-0", 8080, "north-1", 80),
        ("west-1", "north-0", 80, "north-1", 8080),
        ("south-0", "north-0", 80, "north-1", 8080),
        ("west-0", "north-0", 80, "north-1", 8080),
        ("south-0", "north-0", 80, "north-1", 8080)]),
    single_protocol("Admin", "egress", "udp", [
        ("west-0", "east-0", 53, "east-1", 5353),
        ("north-1", "east-0", 53, "east-1", 5353),
        ("west-1", "east-0", 53, "east-1", 5353),
        ("south-0", "east-0", 5353, "east-1", 53),
        ("west-1", "east-0", 5353, "east-1", 53),
        ("south-0", "east-0", 5353, "east-1", 53)]),
    single_protocol("Admin", "egress", "sctp", [
        ("north-0", "west-0", 9003, "west-1", 9005),
        ("east-1", "west-0", 9003, "west-1", 9005),
        ("north-1", "west-0", 9003, "west-1", 9005),
        ("south-0", "west-0", 9003, "west-1", 9005),
        ("north-1", "west-0", 9003, "west-1", 9005),
        ("south-0", "west-0", 9003, "west-1", 9005)]),
    single_protocol("Baseline", "ingress", "tcp", [
        ("north-0", "west-0", 80, "west-1", 8080),
        ("north-1", "east-0", 80, "east-1", 8080),
        ("north-1", "west-0", 80, "west-1", 8080),
        ("north-0", "south-0", 80, "south-1", 8080)]),
    single_protocol("Baseline", "ingress", "udp", [
        ("east-0", "west-0", 53, "west-1", 5353),
        ("east-1", "north-0", 53, "north-1", 5353),
        ("east-1", "west-0", 53, "west-1", 5353),
        ("east-0", "south-0", 5353, "south-1", 53)]),
    single_protocol("Baseline", "ingress", "sctp", [
        ("west-0", "north-0", 9003, "north-1", 9005),
        ("west-1", "east-0", 9003, "east-1", 9005),
        ("west-1", "north-0", 9003, "north-1", 9005),
        ("west-0", "south-0", 9003, "south-1", 9005)]),
    single_protocol("Baseline", "egress", "tcp", [
        ("west-0", "north-0", 80, "north-1", 8080),
        ("east-1", "north-0", 8080, "north-1", 80),
        ("west-1", "north-0", 80, "north-1", 8080),
        ("south-0", "north-0", 80, "north-1", 8080)]),
    single_protocol("Baseline", "egress", "udp", [
        ("west-0", "east-0", 53, "east-1", 5353),
        ("north-1", "east-0", 53, "east-1", 5353),
        ("west-1", "east-0", 53, "east-1", 5353),
        ("south-0", "east-0", 5353, "east-1", 53)]),
    single_protocol("Baseline", "egress", "sctp", [
        ("north-0", "west-0", 9003, "west-1", 9005),
        ("east-1", "west-0", 9003, "west-1", 9005),
        ("north-1", "west-0", 9003, "west-1", 9005),
        ("south-0", "west-0", 9003, "west-1", 9005)]),
    # The named-port tests reuse a protocol test's policy and name the opened port instead.
    Case("CNPAdminTierIngressNamedPort", protocol_policy("Admin", "ingress", "udp"), "admin-ingress-udp", [
        Step(["north-0 > east-1 udp/53 A", "north-1 > east-1 udp/5353 D"],
             named_port("admin-ingress-udp", "ingress", 5, "dns"))]),
    Case("CNPBaselineTierIngressNamedPort", protocol_policy("Baseline", "ingress", "tcp"), "baseline-ingress-tcp", [
        Step(["east-0 > north-1 tcp/80 A", "east-1 > north-1 tcp/8080 D"],
             named_port("baseline-ingress-tcp", "ingress", 3, "web"))]),
    Case("CNPAdminTierPriorityField", priority_policies(), "deny-south", [
        Step(["south-0 > north-0 tcp/80 D", "south-1 > north-0 tcp/8080 D"]),
        Step(["north-0 > south-0 tcp/80 D", "north-1 > south-0 tcp/8080 D"]),
        Step(["south-0 > north-0 tcp/80 A:ClusterNetworkPolicy:accept-south",
              "south-1 > north-0 tcp/8080 A:ClusterNetworkPolicy:accept-south",
              "north-0 > south-0 tcp/80 A:ClusterNetworkPolicy:accept-south",
              "north-1 > south-0 tcp/8080 A:ClusterNetworkPolicy:accept-south"],
             set_priority("pass-south", 40))]),
    Case("CNPAdminTierIntegration", integration_policies(), "admin-south", [
        Step(["south-0 > north-0 tcp/80 D", "south-1 > north-0 tcp/8080 D"]),
        Step(["north-0 > south-0 tcp/80 D", "north-1 > south-0 tcp/8080 D"]),
        Step([f"south-0 > north-0 tcp/80 {KNP}", f"south-1 > north-0 tcp/8080 {KNP}"],
             set_action("admin-south", "ingress", 0, "Pass")),
        Step([f"north-0 > south-0 tcp/80 {KNP}", f"north-1 > south-0 tcp/8080 {KNP}"],
             set_action("admin-south", "egress", 0, "Pass")),
        Step(["south-0 > north-0 tcp/80 D:ClusterNetworkPolicy:baseline-south",
              "south-1 > north-0 tcp/8080 D:ClusterNetworkPolicy:baseline-south"], delete_knp),
        Step(["north-0 > south-0 tcp/80 D:ClusterNetworkPolicy:baseline-south",
              "north-1 > south-0 tcp/8080 D:ClusterNetworkPolicy:baseline-south"])]),
]

for _tier in ("Admin", "Baseline"):
    _all = ("tcp/80", "udp/53", "sctp/9003")
    _name = f"{_tier.lower()}-egress-networks"
    CASES.append(Case(f"CNP{_tier}TierEgressInlineCIDRPeers", inline_cidr_policy(_tier), _name, [
        Step([f"north-1 > {s} {p} {e}" for s, e in (("west-0", "D"), ("east-0", "D"), ("south-0", "A"))
              for p in _all]),
        Step([f"north-1 > {s} {p} {e}" for s, e in (("west-0", "A"), ("east-0", "A"), ("west-1", "D"),
                                                   ("east-1", "D")) for p in _all],
             allow_pod_ips(_name, "west-0", "east-0")),
    ]))


def both_swapped(name: str, i: int, j: int) -> Mutation:
    def mutate(docs: Docs) -> None:
        swap(name, "egress", i, j)(docs)
        swap(name, "ingress", i, j)(docs)
    return mutate


def gress_pokes(egress_server: str, egress: list[tuple[str, str, str]], ingress_server: str,
                ingress: list[tuple[str, str, str]]) -> list[str]:
    """One subtest of the combined tests: north's pods as clients of `egress_server`, then
    other pods as clients of north's `ingress_server`; (client, proto/port, expect)."""
    return [f"{c} > {egress_server} {p} {e}" for c, p, e in egress] + \
        [f"{c} > {ingress_server} {p} {e}" for c, p, e in ingress]


def gress_case(tier: str) -> Case:
    """CNP{Admin,Baseline}TierGress (see `gress_policy`)."""
    policy = f"{tier.lower()}-gress"
    allow_at_ports = gress_pokes(
        "east-1", [("north-0", "tcp/8080", "A"), ("north-1", "tcp/80", "D"),
                   ("north-0", "udp/5353", "A"), ("north-1", "udp/53", "D"),
                   ("north-0", "sctp/9003", "A"), ("north-1", "sctp/9005", "D")],
        "north-1", [("east-0", "tcp/80", "A"), ("east-1", "tcp/8080", "D"),
                    ("east-0", "udp/5353", "A"), ("east-1", "udp/53", "D"),
                    ("east-0", "sctp/9003", "A"), ("east-1", "sctp/9005", "D")])

    def south(first: str, second: str) -> list[str]:
        return gress_pokes(
            "south-0", [("north-0", "tcp/80", first), ("north-1", "tcp/8080", second),
                        ("north-0", "udp/53", first), ("north-1", "udp/5353", second),
                        ("north-0", "sctp/9003", first), ("north-1", "sctp/9005", second)],
            "north-0", [("south-0", "tcp/80", first), ("south-1", "tcp/8080", second),
                        ("south-0", "udp/53", first), ("south-1", "udp/5353", second),
                        ("south-0", "sctp/9003", first), ("south-1", "sctp/9005", second)])

    def west(server: str, inner: str, expect: str, udp: str = "udp/53") -> list[str]:
        udp_client = "north-1" if udp == "udp/53" else "north-0"
        return gress_pokes(
            server, [("north-0", "tcp/80", expect), (udp_client, udp, expect), ("north-0", "sctp/9003", expect)],
            inner, [("west-0", "tcp/80", expect), ("west-1", "udp/53", expect), ("west-1", "sctp/9003", expect)])

    steps = [Step(west("west-0", "north-0", "A")),
             Step(allow_at_ports),
             Step(west("west-1", "north-1", "D"), both_swapped(policy, 0, 1)),
             Step(south("D", "-"))]
    if tier == "Admin":
        steps += [Step(west("west-0", "north-0", "-", udp="udp/5353"), both_swapped(policy, 0, 2)),
                  Step(south("-", "-"), both_swapped(policy, 3, 4))]
    return Case(f"CNP{tier}TierGress", gress_policy(tier), policy, steps)


CASES += [gress_case("Admin"), gress_case("Baseline")]


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
    docs = copy.deepcopy(case.docs)
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


def test_eval_cli_names_the_cluster_network_policy(tmp_path: Path) -> None:
    """The same verdicts through the command line, text and JSON."""
    manifest = tmp_path / "admin-ingress-tcp.yaml"
    manifest.write_text(yaml.safe_dump_all(protocol_policy("Admin", "ingress", "tcp"), sort_keys=False))
    args = ["eval", "-f", str(CLUSTER), "-f", str(manifest), "--from", ref("south-0"), "--to", ref("north-0"),
            "--proto", "tcp", "--port", "80"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "Verdict: DENY, decided by ClusterNetworkPolicy admin-ingress-tcp in tier kube-admin, ingress rule 3" \
        in text.output
    out = CliRunner().invoke(cli, [*args, "-o", "json"])
    decided = json.loads(out.output)["decided_by"]
    assert decided == {"kind": "ClusterNetworkPolicy", "namespace": None, "name": "admin-ingress-tcp",
                       "tier": "kube-admin", "direction": "ingress", "rule": 3, "action": "Deny"}
