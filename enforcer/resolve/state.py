"""Resolved cluster state: endpoints, ordered tiers and policies, selector memberships.

Built once from a ResourceSet; memberships are computed lazily and cached, never per flow.
The evaluator, the nftables compiler and the what-if engine all read from this one object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from enforcer.model import (
    BUILTIN_TIERS,
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


# ResourceSet fields the endpoint index and selector memberships are computed from (all but
# policies and tiers), and the cached properties computed from them alone.
CLUSTER_FIELDS = ("profiles", "namespaces", "service_accounts", "pods", "nodes", "host_endpoints", "network_sets",
                  "felix", "external_hosts", "workloads", "services")
CLUSTER_PROPERTIES = ("index", "endpoints", "pods_by_ref", "heps_by_name", "nodes", "externals", "owners",
                      "user_profiles", "_hep_for_interface", "_hep_wildcard")


def _order_key(order: float | None) -> float:
    return math.inf if order is None else order


# Felix's kind where it differs from flowtui's model kind (it breaks order ties).
_FELIX_KIND = {"ClusterNetworkPolicy": "KubernetesClusterNetworkPolicy"}


def policy_sort_key(policy: Policy) -> tuple[float, str]:
    """Calico v3.32+: ascending order (none = +inf), then "<name>/<namespace>/<kind>" bytewise,
    with felix's kind names."""
    kind = _FELIX_KIND.get(policy.kind, policy.kind)
    return (_order_key(policy.order), f"{policy.name}/{policy.namespace or ''}/{kind}")


def defined_tiers(tiers: Iterable[Tier], referenced: set[str]) -> dict[str, Tier]:
    """The tiers that exist: the user's, and Calico's built-in ones (which Calico creates itself).
    kube-admin and kube-baseline are listed only once a policy is in them: empty, they change
    nothing, and listing them would clutter every view."""
    out = {t.name: t for t in BUILTIN_TIERS if t is DEFAULT_TIER or t.name in referenced}
    out.update({t.name: t for t in tiers})
    return out


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
    _applicable: MutableMapping[Endpoint, tuple[Policy, ...]] = field(default_factory=dict, repr=False)
    # The dataplane's view: disabled policies take part (the compiler puts them behind a gate
    # that is closed), so a toggle is one set element, not a recompile. Never for deciding flows.
    include_disabled: bool = False
    # Results derived from the cluster objects only (never from policies), kept by their users
    # (the nftables compiler's rendered sets and policy chains): shared by `derive`d states.
    caches: dict[str, Any] = field(default_factory=dict, repr=False)

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
            p for p in self.resources.policies
            if (self.include_disabled or not p.disabled) and p.staged_action != "Delete"
        )

    def derive(self, resources: ResourceSet, *, lazy: bool = False) -> ClusterState:
        """The state of `resources`, reusing what this state resolved wherever it cannot differ.

        When the cluster objects (everything but policies and tiers) are equal, the new state
        shares the endpoint index, the selector address and named-port sets and `caches`, and
        derives each endpoint's applicable policies from this state's: the old answer without the
        policies that changed, plus the changed ones that select it. `lazy` derives on first use
        and keeps a reference to this state (what-if: two states side by side); otherwise the
        endpoints resolved so far are derived now and nothing refers back (a reconciler's chain of
        edits stays bounded). Otherwise it is `ClusterState(resources)`.
        """
        old = self.resources
        if any(getattr(old, f) != getattr(resources, f) for f in CLUSTER_FIELDS):
            return ClusterState(resources, include_disabled=self.include_disabled)
        new = ClusterState(resources, _ipsets=self._ipsets, _named=self._named,
                           include_disabled=self.include_disabled, caches=self.caches)
        for name in CLUSTER_PROPERTIES:  # computed here if not yet, once for both
            new.__dict__[name] = getattr(self, name)
        before = {p.key: p for p in old.policies}
        after = {p.key: p for p in resources.policies}
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        if not changed:
            new._applicable = self._applicable if lazy else dict(self._applicable)
        elif lazy:
            new._applicable = DerivedApplicable(self, new, changed)
        else:
            derived = DerivedApplicable(self, new, changed)
            new._applicable = {ep: derived.get(ep) for ep in list(self._applicable)}
        return new

    def for_dataplane(self) -> ClusterState:
        """The state the compiler lays out: disabled policies included (their gates closed).
        Itself when nothing is disabled or it already is that view."""
        if self.include_disabled or not any(p.disabled for p in self.resources.policies):
            return self
        return ClusterState(self.resources, include_disabled=True)

    @cached_property
    def tiers(self) -> tuple[OrderedTier, ...]:
        by_tier: dict[str, list[Policy]] = {}
        for pol in self.active_policies:
            by_tier.setdefault(pol.tier, []).append(pol)
        defined = defined_tiers(self.resources.tiers, set(by_tier))
        out = []
        for tier, exists in order_tiers(defined, set(by_tier)):
            pols = sorted(by_tier.get(tier.name, []), key=policy_sort_key)
            out.append(OrderedTier(tier, exists, tuple(pols)))
        return tuple(out)

    @cached_property
    def policy_positions(self) -> Mapping[tuple[str, str, str], tuple[int, int]]:
        """Policy key → (index of its tier in `tiers`, position in that tier's evaluation order)."""
        return {p.key: (t, i) for t, ot in enumerate(self.tiers) for i, p in enumerate(ot.policies)}

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

    def all_interfaces_endpoint(self, node: str) -> Endpoint | None:
        """The node's all-interfaces HEP (`interfaceName: "*"`): the one that covers every interface
        no other HEP names — pod interfaces and the WireGuard tunnel included."""
        return self._hep_wildcard.get(node)

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
            # Each distinct selector is matched once (policies often share one), and endpoints
            # matching the same selectors share one answer object: the evaluator's per-endpoint
            # tiers are then computed once per answer, not once per endpoint.
            matched = tuple(i for i, (sel, _) in enumerate(self._policies_by_selector)
                            if sel.matches(endpoint.labels))
            found = self._applicable_by_match.get(matched)
            if found is None:
                groups = self._policies_by_selector
                found = self._applicable_by_match[matched] = tuple(p for i in matched for p in groups[i][1])
            self._applicable[endpoint] = found
        return found

    @cached_property
    def _policies_by_selector(self) -> tuple[tuple[Selector, tuple[Policy, ...]], ...]:
        groups: dict[Selector, list[Policy]] = {}
        sels = self.policy_selectors
        for p in self.active_policies:
            groups.setdefault(sels[p.key], []).append(p)
        return tuple((sel, tuple(pols)) for sel, pols in groups.items())

    @cached_property
    def _applicable_by_match(self) -> dict[tuple[int, ...], tuple[Policy, ...]]:
        return {}

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


