"""Backends: where a node's nftables table is applied. One table per node, one transaction per change.

    backend = KernelBackend("lab", lambda node: netns_name("lab", f"node:{node}"))
    backend.apply("node-a", table, ir.diff(old, table))   # atomic: all of it or none of it
    backend.listing("node-a")                            # `nft list table inet flowtui`, or None

`Backend` is the protocol the reconciler uses; `KernelBackend` applies to the namespaces of one lab
through libnftables (`libnft.Nft`, one long-lived context per node namespace); `FakeBackend` keeps
tables in memory (`ir.apply_ops`), records every script it applied and can be told to fail, so
most tests run without root. Every backend owns exactly one table: `inet flowtui`.

Atomicity: `apply` renders all operations with `ir.render` into one script and runs it in one
call, which libnftables sends as one netlink batch: the kernel commits all of it or, on any error,
none of it, and the previous table stays as it was. `ApplyError` says what went wrong. Changes
made only of set elements (live toggles, pod churn) skip libnftables, whose cache fill costs
grow with the ruleset, and go to the kernel as one nfnetlink batch of their own
(`enforcer.nft.elements`): the same all-or-nothing transaction, ~0.03 ms.

The real host: this lab backend never applies to the root network namespace (`host_backend()`
says so, and `KernelBackend` refuses any namespace that is not one of its lab's). The host is one
agent's business: `enforcer.nft.node_backend.NodeBackend` (`flowtui agent --host`) applies one
node's table in the namespace its process runs in, by the same code path as a lab namespace.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from enforcer.lab.kernel import check_lab_netns, netns_exists, netns_path
from enforcer.lab.names import LabError, check_lab_id, lab_prefix
from enforcer.nft import elements, ir
from enforcer.nft.libnft import OUTPUT_JSON, OUTPUT_STATELESS, Nft, NftError


class _PerNamespace(Protocol):
    def current(self) -> bool: ...

    def close(self) -> None: ...


_T = TypeVar("_T", bound=_PerNamespace)

TABLE_FAMILY = "inet"
TABLE_NAME = "flowtui"
TABLE_REF = f"{TABLE_FAMILY} {TABLE_NAME}"

HOST_NOT_IMPLEMENTED = (
    "enforcing on the real host (the root network namespace) is not implemented: flowtui only "
    "enforces inside a lab of network namespaces for now (`flowtui lab up -f ...`)"
)


class ApplyError(Exception):
    """A transaction was refused; the node's previous table is unchanged."""

    def __init__(self, node: str, message: str, script: str = "") -> None:
        self.node = node
        self.message = message
        self.script = script
        super().__init__(f"{node}: {message}")

    @property
    def stale(self) -> bool:
        """The kernel lacks something the change assumed (ENOENT): the change was computed from a
        table that is not the one the node holds."""
        return "No such file or directory" in self.message


class Backend(Protocol):
    """Applies tables to nodes. Implementations own the table `inet flowtui` and nothing else."""

    def apply(self, node: str, table: ir.Table, ops: list[ir.Op]) -> None:
        """Run `ops` (built for `table`) as ONE transaction; raise ApplyError if refused."""
        ...

    def listing(self, node: str, *, stateless: bool = False) -> str | None:
        """The live table as text (`nft list table inet flowtui`), None if there is none.
        `stateless` leaves out counters and other state, so equal tables list equally."""
        ...

    def current(self, node: str) -> ir.Table | None:
        """The live table read back, None if there is none. Rules are as the backend prints
        them (the kernel normalises rule text): compare listings, not rule strings."""
        ...

    def json_listing(self, node: str) -> str | None:
        """The live table as `nft -j` JSON with counters, or None when there is none."""
        ...

    def delete(self, node: str) -> None:
        """Remove the table if it exists (idempotent)."""
        ...

    def generation(self, node: str) -> tuple[int, int] | None:
        """(identity of the node's namespace, its ruleset generation), which any committed change
        moves on; None if unknown. Equal values mean nothing changed in between."""
        ...


def empty_table() -> ir.Table:
    return ir.Table(TABLE_FAMILY, TABLE_NAME)


def check_table(table: ir.Table) -> None:
    if (table.family, table.name) != (TABLE_FAMILY, TABLE_NAME):
        raise ValueError(f"backends only manage table {TABLE_REF}, not {table.ref}")


def host_backend() -> Backend:
    """Enforcement on the real host: not implemented (see HOST_NOT_IMPLEMENTED)."""
    raise NotImplementedError(HOST_NOT_IMPLEMENTED)


# --------------------------------------------------------------------------------------------
# In memory


