"""Evaluator properties over random valid clusters (`enforcer.synth`): decisions are deterministic,
independent of input order, unaffected by memoisation and by staged or disabled policies, and the
JSON document always has the README's shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import fields, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.evaluate import Decision, Evaluator, Flow, Hit, decision_json
from enforcer.model import POLICY_KINDS, ResourceSet
from enforcer.resolve import ClusterState
from enforcer.synth import SynthSpec, synth_flows, synth_resources

FLOWS = 150
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

specs = st.builds(
    SynthSpec,
    nodes=st.integers(1, 3),
    namespaces=st.integers(1, 3),
    pods=st.integers(2, 10),
    externals=st.integers(1, 3),
    policies=st.integers(0, 14),
    rules_per_policy=st.integers(0, 4),
    host_endpoints=st.booleans(),
    tiers=st.booleans(),
    staged=st.booleans(),
    ipv6=st.booleans(),
)
seeds = st.integers(0, 2**32 - 1)


def _hit(h: Hit | None) -> tuple[object, ...] | None:
    return None if h is None else (h.kind, h.namespace, h.name, h.tier, h.direction, h.rule, h.action)


def summary(d: Decision) -> tuple[object, ...]:
    """Verdict, attribution, logs, pending and the stages' outcomes: everything a decision says."""
    e, p = d.enforced, d.pending
    return (
        e.verdict, _hit(e.decided_by), e.failsafe, tuple(map(_hit, e.logged)),
        p.verdict, _hit(p.decided_by), tuple(map(_hit, p.logged)),
        tuple((r.stage.family, r.stage.direction, r.outcome, _hit(r.hit), r.failsafe, r.skipped) for r in e.stages),
    )


def decisions(res: ResourceSet, flows: list[Flow], *, explain: bool = False) -> list[tuple[object, ...]]:
    ev = Evaluator(ClusterState(res))
    return [summary(ev.decide(f, explain=explain)) for f in flows]


def world(spec: SynthSpec, seed: int) -> tuple[ResourceSet, list[Flow]]:
    res = synth_resources(seed, spec)
    return res, synth_flows(res, seed ^ 0x5EED, FLOWS, ipv6_share=0.3 if spec.ipv6 else 0.0)


def shuffled(res: ResourceSet, rng: random.Random) -> ResourceSet:
    """Every tuple of the ResourceSet in a random order."""
    changes: dict[str, Any] = {}
    for f in fields(res):
        value = getattr(res, f.name)
        if isinstance(value, tuple):
            items = list(value)
            rng.shuffle(items)
            changes[f.name] = tuple(items)
    return replace(res, **changes)


@SETTINGS
@given(spec=specs, seed=seeds)
def test_deterministic(spec: SynthSpec, seed: int) -> None:
    res, flows = world(spec, seed)
    assert decisions(res, flows) == decisions(synth_resources(seed, spec), flows)


@SETTINGS
@given(spec=specs, seed=seeds, order_seed=seeds)
def test_independent_of_input_order(spec: SynthSpec, seed: int, order_seed: int) -> None:
    res, flows = world(spec, seed)
    assert decisions(shuffled(res, random.Random(order_seed)), flows) == decisions(res, flows)


@SETTINGS
@given(spec=specs, seed=seeds)
def test_memoisation_and_explanation_are_transparent(spec: SynthSpec, seed: int) -> None:
    res, flows = world(spec, seed)
    ev = Evaluator(ClusterState(res))
    warm = [summary(ev.decide(f)) for f in flows]
    again = [summary(ev.decide(f)) for f in reversed(flows)][::-1]  # all memo hits now
    explained = [summary(ev.decide(f, explain=True)) for f in flows]
    fresh = decisions(res, flows, explain=True)
    assert warm == again == explained == fresh
    for f in flows[:20]:  # a memo hit still reports the flow that was asked about
        assert ev.decide(f).flow == f


@SETTINGS
@given(spec=specs, seed=seeds)
def test_staged_policies_only_change_the_pending_verdict(spec: SynthSpec, seed: int) -> None:
    res, flows = world(spec, seed)
    without = replace(res, policies=tuple(p for p in res.policies if not p.staged))
    with_staged = decisions(res, flows)
    enforced_only = decisions(without, flows)
    for a, b in zip(with_staged, enforced_only, strict=True):
        assert a[:4] == b[:4] and a[7] == b[7]  # enforced verdict, attribution, logs, stages
        assert b[4:6] == b[:2]  # no staged policy: pending is the enforced verdict


