"""The query library (`queries/*.sql`): every file parses, runs on a small store built with the
store's writer and on `sample-logs/`, returns the columns its header promises, and answers what
its header says; parameters work; the files run as plain SQL, as the `duckdb` client runs them.

`build_store` writes a store whose every row is chosen so each query has one right answer; the
interop and CLI tests reuse it.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtui.query.library import REPO_QUERIES, QueryFile, QueryFileError, discover, load, parse, variables
from flowtui.query.run import ParamError, Source, open_source, run_query, run_sql
from flowtui.store.duckdb_store import DuckStore

SAMPLE = Path(__file__).resolve().parents[1] / "sample-logs"
T0 = datetime(2026, 3, 14, 12, 0, 0)
NOW = T0 + timedelta(minutes=30)  # the end of the latest flow bucket of the store below
REQUIRED = {
    "top_denied", "hits_per_policy_rule", "unused_rules", "flows_per_namespace_pair", "new_talkers",
    "denylisted_traffic", "default_deny_attributions", "loss_report", "conversations", "policy_changes",
    "allowed_by_profile_only",
}

# id: (kind, namespace, name, tier, revision, direction, rule, action, trigger_kind, policy)
RULES: dict[int, tuple[Any, ...]] = {
    1: ("Profile", None, "kns.prod", "__PROFILE__", 0, "egress", 0, "Allow", None,
        "0|__PROFILE__|pro:kns.prod|allow|0"),
    2: ("GlobalNetworkPolicy", None, "allow-web", "default", 1, "ingress", 0, "Allow", None,
        "0|default|gnp:allow-web|allow|0"),
    3: ("GlobalNetworkPolicy", None, "allow-web", "default", 1, "ingress", 1, "Allow", None,
        "0|default|gnp:allow-web|allow|1"),
    4: ("GlobalNetworkPolicy", None, "allow-web", "default", 2, "ingress", 0, "Allow", None,
        "0|default|gnp:allow-web|allow|0"),
    5: ("GlobalNetworkPolicy", None, "allow-web", "default", 2, "ingress", 1, "Allow", None,
        "0|default|gnp:allow-web|allow|1"),
    6: ("GlobalNetworkPolicy", None, "deny-bad", "default", 1, "ingress", 0, "Deny", None,
        "0|default|gnp:deny-bad|deny|0"),
    7: ("EndOfTier", None, "allow-web", "default", 0, "ingress", -1, "Deny", "GlobalNetworkPolicy",
        "0|default|gnp:allow-web|deny|-1"),
    8: ("NoProfileMatch", None, "", None, 0, "egress", -1, "Deny", None, "0|__PROFILE__|pro:__NO_MATCH__|deny|-1"),
    9: ("NetworkPolicy", "prod", "log-db", "default", 1, "ingress", 0, "Log", None, "0|default|np:prod/log-db|log|0"),
    10: ("NetworkPolicy", "prod", "log-db", "default", 1, "ingress", 1, "Allow", None,
         "0|default|np:prod/log-db|allow|1"),
    11: ("Failsafe", None, "tcp:22", None, 0, "ingress", -1, "Allow", None, "0|__FAILSAFE__|dp:tcp:22|allow|-1"),
    12: ("Profile", None, "kns.prod", "__PROFILE__", 0, "ingress", 0, "Allow", None,
          "0|__PROFILE__|pro:kns.prod|allow|0"),
    13: ("Profile", None, "kns.dev", "__PROFILE__", 0, "egress", 0, "Allow", None, "0|__PROFILE__|pro:kns.dev|allow|0"),
    14: ("NetworkPolicy", "prod", "pass-all", "security", 1, "ingress", 0, "Pass", None,
         "0|security|np:prod/pass-all|pass|0"),
}
RULE_FIRST_SEEN = {4: T0 + timedelta(minutes=15), 5: T0 + timedelta(minutes=15)}

# id: (type, namespace, name, node, labels, addresses)
ENDPOINTS: dict[int, tuple[Any, ...]] = {
    1: ("wep", "prod", "web", "node-a", ["app=web"], ["10.0.1.1", "fd00::1"]),
    2: ("wep", "prod", "db", "node-b", ["app=db"], ["10.0.2.1"]),
    3: ("wep", "dev", "client", "node-a", ["app=client"], ["10.0.1.2"]),
    4: ("external", None, "attacker", None, [], ["198.51.100.7", "2001:db8:bad::9"]),
    5: ("netset", None, "blocklist", None, ["deny=true"], ["198.51.100.0/24", "2001:db8:bad::/48"]),
    6: ("hep", None, "node-b-eth0", "node-b", ["role=worker"], ["172.16.0.2"]),
    7: ("net", None, "pub", None, [], []),
    8: ("external", None, "admin", None, [], ["203.0.113.5"]),
}
NODE_A, NODE_B = 1, 2


def _flow(minute: float, source: int, action: str, rule: int | None, proto: int, src: str, dst: str,
          sport: int | None, dport: int | None, src_ep: int | None, dst_ep: int | None, events: int = 1,
          packets: int | None = None, nbytes: int = 0, reply: tuple[int, int] = (0, 0), started: int | None = None,
          completed: int = 0, count_source: str = "nflog", bucket: int = 15) -> dict[str, Any]:
    when = T0 + timedelta(minutes=minute)
    start = when.replace(second=when.second // bucket * bucket, microsecond=0)
    if packets is None:
        packets = 0 if action == "Allow" else events
    if started is None:
        started = events if action == "Allow" and count_source == "nflog" else 0
    return {
        "start_time": start, "end_time": start + timedelta(seconds=bucket), "source_id": source, "action": action,
        "rule_id": rule, "prefix": None if rule is None else f"ft:{action[0]}{rule}", "proto": proto,
        "src_ip": src, "dst_ip": dst, "sport": sport, "dport": dport, "src_ep": src_ep, "dst_ep": dst_ep,
        "events": events if count_source == "nflog" else 0, "packets": packets, "bytes": nbytes,
        "reply_packets": reply[0], "reply_bytes": reply[1], "connections_started": started,
        "connections_completed": completed, "tcp_flags": 2 if proto == 6 else None, "first_seen": when,
        "last_seen": when + timedelta(seconds=1) * max(events - 1, 0) / 10, "count_source": count_source,
    }


FLOWS = [
    # a. dev/client -> prod/web:80, allowed: client egress by kns.dev, web ingress by allow-web rev 1 then rev 2
    _flow(0, NODE_A, "Allow", 13, 6, "10.0.1.2", "10.0.1.1", 40000, 80, 3, 1),
    _flow(0, NODE_A, "Allow", 2, 6, "10.0.1.2", "10.0.1.1", 40000, 80, 3, 1),
    _flow(20, NODE_A, "Allow", 13, 6, "10.0.1.2", "10.0.1.1", 40001, 80, 3, 1),
    _flow(20, NODE_A, "Allow", 4, 6, "10.0.1.2", "10.0.1.1", 40001, 80, 3, 1),
    _flow(20.2, NODE_A, "Allow", 4, 6, "10.0.1.2", "10.0.1.1", 40001, 80, 3, 1, packets=10, nbytes=1000,
          reply=(8, 800), completed=1, count_source="conntrack"),
    # b. attacker (a deny-list member) -> prod/web:80, denied by deny-bad, IPv4 and IPv6
    _flow(25, NODE_A, "Deny", 6, 6, "198.51.100.7", "10.0.1.1", 4444, 80, 4, 1, events=5, nbytes=300),
    _flow(25, NODE_A, "Deny", 6, 6, "2001:db8:bad::9", "fd00::1", 4445, 80, 4, 1, events=2, nbytes=160),
    # c. prod/web -> prod/db:5432, new: egress by kns.prod; at db a Log rule, then allowed by log-db rule 1
    _flow(29, NODE_A, "Allow", 1, 6, "10.0.1.1", "10.0.2.1", 50000, 5432, 1, 2),
    _flow(29, NODE_B, "Log", 9, 6, "10.0.1.1", "10.0.2.1", 50000, 5432, 1, 2),
    _flow(29, NODE_B, "Pass", 14, 6, "10.0.1.1", "10.0.2.1", 50000, 5432, 1, 2),
    _flow(29, NODE_B, "Allow", 10, 6, "10.0.1.1", "10.0.2.1", 50000, 5432, 1, 2),
    # d. dev/client -> prod/db:6379: allowed out of the client, denied at db by the end of tier (allow-web)
    _flow(10, NODE_A, "Allow", 13, 6, "10.0.1.2", "10.0.2.1", 41000, 6379, 3, 2),
    _flow(10, NODE_B, "Deny", 7, 6, "10.0.1.2", "10.0.2.1", 41000, 6379, 3, 2, events=3, nbytes=180),
    # e. prod/db -> 8.8.8.8:53/udp: no profile allowed its egress
    _flow(5, NODE_B, "Deny", 8, 17, "10.0.2.1", "8.8.8.8", 33000, 53, 2, 7, nbytes=60),
    # f. admin -> node-b:22, a failsafe port
    _flow(12, NODE_B, "Allow", 11, 6, "203.0.113.5", "172.16.0.2", 50500, 22, 8, 6),
    # g. prod/db -> prod/web:8080: no ingress policy selects web for it: the kns.prod profile allowed it
    _flow(14, NODE_B, "Allow", 1, 6, "10.0.2.1", "10.0.1.1", 42000, 8080, 2, 1),
    _flow(14, NODE_A, "Allow", 12, 6, "10.0.2.1", "10.0.1.1", 42000, 8080, 2, 1),
    # the newest bucket: ends at NOW
    _flow(29.9, NODE_A, "Allow", 13, 6, "10.0.1.2", "10.0.1.1", 40002, 80, 3, 1),
    _flow(29.9, NODE_A, "Allow", 4, 6, "10.0.1.2", "10.0.1.1", 40002, 80, 3, 1),
]


def build_store(path: Path) -> Path:
    """A small flow store written with the store's writer (see FLOWS for what it holds)."""
    store = DuckStore(path, snapshot_interval=None)
    try:
        run = store.begin_run({"test": True})
        assert store.add_source(run, "ft-t-node-a", "node-a", (1, 2), 1 << 20) == NODE_A
        assert store.add_source(run, "ft-t-node-b", "node-b", (1, 2), 1 << 20) == NODE_B
        store.insert_rows("rules", [
            {"id": i, "kind": r[0], "namespace": r[1], "name": r[2], "tier": r[3], "revision": r[4],
             "direction": r[5], "rule": r[6], "action": r[7], "trigger_kind": r[8], "policy": r[9],
             "prefix": f"ft:{r[7][0]}{i}", "first_seen": RULE_FIRST_SEEN.get(i, T0)}
            for i, r in RULES.items()])
        store.insert_rows("endpoints", [
            {"id": i, "revision": 1, "type": e[0], "namespace": e[1], "name": e[2], "node": e[3], "labels": e[4],
             "addresses": e[5], "loaded_at": T0} for i, e in ENDPOINTS.items()])
        store.insert_rows("flows", FLOWS)
        store.insert_rows("events", [
            {"time": f["first_seen"], "source_id": f["source_id"], "nflog_group": 2 if f["action"] == "Log" else 1,
             "seq": i, "prefix": f["prefix"], "action": f["action"], "rule_id": f["rule_id"],
             "ip_version": 6 if ":" in f["src_ip"] else 4, "proto": f["proto"], "src_ip": f["src_ip"],
             "dst_ip": f["dst_ip"], "sport": f["sport"], "dport": f["dport"], "tcp_flags": f["tcp_flags"],
             "length": 60, "src_ep": f["src_ep"], "dst_ep": f["dst_ep"]}
            for i, f in enumerate(FLOWS) if f["count_source"] == "nflog"])
        counters = [(T0, 6, 0), (T0 + timedelta(minutes=26), 6, 7), (NOW, 6, 7), (T0, 5, 0), (NOW, 5, 0), (T0, 3, 0),
                    (NOW, 3, 0)]
        store.insert_rows("rule_counters", [
            {"time": t, "run_id": run, "source_id": NODE_A, "prefix": f"ft:A{rid}", "rule_id": rid,
             "nft_rule": f"inet flowtui chain {rid}", "packets": n, "bytes": n * 60, "logged": n,
             "rate_limited": False, "run_packets": n, "run_logged": n} for t, rid, n in counters])
        store.insert_rows("loss", [
            {"time": NOW, "run_id": run, "source_id": NODE_A, "cause": "rcvbuf_overrun", "events": 3, "detail": "gaps"},
            {"time": NOW, "run_id": run, "source_id": NODE_A, "cause": "writer_backlog", "events": 0, "detail": "q"},
            {"time": NOW, "run_id": run, "source_id": NODE_B, "cause": "kernel_ratelimit", "events": 2,
             "detail": "limit"},
            {"time": NOW, "run_id": run, "source_id": None, "cause": "malformed", "events": 0, "detail": "bad"},
        ])
        store.insert_rows("stats", [
            {"time": NOW, "run_id": run, "source_id": NODE_A, "name": "received", "value": 100},
            {"time": NOW, "run_id": run, "source_id": NODE_B, "name": "received", "value": 50},
        ])
        store.end_run(run)
    finally:
        store.close(snapshot=False)
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("store") / "flows.duckdb")


