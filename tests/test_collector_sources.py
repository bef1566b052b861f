"""The other kernel inputs, from hand-built bytes and JSON: conntrack events, nft counters; loss rows."""

from __future__ import annotations

import socket
import struct
from datetime import datetime

from flowtui.collector import conntrack as ct
from flowtui.collector.counters import CounterBaseline, counters_from_json
from flowtui.collector.loss import LossBook, ensure_all_causes
from flowtui.collector.nflog import nfnl_message, nlattr

NESTED = 0x8000


def nest(kind: int, *attrs: bytes) -> bytes:
    return nlattr(kind | NESTED, b"".join(attrs))


def tuple_attr(kind: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    ip = nest(
        ct.CTA_TUPLE_IP,
        nlattr(ct.CTA_IP_V6_SRC if v6 else ct.CTA_IP_V4_SRC, socket.inet_pton(fam, src)),
        nlattr(ct.CTA_IP_V6_DST if v6 else ct.CTA_IP_V4_DST, socket.inet_pton(fam, dst)),
    )
    proto_attrs = [nlattr(ct.CTA_PROTO_NUM, bytes([proto]))]
    if proto in (6, 17):
        proto_attrs += [
            nlattr(ct.CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
            nlattr(ct.CTA_PROTO_DST_PORT, struct.pack("!H", dport)),
        ]
    return nest(kind, ip, nest(ct.CTA_TUPLE_PROTO, *proto_attrs))


def destroy(src: str, dst: str, proto: int = 6, sport: int = 1000, dport: int = 80, packets: int = 5) -> bytes:
    attrs = [
        tuple_attr(ct.CTA_TUPLE_ORIG, src, dst, proto, sport, dport),
        tuple_attr(ct.CTA_TUPLE_REPLY, dst, src, proto, dport, sport),
        nest(
            ct.CTA_COUNTERS_ORIG,
            nlattr(ct.CTA_COUNTERS_PACKETS, struct.pack("!Q", packets)),
            nlattr(ct.CTA_COUNTERS_BYTES, struct.pack("!Q", packets * 100)),
        ),
        nest(ct.CTA_COUNTERS_REPLY, nlattr(ct.CTA_COUNTERS32_PACKETS, struct.pack("!I", 2))),
        nest(ct.CTA_TIMESTAMP, nlattr(ct.CTA_TIMESTAMP_START, struct.pack("!Q", 123456789))),
    ]
    return nfnl_message((ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_DELETE, 0, 0, socket.AF_INET, 0, attrs)


def test_destroy_events_with_accounting() -> None:
    data = destroy("10.0.0.1", "10.0.0.2") + destroy("fd00::1", "fd00::2", proto=17, sport=5, dport=53, packets=1)
    stats = ct.ConntrackStats()
    conns = ct.parse_destroy(data, len(data), stats)
    assert stats.events == 2 and stats.malformed == 0
    a, b = conns
    assert (a.proto, a.src_ip, a.dst_ip, a.sport, a.dport) == (6, "10.0.0.1", "10.0.0.2", 1000, 80)
    assert (a.packets, a.bytes, a.reply_packets, a.reply_bytes, a.start_ns) == (5, 500, 2, 0, 123456789)
    assert (b.proto, b.src_ip, b.dport, b.packets) == (17, "fd00::1", 53, 1)


def test_icmp_and_other_messages_and_garbage() -> None:
    icmp = destroy("10.0.0.1", "10.0.0.2", proto=1)
    new = nfnl_message((ct.NFNL_SUBSYS_CTNETLINK << 8) | ct.IPCTNL_MSG_CT_NEW, 0, 0, 2, 0, [])
    bad = bytearray(destroy("10.0.0.1", "10.0.0.2"))
    struct.pack_into("=H", bad, 20, 3)  # first attribute length < 4
    data = icmp + new + bytes(bad)
    stats = ct.ConntrackStats()
    conns = ct.parse_destroy(data, len(data), stats)
    assert len(conns) == 1 and conns[0].sport is None and conns[0].proto == 1
    assert (stats.other, stats.malformed) == (1, 1)
    truncated = destroy("10.0.0.1", "10.0.0.2")
    stats = ct.ConntrackStats()
    assert ct.parse_destroy(truncated, len(truncated) - 10, stats) == [] and stats.malformed == 1


def rule(*exprs: dict[str, object], handle: int = 4) -> dict[str, object]:
    return {"rule": {"family": "inet", "table": "ft", "chain": "input", "handle": handle, "expr": list(exprs)}}


MATCH = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 9999}}


def test_counters_before_and_after_a_limit() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            rule(
                MATCH,
                {"counter": {"packets": 10, "bytes": 500}},
                {"log": {"prefix": "ft:D7", "group": 1}},
                {"drop": None},
            ),
            rule(
                MATCH,
                {"counter": {"packets": 1000, "bytes": 50000}},
                {"limit": {"rate": 10, "per": "second"}},
                {"counter": {"packets": 30, "bytes": 1500}},
                {"log": {"prefix": "ft:D8", "group": 1}},
                handle=5,
            ),
            rule(MATCH, {"limit": {"rate": 1}}, {"log": {"prefix": "ft:D9", "group": 1}}, handle=6),
            rule(MATCH, {"counter": {"packets": 3, "bytes": 9}}, {"log": {"prefix": "calico", "group": 1}}, handle=7),
            rule(MATCH, {"counter": {"packets": 3, "bytes": 9}}, {"log": {"prefix": "ft:D10", "group": 5}}, handle=8),
            rule(MATCH, {"counter": {"packets": 3, "bytes": 9}}, {"accept": None}, handle=9),
        ]
    }
    found = {c.prefix: c for c in counters_from_json(doc, groups=(1, 2))}
    assert set(found) == {"ft:D7", "ft:D8", "ft:D9"}
    assert (found["ft:D7"].packets, found["ft:D7"].logged, found["ft:D7"].rate_limited) == (10, 10, False)
    assert (found["ft:D8"].packets, found["ft:D8"].logged, found["ft:D8"].rate_limited) == (1000, 30, True)
    assert (found["ft:D9"].packets, found["ft:D9"].logged) == (None, None)
    assert found["ft:D8"].rule_id == 8 and found["ft:D8"].nft_rule == "inet ft input 5"
    assert len(counters_from_json(doc)) == 4  # every group when none is given


