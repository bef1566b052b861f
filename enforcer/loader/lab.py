"""flowtui's own lab resource, `lab.flowtui.dev/v1` ExternalHost:

    apiVersion: lab.flowtui.dev/v1
    kind: ExternalHost
    metadata: {name: <dns-1123 subdomain>}
    spec: {addresses: [<ip>, ...]}

Lab safety rule: the lab creates these addresses on real interfaces, so every address must be in
a documentation or unique-local range (`LAB_RANGES`) and can never shadow a real host.
"""

from __future__ import annotations

import ipaddress

from enforcer.loader.checks import ip_value
from enforcer.loader.fields import Fields
from enforcer.loader.kubernetes import lab_name_check
from enforcer.loader.metadata import Obj
from enforcer.model import ExternalHost, IPAddress, IPNetwork

LAB_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "fc00::/7")
)
METADATA_FIELDS = ("name",)


def in_lab_ranges(ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in LAB_RANGES)


def load_external_host(obj: Obj) -> ExternalHost | None:
    if obj.meta.name:
        lab_name_check(obj, "ext", obj.meta.name)
    spec: Fields | None = obj.root.get_map("spec", ("addresses",), required=True)
    if spec is None:
        return None
    addresses: list[IPAddress] = []
    values = spec.get_list("addresses")
    if not values:
        spec.error_at("addresses", "an ExternalHost needs at least one address")
    for value in values:
        ip = ip_value(value)
        if ip is None:
            continue
        if not in_lab_ranges(ip):
            allowed = ", ".join(str(n) for n in LAB_RANGES)
            value.error(f"{ip} is outside the lab's address ranges (allowed: {allowed})")
            continue
        addresses.append(ip)
    return ExternalHost(obj.meta.name, tuple(dict.fromkeys(addresses)), obj.origin)
