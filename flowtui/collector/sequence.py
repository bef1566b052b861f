"""NFLOG sequence numbers: the events the kernel dropped, per (source, group).

With `NFULNL_CFG_F_SEQ` every message of a kernel instance (one group in one namespace) carries
a 32-bit number counting from 0. A gap is a run of events that never reached us: an overrun of
our receive buffer, unless bytes we could not read explain it (a *suspect*, see
`parse._seq_stream`). Loss at the very end of an overrun burst leaves no gap; the service
compares rule counters with arrivals at the end of a run for that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


class SeqTracker:
    """Per (source, group) sequence continuity: missing numbers are events the kernel dropped.

    Numbers are 32-bit and wrap. A jump backwards (the instance was re-created, e.g. after a
    rebind) restarts tracking without counting loss. A gap that follows a *suspect* (bytes we
    could not read) is counted in `malformed` instead of `gaps`.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[int, int], int] = {}
        self.gaps: dict[tuple[int, int], int] = {}
        self.malformed: dict[tuple[int, int], int] = {}
        self.restarts = 0
        self._suspects: dict[int, list[tuple[int, int]]] = {}  # source -> [(group or -1, after seq or -1)]

    def start(self, source: int, group: int) -> None:
        """A group we just bound: its kernel instance is new, so its first number is 0."""
        self.last[(source, group)] = 0xFFFFFFFF

    def skip(self, source: int, group: int, first: int, last: int) -> None:
        """Account for a range we received but did not process (dropped under backlog)."""
        if first < 0 or last < 0:
            return
        self._gap(source, group, self.last.get((source, group)), first)
        self.last[(source, group)] = last

    def suspect(self, source: int, group: int, after: int) -> None:
        self._suspects.setdefault(source, []).append((group, after))

    def unresolved(self) -> int:
        """Suspects no later sequence number explained (each is at least one lost event)."""
        return sum(len(v) for v in self._suspects.values())

    def _gap(self, source: int, group: int, prev: int | None, first: int) -> None:
        if prev is None:
            return
        missing = (first - prev - 1) & 0xFFFFFFFF
        if missing >= 0x80000000:  # went backwards: a new instance
            self.restarts += 1
            return
        if not missing:
            return
        key = (source, group)
        pending = self._suspects.get(source, [])
        for i, (g, after) in enumerate(pending):
            if g in (group, -1) and after in (prev, -1):
                del pending[i]
                self.malformed[key] = self.malformed.get(key, 0) + missing
                return
        self.gaps[key] = self.gaps.get(key, 0) + missing

    def update(
        self,
        source: npt.NDArray[np.uint16],
        group: npt.NDArray[np.uint16],
        seq: I64,
        suspects: list[tuple[int, int, int, int]] | None = None,
    ) -> int:
        """Feed one batch (rows in arrival order); returns the events newly found missing.

        A suspect whose preceding number is unknown gets the last number its (source, group)
        had at its position in the stream, so it can only explain a gap that follows it.
        """
        for src, grp, after, pos in suspects or ():
            if after < 0 and grp >= 0:
                earlier = np.nonzero((source[:pos] == src) & (group[:pos] == grp) & (seq[:pos] >= 0))[0]
                if earlier.size:
                    after = int(seq[earlier[-1]])
                else:
                    after = self.last.get((src, grp), -1)
            self.suspect(src, grp, after)
        have = seq >= 0
        if not have.any():
            return 0
        before = sum(self.gaps.values())
        key = (source[have].astype(np.int64) << 16) | group[have].astype(np.int64)
        s = seq[have]
        for k in np.unique(key).tolist():
            sel = s[key == k]
            src, grp = int(k >> 16), int(k & 0xFFFF)
            self._gap(src, grp, self.last.get((src, grp)), int(sel[0]))
            if len(sel) > 1:
                d = (np.diff(sel) - 1) & 0xFFFFFFFF
                for j in np.nonzero(d)[0].tolist():
                    self._gap(src, grp, int(sel[j]), int(sel[j + 1]))
            self.last[(src, grp)] = int(sel[-1])
        return sum(self.gaps.values()) - before
