"""IP address -> endpoint metadata (pod, namespace, labels, node, host endpoint, network set).

An `Enricher` is built from one `enforcer.model.ResourceSet` (one *endpoint revision*) and hands
out endpoint identifiers that are unique across revisions, so events and flows can keep a small
integer and the `endpoints` table keeps the metadata (see `flowtui.store.schema`).

Precedence for an address, most specific first, as Calico's flow logs name endpoints:

1. a pod's address -> `wep` (workload endpoint), its namespace, name, labels and node;
2. a host endpoint's expected address -> `hep`, named after the host endpoint, with its node;
3. a node's address -> `hep` named after the node when a host endpoint covers that node,
   otherwise `node`;
4. a lab external host (`ExternalHost`) -> `external`;
5. the longest network-set CIDR containing it -> `netset` (namespaced or global, `-` namespace);
6. anything else -> `net`, named `pvt` (RFC 1918, ULA, loopback, link-local) or `pub`.

Lookups are per distinct address of a batch and cached, so the cost is per address, not per
event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from enforcer.model import HostEndpoint, IPNetwork, ResourceSet

PRIVATE_V4 = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16")
)
PRIVATE_V6 = tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10", "::1/128"))
CACHE_LIMIT = 200_000


@dataclass(frozen=True)
class EndpointInfo:
    id: int
    revision: int
    kind: str  # wep | hep | node | external | netset | net
    name: str
    namespace: str | None
    node: str | None
    labels: tuple[tuple[str, str], ...]
    addresses: tuple[str, ...]  # addresses or CIDRs it was matched by

    @property
    def label_strings(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.labels]


class Enricher:
    """Address -> EndpointInfo for one revision of the cluster's resources."""

    def __init__(self, resources: ResourceSet | None = None, revision: int = 1, first_id: int = 1) -> None:
        self.revision = revision
        self.endpoints: list[EndpointInfo] = []
        self._exact: dict[str, int] = {}
        self._nets: dict[int, list[tuple[IPNetwork, int]]] = {4: [], 6: []}
        self._next = first_id
        self._cache: dict[str, int] = {}
        res = resources or ResourceSet()
        hep_nodes: dict[str, HostEndpoint] = {h.node: h for h in res.host_endpoints}
        for pod in res.pods:
            self._exact_add("wep", pod.name, pod.namespace, pod.node, pod.labels, [str(ip) for ip in pod.ips])
        for hep in res.host_endpoints:
            self._exact_add("hep", hep.name, None, hep.node, hep.labels, [str(ip) for ip in hep.expected_ips])
        for node in res.nodes:
            node_hep = hep_nodes.get(node.name)
            if node_hep is not None:
                addresses = [str(ip) for ip in node.addresses]
                self._exact_add("hep", node_hep.name, None, node.name, node_hep.labels, addresses)
            else:
                self._exact_add("node", node.name, None, node.name, node.labels, [str(ip) for ip in node.addresses])
        for ext in res.external_hosts:
            self._exact_add("external", ext.name, None, None, (), [str(ip) for ip in ext.addresses])
        for nset in res.network_sets:
            info = self._new("netset", nset.name, nset.namespace, None, nset.labels, [str(n) for n in nset.nets])
            for net in nset.nets:
                self._nets[net.version].append((net, info.id))
        for family in self._nets.values():
            family.sort(key=lambda item: -item[0].prefixlen)  # longest prefix first
        self.private = self._new("net", "pvt", None, None, (), [str(n) for n in (*PRIVATE_V4, *PRIVATE_V6)]).id
        self.public = self._new("net", "pub", None, None, (), []).id

    def _new(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        node: str | None,
        labels: Iterable[tuple[str, str]],
        addresses: list[str],
    ) -> EndpointInfo:
        info = EndpointInfo(
            self._next, self.revision, kind, name, namespace, node, tuple(sorted(labels)), tuple(addresses)
        )
        self._next += 1
        self.endpoints.append(info)
        return info

    def _exact_add(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        node: str | None,
        labels: Iterable[tuple[str, str]],
        addresses: list[str],
    ) -> None:
        fresh = [a for a in addresses if a not in self._exact]
        if not fresh:
            return
        info = self._new(kind, name, namespace, node, labels, fresh)
        for address in fresh:
            self._exact[address] = info.id

    @property
    def next_id(self) -> int:
        return self._next

    def by_id(self) -> dict[int, EndpointInfo]:
        return {e.id: e for e in self.endpoints}

    def lookup(self, address: str) -> int:
        """The endpoint id of `address` (always one: `net` pvt/pub at worst; -1 if unparsable)."""
        found = self._cache.get(address)
        if found is not None:
            return found
        found = self._exact.get(address)
        if found is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return -1
            found = next((ep for net, ep in self._nets[ip.version] if ip in net), None)
            if found is None:
                private = PRIVATE_V4 if ip.version == 4 else PRIVATE_V6
                found = self.private if any(ip in n for n in private) else self.public
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = found
        return found

    def lookup_codes(self, texts: list[str]) -> npt.NDArray[np.int32]:
        """Endpoint id for each address of a batch's address table."""
        return np.fromiter((self.lookup(t) for t in texts), dtype=np.int32, count=len(texts))
