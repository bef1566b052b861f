"""Roll-again paths: what a rollup depends on, written after the flows it concerns.

A flow's rule may be written after the flow (an id resolved later: another machine compiled it), and
a network set's members may become known after their flows. The rollups of the hours already rolled
up (and of days already compacted) must then end with the answers the raw flows give: every named
query against its straightforward SQL, every rollup row against the same rows made from the raw flows.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flowtui.query.library import REPO_QUERIES, discover
from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore, Retention
from tests.test_store_rollups import (
    KIND_RULES,
    NAMED_PARAMS,
    RAW_PAIRS,
    T0,
    assert_totals_exact,
    endpoint_rows,
    insert,
    kind_rule_rows,
    named_and_raw,
    pairs,
    random_flows,
)

NETSETS = [{"id": 20 + j, "revision": 2, "type": "netset", "namespace": None, "name": f"bad-{j}", "node": None,
            "labels": [], "addresses": [cidr]} for j, cidr in enumerate(("10.0.0.8/30", "10.0.0.3/32"))]
DAY0 = T0.replace(hour=0)
DAYS = [(DAY0 + timedelta(days=d)).isoformat(sep=" ") for d in range(5)]
# Windows of whole days: what compacted days answer exactly (an edge inside one widens to the day).
DAY_WINDOWS: list[dict[str, str]] = [{}, {"since": DAYS[0], "until": DAYS[2]}, {"since": DAYS[1]},
                                     {"since": DAYS[1], "until": DAYS[3]}]


def kind_flows(rng: random.Random, n: int, days: int) -> list[dict[str, Any]]:
    """Flows of the rule kinds the rollups single out, over `days` days (whole hours apart)."""
    rows = random_flows(rng, n)
    for r in rows:
        rule_id, _kind, _direction, action = rng.choice(KIND_RULES)
        shift = timedelta(days=rng.randrange(days), hours=rng.randrange(-9, 10)) if days > 1 else timedelta()
        r.update(rule_id=rule_id, action=action, prefix=f"ft:{action[0]}{rule_id}",
                 **{k: r[k] + shift for k in ("start_time", "end_time", "first_seen", "last_seen")})
    rows.sort(key=lambda r: r["start_time"])
    return rows


def bucketed(store: DuckStore, r: schema.HourRollup, source: str) -> list[tuple[Any, ...]]:
    """The rows of `source` (rollup rows, with `hour`) merged per key and bucket: the day before
    `days_until`, else the hour; only what is rolled up."""
    (rolled, days), = store.query("SELECT max(rolled_until), max(days_until) FROM rollup_state")
    day = f"hour < TIMESTAMP '{days}'" if days is not None else "false"
    rows = (f"(SELECT * REPLACE (CASE WHEN {day} THEN date_trunc('day', hour) ELSE hour END AS hour) "
            f"FROM {source} WHERE hour < TIMESTAMP '{rolled}')")
    return store.query(f"SELECT * FROM ({r.merged(rows)}) ORDER BY ALL")


def assert_rollups_exact(store: DuckStore) -> None:
    """Every rolled-up hour (or compacted day) of each rollup equals its rows made from the raw flows,
    a compacted day is still one row per key, and every totals table its hours summed."""
    (rolled, days), = store.query("SELECT max(rolled_until), max(days_until) FROM rollup_state")
    for r in schema.HOUR_ROLLUPS:
        raw = "(" + r.rows_sql(f"f.start_time < TIMESTAMP '{rolled}'") + ")"
        assert bucketed(store, r, r.hours.name) == bucketed(store, r, raw), r.hours.name
        if days is not None:
            keys = ", ".join(r.keys)
            assert store.query(f"SELECT count(*) FROM (SELECT hour, {keys} FROM {r.hours.name} WHERE hour < ? "
                               "GROUP BY ALL HAVING count(*) > 1 OR any_value(hour) <> date_trunc('day', "
                               "any_value(hour)))", [days]) == [(0,)], r.hours.name
        (pairs_until,), = store.query("SELECT max(pairs_until) FROM totals_state")
        if pairs_until is not None:
            hours = f"(SELECT * FROM {r.hours.name} WHERE hour < TIMESTAMP '{pairs_until}')"
            assert store.query(f"SELECT * FROM {r.totals.name} ORDER BY ALL") == store.query(
                f"SELECT * FROM ({r.merged(hours, with_hour=False)}) ORDER BY ALL"), r.totals.name
    raw_pairs = (f"(SELECT date_trunc('hour', start_time) AS hour, * FROM ({schema.flows_once_sql('', 'true')}))")
    day = f"hour < TIMESTAMP '{days}'" if days is not None else "false"

    def pair_sums(source: str) -> list[tuple[Any, ...]]:
        return store.query(
            f"SELECT CASE WHEN {day} THEN date_trunc('day', hour) ELSE hour END AS b, src_ep, dst_ep, proto, dport, "
            f"denied, sum(packets), sum(bytes), sum(reply_packets), sum(connections) FROM {source} "
            f"WHERE hour < TIMESTAMP '{rolled}' GROUP BY ALL ORDER BY ALL")

    assert pair_sums("pair_hours") == pair_sums(raw_pairs)


def assert_named_queries_exact(store: DuckStore, windows: list[dict[str, str]] | None) -> None:
    """Each named query that reads a rollup against its straightforward SQL (`windows` None: each
    query's own parameter sets; else these windows for every query)."""
    queries = discover([REPO_QUERIES])
    for name, param_sets in NAMED_PARAMS.items():
        if windows is not None and name not in ("new_talkers", "unused_rules"):
            param_sets = windows
        nonempty = 0
        for params in param_sets:
            got, want = named_and_raw(store.con, queries, name, params)
            assert got == want, (name, {"rows": "100000", **params})
            nonempty += bool(got)
        assert nonempty, (name, "every answer empty: the comparison would prove nothing")
    for params in windows or [{}]:
        assert pairs(store, "flow_pairs", params) == pairs(store, RAW_PAIRS, params), params


def build(tmp_path: Path, seed: int, *, rules_first: bool, netsets_first: bool, days: int) -> DuckStore:
    """A store whose flows were written, rolled up (and, over several days, compacted into days) with
    the rules or the network sets still missing."""
    rng = random.Random(seed)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    if rules_first:
        store.insert_rows("rules", kind_rule_rows())
    store.insert_rows("endpoints", endpoint_rows() + (NETSETS if netsets_first else []))
    rows = kind_flows(rng, 500, days)
    for i in range(0, len(rows), 120):
        insert(store, rows[i : i + 120])
        if rng.random() < 0.5:
            store.roll_up(rows[min(i + 119, len(rows) - 1)]["start_time"])
    store.roll_up()
    if days > 1:
        now = store.rolled_until()
        assert now is not None
        assert store.retain(Retention(events=None, flows=None, connections=None, counters=None, rollups=None,
                                      hourly=timedelta(hours=30)), now=now) == 0
        days_until = store.days_until()
        assert days_until is not None and days_until >= DAY0 + timedelta(days=2)
    return store


@pytest.mark.parametrize("days", [1, 4], ids=["hours", "compacted-days"])
@pytest.mark.parametrize("seed", range(1))
def test_rules_written_after_their_flows_are_rolled_up_again(tmp_path: Path, seed: int, days: int) -> None:
    store = build(tmp_path, 300 + seed, rules_first=False, netsets_first=True, days=days)
    try:
        # without the rules no flow is an implicit deny or a profile allow yet
        assert store.query("SELECT count(*) FROM implicit_deny_hours") == [(0,)]
        store.insert_rows("rules", kind_rule_rows())
        assert store.stats.rules_rolled_again == len(kind_rule_rows())  # the batch's new rules (flows used some)
        assert store.query("SELECT count(*) FROM implicit_deny_totals")[0][0] > 0
        assert_rollups_exact(store)
        assert_totals_exact(store)
        assert_named_queries_exact(store, DAY_WINDOWS if days > 1 else None)
    finally:
        store.close(snapshot=False)


@pytest.mark.parametrize("days", [1, 4], ids=["hours", "compacted-days"])
@pytest.mark.parametrize("seed", range(1))
def test_network_sets_written_after_their_flows_are_rolled_up_again(tmp_path: Path, seed: int, days: int) -> None:
    store = build(tmp_path, 400 + seed, rules_first=True, netsets_first=False, days=days)
    try:
        assert store.query("SELECT count(*) FROM denylisted_hours") == [(0,)]  # no member known yet
        store.insert_rows("endpoints", NETSETS)
        assert store.query("SELECT count(*) FROM netset_sources")[0][0] > 0
        assert store.query("SELECT count(*) FROM denylisted_totals")[0][0] > 0
        assert_rollups_exact(store)
        assert_named_queries_exact(store, DAY_WINDOWS if days > 1 else None)
    finally:
        store.close(snapshot=False)


def test_some_rules_later_then_more_flows_folded_in_stay_exact(tmp_path: Path) -> None:
    """Half of the rules come late, between batches; later batches are folded as the collector does:
    the hours rolled again and the hours folded after them agree with the raw flows."""
    rng = random.Random(77)
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        rules = kind_rule_rows()
        store.insert_rows("rules", [r for r in rules if r["id"] % 2])
        store.insert_rows("endpoints", endpoint_rows() + NETSETS)
        rows = kind_flows(rng, 600, 1)
        cut = T0 + timedelta(hours=3)
        early, later = [r for r in rows if r["start_time"] < cut], [r for r in rows if r["start_time"] >= cut]
        insert(store, early)
        store.roll_up(cut)
        store.insert_rows("rules", [r for r in rules if not r["id"] % 2])
        for start in sorted({r["start_time"] for r in later}):
            batch = [r for r in later if r["start_time"] == start]
            t = schema.FLOWS.arrow_schema
            table = pa.Table.from_pylist([{c: r.get(c) for c in t.names} for r in batch], schema=t)
            store.insert("flows", table)
            store.fold(table)
        store.roll_up()
        assert store.stats.hours_folded > 0
        assert_rollups_exact(store)
        assert_totals_exact(store)
        assert_named_queries_exact(store, None)
    finally:
        store.close(snapshot=False)


def test_a_reroll_touches_only_what_changed(tmp_path: Path) -> None:
    """A rule no flow used, or one written again unchanged, rolls nothing up again."""
    store = build(tmp_path, 9, rules_first=True, netsets_first=True, days=1)
    try:
        before = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL")
                  for t in ("pair_hours", *(r.hours.name for r in schema.HOUR_ROLLUPS))}
        unused = dict(kind_rule_rows()[0], id=50, kind="EndOfTier", action="Deny", prefix="ft:D50")
        store.insert_rows("rules", [unused])
        assert {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in before} == before
        # a collector stores every rule it knows when it starts (deleted, then written again unchanged)
        store.query("DELETE FROM rules")
        store.insert_rows("rules", kind_rule_rows())
        assert store.stats.rules_rolled_again == 0
        assert {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in before} == before
    finally:
        store.close(snapshot=False)


