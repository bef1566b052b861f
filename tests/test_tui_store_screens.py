"""The dashboard's screens on a store with rollups give the raw flows' answers: Conversations from
`pair_hours` (+ the raw flows after it) equal the same sums over `flows_once`, Policies' hits from
`rule_hits_all` equal the sums over `flows`, and the Flows screen's first page, found in a window
growing back from the newest row, holds the same newest flows as a scan of the whole store.
Random stores (three of five hours rolled up, the rest raw), random filters."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flowtui.store.duckdb_store import DuckStore
from flowtui.tui import queries, sources
from flowtui.tui.filters import compile_filter
from flowtui.tui.flowtable import KEY
from flowtui.tui.sources import StoreSource
from tests.test_store_rollups import T0, endpoint_rows, insert, random_flows, rule_rows

# what a pair row knows (rollup path) and what it does not (the stream's path)
PAIR_FILTERS = ["", "ns:ns1", "verdict:deny", "!verdict:deny", "to-pod:ns2/pod2", "to-port:443", "from:ns1/pod4",
                "proto:udp type:wep"]
STREAM_FILTERS = ["node:node-a", "port:443", "from:10.0.0.10", "policy:p3", "10.0.0.4", "tier:default"]


def build(path: Path, seed: int, rows: int = 1500) -> Path:
    rng = random.Random(seed)
    store = DuckStore(path, snapshot_interval=None)
    run = store.begin_run({"test": "screens"})
    for node in ("node-a", "node-b"):
        store.add_source(run, f"ft-th-{node}", node, (1,), 1 << 20)
    store.insert_rows("rules", rule_rows())
    store.insert_rows("endpoints", endpoint_rows())
    flows = random_flows(rng, rows)
    rng.shuffle(flows)
    insert(store, flows)
    store.roll_up(T0 + timedelta(hours=3))  # hours 9-11 rolled up, 12-13 raw
    store.query("UPDATE runs SET ended = started, outcome = 'stopped'")
    store.close(snapshot=False)
    return path


@pytest.fixture(scope="module", params=[1, 2])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("screens") / "flows.duckdb", request.param)


LABEL = ("coalesce(CASE {s}.type WHEN 'wep' THEN coalesce({s}.namespace || '/', '') || {s}.name "
         "ELSE {s}.type || ':' || {s}.name END, o.{s}_ip)")
# The oracle: every flows_once row on its own, named and filtered as a pair row is.
ORACLE = f"""
SELECT source, destination, count(*) FILTER (WHERE NOT denied) AS allowed, count(*) FILTER (WHERE denied) AS denied,
  sum(packets) AS packets, sum(bytes) AS bytes, max(last_seen) AS last_seen,
  string_agg(DISTINCT service, ' ' ORDER BY service) AS services
FROM (SELECT {LABEL.format(s='src')} AS source, {LABEL.format(s='dst')} AS destination, o.denied, o.packets, o.bytes,
        o.last_seen, o.proto, o.dport, CASE WHEN o.denied THEN 'deny' ELSE 'allow' END AS verdict,
        CASE WHEN o.denied THEN 'Deny' ELSE 'Allow' END AS action,
        CASE o.proto WHEN 6 THEN 'tcp' WHEN 17 THEN 'udp' END || coalesce('/' || o.dport, '') AS service,
        src.type AS src_type, src.namespace AS src_namespace, src.name AS src_name, src.labels AS src_labels,
        dst.type AS dst_type, dst.namespace AS dst_namespace, dst.name AS dst_name, dst.labels AS dst_labels
      FROM flows_once o LEFT JOIN endpoints src ON src.id = o.src_ep LEFT JOIN endpoints dst ON dst.id = o.dst_ep)
WHERE {{where}}
GROUP BY source, destination"""
# Policies and Log-ged flows per pair: the stream's rows of the pair (filtered per row).
ORACLE_EXTRAS = """
SELECT src, dst, count(DISTINCT (_bucket, proto, src_ip, dst_ip, sport, dport)) FILTER (WHERE verdict = 'log'),
  array_to_string(list_sort(list(DISTINCT policy_name) FILTER (WHERE policy_name IS NOT NULL)), ', ')
FROM (SELECT *, CASE src_type WHEN 'wep' THEN src_namespace || '/' || src_name ELSE src_ip END AS src,
        CASE dst_type WHEN 'wep' THEN dst_namespace || '/' || dst_name ELSE dst_ip END AS dst
      FROM ({rows}) WHERE {where})
