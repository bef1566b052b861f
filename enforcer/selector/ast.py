"""The selector AST: plain frozen dataclasses, their canonical text and a reference evaluator.

Calico's selector language has thirteen node kinds. This module is the contract between the parser
and every consumer that translates selectors into something else (polars/SQL expressions, nftables
set memberships, the fast matcher in :mod:`enforcer.selector.compiler`). Semantics, with ``labels`` a
``Mapping[str, str]`` and "present" meaning ``key in labels``:

===================  ========================  =====================================================
node                 canonical text            true when
===================  ========================  =====================================================
``All()``            ``all()``                 always (also what the empty selector parses to)
``Global()``         ``global()``              always; its meaning comes from ``Selector.replace_global``
``Has(k)``           ``has(k)``                k present (the value may be ``""``)
``Eq(k, v)``         ``k == "v"``              k present and value == v
``Ne(k, v)``         ``k != "v"``              k **absent** or value != v
``Contains(k, v)``   ``k contains "v"``        k present and v is a substring of the value
``StartsWith(k, v)`` ``k starts with "v"``     k present and the value starts with v
``EndsWith(k, v)``   ``k ends with "v"``       k present and the value ends with v
``In(k, vs)``        ``k in {"a", "b"}``       k present and value in vs (an empty set never matches)
``NotIn(k, vs)``     ``k not in {"a", "b"}``   k **absent** or value not in vs (empty set: always)
``Not(x)``           ``!x``                    not x
``And((x, y, ...))`` ``(x && y && ...)``       all operands (two or more) are true
``Or((x, y, ...))``  ``(x || y || ...)``       any operand (two or more) is true
===================  ========================  =====================================================

Comparisons are exact and case-sensitive. ``In``/``NotIn`` values are always sorted (by code point,
which is the same order as Calico's bytewise UTF-8 sort) and de-duplicated, whatever the
constructor is given.

Two properties of Calico that the AST keeps on purpose:

* Chains are flat (``a && b && c`` is one ``And`` of three), but parentheses are not flattened:
  ``(a && b) && c`` is ``And((And((a, b)), c))`` and renders as ``((a && b) && c)``.
* ``Not(Not(x))`` is representable. ``!!x`` in the *text* collapses to ``x`` (parity of the ``!``
  run), but ``!(!x)`` parses to ``Not(Not(x))`` and renders as ``!!x``. Calico does the same, so the
  canonical text (and the UID derived from it) of ``!(!x)`` differs from that of ``x``.
  :func:`collapse_double_negation` gives the form the text re-parses to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "All",
    "And",
    "Contains",
    "EndsWith",
    "Eq",
    "Global",
    "Has",
    "In",
    "LabelTest",
    "Ne",
    "Node",
    "Not",
    "NotIn",
    "Or",
    "StartsWith",
    "collapse_double_negation",
    "evaluate",
    "iter_nodes",
    "map_keys",
    "negate",
    "quote",
    "render",
    "substitute",
]


@dataclass(frozen=True, slots=True)
class All:
    """``all()``: matches everything. The empty selector parses to this."""


@dataclass(frozen=True, slots=True)
class Global:
    """``global()``: matches everything in the raw engine.

    Only meaningful in a rule's ``namespaceSelector``, where Calico rewrites it to
    ``!has(projectcalico.org/namespace)`` (see ``Selector.replace_global``).
    """


@dataclass(frozen=True, slots=True)
class Has:
    """``has(key)``: the label is present, whatever its value (including ``""``)."""

    key: str


@dataclass(frozen=True, slots=True)
class Eq:
    """``key == "value"``: present and equal."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Ne:
    """``key != "value"``: absent, or present with a different value."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Contains:
    """``key contains "value"``: present and ``value`` is a substring (``""`` matches any value)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class StartsWith:
    """``key starts with "value"``: present and the label value has this prefix."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class EndsWith:
    """``key ends with "value"``: present and the label value has this suffix."""

    key: str
    value: str


def _as_set(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


@dataclass(frozen=True, slots=True)
class In:
    """``key in {"a", "b"}``: present and the value is one of ``values``; ``{}`` never matches.

    ``values`` is normalised to a sorted, de-duplicated tuple on construction.
    """

    key: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _as_set(self.values))


@dataclass(frozen=True, slots=True)
class NotIn:
    """``key not in {"a", "b"}``: absent, or the value is none of ``values``; ``{}`` always matches.

    ``values`` is normalised to a sorted, de-duplicated tuple on construction.
    """

    key: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _as_set(self.values))


@dataclass(frozen=True, slots=True)
class Not:
    """``!operand``. Rendered without extra parentheses: ``!a == "b"``, ``!(a || b)``."""

    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    """``(x && y && ...)``: two or more operands, evaluated left to right with short-circuit."""

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if len(self.operands) < 2:
            raise ValueError("And needs at least two operands")


@dataclass(frozen=True, slots=True)
class Or:
    """``(x || y || ...)``: two or more operands, evaluated left to right with short-circuit."""

    operands: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if len(self.operands) < 2:
            raise ValueError("Or needs at least two operands")


Node: TypeAlias = All | Global | Has | Eq | Ne | Contains | StartsWith | EndsWith | In | NotIn | Not | And | Or
"""Any selector AST node."""

LabelTest: TypeAlias = Has | Eq | Ne | Contains | StartsWith | EndsWith | In | NotIn
"""The leaves that look at a label (everything except ``All``/``Global`` and the connectives)."""

_BINARY_OPS: dict[type, str] = {
    Eq: " == ",
    Ne: " != ",
    Contains: " contains ",
    StartsWith: " starts with ",
    EndsWith: " ends with ",
}


# ----------------------------------------------------------------------------------------------
# Canonical text
# ----------------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """Quote a value as Calico does: ``"`` unless the value contains ``"``, then ``'``.

    A value containing both quote characters cannot be written in the language (there are no
    escapes); such a value can only come from a hand-built AST and renders with ``'`` like Calico.
    """
    q = "'" if '"' in value else '"'
    return q + value + q


def render(node: Node) -> str:
    """The Calico canonical string of ``node`` (``String()`` in libcalico-go)."""
    parts: list[str] = []
    _render_into(node, parts)
    return "".join(parts)


def _render_into(node: Node, parts: list[str]) -> None:
    match node:
        case Eq() | Ne() | Contains() | StartsWith() | EndsWith():
            parts += (node.key, _BINARY_OPS[type(node)], quote(node.value))
        case Has(key):
            parts += ("has(", key, ")")
        case In() | NotIn():
            op = " in {" if isinstance(node, In) else " not in {"
            parts += (node.key, op, ", ".join(quote(v) for v in node.values), "}")
        case Not(operand):
            parts.append("!")
            _render_into(operand, parts)
        case And(operands) | Or(operands):
            sep = " && " if isinstance(node, And) else " || "
            parts.append("(")
            for i, operand in enumerate(operands):
                if i:
                    parts.append(sep)
                _render_into(operand, parts)
            parts.append(")")
        case All():
            parts.append("all()")
        case Global():
            parts.append("global()")
        case _:  # pragma: no cover - exhaustive over Node
            raise TypeError(f"not a selector node: {node!r}")


# ----------------------------------------------------------------------------------------------
# Reference evaluator (the oracle for the compiled matcher, and the benchmark baseline)
# ----------------------------------------------------------------------------------------------


def evaluate(node: Node, labels: Mapping[str, str]) -> bool:
    """Evaluate ``node`` against ``labels`` by walking the tree. Slow but obviously correct."""
    match node:
        case All() | Global():
            return True
        case Has(key):
            return key in labels
        case Eq(key, value):
            return key in labels and labels[key] == value
        case Ne(key, value):
            return key not in labels or labels[key] != value
        case Contains(key, value):
            return key in labels and value in labels[key]
        case StartsWith(key, value):
            return key in labels and labels[key].startswith(value)
        case EndsWith(key, value):
            return key in labels and labels[key].endswith(value)
        case In(key, values):
            return key in labels and labels[key] in values
        case NotIn(key, values):
            return key not in labels or labels[key] not in values
        case Not(operand):
            return not evaluate(operand, labels)
        case And(operands):
            return all(evaluate(op, labels) for op in operands)
        case Or(operands):
            return any(evaluate(op, labels) for op in operands)
        case _:  # pragma: no cover - exhaustive over Node
            raise TypeError(f"not a selector node: {node!r}")


# ----------------------------------------------------------------------------------------------
# Traversal and rewriting
# ----------------------------------------------------------------------------------------------


def iter_nodes(node: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children, operands left to right."""
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, Not):
            stack.append(current.operand)
        elif isinstance(current, And | Or):
            stack.extend(reversed(current.operands))


