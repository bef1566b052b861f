"""Calico v3.32's validation of the FelixConfiguration fields flowtui accepts but does not model.

Transcribed from the FelixConfiguration API types (`api/pkg/apis/projectcalico/v3/felixconfig.go`:
field types, `+kubebuilder:validation` markers, which become the CRD schema) and libcalico-go's
validator (`validate:` tags and `validateFelixConfigSpec`). Each field has one check; a value
Calico would refuse is an error at its line, so a typo in a setting flowtui ignores is still
caught as Calico would catch it.

Enumerations: an `enum` in the schema is case-sensitive; a `(?i)` pattern is not (Felix reads
those values case-insensitively), unless the validator's `oneof` is also applied, which is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from enforcer.loader.checks import dns_label_error
from enforcer.loader.fields import Fields, Value, quote

Check = Callable[[Value], None]

# The schema's duration pattern, as generated: `\\.` is a literal backslash then any character,
# so Calico refuses "1.5s" (write "1500ms") and accepts "90s", "1m30s".
_DURATION = re.compile(r"^([0-9]+(\\.[0-9]+)?(ms|s|m|h))*$")
_GO_DURATION = re.compile(r"^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$|^0$")
_INTERFACE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
_PROMETHEUS_HOST = re.compile(r"^[a-zA-Z0-9:._+-]{1,64}$")
_HTO_NAME = re.compile(r"^[a-zA-Z0-9_ -]+$")
INT64_MAX = 2**63 - 1


def boolean(value: Value) -> None:
    value.as_bool()


def integer(low: int = -(2**63), high: int = INT64_MAX) -> Check:
    def check(value: Value) -> None:
        value.as_int(low, high)

    return check


def string(value: Value) -> None:
    value.as_str()


def pattern(regex: str, what: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Value) -> None:
        text = value.as_str()
        if text is not None and not compiled.search(text):
            value.error(f"invalid value {quote(text)} ({what})")

    return check


def enum(*allowed: str, case_sensitive: bool = True) -> Check:
    lower = {a.lower(): a for a in allowed}

    def check(value: Value) -> None:
        text = value.as_str()
        if text is None or text in allowed or (not case_sensitive and (text == "" or text.lower() in lower)):
            return
        case = "" if case_sensitive else ", in any case"
        value.error(f"invalid value {quote(text)} (allowed: {', '.join(allowed)}{case})")

    return check


def any_case(*allowed: str) -> Check:
    return enum(*allowed, case_sensitive=False)


def duration(value: Value) -> None:
    text = value.as_str()
    if text is not None and not _DURATION.match(text):
        value.error(f"invalid duration {quote(text)} (a whole number of h, m, s or ms: 90s, 1m30s, 1500ms)")


def go_duration(value: Value) -> None:
    text = value.as_str()
    if text is not None and not _GO_DURATION.match(text):
        value.error(f"invalid duration {quote(text)} (such as 300ms, 1.5s, 2h45m)")


def regexp(value: Value) -> None:
    text = value.as_str()
    if text:
        try:
            re.compile(text)
        except re.error as exc:
            value.error(f"invalid regular expression {quote(text)}: {exc}")


def interface(value: Value) -> None:
    text = value.as_str()
    if text and not _INTERFACE.match(text):
        value.error(f"invalid interface name {quote(text)} (1-15 letters, digits, '_', '.', '-')")


def prometheus_host(value: Value) -> None:
    text = value.as_str()
    if text and not _PROMETHEUS_HOST.match(text):
        value.error(f"invalid host {quote(text)} (1-64 letters, digits and ':._+-')")


def ip_of(version: int) -> Check:
    def check(value: Value) -> None:
        text = value.as_str()
        if not text:
            return
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            value.error(f"{quote(text)} is not a valid IP address")
            return
        if ip.version != version:
            value.error(f"must be a valid IPv{version} address, not {quote(text)}")

    return check


def port_range(value: Value, *, named: bool = True) -> None:
    """numorstring.Port: a number 0-65535 or "MIN:MAX" (or, where allowed, a port name)."""
    raw = value.raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        value.as_int(0, 65535)
        return
    text = value.as_str() if not isinstance(raw, int) else None
    if text is None:
        return
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if not low <= high <= 65535:
            value.error(f"invalid port range {quote(text)} (MIN:MAX within 0-65535, MIN <= MAX)")
    elif text.isdigit():
        if int(text) > 65535:
            value.error(f"port {text} is out of range (0-65535)")
    elif not named:
        value.error(f"{quote(text)}: node port ranges should not contain named ports")
    elif not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text) or len(text) > 15:
        value.error(f"invalid port {quote(text)} (a number, MIN:MAX or a port name)")


def node_port_ranges(value: Value) -> None:
    items = value.as_list()
    if items is None:
        return
    if len(items) > 7:
        value.error(f"node port ranges list is too long: {len(items)} items (at most 7)")
    for item in items:
        port_range(item, named=False)


def external_nodes(value: Value) -> None:
    for item in value.as_list() or []:
        text = item.as_str()
        if text is None:
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            item.error(f"{quote(text)} is not a valid CIDR or IP address")
            continue
        if net.version != 4:
            item.error(f"{quote(text)}: an IPv6 CIDR is not allowed here")


def string_list(value: Value) -> None:
    for item in value.as_list() or []:
        item.as_str()


def string_map(value: Value) -> None:
    value.as_str_map()


def openstack_region(value: Value) -> None:
    text = value.as_str()
    if not text:
        return
    if len(text) > 63 - len("openstack-region-"):
        value.error(f"openstack region {quote(text)} is too long (at most 46 characters)")
    elif problem := dns_label_error(text, "openstack region"):
        value.error(problem)


def _required_int(fields: Fields, key: str) -> int | None:
    if not fields.has(key):
        fields.missing(key)
        return None
    return fields.get_int(key)


def route_table_range(value: Value) -> None:
    fields = value.as_map(("min", "max"))
    if fields is None:
        return
    low, high = _required_int(fields, "min"), _required_int(fields, "max")
    if low is not None and high is not None and not 1 <= low <= high <= 250:
        value.error("must be a range of route table indices within 1..250")


def route_table_ranges(value: Value) -> None:
    for item in value.as_list() or []:
        fields = item.as_map(("min", "max"))
        if fields is None:
            continue
        low, high = _required_int(fields, "min"), _required_int(fields, "max")
        if low is not None and low < 1:
            item.error("min must be >= 1")
        if low is not None and high is not None and low > high:
            item.error("min must not be greater than max")
        if high is not None and high > 0xFFFFFFFF:
            item.error("max index too high")


def health_timeout_overrides(value: Value) -> None:
    for item in value.as_list() or []:
        fields = item.as_map(("name", "timeout"))
        if fields is None:
            continue
        name = fields.get_str("name", required=True)
        if name is not None and not _HTO_NAME.match(name):
            fields.error_at("name", f"invalid name {quote(name)} (letters, digits, '_', ' ', '-')")
        timeout = fields.get("timeout", required=True)
        if timeout is not None:
            go_duration(timeout)
            if isinstance(timeout.raw, str) and timeout.raw.startswith("-"):
                timeout.error("timeout must not be negative")


LOG_LEVELS = ("Trace", "Debug", "Info", "Warning", "Error", "Fatal")

FELIX_FIELD_CHECKS: dict[str, Check] = {
    # logging and reporting
    "logSeverityScreen": any_case(*LOG_LEVELS),
    "logSeverityFile": any_case(*LOG_LEVELS),
    "logSeveritySys": any_case(*LOG_LEVELS),
    "logFilePath": string,
    "logPrefix": pattern(r"^([a-zA-Z0-9%: /_-])*$", "letters, digits and '%: /_-'"),
    "logDebugFilenameRegex": regexp,
    "logActionRateLimit": pattern(r"^[1-9]\d{0,3}/(?:second|minute|hour|day)$", "N/second|minute|hour|day, N 1-9999"),
    "logActionRateLimitBurst": integer(0, 9999),
    "reportingInterval": duration,
    "reportingTTL": duration,
    "healthEnabled": boolean,
    "healthHost": string,
    "healthPort": integer(),
    "healthTimeoutOverrides": health_timeout_overrides,
    "prometheusMetricsEnabled": boolean,
    "prometheusMetricsHost": prometheus_host,
    "prometheusMetricsPort": integer(),
    "prometheusGoMetricsEnabled": boolean,
    "prometheusProcessMetricsEnabled": boolean,
    "prometheusWireGuardMetricsEnabled": boolean,
    "flowLogsFlushInterval": duration,
    "flowLogsGoldmaneServer": string,
    "flowLogsCollectorDebugTrace": boolean,
    "flowLogsPolicyEvaluationMode": enum("None", "Continuous"),
    "flowLogsLocalReporter": enum("Disabled", "Enabled"),
    "endpointReportingEnabled": boolean,
    "endpointReportingDelay": duration,
    "endpointStatusPathPrefix": string,
    "usageReportingEnabled": boolean,
    "usageReportingInitialDelay": duration,
    "usageReportingInterval": duration,
    "debugMemoryProfilePath": string,
    "debugDisableLogDropping": boolean,
    # dataplane selection and refresh
    "bpfEnabled": boolean,
    "bpfLogLevel": any_case("Off", "Info", "Debug"),
    "bpfLogFilters": string_map,
    "bpfExternalServiceMode": any_case("Tunnel", "DSR"),
    "bpfConnectTimeLoadBalancing": enum("TCP", "Enabled", "Disabled"),
    "bpfHostNetworkedNATWithoutCTLB": enum("Enabled", "Disabled"),
    "bpfKubeProxyIptablesCleanupEnabled": boolean,
    "bpfKubeProxyMinSyncPeriod": duration,
    "bpfDataIfacePattern": regexp,
    "bpfL3IfacePattern": regexp,
    "bpfMapSizeConntrack": integer(),
    "bpfMapSizeNATFrontend": integer(),
    "bpfMapSizeNATBackend": integer(),
    "bpfMapSizeRoute": integer(),
    "bpfMapSizeIPSets": integer(),
    "bpfPolicyDebugEnabled": boolean,
    "dataplaneDriver": string,
    "dataplaneWatchdogTimeout": go_duration,
    "useInternalDataplaneDriver": boolean,
    "iptablesBackend": enum("Legacy", "NFT", "Auto"),  # the type's enum beats the field's (?i) pattern
    "nftablesMode": enum("Disabled", "Enabled", "Auto"),
    "chainInsertMode": any_case("Insert", "Append"),
    "iptablesRefreshInterval": duration,
    "iptablesPostWriteCheckInterval": duration,
    "iptablesLockProbeInterval": duration,
    "iptablesMarkMask": integer(0, 4294967295),
    "nftablesRefreshInterval": go_duration,
    "nftablesMarkMask": integer(0, 4294967295),
    "ipsetsRefreshInterval": duration,
    "routeRefreshInterval": duration,
    "interfaceRefreshInterval": duration,
    "netlinkTimeout": duration,
    "maxIpsetSize": integer(),
    "featureDetectOverride": pattern(r"^([a-zA-Z0-9-_]+=(true|false|),)*([a-zA-Z0-9-_]+=(true|false|))?$",
                                     "name=true|false, comma-separated"),
    "featureGates": pattern(r"^([a-zA-Z0-9-_]+=([^=]+),)*([a-zA-Z0-9-_]+=([^=]+))?$", "name=value, comma-separated"),
    # encapsulation, routing and addressing
    "ipipEnabled": boolean,
    "ipipMTU": integer(),
    "vxlanEnabled": boolean,
    "vxlanMTU": integer(),
    "vxlanMTUV6": integer(),
    "vxlanPort": integer(),
    "vxlanVNI": integer(),
    "wireguardMTU": integer(),
    "wireguardMTUV6": integer(),
    "wireguardListeningPort": integer(1, 65535),
    "wireguardListeningPortV6": integer(1, 65535),
    "wireguardInterfaceName": interface,
    "wireguardInterfaceNameV6": interface,
    "wireguardRoutingRulePriority": integer(1, 32765),
    "wireguardHostEncryptionEnabled": boolean,
    "wireguardKeepAlive": duration,
    "wireguardThreadingEnabled": boolean,
    "mtuIfacePattern": regexp,
    "awsSrcDstCheck": enum("DoNothing", "Enable", "Disable"),
    "routeSource": any_case("WorkloadIPs", "CalicoIPAM"),
    "routeTableRange": route_table_range,
    "routeTableRanges": route_table_ranges,
    "routeSyncDisabled": boolean,
    "removeExternalRoutes": boolean,
    "deviceRouteSourceAddress": ip_of(4),
    "deviceRouteSourceAddressIPv6": ip_of(6),
    "deviceRouteProtocol": integer(),
    "natOutgoingAddress": ip_of(4),
    "natPortRange": port_range,
    "ipv6Support": boolean,
    "floatingIPs": enum("Enabled", "Disabled"),
    "serviceLoopPrevention": enum("Drop", "Reject", "Disabled"),  # the validator's oneof is exact
    "kubeNodePortRanges": node_port_ranges,
    "externalNodesList": external_nodes,
    "interfacePrefix": string,
    "interfaceExclude": string,
    "xdpEnabled": boolean,
    "xdpRefreshInterval": duration,
    "genericXDPEnabled": boolean,
    "allowVXLANPacketsFromWorkloads": boolean,
    "allowIPIPPacketsFromWorkloads": boolean,
    "policySyncPathPrefix": string,
    "sidecarAccelerationEnabled": boolean,
    "openstackRegion": openstack_region,
}


def check_felix_fields(spec: Fields) -> None:
    """Validate every present field of `FELIX_FIELD_CHECKS`, and the rules between fields."""
    for key, check in FELIX_FIELD_CHECKS.items():
        value = spec.get(key)
        if value is not None:
            check(value)
    if spec.has("routeTableRange") and spec.has("routeTableRanges"):
        spec.error_at("routeTableRanges", "routeTableRange and routeTableRanges cannot both be set")
