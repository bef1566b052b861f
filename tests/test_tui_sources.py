"""Data sources (headless): recordings, a store being written, the in-process tap; the ring buffer."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from flowtui.demo.synthetic import START, SyntheticFeed, article_recording
from flowtui.store.duckdb_store import DuckStore
from flowtui.tui import queries
from flowtui.tui.filters import compile_filter
from flowtui.tui.ring import FlowRing
from flowtui.tui.sources import LiveSource, LogsSource, SourceError, StoreSource, Tap, TappedStore, open_source


def start_us(offset: float = 0.0) -> int:
    return int(((START - START.replace(year=1970, month=1, day=1, hour=0, minute=0, second=0)).total_seconds()
                + offset) * 1e6)


def test_replay_store_recent_status_and_no_tail(tmp_path: Path) -> None:
    db = article_recording(tmp_path / "rec.duckdb", events=1500)
    src = open_source(str(db), None)
    assert isinstance(src, StoreSource) and src.mode == "replay" and not src.can_tail
    rows = src.recent(None, 100)
    assert rows.num_rows == 100 and rows.column_names == list(queries.STREAM_COLUMNS)
    times = rows.column("time").to_pylist()
    assert times == sorted(times)  # oldest first, the newest 100
    denied = src.recent(compile_filter("verdict:deny").where, 10_000)
    assert denied.num_rows and set(denied.column("verdict").to_pylist()) == {"deny"}
    st = src.status()
    assert st.mode == "replay" and st.flows_stored > 0 and st.events_total >= 1500
    assert set(st.loss) >= {"kernel_ratelimit", "rcvbuf_overrun"} and st.lost_total == 0
    assert st.events_per_s and st.events_per_s > 0 and st.collector.startswith("run 1 ended")
    assert src.tail(None) is None
    src.close()


def test_logs_directory_and_older_recordings(tmp_path: Path) -> None:
    import duckdb

    db = article_recording(tmp_path / "rec.duckdb", events=800)
    out = tmp_path / "logs"
    out.mkdir()
    con = duckdb.connect(str(db), read_only=True)
    for table in ("events", "flows", "rules", "endpoints", "sources", "runs", "loss", "stats"):
        target = out / f"{table}.parquet"
        con.execute(f"COPY (SELECT * FROM {table}) TO '{target}' (FORMAT parquet)").fetchall()
    # an older schema: rule_counters without today's columns
    con.execute(f"COPY (SELECT time, run_id, source_id, prefix, rule_id, packets FROM rule_counters) "
                f"TO '{out / 'rule_counters.parquet'}' (FORMAT parquet)").fetchall()
    con.close()
    src = open_source(None, str(out))
    assert isinstance(src, LogsSource) and src.stream_kind == "events"
    assert src.recent("verdict = 'log'", 5).num_rows == 5
    assert src.query(queries.RULE_COUNTERS_SQL).num_rows > 0
    assert src.status().flows_stored > 0
    # only flows: the stream falls back to flow rows
    only = tmp_path / "only"
    only.mkdir()
    (out / "flows.parquet").rename(only / "flows.parquet")
    flows_src = LogsSource(only)
    assert flows_src.stream_kind == "flows"
    assert flows_src.recent("verdict = 'deny'", 5).num_rows == 5
    with pytest.raises(SourceError):
        LogsSource(tmp_path / "nope")
    with pytest.raises(SourceError):
        open_source(None, None)


def test_store_being_written_is_followed_through_its_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    store = DuckStore(db, snapshot_interval=0.1)
    try:
        feed = SyntheticFeed(store)
        feed.push(500, start_us(), 1000)
        store.snapshot(wait=True)
        src = StoreSource(db)  # the writer holds the file: its snapshot is read
        assert src.mode == "attach" and src.can_tail and src.snapshot
        first = src.recent(None, 10_000)
        assert first.num_rows > 0
        feed.push(3000, start_us(1.0), 1000)  # 3 s more
        store.snapshot(wait=True)
        more = src.tail(None)
        assert more is not None and more.num_rows > 0
        seen = first.column("time").to_pylist() + more.column("time").to_pylist()
        assert seen == sorted(seen)  # nothing twice, nothing out of order
        assert src.status().mode == "attach"
    finally:
        store.close(snapshot=False)


def test_live_source_tails_the_tap_with_enrichment_and_filters(tmp_path: Path) -> None:
    tap = Tap()
    store = TappedStore(tmp_path / "tap.duckdb", tap=tap, snapshot_interval=None)
    try:
        feed = SyntheticFeed(store)
        src = LiveSource(store, collector_state=lambda: "running")
        feed.push(1000, start_us(), 100)
        recent = src.recent(None, 100_000)
        assert recent.num_rows >= 1000
        assert src.tail(None) is None  # what recent() saw is not shown twice
        feed.push(2000, start_us(1.0), 100)
        where = compile_filter("verdict:deny").where
        tail = src.tail(where)
        assert tail is not None and tail.num_rows > 0
        assert set(tail.column("verdict").to_pylist()) == {"deny"}
        # enriched like the store's own view
        row = tail.to_pylist()[0]
        assert row["policy_name"] and row["node"] and row["src_type"]
        st = src.status()
        assert st.mode == "live" and st.collector == "running" and st.events_total >= 3000
        with src.connect() as con:  # a cursor on the writer's database: sees every committed row
            assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] >= 3000
        src.close()
    finally:
        store.close(snapshot=False)


def test_tap_is_bounded_and_never_blocks() -> None:
    tap = Tap(max_rows=10_000)
    batch = pa.table({"x": list(range(1000))})
    t0 = time.perf_counter()
    for _ in range(100):
        tap.publish("events", batch)
    assert time.perf_counter() - t0 < 0.5
    held = tap.drain()
    assert sum(t.num_rows for _s, t in held) <= 10_000
    assert tap.dropped_rows == 90_000 and tap.events_total == 100_000
    assert tap.drain() == []


def test_ring_keeps_absolute_indexes_and_capacity() -> None:
    ring = FlowRing(capacity=2500)
    for i in range(10):
        ring.append(pa.table({"i": list(range(i * 1000, (i + 1) * 1000))}))
    assert len(ring) == 2500 and ring.first == 7500 and ring.end == 10_000
    assert ring.row(7500) == {"i": 7500} and ring.row(9999) == {"i": 9999}
    assert ring.row(7499) is None and ring.row(10_000) is None
    assert [r["i"] for r in ring.rows(7990, 8010)] == list(range(7990, 8010))
    assert ring.evicted == 7500
    ring.append(pa.table({"i": list(range(10_000, 20_000))}))  # bigger than the capacity
    assert len(ring) == 2500 and ring.row(19_999) == {"i": 19_999}
    ring.clear()
    assert len(ring) == 0 and ring.rows(0, 10) == []


def test_the_flows_tail_of_a_store_counts_every_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events view's tail stops at a row limit (a screen cannot show more anyway); the flows
    view's tail is reduced in the store, so a flood's counts stay exact however many arrive."""
    import flowtui.tui.sources as sources

    monkeypatch.setattr(sources, "MAX_TAIL_ROWS", 50)
    db = tmp_path / "live.duckdb"
    store = DuckStore(db, snapshot_interval=0.1)
    try:
        feed = SyntheticFeed(store)
        feed.push(500, start_us(), 1000)
        store.snapshot(wait=True)
        flows_src, events_src = StoreSource(db), StoreSource(db)
        flows_src.recent_flows(None, 1000)
        events_src.recent(None, 1000)
        feed.push(3000, start_us(1.0), 1000)  # 3 s more
        store.snapshot(wait=True)
        reduced, rows = flows_src.tail_flows(None), events_src.tail(None)
        assert rows is not None and rows.num_rows == 50  # the limit
        assert reduced is not None and set(reduced.column("second").to_pylist()) >= {start_us(1.0) // 1_000_000}
        with flows_src.connect() as con:  # the window the tail covered: (first one's end, newest - 1 s]
            upto = flows_src._cursor
            expected = con.execute(f"SELECT count(*) FROM ({queries.stream_sql('events')}) WHERE time > ? "
                                   "AND time <= ?", [START + timedelta(seconds=0.499), upto]).fetchall()[0][0]
        assert sum(reduced.column("events").to_pylist()) == expected > 50
        flows_src.close()
        events_src.close()
    finally:
        store.close(snapshot=False)


def test_a_connection_busy_with_a_workers_query_still_closes() -> None:
    """Quitting mid-poll: DuckDB refuses to close a connection whose cursor runs a query; the
    query is interrupted and the connection closed."""
    import threading

    import duckdb

    from flowtui.tui.sources import close_connection

    con = duckdb.connect(":memory:")
    cur = con.cursor()
    started = threading.Event()
    failed: list[BaseException] = []

    def long_query() -> None:
        started.set()
        try:
            cur.sql("SELECT count(*) FROM range(100000000000) a").fetchall()
        except BaseException as exc:  # interrupted, as it should be
            failed.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    started.wait(5)
    time.sleep(0.2)
    close_connection(con, [cur])
    worker.join(10)
    assert not worker.is_alive()
    assert failed, "the query was interrupted, not left running"
    with pytest.raises(duckdb.ConnectionException):
        con.execute("SELECT 1")
