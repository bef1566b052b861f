"""NFLOG messages -> columns, vectorised: Python once per message header, numpy for the rest.

1. **Framing** (`framing.frame`): the packet messages of every received chunk; other netlink
   messages are classified (`NLMSG_DONE`/`NOOP` are batch trailers, `NLMSG_ERROR` and other
   types are *unexpected*), and a spot where framing broke is noted.
2. **Attributes**: messages laid out like the first message of their length are checked at
   once, one 32-bit header word per attribute (`_walk_templates`: under load nearly every row);
   the others are walked in parallel, one attribute per step (`_walk`). An attribute shorter
   than its header or its type's value, or running past its message, makes the message
   *malformed*; attribute types the kernel may add later are counted as *unknown* and skipped.
3. **Fields** are gathered at the recorded offsets: group, hook, hw protocol, mark, interfaces,
   timestamp, sequence numbers; the prefix becomes a small table of distinct strings plus a code
   per event; the payload stays in the buffer (offset + length) for `decode.py`.

Nothing here raises on bad input. A malformed message whose sequence number is readable is
counted as `malformed` at once; where no number is readable (or framing broke), the sequence
gap that follows tells how many events were lost, and is counted as `malformed` rather than as
an overrun (`_seq_stream`, `sequence.SeqTracker`).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from flowtui.collector import nflog
from flowtui.collector.framing import ParseStats, RawBatch, count_events, frame
from flowtui.collector.sequence import SeqTracker

__all__ = ["ParseStats", "Parsed", "RawBatch", "SeqTracker", "count_events", "frame", "parse"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_LITTLE = sys.byteorder == "little"
_HDR = struct.Struct("=IH")
_WORD = struct.Struct("=I")
PREFIX_KEY_BYTES = 32  # prefixes up to this long are told apart vectorised; longer ones in Python
_WANTED = (
    nflog.NFULA_PACKET_HDR,
    nflog.NFULA_MARK,
    nflog.NFULA_TIMESTAMP,
    nflog.NFULA_IFINDEX_INDEV,
    nflog.NFULA_IFINDEX_OUTDEV,
    nflog.NFULA_PAYLOAD,
    nflog.NFULA_PREFIX,
    nflog.NFULA_SEQ,
    nflog.NFULA_SEQ_GLOBAL,
)
_MIN_LEN = {  # attribute payload sizes below which the attribute is malformed
    nflog.NFULA_PACKET_HDR: 4,
    nflog.NFULA_MARK: 4,
    nflog.NFULA_TIMESTAMP: 16,
    nflog.NFULA_IFINDEX_INDEV: 4,
    nflog.NFULA_IFINDEX_OUTDEV: 4,
    nflog.NFULA_SEQ: 4,
    nflog.NFULA_SEQ_GLOBAL: 4,
}
MAX_ATTRS = 64  # a message with more attributes than this is malformed
# For a 32-bit word read from memory, the bits holding its first k bytes (k = 0..4).
_KEEP_MASK = np.array(
    [0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF] if _LITTLE else [0, 0xFF000000, 0xFFFF0000, 0xFFFFFF00, 0xFFFFFFFF],
    dtype=np.uint32,
)


@dataclass
class Parsed:
    """Columns of one batch of well-formed NFLOG packet messages (one row per event)."""

    buf: U8  # the batch buffer, for payload gathering
    source: npt.NDArray[np.uint16]
    recv_ns: I64
    family: U8  # nfgenmsg family (AF_INET=2, AF_INET6=10, bridge=7, ...)
    group: npt.NDArray[np.uint16]
    hook: npt.NDArray[np.int16]  # -1 when absent
    hw_protocol: npt.NDArray[np.uint16]
    mark: npt.NDArray[np.uint32]
    indev: npt.NDArray[np.uint32]  # 0 when absent
    outdev: npt.NDArray[np.uint32]
    ts_us: I64  # kernel timestamp in microseconds, 0 when absent (output hook)
    seq: I64  # per-group sequence number, -1 when absent
    seq_global: I64
    prefix_code: npt.NDArray[np.int32]  # index into `prefixes`
    prefixes: list[str]  # "" = no prefix attribute
    payload_off: I64  # -1 when absent
    payload_len: I64
    # Sequence numbers of every framed message, well-formed or not, in arrival order.
    seq_source: npt.NDArray[np.uint16] = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    seq_group: npt.NDArray[np.uint16] = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    seq_value: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Where events were lost to malformed bytes without a readable sequence number:
    # (source, group or -1, sequence number just before or -1, position in the seq stream).
    suspects: list[tuple[int, int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.source)


def parse(batch: RawBatch, stats: ParseStats | None = None) -> Parsed:
    """Frame and parse a batch; counts go to `stats` (a fresh one if not given)."""
    stats = stats if stats is not None else ParseStats()
    size = (batch.used + 3) & ~3
    if len(batch.buf) < size + 64 or len(batch.buf) % 4:
        batch.buf.extend(b"\0" * (size + 64 - len(batch.buf) + (-len(batch.buf) % 4)))
    breaks: list[tuple[int, int]] = []
    offs, mlen, cnt = frame(batch, stats, breaks)
    b8 = np.frombuffer(batch.buf, dtype=np.uint8)
    w32 = np.frombuffer(batch.buf, dtype=np.uint32, count=len(batch.buf) // 4)
    n = len(offs)
    chunk_source = np.fromiter((c[0] for c in batch.chunks), dtype=np.uint16, count=len(batch.chunks))
    chunk_time = np.fromiter((c[3] for c in batch.chunks), dtype=np.int64, count=len(batch.chunks))
    source = np.repeat(chunk_source, cnt)
    recv_ns = np.repeat(chunk_time, cnt)

    found_off = {t: np.full(n, -1, dtype=np.int64) for t in _WANTED}
    found_len = {t: np.zeros(n, dtype=np.int64) for t in (nflog.NFULA_PREFIX, nflog.NFULA_PAYLOAD)}
    ok = np.ones(n, dtype=bool)
    rest = _walk_templates(batch.buf, w32, offs, mlen, found_off, found_len, stats)
    if rest.size:
        _walk(w32, rest, offs, mlen, found_off, found_len, ok, stats)

    seq_source, seq_group, seq_value, suspects = _seq_stream(
        b8, w32, batch, offs, cnt, source, found_off[nflog.NFULA_SEQ], ok, breaks, stats
    )
    stats.messages += int(ok.sum())
    if not ok.all():
        offs, source, recv_ns = offs[ok], source[ok], recv_ns[ok]
        found_off = {t: v[ok] for t, v in found_off.items()}
        found_len = {t: v[ok] for t, v in found_len.items()}
    n = len(offs)

    def be16(at: I64) -> npt.NDArray[np.uint16]:
        a = np.maximum(at, 0)
        out: npt.NDArray[np.uint16] = ((b8[a].astype(np.uint16) << 8) | b8[a + 1]).astype(np.uint16)
        return out

    def be32(at: I64) -> npt.NDArray[np.uint32]:
        v = w32[np.maximum(at, 0) >> 2]
        out: npt.NDArray[np.uint32] = (v.byteswap() if _LITTLE else v).astype(np.uint32)
        return out

    def field32(t: int) -> npt.NDArray[np.uint32]:
        at = found_off[t]
        return np.where(at >= 0, be32(at), np.uint32(0)).astype(np.uint32)

    hdr = found_off[nflog.NFULA_PACKET_HDR]
    hook = np.where(hdr >= 0, b8[np.maximum(hdr, 0) + 2].astype(np.int16), np.int16(-1)).astype(np.int16)
    hw_protocol = np.where(hdr >= 0, be16(hdr), np.uint16(0)).astype(np.uint16)
    ts_at = found_off[nflog.NFULA_TIMESTAMP]
    sec = (be32(ts_at).astype(np.int64) << 32) | be32(ts_at + 4).astype(np.int64)
    usec = (be32(ts_at + 8).astype(np.int64) << 32) | be32(ts_at + 12).astype(np.int64)
    ts_us = np.where(ts_at >= 0, sec * 1_000_000 + usec, 0).astype(np.int64)
    seq_at, gseq_at = found_off[nflog.NFULA_SEQ], found_off[nflog.NFULA_SEQ_GLOBAL]
    seq = np.where(seq_at >= 0, be32(seq_at).astype(np.int64), -1).astype(np.int64)
    seq_global = np.where(gseq_at >= 0, be32(gseq_at).astype(np.int64), -1).astype(np.int64)
    prefixes, prefix_code = _prefixes(batch.buf, w32, found_off[nflog.NFULA_PREFIX], found_len[nflog.NFULA_PREFIX])
    return Parsed(
        buf=b8,
        source=source,
        recv_ns=recv_ns,
        family=b8[offs + 16] if n else np.zeros(0, dtype=np.uint8),
        group=be16(offs + 18) if n else np.zeros(0, dtype=np.uint16),
        hook=hook,
        hw_protocol=hw_protocol,
        mark=field32(nflog.NFULA_MARK),
        indev=field32(nflog.NFULA_IFINDEX_INDEV),
        outdev=field32(nflog.NFULA_IFINDEX_OUTDEV),
        ts_us=ts_us,
        seq=seq,
        seq_global=seq_global,
        prefix_code=prefix_code,
        prefixes=prefixes,
        payload_off=found_off[nflog.NFULA_PAYLOAD],
        payload_len=found_len[nflog.NFULA_PAYLOAD],
        seq_source=seq_source,
        seq_group=seq_group,
        seq_value=seq_value,
        suspects=suspects,
    )


def _seq_stream(
    b8: U8,
    w32: npt.NDArray[np.uint32],
    batch: RawBatch,
    offs: I64,
    cnt: I64,
    source: npt.NDArray[np.uint16],
    seq_at: I64,
    ok: npt.NDArray[np.bool_],
    breaks: list[tuple[int, int]],
    stats: ParseStats,
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16], I64, list[tuple[int, int, int, int]]]:
    """The sequence numbers of all framed messages, and where unreadable ones were lost.

    A malformed message whose sequence number is readable stays in the stream (no gap) and is
    counted as `malformed` here. One without (and a chunk that cannot be framed further) leaves
    a gap; a *suspect* tells the tracker to count that gap as `malformed`, not as an overrun.
    """
    n = len(offs)
    group = ((b8[offs + 18].astype(np.uint16) << 8) | b8[offs + 19]).astype(np.uint16) if n else np.zeros(0, np.uint16)
    words = w32[np.maximum(seq_at, 0) >> 2]
    value = np.where(seq_at >= 0, (words.byteswap() if _LITTLE else words).astype(np.int64), -1).astype(np.int64)
    readable = value >= 0
    stats.malformed += int((~ok & readable).sum())
    suspects: list[tuple[int, int, int, int]] = []
    first_row = np.cumsum(cnt) - cnt
    stream_pos = np.concatenate([[0], np.cumsum(readable)])  # readable rows before each row
    spots = list(breaks)
    for row in np.nonzero(~ok & ~readable)[0].tolist():  # malformed, no sequence number
        chunk = int(np.searchsorted(first_row, row, side="right") - 1)
        spots.append((chunk, row - int(first_row[chunk])))
    for chunk, before in spots:
        src, start, length, _t = batch.chunks[chunk]
        lo = int(first_row[chunk])
        rows = np.arange(lo, lo + before)
        known = rows[readable[rows]] if rows.size else rows
        pos = int(stream_pos[lo + before])
        if known.size:
            suspects.append((src, int(group[known[-1]]), int(value[known[-1]]), pos))
        elif int(cnt[chunk]):
            suspects.append((src, int(group[lo]), -1, pos))
        elif length >= 20:
            suspects.append((src, int(b8[start + 18]) << 8 | int(b8[start + 19]), -1, pos))
        else:
            suspects.append((src, -1, -1, pos))
    return source[readable], group[readable], value[readable], suspects


def _template(buf: bytearray, off: int, length: int) -> list[tuple[int, int, int, int]] | None:
    """(offset in message, header word, type, length) of each attribute; None if anything is odd."""
    out: list[tuple[int, int, int, int]] = []
    pos, end = off + 20, off + length
    unpack = nflog.NLA_HDR.unpack_from
    word_at = _WORD.unpack_from
    while pos + 4 <= end:
        alen, kind = unpack(buf, pos)
        kind &= nflog.NLA_TYPE_MASK
        if alen < 4 or pos + alen > end or len(out) >= MAX_ATTRS or alen - 4 < _MIN_LEN.get(kind, 0):
            return None
        out.append((pos - off, word_at(buf, pos)[0], kind, alen))
        pos += (alen + 3) & ~3
    return out


def _walk_templates(
    buf: bytearray,
    w32: npt.NDArray[np.uint32],
    offs: I64,
    mlen: I64,
    found_off: dict[int, I64],
    found_len: dict[int, I64],
    stats: ParseStats,
) -> npt.NDArray[np.intp]:
    """Messages laid out exactly like the first message of their length, checked vectorised.

    Under load most messages come from a few rules with full-size payloads, so a handful of
    layouts cover nearly every row: each row is checked against its layout by comparing every
    attribute header word, which is one gather per attribute. Returns the rows left over.
    """
    if len(offs) == 0:
        return np.zeros(0, dtype=np.intp)
    uniq, first, inverse = np.unique(mlen, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(uniq) > 64:  # too varied to pay off
        return np.arange(len(offs))
    left = np.ones(len(offs), dtype=bool)
    base = offs >> 2
    for g, row in enumerate(first.tolist()):
        tpl = _template(buf, int(offs[row]), int(mlen[row]))
        if tpl is None:
            continue
        rows = np.nonzero(inverse == g)[0]
        b = base[rows]
        match = np.ones(len(rows), dtype=bool)
        for rel, word, _kind, _alen in tpl:
            match &= w32[b + (rel >> 2)] == word
        rows = rows[match]
        if rows.size == 0:
            continue
        left[rows] = False
        start = offs[rows]
        for rel, _word, kind, alen in tpl:
            if kind in found_off:
                found_off[kind][rows] = start + rel + 4
                if kind in found_len:
                    found_len[kind][rows] = alen - 4
            elif kind > nflog.NFULA_MAX or kind == 0:
                stats.unknown_attrs += len(rows)
    return np.nonzero(left)[0]


def _walk(
    w32: npt.NDArray[np.uint32],
    rows: npt.NDArray[np.intp],
    offs: I64,
    mlen: I64,
    found_off: dict[int, I64],
    found_len: dict[int, I64],
    ok: npt.NDArray[np.bool_],
    stats: ParseStats,
) -> None:
    """The general case: walk the attributes of `rows` in step, one attribute per round."""
    pos = offs.copy()
    pos[rows] += 20
    end = offs + mlen
    active = rows[pos[rows] + 4 <= end[rows]]
    steps = 0
    while active.size:
        steps += 1
        p = pos[active]
        word = w32[p >> 2]
        if _LITTLE:
            alen = (word & 0xFFFF).astype(np.int64)
            kind = ((word >> 16) & nflog.NLA_TYPE_MASK).astype(np.int64)
        else:
            alen = (word >> 16).astype(np.int64)
            kind = (word & nflog.NLA_TYPE_MASK).astype(np.int64)
        bad = (alen < 4) | (p + alen > end[active])
        if steps > MAX_ATTRS:
            bad[:] = True
        for t in _WANTED:
            sel = (kind == t) & ~bad
            if sel.any():
                minimum = _MIN_LEN.get(t)
                if minimum is not None:
                    short = alen[sel] - 4 < minimum
                    if short.any():
                        ok[active[sel][short]] = False
                        sel &= ~((kind == t) & (alen - 4 < minimum))  # never read a short value
                hit = active[sel]
                found_off[t][hit] = p[sel] + 4
                if t in found_len:
                    found_len[t][hit] = alen[sel] - 4
        stats.unknown_attrs += int(((kind > nflog.NFULA_MAX) | (kind == 0))[~bad].sum())
        if bad.any():
            ok[active[bad]] = False
        nxt = p + ((alen + 3) & ~3)
        pos[active] = nxt
        keep = ~bad & (nxt + 4 <= end[active])
        active = active[keep]


def _prefixes(
    raw: bytearray, w32: npt.NDArray[np.uint32], at: I64, length: I64
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Distinct prefix strings and a code per row: vectorised for short prefixes (all of ours).

    The first PREFIX_KEY_BYTES of each prefix are read as 32-bit words (attribute values are
    4-byte aligned), bytes past its length are masked off, the words are hashed into one 64-bit
    key and `np.unique` groups the rows. Each group is checked against its first row, so a hash
    collision can only cost time (a slower exact grouping), never a wrong attribution.
    """
    n = len(at)
    if n == 0:
        return [""], np.zeros(0, dtype=np.int32)
    plen = np.where(at >= 0, length, 0).astype(np.int64)
    words = int(min(PREFIX_KEY_BYTES, int(plen.max()) + 3) // 4)
    base = np.maximum(at, 0) >> 2
    limit = len(w32) - 1
    mat = np.zeros((n, max(words, 1)), dtype=np.uint32)
    key = plen.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for j in range(words):
        w = w32[np.minimum(base + j, limit)]
        keep = np.clip(plen - 4 * j, 0, 4)  # bytes of this word that belong to the prefix
        w = w & _KEEP_MASK[keep]
        mat[:, j] = w
        key = (key ^ w.astype(np.uint64)) * np.uint64(0x100000001B3 + 2 * j)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not (mat == mat[first][inverse]).all():  # a collision: group exactly instead
        keyed = np.ascontiguousarray(mat).view(np.dtype((np.void, 4 * mat.shape[1]))).ravel()
        _, first, inverse = np.unique(keyed, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    texts = [_text(raw, int(at[r]), int(min(plen[r], PREFIX_KEY_BYTES))) if at[r] >= 0 else "" for r in first.tolist()]
    codes = inverse.astype(np.int32)
    long_rows = np.nonzero(plen > PREFIX_KEY_BYTES)[0]
    if long_rows.size:  # not ours (ours are ~15 bytes): resolve one by one
        table: dict[str, int] = {}
        for i, t in enumerate(texts):
            table.setdefault(t, i)
        for r in long_rows.tolist():
            text = _text(raw, int(at[r]), int(plen[r]))
            code = table.get(text)
            if code is None:
                code = table[text] = len(texts)
                texts.append(text)
            codes[r] = code
    return texts, codes


def _text(raw: bytearray, at: int, length: int) -> str:
    return bytes(raw[at : at + length]).split(b"\0", 1)[0].decode("utf-8", "replace")
