"""Whole-store totals and hour compaction, and the worker that keeps them off the writer's commit.

`flow_totals` (the raw flows summed per rule and 5-tuple but the source port), `pair_totals` and
the totals of `schema.HOUR_ROLLUPS` (their hours summed) cover the store up to `totals_state`
(`flows_until`, `pairs_until`). Merging an hour into them scans the totals: 5-11 s at the end of an
hour of 416k flow rows on a store of two such hours (load 3), 19 s under load 25, while at 150k
events/s the reader's pool holds ~4 s of backlog. So the collector's writer no longer merges in its
commit: it rolls the hour up (`rolled_until`, cheap when the hour was folded) and hands the rest
to `TotalsWorker`, which runs on its own cursor, in its own transaction:

1. compact the hours it is about to total (the folded rows of an hour: one row per key);
2. merge the flows from `flows_until` to `rolled_until` into `flow_totals`, and the hours from
   `pairs_until` to `rolled_until` into the hour-summed totals (all of them when `pairs_until` is
   NULL: cleared by a late flow);
3. move `totals_state` to `rolled_until`; commit.

Readers see either side of that commit, both consistent: the views take the totals up to
`totals_state` and the hours and raw flows after it (totals behind `rolled_until` are slower to
read, never wrong). A crash before the commit leaves the totals where they were; the next job
(every hour end, and when a writer starts) catches up from `totals_state`, so nothing is counted
twice or missed. Compaction is storage only (views sum the rows of a key and hour).

The writer and the worker touch different rows (the writer appends the open hour's rows and the
flows; the worker rewrites the totals and the hours before `rolled_until`), except on rare paths
(a late flow for a rolled-up hour, a rule or network set written after its flows, retention):
there the writer must not act on a state the worker is changing, see `DuckStore._quiet_totals`.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

import duckdb

from flowtui.store import schema

log = logging.getLogger(__name__)

_PAIR_KEYS = ("src_ep", "src_ip", "dst_ep", "dst_ip", "proto", "dport", "denied")
_PAIR_SUMS = ("flows", "connections", "packets", "bytes", "reply_packets", "reply_bytes")


class TotalsBusy(Exception):
    """The writer's transaction began before the totals worker's last commit, or while it runs, and
    needs what the worker changes: roll it back, wait for the worker (`DuckStore.wait_totals`), run
    it again."""


def ts(value: datetime) -> str:
    """A TIMESTAMP literal (constants, so DuckDB prunes row groups by their min/max)."""
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def run(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return con.execute(sql, params or []).fetchall()


def totals_state(con: duckdb.DuckDBPyConnection) -> tuple[datetime | None, datetime | None]:
    rows = run(con, "SELECT max(flows_until), max(pairs_until) FROM totals_state")
    return (rows[0][0], rows[0][1]) if rows else (None, None)


def set_totals(con: duckdb.DuckDBPyConnection, flows_until: datetime | None, pairs_until: datetime | None) -> None:
    run(con, "DELETE FROM totals_state")
    run(con, "INSERT INTO totals_state VALUES (?, ?)", [flows_until, pairs_until])


def compact(con: duckdb.DuckDBPyConnection, start: datetime | None, target: datetime, bucket: str = "hour") -> None:
    """The rollup rows of [start, target) as one row per key and `bucket` (an expression of `hour`):
    the folded sums of an hour, or the hours of a day (`DuckStore.compact_days`)."""
    pairs = ("hour, src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied, sum(flows) AS flows, "
             "sum(connections) AS connections, sum(packets) AS packets, sum(bytes) AS bytes, "
             "sum(reply_packets) AS reply_packets, sum(reply_bytes) AS reply_bytes, "
             "min(first_seen) AS first_seen, max(last_seen) AS last_seen")
    rules = ("hour, rule_id, sum(events) AS events, sum(packets) AS packets, min(first_seen) AS first_seen, "
             "max(last_seen) AS last_seen, max(last_hit) AS last_hit")
    within = ("" if start is None else f"hour >= {ts(start)} AND ") + f"hour < {ts(target)}"

    def rows(table: str) -> str:
        return f"(SELECT * REPLACE ({bucket} AS hour) FROM {table} WHERE {within})"

    merged = [(r.hours.name, r.merged(rows(r.hours.name))) for r in schema.HOUR_ROLLUPS]
    for table, select in [(t, f"SELECT {cols} FROM {rows(t)} GROUP BY ALL")
                          for t, cols in (("pair_hours", pairs), ("rule_hours", rules))] + merged:
        run(con, f"CREATE OR REPLACE TEMP TABLE _ft_compact AS {select}")
        run(con, f"DELETE FROM {table} WHERE {within}")
        run(con, f"INSERT INTO {table} BY NAME SELECT * FROM _ft_compact")
        run(con, "DROP TABLE _ft_compact")


def merge_flow_totals(con: duckdb.DuckDBPyConnection, where: str, source: str = "flows") -> None:
    """Add the rows of `source` that `where` keeps to `flow_totals`. In steps over temporary tables,
    not one MERGE: DuckDB builds a MERGE's hash table on the target (7 s for a minute of flows into
    the totals of 10M); a temporary table has exact statistics, so the joins build on it."""
    on = schema.totals_on("t", "a")
    run(con, f"CREATE OR REPLACE TEMP TABLE _ft_new AS {schema.flow_totals_sql(where, source)}")
    run(con, f"CREATE OR REPLACE TEMP TABLE _ft_old AS SELECT t.rowid AS _row, t.* FROM flow_totals t "
             f"SEMI JOIN _ft_new a ON {on}")
    run(con, "DELETE FROM flow_totals WHERE rowid IN (SELECT _row FROM _ft_old)")
    run(con, f"INSERT INTO flow_totals BY NAME SELECT {schema.totals_merge_sql('t', 'a')} FROM _ft_old t "
             f"FULL OUTER JOIN _ft_new a ON {on}")
    run(con, "DROP TABLE _ft_new")
    run(con, "DROP TABLE _ft_old")


def merge_pair_totals(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """Add the `pair_hours` rows that `where` keeps to `pair_totals` (sums, minima and maxima), and
    the hours of every `HOUR_ROLLUPS` table to its totals. Temporary tables, as `merge_flow_totals`:
    the MERGE this replaces took 7 s of an 11 s hour end (two hours of 416k flow rows, load 3)."""
    on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM a.{k}" for k in _PAIR_KEYS)
    sums = ", ".join(f"sum({c}) AS {c}" for c in _PAIR_SUMS)
    both = (f"SELECT {', '.join(_PAIR_KEYS)}, {sums}, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
            "FROM (SELECT * EXCLUDE (_row) FROM _ft_pold UNION ALL BY NAME SELECT * FROM _ft_pnew) GROUP BY ALL")
    run(con, f"CREATE OR REPLACE TEMP TABLE _ft_pnew AS SELECT {', '.join(_PAIR_KEYS)}, {sums}, "
             f"min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM pair_hours WHERE {where} GROUP BY ALL")
    run(con, f"CREATE OR REPLACE TEMP TABLE _ft_pold AS SELECT t.rowid AS _row, t.* FROM pair_totals t "
             f"SEMI JOIN _ft_pnew a ON {on}")
    run(con, "DELETE FROM pair_totals WHERE rowid IN (SELECT _row FROM _ft_pold)")
    run(con, f"INSERT INTO pair_totals BY NAME {both}")
    run(con, "DROP TABLE _ft_pnew")
    run(con, "DROP TABLE _ft_pold")
    for r in schema.HOUR_ROLLUPS:
        merge_hour_totals(con, r, where)


def key_on(r: schema.HourRollup, t: str, a: str) -> str:
    """Equality on a rollup's keys without NULLs (a hash join on plain equality: see `totals_on`)."""
    return " AND ".join(
        f"coalesce({t}.{k}, '') = coalesce({a}.{k}, '')" if r.totals.column(k).sql == "VARCHAR"
        else f"coalesce({t}.{k}::INTEGER, -1) = coalesce({a}.{k}::INTEGER, -1)" for k in r.keys)


