"""An intermediate form of one nftables table, and transactions between two versions of it.

The compiler produces a `Table`; `diff(old, new)` gives the operations that turn one into the
other, touching only what changed; `render(ops)` writes them as one nft script (one atomic
transaction); `apply_ops` replays them on an in-memory table (the fake backend), so the result of
incremental updates can be compared with a full rebuild without a kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    # "type filter hook input priority filter; policy accept;" for base chains, None otherwise
    hook: str | None = None


@dataclass(frozen=True)
class NftSet:
    """A named set or map. `elements` are rendered element texts (`10.0.0.1`, `"cali1" : goto x`)."""

    name: str
    type: str  # "ipv4_addr", "ipv4_addr . inet_proto . inet_service", "ifname : verdict", ...
    flags: tuple[str, ...] = ()
    elements: frozenset[str] = frozenset()
    is_map: bool = False

    @property
    def interval(self) -> bool:
        return "interval" in self.flags



@dataclass(frozen=True)
class Table:
    family: str  # "inet"
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)
    sets: Mapping[str, NftSet] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.family} {self.name}"


# ---- operations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddTable:
    pass


@dataclass(frozen=True)
class DeleteTable:
    pass


@dataclass(frozen=True)
class DefineChain:
    """Create the chain if missing and set its rules (flush, then add)."""

    chain: Chain
    new: bool


@dataclass(frozen=True)
class DeleteChain:
    name: str


@dataclass(frozen=True)
class DefineSet:
    nset: NftSet


@dataclass(frozen=True)
class SetElements:
    """Change elements of an existing set: add and delete lists; flush first for a full reset."""

    name: str
    add: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    flush: bool = False


@dataclass(frozen=True)
class DeleteSet:
    name: str
    is_map: bool = False


Op = AddTable | DeleteTable | DefineChain | DeleteChain | DefineSet | SetElements | DeleteSet


def full(table: Table, *, existing: bool) -> list[Op]:
    """Operations that replace whatever table of that name exists with `table`."""
    ops: list[Op] = []
    if existing:
        ops.append(DeleteTable())
    ops.append(AddTable())
    return ops + diff(Table(table.family, table.name), table)


def diff(old: Table, new: Table) -> list[Op]:
    """Operations from `old` to `new`, touching only what changed, in an order the kernel accepts:

    1. declare new chains (empty), then new sets and maps, so that anything may refer to them
       (nft 1.0.6 refuses, ENOENT, elements of a single-field interval verdict map declared
       before the chains they go to, even in one transaction);
    2. change set and map elements (a verdict map's new element may `goto` a new chain);
    3. write the rules of new and changed chains;
    4. flush removed chains; delete removed sets (no rule refers to them now; a removed verdict
       map's elements may go to removed chains); then delete the removed chains.

    The compiler encodes a set's type in its name, so a set never changes type under one name.
    """
    declare: list[Op] = []
    elements: list[Op] = []
    for name, s in sorted(new.sets.items()):
        before = old.sets.get(name)
        if before is s:
            continue  # the same object: unchanged (live toggles share everything but one set)
        if before is None:
            declare.append(DefineSet(replace(s, elements=frozenset())))
            if s.elements:
                elements.append(SetElements(name, add=tuple(sorted(s.elements))))
        elif (before.type, before.flags, before.is_map) != (s.type, s.flags, s.is_map):
            raise ValueError(f"set {name} changes type from {before.type} to {s.type}")
        elif before.elements != s.elements:
            gone, added = before.elements - s.elements, s.elements - before.elements
            if s.interval and (not s.is_map or 4 * (len(gone) + len(added)) > len(s.elements)):
                # Adding to a large interval set makes the library re-read and merge it (slow);
                # rebuilding it in the same transaction is fast (kernel-notes.md). Interval maps
                # (decision maps) do not merge: their elements are replaced by their exact
                # ranges, so a toggle sends only the elements that changed — unless they are over
                # a quarter of the map: each insert or delete in the kernel's interval map costs
                # in proportion to its size, so rebuilding it is then cheaper (measured).
                elements.append(SetElements(name, add=tuple(sorted(s.elements)), flush=True))
            else:
                elements.append(SetElements(name, add=tuple(sorted(added)), delete=tuple(sorted(gone))))
    rules: list[Op] = []
    chains: list[Op] = []
    for name, c in sorted(new.chains.items()) if old.chains is not new.chains else ():
        prev = old.chains.get(name)
        if prev is c:
            continue  # the same object (a toggle keeps every chain it does not decide again)
        if prev is None:
            chains.append(DefineChain(Chain(c.name, (), c.hook), new=True))
            if c.rules:
                rules.append(DefineChain(c, new=False))
        elif prev != c:
            if prev.hook != c.hook:
                raise ValueError(f"chain {name} changes hook")
            rules.append(DefineChain(c, new=False))
    removed = sorted(old.chains.keys() - new.chains.keys())
    cleanup: list[Op] = [DefineChain(Chain(n, ()), new=False) for n in removed]
    cleanup += [DeleteSet(n, old.sets[n].is_map) for n in sorted(old.sets.keys() - new.sets.keys())]
    cleanup += [DeleteChain(n) for n in removed]
    return chains + declare + elements + rules + cleanup


def _quote_chain_rules(rules: Iterable[str]) -> str:
    return "".join(f"\t\t{r}\n" for r in rules)


def render(table: Table, ops: list[Op]) -> str:
    """One nft script: applied with `nft -f` (or the library) it is a single atomic transaction."""
    t = table.ref
    out: list[str] = []
    for op in ops:
        if isinstance(op, AddTable):
            out.append(f"add table {t}")
        elif isinstance(op, DeleteTable):
            out.append(f"delete table {t}")
        elif isinstance(op, DefineSet):
            kind = "map" if op.nset.is_map else "set"
            flags = f" flags {', '.join(op.nset.flags)};" if op.nset.flags else ""
            out.append(f"add {kind} {t} {op.nset.name} {{ type {op.nset.type};{flags} }}")
        elif isinstance(op, SetElements):
            if op.flush:
                known = table.sets.get(op.name)
                out.append(f"flush {'map' if known is not None and known.is_map else 'set'} {t} {op.name}")
            if op.delete:
                out.append(f"delete element {t} {op.name} {{ {', '.join(op.delete)} }}")
            if op.add:
                out.append(f"add element {t} {op.name} {{ {', '.join(op.add)} }}")
        elif isinstance(op, DeleteSet):
            out.append(f"delete {'map' if op.is_map else 'set'} {t} {op.name}")
        elif isinstance(op, DefineChain):
            c = op.chain
            if op.new and c.hook:
                out.append(f"add chain {t} {c.name} {{ {c.hook} }}")
            else:
                out.append(f"add chain {t} {c.name}")
            if not op.new:
                out.append(f"flush chain {t} {c.name}")
            out.extend(f"add rule {t} {c.name} {r}" for r in c.rules)
        elif isinstance(op, DeleteChain):
            out.append(f"delete chain {t} {op.name}")
    return "\n".join(out) + "\n"


def apply_ops(table: Table | None, family: str, name: str, ops: list[Op]) -> Table | None:
    """Replay `ops` on an in-memory table, as the kernel would. Raises KeyError/ValueError where
    the kernel would reject the transaction (missing chain or set, chain still referenced)."""
    cur = table
    chains: dict[str, Chain] = dict(cur.chains) if cur else {}
    sets: dict[str, NftSet] = dict(cur.sets) if cur else {}
    exists = cur is not None
    for op in ops:
        if isinstance(op, DeleteTable):
            if not exists:
                raise KeyError(f"table {family} {name} does not exist")
            chains, sets, exists = {}, {}, False
        elif isinstance(op, AddTable):
            exists = True
        elif not exists:
            raise KeyError(f"table {family} {name} does not exist")
        elif isinstance(op, DefineSet):
            if op.nset.name in sets:
                raise ValueError(f"set {op.nset.name} exists")
            sets[op.nset.name] = replace(op.nset, elements=frozenset())
        elif isinstance(op, SetElements):
            s = sets[op.name]
            elements = set() if op.flush else set(s.elements)
            absent = set(op.delete) - elements
            if absent:  # the kernel refuses to delete what is not there (ENOENT)
                raise KeyError(f"element {min(absent)} of set {op.name} does not exist")
            elements -= set(op.delete)
            elements |= set(op.add)
            sets[op.name] = replace(s, elements=frozenset(elements))
        elif isinstance(op, DeleteSet):
            del sets[op.name]
        elif isinstance(op, DefineChain):
            before = chains.get(op.chain.name)
            hook = op.chain.hook if before is None or op.new else before.hook
            chains[op.chain.name] = Chain(op.chain.name, op.chain.rules, hook)
        elif isinstance(op, DeleteChain):
            for other in chains.values():
                if other.name != op.name and any(_refers(r, op.name) for r in other.rules):
                    raise ValueError(f"chain {op.name} is still referenced by {other.name}")
            del chains[op.name]
    if not exists:
        return None
    return Table(family, name, chains, sets)


def _refers(rule: str, chain: str) -> bool:
    words = rule.replace(";", " ").split()
    return any(w in ("jump", "goto") and i + 1 < len(words) and words[i + 1] == chain
               for i, w in enumerate(words))


def listing(table: Table) -> str:
    """A canonical text of the whole table: equal tables give equal texts."""
    lines = [f"table {table.ref} {{"]
    for name, s in sorted(table.sets.items()):
        kind = "map" if s.is_map else "set"
        lines.append(f"\t{kind} {name} {{")
        lines.append(f"\t\ttype {s.type}")
        if s.flags:
            lines.append(f"\t\tflags {','.join(s.flags)}")
        if s.elements:
            lines.append(f"\t\telements = {{ {', '.join(sorted(s.elements))} }}")
        lines.append("\t}")
    for name, c in sorted(table.chains.items()):
        lines.append(f"\tchain {name} {{")
        if c.hook:
            lines.append(f"\t\t{c.hook}")
        lines.append(_quote_chain_rules(c.rules).rstrip("\n"))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(line for line in lines if line != "")
