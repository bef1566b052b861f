"""Calico's selector rewriting: which endpoints a policy applies to, which addresses a rule names.

One home for §2.2 (policy "applies-to" selectors) and §2.3 (namespace scoping of rule entity
selectors). Both the evaluator and the nftables compiler build on these.
"""

from __future__ import annotations

from enforcer.model import EntityRule, Policy
from enforcer.selector import ALL, Selector, parse_selector

NAMESPACE_LABEL = "projectcalico.org/namespace"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"
NAME_LABEL = "projectcalico.org/name"
NS_PREFIX = "pcns."
SA_PREFIX = "pcsa."

HAS_NAMESPACE = parse_selector(f"has({NAMESPACE_LABEL})")
NOT_HAS_NAMESPACE = parse_selector(f"!has({NAMESPACE_LABEL})")
HAS_SERVICE_ACCOUNT = parse_selector(f"has({SERVICE_ACCOUNT_LABEL})")


def _quoted(value: str) -> str:
    return f'"{value}"' if '"' not in value else f"'{value}'"


def in_namespace(namespace: str) -> Selector:
    return parse_selector(f"{NAMESPACE_LABEL} == {_quoted(namespace)}")


def policy_selector(policy: Policy) -> Selector:
    """The effective selector of the endpoints `policy` applies to (§2.2)."""
    selector = policy.selector or ALL
    if policy.namespaced:
        assert policy.namespace is not None
        base = in_namespace(policy.namespace)
        selector = base if selector.is_all else selector.and_(base)
    elif policy.namespace_selector is not None:
        # Felix replaces all() in the combined string, so `namespaceSelector: all()` means
        # "any namespaced endpoint" and excludes host endpoints.
        selector = selector.and_(policy.namespace_selector.prefixed(NS_PREFIX)).replace_all(HAS_NAMESPACE)
    if policy.service_account_selector is not None:
        selector = selector.and_(policy.service_account_selector.prefixed(SA_PREFIX))
        if not policy.namespaced:
            selector = selector.replace_all(HAS_SERVICE_ACCOUNT)
    return selector


def entity_selector(entity: EntityRule, policy_namespace: str | None) -> Selector | None:
    """The positive selector of a rule's source or destination, namespace-scoped (§2.3).

    None means "no selector constraint" (any address matches). `notSelector` is not part of this:
    Calico passes it through raw.
    """
    sa_part: Selector | None = None
    if entity.service_accounts is not None:
        names = entity.service_accounts.names
        if names:
            values = ", ".join(_quoted(n) for n in sorted(set(names)))
            sa_part = parse_selector(f"{SERVICE_ACCOUNT_LABEL} in {{{values}}}")
        if entity.service_accounts.selector is not None:
            prefixed = entity.service_accounts.selector.prefixed(SA_PREFIX)
            sa_part = prefixed if sa_part is None else sa_part.and_(prefixed)

    positive = sa_part
    if entity.selector is not None:
        positive = entity.selector if positive is None else positive.and_(entity.selector)

    ns_part: Selector | None = None
    if entity.namespace_selector is not None:
        ns_part = (
            entity.namespace_selector.prefixed(NS_PREFIX)
            .replace_all(HAS_NAMESPACE)
            .replace_global(NOT_HAS_NAMESPACE)
        )
    elif policy_namespace is not None:
        ns_part = in_namespace(policy_namespace)

    if ns_part is not None and entity.uses_selectors:
        return ns_part if positive is None else ns_part.and_(positive)
    return positive
