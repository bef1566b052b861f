"""The flow frame: what the what-if engine reads, whatever recorded the flows.

A flow frame is a polars DataFrame with one row per recorded flow (or per aggregate of equal
flows, weighted by `count`):

| column | type | meaning |
|---|---|---|
| `src_ip`, `dst_ip` | str (or Categorical) | addresses as text, IPv4 or IPv6 |
| `proto` | int | IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, ...) |
| `src_port`, `dst_port` | int or null | ports; null for protocols without ports |
| `icmp_type`, `icmp_code` | int or null | ICMP/ICMPv6 type and code; null otherwise or unknown |
| `count` | int, optional | flows this row stands for (default 1) |
| `time` | datetime, optional | when the flow was seen (UTC) |
| `packets`, `bytes` | int, optional | traffic, carried into examples |
| `verdict` | str, optional | the recorded verdict (`allow`, `deny`, ...) |
| `policy` | str, optional | the recorded deciding policy/rule |

`normalize()` turns any frame with recognisable column names into that shape (`sport` and
`source_port` are `src_port`, `protocol: "tcp"` is 6, ...). Readers: `read_parquet` (files,
globs, hive-partitioned directories, from any engine), `flowtui.whatif.storeread.read_store`
(the DuckDB flow store), `flowtui.whatif.pcap.read_pcap`, and the import parsers for Hubble and
Calico files; `flowtui.whatif.sources.read_flows` picks one by looking at the content. Those
modules import this one, never the reverse.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from enforcer.model import PROTOCOL_NUMBERS

REQUIRED = ("src_ip", "dst_ip", "proto")
SCHEMA: dict[str, pl.DataType] = {
    "src_ip": pl.String(),
    "dst_ip": pl.String(),
    "proto": pl.Int16(),
    "src_port": pl.Int32(),
    "dst_port": pl.Int32(),
    "icmp_type": pl.Int16(),
    "icmp_code": pl.Int16(),
}
OPTIONAL: dict[str, pl.DataType] = {
    "count": pl.Int64(),
    "time": pl.Datetime("us"),
    "packets": pl.Int64(),
    "bytes": pl.Int64(),
    "verdict": pl.String(),
    "policy": pl.String(),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "src_ip": ("source_ip", "saddr", "src_addr", "src", "source_address", "srcaddr"),
    "dst_ip": ("destination_ip", "daddr", "dst_addr", "dst", "dest_ip", "destination_address", "dstaddr"),
    "proto": ("protocol", "ip_proto", "l4proto"),
    "src_port": ("sport", "source_port", "srcport"),
    "dst_port": ("dport", "destination_port", "dest_port", "dstport"),
    "icmp_type": ("icmptype",),
    "icmp_code": ("icmpcode",),
    "count": ("flows", "num_flows", "n"),
    "time": ("start_time", "timestamp", "ts", "first_seen"),
    "verdict": ("action", "recorded_verdict"),
}
_PROTOS = {name.lower(): num for name, num in PROTOCOL_NUMBERS.items()} | {"icmpv4": 1, "sctp": 132}
PCAP_SUFFIXES = (".pcap", ".pcapng", ".cap")
PARQUET_SUFFIXES = (".parquet", ".pq")
DUCKDB_SUFFIXES = (".duckdb", ".db")


class FlowSourceError(ValueError):
    """A flow source that cannot be read; the message says which and why."""


# --------------------------------------------------------------------------------------------
# Shape


def _rename_aliases(frame: pl.DataFrame) -> pl.DataFrame:
    lower = {c.lower(): c for c in frame.columns}
    renames: dict[str, str] = {}
    for canonical, aliases in ALIASES.items():
        if canonical in frame.columns:
            continue
        for alias in (canonical, *aliases):
            if alias in lower and lower[alias] not in renames:
                renames[lower[alias]] = canonical
                break
    return frame.rename(renames) if renames else frame


def _proto_expr(dtype: pl.DataType) -> pl.Expr:
    if dtype.is_integer():
        return pl.col("proto").cast(pl.Int16)
    text = pl.col("proto").cast(pl.String).str.to_lowercase().str.strip_chars()
    return (
        pl.when(text.is_in(list(_PROTOS)))
        .then(text.replace_strict(_PROTOS, default=None, return_dtype=pl.Int16))
        .otherwise(text.cast(pl.Int16, strict=False))
    )


def normalize(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame in the flow-frame shape: canonical names and types, missing optional columns
    added as nulls (`count` as 1). Raises FlowSourceError when a required column is missing."""
    frame = _rename_aliases(frame)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise FlowSourceError(
            f"flow frame has no {', '.join(missing)} column (columns: {', '.join(frame.columns) or 'none'})"
        )
    exprs: list[pl.Expr] = []
    for name, dtype in SCHEMA.items():
        if name == "proto":
            exprs.append(_proto_expr(frame.schema["proto"]).alias("proto"))
        elif name not in frame.columns:
            exprs.append(pl.lit(None, dtype).alias(name))
        elif name in ("src_ip", "dst_ip") and isinstance(frame.schema[name], pl.Categorical | pl.Enum):
            exprs.append(pl.col(name))  # keep dictionary-encoded addresses: the engine reads their codes
        else:
            exprs.append(pl.col(name).cast(dtype, strict=False))
    for name, dtype in OPTIONAL.items():
        if name not in frame.columns:
            if name == "count":
                exprs.append(pl.lit(1, pl.Int64).alias("count"))
            continue
        if name == "time":
            exprs.append(_time_expr(frame.schema["time"]))
        elif name == "verdict":
            exprs.append(pl.col("verdict").cast(pl.String).str.to_lowercase())
        elif name == "count":
            exprs.append(pl.col("count").cast(pl.Int64, strict=False).fill_null(1))
        else:
            exprs.append(pl.col(name).cast(dtype, strict=False))
    extra = [c for c in frame.columns if c not in SCHEMA and c not in OPTIONAL]
    return frame.select(*exprs, *extra)


