"""Hubble JSON both ways: the store's flows out as `hubble observe -o json` lines that the what-if
reader and the importer both read, and back in as the same flows; real Cilium output in."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flowtui.interop.hubble import flow_objects, import_hubble, parse_lines, write_hubble
from flowtui.query.run import open_source
from flowtui.store.duckdb_store import DuckStore
from flowtui.whatif.sources import parsed_frame, read_flows
from tests.test_queries import FLOWS, SAMPLE, build_store

# Dataplane defaults and failsafes are no policy: Hubble gets none for them (it would name one), so
# they come back as "no policy" (allow) or Cilium's POLICY_DENIED (deny).
SAME_FLOWS = """
SELECT start_time, node, action,
       CASE WHEN policy_kind IN ('Default', 'Failsafe') THEN 'not a policy' ELSE policy END AS policy,
       proto, src_ip, dst_ip, sport, dport, src_type, src_namespace, src_name,
       dst_type, dst_namespace, dst_name, sum(events) AS events
FROM flows_v WHERE action IN ('Allow', 'Deny') AND events > 0
GROUP BY ALL ORDER BY ALL"""


def _export(db: Path) -> list[str]:
    with open_source(db) as source:
        buf = io.StringIO()
        write_hubble(source.con, buf)
    return buf.getvalue().splitlines()


def _import(lines: list[str], db: Path, bucket: float = 15.0) -> Any:
    store = DuckStore(db, snapshot_interval=None)
    try:
        return import_hubble(store, lines, bucket_seconds=bucket)
    finally:
        store.close(snapshot=False)


def _rows(db: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(SAME_FLOWS).fetchall()
    finally:
        con.close()


def test_export_then_import_gives_the_same_flows(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    lines = _export(db)
    verdict_events = sum(f["events"] for f in FLOWS if f["action"] in ("Allow", "Deny"))
    assert len(lines) == verdict_events
    result = _import(lines, tmp_path / "back.duckdb")
    assert result.records == verdict_events and result.skipped == {} and result.nodes == ["node-a", "node-b"]
    assert _rows(tmp_path / "back.duckdb") == _rows(db)


def test_the_lines_are_hubble_flows(tmp_path: Path) -> None:
    lines = _export(build_store(tmp_path / "flows.duckdb"))
    docs = [json.loads(line) for line in lines]
    drop = next(d["flow"] for d in docs if d["flow"]["IP"]["source"] == "198.51.100.7")
    assert drop["verdict"] == "DROPPED" and drop["drop_reason_desc"] == "POLICY_DENY"
    assert drop["traffic_direction"] == "INGRESS" and drop["node_name"] == "node-a"
    assert drop["l4"] == {"TCP": {"source_port": 4444, "destination_port": 80, "flags": {"SYN": True}}}
    assert drop["destination"]["pod_name"] == "web" and drop["destination"]["namespace"] == "prod"
    assert "k8s:app=web" in drop["destination"]["labels"]
    assert drop["source"]["labels"][0] == "reserved:world"
    policy = drop["ingress_denied_by"][0]
    assert (policy["name"], policy["kind"], policy["revision"]) == ("deny-bad", "GlobalNetworkPolicy", "1")
    implicit = next(d["flow"] for d in docs if d["flow"]["IP"]["destination"] == "10.0.2.1"
                    and d["flow"]["verdict"] == "DROPPED")
    assert implicit["drop_reason_desc"] == "POLICY_DENIED" and implicit["ingress_denied_by"][0]["kind"] == "EndOfTier"
    egress = next(d["flow"] for d in docs if d["flow"].get("egress_allowed_by"))
    assert egress["traffic_direction"] == "EGRESS" and egress["egress_allowed_by"][0]["kind"] == "Profile"
    assert all(d["time"] == d["flow"]["time"] and d["flow"]["time"].endswith("Z") for d in docs)
    assert len({d["flow"]["uuid"] for d in docs}) == len(docs)


def test_the_what_if_reader_reads_the_export(tmp_path: Path) -> None:
    db = build_store(tmp_path / "flows.duckdb")
    path = tmp_path / "flows.json"
    path.write_text("\n".join(_export(db)) + "\n")
    frame = read_flows([str(path)])
    assert frame.height == sum(f["events"] for f in FLOWS if f["action"] in ("Allow", "Deny"))
    assert sorted(set(frame["verdict"])) == ["allow", "deny"]
    attacker = frame.filter(frame["src_ip"] == "198.51.100.7")
    assert attacker.height == 5 and set(attacker["policy"]) == {"deny-bad"}
    assert set(attacker["dst_port"]) == {80} and set(attacker["proto"]) == {6}


@pytest.mark.skipif(not (SAMPLE / "flows.parquet").exists(), reason="sample-logs/ not produced yet")
def test_sample_logs_round_trip_through_hubble(tmp_path: Path) -> None:
    with open_source(SAMPLE) as sample:
        want = sample.con.sql(SAME_FLOWS).fetchall()
        buf = io.StringIO()
        n = write_hubble(sample.con, buf)
    lines = buf.getvalue().splitlines()
    assert n == len(lines) == sum(r[-1] for r in want)
    assert parsed_frame(parse_lines(lines)).height == n  # every exported line is a connection opening or a drop
    _import(lines, tmp_path / "back.duckdb", bucket=1.0)  # the sample's bucket
    assert _rows(tmp_path / "back.duckdb") == want


def test_importing_twice_reuses_the_rules(tmp_path: Path) -> None:
    lines = _export(build_store(tmp_path / "flows.duckdb"))
    first = _import(lines, tmp_path / "back.duckdb")
    second = _import(lines, tmp_path / "back.duckdb")
    assert first.rules_added > 0 and second.rules_added == 0 and second.run_id == first.run_id + 1


# ------------------------------------------------------------------------------------------------
# Cilium's own output


def cilium(flow: dict[str, Any], node: str = "kind-worker") -> str:
    flow = {"node_name": node, "Type": "L3_L4", **flow}
    return json.dumps({"flow": flow, "node_name": node, "time": flow.get("time")})


POD = {"ID": 1416, "identity": 30090, "namespace": "default", "pod_name": "xwing",
       "labels": ["k8s:app.kubernetes.io/name=xwing", "k8s:class=xwing", "k8s:io.kubernetes.pod.namespace=default",
                  "k8s:io.cilium.k8s.policy.serviceaccount=default"]}
DEATHSTAR = {"ID": 99, "identity": 4242, "namespace": "default", "pod_name": "deathstar-6f87",
             "labels": ["k8s:class=deathstar", "k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"]}
TCP_SYN = {"TCP": {"source_port": 48634, "destination_port": 80, "flags": {"SYN": True}}}
IP = {"source": "10.244.1.85", "destination": "10.244.0.146", "ipVersion": "IPv4"}
CNP = {"name": "rule1", "namespace": "default", "revision": "7", "kind": "CiliumNetworkPolicy",
       "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=rule1",
                  "k8s:io.cilium.k8s.policy.namespace=default"]}

CILIUM_LINES = [
    cilium({"time": "2026-03-14T12:00:01.123456789Z", "verdict": "FORWARDED", "IP": IP, "l4": TCP_SYN,
            "source": POD, "destination": DEATHSTAR, "event_type": {"type": 5}, "traffic_direction": "INGRESS",
            "ingress_allowed_by": [CNP], "is_reply": False}),
    cilium({"time": "2026-03-14T12:00:02Z", "verdict": "DROPPED", "drop_reason": 133,
            "drop_reason_desc": "POLICY_DENIED", "IP": {**IP, "source": "10.244.1.86"},
            "l4": {"TCP": {"source_port": 50000, "destination_port": 80, "flags": {"SYN": True}}},
            "source": {"identity": 2, "labels": ["reserved:world"]}, "destination": DEATHSTAR,
            "event_type": {"type": 1, "sub_type": 133}, "traffic_direction": "INGRESS"}),
    cilium({"time": "2026-03-14T12:00:03Z", "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED",
            "IP": {"source": "10.244.0.146", "destination": "8.8.8.8", "ipVersion": "IPv4"},
            "l4": {"UDP": {"source_port": 5353, "destination_port": 53}}, "source": DEATHSTAR,
            "destination": {"identity": 2, "labels": ["reserved:world"]}, "event_type": {"type": 5},
            "traffic_direction": "EGRESS"}),
    # a trace point, a reply, an L7 record, a lost-events notice
    cilium({"time": "2026-03-14T12:00:01.2Z", "verdict": "FORWARDED", "IP": IP, "l4": TCP_SYN, "source": POD,
            "destination": DEATHSTAR, "event_type": {"type": 4}, "trace_observation_point": "TO_ENDPOINT"}),
    cilium({"time": "2026-03-14T12:00:01.3Z", "verdict": "FORWARDED", "IP": {**IP, "source": IP["destination"],
            "destination": IP["source"]}, "l4": {"TCP": {"source_port": 80, "destination_port": 48634,
            "flags": {"SYN": True, "ACK": True}}}, "source": DEATHSTAR, "destination": POD,
            "event_type": {"type": 4}, "is_reply": True}),
    cilium({"time": "2026-03-14T12:00:04Z", "verdict": "FORWARDED", "Type": "L7", "IP": IP,
            "l7": {"type": "REQUEST", "dns": {"query": "cilium.io."}}, "source": POD, "destination": DEATHSTAR}),
    json.dumps({"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 12, "cpu": 1},
                "node_name": "kind-worker", "time": "2026-03-14T12:00:05Z"}),
    "",
]


def test_importing_cilium_output(tmp_path: Path) -> None:
    result = _import(CILIUM_LINES, tmp_path / "cilium.duckdb")
    assert result.records == 3 and result.lost == 12 and result.nodes == ["kind-worker"]
    assert result.skipped == {"trace_not_a_decision": 1, "reply": 1, "no_l4": 1}  # an L7 record without L4
    con = duckdb.connect(str(tmp_path / "cilium.duckdb"), read_only=True)
    try:
        rows = con.sql("SELECT action, policy, policy_kind, rule_index, src_type, src_namespace, src_name, "
                       "dst_type, dst_name, dst_labels, events, first_seen FROM flows_v ORDER BY first_seen").fetchall()
        loss = con.sql("SELECT cause, events FROM loss").fetchall()
        node = con.execute("SELECT node FROM endpoints WHERE name = 'deathstar-6f87'").fetchone()
    finally:
        con.close()
    allowed, world_drop, egress_drop = rows
    assert allowed[:4] == ("Allow", "0|default|cnp:default/rule1|allow|-", "CiliumNetworkPolicy", None)
    assert allowed[4:9] == ("wep", "default", "xwing", "wep", "deathstar-6f87")
    assert allowed[9] == ["class=deathstar", "org=empire"] and allowed[10] == 1
    assert allowed[11] == datetime(2026, 3, 14, 12, 0, 1, 123456)
    assert world_drop[:3] == ("Deny", "0|__DEFAULT__|dp:POLICY_DENIED|deny|-1", "Default")
    assert world_drop[4:7] == ("net", "-", "pvt")
    assert egress_drop[8] == "pub"  # 8.8.8.8
    assert loss == [("hubble_lost_events", 12)]
    assert node == ("kind-worker",)  # the pod the ingress verdicts were reported for


def test_a_trace_only_capture_keeps_the_connection_openings() -> None:
    lines = CILIUM_LINES[3:5] + [cilium({
        "time": "2026-03-14T12:00:01.4Z", "verdict": "FORWARDED", "IP": IP,
        "l4": {"TCP": {"source_port": 48634, "destination_port": 80, "flags": {"ACK": True}}},
        "source": POD, "destination": DEATHSTAR, "event_type": {"type": 4}})]
    parsed = parse_lines(lines)
    assert len(parsed.observations) == 1 and parsed.observations[0].tcp_flags == 2
    assert parsed.skipped["reply"] == 1 and parsed.skipped["trace_not_an_opening"] == 1
    assert parsed.observations[0].rule.name == "no-policy"


def test_malformed_lines_are_skipped_and_named() -> None:
    parsed = parse_lines([CILIUM_LINES[0], "{oops", "[1, 2]", json.dumps({"flow": {**json.loads(CILIUM_LINES[0])[
        "flow"], "time": "yesterday"}}), CILIUM_LINES[1]], "x.json")
    assert len(parsed.observations) == 2  # the lines around the bad ones
    assert [(p.line, p.reason) for p in parsed.problems] == [(2, "not_json"), (3, "not_an_object"), (4, "no_time")]
    assert parsed.problem_lines("x.json")[0].startswith("x.json:2: not_json: ")


def test_flow_objects_only_for_verdicts(tmp_path: Path) -> None:
    with open_source(build_store(tmp_path / "flows.duckdb")) as source:
        verdicts = {o["flow"]["verdict"] for o in flow_objects(source.con)}
    assert verdicts == {"FORWARDED", "DROPPED"}  # Log and Pass rows and conntrack rows are not exported