GROUP BY src, dst"""


def _oracle(path: Path, where: str | None) -> dict[tuple[str, str], dict[str, Any]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for r in con.sql(ORACLE.format(where=where or "true")).to_arrow_table().to_pylist():
            out[(r["source"], r["destination"])] = r
        for src, dst, logged, policies in con.execute(
                ORACLE_EXTRAS.format(rows=queries.flow_rows(), where=where or "true")).fetchall():
            if (src, dst) in out:
                out[(src, dst)].update(logged=logged, policies=policies)
        return out
    finally:
        con.close()


@pytest.mark.parametrize("text", PAIR_FILTERS)
def test_conversations_from_the_rollups_equal_flows_once(store: Path, text: str) -> None:
    where = compile_filter(text).where
    src = StoreSource(store)
    try:
        rows = src.conversations(where, limit=10_000)
        assert rows and all(r["_ids"] for r in rows)  # the rollup path answered
        details = src.conversation_details(rows, where)
    finally:
        src.close()
    want = _oracle(store, where)
    assert {(r["source"], r["destination"]) for r in rows} == set(want)
    for r in rows:
        w = want[(r["source"], r["destination"])]
        assert (r["allowed"], r["denied"], r["packets"], r["bytes"], r["last_seen"]) == \
            (w["allowed"], w["denied"], w["packets"], w["bytes"], w["last_seen"]), (text, r["source"])
        services, logged, policies = details[(r["source"], r["destination"])]
        assert (services, logged, policies) == (w["services"], w.get("logged", 0), w.get("policies", "")), text
    packets = [r["packets"] for r in rows]
    assert packets == sorted(packets, reverse=True)


@pytest.mark.parametrize("text", STREAM_FILTERS)
def test_a_filter_on_what_pairs_do_not_know_reads_the_stream(store: Path, text: str) -> None:
    where = compile_filter(text).where
    src = StoreSource(store)
    try:
        rows = src.conversations(where, limit=10_000)
        want = src.query(queries.conversations_sql(src.stream_kind, where, 10_000)).to_pylist()
    finally:
        src.close()
    assert rows == want and rows and not any("_ids" in r for r in rows)


def test_policy_hits_from_the_rollups_equal_the_flows(store: Path) -> None:
    src = StoreSource(store)
    try:
        relations = src.relations()
        assert {"rule_hits_all", "has_flows"} <= relations
        fast = src.query(queries.rule_activity_sql(src.stream_kind, relations)).to_pylist()
        raw = src.query(queries.rule_activity_sql(src.stream_kind)).to_pylist()
        plan = src.query("EXPLAIN " + queries.rule_activity_sql(src.stream_kind, relations)).to_pylist()
    finally:
        src.close()
    assert sorted(fast, key=lambda r: r["rule_id"]) == sorted(raw, key=lambda r: r["rule_id"])
    assert "rule_hours" in str(plan)


def _keys(table: Any) -> dict[tuple[Any, ...], Any]:
    """Flow key -> its newest time, from a reduced first page."""
    out: dict[tuple[Any, ...], Any] = {}
    for r in table.to_pylist():
        k = tuple(r[c] for c in KEY)
        out[k] = max(out.get(k, r["last_seen"]), r["last_seen"])
    return out


@pytest.mark.parametrize("text", ["", "verdict:deny", "ns:ns2", "node:node-b policy:p1"])
def test_flows_first_page_from_a_window_holds_the_newest_flows(
        store: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    where = compile_filter(text).where
    limit = 15
    src = StoreSource(store)
    spans: list[str | None] = []
    real = queries.flows_view_sql

    def spy(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
        spans.append(since)
        return real(kind, where, limit, since)

    monkeypatch.setattr(sources, "FIRST_SPAN", timedelta(minutes=1))
    monkeypatch.setattr(queries, "flows_view_sql", spy)
    try:
        page = src.recent_flows(where, limit)
        whole = src.query(real(src.stream_kind, where, limit))
        events_page = src.recent(where, limit)
        events_whole = src.query(queries.recent_sql(src.stream_kind, where, limit))
    finally:
        src.close()
    assert spans and spans[0] is not None  # it started with a window, not the whole store
    got, want = _keys(page), _keys(whole)
    newest = sorted(want.values(), reverse=True)
    # the same newest flows (a tie at the page's edge may pick either)
    assert {k for k, t in got.items() if t > newest[-1]} == {k for k, t in want.items() if t > newest[-1]}
    assert len(got) == len(want) == limit
    cols = ["time", *KEY]
    got_rows, want_rows = events_page.select(cols).to_pylist(), events_whole.select(cols).to_pylist()
    assert [r["time"] for r in got_rows] == [r["time"] for r in want_rows] and len(got_rows) == limit
    edge = want_rows[0]["time"]  # rows of the same time at the edge: either
    assert sorted(map(repr, (r for r in got_rows if r["time"] > edge))) == \
        sorted(map(repr, (r for r in want_rows if r["time"] > edge)))


# Endpoint filters: the first three keep no row (no such endpoint), the others keep some or none.
ENDPOINT_FILTERS = ["pod:ns1/none", "to-pod:ns1/pod2 verdict:deny", "label:app=web", "ns:ns2", "pod:ns2/pod2",
                    "from:ns1/pod4 verdict:deny", "type:wep node:node-a", "-ns:ns0", "!pod:ns1/none"]


def _rows(table: Any, time: str, limit: int) -> tuple[list[str], int, list[str]]:
    """Columns, row count and rows, in any order, a flow's `ports` as a set (DuckDB lists DISTINCT
    values in any order); of a full page, the rows at its oldest `time` may be any of a tie."""
    rows = [{**r, "ports": sorted(r["ports"])} if r.get("ports") else r for r in table.to_pylist()]
    edge = min((r[time] for r in rows), default=None) if len({r[time] for r in rows}) > 1 else None
    kept = [r for r in rows if edge is None or r[time] > edge] if table.num_rows >= limit else rows
    return table.schema.names, len(rows), sorted(map(repr, kept))


@pytest.mark.parametrize("text", ENDPOINT_FILTERS)
def test_endpoint_needs_leave_the_first_page_unchanged(store: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page with the filter's `endpoint_needs` is the page without them (the widening scan),
    row for row, for flows and stream rows alike, whether the filter keeps rows or none."""
    f = compile_filter(text)
    monkeypatch.setattr(sources, "FIRST_SPAN", timedelta(minutes=1))
    src = StoreSource(store)
    try:
        for limit in (5, 200):
            flows = [src.recent_flows(f.where, limit, needs) for needs in (f.endpoint_needs, ())]
            assert _rows(flows[0], "last_seen", limit) == _rows(flows[1], "last_seen", limit)
            rows = [src.recent(f.where, limit, needs) for needs in (f.endpoint_needs, ())]
            assert _rows(rows[0], "time", limit) == _rows(rows[1], "time", limit)
    finally:
        src.close()


