"""Netlink framing of received NFLOG skbs: which bytes are messages, without reading them.

`RawBatch` is what the reader hands to the writer: many received skbs ("chunks") laid out back
to back in one buffer, each starting on a 4-byte boundary, with the namespace ("source") and
receive time of each chunk. `frame` finds the packet messages in it (vectorised for the common
case of chunks whose messages all have one length, header by header otherwise) and notes
where framing broke; `count_events` is the cheap count the reader uses for chunks it drops.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flowtui.collector import nflog

I64 = npt.NDArray[np.int64]

_LITTLE = sys.byteorder == "little"
_HDR = struct.Struct("=IH")


@dataclass
class RawBatch:
    """Received bytes: chunks (one skb each) laid out back to back in `buf`."""

    buf: bytearray
    chunks: list[tuple[int, int, int, int]] = field(default_factory=list)  # (source, start, length, recv_ns)
    used: int = 0  # bytes of `buf` in use (chunk starts are 4-aligned)

    def __len__(self) -> int:
        return len(self.chunks)


@dataclass
class ParseStats:
    messages: int = 0  # NFLOG packet messages framed
    malformed: int = 0  # packet messages (or unframeable chunk tails) that could not be read
    unexpected: int = 0  # netlink messages that are neither NFLOG packets nor batch trailers
    errors: int = 0  # NLMSG_ERROR messages
    unknown_attrs: int = 0  # attributes of types we do not know (skipped)

    def add(self, other: ParseStats) -> None:
        self.messages += other.messages
        self.malformed += other.malformed
        self.unexpected += other.unexpected
        self.errors += other.errors
        self.unknown_attrs += other.unknown_attrs


def frame(batch: RawBatch, stats: ParseStats, breaks: list[tuple[int, int]]) -> tuple[I64, I64, I64]:
    """Offsets and lengths of the NFLOG packet messages of every chunk, and per-chunk counts.

    Where a chunk cannot be framed any further, or a packet message is too short to read, a
    break `(chunk index, messages framed before it in that chunk)` is appended to `breaks`:
    how many events were lost there is told by the sequence numbers (`SeqTracker`).

    Fast path, vectorised: a chunk whose messages all have the length of its first one (one rule,
    full copy range: the common case under load) is checked at once with numpy. Any other chunk
    is walked header by header in Python.
    """
    buf = batch.buf
    nchunks = len(batch.chunks)
    starts = np.fromiter((c[1] for c in batch.chunks), dtype=np.int64, count=nchunks)
    lengths = np.fromiter((c[2] for c in batch.chunks), dtype=np.int64, count=nchunks)
    unpack = _HDR.unpack_from
    stride = np.zeros(nchunks, dtype=np.int64)
    first_len = np.zeros(nchunks, dtype=np.int64)
    for i, (_source, start, length, _t) in enumerate(batch.chunks):
        if length >= 20:
            ln = unpack(buf, start)[0]
            first_len[i] = ln
            stride[i] = (ln + 3) & ~3
    body = lengths - np.where(lengths % np.maximum(stride, 1) == 20 % np.maximum(stride, 1), 20, 0)
    regular = (stride >= 20) & (body > 0) & (body % np.maximum(stride, 1) == 0)
    count = np.where(regular, body // np.maximum(stride, 1), 0)
    w32 = np.frombuffer(buf, dtype=np.uint32, count=len(buf) // 4)
    if regular.any():
        idx = np.nonzero(regular)[0]
        cnt = count[idx]
        total = int(cnt.sum())
        chunk_of = np.repeat(idx, cnt)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = starts[chunk_of] + within * stride[chunk_of]
        lens_ok = w32[pos >> 2].astype(np.int64) == first_len[chunk_of]
        kind_word = w32[(pos >> 2) + 1]
        kind = (kind_word & 0xFFFF) if _LITTLE else (kind_word >> 16)
        good = lens_ok & (kind == nflog.NFLOG_PACKET_TYPE)
        bad_chunks = np.unique(chunk_of[~good])
        tail = starts[idx] + cnt * stride[idx]
        has_tail = tail < starts[idx] + lengths[idx]
        tail_word = w32[np.minimum(tail, len(buf) - 8) >> 2]
        tail_kind = (w32[(np.minimum(tail, len(buf) - 8) >> 2) + 1] & 0xFFFF) if _LITTLE else None
        if tail_kind is None:
            tail_kind = w32[(np.minimum(tail, len(buf) - 8) >> 2) + 1] >> 16
        tail_ok = ~has_tail | ((tail_word == 20) & (tail_kind == nflog.NLMSG_DONE))
        regular[bad_chunks] = False
        regular[idx[~tail_ok]] = False
        count = np.where(regular, count, 0)
    offs: list[int] = []
    lens: list[int] = []
    counts = count.copy()
    irregular = np.nonzero(~regular)[0].tolist()
    slow_off: dict[int, tuple[list[int], list[int]]] = {}
    packet, done, noop, error = nflog.NFLOG_PACKET_TYPE, nflog.NLMSG_DONE, nflog.NLMSG_NOOP, nflog.NLMSG_ERROR
    for i in irregular:
        _source, start, length, _t = batch.chunks[i]
        off, end = start, start + length
        offs, lens = [], []
        append_off, append_len = offs.append, lens.append
        while off + 16 <= end:
            ln, kind = unpack(buf, off)
            if ln < 16 or off + ln > end:
                breaks.append((i, len(offs)))
                off = end
                break
            if kind == packet:
                if ln < 20:
                    breaks.append((i, len(offs)))
                else:
                    append_off(off)
                    append_len(ln)
            elif kind == done or kind == noop:
                pass
            elif kind == error:
                stats.errors += 1
            else:
                stats.unexpected += 1
            off += (ln + 3) & ~3
        if off < end:  # a tail too short for a header
            breaks.append((i, len(offs)))
        counts[i] = len(offs)
        slow_off[i] = (offs, lens)
    # Assemble in chunk order.
    total = int(counts.sum())
    out_off = np.empty(total, dtype=np.int64)
    out_len = np.empty(total, dtype=np.int64)
    begin = np.cumsum(counts) - counts
    if regular.any():
        idx = np.nonzero(regular)[0]
        cnt = counts[idx]
        within = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        chunk_of = np.repeat(idx, cnt)
        dest = begin[chunk_of] + within
        out_off[dest] = starts[chunk_of] + within * stride[chunk_of]
        out_len[dest] = first_len[chunk_of]
    for i, (o, ln_list) in slow_off.items():
        b = int(begin[i])
        out_off[b : b + len(o)] = o
        out_len[b : b + len(o)] = ln_list
    return out_off, out_len, counts


def count_events(buf: bytes | bytearray | memoryview, length: int) -> tuple[int, int, int, int]:
    """For a chunk we cannot process: (events, group, first seq, last seq); seqs are -1 if unknown.

    Used by the reader when the writer is too far behind, so that a dropped chunk is counted
    (loss cause `writer_backlog`) and the sequence tracker is not misled into seeing a gap.
    """
    unpack = _HDR.unpack_from
    off, n, first, last = 0, 0, -1, -1
    while off + 16 <= length:
        ln, kind = unpack(buf, off)
        if ln < 16 or off + ln > length:
            break
        if kind == nflog.NFLOG_PACKET_TYPE and ln >= 20:
            if n == 0:
                first = off
            last = off
            n += 1
        off += (ln + 3) & ~3
    if n == 0:
        return 0, -1, -1, -1
    group = struct.unpack_from("!H", buf, first + 18)[0]
    return n, group, _seq_of(buf, first), _seq_of(buf, last)


def _seq_of(buf: bytes | bytearray | memoryview, off: int) -> int:
    ln = _HDR.unpack_from(buf, off)[0]
    pos, end = off + 20, off + ln
    while pos + 4 <= end:
        alen, kind = nflog.NLA_HDR.unpack_from(buf, pos)
        if alen < 4:
            return -1
        if kind & nflog.NLA_TYPE_MASK == nflog.NFULA_SEQ and alen >= 8:
            return int(struct.unpack_from("!I", buf, pos + 4)[0])
        pos += (alen + 3) & ~3
    return -1
