"""Tiers, policies and rules in evaluation order, with hit counts and last hits. Headless.

Hits come from rule identifiers (`enforcer.ruleids`): one identifier per rule of one policy
revision, so a rule's hits are summed over every revision's identifier of the same
(kind, namespace, name, direction, rule index). Counts are the nftables counters when a lab is
up (every packet, also when logging is rate-limited), else the counters the collector stored,
else the number of logged events; the last hit is the newest logged event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from enforcer.model import SHORT_KIND, Policy, ResourceSet, Rule
from flowtui.tui.control import PolicyRef

RuleKey = tuple[str, str | None, str, str, int]  # kind, namespace, name, direction, rule


@dataclass
class Activity:
    hits: int = 0
    last: datetime | None = None
    known: bool = False  # any identifier of it was seen in the rule table
    action: str = ""

    def add(self, hits: int, last: datetime | None) -> None:
        self.hits += hits
        if last is not None and (self.last is None or last > self.last):
            self.last = last


@dataclass
class PolicyLine:
    level: str  # tier | policy | rule | eot | profile
    tier: str
    text: str  # what the line says (the policy name, the rule summary)
    ref: PolicyRef | None = None
    order: str = ""
    state: str = ""  # enabled, disabled, staged
    direction: str = ""
    rule: int | None = None
    action: str = ""
    activity: Activity = field(default_factory=Activity)

    @property
    def unused(self) -> bool:
        return self.level in ("rule", "eot") and self.activity.hits == 0


def rule_summary(rule: Rule) -> str:
    """A short account of what a rule matches: `tcp from tier == 'frontend' to :[22]`."""
    parts = []
    if rule.protocol is not None:
        from enforcer.model import protocol_name

        parts.append(protocol_name(rule.protocol))
    if rule.not_protocol is not None:
        parts.append(f"not proto {rule.not_protocol}")
    if rule.icmp is not None:
        parts.append("icmp " + " ".join(f"{k}={v}" for k, v in vars(rule.icmp).items() if v is not None))
    for side, ent in (("from", rule.source), ("to", rule.destination)):
        bits = []
        if ent.selector is not None:
            bits.append(str(ent.selector))
        if ent.not_selector is not None:
            bits.append(f"!({ent.not_selector})")
        if ent.namespace_selector is not None:
            bits.append(f"ns {ent.namespace_selector}")
        if ent.nets:
            bits.append(",".join(str(n) for n in ent.nets))
        if ent.not_nets:
            bits.append("!" + ",".join(str(n) for n in ent.not_nets))
        if ent.ports:
            bits.append("port " + ",".join(_port(p) for p in ent.ports))
        if ent.not_ports:
            bits.append("!port " + ",".join(_port(p) for p in ent.not_ports))
        if ent.service_accounts is not None:
            bits.append("serviceaccounts")
        if bits:
            parts.append(f"{side} " + " ".join(bits))
    return " ".join(parts) or "everything"


def _port(p: Any) -> str:
    for attr in ("name",):
        value = getattr(p, attr, None)
        if value:
            return str(value)
    lo, hi = getattr(p, "first", None), getattr(p, "last", None)
    if lo is not None and hi is not None and lo != hi:
        return f"{lo}:{hi}"
    return str(lo if lo is not None else p)


def _order(order: float | None) -> str:
    if order is None:
        return ""
    return str(int(order)) if float(order).is_integer() else f"{order:g}"


def _state(p: Policy) -> str:
    if p.disabled:
        return "disabled"
    if p.staged:
        return "staged"
    return "enabled"


def ordered_policies(resources: ResourceSet) -> list[tuple[str, float | None, list[Policy]]]:
    """(tier, tier order, policies in evaluation order), disabled ones included in place."""
    from enforcer.resolve.state import defined_tiers, order_tiers, policy_sort_key

    by_tier: dict[str, list[Policy]] = {}
    for p in resources.policies:
        by_tier.setdefault(p.tier, []).append(p)
    out = []
    for tier, _exists in order_tiers(defined_tiers(resources.tiers, set(by_tier)), set(by_tier)):
        pols = sorted(by_tier.get(tier.name, []), key=policy_sort_key)
        if pols:
            out.append((tier.name, tier.order, pols))
    return out


def activity_by_rule(
    refs: Mapping[int, Any],
    counters: Mapping[int, int] | None,
    events: Mapping[int, tuple[int, datetime | None]],
) -> dict[RuleKey, Activity]:
    """Per rule key: hits (counters when known, else events) and last hit."""
    out: dict[RuleKey, Activity] = {}
    for rule_id, ref in refs.items():
        key: RuleKey = (ref.kind, ref.namespace, ref.name, ref.direction, ref.rule)
        act = out.setdefault(key, Activity())
        act.known = True
        act.action = ref.action
        n_events, last = events.get(rule_id, (0, None))
        hits = counters.get(rule_id) if counters is not None and rule_id in counters else n_events
        act.add(int(hits or 0), last)
    return out


def policy_lines(resources: ResourceSet, activity: Mapping[RuleKey, Activity]) -> list[PolicyLine]:
    lines: list[PolicyLine] = []
    for tier, order, pols in ordered_policies(resources):
        lines.append(PolicyLine("tier", tier, f"tier {tier}", order=_order(order)))
        for p in pols:
            ref = PolicyRef(p.kind, p.namespace, p.name)
            short = SHORT_KIND.get(p.kind, p.kind)
            ident = f"{p.namespace}/{p.name}" if p.namespace else p.name
            pline = PolicyLine("policy", tier, f"{short} {ident}", ref, _order(p.order), _state(p))
            lines.append(pline)
            for direction, rules in (("ingress", p.ingress), ("egress", p.egress)):
                if direction not in p.types and not rules:
                    continue
                for i, rule in enumerate(rules):
                    act = activity.get((p.kind, p.namespace, p.name, direction, i), Activity())
                    pline.activity.add(act.hits, act.last)
                    lines.append(PolicyLine("rule", tier, rule_summary(rule), ref, state=pline.state,
                                            direction=direction, rule=i, action=rule.action, activity=act))
        # The end of the tier: one line per direction, summed over its policies' end-of-tier drops
        # (each drop is attributed to the last enabled policy that selected the endpoint; the
        # flows' detail names it). Every enforced policy has one in the dataplane, ready for toggles.
        for direction in ("ingress", "egress"):
            found = [a for p in pols if (a := activity.get(("EndOfTier", p.namespace, p.name, direction, -1)))]
            if found:
                total = Activity(known=True, action="Deny")
                for a in found:
                    total.add(a.hits, a.last)
                lines.append(PolicyLine("eot", tier, f"end of tier {tier} (no rule matched)", None,
                                        direction=direction, rule=-1, action="Deny", activity=total))
    prof = [(k, a) for k, a in activity.items() if k[0] == "Profile"]
    if prof:
        lines.append(PolicyLine("tier", "__PROFILE__", "profiles"))
        for key, act in sorted(prof, key=lambda x: (x[0][2], x[0][3], x[0][4])):
            lines.append(PolicyLine("profile", "__PROFILE__", f"profile {key[2]}", None, direction=key[3],
                                    rule=key[4], action=act.action, activity=act))
    return lines
