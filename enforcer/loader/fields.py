"""A small strict field walker: typed access to located nodes that collects problems.

Nothing here raises for bad input. Every accessor reports what is wrong through the object's
`Reporter` and returns None (or an empty result), so one pass over an object finds all of its
problems. Each problem carries the field path (`spec.ingress[0].destination.ports[1]`) and the
1-based line of that field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from enforcer.loader.documents import Entry, Mapping, Node, Scalar, describe
from enforcer.loader.documents import Sequence as SeqNode


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input. `str()` gives `FILE:LINE: Kind/ns/name: PATH: message`."""

    file: str
    line: int
    path: str
    message: str
    obj: str = ""  # "Kind/namespace/name" (or "Kind/name") when known

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return ": ".join(part for part in (where, self.obj, self.path, self.message) if part)


class LoadError(ValueError):
    """Every problem of every file of one load, one per line in `str()`."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Reporter:
    """Collects the problems of one object (or of one file, before objects are known)."""

    def __init__(self, file: str, obj: str = "") -> None:
        self.file = file
        self.obj = obj
        self.problems: list[Problem] = []

    def error(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, path, message, self.obj))


_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def child_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    segment = key if _SIMPLE_KEY.match(key) else f"[{json.dumps(key)}]"
    if not base:
        return segment
    return f"{base}{segment}" if segment.startswith("[") else f"{base}.{segment}"


def quote(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


@dataclass
class Value:
    """A node together with where it is: its field path, its line and the object's reporter."""

    r: Reporter
    node: Node
    path: str
    line: int

    def error(self, message: str) -> None:
        self.r.error(self.line, self.path, message)

    @property
    def raw(self) -> object:
        return self.node.value if isinstance(self.node, Scalar) else None

    def _wrong(self, wanted: str) -> None:
        self.error(f"must be {wanted}, not {describe(self.node)}")

    def as_str(self) -> str | None:
        if isinstance(self.node, Scalar) and isinstance(self.node.value, str):
            return self.node.value
        self._wrong("a string")
        return None

    def as_int(self, low: int | None = None, high: int | None = None) -> int | None:
        value = self.raw
        if not isinstance(value, int) or isinstance(value, bool):
            self._wrong("an integer")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.error(f"{value} is out of range ({low}-{high})")
            return None
        return value

    def as_number(self) -> float | None:
        value = self.raw
        if not isinstance(value, int | float) or isinstance(value, bool):
            self._wrong("a number")
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range
            self.error("is out of range (too large for a number)")
            return None
        if not math.isfinite(number):
            self.error(f"{value} is not a finite number")
            return None
        return number

    def as_bool(self) -> bool | None:
        value = self.raw
        if not isinstance(value, bool):
            self._wrong("true or false")
            return None
        return value

    def as_list(self, max_items: int | None = None) -> list[Value]:
        if not isinstance(self.node, SeqNode):
            self._wrong("a list")
            return []
        items = self.node.items
        if max_items is not None and len(items) > max_items:
            self.error(f"has {len(items)} entries (at most {max_items} allowed)")
        return [Value(self.r, n, child_path(self.path, i), n.line) for i, n in enumerate(items)]

    def as_map(
        self,
        allowed: Iterable[str],
        *,
        ignored: Iterable[str] = (),
        ignore_unknown: bool = False,
    ) -> Fields | None:
        """The node as a mapping whose keys must be among `allowed` (+ `ignored`, accepted and
        skipped). With `ignore_unknown`, any other key is accepted and skipped too."""
        if not isinstance(self.node, Mapping):
            self._wrong("a mapping")
            return None
        fields = Fields(self, self.node, tuple(allowed), lenient=ignore_unknown)
        known = set(fields.allowed) | set(ignored)
        if not ignore_unknown:
            for key, entry in self.node.entries.items():
                if key not in known:
                    choices = ", ".join(fields.allowed) or "none"
                    self.r.error(
                        entry.key_line,
                        child_path(self.path, key),
                        f"unknown field {quote(key)} (allowed: {choices})",
                    )
        return fields

    def as_str_map(self) -> list[tuple[str, str, Value]]:
        """A map of strings to strings (labels, annotations): (key, value, located value)."""
        if not isinstance(self.node, Mapping):
            self._wrong("a mapping of strings")
            return []
        out = []
        for key, entry in self.node.entries.items():
            value = Value(self.r, entry.value, child_path(self.path, key), entry.key_line)
            text = value.as_str()
            if text is not None:
                out.append((key, text, value))
        return out


def empty_mapping(r: Reporter, path: str, line: int) -> Fields:
    node = Mapping(line, {})
    return Fields(Value(r, node, path, line), node, ())


@dataclass
class Fields:
    """Typed access to the fields of one mapping. Null values count as absent."""

    value: Value
    mapping: Mapping
    allowed: tuple[str, ...]
    lenient: bool = False  # read any key; otherwise keys outside `allowed` read as absent

    @property
    def r(self) -> Reporter:
        return self.value.r

    @property
    def path(self) -> str:
        return self.value.path

    @property
    def line(self) -> int:
        return self.value.line

    def entry(self, key: str) -> Entry | None:
        if not self.lenient and key not in self.allowed:
            return None  # an unknown field: already reported, and never interpreted
        entry = self.mapping.entries.get(key)
        if entry is None or (isinstance(entry.value, Scalar) and entry.value.value is None):
            return None
        return entry

    def has(self, key: str) -> bool:
        return self.entry(key) is not None

    def present(self) -> list[str]:
        return [k for k in self.mapping.entries if self.has(k)]

    def get(self, key: str, *, required: bool = False) -> Value | None:
        entry = self.entry(key)
        if entry is None:
            if required:
                self.missing(key)
            return None
        return Value(self.r, entry.value, child_path(self.path, key), entry.key_line)

    def missing(self, key: str, message: str = "required field is missing") -> None:
        self.r.error(self.line, child_path(self.path, key), message)

    def error_at(self, key: str, message: str) -> None:
        """Report at the field when it is written (even as null), else where it is missing."""
        entry = self.mapping.entries.get(key)
        if entry is None:
            self.missing(key, message)
        else:
            self.r.error(entry.key_line, child_path(self.path, key), message)

    def get_str(self, key: str, *, required: bool = False) -> str | None:
        value = self.get(key, required=required)
        return value.as_str() if value is not None else None

    def get_int(self, key: str, low: int | None = None, high: int | None = None) -> int | None:
        value = self.get(key)
        return value.as_int(low, high) if value is not None else None

    def get_number(self, key: str) -> float | None:
        value = self.get(key)
        return value.as_number() if value is not None else None

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        if value is None:
            return default
        parsed = value.as_bool()
        return default if parsed is None else parsed

    def get_list(self, key: str, max_items: int | None = None) -> list[Value]:
        value = self.get(key)
        return value.as_list(max_items) if value is not None else []

    def get_str_list(self, key: str, max_items: int | None = None) -> list[tuple[str, Value]]:
        out = []
        for item in self.get_list(key, max_items):
            text = item.as_str()
            if text is not None:
                out.append((text, item))
        return out

    def get_map(
        self,
        key: str,
        allowed: Iterable[str],
        *,
        ignored: Iterable[str] = (),
        ignore_unknown: bool = False,
        required: bool = False,
    ) -> Fields | None:
        value = self.get(key, required=required)
        if value is None:
            return None
        return value.as_map(allowed, ignored=ignored, ignore_unknown=ignore_unknown)
