"""Recursive-descent selector parser, reproducing libcalico-go's ``selector/parser``.

Grammar (calico-semantics.md §1.2), lowest precedence first::

    selector := <empty or spaces/tabs only>                    -> All()
              | or_expr EOF
    or_expr  := and_expr ( "||" and_expr )*                     -> one flat Or when 2+
    and_expr := unary ( "&&" unary )*                           -> one flat And when 2+
    unary    := "!"* primary                                    -> Not(primary) when the run is odd
    primary  := "has(" LABEL ")" | "all()" | "global()"
              | LABEL ("==" | "!=" | "contains" | "starts with" | "ends with") STRING
              | LABEL ("in" | "not in") "{" [ STRING ( "," STRING )* [","] ] "}"
              | "(" or_expr ")"

Chains are flattened; parenthesised groups are not (``(a && b) && c`` keeps its inner ``And``), and
``!`` parity only collapses within one run of ``!`` tokens (``!(!x)`` is ``Not(Not(x))``), exactly
as in Calico. Set literals are sorted and de-duplicated by the ``In``/``NotIn`` constructors.

One deliberate limit Calico does not have: parentheses may nest at most :data:`MAX_NESTING` deep,
so that parsing, rendering and matching stay far from Python's recursion limit.
"""

from __future__ import annotations

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
from enforcer.selector.tokenizer import Kind, SelectorError, Token, describe, tokenize

__all__ = ["MAX_NESTING", "parse"]

MAX_NESTING = 100

_COMPARISONS: dict[Kind, type[Eq | Ne | Contains | StartsWith | EndsWith]] = {
    Kind.EQ: Eq,
    Kind.NE: Ne,
    Kind.CONTAINS: Contains,
    Kind.STARTS_WITH: StartsWith,
    Kind.ENDS_WITH: EndsWith,
}
_OPERATOR_TEXT = {
    Kind.EQ: "==",
    Kind.NE: "!=",
    Kind.CONTAINS: "contains",
    Kind.STARTS_WITH: "starts with",
    Kind.ENDS_WITH: "ends with",
    Kind.IN: "in",
    Kind.NOT_IN: "not in",
}
_TERM_START = "a label, has(...), all(), global(), '!' or '('"


def parse(text: str) -> Node:
    """Parse selector text into its AST. Raises :class:`SelectorError` on invalid input."""
    tokens = tokenize(text)
    if tokens[0].kind is Kind.EOF:
        return All()
    return _Parser(text, tokens).parse_selector()


class _Parser:
    __slots__ = ("text", "tokens", "index", "depth")

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def error(self, token: Token, reason: str) -> SelectorError:
        return SelectorError(self.text, token.pos + 1, reason)

    def next(self) -> Token:
        """Consume and return the current token (the final EOF is never consumed past)."""
        token = self.tokens[self.index]
        if token.kind is not Kind.EOF:
            self.index += 1
        return token

    def parse_selector(self) -> Node:
        node = self.parse_or()
        extra = self.tokens[self.index]
        if extra.kind is not Kind.EOF:
            if extra.kind is Kind.RPAREN:
                hint = "this ')' has no matching '('"
            elif extra.kind in (Kind.LABEL, Kind.HAS, Kind.ALL, Kind.GLOBAL, Kind.NOT, Kind.LPAREN):
                hint = "expected '&&' or '||' between terms"
            else:
                hint = "expected '&&', '||' or the end of the selector"
            raise self.error(extra, f"unexpected {describe(extra)} after a complete expression; {hint}")
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.tokens[self.index].kind is Kind.OR:
            self.index += 1
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self) -> Node:
        operands = [self.parse_unary()]
        while self.tokens[self.index].kind is Kind.AND:
            self.index += 1
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def parse_unary(self) -> Node:
        negated = False
        while self.tokens[self.index].kind is Kind.NOT:
            negated = not negated
            self.index += 1
        node = self.parse_primary()
        return Not(node) if negated else node

    def parse_primary(self) -> Node:
        start = self.index
        token = self.next()
        kind = token.kind
        if kind is Kind.LABEL:
            return self.parse_label_test(token)
        if kind is Kind.HAS:
            return Has(token.value)
        if kind is Kind.ALL:
            return All()
        if kind is Kind.GLOBAL:
            return Global()
        if kind is Kind.LPAREN:
            return self.parse_group(token)
        if kind is Kind.STRING:
            reason = f"unexpected {describe(token)}; a term starts with a label (the label goes on the left)"
        elif start and self.tokens[start - 1].kind is Kind.NOT:
            reason = f"expected {_TERM_START} after '!', found {describe(token)}"
        else:
            reason = f"expected {_TERM_START}, found {describe(token)}"
        raise self.error(token, reason)

    def parse_group(self, opening: Token) -> Node:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(opening, f"parentheses nest more than {MAX_NESTING} deep")
        node = self.parse_or()
        closing = self.next()
        if closing.kind is not Kind.RPAREN:
            raise self.error(
                closing,
                f"expected ')' to close the '(' at column {opening.pos + 1}, found {describe(closing)}",
            )
        self.depth -= 1
        return node

    def parse_label_test(self, label: Token) -> Node:
        key = label.value
        op = self.next()
        comparison = _COMPARISONS.get(op.kind)
        if comparison is not None:
            value = self.next()
            if value.kind is not Kind.STRING:
                hint = " (values must be quoted)" if value.kind is Kind.LABEL else ""
                raise self.error(
                    value,
                    f"expected a quoted string after '{_OPERATOR_TEXT[op.kind]}', found {describe(value)}{hint}",
                )
            return comparison(key, value.value)
        if op.kind is Kind.IN or op.kind is Kind.NOT_IN:
            values = self.parse_set(op)
            return In(key, values) if op.kind is Kind.IN else NotIn(key, values)
        hint = ""
        if op.kind is Kind.LPAREN and key in ("has", "all", "global"):
            hint = f" (write '{key}(' with no space before the '(')"
        elif op.kind is Kind.LPAREN and key.lower() in ("has", "all", "global"):
            hint = f" ('{key.lower()}(' must be lowercase)"
        raise self.error(
            op,
            f"expected an operator after label '{key}' (==, !=, in, not in, contains, starts with,"
            f" ends with), found {describe(op)}{hint}",
        )

    def parse_set(self, op: Token) -> tuple[str, ...]:
        brace = self.next()
        if brace.kind is not Kind.LBRACE:
            raise self.error(
                brace,
                f"expected '{{' to start a set after '{_OPERATOR_TEXT[op.kind]}', found {describe(brace)}",
            )
        values: list[str] = []
        expecting = "a quoted string or '}'"
        while self.tokens[self.index].kind is Kind.STRING:
            values.append(self.next().value)
            expecting = "',' or '}'"
            if self.tokens[self.index].kind is not Kind.COMMA:
                break
            self.index += 1
            expecting = "a quoted string or '}'"
        closing = self.next()
        if closing.kind is not Kind.RBRACE:
            raise self.error(closing, f"expected {expecting} in the set, found {describe(closing)}")
        return tuple(values)
