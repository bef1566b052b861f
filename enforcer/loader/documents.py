"""Reading YAML and JSON text into located nodes: every value knows the line it was written on.

The rest of the loader never sees PyYAML or `json` objects; it walks the small node tree defined
here (`Mapping`, `Sequence`, `Scalar`), so that each field path can be reported with a 1-based
line number, for JSON as well as YAML.

YAML details that matter for policy files:

* Scalars resolve as YAML 1.1 does (PyYAML's safe schema, which is also what go-yaml v2 — used by
  kubectl and calicoctl — does), except that base-60 numbers are **not** recognised: with
  PyYAML's default `ports: [1000:1059]` would silently become the integer 60059. Here it stays
  the string `"1000:1059"`, which is what Calico sees.
* Duplicate keys are errors (PyYAML silently keeps the last one).
* Merge keys (`<<: *anchor`) are honoured. Before a document is converted, the size it would
  have with its aliases expanded is counted over the composed graph (each node once, memoised):
  an "alias bomb" (a few lines that expand to billions of nodes) is refused in milliseconds, in
  the memory its text takes, instead of being built.
* A scalar PyYAML cannot construct (`!!int abc`, `!!float x`, `!!timestamp 2001-13-45`, an
  integer of more digits than Python converts) is an error at its line, never an exception.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from json.decoder import JSONDecodeError
from typing import Any

import yaml

# --------------------------------------------------------------------------------------------
# The node tree


@dataclass(eq=False)
class Node:
    line: int


@dataclass(eq=False)
class Scalar(Node):
    value: Any  # str, int, float, bool, None, or a datetime/date from a YAML timestamp


@dataclass(eq=False)
class Entry:
    key_line: int
    value: Node


@dataclass(eq=False)
class Mapping(Node):
    entries: dict[str, Entry]


@dataclass(eq=False)
class Sequence(Node):
    items: list[Node]


class DocumentError(Exception):
    """A syntax problem in the text: `line` is 1-based (0 when unknown)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def describe(node: Node) -> str:
    """`a string`, `a list`, ...: for "must be X, not Y" messages."""
    if isinstance(node, Mapping):
        return "a mapping"
    if isinstance(node, Sequence):
        return "a list"
    assert isinstance(node, Scalar)
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value if len(value) <= 60 else value[:57] + '...')}"
    return f"the {type(value).__name__} {value}"


# --------------------------------------------------------------------------------------------
# YAML

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """PyYAML's safe loader without YAML 1.1 base-60 (sexagesimal) numbers."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT_TAG,
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

MAX_DEPTH = 200
MAX_NODES = 2_000_000  # per document, after alias expansion
# Nodes that aliases may add to a document beyond those written in it. Anchors shared by a few
# hundred policies stay far below; an alias bomb reaches it after a handful of lines.
MAX_ALIAS_NODES = 100_000
MAX_INT_DIGITS = 4300  # Python's default int/str conversion limit (sys.get_int_max_str_digits)
_INT_LIMIT = 10**MAX_INT_DIGITS  # the smallest integer of more digits


def _expanded_size(root: Any) -> tuple[int, int]:
    """(nodes with aliases expanded, distinct nodes) of a composed YAML document, counted once per
    distinct node, so the cost is that of the text. Raises DocumentError for nesting deeper than
    MAX_DEPTH and for a recursive alias (a node that contains itself)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise DocumentError(line, "document nested too deeply")
        if id(node) in open_:
            raise DocumentError(line, "a recursive alias (a node that contains itself)")
        total = 1
        if isinstance(node, yaml.SequenceNode):
            open_.add(id(node))
            total += sum(size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            open_.add(id(node))
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root, 0), len(sizes)


def _check_expansion(root: Any) -> None:
    expanded, written = _expanded_size(root)
    line = root.start_mark.line + 1
    if expanded - written > MAX_ALIAS_NODES:
        raise DocumentError(line, f"aliases expand this document from {written:,} to {expanded:,} nodes "
                                  f"(at most {MAX_ALIAS_NODES:,} more than written): refused as an alias bomb")
    if expanded > MAX_NODES:
        raise DocumentError(line, f"document too large: {expanded:,} nodes (at most {MAX_NODES:,})")


def _scalar_problem(ynode: Any, exc: Exception) -> str:
    """What is wrong with a scalar PyYAML could not construct, for a "line N: ..." message."""
    tag = str(ynode.tag).removeprefix("tag:yaml.org,2002:")
    text = str(ynode.value)
    shown = json.dumps(text if len(text) <= 40 else text[:37] + "...")
    if tag == "int" and "digits" in str(exc):
        digits = sum(ch.isdigit() for ch in text)
        return f"integer of {digits:,} digits (at most {MAX_INT_DIGITS:,})"
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"invalid !!{tag} value {shown}: {detail}"


