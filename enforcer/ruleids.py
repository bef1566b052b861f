"""Compact rule identifiers carried in NFLOG prefixes, and the table that resolves them.

Every verdict the dataplane reaches is attributed: the nftables rule logs with prefix
`ft:<A|D|P|L><id>` and the collector resolves `<id>` through the rule table the compiler wrote.
Identifiers are allocated per (policy revision, direction, rule) — or per end-of-tier / profile /
default decision point — and are never reused, so an event is attributed by the policy revision
that was in force when the packet was seen, even while policies change.

Both files (`ids.jsonl`: allocations, `rules.jsonl`: what each id stands for) are append-only
and fsynced before any kernel sees an id. Loading verifies them: a line that does not parse, an
id with two meanings, or an id of rules.jsonl that ids.jsonl lost (the next allocation would give
it to another rule) is a RuleIdError naming the file and line, never a reassignment; a torn last
line (an append a crash interrupted) is cut. `enforcer.datastore.integrity` repairs the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

PREFIX = "ft:"
ACTION_LETTER = {"Allow": "A", "Deny": "D", "Pass": "P", "Log": "L"}
LETTER_ACTION = {v: k for k, v in ACTION_LETTER.items()}

# NFLOG groups (configurable in CompileOptions): verdict attributions and Log actions.
VERDICT_GROUP = 1
LOG_GROUP = 2

RuleKind = Literal[
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "KubernetesNetworkPolicy",
    "ClusterNetworkPolicy",
    "Profile",
    "EndOfTier",  # name/namespace/kind_of_trigger name the trigger policy; rule = -1
    "NoProfileMatch",  # the final drop when no profile allowed; rule = -1
    "Default",  # a dataplane default: DefaultEndpointToHostAction, unknown interface
    "Failsafe",  # a failsafe port let the packet through before policy
]


@dataclass(frozen=True)
class RuleRef:
    """What one identifier stands for."""

    id: int
    kind: str  # RuleKind
    namespace: str | None
    name: str  # policy or profile name; for EndOfTier the trigger policy
    tier: str | None
    revision: int
    direction: str  # "ingress" | "egress"
    rule: int  # index as written; -1 for end of tier and defaults
    action: str  # Allow | Deny | Pass | Log
    trigger_kind: str | None = None  # for EndOfTier: the trigger policy's kind

    def prefix(self) -> str:
        return encode_prefix(self.action, self.id)


def encode_prefix(action: str, rule_id: int) -> str:
    return f"{PREFIX}{ACTION_LETTER[action]}{rule_id}"


def decode_prefix(prefix: bytes | str) -> tuple[str, int] | None:
    """(action, id) from an NFLOG prefix, or None when it is not one of ours."""
    text = prefix.decode("ascii", "replace") if isinstance(prefix, bytes) else prefix
    text = text.rstrip("\x00 ")
    if not text.startswith(PREFIX) or len(text) < len(PREFIX) + 2:
        return None
    action = LETTER_ACTION.get(text[len(PREFIX)])
    digits = text[len(PREFIX) + 1 :]
    if action is None or not digits.isdigit():
        return None
    return action, int(digits)


class RuleIdError(ValueError):
    """ids.jsonl or rules.jsonl is damaged or contradicts itself: the message names the file and
    line. Nothing was written; `flowtui datastore repair` rebuilds what can be rebuilt."""


REPAIR_HINT = "run `flowtui datastore check` to see what is damaged, `flowtui datastore repair` to rebuild"


def read_jsonl(path: Path, *, cut_torn: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every line of an append-only file. A last line without its newline
    is an append a crash interrupted (nothing used it: appends are fsynced before the kernel sees
    an id): skipped, and with `cut_torn` cut off the file. Any other unreadable line raises
    RuleIdError naming the file and line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RuleIdError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    end = data.rfind(b"\n") + 1
    if end < len(data):
        if cut_torn:
            with path.open("r+b") as handle:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
        data = data[:end]
    rows = []
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # UnicodeDecodeError is one
            raise RuleIdError(f"{path}:{number}: not a JSON line ({exc}); {REPAIR_HINT}") from exc
        if not isinstance(row, dict):
            raise RuleIdError(f"{path}:{number}: not a JSON object; {REPAIR_HINT}")
        rows.append((number, row))
    return rows


_REF_FIELDS = frozenset(RuleRef.__dataclass_fields__)


def ref_from_json(row: Mapping[str, Any], where: str = "") -> RuleRef:
    try:
        ref = RuleRef(**row)
        if not isinstance(ref.id, int) or isinstance(ref.id, bool) or ref.id < 1:
            raise TypeError(f"id {ref.id!r} is not a positive integer")
    except TypeError as exc:
        raise RuleIdError(f"{where}: not a rule: {exc}; {REPAIR_HINT}") from exc
    return ref


def ref_to_line(ref: RuleRef) -> str:
    return json.dumps(asdict(ref), sort_keys=True)


class RuleTable:
    """id → RuleRef, append-only: an id, once written, keeps its meaning. Persisted as JSON Lines
    next to the datastore (`append` writes only new refs, fsynced)."""

    refs: dict[int, RuleRef]

    def __init__(self, refs: Iterable[RuleRef] = ()) -> None:
        self.refs = {r.id: r for r in refs}

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[RuleRef]:
        return iter(self.refs.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleTable) and self.refs == other.refs

    def get(self, rule_id: int) -> RuleRef | None:
        return self.refs.get(rule_id)

    def lookup(self, prefix: bytes | str) -> RuleRef | None:
        decoded = decode_prefix(prefix)
        return None if decoded is None else self.refs.get(decoded[1])

    def new_refs(self, other: Mapping[int, RuleRef] | RuleTable) -> list[RuleRef]:
        """Refs of `other` this table lacks; RuleIdError if `other` gives a known id another meaning."""
        refs = other.refs if isinstance(other, RuleTable) else other
        new = []
        for rule_id, ref in refs.items():
            known = self.refs.get(rule_id)
            if known is None:
                new.append(ref)
            elif known != ref:
                raise RuleIdError(f"rule id {rule_id} would change meaning: it stands for {_describe(known)}, "
                                  f"now asked for {_describe(ref)} (ids.jsonl and rules.jsonl disagree); {REPAIR_HINT}")
        return new

    def merged(self, other: Mapping[int, RuleRef] | RuleTable) -> RuleTable:
        """This table with `other`'s new refs appended (RuleIdError for a conflicting id)."""
        new = self.new_refs(other)
        return RuleTable([*self.refs.values(), *new]) if new else self

    def dump(self, path: Path) -> None:
        """The whole table, atomically (repair; normal writes `append`)."""
        lines = "".join(ref_to_line(r) + "\n" for r in sorted(self.refs.values(), key=lambda r: r.id))
        _replace(path, lines)

    @staticmethod
    def append(path: Path, refs: Iterable[RuleRef]) -> None:
        _append(path, [ref_to_line(r) for r in sorted(refs, key=lambda r: r.id)])

    @classmethod
    def load(cls, path: Path, *, cut_torn: bool = False) -> RuleTable:
        """The table in `path`, verified: RuleIdError for an unreadable line or an id written twice
        with two meanings."""
        refs: dict[int, RuleRef] = {}
        for number, row in read_jsonl(path, cut_torn=cut_torn):
            where = f"{path}:{number}"
            ref = ref_from_json({k: v for k, v in row.items() if k in _REF_FIELDS}, where)
            known = refs.setdefault(ref.id, ref)
            if known != ref:
                raise RuleIdError(f"{where}: rule id {ref.id} written twice with two meanings "
                                  f"({_describe(known)}; {_describe(ref)}); {REPAIR_HINT}")
        return cls(refs.values())


