"""Kubernetes `networking.k8s.io/v1` NetworkPolicy (and Calico's StagedKubernetesNetworkPolicy),
validated as the Kubernetes API server does and converted to Calico form on load.

The conversion is Calico's (`libcalico-go/lib/backend/k8s/conversion/conversion.go`,
`K8sNetworkPolicyToCalico`), v3.32 identity: kind `KubernetesNetworkPolicy`, the policy's own
name, tier `default`, order 1000.

* podSelector → `projectcalico.org/orchestrator == 'k8s'` plus one term per matchLabels entry
  (sorted by key) and per matchExpression, joined with ` && `.
* Each k8s rule → one Allow rule per (protocol group × peer). Ports are grouped per protocol
  (sorted by protocol name), numeric ports merged into minimal ranges (`SimplifyPorts`).
* ipBlock → `nets: [cidr]` normalised to the network address, `except` → `notNets`.
* A peer's missing namespaceSelector means "the policy's namespace"; an empty one (`{}`) is
  `all()`.

**policyTypes defaulting.** Calico itself never defaults `policyTypes`: it relies on the
Kubernetes API server having done so, and treats a policy without types as `[Ingress]`. Files
written by hand never went through the API server, so the loader applies the API server's
defaulting itself (`SetDefaults_NetworkPolicy`): `Ingress`, plus `Egress` when the spec has a
non-empty `egress` list. The same defaulting is applied to StagedKubernetesNetworkPolicy, so that
a staged policy previews exactly what the enforced one will do.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from enforcer.loader.calico import parse_types, require_zero_spec, spec_fields, staged_action
from enforcer.loader.checks import (
    k8s_port_name_error,
    label_value_error,
    parse_cidr,
    qualified_name_error,
)
from enforcer.loader.fields import Value, quote
from enforcer.loader.metadata import Obj, disabled_flag
from enforcer.model import (
    KNP_ORDER,
    PROTOCOL_NUMBERS,
    Direction,
    EntityRule,
    IPNetwork,
    NamedPort,
    Origin,
    Policy,
    PolicyKind,
    Port,
    PortRange,
    Rule,
)
from enforcer.selector import Selector, SelectorError, parse_selector

KNP_SPEC = ("podSelector", "policyTypes", "ingress", "egress")
PEER_FIELDS = ("podSelector", "namespaceSelector", "ipBlock")
PORT_FIELDS = ("protocol", "port", "endPort")
K8S_PROTOCOLS = ("TCP", "UDP", "SCTP")
ORCHESTRATOR_TERM = "projectcalico.org/orchestrator == 'k8s'"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

Peer = tuple[Selector | None, Selector | None, tuple[IPNetwork, ...], tuple[IPNetwork, ...]]


def load_knp(obj: Obj) -> Policy | None:
    kind = cast(PolicyKind, obj.kind)
    staged = kind == "StagedKubernetesNetworkPolicy"
    spec = spec_fields(obj, KNP_SPEC + (("stagedAction",) if staged else ()))
    action = staged_action(spec) if staged else None
    base = Policy(
        kind,
        obj.meta.name,
        obj.meta.namespace,
        tier="default",
        order=KNP_ORDER,
        staged_action=action,
        disabled=disabled_flag(obj),
        origin=obj.origin,
    )
    if action == "Delete":
        require_zero_spec(spec, ("stagedAction",))
        return base
    selector = to_selector(spec.get("podSelector"), pod=True, anchor=spec.value)
    types = parse_types(spec, "policyTypes")
    ingress_values, egress_values = spec.get_list("ingress"), spec.get_list("egress")
    ingress = [rule for v in ingress_values for rule in convert_rule(v, "ingress")]
    egress = [rule for v in egress_values for rule in convert_rule(v, "egress")]
    if not types:
        types = ("ingress", "egress") if egress_values else ("ingress",)
    return replace(base, selector=selector, types=types, ingress=tuple(ingress), egress=tuple(egress))


# --------------------------------------------------------------------------------------------
# Label selectors


def selector_terms(value: Value) -> list[str] | None:
    """The Calico terms of a k8s LabelSelector, validated as Kubernetes does; None on error."""
    fields = value.as_map(("matchLabels", "matchExpressions"))
    if fields is None:
        return None
    before = len(value.r.problems)
    terms: list[str] = []
    match_labels = fields.get("matchLabels")
    labels = match_labels.as_str_map() if match_labels is not None else []
    for label, text, located_label in sorted(labels, key=lambda entry: entry[0]):
        problem = qualified_name_error(label) or label_value_error(text)
        if problem:
            located_label.error(problem)
        terms.append(f"{label} == '{text}'")
    for item in fields.get_list("matchExpressions"):
        expression = item.as_map(("key", "operator", "values"))
        if expression is None:
            continue
        key = expression.get_str("key", required=True)
        operator = expression.get_str("operator", required=True)
        values = expression.get_str_list("values")
        if key is not None and (problem := qualified_name_error(key)):
            expression.error_at("key", problem)
        for entry, located in values:
            if problem := label_value_error(entry):
                located.error(problem)
        if operator is None or key is None:
            continue
        listed = "', '".join(entry for entry, _ in values)
        if operator in ("In", "NotIn"):
            if not values:
                expression.error_at("values", f"operator {operator} needs at least one value")
            terms.append(f"{key} {'in' if operator == 'In' else 'not in'} {{ '{listed}' }}")
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                expression.error_at("values", f"operator {operator} takes no values")
            terms.append(f"has({key})" if operator == "Exists" else f"! has({key})")
        else:
            expression.error_at("operator", f"invalid operator {quote(operator)} (allowed: {', '.join(OPERATORS)})")
    return terms if len(value.r.problems) == before else None


def to_selector(value: Value | None, *, pod: bool, anchor: Value) -> Selector | None:
    """k8sSelectorToCalico: pod selectors always carry the orchestrator term; a namespace
    selector that is absent gives None and one without terms gives `all()`."""
    terms = [ORCHESTRATOR_TERM] if pod else []
    if value is not None:
        parsed = selector_terms(value)
        if parsed is None:
            return None
        if not pod and not parsed:
            terms = ["all()"]
        terms += parsed
    if not terms:
        return None
    text = " && ".join(terms)
    try:
        return parse_selector(text)
    except SelectorError as exc:  # cannot happen for validated labels; reported, not raised
        (value or anchor).error(f"cannot convert to a Calico selector {quote(text)}: {exc}")
        return None


# --------------------------------------------------------------------------------------------
# Rules


def convert_rule(value: Value, direction: Direction) -> list[Rule]:
    peers_key = "from" if direction == "ingress" else "to"
    fields = value.as_map((peers_key, "ports"))
    if fields is None:
        return []
    before = len(value.r.problems)
    peers = [convert_peer(v) for v in fields.get_list(peers_key)]
    ports = [convert_port(v) for v in fields.get_list("ports")]
    if len(value.r.problems) != before:
        return []
    groups: dict[str, list[Port] | None] = {}
    if not ports:
        groups[""] = None
    for item in ports:
        assert item is not None
        protocol, port = item
        if port is None:
            groups[protocol] = None  # all ports of this protocol
        elif protocol not in groups:
            groups[protocol] = [port]
        elif (group := groups[protocol]) is not None:
            group.append(port)  # a protocol whose group is None already allows all ports
    rules = []
    origin = Origin(value.r.file, value.line)
    for protocol in sorted(groups):
        merged = simplify_ports(groups[protocol])
        number = PROTOCOL_NUMBERS[protocol] if protocol else None
        for peer in peers or [None]:
            selector, namespace_selector, nets, not_nets = peer or (None, None, (), ())
            entity = EntityRule(nets=nets, not_nets=not_nets, selector=selector, namespace_selector=namespace_selector)
            if direction == "ingress":
                ports_only = EntityRule(ports=merged)
                rules.append(Rule("Allow", protocol=number, source=entity, destination=ports_only, origin=origin))
            else:
                with_ports = EntityRule(
                    nets=nets,
                    not_nets=not_nets,
                    selector=selector,
                    namespace_selector=namespace_selector,
                    ports=merged,
                )
                rules.append(Rule("Allow", protocol=number, destination=with_ports, origin=origin))
    return rules


def simplify_ports(ports: list[Port] | None) -> tuple[Port, ...]:
    """Calico's SimplifyPorts: named ports first (in order), then numeric ports merged into the
    fewest ranges; lists with at most one numeric port are returned unchanged."""
    if ports is None:
        return ()
    numeric = sorted((p.first, p.last) for p in ports if isinstance(p, PortRange))
    if len(ports) <= 1 or sum(last - first + 1 for first, last in numeric) <= 1:
        return tuple(ports)
    merged: list[list[int]] = []
    for first, last in numeric:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    named = [p for p in ports if isinstance(p, NamedPort)]
    return (*named, *(PortRange(first, last) for first, last in merged))


def convert_peer(value: Value) -> Peer | None:
    fields = value.as_map(PEER_FIELDS)
    if fields is None:
        return None
    block = fields.get("ipBlock")
    if block is not None:
        if fields.has("podSelector") or fields.has("namespaceSelector"):
            block.error("ipBlock cannot be combined with podSelector or namespaceSelector in one peer")
            return None
        return convert_ip_block(block)
    if not fields.has("podSelector") and not fields.has("namespaceSelector"):
        value.error("a peer must set podSelector, namespaceSelector or ipBlock")
        return None
    selector = to_selector(fields.get("podSelector"), pod=True, anchor=value)
    namespace_selector = to_selector(fields.get("namespaceSelector"), pod=False, anchor=value)
    return (selector, namespace_selector, (), ())


def k8s_cidr(value: Value) -> IPNetwork | None:
    text = value.as_str()
    if text is None:
        return None
    net, problem = parse_cidr(text, strict=False) if "/" in text else (None, f"{quote(text)} has no /prefix")
    if problem:
        value.error(f"{problem} (allowed: a CIDR such as 10.0.0.0/8)")
    return net


def convert_ip_block(value: Value) -> Peer | None:
    fields = value.as_map(("cidr", "except"))
    if fields is None:
        return None
    located = fields.get("cidr", required=True)
    cidr = k8s_cidr(located) if located is not None else None
    excepts: list[IPNetwork] = []
    for item in fields.get_list("except"):
        net = k8s_cidr(item)
        if net is None or cidr is None:
            continue
        if not strict_subnet(net, cidr):
            item.error(f"{net} must be a strict subset of cidr {cidr}")
            continue
        excepts.append(net)
    if cidr is None:
        return None
    return (None, None, (cidr,), tuple(excepts))


def strict_subnet(inner: IPNetwork, outer: IPNetwork) -> bool:
    return (
        inner.version == outer.version
        and inner.prefixlen > outer.prefixlen
        and int(outer.network_address) <= int(inner.network_address) <= int(outer.broadcast_address)
    )


def convert_port(value: Value) -> tuple[str, Port | None] | None:
    fields = value.as_map(PORT_FIELDS)
    if fields is None:
        return None
    before = len(value.r.problems)
    protocol = fields.get_str("protocol") or "TCP"
    if protocol not in K8S_PROTOCOLS:
        fields.error_at("protocol", f"invalid protocol {quote(protocol)} (allowed: {', '.join(K8S_PROTOCOLS)})")
    located = fields.get("port")
    end_port = fields.get_int("endPort", 1, 65535)
    port: Port | None = None
    if located is None:
        if fields.has("endPort"):
            fields.error_at("endPort", "endPort needs a numeric port")
    elif isinstance(located.raw, str):
        if problem := k8s_port_name_error(located.raw):
            located.error(f"{problem} (allowed: a number 1-65535 or a port name)")
        elif fields.has("endPort"):
            fields.error_at("endPort", "endPort cannot be used with a named port")
        port = NamedPort(located.raw)
    else:
        number = located.as_int(1, 65535)
        if number is not None and end_port is not None and end_port < number:
            fields.error_at("endPort", f"endPort {end_port} must be greater than or equal to port {number}")
        if number is not None:
            port = PortRange(number, end_port if end_port is not None else number)
    if len(value.r.problems) != before:
        return None
    return protocol, port
