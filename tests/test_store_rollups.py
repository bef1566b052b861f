"""The rollups give the raw flows' answers: random stores, random write orders, random windows.

Each seed builds a store the way writers do (batches through `DuckStore.insert`, late batches
for hours already rolled up, `roll_up` at random points, retention), then compares the
`flow_pairs` view and the queries that read it with the straightforward SQL over `flows_once`.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flowtui.interop.parquet import export_parquet
from flowtui.query.library import REPO_QUERIES, discover
from flowtui.query.run import open_source, run_sql
from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore, Retention

T0 = datetime(2026, 3, 14, 9, 0, 0)
KEYS = "src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied"
# The oracle: every flows_once row on its own, no rollup.
RAW_PAIRS = (
    "(SELECT src_ep, CASE WHEN src_ep IS NULL THEN src_ip END AS src_ip, dst_ep, "
    "CASE WHEN dst_ep IS NULL THEN dst_ip END AS dst_ip, proto, dport, denied, 1 AS flows, connections, packets, "
    "bytes, reply_packets, reply_bytes, first_seen, last_seen FROM flows_once)"
)
SUMS = (
    "sum(flows), sum(connections), sum(packets), sum(bytes), sum(reply_packets), sum(reply_bytes), "
    "min(first_seen), max(last_seen)"
)
RULES = [  # id, direction, action
    (1, "egress", "Allow"),
    (2, "ingress", "Allow"),
    (3, "ingress", "Deny"),
    (4, "egress", "Deny"),
    (5, "ingress", "Log"),
]


def rule_rows() -> list[dict[str, Any]]:
    return [
        {"id": i, "kind": "GlobalNetworkPolicy", "name": f"p{i}", "tier": "default", "revision": 1,
         "direction": d, "rule": 0, "action": a, "prefix": f"ft:{a[0]}{i}", "policy": f"0|default|gnp:p{i}|{a}|0"}
        for i, d, a in RULES
    ]


def endpoint_rows() -> list[dict[str, Any]]:
    return [
        {"id": i, "revision": 1, "type": "wep", "namespace": f"ns{i % 3}", "name": f"pod{i}", "node": "n",
         "labels": [], "addresses": [f"10.0.0.{i}"]}
        for i in range(1, 9)
    ]


def random_flows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Flow rows over 5 hours: one or both reporters per flow, partial rows, conntrack rows."""
    out = []
    for _ in range(n):
        bucket = T0 + timedelta(seconds=15 * rng.randrange(0, 5 * 240))
        src, dst = rng.randrange(1, 12), rng.randrange(1, 12)  # 9..11: unknown addresses
        key = {
            "proto": rng.choice([6, 17]),
            "src_ip": f"10.0.0.{src}",
            "dst_ip": f"10.0.0.{dst}",
            "sport": rng.randrange(1000, 1010),
            "dport": rng.choice([80, 443, None]),
            "src_ep": src if src < 9 else None,
            "dst_ep": dst if dst < 9 else None,
        }
        for rule_id, _direction, action in rng.sample(RULES, rng.randrange(1, 3)):
            for _part in range(rng.randrange(1, 3)):
                events = rng.randrange(1, 20)
                conntrack = action == "Allow" and rng.random() < 0.3
                first = bucket + timedelta(seconds=rng.randrange(0, 15))
                out.append({
                    "start_time": bucket, "end_time": bucket + timedelta(seconds=15),
                    "source_id": 1 + rule_id % 2, "action": action, "rule_id": rule_id,
                    "prefix": f"ft:{action[0]}{rule_id}", **key,
                    "events": 0 if conntrack else events,
                    "packets": events if conntrack or action != "Allow" else 0,
                    "bytes": 60 * events, "reply_packets": events if conntrack else 0,
                    "reply_bytes": 50 * events if conntrack else 0,
                    "connections_started": 0 if conntrack else (events if action == "Allow" else 0),
                    "connections_completed": 1 if conntrack else 0, "tcp_flags": 2,
                    "first_seen": first, "last_seen": first + timedelta(milliseconds=rng.randrange(0, 900)),
                    "count_source": "conntrack" if conntrack else "nflog",
                })
    return out


