"""Propose least-privilege policy for a namespace from the flows it was seen to have.

`propose(frame, resources, "shop")` takes the recorded flows that the current policy set allows
and that start or end at a pod of the namespace, and writes, per *workload* (pods of the
namespace with the same stable labels), one Calico NetworkPolicy that selects exactly that
workload, applies to ingress and egress, and allows exactly the observed peers on the observed
protocols and ports:

* pods are named by selectors on their stable labels (`pod-template-hash` and other per-rollout
  or per-pod labels are left out), with `!has(key)` for keys that tell them apart from the
  namespace's other workloads, and `namespaceSelector` for peers in other namespaces;
* destination ports are named ports where every observed destination declares that port under
  one name, numbers otherwise; ICMP is allowed by type (and code) where recorded;
* outside addresses go into NetworkSets in the namespace, one per set of services they use, and
  rules select them by a `flowtui.dev/netset` label; node addresses are written as `nets`.
* replies that policy decides are allowed too: where untracked (doNotTrack) policy lies on the
  path, a reply without a conntrack entry is decided by the workload policy of the pod it leaves
  or enters (as the evaluator walks it), so that pod's policy gets a rule for the reverse
  direction, ports swapped.

Everything not observed is denied by the end-of-tier default of the tier (the policies have no
order, so they run after the namespace's existing default-tier policies, and only add allows).
The proposal is checked with the what-if engine before it is returned: no observed allowed flow
may become denied. Outside peers as NetworkSets add members to any existing selector that
matches NetworkSets of the namespace; when that would deny an observed flow, the proposal falls
back to inline `nets` and says so.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import yaml

from enforcer.evaluate import Evaluator, Flow
from enforcer.evaluate.evaluator import reply_of
from enforcer.model import IPAddress, Pod, ResourceSet
from enforcer.resolve import ClusterState
from flowtui.whatif.classes import parse_address
from flowtui.whatif.edits import merge
from flowtui.whatif.engine import ALLOW, compare, decide_frame
from flowtui.whatif.frames import ensure_frame

# Labels that differ between rollouts or between pods of one workload: never in a selector.
UNSTABLE_LABELS = (
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index", "controller-uid",
    "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
)
NETSET_LABEL = "flowtui.dev/netset"
PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"}
MAX_PORTS = 50  # per rule (Calico's limit)
MAX_NETS = 256


def stable_labels(pod: Pod) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in pod.labels if k not in UNSTABLE_LABELS and not k.endswith("/pod-name"))


def _dns_name(text: str, limit: int = 63) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "workload"
    return name[:limit].rstrip("-")


WorkloadKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Workload:
    """Pods of one namespace with the same stable labels."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    pods: list[Pod] = field(default_factory=list)
    selector: str = ""
    name: str = ""


