"""What each node's backend holds, recorded in the datastore directory: a cache the reconciler
checks before trusting it (no fsync).

    applied/<node>.json         the whole table, with an id; rewritten only when more than set
                                elements changed (a toggle must not rewrite megabytes)
    applied/<node>.state.json   after every apply: the id of the whole table, the sets changed
                                since (`closed` always), the namespace's ruleset generation
                                (`Backend.generation`: unchanged means nothing was committed in
                                between, by anyone, so the record need not be read back) and the
                                datastore revision the node now enforces (older than the
                                datastore's: an apply stopped between the datastore's commit and
                                the kernel's; `lab status`, `datastore check` show it)
    applied/<node>.intent.json  written just before each commit: the digest of the table being
                                committed and the ruleset generation under it. A process killed
                                after the kernel took the commit and before it wrote the state
                                finds, on restart, exactly one more generation and the table it
                                compiled again with that digest: it adopts the live table instead
                                of replacing it (no flush). A toggle served from the records
                                writes the state it will leave instead (`committed_state`)
    applied/<node>.layout.json  the compile the table came from (datastore layout revision, lab)
                                and the policies' gates: a new process (the CLI) switches a gate
                                without compiling

    records = AppliedRecords(datastore.applied_dir, backend)
    records.save(node, table)                 # after an apply
    records.table(node)                       # the recorded table (whole table + state)
    records.unchanged(node, records.state(node))   # same ruleset generation as recorded
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import weakref
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from enforcer.datastore import atomic_write
from enforcer.nft import ir
from enforcer.nft.backend import Backend
from enforcer.ruleids import CLOSED_SET  # the set of closed policy gates (not the compiler: CLI start-up)


@functools.lru_cache(maxsize=4096)
def _sorted(elements: frozenset[str]) -> list[str]:
    """A set's elements in order, kept: an agent records (and digests) its table at every apply,
    and most of its sets are the very objects the last apply had. Callers must not modify it."""
    return sorted(elements)


def table_to_json(table: ir.Table) -> dict[str, Any]:
    return {
        "family": table.family,
        "name": table.name,
        "chains": [{"name": c.name, "hook": c.hook, "rules": list(c.rules)} for _, c in sorted(table.chains.items())],
        "sets": [
            {"name": s.name, "type": s.type, "flags": list(s.flags), "is_map": s.is_map,
             "elements": _sorted(s.elements)}
            for _, s in sorted(table.sets.items())
        ],
    }


def table_digest(table: ir.Table) -> str:
    """A digest of the whole table, from a digest of each chain and set: those are kept per object
    (`_PartDigests`), so the digest of a table that shares all but a few chains and sets with one
    digested before (a toggle, an edit) costs a lookup per object, not a whole-table encoding."""
    outline = [f"{table.family} {table.name}"]
    outline += [_parts.of(c) for _, c in sorted(table.chains.items())]
    outline.append("sets")
    outline += [_parts.of(s) for _, s in sorted(table.sets.items())]
    return hashlib.sha256("\n".join(outline).encode()).hexdigest()


class _PartDigests:
    """sha256 of a chain's or set's content, remembered by object identity while the object lives
    (compiled tables are frozen and share unchanged chains and sets between compiles)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[weakref.ref[object], str]] = {}

    def of(self, part: ir.Chain | ir.NftSet) -> str:
        found = self._known.get(id(part))
        if found is not None and found[0]() is part:
            return found[1]
        if isinstance(part, ir.Chain):
            raw: object = [part.name, part.hook, list(part.rules)]
        else:
            raw = [part.name, part.type, list(part.flags), part.is_map, sorted(part.elements)]
        digest = hashlib.sha256(json.dumps(raw).encode()).hexdigest()
        self._known[id(part)] = (weakref.ref(part, partial(self._gone, id(part))), digest)
        return digest

    def _gone(self, key: int, _ref: object) -> None:
        self._known.pop(key, None)


_parts = _PartDigests()


