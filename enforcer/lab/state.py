"""What a lab's kernel objects look like right now, discovered by name (no plan needed).

Reading only. Every namespace of lab `X` is a file `/var/run/netns/ft-X-*`, so status and a
crash-safe `lab_down` start from a directory listing. Netlink reads go through pyroute2 over
sockets created inside the lab namespace (`kernel.open_netns`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from enforcer.lab.kernel import netns_path, open_netns
from enforcer.lab.names import (
    KINDS,
    NETNS_DIR,
    LabError,
    Target,
    lab_id_of_netns,
    lab_prefix,
    netns_name,
    target_of_netns,
)
from enforcer.lab.spec import IPInterface, LabPlan
from enforcer.model import IPAddress

RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
_ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}


def list_netns() -> list[str]:
    """All named network namespaces (the files in /var/run/netns)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _order(lab_id: str, name: str) -> tuple[int, str]:
    target = target_of_netns(lab_id, name)
    return (KINDS.index(target.kind) if target else len(KINDS), name)


def lab_namespaces(lab_id: str) -> list[str]:
    """The namespaces of lab `lab_id` that exist: underlay, nodes, external hosts, pods."""
    prefix = lab_prefix(lab_id)
    return sorted((n for n in list_netns() if n.startswith(prefix)), key=lambda n: _order(lab_id, n))


def list_labs() -> list[str]:
    """Ids of all labs that have at least one namespace on this machine."""
    return sorted({lab for n in list_netns() if (lab := lab_id_of_netns(n)) is not None})


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (as `ip netns pids` finds them)."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return pids


# --------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class InterfaceStatus:
    name: str
    kind: str  # veth, bridge, loopback, ...
    up: bool
    mac: str | None
    master: str | None
    addresses: tuple[IPInterface, ...]


@dataclass(frozen=True)
class NetnsStatus:
    name: str
    target: Target | None  # None: has the lab's prefix but a name the lab never makes
    interfaces: tuple[InterfaceStatus, ...]
    routes: tuple[str, ...]  # main table, formatted like `enforcer.lab.spec.Route`
    pids: tuple[int, ...]

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """Global addresses (not loopback, not link-local) on any interface."""
        return tuple(a.ip for i in self.interfaces for a in i.addresses if not (a.ip.is_loopback or a.ip.is_link_local))

    def interface(self, name: str) -> InterfaceStatus | None:
        return next((i for i in self.interfaces if i.name == name), None)


@dataclass(frozen=True)
class LabStatus:
    """What exists of lab `lab_id` in the kernel."""

    lab_id: str
    namespaces: tuple[NetnsStatus, ...]

    @property
    def exists(self) -> bool:
        return bool(self.namespaces)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(str(ns.target) for ns in self.namespaces if ns.target is not None)

    def netns(self, target: str | Target) -> NetnsStatus | None:
        name = netns_name(self.lab_id, target)
        return next((ns for ns in self.namespaces if ns.name == name), None)

    def addresses(self, target: str | Target) -> tuple[IPAddress, ...]:
        ns = self.netns(target)
        return ns.addresses if ns else ()

    def missing(self, plan: LabPlan) -> tuple[str, ...]:
        """What `plan` has that the kernel lacks (namespaces, links, addresses, routes)."""
        out: list[str] = []
        have = {ns.name: ns for ns in self.namespaces}
        for spec in plan.namespaces:
            ns = have.get(spec.name)
            if ns is None:
                out.append(f"namespace {spec.name}")
                continue
            for iface in spec.interfaces:
                got = ns.interface(iface.name)
                if got is None:
                    out.append(f"{spec.name}: link {iface.name}")
                    continue
                if not got.up:
                    out.append(f"{spec.name}: link {iface.name} is down")
                if iface.master is not None and got.master != iface.master:
                    out.append(f"{spec.name}: link {iface.name} not in {iface.master}")
                out += [f"{spec.name}: {a} on {iface.name}" for a in iface.addresses if a not in got.addresses]
            out += [f"{spec.name}: route {r}" for r in spec.routes if str(r) not in ns.routes]
        return tuple(out)

    def stale(self, plan: LabPlan) -> tuple[str, ...]:
        """Namespaces of this lab that `plan` does not have."""
        planned = {spec.name for spec in plan.namespaces}
        return tuple(ns.name for ns in self.namespaces if ns.name not in planned)

    def describe(self) -> str:
        lines = [f"lab {self.lab_id}: {len(self.namespaces)} namespaces"]
        for ns in self.namespaces:
            pids = f" ({len(ns.pids)} processes)" if ns.pids else ""
            lines.append(f"{ns.target or '?'}  {ns.name}{pids}")
            for iface in ns.interfaces:
                if iface.kind == "loopback":
                    continue
                addrs = " ".join(str(a) for a in iface.addresses if not a.ip.is_link_local)
                master = f" master {iface.master}" if iface.master else ""
                state = "UP" if iface.up else "DOWN"
                lines.append(f"  {iface.name} {state}{master} {addrs}".rstrip())
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab_id": self.lab_id,
            "namespaces": [
                {
                    "name": ns.name,
                    "target": str(ns.target) if ns.target else None,
                    "addresses": [str(a) for a in ns.addresses],
                    "interfaces": [
                        {
                            "name": i.name,
                            "kind": i.kind,
                            "up": i.up,
                            "mac": i.mac,
                            "master": i.master,
                            "addresses": [str(a) for a in i.addresses],
                        }
                        for i in ns.interfaces
                    ],
                    "routes": list(ns.routes),
                    "pids": list(ns.pids),
                }
                for ns in self.namespaces
            ],
        }


