"""JSON Lines export: one flow record per line, names joined in, times RFC 3339; reads back equal."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

from flowtui.interop.jsonl import read_jsonl, record_columns, write_jsonl
from flowtui.interop.window import Window
from flowtui.query.run import open_source
from tests.test_queries import FLOWS, T0, build_store


def test_records_round_trip(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    with open_source(db) as source:
        buf = io.StringIO()
        assert write_jsonl(source.con, buf) == len(FLOWS)
        (tmp_path / "f.jsonl").write_text(buf.getvalue())
        back = read_jsonl(source.con, tmp_path / "f.jsonl").order("ALL").fetchall()
        assert back == source.con.sql("SELECT * FROM flows_v ORDER BY ALL").fetchall()
        names = [n for n, _ in record_columns(source.con)]
    lines = buf.getvalue().splitlines()
    first = json.loads(lines[0])
    assert list(first) == names
    assert first["start_time"] == "2026-03-14T12:00:00.000000Z"
    denied = [json.loads(line) for line in lines if '"Deny"' in line]
    attacker = next(r for r in denied if r["src_ip"] == "198.51.100.7")
    assert attacker["src_name"] == "attacker" and attacker["dst_labels"] == ["app=web"]
    assert attacker["policy"] == "0|default|gnp:deny-bad|deny|0" and attacker["node"] == "node-a"


def test_a_window_limits_the_records(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    with open_source(db) as source:
        buf = io.StringIO()
        n = write_jsonl(source.con, buf, Window(since=T0 + timedelta(minutes=25), until=T0 + timedelta(minutes=29)))
    assert n == 2 and all('"Deny"' in line for line in buf.getvalue().splitlines())
