"""Set element changes sent to the kernel as one nfnetlink batch, without libnftables.

Why: before running any command, libnftables (1.0.6) reads the namespace's whole ruleset into its
cache. Adding one element to a set costs 5.6 ms beside a 3.8k-rule table and 76 ms beside a
32k-rule one, while the kernel's own work is about 0.1 ms (measured here, `bench/bench_dataplane.py`).
Live toggles (the `disabled` gate set) and pod churn change only elements of plain hash sets, so
those transactions go straight to the kernel: a batch (BEGIN, NEWSETELEM/DELSETELEM..., END) that
the kernel commits whole or not at all, like any nft script.

    sock = ElementSocket("ft-lab-node-a")          # a netlink socket living in that namespace
    sock.apply(table, [ir.SetElements("disabled", add=("0x5",))])

Decision maps (decision.py) make toggles and one-policy edits element changes too, of
concatenated interval verdict maps (`dp4-…`: address . protocol . port range → goto an outcome
chain), plus the outcome chains (`dx-…`) new to the node and the removal of those no longer used.
libnftables would spend ~1 s filling its cache beside a 100k-rule table for that (measured), so
this module also encodes those: map elements with their range ends (KEY_END, exact ranges: the
kernel deletes an interval element only by its exact start and end), regular chains created,
flushed and deleted, and rules made of the few statements an outcome chain holds (`counter`,
`limit rate N/second burst B packets`, `log prefix … group … snaplen …`, `meta mark set mark |
C`, `return`/`drop`/`accept`, `comment`).

`supported(table, ops)` says whether every op is one this module can encode: element adds and
deletes (no flush) on plain sets keyed by `mark`, `ipv4_addr` or `ipv6_addr`, on verdict maps keyed
by those or `ifname` (pod churn: the workload dispatch maps), and on interval verdict maps of
addresses, protocols, ports and ICMP types/codes, concatenated (pipapo: start and end key) or single
(rbtree: a start element and an interval-end element after it, as nft sends them); regular (not base)
chains made, flushed, written with such rules, or deleted. Anything else goes through libnftables.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
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
NLM_F_APPEND = 0x800
NFT_MSG_NEWCHAIN = 3
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
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
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_KEY_END = 10
NFT_SET_ELEM_INTERVAL_END = 1
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_META_MARK = 3
VERDICTS = {"accept": 1, "drop": 0, "return": -5, "jump": -3, "goto": -4}
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
REPLY_TIMEOUT_S = 2.0
SO_SNDBUFFORCE = 32


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


# Fields of concatenated keys: each is padded to a 4-byte register (values in network order).
FIELDS: dict[str, Callable[[str], bytes]] = {
    # A decision map's peer class. In an interval concatenation nft 1.0.6 stores it big-endian
    # (its rule turns the loaded mark with `byteorder hton` first, so ranges compare bytewise);
    # in a hash concatenation, as loaded: host order (_HOST_FIELDS).
    "mark": lambda text: struct.pack(">I", int.from_bytes(_mark(text), sys.byteorder)),
    "ipv4_addr": lambda text: ipaddress.IPv4Address(text).packed,
    "ipv6_addr": lambda text: ipaddress.IPv6Address(text).packed,
    "inet_proto": lambda text: _number(text, 1),
    "inet_service": lambda text: _number(text, 2),
    "icmp_type": lambda text: _number(text, 1),
    "icmp_code": lambda text: _number(text, 1),
    "icmpv6_type": lambda text: _number(text, 1),
    "icmpv6_code": lambda text: _number(text, 1),
}


_HOST_FIELDS: dict[str, Callable[[str], bytes]] = {**FIELDS, "mark": _mark}


def _number(text: str, size: int) -> bytes:
    return int(text).to_bytes(size, "big")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _map_fields(nset: ir.NftSet) -> list[str] | None:
    """The key fields of a concatenated interval verdict map this module can encode, or None."""
    key, sep, data = nset.type.partition(" : ")
    fields = key.split(" . ")
    if (not nset.is_map or nset.flags != ("interval",) or sep != " : " or data != "verdict" or len(fields) < 2
            or any(f not in FIELDS for f in fields)):
        return None
    return fields


def _ifname(text: str) -> bytes:
    name = text.strip('"').encode()
    if not 0 < len(name) < 16 or text.count('"') not in (0, 2):
        raise ValueError(f"interface name {text!r}")
    return name.ljust(16, b"\0")


def _plain_map_key(nset: ir.NftSet) -> Callable[[str], bytes] | None:
    """The key encoder of a plain (not interval) verdict map this module can encode
    (`ifname : verdict` of the workload dispatch, `mark : verdict` of end-of-tier, and
    concatenations of single values such as the decision maps' exact ports, `inet_proto .
    inet_service : verdict`), or None."""
    key, sep, data = nset.type.partition(" : ")
    if not nset.is_map or nset.flags or sep != " : " or data != "verdict":
        return None
    fields = key.split(" . ")
    if len(fields) > 1:
        return _concatenation(fields) if all(f in FIELDS for f in fields) else None
    return _ifname if key == "ifname" else KEYS.get(key)


def _concatenation(fields: list[str]) -> Callable[[str], bytes]:
    """The key of `6 . 5432`: each field in its own 4-byte register, as in a concatenated range."""
    def encode(text: str) -> bytes:
        parts = text.split(" . ")
        if len(parts) != len(fields) or any("-" in p for p in parts):
            raise ValueError(f"element {text!r} is not one value for each of the map's {len(fields)} fields")
        return b"".join(_pad(_HOST_FIELDS[kind](part.strip())) for kind, part in zip(fields, parts, strict=True))
    return encode


def _verdict(text: str, data: str) -> tuple[str, str]:
    words = data.split()
    if not words or words[0] not in VERDICTS or len(words) != (2 if words[0] in ("goto", "jump") else 1):
        raise ValueError(f"element {text!r}: verdict {data!r} not supported")
    return words[0], words[1] if len(words) == 2 else ""


def _plain_map_element(encode: Callable[[str], bytes], text: str) -> tuple[bytes, tuple[str, str] | None]:
    key, _, data = text.partition(" : ")
    return encode(key.strip()), (_verdict(text, data) if data else None)


def _range_map_field(nset: ir.NftSet) -> str | None:
    """The key of a single-field interval verdict map (`inet_proto : verdict`, flags interval:
    the kernel's rbtree), or None."""
    key, sep, data = nset.type.partition(" : ")
    if not nset.is_map or nset.flags != ("interval",) or sep != " : " or data != "verdict" or key not in FIELDS:
        return None
    return key


def _range_elements(kind: str, text: str) -> list[tuple[bytes, int, tuple[str, str] | None]]:
    """The rbtree elements of `a-b : goto x` as nft makes them: (key, flags, verdict) of the start,
    then the end (b + 1, flagged INTERVAL_END, no data) unless b is the field's last value. Keys
    are the field's own width (no register padding outside concatenations)."""
    key, _, data = text.partition(" : ")
    first, _, last = key.strip().partition("-")
    start, end = FIELDS[kind](first), FIELDS[kind](last or first)
    out: list[tuple[bytes, int, tuple[str, str] | None]] = [(start, 0, _verdict(text, data) if data else None)]
    after = int.from_bytes(end, "big") + 1
    if after < 1 << (8 * len(end)):
        out.append((after.to_bytes(len(end), "big"), NFT_SET_ELEM_INTERVAL_END, None))
    return out


def _map_element(fields: list[str], text: str) -> tuple[bytes, bytes, tuple[str, str] | None]:
    """(start key, end key, (verdict, chain) or None) of `a-b . 6 . 80-90 : goto dx-…`."""
    key, _, data = text.partition(" : ")
    parts = key.split(" . ")
    if len(parts) != len(fields):
        raise ValueError(f"element {text!r} does not have the map's {len(fields)} fields")
    start, end = b"", b""
    for kind, part in zip(fields, parts, strict=True):
        first, _, last = part.strip().partition("-")
        start += _pad(FIELDS[kind](first))
        end += _pad(FIELDS[kind](last or first))
    return start, end, (_verdict(text, data) if data else None)


class ElementError(Exception):
    """The kernel refused the batch (nothing of it took effect), or did not answer."""


def supported(table: ir.Table, ops: list[ir.Op]) -> bool:
    """Whether every op is an element add/delete this module can encode for `table`."""
    if not ops or table.family not in FAMILIES:
        return False
    try:
        for op in ops:
            if isinstance(op, ir.SetElements):
                nset = table.sets.get(op.name)
                if nset is None:
                    return False
                fields = _map_fields(nset)
                if fields is not None:
                    for element in op.add:
                        if _map_element(fields, element)[2] is None:
                            return False
                    for element in op.delete:
                        _map_element(fields, element)
                elif (ranged := _range_map_field(nset)) is not None:
                    for element in op.add:
                        if _range_elements(ranged, element)[0][2] is None:
                            return False
                    for element in op.delete:
                        _range_elements(ranged, element)
                elif (plain := _plain_map_key(nset)) is not None:
                    for element in op.add:
                        if _plain_map_element(plain, element)[1] is None:
                            return False
                    for element in op.delete:
                        _plain_map_element(plain, element)
                elif nset.is_map or nset.flags or nset.type not in KEYS:
                    return False  # (plain interval sets: libnftables, which sends their ranges)
                else:
                    for element in (*op.add, *op.delete):
                        KEYS[nset.type](element)
            elif isinstance(op, (ir.DefineChain, ir.DeleteChain)):
                name = op.chain.name if isinstance(op, ir.DefineChain) else op.name
                known = table.chains.get(name)
                if (known is not None and known.hook) or (isinstance(op, ir.DefineChain) and op.chain.hook):
                    return False  # base chains: libnftables
                if isinstance(op, ir.DefineChain):
                    for rule in op.chain.rules:
                        rule_expressions(rule)
            else:
                return False
    except ValueError:
        return False
    return True


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    nfgen = struct.pack("=BBH", family, 0, socket.htons(res_id))
    return struct.pack("=IHHII", 16 + len(nfgen) + len(body), kind, flags, seq, 0) + nfgen + body


def _verdict_data(verdict: str, chain: str) -> bytes:
    code = _attr(NFTA_VERDICT_CODE, struct.pack("!i", VERDICTS[verdict]))
    if chain:
        code += _attr(NFTA_VERDICT_CHAIN, chain.encode() + b"\0")
    return _attr(NFTA_DATA_VERDICT | NLA_F_NESTED, code)


def _element(key: bytes, end: bytes | None = None, verdict: tuple[str, str] | None = None, flags: int = 0) -> bytes:
    body = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key))
    if flags:
        body += _attr(NFTA_SET_ELEM_FLAGS, struct.pack("!I", flags))
    if end is not None:
        body += _attr(NFTA_SET_ELEM_KEY_END | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, end))
    if verdict is not None:
        body += _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, _verdict_data(*verdict))
    return _attr(NFTA_LIST_ELEM | NLA_F_NESTED, body)


def _element_message(table: ir.Table, name: str, encoded: list[bytes] | None, delete: bool, seq: int) -> bytes:
    """NEWSETELEM/DELSETELEM of `encoded` elements; a DELSETELEM without any (None) flushes the set."""
    body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.name.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"))
    if encoded is not None:
        body += _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, b"".join(encoded))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_DELSETELEM if delete else NFT_MSG_NEWSETELEM)
    flags = NLM_F_REQUEST | NLM_F_ACK | (0 if delete else NLM_F_CREATE)
    return _message(kind, flags, seq, FAMILIES[table.family], 0, body)


def _encoded(table: ir.Table, name: str, elements: tuple[str, ...], delete: bool) -> list[bytes]:
    nset = table.sets[name]
    fields = _map_fields(nset)
    ranged = _range_map_field(nset)
    if ranged is not None:
        return [_element(key, None, None if delete else verdict, flags)
                for e in elements for key, flags, verdict in _range_elements(ranged, e)]
    plain = _plain_map_key(nset)
    if plain is not None:
        pairs = [_plain_map_element(plain, e) for e in elements]
        return [_element(key, None, None if delete else verdict) for key, verdict in pairs]
    if fields is None:
        encode = KEYS[nset.type]
        return [_element(encode(e)) for e in elements]
    out = []
    for text in elements:
        start, end, verdict = _map_element(fields, text)
        out.append(_element(start, end, None if delete else verdict))
    return out


CHUNK_BYTES = 60_000  # below the 65,535 bytes a netlink attribute's length can say


def _chunks(encoded: list[bytes]) -> list[tuple[int, int]]:
    """[first, last) index ranges of `encoded` whose bytes fit one element-list attribute."""
    out: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, e in enumerate(encoded):
        if size + len(e) > CHUNK_BYTES and i > start:
            out.append((start, i))
            start, size = i, 0
        size += len(e)
    if start < len(encoded):
        out.append((start, len(encoded)))
    return out


def _chain_message(kind: int, flags: int, table: ir.Table, chain: str, seq: int, name_attr: int,
                   extra: bytes = b"") -> bytes:
    """A chain or rule message: NFTA_CHAIN_TABLE and NFTA_RULE_TABLE are both attribute 1."""
    body = _attr(1, table.name.encode() + b"\0") + _attr(name_attr, chain.encode() + b"\0") + extra
    return _message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq, FAMILIES[table.family], 0, body)


def batch(table: ir.Table, ops: list[ir.Op], first_seq: int) -> tuple[bytes, dict[int, str]]:
    """The whole batch, and what each acknowledged message does (by sequence number). Ops keep
    their order (ir.diff's: new chains, elements, rules, then removals); within one element op
    deletes go first, so a range may be replaced by an overlapping one in the same batch."""
    seq = first_seq
    parts = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b"")]
    what: dict[int, str] = {}
    ack = NLM_F_REQUEST | NLM_F_ACK

    def add(kind: int, flags: int, name: str, name_attr: int, extra: bytes, text: str) -> None:
        nonlocal seq
        seq += 1
        parts.append(_chain_message(kind, flags, table, name, seq, name_attr, extra))
        what[seq] = text

    ref = table.ref
    for op in ops:
        if isinstance(op, ir.SetElements):
            if op.flush:
                seq += 1
                parts.append(_element_message(table, op.name, None, True, seq))
                what[seq] = f"flush {'map' if table.sets[op.name].is_map else 'set'} {ref} {op.name}"
            for delete, elements in ((True, op.delete), (False, op.add)):
                encoded = _encoded(table, op.name, elements, delete) if elements else []
                # A netlink attribute holds at most 64 KiB: big changes take several messages
                # (of the same batch, so still one transaction).
                for first, last in _chunks(encoded):
                    seq += 1
                    parts.append(_element_message(table, op.name, encoded[first:last], delete, seq))
                    verb = "delete element" if delete else "add element"
                    more = ", ..." if len(elements) > 20 else ""
                    what[seq] = f"{verb} {ref} {op.name} {{ {', '.join(elements[:20])}{more} }}"
        elif isinstance(op, ir.DefineChain):
            name = op.chain.name
            if op.new:
                add(NFT_MSG_NEWCHAIN, ack | NLM_F_CREATE, name, NFTA_CHAIN_NAME, b"", f"add chain {ref} {name}")
            else:  # flush, then the rules
                add(NFT_MSG_DELRULE, ack, name, NFTA_RULE_CHAIN, b"", f"flush chain {ref} {name}")
            for rule in op.chain.rules:
                exprs, comment = rule_expressions(rule)
                extra = _attr(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, exprs)
                if comment is not None:
                    extra += _attr(NFTA_RULE_USERDATA, comment)
                add(NFT_MSG_NEWRULE, ack | NLM_F_CREATE | NLM_F_APPEND, name, NFTA_RULE_CHAIN, extra,
                    f"add rule {ref} {name} {rule}")
        elif isinstance(op, ir.DeleteChain):
            add(NFT_MSG_DELCHAIN, ack, op.name, NFTA_CHAIN_NAME, b"", f"delete chain {ref} {op.name}")
        else:
            raise ValueError(f"{op} cannot be sent as a batch of this module")
    seq += 1
    parts.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, b""))
    return b"".join(parts), what


# ---- the statements of outcome chains --------------------------------------------------------


def _expr(name: str, data: bytes) -> bytes:
    return _attr(NFTA_LIST_ELEM | NLA_F_NESTED,
                 _attr(NFTA_EXPR_NAME, name.encode() + b"\0") + _attr(NFTA_EXPR_DATA | NLA_F_NESTED, data))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("!I", value))


def _u64(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("!Q", value))


def _quoted(words: list[str], i: int) -> tuple[str, int]:
    """The string that starts at words[i] (`"ft:A1"`), and the index after it."""
    if not words[i].startswith('"'):
        raise ValueError(f"expected a quoted string at {words[i]!r}")
    parts = [words[i]]
    while not (parts[-1].endswith('"') and len(" ".join(parts)) >= 2):
        i += 1
        parts.append(words[i])
    text = " ".join(parts)
    return text[1:-1], i + 1


def rule_expressions(rule: str) -> tuple[bytes, bytes | None]:
    """(NFTA_RULE_EXPRESSIONS payload, comment userdata or None) of a rule made of the statements
    outcome chains use; ValueError for anything else (that change goes through libnftables)."""
    words = rule.split()
    exprs = b""
    comment: bytes | None = None
    i = 0
    try:
        while i < len(words):
            w = words[i]
            if w == "counter":
                exprs += _expr("counter", _u64(1, 0) + _u64(2, 0))
                i += 1
            elif w == "limit" and words[i + 1] == "rate" and words[i + 3] == "burst" and words[i + 5] == "packets":
                rate, unit = words[i + 2].split("/")
                if unit != "second":
                    raise ValueError(f"limit unit {unit!r}")
                exprs += _expr("limit", _u64(1, int(rate)) + _u64(2, 1) + _u32(3, int(words[i + 4]))
                               + _u32(4, 0) + _u32(5, 0))
                i += 6
            elif w == "log":
                i += 1
                data = b""
                while i < len(words) and words[i] in ("prefix", "group", "snaplen"):
                    key = words[i]
                    if key == "prefix":
                        prefix, i = _quoted(words, i + 1)
                        data += _attr(2, prefix.encode() + b"\0")
                    elif key == "group":
                        data += _attr(1, struct.pack("!H", int(words[i + 1])))
                        i += 2
                    else:
                        data += _u32(3, int(words[i + 1]))
                        i += 2
                exprs += _expr("log", data)
            elif words[i:i + 5] == ["meta", "mark", "set", "mark", "|"]:
                value = int(words[i + 5], 0)
                if not 0 <= value <= 0xFFFFFFFF:
                    raise ValueError(f"mark {value:#x}")
                exprs += _expr("meta", _u32(1, NFT_REG_1) + _u32(2, NFT_META_MARK))
                exprs += _expr("bitwise", _u32(1, NFT_REG_1) + _u32(2, NFT_REG_1) + _u32(3, 4)
                               + _attr(4 | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, struct.pack("=I", ~value & 0xFFFFFFFF)))
                               + _attr(5 | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, struct.pack("=I", value))))
                exprs += _expr("meta", _u32(2, NFT_META_MARK) + _u32(3, NFT_REG_1))
                i += 6
            elif w in ("accept", "drop", "return") and i + 1 == len(words) or w in ("accept", "drop", "return") \
                    and words[i + 1] == "comment":
                exprs += _expr("immediate", _u32(1, NFT_REG_VERDICT)
                               + _attr(2 | NLA_F_NESTED, _verdict_data(w, "")))
                i += 1
            elif w == "comment":
                text, i = _quoted(words, i + 1)
                raw = text.encode() + b"\0"
                if len(raw) > 255 or i != len(words):
                    raise ValueError("comment too long or not last")
                comment = bytes([0, len(raw)]) + raw  # NFTNL_UDATA_RULE_COMMENT
            else:
                raise ValueError(f"statement {w!r} not supported")
    except IndexError as exc:
        raise ValueError(f"incomplete rule {rule!r}") from exc
    if not exprs:
        raise ValueError("empty rule")
    return exprs, comment


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
        self._sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        self._lock = threading.Lock()

    def current(self) -> bool:
        """Whether `netns` is still the namespace this socket lives in (not removed and re-made)."""
        return place_identity(self.netns) == self._inode and self._sock.fileno() >= 0

    def apply(self, table: ir.Table, ops: list[ir.Op]) -> None:
        """One transaction: every element change of `ops`, or (ElementError) none of them."""
        if not supported(table, ops):
            raise ValueError("not a change this module can encode")
        with self._lock:
            data, what = batch(table, ops, self._seq)
            self._seq += len(what) + 2
            if len(data) > self._sndbuf:
                # A big batch (a map rebuilt) is one message: the socket's send buffer must hold
                # it whole, as libmnl's batches do (root may force it past the sysctl maximum).
                self._sndbuf = len(data) + 4096
                self._sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, self._sndbuf)
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


__all__ = ["ElementError", "ElementSocket", "batch", "rule_expressions", "supported"]
