"""wireguard-go (Debian's userspace WireGuard over TUN) inside a lab node's namespace.

The kernel fallback: used when the kernel has no WireGuard (`Unknown device type`).

Starting: `ip netns exec <node netns> sh -c 'mount --bind DIR /run/wireguard && exec wireguard-go IFACE'`.
`ip netns exec` gives the command its own mount namespace (it remounts /sys there), so the bind
mount is private to the daemon: wireguard-go creates its TUN device inside the node's network
namespace and its configuration socket, which it always puts at /var/run/wireguard/IFACE.sock,
lands in DIR = /run/flowtui/wireguard/<netns>/ — one directory per node namespace, so
`ftwg0.sock` of two nodes never collide, and the root namespace's /run/wireguard stays empty.
wireguard-go runs in its daemon mode: the first process creates the device and the socket, hands
them to a re-executed child and exits, so when the command returns the device is ready. Its
log goes to DIR/IFACE.log (LOG_LEVEL=error), its pid to DIR/IFACE.pid.

Configuration and status go through that socket (the cross-platform UAPI, `device.py`).
Stopping sends SIGTERM (wireguard-go then removes the device and the socket), SIGKILL after a
deadline. A lab namespace being removed (`lab_down`) kills the daemon with everything else in it;
`sweep()` removes the runtime directories of namespaces that are gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from enforcer.lab.kernel import check_lab_netns, netns_exists, netns_path
from enforcer.lab.names import WIREGUARD_RUN_DIR
from enforcer.procs import pid_running
from enforcer.safefile import PRIVATE, atomic_write, open_append, private_dir
from enforcer.wireguard.device import DeviceError, DeviceStatus, parse_uapi_get, uapi_errno

RUN_DIR = WIREGUARD_RUN_DIR
WG_SOCKET_DIR = "/run/wireguard"  # = /var/run/wireguard, wireguard-go's fixed socket directory
BINARY = "wireguard-go"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0
UAPI_TIMEOUT = 5.0
_BIND_AND_EXEC = 'mount --bind "$0" ' + WG_SOCKET_DIR + ' && exec "$@"'


def available() -> bool:
    return shutil.which(BINARY) is not None


def runtime_dir(netns: str) -> Path:
    """/run/flowtui/wireguard/<netns>: the node's sockets, pids and logs."""
    return RUN_DIR / check_lab_netns(netns)


def socket_path(netns: str, interface: str) -> Path:
    return runtime_dir(netns) / f"{interface}.sock"


def netns_command(netns: str, argv: list[str]) -> list[str]:
    """`argv` inside `netns` with /run/wireguard bound to the node's own runtime directory."""
    check_lab_netns(netns)
    return ["ip", "netns", "exec", netns, "sh", "-c", _BIND_AND_EXEC, str(runtime_dir(netns)), *argv]


def _ns_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_pid(netns: str, interface: str) -> int | None:
    """The wireguard-go serving `interface` inside `netns` (checked by namespace inode), if any."""
    want = _ns_inode(netns_path(netns))
    if want is None:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = _cmdline(pid)
        if not argv or os.path.basename(argv[0]) != BINARY or argv[-1] != interface:
            continue
        if _ns_inode(f"/proc/{pid}/ns/net") == want:
            return pid
    return None


def start(netns: str, interface: str) -> int:
    """Start wireguard-go for `interface` inside `netns`; returns its pid once the device and the
    configuration socket exist. DeviceError if it cannot start."""
    if not netns_exists(netns):
        raise DeviceError(f"namespace {netns} does not exist")
    existing = find_pid(netns, interface)
    if existing is not None:
        return existing
    if not available():
        raise DeviceError(f"{BINARY} is not installed (apt-get install --no-install-recommends wireguard-go)")
    folder = private_dir(runtime_dir(netns))
    Path(WG_SOCKET_DIR).mkdir(mode=0o755, exist_ok=True)  # the bind mount's target (stays empty here)
    sock = socket_path(netns, interface)
    if sock.exists():
        sock.unlink()  # left by a daemon that was killed
    env = {**os.environ, "LOG_LEVEL": "error"}
    env.pop("WG_PROCESS_FOREGROUND", None)
    with open_append(folder / f"{interface}.log", PRIVATE) as log:
        try:
            done = subprocess.run(netns_command(netns, [BINARY, interface]), stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, env=env, timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{netns}: {BINARY} {interface} did not start in {START_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise DeviceError(f"{netns}: {BINARY} {interface} exited {done.returncode}: {_tail(folder, interface)}")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        pid = find_pid(netns, interface)
        if pid is not None and sock.exists():
            break
        if time.monotonic() > deadline:
            raise DeviceError(f"{netns}: {BINARY} {interface} did not come up: {_tail(folder, interface)}")
        time.sleep(0.01)
    atomic_write(folder / f"{interface}.pid", f"{pid}\n", PRIVATE)
    return pid


def _tail(folder: Path, interface: str) -> str:
    try:
        text = (folder / f"{interface}.log").read_text(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text.splitlines()[-1] if text else "(empty log)"


def stop(netns: str, interface: str) -> bool:
    """Stop the wireguard-go of `interface` in `netns` (its device goes with it); False if none ran."""
    pid = find_pid(netns, interface) if netns_exists(netns) else None
    stopped = False
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_running(pid) and time.monotonic() < deadline + STOP_TIMEOUT:
                time.sleep(0.01)
        stopped = True
    folder = RUN_DIR / netns
    for suffix in (".sock", ".pid"):
        try:
            (folder / f"{interface}{suffix}").unlink()
        except FileNotFoundError:
            pass
    return stopped


def uapi(netns: str, interface: str, request: str) -> str:
    """Send one UAPI request to the daemon and return its reply (up to the blank line)."""
    path = socket_path(netns, interface)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(UAPI_TIMEOUT)
        try:
            sock.connect(str(path))
            sock.sendall(request.encode())
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"".join(chunks[-2:]).endswith(b"\n\n"):
                    break
        except OSError as exc:
            raise DeviceError(f"{netns}: {interface}: configuration socket {path}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")


def get(netns: str, interface: str) -> DeviceStatus:
    return parse_uapi_get(uapi(netns, interface, "get=1\n\n"))


def set_config(netns: str, interface: str, request: str) -> None:
    reply = uapi(netns, interface, request)
    code = uapi_errno(reply)
    if code != 0:
        raise DeviceError(f"{netns}: {interface}: UAPI set failed: errno {code} ({os.strerror(code)})")


def sweep() -> list[str]:
    """Remove runtime directories of namespaces that no longer exist; returns their names."""
    removed = []
    try:
        entries = sorted(os.listdir(RUN_DIR))
    except FileNotFoundError:
        return []
    for name in entries:
        if netns_exists(name):
            continue
        shutil.rmtree(RUN_DIR / name, ignore_errors=True)
        removed.append(name)
    return removed


def managed_netns(prefix: str) -> list[str]:
    """Namespaces starting with `prefix` that have a runtime directory (WireGuard was set up)."""
    try:
        return sorted(n for n in os.listdir(RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


__all__ = [
    "RUN_DIR",
    "available",
    "find_pid",
    "get",
    "managed_netns",
    "netns_command",
    "runtime_dir",
    "set_config",
    "socket_path",
    "start",
    "stop",
    "sweep",
    "uapi",
]
