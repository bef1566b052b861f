"""Pure value checks shared by every kind: names, labels, ports, addresses, selectors.

Each `*_error` function returns None when the value is fine, or a message saying what is wrong and
what is allowed. The rules are Kubernetes' (`k8s.io/apimachinery/pkg/util/validation`) and
Calico's (`libcalico-go/lib/validator/v3`).
"""

from __future__ import annotations

import ipaddress
import re

from enforcer.loader.fields import Value, quote
from enforcer.model import IPAddress, IPNetwork
from enforcer.selector import Selector, SelectorError, parse_selector

DNS1123_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + r")*"
_LABEL_RE = re.compile(f"^{DNS1123_LABEL_FMT}$")
_SUBDOMAIN_RE = re.compile(f"^{DNS1123_SUBDOMAIN_FMT}$")
# Calico: GNP names are `label` or `label.label`; NP names may also be knp./ossg.default.<subdomain>.
_GNP_NAME_RE = re.compile(f"^({DNS1123_LABEL_FMT}\\.)?{DNS1123_LABEL_FMT}$")
_NP_NAME_RE = re.compile(
    f"^(({DNS1123_LABEL_FMT})(\\.{DNS1123_LABEL_FMT})?|((?:knp|ossg)\\.default\\.({DNS1123_SUBDOMAIN_FMT})))$"
)
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME_RE = re.compile(r"^[-a-z0-9]+$")
CALICO_PORT_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")

SELECTOR_MAX_LENGTH = 1024


def dns_label_error(name: str, what: str = "name") -> str | None:
    if len(name) > 63:
        return f"{what} is {len(name)} characters long (at most 63 allowed)"
    if not _LABEL_RE.match(name):
        return (
            f"{what} {quote(name)} is not a DNS-1123 label (lower case alphanumerics and '-', "
            "starting and ending with an alphanumeric)"
        )
    return None


def dns_subdomain_error(name: str, what: str = "name") -> str | None:
    if len(name) > 253:
        return f"{what} is {len(name)} characters long (at most 253 allowed)"
    if not _SUBDOMAIN_RE.match(name):
        return (
            f"{what} {quote(name)} is not a DNS-1123 subdomain (lower case alphanumerics, '-' and "
            "'.', each dot-separated part starting and ending with an alphanumeric)"
        )
    return None


def gnp_name_error(name: str) -> str | None:
    if len(name) > 253:
        return f"name is {len(name)} characters long (at most 253 allowed)"
    if not _GNP_NAME_RE.match(name):
        return (
            f"name {quote(name)} is invalid (a DNS-1123 label, or two labels joined by one '.': "
            "lower case alphanumerics and '-')"
        )
    return None


def np_name_error(name: str) -> str | None:
    if len(name) > 253:
        return f"name is {len(name)} characters long (at most 253 allowed)"
    if not _NP_NAME_RE.match(name):
        return (
            f"name {quote(name)} is invalid (a DNS-1123 label, or two labels joined by one '.', "
            "or knp.default.<subdomain>: lower case alphanumerics and '-')"
        )
    return None


def qualified_name_error(key: str) -> str | None:
    """Kubernetes `IsQualifiedName`: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63."""
    parts = key.split("/")
    if len(parts) > 2:
        return f"key {quote(key)} has more than one '/' (allowed: [dns-subdomain/]name)"
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            return f"key {quote(key)} has an empty prefix before '/'"
        problem = dns_subdomain_error(prefix, "prefix")
        if problem:
            return f"key {quote(key)}: {problem}"
    if not name:
        return f"key {quote(key)} has an empty name part"
    if len(name) > 63:
        return f"key {quote(key)}: name part is {len(name)} characters long (at most 63 allowed)"
    if not _QUALIFIED_NAME_RE.match(name):
        return (
            f"key {quote(key)} is not a qualified name (alphanumerics, '-', '_' and '.', starting "
            "and ending with an alphanumeric, with an optional DNS subdomain prefix and '/')"
        )
    return None


def label_value_error(value: str) -> str | None:
    if len(value) > 63:
        return f"value is {len(value)} characters long (at most 63 allowed)"
    if not _LABEL_VALUE_RE.match(value):
        return (
            f"value {quote(value)} is not a valid label value (empty, or alphanumerics, '-', '_' "
            "and '.', starting and ending with an alphanumeric)"
        )
    return None


