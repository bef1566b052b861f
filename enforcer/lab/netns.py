"""Applying a LabPlan to the kernel, removing labs, running commands inside them.

Needs root. Tools, and why:

- pyroute2 `netns.create/remove` for namespaces (the same bind-mount dance as `ip netns add`).
- pyroute2 IPRoute for links, addresses and routes, over netlink sockets created inside the lab
  namespace they change (`kernel.open_netns`). Veth pairs are created with the peer placed in
  its namespace by the same request, so no interface ever appears in the root namespace.
- sysctls are plain writes under /proc/sys/net from a thread that has entered the lab namespace
  (`kernel.in_netns`): pyroute2 has no sysctl API and `ip netns exec ... sysctl` costs a
  process per namespace.
- `ip netns exec` for `exec_in`: the standard tool; it also gives the command the namespace's
  own /sys and /etc/netns/<name> files.

Safety: nothing here opens a netlink socket in, or writes a sysctl of, the root namespace, and
every namespace touched has the `ft-` prefix (checked again at the lowest level).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from enforcer.lab.kernel import check_lab_netns, in_netns, netns_exists, netns_path, open_netns
from enforcer.lab.names import WIREGUARD_RUN_DIR, LabError, Target, lab_prefix, netns_name
from enforcer.lab.spec import InterfaceSpec, LabPlan, NetnsSpec, Route, Sysctls, VethSpec
from enforcer.lab.state import RT_SCOPE_LINK, RT_TABLE_MAIN, LabStatus, lab_namespaces, lab_status, netns_pids

RTPROT_STATIC = 4  # every route the lab adds is `proto static`; others are the kernel's
IFA_F_NODAD = 0x02


# --------------------------------------------------------------------------------------------
# Namespaces and sysctls


def create_netns(name: str) -> bool:
    """Create lab namespace `name` unless it exists; True if it was created."""
    check_lab_netns(name)
    if netns_exists(name):
        return False
    pr_netns.create(netns_path(name))
    return True


def remove_netns(name: str, kill: bool = True) -> bool:
    """Remove lab namespace `name` (killing processes still inside it); False if it was gone."""
    check_lab_netns(name)
    if not netns_exists(name):
        return False
    if kill:
        for pid in netns_pids(name):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    try:
        pr_netns.remove(netns_path(name))
    except FileNotFoundError:
        return False
    return True


def write_sysctls(netns: str, sysctls: Sysctls) -> None:
    """Write `(path under /proc/sys, value)` pairs inside lab namespace `netns`."""
    if not sysctls:
        return
    for key, _ in sysctls:
        if not key.startswith("net/") or ".." in key.split("/"):
            raise LabError(f"refusing sysctl {key!r}: the lab only writes per-namespace net/ keys")

    def write() -> None:
        for key, value in sysctls:
            with open(os.path.join("/proc/sys", key), "w") as f:
                f.write(value)

    try:
        in_netns(netns, write)
    except OSError as exc:
        raise LabError(f"{netns}: sysctl failed: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Links, addresses, routes


def _index(ipr: IPRoute, name: str) -> int | None:
    found: list[int] = ipr.link_lookup(ifname=name)
    return found[0] if found else None


class _Sockets:
    """One netlink socket per lab namespace for the length of a `lab_up`."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._open: dict[str, IPRoute] = {}

    def __enter__(self) -> _Sockets:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def __getitem__(self, netns: str) -> IPRoute:
        if netns not in self._open:
            self._open[netns] = self._stack.enter_context(open_netns(netns))
        return self._open[netns]


def _ensure_bridge(ipr: IPRoute, name: str) -> None:
    if _index(ipr, name) is None:
        ipr.link("add", ifname=name, kind="bridge", br_mcast_snooping=0, br_stp_state=0)


