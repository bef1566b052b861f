"""Propagation benchmark (issue 13): from a datastore write returning to every node's kernel commit.

    python bench/bench_propagation.py [--nodes 2,4,8] [--repeat 20] [--quick] [--json]   (root, etcd)

For each node count, a lab of that many nodes (two pods each) and a base of policies on every
pod; then, for three changes (a policy edit, a live toggle, a pod added whose address every node's
selector set gains), the time from the write returning to the LAST node's kernel commit, p50 and
p99 over `--repeat` changes, in two modes measured in the same run on the same lab (and the CPU
that enforcing each change cost, summed over the enforcing processes: on a shared machine a
steadier figure than the latency, which waits for whatever else runs):

- `agents` (cluster mode): the write is one etcd transaction (`EtcdDatastore`, a single-member
  etcd on loopback), enforced by one `flowtui agent` process per node watching etcd;
- `reconciler` (today's single machine): the write goes to the directory datastore and one
  process reconciles every node, as `flowtui apply --lab` / `policy disable` do.

The kernel's commit is observed in each node's namespace by a netlink socket on nftables' multicast
group (its end-of-commit notification; a reader thread stamps each): the first after the write
started is that node's commit.
Targets (cluster mode, 8 nodes): p50 < 100 ms, p99 < 500 ms. `--json` ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.lab import netns_name  # noqa: E402
from enforcer.model import ResourceSet  # noqa: E402
from enforcer.synth import SynthSpec, synth_resources  # noqa: E402
from tests.manifests import cluster_documents, pod_document  # noqa: E402

BASE_POLICIES = 20
TARGET_P50_MS, TARGET_P99_MS = 100.0, 500.0
OPS = ("policy edit", "toggle", "pod added")


def topology(nodes: int) -> ResourceSet:
    return synth_resources(7, SynthSpec(nodes=nodes, namespaces=2, pods=2 * nodes, externals=0, policies=0,
                                        host_endpoints=False, tiers=False, staged=False, ipv6=False))


def policy(i: int, port: int) -> dict[str, Any]:
    """On every pod (the synthesised pods all have `app`): allow web clients in on `port`."""
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": f"bp{i}"},
            "spec": {"order": 100 + i, "selector": "has(app)", "types": ["Ingress"],
                     "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'client'"},
                                  "destination": {"ports": [port]}}]}}


def base_documents(res: ResourceSet) -> list[dict[str, Any]]:
    """The cluster, the policies and one client pod: with decision maps only what can match is in
    the kernel, so without a client the policies' rules (and an edit of their ports) are not."""
    node = res.nodes[0]
    base = client_pod(res, "client-base", node.name, str(node.pod_cidrs[0].network_address + 99))
    return cluster_documents(res) + [base] + [policy(i, 8000 + i) for i in range(BASE_POLICIES)]


def client_pod(res: ResourceSet, name: str, node: str, ip: str) -> dict[str, Any]:
    doc = pod_document(res.pods[0])
    doc["metadata"] = {"name": name, "namespace": res.pods[0].namespace,
                       "labels": {"app": "client", "role": "client"}}
    doc["spec"]["nodeName"] = node
    doc["status"] = {"podIP": ip, "podIPs": [{"ip": ip}]}
    return doc