def insert(store: DuckStore, rows: list[dict[str, Any]]) -> None:
    t = schema.FLOWS.arrow_schema
    store.insert("flows", pa.Table.from_pylist([{c: r.get(c) for c in t.names} for r in rows], schema=t))


def pairs(store: DuckStore, source: str, params: dict[str, str]) -> list[tuple[Any, ...]]:
    return sorted(
        run_sql(store.con, f"SELECT {KEYS}, {SUMS} FROM {source} GROUP BY ALL", params).to_pylist(),
        key=lambda r: repr(sorted(r.items())),
    )


WINDOWS: list[dict[str, str]] = [
    {},
    {"since": "2026-03-14 10:17:33"},  # mid-hour: the partial hour from raw flows
    {"since": "2026-03-14 10:00:00", "until": "2026-03-14 13:00:00"},  # whole hours only
    {"since": "2026-03-14 09:59:59", "until": "2026-03-14 12:00:01"},
    {"since": "3h"},  # a duration back from now (the end of the latest bucket)
    {"until": "2026-03-14 11:30:00"},
]


@pytest.mark.parametrize("seed", range(5))
def test_flow_pairs_and_its_queries_equal_the_raw_flows(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        store.insert_rows("rules", rule_rows())
        store.insert_rows("endpoints", endpoint_rows())
        rows = random_flows(rng, 400)
        rows.sort(key=lambda r: r["start_time"])
        late = [r for r in rows if rng.random() < 0.1]  # written after their hour was rolled up
        rows = [r for r in rows if r not in late]
        for i in range(0, len(rows), 97):
            insert(store, rows[i : i + 97])
            if rng.random() < 0.5:
                store.roll_up(rows[min(i + 96, len(rows) - 1)]["start_time"], max_hours=rng.choice([1, 2, None]))
        store.roll_up(T0 + timedelta(hours=4))  # the last hour stays raw
        assert store.rolled_until() == T0 + timedelta(hours=4)
        insert(store, late)
        assert store.rolled_until() == min(r["start_time"] for r in late).replace(minute=0, second=0)
        store.roll_up(T0 + timedelta(hours=rng.choice([2, 3, 4])))
        assert int(store.query("SELECT count(*) FROM pair_hours")[0][0]) > 0
        for params in WINDOWS:
            assert pairs(store, "flow_pairs", params) == pairs(store, RAW_PAIRS, params), params
        queries = discover([REPO_QUERIES])
        for name in ("conversations", "flows_per_namespace_pair"):
            sql = queries[name].sql
            assert "FROM flow_pairs" in sql
            for params in [*WINDOWS[:3], {"namespace": "ns1", "rows": "500"}]:
                params = {k: v for k, v in params.items() if queries[name].param(k) is not None}
                got = run_sql(store.con, sql, params).to_pylist()
                want = run_sql(store.con, sql.replace("FROM flow_pairs", f"FROM {RAW_PAIRS}"), params).to_pylist()
                assert got == want and got, (name, params)
        # retention drops whole hours of flows with their rollup rows: still the same answers
        deleted = store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None,
                                         rollups=timedelta(hours=2)),
                               now=T0 + timedelta(hours=3, minutes=40))
        assert deleted > 0
        cut = T0 + timedelta(hours=1)
        assert store.query("SELECT min(start_time) >= ?, (SELECT min(hour) FROM pair_hours) FROM flows", [cut]) == [
            (True, cut)]
        for params in WINDOWS[:3]:
            assert pairs(store, "flow_pairs", params) == pairs(store, RAW_PAIRS, params), params
    finally:
        store.close(snapshot=False)