class FakeBackend:
    """Tables in memory, applied with `ir.apply_ops`; all-or-nothing like the kernel.

    `history[node]` lists every script applied (committed) on that node, in order;
    `failed[node]` the scripts that were refused. `fail_next(node, message)` makes the next
    `apply` on `node` fail, changing nothing.
    """

    def __init__(self) -> None:
        self.tables: dict[str, ir.Table] = {}
        self.history: dict[str, list[str]] = {}
        self.failed: dict[str, list[str]] = {}
        self._fail: dict[str, str] = {}
        self._outside: dict[str, int] = {}
        self._lock = threading.Lock()

    def fail_next(self, node: str, message: str = "injected failure") -> None:
        with self._lock:
            self._fail[node] = message

    def generation(self, node: str) -> tuple[int, int] | None:
        with self._lock:  # every applied script is one commit, and so is every outside change
            return (0, len(self.history.get(node, [])) + self._outside.get(node, 0))

    def tamper(self, node: str, table: ir.Table | None) -> None:
        """A change made outside flowtui (another tool, a person): the generation moves on."""
        with self._lock:
            if table is None:
                self.tables.pop(node, None)
            else:
                self.tables[node] = table
            self._outside[node] = self._outside.get(node, 0) + 1

    def apply(self, node: str, table: ir.Table, ops: list[ir.Op]) -> None:
        check_table(table)
        script = ir.render(table, ops)
        with self._lock:
            injected = self._fail.pop(node, None)
            if injected is not None:
                self.failed.setdefault(node, []).append(script)
                raise ApplyError(node, injected, script)
            try:
                new = ir.apply_ops(self.tables.get(node), table.family, table.name, ops)
            except (KeyError, ValueError) as exc:
                self.failed.setdefault(node, []).append(script)
                reason = f"{exc.args[0]}: No such file or directory" if isinstance(exc, KeyError) else str(exc)
                raise ApplyError(node, reason, script) from exc
            if new is None:
                self.tables.pop(node, None)
            else:
                self.tables[node] = new
            self.history.setdefault(node, []).append(script)

    def listing(self, node: str, *, stateless: bool = False) -> str | None:
        table = self.tables.get(node)
        return None if table is None else ir.listing(table)

    def json_listing(self, node: str) -> str | None:
        """The fake keeps no counters: every rule reads zero."""
        return None if node not in self.tables else '{"nftables": []}'

    def current(self, node: str) -> ir.Table | None:
        return self.tables.get(node)

    def delete(self, node: str) -> None:
        with self._lock:
            if self.tables.pop(node, None) is not None:
                self.history.setdefault(node, []).append(f"delete table {TABLE_REF}\n")


# --------------------------------------------------------------------------------------------
# The kernel, inside a lab


class KernelBackend:
    """Applies to the namespaces of lab `lab_id`; `netns_of(node)` names a node's namespace.

    One long-lived libnftables context per namespace (re-created if the namespace was removed
    and made again). Any namespace outside the lab is refused with LabError; an empty name
    (the root namespace) raises NotImplementedError.
    """

    def __init__(self, lab_id: str, netns_of: Callable[[str], str]) -> None:
        self.lab_id = check_lab_id(lab_id)
        self._prefix = lab_prefix(lab_id)
        self._netns_of = netns_of
        self._contexts: dict[str, Nft] = {}
        self._sockets: dict[str, elements.ElementSocket] = {}
        self._lock = threading.Lock()

    def netns(self, node: str) -> str:
        """The lab namespace of `node`, checked."""
        name = self._netns_of(node)
        if not name:
            raise NotImplementedError(HOST_NOT_IMPLEMENTED)
        if not name.startswith(self._prefix):
            raise LabError(f"refusing namespace {name!r} for node {node}: not a namespace of lab {self.lab_id}")
        return check_lab_netns(name)

    def nft(self, node: str) -> Nft:
        """The libnftables context of `node`'s namespace (LabError if the namespace is missing)."""
        return self._in_namespace(node, self._contexts, Nft)

    def element_socket(self, node: str) -> elements.ElementSocket:
        """The nfnetlink socket in `node`'s namespace for element-only changes."""
        return self._in_namespace(node, self._sockets, elements.ElementSocket)

    def _in_namespace(self, node: str, made: dict[str, _T], make: Callable[[str], _T]) -> _T:
        """One long-lived object per namespace, made again when the namespace was (a socket keeps
        a removed namespace alive, unreachable by name)."""
        name = self.netns(node)
        with self._lock:
            found = made.get(name)
            if found is not None and found.current():
                return found
            if found is not None:
                found.close()
                del made[name]
            if not netns_exists(name):
                raise LabError(f"node {node}: namespace {name} does not exist (is the lab up?)")
            new = made[name] = make(name)
            return new

    def generation(self, node: str) -> tuple[int, int] | None:
        name = self.netns(node)
        try:
            inode = os.stat(netns_path(name)).st_ino
        except FileNotFoundError:
            return None
        try:
            return (inode, self.element_socket(node).generation())
        except (elements.ElementError, OSError, LabError):
            return None

    def apply(self, node: str, table: ir.Table, ops: list[ir.Op]) -> None:
        check_table(table)
        if elements.supported(table, ops):
            try:
                self.element_socket(node).apply(table, ops)
            except (elements.ElementError, OSError) as exc:
                raise ApplyError(node, str(exc), ir.render(table, ops)) from exc
            return
        script = ir.render(table, ops)
        try:
            self.nft(node).run(script)
        except NftError as exc:
            raise ApplyError(node, str(exc), script) from exc

    def listing(self, node: str, *, stateless: bool = False) -> str | None:
        try:
            return self.nft(node).run(f"list table {TABLE_REF}", flags=OUTPUT_STATELESS if stateless else 0)
        except NftError as exc:
            if exc.missing:
                return None
            raise

    def json_listing(self, node: str) -> str | None:
        """The live table as `nft -j` prints it, counters included (for per-rule hits)."""
        try:
            return self.nft(node).run(f"list table {TABLE_REF}", flags=OUTPUT_JSON)
        except NftError as exc:
            if exc.missing:
                return None
            raise

    def current(self, node: str) -> ir.Table | None:
        text = self.listing(node, stateless=True)
        return None if text is None else parse_listing(text)

    def delete(self, node: str) -> None:
        if not netns_exists(self.netns(node)):
            return
        try:
            self.nft(node).run(f"delete table {TABLE_REF}")
        except NftError as exc:
            if not exc.missing:
                raise

    def close(self) -> None:
        with self._lock:
            for nft in self._contexts.values():
                nft.close()
            self._contexts.clear()
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()


