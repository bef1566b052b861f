"""The flow store as Parquet: export hive-partitioned by day and node, attach exports as tables.

**Layout** (`flowtui export --format parquet --out DIR`):

    DIR/flows/day=2026-03-14/node=node-a/data_0.parquet     time-ordered tables, partitioned
    DIR/events/..., DIR/connections/..., DIR/loss/..., DIR/stats/..., DIR/rule_counters/...
    DIR/rules.parquet, DIR/endpoints.parquet,               what the ids join to, whole
    DIR/sources.parquet, DIR/runs.parquet
    DIR/pair_hours.parquet, rule_hours, talkers, rollup_state,
        flow_totals, pair_totals, totals_state, netset_sources,
        implicit_deny_*, profile_allow_*, denylisted_*       rollups (exports of the whole store)
    DIR/views.sql                                           the store's tables and views over them

Every column keeps its name and type from `flowtui.store.schema`; `day` (UTC, of the row's time:
`start_time` for flows, `time` otherwise) and `node` (the reporting reader's node, `_none` for
process-wide counters) exist only as directory names, so any engine reads them back:
`pl.scan_parquet("DIR/flows/**/*.parquet", hive_partitioning=True)`,
`pyarrow.dataset.dataset("DIR/flows", partitioning="hive")`, or DuckDB with `cd DIR; duckdb -c
".read views.sql"`, after which every query in `queries/` runs unchanged.

**Attaching** (`attach`): a directory holding, per table, a partitioned directory (as above) or
one `<table>.parquet` file (as `sample-logs/`) becomes DuckDB views named like the store's tables,
with the store's columns and types; tables that are absent are empty, columns that are absent are
NULL (except `rule_counters.run_packets`/`run_logged`, which older exports lack: they fall back to
`packets`/`logged`, right for rules that existed when the run started). The store's derived views
(`flows_v`, `flow_summary`, ...) are then created from `schema.VIEWS`, the single source of truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from enforcer.safefile import SHARED, atomic_write
from flowtui.interop.window import EVERYTHING, Window
from flowtui.store import schema

TIME_OF = {
    "events": "time",
    "flows": "start_time",
    "connections": "time",
    "loss": "time",
    "stats": "time",
    "rule_counters": "time",
}
FALLBACK = {"run_packets": "packets", "run_logged": "logged"}
NO_NODE = "_none"


class ExportError(RuntimeError):
    """The export cannot be written (the target exists, ...)."""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_source(root: Path, table: str, relative: bool = False) -> str | None:
    """A `read_parquet(...)` expression for one table of a Parquet directory, or None."""
    base = Path() if relative else root
    part = root / table
    if part.is_dir() and any(part.rglob("*.parquet")):
        pattern = str(base / table / "**" / "*.parquet")
        return f"read_parquet({_quote(pattern)}, hive_partitioning = true, union_by_name = true)"
    single = root / f"{table}.parquet"
    if single.is_file():
        return f"read_parquet({_quote(str(base / f'{table}.parquet'))})"
    return None


def view_statement(table: schema.Table, source: str | None, have: set[str] | None = None) -> str:
    """`CREATE OR REPLACE VIEW <table>` with exactly the store's columns and types."""
    cols = []
    for c in table.columns:
        if source is not None and (have is None or c.name in have):
            cols.append(f'"{c.name}"::{c.sql} AS "{c.name}"')
        elif source is not None and have is not None and FALLBACK.get(c.name) in have:
            cols.append(f'"{FALLBACK[c.name]}"::{c.sql} AS "{c.name}"')
        else:
            cols.append(f'NULL::{c.sql} AS "{c.name}"')
    body = ", ".join(cols)
    if source is None:
        return f"CREATE OR REPLACE VIEW {table.name} AS SELECT {body} WHERE false"
    return f"CREATE OR REPLACE VIEW {table.name} AS SELECT {body} FROM {source}"


def derived_views() -> list[str]:
    return [f"CREATE OR REPLACE VIEW {name} AS {query}" for name, (_doc, query) in schema.VIEWS.items()]


def is_parquet_dir(path: Path) -> bool:
    return path.is_dir() and (table_source(path, "flows") is not None or table_source(path, "rules") is not None)


def export_root(path: Path | str) -> Path | None:
    """The flow-store export directory (flows and rules tables) `path` is, or is a table file of
    (`sample-logs/flows.parquet`, `export/flows/day=.../*.parquet`, a glob inside one), or None."""
    text = str(path)
    if "*" in text:  # the directory part before the first wildcard
        text = text[: text.index("*")].rpartition("/")[0] or "."
    candidate = Path(text)
    if candidate.is_dir() and _is_export(candidate):
        return candidate
    tables = {t.name for t in schema.TABLES}
    if candidate.suffix == ".parquet" and candidate.stem in tables and _is_export(candidate.parent):
        return candidate.parent
    for directory in candidate.parents:  # hive partitions: <root>/<table>/day=.../node=.../*.parquet
        if directory.name in tables and _is_export(directory.parent):
            return directory.parent
    return None


