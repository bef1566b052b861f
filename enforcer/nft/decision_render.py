"""Rendering a decision chain's walks as map elements, and rendering again only what a
re-decision painted (decision.py, decision_walks.py).

Per family and space, each peer class has a row: the outcome of every cell (the space's other
axes, row-major). A row becomes map elements (a piece): runs of equal outcomes merged along the
axes. The next decide of the chain paints the boxes it walked again over the kept rows and renders
again only the painted rows — for a port row without source ports, only the runs around the
painted cells. Outcomes are canonical objects (one per distinct outcome), so rows compare cells by
identity.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from enforcer.nft.decision_space import ICMP_PROTOCOL, PORT_PROTOCOLS, Family, Intervals
from enforcer.nft.decision_walks import Walks
from enforcer.nft.regions import Box, Decided, Outcome, bits

# The mark's low bits carrying a packet's peer class from the address lookup to the class-keyed
# maps: the compiler's gate field (compiler.GATE), scratch outside a tier walk (cleared at each
# tier's start), and a decision chain walks no tier.
CLASS_FIELD = 0xFFFF


def text_range(render: Callable[[int], str], first: int, last: int) -> str:
    return render(first) if first == last else f"{render(first)}-{render(last)}"


def runs(values: Sequence[object]) -> Iterator[tuple[int, int]]:
    """(first index, last index) of each run of equal adjacent values (identical first: outcomes
    are canonical objects, and a value equals itself)."""
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or (values[i] is not values[start] and values[i] != values[start]):
            yield start, i - 1
            start = i


def contiguous(intervals: Intervals) -> Iterator[tuple[int, int]]:
    lo, hi = intervals[0]
    for a, b in intervals[1:]:
        if a == hi + 1:
            hi = b
        else:
            yield lo, hi
            lo, hi = a, b
    yield lo, hi


def box_cells(box: Box, sizes: tuple[int, ...]) -> list[int]:
    """The cells (row-major over the axes after the class) of a box."""
    cells = [0]
    for axis, n in zip(box[1:], sizes, strict=True):
        cells = [base * n + i for base in cells for i in bits(axis)]
    return cells


def grid(classes: int, sizes: tuple[int, ...], decided: list[Decided], canon: dict[Outcome, Outcome]
          ) -> list[list[Outcome]]:
    """Per class: the outcome of every cell of the other axes (row-major)."""
    width = 1
    for n in sizes:
        width *= n
    rows: list[list[Outcome]] = [[None] * width for _ in range(classes)]  # type: ignore[list-item]
    fill(rows, sizes, decided, canon)
    return rows


def fill(rows: list[list[Outcome]], sizes: tuple[int, ...], decided: list[Decided],
          canon: dict[Outcome, Outcome]) -> None:
    """Paint the boxes' outcomes, each as its one canonical object (rows compare cells by identity)."""
    for box, out, _, _ in decided:
        out = canon.setdefault(out, out)
        cells = box_cells(box, sizes)
        for c in bits(box[0]):
            row = rows[c]
            for cell in cells:
                row[cell] = out


def paint(old: list[list[Outcome]], sizes: tuple[int, ...], fresh: list[Decided], canon: dict[Outcome, Outcome]
           ) -> tuple[list[list[Outcome]], dict[int, tuple[int, int]]]:
    """`old` rows with the boxes walked again painted over (copied where painted), and for each
    class painted the first and last cell painted."""
    dirty: dict[int, tuple[int, int]] = {}
    for box, _, _, _ in fresh:
        cells = box_cells(box, sizes)
        lo, hi = min(cells), max(cells)
        for c in bits(box[0]):
            was = dirty.get(c)
            dirty[c] = (lo, hi) if was is None else (min(was[0], lo), max(was[1], hi))
    rows = [list(r) if c in dirty else r for c, r in enumerate(old)]
    fill(rows, sizes, fresh, canon)
    return rows, dirty


Run = tuple[int, int, Outcome, str]  # first and last cell of a run of one outcome, and its element


