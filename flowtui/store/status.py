"""What is in a flow store, and what was lost: the data behind `flowtui status` (read-only)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import duckdb

from enforcer.procs import pid_running
from flowtui.store.duckdb_store import open_reader, snapshot_path, utcnow
from flowtui.store.schema import TABLES

CAUSE_ORDER = (
    "kernel_ratelimit",
    "rcvbuf_overrun",
    "writer_backlog",
    "malformed",
    "store_error",
    "dataset_error",
    "collector_down",
)


def run_state(ended: object, outcome: str | None, host: str | None, pid: int | None, holds_store: bool) -> str:
    """running, stopped or crashed. A run without an end is running only if a process holds the
    store for writing (readers got the snapshot) and, on this host, its pid is alive: a killed
    collector's row says nothing about its death until the next run closes it."""
    if outcome == "crashed":
        return "crashed"
    if ended is not None:
        return "stopped"
    if not holds_store:
        return "crashed"
    if host == socket.gethostname() and pid is not None and not pid_running(int(pid)):
        return "crashed"
    return "running"


def imported_stored(config: str | None, outcome: str | None, received: int) -> int | None:
    """What an import run stored, for a store imported before imports counted it: an import ends its
    run (outcome `stopped`) only after every record it received landed, so all of them did. None:
    unknown (not an import, or one that did not finish)."""
    try:
        doc = json.loads(config or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or "import" not in doc or outcome != "stopped":
        return None
    return received


def _rollups(con: Any, have: set[str]) -> dict[str, Any] | None:
    """How far the rollups reach and their rows (row counts are the tables' metadata: no scan);
    None for a store older than them (read-only: not upgraded)."""
    if not {"rollup_state", "pair_hours", "rule_hours", "talkers"} <= have:
        return None
    cols = {r[0] for r in con.execute("DESCRIBE rollup_state").fetchall()}
    days = "max(days_until)" if "days_until" in cols else "NULL"  # a store from before day compaction
    complete = "max(complete_from)" if "complete_from" in cols else "NULL"
    rolled, compacted, days_until, complete_from = con.execute(
        f"SELECT max(rolled_until), max(compacted_until), {days}, {complete} FROM rollup_state").fetchone()
    rows = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("pair_hours", "rule_hours",
                                                                                      "talkers")}
    return {"rolled_until": rolled, "compacted_until": compacted, "days_until": days_until,
            "complete_from": complete_from, "rows": rows}


def read_status(path: Path, last_runs: int = 3) -> dict[str, Any]:
    con, opened = open_reader(path)
    try:
        names = {t.name for t in TABLES}
        have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if not names <= have:
            raise FileNotFoundError(f"{opened} is not a flowtui flow store")
        return describe(con, str(opened), opened == snapshot_path(path), last_runs, opened == snapshot_path(path))
    finally:
        con.close()


def read_cluster_status(root: Path, last_runs: int = 1, alive_seconds: float = 10.0) -> dict[str, Any]:
    """The status of a cluster flows dataset: every node's runs (the last `last_runs` of each), its
    sources' loss by cause. A run without an end is running while its heartbeat is recent."""
    import duckdb

    from flowtui.interop.cluster import attach_cluster

    con = duckdb.connect()
    try:
        nodes = attach_cluster(con, root)
        return describe(con, str(root), False, last_runs * max(1, len(nodes)), None, alive_seconds)
    finally:
        con.close()


def read_export_status(root: Path, last_runs: int = 3) -> dict[str, Any]:
    """The status of a Parquet export (`flowtui export --format parquet`, sample-logs/): its runs as
    recorded. No lock tells whether a run still goes on: running while its heartbeat is recent."""
    from flowtui.interop.parquet import attach

    con = duckdb.connect()
    try:
        attach(con, root)
        return describe(con, str(root), False, last_runs, None)
    finally:
        con.close()


def describe(con: duckdb.DuckDBPyConnection, path: str, snapshot: bool, last_runs: int, writer_holds_it: bool | None,
             alive_seconds: float = 10.0) -> dict[str, Any]:
    """What `flowtui status` prints, from a connection with the store's tables and views.
    `writer_holds_it` None: no lock tells (a dataset): a run is alive while its heartbeat is recent."""
    run_columns = {
        r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'runs'").fetchall()
    }
    # A store an older collector wrote (opened read-only, so not upgraded) has neither column.
    extra = ", ".join(c if c in run_columns else f"NULL AS {c}" for c in ("heartbeat", "outcome"))
    count = {
        t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
        for t in ("events", "flows", "connections", "rules", "endpoints")
    }
    count["policies"] = int(con.execute("SELECT count(*) FROM policies").fetchone()[0])  # type: ignore[index]
    as_of = con.execute(
        "SELECT max(t) FROM (SELECT max(time) AS t FROM stats UNION ALL SELECT max(started) FROM runs)"
    ).fetchone()[0]  # type: ignore[index]
    runs = []
    latest = con.execute("SELECT max(run_id) FROM runs").fetchone()[0]  # type: ignore[index]
    for run_id, started, ended, host, pid, config, heartbeat, outcome in con.execute(
        f"SELECT run_id, started, ended, host, pid, config, {extra} FROM runs ORDER BY run_id DESC LIMIT ?",
        [last_runs],
    ).fetchall():
        if writer_holds_it is None:
            recent = heartbeat is not None and (utcnow() - heartbeat).total_seconds() < alive_seconds
            state = run_state(ended, outcome, None, None, recent)
        else:
            state = run_state(ended, outcome, host, pid, writer_holds_it and run_id == latest)
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
            mine = [int(v) for sid, name, v in stats if sid == source_id and name == "stored"]
            sources.append(
                {
                    "source_id": source_id,
                    "netns": netns,
                    "node": node,
                    "received": received,
                    # per reader when the writer counted it so (imports); the collector counts it per run
                    "stored": sum(mine) if mine else imported_stored(config, outcome, received),
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
        offered = received + by_cause["kernel_ratelimit"] + by_cause["rcvbuf_overrun"] + by_cause["collector_down"]
        runs.append(
            {
                "run_id": run_id,
                "started": started,
                "ended": ended,
                "host": host,
                "pid": pid,
                "state": state,
                "heartbeat": heartbeat,
                "sources": sources,
                "received": received,
                "stored": counters["stored"] if "stored" in counters else (
                    sum(s["stored"] or 0 for s in sources) if all(s["stored"] is not None for s in sources) else 0),
                "lost": by_cause,
                "lost_total": lost_total,
                "loss_ratio": lost_total / offered if offered else 0.0,
                "counters": counters,
            }
        )
    return {
        "path": path,
        "snapshot": snapshot,
        "as_of": as_of,
        "tables": count,
        "rollups": _rollups(con, {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views()").fetchall()}),
        "runs": runs,
    }

