"""Decision-map compile cost (issue 14): one node, N pods all selected by the same policies.

Scenario: `--pods` pods on one node (each with a label of its own, so no two share the
evaluator's per-labels answer: only the decision chains' key makes them share), `--policies`
policies of 10 ingress rules each selecting every pod (bench_dataplane.py's rate section's
policies: selectors, nets, ports, ICMP), its 40 peer pods on another node. Timed, in one run:

  (a) compile_node with the rule walk (decision budget 0): the baseline;
  (b) compile_node with decision maps (the default budget, or --decision-budget).

Reported: seconds for each and the ratio b/a, decision chains computed (distinct tags) against
workload chains laid out, map elements and cells of the decision, outcome (dx-) chains, peer
classes, and Python's peak RSS after each compile. No kernel, no root. `--json` ends with one
line of JSON.

Then (`--changes N`, default 5) live changes on (b), as the reconciler serves them: N random
policies each disabled and enabled again (`CompiledNode.with_disabled`, then the element diff
against the live table), timed separately (a disable walks again what the policy decided; an
enable toggles back), and N one-policy edits (a new TCP port in the first rule: the space is
refined) compiled from the state derived from the last, with the same rule-id allocator. Medians
of wall time and of the process's CPU time (under load the two differ a lot), with the load
average.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dataplane import NODE, edited, peer_pods, rate_policies  # noqa: E402

from enforcer.model import Namespace, Node, Pod, ResourceSet  # noqa: E402
from enforcer.nft import ir  # noqa: E402
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node  # noqa: E402
from enforcer.nft.decision import DEFAULT_BUDGET  # noqa: E402
from enforcer.resolve import ClusterState  # noqa: E402
from enforcer.ruleids import IdAllocator  # noqa: E402


def resources(pods: int, count: int) -> ResourceSet:
    """`pods` receiving pods on NODE, each with a label of its own, selected by `count` policies
    of the rate section (bench_dataplane.rate_policies); its peer pods on another node."""
    recv = tuple(Pod(f"recv{i}", "bench", (("app", "recv"), ("idx", str(i))), NODE, "default",
                     (ip_address(f"10.244.{i // 200}.{10 + i % 200}"),)) for i in range(pods))
    return ResourceSet(nodes=(Node(NODE), Node("node-2")), namespaces=(Namespace("bench"),),
                       pods=recv + peer_pods(), policies=rate_policies(count))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_compile(res: ResourceSet, budget: int, ids: IdAllocator | None = None
                  ) -> tuple[float, Any, ClusterState]:
    state = ClusterState(res)  # fresh: no cache from the other row
    gc.collect()
    started = time.perf_counter()
    compiled = compile_node(state, NODE, CompileOptions(decision_budget=budget), ids=ids)
    return time.perf_counter() - started, compiled, state


def _timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """fn(*args)'s result, wall seconds, CPU seconds of this process."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _medians(samples: list[tuple[float, float]]) -> dict[str, float | int]:
    return {"samples": len(samples), "median_ms": round(1e3 * statistics.median(w for w, _ in samples), 2),
            "cpu_median_ms": round(1e3 * statistics.median(c for _, c in samples), 2),
            "max_ms": round(1e3 * max(w for w, _ in samples), 2)}


