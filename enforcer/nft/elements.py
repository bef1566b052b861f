"""Set element changes sent to the kernel as one nfnetlink batch, without libnftables.

Why: before running any command, libnftables (1.0.6) reads the namespace's whole ruleset into its
cache. Adding one element to a set costs 5.6 ms beside a 3.8k-rule table and 76 ms beside a
32k-rule one, while the kernel's own work is about 0.1 ms (measured here, `bench/bench_dataplane.py`).
Live toggles (the `disabled` gate set) and pod churn change only elements of plain hash sets, so
those transactions go straight to the kernel: a batch (BEGIN, NEWSETELEM/DELSETELEM..., END) that
the kernel commits whole or not at all, like any nft script.

    sock = ElementSocket("ft-lab-node-a")          # a netlink socket living in that namespace
    sock.apply(table, [ir.SetElements("disabled", add=("0x5",))])

`supported(table, ops)` says whether every op is one this module can encode: element adds and
deletes (no flush) on plain sets (not maps, not interval sets) keyed by `mark`, `ipv4_addr` or
`ipv6_addr`. Anything else goes through libnftables.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Iterator

from enforcer.lab.kernel import check_lab_netns, in_place, place_identity, place_label
from enforcer.nft import ir

NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
REPLY_TIMEOUT_S = 2.0


def _mark(text: str) -> bytes:
    value = int(text, 0)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"mark {text} out of range")
    return struct.pack("=I", value)  # meta mark is loaded in host byte order


KEYS: dict[str, Callable[[str], bytes]] = {
    "mark": _mark,
    "ipv4_addr": lambda text: ipaddress.IPv4Address(text).packed,
    "ipv6_addr": lambda text: ipaddress.IPv6Address(text).packed,
}


class ElementError(Exception):
    """The kernel refused the batch (nothing of it took effect), or did not answer."""


def supported(table: ir.Table, ops: list[ir.Op]) -> bool:
    """Whether every op is an element add/delete this module can encode for `table`."""
    if not ops or table.family not in FAMILIES:
        return False
    for op in ops:
        if not isinstance(op, ir.SetElements) or op.flush:
            return False
        nset = table.sets.get(op.name)
        if nset is None or nset.is_map or nset.flags or nset.type not in KEYS:
            return False
        try:
            for element in (*op.add, *op.delete):
                KEYS[nset.type](element)
        except ValueError:
            return False
    return True


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, socket.htons(res_id))
    return struct.pack("=IHHII", 16 + len(nfgen) + len(body), kind, flags, seq, 0) + nfgen + body


def _element_message(table: ir.Table, name: str, keys: list[bytes], delete: bool, seq: int) -> bytes:
    elements = b"".join(
        _attr(NFTA_LIST_ELEM | NLA_F_NESTED,
              _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key)))
        for key in keys
    )
    body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.name.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elements))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_DELSETELEM if delete else NFT_MSG_NEWSETELEM)
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if delete else NLM_F_CREATE)
    return _message(kind, flags, seq, FAMILIES[table.family], 0, body)


def batch(table: ir.Table, ops: list[ir.Op], first_seq: int) -> tuple[bytes, dict[int, str]]:
    """The whole batch, and what each acknowledged message does (by sequence number)."""
    seq = first_seq
    parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b"")]
    what: dict[int, str] = {}
    for op in ops:
        assert isinstance(op, ir.SetElements)
        encode = KEYS[table.sets[op.name].type]
        for delete, elements in ((True, op.delete), (False, op.add)):
            if elements:
                seq += 1
                parts.append(_element_message(table, op.name, [encode(e) for e in elements], delete, seq))
                verb = "delete element" if delete else "add element"
                what[seq] = f"{verb} {table.ref} {op.name} {{ {', '.join(elements)} }}"
    seq += 1
    parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b""))
    return b"".join(parts), what


def _replies(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, seq, error, attributes) of each netlink message in `data`: error is 0 unless
    NLMSG_ERROR; attributes are what follows nlmsghdr and nfgenmsg."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        error = struct.unpack_from("=i", data, offset + 16)[0] if kind == NLMSG_ERROR else 0
        yield kind, seq, error, data[offset + 20:offset + length]
        offset += (length + 3) & ~3


def _attribute(attrs: bytes, wanted: int) -> bytes | None:
    """The payload of netlink attribute `wanted` in `attrs`, None if absent."""
    offset = 0
    while offset + 4 <= len(attrs):
        length, kind = struct.unpack_from("=HH", attrs, offset)
        if length < 4:
            break
        if kind & 0x3FFF == wanted:
            return attrs[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return None


class ElementSocket:
    """A NETLINK_NETFILTER socket created inside lab namespace `netns`, or (None) in the
    namespace the process runs in; thread-safe."""

    def __init__(self, netns: str | None) -> None:
        self.netns = None if netns is None else check_lab_netns(netns)
        self.label = place_label(netns)

        def create() -> tuple[socket.socket, tuple[int, int]]:
            here = os.stat("/proc/thread-self/ns/net")
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            sock.bind((0, 0))
            return sock, (here.st_dev, here.st_ino)

        self._sock, self._inode = in_place(netns, create)
        # Dropped without close() (a backend nobody closed), the socket still closes quietly (it
        # would keep a removed namespace alive).
        self._finalizer = weakref.finalize(self, self._sock.close)
        self._sock.settimeout(REPLY_TIMEOUT_S)
        self._seq = 1
        self._lock = threading.Lock()

    def current(self) -> bool:
        """Whether `netns` is still the namespace this socket lives in (not removed and re-made)."""
        return place_identity(self.netns) == self._inode and self._sock.fileno() >= 0

    def apply(self, table: ir.Table, ops: list[ir.Op]) -> None:
        """One transaction: every element change of `ops`, or (ElementError) none of them."""
        if not supported(table, ops):
            raise ValueError("not a set-element-only change this module can encode")
        with self._lock:
            data, what = batch(table, ops, self._seq)
            self._seq += len(what) + 2
            self._sock.send(data)
            pending = set(what)
            errors: list[str] = []
            while pending:
                for kind, seq, error, _attrs in _replies(self._recv()):
                    if kind == NLMSG_ERROR and seq in pending:
                        pending.discard(seq)
                        if error:
                            code = -error
                            errors.append(f"{what[seq]}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
        if errors:
            raise ElementError(f"{self.label}: the kernel refused the change, nothing applied: " + "; ".join(errors))

    def generation(self) -> int:
        """The namespace's nftables ruleset generation: every committed transaction, of any
        process, moves it on (`nft list ruleset` is not needed to know nothing changed)."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
            self._sock.send(_message(kind, NLM_F_REQUEST, seq, 0, 0, b""))
            while True:
                for got, rseq, error, attrs in _replies(self._recv()):
                    if rseq != seq:
                        continue
                    if got == NLMSG_ERROR:
                        raise ElementError(f"{self.label}: reading the ruleset generation: {os.strerror(-error)}")
                    if got == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                        found = _attribute(attrs, NFTA_GEN_ID)
                        if found is None or len(found) < 4:
                            raise ElementError(f"{self.label}: the kernel's generation answer has no id")
                        return int(struct.unpack_from("!I", found)[0])

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(65536)
        except TimeoutError as exc:
            raise ElementError(f"{self.label}: no answer from the kernel in {REPLY_TIMEOUT_S:g} s") from exc

    def close(self) -> None:
        self._finalizer()


__all__ = ["ElementError", "ElementSocket", "batch", "supported"]
