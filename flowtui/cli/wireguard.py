"""`flowtui get wireguard`: per node and family, the WireGuard tunnel as the kernel has it.

    NODE    FAMILY  ENABLED  BACKEND    INTERFACE  PUBLIC KEY     PEERS   HANDSHAKE  RX      TX
    node-a  IPv4    yes      userspace  ftwg0      apWzUJJr…LFg=  1/1 up  12s ago    1.2 MB  1.1 MB

INTERFACE is `ftwg0` for IPv4 (Calico names it `wireguard.cali`, UDP 51820) and `ftwg0v6` for IPv6
(Calico's `wg-v6.cali`, UDP 51821), inside each node's namespace. BACKEND is `kernel` (netlink)
or `userspace` (wireguard-go, when the kernel has no WireGuard; the reason is printed below).
ENABLED is `yes` when the device exists and the node's forwarded pod traffic is routed through
it, `no` when FelixConfiguration does not ask for it, and `NOT READY` when it asks but the tunnel
is not in place (ERROR shows why). HANDSHAKE is the most recent handshake with any peer; a peer
is up when that was less than 180 s ago. `-o json` has every peer (node, endpoint, allowed IPs,
last handshake, bytes each way) and the Node's published key in Calico's `status` form.
"""

from __future__ import annotations

import time

import click

from enforcer.datastore import DesiredState
from flowtui.cli.common import echo_json, fail


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def print_wireguard(lab_id: str, ds: DesiredState, output: str) -> None:
    """Print the WireGuard status of lab `lab_id` (needs root) as a table or JSON."""
    from enforcer.wireguard.status import handshake_text, lab_wireguard_status, summary

    try:
        statuses = lab_wireguard_status(lab_id, ds)
    except Exception as exc:  # an unreadable datastore, a lab being torn down
        fail(f"reading WireGuard state of lab {lab_id}: {exc}")
    now = time.time()
    if output == "json":
        echo_json({"lab": lab_id, "summary": summary(statuses, now), "tunnels": [s.to_json(now) for s in statuses]})
        return
    if not statuses:
        click.echo(f"lab {lab_id} has no nodes up (flowtui lab up -f ...)", err=True)
        return
    headers = ("NODE", "FAMILY", "ENABLED", "BACKEND", "INTERFACE", "PUBLIC KEY", "PEERS", "HANDSHAKE", "RX", "TX")
    rows = []
    notes = []
    for s in statuses:
        enabled = "yes" if s.enabled else ("NOT READY" if s.desired else "no")
        up = sum(p.up(now) for p in s.peers)
        rows.append((s.node, f"IPv{s.family}", enabled, s.backend or "-", s.interface if s.present else "-",
                     s.public_key or s.published_key or "-", f"{up}/{len(s.peers)} up" if s.present else "-",
                     handshake_text(s.last_handshake(), now) if s.present else "-",
                     _bytes(s.rx_bytes) if s.present else "-", _bytes(s.tx_bytes) if s.present else "-"))
        if s.error:
            notes.append(f"{s.node} IPv{s.family}: {s.error}")
        elif s.present and s.published_key and s.public_key != s.published_key:
            notes.append(f"{s.node} IPv{s.family}: the Node's published key differs from the device's")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    reasons = sorted({s.reason for s in statuses if s.present and s.reason})
    for reason in reasons:
        click.echo(f"backend: {reason}", err=True)
    for note in notes:
        click.echo(f"error: {note}", err=True)
    click.echo(summary(statuses, now), err=True)


__all__ = ["print_wireguard"]
