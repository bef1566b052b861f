"""Where the dashboard's data comes from: a live collector in this process, a store another
process is writing, or a recording (a DuckDB file, Parquet/JSON Lines files). Headless: no Textual.

Every source answers the same questions, on a DuckDB connection that has the flow store's
tables and views (`flowtui.store.schema`):

* `recent(where, limit)`: the newest matching stream rows (`flowtui.tui.queries`), oldest first;
* `tail(where)`: the matching rows that arrived since the last `recent`/`tail` (live sources);
* `status()`: events/s, events and flows stored, loss by cause, the collector's state;
* `connect()`: a connection of its own for any other query (SQL screen, policies, what-if).

Sources:

* `LiveSource`: the collector runs in this process (`flowtui demo`) with a `TappedStore`: every
  batch the writer inserts is also handed over, in memory, so a new event is on screen within
  ~0.3 s (the writer's batch interval), and queries use a cursor on the writer's own database
  (DuckDB serves concurrent readers in one process), so they see every committed row.
* `StoreSource`: a DuckDB file. If a collector holds it, its snapshot is read, re-opened on every
  poll (`flowtui.store.duckdb_store` explains why); the tail then lags by the snapshot interval.
* `LogsSource`: a directory of `<table>.parquet` / `<table>.jsonl` files (what
  `flowtui demo --headless --export DIR` writes, e.g. `sample-logs/`), or one file of flows.

Memory stays bounded: the tap keeps at most `Tap.max_rows` undrained rows (older batches are
dropped from the *display* path only, counted in `Tap.dropped_rows`; the store has them all).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flowtui.store import schema
from flowtui.store.duckdb_store import DuckStore, open_reader, snapshot_path
from flowtui.tui import queries

TAIL_SETTLE_SECONDS = 1.0  # a store's snapshot holds every event older than this before its newest
MAX_TAIL_ROWS = 200_000


class SourceError(Exception):
    """A data source that cannot be opened or read."""


@dataclass
class SourceStatus:
    label: str
    mode: str  # live | attach | replay
    collector: str  # running, stopped, ended <time>, failed: ..., none
    events_per_s: float | None = None
    events_total: int = 0
    flows_stored: int = 0
    loss: dict[str, int] = field(default_factory=dict)
    as_of: datetime | None = None
    display_dropped: int = 0  # rows the tap dropped before the screen took them

    @property
    def lost_total(self) -> int:
        return sum(self.loss.values())


# --------------------------------------------------------------------------------------------
# The in-process tap


class Tap:
    """Hands batches from the store's writer thread to the dashboard, never blocking the writer."""

    def __init__(self, max_rows: int = 1_000_000) -> None:
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._events: deque[tuple[int, pa.Table]] = deque()
        self._rows = 0
        self.seq = 0  # batches published so far
        self.events_total = 0
        self.dropped_rows = 0
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self.dims: dict[str, dict[Any, dict[str, Any]]] = {"rules": {}, "endpoints": {}, "sources": {}}
        self.dims_version = 0

    def publish(self, table: str, data: pa.Table) -> None:
        if table == "events":
            with self._lock:
                self.seq += 1
                self.events_total += data.num_rows
                self._rate.append((time.monotonic(), self.events_total))
                self._events.append((self.seq, data))
                self._rows += data.num_rows
                while self._rows > self.max_rows and len(self._events) > 1:
                    _s, old = self._events.popleft()
                    self._rows -= old.num_rows
                    self.dropped_rows += old.num_rows
        elif table in ("rules", "endpoints", "sources"):
            key = {"rules": "id", "endpoints": "id", "sources": "source_id"}[table]
            rows = data.to_pylist()
            with self._lock:
                dim = self.dims[table]
                for row in rows:
                    dim[row[key]] = row
                self.dims_version += 1

    def drain(self) -> list[tuple[int, pa.Table]]:
        with self._lock:
            out = list(self._events)
            self._events.clear()
            self._rows = 0
        return out

    def dim_rows(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.dims[table].values())

    def rate(self, window: float = 2.0) -> float:
        """Events per second over about the last `window` seconds."""
        with self._lock:
            points = list(self._rate)
            total = self.events_total
        now = time.monotonic()
        recent = [(t, n) for t, n in points if now - t <= window]
        if not recent:
            return 0.0
        t0, n0 = recent[0]
        if len(recent) == 1 or now - t0 < 0.2:
            return 0.0
        # n0 was the total after the first batch in the window: count what came after it
        return (total - n0) / max(now - t0, 1e-6)


