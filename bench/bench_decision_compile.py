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
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dataplane import NODE, peer_pods, rate_policies  # noqa: E402

from enforcer.model import Namespace, Node, Pod, ResourceSet  # noqa: E402
from enforcer.nft.compiler import CompileOptions, compile_node  # noqa: E402
from enforcer.nft.decision import DEFAULT_BUDGET  # noqa: E402
from enforcer.resolve import ClusterState  # noqa: E402


def resources(pods: int, count: int) -> ResourceSet:
    """`pods` receiving pods on NODE, each with a label of its own, selected by `count` policies
    of the rate section (bench_dataplane.rate_policies); its peer pods on another node."""
    recv = tuple(Pod(f"recv{i}", "bench", (("app", "recv"), ("idx", str(i))), NODE, "default",
                     (ip_address(f"10.244.{i // 200}.{10 + i % 200}"),)) for i in range(pods))
    return ResourceSet(nodes=(Node(NODE), Node("node-2")), namespaces=(Namespace("bench"),),
                       pods=recv + peer_pods(), policies=rate_policies(count))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_compile(res: ResourceSet, budget: int) -> tuple[float, Any]:
    state = ClusterState(res)  # fresh: no cache from the other row
    gc.collect()
    started = time.perf_counter()
    compiled = compile_node(state, NODE, CompileOptions(decision_budget=budget))
    return time.perf_counter() - started, compiled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--decision-budget", type=int, default=DEFAULT_BUDGET)
    ap.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = ap.parse_args()

    res = resources(args.pods, args.policies)
    walk_s, walked = timed_compile(res, 0)
    rss_walk = rss_mib()
    del walked
    decision_s, decided = timed_compile(res, args.decision_budget)
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
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
