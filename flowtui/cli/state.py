"""`flowtui apply`, `delete`, `get` and `policy disable|enable`: the desired state and its enforcement.

The desired state lives in a datastore directory: `--state-dir DIR`, else `$FLOWTUI_HOME`, else
/var/lib/flowtui (see `enforcer.datastore`). Commands that change it also enforce it on the nodes
of a running lab (`--lab ID`, default `lab`, or `$FLOWTUI_LAB`), through one nftables transaction
per node. Everything these commands need from the outside world (the compiler, the backend, the
lab's nodes, the root check) comes from a `Runtime`, which tests replace:
`CliRunner().invoke(cli, [...], obj=Runtime(...))`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click
import yaml

from enforcer.datastore import (
    DATASTORE_ENV,
    DEFAULT_HOME,
    HOME_ENV,
    PASSWORD_ENV,
    BadDatastoreURL,
    ChangeSet,
    Datastore,
    DatastoreError,
    DesiredState,
    Login,
    NotFound,
    Preview,
    StoredObject,
    TLSFiles,
    UnknownKind,
    open_datastore,
    read_password,
    resolve_kinds,
)
from enforcer.lab import DEFAULT_LAB_ID, LabError
from enforcer.lab.cluster import Cluster, read_cluster, supervisor_pid
from enforcer.lab.names import check_lab_id
from enforcer.loader import LoadError, skipped_line
from enforcer.loader.cnp import cnp_placement
from enforcer.loader.objects import KINDS
from enforcer.nft.backend import Backend
from enforcer.reconcile import CompileFn, Reconciler, ReconcileResult, verify_rule_ids
from enforcer.ruleids import RuleIdError
from flowtui.cli.common import EXIT_INVALID, all_paths, echo_json, fail, namespace_option, paths_option

T = TypeVar("T")
LAB_ENV = "FLOWTUI_LAB"
ROOT_MESSAGE = "needs root (network namespaces and nftables): run as root"


# --------------------------------------------------------------------------------------------
# What the commands need from outside


def default_compiler() -> tuple[CompileFn, Any]:
    """The nftables compiler (`enforcer.nft.compiler.compile_node`) and the options every front
    end uses (`default_options`: the core's defaults and FLOWTUI_DECISION_BUDGET)."""
    try:
        module = importlib.import_module("enforcer.nft.compiler")
    except ImportError as exc:
        fail(f"the nftables compiler is not available: {exc}")
    compile_fn: CompileFn = module.compile_node
    decision_budget_setting()  # a bad setting: a clear error, exit 2
    return compile_fn, module.default_options()


def decision_budget_setting() -> int | None:
    """FLOWTUI_DECISION_BUDGET: cells per workload chain for decision maps (0: the rule walk)."""
    from enforcer.nft.compiler import decision_budget_setting as setting

    try:
        return setting()
    except ValueError as err:
        fail(str(err), EXIT_INVALID)


def default_backend(lab_id: str) -> Backend:
    from enforcer.lab import netns_name
    from enforcer.nft.backend import KernelBackend

    return KernelBackend(lab_id, lambda node: netns_name(lab_id, f"node:{node}"))


def default_lab_nodes(lab_id: str) -> list[str]:
    """Nodes of lab `lab_id` whose namespaces exist."""
    from enforcer.lab.names import target_of_netns
    from enforcer.lab.state import lab_namespaces

    targets = (target_of_netns(lab_id, name) for name in lab_namespaces(lab_id))
    return [t.name for t in targets if t is not None and t.kind == "node"]


@dataclass
class Runtime:
    """The outside world of the state and lab commands; tests pass their own as `obj=`."""

    compiler: Callable[[], tuple[CompileFn, Any]] = default_compiler
    backend: Callable[[str], Backend] = default_backend
    lab_nodes: Callable[[str], list[str]] = default_lab_nodes
    is_root: Callable[[], bool] = field(default=lambda: os.geteuid() == 0)


def runtime() -> Runtime:
    ctx = click.get_current_context()
    if not isinstance(ctx.obj, Runtime):
        ctx.obj = Runtime()
    return ctx.obj


def need_root(dry_run_hint: bool = False) -> None:
    if not runtime().is_root():
        fail(ROOT_MESSAGE + (" or use --dry-run" if dry_run_hint else ""))


# --------------------------------------------------------------------------------------------
# Shared options and helpers


_DATASTORE_META = "flowtui.datastore"  # click context meta: the --datastore/--etcd-* values


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta.setdefault(_DATASTORE_META, {})[param.name] = value


def state_dir_option(func: click.decorators.FC) -> click.decorators.FC:
    """`--state-dir`, `--datastore URL` and etcd's TLS files; commands open the datastore they
    name with `open_state(state_dir)`."""
    for option in (
        click.option("--etcd-password-file", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="FLOWTUI_ETCD_PASSWORD_FILE",
                     help=f"File whose first line is --etcd-user's password (else ${PASSWORD_ENV}; "
                          f"never on the command line)."),
        click.option("--etcd-user", metavar="USER", expose_value=False, callback=_remember, envvar="FLOWTUI_ETCD_USER",
                     help="Log in to etcd as USER (etcd's `auth enable`; also etcd://USER@HOST:PORT or "
                          "$FLOWTUI_ETCD_USER); the password from --etcd-password-file or $FLOWTUI_ETCD_PASSWORD."),
        click.option("--etcd-key", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="FLOWTUI_ETCD_KEY", help="etcd client private key (PEM; also $FLOWTUI_ETCD_KEY)."),
        click.option("--etcd-cert", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="FLOWTUI_ETCD_CERT", help="etcd client certificate (PEM; also $FLOWTUI_ETCD_CERT)."),
        click.option("--etcd-ca", type=click.Path(dir_okay=False), expose_value=False, callback=_remember,
                     envvar="FLOWTUI_ETCD_CA", help="CA that signed the etcd servers (PEM; also $FLOWTUI_ETCD_CA)."),
        click.option("--datastore", metavar="URL", expose_value=False, callback=_remember, envvar=DATASTORE_ENV,
                     help=f"Where the desired state is: file:///DIR (the default: --state-dir) or "
                          f"etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS; also ${DATASTORE_ENV})."),
        click.option("--state-dir", type=click.Path(file_okay=False), envvar=HOME_ENV, default=DEFAULT_HOME,
                     show_default=True, help=f"Datastore directory (also ${HOME_ENV}); with --datastore etcd://, "
                                         f"where this machine keeps rule ids and applied tables."),
    ):
        func = option(func)
    return func


def open_state(state_dir: str) -> DesiredState:
    """The datastore this command was given: `--datastore URL`, else the directory `state_dir`.
    Called outside a command (a script, a test building the dashboard), the environment says it."""
    context = click.get_current_context(silent=True)
    given = context.meta.get(_DATASTORE_META, {}) if context is not None else {
        "datastore": os.environ.get(DATASTORE_ENV), "etcd_ca": os.environ.get("FLOWTUI_ETCD_CA"),
        "etcd_cert": os.environ.get("FLOWTUI_ETCD_CERT"), "etcd_key": os.environ.get("FLOWTUI_ETCD_KEY"),
        "etcd_user": os.environ.get("FLOWTUI_ETCD_USER"),
        "etcd_password_file": os.environ.get("FLOWTUI_ETCD_PASSWORD_FILE")}
    tls = TLSFiles(given.get("etcd_ca"), given.get("etcd_cert"), given.get("etcd_key"))
    if bool(tls.cert) != bool(tls.key):
        fail("--etcd-cert and --etcd-key go together (the client certificate and its key)", EXIT_INVALID)
    for name, path in (("--etcd-ca", tls.ca), ("--etcd-cert", tls.cert), ("--etcd-key", tls.key)):
        if path and not os.path.isfile(path):
            fail(f"{name} {path}: no such file", EXIT_INVALID)
    url = given.get("datastore")
    cluster = lab_cluster(context.params.get("lab_id")) if context is not None and not url and not tls.given else None
    if cluster is not None:  # `--lab ID` of a lab in etcd mode: its datastore, unless another was given
        url, tls = cluster.url, TLSFiles(cluster.ca, cluster.cert, cluster.key)
        if supervisor_pid(cluster.lab_id) is None:
            click.echo(f"warning: lab {cluster.lab_id}'s supervisor is not running: its etcd is reached through "
                       f"the supervisor's forwarders (`flowtui lab up --lab {cluster.lab_id} -f ...` starts it "
                       f"again)", err=True)
    if tls.given and not url:
        fail("--etcd-ca/--etcd-cert/--etcd-key need --datastore etcd://HOST:PORT", EXIT_INVALID)
    try:
        return open_datastore(url, state_dir, tls, _login(given, url))
    except BadDatastoreURL as err:
        fail(f"--datastore: {err}", EXIT_INVALID)


def _login(given: Mapping[str, Any], url: str | None) -> Login | None:
    """--etcd-user (or a user in the URL) with the password of --etcd-password-file or
    $FLOWTUI_ETCD_PASSWORD; None without a user. BadDatastoreURL for an unreadable file."""
    user = str(given.get("etcd_user") or "")
    if not user and not (url and "@" in url.partition("://")[2]):
        if given.get("etcd_password_file"):
            fail("--etcd-password-file needs --etcd-user USER (or etcd://USER@HOST:PORT)", EXIT_INVALID)
        return None
    return Login(user, read_password(given.get("etcd_password_file")) or "")


def published_states(store: DesiredState) -> list[dict[str, Any]]:
    """What the agents of a shared store published of themselves (none for a directory); a store
    that cannot be read is a warning: the local status files still say what they know."""
    from enforcer.datastore.etcd import EtcdDatastore

    if not isinstance(store, EtcdDatastore):
        return []
    from enforcer.datastore.shared import published_agents

    try:
        return published_agents(store.kv)
    except DatastoreError as err:
        click.echo(f"warning: the agents' published state cannot be read: {err}", err=True)
        return []


def given_datastore() -> str | None:
    """The --datastore value (or $FLOWTUI_DATASTORE) as given, before it is opened."""
    context = click.get_current_context(silent=True)
    value = context.meta.get(_DATASTORE_META, {}).get("datastore") if context is not None else None
    return value if isinstance(value, str) else None


def lab_cluster(lab_id: object) -> Cluster | None:
    """The etcd cluster of lab `lab_id` (`flowtui lab up --datastore etcd`), None when that lab
    has none or the id is not a lab id."""
    if not isinstance(lab_id, str):
        return None
    try:
        check_lab_id(lab_id)
    except LabError:
        return None  # the command reports a bad id where it uses it
    try:
        return read_cluster(lab_id)
    except LabError as err:
        fail(str(err))


def lab_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--lab",
        "lab_id",
        envvar=LAB_ENV,
        default=DEFAULT_LAB_ID,
        show_default=True,
        metavar="ID",
        help=f"The lab whose nodes enforce the state (also ${LAB_ENV}).",
    )(func)


