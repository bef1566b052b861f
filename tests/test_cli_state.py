"""`flowtui apply / delete / get / policy`, driven through click's CliRunner with a fake runtime
(the fake compiler of test_reconcile, the in-memory backend, a pretend lab of two nodes)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from enforcer.datastore import Datastore
from enforcer.nft.backend import FakeBackend
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime
from tests.test_reconcile import SCENARIOS, fake_compile

NODES = ["node-a", "node-b"]


class World:
    """A CliRunner with a fake runtime and a datastore in a temporary directory."""

    def __init__(self, tmp_path: Path, *, root: bool = True, nodes: list[str] | None = None) -> None:
        self.backend = FakeBackend()
        self.state = tmp_path / "state"
        self.root = root
        self.nodes = NODES if nodes is None else nodes
        self.compiles = 0

    def compiler(self) -> tuple[Any, Any]:
        self.compiles += 1
        return fake_compile, None

    def runtime(self) -> Runtime:
        return Runtime(compiler=self.compiler, backend=lambda lab: self.backend, lab_nodes=lambda lab: list(self.nodes),
                       is_root=lambda: self.root)

    def run(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        argv = [*args]
        if "--state-dir" not in argv and "--help" not in argv and (env is None or "FLOWTUI_HOME" not in env):
            argv += ["--state-dir", str(self.state)]
        return CliRunner().invoke(cli, argv, obj=self.runtime(), input=input, env=env, catch_exceptions=False)

    @property
    def ds(self) -> Datastore:
        return Datastore(self.state)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def applied(world: World) -> Result:
    result = world.run("apply", "-f", str(SCENARIOS))
    assert result.exit_code == 0, result.output
    return result


def test_apply_stores_and_enforces(world: World) -> None:
    result = applied(world)
    assert "gnp/deny-frontend-to-transaction created" in result.stdout
    assert "node-a: applied, replaced whole table" in result.stdout
    assert set(world.backend.tables) == set(NODES)
    again = world.run("apply", "-f", str(SCENARIOS))
    assert "gnp/deny-frontend-to-transaction unchanged" in again.stdout
    assert "node-a: unchanged" in again.stdout


def test_invalid_input_exits_2_with_file_and_line(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
                   "spec:\n  order: ten\n")
    result = world.run("apply", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:5" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.output
    assert world.ds.revision == 0 and not world.backend.tables
    assert world.run("apply").exit_code == 2  # no input at all


def test_dry_run_prints_rulesets_needs_no_root_and_stores_nothing(tmp_path: Path) -> None:
    world = World(tmp_path, root=False, nodes=[])
    result = world.run("apply", "--dry-run", "-f", str(SCENARIOS))
    assert result.exit_code == 0, result.output
    assert "# node node-a:" in result.stdout and "# node node-b:" in result.stdout
    assert result.stdout.count("table inet flowtui {") == 2
    assert "chain pol-deny-frontend-to-transaction {" in result.stdout
    assert "gnp/deny-frontend-to-transaction created (dry run)" in result.stderr
    assert result.stdout.startswith("# node node-a:")
    assert not world.state.exists() and not world.backend.tables


def test_dry_run_merges_with_the_stored_state(world: World, tmp_path: Path) -> None:
    applied(world)
    extra = tmp_path / "extra.yaml"
    extra.write_text(textwrap.dedent("""\
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: extra}
        spec: {selector: all(), ingress: [{action: Allow}]}
    """))
    result = world.run("apply", "--dry-run", "-f", str(extra))
    assert "chain pol-extra {" in result.stdout and "chain pol-deny-other-ingress {" in result.stdout
    assert world.ds.revision == 1


def test_kernel_commands_need_root(tmp_path: Path) -> None:
    world = World(tmp_path, root=False)
    for args in (["apply", "-f", str(SCENARIOS)], ["delete", "gnp", "x"], ["policy", "disable", "x"]):
        result = world.run(*args)
        assert result.exit_code == 1, args
        assert "needs root (network namespaces and nftables): run as root" in result.stderr
        assert "Traceback" not in result.output
    assert "or use --dry-run" in world.run("apply", "-f", str(SCENARIOS)).stderr
    assert not world.state.exists()


def test_get_table_yaml_json(world: World) -> None:
    applied(world)
    table = world.run("get", "gnp")
    assert table.exit_code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "REVISION", "TIER", "ORDER", "STATE", "SOURCE"]
    assert len(rows) == 5 and rows[0].split()[:5] == ["allow-cluster-internal", "1", "default", "10", "enabled"]
    pods = world.run("get", "Pods", "-n", "staging")
    assert pods.stdout.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "REVISION"]
    assert len(pods.stdout.splitlines()) == 4
    mixed = world.run("get", "policy")
    assert mixed.stdout.splitlines()[0].startswith("KIND") and "np " in mixed.stdout
    one = yaml.safe_load(world.run("get", "GlobalNetworkPolicy", "dos-mitigation", "-o", "yaml").stdout)
    assert one["kind"] == "GlobalNetworkPolicy" and one["metadata"]["resourceVersion"] == "1"
    listing = json.loads(world.run("get", "hep", "-o", "json").stdout)
    assert listing["kind"] == "List" and [i["metadata"]["name"] for i in listing["items"]] == [
        "node-a-eth0", "node-b-eth0"]
    ext = yaml.safe_load(world.run("get", "ext", "admin", "-o", "yaml").stdout)
    assert "resourceVersion" not in ext["metadata"]  # ExternalHost takes no server fields


def test_get_output_applies_back(world: World, tmp_path: Path) -> None:
    applied(world)
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(world.run("get", "gnp", "-o", "yaml").stdout)
    result = world.run("apply", "-f", str(dumped))
    assert result.exit_code == 0 and "configured" not in result.stdout and "unchanged" in result.stdout


def test_get_errors(world: World) -> None:
    applied(world)
    unknown = world.run("get", "gnpx")
    assert unknown.exit_code == 2 and "unknown kind 'gnpx'" in unknown.stderr
    missing = world.run("get", "gnp", "nope")
    assert missing.exit_code == 1 and "not found" in missing.stderr
    empty = world.run("get", "knp")
    assert empty.exit_code == 0 and "No resources found." in empty.stderr and empty.stdout == ""


def test_delete_by_name_and_by_file(world: World, tmp_path: Path) -> None:
    applied(world)
    result = world.run("delete", "gnp", "dos-mitigation")
    assert result.exit_code == 0 and "gnp/dos-mitigation deleted" in result.stdout
    assert "pol-dos-mitigation" not in (world.backend.listing("node-a") or "")
    assert world.run("delete", "gnp", "dos-mitigation").exit_code == 1
    assert world.run("delete", "gnp", "dos-mitigation", "--ignore-not-found").exit_code == 0
    by_file = world.run("delete", "-f", str(SCENARIOS / "03-log-then-deny.yaml"))
    assert "np/staging/log-and-deny-frontend deleted" in by_file.stdout
    assert world.run("delete", "-f", str(SCENARIOS / "03-log-then-deny.yaml")).exit_code == 1  # not found
    assert world.run("delete", "gnp").exit_code == 2  # usage: NAME missing
    assert world.run("delete").exit_code == 2


def test_policy_toggle_is_live(world: World) -> None:
    applied(world)
    result = world.run("policy", "disable", "deny-other-ingress")
    assert result.exit_code == 0, result.output
    assert "gnp/deny-other-ingress disabled (revision 2" in result.stdout
    assert "in the kernel" in result.stdout and "2 of 2 nodes changed" in result.stdout
    assert "pol-deny-other-ingress" not in (world.backend.listing("node-a") or "")
    assert "delete table" not in world.backend.history["node-a"][-1]  # incremental
    assert "disabled" in world.run("get", "gnp", "deny-other-ingress").stdout
    assert "already disabled" in world.run("policy", "disable", "deny-other-ingress").stdout
    enabled = world.run("policy", "enable", "deny-other-ingress", "--kind", "gnp")
    assert enabled.exit_code == 0 and "pol-deny-other-ingress" in (world.backend.listing("node-a") or "")
    assert world.run("policy", "disable", "frontend", "--kind", "pod").exit_code == 2
    assert world.run("policy", "disable", "no-such-policy").exit_code == 1


def test_namespaced_toggle_needs_the_namespace_when_ambiguous(world: World, tmp_path: Path) -> None:
    nps = tmp_path / "np.yaml"
    nps.write_text("".join(
        f"---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: {ns}}}\n"
        "spec: {selector: all(), ingress: [{action: Deny}]}\n" for ns in ("a", "b")))
    world.run("apply", "-f", str(nps))
    ambiguous = world.run("policy", "disable", "p")
    assert ambiguous.exit_code == 1 and "np/a/p, np/b/p" in ambiguous.stderr
    assert world.run("policy", "disable", "p", "-n", "b").exit_code == 0
    assert [o.disabled for o in world.ds.objects("np")] == [False, True]


def test_lab_not_up_stores_only(tmp_path: Path) -> None:
    world = World(tmp_path, nodes=[])
    result = world.run("apply", "-f", str(SCENARIOS))
    assert result.exit_code == 0 and "lab lab is not up: stored, nothing enforced" in result.stderr
    assert world.ds.revision == 1 and world.compiles == 0


def test_failed_node_exits_1(world: World) -> None:
    applied(world)
    world.backend.fail_next("node-b", "injected")
    result = world.run("policy", "disable", "deny-other-ingress")
    assert result.exit_code == 1 and "error: node-b: injected" in result.stderr
    assert "1 of 2 nodes changed" in result.stdout


def test_state_dir_from_the_environment(world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = world.run("apply", "-f", str(SCENARIOS / "01-deny-frontend-to-transaction.yaml"),
                       env={"FLOWTUI_HOME": str(home)})
    assert result.exit_code == 0 and Datastore(home).revision == 1 and not world.state.exists()


def test_help_reads_like_documentation(world: World) -> None:
    for args, words in ((["apply"], "--dry-run"), (["get"], "short name"), (["delete"], "cascades"),
                        (["policy", "disable"], "flowtui.dev/disabled"), (["policy"], "live")):
        result = world.run(*args, "--help")
        assert result.exit_code == 0 and words in result.stdout, args
        assert "FLOWTUI_HOME" in result.stdout or args == ["policy"]


def test_policy_toggle_from_the_cli_switches_gates_without_compiling(tmp_path: Path) -> None:
    """With the real compiler, every CLI call is a fresh process: the toggle is served from the
    recorded table (compiled from the same layout), one set element per node."""
    from enforcer.nft.compiler import CompileOptions, compile_node

    world = World(tmp_path)
    calls: list[str] = []

    def counting(state: Any, node: str, options: Any, ids: Any) -> Any:
        calls.append(node)
        return compile_node(state, node, options, ids)

    # The rule walk: only gates depend on toggles (decision maps' elements do too: see
    # tests/test_reconcile.py for toggles under decision maps).
    world.compiler = lambda: (counting, CompileOptions(decision_budget=0))  # type: ignore[method-assign]
    applied(world)
    assert sorted(calls) == NODES
    calls.clear()
    before = {n: len(world.backend.history[n]) for n in NODES}
    result = world.run("policy", "disable", "deny-other-ingress")
    assert result.exit_code == 0, result.output
    assert "2 of 2 nodes changed" in result.stdout and "gates switched, no compile" in result.stdout
    assert calls == []
    for n in NODES:
        (script,) = world.backend.history[n][before[n]:]
        assert script.startswith("add element inet flowtui closed {")
    # Enforced as if absent: the policy's chain is still there, its gate closed.
    assert "pi-gnp-deny-other-ingress" in (world.backend.listing("node-a") or "")
    assert world.run("policy", "enable", "deny-other-ingress").exit_code == 0 and calls == []
    assert world.run("apply", "-f", str(SCENARIOS)).exit_code == 0 and calls == []  # unchanged: nothing compiled


def _real_world(tmp_path: Path) -> World:
    """The real nftables compiler (dry runs need neither root nor a lab)."""
    from flowtui.cli.state import default_compiler

    world = World(tmp_path, root=False, nodes=[])
    world.compiler = default_compiler  # type: ignore[method-assign]
    return world


def test_dry_run_reports_each_workload_chains_layout(tmp_path: Path) -> None:
    world = _real_world(tmp_path)
    result = world.run("apply", "--dry-run", "-f", str(SCENARIOS), env={"FLOWTUI_DECISION_BUDGET": "4096"})
    assert result.exit_code == 0, result.output
    decided = [line for line in result.stdout.splitlines() if ": decision maps, " in line]
    assert decided and all(line.startswith(("# fw-d", "# tw-d")) for line in decided)
    assert "; decision budget 4096 cells per workload chain" in result.stdout
    for line in decided:  # the chain named is in the listing, with its maps
        chain = line.split(":")[0].removeprefix("# ")
        assert f"chain {chain} {{" in result.stdout
        assert f"map dp4-{chain[4:]}" in result.stdout  # its own, or its peer classes' (…-<class>)
    default = world.run("apply", "--dry-run", "-f", str(SCENARIOS))  # the default: on
    assert default.exit_code == 0, default.output
    assert ": decision maps, " in default.stdout
    walked = world.run("apply", "--dry-run", "-f", str(SCENARIOS), env={"FLOWTUI_DECISION_BUDGET": "0"})
    assert walked.exit_code == 0, walked.output
    assert ": decision maps, " not in walked.stdout and "map dp4-" not in walked.stdout
    assert "rule walk, 5 rules (decision maps off (budget 0))" in walked.stdout


def test_a_bad_decision_budget_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    world = _real_world(tmp_path)
    for bad in ("-1", "lots", ""):
        result = world.run("apply", "--dry-run", "-f", str(SCENARIOS), env={"FLOWTUI_DECISION_BUDGET": bad})
        assert result.exit_code == 2
        assert f"FLOWTUI_DECISION_BUDGET={bad!r}: expected a whole number of cells" in result.stderr
        assert "created (dry run)" not in result.stderr


def test_every_front_end_compiles_with_the_same_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI, the dashboard's policy control and the demo take their options from one place
    (`enforcer.nft.compiler.default_options`): FLOWTUI_DECISION_BUDGET reaches every one."""
    from enforcer.datastore import Datastore
    from enforcer.nft import compiler
    from flowtui.cli.state import default_compiler
    from flowtui.tui.control import lab_control

    used: list[int] = []
    real = compiler.compile_node

    def spy(state: object, node: str, options: compiler.CompileOptions | None = None, *a: object) -> object:
        used.append(options.decision_budget if options is not None else -1)
        return real(state, node, options, *a)  # type: ignore[arg-type]

    for value, expected in (("123", 123), ("0", 0), (None, compiler.CompileOptions().decision_budget)):
        if value is None:
            monkeypatch.delenv("FLOWTUI_DECISION_BUDGET", raising=False)
        else:
            monkeypatch.setenv("FLOWTUI_DECISION_BUDGET", value)
        assert default_compiler()[1].decision_budget == expected
        control = lab_control(Datastore(tmp_path / "ds"), "xfopts", lab_nodes=lambda: [])
        assert control.reconciler is not None and control.reconciler.options.decision_budget == expected
        used.clear()
        monkeypatch.setattr(compiler, "compile_node", spy)
        from flowtui.demo.synthetic import EventFactory

        EventFactory.article()
        monkeypatch.setattr(compiler, "compile_node", real)
        assert used and set(used) == {expected}
    monkeypatch.setenv("FLOWTUI_DECISION_BUDGET", "lots")
    with pytest.raises(ValueError, match="FLOWTUI_DECISION_BUDGET='lots'"):
        compiler.default_options()
