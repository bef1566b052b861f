"""Compile a node's policy into one nftables table (`inet flowtui`), the dataplane twin of the
evaluator: it walks the same stages (`evaluate.path`) and the same per-stage tiers
(`Evaluator.stage_tiers`), so the kernel and the evaluator agree by construction, and the
differential test checks that they do.

Layout (hooks in the order a packet meets them; §3.3 of the Calico reference):

    raw-prerouting / raw-output    untracked (doNotTrack) policy of eth0's named HEP, before
                                   conntrack, on every packet (replies too); only with such a HEP
    mangle-prerouting              established → accept; accepted-by-raw; preDNAT policy (eth0's
                                   HEP; the `*` HEP on every other interface: pods, the tunnel);
                                   only with a host endpoint
    filter-input                   conntrack; workload→host; accepted-by-raw/preDNAT; host endpoint
    filter-forward                 conntrack; HEP forward in (eth0's, else `*`); workload egress
                                   (vmap); workload ingress (vmap); HEP forward out (likewise)
    filter-output                  conntrack; to local workloads unpoliced; host endpoint out

Workload endpoint chains (`fw-<hash>`/`tw-<hash>`, shared by workloads whose policies and
profiles are the same, reached through verdict maps on the interface name) clear the accept/pass
marks and write the endpoint's selection number, then jump to the tier chains (`fw-tier-…`/
`tw-tier-…`, shared by the node: shared_walk.py) where a policy selects it; a tier chain jumps to
each policy's chain (`pi-…`/`po-…`) the selection includes, returns when a policy accepted, and ends
the tier with an attributed drop unless it passed; then profiles; then an attributed drop. Host
endpoint chains list their tiers' policies themselves (`_tiers`). Every rule counts; every verdict
point logs to NFLOG with prefix `ft:<A|D|P|L><id>` resolved by the rule table. Denies log at a
bounded rate (the counter before the limit stays exact).

Policy gates make the live toggle one set element. Every enforced policy has a gate number
(`IdAllocator.gate_for`, stable for its name); disabled policies are laid out like the others,
with their gate in the set `closed`. The jump to a policy chain looks up `pass bit | gate` in that
set (one lookup skips the policy after a Pass, whose variants are all in it, and when disabled);
the same rule writes the gate into the mark's low 16 bits (cleared at each tier's start) before
jumping; the tier's end looks that field up in `eot-ingress`/`eot-egress`, whose
elements go to the attributed drop of each policy (`ei-…`/`eo-…`). So the end-of-tier drop names
the last enabled policy that selected the endpoint, and a tier whose every selecting policy is
disabled vanishes (no element for 0) — Calico's semantics with the policy absent, and a toggle
changes no rule (kernel commit independent of the table's size).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from enforcer.evaluate.evaluator import ICMPV6_INFRA_TYPES, Evaluator, Hit, StageTier
from enforcer.evaluate.path import Family, Stage
from enforcer.lab.names import cali_name
from enforcer.model import (
    FAILSAFE_PROTOCOL_NAMES,
    SHORT_KIND,
    WIREGUARD_PORTS,
    Direction,
    FailsafePort,
    IPAddress,
    Policy,
    Profile,
    Rule,
)
from enforcer.nft import decision, reach, shared_walk
from enforcer.nft.decision import ChainLayout
from enforcer.nft.ir import Chain, NftSet, Table
from enforcer.nft.match import SetBook, rule_matches
from enforcer.resolve.endpoints import Endpoint
from enforcer.resolve.rules import rule_for_family
from enforcer.resolve.state import ClusterState
from enforcer.ruleids import CLOSED_SET, IdAllocator, RuleRef, RuleTable, encode_prefix

ACCEPT = 0x10000  # a policy accepted (Calico's accept bit)
PASS = 0x20000  # a policy passed to the next tier
PREACCEPT = 0x40000  # accepted by untracked or preDNAT policy: filter skips host endpoint policy
GATE = 0xFFFF  # low 16 bits: the gate of the last enabled policy chain entered in this tier
CLEAR = "meta mark set mark & 0xfffcffff"
TIER_START = f"meta mark set mark & {0xFFFFFFFF & ~PASS & ~GATE:#x}"  # pass bit and gate field cleared
CLOSED = CLOSED_SET  # gate values that must not run: see closed_gates()
PROFILE_TIER = "__PROFILE__"
UPLINK = "eth0"
INFRA_ICMPV6 = "icmpv6 type { " + ", ".join(map(str, ICMPV6_INFRA_TYPES)) + " } accept"


# Bumped whenever the compiled layout changes: it is part of the options, so a reconciler in a
# new flowtui version does not take tables recorded by an older one for its own (toggles are
# served from the recorded compile). tests/test_compiler.py checks the golden files against it.
LAYOUT_VERSION = 10
# Entries of each cross-compile cache of decision work (state caches) before it starts over: a
# long-running reconciler's edits leave entries of policy sets that no longer exist behind.
KEPT_MAX = 50_000


@dataclass(frozen=True)
class CompileOptions:
    layout_version: int = LAYOUT_VERSION
    table: str = "flowtui"
    verdict_group: int = 1  # NFLOG group of verdict attributions
    log_group: int = 2  # NFLOG group of `Log` actions
    snaplen: int = 128
    deny_log_rate: int = 1000  # per second, per rule; 0 = log every denied packet
    deny_log_burst: int = 1000
    # Cells per workload endpoint chain for decision maps (decision.py); 0 keeps the walk.
    decision_budget: int = decision.DEFAULT_BUDGET
    # Map elements per node, all decision chains together: pods that share no decision (each
    # selected by its own policies) would otherwise each add a map of up to `decision_budget`.
    # Chains decided once it is spent keep the walk.
    decision_node_budget: int = decision.NODE_BUDGET


DECISION_BUDGET_ENV = "FLOWTUI_DECISION_BUDGET"


def decision_budget_setting(environ: Mapping[str, str] | None = None) -> int | None:
    """FLOWTUI_DECISION_BUDGET: cells per workload chain for decision maps (0: the rule walk),
    None when unset; ValueError (naming the variable) when it is not a whole number."""
    budget = (os.environ if environ is None else environ).get(DECISION_BUDGET_ENV)
    if budget is None:
        return None
    if not budget.strip().isdigit():
        raise ValueError(f"{DECISION_BUDGET_ENV}={budget!r}: expected a whole number of cells "
                         "(0 keeps the rule walk)")
    return int(budget)


def default_options(environ: Mapping[str, str] | None = None) -> CompileOptions:
    """The options every front end compiles with (CLI, dashboard, demo, agent): the core's
    defaults, with FLOWTUI_DECISION_BUDGET applied. One place, so the setting applies everywhere."""
    budget = decision_budget_setting(environ)
    return CompileOptions() if budget is None else CompileOptions(decision_budget=budget)


@dataclass(frozen=True)
class CompiledNode:
    node: str
    table: Table
    rules: RuleTable
    gates: Mapping[tuple[str, str, str], int] = field(default_factory=dict)  # policy key → gate, laid out here
    layouts: tuple[ChainLayout, ...] = ()  # how each workload endpoint chain was laid out
    # Decision maps hold outcomes of enabled policies: a toggle recompiles (policy chains come
    # from the cache) and changes their elements. None: only gates depend on toggles.
    redecide: Callable[[Collection[tuple[str, str, str]]], CompiledNode] | None = field(
        default=None, compare=False, repr=False)

    def with_disabled(self, disabled: Collection[tuple[str, str, str]]) -> CompiledNode:
        """This node with exactly the policies `disabled` (keys) switched off: what compiling the
        same state with those toggles gives (without decision maps, only the `closed` set differs)."""
        if self.redecide is not None:
            return self.redecide(disabled)
        sets = dict(self.table.sets)
        sets[CLOSED] = replace(sets[CLOSED], elements=closed_gates(self.gates, disabled))
        return replace(self, table=replace(self.table, sets=sets))


def closed_gates(gates: Mapping[tuple[str, str, str], int], disabled: Collection[tuple[str, str, str]]
                 ) -> frozenset[str]:
    """The `closed` set: the jump to a policy chain looks up `pass bit | gate`, so one lookup
    skips the policy both when an earlier policy of the tier passed (every gate with the pass bit:
    fixed) and when the policy is disabled (its gate alone: the toggle)."""
    return frozenset([f"{gate | PASS:#x}" for gate in gates.values()]
                     + [f"{gate:#x}" for key, gate in gates.items() if key in disabled])


def compile_node(
    state: ClusterState,
    node: str,
    options: CompileOptions | None = None,
    ids: IdAllocator | None = None,
    evaluator: Evaluator | None = None,
) -> CompiledNode:
    """The whole table for `node`, with the identifiers its rules log."""
    state = state.for_dataplane()
    if evaluator is None or evaluator.state is not state:
        evaluator = Evaluator(state)
    options = options or CompileOptions()
    ids = ids or IdAllocator()
    nc = _NodeCompiler(state, node, options, ids, evaluator)
    compiled = nc.compile()
    if not nc.decided:
        return compiled
    targets = {name: nc.decision_targets.get(name, frozenset()) for name in nc.decision_maps}

    def redecide(disabled: Collection[tuple[str, str, str]]) -> CompiledNode:
        return _redecide(compiled, nc, targets, disabled)

    return replace(compiled, redecide=redecide)


class LayoutChanged(Exception):
    """A toggle cannot be served from the last compile: a decision chain decided again no longer
    fits the node's element budget and keeps the walk (the caller compiles the node whole)."""


