"""The collector's writer folds each batch of closed buckets into its hour's rollups (`DuckStore.fold`)
and closing the hour only compacts them: the rollups must be exactly those rolled up from the raw
flows at the end, whatever came late, across a restart of the writer."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore
from tests.test_store_rollups import endpoint_rows, random_flows, rule_rows

ROLLUPS = ("pair_hours", "rule_hours", "talkers", "rollup_state")


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    t = schema.FLOWS.arrow_schema
    return pa.Table.from_pylist([{c: r.get(c) for c in t.names} for r in rows], schema=t)


def _new(path: Path) -> DuckStore:
    store = DuckStore(path, snapshot_interval=None)
    return store


def _batches(rng: random.Random, flows: list[dict[str, Any]], late: float) -> list[list[dict[str, Any]]]:
    """The writer's commits: 1-4 consecutive closed buckets each (every reporter's rows), and in
    odd hours, with probability `late`, some rows of an already written bucket coming along (late
    events): the even hours stay clean."""
    buckets = [list(rows) for _t, rows in groupby(sorted(flows, key=lambda r: r["start_time"]),
                                                  key=lambda r: r["start_time"])]
    out: list[list[dict[str, Any]]] = []
    i = 0
    while i < len(buckets):
        n = rng.randrange(1, 5)
        batch = [r for b in buckets[i:i + n] for r in b]
        if out and batch[0]["start_time"].hour % 2 and rng.random() < late:
            old = rng.choice(out[-8:])
            batch += [dict(r, events=1, packets=1, bytes=60) for r in rng.sample(old, min(2, len(old)))]
        out.append(batch)
        i += n
    return out


def _write(path: Path, batches: list[list[dict[str, Any]]], restart_at: int | None) -> DuckStore:
    store = _new(path)
    store.insert_rows("rules", rule_rows())
    store.insert_rows("endpoints", endpoint_rows())
    for i, rows in enumerate(batches):
        if i == restart_at:  # a new writer (the last one's in-memory fold state gone)
            store.close(snapshot=False)
            store = _new(path)
        batch = _table(rows)
        newest = max(r["end_time"] for r in rows)
        with store.transaction():  # as the writer's commit
            store.insert("flows", batch)
            store.fold(batch)
            store.roll_up(newest, max_hours=1)
    return store


def _rollups(store: DuckStore) -> dict[str, list[tuple[Any, ...]]]:
    return {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in ROLLUPS}


@pytest.mark.parametrize("seed,late,restart", [(1, 0.0, False), (2, 0.0, True), (3, 0.1, False), (4, 0.1, True)])
def test_folded_rollups_equal_the_rollups_of_the_raw_flows(tmp_path: Path, seed: int, late: float,
                                                          restart: bool) -> None:
    rng = random.Random(seed)
    batches = _batches(rng, random_flows(rng, 400), late)
    store = _write(tmp_path / "folded.duckdb", batches, len(batches) // 2 if restart else None)
    oracle = _new(tmp_path / "raw.duckdb")
    try:
        oracle.insert_rows("rules", rule_rows())
        oracle.insert_rows("endpoints", endpoint_rows())
        for rows in batches:
            oracle.insert("flows", _table(rows))
        store.roll_up()  # the end of the run: every hour
        oracle.roll_up()
        got, want = _rollups(store), _rollups(oracle)
        assert all(want[t] for t in ROLLUPS)
        for table in ROLLUPS:
            assert got[table] == want[table], table
        assert store.stats.hours_folded > 0  # the fast path was taken
        if late:
            assert store.stats.hours_recomputed > 0  # and late rows sent hours back to the raw flows
    finally:
        store.close(snapshot=False)
        oracle.close(snapshot=False)


def test_flows_not_folded_send_their_hour_to_the_raw_flows(tmp_path: Path) -> None:
    """An insert without `fold` (another writer's API use) between folded batches: recomputed."""
    rng = random.Random(7)
    batches = _batches(rng, random_flows(rng, 300), 0.0)
    store = _write(tmp_path / "f.duckdb", batches[:20], None)
    oracle = _new(tmp_path / "raw.duckdb")
    try:
        store.insert("flows", _table(batches[20]))  # not folded
        store.fold(_table(batches[20]))  # a copy: not the batch inserted, so not folded either
        for rows in batches[21:]:
            batch = _table(rows)
            store.insert("flows", batch)
            store.fold(batch)
        oracle.insert_rows("rules", rule_rows())
        oracle.insert_rows("endpoints", endpoint_rows())
        for rows in batches:
            oracle.insert("flows", _table(rows))
        store.roll_up()
        oracle.roll_up()
        assert _rollups(store) == _rollups(oracle)
        assert store.stats.hours_recomputed > 0
    finally:
        store.close(snapshot=False)
        oracle.close(snapshot=False)


def test_the_first_batch_of_a_store_starts_the_rollups(tmp_path: Path) -> None:
    store = _new(tmp_path / "f.duckdb")
    try:
        t0 = datetime(2026, 3, 14, 9, 30)
        rows = [{"start_time": t0, "end_time": t0 + timedelta(seconds=15), "source_id": 1, "action": "Deny",
                 "rule_id": 3, "proto": 6, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "sport": 1000, "dport": 80,
                 "src_ep": 1, "dst_ep": 2, "events": 2, "packets": 2, "bytes": 120, "first_seen": t0,
                 "last_seen": t0, "count_source": "nflog"}]
        batch = _table(rows)
        store.insert("flows", batch)
        assert store.fold(batch) == 1
        assert store.rolled_until() == datetime(2026, 3, 14, 9)
        assert store.query("SELECT hour, flows, packets FROM pair_hours") == [(datetime(2026, 3, 14, 9), 1, 2)]
    finally:
        store.close(snapshot=False)
