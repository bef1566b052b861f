"""Churn benchmark (issue 13): pods added and removed at a steady rate under the cluster-mode agents.

    python bench/bench_churn.py [--nodes 4] [--rate 1000] [--minutes 5] [--quick] [--json]   (root, etcd)

A lab of `--nodes` nodes, a single-member etcd on loopback, one `flowtui agent` per node, and a
base of policies whose source selector picks the churned pods (so every node's selector set
changes with every pod). Each second, `--rate`/60 pods are added (one `apply` transaction) and as
many of the oldest removed (one delete transaction), for `--minutes` (`--quick`: 30 s). Reported:

- lag: from a write returning to each agent reporting it enforces that revision or a later one
  (the agent's `reconciled` line, printed after the kernel commit and its record), p50/p99/max;
- CPU (utime+stime over wall time, from /proc/PID/stat) and peak RSS (/proc/PID/status) per agent;
- etcd's database size (maintenance/status `dbSize`, `dbSizeInUse`) at the end;
- the writer's achieved rate (it falls behind when a write takes longer than its slot).
`--json` ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_propagation import base_documents, cpu_seconds, new_pod, topology, write_yaml  # noqa: E402

WRITE_TIMEOUT = 15.0  # seconds: the shared machine stalls; a write slower than its slot is counted, not fatal


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def etcd_size(url: str) -> dict[str, int]:
    host = url.split("://", 1)[1].split(",")[0]
    status = requests.post(f"http://{host}/v3/maintenance/status", json={}, timeout=10).json()
    return {"db_bytes": int(status.get("dbSize", 0)), "db_in_use_bytes": int(status.get("dbSizeInUse", 0))}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rate", type=int, default=1000, help="pods added (and as many removed) per minute")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="30 seconds")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_churn needs root (lab namespaces, nftables)")
    seconds = 30.0 if args.quick else args.minutes * 60
    per_tick = max(1, round(args.rate / 60))
    from enforcer.datastore.backend import parse_datastore_url
    from enforcer.datastore.etcd import EtcdDatastore
    from tests.cluster_harness import cluster_lab

    if os.path.isdir("/dev/shm"):  # etcd's data on tmpfs: the figures are flowtui's, not a shared disk's fsync
        tempfile.tempdir = "/dev/shm"

    res = topology(args.nodes)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ft-bench-churn-") as tmp:
        folder = Path(tmp)
        with cluster_lab(res, folder) as lab:
            lab.wait(lab.apply(base_documents(res)))
            ds = EtcdDatastore(parse_datastore_url(lab.url), state_dir=folder / "writer", timeout=WRITE_TIMEOUT)
            pids = {node: agent.process.pid for node, agent in lab.agents.items()}
            peak = {node: rss_mb(pid) for node, pid in pids.items()}
            cpu0 = {node: cpu_seconds([pid]) for node, pid in pids.items()}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(1.0):
                    for node, pid in pids.items():
                        if lab.agents[node].process.poll() is not None:
                            err = lab.agents[node].stderr.read_text()[-3000:]
                            print(f"{node}'s agent exited {lab.agents[node].process.returncode}: {err}",
                                  file=sys.stderr, flush=True)
                            os._exit(1)
                        peak[node] = max(peak[node], rss_mb(pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            writes: list[tuple[int, float]] = []  # (revision, returned at)
            live: list[dict[str, Any]] = []
            added = removed = 0
            start = time.time()
            tick = 0
            while time.time() - start < seconds:
                slot = start + tick
                time.sleep(max(0.0, slot - time.time()))
                docs = [new_pod(res, added + i) for i in range(per_tick)]
                path = write_yaml(folder, "add.yaml", docs)
                writes.append((ds.apply_documents([path]).revision, time.time()))
                live += docs
                added += per_tick
                if len(live) > 4 * per_tick:  # a standing population; the oldest go
                    gone, live = live[:per_tick], live[per_tick:]
                    path = write_yaml(folder, "remove.yaml", gone)
                    writes.append((ds.delete_documents([path]).revision, time.time()))
                    removed += per_tick
                tick += 1
            elapsed = time.time() - start
            final = writes[-1][0]
            lab.wait(final, timeout=300)
            sampling.set()
            sampler.join(5)
            wall = time.time() - start
            cpu = {node: (cpu_seconds([pid]) - cpu0[node]) / wall * 100 for node, pid in pids.items()}
            size = etcd_size(lab.url)
            lags: list[float] = []
            for agent in lab.agents.values():
                done = [(e["revision"], e["t_read"]) for e in agent.lines.events if e.get("event") == "reconciled"]
                for revision, returned in writes:
                    seen = next((t for r, t in done if r >= revision), None)
                    if seen is not None:
                        lags.append(max(0.0, seen - returned) * 1000)
    result = {
        "nodes": args.nodes, "seconds": round(elapsed, 1), "pods_added": added, "pods_removed": removed,
        "rate_per_min": round(added / elapsed * 60), "writes": len(writes),
        "lag_ms": {"p50": round(statistics.median(lags), 1), "p99": round(pct(lags, 0.99), 1),
                   "max": round(max(lags), 1), "n": len(lags)},
        "agents": {node: {"cpu_percent": round(cpu[node], 1), "peak_rss_mb": round(peak[node], 1)} for node in cpu},
        "etcd": size, "load_avg": load,
    }
    print(f"churn: {added} pods added, {removed} removed in {elapsed:.0f} s ({result['rate_per_min']}/min asked "
          f"{args.rate}/min) on {args.nodes} nodes; load average {load:.1f} at start")
    lag = result["lag_ms"]
    print(f"lag write -> agent enforcing it: p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms "
          f"({lag['n']} write x node pairs)")
    for node, figures in result["agents"].items():
        print(f"  {node}: CPU {figures['cpu_percent']}% of one core, peak RSS {figures['peak_rss_mb']} MB")
    print(f"etcd: db {size['db_bytes'] / 1e6:.1f} MB, in use {size['db_in_use_bytes'] / 1e6:.1f} MB")
    if args.json:
        print(json.dumps({"bench": "churn", **result}))


if __name__ == "__main__":
    main()
