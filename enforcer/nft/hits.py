"""Per-rule hit counters from a live table: every compiled rule counts and carries `comment "r<id>"`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Hits:
    packets: int
    bytes: int


def hits_from_json(listing: str | Mapping[str, object]) -> dict[int, Hits]:
    """Sum counters by rule id from `nft -j list table …` output.

    One identifier can stand on several nft rules (IPv4 and IPv6 forms, numeric and named ports,
    the logged and the over-the-limit half of a rate-limited deny); only the rule carrying the
    comment counts, and its first counter sees every packet of the rule (a second one, after a
    rate limit, counts only what was logged).
    """
    doc = json.loads(listing) if isinstance(listing, str) else listing
    out: dict[int, Hits] = {}
    items = doc.get("nftables", [])
    assert isinstance(items, list)
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not rule:
            continue
        comment = rule.get("comment", "")
        if not (isinstance(comment, str) and comment.startswith("r") and comment[1:].isdigit()):
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                rule_id = int(comment[1:])
                before = out.get(rule_id, Hits(0, 0))
                out[rule_id] = Hits(before.packets + int(counter.get("packets", 0)),
                                    before.bytes + int(counter.get("bytes", 0)))
                break  # the first counter sees every packet; a later one (after a limit) what was logged
    return out
