"""Every vector in ../shared/conformance/selectors.json (calico-semantics.md §1.9), one test each.

Vector shapes:
* ``{"selector", "labels", "match": bool}``: the selector parses and matches (or not) the labels.
* ``{"selector", "invalid": true}``: parsing raises ``SelectorError``.
* ``{"selector", "invalid": false, ["canonical"], ["uid"], ["prefixed_canonical"]}``: it parses;
  where given, ``str(sel)``, ``sel.uid`` and ``str(sel.prefixed(prefix))`` are as stated.
  ``prefixed_canonical`` is ``{"prefix": ..., "result": ...}``; the upstream vectors use the
  ``visited/`` prefix of Calico's Visitor tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from enforcer.selector import Selector, SelectorError, parse_selector

VECTORS_PATH = Path(__file__).resolve().parents[1].parent / "shared/conformance/selectors.json"


def _load() -> list[dict[str, Any]] | None:
    if not VECTORS_PATH.is_file():
        return None
    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))["vectors"]
    return vectors


VECTORS = _load()


def _vector_id(index: int, vector: dict[str, Any]) -> str:
    if "match" in vector:
        kind = "match" if vector["match"] else "nomatch"
    elif vector.get("invalid") is True:
        kind = "invalid"
    else:
        kind = "valid"
    return f"{index:03d}-{kind}"


def _params() -> list[Any]:
    if VECTORS is None:
        return [pytest.param(None, id="vectors-file-missing")]
    return [pytest.param(v, id=_vector_id(i, v)) for i, v in enumerate(VECTORS)]


def _require_vectors() -> None:
    if VECTORS is not None:
        return
    reason = f"conformance vectors not found at {VECTORS_PATH} (expected ../shared beside the checkout)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.mark.parametrize("vector", _params())
def test_vector(vector: dict[str, Any] | None) -> None:
    _require_vectors()
    assert vector is not None
    text = vector["selector"]

    if vector.get("invalid") is True:
        with pytest.raises(SelectorError) as excinfo:
            parse_selector(text)
        error = excinfo.value
        assert error.text == text
        assert 1 <= error.column <= len(text) + 1
        return

    selector = parse_selector(text)
    assert isinstance(selector, Selector)

    if "match" in vector:
        assert selector.matches(vector["labels"]) is vector["match"]
        # Calico's own test also re-checks the match after canonicalising.
        assert parse_selector(str(selector)).matches(vector["labels"]) is vector["match"]
    if "canonical" in vector:
        assert str(selector) == vector["canonical"]
        reparsed = parse_selector(vector["canonical"])
        assert str(reparsed) == vector["canonical"]
        assert reparsed.uid == selector.uid
    if "uid" in vector:
        assert selector.uid == vector["uid"]
    if "prefixed_canonical" in vector:
        spec = vector["prefixed_canonical"]
        assert str(selector.prefixed(spec["prefix"])) == spec["result"]


def test_vectors_cover_every_shape() -> None:
    _require_vectors()
    assert VECTORS is not None
    assert any(v.get("match") is True for v in VECTORS)
    assert any(v.get("match") is False for v in VECTORS)
    assert any(v.get("invalid") is True for v in VECTORS)
    assert any("canonical" in v for v in VECTORS)
    assert any("prefixed_canonical" in v for v in VECTORS)


# The UIDs of parser_test.go's canonicalisationTests (quoted in calico-semantics.md §1.4); the
# shared vectors file carries their canonical strings but not the UIDs.
@pytest.mark.parametrize(
    ("text", "canonical", "uid"),
    [
        ("", "all()", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
        (" all() ", "all()", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
        (" (all() )", "all()", "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"),
        ("! (has( b)||! has(a ))", "!(has(b) || !has(a))", "s:Iss0uCleLYv1GSv_pNm7hAO58kE9jAx1NKyG3Q"),
        ('! (a == "b"&&! c != "d")', '!(a == "b" && !c != "d")', "s:lh3haoY1ikTRkd4UZu0nWSaIBknYLPJLX16d-w"),
    ],
)
def test_upstream_uids(text: str, canonical: str, uid: str) -> None:
    selector = parse_selector(text)
    assert str(selector) == canonical
    assert selector.uid == uid
