"""Calico's first-match walk over regions of packet space instead of over single packets.

A space is a product of axes, each split into elementary intervals (the peer's address class,
ports, ICMP type and code, protocols); a box is one bitmask per axis (the product of the marked
intervals). Each rule's match is a union of boxes. The walk takes the rules in the evaluator's
order and splits the still-undecided boxes into the part a rule matches (decided, passed to the
next tier, or logged and still undecided) and the rest — so its cost grows with rules × boxes,
not with rules × cells. The result is the walk's outcome for every cell, as disjoint boxes.

Semantics (evaluator.py `_tiers_walk` and `_profiles`): within a tier the selecting policies in
order, the first matching rule decides; `Log` records and goes on; `Pass` leaves the tier;
nothing matched ends the tier with a deny attributed to its last policy (unless the tier's
default is Pass); then the profiles in order (`Pass` goes to the next profile); nothing matched
at all is the no-profile drop (outcome hit None).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from enforcer.evaluate.evaluator import Hit

Box = tuple[int, ...]  # one bitmask per axis: the intervals of that axis the box covers


@dataclass(frozen=True)
class Outcome:
    """The walk's result for a region: Log hits on the way, then the deciding hit (None: no
    profile matched, the no-profile drop)."""

    logged: tuple[Hit, ...]
    verdict: str  # "allow" | "deny"
    hit: Hit | None


@dataclass(frozen=True)
class RegionRule:
    """A rule of the walk: its hit (policy or profile, index, action) and where it matches."""

    hit: Hit
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class TierRules:
    rules: tuple[RegionRule, ...]  # every enforced policy's rules, in order
    end: Hit | None  # the end-of-tier deny; None when the tier's default is Pass


def full_box(sizes: Iterable[int]) -> Box:
    return tuple((1 << n) - 1 for n in sizes)


def bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def interval_mask(first: int, last: int) -> int:
    """The mask of intervals first..last (indices, inclusive)."""
    return ((1 << (last - first + 1)) - 1) << first


def _split(box: Box, rule: tuple[Box, ...]) -> tuple[list[Box], list[Box]]:
    """(the part of `box` inside the union of `rule`, the rest), each as disjoint boxes."""
    inside: list[Box] = []
    rest = [box]
    for r in rule:
        kept: list[Box] = []
        for b in rest:
            meet = tuple(x & y for x, y in zip(b, r, strict=True))
            if not all(meet):
                kept.append(b)
                continue
            inside.append(meet)
            # b minus r: axis by axis, the part outside r on that axis (inside on the earlier ones)
            prefix: list[int] = []
            for i, (x, y) in enumerate(zip(b, r, strict=True)):
                out = x & ~y
                if out:
                    kept.append((*prefix, out, *b[i + 1:]))
                prefix.append(x & y)
        rest = kept
    return inside, rest


Pending = list[tuple[Box, tuple[Hit, ...]]]  # undecided boxes with the Log hits on their way


def _coalesce(pending: Pending) -> Pending:
    """Merge boxes with the same Log hits that differ on one axis only (keeps the count low)."""
    if len(pending) < 2:
        return pending
    axes = len(pending[0][0])
    for axis in range(axes - 1, -1, -1):
        merged: dict[tuple[object, ...], int] = {}
        for box, logged in pending:
            key = (logged, box[:axis], box[axis + 1:])
            merged[key] = merged.get(key, 0) | box[axis]
        if len(merged) == len(pending):
            continue
        pending = [((*k[1], mask, *k[2]), k[0]) for k, mask in merged.items()]  # type: ignore[misc]
    return pending


def _apply(rule: RegionRule, pending: Pending, decided: list[tuple[Box, Outcome]],
           passed: Pending) -> Pending:
    """One rule over the pending boxes: what it matches is logged (and stays pending), passed,
    or decided; the rest stays pending."""
    action = rule.hit.action
    still: Pending = []
    for box, logged in pending:
        inside, rest = _split(box, rule.boxes)
        still += [(b, logged) for b in rest]
        if not inside:
            continue
        if action == "Log":
            hits = (*logged, rule.hit)
            still += [(b, hits) for b in inside]
        elif action == "Pass":
            passed += [(b, logged) for b in inside]
        else:
            out = Outcome(logged, "allow" if action == "Allow" else "deny", rule.hit)
            decided += [(b, out) for b in inside]
    return still


def walk(sizes: tuple[int, ...], tiers: Iterable[TierRules],
         profiles: Iterable[tuple[RegionRule, ...]]) -> list[tuple[Box, Outcome]]:
    """The outcome of every cell of the space `sizes` (intervals per axis), as disjoint boxes."""
    pending: Pending = [(full_box(sizes), ())]
    decided: list[tuple[Box, Outcome]] = []
    for tier in tiers:
        passed: Pending = []
        for rule in tier.rules:
            if not pending:
                break
            pending = _coalesce(_apply(rule, pending, decided, passed))
        if tier.end is not None:
            decided += [(b, Outcome(logged, "deny", tier.end)) for b, logged in pending]
            pending = []
        pending = _coalesce(pending + passed)
    for rules in profiles:
        passed = []
        for rule in rules:
            if not pending:
                break
            pending = _coalesce(_apply(rule, pending, decided, passed))
        pending = _coalesce(pending + passed)  # a profile's Pass goes on to the next profile
    decided += [(b, Outcome(logged, "deny", None)) for b, logged in pending]
    return decided
