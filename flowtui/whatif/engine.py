"""The what-if engine: decide every recorded flow under one or two policy sets, fast.

A flow frame is reduced to keys (`keys.py`: vectorised, with equivalence classes of addresses
and ports from `classes.py`); for every key the evaluator (`enforcer.evaluate.Evaluator.decide`)
decides one concrete flow built from class representatives. Every row with that key has, by
construction, the same answer to every test the evaluator makes, so the same enforced and
pending verdicts and the same deciding rules. `decide_frame` returns those per row; `compare`
does it for two policy sets.

`compare` evaluates only the keys an edit can affect: unless the edit touches more than policies
and tiers, a flow's decision can change only if a changed policy (either version) selects one of
the endpoints on its path (the two ends and the host endpoints of their nodes). Pending verdicts
likewise differ from enforced ones only where a staged policy selects such an endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from enforcer.evaluate import Evaluator, Flow, Hit
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState, Endpoint
from enforcer.selector import Selector
from flowtui.whatif.classes import HEP_INTERFACES, AddressClasses
from flowtui.whatif.edits import Changes, diff
from flowtui.whatif.keys import (
    I64,
    U64,
    FrameSource,
    Keyed,
    NoProgress,
    Progress,
    Timings,
    reduce_frame,
)
from flowtui.whatif.sharing import paired_evaluators, paired_states

__all__ = [
    "ALLOW", "DENY", "I64", "U64", "UNKNOWN", "VERDICTS", "Comparison", "FrameSource", "HitTable", "Keyed",
    "NoProgress", "Outcomes", "Progress", "RowDecisions", "Timings", "compare", "decide_frame", "evaluate_keys",
    "hit_label", "reduce_frame",
]

ALLOW, DENY, UNKNOWN = 0, 1, -1
VERDICTS = {ALLOW: "allow", DENY: "deny"}


# --------------------------------------------------------------------------------------------
# Keys -> decisions


class HitTable:
    """Hits numbered for columnar storage: id 0 is "no deciding rule"."""

    def __init__(self) -> None:
        self.hits: list[Hit | None] = [None]
        self._ids: dict[Hit, int] = {}

    def id(self, hit: Hit | None) -> int:
        if hit is None:
            return 0
        found = self._ids.get(hit)
        if found is None:
            found = self._ids[hit] = len(self.hits)
            self.hits.append(hit)
        return found

    def __getitem__(self, i: int) -> Hit | None:
        return self.hits[i]


@dataclass
class Outcomes:
    """Per key: enforced and pending verdict (ALLOW, DENY, UNKNOWN = not evaluated) and hit id."""

    verdict: npt.NDArray[np.int8]
    hit: npt.NDArray[np.int32]
    pending_verdict: npt.NDArray[np.int8]
    pending_hit: npt.NDArray[np.int32]

    @classmethod
    def empty(cls, n: int) -> Outcomes:
        return cls(np.full(n, UNKNOWN, np.int8), np.zeros(n, np.int32), np.full(n, UNKNOWN, np.int8),
                   np.zeros(n, np.int32))


def evaluate_keys(
    evaluator: Evaluator,
    flows: Sequence[Flow | None],
    which: npt.NDArray[np.bool_] | None,
    hits: HitTable,
    progress: Progress | None = None,
    label: str = "evaluating",
) -> Outcomes:
    """Decide the representative flow of every selected key with the evaluator."""
    progress = progress or NoProgress()
    out = Outcomes.empty(len(flows))
    todo = [k for k, f in enumerate(flows) if f is not None and (which is None or which[k])]
    progress.phase(f"{label} {len(todo):,} flow classes", len(todo))
    step = max(1, len(todo) // 200)
    for done, k in enumerate(todo, 1):
        flow = flows[k]
        assert flow is not None
        d = evaluator.decide(flow)
        out.verdict[k] = DENY if d.enforced.verdict == "deny" else ALLOW
        out.hit[k] = hits.id(d.enforced.decided_by)
        out.pending_verdict[k] = DENY if d.pending.verdict == "deny" else ALLOW
        out.pending_hit[k] = hits.id(d.pending.decided_by)
        if done % step == 0:
            progress.advance(step)
    progress.advance(len(todo) % step)
    return out


# --------------------------------------------------------------------------------------------
# One policy set: per-row decisions


@dataclass
class RowDecisions:
    """Per row of the frame: enforced/pending verdict (ALLOW/DENY/UNKNOWN) and hit ids."""

    verdict: npt.NDArray[np.int8]
    hit: npt.NDArray[np.int32]
    pending_verdict: npt.NDArray[np.int8]
    pending_hit: npt.NDArray[np.int32]
    hits: HitTable
    keys: int
    timings: Timings

    def row(self, i: int) -> tuple[str | None, Hit | None, str | None, Hit | None]:
        return (VERDICTS.get(int(self.verdict[i])), self.hits[int(self.hit[i])],
                VERDICTS.get(int(self.pending_verdict[i])), self.hits[int(self.pending_hit[i])])

    def to_frame(self) -> pl.DataFrame:
        labels = pl.Series([hit_label(h) for h in self.hits.hits], dtype=pl.String)
        names = pl.Series(["allow", "deny", None], dtype=pl.String)
        return pl.DataFrame({
            "verdict": names.gather(np.where(self.verdict < 0, 2, self.verdict)),
            "decided_by": labels.gather(self.hit),
            "pending_verdict": names.gather(np.where(self.pending_verdict < 0, 2, self.pending_verdict)),
            "pending_decided_by": labels.gather(self.pending_hit),
        })


def decide_frame(frame: pl.DataFrame, resources: ResourceSet | ClusterState,
                 progress: Progress | None = None) -> RowDecisions:
    """Every row decided under one policy set, exactly as `Evaluator.decide` would one by one."""
    timings = Timings()
    state = resources if isinstance(resources, ClusterState) else ClusterState(resources)
    keyed = reduce_frame(frame, [state], progress, timings)
    hits = HitTable()
    out = evaluate_keys(Evaluator(state), keyed.flows, None, hits, progress)
    timings.lap("evaluate")
    idx = keyed.key_index()
    result = RowDecisions(out.verdict[idx], out.hit[idx], out.pending_verdict[idx], out.pending_hit[idx],
                          hits, len(keyed.keys), timings)
    timings.lap("join")
    return result


# --------------------------------------------------------------------------------------------
# Two policy sets


def hit_label(hit: Hit | None, verdict: str | None = None) -> str:
    """`gnp/deny-db ingress rule 0 (Deny)`, `np/prod/web end of tier security (Deny)`,
    `profile kns.prod rule 0 (Allow)`; without a hit, the default that decided."""
    if hit is None:
        if verdict == "allow":
            return "no policy (profile default allow)"
        if verdict == "deny":
            return "default deny (no profile allowed)"
        return "default"
    if hit.kind == "Profile":
        return f"profile {hit.name} rule {hit.rule} ({hit.action})"
    from enforcer.model import SHORT_KIND

    short = SHORT_KIND.get(hit.kind, hit.kind)
    ident = f"{short}/{hit.namespace}/{hit.name}" if hit.namespace else f"{short}/{hit.name}"
    where = f"end of tier {hit.tier}" if hit.rule < 0 else f"{hit.direction} rule {hit.rule}"
    return f"{ident} {where} ({hit.action})"


def path_endpoints(state: ClusterState, addrs: AddressClasses, index: int) -> list[Endpoint]:
    """The endpoints whose policy can decide flows from or to address `index`: its pod, and the
    host endpoints of its node."""
    ip = addrs.ips[index]
    if ip is None:
        return []
    owner = state.owners.get(ip)
    if owner is None:
        return []
    kind, name = owner
    out: list[Endpoint] = []
    node: str | None = None
    if kind == "pod":
        ep = state.pods_by_ref[name]
        out.append(ep)
        node = ep.node
    elif kind == "node":
        node = name
    if node is not None:
        for iface in HEP_INTERFACES:
            hep = state.host_endpoint_for(node, iface)
            if hep is not None:
                out.append(hep)
    return out


def class_flags(addrs: AddressClasses, test: Callable[[int], bool]) -> npt.NDArray[np.bool_]:
    """Per class, `test` of its representative address (any will do: members are equivalent)."""
    flags = np.zeros(addrs.count, dtype=bool)
    for c in range(1, addrs.count):
        reps = addrs.reps[c]
        if reps:
            flags[c] = test(next(iter(reps.values())))
    return flags


def selected_by(state: ClusterState, addrs: AddressClasses, selectors: Sequence[Selector]) -> npt.NDArray[np.bool_]:
    def test(i: int) -> bool:
        return any(sel.matches(ep.labels) for ep in path_endpoints(state, addrs, i) for sel in selectors)

    return class_flags(addrs, test)


def staged_on_path(state: ClusterState, addrs: AddressClasses) -> npt.NDArray[np.bool_]:
    if not any(p.staged for p in state.active_policies):
        return np.zeros(addrs.count, dtype=bool)

    def test(i: int) -> bool:
        return any(p.staged for ep in path_endpoints(state, addrs, i) for p in state.applicable_policies(ep))

    return class_flags(addrs, test)


@dataclass
class Comparison:
    """Both sets' outcomes per key of a frame (UNKNOWN where a key needed no evaluation)."""

    keyed: Keyed
    base: Outcomes
    edited: Outcomes
    enforced_affected: npt.NDArray[np.bool_]  # per key: could the enforced decision differ?
    pending_affected: npt.NDArray[np.bool_]  # per key: could the pending decision differ from enforced?
    hits: HitTable
    changes: Changes
    timings: Timings
    pending: bool = True  # pending verdicts were looked at