class _YamlConverter:
    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.errors: list[DocumentError] = []
        self.budget = MAX_NODES
        self.stack: set[int] = set()

    def convert(self, ynode: Any, depth: int = 0) -> Node:
        line = ynode.start_mark.line + 1
        self.budget -= 1
        if self.budget < 0:
            raise DocumentError(line, "document too large after expanding aliases")
        if depth > MAX_DEPTH or id(ynode) in self.stack:
            raise DocumentError(line, "document nested too deeply (or a recursive alias)")
        if isinstance(ynode, yaml.ScalarNode):
            if ynode.tag == _STR_TAG:  # the common case, without the constructor's bookkeeping
                return Scalar(line, ynode.value)
            try:
                value = self.loader.construct_object(ynode, deep=True)
            except yaml.YAMLError as exc:
                self.errors.append(DocumentError(line, _yaml_message(exc)))
                value = ynode.value
            except Exception as exc:  # noqa: BLE001
                # PyYAML's scalar constructors call int(), float(), datetime(), dict lookups (!!bool)
                # on the text unguarded: whatever they raise, the scalar is invalid.
                self.loader.recursive_objects.pop(ynode, None)  # left behind by the failed call
                self.errors.append(DocumentError(line, _scalar_problem(ynode, exc)))
                value = ynode.value
            if isinstance(value, int) and abs(value) >= _INT_LIMIT:
                # Hex, octal and binary escape the decimal limit, but str() of the result does not.
                self.errors.append(DocumentError(line, f"integer of more than {MAX_INT_DIGITS:,} digits"))
                value = ynode.value
            return Scalar(line, value)
        self.stack.add(id(ynode))
        try:
            if isinstance(ynode, yaml.SequenceNode):
                return Sequence(line, [self.convert(item, depth + 1) for item in ynode.value])
            assert isinstance(ynode, yaml.MappingNode)
            return self._mapping(ynode, line, depth)
        finally:
            self.stack.discard(id(ynode))

    def _mapping(self, ynode: Any, line: int, depth: int) -> Mapping:
        entries: dict[str, Entry] = {}
        merged: dict[str, Entry] = {}
        for key_node, value_node in ynode.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(DocumentError(key_line, "mapping keys must be plain strings"))
                continue
            if key_node.tag == _MERGE_TAG:
                self._merge(value_node, merged, depth)
                continue
            key = str(key_node.value)
            if key in entries:
                first = entries[key].key_line
                self.errors.append(DocumentError(key_line, f"duplicate key {json.dumps(key)} (first at line {first})"))
                continue
            entries[key] = Entry(key_line, self.convert(value_node, depth + 1))
        for key, entry in merged.items():
            entries.setdefault(key, entry)
        return Mapping(line, entries)

    def _merge(self, ynode: Any, into: dict[str, Entry], depth: int) -> None:
        sources = ynode.value if isinstance(ynode, yaml.SequenceNode) else [ynode]
        for source in sources:
            node = self.convert(source, depth + 1)
            if not isinstance(node, Mapping):
                self.errors.append(DocumentError(node.line, "a merge key (<<) needs a mapping"))
                continue
            for key, entry in node.entries.items():
                into.setdefault(key, entry)


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # its str() spans lines and names "<unicode string>"
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"character #x{char:04x} is not allowed in YAML ({exc.reason})"
    if isinstance(exc, yaml.MarkedYAMLError):
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.problem_mark is not None:
            if exc.context_mark.line != exc.problem_mark.line:
                context += f" (line {exc.context_mark.line + 1})"
        parts = [p for p in (context, exc.problem) if p]
        return "YAML syntax error: " + ", ".join(parts) if parts else "YAML syntax error"
    return f"YAML error: {exc}"


def _yaml_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(exc, "position", None)  # ReaderError
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 0


def parse_yaml(text: str) -> tuple[list[Node], list[DocumentError]]:
    """All non-empty documents of a YAML stream, and every problem found (syntax, duplicate keys,
    unknown tags...). After a syntax error the documents read so far are returned."""
    loader = _Loader(text)
    docs: list[Node] = []
    converter = _YamlConverter(loader)
    try:
        while loader.check_node():
            ynode = loader.get_node()
            if ynode is None:
                continue
            _check_expansion(ynode)
            node = converter.convert(ynode)
            if isinstance(node, Scalar) and node.value is None:
                continue
            docs.append(node)
    except yaml.YAMLError as exc:
        converter.errors.append(DocumentError(_yaml_line(exc, text), _yaml_message(exc)))
    except DocumentError as exc:
        converter.errors.append(exc)
    except RecursionError:
        converter.errors.append(DocumentError(0, "document nested too deeply"))
    finally:
        loader.dispose()
    return docs, converter.errors


