"""Every read-only command that takes `--db` reads a Parquet export (`flowtui export --format
parquet`) as it reads the store it was exported from: `status`, the dashboard (`tui`, built as the
command builds it and driven with Textual's pilot), `whatif` and `query`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from textual.widgets import DataTable

from flowtui.cli.common import scenario_dir
from flowtui.cli.main import cli
from flowtui.demo.synthetic import article_recording

DENY_ALL = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all-ingress}
spec:
  order: 1
  selector: all()
  types: [Ingress]
  ingress:
  - action: Deny
"""


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"flowtui {' '.join(args)}: {result.output}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def store_and_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    db = article_recording(root / "store.duckdb", events=2000)
    invoke("export", "--format", "parquet", "--db", str(db), "--out", str(root / "export"))
    assert (root / "export" / "flows").is_dir()  # hive-partitioned, not one <table>.parquet
    return db, root / "export"


def status(db: Path, tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(invoke("status", "--db", str(db), "-o", "json",
                                            "--state-dir", str(tmp_path / "state")).stdout)
    doc.pop("path")
    return doc


def test_status_reads_an_export_as_the_store(store_and_export: tuple[Path, Path], tmp_path: Path) -> None:
    db, export = store_and_export
    of_store = status(db, tmp_path)
    assert of_store["tables"]["flows"] > 0 and of_store["runs"][0]["received"] > 0
    assert status(export, tmp_path) == of_store
    assert status(export / "rules.parquet", tmp_path) == of_store  # a table file of it opens the whole export


def dashboard(db: Path, tmp_path: Path) -> dict[str, Any]:
    """What the dashboard shows on `--db db`: its status line's counts and each screen's rows."""
    from flowtui.cli.tui import build_app

    app = build_app(str(db), None, paths=(str(scenario_dir()),), state_dir=str(tmp_path / "state"), read_only=True)
    seen: dict[str, Any] = {}

    async def drive() -> None:
        async with app.run_test(size=(150, 42)) as pilot:
            for key, mode in (("2", "conversations"), ("3", "policies")):
                await pilot.press(key)
                # Rows and then their counts arrive from workers: read until two reads agree.
                rows: list[Any] = []
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    await pilot.pause(0.5)
                    now = [t.get_row_at(i) for t in app.screen.query(DataTable) for i in range(t.row_count)]
                    if now and now == rows:
                        break
                    rows = now
                seen[mode] = rows

    try:
        asyncio.run(drive())
        st = app.source.status()
        seen["status"] = (st.events_total, st.flows_stored, st.loss, st.collector)
    finally:
        app.source.close()
    return seen


def test_the_dashboard_opens_an_export_as_the_store(store_and_export: tuple[Path, Path], tmp_path: Path) -> None:
    db, export = store_and_export
    of_store = dashboard(db, tmp_path)
    assert of_store["status"][1] > 0 and of_store["conversations"] and of_store["policies"]
    assert dashboard(export, tmp_path) == of_store


def test_whatif_and_query_read_an_export_as_the_store(store_and_export: tuple[Path, Path], tmp_path: Path) -> None:
    db, export = store_and_export
    (tmp_path / "deny.yaml").write_text(DENY_ALL)
    outputs = []
    for source in (db, export):
        whatif = invoke("whatif", "--db", str(source), "--current", str(scenario_dir()), "-f",
                        str(tmp_path / "deny.yaml"), "-o", "json").stdout
        query = invoke("query", "top_denied", "--db", str(source), "-o", "json").stdout
        report = json.loads(whatif)
        del report["timings"]  # seconds: the one part that may differ
        outputs.append((report, json.loads(query)))
    assert outputs[0][0]["summary"]["newly_denied"] > 0 and outputs[0][1]
    assert outputs[1] == outputs[0]