def load_failed(err: LoadError) -> NoReturn:
    """Every problem, FILE:LINE first, then exit 2 (as `load_or_exit` does)."""
    click.echo(str(err), err=True)
    n = len(err.problems)
    click.echo(f"{n} problem{'s' if n != 1 else ''} found; nothing was changed.", err=True)
    sys.exit(EXIT_INVALID)


def guarded(work: Callable[[], T]) -> T:
    """Run `work`, turning the expected failures into clean messages and exit codes."""
    try:
        return work()
    except LoadError as err:
        load_failed(err)
    except UnknownKind as err:
        fail(str(err), EXIT_INVALID)
    except (DatastoreError, LabError, RuleIdError) as err:
        fail(str(err))


def lab_refused(err: LabError, lab_id: str, sources: Mapping[str, str]) -> NoReturn:
    """The objects cannot make lab `lab_id` (names, addresses): invalid input, exit 2. Stored
    documents the message names (FILE:LINE) are named by the input they came from."""
    message = str(err)
    for stored, source in sources.items():
        if stored in message:
            message = re.sub(re.escape(stored) + r":\d+", source.replace("\\", r"\\"), message)
    click.echo(f"error: lab {lab_id} cannot be planned with these objects: {message}", err=True)
    click.echo("nothing was changed.", err=True)
    sys.exit(EXIT_INVALID)