@dataclass(frozen=True)
class Piece:
    """One class's row of one space as map elements."""

    exact: frozenset[str]  # single ports: a hash lookup, O(1) whatever their number
    ranged: frozenset[str]  # the rest: an interval lookup, whose cost grows with its elements
    targets: frozenset[str]  # the outcome chains they go to
    # A port row without source ports (one dimension): its runs, and how many go to each target,
    # so that painting a few cells renders again only the runs around them.
    runs: tuple[Run, ...] = ()
    uses: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Rendered:
    """One family's rendering, kept in the memo: per space, each class's row of outcomes and its
    map elements (the next decide renders again only the rows its walk painted)."""

    rows: dict[str, list[list[Outcome]]]
    pieces: dict[tuple[str, int], Piece]
    sport: bool  # some rule tests source ports: the port maps are keyed on them
    canon: dict[Outcome, Outcome]  # one object per distinct outcome (rows hold these)
    # Per class: its pieces as elements of the family's maps (keyed on the class), and their targets.
    joined: dict[int, ClassElements] = field(default_factory=dict)


def render(fam: Family, walks: Walks, before: Rendered | None, goto: Callable[[Outcome], str]) -> Rendered:
    sport = any(len(s) > 1 for s, _ in fam.ports.values())
    classes = len(fam.classes)
    rows: dict[str, list[list[Outcome]]] = {}
    pieces: dict[tuple[str, int], Piece] = {}
    canon = before.canon if before is not None and len(before.canon) < 65536 else {}
    for name, sw in walks.spaces.items():
        old = before.rows.get(name) if before is not None and sw.fresh is not None else None
        if old is not None and canon is not before.canon:  # type: ignore[union-attr]
            old = None  # the kept rows' objects are not this canon's
        if old is None:
            rows[name] = grid(classes, sw.sizes[1:], sw.decided, canon)
            dirty: dict[int, tuple[int, int]] | None = None
        else:
            rows[name], dirty = paint(old, sw.sizes[1:], sw.fresh or [], canon)
        for c in range(classes):
            kept = before.pieces[name, c] if dirty is not None and before is not None and (
                not name.startswith("port") or before.sport == sport) else None
            if kept is not None and c not in (dirty or {}):
                pieces[name, c] = kept
            elif kept is not None and kept.runs:
                pieces[name, c] = render_again(fam, int(name[4:]), rows[name][c], kept, *(dirty or {})[c], sport, goto)
            else:
                pieces[name, c] = render_piece(fam, name, rows[name][c], sport, goto)
    return Rendered(rows, pieces, sport, canon, dict(before.joined) if before is not None else {})


def port_element(fam: Family, proto: int, first: int, last: int, out: Outcome, sport: bool,
                  goto: Callable[[Outcome], str]) -> str:
    """The element of a run of a one-dimensional port row (cells first..last)."""
    (s_lo, s_hi), = fam.ports[proto][0]
    d_axis = fam.ports[proto][1]
    dport = text_range(str, d_axis[first][0], d_axis[last][1])
    key = f"{proto} . {text_range(str, s_lo, s_hi)} . {dport}" if sport else f"{proto} . {dport}"
    return f"{key} : {goto(out)}"


def _runs_piece(runs: list[Run]) -> Piece:
    exact = frozenset(e for *_, e in runs if "-" not in e.partition(" : ")[0])
    uses: dict[str, int] = {}
    for *_, e in runs:
        t = e.rsplit(" goto ", 1)[1]
        uses[t] = uses.get(t, 0) + 1
    return Piece(exact, frozenset(e for *_, e in runs) - exact, frozenset(uses), tuple(runs), uses)


