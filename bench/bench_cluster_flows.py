"""Cluster flows dataset benchmark: what writing every node's flows to Parquet costs, how far
behind live the dataset is, and reading it back, each next to a same-run baseline.

    python bench/bench_cluster_flows.py [--nodes 4] [--events 200000] [--probes 40] [--json]

No root: NFLOG skbs reach real collectors through datagram socketpairs (message boundaries as a
netlink socket's), so parse, attribution, aggregation, the local DuckDB store and the dataset
writer all run for real; only the kernel is left out (bench_collector.py measures that part).

1. Throughput: `--events` events (UDP, 4,096 flows) offered as fast as one collector takes them,
   with and without `--flows-dir` (the baseline), interleaved; events/s and the ratio.
2. Lag: one event every 0.25 s on each of `--nodes` collectors writing one dataset; for each,
   the time from sending it to its flow row being readable in the dataset (p50, p99, max; the
   target is <= 5 s), next to the local store's own commit (readable in DuckDB) as the baseline.
3. Reading: `flows_once` and `top_denied` over the dataset of step 2 (`--cluster`) next to the
   same rows in one DuckDB store.

The machine is shared: load is printed with the figures. `--json` ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from enforcer.ruleids import RuleRef, RuleTable  # noqa: E402
from flowtui.collector.service import Collector  # noqa: E402
from tests.nflog_pair import PairNflog, skb_of, start_collector  # noqa: E402


def packet(i: int) -> bytes:
    return bytes(IP(src=f"10.1.{(i >> 8) & 255}.{i & 255}", dst="10.2.0.1") / UDP(sport=1024 + i % 4096, dport=9999)
                 / Raw(b"x" * 18))


_PREBUILT: dict[int, list[bytes]] = {}


def prebuilt(events: int, per_skb: int = 128) -> list[bytes]:
    if events not in _PREBUILT:
        pkts = [packet(i) for i in range(4096)]
        _PREBUILT[events] = [skb_of(s, [pkts[(s + i) % len(pkts)] for i in range(min(per_skb, events - s))])
                             for s in range(0, events, per_skb)]
    return _PREBUILT[events]


def collector(root: Path, name: str, flows_dir: Path | None) -> tuple[Collector, PairNflog]:
    return start_collector(db=root / f"{name}.duckdb", rules_path=root / "rules.jsonl", node=name,
                           flows_dir=flows_dir, snapshot_interval=None)


def throughput(root: Path, events: int, with_dataset: bool) -> float:
    name = f"tp{'d' if with_dataset else 'b'}{time.monotonic_ns()}"
    c, sock = collector(root, name, root / "tp-flows" if with_dataset else None)
    skbs = prebuilt(events)  # built before the clock starts: the sender must not be the bottleneck
    sock.tx.setblocking(True)
    t0 = time.perf_counter()
    for data in skbs:
        sock.tx.send(data)
    while c.book.stat_total("received") < events and time.perf_counter() - t0 < 600:
        time.sleep(0.01)
    summary = c.stop()
    seconds = time.perf_counter() - t0
    lost = sum(summary["lost"].values())
    if lost:
        print(f"  ({'dataset' if with_dataset else 'baseline'}: {lost} events lost: {summary['lost']})")
    return events / seconds


def lag(root: Path, nodes: int, probes: int) -> dict[str, list[float]]:
    """Seconds from sending a probe to its row being readable: in the dataset, and in the local store."""
    import duckdb
    import pyarrow.dataset as pads

    flows = root / "lag-flows"
    running = [collector(root, f"n{i}", flows) for i in range(nodes)]
    dataset_lag: list[float] = []
    local_lag: list[float] = []
    lock = threading.Lock()

    def watch(port: int, sent: float, node: int) -> None:
        c = running[node][0]
        local_seen = dataset_seen = None
        while time.time() - sent < 30 and (local_seen is None or dataset_seen is None):
            if local_seen is None:
                with c.store._lock:
                    hit = c.store.con.execute("SELECT count(*) FROM flows_open WHERE sport = ? UNION ALL "
                                              "SELECT count(*) FROM flows WHERE sport = ?", [port, port]).fetchall()
                if sum(r[0] for r in hit):
                    local_seen = time.time() - sent
            if dataset_seen is None and (flows / "flows").is_dir():
                try:
                    ds = pads.dataset(flows / "flows", format="parquet", partitioning="hive")
                    n = ds.count_rows(filter=(pads.field("sport") == port) & (pads.field("node") == f"n{node}"))
                except (OSError, ValueError):
                    n = 0
                if n:
                    dataset_seen = time.time() - sent
            time.sleep(0.02)
        with lock:
            if local_seen is not None:
                local_lag.append(local_seen)
            if dataset_seen is not None:
                dataset_lag.append(dataset_seen)

    watchers = []
    for i in range(probes):
        node = i % nodes
        port = 20000 + i
        pkt = bytes(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=port, dport=9999) / Raw(b"x"))
        sent = time.time()
        running[node][1].tx.send(skb_of(10_000 + i, [pkt]))
        t = threading.Thread(target=watch, args=(port, sent, node), daemon=True)
        t.start()
        watchers.append(t)
        time.sleep(0.25)
    for t in watchers:
        t.join()
    for c, _s in running:
        c.stop()
    del duckdb
    return {"dataset": dataset_lag, "local": local_lag, "missing": [float(probes - len(dataset_lag))]}


def reading(root: Path) -> dict[str, float]:
    """flows_once and the top_denied query over the cluster dataset vs one DuckDB store of the same rows."""
    import duckdb

    from flowtui.query.library import load
    from flowtui.query.run import open_source, run_query

    out: dict[str, float] = {}
    cluster = open_source(root / "lag-flows")
    single_path = root / "single.duckdb"
    single = duckdb.connect(str(single_path))
    from flowtui.store import schema

    for stmt in schema.statements(set()):
        single.execute(stmt)
    for t in ("flows", "rules", "sources", "runs", "endpoints"):
        rows = cluster.con.sql(f"SELECT * FROM {t}").to_arrow_table()
        single.register("_x", rows)
        single.execute(f"INSERT INTO {t} BY NAME SELECT * FROM _x")
        single.unregister("_x")
    top = load("top_denied")
    for label, con in (("cluster", cluster.con), ("single", single)):
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            con.execute("SELECT count(*) FROM flows_once").fetchall()
            run_query(con, top, {"since": "1h"})
            best.append(time.perf_counter() - t0)
        out[label] = min(best)
    cluster.close()
    single.close()
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ft-bench-cluster-"))
    try:
        RuleTable([RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 1, "ingress", 0, "Deny")]).dump(
            root / "rules.jsonl")
        load0 = os.getloadavg()[0]
        base, with_ds = [], []
        for _ in range(2):  # interleaved: the machine's load hits both alike
            base.append(throughput(root, args.events, False))
            with_ds.append(throughput(root, args.events, True))
        b, d = statistics.median(base), statistics.median(with_ds)
        print(f"load average {load0:.1f} on {os.cpu_count()} CPUs")
        print(f"throughput   baseline {b:>10,.0f} events/s   with --flows-dir {d:>10,.0f} events/s   "
              f"ratio {d / b:.2f}")
        lags = lag(root, args.nodes, args.probes)
        ds, local = lags["dataset"], lags["local"]
        print(f"lag ({args.nodes} nodes, {args.probes} probes)   dataset p50 {pct(ds, .5):.2f} s  "
              f"p99 {pct(ds, .99):.2f} s  max {max(ds, default=float('nan')):.2f} s (target <= 5 s)   "
              f"local store p50 {pct(local, .5):.2f} s  p99 {pct(local, .99):.2f} s  "
              f" missing {int(lags['missing'][0])}")
        files = sum(1 for _ in (root / "lag-flows").rglob("*.parquet"))
        read = reading(root)
        print(f"reading      flows_once + top_denied: cluster {read['cluster'] * 1000:.0f} ms, one DuckDB store "
              f"{read['single'] * 1000:.0f} ms (ratio {read['cluster'] / read['single']:.1f}; {files} files)")
        if args.json:
            print(json.dumps({
                "load": load0, "throughput": {"baseline": b, "dataset": d, "ratio": d / b},
                "lag_s": {"p50": pct(ds, .5), "p99": pct(ds, .99), "max": max(ds, default=None),
                          "local_p50": pct(local, .5), "local_p99": pct(local, .99),
                          "missing": int(lags["missing"][0])},
                "read_ms": {k: v * 1000 for k, v in read.items()}, "files": files}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
