"""The backend of one agent: one node's `inet flowtui` table, in one place.

    backend = NodeBackend("node-a", "ft-xa1-node-a")   # flowtui agent --netns / --lab
    backend = NodeBackend("worker-1", None)            # flowtui agent --host: where the process runs

`--netns` and `--host` are one code path: the libnftables context and the element socket are made
in the lab namespace (by a thread that entered it) or right here in the process's own namespace,
and every later call goes through them, so the host mode is tested by running the agent with
`--host` inside a lab node namespace (`ip netns exec ft-... flowtui agent --host`).

Like every backend it owns the table `inet flowtui` and nothing else: its commands name that
table (add, flush, delete its chains, sets and elements; `list table`), never the ruleset, another
table, a route or an interface. A named namespace must be a lab one (`ft-`): for any other,
run the agent inside it (`ip netns exec NS flowtui agent --host`), which says where it runs
without a name this process could mistype into someone else's namespace.
"""

from __future__ import annotations

import threading

from enforcer.lab.kernel import check_lab_netns, place_identity, place_label
from enforcer.lab.names import LabError
from enforcer.nft import elements, ir
from enforcer.nft.backend import TABLE_REF, ApplyError, check_table, parse_listing
from enforcer.nft.libnft import OUTPUT_JSON, OUTPUT_STATELESS, Nft, NftError


class NodeBackend:
    """Applies `node`'s table in lab namespace `netns`, or (None) in the process's own namespace.
    Other node names are refused: an agent enforces its own node only."""

    def __init__(self, node: str, netns: str | None, lab_id: str | None = None) -> None:
        self.node = node
        self.netns = None if netns is None else check_lab_netns(netns)
        self.place = place_label(netns)
        # The reconciler sets up WireGuard only when the backend enforces in its lab (`lab_id`).
        self.lab_id = lab_id
        self._nft: Nft | None = None
        self._socket: elements.ElementSocket | None = None
        self._lock = threading.Lock()

    def _check(self, node: str) -> None:
        if node != self.node:
            raise LabError(f"this agent enforces node {self.node}, not {node}")

    def _context(self) -> Nft:
        with self._lock:
            if self._nft is None or not self._nft.current():
                if self._nft is not None:
                    self._nft.close()
                self._nft = None
                self._exists()
                self._nft = Nft(self.netns)
            return self._nft

    def _elements(self) -> elements.ElementSocket:
        with self._lock:
            if self._socket is None or not self._socket.current():
                if self._socket is not None:
                    self._socket.close()
                self._socket = None
                self._exists()
                self._socket = elements.ElementSocket(self.netns)
            return self._socket

    def _exists(self) -> None:
        if place_identity(self.netns) is None:
            raise LabError(f"node {self.node}: namespace {self.place} does not exist (is the lab up?)")

    def apply(self, node: str, table: ir.Table, ops: list[ir.Op]) -> None:
        self._check(node)
        check_table(table)
        if elements.supported(table, ops):
            try:
                self._elements().apply(table, ops)
            except (elements.ElementError, OSError) as exc:
                raise ApplyError(node, str(exc), ir.render(table, ops)) from exc
            return
        script = ir.render(table, ops)
        try:
            self._context().run(script)
        except NftError as exc:
            raise ApplyError(node, str(exc), script) from exc

    def _list(self, node: str, flags: int) -> str | None:
        self._check(node)
        try:
            return self._context().run(f"list table {TABLE_REF}", flags=flags)
        except NftError as exc:
            if exc.missing:
                return None
            raise

    def listing(self, node: str, *, stateless: bool = False) -> str | None:
        return self._list(node, OUTPUT_STATELESS if stateless else 0)

    def json_listing(self, node: str) -> str | None:
        return self._list(node, OUTPUT_JSON)

    def current(self, node: str) -> ir.Table | None:
        text = self.listing(node, stateless=True)
        return None if text is None else parse_listing(text)

    def delete(self, node: str) -> None:
        self._check(node)
        if place_identity(self.netns) is None:
            return
        try:
            self._context().run(f"delete table {TABLE_REF}")
        except NftError as exc:
            if not exc.missing:
                raise

    def generation(self, node: str) -> tuple[int, int] | None:
        self._check(node)
        identity = place_identity(self.netns)
        if identity is None:
            return None
        try:
            return (identity[1], self._elements().generation())
        except (elements.ElementError, OSError, LabError):
            return None

    def close(self) -> None:
        with self._lock:
            if self._nft is not None:
                self._nft.close()
            if self._socket is not None:
                self._socket.close()
            self._nft = self._socket = None


__all__ = ["NodeBackend"]
