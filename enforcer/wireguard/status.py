"""What WireGuard looks like in a lab right now: per node and family, read from the kernel.

For `flowtui get wireguard` and the TUI's status bar (`summary`). Reading needs root (the
devices live in the lab's node namespaces). A peer counts as up when its last handshake is
younger than 180 s (WireGuard's REJECT_AFTER_TIME: older sessions can no longer carry data).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from enforcer.datastore import DesiredState
from enforcer.lab.kernel import open_netns
from enforcer.lab.names import target_of_netns
from enforcer.lab.state import lab_namespaces
from enforcer.wireguard import routing
from enforcer.wireguard.backend import existing_device
from enforcer.wireguard.keys import KeyStore, KeyStoreError
from enforcer.wireguard.plan import FAMILIES, INTERFACES, enabled_families
from enforcer.wireguard.publish import STATUS_FIELDS, published_keys

HANDSHAKE_FRESH = 180.0


@dataclass(frozen=True)
class PeerView:
    node: str | None  # resolved from published (or stored) public keys
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int

    def up(self, now: float) -> bool:
        return self.last_handshake is not None and now - self.last_handshake < HANDSHAKE_FRESH


@dataclass(frozen=True)
class TunnelStatus:
    node: str
    family: int
    interface: str
    netns: str
    desired: bool  # FelixConfiguration asks for this family
    present: bool  # the device exists
    routed: bool  # the rule is in: the node's forwarded pod traffic goes through the tunnel
    backend: str | None = None
    reason: str = ""
    public_key: str | None = None  # the device's
    published_key: str | None = None  # the Node's annotation
    listen_port: int | None = None
    mtu: int | None = None
    peers: tuple[PeerView, ...] = ()
    error: str | None = None

    @property
    def enabled(self) -> bool:
        return self.present and self.routed

    @property
    def rx_bytes(self) -> int:
        return sum(p.rx_bytes for p in self.peers)

    @property
    def tx_bytes(self) -> int:
        return sum(p.tx_bytes for p in self.peers)

    def last_handshake(self) -> float | None:
        times = [p.last_handshake for p in self.peers if p.last_handshake is not None]
        return max(times) if times else None

    def to_json(self, now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        return {
            "node": self.node, "family": self.family, "interface": self.interface, "netns": self.netns,
            "desired": self.desired, "enabled": self.enabled, "present": self.present, "routed": self.routed,
            "backend": self.backend, "reason": self.reason, "publicKey": self.public_key,
            # Calico's Node resource field for this family (projectcalico.org/v3 Node status)
            "status": {STATUS_FIELDS[self.family]: self.published_key},
            "listenPort": self.listen_port, "mtu": self.mtu, "rxBytes": self.rx_bytes, "txBytes": self.tx_bytes,
            "peers": [
                {"node": p.node, "publicKey": p.public_key, "endpoint": p.endpoint, "allowedIPs": list(p.allowed_ips),
                 "lastHandshake": p.last_handshake,
                 "secondsSinceHandshake": None if p.last_handshake is None else round(now - p.last_handshake, 1),
                 "up": p.up(now), "rxBytes": p.rx_bytes, "txBytes": p.tx_bytes}
                for p in self.peers
            ],
            "error": self.error,
        }


def _lab_nodes(lab_id: str) -> list[tuple[str, str]]:
    out = []
    for name in lab_namespaces(lab_id):
        target = target_of_netns(lab_id, name)
        if target is not None and target.kind == "node":
            out.append((target.name, name))
    return out


def read_tunnel(node: str, netns: str, family: int, desired: bool, published: str | None,
                names: dict[str, str]) -> TunnelStatus:
    interface = INTERFACES[family]
    base = TunnelStatus(node, family, interface, netns, desired, False, False, published_key=published)
    try:
        with open_netns(netns) as ipr:
            routed = routing.rule_present(ipr, family)
            mtu = routing.link_mtu(ipr, interface)
        device = existing_device(netns, interface)
        if device is None:
            return TunnelStatus(node, family, interface, netns, desired, False, routed, published_key=published)
        st = device.status()
    except Exception as exc:  # a node being rebuilt, a daemon that died: report, keep going
        return TunnelStatus(node, family, interface, netns, desired, base.present, base.routed,
                            published_key=published, error=str(exc) or repr(exc))
    peers = tuple(
        PeerView(names.get(p.public_key), p.public_key, p.endpoint, tuple(map(str, p.allowed_ips)), p.last_handshake,
                 p.rx_bytes, p.tx_bytes)
        for p in st.peers
    )
    return TunnelStatus(node, family, interface, netns, desired, True, routed, device.kind, device.reason,
                        st.public_key, published, st.listen_port, mtu, peers)


def lab_wireguard_status(lab_id: str, ds: DesiredState | None = None) -> tuple[TunnelStatus, ...]:
    """Every node of lab `lab_id` × IPv4/IPv6; with a datastore, what is desired and published."""
    desired: tuple[int, ...] = ()
    published: dict[tuple[str, int], str] = {}
    names: dict[str, str] = {}
    if ds is not None:
        desired = enabled_families(ds.resources().felix)
        published = published_keys(ds)
        try:
            names = {pub: node for (node, _), pub in KeyStore.for_datastore(ds.path).stored().items()}
        except (OSError, KeyStoreError):
            names = {}
        names.update({pub: node for (node, _), pub in published.items()})
    out = []
    for node, netns in _lab_nodes(lab_id):
        for family in FAMILIES:
            out.append(read_tunnel(node, netns, family, family in desired, published.get((node, family)), names))
    return tuple(out)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def handshake_text(when: float | None, now: float) -> str:
    return "never" if when is None else f"{_age(max(0.0, now - when))} ago"


def summary(statuses: Iterable[TunnelStatus], now: float | None = None) -> str:
    """One line for a status bar: `WireGuard IPv4 2/2 nodes, 2/2 peers up (userspace) · IPv6 off`."""
    now = time.time() if now is None else now
    parts = []
    items = list(statuses)
    for family in FAMILIES:
        fam = [s for s in items if s.family == family]
        on = [s for s in fam if s.enabled]
        if not on and not any(s.desired for s in fam):
            parts.append(f"IPv{family} off")
            continue
        peers = [p for s in on for p in s.peers]
        up = sum(p.up(now) for p in peers)
        kinds = "/".join(sorted({s.backend for s in on if s.backend})) or "-"
        errors = sum(1 for s in fam if s.error or (s.desired and not s.enabled))
        text = f"IPv{family} {len(on)}/{len(fam)} nodes, {up}/{len(peers)} peers up ({kinds})"
        parts.append(text + (f", {errors} not ready" if errors else ""))
    return "WireGuard " + " · ".join(parts) if parts else "WireGuard: no lab nodes"


__all__ = ["HANDSHAKE_FRESH", "PeerView", "TunnelStatus", "handshake_text", "lab_wireguard_status", "read_tunnel",
           "summary"]
