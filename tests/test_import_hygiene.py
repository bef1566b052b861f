"""The headless core never loads the UI, and the CLI starts without Textual.

Each check imports modules in a fresh interpreter and inspects `sys.modules` there (the test
process itself may well have Textual loaded by other tests).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("enforcer", "enforcer.evaluate", "enforcer.loader", "enforcer.nft.compiler", "enforcer.resolve",
        "enforcer.agent", "enforcer.agent_metrics", "enforcer.agent_status", "enforcer.nft.node_backend")

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"modules": sorted(sys.modules), "files": {n: sys.modules[n].__file__ for n in sys.argv[1:]}}))
"""


def loaded_after_importing(*names: str) -> tuple[set[str], dict[str, str]]:
    """Module names in a fresh interpreter after importing `names`, and where those came from."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *names], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    return set(out["modules"]), out["files"]


def tops(modules: set[str], *packages: str) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages)


@pytest.mark.parametrize("module", CORE)
def test_core_imports_neither_textual_nor_flowtui(module: str) -> None:
    modules, files = loaded_after_importing(module)
    assert Path(files[module]).is_relative_to(ROOT)  # this tree, not some installed copy
    assert tops(modules, "textual") == []
    assert tops(modules, "flowtui") == []


def test_all_of_the_core_together() -> None:
    modules, _ = loaded_after_importing(*CORE)
    assert tops(modules, "textual", "flowtui") == []


def test_cli_does_not_import_textual() -> None:
    modules, files = loaded_after_importing("flowtui.cli")
    assert Path(files["flowtui.cli"]).is_relative_to(ROOT)
    assert "flowtui.cli.main" in modules  # the whole command tree was imported
    assert tops(modules, "textual") == []


# ------------------------------------------------------------------------------------------------
# Import cycles: every `import` counts, also those inside functions (a lazy import hides a cycle
# from the interpreter, not from a reader).

ACYCLIC = ("flowtui.whatif", "flowtui.demo", "flowtui.interop", "flowtui.store", "flowtui.query",
           "flowtui.collector", "flowtui.cli", "flowtui.tui")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from pkg import name` counts `pkg.name` when that
    is a module)."""
    files = {module_name(p): p for top in ("flowtui", "enforcer") for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                       for n in ast.walk(block)}  # `if TYPE_CHECKING:` imports are for the type checker only
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:  # a submodule naming its own package is how packages work, not a cycle
                if target in files and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def cycles(graph: dict[str, set[str]], scope: tuple[str, ...]) -> list[list[str]]:
    """Strongly connected components (of more than one module) among the modules in `scope`."""
    nodes = [n for n in graph if n.startswith(scope)]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if not nxt.startswith(scope):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert {"flowtui.whatif.pcap", "flowtui.whatif.sources"} <= graph["flowtui.cli.whatif"] | graph[
        "flowtui.whatif.sources"]  # the graph sees function-level imports
    assert "flowtui.tui.screens.base" in graph and graph["flowtui.tui.app"]  # the dashboard is in the graph
    assert cycles(graph, ACYCLIC) == []


def test_the_cycle_finder_finds_one() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}, "a.w": {"a.x"}}
    assert cycles(graph, ("a",)) == [["a.x", "a.y", "a.z"]]