def store_planned(ds: DesiredState, inputs: Sequence[str], lab_id: str, namespace: str | None = None) -> ChangeSet:
    """Store `inputs` as `apply` does, after planning lab `lab_id` with the merged result (under
    the datastore's lock, before anything is written): what the lab cannot build is refused
    (exit 2) instead of being stored and failing every later apply, toggle and `lab up`."""
    from enforcer.lab import plan_lab

    cluster = lab_cluster(lab_id)
    members = len(cluster.members) if cluster is not None else 0  # their addresses are taken too

    def plan(preview: Preview) -> None:
        try:
            plan_lab(preview.resources, lab_id, etcd_members=members)
        except LabError as err:
            lab_refused(err, lab_id, preview.sources)

    return guarded(lambda: ds.apply_documents(inputs, namespace, check=plan))


def print_changes(changes: ChangeSet, suffix: str = "", *, err: bool = False) -> None:
    skipped = skipped_line(changes.skipped)
    if skipped:
        click.echo(skipped, err=True)
    for change in changes.changes:
        if change.action == "not found":
            click.echo(f"{change.key} not found", err=True)
        else:
            click.echo(f"{change}{suffix}", err=err)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def make_reconciler(ds: DesiredState, lab_id: str, *, note: bool = True) -> Reconciler | None:
    """A reconciler for the lab's nodes that are up; None (with a note, unless not `note`) when the
    lab is not up."""
    if lab_cluster(lab_id) is not None:  # the lab's agents enforce what the datastore holds
        if note:
            click.echo(f"lab {lab_id} runs in etcd mode: its agents enforce the change on every node "
                       f"(`flowtui lab status --lab {lab_id}` shows the revision each enforces)", err=True)
        return None
    rt = runtime()
    nodes = guarded(lambda: rt.lab_nodes(lab_id))
    if not nodes:
        if note:
            click.echo(f"lab {lab_id} is not up: stored, nothing enforced (start it with `flowtui lab up -f ...`)",
                       err=True)
        return None
    compile_fn, options = rt.compiler()
    return Reconciler(ds, rt.backend(lab_id), compile_fn, options, lambda: nodes, lab_id=lab_id)


