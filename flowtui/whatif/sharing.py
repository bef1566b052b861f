"""Two cluster states and evaluators that share what cannot differ between them.

A what-if compares a current and an edited policy set that usually differ in a few policies
only. Resolving both from scratch doubles the fixed costs that dominate a large what-if
(endpoint index, selector address sets, which policies select each endpoint, compiled rules).
When the cluster objects (pods, nodes, namespaces, host endpoints, network sets, profiles,
Felix configuration) are equal, the edited state instead reuses:

* the endpoint index and the address ownership map (they depend on cluster objects only);
* the selector address sets and named-port sets (`ClusterState._ipsets`, `_named`: keyed by
  selector, computed from cluster objects only);
* per endpoint, its applicable policies, derived from the current state's answer: the current
  answer without the changed policies, plus the changed policies' edited versions that select it;
* the evaluator's compiled rules of every *unchanged* policy and profile (keyed by policy key;
  the changed ones are compiled per evaluator).

This reaches into `ClusterState`'s and `Evaluator`'s caches, which are dataclass fields and
cached properties; where one is missing (the core evolved) nothing is shared for it and both
sides compute their own — slower, never wrong. `tests/test_whatif_engine.py` checks the shared
evaluation against fresh evaluators on random edits.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from enforcer.evaluate import Evaluator
from enforcer.model import Policy, ResourceSet
from enforcer.resolve import ClusterState, Endpoint
from flowtui.whatif.edits import Changes

# ClusterState cached properties computed from cluster objects only (never from policies).
CLUSTER_PROPERTIES = (
    "index", "endpoints", "pods_by_ref", "heps_by_name", "nodes", "externals", "owners",
    "_hep_for_interface", "_hep_wildcard",
)


class DerivedApplicable(MutableMapping[Endpoint, tuple[Policy, ...]]):
    """The edited state's endpoint -> applicable policies, derived from the base state's."""

    def __init__(self, base: ClusterState, edited: ClusterState, changes: Changes) -> None:
        self.base = base
        self.edited = edited
        self.changed = {p.key for p in changes.policies}
        self.data: dict[Endpoint, tuple[Policy, ...]] = {}
        self._new: list[Policy] | None = None

    def _changed_active(self) -> list[Policy]:
        if self._new is None:
            self._new = [p for p in self.edited.active_policies if p.key in self.changed]
        return self._new

    def get(self, ep: Endpoint, default: Any = None) -> Any:
        found = self.data.get(ep)
        if found is None:
            kept = tuple(p for p in self.base.applicable_policies(ep) if p.key not in self.changed)
            sels = self.edited.policy_selectors
            new = tuple(p for p in self._changed_active() if sels[p.key].matches(ep.labels))
            found = self.data[ep] = kept + new
        return found

    def __getitem__(self, ep: Endpoint) -> tuple[Policy, ...]:
        return self.data[ep]

    def __setitem__(self, ep: Endpoint, value: tuple[Policy, ...]) -> None:
        self.data[ep] = value

    def __delitem__(self, ep: Endpoint) -> None:
        del self.data[ep]

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


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


def _has_field(obj: object, name: str) -> bool:
    cls = obj if isinstance(obj, type) else type(obj)
    return name in getattr(cls, "__dataclass_fields__", {})


def paired_states(base: ResourceSet, edited: ResourceSet, changes: Changes) -> tuple[ClusterState, ClusterState]:
    """Cluster states for both sets, sharing cluster-derived caches when the cluster is equal."""
    base_state = ClusterState(base)
    if changes.cluster_changed:
        return base_state, ClusterState(edited)
    kwargs: dict[str, Any] = {}
    for name in ("_ipsets", "_named"):
        if _has_field(base_state, name):
            kwargs[name] = getattr(base_state, name)
    edited_state = ClusterState(edited, **kwargs)
    for name in CLUSTER_PROPERTIES:
        if name in type(base_state).__dict__:
            edited_state.__dict__[name] = getattr(base_state, name)
    if _has_field(edited_state, "_applicable") and isinstance(edited_state._applicable, dict):
        edited_state._applicable = DerivedApplicable(base_state, edited_state, changes)  # type: ignore[assignment]
    return base_state, edited_state


def paired_evaluators(base: ClusterState, edited: ClusterState, changes: Changes) -> tuple[Evaluator, Evaluator]:
    """Evaluators for both states, sharing compiled rules of unchanged policies."""
    if changes.cluster_changed or not _has_field(Evaluator, "_rules"):
        return Evaluator(base), Evaluator(edited)
    shared: dict[tuple[object, ...], Any] = {}
    changed = {p.key for p in changes.policies}
    return (Evaluator(base, _rules=SharedRules(shared, changed)),  # type: ignore[arg-type]
            Evaluator(edited, _rules=SharedRules(shared, changed)))  # type: ignore[arg-type]
