"""Where a node's WireGuard device comes from: the kernel when it has WireGuard, else wireguard-go.

Detection is by trying: `ensure_device` asks the kernel, over netlink inside the node's
namespace, for a link of kind `wireguard` named after the tunnel. A kernel with WireGuard
creates it; one without answers EOPNOTSUPP (`ip` prints "Unknown device type") and the device
comes from wireguard-go instead (`userspace.py`). Which one was used is part of every result, with
the reason (`Device.kind`, `Device.reason`). An existing device is recognised by its link kind
(`wireguard`, or `tun` served by a wireguard-go in that namespace). `FLOWTUI_WIREGUARD=kernel`
or `=userspace` forces one (for tests and comparisons); the default is `auto`.

Configuration is differential in both cases (peers updated in place, so sessions survive):
- kernel: `wg set` / `wg show IFACE dump` run inside the namespace — wireguard-tools talk
  generic netlink to a kernel device;
- userspace: the UAPI socket of the node's wireguard-go.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Literal

from enforcer.lab.kernel import open_netns
from enforcer.wireguard import userspace
from enforcer.wireguard.device import (
    DeviceConfig,
    DeviceError,
    DeviceStatus,
    parse_wg_dump,
    uapi_set,
    wg_set_args,
)

Kind = Literal["kernel", "userspace"]
Mode = Literal["auto", "kernel", "userspace"]
MODE_ENV = "FLOWTUI_WIREGUARD"
NO_KERNEL_REASON = "the kernel has no WireGuard (netlink: Unknown device type); using wireguard-go"
FORCED_REASON = f"wireguard-go, as ${MODE_ENV}=userspace asks (the kernel has WireGuard)"
PROBE_LINK = "ftwgprobe0"
WG_TIMEOUT = 10.0


def mode_from_env() -> Mode:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "kernel", "userspace"):
        raise DeviceError(f"${MODE_ENV}={value!r}: use auto, kernel or userspace")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Device:
    """One WireGuard interface inside one node namespace."""

    netns: str
    interface: str
    kind: Kind
    reason: str = ""

    # ---- reading and configuring ----------------------------------------------------------

    def status(self) -> DeviceStatus:
        if self.kind == "userspace":
            return userspace.get(self.netns, self.interface)
        done = _wg(self.netns, ["show", self.interface, "dump"])
        return parse_wg_dump(done)

    def configure(self, want: DeviceConfig) -> bool:
        """Make the device hold `want`; False if it already did."""
        have = self.status()
        if self.kind == "userspace":
            request = uapi_set(want, have)
            if request is None:
                return False
            userspace.set_config(self.netns, self.interface, request)
            return True
        args = wg_set_args(self.interface, want, have)
        if args is None:
            return False
        _wg(self.netns, args, stdin=want.private_key + "\n")
        return True

    def remove(self) -> None:
        if self.kind == "userspace":
            userspace.stop(self.netns, self.interface)
        else:
            with open_netns(self.netns) as ipr:
                index = ipr.link_lookup(ifname=self.interface)
                if index:
                    ipr.link("del", index=index[0])


def _wg(netns: str, args: list[str], stdin: str | None = None) -> str:
    argv = ["ip", "netns", "exec", netns, "wg", *args]
    if shutil.which("wg") is None:
        raise DeviceError("kernel WireGuard is configured with `wg`: apt-get install --no-install-recommends "
                          "wireguard-tools")
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=WG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{netns}: wg {' '.join(args[:2])}: {exc}") from exc
    if done.returncode != 0:
        raise DeviceError(f"{netns}: wg {' '.join(args[:2])}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _link_kind(netns: str, interface: str) -> str | None:
    """The link kind of `interface` in `netns` (`wireguard`, `tun`, ...); None if it is absent."""
    with open_netns(netns) as ipr:
        links = ipr.get_links(ifname=interface) if ipr.link_lookup(ifname=interface) else []
        for link in links:
            info = link.get("linkinfo")
            kind = info.get("kind") if info is not None else None
            return str(kind) if kind else "unknown"
    return None


def existing_device(netns: str, interface: str) -> Device | None:
    """The WireGuard device `interface` in `netns` if there is one."""
    kind = _link_kind(netns, interface)
    if kind == "wireguard":
        return Device(netns, interface, "kernel", "kernel WireGuard")
    if userspace.find_pid(netns, interface) is not None:
        reason = FORCED_REASON if kernel_supported(netns) else NO_KERNEL_REASON
        return Device(netns, interface, "userspace", reason)
    if kind is not None and kind != "tun":  # a TUN without its daemon is one being torn down
        raise DeviceError(f"{netns}: {interface} exists but is a {kind} link, not WireGuard")
    return None


def _clear_stale_tun(netns: str, interface: str, timeout: float = 3.0) -> None:
    """Remove a TUN named `interface` whose wireguard-go is gone (the kernel may still be tearing
    it down after the daemon died) and wait until the name is free."""
    deadline = time.monotonic() + timeout
    with open_netns(netns) as ipr:
        while True:
            index = ipr.link_lookup(ifname=interface)
            if not index:
                return
            try:
                ipr.link("del", index=index[0])
            except Exception:  # already going away
                pass
            if time.monotonic() > deadline:
                raise DeviceError(f"{netns}: a stale {interface} does not go away")
            time.sleep(0.02)


_kernel_support: bool | None = None  # the kernel is the same in every namespace: ask once per process


def try_kernel(netns: str, interface: str) -> str | None:
    """Create a kernel WireGuard link; None on success, else why it is not available."""
    global _kernel_support
    from pyroute2.netlink.exceptions import NetlinkError

    with open_netns(netns) as ipr:
        try:
            ipr.link("add", ifname=interface, kind="wireguard")
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENODEV):
                _kernel_support = False
                return NO_KERNEL_REASON
            raise DeviceError(f"{netns}: creating {interface}: {exc}") from exc
    _kernel_support = True
    return None


def kernel_supported(netns: str) -> bool:
    """Whether the kernel has WireGuard (a throw-away `ftwgprobe0` link in `netns` the first time)."""
    if _kernel_support is None:
        if try_kernel(netns, PROBE_LINK) is None:
            with open_netns(netns) as ipr:
                index = ipr.link_lookup(ifname=PROBE_LINK)
                if index:
                    ipr.link("del", index=index[0])
    return bool(_kernel_support)


def ensure_device(netns: str, interface: str, mode: Mode = "auto") -> Device:
    """The WireGuard device `interface` in `netns`, created if missing (kernel first, see above)."""
    found = existing_device(netns, interface)
    if found is not None:
        if mode != "auto" and found.kind != mode:
            found.remove()  # the forced kind differs: start over with it
        else:
            return found
    if _link_kind(netns, interface) == "tun":
        _clear_stale_tun(netns, interface)
    if mode in ("auto", "kernel"):
        why = try_kernel(netns, interface)
        if why is None:
            return Device(netns, interface, "kernel", "kernel WireGuard")
        if mode == "kernel":
            raise DeviceError(f"{netns}: {why.split(';')[0]} and ${MODE_ENV}=kernel")
        reason = why
    else:
        reason = FORCED_REASON if kernel_supported(netns) else NO_KERNEL_REASON
    userspace.start(netns, interface)
    return Device(netns, interface, "userspace", reason)


__all__ = ["MODE_ENV", "Device", "Kind", "Mode", "ensure_device", "existing_device", "kernel_supported",
           "mode_from_env", "try_kernel"]