def render_again(fam: Family, proto: int, row: list[Outcome], kept: Piece, lo: int, hi: int, sport: bool,
             goto: Callable[[Outcome], str]) -> Piece:
    """`kept` with cells lo..hi of its row painted: the runs from the one before lo to the one
    after hi rendered again (the runs outside start and end on cells not painted, so they neither
    change nor merge with the new ones)."""
    kept_runs = kept.runs
    firsts = [r[0] for r in kept_runs]
    i0 = bisect.bisect_right(firsts, max(lo - 1, 0)) - 1
    i1 = bisect.bisect_right(firsts, min(hi + 1, len(row) - 1)) - 1
    a, b = kept_runs[i0][0], kept_runs[i1][1]
    new: list[Run] = []
    for x, y in runs(row[a:b + 1]):
        out = row[a + x]
        new.append((a + x, a + y, out, port_element(fam, proto, a + x, a + y, out, sport, goto)))
    gone = kept_runs[i0:i1 + 1]
    uses = dict(kept.uses)
    for sign, part in ((-1, gone), (1, new)):
        for *_, e in part:
            t = e.rsplit(" goto ", 1)[1]
            uses[t] = uses.get(t, 0) + sign
    uses = {t: n for t, n in uses.items() if n > 0}
    removed = frozenset(e for *_, e in gone)
    added = frozenset(e for *_, e in new)
    added_exact = frozenset(e for e in added if "-" not in e.partition(" : ")[0])
    return Piece((kept.exact - removed) | added_exact, (kept.ranged - removed) | (added - added_exact),
                 frozenset(uses), (*kept_runs[:i0], *new, *kept_runs[i1 + 1:]), uses)


def render_piece(fam: Family, space: str, row: list[Outcome], sport: bool, goto: Callable[[Outcome], str]) -> Piece:
    """One class's row of one space as map elements."""
    exact: set[str] = set()  # single ports: a hash lookup, O(1) whatever their number
    ranged: set[str] = set()  # the rest: an interval lookup, whose cost grows with its elements
    targets: set[str] = set()

    def to(out: Outcome) -> str:
        verdict = goto(out)
        targets.add(verdict.removeprefix("goto "))
        return verdict

    if space.startswith("port") and len(fam.ports[int(space[4:])][0]) == 1:
        proto = int(space[4:])
        return _runs_piece([(x, y, row[x], port_element(fam, proto, x, y, row[x], sport, goto))
                            for x, y in runs(row)])
    if space.startswith("port"):
        proto = int(space[4:])
        s_axis, d_axis = fam.ports[proto]
        for sp, dport, out in plane(row, s_axis, d_axis):
            key = f"{proto} . {sp} . {dport}" if sport else f"{proto} . {dport}"
            (ranged if "-" in key else exact).add(f"{key} : {to(out)}")
    elif space == "icmp":
        assert fam.icmp is not None
        types, codes = fam.icmp
        ranged = {f"{t} . {code} : {to(out)}" for t, code, out in plane(row, types, codes)}
    else:
        for q0, q1 in runs(row):
            # adjacent in the list but not in number (a protocol with its own map between): split
            for lo, hi in contiguous(fam.others[q0:q1 + 1]):
                ranged.add(f"{text_range(str, lo, hi)} : {to(row[q0])}")
    return Piece(frozenset(exact), frozenset(ranged), frozenset(targets))


def plane(row: list[Outcome], outer: Intervals, inner: Intervals) -> Iterator[tuple[str, str, Outcome]]:
    """A 2-axis row as (outer range, inner range, outcome) elements, equal neighbours merged."""
    n = len(inner)
    lines = [tuple((inner[i0][0], inner[i1][1], row[o * n + i0]) for i0, i1 in runs(row[o * n:(o + 1) * n]))
             for o in range(len(outer))]
    for o0, o1 in runs(lines):
        for lo, hi, oid in lines[o0]:
            yield text_range(str, outer[o0][0], outer[o1][1]), text_range(str, lo, hi), oid


