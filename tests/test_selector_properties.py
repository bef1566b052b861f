"""Property tests for the selector engine, with the tree-walking ``evaluate`` as the oracle.

* print -> parse -> print is a fixed point, and parse(print(tree)) is the tree (up to ``!!``);
* any spelling of a tree that the grammar allows (spacing, quotes, ``startswith``/``notin``, set
  order and duplicates, redundant parentheses, ``!!``) parses back to exactly that tree;
* the compiled matcher, the closure fallback and the oracle agree on random label maps;
* the rewrites (``prefixed``, ``replace_all``, ``replace_global``, ``and_``) agree with Calico's
  text-building pipeline and keep their meaning.
"""

from __future__ import annotations

import copy
import pickle
from collections import ChainMap
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.selector import ALL, Selector, SelectorError, parse_selector
from enforcer.selector.ast import (
    All,
    And,
    Contains,
    EndsWith,
    Eq,
    Global,
    Has,
    In,
    LabelTest,
    Ne,
    Node,
    Not,
    NotIn,
    Or,
    StartsWith,
    collapse_double_negation,
    evaluate,
    iter_nodes,
    map_keys,
    render,
)
from enforcer.selector.compiler import compile_closures, compile_matcher

HAS_NS = parse_selector("has(projectcalico.org/namespace)")
NOT_HAS_NS = parse_selector("!has(projectcalico.org/namespace)")

# Few keys and values, so that random label maps often hit what the selectors test; they include
# the words that are operators elsewhere and the characters that need care when quoting.
KEYS = st.one_of(
    st.sampled_from(["a", "b", "app", "in", "not", "contains", "has", "all", "global", "starts"]),
    st.sampled_from(["-x", "x.y/z", "9", "projectcalico.org/namespace", "pcns.a"]),
    st.from_regex(r"[a-zA-Z0-9_./-]{1,8}", fullmatch=True),
)
VALUES = st.one_of(
    st.sampled_from(["", "a", "b", "web", "ab", "ba", "'", '"', "a b", "\\", "all()", "x'y", 'x"y']),
    st.text(max_size=6),
).filter(lambda v: not ('"' in v and "'" in v))


def _leaves() -> st.SearchStrategy[Node]:
    value_sets = st.lists(VALUES, max_size=4).map(tuple)
    return st.one_of(
        st.just(All()),
        st.just(Global()),
        st.builds(Has, KEYS),
        st.builds(Eq, KEYS, VALUES),
        st.builds(Ne, KEYS, VALUES),
        st.builds(Contains, KEYS, VALUES),
        st.builds(StartsWith, KEYS, VALUES),
        st.builds(EndsWith, KEYS, VALUES),
        st.builds(In, KEYS, value_sets),
        st.builds(NotIn, KEYS, value_sets),
    )


def _extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    operands = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(children.map(Not), operands.map(And), operands.map(Or))


TREES: st.SearchStrategy[Node] = st.recursive(_leaves(), _extend, max_leaves=10)
LABELS = st.dictionaries(KEYS, VALUES, max_size=6)


def _has_double_negation(node: Node) -> bool:
    return any(isinstance(n, Not) and isinstance(n.operand, Not) for n in iter_nodes(node))


@st.composite
def spelled(draw: st.DrawFn, tree: Node) -> str:
    """One of the many texts that parse to exactly ``tree``."""

    def ws(min_size: int = 0) -> str:
        return draw(st.text(alphabet=" \t", min_size=min_size, max_size=2))

    def quoted(value: str) -> str:
        q = draw(st.sampled_from([q for q in "\"'" if q not in value]))
        return q + value + q

    def spell(node: Node) -> str:
        match node:
            case Eq(key, value) | Ne(key, value):
                op = "==" if isinstance(node, Eq) else "!="
                text = key + ws() + op + ws() + quoted(value)
            case Contains(key, value):
                text = key + ws(1) + "contains" + ws() + quoted(value)
            case StartsWith(key, value) | EndsWith(key, value):
                word = "starts" if isinstance(node, StartsWith) else "ends"
                text = key + ws(1) + word + ws() + "with" + ws() + quoted(value)
            case In(key, values) | NotIn(key, values):
                op = "in" if isinstance(node, In) else "not" + ws() + "in"
                duplicates: list[str] = draw(st.lists(st.sampled_from(values), max_size=2)) if values else []
                items = draw(st.permutations(list(values) + duplicates))
                body = (ws() + "," + ws()).join(quoted(v) for v in items)
                trailing_comma = draw(st.booleans())
                if items and trailing_comma:
                    body += ws() + ","
                text = key + ws(1) + op + ws() + "{" + ws() + body + ws() + "}"
            case Has(key):
                text = "has(" + ws() + key + ws() + ")"
            case All():
                text = "all(" + ws() + ")"
            case Global():
                text = "global(" + ws() + ")"
            case Not(operand):
                inner = spell(operand)
                # "!" + "!x" would be read as "x": a Not inside a Not needs its own parentheses.
                text = "!" + ws() + ("(" + inner + ")" if isinstance(operand, Not) else inner)
            case And(operands) | Or(operands):
                sep = ws() + ("&&" if isinstance(node, And) else "||") + ws()
                text = "(" + ws() + sep.join(spell(op) for op in operands) + ws() + ")"
        if draw(st.integers(0, 5)) == 0:
            text = "(" + ws() + text + ws() + ")"
        if draw(st.integers(0, 5)) == 0:
            text = "!!" + ws() + text
        return text

    return ws() + spell(tree) + ws()