@pytest.mark.parametrize("text", ENDPOINT_FILTERS[:3])
def test_a_filter_no_endpoint_meets_reads_no_flows(store: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint meets the filter: the answer (empty, shaped as ever) comes from the endpoints
    table; the one query over the stream has `WHERE false`, which DuckDB answers without a scan,
    where the widening scan would read every window back to the whole store (issue 15: 0.9-2 s at
    10M rows)."""
    f = compile_filter(text)
    assert f.endpoint_needs
    seen: list[tuple[str | None, str | None]] = []
    real_flows, real_recent = queries.flows_view_sql, queries.recent_sql

    def spy_flows(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
        seen.append((where, since))
        return real_flows(kind, where, limit, since)

    def spy_recent(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
        seen.append((where, since))
        return real_recent(kind, where, limit, since)

    monkeypatch.setattr(sources, "FIRST_SPAN", timedelta(minutes=1))
    src = StoreSource(store)
    try:
        want_flows, want_rows = src.recent_flows(f.where, 50), src.recent(f.where, 50)
        monkeypatch.setattr(queries, "flows_view_sql", spy_flows)
        monkeypatch.setattr(queries, "recent_sql", spy_recent)
        got_flows = src.recent_flows(f.where, 50, f.endpoint_needs)
        got_rows = src.recent(f.where, 50, f.endpoint_needs)
    finally:
        src.close()
    assert want_flows.num_rows == want_rows.num_rows == 0
    assert got_flows == want_flows and got_rows == want_rows  # same (empty) tables, same columns
    assert seen == [("false", None), ("false", None)]


def test_endpoint_terms_reach_the_flows_as_ids(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ns:ns2` reads the flow rows with an end among ns2's endpoint ids (integers on the flows
    table, before any join), then the filter as written."""
    f = compile_filter("ns:ns2")
    seen: list[str | None] = []
    real = queries.flows_view_sql

    def spy(kind: str, where: str | None, limit: int, since: str | None = None) -> str:
        seen.append(where)
        return real(kind, where, limit, since)

    monkeypatch.setattr(queries, "flows_view_sql", spy)
    src = StoreSource(store)
    try:
        assert src.stream_kind == "flows"
        ns2 = src.query("SELECT id FROM endpoints WHERE namespace = 'ns2' ORDER BY id").to_pylist()
        ids = [int(r["id"]) for r in ns2]
        src.recent_flows(f.where, 10, f.endpoint_needs)
    finally:
        src.close()
    listed = ", ".join(map(str, ids))
    assert ids and seen and all(w == f"(_src_ep IN ({listed}) OR _dst_ep IN ({listed})) AND ({f.where})" for w in seen)
