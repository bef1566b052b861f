"""Decide a flow as Calico would (§2.7–2.10), with the trace that explains it.

For every stage the packet crosses (path.py): failsafes first on host endpoints, then the tiers in
order — within a tier the selecting policies by order, the first matching rule deciding, `Log`
non-terminal, `Pass` skipping to the next tier, an end-of-tier deny when nothing matched (unless
the tier's default is Pass) — then the profiles. The *pending* verdict is the same walk with
staged policies taking part as if enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal

from enforcer.evaluate.flow import Flow, Peer, peer_for_address
from enforcer.evaluate.match import CompiledRule, compile_rule
from enforcer.evaluate.path import Stage, stages_for
from enforcer.model import (
    FAILSAFE_PROTOCOL_NAMES,
    WIREGUARD_PORTS,
    Direction,
    FailsafePort,
    IPAddress,
    Policy,
    Profile,
    Rule,
)
from enforcer.resolve.endpoints import DEFAULT_ALLOW_PROFILE
from enforcer.resolve.state import ClusterState, OrderedTier

Outcome = Literal["allow", "deny", "continue"]
# ICMPv6 neighbour discovery and MLD between a node and its neighbours pass before any policy, so
# that IPv6 keeps working under a deny-all host policy (Calico does the same for workloads).
ICMPV6_INFRA_TYPES = (130, 131, 132, 133, 135, 136)
# Protocols whose reply, without a conntrack entry for the request, is invalid to conntrack: a
# SYN-ACK or RST, an SCTP INIT-ACK, an ICMP echo reply (nf_conntrack_proto_{tcp,sctp,icmp}.c).
CONNTRACK_INVALID_REPLIES = frozenset((1, 6, 58, 132))
MEMO_LIMIT = 1_000_000  # decisions remembered per evaluator (flows with equal keys decide alike)
PROFILE_TIER = "__PROFILE__"


@dataclass(frozen=True)
class Hit:
    """A rule that matched (or an end-of-tier default, rule -1), attributed to its policy."""

    kind: str
    namespace: str | None
    name: str
    tier: str
    direction: Direction
    rule: int
    action: str
    builtin: bool = False  # a built-in profile's default: not a decision by user policy

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "tier": self.tier,
            "direction": self.direction,
            "rule": self.rule,
            "action": self.action,
        }

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        rule = "end of tier (no rule matched)" if self.rule < 0 else f"rule {self.rule}"
        tier = "" if self.tier == PROFILE_TIER else f" in tier {self.tier}"
        return f"{self.kind} {where}{tier}, {self.direction} {rule}: {self.action}"


@dataclass(frozen=True)
class StageResult:
    stage: Stage
    outcome: Outcome
    hit: Hit | None
    reason: str
    failsafe: bool = False
    skipped: bool = False  # host-endpoint policy skipped: already accepted by untracked/preDNAT
    logged: tuple[Hit, ...] = ()
    steps: tuple[str, ...] = ()
    reply: bool = False  # a stage of the reply's path (checked when untracked policy is involved)


@dataclass(frozen=True)
class Verdict:
    verdict: Literal["allow", "deny"]
    decided_by: Hit | None
    failsafe: bool
    logged: tuple[Hit, ...]
    stages: tuple[StageResult, ...]

    @property
    def first_packet(self) -> Literal["allow", "deny"]:
        """Whether the connection's first packet gets through (a denied reply does not stop it)."""
        if self.verdict == "deny" and self.stages and self.stages[-1].reply:
            return "allow"
        return self.verdict


@dataclass(frozen=True)
class Decision:
    flow: Flow
    src: Peer
    dst: Peer
    enforced: Verdict
    pending: Verdict

    @property
    def verdict(self) -> str:
        return self.enforced.verdict


def _failsafe_hit(ports: tuple[FailsafePort, ...], flow: Flow, port: int | None, peer_is_src: bool) -> str | None:
    if port is None or flow.protocol not in FAILSAFE_PROTOCOL_NAMES:
        return None
    peer = flow.src if peer_is_src else flow.dst
    for fs in ports:
        if fs.protocol == flow.protocol and fs.port == port:
            if fs.net is None or (fs.net.version == flow.version and peer in fs.net):
                return str(fs)
    return None


