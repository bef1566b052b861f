"""Kubernetes ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`, network-policy-api
v0.2.0), validated as its standard-channel CRD does and converted to Calico form on load as
Calico v3.32 converts it (`libcalico-go/lib/backend/k8s/conversion/clusternetworkpolicy.go`).

* `tier: Admin` → Calico tier `kube-admin` (order 1,000, default action Pass), `Baseline` →
  `kube-baseline` (order 10,000,000, Pass); `priority` → order. The policy is global: kind
  `ClusterNetworkPolicy` (Calico's KubernetesClusterNetworkPolicy, short `kcnp`), its own name.
* Subject `namespaces: S` → namespaceSelector S, selector `projectcalico.org/orchestrator ==
  'k8s'`; `pods: {namespaceSelector, podSelector}` → both (an empty or absent namespace
  selector is `all()`).
* Accept → Allow, Deny, Pass. Each rule → one Calico rule per (protocol group × peer), protocol
  groups sorted by name (named ports have no protocol), ports merged as `SimplifyPorts` does. A
  `namespaces` peer has no pod selector (it matches every endpoint of those namespaces); egress
  `networks` become `nets`, normalised to the network. The rule's `name` is kept as the Calico
  rule annotation `name`.
* Types: Ingress if there are ingress rules, Egress if egress rules; none means both (felix's
  reading of a policy without types).

Calico 3.32 installs the *standard* channel CRD of v0.2.0, which has no `nodes` and no
`domainNames` peers: the API server refuses them, and so does flowtui (Calico's converter has
no translation for them either). Everything else the CRD refuses (enums, ranges, list limits,
exactly-one-of fields) is a FILE:LINE problem here; so Calico's fail-closed replacement of
unconvertible rules is never needed.

The legacy `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy and BaselineAdminNetworkPolicy
are read with their own CRD's validation and translated to ClusterNetworkPolicy (Admin at their
priority; Baseline at priority 0; Allow → Accept; `ports` → `protocols`), with a warning: Calico
≥ 3.32 no longer enforces them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from enforcer.loader.calico import spec_fields
from enforcer.loader.checks import k8s_port_name_error
from enforcer.loader.documents import Sequence
from enforcer.loader.fields import Fields, Value, quote
from enforcer.loader.knp import k8s_cidr, simplify_ports, to_selector
from enforcer.loader.metadata import Obj, disabled_flag
from enforcer.model import (
    KUBE_ADMIN_TIER,
    KUBE_BASELINE_TIER,
    PROTOCOL_NUMBERS,
    Action,
    Direction,
    EntityRule,
    IPNetwork,
    NamedPort,
    Origin,
    Policy,
    Port,
    PortRange,
    Rule,
)
from enforcer.selector import Selector, parse_selector

log = logging.getLogger("flowtui.loader")

CNP_TIERS = {"Admin": KUBE_ADMIN_TIER.name, "Baseline": KUBE_BASELINE_TIER.name}
CNP_ACTIONS: dict[str, Action] = {"Accept": "Allow", "Deny": "Deny", "Pass": "Pass"}
ANP_ACTIONS: dict[str, Action] = {"Allow": "Allow", "Deny": "Deny", "Pass": "Pass"}
BANP_ACTIONS: dict[str, Action] = {"Allow": "Allow", "Deny": "Deny"}
PRIORITY_MAX = 1000
RULE_NAME_MAX = 100
CIDR_MAX_LENGTH = 43
UNSUPPORTED_PEERS = {
    "nodes": "Calico 3.32 installs the standard channel of network-policy-api v0.2.0, which has no "
    "nodes peers (and Calico's converter cannot translate them): select the nodes' addresses "
    "with networks, or use a Calico GlobalNetworkPolicy",
    "domainNames": "Calico 3.32 installs the standard channel of network-policy-api v0.2.0, which "
    "has no domainNames peers: use a Calico policy with domains",
}
_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")

Peer = tuple[Selector | None, Selector | None, tuple[IPNetwork, ...]]
# (protocol name or "" for named ports, the port)
ProtoPort = tuple[str, Port]


@dataclass(frozen=True)
class _Dialect:
    """What differs between ClusterNetworkPolicy and the legacy v1alpha1 kinds."""

    actions: dict[str, Action]
    max_rules: int  # per direction
    max_items: int  # peers and ports per rule
    ports_key: str  # "protocols" or v1alpha1's "ports"
    parse_port: Callable[[Value], ProtoPort | None]
    egress_peers: tuple[str, ...]


def cnp_placement(kind: str, tier: str, priority: str) -> tuple[str, str] | None:
    """(Calico tier, order) of a stored ClusterNetworkPolicy or legacy document, as text; None
    for other kinds."""
    if kind == "ClusterNetworkPolicy":
        return CNP_TIERS.get(tier, tier), priority
    if kind == "AdminNetworkPolicy":
        return KUBE_ADMIN_TIER.name, priority
    if kind == "BaselineAdminNetworkPolicy":
        return KUBE_BASELINE_TIER.name, "0"
    return None


def load_cnp(obj: Obj) -> Policy | None:
    spec = spec_fields(obj, ("tier", "priority", "subject", "ingress", "egress"), required=True)
    tier_text = spec.get_str("tier", required=True)
    tier = CNP_TIERS.get(tier_text) if tier_text is not None else None
    if tier_text is not None and tier is None:
        spec.error_at("tier", f"invalid tier {quote(tier_text)} (allowed: Admin, Baseline)")
    priority = _priority(spec)
    return _policy(obj, spec, tier, priority, _CNP)


def load_anp(obj: Obj) -> Policy | None:
    spec = spec_fields(obj, ("priority", "subject", "ingress", "egress"), required=True)
    policy = _policy(obj, spec, KUBE_ADMIN_TIER.name, _priority(spec), _ANP)
    _warn_legacy(obj, "AdminNetworkPolicy", f"tier: Admin, priority: {policy.order:.0f}" if policy else "")
    return policy


def load_banp(obj: Obj) -> Policy | None:
    spec = spec_fields(obj, ("subject", "ingress", "egress"), required=True)
    if obj.meta.name and obj.meta.name != "default":
        obj.r.error(obj.meta.line, "metadata.name",
                    'only one BaselineAdminNetworkPolicy may exist and it must be named "default"')
    policy = _policy(obj, spec, KUBE_BASELINE_TIER.name, 0, _BANP)
    _warn_legacy(obj, "BaselineAdminNetworkPolicy", "tier: Baseline, priority: 0")
    return policy


def _warn_legacy(obj: Obj, kind: str, translated: str) -> None:
    """Once per policy and process: `apply` reads the user's file and the stored copy."""
    key = (kind, obj.meta.name)
    if obj.r.problems or key in _warned:
        return
    _warned.add(key)
    log.warning(
        "%s: %s: warning: policy.networking.k8s.io/v1alpha1 %s is read as the ClusterNetworkPolicy "
        "%s (%s); Calico >= 3.32 no longer enforces %s: rewrite it as policy.networking.k8s.io/v1alpha2",
        obj.origin, obj.r.obj, kind, obj.meta.name, translated, kind,
    )


