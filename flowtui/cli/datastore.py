"""`flowtui datastore check|repair`: verify the stored desired state, rebuild what can be rebuilt.

See `enforcer.datastore.integrity` for what is checked and what a repair does (and does not).
"""

from __future__ import annotations

import sys

import click

from enforcer.datastore import Datastore, DatastoreError, DesiredState
from enforcer.datastore.integrity import Report, check, nodes_behind, repair
from flowtui.cli.common import echo_json, fail
from flowtui.cli.state import enforce, guarded, lab_option, open_state, runtime, state_dir_option


@click.group(name="datastore")
def datastore_group() -> None:
    """Verify the datastore (`check`) and rebuild what can be rebuilt (`repair`).

    Every read of the datastore already verifies what it reads and refuses damage with an error
    naming the file; these commands say everything that is wrong at once, and repair it.
    """


def _print(report: Report, output: str) -> None:
    if output == "json":
        echo_json(report.to_json())
        return
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    for line in report.notes:
        click.echo(line)
    for line in report.problems + report.behind_lines():
        click.echo(f"problem: {line}", err=True)
    n = len(report.problems) + len(report.behind)
    click.echo("datastore OK" if report.ok else f"{n} problem{'s' if n != 1 else ''} found", err=not report.ok)


def _must_exist(ds: Datastore) -> None:
    if not ds.path.is_dir():
        fail(f"no datastore at {ds.path}: nothing to check (give --state-dir or set $FLOWTUI_HOME)")


def _check_remote(store: DesiredState, output: str) -> None:
    """An etcd datastore: every object read at one revision and loaded (each transaction is
    whole, so there is no index or torn file to verify), and the rule ids the machines published;
    exit 1 naming what does not load."""
    from enforcer.loader import LoadError
    from enforcer.ruleids import RuleIdError

    try:
        objects = store.objects()
        store.resources()
        problems: list[str] = []
    except LoadError as err:
        problems = [str(p) for p in err.problems]
    except DatastoreError as err:
        fail(str(err))
    try:  # what the machines published of their rule ids: no id with two meanings
        store.rule_table()
    except RuleIdError as err:
        problems.append(str(err))
    except DatastoreError as err:
        fail(str(err))
    if output == "json":
        echo_json({"datastore": str(store), "objects": len(objects), "ok": not problems, "problems": problems})
    else:
        for problem in problems:
            click.echo(f"error: {problem}")
        click.echo(f"{store}: {len(objects)} objects, " + ("all load" if not problems else f"{len(problems)} problems"))
    if problems:
        sys.exit(1)


def _live_only(report: Report, lab_id: str) -> None:
    """Only nodes of the lab that is up can be behind (a lab that is down enforces nothing)."""
    live = set(guarded(lambda: runtime().lab_nodes(lab_id)))
    report.behind = {n: r for n, r in report.behind.items() if n in live}


@datastore_group.command(name="check")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@lab_option
@state_dir_option
def check_cmd(output: str, lab_id: str, state_dir: str) -> None:
    """Read and verify everything stored: the index, every document (checksum, and that it loads),
    rules.jsonl and ids.jsonl (whole lines, no id with two meanings, none lost), and whether every
    node of the lab enforces the datastore's revision. Writes nothing; exit 1 when anything is wrong."""
    store = open_state(state_dir)
    if not isinstance(store, Datastore):
        _check_remote(store, output)
        return
    ds = store
    _must_exist(ds)
    report = check(ds)
    _live_only(report, lab_id)
    _print(report, output)
    if not report.ok:
        sys.exit(1)


@datastore_group.command(name="repair")
@click.option("--drop-damaged", is_flag=True,
              help="Remove objects whose stored document is damaged from the index (re-apply them after).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@lab_option
@state_dir_option
def repair_cmd(drop_damaged: bool, output: str, lab_id: str, state_dir: str) -> None:
    """Rebuild what can be rebuilt, then enforce the result on the lab's nodes (as root).

    A lost or damaged state.json is rebuilt from the documents (the newest revision of each
    object; toggles only the index held are lost and reported); a torn last line of rules.jsonl or
    ids.jsonl is cut; ids that rules.jsonl knows and ids.jsonl lost are restored or retired, never
    given again; damaged documents are reported (removed from the index with --drop-damaged).
    Nodes left behind by an interrupted apply get the datastore's revision. Exit 1 when something
    is still wrong."""
    store = open_state(state_dir)
    if not isinstance(store, Datastore):
        fail(f"{store}: repair is for the directory datastore (etcd keeps every write whole itself); "
             f"`flowtui datastore check` reads and verifies what it holds")
    ds = store
    _must_exist(ds)
    report = guarded(lambda: repair(ds, drop_damaged=drop_damaged))
    _live_only(report, lab_id)
    if not report.problems:  # a datastore that reads: give it to the nodes (heals those left behind)
        if runtime().is_root():
            enforce(ds, lab_id, echo=output != "json")
            report.behind = nodes_behind(ds, ds.revision)
            _live_only(report, lab_id)
        elif report.behind:
            click.echo("not root: the nodes left behind are enforced by the next apply as root", err=True)
    _print(report, output)
    if not report.ok:
        sys.exit(1)


__all__ = ["datastore_group"]
