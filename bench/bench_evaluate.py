"""Evaluator benchmark: flows/s over 1,000 policies and 5,000 pods, and the cost of getting there.

    python bench/bench_evaluate.py [--flows 100000] [--naive 200] [--seed 1]

The cluster is `enforcer.synth`'s: 10 nodes, 20 namespaces, 5,000 pods, 1,000 policies of up to
10 rules per direction (GNP, NP, staged, host endpoint policy in all four families, three tiers).

Measured, in one run:

* load: the same resources written as YAML (one file per kind) and read back with `load_paths`,
  which parses and validates every field as `flowtui check` does;
* resolve: building the ClusterState (endpoints and their labels), then resolving everything
  evaluation needs: the policies that apply to every endpoint and every rule's IP and named-port
  sets in both families;
* evaluate: `--flows` random flows (`synth_flows`) three ways: *cold* (a fresh ClusterState and
  Evaluator, so resolution happens lazily during the run), *resolved* (a fresh Evaluator over the
  resolved state: rule-by-rule evaluation, no decision memo) and *warm* (the same flows again: memo
  hits);
* baseline: a *naive* evaluator that recomputes every membership per flow (a fresh ClusterState
  and Evaluator for each flow), on a sample of `--naive` flows.

Checked on the way: the YAML round trip decides like the original; the naive baseline decides like
the fast path; no selector membership is computed while evaluating over the resolved state.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.evaluate import Decision, Evaluator, Flow  # noqa: E402
from enforcer.evaluate.match import compile_rule  # noqa: E402
from enforcer.loader import load_paths  # noqa: E402
from enforcer.model import (  # noqa: E402
    PROTOCOL_NUMBERS,
    EntityRule,
    ExternalHost,
    HostEndpoint,
    NamedPort,
    NamedPortDef,
    Namespace,
    NetworkSet,
    Node,
    Pod,
    Policy,
    Port,
    ResourceSet,
    Rule,
    Tier,
)
from enforcer.resolve import ClusterState  # noqa: E402
from enforcer.synth import SynthSpec, synth_flows, synth_resources  # noqa: E402

SPEC = SynthSpec(nodes=10, namespaces=20, pods=5000, policies=1000, rules_per_policy=10)
CALICO = "projectcalico.org/v3"
PROTO_TEXT = {number: name for name, number in PROTOCOL_NUMBERS.items()}
Doc = dict[str, Any]

try:
    from yaml import CSafeDumper as Dumper
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeDumper as Dumper  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# Model → YAML (the subset `synth` produces)


def _meta(name: str, namespace: str | None = None, labels: Iterable[tuple[str, str]] = ()) -> Doc:
    meta: Doc = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _ports(ports: tuple[Port, ...]) -> list[object]:
    out: list[object] = []
    for p in ports:
        if isinstance(p, NamedPort):
            out.append(p.name)
        else:
            out.append(p.first if p.first == p.last else f"{p.first}:{p.last}")
    return out


def _entity(e: EntityRule) -> Doc:
    out: Doc = {}
    if e.nets:
        out["nets"] = [str(n) for n in e.nets]
    if e.not_nets:
        out["notNets"] = [str(n) for n in e.not_nets]
    for key, sel in (("selector", e.selector), ("notSelector", e.not_selector),
                     ("namespaceSelector", e.namespace_selector)):
        if sel is not None:
            out[key] = str(sel)
    if e.ports:
        out["ports"] = _ports(e.ports)
    if e.not_ports:
        out["notPorts"] = _ports(e.not_ports)
    if e.service_accounts is not None or e.services is not None:
        raise NotImplementedError("serviceAccounts/services are not produced by synth")
    return out


def _rule(r: Rule) -> Doc:
    out: Doc = {"action": r.action}
    if r.ip_version is not None:
        out["ipVersion"] = r.ip_version
    if r.protocol is not None:
        out["protocol"] = PROTO_TEXT.get(r.protocol, r.protocol)
    if r.not_protocol is not None:
        out["notProtocol"] = PROTO_TEXT.get(r.not_protocol, r.not_protocol)
    for key, icmp in (("icmp", r.icmp), ("notICMP", r.not_icmp)):
        if icmp is not None:
            out[key] = {"type": icmp.type} if icmp.code is None else {"type": icmp.type, "code": icmp.code}
    for key, entity in (("source", r.source), ("destination", r.destination)):
        if doc := _entity(entity):
            out[key] = doc
    return out


def _policy(p: Policy) -> Doc:
    if "Kubernetes" in p.kind:
        raise NotImplementedError("Kubernetes policies are not produced by synth")
    spec: Doc = {"tier": p.tier}
    if p.order is not None:
        spec["order"] = p.order
    for key, sel in (("selector", p.selector), ("namespaceSelector", p.namespace_selector),
                     ("serviceAccountSelector", p.service_account_selector)):
        if sel is not None:
            spec[key] = str(sel)
    spec["types"] = [d.capitalize() for d in p.types]
    if p.ingress:
        spec["ingress"] = [_rule(r) for r in p.ingress]
    if p.egress:
        spec["egress"] = [_rule(r) for r in p.egress]
    for key, flag in (("doNotTrack", p.do_not_track), ("preDNAT", p.pre_dnat), ("applyOnForward", p.apply_on_forward)):
        if flag:
            spec[key] = True
    if p.staged and p.staged_action:
        spec["stagedAction"] = p.staged_action
    return {"apiVersion": CALICO, "kind": p.kind, "metadata": _meta(p.name, p.namespace), "spec": spec}


def _container_ports(ports: tuple[NamedPortDef, ...]) -> list[Doc]:
    return [{"name": p.name, "containerPort": p.port, "protocol": PROTO_TEXT[p.protocol]} for p in ports]


def _pod(p: Pod) -> Doc:
    spec: Doc = {"serviceAccountName": p.service_account,
                 "containers": [{"name": "c", "image": "registry.example/app", "ports": _container_ports(p.ports)}]}
    if p.node:
        spec["nodeName"] = p.node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(p.name, p.namespace, p.labels), "spec": spec,
            "status": {"phase": "Running", "podIPs": [{"ip": str(ip)} for ip in p.ips]}}


def _node(n: Node) -> Doc:
    return {"apiVersion": "v1", "kind": "Node", "metadata": _meta(n.name, None, n.labels),
            "spec": {"podCIDRs": [str(c) for c in n.pod_cidrs]},
            "status": {"addresses": [{"type": "InternalIP", "address": str(a)} for a in n.addresses]}}


def _hep(h: HostEndpoint) -> Doc:
    spec: Doc = {"node": h.node, "expectedIPs": [str(ip) for ip in h.expected_ips], "profiles": list(h.profiles)}
    if h.interface_name:
        spec["interfaceName"] = h.interface_name
    if h.ports:
        spec["ports"] = _container_ports(h.ports)
    return {"apiVersion": CALICO, "kind": "HostEndpoint", "metadata": _meta(h.name, None, h.labels), "spec": spec}


def _netset(s: NetworkSet) -> Doc:
    return {"apiVersion": CALICO, "kind": s.kind, "metadata": _meta(s.name, s.namespace, s.labels),
            "spec": {"nets": [str(n) for n in s.nets]}}


def _namespace(n: Namespace) -> Doc:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(n.name, None, n.labels)}


def _tier(t: Tier) -> Doc:
    spec: Doc = {"defaultAction": t.default_action}
    if t.order is not None:
        spec["order"] = t.order
    return {"apiVersion": CALICO, "kind": "Tier", "metadata": _meta(t.name), "spec": spec}


def _external(e: ExternalHost) -> Doc:
    return {"apiVersion": "lab.flowtui.dev/v1", "kind": "ExternalHost", "metadata": _meta(e.name),
            "spec": {"addresses": [str(a) for a in e.addresses]}}


def write_yaml(res: ResourceSet, directory: Path) -> tuple[int, int]:
    """One YAML file per kind; returns (documents, bytes)."""
    if res.profiles or res.service_accounts:
        raise NotImplementedError("profiles and service accounts are not produced by synth")
    groups: dict[str, list[Doc]] = {
        "00-namespaces": [_namespace(n) for n in res.namespaces],
        "01-nodes": [_node(n) for n in res.nodes],
        "02-pods": [_pod(p) for p in res.pods],
        "03-externals": [_external(e) for e in res.external_hosts],
        "04-hostendpoints": [_hep(h) for h in res.host_endpoints],
        "05-networksets": [_netset(s) for s in res.network_sets],
        "06-tiers": [_tier(t) for t in res.tiers],
        "07-policies": [_policy(p) for p in res.policies],
    }
    docs = size = 0
    for name, items in groups.items():
        text = yaml.dump_all(items, Dumper=Dumper, sort_keys=False, default_flow_style=None, width=200)
        (directory / f"{name}.yaml").write_text(text)
        docs += len(items)
        size += len(text.encode())
    return docs, size


# --------------------------------------------------------------------------------------------
# Measurements


def timed(fn: Callable[[], object]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def resolve_everything(state: ClusterState) -> dict[str, int]:
    """What evaluation needs, for every endpoint and every rule: applicable policies, IP sets and
    named-port sets in both families."""
    applicable = sum(len(state.applicable_policies(ep)) for ep in state.endpoints)
    _ = state.tiers
    rules = 0
    for pol in state.active_policies:
        for rule_list in (pol.ingress, pol.egress):
            for i, rule in enumerate(rule_list):
                for version in (4, 6):
                    rules += compile_rule(state, i, rule, pol.namespace, version) is not None
    return {"endpoints": len(state.endpoints), "applicable": applicable, "rules": rules,
            "ipsets": len(state._ipsets), "named": len(state._named)}


def memberships(state: ClusterState) -> tuple[int, int, int]:
    return len(state._ipsets), len(state._named), len(state._applicable)


def summary(d: Decision) -> tuple[object, ...]:
    e, p = d.enforced, d.pending
    return (e.verdict, e.decided_by, e.failsafe, e.logged, p.verdict, p.decided_by)


def run_all(ev: Evaluator, flows: list[Flow]) -> list[tuple[object, ...]]:
    return [summary(ev.decide(f)) for f in flows]


def naive(res: ResourceSet, flows: list[Flow]) -> list[tuple[object, ...]]:
    return [summary(Evaluator(ClusterState(res)).decide(f)) for f in flows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000, help="flows to evaluate (default 100000)")
    parser.add_argument("--naive", type=int, default=200, help="flows for the naive baseline (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    rows: list[tuple[str, str, float, str]] = []

    def row(what: str, items: str, seconds: float, rate: str = "") -> None:
        rows.append((what, items, seconds, rate))
        print(f"  {what}: {seconds:.2f} s {rate}", file=sys.stderr, flush=True)

    print(f"synthesising {SPEC.pods} pods, {SPEC.policies} policies, {args.flows} flows …", file=sys.stderr)
    res = synth_resources(args.seed, SPEC)
    flows = synth_flows(res, args.seed + 1, args.flows)
    rule_count = sum(len(p.ingress) + len(p.egress) for p in res.policies)

    # ---- load ------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="flowtui-bench-") as tmp:
        docs, size = write_yaml(res, Path(tmp))
        seconds, loaded = timed(lambda: load_paths([tmp]))
    row("load YAML (parse + validate)", f"{docs} docs, {size / 1e6:.1f} MB", seconds, f"{docs / seconds:,.0f} docs/s")
    assert len(loaded.policies) == len(res.policies) and len(loaded.pods) == len(res.pods)

    # ---- resolve ---------------------------------------------------------------------
    seconds, state = timed(lambda: ClusterState(res))
    build_seconds, _ = timed(lambda: state.index)
    row("ClusterState + endpoints", f"{len(state.endpoints)} endpoints", seconds + build_seconds)
    seconds, counts = timed(lambda: resolve_everything(state))
    row("resolve (applicable, sets)", f"{counts['applicable']:,} applications, {counts['ipsets']} IP sets, "
        f"{counts['named']} named-port sets", seconds)

    # ---- evaluate --------------------------------------------------------------------
    n = len(flows)
    cold_ev = Evaluator(ClusterState(res))
    seconds, cold = timed(lambda: run_all(cold_ev, flows))
    cold_rate = n / seconds
    row("evaluate cold (lazy resolution)", f"{n} flows", seconds, f"{cold_rate:,.0f} flows/s")

    before = memberships(state)
    resolved_ev = Evaluator(state)
    seconds, resolved = timed(lambda: run_all(resolved_ev, flows))
    resolved_rate = n / seconds
    row("evaluate resolved (no memo)", f"{n} flows", seconds, f"{resolved_rate:,.0f} flows/s")
    assert memberships(state) == before, "a selector membership was computed while evaluating"
    assert resolved == cold

    seconds, warm = timed(lambda: run_all(resolved_ev, flows))
    warm_rate = n / seconds
    row("evaluate warm (memo hits)", f"{n} flows", seconds, f"{warm_rate:,.0f} flows/s")
    assert warm == cold

    picked = list(range(0, n, max(1, n // args.naive)))[: args.naive]
    sample = [flows[i] for i in picked]
    seconds, baseline = timed(lambda: naive(res, sample))
    naive_rate = len(sample) / seconds
    row("naive: fresh state per flow", f"{len(sample)} flows", seconds, f"{naive_rate:,.2f} flows/s")
    assert baseline == [resolved[i] for i in picked], "the naive baseline disagrees"

    check = flows[:2000]
    assert run_all(Evaluator(ClusterState(loaded)), check) == cold[: len(check)], "YAML round trip disagrees"

    # ---- report ----------------------------------------------------------------------
    print()
    print(f"flowtui evaluator benchmark: {SPEC.pods} pods on {SPEC.nodes} nodes, {SPEC.namespaces} namespaces, "
          f"{len(res.policies)} policies ({rule_count} rules), {len(res.host_endpoints)} host endpoints; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    width = max(len(r[0]) for r in rows)
    items_width = max(len(r[1]) for r in rows)
    print(f"{'stage':<{width}}  {'size':<{items_width}}  {'seconds':>8}  rate")
    print("-" * (width + items_width + 30))
    for what, items, seconds, rate in rows:
        print(f"{what:<{width}}  {items:<{items_width}}  {seconds:>8.2f}  {rate}")
    print()
    print(f"speed-up over the naive baseline: cold ×{cold_rate / naive_rate:,.0f}, "
          f"resolved ×{resolved_rate / naive_rate:,.0f}, warm ×{warm_rate / naive_rate:,.0f}")
    print(f"selector memberships computed during the resolved run: 0 (IP sets {before[0]}, "
          f"named-port sets {before[1]}, endpoints with applicable policies {before[2]}, all cached)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
