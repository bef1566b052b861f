"""`flowtui lab up|exec|status|down`: a Calico-like cluster of network namespaces, with policy enforced.

Thin wrappers over `enforcer.lab`. `lab up` also stores the files' objects in the datastore
(see `flowtui apply`) and enforces the stored policies on every node, so after
`flowtui lab up -f scenarios/` traffic between the lab's pods is already policed. With
`--datastore etcd` the lab runs its own etcd cluster and one agent per node, as a cluster of
real hosts would (`enforcer.lab.cluster`); the CLI then only stores, the agents enforce.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from enforcer.datastore import ChangeSet, DatastoreError, DesiredState
from enforcer.lab import LabError, LabPlan, plan_lab
from enforcer.lab.cluster import Cluster
from enforcer.reconcile import verify_rule_ids
from flowtui.cli.common import EXIT_INVALID, all_paths, echo_json, fail, namespace_option, paths_option
from flowtui.cli.state import (
    behind_lines,
    enforce,
    enforcement_behind,
    format_table,
    given_datastore,
    guarded,
    lab_cluster,
    lab_option,
    lab_refused,
    load_failed,
    need_root,
    open_state,
    runtime,
    state_dir_option,
    store_planned,
)


@click.group()
def lab() -> None:
    """A lab cluster on this machine: one network namespace per node, pod and outside host.

    Nodes share an underlay bridge; pods hang off their node through veth pairs named as Calico
    names them (`cali...`); outside hosts (`lab.flowtui.dev/v1` ExternalHost) sit on the underlay.
    Everything is named `ft-<lab>-...`, never touches the root namespace, and is removed by
    `flowtui lab down`. All lab commands need root.
    """


def _plan_text(plan: LabPlan) -> str:
    parts = [f"lab {plan.lab_id}: {len(plan.nodes)} nodes, {len(plan.pods)} pods, {len(plan.externals)} outside hosts"]
    if plan.nodes:
        rows = [[n.name, " ".join(map(str, n.addresses)), " ".join(map(str, n.pod_cidrs))] for n in plan.nodes]
        parts.append(format_table(["NODE", "ADDRESSES", "POD CIDRS"], rows))
    if plan.pods:
        rows = [[p.key, p.node, p.interface, " ".join(map(str, p.addresses))] for p in plan.pods]
        parts.append(format_table(["POD", "NODE", "INTERFACE", "ADDRESSES"], rows))
    if plan.externals:
        rows = [[e.name, " ".join(map(str, e.addresses))] for e in plan.externals]
        parts.append(format_table(["OUTSIDE HOST", "ADDRESSES"], rows))
    return "\n\n".join(parts)


def _example(plan: LabPlan) -> str | None:
    """A command to try in the new lab, as typed here (`--lab` unless it is the lab commands default to)."""
    import os

    from enforcer.lab import DEFAULT_LAB_ID

    if len(plan.pods) < 2:
        return None
    src, dst = plan.pods[0], plan.pods[1]
    v4 = next((a for a in dst.addresses if a.version == 4), None)
    target = v4 or (dst.addresses[0] if dst.addresses else None)
    lab = "" if plan.lab_id == os.environ.get("FLOWTUI_LAB", DEFAULT_LAB_ID) else f"--lab {plan.lab_id} "
    return f"flowtui lab exec {lab}{src.key} -- ping -c1 -W1 {target}" if target else None


AGENTS_TIMEOUT = 90.0  # seconds for every agent to enforce what `lab up` stored (a loaded machine)
DEFAULT_MEMBERS = 3


@lab.command()
@paths_option
@namespace_option
@lab_option
@click.option("--etcd-members", type=click.IntRange(1, 7), default=None, metavar="N",
              help=f"With --datastore etcd: members of the lab's etcd cluster (default {DEFAULT_MEMBERS}: "
                   f"the smallest cluster that survives losing one).")
@state_dir_option
def up(paths: Sequence[str], more_paths: Sequence[str], namespace: str | None, lab_id: str, etcd_members: int | None,
       state_dir: str) -> None:
    """Build (or update) the lab from resources and enforce their policies in it.

    The files' objects are stored in the datastore first (as `flowtui apply -f` does: invalid
    input, or objects the lab cannot be planned with, exit 2 and change nothing); the lab is then
    planned from everything stored, built
    (idempotent: what exists and matches is kept), and every node gets its nftables table.
    Prints the nodes, pods and outside hosts with their addresses.

    With `--datastore etcd` (the word, not a URL) the lab runs its own TLS etcd cluster of
    --etcd-members members, each in its namespace on the underlay (`etcd:m0`...), and one
    `flowtui agent` per node namespace under a supervisor; the objects go to that etcd and the
    agents enforce them (this command waits until they have). Later commands given `--lab ID`
    use that datastore without further flags. Running `lab up` again keeps the mode and starts
    members that are down.
    """
    inputs = all_paths(paths, more_paths)
    if not inputs:
        fail("no input: give files or directories with -f PATH (or - for stdin)", EXIT_INVALID)
    need_root()
    cluster = lab_cluster(lab_id)
    wanted = given_datastore()
    if wanted == "etcd" or (cluster is not None and wanted is None):
        _up_etcd(inputs, namespace, lab_id, etcd_members, state_dir)
        return
    if cluster is not None:
        fail(f"lab {lab_id} runs its own etcd ({cluster.url}); `flowtui lab down --lab {lab_id}` first to use "
             f"--datastore {wanted}", EXIT_INVALID)
    if etcd_members is not None:
        fail("--etcd-members goes with --datastore etcd", EXIT_INVALID)
    from enforcer.lab import lab_up

    ds = open_state(state_dir)
    guarded(lambda: verify_rule_ids(ds))  # before the commit (see `flowtui apply`)
    changes = store_planned(ds, inputs, lab_id, namespace)
    _echo_stored(ds, changes)
    plan = guarded(lambda: plan_lab(ds.resources(), lab_id))
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        status = lab_up(plan)
    except Exception as exc:  # LabError, OSError, pyroute2's NetlinkError
        fail(f"building lab {lab_id} failed: {exc} (`flowtui lab down --lab {lab_id}` removes what was made)")
    for missing in status.missing(plan):
        click.echo(f"warning: missing after build: {missing}", err=True)
    click.echo(_plan_text(plan))
    click.echo("")
    result = enforce(ds, lab_id)
    example = _example(plan)
    if example:
        click.echo(f"\nTry: {example}")
    if result is not None and not result.ok:
        sys.exit(1)


def _echo_stored(ds: DesiredState, changes: ChangeSet) -> None:
    counts: dict[str, int] = {}
    for change in changes.changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in counts.items()) or "nothing"
    click.echo(f"datastore {getattr(ds, 'url', ds.path)}: revision {changes.revision} ({summary})", err=True)


def _up_etcd(inputs: Sequence[str], namespace: str | None, lab_id: str, members: int | None, state_dir: str) -> None:
    """`lab up --datastore etcd`: members, supervisor, store, build, wait for the agents."""
    import shutil

    from enforcer.datastore import TLSFiles, open_datastore
    from enforcer.lab import lab_up
    from enforcer.lab.cluster import create_cluster, start_member, start_supervisor, wait_ready
    from enforcer.lab.state import lab_namespaces
    from enforcer.model import ResourceSet
    from flowtui.collector.dataset import lab_flows_dir

    cluster = lab_cluster(lab_id)
    if cluster is not None and members is not None and members != len(cluster.members):
        fail(f"lab {lab_id} runs {len(cluster.members)} etcd members; `flowtui lab down --lab {lab_id}` first to "
             f"change that", EXIT_INVALID)
    count = len(cluster.members) if cluster is not None else members or DEFAULT_MEMBERS
    if cluster is None and "-" not in inputs:
        _check_alone(inputs, namespace, lab_id, count)
    if shutil.which("etcd") is None:
        fail("--datastore etcd needs `etcd` on PATH (apt-get install etcd-server)")
    infra = guarded(lambda: plan_lab(ResourceSet(), lab_id, etcd_members=count))
    try:
        existing = set(lab_namespaces(lab_id))
        if cluster is None or any(m.netns not in existing for m in infra.etcd):
            lab_up(infra, prune=False)  # the underlay and the members' namespaces, before any object
        if cluster is None:
            cluster = create_cluster(infra, str(lab_flows_dir(lab_id)))  # `--cluster` reads it by default
        for member in cluster.members:
            start_member(cluster, member.name)
        supervisor = start_supervisor(cluster)
        wait_ready(cluster)
    except Exception as exc:  # LabError, OSError, pyroute2's NetlinkError
        fail(f"starting lab {lab_id}'s etcd failed: {exc} (`flowtui lab down --lab {lab_id}` removes what was made)")
    ds = open_datastore(cluster.url, state_dir, TLSFiles(cluster.ca, cluster.cert, cluster.key))
    changes = store_planned(ds, inputs, lab_id, namespace)
    _echo_stored(ds, changes)
    plan = guarded(lambda: plan_lab(ds.resources(), lab_id, etcd_members=count))
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    try:
        status = lab_up(plan)
    except Exception as exc:
        fail(f"building lab {lab_id} failed: {exc} (`flowtui lab down --lab {lab_id}` removes what was made)")
    for missing in status.missing(plan):
        click.echo(f"warning: missing after build: {missing}", err=True)
    click.echo(_plan_text(plan))
    click.echo("")
    click.echo(format_table(["ETCD MEMBER", "ADDRESS", "FROM THIS HOST"],
                            [[m.name, m.address, f"127.0.0.1:{m.forward_port}"] for m in cluster.members]))
    click.echo(f"\ndatastore {cluster.url} (--lab {lab_id} implies it; TLS files in {cluster.dir / 'tls'})")
    click.echo(f"enforcement: one agent per node under supervisor pid {supervisor}; this command does not "
               f"reconcile nodes itself in etcd mode")
    lagging = _wait_agents(cluster, [n.name for n in plan.nodes], changes.revision)
    example = _example(plan)
    if example:
        click.echo(f"\nTry: {example}")
    if lagging:
        for line in lagging:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)


def _check_alone(inputs: Sequence[str], namespace: str | None, lab_id: str, members: int) -> None:
    """Before a new lab's etcd is started: the files, alone, load and plan (exit 2 otherwise),
    so bad input starts nothing. The stored state is checked again when they are stored."""
    import tempfile

    from enforcer.datastore import Datastore
    from enforcer.loader import LoadError

    with tempfile.TemporaryDirectory(prefix="flowtui-lab-check-") as scratch:
        try:
            preview = Datastore(scratch).preview_documents(inputs, namespace)
        except LoadError as err:
            load_failed(err)
        except DatastoreError as err:
            fail(str(err), EXIT_INVALID)
        try:
            plan_lab(preview.resources, lab_id, etcd_members=members)
        except LabError as err:
            lab_refused(err, lab_id, preview.sources)


def _wait_agents(cluster: Cluster, nodes: list[str], revision: int, timeout: float = AGENTS_TIMEOUT) -> list[str]:
    """Until every node's agent enforces `revision`; what is still behind after `timeout`."""
    from enforcer.lab.cluster import agents_status

    deadline = time.monotonic() + timeout
    while True:
        agents = {a["node"]: a for a in agents_status(cluster)}
        behind = [n for n in nodes if not (agents.get(n, {}).get("state") == "in-sync"
                                           and (agents[n].get("revision") or 0) >= revision)]
        if not behind:
            click.echo(f"agents: {len(nodes)} of {len(nodes)} nodes enforce revision {revision}")
            return []
        if time.monotonic() > deadline:
            return [f"node {n}: agent {agents.get(n, {}).get('state', 'not started')} at revision "
                    f"{agents.get(n, {}).get('revision')}, not {revision} after {timeout:.0f} s "
                    f"(log: {cluster.agent_log(n)})" for n in behind]
        time.sleep(0.2)