# ----------------------------------------------------------------------------------------------
# Printing and parsing
# ----------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(TREES)
def test_print_parse_print_is_a_fixed_point(tree: Node) -> None:
    text = render(tree)
    selector = parse_selector(text)
    # The only trees that do not survive the trip are those with "!!": Calico reads them as x.
    assert selector.root == collapse_double_negation(tree)
    if not _has_double_negation(tree):
        assert str(selector) == text
    assert str(parse_selector(str(selector))) == str(selector)
    assert parse_selector(str(selector)).uid == selector.uid


@settings(deadline=None)
@given(st.data(), TREES)
def test_every_spelling_parses_to_the_same_tree(data: st.DataObject, tree: Node) -> None:
    text = data.draw(spelled(tree))
    assert parse_selector(text).root == tree


@settings(deadline=None)
@given(TREES, st.lists(LABELS, min_size=1, max_size=8))
def test_matching_agrees_with_the_oracle(tree: Node, label_maps: list[dict[str, str]]) -> None:
    selector = Selector(tree)
    reparsed = parse_selector(str(selector))
    closures = compile_closures(tree)
    compiled = compile_matcher(tree)
    for labels in label_maps:
        expected = evaluate(tree, labels)
        assert selector.matches(labels) is expected
        assert reparsed.matches(labels) is expected
        assert compiled(labels) is expected
        assert closures(labels) is expected


def test_deep_trees_fall_back_to_closures_with_the_same_answer() -> None:
    text = "!(" * 60 + "a == 'b'" + ")" * 60
    selector = parse_selector(text)
    assert selector.matches({"a": "b"}) is True  # an even number of negations
    assert selector.matches({}) is False


# ----------------------------------------------------------------------------------------------
# Rewrites
# ----------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(TREES, LABELS)
def test_prefixed_moves_every_key(tree: Node, labels: dict[str, str]) -> None:
    selector = Selector(tree)
    prefixed = selector.prefixed("pcns.")
    assert prefixed.matches({"pcns." + k: v for k, v in labels.items()}) is selector.matches(labels)
    leaf_keys = [n.key for n in iter_nodes(prefixed.root) if isinstance(n, LabelTest)]
    assert all(key.startswith("pcns.") for key in leaf_keys)


def _without_literal(tree: Node, *fragments: str) -> bool:
    for node in iter_nodes(tree):
        if isinstance(node, In | NotIn):
            values = node.values
        elif isinstance(node, Eq | Ne | Contains | StartsWith | EndsWith):
            values = (node.value,)
        else:
            continue
        if any(fragment in v for v in values for fragment in fragments):
            return False
    return True


@settings(deadline=None)
@given(TREES.filter(lambda t: _without_literal(t, "all()", "global()")))
def test_rewrites_match_calicos_text_pipeline(tree: Node) -> None:
    """Calico substitutes text in the canonical string and re-parses; we substitute nodes."""
    selector = Selector(tree)
    canonical = str(selector)
    assert selector.replace_all(HAS_NS) == parse_selector(canonical.replace("all()", str(HAS_NS)))
    assert selector.replace_global(NOT_HAS_NS) == parse_selector(canonical.replace("global()", str(NOT_HAS_NS)))
    by_hand = Selector(map_keys(tree, lambda key: "pcsa." + key))
    assert selector.prefixed("pcsa.") == parse_selector(str(by_hand))


@settings(deadline=None)
@given(TREES, TREES, LABELS)
def test_and_is_the_parse_of_both_in_parentheses(left: Node, right: Node, labels: dict[str, str]) -> None:
    a, b = Selector(left), Selector(right)
    combined = a.and_(b)
    assert combined == parse_selector(f"({a}) && ({b})")
    assert combined.matches(labels) is (evaluate(left, labels) and evaluate(right, labels))


