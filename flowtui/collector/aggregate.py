"""Events -> flows: per time bucket and key, with conntrack counts for allowed connections.

Key: (bucket, reporting namespace, prefix -> action and rule, protocol, source and destination
address and port). Strings are interned once into integer ids (`Interner`), so each batch is
grouped on integers only (polars) into a small partial table; partials wait per bucket until
the bucket has been closed for `grace_seconds` (events arrive up to the NFLOG flush timeout plus
the writer's batch interval late), then they are summed into `flows` rows (`finish`).

Open buckets are not only in memory: `take_open()` returns, summed, the partials added since
its last call, which the writer commits to `flows_open` with the events they came from, so a
crash loses no committed event's flow (`flush()` then says which buckets moved to `flows`).

The `flows` table stays narrow (ids, not names): the endpoint, rule and node metadata is joined
in by the `flows_v` view, which keeps inserts fast when every event is a new flow (floods).

Counting (see `flowtui.store.schema.FLOWS`): Deny/Pass/Log rows count events as packets. An
Allow rule logs only the first packet of a connection (established packets are accepted before
policy), so Allow NFLOG rows count `events` and `connections_started` and leave `packets` at 0;
the connection's packets and bytes arrive with its conntrack DESTROY event as a separate row
(`count_source = 'conntrack'`), matched to the Allow event by (namespace, 5-tuple).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from flowtui.store import schema

KEY = ["bucket", "source_id", "prefix_id", "proto", "src_id", "dst_id", "sport", "dport", "count_source"]
SUMS = (
    "events",
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "connections_started",
    "connections_completed",
)
NFLOG, CONNTRACK = 0, 1
COUNT_SOURCES = ["nflog", "conntrack"]
ALLOW_INDEX_LIMIT = 1_000_000
INTERN_LIMIT = 2_000_000
_PARTIAL_SCHEMA = {
    "bucket": pl.Int64,
    "source_id": pl.Int32,
    "prefix_id": pl.Int32,
    "proto": pl.Int16,
    "src_id": pl.Int32,
    "dst_id": pl.Int32,
    "sport": pl.Int32,
    "dport": pl.Int32,
    "count_source": pl.Int8,
    "src_ep": pl.Int32,
    "dst_ep": pl.Int32,
    **{c: pl.Int64 for c in SUMS},
    "tcp_flags": pl.Int16,
    "first_seen": pl.Int64,
    "last_seen": pl.Int64,
}

ConnKey = tuple[int, int, int, int, int, int]  # source, proto, src id, dst id, sport, dport (-1 = none)


@dataclass
class EventColumns:
    """One batch of events, as the writer has them (codes index the batch's tables)."""

    time_us: npt.NDArray[np.int64]
    source_id: npt.NDArray[np.int32]
    prefix_code: npt.NDArray[np.int32]
    prefixes: list[str]
    actions: list[str | None]  # per prefix code
    rule_ids: npt.NDArray[np.int64]  # per prefix code, -1 = none
    proto: npt.NDArray[np.int16]  # -1 = unknown
    src_code: npt.NDArray[np.int32]  # into addresses, -1 = none
    dst_code: npt.NDArray[np.int32]
    addresses: list[str]
    sport: npt.NDArray[np.int32]  # -1 = none
    dport: npt.NDArray[np.int32]
    length: npt.NDArray[np.int64]
    tcp_flags: npt.NDArray[np.int16]  # 0 when not TCP
    src_ep: npt.NDArray[np.int32]  # -1 = none
    dst_ep: npt.NDArray[np.int32]


class Interner:
    """Strings <-> dense integer ids."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.values: list[str] = []

    def __len__(self) -> int:
        return len(self.values)

    def id(self, text: str) -> int:
        found = self.ids.get(text)
        if found is None:
            found = self.ids[text] = len(self.values)
            self.values.append(text)
        return found

    def map(self, texts: list[str]) -> npt.NDArray[np.int32]:
        """Batch codes -> ids; index -1 of the result is -1 (for missing values)."""
        out = np.empty(len(texts) + 1, dtype=np.int32)
        for i, t in enumerate(texts):
            out[i] = self.id(t)
        out[-1] = -1
        return out


class Aggregator:
    def __init__(self, bucket_seconds: float = 15.0, grace_seconds: float = 3.0) -> None:
        self.bucket_us = max(1, int(bucket_seconds * 1_000_000))
        self.grace_us = int(grace_seconds * 1_000_000)
        self.partials: dict[int, list[pl.DataFrame]] = {}
        self.unsaved: dict[int, list[pl.DataFrame]] = {}  # partials not yet given to take_open()
        # With `track_deltas`: partials of buckets flush() closed before take_open() saw them, so
        # take_open() + take_closed_unsaved() hand out every partial exactly once (the dataset's
        # append-only flow rows, `flowtui.collector.dataset`).
        self.track_deltas = False
        self.closed_unsaved: list[pl.DataFrame] = []
        self.addresses = Interner()
        self.prefixes = Interner()
        self.prefix_action: dict[int, str | None] = {}
        self.prefix_rule: dict[int, int] = {}
        self.allow_index: OrderedDict[ConnKey, int] = OrderedDict()  # -> prefix id
        self.late_rows = 0  # partial rows for buckets already flushed
        self._flushed_before = 0  # buckets below this start have been written

    def add_events(self, ev: EventColumns) -> int:
        """Group one batch; returns the number of partial rows it produced."""
        if len(ev.time_us) == 0:
            return 0
        addr = self.addresses.map(ev.addresses)
        pmap = self.prefixes.map(ev.prefixes)
        allow_code = np.zeros(len(ev.prefixes) + 1, dtype=bool)
        for code, (pid, action) in enumerate(zip(pmap[:-1].tolist(), ev.actions, strict=True)):
            self.prefix_action[pid] = action
            self.prefix_rule[pid] = int(ev.rule_ids[code])
            allow_code[code] = action == "Allow"
        allow = allow_code[ev.prefix_code]
        df = pl.DataFrame(
            {
                "bucket": ev.time_us - ev.time_us % self.bucket_us,
                "source_id": ev.source_id,
                "prefix_id": pmap[ev.prefix_code],
                "proto": ev.proto,
                "src_id": addr[ev.src_code],
                "dst_id": addr[ev.dst_code],
                "sport": ev.sport,
                "dport": ev.dport,
                "src_ep": ev.src_ep,
                "dst_ep": ev.dst_ep,
                "allow": allow,
                "length": ev.length,
                "flags": ev.tcp_flags,
                "t": ev.time_us,
            }
        )
        g = df.group_by(["bucket", "source_id", "prefix_id", "proto", "src_id", "dst_id", "sport", "dport"]).agg(
            pl.len().cast(pl.Int64).alias("events"),
            pl.col("length").sum().cast(pl.Int64).alias("len_sum"),
            pl.col("flags").bitwise_or().cast(pl.Int16).alias("tcp_flags"),
            pl.col("t").min().alias("first_seen"),
            pl.col("t").max().alias("last_seen"),
            pl.col("src_ep").first(),
            pl.col("dst_ep").first(),
            pl.col("allow").first(),
        )
        allowed = pl.col("allow")
        part = g.select(
            "bucket",
            "source_id",
            "prefix_id",
            "proto",
            "src_id",
            "dst_id",
            "sport",
            "dport",
            pl.lit(NFLOG, pl.Int8).alias("count_source"),
            "src_ep",
            "dst_ep",
            "events",
            pl.when(allowed).then(0).otherwise(pl.col("events")).cast(pl.Int64).alias("packets"),
            pl.when(allowed).then(0).otherwise(pl.col("len_sum")).cast(pl.Int64).alias("bytes"),
            pl.lit(0, pl.Int64).alias("reply_packets"),
            pl.lit(0, pl.Int64).alias("reply_bytes"),
            pl.when(allowed).then(pl.col("events")).otherwise(0).cast(pl.Int64).alias("connections_started"),
            pl.lit(0, pl.Int64).alias("connections_completed"),
            "tcp_flags",
            "first_seen",
            "last_seen",
        )
        if allow.any():
            self._remember_allowed(g.filter(allowed))
        self._add(part)
        return part.height

    def _add(self, part: pl.DataFrame) -> None:
        for (bucket,), frame in part.partition_by("bucket", as_dict=True, maintain_order=False).items():
            b = int(bucket)
            if b < self._flushed_before:
                self.late_rows += frame.height
            self.partials.setdefault(b, []).append(frame)
            self.unsaved.setdefault(b, []).append(frame)

    def _remember_allowed(self, allowed: pl.DataFrame) -> None:
        cols = ["source_id", "proto", "src_id", "dst_id", "sport", "dport", "prefix_id"]
        for src, proto, sip, dip, sp, dp, pid in allowed.select(cols).iter_rows():
            key = (src, proto, sip, dip, sp, dp)
            self.allow_index[key] = pid
            self.allow_index.move_to_end(key)
        while len(self.allow_index) > ALLOW_INDEX_LIMIT:
            self.allow_index.popitem(last=False)

    def add_connection(
        self,
        *,
        end_us: int,
        source_id: int,
        proto: int | None,
        src_ip: str | None,
        dst_ip: str | None,
        sport: int | None,
        dport: int | None,
        packets: int,
        bytes_: int,
        reply_packets: int,
        reply_bytes: int,
        src_ep: int | None,
        dst_ep: int | None,
    ) -> int | None:
        """A finished connection; returns the Allow rule it is attributed to (None if unseen)."""
        src_id = -1 if src_ip is None else self.addresses.ids.get(src_ip, -2)
        dst_id = -1 if dst_ip is None else self.addresses.ids.get(dst_ip, -2)
        key = (source_id, -1 if proto is None else proto, src_id, dst_id, -1 if sport is None else sport)
        pid = self.allow_index.get((*key, -1 if dport is None else dport))
        if pid is None:
            return None
        row = {
            "bucket": end_us - end_us % self.bucket_us,
            "source_id": source_id,
            "prefix_id": pid,
            "proto": key[1],
            "src_id": src_id,
            "dst_id": dst_id,
            "sport": key[4],
            "dport": -1 if dport is None else dport,
            "count_source": CONNTRACK,
            "src_ep": -1 if src_ep is None else src_ep,
            "dst_ep": -1 if dst_ep is None else dst_ep,
            "events": 0,
            "packets": packets,
            "bytes": bytes_,
            "reply_packets": reply_packets,
            "reply_bytes": reply_bytes,
            "connections_started": 0,
            "connections_completed": 1,
            "tcp_flags": 0,
            "first_seen": end_us,
            "last_seen": end_us,
        }
        self._add(pl.DataFrame([row], schema=_PARTIAL_SCHEMA))
        rule = self.prefix_rule.get(pid, -1)
        return None if rule < 0 else rule

    def flush(self, now_us: int | None) -> pa.Table:
        """`flows` rows for every bucket closed for `grace` (all of them if `now_us` is None).

        Closed buckets are always the lowest ones, so they all start before `flushed_before`.
        """
        ready = sorted(b for b in self.partials if now_us is None or b + self.bucket_us + self.grace_us <= now_us)
        if not ready:
            return schema.FLOWS.arrow_schema.empty_table()
        frames = [f for b in ready for f in self.partials.pop(b)]
        for b in ready:
            unsaved = self.unsaved.pop(b, None)  # their rows go to `flows` whole
            if unsaved and self.track_deltas:
                self.closed_unsaved.extend(unsaved)
        self._flushed_before = max(self._flushed_before, ready[-1] + self.bucket_us)
        table = self._sum(frames)
        if len(self.addresses) > INTERN_LIMIT:
            self._compact()
        return table

    @property
    def flushed_before(self) -> int:
        """Buckets starting before this (µs) have been handed out by `flush()`."""
        return self._flushed_before

    def take_open(self) -> pa.Table:
        """Rows (summed per key) of the partials of open buckets added since the last call."""
        frames = [f for b in sorted(self.unsaved) for f in self.unsaved[b]]
        self.unsaved = {}
        if not frames:
            return schema.FLOWS.arrow_schema.empty_table()
        return self._sum(frames)

    def take_closed_unsaved(self) -> pa.Table:
        """Rows (summed per key) of the partials that flush() closed since the last call and that
        take_open() had not returned (only with `track_deltas`)."""
        frames, self.closed_unsaved = self.closed_unsaved, []
        if not frames:
            return schema.FLOWS.arrow_schema.empty_table()
        return self._sum(frames)

    def _sum(self, frames: list[pl.DataFrame]) -> pa.Table:
        summed = (
            pl.concat(frames, how="vertical")
            .group_by(KEY)
            .agg(
                pl.col("src_ep").first(),
                pl.col("dst_ep").first(),
                *(pl.col(c).sum() for c in SUMS),
                pl.col("tcp_flags").bitwise_or(),
                pl.col("first_seen").min(),
                pl.col("last_seen").max(),
            )
            .sort(["bucket", "source_id", "first_seen"])
        )
        return self._finish(summed)

    def _finish(self, flows: pl.DataFrame) -> pa.Table:
        prefix_ids = sorted(self.prefix_action)
        top = max(prefix_ids, default=-1) + 1
        actions = [self.prefix_action.get(i) for i in range(top)]
        rules = [self.prefix_rule.get(i, -1) for i in range(top)]
        pid = flows["prefix_id"].to_numpy()
        rule = np.asarray(rules, dtype=np.int64)[pid] if top else np.zeros(0, dtype=np.int64)

        def strings(values: Sequence[str | None], ids: npt.NDArray[np.int32]) -> pa.Array:
            lookup = pa.array(values, type=pa.string())
            return lookup.take(pa.array(ids, mask=ids < 0))

        def nullable(col: str, typ: pa.DataType) -> pa.Array:
            values = flows[col].to_numpy()
            return pa.array(values, type=typ, mask=values < 0)

        bucket = flows["bucket"].to_numpy()
        return pa.table(
            {
                "start_time": pa.array(bucket, type=pa.int64()).cast(pa.timestamp("us")),
                "end_time": pa.array(bucket + self.bucket_us, type=pa.int64()).cast(pa.timestamp("us")),
                "source_id": pa.array(flows["source_id"].to_numpy(), type=pa.int32()),
                "action": strings(actions, pid),
                "rule_id": pa.array(rule, type=pa.int32(), mask=rule < 0),
                "prefix": strings(self.prefixes.values, pid),
                "proto": nullable("proto", pa.uint8()),
                "src_ip": strings(self.addresses.values, flows["src_id"].to_numpy()),
                "dst_ip": strings(self.addresses.values, flows["dst_id"].to_numpy()),
                "sport": nullable("sport", pa.uint16()),
                "dport": nullable("dport", pa.uint16()),
                "src_ep": nullable("src_ep", pa.int32()),
                "dst_ep": nullable("dst_ep", pa.int32()),
                **{c: pa.array(flows[c].to_numpy(), type=pa.int64()) for c in SUMS},
                "tcp_flags": pa.array(flows["tcp_flags"].to_numpy(), type=pa.uint8()),
                "first_seen": pa.array(flows["first_seen"].to_numpy(), type=pa.int64()).cast(pa.timestamp("us")),
                "last_seen": pa.array(flows["last_seen"].to_numpy(), type=pa.int64()).cast(pa.timestamp("us")),
                "count_source": strings(COUNT_SOURCES, flows["count_source"].to_numpy().astype(np.int32)),
            }
        )

    def _compact(self) -> None:
        """Forget addresses no pending partial or allow-index entry refers to (floods)."""
        keep: set[int] = set()
        for frames in [*self.partials.values(), self.closed_unsaved]:
            for f in frames:
                keep.update(f["src_id"].unique().to_list())
                keep.update(f["dst_id"].unique().to_list())
        for key in self.allow_index:
            keep.update((key[2], key[3]))
        keep.discard(-1)
        old = self.addresses
        fresh = Interner()
        remap = np.full(len(old) + 1, -1, dtype=np.int32)
        for i in sorted(keep):
            remap[i] = fresh.id(old.values[i])
        self.addresses = fresh
        def remapped(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
            return [
                f.with_columns(
                    pl.Series("src_id", remap[f["src_id"].to_numpy()]),
                    pl.Series("dst_id", remap[f["dst_id"].to_numpy()]),
                )
                for f in frames
            ]

        self.partials = {b: remapped(frames) for b, frames in self.partials.items()}
        self.unsaved = {b: remapped(frames) for b, frames in self.unsaved.items()}
        self.closed_unsaved = remapped(self.closed_unsaved)
        self.allow_index = OrderedDict(
            ((k[0], k[1], int(remap[k[2]]), int(remap[k[3]]), k[4], k[5]), v) for k, v in self.allow_index.items()
        )

    @property
    def pending_rows(self) -> int:
        return sum(f.height for frames in self.partials.values() for f in frames)
