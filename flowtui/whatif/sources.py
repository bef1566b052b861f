"""Where what-if's flows come from: any `--db`/`--flows` source, told apart by content.

A source is a DuckDB flow store, a Parquet file, directory or glob (a flow-store export like
`sample-logs/` included), a Hubble JSON export, a Calico flow log (flows.log, Goldmane,
whisker), or a pcap/pcapng capture. Hubble and Calico files go through the same parsers as
`flowtui import` (`flowtui.interop.imports`), so a what-if on a file sees the flows an import of
it would store; each row also carries the endpoints the file recorded (`src_namespace`,
`src_name`, `src_labels`, ...), which `flowtui.whatif.recorded` turns into pods when the current
policy set does not know the addresses.

This module sits above `frames` (the flow-frame shape), `pcap` and `storeread` (the readers),
which never import it: no cycle.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import polars as pl

from flowtui.interop.observed import Parsed
from flowtui.whatif.frames import (
    DUCKDB_SUFFIXES,
    PARQUET_SUFFIXES,
    FlowSourceError,
    empty_frame,
    normalize,
    read_parquet,
    since_filter,
)

ENDPOINT_COLUMNS = ("type", "namespace", "name", "labels")


def source_kind(path: str) -> str:
    """`parquet`, `duckdb`, `pcap`, `hubble` or `calico`: directories and globs are Parquet; files by
    their content first (a `.json` that holds Calico records is Calico), then their suffix."""
    from flowtui.interop.imports import sniff_path

    if os.path.isdir(path) or ("*" in path and not os.path.exists(path)):
        return "parquet"
    if not os.path.exists(path):
        raise FlowSourceError(f"{path}: no such file or directory")
    try:
        kind = sniff_path(path)
    except OSError as exc:
        raise FlowSourceError(f"{path}: {exc.strerror or exc}") from exc
    if kind is not None:
        return kind
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(DUCKDB_SUFFIXES):
        return "duckdb"
    if os.path.getsize(path) == 0:
        raise FlowSourceError(f"{path}: empty file: no flows")
    raise FlowSourceError(f"{path}: cannot tell what this is (expected a DuckDB flow store, Parquet, Hubble JSON, "
                          "Calico flow records, or a pcap/pcapng capture)")


def parsed_frame(parsed: Parsed) -> pl.DataFrame:
    """A flow frame from an import parser's observations, with the recorded endpoints."""
    rows = []
    for o in parsed.observations:
        row: dict[str, Any] = {
            "src_ip": o.src_ip, "dst_ip": o.dst_ip, "proto": o.proto, "src_port": o.sport, "dst_port": o.dport,
            "icmp_type": o.icmp_type, "icmp_code": o.icmp_code, "count": o.events if o.end is not None else 1,
            "time": o.time, "packets": o.packets, "bytes": o.bytes, "verdict": o.action.lower(),
            "policy": o.rule.name, "node": o.node, "l7": o.l7,
        }
        for side, ep in (("src", o.src), ("dst", o.dst)):
            row[f"{side}_type"] = ep.type if ep else None
            row[f"{side}_namespace"] = ep.namespace if ep else None
            row[f"{side}_name"] = ep.name if ep else None
            row[f"{side}_labels"] = list(ep.labels) if ep else []
        rows.append(row)
    schema: dict[str, pl.DataType] = {
        "src_ip": pl.String(), "dst_ip": pl.String(), "proto": pl.Int16(), "src_port": pl.Int32(),
        "dst_port": pl.Int32(), "icmp_type": pl.Int16(), "icmp_code": pl.Int16(), "count": pl.Int64(),
        "time": pl.Datetime("us"), "packets": pl.Int64(), "bytes": pl.Int64(), "verdict": pl.String(),
        "policy": pl.String(), "node": pl.String(), "l7": pl.String(),
    }
    for side in ("src", "dst"):
        schema |= {f"{side}_type": pl.String(), f"{side}_namespace": pl.String(), f"{side}_name": pl.String(),
                   f"{side}_labels": pl.List(pl.String())}
    from flowtui.whatif.recorded import fill_addresses

    return normalize(fill_addresses(pl.DataFrame(rows, schema=schema, orient="row")))


def read_foreign(path: str, since: timedelta | None = None) -> pl.DataFrame:
    """A Hubble or Calico file, through the import parser; malformed records are skipped (as by
    `flowtui import`), and a file with none that is a flow is an error."""
    from flowtui.interop.imports import UnknownFormat, read_file

    try:
        read = read_file(path)
    except UnknownFormat as exc:
        raise FlowSourceError(str(exc)) from exc
    except OSError as exc:
        raise FlowSourceError(f"{path}: {exc.strerror or exc}") from exc
    parsed = read.parsed
    if not parsed.observations:
        problems = "; ".join(parsed.problem_lines(path)[:3])
        raise FlowSourceError(f"{path}: no flows in {parsed.lines:,} records" + (f" ({problems})" if problems else ""))
    return since_filter(parsed_frame(parsed), since)




def read_source(path: str, since: timedelta | None = None) -> pl.DataFrame:
    from flowtui.interop.parquet import export_root

    kind = source_kind(path)
    if kind == "parquet":
        root = export_root(path)
        if root is not None:  # a flow-store export (or a table file of one): read it as the store
            from flowtui.whatif.storeread import read_store

            return read_store(root, since)
        if "*" in path and not glob.glob(path):
            raise FlowSourceError(f"{path}: no file matches")
        return read_parquet(path, since)
    if kind in ("hubble", "calico"):
        return read_foreign(path, since)
    if kind == "pcap":
        from flowtui.whatif.pcap import read_capture

        frame, stats = read_capture(path)
        if frame.height == 0:
            raise FlowSourceError(f"{path}: no flows ({stats.summary()})")
        return since_filter(frame, since)
    from flowtui.whatif.storeread import read_store

    return read_store(path, since)


def read_flows(paths: Sequence[str], since: timedelta | None = None) -> pl.DataFrame:
    """Every source, concatenated into one flow frame."""
    frames = [read_source(str(p), since) for p in paths]
    if not frames:
        return empty_frame()
    if len(frames) == 1:
        return frames[0]
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    return pl.concat([f.select(common).with_columns(pl.col("src_ip", "dst_ip").cast(pl.String))
                      for f in frames], how="vertical_relaxed")