def _describe(ref: RuleRef) -> str:
    who = "/".join(x for x in (ref.kind, ref.namespace, ref.name) if x)
    return f"{who} rev {ref.revision} {ref.direction} rule {ref.rule} {ref.action}"


def _replace(path: Path, text: str) -> None:
    from enforcer.datastore.files import atomic_write  # no package import cycle at start-up

    atomic_write(path, text, sync_dir=True)


def _append(path: Path, lines: list[str]) -> None:
    from enforcer.datastore.files import append_lines

    append_lines(path, lines)


MAX_GATE = 0xFFFF  # the gate is a 16-bit field of the packet mark
MAX_RULE_ID = 2**31 - 1  # flow stores keep rule ids as 32-bit integers
# lease(first) -> (low, high): a block of ids [low, high), low >= first, that no other machine
# sharing the datastore is given (`enforcer.datastore.shared_ids`).
Lease = Callable[[int], tuple[int, int]]
CLOSED_SET = "closed"  # the nftables set of closed gates (enforcer.nft.compiler, enforcer.applied)
IDS_FILE = "ids.jsonl"


class GateSpaceExhausted(RuntimeError):
    """More policies than the packet mark's gate field can number."""


class IdAllocator:
    """Stable identifiers: the same decision point (policy revision, direction, rule) always gets
    the same id, and an id is never given to anything else. Persisted by the datastore, append-only
    (`persist` appends the ids allocated since the last one, fsynced).

    Policy gates (`gate_for`) are a second, small number space: each enforced policy's switch in
    the dataplane (a 16-bit packet mark field and an element of the `disabled` set), stable for
    the policy's name so that a toggle or an edit never renumbers other policies.

    `reserved`: ids up to it are taken even where ids.jsonl no longer knows for what (a repair
    from rules.jsonl restores what it can; the rest is retired, never reassigned).

    `lease` (a datastore shared by several machines): rule ids come from blocks leased from the
    datastore, so two machines never give one id two meanings, and the refs they publish there
    resolve every machine's ids. The current block is recorded in ids.jsonl (`{"block": [low,
    high]}`), so every process sharing the file goes on from it; without `lease`, ids count up
    from 1 on this machine alone."""

    def __init__(self, known: Mapping[tuple[object, ...], int] | None = None, reserved: int = 0, *,
                 block: tuple[int, int] | None = None, lease: Lease | None = None) -> None:
        self._ids: dict[tuple[object, ...], int] = dict(known or {})
        self.reserved = reserved
        self._next = max(max((v for k, v in self._ids.items() if k[:1] != ("gate",)), default=0), reserved) + 1
        self._next_gate = max((v for k, v in self._ids.items() if k[:1] == ("gate",)), default=0) + 1
        self._new: list[tuple[tuple[object, ...], int]] = []  # allocated, not yet persisted
        self.block = block  # the leased block ids are taken from (with `lease`)
        self.lease = lease
        self._new_block: tuple[int, int] | None = None  # leased, not yet persisted

    def id_for(self, key: tuple[object, ...]) -> int:
        found = self._ids.get(key)
        if found is None:
            if self.lease is not None and (self.block is None or not self.block[0] <= self._next < self.block[1]):
                self.block = self._new_block = self.lease(self._next)
                self._next = self.block[0]
            if self._next > MAX_RULE_ID:
                raise RuleIdError(f"no rule id left: ids go up to {MAX_RULE_ID}")
            found = self._ids[key] = self._next
            self._next += 1
            self._new.append((key, found))
        return found

    def gate_for(self, policy_key: tuple[str, str, str]) -> int:
        """The gate of a policy (kind, namespace, name): 1..MAX_GATE, the same for its whole life."""
        key = ("gate", *policy_key)
        found = self._ids.get(key)
        if found is None:
            if self._next_gate > MAX_GATE:
                raise GateSpaceExhausted(
                    f"no policy gate left for {'/'.join(k for k in policy_key if k)}: {MAX_GATE} policies have "
                    f"been enforced by this datastore (remove {IDS_FILE} with the tables down to renumber)")
            found = self._ids[key] = self._next_gate
            self._next_gate += 1
            self._new.append((key, found))
        return found

    def items(self) -> list[tuple[tuple[object, ...], int]]:
        return sorted(self._ids.items(), key=lambda kv: kv[1])

    @property
    def pending(self) -> int:
        """Ids allocated since the last `persist` (or load)."""
        return len(self._new)

    def persist(self, path: Path) -> None:
        """Append the ids allocated since the last call (fsynced), before any kernel sees them."""
        if self._new or self._new_block:
            block = [json.dumps({"block": list(self._new_block)})] if self._new_block else []
            _append(path, block + [_id_line(key, rule_id) for key, rule_id in self._new])
            self._new = []
            self._new_block = None

    def dump(self, path: Path) -> None:
        """The whole allocation, atomically (repair; normal writes `persist`)."""
        lines = [json.dumps({"reserved": self.reserved})] if self.reserved else []
        lines += [json.dumps({"block": list(self.block)})] if self.block else []
        lines += [_id_line(key, rule_id) for key, rule_id in self.items()]
        _replace(path, "".join(line + "\n" for line in lines))
        self._new = []

    @classmethod
    def load(cls, path: Path, rules: RuleTable | None = None, *, cut_torn: bool = False,
             lease: Lease | None = None) -> IdAllocator:
        """The allocation in `path`, verified: RuleIdError (naming the file and line) for an
        unreadable line, a key with two ids or an id with two keys; with `rules` (rules.jsonl),
        also for a rule id ids.jsonl does not hold (its tail lost: the next allocation would give
        that id to another rule) or holds for another decision point."""
        known: dict[tuple[object, ...], int] = {}
        owners: dict[tuple[bool, int], tuple[object, ...]] = {}
        reserved = 0
        block = None
        for number, row in read_jsonl(path, cut_torn=cut_torn):
            where = f"{path}:{number}"
            if set(row) == {"reserved"} and _is_id(row["reserved"]):
                reserved = max(reserved, row["reserved"])
                continue
            if set(row) == {"block"}:
                bounds = row["block"]
                if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_is_id, bounds))
                        and bounds[0] < bounds[1]):
                    raise RuleIdError(f"{where}: not an id block (want {{\"block\": [LOW, HIGH]}}); {REPAIR_HINT}")
                block = (int(bounds[0]), int(bounds[1]))  # the last one is current
                continue
            raw_key, rule_id = row.get("key"), row.get("id")
            if set(row) != {"key", "id"} or not isinstance(raw_key, list) or not raw_key or not _is_id(rule_id):
                raise RuleIdError(f"{where}: not an id allocation (want {{\"key\": [...], \"id\": N}}); {REPAIR_HINT}")
            assert isinstance(rule_id, int)
            key = tuple(raw_key)
            space = (key[0] == "gate", rule_id)
            if known.setdefault(key, rule_id) != rule_id:
                raise RuleIdError(f"{where}: {_key_text(key)} has two ids, {known[key]} and {rule_id}; {REPAIR_HINT}")
            if owners.setdefault(space, key) != key:
                raise RuleIdError(f"{where}: id {rule_id} given twice, to {_key_text(owners[space])} and "
                                  f"{_key_text(key)}; {REPAIR_HINT}")
        allocator = cls(known, reserved, block=block, lease=lease)
        if rules is not None:
            allocator.verify(rules, path, owners)
        return allocator

    def verify(self, rules: RuleTable, path: Path,
               owners: Mapping[tuple[bool, int], tuple[object, ...]] | None = None) -> None:
        """Every id of `rules` is held by this allocation (or reserved). That an id keeps its
        meaning is checked where refs are compiled (`RuleTable.new_refs`)."""
        if owners is None:
            owners = {(k[0] == "gate", v): k for k, v in self._ids.items()}
        missing = sorted(r.id for r in rules if (False, r.id) not in owners and r.id > self.reserved)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise RuleIdError(f"{path}: {len(missing)} rule ids of rules.jsonl are missing ({shown}): the file lost "
                              f"lines, and new rules would be given those ids; {REPAIR_HINT}")