def _ensure_veth(sockets: _Sockets, veth: VethSpec) -> None:
    """Create the pair unless both ends exist; a lone end (left by a crash) is replaced."""
    ipr, peer_ipr = sockets[veth.netns], sockets[veth.peer_netns]
    here = _index(ipr, veth.name)
    there = _index(peer_ipr, veth.peer_name)
    if here is not None and there is not None:
        return
    if here is not None:
        ipr.link("del", index=here)
    if there is not None:
        peer_ipr.link("del", index=there)
    peer: dict[str, Any] = {"ifname": veth.peer_name, "net_ns_fd": netns_path(veth.peer_netns)}
    if veth.peer_mac:
        peer["address"] = veth.peer_mac
    ipr.link("add", ifname=veth.name, kind="veth", peer=peer)


def _configure_links(ipr: IPRoute, spec: NetnsSpec) -> None:
    lo = _index(ipr, "lo")
    if lo is not None:
        ipr.link("set", index=lo, state="up")
    for iface in spec.interfaces:
        _configure_link(ipr, spec.name, iface)


def _configure_link(ipr: IPRoute, netns: str, iface: InterfaceSpec) -> None:
    index = _index(ipr, iface.name)
    if index is None:
        raise LabError(f"{netns}: link {iface.name} is missing after creation")
    if iface.master is not None:
        master = _index(ipr, iface.master)
        if master is None:
            raise LabError(f"{netns}: bridge {iface.master} is missing")
        ipr.link("set", index=index, master=master)
    ipr.link("set", index=index, state="up")
    have = set()
    for msg in ipr.get_addr(index=index):
        have.add((msg.get("address"), msg["prefixlen"]))
    want = {(str(a.ip), a.network.prefixlen) for a in iface.addresses}
    for address, prefixlen in sorted(have - want):
        if not address.startswith("fe80:"):  # keep the kernel's link-local addresses
            ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    for a in iface.addresses:
        if (str(a.ip), a.network.prefixlen) not in have:
            flags = IFA_F_NODAD if a.version == 6 else 0
            ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen, flags=flags)


def _route_key(family: int, dst: str | None, dst_len: int) -> tuple[int, str, int]:
    return (family, dst or ("0.0.0.0" if family == 2 else "::"), dst_len)


def _apply_routes(ipr: IPRoute, spec: NetnsSpec) -> None:
    want: set[tuple[int, str, int]] = set()
    for route in spec.routes:
        want.add(_route_key(2 if route.version == 4 else 10, str(route.dst.network_address), route.dst.prefixlen))
        ipr.route("replace", **_route_args(ipr, spec.name, route))
    for msg in ipr.get_routes(table=RT_TABLE_MAIN):
        if msg["proto"] != RTPROT_STATIC:
            continue
        if _route_key(msg["family"], msg.get("dst"), msg["dst_len"]) in want:
            continue
        stale: dict[str, Any] = {
            "table": RT_TABLE_MAIN,
            "family": msg["family"],
            "type": msg["type"],
            "proto": RTPROT_STATIC,
            "scope": msg["scope"],  # the kernel matches IPv4 deletes on scope too
        }
        if msg["dst_len"]:
            stale["dst"] = f"{msg.get('dst')}/{msg['dst_len']}"
        if msg.get("priority") is not None:
            stale["priority"] = msg.get("priority")
        ipr.route("del", **stale)


def _route_args(ipr: IPRoute, netns: str, route: Route) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": str(route.dst), "proto": RTPROT_STATIC, "table": RT_TABLE_MAIN}
    if route.type == "blackhole":
        args["type"] = "blackhole"
        return args
    if route.dev is not None:
        index = _index(ipr, route.dev)
        if index is None:
            raise LabError(f"{netns}: route {route}: no link {route.dev}")
        args["oif"] = index
    if route.via is not None:
        args["gateway"] = str(route.via)
    if route.scope == "link":
        args["scope"] = RT_SCOPE_LINK
    return args


# --------------------------------------------------------------------------------------------
# The API