@dataclass(frozen=True)
class StageTier:
    tier: OrderedTier
    policies: tuple[Policy, ...]  # staged included: the pending walk
    enforced: tuple[Policy, ...]  # staged excluded: the enforced walk


@dataclass
class Evaluator:
    """Decides flows against one ClusterState. Caches compiled rules and per-endpoint tiers."""

    state: ClusterState
    _rules: dict[tuple[object, ...], tuple[CompiledRule, ...]] = field(default_factory=dict)
    _tiers: dict[tuple[object, ...], tuple[StageTier, ...]] = field(default_factory=dict)
    _tiers_by_labels: dict[tuple[object, ...], tuple[StageTier, ...]] = field(default_factory=dict)
    _tiers_by_applicable: dict[tuple[object, ...], tuple[tuple[Policy, ...], tuple[StageTier, ...]]] = field(
        default_factory=dict)
    _memo: dict[tuple[object, ...], Decision] = field(default_factory=dict)

    # ---- public ------------------------------------------------------------------------

    def decide(self, flow: Flow, *, explain: bool = False) -> Decision:
        if explain:
            return self._decide(flow, explain=True)
        key = self._memo_key(flow)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = self._decide(flow, explain=False)
        return found if found.flow == flow else replace(found, flow=flow)

    def decide_stage(self, stage: Stage, flow: Flow) -> StageResult:
        """One stage's enforced walk for `flow` (the compiler's decision maps hold its results)."""
        return self._stage(stage, flow, False, False)

    def _decide(self, flow: Flow, *, explain: bool) -> Decision:
        src = peer_for_address(self.state, flow.src)
        dst = peer_for_address(self.state, flow.dst)
        stages = stages_for(self.state, src, dst, flow.version)
        if flow.protocol == 58 and flow.icmp_type in ICMPV6_INFRA_TYPES:
            stages = []
        reply = reply_of(flow) if self._any_untracked else None
        reply_stages = stages_for(self.state, dst, src, flow.version) if reply is not None else []
        if reply is not None and not any(self._untracked(st) for st in (*stages, *reply_stages)):
            reply_stages = []  # conntrack lets the reply through: nothing untracked sees either packet
        enforced = self._both_ways(stages, reply_stages, flow, reply, pending=False, explain=explain)
        if any(self._has_staged(stage) for stage in (*stages, *reply_stages)):
            pending = self._both_ways(stages, reply_stages, flow, reply, pending=True, explain=explain)
        else:
            pending = enforced
        return Decision(flow, src, dst, enforced, pending)

    @cached_property
    def _any_untracked(self) -> bool:
        """Whether any policy is untracked (without, conntrack lets every reply through)."""
        return any(p.do_not_track for p in self.state.resources.policies)

    def _untracked(self, stage: Stage) -> bool:
        return stage.family == "untracked" and bool(self.stage_tiers(stage))

    def _both_ways(self, stages: list[Stage], reply_stages: list[Stage], flow: Flow, reply: Flow | None,
                   *, pending: bool, explain: bool) -> Verdict:
        forward = self._walk(stages, flow, pending=pending, explain=explain)
        if forward.verdict == "deny" or not reply_stages:
            return forward
        assert reply is not None
        results = self._reply_walk(forward, reply_stages, reply, pending=pending, explain=explain)
        if results and results[-1].outcome == "deny":
            return self._verdict("deny", [*forward.stages, *results])
        return replace(forward, stages=(*forward.stages, *results))

    def _reply_walk(self, forward: Verdict, stages: list[Stage], reply: Flow, *, pending: bool,
                    explain: bool) -> list[StageResult]:
        """The reply's stages, as each node's conntrack lets them run.

        The raw table sees every packet, so untracked policy checks the reply everywhere. On a node
        where the request was tracked, the reply is established: nothing else runs. Where the request
        was untracked (its Allow is a NOTRACK), there is no conntrack entry: a reply the untracked
        policy allows is accepted past host endpoint policy like the request; any other is new to
        conntrack — invalid for TCP, SCTP and ICMP (a SYN-ACK, an echo reply), dropped by filter —
        or, for UDP and the like, a new flow that filter's policy decides."""
        untracked_request = {r.stage.node for r in forward.stages
                             if r.stage.family == "untracked" and r.outcome == "allow"}
        accepted: set[str | None] = set()
        results: list[StageResult] = []
        for stage in stages:
            if stage.family == "untracked":
                if not self._untracked(stage):
                    continue  # no untracked policy here: the raw table lets the reply by
                res = replace(self._stage(stage, reply, pending, explain), reply=True)
                results.append(res)
                if res.outcome == "deny":
                    return results
                if res.outcome == "allow":
                    accepted.add(stage.node)
                continue
            if stage.node in accepted:
                if _preaccept_skips(stage):
                    results.append(StageResult(stage, "continue", None, "skipped: the reply was accepted on this "
                                               "node by untracked policy", skipped=True, reply=True))
                    continue
            elif stage.node not in untracked_request:
                continue  # established on this node
            elif reply.protocol in CONNTRACK_INVALID_REPLIES:
                results.append(StageResult(stage, "deny", None, "the request was untracked on this node, so the "
                                           "reply has no conntrack entry: conntrack marks it invalid and it is "
                                           "dropped", reply=True))
                return results
            res = replace(self._stage(stage, reply, pending, explain), reply=True)
            results.append(res)
            if res.outcome == "deny":
                return results
        return results

    def _has_staged(self, stage: Stage) -> bool:
        if stage.endpoint is None:
            return False
        return any(len(st.policies) != len(st.enforced) for st in self.stage_tiers(stage))

    def _memo_key(self, flow: Flow) -> tuple[object, ...]:
        """The flow with its source port dropped unless a rule or failsafe could look at it."""
        sport = flow.src_port
        if sport is not None and not self._source_ports_matter and sport not in self._failsafe_ports:
            sport = None
        return (flow.src, flow.dst, flow.protocol, sport, flow.dst_port, flow.icmp_type, flow.icmp_code)

    @cached_property
    def _source_ports_matter(self) -> bool:
        rules = [r for p in self.state.active_policies for r in (*p.ingress, *p.egress)]
        rules += [r for prof in self.state.profiles.values() for r in (*prof.ingress, *prof.egress)]
        # Replies are checked where untracked policy lies on the path: the reply's destination
        # port is the request's source port (and policy may decide a UDP reply anywhere then).
        untracked = any(p.do_not_track for p in self.state.active_policies)
        return untracked or any(r.source.ports or r.source.not_ports for r in rules)

    def _wireguard_between_nodes(self, flow: Flow) -> bool:
        """Calico auto-allows the tunnel's UDP between nodes (filter INPUT/OUTPUT, before HEP policy)."""
        felix = self.state.felix
        return (flow.protocol == 17 and felix.wireguard(flow.version)
                and flow.dst_port == WIREGUARD_PORTS[flow.version]
                and flow.src in self._node_addresses and flow.dst in self._node_addresses)

    @cached_property
    def _node_addresses(self) -> frozenset[IPAddress]:
        return frozenset(ip for node in self.state.resources.nodes for ip in node.addresses)

    @cached_property
    def _failsafe_ports(self) -> frozenset[int]:
        felix = self.state.felix
        return frozenset(fs.port for fs in (*felix.failsafe_inbound, *felix.failsafe_outbound))

    # ---- stages ------------------------------------------------------------------------

    def _walk(self, stages: list[Stage], flow: Flow, *, pending: bool, explain: bool) -> Verdict:
        results: list[StageResult] = []
        accepted_on: set[str | None] = set()
        for stage in stages:
            if stage.node in accepted_on and _preaccept_skips(stage):
                results.append(
                    StageResult(stage, "continue", None, "skipped: already accepted on this node by "
                                "untracked/preDNAT policy", skipped=True)
                )
                continue
            res = self._stage(stage, flow, pending, explain)
            results.append(res)
            if res.outcome == "deny":
                return self._verdict("deny", results)
            if res.outcome == "allow" and stage.family in ("untracked", "prednat"):
                accepted_on.add(stage.node)
        return self._verdict("allow", results)

    @staticmethod
    def _verdict(verdict: Literal["allow", "deny"], results: list[StageResult]) -> Verdict:
        logged = tuple(h for r in results if not r.reply for h in r.logged)
        if verdict == "deny":
            hit = results[-1].hit
            decided = hit if hit is not None and not hit.builtin else None
            return Verdict("deny", decided, False, logged, tuple(results))
        decided = None
        results = [r for r in results if not r.reply]  # the request's path decides who allowed it
        for r in reversed(results):
            if r.hit is not None and not r.hit.builtin and r.outcome == "allow":
                decided = r.hit
                break
        failsafe = any(r.failsafe for r in results)
        return Verdict("allow", decided, failsafe, logged, tuple(results))

    def _stage(self, stage: Stage, flow: Flow, pending: bool, explain: bool) -> StageResult:
        felix = self.state.felix
        if stage.family == "to-host":
            action = felix.default_endpoint_to_host_action
            if action == "Drop":
                return StageResult(stage, "deny", None, "DefaultEndpointToHostAction is Drop")
            if action == "Return":
                # Back to the host's INPUT chain (felix/rules/static.go filterWorkloadToHostChain),
                # past Calico's rules: no host endpoint policy sees workload → host packets.
                return StageResult(stage, "allow", None, "DefaultEndpointToHostAction is Return: back to the "
                                   "host's INPUT chain, which accepts; no host endpoint policy applies")
            return StageResult(stage, "allow", None, f"DefaultEndpointToHostAction is {action}")

        assert stage.endpoint is not None
        if stage.family == "normal" and self._wireguard_between_nodes(flow):
            return StageResult(stage, "allow", None, "WireGuard between nodes is allowed before host endpoint policy")
        if stage.endpoint.kind == "hep" and stage.family != "forward":
            inbound = stage.direction == "ingress"
            fs = _failsafe_hit(
                felix.failsafe_inbound if inbound else felix.failsafe_outbound, flow, flow.dst_port, inbound
            )
            if fs is None and stage.family == "untracked":
                # Untracked traffic has no conntrack: the raw chains also let failsafe replies through.
                fs = _failsafe_hit(
                    felix.failsafe_outbound if inbound else felix.failsafe_inbound, flow, flow.src_port, inbound
                )
            if fs is not None:
                outcome: Outcome = "allow" if stage.family == "normal" else "continue"
                return StageResult(stage, outcome, None, f"failsafe port {fs}", failsafe=True)

        steps: list[str] = []
        logged: list[Hit] = []
        decided = self._tiers_walk(stage, flow, pending, explain, steps, logged)
        if decided is not None:
            outcome, hit, reason = decided
            return StageResult(stage, outcome, hit, reason, logged=tuple(logged), steps=tuple(steps))
        if stage.family in ("untracked", "prednat"):
            return StageResult(stage, "continue", None, "no policy decided", logged=tuple(logged),
                               steps=tuple(steps))
        if stage.family == "forward":
            return StageResult(stage, "continue", None, "forwarded traffic is allowed unless a policy denies",
                               logged=tuple(logged), steps=tuple(steps))
        policed = any(st.policies if pending else st.enforced for st in self.stage_tiers(stage))
        outcome, hit, reason = self._profiles(stage, flow, explain, steps, logged, policed)
        return StageResult(stage, outcome, hit, reason, logged=tuple(logged), steps=tuple(steps))

    # ---- tiers -------------------------------------------------------------------------

    def stage_tiers(self, stage: Stage) -> tuple[StageTier, ...]:
        """The tiers with policies for this endpoint, direction and family (cached)."""
        assert stage.endpoint is not None
        key = (stage.endpoint, stage.family, stage.direction)
        found = self._tiers.get(key)
        if found is None:
            # Which policies select an endpoint depends on its labels alone: endpoints with the
            # same labels (replicas) share the answer.
            by_labels = (frozenset(stage.endpoint.labels.items()), stage.family, stage.direction)
            found = self._tiers_by_labels.get(by_labels)
            if found is None:
                # Nor on more than the policies that select it (the state shares one answer
                # object between endpoints selected alike): kept with it, so its id stays its own.
                applicable = self.state.applicable_policies(stage.endpoint)
                alike = (id(applicable), stage.family, stage.direction)
                hit = self._tiers_by_applicable.get(alike)
                if hit is not None and hit[0] is applicable:
                    found = hit[1]
                else:
                    found = self._stage_tiers(stage)
                    self._tiers_by_applicable[alike] = (applicable, found)
                self._tiers_by_labels[by_labels] = found
            self._tiers[key] = found
        return found

    def _stage_tiers(self, stage: Stage) -> tuple[StageTier, ...]:
        """Only the policies that select the endpoint, put in evaluation order by position (not a
        walk over every policy of every tier: that was O(all policies) per endpoint)."""
        assert stage.endpoint is not None
        position = self.state.policy_positions
        tiers = self.state.tiers
        selected = sorted(
            (position[p.key], p) for p in self.state.applicable_policies(stage.endpoint)
            if stage.direction in p.types and _in_family(p, stage)
        )
        by_tier: dict[int, list[Policy]] = {}
        for (tier_index, _), p in selected:
            by_tier.setdefault(tier_index, []).append(p)
        return tuple(StageTier(tiers[t], tuple(pols), tuple(p for p in pols if not p.staged))
                     for t, pols in sorted(by_tier.items()))

    def profile_hit(self, name: str, direction: Direction, index: int, action: str) -> Hit:
        """The hit of a profile's rule (built-in profiles' defaults are not user decisions)."""
        builtin = name not in self.state.user_profiles and (
            name.startswith(("kns.", "ksa.")) or name == DEFAULT_ALLOW_PROFILE
        )
        return Hit("Profile", None, name, PROFILE_TIER, direction, index, action, builtin)

    def _compiled(self, key: tuple[str, str, str], namespace: str | None, rules: tuple[Rule, ...],
                  direction: Direction, version: int) -> tuple[CompiledRule, ...]:
        ckey = (key, direction, version)
        found = self._rules.get(ckey)
        if found is None:
            out = []
            for i, rule in enumerate(rules):
                cr = compile_rule(self.state, i, rule, namespace, version)
                if cr is not None:
                    out.append(cr)
            found = tuple(out)
            self._rules[ckey] = found
        return found

    def _tiers_walk(
        self, stage: Stage, flow: Flow, pending: bool, explain: bool, steps: list[str], logged: list[Hit]
    ) -> tuple[Outcome, Hit | None, str] | None:
        direction = stage.direction
        for st in self.stage_tiers(stage):
            ot = st.tier
            enforced = st.policies if pending else st.enforced
            if not enforced:
                if explain:
                    steps.append(f"tier {ot.name}: only staged policies select this endpoint; no effect")
                continue
            if explain:
                names = ", ".join(_policy_label(p) for p in enforced)
                steps.append(f"tier {ot.name}: policies in order: {names}")
            verdict: Hit | None = None
            for pol in enforced:
                rules = self._compiled(pol.key, pol.namespace, pol.rules(direction), direction, flow.version)
                if explain and not rules:
                    steps.append(f"  {_policy_label(pol)}: no {direction} rules for IPv{flow.version}")
                for cr in rules:
                    if not cr.matches(flow):
                        if explain:
                            steps.append(f"  {_policy_label(pol)} rule {cr.index} ({cr.action}): "
                                         f"no match — {cr.why_not(flow)}")
                        continue
                    hit = Hit(pol.kind, pol.namespace, pol.name, ot.name, direction, cr.index, cr.action)
                    if cr.action == "Log":
                        logged.append(hit)
                        if explain:
                            steps.append(f"  {_policy_label(pol)} rule {cr.index} (Log): matches — logged, "
                                         "evaluation continues")
                        continue
                    verdict = hit
                    if explain:
                        steps.append(f"  {_policy_label(pol)} rule {cr.index} ({cr.action}): matches")
                    break
                if verdict is not None:
                    break
            if verdict is not None:
                if verdict.action == "Pass":
                    if explain:
                        steps.append(f"tier {ot.name}: Pass — skip the rest of the tier")
                    continue
                outcome: Outcome = "allow" if verdict.action == "Allow" else "deny"
                return outcome, verdict, f"{verdict.action} by {verdict.describe()}"
            default = "Pass" if stage.family in ("untracked", "prednat") else ot.tier.default_action
            if default == "Pass":
                if explain:
                    steps.append(f"tier {ot.name}: no rule matched; the tier's default action is Pass")
                continue
            trigger = enforced[0] if pending else enforced[-1]
            hit = Hit(trigger.kind, trigger.namespace, trigger.name, ot.name, direction, -1, "Deny")
            if explain:
                steps.append(f"tier {ot.name}: no rule matched; end-of-tier deny "
                             f"(policies select this endpoint but none allowed the packet)")
            return "deny", hit, f"end of tier {ot.name}: no rule matched"
        return None

    # ---- profiles ----------------------------------------------------------------------

    def _profiles(
        self, stage: Stage, flow: Flow, explain: bool, steps: list[str], logged: list[Hit], policed: bool
    ) -> tuple[Outcome, Hit | None, str]:
        """The endpoint's profiles in order; `policed`: some tier applied (and every one passed)."""
        assert stage.endpoint is not None
        direction = stage.direction
        for name in stage.endpoint.profiles:
            prof: Profile | None = self.state.profiles.get(name)
            if prof is None:
                continue
            rules = self._compiled(("Profile", "", name), None, prof.rules(direction), direction, flow.version)
            for cr in rules:
                if not cr.matches(flow):
                    continue
                hit = self.profile_hit(name, direction, cr.index, cr.action)
                builtin = hit.builtin
                if cr.action == "Log":
                    logged.append(hit)
                    continue
                if cr.action == "Pass":
                    break
                if explain:
                    steps.append(f"profile {name}: rule {cr.index} ({cr.action}) matches")
                outcome: Outcome = "allow" if cr.action == "Allow" else "deny"
                first = "every applicable tier passed" if policed else "no policy applies"
                why = (f"{first}; namespace profile {name} allows by default"
                       if builtin and name.startswith("kns.") else f"{cr.action} by profile {name}")
                return outcome, hit, why
        if explain:
            steps.append("no profile matched: drop")
        what = "every applicable tier passed and " if policed else "no policy applies and "
        return "deny", None, f"{what}no profile allowed the packet (default deny)"


