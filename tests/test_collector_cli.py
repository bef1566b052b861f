"""`flowtui collect` / `flowtui status` from the command line, and the headless-core contract."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowtui.cli.collect import collect_cmd, parse_duration, parse_size, status_cmd
from flowtui.collector.loss import LossBook, ensure_all_causes
from flowtui.store.duckdb_store import DuckStore, utcnow


def make_store(path: Path) -> None:
    store = DuckStore(path, snapshot_interval=None)
    run = store.begin_run({"test": True})
    sid = store.add_source(run, "ft-lab-node-n1", "n1", (1, 2), 1 << 26)
    book = LossBook(run)
    ensure_all_causes(book, [sid])
    book.count("received", 1000, sid)
    book.count("stored", 990)
    book.lose("rcvbuf_overrun", 7, sid)
    book.lose("malformed", 3)
    book.set("enobufs", 2, sid)
    loss, stats = book.rows(utcnow())
    store.insert_rows("loss", loss)
    store.insert_rows("stats", stats)
    store.end_run(run)
    store.close(snapshot=False)


def test_status_text_and_json(tmp_path: Path) -> None:
    db = tmp_path / "f.duckdb"
    make_store(db)
    runner = CliRunner()
    done = runner.invoke(status_cmd, ["--db", str(db)])
    assert done.exit_code == 0, done.output
    assert "received 1,000, stored 990, lost 10" in done.output
    assert "rcvbuf_overrun" in done.output and "enobufs 2" in done.output
    assert "n1 (ft-lab-node-n1): received 1,000, lost 7, rcvbuf_overrun 7" in done.output
    doc = json.loads(runner.invoke(status_cmd, ["--db", str(db), "-o", "json"]).output)
    run = doc["runs"][0]
    assert run["lost"]["rcvbuf_overrun"] == 7 and run["lost"]["malformed"] == 3 and run["lost_total"] == 10
    assert run["loss_ratio"] == pytest.approx(10 / 1007)


def test_status_without_a_store_fails_cleanly(tmp_path: Path) -> None:
    done = CliRunner().invoke(status_cmd, ["--db", str(tmp_path / "none.duckdb")])
    assert done.exit_code == 1 and "no flow store" in done.output


def test_collect_refuses_namespaces_outside_the_lab(tmp_path: Path) -> None:
    done = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "f.duckdb"), "--netns", "default"])
    assert done.exit_code == 1 and "only lab namespaces" in done.output


def test_collect_help_reads_like_documentation() -> None:
    out = CliRunner().invoke(collect_cmd, ["--help"]).output
    for word in ("--db", "--lab", "--duration", "snapshot", "--retain-events", "--no-events"):
        assert word in out


def test_durations_and_sizes() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("none") is None
    assert parse_size("64M") == 64 << 20
    with pytest.raises(Exception, match="use e.g."):
        parse_duration("soon")


def test_collector_and_store_never_import_the_ui() -> None:
    code = (
        "import sys, flowtui.collector.service, flowtui.collector.testbed, flowtui.store.status, "
        "flowtui.cli.collect; "
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
