"""The lowest level: entering a lab namespace, safely, from a short-lived thread.

A network-namespace switch (`setns(CLONE_NEWNET)`) applies to the calling thread only, and both
new sockets and /proc/sys/net follow the thread's namespace. So work that must happen inside a
lab namespace runs in a fresh thread that enters it, checks that it did, does the work and
ends; the process and its other threads stay where they are. This is how the lab writes
sysctls and opens its netlink sockets (pyroute2's own `IPRoute(netns=...)` forks a process per
socket, ~20 ms each, and creates the namespace if it is missing).

Everything here refuses names without the project prefix.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pyroute2 import IPRoute

from enforcer.lab.names import NETNS_DIR, PREFIX, LabError

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def netns_path(name: str) -> str:
    """The file that names namespace `name`."""
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    """Whether a namespace called `name` exists (by its file)."""
    return os.path.exists(netns_path(name))


def check_lab_netns(name: str) -> str:
    """Return `name` if it is a lab namespace name (`ft-...`), else raise LabError."""
    if not name.startswith(PREFIX) or "/" in name or "\0" in name:
        raise LabError(f"refusing to touch namespace {name!r}: not a lab namespace")
    return name


def in_netns(name: str, work: Callable[[], T]) -> T:
    """Run `work()` in a new thread that has entered lab namespace `name`; return its result.

    The thread verifies (by inode) that it is in `name` before calling `work`, so a failed or
    ignored setns can never make `work` act on the root namespace.
    """
    check_lab_netns(name)
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            errors.append(LabError(f"namespace {name} does not exist"))
            return
        try:
            want = os.fstat(fd)
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        except BaseException as exc:
            errors.append(exc)
            return
        finally:
            os.close(fd)
        try:
            here = os.stat("/proc/thread-self/ns/net")
            if (here.st_dev, here.st_ino) != (want.st_dev, want.st_ino):
                raise LabError(f"setns into {name} did not take effect")
            result.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"netns {name}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


OWN_NETNS = "/proc/self/ns/net"


def in_place(name: str | None, work: Callable[[], T]) -> T:
    """`work()` inside lab namespace `name` (`in_netns`), or, for None, right here: in the
    namespace the process runs in (the host's for `flowtui agent --host`, whichever one
    `ip netns exec` put it in otherwise). The one switch between the two placements."""
    return work() if name is None else in_netns(name, work)


def place_identity(name: str | None) -> tuple[int, int] | None:
    """(device, inode) of lab namespace `name` or, for None, of the process's own; None if the
    name no longer exists. Equal identities: the same namespace."""
    try:
        st = os.stat(OWN_NETNS if name is None else netns_path(check_lab_netns(name)))
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def place_label(name: str | None) -> str:
    """How messages name a placement: the namespace, or `this namespace` (the host's, for --host)."""
    return name if name is not None else "this namespace"


def netlink_socket(name: str) -> socket.socket:
    """A NETLINK_ROUTE socket living in lab namespace `name`."""
    return in_netns(name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))


@contextmanager
def open_netns(name: str) -> Iterator[IPRoute]:
    """A pyroute2 IPRoute whose socket lives inside lab namespace `name`; never the root one."""
    sock = netlink_socket(name)
    try:
        ipr = IPRoute(fileno=sock.detach())
    except BaseException:
        sock.close()
        raise
    try:
        yield ipr
    finally:
        ipr.close()
