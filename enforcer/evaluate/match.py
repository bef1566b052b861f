"""Rule matching (§2.11), compiled once per rule and family into a list of checks.

Each check is a predicate plus a description of why it failed, so the fast path (`matches`) and
the explanation (`why_not`) come from the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from enforcer.evaluate.flow import Flow
from enforcer.model import EntityRule, IPAddress, NamedPort, PortRange, Rule, protocol_name
from enforcer.resolve.ipsets import IPSet, NamedPortSet, net_range
from enforcer.resolve.rules import rule_for_family
from enforcer.resolve.selectors import entity_selector
from enforcer.resolve.state import ClusterState

Predicate = Callable[[Flow], bool]
Describe = Callable[[Flow], str]


@dataclass(frozen=True)
class Check:
    pred: Predicate
    why: Describe


@dataclass(frozen=True)
class CompiledRule:
    index: int  # as written in the policy
    rule: Rule  # as rendered for this family
    checks: tuple[Check, ...]

    def __post_init__(self) -> None:
        preds = tuple(c.pred for c in self.checks)

        def matches(flow: Flow) -> bool:
            for pred in preds:
                if not pred(flow):
                    return False
            return True

        object.__setattr__(self, "matches", matches)
        object.__setattr__(self, "action", self.rule.action)

    # Set per instance in __post_init__: a bound loop over the predicates, the hot path.
    matches: Callable[[Flow], bool] = field(init=False, repr=False, compare=False)
    action: str = field(init=False, repr=False, compare=False)

    def why_not(self, flow: Flow) -> str | None:
        for c in self.checks:
            if not c.pred(flow):
                return c.why(flow)
        return None


def _in_ranges(key: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    for first, last in ranges:
        if first <= key <= last:
            return True
    return False


def _ports_text(ports: tuple[PortRange | NamedPort, ...]) -> str:
    return "{" + ", ".join(str(p) for p in ports) + "}"


class _PortMatch:
    """A ports list: numeric ranges OR'd with named-port sets."""

    def __init__(self, ranges: tuple[PortRange, ...], named: tuple[NamedPortSet, ...]) -> None:
        self.ranges = ranges
        self.named = named

    def __call__(self, ip: IPAddress, proto: int, port: int | None) -> bool:
        if port is None:
            return False
        if any(r.first <= port <= r.last for r in self.ranges):
            return True
        key = (ip, proto, port)
        return any(key in s for s in self.named)


def _entity_checks(
    state: ClusterState, entity: EntityRule, policy_ns: str | None, protocol: int | None, side: str
) -> list[Check]:
    is_src = side == "source"

    def addr(f: Flow) -> IPAddress:
        return f.src if is_src else f.dst

    def key(f: Flow) -> int:
        return f.src_key if is_src else f.dst_key

    def port(f: Flow) -> int | None:
        return f.src_port if is_src else f.dst_port

    checks: list[Check] = []
    if entity.nets:
        nets = entity.nets
        net_ranges = tuple(net_range(n) for n in nets)
        checks.append(
            Check(
                lambda f: _in_ranges(key(f), net_ranges),
                lambda f: f"{side} {addr(f)} is not in nets {', '.join(map(str, nets))}",
            )
        )
    if entity.not_nets:
        not_nets = entity.not_nets
        not_ranges = tuple(net_range(n) for n in not_nets)
        checks.append(
            Check(
                lambda f: not _in_ranges(key(f), not_ranges),
                lambda f: f"{side} {addr(f)} is in notNets {', '.join(map(str, not_nets))}",
            )
        )
    positive = entity_selector(entity, policy_ns)
    if positive is not None:
        members: IPSet = state.ipset(positive)
        checks.append(
            Check(
                lambda f: members.contains_key(key(f)),
                lambda f: f"{side} {addr(f)} is not selected by {positive}",
            )
        )
    if entity.not_selector is not None:
        negative = state.ipset(entity.not_selector)
        not_sel = entity.not_selector
        checks.append(
            Check(
                lambda f: not negative.contains_key(key(f)),
                lambda f: f"{side} {addr(f)} is selected by notSelector {not_sel}",
            )
        )
    if entity.services is not None:
        svc = entity.services
        # flowtui loads no EndpointSlices, so a service has no known backends.
        checks.append(
            Check(lambda f: False, lambda f: f"service {svc.name} has no known endpoints (no EndpointSlices)")
        )

    def port_match(ports: tuple[PortRange | NamedPort, ...]) -> _PortMatch:
        ranges = tuple(p for p in ports if isinstance(p, PortRange))
        named = tuple(
            state.named_ports(positive, p.name, protocol) for p in ports if isinstance(p, NamedPort)
        )
        return _PortMatch(ranges, named)

    if entity.ports:
        pm = port_match(entity.ports)
        text = _ports_text(entity.ports)
        checks.append(
            Check(
                lambda f: pm(addr(f), f.protocol, port(f)),
                lambda f: f"{side} port {port(f)} is not in {text}",
            )
        )
    if entity.not_ports:
        npm = port_match(entity.not_ports)
        ntext = _ports_text(entity.not_ports)
        checks.append(
            Check(
                lambda f: port(f) is not None and not npm(addr(f), f.protocol, port(f)),
                lambda f: f"{side} port {port(f)} is in notPorts {ntext}",
            )
        )
    return checks


def compile_rule(
    state: ClusterState, index: int, rule: Rule, policy_ns: str | None, version: int
) -> CompiledRule | None:
    """The rule's checks in the IPv`version` family, or None where the rule is absent."""
    r = rule_for_family(rule, version)
    if r is None:
        return None
    checks: list[Check] = []
    if r.protocol is not None:
        proto = r.protocol
        checks.append(
            Check(
                lambda f: f.protocol == proto,
                lambda f: f"protocol is {protocol_name(f.protocol)}, rule wants {protocol_name(proto)}",
            )
        )
    if r.not_protocol is not None:
        nproto = r.not_protocol
        checks.append(
            Check(lambda f: f.protocol != nproto, lambda f: f"protocol is {protocol_name(nproto)} (notProtocol)")
        )
    if r.icmp is not None:
        icmp = r.icmp
        checks.append(
            Check(
                lambda f: f.protocol in (1, 58)
                and f.icmp_type == icmp.type
                and (icmp.code is None or f.icmp_code == icmp.code),
                lambda f: f"ICMP type/code {f.icmp_type}/{f.icmp_code} is not {icmp.type}/{icmp.code}",
            )
        )
    if r.not_icmp is not None:
        nicmp = r.not_icmp

        def not_icmp_ok(f: Flow) -> bool:
            if f.protocol not in (1, 58):
                return True
            same = f.icmp_type == nicmp.type and (nicmp.code is None or f.icmp_code == nicmp.code)
            return not same

        checks.append(
            Check(not_icmp_ok, lambda f: f"ICMP type/code {f.icmp_type}/{f.icmp_code} matches notICMP")
        )
    proto_for_ports = r.protocol
    checks += _entity_checks(state, r.source, policy_ns, proto_for_ports, "source")
    checks += _entity_checks(state, r.destination, policy_ns, proto_for_ports, "destination")
    return CompiledRule(index, r, tuple(checks))
