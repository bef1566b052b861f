"""The policy sets a what-if compares: the current one, and the current one with edits applied.

The current set comes from the datastore (`enforcer.datastore.Datastore(path).resources()`) or
from files. Edits are resources loaded with the loader and merged over it (an object with the
same kind/namespace/name replaces the current one, anything else is added), plus deletions by
`KIND/NAME` or `KIND/NAMESPACE/NAME` (`gnp/deny-db`, `np/prod/allow-web`, `knp/prod/x`).

`Changes` says what differs between the two sets in the terms the engine needs: the policies
whose verdicts may differ, and whether anything other than policies (and tiers) changed, in which
case every flow has to be re-evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from enforcer.model import NO_ORIGIN, SHORT_KIND, Policy, ResourceSet, Rule, Tier
from enforcer.resolve.selectors import policy_selector

if TYPE_CHECKING:
    from enforcer.datastore import DesiredState
from enforcer.selector import Selector


class EditError(ValueError):
    """An edit that cannot be applied (e.g. deleting something that does not exist)."""


def _identity(obj: Any) -> tuple[object, ...]:
    """The (kind, namespace, name) identity the loader's duplicate check and the datastore use."""
    key = getattr(obj, "key", None)
    if isinstance(key, tuple):
        return (type(obj).__name__, *key)
    namespace = getattr(obj, "namespace", None)
    return (type(obj).__name__, namespace, obj.name)


_TUPLE_FIELDS = tuple(f.name for f in fields(ResourceSet) if f.name != "felix")


def merge(current: ResourceSet, edits: ResourceSet) -> ResourceSet:
    """`current` with every object of `edits` replacing its namesake or added after the rest."""
    updates: dict[str, Any] = {}
    for name in _TUPLE_FIELDS:
        new = getattr(edits, name)
        if not new:
            continue
        replacing = {_identity(o): o for o in new}
        kept = []
        for obj in getattr(current, name):
            ident = _identity(obj)
            kept.append(replacing.pop(ident, obj))
        kept.extend(o for o in new if _identity(o) in replacing)
        updates[name] = tuple(kept)
    if edits.felix.origin != NO_ORIGIN:  # a FelixConfiguration was in the edits (not the default)
        updates["felix"] = edits.felix
    return replace(current, **updates) if updates else current


@dataclass(frozen=True)
class Deletion:
    kind: str  # model kind, e.g. GlobalNetworkPolicy
    namespace: str | None
    name: str

    def __str__(self) -> str:
        kind = SHORT_KIND.get(self.kind, self.kind.lower())
        return f"{kind}/{self.namespace}/{self.name}" if self.namespace else f"{kind}/{self.name}"


_MODEL_FIELD = {
    "GlobalNetworkPolicy": "policies", "NetworkPolicy": "policies", "KubernetesNetworkPolicy": "policies",
    "StagedGlobalNetworkPolicy": "policies", "StagedNetworkPolicy": "policies",
    "StagedKubernetesNetworkPolicy": "policies", "ClusterNetworkPolicy": "policies", "Tier": "tiers",
    "Profile": "profiles",
    "Namespace": "namespaces", "ServiceAccount": "service_accounts", "Pod": "pods", "Node": "nodes",
    "HostEndpoint": "host_endpoints", "GlobalNetworkSet": "network_sets", "NetworkSet": "network_sets",
    "ExternalHost": "external_hosts",
}


