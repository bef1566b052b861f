"""The totals worker (`flowtui/store/totals.py`): the collector's writer rolls an hour up and the
merge into the whole-store totals runs on the worker's own cursor and transaction, while the writer
goes on committing. Its results equal the merge in the writer's commit; a reader sees the named
queries' exact answers before, during and after a job; late rows for the hours a job is totalling
wait for it; a kill -9 inside its transaction loses nothing and the next writer catches up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flowtui.query.library import REPO_QUERIES, discover
from flowtui.store import schema, totals
from flowtui.store.duckdb_store import DuckStore, TotalsBusy
from tests.test_store_fold import _batches, _table
from tests.test_store_rollups import (
    KIND_RULES,
    NAMED_PARAMS,
    T0,
    assert_hours_exact,
    assert_totals_exact,
    endpoint_rows,
    kind_rule_rows,
    named_and_raw,
    random_flows,
)

HOLD_AT = T0 + timedelta(hours=2)  # the job that totals the first two hours is held (tests below)
NETSETS = [{"id": 20 + j, "revision": 1, "type": "netset", "namespace": None, "name": f"bad-{j}", "node": None,
            "labels": [], "addresses": [cidr]} for j, cidr in enumerate(("10.0.0.8/30", "10.0.0.3/32"))]


def writes(seed: int, late: float = 0.0) -> list[list[dict[str, Any]]]:
    """The writer's commits over five hours, with every rule kind the named queries single out."""
    rng = random.Random(seed)
    rows = random_flows(rng, 300)
    for r in rows:
        rule_id, _kind, _direction, action = rng.choice(KIND_RULES)
        r.update(rule_id=rule_id, action=action, prefix=f"ft:{action[0]}{rule_id}")
    return _batches(rng, rows, late)


def new_store(path: Path, worker: bool) -> DuckStore:
    store = DuckStore(path, snapshot_interval=None)
    if not store.query("SELECT 1 FROM rules LIMIT 1"):
        store.insert_rows("rules", kind_rule_rows())
        store.insert_rows("endpoints", endpoint_rows() + NETSETS)
    if worker:
        store.defer_totals()
    return store


def commit(store: DuckStore, rows: list[dict[str, Any]]) -> None:
    """One commit as the collector's writer makes it (and runs again after a TotalsBusy)."""
    batch = _table(rows)
    for attempt in (1, 2):
        try:
            with store.transaction():
                store.insert("flows", batch)
                store.fold(batch)
                store.roll_up(max(r["end_time"] for r in rows), max_hours=1)
            return
        except TotalsBusy:
            assert attempt == 1
            store.wait_totals()


