"""NFLOG parsing from hand-built netlink bytes: fields, batches, and everything malformed."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtui.collector import nflog
from flowtui.collector.parse import ParseStats, RawBatch, SeqTracker, count_events, parse

UDP4 = bytes.fromhex("4500002e0001000040110000c0a80001c0a80002d43127 0f001a0000".replace(" ", "")) + b"x" * 18


def pad(msg: bytes) -> bytes:
    return msg + b"\0" * (-len(msg) % 4)


def chunk(*msgs: bytes, done: bool = True, group: int = 1) -> bytes:
    body = b"".join(pad(m) for m in msgs)
    return body + (nflog.done_message(group) if done and len(msgs) > 1 else b"")


def batch(*chunks: bytes, source: int = 0, recv_ns: int = 1_700_000_000_000_000_000) -> RawBatch:
    raw = RawBatch(bytearray(sum(len(c) + 4 for c in chunks) + 256))
    for i, c in enumerate(chunks):
        raw.buf[raw.used : raw.used + len(c)] = c
        raw.chunks.append((source, raw.used, len(c), recv_ns + i))
        raw.used = (raw.used + len(c) + 3) & ~3
    return raw


def msg(seq: int | None = 0, prefix: str | bytes | None = "ft:D7", **kw: object) -> bytes:
    return nflog.packet_message(1, prefix, UDP4, seq=seq, **kw)  # type: ignore[arg-type]


def test_fields_of_one_message() -> None:
    raw = batch(chunk(msg(seq=41, timestamp_us=1_700_000_000_123_456, mark=9, indev=3, hook=1)))
    stats = ParseStats()
    p = parse(raw, stats)
    assert len(p) == 1 and stats.messages == 1 and stats.malformed == 0
    assert p.prefixes[p.prefix_code[0]] == "ft:D7"
    assert p.seq[0] == 41 and p.seq_global[0] == -1
    assert p.ts_us[0] == 1_700_000_000_123_456
    assert (p.mark[0], p.indev[0], p.outdev[0], p.hook[0], p.group[0], p.family[0]) == (9, 3, 0, 1, 1, 2)
    assert p.hw_protocol[0] == 0x0800
    off, ln = int(p.payload_off[0]), int(p.payload_len[0])
    assert bytes(p.buf[off : off + ln]) == UDP4


def test_batches_of_regular_and_mixed_chunks_keep_order_and_sources() -> None:
    regular = chunk(*(msg(seq=i) for i in range(50)))  # one layout: the vectorised framing path
    mixed = chunk(*(msg(seq=50 + i, prefix="ft:A1" if i % 2 else "ft:D12345") for i in range(10)))
    raw = RawBatch(bytearray(len(regular) + len(mixed) + 64))
    for src, c in ((3, regular), (5, mixed)):
        raw.buf[raw.used : raw.used + len(c)] = c
        raw.chunks.append((src, raw.used, len(c), 100 + src))
        raw.used = (raw.used + len(c) + 3) & ~3
    stats = ParseStats()
    p = parse(raw, stats)
    assert stats.messages == 60 and stats.malformed == stats.unexpected == 0
    assert p.seq.tolist() == list(range(60))
    assert p.source.tolist() == [3] * 50 + [5] * 10
    assert p.recv_ns.tolist() == [103] * 50 + [105] * 10
    assert [p.prefixes[c] for c in p.prefix_code[50:54]] == ["ft:D12345", "ft:A1", "ft:D12345", "ft:A1"]


def test_single_message_chunk_without_done_trailer() -> None:
    p = parse(batch(chunk(msg(seq=7), done=False)))
    assert p.seq.tolist() == [7]


def tracked(p) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    """(overrun gaps, malformed gaps) after feeding a parse result to a SeqTracker."""
    t = SeqTracker()
    t.start(0, 1)
    t.update(p.seq_source, p.seq_group, p.seq_value, p.suspects)
    return t.gaps, t.malformed


def test_message_length_past_chunk_end_is_malformed_not_fatal() -> None:
    good = pad(msg(seq=0))
    bad = bytearray(pad(msg(seq=1)))
    struct.pack_into("=I", bad, 0, len(bad) + 400)  # nlmsg_len runs past the chunk
    stats = ParseStats()
    p = parse(batch(good + bytes(bad), pad(msg(seq=2))), stats)
    assert p.seq.tolist() == [0, 2]
    assert p.suspects == [(0, 1, 0, 1)]
    assert tracked(p) == ({}, {(0, 1): 1})  # the gap is the malformed message, not an overrun


def test_nlmsg_len_too_small_is_malformed() -> None:
    bad = bytearray(pad(msg(seq=1)))
    struct.pack_into("=I", bad, 0, 8)
    p = parse(batch(pad(msg(seq=0)) + bytes(bad), pad(msg(seq=2))))
    assert p.seq.tolist() == [0, 2] and tracked(p) == ({}, {(0, 1): 1})


def test_packet_message_without_nfgenmsg_is_malformed() -> None:
    tiny = nflog.NLMSG_HDR.pack(16, nflog.NFLOG_PACKET_TYPE, 0, 0, 0)
    p = parse(batch(pad(msg(seq=0)), tiny + pad(msg(seq=2))))
    assert p.seq.tolist() == [0, 2] and p.suspects == [(0, 1, -1, 1)]
    assert tracked(p) == ({}, {(0, 1): 1})


def test_truncated_chunk_tail_is_counted() -> None:
    data = chunk(msg(seq=0), msg(seq=1))
    stats = ParseStats()
    p = parse(batch(data[:-30], chunk(msg(seq=2))), stats)  # message 2 and the trailer are cut
    assert stats.messages == 2 and tracked(p) == ({}, {(0, 1): 1})


def test_attribute_shorter_than_its_header_is_malformed() -> None:
    bad = nflog.nfnl_message(nflog.NFLOG_PACKET_TYPE, 0, 0, 2, 1, [struct.pack("=HH", 2, 9) + b"\0\0"])
    stats = ParseStats()
    p = parse(batch(chunk(msg(seq=0), bad, msg(seq=2))), stats)
    assert p.seq.tolist() == [0, 2] and stats.malformed == 0
    assert tracked(p) == ({}, {(0, 1): 1})


def test_attribute_running_past_its_message_is_malformed() -> None:
    bad = bytearray(pad(msg(seq=0)))
    # enlarge the payload attribute's length (the last attribute) beyond the message
    pos = 20
    while pos < len(bad):
        alen, kind = struct.unpack_from("=HH", bad, pos)
        if kind == nflog.NFULA_PAYLOAD:
            struct.pack_into("=H", bad, pos, alen + 64)
        pos += (alen + 3) & ~3
    stats = ParseStats()
    p = parse(batch(chunk(bytes(bad), msg(seq=1))), stats)
    # its sequence number was readable: counted as malformed right away, and no gap
    assert p.seq.tolist() == [1] and stats.malformed == 1
    assert p.seq_value.tolist() == [0, 1] and tracked(p) == ({}, {})


def test_short_fixed_size_attribute_is_malformed() -> None:
    bad = nflog.packet_message(1, "ft:D7", UDP4, extra=[nflog.nlattr(nflog.NFULA_SEQ, b"\x01")])
    p = parse(batch(chunk(msg(seq=0), bad, msg(seq=2))))
    assert p.seq.tolist() == [0, 2] and tracked(p) == ({}, {(0, 1): 1})


def test_suspects_carry_across_batches_and_true_gaps_stay_overruns() -> None:
    t = SeqTracker()
    bad = bytearray(pad(msg(seq=2)))
    struct.pack_into("=I", bad, 0, 8)
    for b in (batch(pad(msg(seq=1)) + bytes(bad)), batch(chunk(msg(seq=3), msg(seq=9)))):
        p = parse(b)
        t.update(p.seq_source, p.seq_group, p.seq_value, p.suspects)
    assert t.malformed == {(0, 1): 1} and t.gaps == {(0, 1): 5} and t.unresolved() == 0
    t.suspect(0, 1, 42)  # never explained by a later number: still at least one event
    assert t.unresolved() == 1


def test_unknown_attributes_are_counted_and_skipped() -> None:
    extra = [nflog.nlattr(200, b"abcd"), nflog.nlattr(0, b"")]
    m = nflog.packet_message(1, "ft:D7", UDP4, seq=4, extra=extra)
    stats = ParseStats()
    p = parse(batch(chunk(m, m)), stats)
    assert p.seq.tolist() == [4, 4]
    assert stats.unknown_attrs == 4 and stats.malformed == 0


def test_unexpected_and_error_messages_are_counted_not_events() -> None:
    err = nflog.NLMSG_HDR.pack(36, nflog.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -1) + b"\0" * 16
    other = nflog.nfnl_message(0x0101, 0, 0, 2, 0, [])  # a ctnetlink message on our socket
    noop = nflog.NLMSG_HDR.pack(16, nflog.NLMSG_NOOP, 0, 0, 0)
    stats = ParseStats()
    p = parse(batch(chunk(err, other, noop, msg(seq=1))), stats)
    assert p.seq.tolist() == [1]
    assert (stats.errors, stats.unexpected, stats.malformed) == (1, 1, 0)


def test_missing_prefix_and_long_foreign_prefixes() -> None:
    long_a = "API0|np/namespace1/default.policy-with-a-really-long-name"
    long_b = "API0|np/namespace1/default.policy-with-a-really-long-nameX"
    p = parse(batch(chunk(msg(prefix=None), msg(prefix=long_a), msg(prefix=long_b), msg(prefix=long_a))))
    got = [p.prefixes[c] for c in p.prefix_code]
    assert got == ["", long_a, long_b, long_a]


def test_prefixes_that_differ_after_the_first_word() -> None:
    prefixes = [f"ft:D{n}" for n in (1, 10, 100, 1000, 10000, 100000, 1000000, 12, 21)]
    p = parse(batch(chunk(*(msg(prefix=x) for x in prefixes))))
    assert [p.prefixes[c] for c in p.prefix_code] == prefixes


def test_empty_batch() -> None:
    p = parse(RawBatch(bytearray(64)))
    assert len(p) == 0


def test_count_events_for_dropped_chunks() -> None:
    data = chunk(*(msg(seq=100 + i) for i in range(20)))
    assert count_events(data, len(data)) == (20, 1, 100, 119)
    assert count_events(b"", 0) == (0, -1, -1, -1)


def test_seq_tracker_gaps_wrap_restarts_and_skips() -> None:
    t = SeqTracker()
    src = np.zeros(6, dtype=np.uint16)
    grp = np.ones(6, dtype=np.uint16)
    assert t.update(src, grp, np.array([0, 1, 2, 5, 6, 9], dtype=np.int64)) == 4
    assert t.update(src[:2], grp[:2], np.array([10, 12], dtype=np.int64)) == 1
    t.skip(0, 1, 13, 20)  # dropped under backlog: not a gap
    assert t.update(src[:1], grp[:1], np.array([21], dtype=np.int64)) == 0
    # wrap around 2^32
    t2 = SeqTracker()
    assert t2.update(src[:3], grp[:3], np.array([0xFFFFFFFE, 0xFFFFFFFF, 1], dtype=np.int64)) == 1
    # a jump back is a new instance, not a loss
    assert t2.update(src[:2], grp[:2], np.array([0, 1], dtype=np.int64)) == 0
    assert t2.restarts == 1
    # groups and sources are tracked apart
    t3 = SeqTracker()
    s = np.array([0, 1, 0, 1], dtype=np.uint16)
    g = np.array([1, 1, 1, 1], dtype=np.uint16)
    assert t3.update(s, g, np.array([0, 0, 1, 2], dtype=np.int64)) == 1
    assert t3.gaps == {(1, 1): 1}


# ------------------------------------------------------------------------------------------
# Properties

_prefix = st.one_of(st.none(), st.from_regex(r"ft:[ADPL][0-9]{1,9}", fullmatch=True), st.text(min_size=1, max_size=70))
_payload = st.binary(min_size=0, max_size=96)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_prefix, _payload, st.integers(0, 2**32 - 1), st.booleans()), min_size=1, max_size=40))
def test_round_trip_of_well_formed_messages(items: list[tuple[str | None, bytes, int, bool]]) -> None:
    msgs = [
        nflog.packet_message(1, pre, pay, seq=s, timestamp_us=5_000_001 if ts else None) for pre, pay, s, ts in items
    ]
    stats = ParseStats()
    p = parse(batch(chunk(*msgs)), stats)
    assert stats.malformed == 0 and len(p) == len(items)
    for i, (pre, pay, s, ts) in enumerate(items):
        expect = "" if pre is None else pre.encode().split(b"\0")[0].decode("utf-8", "replace")
        assert p.prefixes[p.prefix_code[i]] == expect
        assert p.seq[i] == s
        assert p.ts_us[i] == (5_000_001 if ts else 0)
        off, ln = int(p.payload_off[i]), int(p.payload_len[i])
        assert bytes(p.buf[off : off + ln]) == pay


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 5))
def test_garbage_never_raises(garbage: bytes, copies: int) -> None:
    good = pad(msg(seq=1))
    stats = ParseStats()
    p = parse(batch(good * copies + garbage), stats)
    assert len(p) >= 0 and stats.messages == len(p)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=8), st.binary(min_size=1, max_size=8))
def test_corrupting_bytes_never_raises(positions: list[int], values: bytes) -> None:
    data = bytearray(chunk(*(msg(seq=i) for i in range(4))))  # then seq 4 in a clean chunk
    for k, pos in enumerate(positions):
        data[pos % len(data)] = values[k % len(values)]
    stats = ParseStats()
    p = parse(batch(bytes(data), chunk(msg(seq=4))), stats)
    gaps, malformed = tracked(p)
    # every message is an event, or counted malformed, or explained by a sequence gap
    assert len(p) + stats.malformed + sum(gaps.values()) + sum(malformed.values()) + len(p.suspects) >= 5