def new_pod(res: ResourceSet, n: int) -> dict[str, Any]:
    """A client pod on node n % nodes (every node's selector set for `role == 'client'` gains it)."""
    node = res.nodes[n % len(res.nodes)]
    index = (n // len(res.nodes)) % 150  # addresses .100-.249 reused: churn keeps far fewer alive per node
    return client_pod(res, f"client{n}", node.name, str(node.pod_cidrs[0].network_address + 100 + index))


# Run in a node's namespace: one line per kernel commit (an NFT_MSG_NEWGEN notification on the
# nftables multicast group), flushed. `nft monitor` is not used: it crashes (SIGSEGV, exit 2) on
# some of the decision maps' element events, and a dead monitor reads as a commit that never came.
WATCH_COMMITS = """
import socket, struct, sys
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((0, 0))
s.setsockopt(270, 1, 7)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES
print("ready", flush=True)
while True:
    try:
        data = s.recv(1 << 20)
    except OSError:  # ENOBUFS: notifications were dropped, but a commit happened
        print("commit", flush=True)
        continue
    at = 0
    while at + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, at)
        if kind == (10 << 8 | 15):  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN: the end of a commit
            print("commit", flush=True)
        at += max(16, (length + 3) & ~3)
"""


class Monitors:
    """A commit watcher in each node's namespace; every commit stamped when read."""

    def __init__(self, lab_id: str, nodes: Sequence[str]) -> None:
        self.lines: dict[str, list[float]] = {n: [] for n in nodes}
        self.procs = []
        ready = []
        for node in nodes:
            proc = subprocess.Popen(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), sys.executable,
                                     "-c", WATCH_COMMITS], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
            self.procs.append(proc)
            assert proc.stdout is not None
            ready.append(proc.stdout.readline())  # subscribed before any change is timed
            threading.Thread(target=self._read, args=(node, proc), daemon=True).start()
        if any(line.strip() != "ready" for line in ready):
            self.close()
            raise RuntimeError("a commit watcher did not start")

    def _read(self, node: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            self.lines[node].append(time.time())

    def commits_after(self, start: float, timeout: float = 30.0) -> dict[str, float]:
        """Each node's first event at or after `start` (waits for all of them)."""
        deadline = time.time() + timeout
        out: dict[str, float] = {}
        while len(out) < len(self.lines):
            for node, stamps in self.lines.items():
                if node not in out:
                    found = next((t for t in stamps if t >= start), None)
                    if found is not None:
                        out[node] = found
            if time.time() > deadline:
                missing = sorted(set(self.lines) - set(out))
                dead = [f"{n} (exit {p.returncode})" for n, p in zip(self.lines, self.procs, strict=True)
                        if p.poll() is not None]
                raise TimeoutError(f"no kernel commit on {missing} within {timeout} s"
                                   + (f"; the commit watcher ended on {', '.join(dead)}" if dead else ""))
            time.sleep(0.002)
        return out

    def quiet(self, seconds: float = 0.3) -> None:
        """Until no node logged anything for `seconds` (the last change fully applied)."""
        while True:
            last = max((s[-1] for s in self.lines.values() if s), default=0.0)
            if time.time() - last >= seconds:
                return
            time.sleep(0.05)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def write_yaml(folder: Path, name: str, docs: list[dict[str, Any]]) -> str:
    path = folder / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


Samples = dict[str, list[float]]  # per change kind, ms


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU of these processes (every thread) so far."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(mons: Monitors, folder: Path, res: ResourceSet, repeat: int, write: Callable[[str], None],
            toggle: Callable[[bool], None], settle: Callable[[], None], first_pod: int,
            cpu: Callable[[], float]) -> tuple[Samples, Samples]:
    """Latencies (ms, write returned -> last node's commit) of each change, `repeat` times, and
    the CPU (ms) the enforcing processes spent from the write until the change settled."""
    out: Samples = {op: [] for op in OPS}
    spent: Samples = {op: [] for op in OPS}
    for n in range(repeat):
        for op in OPS:
            if op == "policy edit":
                path = write_yaml(folder, f"edit{n}.yaml", [policy(0, 9000 + n)])
                change: Callable[[], None] = lambda p=path: write(p)  # noqa: E731
            elif op == "toggle":
                change = lambda d=n % 2 == 0: toggle(d)  # noqa: E731
            else:
                path = write_yaml(folder, f"pod{n}.yaml", [new_pod(res, first_pod + n)])
                change = lambda p=path: write(p)  # noqa: E731
            before = cpu()
            started = time.time()
            change()
            returned = time.time()
            commits = mons.commits_after(started)
            out[op].append((max(commits.values()) - returned) * 1000)
            settle()
            mons.quiet()
            spent[op].append((cpu() - before) * 1000)
    return out, spent


def run_reconciler(lab_id: str, res: ResourceSet, folder: Path, mons: Monitors, repeat: int
                   ) -> tuple[Samples, Samples]:
    from enforcer.datastore import Datastore
    from enforcer.nft.backend import KernelBackend
    from enforcer.nft.compiler import CompileOptions, compile_node
    from enforcer.reconcile import Reconciler

    ds = Datastore(folder / "dir-store")
    nodes = [n.name for n in res.nodes]
    rec = Reconciler(ds, KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}")), compile_node,
                     CompileOptions(), lambda: nodes, lab_id=lab_id)
    ds.apply_documents([write_yaml(folder, "base.yaml", base_documents(res))])
    rec.reconcile()
    mons.quiet()

    def write(path: str) -> None:  # `flowtui apply --lab`: store, then reconcile every node
        ds.apply_documents([path])
        rec.reconcile()

    def toggle(disabled: bool) -> None:
        ds.set_disabled("gnp", "bp1", None, disabled)
        rec.reconcile()

    # `returned` is taken after the reconcile here: measure from the store's return instead
    return measure_split(mons, folder, res, repeat, ds, rec)


def measure_split(mons: Monitors, folder: Path, res: ResourceSet, repeat: int, ds: Any, rec: Any
                  ) -> tuple[Samples, Samples]:
    """The reconciler mode: the store returns, then one process reconciles every node (its CPU:
    the reconcile's)."""
    out: Samples = {op: [] for op in OPS}
    spent: Samples = {op: [] for op in OPS}
    for n in range(repeat):
        for op in OPS:
            started = time.time()
            if op == "policy edit":
                ds.apply_documents([write_yaml(folder, f"redit{n}.yaml", [policy(0, 9500 + n)])])
            elif op == "toggle":
                ds.set_disabled("gnp", "bp1", None, n % 2 == 0)
            else:
                ds.apply_documents([write_yaml(folder, f"rpod{n}.yaml", [new_pod(res, 1000 + n)])])
            returned = time.time()
            before = time.thread_time()
            result = rec.reconcile()
            spent[op].append((time.thread_time() - before) * 1000)
            try:
                commits = mons.commits_after(started)
            except TimeoutError as err:
                raise TimeoutError(f"{op} #{n}: {err}; reconciled: {result.describe()}") from None
            out[op].append((max(commits.values()) - returned) * 1000)
            mons.quiet()
    return out, spent


