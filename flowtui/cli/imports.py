"""`flowtui import hubble|calico FILE...`: flows from Cilium's Hubble and Calico's flow logs into
a flow store (`flowtui import pcap` lives with what-if, whose flow frames it writes).

Both join the `flowtui import` group that `flowtui.cli.whatif` defines; importing this module
registers them. Each file is read whole, parsed by its format's one parser
(`flowtui.interop.imports`), and written as one run, unless a run already holds the same bytes.
A file that cannot be read, or that yields no flow, is reported and the next file goes on; the
exit status says how it went: 2 when a file could not be read (missing, not this format), else 1
when a file gave no flow (or, with --strict, had a malformed record), else 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from flowtui.cli.common import EXIT_INVALID, echo_json, fail
from flowtui.cli.whatif import import_group

DEFAULT_DB = "flowtui.duckdb"  # as `flowtui collect --db`
EXIT_NO_FLOWS = 1


def _options(func: Any) -> Any:
    options = [
        click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True)),
        click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
                     help="Flow store to add the flows to (created if missing; not while a collector writes it)."),
        click.option("--bucket", default=15.0, show_default=True,
                     help="Time bucket for per-event formats (Hubble), seconds (as `collect --bucket`)."),
        click.option("--events/--no-events", default=True, show_default=True,
                     help="Keep each Hubble flow as an event row too, not only the aggregated flows."),
        click.option("--strict", is_flag=True, help="Exit 1 when any record was malformed (skipped)."),
        click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_import(fmt: str, files: Sequence[str], db: str, bucket: float, events: bool, strict: bool,
               output: str) -> None:
    import duckdb

    from flowtui.interop.imports import UnknownFormat, import_file
    from flowtui.store.duckdb_store import DuckStore

    if bucket <= 0:
        fail("--bucket must be positive", EXIT_INVALID)
    try:
        store = DuckStore(db, snapshot_interval=None)
    except duckdb.Error as err:
        fail(f"cannot write {db}: {err} (is a collector writing it? import into another store)")
    results: list[dict[str, Any]] = []
    failed = malformed = unreadable = False
    try:
        for path in files:
            try:
                data = sys.stdin.buffer.read() if path == "-" else None
                result, parsed = import_file(store, path, fmt=fmt, data=data, bucket_seconds=bucket,
                                             keep_events=events)
            except (OSError, UnknownFormat) as err:
                reason = f"{path}: {err.strerror or err}" if isinstance(err, OSError) else str(err)
                click.echo(f"error: {reason}; nothing imported from it", err=True)
                results.append({"source": path, "error": reason})
                unreadable = True
                continue
            for line in parsed.problem_lines(path):
                click.echo(f"warning: {line}", err=True)
            malformed = malformed or bool(parsed.problems)
            results.append(result.to_json())
            if result.duplicate_of is not None:
                click.echo(f"{path}: already imported (run {result.duplicate_of}, same content): nothing stored",
                           err=True)
                continue
            if result.run_id is None:
                failed = True
                if not parsed.lines:
                    why = "the file is empty"
                elif len(parsed.problems) >= parsed.lines:
                    why = f"all {parsed.lines:,} records are malformed"
                else:
                    why = f"{parsed.lines:,} records, none of them a flow" + (
                        f" (skipped: {_counts(result.skipped)})" if result.skipped else "")
                click.echo(f"error: {path}: no flows: {why}; nothing stored", err=True)
                continue
            if output == "text":
                click.echo(f"{path}: {result.records:,} {fmt} flow records of {result.lines:,} lines into {db} "
                           f"(run {result.run_id}): {result.flow_rows:,} flow rows, {result.rules_added} new rules, "
                           f"{result.endpoints_added} endpoints, nodes {', '.join(result.nodes) or '-'}")
                extra = []
                if result.skipped:
                    extra.append(f"skipped (not flows): {_counts(result.skipped)}")
                if result.malformed:
                    extra.append(f"malformed: {result.malformed:,}")
                if extra:
                    click.echo(f"  {'; '.join(extra)}", err=True)
                if result.lost:
                    click.echo(f"  {fmt} reported {result.lost:,} lost events (loss cause {fmt}_lost_events)", err=True)
    finally:
        store.close(snapshot=False)
    if output == "json":
        echo_json(results)
    if unreadable:
        sys.exit(EXIT_INVALID)
    if failed or (strict and malformed):
        sys.exit(EXIT_NO_FLOWS)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


@click.command("hubble")
@_options
def import_hubble_cmd(files: Sequence[str], db: str, bucket: float, events: bool, strict: bool, output: str) -> None:
    """Import Hubble flows (`hubble observe -o json` output, or `flowtui export --format hubble`).

    Policy verdicts, drops, flows redirected to the proxy and L7 requests (HTTP, DNS, Kafka:
    with their summary) become events and flows of a new run, one source per node; the policies
    Hubble names become rules, the endpoints (pods with their labels, namespace labels as
    `pcns.*`, service account) a new endpoints revision. A file with no verdicts (a plain trace)
    gives its connection openings. Then `flowtui query`, `whatif --db` and the dashboard work on
    Cilium's flows too.

    \b
    Example:
      hubble observe --since 1h -o json > flows.json
      flowtui import hubble flows.json --db cilium.duckdb
      flowtui query top_denied --db cilium.duckdb

    Malformed lines are skipped and reported with their line; the same file imported twice
    stores nothing the second time. Exits 2 when a file cannot be read (missing, another format),
    1 when a file gave no flow (or, with --strict, had a malformed line).
    """
    run_import("hubble", files, db, bucket, events, strict, output)


@click.command("calico")
@_options
def import_calico_cmd(files: Sequence[str], db: str, bucket: float, events: bool, strict: bool, output: str) -> None:
    """Import Calico flow logs: Calico Enterprise/Cloud `flows.log`, Goldmane NDJSON, or
    whisker-backend JSON (what `flowtui export --format calico` writes).

    Each record becomes a flow row over its own time window, reported by its node (`host`) from
    the reporter's side: the deciding policy (end-of-tier denies keep the policy that triggered
    them), the Pass steps before it and the staged policies' pending verdicts, both endpoints
    with labels, packets, bytes and connections. Policy strings of every Calico version are read
    (`0|tier|tier.policy|deny|-1` and 3.32's `0|tier|gnp:policy|deny|-1`).

    \b
    Example:
      flowtui import calico /var/log/calico/flowlogs/flows.log --db calico.duckdb
      flowtui whatif --db calico.duckdb -f tighter.yaml

    Malformed lines are skipped and reported with their line; the same file imported twice
    stores nothing the second time. Exits 2 when a file cannot be read (missing, another format),
    1 when a file gave no flow (or, with --strict, had a malformed line).
    """
    run_import("calico", files, db, bucket, events, strict, output)


import_group.add_command(import_hubble_cmd)
import_group.add_command(import_calico_cmd)
