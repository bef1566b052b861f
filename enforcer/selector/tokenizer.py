"""Selector tokenizer, reproducing libcalico-go's ``selector/tokenizer`` rule for rule.

The lexical rules (calico-semantics.md §1.1), all reproduced here:

* Only ASCII space and TAB separate tokens. A newline, CR or any other character outside a string
  literal is an error, so a trailing newline from a YAML ``|`` block makes a selector invalid.
* A label is a run of ``[a-zA-Z0-9_./-]`` of at most 512 characters; it may start with any of them.
* Strings are ``"..."`` or ``'...'`` and end at the next same quote. No escapes: a backslash is an
  ordinary character, the other quote may appear inside, ``""`` is fine.
* ``==``, ``!=``, ``&&``, ``||``; a lone ``=``, ``&`` or ``|`` is an error; ``!`` not followed by
  ``=`` is NOT (so ``a ! = "b"`` is an error).
* Word operators are only recognised straight after a label token, tried in the order
  ``contains``, ``starts with``, ``ends with``, ``not in``, ``in``. Multi-word ones accept any run of
  spaces/tabs between the words, including none (``startswith``, ``notin``). Each needs a word
  boundary after its last word (end of input or a non-label character), so ``a in{"x"}`` is fine
  and ``a inside {...}`` is not. Elsewhere the same words are ordinary labels (``in == "x"``).
* ``has(``, ``all(`` and ``global(`` are recognised only as that exact lowercase text, where a
  label could start, with optional spaces/tabs inside the parentheses: ``has( a )`` is fine,
  ``has (a)``, ``HAS(a)`` and ``has()`` are not.

Tokenizing runs over the whole input before parsing starts, as in Calico, so a lexical error
anywhere wins over a grammar error earlier in the text.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from typing import NamedTuple

__all__ = ["MAX_LABEL_LENGTH", "Kind", "SelectorError", "Token", "describe", "tokenize"]

MAX_LABEL_LENGTH = 512

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_LABEL_RE = re.compile(r"[a-zA-Z0-9_./-]+")
_SPACE_RE = re.compile(r"[ \t]*")

_CURLY_QUOTES = frozenset("\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb")
_MAX_SHOWN = 100  # display columns of selector text shown in an error message


class SelectorError(ValueError):
    """A selector that Calico would reject.

    ``text`` is the selector as given, ``column`` the 1-based column of the problem (one past the
    end for a selector that stops too early) and ``reason`` the problem alone. ``str(error)`` names
    the column and shows the selector with a caret under that column.
    """

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text = text
        self.column = column
        self.reason = reason
        super().__init__(_format(text, column, reason))

    def __reduce__(self) -> tuple[type[SelectorError], tuple[str, int, str]]:
        return (SelectorError, (self.text, self.column, self.reason))


def _shown(ch: str) -> str:
    """How one character of the selector is displayed in an error message."""
    if ch == "\t" or ch.isprintable():
        return ch
    return ch.encode("unicode_escape").decode("ascii")  # "\n" -> "\\n", "\x0b" -> "\\x0b"


def _width(shown: str) -> int:
    if len(shown) == 1 and unicodedata.east_asian_width(shown) in "WF":
        return 2
    return len(shown)


def _format(text: str, column: int, reason: str) -> str:
    pieces = [_shown(ch) for ch in text]
    index = column - 1
    # Keep the message readable for long selectors: a window around the problem.
    start, end = 0, len(pieces)
    if sum(_width(p) for p in pieces) > _MAX_SHOWN:
        start = max(0, index - _MAX_SHOWN // 2)
        end = min(len(pieces), start + _MAX_SHOWN)
        start = max(0, min(start, end - _MAX_SHOWN))
    head = "..." if start > 0 else ""
    tail = "..." if end < len(pieces) else ""
    line = head + "".join(pieces[start:end]) + tail
    pad = [" " * len(head)]
    for piece in pieces[start:index]:
        pad.append("\t" if piece == "\t" else " " * _width(piece))
    return f"invalid selector at column {column}: {reason}\n    {line}\n    {''.join(pad)}^"


class Kind(enum.IntEnum):
    """Token kinds (libcalico-go's ``TokXxx`` constants)."""

    LABEL = enum.auto()
    STRING = enum.auto()
    LBRACE = enum.auto()
    RBRACE = enum.auto()
    COMMA = enum.auto()
    EQ = enum.auto()
    NE = enum.auto()
    IN = enum.auto()
    NOT = enum.auto()
    NOT_IN = enum.auto()
    CONTAINS = enum.auto()
    STARTS_WITH = enum.auto()
    ENDS_WITH = enum.auto()
    ALL = enum.auto()
    HAS = enum.auto()
    LPAREN = enum.auto()
    RPAREN = enum.auto()
    AND = enum.auto()
    OR = enum.auto()
    GLOBAL = enum.auto()
    EOF = enum.auto()


class Token(NamedTuple):
    """One token: its kind, its value (label name or string contents) and its 0-based offset."""

    kind: Kind
    value: str = ""
    pos: int = 0


_SPELLING = {
    Kind.LBRACE: "'{'",
    Kind.RBRACE: "'}'",
    Kind.COMMA: "','",
    Kind.EQ: "'=='",
    Kind.NE: "'!='",
    Kind.IN: "'in'",
    Kind.NOT: "'!'",
    Kind.NOT_IN: "'not in'",
    Kind.CONTAINS: "'contains'",
    Kind.STARTS_WITH: "'starts with'",
    Kind.ENDS_WITH: "'ends with'",
    Kind.ALL: "'all()'",
    Kind.LPAREN: "'('",
    Kind.RPAREN: "')'",
    Kind.AND: "'&&'",
    Kind.OR: "'||'",
    Kind.GLOBAL: "'global()'",
    Kind.EOF: "end of selector",
}


def describe(token: Token) -> str:
    """A token as a user would recognise it in an error message."""
    if token.kind is Kind.LABEL:
        return f"label '{token.value}'"
    if token.kind is Kind.STRING:
        q = "'" if '"' in token.value else '"'
        return f"string {q}{token.value}{q}"
    if token.kind is Kind.HAS:
        return f"'has({token.value})'"
    return _SPELLING[token.kind]


def _error(text: str, pos: int, reason: str) -> SelectorError:
    return SelectorError(text, pos + 1, reason)


def _skip(text: str, pos: int) -> int:
    """Offset of the first character at or after ``pos`` that is not a space or TAB."""
    match = _SPACE_RE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _after_word(text: str, pos: int, word: str) -> int:
    """Offset after ``word`` at ``pos`` if it is followed by a word boundary, else -1."""
    if not text.startswith(word, pos):
        return -1
    end = pos + len(word)
    if end < len(text) and text[end] in _LABEL_CHARS:
        return -1
    return end


def _after_words(text: str, pos: int, first: str, second: str) -> int:
    """Like :func:`_after_word` for a two-word operator; spaces/tabs allowed between and after."""
    if not text.startswith(first, pos):
        return -1
    pos = _skip(text, pos + len(first))
    if not text.startswith(second, pos):
        return -1
    end = _skip(text, pos + len(second))
    if end < len(text) and text[end] in _LABEL_CHARS:
        return -1
    return end


def _operator_after_label(text: str, pos: int) -> tuple[Kind, int] | None:
    for kind, end in (
        (Kind.CONTAINS, _after_word(text, pos, "contains")),
        (Kind.STARTS_WITH, _after_words(text, pos, "starts", "with")),
        (Kind.ENDS_WITH, _after_words(text, pos, "ends", "with")),
        (Kind.NOT_IN, _after_words(text, pos, "not", "in")),
        (Kind.IN, _after_word(text, pos, "in")),
    ):
        if end >= 0:
            return kind, end
    return None


def _label(text: str, pos: int, what: str) -> str:
    match = _LABEL_RE.match(text, pos)
    if match is None:
        ch = text[pos] if pos < len(text) else ""
        if not ch:
            raise _error(text, pos, f"expected {what}, found end of selector")
        raise _error(text, pos, f"expected {what}, found {_char(ch)}")
    name = match.group()
    if len(name) > MAX_LABEL_LENGTH:
        raise _error(text, pos, f"label is {len(name)} characters long; the maximum is {MAX_LABEL_LENGTH}")
    return name


def _char(ch: str) -> str:
    if ch in " \t":
        return repr(ch)
    if ch == "\n" or ch == "\r" or not ch.isprintable():
        return f"'{_shown(ch)}' (only spaces and tabs may separate tokens)"
    if ch in _CURLY_QUOTES:
        return f"'{ch}' (typographic quotes are not string delimiters; use ' or \")"
    return f"'{ch}'"


def _trailing_hint(text: str, pos: int) -> str:
    if text[pos] in "\r\n" and not text[pos:].strip():
        return "; a trailing newline (e.g. from a YAML '|' block) makes a selector invalid"
    return ""


def _close_paren(text: str, pos: int, name: str) -> int:
    pos = _skip(text, pos)
    if not text.startswith(")", pos):
        found = _char(text[pos]) if pos < len(text) else "end of selector"
        raise _error(text, pos, f"expected ')' to close '{name}(', found {found}")
    return pos + 1


_SINGLE = {
    "(": Kind.LPAREN,
    ")": Kind.RPAREN,
    "{": Kind.LBRACE,
    "}": Kind.RBRACE,
    ",": Kind.COMMA,
}
_DOUBLE = {"=": Kind.EQ, "&": Kind.AND, "|": Kind.OR}


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``EOF`` token. Raises :class:`SelectorError`."""
    tokens: list[Token] = []
    append = tokens.append
    n = len(text)
    pos = 0
    while True:
        while pos < n and (text[pos] == " " or text[pos] == "\t"):
            pos += 1
        if pos >= n:
            append(Token(Kind.EOF, "", n))
            return tokens
        ch = text[pos]
        if ch in _SINGLE:
            append(Token(_SINGLE[ch], "", pos))
            pos += 1
        elif ch == '"' or ch == "'":
            end = text.find(ch, pos + 1)
            if end < 0:
                raise _error(text, pos, f"unterminated string: no closing {ch} for this quote")
            append(Token(Kind.STRING, text[pos + 1 : end], pos))
            pos = end + 1
        elif ch in _DOUBLE:
            if not text.startswith(ch + ch, pos):
                raise _error(text, pos, f"expected '{ch}{ch}'; a single '{ch}' is not an operator")
            append(Token(_DOUBLE[ch], "", pos))
            pos += 2
        elif ch == "!":
            if text.startswith("!=", pos):
                append(Token(Kind.NE, "", pos))
                pos += 2
            else:
                append(Token(Kind.NOT, "", pos))
                pos += 1
        elif tokens and tokens[-1].kind is Kind.LABEL:
            found = _operator_after_label(text, pos)
            if found is None:
                word = _LABEL_RE.match(text, pos)
                what = f"'{word.group()}'" if word else _char(ch)
                raise _error(
                    text,
                    pos,
                    f"expected an operator after label '{tokens[-1].value}' (==, !=, in, not in,"
                    f" contains, starts with, ends with), found {what}",
                )
            kind, end = found
            append(Token(kind, "", pos))
            pos = end
        elif text.startswith("has(", pos):
            inner = _skip(text, pos + 4)
            name = _label(text, inner, "a label name inside 'has(...)'")
            append(Token(Kind.HAS, name, pos))
            pos = _close_paren(text, inner + len(name), "has")
        elif text.startswith("all(", pos):
            append(Token(Kind.ALL, "", pos))
            pos = _close_paren(text, pos + 4, "all")
        elif text.startswith("global(", pos):
            append(Token(Kind.GLOBAL, "", pos))
            pos = _close_paren(text, pos + 7, "global")
        elif ch not in _LABEL_CHARS:
            raise _error(text, pos, f"unexpected character {_char(ch)}{_trailing_hint(text, pos)}")
        else:
            name = _label(text, pos, "a label")
            append(Token(Kind.LABEL, name, pos))
            pos += len(name)
