"""Dashboard benchmark: keypress-to-repaint latency while 100k events/s stream in, and memory
after 10M events; or (`--pages`) the first page of each screen over a large store.

    python bench/bench_tui.py [--rate 100000] [--events 10000000] [--keys 300] [--json]
    python bench/bench_tui.py --pages [--rows 10000000] [--db PATH] [--repeat 5] [--no-baseline] [--json]

`--pages`: a flow store of `--rows` flow rows (`bench_queries.py`'s generator and writer, rollups
kept by the writer; `--db` keeps it and reuses it), opened as `flowtui tui --db` opens it
(`StoreSource`, replay). Timed, after a warm-up, best and median of `--repeat`: the Flows screen's
first page (`recent_flows`, 200 flows; `_5000`: the 5,000 that replace it) with four filters
(`ns:ns-001`: common; `verdict:deny ns:ns-001`: rarer; `pod:ns-001/none`: no such endpoint, answered
from the endpoints table; `pod:ns-000/pod-00000 label:app=app-1`: endpoints that never talk, so the
window grows over the whole store, reading the rows of those endpoints' ids),
the Conversations screen's first page (pairs from the rollups) and its details (services, logged
flows, policies of the pairs shown, which fill in after), and the Policies screen's store part
(`relations`, rule hits from `rule_hits_all`, the rules and the stored counters, hits per rule).
The baseline, once each in the same run: the same screens as they read the store before the
rollups (the stream summed over the whole store, then filtered; conversations aggregated from the
stream; the policies' store part with hits summed over `flows`). The JSON last line: `{"rows",
"machine", "pages": {NAME: {"best_ms", "median_ms", "first_ms", "rows_out", "baseline_ms", "ratio"}}}`.

The streaming run needs no root. A stand-in collector (a thread) inserts the article's flows
(`flowtui.demo.synthetic`, Arrow batches with enriched endpoints) into a `TappedStore`
(DuckDB, as the collector's writer does: one insert per batch) at `--rate` events/s, in batches
every 50 ms; the dashboard (`flowtui.tui.app`, headless through Textual's pilot, 160x45) shows
them live: the tap hands each batch over, the flows screen polls every 0.2 s and appends what
matched.

Measured:

* keypress -> repaint: a key (cursor up/down, page up/down) is delivered to the app as the
  terminal driver delivers it, and the time until the flow table has drawn the cursor on its
  new row is taken; p50/p95/p99/max over `--keys` presses, spread over the run;
* stream: events inserted/s and events taken onto the screen/s (`--view flows`, the default: folded
  into one row per flow, counts updated in place; `--view events`: one row per event);
* memory: the process's RSS every 1M events up to `--events`, with the part DuckDB's buffer
  manager holds for the store (capped at `--duckdb-memory`; the producer checkpoints and
  snapshots every 5 s as the collector's writer does), the gc-tracked Python objects and the
  rows the dashboard holds (at most 100k: flows or events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_queries: the large store's generator

BATCH_SECONDS = 0.05


def duckdb_mb(store: Any) -> float:
    """Memory DuckDB's buffer manager holds (the flow store, not the dashboard)."""
    try:
        rows = store.query("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()")
        return float(rows[0][0]) / 2**20
    except Exception:
        return float("nan")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Producer(threading.Thread):
    """Inserts `total` events at `rate`/s (batches every 50 ms), like the collector's writer."""

    def __init__(self, feed: Any, rate: int, total: int) -> None:
        super().__init__(name="bench producer", daemon=True)
        self.feed, self.rate, self.total = feed, rate, total
        self.inserted = 0
        self.started = 0.0
        self.finished = 0.0
        self.behind = 0.0  # seconds the producer fell behind its schedule, at most
        self.stop = threading.Event()
        self.newest_us = 0

    def run(self) -> None:
        per_batch = max(1, int(self.rate * BATCH_SECONDS))
        spacing = max(1, int(1e6 / self.rate))
        self.started = time.monotonic()
        base_us = int(time.time() * 1e6)
        batches = 0
        pool = [self.feed.enrich(self.feed.gen.batch(per_batch, 0, spacing, seed)) for seed in range(8)]
        while self.inserted < self.total and not self.stop.is_set():
            due = self.started + batches * BATCH_SECONDS
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            else:
                self.behind = max(self.behind, now - due)
            batch = pool[batches % len(pool)]
            start_us = base_us + self.inserted * spacing
            import pyarrow as pa
            import pyarrow.compute as pc

            times = pc.add(batch.column("time").cast(pa.int64()), start_us).cast(pa.timestamp("us"))
            batch = batch.set_column(0, "time", times)
            n = min(batch.num_rows, self.total - self.inserted)
            self.feed.store.insert("events", batch.slice(0, n))
            if self.feed.store.snapshot_due():  # checkpoints and snapshots, as the collector's writer does
                self.feed.store.snapshot()
            self.inserted += n
            self.newest_us = start_us + n * spacing
            batches += 1
        self.finished = time.monotonic()