def merge_hour_totals(con: duckdb.DuckDBPyConnection, r: schema.HourRollup, where: str) -> None:
    """Add the hours of `r` that `where` keeps to its totals: the totals rows of the same keys are taken
    out and put back merged (temporary tables, as `merge_flow_totals` does, rather than a MERGE)."""
    name = r.totals.name
    run(con, "CREATE OR REPLACE TEMP TABLE _ft_hnew AS "
        + r.merged(f"(SELECT * FROM {r.hours.name} WHERE {where})", with_hour=False))
    run(con, f"CREATE OR REPLACE TEMP TABLE _ft_hold AS SELECT t.rowid AS _row, t.* FROM {name} t "
             f"SEMI JOIN _ft_hnew a ON {key_on(r, 't', 'a')}")
    run(con, f"DELETE FROM {name} WHERE rowid IN (SELECT _row FROM _ft_hold)")
    both = "(SELECT * EXCLUDE (_row) FROM _ft_hold UNION ALL BY NAME SELECT * FROM _ft_hnew)"
    run(con, f"INSERT INTO {name} BY NAME " + r.merged(both, with_hour=False))
    run(con, "DROP TABLE _ft_hnew")
    run(con, "DROP TABLE _ft_hold")


def clear_hour_totals(con: duckdb.DuckDBPyConnection) -> None:
    """Empty every hour-summed totals table (`pair_totals` and those of `HOUR_ROLLUPS`)."""
    for name in ("pair_totals", *(r.totals.name for r in schema.HOUR_ROLLUPS)):
        run(con, f"DELETE FROM {name}")