def test_a_late_ingress_rule_leaves_pair_hours_as_they_are(tmp_path: Path) -> None:
    """`pair_hours` counts an unknown rule's rows as an ingress rule's: a late ingress rule changes
    none of them (so none is made again), a late egress rule does (see the tests above)."""
    store = build(tmp_path, 10, rules_first=False, netsets_first=True, days=1)
    try:
        before = store.query("SELECT * FROM pair_hours ORDER BY ALL")
        ingress = [r for r in kind_rule_rows() if r["direction"] == "ingress"]
        store.insert_rows("rules", ingress)
        assert store.stats.rules_rolled_again == len(ingress)
        assert store.query("SELECT * FROM pair_hours ORDER BY ALL") == before
        assert_rollups_exact(store)  # the raw flows say the same with these rules known
        store.insert_rows("rules", [r for r in kind_rule_rows() if r["direction"] == "egress"])
        assert store.query("SELECT * FROM pair_hours ORDER BY ALL") != before
        assert_rollups_exact(store)
    finally:
        store.close(snapshot=False)



def test_rollups_built_after_their_hours_were_compacted_say_what_they_miss(tmp_path: Path) -> None:
    """Hours whose raw flows retention deleted cannot be rolled up again: a rollup a store is upgraded to,
    or a rule written after flows of those hours, leaves them out; `rollup_state.complete_from` says from
    when the rollups are whole, status and query print it, and a window after it gets no note."""
    from click.testing import CliRunner

    from flowtui.cli.main import cli

    store = build(tmp_path, 5, rules_first=True, netsets_first=True, days=1)
    db = tmp_path / "f.duckdb"
    try:
        assert store.query("SELECT complete_from FROM rollup_state") == [(None,)]
        store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None, rollups=None),
                     now=T0 + timedelta(hours=4, minutes=30))
        cut = store.compacted_until()
        assert cut == T0 + timedelta(hours=2)
        assert store.query("SELECT complete_from FROM rollup_state") == [(None,)]  # compacted whole: complete
        for r in schema.HOUR_ROLLUPS:  # the layout before these rollups: an upgrade builds them
            store.query(f"DROP VIEW {r.view}")
            store.query(f"DROP TABLE {r.hours.name}")
            store.query(f"DROP TABLE {r.totals.name}")
    finally:
        store.close(snapshot=False)
    store = DuckStore(db, snapshot_interval=None)
    try:
        assert store.query("SELECT complete_from FROM rollup_state") == [(cut,)]
        assert store.query("SELECT min(hour) FROM implicit_deny_hours")[0][0] >= cut  # nothing before it
    finally:
        store.close(snapshot=False)

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, "--db", str(db)], catch_exceptions=False)

    note = "may miss flows before 2026-03-14 11:00"
    assert note in run("query", "default_deny_attributions").stderr
    assert note not in run("query", "default_deny_attributions", "--param", "since=2026-03-14 11:00").stderr
    assert note not in run("query", "hits_per_policy_rule").stderr  # rule_hours was never incomplete
    status = run("status", "--state-dir", str(tmp_path / "state")).output
    assert "may miss flows before 2026-03-14 11:00:00 UTC" in status