@pytest.fixture
def store(store_path: Path) -> Any:
    source = open_source(store_path)
    yield source
    source.close()


@pytest.fixture(scope="module")
def library() -> dict[str, QueryFile]:
    return discover([REPO_QUERIES])


def q(source: Source, library: dict[str, QueryFile], name: str, **params: str) -> list[dict[str, Any]]:
    table = run_query(source.con, library[name], params)
    assert tuple(table.column_names) == library[name].columns
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


# ------------------------------------------------------------------------------------------------
# The library itself


def test_the_library_has_every_query_the_issue_asks_for(library: dict[str, QueryFile]) -> None:
    assert REQUIRED <= set(library)


def test_every_header_documents_what_the_sql_reads(library: dict[str, QueryFile]) -> None:
    for query in library.values():
        assert query.summary and len(query.description) > 80, query.name
        assert {p.name for p in query.params} == variables(query.sql), query.name
        assert all(p.default for p in query.params), query.name
        assert any(e.startswith("flowtui query " + query.name) for e in query.examples), query.name
        assert any(e.startswith("duckdb ") and query.path.name in e for e in query.examples), query.name
        assert len(query.columns) == len(set(query.columns)) >= 3, query.name


def test_header_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    good = "-- x: y\n--\n-- Parameters:\n--   a  the a (default: 1)\n--\n-- Columns: a\nSELECT getvariable('a') AS a;\n"
    assert parse(good, tmp_path / "x.sql").params[0].name == "a"
    with pytest.raises(QueryFileError, match="undeclared b"):
        parse(good.replace("AS a;", "AS a, getvariable('b') AS b;"), tmp_path / "x.sql")
    with pytest.raises(QueryFileError, match="declares unused a"):
        parse(good.replace("getvariable('a')", "1"), tmp_path / "x.sql")
    with pytest.raises(QueryFileError, match="names 'x', the file is 'z'"):
        parse(good, tmp_path / "z.sql")
    with pytest.raises(QueryFileError, match="no `Columns:`"):
        parse(good.replace("-- Columns: a\n", ""), tmp_path / "x.sql")
    with pytest.raises(QueryFileError, match="no header"):
        parse("SELECT 1", tmp_path / "x.sql")


