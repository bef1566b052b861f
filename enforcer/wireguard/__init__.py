"""WireGuard between lab nodes: Calico's "encrypt pod traffic" (FelixConfiguration
`wireguardEnabled` / `wireguardEnabledV6`), live.

    result = reconcile_lab(Datastore(), "lab")   # after every nft reconcile; None when off
    statuses = lab_wireguard_status("lab", Datastore())

Modules, in order of dependency: `keys` (Curve25519 key pairs on disk, 0600), `plan` (pure:
felix + lab plan + public keys → tunnels, peers, routes, MTUs), `device` (pure: device
configuration and status, UAPI and `wg` text forms), `userspace` (wireguard-go inside a node
namespace), `backend` (kernel WireGuard over netlink if the kernel has it, else wireguard-go:
detected, reported), `routing` (table 1 + rule, MTUs), `publish` (public keys on the stored
Nodes, as Calico publishes them), `manager` (reconcile), `status` (what `flowtui get wireguard`
and the TUI show). Only the pure modules are imported here; the kernel ones load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from enforcer.wireguard.keys import KeyPair, KeyStore, KeyStoreError
from enforcer.wireguard.plan import (
    CALICO_INTERFACES,
    INTERFACES,
    PORTS,
    WireGuardPlan,
    enabled_families,
    plan_wireguard,
)

if TYPE_CHECKING:
    from enforcer.wireguard.manager import WireGuardResult, apply_lab, disable_lab, reconcile_lab
    from enforcer.wireguard.status import TunnelStatus, lab_wireguard_status, summary

_LAZY = {
    "WireGuardResult": "enforcer.wireguard.manager",
    "apply_lab": "enforcer.wireguard.manager",
    "disable_lab": "enforcer.wireguard.manager",
    "reconcile_lab": "enforcer.wireguard.manager",
    "TunnelStatus": "enforcer.wireguard.status",
    "lab_wireguard_status": "enforcer.wireguard.status",
    "summary": "enforcer.wireguard.status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "CALICO_INTERFACES",
    "INTERFACES",
    "PORTS",
    "KeyPair",
    "KeyStore",
    "KeyStoreError",
    "TunnelStatus",
    "WireGuardPlan",
    "WireGuardResult",
    "apply_lab",
    "disable_lab",
    "enabled_families",
    "lab_wireguard_status",
    "plan_wireguard",
    "reconcile_lab",
    "summary",
]