def enforce(ds: DesiredState, lab_id: str, *, echo: bool = True,
            reconciler: Reconciler | None = None) -> ReconcileResult | None:
    """Reconcile the lab's nodes with the datastore; None when the lab is not up."""
    reconciler = reconciler or make_reconciler(ds, lab_id)
    if reconciler is None:
        return None
    result = guarded(reconciler.reconcile)
    if echo:
        click.echo(result.describe())
    for failed in result.failed:
        click.echo(f"error: {failed.node}: {failed.error}", err=True)
    wireguard = reconciler.wireguard
    if wireguard is not None and (wireguard.families or wireguard.changed or not wireguard.ok):
        if echo:
            click.echo(wireguard.describe())
        if not wireguard.ok:
            click.echo("error: WireGuard did not come up on every node (flowtui get wireguard)", err=True)
    return result


def enforcement_behind(state_dir: str, nodes: Sequence[str] | None = None) -> dict[str, Any]:
    """{"revision": the datastore's, "nodes": {node: revision it enforces}} for the nodes an
    interrupted apply left behind (of `nodes`, or all); {} when nothing is stored or readable."""
    from enforcer.datastore.integrity import nodes_behind

    ds = open_state(state_dir)
    try:
        revision = ds.revision
    except DatastoreError as err:
        return {"error": str(err)}
    found = {n: r for n, r in nodes_behind(ds, revision).items() if nodes is None or n in nodes}
    return {"revision": revision, "nodes": found} if found else {}


def behind_lines(behind: dict[str, Any]) -> list[str]:
    if "error" in behind:
        return [f"datastore: {behind['error']}"]
    return [f"node {node} enforces datastore revision {rev}, the datastore is at {behind['revision']}: an apply "
            f"stopped before the kernel took it (`flowtui datastore repair` or the next apply enforces it)"
            for node, rev in sorted(behind.get("nodes", {}).items())]


# --------------------------------------------------------------------------------------------
# apply


@click.command()
@paths_option
@namespace_option
@click.option("--dry-run", is_flag=True,
              help="Print the full nftables ruleset of every node instead; store nothing, no root needed.")
@lab_option
@state_dir_option
def apply(paths: Sequence[str], more_paths: Sequence[str], namespace: str | None, dry_run: bool, lab_id: str,
          state_dir: str) -> None:
    """Store resources in the datastore and enforce them on the lab's nodes.

    Each object replaces the stored object of the same kind, namespace and name; the input and
    then the merged result are validated first, then the lab is planned from the merged result;
    any problem (printed as FILE:LINE, exit 2) changes nothing. A policy turned off with
    `flowtui policy disable` stays off when its file is applied again, unless the file sets the
    `flowtui.dev/disabled` annotation itself.

    With --dry-run, prints for each node of the lab (as it would be planned from the merged state)
    the nftables table it would get, and stores nothing.
    """
    inputs = all_paths(paths, more_paths)
    if not inputs:
        fail("no input: give files or directories with -f PATH (or - for stdin)", EXIT_INVALID)
    decision_budget_setting()  # a bad setting fails before anything is read or stored
    if dry_run:
        _dry_run(inputs, namespace, lab_id, state_dir)
        return
    need_root(dry_run_hint=True)
    ds = open_state(state_dir)
    reconciler = make_reconciler(ds, lab_id, note=False)
    # Before the commit: never a datastore the kernel cannot follow (read once: the reconciler keeps it).
    guarded(reconciler.rule_ids if reconciler is not None else lambda: verify_rule_ids(ds))
    changes = store_planned(ds, inputs, lab_id, namespace)
    print_changes(changes)
    result = enforce(ds, lab_id, reconciler=reconciler)
    if result is not None and not result.ok:
        sys.exit(1)