# --------------------------------------------------------------------------------------------
# Reading a listing back


def parse_listing(text: str) -> ir.Table:
    """`nft list table` output → Table (sets, maps, chains; other set options are ignored)."""
    lines = [line.strip() for line in text.splitlines()]
    header = next((line for line in lines if line.startswith("table ")), None)
    if header is None:
        raise ValueError("not an nft table listing")
    family, name = header.split()[1:3]
    chains: dict[str, ir.Chain] = {}
    sets: dict[str, ir.NftSet] = {}
    i = lines.index(header) + 1
    while i < len(lines):
        words = lines[i].split()
        if len(words) >= 3 and words[0] in ("set", "map") and words[2] == "{":
            i = _parse_set(lines, i + 1, words[1], words[0] == "map", sets)
        elif len(words) >= 3 and words[0] == "chain" and words[2] == "{":
            i = _parse_chain(lines, i + 1, words[1], chains)
        else:
            i += 1
    return ir.Table(family, name, chains, sets)


def canonical(text: str) -> str:
    """A listing with its set, map and chain blocks sorted by kind and name: `nft list` prints them
    in creation order, so equal tables built in different orders list differently."""
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 2 or not lines[0].startswith("table ") or lines[-1] != "}":
        return text
    blocks: list[list[str]] = []
    for line in lines[1:-1]:
        if not line.strip():
            continue
        if line.startswith("\t") and not line.startswith("\t\t") and line.rstrip().endswith("{"):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    order = {"set": 0, "map": 0, "chain": 1}
    blocks.sort(key=lambda b: (order.get(b[0].split()[0], 2), b[0].split()[1] if len(b[0].split()) > 1 else ""))
    body = "\n\n".join("\n".join(b) for b in blocks)
    return f"{lines[0]}\n{body}\n}}\n" if blocks else f"{lines[0]}\n}}\n"


def _parse_chain(lines: list[str], i: int, name: str, chains: dict[str, ir.Chain]) -> int:
    hook: str | None = None
    rules: list[str] = []
    while i < len(lines) and lines[i] != "}":
        line = lines[i]
        if line.startswith("type ") and " hook " in line:
            hook = line
        elif line and not line.startswith("comment "):
            rules.append(line)
        i += 1
    chains[name] = ir.Chain(name, tuple(rules), hook)
    return i + 1


def _parse_set(lines: list[str], i: int, name: str, is_map: bool, sets: dict[str, ir.NftSet]) -> int:
    type_ = ""
    flags: tuple[str, ...] = ()
    elements: list[str] = []
    while i < len(lines) and lines[i] != "}":
        line = lines[i]
        if line.startswith("type "):
            type_ = line[len("type ") :]
        elif line.startswith("flags "):
            flags = tuple(f.strip() for f in line[len("flags ") :].split(","))
        elif line.startswith("elements = {"):
            body = line[len("elements = {") :]
            while not body.rstrip().endswith("}") and i + 1 < len(lines):
                i += 1
                body += " " + lines[i]
            elements = _split_elements(body.rstrip()[:-1])
        i += 1
    sets[name] = ir.NftSet(name, type_, flags, frozenset(elements), is_map)
    return i + 1


def _split_elements(body: str) -> list[str]:
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for pos, ch in enumerate(body):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "{[(":
            depth += 1
        elif not quoted and ch in "}])":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            out.append(body[start:pos].strip())
            start = pos + 1
    out.append(body[start:].strip())
    return [e for e in out if e]


__all__ = [
    "HOST_NOT_IMPLEMENTED",
    "TABLE_FAMILY",
    "TABLE_NAME",
    "TABLE_REF",
    "ApplyError",
    "Backend",
    "canonical",
    "FakeBackend",
    "KernelBackend",
    "check_table",
    "empty_table",
    "host_backend",
    "parse_listing",
]
