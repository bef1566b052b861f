"""One node's share of the cluster flows dataset: hive-partitioned Parquet that any engine reads.

Every node's collector (beside its agent, or `flowtui collect --node`) writes under the same
directory, each into its own `node=` partitions, so nodes never write the same file:

    DIR/flows/node=<n>/date=<YYYY-MM-DD>/hour=<HH>/part-<run>-<seq>.parquet   appended parts
    DIR/events/..., connections/..., loss/..., stats/..., rule_counters/...    the same way
    DIR/rules/node=<n>/rules.parquet, endpoints/..., sources/..., runs/...     replaced whole
    DIR/_flowtui_dataset.json                                                  marks the dataset

Columns are the store's (`flowtui.store.schema`); `node`, `date` and `hour` exist only as
directory names (date and hour of the row's time, UTC). Ids (rule, endpoint, source, run) are
the node's own: join on `node` and the id (`flowtui.store.cluster` does, for every reader).

**Flows are additive partial rows.** The local store keeps open buckets in `flows_open` and
moves them to `flows` when they close, which is up to a bucket plus a grace period behind.
Files are immutable, so the dataset gets, at every commit, the partial rows added since the
previous one (`Aggregator.take_open` + `take_closed_unsaved`): each event's contribution is in
exactly one part, the sum of the parts per key is the flow, and the store's views already sum
partial rows per bucket and key (`flows_once`, `flow_summary`).

**Atomic and bounded.** A part is written to a hidden temporary name in its directory and
renamed (`enforcer.safefile`), so readers (and Spark, which skips `.` names) never see half a
file. The writer calls `flush()` every `flush_seconds` (2 s), so a row is in the dataset at
most one commit interval plus one flush interval (plus write time) after it was received.

**Compaction.** A part every 2 s makes thousands of small files an hour, which every engine
reads slowly. When an hour is over (`compact_after` past its end: later than any late row), the
node merges its parts of that hour into one file, built in `DIR/.staging/` and swapped in for
the hour's directory in one step (`renameat2(RENAME_EXCHANGE)`): a reader lists either the parts
or the merged file, never both (one that listed the parts just before may fail to open one, and
reads again). Without RENAME_EXCHANGE (an old kernel, some network filesystems) parts stay as
they are.

**A crash costs the dataset nothing either.** A collector killed between a commit and its next
part leaves rows in its local store that the dataset lacks. The next run on that node, after
closing the dead run (`recovery.py`), appends them (`catch_up`): for the dead run's readers, the
local flows minus the dataset's, per flow key; and the latest loss and stats values of the runs
before it (which recovery may just have changed: `collector_down`).

**Loss.** A part that cannot be written (disk full, a bad directory) is kept and retried at
every flush; after `give_up_seconds` its rows are dropped and the NFLOG events its flow rows
aggregated are returned per source, for the writer to count as `dataset_error` loss. The loss
and stats rows themselves are never dropped (they are small, and cumulative), so the count
reaches the dataset once the directory is writable again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from enforcer.safefile import SHARED, atomic_write
from flowtui.store import schema

if TYPE_CHECKING:
    from flowtui.store.duckdb_store import DuckStore

log = logging.getLogger(__name__)

MARKER = "_flowtui_dataset.json"
# Appended tables and the column their date/hour partitions come from.
APPENDED = {
    "flows": "start_time",
    "events": "time",
    "connections": "time",
    "loss": "time",
    "stats": "time",
    "rule_counters": "time",
}
SNAPSHOTS = ("rules", "endpoints", "sources", "runs")  # replaced whole when they change
KEPT = ("loss", "stats")  # never dropped: the loss count itself must reach the dataset


def lab_flows_dir(lab_id: str, home: str | Path | None = None) -> Path:
    """Where a lab's nodes write their flows unless told otherwise: `$FLOWTUI_HOME/flows/<lab>`."""
    import os

    from enforcer.datastore import DEFAULT_HOME, HOME_ENV

    return Path(home or os.environ.get(HOME_ENV) or DEFAULT_HOME) / "flows" / lab_id


