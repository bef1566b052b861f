"""`flowtui query`, `flowtui export` and `flowtui import hubble` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from flowtui.cli.export import export_cmd
from flowtui.cli.imports import import_hubble_cmd
from flowtui.cli.query import query_cmd
from flowtui.cli.whatif import import_group
from flowtui.query.library import REPO_QUERIES
from flowtui.store.duckdb_store import DuckStore
from tests.test_queries import FLOWS, REQUIRED, build_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("cli") / "flows.duckdb")


def run(command: object, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)  # type: ignore[arg-type]


def test_without_a_name_it_lists_the_library() -> None:
    result = run(query_cmd)
    assert result.exit_code == 0
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert REQUIRED <= names
    listed = json.loads(run(query_cmd, "-o", "json").stdout)
    top = next(q for q in listed if q["name"] == "top_denied")
    assert top["params"]["rows"]["default"] == "20" and top["columns"][0] == "src"


def test_describe_prints_the_header() -> None:
    result = run(query_cmd, "unused_rules", "--describe")
    assert result.exit_code == 0
    assert result.stdout.startswith("unused_rules: ")
    assert "Parameters" in result.stdout and "since" in result.stdout and "Columns:" in result.stdout


def test_a_query_as_a_table(db: Path) -> None:
    result = run(query_cmd, "top_denied", "--db", str(db), "-p", "rows=2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["SRC", "SRC_IP", "DST", "DST_IP"]
    assert len(lines) == 3 and "198.51.100.7" in lines[1] and "(2 rows)" in result.stderr


def test_csv_json_and_parquet(db: Path, tmp_path: Path) -> None:
    csv_out = run(query_cmd, "conversations", "--db", str(db), "-o", "csv").stdout.splitlines()
    assert csv_out[0].startswith("src,dst,flows,denied") and '"[""tcp/80""]"' in csv_out[1]
    rows = json.loads(run(query_cmd, "conversations", "--db", str(db), "-o", "json").stdout)
    assert rows[0]["src"] == "dev/client" and rows[0]["ports"] == ["tcp/80"]
    assert rows[0]["first_seen"] == "2026-03-14T12:00:00Z" and rows[0]["packets"] == 10
    out = tmp_path / "c.parquet"
    result = run(query_cmd, "conversations", "--db", str(db), "-o", "parquet", "--out", str(out))
    assert result.exit_code == 0 and "written to" in result.stderr
    table = pq.read_table(out)
    assert table.column_names[:3] == ["src", "dst", "flows"] and table.num_rows == len(rows)
    written = tmp_path / "t.txt"
    assert run(query_cmd, "loss_report", "--db", str(db), "--out", str(written)).exit_code == 0
    assert written.read_text().startswith("RUN_ID")


def test_parameter_errors(db: Path) -> None:
    result = run(query_cmd, "top_denied", "--db", str(db), "-p", "sinse=1h")
    assert result.exit_code == 2 and "top_denied has no parameter sinse" in result.stderr
    assert run(query_cmd, "top_denied", "-p", "since").exit_code == 2
    result = run(query_cmd, "top_denied", "--db", str(db), "-p", "since=yesterday")
    assert result.exit_code == 1 and "since: not a time or a duration: yesterday" in result.stderr
    result = run(query_cmd, "nosuch")
    assert result.exit_code == 2 and "no query named 'nosuch'" in result.stderr


def test_ad_hoc_sql(db: Path) -> None:
    result = run(query_cmd, "--db", str(db), "--sql", "SELECT action, count(*) AS n FROM flows GROUP BY ALL ORDER BY 1",
                 "-o", "json")
    counts = {r["action"]: r["n"] for r in json.loads(result.stdout)}
    assert counts == {a: sum(1 for f in FLOWS if f["action"] == a) for a in ("Allow", "Deny", "Log", "Pass")}
    assert run(query_cmd, "top_denied", "--sql", "SELECT 1").exit_code == 2
    result = run(query_cmd, "--db", str(db), "--sql", "SELECT * FROM nosuch")
    assert result.exit_code == 1 and "nosuch" in result.stderr


def test_print_sql_is_what_the_duckdb_client_runs(db: Path) -> None:
    text = run(query_cmd, "top_denied", "-p", "namespace=dev", "--print-sql").stdout
    assert text.startswith("SET VARIABLE namespace = 'dev';\n-- top_denied:")
    con = duckdb.connect(str(db), read_only=True)
    try:
        plain = con.execute(text).fetchall()
    finally:
        con.close()
    rows = json.loads(run(query_cmd, "top_denied", "--db", str(db), "-p", "namespace=dev", "-o", "json").stdout)
    assert [r[1] for r in plain] == [r["src_ip"] for r in rows] == ["10.0.1.2"]


def test_own_query_file_by_path(db: Path, tmp_path: Path) -> None:
    mine = tmp_path / "nodes.sql"
    mine.write_text("-- nodes: flow rows per node.\n--\n-- Parameters:\n--   action  only this action (default: all)\n"
                    "--\n-- Columns: node, n\nSELECT node, count(*) AS n FROM flows_v WHERE getvariable('action') IS "
                    "NULL OR action = getvariable('action') GROUP BY node ORDER BY node;\n")
    rows = json.loads(run(query_cmd, str(mine), "--db", str(db), "-o", "json", "-p", "action=Deny").stdout)
    assert rows == [{"node": "node-a", "n": 2}, {"node": "node-b", "n": 2}]


def test_missing_store(tmp_path: Path) -> None:
    result = run(query_cmd, "top_denied", "--db", str(tmp_path / "none.duckdb"))
    assert result.exit_code == 1 and "no flow store" in result.stderr
    result = run(query_cmd, "top_denied", "--db", str(tmp_path))
    assert result.exit_code == 1 and "no flow-store Parquet files" in result.stderr


def test_while_a_collector_writes_it_reads_the_snapshot(tmp_path: Path) -> None:
    path = build_store(tmp_path / "live.duckdb")
    writer = DuckStore(path, snapshot_interval=1.0)  # a collector holding the file
    try:
        writer.snapshot(wait=True)
        result = run(query_cmd, "top_denied", "--db", str(path), "-o", "json")
    finally:
        writer.close(snapshot=False)
    assert result.exit_code == 0, result.output
    assert "reading its snapshot" in result.stderr and len(json.loads(result.stdout)) == 4


# ------------------------------------------------------------------------------------------------
# export and import


def test_export_every_format_and_query_the_parquet(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq"
    result = run(export_cmd, "--format", "parquet", "--db", str(db), "--out", str(out))
    assert result.exit_code == 0 and "Parquet files" in result.stderr
    rows = json.loads(run(query_cmd, "top_denied", "--db", str(out), "-o", "json").stdout)
    assert rows[0]["src_ip"] == "198.51.100.7"
    again = run(export_cmd, "--format", "parquet", "--db", str(db), "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert run(export_cmd, "--format", "parquet", "--db", str(db), "--out", str(out), "--overwrite").exit_code == 0
    assert run(export_cmd, "--format", "parquet", "--db", str(db), "--out", "-").exit_code == 2

    jsonl = run(export_cmd, "--format", "jsonl", "--db", str(db), "--out", "-", "--since", "5m")
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert records and all(r["start_time"] >= "2026-03-14T12:25:00" for r in records)
    assert "flow records written to stdout" in jsonl.stderr

    calico = tmp_path / "calico.json"
    assert run(export_cmd, "--format", "calico", "--calico-style", "goldmane", "--db", str(db),
               "--out", str(calico)).exit_code == 0
    assert all("key" in json.loads(line) for line in calico.read_text().splitlines())
    assert run(export_cmd, "--format", "calico", "--db", str(db), "--out", str(calico)).exit_code == 2  # exists
    bad = run(export_cmd, "--format", "jsonl", "--db", str(db), "--out", "-", "--since", "yesterday")
    assert bad.exit_code == 2 and "neither a time" in bad.stderr


def test_export_hubble_then_import_hubble(db: Path, tmp_path: Path) -> None:
    flows = tmp_path / "flows.json"
    assert run(export_cmd, "--format", "hubble", "--db", str(db), "--out", str(flows)).exit_code == 0
    assert "hubble" in import_group.commands and import_group.commands["hubble"] is import_hubble_cmd
    back = tmp_path / "back.duckdb"
    result = run(import_group, "hubble", str(flows), "--db", str(back), "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc[0]["records"] == len(flows.read_text().splitlines()) and doc[0]["nodes"] == ["node-a", "node-b"]
    rows = json.loads(run(query_cmd, "top_denied", "--db", str(back), "-o", "json").stdout)
    original = json.loads(run(query_cmd, "top_denied", "--db", str(db), "-o", "json").stdout)
    assert [(r["src_ip"], r["dst_ip"], r["policy"], r["packets"]) for r in rows] == [
        (r["src_ip"], r["dst_ip"], r["policy"], r["packets"]) for r in original]
    text = run(import_group, "hubble", str(flows), "--db", str(tmp_path / "n.duckdb"), "--no-events")
    assert "hubble flow records of" in text.stdout
    con = duckdb.connect(str(tmp_path / "n.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        con.close()


def test_import_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"flow": {}}\nnot json\n')
    result = run(import_group, "hubble", str(bad), "--db", str(tmp_path / "x.duckdb"))
    assert result.exit_code == 1 and "bad.json:2: not_json" in result.stderr and "no flows" in result.stderr
    result = run(import_group, "hubble", str(tmp_path / "missing.json"), "--db", str(tmp_path / "x.duckdb"))
    assert result.exit_code == 2 and "missing.json" in result.stderr


def test_the_commands_load_without_textual() -> None:
    probe = ("import sys, flowtui.cli.query, flowtui.cli.export, flowtui.query.run, flowtui.interop.hubble; "
             "print(any(m.split('.')[0] == 'textual' for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True,
                          timeout=120)
    assert done.stdout.strip() == "False"


def test_the_queries_directory_is_the_one_shipped() -> None:
    assert REPO_QUERIES == ROOT / "queries" and (REPO_QUERIES / "top_denied.sql").is_file()
