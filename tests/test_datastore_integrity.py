"""Issue 16's probes on the datastore and the rule ids, each a test: a lost index, damaged
documents, emptied or cut ids.jsonl, torn appends, 250-character names, umask 000, a wrong
applied-state record, an apply interrupted between the datastore's commit and the kernel's.

Most run through the CLI with the real compiler and the in-memory backend; the kill -9 between
commit and kernel apply runs against a real lab (kernel test)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from enforcer.datastore import DamagedDatastore, Datastore
from enforcer.lab.netns import remove_runtime_dirs
from enforcer.nft import ir
from enforcer.nft.backend import FakeBackend
from enforcer.reconcile import compile_nodes
from enforcer.ruleids import IdAllocator, RuleIdError, RuleRef, RuleTable, key_of
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime
from tests.test_reconcile import NODES, SCENARIOS

ROOT = Path(__file__).resolve().parents[1]


def real_compiler() -> tuple[Any, Any]:
    from enforcer.nft.compiler import CompileOptions, compile_node

    return compile_node, CompileOptions()


class World:
    """The CLI over a datastore in a temporary directory, the real compiler, the in-memory backend
    and a pretend lab of two nodes."""

    def __init__(self, tmp_path: Path) -> None:
        self.backend = FakeBackend()
        self.state = tmp_path / "state"
        self.tmp = tmp_path
        self.walk = False  # True: the rule walk (decision maps off), whose toggles switch gates only

    def compiler(self) -> tuple[Any, Any]:
        from enforcer.nft.compiler import CompileOptions

        compile_fn, options = real_compiler()
        return compile_fn, (CompileOptions(decision_budget=0) if self.walk else options)

    def run(self, *args: str) -> Result:
        runtime = Runtime(compiler=self.compiler, backend=lambda lab: self.backend,
                          lab_nodes=lambda lab: list(NODES), is_root=lambda: True)
        return CliRunner().invoke(cli, [*args, "--state-dir", str(self.state)], obj=runtime, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result

    @property
    def ds(self) -> Datastore:
        return Datastore(self.state)

    def tables(self) -> dict[str, str]:
        return {n: ir.listing(self.backend.tables[n]) for n in NODES}

    def fresh(self) -> dict[str, str]:
        """A whole compile of the datastore as it is now, with its ids (nothing written)."""
        compile_fn, options = self.compiler()
        ids = IdAllocator.load(self.ds.ids_path)
        return {n: ir.listing(c.table) for n, c in
                compile_nodes(self.ds.resources(), compile_fn, options, ids, "lab", NODES).items()}

    def edited(self, name: str = "deny-other-ingress") -> str:
        """A changed copy of a stored policy (its order), as a file to apply."""
        (_, doc), = self.ds.object_documents("gnp", name=name)
        doc["spec"]["order"] = float(doc["spec"].get("order", 0)) + 0.5
        path = self.tmp / f"edited-{name}-{doc['spec']['order']}.json"
        path.write_text(json.dumps(doc), encoding="utf-8")
        return str(path)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.ok("apply", "-f", str(SCENARIOS))
    return w


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- the index ---------------------------------------------------------------------------------


def test_a_missing_index_beside_documents_is_damage_and_repair_rebuilds_it(world: World) -> None:
    policies = world.ok("get", "policy").stdout
    keys = {o.key: o.revision for o in world.ds.objects()}
    kernel = world.tables()
    world.ok("policy", "disable", "deny-other-ingress")
    world.ok("policy", "enable", "deny-other-ingress")
    revision = world.ds.revision
    (world.state / "state.json").unlink()
    documents = {k: v for k, v in files(world.state).items() if k.startswith("objects/")}
    # Before: "No resources found" (exit 0), and the next apply swept every document.
    listed = world.run("get", "policy")
    assert listed.exit_code == 1 and "state.json is missing" in listed.stderr and "repair" in listed.stderr
    applied = world.run("apply", "-f", str(SCENARIOS))
    assert applied.exit_code == 1 and "state.json is missing" in applied.stderr
    assert {k: v for k, v in files(world.state).items() if k.startswith("objects/")} == documents
    assert world.tables() == kernel
    assert world.run("datastore", "check").exit_code == 1
    repaired = world.ok("datastore", "repair")
    assert "rebuilt state.json from" in repaired.stdout
    assert world.ds.revision > revision  # revisions never go back, even past a lost index
    assert "datastore OK" in world.ok("datastore", "check").output
    assert world.ok("get", "policy").stdout.count("\n") == policies.count("\n")
    assert {o.key: o.revision for o in world.ds.objects()} == keys  # every object, at its revision
    assert world.tables() == world.fresh()


def test_a_missing_index_beside_rule_ids_is_damage_too(world: World) -> None:
    for obj in world.ds.objects():
        world.ds.delete(obj.info.short, obj.key.name, obj.key.namespace)
    assert world.ds.objects() == [] and not any((world.state / "objects").rglob("*.yaml"))
    (world.state / "state.json").unlink()
    with pytest.raises(DamagedDatastore, match="the index is lost"):
        Datastore(world.state).objects()


def test_a_damaged_index_is_refused_naming_it(world: World) -> None:
    index = world.state / "state.json"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    result = world.run("get", "policy")
    assert result.exit_code == 1 and f"{index} is damaged" in result.stderr
    assert "Traceback" not in result.output


# ---- documents ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "cut at a line", "emptied", "not utf-8"])
def test_a_damaged_document_is_refused_and_never_enforced(world: World, damage: str) -> None:
    obj = world.ds.find("gnp", "deny-other-ingress")
    path = world.state / obj.file
    data = path.read_bytes()
    # Before: a truncated policy was enforced with no selector and no rules; an emptied one removed.
    path.write_bytes({"truncated": data[: len(data) // 3], "cut at a line": b"".join(data.splitlines(True)[:5]),
                      "emptied": b"", "not utf-8": data + b"\xff\xfe"}[damage])
    kernel = world.tables()
    with pytest.raises(DamagedDatastore, match=str(path)):
        Datastore(world.state).resources()
    result = world.run("apply", "-f", str(SCENARIOS))
    assert result.exit_code == 1 and str(path) in result.stderr and "Traceback" not in result.output
    got = world.run("get", "gnp", "deny-other-ingress", "-o", "yaml")
    assert got.exit_code == 1 and str(path) in got.stderr
    check = world.run("datastore", "check")
    assert check.exit_code == 1 and str(path) in check.stderr
    assert world.tables() == kernel  # the kernel never got the partial policy
    # Repair does not guess: the object stays until dropped explicitly, then is re-applied.
    assert world.run("datastore", "repair").exit_code == 1
    dropped = world.ok("datastore", "repair", "--drop-damaged")
    assert "removed gnp/deny-other-ingress from the index" in dropped.stdout
    world.ok("apply", "-f", str(SCENARIOS))
    world.ok("datastore", "check")
    assert world.tables() == world.fresh()


def test_a_legacy_index_without_checksums_still_refuses_an_emptied_document(world: World) -> None:
    index = world.state / "state.json"
    raw = json.loads(index.read_text())
    for entry in raw["objects"]:
        entry.pop("sha256")
    index.write_text(json.dumps(raw))
    assert len(Datastore(world.state).resources().policies) > 0  # old stores still read
    obj = Datastore(world.state).find("gnp", "deny-other-ingress")
    (world.state / obj.file).write_bytes(b"")
    with pytest.raises(DamagedDatastore, match="is damaged"):
        Datastore(world.state).resources()


# ---- names -------------------------------------------------------------------------------------


def long_name(n: int) -> str:
    labels, left = [], n
    while left > 0:
        take = min(60, left if left <= 60 else left - 1)
        labels.append("p" * take)
        left -= take + 1
    name = ".".join(labels)
    assert len(name) == n
    return name


@pytest.mark.parametrize("length", [223, 250, 253])
def test_names_kubernetes_allows_get_bounded_file_names(tmp_path: Path, length: int) -> None:
    name = long_name(length)
    doc = tmp_path / "long.yaml"
    doc.write_text(textwrap.dedent(f"""\
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: {name}, namespace: {"n" * 63}}}
        spec:
          podSelector: {{matchLabels: {{app: web}}}}
          ingress: [{{}}]
        """))
    ds = Datastore(tmp_path / "state")
    assert ds.apply_documents([str(doc)]).changed  # before: OSError: File name too long
    obj = ds.find("knp", name)
    assert all(len(part.encode()) <= 130 for part in obj.file.split("/"))
    assert obj.file.endswith(f"@{obj.revision}.yaml") and "~" in obj.file
    assert [p.name for p in Datastore(ds.path).resources().policies] == [name]
    assert not ds.apply_documents([str(doc)]).changed
    # Two names that share their first 120 characters still get two files.
    other = doc.read_text().replace(name, name[:-1] + "q")
    (tmp_path / "other.yaml").write_text(other)
    ds.apply_documents([str(tmp_path / "other.yaml")])
    assert len({o.file for o in ds.objects()}) == 2
    ds.delete("knp", name)
    assert [o.key.name for o in ds.objects()] == [name[:-1] + "q"]


# ---- rule ids ----------------------------------------------------------------------------------


def test_ids_are_appended_never_rewritten(world: World) -> None:
    ids, rules = world.ds.ids_path.read_bytes(), world.ds.rules_path.read_bytes()
    world.ok("apply", "-f", world.edited())
    assert world.ds.ids_path.read_bytes().startswith(ids) and len(world.ds.ids_path.read_bytes()) > len(ids)
    assert world.ds.rules_path.read_bytes().startswith(rules) and len(world.ds.rules_path.read_bytes()) > len(rules)


@pytest.mark.parametrize("damage", ["emptied", "cut mid-line", "lost its tail"])
def test_lost_ids_stop_the_change_before_commit_and_repair_keeps_every_meaning(world: World, damage: str) -> None:
    ids = world.ds.ids_path
    data = ids.read_bytes()
    lines = data.splitlines(keepends=True)
    ids.write_bytes({"emptied": b"", "cut mid-line": data[: len(data) // 2],
                     "lost its tail": b"".join(lines[: len(lines) // 2])}[damage])
    before = RuleTable.load(world.ds.rules_path)
    revision, kernel = world.ds.revision, world.tables()
    edit = world.edited()
    # Before: 42 ids reassigned to other rules. Now: refused, the datastore did not move.
    refused = world.run("apply", "-f", edit)
    assert refused.exit_code == 1 and str(ids) in refused.stderr and "missing" in refused.stderr
    assert "Traceback" not in refused.output
    assert world.ds.revision == revision and world.tables() == kernel
    assert world.run("datastore", "check").exit_code == 1
    repaired = world.ok("datastore", "repair")
    assert f"rewrote {ids}" in repaired.stdout
    world.ok("apply", "-f", edit)
    after = RuleTable.load(world.ds.rules_path)
    assert all(after.get(ref.id) == ref for ref in before)  # no id changed meaning
    new = [r for r in after if before.get(r.id) is None]
    assert new and min(r.id for r in new) > max(r.id for r in before)
    world.ok("datastore", "check")
    assert world.tables() == world.fresh()


def test_a_torn_append_is_cut_and_the_apply_proceeds(world: World) -> None:
    with world.ds.ids_path.open("ab") as f:
        f.write(b'{"key": ["rule", "GlobalNet')
    with world.ds.rules_path.open("ab") as f:
        f.write(b'{"action": "Allow", "direc')
    assert world.run("datastore", "check").exit_code == 1
    world.ok("apply", "-f", world.edited())
    assert world.ds.ids_path.read_bytes().endswith(b"\n") and world.ds.rules_path.read_bytes().endswith(b"\n")
    world.ok("datastore", "check")
    assert world.tables() == world.fresh()


def test_a_garbled_line_names_file_and_line(world: World) -> None:
    rules = world.ds.rules_path
    lines = rules.read_bytes().splitlines(keepends=True)
    lines[2] = b"{not json\n"
    rules.write_bytes(b"".join(lines))
    result = world.run("apply", "-f", world.edited())
    assert result.exit_code == 1 and f"{rules}:3: not a JSON line" in result.stderr
    assert "Traceback" not in result.output


def test_an_id_never_changes_meaning() -> None:
    ref = RuleRef(7, "GlobalNetworkPolicy", None, "a", "default", 1, "ingress", 0, "Allow")
    table = RuleTable([ref])
    assert table.merged(RuleTable([ref])) is table
    with pytest.raises(RuleIdError, match="rule id 7 would change meaning"):
        table.merged({7: RuleRef(7, "GlobalNetworkPolicy", None, "b", "default", 1, "ingress", 0, "Deny")})


def test_a_rules_file_with_two_meanings_for_an_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.jsonl"
    a = RuleRef(3, "GlobalNetworkPolicy", None, "a", "default", 1, "ingress", 0, "Allow")
    b = RuleRef(3, "GlobalNetworkPolicy", None, "b", "default", 1, "ingress", 0, "Allow")
    RuleTable.append(path, [a])
    RuleTable.append(path, [b])
    with pytest.raises(RuleIdError, match=f"{path}:2: rule id 3 written twice"):
        RuleTable.load(path)


def test_repair_restores_keys_the_compiler_uses(world: World) -> None:
    ids = IdAllocator.load(world.ds.ids_path)
    by_id = {v: k for k, v in ids.items() if k[0] != "gate"}
    refs = RuleTable.load(world.ds.rules_path)
    derived = [(key_of(r), by_id[r.id]) for r in refs if key_of(r) is not None]
    assert derived and all(a == b for a, b in derived)
    kinds = {r.kind for r in refs if key_of(r) is not None}
    assert {"GlobalNetworkPolicy", "EndOfTier", "NoProfileMatch", "Failsafe", "Default"} <= kinds


# ---- modes -------------------------------------------------------------------------------------


def test_every_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        w = World(tmp_path)
        w.ok("apply", "-f", str(SCENARIOS))
        w.ok("policy", "disable", "deny-other-ingress")
        w.ok("apply", "-f", w.edited("allow-cluster-internal"))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.lstat().st_mode) for p in w.state.rglob("*")}
    modes["state"] = stat.S_IMODE(w.state.stat().st_mode)
    assert {k: m for k, m in modes.items() if (tmp_path / k).is_dir() and m != 0o700} == {}
    assert {k: m for k, m in modes.items() if (tmp_path / k).is_file() and m != 0o600} == {}
    assert any(k.endswith("ids.jsonl") for k in modes) and any(k.endswith(".state.json") for k in modes)


# ---- applied records and an interrupted apply ----------------------------------------------------


def test_a_wrong_state_record_is_not_trusted_forever(world: World) -> None:
    world.walk = True  # its toggles are served from the record: the record is what this is about
    world.ok("apply", "-f", str(SCENARIOS))  # laid out again as the walk
    record = world.ds.applied_dir / "node-a.state.json"
    state = json.loads(record.read_text())
    # Well-formed, same ruleset generation, but a closed gate the kernel never had.
    state["elements"]["closed"] = sorted([*state["elements"]["closed"], "0xfff0"])
    record.write_text(json.dumps(state))
    # Before: every toggle failed with ENOENT, forever.
    toggled = world.run("policy", "disable", "deny-other-ingress")
    assert toggled.exit_code == 0, toggled.output
    assert world.tables() == world.fresh()
    assert "0xfff0" not in json.loads(record.read_text())["elements"]["closed"]
    again = world.ok("policy", "enable", "deny-other-ingress")
    assert "gates switched, no compile" in again.stdout
    assert world.tables() == world.fresh()


def test_an_apply_stopped_before_the_kernel_is_recorded_and_healed(world: World) -> None:
    enforced = world.ds.revision
    world.ds.apply_documents([world.edited()])  # committed; the process "died" before reconciling
    check = world.run("datastore", "check")
    assert check.exit_code == 1
    assert f"node node-a enforces revision {enforced}, the datastore is at {world.ds.revision}" in check.stderr
    status = world.run("status", "--db", str(world.tmp / "none.duckdb"))
    assert "node node-a enforces datastore revision" in status.stderr
    assert world.tables() != world.fresh()
    healed = world.ok("datastore", "repair")
    assert "datastore OK" in healed.output
    assert world.tables() == world.fresh()
    assert world.run("datastore", "check").exit_code == 0


def test_check_says_when_there_is_no_datastore(tmp_path: Path) -> None:
    result = World(tmp_path).run("datastore", "check")
    assert result.exit_code == 1 and "no datastore at" in result.stderr


# ---- lab down ----------------------------------------------------------------------------------


def test_lab_down_removes_the_labs_wireguard_runtime_dirs(tmp_path: Path) -> None:
    for name in ("ft-x1-node-a", "ft-x1-node-b", "ft-x12-node-a", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ftwg0.log").write_text("")
    assert remove_runtime_dirs("x1", tmp_path) == ["ft-x1-node-a", "ft-x1-node-b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft-x12-node-a", "other"]


def test_lab_down_calls_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enforcer.lab.netns as netns

    (tmp_path / "ft-zq9-node-a").mkdir()
    monkeypatch.setattr(netns, "WIREGUARD_RUN_DIR", tmp_path)
    assert netns.lab_down("zq9") == 0  # no namespace of that lab: nothing else to remove
    assert list(tmp_path.iterdir()) == []


# ---- kill -9 between the datastore's commit and the kernel's (kernel) ----------------------------

CLI = """
import sys
from flowtui.cli.main import cli
cli(sys.argv[1:], prog_name="flowtui")
"""
# The real `flowtui apply`, killed (SIGKILL) right after the datastore committed, as the
# reconciler starts: the datastore is ahead of every node's kernel.
KILL_AT_RECONCILE = """
import os
import enforcer.reconcile as r
r.Reconciler.reconcile = lambda *a, **k: os.kill(os.getpid(), 9)
""" + CLI


def flowtui(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.mark.kernel
def test_kill_9_between_commit_and_kernel_apply(kernel: None, lab_id: str, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    up = flowtui("lab", "up", "-f", str(SCENARIOS), "--lab", lab_id, "--state-dir", state)
    assert up.returncode == 0, up.stderr
    w = World(tmp_path)
    edit = w.edited()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_RECONCILE, "apply", "-f", edit, "--lab", lab_id,
                             "--state-dir", state], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert "configured" in killed.stdout  # the datastore committed
    status = flowtui("lab", "status", "--lab", lab_id, "--state-dir", state)
    assert status.returncode == 0 and "enforces datastore revision" in status.stdout, status.stdout
    assert flowtui("datastore", "check", "--lab", lab_id, "--state-dir", state).returncode == 1
    healed = flowtui("datastore", "repair", "--lab", lab_id, "--state-dir", state)
    assert healed.returncode == 0, healed.stderr
    assert flowtui("datastore", "check", "--lab", lab_id, "--state-dir", state).returncode == 0
    assert "enforces datastore revision" not in flowtui("lab", "status", "--lab", lab_id, "--state-dir", state).stdout
    # The kernel holds what a fresh compile of the datastore gives (the edit included).
    from enforcer.reconcile import fingerprint
    from flowtui.cli.state import default_backend

    compile_fn, options = real_compiler()
    ds = Datastore(state)
    nodes = sorted(n.name for n in ds.resources().nodes)
    fresh = compile_nodes(ds.resources(), compile_fn, options, IdAllocator.load(ds.ids_path), lab_id, nodes)
    backend = default_backend(lab_id)
    for node, compiled in fresh.items():
        live = backend.current(node)
        assert live is not None and fingerprint(live) == fingerprint(compiled.table), node
