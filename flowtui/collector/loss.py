"""Loss accounting by cause: every event the kernel logged is stored or counted here.

- `kernel_ratelimit`: an nft `limit` before `log` kept the kernel from logging; known from
  the rule's counters before and after the limit.
- `rcvbuf_overrun`: the socket buffer was full and the kernel dropped the skb; known from
  sequence gaps per group and, at the end of a run, rule counters minus arrivals (*).
- `writer_backlog`: received, but the writer was too far behind; counted when the reader
  drops a chunk.
- `malformed`: a message we could not read; counted by the parser.
- `store_error`: an insert failed; counted by the writer.
- `dataset_error`: stored in the node's own store, but its flow rows could not be written to
  the cluster flows dataset (`--flows-dir`: disk full, a bad directory) within the retry period;
  counted by the events those flow rows aggregated (`flowtui.collector.dataset`).
- `collector_down`: logged by the kernel while no collector stored it: the events in flight
  when a run died (kill -9, power loss) and those logged until the next run started. The next
  run measures it when it starts (`recovery.py`: rule counters now, minus at the previous run's
  start, minus what that run stored or counted lost) and books it on the previous run.

(*) A loss at the end of an overrun burst leaves no sequence gap; the rule counters reveal it.

ENOBUFS reports are counted too (`stats.enobufs`), but they count overrun *episodes*, not
events. All values are cumulative for the run and written as rows of the `loss` and `stats`
tables (only when they changed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CAUSES = ("kernel_ratelimit", "rcvbuf_overrun", "writer_backlog", "malformed", "store_error", "dataset_error",
          "collector_down")
DETAIL = {
    "kernel_ratelimit": "nft counters: matched - logged, rules with a limit before log",
    "rcvbuf_overrun": "NFLOG sequence gaps + end-of-run counter comparison",
    "writer_backlog": "chunks dropped by the reader while the writer was behind",
    "malformed": "unreadable netlink messages",
    "store_error": "events of failed inserts",
    "dataset_error": "events whose flow rows could not be written to the cluster flows dataset",
    "collector_down": "rule counters at the next run's start - at this run's start - stored - counted lost",
}

Key = tuple[int | None, str]  # (source id or None, name)


@dataclass
class LossBook:
    run_id: int
    loss: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    stats: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    _written_loss: dict[Key, int] = field(default_factory=dict)
    _written_stats: dict[Key, int] = field(default_factory=dict)

    def lose(self, cause: str, events: int, source: int | None = None) -> None:
        if cause not in CAUSES:
            raise ValueError(f"unknown loss cause {cause!r}")
        if events:
            self.loss[(source, cause)] += events

    def set_loss(self, cause: str, events: int, source: int | None = None) -> None:
        """For causes measured as a running total (counter comparisons)."""
        self.loss[(source, cause)] = events

    def count(self, name: str, value: int, source: int | None = None) -> None:
        if value:
            self.stats[(source, name)] += value

    def set(self, name: str, value: int, source: int | None = None) -> None:
        self.stats[(source, name)] = value

    def peak(self, name: str, value: int, source: int | None = None) -> None:
        if value > self.stats.get((source, name), 0):
            self.stats[(source, name)] = value

    # Readers below may run in another thread than the writer that updates the counters:
    # they iterate over a copy (`list(d.items())` runs without releasing the GIL).

    def total_lost(self, source: int | None = None, *, any_source: bool = True) -> int:
        return sum(v for (s, _c), v in list(self.loss.items()) if any_source or s == source)

    def lost_by_cause(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (_s, cause), v in list(self.loss.items()):
            out[cause] += v
        return dict(out)

    def stat(self, name: str, source: int | None = None) -> int:
        return self.stats.get((source, name), 0)

    def stat_total(self, name: str) -> int:
        return sum(v for (_s, n), v in list(self.stats.items()) if n == name)

    def rows(self, now: datetime, force: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """New `loss` and `stats` rows for the values that changed since the last call."""
        loss_rows = []
        for (source, cause), value in sorted(self.loss.items(), key=_order):
            if force or self._written_loss.get((source, cause)) != value:
                loss_rows.append(
                    {
                        "time": now,
                        "run_id": self.run_id,
                        "source_id": source,
                        "cause": cause,
                        "events": value,
                        "detail": DETAIL[cause],
                    }
                )
                self._written_loss[(source, cause)] = value
        stat_rows = []
        for (source, name), value in sorted(self.stats.items(), key=_order):
            if force or self._written_stats.get((source, name)) != value:
                stat_rows.append(
                    {"time": now, "run_id": self.run_id, "source_id": source, "name": name, "value": value}
                )
                self._written_stats[(source, name)] = value
        return loss_rows, stat_rows

    def summary(self) -> dict[str, Any]:
        return {
            "lost": self.lost_by_cause(),
            "stats": {name: self.stat_total(name) for name in sorted({n for _s, n in list(self.stats)})},
        }


def _order(item: tuple[Key, int]) -> tuple[int, str]:
    (source, name), _v = item
    return (-1 if source is None else source, name)


def ensure_all_causes(book: LossBook, sources: Iterable[int]) -> None:
    """Write explicit zeros, so `flowtui status` shows every cause, not just the ones that hit."""
    for source in sources:
        for cause in ("kernel_ratelimit", "rcvbuf_overrun", "writer_backlog"):
            book.loss.setdefault((source, cause), 0)
    for cause in ("malformed", "store_error"):
        book.loss.setdefault((None, cause), 0)