def test_baseline_counts_only_this_run() -> None:
    def snap(packets: int, logged: int, handle: int = 5) -> list:
        doc = {
            "nftables": [
                rule(
                    {"counter": {"packets": packets, "bytes": 0}},
                    {"limit": {"rate": 1}},
                    {"counter": {"packets": logged, "bytes": 0}},
                    {"log": {"prefix": "ft:D8", "group": 1}},
                    handle=handle,
                )
            ]
        }
        return counters_from_json(doc)

    base = CounterBaseline()
    assert [(p, lg) for _c, p, lg in base.delta(0, snap(100, 10))] == [(0, 0)]
    assert [(p, lg) for _c, p, lg in base.delta(0, snap(150, 12))] == [(50, 2)]
    # a rule created during the run counts from zero
    assert [(p, lg) for _c, p, lg in base.delta(0, snap(7, 1, handle=6))] == [(7, 1)]


def test_loss_book_writes_only_changes_and_knows_every_cause() -> None:
    book = LossBook(run_id=3)
    ensure_all_causes(book, [1, 2])
    book.lose("writer_backlog", 10, 1)
    book.lose("rcvbuf_overrun", 0, 2)
    book.count("received", 100, 1)
    now = datetime(2026, 1, 1)
    loss, stats = book.rows(now)
    assert len(loss) == 3 * 2 + 2 and len(stats) == 1
    assert {(r["source_id"], r["cause"]): r["events"] for r in loss}[(1, "writer_backlog")] == 10
    book.lose("writer_backlog", 5, 1)
    loss, stats = book.rows(now)
    assert [(r["cause"], r["events"]) for r in loss] == [("writer_backlog", 15)] and stats == []
    assert book.lost_by_cause()["writer_backlog"] == 15 and book.total_lost() == 15
    book.set_loss("kernel_ratelimit", 7, 2)
    assert book.summary()["lost"]["kernel_ratelimit"] == 7
    try:
        book.lose("cosmic_rays", 1)
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("unknown causes must be refused")