def live_changes(res: ResourceSet, state: ClusterState, compiled: CompiledNode, ids: IdAllocator, budget: int,
                 count: int, seed: int) -> dict[str, Any]:
    """Disable/enable toggles (separately) and one-policy edits on the decision-map compile."""
    keys = sorted(compiled.gates)
    random.Random(seed).shuffle(keys)
    keys = keys[:count]
    live = compiled.table
    disable: list[tuple[float, float]] = []
    enable: list[tuple[float, float]] = []
    def toggle(disabled: set[tuple[str, str, str]], live: ir.Table) -> ir.Table:
        table = compiled.with_disabled(disabled).table
        ir.diff(live, table)  # what goes to the kernel
        return table

    for key in keys:
        for disabled, into in (({key}, disable), (set(), enable)):
            live, wall, cpu = _timed(toggle, disabled, live)
            into.append((wall, cpu))
    edits: list[tuple[float, float]] = []
    current, derived = res, state

    def edit(current: ResourceSet, live: ir.Table) -> ir.Table:
        nonlocal derived
        derived = derived.derive(current)
        table = compile_node(derived, NODE, CompileOptions(decision_budget=budget), ids=ids).table
        ir.diff(live, table)
        return table

    for k, key in enumerate(keys):
        current = replace(current, policies=tuple(edited(k, p) if p.key == key else p for p in current.policies))
        live, wall, cpu = _timed(edit, current, live)
        edits.append((wall, cpu))
    return {"disable": _medians(disable), "enable": _medians(enable), "edit": _medians(edits),
            "loadavg": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--decision-budget", type=int, default=DEFAULT_BUDGET)
    ap.add_argument("--changes", type=int, default=5, help="policies toggled (off, then on) and edited (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = ap.parse_args()

    res = resources(args.pods, args.policies)
    walk_s, walked, _ = timed_compile(res, 0)
    rss_walk = rss_mib()
    del walked
    ids = IdAllocator()
    decision_s, decided, state = timed_compile(res, args.decision_budget, ids)
    rss_decision = rss_mib()
    layouts = decided.layouts
    by_layout = {k: [c for c in layouts if c.layout == k] for k in ("decision", "walk")}
    sets = decided.table.sets
    maps = [s for name, s in sets.items() if name[:2] in ("dp", "dh", "dn", "di", "da", "do") and name[3:4] == "-"]
    report = {
        "pods": args.pods, "policies": args.policies, "rules_per_policy": 10,
        "decision_budget": args.decision_budget,
        "walk_compile_s": round(walk_s, 3), "decision_compile_s": round(decision_s, 3),
        "decision_over_walk": round(decision_s / walk_s, 2),
        "workload_endpoint_chains": 2 * args.pods,
        "decision_chains": len(by_layout["decision"]), "walk_chains": len(by_layout["walk"]),
        "walk_reasons": sorted({c.reason for c in by_layout["walk"]}),
        "map_elements": sum(len(s.elements) for s in maps), "maps": len(maps),
        "class_chains": sum(1 for c in decided.table.chains if c.startswith("dr")),
        "outcome_chains": sum(1 for c in decided.table.chains if c.startswith("dx-")),
        "rss_mib_after_walk": round(rss_walk, 1), "rss_mib_after_decision": round(rss_decision, 1),
    }
    print(f"{args.pods} pods, {args.policies} policies x 10 rules, all selecting every pod")
    print(f"  compile, rule walk      {walk_s:8.2f} s")
    print(f"  compile, decision maps  {decision_s:8.2f} s   ({report['decision_over_walk']}x the walk)")
    print(f"  decision chains computed {report['decision_chains']} (shared by {2 * args.pods} endpoint chains), "
          f"walk kept {report['walk_chains']} {report['walk_reasons']}")
    print(f"  {report['maps']} maps, {report['map_elements']} elements, {report['class_chains']} class chains, "
          f"{report['outcome_chains']} outcome chains")
    print(f"  peak RSS {rss_walk:.0f} MiB after the walk, {rss_decision:.0f} MiB after decision maps")
    if args.changes > 0:
        changes = report["changes"] = live_changes(res, state, decided, ids, args.decision_budget, args.changes,
                                                   args.seed)
        for kind in ("disable", "enable", "edit"):
            c = changes[kind]
            print(f"  {kind:8s} median {c['median_ms']:8.1f} ms (CPU {c['cpu_median_ms']:.1f} ms, max "
                  f"{c['max_ms']:.1f} ms, n={c['samples']}) to the element diff")
        print(f"  load average {changes['loadavg']:.1f} on {os.cpu_count()} CPUs (wall time waits for a CPU)")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
