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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from operator import and_, or_

from enforcer.evaluate.evaluator import Hit

Box = tuple[int, ...]  # one bitmask per axis: the intervals of that axis the box covers


@dataclass(frozen=True)
class Outcome:
    """The walk's result for a region: Log hits on the way, then the deciding hit (None: no
    profile matched, the no-profile drop)."""

    logged: tuple[Hit, ...]
    verdict: str  # "allow" | "deny"
    hit: Hit | None


Pos = tuple[int, int, int]  # where a hit sits in the walk: (tier, policy in the tier, rule)
END = 1 << 30  # a tier's end, after its policies; also the first profile's "tier"
NO_PROFILE: Pos = (1 << 31, 0, 0)


def profile_pos(k: int, rule: int) -> Pos:
    return (END + k, 0, rule)


@dataclass(frozen=True)
class RegionRule:
    """A rule of the walk: its hit (policy or profile, index, action), where it matches, and its
    position in the walk (positions only grow along it)."""

    hit: Hit
    boxes: tuple[Box, ...]
    pos: Pos = (0, 0, 0)


@dataclass(frozen=True)
class TierRules:
    rules: tuple[RegionRule, ...]  # every enforced policy's rules, in order
    end: Hit | None  # the end-of-tier deny; None when the tier's default is Pass
    index: int = 0  # the tier's position (Pos[0])


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
            meet = tuple(map(and_, b, r))
            if 0 in meet:  # disjoint (the common case: tested at C speed)
                kept.append(b)
                continue
            inside.append(meet)
            # b minus r: axis by axis, the part outside r on that axis (inside on the earlier ones)
            for i, (x, y) in enumerate(zip(b, r, strict=True)):
                out = x & ~y
                if out:
                    kept.append((*meet[:i], out, *b[i + 1:]))
        rest = kept
    return inside, rest


Trail = tuple[tuple[Pos, Hit], ...]  # the Log and Pass hits on a region's way, with their positions
Pending = list[tuple[Box, Trail]]  # undecided boxes with their trail
Decided = tuple[Box, Outcome, Pos, Trail]  # a decided box: its outcome, the deciding position, its trail


def _coalesce(pending: Pending) -> Pending:
    """Merge boxes with the same trail that differ on one axis only (keeps the count low)."""
    if len(pending) < 2:
        return pending
    axes = len(pending[0][0])
    for axis in range(axes - 1, -1, -1):
        merged: dict[tuple[object, ...], int] = {}
        for box, trail in pending:
            key = (trail, box[:axis], box[axis + 1:])
            merged[key] = merged.get(key, 0) | box[axis]
        if len(merged) == len(pending):
            continue
        pending = [((*k[1], mask, *k[2]), k[0]) for k, mask in merged.items()]  # type: ignore[misc]
    return pending


class _Logged(dict[Trail, tuple[Hit, ...]]):
    """A trail's Log hits (an Outcome's `logged`), once per trail."""

    def __missing__(self, trail: Trail) -> tuple[Hit, ...]:
        found = self[trail] = tuple(h for _, h in trail if h.action == "Log")
        return found


def _apply(rule: RegionRule, pending: Pending, decided: list[Decided], passed: Pending,
           logged: _Logged) -> Pending:
    """One rule over the pending boxes: what it matches is logged (and stays pending), passed,
    or decided; the rest stays pending."""
    action = rule.hit.action
    still: Pending = []
    for box, trail in pending:
        inside, rest = _split(box, rule.boxes)
        still += [(b, trail) for b in rest]
        if not inside:
            continue
        if action in ("Log", "Pass"):
            longer = (*trail, (rule.pos, rule.hit))
            (still if action == "Log" else passed).extend((b, longer) for b in inside)
        else:
            out = Outcome(logged[trail], "allow" if action == "Allow" else "deny", rule.hit)
            decided += [(b, out, rule.pos, trail) for b in inside]
    return still