def _is_export(path: Path) -> bool:
    """The store's flows and rules side by side: an export, not a loose `flows.parquet` of flow rows."""
    return path.is_dir() and table_source(path, "flows") is not None and table_source(path, "rules") is not None


def attach(con: duckdb.DuckDBPyConnection, root: Path) -> list[str]:
    """Create the store's tables (as views over Parquet) and views in `con`; returns the tables found."""
    return attach_sources(con, {t.name: table_source(root, t.name) for t in schema.TABLES + schema.ROLLUP_TABLES})


def attach_sources(con: duckdb.DuckDBPyConnection, sources: Mapping[str, str | None]) -> list[str]:
    """As `attach`, from each table's reader expression (`read_parquet(...)`, `read_json_auto(...)`;
    None or missing: the table is absent). Returns the tables found."""
    found = []
    for table in schema.TABLES + schema.ROLLUP_TABLES:  # rollups absent (older or windowed exports): empty
        source = sources.get(table.name)
        have: set[str] | None = None
        if source is not None:
            have = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
            found.append(table.name)
        con.execute(view_statement(table, source, have))
    for table in schema.ROLLUP_TABLES:  # an export from before this rollup: computed from its flows
        # (network set members without the table: every source, so denylisted_traffic's raw part sees them)
        if table.name not in found and table is not schema.ROLLUP_STATE and (
                "rollup_state" in found or table is schema.NETSET_SOURCES):
            con.execute(f"CREATE OR REPLACE VIEW {table.name} AS {schema.computed_rollup_sql(table.name)}")
    for statement in derived_views():
        con.execute(statement)
    return found


def views_script(root: Path) -> str:
    """`views.sql` for an export directory: paths relative to it (run DuckDB from inside it)."""
    lines = [
        "-- The flowtui store's tables and views over this Parquet export. From this directory:",
        "--   duckdb -c '.read views.sql' -c \"SET VARIABLE since = '1h'\" -c '.read ../queries/top_denied.sql'",
    ]
    for table in schema.TABLES + schema.ROLLUP_TABLES:
        source = table_source(root, table.name, relative=True)
        if source is None and table is schema.NETSET_SOURCES:  # an older export: every source (see attach)
            lines.append(f"CREATE OR REPLACE VIEW {table.name} AS {schema.computed_rollup_sql(table.name)};")
            continue
        lines.append(view_statement(table, source) + ";")
    lines += [s + ";" for s in derived_views()]
    return "\n".join(lines) + "\n"


@dataclass
class ParquetExport:
    out: Path
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0


def export_parquet(
    con: duckdb.DuckDBPyConnection, out: Path, window: Window = EVERYTHING, overwrite: bool = False
) -> ParquetExport:
    """Write every table under `out` (time-ordered tables within `window`, the others whole)."""
    out.mkdir(parents=True, exist_ok=True)
    # The rollups cover whole hours of the whole store: exported only with everything (a windowed
    # export reads its raw flows, which give the same answers).
    tables = schema.TABLES + (schema.ROLLUP_TABLES if window == EVERYTHING else ())
    targets = [out / (t.name if t.name in TIME_OF else f"{t.name}.parquet") for t in tables]
    existing = [p for p in [*targets, out / "views.sql"] if p.exists() and (p.is_file() or any(p.iterdir()))]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing[:4])
        raise ExportError(f"{out} already holds an export ({names}...): use another directory or --overwrite")
    result = ParquetExport(out)
    for table, target in zip(tables, targets, strict=True):
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        have = {str(r[0]) for r in con.execute(f"DESCRIBE {table.name}").fetchall()}
        # a store older than a column (read-only: not upgraded) exports it as NULL, with its type
        cols = ", ".join(f'x."{c.name}"' if c.name in have else f'NULL::{c.sql} AS "{c.name}"' for c in table.columns)
        if table.name in TIME_OF:
            where = window.sql(f"x.{TIME_OF[table.name]}")
            query = (
                f"SELECT {cols}, strftime(x.{TIME_OF[table.name]}, '%Y-%m-%d') AS day, "
                f"coalesce(s.node, '{NO_NODE}') AS node FROM {table.name} x "
                f"LEFT JOIN sources s ON s.source_id = x.source_id WHERE {where}"
            )
            n = _count(con, query)
            if n:
                con.execute(
                    f"COPY ({query}) TO {_quote(str(target))} "
                    "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day, node))"
                )
        else:
            query = f"SELECT {cols} FROM {table.name} x"
            n = _count(con, query)
            con.execute(f"COPY ({query}) TO {_quote(str(target))} (FORMAT parquet, COMPRESSION zstd)")
        result.rows[table.name] = n
    atomic_write(out / "views.sql", views_script(out), SHARED)
    result.files = sum(1 for _ in out.rglob("*.parquet"))
    return result


def _count(con: duckdb.DuckDBPyConnection, query: str) -> int:
    row = con.execute(f"SELECT count(*) FROM ({query})").fetchone()
    return int(row[0]) if row else 0
