"""What a packet can reach in a compiled table: chains and sets nothing refers to are left out.

Decision maps replace the rule walk of workload chains. The compiler allocates every walk's rule
ids (they must not depend on the layout) but renders a policy chain only when a kept chain jumps
to it (`jump_targets`). When every workload chain of a node got decision maps, the
policy chains (`pi-`/`po-`), their end-of-tier drops (`ei-`/`eo-`, through the `eot-` maps) and
the sets only their rules use are unreachable: loading them cost the kernel most of a full apply
(ten thousand policy rules for a few hundred decision rules). A chain or map is kept when a base
chain reaches it through `jump`/`goto` or a map's `goto`/`jump` elements; nothing reachable
changes, so no verdict or attribution does.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping

from enforcer.nft.ir import Chain, NftSet

_BRANCH = ("jump", "goto")


def _scan(lines: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Chains (after `jump`/`goto`) and sets (`@name`) that `lines` name."""
    chains: set[str] = set()
    sets: set[str] = set()
    for line in lines:
        words = line.split()
        for i, word in enumerate(words):
            if word in _BRANCH and i + 1 < len(words):
                chains.add(words[i + 1].rstrip(",}"))
            elif word.startswith("@"):
                sets.add(word[1:].rstrip(",}"))
    return frozenset(chains), frozenset(sets)


@functools.lru_cache(maxsize=1 << 14)
def _targets(lines: tuple[str, ...] | frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """`_scan`, kept per chain or map content: a reconcile prunes the whole table again, and most
    chains and maps are those of the last compile."""
    return _scan(lines)


def jump_targets(lines: Iterable[str]) -> frozenset[str]:
    """The chains `lines` jump or go to (a one-off scan of many chains' rules: not kept)."""
    return _scan(lines)[0]


def reachable(chains: Mapping[str, Chain], sets: Mapping[str, NftSet]) -> tuple[frozenset[str], frozenset[str]]:
    """The chains and sets reachable from the base chains (those with a hook)."""
    seen_chains: set[str] = set()
    seen_sets: set[str] = set()
    todo = [name for name, chain in chains.items() if chain.hook is not None]
    while todo:
        name = todo.pop()
        if name in seen_chains or name not in chains:
            continue
        seen_chains.add(name)
        found, used = _targets(chains[name].rules)
        more = set(found)
        for set_name in used - seen_sets:
            seen_sets.add(set_name)
            nset = sets.get(set_name)
            if nset is not None and nset.is_map:
                more |= _targets(nset.elements)[0]
        todo.extend(more - seen_chains)
    return frozenset(seen_chains), frozenset(seen_sets)


def prune(chains: Mapping[str, Chain], sets: Mapping[str, NftSet], keep_sets: Collection[str] = ()
          ) -> tuple[dict[str, Chain], dict[str, NftSet]]:
    """`chains` and `sets` without what no base chain reaches (`keep_sets` are kept regardless:
    sets other code updates by name; they must not go to a chain, which could be gone)."""
    live_chains, live_sets = reachable(chains, sets)
    kept_sets = {n: s for n, s in sets.items() if n in live_sets or n in keep_sets}
    return {n: c for n, c in chains.items() if n in live_chains}, kept_sets
