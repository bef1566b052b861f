"""`projectcalico.org/v3` kinds: policies (and staged policies), tiers, profiles, network sets
and host endpoints. FelixConfiguration lives in `felix.py`.

Validation follows Calico v3.32: `libcalico-go/lib/validator/v3/validator.go` plus the CRD/CEL
rules in `api/pkg/apis/projectcalico/v3/*.go`.
"""

from __future__ import annotations

import re
from typing import Literal, cast

from enforcer.loader.checks import (
    cidr_value,
    dns_subdomain_error,
    ip_value,
    k8s_port_name_error,
    label_map,
    selector_value,
)
from enforcer.loader.documents import Mapping, Scalar, Sequence
from enforcer.loader.fields import Fields, Value, empty_mapping, quote
from enforcer.loader.metadata import Obj, disabled_flag, forbid_calico_namespace_label
from enforcer.loader.rules import MAX_RULES, RuleContext, parse_protocol, parse_rules
from enforcer.model import (
    PORT_PROTOCOLS,
    Direction,
    HostEndpoint,
    IPAddress,
    IPNetwork,
    NamedPortDef,
    NetworkSet,
    Policy,
    PolicyKind,
    Profile,
    Tier,
)
from enforcer.selector import Selector

POLICY_COMMON = ("tier", "order", "selector", "serviceAccountSelector", "types", "ingress", "egress")
NP_SPEC = (*POLICY_COMMON, "performanceHints")
GNP_SPEC = (*POLICY_COMMON, "namespaceSelector", "doNotTrack", "preDNAT", "applyOnForward", "performanceHints")
STAGED_ACTIONS = ("Set", "Delete", "Learn", "Ignore")
POLICY_TYPES = {"Ingress": "ingress", "Egress": "egress"}
PERFORMANCE_HINTS = ("AssumeNeededOnEveryNode",)
# Built-in tiers whose order Calico fixes (v3.32: kube-admin and kube-baseline host
# ClusterNetworkPolicy).
DEFAULT_TIER_ORDER = 1_000_000.0
BUILTIN_TIER_ORDERS = {"default": 1_000_000.0, "kube-admin": 1_000.0, "kube-baseline": 10_000_000.0}
TIER_ACTIONS: dict[str, Literal["Deny", "Pass"]] = {"Deny": "Deny", "Pass": "Pass"}
# The built-in tiers' default action, as Calico's Tier CRD validation (CEL) fixes it.
BUILTIN_TIER_ACTIONS = {"default": "Deny", "kube-admin": "Pass", "kube-baseline": "Pass"}
INTERFACE_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def spec_fields(obj: Obj, allowed: tuple[str, ...], *, required: bool = False, ignored: tuple[str, ...] = ()) -> Fields:
    spec = obj.root.get_map("spec", allowed, required=required, ignored=ignored)
    return spec if spec is not None else empty_mapping(obj.r, "spec", obj.root.line)


def is_zero(value: Value) -> bool:
    node = value.node
    if isinstance(node, Mapping):
        return not node.entries
    if isinstance(node, Sequence):
        return not node.items
    assert isinstance(node, Scalar)
    return node.value is None or node.value is False or node.value == ""


def require_zero_spec(spec: Fields, keep: tuple[str, ...]) -> None:
    """stagedAction Delete: every spec field except `keep` must be zero-valued."""
    allowed = ", ".join(keep)
    for key in spec.present():
        value = spec.get(key)
        if key not in keep and value is not None and not is_zero(value):
            value.error(f"must not be set when stagedAction is Delete (allowed: {allowed})")


def staged_action(spec: Fields) -> str | None:
    action = spec.get_str("stagedAction") or "Set"
    if action not in STAGED_ACTIONS:
        spec.error_at("stagedAction", f"invalid stagedAction {quote(action)} (allowed: {', '.join(STAGED_ACTIONS)})")
        return None
    return action


def policy_selector(spec: Fields, key: str) -> Selector | None:
    value = spec.get(key)
    return selector_value(value) if value is not None else None


def parse_types(spec: Fields, key: str) -> tuple[Direction, ...]:
    """Types as given (lower-cased, in canonical order); empty when absent."""
    seen: set[str] = set()
    for text, item in spec.get_str_list(key, max_items=2):
        direction = POLICY_TYPES.get(text)
        if direction is None:
            item.error(f"invalid policy type {quote(text)} (allowed: Ingress, Egress)")
        elif direction in seen:
            item.error(f"policy type {quote(text)} is listed more than once")
        else:
            seen.add(direction)
    return tuple(d for d in ("ingress", "egress") if d in seen)


