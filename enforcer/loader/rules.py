"""Calico rules (`ingress[]` / `egress[]` of policies and profiles), validated as Calico does.

Sources: `api/pkg/apis/projectcalico/v3/policy_common.go` (fields, list limits, CEL rules) and
`libcalico-go/lib/validator/v3/validator.go` (`validateRule`, `validateEntityRule`,
`validateHTTPRule`, `validateICMPFields`, `validatePort`, `validateProtocol`), v3.32 behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enforcer.loader.checks import (
    CALICO_PORT_NAME_RE,
    cidr_value,
    dns_subdomain_error,
    selector_value,
)
from enforcer.loader.fields import Fields, Value, child_path, quote
from enforcer.loader.metadata import parse_annotations
from enforcer.model import (
    ANY_ENTITY,
    PORT_PROTOCOLS,
    PROTOCOL_NUMBERS,
    Action,
    Direction,
    EntityRule,
    HTTPMatch,
    ICMPMatch,
    IPNetwork,
    NamedPort,
    Origin,
    Port,
    PortRange,
    Rule,
    ServiceAccountMatch,
    ServiceMatch,
    protocol_name,
)
from enforcer.selector import Selector

ACTIONS: tuple[Action, ...] = ("Allow", "Deny", "Log", "Pass")
RULE_FIELDS = (
    "action",
    "ipVersion",
    "protocol",
    "notProtocol",
    "icmp",
    "notICMP",
    "source",
    "destination",
    "http",
    "metadata",
)
ENTITY_FIELDS = (
    "nets",
    "notNets",
    "selector",
    "notSelector",
    "namespaceSelector",
    "ports",
    "notPorts",
    "serviceAccounts",
    "services",
)
MAX_RULES = 1024
MAX_NETS = 256
MAX_PORTS = 50
MAX_HTTP_ITEMS = 20
MAX_HTTP_PATH = 1024
ICMP, ICMPV6 = 1, 58
TCP = 6
PROTOCOLS_ALLOWED = "TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite, or a number 1-255; names are case-sensitive"
PORT_ALLOWED = (
    'an integer 1-65535, a string "N" or "N:M" with N <= M, or a port name of up to 128 '
    "letters, digits, '_', '.' and '-'"
)


@dataclass(frozen=True)
class RuleContext:
    direction: Direction
    in_policy: bool  # policies forbid HTTP in egress rules and misplaced services; profiles don't
    global_policy: bool = False  # GNP/SGNP: services must name their namespace


# --------------------------------------------------------------------------------------------
# Scalars


def parse_protocol(value: Value) -> int | None:
    raw = value.raw
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        value.error(f"must be a protocol name or number ({PROTOCOLS_ALLOWED})")
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 5:
        raw = int(raw)
    if isinstance(raw, int):
        if not 1 <= raw <= 255:
            value.error(f"protocol number {raw} is invalid (allowed: 1-255)")
            return None
        return raw
    if raw in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[raw]
    value.error(f"invalid protocol {quote(raw)} (allowed: {PROTOCOLS_ALLOWED})")
    return None


def _port_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else None


def parse_port(value: Value) -> Port | None:
    """numorstring.Port: an int, "N", "N:M" or a named port."""
    raw = value.raw
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        value.error(f"invalid port (allowed: {PORT_ALLOWED})")
        return None
    if isinstance(raw, int):
        first = last = raw
    elif _port_number(raw) is not None:
        first = last = _port_number(raw) or 0
    elif ":" in raw:
        low, _, high = raw.partition(":")
        first_or_none, last_or_none = _port_number(low), _port_number(high)
        if first_or_none is None or last_or_none is None:
            value.error(f"invalid port range {quote(raw)} (allowed: {PORT_ALLOWED})")
            return None
        first, last = first_or_none, last_or_none
    elif CALICO_PORT_NAME_RE.match(raw):
        return NamedPort(raw)
    else:
        value.error(f"invalid port {quote(raw)} (allowed: {PORT_ALLOWED})")
        return None
    for number in (first, last):
        if not 1 <= number <= 65535:
            value.error(f"port {number} is out of range (allowed: 1-65535)")
            return None
    if first > last:
        value.error(f"port range {first}:{last} is reversed (allowed: N:M with N <= M)")
        return None
    return PortRange(first, last)


def parse_icmp(value: Value) -> ICMPMatch | None:
    fields = value.as_map(("type", "code"))
    if fields is None:
        return None
    icmp_type = fields.get_int("type", 0, 254)
    code = fields.get_int("code", 0, 255)
    if fields.has("code") and not fields.has("type"):
        code_value = fields.get("code")
        assert code_value is not None
        code_value.error("ICMP code specified without an ICMP type (allowed: type, or type and code)")
        return None
    if icmp_type is None:
        return None
    return ICMPMatch(icmp_type, code)


def parse_http(value: Value) -> HTTPMatch | None:
    fields = value.as_map(("methods", "paths"))
    if fields is None:
        return None
    methods = fields.get_str_list("methods", MAX_HTTP_ITEMS)
    seen: set[str] = set()
    for method, item in methods:
        if method in seen:
            item.error(f"duplicate HTTP method {quote(method)} (each method may be listed once)")
        seen.add(method)
    paths: list[tuple[str, str]] = []
    for item in fields.get_list("paths", MAX_HTTP_ITEMS):
        path_fields = item.as_map(("exact", "prefix"))
        if path_fields is None:
            continue
        exact, prefix = path_fields.get_str("exact") or "", path_fields.get_str("prefix") or ""
        if exact and prefix:
            item.error("an HTTP path sets both exact and prefix (allowed: one of them)")
            continue
        if not exact and not prefix:
            item.error("an HTTP path must set exact or prefix")
            continue
        kind, text = ("exact", exact) if exact else ("prefix", prefix)
        located = path_fields.get(kind)
        assert located is not None
        if len(text) > MAX_HTTP_PATH:
            located.error(f"path is {len(text)} characters long (at most {MAX_HTTP_PATH} allowed)")
        elif not text.startswith("/") or any(c in text for c in "? #"):
            located.error(f"invalid path {quote(text)} (must start with '/' and not contain '?', '#' or spaces)")
        else:
            paths.append((kind, text))
    return HTTPMatch(tuple(m for m, _ in methods), tuple(paths))


# --------------------------------------------------------------------------------------------
# Entity rules


@dataclass
class _Side:
    """A parsed `source`/`destination`, with what the rule-level checks need to locate errors."""

    path: str
    entity: EntityRule = ANY_ENTITY
    fields: Fields | None = None
    nets: dict[str, tuple[IPNetwork, ...]] = field(default_factory=dict)  # nets / notNets
    ports: dict[str, tuple[Port, ...]] = field(default_factory=dict)  # ports / notPorts

    def located(self, key: str) -> Value | None:
        return self.fields.get(key) if self.fields is not None else None

    def error(self, key: str, message: str) -> None:
        value = self.located(key)
        if value is not None:
            value.error(message)


def _nets(fields: Fields, key: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for item in fields.get_list(key, MAX_NETS):
        net = cidr_value(item, strict=True)
        if net is None:
            continue
        if key == "notNets" and net.prefixlen == 0:
            item.error(
                f"notNets {net} excludes every address, so the rule could never match (rejected since Calico v3.31)"
            )
            continue
        out.append(net)
    return tuple(out)


def _ports(fields: Fields, key: str) -> tuple[Port, ...]:
    return tuple(p for p in map(parse_port, fields.get_list(key, MAX_PORTS)) if p is not None)


def parse_entity(rule: Fields, key: str) -> _Side:
    side = _Side(child_path(rule.path, key))
    value = rule.get(key)
    if value is None:
        return side
    fields = value.as_map(ENTITY_FIELDS)
    if fields is None:
        return side
    side.fields = fields
    side.nets = {k: _nets(fields, k) for k in ("nets", "notNets") if fields.has(k)}
    side.ports = {k: _ports(fields, k) for k in ("ports", "notPorts") if fields.has(k)}

    def sel(name: str, allow_global: bool = False) -> Selector | None:
        located = fields.get(name)
        return selector_value(located, allow_global=allow_global) if located is not None else None

    selector = sel("selector")
    not_selector = sel("notSelector")
    namespace_selector = sel("namespaceSelector", allow_global=True)
    service_accounts = _service_accounts(fields)
    services = _services(fields)
    side.entity = EntityRule(
        nets=side.nets.get("nets", ()),
        not_nets=side.nets.get("notNets", ()),
        selector=selector,
        not_selector=not_selector,
        namespace_selector=namespace_selector,
        ports=side.ports.get("ports", ()),
        not_ports=side.ports.get("notPorts", ()),
        service_accounts=service_accounts,
        services=services,
    )
    return side


def _service_accounts(fields: Fields) -> ServiceAccountMatch | None:
    sa = fields.get_map("serviceAccounts", ("names", "selector"))
    if sa is None:
        return None
    names = tuple(name for name, _ in sa.get_str_list("names"))
    located = sa.get("selector")
    selector = selector_value(located) if located is not None else None
    if not names and selector is None:
        return None  # `serviceAccounts: {}` constrains nothing
    return ServiceAccountMatch(names, selector)


def _services(fields: Fields) -> ServiceMatch | None:
    services = fields.get_map("services", ("name", "namespace"))
    if services is None:
        return None
    name = services.get_str("name")
    namespace = services.get_str("namespace")
    ok = True
    if not name:
        services.missing("name", "services must give the service name")
        ok = False
    for key, text in (("name", name), ("namespace", namespace)):
        problem = dns_subdomain_error(text, key) if text else None
        if problem:
            located = services.get(key)
            assert located is not None
            located.error(problem)
            ok = False
    for other in ("selector", "notSelector", "namespaceSelector", "nets", "notNets", "serviceAccounts"):
        if fields.has(other):
            located = fields.get("services")
            assert located is not None
            located.error(f"services cannot be combined with {other} in the same rule side")
            ok = False
    if not ok or name is None:
        return None
    return ServiceMatch(name, namespace or None)


# --------------------------------------------------------------------------------------------
# Rules


def parse_rules(values: list[Value], ctx: RuleContext) -> tuple[Rule, ...]:
    return tuple(r for r in (parse_rule(v, ctx) for v in values) if r is not None)


def parse_rule(value: Value, ctx: RuleContext) -> Rule | None:
    fields = value.as_map(RULE_FIELDS)
    if fields is None:
        return None
    before = len(value.r.problems)
    action = fields.get_str("action", required=True)
    if action is not None and action not in ACTIONS:
        fields.error_at("action", f"invalid action {quote(action)} (allowed: {', '.join(ACTIONS)})")
    ip_version = fields.get_int("ipVersion")
    if ip_version is not None and ip_version not in (4, 6):
        fields.error_at("ipVersion", f"ipVersion {ip_version} is invalid (allowed: 4 or 6)")
        ip_version = None
    located_protocol, located_not_protocol = fields.get("protocol"), fields.get("notProtocol")
    protocol = parse_protocol(located_protocol) if located_protocol is not None else None
    not_protocol = parse_protocol(located_not_protocol) if located_not_protocol is not None else None
    protocol_known = located_protocol is None or protocol is not None
    icmp = _icmp(fields, "icmp", protocol, protocol_known)
    not_icmp = _icmp(fields, "notICMP", protocol, protocol_known)
    for key, number in (("protocol", protocol), ("notProtocol", not_protocol)):
        if ip_version == 6 and number == ICMP:
            fields.error_at("ipVersion", f"{key} ICMP requires ipVersion 4")
        if ip_version == 4 and number == ICMPV6:
            fields.error_at("ipVersion", f"{key} ICMPv6 requires ipVersion 6")
    source, destination = parse_entity(fields, "source"), parse_entity(fields, "destination")
    if protocol_known:
        for side in (source, destination):
            _check_ports(side, protocol)
    _check_nets(source, destination, ip_version)
    if destination.entity.services is not None:
        for key in ("ports", "notPorts"):
            destination.error(key, "cannot be combined with services (service rules use the service's ports)")
    http = None
    located_http = fields.get("http")
    if located_http is not None:
        http = parse_http(located_http)
        if action is not None and action != "Allow":
            located_http.error("HTTP match is only valid on Allow rules")
        if protocol_known and protocol not in (None, TCP):
            located_http.error("HTTP match requires protocol TCP or no protocol")
        if ctx.in_policy and ctx.direction == "egress":
            located_http.error("HTTP match is not allowed in egress rules")
    if ctx.in_policy:
        _check_services(ctx, source, destination)
    annotations: tuple[tuple[str, str], ...] = ()
    rule_meta = fields.get_map("metadata", ("annotations",))
    located_annotations = rule_meta.get("annotations") if rule_meta is not None else None
    if located_annotations is not None:
        parsed, _ = parse_annotations(located_annotations)
        annotations = tuple(sorted(parsed.items()))
    if len(value.r.problems) != before or action not in ACTIONS:
        return None
    return Rule(
        action=action,
        ip_version=ip_version,
        protocol=protocol,
        not_protocol=not_protocol,
        icmp=icmp,
        not_icmp=not_icmp,
        source=source.entity,
        destination=destination.entity,
        http=http,
        annotations=annotations,
        origin=Origin(value.r.file, value.line),
    )


def _icmp(fields: Fields, key: str, protocol: int | None, protocol_known: bool) -> ICMPMatch | None:
    located = fields.get(key)
    if located is None:
        return None
    icmp = parse_icmp(located)
    if protocol_known and protocol not in (ICMP, ICMPV6):
        located.error(f"{key} requires protocol ICMP or ICMPv6")
    return icmp


def _check_ports(side: _Side, protocol: int | None) -> None:
    for key, ports in side.ports.items():
        numeric = any(isinstance(p, PortRange) for p in ports)
        if protocol is None and numeric:
            side.error(key, "rules with numeric ports must set protocol to TCP, UDP or SCTP")
        elif protocol is not None and protocol not in PORT_PROTOCOLS and ports:
            side.error(key, f"protocol {protocol_name(protocol)} has no ports (ports need protocol TCP, UDP or SCTP)")


def _check_nets(source: _Side, destination: _Side, ip_version: int | None) -> None:
    seen_v4 = seen_v6 = False
    for side in (source, destination):
        for key in ("nets", "notNets"):
            nets = side.nets.get(key, ())
            v4 = any(n.version == 4 for n in nets)
            v6 = any(n.version == 6 for n in nets)
            if ip_version is not None and ((v4 and ip_version != 4) or (v6 and ip_version != 6)):
                side.error(key, f"CIDR IP version does not match the rule's ipVersion {ip_version}")
            if (v4 and v6) or (v4 and seen_v6) or (v6 and seen_v4):
                side.error(key, "the rule mixes IPv4 and IPv6 CIDRs (a rule must use one IP version)")
            seen_v4, seen_v6 = seen_v4 or v4, seen_v6 or v6


def _check_services(ctx: RuleContext, source: _Side, destination: _Side) -> None:
    if ctx.direction == "egress" and source.entity.services is not None:
        source.error("services", "not allowed in an egress rule's source (allowed: egress destination)")
    if ctx.direction == "ingress" and destination.entity.services is not None:
        destination.error("services", "not allowed in an ingress rule's destination (allowed: ingress source)")
    side = source if ctx.direction == "ingress" else destination
    if ctx.global_policy and side.entity.services is not None and side.entity.services.namespace is None:
        side.error("services", "a global policy must give services.namespace")