def workloads(res: ResourceSet) -> dict[tuple[str, str], Workload]:
    """`(namespace, pod name)` -> its workload, with exact selectors and unique names."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], Workload] = {}
    for pod in res.pods:
        labels = stable_labels(pod)
        groups.setdefault((pod.namespace, labels), Workload(pod.namespace, labels)).pods.append(pod)
    by_ns: dict[str, list[Workload]] = defaultdict(list)
    for wl in groups.values():
        by_ns[wl.namespace].append(wl)
    for wls in by_ns.values():
        keys = {k for wl in wls for k, _ in wl.labels}
        used: set[str] = set()
        for wl in sorted(wls, key=lambda w: w.labels):
            own = dict(wl.labels)
            terms = [f"{k} == '{v}'" for k, v in wl.labels]
            terms += [f"!has({k})" for k in sorted(keys - own.keys())]
            if not wl.labels:  # nothing positive: keep network sets out
                terms.insert(0, "projectcalico.org/orchestrator == 'k8s'")
            wl.selector = " && ".join(terms) if terms else "all()"
            base = _dns_name(own.get("app") or own.get("app.kubernetes.io/name") or
                             "-".join(v for _, v in wl.labels) or "unlabelled", 40)
            name, i = base, 2
            while name in used:
                name, i = f"{base}-{i}", i + 1
            used.add(name)
            wl.name = name
    return {(p.namespace, p.name): wl for wl in groups.values() for p in wl.pods}


@dataclass(frozen=True)
class Peer:
    kind: str  # "workload", "node", "outside"
    workload: tuple[str, tuple[tuple[str, str], ...]] | None = None  # (namespace, stable labels)
    address: IPAddress | None = None


@dataclass(frozen=True)
class Service:
    proto: int
    port: int | str | None  # number, named port, or None (the whole protocol)
    icmp: tuple[int, int | None] | None = None
    family: int | None = None  # ICMP of the other family (ICMP over IPv6): any protocol of this family


@dataclass
class Proposal:
    namespace: str
    documents: list[dict[str, Any]]
    flows: int  # observed allowed flows it keeps allowed
    netsets: bool
    newly_denied: int
    notes: list[str]

    def to_yaml(self) -> str:
        head = [
            f"# Proposed by `flowtui propose --namespace {self.namespace}`: least-privilege policy from "
            f"{self.flows:,} observed allowed flows.",
            f"# Checked with the what-if engine: {self.newly_denied:,} observed allowed flows would be denied.",
            *(f"# note: {n}" for n in self.notes),
        ]
        body = yaml.safe_dump_all(self.documents, sort_keys=False, default_flow_style=False, width=120)
        return "\n".join(head) + "\n" + body


def _peer_for(ip: IPAddress, state: ClusterState, wl_of: dict[tuple[str, str], Workload]) -> Peer:
    owner = state.owners.get(ip)
    if owner is not None and owner[0] == "pod":
        ns, _, name = owner[1].partition("/")
        wl = wl_of[(ns, name)]
        return Peer("workload", (wl.namespace, wl.labels))
    if owner is not None and owner[0] == "node":
        return Peer("node", address=ip)
    return Peer("outside", address=ip)


def _named_port(pods: Iterable[Pod], proto: int, port: int) -> str | None:
    """The one name every pod gives (proto, port), if there is one."""
    names = set()
    for pod in pods:
        found = {p.name for p in pod.ports if p.protocol == proto and p.port == port}
        if len(found) != 1:
            return None
        names |= found
    return names.pop() if len(names) == 1 else None


def _net(ip: IPAddress) -> str:
    """The one-address CIDR (a scope id, as in fe80::1%eth0, has no place in a CIDR: dropped)."""
    return f"{str(ip).partition('%')[0]}/{32 if ip.version == 4 else 128}"


def _proto_fields(proto: int) -> dict[str, Any]:
    if not 1 <= proto <= 255:  # not expressible (protocol 0): any protocol
        return {}
    return {"protocol": PROTO_NAMES.get(proto, proto)}


def _rules(entries: dict[Peer, set[Service]], side: str, namespace: str, netsets: bool,
           outside_sets: dict[frozenset[Service], str], wls: dict[WorkloadKey, Workload]) -> list[dict[str, Any]]:
    """Allow rules for `entries` (peer -> services), peer on `side` ("source"/"destination")."""
    rules: list[dict[str, Any]] = []
    by_services: dict[frozenset[Service], list[Peer]] = defaultdict(list)
    for peer, used in entries.items():
        by_services[frozenset(used)].append(peer)
    for services, peers in sorted(by_services.items(), key=lambda kv: sorted(map(repr, kv[0]))):
        workloads_ = sorted((wls[p.workload] for p in peers if p.workload is not None),
                            key=lambda w: (w.namespace, w.name))
        nodes = sorted((p.address for p in peers if p.kind == "node" and p.address is not None), key=str)
        outside = sorted((p.address for p in peers if p.kind == "outside" and p.address is not None), key=str)
        peer_specs: list[dict[str, Any]] = []
        for wl in workloads_:
            spec: dict[str, Any] = {"selector": wl.selector}
            if wl.namespace != namespace:
                spec["namespaceSelector"] = f"projectcalico.org/name == '{wl.namespace}'"
            peer_specs.append(spec)
        for family in (4, 6):
            fam = list(dict.fromkeys(_net(a) for a in nodes if a.version == family))
            for i in range(0, len(fam), MAX_NETS):
                peer_specs.append({"nets": fam[i:i + MAX_NETS]})
        if outside:
            if netsets:
                peer_specs.append({"selector": f"{NETSET_LABEL} == '{outside_sets[services]}'"})
            else:
                for family in (4, 6):
                    fam = list(dict.fromkeys(_net(a) for a in outside if a.version == family))
                    for i in range(0, len(fam), MAX_NETS):
                        peer_specs.append({"nets": fam[i:i + MAX_NETS]})
        for spec in peer_specs:
            rules += _service_rules(services, side, spec, workloads_)
    return rules


def _service_rules(services: frozenset[Service], side: str, peer: dict[str, Any],
                   wls: list[Workload]) -> list[dict[str, Any]]:
    out = []
    by_proto: dict[int, list[Service]] = defaultdict(list)
    for s in services:
        by_proto[s.proto].append(s)
    for family in sorted({s.family for s in services if s.family is not None}):
        out.append({"action": "Allow", "ipVersion": family, side: dict(peer)})
    for proto in sorted(by_proto):
        group = [s for s in by_proto[proto] if s.family is None]
        if not group:
            continue
        base: dict[str, Any] = {"action": "Allow", **_proto_fields(proto)}
        if any(s.port is None and s.icmp is None for s in group):  # the whole protocol
            out.append({**base, side: dict(peer)})
            continue
        icmps = sorted((s.icmp for s in group if s.icmp is not None), key=lambda x: (x[0], x[1] or -1))
        for icmp_type, code in icmps:
            match = {"type": icmp_type} if code is None else {"type": icmp_type, "code": code}
            out.append({**base, "icmp": match, side: dict(peer)})
        ports = sorted({s.port for s in group if s.port is not None}, key=lambda p: (isinstance(p, str), str(p)))
        for i in range(0, len(ports), MAX_PORTS):
            chunk = ports[i:i + MAX_PORTS]
            if side == "destination":
                out.append({**base, "destination": {**peer, "ports": chunk}})
            else:
                out.append({**base, "source": dict(peer), "destination": {"ports": chunk}})
    return out


def _service_of(proto: int, port: int | None, icmp_type: int | None, icmp_code: int | None,
                dst_pods: list[Pod] | None, version: int) -> Service:
    """What a rule must allow for one observed flow (as narrowly as Calico rules can say it)."""
    if (proto, version) in ((1, 6), (58, 4)):  # a rule for ICMP exists only in its own family
        return Service(proto, None, None, version)
    if proto in (1, 58):
        known = icmp_type is not None and 0 <= icmp_type <= 254
        code = icmp_code if icmp_code is not None and 0 <= icmp_code <= 255 else None
        return Service(proto, None, (icmp_type, code) if known else None)  # type: ignore[arg-type]
    if proto in (6, 17, 132) and port is not None and 1 <= port <= 65535:
        name = _named_port(dst_pods, proto, port) if dst_pods else None
        return Service(proto, name or port)
    return Service(proto, None)


def propose(frame: pl.DataFrame, res: ResourceSet, namespace: str, *, netsets: bool = True,
            verify: bool = True) -> Proposal:
    """Least-privilege NetworkPolicies (and NetworkSets) for `namespace` from the allowed flows of
    `frame` under `res`; with `verify`, checked (and if need be redone without NetworkSets) so that
    no observed allowed flow becomes denied."""
    frame = ensure_frame(frame)
    state = ClusterState(res)
    decided = decide_frame(frame, state)
    allowed = frame.filter(pl.Series(decided.verdict == ALLOW))
    wl_of = workloads(res)
    all_wls: dict[WorkloadKey, Workload] = {(w.namespace, w.labels): w for w in wl_of.values()}
    ours = {k: w for k, w in all_wls.items() if k[0] == namespace}
    cols = ["src_ip", "dst_ip", "proto", "dst_port", "icmp_type", "icmp_code"]
    distinct = allowed.select(pl.col(cols[:2]).cast(pl.String), *cols[2:]).unique()
    ingress: dict[WorkloadKey, dict[Peer, set[Service]]] = defaultdict(lambda: defaultdict(set))
    egress: dict[WorkloadKey, dict[Peer, set[Service]]] = defaultdict(lambda: defaultdict(set))
    for src_text, dst_text, proto, port, icmp_type, icmp_code in distinct.iter_rows():
        src, dst = parse_address(src_text), parse_address(dst_text)
        if src is None or dst is None or proto is None:
            continue
        sp, dp = _peer_for(src, state, wl_of), _peer_for(dst, state, wl_of)
        src_in, dst_in = sp.workload in ours, dp.workload in ours
        if not (src_in or dst_in):
            continue
        dst_pods = [p for p in all_wls[dp.workload].pods if dst in p.ips] if dp.workload is not None else None
        service = _service_of(proto, port, icmp_type, icmp_code, dst_pods, src.version)
        if dst_in:
            assert dp.workload is not None
            ingress[dp.workload][sp].add(service)
        if src_in:
            assert sp.workload is not None
            egress[sp.workload][dp].add(service)
    kept = int(allowed.filter(_touches(allowed, state, namespace)).get_column("count").sum()) if allowed.height else 0
    notes: list[str] = []
    replies = _add_replies(allowed, state, namespace, wl_of, ingress, egress)
    if replies:
        notes.append(f"{replies:,} observed flows have replies that untracked (doNotTrack) policy leaves without a "
                     "conntrack entry, so this namespace's workload policy decides them: allowed by rules for the "
                     "reverse direction (ports swapped)")
    documents = _build(namespace, ours, all_wls, ingress, egress, netsets)
    newly_denied = 0
    if verify:
        newly_denied = _check(frame, res, documents)
        if newly_denied and netsets:
            notes.append(f"with NetworkSets, {newly_denied:,} observed flows would be denied (existing selectors "
                         "match the namespace's NetworkSets): outside peers are written as nets instead")
            netsets = False
            documents = _build(namespace, ours, all_wls, ingress, egress, netsets)
            newly_denied = _check(frame, res, documents)
    silent = [w.name for k, w in ours.items() if k not in ingress and k not in egress]
    if silent:
        notes.append("no traffic observed for " + ", ".join(sorted(silent)) + ": their policies deny everything")
    return Proposal(namespace, documents, kept, netsets, newly_denied, notes)


def _add_replies(allowed: pl.DataFrame, state: ClusterState, namespace: str,
                 wl_of: dict[tuple[str, str], Workload], ingress: dict[WorkloadKey, dict[Peer, set[Service]]],
                 egress: dict[WorkloadKey, dict[Peer, set[Service]]]) -> int:
    """Add what replies of the observed flows need; returns how many observed flows had such replies.

    Conntrack lets replies through without policy, except where untracked policy lies on the path:
    a reply NOTRACKed by it (or answering a NOTRACKed request) is new to filter, and the workload
    policy of the pod it leaves or enters decides it (`Evaluator._reply_walk`). Those stages are
    read from the evaluator's own walk, so the proposal allows exactly the replies Calico polices."""
    if not allowed.height or not any(p.do_not_track for p in state.resources.policies):
        return 0
    evaluator = Evaluator(state)
    cols = ["src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "icmp_code"]
    rows = allowed.group_by(pl.col(cols[:2]).cast(pl.String), *cols[2:]).agg(pl.col("count").sum())
    flows = 0
    for src_text, dst_text, proto, sport, dport, icmp_type, icmp_code, count in rows.iter_rows():
        src, dst = parse_address(src_text), parse_address(dst_text)
        if src is None or dst is None or proto is None or src.version != dst.version or not 0 <= proto <= 255:
            continue
        if not (_in_namespace(state, src_text, namespace) or _in_namespace(state, dst_text, namespace)):
            continue
        flow = Flow(src, dst, proto, _port(sport), _port(dport), icmp_type, icmp_code)
        reply = reply_of(flow)
        if reply is None:
            continue
        needed = False
        for res in evaluator.decide(flow).enforced.stages:
            ep = res.stage.endpoint
            if not res.reply or res.skipped or res.stage.family != "workload" or ep is None or ep.kind != "wep":
                continue
            wl = wl_of.get((namespace, ep.name)) if ep.namespace == namespace else None
            if wl is None:
                continue
            service = _service_of(reply.protocol, reply.dst_port, reply.icmp_type, reply.icmp_code, None,
                                  reply.version)
            if res.stage.direction == "ingress":  # the reply enters the pod that sent the request
                ingress[(wl.namespace, wl.labels)][_peer_for(reply.src, state, wl_of)].add(service)
            else:  # the reply leaves the pod that received the request
                egress[(wl.namespace, wl.labels)][_peer_for(reply.dst, state, wl_of)].add(service)
            needed = True
        flows += int(count or 0) if needed else 0
    return flows


def _port(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= 65535 else None


def _touches(frame: pl.DataFrame, state: ClusterState, namespace: str) -> pl.Expr:
    texts = pl.concat([frame.get_column("src_ip"), frame.get_column("dst_ip")]).cast(pl.String).unique().to_list()
    inside = {t for t in texts if _in_namespace(state, t, namespace)}
    return (pl.col("src_ip").cast(pl.String).is_in(list(inside)) | pl.col("dst_ip").cast(pl.String).is_in(list(inside)))


def _in_namespace(state: ClusterState, text: str | None, namespace: str) -> bool:
    ip = parse_address(text)
    owner = state.owners.get(ip) if ip is not None else None
    return owner is not None and owner[0] == "pod" and owner[1].split("/", 1)[0] == namespace


def _build(namespace: str, ours: dict[WorkloadKey, Workload], wls: dict[WorkloadKey, Workload],
           ingress: dict[WorkloadKey, dict[Peer, set[Service]]], egress: dict[WorkloadKey, dict[Peer, set[Service]]],
           netsets: bool) -> list[dict[str, Any]]:
    set_members: dict[str, set[IPAddress]] = defaultdict(set)
    policies = []
    for key, wl in sorted(ours.items(), key=lambda kv: kv[1].name):
        rules_by_side = {}
        for side, table, direction in (("source", ingress, "ingress"), ("destination", egress, "egress")):
            entries = table.get(key, {})
            # one NetworkSet per (workload, direction, services used): outside peers get exactly those
            outside_sets: dict[frozenset[Service], str] = {}
            if netsets:
                for peer, services in sorted(entries.items(), key=lambda kv: str(kv[0].address)):
                    if peer.kind == "outside" and peer.address is not None:
                        word = "in" if direction == "ingress" else "out"
                        name = outside_sets.setdefault(
                            frozenset(services), f"flowtui-{wl.name}-{word}-{len(outside_sets) + 1}")
                        set_members[name].add(peer.address)
            rules_by_side[direction] = _rules(entries, side, namespace, netsets, outside_sets, wls)
        policies.append({
            "apiVersion": "projectcalico.org/v3",
            "kind": "NetworkPolicy",
            "metadata": {"name": f"flowtui-{wl.name}", "namespace": namespace,
                         "annotations": {"flowtui.dev/proposed": "true", "flowtui.dev/pods": str(len(wl.pods))}},
            "spec": {"selector": wl.selector, "types": ["Ingress", "Egress"],
                     "ingress": rules_by_side["ingress"], "egress": rules_by_side["egress"]},
        })
    docs: list[dict[str, Any]] = []
    for name, members in sorted(set_members.items()):
        docs.append({
            "apiVersion": "projectcalico.org/v3",
            "kind": "NetworkSet",
            "metadata": {"name": name, "namespace": namespace, "labels": {NETSET_LABEL: name}},
            "spec": {"nets": list(dict.fromkeys(_net(a) for a in sorted(members, key=lambda a: (a.version, int(a)))))},
        })
    return docs + policies


def _check(frame: pl.DataFrame, res: ResourceSet, documents: list[dict[str, Any]]) -> int:
    """Observed flows allowed now and denied with the proposal added."""
    from enforcer.loader import load_text

    text = yaml.safe_dump_all(documents, sort_keys=False)
    proposal = load_text(text, "<proposal>.yaml")
    cmp = compare(frame, res, merge(res, proposal), pending=False)
    denied = (cmp.base.verdict == ALLOW) & (cmp.edited.verdict == 1)
    if not denied.any():
        return 0
    counts = frame.get_column("count").to_numpy()
    return int(counts[np.flatnonzero(denied[cmp.keyed.key_idx])].sum())