def default_types(has_ingress: bool, has_egress: bool) -> tuple[Direction, ...]:
    """Calico's defaulting (§2.6) for a policy written without `types`."""
    if has_egress:
        return ("ingress", "egress") if has_ingress else ("egress",)
    return ("ingress",)


def load_policy(obj: Obj) -> Policy | None:
    """GlobalNetworkPolicy, NetworkPolicy, StagedGlobalNetworkPolicy, StagedNetworkPolicy."""
    kind = cast(PolicyKind, obj.kind)
    is_global = kind in ("GlobalNetworkPolicy", "StagedGlobalNetworkPolicy")
    staged = kind.startswith("Staged")
    allowed = (GNP_SPEC if is_global else NP_SPEC) + (("stagedAction",) if staged else ())
    spec = spec_fields(obj, allowed)
    action = staged_action(spec) if staged else None
    tier = spec.get_str("tier") or "default"
    problem = dns_subdomain_error(tier, "tier") if spec.has("tier") else None
    if problem:
        spec.error_at("tier", problem)
    disabled = disabled_flag(obj)
    name, namespace = obj.meta.name, obj.meta.namespace
    if action == "Delete":
        require_zero_spec(spec, ("tier", "stagedAction"))
        return Policy(kind, name, namespace, tier=tier, staged_action=action, disabled=disabled, origin=obj.origin)
    order = spec.get_number("order")
    selector = policy_selector(spec, "selector")
    sa_selector = policy_selector(spec, "serviceAccountSelector")
    ns_selector = policy_selector(spec, "namespaceSelector") if is_global else None
    types = parse_types(spec, "types")
    ingress_values = spec.get_list("ingress", MAX_RULES)
    egress_values = spec.get_list("egress", MAX_RULES)
    ingress = parse_rules(ingress_values, RuleContext("ingress", True, is_global))
    egress = parse_rules(egress_values, RuleContext("egress", True, is_global))
    hints: set[str] = set()
    for hint, item in spec.get_str_list("performanceHints"):
        if hint not in PERFORMANCE_HINTS:
            item.error(f"invalid performance hint {quote(hint)} (allowed: {', '.join(PERFORMANCE_HINTS)})")
        elif hint in hints:
            item.error(f"performance hint {quote(hint)} is listed more than once")  # validate:"unique"
        hints.add(hint)
    do_not_track = spec.get_bool("doNotTrack")
    pre_dnat = spec.get_bool("preDNAT")
    apply_on_forward = spec.get_bool("applyOnForward")
    if do_not_track and pre_dnat:
        spec.error_at("preDNAT", "preDNAT and doNotTrack cannot both be true")
    if pre_dnat and egress_values:
        spec.error_at("egress", "a preDNAT policy cannot have egress rules")
    if pre_dnat and "egress" in types:
        spec.error_at("types", "a preDNAT policy cannot have the Egress type")
    if (do_not_track or pre_dnat) and not apply_on_forward:
        spec.error_at("applyOnForward", "applyOnForward must be true when preDNAT or doNotTrack is true")
    if not types:
        types = default_types(bool(ingress_values), bool(egress_values))
    return Policy(
        kind=kind,
        name=name,
        namespace=namespace,
        tier=tier,
        order=order,
        selector=selector,
        namespace_selector=ns_selector,
        service_account_selector=sa_selector,
        types=types,
        ingress=ingress,
        egress=egress,
        do_not_track=do_not_track,
        pre_dnat=pre_dnat,
        apply_on_forward=apply_on_forward,
        staged_action=action,
        disabled=disabled,
        origin=obj.origin,
    )


