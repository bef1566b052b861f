"""`flowtui collect` / `flowtui status` from the command line, and the headless-core contract."""

from __future__ import annotations

import json
import random
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


def test_status_shows_how_far_the_rollups_reach(tmp_path: Path) -> None:
    from tests.test_store_rollups import T0, endpoint_rows, insert, random_flows, rule_rows

    db = tmp_path / "f.duckdb"
    store = DuckStore(db, snapshot_interval=None)
    store.insert_rows("rules", rule_rows())
    store.insert_rows("endpoints", endpoint_rows())
    insert(store, random_flows(random.Random(3), 300))  # 5 hours from T0
    store.roll_up(T0 + timedelta(hours=2))
    want = {t: store.query(f"SELECT count(*) FROM {t}")[0][0] for t in ("pair_hours", "rule_hours", "talkers")}
    store.close(snapshot=False)
    runner = CliRunner()
    doc = json.loads(runner.invoke(status_cmd, ["--db", str(db), "-o", "json"]).output)
    assert doc["rollups"]["rolled_until"] == str(T0 + timedelta(hours=2)) and doc["rollups"]["compacted_until"] is None
    assert doc["rollups"]["rows"] == want and all(want.values())
    text = runner.invoke(status_cmd, ["--db", str(db)]).output
    assert f"rollups: flows before 2026-03-14 11:00:00 UTC rolled up; {want['pair_hours']:,} pair-hours" in text
    assert "per day" not in text
    store = DuckStore(db, snapshot_interval=None)  # a flow the next day, then that day's hours compacted
    insert(store, [dict(random_flows(random.Random(4), 1)[0], start_time=T0 + timedelta(hours=16),
                        end_time=T0 + timedelta(hours=16, seconds=15))])
    store.roll_up()
    assert store.compact_days(T0 + timedelta(days=1)) == 1
    store.close(snapshot=False)
    doc = json.loads(runner.invoke(status_cmd, ["--db", str(db), "-o", "json"]).output)
    assert doc["rollups"]["days_until"] == "2026-03-15 00:00:00"
    text = runner.invoke(status_cmd, ["--db", str(db)]).output
    assert "rollups: flows before 2026-03-15 02:00:00 UTC rolled up, per day before 2026-03-15 00:00:00 UTC;" in text


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


# ---- which lab, and where names come from -------------------------------------------------------


def test_collect_without_lab_reads_the_one_lab_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import flowtui.collector.service as service

    monkeypatch.delenv("FLOWTUI_LAB", raising=False)
    monkeypatch.setattr(service, "labs_up", lambda: ["solo"])
    monkeypatch.setattr(service, "lab_namespaces", lambda lab: [])  # gone between the look and the read
    done = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "f.duckdb"), "--state-dir", str(tmp_path)])
    assert "reading lab solo (the one that is up)" in done.output
    assert done.exit_code == 1 and "lab solo has no node namespaces" in done.output


def test_collect_without_lab_names_the_labs_up_and_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import flowtui.collector.service as service

    monkeypatch.delenv("FLOWTUI_LAB", raising=False)
    monkeypatch.setattr(service, "labs_up", lambda: ["blue", "green"])
    done = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "f.duckdb")])
    assert done.exit_code == 2 and "2 labs are up (blue, green): choose one with --lab ID" in done.output
    assert not (tmp_path / "f.duckdb").exists()  # nothing was started


def test_collect_with_no_lab_up_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import flowtui.collector.service as service

    monkeypatch.delenv("FLOWTUI_LAB", raising=False)
    monkeypatch.setattr(service, "labs_up", lambda: [])
    done = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "f.duckdb")])
    assert done.exit_code == 1 and "no lab is up" in done.output and "--host" in done.output
    both = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "f.duckdb"), "--host", "--lab", "x"])
    assert both.exit_code == 2 and "give one" in both.output


def test_the_datastore_gives_the_rule_table_and_follows_endpoint_changes(tmp_path: Path) -> None:
    """What `collect` reads by default: the datastore `apply` wrote, re-read when it changes."""
    from enforcer.datastore import Datastore
    from flowtui.collector.node import datastore_loader

    pods = tmp_path / "pods.yaml"
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop, labels: {{app: web{extra}}}}}\n"
           "spec: {{nodeName: n1}}\nstatus: {{podIP: 10.244.1.5}}\n---\n"
           "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n")
    pods.write_text(pod.format(extra=""))
    ds = Datastore(tmp_path / "state")
    ds.apply_documents([str(pods)])
    load = datastore_loader(ds, None)
    assert [(p.namespace, p.name, p.labels) for p in load().pods] == [("shop", "web", (("app", "web"),))]
    stamp = (ds.path / "state.json").stat().st_mtime_ns
    pods.write_text(pod.format(extra=", release: canary"))
    ds.apply_documents([str(pods)])
    assert (ds.path / "state.json").stat().st_mtime_ns != stamp  # what the writer watches
    assert dict(load().pods[0].labels) == {"app": "web", "release": "canary"}


def test_collect_says_when_the_datastore_is_not_the_labs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import flowtui.collector.service as service
    from enforcer.datastore import Datastore

    node = tmp_path / "node.yaml"
    node.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n")
    Datastore(tmp_path / "state").apply_documents([str(node)])
    monkeypatch.delenv("FLOWTUI_LAB", raising=False)
    monkeypatch.setattr(service, "labs_up", lambda: ["t0none"])
    monkeypatch.setattr(service, "lab_namespaces", lambda lab: [f"ft-{lab}-node-n1", f"ft-{lab}-node-n9"])
    args = ["--db", str(tmp_path / "f.duckdb"), "--state-dir", str(tmp_path / "state")]
    done = CliRunner().invoke(collect_cmd, args)
    assert "has no Node n9: is it the one this lab was made from?" in done.output
    assert done.exit_code == 1  # and then: no such namespace to read in
    empty = CliRunner().invoke(collect_cmd, ["--db", str(tmp_path / "g.duckdb"), "--state-dir", str(tmp_path / "x")])
    assert "no datastore at" in empty.output and empty.exit_code == 1