@dataclass(frozen=True)
class _Decided:
    """How a decision chain was made, to make it again after a toggle: only chains whose
    selecting policies include a toggled one are decided again."""

    prefix: str
    stage: Stage
    walk: str
    policies: frozenset[tuple[str, str, str]]
    maps: tuple[str, ...]
    chains: tuple[str, ...]  # its peer classes' chains (dr-...)


@dataclass(frozen=True)
class _KeptDecision:
    policies: tuple[Policy, ...]
    inputs: tuple[object, ...]  # tiers, endpoint, options, id allocator
    built: decision.DecisionChain | str
    chains: tuple[Chain, ...]  # the outcome chains its maps go to
    refs: tuple[RuleRef, ...]  # the rule refs those chains log


def _same(a: tuple[Policy, ...], b: tuple[Policy, ...]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


def _same_rules(a: tuple[Policy, ...], b: tuple[Policy, ...], direction: Direction) -> bool:
    """The same policies with the same rule objects (one may have been toggled)."""
    return len(a) == len(b) and all(x.key == y.key and x.rules(direction) is y.rules(direction)
                                    for x, y in zip(a, b, strict=True))


def _goto_targets(nset: NftSet) -> frozenset[str]:
    return frozenset(e.rsplit(" goto ", 1)[1] for e in nset.elements if " goto " in e)


def _redecide(base: CompiledNode, nc: _NodeCompiler, targets: Mapping[str, frozenset[str]],
              disabled: Collection[tuple[str, str, str]]) -> CompiledNode:
    """`base` (compiled by `nc`) with exactly `disabled` switched off: the `closed` set, and the
    decision chains of the endpoints that a toggled policy selects decided again (their maps'
    elements; outcome chains new to the node added, unused ones removed). What a whole compile
    of the toggled state gives (tests/test_decision_toggles.py), for a fraction of its cost."""
    state = nc.state
    disabled = frozenset(disabled)
    changed = {p.key for p in state.resources.policies if p.disabled != (p.key in disabled)}
    sets = dict(base.table.sets)
    sets[CLOSED] = replace(sets[CLOSED], elements=closed_gates(base.gates, disabled))
    affected = {name: d for name, d in nc.decided.items() if d.policies & changed}
    if not affected:
        return replace(base, table=replace(base.table, sets=sets))
    pols = tuple(p if p.key not in changed else replace(p, disabled=p.key in disabled)
                 for p in state.resources.policies)
    if not state.include_disabled:  # the compiler's view: disabled policies laid out (gates closed)
        state = ClusterState(state.resources, _ipsets=state._ipsets, _named=state._named, include_disabled=True,
                             caches=state.caches)
    toggled = state.derive(replace(state.resources, policies=pols))
    layouts_of = {c.chain: c for c in base.layouts}
    again = _NodeCompiler(toggled, nc.node, nc.options, nc.ids, Evaluator(toggled))
    # The node's element budget as the whole compile left it, less the chains decided again.
    again._elements_used = nc._elements_used - sum(layouts_of[n].elements for n in affected if n in layouts_of)
    used = dict(targets)
    layouts = {c.chain: c for c in base.layouts}
    for name, d in affected.items():
        for m in d.maps:
            sets.pop(m, None)
            used.pop(m, None)
        made = again._decision_chain(d.prefix, d.stage, d.walk)
        if made != name:  # over the node's element budget now: the layout changes, compile whole
            raise LayoutChanged(f"decision chain {name} became {made or 'the walk'} after a toggle "
                                f"({again._walk_reason})")
        layouts[name] = again.layouts[name]
    sets.update(again.decision_maps)
    used.update({m: again.decision_targets.get(m, frozenset()) for m in again.decision_maps})
    reached = frozenset().union(*used.values())
    stale = frozenset().union(*(d.chains for d in affected.values()))  # made again below, if still used
    chains = {n: c for n, c in base.table.chains.items()
              if n not in stale and (not n.startswith("dx-") or n in reached)}
    chains.update(again.chains)
    refs = {r.id: r for r in base.rules}
    refs.update(again.refs)
    table = replace(base.table, chains=dict(sorted(chains.items())), sets=dict(sorted(sets.items())))
    return replace(base, table=table, rules=RuleTable(refs.values()),
                   layouts=tuple(v for _, v in sorted(layouts.items())))


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


NFT_NAME_MAX = 255  # NFT_NAME_MAXLEN - 1: the kernel refuses longer chain and set names (ERANGE)
_NAME_HASH = 16  # hex digits of sha256 that stand for the cut part


def bounded_name(name: str) -> str:
    """`name` when the kernel takes it; else its first bytes, `-` and a hash of the whole name.

    Chain names are built from object names: a 63-character namespace and a 253-character policy
    name (both valid in Kubernetes) give `pi-np-<ns>.<name>`, 322 bytes. Cutting and hashing keeps
    every valid object compilable, two long names apart, and short names as they always were."""
    raw = name.encode()
    if len(raw) <= NFT_NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_NAME_HASH]
    keep = raw[: NFT_NAME_MAX - _NAME_HASH - 1].decode(errors="ignore")
    return f"{keep}-{digest}"


def _policy_chain_id(p: Policy) -> str:
    short = SHORT_KIND[p.kind]
    return f"{short}-{p.namespace}.{p.name}" if p.namespace else f"{short}-{p.name}"


@dataclass(frozen=True)
class _RenderedChain:
    """A policy chain as rendered, with what reusing it needs (kept in the state's caches)."""

    policy: Policy
    options: CompileOptions
    ids: IdAllocator
    chain: Chain
    refs: tuple[RuleRef, ...]
    sets: tuple[NftSet, ...]


