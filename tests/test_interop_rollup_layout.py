"""Imported stores and Parquet exports carry the rollups: real Hubble and Calico material
(`../shared/external/material/interop/`, read by path) imported with `flowtui import`, the store's
rollups kept by the import's writer, exported with `flowtui export --format parquet`, and every
named query gives the same answer on the store, on the export (which reads the exported rollups,
not rollups recomputed from its flows) and by `flowtui query --db export/`."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from flowtui.cli.main import cli
from flowtui.query.library import REPO_QUERIES, discover
from flowtui.query.run import open_source, run_query

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material" / "interop"
pytestmark = pytest.mark.skipif(not MATERIAL.is_dir(), reason=f"{MATERIAL} is not here")
ROLLUPS = ("pair_hours", "rule_hours", "talkers", "rollup_state")
# What the rollups must hold for the comparison to prove something
PAIRS_ORACLE = ("SELECT src_ep, CASE WHEN src_ep IS NULL THEN src_ip END, dst_ep, CASE WHEN dst_ep IS NULL THEN "
                "dst_ip END, proto, dport, denied, count(*), sum(packets), sum(bytes), max(last_seen) FROM flows_once "
                "GROUP BY ALL ORDER BY ALL")
PAIRS = ("SELECT src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied, sum(flows), sum(packets), sum(bytes), "
         "max(last_seen) FROM {} GROUP BY ALL ORDER BY ALL")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module", params=["hubble", "calico"])
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp(request.param)
    db, out = root / "imported.duckdb", root / "export"
    files = sorted(str(p) for p in (MATERIAL / request.param).iterdir())
    invoke("import", request.param, *files, "--db", str(db))
    invoke("export", "--format", "parquet", "--db", str(db), "--out", str(out))
    return db, out


def test_the_import_rolled_its_flows_up(imported: tuple[Path, Path]) -> None:
    db, _out = imported
    con = duckdb.connect(str(db), read_only=True)
    try:
        (rolled,) = con.execute("SELECT max(rolled_until) FROM rollup_state").fetchone() or (None,)
        (last,) = con.execute("SELECT max(start_time) FROM flows").fetchone() or (None,)
        assert rolled is not None and last is not None and rolled > last  # every hour rolled up
        for table in ("pair_hours", "rule_hours", "talkers"):
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone() != (0,), table
        assert con.execute(PAIRS.format("pair_hours")).fetchall() == con.execute(PAIRS_ORACLE).fetchall()
    finally:
        con.close()


def test_the_export_holds_the_rollups_and_reads_them(imported: tuple[Path, Path]) -> None:
    db, out = imported
    with open_source(db) as store, open_source(out) as export:
        for table in ROLLUPS:
            assert (out / f"{table}.parquet").is_file(), table
            sql = f"SELECT * FROM {table} ORDER BY ALL"
            assert export.con.execute(sql).fetchall() == store.con.execute(sql).fetchall(), table
        # the export's rollup tables are its files (not recomputed from its flows)
        for table in ("pair_hours", "rule_hours", "talkers"):
            row = export.con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [table]).fetchone()
            sql = row[0] if row else ""
            assert f"{table}.parquet" in sql and "FROM flows" not in sql, table
        assert export.con.execute(PAIRS.format("flow_pairs")).fetchall() == \
            store.con.execute(PAIRS_ORACLE).fetchall()


def test_every_query_answers_the_same_on_store_export_and_cli(imported: tuple[Path, Path]) -> None:
    db, out = imported
    nonempty = 0
    with open_source(db) as store, open_source(out) as export:
        for name, query in discover([REPO_QUERIES]).items():
            want = run_query(store.con, query).to_pylist()
            assert run_query(export.con, query).to_pylist() == want, name
            nonempty += bool(want)
    assert nonempty >= 3  # enough answers to prove something
    for name in ("flows_per_namespace_pair", "conversations", "top_denied", "new_talkers"):
        on_store = json.loads(invoke("query", name, "--db", str(db), "-o", "json"))
        assert json.loads(invoke("query", name, "--db", str(out), "-o", "json")) == on_store, name
