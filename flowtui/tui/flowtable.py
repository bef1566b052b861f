"""The flows view: stream rows folded into one row per flow, updated in place. Headless.

A flow is (protocol, source, destination, destination port, ICMP type, verdict, rule): the
packets one rule decided between two addresses for one service. Source ports are folded, as
Calico's flow logs aggregate them by default (`flowLogsFileAggregationKindForDenied: 1`): a
flood from a rotating set of source ports, or a client's repeated connections, is one row whose
counts grow, not a screen of identical lines. The row keeps how many source ports it saw (up to
`MAX_PORTS`), its first and last packet, packets, bytes, logged events, and its rate: packets per
second over the last `RATE_WINDOW` seconds of *data* time (so a replay shows the rates it had).

Each batch is reduced with one Arrow group-by (per flow and second, in the worker thread), then
folded in with numpy (one dictionary lookup per flow of the batch). Rows keep the order they were
first seen in; the table offers
the interface of `FlowRing` (absolute indexes, `rows()`), so the same scroll view shows either.
Past `capacity` flows, the oldest-created rows leave (a flow that comes back starts a new row).
"""

from __future__ import annotations

import bisect
from collections import deque
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
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


_EPOCH = datetime(1970, 1, 1)
_BIG = int(np.iinfo(np.int64).max)
# The per-flow arrays: name -> (initial value, second dimension or 0)
_ARRAYS = {"_first_us": (_BIG, 0), "_last_us": (0, 0), "_first_sec": (_BIG, 0), "_packets": (0, 0),
           "_bytes": (0, 0), "_events": (0, 0), "_sport": (1 << 16, 0), "_nports": (0, 0),
           "_win_sec": (-1, RATE_WINDOW), "_win_n": (0, RATE_WINDOW)}
_NO_PORT = 1 << 16
_KEY_SEP, _NULL = "\x1f", "\x00"


