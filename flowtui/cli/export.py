"""`flowtui export`: the flow store as Parquet, JSON Lines, Hubble or Calico flows
(`flowtui.cli.imports` reads the last two back)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from flowtui.cli.common import cluster_option

if TYPE_CHECKING:
    import duckdb

    from flowtui.interop.window import Window

DEFAULT_DB = "flowtui.duckdb"  # as `flowtui collect --db`
FORMATS = ("parquet", "jsonl", "hubble", "calico")


@contextlib.contextmanager
def _text_out(out: str, overwrite: bool) -> Iterator[IO[str]]:
    from enforcer.safefile import SHARED, atomic_open
    from flowtui.cli.common import EXIT_INVALID, fail

    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(out)
    if path.is_dir():
        fail(f"{out} is a directory: --format jsonl/hubble/calico write one file (or - for stdout)", EXIT_INVALID)
    if path.exists() and not overwrite:
        fail(f"{out} exists: use --overwrite, or another file", EXIT_INVALID)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not `<out>.tmp`: a predictable name would let a planted symlink redirect the export.
    with atomic_open(path, SHARED, buffering=1 << 20) as handle:
        yield handle


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="parquet: every table, hive-partitioned by day and node (a directory); jsonl: flow records "
                   "with names; hubble: `hubble observe -o json` lines; calico: Whisker/Goldmane flow records.")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(),
              help="Flow store: a DuckDB file (its snapshot while a collector writes it) or a Parquet directory.")
@cluster_option
@click.option("--since", metavar="WHEN", help="Only flows from this time on: a time, or a duration back from the "
                                               "latest flow (30m, 24h, 7d). Tables without times go whole.")
@click.option("--until", metavar="WHEN", help="Only flows before this time (same forms).")
@click.option("--out", required=True, type=click.Path(allow_dash=True), metavar="DIR|FILE",
              help="A directory for parquet; a file (or - for stdout) for the others.")
@click.option("--overwrite", is_flag=True, help="Replace an existing export at --out.")
@click.option("--calico-style", type=click.Choice(["whisker", "goldmane"]), default="whisker", show_default=True,
              help="Calico records as whisker-backend serves them (string enums) or as Goldmane's NDJSON sink "
                   "writes them (integer enums, nested key).")
def export_cmd(fmt: str, db: str, cluster: str | None, since: str | None, until: str | None, out: str, overwrite: bool,
               calico_style: str) -> None:
    """Write the recorded flows in a format other tools read.

    \b
    Examples:
      flowtui export --format parquet --out export/            # then: flowtui query top_denied --db export/
      flowtui export --format jsonl --since 1h --out last-hour.jsonl
      flowtui export --format hubble --out flows.json          # hubble observe -o json lines
      flowtui export --format calico --calico-style goldmane --out - | jq .
    """
    import duckdb

    from flowtui.cli.common import EXIT_INVALID, fail, open_store, store_path
    from flowtui.interop.window import WindowError, parse_window

    db = store_path(db, cluster, DEFAULT_DB) or db

    if fmt == "parquet" and out == "-":
        fail("--format parquet writes a directory: give --out DIR", EXIT_INVALID)
    with open_store(db, "give --db PATH", "exporting") as source:
        try:
            window = parse_window(source.con, since, until)
        except WindowError as err:
            fail(str(err), EXIT_INVALID)
        try:
            if fmt == "parquet":
                _export_parquet(source.con, Path(out), window, overwrite)
                return
            with _text_out(out, overwrite) as handle:
                n, what = _export_text(source.con, fmt, handle, window, calico_style)
        except duckdb.Error as err:
            fail(f"export failed: {err}")
    click.echo(f"{n:,} {what} written to {'stdout' if out == '-' else out}", err=True)


def _export_parquet(con: duckdb.DuckDBPyConnection, out: Path, window: Window, overwrite: bool) -> None:
    from flowtui.cli.common import EXIT_INVALID, fail
    from flowtui.interop.parquet import ExportError, export_parquet

    try:
        result = export_parquet(con, out, window, overwrite)
    except ExportError as err:
        fail(str(err), EXIT_INVALID)
    rows = ", ".join(f"{t} {n:,}" for t, n in result.rows.items() if n)
    click.echo(f"{result.files} Parquet files in {out} ({rows or 'no rows'}); "
               f"DuckDB: cd {out} && duckdb -c '.read views.sql'", err=True)


def _export_text(con: duckdb.DuckDBPyConnection, fmt: str, handle: IO[str], window: Window,
                 calico_style: str) -> tuple[int, str]:
    if fmt == "jsonl":
        from flowtui.interop.jsonl import write_jsonl

        return write_jsonl(con, handle, window), "flow records"
    if fmt == "hubble":
        from flowtui.interop.hubble import write_hubble

        return write_hubble(con, handle, window), "Hubble flows"
    from flowtui.interop.calico import write_records

    return write_records(con, handle, window, calico_style), f"Calico flow records ({calico_style})"