def node_dir(root: Path, table: str, node: str) -> Path:
    return root / table / f"node={_partition_value(node)}"


def _partition_value(text: str) -> str:
    """A node name as a hive partition value: `/`, `=` and control characters would break paths."""
    if not text or any(c in text for c in "/=\\") or not text.isprintable() or text.startswith((".", "_")):
        raise ValueError(f"node name {text!r} cannot name a partition (no '/', '=', leading '.' or '_')")
    return text


@dataclass
class Pending:
    table: str
    data: pa.Table
    since: float  # monotonic time of the first failed attempt (0: not failed yet)


@dataclass
class DatasetStats:
    parts: int = 0
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: int = 0
    compacted_hours: int = 0
    dropped_rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_flush: float = 0.0  # monotonic
    last_error: str | None = None


class DatasetSink:
    """Appends one node's rows to the dataset; used by the collector's writer thread only."""

    def __init__(self, root: Path | str, node: str, *, give_up_seconds: float = 30.0,
                 compact_after: timedelta | None = timedelta(minutes=15),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.node = _partition_value(node)
        self.give_up_seconds = give_up_seconds
        self.compact_after = compact_after  # None: never compact
        self._hours: dict[Path, datetime] = {}  # hour directories this run wrote to -> the hour's end
        self.clock = clock
        self.token = secrets.token_hex(6)  # this run's parts never collide with another run's
        self.seq = 0
        self.pending: list[Pending] = []
        self.stats = DatasetStats()
        self._snapshots: dict[str, pa.Table] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.exists():
            doc = {"format": "flowtui cluster flows dataset", "version": 1,
                   "layout": "<table>/node=<node>/date=<YYYY-MM-DD>/hour=<HH>/part-*.parquet; "
                             "rules, endpoints, sources, runs: <table>/node=<node>/<table>.parquet",
                   "ids": "per node: join on node and id"}
            atomic_write(marker, json.dumps(doc, indent=2) + "\n", SHARED)

    # ---------------------------------------------------------------------------------------
    # Rows in

    def append(self, table: str, data: pa.Table) -> None:
        if table not in APPENDED:
            raise KeyError(f"{table} is not an appended table of the dataset")
        if data.num_rows:
            self.pending.append(Pending(table, _conform(table, data), 0.0))

    def append_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            tschema = schema.BY_NAME[table].full_arrow_schema
            self.append(table, pa.Table.from_pylist([{n: r.get(n) for n in tschema.names} for r in rows],
                                                    schema=tschema))

    def catch_up(self, store: DuckStore, crashed: Sequence[int], previous: int | None) -> int:
        """Append what the local store holds of runs before this one that the
        dataset lacks (see the module doc); returns the flow rows appended."""
        runs = sorted({*crashed, *([previous] if previous is not None else [])})
        if not runs:
            return 0
        ids = ",".join(str(int(r)) for r in runs)
        for table in ("loss", "stats"):
            self.append(table, store.read_query(f"SELECT * FROM {table}_latest WHERE run_id IN ({ids})"))
        if not crashed:
            return 0
        ours = node_dir(self.root, "flows", self.node)
        published = None
        if ours.is_dir() and any(ours.rglob("*.parquet")):
            pattern = str(ours / "**" / "*.parquet").replace("'", "''")
            published = f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = false, union_by_name = true)"
        diff = _unpublished_sql(crashed, published)
        missing = store.read_query(diff)
        if missing.num_rows:
            log.warning("node %s: %d flow rows a dead run committed but never published: appended", self.node,
                        missing.num_rows)
            self.append("flows", missing)
        return int(missing.num_rows)

    # ---------------------------------------------------------------------------------------
    # Files out

    def flush(self, snapshot: Callable[[str], pa.Table] | None = None) -> dict[int | None, int]:
        """Write what is pending (one part per table and hour) and the snapshot tables that changed
        (`snapshot(table)` reads one from the local store). Returns the NFLOG events per source id
        whose flow rows were dropped (write failures past `give_up_seconds`)."""
        now = self.clock()
        self.stats.last_flush = now
        by_table: dict[str, list[Pending]] = defaultdict(list)
        for p in self.pending:
            by_table[p.table].append(p)
        self.pending = []
        dropped: dict[int | None, int] = defaultdict(int)
        for table, items in by_table.items():
            data = pa.concat_tables([p.data for p in items])
            since = min((p.since for p in items if p.since), default=0.0)
            try:
                self._write_parts(table, data)
            except _Unwritten as exc:
                self._failed(exc.cause)
                first = since or now
                if table in KEPT or now - first < self.give_up_seconds:
                    self.pending.append(Pending(table, exc.rest, first))
                    continue
                log.error("dropping %d %s rows of node %s: the dataset is not writable since %.0f s (%s)",
                          exc.rest.num_rows, table, self.node, now - first, exc.cause)
                self.stats.dropped_rows[table] += exc.rest.num_rows
                if table == "flows":
                    for sid, events in _events_per_source(exc.rest).items():
                        dropped[sid] += events
        if snapshot is not None:
            for table in SNAPSHOTS:
                try:
                    self._write_snapshot(table, snapshot(table))
                except OSError as exc:  # written again at the next flush
                    self._failed(exc)
        return dict(dropped)

    def _failed(self, exc: BaseException) -> None:
        self.stats.failures += 1
        if self.stats.last_error != str(exc):
            log.warning("cannot write the flows dataset %s: %s (retrying)", self.root, exc)
        self.stats.last_error = str(exc)

    def _write_parts(self, table: str, data: pa.Table) -> None:
        """One file per (date, hour) of the rows, each renamed into place when complete. A failure
        raises `_Unwritten` with the rows of the hours not written (those written stay)."""
        column = data.column(APPENDED[table])
        hours = pc.strftime(pc.fill_null(column, pa.scalar(0, column.type)), format="%Y-%m-%d %H")
        keys = pc.unique(hours).to_pylist()
        for index, key in enumerate(keys):
            part = data.filter(pc.equal(hours, key))
            day, hour = str(key).split(" ")
            directory = node_dir(self.root, table, self.node) / f"date={day}" / f"hour={hour}"
            try:
                directory.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                pq.write_table(part, buffer, compression="zstd")
                atomic_write(directory / f"part-{self.token}-{self.seq + 1:06d}.parquet", buffer.getvalue(), SHARED)
            except OSError as exc:
                rest = data.filter(pc.is_in(hours, pa.array(keys[index:], pa.string())))
                raise _Unwritten(rest, exc) from exc
            self.seq += 1
            self.stats.parts += 1
            self.stats.rows[table] += part.num_rows
            self._hours[directory] = datetime.strptime(str(key), "%Y-%m-%d %H") + timedelta(hours=1)

    def _write_snapshot(self, table: str, data: pa.Table) -> None:
        data = _conform(table, data)
        if table == "endpoints":  # `node` names the partition (the reporter): the endpoint's own node
            data = data.rename_columns(["endpoint_node" if n == "node" else n for n in data.column_names])
        previous = self._snapshots.get(table)
        if previous is not None and previous.equals(data):
            return
        directory = node_dir(self.root, table, self.node)
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        pq.write_table(data, buffer, compression="zstd")
        atomic_write(directory / f"{table}.parquet", buffer.getvalue(), SHARED)
        self._snapshots[table] = data


    def compact(self, now: datetime) -> int:
        """Merge the parts of each hour this run wrote that ended `compact_after` before `now`
        (UTC) into one file; returns the hours compacted. A failure leaves the parts (still right)."""
        if self.compact_after is None:
            return 0
        done = 0
        for directory, end in sorted(self._hours.items()):
            if now < end + self.compact_after:
                continue
            del self._hours[directory]
            parts = sorted(directory.glob("part-*.parquet"))
            if len(parts) < 2:
                continue
            try:
                self._compact_hour(directory, parts)
            except OSError as exc:
                log.warning("cannot compact %s (its %d parts stay): %s", directory, len(parts), exc)
                continue
            done += 1
            self.stats.compacted_hours += 1
        return done

    def _compact_hour(self, directory: Path, parts: list[Path]) -> None:
        self.seq += 1
        staging = self.root / ".staging" / self.node / f"{self.token}-{self.seq:06d}"
        staging.mkdir(parents=True)
        try:
            merged = staging / f"part-{self.token}-{self.seq:06d}-hour.parquet"
            with pq.ParquetWriter(merged, pq.read_schema(parts[0]), compression="zstd") as out:
                for part in parts:
                    out.write_table(pq.ParquetFile(part).read())  # the file alone, no partition columns
            os.chmod(merged, SHARED)
            _exchange(staging, directory)  # readers now list the merged file; staging holds the parts
        finally:
            shutil.rmtree(staging, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if not hasattr(libc, "renameat2"):
        raise OSError("renameat2 is not available")
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(b))