_warned: set[tuple[str, str]] = set()


def _priority(spec: Fields) -> int | None:
    if not spec.has("priority"):
        spec.missing("priority")
        return None
    return spec.get_int("priority", 0, PRIORITY_MAX)


def _policy(obj: Obj, spec: Fields, tier: str | None, priority: int | None, dialect: _Dialect) -> Policy | None:
    subject = _subject(spec)
    ingress = _rules(spec, "ingress", dialect)
    egress = _rules(spec, "egress", dialect)
    if obj.r.problems or tier is None or priority is None or subject is None:
        return None
    directions: tuple[tuple[Direction, list[Rule]], ...] = (("ingress", ingress), ("egress", egress))
    types = tuple(d for d, rules in directions if rules) or ("ingress", "egress")
    selector, namespace_selector = subject
    return Policy(
        "ClusterNetworkPolicy",
        obj.meta.name,
        None,
        tier=tier,
        order=float(priority),
        selector=selector,
        namespace_selector=namespace_selector,
        types=types,
        ingress=tuple(ingress),
        egress=tuple(egress),
        disabled=disabled_flag(obj),
        origin=obj.origin,
    )


# --------------------------------------------------------------------------------------------
# Subjects and peers


def _one_of(value: Value, fields: Fields, keys: tuple[str, ...], what: str) -> str | None:
    """The one field of `keys` that is set (MinProperties=1, MaxProperties=1)."""
    present = [k for k in keys if fields.has(k)]
    if len(present) != 1:
        listed = ", ".join(keys)
        got = f" (got {', '.join(present)})" if present else ""
        value.error(f"{what} must set exactly one of {listed}{got}")
        return None
    return present[0]


def _pod_selector(value: Value | None, anchor: Value) -> Selector | None:
    return to_selector(value, pod=True, anchor=anchor)


def _namespace_selector(value: Value | None, anchor: Value) -> Selector | None:
    """A LabelSelector of namespaces; absent or empty selects every namespace (`all()`)."""
    if value is None:
        return parse_selector("all()")
    return to_selector(value, pod=False, anchor=anchor)