def _dry_run(inputs: list[str], namespace: str | None, lab_id: str, state_dir: str) -> None:
    from enforcer.nft import ir
    from enforcer.reconcile import compile_nodes
    from enforcer.ruleids import IdAllocator

    ds = open_state(state_dir)
    try:
        preview = ds.preview_documents(inputs, namespace)
    except DatastoreError as err:
        click.echo(f"warning: {err}; showing the input files alone", err=True)
        ds = Datastore(tempfile.mkdtemp(prefix="flowtui-dry-run-"))
        preview = guarded(lambda: ds.preview_documents(inputs, namespace))
    except LoadError as err:
        load_failed(err)
    print_changes(preview.changes, " (dry run)", err=True)  # stdout is the ruleset alone
    compile_fn, options = runtime().compiler()
    try:
        ids = IdAllocator.load(ds.ids_path)
    except (OSError, ValueError):
        ids = IdAllocator()

    def compile_all() -> dict[str, Any]:
        try:  # plans the lab first, as apply does before it stores
            return dict(compile_nodes(preview.resources, compile_fn, options, ids, lab_id))
        except LabError as err:
            lab_refused(err, lab_id, preview.sources)

    compiled = guarded(compile_all)
    for node, out in compiled.items():
        budget = getattr(options, "decision_budget", None)
        click.echo(f"# node {node}: {len(out.table.chains)} chains, {len(out.table.sets)} sets"
                   + (f"; decision budget {budget} cells per workload chain" if budget is not None else ""))
        for lay in getattr(out, "layouts", ()):
            if lay.layout == "decision":
                click.echo(f"# {lay.chain}: decision maps, {lay.elements} elements")
            else:
                click.echo(f"# {lay.chain}: rule walk, {lay.elements} rules ({lay.reason})")
        click.echo(ir.listing(out.table))


# --------------------------------------------------------------------------------------------
# delete


@click.command()
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(allow_dash=True),
              help="Delete the objects named in these files (only apiVersion, kind and metadata are read).")
@click.option("-n", "--namespace", metavar="NS",
              help="Namespace of a namespaced object (KIND NAME: default any, if unambiguous; -f: as kubectl, "
                   "objects without metadata.namespace are in NS, else in default).")
@click.option("--ignore-not-found", is_flag=True, help="Exit 0 when an object does not exist.")
@lab_option
@state_dir_option
def delete(kind: str | None, name: str | None, paths: Sequence[str], namespace: str | None,
           ignore_not_found: bool, lab_id: str, state_dir: str) -> None:
    """Delete objects from the datastore and enforce the result: `delete KIND NAME [-n NS]` or
    `delete -f PATH...`.

    KIND is any kind name `flowtui get` accepts (gnp, np, knp, pod, ...). Nothing cascades:
    deleting a namespace leaves its pods and policies.
    """
    if bool(paths) == bool(kind):
        raise click.UsageError("give either KIND NAME or -f PATH")
    if kind and not name:
        raise click.UsageError("give the NAME of the object to delete")
    need_root()
    ds = open_state(state_dir)
    guarded(lambda: verify_rule_ids(ds))
    if paths:
        changes = guarded(lambda: ds.delete_documents(list(paths), namespace))
    else:
        assert kind is not None and name is not None

        def delete_one() -> ChangeSet | None:
            try:
                return ds.delete(kind, name, namespace)
            except NotFound as err:
                if not ignore_not_found:
                    raise
                click.echo(str(err), err=True)
                return None

        found = guarded(delete_one)
        if found is None:
            return
        changes = found
    print_changes(changes)
    if changes.changed:
        result = enforce(ds, lab_id)
        if result is not None and not result.ok:
            sys.exit(1)
    if changes.not_found and not ignore_not_found:
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# get