@SETTINGS
@given(spec=specs, seed=seeds, pick_seed=seeds)
def test_disabled_policies_are_as_if_absent(spec: SynthSpec, seed: int, pick_seed: int) -> None:
    res, flows = world(spec, seed)
    rng = random.Random(pick_seed)
    off = {p.key for p in res.policies if rng.random() < 0.4}
    disabled = replace(res, policies=tuple(replace(p, disabled=p.key in off) for p in res.policies))
    absent = replace(res, policies=tuple(p for p in res.policies if p.key not in off))
    assert decisions(disabled, flows) == decisions(absent, flows)


# --------------------------------------------------------------------------------------------
# The `flowtui eval -o json` document (README "JSON output")

HIT_KEYS = {"kind", "namespace", "name", "tier", "direction", "rule", "action"}
KINDS = {*POLICY_KINDS, "Profile"}


def _opt(value: object, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def check_hit(hit: object, *, logged: bool = False) -> None:
    if hit is None and not logged:
        return
    assert isinstance(hit, dict)
    keys = HIT_KEYS - {"tier", "action"} if logged else HIT_KEYS
    assert set(hit) == keys
    assert hit["kind"] in KINDS
    assert _opt(hit["namespace"], str) and isinstance(hit["name"], str) and hit["name"]
    assert hit["direction"] in ("ingress", "egress")
    assert isinstance(hit["rule"], int) and not isinstance(hit["rule"], bool) and hit["rule"] >= -1
    if not logged:
        assert isinstance(hit["tier"], str) and hit["tier"]
        assert hit["action"] in ("Allow", "Deny", "Pass")
        assert (hit["kind"] == "Profile") == (hit["tier"] == "__PROFILE__")


def check_document(doc: dict[str, Any]) -> None:
    assert list(doc) == ["verdict", "decided_by", "failsafe", "logged", "pending", "flow", "trace"]
    assert doc["verdict"] in ("allow", "deny")
    check_hit(doc["decided_by"])
    if doc["decided_by"] is not None:
        assert doc["decided_by"]["action"] == doc["verdict"].capitalize()
    assert isinstance(doc["failsafe"], bool)
    assert isinstance(doc["logged"], list)
    for entry in doc["logged"]:
        check_hit(entry, logged=True)
    assert set(doc["pending"]) == {"verdict", "decided_by"} and doc["pending"]["verdict"] in ("allow", "deny")
    check_hit(doc["pending"]["decided_by"])
    flow = doc["flow"]
    assert list(flow) == ["src", "dst", "protocol", "src_port", "dst_port", "icmp_type", "icmp_code", "from", "to"]
    assert all(isinstance(flow[k], str) for k in ("src", "dst", "from", "to"))
    assert isinstance(flow["protocol"], int)
    assert all(_opt(flow[k], int) for k in ("src_port", "dst_port", "icmp_type", "icmp_code"))
    assert isinstance(doc["trace"], list)
    for stage in doc["trace"]:
        assert list(stage) == ["stage", "direction", "endpoint", "node", "result", "reason", "hit", "failsafe",
                               "skipped", "reply", "steps"]
        assert stage["stage"] in ("workload", "untracked", "prednat", "normal", "forward", "to-host")
        assert stage["direction"] in ("ingress", "egress")
        assert _opt(stage["endpoint"], str) and _opt(stage["node"], str)
        assert stage["result"] in ("allow", "deny", "continue")
        assert isinstance(stage["reason"], str) and stage["reason"]
        check_hit(stage["hit"])
        assert isinstance(stage["failsafe"], bool) and isinstance(stage["skipped"], bool)
        assert isinstance(stage["steps"], list) and all(isinstance(s, str) for s in stage["steps"])
    if doc["trace"]:
        last = doc["trace"][-1]["result"]
        assert last == "deny" if doc["verdict"] == "deny" else last != "deny"
    assert json.loads(json.dumps(doc)) == doc  # plain JSON types only


@SETTINGS
@given(spec=specs, seed=seeds)
def test_json_document_matches_the_readme_schema(spec: SynthSpec, seed: int) -> None:
    res, flows = world(spec, seed)
    ev = Evaluator(ClusterState(res))
    for flow in flows[:60]:
        check_document(decision_json(ev.decide(flow, explain=True)))
        check_document(decision_json(ev.decide(flow)))
