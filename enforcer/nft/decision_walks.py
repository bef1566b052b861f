"""The walks of one decision chain, kept between decides so that a toggle or an edit walks again
only what it can change (regions.rewalk), with the same result as a walk from scratch.

A chain's walk runs once per family and space (each port protocol, ICMP, the other protocols).
`Walks` keeps, per family: the skeleton (the enforced policies, tier by tier, each with its
family-rendered rules and their positions), every policy's region in each space, and each
space's decided boxes with their positions and trails. Deciding the chain again compares the new
skeleton with the kept one:

- positions of the policies present in both differ, or the profiles' rules differ: walk whole;
- otherwise the changed policies are those whose enforced rules differ (a toggle, an edit, a
  staged flag); the walk is the same before the first of them (`start`), and from there differs
  only where their old or new rules match, and in the end-of-tier outcomes of a tier whose last
  enforced policy changed (re-attribution) or that appeared or vanished (everything pending at
  `start`). `regions.rewalk` walks again just that.

The space may change too (an edit adding or removing address tests or port boundaries):

- same address tests (so the same peer classes), the same own-side tests, ICMP keyed or not alike,
  and every axis of the new space a refinement of the old one (the edit only adds port, ICMP or
  protocol boundaries): the kept boxes and regions are mapped into the new space (an interval
  that splits maps to several) and the walk goes on incrementally as above;
- anything else (a new or removed address test, a boundary that went away): walk whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from enforcer.evaluate.evaluator import Evaluator, Hit
from enforcer.evaluate.path import Stage
from enforcer.model import Rule
from enforcer.nft.decision_space import Intervals
from enforcer.nft.regions import (
    END,
    Box,
    Decided,
    Outcome,
    Pos,
    RegionRule,
    TierRules,
    profile_pos,
    rewalk,
    walk_traced,
)
from enforcer.resolve.rules import rule_for_family

Key = tuple[str, str, str]
Entry = tuple[Hit, Rule, "str | None", Pos]  # a rule of the walk: hit, family-rendered rule, namespace, position
BoxesOf = Callable[[Rule, "str | None"], tuple[Box, ...]]


@dataclass(frozen=True)
class PolicyRules:
    """One enforced policy's rules in one family, as the walk takes them."""

    key: Key
    pos: tuple[int, int]  # (tier, position in the tier)
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Skeleton:
    """The stage's walk in one family: tiers of enforced policies (tier index, policies, end-of-tier
    hit or None for a Pass default), then the profiles' rules."""

    tiers: tuple[tuple[int, tuple[PolicyRules, ...], Hit | None], ...]
    profiles: tuple[tuple[Entry, ...], ...]

    def policies(self) -> dict[Key, PolicyRules]:
        return {p.key: p for _, pols, _ in self.tiers for p in pols}

    def ends(self) -> dict[int, Hit | None]:
        return {t: end for t, _, end in self.tiers}


def skeleton(ev: Evaluator, stage: Stage, version: int, positions: Mapping[Key, tuple[int, int]],
             known: dict[tuple[int, int], tuple[object, PolicyRules]]) -> Skeleton:
    """The evaluator's walk of `stage` in one family. `known` keeps each policy's rendered rules
    by policy object (and position): a toggle or an edit renders only the changed policies'."""
    assert stage.endpoint is not None
    direction = stage.direction
    tiers = []
    for st in ev.stage_tiers(stage):
        enforced = tuple(p for p in st.enforced if not p.disabled)  # the compiler's view lays them out too
        if not enforced:
            continue
        pols = []
        for pol in enforced:
            pos = positions[pol.key]
            found = known.get((id(pol), version))
            if found is None or found[0] is not pol or found[1].pos != pos:
                entries = []
                for index, rule in enumerate(pol.rules(direction)):
                    fam_rule = rule_for_family(rule, version)  # as the evaluator's compile_rule renders it
                    if fam_rule is not None:
                        hit = Hit(pol.kind, pol.namespace, pol.name, st.tier.name, direction, index, rule.action)
                        entries.append((hit, fam_rule, pol.namespace, (*pos, index)))
                found = known[(id(pol), version)] = (pol, PolicyRules(pol.key, pos, tuple(entries)))
            pols.append(found[1])
        last = enforced[-1]
        end = None if st.tier.tier.default_action == "Pass" else Hit(
            last.kind, last.namespace, last.name, st.tier.name, direction, -1, "Deny")
        tiers.append((positions[last.key][0], tuple(pols), end))
    profiles = []
    for k, name in enumerate(stage.endpoint.profiles):
        prof = ev.state.profiles.get(name)
        if prof is None:
            continue
        prules = []
        for index, rule in enumerate(prof.rules(direction)):
            fam_rule = rule_for_family(rule, version)
            if fam_rule is not None:
                prules.append((ev.profile_hit(name, direction, index, rule.action), fam_rule, None,
                               profile_pos(k, index)))
        profiles.append(tuple(prules))
    return Skeleton(tuple(tiers), tuple(profiles))


