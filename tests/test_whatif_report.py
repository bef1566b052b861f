"""What a what-if reports: categories, groups per (source, destination, service), counts (weighted
by `count`), examples, the rules before and after, JSON and the table."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl

from enforcer.loader import load_text
from flowtui.whatif.edits import apply_edits, describe_changes, parse_deletion
from flowtui.whatif.engine import compare
from flowtui.whatif.report import WhatIfReport, build_report, render_table
from tests.test_whatif_fixtures import SHOP_TRAFFIC, cluster, flow_frame

EDIT = """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-dns-out}
spec:
  order: 5
  selector: app == 'web'
  types: [Egress]
  egress:
  - action: Deny
    protocol: UDP
    destination: {ports: [53]}
  - action: Allow
"""


def run(frame: pl.DataFrame, edit: str = EDIT, deletions: tuple[str, ...] = (), **kw: object) -> WhatIfReport:
    base = cluster()
    edited = apply_edits(base, load_text(edit, "edit.yaml") if edit else None, [parse_deletion(d) for d in deletions])
    return build_report(compare(frame, base, edited), edits=describe_changes(base, edited), **kw)  # type: ignore[arg-type]


def test_newly_denied_group_with_examples_and_rules() -> None:
    report = run(flow_frame(SHOP_TRAFFIC, repeat=4))
    denied = report.categories["newly_denied"]
    assert denied.flows == 4 and denied.groups_total == 1
    group = denied.groups[0]
    assert (group.source, group.destination, group.service) == ("shop/web-1", "external:internet", "udp/53")
    assert group.before.verdict == "allow" and group.before.decided_by is None
    assert group.after.decided_by is not None and group.after.decided_by.name == "no-dns-out"
    assert group.after.decided_by.rule == 0 and group.after.decided_by.action == "Deny"
    assert len(group.examples) == 3
    assert group.examples[0] == {"src_ip": "10.244.1.10", "dst_ip": "198.51.100.7", "proto": 17,
                                 "src_port": 45000, "dst_port": 53}
    # web's other egress is now allowed by the new policy's Allow rule; that is what decides unless
    # the destination's ingress policy allows it too (the last allowing rule is the attribution)
    changed = report.categories["attribution_changed"]
    assert [(g.source, g.destination) for g in changed.groups] == [("shop/web-1", "shop/db-1")]
    assert report.categories["newly_allowed"].flows == 0
    assert report.edits == ["added gnp/no-dns-out"]


def test_counts_are_weighted_and_times_kept() -> None:
    frame = flow_frame([("web-1", "internet", 17, 45000, 53)]).with_columns(
        count=pl.lit(7, pl.Int64), time=pl.lit(datetime(2026, 1, 1), pl.Datetime("us")))
    frame = pl.concat([frame, frame.with_columns(count=pl.lit(3, pl.Int64),
                                                 time=pl.lit(datetime(2026, 1, 2), pl.Datetime("us")))])
    report = run(frame)
    group = report.categories["newly_denied"].groups[0]
    assert (group.flows, group.rows) == (10, 2)
    assert group.first_seen == datetime(2026, 1, 1) and group.last_seen == datetime(2026, 1, 2)
    assert report.flows == 10 and report.rows == 2


def test_pending_verdicts_of_staged_policies() -> None:
    """No edits: only what the staged lock-db would do. tester -> db is denied by the enforced GNP
    already; api -> db would be allowed by lock-db itself; web -> db (IPv6) would be denied."""
    report = run(flow_frame(SHOP_TRAFFIC), edit="")
    assert report.edits == []
    assert [c for c in report.categories if report.categories[c].flows] == ["pending_denied", "pending_attribution"]
    pd = report.categories["pending_denied"].groups
    assert [(g.source, g.destination) for g in pd] == [("shop/web-1", "shop/db-1")]
    assert pd[0].after.decided_by is not None and pd[0].after.decided_by.kind == "StagedNetworkPolicy"
    assert pd[0].after.decided_by.rule == -1  # end of tier: lock-db selects db and did not allow it
    pa = report.categories["pending_attribution"].groups
    assert [(g.source, g.after.decided_by.name if g.after.decided_by else None) for g in pa] == [
        ("shop/api-1", "lock-db")]


def test_promoting_the_staged_policy_matches_its_pending_verdicts() -> None:
    """Promote lock-db (same spec as an enforced NetworkPolicy): what was pending is now enforced."""
    promote = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: lock-db, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'api'}
    destination: {ports: [5432]}
"""
    frame = flow_frame(SHOP_TRAFFIC)
    pending = run(frame, edit="")
    promoted = run(frame, edit=promote, deletions=("snp/shop/lock-db",))
    assert [(g.source, g.destination) for g in promoted.categories["newly_denied"].groups] == [
        (g.source, g.destination) for g in pending.categories["pending_denied"].groups]


def test_json_and_table() -> None:
    report = run(flow_frame(SHOP_TRAFFIC + [("web-1", "internet", 6, 30000, 443)], repeat=2), limit=1, examples=1)
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["summary"]["newly_denied"] == 2 and doc["summary"]["rows"] == 18
    cat = doc["categories"]["attribution_changed"]
    assert cat["groups_total"] == 2 and len(cat["groups"]) == 1 and len(cat["groups"][0]["examples"]) == 1
    assert cat["groups"][0]["after"]["rule"] == "gnp/no-dns-out egress rule 1 (Allow)"
    text = render_table(report)
    assert "NEWLY DENIED: 2 flows in 1 group" in text
    assert "shop/web-1  external:internet  udp/53" in text
    assert "deny: gnp/no-dns-out egress rule 0 (Deny)" in text
    assert "e.g. udp 10.244.1.10:45000 → 198.51.100.7:53" in text
    assert "DECIDED BY A DIFFERENT RULE: 4 flows in 2 groups, showing the top 1" in text


def test_nothing_changes() -> None:
    same = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  selector: app == 'api'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web'}
    destination: {ports: [http]}
"""
    base = cluster()
    edited = apply_edits(base, load_text(same, "same.yaml"))
    cmp = compare(flow_frame(SHOP_TRAFFIC), base, edited, pending=False)
    report = build_report(cmp)
    assert all(c.flows == 0 for c in report.categories.values())
    assert list(report.categories) == ["newly_denied", "newly_allowed", "attribution_changed"]
    assert report.evaluations == 0


def test_skipped_rows_are_counted() -> None:
    frame = flow_frame([("web-1", "api-1", 6, 1, 8080), ("not-an-ip", "api-1", 6, 1, 8080),
                        ("web-1", "db-1/6", 6, 1, 5432)])
    report = run(frame)
    assert report.skipped_rows == 2 and report.rows == 3
    assert "2 rows skipped" in render_table(report)
    assert timedelta(0) <= timedelta(seconds=sum(report.timings.values()))
