"""Query library latency over a large flow store: every file of `queries/` over 10M flow rows.

    python bench/bench_queries.py [--rows 10000000] [--nodes 20] [--namespaces 50] [--pods 5000]
                                  [--policies 1000] [--repeat 3] [--budget 30] [--db PATH] [--seed 1]
                                  [--json]

Writes a flow store with the store's own writer (`DuckStore.insert`, Arrow batches of 1M rows
built with numpy: no row-by-row work), in the store's schema: `rules` for `--policies` policies
(3 rules each, a tenth of them revised once, an end of tier each, a profile per namespace,
failsafes), `endpoints` for the pods, outside hosts and two deny-list network sets, `flows` rows
spread over 24 h in 15 s buckets on `--nodes` nodes (each pod calls 4 peers, 0.5% of the flows
go somewhere new, 15% of the sources are outside hosts and 3% deny-listed addresses; rule hits
are skewed, and a tenth of the rules are never hit; a tenth of the allowed flows carry conntrack
counts), `rule_counters` readings, `loss` and `stats`. Then each query runs with its defaults,
on a read-only connection (as `flowtui query` opens it): once to warm up, then up to `--repeat`
times or until `--budget` seconds have passed; the table shows the best and median latency and
the flow rows scanned per second (rows in `flows` / best latency).

`--json` adds, as the last line of stdout, `{"rows": N, "machine": {...}, "queries": {NAME:
{"best_ms", "median_ms", "rows_out"}}}` for scripts that track the figures (the first, warm-up run
is in the table only).

Runs in about `generation + 11 queries x (1 + repeat) x latency`; `--rows 1000000` is a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowtui.query.library import REPO_QUERIES, discover  # noqa: E402
from flowtui.query.run import open_source, run_query  # noqa: E402
from flowtui.store.duckdb_store import DuckStore  # noqa: E402

START = datetime(2026, 3, 14)
SPAN = timedelta(hours=24)
BUCKET_US = 15_000_000
CHUNK = 1_000_000
DPORTS = np.array([80, 443, 8080, 5432, 6379, 9000, 53, 3306, 9090, 11211], dtype=np.uint16)


def _ip4(n: np.ndarray, prefix: tuple[int, int]) -> list[str]:
    return [f"{prefix[0]}.{prefix[1]}.{(int(i) >> 8) & 255}.{int(i) & 255}" for i in n]


def build_dimensions(rng: np.random.Generator, args: argparse.Namespace) -> dict[str, Any]:
    """Rules and endpoints as row dicts (thousands of rows), plus the arrays flow generation samples from."""
    namespaces = [f"ns-{i:03d}" for i in range(args.namespaces)]
    rules: list[dict[str, Any]] = []

    def rule(kind: str, ns: str | None, name: str, tier: str | None, revision: int, direction: str, index: int,
             action: str, trigger: str | None = None, first: datetime = START) -> int:
        rid = len(rules) + 1
        short = {"GlobalNetworkPolicy": "gnp", "NetworkPolicy": "np"}.get(trigger or kind, "pro")
        policy = f"0|{tier or '__PROFILE__'}|{short}:{(ns + '/') if ns else ''}{name}|{action.lower()}|{index}"
        rules.append({"id": rid, "kind": kind, "namespace": ns, "name": name, "tier": tier, "revision": revision,
                      "direction": direction, "rule": index, "action": action, "trigger_kind": trigger,
                      "prefix": f"ft:{action[0]}{rid}", "policy": policy, "first_seen": first})
        return rid

    hot_rules: list[int] = []
    for p in range(args.policies):
        glob = p % 4 == 0
        kind = "GlobalNetworkPolicy" if glob else "NetworkPolicy"
        ns = None if glob else namespaces[p % len(namespaces)]
        name = f"policy-{p:04d}"
        direction = "ingress" if p % 3 else "egress"
        revisions = 2 if p % 10 == 0 else 1
        for revision in range(1, revisions + 1):
            first = START + (SPAN / 2 if revision == 2 else timedelta(0))
            ids = [rule(kind, ns, name, "default", revision, direction, i, a, first=first)
                   for i, a in enumerate(("Allow", "Allow", "Deny"))]
            if revision == revisions:
                hot_rules += ids
        hot_rules.append(rule("EndOfTier", ns, name, "default", 0, direction, -1, "Deny", trigger=kind))
    profiles = [rule("Profile", None, f"kns.{ns}", "__PROFILE__", 0, d, 0, "Allow")
                for ns in namespaces for d in ("ingress", "egress")]
    no_profile = rule("NoProfileMatch", None, "", None, 0, "egress", -1, "Deny")
    for port in (22, 179, 6443):
        rule("Failsafe", None, f"tcp:{port}", None, 0, "ingress", -1, "Allow")
    candidates = np.array(hot_rules + profiles + [no_profile], dtype=np.int32)
    weights = 1.0 / np.arange(1, len(candidates) + 1) ** 0.9  # a few rules take most hits; the tail is cold
    rng.shuffle(weights)
    weights[rng.random(len(weights)) < 0.1] = 0.0  # about a tenth never hit: the unused rules
    weights /= weights.sum()
    rule_action = np.array([r["action"] for r in rules])
    rule_direction = np.array([r["direction"] for r in rules])

    endpoints: list[dict[str, Any]] = []
    pod_ips = _ip4(np.arange(args.pods), (10, 244))
    for i in range(args.pods):
        endpoints.append({"id": i + 1, "revision": 1, "type": "wep", "namespace": namespaces[i % len(namespaces)],
                          "name": f"pod-{i:05d}", "node": f"node-{i % args.nodes:02d}",
                          "labels": [f"app=app-{i % 200}"], "addresses": [pod_ips[i]], "loaded_at": START})
    n_ext = 2000
    ext_ips = _ip4(np.arange(n_ext), (203, 0))
    for i in range(n_ext):
        endpoints.append({"id": args.pods + i + 1, "revision": 1, "type": "external", "namespace": None,
                          "name": f"host-{i}", "node": None, "labels": [], "addresses": [ext_ips[i]],
                          "loaded_at": START})
    bad_ips = [f"198.51.100.{i}" for i in range(1, 200)]
    for j, cidrs in enumerate((["198.51.100.0/25", "2001:db8:bad::/48"], ["198.51.100.128/25"])):
        endpoints.append({"id": args.pods + n_ext + j + 1, "revision": 1, "type": "netset", "namespace": None,
                          "name": f"deny-list-{j}", "node": None, "labels": ["deny-list=true"], "addresses": cidrs,
                          "loaded_at": START})
    return {
        "rules": rules, "endpoints": endpoints, "candidates": candidates, "weights": weights,
        "rule_action": rule_action, "rule_direction": rule_direction,
        "ips": pa.array(pod_ips + ext_ips + bad_ips), "n_pods": args.pods, "n_ext": n_ext, "n_bad": len(bad_ips),
    }


def flow_chunk(rng: np.random.Generator, dims: dict[str, Any], n: int, t0_us: int, t1_us: int,
               nodes: int) -> pa.Table:
    """`n` flow rows with times in [t0, t1), in the flows table's Arrow schema."""
    times = np.sort(rng.integers(t0_us, t1_us, n))
    start = times // BUCKET_US * BUCKET_US
    rule_id = rng.choice(dims["candidates"], size=n, p=dims["weights"])
    action = dims["rule_action"][rule_id - 1]
    n_pods, n_ext, n_bad = dims["n_pods"], dims["n_ext"], dims["n_bad"]
    src = rng.integers(0, n_pods, n)
    outside = rng.random(n) < 0.15
    src[outside] = n_pods + rng.integers(0, n_ext, int(outside.sum()))
    bad = rng.random(n) < 0.03
    src[bad] = n_pods + n_ext + rng.integers(0, n_bad, int(bad.sum()))
    action[bad] = "Deny"
    # a service graph: each pod calls 4 peers, each peer listens on one port
    dst = (src % n_pods * 7919 + rng.integers(0, 4, n) * 104729) % n_pods
    stray = rng.random(n) < 0.005  # and now and then somewhere new: new talkers all day long
    dst[stray] = rng.integers(0, n_pods, int(stray.sum()))
    src_ep = np.where(src < n_pods + n_ext, src + 1, -1).astype(np.int32)
    conntrack = (action == "Allow") & (rng.random(n) < 0.1)
    events = np.where(conntrack, 0, rng.integers(1, 6, n)).astype(np.int64)
    packets = np.where(action == "Allow", np.where(conntrack, rng.integers(5, 5000, n), 0), events)
    proto = np.where(rng.random(n) < 0.85, 6, 17).astype(np.uint8)
    node = np.where(dims["rule_direction"][rule_id - 1] == "ingress", dst % nodes, src % nodes) + 1

    def ts(us: np.ndarray) -> pa.Array:
        return pa.array(us, pa.int64()).cast(pa.timestamp("us"))

    cols: dict[str, pa.Array] = {
        "start_time": ts(start), "end_time": ts(start + BUCKET_US),
        "source_id": pa.array(node.astype(np.int32)),
        "action": pa.array(action),
        "rule_id": pa.array(rule_id.astype(np.int32)),
        "prefix": pa.array([None] * n, pa.string()),
        "proto": pa.array(proto),
        "src_ip": pa.DictionaryArray.from_arrays(pa.array(src.astype(np.int32)), dims["ips"]),
        "dst_ip": pa.DictionaryArray.from_arrays(pa.array(dst.astype(np.int32)), dims["ips"]),
        "sport": pa.array(rng.integers(32768, 61000, n).astype(np.uint16)),
        "dport": pa.array(DPORTS[dst % len(DPORTS)]),
        "src_ep": pa.array(src_ep, mask=src_ep < 0),
        "dst_ep": pa.array((dst + 1).astype(np.int32)),
        "events": pa.array(events),
        "packets": pa.array(packets.astype(np.int64)),
        "bytes": pa.array((packets * rng.integers(60, 1500, n)).astype(np.int64)),
        "reply_packets": pa.array(np.where(conntrack, packets // 2, 0).astype(np.int64)),
        "reply_bytes": pa.array(np.where(conntrack, packets * 400, 0).astype(np.int64)),
        "connections_started": pa.array(np.where((action == "Allow") & ~conntrack, events, 0).astype(np.int64)),
        "connections_completed": pa.array(conntrack.astype(np.int64)),
        "tcp_flags": pa.array(np.where(proto == 6, 2, 0).astype(np.uint8), mask=proto != 6),
        "first_seen": ts(times), "last_seen": ts(times + rng.integers(0, 1_000_000, n)),
        "count_source": pa.array(np.where(conntrack, "conntrack", "nflog")),
    }
    return pa.table(cols)


def build_store(path: Path, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    dims = build_dimensions(rng, args)
    store = DuckStore(path, snapshot_interval=None)
    try:
        run = store.begin_run({"bench": "queries", "rows": args.rows})
        for node in range(args.nodes):
            store.add_source(run, f"ft-bench-node-{node:02d}", f"node-{node:02d}", (1, 2), 1 << 26)
        store.insert_rows("rules", dims["rules"])
        store.insert_rows("endpoints", dims["endpoints"])
        start_us = int((START - datetime(1970, 1, 1)).total_seconds() * 1e6)
        span_us = int(SPAN.total_seconds() * 1e6)
        done, gen_s, insert_s = 0, 0.0, 0.0
        while done < args.rows:
            n = min(CHUNK, args.rows - done)
            a = start_us + span_us * done // args.rows
            b = start_us + span_us * (done + n) // args.rows
            g0 = time.perf_counter()
            chunk = flow_chunk(rng, dims, n, a, b, args.nodes)
            g1 = time.perf_counter()
            store.insert("flows", chunk)
            insert_s += time.perf_counter() - g1
            gen_s += g1 - g0
            done += n
        readings = []
        for hour in range(0, 25, 6):
            when = START + timedelta(hours=hour)
            for r in dims["rules"][:: max(1, len(dims["rules"]) // 2000)]:
                for node in range(1, min(args.nodes, 4) + 1):
                    n_pk = hour * (r["id"] % 97)
                    readings.append({"time": when, "run_id": run, "source_id": node, "prefix": r["prefix"],
                                     "rule_id": r["id"], "nft_rule": f"inet flowtui c{node} {r['id']}",
                                     "packets": n_pk, "bytes": n_pk * 100, "logged": n_pk, "rate_limited": False,
                                     "run_packets": n_pk, "run_logged": n_pk})
        store.insert_rows("rule_counters", readings)
        end = START + SPAN
        store.insert_rows("loss", [
            {"time": end, "run_id": run, "source_id": s, "cause": c, "events": (s * 7) % 13, "detail": "bench"}
            for s in range(1, args.nodes + 1) for c in ("kernel_ratelimit", "rcvbuf_overrun", "writer_backlog")])
        store.insert_rows("stats", [
            {"time": end, "run_id": run, "source_id": s, "name": "received", "value": args.rows // args.nodes}
            for s in range(1, args.nodes + 1)])
        while store.roll_up(max_hours=1):  # an hour at a time, as the collector does: rolling up 100M rows
            pass  # in one statement ran out of memory (15 GB RSS, OOM-killed)
        store.end_run(run)
    finally:
        c0 = time.perf_counter()
        store.close(snapshot=False)
        close_s = time.perf_counter() - c0
    return {"total": time.perf_counter() - t0, "generate": gen_s, "insert": insert_s, "checkpoint": close_s}


def machine() -> dict[str, Any]:
    """What the figures were measured on (the CPU is often shared: the load average matters)."""
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "duckdb": duckdb.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="flow rows to generate")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per query after a warm-up run")
    parser.add_argument("--budget", type=float, default=30.0, help="stop repeating a query after this many seconds")
    parser.add_argument("--db", type=Path, help="keep the generated store here (reused if it exists)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()

    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowtui-bench-")
        args.db = Path(tmp.name) / "bench.duckdb"
    try:
        if args.db.exists():
            print(f"reusing {args.db}")
        else:
            built = build_store(args.db, args)
            print(f"generated {args.rows:,} flow rows in {built['total']:.1f} s (numpy {built['generate']:.1f} s, "
                  f"insert {built['insert']:.1f} s = {args.rows / max(built['insert'], 1e-9):,.0f} rows/s, "
                  f"checkpoint {built['checkpoint']:.1f} s); {args.db.stat().st_size / 2**20:,.0f} MiB on disk")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"DuckDB {duckdb.__version__}, {os.cpu_count()} CPUs (load average {load}); best and median of up to "
              f"{args.repeat} runs after a warm-up, at most {args.budget:.0f} s per query")
        results = []
        with open_source(args.db) as source:
            flow_rows = source.con.execute("SELECT count(*) FROM flows").fetchone()[0]  # type: ignore[index]
            for name, query in discover([REPO_QUERIES]).items():
                t0 = time.perf_counter()
                out = run_query(source.con, query)
                times = [time.perf_counter() - t0]
                spent = times[0]
                timed: list[float] = []
                while len(timed) < args.repeat and spent < args.budget:
                    t0 = time.perf_counter()
                    run_query(source.con, query)
                    timed.append(time.perf_counter() - t0)
                    spent += timed[-1]
                timed = timed or times
                results.append((name, out.num_rows, times[0], min(timed), statistics.median(timed)))
                print(f"  {name}: {min(timed) * 1000:,.0f} ms", file=sys.stderr)
        header = ("query", "rows out", "first (ms)", "best (ms)", "median (ms)", "flow rows/s")
        table = [(n, f"{r:,}", f"{a * 1000:,.0f}", f"{b * 1000:,.0f}", f"{m * 1000:,.0f}", f"{flow_rows / b:,.0f}")
                 for n, r, a, b, m in results]
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        print(f"\nquery latency over {flow_rows:,} flow rows")
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                          strict=True))))
        for row in table:
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                               strict=True))))
        total = sum(b for *_x, b, _m in results)
        print(f"all {len(results)} queries: {total:,.2f} s (best runs)")
        if args.json:
            doc = {
                "rows": flow_rows,
                "machine": machine(),
                "queries": {
                    n: {"best_ms": round(b * 1000, 1), "median_ms": round(m * 1000, 1), "rows_out": r}
                    for n, r, _a, b, m in results
                },
            }
            print(json.dumps(doc, sort_keys=True))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
