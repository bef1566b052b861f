"""The endpoints a flow source recorded, as pods the what-if can decide for.

Flows imported from Hubble or Calico (and flow stores they were imported into) name their pods:
namespace, name, labels (namespace labels as Calico's `pcns.<key>`, the service account as
`projectcalico.org/serviceaccount`). When the current policy set has no pod at a flow's address,
what-if would decide the flow for an unknown address and report nothing; `with_recorded_pods`
adds the recorded pods (and their namespaces, with their labels) to the set instead, so
selectors see them. Pods the set already names, by address or by namespace/name, win.

Calico's aggregated records (Goldmane, whisker) carry no addresses: `fill_addresses` gives each
recorded pod a stable address from the shared address space 100.64.0.0/10 (RFC 6598: neither a
cluster's pod network nor the internet), and Calico's `pub` / `pvt` networks a documentation
address (203.0.113.1) and a private one (192.168.255.1), so the engine has something to match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import polars as pl

from enforcer.model import IPAddress, Namespace, Pod, ResourceSet

NS_LABEL = "pcns."
SA_LABEL = "projectcalico.org/serviceaccount="
SYNTHETIC_PODS = ipaddress.ip_network("100.64.0.0/10")
NETWORK_ADDRESS = {"pub": "203.0.113.1", "pvt": "192.168.255.1"}
SIDES = ("src", "dst")


def _has_endpoints(frame: pl.DataFrame) -> bool:
    return all(f"{side}_{col}" in frame.columns for side in SIDES for col in ("type", "namespace", "name", "labels"))


def fill_addresses(frame: pl.DataFrame) -> pl.DataFrame:
    """Addresses for rows that recorded an endpoint but no address (see the module doc)."""
    if not _has_endpoints(frame) or not (frame["src_ip"].is_null().any() or frame["dst_ip"].is_null().any()):
        return frame
    pods: dict[tuple[str, str], str] = {}
    base = int(SYNTHETIC_PODS.network_address)

    def address(kind: str | None, namespace: str | None, name: str | None) -> str | None:
        if kind == "net" and name in NETWORK_ADDRESS:
            return NETWORK_ADDRESS[name]
        if kind is None or name is None:
            return None
        key = (f"{kind}:{namespace or ''}", name)
        if key not in pods:
            pods[key] = str(ipaddress.ip_address(base + 1 + len(pods)))
        return pods[key]

    out = {}
    for side in SIDES:
        ips, kinds = frame[f"{side}_ip"].to_list(), frame[f"{side}_type"].to_list()
        namespaces, names = frame[f"{side}_namespace"].to_list(), frame[f"{side}_name"].to_list()
        out[f"{side}_ip"] = [ip if ip is not None else address(k, ns, n)
                             for ip, k, ns, n in zip(ips, kinds, namespaces, names, strict=True)]
    return frame.with_columns(pl.Series(name, values, dtype=pl.String) for name, values in out.items())


def _split(labels: list[str] | None) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], str]:
    """(pod labels, namespace labels, service account) from recorded `key=value` labels."""
    pod, ns, account = [], [], "default"
    for label in labels or []:
        key, _, value = label.partition("=")
        if label.startswith(SA_LABEL):
            account = value
        elif key.startswith(NS_LABEL):
            ns.append((key[len(NS_LABEL):], value))
        else:
            pod.append((key, value))
    return tuple(pod), tuple(ns), account


def with_recorded_pods(res: ResourceSet, frame: pl.DataFrame) -> tuple[ResourceSet, int]:
    """`res` plus the recorded pods it does not know; returns the set and how many pods were added."""
    if not _has_endpoints(frame):
        return res, 0
    known_ips: set[IPAddress] = {ip for pod in res.pods for ip in pod.ips}
    known_ips |= {ip for node in res.nodes for ip in node.addresses}
    known_pods = {(p.namespace, p.name) for p in res.pods}
    namespaces = {ns.name: ns for ns in res.namespaces}
    added: dict[tuple[str, str], Pod] = {}
    new_ns: dict[str, Namespace] = {}
    for side in SIDES:
        rows = frame.select(f"{side}_ip", f"{side}_type", f"{side}_namespace", f"{side}_name", f"{side}_labels") \
            .filter(pl.col(f"{side}_type") == "wep").unique(subset=[f"{side}_ip", f"{side}_namespace",
                                                                      f"{side}_name"]).rows()
        for ip_text, _kind, namespace, name, labels in rows:
            if not namespace or not name or (namespace, name) in known_pods:
                continue
            try:
                ip = ipaddress.ip_address(str(ip_text).split("%")[0]) if ip_text else None
            except ValueError:
                ip = None
            if ip is None or ip in known_ips:
                continue
            pod_labels, ns_labels, account = _split(labels)
            pod = added.get((namespace, name))
            if pod is None:
                added[(namespace, name)] = Pod(name=name, namespace=namespace, labels=pod_labels,
                                               service_account=account, ips=(ip,))
            elif ip not in pod.ips:
                added[(namespace, name)] = replace(pod, ips=(*pod.ips, ip))
            if namespace not in namespaces and namespace not in new_ns:
                meta = (("kubernetes.io/metadata.name", namespace),)
                new_ns[namespace] = Namespace(name=namespace, labels=meta + tuple(
                    kv for kv in ns_labels if kv[0] != "kubernetes.io/metadata.name"))
    if not added:
        return res, 0
    return replace(res, pods=res.pods + tuple(added.values()),
                   namespaces=res.namespaces + tuple(new_ns.values())), len(added)
