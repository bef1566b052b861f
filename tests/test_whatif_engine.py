"""The what-if engine decides every row exactly as `Evaluator.decide` does one by one.

Property tests over random synthetic clusters (`enforcer.synth`) and random flow frames
(cluster, outside and non-addresses, both families, every protocol kind, ICMP types including
neighbour discovery, failsafe and random ports, nulls, out-of-range values) — for one policy set
(`decide_frame`), and for random edits of it (`compare`, both the affected-only evaluation and
`full=True`): every evaluated key must agree with the oracle, and every key the engine skipped
must be one whose decision the oracle says did not change.
"""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.model import NetworkSet, ResourceSet, Rule, Tier
from enforcer.synth import SynthSpec, synth_resources
from flowtui.whatif import keys
from flowtui.whatif.engine import VERDICTS, compare, decide_frame
from flowtui.whatif.report import build_report
from tests.test_whatif_fixtures import cluster, one_by_one, random_frame

SPECS = [SynthSpec(), SynthSpec(nodes=3, pods=9, policies=14, rules_per_policy=4),
         SynthSpec(host_endpoints=False, tiers=False, ipv6=False, policies=6)]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def engine_rows(frame: pl.DataFrame, res: ResourceSet) -> list[tuple[object, ...]]:
    decided = decide_frame(frame, res)
    return [decided.row(i) for i in range(frame.height)]


@SETTINGS
@given(seed=st.integers(0, 100_000), spec=st.sampled_from(SPECS))
def test_decide_frame_equals_one_by_one(seed: int, spec: SynthSpec) -> None:
    res = synth_resources(seed, spec)
    frame = random_frame(res, seed, 400)
    assert engine_rows(frame, res) == one_by_one(frame, res)


def test_decide_frame_equals_one_by_one_larger() -> None:
    res = synth_resources(7, SynthSpec(nodes=4, namespaces=3, pods=40, externals=3, policies=80))
    frame = random_frame(res, 7, 4000)
    decided = decide_frame(frame, res)
    assert decided.keys < frame.height  # classes do reduce
    assert [decided.row(i) for i in range(frame.height)] == one_by_one(frame, res)


@pytest.mark.parametrize("encoding", ["categorical", "enum"])
def test_dictionary_encoded_addresses(encoding: str) -> None:
    res = synth_resources(3)
    frame = random_frame(res, 3, 500)
    if encoding == "categorical":
        encoded = frame.with_columns(pl.col("src_ip", "dst_ip").cast(pl.Categorical))
    else:
        values = pl.concat([frame["src_ip"], frame["dst_ip"]]).unique().drop_nulls().to_list()
        encoded = frame.with_columns(pl.col("src_ip", "dst_ip").cast(pl.Enum(values)))
    assert engine_rows(encoded, res) == one_by_one(frame, res)


def test_wide_keys_fall_back_to_numbered_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    res = synth_resources(11)
    frame = random_frame(res, 11, 300)
    real_prod = np.prod
    monkeypatch.setattr(keys.np, "prod", lambda *a, **k: 2.0**64 if a and len(a[0]) > 4 else real_prod(*a, **k))
    assert engine_rows(frame, res) == one_by_one(frame, res)


def test_rows_share_keys() -> None:
    """Equal flows from different replicas and source ports fold into one evaluation."""
    res = cluster()
    rows = [("10.244.1.10", "10.244.2.20", 6, 40000 + i, 8080, None, None) for i in range(500)]
    rows += [("10.244.2.10", "10.244.2.20", 6, 50000 + i, 8080, None, None) for i in range(500)]
    frame = pl.DataFrame(rows, schema=["src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type",
                                       "icmp_code"], orient="row")
    decided = decide_frame(frame, res)
    assert decided.keys == 2  # web-1 (node-a) and web-2 (node-b, same node as api) differ in path
    assert [decided.row(i) for i in range(frame.height)] == one_by_one(frame, res)


# --------------------------------------------------------------------------------------------
# Two policy sets


def random_edit(res: ResourceSet, seed: int, spec: SynthSpec) -> ResourceSet:
    """Replace, delete, disable, stage and flip policies; sometimes change a tier, sometimes the
    cluster itself (a network set, a pod's labels)."""
    r = random.Random(seed)
    other = synth_resources(seed + 1, spec).policies
    pols = list(res.policies)
    for _ in range(r.randint(0, 3)):
        if pols:
            i = r.randrange(len(pols))
            pols[i] = replace(r.choice(other), name=pols[i].name)
    for _ in range(r.randint(0, 2)):
        if pols:
            del pols[r.randrange(len(pols))]
    for i, p in enumerate(pols):
        if r.random() < 0.1:
            pols[i] = replace(p, disabled=not p.disabled)
        elif r.random() < 0.15 and (p.ingress or p.egress):
            flip = {"Allow": "Deny", "Deny": "Allow", "Pass": "Allow", "Log": "Deny"}
            rules = p.ingress or p.egress
            first: Rule = replace(rules[0], action=flip[rules[0].action])  # type: ignore[arg-type]
            pols[i] = replace(p, ingress=(first, *p.ingress[1:])) if p.ingress else \
                replace(p, egress=(first, *p.egress[1:]))
    if r.random() < 0.5:
        extra = r.choice(other)
        kind = "StagedGlobalNetworkPolicy" if extra.namespace is None else "StagedNetworkPolicy"
        pols.append(replace(extra, kind=kind, name=f"staged-{seed}", staged_action="Set"))  # type: ignore[arg-type]
    out = replace(res, policies=tuple(pols))
    if out.tiers and r.random() < 0.3:
        t = out.tiers[0]
        out = replace(out, tiers=(Tier(t.name, t.order, "Pass" if t.default_action == "Deny" else "Deny"),
                                  *out.tiers[1:]))
    if r.random() < 0.2 and res.external_hosts:
        ext = res.external_hosts[0]
        nets = tuple(__import__("ipaddress").ip_network(a) for a in ext.addresses)
        out = replace(out, network_sets=(*out.network_sets, NetworkSet("new-blocked", None,
                                                                       (("netset", "blocked"),), nets)))
    elif r.random() < 0.15 and res.pods:
        pod = res.pods[0]
        out = replace(out, pods=(replace(pod, labels=(("app", "web"), ("tier", "data"))), *res.pods[1:]))
    return out


