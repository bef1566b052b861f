"""The headless core never loads the UI, and the CLI starts without Textual.

Each check imports modules in a fresh interpreter and inspects `sys.modules` there (the test
process itself may well have Textual loaded by other tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("enforcer", "enforcer.evaluate", "enforcer.loader", "enforcer.nft.compiler", "enforcer.resolve")

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


# ---- no import cycles inside the dashboard ----------------------------------------------------


def _imports_of(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports, at any depth of the file (lazy imports inside
    functions count: they are cycles deferred, not removed), except `if TYPE_CHECKING:` blocks."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parent = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found.update(n for n in names if n == package or n.startswith(package + "."))
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name that is an attribute, not a module,
    is resolved to the module that defines it)."""
    folder = ROOT / package.replace(".", "/")
    modules: dict[str, Path] = {}
    for path in folder.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports_of(path, package):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_dashboard_has_no_import_cycles() -> None:
    graph = import_graph("flowtui.tui")
    assert "flowtui.tui.screens.base" in graph and graph["flowtui.tui.app"]  # the graph is real
    assert cycles(graph) == []