async def drive(app: Any, producer: Producer, keys: int, marks: list[int], view: str = "flows") -> dict[str, Any]:
    from textual import events

    from flowtui.tui.widgets.stream.flow_stream import FlowStream

    latencies: list[float] = []
    memory: list[tuple[int, float, int, float, int]] = []
    import gc

    async with app.run_test(size=(160, 45)) as pilot:
        from flowtui.tui.app import freeze_heap

        freeze_heap()  # as a real (non-headless) run does on mount
        stream = app.screen.query_one(FlowStream)
        if view != app.screen.view:
            app.screen.action_toggle_view()
            while stream.view != view:
                await pilot.pause(0.01)
        producer.start()
        appended0, t0 = stream.ring.total_appended, time.monotonic()
        key_every = max(1, producer.total // max(keys, 1))
        next_key = key_every // 2
        mark_i = 0
        rng = random.Random(1)
        while producer.is_alive() or producer.inserted < producer.total:
            await pilot.pause(0.01)
            if mark_i < len(marks) and producer.inserted >= marks[mark_i]:
                memory.append((producer.inserted, rss_mb(), len(gc.get_objects()), duckdb_mb(producer.feed.store),
                               len(stream.ring)))
                mark_i += 1
            if producer.inserted >= next_key and len(latencies) < keys:
                next_key += key_every
                key = rng.choice(["up", "down", "pageup", "pagedown", "up", "down"])
                t = time.perf_counter()
                # as a terminal's input thread delivers a key: a message to the app (pilot.press
                # would also wait for the app to go idle, which it never is under this load)
                app.post_message(events.Key(key, None))
                while time.perf_counter() - t < 2.0:
                    row, painted = stream.cursor_painted
                    if painted > t and row == stream.cursor:
                        break
                    await asyncio.sleep(0)
                latencies.append(stream.cursor_painted[1] - t if stream.cursor_painted[1] > t else 2.0)
            if not producer.is_alive() and producer.inserted >= producer.total:
                break
        elapsed = time.monotonic() - t0
        await pilot.pause(0.5)
        appended = stream.ring.total_appended - appended0
        while mark_i < len(marks):
            memory.append((producer.inserted, rss_mb(), len(gc.get_objects()), duckdb_mb(producer.feed.store),
                           len(stream.ring)))
            mark_i += 1
        held = len(stream.ring)
        held_bytes = stream.ring.nbytes()
    q = sorted(latencies)

    def pct(p: float) -> float:
        return q[min(len(q) - 1, int(p * len(q)))] * 1e3 if q else float("nan")

    return {
        "events": producer.inserted,
        "seconds": round(elapsed, 1),
        "insert_rate": round(producer.inserted / max(producer.finished - producer.started, 1e-9)),
        "producer_max_behind_s": round(producer.behind, 3),
        "screen_rows_per_s": round(appended / max(elapsed, 1e-9)),
        "keypresses": len(latencies),
        "repaint_ms": {"p50": round(pct(0.5), 1), "p95": round(pct(0.95), 1), "p99": round(pct(0.99), 1),
                       "max": round(q[-1] * 1e3, 1) if q else None,
                       "mean": round(statistics.mean(q) * 1e3, 1) if q else None},
        "rows_held": held,
        "rows_held_mb": round(held_bytes / 2**20, 1),
        "memory": [{"events": e, "rss_mb": round(r, 1), "duckdb_mb": round(d, 1), "gc_objects": o, "rows_held": h}
                   for e, r, o, d, h in memory],
    }


# flows_nothing: no such pod; flows_no_pair: both endpoints exist, no flow between them
FLOW_FILTERS = {"flows_ns": "ns:ns-001", "flows_deny_ns": "verdict:deny ns:ns-001", "flows_nothing": "pod:ns-001/none",
                "flows_no_pair": "pod:ns-000/pod-00000 label:app=app-1"}


def _timed(fn: Any, repeat: int) -> dict[str, Any]:
    times, out = [], None
    for _ in range(repeat + 1):  # the first one warms up
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    rows = out.num_rows if hasattr(out, "num_rows") else len(out) if out is not None else 0
    timed = times[1:] or times
    return {"best_ms": round(min(timed) * 1e3, 1), "median_ms": round(statistics.median(timed) * 1e3, 1),
            "first_ms": round(times[0] * 1e3, 1), "rows_out": rows}


def first_pages(args: argparse.Namespace) -> dict[str, Any]:
    """The first page of each screen over a store of `args.rows` flow rows (see the docstring)."""
    import bench_queries

    from flowtui.tui import queries, sources
    from flowtui.tui.filters import compile_filter
    from flowtui.tui.policyview import activity_by_rule
    from flowtui.tui.screens.flows import FIRST_PAGE, RECENT_LIMIT
    from flowtui.tui.screens.policies import _store_refs

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "pages.duckdb"
        built = None
        if not db.exists():
            gen = argparse.Namespace(rows=args.rows, nodes=20, namespaces=50, pods=5000, policies=1000, seed=1)
            built = bench_queries.build_store(db, gen)
        src = sources.StoreSource(db)
        try:
            rows = int(src.query("SELECT count(*) AS n FROM flows").column(0)[0].as_py())

            def policies(rollups: bool = True) -> Any:
                relations = src.relations() if rollups else frozenset()
                hits = {int(r["rule_id"]): (int(r["hits"]), r["last_hit"]) for r in src.query(
                    queries.rule_activity_sql(src.stream_kind, relations)).to_pylist()}
                stored = src.query(queries.RULE_COUNTERS_SQL).to_pylist()
                counters = {int(r["rule_id"]): int(r["packets"]) for r in stored}
                return activity_by_rule(_store_refs(src), counters or None, hits)

            pages: dict[str, Any] = {}
            for name, text in FLOW_FILTERS.items():
                f = compile_filter(text)
                pages[name] = _timed(lambda f=f: src.recent_flows(f.where, FIRST_PAGE, f.endpoint_needs), args.repeat)
                pages[name]["filter"] = text
                pages[name + "_5000"] = _timed(lambda f=f: src.recent_flows(f.where, RECENT_LIMIT, f.endpoint_needs),
                                               args.repeat)
            pages["conversations"] = _timed(lambda: src.conversations(None), args.repeat)
            shown = src.conversations(None)
            pages["conversation_details"] = _timed(lambda: src.conversation_details(shown, None), args.repeat)
            pages["policies"] = _timed(policies, args.repeat)
            if args.baseline:
                _baselines(src, pages)
                pages["policies"]["baseline_ms"] = _timed(lambda: policies(rollups=False), 0)["first_ms"]
                pages["policies"]["ratio"] = round(pages["policies"]["baseline_ms"] / max(pages["policies"]["best_ms"],
                                                                                          1e-3), 1)
        finally:
            src.close()
    return {"rows": rows, "machine": bench_queries.machine(), "build": built, "pages": pages}


def _baselines(src: Any, pages: dict[str, Any]) -> None:
    """The same pages as the screens read them before the rollups, once each (the flows screen
    then showed nothing until its 5,000 newest flows were in)."""
    from flowtui.tui import queries
    from flowtui.tui.filters import compile_filter
    from flowtui.tui.screens.flows import RECENT_LIMIT

    def whole_stream(kind: str, where: str | None, since: str | None = None) -> str:
        return queries.filtered(queries.stream_sql(kind), where)  # summed first, filtered after

    kind = src.stream_kind
    for name, text in FLOW_FILTERS.items():
        where = compile_filter(text).where
        real, queries.stream_where = queries.stream_where, whole_stream
        try:
            sql = queries.flows_view_sql(kind, where, RECENT_LIMIT)
        finally:
            queries.stream_where = real
        pages[name]["baseline_ms"] = _timed(lambda sql=sql: src.query(sql), 0)["first_ms"]
    pages["conversations"]["baseline_ms"] = _timed(
        lambda: src.query(queries.conversations_sql(kind, None)), 0)["first_ms"]
    for page in pages.values():
        if "baseline_ms" in page:
            page["ratio"] = round(page["baseline_ms"] / max(page["best_ms"], 1e-3), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", action="store_true", help="time each screen's first page over a large store")
    ap.add_argument("--rows", type=int, default=10_000_000, help="--pages: flow rows in the store")
    ap.add_argument("--db", type=Path, help="--pages: keep the store here (reused if it exists)")
    ap.add_argument("--repeat", type=int, default=5, help="--pages: timed runs per page after a warm-up")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="--pages: skip the baseline")
    ap.add_argument("--rate", type=int, default=100_000, help="events/s inserted")
    ap.add_argument("--events", type=int, default=10_000_000, help="events in total")
    ap.add_argument("--keys", type=int, default=300, help="keypresses measured")
    ap.add_argument("--view", choices=("flows", "events"), default="flows", help="the flows screen's view")
    ap.add_argument("--duckdb-memory", default="1GB", help="DuckDB memory_limit of the store")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.pages:
        report = first_pages(args)
        for name, page in report["pages"].items():
            base = f", before {page['baseline_ms']:,.0f} ms (x{page['ratio']})" if "baseline_ms" in page else ""
            print(f"{name:22} best {page['best_ms']:8.1f} ms  median {page['median_ms']:8.1f} ms  "
                  f"first {page['first_ms']:8.1f} ms  rows {page['rows_out']:,}{base}")
        print(f"{report['rows']:,} flow rows; load average {report['machine']['load_average']}")
        if args.json:
            print(json.dumps(report, default=str))
        return

    from flowtui.cli.common import scenario_dir
    from flowtui.demo.synthetic import SyntheticFeed
    from flowtui.tui.app import make_app
    from flowtui.tui.control import PolicyControl
    from flowtui.tui.sources import LiveSource, Tap, TappedStore

    base_rss = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        store = TappedStore(Path(tmp) / "bench.duckdb", tap=Tap(), snapshot_interval=5.0,
                            memory_limit=args.duckdb_memory, threads=2)
        feed = SyntheticFeed(store)
        producer = Producer(feed, args.rate, args.events)
        source = LiveSource(store, collector_state=lambda: "bench")
        control = PolicyControl(files=[str(scenario_dir())], read_only=True)
        app = make_app(source, control, queries_dir=Path(tmp))
        marks = list(range(1_000_000, args.events + 1, 1_000_000)) or [args.events]
        try:
            result = asyncio.run(drive(app, producer, args.keys, marks, args.view))
        finally:
            producer.stop.set()
            store.close(snapshot=False)
    result["rss_before_mb"] = round(base_rss, 1)
    result["rate_asked"] = args.rate
    result["view"] = args.view
    if args.json:
        print(json.dumps(result, indent=2))
        return
    r = result
    print(f"events inserted        {r['events']:,} in {r['seconds']} s ({r['insert_rate']:,}/s asked {args.rate:,}/s; "
          f"producer at most {r['producer_max_behind_s']} s behind)")
    print(f"events onto the screen {r['screen_rows_per_s']:,}/s ({r['view']} view); held {r['rows_held']:,} rows "
          f"({r['rows_held_mb']} MiB)")
    lat = r["repaint_ms"]
    print(f"keypress -> repaint    p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms ({r['keypresses']} presses)")
    print(f"memory                 RSS {r['rss_before_mb']} MiB before")
    for m in r["memory"]:
        print(f"  after {m['events']:>12,} events: RSS {m['rss_mb']:8.1f} MiB (DuckDB store "
              f"{m['duckdb_mb']:7.1f} MiB), {m['gc_objects']:,} Python objects, "
              f"{m['rows_held']:,} rows on the dashboard")


if __name__ == "__main__":
    main()