def _regions(entries: tuple[Entry, ...], boxes: BoxesOf) -> tuple[RegionRule, ...]:
    out = []
    for hit, rule, ns, pos in entries:
        b = boxes(rule, ns)
        if b:
            out.append(RegionRule(hit, b, pos))
    return tuple(out)


@dataclass
class SpaceWalk:
    """One space's walk: its sizes, every policy's region (by key, with the rules it is of), and
    the decided boxes."""

    sizes: tuple[int, ...]
    regions: dict[Key, tuple[PolicyRules, tuple[RegionRule, ...]]] = field(default_factory=dict)
    decided: list[Decided] = field(default_factory=list)
    # The boxes walked again since the previous walks, in the same space (rendering repaints
    # only them); None: walked whole, or the space was refined.
    fresh: list[Decided] | None = None

    def region(self, p: PolicyRules, boxes: BoxesOf) -> tuple[RegionRule, ...]:
        found = self.regions.get(p.key)
        if found is None or found[0] is not p:
            found = self.regions[p.key] = (p, _regions(p.entries, boxes))
        return found[1]


@dataclass
class Walks:
    """Everything a decide keeps of one family's walks (see the module's docstring)."""

    skeleton: Skeleton
    spaces: dict[str, SpaceWalk]
    known: dict[tuple[int, int], tuple[object, PolicyRules]]
    incremental: bool = False  # how this one was walked (tests and benchmarks ask)


def _tiers(sk: Skeleton, space: SpaceWalk, boxes: BoxesOf, start: Pos = (0, 0, 0)) -> list[TierRules]:
    """The walk's tiers (from the policy at `start` on: a walk again needs no more)."""
    return [TierRules(tuple(r for p in pols if (*p.pos, 0) >= start for r in space.region(p, boxes)), end, t)
            for t, pols, end in sk.tiers if t >= start[0]]


def _profiles(sk: Skeleton, boxes: BoxesOf) -> list[tuple[RegionRule, ...]]:
    return [_regions(p, boxes) for p in sk.profiles]


def walk_all(sk: Skeleton, spaces: dict[str, tuple[BoxesOf, tuple[int, ...]]],
             known: dict[tuple[int, int], tuple[object, PolicyRules]]) -> Walks:
    """Every space walked from scratch."""
    out: dict[str, SpaceWalk] = {}
    for name, (boxes, sizes) in spaces.items():
        sw = out[name] = SpaceWalk(sizes)
        sw.decided = walk_traced(sizes, _tiers(sk, sw, boxes), _profiles(sk, boxes))
    return Walks(sk, out, known)


