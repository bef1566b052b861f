"""The reconciler: desired state (the datastore) → one compiled table per node → one transaction each.

    rec = Reconciler(Datastore(), KernelBackend("lab", netns_of), compile_node, CompileOptions(),
                     lab_nodes=lambda: ["node-a", "node-b"], lab_id="lab")
    result = rec.reconcile()            # every node lab_nodes() names
    print(result.describe())            # per node: applied/unchanged/failed, ops, compile/apply ms

Each run, under the datastore's lock (so concurrent CLI calls serialise):

1. load the stored resources; with a lab id, fill in the lab's addresses (`lab_resources`), so
   the tables match the addresses the lab's namespaces really hold; resolve them by deriving
   from the last compiled state (`ClusterState.derive`): after a policy edit, the endpoint
   index, selector memberships, rendered sets and every unchanged policy's chain are reused;
2. compile every node with the injected compile function and the persistent id allocator
   (`ids.jsonl` in the datastore directory: the same policy revision, direction and rule get
   the same id in every process); persist new ids and the merged, append-only rule table
   (`rules.jsonl`) BEFORE applying, so every prefix the kernel can log is already resolvable;
3. per node, diff against the table last applied and apply the operations as one transaction.

Live toggles skip steps 1–2. A toggle changes neither a policy's generation
(`StoredObject.generation`) nor the datastore's layout revision (`Catalog.layout`: the last write
that was not a toggle), so when the layout is that of the last compile, every node's table is that
compile with other policies switched off (`CompiledNode.with_disabled`): the run reads only the
datastore's index and applies set elements — no documents loaded, nothing compiled, no rule
rewritten; tests check that the result equals a fresh compile. A fresh process (the CLI) does the
same from the recorded table when `applied/<node>.layout.json` says it was compiled from the
current layout (and the live table passes the first-use check below).

   The last applied table is kept in memory and in `applied/<node>.json`; on first use in a
   process it is checked against the backend (same chains with the same number of rules, same
   sets with the same number of elements) and, if the live table differs or is unknown, the
   whole table is replaced in one transaction. A node whose compile or apply fails keeps its
   previous table (the kernel's transaction guarantee), is reported, and the others proceed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from enforcer.applied import CLOSED_SET, AppliedRecords, table_from_json, table_to_json
from enforcer.datastore import DesiredState, StoredObject
from enforcer.lab import LabPlan, lab_resources, plan_lab
from enforcer.model import ResourceSet
from enforcer.nft import ir
from enforcer.nft.backend import TABLE_FAMILY, TABLE_NAME, ApplyError, Backend
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, RuleIdError, RuleRef, RuleTable


class Compiled(Protocol):
    """What a compile function returns (the compiler's CompiledNode)."""

    @property
    def table(self) -> ir.Table: ...

    @property
    def rules(self) -> RuleTable: ...


@runtime_checkable
class Gated(Compiled, Protocol):
    """A compiled node whose policies can be switched off without compiling (policy gates)."""

    def with_disabled(self, disabled: Collection[tuple[str, str, str]]) -> Gated: ...


# compile_node(state, node, options, ids) -> CompiledNode
CompileFn = Callable[[ClusterState, str, Any, IdAllocator], Compiled]
Status = Literal["applied", "unchanged", "failed"]


@dataclass(frozen=True)
class NodeResult:
    node: str
    status: Status
    full: bool = False  # the whole table was (re)created
    ops: int = 0
    chains: int = 0
    sets: int = 0
    compile_ms: float = 0.0
    apply_ms: float = 0.0
    error: str | None = None
    verify_ms: float = 0.0  # reading the live table back (first use of a node in a process)
    toggled: bool = False  # served from the last compile by switching policy gates (no compile)

    def __str__(self) -> str:
        if self.status == "failed":
            return f"{self.node}: FAILED: {self.error}"
        what = f"{_count(self.chains, 'chain')}, {_count(self.sets, 'set')}"
        if self.status == "unchanged":
            return f"{self.node}: unchanged ({what}; compile {self.compile_ms:.1f} ms)"
        how = "replaced whole table" if self.full else f"{self.ops} changes"
        made = "gates switched" if self.toggled else "compile"
        return f"{self.node}: applied, {how} ({what}; {made} {self.compile_ms:.1f} ms, apply {self.apply_ms:.1f} ms)"

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node, "status": self.status, "full": self.full, "ops": self.ops, "chains": self.chains,
            "sets": self.sets, "compile_ms": round(self.compile_ms, 3), "apply_ms": round(self.apply_ms, 3),
            "verify_ms": round(self.verify_ms, 3), "error": self.error, "toggled": self.toggled,
        }


