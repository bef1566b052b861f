"""`flowtui collect` (NFLOG -> DuckDB) and `flowtui status` (what was collected, what was lost)."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from flowtui.cli.common import EXIT_INVALID, cluster_option
from flowtui.cli.state import lab_option, state_dir_option

DEFAULT_DB = "flowtui.duckdb"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")


def parse_duration(text: str) -> timedelta | None:
    """`90s`, `15m`, `24h`, `30d`, a number of seconds, or `none` (keep forever)."""
    if text.lower() in ("none", "forever", "0"):
        return None
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use e.g. 90s, 15m, 24h, 30d or none")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return timedelta(seconds=float(m.group(1)) * unit)


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use e.g. 64M")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


@click.command("collect")
@click.option("--db", "db", default=None, type=click.Path(dir_okay=False), help=f"DuckDB file [default: {DEFAULT_DB}].")
@click.option("--lab", "lab_id", envvar="FLOWTUI_LAB", metavar="ID",
              help="Read NFLOG in every node namespace of this lab (also $FLOWTUI_LAB) [default: the lab "
                   "that is up; several up: name one].")
@click.option("--host", "host", is_flag=True, help="Read this machine's own NFLOG instead of a lab's.")
@click.option("--netns", "netns", multiple=True, metavar="NS", help="A lab namespace (ft-...) to read in. Repeatable.")
@click.option("--node", "node", metavar="NAME",
              help="Collect one node only (its lab namespace; with --host, this machine named NAME), as the "
                   "node's agent does: for --flows-dir.")
@click.option("--flows-dir", "flows_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also append this node's flows, loss and counters to the cluster flows dataset in DIR "
                   "(hive-partitioned Parquet; every node writes its own partitions; read with --cluster DIR). "
                   "The node's own store is then $FLOWTUI_HOME/collector/<lab>-<node>.duckdb unless --db.")
@click.option("--duration", type=float, metavar="S", help="Stop after S seconds (default: until Ctrl-C / SIGTERM).")
@state_dir_option
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(),
              help="Resources for enrichment instead of the datastore's.")
@click.option("-n", "--namespace", metavar="NS", default=None,
              help="Namespace for namespaced objects of -f files written without one (default: default).")
@click.option("--rules", type=click.Path(dir_okay=False), help="Rule table [default: the datastore's rules.jsonl].")
@click.option("--group", "groups", multiple=True, type=int, help="NFLOG group to bind (default 1 and 2).")
@click.option("--bucket", default=15.0, show_default=True, help="Flow time bucket, seconds.")
@click.option("--events/--no-events", default=True, show_default=True, help="Keep raw events as well as flows.")
@click.option("--conntrack/--no-conntrack", default=True, show_default=True, help="Allowed flows' counts.")
@click.option("--counters/--no-counters", default=True, show_default=True, help="Poll nft rule counters.")
@click.option("--retain-events", default="24h", show_default=True, help="Keep events this long (or none).")
@click.option("--retain-flows", default="30d", show_default=True, help="Keep flows, connections, counters.")
@click.option("--retain-rollups", default="365d", show_default=True,
              help="Keep the hourly rollups (what the named queries read) this long, past the raw flows (or none).")
@click.option("--hourly-rollups", default="48h", show_default=True,
              help="Then compact the rollups' hours into days (windows inside them count whole days; or none).")
@click.option("--snapshot-interval", default=5.0, show_default=True, help="Seconds between reader snapshots.")
@click.option("--rcvbuf", default="64M", show_default=True, help="Netlink receive buffer (SO_RCVBUFFORCE).")
@click.option("--qthreshold", default=128, show_default=True, help="NFLOG messages per kernel batch.")
@click.option("--flush-cs", default=5, show_default=True, help="NFLOG flush timeout, 1/100 s.")
@click.option("--copy-range", default=80, show_default=True, help="Packet bytes copied per event.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Progress every 5 s and debug logs on stderr.")
def collect_cmd(
    db: str | None,
    lab_id: str | None,
    host: bool,
    netns: tuple[str, ...],
    node: str | None,
    flows_dir: str | None,
    duration: float | None,
    state_dir: str,
    paths: tuple[str, ...],
    namespace: str | None,
    rules: str | None,
    groups: tuple[int, ...],
    bucket: float,
    events: bool,
    conntrack: bool,
    counters: bool,
    retain_events: str,
    retain_flows: str,
    retain_rollups: str,
    hourly_rollups: str,
    snapshot_interval: float,
    rcvbuf: str,
    qthreshold: int,
    flush_cs: int,
    copy_range: int,
    output: str,
    verbose: bool,
) -> None:
    """Read NFLOG (and conntrack, and nft counters) and store events and flows in DuckDB.

    Every event the kernel logged with an `ft:` prefix is stored, or counted as lost by cause
    (see `flowtui status`). Each event is attributed to its policy and rule through the
    datastore's rule table, and its addresses to pods, host endpoints and sets through the
    datastore's resources; both are followed while this runs (`flowtui apply` in another
    terminal takes effect here) and recorded in the store, so readers need neither.

    Without --lab it reads the lab that is up (several up: it names them and exits 2; none: it
    says so, and --host reads this machine instead). Readers never open the live database
    while this runs: they open the snapshot `<db>.snapshot.duckdb`, refreshed every
    --snapshot-interval seconds (`duckdb -readonly flowtui.snapshot.duckdb`).

    With --node NAME --flows-dir DIR it collects one node, as that node's agent does with
    `flowtui agent --flows-dir DIR`: every node's collector writes its own partitions of one
    dataset, which `flowtui query/tui/whatif/export --cluster DIR` read as one store.
    """
    from enforcer.datastore import Datastore
    from flowtui.cli.common import fail
    from flowtui.cli.state import open_state
    from flowtui.collector.nflog import NflogConfig
    from flowtui.collector.node import datastore_loader, local_store
    from flowtui.collector.service import Collector, CollectorConfig, lab_namespaces, node_of
    from flowtui.store.duckdb_store import Retention

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    for name in netns:
        if not name.startswith("ft-"):
            fail(f"{name}: only lab namespaces (ft-...) can be given")
    if host and lab_id:
        fail("--host and --lab: give one (the machine's own NFLOG, or a lab's)", EXIT_INVALID)
    if not lab_id and not host and not netns:
        lab_id = _the_lab_that_is_up()
    namespaces: list[str | None] = list(netns)
    if lab_id:
        found = lab_namespaces(lab_id)
        if not found:
            fail(f"lab {lab_id} has no node namespaces (is it up? `flowtui lab status --lab {lab_id}`)")
        namespaces.extend(found if node is None or netns else [_node_namespace(lab_id, node, found)])
    if not namespaces:
        namespaces = [None]
    if flows_dir is not None or node is not None:
        if len(namespaces) != 1:
            fail("--node/--flows-dir collect one node: give --lab ID --node NAME, --netns NS or --host", EXIT_INVALID)
        node = node or node_of(namespaces[0])
    if db is None:
        db = str(local_store(state_dir, lab_id, node)) if flows_dir is not None and node else DEFAULT_DB
    state = open_state(state_dir)
    datastore = state if isinstance(state, Datastore) else None
    if datastore is not None and not paths and not rules:
        _check_datastore(datastore, [n for n in namespaces if n is not None])
    retain_flows_td = parse_duration(retain_flows)
    cfg = CollectorConfig(
        db=Path(db),
        node=node,
        flows_dir=Path(flows_dir) if flows_dir is not None else None,
        namespaces=tuple(namespaces),
        nflog=NflogConfig(
            groups=groups or (1, 2),
            copy_range=copy_range,
            qthreshold=qthreshold,
            timeout_cs=flush_cs,
            rcvbuf=parse_size(rcvbuf),
        ),
        rules_path=Path(rules) if rules else state.rules_path,
        load_resources=_resource_loader(paths, lab_id, namespace) if paths else datastore_loader(state, lab_id),
        # Re-load when these change: the files, or the datastore's index (every commit replaces it);
        # a datastore without one (etcd): its revision.
        resource_paths=paths or ((str(state.path / "state.json"),) if datastore is not None else ()),
        resources_stamp=None if paths or datastore is not None else (lambda: state.revision),
        bucket_seconds=bucket,
        keep_events=events,
        conntrack=conntrack,
        counters=counters,
        snapshot_interval=snapshot_interval if snapshot_interval > 0 else None,
        retention=Retention(
            events=parse_duration(retain_events),
            flows=retain_flows_td,
            connections=retain_flows_td,
            counters=retain_flows_td,
            rollups=parse_duration(retain_rollups),
            hourly=parse_duration(hourly_rollups),
        ),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: stop.set())
    collector = Collector(cfg)
    try:
        collector.start()
    except (OSError, ValueError) as exc:
        fail(str(exc))
    where = ", ".join(s.netns or "host" for s in collector.sources)
    into = db + (f" and the flows dataset {flows_dir} (node {node})" if flows_dir else "")
    click.echo(f"collecting run {collector.run_id} from {where} into {into} (Ctrl-C to stop)", err=True)
    if verbose:
        _progress(collector, stop)
    try:
        collector.run(duration, stop)
    except RuntimeError as exc:
        fail(f"{exc}: {exc.__cause__!r} (what was collected until then is stored)")
    summary = collector.summary()
    if output == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)


def _the_lab_that_is_up() -> str | None:
    """The one lab up on this machine; several: name them and exit 2; none: say so and exit 1."""
    from flowtui.cli.common import fail
    from flowtui.collector.service import labs_up

    labs = labs_up()
    if len(labs) == 1:
        click.echo(f"reading lab {labs[0]} (the one that is up)", err=True)
        return labs[0]
    if labs:
        fail(f"{len(labs)} labs are up ({', '.join(labs)}): choose one with --lab ID", EXIT_INVALID)
    fail("no lab is up: start one with `flowtui lab up -f PATH`, or read this machine's own NFLOG with --host")


def _check_datastore(datastore: Any, namespaces: list[str]) -> None:
    """Say so when the datastore cannot name what is read: nothing stored yet, or not this lab's."""
    from enforcer.datastore import DatastoreError
    from flowtui.collector.service import node_of

    if not (datastore.path / "state.json").exists():
        click.echo(f"note: no datastore at {datastore.path} yet: events get names once `flowtui apply` "
                   "stores policies there (or give --state-dir / $FLOWTUI_HOME)", err=True)
        return
    try:
        stored = {o.key.name for o in datastore.objects("node")}
    except DatastoreError as exc:
        click.echo(f"note: {exc}: events may get no names", err=True)
        return
    missing = sorted({node_of(n) for n in namespaces} - stored)
    if missing:
        click.echo(f"note: the datastore {datastore.path} has no Node {', '.join(missing)}: is it the one this "
                   "lab was made from? (--state-dir / $FLOWTUI_HOME)", err=True)