class DerivedApplicable(MutableMapping[Endpoint, tuple[Policy, ...]]):
    """A derived state's endpoint → applicable policies, from its base state's answers."""

    def __init__(self, base: ClusterState, edited: ClusterState, changed: set[tuple[str, str, str]]) -> None:
        self.base = base
        self.edited = edited
        self.changed = changed
        self.data: dict[Endpoint, tuple[Policy, ...]] = {}
        self._new: list[tuple[Policy, Selector]] | None = None

    def _changed_active(self) -> list[tuple[Policy, Selector]]:
        """The changed policies that take part, with their selectors (only theirs: building every
        policy's selector made a one-policy toggle cost as much as the whole set)."""
        if self._new is None:
            sels = self.edited.__dict__.get("policy_selectors")
            self._new = [(p, sels[p.key] if sels is not None else policy_selector(p))
                         for p in self.edited.active_policies if p.key in self.changed]
        return self._new

    def get(self, ep: Endpoint, default: Any = None) -> Any:
        found = self.data.get(ep)
        if found is None:
            kept = tuple(p for p in self.base.applicable_policies(ep) if p.key not in self.changed)
            new = tuple(p for p, sel in self._changed_active() if sel.matches(ep.labels))
            found = self.data[ep] = kept + new
        return found

    def __getitem__(self, ep: Endpoint) -> tuple[Policy, ...]:
        return self.data[ep]

    def __setitem__(self, ep: Endpoint, value: tuple[Policy, ...]) -> None:
        self.data[ep] = value

    def __delitem__(self, ep: Endpoint) -> None:
        del self.data[ep]

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