def _with_revision(obj: StoredObject, doc: dict[str, Any]) -> dict[str, Any]:
    kind = KINDS.get((obj.api_version, obj.kind))
    if kind is None or "resourceVersion" not in kind.meta_server_fields:
        return doc
    meta = dict(doc.get("metadata") or {})
    meta["resourceVersion"] = str(obj.revision)
    return {**doc, "metadata": meta}


def _tier_and_order(doc: dict[str, Any]) -> tuple[str, str]:
    """The Calico tier and order a stored policy document is evaluated at."""
    placed = cnp_placement(str(doc.get("kind")), _spec(doc, "tier"), _spec(doc, "priority"))
    return placed or (_spec(doc, "tier") or "default", _spec(doc, "order"))


def _spec(doc: dict[str, Any], key: str) -> str:
    spec = doc.get("spec")
    value = spec.get(key) if isinstance(spec, dict) else None
    return "" if value is None else str(value)


@click.command()
@click.argument("kind", metavar="KIND")
@click.argument("name", required=False)
@click.option("-n", "--namespace", metavar="NS", help="Only this namespace (default: every namespace).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace (the default; as kubectl's -A).")
@click.option("-o", "--output", type=click.Choice(["table", "yaml", "json"]), default="table", show_default=True)
@click.option("--unused", is_flag=True, help="With `get hits`: only rules never hit.")
@lab_option
@state_dir_option
def get(kind: str, name: str | None, namespace: str | None, all_namespaces: bool, output: str, unused: bool,
        lab_id: str, state_dir: str) -> None:
    """Show stored objects of one kind, or one object; `get hits` shows per-rule hit counters.

    KIND is a kind, its plural or a short name, in any case: gnp, np (Calico NetworkPolicy), knp
    (Kubernetes NetworkPolicy), cnp (ClusterNetworkPolicy, at its Calico tier and order), sgnp, snp,
    sknp, tier, gns (GlobalNetworkSet), netset, hep, profile, felixconfig, ns, pod, node, sa, ext
    (ExternalHost), deploy, sts, ds, rs, job, cj, svc; `policy` means every policy kind.
    `hits` lists every rule's packet and byte counters on every lab node, with the tier, policy,
    direction and rule index it stands for (`--unused`: only rules never hit). `wireguard` shows each
    node's WireGuard tunnels: enabled, backend, public key, peers, last handshake, bytes.

    `-o yaml` and `-o json` print the stored documents (with metadata.resourceVersion set to the
    object's revision) in a form `flowtui apply -f` takes back; a list is a `kind: List`.
    """
    if all_namespaces and namespace:
        raise click.UsageError("-n and -A (--all-namespaces) exclude each other")
    if kind.lower() in ("hits", "hit"):
        from flowtui.cli.hits import print_hits

        need_root()
        rt = runtime()
        backend = rt.backend(lab_id)
        # the datastore's rule table: with etcd, every id the agents published (any machine's)
        store = open_state(state_dir)
        guarded(lambda: print_hits(store.rule_table(), rt.lab_nodes(lab_id), backend.json_listing,
                                   "json" if output == "json" else "table", unused))
        return
    if kind.lower() in ("wireguard", "wg"):
        from flowtui.cli.wireguard import print_wireguard

        need_root()
        print_wireguard(lab_id, open_state(state_dir), "json" if output == "json" else "table")
        return
    ds = open_state(state_dir)
    found = guarded(lambda: ds.object_documents(kind, name=name, namespace=namespace))
    if not found:
        if name:
            where = f" in namespace {namespace}" if namespace else ""
            fail(f"{kind} {name!r} not found{where}")
        click.echo("No resources found.", err=True)
        return
    if output in ("yaml", "json"):
        docs = [_with_revision(o, d) for o, d in found]
        single = name is not None and len(docs) == 1
        out: dict[str, Any] = docs[0] if single else {"apiVersion": "v1", "kind": "List", "items": docs}
        if output == "json":
            echo_json(out)
        else:
            click.echo(yaml.safe_dump(out, sort_keys=False, default_flow_style=False, allow_unicode=True), nl=False)
        return
    kinds = {o.key.kind for o, _ in found}
    namespaced = any(o.info.namespaced for o, _ in found)
    policies = all(o.info.is_policy for o, _ in found)
    headers = [*(["KIND"] if len(kinds) > 1 else []), *(["NAMESPACE"] if namespaced else []), "NAME", "REVISION"]
    if policies:
        headers += ["TIER", "ORDER", "STATE"]
    headers.append("SOURCE")
    rows = []
    for obj, doc in found:
        row = [*([obj.info.label] if len(kinds) > 1 else []), *([obj.key.namespace or ""] if namespaced else []),
               obj.key.name, str(obj.revision)]
        if policies:
            row += [*_tier_and_order(doc), "disabled" if obj.disabled else "enabled"]
        rows.append([*row, obj.source])
    click.echo(format_table(headers, rows))


