"""One batch through the pipeline into event rows, and events + connections into flows."""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from enforcer.model import Pod, ResourceSet
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.collector import nflog
from flowtui.collector.aggregate import Aggregator
from flowtui.collector.attribution import Attribution
from flowtui.collector.enrich import Enricher
from flowtui.collector.parse import ParseStats, RawBatch, SeqTracker
from flowtui.collector.pipeline import process
from flowtui.store import schema

T0 = 1_700_000_000_000_000  # us
DENY = RuleRef(7, "GlobalNetworkPolicy", None, "deny-db", "default", 3, "ingress", 0, "Deny")
ALLOW = RuleRef(9, "NetworkPolicy", "prod", "allow-web", "default", 5, "egress", 1, "Allow")


def pkt(src: str, dst: str, sport: int, dport: int, tcp: bool = False) -> bytes:
    l4 = TCP(sport=sport, dport=dport, flags="S") if tcp else UDP(sport=sport, dport=dport)
    return bytes(IP(src=src, dst=dst) / l4 / Raw(b"x" * 10))


def raw_batch(msgs: list[bytes], source: int = 0) -> RawBatch:
    body = b"".join(m + b"\0" * (-len(m) % 4) for m in msgs) + nflog.done_message(1)
    raw = RawBatch(bytearray(len(body) + 128))
    raw.buf[: len(body)] = body
    raw.chunks.append((source, 0, len(body), (T0 + 999) * 1000))
    raw.used = len(body)
    return raw


def resources() -> ResourceSet:
    ip = ipaddress.ip_address
    return ResourceSet(
        pods=(
            Pod("web", "prod", labels=(("app", "web"),), ips=(ip("10.0.0.1"),)),
            Pod("db", "prod", labels=(("app", "db"),), ips=(ip("10.0.0.2"),)),
        )
    )


def run(msgs: list[bytes]):
    att = Attribution(None, RuleTable([DENY, ALLOW]))
    enr = Enricher(resources(), revision=1, first_id=1)
    seq = SeqTracker()
    result = process(
        raw_batch(msgs),
        source_ids=np.array([42], dtype=np.int32),
        attribution=att,
        enricher=enr,
        seq=seq,
        stats=ParseStats(),
    )
    return result, att, enr, seq


def test_events_table_matches_the_schema_and_carries_everything() -> None:
    msgs = [
        nflog.packet_message(1, "ft:D7", pkt("10.0.0.1", "10.0.0.2", 1000, 5432, tcp=True), seq=0, timestamp_us=T0),
        nflog.packet_message(1, "ft:D7", pkt("10.0.0.1", "10.0.0.2", 1000, 5432, tcp=True), seq=1, timestamp_us=T0 + 5),
        nflog.packet_message(1, "ft:D77", pkt("10.0.0.1", "8.8.8.8", 2000, 53), seq=3, hook=3),  # no timestamp
        nflog.packet_message(2, "other", b"\x00" * 8, seq=0),
    ]
    result, att, _enr, seq = run(msgs)
    ev = result.events
    store_schema = schema.EVENTS.arrow_schema
    assert ev.schema.names == store_schema.names
    rows = ev.cast(pa.schema([pa.field(f.name, f.type) for f in store_schema])).to_pylist()
    assert [r["prefix"] for r in rows] == ["ft:D7", "ft:D7", "ft:D77", "other"]
    assert [r["action"] for r in rows] == ["Deny", "Deny", "Deny", None]
    assert [r["rule_id"] for r in rows] == [7, 7, 77, None]
    assert [r["seq"] for r in rows] == [0, 1, 3, 0]
    assert [r["source_id"] for r in rows] == [42] * 4
    assert rows[0]["src_ip"] == "10.0.0.1" and rows[0]["dport"] == 5432 and rows[0]["tcp_flags"] == 2
    assert rows[2]["dst_ip"] == "8.8.8.8" and rows[2]["tcp_flags"] is None and rows[2]["hook"] == 3
    assert rows[3]["ip_version"] is None and rows[3]["src_ip"] is None and rows[3]["nflog_group"] == 2
    assert rows[1]["time"].timestamp() * 1e6 - rows[0]["time"].timestamp() * 1e6 == 5
    assert rows[2]["time"].timestamp() * 1e6 == T0 + 999  # receive time when the kernel gave none
    assert rows[0]["src_ep"] is not None and rows[0]["src_ep"] != rows[0]["dst_ep"]
    assert result.received == {0: 4}
    assert result.received_prefix[(0, "ft:D7")] == 2
    assert result.missing == {(0, 1): 1} and seq.gaps == {(0, 1): 1}
    assert att.stats.unknown_rule == 1 and att.stats.foreign_prefix == 1


