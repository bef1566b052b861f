"""Moving pod routes onto a tunnel and back, and MTUs: netlink inside lab namespaces only.

Per node and family, WireGuard routing is two things:

- routing table 1 holds, per remote pod prefix, a route `dev ftwg0` (`ftwg0v6`) and behind it
  (metric 4096) an `unreachable` route: if the device disappears (its daemon died, someone deleted
  it) the kernel drops its route and the pod traffic is refused instead of leaving in the clear
  through the main table — encryption fails closed until the next reconcile rebuilds the device;
- the rule `not iif lo lookup 1` at priority 99 sends everything the node forwards (traffic not
  originated by the node itself) through table 1 first; prefixes not in it fall through to the
  main table, whose plain routes via `eth0` the lab keeps untouched.

Switching on installs the routes, then the rule; switching off removes the rule first (traffic is
back on the plain routes at once), then the routes. Nothing here touches the main table, which
`lab_up` owns, so rebuilding the lab and WireGuard never fight over routes.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from enforcer.lab.kernel import open_netns
from enforcer.lab.names import LabError
from enforcer.model import IPNetwork
from enforcer.wireguard.device import DeviceError
from enforcer.wireguard.plan import ROUTE_TABLE, RULE_PRIORITY

FIB_RULE_INVERT = 0x2
RTPROT_STATIC = 4
RT_SCOPE_LINK = 253
RTN_UNREACHABLE = 7
FALLBACK_METRIC = 4096  # behind the device route (IPv4 metric 0, IPv6 1024)
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def _index(ipr: IPRoute, name: str) -> int | None:
    found: list[int] = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _our_rules(ipr: IPRoute, family: int) -> list[Any]:
    return [r for r in ipr.get_rules(family=_AF[family])
            if r.get("priority") == RULE_PRIORITY and r.get("table") == ROUTE_TABLE]


def rule_present(ipr: IPRoute, family: int) -> bool:
    return len(_our_rules(ipr, family)) > 0


def set_rule(ipr: IPRoute, family: int, present: bool) -> bool:
    """Exactly one `not iif lo lookup 1` rule at priority 99 (or none); True if it changed."""
    rules = _our_rules(ipr, family)
    good = [r for r in rules if r.get("iifname") == "lo" and r["flags"] & FIB_RULE_INVERT]
    changed = False
    for rule in rules:
        if present and rule is (good[0] if good else None):
            continue
        ipr.rule("del", family=_AF[family], priority=RULE_PRIORITY, table=ROUTE_TABLE,
                 iifname=rule.get("iifname"), flags=rule["flags"])
        changed = True
    if present and not good:
        ipr.rule("add", family=_AF[family], priority=RULE_PRIORITY, table=ROUTE_TABLE, iifname="lo",
                 flags=FIB_RULE_INVERT)
        changed = True
    return changed


def table_routes(ipr: IPRoute, family: int) -> dict[tuple[str, str], Any]:
    """Routes of table 1 of `family`, by (destination, `dev` or `unreachable`)."""
    out: dict[tuple[str, str], Any] = {}
    for msg in ipr.get_routes(family=_AF[family], table=ROUTE_TABLE):
        if msg.get("table") != ROUTE_TABLE:
            continue
        kind = "unreachable" if msg["type"] == RTN_UNREACHABLE else "dev"
        out[(f"{msg.get('dst')}/{msg['dst_len']}", kind)] = msg
    return out


def describe_table(ipr: IPRoute, family: int) -> list[str]:
    """Table 1 as sorted text: `10.244.1.0/24 dev ftwg0`, `unreachable 10.244.1.0/24`."""
    names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    return sorted(f"{dst} dev {names.get(msg.get('oif'), msg.get('oif'))}" if kind == "dev" else f"unreachable {dst}"
                  for (dst, kind), msg in table_routes(ipr, family).items())


def set_routes(ipr: IPRoute, family: int, interface: str | None, prefixes: Iterable[IPNetwork]) -> int:
    """Table 1 of `family` holds exactly `prefixes` via `interface`, each backed by an unreachable
    route (nothing at all if `interface` is None); returns how many routes were added or removed."""
    want = [str(p) for p in prefixes if p.version == family] if interface is not None else []
    index = _index(ipr, interface) if interface is not None else None
    if interface is not None and index is None:
        raise DeviceError(f"no link {interface} to route through")
    wanted = {(dst, kind) for dst in want for kind in ("dev", "unreachable")}
    have = table_routes(ipr, family)
    changes = 0
    for (dst, kind), msg in have.items():
        if (dst, kind) in wanted and (kind == "unreachable" or msg.get("oif") == index):
            continue
        old: dict[str, Any] = {"family": _AF[family], "table": ROUTE_TABLE, "dst": dst, "proto": msg["proto"],
                               "scope": msg["scope"], "type": msg["type"]}
        if msg.get("priority") is not None:
            old["priority"] = msg.get("priority")
        ipr.route("del", **old)
        changes += 1
    have = table_routes(ipr, family)
    for dst in want:
        if (dst, "dev") not in have:
            args: dict[str, Any] = {"family": _AF[family], "table": ROUTE_TABLE, "dst": dst, "oif": index,
                                    "proto": RTPROT_STATIC}
            if family == 4:
                args["scope"] = RT_SCOPE_LINK
            ipr.route("add", **args)
            changes += 1
        if (dst, "unreachable") not in have:
            ipr.route("add", family=_AF[family], table=ROUTE_TABLE, dst=dst, type="unreachable",
                      priority=FALLBACK_METRIC, proto=RTPROT_STATIC)
            changes += 1
    return changes


def link_mtu(ipr: IPRoute, name: str) -> int | None:
    """MTU of link `name`, None if there is no such link (also when it vanishes while asked:
    a tunnel whose wireguard-go process died goes away on its own)."""
    index = _index(ipr, name)
    if index is None:
        return None
    try:
        mtu = ipr.get_links(index)[0].get("mtu")
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return int(mtu) if mtu is not None else None


def set_link(ipr: IPRoute, name: str, mtu: int, up: bool = True) -> bool:
    """MTU (and state up) of link `name`; True if the MTU changed. DeviceError if it is missing."""
    index = _index(ipr, name)
    if index is None:
        raise DeviceError(f"no link {name}")
    link = ipr.get_links(index)[0]
    changed = bool(link.get("mtu") != mtu)
    if changed:
        ipr.link("set", index=index, mtu=mtu)
    if up and not link["flags"] & 1:
        ipr.link("set", index=index, state="up")
    return changed


def underlay_mtu(netns: str, uplink: str = "eth0") -> int | None:
    with open_netns(netns) as ipr:
        return link_mtu(ipr, uplink)


def set_pod_mtu(node_netns: str, pods: Iterable[tuple[str, str]], mtu: int, pod_if: str = "eth0") -> int:
    """MTU of each pod's veth, both ends: `cali…` in the node, `eth0` in the pod (Calico's veth
    MTU). `pods` are (pod netns, cali interface). Returns how many links changed; pods whose
    namespace or link is missing are skipped (the lab builds them; the next run catches up)."""
    changed = 0
    pods = list(pods)
    with open_netns(node_netns) as ipr:
        for _, cali in pods:
            if _index(ipr, cali) is not None:
                changed += set_link(ipr, cali, mtu, up=False)
    for pod_netns, _ in pods:
        try:
            with open_netns(pod_netns) as ipr:
                if _index(ipr, pod_if) is not None:
                    changed += set_link(ipr, pod_if, mtu, up=False)
        except (OSError, LabError, DeviceError):
            continue
    return changed


__all__ = [
    "FALLBACK_METRIC",
    "FIB_RULE_INVERT",
    "describe_table",
    "link_mtu",
    "rule_present",
    "set_link",
    "set_pod_mtu",
    "set_routes",
    "set_rule",
    "table_routes",
    "underlay_mtu",
]
