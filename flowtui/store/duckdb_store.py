"""The DuckDB flow store: one writer, batched Arrow inserts, retention, snapshots for readers.

**Writing.** Only `DuckStore` writes, from one thread, and only in batches: an Arrow table per
insert (`INSERT ... BY NAME SELECT` from Arrow runs at ~1M rows/s here; row-by-row inserts at ~1k/s).

**Reading while the collector writes.** DuckDB lets one process open a database file for
writing and then refuses every other process, *even read-only* ("Could not set lock on file",
measured with DuckDB 2.0 here). So readers never open the live file while a collector runs:

1. The writer owns checkpoints (`checkpoint_threshold` is set out of reach, so DuckDB never
   checkpoints on its own). Between two checkpoints every commit goes to the `.wal` file only,
   so the main file is a consistent, complete database as of the last checkpoint.
2. Every `snapshot_interval` seconds the writer checkpoints and a background thread copies the
   main file (in the kernel: `copy_file_range`, no WAL) to a new file of unpredictable name next
   to it (`enforcer.safefile`: `O_EXCL|O_NOFOLLOW`, mode 0600) and renames it to
   `<name>.snapshot.duckdb`, while inserts continue into the WAL. The next
   checkpoint waits until the copy is done. The interval stretches to 20x the copy time so
   copying a large database never takes more than ~5% of the time.
   The copy reads through a descriptor opened once, right after DuckDB opened the file, and
   closed only after DuckDB closed it: DuckDB's lock is a POSIX `fcntl` lock, which the kernel
   drops when the process closes *any* descriptor of the file (a plain `shutil.copyfile`
   would silently unlock the live database for other writers).
3. Readers (the TUI, `flowtui status`, `duckdb -readonly x.snapshot.duckdb`, any SQL tool) open
   the snapshot read-only: any number at once, never blocking the writer. The rename is atomic;
   a reader keeps the version it opened until it reconnects, so a live view reconnects on each
   poll (opening a read-only snapshot and counting a table took ~30 ms here, under load).
4. Without a running collector, readers may open the main file read-only as well;
   `open_reader()` tries the main file first and falls back to the snapshot.

Data in the snapshot is at most `snapshot_interval` (+ the copy time) old.

**Retention.** `retain(...)` deletes rows older than the configured age per table (events
first: they are the bulk); flows by whole hours, rolled up first: their hourly rollups stay until
`Retention.rollups` (compacted hours, `rollup_state.compacted_until`); DuckDB reuses the freed
blocks after the next checkpoint.

**Rollups.** `insert("flows", ...)` moves `rollup_state.rolled_until` back to the hour of the
batch's first flow, in the same transaction; `roll_up()` rolls the hours from there up to a
given time into `pair_hours` (from the raw flows, so it is also how they are rebuilt) and merges
their talkers into `talkers` (first/last seen: min/max, so merging an hour again is harmless;
retention, which deletes flows, rebuilds it);
`end_run()` rolls up everything. Any writer of flows that uses this API keeps them exact.
The collector's writer also calls `fold()` with each batch of closed buckets: the batch is summed
into the rollups of its hour at once (a few hundred rows a second instead of the whole hour at its
end, which took 1-4 s for 416k flow rows, the writer away from its queue all that time), and
`roll_up` of an hour whose every flow was folded only compacts those sums. Late rows for a bucket
already folded, flows from before this writer, or a roll-up from the raw flows in between mark
the hour, which is then rolled up from its raw flows as before (in-memory state: a new writer
starts over, which is also what makes a crash safe).
Each roll-up also merges its hours into `flow_totals` (whole-store sums per rule and 5-tuple but the
source port, ports as lists) and `pair_totals` (pair_hours summed); flows inserted for hours the
totals already hold are merged into `flow_totals` in the insert's transaction, and retention sums
the keys of the flows it deletes again from the flows that stay.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from enforcer.safefile import PRIVATE, commit, create_temp
from flowtui.store import netsets, reroll, schema, totals
from flowtui.store.totals import TotalsBusy, TotalsWorker

log = logging.getLogger(__name__)
__all__ = ["DuckStore", "Retention", "StoreStats", "TotalsBusy", "open_reader", "snapshot_path", "utcnow"]

TIME_COLUMN = {
    "events": "time",
    "flows": "end_time",
    "connections": "time",
    "loss": "time",
    "stats": "time",
    "rule_counters": "time",
}


def snapshot_path(db: Path | str) -> Path:
    """`flows.duckdb` -> `flows.snapshot.duckdb`, next to it."""
    db = Path(db)
    return db.with_name(f"{db.stem}.snapshot{db.suffix or '.duckdb'}")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Retention:
    """How long to keep rows, per table (None = forever)."""

    events: timedelta | None = timedelta(hours=24)
    flows: timedelta | None = timedelta(days=30)
    connections: timedelta | None = timedelta(days=30)
    counters: timedelta | None = timedelta(days=30)  # loss, stats, rule_counters
    # The hourly rollups (pair_hours, rule_hours, talkers) outlive the raw flows: the questions
    # about last month stay answerable, 15 s buckets compacted into hours.
    rollups: timedelta | None = timedelta(days=365)
    # After this, the hours of each whole day (pair_hours, rule_hours) are compacted into one row
    # per key and day: a year of rollups is ~365 rows per key, not ~8,760 (None: hours forever).
    hourly: timedelta | None = timedelta(hours=48)

    def per_table(self) -> dict[str, timedelta | None]:
        return {
            "events": self.events,
            "flows": self.flows,
            "connections": self.connections,
            "loss": self.counters,
            "stats": self.counters,
            "rule_counters": self.counters,
        }


@dataclass
class StoreStats:
    inserted: dict[str, int] = field(default_factory=dict)
    insert_seconds: float = 0.0
    checkpoints: int = 0
    checkpoint_seconds: float = 0.0
    snapshots: int = 0
    snapshot_seconds: float = 0.0
    deleted: int = 0
    hours_folded: int = 0  # rolled up by compacting what `fold` summed during the hour
    hours_recomputed: int = 0  # rolled up from their raw flows
    days_compacted: int = 0  # hourly rollups compacted into days by retention
    rules_rolled_again: int = 0  # new or changed rule ids of batches written after flows of some of them


class DuckStore:
    """The single writer of one DuckDB flow database."""

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int | None = None,
        snapshot_interval: float | None = 5.0,
        memory_limit: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self.con = duckdb.connect(str(self.path))
        self.con.execute("SET checkpoint_threshold = '1000GB'")  # we checkpoint ourselves
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")
        existing = {
            (str(t), str(c))
            for t, c in self.con.execute(
                "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main'"
            ).fetchall()
        }
        # One transaction: a store from before opens upgraded (tables, columns, rollups it lacked
        # built from its flows) or, after a crash, as it was.
        self.con.execute("BEGIN TRANSACTION")
        for stmt in schema.statements(existing):
            self.con.execute(stmt)
        tables = {t for t, _c in existing}
        if existing and "talkers" not in tables:  # rolled up before talkers existed
            _rebuild_talkers(self.con)
        if existing and "rule_hours" not in tables:  # nor rule_hours: roll the same hours up again
            until = self.con.execute("SELECT max(rolled_until) FROM rollup_state").fetchone()
            if until is not None and until[0] is not None:
                rolled = schema.rule_hours_sql(f"f.start_time < {_ts(until[0])}")
                self.con.execute("INSERT INTO rule_hours BY NAME " + rolled)
        if existing and "totals_state" not in tables:  # nor the totals: built once from the rolled-up hours
            _rebuild_totals(self.con)
        self._nets = netsets.networks(self.con)
        # what the rollups know of each rule id: a rule written again unchanged (a collector stores
        # every rule it knows when it starts) rolls nothing up again
        self._rule_shapes = self._stored_rule_shapes()
        if existing and "netset_sources" not in tables:
            netsets.new_members(self.con, netsets.flow_sources(self.con), self._nets)
        for r in schema.HOUR_ROLLUPS:  # nor this rollup: its rolled-up hours (and totals) built once
            if existing and r.hours.name not in tables:
                _rebuild_hour_rollup(self.con, r)
        self.con.execute("COMMIT")
        self.stats = StoreStats()
        self.snapshot_interval = snapshot_interval
        self._snap_lock = threading.Lock()  # held while a checkpoint or a snapshot copy runs
        self._snap_thread: threading.Thread | None = None
        self._last_snapshot = 0.0
        self._snap_cost = 0.0
        self._lock = threading.RLock()  # one statement (or one transaction) at a time on self.con
        self._in_transaction = False
        # `fold`: per hour not yet rolled up, the newest bucket start summed into its rollups, or
        # None when the hour has flows that were not (it is then recomputed from its raw flows)
        self._folded: dict[datetime, datetime | None] = {}
        self._unfolded: pa.Table | None = None  # the last flows inserted, until `fold` takes them
        # `defer_totals()`: the totals and the compaction of rolled-up hours run on this worker
        self._worker: TotalsWorker | None = None
        self._txn_generation = 0  # the worker's generation when the open transaction began
        self._after_commit = False  # a roll-up in the open transaction has work for the worker
        # Opened once, closed after DuckDB: see "Reading while the collector writes".
        self._read_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        if created:  # a store we made is private, whatever the umask (as its snapshots are)
            os.fchmod(self._read_fd, PRIVATE)

    # ---------------------------------------------------------------------------------------
    # Inserts

    def insert(self, table: str, data: pa.Table) -> int:
        """Append an Arrow table whose columns are exactly the table's (by name, any order); a
        writer that does not have the table's optional columns leaves them out (NULL)."""
        if data.num_rows == 0:
            return 0
        if self._in_transaction:  # the caller's transaction: a TotalsBusy is the caller's to retry
            return self._insert(table, data)
        try:
            return self._insert(table, data)
        except TotalsBusy:  # rolled back: again, once the totals worker is done
            self.wait_totals()
            return self._insert(table, data)

    def _insert(self, table: str, data: pa.Table) -> int:
        given = data  # what `fold` will be handed
        want = schema.BY_NAME[table].full_arrow_schema
        if data.schema.names != want.names:
            missing = [f for f in want if f.name not in data.schema.names]
            for f in missing:
                if not schema.BY_NAME[table].column(f.name).optional:
                    raise KeyError(f"{table}: the batch has no column {f.name!r}")
                data = data.append_column(f, pa.nulls(data.num_rows, f.type))
            data = data.select(want.names)
        t0 = time.perf_counter()
        with self._lock, self._atomic():
            # by name: a store upgraded in place by several versions has its columns in the order
            # they were added (ALTER TABLE appends), not necessarily the DDL's
            self.con.register("_ft_batch", data)
            try:
                self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _ft_batch")
                first = pc.min(data.column("start_time")).as_py() if table == "flows" else None
                if first is not None and self._worker is not None:
                    rolled, flows_until = self.query("SELECT (SELECT max(rolled_until) FROM rollup_state), "
                                                     "(SELECT max(flows_until) FROM totals_state)")[0]
                    if any(b is not None and first < b for b in (rolled, flows_until)):
                        self._quiet_totals()  # late rows for hours the worker may be totalling
                totals_until = self._totals_state()[0] if first is not None else None
                if first is not None and totals_until is not None and first < totals_until:
                    # flows for hours the totals hold already (late, or imported out of order): merged
                    # in now, as sums, minima and unions of source ports merge
                    self._merge_flow_totals(f"start_time < {_ts(totals_until)}", "_ft_batch")
                if table == "rules":
                    self._reroll_rules()
                if table == "flows" and self._nets:  # sources never seen before may be network set members
                    srcs = [r[0] for r in self.query("SELECT DISTINCT src_ip FROM _ft_batch")]
                    netsets.new_members(self.con, srcs, self._nets)
                if table == "endpoints" and self.query("SELECT 1 FROM _ft_batch WHERE type = 'netset' LIMIT 1"):
                    self._nets = netsets.networks(self.con)  # sources seen before may be members now
                    fresh = netsets.new_members(self.con, netsets.flow_sources(self.con), self._nets)
                    if fresh:
                        quoted = ", ".join("'" + a.replace("'", "''") + "'" for a in fresh)
                        self._reroll([schema.DENYLISTED], f"src_ip IN ({quoted})")
                        reroll.missed(self.con, f"SELECT 1 FROM talkers WHERE src_ip IN ({quoted}) AND first_seen < ?",
                                      reroll.floor(self.compacted_until(), self.days_until()))
            finally:
                self.con.unregister("_ft_batch")
            if table == "flows":  # hours already rolled up must be rolled up again
                if first is not None:
                    self._unroll_from(first)
                self._not_folded()
                self._unfolded = given
        self.stats.insert_seconds += time.perf_counter() - t0
        rows: int = data.num_rows
        self.stats.inserted[table] = self.stats.inserted.get(table, 0) + rows
        return rows

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Small tables only (rules, endpoints, loss, stats): rows as dicts, still one insert."""
        if not rows:
            return 0
        tschema = schema.BY_NAME[table].full_arrow_schema
        data = pa.Table.from_pylist([{n: r.get(n) for n in tschema.names} for r in rows], schema=tschema)
        return self.insert(table, data)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all (a crash keeps none of it)."""
        with self._lock:
            if self._in_transaction:
                yield
                return
            self._txn_generation = self._worker.generation if self._worker is not None else 0
            folded, unfolded = dict(self._folded), self._unfolded
            self.con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                self._rule_shapes = self._stored_rule_shapes()  # a rule rolled back is not known
                self._folded, self._unfolded = folded, unfolded  # as the store is again
                self._after_commit = False
                raise
            else:
                self.con.execute("COMMIT")
            finally:
                self._in_transaction = False
            if self._after_commit and self._worker is not None:
                self._after_commit = False
                self._worker.submit()

    # ---------------------------------------------------------------------------------------
    # The totals worker (see flowtui/store/totals.py)

    def defer_totals(self) -> None:
        """From now on a roll-up leaves the totals (and the compaction of the hours it rolled up) to a
        worker with its own cursor and transaction: the collector's writer never waits for them. The
        worker starts by catching up, if the totals are behind the rolled-up hours (a crash)."""
        if self._worker is None:
            self._worker = TotalsWorker(self.con)
            self._worker.submit()

    @property
    def totals_busy(self) -> bool:
        return self._worker is not None and self._worker.busy

    def wait_totals(self) -> None:
        if self._worker is not None:
            self._worker.wait()

    def _quiet_totals(self) -> None:
        """Before the writer reads or changes what the worker changes (the totals, the hours before
        `rolled_until`): outside a transaction, wait for it; inside one, which may have begun before
        the worker's last commit (its snapshot would not show it), raise `TotalsBusy` unless the
        worker has been idle all along."""
        w = self._worker
        if w is None:
            return
        if not self._in_transaction:
            w.wait()
        elif w.busy or w.generation != self._txn_generation:
            raise TotalsBusy("the totals worker ran during this transaction")

    def _stored_rule_shapes(self) -> dict[int, tuple[Any, Any, Any]]:
        """What the rollups know of each rule id (kind, direction, action), from `rules`."""
        return {int(i): (k, d, a) for i, k, d, a in self.con.execute(
            "SELECT id, kind, direction, action FROM rules").fetchall()}

    def _atomic(self) -> AbstractContextManager[None]:
        return self.transaction()

    # ---------------------------------------------------------------------------------------
    # Rollups (see schema.PAIR_HOURS): part of the writer API, so every writer of flows keeps them

    def rolled_until(self) -> datetime | None:
        row = self.query("SELECT max(rolled_until) FROM rollup_state")
        value: datetime | None = row[0][0] if row else None
        return value

    def compacted_until(self) -> datetime | None:
        row = self.query("SELECT max(compacted_until) FROM rollup_state")
        value: datetime | None = row[0][0] if row else None
        return value

    def days_until(self) -> datetime | None:
        row = self.query("SELECT max(days_until) FROM rollup_state")
        value: datetime | None = row[0][0] if row else None
        return value

    def _unroll_from(self, first: datetime) -> None:
        """Flows from `first` on changed: the hours from its hour on are no longer rolled up
        (except compacted hours and days: their rollups are all that is left of their raw flows,
        or are summed per day, which an hour's flows cannot be taken out of)."""
        hour = first.replace(minute=0, second=0, microsecond=0)
        for floor in (self.compacted_until(), self.days_until()):
            if floor is not None:
                hour = max(hour, floor)
        rolled = self.rolled_until()
        if rolled is not None and hour < rolled:  # hours the worker may be compacting and totalling
            self._quiet_totals()
        self.con.execute("UPDATE rollup_state SET rolled_until = ? WHERE rolled_until > ?", [hour, hour])
        flows_until, pairs_until = self._totals_state()
        if pairs_until is not None and pairs_until > hour:  # its pair_hours will be rolled up again
            self._clear_hour_totals()
            self._set_totals(flows_until, None)

    def flows_changed(self, first: datetime | None) -> None:
        """For writers that change `flows` with SQL rather than `insert` (recovery)."""
        if first is not None:
            self._quiet_totals()
            with self.transaction():
                flows_until, pairs_until = self._totals_state()
                if flows_until is not None and first < flows_until:  # rows we cannot tell apart: rebuilt
                    self.query("DELETE FROM flow_totals")
                    self._set_totals(None, pairs_until)
                self._unroll_from(first)
                self._folded.update({h: None for h in self._folded if h >= _hour(first)})

    def _not_folded(self) -> None:
        """The last flows inserted were not folded: their hours are recomputed from raw flows."""
        if self._unfolded is not None:
            for h in pc.unique(pc.floor_temporal(self._unfolded.column("start_time"), unit="hour")).to_pylist():
                if h in self._folded:
                    self._folded[h] = None
            self._unfolded = None

    def roll_up(self, until: datetime | None = None, max_hours: int | None = None) -> int:
        """Roll up the flows of the hours before `until` (rounded down to an hour; default: every
        hour with flows) that are not yet; at most `max_hours` at a time (a writer catching up
        on a large store spreads the work). Returns the hours rolled up."""
        with self.transaction():
            start = self.rolled_until()
            if start is None:
                first = self.query("SELECT min(start_time) FROM flows")[0][0]
                if first is None:
                    return 0
                start = first.replace(minute=0, second=0, microsecond=0)
            if until is None:
                last = self.query("SELECT max(start_time) FROM flows")[0][0]
                if last is None:
                    return 0
                target = last.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            else:
                target = until.replace(minute=0, second=0, microsecond=0)
            if max_hours is not None:
                target = min(target, start + timedelta(hours=max_hours))
            if target <= start:
                return 0
            self._not_folded()
            hours = [start + timedelta(hours=i) for i in range(int((target - start) / timedelta(hours=1)))]
            if all(self._folded.get(h) is not None for h in hours):  # every flow of them folded
                if self._worker is None:  # else the worker compacts them, before it adds them to the totals
                    self._compact(start, target)
                self._set_state(target, self.compacted_until())
                self._roll_up_totals(start, target)
                for h in hours:
                    del self._folded[h]
                self.stats.hours_folded += len(hours)
                return len(hours)
            # from the raw flows (the rows of later hours stay: each hour's go when it is rolled up)
            for h in hours:
                self._folded.pop(h, None)
            self.stats.hours_recomputed += len(hours)
            self.query("DELETE FROM pair_hours WHERE hour >= ? AND hour < ?", [start, target])
            self.query(
                "INSERT INTO pair_hours BY NAME "
                + schema.pair_hours_sql(f"f.start_time >= {_ts(start)} AND f.start_time < {_ts(target)}")
            )
            self.query("DELETE FROM rule_hours WHERE hour >= ? AND hour < ?", [start, target])
            self.query(
                "INSERT INTO rule_hours BY NAME "
                + schema.rule_hours_sql(f"f.start_time >= {_ts(start)} AND f.start_time < {_ts(target)}")
            )
            for r in schema.HOUR_ROLLUPS:
                self.query(f"DELETE FROM {r.hours.name} WHERE hour >= ? AND hour < ?", [start, target])
                self.query(f"INSERT INTO {r.hours.name} BY NAME "
                           + r.rows_sql(f"f.start_time >= {_ts(start)} AND f.start_time < {_ts(target)}"))
            self._merge_talkers(f"start_time >= {_ts(start)} AND start_time < {_ts(target)}")
            self._set_state(target, self.compacted_until())
            self._roll_up_totals(start, target)
            return int((target - start) / timedelta(hours=1))

    def fold(self, batch: pa.Table) -> int:
        """Sum the flows just inserted (`batch`: closed buckets, every reporter's rows of each)
        into the rollups of their hours, which are not rolled up yet; `roll_up` then only compacts
        the hour. Returns the rows folded (0: nothing, the hours will be recomputed)."""
        pending, self._unfolded = self._unfolded, None
        if pending is None or id(pending) != id(batch):  # not the flows just inserted: recompute
            self._unfolded = batch
            self._not_folded()
            return 0
        if batch.num_rows == 0:
            return 0
        starts = batch.column("start_time")
        hours = pc.floor_temporal(starts, unit="hour")
        spans = pa.table({"hour": hours, "start": starts}).group_by("hour", use_threads=False).aggregate(
            [("start", "min"), ("start", "max"), ("start", "count")])
        folded = 0
        with self.transaction():
            rolled = self.rolled_until()
            first_hour = min(spans.column("hour").to_pylist())
            if rolled is None:  # nothing rolled up yet: start at this batch if no flow is older
                if self.query("SELECT count(*) FROM flows WHERE start_time < ?", [first_hour])[0][0]:
                    return 0
                rolled = first_hour
                self._set_state(rolled, self.compacted_until())
            for hour, lo, hi, n in zip(*(spans.column(c).to_pylist() for c in
                                         ("hour", "start_min", "start_max", "start_count")), strict=True):
                if hour < rolled:  # rolled up, or compacted: `insert` has unrolled it (or keeps it raw)
                    continue
                if hour not in self._folded:  # this writer's first rows of the hour: are they all of it?
                    end = hour + timedelta(hours=1)
                    have = self.query("SELECT count(*) FROM flows WHERE start_time >= ? AND start_time < ?",
                                      [hour, end])[0][0]
                    self._folded[hour] = None if have != n else datetime.min
                    if have == n:  # left by a roll-up of the partial hour (end of a run)
                        self.query("DELETE FROM pair_hours WHERE hour = ?", [hour])
                        self.query("DELETE FROM rule_hours WHERE hour = ?", [hour])
                        for r in schema.HOUR_ROLLUPS:
                            self.query(f"DELETE FROM {r.hours.name} WHERE hour = ?", [hour])
                through = self._folded[hour]
                if through is None or lo <= through:  # late rows of a folded bucket: recompute
                    self._folded[hour] = None
                    continue
                where = f"start_time >= {_ts(lo)} AND start_time <= {_ts(hi)}"
                self.query("INSERT INTO pair_hours BY NAME " + schema.pair_hours_sql("f." + where))
                self.query("INSERT INTO rule_hours BY NAME " + schema.rule_hours_sql("f." + where))
                for r in schema.HOUR_ROLLUPS:
                    self.query(f"INSERT INTO {r.hours.name} BY NAME " + r.rows_sql("f." + where))
                self._merge_talkers(where)
                self._folded[hour] = hi
                folded += n
        return folded

    def _compact(self, start: datetime | None, target: datetime, bucket: str = "hour") -> None:
        with self._lock:
            totals.compact(self.con, start, target, bucket)

    def _totals_state(self) -> tuple[datetime | None, datetime | None]:
        with self._lock:
            return totals.totals_state(self.con)

    def _set_totals(self, flows_until: datetime | None, pairs_until: datetime | None) -> None:
        with self._lock:
            totals.set_totals(self.con, flows_until, pairs_until)

    def _roll_up_totals(self, start: datetime, target: datetime) -> None:
        """`flow_totals` takes the flows from where it stops to `target`; the hour-summed totals the
        hours from where they stop (all of them again when cleared); see `totals.roll_up_totals`."""
        if self._worker is not None:  # the worker's, after this transaction commits
            self._after_commit = True
            return
        with self._lock:
            totals.roll_up_totals(self.con, target)

    def _merge_flow_totals(self, where: str, source: str = "flows") -> None:
        with self._lock:
            totals.merge_flow_totals(self.con, where, source)

    def _merge_pair_totals(self, where: str) -> None:
        with self._lock:
            totals.merge_pair_totals(self.con, where)

    def _clear_hour_totals(self) -> None:
        with self._lock:
            totals.clear_hour_totals(self.con)

    def _reroll_rules(self) -> None:
        """Rules just inserted (`_ft_batch`) whose flows came first: the rollups that read `rules` are
        made again from those flows (see `flowtui.store.reroll`): the rows of the rule ids of a kind a
        rollup singles out, and `pair_hours` of the hours with flows of the egress rules among them
        (`flows_once` takes the source's counts from its egress rows: an unknown rule's rows counted
        as ingress; a whole hour costs ~1.7 s at 10M flow rows a day, so only when it changes)."""
        ids, egress = [], []
        for i, kind, direction, action in self.query("SELECT DISTINCT id, kind, direction, action FROM _ft_batch"):
            before = self._rule_shapes.get(int(i))
            if before != (kind, direction, action):
                self._rule_shapes[int(i)] = (kind, direction, action)
                ids.append(int(i))
                if (before is not None and before[1] == "egress") != (direction == "egress"):
                    egress.append(int(i))
        listed = ", ".join(map(str, ids))
        if not ids or not self.query(f"SELECT 1 FROM flows WHERE rule_id IN ({listed}) LIMIT 1"):
            return
        self._quiet_totals()  # the rows made again include hours and totals the worker may be changing
        self._not_folded()  # a batch inserted but not yet folded: its hours are made again at roll-up
        rolled, days = self.rolled_until(), self.days_until()
        since = reroll.floor(self.compacted_until(), days)
        for h in self._folded:  # hours folded before the rule was known: made again from raw flows
            if rolled is None or h >= rolled:
                self._folded[h] = None
        if rolled is not None and egress:
            reroll.pair_hours(self.con, egress, since, rolled, days, self._totals_state()[1])
        reroll.missed(self.con, f"SELECT 1 FROM rule_hours WHERE rule_id IN ({listed}) AND hour < ?", since)
        rollups = [r for r in schema.HOUR_ROLLUPS if r.kinds]
        kinds = sorted({k for r in rollups for k in r.kinds})
        self.stats.rules_rolled_again += len(ids)
        kind_ids = [int(i) for (i,) in self.query(f"SELECT DISTINCT id FROM _ft_batch WHERE id IN ({listed}) "
                                                  f"AND kind IN {tuple(kinds)}")]
        if kind_ids:
            self._reroll(rollups, f"rule_id IN ({', '.join(map(str, kind_ids))})")

    def _reroll(self, rollups: Sequence[schema.HourRollup], keys: str) -> None:
        """The rows of `rollups` whose keys `keys` keeps, made again from their raw flows (hours rolled
        up or folded, and compacted days; hours without raw flows keep what they have), and their totals."""
        self._quiet_totals()
        self._not_folded()
        days = self.days_until()
        reroll.hour_rollups(self.con, rollups, keys, reroll.floor(self.compacted_until(), days), days,
                            self._totals_state()[1])

    def _forget_flow_totals(self, where: str) -> Any:
        """Before the flows that `where` keeps are deleted: the totals of their keys are computed again
        from the flows that stay (call `_recount_flow_totals` after the delete)."""
        flows_until = self._totals_state()[0]
        if flows_until is None:
            return None
        keys = ", ".join(schema.TOTALS_KEYS)
        self.query(f"CREATE OR REPLACE TEMP TABLE _ft_gone AS SELECT DISTINCT {keys} FROM flows WHERE {where}")
        return flows_until

    def _recount_flow_totals(self, flows_until: datetime | None) -> None:
        if flows_until is None:
            return
        self.query(f"DELETE FROM flow_totals t USING _ft_gone g WHERE {schema.totals_on('t', 'g')}")
        self.query(
            "INSERT INTO flow_totals BY NAME "
            + schema.flow_totals_sql(f"start_time < {_ts(flows_until)}",
                                     f"flows f SEMI JOIN _ft_gone g ON {schema.totals_on('f', 'g')}")
        )
        self.query("DROP TABLE _ft_gone")

    def _set_state(self, rolled_until: datetime, compacted_until: datetime | None) -> None:
        days = self.days_until()
        complete = self.query("SELECT max(complete_from) FROM rollup_state")[0][0]
        self.query("DELETE FROM rollup_state")
        self.query("INSERT INTO rollup_state (rolled_until, compacted_until, days_until, complete_from) "
                   "VALUES (?, ?, ?, ?)", [rolled_until, compacted_until, days, complete])

    def compact_days(self, before: datetime) -> int:
        """Compact the rollup hours of the whole days before `before` (rounded down to a day, and to
        the last whole rolled-up day) into one row per key and day; returns the days compacted. Sums
        of sums, minima of minima: the day rows answer exactly what their hours did, for windows of
        whole days (`rollup_state.days_until`)."""
        self._quiet_totals()
        with self.transaction():
            rolled = self.rolled_until()
            if rolled is None:
                return 0
            target = _day(min(before, rolled))
            done = self.days_until()
            if done is not None and target <= done:
                return 0
            days = self.query("SELECT count(DISTINCT date_trunc('day', hour)) FROM pair_hours WHERE hour >= ? "
                              "AND hour < ?", [done or datetime.min, target])[0][0]
            self._compact(done, target, "date_trunc('day', hour)")
            self.query("UPDATE rollup_state SET days_until = ?", [target])
            return int(days)

    def _rollup_cut(self, cut: datetime) -> datetime:
        """Where rollups older than `cut` end: a compacted day goes only once all of it is older."""
        days = self.days_until()
        return _day(cut) if days is not None and cut < days else cut

    def _merge_talkers(self, where: str) -> None:
        """Merge the talkers of the flows `where` keeps into `talkers` (min/max: idempotent)."""
        on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM s.{k}" for k in ("src_ip", "dst_ip", "proto", "dport"))
        self.query(
            f"MERGE INTO talkers t USING ({schema.talkers_sql(where)}) s ON {on} "
            "WHEN MATCHED THEN UPDATE SET first_seen = least(t.first_seen, s.first_seen), "
            "last_seen = greatest(t.last_seen, s.last_seen) WHEN NOT MATCHED THEN INSERT BY NAME"
        )

    def _rebuild_pair_totals(self) -> None:
        flows_until, pairs_until = self._totals_state()
        self._clear_hour_totals()
        if pairs_until is not None:
            self._merge_pair_totals(f"hour < {_ts(pairs_until)}")

    def _rebuild_talkers(self) -> None:
        with self._lock:
            _rebuild_talkers(self.con)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.con.execute(sql, params or []).fetchall()

    def read_table(self, table: str) -> pa.Table:
        """A whole (small) table as Arrow: what a node publishes of its rules, endpoints, runs."""
        if table not in schema.BY_NAME:
            raise KeyError(f"no table {table!r}")
        return self.read_query(f"SELECT * FROM {table}")

    def read_query(self, sql: str) -> pa.Table:
        """A query's rows as Arrow (the writer's connection, under its lock)."""
        with self._lock:
            result: pa.Table = self.con.sql(sql).to_arrow_table()
            return result

    def next_id(self, table: str, column: str) -> int:
        value: Any = self.query(f"SELECT coalesce(max({column}), 0) + 1 FROM {table}")[0][0]
        return int(value)

    # ---------------------------------------------------------------------------------------
    # Runs and sources

    def begin_run(self, config: Mapping[str, Any]) -> int:
        run_id = self.next_id("runs", "run_id")
        now = utcnow()
        self.insert_rows(
            "runs",
            [
                {
                    "run_id": run_id,
                    "started": now,
                    "heartbeat": now,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "config": json.dumps(config, default=str, sort_keys=True),
                }
            ],
        )
        return run_id

    def end_run(self, run_id: int) -> None:
        self.roll_up()
        now = utcnow()
        self.query("UPDATE runs SET ended = ?, heartbeat = ?, outcome = 'stopped' WHERE run_id = ?", [now, now, run_id])

    def heartbeat(self, run_id: int) -> None:
        """The run is alive (see `runs.heartbeat`)."""
        self.query("UPDATE runs SET heartbeat = ? WHERE run_id = ?", [utcnow(), run_id])

    def add_source(self, run_id: int, netns: str | None, node: str, groups: Iterable[int], rcvbuf: int) -> int:
        source_id = self.next_id("sources", "source_id")
        self.insert_rows(
            "sources",
            [
                {
                    "source_id": source_id,
                    "run_id": run_id,
                    "netns": netns,
                    "node": node,
                    "groups": ",".join(str(g) for g in groups),
                    "rcvbuf": rcvbuf,
                }
            ],
        )
        return source_id

    # ---------------------------------------------------------------------------------------
    # Maintenance: checkpoints, snapshots, retention

    def checkpoint(self, wait: bool = True) -> bool:
        """Checkpoint unless a snapshot copy is running (then wait, or skip if `wait` is False)."""
        if self.totals_busy and not wait:
            return False
        self.wait_totals()
        if not self._snap_lock.acquire(blocking=wait):
            return False
        try:
            t0 = time.perf_counter()
            with self._lock:
                self.con.execute("CHECKPOINT")
            self.stats.checkpoints += 1
            self.stats.checkpoint_seconds += time.perf_counter() - t0
            return True
        finally:
            self._snap_lock.release()

    def snapshot_due(self) -> bool:
        if self.snapshot_interval is None or self.snapshot_running or self.totals_busy:
            return False  # (no checkpoint while the totals worker's transaction is open)
        interval = max(self.snapshot_interval, 20 * self._snap_cost)
        return time.monotonic() - self._last_snapshot >= interval

    @property
    def snapshot_running(self) -> bool:
        return self._snap_thread is not None and self._snap_thread.is_alive()

    def snapshot(self, wait: bool = False) -> bool:
        """Checkpoint, then copy the main file to the snapshot path in the background."""
        if self.snapshot_running:
            if not wait:
                return False
            self.wait_snapshot()
        if not self.checkpoint(wait=True):
            return False
        self._snap_lock.acquire()
        self._last_snapshot = time.monotonic()
        self._snap_thread = threading.Thread(target=self._copy, name="flowtui snapshot", daemon=True)
        self._snap_thread.start()
        if wait:
            self.wait_snapshot()
        return True

    def _copy(self) -> None:
        t0 = time.perf_counter()
        target = snapshot_path(self.path)
        try:
            size = os.fstat(self._read_fd).st_size
            # A fresh file of unpredictable name (O_EXCL|O_NOFOLLOW, 0600), renamed over the
            # snapshot: a symlink planted at a predictable name is never followed.
            out, tmp = create_temp(target, PRIVATE)
            try:
                _copy_range(self._read_fd, out, size)
            except BaseException:
                os.close(out)
                os.unlink(tmp)
                raise
            commit(out, tmp, target)
            self.stats.snapshots += 1
        except OSError as exc:
            log.error("snapshot of %s failed: %s", self.path, exc)
        finally:
            self._snap_cost = time.perf_counter() - t0
            self.stats.snapshot_seconds += self._snap_cost
            self._snap_lock.release()

    def wait_snapshot(self) -> None:
        thread = self._snap_thread
        if thread is not None:
            thread.join()

    def retain(self, policy: Retention, now: datetime | None = None) -> int:
        """Delete rows older than the retention of their table, then compact the rollup hours older
        than `policy.hourly` into days; returns rows deleted."""
        now = now or utcnow()
        deleted = 0
        for table, age in policy.per_table().items():
            if age is None:
                continue
            column = TIME_COLUMN[table]
            cutoff = now - age
            if table == "flows":
                rows = self._retain_flows(now, cutoff, policy.rollups)
            else:
                rows = self.query(f"DELETE FROM {table} WHERE {column} < ?", [cutoff])
            deleted += int(rows[0][0]) if rows else 0
        if policy.hourly is not None:
            self.stats.days_compacted += self.compact_days(now - policy.hourly)
        self.stats.deleted += deleted
        return deleted

    def _retain_flows(self, now: datetime, cutoff: datetime, rollups: timedelta | None) -> list[tuple[Any, ...]]:
        """Delete flows by whole hours (so the rollups of the hours kept stay exact). Rollups kept
        longer than flows: the hours deleted are rolled up first and stay, as rollups only
        (compacted); rollups older than their own retention go, with talkers not seen since."""
        cutoff = _hour(cutoff)
        roll_cut = None if rollups is None else _hour(now - rollups)
        self._quiet_totals()
        with self.transaction():
            if roll_cut is not None and roll_cut >= cutoff:  # no longer than the flows: they go together
                forgotten = self._forget_flow_totals(f"start_time < {_ts(cutoff)}")
                rows = self.query("DELETE FROM flows WHERE start_time < ?", [cutoff])
                self._recount_flow_totals(forgotten)
                hours = self.query("DELETE FROM pair_hours WHERE hour < ?", [self._rollup_cut(cutoff)])
                self.query("DELETE FROM rule_hours WHERE hour < ?", [self._rollup_cut(cutoff)])
                for r in schema.HOUR_ROLLUPS:
                    self.query(f"DELETE FROM {r.hours.name} WHERE hour < ?", [self._rollup_cut(cutoff)])
                if rows and rows[0][0]:  # first_seen may have been a deleted flow's
                    self._rebuild_talkers()
                if hours and hours[0][0]:
                    self._rebuild_pair_totals()
                return rows
            self.roll_up(cutoff)  # every hour about to lose its raw flows has its rollups
            forgotten = self._forget_flow_totals(f"start_time < {_ts(cutoff)}")
            rows = self.query("DELETE FROM flows WHERE start_time < ?", [cutoff])
            self._recount_flow_totals(forgotten)
            rolled = self.rolled_until()
            if rolled is not None:
                self._set_state(rolled, max(cutoff, self.compacted_until() or cutoff))
            if roll_cut is not None:
                hours = self.query("DELETE FROM pair_hours WHERE hour < ?", [self._rollup_cut(roll_cut)])
                if hours and hours[0][0]:
                    self._rebuild_pair_totals()
                self.query("DELETE FROM rule_hours WHERE hour < ?", [self._rollup_cut(roll_cut)])
                for r in schema.HOUR_ROLLUPS:
                    self.query(f"DELETE FROM {r.hours.name} WHERE hour < ?", [self._rollup_cut(roll_cut)])
                self.query("DELETE FROM talkers WHERE last_seen < ?", [roll_cut])
            return rows

    def close(self, snapshot: bool = True) -> None:
        """Final snapshot (so readers see everything), then close (which checkpoints)."""
        try:
            if snapshot and self.snapshot_interval is not None:
                self.snapshot(wait=True)
            else:
                self.wait_snapshot()
        finally:
            if self._worker is not None:
                self._worker.close()
            with self._lock:
                self.con.close()
            os.close(self._read_fd)