def walk_again(old: Walks, sk: Skeleton, spaces: dict[str, tuple[BoxesOf, tuple[int, ...]]],
               refine: dict[str, tuple[list[int] | None, ...]] | None = None) -> Walks:
    """The walks of skeleton `sk` from the `old` ones (whose space `refine` maps into this one, axis
    by axis: old interval → mask of new intervals, None where the axis is unchanged); equal to
    `walk_all(sk, spaces)`."""
    before, after = old.skeleton.policies(), sk.policies()
    if old.skeleton.profiles != sk.profiles or any(before[k].pos != p.pos for k, p in after.items() if k in before):
        return walk_all(sk, spaces, old.known)
    changed = [k for k in before.keys() | after.keys() if before.get(k) is not after.get(k)]
    old_ends, new_ends = old.skeleton.ends(), sk.ends()
    appeared = old_ends.keys() != new_ends.keys()
    reattributed = {end for t, end in old_ends.items() if end is not None and new_ends.get(t) != end}
    if not changed and not appeared and not reattributed and refine is None:
        same = {name: SpaceWalk(sw.sizes, sw.regions, sw.decided, []) for name, sw in old.spaces.items()}
        return Walks(sk, same, old.known, incremental=True)  # nothing painted
    start: Pos = min(((*(before.get(k) or after[k]).pos, 0) for k in changed), default=(END, 0, 0))

    def redo(out: Outcome) -> bool:
        return appeared or out.hit in reattributed

    out: dict[str, SpaceWalk] = {}
    for name, (boxes, sizes) in spaces.items():
        was = old.spaces[name]
        maps = refine.get(name) if refine is not None else None
        sw = out[name] = SpaceWalk(sizes, _remap_regions(was.regions, maps), was.decided,
                                   [] if maps is None else None)
        if maps is not None:
            sw.decided = [(_remap(b, maps), o, p, t) for b, o, p, t in sw.decided]
        touched = touched_boxes([(before.get(k), after.get(k)) for k in changed], sw, boxes)
        if touched or appeared or reattributed:
            kept, fresh = rewalk(sw.decided, start, touched, redo if appeared or reattributed else None,
                                 _tiers(sk, sw, boxes, start),
                                 _profiles(sk, boxes))
            sw.decided = kept + fresh
            if sw.fresh is not None:
                sw.fresh = fresh
    return Walks(sk, out, old.known, incremental=True)


def touched_boxes(changed: list[tuple[PolicyRules | None, PolicyRules | None]], sw: SpaceWalk,
                  boxes: BoxesOf) -> tuple[Box, ...]:
    """Where the changed policies' rules match in the space, old (as last walked) and new: a cell
    outside both meets the same rules in both walks."""
    return tuple(b for pair in changed for p in pair if p is not None for r in sw.region(p, boxes) for b in r.boxes)


# ---- refining the kept space ----------------------------------------------------------------


def axis_map(old: Intervals, new: Intervals) -> list[int] | None:
    """Old interval index → mask of the new intervals it splits into; None when they are the same.
    Raises ValueError when `new` is not a refinement of `old` (an old boundary is gone)."""
    if old == new:
        return None
    starts = {a: j for j, (a, _) in enumerate(new)}
    out = []
    for a, b in old:
        first = starts.get(a)
        if first is None:
            raise ValueError(f"boundary {a} is gone")
        last = first
        while new[last][1] < b:
            last += 1
        if new[last][1] != b:
            raise ValueError(f"boundary {b + 1} is gone")
        out.append(((1 << (last - first + 1)) - 1) << first)
    return out


def _remap(box: Box, maps: tuple[list[int] | None, ...]) -> Box:
    out = []
    for mask, m in zip(box, maps, strict=True):
        if m is None:
            out.append(mask)
            continue
        new = 0
        i = 0
        while mask:
            if mask & 1:
                new |= m[i]
            mask >>= 1
            i += 1
        out.append(new)
    return tuple(out)


def _remap_regions(regions: dict[Key, tuple[PolicyRules, tuple[RegionRule, ...]]],
                   maps: tuple[list[int] | None, ...] | None) -> dict[Key, tuple[PolicyRules, tuple[RegionRule, ...]]]:
    if maps is None:
        return dict(regions)
    return {k: (p, tuple(RegionRule(r.hit, tuple(_remap(b, maps) for b in r.boxes), r.pos) for r in rr))
            for k, (p, rr) in regions.items()}