def key_of(ref: RuleRef) -> tuple[object, ...] | None:
    """The allocation key `enforcer.nft.compiler` uses for `ref`'s decision point, where the ref
    determines it (a profile rule's key holds the rule's text: not recoverable). A repair restores
    these; a test checks them against the compiler's own keys."""
    if ref.kind in ("GlobalNetworkPolicy", "NetworkPolicy", "KubernetesNetworkPolicy") and ref.rule >= 0:
        return ("rule", ref.kind, ref.namespace or "", ref.name, ref.revision, ref.direction, ref.rule)
    if ref.kind == "EndOfTier" and ref.trigger_kind is not None:
        return ("eot", ref.tier, ref.trigger_kind, ref.namespace or "", ref.name, ref.direction)
    if ref.kind == "NoProfileMatch":
        return ("noprof", ref.direction)
    if ref.kind == "Failsafe":
        return ("failsafe", ref.direction, ref.name)
    if ref.kind == "Default" and ref.name == "unknown interface":
        return ("unknown-iface",)
    if ref.kind == "Default" and ref.name.startswith("DefaultEndpointToHostAction="):
        return ("to-host", ref.name.split("=", 1)[1])
    return None


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _id_line(key: tuple[object, ...], rule_id: int) -> str:
    return json.dumps({"key": list(key), "id": rule_id})


def _key_text(key: tuple[object, ...]) -> str:
    return "(" + ", ".join(str(k) for k in key) + ")"
