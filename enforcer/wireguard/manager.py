"""Reconcile WireGuard in a lab: FelixConfiguration + nodes + pods → devices, keys, peers, routes, MTUs.

    result = reconcile_lab(Datastore(), "lab")     # what `flowtui apply` / `lab up` run after nft
    result = apply_lab(felix, lab_plan, KeyStore(tmp))       # the same without a datastore
    print(result.describe())

Per node, in an order that never sends traffic into a tunnel that is not ready:

1. each enabled family: the device (kernel, else wireguard-go: `backend.py`), its key, port and
   peers (differential: sessions survive), its MTU, and table 1's routes onto it;
2. each disabled family: the rule, then table 1's routes, then the device are removed;
3. the pods' veth MTUs (the smallest tunnel MTU, or the underlay's);
4. each family whose tunnel is ready: the `not iif lo lookup 1` rule — traffic moves onto it.

A tunnel that fails is left without its rule: its pods' traffic keeps the plain route (Calico
does the same for nodes that are not WireGuard-ready) and the failure is in the result. One
node's failure never stops the others. `reconcile_lab` is a no-op (None) without root, and when
WireGuard is off and was never set up in the lab; it generates missing keys and publishes them
on the Nodes (`publish.py`) before planning from the published keys.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from enforcer.datastore import DesiredState
from enforcer.lab import LabPlan, plan_lab
from enforcer.lab.kernel import netns_exists, open_netns
from enforcer.lab.names import lab_prefix
from enforcer.model import FelixConfiguration
from enforcer.wireguard import routing, userspace
from enforcer.wireguard.backend import Device, Mode, ensure_device, existing_device, mode_from_env
from enforcer.wireguard.device import DeviceConfig, PeerConfig
from enforcer.wireguard.keys import KeyStore
from enforcer.wireguard.plan import (
    FAMILIES,
    INTERFACES,
    NodeWireGuard,
    TunnelPlan,
    WireGuardPlan,
    enabled_families,
    plan_wireguard,
)
from enforcer.wireguard.publish import publish_keys, published_keys, stored_nodes

Action = Literal["enabled", "updated", "unchanged", "disabled", "off", "failed"]


@dataclass(frozen=True)
class TunnelResult:
    node: str
    family: int
    interface: str
    action: Action
    backend: str | None = None  # kernel | userspace
    reason: str = ""  # why that backend
    peers: int = 0
    routes: int = 0
    error: str | None = None

    def __str__(self) -> str:
        head = f"{self.node} IPv{self.family} {self.interface}"
        if self.action == "failed":
            return f"{head}: FAILED: {self.error}"
        if self.action in ("off", "disabled"):
            return f"{head}: {self.action}"
        return (f"{head}: {self.action} ({self.backend}: {self.reason}; {self.peers} peers, "
                f"{self.routes} routes)")


@dataclass(frozen=True)
class WireGuardResult:
    lab_id: str
    families: tuple[int, ...]
    tunnels: tuple[TunnelResult, ...]
    published: tuple[str, ...] = ()  # nodes whose published keys changed
    unpublished: tuple[str, ...] = ()  # nodes without a stored Node object
    warnings: tuple[str, ...] = ()
    elapsed_ms: float = 0.0
    error: str | None = None  # the whole run failed (unreadable datastore, unplannable lab...)

    @property
    def ok(self) -> bool:
        return self.error is None and all(t.action != "failed" for t in self.tunnels)

    @property
    def changed(self) -> bool:
        return bool(self.published) or any(t.action in ("enabled", "updated", "disabled") for t in self.tunnels)

    def describe(self) -> str:
        if self.error is not None:
            return f"wireguard: FAILED: {self.error}"
        fams = ", ".join(f"IPv{f}" for f in self.families) or "off"
        lines = [f"wireguard ({fams}): " + ("; ".join(str(t) for t in self.tunnels if t.action != "off") or "off")]
        if self.published:
            lines.append(f"wireguard: public keys published on node {', '.join(self.published)}")
        if self.unpublished:
            lines.append(f"wireguard: no Node object to publish keys on: {', '.join(self.unpublished)}")
        lines += [f"wireguard: warning: {w}" for w in self.warnings]
        lines.append(f"wireguard: {len(self.tunnels)} tunnels checked in {self.elapsed_ms:.0f} ms")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"lab_id": self.lab_id, "families": list(self.families), "ok": self.ok,
                "published": list(self.published), "unpublished": list(self.unpublished),
                "warnings": list(self.warnings), "elapsed_ms": round(self.elapsed_ms, 1), "error": self.error,
                "tunnels": [t.__dict__ for t in self.tunnels]}


# ---- one node ----------------------------------------------------------------------------------


@dataclass
class _Node:
    plan: NodeWireGuard
    keys: KeyStore
    mode: Mode
    results: dict[int, TunnelResult] = field(default_factory=dict)
    ready: list[tuple[int, bool]] = field(default_factory=list)  # (family, changed so far)

    def fail(self, family: int, exc: BaseException, device: Device | None = None) -> None:
        self.results[family] = TunnelResult(self.plan.node, family, INTERFACES[family], "failed",
                                            device.kind if device else None, device.reason if device else "",
                                            error=str(exc) or repr(exc))

    def build(self, tunnel: TunnelPlan) -> None:
        device: Device | None = None
        try:
            existed = existing_device(tunnel.netns, tunnel.interface)
            device = ensure_device(tunnel.netns, tunnel.interface, self.mode)
            pair = self.keys.ensure(tunnel.node, tunnel.family)
            peers = tuple(PeerConfig(p.public_key, p.endpoint_text, p.allowed_ips) for p in tunnel.peers)
            changed = device.configure(DeviceConfig(pair.private, tunnel.port, peers))
            with open_netns(tunnel.netns) as ipr:
                changed |= routing.set_link(ipr, tunnel.interface, tunnel.mtu)
                changed |= routing.set_routes(ipr, tunnel.family, tunnel.interface, tunnel.routes) > 0
            self.ready.append((tunnel.family, changed or existed is None))
            self.results[tunnel.family] = TunnelResult(
                tunnel.node, tunnel.family, tunnel.interface, "enabled" if existed is None else "unchanged",
                device.kind, device.reason, len(tunnel.peers), len(tunnel.routes))
        except Exception as exc:  # the node's other family and the other nodes go on
            self.fail(tunnel.family, exc, device)
            self.unroute(tunnel.family)

    def unroute(self, family: int) -> bool:
        try:
            with open_netns(self.plan.netns) as ipr:
                changed = routing.set_rule(ipr, family, False)
                return routing.set_routes(ipr, family, None, ()) > 0 or changed
        except Exception:
            return False

    def teardown(self, family: int) -> None:
        interface = INTERFACES[family]
        try:
            changed = self.unroute(family)
            device = existing_device(self.plan.netns, interface)
            if device is not None:
                device.remove()
                changed = True
            self.results[family] = TunnelResult(self.plan.node, family, interface, "disabled" if changed else "off")
        except Exception as exc:
            self.fail(family, exc)

    def switch_on(self) -> None:
        for family, changed in self.ready:
            result = self.results[family]
            try:
                with open_netns(self.plan.netns) as ipr:
                    changed |= routing.set_rule(ipr, family, True)
                if changed and result.action == "unchanged":
                    self.results[family] = replace(result, action="updated")
            except Exception as exc:
                self.fail(family, exc)
                self.unroute(family)


def apply_plan(plan: WireGuardPlan, keys: KeyStore, mode: Mode = "auto",
               only: Collection[str] | None = None) -> tuple[TunnelResult, ...]:
    """Make every node of `plan` whose namespace exists (and, with `only`, that it names) hold
    its WireGuard state."""
    out: list[TunnelResult] = []
    for node_plan in plan.nodes:
        if (only is not None and node_plan.node not in only) or not netns_exists(node_plan.netns):
            continue
        node = _Node(node_plan, keys, mode)
        for family in FAMILIES:
            tunnel = node_plan.tunnel(family)
            if tunnel is not None:
                userspace.runtime_dir(node_plan.netns).mkdir(mode=0o700, parents=True, exist_ok=True)
                node.build(tunnel)
            else:
                node.teardown(family)
        try:
            routing.set_pod_mtu(node_plan.netns, ((p.netns, p.interface) for p in node_plan.pods), node_plan.pod_mtu)
        except Exception as exc:
            for fam, _ in node.ready:
                node.fail(fam, exc)
                node.unroute(fam)
            node.ready.clear()
        node.switch_on()
        if not node_plan.tunnels and all(r.action in ("off", "disabled") for r in node.results.values()):
            shutil.rmtree(userspace.RUN_DIR / node_plan.netns, ignore_errors=True)
        out += [node.results[f] for f in FAMILIES]
    return tuple(out)


# ---- a lab ------------------------------------------------------------------------------------


def underlay_mtus(lab: LabPlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in lab.nodes:
        if netns_exists(node.netns):
            mtu = routing.underlay_mtu(node.netns, node.interface)
            if mtu is not None:
                out[node.name] = mtu
    return out


def apply_lab(
    felix: FelixConfiguration,
    lab: LabPlan,
    keys: KeyStore,
    *,
    mode: Mode | None = None,
    public_keys: Mapping[tuple[str, int], str] | None = None,
    only: Collection[str] | None = None,
) -> WireGuardResult:
    """Plan and apply WireGuard as `felix` says in the lab built from `lab` (root). Keys of
    enabled families are generated when missing; `public_keys` (default: the key store's) is
    what peers are configured with; `only` limits the nodes configured (all stay peers)."""
    start = time.perf_counter()
    families: tuple[int, ...] = enabled_families(felix)
    pubs: dict[tuple[str, int], str] = {(n.name, f): keys.ensure(n.name, f).public for n in lab.nodes for f in families}
    if public_keys is not None:
        pubs.update({k: v for k, v in public_keys.items() if k[1] in families})
    plan = plan_wireguard(felix, lab, pubs, underlay_mtus(lab))
    tunnels = apply_plan(plan, keys, mode or mode_from_env(), only)
    userspace.sweep()
    return WireGuardResult(lab.lab_id, families, tunnels, warnings=plan.warnings,
                           elapsed_ms=(time.perf_counter() - start) * 1e3)


def disable_lab(lab: LabPlan, keys: KeyStore) -> WireGuardResult:
    """Turn WireGuard off on every node of the lab: plain routing back, devices removed."""
    return apply_lab(FelixConfiguration(), lab, keys)


def reconcile_lab(ds: DesiredState, lab_id: str | None, nodes: Collection[str] | None = None, *,
                  mode: Mode | None = None, felix: FelixConfiguration | None = None) -> WireGuardResult | None:
    """WireGuard for the lab as the datastore wants it; None when there is nothing to do (not
    root, no lab id, the lab not up, WireGuard off and never set up in this lab). `nodes` limits
    the nodes configured (default: all whose namespaces exist). `felix`, the FelixConfiguration
    the caller just enforced, spares loading the datastore when WireGuard is off."""
    if lab_id is None or os.geteuid() != 0:
        return None
    if felix is not None and not enabled_families(felix) and not userspace.managed_netns(lab_prefix(lab_id)):
        return None
    with ds.locked():  # one WireGuard reconcile at a time (two daemons for one device would clash)
        return _reconcile_locked(ds, lab_id, nodes, mode)


def _reconcile_locked(ds: DesiredState, lab_id: str, nodes: Collection[str] | None, mode: Mode | None
                      ) -> WireGuardResult | None:
    resources = ds.resources()
    families = enabled_families(resources.felix)
    if not families and not userspace.managed_netns(lab_prefix(lab_id)):
        return None
    start = time.perf_counter()
    lab = plan_lab(resources, lab_id)
    if not any(netns_exists(n.netns) for n in lab.nodes):
        userspace.sweep()
        return None  # the lab is not up: nothing to configure, keys are made when it is
    keys = KeyStore.for_datastore(ds.path)
    stored = stored_nodes(ds)
    wanted: dict[str, dict[int, str | None]] = {
        n.name: {f: (keys.ensure(n.name, f).public if f in families else None) for f in FAMILIES} for n in lab.nodes
    }
    changed = publish_keys(ds, wanted)
    published = {k: v for k, v in published_keys(ds).items() if k[1] in families}
    result = apply_lab(resources.felix, lab, keys, mode=mode, public_keys=published, only=nodes)
    unpublished = tuple(sorted(n.name for n in lab.nodes if n.name not in stored)) if families else ()
    return replace(result, published=tuple(changed), unpublished=unpublished,
                   elapsed_ms=(time.perf_counter() - start) * 1e3)


def reconcile_lab_reported(ds: DesiredState, lab_id: str | None, nodes: Collection[str] | None = None, *,
                           felix: FelixConfiguration | None = None) -> WireGuardResult | None:
    """`reconcile_lab` for the reconciler: a failure of the whole run comes back in the result
    (`error`), never as an exception, so nftables enforcement is never undone by WireGuard."""
    try:
        return reconcile_lab(ds, lab_id, nodes, felix=felix)
    except Exception as exc:
        return WireGuardResult(lab_id or "", (), (), error=f"{type(exc).__name__}: {exc}")


def felix_with(felix: FelixConfiguration, v4: bool, v6: bool) -> FelixConfiguration:
    """`felix` with the two WireGuard switches set (tests, benchmarks)."""
    return replace(felix, wireguard_enabled=v4, wireguard_enabled_v6=v6)


__all__ = [
    "TunnelResult",
    "WireGuardResult",
    "apply_lab",
    "apply_plan",
    "disable_lab",
    "felix_with",
    "reconcile_lab",
    "reconcile_lab_reported",
    "underlay_mtus",
]