def run_agents(lab: Any, res: ResourceSet, folder: Path, mons: Monitors, repeat: int) -> tuple[Samples, Samples]:
    from enforcer.datastore.backend import parse_datastore_url
    from enforcer.datastore.etcd import EtcdDatastore

    # a longer timeout than the CLI's 3 s: the shared machine stalls, and a stall is a figure, not a failure
    ds = EtcdDatastore(parse_datastore_url(lab.url), state_dir=folder / "writer", timeout=15.0)
    lab.wait(lab.apply(base_documents(res)))
    mons.quiet()
    last = {"revision": 0}

    def write(path: str) -> None:
        last["revision"] = ds.apply_documents([path]).revision

    def toggle(disabled: bool) -> None:
        last["revision"] = ds.set_disabled("gnp", "bp1", None, disabled).revision

    pids = [agent.process.pid for agent in lab.agents.values()]
    return measure(mons, folder, res, repeat, write, toggle, lambda: lab.wait(last["revision"]), 0,
                   lambda: cpu_seconds(pids))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 1), "p99_ms": round(pct(values, 0.99), 1),
            "max_ms": round(max(values), 1), "n": len(values)}


def cpu_summary(values: list[float]) -> float:
    """Mean CPU per change (ms): a sum over processes sampled in clock ticks, so a mean, not a median."""
    return round(statistics.fmean(values), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="2,4,8", help="node counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=20, help="changes of each kind per node count and mode")
    parser.add_argument("--quick", action="store_true", help="2 and 4 nodes, 5 changes each")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--lab-prefix", default="xd", help="lab ids are this prefix and 5 hex digits")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_propagation needs root (lab namespaces, nftables)")
    counts = [2, 4] if args.quick else [int(n) for n in args.nodes.split(",")]
    repeat = 5 if args.quick else args.repeat
    from tests.cluster_harness import cluster_lab, unique_lab_id

    if os.path.isdir("/dev/shm"):  # etcd's data on tmpfs: the figures are flowtui's, not a shared disk's fsync
        tempfile.tempdir = "/dev/shm"

    results: dict[str, Any] = {}
    load = os.getloadavg()[0]
    for count in counts:
        res = topology(count)
        with tempfile.TemporaryDirectory(prefix="ft-bench-prop-") as tmp:
            folder = Path(tmp)
            with cluster_lab(res, folder, agents=False, lab_id=unique_lab_id(args.lab_prefix)) as lab:
                mons = Monitors(lab.lab_id, lab.nodes)
                try:
                    baseline, baseline_cpu = run_reconciler(lab.lab_id, res, folder, mons, repeat)
                    for node in lab.nodes:
                        lab.start_agent(node)
                    agents, agents_cpu = run_agents(lab, res, folder, mons, repeat)
                finally:
                    mons.close()
        results[str(count)] = {op: {"agents": {**summary(agents[op]), "cpu_ms": cpu_summary(agents_cpu[op])},
                                    "reconciler": {**summary(baseline[op]), "cpu_ms": cpu_summary(baseline_cpu[op])}}
                               for op in OPS}
        print(f"{count} nodes: " + json.dumps(results[str(count)]), file=sys.stderr, flush=True)

    print(f"propagation: write returned -> last node's kernel commit, {repeat} changes each, "
          f"load average {load:.1f} at start")
    print(f"{'nodes':>5}  {'change':<12} {'agents p50':>11} {'p99':>8} {'CPU':>8}  {'reconciler p50':>15} "
          f"{'p99':>8} {'CPU':>8}  {'ratio p50':>9}")
    for count, ops in results.items():
        for op, modes in ops.items():
            a, r = modes["agents"], modes["reconciler"]
            ratio = r["p50_ms"] / a["p50_ms"] if a["p50_ms"] > 0 else float("nan")
            print(f"{count:>5}  {op:<12} {a['p50_ms']:>9.1f}ms {a['p99_ms']:>6.1f}ms {a['cpu_ms']:>6.1f}ms  "
                  f"{r['p50_ms']:>13.1f}ms {r['p99_ms']:>6.1f}ms {r['cpu_ms']:>6.1f}ms  {ratio:>8.2f}x")
    print("CPU: per change, summed over the enforcing processes (every agent; the one reconciler)")
    largest = results[str(max(counts))]
    met = all(m["agents"]["p50_ms"] < TARGET_P50_MS and m["agents"]["p99_ms"] < TARGET_P99_MS
              for m in largest.values())
    print(f"targets at {max(counts)} nodes (p50 < {TARGET_P50_MS:.0f} ms, p99 < {TARGET_P99_MS:.0f} ms): "
          f"{'met' if met else 'NOT met'}")
    if args.json:
        print(json.dumps({"bench": "propagation", "repeat": repeat, "load_avg": load, "nodes": results,
                          "targets_met": met}))


if __name__ == "__main__":
    main()
