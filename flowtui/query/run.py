"""Run SQL against a flow store, the way the `duckdb` client would run the query files.

`open_source(path)` gives a read-only DuckDB connection with the store's tables and views:

- a DuckDB file: through `flowtui.store.duckdb_store.open_reader`, i.e. the file itself, or its
  snapshot while a collector holds it;
- a directory of Parquet files (a `flowtui export --format parquet` directory, or one file per
  table like `sample-logs/`): attached as views (`flowtui.interop.parquet.attach`) in an
  in-memory database. A table file or glob inside such a directory (`sample-logs/flows.parquet`,
  `export/flows/**/*.parquet`) opens the whole export.

`run_sql(con, sql, params)` sets each parameter as a DuckDB variable (`SET VARIABLE name =
'value'`: always a string; the SQL casts) and executes the text as one script: macros first, the
last statement's result returned as an Arrow table. That is what `duckdb DB -c "SET VARIABLE
..." -c ".read FILE"` does, so both print the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from flowtui.interop.cluster import ClusterError, attach_cluster, is_cluster_dir
from flowtui.interop.parquet import attach, export_root, is_parquet_dir
from flowtui.query.library import QueryFile
from flowtui.store import schema
from flowtui.store.duckdb_store import open_reader, snapshot_path

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SourceError(RuntimeError):
    """The path is not a flow store (or cannot be opened)."""


class ParamError(ValueError):
    """A parameter that the query does not have, or a malformed one."""


@dataclass
class Source:
    con: duckdb.DuckDBPyConnection
    path: Path  # what was opened: the database, its snapshot, or the Parquet directory
    kind: str  # duckdb | snapshot | parquet | cluster

    def __post_init__(self) -> None:
        # The rollup views bound their raw-flow ranges with scalar subqueries over `query_window`, which
        # DuckDB prunes row groups by; its common-subplan step would materialise the one subquery shared
        # by both ranges, and every range then scans its whole table (1.7 s against 77 ms at 10M flows).
        self.con.execute("SET disabled_optimizers = 'common_subplan'")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_source(path: Path | str) -> Source:
    """A read-only connection with the flow store's tables and views (see the module doc)."""
    path = Path(path)
    root = export_root(path)
    if root is not None:  # a table file or glob of an export means the export
        path = root
    if is_cluster_dir(path):  # every node's flows (`--cluster DIR`)
        con = duckdb.connect()
        try:
            attach_cluster(con, path)
        except (ClusterError, duckdb.Error) as exc:
            con.close()
            raise SourceError(f"{path}: cannot read the cluster flows dataset: {exc}") from exc
        return Source(con, path, "cluster")
    if path.is_dir():
        if not is_parquet_dir(path):
            raise SourceError(f"{path}: no flow-store Parquet files here (flows.parquet or flows/**/*.parquet)")
        con = duckdb.connect()
        try:
            attach(con, path)
        except duckdb.Error as exc:
            con.close()
            raise SourceError(f"{path}: cannot read the Parquet files: {exc}") from exc
        return Source(con, path, "parquet")
    _not_a_flow_file(path)
    try:
        con, opened = open_reader(path)
    except FileNotFoundError as exc:
        raise SourceError(f"no flow store: {exc}") from exc
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "flows" not in tables or "rules" not in tables:
        con.close()
        raise SourceError(f"{opened} is not a flowtui flow store (no flows/rules tables)")
    schema.ensure_rollups(con)  # a store an older collector wrote, opened read-only
    return Source(con, opened, "snapshot" if opened == snapshot_path(path) else "duckdb")


def _not_a_flow_file(path: Path) -> None:
    """A Hubble, Calico or capture file given where a store belongs: say how to make it one."""
    from flowtui.interop.imports import NAMES, sniff_path

    try:
        kind = sniff_path(path) if path.is_file() else None
    except OSError:
        return
    if kind in ("hubble", "calico"):
        raise SourceError(f"{path} is {NAMES[kind]}, not a flow store: `flowtui import {kind} {path} --db STORE` "
                          "makes it one")
    if kind == "pcap":
        raise SourceError(f"{path} is a packet capture, not a flow store: `flowtui import pcap {path} -w "
                          "flows.parquet` gives its flows (for `flowtui whatif --flows`)")


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def parse_params(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["since=1h", "limit=5"]` -> {"since": "1h", "limit": "5"}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _IDENT.match(name):
            raise ParamError(f"{item!r}: parameters are NAME=VALUE")
        out[name] = value
    return out


def check_params(query: QueryFile, params: Mapping[str, str]) -> None:
    unknown = sorted(set(params) - {p.name for p in query.params})
    if unknown:
        have = ", ".join(p.name for p in query.params) or "none"
        raise ParamError(f"{query.name} has no parameter {', '.join(unknown)} (it has: {have})")


def set_variables(con: duckdb.DuckDBPyConnection, params: Mapping[str, str], reset: tuple[str, ...] = ()) -> None:
    """`SET VARIABLE` each parameter (and `RESET VARIABLE` the `reset` names that are not given)."""
    for name in reset:
        if name not in params:
            con.execute(f"RESET VARIABLE {name}")
    for name, value in params.items():
        if not _IDENT.match(name):
            raise ParamError(f"{name!r} is not a parameter name")
        con.execute(f"SET VARIABLE {name} = {sql_literal(value)}")


def statements_for_cli(params: Mapping[str, str]) -> list[str]:
    """The `SET VARIABLE` statements that make the plain `duckdb` client run with `params`."""
    return [f"SET VARIABLE {k} = {sql_literal(v)};" for k, v in params.items()]


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, str] | None = None,
            reset: tuple[str, ...] = ()) -> pa.Table:
    """Execute `sql` as a script after setting `params`; the last statement's rows as Arrow."""
    set_variables(con, params or {}, reset)
    relation = con.sql(sql)  # every statement but the last runs now; the last is returned as a relation
    if relation is None:  # the last statement returns nothing
        return pa.table({})
    table: pa.Table = relation.to_arrow_table()
    return table


def run_query(con: duckdb.DuckDBPyConnection, query: QueryFile, params: Mapping[str, str] | None = None) -> pa.Table:
    """Run a library query; parameters it does not have are an error, the others keep their defaults."""
    params = dict(params or {})
    check_params(query, params)
    return run_sql(con, query.sql, params, reset=tuple(p.name for p in query.params))
