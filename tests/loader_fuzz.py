"""A seeded fuzzer of `flowtui check`: real policy files, mutated, must give exit 0 or 2, never a traceback.

Shared by the CI test (`tests/test_loader_fuzz.py`, a few seconds) and the long run
(`python bench/fuzz_loader.py --seconds 600`). A case is (seed, file): the same pair always gives
the same bytes, so every failure reproduces with `python bench/fuzz_loader.py --replay SEED:FILE`.

The corpus is the YAML and JSON of `../shared/external/material/` (published Calico and Kubernetes
examples) and of `tests/fixtures/`. Each case applies one to three mutations: byte flips, bytes
that are not UTF-8 or not allowed in YAML, truncation, duplicated or swapped lines, YAML tags
(`!!int`, `!!float`, `!!timestamp`, `!!binary`, unknown and Python tags) in front of values,
huge numbers (decimal past Python's 4,300-digit limit, hex, floats past a double), anchors,
aliases and alias bombs, recursive aliases, deep nesting, JSON escapes of lone surrogates.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from flowtui.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
MATERIAL = ROOT.parent / "shared" / "external" / "material"
FIXTURES = ROOT / "tests" / "fixtures"
MAX_FILE_BYTES = 256 * 1024
INTERNAL_ERROR = "internal error while loading"


def corpus() -> list[Path]:
    """Every YAML/JSON file of the material and the fixtures, in a stable order."""
    files: list[Path] = []
    for base in (MATERIAL, FIXTURES):
        if base.is_dir():
            files += sorted(p for p in base.rglob("*") if p.suffix in (".yaml", ".yml", ".json")
                            and p.is_file() and p.stat().st_size <= MAX_FILE_BYTES)
    return files


# ---- mutations: each takes the bytes and a seeded random source -------------------------------

Mutation = Callable[[bytes, random.Random], bytes]
_VALUE = re.compile(rb"(:\s+|-\s+)([^\s#{}\[\],][^\n#]*)")
_NUMBER = re.compile(rb"(?<![\w.])\d+(?![\w.])")
TAGS = [b"!!int ", b"!!float ", b"!!timestamp ", b"!!binary ", b"!!bool ", b"!!null ", b"!!str ", b"!!map ",
        b"!!seq ", b"!!set ", b"!!omap ", b"!custom ", b"!!python/object:os.system ", b"!!python/name:os.system ",
        b"!<tag:yaml.org,2002:int> "]
HUGE = [b"1" * 4301, b"-" + b"9" * 10_000, b"0x" + b"f" * 5000, b"0o" + b"7" * 9000, b"1e999", b"-1e400",
        b"." + b"5" * 5000, b"0b" + b"1" * 20_000, b"2001-13-45", b"2001-02-30T25:61:61Z", b".nan", b"-.inf"]


def _pos(data: bytes, rng: random.Random) -> int:
    return rng.randrange(len(data) + 1)


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def bad_bytes(data: bytes, rng: random.Random) -> bytes:
    junk = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\x01", b"\x1b[31m", b"\xef\xbb\xbf",
                       b"\r", b"\t", b"\x85", b"\xe2\x80\xa8", b"\\ud800", b'"\\udc00"', b"\\x00"])
    at = _pos(data, rng)
    return data[:at] + junk + data[at:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:_pos(data, rng)]


def duplicate_lines(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    a = rng.randrange(len(lines))
    b = min(len(lines), a + rng.randint(1, 6))
    at = rng.randrange(len(lines) + 1)
    return b"\n".join(lines[:at] + lines[a:b] + lines[at:])


def swap_lines(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _values(data: bytes) -> list[re.Match[bytes]]:
    return list(_VALUE.finditer(data))


def inject_tag(data: bytes, rng: random.Random) -> bytes:
    found = _values(data)
    if not found:
        return rng.choice(TAGS) + data
    m = rng.choice(found)
    return data[:m.start(2)] + rng.choice(TAGS) + data[m.start(2):]


def huge_number(data: bytes, rng: random.Random) -> bytes:
    found = list(_NUMBER.finditer(data)) or _values(data)
    huge = rng.choice(HUGE)
    if not found:
        return data + b"\nx: " + huge + b"\n"
    m = rng.choice(found)
    span = m.span() if m.re is _NUMBER else m.span(2)
    return data[:span[0]] + huge + data[span[1]:]


def alias(data: bytes, rng: random.Random) -> bytes:
    """An anchor on one value and aliases to it elsewhere (often misplaced, sometimes recursive)."""
    found = _values(data)
    if len(found) < 2:
        return data + b"\nbomb: &a [*a]\n"
    first, second = sorted(rng.sample(found, 2), key=lambda m: m.start())
    name = b"x%d" % rng.randrange(100)
    if rng.random() < 0.2:  # recursive: the alias inside its own anchor's node
        return data[:first.start(2)] + b"&" + name + b" [*" + name + b"]" + data[first.end(2):]
    return (data[:first.start(2)] + b"&" + name + b" " + data[first.start(2):second.start(2)] + b"*" + name
            + data[second.end(2):])


def alias_bomb(data: bytes, rng: random.Random) -> bytes:
    levels, width = rng.randint(4, 12), rng.randint(2, 10)
    lines = [b"b0: &b0 [" + b", ".join([b"lol"] * width) + b"]"]
    lines += [b"b%d: &b%d [" % (i, i) + b", ".join([b"*b%d" % (i - 1)] * width) + b"]" for i in range(1, levels)]
    bomb = b"\n".join(lines) + b"\n"
    if rng.random() < 0.5:
        return bomb + data
    lines_of = data.split(b"\n")
    at = rng.randrange(len(lines_of) + 1)
    return b"\n".join(lines_of[:at]) + b"\n" + bomb + b"\n".join(lines_of[at:])


def deep_nesting(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([150, 199, 200, 201, 1000, 20_000])
    opener, closer = rng.choice([(b"[", b"]"), (b"{a: ", b"}"), (b'{"a": ', b"}")])
    at = _pos(data, rng)
    return data[:at] + opener * depth + closer * depth + data[at:]


MUTATIONS: dict[str, Mutation] = {
    "flip": flip_bytes, "bad-bytes": bad_bytes, "truncate": truncate, "duplicate": duplicate_lines,
    "swap": swap_lines, "tag": inject_tag, "huge-number": huge_number, "alias": alias,
    "alias-bomb": alias_bomb, "deep": deep_nesting,
}


# ---- cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    seed: int
    source: Path
    mutations: tuple[str, ...]
    data: bytes

    @property
    def key(self) -> str:
        return f"{self.seed}:{self.source}"


def make_case(seed: int, source: Path) -> Case:
    rng = random.Random(f"{seed}:{source.name}")
    data = source.read_bytes()
    names = tuple(rng.choice(sorted(MUTATIONS)) for _ in range(rng.randint(1, 3)))
    for name in names:
        data = MUTATIONS[name](data, rng)
    return Case(seed, source, names, data)


def cases(seed: int, files: list[Path]) -> Iterator[Case]:
    """Endless cases from `seed` on: case n mutates file n mod len(files) with seed + n."""
    n = 0
    while True:
        yield make_case(seed + n, files[n % len(files)])
        n += 1


@dataclass
class Outcome:
    """What one run of `flowtui check` did: exit code, and the problem when it was not 0 or 2."""

    exit_code: int
    failure: str | None = None


def run_check(case: Case, workdir: Path) -> Outcome:
    """`flowtui check -f FILE` in-process on the mutated bytes, under the source's file name (its
    extension picks YAML or JSON)."""
    path = workdir / case.source.name
    path.write_bytes(case.data)
    result = CliRunner().invoke(cli, ["check", "-f", str(path)], prog_name="flowtui")
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        return Outcome(code, f"{type(exc).__name__}: {exc}"[:500])
    if code not in (0, 2):
        return Outcome(code, f"exit {code}: {result.output[-500:]}")
    if INTERNAL_ERROR in result.output:  # the loader's safety net caught an exception: still a bug
        line = next(x for x in result.output.splitlines() if INTERNAL_ERROR in x)
        return Outcome(code, line[:500])
    return Outcome(code)


@dataclass
class Tally:
    cases: int = 0
    exits: dict[int, int] = field(default_factory=dict)
    by_mutation: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[Case, str]] = field(default_factory=list)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.exits[outcome.exit_code] = self.exits.get(outcome.exit_code, 0) + 1
        for name in case.mutations:
            self.by_mutation[name] = self.by_mutation.get(name, 0) + 1
        if outcome.failure is not None:
            self.failures.append((case, outcome.failure))
