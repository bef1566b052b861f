"""Packet headers -> columns, vectorised with numpy over a whole batch.

NFLOG hands us the first `copy_range` bytes of each packet from its network header. Every field
is a gather at a per-row offset into the batch buffer, masked by how many bytes were captured:

- IPv4: version, header length, total length, fragment offset, protocol, addresses;
- IPv6: payload length, next header, addresses, then up to three extension headers (hop-by-hop,
  routing, destination options, fragment, AH) to reach the transport header;
- TCP, UDP, SCTP, UDP-Lite, DCCP: ports; TCP: flags; ICMP and ICMPv6: type and code.

A field that lies beyond the captured bytes, or in a non-first fragment, is absent (its `has_*`
mask is False) rather than wrong. Addresses become a small table of distinct strings and a code
per row (`address_table`), which is what the store inserts as a dictionary column.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

PORT_PROTOCOLS = (6, 17, 33, 132, 136)  # TCP, UDP, DCCP, SCTP, UDP-Lite
ICMP_PROTOCOLS = (1, 58)
V6_EXT_LENGTH8 = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8
V6_FRAGMENT, V6_AH = 44, 51
V6_EXT_STEPS = 3


@dataclass
class Decoded:
    ip_version: U8  # 4, 6 or 0 (not IP / not captured)
    proto: U8
    has_proto: Mask
    length: npt.NDArray[np.uint32]  # IP datagram length from its header; 0 if unknown
    src4: npt.NDArray[np.uint32]  # IPv4 rows only
    dst4: npt.NDArray[np.uint32]
    src6: U8  # (n, 16): IPv6 rows only
    dst6: U8
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    has_ports: Mask
    icmp_type: U8
    icmp_code: U8
    has_icmp: Mask
    tcp_flags: U8
    has_tcp_flags: Mask

    def __len__(self) -> int:
        return len(self.ip_version)


class _Gather:
    """Bytes at per-row offsets from each row's payload start, zero where not captured."""

    def __init__(self, buf: U8, start: I64, cap: I64) -> None:
        self.buf = buf
        self.start = np.maximum(start, 0)
        self.cap = np.where(start >= 0, cap, 0)
        self.last = len(buf) - 1

    def has(self, off: I64 | int, size: int) -> Mask:
        return np.asarray(np.asarray(off) + size <= self.cap)

    def u8(self, off: I64 | int) -> U8:
        pos = self.start + off
        got = self.buf[np.minimum(pos, self.last)]
        return np.where(np.asarray(off) < self.cap, got, np.uint8(0)).astype(np.uint8)

    def be16(self, off: I64 | int) -> npt.NDArray[np.uint16]:
        return ((self.u8(off).astype(np.uint16) << 8) | self.u8(np.asarray(off) + 1)).astype(np.uint16)

    def be32(self, off: I64 | int) -> npt.NDArray[np.uint32]:
        hi = self.be16(off).astype(np.uint32)
        return ((hi << 16) | self.be16(np.asarray(off) + 2)).astype(np.uint32)

    def block(self, off: int, size: int) -> U8:
        cols = np.arange(off, off + size, dtype=np.int64)
        idx = np.minimum(self.start[:, None] + cols[None, :], self.last)
        return np.where(cols[None, :] < self.cap[:, None], self.buf[idx], np.uint8(0)).astype(np.uint8)