def k8s_port_name_error(name: str) -> str | None:
    """Kubernetes `IsValidPortName` (an IANA service name)."""
    if not 1 <= len(name) <= 15:
        return f"port name {quote(name)} must be 1-15 characters long"
    if not _IANA_SVC_NAME_RE.match(name):
        return f"port name {quote(name)} may contain only lower case alphanumerics and '-'"
    if not any(c.isalpha() for c in name):
        return f"port name {quote(name)} must contain at least one letter"
    if "--" in name or name.startswith("-") or name.endswith("-"):
        return f"port name {quote(name)} may not begin or end with '-' or contain '--'"
    return None


# --------------------------------------------------------------------------------------------
# Addresses


def parse_ip(text: str) -> IPAddress | None:
    if not text or "%" in text or text.strip() != text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_cidr(text: str, *, strict: bool) -> tuple[IPNetwork | None, str | None]:
    """A CIDR (or a bare IP, meaning /32 or /128). `strict`: host bits must be zero, as in
    Calico rule `nets`; otherwise the network is normalised (as Calico does for network sets)."""
    address, slash, prefix = text.partition("/")
    ip = parse_ip(address)
    if ip is None or (slash and not (prefix.isdigit() and prefix.isascii() and len(prefix) <= 3)):
        return None, f"{quote(text)} is not a valid CIDR (allowed: an IP address or address/prefix)"
    if slash and int(prefix) > ip.max_prefixlen:
        return None, f"{quote(text)} has prefix length {prefix} (allowed: 0-{ip.max_prefixlen} for IPv{ip.version})"
    try:
        return ipaddress.ip_network(text, strict=strict), None
    except ValueError as exc:
        if strict and "host bits set" in str(exc):
            masked = ipaddress.ip_network(text, strict=False)
            return None, f"{quote(text)} is not strictly masked (did you mean {masked}?)"
        return None, f"{quote(text)} is not a valid CIDR ({exc})"


def cidr_value(value: Value, *, strict: bool) -> IPNetwork | None:
    text = value.as_str()
    if text is None:
        return None
    net, problem = parse_cidr(text, strict=strict)
    if problem:
        value.error(problem)
    return net


def ip_value(value: Value) -> IPAddress | None:
    text = value.as_str()
    if text is None:
        return None
    ip = parse_ip(text)
    if ip is None:
        value.error(f"{quote(text)} is not a valid IP address")
    return ip


# --------------------------------------------------------------------------------------------
# Selectors

_ONLY_GLOBAL_RE = re.compile(r"^[ \t]*global\([ \t]*\)[ \t]*$")


def selector_value(value: Value, *, allow_global: bool = False) -> Selector | None:
    """Parse a selector field. Empty (or only spaces/tabs) means "not set" and gives None.

    `global()` is allowed only where `allow_global` (a rule's `namespaceSelector`), and there it
    must be the whole expression (Calico §1.6)."""
    text = value.as_str()
    if text is None:
        return None
    if len(text) > SELECTOR_MAX_LENGTH:
        value.error(f"selector is {len(text)} characters long (at most {SELECTOR_MAX_LENGTH} allowed)")
        return None
    if text.strip(" \t") == "":
        return None
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        value.error(f"invalid selector {quote(text)}: {selector_error_text(exc)}")
        return None
    if "global(" in text:
        if not allow_global:
            value.error("global() can only be used in a rule's namespaceSelector")
            return None
        if not _ONLY_GLOBAL_RE.match(text):
            value.error("global() cannot be combined with other selectors (allowed: exactly global())")
            return None
    return selector


def selector_error_text(exc: SelectorError) -> str:
    """One line (SelectorError's own str() draws a caret on a second line)."""
    return f"{exc.reason} (at column {exc.column})"


def label_map(value: Value | None) -> tuple[tuple[str, str], ...]:
    """A `labels`-style map, sorted; each bad key or value is reported at its own line."""
    if value is None:
        return ()
    out = []
    for key, text, item in value.as_str_map():
        problem = qualified_name_error(key) or label_value_error(text)
        if problem:
            item.error(problem)
        else:
            out.append((key, text))
    return tuple(sorted(out))
