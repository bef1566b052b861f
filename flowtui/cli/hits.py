"""`flowtui get hits`: per-rule hit counters from the live tables, attributed through the rule table."""

from __future__ import annotations

import click

from enforcer.model import POLICY_KINDS
from enforcer.nft.hits import Hits, hits_from_json
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.cli.common import echo_json


def hit_rows(tables: dict[str, str | None], rules: RuleTable) -> list[tuple[str, RuleRef | None, int, Hits]]:
    """(node, rule reference, id, hits) for every counted rule of every node's live table."""
    rows = []
    for node, listing in sorted(tables.items()):
        if listing is None:
            continue
        for rule_id, hits in sorted(hits_from_json(listing).items()):
            rows.append((node, rules.get(rule_id), rule_id, hits))
    return rows


def unused_rows(rows: list[tuple[str, RuleRef | None, int, Hits]]) -> list[tuple[str, RuleRef | None, int, Hits]]:
    """Never-hit rules that someone wrote (as queries/unused_rules.sql): not end-of-tier drops
    (every enforced policy has one, ready for toggles), defaults or profiles."""
    return [r for r in rows if r[3].packets == 0 and r[1] is not None and r[1].kind in POLICY_KINDS]


def _what(ref: RuleRef | None) -> tuple[str, str, str]:
    if ref is None:
        return "?", "(unknown id: rule table missing?)", ""
    if ref.kind == "EndOfTier":  # one per enforced policy: drops when it is the last enabled one selecting
        who = f"end of tier (attributed to {ref.namespace + '/' if ref.namespace else ''}{ref.name})"
    elif ref.namespace:
        who = f"{ref.kind} {ref.namespace}/{ref.name}"
    else:
        who = f"{ref.kind} {ref.name}".strip()
    rule = "" if ref.rule < 0 else str(ref.rule)
    return ref.tier or "", who, rule


def print_hits(rules: RuleTable, lab_nodes: list[str], json_listing: object, output: str, unused: bool) -> None:
    tables = {node: json_listing(node) for node in lab_nodes}  # type: ignore[operator]
    rows = hit_rows(tables, rules)
    if unused:
        rows = unused_rows(rows)
    if output == "json":
        echo_json([{"node": node, "id": rid, "packets": h.packets, "bytes": h.bytes,
                    "rule": None if ref is None else {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name,
                                                      "tier": ref.tier, "direction": ref.direction, "rule": ref.rule,
                                                      "action": ref.action, "revision": ref.revision}}
                   for node, ref, rid, h in rows])
        return
    if not rows:
        click.echo("No counted rules: is the lab up and policy applied? (flowtui lab status)", err=True)
        return
    headers = ("NODE", "ID", "TIER", "POLICY", "DIRECTION", "RULE", "ACTION", "PACKETS", "BYTES")
    table = []
    for node, ref, rid, h in rows:
        tier, who, rule = _what(ref)
        table.append((node, str(rid), tier, who, ref.direction if ref else "", rule, ref.action if ref else "",
                      str(h.packets), str(h.bytes)))
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
