"""A collector that dies: open flows kept, the run closed as crashed, the gap counted, status honest.

And stores written before this schema: they open, upgrade once in place and keep every row.
The kill -9 of a real collector under load is in `test_collector_kernel.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
from click.testing import CliRunner

from flowtui.cli.collect import status_cmd
from flowtui.collector.counters import RuleCounter
from flowtui.collector.recovery import close_crashed_runs, count_gaps
from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore
from flowtui.store.status import read_status
from tests.nflog_pair import start_collector
from tests.test_collector_service import skb, wait_for

SAMPLE = Path(__file__).resolve().parent.parent / "sample-logs"
NS = "ft-t0rec-node-a"
T0 = datetime(2026, 6, 1, 12, 0, 0)


def flow(
    start: datetime, events: int, prefix: str = "ft:D7", source_id: int = 1, sport: int = 1000
) -> dict[str, object]:
    return {
        "start_time": start,
        "end_time": start + timedelta(seconds=15),
        "source_id": source_id,
        "action": "Deny",
        "rule_id": int(prefix[4:]),
        "prefix": prefix,
        "proto": 17,
        "src_ip": "10.0.0.1",
        "dst_ip": "10.0.0.2",
        "sport": sport,
        "dport": 9999,
        "events": events,
        "packets": events,
        "bytes": 46 * events,
        "reply_packets": 0,
        "reply_bytes": 0,
        "connections_started": 0,
        "connections_completed": 0,
        "tcp_flags": 0,
        "first_seen": start,
        "last_seen": start + timedelta(seconds=1),
        "count_source": "nflog",
    }


def counter_row(
    run: int, sid: int, when: datetime, rule: str, prefix: str, logged: int, run_logged: int
) -> dict[str, object]:
    return {
        "time": when,
        "run_id": run,
        "source_id": sid,
        "prefix": prefix,
        "rule_id": int(prefix[4:]),
        "nft_rule": rule,
        "packets": logged,
        "bytes": 46 * logged,
        "logged": logged,
        "rate_limited": False,
        "run_packets": run_logged,
        "run_logged": run_logged,
    }


def answer(db: Path, name: str) -> list[dict[str, object]]:
    from flowtui.query.library import REPO_QUERIES, discover
    from flowtui.query.run import open_source, run_query

    with open_source(db) as source:
        result: list[dict[str, object]] = run_query(source.con, discover([REPO_QUERIES])[name]).to_pylist()
    return result


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def crashed_store(path: Path) -> tuple[int, int]:
    """What a kill -9 leaves: a run without an end, open flows, counters, a last heartbeat."""
    store = DuckStore(path, snapshot_interval=None)
    run = store.begin_run({"test": True})
    sid = store.add_source(run, NS, "a", (1,), 1 << 20)
    store.query(
        "UPDATE runs SET pid = ?, heartbeat = ? WHERE run_id = ?", [dead_pid(), T0 + timedelta(seconds=40), run]
    )
    store.insert_rows(
        "rule_counters",
        [
            counter_row(run, sid, T0, "inet ft input 5", "ft:D7", 100, 0),  # the run's baseline: 100
            counter_row(run, sid, T0 + timedelta(seconds=30), "inet ft input 5", "ft:D7", 150, 50),
        ],
    )
    store.insert_rows("flows", [flow(T0, 30)])  # a closed bucket
    store.insert_rows("flows_open", [flow(T0 + timedelta(seconds=15), 10), flow(T0 + timedelta(seconds=15), 5)])
    store.insert_rows(
        "loss",
        [
            {"time": T0, "run_id": run, "source_id": sid, "cause": "writer_backlog", "events": 2, "detail": "x"},
            {
                "time": T0 + timedelta(seconds=1),
                "run_id": run,
                "source_id": sid,
                "cause": "writer_backlog",
                "events": 5,
                "detail": "x",
            },
            {"time": T0, "run_id": run, "source_id": sid, "cause": "kernel_ratelimit", "events": 1000, "detail": "x"},
        ],
    )
    store.close(snapshot=False)
    return run, sid


def test_a_crashed_run_is_closed_its_open_flows_kept_and_the_gap_counted(tmp_path: Path) -> None:
    db = tmp_path / "flows.duckdb"
    run, sid = crashed_store(db)
    before = read_status(db)["runs"][0]
    assert before["state"] == "crashed" and before["ended"] is None  # dead, though nobody closed it yet

    asked: list[tuple[str | None, list[int]]] = []

    def kernel_now(netns: str | None, groups: Iterable[int]) -> list[RuleCounter]:
        asked.append((netns, list(groups)))
        return [
            RuleCounter("ft:D7", 1, "inet ft input 5", 220, 0, 220, False),  # 120 logged since the run started
            RuleCounter("ft:D8", 1, "inet ft input 9", 10, 0, 10, False),  # a rule created later: all 10
            RuleCounter("ft:D9", 1, "inet ft input 11", None, None, None, True),  # unknown: ignored
        ]

    store = DuckStore(db, snapshot_interval=None)
    try:
        closed = close_crashed_runs(store)
        assert [r for r, _e in closed.runs] == [run] and closed.open_flow_rows == 2
        assert store.query("SELECT ended, outcome FROM runs") == [(T0 + timedelta(seconds=40), "crashed")]
        assert store.query("SELECT count(*) FROM flows_open") == [(0,)]
        # the open bucket's two partial rows are one flow now; nothing counted twice
        assert store.query("SELECT start_time, sum(events), count(*) FROM flows GROUP BY ALL ORDER BY 1") == [
            (T0, 30, 1),
            (T0 + timedelta(seconds=15), 15, 1),
        ]
        gaps = count_gaps(store, [NS], read=kernel_now)
        assert asked == [(NS, [1])]
        (gap,) = gaps
        # 130 logged since the run started - 45 stored - 5 counted lost (rate limiting is before the log)
        assert (gap.run_id, gap.source_id, gap.expected, gap.stored, gap.counted, gap.lost) == (
            run,
            sid,
            130,
            45,
            5,
            80,
        )
        assert count_gaps(store, [NS], read=kernel_now) == []  # booked once
        assert close_crashed_runs(store).runs == ()
    finally:
        store.close(snapshot=False)

    after = read_status(db)["runs"][0]
    assert after["state"] == "crashed" and after["ended"] == T0 + timedelta(seconds=40)
    assert after["lost"]["collector_down"] == 80 and after["lost"]["writer_backlog"] == 5
    text = CliRunner().invoke(status_cmd, ["--db", str(db)]).output
    assert f"run {run}: started" in text and "crashed, last heartbeat 2026-06-01 12:00:40 UTC" in text
    assert "collector_down" in text and "80" in text


def test_the_gap_after_a_clean_stop_is_counted_too_and_a_reset_counter_counts_from_zero(tmp_path: Path) -> None:
    db = tmp_path / "flows.duckdb"
    store = DuckStore(db, snapshot_interval=None)
    try:
        run = store.begin_run({})
        sid = store.add_source(run, NS, "a", (1, 2), 1 << 20)
        store.insert_rows("rule_counters", [counter_row(run, sid, T0, "inet ft input 5", "ft:D7", 40, 0)])
        store.insert_rows("flows", [flow(T0, 12), flow(T0, 3, prefix="ft:D404", sport=1)])  # ft:D404: no counter
        store.end_run(run)
        # the table was re-created since (lab down/up): the counter restarted below the baseline
        (gap,) = count_gaps(
            store,
            [NS, "ft-t0rec-node-b"],
            read=lambda ns, g: [RuleCounter("ft:D7", 1, "inet ft input 5", 7, 0, 7, False)],
        )
        assert (gap.expected, gap.stored, gap.lost) == (7, 12, 0)  # never negative
        assert store.query("SELECT events FROM loss WHERE cause = 'collector_down'") == [(0,)]
        assert store.query("SELECT outcome FROM runs") == [("stopped",)]
    finally:
        store.close(snapshot=False)


def test_a_namespace_that_is_gone_leaves_the_gap_uncounted_not_guessed(tmp_path: Path) -> None:
    db = tmp_path / "flows.duckdb"
    crashed_store(db)

    def gone(netns: str | None, groups: Iterable[int]) -> list[RuleCounter]:
        raise OSError("no such namespace")

    store = DuckStore(db, snapshot_interval=None)
    try:
        assert count_gaps(store, [NS], read=gone) == []
        assert store.query("SELECT count(*) FROM loss WHERE cause = 'collector_down'") == [(0,)]
    finally:
        store.close(snapshot=False)


def test_status_shows_a_run_as_running_only_while_its_process_holds_the_store(tmp_path: Path) -> None:
    db = tmp_path / "flows.duckdb"
    store = DuckStore(db, snapshot_interval=1.0)
    try:
        run = store.begin_run({})
        store.snapshot(wait=True)
        doc = read_status(db)  # the writer holds the file: the snapshot is read
        assert doc["snapshot"] and doc["runs"][0]["state"] == "running" and doc["runs"][0]["heartbeat"] is not None
        store.query("UPDATE runs SET pid = ? WHERE run_id = ?", [dead_pid(), run])
        store.snapshot(wait=True)
        assert read_status(db)["runs"][0]["state"] == "crashed"  # a store held by another process, a dead pid
    finally:
        store.close(snapshot=False)
    # nobody holds it any more: a run without an end is dead, whatever its pid
    store = DuckStore(db, snapshot_interval=None)
    store.query("UPDATE runs SET pid = ?", [os.getpid()])
    store.close(snapshot=False)
    doc = read_status(db)
    assert not doc["snapshot"] and doc["runs"][0]["state"] == "crashed"


def test_open_buckets_are_committed_with_their_events(tmp_path: Path) -> None:
    """Before any bucket closes, every stored event already has its flow (in flows_open)."""
    from enforcer.ruleids import RuleRef, RuleTable

    RuleTable([RuleRef(7, "GlobalNetworkPolicy", None, "deny", "default", 1, "ingress", 0, "Deny")]).dump(
        tmp_path / "rules.jsonl"
    )
    c, sock = start_collector(db=tmp_path / "flows.duckdb", batch_seconds=0.05, snapshot_interval=None,
                              bucket_seconds=3600.0)  # nothing closes while the test runs
    try:
        sock.tx.send(skb(0, 100))
        sock.tx.send(skb(100, 40))
        wait_for(lambda: c.book.stat_total("stored") == 140)

        def committed() -> tuple[int, int, int]:
            return c.store.query(  # type: ignore[return-value]
                "SELECT (SELECT count(*) FROM events), (SELECT coalesce(sum(events), 0) FROM flows_open), "
                "(SELECT count(*) FROM flows)"
            )[0]

        wait_for(lambda: committed()[1] == 140)
        assert committed() == (140, 140, 0)
        assert c.store.query("SELECT heartbeat IS NOT NULL, outcome FROM runs") == [(True, None)]
    finally:
        c.stop()
    con = duckdb.connect(str(tmp_path / "flows.duckdb"), read_only=True)
    try:  # a clean stop moves them to flows
        assert con.execute("SELECT (SELECT sum(events) FROM flows), (SELECT count(*) FROM flows_open)").fetchone() == (
            140,
            0,
        )
        assert con.execute("SELECT outcome FROM runs").fetchall() == [("stopped",)]
    finally:
        con.close()


def test_a_store_written_before_this_schema_opens_upgrades_once_and_keeps_everything(tmp_path: Path) -> None:
    """sample-logs/ is a recording made by an earlier collector: load it as that collector's store."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    counts = {}
    for table in schema.TABLES:
        file = SAMPLE / f"{table.name}.parquet"
        if file.exists():
            con.execute(f"CREATE TABLE {table.name} AS SELECT * FROM read_parquet('{file}')")
        else:  # empty in the recording: the old DDL, without the columns added since
            old = [c for c in table.columns if (table.name, c.name) not in {("runs", "heartbeat"), ("runs", "outcome")}]
            con.execute(f"CREATE TABLE {table.name} ({', '.join(f'{c.name} {c.sql}' for c in old)})")
        counts[table.name] = con.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]  # type: ignore[index]
    rollup_views = ("flow_pairs", "rule_hits", "rule_hits_all", "talkers_seen", "rule_flows",
                    *(r.view for r in schema.HOUR_ROLLUPS))
    for name, (_doc, query) in schema.VIEWS.items():  # the views of then: the rollups' came with them,
        if name not in rollup_views:  # flows_v's other_policies
            con.execute(f"CREATE VIEW {name} AS {schema.before_other_rules(query)}")  # with other_rule_ids
    old_runs = con.execute("SELECT * FROM runs").fetchall()
    con.close()
    assert "heartbeat" not in {
        r[0] for r in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{SAMPLE}/runs.parquet')").fetchall()
    }
    assert counts["flows"] > 1000 and counts["events"] > 0

    doc = read_status(db)  # a reader does not upgrade, and copes
    assert doc["runs"][0]["state"] == "stopped" and doc["tables"]["flows"] == counts["flows"]
    from flowtui.query.library import REPO_QUERIES, discover

    before = {name: answer(db, name) for name in discover([REPO_QUERIES])}  # every named query
    assert before["conversations"]  # the queries run on the old store, read-only (from the raw flows)

    store = DuckStore(db, snapshot_interval=None)
    assert store.roll_up() > 0  # what the first writer does, at most an hour per commit
    store.close(snapshot=False)
    assert {name: answer(db, name) for name in before} == before  # from the rollups now, the same
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in schema.ALL_TABLES:
            cols = [r[0] for r in con.execute(f"DESCRIBE {table.name}").fetchall()]
            assert cols == [c.name for c in table.columns], table.name
            if table.name in counts:
                assert con.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0] == counts[table.name]  # type: ignore[index]
        assert [r[:6] for r in con.execute("SELECT * FROM runs").fetchall()] == old_runs
        assert con.execute("SELECT heartbeat, outcome FROM runs").fetchall() == [(None, None)]
        existing = {
            (str(t), str(c)) for t, c in con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall()
        }
    finally:
        con.close()
    assert not [s for s in schema.statements(existing) if s.startswith("ALTER")]  # upgraded once: nothing left to add
    assert read_status(db)["runs"][0]["state"] == "stopped"  # an old run with an end stays a stopped run