def test_roll_up_rebuilds_from_the_raw_flows_and_reports_what_it_did(tmp_path: Path) -> None:
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        assert store.roll_up() == 0 and store.rolled_until() is None  # no flows, nothing to do
        store.insert_rows("rules", rule_rows())
        insert(store, random_flows(random.Random(7), 200))
        assert store.roll_up(T0 + timedelta(hours=2)) == 2
        assert store.roll_up(T0 + timedelta(hours=2, minutes=59)) == 0  # only whole hours
        assert store.roll_up() == 3 and store.rolled_until() == T0 + timedelta(hours=5)
        before = store.query("SELECT * FROM pair_hours ORDER BY ALL")
        store.query("DELETE FROM pair_hours")  # lost or damaged: rebuilt from the flows
        store.query("DELETE FROM rollup_state")
        assert store.roll_up() == 5
        assert store.query("SELECT * FROM pair_hours ORDER BY ALL") == before
    finally:
        store.close(snapshot=False)


def test_a_reader_of_a_store_older_than_a_rollup_column_gets_the_same_answers(tmp_path: Path) -> None:
    """A store whose rollup_state predates `days_until` (a writer adds it in place, a reader
    cannot): read-only, every named query runs and answers what the upgraded store does."""
    db = tmp_path / "f.duckdb"
    store = DuckStore(db, snapshot_interval=None)
    try:
        store.insert_rows("rules", rule_rows())
        insert(store, random_flows(random.Random(11), 300))
        store.roll_up()
    finally:
        store.close(snapshot=False)
    queries = discover([REPO_QUERIES])

    def answers() -> dict[str, list[Any]]:
        with open_source(db) as source:
            return {n: sorted(run_sql(source.con, q.sql, {"rows": "1000"}, tuple(p.name for p in q.params)
                                      ).to_pylist(), key=repr) for n, q in queries.items()}

    upgraded = answers()
    import duckdb

    con = duckdb.connect(str(db))
    try:
        con.execute("ALTER TABLE rollup_state DROP COLUMN days_until")
    finally:
        con.close()
    assert answers() == upgraded
    assert len(upgraded) == len(queries) and any(upgraded.values())


# The named queries that read rollups (or aggregate in stages) against their straightforward SQL over
# the raw flows, kept in tests/data/raw_queries/ as they were before the rollups.
RAW_QUERIES = Path(__file__).parent / "data" / "raw_queries"
KIND_RULES = [  # id, kind, direction, action: every kind the queries single out
    (1, "GlobalNetworkPolicy", "egress", "Allow"),
    (2, "NetworkPolicy", "ingress", "Allow"),
    (3, "NetworkPolicy", "ingress", "Deny"),
    (4, "EndOfTier", "egress", "Deny"),
    (5, "Profile", "ingress", "Allow"),
    (6, "NoProfileMatch", "egress", "Deny"),
    (7, "Default", "ingress", "Deny"),
    (8, "Default", "egress", "Allow"),
    (9, "GlobalNetworkPolicy", "ingress", "Log"),
]
NAMED_PARAMS: dict[str, list[dict[str, str]]] = {
    "new_talkers": [{"minutes": "60"}, {"minutes": "400"},
                    {"minutes": "90", "now": "2026-03-14 12:10:00"}, {"minutes": "45", "namespace": "ns1"}],
    "top_denied": [{}, {"since": "2026-03-14 10:17:33"}, {"namespace": "ns2"}],
    "default_deny_attributions": [{}, {"since": "2h"}, {"namespace": "ns0"}],
    "denylisted_traffic": [{}, {"action": "any"}, {"netset": "bad-%", "until": "2026-03-14 12:00:00"}],
    "hits_per_policy_rule": [{}, {"since": "2026-03-14 10:17:33"}, {"since": "2026-03-14 10:00:00",
                             "until": "2026-03-14 12:00:01"}, {"since": "2h", "namespace": "ns1"}],
    "unused_rules": [{}, {"since": "2026-03-14 11:00:00"}, {"since": "90m"}, {"since": "10h"}],
    "allowed_by_profile_only": [{}, {"since": "2026-03-14 10:00:00", "until": "2026-03-14 12:30:00"},
                                {"namespace": "ns1"}],
}


