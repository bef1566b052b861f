"""What is in a flow store, and what was lost: the data behind `flowtui status` (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowtui.store.duckdb_store import open_reader, snapshot_path
from flowtui.store.schema import TABLES

CAUSE_ORDER = ("kernel_ratelimit", "rcvbuf_overrun", "writer_backlog", "malformed", "store_error")


def read_status(path: Path, last_runs: int = 3) -> dict[str, Any]:
    con, opened = open_reader(path)
    try:
        names = {t.name for t in TABLES}
        have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if not names <= have:
            raise FileNotFoundError(f"{opened} is not a flowtui flow store")
        count = {
            t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("events", "flows", "connections", "rules", "endpoints")
        }
        count["policies"] = int(con.execute("SELECT count(*) FROM policies").fetchone()[0])  # type: ignore[index]
        as_of = con.execute(
            "SELECT max(t) FROM (SELECT max(time) AS t FROM stats UNION ALL SELECT max(started) FROM runs)"
        ).fetchone()[0]  # type: ignore[index]
        runs = []
        for run_id, started, ended, host, pid in con.execute(
            "SELECT run_id, started, ended, host, pid FROM runs ORDER BY run_id DESC LIMIT ?", [last_runs]
        ).fetchall():
            loss = con.execute("SELECT source_id, cause, events FROM loss_latest WHERE run_id = ?", [run_id]).fetchall()
            stats = con.execute("SELECT source_id, name, value FROM stats_latest WHERE run_id = ?", [run_id]).fetchall()
            sources = []
            for source_id, netns, node in con.execute(
                "SELECT source_id, netns, node FROM sources WHERE run_id = ? ORDER BY source_id", [run_id]
            ).fetchall():
                lost = {c: 0 for c in CAUSE_ORDER[:3]}
                for sid, cause, n in loss:
                    if sid == source_id:
                        lost[cause] = int(n)
                received = sum(int(v) for sid, name, v in stats if sid == source_id and name == "received")
                sources.append(
                    {
                        "source_id": source_id,
                        "netns": netns,
                        "node": node,
                        "received": received,
                        "lost": lost,
                        "lost_total": sum(lost.values()),
                    }
                )
            by_cause = {c: 0 for c in CAUSE_ORDER}
            for _sid, cause, n in loss:
                by_cause[cause] = by_cause.get(cause, 0) + int(n)
            counters: dict[str, int] = {}
            for _sid, name, v in stats:
                counters[name] = counters.get(name, 0) + int(v)
            received = counters.get("received", 0)
            lost_total = sum(by_cause.values())
            offered = received + by_cause["kernel_ratelimit"] + by_cause["rcvbuf_overrun"]
            runs.append(
                {
                    "run_id": run_id,
                    "started": started,
                    "ended": ended,
                    "host": host,
                    "pid": pid,
                    "sources": sources,
                    "received": received,
                    "stored": counters.get("stored", 0),
                    "lost": by_cause,
                    "lost_total": lost_total,
                    "loss_ratio": lost_total / offered if offered else 0.0,
                    "counters": counters,
                }
            )
        return {
            "path": str(opened),
            "snapshot": opened == snapshot_path(path),
            "as_of": as_of,
            "tables": count,
            "runs": runs,
        }
    finally:
        con.close()
