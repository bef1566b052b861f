"""How a rule exists in one IP family (§2.11): shared by the evaluator and the nftables compiler.

Felix renders IPv4 and IPv6 separately. A rule restricted to the other family is absent there; a
nets list that had entries but none of this family removes the rule from this family.
"""

from __future__ import annotations

from dataclasses import replace

from enforcer.model import EntityRule, Rule

ICMP = 1
ICMPV6 = 58


def rule_family(rule: Rule) -> int | None:
    """4, 6, or None (both): explicit ipVersion, else implied by an ICMP protocol."""
    if rule.ip_version is not None:
        return rule.ip_version
    for proto in (rule.protocol, rule.not_protocol):
        if proto == ICMP:
            return 4
        if proto == ICMPV6:
            return 6
    return None


def _entity_for_family(entity: EntityRule, version: int) -> EntityRule | None:
    nets = tuple(n for n in entity.nets if n.version == version)
    not_nets = tuple(n for n in entity.not_nets if n.version == version)
    if entity.nets and not nets:
        return None
    if entity.not_nets and not not_nets:
        # A notNets list with only other-family entries excludes nothing of this family;
        # Felix drops the rule in that case (the list "became empty").
        return None
    if any(n.prefixlen == 0 for n in not_nets):
        return None
    if nets == entity.nets and not_nets == entity.not_nets:
        return entity
    return replace(entity, nets=nets, not_nets=not_nets)


def rule_for_family(rule: Rule, version: int) -> Rule | None:
    """The rule as rendered in the IPv`version` table, or None when it is absent there."""
    family = rule_family(rule)
    if family is not None and family != version:
        return None
    source = _entity_for_family(rule.source, version)
    destination = _entity_for_family(rule.destination, version)
    if source is None or destination is None:
        return None
    if source is rule.source and destination is rule.destination:
        return rule
    return replace(rule, source=source, destination=destination)