def test_a_users_directory_comes_first(tmp_path: Path) -> None:
    mine = tmp_path / "top_denied.sql"
    mine.write_text("-- top_denied: mine\n-- Columns: n\nSELECT 1 AS n;\n")
    found = discover([tmp_path, REPO_QUERIES])
    assert found["top_denied"].summary == "mine" and "conversations" in found
    assert load(str(mine)).summary == "mine"


# ------------------------------------------------------------------------------------------------
# What each query answers, on the small store


def test_every_query_runs_with_its_defaults_and_returns_its_columns(store: Source,
                                                                   library: dict[str, QueryFile]) -> None:
    for name in library:
        assert q(store, library, name), f"{name} returned nothing on the test store"


def test_top_denied(store: Source, library: dict[str, QueryFile]) -> None:
    rows = q(store, library, "top_denied")
    assert [(r["src_ip"], r["dst"], r["dport"], r["packets"]) for r in rows] == [
        ("198.51.100.7", "prod/web", 80, 5), ("10.0.1.2", "prod/db", 6379, 3),
        ("2001:db8:bad::9", "prod/web", 80, 2), ("10.0.2.1", "net:pub", 53, 1)]
    assert rows[0]["src"] == "external:attacker" and rows[0]["policy"] == "0|default|gnp:deny-bad|deny|0"
    assert rows[0]["node"] == "node-a" and rows[0]["proto"] == "tcp" and rows[0]["flows"] == 1
    assert [r["src"] for r in q(store, library, "top_denied", namespace="dev")] == ["dev/client"]
    assert len(q(store, library, "top_denied", rows="1")) == 1
    assert [r["dport"] for r in q(store, library, "top_denied", since="10m")] == [80, 80]  # since NOW-10m
    assert [r["dport"] for r in q(store, library, "top_denied", until="2026-03-14 12:09")] == [53]