def kind_rule_rows() -> list[dict[str, Any]]:
    return [
        {"id": i, "kind": k, "namespace": "ns1" if k == "NetworkPolicy" else None, "name": f"p{i}",
         "tier": None if k in ("Profile", "NoProfileMatch", "Default") else "default", "revision": 1,
         "direction": d, "rule": -1 if k in ("EndOfTier", "NoProfileMatch", "Default") else 0, "action": a,
         "trigger_kind": "GlobalNetworkPolicy" if k == "EndOfTier" else None, "prefix": f"ft:{a[0]}{i}",
         "policy": f"0|default|{k}:p{i}|{a.lower()}|0"}
        for i, k, d, a in [*KIND_RULES, (10, "GlobalNetworkPolicy", "ingress", "Allow")]  # 10: never hit
    ]


def named_and_raw(con: Any, queries: dict[str, Any], name: str, params: dict[str, str]
                  ) -> tuple[list[Any], list[Any]]:
    """A named query's rows and its straightforward SQL's over the raw flows, each sorted (every
    row: ties in ORDER BY may come in any order)."""
    params = {"rows": "100000", **params}
    reset = tuple(p.name for p in queries[name].params)  # the previous call's variables
    raw = (RAW_QUERIES / f"{name}.sql").read_text()
    return (sorted(run_sql(con, queries[name].sql, params, reset).to_pylist(), key=repr),
            sorted(run_sql(con, raw, params, reset).to_pylist(), key=repr))


