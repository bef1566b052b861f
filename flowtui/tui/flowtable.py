"""The flows view: stream rows folded into one row per flow, updated in place. Headless.

A flow is (protocol, source, destination, destination port, ICMP type, verdict, rule): the
packets one rule decided between two addresses for one service. Source ports are folded, as
Calico's flow logs aggregate them by default (`flowLogsFileAggregationKindForDenied: 1`): a
flood from a rotating set of source ports, or a client's repeated connections, is one row whose
counts grow, not a screen of identical lines. The row keeps how many source ports it saw (up to
`MAX_PORTS`), its first and last packet, packets, bytes, logged events, and its rate: packets per
second over the last `RATE_WINDOW` seconds of *data* time (so a replay shows the rates it had).

Each batch is reduced with one Arrow group-by (per flow and second), so Python runs once per
flow of a batch, not per event. Rows keep the order they were first seen in; the table offers
the interface of `FlowRing` (absolute indexes, `rows()`), so the same scroll view shows either.
Past `capacity` flows, the oldest-created rows leave (a flow that comes back starts a new row).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

KEY = ("proto", "src_ip", "dst_ip", "dport", "icmp_type", "verdict", "rule_id", "prefix")
# Columns a flow row takes from its first packet (the same for every packet of one key, but for
# the reporting node and the endpoint metadata of a later resource revision).
FIRST = ("node", "action", "icmp_code", "src_type", "src_namespace", "src_name", "src_labels", "dst_type",
         "dst_namespace", "dst_name", "dst_labels", "tier", "policy_kind", "policy_namespace", "policy_name",
         "rule_index", "direction", "policy_revision")
RATE_WINDOW = 10  # seconds
MAX_PORTS = 1024
_US = 1_000_000


class FlowRow:
    """One flow's counters; `as_dict()` is a stream row (plus first_seen, events, rate, ports)."""

    __slots__ = ("bytes", "events", "first", "first_second", "last", "packets", "ports", "secs", "static")

    def __init__(self, static: dict[str, Any], first: datetime) -> None:
        self.static = static
        self.first = first
        self.first_second = 1 << 62
        self.last = first
        self.packets = 0
        self.bytes = 0
        self.events = 0
        self.ports: set[int] = set()
        self.secs: deque[list[int]] = deque()  # [second, packets], oldest first, within the window

    def add(self, second: int, first: datetime, last: datetime, packets: int, nbytes: int, events: int,
            ports: list[int | None]) -> None:
        """Fold in one reduced row: `second` of data time (-1: older than any rate window)."""
        self.first = min(self.first, first)
        self.first_second = min(self.first_second, second)  # -1: older than the window
        self.last = max(self.last, last)
        self.packets += packets
        self.bytes += nbytes
        self.events += events
        if len(self.ports) < MAX_PORTS:
            self.ports.update(p for p in ports if p is not None)
        if second < 0:
            return
        for entry in self.secs:
            if entry[0] == second:
                entry[1] += packets
                break
        else:
            self.secs.append([second, packets])
            if len(self.secs) > 1 and self.secs[-2][0] > second:  # a late batch: keep them ordered
                self.secs = deque(sorted(self.secs))
        while self.secs and self.secs[0][0] <= second - RATE_WINDOW:
            self.secs.popleft()

    def rate(self, newest_second: int) -> float:
        """Packets per second over the last RATE_WINDOW seconds before `newest_second` (the
        newest data), over the flow's age when it is younger; 0 when it has gone quiet."""
        since = newest_second - RATE_WINDOW
        recent = sum(n for s, n in self.secs if s > since)
        if not recent:
            return 0.0
        age = newest_second - self.first_second + 1
        return recent / max(1, min(RATE_WINDOW, age))

    def as_dict(self, newest_second: int) -> dict[str, Any]:
        row = dict(self.static)
        row.update(time=self.last, first_seen=self.first, last_seen=self.last, packets=self.packets,
                   bytes=self.bytes, events=self.events, rate=self.rate(newest_second),
                   # a real source port of the flow (the evaluator decides with it), and how many
                   sport=min(self.ports) if self.ports else None, ports=len(self.ports))
        return row


