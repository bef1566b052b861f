"""What the machines sharing an etcd datastore tell each other, under flowtui's own prefix.

    /flowtui/state/next-rule-id      the first rule id no machine has leased yet
    /flowtui/state/rules/<low>-<digest>
                                     rule refs (JSON lines, as rules.jsonl holds them) published by
                                     the machine that compiled them, before any kernel logs them
    /flowtui/state/agents/<node>     each agent's applied state (`enforcer.agent_status`)

Rule ids: an agent compiles its own node with ids from a block it leased here (compare-and-swap
on `next-rule-id`), so no two machines give one id two meanings, and the refs each publishes
(created once: the key names the block's first id and the refs' digest) resolve every node's
counters and NFLOG prefixes wherever the CLI runs. An agent also publishes, once per run after
its first reconcile, the refs its machine's records hold that etcd lacks (`publish_missing`):
refs compiled before agents published theirs. Blocks, not one shared counter per rule: an
agent allocates without a round trip per rule, and agents compiling the same edit at the same
time never collide (each may number the edit's rules differently; every number means one rule).

These keys sort after /flowtui/resources/, outside the range the desired state is listed and
watched from (`etcd.DESIRED_RANGES`): publishing never wakes an agent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from enforcer.datastore.etcd import SHARED, EtcdKV, _created_is, _mod_is, _put
from enforcer.datastore.store import DatastoreError
from enforcer.ruleids import MAX_RULE_ID, RuleIdError, RuleRef, RuleTable, ref_from_json, ref_to_line

NEXT_ID = SHARED + "next-rule-id"
RULES = SHARED + "rules/"
AGENTS = SHARED + "agents/"
BLOCK = 4096  # ids per lease: one etcd transaction per BLOCK new rules
CHUNK = 2000  # refs per published key: well under etcd's default request size (1.5 MiB)
ATTEMPTS = 50


def lease_block(kv: EtcdKV, first: int, size: int = BLOCK) -> tuple[int, int]:
    """Ids [low, low + size), low >= `first`, leased to this machine alone (compare-and-swap)."""
    for _ in range(ATTEMPTS):
        found = kv.get(NEXT_ID)
        try:
            low = max(int(found.value) if found is not None else 1, first)
        except ValueError:
            raise DatastoreError(f"etcd datastore {kv.url}: {NEXT_ID} is damaged (not a number): "
                                 f"{found.value if found else b''!r}") from None
        high = low + size
        if high - 1 > MAX_RULE_ID:
            raise RuleIdError(f"etcd datastore {kv.url}: no rule id left to lease (ids go up to {MAX_RULE_ID})")
        guard = _mod_is(NEXT_ID, found.revision) if found is not None else _created_is(NEXT_ID, 0)
        ok, _, _ = kv.txn([guard], [_put(NEXT_ID, str(high))])
        if ok:
            return low, high
    raise DatastoreError(f"etcd datastore {kv.url}: {ATTEMPTS} attempts to lease rule ids lost to other machines")


def publish_refs(kv: EtcdKV, refs: Iterable[RuleRef]) -> int:
    """Publish `refs` (created once per chunk: publishing the same refs again is a no-op); how
    many keys were written."""
    ordered = sorted(refs, key=lambda r: r.id)
    written = 0
    for start in range(0, len(ordered), CHUNK):
        chunk = ordered[start:start + CHUNK]
        text = "".join(ref_to_line(r) + "\n" for r in chunk)
        key = f"{RULES}{chunk[0].id:010d}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        ok, _, _ = kv.txn([_created_is(key, 0)], [_put(key, text)])
        written += ok
    return written


def published_refs(kv: EtcdKV) -> RuleTable:
    """Every published ref; RuleIdError (naming the key) for a damaged chunk or an id published
    with two meanings."""
    _, found = kv.list(RULES)
    table = RuleTable()
    for key in sorted(found):
        refs = {}
        for number, line in enumerate(found[key].value.decode("utf-8", errors="replace").splitlines(), 1):
            where = f"{kv.url} {key}:{number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise RuleIdError(f"{where}: not a JSON line ({exc})") from None
            if not isinstance(row, dict):
                raise RuleIdError(f"{where}: not a JSON object")
            ref = ref_from_json(row, where)
            refs[ref.id] = ref
        table = table.merged(refs)
    return table


def publish_missing(kv: EtcdKV, local: RuleTable) -> tuple[int, list[int]]:
    """Publish the refs of this machine's `local` table that etcd lacks: refs compiled before
    agents published theirs (an earlier version), or by a run that never reached etcd. Without
    them no other machine can name what those ids count. Returns (refs published, ids etcd
    already gives another meaning): those are not published (a second meaning would make every
    reader's table refuse the id), they are for the caller to report."""
    published = published_refs(kv)
    missing, conflicts = [], []
    for ref in local:
        found = published.get(ref.id)
        if found is None:
            missing.append(ref)
        elif found != ref:
            conflicts.append(ref.id)
    if missing:
        publish_refs(kv, missing)
    return len(missing), sorted(conflicts)


def publish_agent(kv: EtcdKV, node: str, status: dict[str, Any]) -> None:
    """Put agent `node`'s state (its own key; the last write wins: only that agent writes it)."""
    kv.txn([], [_put(AGENTS + node, json.dumps(status, sort_keys=True))])


def published_agents(kv: EtcdKV) -> list[dict[str, Any]]:
    """Every agent's last published state, by node; unreadable values are skipped."""
    _, found = kv.list(AGENTS)
    states = []
    for key in sorted(found):
        try:
            doc = json.loads(found[key].value)
        except ValueError:
            continue
        if isinstance(doc, dict):
            states.append(doc)
    return states


__all__ = ["AGENTS", "BLOCK", "NEXT_ID", "RULES", "lease_block", "publish_agent", "publish_missing",
           "publish_refs", "published_agents", "published_refs"]
