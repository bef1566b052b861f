"""The DuckDB store: schema, batched inserts, retention, snapshots readers can open while it writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import get_args

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from enforcer.ruleids import RuleKind
from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore, Retention, open_reader, snapshot_path


def events(n: int, start: int = 0, when: datetime | None = None) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    t = int(((when or datetime(2026, 1, 1)) - datetime(1970, 1, 1)).total_seconds() * 1e6)
    for c in schema.EVENTS.columns:
        if c.optional:  # the collector leaves the imports' columns out
            continue
        if c.name == "time":
            cols[c.name] = pa.array(np.full(n, t, dtype=np.int64)).cast(pa.timestamp("us"))
        elif c.name == "seq":
            cols[c.name] = pa.array(np.arange(start, start + n, dtype=np.uint32))
        elif pa.types.is_string(c.arrow):
            cols[c.name] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array(["10.0.0.1"]))
        else:
            cols[c.name] = pa.array(np.ones(n, dtype=c.arrow.to_pandas_dtype()), type=c.arrow)
    return pa.table(cols)


def test_schema_is_documented_in_the_database(tmp_path: Path) -> None:
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        undocumented = store.query(
            "SELECT table_name, column_name FROM duckdb_columns() WHERE comment IS NULL "
            "AND table_name IN (SELECT table_name FROM duckdb_tables())"
        )
        assert undocumented == []
        tables = {r[0] for r in store.query("SELECT table_name FROM duckdb_tables()")}
        assert tables == {t.name for t in schema.ALL_TABLES}
        views = {r[0] for r in store.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
        assert set(schema.VIEWS) <= views
        for name in schema.VIEWS:
            store.query(f"SELECT * FROM {name} LIMIT 0")  # every view compiles
    finally:
        store.close(snapshot=False)
    text = schema.markdown()
    assert "## `events`" in text and "| `rule_id` | INTEGER |" in text
    # reopening applies the DDL again without harm
    DuckStore(tmp_path / "f.duckdb", snapshot_interval=None).close(snapshot=False)


def test_rule_kinds_are_all_named_in_the_database_and_reference(tmp_path: Path) -> None:
    """`rules.kind` holds a RuleKind; its COMMENT ON (and so SCHEMA.md) names every one of them,
    ClusterNetworkPolicy included, so a reader of the store knows what to filter on."""
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        [(comment,)] = store.query(
            "SELECT comment FROM duckdb_columns() WHERE table_name = 'rules' AND column_name = 'kind'")
    finally:
        store.close(snapshot=False)
    assert [k for k in get_args(RuleKind) if k not in comment] == []
    assert f"| `kind` | VARCHAR | {comment} |" in Path(schema.__file__).with_name("SCHEMA.md").read_text()


def test_arrow_schemas_match_the_ddl(tmp_path: Path) -> None:
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        for t in schema.TABLES:
            store.insert(t.name, t.arrow_schema.empty_table())
            got = [r[0] for r in store.query(f"SELECT column_name FROM duckdb_columns() WHERE table_name = '{t.name}'")]
            assert got == t.full_arrow_schema.names
            assert t.arrow_schema.names == [c.name for c in t.columns if not c.optional]
    finally:
        store.close(snapshot=False)


def test_batched_inserts_columns_by_name_and_small_rows(tmp_path: Path) -> None:
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        batch = events(1000)
        store.insert("events", batch.select(list(reversed(batch.schema.names))))  # any column order
        assert store.query("SELECT count(*), max(seq), min(src_ip) FROM events") == [(1000, 999, "10.0.0.1")]
        run = store.begin_run({"x": 1})
        sid = store.add_source(run, "ft-lab-node-a", "a", (1, 2), 1 << 20)
        assert store.query("SELECT netns, node, groups FROM sources WHERE source_id = ?", [sid]) == [
            ("ft-lab-node-a", "a", "1,2")
        ]
        store.end_run(run)
        assert store.query("SELECT ended IS NOT NULL FROM runs") == [(True,)]
        assert store.stats.inserted["events"] == 1000
    finally:
        store.close(snapshot=False)


def test_retention_deletes_only_what_is_old(tmp_path: Path) -> None:
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    now = datetime(2026, 6, 1, 12)
    try:
        store.insert("events", events(10, when=now - timedelta(hours=30)))
        store.insert("events", events(5, when=now - timedelta(hours=1)))
        store.insert_rows("stats", [{"time": now - timedelta(days=40), "run_id": 1, "name": "x", "value": 1}])
        deleted = store.retain(Retention(events=timedelta(hours=24), counters=timedelta(days=30)), now=now)
        assert deleted == 11
        assert store.query("SELECT count(*) FROM events") == [(5,)]
        assert store.retain(Retention(events=None, flows=None, connections=None, counters=None), now=now) == 0
    finally:
        store.close(snapshot=False)


def test_snapshots_are_consistent_while_inserts_continue(tmp_path: Path) -> None:
    """Readers open the snapshot read-only while the writer keeps inserting (and checkpointing)."""
    path = tmp_path / "live.duckdb"
    store = DuckStore(path, snapshot_interval=0.0)
    batch = events(20_000)
    stop = threading.Event()
    checked = []

    def reader() -> None:
        snap = snapshot_path(path)
        while not stop.is_set():
            if snap.exists():
                con = duckdb.connect(str(snap), read_only=True)
                n, top = con.execute("SELECT count(*), max(seq) FROM events").fetchone()  # type: ignore[misc]
                con.close()
                assert n == top + 1 and n % 20_000 == 0  # whole batches, nothing torn
                checked.append(n)
            time.sleep(0.01)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            store.insert(
                "events", batch.set_column(3, "seq", pa.array(np.arange(i * 20_000, (i + 1) * 20_000, dtype=np.uint32)))
            )
            if store.snapshot_due():
                store.snapshot()
    finally:
        store.close()  # the final snapshot holds everything
        stop.set()
        t.join()
    assert checked and store.stats.snapshots >= 2
    con = duckdb.connect(str(snapshot_path(path)), read_only=True)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (800_000,)
    con.close()


def test_open_reader_falls_back_to_the_snapshot_while_a_writer_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.duckdb"
    store = DuckStore(path, snapshot_interval=1.0)
    store.insert("events", events(3))
    store.snapshot(wait=True)
    store.insert("events", events(4, start=3))
    try:
        probe = textwrap.dedent(
            f"""
            from flowtui.store.duckdb_store import open_reader
            con, which = open_reader({str(path)!r})
            print(which.name, con.execute("SELECT count(*) FROM events").fetchone()[0])
            """
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["f.snapshot.duckdb", "3"]
    finally:
        store.close()
    con, which = open_reader(path)  # no writer any more: the database itself
    try:
        assert which == path and con.execute("SELECT count(*) FROM events").fetchone() == (7,)
    finally:
        con.close()
    with pytest.raises(FileNotFoundError):
        open_reader(tmp_path / "missing.duckdb")


def test_schema_reference_file_is_current() -> None:
    """flowtui/store/SCHEMA.md is generated: `python -m flowtui.store.schema > flowtui/store/SCHEMA.md`."""
    path = Path(schema.__file__).with_name("SCHEMA.md")
    assert path.read_text() == schema.markdown()