class _Unwritten(Exception):
    """Writing a batch failed: `rest` holds its rows that are not in the dataset."""

    def __init__(self, rest: pa.Table, cause: OSError) -> None:
        super().__init__(str(cause))
        self.rest = rest
        self.cause = cause


_FLOW_KEY = ("start_time", "end_time", "source_id", "action", "rule_id", "prefix", "proto", "src_ip", "dst_ip",
             "sport", "dport", "src_ep", "dst_ep", "count_source")
_FLOW_SUMS = ("events", "packets", "bytes", "reply_packets", "reply_bytes", "connections_started",
              "connections_completed")


def _unpublished_sql(crashed: Sequence[int], published: str | None) -> str:
    """The flow rows of the `crashed` runs' readers that the local store has and the dataset's
    parts (`published`, a relation; None: no parts) lack: local minus published, per flow key."""
    dead = ",".join(str(int(r)) for r in crashed)
    key = ", ".join(_FLOW_KEY)

    def summed(relation: str) -> str:
        return (f"SELECT {key}, " + ", ".join(f"sum({c}) AS {c}" for c in _FLOW_SUMS)
                + ", bit_or(tcp_flags) AS tcp_flags, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
                f"FROM ({relation}) WHERE source_id IN (SELECT source_id FROM sources WHERE run_id IN ({dead})) "
                f"GROUP BY {key}")

    local = summed("SELECT * FROM flows UNION ALL BY NAME SELECT * FROM flows_open")
    theirs = summed(published or "SELECT * FROM flows WHERE false")
    on = " AND ".join(f"l.{k} IS NOT DISTINCT FROM d.{k}" for k in _FLOW_KEY)
    return (f"SELECT {', '.join('l.' + k for k in _FLOW_KEY)}, "
            + ", ".join(f"l.{c} - coalesce(d.{c}, 0) AS {c}" for c in _FLOW_SUMS)
            + f", l.tcp_flags, l.first_seen, l.last_seen FROM ({local}) l LEFT JOIN ({theirs}) d ON {on} WHERE "
            + " OR ".join(f"l.{c} IS DISTINCT FROM coalesce(d.{c}, 0)" for c in _FLOW_SUMS))


def _conform(table: str, data: pa.Table) -> pa.Table:
    """The store's columns, in its order and types (optional columns a writer lacks: NULL)."""
    want = schema.BY_NAME[table].full_arrow_schema
    columns = []
    for f in want:
        if f.name in data.schema.names:
            columns.append(data.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(data.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=want)


def _events_per_source(flows: pa.Table) -> dict[int | None, int]:
    out: dict[int | None, int] = defaultdict(int)
    for sid, events in zip(flows.column("source_id").to_pylist(), flows.column("events").to_pylist(), strict=True):
        out[sid] += int(events or 0)
    return out