def check_comparison(frame: pl.DataFrame, base: ResourceSet, edited: ResourceSet, *, full: bool) -> None:
    cmp = compare(frame, base, edited, full=full)
    before, after = one_by_one(frame, base), one_by_one(frame, edited)
    idx = cmp.keyed.key_idx
    expected_cats = {name: 0 for name in ("newly_denied", "newly_allowed", "attribution_changed",
                                          "pending_denied", "pending_allowed", "pending_attribution")}
    for i in range(frame.height):
        k = int(idx[i])
        b, a = before[i], after[i]
        if b[0] is None:
            assert cmp.keyed.flows[k] is None
            continue
        if cmp.base.verdict[k] >= 0:
            assert (VERDICTS[int(cmp.base.verdict[k])], cmp.hits[int(cmp.base.hit[k])]) == b[:2], i
        else:  # not evaluated: the edit cannot have changed it
            assert not full and b[:2] == a[:2], i
        if cmp.edited.verdict[k] >= 0:
            got = (VERDICTS[int(cmp.edited.verdict[k])], cmp.hits[int(cmp.edited.hit[k])],
                   VERDICTS[int(cmp.edited.pending_verdict[k])], cmp.hits[int(cmp.edited.pending_hit[k])])
            assert got == a, i
        else:  # not evaluated: no staged policy on its path
            assert not full and a[2:] == a[:2], i
        if b[0] == "allow" and a[0] == "deny":
            expected_cats["newly_denied"] += 1
        elif b[0] == "deny" and a[0] == "allow":
            expected_cats["newly_allowed"] += 1
        elif b[1] != a[1]:
            expected_cats["attribution_changed"] += 1
        if a[0] == "allow" and a[2] == "deny":
            expected_cats["pending_denied"] += 1
        elif a[0] == "deny" and a[2] == "allow":
            expected_cats["pending_allowed"] += 1
        elif a[1] != a[3]:
            expected_cats["pending_attribution"] += 1
    report = build_report(cmp, limit=0)
    assert {name: c.flows for name, c in report.categories.items()} == expected_cats
    for cat in report.categories.values():
        assert sum(g.flows for g in cat.groups) == cat.flows


@SETTINGS
@given(seed=st.integers(0, 100_000), spec=st.sampled_from(SPECS), full=st.booleans())
def test_compare_equals_one_by_one(seed: int, spec: SynthSpec, full: bool) -> None:
    base = synth_resources(seed, spec)
    edited = random_edit(base, seed, spec)
    check_comparison(random_frame(base, seed, 300), base, edited, full=full)


def test_compare_without_edits_reports_only_pending() -> None:
    res = synth_resources(5, SynthSpec(policies=20))
    frame = random_frame(res, 5, 500)
    cmp = compare(frame, res, res)
    assert not (cmp.base.verdict >= 0).any()  # nothing changed: nothing to evaluate twice
    check_comparison(frame, res, res, full=False)


def test_whatif_is_headless() -> None:
    """Importing the engine, readers, proposals and the CLI module never loads Textual."""
    probe = ("import sys, flowtui.whatif.engine, flowtui.whatif.report, flowtui.whatif.propose, "
             "flowtui.whatif.pcap, flowtui.whatif.frames, flowtui.whatif.storeread, flowtui.cli.whatif; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=True)
    assert done.stdout.strip() == "[]"


def test_empty_frames_and_row_output() -> None:
    from flowtui.whatif.frames import empty_frame

    res = cluster()
    assert build_report(compare(empty_frame(), res, res)).rows == 0
    assert decide_frame(empty_frame(), res).keys == 0
    frame = pl.DataFrame({"src_ip": ["10.244.2.40", "nope"], "dst_ip": ["10.244.1.30", "10.244.1.30"],
                          "proto": [6, 6], "dst_port": [5432, 5432]})
    out = decide_frame(frame, res).to_frame()
    assert out.rows() == [("deny", "gnp/deny-dev-to-db ingress rule 0 (Deny)", "deny",
                           "gnp/deny-dev-to-db ingress rule 0 (Deny)"), (None, "default", None, "default")]


def test_paired_sets_share_what_an_edit_cannot_change() -> None:
    """The speed of a what-if rests on this sharing (never wrong, only slower without it)."""
    from enforcer.resolve.state import DerivedApplicable
    from flowtui.whatif.edits import diff
    from flowtui.whatif.sharing import SharedRules, paired_evaluators, paired_states

    base = synth_resources(2)
    edited = random_edit(base, 4, SynthSpec())
    changes = diff(base, edited)
    assert not changes.cluster_changed
    b, e = paired_states(base, edited)
    assert e._ipsets is b._ipsets and e._named is b._named and e.index is b.index
    assert isinstance(e._applicable, DerivedApplicable)
    eb, ee = paired_evaluators(b, e, changes)
    assert isinstance(eb._rules, SharedRules) and isinstance(ee._rules, SharedRules)
    assert eb._rules.shared is ee._rules.shared