def _node_namespace(lab_id: str, node: str, found: list[str]) -> str:
    from enforcer.lab.names import netns_name
    from flowtui.cli.common import fail
    from flowtui.collector.service import node_of

    try:
        name = netns_name(lab_id, f"node:{node}")
    except ValueError as exc:
        fail(f"--node {node}: {exc}", EXIT_INVALID)
    if name not in found:
        fail(f"lab {lab_id} has no node {node!r} up (nodes: {', '.join(node_of(n) for n in found)})")
    return name


def _resource_loader(paths: tuple[str, ...], lab_id: str | None, namespace: str | None = None) -> Any:
    def load() -> Any:
        from enforcer.loader import load_paths

        resources = load_paths(list(paths), namespace)
        if lab_id:
            from enforcer.lab import plan_lab
            from enforcer.lab.plan import lab_resources

            resources = lab_resources(resources, plan_lab(resources, lab_id))
        return resources

    return load


def _progress(collector: Any, stop: threading.Event) -> None:
    def run() -> None:
        last, t0 = 0, time.monotonic()
        while not stop.wait(5.0):
            got = collector.book.stat_total("received")
            dt = time.monotonic() - t0
            t0 = time.monotonic()
            lost = collector.book.lost_by_cause()
            click.echo(f"received {got} (+{(got - last) / dt:,.0f}/s) lost {lost}", err=True)
            last = got

    threading.Thread(target=run, daemon=True).start()


