"""Synthetic clusters and flows, deterministic by seed: for property tests, benchmarks and the
evaluator-versus-kernel differential test.

Everything produced is valid by construction (it would pass the loader's validation) and uses the
lab's address plan: pods in 10.244.<node>.0/24 and fd00:10:244:<node>::/64, nodes on 172.31.0.0/24,
outside hosts in documentation ranges.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, replace

from enforcer.evaluate.flow import Flow
from enforcer.model import (
    Action,
    Direction,
    EntityRule,
    ExternalHost,
    FelixConfiguration,
    HostEndpoint,
    ICMPMatch,
    IPAddress,
    IPNetwork,
    NamedPort,
    NamedPortDef,
    Namespace,
    NetworkSet,
    Node,
    Pod,
    Policy,
    PolicyKind,
    PortRange,
    ResourceSet,
    Rule,
    Tier,
)
from enforcer.selector import Selector, parse_selector

APPS = ("web", "api", "db", "cache", "auth")
TIERS = ("frontend", "backend", "data")
ENVS = ("prod", "dev")
PORTS = (80, 443, 5432, 6379, 8080, 9000)
EXTERNAL_NETS = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")


@dataclass(frozen=True)
class SynthSpec:
    nodes: int = 2
    namespaces: int = 2
    pods: int = 6
    externals: int = 2
    policies: int = 8
    rules_per_policy: int = 3
    host_endpoints: bool = True
    tiers: bool = True
    staged: bool = True
    ipv6: bool = True
    disabled: float = 0.0  # share of policies switched off by the live toggle
    # ClusterNetworkPolicies (kube-admin / kube-baseline) added, from a stream of their own: the
    # rest of a seed's cluster stays as it is without them.
    cluster_network_policies: int = 0
    # Share of nodes whose host endpoint is all-interfaces (`interfaceName: "*"`, covering pod and
    # tunnel interfaces too) rather than eth0's.
    wildcard_heps: float = 0.0
    endpoint_to_host: bool = False  # DefaultEndpointToHostAction by seed: Accept, Drop, Return in turn
    # A preDNAT and an untracked policy on every host endpoint (the preDNAT one denies some UDP,
    # from pods too on all-interfaces HEPs; the untracked one allows some TCP in, with random egress
    # rules that may not allow the replies): the paths Calico's FV tests check.
    host_extras: bool = False


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def _sel(text: str) -> Selector:
    return parse_selector(text)


class _Gen:
    def __init__(self, seed: int, spec: SynthSpec) -> None:
        self.r = random.Random(seed)
        self.spec = spec

    # ---- cluster -----------------------------------------------------------------------

    def cluster(self) -> tuple[list[Node], list[Namespace], list[Pod], list[ExternalHost]]:
        per_node = -(-self.spec.pods // self.spec.nodes)
        small = per_node <= 240  # the lab's /24 per node; large synthetic clusters get a /16 each
        self.pod_cidrs: dict[int, tuple[IPNetwork, IPNetwork]] = {}
        nodes = []
        for i in range(1, self.spec.nodes + 1):
            v4 = _net(f"10.244.{i}.0/24") if small else _net(f"10.{100 + i}.0.0/16")
            v6 = _net(f"fd00:10:244:{i:x}::/64")
            self.pod_cidrs[i] = (v4, v6)
            addrs: tuple[IPAddress, ...] = (_ip(f"172.31.0.{10 + i}"),)
            cidrs: tuple[IPNetwork, ...] = (v4,)
            if self.spec.ipv6:
                addrs += (_ip(f"fd00:172:31::{10 + i:x}"),)
                cidrs += (v6,)
            node_labels = (("role", self.r.choice(("worker", "edge"))),)
            nodes.append(Node(f"node-{i}", node_labels, addrs, cidrs))
        namespaces = [
            Namespace(f"ns{i}", (("env", ENVS[i % len(ENVS)]),)) for i in range(self.spec.namespaces)
        ]
        pods = []
        for i in range(self.spec.pods):
            node_idx = i % self.spec.nodes + 1
            ns = namespaces[i % len(namespaces)].name
            host = 10 + i // self.spec.nodes
            v4, v6 = self.pod_cidrs[node_idx]
            ips: tuple[IPAddress, ...] = (v4.network_address + host,)
            if self.spec.ipv6:
                ips += (v6.network_address + host,)
            labels = {"app": self.r.choice(APPS), "tier": self.r.choice(TIERS)}
            if self.r.random() < 0.5:
                labels["version"] = self.r.choice(("v1", "v2"))
            ports = (NamedPortDef("http", 6, self.r.choice((80, 8080))),)
            pods.append(Pod(f"pod{i}", ns, tuple(sorted(labels.items())), f"node-{node_idx}", "default", ips, ports))
        externals = []
        for i in range(self.spec.externals):
            base = EXTERNAL_NETS[i % len(EXTERNAL_NETS)].split("/")[0].rsplit(".", 1)[0]
            addrs = (_ip(f"{base}.{20 + i}"),)
            if self.spec.ipv6:
                addrs += (_ip(f"2001:db8:{i + 1:x}::20"),)
            externals.append(ExternalHost(f"ext{i}", addrs))
        return nodes, namespaces, pods, externals

    # ---- policy ------------------------------------------------------------------------

    def selector(self) -> Selector:
        r = self.r
        return _sel(r.choice((
            f"app == '{r.choice(APPS)}'",
            f"tier in {{'{r.choice(TIERS)}', '{r.choice(TIERS)}'}}",
            "has(version)",
            f"app != '{r.choice(APPS)}'",
            f"tier == '{r.choice(TIERS)}' && has(app)",
            "all()",
        )))

    def entity(self, side: str, namespaced: bool, externals: list[ExternalHost], family: int) -> EntityRule:
        r = self.r
        kw: dict[str, object] = {}
        pick = r.random()
        if pick < 0.35:
            kw["selector"] = self.selector()
        elif pick < 0.5 and externals:
            ext = r.choice(externals)
            # One family per rule: Calico rejects a rule mixing IPv4 and IPv6 nets.
            addr = next((a for a in ext.addresses if a.version == family), ext.addresses[0])
            kw["nets"] = (ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 64}", strict=False),)
        elif pick < 0.6:
            kw["not_selector"] = self.selector()
        elif pick < 0.7:
            kw["namespace_selector"] = _sel(f"env == '{r.choice(ENVS)}'")
        elif pick < 0.75:
            kw["selector"] = _sel("netset == 'blocked'")
        if side == "destination" and r.random() < 0.6:
            ports: list[PortRange | NamedPort] = [PortRange(p, p) for p in r.sample(PORTS, r.randint(1, 2))]
            if r.random() < 0.2:
                ports.append(PortRange(9000, 9100))
            if r.random() < 0.2:
                ports = [NamedPort("http")]
            kw["ports"] = tuple(ports)
        return EntityRule(**kw)  # type: ignore[arg-type]

    def rule(self, namespaced: bool, externals: list[ExternalHost], host: bool) -> Rule:
        r = self.r
        actions: tuple[Action, ...] = ("Allow", "Deny", "Pass", "Log")
        action = r.choices(actions, (5, 3, 1, 1))[0]
        protocol = r.choice((6, 6, 17, 1, None))
        family = r.choice((4, 4, 6))  # of any nets the rule names, on both sides
        dst = self.entity("destination", namespaced, externals, family)
        if protocol not in (6, 17) and (dst.ports or dst.not_ports):
            protocol = 6
        icmp = None
        if protocol == 1 and r.random() < 0.4:
            icmp = ICMPMatch(8)
        return Rule(action=action, protocol=protocol, icmp=icmp,
                    source=self.entity("source", namespaced, externals, family), destination=dst)

    def policy(self, i: int, namespaces: list[Namespace], externals: list[ExternalHost], tiers: list[Tier]) -> Policy:
        r = self.r
        spec = self.spec
        host = spec.host_endpoints and r.random() < 0.25
        kind: PolicyKind = "GlobalNetworkPolicy" if host or r.random() < 0.5 else "NetworkPolicy"
        if spec.staged and r.random() < 0.1:
            kind = "StagedGlobalNetworkPolicy" if kind == "GlobalNetworkPolicy" else "StagedNetworkPolicy"
        namespaced = kind in ("NetworkPolicy", "StagedNetworkPolicy")
        namespace = r.choice(namespaces).name if namespaced else None
        selector = _sel(f"role == '{r.choice(('worker', 'edge'))}'") if host else self.selector()
        directions: tuple[Direction, ...] = r.choice((("ingress",), ("egress",), ("ingress", "egress")))
        n = spec.rules_per_policy
        ingress = tuple(self.rule(namespaced, externals, host) for _ in range(r.randint(0, n))) \
            if "ingress" in directions else ()
        egress = tuple(self.rule(namespaced, externals, host) for _ in range(r.randint(0, n))) \
            if "egress" in directions else ()
        mode = r.choice(("normal", "forward", "untracked", "prednat")) if host and kind == "GlobalNetworkPolicy" \
            else "normal"
        if mode == "prednat":
            directions, egress = ("ingress",), ()
            ingress = ingress or (self.rule(False, externals, True),)
        tier = r.choice(tiers).name if tiers and r.random() < 0.5 else "default"
        order = r.choice((None, float(r.randint(1, 50) * 10)))
        return Policy(kind=kind, name=f"p{i}", namespace=namespace, tier=tier, order=order,
                      selector=selector, types=directions, ingress=ingress, egress=egress,
                      staged_action="Set" if kind.startswith("Staged") else None,
                      apply_on_forward=mode != "normal", do_not_track=mode == "untracked", pre_dnat=mode == "prednat")


    def host_policy(self, i: int, mode: str, externals: list[ExternalHost], tiers: list[Tier]) -> Policy:
        """A GlobalNetworkPolicy on every host endpoint, preDNAT or untracked."""
        r = self.r
        n = self.spec.rules_per_policy
        ingress = tuple(self.rule(False, externals, True) for _ in range(r.randint(0, n)))
        egress: tuple[Rule, ...] = ()
        types: tuple[Direction, ...] = ("ingress",)
        if mode == "prednat":
            port = r.choice(PORTS)
            ingress = (Rule(action="Deny", protocol=17, destination=EntityRule(ports=(PortRange(port, port),))),
                       *ingress)
        if mode == "untracked":
            port = r.choice(PORTS)
            ingress = (Rule(action="Allow", protocol=6, destination=EntityRule(ports=(PortRange(port, port),))),
                       *ingress)
            egress = tuple(self.rule(False, externals, True) for _ in range(r.randint(0, n)))
            types = ("ingress", "egress")
        tier = r.choice(tiers).name if tiers and r.random() < 0.5 else "default"
        return Policy(kind="GlobalNetworkPolicy", name=f"p{i}", namespace=None, tier=tier,
                      order=float(r.randint(1, 50) * 10), selector=_sel("has(role)"), types=types,
                      ingress=ingress, egress=egress, apply_on_forward=True,
                      do_not_track=mode == "untracked", pre_dnat=mode == "prednat")


ORCHESTRATOR = "projectcalico.org/orchestrator == 'k8s'"


class _CNPGen:
    """ClusterNetworkPolicies as Calico's converter shapes them (enforcer/loader/cnp.py): pod and
    namespace peers, egress networks (both families in one rule, as users write them), numeric
    ports per protocol or a named port without a protocol, Accept/Deny/Pass."""

    def __init__(self, seed: int, externals: list[ExternalHost]) -> None:
        self.r = random.Random(seed * 104729 + 3)
        self.externals = externals

    def namespaces(self) -> Selector:
        return _sel(self.r.choice(("all()", f"env == '{self.r.choice(ENVS)}'")))

    def pods(self) -> Selector:
        r = self.r
        label = r.choice((f" && app == '{r.choice(APPS)}'", f" && tier == '{r.choice(TIERS)}'", ""))
        return _sel(ORCHESTRATOR + label)

    def peer(self, direction: Direction) -> EntityRule:
        r = self.r
        pick = r.random()
        if pick < 0.35:
            return EntityRule(namespace_selector=self.namespaces())
        if pick < 0.75 or direction == "ingress" or not self.externals:
            return EntityRule(selector=self.pods(), namespace_selector=self.namespaces())
        ext = r.choice(self.externals)
        nets = tuple(ipaddress.ip_network(f"{a}/{24 if a.version == 4 else 64}", strict=False) for a in ext.addresses)
        if r.random() < 0.3:
            nets += (_net("10.244.0.0/16"),)  # networks match pods too
        return EntityRule(nets=nets)

    def rules(self, direction: Direction) -> tuple[Rule, ...]:
        r = self.r
        out: list[Rule] = []
        for _ in range(r.randint(0, 3)):
            action: Action = r.choice(("Allow", "Deny", "Pass"))
            peers = [self.peer(direction) for _ in range(r.randint(1, 2))]
            if direction == "ingress":
                peers = [p for p in peers if not p.nets] or [EntityRule(namespace_selector=_sel("all()"))]
            groups: list[tuple[int | None, tuple[PortRange | NamedPort, ...]]] = [(None, ())]
            pick = r.random()
            if pick < 0.4:
                groups = [(r.choice((6, 17)), tuple(PortRange(p, p) for p in sorted(r.sample(PORTS, 2))))]
            elif pick < 0.55:
                groups = [(None, (NamedPort("http"),))]
            for protocol, ports in groups:
                for peer in peers:
                    if direction == "ingress":
                        out.append(Rule(action, protocol=protocol, source=peer, destination=EntityRule(ports=ports)))
                    else:
                        out.append(Rule(action, protocol=protocol, destination=replace(peer, ports=ports)))
        return tuple(out)

    def policy(self, i: int) -> Policy:
        r = self.r
        if r.random() < 0.5:
            selector, namespace_selector = _sel(ORCHESTRATOR), self.namespaces()
        else:
            selector, namespace_selector = self.pods(), self.namespaces()
        ingress, egress = self.rules("ingress"), self.rules("egress")
        directions: tuple[tuple[Direction, tuple[Rule, ...]], ...] = (("ingress", ingress), ("egress", egress))
        types = tuple(d for d, rs in directions if rs) or ("ingress", "egress")
        return Policy(kind="ClusterNetworkPolicy", name=f"cnp{i}", namespace=None,
                      tier=r.choice(("kube-admin", "kube-baseline")), order=float(r.choice((0, 5, 10, 1000))),
                      selector=selector, namespace_selector=namespace_selector, types=types,
                      ingress=ingress, egress=egress)


def synth_resources(seed: int, spec: SynthSpec = SynthSpec()) -> ResourceSet:
    """A random, valid cluster with policies: nodes, namespaces, pods, outside hosts, HEPs, sets."""
    g = _Gen(seed, spec)
    nodes, namespaces, pods, externals = g.cluster()
    tiers = []
    if spec.tiers:
        tiers = [Tier("security", 100.0, g.r.choice(("Deny", "Pass"))), Tier("platform", 200.0, "Pass")]
    heps = []
    # Their own stream: the rest of the cluster stays as without them.
    extra = random.Random(seed * 7919 + 2)
    if spec.host_endpoints:
        for node in nodes:
            profiles = ("projectcalico-default-allow",) if g.r.random() < 0.7 else ()
            if extra.random() < spec.wildcard_heps:
                heps.append(HostEndpoint(f"{node.name}-all", node.name, node.labels, "*", node.addresses, profiles))
            else:
                heps.append(HostEndpoint(f"{node.name}-eth0", node.name, node.labels, "eth0", node.addresses, profiles))
    felix = FelixConfiguration()
    if spec.endpoint_to_host:
        felix = FelixConfiguration(default_endpoint_to_host_action=("Accept", "Drop", "Return")[seed % 3])
    blocked = [ext for ext in externals if g.r.random() < 0.5][:1]
    netsets = [NetworkSet("blocked", None, (("netset", "blocked"),),
                          tuple(_net(str(a)) for e in blocked for a in e.addresses))] if blocked else []
    policies = [g.policy(i, namespaces, externals, tiers) for i in range(spec.policies)]
    if spec.cluster_network_policies:
        cnps = _CNPGen(seed, externals)
        policies += [cnps.policy(i) for i in range(spec.cluster_network_policies)]
    if spec.host_extras and spec.host_endpoints:
        eg = _Gen(seed * 7919 + 3, spec)
        policies += [eg.host_policy(len(policies), "prednat", externals, tiers),
                     eg.host_policy(len(policies) + 1, "untracked", externals, tiers)]
    if spec.disabled:
        off = random.Random(seed * 7919 + 1)  # its own stream: the rest of the cluster stays as without it
        policies = [replace(p, disabled=True) if off.random() < spec.disabled else p for p in policies]
    return ResourceSet(policies=tuple(policies), tiers=tuple(tiers), namespaces=tuple(namespaces),
                       pods=tuple(pods), nodes=tuple(nodes), host_endpoints=tuple(heps),
                       network_sets=tuple(netsets), external_hosts=tuple(externals), felix=felix)


def synth_flows(res: ResourceSet, seed: int, count: int, *, ipv6_share: float = 0.2) -> list[Flow]:
    """Random flows between the cluster's pods, nodes and outside hosts."""
    r = random.Random(seed)
    ends: list[tuple[IPAddress, ...]] = [p.ips for p in res.pods]
    ends += [n.addresses for n in res.nodes]
    ends += [e.addresses for e in res.external_hosts]
    flows: list[Flow] = []
    while len(flows) < count:
        a, b = r.choice(ends), r.choice(ends)
        if a is b:
            continue
        version = 6 if r.random() < ipv6_share else 4
        src = next((ip for ip in a if ip.version == version), None)
        dst = next((ip for ip in b if ip.version == version), None)
        if src is None or dst is None:
            continue
        proto = r.choice((6, 6, 17, 1))
        if proto == 1:
            if version == 6:
                proto = 58
            flows.append(Flow(src, dst, proto, icmp_type=8 if version == 4 else 128, icmp_code=0))
        else:
            flows.append(Flow(src, dst, proto, r.randint(32768, 60999), r.choice(PORTS + (22, 9050))))
    return flows