@pytest.mark.parametrize("seed", range(4))
def test_every_named_query_equals_its_straightforward_sql(tmp_path: Path, seed: int) -> None:
    rng = random.Random(100 + seed)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        store.insert_rows("rules", kind_rule_rows())
        netsets = [{"id": 20 + j, "revision": 1, "type": "netset", "namespace": None, "name": f"bad-{j}",
                    "node": None, "labels": [], "addresses": [cidr]}
                   for j, cidr in enumerate(("10.0.0.8/30", "10.0.0.3/32"))]
        store.insert_rows("endpoints", endpoint_rows() + netsets)
        rows = random_flows(rng, 500)
        for r in rows:  # the kinds above instead of the five plain rules
            rule_id, _kind, _direction, action = rng.choice(KIND_RULES)
            r.update(rule_id=rule_id, action=action, prefix=f"ft:{action[0]}{rule_id}")
            if rng.random() < 0.05:
                r["first_seen"] = None  # talkers fall back to the bucket's start and end
                r["last_seen"] = None
        rows.sort(key=lambda r: r["start_time"])
        late = [r for r in rows if rng.random() < 0.1]
        rows = [r for r in rows if r not in late]
        for i in range(0, len(rows), 89):
            insert(store, rows[i : i + 89])
            if rng.random() < 0.5:
                store.roll_up(rows[min(i + 88, len(rows) - 1)]["start_time"], max_hours=rng.choice([1, 2, None]))
        insert(store, late)
        store.roll_up(T0 + timedelta(hours=rng.choice([2, 3, 4])))
        assert int(store.query("SELECT count(*) FROM talkers")[0][0]) > 0
        assert int(store.query("SELECT count(*) FROM rule_hours")[0][0]) > 0
        queries = discover([REPO_QUERIES])

        def compare(stage: str, con: Any = None) -> None:
            con = con or store.con
            for name, param_sets in NAMED_PARAMS.items():
                nonempty = 0
                for params in param_sets:
                    got, want = named_and_raw(con, queries, name, params)
                    assert got == want, (stage, name, {"rows": "100000", **params})
                    nonempty += bool(got)
                assert nonempty, (stage, name, "every answer empty: the comparison would prove nothing")

        compare("rolled up")  # an hour or more of raw flows after the totals: the raw sums
        assert_totals_exact(store)
        store.roll_up()  # every hour: the totals answer alone
        assert_totals_exact(store)
        assert store.query("SELECT count(*) FROM rule_flows") == store.query("SELECT count(*) FROM flow_totals")
        compare("all rolled up")
        for r in schema.HOUR_ROLLUPS:
            assert_hours_exact(store, r)
        early = [dict(r, start_time=T0, end_time=T0 + timedelta(seconds=15)) for r in rng.sample(rows, 40)]
        insert(store, early)  # late flows for hours the totals hold: merged in as they are written
        assert_totals_exact(store)
        compare("late flows merged")
        export_parquet(store.con, tmp_path / "export")  # an export of then: no talkers, no rule_hours, ...
        for gone in ("talkers", "rule_hours", "netset_sources",
                     *(t.name for r in schema.HOUR_ROLLUPS for t in (r.hours, r.totals))):
            (tmp_path / "export" / f"{gone}.parquet").unlink()
        with open_source(tmp_path / "export") as source:  # computed from the export's flows
            compare("export without them", source.con)
        deleted = store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None,
                                         rollups=timedelta(hours=2)),
                               now=T0 + timedelta(hours=3, minutes=40))
        assert deleted > 0
        assert_totals_exact(store)  # the keys of the deleted flows summed again from the flows that stay
        compare("after retention")
        # a store rolled up before `talkers` existed: the writer that opens it builds it once; before
        # the totals (the layout of the previous release): built once too
        store.query("DROP TABLE talkers")
        store.query("DROP TABLE rule_hours")
        for gone in ("flow_totals", "pair_totals", "totals_state"):
            store.query(f"DROP TABLE {gone}")
        for r in schema.HOUR_ROLLUPS:  # the layout before them: built once by the writer that opens it
            store.query(f"DROP VIEW {r.view}")
            store.query(f"DROP TABLE {r.hours.name}")
            store.query(f"DROP TABLE {r.totals.name}")
        store.query("DROP TABLE netset_sources")
        store.close(snapshot=False)
        with open_source(tmp_path / "f.duckdb") as source:  # a reader does not upgrade: it computes them
            compare("read as it was", source.con)
        store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
        assert store.query("SELECT flows_until, pairs_until FROM totals_state") == store.query(
            "SELECT rolled_until, rolled_until FROM rollup_state")  # built for the rolled-up hours
        assert_totals_exact(store, allow_empty=True)  # (the late flows moved them back to the first hour)
        for r in schema.HOUR_ROLLUPS:  # each hour as the raw flows make it
            assert_hours_exact(store, r)
        compare("upgraded")
        store.roll_up()
        assert_totals_exact(store)
        compare("upgraded and rolled up")
        for r in schema.HOUR_ROLLUPS:
            assert store.query(f"SELECT count(*) FROM {r.totals.name}")[0][0] > 0, r.totals.name
            assert_hours_exact(store, r)
    finally:
        store.close(snapshot=False)


def assert_hours_exact(store: DuckStore, r: schema.HourRollup) -> None:
    """The rolled-up hours of `r` (merged per key: fold and compaction may leave partial rows) equal
    its rows made from the raw flows of those hours, and its totals the hours summed."""
    (rolled,), = store.query("SELECT max(rolled_until) FROM rollup_state")
    (pairs_until,), = store.query("SELECT max(pairs_until) FROM totals_state")
    hours = r.merged(f"(SELECT * FROM {r.hours.name} WHERE hour < TIMESTAMP '{rolled}')")
    raw = r.merged("(" + r.rows_sql(f"f.start_time < TIMESTAMP '{rolled}'") + ")")
    have = store.query(f"SELECT * FROM ({hours}) ORDER BY ALL")
    want = store.query(f"SELECT * FROM ({raw}) ORDER BY ALL")
    assert have == want
    if pairs_until is not None:
        have = store.query(f"SELECT * FROM {r.totals.name} ORDER BY ALL")
        hours = f"(SELECT * FROM {r.hours.name} WHERE hour < TIMESTAMP '{pairs_until}')"
        want = store.query(f"SELECT * FROM ({r.merged(hours, with_hour=False)}) ORDER BY ALL")
        assert have == want