@lab.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("target")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@lab_option
def exec_cmd(target: str, argv: Sequence[str], lab_id: str) -> None:
    """Run a command inside TARGET: `NAMESPACE/POD`, `node:NAME`, `external:NAME`, `etcd:MEMBER` or `underlay`.

    Put the command after `--` and options (`--lab`) before TARGET:
    `flowtui lab exec --lab lab production/frontend -- curl 10.244.2.10:9000`. Exits with the
    command's exit code. The command sees only the target's interfaces and addresses.
    """
    from enforcer.lab import LabError, command_in, parse_target

    need_root()
    try:
        parse_target(target)
    except LabError as err:
        fail(str(err), EXIT_INVALID)
    if argv[0] != "--" and argv[0].startswith("-"):  # else `--lab ID` would run as the command, in another lab
        fail(f"{argv[0]} after TARGET: options go before it, the command after --: "
             f"flowtui lab exec {argv[0]} ... {target} -- CMD...", EXIT_INVALID)
    args = list(argv[1:] if argv[0] == "--" else argv)
    if not args:
        fail("no command: put it after --", EXIT_INVALID)
    command = guarded(lambda: command_in(lab_id, target, args))
    import subprocess

    try:
        done = subprocess.run(command)
    except OSError as exc:
        fail(f"cannot run {command[0]}: {exc}")
    sys.exit(done.returncode)


