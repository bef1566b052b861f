"""Calico's label-selector language: parse, print canonically, hash, rewrite and match.

>>> sel = parse_selector("tier == 'transaction' && has(app)")
>>> sel.matches({"tier": "transaction", "app": "x"})
True
>>> str(sel)
'(tier == "transaction" && has(app))'

Behaviour follows libcalico-go's selector package exactly (calico-semantics.md §1), including its
quirks; ``tests/test_selector_conformance.py`` checks it against vectors from Calico's own tests.
The AST lives in :mod:`enforcer.selector.ast`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from enforcer.selector.ast import (
    All,
    And,
    Global,
    Node,
    collapse_double_negation,
    iter_nodes,
    map_keys,
    render,
    substitute,
)
from enforcer.selector.compiler import Matcher, compile_matcher
from enforcer.selector.parser import parse
from enforcer.selector.tokenizer import SelectorError

__all__ = ["ALL", "Selector", "SelectorError", "parse_selector"]

_PARSE_CACHE_SIZE = 16384
_LABEL_TEXT = re.compile(r"[a-zA-Z0-9_./-]+")


class Selector:
    """An immutable, hashable, parsed selector. Build one with :func:`parse_selector`.

    Attributes:
        root: the AST (:mod:`enforcer.selector.ast` nodes).
        matches: ``matches(labels) -> bool`` for any ``Mapping[str, str]``. It is compiled to a
            single Python function on first use and stored on the instance, so a call costs one
            function call and no AST walk.

    ``str(sel)`` is Calico's canonical form and ``sel.uid`` Calico's selector ID; equality and
    hashing go by the canonical form.

    Selectors returned by :meth:`prefixed`, :meth:`replace_all`, :meth:`replace_global` and
    :meth:`and_` are what Calico ends up with after building the combined selector as text and
    parsing it again. The one visible effect is that a ``!`` directly applied to a ``!`` cancels:
    ``parse_selector("!(!has(a))")`` keeps both (canonical ``!!has(a)``, as in Calico), its
    derived selectors do not.
    """

    __slots__ = ("root", "matches", "_canonical", "_uid", "__weakref__")

    root: Node
    matches: Matcher
    _canonical: str
    _uid: str | None

    def __init__(self, root: Node) -> None:
        set_ = object.__setattr__
        set_(self, "root", root)
        set_(self, "_canonical", render(root))
        set_(self, "_uid", None)
        set_(self, "matches", self._compile_and_match)

    def _compile_and_match(self, labels: Mapping[str, str]) -> bool:
        matcher = compile_matcher(self.root)
        object.__setattr__(self, "matches", matcher)
        return matcher(labels)

    # -- identity -----------------------------------------------------------------------------

    def __str__(self) -> str:
        return self._canonical

    def __repr__(self) -> str:
        return f"Selector({self._canonical!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Selector):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"Selector is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Selector is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[type[Selector], tuple[Node]]:
        return (Selector, (self.root,))

    def __copy__(self) -> Selector:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Selector:
        return self

    @property
    def uid(self) -> str:
        """Calico's unique ID: ``"s:" + base64url_nopad(sha224("s:" + canonical))``.

        Used as the IP-set ID, so equal canonical strings share one set.
        """
        uid = self._uid
        if uid is None:
            digest = hashlib.sha224(("s:" + self._canonical).encode("utf-8")).digest()
            uid = "s:" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
            object.__setattr__(self, "_uid", uid)
        return uid

    @property
    def is_all(self) -> bool:
        """True for ``all()`` and the empty selector (which parses to ``all()``)."""
        return isinstance(self.root, All)

    @property
    def contains_global(self) -> bool:
        """True if any ``global()`` appears anywhere in the selector."""
        return any(isinstance(node, Global) for node in iter_nodes(self.root))

    # -- rewriting ----------------------------------------------------------------------------

    def prefixed(self, prefix: str) -> Selector:
        """Every label name prefixed, as Calico's ``PrefixVisitor`` does for ``pcns.``/``pcsa.``.

        ``prefix`` must consist of label characters (``[a-zA-Z0-9_./-]``), so that the result is
        still a selector. ``all()`` and ``global()`` are untouched.
        """
        if prefix and not _is_label_text(prefix):
            raise ValueError(f"prefix {prefix!r} contains characters that cannot appear in a label")
        return _derived(map_keys(self.root, lambda key: prefix + key))

    def replace_all(self, replacement: Selector) -> Selector:
        """Every ``all()`` node replaced by ``replacement`` (the §2.2/§2.3 namespace rewrites).

        Calico does this with a text substitution on the canonical string; this works on nodes, so
        unlike Calico it never touches a quoted value that happens to contain ``all()``.
        """
        return _derived(substitute(self.root, All(), replacement.root))

    def replace_global(self, replacement: Selector) -> Selector:
        """Every ``global()`` node replaced by ``replacement`` (§2.3), like :meth:`replace_all`."""
        return _derived(substitute(self.root, Global(), replacement.root))

    def and_(self, other: Selector) -> Selector:
        """``(self) && (other)`` as one selector: an ``And`` of the two roots, like the parser.

        The parser does not merge a parenthesised ``And`` into the outer one, so neither does this:
        ``parse_selector("a == 'x' && b == 'y'").and_(c)`` renders ``((a == "x" && b == "y") && c)``.
        """
        return _derived(And((self.root, other.root)))


def _derived(root: Node) -> Selector:
    return Selector(collapse_double_negation(root))


def _is_label_text(text: str) -> bool:
    return _LABEL_TEXT.fullmatch(text) is not None


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse_cached(text: str) -> Selector:
    return Selector(parse(text))


def parse_selector(text: str) -> Selector:
    """Parse Calico selector text. Raises :class:`SelectorError` (a ``ValueError``) if invalid.

    The empty string and spaces/tabs alone give ``all()``. Results are cached by text, so parsing
    the same selector again is a dictionary lookup and returns the same object.
    """
    if not isinstance(text, str):
        raise TypeError(f"a selector must be a str, not {type(text).__name__}")
    return _parse_cached(text)


ALL = parse_selector("all()")
"""The selector that matches everything."""