class TappedStore(DuckStore):
    """A `DuckStore` that also hands every inserted batch to a `Tap` (the live dashboard).

    Pass it to `Collector(cfg, store=TappedStore(cfg.db, tap=tap))`."""

    def __init__(self, path: Path | str, *, tap: Tap | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.tap = tap or Tap()

    def insert(self, table: str, data: pa.Table) -> int:
        rows = super().insert(table, data)
        if rows:
            self.tap.publish(table, data)
        return rows

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection of the caller's own to the same database (sees every committed row)."""
        with self._lock:
            return self.con.cursor()


# --------------------------------------------------------------------------------------------
# Sources


class DataSource:
    """What every source offers; see the module docstring."""

    label = ""
    mode = "replay"
    stream_kind = "events"  # or "flows": the store kept no events
    can_tail = False

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        raise NotImplementedError
        yield  # pragma: no cover

    def recent(self, where: str | None, limit: int, needs: Sequence[str] = ()) -> pa.Table:
        """The newest `limit` matching stream rows; `needs`: the filter's `endpoint_needs`."""
        with self.connect() as con:
            ids = endpoint_ids(con, needs)
            if nothing_can_match(ids):  # the same (empty) answer: DuckDB reads nothing for `WHERE false`
                table = con.sql(queries.recent_sql(self.stream_kind, "false", limit)).to_arrow_table()
            else:
                where = self._narrowed(where, ids)
                table = newest_first(con, self.stream_kind, lambda since: queries.recent_sql(
                    self.stream_kind, where, limit, since), lambda t, _since: t.num_rows >= limit)
        self._after_recent(table)
        return table

    def recent_flows(self, where: str | None, limit: int, needs: Sequence[str] = ()) -> pa.Table:
        """The newest `limit` matching flows, reduced for `FlowTable.append_reduced` (the flows
        view's first load; `tail` follows with stream rows as for the events view)."""
        with self.connect() as con:
            ids = endpoint_ids(con, needs)
            if nothing_can_match(ids):
                table = con.sql(queries.flows_view_sql(self.stream_kind, "false", limit)).to_arrow_table()
            else:
                where = self._narrowed(where, ids)
                table = newest_first(con, self.stream_kind, lambda since: queries.flows_view_sql(
                    self.stream_kind, where, limit, since), lambda t, since: _flow_count(t, since) >= limit)
        self._after_recent(table)
        return table

    def _narrowed(self, where: str | None, ids: list[list[int]] | None) -> str | None:
        """`where`, over stored flow rows first kept by their endpoint ids (`queries.with_endpoint_ids`)."""
        if ids and self.stream_kind == "flows" and sum(map(len, ids)) <= MAX_ENDPOINT_IDS:
            return queries.with_endpoint_ids(where, ids)
        return where

    def _after_recent(self, table: pa.Table) -> None:
        pass

    def tail(self, where: str | None) -> pa.Table | None:
        return None

    def tail_flows(self, where: str | None) -> pa.Table | None:
        """What `tail` would give, reduced per flow and second (`flowtable.reduce`): the flows
        view folds it in without doing the work on the UI's thread."""
        rows = self.tail(where)
        if rows is None or rows.num_rows == 0:
            return None
        from flowtui.tui.flowtable import reduce

        return reduce(rows)

    def status(self) -> SourceStatus:
        with self.connect() as con:
            return self._status(con)

    def conversations(self, where: str | None, limit: int = 500) -> list[dict[str, Any]]:
        """The Conversations screen's rows: from the `pair_hours` rollup when the store has it and
        the filter names only what a pair knows (then `services`, `logged` and `policies` are
        empty: `conversation_details` reads them for the pairs shown), else aggregated from the
        stream (`queries.conversations_sql`)."""
        rel = self.relations()
        if {"pair_hours", "rollup_state"} <= rel and (self.stream_kind == "flows" or "has_flows" in rel):
            with self.connect() as con:
                until = _rolled_until(con)
                try:
                    rows: list[dict[str, Any]] = con.sql(
                        queries.conversations_rollup_sql(where, until, limit, _pairs_until(con))
                    ).to_arrow_table().to_pylist()
                    return rows
                except duckdb.BinderException:  # the filter names a column pairs lack (node, policy, ...)
                    pass
        stream: list[dict[str, Any]] = self.query(queries.conversations_sql(self.stream_kind, where, limit)).to_pylist()
        return stream

    def conversation_details(self, rows: list[dict[str, Any]], where: str | None) -> dict[tuple[str, str], Any]:
        """(services, logged, policies) per (source, destination) of rollup conversation rows
        (those with `_ids`), from the pair and flow rows of those pairs only."""
        shown = [{"source": r["source"], "destination": r["destination"], **ids}
                 for r in rows for ids in r.get("_ids") or ()]
        if not shown:
            return {}
        table = pa.Table.from_pylist(shown, schema=pa.schema([
            ("source", pa.string()), ("destination", pa.string()), ("src_ep", pa.int32()), ("src_ip", pa.string()),
            ("dst_ep", pa.int32()), ("dst_ip", pa.string())]))
        with self.connect() as con:
            until = _rolled_until(con)
            con.register("_shown", table)
            try:
                found = con.execute(queries.conversation_details_sql(where, until, _pairs_until(con))).fetchall()
            finally:
                con.unregister("_shown")
        return {(r[0], r[1]): (r[2], int(r[3] or 0), r[4]) for r in found}

    def relations(self) -> frozenset[str]:
        """The source's tables and views, and `has_flows` when its flows table has rows (which
        queries the rollups can answer)."""
        with self.connect() as con:
            names = {str(r[0]) for r in con.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()").fetchall()}
            if "flows" in names and _first(con, "SELECT count(*) FROM (SELECT 1 FROM flows LIMIT 1)") == (1,):
                names.add("has_flows")
        return frozenset(names)

    def _status(self, con: duckdb.DuckDBPyConnection) -> SourceStatus:
        st = SourceStatus(self.label, self.mode, "none")
        st.flows_stored = _scalar(con, queries.FLOWS_COUNT_SQL)
        st.loss = {str(c): int(n) for c, n in con.execute(queries.LOSS_SQL).fetchall()}
        received, as_of = _first(con, queries.RECEIVED_SQL) or (0, None)
        st.events_total = int(received or 0) or _scalar(con, queries.EVENTS_COUNT_SQL)
        st.as_of = as_of
        run = _first(con, queries.RUN_SQL)
        if run is not None:
            run_id, started, ended, _host, _pid = run
            if ended is None:
                st.collector = f"run {run_id} running" if self.mode != "replay" else f"run {run_id} (no clean end)"
            else:
                st.collector = f"run {run_id} ended {ended:%H:%M:%S}"
                seconds = (ended - started).total_seconds() if started else 0
                if seconds > 0 and self.mode == "replay":
                    st.events_per_s = st.events_total / seconds
        return st

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with self.connect() as con:
            return con.sql(sql, params=list(params or [])).to_arrow_table()

    def script(self, sql: str) -> pa.Table:
        """A user's SQL (the SQL screen): several statements allowed (`SET VARIABLE ...;` first),
        the last one's rows returned, as `flowtui query` runs them."""
        from flowtui.query.run import run_sql

        with self.connect() as con:
            return run_sql(con, sql)

    def close(self) -> None:
        pass


def _rolled_until(con: duckdb.DuckDBPyConnection) -> str | None:
    """`rollup_state.rolled_until` as a SQL literal (None: nothing rolled up)."""
    row = _first(con, "SELECT max(rolled_until) FROM rollup_state")
    return None if row is None or row[0] is None else f"TIMESTAMP '{row[0]:%Y-%m-%d %H:%M:%S.%f}'"


def _pairs_until(con: duckdb.DuckDBPyConnection) -> str | None:
    """`totals_state.pairs_until` as a SQL literal when `pair_totals` holds the rolled-up hours up to
    it (None: no totals, or a store or export without them: `pair_hours` alone)."""
    try:
        row = _first(con, "SELECT max(pairs_until) FROM totals_state WHERE pairs_until <= "
                          "(SELECT max(rolled_until) FROM rollup_state)")
    except duckdb.Error:
        return None
    return None if row is None or row[0] is None else f"TIMESTAMP '{row[0]:%Y-%m-%d %H:%M:%S.%f}'"


# The first page looks this far back first, then 8 times further each time it has too few rows:
# the newest rows of a large store are found in the last minutes (zone maps skip the rest), and a
# filter that keeps few rows costs about one scan of the store in all.
FIRST_SPAN = timedelta(minutes=2)
SPAN_GROWTH = 8


# Endpoint ids written into a flows query (`queries.with_endpoint_ids`); more: the filter alone.
MAX_ENDPOINT_IDS = 5000


def endpoint_ids(con: duckdb.DuckDBPyConnection, needs: Sequence[str]) -> list[list[int]] | None:
    """Per one of a filter's `endpoint_needs`, the ids of the endpoints that meet it (None: no
    needs, or a source without an endpoints table)."""
    if not needs:
        return None
    try:
        return [[int(r[0]) for r in con.execute(queries.endpoint_ids_sql(n)).fetchall()] for n in needs]
    except duckdb.Error:
        return None


def nothing_can_match(ids: list[list[int]] | None) -> bool:
    """No endpoint meets one of the needs (`endpoint_ids`): no row can match the filter."""
    return ids is not None and any(not i for i in ids)


def newest_first(con: duckdb.DuckDBPyConnection, kind: str, sql: Callable[[str | None], str],
                 enough: Callable[[pa.Table, datetime], bool]) -> pa.Table:
    """`sql(since)` over a growing window back from the newest stream row until `enough(result,
    since)` (or the window holds the whole store: `since` None). A flow's counts are then those
    of the window it was found in."""
    oldest, newest = _first(con, queries.stream_span_sql(kind)) or (None, None)
    span = FIRST_SPAN
    # a window over half the store or more costs about what the whole store does: read that instead
    while oldest is not None and newest is not None and (newest - oldest) / 2 > span:
        since = newest - span
        table = con.sql(sql(f"TIMESTAMP '{since:%Y-%m-%d %H:%M:%S.%f}'")).to_arrow_table()
        if enough(table, since):
            return table
        span *= SPAN_GROWTH
    return con.sql(sql(None)).to_arrow_table()


def _flow_count(table: pa.Table, since: datetime) -> int:
    """Flows (keys) of a reduced table seen after `since`: those are the newest flows, whatever
    the rows before the window hold (a flow whose bucket straddles `since` may be in the table
    although a newer one, in an earlier bucket, is not)."""
    from flowtui.tui.flowtable import KEY

    if table.num_rows == 0:
        return 0
    newer = table.filter(pc.greater(table.column("last_seen"), pa.scalar(since, table.schema.field("last_seen").type)))
    return int(newer.select(list(KEY)).group_by(list(KEY), use_threads=False).aggregate([]).num_rows)


def _first(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...] | None:
    """The first row (the whole result is consumed: DuckDB wants every result finished)."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = _first(con, sql)
    return int(row[0]) if row and row[0] is not None else 0


def _stream_kind(con: duckdb.DuckDBPyConnection) -> str:
    has_events = _first(con, "SELECT count(*) > 0 FROM (SELECT 1 FROM events LIMIT 1)")
    has_flows = _first(con, "SELECT count(*) > 0 FROM (SELECT 1 FROM flows LIMIT 1)")
    if has_events and has_events[0]:
        return "events"
    return "flows" if has_flows and has_flows[0] else "events"


def _check_store(con: duckdb.DuckDBPyConnection, where: str) -> None:
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    have |= {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    missing = {t.name for t in schema.TABLES} - have
    if missing:
        raise SourceError(f"{where} is not a flowtui flow store (no {', '.join(sorted(missing))})")


class StoreSource(DataSource):
    """A DuckDB flow store file: a recording, or the snapshot of one a collector is writing."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            con, opened = open_reader(self.path)
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from exc
        try:
            _check_store(con, str(opened))
            self.stream_kind = _stream_kind(con)
            running = _first(con, "SELECT count(*) FROM runs WHERE ended IS NULL")
        except duckdb.Error as exc:
            con.close()
            raise SourceError(f"{opened}: {exc}") from exc
        self.snapshot = opened == snapshot_path(self.path)
        self.mode = "attach" if self.snapshot or (running and running[0] and self._writer_alive(con)) else "replay"
        self.can_tail = self.mode == "attach"
        self.label = f"{'attached' if self.can_tail else 'replay'}: {opened}"
        self._con: duckdb.DuckDBPyConnection | None = None
        if self.can_tail:
            con.close()
        else:
            self._con = con
        self._lock = threading.Lock()
        self._busy: set[duckdb.DuckDBPyConnection] = set()  # cursors lent to workers, interrupted on close
        self._cursor: datetime | None = None
        self._last_received: tuple[float, int] | None = None

    @staticmethod
    def _writer_alive(con: duckdb.DuckDBPyConnection) -> bool:
        row = _first(con, "SELECT pid FROM runs WHERE ended IS NULL ORDER BY run_id DESC LIMIT 1")
        if not row or row[0] is None:
            return False
        try:
            os.kill(int(row[0]), 0)
        except (ProcessLookupError, PermissionError, ValueError):
            return False
        return int(row[0]) != os.getpid()

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._con is not None:
            with lend_cursor(self._con, self._lock, self._busy) as cur:
                yield cur
            return
        try:
            con, _opened = open_reader(self.path)  # a fresh snapshot each time
        except (FileNotFoundError, duckdb.Error) as exc:
            raise SourceError(str(exc)) from exc
        try:
            yield con
        finally:
            con.close()

    def _after_recent(self, table: pa.Table) -> None:
        if self.can_tail:
            with self.connect() as con:
                row = _first(con, f"SELECT max(time) FROM ({queries.stream_sql(self.stream_kind)})")
            self._cursor = row[0] if row else None  # recent() showed everything up to here

    def tail(self, where: str | None) -> pa.Table | None:
        return self._tail(where, reduced=False)

    def tail_flows(self, where: str | None) -> pa.Table | None:
        return self._tail(where, reduced=True)  # in the store: no row limit, every event counts

    def _tail(self, where: str | None, *, reduced: bool) -> pa.Table | None:
        if not self.can_tail:
            return None
        with self.connect() as con:
            row = _first(con, f"SELECT max(time) FROM ({queries.stream_sql(self.stream_kind)})")
            newest = row[0] if row else None
            if newest is None:
                return None
            upto = newest - _settle()
            start = self._cursor or (upto - _settle())
            if upto <= start:
                return None
            if reduced:
                sql = queries.flows_window_sql(self.stream_kind, where)
            else:
                sql = queries.window_sql(self.stream_kind, where, MAX_TAIL_ROWS)
            out = con.sql(sql, params=[start, upto]).to_arrow_table()
        self._cursor = upto
        return out

    def _status(self, con: duckdb.DuckDBPyConnection) -> SourceStatus:
        st = super()._status(con)
        if self.mode == "attach":
            now = time.monotonic()
            if self._last_received is not None and now > self._last_received[0]:
                t0, n0 = self._last_received
                st.events_per_s = max(0.0, (st.events_total - n0) / (now - t0))
            self._last_received = (now, st.events_total)
        return st

    def close(self) -> None:
        if self._con is not None:
            with self._lock:
                busy = list(self._busy)
            close_connection(self._con, busy)
            self._con = None


def _settle() -> Any:
    from datetime import timedelta

    return timedelta(seconds=TAIL_SETTLE_SECONDS)


class _LentCursors(DataSource):
    """A source over one in-memory connection whose cursors are lent to the dashboard's workers;
    closing interrupts the ones still busy (`close_connection`)."""

    _con: duckdb.DuckDBPyConnection
    _lock: threading.Lock
    _busy: set[duckdb.DuckDBPyConnection]

    def _before_lending(self) -> None:
        """Under the lock, before a cursor is lent: bring the connection up to date (default: nothing)."""

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with lend_cursor(self._con, self._lock, self._busy, self._before_lending) as cur:
            yield cur

    def close(self) -> None:
        with self._lock:
            busy = list(self._busy)
        close_connection(self._con, busy)


class LogsSource(_LentCursors):
    """Recorded tables as files: `<dir>/<table>.parquet` (or `.jsonl`), or one file of flows."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file or directory")
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._busy: set[duckdb.DuckDBPyConnection] = set()  # cursors lent to workers, interrupted on close
        from flowtui.interop.parquet import attach, attach_sources, is_parquet_dir

        # An export or a directory of <table>.parquet files reads as `query --db` reads it (hive
        # partitions, rollups); JSON lines and loose files through the same views.
        try:
            if is_parquet_dir(self.path):
                attach(self._con, self.path)
            else:
                found = self._files()
                if not found:
                    raise SourceError(f"{self.path}: no <table>.parquet or <table>.jsonl files of the flow store")
                attach_sources(self._con, {name: _reader(file) for name, file in found.items()})
        except duckdb.Error as exc:
            self._con.close()
            raise SourceError(f"{self.path}: cannot read the recording: {exc}") from exc
        try:
            self.stream_kind = _stream_kind(self._con)
        except duckdb.Error as exc:
            raise SourceError(f"{self.path}: {exc}") from exc
        self.label = f"replay: {self.path}"

    def _files(self) -> dict[str, Path]:
        names = {t.name for t in schema.TABLES}
        if self.path.is_file():
            return {"flows": self.path}
        found: dict[str, Path] = {}
        for file in sorted(self.path.iterdir()):
            stem, _, ext = file.name.partition(".")
            if stem in names and ext in ("parquet", "jsonl", "json"):
                found.setdefault(stem, file)
        return found


@contextmanager
def lend_cursor(con: duckdb.DuckDBPyConnection, lock: threading.Lock, busy: set[duckdb.DuckDBPyConnection],
                before: Callable[[], None] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of `con` for one worker's query, kept in `busy` while lent (so `close_connection`
    can interrupt it); `before` runs under `lock` first (bringing the connection up to date)."""
    with lock:
        if before is not None:
            before()
        cur = con.cursor()
        busy.add(cur)
    try:
        yield cur
    finally:
        with lock:
            busy.discard(cur)
        cur.close()


def close_connection(con: duckdb.DuckDBPyConnection, busy: Iterable[duckdb.DuckDBPyConnection] = ()) -> None:
    """Close `con` although workers may still run queries on its cursors `busy` (the dashboard
    quits, or a test ends, mid-poll): DuckDB refuses to close a connection with a busy cursor
    instead of waiting, so those queries are interrupted first (the workers see an error and end)."""
    for cur in busy:
        with contextlib.suppress(duckdb.Error):
            cur.interrupt()
    try:
        con.close()
    except duckdb.ResourceInUseException:
        pass  # closed all the same; the interrupted cursor ends its call and is closed by its worker


def _lit(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _reader(file: Path) -> str:
    return f"read_parquet({_lit(file)})" if file.suffix == ".parquet" else f"read_json_auto({_lit(file)})"


class ClusterSource(_LentCursors):
    """The cluster flows dataset (`--cluster DIR`): every node's flows, followed live. The views read
    the files that exist when a query starts, so polls see new parts without reopening; the views
    and id maps are made again only when a table gets its first files or a node's rules, endpoints
    or sources change (`flowtui.interop.cluster`)."""

    def __init__(self, path: Path | str) -> None:
        from flowtui.interop.cluster import ClusterError

        self.path = Path(path)
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._busy: set[duckdb.DuckDBPyConnection] = set()
        self._seen: object = None
        self.nodes: list[str] = []
        try:
            self._attach()
            self.stream_kind = _stream_kind(self._con)
        except (ClusterError, duckdb.Error) as exc:
            self._con.close()
            raise SourceError(str(exc)) from exc
        self.mode = "attach"
        self.label = f"cluster: {self.path} ({', '.join(self.nodes) or 'no nodes yet'})"

    def _state(self) -> object:
        from flowtui.interop.cluster import snapshot_signature, tables_found

        return tables_found(self.path), snapshot_signature(self.path)

    def _attach(self) -> None:
        from flowtui.interop.cluster import attach_cluster

        self._seen = self._state()
        self.nodes = attach_cluster(self._con, self.path)

    def _before_lending(self) -> None:
        if self._state() != self._seen:
            self._attach()


class LiveSource(DataSource):
    """The collector of this process, through its `TappedStore`."""

    mode = "live"
    can_tail = True

    def __init__(self, store: TappedStore, *, label: str = "", rules_path: Path | None = None,
                 collector_state: Any = None) -> None:
        self.store = store
        self.tap = store.tap
        self.label = label or f"live: {store.path}"
        self.rules_path = rules_path
        self.collector_state = collector_state  # callable -> str, or None
        self.stream_kind = "events"
        self._mem = duckdb.connect(":memory:")
        self._mem_lock = threading.Lock()
        self._dims_version = -1
        self._rules_stamp: tuple[int, int] | None = None
        self._file_rules: dict[int, dict[str, Any]] = {}
        self._after_seq = 0
        self._after_time: datetime | None = None

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.store.reader()
        try:
            yield cur
        finally:
            cur.close()

    def recent(self, where: str | None, limit: int, needs: Sequence[str] = ()) -> pa.Table:
        seq = self.tap.seq  # the live store is small: `needs` would save little
        with self.connect() as con:
            table = con.sql(queries.recent_sql(self.stream_kind, where, limit)).to_arrow_table()
        self._after_seq = seq
        self._after_time = pc.max(table.column("time")).as_py() if table.num_rows else None
        return table

    def recent_flows(self, where: str | None, limit: int, needs: Sequence[str] = ()) -> pa.Table:
        seq = self.tap.seq
        with self.connect() as con:
            table = con.sql(queries.flows_view_sql(self.stream_kind, where, limit)).to_arrow_table()
        self._after_seq = seq
        self._after_time = pc.max(table.column("last_seen")).as_py() if table.num_rows else None
        return table

    def tail(self, where: str | None) -> pa.Table | None:
        batches = [t for s, t in self.tap.drain() if s > self._after_seq]
        if not batches:
            return None
        events = pa.concat_tables([_events_shape(b) for b in batches], promote_options="permissive")
        with self._mem_lock:
            self._refresh_dims(events)
            self._mem.register("tap_events", events)
            try:
                sql = queries.filtered(queries.events_stream("tap_events"), where) + "\nORDER BY time"
                out = self._mem.sql(sql).to_arrow_table()
            finally:
                self._mem.unregister("tap_events")
        if self._after_time is not None and out.num_rows:
            out = out.filter(pc.greater(out.column("time"), pa.scalar(self._after_time, out.column("time").type)))
            self._after_time = None
        return out

    def _refresh_dims(self, events: pa.Table) -> None:
        version = self.tap.dims_version
        need_rules = False
        if self.rules_path is not None and "rule_id" in events.column_names:
            ids = {i for i in pc.unique(events.column("rule_id")).to_pylist() if i is not None}
            known = set(self.tap.dims["rules"]) | set(self._file_rules)
            need_rules = bool(ids - known) and self._reload_rules()
        if version == self._dims_version and not need_rules:
            return
        self._dims_version = version
        rules = {**self._file_rules, **{r["id"]: r for r in self.tap.dim_rows("rules")}}
        for name, rows in (("rules", list(rules.values())), ("endpoints", self.tap.dim_rows("endpoints")),
                           ("sources", self.tap.dim_rows("sources"))):
            tschema = schema.BY_NAME[name].arrow_schema
            table = pa.Table.from_pylist([{n: r.get(n) for n in tschema.names} for r in rows], schema=tschema)
            self._mem.register(name, table)

    def _reload_rules(self) -> bool:
        assert self.rules_path is not None
        try:
            st = self.rules_path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._rules_stamp:
            return False
        self._rules_stamp = stamp
        from flowtui.collector.attribution import load_rules

        for ref in load_rules(self.rules_path):
            self._file_rules[ref.id] = {
                "id": ref.id, "kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "tier": ref.tier,
                "revision": ref.revision, "direction": ref.direction, "rule": ref.rule, "action": ref.action,
                "trigger_kind": ref.trigger_kind,
            }
        return True

    def _status(self, con: duckdb.DuckDBPyConnection) -> SourceStatus:
        st = super()._status(con)
        st.mode = "live"
        st.events_per_s = self.tap.rate()
        st.events_total = max(st.events_total, self.tap.events_total)
        st.display_dropped = self.tap.dropped_rows
        if self.collector_state is not None:
            st.collector = str(self.collector_state())
        return st

    def close(self) -> None:
        self._mem.close()


_EVENTS_SCHEMA = schema.EVENTS.arrow_schema


def _events_shape(batch: pa.Table) -> pa.Table:
    """A tapped events batch with exactly the events table's columns (dictionary strings decoded)."""
    cols = []
    for f in _EVENTS_SCHEMA:
        if f.name in batch.column_names:
            col = batch.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if col.type != f.type:
                col = col.cast(f.type, safe=False)
            cols.append(col)
        else:
            cols.append(pa.nulls(batch.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=_EVENTS_SCHEMA)


def open_source(db: str | None = None, logs: str | None = None) -> DataSource:
    """`--db FILE` or `--logs PATH` -> a source."""
    if db and logs:
        raise SourceError("give --db or --logs, not both")
    if db:
        from flowtui.interop.cluster import is_cluster_dir

        if is_cluster_dir(db):
            return ClusterSource(db)
        return StoreSource(db)
    if logs:
        path = Path(logs)
        if path.is_file() and path.suffix == ".duckdb":
            return StoreSource(path)
        return LogsSource(path)
    raise SourceError("no data source: give --db FILE or --logs DIR")


def rows_as_dicts(table: pa.Table, start: int, stop: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.slice(start, max(0, stop - start)).to_pylist()
    return rows


def table_columns(table: pa.Table) -> Mapping[str, pa.DataType]:
    return {f.name: f.type for f in table.schema}