def load_tier(obj: Obj) -> Tier | None:
    spec = spec_fields(obj, ("order", "defaultAction"))
    order = spec.get_number("order")
    if order is None and not spec.has("order"):
        order = DEFAULT_TIER_ORDER  # Calico's DefaultTierFields: no order means the default tier's
    default_action = spec.get_str("defaultAction") or "Deny"
    if default_action not in TIER_ACTIONS:
        spec.error_at("defaultAction", f"invalid defaultAction {quote(default_action)} (allowed: Deny, Pass)")
        return None
    fixed = BUILTIN_TIER_ORDERS.get(obj.meta.name)
    if fixed is not None and order != fixed:
        spec.error_at("order", f"the built-in tier {quote(obj.meta.name)} must have order {fixed:.0f}")
    builtin_action = BUILTIN_TIER_ACTIONS.get(obj.meta.name)
    if builtin_action is not None and default_action != builtin_action:
        written = "" if spec.has("defaultAction") else " (none written: Deny)"
        message = f"the built-in tier {quote(obj.meta.name)} must have defaultAction {builtin_action}{written}"
        if spec.has("defaultAction"):
            spec.error_at("defaultAction", message)
        else:
            spec.missing("defaultAction", message)
    return Tier(obj.meta.name, order, TIER_ACTIONS[default_action], obj.origin)


def load_profile(obj: Obj) -> Profile | None:
    spec = spec_fields(obj, ("ingress", "egress", "labelsToApply"))
    ingress = parse_rules(spec.get_list("ingress", MAX_RULES), RuleContext("ingress", False))
    egress = parse_rules(spec.get_list("egress", MAX_RULES), RuleContext("egress", False))
    labels = label_map(spec.get("labelsToApply"))
    return Profile(obj.meta.name, labels, ingress, egress, obj.origin)


def load_network_set(obj: Obj) -> NetworkSet | None:
    """NetworkSet and GlobalNetworkSet. Their nets are Calico `cidr`s, which need not be
    strictly masked; they are normalised to the network, as the kernel's ipset would."""
    spec = spec_fields(obj, ("nets",))
    forbid_calico_namespace_label(obj)
    nets: list[IPNetwork] = []
    for item in spec.get_list("nets"):
        net = cidr_value(item, strict=False)
        if net is not None:
            nets.append(net)
    return NetworkSet(obj.meta.name, obj.meta.namespace, obj.meta.labels, tuple(nets), obj.origin)


def load_host_endpoint(obj: Obj) -> HostEndpoint | None:
    spec = spec_fields(obj, ("node", "interfaceName", "expectedIPs", "profiles", "ports"), required=True)
    node = spec.get_str("node")
    if not node:
        spec.missing("node", "node is required (the name of the node this endpoint is on)")
    elif problem := dns_subdomain_error(node, "node"):
        spec.error_at("node", problem)
    interface = spec.get_str("interfaceName") or None
    if interface is not None and interface != "*" and not INTERFACE_RE.match(interface):
        spec.error_at(
            "interfaceName",
            f"invalid interface name {quote(interface)} (allowed: \"*\" or 1-15 letters, digits, '_', '.', '-')",
        )
    expected: list[IPAddress] = []
    for item in spec.get_list("expectedIPs"):
        ip = ip_value(item)
        if ip is not None:
            expected.append(ip)
    if interface is None and not spec.get_list("expectedIPs"):
        spec.missing("interfaceName", "at least one of interfaceName or expectedIPs must be given")
    profiles = []
    for name, item in spec.get_str_list("profiles"):
        problem = dns_subdomain_error(name, "profile name")
        if problem:
            item.error(problem)
        profiles.append(name)
    ports = tuple(p for p in map(endpoint_port, spec.get_list("ports")) if p is not None)
    return HostEndpoint(
        name=obj.meta.name,
        node=node or "",
        labels=obj.meta.labels,
        interface_name=interface,
        expected_ips=tuple(expected),
        profiles=tuple(profiles),
        ports=ports,
        origin=obj.origin,
    )


def endpoint_port(value: Value) -> NamedPortDef | None:
    """A HostEndpoint named port: {name, protocol, port}, protocol TCP, UDP or SCTP."""
    fields = value.as_map(("name", "protocol", "port"))
    if fields is None:
        return None
    name = fields.get_str("name", required=True)
    if name is not None and (problem := k8s_port_name_error(name)):
        fields.error_at("name", problem)
        name = None
    located = fields.get("protocol", required=True)
    protocol = parse_protocol(located) if located is not None else None
    if located is not None and protocol is not None and protocol not in PORT_PROTOCOLS:
        located.error("a named port's protocol must be TCP, UDP or SCTP")
        protocol = None
    port = fields.get_int("port", 1, 65535)
    if not fields.has("port"):
        fields.missing("port")
    if name is None or protocol is None or port is None:
        return None
    return NamedPortDef(name, protocol, port)