def _namespaced_pod(value: Value) -> tuple[Selector | None, Selector | None] | None:
    fields = value.as_map(("namespaceSelector", "podSelector"))
    if fields is None:
        return None
    pods = fields.get("podSelector")
    if pods is None:
        fields.missing("podSelector", "podSelector is required ({} selects every pod)")
        return None
    return _pod_selector(pods, value), _namespace_selector(fields.get("namespaceSelector"), value)


def _subject(spec: Fields) -> tuple[Selector | None, Selector | None] | None:
    value = spec.get("subject", required=True)
    if value is None:
        return None
    fields = value.as_map(("namespaces", "pods"))
    if fields is None:
        return None
    key = _one_of(value, fields, ("namespaces", "pods"), "subject")
    located = fields.get(key) if key else None
    if located is None:
        return None
    if key == "namespaces":
        return _pod_selector(None, value), _namespace_selector(located, value)
    return _namespaced_pod(located)


def _peer(value: Value, direction: Direction, dialect: _Dialect) -> Peer | None:
    egress = direction == "egress"
    allowed = dialect.egress_peers if egress else ("namespaces", "pods")
    fields = value.as_map(allowed, ignored=tuple(UNSUPPORTED_PEERS) if egress else ())
    if fields is None:
        return None
    for unsupported, why in UNSUPPORTED_PEERS.items():
        entry = fields.mapping.entries.get(unsupported)
        if entry is not None and egress:
            message = f"{unsupported} peers are not supported: {why}"
            value.r.error(entry.key_line, f"{value.path}.{unsupported}", message)
            return None
    key = _one_of(value, fields, allowed, "a peer")
    located = fields.get(key) if key else None
    if located is None:
        return None
    if key == "namespaces":
        return None, _namespace_selector(located, value), ()
    if key == "pods":
        pod = _namespaced_pod(located)
        return (pod[0], pod[1], ()) if pod else None
    return None, None, _networks(located)


def _networks(value: Value) -> tuple[IPNetwork, ...]:
    items = _bounded_list(value, 25)
    nets: list[IPNetwork] = []
    seen: dict[str, int] = {}
    for item in items:
        text = item.as_str()
        if text is None:
            continue
        if len(text) > CIDR_MAX_LENGTH:
            item.error(f"{quote(text)} is longer than {CIDR_MAX_LENGTH} characters")
            continue
        if text in seen:
            item.error(f"duplicate value {quote(text)} (networks is a set)")
            continue
        seen[text] = item.line
        net = k8s_cidr(item)
        if net is not None:
            nets.append(net)
    return tuple(nets)


def _bounded_list(value: Value, max_items: int) -> list[Value]:
    """A list with MinItems=1 and MaxItems=`max_items`."""
    items = value.as_list(max_items)
    if not items and isinstance(value.node, Sequence):
        value.error("must have at least 1 entry")
    return items


# --------------------------------------------------------------------------------------------
# Rules and protocols


def _rules(spec: Fields, direction: Direction, dialect: _Dialect) -> list[Rule]:
    out: list[Rule] = []
    for item in spec.get_list(direction, dialect.max_rules):
        out += _rule(item, direction, dialect)
    return out


def _rule(value: Value, direction: Direction, dialect: _Dialect) -> list[Rule]:
    peers_key = "from" if direction == "ingress" else "to"
    fields = value.as_map(("name", "action", peers_key, dialect.ports_key))
    if fields is None:
        return []
    before = len(value.r.problems)
    name = fields.get_str("name")
    if name is not None and len(name) > RULE_NAME_MAX:
        fields.error_at("name", f"is {len(name)} characters long (at most {RULE_NAME_MAX} allowed)")
    action_text = fields.get_str("action", required=True)
    action = dialect.actions.get(action_text) if action_text is not None else None
    if action_text is not None and action is None:
        fields.error_at("action", f"invalid action {quote(action_text)} (allowed: {', '.join(dialect.actions)})")
    located_peers = fields.get(peers_key, required=True)
    peers = [_peer(v, direction, dialect) for v in _bounded_list(located_peers, dialect.max_items)] \
        if located_peers is not None else []
    located_ports = fields.get(dialect.ports_key)
    ports = [dialect.parse_port(v) for v in _bounded_list(located_ports, dialect.max_items)] \
        if located_ports is not None else []
    if len(value.r.problems) != before or action is None:
        return []
    groups: dict[str, list[Port]] = {}
    for proto_port in ports:
        assert proto_port is not None
        protocol, port = proto_port
        groups.setdefault(protocol, []).append(port)
    protocols: list[tuple[str, tuple[Port, ...]]] = [(p, simplify_ports(groups[p])) for p in sorted(groups)] \
        or [("", ())]
    annotations = (("name", name),) if name else ()
    origin = Origin(value.r.file, value.line)
    rules = []
    for protocol, merged in protocols:
        number = PROTOCOL_NUMBERS[protocol] if protocol else None
        for peer in peers:
            assert peer is not None
            selector, namespace_selector, nets = peer
            entity = EntityRule(nets=nets, selector=selector, namespace_selector=namespace_selector)
            if direction == "ingress":
                source, destination = entity, EntityRule(ports=merged)
            else:
                source = EntityRule()
                destination = EntityRule(nets=nets, selector=selector, namespace_selector=namespace_selector,
                                         ports=merged)
            rules.append(Rule(action, protocol=number, source=source, destination=destination,
                              annotations=annotations, origin=origin))
    return rules