def assert_totals_exact(store: DuckStore, allow_empty: bool = False) -> None:
    """`flow_totals` and `pair_totals` hold exactly what their definitions say, however they were kept
    (merged hour by hour, late flows merged in, keys recounted after retention, built at upgrade)."""
    (flows_until, pairs_until), = store.query("SELECT flows_until, pairs_until FROM totals_state")
    cols = ", ".join(c.name if c.name != "sports" else "list_sort(sports) AS sports"
                     for c in schema.FLOW_TOTALS.columns)
    have = store.query(f"SELECT {cols} FROM flow_totals ORDER BY ALL")
    before = f"start_time < TIMESTAMP '{flows_until}'"
    want = store.query(f"SELECT {cols} FROM ({schema.flow_totals_sql(before)}) ORDER BY ALL")
    assert have == want and (have or allow_empty)
    sums = "sum(flows), sum(connections), sum(packets), sum(bytes), sum(reply_packets), sum(reply_bytes)"
    have = store.query(f"SELECT {KEYS}, {sums}, min(first_seen), max(last_seen) FROM pair_totals GROUP BY ALL "
                       "ORDER BY ALL")
    want = store.query(f"SELECT {KEYS}, {sums}, min(first_seen), max(last_seen) FROM pair_hours WHERE hour < ? "
                       "GROUP BY ALL ORDER BY ALL", [pairs_until])
    assert have == want
    assert store.query("SELECT count(*) FROM pair_totals") == store.query(
        f"SELECT count(*) FROM (SELECT DISTINCT {KEYS} FROM pair_totals)")  # one row per pair


def test_retention_compacts_old_hours_into_their_rollups(tmp_path: Path) -> None:
    """Raw flows go after `flows`, their hourly rollups stay until `rollups`: the named queries that
    read rollups give the same answers for the compacted hours as when the raw flows were there."""
    rng = random.Random(42)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        store.insert_rows("rules", kind_rule_rows())
        store.insert_rows("endpoints", endpoint_rows())
        rows = random_flows(rng, 400)
        for r in rows:
            rule_id, _kind, _direction, action = rng.choice(KIND_RULES)
            r.update(rule_id=rule_id, action=action, prefix=f"ft:{action[0]}{rule_id}")
        insert(store, rows)
        store.roll_up(T0 + timedelta(hours=2))  # some of the hours to delete are not rolled up yet
        queries = discover([REPO_QUERIES])
        asked = [("conversations", {}), ("flows_per_namespace_pair", {}), ("hits_per_policy_rule", {}),
                 ("hits_per_policy_rule", {"since": "2026-03-14 09:00:00", "until": "2026-03-14 12:00:00"}),
                 ("unused_rules", {"since": "2026-03-14 12:00:00"}), ("conversations", {"namespace": "ns2"})]

        def answers() -> list[list[dict[str, Any]]]:
            return [run_sql(store.con, queries[n].sql, {"rows": "100000", **p},
                            tuple(q.name for q in queries[n].params)).to_pylist() for n, p in asked]

        before = answers()
        assert all(before)
        pairs_before = pairs(store, "flow_pairs", {})
        early_before = pairs(store, "flow_pairs", {"until": "2026-03-14 11:00:00"})
        deleted = store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None,
                                         rollups=None), now=T0 + timedelta(hours=4, minutes=40))
        cut = T0 + timedelta(hours=2)
        assert deleted > 0 and store.query("SELECT min(start_time) >= ? FROM flows", [cut]) == [(True,)]
        assert store.compacted_until() == cut and store.rolled_until() is not None and store.rolled_until() >= cut
        assert answers() == before  # the compacted hours answer from their rollups
        assert pairs(store, "flow_pairs", {}) == pairs_before
        # flows written later for a compacted hour do not unroll it (its raw flows are gone)
        rolled = store.rolled_until()
        insert(store, [dict(rows[0], start_time=T0, end_time=T0 + timedelta(seconds=15))])
        assert store.rolled_until() == rolled
        assert store.roll_up() > 0  # the last hour
        assert pairs(store, "flow_pairs", {"until": "2026-03-14 11:00:00"}) == early_before  # compacted: as it was
        # and the rollups go when their own retention says so, with the talkers not seen since
        store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None,
                               rollups=timedelta(hours=3, minutes=30)), now=T0 + timedelta(hours=4, minutes=40))
        assert store.query("SELECT min(hour) FROM pair_hours UNION ALL SELECT min(hour) FROM rule_hours") == [
            (T0 + timedelta(hours=1),), (T0 + timedelta(hours=1),)]
        assert store.query("SELECT count(*) FROM talkers WHERE last_seen < ?", [T0 + timedelta(hours=1)]) == [(0,)]
    finally:
        store.close(snapshot=False)


