"""Resolved cluster state: endpoints, ordered tiers and policies, selector memberships.

Built once from a ResourceSet; memberships are computed lazily and cached, never per flow.
The evaluator, the nftables compiler and the what-if engine all read from this one object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from enforcer.model import (
    DEFAULT_TIER,
    ExternalHost,
    FelixConfiguration,
    HostEndpoint,
    IPAddress,
    IPNetwork,
    Node,
    Policy,
    Profile,
    ResourceSet,
    Tier,
)
from enforcer.resolve.endpoints import Endpoint, EndpointIndex, SetMember, build_endpoints
from enforcer.resolve.ipsets import IPSet, NamedPortSet
from enforcer.resolve.selectors import policy_selector
from enforcer.selector import Selector


@dataclass(frozen=True)
class OrderedTier:
    tier: Tier
    exists: bool
    policies: tuple[Policy, ...]  # in evaluation order, staged included

    @property
    def name(self) -> str:
        return self.tier.name


def _order_key(order: float | None) -> float:
    return math.inf if order is None else order


def policy_sort_key(policy: Policy) -> tuple[float, str]:
    """Calico v3.32+: ascending order (none = +inf), then "<name>/<namespace>/<kind>" bytewise."""
    return (_order_key(policy.order), f"{policy.name}/{policy.namespace or ''}/{policy.kind}")


def order_tiers(tiers: Mapping[str, Tier], referenced: set[str]) -> list[tuple[Tier, bool]]:
    """Existing tiers first, then by order (none last), then name; missing tiers deny by default."""
    out: list[tuple[Tier, bool]] = [(t, True) for t in tiers.values()]
    out += [(Tier(name), False) for name in sorted(referenced - tiers.keys())]
    out.sort(key=lambda tb: (not tb[1], _order_key(tb[0].order), tb[0].name.encode()))
    return out


@dataclass
class ClusterState:
    """Everything the evaluator and compiler need, resolved from the loaded resources."""

    resources: ResourceSet
    _ipsets: dict[Selector | None, IPSet] = field(default_factory=dict, repr=False)
    _named: dict[tuple[Selector | None, str, int | None], NamedPortSet] = field(
        default_factory=dict, repr=False
    )
    _applicable: dict[Endpoint, tuple[Policy, ...]] = field(default_factory=dict, repr=False)

    # ---- static views ------------------------------------------------------------------

    @cached_property
    def index(self) -> EndpointIndex:
        return build_endpoints(self.resources)

    @property
    def felix(self) -> FelixConfiguration:
        return self.resources.felix

    @property
    def profiles(self) -> Mapping[str, Profile]:
        return self.index.profiles

    @cached_property
    def user_profiles(self) -> frozenset[str]:
        """Names of Profile resources the user defined (built-in kns./ksa. ones aside)."""
        return frozenset(p.name for p in self.resources.profiles)

    @cached_property
    def active_policies(self) -> tuple[Policy, ...]:
        """Policies that take part in evaluation: not disabled, not staged deletions."""
        return tuple(
            p for p in self.resources.policies if not p.disabled and p.staged_action != "Delete"
        )

    @cached_property
    def tiers(self) -> tuple[OrderedTier, ...]:
        defined = {DEFAULT_TIER.name: DEFAULT_TIER}
        defined.update({t.name: t for t in self.resources.tiers})
        by_tier: dict[str, list[Policy]] = {}
        for pol in self.active_policies:
            by_tier.setdefault(pol.tier, []).append(pol)
        out = []
        for tier, exists in order_tiers(defined, set(by_tier)):
            pols = sorted(by_tier.get(tier.name, []), key=policy_sort_key)
            out.append(OrderedTier(tier, exists, tuple(pols)))
        return tuple(out)

    @cached_property
    def policy_selectors(self) -> Mapping[tuple[str, str, str], Selector]:
        return {p.key: policy_selector(p) for p in self.active_policies}

    @cached_property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.index.endpoints

    @cached_property
    def pods_by_ref(self) -> Mapping[str, Endpoint]:
        return {ep.ref: ep for ep in self.endpoints if ep.kind == "wep"}

    @cached_property
    def heps_by_name(self) -> Mapping[str, Endpoint]:
        return {ep.name: ep for ep in self.endpoints if ep.kind == "hep"}

    @cached_property
    def nodes(self) -> Mapping[str, Node]:
        return {n.name: n for n in self.resources.nodes}

    @cached_property
    def externals(self) -> Mapping[str, ExternalHost]:
        return {e.name: e for e in self.resources.external_hosts}

    @cached_property
    def owners(self) -> Mapping[IPAddress, tuple[str, str]]:
        """Address → ("pod", "ns/name") | ("node", name) | ("external", name)."""
        out: dict[IPAddress, tuple[str, str]] = {}
        for ext in self.resources.external_hosts:
            for ip in ext.addresses:
                out[ip] = ("external", ext.name)
        for node in self.resources.nodes:
            for ip in node.addresses:
                out[ip] = ("node", node.name)
        for hep in self.resources.host_endpoints:
            for ip in hep.expected_ips:
                out.setdefault(ip, ("node", hep.node))
        for ep in self.endpoints:
            if ep.kind == "wep":
                for ip in ep.ips:
                    out[ip] = ("pod", ep.ref)
        return out

    def host_endpoint_for(self, node: str, interface: str = "eth0") -> Endpoint | None:
        """The HEP governing `interface` on `node` (§2.9): exact name, then expectedIPs, then `*`."""
        return self._hep_for_interface.get((node, interface)) or self._hep_wildcard.get(node)

    @cached_property
    def _hep_for_interface(self) -> Mapping[tuple[str, str], Endpoint]:
        node_ips = {n.name: set(n.addresses) for n in self.resources.nodes}
        chosen: dict[tuple[str, str], tuple[int, str, Endpoint]] = {}
        heps: list[HostEndpoint] = list(self.resources.host_endpoints)
        for hep in heps:
            ep = self.heps_by_name[hep.name]
            if hep.interface_name and hep.interface_name != "*":
                cand = (0, hep.name, ep)
                key = (hep.node, hep.interface_name)
            elif not hep.interface_name and set(hep.expected_ips) & node_ips.get(hep.node, set()):
                # The lab's nodes carry their addresses on eth0.
                cand = (1, hep.name, ep)
                key = (hep.node, "eth0")
            else:
                continue
            if key not in chosen or cand[:2] < chosen[key][:2]:
                chosen[key] = cand
        return {k: v[2] for k, v in chosen.items()}

    @cached_property
    def _hep_wildcard(self) -> Mapping[str, Endpoint]:
        out: dict[str, Endpoint] = {}
        for hep in sorted(self.resources.host_endpoints, key=lambda h: h.name):
            if hep.interface_name == "*":
                out.setdefault(hep.node, self.heps_by_name[hep.name])
        return out

    # ---- memberships (cached) ------------------------------------------------------------

    def applicable_policies(self, endpoint: Endpoint) -> tuple[Policy, ...]:
        """Active policies whose effective selector selects `endpoint`, in no particular order."""
        found = self._applicable.get(endpoint)
        if found is None:
            sels = self.policy_selectors
            found = tuple(p for p in self.active_policies if sels[p.key].matches(endpoint.labels))
            self._applicable[endpoint] = found
        return found

    def ipset(self, selector: Selector | None) -> IPSet:
        """Addresses of every endpoint and network set that `selector` matches (None = all)."""
        found = self._ipsets.get(selector)
        if found is None:
            nets: list[IPNetwork] = []
            for m in self.index.members:
                if selector is None or selector.matches(m.labels):
                    nets.extend(m.nets)
            found = IPSet.of(nets)
            self._ipsets[selector] = found
        return found

    def named_ports(self, selector: Selector | None, name: str, protocol: int | None) -> NamedPortSet:
        """(ip, proto, port) of endpoints matching `selector` that declare port `name`."""
        key = (selector, name, protocol)
        found = self._named.get(key)
        if found is None:
            members: set[tuple[IPAddress, int, int]] = set()
            for m in self.index.members:
                if m.kind == "netset" or (selector is not None and not selector.matches(m.labels)):
                    continue
                for port in m.ports:
                    if port.name == name and (protocol is None or port.protocol == protocol):
                        members.update((net.network_address, port.protocol, port.port) for net in m.nets)
            found = NamedPortSet(frozenset(members))
            self._named[key] = found
        return found

    def members_matching(self, selector: Selector) -> list[SetMember]:
        return [m for m in self.index.members if selector.matches(m.labels)]
