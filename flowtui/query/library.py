"""Discover the named SQL files of the query library and parse their header comments.

A query file is plain SQL that the `duckdb` client runs as is (`.read queries/top_denied.sql`).
It starts with a header of `--` comment lines, in this shape:

    -- top_denied: the denied flows seen most, with the policy and rule that denied each.
    --
    -- A paragraph saying what the query answers and how to read its columns.
    --
    -- Parameters (DuckDB variables, all optional: SET VARIABLE name = 'value'):
    --   since      window start: a time or a duration back from now (default: all recorded flows)
    --   limit      rows returned (default: 20)
    --
    -- Example:
    --   flowtui query top_denied --param since=1h
    --
    -- Columns: src, src_ip, dst, ...

Parameters are DuckDB variables read with `getvariable('name')`, each with a COALESCE default in
the SQL, so an unset variable means the default. The header must declare exactly the variables
the SQL reads (`QueryFileError` otherwise), and `Columns:` are the result's columns, in order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENV_DIRS = "FLOWTUI_QUERIES"  # extra directories of query files (os.pathsep separated), searched first
REPO_QUERIES = Path(__file__).resolve().parents[2] / "queries"

_TITLE = re.compile(r"^(?P<name>[a-z][a-z0-9_]*):\s*(?P<summary>\S.*)$")
_PARAM = re.compile(r"^\s+(?P<name>[a-z_][a-z0-9_]*)\s+(?P<doc>\S.*?)\s*\(default:\s*(?P<default>[^()]*)\)\s*$")
_VARIABLE = re.compile(r"getvariable\(\s*'([A-Za-z_][A-Za-z0-9_]*)'\s*\)", re.IGNORECASE)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class QueryFileError(ValueError):
    """A query file whose header is missing, malformed, or disagrees with its SQL."""


class UnknownQuery(LookupError):
    """No query file of that name."""


@dataclass(frozen=True)
class Param:
    name: str
    doc: str
    default: str  # as the header says it (prose: the SQL holds the actual default)


@dataclass(frozen=True)
class QueryFile:
    name: str
    path: Path
    summary: str
    description: str
    params: tuple[Param, ...]
    examples: tuple[str, ...]
    columns: tuple[str, ...]
    sql: str  # the whole file, header included: exactly what `.read` runs

    @property
    def header(self) -> str:
        lines = []
        for line in self.sql.splitlines():
            if not line.startswith("--"):
                break
            lines.append(line[3:] if line.startswith("-- ") else line[2:])
        return "\n".join(lines)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


# Views of the store that read variables themselves (flowtui/store/schema.py VIEWS).
_VIEW_VARIABLES = {
    "query_window": {"since", "until", "now"},
    "flows_once": {"since", "until", "now"},
    "flow_pairs": {"since", "until", "now"},
    "rule_flows": {"since", "until", "now"},
    "implicit_denies": {"since", "until", "now"},
    "profile_allows": {"since", "until", "now"},
    "denylisted_flows": {"since", "until", "now"},
}


def variables(sql: str) -> set[str]:
    """The DuckDB variables a SQL text reads, directly or through the store's views that read them."""
    found = set(_VARIABLE.findall(sql))
    for view, names in _VIEW_VARIABLES.items():
        if re.search(rf"\b{view}\b", sql):
            found |= names
    return found


def parse(text: str, path: Path) -> QueryFile:
    """Parse one query file; raises QueryFileError with the file name and what is wrong."""
    where = str(path)
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        header.append(line[3:] if line.startswith("-- ") else line[2:])
    if not header:
        raise QueryFileError(f"{where}: no header comment (`-- {path.stem}: what it answers`)")
    title = _TITLE.match(header[0])
    if title is None:
        raise QueryFileError(f"{where}:1: the header must start with `-- {path.stem}: <what it answers>`")
    if title["name"] != path.stem:
        raise QueryFileError(f"{where}:1: the header names {title['name']!r}, the file is {path.stem!r}")
    description: list[str] = []
    params: list[Param] = []
    examples: list[str] = []
    columns: list[str] = []
    section = "description"
    for number, raw in enumerate(header[1:], 2):
        line = raw.rstrip()
        stripped = line.strip()
        if stripped.startswith("Parameters"):
            section = "params"
            continue
        if stripped.startswith("Example"):
            section = "examples"
            continue
        if stripped.startswith("Columns:"):
            section = "columns"
            stripped = stripped[len("Columns:"):]
        if section == "columns":
            columns += [c.strip() for c in stripped.split(",") if c.strip()]
        elif not stripped:
            continue
        elif section == "description":
            description.append(stripped)
        elif section == "params":
            m = _PARAM.match(line)
            if m is None:
                raise QueryFileError(f"{where}:{number}: parameter lines read `  name  what it is (default: ...)`")
            params.append(Param(m["name"], m["doc"], m["default"].strip()))
        else:
            examples.append(stripped)
    if not columns:
        raise QueryFileError(f"{where}: the header has no `Columns:` line")
    declared = {p.name for p in params}
    used = variables(text)
    if declared != used:
        missing, unused = sorted(used - declared), sorted(declared - used)
        detail = "; ".join(
            part for part in (
                f"reads undeclared {', '.join(missing)}" if missing else "",
                f"declares unused {', '.join(unused)}" if unused else "",
            ) if part
        )
        raise QueryFileError(f"{where}: header and SQL disagree on parameters: {detail}")
    return QueryFile(
        name=path.stem,
        path=path,
        summary=title["summary"].strip(),
        description=" ".join(description),
        params=tuple(params),
        examples=tuple(examples),
        columns=tuple(columns),
        sql=text,
    )


def default_dirs() -> list[Path]:
    """$FLOWTUI_QUERIES (first, so a user's file can replace a shipped one), then `queries/`."""
    dirs = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    dirs.append(REPO_QUERIES)
    return dirs


def discover(dirs: Iterable[Path] | None = None) -> dict[str, QueryFile]:
    """Every query file by name (the first directory that has a name wins), sorted by name."""
    found: dict[str, QueryFile] = {}
    for directory in default_dirs() if dirs is None else dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.sql")):
            if path.stem not in found and _NAME.match(path.stem):
                found[path.stem] = parse(path.read_text(encoding="utf-8"), path)
    return dict(sorted(found.items()))


def load(name_or_path: str, dirs: Iterable[Path] | None = None) -> QueryFile:
    """A query by name (`top_denied`) or by path (`./mine.sql`)."""
    if name_or_path.endswith(".sql") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UnknownQuery(f"{name_or_path}: no such query file")
        return parse(path.read_text(encoding="utf-8"), path)
    for directory in default_dirs() if dirs is None else dirs:
        path = directory / f"{name_or_path}.sql"
        if path.is_file():
            return parse(path.read_text(encoding="utf-8"), path)
    known = ", ".join(discover(dirs)) or "none found"
    raise UnknownQuery(f"no query named {name_or_path!r} (known: {known})")
