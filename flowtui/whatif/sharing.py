"""Two cluster states and evaluators that share what cannot differ between them.

A what-if compares a current and an edited policy set that usually differ in a few policies
only. Resolving both from scratch doubles the fixed costs that dominate a large what-if
(endpoint index, selector address sets, which policies select each endpoint, compiled rules).
The edited state is therefore derived from the current one (`ClusterState.derive`, lazily: the
core shares the endpoint index and selector sets, and derives each endpoint's applicable
policies from the current state's answer), and the two evaluators share the compiled rules of
every *unchanged* policy and profile (keyed by policy key; the changed ones are compiled per
evaluator). `tests/test_whatif_engine.py` checks the shared evaluation against fresh
evaluators on random edits.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from enforcer.evaluate import Evaluator
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState
from flowtui.whatif.edits import Changes


def paired_states(base: ResourceSet, edited: ResourceSet) -> tuple[ClusterState, ClusterState]:
    """Cluster states for both sets, the edited one derived from the base (shared caches)."""
    base_state = ClusterState(base)
    return base_state, base_state.derive(edited, lazy=True)


class SharedRules(MutableMapping[tuple[object, ...], Any]):
    """An evaluator's compiled-rule cache: unchanged policies in a dict shared by both
    evaluators, changed ones in this evaluator's own."""

    def __init__(self, shared: dict[tuple[object, ...], Any], changed: set[tuple[str, str, str]]) -> None:
        self.shared = shared
        self.own: dict[tuple[object, ...], Any] = {}
        self.changed = changed

    def _home(self, key: tuple[object, ...]) -> dict[tuple[object, ...], Any]:
        return self.own if key and key[0] in self.changed else self.shared

    def get(self, key: tuple[object, ...], default: Any = None) -> Any:
        return self._home(key).get(key, default)

    def __getitem__(self, key: tuple[object, ...]) -> Any:
        return self._home(key)[key]

    def __setitem__(self, key: tuple[object, ...], value: Any) -> None:
        self._home(key)[key] = value

    def __delitem__(self, key: tuple[object, ...]) -> None:
        del self._home(key)[key]

    def __iter__(self) -> Iterator[tuple[object, ...]]:
        yield from self.shared
        yield from self.own

    def __len__(self) -> int:
        return len(self.shared) + len(self.own)


def paired_evaluators(base: ClusterState, edited: ClusterState, changes: Changes) -> tuple[Evaluator, Evaluator]:
    """Evaluators for both states, sharing compiled rules of unchanged policies."""
    if changes.cluster_changed:
        return Evaluator(base), Evaluator(edited)
    shared: dict[tuple[object, ...], Any] = {}
    changed = {p.key for p in changes.policies}
    return (Evaluator(base, _rules=SharedRules(shared, changed)),  # type: ignore[arg-type]
            Evaluator(edited, _rules=SharedRules(shared, changed)))  # type: ignore[arg-type]
