"""Calico flow records (Whisker and Goldmane encodings): keyed and summed like Goldmane, with the
enforced trace (Pass hits, then the verdict), Calico's endpoint names and kinds; both parse back equal."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flowtui.interop.calico import flow_records, net_name, write_records
from flowtui.interop.calico_logs import parse_lines
from flowtui.interop.window import Window
from flowtui.query.run import open_source
from tests.test_queries import FLOWS, SAMPLE, T0, build_store


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    db = build_store(tmp_path_factory.mktemp("calico") / "flows.duckdb")
    out = {}
    with open_source(db) as source:
        for style in ("whisker", "goldmane"):
            buf = io.StringIO()
            write_records(source.con, buf, style=style)
            out[style] = buf.getvalue().splitlines()
    return out


def _find(recs: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in recs if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_whisker_records(records: dict[str, list[str]]) -> None:
    recs = [json.loads(line) for line in records["whisker"]]
    c_dst = _find(recs, source_name="web", dest_name="db", dest_port=5432, reporter="Dst")
    assert c_dst["action"] == "Allow" and c_dst["protocol"] == "tcp"
    assert c_dst["source_namespace"] == "prod" and c_dst["source_labels"] == "app=web"
    assert [(h["kind"], h["name"], h["action"], h["policy_index"], h["rule_index"])
            for h in c_dst["policies"]["enforced"]] == [
        ("CalicoNetworkPolicy", "pass-all", "Pass", 0, 0), ("CalicoNetworkPolicy", "log-db", "Allow", 1, 1)]
    assert c_dst["policies"]["pending"] == []
    eot = _find(recs, dest_name="db", dest_port=6379, reporter="Dst")["policies"]["enforced"]
    assert eot == [{"kind": "EndOfTier", "name": "", "namespace": "", "tier": "default", "action": "Deny",
                    "policy_index": 0, "rule_index": -1,
                    "trigger": {"kind": "GlobalNetworkPolicy", "name": "allow-web", "namespace": "", "tier": "default",
                                "action": "Deny", "policy_index": 0, "rule_index": -1, "trigger": None}}]
    no_profile = _find(recs, source_name="db", dest_port=53)
    assert no_profile["reporter"] == "Src" and no_profile["dest_name"] == "pub" and no_profile["dest_namespace"] == ""
    assert no_profile["policies"]["enforced"][0]["name"] == "__NO_MATCH__"
    assert no_profile["policies"]["enforced"][0]["kind"] == "Profile"
    failsafe = _find(recs, dest_port=22)
    assert (failsafe["source_name"], failsafe["dest_name"], failsafe["dest_namespace"]) == ("pub", "node-b", "-")
    assert failsafe["policies"]["enforced"][0]["kind"] == "KindUnspecified"
    assert failsafe["policies"]["enforced"][0]["tier"] == "__FAILSAFE__"
    counted = _find(recs, source_name="client", dest_name="web", reporter="Dst",
                    start_time="2026-03-14T12:20:00Z")
    assert (counted["packets_in"], counted["bytes_in"], counted["packets_out"], counted["bytes_out"]) == (
        10, 1000, 8, 800)
    attacker = [r for r in recs if r["dest_name"] == "web" and r["action"] == "Deny"]
    assert len(attacker) == 1 and attacker[0]["source_name"] == "pub"  # v4 and v6 sources share the key
    assert attacker[0]["packets_in"] == 7


def test_counts_are_kept(records: dict[str, list[str]]) -> None:
    recs = parse_lines(records["whisker"]).observations  # the import's parser
    verdict_rows = [f for f in FLOWS if f["action"] in ("Allow", "Deny")]
    assert sum(r.packets + r.reply_packets for r in recs) == sum(
        f["packets"] + f["reply_packets"] for f in verdict_rows)
    assert sum((r.bytes or 0) + r.reply_bytes for r in recs) == sum(
        f["bytes"] + f["reply_bytes"] for f in verdict_rows)


def test_goldmane_encoding_parses_to_the_same_records(records: dict[str, list[str]]) -> None:
    raw = json.loads(records["goldmane"][0])
    assert set(raw) >= {"key", "start_time", "end_time", "num_connections_started", "num_connections_live"}
    assert isinstance(raw["key"]["action"], int) and isinstance(raw["start_time"], int)
    goldmane, whisker = parse_lines(records["goldmane"]), parse_lines(records["whisker"])
    assert goldmane.problems == whisker.problems == []

    def key(o: Any) -> tuple[Any, ...]:  # whisker has no connection counts; everything else is the same
        return (o.time, o.end, o.action, o.proto, o.dport, o.rule, o.src, o.dst, o.packets, o.bytes,
                o.reply_packets, o.reply_bytes, o.steps, o.pending)

    assert [key(o) for o in goldmane.observations] == [key(o) for o in whisker.observations]


def test_a_window_limits_the_records(tmp_path: Path) -> None:
    with open_source(build_store(tmp_path / "flows.duckdb")) as source:
        recs = list(flow_records(source.con, Window(since=T0 + timedelta(minutes=25))))
    assert recs and all(r["start_time"] >= "2026-03-14T12:25:00Z" for r in recs)


def test_pvt_and_pub_as_felix_names_them() -> None:
    assert [net_name(a) for a in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "fd00::1", "8.8.8.8", "203.0.113.5",
                                  "2001:db8::1", "not-an-ip")] == ["pvt"] * 4 + ["pub"] * 4


@pytest.mark.skipif(not (SAMPLE / "flows.parquet").exists(), reason="sample-logs/ not produced yet")
def test_sample_logs_records() -> None:
    with open_source(SAMPLE) as sample:
        recs = list(flow_records(sample.con))
    flood = [r for r in recs if r["protocol"] == "udp" and r["dest_port"] == 9000]
    assert flood and {r["action"] for r in flood} == {"Deny"}
    assert {h["name"] for r in flood for h in r["policies"]["enforced"]} == {"dos-mitigation"}
    assert any(h["kind"] == "EndOfTier" and h["trigger"]["name"] == "favorite-worker-host"
               for r in recs for h in r["policies"]["enforced"])
