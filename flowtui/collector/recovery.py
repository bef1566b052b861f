"""At a collector's start: close the runs that died, and count what the kernel logged unread.

The collector holds the store's write lock (DuckDB's file lock), so when it starts no other
process can be writing: every run without an end is dead (kill -9, power loss, a crash).

1. **Crashed runs are closed**: their partial flows of open buckets (`flows_open`, committed
   with their events) move to `flows`, summed per key, and the run gets `outcome = 'crashed'`
   and `ended` = its last heartbeat. One transaction.
2. **The gap is counted** from the kernel's rule counters, per namespace this run reads: for the
   latest earlier reader of that namespace (crashed or stopped), the events its `ft:` rules
   logged since that run started (the counters now, minus the baseline that run stored in
   `rule_counters`) minus the events that run stored (its `flows`) and the losses it already
   counted before the reader (`rcvbuf_overrun`, `writer_backlog`). What remains was logged while
   no collector stored it — in flight at the kill, or logged before this start — and is booked on
   that run as loss cause `collector_down`. A rule the earlier run never read (created after its
   last reading) counts whole; a counter below its baseline (the rule was re-created) counts from
   zero.

The counters are read once, before this run binds its sockets: that reading ends the gap and
is this run's baseline, so an event logged in between belongs to this run (stored, or counted
lost by it) and none is counted twice or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from flowtui.collector.counters import RuleCounter, read_counters
from flowtui.store.duckdb_store import DuckStore, utcnow

log = logging.getLogger(__name__)

ReadCounters = Callable[[str | None, Iterable[int]], list[RuleCounter]]

_FLOW_KEY = (
    "start_time, end_time, source_id, action, rule_id, prefix, proto, src_ip, dst_ip, sport, dport, count_source"
)
_MOVE_OPEN_FLOWS = (
    f"INSERT INTO flows BY NAME SELECT {_FLOW_KEY}, any_value(src_ep) AS src_ep, any_value(dst_ep) AS dst_ep, "
    "sum(events) AS events, sum(packets) AS packets, sum(bytes) AS bytes, sum(reply_packets) AS reply_packets, "
    "sum(reply_bytes) AS reply_bytes, sum(connections_started) AS connections_started, "
    "sum(connections_completed) AS connections_completed, bit_or(tcp_flags) AS tcp_flags, "
    f"min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM flows_open GROUP BY {_FLOW_KEY}"
)


@dataclass(frozen=True)
class Closed:
    runs: tuple[tuple[int, datetime], ...]  # (run id, ended = last heartbeat)
    open_flow_rows: int  # flows_open rows moved to flows


@dataclass(frozen=True)
class Gap:
    run_id: int
    source_id: int
    netns: str | None
    expected: int  # events the rules logged since that run started
    stored: int
    counted: int  # already counted lost before the reader
    lost: int  # booked as collector_down


def close_crashed_runs(store: DuckStore) -> Closed:
    """Close every run without an end (none can be alive: we hold the write lock)."""
    rows = store.query(
        "SELECT run_id, coalesce(heartbeat, (SELECT max(time) FROM stats s WHERE s.run_id = r.run_id), started) "
        "FROM runs r WHERE ended IS NULL ORDER BY run_id"
    )
    open_rows = int(store.query("SELECT count(*) FROM flows_open")[0][0])
    if not rows and not open_rows:
        return Closed((), 0)
    with store.transaction():
        if open_rows:
            store.flows_changed(store.query("SELECT min(start_time) FROM flows_open")[0][0])
            store.query(_MOVE_OPEN_FLOWS)
            store.query("DELETE FROM flows_open")
        for run_id, ended in rows:
            store.query("UPDATE runs SET ended = ?, outcome = 'crashed' WHERE run_id = ?", [ended, run_id])
    for run_id, ended in rows:
        log.warning("run %d did not stop cleanly: closed as crashed (last heartbeat %s)", run_id, ended)
    if open_rows:
        log.warning("%d partial flow rows of open buckets recovered into flows", open_rows)
    return Closed(tuple((int(r), e) for r, e in rows), open_rows)


def count_gaps(
    store: DuckStore,
    namespaces: Sequence[str | None],
    read: ReadCounters = read_counters,
) -> list[Gap]:
    """Book `collector_down` loss on the latest earlier reader of each namespace (see above)."""
    gaps = []
    for netns in namespaces:
        found = store.query(
            "SELECT s.source_id, s.run_id, s.groups FROM sources s "
            "WHERE s.netns IS NOT DISTINCT FROM ? ORDER BY s.source_id DESC LIMIT 1",
            [netns],
        )
        if not found:
            continue
        source_id, run_id, groups_text = int(found[0][0]), int(found[0][1]), found[0][2] or ""
        done = store.query("SELECT count(*) FROM loss WHERE source_id = ? AND cause = 'collector_down'", [source_id])[
            0
        ][0]
        if done:
            continue
        base = {
            str(rule): (str(prefix), int(b))
            for rule, prefix, b in store.query(
                "SELECT nft_rule, arg_max(prefix, time), arg_max(logged - run_logged, time) FROM rule_counters "
                "WHERE source_id = ? AND logged IS NOT NULL AND run_logged IS NOT NULL GROUP BY nft_rule",
                [source_id],
            )
        }
        if not base:
            log.warning("run %d never read the rule counters of %s: its gap cannot be counted", run_id, netns or "host")
            continue
        groups = [int(g) for g in groups_text.split(",") if g.strip()]
        try:
            now = read(netns, groups)
        except OSError as exc:
            log.warning(
                "cannot read the rule counters of %s (%s): the gap after run %d is not counted", netns, exc, run_id
            )
            continue
        expected = 0
        prefixes = {p for p, _b in base.values()}
        for c in now:
            if c.logged is None:
                continue
            prefixes.add(c.prefix)
            was = base.get(c.nft_rule)
            expected += c.logged - was[1] if was is not None and c.logged >= was[1] else c.logged
        stored = int(
            store.query(
                "SELECT coalesce(sum(events), 0) FROM flows WHERE source_id = ? AND count_source = 'nflog' "
                "AND list_contains(?, prefix)",
                [source_id, sorted(prefixes)],
            )[0][0]
        )
        counted = int(
            store.query(
                "SELECT coalesce(sum(events), 0) FROM loss_latest WHERE source_id = ? "
                "AND cause IN ('rcvbuf_overrun', 'writer_backlog')",
                [source_id],
            )[0][0]
        )
        lost = max(0, expected - stored - counted)
        if expected - stored - counted < 0:
            log.warning(
                "%s: run %d stored or counted %d events more than its rules logged",
                netns,
                run_id,
                stored + counted - expected,
            )
        store.insert_rows(
            "loss",
            [
                {
                    "time": utcnow(),
                    "run_id": run_id,
                    "source_id": source_id,
                    "cause": "collector_down",
                    "events": lost,
                    "detail": f"rule counters logged {expected} since run {run_id} started; "
                    f"{stored} stored, {counted} counted lost by the run",
                }
            ],
        )
        if lost:
            log.warning(
                "%s: %d events logged while no collector stored them (after run %d)", netns or "host", lost, run_id
            )
        gaps.append(Gap(run_id, source_id, netns, expected, stored, counted, lost))
    return gaps