def _rebuild_talkers(con: duckdb.DuckDBPyConnection) -> None:
    """`talkers` from the flows of the rolled-up hours (after retention deleted some, or for a
    store rolled up before the table existed)."""
    con.execute("DELETE FROM talkers")
    until = con.execute("SELECT max(rolled_until) FROM rollup_state").fetchone()
    if until is not None and until[0] is not None:
        con.execute("INSERT INTO talkers BY NAME " + schema.talkers_sql(f"start_time < {_ts(until[0])}"))




def _rebuild_hour_rollup(con: duckdb.DuckDBPyConnection, r: schema.HourRollup) -> None:
    """A rollup a store was rolled up without (written before it existed): its rolled-up hours from the
    raw flows (per day inside the compacted days), its totals from those hours. Compacted hours have no
    raw flows left: they stay without, and `rollup_state.complete_from` says so."""
    state = con.execute("SELECT max(rolled_until), max(compacted_until), max(days_until) FROM rollup_state").fetchone()
    if state is None or state[0] is None:
        return
    since = reroll.floor(state[1], state[2])
    if since > datetime.min and con.execute("SELECT 1 FROM rule_hours WHERE hour < ? LIMIT 1", [since]).fetchall():
        reroll.incomplete_before(con, since)  # those hours had flows, and have no raw rows left
    rows = r.rows_sql(f"f.start_time >= {_ts(since)} AND f.start_time < {_ts(state[0])}")
    if state[2] is not None:
        rows = r.merged(f"(SELECT * REPLACE ({reroll.bucket('hour', state[2])} AS hour) FROM ({rows}))")
    con.execute(f"INSERT INTO {r.hours.name} BY NAME {rows}").fetchall()
    until = con.execute("SELECT max(pairs_until) FROM totals_state").fetchone()
    if until is not None and until[0] is not None:
        con.execute(f"INSERT INTO {r.totals.name} BY NAME "
                    + r.merged(f"(SELECT * FROM {r.hours.name} WHERE hour < {_ts(until[0])})",
                               with_hour=False)).fetchall()