def _cnp_protocol(value: Value) -> ProtoPort | None:
    """{tcp|udp|sctp: {destinationPort: {number | range}}} or {destinationNamedPort: NAME}."""
    fields = value.as_map(("tcp", "udp", "sctp", "destinationNamedPort"))
    if fields is None:
        return None
    key = _one_of(value, fields, ("tcp", "udp", "sctp", "destinationNamedPort"), "a protocol")
    located = fields.get(key) if key else None
    if located is None or key is None:
        return None
    if key == "destinationNamedPort":
        return _named_port(located)
    proto = located.as_map(("destinationPort",))
    if proto is None:
        return None
    port_value = proto.get("destinationPort")
    if port_value is None:
        located.error("must set destinationPort")
        return None
    port_fields = port_value.as_map(("number", "range"))
    if port_fields is None:
        return None
    which = _one_of(port_value, port_fields, ("number", "range"), "destinationPort")
    if which == "number":
        number = port_fields.get_int("number", 1, 65535)
        return (key.upper(), PortRange(number, number)) if number is not None else None
    if which == "range":
        located_range = port_fields.get("range")
        assert located_range is not None
        span = _port_range(located_range, ("start", "end"))
        return (key.upper(), span) if span is not None else None
    return None


def _named_port(value: Value) -> ProtoPort | None:
    text = value.as_str()
    if text is None:
        return None
    if problem := k8s_port_name_error(text):
        value.error(problem)
        return None
    return "", NamedPort(text)


def _port_range(value: Value, allowed: tuple[str, ...]) -> PortRange | None:
    fields = value.as_map(allowed)
    if fields is None:
        return None
    start, end = (_required_int(fields, key) for key in ("start", "end"))
    if start is None or end is None:
        return None
    if start >= end:
        value.error(f"start port {start} must be less than end port {end}")
        return None
    return PortRange(start, end)


def _required_int(fields: Fields, key: str) -> int | None:
    if not fields.has(key):
        fields.missing(key)
        return None
    return fields.get_int(key, 1, 65535)


def _anp_port(value: Value) -> ProtoPort | None:
    """v1alpha1 `ports`: {portNumber: {protocol, port}} | {namedPort} | {portRange: {protocol, start, end}}."""
    fields = value.as_map(("portNumber", "namedPort", "portRange"))
    if fields is None:
        return None
    key = _one_of(value, fields, ("portNumber", "namedPort", "portRange"), "a port")
    located = fields.get(key) if key else None
    if located is None:
        return None
    if key == "namedPort":
        return _named_port(located)
    if key == "portNumber":
        number = located.as_map(("protocol", "port"))
        if number is None:
            return None
        protocol = _anp_protocol(number, required=True)
        port = _required_int(number, "port")
        return (protocol, PortRange(port, port)) if protocol and port is not None else None
    span_fields = located.as_map(("protocol", "start", "end"))
    if span_fields is None:
        return None
    protocol = _anp_protocol(span_fields, required=False)
    span = _port_range(located, ("protocol", "start", "end"))
    return (protocol, span) if protocol and span is not None else None


def _anp_protocol(fields: Fields, *, required: bool) -> str | None:
    if not fields.has("protocol"):
        if required:
            fields.missing("protocol")
            return None
        return "TCP"
    text = fields.get_str("protocol")
    if text is not None and text not in _PORT_PROTOCOLS:
        fields.error_at("protocol", f"invalid protocol {quote(text)} (allowed: {', '.join(_PORT_PROTOCOLS)})")
        return None
    return text


_CNP = _Dialect(CNP_ACTIONS, 25, 25, "protocols", _cnp_protocol, ("namespaces", "pods", "networks"))
_ANP = _Dialect(ANP_ACTIONS, 100, 100, "ports", _anp_port, ("namespaces", "pods", "networks"))
_BANP = _Dialect(BANP_ACTIONS, 100, 100, "ports", _anp_port, ("namespaces", "pods", "networks"))
