"""The dashboard on a store imported from real Hubble material (`../shared/external/material/interop/`):
the what-if editor decides the flows as the pods the import recorded (as `flowtui whatif --db` does),
so an edit names the flows it would newly deny; the flow detail shows the L7 summary of the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowtui.cli.main import cli
from flowtui.tui.app import make_app
from flowtui.tui.control import PolicyControl
from flowtui.tui.screens.detail import DetailScreen
from flowtui.tui.screens.whatif import WhatIfScreen
from flowtui.tui.sources import StoreSource
from flowtui.tui.widgets.detail.panels import recorded_panel
from tests.test_interop_material import DENY_DNS, MATERIAL
from tests.test_tui_app import SIZE, sync, until

REDIRECTED = MATERIAL / "hubble" / "hubble-otel__basic-sample-400-l7-redirected-flows.json"
pytestmark = pytest.mark.skipif(not MATERIAL.is_dir(), reason=f"{MATERIAL} is not here")


def imported(tmp_path: Path, path: Path) -> Path:
    db = tmp_path / "h.duckdb"
    result = CliRunner().invoke(cli, ["import", "hubble", str(path), "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return db


@sync
async def test_whatif_in_the_dashboard_names_the_newly_denied_imported_flows(tmp_path: Path) -> None:
    db = imported(tmp_path, REDIRECTED)
    empty = tmp_path / "cluster"
    empty.mkdir()  # no cluster files: every pod is known only from the flows Hubble recorded
    app = make_app(StoreSource(db), PolicyControl(files=[str(empty)], read_only=True, why_read_only="a test"),
                   queries_dir=Path("/nonexistent"))
    async with app.run_test(size=SIZE) as pilot:
        app.switch_mode("whatif")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WhatIfScreen)
        screen.editor.load_text(DENY_DNS)
        await until(pilot, lambda: screen.outcome is not None and screen.outcome.ok, timeout=30)
        outcome = screen.outcome
        assert outcome is not None
        # jq over the file: the UDP/53 flows from namespace bookinfo to the k8s-app=kube-dns pods (as the CLI test)
        groups = sorted((g.source, g.destination, g.port, g.flows)
                        for g in outcome.report.categories["newly_denied"].groups)
        assert groups == [
            ("bookinfo/productpage-v1-6b746f74dc-9rcxx", "kube-system/coredns-558bd4d5db-9grjv", 53, 58),
            ("bookinfo/productpage-v1-6b746f74dc-9rcxx", "kube-system/coredns-558bd4d5db-w2m67", 53, 54),
            ("bookinfo/ratings-v1-b6994bb9-jgqxb", "kube-system/coredns-558bd4d5db-9grjv", 53, 27),
            ("bookinfo/ratings-v1-b6994bb9-jgqxb", "kube-system/coredns-558bd4d5db-w2m67", 53, 39),
        ]
        assert outcome.recorded_pods > 0
        assert screen.query_one("#whatif-table").row_count == 4
        summary = str(screen.query_one("#whatif-summary").render())
        assert "newly denied 178" in summary and f"{outcome.recorded_pods} pods" in summary


@sync
async def test_flow_detail_shows_the_l7_summary_hubble_recorded(tmp_path: Path) -> None:
    http = MATERIAL / "hubble" / "hubble-otel__basic-sample-5-http-flows.json"
    db = imported(tmp_path, http)
    source = StoreSource(db)
    table = source.recent(None, 100)
    [row] = [r for r in table.to_pylist() if r["dport"] == 9990]
    app = make_app(source, PolicyControl(), queries_dir=Path("/nonexistent"))
    async with app.run_test(size=SIZE) as pilot:
        screen = DetailScreen(row)
        app.push_screen(screen)
        await until(pilot, lambda: screen.explanation is not None, timeout=30)
        assert screen.explanation is not None
        assert screen.explanation.l7 == ["http GET http://10.128.0.4:9990/metrics"]  # the record's method and URL
        assert "L7 http GET http://10.128.0.4:9990/metrics" in _text(recorded_panel(screen.explanation))


def _text(renderable: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()
