"""`flowtui agent`: keep one node's kernel table in step with an etcd datastore (`enforcer.agent`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from flowtui.cli.common import EXIT_INVALID, fail
from flowtui.cli.state import guarded, lab_option, need_root, open_state, runtime, state_dir_option


def _print(event: dict[str, Any]) -> None:
    click.echo(json.dumps(event))
    sys.stdout.flush()


@click.command(name="agent")
@click.option("--node", required=True, metavar="NAME", help="The node this agent enforces (a node of the lab).")
@click.option("--flows-dir", "flows_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also collect this node's flows (NFLOG, conntrack) into the cluster flows dataset in DIR "
                   "(`flowtui query --cluster DIR`; as `flowtui collect --node NAME --flows-dir DIR`).")
@lab_option
@state_dir_option
def agent_cmd(node: str, flows_dir: str | None, lab_id: str, state_dir: str) -> None:
    """Watch an etcd datastore and enforce it on one node of a lab, until stopped.

    Lists the datastore, reconciles the node, then watches from the list's revision and
    reconciles on every change (a toggle is one set element, as with `policy disable`); lists
    again when etcd compacted the history it needed. When etcd cannot be reached the node keeps
    its last table (fail static) and the agent reports `degraded` until etcd is back. Prints one
    JSON line per event (reconciled, relist, degraded) on stdout. Needs --datastore etcd://...
    """
    from enforcer.agent import Agent
    from enforcer.datastore.etcd import EtcdDatastore
    from enforcer.reconcile import Reconciler

    ds = open_state(state_dir)
    if not isinstance(ds, EtcdDatastore):
        fail("flowtui agent needs an etcd datastore: --datastore etcd://HOST:PORT (or $FLOWTUI_DATASTORE)",
             EXIT_INVALID)
    need_root()
    rt = runtime()
    nodes = guarded(lambda: rt.lab_nodes(lab_id))
    if node not in nodes:
        fail(f"lab {lab_id} has no node {node!r} up (nodes: {', '.join(nodes) or 'none'})")
    compile_fn, options = rt.compiler()
    reconciler = Reconciler(ds, rt.backend(lab_id), compile_fn, options, lambda: [node], lab_id=lab_id)
    # its own client: the collector's writer thread reads the datastore beside the agent's loop
    flows = _start_flows(open_state(state_dir), node, lab_id, flows_dir, state_dir) if flows_dir else None
    try:
        Agent(ds, reconciler, node, _print).run()
    except KeyboardInterrupt:
        pass
    finally:
        if flows is not None:
            flows.stop()


def _start_flows(ds: Any, node: str, lab_id: str, flows_dir: str, state_dir: str) -> Any:
    """The node's flow collector, in a thread beside the agent (`flowtui.collector.node`)."""
    from pathlib import Path

    from enforcer.lab.names import netns_name
    from flowtui.collector.node import NodeFlows, local_store, node_config

    cfg = node_config(ds, node=node, netns=netns_name(lab_id, f"node:{node}"), flows_dir=Path(flows_dir),
                      db=local_store(state_dir, lab_id, node), lab_id=lab_id)
    flows = NodeFlows(cfg)
    try:
        flows.start()
    except (OSError, ValueError) as exc:
        fail(f"cannot collect the flows of node {node}: {exc}")
    import signal

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # stopped by systemd or a supervisor: the
        signal.signal(signal.SIGTERM, _interrupt)  # collector drains and writes its last parts first
    return flows


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["agent_cmd"]