def reply_of(flow: Flow) -> Flow | None:
    """The first packet back: ports swapped, an echo request answered; None when nothing replies
    (ICMP other than echo requests)."""
    if flow.protocol in (1, 58):
        request, answer = (8, 0) if flow.protocol == 1 else (128, 129)
        if flow.icmp_type != request:
            return None
        return Flow(flow.dst, flow.src, flow.protocol, icmp_type=answer, icmp_code=0)
    return Flow(flow.dst, flow.src, flow.protocol, flow.dst_port, flow.src_port)


def _preaccept_skips(stage: Stage) -> bool:
    """Whether an untracked/preDNAT Allow on the stage's node skips it: mangle PREROUTING and
    filter INPUT and OUTPUT accept such packets first, FORWARD skips the incoming host endpoint's
    forward policy only."""
    return stage.family in ("prednat", "normal") or (stage.family == "forward" and stage.direction == "ingress")


def _in_family(policy: Policy, stage: Stage) -> bool:
    if stage.family == "workload":
        return not (policy.do_not_track or policy.pre_dnat)
    if stage.family == "untracked":
        return policy.do_not_track
    if stage.family == "prednat":
        return policy.pre_dnat
    if stage.family == "normal":
        return not (policy.do_not_track or policy.pre_dnat)
    return policy.apply_on_forward and not (policy.do_not_track or policy.pre_dnat)


def _policy_label(p: Policy) -> str:
    name = f"{p.namespace}/{p.name}" if p.namespace else p.name
    order = "" if p.order is None else f" order {p.order:g}"
    staged = " [staged]" if p.staged else ""
    return f"{p.kind} {name}{order}{staged}"
