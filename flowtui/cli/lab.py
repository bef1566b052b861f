"""`flowtui lab up|exec|status|down`: a Calico-like cluster of network namespaces, with policy enforced.

Thin wrappers over `enforcer.lab`. `lab up` also stores the files' objects in the datastore
(see `flowtui apply`) and enforces the stored policies on every node, so after
`flowtui lab up -f scenarios/` traffic between the lab's pods is already policed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from enforcer.lab import LabPlan, plan_lab
from enforcer.reconcile import verify_rule_ids
from flowtui.cli.common import EXIT_INVALID, all_paths, echo_json, fail, namespace_option, paths_option
from flowtui.cli.state import (
    behind_lines,
    enforce,
    enforcement_behind,
    format_table,
    guarded,
    lab_option,
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
    if len(plan.pods) < 2:
        return None
    src, dst = plan.pods[0], plan.pods[1]
    v4 = next((a for a in dst.addresses if a.version == 4), None)
    target = v4 or (dst.addresses[0] if dst.addresses else None)
    return f"flowtui lab exec {src.key} -- ping -c1 -W1 {target}" if target else None


@lab.command()
@paths_option
@namespace_option
@lab_option
@state_dir_option
def up(paths: Sequence[str], more_paths: Sequence[str], namespace: str | None, lab_id: str, state_dir: str) -> None:
    """Build (or update) the lab from resources and enforce their policies in it.

    The files' objects are stored in the datastore first (as `flowtui apply -f` does: invalid
    input, or objects the lab cannot be planned with, exit 2 and change nothing); the lab is then
    planned from everything stored, built
    (idempotent: what exists and matches is kept), and every node gets its nftables table.
    Prints the nodes, pods and outside hosts with their addresses.
    """
    from enforcer.lab import lab_up

    inputs = all_paths(paths, more_paths)
    if not inputs:
        fail("no input: give files or directories with -f PATH (or - for stdin)", EXIT_INVALID)
    need_root()
    ds = open_state(state_dir)
    guarded(lambda: verify_rule_ids(ds))  # before the commit (see `flowtui apply`)
    changes = store_planned(ds, inputs, lab_id, namespace)
    counts: dict[str, int] = {}
    for change in changes.changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    summary = ", ".join(f"{n} {action}" for action, n in counts.items()) or "nothing"
    click.echo(f"datastore {getattr(ds, 'url', ds.path)}: revision {changes.revision} ({summary})", err=True)
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


@lab.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("target")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@lab_option
def exec_cmd(target: str, argv: Sequence[str], lab_id: str) -> None:
    """Run a command inside TARGET: `NAMESPACE/POD`, `node:NAME`, `external:NAME` or `underlay`.

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
    args = list(argv[1:] if argv and argv[0] == "--" else argv)
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
    nodes an interrupted apply left behind the datastore."""
    from enforcer.lab import lab_status

    need_root()
    st = guarded(lambda: lab_status(lab_id))
    nodes = [str(ns.target.name) for ns in st.namespaces if ns.target is not None and ns.target.kind == "node"]
    tables = _tables(lab_id, nodes)
    behind = enforcement_behind(state_dir, nodes)
    if output == "json":
        echo_json({**st.to_dict(), "up": st.exists, "nftables": tables, "behind": behind})
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
    for line in behind_lines(behind):
        click.echo(f"warning: {line}")


@lab.command()
@lab_option
def down(lab_id: str) -> None:
    """Remove every namespace of the lab (and so its interfaces and tables). Idempotent: safe after
    a crash and when the lab is not up."""
    from enforcer.lab import lab_down

    need_root()
    removed = guarded(lambda: lab_down(lab_id))
    if removed:
        click.echo(f"lab {lab_id}: removed {removed} namespaces")
    else:
        click.echo(f"lab {lab_id} was not up: nothing to remove")
