"""Flow sources: the flow-frame shape, Parquet (files, hive directories), Hubble JSON exports, the
DuckDB flow store, time windows and source detection."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from flowtui.interop.hubble import parse_lines
from flowtui.whatif.frames import FlowSourceError, normalize, parse_duration, read_parquet, since_filter
from flowtui.whatif.sources import parsed_frame, read_flows, source_kind
from flowtui.whatif.storeread import read_store

NOW = datetime(2026, 1, 1, 12, 0, 0)


def test_normalize_renames_and_types() -> None:
    raw = pl.DataFrame({"saddr": ["10.0.0.1"], "daddr": ["10.0.0.2"], "protocol": ["TCP"], "sport": [40000],
                        "dport": [443], "action": ["Allow"], "extra": [1]})
    frame = normalize(raw)
    assert frame.columns[:7] == ["src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "icmp_code"]
    row = frame.row(0, named=True)
    assert row["proto"] == 6 and row["src_port"] == 40000 and row["dst_port"] == 443
    assert row["icmp_type"] is None and row["count"] == 1 and row["verdict"] == "allow" and row["extra"] == 1


@pytest.mark.parametrize("text,number", [("udp", 17), ("ICMPv6", 58), ("icmp", 1), ("sctp", 132), ("47", 47),
                                         ("bogus", None)])
def test_protocol_names(text: str, number: int | None) -> None:
    frame = normalize(pl.DataFrame({"src_ip": ["1.1.1.1"], "dst_ip": ["2.2.2.2"], "proto": [text]}))
    assert frame["proto"][0] == number


def test_missing_columns_are_an_error() -> None:
    with pytest.raises(FlowSourceError, match="no dst_ip, proto column"):
        normalize(pl.DataFrame({"src_ip": ["1.1.1.1"]}))


def test_time_columns_in_any_shape() -> None:
    for value in ([1767268800], ["2026-01-01T12:00:00Z"], [NOW]):
        frame = normalize(pl.DataFrame({"src_ip": ["1.1.1.1"], "dst_ip": ["2.2.2.2"], "proto": [6],
                                        "start_time": value}))
        assert frame["time"][0] == NOW


def test_durations_and_windows() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90") == timedelta(seconds=90)
    with pytest.raises(ValueError):
        parse_duration("soon")
    frame = normalize(pl.DataFrame({"src_ip": ["a", "b", "c"], "dst_ip": ["x", "y", "z"], "proto": [6, 6, 6],
                                    "time": [NOW - timedelta(hours=1), NOW - timedelta(days=2), None]}))
    kept = since_filter(frame, timedelta(hours=24), now=NOW)
    assert kept["src_ip"].to_list() == ["a", "c"]


def test_parquet_file_and_hive_directories(tmp_path: Path) -> None:
    frame = pl.DataFrame({"src_ip": ["10.0.0.1", "10.0.0.2"], "dst_ip": ["10.0.0.3", "10.0.0.4"],
                          "proto": [6, 17], "sport": [1, 2], "dport": [80, 53], "day": ["a", "b"]})
    frame.write_parquet(tmp_path / "one.parquet")
    assert read_parquet(tmp_path / "one.parquet")["dst_port"].to_list() == [80, 53]
    pq.write_to_dataset(frame.drop("day").with_columns(day=frame["day"]).to_arrow(),
                        str(tmp_path / "hive"), partition_cols=["day"])
    (tmp_path / "hive" / "_SUCCESS").write_text("")
    hive = read_parquet(tmp_path / "hive").sort("src_ip")
    assert hive["src_ip"].to_list() == ["10.0.0.1", "10.0.0.2"] and hive["day"].to_list() == ["a", "b"]
    con = duckdb.connect()
    con.register("f", frame.to_arrow())
    con.execute(f"COPY f TO '{tmp_path / 'duck'}' (FORMAT parquet, PARTITION_BY (day))")
    assert sorted(read_flows([str(tmp_path / "duck")])["proto"].to_list()) == [6, 17]
    with pytest.raises(FlowSourceError):
        read_parquet(tmp_path / "missing.parquet")


HUBBLE = [
    {"flow": {"time": "2026-01-01T11:00:00.5Z", "verdict": "FORWARDED",
              "IP": {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
              "l4": {"TCP": {"source_port": 40000, "destination_port": 80, "flags": {"SYN": True}}},
              "is_reply": False, "egress_allowed_by": [{"name": "allow-web"}]}},
    {"flow": {"verdict": "FORWARDED", "IP": {"source": "10.0.0.2", "destination": "10.0.0.1"},
              "l4": {"TCP": {"source_port": 80, "destination_port": 40000, "flags": {"SYN": True, "ACK": True}}},
              "is_reply": True}},
    {"flow": {"verdict": "FORWARDED", "IP": {"source": "10.0.0.1", "destination": "10.0.0.2"},
              "l4": {"TCP": {"source_port": 40000, "destination_port": 80, "flags": {"ACK": True}}}}},
    {"flow": {"time": "2026-01-01T11:00:01Z", "verdict": "DROPPED",
              "IP": {"source": "fd00::1", "destination": "fd00::2"},
              "l4": {"ICMPv6": {"type": 128}}}},
    {"time": "2026-01-01T11:00:02Z", "verdict": "DROPPED", "IP": {"source": "10.0.0.1", "destination": "10.0.0.9"},
     "l4": {"UDP": {"source_port": 5353, "destination_port": 53}}},
    {"flow": {"Type": "L7", "l7": {"http": {}}}},
    {"lost_events": {"num_events_lost": 3}},
]


def test_hubble_export(tmp_path: Path) -> None:
    lines = [json.dumps(d) for d in HUBBLE] + [""]
    frame = parsed_frame(parse_lines(lines))  # the import parser: decisions only (the ACK-only trace is not one)
    assert frame.select("src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "verdict").rows() == [
        ("10.0.0.1", "10.0.0.2", 6, 40000, 80, None, "allow"),
        ("fd00::1", "fd00::2", 58, None, None, 128, "deny"),
        ("10.0.0.1", "10.0.0.9", 17, 5353, 53, None, "deny"),
    ]
    assert frame["policy"][0] == "allow-web"
    assert frame["time"][0] == datetime(2026, 1, 1, 11, 0, 0, 500000)
    path = tmp_path / "hubble.json"
    path.write_text("\n".join(lines))
    assert source_kind(str(path)) == "hubble" and read_flows([str(path)]).height == 3
    bad = tmp_path / "bad.json"
    bad.write_text(lines[0] + "\n{nope\n")
    assert read_flows([str(bad)]).height == 1  # the malformed line is skipped, as `flowtui import` does
    no_l4 = parse_lines([json.dumps({"flow": {"IP": {"source": "1.1.1.1", "destination": "2.2.2.2"}, "l4": {}}})])
    assert no_l4.observations == [] and no_l4.skipped["verdict_unknown"] == 1 and not no_l4.problems


def make_store(path: Path) -> set[str]:
    """A flow store written with the store's own DDL (whatever its columns are today), with rows the
    way the collector writes them. Returns the flows table's columns."""
    from flowtui.store import schema

    con = duckdb.connect(str(path))
    for stmt in schema.statements():
        con.execute(stmt)
    names = {c.name for c in schema.FLOWS.columns}
    keys = ("start_time", "reporter", "action", "policy", "proto", "src_ip", "dst_ip", "sport", "dport", "events",
            "packets", "bytes", "count_source")
    old = NOW - timedelta(days=3)
    rows = [
        # one allowed connection, seen by both reporters, plus its conntrack counters
        (NOW, "src", "Allow", "0|default|gnp:a|allow|0", 6, "10.0.0.1", "10.0.0.2", 40000, 80, 1, 0, 0, "nflog"),
        (NOW, "dst", "Allow", "0|default|gnp:a|allow|0", 6, "10.0.0.1", "10.0.0.2", 40000, 80, 1, 0, 0, "nflog"),
        (NOW, "dst", "Allow", None, 6, "10.0.0.1", "10.0.0.2", 40000, 80, 0, 10, 900, "conntrack"),
        # a connection allowed at the source and denied at the destination; a Log row
        (NOW, "src", "Allow", "0|default|gnp:a|allow|0", 6, "10.0.0.1", "10.0.0.3", 40001, 22, 1, 0, 0, "nflog"),
        (NOW, "dst", "Deny", "0|t|gnp:b|deny|1", 6, "10.0.0.1", "10.0.0.3", 40001, 22, 3, 3, 180, "nflog"),
        (NOW, "dst", "Log", None, 6, "10.0.0.1", "10.0.0.3", 40001, 22, 3, 3, 180, "nflog"),
        (old, "src", "Deny", None, 17, "10.0.0.1", "10.0.0.4", 5000, 53, 1, 1, 60, "nflog"),
    ]
    for row in rows:
        values = {k: v for k, v in zip(keys, row, strict=True) if k in names}
        if "end_time" in names:
            values["end_time"] = row[0] + timedelta(seconds=15)
        con.execute(f"INSERT INTO flows ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()))
    con.close()
    return names


def test_flow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "flows.duckdb"
    names = make_store(db)
    frame = read_store(db).sort("dst_ip")
    assert frame.select("dst_ip", "dst_port", "verdict", "count").rows() == [
        ("10.0.0.2", 80, "allow", 1), ("10.0.0.3", 22, "deny", 1), ("10.0.0.4", 53, "deny", 1)]
    if "policy" in names:
        assert frame["policy"][1] == "0|t|gnp:b|deny|1"
    monkeypatch.setattr("flowtui.whatif.storeread.utcnow", lambda: NOW + timedelta(minutes=1))
    assert read_store(db, timedelta(hours=24)).height == 2
    assert source_kind(str(db)) == "duckdb" and read_flows([str(db)]).height == 3
    with pytest.raises(FlowSourceError):
        read_store(tmp_path / "nothing.duckdb")


def test_store_with_an_older_schema(tmp_path: Path) -> None:
    """Only src_ip, dst_ip and proto are required: a minimal table still reads."""
    db = tmp_path / "min.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE flows (src_ip VARCHAR, dst_ip VARCHAR, proto UTINYINT, dst_port INTEGER)")
    con.execute("INSERT INTO flows VALUES ('10.0.0.1', '10.0.0.2', 6, 80), ('10.0.0.1', '10.0.0.2', 6, 80)")
    con.close()
    frame = read_store(db)
    assert frame.select("src_ip", "dst_port", "count").rows() == [("10.0.0.1", 80, 1)]


def test_source_kind_by_content(tmp_path: Path) -> None:
    pq_file = tmp_path / "noext"
    pl.DataFrame({"src_ip": ["1.1.1.1"], "dst_ip": ["2.2.2.2"], "proto": [6]}).write_parquet(pq_file)
    assert source_kind(str(pq_file)) == "parquet"
    other = tmp_path / "x.txt"
    other.write_text("hello")
    with pytest.raises(FlowSourceError, match="cannot tell"):
        source_kind(str(other))
    calico = tmp_path / "flows.json"  # the content decides, not the suffix
    calico.write_text('{"start_time": 1, "end_time": 2, "action": "allow", "reporter": "dst", "dest_name": "x", '
                      '"policies": {"all_policies": []}}\n')
    assert source_kind(str(calico)) == "calico"
