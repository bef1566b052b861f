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
globs, hive-partitioned directories, from any engine), `read_hubble` (`hubble observe -o json`
lines), `flowtui.whatif.storeread.read_store` (the DuckDB flow store) and
`flowtui.whatif.pcap.read_pcap`. `read_flows` picks one by looking at the path.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
HUBBLE_SUFFIXES = (".json", ".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
DUCKDB_SUFFIXES = (".duckdb", ".db")
PCAP_MAGIC = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


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


# --------------------------------------------------------------------------------------------
# Hubble


_HUBBLE_VERDICT = {
    "FORWARDED": "allow",
    "DROPPED": "deny",
    "AUDIT": "audit",
    "ERROR": "error",
    "REDIRECTED": "allow",
    "TRANSLATED": "allow",
    "TRACED": "allow",
}
_L4_PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMPv4": 1, "ICMPv6": 58}


def hubble_record(doc: dict[str, Any]) -> dict[str, Any] | None:
    """One `hubble observe -o json` line (with or without the `flow` wrapper) as a frame row, or
    None when it is not the first packet of an L3/L4 flow (replies, non-SYN TCP, L7, lost events)."""
    flow = doc.get("flow", doc)
    if not isinstance(flow, dict):
        return None
    ip = flow.get("IP") or {}
    src, dst = ip.get("source"), ip.get("destination")
    if not src or not dst:
        return None
    if flow.get("is_reply") is True:
        return None
    l4 = flow.get("l4") or {}
    row: dict[str, Any] = {"src_ip": src, "dst_ip": dst, "proto": None, "src_port": None, "dst_port": None,
                           "icmp_type": None, "icmp_code": None}
    for name, number in _L4_PROTO.items():
        layer = l4.get(name)
        if not isinstance(layer, dict):
            continue
        row["proto"] = number
        if number in (1, 58):
            row["icmp_type"] = layer.get("type", 0)
            row["icmp_code"] = layer.get("code", 0)
        else:
            row["src_port"] = layer.get("source_port")
            row["dst_port"] = layer.get("destination_port")
        if number == 6:
            flags = layer.get("flags")
            if isinstance(flags, dict) and flags and not (flags.get("SYN") and not flags.get("ACK")):
                return None  # only connection openings are decided by policy
        break
    if row["proto"] is None:
        return None
    verdict = flow.get("verdict")
    row["verdict"] = _HUBBLE_VERDICT.get(verdict, str(verdict).lower()) if verdict else None
    row["time"] = flow.get("time") or doc.get("time")
    policies = [*(flow.get("egress_allowed_by") or []), *(flow.get("ingress_allowed_by") or []),
                *(flow.get("egress_denied_by") or []), *(flow.get("ingress_denied_by") or [])]
    row["policy"] = ",".join(str(p.get("name", "")) for p in policies if isinstance(p, dict)) or None
    return row


def read_hubble_lines(lines: Iterable[str], source: str = "<hubble>") -> pl.DataFrame:
    rows = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FlowSourceError(f"{source}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(doc, dict):
            raise FlowSourceError(f"{source}:{number}: expected a JSON object per line")
        row = hubble_record(doc)
        if row is not None:
            rows.append(row)
    schema = {**SCHEMA, "verdict": pl.String(), "time": pl.String(), "policy": pl.String()}
    return normalize(pl.DataFrame(rows, schema=schema, orient="row"))


def read_hubble(path: str | Path, since: timedelta | None = None) -> pl.DataFrame:
    try:
        with open(path, encoding="utf-8") as handle:
            frame = read_hubble_lines(handle, str(path))
    except OSError as exc:
        raise FlowSourceError(f"{path}: {exc.strerror or exc}") from exc
    return since_filter(frame, since)


# --------------------------------------------------------------------------------------------
# Dispatch


def source_kind(path: str) -> str:
    """`parquet`, `hubble`, `pcap` or `duckdb`, by suffix, then by the first bytes."""
    lower = path.lower()
    if os.path.isdir(path) or lower.endswith(PARQUET_SUFFIXES) or "*" in path:
        return "parquet"
    for kind, suffixes in (("hubble", HUBBLE_SUFFIXES), ("pcap", PCAP_SUFFIXES), ("duckdb", DUCKDB_SUFFIXES)):
        if lower.endswith(suffixes):
            return kind
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise FlowSourceError(f"{path}: {exc.strerror or exc}") from exc
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] in PCAP_MAGIC:
        return "pcap"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head.lstrip()[:1] == b"{":
        return "hubble"
    raise FlowSourceError(f"{path}: cannot tell what this is (expected Parquet, Hubble JSON, pcap or DuckDB)")


def read_flows(paths: Sequence[str], since: timedelta | None = None) -> pl.DataFrame:
    """Every source, concatenated into one flow frame."""
    frames = []
    for path in paths:
        kind = source_kind(path)
        if kind == "parquet":
            frames.append(read_parquet(path, since))
        elif kind == "hubble":
            frames.append(read_hubble(path, since))
        elif kind == "pcap":
            from flowtui.whatif.pcap import read_pcap

            frames.append(since_filter(read_pcap(path), since))
        else:
            from flowtui.whatif.storeread import read_store

            frames.append(read_store(path, since))
    if not frames:
        return empty_frame()
    if len(frames) == 1:
        return frames[0]
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    return pl.concat([f.select(common).with_columns(pl.col("src_ip", "dst_ip").cast(pl.String))
                      for f in frames], how="vertical_relaxed")