def _print_summary(summary: dict[str, Any]) -> None:
    stats = summary["stats"]
    click.echo(
        f"run {summary['run_id']}: {stats.get('received', 0)} events received, "
        f"{stats.get('stored', 0)} stored, in {summary['seconds']} s"
    )
    for cause, n in sorted(summary["lost"].items()):
        click.echo(f"  lost ({cause}): {n}")


# ---------------------------------------------------------------------------------------------
# status


@click.command("status")
@click.option("--db", "db", default=DEFAULT_DB, show_default=True, type=click.Path(),
              help="Flow store: a DuckDB file (its snapshot while a collector writes it), or a Parquet export "
                   "directory (`flowtui export --format parquet`, sample-logs/) or a table file of one.")
@cluster_option
@click.option("--runs", "last_runs", default=None, type=int,
              help="How many recent runs to show [default: 3; with --cluster, each node's last].")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@lab_option
@state_dir_option
def status_cmd(db: str, cluster: str | None, last_runs: int | None, output: str, lab_id: str, state_dir: str) -> None:
    """What the collector stored and lost, by cause, per run and namespace; and lab nodes an
    interrupted apply left behind the datastore (`--state-dir`, `--lab`).

    Opens the database read-only, or its snapshot when a collector is writing it. With
    `--cluster DIR`: every node's last run from the cluster flows dataset (a run is running while
    its heartbeat is under 10 s old).
    """
    from enforcer.agent_status import describe, read_agents
    from flowtui.cli.common import fail, store_path
    from flowtui.cli.state import behind_lines, enforcement_behind, guarded, open_state, published_states, runtime
    from flowtui.interop.parquet import export_root
    from flowtui.store.status import read_cluster_status, read_export_status, read_status

    behind = enforcement_behind(state_dir, guarded(lambda: runtime().lab_nodes(lab_id)))
    for line in behind_lines(behind):
        click.echo(f"warning: {line}", err=True)
    store = open_state(state_dir)
    agents = read_agents(store.path, published_states(store))
    doc: dict[str, Any] | None
    if cluster is not None:  # every node's runs and loss, from the dataset
        doc = read_cluster_status(Path(store_path(db, cluster, DEFAULT_DB) or db), last_runs or 1)
    elif (root := export_root(db)) is not None:
        doc = read_export_status(root, last_runs or 3)
    else:
        try:
            doc = read_status(Path(db), last_runs or 3)
        except FileNotFoundError as exc:
            if not agents:
                fail(f"no flow store: {exc}")
            doc = None  # agents, but no collector here: say what the agents say
    if output == "json":
        click.echo(json.dumps({**(doc or {}), "enforcement_behind": behind,
                               "agents": [a.to_json() for a in agents]}, indent=2, default=str))
        return
    for agent in agents:
        click.echo("\n".join(describe(agent)))
    if doc is not None:
        _print_status(doc)