def state(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every rollup and total, per key (a folded hour may hold several rows of one key)."""
    out = {}
    sports = ", ".join(c.name if c.name != "sports" else "list_sort(sports)" for c in schema.FLOW_TOTALS.columns)
    out["flow_totals"] = con.execute(f"SELECT {sports} FROM flow_totals ORDER BY ALL").fetchall()
    for table in ("pair_hours", "pair_totals", "rule_hours", "talkers", "rollup_state", "totals_state",
                  *(n for r in schema.HOUR_ROLLUPS for n in (r.hours.name, r.totals.name))):
        out[table] = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    return out


class Reader:
    """A second connection to the store: it sees what is committed, as a reader of a snapshot does."""

    def __init__(self, store: DuckStore) -> None:
        self.con = store.con.cursor()

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()


def assert_exact(reader: Reader) -> int:
    """Totals and hours as their definitions say, and every named query equal to its raw SQL;
    returns how many answers were not empty."""
    assert_totals_exact(reader, allow_empty=True)  # type: ignore[arg-type]
    for r in schema.HOUR_ROLLUPS:
        assert_hours_exact(reader, r)  # type: ignore[arg-type]
    queries = discover([REPO_QUERIES])
    nonempty = 0
    for name, param_sets in NAMED_PARAMS.items():
        for params in param_sets:
            got, want = named_and_raw(reader.con, queries, name, params)
            assert got == want, (name, {"rows": "100000", **params})
            nonempty += bool(got)
    return nonempty



def holding(held: threading.Event, release: threading.Event, at: datetime) -> Any:
    real = totals.roll_up_totals

    def roll_up_totals(con: duckdb.DuckDBPyConnection, target: datetime, compact_hours: bool = False) -> None:
        real(con, target, compact_hours)
        if target >= at and not held.is_set():
            held.set()
            assert release.wait(120), "never released"

    return roll_up_totals


@pytest.mark.parametrize("seed,late", [(1, 0.0), (2, 0.15)])
def test_the_worker_s_totals_equal_the_merge_in_the_writer_s_commit(tmp_path: Path, seed: int, late: float) -> None:
    batches = writes(seed, late)
    worker, inline = new_store(tmp_path / "w.duckdb", True), new_store(tmp_path / "i.duckdb", False)
    try:
        for rows in batches:
            commit(worker, rows)
            commit(inline, rows)
        worker.wait_totals()
        assert state(worker.con) == state(inline.con)
        (rolled,), = worker.query("SELECT rolled_until FROM rollup_state")
        assert rolled >= T0 + timedelta(hours=4)
        assert worker.query("SELECT flows_until, pairs_until FROM totals_state") == [(rolled, rolled)]
        worker.roll_up()  # the end of a run: every hour
        inline.roll_up()
        worker.wait_totals()
        assert state(worker.con) == state(inline.con)
        assert assert_exact(Reader(worker)) > 10
        assert worker.stats.hours_folded > 0
    finally:
        worker.close(snapshot=False)
        inline.close(snapshot=False)


def test_a_held_job_blocks_neither_the_writer_nor_a_reader_s_exact_answers(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    batches = writes(3)
    held, release = threading.Event(), threading.Event()
    monkeypatch.setattr(totals, "roll_up_totals", holding(held, release, HOLD_AT))
    store, inline = new_store(tmp_path / "w.duckdb", True), new_store(tmp_path / "i.duckdb", False)
    try:
        first = [i for i, rows in enumerate(batches) if rows[0]["start_time"] >= HOLD_AT]
        third = [i for i, rows in enumerate(batches) if rows[0]["start_time"] >= HOLD_AT + timedelta(hours=1)]
        for rows in batches[: first[0] + 1]:  # up to the commit that rolls the second hour up
            commit(store, rows)
        assert held.wait(60)
        # the job holds its merge, uncommitted: the writer commits the rest of the hour all the same
        def rest_of_the_hour() -> None:
            for rows in batches[first[0] + 1: third[0]]:
                commit(store, rows)

        done = threading.Thread(target=rest_of_the_hour)
        done.start()
        done.join(60)
        assert not done.is_alive(), "the writer waited for the totals worker"
        reader = Reader(store)
        (rolled,), = reader.query("SELECT rolled_until FROM rollup_state")
        (pairs_until,), = reader.query("SELECT max(pairs_until) FROM totals_state")
        assert rolled == HOLD_AT and (pairs_until is None or pairs_until < rolled)  # a reader sees the totals behind
        assert assert_exact(reader) > 10
        # a late row for an hour the job is totalling: that transaction waits for it, and keeps nothing
        flows = store.query("SELECT count(*) FROM flows")
        late = [dict(batches[3][0], events=1, packets=1)]
        with pytest.raises(TotalsBusy), store.transaction():
            store.insert("flows", _table(late))
        assert store.query("SELECT count(*) FROM flows") == flows
        release.set()
        store.wait_totals()
        commit(store, late)
        for rows in batches[third[0]:]:
            commit(store, rows)
        for rows in [*batches[: third[0]], late, *batches[third[0]:]]:
            commit(inline, rows)
        store.wait_totals()
        assert state(store.con) == state(inline.con)
        assert assert_exact(Reader(store)) > 10
    finally:
        release.set()
        store.close(snapshot=False)
        inline.close(snapshot=False)


CRASH = """
import os, signal, sys, threading
from pathlib import Path
from flowtui.store import totals
from tests.test_store_totals_worker import HOLD_AT, commit, holding, new_store, writes
held, release = threading.Event(), threading.Event()
totals.roll_up_totals = holding(held, release, HOLD_AT)
batches = writes(4)
store = new_store(Path(sys.argv[1]), True)
for i, rows in enumerate(batches):
    commit(store, rows)
    if rows[0]["start_time"] >= HOLD_AT:
        break
assert held.wait(60)
commit(store, batches[i + 1])  # the writer commits on while the job's merge is uncommitted
print(i + 2, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_inside_the_worker_s_transaction_loses_nothing_and_the_next_writer_catches_up(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CRASH, str(db)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    written = int(proc.stdout.split()[-1])
    batches = writes(4)
    store = DuckStore(db, snapshot_interval=None)  # a plain writer first: the state the kill left
    try:
        reader = Reader(store)
        (rolled,), = reader.query("SELECT rolled_until FROM rollup_state")
        (flows_until,), = reader.query("SELECT max(flows_until) FROM totals_state")
        assert rolled == HOLD_AT and (flows_until is None or flows_until < rolled)  # the job's merge is gone
        assert store.query("SELECT sum(events) FROM flows") == [(sum(r["events"] for b in batches[:written]
                                                                     for r in b),)]
        assert assert_exact(reader) > 5
        store.defer_totals()  # the collector's next writer: its worker catches up at once
        store.wait_totals()
        assert reader.query("SELECT flows_until, pairs_until FROM totals_state") == [(HOLD_AT, HOLD_AT)]
        for rows in batches[written:]:
            commit(store, rows)
        store.wait_totals()
        inline = new_store(tmp_path / "i.duckdb", False)
        try:
            for rows in batches:
                commit(inline, rows)
            got, want = state(store.con), state(inline.con)
            for table in ("flow_totals", "pair_totals", "talkers", "rollup_state", "totals_state",
                          *(r.totals.name for r in schema.HOUR_ROLLUPS)):  # (hours: per key, by assert_exact)
                assert got[table] == want[table], table
            assert assert_exact(Reader(store)) > 10
        finally:
            inline.close(snapshot=False)
    finally:
        store.close(snapshot=False)