def roll_up_totals(con: duckdb.DuckDBPyConnection, target: datetime, compact_hours: bool = False) -> None:
    """Bring the totals up to `target` (an hour boundary the hours are rolled up to): the flows from
    `flows_until`, the hours from `pairs_until` (every hour when it is NULL). With `compact_hours`,
    the hours about to be added are compacted first (the worker: the writer left them folded)."""
    flows_until, pairs_until = totals_state(con)
    old_flows = flows_until
    if flows_until is None or flows_until < target:
        since = "" if flows_until is None else f"start_time >= {ts(flows_until)} AND "
        merge_flow_totals(con, f"{since}start_time < {ts(target)}")
        flows_until = target
    if compact_hours:  # the hours rolled up since the last job: from where either total stopped
        lo = min((b for b in (old_flows, pairs_until) if b is not None), default=None)
        if lo is None or lo < target:
            compact(con, lo, target)
    if pairs_until is not None and pairs_until <= target:
        if pairs_until < target:
            merge_pair_totals(con, f"hour >= {ts(pairs_until)} AND hour < {ts(target)}")
    else:  # none yet, cleared, or past the hours (which were unrolled): every hour again
        clear_hour_totals(con)
        merge_pair_totals(con, f"hour < {ts(target)}")
    set_totals(con, flows_until, target)


class TotalsWorker:
    """One thread, one cursor: each job brings the totals up to the committed `rolled_until` in one
    transaction (see the module docstring). Jobs asked for while one runs coalesce into the next."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con.cursor()  # its own connection to the same database: its own transaction
        self._cond = threading.Condition()
        self._wanted = False
        self._running = False
        self._closed = False
        self.generation = 0  # jobs committed (or failed): the writer's guard compares it
        self.jobs = 0
        self.seconds = 0.0
        self.longest = 0.0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="flowtui totals", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._wanted or self._running

    def submit(self) -> None:
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def wait(self) -> None:
        """Until no job is asked for or running."""
        with self._cond:
            while (self._wanted or self._running) and self._thread.is_alive():
                self._cond.wait(0.5)

    def close(self) -> None:
        self.wait()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self.con.close()

    def _loop(self) -> None:
        import os
        import time

        try:  # the writer first: a job may take longer, the writer's queue must not wait (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while True:
            with self._cond:
                while not self._wanted and not self._closed:
                    self._cond.wait()
                if not self._wanted:
                    return
                self._wanted, self._running = False, True
            t0 = time.perf_counter()
            try:
                self._job()
            except Exception:  # the totals stay where they were: the next job catches up
                self.errors += 1
                log.exception("bringing the flow totals up to date failed")
                try:
                    run(self.con, "ROLLBACK")
                except duckdb.Error:
                    pass
            took = time.perf_counter() - t0
            with self._cond:
                self.jobs += 1
                self.seconds += took
                self.longest = max(self.longest, took)
                self.generation += 1
                self._running = False
                self._cond.notify_all()

    def _job(self) -> None:
        run(self.con, "BEGIN TRANSACTION")
        rolled = run(self.con, "SELECT max(rolled_until) FROM rollup_state")[0][0]
        if rolled is None or totals_state(self.con) == (rolled, rolled):
            run(self.con, "ROLLBACK")
            return
        # DuckDB's other threads would run the job's pipelines at the writer's priority (under load
        # the writer and the reader lost CPU to them): one thread, this one, meanwhile. The setting is
        # the database's, so the writer's own statements run on one thread too until the job ends.
        threads = run(self.con, "SELECT current_setting('threads')")[0][0]
        run(self.con, "SET threads = 1")
        try:
            roll_up_totals(self.con, rolled, compact_hours=True)
            run(self.con, "COMMIT")
        finally:
            run(self.con, f"SET threads = {int(threads)}")
