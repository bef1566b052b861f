"""A bounded buffer of stream rows kept as Arrow batches: what the live table shows. Headless.

Appending a batch is O(1) (the Arrow table is kept as it is); when more than `capacity` rows are
held, whole batches are dropped from the front (a partly dropped batch is sliced, zero-copy).
Rows are addressed by an *absolute* index that never changes while the row is held
(`first` .. `first + len - 1`), so a cursor on a row stays on it while older rows leave. Only the
rows on screen are ever turned into Python objects (`row()`).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

import pyarrow as pa


class FlowRing:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._batches: deque[pa.Table] = deque()
        self._starts: list[int] = []  # absolute index of each batch's first row
        self.first = 0  # absolute index of the oldest row held
        self.end = 0  # absolute index after the newest row
        self.total_appended = 0
        self.evicted = 0

    def __len__(self) -> int:
        return self.end - self.first

    def clear(self) -> None:
        self._batches.clear()
        self._starts.clear()
        self.first = self.end

    def append(self, table: pa.Table) -> int:
        """Add a batch; returns how many old rows were evicted to stay within capacity."""
        if table.num_rows == 0:
            return 0
        skipped = 0
        if table.num_rows > self.capacity:  # only its newest rows fit; the rest never show
            skipped = table.num_rows - self.capacity
            table = table.slice(skipped)
            self.end += skipped
            self.total_appended += skipped
        self._batches.append(table)
        self._starts.append(self.end)
        self.end += table.num_rows
        self.total_appended += table.num_rows
        self.evicted += skipped
        return self._trim() + skipped

    def _trim(self) -> int:
        dropped = 0
        while self._batches and self.end - self._starts[0] > self.capacity:
            excess = self.end - self._starts[0] - self.capacity
            head = self._batches[0]
            if head.num_rows <= excess:
                self._batches.popleft()
                self._starts.pop(0)
                dropped += head.num_rows
            else:
                self._batches[0] = head.slice(excess)
                self._starts[0] += excess
                dropped += excess
        self.first = self._starts[0] if self._batches else self.end
        self.evicted += dropped
        return dropped

    def row(self, index: int) -> dict[str, Any] | None:
        """The row at absolute `index` as a dict, or None if it is not held."""
        if not self.first <= index < self.end:
            return None
        b = bisect.bisect_right(self._starts, index) - 1
        table = self._batches[b]
        rows: list[dict[str, Any]] = table.slice(index - self._starts[b], 1).to_pylist()
        return rows[0]

    def rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Rows start..stop-1 (absolute), clipped to what is held."""
        start, stop = max(start, self.first), min(stop, self.end)
        out: list[dict[str, Any]] = []
        while start < stop:
            b = bisect.bisect_right(self._starts, start) - 1
            table = self._batches[b]
            offset = start - self._starts[b]
            n = min(stop - start, table.num_rows - offset)
            out.extend(table.slice(offset, n).to_pylist())
            start += n
        return out

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._batches)

    def batches(self) -> list[pa.Table]:
        return list(self._batches)
