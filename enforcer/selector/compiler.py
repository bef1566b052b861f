"""Compile a selector AST into one fast Python function ``labels -> bool``.

Matching is the hot path (every pod against every selector, millions of calls), so the tree is
turned into the source of a single lambda whose body is one boolean expression, and compiled once::

    a == "b" && !has(c) && d in {"x", "y"}
    ->  lambda L: (L.get('a') == 'b' and not ('c' in L) and L.get('d') in {'x', 'y'})

That costs one Python call per match, with no per-node dispatch. The tricks, each exact under
calico-semantics.md §1.3:

* ``L.get(k) == v`` is false for an absent key (``None`` never equals a string) and
  ``L.get(k) != v`` is true for one, which is what ``==`` and ``!=`` mean in Calico; ``in`` and
  ``not in`` work the same way against a set literal (CPython stores it as a frozenset constant).
* ``contains``/``starts with``/``ends with`` test ``(L.get(k) or "")``: an absent key behaves like
  ``""``, which only matches an empty operand, and an empty operand is compiled to ``has(k)``.

Keys and values enter the generated source only through ``repr()`` of a ``str`` (checked), so no
label text can inject code. Trees nested deeper than :data:`MAX_INLINE_DEPTH` (CPython's parser
refuses deeply nested parentheses) fall back to a tree of small closures, which is slower but has
the same semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from enforcer.selector.ast import (
    All,
    And,
    Contains,
    EndsWith,
    Eq,
    Global,
    Has,
    In,
    Ne,
    Node,
    Not,
    NotIn,
    Or,
    StartsWith,
)

__all__ = ["MAX_INLINE_DEPTH", "Matcher", "compile_closures", "compile_matcher", "source"]

Matcher = Callable[[Mapping[str, str]], bool]
"""A compiled selector: call it with a label mapping."""

MAX_INLINE_DEPTH = 40


class _TooDeep(Exception):
    pass


def _lit(text: str) -> str:
    if type(text) is not str:
        raise TypeError(f"selector keys and values must be str, not {type(text).__name__}")
    return repr(text)


def _expr(node: Node, depth: int) -> str:
    if depth > MAX_INLINE_DEPTH:
        raise _TooDeep
    match node:
        case Eq(key, value):
            return f"L.get({_lit(key)}) == {_lit(value)}"
        case Has(key):
            return f"({_lit(key)} in L)"
        case Ne(key, value):
            return f"L.get({_lit(key)}) != {_lit(value)}"
        case In(key, values):
            if not values:
                return "False"
            if len(values) == 1:
                return f"L.get({_lit(key)}) == {_lit(values[0])}"
            return f"L.get({_lit(key)}) in {{{', '.join(map(_lit, values))}}}"
        case NotIn(key, values):
            if not values:
                return "True"
            if len(values) == 1:
                return f"L.get({_lit(key)}) != {_lit(values[0])}"
            return f"L.get({_lit(key)}) not in {{{', '.join(map(_lit, values))}}}"
        case Contains(key, value):
            if not value:
                return f"({_lit(key)} in L)"
            return f"({_lit(value)} in (L.get({_lit(key)}) or ''))"
        case StartsWith(key, value):
            if not value:
                return f"({_lit(key)} in L)"
            return f"(L.get({_lit(key)}) or '').startswith({_lit(value)})"
        case EndsWith(key, value):
            if not value:
                return f"({_lit(key)} in L)"
            return f"(L.get({_lit(key)}) or '').endswith({_lit(value)})"
        case Not(operand):
            return f"(not {_expr(operand, depth + 1)})"
        case And(operands):
            return "(" + " and ".join(_expr(op, depth + 1) for op in operands) + ")"
        case Or(operands):
            return "(" + " or ".join(_expr(op, depth + 1) for op in operands) + ")"
        case All() | Global():
            return "True"
        case _:
            raise TypeError(f"not a selector node: {node!r}")


def source(node: Node) -> str:
    """The Python source of the lambda that :func:`compile_matcher` builds for ``node``."""
    return f"lambda L: {_expr(node, 0)}"


def compile_matcher(node: Node) -> Matcher:
    """One function equivalent to ``lambda labels: evaluate(node, labels)``, but fast."""
    try:
        code = compile(source(node), "<selector>", "eval")
    except (_TooDeep, RecursionError, SyntaxError, MemoryError):
        return compile_closures(node)
    matcher: Matcher = eval(code, {"__builtins__": {}})  # noqa: S307 - source built from repr()s
    return matcher


def _true(labels: Mapping[str, str]) -> bool:
    return True


def compile_closures(node: Node) -> Matcher:
    """The fallback compiler: a tree of closures, one per node. Works for any depth we parse."""
    match node:
        case All() | Global():
            return _true
        case Has(key):
            return lambda labels: key in labels
        case Eq(key, value):
            return lambda labels: labels.get(key) == value
        case Ne(key, value):
            return lambda labels: labels.get(key) != value
        case Contains(key, value):
            return lambda labels: key in labels and value in labels[key]
        case StartsWith(key, value):
            return lambda labels: key in labels and labels[key].startswith(value)
        case EndsWith(key, value):
            return lambda labels: key in labels and labels[key].endswith(value)
        case In(key, values):
            members = frozenset(values)
            return lambda labels: labels.get(key) in members
        case NotIn(key, values):
            excluded = frozenset(values)
            return lambda labels: labels.get(key) not in excluded
        case Not(operand):
            inner = compile_closures(operand)
            return lambda labels: not inner(labels)
        case And(operands):
            parts = tuple(compile_closures(op) for op in operands)
            return lambda labels: all(part(labels) for part in parts)
        case Or(operands):
            alternatives = tuple(compile_closures(op) for op in operands)
            return lambda labels: any(alt(labels) for alt in alternatives)
        case _:
            raise TypeError(f"not a selector node: {node!r}")
