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
@lab_option
@state_dir_option
def agent_cmd(node: str, lab_id: str, state_dir: str) -> None:
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
    try:
        Agent(ds, reconciler, node, _print).run()
    except KeyboardInterrupt:
        pass


__all__ = ["agent_cmd"]
