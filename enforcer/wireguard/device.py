"""What a WireGuard device holds: the configuration to give it, the status read back, and the two
text forms they travel in. Pure: no I/O.

- The cross-platform userspace API (UAPI), which wireguard-go serves on a unix socket: `get=1`
  answers `key=value` lines (keys in hex), `set=1` takes them. `uapi_set` renders the smallest
  change from the current status to the wanted configuration (peers are updated in place, so
  their sessions survive a reconcile); None when there is nothing to change.
- `wg` (wireguard-tools), which speaks netlink to a kernel device: `wg_set_args` renders the
  same change as `wg set` arguments; `parse_wg_dump` reads `wg show IFACE dump`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from enforcer.model import IPNetwork
from enforcer.wireguard.keys import KeyStoreError, key_from_hex, key_to_hex, public_key


class DeviceError(Exception):
    """A WireGuard device cannot be created, configured, read or removed; the message says why."""


@dataclass(frozen=True)
class PeerConfig:
    public_key: str  # base64
    endpoint: str  # "addr:port" or "[addr]:port"
    allowed_ips: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class DeviceConfig:
    private_key: str = field(repr=False)  # base64
    listen_port: int
    peers: tuple[PeerConfig, ...]

    @property
    def public_key(self) -> str:
        return public_key(self.private_key)


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    last_handshake: float | None = None  # seconds since the epoch; None: never
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int = 0


@dataclass(frozen=True)
class DeviceStatus:
    public_key: str | None  # None: no private key set
    listen_port: int
    peers: tuple[PeerStatus, ...] = ()
    fwmark: int = 0

    def peer(self, key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == key), None)


def _same_peer(want: PeerConfig, have: PeerStatus | None) -> bool:
    return (have is not None and have.endpoint == want.endpoint
            and sorted(map(str, have.allowed_ips)) == sorted(map(str, want.allowed_ips)))


# ---- UAPI ------------------------------------------------------------------------------------


def uapi_set(want: DeviceConfig, have: DeviceStatus | None) -> str | None:
    """The `set=1` request taking a device from `have` to `want`; None if it is already there."""
    lines: list[str] = []
    if have is None or have.public_key != want.public_key:
        lines.append(f"private_key={key_to_hex(want.private_key)}")
    if have is None or have.listen_port != want.listen_port:
        lines.append(f"listen_port={want.listen_port}")
    wanted = {p.public_key for p in want.peers}
    for old in have.peers if have is not None else ():
        if old.public_key not in wanted:
            lines += [f"public_key={key_to_hex(old.public_key)}", "remove=true"]
    for peer in want.peers:
        if _same_peer(peer, have.peer(peer.public_key) if have is not None else None):
            continue
        lines += [f"public_key={key_to_hex(peer.public_key)}", f"endpoint={peer.endpoint}", "replace_allowed_ips=true"]
        lines += [f"allowed_ip={net}" for net in peer.allowed_ips]
    if not lines:
        return None
    return "set=1\n" + "\n".join(lines) + "\n\n"


def uapi_errno(reply: str) -> int:
    """The `errno=N` of a UAPI reply (the last key); DeviceError if there is none."""
    for line in reversed(reply.splitlines()):
        if line.startswith("errno="):
            return int(line.removeprefix("errno="))
    raise DeviceError(f"malformed UAPI reply: {reply[:200]!r}")


def parse_uapi_get(reply: str) -> DeviceStatus:
    """A `get=1` reply → DeviceStatus (the private key is turned into the public key and dropped)."""
    if uapi_errno(reply) != 0:
        raise DeviceError(f"UAPI get failed: errno {uapi_errno(reply)}")
    device: dict[str, str] = {}
    peers: list[dict[str, list[str]]] = []
    for line in reply.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key == "errno":
            continue
        if key == "public_key":
            peers.append({})
        if peers:
            peers[-1].setdefault(key, []).append(value)
        else:
            device[key] = value
    try:
        private = key_from_hex(device["private_key"]) if device.get("private_key") else None
        pub = public_key(private) if private else None
        return DeviceStatus(
            public_key=pub,
            listen_port=int(device.get("listen_port", "0")),
            fwmark=int(device.get("fwmark", "0")),
            peers=tuple(_uapi_peer(p) for p in peers),
        )
    except (KeyStoreError, ValueError) as exc:
        raise DeviceError(f"malformed UAPI reply: {exc}") from exc


def _uapi_peer(fields: dict[str, list[str]]) -> PeerStatus:
    def one(key: str, default: str = "") -> str:
        return fields.get(key, [default])[0]

    sec, nsec = int(one("last_handshake_time_sec", "0")), int(one("last_handshake_time_nsec", "0"))
    return PeerStatus(
        public_key=key_from_hex(one("public_key")),
        endpoint=one("endpoint") or None,
        allowed_ips=tuple(ipaddress.ip_network(a, strict=False) for a in fields.get("allowed_ip", [])),
        last_handshake=sec + nsec / 1e9 if sec else None,
        rx_bytes=int(one("rx_bytes", "0")),
        tx_bytes=int(one("tx_bytes", "0")),
        keepalive=int(one("persistent_keepalive_interval", "0")),
    )


# ---- wg(8) -------------------------------------------------------------------------------------


def wg_set_args(interface: str, want: DeviceConfig, have: DeviceStatus | None) -> list[str] | None:
    """`wg set` arguments taking the device from `have` to `want` (the private key is read from
    stdin: `private-key /dev/stdin`); None if it is already there."""
    args: list[str] = []
    if have is None or have.public_key != want.public_key:
        args += ["private-key", "/dev/stdin"]
    if have is None or have.listen_port != want.listen_port:
        args += ["listen-port", str(want.listen_port)]
    wanted = {p.public_key for p in want.peers}
    for old in have.peers if have is not None else ():
        if old.public_key not in wanted:
            args += ["peer", old.public_key, "remove"]
    for peer in want.peers:
        if _same_peer(peer, have.peer(peer.public_key) if have is not None else None):
            continue
        args += ["peer", peer.public_key, "endpoint", peer.endpoint,
                 "allowed-ips", ",".join(str(n) for n in peer.allowed_ips)]
    return ["set", interface, *args] if args else None


def parse_wg_dump(text: str) -> DeviceStatus:
    """`wg show IFACE dump`: a device line (private key, public key, port, fwmark), then one
    tab-separated line per peer (public key, preshared key, endpoint, allowed IPs, latest
    handshake, rx, tx, persistent keepalive)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DeviceError("empty `wg show dump` output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise DeviceError(f"malformed `wg show dump` device line: {lines[0]!r}")
    peers: list[PeerStatus] = []
    try:
        for line in lines[1:]:
            f = line.split("\t")
            if len(f) != 8:
                raise DeviceError(f"malformed `wg show dump` peer line: {line!r}")
            allowed = () if f[3] == "(none)" else tuple(ipaddress.ip_network(a, strict=False) for a in f[3].split(","))
            handshake = int(f[4])
            peers.append(PeerStatus(
                public_key=f[0],
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=allowed,
                last_handshake=float(handshake) if handshake else None,
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                keepalive=0 if f[7] == "off" else int(f[7]),
            ))
        return DeviceStatus(
            public_key=None if head[1] == "(none)" else head[1],
            listen_port=int(head[2]),
            fwmark=0 if head[3] == "off" else int(head[3], 0),
            peers=tuple(peers),
        )
    except ValueError as exc:
        raise DeviceError(f"malformed `wg show dump` output: {exc}") from exc


__all__ = [
    "DeviceConfig",
    "DeviceError",
    "DeviceStatus",
    "PeerConfig",
    "PeerStatus",
    "parse_uapi_get",
    "parse_wg_dump",
    "uapi_errno",
    "uapi_set",
    "wg_set_args",
]