def test_aggregation_per_bucket_and_key_and_counting_rules() -> None:
    msgs = [
        nflog.packet_message(1, "ft:D7", pkt("10.0.0.1", "10.0.0.2", 1000, 5432), seq=i, timestamp_us=T0 + i)
        for i in range(5)
    ]
    msgs += [nflog.packet_message(1, "ft:A9", pkt("10.0.0.1", "10.0.0.2", 1001, 80, tcp=True), seq=5, timestamp_us=T0)]
    msgs += [
        nflog.packet_message(1, "ft:D7", pkt("10.0.0.1", "10.0.0.2", 1000, 5432), seq=6, timestamp_us=T0 + 20_000_000)
    ]
    result, att, enr, _seq = run(msgs)
    agg = Aggregator(bucket_seconds=10, grace_seconds=1)
    agg.add_events(result.columns)
    # a conntrack record for the allowed connection, and one for a connection we never saw
    common = dict(bytes_=999, reply_packets=3, reply_bytes=300, src_ep=None, dst_ep=None, source_id=42)
    assert (
        agg.add_connection(
            end_us=T0 + 1_000_000,
            proto=6,
            src_ip="10.0.0.1",
            dst_ip="10.0.0.2",
            sport=1001,
            dport=80,
            packets=10,
            **common,
        )
        == 9
    )
    assert (
        agg.add_connection(
            end_us=T0, proto=6, src_ip="10.9.9.9", dst_ip="10.0.0.2", sport=1, dport=80, packets=1, **common
        )
        is None
    )
    early = agg.flush(now_us=T0 + 10_500_000)  # first bucket not yet past its grace
    assert early.num_rows == 0
    table = agg.flush(now_us=T0 + 11_000_001)
    assert table.schema == schema.FLOWS.arrow_schema
    rows = sorted(table.to_pylist(), key=lambda r: (r["action"], r["count_source"]))
    kinds = [(r["action"], r["count_source"]) for r in rows]
    assert kinds == [("Allow", "conntrack"), ("Allow", "nflog"), ("Deny", "nflog")]
    allow_ct, allow_log, deny = rows
    assert (deny["events"], deny["packets"], deny["bytes"]) == (5, 5, 5 * 38)
    assert (deny["rule_id"], deny["prefix"], deny["src_ip"], deny["dport"]) == (7, "ft:D7", "10.0.0.1", 5432)
    assert (allow_log["events"], allow_log["packets"], allow_log["connections_started"]) == (1, 0, 1)
    assert (allow_ct["packets"], allow_ct["reply_packets"], allow_ct["connections_completed"]) == (10, 3, 1)
    assert allow_ct["rule_id"] == allow_log["rule_id"] == 9 and allow_ct["sport"] == 1001
    by_id = enr.by_id()
    assert by_id[deny["src_ep"]].name == "web" and by_id[deny["dst_ep"]].name == "db"
    assert allow_log["tcp_flags"] == 2
    second = agg.flush(now_us=None)
    assert second.num_rows == 1 and second["events"].to_pylist() == [1]
    # an event for a bucket that was already written is a late row, summed by readers
    agg.add_events(result.columns)
    assert agg.late_rows > 0


def test_address_table_compaction_keeps_pending_rows_right() -> None:
    msgs = [
        nflog.packet_message(
            1, "ft:D7", pkt(f"10.1.{i // 256}.{i % 256}", "10.0.0.2", 1000, 53), seq=i, timestamp_us=T0
        )
        for i in range(300)
    ]
    result, _att, _enr, _seq = run(msgs)
    agg = Aggregator(bucket_seconds=10, grace_seconds=1)
    agg.add_events(result.columns)
    agg._compact()  # as after a flood, with rows still pending
    assert len(agg.addresses) == 301
    rows = agg.flush(None).to_pylist()
    assert sorted(r["src_ip"] for r in rows) == sorted(f"10.1.{i // 256}.{i % 256}" for i in range(300))
