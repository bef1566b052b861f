"""Per-endpoint decision maps: a workload endpoint chain as one lookup instead of a rule walk.

The walk layout (compiler.py) sends a workload's first packet through every selecting policy's
chain, rule by rule. Here the compiler computes the RESULT of that walk ahead of time and the
kernel looks it up:

    fw-d<hash>:   meta nfproto ipv4 ip daddr vmap @da4-<hash>      the peer's class: an interval map
                                                                    to a chain per class (jump)
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto [. th sport] . th dport vmap @dh4-<hash>
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto [. th sport] . th dport vmap @dp4-<hash>
                  meta nfproto ipv4 meta l4proto icmp meta mark & 0xffff . icmp type . icmp code vmap @di4-<hash>
                  meta nfproto ipv4 meta mark & 0xffff . meta l4proto vmap @dn4-<hash>
                  (the same for IPv6)
    dr4-<hash>-<class>:
                  meta mark set mark & 0xffff0000 | <class>        the class into the mark's low bits
    dx-<hash>:    the outcome: Log rules that fired on the way, then the attributed verdict

The maps are keyed on the class, not on the address, so the address ranges do not multiply the
port elements (peers of different classes interleave in address order); a chain with one class
writes 0 itself and has no address map. Every class of a chain shares its four maps: a fixed
number of sets per decision chain, because the kernel's cost of adding a set, and of every rule
and element naming one, grows with the sets already in the table (README "Decision maps").

The space of packets is split into elementary intervals: the peer address at every address test
the rules use (nets, notNets, the address sets of selectors, the members of named ports), each
port protocol's source and destination ports at every boundary its rules name (a TCP rule does
not split UDP), ICMP type and code, the other protocols. Addresses inside the same tests form a
class. The walk itself runs over regions of that space (regions.py): each rule, in the
evaluator's order (`Evaluator.stage_tiers`, its family-rendered rules), splits the undecided
region — cost rules × regions, not rules × cells. The region a rule matches is derived here from
the same resolved rule (nets, sets, named ports, ports, ICMP); tests/test_decision_regions.py
checks it cell by cell against the evaluator's `decide_stage`.

Each distinct outcome is one terminal chain, shared by the node: the verdict with the same rule
ids and NFLOG prefixes the walk logs (end of tier attributed to the last enabled selecting
policy, profiles, no-profile drop), so attribution does not depend on the layout.

What the maps cannot key on keeps the walk: HTTP and service matches, endpoints whose addresses
differ in the rules' tests, and any chain whose decision space (cells) exceeds the budget —
never a wrong verdict, never an unbounded map. Tests of the endpoint's own address and its
named ports are answered at compile time (the chain is shared only by endpoints that answer
alike), with a guard sending a forged own address to the walk.

Only enforced, enabled policies decide (the evaluator's walk); disabled ones change outcomes, so
a toggle rewrites map elements (and adds the terminal chains of outcomes new to the node).
Deciding a chain again after a toggle or an edit continues its last decide (`DecisionMemo`):
decision_walks.py walks again only what the change can reach, decision_render.py renders again
only the rows that walk painted; the maps are those a decide from scratch gives.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial

from enforcer.evaluate.evaluator import Evaluator
from enforcer.evaluate.path import Stage
from enforcer.model import IPAddress, Policy
from enforcer.nft.decision_render import CLASS_FIELD, Rendered, family_maps, render, runs, text_range
from enforcer.nft.decision_space import (
    ICMP_PROTOCOL,
    PORT_PROTOCOLS,
    SPACE,
    AddressTests,
    Family,
    Intervals,
    MembershipIndex,
    RuleList,
    Tests,
    address_intervals,
    address_tests,
    classes_at_least,
    icmp_boxes,
    icmp_intervals,
    local_named_ports,
    memberships,
    other_boxes,
    port_boxes,
    port_intervals,
    protocol_intervals,
    tests_own_named_port,
    unsupported,
)
from enforcer.nft.decision_walks import BoxesOf, Key, PolicyRules, Walks, axis_map, skeleton, walk_again, walk_all
from enforcer.nft.regions import Outcome

__all__ = ["AddressTests", "CLASS_FIELD", "WALK_CAUSES", "ChainLayout", "DecisionChain", "DecisionMemo",
           "MembershipIndex", "Outcome", "DEFAULT_BUDGET", "NODE_BUDGET", "PORT_PROTOCOLS", "RuleList", "Tests",
           "address_tests", "chain_tag", "decide", "local_named_ports", "memberships", "outcome_name",
           "tests_own_named_port"]

# Default cells per endpoint chain (see README "Decision maps" for the measurements behind it).
# The region walk makes compile cost grow with rules × regions; cells bound the rendering and
# the map (merged elements are fewer than cells).
DEFAULT_BUDGET = 65536
# Map elements per node over all its decision chains (CompileOptions.decision_node_budget): ten
# times what 1,000 policies selecting one shared chain need (11,336); a node whose pods each need
# a decision of their own gives maps to the first chains and the walk to the rest.
NODE_BUDGET = 131072
_HASH = 12


@dataclass(frozen=True)
class ChainLayout:
    """How one endpoint chain was laid out, for `apply --dry-run` and metrics."""

    chain: str
    layout: str  # "decision" or "walk"
    elements: int  # map elements (decision) or rules (walk)
    reason: str = ""  # why the walk was kept

    @property
    def cause(self) -> str:
        """Why the walk was kept, in a word (a metric's label): `off` (budget 0), `node_budget`
        (the node's maps went to costlier walks first), `budget` (the chain's decision space is
        over the per-chain budget), `unsupported` (what maps cannot key on: HTTP, services,
        own addresses that differ, too many peer classes); "" for decision maps."""
        if self.layout != "walk":
            return ""
        if "(budget 0)" in self.reason:
            return "off"
        if "the node's decision maps are full" in self.reason or "what is left of the node's" in self.reason:
            return "node_budget"
        if "cells > budget" in self.reason:
            return "budget"
        return "unsupported"


WALK_CAUSES = ("off", "node_budget", "budget", "unsupported")


@dataclass(frozen=True)
class DecisionChain:
    lines: tuple[str, ...]
    maps: dict[str, tuple[str, frozenset[str], bool, bool]]  # name → (type, elements, is a map, interval)
    elements: int
    chains: dict[str, tuple[str, ...]]  # the classes' chains (dr…), by name
    targets: dict[str, frozenset[str]] = field(default_factory=dict)  # map → the outcome chains it goes to
    memo: DecisionMemo | None = field(default=None, compare=False, repr=False)


@dataclass
class DecisionMemo:
    """What deciding a chain keeps to decide it again (decision_walks.py): the rules and the space
    they make, and each family's walks."""

    rules: RuleList
    own_tests: Tests
    tests: AddressTests
    families: dict[int, tuple[Family, list[int], list[int]]]
    walks: dict[int, Walks]
    known: dict[tuple[int, int], tuple[object, PolicyRules]]
    rendered: dict[int, Rendered] = field(default_factory=dict)

    @property
    def incremental(self) -> bool:
        """Whether the walks were made from an earlier decide's (not from scratch)."""
        return all(w.incremental for w in self.walks.values())


# ---- the decision --------------------------------------------------------------------------


def _text(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _address_runs(starts: list[int], interval_class: list[int], version: int) -> Iterator[tuple[str, int]]:
    """Adjacent address intervals of the same class, as nft ranges, with their class."""
    for a0, a1 in runs(interval_class):
        first = starts[a0]
        last = starts[a1 + 1] - 1 if a1 + 1 < len(starts) else SPACE[version]
        yield text_range(lambda v: _text(version, v), first, last), interval_class[a0]


def _excluded(version: int, icmp: tuple[Intervals, Intervals] | None) -> tuple[int, ...]:
    """Protocols with a map of their own (ports, ICMP when keyed): not in the other protocols' map."""
    return PORT_PROTOCOLS + ((ICMP_PROTOCOL[version],) if icmp else ())


def _cells_per_class(rules: RuleList, ports: dict[int, tuple[Intervals, Intervals]],
                     icmp: tuple[Intervals, Intervals] | None, version: int) -> int:
    """One peer class's cells in one family (`Family.cells` is this times the classes)."""
    n = sum(len(s) * len(d) for s, d in ports.values()) + len(protocol_intervals(rules, _excluded(version, icmp)))
    return n + (len(icmp[0]) * len(icmp[1]) if icmp is not None else 0)


def _family(ev: Evaluator, rules: RuleList, version: int, me: IPAddress, tests: AddressTests,
            ports: dict[int, tuple[Intervals, Intervals]], icmp: tuple[Intervals, Intervals] | None
            ) -> tuple[Family, list[int], list[int]]:
    starts, sigs = address_intervals(tests.ranges, version)
    classes = sorted(set(sigs), key=sorted)
    class_of = {sig: i for i, sig in enumerate(classes)}
    others = protocol_intervals(rules, _excluded(version, icmp))
    fam = Family(ev.state, version, me, tests, classes, ports, icmp, others)
    return fam, starts, [class_of[s] for s in sigs]


def decide(ev: Evaluator, stage: Stage, rules: RuleList, local: dict[int, IPAddress],
           budget: int, tag: str, target: Callable[[Outcome], str], walk_chain: str,
           positions: Mapping[Key, tuple[int, int]] | None = None,
           previous: DecisionMemo | None = None, own_tests: Tests | None = None) -> DecisionChain | str:
    """The decision maps of `stage`'s chain, or why it keeps the walk.

    `ev` is the compiler's evaluator (disabled policies, which it lays out behind closed gates, do
    not take part in the walk); `rules` are every rule that may decide (selecting
    policies and profiles); `local` is an address of the endpoint per IP version (any address of
    that version when it has none: the rules do not test it); `tag` names the maps; `target`
    gives the terminal chain of an outcome; `walk_chain` is the chain of the rule walk, where a
    packet whose own-side address the decision did not assume goes. `positions` (policy key →
    tier and position, disabled policies included; the state's by default) orders the walk;
    `previous` is an earlier decide of the same chain (same tag, local addresses and budget),
    whose walks this one continues where it can (decision_walks.py): the result is the same.
    `own_tests`: the rules' address tests on the endpoint's own side, when the caller has them."""
    if positions is None:
        positions = ev.state.policy_positions
    assert stage.endpoint is not None
    direction = stage.direction
    if previous is not None and _same_rules(previous.rules, rules):
        # A toggle: the same rules, so the same space (and the checks below passed for it).
        own_tests, tests, families = previous.own_tests, previous.tests, previous.families
        refine: dict[int, dict[str, tuple[list[int] | None, ...]] | None] | None = {4: None, 6: None}
    else:
        space = _space(ev, stage, rules, local, budget, own_tests)
        if isinstance(space, str):
            return space
        own_tests, tests, families = space
        refine = _refinement(previous, own_tests, tests, families) if previous is not None else None
    known = previous.known if previous is not None else {}
    if len(known) > 8 * len(rules) + 1024:
        known.clear()  # policies edited away
    walks: dict[int, Walks] = {}
    for version, (fam, _, _) in families.items():
        sk = skeleton(ev, stage, version, positions, known)
        spaces = _spaces(fam, direction)
        if previous is not None and refine is not None:
            walks[version] = walk_again(previous.walks[version], sk, spaces, refine[version])
        else:
            walks[version] = walk_all(sk, spaces, known)
    memo = DecisionMemo(rules, own_tests, tests, families, walks, known)

    ingress = direction == "ingress"
    gotos: dict[int, tuple[Outcome, str]] = {}  # by identity: rows hold canonical outcomes

    def goto(out: Outcome) -> str:
        found = gotos.get(id(out))
        if found is None or found[0] is not out:
            found = gotos[id(out)] = (out, f"goto {target(out)}")
        return found[1]

    targets: dict[str, frozenset[str]] = {}
    lines: list[str] = []
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, tuple[str, frozenset[str], bool, bool]] = {}
    for version, (fam, starts, interval_class) in families.items():
        l3, nfproto, addr_type = ("ip", "ipv4", "ipv4_addr") if version == 4 else ("ip6", "ipv6", "ipv6_addr")
        if own_tests:
            name_o = f"do{version}-{tag}"
            maps[name_o] = (addr_type, frozenset(_guard(own_tests, version, fam.me)), False, True)
            lines.append(f"meta nfproto {nfproto} {l3} {'daddr' if ingress else 'saddr'} != @{name_o} "
                         f"goto {walk_chain}")
        peer_field = f"{l3} {'saddr' if ingress else 'daddr'}"
        clear = f"meta mark set mark & {0xFFFFFFFF & ~CLASS_FIELD:#x}"
        if len(fam.classes) == 1:
            lines.append(f"meta nfproto {nfproto} {clear} | 0x0")
        else:
            # The peer's class (one interval lookup over every address) is written into the mark's
            # low bits by a one-rule chain per class; the chain's maps are keyed on it, so a chain
            # has a fixed number of maps whatever its classes (see family_maps: sets are what the
            # kernel pays for per table, quadratically).
            dispatch = {f"{addr} : jump dr{version}-{tag}-{c}"
                        for addr, c in _address_runs(starts, interval_class, version)}
            maps[f"da{version}-{tag}"] = (f"{addr_type} : verdict", frozenset(dispatch), True, True)
            lines.append(f"meta nfproto {nfproto} {peer_field} vmap @da{version}-{tag}")
            for c in sorted(set(interval_class)):
                chains[f"dr{version}-{tag}-{c}"] = (f"{clear} | {c:#x}",)
        before = previous.rendered.get(version) if previous is not None else None
        rendered = memo.rendered[version] = render(fam, walks[version], before, goto)
        lines += [f"meta nfproto {nfproto} {line}"
                  for line in family_maps(fam, rendered, f"{version}-{tag}", maps, targets)]
    return DecisionChain(tuple(lines), maps, sum(len(m[1]) for m in maps.values()), chains, targets, memo)


def _same_rules(a: RuleList, b: RuleList) -> bool:
    """The same rule objects in the same order (a toggle rebuilds the list, not its rules)."""
    return a is b or (len(a) == len(b) and all(x[0] is y[0] and x[1] == y[1] for x, y in zip(a, b, strict=True)))


def _space(ev: Evaluator, stage: Stage, rules: RuleList, local: dict[int, IPAddress], budget: int,
           own_tests: Tests | None = None
           ) -> tuple[Tests, AddressTests, dict[int, tuple[Family, list[int], list[int]]]] | str:
    """The decision space of `rules` (own-side tests, peer tests, each family's), or why the chain
    keeps the walk."""
    reason = unsupported(rules)
    if reason is not None:
        return reason
    assert stage.endpoint is not None
    direction = stage.direction
    icmp = icmp_intervals(rules)
    ports = port_intervals(ev.state, rules)
    # Every peer class has the same cells: with one class (the fewest), the space is already
    # over the budget, and the address tests (the costly part) need not be built.
    cells = {v: _cells_per_class(rules, ports, icmp, v) for v in (4, 6)}  # per family, at least
    least = sum(cells.values())
    if least > budget:
        return f"decision space of at least {least} cells > budget {budget}"
    own = stage.endpoint.ips
    if own_tests is None:
        own_tests = address_tests(ev.state, rules, direction, peer=False).ranges
    for version in (4, 6):
        same = tuple(ip for ip in own if ip.version == version)
        if len(same) > 1 and len(set(memberships(own_tests, same))) > 1:
            return f"the endpoint's IPv{version} addresses differ in the rules' tests"
    tests = address_tests(ev.state, rules, direction)
    # The peer classes cost every test times the intervals it covers to build: a chain whose
    # cells are over the budget (often what is left of the node's) even at a lower bound on its
    # classes is refused before they are built. The bound never exceeds the classes, so a chain
    # that fits is never refused here.
    merged = ev.state.caches.setdefault("decision.merged_ranges", {})
    for version in (4, 6):  # one family's bound may do (the other has a class at least)
        cells[version] *= classes_at_least(tests.merged(version, merged), version)
        least = sum(cells.values())
        if least > budget:
            return f"decision space of at least {least} cells > budget {budget}"
    families = {v: _family(ev, rules, v, local[v], tests, ports, icmp) for v in (4, 6)}
    total = sum(f.cells() for f, _, _ in families.values())
    if total > budget:
        return f"decision space {total} cells > budget {budget}"
    for version, (fam, _, _) in families.items():
        if len(fam.classes) > CLASS_FIELD + 1:
            return f"{len(fam.classes)} IPv{version} peer classes > {CLASS_FIELD + 1} (the mark's class field)"
    return own_tests, tests, families


def _refinement(previous: DecisionMemo, own_tests: Tests, tests: AddressTests,
                families: dict[int, tuple[Family, list[int], list[int]]]
                ) -> dict[int, dict[str, tuple[list[int] | None, ...]] | None] | None:
    """How the previous decide's space maps into this one, per family and space (None: it does
    not; the walk starts over): same address tests (classes) and own-side tests, ICMP keyed alike,
    and every other axis split at least where it was."""
    if previous.own_tests != own_tests or previous.tests.ranges != tests.ranges:
        return None
    out: dict[int, dict[str, tuple[list[int] | None, ...]] | None] = {}
    for version, (fam, _, _) in families.items():
        old = previous.families[version][0]
        if old.me != fam.me or (old.icmp is None) != (fam.icmp is None):
            return None
        try:
            maps: dict[str, tuple[list[int] | None, ...]] = {
                f"port{p}": (None, *(axis_map(o, n) for o, n in zip(old.ports[p], fam.ports[p], strict=True)))
                for p in PORT_PROTOCOLS}
            if fam.icmp is not None and old.icmp is not None:
                maps["icmp"] = (None, axis_map(old.icmp[0], fam.icmp[0]), axis_map(old.icmp[1], fam.icmp[1]))
            maps["other"] = (None, axis_map(old.others, fam.others))
        except ValueError:
            return None
        out[version] = {k: v for k, v in maps.items() if any(m is not None for m in v)} or None
    return out


def _spaces(fam: Family, direction: str) -> dict[str, tuple[BoxesOf, tuple[int, ...]]]:
    """The family's spaces: each port protocol's, ICMP's when keyed, the other protocols'; each
    with the region of a rule in it and its sizes (peer classes first)."""
    classes = len(fam.classes)
    spaces: dict[str, tuple[BoxesOf, tuple[int, ...]]] = {
        f"port{p}": (partial(port_boxes, fam, direction=direction, proto=p),
                     (classes, len(fam.ports[p][0]), len(fam.ports[p][1]))) for p in PORT_PROTOCOLS}
    if fam.icmp is not None:
        spaces["icmp"] = (partial(icmp_boxes, fam, direction=direction), (classes, len(fam.icmp[0]), len(fam.icmp[1])))
    spaces["other"] = (partial(other_boxes, fam, direction=direction), (classes, len(fam.others)))
    return spaces


def _guard(own_tests: Tests, version: int, me: IPAddress) -> set[str]:
    """The own addresses that answer the own-side tests as `me` does: any other (a forged
    source) takes the walk."""
    starts, sigs = address_intervals(own_tests, version)
    mine = memberships(own_tests, (me,))[0]
    inside = [sig == mine for sig in sigs]
    guard: set[str] = set()
    for r0, r1 in runs(inside):
        if inside[r0]:
            last = starts[r1 + 1] - 1 if r1 + 1 < len(starts) else SPACE[version]
            guard.add(text_range(lambda v: _text(version, v), starts[r0], last))
    return guard


def outcome_name(lines: list[str]) -> str:
    return "dx-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def chain_tag(stage: Stage, policies: tuple[Policy, ...], profiles: tuple[str, ...],
              local: tuple[object, ...]) -> str:
    """Stable across toggles and rule edits: the chain's maps change, not its name. `local`: what
    the rules see of the endpoint itself (its addresses in the rules' tests, its named ports):
    endpoints differing there need their own."""
    key = repr((stage.direction, tuple(p.key for p in policies), profiles, local))
    return hashlib.sha256(key.encode()).hexdigest()[:_HASH]