def compare(
    frame: FrameSource,
    base: ResourceSet,
    edited: ResourceSet,
    *,
    pending: bool = True,
    full: bool = False,
    progress: Progress | None = None,
) -> Comparison:
    """Decide a flow frame (or a function that reads one) under `base` and `edited`, evaluating
    only keys whose outcome can differ (every key with `full`)."""
    timings = Timings()
    progress = progress or NoProgress()
    changes = diff(base, edited)
    base_state, edited_state = paired_states(base, edited)
    timings.lap("states")
    keyed = reduce_frame(frame, [base_state, edited_state], progress, timings)
    addrs = keyed.addresses
    progress.phase("finding affected flow classes", None)
    if full or changes.cluster_changed:
        cls_enforced = np.ones(addrs.count, dtype=bool)
    elif changes.none:
        cls_enforced = np.zeros(addrs.count, dtype=bool)
    else:
        cls_enforced = selected_by(edited_state, addrs, changes.selectors())
    cls_pending = staged_on_path(edited_state, addrs) if pending else np.zeros(addrs.count, dtype=bool)
    if full and pending:
        cls_pending = np.ones(addrs.count, dtype=bool)
    enforced_affected = cls_enforced[keyed.key_src_cls] | cls_enforced[keyed.key_dst_cls]
    pending_affected = cls_pending[keyed.key_src_cls] | cls_pending[keyed.key_dst_cls]
    timings.lap("affected")
    hits = HitTable()
    base_ev, edited_ev = paired_evaluators(base_state, edited_state, changes)
    base_out = evaluate_keys(base_ev, keyed.flows, enforced_affected, hits, progress,
                             "evaluating (current set)")
    timings.lap("evaluate current")
    edited_out = evaluate_keys(edited_ev, keyed.flows, enforced_affected | pending_affected, hits,
                               progress, "evaluating (edited set)")
    timings.lap("evaluate edited")
    return Comparison(keyed, base_out, edited_out, enforced_affected, pending_affected, hits, changes, timings,
                      pending)
