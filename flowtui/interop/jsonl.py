"""Flow records as JSON Lines: one object per flow row, with the node, policy and endpoints joined in.

The columns are those of the store's `flows_v` view (`flowtui.store.schema`): the flow row
(`start_time`, `end_time`, `action`, the 5-tuple, counts, ...) plus `node`, `reporter`, the
deciding `policy` as a Calico flow-log hit and its fields, and both endpoints' type, namespace,
name and labels. Times are RFC 3339 in UTC (`2026-03-14T12:00:00.000000Z`); labels are arrays.
Rows are written in time order; `read_jsonl` reads a file back into the same columns and types.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import duckdb

from flowtui.interop.window import EVERYTHING, Window

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def record_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(name, DuckDB type) of a flow record: the `flows_v` view's columns."""
    return [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM flows_v").fetchall()]


def records_sql(con: duckdb.DuckDBPyConnection, window: Window = EVERYTHING) -> str:
    cols = []
    for name, kind in record_columns(con):
        if kind.startswith("TIMESTAMP"):
            cols.append(f"strftime(\"{name}\", '{_TIME_FORMAT}') AS \"{name}\"")
        else:
            cols.append(f'"{name}"')
    return (f"SELECT {', '.join(cols)} FROM flows_v WHERE {window.sql('start_time')} "
            "ORDER BY start_time, node, src_ip, dst_ip, sport, dport, rule_id")


def write_jsonl(con: duckdb.DuckDBPyConnection, out: IO[str], window: Window = EVERYTHING) -> int:
    """Write the flow records in `window` as JSON Lines (DuckDB encodes each row); returns the count."""
    cursor = con.execute(f"SELECT to_json(r)::VARCHAR FROM ({records_sql(con, window)}) r")
    n = 0
    while batch := cursor.fetchmany(8192):
        out.writelines(line + "\n" for (line,) in batch)
        n += len(batch)
    return n


def read_jsonl(con: duckdb.DuckDBPyConnection, path: Path | str) -> duckdb.DuckDBPyRelation:
    """A relation over a JSON Lines export with the record columns and types of `con`'s store."""
    types = record_columns(con)
    columns = ", ".join(f"'{name}': '{'VARCHAR' if kind.startswith('TIMESTAMP') else kind}'" for name, kind in types)
    select = ", ".join(
        f"strptime(\"{name}\", '{_TIME_FORMAT}') AS \"{name}\"" if kind.startswith("TIMESTAMP") else f'"{name}"'
        for name, kind in types
    )
    quoted = str(path).replace("'", "''")
    return con.sql(f"SELECT {select} FROM read_json('{quoted}', format = 'newline_delimited', "
                   f"columns = {{{columns}}})")