def test_a_rule_written_after_its_compacted_flows_marks_the_rollups_incomplete(tmp_path: Path) -> None:
    store = build(tmp_path, 6, rules_first=False, netsets_first=True, days=1)
    try:
        store.retain(Retention(events=None, flows=timedelta(hours=2), connections=None, counters=None, rollups=None),
                     now=T0 + timedelta(hours=4, minutes=30))
        late = [r for r in kind_rule_rows() if r["id"] == 4]  # an end of tier: in implicit_deny_hours
        store.insert_rows("rules", [dict(r, id=99) for r in late])  # no flow used id 99: complete
        assert store.query("SELECT complete_from FROM rollup_state") == [(None,)]
        store.insert_rows("rules", late)
        assert store.query("SELECT complete_from FROM rollup_state") == [(T0 + timedelta(hours=2),)]
        assert_rollups_exact_after(store, T0 + timedelta(hours=2))
    finally:
        store.close(snapshot=False)


def assert_rollups_exact_after(store: DuckStore, since: Any) -> None:
    """From `since` on, each hour rollup equals its rows made from the raw flows."""
    (rolled,), = store.query("SELECT max(rolled_until) FROM rollup_state")
    for r in schema.HOUR_ROLLUPS:
        mine = f"(SELECT * FROM {r.hours.name} WHERE hour >= TIMESTAMP '{since}')"
        raw = "(" + r.rows_sql(f"f.start_time >= TIMESTAMP '{since}' AND f.start_time < TIMESTAMP '{rolled}'") + ")"
        assert store.query(f"SELECT * FROM ({r.merged(mine)}) ORDER BY ALL") == store.query(
            f"SELECT * FROM ({r.merged(raw)}) ORDER BY ALL"), r.hours.name


def test_rules_whose_insert_rolled_back_are_rolled_up_when_written_again(tmp_path: Path) -> None:
    store = build(tmp_path, 8, rules_first=False, netsets_first=True, days=1)
    try:
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.insert_rows("rules", kind_rule_rows())
                raise RuntimeError("the writer's commit failed")
        assert store.query("SELECT count(*) FROM rules") == [(0,)]
        store.insert_rows("rules", kind_rule_rows())
        assert store.query("SELECT count(*) FROM implicit_deny_hours")[0][0] > 0
        assert_rollups_exact(store)
    finally:
        store.close(snapshot=False)
