"""Nothing in a file can crash an import: real Hubble and Calico records, mutated at random (fields
dropped, replaced by hostile values, lines cut, bytes flipped), parse into flows and problems
without an exception, and every problem names its line."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from flowtui.interop import calico_logs, hubble
from flowtui.interop.imports import read_file
from flowtui.interop.observed import timeless_to_problems, write_import
from flowtui.store.duckdb_store import DuckStore
from flowtui.whatif.sources import parsed_frame

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material" / "interop"
HOSTILE: list[Any] = [None, "", "x", -1, 2**70, 1e308, float("nan"), [], {}, [1, [2]], {"a": {}}, True, "9" * 400,
                      "2026-13-45T99:99:99Z", "\u0000", "-"]


def mutate(doc: Any, rng: random.Random) -> Any:
    if isinstance(doc, dict) and doc:
        out = dict(doc)
        key = rng.choice(sorted(out))
        choice = rng.random()
        if choice < 0.3:
            del out[key]
        elif choice < 0.7:
            out[key] = rng.choice(HOSTILE)
        else:
            out[key] = mutate(out[key], rng)
        return out
    if isinstance(doc, list) and doc:
        out_list = list(doc)
        i = rng.randrange(len(out_list))
        out_list[i] = mutate(out_list[i], rng) if rng.random() < 0.5 else rng.choice(HOSTILE)
        return out_list
    return rng.choice(HOSTILE)


def lines_of(kind: str, rng: random.Random) -> list[str]:
    if kind == "hubble":
        source = (MATERIAL / "hubble" / "hubble-otel__basic-sample-400-tcp-flows.json").read_text().splitlines()[:60]
    else:
        source = (MATERIAL / "calico" / "flows.log").read_text().splitlines() * 30
    out = []
    for line in source:
        doc = json.loads(line)
        for _ in range(rng.randrange(1, 4)):
            doc = mutate(doc, rng)
        text = json.dumps(doc)
        roll = rng.random()
        if roll < 0.1:
            text = text[: rng.randrange(len(text) + 1)]
        elif roll < 0.15:
            text = "[" * 100_000 + "]" * 100_000  # deeper than the JSON parser goes
        out.append(text)
    return out


@pytest.mark.skipif(not MATERIAL.is_dir(), reason="no interop material")
@pytest.mark.parametrize("kind", ["hubble", "calico"])
@pytest.mark.parametrize("seed", range(12))
def test_mutated_records_never_crash(kind: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    lines = lines_of(kind, rng)
    parser = hubble.parse_lines if kind == "hubble" else calico_logs.parse_lines
    parsed = parser(lines, "f")
    timeless_to_problems(parsed)
    assert parsed.lines == len([line for line in lines if line.strip()])
    assert all(1 <= p.line <= len(lines) for p in parsed.problems)
    parsed_frame(parsed)  # and what-if can read what was kept, and the store can hold it
    store = DuckStore(tmp_path / "f.duckdb", snapshot_interval=None)
    try:
        result = write_import(store, parsed, source="f", sha256=str(seed))
    finally:
        store.close(snapshot=False)
    assert result.records == len(parsed.observations)
    path = tmp_path / "mutated.json"
    path.write_text("\n".join(lines) + "\n")
    path.write_bytes(bytes(b ^ 0xFF if rng.random() < 0.001 else b for b in path.read_bytes()))
    read_file(str(path), kind)  # flipped bytes too