def test_hits_per_policy_rule(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {r["rule_id"]: r for r in q(store, library, "hits_per_policy_rule")}
    assert 3 not in rows  # an old revision's rule that was never hit
    assert rows[2]["logged"] == 1 and rows[2]["revision"] == 1  # old revision, but hit
    assert rows[4]["logged"] == 2 and rows[4]["packets"] == 10  # two logged, conntrack counted 10
    assert rows[5]["logged"] == 0 and rows[5]["counted"] == 0  # current revision, never hit
    assert rows[6]["counted"] == 7 and rows[6]["logged"] == 7 and rows[6]["rate_limited"] is False
    assert rows[9]["action"] == "Log" and rows[9]["logged"] == 1
    windowed = {r["rule_id"]: r for r in q(store, library, "hits_per_policy_rule", since="2026-03-14 12:18")}
    assert 2 not in windowed and windowed[4]["logged"] == 2 and windowed[6]["counted"] == 7
    only = q(store, library, "hits_per_policy_rule", policy="allow-%")
    assert {r["name"] for r in only} == {"allow-web"}
    assert {r["namespace"] for r in q(store, library, "hits_per_policy_rule", namespace="prod")} == {"prod"}


def test_unused_rules(store: Source, library: dict[str, QueryFile]) -> None:
    rows = q(store, library, "unused_rules")
    assert [(r["name"], r["revision"], r["rule"]) for r in rows] == [("allow-web", 2, 1)]
    assert rows[0]["last_hit"] is None and rows[0]["revision_first_seen"] == T0 + timedelta(minutes=15)
    # since 12:25: allow-web rule 0 (hit 12:29:54), log-db (12:29) and deny-bad (logged 12:25, its
    # counter last rose by the 12:26 reading) were all hit
    recent = {(r["name"], r["rule"]) for r in q(store, library, "unused_rules", since="5m")}
    assert recent == {("allow-web", 1)}
    older = {(r["name"], r["rule"]): r for r in q(store, library, "unused_rules", since="3m")}
    assert set(older) == {("allow-web", 1), ("deny-bad", 0)}
    assert older[("deny-bad", 0)]["last_hit"] == T0 + timedelta(minutes=26)  # hit, but before 12:27
    assert q(store, library, "unused_rules", namespace="prod") == []


def test_flows_per_namespace_pair_counts_each_flow_once(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {(r["src_namespace"], r["dst_namespace"], r["action"]): r
            for r in q(store, library, "flows_per_namespace_pair")}
    assert rows[("dev", "prod", "Allow")]["flows"] == 3  # 3 buckets; both ends' decisions merged
    assert rows[("dev", "prod", "Allow")]["connections"] == 3
    assert rows[("dev", "prod", "Allow")]["packets"] == 10
    assert rows[("dev", "prod", "Deny")]["flows"] == 1  # allowed out of dev, denied into prod: denied
    assert rows[("dev", "prod", "Deny")]["connections"] == 0
    assert rows[("prod", "prod", "Allow")]["flows"] == 2
    assert rows[("-", "prod", "Deny")]["flows"] == 2 and rows[("-", "prod", "Deny")]["src_endpoints"] == 1
    assert rows[("-", "-", "Allow")]["flows"] == 1
    dev = q(store, library, "flows_per_namespace_pair", namespace="dev")
    assert {(r["src_namespace"], r["dst_namespace"], r["action"]) for r in dev} == {
        ("dev", "prod", "Allow"), ("dev", "prod", "Deny")}


def test_conversations(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {(r["src"], r["dst"]): r for r in q(store, library, "conversations")}
    web = rows[("dev/client", "prod/web")]
    assert (web["flows"], web["connections"], web["packets"], web["reply_packets"], web["reply_bytes"]) == (
        3, 3, 10, 8, 800)
    assert web["ports"] == ["tcp/80"] and web["denied"] == 0
    assert rows[("external:attacker", "prod/web")]["denied"] == 2
    assert rows[("prod/db", "net:pub")]["ports"] == ["udp/53"]
    first = q(store, library, "conversations", rows="1")
    assert len(first) == 1 and (first[0]["src"], first[0]["dst"]) == ("dev/client", "prod/web")


def test_new_talkers(store: Source, library: dict[str, QueryFile]) -> None:
    rows = q(store, library, "new_talkers")
    assert [(r["src"], r["dst"], r["dport"]) for r in rows] == [
        ("prod/web", "prod/db", 5432), ("external:attacker", "prod/web", 80), ("external:attacker", "prod/web", 80)]
    assert rows[0]["actions"] == ["Allow"] and rows[1]["actions"] == ["Deny"]
    assert [r["dport"] for r in q(store, library, "new_talkers", minutes="3")] == [5432]
    # as of 12:20:30, the client's port 80 was not new (seen at 12:00), port 6379 (12:10) was
    earlier = q(store, library, "new_talkers", minutes="15", now="2026-03-14 12:20:30")
    assert {(r["src"], r["dport"]) for r in earlier} == {("dev/client", 6379), ("prod/db", 8080),
                                                         ("external:admin", 22)}


def test_denylisted_traffic(store: Source, library: dict[str, QueryFile]) -> None:
    rows = q(store, library, "denylisted_traffic")
    assert [(r["network_set"], r["src_ip"], r["action"], r["packets"]) for r in rows] == [
        ("blocklist", "198.51.100.7", "Deny", 5), ("blocklist", "2001:db8:bad::9", "Deny", 2)]
    assert rows[0]["policy"] == "0|default|gnp:deny-bad|deny|0"
    assert len(q(store, library, "denylisted_traffic", action="any")) == 2
    assert q(store, library, "denylisted_traffic", action="Allow") == []
    assert q(store, library, "denylisted_traffic", netset="other%") == []


def test_default_deny_attributions(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {r["kind"]: r for r in q(store, library, "default_deny_attributions")}
    assert set(rows) == {"EndOfTier", "NoProfileMatch"}
    eot = rows["EndOfTier"]
    assert (eot["trigger_kind"], eot["trigger"], eot["direction"], eot["endpoint"]) == (
        "GlobalNetworkPolicy", "allow-web", "ingress", "prod/db")
    assert eot["packets"] == 3 and eot["example"] == "tcp 10.0.1.2:41000 -> 10.0.2.1:6379"
    npm = rows["NoProfileMatch"]
    assert (npm["trigger"], npm["direction"], npm["endpoint"], npm["endpoint_ip"]) == (
        None, "egress", "prod/db", "10.0.2.1")
    assert q(store, library, "default_deny_attributions", namespace="dev") == []


def test_loss_report(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {(r["node"], r["cause"]): r for r in q(store, library, "loss_report")}
    assert set(rows) == {("node-a", "rcvbuf_overrun"), ("node-a", "writer_backlog"), ("node-b", "kernel_ratelimit"),
                         ("(process)", "malformed")}
    overrun = rows[("node-a", "rcvbuf_overrun")]
    assert (overrun["lost"], overrun["received"]) == (3, 100)
    assert overrun["loss_ratio"] == pytest.approx(3 / 103, abs=1e-6)
    assert rows[("node-b", "kernel_ratelimit")]["loss_ratio"] == pytest.approx(2 / 52, abs=1e-6)
    assert rows[("(process)", "malformed")]["received"] == 150
    assert len(q(store, library, "loss_report", run="1")) == len(q(store, library, "loss_report", run="all")) == 4
    assert q(store, library, "loss_report", run="2") == []


def test_policy_changes(store: Source, library: dict[str, QueryFile]) -> None:
    rows = {(r["name"], r["revision"]): r for r in q(store, library, "policy_changes")}
    rev1, rev2 = rows[("allow-web", 1)], rows[("allow-web", 2)]
    assert rev1["rule_ids"] == [2, 3] and rev2["rule_ids"] == [4, 5]
    assert rev1["superseded_at"] == rev2["first_seen"] == T0 + timedelta(minutes=15)
    assert rev2["superseded_at"] is None
    assert (rev1["hits"], rev2["hits"]) == (1, 2) and rev1["ingress_rules"] == 2
    assert rows[("log-db", 1)]["actions"] == ["Allow", "Log"]
    assert ("allow-web", 0) not in rows  # the end of tier is no revision of a policy
    recent = q(store, library, "policy_changes", since="2026-03-14 12:10")
    assert [(r["name"], r["revision"]) for r in recent] == [("allow-web", 2)]


def test_allowed_by_profile_only(store: Source, library: dict[str, QueryFile]) -> None:
    rows = q(store, library, "allowed_by_profile_only")
    got = {(r["endpoint"], r["direction"], r["profile"], r["dst"], r["dport"]) for r in rows}
    assert got == {
        ("dev/client", "egress", "kns.dev", "prod/web", 80),
        ("dev/client", "egress", "kns.dev", "prod/db", 6379),
        ("prod/web", "egress", "kns.prod", "prod/db", 5432),
        ("prod/db", "egress", "kns.prod", "prod/web", 8080),
        ("prod/web", "ingress", "kns.prod", "prod/web", 8080),
    }  # the failsafe port 22 is not in it
    assert {r["endpoint"] for r in q(store, library, "allowed_by_profile_only", namespace="dev")} == {"dev/client"}


def test_bad_parameter_values_are_errors_not_defaults(store: Source, library: dict[str, QueryFile]) -> None:
    with pytest.raises(duckdb.Error, match="since: not a time or a duration: yesterday"):
        q(store, library, "top_denied", since="yesterday")
    with pytest.raises(duckdb.Error, match="now: not a time"):
        q(store, library, "new_talkers", now="soon")
    with pytest.raises(ParamError, match="no parameter sinse"):
        q(store, library, "top_denied", sinse="1h")


def test_parameters_do_not_leak_from_one_run_to_the_next(store: Source, library: dict[str, QueryFile]) -> None:
    assert len(q(store, library, "top_denied", rows="1")) == 1
    assert len(q(store, library, "top_denied")) == 4


# ------------------------------------------------------------------------------------------------
# Plain SQL, as the duckdb client runs it


def test_the_files_run_as_plain_sql_on_a_read_only_store(store_path: Path, library: dict[str, QueryFile]) -> None:
    con = duckdb.connect(str(store_path), read_only=True)  # what `duckdb -readonly flows.duckdb` opens
    try:
        with open_source(store_path) as source:
            for name, query in library.items():
                plain = con.execute(query.path.read_text()).fetchall()  # `.read FILE`: all its statements
                want = [tuple(r.values()) for r in run_query(source.con, query, {}).to_pylist()]
                assert plain == want, name
                assert plain == [tuple(r.values()) for r in run_sql(source.con, query.sql).to_pylist()], name
        con.execute("SET VARIABLE since = '10m'")
        plain = con.execute(library["top_denied"].path.read_text()).fetchall()
        assert [r[5] for r in plain] == [80, 80]
    finally:
        con.close()


@pytest.mark.skipif(shutil.which("duckdb") is None, reason="the duckdb CLI is not installed")
def test_the_duckdb_cli_runs_them(store_path: Path) -> None:  # pragma: no cover - needs the CLI
    done = subprocess.run(["duckdb", "-readonly", "-csv", str(store_path), "-c", "SET VARIABLE rows = 1",
                           "-c", f".read {REPO_QUERIES / 'top_denied.sql'}"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "198.51.100.7" in done.stdout and "10.0.2.1" not in done.stdout


# ------------------------------------------------------------------------------------------------
# The real lab run in sample-logs/


@pytest.mark.skipif(not (SAMPLE / "flows.parquet").exists(), reason="sample-logs/ not produced yet")
def test_every_query_on_the_sample_logs(library: dict[str, QueryFile]) -> None:
    with open_source(SAMPLE) as source:
        assert source.kind == "parquet"
        results = {name: q(source, library, name) for name in library}
    for name in ("top_denied", "hits_per_policy_rule", "flows_per_namespace_pair", "conversations",
                 "denylisted_traffic", "default_deny_attributions", "loss_report", "policy_changes",
                 "allowed_by_profile_only", "new_talkers"):
        assert results[name], f"{name} found nothing in sample-logs"
    top = results["top_denied"][0]
    assert "dos-mitigation" in top["policy"] and top["src"] == "external:attacker"
    assert {r["network_set"] for r in results["denylisted_traffic"]} == {"dos-deny-list"}
    assert all(r["action"] == "Deny" for r in results["denylisted_traffic"])
    assert any(r["kind"] == "EndOfTier" and r["trigger"] == "favorite-worker-host"
               for r in results["default_deny_attributions"])
    hits = {r["name"] for r in results["hits_per_policy_rule"] if r["logged"]}
    assert {"dos-mitigation", "log-and-deny-frontend", "deny-frontend-to-transaction"} <= hits
    assert {r["cause"] for r in results["loss_report"]} >= {"kernel_ratelimit", "rcvbuf_overrun"}


# ------------------------------------------------------------------------------------------------
# The CIDR matching of denylisted_traffic, in plain SQL, against Python's ipaddress


def _macros() -> str:
    text = (REPO_QUERIES / "denylisted_traffic.sql").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("--")).split("\nWITH ")[0]


_CON: list[duckdb.DuckDBPyConnection] = []


def _cidr_con() -> duckdb.DuckDBPyConnection:
    if not _CON:
        con = duckdb.connect()
        con.execute(_macros())
        _CON.append(con)
    return _CON[0]


addresses_v4 = st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv4Address(n))
addresses_v6 = st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n))


cases = st.one_of(st.tuples(addresses_v4, addresses_v4, st.integers(0, 32)),
                  st.tuples(addresses_v6, addresses_v6, st.integers(0, 128)),
                  st.tuples(addresses_v4, addresses_v6, st.integers(0, 128)))


@settings(max_examples=25, deadline=None)
@given(st.lists(cases, min_size=1, max_size=60))
def test_sql_cidr_match_agrees_with_ipaddress(batch: list[tuple[Any, Any, int]]) -> None:
    ips, cidrs, want = [], [], []
    for address, base, prefix in batch:
        network = ipaddress.ip_network(f"{base}/{min(prefix, base.max_prefixlen)}", strict=False)
        for near in (address, network.network_address, network.broadcast_address):  # random, first, last
            ips.append(str(near))
            cidrs.append(str(network))
            want.append(near.version == network.version and near in network)
    got = _cidr_con().execute("SELECT list(ft_in_cidr(ip, cidr) ORDER BY i) FROM (SELECT unnest(?::VARCHAR[]) AS ip, "
                              "unnest(?::VARCHAR[]) AS cidr, unnest(range(?)) AS i)", [ips, cidrs, len(ips)]).fetchone()
    assert got is not None
    wrong = [(ip, cidr, w) for ip, cidr, w, g in zip(ips, cidrs, want, got[0], strict=True) if g is not w]
    assert not wrong