# --------------------------------------------------------------------------------------------
# JSON (a small parser of our own: the standard library does not report positions)

# The C string scanner behind json.loads; typeshed does not declare it.
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.__dict__["scanstring"]
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class _JsonParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.errors: list[DocumentError] = []

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def fail(self, pos: int, message: str) -> DocumentError:
        return DocumentError(self.line(pos), f"JSON syntax error: {message}")

    def skip(self, pos: int) -> int:
        match = _WS.match(self.text, pos)
        assert match is not None
        return match.end()

    def value(self, pos: int, depth: int) -> tuple[Node, int]:
        if depth > MAX_DEPTH:
            raise self.fail(pos, "nested too deeply")
        text = self.text
        if pos >= len(text):
            raise self.fail(pos, "unexpected end of input")
        ch = text[pos]
        line = self.line(pos)
        if ch == "{":
            return self.obj(pos, depth)
        if ch == "[":
            items: list[Node] = []
            pos = self.skip(pos + 1)
            if text.startswith("]", pos):
                return Sequence(line, items), pos + 1
            while True:
                item, pos = self.value(self.skip(pos), depth + 1)
                items.append(item)
                pos = self.skip(pos)
                if text.startswith(",", pos):
                    pos += 1
                elif text.startswith("]", pos):
                    return Sequence(line, items), pos + 1
                else:
                    raise self.fail(pos, "expected ',' or ']'")
        if ch == '"':
            string, end = self.string(pos)
            return Scalar(line, string), end
        for word, literal in _LITERALS.items():
            if text.startswith(word, pos):
                return Scalar(line, literal), pos + len(word)
        match = _NUMBER.match(text, pos)
        if match:
            number = match.group(0)
            if not (match.group(1) or match.group(2)):
                digits = len(number.lstrip("-"))
                if digits > MAX_INT_DIGITS:  # int() would raise: Python's conversion limit
                    raise DocumentError(line, f"integer of {digits:,} digits (at most {MAX_INT_DIGITS:,})")
                return Scalar(line, int(number)), match.end()
            return Scalar(line, float(number)), match.end()
        raise self.fail(pos, f"unexpected character {json.dumps(ch)}")

    def string(self, pos: int) -> tuple[str, int]:
        try:
            string, end = _scanstring(self.text, pos + 1, True)
        except JSONDecodeError as exc:
            raise self.fail(exc.pos, exc.msg) from None
        if not string.isascii():
            try:
                string.encode()
            except UnicodeEncodeError as exc:  # "\ud800": not text, and no file could store it
                raise self.fail(pos, f"a lone surrogate (\\u{ord(string[exc.start]):04x}) is not a character") from None
        return string, end

    def obj(self, pos: int, depth: int) -> tuple[Node, int]:
        text = self.text
        line = self.line(pos)
        entries: dict[str, Entry] = {}
        pos = self.skip(pos + 1)
        if text.startswith("}", pos):
            return Mapping(line, entries), pos + 1
        while True:
            if not text.startswith('"', pos):
                raise self.fail(pos, "expected a string key")
            key_line = self.line(pos)
            key, pos = self.string(pos)
            pos = self.skip(pos)
            if not text.startswith(":", pos):
                raise self.fail(pos, "expected ':'")
            value, pos = self.value(self.skip(pos + 1), depth + 1)
            if key in entries:
                first = entries[key].key_line
                self.errors.append(DocumentError(key_line, f"duplicate key {json.dumps(key)} (first at line {first})"))
            else:
                entries[key] = Entry(key_line, value)
            pos = self.skip(pos)
            if text.startswith(",", pos):
                pos = self.skip(pos + 1)
            elif text.startswith("}", pos):
                return Mapping(line, entries), pos + 1
            else:
                raise self.fail(pos, "expected ',' or '}'")


def parse_json(text: str) -> tuple[list[Node], list[DocumentError]]:
    """The single JSON value in `text` (none if blank), and every problem found."""
    parser = _JsonParser(text)
    pos = parser.skip(0)
    if text.startswith("\ufeff", pos):
        pos = parser.skip(pos + 1)
    if pos >= len(text):
        return [], []
    try:
        node, pos = parser.value(pos, 0)
        pos = parser.skip(pos)
        if pos < len(text):
            raise parser.fail(pos, "extra data after the JSON value")
    except DocumentError as exc:
        return [], [*parser.errors, exc]
    return [node], parser.errors


def looks_like_json(text: str) -> bool:
    """Content sniffing for stdin: JSON output of kubectl/calicoctl starts with `{` or `[`."""
    stripped = text.lstrip(" \t\r\n\ufeff")
    return stripped.startswith(("{", "["))
