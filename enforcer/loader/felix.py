"""`FelixConfiguration`: the few Felix settings that change policy semantics.

flowtui models failsafe ports, `defaultEndpointToHostAction` and the WireGuard switches. The
common Felix settings of `felix_fields.FELIX_FIELD_CHECKS` are validated as Calico validates
them and then ignored (they tune Calico's own dataplane, logging and reporting, which flowtui
replaces); any other field is an error, so a typo in a setting that matters is never silently
dropped.

Only the FelixConfiguration named `default` feeds `ResourceSet.felix`. Per-node objects
(`node.<nodename>`, which Calico creates by itself) are accepted when they set none of the
modelled fields; flowtui has no per-node Felix settings.
"""

from __future__ import annotations

from typing import Literal

from enforcer.loader.calico import spec_fields
from enforcer.loader.checks import cidr_value, dns_subdomain_error
from enforcer.loader.felix_fields import FELIX_FIELD_CHECKS, check_felix_fields
from enforcer.loader.fields import Fields, Value, quote
from enforcer.loader.metadata import Obj
from enforcer.model import FailsafePort, FelixConfiguration

MODELLED_FELIX_FIELDS = (
    "failsafeInboundHostPorts",
    "failsafeOutboundHostPorts",
    "defaultEndpointToHostAction",
    "wireguardEnabled",
    "wireguardEnabledV6",
)
# Felix reads it case-insensitively (the schema's pattern is `^(?i)(Drop|Accept|Return)?$`).
ENDPOINT_TO_HOST_ACTIONS: dict[str, Literal["Drop", "Accept", "Return"]] = {
    "drop": "Drop",
    "accept": "Accept",
    "return": "Return",
}
# validateProtoPort: exactly these spellings.
FAILSAFE_PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def load_felix(obj: Obj) -> FelixConfiguration | None:
    name = obj.meta.name
    spec = spec_fields(obj, (*MODELLED_FELIX_FIELDS, *FELIX_FIELD_CHECKS))
    check_felix_fields(spec)
    if name != "default":
        if not name.startswith("node.") or dns_subdomain_error(name[len("node.") :]):
            obj.r.error(
                obj.meta.line,
                "metadata.name",
                f"FelixConfiguration {quote(name)} has no effect (allowed names: default, node.<nodename>)",
            )
            return None
        for key in MODELLED_FELIX_FIELDS:
            if spec.has(key):
                spec.error_at(key, "flowtui has no per-node Felix settings: set it in FelixConfiguration default")
        return None
    action = (spec.get_str("defaultEndpointToHostAction") or "Accept").lower()
    if action not in ENDPOINT_TO_HOST_ACTIONS:
        written = spec.get_str("defaultEndpointToHostAction")
        spec.error_at(
            "defaultEndpointToHostAction",
            f"invalid defaultEndpointToHostAction {quote(written)} (allowed: Drop, Accept, Return, in any case)",
        )
    defaults = FelixConfiguration()
    inbound = failsafes(spec, "failsafeInboundHostPorts")
    outbound = failsafes(spec, "failsafeOutboundHostPorts")
    wireguard_enabled = spec.get_bool("wireguardEnabled")
    wireguard_enabled_v6 = spec.get_bool("wireguardEnabledV6")
    if action not in ENDPOINT_TO_HOST_ACTIONS:
        return None
    return FelixConfiguration(
        name=name,
        failsafe_inbound=defaults.failsafe_inbound if inbound is None else inbound,
        failsafe_outbound=defaults.failsafe_outbound if outbound is None else outbound,
        default_endpoint_to_host_action=ENDPOINT_TO_HOST_ACTIONS[action],
        wireguard_enabled=wireguard_enabled,
        wireguard_enabled_v6=wireguard_enabled_v6,
        origin=obj.origin,
    )


def failsafes(spec: Fields, key: str) -> tuple[FailsafePort, ...] | None:
    """A list of {protocol, port, net}; None when absent (Felix's defaults apply), `[]` for none."""
    if not spec.has(key):
        return None
    return tuple(p for p in map(failsafe_port, spec.get_list(key)) if p is not None)


def failsafe_port(value: Value) -> FailsafePort | None:
    fields = value.as_map(("protocol", "port", "net"))
    if fields is None:
        return None
    protocol_text = fields.get_str("protocol", required=True)
    protocol = FAILSAFE_PROTOCOLS.get(protocol_text or "")
    if protocol_text is not None and protocol is None:
        fields.error_at("protocol", f"invalid failsafe protocol {quote(protocol_text)} (allowed: TCP, UDP, SCTP)")
    port = fields.get_int("port", 0, 65535)
    if not fields.has("port"):
        fields.missing("port")
    net_value = fields.get("net")
    net = None
    if net_value is not None and net_value.raw != "":
        net = cidr_value(net_value, strict=False)
        if net is None:
            return None
    if protocol is None or port is None:
        return None
    return FailsafePort(protocol, port, net)