def parse_deletion(text: str, resolve: Callable[[str], str] | None = None) -> Deletion:
    """`KIND/NAME` or `KIND/NAMESPACE/NAME`; KIND is any name of a kind (`gnp`, `np`, `knp`...)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise EditError(f"{text!r}: expected KIND/NAME or KIND/NAMESPACE/NAME (e.g. gnp/deny-db, np/prod/web)")
    kind = (resolve or _resolve_kind)(parts[0])
    if kind not in _MODEL_FIELD:
        raise EditError(f"{text!r}: cannot delete a {kind} in a what-if")
    return Deletion(kind, parts[1] if len(parts) == 3 else None, parts[-1])


def _resolve_kind(text: str) -> str:
    from enforcer.datastore import UnknownKind, resolve_kind

    try:
        return resolve_kind(text).model_kind
    except UnknownKind as exc:
        raise EditError(str(exc)) from exc


def _kind_of(obj: Any) -> str:
    kind = getattr(obj, "kind", None)
    return kind if isinstance(kind, str) else type(obj).__name__


def delete(current: ResourceSet, deletions: Sequence[Deletion]) -> ResourceSet:
    """`current` without the deleted objects; EditError if one does not exist."""
    res = current
    for d in deletions:
        name = _MODEL_FIELD[d.kind]
        objs = getattr(res, name)
        kept = tuple(
            o for o in objs
            if not (_kind_of(o) == d.kind and o.name == d.name
                    and (d.namespace is None or getattr(o, "namespace", None) == d.namespace))
        )
        removed = len(objs) - len(kept)
        if removed == 0:
            raise EditError(f"{d}: not found in the current policy set")
        if removed > 1:
            raise EditError(f"{d}: ambiguous ({removed} objects in different namespaces): give KIND/NAMESPACE/NAME")
        changes: dict[str, Any] = {name: kept}
        res = replace(res, **changes)
    return res


def apply_edits(current: ResourceSet, edits: ResourceSet | None, deletions: Sequence[Deletion] = ()) -> ResourceSet:
    res = delete(current, deletions)
    return merge(res, edits) if edits is not None else res


# --------------------------------------------------------------------------------------------
# What changed


def _plain_rule(rule: Rule) -> Rule:
    return replace(rule, origin=NO_ORIGIN)


def same_policy(a: Policy, b: Policy) -> bool:
    """Equal up to where they were written and their revision."""
    def plain(p: Policy) -> Policy:
        return replace(p, origin=NO_ORIGIN, revision=0, ingress=tuple(map(_plain_rule, p.ingress)),
                       egress=tuple(map(_plain_rule, p.egress)))

    return a is b or plain(a) == plain(b)


def _plain_tier(t: Tier) -> Tier:
    return replace(t, origin=NO_ORIGIN)


@dataclass(frozen=True)
class Changes:
    """What differs between a base and an edited policy set."""

    policies: tuple[Policy, ...]  # every version (base and edited) of a policy that differs
    cluster_changed: bool  # anything but policies and tiers differs: re-evaluate everything

    @property
    def none(self) -> bool:
        return not self.policies and not self.cluster_changed

    def selectors(self) -> tuple[Selector, ...]:
        """The applies-to selectors of every changed policy version (an endpoint none of them
        selects sees the same policies in both sets)."""
        return tuple(dict.fromkeys(policy_selector(p) for p in self.policies))


def diff(base: ResourceSet, edited: ResourceSet) -> Changes:
    old = {p.key: p for p in base.policies}
    new = {p.key: p for p in edited.policies}
    changed: list[Policy] = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if a is not None and b is not None and same_policy(a, b):
            continue
        changed += [p for p in (a, b) if p is not None]
    old_tiers = {t.name: _plain_tier(t) for t in base.tiers}
    new_tiers = {t.name: _plain_tier(t) for t in edited.tiers}
    tiers = {n for n in old_tiers.keys() | new_tiers.keys() if old_tiers.get(n) != new_tiers.get(n)}
    if tiers:  # a tier's order or default changes what every policy in it does
        changed += [p for p in (*base.policies, *edited.policies) if p.tier in tiers]
    cluster_changed = any(
        getattr(base, name) != getattr(edited, name) for name in _TUPLE_FIELDS if name not in ("policies", "tiers")
    ) or base.felix != edited.felix
    return Changes(tuple(dict.fromkeys(changed)), cluster_changed)


def describe_changes(base: ResourceSet, edited: ResourceSet) -> list[str]:
    """`added gnp/x`, `changed np/prod/y`, `deleted knp/prod/z` for policies and tiers."""
    out = []
    old = {p.key: p for p in base.policies}
    new = {p.key: p for p in edited.policies}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None and b is not None:
            out.append(f"added {b.short_id}")
        elif b is None and a is not None:
            out.append(f"deleted {a.short_id}")
        elif a is not None and b is not None and not same_policy(a, b):
            out.append(f"changed {b.short_id}")
    old_t = {t.name: _plain_tier(t) for t in base.tiers}
    new_t = {t.name: _plain_tier(t) for t in edited.tiers}
    for name in sorted(old_t.keys() | new_t.keys()):
        if old_t.get(name) != new_t.get(name):
            what = "added" if name not in old_t else "deleted" if name not in new_t else "changed"
            out.append(f"{what} tier/{name}")
    return out


def current_resources(paths: Sequence[str] | None, store: DesiredState | str | None,
                      namespace: str | None = None) -> ResourceSet:
    """The current set: `paths` if given (loaded and validated, `namespace` as kubectl's `-n`),
    else the datastore `store` (or the directory datastore at that path).

    Raises `enforcer.loader.LoadError` for invalid files and EditError when there is no current set.
    """
    if paths:
        from enforcer.loader import load_paths

        return load_paths(list(paths), namespace)
    from enforcer.datastore import Datastore, DatastoreError

    if store is None or isinstance(store, str):
        store = Datastore(store)
    try:
        if not store.objects():
            raise EditError(
                f"no current policy set: the datastore {getattr(store, 'url', store.path)} is empty "
                "(use --current FILES, --state-dir DIR, --datastore URL or $FLOWTUI_HOME)"
            )
        return store.resources()
    except DatastoreError as exc:
        raise EditError(str(exc)) from exc
