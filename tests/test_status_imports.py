"""`flowtui status` of an imported store tells what landed: stored per reporter and per run, beside
received, counted from the rows the import wrote (and, for a store imported before imports counted it,
known from the run having ended)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner

from flowtui.cli.main import cli

MATERIAL = Path(__file__).resolve().parents[1].parent / "shared" / "external" / "material" / "interop"
HUBBLE = MATERIAL / "hubble" / "hubble-otel__basic-sample-348-http-flows.json"  # two nodes
CALICO = MATERIAL / "calico" / "flows.log"


def status(db: Path, tmp_path: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--db", str(db), "--state-dir", str(tmp_path / "state"), "-o", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_status_of_an_imported_store_says_what_landed_per_reporter(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    for fmt, path in (("hubble", HUBBLE), ("calico", CALICO)):
        result = CliRunner().invoke(cli, ["import", fmt, str(path), "--db", str(db)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    try:  # the oracle: what the store holds of each reporter (Hubble: events; Calico: one flow record)
        events = dict(con.execute("SELECT source_id, count(*) FROM events GROUP BY ALL").fetchall())
        records = dict(con.execute("SELECT source_id, count(DISTINCT (start_time, end_time, src_ip, dst_ip, sport, "
                                   "dport)) FROM flows WHERE count_source = 'calico' GROUP BY ALL").fetchall())
    finally:
        con.close()
    doc = status(db, tmp_path)
    hubble, calico = sorted(doc["runs"], key=lambda r: r["run_id"])
    assert len(hubble["sources"]) == 2 and hubble["stored"] == sum(events.values()) > 0
    for s in hubble["sources"]:
        assert s["stored"] == events[s["source_id"]] == s["received"]
    assert [s["stored"] for s in calico["sources"]] == [records[s["source_id"]] for s in calico["sources"]] == [1]
    assert calico["stored"] == calico["received"] == 1
    text = CliRunner().invoke(cli, ["status", "--db", str(db), "--state-dir", str(tmp_path / "state")]).output
    assert f"total: received {hubble['received']:,}, stored {hubble['stored']:,}, lost 0" in text

    # a store imported before imports counted `stored`: a finished import stored all it received;
    # one that never finished is not claimed to have stored anything
    con = duckdb.connect(str(db))
    try:
        con.execute("DELETE FROM stats WHERE name = 'stored'")
        con.execute("UPDATE runs SET outcome = NULL, ended = NULL WHERE run_id = ?", [calico["run_id"]])
    finally:
        con.close()
    old = {r["run_id"]: r for r in status(db, tmp_path)["runs"]}
    assert old[hubble["run_id"]]["stored"] == hubble["stored"]
    assert [s["stored"] for s in old[hubble["run_id"]]["sources"]] == [s["stored"] for s in hubble["sources"]]
    assert old[calico["run_id"]]["stored"] == 0 and old[calico["run_id"]]["sources"][0]["stored"] is None
