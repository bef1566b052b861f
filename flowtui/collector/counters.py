"""nftables rule counters of `ft:` logging rules: exact hit counts, and what rate limiting hid.

Read with libnftables (`enforcer.nft.libnft.run_here`, JSON output) from a thread that has
entered the namespace, so nothing is forked per poll. Only reading: `list ruleset`.

How a rule's statements are read, in order (`nft -j` keeps statement order):

- no `limit` before the `log` statement: its first counter counts every packet the rule logged
  (`packets` = `logged`);
- a `limit` before the `log`: a counter before the limit counts every packet the rule matched
  (`packets`), a counter between the limit and the log counts what was logged (`logged`); the
  difference is the loss cause `kernel_ratelimit`. Either may be missing (then NULL).

Several rules with the same prefix (e.g. IPv4 and IPv6 copies) are kept apart by their handle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from enforcer.nft.libnft import OUTPUT_HANDLE, OUTPUT_JSON, NftError, run_here
from enforcer.ruleids import decode_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleCounter:
    prefix: str
    group: int | None
    nft_rule: str  # "family table chain handle"
    packets: int | None
    bytes: int | None
    logged: int | None
    rate_limited: bool

    @property
    def rule_id(self) -> int | None:
        decoded = decode_prefix(self.prefix)
        return None if decoded is None else decoded[1]


def list_ruleset_json() -> dict[str, Any]:
    """`nft -j list ruleset` of the calling thread's namespace, through libnftables."""
    try:
        out = run_here("list ruleset", flags=OUTPUT_JSON | OUTPUT_HANDLE)
    except NftError as exc:
        raise OSError(str(exc)) from exc
    doc: dict[str, Any] = json.loads(out or "{}")
    return doc


def read_counters(netns: str | None, groups: Iterable[int] | None = None) -> list[RuleCounter]:
    """Counters of the rules logging with an `ft:` prefix in `netns` (to `groups`, if given)."""
    if netns is None:
        doc = list_ruleset_json()
    else:
        from enforcer.lab.kernel import in_netns

        doc = in_netns(netns, list_ruleset_json)
    return counters_from_json(doc, groups)


def counters_from_json(doc: dict[str, Any], groups: Iterable[int] | None = None) -> list[RuleCounter]:
    wanted = set(groups) if groups is not None else None
    out: list[RuleCounter] = []
    for item in doc.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        found = _rule_counter(rule)
        if found is not None and (wanted is None or found.group in wanted):
            out.append(found)
    return out


def _rule_counter(rule: dict[str, Any]) -> RuleCounter | None:
    before: int | None = None  # first counter before any limit
    before_bytes: int | None = None
    between: int | None = None  # first counter after a limit, before the log
    limited = False
    for expr in rule.get("expr", []):
        if not isinstance(expr, dict):
            continue
        if "limit" in expr:
            limited = True
        elif "counter" in expr and isinstance(expr["counter"], dict):
            packets = int(expr["counter"].get("packets", 0))
            if not limited and before is None:
                before, before_bytes = packets, int(expr["counter"].get("bytes", 0))
            elif limited and between is None:
                between = packets
        elif "log" in expr and isinstance(expr["log"], dict):
            prefix = str(expr["log"].get("prefix", ""))
            if decode_prefix(prefix) is None:
                return None
            group = expr["log"].get("group")
            where = f"{rule.get('family')} {rule.get('table')} {rule.get('chain')} {rule.get('handle')}"
            if limited:
                return RuleCounter(prefix, group, where, before, before_bytes, between, True)
            return RuleCounter(prefix, group, where, before, before_bytes, before, False)
    return None


class CounterBaseline:
    """Counter values at the start of a run, so a run accounts only for its own packets."""

    def __init__(self) -> None:
        self.first: dict[tuple[int, str], RuleCounter] = {}
        self.primed: set[int] = set()

    def delta(self, source: int, counters: list[RuleCounter]) -> list[tuple[RuleCounter, int | None, int | None]]:
        """(counter, packets since start, logged since start). Rules created later start at 0."""
        first_time = source not in self.primed
        self.primed.add(source)
        out = []
        for c in counters:
            key = (source, c.nft_rule)
            if key not in self.first:
                zero = RuleCounter(c.prefix, c.group, c.nft_rule, 0, 0, 0, c.rate_limited)
                self.first[key] = c if first_time else zero
            base = self.first[key]
            packets = None if c.packets is None else c.packets - (base.packets or 0)
            logged = None if c.logged is None else c.logged - (base.logged or 0)
            out.append((c, packets, logged))
        return out
