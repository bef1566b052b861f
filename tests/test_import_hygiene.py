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