@dataclass(frozen=True)
class ReconcileResult:
    revision: int  # datastore revision that was enforced
    nodes: tuple[NodeResult, ...]
    load_ms: float  # datastore + cluster state
    total_ms: float
    rules: int  # size of the rule table
    new_ids: int

    @property
    def ok(self) -> bool:
        return all(n.status != "failed" for n in self.nodes)

    @property
    def failed(self) -> tuple[NodeResult, ...]:
        return tuple(n for n in self.nodes if n.status == "failed")

    def describe(self) -> str:
        lines = [str(n) for n in self.nodes] or ["no nodes to enforce on"]
        lines.append(f"revision {self.revision}: {len(self.nodes)} nodes in {self.total_ms:.1f} ms "
                     f"(load {self.load_ms:.1f} ms), {self.rules} rule ids")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "ok": self.ok, "load_ms": round(self.load_ms, 3),
                "total_ms": round(self.total_ms, 3), "rules": self.rules, "new_ids": self.new_ids,
                "nodes": [n.to_json() for n in self.nodes]}


def _stat(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of a file, None if it does not exist: has another process rewritten it?"""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def lab_view(resources: ResourceSet, lab_id: str | None) -> ResourceSet:
    """With a lab id, the resources with the lab's addresses filled in."""
    return resources if lab_id is None else lab_resources(resources, plan_lab(resources, lab_id))


def cluster_state(resources: ResourceSet, lab_id: str | None) -> ClusterState:
    """The state to compile: with a lab id, the lab's addresses filled in; disabled policies
    kept for the dataplane's layout (`ClusterState.for_dataplane`)."""
    return ClusterState(lab_view(resources, lab_id), include_disabled=True)


def disabled_keys(objects: Iterable[StoredObject]) -> frozenset[tuple[str, str, str]]:
    """Policy keys (kind, namespace, name) switched off by the live toggle."""
    return frozenset((o.key.kind, o.key.namespace or "", o.key.name) for o in objects if o.disabled)


def compile_nodes(
    resources: ResourceSet, compile_fn: CompileFn, options: Any, ids: IdAllocator, lab_id: str | None = None,
    nodes: Sequence[str] | None = None,
) -> dict[str, Compiled]:
    """Compile `nodes` (default: every node of the lab plan, or of the resources) without applying:
    what `flowtui apply --dry-run` prints."""
    if nodes is None:
        if lab_id is not None:
            nodes = [n.name for n in plan_lab(resources, lab_id).nodes]
        else:
            nodes = [n.name for n in resources.nodes]
    state = cluster_state(resources, lab_id)
    return {node: compile_fn(state, node, options, ids) for node in nodes}


def verify_rule_ids(datastore: DesiredState) -> None:
    """ids.jsonl and rules.jsonl are whole and agree (a torn last line is cut); RuleIdError
    otherwise. Called before a change is committed, so a damaged file stops it before the
    datastore moves ahead of what the kernel can be given."""
    with datastore.locked():
        IdAllocator.load(datastore.ids_path, RuleTable.load(datastore.rules_path, cut_torn=True), cut_torn=True)


# ---- checking the recorded table against the live one ------------------------------------------


def fingerprint(table: ir.Table) -> tuple[object, ...]:
    """What must agree between the live table and the one we think we applied: chain names, base
    or not, rule counts; set names, set or map, element counts (kernels print rules and elements in
    their own normal form, so texts cannot be compared with what was sent)."""
    chains = tuple((n, c.hook is not None, len(c.rules)) for n, c in sorted(table.chains.items()))
    sets = tuple((n, s.is_map, len(s.elements)) for n, s in sorted(table.sets.items()))
    return (table.family, table.name, chains, sets)


class Reconciler:
    """Makes the backend's tables match the datastore. Thread-safe; one instance per backend."""

    def __init__(
        self,
        datastore: DesiredState,
        backend: Backend,
        compile_fn: CompileFn,
        options: Any,
        lab_nodes: Callable[[], list[str]],
        *,
        lab_id: str | None = None,
    ) -> None:
        self.datastore = datastore
        self.backend = backend
        self.compile_fn = compile_fn
        self.options = options
        self.lab_nodes = lab_nodes
        self.lab_id = lab_id
        self._applied: dict[str, ir.Table] = {}  # verified: what the backend holds now
        self._layouts: dict[str, tuple[Any, ...]] = {}  # per node: its last compile's ChainLayouts
        self._distrusted: set[str] = set()  # nodes whose records the kernel contradicted: replace whole
        self.records = AppliedRecords(datastore.applied_dir, backend)
        self._ids: tuple[tuple[int, int] | None, IdAllocator] | None = None
        self._rules: tuple[tuple[int, int] | None, RuleTable] | None = None
        self._layout: tuple[tuple[int, str | None, str], dict[str, Gated]] | None = None  # the last compile, per node
        self._state: ClusterState | None = None  # the last compiled state, to derive the next one from
        self._plan: tuple[tuple[object, ...], LabPlan] | None = None  # the lab's plan, and what it was made from
        self._lock = threading.Lock()
        self.wireguard: Any = None  # the last run's `enforcer.wireguard.manager.WireGuardResult`, if any

    def _distrust(self, node: str) -> None:
        """The node's records (or memory) were contradicted by its kernel: read the live table,
        replace it whole, trust nothing recorded until that succeeded."""
        self._distrusted.add(node)
        self._applied.pop(node, None)
        self.records.forget(node)
        self._layout = None

    def applied(self, node: str) -> ir.Table | None:
        """The table `node` holds, as this reconciler last verified or applied it; None: unknown."""
        with self._lock:
            return self._applied.get(node)

    def layouts(self, node: str) -> tuple[Any, ...]:
        """How this reconciler's last compile (or toggle) of `node` laid out its workload chains
        (`CompiledNode.layouts`, for the agent's metrics); () when it compiled none."""
        with self._lock:
            gated = self._layout[1].get(node) if self._layout is not None else None
            found = tuple(getattr(gated, "layouts", ()))
            return found or self._layouts.get(node, ())

    def forget(self, node: str | None = None) -> None:
        """Drop what is known about `node` (or every node): the next run re-checks the backend."""
        with self._lock:
            if node is None:
                self._applied.clear()
            else:
                self._applied.pop(node, None)

    def reconcile(self, nodes: Sequence[str] | None = None, *, full: bool = False) -> ReconcileResult:
        """Enforce the datastore on `nodes` (default: `lab_nodes()`). `full` replaces every table
        whole instead of diffing. Raises only for problems of the whole run (unreadable datastore,
        a lab that cannot be planned); per-node failures are in the result."""
        start = time.perf_counter()
        # one_read: the catalog and the resources come from one etcd read at one revision.
        with self._lock, self.datastore.locked(), self.datastore.one_read():
            catalog = self.datastore.catalog()
            revision = catalog.revision
            self.records.revision = revision
            targets = list(self.lab_nodes() if nodes is None else nodes)
            # What a compile depends on: the stored objects but for their toggles, the lab, and the
            # compiler's options (its layout version among them).
            key = (catalog.layout, self.lab_id, repr(self.options))
            layout = self._layout
            every, light_done = targets, {}
            if not full and layout is None:  # a fresh process (the CLI): try the small records alone
                light = self._light_toggle(revision, targets, key, disabled_keys(catalog.objects.values()), start)
                if light is not None:
                    stale = [n.node for n in light.nodes if n.status == "failed" and n.node in self._distrusted]
                    if not stale:
                        return light
                    # The kernel refused a change the records said would fit (an element they say
                    # is there is not): they are wrong. Those nodes go the long way: the live
                    # table is read, and replaced whole.
                    light_done = {n.node: n for n in light.nodes if n.status != "failed"}
                    targets = stale
            if not full and (layout is None or layout[0] != key or any(n not in layout[1] for n in targets)):
                recorded = self._recorded_layout(targets, key)  # a fresh process: the last run's compile
                if recorded is not None:
                    layout = self._layout = (key, recorded)
            if not full and layout is not None and layout[0] == key and all(n in layout[1] for n in targets):
                toggled = self._toggle(revision, targets, layout[1], disabled_keys(catalog.objects.values()), start)
                if toggled is not None:
                    return toggled
                self._layout = None  # a decision no longer fits the node's budget: compiled whole below
            resources = self._lab_view(self.datastore.resources())
            # Derived from the last compiled state: when only policies changed, the endpoint index,
            # selector sets and the compiler's rendered sets and unchanged policy chains are reused.
            state = self._state.derive(resources) if self._state is not None else ClusterState(
                resources, include_disabled=True)
            self._state = state
            load_ms = _ms(start)
            ids, table = self.rule_ids()
            compiled: dict[str, Compiled] = {}
            results: dict[str, NodeResult] = {}
            times: dict[str, float] = {}
            for node in targets:
                t = time.perf_counter()
                try:
                    compiled[node] = self.compile_fn(state, node, self.options, ids)
                except Exception as exc:  # one node's failure must not stop the others
                    results[node] = NodeResult(node, "failed", compile_ms=_ms(t), error=f"compile: {exc!r}")
                times[node] = _ms(t)
            new_ids = ids.pending
            # Both appended and fsynced before any kernel can log one of these ids.
            ids.persist(self.datastore.ids_path)
            self._ids = (_stat(self.datastore.ids_path), ids)
            rules = self._save_rules(table, [c.rules for c in compiled.values()])
            for node, out in compiled.items():
                results[node] = self._apply(node, out.table, times[node], full)
                if results[node].status != "failed":
                    self._layouts[node] = tuple(getattr(out, "layouts", ()))
            gated = {n: c for n, c in compiled.items() if isinstance(c, Gated) and results[n].status != "failed"}
            kept = layout[1] if layout is not None and layout[0] == key else {}
            self._layout = (key, {**kept, **gated}) if len(gated) == len(compiled) else None
            for node, c in gated.items():
                gates = getattr(c, "gates", None)
                # Decision maps (compiler's `redecide`) depend on toggles beyond the gates: a
                # fresh process must compile for a toggle, so no gate record is kept for them.
                if isinstance(gates, Mapping) and getattr(c, "redecide", None) is None:
                    self.records.save_layout(node, key, gates, c.table)
            nodes_done = tuple(light_done.get(n) or results[n] for n in every)
            result = ReconcileResult(revision, nodes_done, load_ms, _ms(start), rules, new_ids)
        # WireGuard (FelixConfiguration wireguardEnabled/V6) after the tables, only when they went into
        # this lab's kernel; a no-op without root or with WireGuard off; failures land in the result.
        if self.lab_id is not None and getattr(self.backend, "lab_id", None) == self.lab_id:
            from enforcer.wireguard.manager import reconcile_lab_reported

            self.wireguard = reconcile_lab_reported(self.datastore, self.lab_id, every, felix=state.felix)
        return result

    def _lab_view(self, resources: ResourceSet) -> ResourceSet:
        """`lab_view`, planning the lab again only when what a plan reads (nodes, pods, external
        hosts) changed: a policy edit does not re-plan every address of the lab."""
        if self.lab_id is None:
            return resources
        placed = (resources.nodes, resources.pods, resources.external_hosts)
        if self._plan is None or self._plan[0] != placed:
            self._plan = (placed, plan_lab(resources, self.lab_id))
        return lab_resources(resources, self._plan[1])

    def _recorded_layout(self, targets: list[str], key: tuple[int, str | None, str]) -> dict[str, Gated] | None:
        """Every target's recorded table as a compiled node, if each was compiled from layout
        `key`, is the one the backend holds (checked as on first use) and has its gates recorded."""
        from enforcer.nft.compiler import CompiledNode

        found: dict[str, Gated] = {}
        for node in targets:
            meta = self.records.layout(node)
            if meta is None or meta.get("layout") != list(key):
                return None
            try:
                live, _ = self._baseline(node)
            except Exception:  # the namespace is gone, the backend cannot read it: compile instead
                return None
            if live is None or meta.get("base") != self.records.base_id(node) or CLOSED_SET not in live.sets:
                return None
            gates = {(str(k), str(ns), str(n)): int(g) for k, ns, n, g in meta["gates"]}
            found[node] = CompiledNode(node, live, RuleTable(), gates)
        return found

    def _light_toggle(self, revision: int, targets: list[str], key: tuple[int, str | None, str],
                      disabled: frozenset[tuple[str, str, str]], start: float) -> ReconcileResult | None:
        """Only toggles since the recorded compile, and nothing committed in any target's
        namespace since it was recorded (same ruleset generation): the `closed` set's change
        from the small records alone — no live table read back, no whole-table record loaded.
        None when any of that does not hold (the caller takes the longer ways)."""
        from enforcer.nft.compiler import closed_gates

        plans = []
        for node in targets:
            meta = self.records.layout(node)
            state = self.records.state(node)
            if not self.records.unchanged(node, state):  # a toggle killed after its commit: adopted
                state = self.records.committed_state(node, state)
            if (meta is None or meta.get("layout") != list(key) or state is None
                    or not self.records.unchanged(node, state)
                    or state.get("base") != meta.get("base") or CLOSED_SET not in state.get("elements", {})):
                return None
            gates = {(str(k), str(ns), str(n)): int(g) for k, ns, n, g in meta["gates"]}
            want = set(closed_gates(gates, disabled))
            plans.append((node, meta, state, set(state["elements"][CLOSED_SET]), want))
        load_ms = _ms(start)
        table = ir.Table(TABLE_FAMILY, TABLE_NAME, {}, {CLOSED_SET: ir.NftSet(CLOSED_SET, "mark")})
        results = []
        for node, meta, state, now, want in plans:
            counts = (int(meta.get("chains", 0)), int(meta.get("sets", 0)))
            if now == want:
                if state.get("revision") != revision:
                    self.records.write_state(node, str(state["base"]), state["elements"])
                results.append(NodeResult(node, "unchanged", chains=counts[0], sets=counts[1], toggled=True))
                continue
            ops: list[ir.Op] = [ir.SetElements(CLOSED_SET, add=tuple(sorted(want - now)),
                                               delete=tuple(sorted(now - want)))]
            elements = {**state["elements"], CLOSED_SET: sorted(want)}
            t = time.perf_counter()
            try:
                # As the full apply's intent: a crash after the commit and before the state
                # record is adopted on restart, not taken for a foreign change.
                self.records.intend_state(node, str(state["base"]), elements)
                self.backend.apply(node, table, ops)
            except ApplyError as exc:
                if exc.stale:  # the records named an element the kernel does not have: retried the long way
                    self._distrust(node)
                results.append(NodeResult(node, "failed", ops=1, apply_ms=_ms(t), error=exc.message, toggled=True))
                continue
            apply_ms = _ms(t)
            self.records.write_state(node, str(state["base"]), elements)
            results.append(NodeResult(node, "applied", False, 1, counts[0], counts[1], 0.0, apply_ms, toggled=True))
        rules = len(self._rules[1]) if self._rules is not None else 0
        return ReconcileResult(revision, tuple(results), load_ms, _ms(start), rules, 0)

    def _toggle(self, revision: int, targets: list[str], layout: dict[str, Gated],
                disabled: frozenset[tuple[str, str, str]], start: float) -> ReconcileResult | None:
        """Only live toggles changed since the last compile: switch gates (and decide again the
        decision chains of the policies toggled), compile nothing. None when a toggled decision
        changes the node's layout (`LayoutChanged`): nothing applied, the caller compiles."""
        from enforcer.nft.compiler import LayoutChanged

        load_ms = _ms(start)
        tables = {}
        for node in targets:
            t = time.perf_counter()
            try:
                tables[node] = (layout[node].with_disabled(disabled).table, _ms(t))
            except LayoutChanged:
                return None
        results = []
        for node, (table, switch_ms) in tables.items():
            results.append(replace(self._apply(node, table, switch_ms, False), toggled=True))
        rules = len(self._rules[1]) if self._rules is not None else 0
        return ReconcileResult(revision, tuple(results), load_ms, _ms(start), rules, 0)

    def rule_ids(self) -> tuple[IdAllocator, RuleTable]:
        """The persistent allocator and rule table, verified against each other (RuleIdError if
        either is damaged: nothing is compiled or applied then); re-read only when a file changed.
        A torn last line (an append a crash interrupted) is cut off first. The CLI calls this
        before committing a change, so a damaged file stops it before the datastore moves."""
        with self.datastore.locked():  # cutting a torn line is a write
            ids_key, rules_key = _stat(self.datastore.ids_path), _stat(self.datastore.rules_path)
            if self._rules is None or rules_key is None or self._rules[0] != rules_key:
                self._rules = (_stat(self.datastore.rules_path),
                               RuleTable.load(self.datastore.rules_path, cut_torn=True))
                self._ids = None
            if self._ids is None or ids_key is None or self._ids[0] != ids_key:
                allocator = IdAllocator.load(self.datastore.ids_path, self._rules[1], cut_torn=True,
                                             lease=self.datastore.id_lease)
                self._ids = (_stat(self.datastore.ids_path), allocator)
            return self._ids[1], self._rules[1]

    def _save_rules(self, table: RuleTable, tables: list[RuleTable]) -> int:
        """Append the compiled refs rules.jsonl lacks (fsynced); a known id never changes meaning."""
        new: dict[int, RuleRef] = {}
        for compiled in tables:
            for ref in table.new_refs(compiled):
                if new.setdefault(ref.id, ref) != ref:
                    raise RuleIdError(f"rule id {ref.id} compiled for two rules")
        if new:
            self.datastore.publish_rules(list(new.values()))  # a shared store: other machines resolve them too
            RuleTable.append(self.datastore.rules_path, new.values())
            table = table.merged(new)
            self._rules = (_stat(self.datastore.rules_path), table)
        return len(table)

    def _apply(self, node: str, table: ir.Table, compile_ms: float, full: bool) -> NodeResult:
        verify_ms = 0.0

        def result(status: Status, whole: bool = False, ops: int = 0, apply_ms: float = 0.0,
                   error: str | None = None) -> NodeResult:
            return NodeResult(node, status, whole, ops, len(table.chains), len(table.sets), compile_ms, apply_ms, error,
                              verify_ms)

        t = time.perf_counter()
        try:
            old, existing = (None, self.backend.current(node) is not None) if full else self._baseline(node, table)
        except Exception as exc:  # the node's namespace is missing, the backend cannot read it...
            return result("failed", error=f"reading the live table: {exc}")
        verify_ms = _ms(t)
        ops: list[ir.Op] | None = None
        if old is not None:
            try:
                ops = ir.diff(old, table)
            except ValueError:  # a chain changes hook or a set its type: replace the table
                ops = None
        whole = ops is None
        if ops is None:
            ops = ir.full(table, existing=existing)
        if not ops:
            if not self.records.stamped(node):  # the record names the revision now enforced
                self.records.save(node, table)
            return result("unchanged")
        t = time.perf_counter()
        try:
            self.records.intend(node, table)  # a crash between the kernel's commit and `save` adopts it
            self.backend.apply(node, table, ops)
        except ApplyError as exc:
            if not exc.stale:
                self._applied.pop(node, None)  # re-check the backend next time
                return result("failed", whole, len(ops), _ms(t), exc.message)
            self._distrust(node)  # what we diffed from is not what the kernel holds
            if whole:
                return result("failed", whole, len(ops), _ms(t), exc.message)
            # A diff the kernel refuses (ENOENT: an element or chain the baseline has and the
            # kernel does not): the baseline was wrong. Replace the table whole, once.
            try:
                ops = ir.full(table, existing=self.backend.current(node) is not None)
                whole = True
                self.records.intend(node, table)
                self.backend.apply(node, table, ops)
            except Exception as again:
                message = again.message if isinstance(again, ApplyError) else str(again)
                return result("failed", whole, len(ops), _ms(t), message)
        apply_ms = _ms(t)
        self._distrusted.discard(node)
        self._applied[node] = table
        self.records.save(node, table)
        return result("applied", whole, len(ops), apply_ms)

    def _baseline(self, node: str, target: ir.Table | None = None) -> tuple[ir.Table | None, bool]:
        """(the table to diff from, or None for a whole replace; whether a table exists). `target`:
        the table about to be applied, adopted as the live one when the last apply committed it
        and stopped before recording it (`AppliedRecords.committed_intent`)."""
        if node in self._distrusted:
            return None, self.backend.current(node) is not None
        known = self._applied.get(node)
        if known is not None:
            return known, True
        state = self.records.state(node)
        if self.records.unchanged(node, state):
            # Nothing was committed in the namespace since we recorded it: no need to read the
            # live table back (seconds at 100k rules).
            recorded = self.records.table(node, state)
            if recorded is not None:
                self._applied[node] = recorded
                return recorded, True
        live = self.backend.current(node)
        if live is None:
            return None, False
        recorded = self.records.table(node)
        if recorded is not None and fingerprint(recorded) == fingerprint(live):
            self._applied[node] = recorded
            return recorded, True
        if (target is not None and fingerprint(target) == fingerprint(live)
                and self.records.committed_intent(node, target)):
            self._applied[node] = target  # killed after the kernel's commit, before the record
            return target, True
        return None, True


__all__ = [
    "CompileFn",
    "Compiled",
    "NodeResult",
    "ReconcileResult",
    "Reconciler",
    "cluster_state",
    "compile_nodes",
    "fingerprint",
    "verify_rule_ids",
    "table_from_json",
    "table_to_json",
]
