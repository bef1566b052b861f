"""NFLOG prefix -> the rule that decided: `ft:<A|D|P|L><id>` resolved through a live RuleTable.

The compiler writes every identifier it allocates to `rules.jsonl` next to the datastore and
never reuses one (`enforcer.ruleids`), so an identifier names one rule of one *policy revision*.
An event is therefore attributed to the revision that was in force when the packet was seen,
however policies changed since, and a table that only grows can be reloaded at any time.

`Attribution` watches the file (size and mtime, at most once a second, and at once when an
identifier is unknown: the rules may have been applied a moment before the file was replaced)
and resolves each distinct prefix of a batch once. Unknown identifiers and foreign prefixes are
counted and logged once per prefix, never fatal; the event is stored with its prefix text, and
its `rule_id` still joins the `rules` table once the identifier appears there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt

from enforcer.model import SHORT_KIND
from enforcer.ruleids import RuleRef, RuleTable, decode_prefix

log = logging.getLogger(__name__)

# Status of a prefix, per event.
KNOWN, UNKNOWN_ID, FOREIGN, NO_PREFIX = 0, 1, 2, 3
_REF_FIELDS = {f.name for f in fields(RuleRef)}
RELOAD_INTERVAL = 1.0


@dataclass
class Resolved:
    """Per distinct prefix of a batch (index = prefix code)."""

    rule_id: npt.NDArray[np.int64]  # -1 when the prefix is not ours
    action: list[str | None]  # from the prefix letter; None when not ours
    status: npt.NDArray[np.int8]


@dataclass
class AttributionStats:
    unknown_rule: int = 0  # events whose `ft:` identifier is not in the table (yet)
    foreign_prefix: int = 0  # events with a prefix that is not ours
    no_prefix: int = 0  # events without a prefix
    action_mismatch: int = 0  # the prefix letter disagrees with the table's action
    bad_rule_lines: int = 0  # lines of rules.jsonl that could not be read
    reloads: int = 0


def load_rules(path: Path, stats: AttributionStats | None = None) -> RuleTable:
    """Read rules.jsonl tolerantly: unreadable lines are counted and skipped, unknown keys dropped."""
    refs: list[RuleRef] = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RuleTable()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            refs.append(RuleRef(**{k: v for k, v in doc.items() if k in _REF_FIELDS}))
        except (ValueError, TypeError) as exc:
            if stats is not None:
                stats.bad_rule_lines += 1
            log.warning("%s:%d: unreadable rule line: %s", path, number, exc)
    return RuleTable(refs)


class Attribution:
    """A RuleTable that follows its file, and the prefix -> rule resolution for batches."""

    def __init__(self, path: Path | None = None, table: RuleTable | None = None) -> None:
        self.path = path
        self.stats = AttributionStats()
        self.table = table if table is not None else RuleTable()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._warned: set[str] = set()
        self._unstored: dict[int, RuleRef] = dict(self.table.refs)
        if path is not None:
            self.reload(force=True)

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed (checked at most once a second unless forced)."""
        if self.path is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_INTERVAL:
            return False
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        fresh = load_rules(self.path, self.stats)
        # An id keeps the meaning it was first read with (rules.jsonl is append-only; a file that
        # says otherwise was damaged or rewritten: `flowtui datastore check` reports it).
        new = {i: r for i, r in fresh.refs.items() if i not in self.table.refs}
        if new:
            self.table = self.table.merged(new)
            self._unstored.update(new)
        self.stats.reloads += 1
        return bool(new)

    def add(self, refs: Iterable[RuleRef]) -> None:
        """Add identifiers directly (tests, or a compiler in the same process)."""
        new = {r.id: r for r in refs}
        self.table = RuleTable([*self.table.refs.values(), *new.values()])
        self._unstored.update(new)

    def take_unstored(self) -> list[RuleRef]:
        """RuleRefs not yet written to the store (the writer calls this after each batch)."""
        out = sorted(self._unstored.values(), key=lambda r: r.id)
        self._unstored.clear()
        return out

    def resolve(self, prefixes: list[str], counts: npt.NDArray[np.int64] | None = None) -> Resolved:
        """Resolve each distinct prefix; `counts[i]` events carry prefix i (for the counters)."""
        self.reload()
        decoded = [decode_prefix(p) if p else None for p in prefixes]
        if any(d is not None and d[1] not in self.table.refs for d in decoded):
            self.reload(force=True)
        rule_id = np.full(len(prefixes), -1, dtype=np.int64)
        status = np.full(len(prefixes), FOREIGN, dtype=np.int8)
        action: list[str | None] = []
        for i, (text, d) in enumerate(zip(prefixes, decoded, strict=True)):
            n = int(counts[i]) if counts is not None else 1
            if d is None:
                action.append(None)
                if text:
                    self.stats.foreign_prefix += n
                    self._warn(text, "not a flowtui prefix")
                else:
                    status[i] = NO_PREFIX
                    self.stats.no_prefix += n
                continue
            act, rid = d
            rule_id[i] = rid
            action.append(act)
            ref = self.table.get(rid)
            if ref is None:
                status[i] = UNKNOWN_ID
                self.stats.unknown_rule += n
                self._warn(text, "identifier not in the rule table (yet)")
            else:
                status[i] = KNOWN
                if ref.action != act:
                    self.stats.action_mismatch += n
                    self._warn(text, f"prefix says {act}, the rule table says {ref.action}")
        return Resolved(rule_id, action, status)

    def _warn(self, prefix: str, why: str) -> None:
        if prefix in self._warned or len(self._warned) > 1000:
            return
        self._warned.add(prefix)
        log.warning("NFLOG prefix %r: %s", prefix, why)




def policy_hit(ref: RuleRef, index: int = 0) -> str:
    """Calico's flow-log policy string for a rule: `<idx>|<tier>|<kind>:[<ns>/]<name>|<action>|<rule>`.

    End of tier names its trigger policy with rule -1, as Calico does; profiles use tier
    `__PROFILE__`; the no-profile-match drop is `pro:__NO_MATCH__`; dataplane defaults and
    failsafes (not Calico hits) use tier `__DEFAULT__` / `__FAILSAFE__` and kind `dp`.
    """
    action = ref.action.lower()
    if ref.kind == "Profile":
        return f"{index}|__PROFILE__|pro:{ref.name}|{action}|{ref.rule}"
    if ref.kind == "NoProfileMatch":
        return f"{index}|__PROFILE__|pro:__NO_MATCH__|{action}|-1"
    if ref.kind in ("Default", "Failsafe"):
        return f"{index}|__{ref.kind.upper()}__|dp:{ref.name}|{action}|{ref.rule}"
    kind = ref.trigger_kind if ref.kind == "EndOfTier" else ref.kind
    short = SHORT_KIND.get(kind or "", (kind or "unknown").lower())
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    rule = -1 if ref.kind == "EndOfTier" else ref.rule
    return f"{index}|{ref.tier or 'default'}|{short}:{name}|{action}|{rule}"


def reporter(ref: RuleRef | None) -> str | None:
    """Calico's reporter: ingress policy is evaluated at the destination, egress at the source."""
    if ref is None:
        return None
    return "dst" if ref.direction == "ingress" else "src" if ref.direction == "egress" else None
