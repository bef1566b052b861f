"""What Hubble records beyond a 5-tuple and one rule is kept in the flow store and given back:
the L7 summary of proxy records (`l7`) and every policy a flow names for its verdict
(`rule_id` the first, `other_rule_ids` the rest), through the JSONL, Hubble and Parquet exports;
stores older than these columns still open read-only and upgrade in place.

The expected values are read from the real records (`../shared/external/material/interop/hubble/`)
by the test itself, not by the importer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

from flowtui.cli.main import cli
from flowtui.interop.hubble import parse_lines
from flowtui.interop.parquet import attach
from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore
from flowtui.tui.queries import recorded_extras

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material" / "interop" / "hubble"
DNS = MATERIAL / "hubble-otel__basic-sample-330-dns-flows.json"
HTTP = MATERIAL / "hubble-otel__basic-sample-348-http-flows.json"
pytestmark = pytest.mark.skipif(not MATERIAL.is_dir(), reason=f"{MATERIAL} is not here")
RCODE = {0: "NOERROR", 3: "NXDOMAIN"}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def requests(path: Path) -> Counter[tuple[str, int, str]]:
    """(source address, source port, summary) of every L7 request in a Hubble file, read directly."""
    out: Counter[tuple[str, int, str]] = Counter()
    for line in path.read_text().splitlines():
        flow = json.loads(line)["flow"]
        l7 = flow.get("l7") or {}
        if l7.get("type") != "REQUEST":
            continue
        if "http" in l7:
            summary = f"http {l7['http']['method']} {l7['http']['url']}"
        else:
            dns = l7["dns"]
            summary = f"dns {dns['query']} {','.join(dns['qtypes'])} {RCODE[dns.get('rcode', 0)]}"
        port = next(iter(flow["l4"].values()))["source_port"]
        out[(flow["IP"]["source"], port, summary)] += 1
    return out


def stored(db: Path) -> Counter[tuple[str, int, str]]:
    return Counter({(ip, port, l7): int(n) for ip, port, l7, n in rows(
        db, "SELECT src_ip, sport, l7, sum(events) FROM flows WHERE l7 IS NOT NULL GROUP BY ALL")})


@pytest.mark.parametrize("path", [DNS, HTTP], ids=["dns", "http"])
def test_l7_summaries_are_stored_and_exported_back(path: Path, tmp_path: Path) -> None:
    want = requests(path)
    assert sum(want.values()) > 100
    db = tmp_path / "a.duckdb"
    assert invoke("import", "hubble", str(path), "--db", str(db)).exit_code == 0
    assert stored(db) == want
    assert rows(db, "SELECT count(*) FROM events WHERE l7 IS NOT NULL") == [(sum(want.values()),)]

    # JSON Lines: the flow records carry it
    records = [json.loads(line) for line in invoke("export", "--format", "jsonl", "--db", str(db), "--out", "-")
               .stdout.splitlines() if line.startswith("{")]
    assert Counter((r["src_ip"], r["sport"], r["l7"]) for r in records if r["l7"] for _ in range(r["events"])) == want

    # Hubble: access-log records with the l7 object (what the summary holds, nothing invented), and back
    out = tmp_path / "h.json"
    assert invoke("export", "--format", "hubble", "--db", str(db), "--out", str(out)).exit_code == 0
    flows = [json.loads(line)["flow"] for line in out.read_text().splitlines()]
    l7 = [f for f in flows if "l7" in f]
    assert len(l7) == sum(want.values())
    assert {f["Type"] for f in l7} == {"L7"} and {f["event_type"]["type"] for f in l7} == {129}
    assert not any("type" in f["l7"] or "headers" in f["l7"].get("http", {}) for f in l7)  # not kept: not written
    if path == HTTP:
        assert {(f["l7"]["http"]["method"], f["l7"]["http"]["url"]) for f in l7} == {
            tuple(s.split(" ")[1:]) for _ip, _port, s in want}
    back = tmp_path / "back.duckdb"
    assert invoke("import", "hubble", str(out), "--db", str(back)).exit_code == 0
    assert stored(back) == want

    # Parquet: exported and attached again
    assert invoke("export", "--format", "parquet", "--db", str(db), "--out", str(tmp_path / "pq")).exit_code == 0
    con = duckdb.connect()
    try:
        attach(con, tmp_path / "pq")
        got = Counter({(ip, port, s): int(n) for ip, port, s, n in con.sql(
            "SELECT src_ip, sport, l7, sum(events) FROM flows_v WHERE l7 IS NOT NULL GROUP BY ALL").fetchall()})
    finally:
        con.close()
    assert got == want


def _with_policies(verb: str, *names: str) -> str:
    """A real Hubble record (the first HTTP request of the material) naming several egress policies."""
    flow = json.loads(HTTP.read_text().splitlines()[0])
    body = flow["flow"]
    assert body["traffic_direction"] == "EGRESS"
    body[f"egress_{verb}_by"] = [
        {"name": name, "namespace": "istio-system", "kind": "CiliumNetworkPolicy", "revision": "7",
         "labels": ["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
                    f"k8s:io.cilium.k8s.policy.name={name}", "k8s:io.cilium.k8s.policy.namespace=istio-system"]}
        for name in names
    ]
    if verb == "denied":
        body["verdict"] = "DROPPED"
        body["drop_reason_desc"] = "POLICY_DENY"
    return json.dumps(flow)


@pytest.mark.parametrize("verb", ["allowed", "denied"])
def test_every_policy_hubble_names_is_kept_and_exported(verb: str, tmp_path: Path) -> None:
    line = _with_policies(verb, "scrape", "monitoring", "default-egress")
    parsed = parse_lines([line])
    [o] = parsed.observations
    assert o.rule.name == "scrape" and [k.name for k in o.others] == ["monitoring", "default-egress"]

    src = tmp_path / "several.json"
    src.write_text(line + "\n")
    db = tmp_path / "a.duckdb"
    assert invoke("import", "hubble", str(src), "--db", str(db)).exit_code == 0
    action = "allow" if verb == "allowed" else "deny"
    policies = [f"0|default|cnp:istio-system/{n}|{action}|-" for n in ("scrape", "monitoring", "default-egress")]
    [(policy, others, other_ids)] = rows(db, "SELECT policy, other_policies, other_rule_ids FROM flows_v")
    assert [policy, *others] == policies
    assert rows(db, "SELECT policy FROM rules ORDER BY id") == [(p,) for p in policies]
    assert rows(db, "SELECT other_rule_ids FROM events") == [(other_ids,)]

    record = json.loads(invoke("export", "--format", "jsonl", "--db", str(db), "--out", "-").stdout.splitlines()[0])
    assert [record["policy"], *record["other_policies"]] == policies

    out = tmp_path / "h.json"
    assert invoke("export", "--format", "hubble", "--db", str(db), "--out", str(out)).exit_code == 0
    [flow] = [json.loads(x)["flow"] for x in out.read_text().splitlines()]
    assert [p["name"] for p in flow[f"egress_{verb}_by"]] == ["scrape", "monitoring", "default-egress"]
    assert {p["kind"] for p in flow[f"egress_{verb}_by"]} == {"CiliumNetworkPolicy"}
    back = tmp_path / "back.duckdb"
    assert invoke("import", "hubble", str(out), "--db", str(back)).exit_code == 0
    assert rows(back, "SELECT policy, other_policies, l7 FROM flows_v") == rows(
        db, "SELECT policy, other_policies, l7 FROM flows_v")

    con = duckdb.connect(str(db), read_only=True)
    try:  # the dashboard's flow detail reads both for the flow's row
        row = {"src_ip": "10.156.2.7", "dst_ip": "10.128.0.4", "proto": 6, "sport": 48532, "dport": 9990,
               "rule_id": 1, "action": "Allow" if verb == "allowed" else "Deny"}
        assert recorded_extras(con, row) == (["http GET http://10.128.0.4:9990/metrics"], policies[1:])
    finally:
        con.close()


def _old_store(path: Path) -> None:
    """A store as flowtui wrote it before the `l7` / `other_rule_ids` columns, with one flow."""
    con = duckdb.connect(str(path))
    try:
        for table in schema.ALL_TABLES:
            old = [c for c in table.columns if not c.optional]
            con.execute(f"CREATE TABLE {table.name} ({', '.join(f'{c.name} {c.sql}' for c in old)})")
        for name, (_doc, query) in schema.VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {schema.before_other_rules(query)}")
        con.execute("INSERT INTO sources VALUES (1, 1, NULL, 'node-a', '', 0)")
        con.execute("INSERT INTO rules (id, kind, name, tier, revision, direction, rule, action, policy) VALUES "
                    "(1, 'GlobalNetworkPolicy', 'allow-web', 'default', 1, 'ingress', 0, 'Allow', "
                    "'0|default|default.allow-web|allow|0')")
        con.execute("INSERT INTO flows (start_time, end_time, source_id, action, rule_id, proto, src_ip, dst_ip, "
                    "sport, dport, events, packets, first_seen, last_seen, count_source) VALUES "
                    "('2026-03-14 12:00:00', '2026-03-14 12:00:15', 1, 'Allow', 1, 6, '192.0.2.1', '192.0.2.2', "
                    "40000, 80, 2, 2, '2026-03-14 12:00:01', '2026-03-14 12:00:02', 'nflog')")
    finally:
        con.close()


def test_a_store_older_than_the_columns_reads_and_upgrades(tmp_path: Path) -> None:
    db = tmp_path / "old.duckdb"
    _old_store(db)
    # read-only readers do not upgrade it, and need nothing it lacks
    [record] = [json.loads(x) for x in invoke("export", "--format", "jsonl", "--db", str(db), "--out", "-")
                .stdout.splitlines() if x.startswith("{")]
    assert record["policy"] == "0|default|default.allow-web|allow|0" and "l7" not in record
    hubble = invoke("export", "--format", "hubble", "--db", str(db), "--out", "-").stdout.splitlines()
    flows = [json.loads(x)["flow"] for x in hubble if x.startswith("{")]
    assert len(flows) == 2 and not any("l7" in f for f in flows)
    assert [p["name"] for p in flows[0]["ingress_allowed_by"]] == ["allow-web"]
    assert invoke("export", "--format", "parquet", "--db", str(db), "--out", str(tmp_path / "pq")).exit_code == 0
    con = duckdb.connect()
    try:
        attach(con, tmp_path / "pq")
        assert con.sql("SELECT l7, other_policies, events FROM flows_v").fetchall() == [(None, None, 2)]
    finally:
        con.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert "l7" not in {r[0] for r in con.execute("DESCRIBE flows").fetchall()}
        assert recorded_extras(con, {"src_ip": "192.0.2.1", "dst_ip": "192.0.2.2"}) == ([], [])
    finally:
        con.close()
    # a writer adds them in place (NULL in the old rows) and imports L7 records next to them
    assert invoke("import", "hubble", str(HTTP), "--db", str(db)).exit_code == 0
    assert rows(db, "SELECT count_source, count(*) FILTER (WHERE l7 IS NOT NULL), count(*) FROM flows "
                    "GROUP BY ALL ORDER BY ALL") == [("hubble", 168, 168), ("nflog", 0, 1)]
    store = DuckStore(db, snapshot_interval=None)  # the collector's batches, without the imports' columns
    try:
        table = store.query("SELECT * EXCLUDE (l7, other_rule_ids) FROM flows WHERE count_source = 'nflog'")
        assert len(table) == 1
        batch = pa.Table.from_pylist([dict(zip(schema.FLOWS.arrow_schema.names, table[0], strict=True))],
                                     schema=schema.FLOWS.arrow_schema)
        assert store.insert("flows", batch) == 1
        with pytest.raises(KeyError, match="no column 'events'"):  # only optional columns may be left out
            store.insert("flows", batch.drop_columns(["events"]))
    finally:
        store.close(snapshot=False)
    assert rows(db, "SELECT sum(events), count(l7) FROM flows WHERE count_source = 'nflog'") == [(4, 0)]


@pytest.mark.parametrize("l7", [
    {"type": "REQUEST", "http": {"method": "POST", "url": "http://api/v1/orders?id=7", "code": 503}},
    {"type": "REQUEST", "dns": {"query": "missing.example.com.", "qtypes": ["A", "AAAA"], "rcode": 3}},
    {"type": "REQUEST", "dns": {"query": "example.com."}},
    {"type": "REQUEST", "kafka": {"api_key": "produce", "topic": "orders", "error_code": 3, "correlation_id": 9}},
    {"type": "REQUEST", "kafka": {"api_key": "fetch", "topic": "audit"}},
], ids=["http-status", "dns-nxdomain", "dns-bare", "kafka-error", "kafka"])
def test_each_l7_kind_survives_a_hubble_round_trip(l7: dict[str, Any], tmp_path: Path) -> None:
    """The summary keeps what the issue asks (method, URL, status; query, types, rcode; Kafka API,
    topic, error) and the export writes exactly that back, so a second import stores the same."""
    flow = json.loads(HTTP.read_text().splitlines()[0])
    flow["flow"]["l7"] = l7
    src = tmp_path / "one.json"
    src.write_text(json.dumps(flow) + "\n")
    db = tmp_path / "a.duckdb"
    assert invoke("import", "hubble", str(src), "--db", str(db)).exit_code == 0
    [(summary,)] = rows(db, "SELECT l7 FROM flows")
    kind = next(k for k in l7 if k != "type")
    assert summary.startswith(kind + " ")
    for value in l7[kind].values():
        if value and not isinstance(value, list) and value != 9:  # correlation ids are not kept
            text = {3: "NXDOMAIN"}.get(value, str(value)) if kind == "dns" else str(value)
            assert text in summary.split(" "), (text, summary)
    out = tmp_path / "h.json"
    assert invoke("export", "--format", "hubble", "--db", str(db), "--out", str(out)).exit_code == 0
    [back] = [json.loads(x)["flow"]["l7"] for x in out.read_text().splitlines()]
    assert back == {kind: {k: v for k, v in l7[kind].items() if k != "correlation_id"}}
    again = tmp_path / "b.duckdb"
    assert invoke("import", "hubble", str(out), "--db", str(again)).exit_code == 0
    assert rows(again, "SELECT l7 FROM flows") == [(summary,)]
