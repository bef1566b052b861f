"""`flowtui whatif`, `flowtui propose` and `flowtui import pcap`: replay recorded flows against
edited policy, propose policy from them, and turn packet captures into flows.

Flows come from the DuckDB flow store (`--db`, default `flowtui.duckdb`) or from files
(`--flows`: Parquet files or directories, `hubble observe -o json` exports, pcap/pcapng captures,
other flow stores). The current policy set comes from the datastore (`--state-dir`, else
`$FLOWTUI_HOME`) or from files (`--current`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from enforcer.datastore import DesiredState
from enforcer.loader import LoadError, load_paths, skipped_line
from enforcer.model import ResourceSet
from flowtui.cli.common import EXIT_INVALID, NAMESPACE_HELP, echo_json, fail, store_path

DEFAULT_DB = "flowtui.duckdb"  # as `flowtui collect --db`
EXIT_NO_FLOWS = 1


def _load_failed(err: LoadError) -> None:
    click.echo(str(err), err=True)
    n = len(err.problems)
    click.echo(f"{n} problem{'s' if n != 1 else ''} found; nothing was evaluated.", err=True)
    sys.exit(EXIT_INVALID)


def _state(state_dir: str) -> DesiredState:
    from flowtui.cli.state import open_state

    return open_state(state_dir)


def _current(current: Sequence[str], state_dir: str, namespace: str | None = None) -> ResourceSet:
    from flowtui.whatif.edits import EditError, current_resources

    try:
        return current_resources(list(current), None if current else _state(state_dir), namespace)
    except LoadError as err:
        _load_failed(err)
    except EditError as err:
        fail(str(err), EXIT_INVALID)
    raise AssertionError("unreachable")


def _since(text: str | None) -> timedelta | None:
    from flowtui.whatif.frames import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--since") from err


def _sources(db: str | None, flow_files: Sequence[str]) -> list[str]:
    sources = list(flow_files)
    if db is not None:
        sources.insert(0, db)
    elif not sources:
        if not os.path.exists(DEFAULT_DB):
            fail(f"no flows: no flow store at {DEFAULT_DB}; give --db STORE or --flows FILE", EXIT_INVALID)
        sources = [DEFAULT_DB]
    return sources


def _flows(db: str | None, flow_files: Sequence[str], since: timedelta | None) -> Any:
    from flowtui.whatif.frames import FlowSourceError
    from flowtui.whatif.sources import read_flows

    sources = _sources(db, flow_files)
    try:
        return read_flows(sources, since)
    except FlowSourceError as err:
        fail(str(err), EXIT_INVALID)


@contextlib.contextmanager
def _progress(enabled: bool | None) -> Iterator[Any]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from flowtui.whatif.progress import RichProgress

    with RichProgress() as progress:
        yield progress


def flow_options(func: click.decorators.FC) -> click.decorators.FC:
    """--db, --cluster, --flows, --since, --current, --state-dir, --progress."""
    from flowtui.cli.common import cluster_option

    options = [
        click.option("--db", type=click.Path(), default=None,
                     help="Flow store to read recorded flows from: a DuckDB file, or a flow-store Parquet export "
                          f"directory like sample-logs/ [default: {DEFAULT_DB}]."),
        cluster_option,
        click.option("--flows", "flow_files", multiple=True, type=click.Path(), metavar="PATH",
                     help="Recorded flows from files instead, told apart by content: a flow store (DuckDB or "
                          "Parquet export directory), Parquet (file, glob or directory), Hubble JSON, Calico flow "
                          "logs (flows.log, Goldmane, whisker), pcap/pcapng. Repeatable."),
        click.option("--since", metavar="DURATION", help="Only flows seen within this long (30m, 24h, 7d)."),
        click.option("--current", multiple=True, type=click.Path(allow_dash=True), metavar="PATH",
                     help="The current policy set and cluster from files instead of the datastore. Repeatable."),
        _state_dir_option,
        _lab_option,
        click.option("--progress/--no-progress", "progress", default=None,
                     help="Progress bars on stderr [default: when stderr is a terminal]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _state_dir_option(func: click.decorators.FC) -> click.decorators.FC:
    from flowtui.cli.state import state_dir_option

    return state_dir_option(func)


def _lab_option(func: click.decorators.FC) -> click.decorators.FC:
    """`--lab ID`: a lab in etcd mode gives the current set (its datastore), and `--cluster`
    alone its flows dataset."""
    from flowtui.cli.state import lab_option

    return lab_option(func)


# --------------------------------------------------------------------------------------------
# whatif


@click.command()
@click.option("-f", "--filename", "edit_paths", multiple=True, type=click.Path(allow_dash=True), metavar="PATH",
              help="Edited or new resources (YAML/JSON file, directory, or - for stdin), merged over the current "
                   "set: an object with the same kind, namespace and name replaces the current one. Repeatable.")
@click.option("--delete", "deletions", multiple=True, metavar="KIND/NAME",
              help="Delete an object from the current set: gnp/NAME, np/NAMESPACE/NAME, knp/NAMESPACE/NAME, "
                   "tier/NAME, ... Repeatable.")
@flow_options
@click.option("-n", "--namespace", metavar="NS", default=None, help=NAMESPACE_HELP + " For -f and --current.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True,
              help="Groups shown per category (0: all).")
@click.option("--examples", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Example flows kept per group.")
@click.option("--pending/--no-pending", default=True, show_default=True,
              help="Also report what staged policies would do (their pending verdicts).")
@click.option("--full", is_flag=True,
              help="Re-evaluate every flow under both sets, not only those an edit can affect (a check; slower).")
@click.option("--exit-code", is_flag=True, help="Exit 1 when any flow becomes denied (for CI).")
def whatif(
    edit_paths: Sequence[str], deletions: Sequence[str], db: str | None, cluster: str | None,
    flow_files: Sequence[str], since: str | None, current: Sequence[str], state_dir: str, lab_id: str,
    progress: bool | None, namespace: str | None,
    output: str, limit: int, examples: int, pending: bool, full: bool, exit_code: bool,
) -> None:
    """Replay recorded flows against the current policy set with edits applied.

    Every recorded flow is decided under the current set and under the edited one, exactly as
    `flowtui eval` decides a flow, and the differences are reported: flows newly denied, newly
    allowed, and decided by a different policy or rule, with counts per (source, destination,
    port) group, example flows, and the rule that now decides. Staged policies
    (StagedGlobalNetworkPolicy, StagedNetworkPolicy, StagedKubernetesNetworkPolicy) get their
    *pending* verdict: what they would do if promoted.

    \b
    Examples:
      flowtui whatif -f deny-db.yaml --since 24h
      flowtui whatif --delete gnp/allow-monitoring -o json
      flowtui whatif --current cluster/ -f staged.yaml --flows capture.pcap

    Invalid edits exit 2 with FILE:LINE errors, and nothing is evaluated.
    """
    from flowtui.whatif.edits import EditError, apply_edits, describe_changes, parse_deletion
    from flowtui.whatif.engine import compare
    from flowtui.whatif.frames import FlowSourceError
    from flowtui.whatif.recorded import with_recorded_pods
    from flowtui.whatif.report import build_report, render_table
    from flowtui.whatif.sources import read_flows

    db = store_path(db, cluster)
    window = _since(since)
    edits = None
    if edit_paths:
        try:
            edits = load_paths(list(edit_paths), namespace)
            if (skipped := skipped_line(edits.skipped)) is not None:
                click.echo(skipped, err=True)
        except LoadError as err:
            _load_failed(err)
    try:
        dels = [parse_deletion(d) for d in deletions]
    except EditError as err:
        fail(str(err), EXIT_INVALID)
    base = _current(current, state_dir, namespace)
    sources = _sources(db, flow_files)
    with _progress(progress) as bar:
        if bar is not None:
            bar.phase("reading flows")
        try:
            frame = read_flows(sources, window)
        except FlowSourceError as err:
            fail(str(err), EXIT_INVALID)
        if frame.height == 0 and window is None:
            fail(f"no flows in {', '.join(sources)}: nothing to replay", EXIT_NO_FLOWS)
        # imported flows name their pods: decide them as those pods when the current set does not know them
        base, recorded = with_recorded_pods(base, frame)
        if recorded:
            click.echo(f"note: {recorded:,} pods the current set does not have were taken from the flows' "
                       "recorded endpoints", err=True)
        try:
            edited = apply_edits(base, edits, dels)
        except EditError as err:
            fail(str(err), EXIT_INVALID)
        cmp = compare(frame, base, edited, pending=pending, full=full, progress=bar)
        if bar is not None:
            bar.phase("grouping changed flows")
        report = build_report(cmp, limit=limit, examples=examples, edits=describe_changes(base, edited))
    if output == "json":
        echo_json(report.to_json())
    else:
        click.echo(render_table(report))
    if exit_code and report.newly_denied:
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# propose


@click.command()
@click.option("-n", "--namespace", metavar="NS", required=True, help="Namespace to propose policy for.")
@flow_options
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--netsets/--no-netsets", default=True, show_default=True,
              help="Outside peers as NetworkSets (else inline nets in the rules).")
def propose(namespace: str, db: str | None, cluster: str | None, flow_files: Sequence[str], since: str | None,
            current: Sequence[str], state_dir: str, lab_id: str, progress: bool | None, output: str,
            netsets: bool) -> None:
    """Propose least-privilege policy for a namespace from its observed allowed flows.

    One NetworkPolicy per workload of the namespace (pods with the same stable labels), for
    ingress and egress, allowing exactly the peers, protocols and ports seen in flows the current
    policy allows; everything else is denied. Selectors use stable labels (not pod-template-hash
    and the like), ports are named where the destination names them, outside peers are
    NetworkSets. The proposal is checked before it is printed: with it applied, `flowtui whatif`
    reports no observed flow newly denied. The output is YAML that `flowtui check` accepts.

    \b
    Example:
      flowtui propose -n shop --since 7d > shop-policy.yaml
      flowtui whatif -f shop-policy.yaml --since 7d
    """
    from flowtui.whatif.propose import propose as make_proposal
    from flowtui.whatif.recorded import with_recorded_pods

    db = store_path(db, cluster)
    window = _since(since)
    res = _current(current, state_dir)  # the whole cluster: -n names the proposal's namespace only
    frame = _flows(db, flow_files, window)
    res, recorded = with_recorded_pods(res, frame)  # imported flows name their pods
    if recorded:
        click.echo(f"note: {recorded:,} pods the current set does not have were taken from the flows' "
                   "recorded endpoints", err=True)
    if namespace not in {p.namespace for p in res.pods} | {ns.name for ns in res.namespaces}:
        fail(f"namespace {namespace!r} has no pods in the current set", EXIT_INVALID)
    with _progress(progress) as bar:
        if bar is not None:
            bar.phase(f"proposing policy for {namespace} from {frame.height:,} flows")
        proposal = make_proposal(frame, res, namespace, netsets=netsets)
    if output == "json":
        echo_json({"namespace": namespace, "flows": proposal.flows, "newly_denied": proposal.newly_denied,
                   "notes": proposal.notes, "documents": proposal.documents})
    else:
        click.echo(proposal.to_yaml(), nl=False)
    for note in proposal.notes:
        click.echo(f"note: {note}", err=True)
    if proposal.newly_denied:
        fail(f"the proposal would deny {proposal.newly_denied:,} observed flows; please report this")


# --------------------------------------------------------------------------------------------
# import


@click.group(name="import")
def import_group() -> None:
    """Turn recordings from elsewhere into flowtui flows."""


@import_group.command(name="pcap")
@click.argument("capture", type=click.Path(dir_okay=False))
@click.option("-w", "--write", "out", type=click.Path(dir_okay=False), metavar="OUT.parquet",
              help="Write the flows as Parquet (for `flowtui whatif --flows OUT.parquet`).")
@click.option("--current", multiple=True, type=click.Path(allow_dash=True), metavar="PATH",
              help="Attribute addresses to the endpoints of these files instead of the datastore's.")
@_state_dir_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--limit", type=click.IntRange(0), default=50, show_default=True, help="Flows printed (0: all).")
@click.option("--progress/--no-progress", "progress", default=None,
              help="Progress on stderr [default: when stderr is a terminal].")
def import_pcap(capture: str, out: str | None, current: Sequence[str], state_dir: str, output: str, limit: int,
                progress: bool | None) -> None:
    """Turn a packet capture into flows attributed to cluster endpoints by address.

    Each connection becomes one flow: its first packet (turned around when the capture starts at
    the answer), with the packets and bytes of both directions. Addresses are attributed to the
    pods, nodes and outside hosts of the current set (when there is one).

    Reads pcap and pcapng with any link type scapy decodes (Ethernet, Linux SLL/SLL2, raw
    IPv4/IPv6, BSD loopback) and NFLOG, through VLAN and QinQ tags; VXLAN, Geneve and IP-in-IP
    packets give the inner (pod) flow with the outer (node) addresses in outer_src_ip and
    outer_dst_ip. Packets with no IP flow are counted by reason on stderr. A capture with no IP
    flow (empty, or only ARP) exits 1 and says why.

    \b
    Example:
      flowtui import pcap lab.pcap -w lab-flows.parquet
      flowtui whatif -f edit.yaml --flows lab-flows.parquet
    """
    from enforcer.resolve import ClusterState
    from flowtui.whatif.edits import EditError, current_resources
    from flowtui.whatif.frames import FlowSourceError
    from flowtui.whatif.pcap import attribute, read_capture

    with _progress(progress) as bar:
        if bar is not None:
            bar.phase(f"reading {capture}")
        try:
            frame, stats = read_capture(capture, bar.advance if bar is not None else None)
        except FlowSourceError as err:
            fail(str(err), EXIT_INVALID)
    for problem in stats.problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{capture}: {stats.summary()}", err=True)
    if frame.height == 0:
        fail(f"{capture}: no flows: " + ("the capture holds no packets" if not stats.packets
                                         else "none of its packets is an IP packet"), EXIT_NO_FLOWS)
    res: ResourceSet | None = None
    try:
        res = current_resources(list(current), None if current else _state(state_dir))
    except LoadError as err:
        _load_failed(err)
    except EditError:
        if current:
            raise
        click.echo("note: no current set (datastore empty): addresses are not attributed", err=True)
    if res is not None:
        frame = attribute(frame, ClusterState(res))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(out)
        click.echo(f"wrote {frame.height:,} flows to {out}", err=True)
        if output == "table" and not limit:
            return
    shown = frame if not limit else frame.head(limit)
    if output == "json":
        echo_json([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
                   for row in shown.iter_rows(named=True)])
        return
    cols = ["time", "proto", "src_ip", "src_port", "dst_ip", "dst_port", "icmp_type", "packets", "bytes"]
    if frame["outer_src_ip"].is_not_null().any():
        cols += ["outer_src_ip", "outer_dst_ip"]
    cols += [c for c in ("src_endpoint", "dst_endpoint") if c in frame.columns]
    rows = [["" if v is None else str(v) for v in r] for r in shown.select(cols).iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if limit and frame.height > limit:
        click.echo(f"... {frame.height - limit:,} more flows (use --limit 0 or -w OUT.parquet)", err=True)
