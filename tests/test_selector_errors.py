"""Error reporting: the column of the problem, the reason, and the caret display."""

from __future__ import annotations

import pickle

import pytest

from enforcer.selector import SelectorError, parse_selector
from enforcer.selector.parser import MAX_NESTING


def _error(text: str) -> SelectorError:
    with pytest.raises(SelectorError) as excinfo:
        parse_selector(text)
    return excinfo.value


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("a b", 3, "expected an operator after label 'a'"),
        ("b == b", 6, "expected a quoted string after '==', found label 'b' (values must be quoted)"),
        ("'b1' == b", 1, "the label goes on the left"),
        ('a in {,"a"}', 7, "expected a quoted string or '}' in the set, found ','"),
        ('a in {"a",,}', 11, "expected a quoted string or '}' in the set, found ','"),
        ('a in {"a" "b"}', 11, "expected ',' or '}' in the set, found string \"b\""),
        ('a in "x"', 6, "expected '{' to start a set after 'in'"),
        ('a not in ("x")', 10, "expected '{' to start a set after 'not in'"),
        ("has(foo", 8, "expected ')' to close 'has(', found end of selector"),
        ("has()", 5, "expected a label name inside 'has(...)', found ')'"),
        ("all( x)", 6, "expected ')' to close 'all(', found 'x'"),
        ('a == "b" & has(x)', 10, "a single '&' is not an operator"),
        ('a == "b" | has(x)', 10, "a single '|' is not an operator"),
        ('label = "value"', 7, "a single '=' is not an operator"),
        ('a ! = "b"', 5, "a single '=' is not an operator"),
        ('(a == "x"', 10, "expected ')' to close the '(' at column 1, found end of selector"),
        ('"FOO', 1, "unterminated string"),
        ("x == 'FOO\"", 6, "unterminated string"),
        ("!", 2, "after '!', found end of selector"),
        (")", 1, "found ')'"),
        ("()", 2, "found ')'"),
        ('a == "b" c == "d"', 10, "unexpected label 'c' after a complete expression"),
        ("has(a)has(b)", 7, "expected '&&' or '||' between terms"),
        ('a == "b")', 9, "this ')' has no matching '('"),
        ("has(foo) &&", 12, "found end of selector"),
        ("a ", 3, "found end of selector"),
        ("%", 1, "unexpected character '%'"),
        ('a == "x" && b:c == "d"', 14, "found ':'"),
        ('a == "x"\n', 9, "a trailing newline"),
        ('a == "x" &&\nb == "y"', 12, "only spaces and tabs may separate tokens"),
        ("a inside {'x'}", 3, "found 'inside'"),
        ("a IN {'x'}", 3, "found 'IN'"),
        ("has (a)", 5, "no space before the '('"),
        ("HAS(a)", 4, "'has(' must be lowercase"),
        ("x == \u2018v\u2019", 6, "typographic quotes"),
        ("a" * 513 + ' == "x"', 1, "label is 513 characters long; the maximum is 512"),
        ("has(" + "b" * 600 + ")", 5, "label is 600 characters long"),
        # The whole input is tokenized first, as in Calico: the lexical error wins.
        (") %", 3, "unexpected character '%'"),
    ],
)
def test_error_column_and_reason(text: str, column: int, reason: str) -> None:
    error = _error(text)
    assert error.text == text
    assert error.column == column
    assert reason in error.reason
    assert reason in str(error)


def test_message_names_the_column_and_shows_a_caret() -> None:
    error = _error('app == "web" && tier == frontend')
    header, shown, caret = str(error).split("\n")
    assert header == (
        "invalid selector at column 25: expected a quoted string after '==', "
        "found label 'frontend' (values must be quoted)"
    )
    assert shown == '    app == "web" && tier == frontend'
    assert caret == "    " + " " * 24 + "^"
    assert shown[caret.index("^")] == "f"


def test_caret_at_end_for_truncated_selector() -> None:
    error = _error("has(foo) &&")
    _, shown, caret = str(error).split("\n")
    assert caret.index("^") == len(shown)


def test_caret_follows_tabs() -> None:
    error = _error("a\t\tb == 'x'")
    _, shown, caret = str(error).split("\n")
    assert caret == "     \t\t^"
    assert shown == "    a\t\tb == 'x'"
    assert error.column == 4


def test_newline_is_shown_escaped() -> None:
    error = _error('a == "x"\n')
    _, shown, caret = str(error).split("\n")
    assert shown == '    a == "x"\\n'
    assert caret.index("^") == shown.index("\\n")


def test_long_selector_is_windowed_around_the_problem() -> None:
    text = " && ".join(f"label{i} == 'value{i}'" for i in range(40)) + " && oops"
    error = _error(text)
    assert error.column == len(text) + 1
    _, shown, caret = str(error).split("\n")
    assert shown.startswith("    ...")
    assert len(shown) < 120
    assert caret.index("^") == len(shown)


def test_selector_error_is_a_value_error_and_pickles() -> None:
    error = _error("a b")
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.text, clone.column, clone.reason, str(clone)) == (
        error.text,
        error.column,
        error.reason,
        str(error),
    )


def test_nesting_limit() -> None:
    deep_ok = "(" * MAX_NESTING + "a == 'b'" + ")" * MAX_NESTING
    assert parse_selector(deep_ok).matches({"a": "b"})
    too_deep = "(" * (MAX_NESTING + 1) + "a == 'b'" + ")" * (MAX_NESTING + 1)
    error = _error(too_deep)
    assert error.column == MAX_NESTING + 1
    assert "nest" in error.reason


def test_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_selector(None)  # type: ignore[arg-type]