def _tables(lab_id: str, nodes: list[str]) -> dict[str, dict[str, Any] | None]:
    backend = runtime().backend(lab_id)
    out: dict[str, dict[str, Any] | None] = {}
    for node in nodes:
        try:
            table = backend.current(node)
        except Exception as exc:  # report, do not fail the status
            out[node] = {"error": str(exc)}
            continue
        out[node] = None if table is None else {
            "chains": len(table.chains),
            "rules": sum(len(c.rules) for c in table.chains.values()),
            "sets": len(table.sets),
        }
    return out


@lab.command()
@lab_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@state_dir_option
def status(lab_id: str, output: str, state_dir: str) -> None:
    """What exists of the lab: namespaces, interfaces, addresses, each node's nftables table, and
    nodes an interrupted apply left behind the datastore. A lab in etcd mode also shows its
    datastore (URL, TLS files, members with pid and state) and its agents (node, pid, state,
    the datastore revision each enforces, restarts)."""
    from enforcer.lab import lab_status

    need_root()
    st = guarded(lambda: lab_status(lab_id))
    nodes = [str(ns.target.name) for ns in st.namespaces if ns.target is not None and ns.target.kind == "node"]
    tables = _tables(lab_id, nodes)
    cluster = lab_cluster(lab_id)
    extra: dict[str, Any] = {}
    if cluster is not None:
        from enforcer.lab.cluster import agents_status, cluster_status

        extra = {"datastore": cluster_status(cluster), "agents": _with_applied(agents_status(cluster), state_dir)}
        behind: dict[str, Any] = {}  # the agents say which revision they enforce
    else:
        behind = enforcement_behind(state_dir, nodes)
    if output == "json":
        echo_json({**st.to_dict(), "up": st.exists, "nftables": tables, "behind": behind, **extra})
        return
    if not st.exists:
        click.echo(f"lab {lab_id} is not up")
        return
    click.echo(st.describe(), nl=False)
    click.echo("nftables (table inet flowtui):")
    for node, info in tables.items():
        if info is None:
            click.echo(f"  node:{node}  no table")
        elif "error" in info:
            click.echo(f"  node:{node}  cannot read: {info['error']}")
        else:
            click.echo(f"  node:{node}  {info['chains']} chains, {info['rules']} rules, {info['sets']} sets")
    if extra:
        _echo_cluster(extra["datastore"], extra["agents"])
    for line in behind_lines(behind):
        click.echo(f"warning: {line}")