def map_keys(node: Node, fn: Callable[[str], str]) -> Node:
    """A copy of the tree with every label key replaced by ``fn(key)``.

    With ``fn = lambda k: prefix + k`` this is Calico's ``PrefixVisitor``: it touches ``has``,
    ``==``, ``!=``, ``contains``, ``starts with``, ``ends with``, ``in`` and ``not in``.
    """
    match node:
        case Has(key):
            return Has(fn(key))
        case Eq() | Ne() | Contains() | StartsWith() | EndsWith():
            return type(node)(fn(node.key), node.value)
        case In() | NotIn():
            return type(node)(fn(node.key), node.values)
        case Not(operand):
            return Not(map_keys(operand, fn))
        case And(operands):
            return And(tuple(map_keys(op, fn) for op in operands))
        case Or(operands):
            return Or(tuple(map_keys(op, fn) for op in operands))
        case _:
            return node


def substitute(node: Node, target: Node, replacement: Node) -> Node:
    """A copy of the tree with every node equal to ``target`` replaced by ``replacement``.

    One pass: occurrences of ``target`` inside ``replacement`` are not replaced again.
    """
    if node == target:
        return replacement
    match node:
        case Not(operand):
            return Not(substitute(operand, target, replacement))
        case And(operands):
            return And(tuple(substitute(op, target, replacement) for op in operands))
        case Or(operands):
            return Or(tuple(substitute(op, target, replacement) for op in operands))
        case _:
            return node


def negate(node: Node) -> Node:
    """``Not(node)``, except that ``negate(Not(x))`` is ``x``."""
    return node.operand if isinstance(node, Not) else Not(node)


def collapse_double_negation(node: Node) -> Node:
    """Remove every ``Not(Not(x))`` pair: the tree that ``render(node)`` parses back to.

    Rendering is a fixed point of parse-then-render for every tree except those with a ``Not``
    directly inside a ``Not`` (rendered ``!!x``, which the parser reads as ``x``). Calico builds
    derived selectors as text and re-parses them, so derived selectors go through this.
    """
    match node:
        case Not(operand):
            inner = collapse_double_negation(operand)
            return negate(inner)
        case And(operands):
            return And(tuple(collapse_double_negation(op) for op in operands))
        case Or(operands):
            return Or(tuple(collapse_double_negation(op) for op in operands))
        case _:
            return node
