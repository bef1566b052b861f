"""Where one agent's time goes per event (issue 13): cProfile over `Agent.converge` for each change.

    python bench/profile_agent.py [--nodes 8] [--repeat 10] [--top 25] [--lab-prefix xd]   (root, etcd)

The lab and the changes of `bench_propagation` (a policy edit, a toggle, a pod added), one agent
run in this process for the lab's first node, no watch thread: each change is written, the
agent's mirror made of a list (what its watch would give), then `converge` is profiled. Prints
per change the wall and CPU time of each converge, and the functions with the most time over
all of them (cumulative, then their own).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_propagation import OPS, base_documents, new_pod, policy, topology, write_yaml  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lab-prefix", default="xd")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("profile_agent needs root (lab namespaces, nftables)")
    from enforcer.agent import Agent
    from enforcer.datastore.backend import parse_datastore_url
    from enforcer.datastore.etcd import EtcdDatastore
    from enforcer.datastore.mirror import Mirror
    from enforcer.lab import netns_name
    from enforcer.nft.compiler import CompileOptions, compile_node
    from enforcer.nft.node_backend import NodeBackend
    from enforcer.reconcile import Reconciler
    from tests.cluster_harness import cluster_lab, unique_lab_id

    if os.path.isdir("/dev/shm"):  # as bench_propagation: etcd's data and the records on tmpfs
        tempfile.tempdir = "/dev/shm"
    res = topology(args.nodes)
    with tempfile.TemporaryDirectory(prefix="ft-prof-agent-") as tmp:
        folder = Path(tmp)
        with cluster_lab(res, folder, agents=False, lab_id=unique_lab_id(args.lab_prefix)) as lab:
            url = parse_datastore_url(lab.url)
            writer = EtcdDatastore(url, state_dir=folder / "writer", timeout=15.0)
            writer.apply_documents([write_yaml(folder, "base.yaml", base_documents(res))])
            node = lab.nodes[0]
            ds = EtcdDatastore(url, state_dir=folder / "agent", timeout=15.0)
            backend = NodeBackend(node, netns_name(lab.lab_id, f"node:{node}"), lab_id=lab.lab_id)
            rec = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: [node], lab_id=lab.lab_id)
            agent = Agent(ds, rec, node, lambda _: None)
            agent.converge()
            profiles = {op: cProfile.Profile() for op in OPS}
            walls: dict[str, list[float]] = {op: [] for op in OPS}
            cpus: dict[str, list[float]] = {op: [] for op in OPS}
            for n in range(args.repeat):
                for op in OPS:
                    if op == "policy edit":
                        writer.apply_documents([write_yaml(folder, f"e{n}.yaml", [policy(0, 9000 + n)])])
                    elif op == "toggle":
                        writer.set_disabled("gnp", "bp1", None, n % 2 == 0)
                    else:
                        writer.apply_documents([write_yaml(folder, f"p{n}.yaml", [new_pod(res, n)])])
                    mirror = Mirror.listed(ds.kv)  # what the agent's watch would have made of it
                    t, cpu = time.perf_counter(), time.thread_time()
                    profiles[op].runcall(agent.converge, t, mirror)
                    walls[op].append((time.perf_counter() - t) * 1000)
                    cpus[op].append((time.thread_time() - cpu) * 1000)
            backend.close()
    print(f"one agent of {args.nodes} nodes, {args.repeat} changes each, load {os.getloadavg()[0]:.1f}")
    for op in OPS:
        out = io.StringIO()
        stats = pstats.Stats(profiles[op], stream=out)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top // 2)
        print(f"\n== {op}: converge p50 {statistics.median(walls[op]):.1f} ms, CPU p50 "
              f"{statistics.median(cpus[op]):.1f} ms (profiled) "
              f"(all: {', '.join(f'{w:.0f}' for w in walls[op])})")
        print(out.getvalue())


if __name__ == "__main__":
    main()