def _rebuild_totals(con: duckdb.DuckDBPyConnection) -> None:
    """`flow_totals` and `pair_totals` from the rolled-up hours (a store from before them)."""
    con.execute("DELETE FROM flow_totals").fetchall()
    con.execute("DELETE FROM pair_totals").fetchall()
    con.execute("DELETE FROM totals_state").fetchall()
    until = con.execute("SELECT max(rolled_until) FROM rollup_state").fetchone()
    if until is None or until[0] is None:
        return
    con.execute("INSERT INTO flow_totals BY NAME " + schema.flow_totals_sql(f"start_time < {_ts(until[0])}")).fetchall()
    sums = ", ".join(f"sum({c}) AS {c}" for c in ("flows", "connections", "packets", "bytes", "reply_packets",
                                                  "reply_bytes"))
    con.execute(
        f"INSERT INTO pair_totals BY NAME SELECT src_ep, src_ip, dst_ep, dst_ip, proto, dport, denied, {sums}, "
        f"min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM pair_hours WHERE hour < {_ts(until[0])} "
        "GROUP BY ALL"
    ).fetchall()
    for r in schema.HOUR_ROLLUPS:
        con.execute(f"DELETE FROM {r.totals.name}").fetchall()
        con.execute(f"INSERT INTO {r.totals.name} BY NAME "
                    + r.merged(f"(SELECT * FROM {r.hours.name} WHERE hour < {_ts(until[0])})",
                               with_hour=False)).fetchall()
    con.execute("INSERT INTO totals_state VALUES (?, ?)", [until[0], until[0]]).fetchall()


def _hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _day(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _ts(value: datetime) -> str:
    """A TIMESTAMP literal (constants, so DuckDB prunes row groups by their min/max)."""
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def _copy_range(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes from the start of `src` without moving or closing it."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, done, done)
        except OSError:
            os.lseek(dst, done, os.SEEK_SET)
            n = os.sendfile(dst, src, done, size - done)
        if n == 0:
            break
        done += n


def open_reader(path: Path | str) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """A read-only connection: the database itself if no writer holds it, else its snapshot."""
    path = Path(path)
    errors = []
    for candidate in (path, snapshot_path(path)):
        if not candidate.exists():
            errors.append(f"{candidate}: no such file")
            continue
        try:
            return duckdb.connect(str(candidate), read_only=True), candidate
        except duckdb.Error as exc:
            errors.append(f"{candidate}: {exc}")
    raise FileNotFoundError("; ".join(errors))
