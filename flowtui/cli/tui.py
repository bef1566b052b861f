"""`flowtui tui`: the dashboard on a flow store (live or recorded) or on recorded files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from enforcer.datastore import DEFAULT_HOME
from flowtui.cli.common import cluster_option, store_path
from flowtui.cli.state import open_state, state_dir_option

if TYPE_CHECKING:
    from flowtui.tui.app import FlowtuiApp


@click.command("tui")
@click.option("--db", type=click.Path(), help="A DuckDB flow store (`flowtui collect --db`; while a collector "
              "writes it, its snapshot is followed live), or a Parquet export directory (`flowtui export --format "
              "parquet`, sample-logs/) or a table file of one (as --logs).")
@cluster_option
@click.option("--logs", type=click.Path(exists=True),
              help="A recording: a directory of <table>.parquet / .jsonl files (e.g. sample-logs/), or one file.")
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(exists=True),
              help="Policy files for the trace, policies and what-if screens [default: the recording's "
                   "resources.yaml, else the datastore].")
@click.option("-n", "--namespace", metavar="NS", default=None,
              help="Namespace for namespaced objects of -f files written without one (default: default).")
@state_dir_option
@click.option("--lab", "lab_id", envvar="FLOWTUI_LAB", default="lab", show_default=True, metavar="ID",
              help="Lab whose nodes enforce policy changes (root; only if it is up).")
@click.option("--read-only", is_flag=True, help="No policy changes from the dashboard.")
@click.option("--queries", "queries_dir", type=click.Path(file_okay=False, exists=True),
              help="Directory of .sql files for the SQL screen [default: the query library, $FLOWTUI_QUERIES "
                   "then queries/].")
def tui(db: str | None, cluster: str | None, logs: str | None, paths: tuple[str, ...], namespace: str | None,
        state_dir: str, lab_id: str, read_only: bool, queries_dir: str | None) -> None:
    """The terminal dashboard: flows allowed and denied, by which policy and rule.

    Screens (keys 1-5, or `:` commands as in k9s): live flows with a `/` filter, conversations,
    policies with hit counts (toggle them live), a what-if editor that replays the recorded flows
    under an edited policy, and SQL over the store. `?` lists every key; ctrl+p searches every
    action.

    \b
    Examples:
      flowtui tui --logs sample-logs/          # replay the shipped recording, no root needed
      flowtui tui --db flows.duckdb            # a store (followed live while `flowtui collect` runs)
      flowtui demo                             # the lab, the collector and this dashboard, live
      flowtui tui --cluster /var/lib/flowtui/flows/lab   # every node's flows (agents' --flows-dir)
    """
    db = store_path(db, cluster)
    app = build_app(db, logs, paths, state_dir, lab_id, read_only, queries_dir, namespace)
    from flowtui.tui.app import run_app

    try:
        run_app(app)
    finally:
        app.source.close()


def build_app(db: str | None, logs: str | None, paths: tuple[str, ...] = (), state_dir: str = DEFAULT_HOME,
              lab_id: str = "lab", read_only: bool = False, queries_dir: str | None = None,
              namespace: str | None = None) -> FlowtuiApp:
    """The dashboard `flowtui tui` runs, from its options (tests drive it with `run_test`)."""
    from flowtui.cli.common import fail
    from flowtui.interop.cluster import is_cluster_dir
    from flowtui.interop.parquet import export_root
    from flowtui.tui.sources import SourceError, open_source

    root = export_root(db) if db and not is_cluster_dir(db) else None
    if root is not None:  # --db takes the same forms everywhere: an export (or a table file of one) is a recording
        db, logs = None, str(root)
    if not db and not logs:
        if Path("flowtui.duckdb").exists():
            db = "flowtui.duckdb"
        else:
            fail("no data: give --db FILE (a flow store) or --logs DIR (a recording, e.g. sample-logs/)")
    try:
        source = open_source(db, logs)
    except SourceError as exc:
        fail(str(exc))
    control = _control(paths, logs, state_dir, lab_id, read_only, namespace)
    from flowtui.tui.app import make_app

    return make_app(source, control, read_only=read_only, queries_dir=Path(queries_dir) if queries_dir else None)


def _control(paths: tuple[str, ...], logs: str | None, state_dir: str, lab_id: str, read_only: bool,  # type: ignore[no-untyped-def]
             namespace: str | None = None):
    """Where policies come from, and whether they can be changed from here."""
    from enforcer.datastore import Datastore
    from flowtui.tui.control import PolicyControl

    if paths:
        return PolicyControl(files=paths, namespace=namespace, read_only=True, why_read_only="policies from files")
    if logs:
        bundled = Path(logs) / "resources.yaml" if Path(logs).is_dir() else None
        if bundled is not None and bundled.exists():
            return PolicyControl(files=[str(bundled)], read_only=True,
                                 why_read_only="a recording: policies shown as recorded")
    ds = open_state(state_dir)
    if isinstance(ds, Datastore) and not (ds.path / "state.json").exists():
        return PolicyControl(read_only=True, why_read_only="no policy set: give -f PATH or --state-dir")
    if read_only:
        return PolicyControl(datastore=ds, read_only=True)
    if os.geteuid() != 0:
        return PolicyControl(datastore=ds, read_only=True, why_read_only="not root: policies shown, not changed")
    from flowtui.cli.state import default_lab_nodes, lab_cluster
    from flowtui.tui.control import lab_control, lab_counters

    if lab_cluster(lab_id) is not None:  # its agents enforce; a second enforcer here would race them
        return PolicyControl(datastore=ds, read_only=True, counters=lab_counters(lab_id),  # but hits are live
                             why_read_only=f"lab {lab_id} runs in etcd mode: its agents enforce (flowtui policy)")
    if not default_lab_nodes(lab_id):
        return PolicyControl(datastore=ds, read_only=True, why_read_only=f"lab {lab_id} is not up")
    return lab_control(ds, lab_id)
