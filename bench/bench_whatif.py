"""What-if benchmark: 10M recorded flows against 1,000 policies, next to one-by-one evaluation.

    python bench/bench_whatif.py [--rows 10000000] [--policies 1000] [--sample 2000] [--seed 1] [--runs 3]

**Cluster and policy.** `enforcer.synth` with 8 nodes (each with a host endpoint), 10
namespaces, 2,000 pods, 20 outside hosts and 1,000 random policies in three tiers (GNP, NP,
staged, host policies: untracked, preDNAT, applyOnForward), 3 rules each. The pods come in
deployments of 20 replicas (a replica carries its deployment's labels), as in real clusters;
synth's selectors are broad, so each endpoint is selected by ~250 policies: one-by-one
evaluation is slow here, which is the point of the benchmark.

**Flows.** A service graph: every deployment calls two others on one port each (TCP, UDP for
DNS-like ports), 20,000 outside clients call five ingress deployments (80/443), pods call
outside hosts, nodes probe pods (kubelet), pods ping each other (ICMP), a share runs over IPv6.
Rows pick a conversation (skewed, like real traffic), a replica at each end, and a random
ephemeral source port, so almost every row is a distinct 5-tuple.

**The edit.** The rule that allows the most flows becomes a Deny, the rule that denies the most
an Allow, the policy deciding the next most is deleted, and a new staged policy is added:
`whatif` reports newly denied/allowed flows, changed attribution, and the pending verdicts of
every staged policy in the edited set.

**Timed.** (1) `flowtui whatif`'s work end to end in a fresh interpreter, nothing warm (read the
Parquet file, classify, evaluate, group the report), `--runs` times, median reported; (2) the
engine again on the in-memory frame in this (warm) process; (3) a full re-evaluation of every
flow class under both sets (what an edit to pods, namespaces or network sets costs); and
one-by-one: `Evaluator.decide` on `--sample` rows under both sets (after a warm-up on as many
rows), projected to all rows. The ratio is (1) against one-by-one. The sample's results are
checked against the engine's, row by row.

The machine is shared: wall times move with its load; the CPU time of (1) is printed too.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.evaluate import Evaluator, Flow  # noqa: E402
from enforcer.model import Policy, ResourceSet  # noqa: E402
from enforcer.resolve import ClusterState  # noqa: E402
from enforcer.synth import SynthSpec, synth_resources  # noqa: E402
from flowtui.whatif.engine import VERDICTS, compare, decide_frame  # noqa: E402
from flowtui.whatif.frames import read_flows  # noqa: E402
from flowtui.whatif.report import build_report  # noqa: E402

REPLICAS = 20


def cluster(seed: int, policies: int) -> ResourceSet:
    spec = SynthSpec(nodes=8, namespaces=10, pods=2000, externals=20, policies=policies, rules_per_policy=3)
    res = synth_resources(seed, spec)
    deployments = len(res.pods) // REPLICAS
    pods = tuple(
        replace(p, labels=res.pods[i % deployments].labels, ports=res.pods[i % deployments].ports,
                name=f"d{i % deployments}-{i // deployments}")
        for i, p in enumerate(res.pods)
    )
    return replace(res, pods=pods)


def edit_plan(res: ResourceSet, frame: pl.DataFrame, seed: int) -> dict[str, Any]:
    """The rule that allows the most sampled flows becomes a Deny, the rule that denies the most an
    Allow, the policy deciding the next most is deleted, and a staged copy of a GNP is added."""
    sample = frame.sample(3000, seed=seed)
    decided = decide_frame(sample, res)
    counts: dict[tuple[str, str, str, str, int, str], int] = {}
    for hit_id in decided.hit:
        hit = decided.hits[int(hit_id)]
        if hit is not None and hit.kind != "Profile" and hit.rule >= 0:
            key = (hit.kind, hit.namespace or "", hit.name, hit.direction, hit.rule, hit.action)
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts, key=lambda k: -counts[k])
    flips = [next(k for k in ranked if k[5] == "Allow"), next(k for k in ranked if k[5] == "Deny")]
    gone = next(k[:3] for k in ranked if k[:3] not in {f[:3] for f in flips})
    template = next(p for p in res.policies if p.kind == "GlobalNetworkPolicy" and not p.apply_on_forward)
    return {"flip": [list(f) for f in flips], "delete": list(gone), "stage": list(template.key)}


def apply_plan(res: ResourceSet, plan: dict[str, Any]) -> ResourceSet:
    pols = list(res.policies)
    index = {p.key: i for i, p in enumerate(pols)}
    for kind, ns, name, direction, rule, action in plan["flip"]:
        p = pols[index[(kind, ns, name)]]
        rules = list(p.ingress if direction == "ingress" else p.egress)
        rules[rule] = replace(rules[rule], action="Deny" if action == "Allow" else "Allow")
        pols[index[(kind, ns, name)]] = replace(p, **{direction: tuple(rules)})
    del pols[index[tuple(plan["delete"])]]  # type: ignore[index]
    template = pols[index[tuple(plan["stage"])]]  # type: ignore[index]
    staged: Policy = replace(template, kind="StagedGlobalNetworkPolicy", name="staged-new", staged_action="Set")
    pols.append(staged)
    return replace(res, policies=tuple(pols))


def flows(res: ResourceSet, rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    deployments = len(res.pods) // REPLICAS
    pod4 = np.array([str(p.ips[0]) for p in res.pods])
    pod6 = np.array([str(p.ips[1]) for p in res.pods])
    by_dep = np.arange(len(res.pods)).reshape(-1, deployments).T  # by_dep[d] = pods of deployment d
    nodes4 = np.array([str(n.addresses[0]) for n in res.nodes])
    ext4 = np.array([str(a) for e in res.external_hosts for a in e.addresses if a.version == 4])
    outside = np.array([str(ipaddress.IPv4Address(0xC6120000 + int(x))) for x in rng.integers(0, 1 << 17, 20_000)])

    # conversations: (kind, src group, dst group, proto, port)
    convs: list[tuple[str, int, int, int, int]] = []
    ports = (80, 443, 5432, 6379, 8080, 9000, 53)
    for d in range(deployments):
        for t in rng.choice(deployments, 2, replace=False):
            port = int(rng.choice(ports))
            convs.append(("pod", d, int(t), 17 if port == 53 else 6, port))
    for d in rng.choice(deployments, 5, replace=False):
        convs += [("in", 0, int(d), 6, 443), ("in", 0, int(d), 6, 80)]
    for d in range(0, deployments, 4):
        convs.append(("out", d, int(rng.integers(len(ext4))), 6, 443))
        convs.append(("out", d, int(rng.integers(len(ext4))), 17, 53))
    for d in range(0, deployments, 2):
        convs.append(("probe", 0, d, 6, 8080))
    for d in range(0, deployments, 5):
        convs.append(("ping", d, int(rng.integers(deployments)), 1, -1))
        convs.append(("pod6", d, int(rng.integers(deployments)), 6, 443))
    weights = 1.0 / np.arange(1, len(convs) + 1) ** 0.8
    conv = rng.choice(len(convs), rows, p=weights / weights.sum())
    kinds = np.array([c[0] for c in convs])[conv]
    g_src = np.array([c[1] for c in convs])[conv]
    g_dst = np.array([c[2] for c in convs])[conv]
    proto = np.array([c[3] for c in convs], dtype=np.int16)[conv]
    dport = np.array([c[4] for c in convs], dtype=np.int32)[conv]
    rep_s = rng.integers(0, REPLICAS, rows)
    rep_d = rng.integers(0, REPLICAS, rows)
    src_pod, dst_pod = by_dep[g_src, rep_s], by_dep[g_dst, rep_d]
    src = pod4[src_pod].astype(object)
    dst = pod4[dst_pod].astype(object)
    is6 = kinds == "pod6"
    src[is6], dst[is6] = pod6[src_pod[is6]], pod6[dst_pod[is6]]
    inbound = kinds == "in"
    src[inbound] = outside[rng.integers(0, len(outside), int(inbound.sum()))]
    out = kinds == "out"
    dst[out] = ext4[g_dst[out]]
    probe = kinds == "probe"
    src[probe] = nodes4[rng.integers(0, len(nodes4), int(probe.sum()))]
    icmp = kinds == "ping"
    sport = rng.integers(32768, 61000, rows).astype(np.int32)
    return pl.DataFrame({
        "src_ip": src, "dst_ip": dst, "proto": proto,
        "src_port": pl.Series(sport).set(pl.Series(icmp), None) if icmp.any() else sport,
        "dst_port": pl.Series(dport).set(pl.Series(icmp), None),
        "icmp_type": pl.Series(np.where(icmp, 8, 0).astype(np.int16)).set(pl.Series(~icmp), None),
        "icmp_code": pl.Series(np.zeros(rows, dtype=np.int16)).set(pl.Series(~icmp), None),
    })


def one_by_one(frame: pl.DataFrame, base: ResourceSet, edited: ResourceSet, warmup: int) -> tuple[float, list[tuple]]:
    """Rows per second of `Evaluator.decide` under both sets, after `warmup` rows; and the results."""
    evs = [Evaluator(ClusterState(base)), Evaluator(ClusterState(edited))]
    rows = frame.rows()
    results = []
    start = 0.0
    for i, (s, d, proto, sp, dp, it, ic) in enumerate(rows):
        if i == warmup:
            start = time.perf_counter()
        flow = Flow(ipaddress.ip_address(s), ipaddress.ip_address(d), proto, sp, dp, it, ic)
        pair = [ev.decide(flow) for ev in evs]
        results.append(tuple((x.enforced.verdict, x.enforced.decided_by, x.pending.verdict, x.pending.decided_by)
                             for x in pair))
    return (len(rows) - warmup) / (time.perf_counter() - start), results[warmup:]


def cold_run(args: argparse.Namespace, parquet: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Time `read_flows` + `compare` + `build_report` in a fresh interpreter (nothing warm: no
    compiled selectors, no caches), as `flowtui whatif` runs."""
    cmd = [sys.executable, __file__, "--worker", str(parquet), "--plan", json.dumps(plan), "--seed", str(args.seed),
           "--policies", str(args.policies)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def worker(args: argparse.Namespace) -> None:
    base = cluster(args.seed, args.policies)
    edited = apply_plan(base, json.loads(args.plan))
    t = time.perf_counter()
    cpu = time.process_time()
    report = build_report(compare(lambda: read_flows([args.worker]), base, edited))  # as `flowtui whatif` does
    print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - cpu,
                      "phases": report.timings, "rows": report.rows, "classes": report.flow_classes,
                      "evaluations": report.evaluations,
                      "result": {name: c.flows for name, c in report.categories.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3, help="cold end-to-end runs (the median is reported)")
    ap.add_argument("--no-full", action="store_true", help="skip the full re-evaluation run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    t = time.perf_counter()
    base = cluster(args.seed, args.policies)
    frame = flows(base, args.rows, args.seed)
    plan = edit_plan(base, frame, args.seed)
    edited = apply_plan(base, plan)
    print(f"setup: {args.rows:,} rows, {len(base.policies)} policies, {len(base.pods)} pods, "
          f"{len(base.nodes)} nodes ({time.perf_counter() - t:.1f}s, not timed)")

    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "flows.parquet"
        frame.write_parquet(parquet)
        runs = [cold_run(args, parquet, plan) for _ in range(args.runs)]
    runs.sort(key=lambda r: r["seconds"])
    med = runs[len(runs) // 2]
    print(f"whatif, end to end in a fresh process (read Parquet, classify, evaluate, report): "
          f"median {med['seconds']:.2f}s of {len(runs)} (min {runs[0]['seconds']:.2f}s, "
          f"max {runs[-1]['seconds']:.2f}s); {args.rows / med['seconds']:,.0f} rows/s; CPU {med['cpu']:.2f}s")
    print(f"  {med['classes']:,} flow classes, {med['evaluations']:,} evaluations")
    print("  phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in med["phases"].items()))
    print("  result: " + ", ".join(f"{k} {v:,}" for k, v in med["result"].items()))

    t = time.perf_counter()
    cmp = compare(frame, base, edited)
    report = build_report(cmp)
    warm = time.perf_counter() - t
    assert {name: c.flows for name, c in report.categories.items()} == med["result"]
    print(f"engine on the in-memory frame (same process, warm): {warm:.2f}s = {args.rows / warm:,.0f} rows/s")
    if not args.no_full:
        t = time.perf_counter()
        full = compare(frame, base, edited, full=True)
        build_report(full)
        tf = time.perf_counter() - t
        n = int((full.base.verdict >= 0).sum() + (full.edited.verdict >= 0).sum())
        print(f"full re-evaluation (every class under both sets, warm): {tf:.2f}s = {args.rows / tf:,.0f} rows/s "
              f"({n:,} evaluations)")

    sample = frame.sample(2 * args.sample, seed=args.seed)
    rate, expected = one_by_one(sample, base, edited, args.sample)
    print(f"one-by-one (Evaluator.decide per row, both sets): {rate:,.0f} rows/s -> "
          f"{args.rows / rate:,.0f}s projected for {args.rows:,} rows")
    print(f"ratio: {args.rows / med['seconds'] / rate:,.0f}x (cold end to end vs one-by-one)")

    check = compare(sample.slice(args.sample), base, edited, full=True)
    idx = check.keyed.key_idx
    mismatches = 0
    for i, exp in enumerate(expected):
        k = idx[i]
        got = tuple(
            (VERDICTS[int(o.verdict[k])], check.hits[int(o.hit[k])], VERDICTS[int(o.pending_verdict[k])],
             check.hits[int(o.pending_hit[k])])
            for o in (check.base, check.edited)
        )
        mismatches += got != exp
    print(f"sample check: {len(expected) - mismatches}/{len(expected)} rows identical to one-by-one")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