def format_route(msg: Any, names: dict[int, str]) -> str:
    """A netlink route message in the text form of `enforcer.lab.spec.Route`."""
    family = 4 if msg["family"] == 2 else 6
    dst = msg.get("dst")
    if msg["dst_len"] == 0:
        dst_text = "default"
    elif msg["dst_len"] == (32 if family == 4 else 128):
        dst_text = str(dst)
    else:
        dst_text = f"{dst}/{msg['dst_len']}"
    kind = _ROUTE_TYPES.get(msg["type"], str(msg["type"]))
    parts = [dst_text] if kind == "unicast" else [kind, dst_text]
    gateway = msg.get("gateway")
    if gateway is not None:
        parts += ["via", str(gateway)]
    oif = msg.get("oif")
    if oif is not None and kind == "unicast":
        parts += ["dev", names.get(oif, str(oif))]
    if family == 4 and msg["scope"] == RT_SCOPE_LINK:
        parts += ["scope", "link"]
    return " ".join(parts)


def read_netns(lab_id: str, name: str) -> NetnsStatus:
    """Interfaces, addresses, routes and processes of one lab namespace."""
    with open_netns(name) as ipr:
        links = list(ipr.get_links())
        names = {link["index"]: link.get("ifname") for link in links}
        addrs: dict[int, list[IPInterface]] = {}
        for msg in ipr.get_addr():
            addrs.setdefault(msg["index"], []).append(
                ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
            )
        routes = tuple(format_route(r, names) for r in ipr.get_routes(table=RT_TABLE_MAIN))
    interfaces = []
    for link in links:
        info = link.get("linkinfo")
        kind = info.get("kind") if info is not None else None
        if kind is None:
            kind = "loopback" if link.get("ifname") == "lo" else "unknown"
        master = link.get("master")
        interfaces.append(
            InterfaceStatus(
                name=link.get("ifname"),
                kind=kind,
                up=bool(link["flags"] & 1),
                mac=link.get("address"),
                master=names.get(master) if master else None,
                addresses=tuple(addrs.get(link["index"], ())),
            )
        )
    return NetnsStatus(name, target_of_netns(lab_id, name), tuple(interfaces), routes, tuple(netns_pids(name)))


def lab_status(lab_id: str) -> LabStatus:
    """Discover lab `lab_id` from the kernel: its namespaces with interfaces, addresses, routes."""
    found = []
    for name in lab_namespaces(lab_id):
        try:
            found.append(read_netns(lab_id, name))
        except (LabError, FileNotFoundError):
            continue  # removed while we looked
    return LabStatus(lab_id, tuple(found))