# --------------------------------------------------------------------------------------------
# policy disable | enable


@click.group(name="policy")
def policy_group() -> None:
    """Turn policies off and on, live: the datastore is updated and every node of the lab gets
    the change in one nftables transaction. A disabled policy is as if it did not exist."""


def _toggle(name: str, namespace: str | None, kind: str, lab_id: str, state_dir: str, disabled: bool) -> None:
    need_root()
    kinds = guarded(lambda: resolve_kinds(kind))
    if not all(k.is_policy for k in kinds):
        fail(f"{kind}: only policies can be turned off and on", EXIT_INVALID)
    ds = open_state(state_dir)
    reconciler = make_reconciler(ds, lab_id, note=False)  # imports and lookups first: time the change alone
    start = time.perf_counter()
    changes = guarded(lambda: ds.set_disabled(kind, name, namespace, disabled))
    stored_ms = (time.perf_counter() - start) * 1e3
    change = changes.changes[0]
    word = "disabled" if disabled else "enabled"
    if change.action == "unchanged":
        click.echo(f"{change.key} was already {word} (revision {change.revision})")
    else:
        click.echo(f"{change.key} {word} (revision {change.revision}, stored in {stored_ms:.1f} ms)")
    if reconciler is None:
        make_reconciler(ds, lab_id)  # only to say why nothing is enforced, once the change is stored
        return
    result = enforce(ds, lab_id, echo=False, reconciler=reconciler)
    assert result is not None
    total_ms = (time.perf_counter() - start) * 1e3
    applied = [n for n in result.nodes if n.status == "applied"]
    compile_ms = sum(n.compile_ms for n in result.nodes)
    verify_ms = sum(n.verify_ms for n in result.nodes)
    apply_ms = sum(n.apply_ms for n in result.nodes)
    # Toggles switch policy gates on the last compile (no compile: one set element per node).
    made = "gates switched, no compile" if result.nodes and all(n.toggled for n in result.nodes) else (
        f"compile {compile_ms:.1f} ms")
    click.echo(
        f"in the kernel {total_ms:.1f} ms after the change was requested: {len(applied)} of {len(result.nodes)} "
        f"nodes changed (load {result.load_ms:.1f} ms, {made}, reading live tables "
        f"{verify_ms:.1f} ms, apply {apply_ms:.1f} ms)"
    )
    if not result.ok:
        sys.exit(1)


def _toggle_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-n, --kind, --lab and --state-dir: what `policy disable` and `policy enable` take beside NAME."""
    for option in reversed((
        click.option("-n", "--namespace", metavar="NS", help="Namespace of a namespaced policy (default: any, "
                     "if unambiguous)."),
        click.option("--kind", default="policy", show_default=True,
                     help="Policy kind (gnp, np, knp, sgnp, ...) when the name alone is ambiguous."),
        lab_option, state_dir_option)):
        func = option(func)
    return func


@policy_group.command()
@click.argument("name")
@_toggle_options
def disable(name: str, namespace: str | None, kind: str, lab_id: str, state_dir: str) -> None:
    """Turn policy NAME off (annotation flowtui.dev/disabled: "true"), then enforce."""
    _toggle(name, namespace, kind, lab_id, state_dir, True)


@policy_group.command()
@click.argument("name")
@_toggle_options
def enable(name: str, namespace: str | None, kind: str, lab_id: str, state_dir: str) -> None:
    """Turn policy NAME back on, then enforce."""
    _toggle(name, namespace, kind, lab_id, state_dir, False)


__all__ = ["Runtime", "apply", "behind_lines", "enforcement_behind",
           "delete", "enforce", "format_table", "get", "given_datastore", "guarded", "lab_cluster", "lab_option",
           "make_reconciler",
           "need_root", "policy_group", "print_changes", "open_state", "state_dir_option", "store_planned"]
