"""The workload rule walk shared by every endpoint of a node: its size grows with policies plus
endpoints, not with their product.

Endpoints selected by the same enforced policies (per direction) share a *selection*, numbered in
the packet mark's high bits (`SEL_MASK`). An endpoint's own chain (`fw-…`/`tw-…`, through the
`wl-from`/`wl-to` maps) writes its selection number, jumps to the tier chain (`fw-tier-…`/
`tw-tier-…`) of each tier where it has a selecting policy, then runs its profiles. A tier chain
lists every policy of the tier that selects some endpoint of the node, in Calico's order; each
jump is guarded by one lookup of `selection | pass bit | gate` in `sel-<direction>`, whose
elements are the (selection, policy) pairs that select — so a policy jump is taken exactly where
the old per-endpoint chain listed it, and skipped after a Pass in the tier. Gates, the `closed`
set (toggles) and the end-of-tier map by gate are unchanged, so attribution is too.

Numbers are a function of the set of selections alone (a hash, probed in a fixed order), not of
compile history: a whole compile and an incremental one agree, and adding a selection moves no
other one (a few at most, on a hash collision)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from enforcer.evaluate.evaluator import StageTier
from enforcer.model import Direction

SEL_SHIFT = 19  # above ACCEPT (bit 16), PASS (17) and PREACCEPT (18) of the compiler's mark
SEL_MASK = 0xFFF80000
MAX_SEL = SEL_MASK >> SEL_SHIFT  # 8191 selections per direction and node (pods per node are ~110)

SelectionKey = tuple[tuple[str, str, str], ...]  # the selecting enforced policies' keys, in walk order


class SelectionSpaceExhausted(ValueError):
    """More distinct policy selections on one node than the mark's selection field can number."""


@dataclass(frozen=True)
class Selection:
    """One endpoint chain's walk: its direction, chain prefix, and the tiers (enforced policies
    that select it) it jumps to."""

    direction: Direction
    prefix: str
    key: SelectionKey
    tiers: tuple[StageTier, ...]


def selection_key(tiers: tuple[StageTier, ...]) -> SelectionKey:
    return tuple(p.key for st in tiers for p in st.enforced)


def _home(key: SelectionKey) -> int:
    digest = hashlib.sha256("\n".join("/".join(k) for k in key).encode()).digest()
    return int.from_bytes(digest[:4], "big") % MAX_SEL + 1


def number(keys: set[SelectionKey], where: str) -> dict[SelectionKey, int]:
    """A number 1..MAX_SEL per selection: its hash's, else the next free one, keys taken in the
    order of their hash (then the keys), so the answer depends on the set of keys only."""
    if len(keys) > MAX_SEL:
        raise SelectionSpaceExhausted(
            f"{where}: {len(keys)} distinct policy selections; the packet mark numbers at most {MAX_SEL}")
    taken: dict[int, SelectionKey] = {}
    for home, key in sorted((_home(k), k) for k in keys):
        n = home
        while n in taken:
            n = n % MAX_SEL + 1
        taken[n] = key
    return {key: n for n, key in taken.items()}
