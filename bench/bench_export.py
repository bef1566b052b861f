"""Named queries on a Parquet export against the same queries on its store: `--db export/` as fast.

    python bench/bench_export.py [--rows 10000000] [--db PATH] [--repeat 3] [--json]

The store is `bench_queries.py`'s (same generator and writer, rollups kept by the writer; `--db`
keeps it and reuses it). It is exported with `flowtui export --format parquet` (the export's time
and size are reported), then every file of `queries/` runs with its defaults on both, opened as
`flowtui query` opens them (read-only store; the export attached as views over its Parquet files,
rollups included): once to warm up, then `--repeat` times, best and median. The store's time is
the baseline measured in the same run; `ratio` is export / store. The JSON last line:
`{"rows", "machine", "export": {"seconds", "mib"}, "queries": {NAME: {"store_ms", "export_ms",
"ratio", "same_answer"}}}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_queries  # noqa: E402

from flowtui.interop.parquet import export_parquet  # noqa: E402
from flowtui.query.library import REPO_QUERIES, discover  # noqa: E402
from flowtui.query.run import open_source, run_query  # noqa: E402


def _best(con: Any, query: Any, repeat: int) -> tuple[float, float, list[Any]]:
    times, rows = [], []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        rows = run_query(con, query).to_pylist()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) * 1e3, statistics.median(times[1:]) * 1e3, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--db", type=Path, help="keep the generated store here (reused if it exists)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "store.duckdb"
        if not db.exists():
            gen = argparse.Namespace(rows=args.rows, nodes=20, namespaces=50, pods=5000, policies=1000, seed=1)
            bench_queries.build_store(db, gen)
        out = Path(tmp) / "export"
        t0 = time.perf_counter()
        with open_source(db) as store:
            rows = int(store.con.execute("SELECT count(*) FROM flows").fetchone()[0])  # type: ignore[index]
            export_parquet(store.con, out)
        export_s = time.perf_counter() - t0
        mib = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20
        report: dict[str, Any] = {"rows": rows, "machine": bench_queries.machine(),
                                  "export": {"seconds": round(export_s, 1), "mib": round(mib, 1)}, "queries": {}}
        print(f"{rows:,} flow rows; exported in {export_s:.1f} s, {mib:.1f} MiB of Parquet")
        with open_source(db) as store, open_source(out) as export:
            for name, query in discover([REPO_QUERIES]).items():
                s_best, s_median, want = _best(store.con, query, args.repeat)
                e_best, e_median, got = _best(export.con, query, args.repeat)
                report["queries"][name] = {"store_ms": round(s_best, 1), "store_median_ms": round(s_median, 1),
                                           "export_ms": round(e_best, 1), "export_median_ms": round(e_median, 1),
                                           "ratio": round(e_best / max(s_best, 1e-3), 2), "same_answer": got == want}
                print(f"{name:28} store {s_best:8.1f} ms  export {e_best:8.1f} ms  x{e_best / max(s_best, 1e-3):.2f}"
                      f"{'' if got == want else '  DIFFERENT ANSWER'}")
    report["machine"]["load_average_after"] = bench_queries.machine()["load_average"]
    print(f"load average {report['machine']['load_average']}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
