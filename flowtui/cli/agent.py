"""`flowtui agent`: keep one node's kernel table in step with an etcd datastore (`enforcer.agent`).

Where the table goes (one code path, `enforcer.nft.node_backend.NodeBackend`):

* `--netns NS`: in lab namespace NS (its addresses come from its lab's plan);
* `--host`: in the namespace the process runs in — the host's own, or the one `ip netns exec`
  put it in (that is how tests run the host mode: never in the root namespace);
* neither: the node's namespace in lab `--lab` (what `flowtui lab up --datastore etcd` runs).
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from flowtui.cli.common import EXIT_INVALID, fail
from flowtui.cli.state import guarded, lab_option, need_root, open_state, runtime, state_dir_option

_NODE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def _print(event: dict[str, Any]) -> None:
    click.echo(json.dumps(event))
    sys.stdout.flush()


def start_flow_collection(ds: Any, flows_dir: str, node: str, netns: str | None, lab: str | None,
                          state_dir: str, metrics: Any) -> Callable[[], None]:
    """`--flows-dir`: this node's flow collector (NFLOG + conntrack of `netns`, None: this
    namespace) in a thread beside the agent, appending to the cluster's Parquet dataset
    (`flowtui.collector.node`); its NFLOG counts feed `metrics.collector(...)`. Returns the function
    that stops it (the collector drains and writes its last parts first)."""
    from pathlib import Path

    from enforcer.agent_metrics import CollectorCounts
    from flowtui.collector.node import NodeFlows, local_store, node_config

    cfg = node_config(ds, node=node, netns=netns, flows_dir=Path(flows_dir),
                      db=local_store(state_dir, lab, node), lab_id=lab)
    flows = NodeFlows(cfg)
    try:
        flows.start()
    except (OSError, ValueError) as exc:
        fail(f"cannot collect the flows of node {node}: {exc}")

    def counts() -> CollectorCounts:
        book = flows.collector.book
        return CollectorCounts(received=book.stat_total("received"), stored=book.stat_total("stored"),
                               lost=book.lost_by_cause())

    metrics.collector(counts)
    return lambda: None if flows.stop() is None else None


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def dump_stacks_on_sigusr1() -> None:
    """SIGUSR1 writes every thread's Python stack to stderr (the agent's log under a lab's
    supervisor), from C, even while Python code is blocked: where a hung agent waits."""
    import faulthandler

    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError):  # stderr without a descriptor (a test's runner): no dumps
        pass


def _placement(node: str, netns: str | None, host: bool, lab_id: str, lab_given: bool) -> tuple[str | None, str | None]:
    """(namespace, lab): where the table goes (None: this namespace) and whose plan gives the
    addresses (None: the datastore's own, as on a real host)."""
    from enforcer.lab import LabError, netns_name
    from enforcer.lab.names import lab_id_of_netns

    if netns and host:
        fail("--netns and --host exclude each other: the table goes into one namespace", EXIT_INVALID)
    if host:
        return None, (lab_id if lab_given else None)
    if netns:
        owner = lab_id_of_netns(netns)
        if owner is None:
            fail(f"--netns {netns}: not a flowtui lab namespace (ft-<lab>-...); for another namespace, "
                 f"run the agent inside it: ip netns exec {netns} flowtui agent --host ...", EXIT_INVALID)
        if lab_given and owner != lab_id:
            fail(f"--netns {netns} belongs to lab {owner}, not --lab {lab_id}", EXIT_INVALID)
        return netns, owner
    try:
        return netns_name(lab_id, f"node:{node}"), lab_id
    except LabError as err:
        fail(f"--lab {lab_id} --node {node}: {err}", EXIT_INVALID)


@click.command(name="agent")
@click.option("--node", required=True, metavar="NAME", envvar="FLOWTUI_NODE",
              help="The node this agent enforces: its Node's name (also $FLOWTUI_NODE).")
@click.option("--netns", metavar="NS", help="Enforce in lab namespace NS (ft-<lab>-node-<name>).")
@click.option("--host", is_flag=True,
              help="Enforce in the namespace this process runs in: on a real host, the host's own. Explicit "
                   "opt-in; touches only the table inet flowtui; failsafe ports stay open first.")
@click.option("--metrics", "metrics_addr", metavar="HOST:PORT", envvar="FLOWTUI_METRICS",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9091, [::1]:9091; "
                   "also $FLOWTUI_METRICS).")
@click.option("--flows-dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Collect this node's flows (NFLOG + conntrack) into the cluster's dataset under DIR.")
@lab_option
@state_dir_option
@click.pass_context
def agent_cmd(ctx: click.Context, node: str, netns: str | None, host: bool, metrics_addr: str | None,
              flows_dir: str | None, lab_id: str, state_dir: str) -> None:
    """Watch an etcd datastore and enforce it on one node, until stopped.

    Lists the datastore, reconciles the node, then watches from the list's revision and
    reconciles on every change (a toggle is one set element, as with `policy disable`); lists
    again when etcd compacted the history it needed. The table goes into lab namespace --netns,
    or with --host into the namespace the agent runs in (the host's own on a real host), or else
    into node NAME's namespace of lab --lab. A restart adopts the live table (nothing flushed).

    When etcd cannot be reached the node keeps its last table (fail static) and the agent reports
    `degraded` until etcd is back. Prints one JSON line per event (reconciled, relist, degraded,
    failed) on stdout; keeps its state in <state-dir>/etcd/<hash>/agents/NAME.json, which
    `flowtui status` shows; --metrics serves the same as Prometheus metrics.
    Needs --datastore etcd://... (or etcds:// with --etcd-ca/--etcd-cert/--etcd-key).
    """
    from enforcer.agent import Agent
    from enforcer.agent_metrics import AgentMetrics, BadAddress, parse_address
    from enforcer.agent_status import Publisher, StatusWriter
    from enforcer.datastore.etcd import EtcdDatastore
    from enforcer.datastore.shared import publish_agent
    from enforcer.lab.kernel import place_label
    from enforcer.nft.node_backend import NodeBackend
    from enforcer.reconcile import Reconciler

    dump_stacks_on_sigusr1()
    if not _NODE_NAME.fullmatch(node):
        fail(f"--node {node!r}: not a node name (letters, digits, '.', '-', '_'; 1-253 characters)", EXIT_INVALID)
    if metrics_addr is not None:
        try:
            parse_address(metrics_addr)
        except BadAddress as err:
            fail(f"--metrics {err}", EXIT_INVALID)
    lab_given = ctx.get_parameter_source("lab_id") not in (ParameterSource.DEFAULT, None)
    place, lab = _placement(node, netns, host, lab_id, lab_given)
    ds = open_state(state_dir)
    if not isinstance(ds, EtcdDatastore):
        fail("flowtui agent needs an etcd datastore: --datastore etcd://HOST:PORT (or $FLOWTUI_DATASTORE)",
             EXIT_INVALID)
    need_root()
    if lab is not None:
        nodes = guarded(lambda: runtime().lab_nodes(lab))
        if node not in nodes:
            fail(f"lab {lab} has no node {node!r} up (nodes: {', '.join(nodes) or 'none'})")
    if place is None:
        click.echo(f"flowtui agent: enforcing node {node} in this process's own network namespace "
                   f"(--host): table inet flowtui only", err=True)
    compile_fn, options = runtime().compiler()
    # WireGuard is the lab's business only when the table goes into the lab's own node namespace.
    own_lab = lab if place is not None else None
    backend = NodeBackend(node, place, lab_id=own_lab)
    reconciler = Reconciler(ds, backend, compile_fn, options, lambda: [node], lab_id=lab)
    metrics = AgentMetrics(node)
    # the state is also published in etcd (its own client: a thread beside the agent's loop)
    shared = open_state(state_dir)
    assert isinstance(shared, EtcdDatastore)
    publisher = Publisher(lambda doc: publish_agent(shared.kv, node, doc))
    status = StatusWriter(ds.path, node, place_label(place), str(ds), publisher)
    server = None
    stop_flows: Callable[[], None] | None = None
    # SIGTERM (systemd, a supervisor) ends the agent like Ctrl-C: collection drains, metrics close;
    # the table stays (fail static).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if metrics_addr is not None:
            try:
                server = metrics.serve(metrics_addr)
            except OSError as err:
                fail(str(err.strerror or err))
        if flows_dir is not None:
            # its own client: the collector's writer thread reads the datastore beside the agent's loop
            stop_flows = start_flow_collection(open_state(state_dir), flows_dir, node, place, lab, state_dir,
                                               metrics)
        Agent(ds, reconciler, node, _print, metrics=metrics, status=status).run()
    except KeyboardInterrupt:
        pass
    finally:
        if stop_flows is not None:
            stop_flows()
        if server is not None:
            server.close()
        publisher.close()
        backend.close()


__all__ = ["agent_cmd", "start_flow_collection"]
