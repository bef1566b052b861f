"""`flowtui query`: the named SQL files of `queries/` (or ad-hoc SQL) over a flow store."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from flowtui.cli.common import cluster_option

DEFAULT_DB = "flowtui.duckdb"  # as `flowtui collect --db`


@click.command("query")
@click.argument("name", required=False)
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Set a query parameter (a DuckDB variable). Repeatable.")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(),
              help="Flow store: a DuckDB file (its snapshot while a collector writes it), a Parquet export "
                   "directory (`flowtui export --format parquet`), or a directory of <table>.parquet files.")
@cluster_option
@click.option("--sql", "sql", metavar="SQL", help="Run this SQL instead of a named query (same tables and views).")
@click.option("-o", "--output", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Result format.")
@click.option("--out", "out", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
              help="Write the result to FILE instead of stdout (required for -o parquet on a terminal).")
@click.option("--describe", is_flag=True, help="Print what the query answers, its parameters and columns; run nothing.")
@click.option("--print-sql", is_flag=True,
              help="Print the SQL that would run, with the SET VARIABLE lines for the plain `duckdb` client.")
@click.option("--wide", is_flag=True, help="Do not cut long cells in -o table.")
def query_cmd(name: str | None, params: tuple[str, ...], db: str, cluster: str | None, sql: str | None, output: str,
              out: str | None, describe: bool, print_sql: bool, wide: bool) -> None:
    """Answer a question about the recorded flows with a named query from the library.

    NAME is a file of `queries/` (without .sql), or a path to your own .sql file with the same
    kind of header; without NAME (and without --sql) the library is listed. Parameters are
    DuckDB variables, so the same files run in the plain `duckdb` client.

    \b
    Examples:
      flowtui query                                   # list the queries
      flowtui query top_denied -p since=1h -p rows=10
      flowtui query unused_rules -p since=90d -o json
      flowtui query conversations --db export/ -o csv --out conversations.csv
      flowtui query top_denied --cluster /var/lib/flowtui/flows/lab   # every node's flows
      flowtui query --sql "SELECT action, count(*) FROM flows GROUP BY ALL"
      duckdb -readonly flowtui.duckdb -c "SET VARIABLE since = '1h'" -c ".read queries/top_denied.sql"
    """
    from flowtui.cli.common import EXIT_INVALID, echo_json, fail, store_path
    from flowtui.query.library import QueryFileError, UnknownQuery, discover, load
    from flowtui.query.run import ParamError, check_params, parse_params, statements_for_cli

    if name and sql:
        fail("give a query NAME or --sql, not both", EXIT_INVALID)
    try:
        values = parse_params(params)
    except ParamError as err:
        fail(str(err), EXIT_INVALID)
    if not name and not sql:
        try:
            library = discover()
        except QueryFileError as err:
            fail(str(err))
        if output == "json":
            echo_json([{"name": q.name, "summary": q.summary, "path": str(q.path),
                        "params": {p.name: {"doc": p.doc, "default": p.default} for p in q.params},
                        "columns": list(q.columns)} for q in library.values()])
            return
        width = max((len(n) for n in library), default=0)
        for q in library.values():
            click.echo(f"{q.name.ljust(width)}  {q.summary}")
        click.echo("\n`flowtui query NAME --describe` shows a query's parameters and columns.", err=True)
        return
    text = sql or ""
    if name:
        try:
            query = load(name)
            check_params(query, values)
        except (UnknownQuery, QueryFileError, ParamError) as err:
            fail(str(err), EXIT_INVALID)
        text = query.sql
        if describe:
            click.echo(query.header)
            click.echo(f"\nFile: {query.path}")
            return
    elif describe:
        fail("--describe needs a query NAME", EXIT_INVALID)
    if print_sql:
        click.echo("\n".join([*statements_for_cli(values), text.rstrip()]))
        return
    if output == "parquet" and not out and sys.stdout.isatty():
        fail("-o parquet writes binary: give --out FILE (or redirect stdout)", EXIT_INVALID)
    _run(store_path(db, cluster, DEFAULT_DB) or db, text, values, output, out, wide)


ROLLUP_VIEWS = ("flow_pairs", "implicit_denies", "profile_allows", "denylisted_flows")


def incomplete_rollups(con: Any, sql: str) -> Any:
    """When `sql` reads an hour rollup and its window starts before `rollup_state.complete_from`:
    that time (the rollups may miss flows before it); else None."""
    if not any(v in sql for v in ROLLUP_VIEWS):
        return None
    row = con.execute("SELECT (SELECT max(complete_from) FROM rollup_state), since_ FROM query_window").fetchone()
    return row[0] if row and row[0] is not None and row[1] < row[0] else None


def _run(db: str, text: str, values: dict[str, str], output: str, out: str | None, wide: bool) -> None:
    import duckdb

    from flowtui.cli.common import fail, open_store
    from flowtui.query import output as fmt
    from flowtui.query.run import run_sql

    with open_store(db, "give --db PATH: a store file, its snapshot, or a Parquet export", "reading") as source:
        if source.con.execute("SELECT count(*) FROM flows").fetchall() == [(0,)]:
            fail(f"{db} holds no flows (nothing collected or imported into it yet)")
        try:
            table = run_sql(source.con, text, values)
            gap = incomplete_rollups(source.con, text)
        except duckdb.Error as err:
            fail(textwrap.shorten(str(err), 2000, placeholder=" ..."))
        if gap is not None:
            click.echo(f"note: the rollups this query reads may miss flows before {gap:%Y-%m-%d %H:%M} UTC (their "
                       "raw flows were gone when the rollup was built, or a rule or network set came after them: "
                       "rollup_state.complete_from); answers over earlier hours may undercount", err=True)
    if output == "parquet":
        if out and out != "-":
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            fmt.write_parquet(table, out)
        else:
            fmt.write_parquet(table, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        click.echo(f"{table.num_rows:,} rows" + (f" written to {out}" if out else ""), err=True)
        return
    if output == "table":
        rendered = fmt.render_table(table, None if wide else 48)
    else:
        import io

        buffer = io.StringIO()
        (fmt.write_csv if output == "csv" else fmt.write_json)(table, buffer)
        rendered = buffer.getvalue()
    if out and out != "-":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        from enforcer.safefile import SHARED, atomic_write

        atomic_write(out, rendered, SHARED)
        click.echo(f"{table.num_rows:,} rows written to {out}", err=True)
    else:
        click.echo(rendered, nl=False)
        if output == "table":
            click.echo(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''})", err=True)