@dataclass
class _NodeCompiler:
    state: ClusterState
    node: str
    options: CompileOptions
    ids: IdAllocator
    ev: Evaluator
    chains: dict[str, Chain] = field(default_factory=dict)
    refs: dict[int, RuleRef] = field(default_factory=dict)
    gates: dict[tuple[str, str, str], int] = field(default_factory=dict)
    eot: dict[str, set[str]] = field(default_factory=lambda: {"ingress": set(), "egress": set()})
    workload_chains: dict[tuple[object, ...], str] = field(default_factory=dict)  # key → the chain laid out
    # Workload chains registered (their walk rendered), by key: (prefix, stage, walk chain name).
    _workloads: dict[tuple[object, ...], tuple[str, Stage, str]] = field(default_factory=dict)
    _walks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # walk chain → its rules
    layouts: dict[str, ChainLayout] = field(default_factory=dict)
    decision_maps: dict[str, NftSet] = field(default_factory=dict)
    decision_targets: dict[str, frozenset[str]] = field(default_factory=dict)  # map → outcome chains
    _decided: dict[str, str | None] = field(default_factory=dict)  # decision chain → None, or why the walk
    _elements_used: int = 0  # decision map elements of this node so far (decision_node_budget)
    _with_named: dict[int, decision.RuleList] = field(default_factory=dict)
    _selected_by_id: dict[int, int] = field(default_factory=dict)
    _tags: dict[tuple[object, ...], str] = field(default_factory=dict)
    _selected_ids: dict[tuple[object, ...], int] = field(default_factory=dict)
    _rules_of: dict[tuple[object, ...], tuple[tuple[Policy, ...], decision.RuleList, decision.Tests]] = field(
        default_factory=dict)
    decided: dict[str, _Decided] = field(default_factory=dict)  # decision chain → how it was made
    book: SetBook = field(init=False)
    # Policy chains whose rule ids are allocated, not yet rendered: chain name → (policy, direction).
    _unrendered: dict[str, tuple[Policy, Direction]] = field(default_factory=dict)
    # Workload endpoint chains of the shared walk → their selection (shared_walk.py).
    _selections: dict[str, shared_walk.Selection] = field(default_factory=dict)
    sel_sets: dict[str, NftSet] = field(default_factory=dict)
    _walked: set[tuple[Direction, tuple[str, str, str]]] = field(default_factory=set)  # policies laid out

    def __post_init__(self) -> None:
        self.book = SetBook(self.state)

    # ---- identifiers and verdict statements ---------------------------------------------

    def _ref(self, key: tuple[object, ...], **fields: object) -> RuleRef:
        rule_id = self.ids.id_for(key)
        ref = self.refs.get(rule_id)
        if ref is None:
            ref = self.refs[rule_id] = RuleRef(id=rule_id, **fields)  # type: ignore[arg-type]
        return ref

    def _log(self, ref: RuleRef) -> str:
        group = self.options.log_group if ref.action == "Log" else self.options.verdict_group
        return f'log prefix "{encode_prefix(ref.action, ref.id)}" group {group} snaplen {self.options.snaplen}'

    def _verdict(self, match: str, ref: RuleRef, action: str, *, limited: bool = False) -> list[str]:
        """nft rules for `match` → `action`, counted and attributed to `ref`.

        Denies (and everything in untracked chains, which see every packet) log at a bounded rate:
        the first counter comes before the limit, so it counts every packet exactly; a second one
        after the limit counts what was logged; packets over the limit fall through to a second
        rule that ends them the same way, unlogged.
        """
        stmt = {
            "Allow": f"meta mark set mark | {ACCEPT:#x} return",
            "Pass": f"meta mark set mark | {PASS:#x} return",
            "ProfilePass": "return",  # Pass in a profile: try the next profile
            "Log": "",
            "Deny": "drop",
            "accept": "accept",
        }[action]
        tag = f'comment "r{ref.id}"'
        rate = self.options.deny_log_rate
        if (action == "Deny" or limited) and rate > 0 and action != "Log":
            limit = f"limit rate {rate}/second burst {self.options.deny_log_burst} packets"
            # The second counter, after the limit, counts what was logged: the collector reports
            # the difference as loss by kernel rate limiting.
            return [_join(match, "counter", limit, "counter", self._log(ref), stmt, tag), _join(match, stmt)]
        return [_join(match, "counter", self._log(ref), stmt, tag)]

    # ---- policy and profile chains ------------------------------------------------------

    def _rule_lines(self, rules: tuple[Rule, ...], namespace: str | None, make_ref: object,
                    *, profile: bool, limited: bool) -> list[str]:
        lines: list[str] = []
        for index, rule in enumerate(rules):
            ref: RuleRef = make_ref(index, rule)  # type: ignore[operator]
            action = "ProfilePass" if profile and rule.action == "Pass" else rule.action
            per_family: list[list[str]] = []
            for version in (4, 6):
                fam_rule = rule_for_family(rule, version)
                per_family.append([] if fam_rule is None else rule_matches(self.book, fam_rule, namespace, version))
            v4, v6 = per_family
            agnostic = [m.removeprefix("meta nfproto ipv4").strip() for m in v4]
            if v4 and agnostic == [m.removeprefix("meta nfproto ipv6").strip() for m in v6]:
                matches = agnostic  # nothing family-specific: one rule serves both
            else:
                matches = v4 + v6
            for match in matches:
                lines += self._verdict(match, ref, action, limited=limited and rule.action != "Log")
        return lines

    def _policy_chain(self, p: Policy, direction: Direction) -> str:
        """The policy's chain (it exists even without rules: jumping to it records the gate).

        Rendered chains are kept in the state's `caches` (valid while the cluster objects are the
        same), so an edit recompiles the edited policy's chain only: the others, their rule refs
        and the sets they use are taken as they were when the policy, the options and the id
        allocator are the same."""
        name = bounded_name(f"{'pi' if direction == 'ingress' else 'po'}-{_policy_chain_id(p)}")
        if name in self.chains or name in self._unrendered:
            return name
        cache: dict[tuple[object, ...], _RenderedChain] = self.state.caches.setdefault("nft.policy_chains", {})
        key = (p.key, direction)
        hit = cache.get(key)
        if hit is not None and (hit.policy is p or hit.policy == p) and hit.options == self.options \
                and hit.ids is self.ids:
            self.chains[name] = hit.chain
            for old in hit.refs:
                self.refs.setdefault(old.id, old)
            for nset in hit.sets:
                self.book.use(nset)
            self._gate(p)
            return name
        self._gate(p)
        # Its rule ids now, in the order the walk meets them (as rendering would allocate them);
        # its rules only once a chain kept in the table jumps to it (`_render_reached`).
        for index, rule in enumerate(p.rules(direction)):
            self._rule_ref(p, direction, index, rule)
        self._unrendered[name] = (p, direction)
        return name

    def _render_reached(self) -> None:
        """Render the policy chains that a chain of the table jumps to (the walks kept, host
        endpoint chains); those only decision maps replaced are never rendered."""
        wanted = reach.jump_targets(line for c in self.chains.values() for line in c.rules) & self._unrendered.keys()
        for name in sorted(wanted):
            self._render_policy_chain(name, *self._unrendered.pop(name))

    def _render_policy_chain(self, name: str, p: Policy, direction: Direction) -> None:
        cache: dict[tuple[object, ...], _RenderedChain] = self.state.caches.setdefault("nft.policy_chains", {})
        rules = p.rules(direction)
        used_sets: list[NftSet] = []
        self.book.recording = used_sets

        def ref(index: int, rule: Rule) -> RuleRef:
            return self._rule_ref(p, direction, index, rule)

        try:
            lines = self._rule_lines(rules, p.namespace, ref, profile=False, limited=p.do_not_track)
        finally:
            self.book.recording = None
        chain = self.chains[name] = Chain(name, tuple(lines))
        refs = tuple(ref(index, rule) for index, rule in enumerate(rules))  # what its lines log
        sets = tuple({s.name: s for s in used_sets}.values())
        cache[p.key, direction] = _RenderedChain(p, self.options, self.ids, chain, refs, sets)

    def _rule_ref(self, p: Policy, direction: Direction, index: int, rule: Rule) -> RuleRef:
        return self._ref(("rule", p.kind, p.namespace or "", p.name, p.revision, direction, index),
                         kind=p.kind, namespace=p.namespace, name=p.name, tier=p.tier,
                         revision=p.revision, direction=direction, rule=index, action=rule.action)

    def _profile_ref(self, prof: Profile, direction: Direction, index: int, rule: Rule) -> RuleRef:
        return self._ref(("profile", prof.name, direction, index, repr(rule)),
                         kind="Profile", namespace=None, name=prof.name, tier=PROFILE_TIER, revision=0,
                         direction=direction, rule=index, action=rule.action)

    def _eot_ref(self, kind: str, namespace: str | None, name: str, tier: str, direction: Direction) -> RuleRef:
        # Keyed without the policy's revision: editing a policy must not renumber its
        # end-of-tier drop (the tier and trigger are what attribution needs).
        return self._ref(("eot", tier, kind, namespace or "", name, direction),
                         kind="EndOfTier", namespace=namespace, name=name, tier=tier, revision=0,
                         direction=direction, rule=-1, action="Deny", trigger_kind=kind)

    def _noprof_ref(self, direction: Direction) -> RuleRef:
        return self._ref(("noprof", direction), kind="NoProfileMatch", namespace=None, name="", tier=None,
                         revision=0, direction=direction, rule=-1, action="Deny")

    def _gate(self, p: Policy) -> int:
        gate = self.gates.get(p.key)
        if gate is None:
            gate = self.gates[p.key] = self.ids.gate_for(p.key)
        return gate

    def _end_of_tier_chain(self, p: Policy, tier: str, direction: Direction) -> None:
        """The attributed drop at the end of `tier` when `p` is its last enabled selecting policy,
        reached through the direction's end-of-tier map by `p`'s gate."""
        name = bounded_name(f"{'ei' if direction == 'ingress' else 'eo'}-{_policy_chain_id(p)}")
        if name not in self.chains:
            ref = self._eot_ref(p.kind, p.namespace, p.name, tier, direction)
            self.chains[name] = Chain(name, tuple(self._verdict("", ref, "Deny")))
        self.eot[direction].add(f"{self._gate(p):#x} : goto {name}")

    def _profile_chain(self, prof: Profile, direction: Direction) -> str | None:
        name = bounded_name(f"{'pri' if direction == 'ingress' else 'pro'}-{prof.name}")
        if name in self.chains:
            return name

        def ref(index: int, rule: Rule) -> RuleRef:
            return self._profile_ref(prof, direction, index, rule)

        lines = self._rule_lines(prof.rules(direction), None, ref, profile=True, limited=False)
        if not lines:
            return None
        self.chains[name] = Chain(name, tuple(lines))
        return name

    # ---- endpoint chains ----------------------------------------------------------------

    def _tiers(self, stage: Stage) -> list[str]:
        """Per tier: jump to each enforced policy; an attributed drop at the end unless passed."""
        family = stage.family
        if family == "untracked":
            after = f"meta mark & {ACCEPT:#x} != 0 notrack meta mark set mark | {PREACCEPT:#x} accept"
        elif family == "prednat":
            after = f"meta mark & {ACCEPT:#x} != 0 meta mark set mark | {PREACCEPT:#x} accept"
        else:
            after = f"meta mark & {ACCEPT:#x} != 0 return"
        lines: list[str] = []
        for st in self.ev.stage_tiers(stage):
            if not st.enforced:
                continue  # only staged policies: no effect on packets
            lines.append(TIER_START)
            for p in st.enforced:
                chain = self._policy_chain(p, stage.direction)
                gate = self._gate(p)
                # Skipped when the gate is closed; otherwise the gate goes into the mark (the
                # tier's end looks it up) and the policy's chain runs.
                lines.append(f"meta mark & {PASS:#x} | {gate:#x} != @{CLOSED} "
                             f"meta mark set mark & {0xFFFFFFFF & ~GATE:#x} | {gate:#x} jump {chain}")
                lines.append(after)
            default = "Pass" if family in ("untracked", "prednat") else st.tier.tier.default_action
            if default != "Pass":
                for p in st.enforced:
                    self._end_of_tier_chain(p, st.tier.name, stage.direction)
                lines.append(f"meta mark & {PASS:#x} == 0 meta mark & {GATE:#x} vmap @eot-{stage.direction}")
        return lines

    def _profiles(self, ep: Endpoint, direction: Direction) -> list[str]:
        lines: list[str] = []
        for name in ep.profiles:
            prof = self.state.profiles.get(name)
            chain = None if prof is None else self._profile_chain(prof, direction)
            if chain is not None:
                lines += [f"jump {chain}", f"meta mark & {ACCEPT:#x} != 0 return"]
        return lines + self._verdict("", self._noprof_ref(direction), "Deny")

    def _failsafes(self, stage: Stage) -> list[str]:
        felix = self.state.felix
        inbound = stage.direction == "ingress"
        ports = felix.failsafe_inbound if inbound else felix.failsafe_outbound
        lines = [self._failsafe_rule(fs, "dport", inbound, stage) for fs in ports]
        if stage.family == "untracked":
            other = felix.failsafe_outbound if inbound else felix.failsafe_inbound
            lines += [self._failsafe_rule(fs, "sport", inbound, stage) for fs in other]
        return lines

    def _failsafe_rule(self, fs: FailsafePort, field_: str, inbound: bool, stage: Stage) -> str:
        proto = FAILSAFE_PROTOCOL_NAMES[fs.protocol]
        net = ""
        if fs.net is not None:
            l3 = "ip" if fs.net.version == 4 else "ip6"
            net = f" {l3} {'saddr' if inbound else 'daddr'} {fs.net}"
        match = f"meta l4proto {proto}{net} th {field_} {fs.port}"
        if stage.family != "normal":
            return f"{match} accept"  # raw/mangle: skip this hook's policy only; filter attributes it
        ref = self._ref(("failsafe", stage.direction, str(fs)), kind="Failsafe", namespace=None, name=str(fs),
                        tier=None, revision=0, direction=stage.direction, rule=-1, action="Allow")
        return self._verdict(match, ref, "accept")[0]

    def _endpoint_chain(self, name: str, stage: Stage) -> str:
        """The endpoint's chain: the walk, or (workloads) decision maps when the budget allows."""
        if stage.family != "workload":
            return self._walk_chain(name, stage)
        signature = self._workload_walk(name, stage)
        return self._workload_layout(signature)

    def _workload_walk(self, prefix: str, stage: Stage) -> tuple[object, ...]:
        """Render a workload chain's walk (once per shared chain) and register the chain for
        its layout; returns its key for `_workload_layout`. Endpoints selected by the same policies
        (replicas, or pods whose labels differ where no policy looks) share it."""
        assert stage.endpoint is not None
        signature = (prefix, stage.direction, stage.endpoint.profiles, self._selected(stage), self._local_key(stage))
        if signature not in self._workloads:
            walk = self._walk_chain(prefix, stage)
            self._workloads[signature] = (prefix, stage, walk)
        return signature

    def _workload_layout(self, signature: tuple[object, ...]) -> str:
        """The chain a registered workload chain's interfaces go to: its decision chain, or the walk."""
        found = self.workload_chains.get(signature)
        if found is not None:
            return found
        prefix, stage, walk = self._workloads[signature]
        decided = self._decision_chain(prefix, stage, walk)
        if decided is None:
            if walk not in self.layouts:
                self.layouts[walk] = ChainLayout(walk, "walk", len(self._walks[walk]), self._walk_reason)
            self.chains[walk] = Chain(walk, self._walks[walk])
            found = walk
        else:
            if any(f"goto {walk}" in line for line in self.chains[decided].rules):
                self.chains[walk] = Chain(walk, self._walks[walk])  # the guard's way out
            found = decided
        self.workload_chains[signature] = found
        return found

    def _walk_cost(self, signature: tuple[object, ...]) -> tuple[int, int]:
        """What a first packet of a registered workload chain costs in the walk: the rules of its
        selecting policies and profiles it may test, then the jumps of its own chain."""
        _, stage, walk = self._workloads[signature]
        if self.options.decision_budget <= 0:
            return 0, len(self._walks[walk])
        return len(self._decision_rules(stage)[1]), len(self._walks[walk])

    def _walk_chain(self, name: str, stage: Stage) -> str:
        """The rule walk of an endpoint chain: host endpoints' own; workloads' shared
        (`_selection_walk`)."""
        assert stage.endpoint is not None
        if stage.family == "workload":
            return self._selection_walk(name, stage)
        lines: list[str] = []
        if stage.endpoint.kind == "hep" and stage.family != "forward":
            lines += self._failsafes(stage)
        lines.append(CLEAR)
        lines += self._tiers(stage)
        if stage.family in ("workload", "normal"):
            lines += self._profiles(stage.endpoint, stage.direction)
        self.chains[name] = Chain(name, tuple(lines))
        return name

    # ---- the shared workload walk (shared_walk.py) --------------------------------------

    def _selection_walk(self, prefix: str, stage: Stage) -> str:
        """A workload endpoint chain: its selection number (written once the node's selections
        are known: `_finish_selection_walks`), a jump to each tier chain where a policy selects it,
        its profiles. Named by a digest of its selection and rules, kept aside (`_walks`) until
        its layout is chosen."""
        assert stage.endpoint is not None
        tiers = tuple(st for st in self.ev.stage_tiers(stage) if st.enforced)  # staged only: no effect
        lines: list[str] = []
        for st in tiers:
            # Rule ids and gates in the order the walk meets them; each policy once per direction
            # (endpoint chains share most of their policies: this loop is chains x policies).
            new = [p for p in st.enforced if (stage.direction, p.key) not in self._walked]
            for p in new:
                self._policy_chain(p, stage.direction)
            if st.tier.tier.default_action != "Pass":
                for p in new:
                    self._end_of_tier_chain(p, st.tier.name, stage.direction)
            self._walked.update((stage.direction, p.key) for p in new)
            lines += [f"jump {self._tier_chain_name(prefix, st.tier.name)}", f"meta mark & {ACCEPT:#x} != 0 return"]
        lines += self._profiles(stage.endpoint, stage.direction)
        key = shared_walk.selection_key(tiers)
        digest = hashlib.sha256("\n".join((repr(key), *lines)).encode()).hexdigest()[:12]
        name = f"{prefix}-{digest}"
        self._walks[name] = (CLEAR, *lines)
        if tiers:
            self._selections[name] = shared_walk.Selection(stage.direction, prefix, key, tiers)
        return name

    @staticmethod
    def _tier_chain_name(prefix: str, tier: str) -> str:
        return bounded_name(f"{prefix}-tier-{tier}")

    def _finish_selection_walks(self) -> None:
        """Number the selections of the endpoint chains kept in the table, write each number into
        its chains, and lay out the tier chains and `sel-<direction>` sets they use."""
        kept = [(name, s) for name, s in sorted(self._selections.items()) if name in self.chains]
        numbers = {d: shared_walk.number({s.key for _, s in kept if s.direction == d},
                                         f"node {self.node}, {d} walk") for d in ("ingress", "egress")}
        keep = 0xFFFFFFFF & ~ACCEPT & ~PASS & ~shared_walk.SEL_MASK
        tiers: dict[tuple[str, Direction, str], tuple[StageTier, dict[tuple[str, str, str], Policy]]] = {}
        elements: dict[Direction, set[str]] = {"ingress": set(), "egress": set()}
        for name, s in kept:
            sel = numbers[s.direction][s.key] << shared_walk.SEL_SHIFT
            rest = self.chains[name].rules[1:]
            self.chains[name] = Chain(name, (f"meta mark set mark & {keep:#x} | {sel:#x}", *rest))
            for st in s.tiers:
                tiers.setdefault((s.prefix, s.direction, st.tier.name), (st, {}))[1].update(
                    (p.key, p) for p in st.enforced)
                elements[s.direction].update(f"{sel | self._gate(p):#x}" for p in st.enforced)
        position = self.state.policy_positions
        after = f"meta mark & {ACCEPT:#x} != 0 return"
        for (prefix, direction, tier), (st, policies) in sorted(tiers.items(), key=lambda kv: kv[0]):
            lines = [TIER_START]
            for p in sorted(policies.values(), key=lambda p: position[p.key]):
                gate = self._gate(p)
                # Taken when the endpoint's selection includes the policy and no policy of the
                # tier passed (one lookup), and its gate is open; the gate goes into the mark.
                lines.append(f"meta mark & {shared_walk.SEL_MASK | PASS:#x} | {gate:#x} @sel-{direction} "
                             f"meta mark & {PASS:#x} | {gate:#x} != @{CLOSED} "
                             f"meta mark set mark & {0xFFFFFFFF & ~GATE:#x} | {gate:#x} "
                             f"jump {self._policy_chain(p, direction)}")
                lines.append(after)
            if st.tier.tier.default_action != "Pass":
                lines.append(f"meta mark & {PASS:#x} == 0 meta mark & {GATE:#x} vmap @eot-{direction}")
            name = self._tier_chain_name(prefix, tier)
            self.chains[name] = Chain(name, tuple(lines))
        for direction, found in elements.items():
            if found:
                self.sel_sets[f"sel-{direction}"] = NftSet(f"sel-{direction}", "mark", (), frozenset(found))

    # ---- decision maps (decision.py) ---------------------------------------------------

    _walk_reason: str = ""

    def _decision_chain(self, prefix: str, stage: Stage, walk: str) -> str | None:
        """The workload chain as decision maps, or None (and `_walk_reason`) to keep the walk.
        The walk has been rendered first: its policy chains and rule ids stay in the table, so
        attribution ids and toggles do not depend on which layout a chain got."""
        budget = self.options.decision_budget
        if budget <= 0:
            self._walk_reason = "decision maps off (budget 0)"
            return None
        ep = stage.endpoint
        assert ep is not None
        policies, rules, _ = self._decision_rules(stage)
        local_key = self._local_key(stage)
        memo = (self._selected(stage), stage.direction, ep.profiles, local_key)
        tag = self._tags.get(memo)
        if tag is None:  # hashing every selecting policy's key: once per shared chain, not per endpoint
            tag = self._tags[memo] = decision.chain_tag(stage, policies, ep.profiles, local_key)
        name = bounded_name(f"{prefix}-d{tag}")
        # Endpoints selected by the same policies (replicas, or pods whose labels differ only
        # where no policy looks) and alike in what the rules see of them share the decision.
        if name in self._decided:
            why = self._decided[name]
            if why is not None:
                self._walk_reason = why
                return None
            return name
        local: dict[int, IPAddress] = {4: ipaddress.IPv4Address("192.0.2.1"), 6: ipaddress.IPv6Address("2001:db8::1")}
        for ip in reversed(ep.ips):
            local[ip.version] = ip
        left = self.options.decision_node_budget - self._elements_used
        budget = min(self.options.decision_budget, left)
        built = self._decide(stage, policies, rules, local, tag, walk, budget) if left > 0 else \
            f"the node's decision maps are full ({self._elements_used} elements of " \
            f"{self.options.decision_node_budget})"
        if isinstance(built, str) and budget < self.options.decision_budget and left > 0:
            built += f" (what is left of the node's {self.options.decision_node_budget} elements)"
        if isinstance(built, str) and budget < self.options.decision_budget:
            # compile() decides the chains costing a packet the most first: say where this one stood.
            built += f"; the node's maps go first to chains whose walk tests more rules (this one: {len(rules)})"
        if not isinstance(built, str):
            self._elements_used += built.elements
        if isinstance(built, str):
            self._decided[name] = built
            self._walk_reason = built
            return None
        self._decided[name] = None
        for map_name, (type_, elements, is_map, interval) in built.maps.items():
            self.decision_maps[map_name] = NftSet(map_name, type_, ("interval",) if interval else (), elements,
                                                  is_map=is_map)
        self.decision_targets.update(built.targets)
        for chain_name, chain_rules in built.chains.items():
            self.chains[chain_name] = Chain(chain_name, chain_rules)
        self.decided[name] = _Decided(prefix, stage, walk, frozenset(p.key for p in policies), tuple(built.maps),
                                      tuple(built.chains))
        # The maps cover every address, protocol and port: the drop is never reached.
        self.chains[name] = Chain(name, (CLEAR, *built.lines, "drop"))
        self.layouts[name] = ChainLayout(name, "decision", built.elements)
        return name

    def _decide(self, stage: Stage, policies: tuple[Policy, ...], rules: decision.RuleList,
                local: dict[int, IPAddress], tag: str, walk: str, budget: int) -> decision.DecisionChain | str:
        """decision.decide, kept across compiles in the state's caches: an edit or a toggle decides
        again only the chains whose selecting policies (or tiers) changed. The outcome chains and
        rule refs a kept decision goes to are restored with it."""
        kept: dict[tuple[object, ...], _KeptDecision] = self.state.caches.setdefault("nft.decisions", {})
        # Which of them are disabled is part of the key: toggling back finds the earlier decision.
        key = (tag, walk, stage.direction, tuple(local.items()), tuple(p.disabled for p in policies), budget)
        inputs = (self.state.resources.tiers, stage.endpoint, self.options, self.ids)
        hit = kept.get(key)
        if hit is not None and _same(hit.policies, policies) and hit.inputs[0] == inputs[0] \
                and all(a is b or a == b for a, b in zip(hit.inputs[1:], inputs[1:], strict=True)):
            for chain in hit.chains:
                self.chains.setdefault(chain.name, chain)
            for ref in hit.refs:
                self.refs.setdefault(ref.id, ref)
            return hit.built
        # The chain's last decide, whatever its toggles and edits: this one continues its walks.
        # Its elements name outcome chains by content, whose rule ids come from `self.ids`.
        memos: dict[tuple[object, ...], tuple[object, decision.DecisionMemo]] = self.state.caches.setdefault(
            "nft.decision_memos", {})
        memo_key = (*key[:4], budget, self.options)
        last = memos.get(memo_key)
        previous = last[1] if last is not None and last[0] is self.ids else None
        outcomes = self._outcome_chains()[0]

        def target(out: decision.Outcome) -> str:
            return self._outcome_chain(out, stage.direction)

        built = decision.decide(self.ev, stage, rules, local, budget, tag, target, walk,
                                self.state.policy_positions, previous, self._decision_rules(stage)[2])
        if not isinstance(built, str) and any(n not in self.chains and n not in outcomes
                                              for n in frozenset().union(*built.targets.values())):
            # An outcome chain of a kept element is no longer known (its cache started over).
            built = decision.decide(self.ev, stage, rules, local, budget, tag, target, walk,
                                    self.state.policy_positions)
        if not isinstance(built, str) and built.memo is not None:
            if len(memos) >= KEPT_MAX // 100 and memo_key not in memos:  # a memo holds a chain's walks
                memos.clear()
            memos[memo_key] = (self.ids, built.memo)
        chains: tuple[Chain, ...] = ()
        refs: tuple[RuleRef, ...] = ()
        if not isinstance(built, str):
            # Elements kept from the last decide go to outcome chains this compile did not make.
            found: dict[str, tuple[Chain, tuple[RuleRef, ...]]] = {}
            for name in frozenset().union(*built.targets.values()):
                made = self.chains.get(name)
                known = outcomes.get(name)
                if known is None:
                    assert made is not None  # checked above
                    known = (made, self._chain_refs(made))
                found[name] = known
            for name, (chain, chain_refs) in found.items():
                self.chains.setdefault(name, chain)
                for ref in chain_refs:
                    self.refs.setdefault(ref.id, ref)
            chains = tuple(found[n][0] for n in sorted(found))
            refs = tuple({r.id: r for n in sorted(found) for r in found[n][1]}.values())
        if len(kept) >= KEPT_MAX:  # entries of policy sets that no longer exist pile up: start over
            kept.clear()
        # Without its memo: the kept decisions of every toggle state would each hold a chain's walks.
        kept[key] = _KeptDecision(policies, inputs, built if isinstance(built, str) else replace(built, memo=None),
                                  chains, refs)
        return built

    def _decision_rules(self, stage: Stage) -> tuple[tuple[Policy, ...], decision.RuleList, decision.Tests]:
        """The selecting policies, every rule that may decide (theirs, then the profiles'), and
        the address tests on the endpoint's own side: once per shared chain."""
        assert stage.endpoint is not None
        key = (self._selected(stage), stage.direction, stage.endpoint.profiles)
        found = self._rules_of.get(key)
        if found is None:
            policies = tuple(p for st in self.ev.stage_tiers(stage) for p in st.enforced)
            # Kept across compiles in the state's caches (valid while the cluster objects are the
            # same): an edit or toggle derives them again only for the policy sets it changed.
            kept: dict[tuple[object, ...], tuple[tuple[Policy, ...], decision.RuleList, decision.Tests]] = \
                self.state.caches.setdefault("nft.decision_rules", {})
            ckey = (stage.direction, stage.endpoint.profiles, tuple(p.key for p in policies))
            hit = kept.get(ckey)
            if hit is not None and _same(hit[0], policies):
                found = self._rules_of[key] = hit
                return found
            if hit is not None and _same_rules(hit[0], policies, stage.direction):
                # A toggle: the same rule objects (a disabled policy's rules stay in the list).
                found = self._rules_of[key] = kept[ckey] = (policies, hit[1], hit[2])
                return found
            profiles = [self.state.profiles[n] for n in stage.endpoint.profiles if n in self.state.profiles]
            rules = [(r, p.namespace) for p in policies for r in p.rules(stage.direction)]
            rules += [(r, None) for prof in profiles for r in prof.rules(stage.direction)]
            own = decision.address_tests(self.state, rules, stage.direction, peer=False)
            tests = own.ranges
            # The tests' keys, for the membership index to reuse their merged ranges (_memberships).
            owns: dict[int, decision.AddressTests] = self.state.caches.setdefault("nft.own_tests", {})
            if len(owns) >= KEPT_MAX:
                owns.clear()
            owns[id(tests)] = own
            if len(kept) >= KEPT_MAX:
                kept.clear()
            found = self._rules_of[key] = kept[ckey] = (policies, rules, tests)
        return found

    def _selected(self, stage: Stage) -> int:
        """A number for the stage's tiers of enforced policies: equal for endpoints selected by
        the same policies. The evaluator shares one stage_tiers answer between endpoints with
        the same labels and keeps it alive for the compile, so its identity is looked up first."""
        tiers = self.ev.stage_tiers(stage)
        found = self._selected_by_id.get(id(tiers))
        if found is None:
            content = tuple((st.tier.name, tuple(map(id, st.enforced))) for st in tiers)
            found = self._selected_ids.setdefault(content, len(self._selected_ids))
            self._selected_by_id[id(tiers)] = found
        return found

    def _local_key(self, stage: Stage) -> tuple[object, ...]:
        """Which of the rules' tests on the endpoint's own side hold for each of its addresses,
        and its named ports the rules use: endpoints that differ there cannot share a decision."""
        if self.options.decision_budget <= 0:
            return ()
        assert stage.endpoint is not None
        _, rules, tests = self._decision_rules(stage)
        ips = stage.endpoint.ips
        with_named = self._named_rules(stage, rules)
        named = decision.local_named_ports(self.state, with_named, stage.direction, ips) if with_named else ()
        member = self._memberships(tests, ips) if tests else ()
        return (member, named) if named else member

    def _memberships(self, tests: decision.Tests, ips: tuple[IPAddress, ...]) -> tuple[tuple[int, ...], ...]:
        """Which own-side tests hold for each address, kept across compiles with the tests they were
        computed from (kept while the policy set is unchanged): a recompile does not test every
        address again."""
        kept: dict[tuple[int, tuple[IPAddress, ...]], tuple[decision.Tests, tuple[tuple[int, ...], ...]]] = \
            self.state.caches.setdefault("nft.local_keys", {})
        key = (id(tests), ips)
        hit = kept.get(key)
        if hit is not None and hit[0] is tests:
            return hit[1]
        # Endpoints sharing a rule list test their addresses against the same tests: one index.
        indexes: dict[int, decision.MembershipIndex] = self.state.caches.setdefault("nft.membership_index", {})
        index = indexes.get(id(tests))
        if index is None or index.tests is not tests:
            if len(indexes) >= KEPT_MAX:
                indexes.clear()
            own = self.state.caches.get("nft.own_tests", {}).get(id(tests))
            merged = partial(own.merged, cache=self.state.caches.setdefault("decision.merged_ranges", {})) \
                if own is not None and own.ranges is tests else None
            index = indexes[id(tests)] = decision.MembershipIndex(tests, merged)
        found = tuple(sorted(tuple(sorted(m)) for m in index.of(ips)))
        if len(kept) >= KEPT_MAX:
            kept.clear()
        kept[key] = (tests, found)
        return found

    def _named_rules(self, stage: Stage, rules: decision.RuleList) -> decision.RuleList:
        """The rules testing the endpoint's own named ports (once per shared rule list, kept across
        compiles with the list: a toggle keeps the list)."""
        key = id(rules)
        found = self._with_named.get(key)
        if found is None:
            kept: dict[tuple[int, str], tuple[decision.RuleList, decision.RuleList]] = \
                self.state.caches.setdefault("nft.named_rules", {})
            hit = kept.get((key, stage.direction))
            if hit is not None and hit[0] is rules:
                found = hit[1]
            else:
                found = [(r, ns) for r, ns in rules if decision.tests_own_named_port(r, stage.direction)]
                if len(kept) >= KEPT_MAX:
                    kept.clear()
                kept[key, stage.direction] = (rules, found)
            self._with_named[key] = found
        return found

    def _hit_ref(self, h: Hit) -> RuleRef:
        if h.kind == "Profile":
            prof = self.state.profiles[h.name]
            return self._profile_ref(prof, h.direction, h.rule, prof.rules(h.direction)[h.rule])
        pol = self._policy_by_key[(h.kind, h.namespace or "", h.name)]
        return self._rule_ref(pol, h.direction, h.rule, pol.rules(h.direction)[h.rule])

    @property
    def _policy_by_key(self) -> dict[tuple[str, str, str], Policy]:
        found: dict[tuple[str, str, str], Policy] | None = self.__dict__.get("_by_key")
        if found is None:
            found = self.__dict__["_by_key"] = {p.key: p for p in self.state.active_policies}
        return found

    def _outcome_chain(self, out: decision.Outcome, direction: Direction) -> str:
        """The terminal chain of one outcome: what the walk logs and does for it. Kept across
        compiles while the policies and profiles its hits name are the same objects (their rule
        refs, so its lines, are then the same): a re-decision renders most outcomes again."""
        names = self._outcome_chains()[1]
        deps = tuple(self._policy_by_key.get((h.kind, h.namespace or "", h.name)) if h.kind != "Profile"
                     else self.state.profiles.get(h.name) for h in (*out.logged, out.hit) if h is not None)
        known = names.get((out, direction))
        if known is not None and len(known[0]) == len(deps) \
                and all(a is b for a, b in zip(known[0], deps, strict=True)):
            name = known[1]
            if name not in self.chains:
                chain, refs = self._outcome_chains()[0][name]
                self.chains[name] = chain
                for ref in refs:
                    self.refs.setdefault(ref.id, ref)
            return name
        name = self._new_outcome_chain(out, direction)
        if len(names) >= KEPT_MAX:
            names.clear()
        names[(out, direction)] = (deps, name)
        return name

    def _new_outcome_chain(self, out: decision.Outcome, direction: Direction) -> str:
        lines: list[str] = []
        for h in out.logged:
            lines += self._verdict("", self._hit_ref(h), "Log")
        if out.hit is None:
            lines += self._verdict("", self._noprof_ref(direction), "Deny")
        elif out.hit.rule < 0:
            h = out.hit
            lines += self._verdict("", self._eot_ref(h.kind, h.namespace, h.name, h.tier, direction), "Deny")
        else:
            lines += self._verdict("", self._hit_ref(out.hit), "Allow" if out.verdict == "allow" else "Deny")
        name = decision.outcome_name(lines)
        if name not in self.chains:
            chain = self.chains[name] = Chain(name, tuple(lines))
            outcomes, names = self._outcome_chains()
            if len(outcomes) >= KEPT_MAX:
                outcomes.clear()
                names.clear()  # they point into it
            outcomes[name] = (chain, self._chain_refs(chain))
        return name

    def _chain_refs(self, chain: Chain) -> tuple[RuleRef, ...]:
        """The rule refs a chain's NFLOG prefixes name (registered in this compile)."""
        ids = {int(w[2:-1]) for line in chain.rules for w in line.split()
               if w.startswith('"r') and w.endswith('"') and w[2:-1].isdigit()}
        return tuple(self.refs[i] for i in sorted(ids))

    def _outcome_chains(self) -> tuple[dict[str, tuple[Chain, tuple[RuleRef, ...]]],
                                       dict[tuple[decision.Outcome, str], tuple[tuple[object, ...], str]]]:
        """Outcome chains made so far (named by their content) with the rule refs they log, for
        the decision elements a decide kept from the last; and each outcome's chain name with the
        policies and profiles it depends on. Per id allocator and options, kept across compiles."""
        kept: dict[tuple[int, CompileOptions], tuple[IdAllocator, dict[str, tuple[Chain, tuple[RuleRef, ...]]],
                                                     dict[tuple[decision.Outcome, str],
                                                          tuple[tuple[object, ...], str]]]] = \
            self.state.caches.setdefault("nft.outcome_chains", {})
        key = (id(self.ids), self.options)
        found = kept.get(key)
        if found is None or found[0] is not self.ids:
            found = kept[key] = (self.ids, {}, {})
        return found[1], found[2]

    def _hep_chain(self, prefix: str, family: Family, direction: Direction, hep: Endpoint) -> str:
        return self._endpoint_chain(bounded_name(f"{prefix}-{hep.name}"), Stage(family, direction, hep, self.node))

    # ---- the table ----------------------------------------------------------------------

    def compile(self) -> CompiledNode:
        local = sorted((ep for ep in self.state.endpoints if ep.kind == "wep" and ep.node == self.node),
                       key=lambda ep: ep.ref)
        ifaces: list[tuple[str, tuple[object, ...], tuple[object, ...]]] = []
        for ep in local:
            assert ep.namespace is not None
            fw = self._workload_walk("fw", Stage("workload", "egress", ep, self.node))
            tw = self._workload_walk("tw", Stage("workload", "ingress", ep, self.node))
            ifaces.append((cali_name(ep.namespace, ep.name), fw, tw))
        # The node's element budget goes first to the chains whose walk costs a packet the most
        # (most rules to test), not to whichever pod compiles first: deterministic, by cost then name.
        for signature in sorted(self._workloads, key=lambda k: (*(-c for c in self._walk_cost(k)),
                                                                 self._workloads[k][2])):
            self._workload_layout(signature)
        from_map = {f'"{iface}" : goto {self.workload_chains[fw]}' for iface, fw, _ in ifaces}
        to_map = {f'"{iface}" : goto {self.workload_chains[tw]}' for iface, _, tw in ifaces}
        sets: dict[str, NftSet] = {
            "wl-from": NftSet("wl-from", "ifname : verdict", (), frozenset(from_map), is_map=True),
            "wl-to": NftSet("wl-to", "ifname : verdict", (), frozenset(to_map), is_map=True),
        }
        unknown = self._ref(("unknown-iface",), kind="Default", namespace=None, name="unknown interface",
                            tier=None, revision=0, direction="egress", rule=-1, action="Deny")
        self.chains["wl-from-dispatch"] = Chain("wl-from-dispatch", (
            "iifname vmap @wl-from", *self._verdict("", unknown, "Deny")))
        self.chains["wl-to-dispatch"] = Chain("wl-to-dispatch", ("oifname vmap @wl-to", "drop"))

        # The uplink's HEP (named, else the all-interfaces one) and the all-interfaces HEP, which
        # also covers pod interfaces and the WireGuard tunnel (never `lo`: host to itself).
        hep = self.state.host_endpoint_for(self.node, UPLINK)
        star = self.state.all_interfaces_endpoint(self.node)
        named = hep if hep is not None and hep.interface_name != "*" else None
        up = f'"{UPLINK}"'
        others = f'!= {{ {up}, "lo" }}'
        raw_pre = [INFRA_ICMPV6]
        raw_out = [INFRA_ICMPV6]
        # Established packets: the conntrack verdict first in every chain they meet, nothing before it.
        mangle_pre = ["ct state established,related accept", INFRA_ICMPV6, f"meta mark & {PREACCEPT:#x} != 0 accept"]
        conntrack = ["ct state established,related accept", "ct state invalid drop", INFRA_ICMPV6]
        # Pod → host first: its egress policy and DefaultEndpointToHostAction, whatever preDNAT did.
        inp = [*conntrack, 'iifname "cali*" goto wl-to-host', f"meta mark & {PREACCEPT:#x} != 0 accept"]
        fwd = list(conntrack)
        out = [*conntrack, f"meta mark & {PREACCEPT:#x} != 0 accept", 'oifname "cali*" accept']
        wg_in, wg_out = self._wireguard_allow()
        inp += wg_in
        out += wg_out
        unaccepted = f"meta mark & {PREACCEPT:#x} == 0"
        if named is not None:  # doNotTrack policy of an all-interfaces HEP is ignored, as by Felix
            raw_pre.append(f"iifname {up} jump {self._hep_chain('raw-fh', 'untracked', 'ingress', named)}")
            raw_out.append(f"oifname {up} jump {self._hep_chain('raw-th', 'untracked', 'egress', named)}")
        if hep is not None:
            mangle_pre.append(f"iifname {up} jump {self._hep_chain('mangle-fh', 'prednat', 'ingress', hep)}")
            inp.append(f"iifname {up} jump {self._hep_chain('fh', 'normal', 'ingress', hep)}")
            fwd.append(f"{unaccepted} iifname {up} jump {self._hep_chain('fhfw', 'forward', 'ingress', hep)}")
        if star is not None:
            mangle_pre.append(f"iifname {others} jump {self._hep_chain('mangle-fh', 'prednat', 'ingress', star)}")
            inp.append(f"iifname {others} jump {self._hep_chain('fh', 'normal', 'ingress', star)}")
            fwd.append(f"{unaccepted} iifname {others} "
                       f"jump {self._hep_chain('fhfw', 'forward', 'ingress', star)}")
        fwd += ['iifname "cali*" jump wl-from-dispatch', 'oifname "cali*" jump wl-to-dispatch']
        if hep is not None:
            fwd.append(f"oifname {up} jump {self._hep_chain('thfw', 'forward', 'egress', hep)}")
            out.append(f"oifname {up} jump {self._hep_chain('th', 'normal', 'egress', hep)}")
        if star is not None:
            fwd.append(f"oifname {others} jump {self._hep_chain('thfw', 'forward', 'egress', star)}")
        self.chains["wl-to-host"] = Chain("wl-to-host", tuple(self._to_host()))

        bases = {
            "raw-prerouting": ("prerouting", "raw", raw_pre),
            "raw-output": ("output", "raw", raw_out),
            "mangle-prerouting": ("prerouting", "mangle", mangle_pre),
            "filter-input": ("input", "filter", inp),
            "filter-forward": ("forward", "filter", fwd),
            "filter-output": ("output", "filter", out),
        }
        for name, (hook, prio, rules) in bases.items():
            if prio in ("raw", "mangle") and not any(" jump " in r for r in rules):
                # Without untracked or preDNAT policy these chains only accept, as their policy
                # does: no hook at all costs every packet (established ones too) nothing.
                continue
            self.chains[name] = Chain(name, tuple(rules), f"type filter hook {hook} priority {prio}; policy accept;")
        for direction, elements in self.eot.items():
            sets[f"eot-{direction}"] = NftSet(f"eot-{direction}", "mark : verdict", (), frozenset(elements),
                                              is_map=True)
        disabled = {p.key for p in self.state.active_policies if p.disabled}
        sets[CLOSED] = NftSet(CLOSED, "mark", (), closed_gates(self.gates, disabled))
        self._finish_selection_walks()
        self._render_reached()  # before the sets: its rules add the sets they use
        sets.update(self.book.sets)
        sets.update(self.sel_sets)
        sets.update(self.decision_maps)
        # The walk's policy chains stay rendered (rule ids), but only what a packet can reach is
        # loaded: with decision maps, most of them (reach.py).
        chains, sets = reach.prune(self.chains, sets, keep_sets=(CLOSED,))
        table = Table("inet", self.options.table, dict(sorted(chains.items())), dict(sorted(sets.items())))
        return CompiledNode(self.node, table, RuleTable(self.refs.values()), dict(self.gates),
                            tuple(v for _, v in sorted(self.layouts.items())))

    def _wireguard_allow(self) -> tuple[list[str], list[str]]:
        """Calico auto-allows WireGuard UDP between nodes before host endpoint policy (unlogged)."""
        felix = self.state.felix
        me = self.state.nodes.get(self.node)
        mine = set(me.addresses) if me is not None else set()
        inp: list[str] = []
        out: list[str] = []
        for version, l3 in ((4, "ip"), (6, "ip6")):
            if not felix.wireguard(version):
                continue
            nodes = sorted({ip for n in self.state.resources.nodes for ip in n.addresses if ip.version == version},
                           key=int)
            others = [ip for ip in nodes if ip not in mine]
            port = WIREGUARD_PORTS[version]
            if nodes:
                inp.append(f'iifname "{UPLINK}" meta l4proto udp th dport {port} {l3} saddr '
                           f'{{ {", ".join(map(str, nodes))} }} accept')
            if others:
                out.append(f'oifname "{UPLINK}" meta l4proto udp th dport {port} {l3} daddr '
                           f'{{ {", ".join(map(str, others))} }} accept')
        return inp, out

    def _to_host(self) -> list[str]:
        """A workload talking to its own host: its egress policy, then DefaultEndpointToHostAction."""
        action = self.state.felix.default_endpoint_to_host_action
        lines = ["jump wl-from-dispatch"]
        # Return hands the packet back to the host's INPUT chain past Calico's rules, which here
        # means its policy: accept (no host endpoint policy sees workload → host packets).
        verdict = "Deny" if action == "Drop" else "Allow"
        ref = self._ref(("to-host", action), kind="Default", namespace=None,
                        name=f"DefaultEndpointToHostAction={action}", tier=None, revision=0,
                        direction="ingress", rule=-1, action=verdict)
        return lines + self._verdict("", ref, "Deny" if action == "Drop" else "accept")