def _with_applied(agents: list[dict[str, Any]], state_dir: str) -> list[dict[str, Any]]:
    """Each agent's row with what it published in the lab's etcd: the digest and rule count of
    the table its node holds (None when it published nothing, or etcd cannot be read)."""
    from flowtui.cli.state import open_state, published_states

    published = {str(p.get("node")): p for p in published_states(open_state(state_dir))}
    return [{**a, "digest": published.get(a["node"], {}).get("digest"),
             "rules": published.get(a["node"], {}).get("rules")} for a in agents]


def _echo_cluster(datastore: dict[str, Any], agents: list[dict[str, Any]]) -> None:
    click.echo(f"datastore {datastore['url']} (supervisor pid {datastore['supervisor'] or 'not running'})")
    click.echo(f"  ca {datastore['ca']}  cert {datastore['cert']}  key {datastore['key']}")
    rows = [[m["name"], m["address"], str(m["pid"] or "-"), m["state"]] for m in datastore["members"]]
    click.echo(format_table(["MEMBER", "ADDRESS", "PID", "STATE"], rows))
    rows = [[a["node"], str(a["pid"] or "-"), a["state"], str(a["revision"] if a["revision"] is not None else "-"),
             str(a["restarts"]), (a.get("digest") or "-")[:12], str(a.get("rules") if a.get("rules") is not None
                                                                      else "-")] for a in agents]
    click.echo(format_table(["AGENT", "PID", "STATE", "REVISION", "RESTARTS", "TABLE", "RULES"], rows))


@lab.command()
@lab_option
def down(lab_id: str) -> None:
    """Remove every namespace of the lab (and so its interfaces and tables). Idempotent: safe after
    a crash and when the lab is not up. In etcd mode the supervisor, the agents and the etcd
    members are stopped first, and the lab's certificates and etcd data removed."""
    from enforcer.lab import lab_down

    need_root()
    removed = guarded(lambda: lab_down(lab_id))
    if removed:
        click.echo(f"lab {lab_id}: removed {removed} namespaces")
    else:
        click.echo(f"lab {lab_id} was not up: nothing to remove")