def _print_status(doc: dict[str, Any]) -> None:
    snap = " (snapshot: a collector is writing)" if doc["snapshot"] else ""
    click.echo(f"store {doc['path']}{snap}, data as of {_t(doc['as_of'])}")
    t = doc["tables"]
    click.echo(
        f"  {t['events']:,} events, {t['flows']:,} flow rows, {t['connections']:,} connections, "
        f"{t['rules']:,} rules, {t['policies']:,} policy revisions, {t['endpoints']:,} endpoints"
    )
    r = doc.get("rollups")
    if r is not None:
        reach = f"flows before {_t(r['rolled_until'])} rolled up" if r["rolled_until"] else "nothing rolled up yet"
        compacted = f", rollups only before {_t(r['compacted_until'])}" if r["compacted_until"] else ""
        if r.get("days_until"):
            compacted += f", per day before {_t(r['days_until'])}"
        if r.get("complete_from"):
            compacted += f", may miss flows before {_t(r['complete_from'])}"
        n = r["rows"]
        click.echo(f"  rollups: {reach}{compacted}; {n['pair_hours']:,} pair-hours, {n['rule_hours']:,} rule-hours, "
                   f"{n['talkers']:,} talkers")
    for run in doc["runs"]:
        state = {
            "running": f"running (heartbeat {_t(run['heartbeat'])})",
            "stopped": f"ended {_t(run['ended'])}",
            "crashed": "crashed, "
            + (
                f"last heartbeat {_t(run['ended'])}" if run["ended"] else "not running (closed when a collector starts)"
            ),
        }[run["state"]]
        click.echo(f"run {run['run_id']}: started {_t(run['started'])}, {state}, pid {run['pid']} on {run['host']}")
        for s in run["sources"]:
            click.echo(
                f"  {s['node']} ({s['netns'] or 'host'}): received {s['received']:,}, "
                + ("" if s.get("stored") is None else f"stored {s['stored']:,}, ")
                + f"lost {s['lost_total']:,}" + "".join(f", {c} {n:,}" for c, n in s["lost"].items() if n)
            )
        click.echo(
            f"  total: received {run['received']:,}, stored {run['stored']:,}, lost {run['lost_total']:,}"
            f" ({run['loss_ratio']:.4%})"
        )
        for cause, n in run["lost"].items():
            click.echo(f"    {cause:<17} {n:>12,}")
        notable = {k: v for k, v in run["counters"].items() if v and k in _NOTABLE}
        if notable:
            click.echo("  " + ", ".join(f"{k} {v:,}" for k, v in notable.items()))


_NOTABLE = ("enobufs", "unknown_rule", "foreign_prefix", "unexpected_messages", "unknown_attributes", "late_flow_rows")


def _t(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")
