"""Compact rule identifiers carried in NFLOG prefixes, and the table that resolves them.

Every verdict the dataplane reaches is attributed: the nftables rule logs with prefix
`ft:<A|D|P|L><id>` and the collector resolves `<id>` through the rule table the compiler wrote.
Identifiers are allocated per (policy revision, direction, rule) — or per end-of-tier / profile /
default decision point — and are never reused, so an event is attributed by the policy revision
that was in force when the packet was seen, even while policies change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

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


@dataclass
class RuleTable:
    """id → RuleRef, append-only. Persisted as JSON Lines next to the datastore."""

    refs: dict[int, RuleRef]

    def __init__(self, refs: Iterable[RuleRef] = ()) -> None:
        self.refs = {r.id: r for r in refs}

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[RuleRef]:
        return iter(self.refs.values())

    def get(self, rule_id: int) -> RuleRef | None:
        return self.refs.get(rule_id)

    def lookup(self, prefix: bytes | str) -> RuleRef | None:
        decoded = decode_prefix(prefix)
        return None if decoded is None else self.refs.get(decoded[1])

    def merged(self, other: Mapping[int, RuleRef] | RuleTable) -> RuleTable:
        refs = dict(self.refs)
        refs.update(other.refs if isinstance(other, RuleTable) else other)
        return RuleTable(refs.values())

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            for ref in sorted(self.refs.values(), key=lambda r: r.id):
                f.write(json.dumps(asdict(ref), sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RuleTable:
        if not path.exists():
            return cls()
        with path.open() as f:
            return cls(RuleRef(**json.loads(line)) for line in f if line.strip())


MAX_GATE = 0xFFFF  # the gate is a 16-bit field of the packet mark
CLOSED_SET = "closed"  # the nftables set of closed gates (enforcer.nft.compiler, enforcer.applied)
IDS_FILE = "ids.jsonl"


class GateSpaceExhausted(RuntimeError):
    """More policies than the packet mark's gate field can number."""


class IdAllocator:
    """Stable identifiers: the same decision point (policy revision, direction, rule) always gets
    the same id, and an id is never given to anything else. Persisted by the datastore.

    Policy gates (`gate_for`) are a second, small number space: each enforced policy's switch in
    the dataplane (a 16-bit packet mark field and an element of the `disabled` set), stable for
    the policy's name so that a toggle or an edit never renumbers other policies."""

    def __init__(self, known: Mapping[tuple[object, ...], int] | None = None) -> None:
        self._ids: dict[tuple[object, ...], int] = dict(known or {})
        self._next = max((v for k, v in self._ids.items() if k[:1] != ("gate",)), default=0) + 1
        self._next_gate = max((v for k, v in self._ids.items() if k[:1] == ("gate",)), default=0) + 1

    def id_for(self, key: tuple[object, ...]) -> int:
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = self._next
            self._next += 1
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
        return found

    def items(self) -> list[tuple[tuple[object, ...], int]]:
        return sorted(self._ids.items(), key=lambda kv: kv[1])

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            for key, rule_id in self.items():
                f.write(json.dumps({"key": list(key), "id": rule_id}) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> IdAllocator:
        known: dict[tuple[object, ...], int] = {}
        if path.exists():
            with path.open() as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        known[tuple(row["key"])] = int(row["id"])
        return cls(known)