def test_retention_compacts_old_hours_into_days_with_the_same_whole_day_answers(tmp_path: Path) -> None:
    """Hours older than `Retention.hourly` become one rollup row per key and day: every named query gives
    the answers it gave before for windows of whole days, nothing counted twice; a window boundary
    inside a compacted day counts the whole day; loss accounting and raw flows are untouched."""
    rng = random.Random(7)
    day0 = T0.replace(hour=0)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        store.insert_rows("rules", kind_rule_rows())
        netsets = [{"id": 20, "revision": 1, "type": "netset", "namespace": None, "name": "bad-0", "node": None,
                    "labels": [], "addresses": ["10.0.0.8/30"]}]
        store.insert_rows("endpoints", endpoint_rows() + netsets)
        rows = random_flows(rng, 600)
        for r in rows:  # spread over four days, whole hours apart (buckets stay inside their hour)
            rule_id, _kind, _direction, action = rng.choice(KIND_RULES)
            shift = timedelta(days=rng.randrange(4), hours=rng.randrange(-9, 10))
            r.update(rule_id=rule_id, action=action, prefix=f"ft:{action[0]}{rule_id}",
                     **{k: r[k] + shift for k in ("start_time", "end_time", "first_seen", "last_seen")})
        rows.sort(key=lambda r: r["start_time"])
        for i in range(0, len(rows), 150):
            insert(store, rows[i : i + 150])
        store.insert_rows("loss", [{"time": day0 + timedelta(days=d, hours=3), "run_id": 1, "source_id": 1,
                                    "cause": "rcvbuf_overrun", "events": 5 * d, "detail": "test"}
                                   for d in range(4)])
        store.roll_up()
        queries = discover([REPO_QUERIES])
        days = [f"{(day0 + timedelta(days=d)).isoformat(sep=' ')}" for d in range(5)]
        windows = [{}, {"since": days[0], "until": days[2]}, {"since": days[1]}, {"until": days[2]},
                   {"since": days[1], "until": days[3]}, {"since": days[2], "until": days[3]}]
        asked = [(n, w) for n in ("conversations", "flows_per_namespace_pair", "hits_per_policy_rule",
                                  "top_denied", "default_deny_attributions", "denylisted_traffic",
                                  "allowed_by_profile_only") for w in windows]
        asked += [("unused_rules", {}), ("unused_rules", {"since": days[2]}), ("loss_report", {}),
                  ("new_talkers", {"minutes": "2000"})]

        def answers() -> list[list[dict[str, Any]]]:
            return [sorted(run_sql(store.con, queries[n].sql, {"rows": "100000", **p},
                                   tuple(q.name for q in queries[n].params)).to_pylist(), key=repr)
                    for n, p in asked]

        def sums(table: str) -> list[tuple[Any, ...]]:
            return store.query(f"SELECT date_trunc('day', hour), sum(flows), sum(packets), sum(bytes), "
                               f"min(first_seen), max(last_seen) FROM {table} GROUP BY 1 ORDER BY 1")

        before, pair_sums = answers(), sums("pair_hours")
        # the comparison proves something: every query answers something for some window
        assert {n for (n, _w), a in zip(asked, before, strict=True) if a} == {n for n, _w in asked}
        hourly_rows = store.query("SELECT count(*) FROM pair_hours")[0][0]
        pairs_by_day = pairs(store, "flow_pairs", {"since": days[1], "until": days[2]})
        first_day = pairs(store, "flow_pairs", {"since": days[0], "until": days[1]})
        now = store.rolled_until()
        assert now is not None
        flows_before = store.query("SELECT count(*) FROM flows")
        store.retain(Retention(events=None, flows=None, connections=None, counters=None, rollups=None,
                               hourly=timedelta(hours=48)), now=now)
        cut = (now - timedelta(hours=48)).replace(hour=0)
        assert store.days_until() == cut and cut >= day0 + timedelta(days=1)
        assert store.stats.days_compacted == (cut - day0).days
        # one row per key and day before the cut, hours after it, and the sums of each day unchanged
        assert store.query("SELECT count(*) FROM pair_hours WHERE hour < ? AND hour <> date_trunc('day', hour)",
                           [cut]) == [(0,)]
        assert store.query(f"SELECT count(*) FROM (SELECT hour, {KEYS} FROM pair_hours GROUP BY ALL "
                           "HAVING count(*) > 1)") == [(0,)]
        assert store.query("SELECT count(*) FROM pair_hours")[0][0] < hourly_rows
        assert sums("pair_hours") == pair_sums
        assert store.query("SELECT count(*) FROM flows") == flows_before  # the raw flows stay (flows=None)
        assert answers() == before
        assert pairs(store, "flow_pairs", {"since": days[1], "until": days[2]}) == pairs_by_day
        # a window that starts or ends inside a compacted day counts that day whole
        inside = {"since": f"{days[0][:10]} 07:30:00", "until": f"{days[0][:10]} 13:00:00"}
        assert first_day and pairs(store, "flow_pairs", inside) == first_day
        assert pairs(store, RAW_PAIRS, inside) != first_day  # the raw flows of those hours only: fewer
        # compacting again changes nothing; flows written later for a compacted day stay raw (the hours
        # after the compacted days are rolled up again, the days are not)
        assert store.compact_days(now - timedelta(hours=48)) == 0
        insert(store, [dict(rows[0], start_time=day0 + timedelta(hours=1), end_time=day0 + timedelta(hours=1,
                                                                                                 seconds=15))])
        assert store.rolled_until() == cut
        store.roll_up()
        assert store.days_until() == cut and sums("pair_hours") == pair_sums
        assert pairs(store, "flow_pairs", {"since": days[1], "until": days[2]}) == pairs_by_day
        # raw flows past their retention go; the day rows stay and still answer
        store.retain(Retention(events=None, flows=timedelta(hours=30), connections=None, counters=None,
                               rollups=None), now=now)
        assert store.query("SELECT min(start_time) >= ? FROM flows", [cut]) == [(True,)]
        assert pairs(store, "flow_pairs", {"since": days[1], "until": days[2]}) == pairs_by_day
        # rollups past theirs go by whole compacted days (a cut inside one keeps it), by hours after them
        for rollup_cut, first_left in ((day0 + timedelta(hours=6), day0),
                                       (day0 + timedelta(days=1, hours=6), day0 + timedelta(days=1, hours=6))):
            assert first_left == day0 or first_left >= cut  # (day 1 is hourly: after the compacted days)
            store.retain(Retention(events=None, flows=timedelta(hours=30), connections=None, counters=None,
                                   rollups=now - rollup_cut), now=now)
            assert store.query("SELECT min(hour) FROM pair_hours UNION ALL SELECT min(hour) FROM rule_hours") == [
                (first_left,), (first_left,)]
        assert_totals_exact(store)
    finally:
        store.close(snapshot=False)