def test_prefixed_examples() -> None:
    selector = parse_selector("!(a in {'x'} || has(b)) && all() && c starts with 'v'")
    assert str(selector.prefixed("pcns.")) == ('(!(pcns.a in {"x"} || has(pcns.b)) && all() && pcns.c starts with "v")')
    assert selector.prefixed("") == selector
    with pytest.raises(ValueError, match="cannot appear in a label"):
        selector.prefixed("pcns:")


def test_namespace_selector_rewrites_as_in_calico_rules() -> None:
    # §2.3: rule namespaceSelector -> prefix pcns., all() -> has(ns), global() -> !has(ns).
    def rewrite(text: str) -> str:
        ns = parse_selector(text).prefixed("pcns.").replace_all(HAS_NS).replace_global(NOT_HAS_NS)
        return str(ns)

    assert rewrite("all()") == "has(projectcalico.org/namespace)"
    assert rewrite("global()") == "!has(projectcalico.org/namespace)"
    assert rewrite("") == "has(projectcalico.org/namespace)"
    assert rewrite("team == 'a'") == 'pcns.team == "a"'
    assert rewrite("!global()") == "has(projectcalico.org/namespace)"  # "!!has(...)" re-parsed
    assert rewrite("!all()") == "!has(projectcalico.org/namespace)"
    assert rewrite("global() || env in {'dev'}") == ('(!has(projectcalico.org/namespace) || pcns.env in {"dev"})')
    # Node-level, so a quoted value that spells all() is left alone (Calico's text replace is not).
    assert rewrite("x == 'all()'") == 'pcns.x == "all()"'


def test_policy_selector_rewrite_examples() -> None:
    # §2.2: GNP selector && pcns-prefixed namespaceSelector, then all() -> has(ns).
    selector = parse_selector("app == 'db'")
    namespace_selector = parse_selector("all()").prefixed("pcns.")
    applied = selector.and_(namespace_selector).replace_all(HAS_NS)
    assert str(applied) == '(app == "db" && has(projectcalico.org/namespace))'
    assert applied.matches({"app": "db", "projectcalico.org/namespace": "prod"})
    assert not applied.matches({"app": "db"})  # a host endpoint has no namespace label

    chain = parse_selector("a == 'x' && b == 'y'").and_(parse_selector("c == 'z'"))
    assert str(chain) == '((a == "x" && b == "y") && c == "z")'
    assert chain == parse_selector("(a == 'x' && b == 'y') && (c == 'z')")


def test_double_negation_through_parentheses_is_kept_like_calico() -> None:
    selector = parse_selector("!(!has(a))")
    assert selector.root == Not(Not(Has("a")))
    assert str(selector) == "!!has(a)"
    assert parse_selector(str(selector)).root == Has("a")
    assert selector.uid != parse_selector("has(a)").uid
    assert selector.and_(ALL).root == And((Has("a"), All()))


# ----------------------------------------------------------------------------------------------
# The Selector object
# ----------------------------------------------------------------------------------------------


def test_selector_value_semantics() -> None:
    a = parse_selector("tier == 'transaction' && has(app)")
    b = parse_selector('( tier=="transaction"&&has( app ) )')
    assert a == b and hash(a) == hash(b) and a.uid == b.uid
    assert a is parse_selector("tier == 'transaction' && has(app)")  # cached
    assert repr(a) == "Selector('(tier == \"transaction\" && has(app))')"
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) is a
    assert {a: 1}[b] == 1
    assert a != '(tier == "transaction" && has(app))'
    with pytest.raises(AttributeError):
        a.root = All()
    with pytest.raises(AttributeError):
        del a.root


def test_matches_accepts_any_mapping() -> None:
    selector = parse_selector("app == 'web' && pcns.team == 'a' && !has(canary)")
    pod = {"app": "web"}
    namespace = {"pcns.team": "a"}
    assert selector.matches(ChainMap(pod, namespace)) is True
    assert selector.matches(MappingProxyType({**pod, **namespace, "canary": ""})) is False


def test_all_global_and_empty() -> None:
    for text in ("", " \t ", "all()", "( all( ) )", "!!all()"):
        assert parse_selector(text).is_all
        assert parse_selector(text) == ALL
    assert str(ALL) == "all()" and ALL.matches({})
    assert not parse_selector("all() && all()").is_all
    assert not parse_selector("!all()").matches({})
    assert parse_selector("a == 'b' || global()").contains_global
    assert not parse_selector("a == 'b'").contains_global
    assert parse_selector("global()").matches({})


def test_invalid_ast_construction() -> None:
    with pytest.raises(ValueError):
        And((Has("a"),))
    with pytest.raises(ValueError):
        Or(())
    assert In("a", ("z", "a", "z")).values == ("a", "z")


def test_parse_error_is_selector_error() -> None:
    with pytest.raises(SelectorError):
        parse_selector("a ==")