def _time_expr(dtype: pl.DataType) -> pl.Expr:
    col = pl.col("time")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return col.dt.cast_time_unit("us").alias("time")
    if dtype.is_integer() or dtype.is_float():  # unix seconds
        return pl.from_epoch(col.cast(pl.Float64).mul(1e6).cast(pl.Int64), time_unit="us").alias("time")
    return col.cast(pl.String).str.to_datetime(time_unit="us", strict=False, time_zone="UTC") \
        .dt.replace_time_zone(None).alias("time")


def ensure_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` if it already has the flow-frame shape, else `normalize(frame)`."""
    if all(c in frame.columns for c in (*SCHEMA, "count")):
        return frame
    return normalize(frame)


def empty_frame() -> pl.DataFrame:
    return normalize(pl.DataFrame(schema={k: v for k, v in SCHEMA.items()}))


# --------------------------------------------------------------------------------------------
# Time windows


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `24h`, `7d`, `2w` (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r}: expected a duration such as 30s, 15m, 24h, 7d or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def since_filter(frame: pl.DataFrame, since: timedelta | None, now: datetime | None = None) -> pl.DataFrame:
    """Rows seen within `since` of `now` (rows without a time are kept: nothing says they are old)."""
    if since is None or "time" not in frame.columns:
        return frame
    cutoff = (now or utcnow()) - since
    return frame.filter(pl.col("time").is_null() | (pl.col("time") >= cutoff))


# --------------------------------------------------------------------------------------------
# Parquet


def read_parquet(path: str | Path, since: timedelta | None = None) -> pl.DataFrame:
    """A Parquet file, a glob, or a directory of them (hive-partitioned directories too)."""
    source = str(path)
    if not os.path.exists(source) and "*" not in source:
        raise FlowSourceError(f"{source}: no such file or directory")
    scan = pl.scan_parquet(source, hive_partitioning=True)  # directories: every file below, hive keys as columns
    try:
        frame = scan.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise FlowSourceError(f"{source}: cannot read Parquet: {exc}") from exc
    return since_filter(normalize(frame), since)