class FlowTable:
    """Flows by key, in the order first seen; the `FlowRing` interface for `FlowStream`."""

    updates_in_place = True  # rows already shown change: the view repaints them

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._rows: deque[FlowRow] = deque()
        self._index: dict[tuple[Any, ...], int] = {}  # key -> absolute index
        self._keys: deque[tuple[Any, ...]] = deque()
        self.first = 0
        self.end = 0
        self.total_appended = 0  # stream rows folded in
        self.evicted = 0
        self.newest_second = 0
        self.updated = 0  # rows updated by the last append

    def __len__(self) -> int:
        return self.end - self.first

    def clear(self) -> None:
        self._rows.clear()
        self._keys.clear()
        self._index.clear()
        self.first = self.end

    def append(self, table: pa.Table) -> int:
        """Fold a batch of stream rows in; returns how many old flows left to stay within capacity."""
        if table.num_rows == 0:
            return 0
        return self.append_reduced(reduce(table))

    def append_reduced(self, groups: pa.Table) -> int:
        """Fold in rows already reduced (by `reduce`, or the store's `queries.flows_view_sql`)."""
        self.updated = 0
        if groups.num_rows:
            self.total_appended += int(pc.sum(groups.column("events")).as_py() or 0)
        for g in groups.to_pylist():
            key = tuple(g[k] for k in KEY)
            second = int(g["second"])
            self.newest_second = max(self.newest_second, second)
            at = self._index.get(key)
            if at is None:
                row = FlowRow({k: g.get(k) for k in (*KEY, *FIRST)}, g["first_seen"])
                at = self.end
                self._index[key] = at
                self._rows.append(row)
                self._keys.append(key)
                self.end += 1
            else:
                row = self._rows[at - self.first]
                self.updated += 1
            row.add(second, g["first_seen"], g["last_seen"], int(g["packets"] or 0), int(g["bytes"] or 0),
                    int(g["events"]), g["ports"] or [])
        return self._trim()

    def _trim(self) -> int:
        dropped = 0
        while self.end - self.first > self.capacity:
            self._rows.popleft()
            del self._index[self._keys.popleft()]
            self.first += 1
            dropped += 1
        self.evicted += dropped
        return dropped

    def row(self, index: int) -> dict[str, Any] | None:
        if not self.first <= index < self.end:
            return None
        return self._rows[index - self.first].as_dict(self.newest_second)

    def rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        start, stop = max(start, self.first), min(stop, self.end)
        return [self._rows[i - self.first].as_dict(self.newest_second) for i in range(start, stop)]

    def find(self, key: tuple[Any, ...]) -> int | None:
        """The absolute index of a flow's row (tests, and keeping a cursor on its flow)."""
        return self._index.get(key)

    def nbytes(self) -> int:
        return 400 * len(self._rows)  # about: a row's slots, its static columns and its window

    def batches(self) -> list[pa.Table]:
        return []


def _column(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    """A column, or nulls; an all-null column typed (Arrow's hash aggregations need a type)."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    column = table.column(name)
    return column.cast(pa.string()) if column.type == pa.null() else column


def reduce(table: pa.Table) -> pa.Table:
    """Stream rows -> one row per (flow, second of data time): the counts, times and ports of
    each, and the `FIRST` columns of its first row (Arrow's hash aggregation, in C++)."""
    n = table.num_rows
    cols = {name: _column(table, name) for name in (*KEY, *FIRST, "time", "packets", "bytes", "sport")}
    times = cols["time"].cast(pa.timestamp("us"))
    second = pc.divide(times.cast(pa.int64()), _US)
    packets = cols["packets"] if cols["packets"].type != pa.null() else pa.repeat(pa.scalar(1, pa.int64()), n)
    work = pa.table({**{k: cols[k] for k in KEY}, "time": times, "second": second,
                     "packets": pc.coalesce(packets.cast(pa.int64()), 1),
                     "bytes": pc.coalesce(cols["bytes"].cast(pa.int64()), 0), "sport": cols["sport"],
                     "row": pa.array(range(n), pa.int64())})
    grouped = work.group_by([*KEY, "second"], use_threads=False).aggregate(
        [("time", "min"), ("time", "max"), ("packets", "sum"), ("bytes", "sum"), ([], "count_all"),
         ("sport", "distinct"), ("row", "min")]
    )
    renames = {"time_min": "first_seen", "time_max": "last_seen", "packets_sum": "packets", "bytes_sum": "bytes",
               "count_all": "events", "sport_distinct": "ports", "row_min": "row"}
    grouped = grouped.rename_columns([renames.get(c, c) for c in grouped.column_names])
    firsts = pa.table({c: cols[c] for c in FIRST}).take(grouped.column("row"))  # any type, lists too
    for name in FIRST:
        grouped = grouped.append_column(name, firsts.column(name))
    return grouped


__all__ = ["FIRST", "KEY", "RATE_WINDOW", "FlowRow", "FlowTable", "reduce"]
