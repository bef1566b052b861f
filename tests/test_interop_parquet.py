"""Parquet export: every table, hive-partitioned by day and node, readable by polars, pyarrow and
DuckDB; attached back as the store's tables, it holds the same rows and runs the same queries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from flowtui.interop.parquet import ExportError, export_parquet
from flowtui.interop.window import Window
from flowtui.query.library import REPO_QUERIES, discover
from flowtui.query.run import open_source, run_query
from flowtui.store import schema
from tests.test_queries import FLOWS, SAMPLE, T0, build_store


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parquet")
    db = build_store(root / "flows.duckdb")
    with open_source(db) as source:
        export_parquet(source.con, root / "export")
    return db, root / "export"


def test_layout_is_hive_partitioned_by_day_and_node(exported: tuple[Path, Path]) -> None:
    _db, out = exported
    parts = sorted(str(p.relative_to(out)) for p in (out / "flows").rglob("*.parquet"))
    assert parts == ["flows/day=2026-03-14/node=node-a/data_0.parquet",
                     "flows/day=2026-03-14/node=node-b/data_0.parquet"]
    assert {p.name for p in out.glob("*.parquet")} == {"rules.parquet", "endpoints.parquet", "sources.parquet",
                                                       "runs.parquet", "pair_hours.parquet", "rule_hours.parquet",
                                                       "talkers.parquet", "rollup_state.parquet",
                                                       "flow_totals.parquet", "pair_totals.parquet",
                                                       "totals_state.parquet", "netset_sources.parquet",
                                                       "implicit_deny_hours.parquet", "implicit_deny_totals.parquet",
                                                       "profile_allow_hours.parquet", "profile_allow_totals.parquet",
                                                       "denylisted_hours.parquet", "denylisted_totals.parquet"}
    assert (out / "loss" / "day=2026-03-14" / "node=_none").is_dir()  # process-wide counters
    assert (out / "views.sql").is_file()


def test_polars_reads_it_with_the_partition_keys(exported: tuple[Path, Path]) -> None:
    _db, out = exported
    frame = pl.scan_parquet(str(out / "flows" / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert frame.height == len(FLOWS)
    assert set(frame["node"].unique()) == {"node-a", "node-b"}
    assert frame["day"].cast(pl.String).unique().to_list() == ["2026-03-14"]
    assert [c for c in frame.columns if c not in ("day", "node")] == schema.FLOWS.full_arrow_schema.names
    by_node = dict(frame.group_by("node").agg(pl.col("events").sum()).iter_rows())
    assert by_node == {"node-a": sum(f["events"] for f in FLOWS if f["source_id"] == 1),
                       "node-b": sum(f["events"] for f in FLOWS if f["source_id"] == 2)}


def test_pyarrow_reads_it_with_the_partition_keys(exported: tuple[Path, Path]) -> None:
    _db, out = exported
    table = ds.dataset(out / "flows", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(FLOWS)
    assert set(table.column("node").to_pylist()) == {"node-a", "node-b"}
    for field in schema.FLOWS.arrow_schema:
        assert table.schema.field(field.name).type == field.type, field.name


def test_attached_export_has_the_same_rows_in_every_table(exported: tuple[Path, Path]) -> None:
    db, out = exported
    with open_source(db) as store, open_source(out) as export:
        assert export.kind == "parquet"
        for table in schema.TABLES:
            want = store.con.sql(f"SELECT * FROM {table.name} ORDER BY ALL").fetchall()
            got = export.con.sql(f"SELECT * FROM {table.name} ORDER BY ALL").fetchall()
            assert got == want, table.name
        for view in schema.VIEWS:
            assert export.con.execute(f"SELECT count(*) FROM {view}").fetchone() == \
                store.con.execute(f"SELECT count(*) FROM {view}").fetchone(), view


def test_every_query_gives_the_same_answer_on_the_export(exported: tuple[Path, Path]) -> None:
    db, out = exported
    with open_source(db) as store, open_source(out) as export:
        for name, query in discover([REPO_QUERIES]).items():
            assert run_query(export.con, query).to_pylist() == run_query(store.con, query).to_pylist(), name


def test_views_sql_makes_the_plain_duckdb_client_work_from_the_directory(
        exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    db, out = exported
    monkeypatch.chdir(out)
    con = duckdb.connect()  # what `cd export && duckdb -c ".read views.sql" -c ".read top_denied.sql"` does
    con.execute(Path("views.sql").read_text())
    plain = con.execute((REPO_QUERIES / "top_denied.sql").read_text()).fetchall()
    with open_source(db) as store:
        assert plain == store.con.execute((REPO_QUERIES / "top_denied.sql").read_text()).fetchall()
    assert len(plain) == 4


def test_a_window_exports_only_its_rows_and_all_dimension_tables(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    since = T0 + timedelta(minutes=20)
    with open_source(db) as source:
        result = export_parquet(source.con, tmp_path / "out", Window(since=since))
    assert result.rows["flows"] == sum(1 for f in FLOWS if f["start_time"] >= since)
    assert result.rows["rules"] == 14 and result.rows["endpoints"] == 8
    with open_source(tmp_path / "out") as export:
        first = export.con.execute("SELECT min(start_time) FROM flows").fetchone()
        assert first is not None and first[0] >= since


def test_an_existing_export_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    with open_source(db) as source:
        export_parquet(source.con, tmp_path / "out")
        with pytest.raises(ExportError, match="already holds an export"):
            export_parquet(source.con, tmp_path / "out")
        export_parquet(source.con, tmp_path / "out", Window(since=T0 + timedelta(minutes=25)), overwrite=True)
    frame = pl.scan_parquet(str(tmp_path / "out" / "flows" / "**" / "*.parquet"), hive_partitioning=True).collect()
    assert frame.height == sum(1 for f in FLOWS if f["start_time"] >= T0 + timedelta(minutes=25))


@pytest.mark.skipif(not (SAMPLE / "flows.parquet").exists(), reason="sample-logs/ not produced yet")
def test_sample_logs_attach_and_export(tmp_path: Path) -> None:
    with open_source(SAMPLE) as sample:
        counts = {t.name: sample.con.execute(f"SELECT count(*) FROM {t.name}").fetchone() for t in schema.TABLES}
        # an older layout: rule_counters without run_packets reads them from packets
        row = sample.con.execute("SELECT count(*) FROM rule_counters WHERE run_packets IS DISTINCT FROM packets "
                             "AND run_packets IS NULL").fetchone()
        assert row == (0,)
        export_parquet(sample.con, tmp_path / "out")
    with open_source(tmp_path / "out") as again:
        for t in schema.TABLES:
            assert again.con.execute(f"SELECT count(*) FROM {t.name}").fetchone() == counts[t.name], t.name