@dataclass(frozen=True)
class ClassElements:
    """One class's pieces as elements of the family's shared maps (keyed first on the class), kept
    while its pieces are the same objects."""

    pieces: tuple[Piece, ...]
    exact: frozenset[str]
    ranged: frozenset[str]
    icmp: frozenset[str]
    other: frozenset[str]
    port_targets: frozenset[str]
    icmp_targets: frozenset[str]
    other_targets: frozenset[str]


def _class_elements(fam: Family, rendered: Rendered, c: int) -> ClassElements:
    n = len(PORT_PROTOCOLS)
    pieces = (*(rendered.pieces[f"port{p}", c] for p in PORT_PROTOCOLS),
              *((rendered.pieces["icmp", c],) if fam.icmp is not None else ()), rendered.pieces["other", c])
    kept = rendered.joined.get(c)
    if kept is not None and len(kept.pieces) == len(pieces) \
            and all(a is b for a, b in zip(kept.pieces, pieces, strict=True)):
        return kept
    cls = f"{c} . "
    ports_, icmp, other = pieces[:n], pieces[n] if fam.icmp is not None else None, pieces[-1]
    made = rendered.joined[c] = ClassElements(
        pieces,
        frozenset(cls + e for p in ports_ for e in p.exact),
        frozenset(cls + e for p in ports_ for e in p.ranged),
        frozenset(cls + e for e in icmp.ranged) if icmp is not None else frozenset(),
        frozenset(cls + e for e in other.ranged),
        frozenset().union(*(p.targets for p in ports_)),
        icmp.targets if icmp is not None else frozenset(), other.targets)
    return made


def family_maps(fam: Family, rendered: Rendered, suffix: str,
                maps: dict[str, tuple[str, frozenset[str], bool, bool]], targets: dict[str, frozenset[str]]
                ) -> list[str]:
    """One family's maps (added to `maps`, with the outcome chains they go to) and the rules that
    look them up: every class's row in the same four maps, keyed first on the class (the mark's
    low bits; 0 when there is one, so a map keeps its type when an edit changes the number of
    classes).

    One map per class and kind made ~21k sets for 17 decision chains (1,000 policies over 1,000
    pods), and the kernel finds a set by name by walking the table's list of sets: adding N sets
    (and the rules and elements naming them) costs O(N²) — 8,000 empty maps took 1.9 s, 2,000
    0.21 s — which was most of a 590 s full apply. Anonymous sets count as sets too, so there is
    no protocol filter before the port maps: their keys start with the protocol, and other
    protocols miss them."""
    sport = rendered.sport
    per_class = [_class_elements(fam, rendered, c) for c in range(len(fam.classes))]

    def union(field_: str) -> frozenset[str]:
        return frozenset().union(*(getattr(e, field_) for e in per_class))

    mark = f"meta mark & {CLASS_FIELD:#x} . "
    kind = f"mark . inet_proto . inet_service{' . inet_service' if sport else ''} : verdict"
    maps[f"dh{suffix}"] = (kind, union("exact"), True, False)
    maps[f"dp{suffix}"] = (kind, union("ranged"), True, True)
    targets[f"dh{suffix}"] = targets[f"dp{suffix}"] = union("port_targets")
    ports = f"{mark}meta l4proto{' . th sport' if sport else ''} . th dport"
    # The two maps partition the ports: a packet the hash map misses is in a range.
    out = [f"{ports} vmap @dh{suffix}", f"{ports} vmap @dp{suffix}"]
    if fam.icmp is not None:
        kind = "icmp" if fam.version == 4 else "icmpv6"
        maps[f"di{suffix}"] = (f"mark . {kind}_type . {kind}_code : verdict", union("icmp"), True, True)
        targets[f"di{suffix}"] = union("icmp_targets")
        out.append(f"meta l4proto {ICMP_PROTOCOL[fam.version]} {mark}{kind} type . {kind} code vmap @di{suffix}")
    maps[f"dn{suffix}"] = ("mark . inet_proto : verdict", union("other"), True, True)
    targets[f"dn{suffix}"] = union("other_targets")
    out.append(f"{mark}meta l4proto vmap @dn{suffix}")
    return out