def _run(pending: Pending, tiers: Iterable[TierRules], profiles: Iterable[tuple[RegionRule, ...]]) -> list[Decided]:
    """The walk of `pending` through `tiers`, then `profiles`, then the no-profile drop."""
    decided: list[Decided] = []
    logged = _Logged()
    for tier in tiers:
        passed: Pending = []
        for rule in tier.rules:
            if not pending:
                break
            pending = _coalesce(_apply(rule, pending, decided, passed, logged))
        if tier.end is not None:
            end = (tier.index, END, 0)
            decided += [(b, Outcome(logged[t], "deny", tier.end), end, t) for b, t in pending]
            pending = []
        pending = _coalesce(pending + passed)
    for rules in profiles:
        passed = []
        for rule in rules:
            if not pending:
                break
            pending = _coalesce(_apply(rule, pending, decided, passed, logged))
        pending = _coalesce(pending + passed)  # a profile's Pass goes on to the next profile
    decided += [(b, Outcome(logged[t], "deny", None), NO_PROFILE, t) for b, t in pending]
    return decided


def walk_traced(sizes: tuple[int, ...], tiers: Iterable[TierRules],
                profiles: Iterable[tuple[RegionRule, ...]]) -> list[Decided]:
    """The outcome of every cell of the space `sizes` (intervals per axis), as disjoint boxes,
    each with where it was decided and the Log and Pass hits on its way (`rewalk` needs them)."""
    return _run([(full_box(sizes), ())], tiers, profiles)


def walk(sizes: tuple[int, ...], tiers: Iterable[TierRules],
         profiles: Iterable[tuple[RegionRule, ...]]) -> list[tuple[Box, Outcome]]:
    """The outcome of every cell of the space `sizes` (intervals per axis), as disjoint boxes."""
    return [(b, o) for b, o, _, _ in walk_traced(sizes, tiers, profiles)]


def _rest(tiers: Iterable[TierRules], start: Pos) -> list[TierRules]:
    """The tiers of a walk from position `start` on."""
    return [t if t.index > start[0] else TierRules(tuple(r for r in t.rules if r.pos >= start), t.end, t.index)
            for t in tiers if t.index >= start[0]]


def rewalk(old: list[Decided], start: Pos, touched: tuple[Box, ...], redo: Callable[[Outcome], bool] | None,
           tiers: list[TierRules], profiles: list[tuple[RegionRule, ...]]) -> tuple[list[Decided], list[Decided]]:
    """`walk_traced` of a changed walk, from the last one (`old`), when the walk is unchanged
    before position `start` (the first changed policy's) and, from `start` on, differs only in
    the rules matching `touched` (the changed policies' old and new regions, wherever they sit)
    and in the end-of-tier outcomes `redo` names (a tier whose last enforced policy changed, or
    every outcome when a tier appeared or vanished; None: none).

    A cell is in one of three states at `start`: decided (before it: unchanged, it meets no
    changed rule); passed out of `start`'s tier before it (pending again at the next tier); or
    pending. A cell pending at `start` (or at the next tier) that no changed rule matches, old
    or new, meets the same rules from there on in both walks, so keeps its outcome unless `redo`
    names it. The others are walked again from where they were pending, with the Log and Pass
    hits they had there. `tiers` and `profiles` are the whole new walk; only what comes at or
    after `start` is used. Returns the boxes kept and the boxes walked again (rendering repaints
    only those)."""
    tier = start[0]
    after_pass: Pos = (tier + 1, 0, 0)
    kept: list[Decided] = []
    pending: Pending = []
    passed: Pending = []  # passed out of `start`'s tier before `start`: pending at the next tier
    bound = tuple(reduce(or_, masks) for masks in zip(*touched, strict=True)) if touched else ()
    for box, out, pos, trail in old:
        if pos < start or (redo is None and (not bound or 0 in map(and_, box, bound))):
            kept.append((box, out, pos, trail))  # decided before, or meets no changed rule: as it was
            continue
        if any(p[0] == tier and p < start and h.action == "Pass" for p, h in trail):
            resume, into = after_pass, passed
        else:
            resume, into = start, pending
        before = tuple(t for t in trail if t[0] < resume)
        if redo is not None and redo(out):
            into.append((box, before))
            continue
        inside, rest = _split(box, touched) if touched else ([], [box])
        if not inside:
            kept.append((box, out, pos, trail))
            continue
        kept += [(b, out, pos, trail) for b in rest]
        into += [(b, before) for b in inside]
    fresh: list[Decided] = []
    if pending:
        fresh += _run(_coalesce(pending), _rest(tiers, start), profiles)
    if passed:
        fresh += _run(_coalesce(passed), _rest(tiers, after_pass), profiles)
    return kept, fresh
