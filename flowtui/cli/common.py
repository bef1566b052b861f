"""What every command shares: loading resources with clean errors, output formats, exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from importlib import resources as importlib_resources
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from enforcer.loader import LoadError, load_paths, skipped_line
from enforcer.model import ResourceSet

if TYPE_CHECKING:
    from flowtui.query.run import Source

EXIT_INVALID = 2  # invalid input: nothing was changed


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def open_store(db: str, hint: str, verb: str) -> Source:
    """The flow store `db` for reading, or exit with the problem and `hint`; says so when a
    collector is writing it and its snapshot is read instead (`verb`: what is done with it)."""
    from flowtui.query.run import SourceError, open_source

    try:
        source = open_source(db)
    except SourceError as err:
        fail(f"{err} ({hint})")
    if source.kind == "snapshot":
        click.echo(f"note: a collector is writing {db}; {verb} its snapshot {source.path}", err=True)
    return source


CLUSTER_HELP = (
    "Read the cluster flows dataset in DIR (every node's flows: `flowtui agent --flows-dir DIR`, `flowtui "
    "collect --node NAME --flows-dir DIR`); `--cluster` alone: the lab's ($FLOWTUI_LAB, or the one that is up) "
    "default, $FLOWTUI_HOME/flows/<lab>."
)


def cluster_option(func: click.decorators.FC) -> click.decorators.FC:
    """`--cluster [DIR]`: the cluster flows dataset instead of one store (see `store_path`)."""
    return click.option("--cluster", "cluster", metavar="DIR", is_flag=False, flag_value="", default=None,
                        help=CLUSTER_HELP)(func)


def store_path(db: str | None, cluster: str | None, default_db: str | None = None) -> str | None:
    """The flow store a reading command opens: `--cluster DIR` (checked), else `--db`. `default_db`:
    the --db default, so an explicit --db next to --cluster is refused."""
    if cluster is None:
        return db
    if db is not None and db != default_db:
        fail("give --db or --cluster, not both", EXIT_INVALID)
    if cluster == "":
        cluster = str(_lab_flows_dir())
    from flowtui.interop.cluster import is_cluster_dir

    if not is_cluster_dir(cluster):
        fail(f"--cluster {cluster}: no cluster flows dataset there (nothing written by `flowtui agent --flows-dir` "
             "or `flowtui collect --node NAME --flows-dir` yet)", EXIT_INVALID)
    return cluster


def _lab_flows_dir() -> Path:
    import os

    from flowtui.collector.dataset import lab_flows_dir

    context = click.get_current_context(silent=True)
    given = context is not None and context.get_parameter_source("lab_id") == click.core.ParameterSource.COMMANDLINE
    lab = context.params["lab_id"] if context is not None and given else os.environ.get("FLOWTUI_LAB")
    if not lab:
        from flowtui.collector.service import labs_up

        up = labs_up()
        if len(up) != 1:
            fail("--cluster without DIR reads a lab's flows: set $FLOWTUI_LAB or give --cluster DIR "
                 f"({len(up)} labs are up)", EXIT_INVALID)
        lab = up[0]
    return lab_flows_dir(lab)


def load_or_exit(paths: Sequence[str], namespace: str | None = None) -> ResourceSet:
    """Load and validate; on any problem print every one of them (file:line) and exit 2.
    `namespace`: the command's `-n` (see `namespace_option`)."""
    if not paths:
        fail("no input: give files or directories with -f PATH (or - for stdin)", EXIT_INVALID)
    try:
        res = load_paths(list(paths), namespace)
    except LoadError as err:
        click.echo(str(err), err=True)
        n = len(err.problems)
        click.echo(f"{n} problem{'s' if n != 1 else ''} found; nothing was changed.", err=True)
        sys.exit(EXIT_INVALID)
    skipped = skipped_line(res.skipped)
    if skipped:
        click.echo(skipped, err=True)
    return res


def paths_option(func: click.decorators.FC) -> click.decorators.FC:
    """`-f PATH` (repeatable); extra positional paths are accepted too: `-f a.yaml b.yaml`."""
    func = click.argument("more_paths", nargs=-1, type=click.Path(allow_dash=True))(func)
    return click.option(
        "-f",
        "--filename",
        "paths",
        multiple=True,
        type=click.Path(allow_dash=True),
        help="File or directory of YAML/JSON resources, or - for stdin. Repeatable.",
    )(func)


NAMESPACE_HELP = (
    "Namespace for namespaced objects written without metadata.namespace (default: default); "
    "an object in another namespace is an error, as with kubectl apply -n."
)


def namespace_option(func: click.decorators.FC) -> click.decorators.FC:
    """kubectl's `-n/--namespace NS` for commands that read resource files."""
    return click.option("-n", "--namespace", metavar="NS", default=None, help=NAMESPACE_HELP)(func)


def all_paths(paths: Sequence[str], more_paths: Sequence[str]) -> list[str]:
    return [*paths, *more_paths]


def echo_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def scenario_dir(name: str = "article") -> Path:
    """The shipped example scenarios (the Calico article's five), as a directory path."""
    root = importlib_resources.files("flowtui.scenarios") / name
    return Path(str(root))