def table_from_json(raw: dict[str, Any]) -> ir.Table:
    chains = {c["name"]: ir.Chain(c["name"], tuple(c["rules"]), c["hook"]) for c in raw["chains"]}
    sets = {
        s["name"]: ir.NftSet(s["name"], s["type"], tuple(s["flags"]), frozenset(s["elements"]), bool(s["is_map"]))
        for s in raw["sets"]
    }
    return ir.Table(raw["family"], raw["name"], chains, sets)


def same_layout(a: ir.Table, b: ir.Table) -> bool:
    """Same chains, and the same sets but for their elements."""
    if (a.family, a.name) != (b.family, b.name) or a.sets.keys() != b.sets.keys():
        return False
    if a.chains is not b.chains and a.chains != b.chains:
        return False
    return all((s.type, s.flags, s.is_map) == (b.sets[n].type, b.sets[n].flags, b.sets[n].is_map)
               for n, s in a.sets.items())


class AppliedRecords:
    """The records of every node in `directory`, for one backend. Not thread-safe: the
    reconciler calls it under its lock."""

    def __init__(self, directory: Path, backend: Backend) -> None:
        self.directory = directory
        self.backend = backend
        self._bases: dict[str, tuple[str, ir.Table]] = {}  # the whole table last written or read, by id
        self._layouts: dict[str, dict[str, Any]] = {}  # the layout record last written or read
        self.revision: int | None = None  # the datastore revision being enforced (the reconciler sets it)
        self._stamped: dict[str, int | None] = {}  # the revision last recorded per node

    def path(self, node: str, part: str = "") -> Path:
        return self.directory / f"{node}{part}.json"

    def _read(self, node: str, part: str) -> dict[str, Any] | None:
        try:
            raw = json.loads(self.path(node, part).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    def generation(self, node: str) -> list[int] | None:
        """The backend's (namespace, ruleset generation) as JSON keeps it; None if unknown."""
        gen = getattr(self.backend, "generation", None)
        found = gen(node) if gen is not None else None
        return None if found is None else list(found)

    # ---- reading -----------------------------------------------------------------------------

    def state(self, node: str) -> dict[str, Any] | None:
        """{base, generation, elements}, written after every apply."""
        return self._read(node, ".state")

    def layout(self, node: str) -> dict[str, Any] | None:
        """{base, layout, gates, chains, sets}, written after every compile with gates."""
        found = self._read(node, ".layout")
        if found is not None:
            self._layouts[node] = found
        return found

    def base_id(self, node: str) -> str | None:
        base = self._bases.get(node)
        return None if base is None else base[0]

    def unchanged(self, node: str, state: Mapping[str, Any] | None) -> bool:
        """The namespace's ruleset generation is the one recorded in `state` (the node's state
        record, read once by the caller): nothing committed since."""
        gen = self.generation(node)
        return state is not None and gen is not None and state.get("generation") == gen

    def table(self, node: str, state: Mapping[str, Any] | None = None) -> ir.Table | None:
        """The recorded table: the whole-table file with the state's sets over it when the state
        (read here unless given) was written for that whole table."""
        try:
            raw = json.loads(self.path(node).read_text(encoding="utf-8"))
            table = table_from_json(raw)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        ident = raw.get("id")
        if not ident:
            return table
        self._bases[node] = (str(ident), table)
        state = self.state(node) if state is None else state
        if state is not None and state.get("base") == ident:
            sets = dict(table.sets)
            for name, elements in state.get("elements", {}).items():
                if name in sets:
                    sets[name] = replace(sets[name], elements=frozenset(elements))
            table = replace(table, sets=sets)
        return table

    # ---- writing -----------------------------------------------------------------------------

    def save(self, node: str, table: ir.Table) -> None:
        """Record what the backend now holds: the whole table only when more than set elements
        changed since it was written, then the state."""
        base = self._bases.get(node)
        if base is None or not same_layout(base[1], table):
            ident = f"{time.time_ns():x}-{id(table):x}"
            atomic_write(self.path(node), json.dumps({"id": ident, **table_to_json(table)}) + "\n", durable=False)
            base = self._bases[node] = (ident, table)
        changed = {n: sorted(s.elements) for n, s in table.sets.items()
                   if n == CLOSED_SET or (s is not base[1].sets[n] and s.elements != base[1].sets[n].elements)}
        self.write_state(node, base[0], changed)

    def intend(self, node: str, table: ir.Table) -> None:
        """Just before `table` is committed: its digest and the generation it is committed on."""
        intent = {"digest": table_digest(table), "generation": self.generation(node)}
        atomic_write(self.path(node, ".intent"), json.dumps(intent) + "\n", durable=False)

    def committed_intent(self, node: str, table: ir.Table) -> bool:
        """The live ruleset is `table`, committed by an apply that stopped before recording it:
        the last intent names `table`'s digest, and exactly one commit was made in the namespace
        since the intent was written (its own: the kernel's generation counts commits)."""
        intent = self._read(node, ".intent")
        if intent is None or not isinstance(intent.get("generation"), list):
            return False
        gen = self.generation(node)
        before = intent["generation"]
        return (gen is not None and len(before) == 2 and gen == [before[0], before[1] + 1]
                and intent.get("digest") == table_digest(table))

    def intend_state(self, node: str, base: str, elements: Mapping[str, list[str]]) -> None:
        """Just before a change of set elements alone is committed (a toggle served from the
        records, which hold no whole table to digest): the state record it will leave, and the
        generation it is committed on (`committed_state`)."""
        intent = {"state": {"base": base, "elements": elements}, "generation": self.generation(node)}
        atomic_write(self.path(node, ".intent"), json.dumps(intent) + "\n", durable=False)

    def committed_state(self, node: str, state: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The node's state as an element change left it that the kernel committed and the
        process did not record (killed in between): the intent names the recorded `state`'s base
        and generation, and exactly one commit was made since. Recorded now; None otherwise."""
        intent = self._read(node, ".intent")
        if state is None or intent is None or not isinstance(intent.get("state"), dict):
            return None
        gen, before = self.generation(node), intent.get("generation")
        wanted = intent["state"]
        if (not isinstance(before, list) or len(before) != 2 or before != state.get("generation")
                or gen != [before[0], before[1] + 1] or wanted.get("base") != state.get("base")
                or not isinstance(wanted.get("elements"), dict)):
            return None
        self.write_state(node, str(wanted["base"]), wanted["elements"])
        return self.state(node)

    def write_state(self, node: str, base: str, elements: Mapping[str, list[str]]) -> None:
        state = {"base": base, "generation": self.generation(node), "elements": elements, "revision": self.revision}
        atomic_write(self.path(node, ".state"), json.dumps(state) + "\n", durable=False)
        self._stamped[node] = self.revision

    def stamped(self, node: str) -> bool:
        """The node's state record already names the revision being enforced (this process wrote it)."""
        return node in self._stamped and self._stamped[node] == self.revision

    def forget(self, node: str) -> None:
        """Distrust what is remembered of `node`'s records (its kernel table was found to differ)."""
        self._bases.pop(node, None)
        self._layouts.pop(node, None)
        self._stamped.pop(node, None)

    def save_layout(self, node: str, key: tuple[int, str | None, str], gates: Mapping[tuple[str, str, str], int],
                    table: ir.Table) -> None:
        """Beside the recorded table: the layout it was compiled from and the policies' gates."""
        base = self._bases.get(node)
        if base is None:
            return
        meta = {"base": base[0], "layout": list(key), "gates": sorted([*k, g] for k, g in gates.items()),
                "chains": len(table.chains), "sets": len(table.sets)}
        if self._layouts.get(node) != meta:
            atomic_write(self.path(node, ".layout"), json.dumps(meta) + "\n", durable=False)
            self._layouts[node] = meta


__all__ = ["CLOSED_SET", "AppliedRecords", "same_layout", "table_digest", "table_from_json", "table_to_json"]
