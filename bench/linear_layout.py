"""The baseline of bench_dataplane.py: a node's workload policy in an iptables-era layout.

The same policies as `enforcer.nft.compiler`, with the same rule matches (`rule_matches`), laid
out the way iptables-era dataplanes render them (one iptables and one ip6tables table):

    forward (hook)   conntrack; then, per IP family, `iifname "cali*" jump egress4`,
                     `oifname "cali*" jump ingress4`, ... (no verdict-map dispatch)
    ingress4         one linear chain per direction and family, read top to bottom by every
                     packet: per tier, per policy in order, one rule matching the endpoints the
                     policy selects by an inline list of interface names and jumping to the
                     policy's chain; then the tier's end-of-tier drop for the endpoints it applies
                     to; then profiles per endpoint; then a drop for every local endpoint
    pi4-<policy>     the policy's rules for that family, every address list written inline
                     (anonymous sets) instead of referring to named sets

Verdicts as iptables-era Calico renders them: an ingress Allow accepts at once; an egress Allow
marks the packet and returns (the packet still has to pass the destination's ingress), and the
egress chain returns after a policy that accepted; Pass marks and returns, and the rest of the
tier is skipped; Deny drops; Log logs. Every rule counts, as iptables rules always do.

Scope: workload endpoints of one node on the forward path (what the packet-rate benchmark sends
through); host endpoints, untracked/preDNAT/applyOnForward policy and the to-host path are left
out. Staged policies are not enforced, as in the compiler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from enforcer.evaluate import Evaluator
from enforcer.evaluate.path import Stage
from enforcer.lab.names import cali_name
from enforcer.model import Direction, Policy, Profile, Rule
from enforcer.nft.ir import Chain, NftSet, Table
from enforcer.nft.match import SetBook, rule_matches
from enforcer.resolve.rules import rule_for_family
from enforcer.resolve.state import ClusterState

ACCEPT = 0x10000
PASS = 0x20000
CLEAR = "meta mark set mark & 0xfffcffff"
CLEAR_PASS = "meta mark set mark & 0xfffdffff"
LOG_GROUP = 2
FAMILIES = {4: "ipv4", 6: "ipv6"}
_SETREF = re.compile(r"(?P<lhs>ip6? [sd]addr(?: \. meta l4proto \. th [sd]port)?|th [sd]port) "
                     r"(?P<neg>!= )?@(?P<name>[\w-]+)")
_KIND = {"GlobalNetworkPolicy": "gnp", "NetworkPolicy": "np", "KubernetesNetworkPolicy": "knp"}


class _Never(Exception):
    """The match refers to an empty set: it can never match."""


def inline_sets(match: str, sets: Mapping[str, NftSet]) -> str | None:
    """`match` with every `@set` replaced by the set's elements written inline (an anonymous
    set); None if a positive match on an empty set makes it impossible."""

    def sub(m: re.Match[str]) -> str:
        elements = sorted(sets[m["name"]].elements)
        if not elements:
            if m["neg"]:
                return ""  # not in an empty set: always true
            raise _Never
        return f"{m['lhs']} {m['neg'] or ''}{{ {', '.join(elements)} }}"

    try:
        return " ".join(_SETREF.sub(sub, match).split())
    except _Never:
        return None


def _anon(items: Iterable[str]) -> str:
    quoted = [f'"{i}"' for i in items]
    return quoted[0] if len(quoted) == 1 else "{ " + ", ".join(quoted) + " }"


def _policy_id(p: Policy) -> str:
    kind = _KIND.get(p.kind, p.kind.lower())
    return f"{kind}-{p.namespace}.{p.name}" if p.namespace else f"{kind}-{p.name}"


class _Linear:
    def __init__(self, state: ClusterState, node: str, evaluator: Evaluator) -> None:
        self.state = state
        self.node = node
        self.ev = evaluator
        self.book = SetBook(state)
        self.chains: dict[str, Chain] = {}
        self.local = sorted((ep for ep in state.endpoints if ep.kind == "wep" and ep.node == node),
                            key=lambda ep: ep.ref)

    def _action(self, rule: Rule, direction: Direction, *, profile: bool) -> str:
        if rule.action == "Allow":
            return "counter accept" if direction == "ingress" else f"counter meta mark set mark | {ACCEPT:#x} return"
        if rule.action == "Deny":
            return "counter drop"
        if rule.action == "Pass":
            return "counter return" if profile else f"counter meta mark set mark | {PASS:#x} return"
        return f"counter log group {LOG_GROUP}"

    def _rules_chain(self, name: str, rules: tuple[Rule, ...], namespace: str | None, direction: Direction,
                     version: int, *, profile: bool) -> str | None:
        if name in self.chains:
            return name
        prefix = f"meta nfproto {FAMILIES[version]}"
        lines: list[str] = []
        for rule in rules:
            fam_rule = rule_for_family(rule, version)
            if fam_rule is None:
                continue
            action = self._action(rule, direction, profile=profile)
            for match in rule_matches(self.book, fam_rule, namespace, version):
                inline = inline_sets(match.removeprefix(prefix), self.book.sets)
                if inline is not None:
                    lines.append(f"{inline} {action}".strip())
        if not lines:
            return None
        self.chains[name] = Chain(name, tuple(lines))
        return name

    def _policy_chain(self, p: Policy, direction: Direction, version: int) -> str | None:
        name = f"{'pi' if direction == 'ingress' else 'po'}{version}-{_policy_id(p)}"
        return self._rules_chain(name, p.rules(direction), p.namespace, direction, version, profile=False)

    def _profile_chain(self, prof: Profile, direction: Direction, version: int) -> str | None:
        name = f"{'pri' if direction == 'ingress' else 'pro'}{version}-{prof.name}"
        return self._rules_chain(name, prof.rules(direction), None, direction, version, profile=True)

    def direction_chain(self, direction: Direction, version: int) -> str:
        field = "oifname" if direction == "ingress" else "iifname"
        after_accept = [f"meta mark & {ACCEPT:#x} != 0 return"] if direction == "egress" else []
        # Which endpoints each policy applies to, and which endpoints each tier ends with a drop for.
        selected: dict[tuple[str, tuple[str, str, str]], list[str]] = {}
        ending: dict[str, list[str]] = {}
        for ep in self.local:
            assert ep.namespace is not None
            iface = cali_name(ep.namespace, ep.name)
            for st in self.ev.stage_tiers(Stage("workload", direction, ep, self.node)):
                if not st.enforced:
                    continue
                for p in st.enforced:
                    selected.setdefault((st.tier.name, p.key), []).append(iface)
                if st.tier.tier.default_action != "Pass":
                    ending.setdefault(st.tier.name, []).append(iface)
        lines: list[str] = []
        for ot in self.state.tiers:
            policies = [p for p in ot.policies if (ot.name, p.key) in selected]
            if not policies:
                continue
            lines.append(CLEAR_PASS)
            for p in policies:
                chain = self._policy_chain(p, direction, version)
                if chain is not None:
                    ifaces = selected[(ot.name, p.key)]
                    lines.append(f"{field} {_anon(ifaces)} meta mark & {PASS:#x} == 0 jump {chain}")
                    lines += after_accept
            if ot.name in ending:
                lines.append(f"{field} {_anon(ending[ot.name])} meta mark & {PASS:#x} == 0 counter drop")
        for ep in self.local:
            assert ep.namespace is not None
            iface = cali_name(ep.namespace, ep.name)
            for prof_name in ep.profiles:
                prof = self.state.profiles.get(prof_name)
                chain = None if prof is None else self._profile_chain(prof, direction, version)
                if chain is not None:
                    lines.append(f'{field} "{iface}" jump {chain}')
                    lines += after_accept
        if self.local:
            lines.append(f"{field} {_anon(cali_name(ep.namespace or '', ep.name) for ep in self.local)} counter drop")
        name = f"{direction}{version}"
        self.chains[name] = Chain(name, tuple(lines))
        return name

    def table(self, name: str) -> Table:
        forward = ["ct state established,related accept", "ct state invalid drop", CLEAR]
        directions: tuple[tuple[Direction, str], ...] = (("egress", "iifname"), ("ingress", "oifname"))
        for direction, field in directions:
            for version in (4, 6):
                chain = self.direction_chain(direction, version)
                forward.append(f'meta nfproto {FAMILIES[version]} {field} "cali*" jump {chain}')
        self.chains["forward"] = Chain("forward", tuple(forward),
                                       "type filter hook forward priority filter; policy accept;")
        return Table("inet", name, dict(sorted(self.chains.items())), {})


def linear_table(state: ClusterState, node: str, *, name: str = "linear",
                 evaluator: Evaluator | None = None) -> Table:
    """`node`'s workload policy as one nftables table in the iptables-era layout (no named sets)."""
    return _Linear(state, node, evaluator or Evaluator(state)).table(name)


def rule_count(table: Table) -> int:
    return sum(len(c.rules) for c in table.chains.values())