def decode(buf: U8, payload_off: I64, payload_len: I64) -> Decoded:
    """Decode the network and transport headers of every row."""
    n = len(payload_off)
    g = _Gather(buf, payload_off, payload_len)
    b0 = g.u8(0)
    version = (b0 >> 4).astype(np.uint8)
    v4 = (version == 4) & g.has(0, 20)
    v6 = (version == 6) & g.has(0, 40)
    ip_version = np.where(v4, np.uint8(4), np.where(v6, np.uint8(6), np.uint8(0))).astype(np.uint8)

    # IPv4
    ihl = ((b0 & 0x0F).astype(np.int64)) * 4
    v4 &= ihl >= 20
    frag4 = (g.be16(6) & 0x1FFF) != 0
    proto = np.where(v4, g.u8(9), np.uint8(0)).astype(np.uint8)
    length = np.where(v4, g.be16(2).astype(np.uint32), np.uint32(0)).astype(np.uint32)
    src4 = np.where(v4, g.be32(12), np.uint32(0)).astype(np.uint32)
    dst4 = np.where(v4, g.be32(16), np.uint32(0)).astype(np.uint32)
    l4 = np.where(v4, ihl, 0).astype(np.int64)
    first_fragment = ~(v4 & frag4)
    has_proto = v4.copy()

    # IPv6, walking extension headers in step
    v6_rows = np.nonzero(v6)[0]
    src6 = np.zeros((n, 16), dtype=np.uint8)
    dst6 = np.zeros((n, 16), dtype=np.uint8)
    if v6_rows.size:
        length[v6_rows] = g.be16(4)[v6_rows].astype(np.uint32) + 40
        src6[v6_rows] = g.block(8, 16)[v6_rows]
        dst6[v6_rows] = g.block(24, 16)[v6_rows]
        nh = g.u8(6).astype(np.int64)
        off = np.full(n, 40, dtype=np.int64)
        known = v6.copy()
        for _ in range(V6_EXT_STEPS):
            ext8 = known & np.isin(nh, V6_EXT_LENGTH8)
            frag = known & (nh == V6_FRAGMENT)
            ah = known & (nh == V6_AH)
            step = ext8 | frag | ah
            if not step.any():
                break
            known &= ~step | g.has(off, 2)
            step &= known
            hdr_len = g.u8(off + 1).astype(np.int64)
            later_fragment = frag & ((g.be16(off + 2) >> 3) != 0)
            first_fragment &= ~later_fragment
            nxt = g.u8(off).astype(np.int64)
            size = np.where(ext8, (hdr_len + 1) * 8, np.where(frag, 8, (hdr_len + 2) * 4))
            nh = np.where(step, nxt, nh)
            off = np.where(step, off + size, off)
        still_ext = np.isin(nh, (*V6_EXT_LENGTH8, V6_FRAGMENT, V6_AH))
        v6_known = known & ~still_ext
        proto = np.where(v6_known, nh, proto).astype(np.uint8)
        has_proto |= v6_known
        l4 = np.where(v6, off, l4)

    transport = has_proto & first_fragment
    ported = transport & np.isin(proto, PORT_PROTOCOLS) & g.has(l4, 4)
    sport = np.where(ported, g.be16(l4), np.uint16(0)).astype(np.uint16)
    dport = np.where(ported, g.be16(l4 + 2), np.uint16(0)).astype(np.uint16)
    icmp = transport & (((proto == 1) & v4) | ((proto == 58) & v6)) & g.has(l4, 2)
    icmp_type = np.where(icmp, g.u8(l4), np.uint8(0)).astype(np.uint8)
    icmp_code = np.where(icmp, g.u8(l4 + 1), np.uint8(0)).astype(np.uint8)
    flags = transport & (proto == 6) & g.has(l4, 14)
    tcp_flags = np.where(flags, g.u8(l4 + 13), np.uint8(0)).astype(np.uint8)
    return Decoded(
        ip_version=ip_version,
        proto=proto,
        has_proto=has_proto,
        length=length,
        src4=src4,
        dst4=dst4,
        src6=src6,
        dst6=dst6,
        sport=sport,
        dport=dport,
        has_ports=ported,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        has_icmp=icmp,
        tcp_flags=tcp_flags,
        has_tcp_flags=flags,
    )


def address_table(dec: Decoded) -> tuple[list[str], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Distinct address strings and, per row, the code of its source and destination (-1: none)."""
    n = len(dec)
    src_code = np.full(n, -1, dtype=np.int32)
    dst_code = np.full(n, -1, dtype=np.int32)
    texts: list[str] = []
    v4 = np.nonzero(dec.ip_version == 4)[0]
    if v4.size:
        both = np.concatenate([dec.src4[v4], dec.dst4[v4]])
        uniq, inv = np.unique(both, return_inverse=True)
        texts.extend(socket.inet_ntoa(int(a).to_bytes(4, "big")) for a in uniq.tolist())
        inv = inv.reshape(-1).astype(np.int32)
        src_code[v4] = inv[: v4.size]
        dst_code[v4] = inv[v4.size :]
    v6 = np.nonzero(dec.ip_version == 6)[0]
    if v6.size:
        base = len(texts)
        both6 = np.ascontiguousarray(np.concatenate([dec.src6[v6], dec.dst6[v6]]))
        keyed = both6.view(np.dtype((np.void, 16))).ravel()
        uniq6, raw_inv6 = np.unique(keyed, return_inverse=True)
        texts.extend(str(ipaddress.IPv6Address(u.tobytes())) for u in uniq6)
        codes6 = raw_inv6.reshape(-1).astype(np.int32) + base
        src_code[v6] = codes6[: v6.size]
        dst_code[v6] = codes6[v6.size :]
    return texts, src_code, dst_code
