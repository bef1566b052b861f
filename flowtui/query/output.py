"""Query results (Arrow tables) as an aligned text table, CSV, JSON or Parquet.

Times are UTC without a zone in the store; JSON and CSV write them as RFC 3339 with `Z`, the
table as `YYYY-MM-DD HH:MM:SS.mmm`. Lists are JSON arrays in JSON and CSV, comma-separated in the
table. Integers that DuckDB sums into 128-bit values arrive as decimals and are written as integers.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("table", "csv", "json", "parquet")


def jsonable(value: Any) -> Any:
    """A result value as JSON: times RFC 3339 (UTC, `Z`), decimals as numbers, lists and dicts recursively."""
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def rows(table: pa.Table) -> list[dict[str, Any]]:
    return [{k: jsonable(v) for k, v in row.items()} for row in table.to_pylist()]


def write_json(table: pa.Table, out: IO[str]) -> None:
    json.dump(rows(table), out, indent=2)
    out.write("\n")


def write_csv(table: pa.Table, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in rows(table):
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, list | dict) else v for v in row.values()])


def write_parquet(table: pa.Table, out: str | IO[bytes]) -> None:
    pq.write_table(table, out, compression="zstd")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, Decimal):
        return str(int(value)) if value == value.to_integral_value() else str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    return str(value)


def render_table(table: pa.Table, max_width: int | None = 48) -> str:
    """Columns aligned (numbers to the right), headers upper-case, long cells cut with `…`."""
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]
    body = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    if max_width:
        body = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in body]
    widths = [max([len(n)] + [len(r[i]) for r in body]) for i, n in enumerate(names)]
    lines = [_join((n.upper() for n in names), widths, [False] * len(names))]
    lines += [_join(r, widths, numeric) for r in body]
    return "\n".join(lines) + "\n"


def _join(cells: Iterable[str], widths: list[int], right: list[bool]) -> str:
    parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
    return "  ".join(parts).rstrip()