def _when(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def key_strings(table: pa.Table) -> pa.Array:
    """One string per row naming its flow (the KEY columns joined; the same whatever the integer
    types, so rows reduced in the store and in Arrow meet)."""
    parts = [pc.fill_null(pc.cast(table.column(k), pa.string()), _NULL) for k in KEY]
    return pc.binary_join_element_wise(*parts, _KEY_SEP)


class FlowTable:
    """Flows by key, in the order first seen; the `FlowRing` interface for `FlowStream`.

    Counters live in numpy arrays (one slot per flow), the columns a flow takes from its first
    packet in Arrow chunks: folding a batch in costs a dictionary lookup per flow of the batch
    and vectorised updates, so a flood of new flows (spoofed sources, a port scan) does not
    stall the screen. Rows become Python objects only when they are on screen (`rows()`).
    """

    updates_in_place = True  # rows already shown change: the view repaints them
    # per flow, by position (absolute index - _base); see _ARRAYS
    _first_us: npt.NDArray[np.int64]
    _last_us: npt.NDArray[np.int64]
    _first_sec: npt.NDArray[np.int64]
    _packets: npt.NDArray[np.int64]
    _bytes: npt.NDArray[np.int64]
    _events: npt.NDArray[np.int64]
    _sport: npt.NDArray[np.int64]
    _nports: npt.NDArray[np.int64]
    _win_sec: npt.NDArray[np.int64]  # (flows, RATE_WINDOW): the second each slot counts
    _win_n: npt.NDArray[np.int64]  # (flows, RATE_WINDOW): packets in that second

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.first = 0
        self.end = 0
        self.total_appended = 0  # stream rows folded in
        self.evicted = 0
        self.newest_second = 0
        self.updated = 0  # rows already held that the last append changed
        self._index: dict[str, int] = {}  # flow key -> absolute index
        self._key_at: list[str] = []  # by position (absolute index - base)
        self._base = 0
        self._chunks: deque[tuple[int, pa.Table]] = deque()  # (first absolute index, KEY + FIRST columns)
        self._ports_seen: set[int] = set()  # absolute index << 16 | source port
        self.busiest_first = False
        self._ranked: npt.NDArray[np.int64] | None = None
        self._alloc(1024)

    def _alloc(self, size: int, keep: bool = False) -> None:
        """Arrays of `size` positions (the old values first when `keep`)."""
        for name, (fill, width) in _ARRAYS.items():
            new = np.full((size, width) if width else (size,), fill, dtype=np.int64)
            if keep:
                old = getattr(self, name)
                new[: len(old)] = old
            setattr(self, name, new)

    def _room(self) -> None:
        """Positions for every flow up to `end`: drop what left at the front, or grow."""
        size = len(self._packets)
        need = self.end - self._base
        if need <= size:
            return
        shift = self.first - self._base
        if shift and need - shift <= size:
            for name, (fill, _width) in _ARRAYS.items():
                arr = getattr(self, name)
                arr[: size - shift] = arr[shift:]
                arr[size - shift:] = fill
            del self._key_at[:shift]
            self._base = self.first
            self._ports_seen = {c for c in self._ports_seen if c >> 16 >= self.first}
            return
        self._alloc(max(need, 2 * size), keep=True)

    def __len__(self) -> int:
        return self.end - self.first

    def clear(self) -> None:
        self.first = self.end = self._base = 0
        self.newest_second = 0
        self._index.clear()
        self._key_at.clear()
        self._chunks.clear()
        self._ports_seen.clear()
        self._ranked = None
        self._alloc(1024)

    def append(self, table: pa.Table) -> int:
        """Fold a batch of stream rows in; returns how many old flows left to stay within capacity."""
        if table.num_rows == 0:
            return 0
        return self.append_reduced(reduce(table))

    def append_reduced(self, groups: pa.Table) -> int:
        """Fold in rows already reduced (by `reduce`, or the store's `queries.flows_view_sql`)."""
        self.updated = 0
        n = groups.num_rows
        if n == 0:
            return 0
        keys = (groups.column("key") if "key" in groups.column_names else key_strings(groups)).to_pylist()
        before = self.end
        at = np.empty(n, dtype=np.int64)
        new_rows: list[int] = []
        index = self._index
        for i, key in enumerate(keys):
            found = index.get(key)
            if found is None:
                found = index[key] = self.end
                self._key_at.append(key)
                new_rows.append(i)
                self.end += 1
            at[i] = found
        self.updated = int(np.count_nonzero(at < before))
        self._ranked = None
        if new_rows:
            self._chunks.append((before, groups.take(new_rows).select([*KEY, *FIRST])))
        self._room()
        pos = at - self._base
        second = _ints(groups, "second")
        np.minimum.at(self._first_us, pos, _ints(groups, "first_seen"))
        np.maximum.at(self._last_us, pos, _ints(groups, "last_seen"))
        np.minimum.at(self._first_sec, pos, second)  # -1: older than the rate window
        packets = _ints(groups, "packets")
        np.add.at(self._packets, pos, packets)
        np.add.at(self._bytes, pos, _ints(groups, "bytes"))
        events = _ints(groups, "events")
        np.add.at(self._events, pos, events)
        self.total_appended += int(events.sum())
        self._window(pos, second, packets)
        self._ports(at, groups.column("ports"))
        return self._trim()

    def _window(self, pos: np.ndarray, second: np.ndarray, packets: np.ndarray) -> None:
        """Packets per second of data time, per flow, in a ring of RATE_WINDOW slots."""
        live = second >= 0
        if not live.any():
            return
        order = np.argsort(second[live], kind="stable")
        p, sec, count = pos[live][order], second[live][order], packets[live][order]
        slot = sec % RATE_WINDOW
        held = self._win_sec[p, slot]
        newer = sec > held  # a slot holding an older second starts again
        self._win_n[p[newer], slot[newer]] = 0
        self._win_sec[p[newer], slot[newer]] = sec[newer]  # (ascending: the newest second of a slot wins)
        counted = sec == self._win_sec[p, slot]  # not seconds a newer one pushed out of the window
        np.add.at(self._win_n, (p[counted], slot[counted]), count[counted])
        self.newest_second = max(self.newest_second, int(sec[-1]))

    def _ports(self, at: np.ndarray, ports: pa.ChunkedArray | pa.Array) -> None:
        """Distinct source ports per flow (up to MAX_PORTS) and the lowest one."""
        if isinstance(ports, pa.ChunkedArray):
            ports = ports.combine_chunks()
        values = pc.list_flatten(ports)
        if len(values) == 0 or not pa.types.is_integer(values.type):
            return
        parents = pc.list_parent_indices(ports).to_numpy(zero_copy_only=False)
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        port = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)[valid]
        owner = at[parents[valid]]
        np.minimum.at(self._sport, owner - self._base, port)
        codes = np.unique((owner << 16) | port)
        codes = codes[self._nports[(codes >> 16) - self._base] < MAX_PORTS]
        seen, nports, base = self._ports_seen, self._nports, self._base
        for code in codes.tolist():
            if code not in seen:
                seen.add(code)
                nports[(code >> 16) - base] += 1

    def _trim(self) -> int:
        dropped = max(0, self.end - self.first - self.capacity)
        if not dropped:
            return 0
        new_first = self.first + dropped
        for key in self._key_at[self.first - self._base: new_first - self._base]:
            del self._index[key]
        self.first = new_first
        while len(self._chunks) > 1 and self._chunks[1][0] <= self.first:
            self._chunks.popleft()
        self.evicted += dropped
        return dropped

    def row(self, index: int) -> dict[str, Any] | None:
        rows = self.rows(index, index + 1)
        return rows[0] if rows else None

    def set_busiest_first(self, on: bool) -> None:
        """Show the flows by packets, most first (like `top`), instead of in the order first seen:
        row i is then the i-th busiest flow held; the order is taken again after every batch."""
        self.busiest_first = on
        self._ranked = None

    def _ranking(self) -> npt.NDArray[np.int64]:
        if self._ranked is None:
            held = self._packets[self.first - self._base: self.end - self._base]
            self._ranked = np.argsort(-held, kind="stable") + self.first  # ties: first seen first
        return self._ranked

    def rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Rows start..stop-1 (absolute) as stream rows with their counts, clipped to what is held."""
        start, stop = max(start, self.first), min(stop, self.end)
        if self.busiest_first:
            return [self._one(int(i)) for i in self._ranking()[start - self.first: stop - self.first]]
        out: list[dict[str, Any]] = []
        starts = [s for s, _t in self._chunks]
        while start < stop:
            b = bisect.bisect_right(starts, start) - 1
            chunk_start, chunk = self._chunks[b]
            n = min(stop - start, chunk.num_rows - (start - chunk_start))
            for i, static in enumerate(chunk.slice(start - chunk_start, n).to_pylist(), start):
                out.append(self._counted(static, i - self._base))
            start += n
        return out

    def _one(self, index: int) -> dict[str, Any]:
        starts = [s for s, _t in self._chunks]
        chunk_start, chunk = self._chunks[bisect.bisect_right(starts, index) - 1]
        static: dict[str, Any] = chunk.slice(index - chunk_start, 1).to_pylist()[0]
        return self._counted(static, index - self._base)

    def _counted(self, row: dict[str, Any], p: int) -> dict[str, Any]:
        last = _when(self._last_us[p])
        nports = int(self._nports[p])
        row.update(time=last, first_seen=_when(self._first_us[p]), last_seen=last, packets=int(self._packets[p]),
                   bytes=int(self._bytes[p]), events=int(self._events[p]), rate=self._rate(p), ports=nports,
                   # a real source port of the flow (the evaluator decides with it), and how many
                   sport=int(self._sport[p]) if self._sport[p] < _NO_PORT else None)
        return row

    def _rate(self, p: int) -> float:
        """Packets per second over the last RATE_WINDOW seconds before the newest data, over the
        flow's age when it is younger; 0 when it has gone quiet."""
        recent = int(self._win_n[p][self._win_sec[p] > self.newest_second - RATE_WINDOW].sum())
        if not recent:
            return 0.0
        age = self.newest_second - int(self._first_sec[p]) + 1
        return recent / max(1, min(RATE_WINDOW, age))

    def nbytes(self) -> int:
        arrays: int = sum(getattr(self, name).nbytes for name in _ARRAYS)
        return arrays + sum(int(t.nbytes) for _s, t in self._chunks)

    def batches(self) -> list[pa.Table]:
        return []


def _ints(table: pa.Table, name: str) -> npt.NDArray[np.int64]:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us")).cast(pa.int64())
    values: npt.NDArray[np.int64] = np.asarray(pc.fill_null(column, 0).to_numpy(), dtype=np.int64)
    return values


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
    grouped = grouped.sort_by("row")  # in the order first seen (a hash group-by has its own)
    firsts = pa.table({c: cols[c] for c in FIRST}).take(grouped.column("row"))  # any type, lists too
    for name in FIRST:
        grouped = grouped.append_column(name, firsts.column(name))
    return grouped.append_column("key", key_strings(grouped))  # here, in the worker: not on the UI's thread


__all__ = ["FIRST", "KEY", "RATE_WINDOW", "FlowTable", "key_strings", "reduce"]
