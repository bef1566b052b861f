"""Read recorded flows from the DuckDB flow store (`flowtui collect --db`) as a flow frame.

The store's `flows` table (`flowtui.store.schema.FLOWS`) holds one row per (time bucket,
reporting node, deciding rule, action, 5-tuple), with partial aggregates. What-if needs each
flow record once, so final-verdict rows (Allow, Deny; Pass and Log rows are intermediate steps,
and conntrack rows only carry counters) are grouped by time bucket and 5-tuple, which merges the
source and destination reporters: the recorded verdict is `deny` if either denied it. Each such
record is one frame row with `count` 1 (as Calico's flow logs count flows per interval). The
table records no ICMP type or code, so those are null.

The table is read by column name, defensively: the schema is owned by `flowtui.store` and may
grow; only `src_ip`, `dst_ip` and `proto` are required. The live database may be held by a
running collector; then its snapshot is read instead (as `flowtui.store.duckdb_store.open_reader`
does).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl

from flowtui.whatif.frames import FlowSourceError, normalize, utcnow


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    if path.is_dir():  # a flow-store export (`flowtui export --format parquet`, `sample-logs/`)
        from flowtui.query.run import SourceError, open_source

        try:
            return open_source(path).con
        except SourceError as exc:
            raise FlowSourceError(str(exc)) from exc
    open_reader: Callable[[Path], tuple[duckdb.DuckDBPyConnection, Path]] | None
    try:
        from flowtui.store.duckdb_store import open_reader
    except ImportError:  # the store package is optional for reading: fall back to a plain read-only open
        open_reader = None
    if open_reader is not None:
        try:
            con, _used = open_reader(path)
            return con
        except FileNotFoundError as exc:
            raise FlowSourceError(str(exc)) from exc
        except duckdb.Error as exc:
            raise FlowSourceError(f"{path}: {exc}") from exc
    if not path.exists():
        raise FlowSourceError(f"{path}: no such file")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise FlowSourceError(f"{path}: {exc}") from exc


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main'", [table]
    ).fetchall()
    return {r[0] for r in rows}


_WITH_ENDPOINTS = """(SELECT f.*, se.type AS src_type, se.namespace AS src_namespace, se.name AS src_name,
       se.labels AS src_labels, de.type AS dst_type, de.namespace AS dst_namespace, de.name AS dst_name,
       de.labels AS dst_labels
FROM flows f LEFT JOIN endpoints se ON se.id = f.src_ep LEFT JOIN endpoints de ON de.id = f.dst_ep) flows"""


def flows_query(cols: set[str], since: timedelta | None, endpoints: bool = False) -> tuple[str, list[object]]:
    """The SQL that reads `flows` into frame rows, using only the columns that exist; with
    `endpoints`, also the recorded endpoints (`src_namespace`, `src_name`, `src_labels`, ...)."""
    if not {"src_ip", "dst_ip", "proto"} <= cols:
        missing = ", ".join(sorted({"src_ip", "dst_ip", "proto"} - cols))
        raise FlowSourceError(f"the flows table has no {missing} column: not a flowtui flow store?")

    def pick(*names: str) -> str | None:
        return next((n for n in names if n in cols), None)

    sport, dport = pick("sport", "src_port"), pick("dport", "dst_port")
    start, end = pick("start_time", "time"), pick("end_time", "start_time", "time")
    keys = [c for c in (start, "src_ip", "dst_ip", "proto", sport, dport) if c]
    select = [
        "src_ip", "dst_ip", "proto",
        f"{sport} AS src_port" if sport else "NULL::INTEGER AS src_port",
        f"{dport} AS dst_port" if dport else "NULL::INTEGER AS dst_port",
        "NULL::SMALLINT AS icmp_type", "NULL::SMALLINT AS icmp_code",
        "1::BIGINT AS count",
    ]
    if start:
        select.append(f"{start} AS time")
    conditions: list[str] = []
    if "action" in cols:
        select.append("CASE WHEN bool_or(action = 'Deny') THEN 'deny' ELSE 'allow' END AS verdict")
        if "policy" in cols:
            select.append("arg_max(policy, CASE WHEN action = 'Deny' THEN 1 ELSE 0 END) AS policy")
        conditions.append("action IN ('Allow', 'Deny')")
    if "count_source" in cols:
        conditions.append("count_source IS DISTINCT FROM 'conntrack'")
    for counter in ("packets", "bytes"):
        if counter in cols:
            select.append(f"sum({counter})::BIGINT AS {counter}")
    endpoints = endpoints and {"src_ep", "dst_ep"} <= cols
    if endpoints:
        select += [f"any_value({side}_{col}) AS {side}_{col}" for side in ("src", "dst")
                   for col in ("type", "namespace", "name", "labels")]
    params: list[object] = []
    if since is not None and end:
        conditions.append(f"{end} >= ?")
        params.append(utcnow() - since)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    source = _WITH_ENDPOINTS if endpoints else "flows"
    # Ordered: a hash aggregate's order varies run to run, and a report's examples are its groups' first rows.
    group = ", ".join(keys)
    return f"SELECT {', '.join(select)} FROM {source} {where} GROUP BY {group} ORDER BY {group}", params


def read_store(path: str | Path, since: timedelta | None = None) -> pl.DataFrame:
    """The store's recorded flows (within `since` of now) as a flow frame."""
    path = Path(path)
    con = _connect(path)
    try:
        cols = _columns(con, "flows")
        if not cols:
            raise FlowSourceError(f"{path}: no flows table (is this a flowtui flow store?)")
        endpoint_cols = _columns(con, "endpoints")
        sql, params = flows_query(cols, since, endpoints={"id", "type", "namespace", "name", "labels"} <= endpoint_cols)
        try:
            frame = con.sql(sql, params=params).pl()
        except duckdb.Error as exc:
            raise FlowSourceError(f"{path}: cannot read flows: {exc}") from exc
    finally:
        con.close()
    return normalize(frame)