def lab_up(plan: LabPlan, prune: bool = True) -> LabStatus:
    """Build `plan` in the kernel; idempotent (creates what is missing, fixes what differs).

    Creates missing namespaces, links and addresses, replaces routes and rewrites sysctls. With
    `prune`, lab namespaces the plan does not have (left by an older plan) are removed, and in
    the others, addresses and `proto static` routes the plan does not have are deleted.
    Returns the status read back from the kernel. Raises LabError (or OSError/NetlinkError from
    the kernel) on failure, leaving a partial lab that `lab_down` or another `lab_up` handles.
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces)")
    prefix = lab_prefix(plan.lab_id)
    for spec in plan.namespaces:
        if not spec.name.startswith(prefix):
            raise LabError(f"plan namespace {spec.name} lacks the lab prefix {prefix}")
    if prune:
        planned = {spec.name for spec in plan.namespaces}
        for name in lab_namespaces(plan.lab_id):
            if name not in planned:
                remove_netns(name)
    for spec in plan.namespaces:
        create_netns(spec.name)
        write_sysctls(spec.name, spec.sysctls)
    with _Sockets() as sockets:
        for bridge in plan.bridges:
            _ensure_bridge(sockets[bridge.netns], bridge.name)
        for veth in plan.veths:
            _ensure_veth(sockets, veth)
        for spec in plan.namespaces:
            _configure_links(sockets[spec.name], spec)
            write_sysctls(spec.name, tuple(kv for iface in spec.interfaces for kv in iface.sysctls))
        for spec in plan.namespaces:
            _apply_routes(sockets[spec.name], spec)
    return lab_status(plan.lab_id)


def lab_down(lab_id: str) -> int:
    """Remove every namespace of lab `lab_id` (found by name); returns how many were removed.

    Idempotent and safe after a crash: it needs no plan, only the `ft-<labid>-` prefix.
    A lab in etcd mode has its supervisor (and so its agents) and members stopped and its state
    directory removed first (`cluster.stop_cluster`). Processes still running inside the lab's
    namespaces are killed. Interfaces live only in lab namespaces, so they go with them.
    """
    from enforcer.lab.cluster import stop_cluster

    stop_cluster(lab_id)  # first: a running supervisor would restart the agents killed below
    removed = 0
    for _ in range(2):  # a second pass catches namespaces created while the first one ran
        for name in lab_namespaces(lab_id):
            if remove_netns(name):
                removed += 1
    left = lab_namespaces(lab_id)
    if left:
        raise LabError(f"could not remove {', '.join(left)}")
    remove_runtime_dirs(lab_id)
    return removed


def remove_runtime_dirs(lab_id: str, run_dir: Path | None = None) -> list[str]:
    """Remove the lab's wireguard-go runtime directories (`<run_dir>/ft-<lab>-node-*`: sockets,
    pids, logs), once their namespaces are gone; returns their names."""
    root = WIREGUARD_RUN_DIR if run_dir is None else run_dir
    prefix = lab_prefix(lab_id)
    try:
        names = sorted(n for n in os.listdir(root) if n.startswith(prefix) and not netns_exists(n))
    except FileNotFoundError:
        return []
    for name in names:
        shutil.rmtree(root / name, ignore_errors=True)
    return names


def command_in(lab_id: str, target: str | Target, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside `target`'s namespace (`ip netns exec NS ...`)."""
    name = netns_name(lab_id, target)
    if not netns_exists(name):
        raise LabError(f"{target} is not up in lab {lab_id} (no namespace {name})")
    return ["ip", "netns", "exec", name, *argv]


def exec_in(lab_id: str, target: str | Target, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run `argv` inside `target` (`NS/POD`, `node:NAME`, `external:NAME`, `underlay`).

    `kwargs` go to `subprocess.run` (capture_output, text, timeout, check, ...). The command
    sees only the target's interfaces, so it can bind any of the target's addresses.
    """
    return subprocess.run(command_in(lab_id, target, argv), **kwargs)


def popen_in(lab_id: str, target: str | Target, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start `argv` inside `target` without waiting (servers, captures); see `exec_in`."""
    return subprocess.Popen(command_in(lab_id, target, argv), **kwargs)


__all__ = [
    "command_in",
    "create_netns",
    "exec_in",
    "lab_down",
    "lab_up",
    "popen_in",
    "remove_netns",
    "write_sysctls",
]
