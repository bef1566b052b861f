"""Flow files from elsewhere: what a file is, parsed by its one parser, imported once.

`sniff` tells a flow file's format from its content (not its name): Hubble JSON (`flow` or
`lost_events` objects), Calico flow records (flows.log, Goldmane, whisker), pcap/pcapng (magic
numbers), Parquet (`PAR1`), DuckDB (`DUCK`). `parse_file` runs the format's parser
(`flowtui.interop.hubble.parse_lines`, `flowtui.interop.calico_logs.parse_lines`) and
`import_file` writes the result into a store with `flowtui.interop.observed.write_import`,
unless a run already holds the same content.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtui.interop import calico_logs, hubble
from flowtui.interop.observed import ImportResult, Parsed, digest, imported_run, timeless_to_problems, write_import

PCAP_MAGIC = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")
JSON_FORMATS = ("hubble", "calico")
SNIFF_LINES = 20
NAMES = {"hubble": "Hubble JSON", "calico": "Calico flow records", "pcap": "a packet capture",
         "parquet": "Parquet", "duckdb": "a DuckDB database"}


class UnknownFormat(ValueError):
    """A file whose content is none of the flow formats."""


def _json_kind(doc: Any) -> str | None:
    if isinstance(doc, list):
        return next((k for k in map(_json_kind, doc[:SNIFF_LINES]) if k), None)
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("flow"), dict) or "lost_events" in doc or ("IP" in doc and "verdict" in doc):
        return "hubble"
    if calico_logs.looks_like(doc):
        return "calico"
    return None


def sniff(head: bytes) -> str | None:
    """`hubble`, `calico`, `pcap`, `parquet`, `duckdb`, or None, from a file's first bytes."""
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:4] in PCAP_MAGIC:
        return "pcap"
    if head[8:12] == b"DUCK":
        return "duckdb"
    text = head.decode("utf-8", errors="replace")
    for record in _records(text)[:SNIFF_LINES]:
        try:
            kind = _json_kind(json.loads(record))
        except (json.JSONDecodeError, RecursionError):
            continue  # a cut-off last line, or one malformed line among good ones
        if kind:
            return kind
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped[:1] in ("[", "{"):  # one JSON document longer than the head: its keys tell
        if '"flow"' in stripped and '"IP"' in stripped:
            return "hubble"
        if '"reporter"' in stripped and '"policies"' in stripped:
            return "calico"
    return None


def sniff_path(path: str | Path, size: int = 1 << 16) -> str | None:
    with open(path, "rb") as handle:
        return sniff(handle.read(size))


def _records(text: str) -> list[str]:
    """One JSON text per record, numbered like the file's lines where it has them: NDJSON; one JSON
    document (a list of records, whisker-backend's `{"items": [...]}` list response, or a single
    record, pretty-printed or not); or whisker-backend's event stream (`data: {...}` lines)."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped[:1] in ("[", "{"):
        try:
            doc = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            doc = None  # several lines of JSON (NDJSON), or not JSON: read line by line
        if isinstance(doc, dict) and isinstance(doc.get("items"), list):
            doc = doc["items"]
        if isinstance(doc, list):
            return [json.dumps(item) for item in doc]
        if isinstance(doc, dict):
            return [json.dumps(doc)]
    return [line[5:] if line.startswith("data:") else "" if line.startswith(("event:", "id:", ":")) else line
            for line in text.splitlines()]


def parse_lines(fmt: str, lines: Iterable[str], source: str) -> Parsed:
    if fmt == "hubble":
        return hubble.parse_lines(lines, source)
    if fmt == "calico":
        return calico_logs.parse_lines(lines, source)
    raise ValueError(f"no line parser for {fmt!r}")


@dataclass(frozen=True)
class ReadFile:
    format: str
    parsed: Parsed
    sha256: str


def read_file(path: str, fmt: str | None = None, data: bytes | None = None) -> ReadFile:
    """Read and parse a Hubble or Calico file (`-`: `data`, e.g. stdin's bytes)."""
    if data is None:
        data = Path(path).read_bytes()
    kind = sniff(data[: 1 << 16])
    if fmt is not None and kind not in (None, fmt):
        hint = f": use `flowtui import {kind}`" if kind in JSON_FORMATS + ("pcap",) else ""
        raise UnknownFormat(f"{path}: this is {NAMES.get(kind or '', kind)}, not {NAMES[fmt]}{hint}")
    kind = kind or fmt
    if kind not in JSON_FORMATS:
        what = "empty" if not data.strip() else f"{kind} data" if kind else "no Hubble or Calico flow record"
        raise UnknownFormat(f"{path}: {what} (expected Hubble JSON or Calico flow records)")
    lines = _records(data.decode("utf-8", errors="replace"))
    return ReadFile(kind, parse_lines(kind, lines, path), digest(data))


def import_file(store: Any, path: str, *, fmt: str | None = None, data: bytes | None = None,
                bucket_seconds: float = 15.0, keep_events: bool = True) -> tuple[ImportResult, Parsed]:
    """Parse `path` and write it into `store`, unless the same content was imported before."""
    read = read_file(path, fmt, data)
    before = imported_run(store, read.sha256)
    parsed = read.parsed
    timeless_to_problems(parsed)
    if before is not None or not parsed.observations:
        result = ImportResult(
            format=read.format, source=path, sha256=read.sha256, lines=parsed.lines, records=0, flow_rows=0,
            run_id=None, nodes=[], rules_added=0, endpoints_added=0,
            skipped={k: v for k, v in parsed.skipped.items() if v}, malformed=len(parsed.problems),
            lost=sum(parsed.lost.values()), duplicate_of=before)
        return result, parsed
    return write_import(store, parsed, source=path, sha256=read.sha256, bucket_seconds=bucket_seconds,
                        keep_events=keep_events), parsed
