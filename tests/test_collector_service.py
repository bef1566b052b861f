"""The whole collector without root, fed hand-built NFLOG skbs through a socketpair
(tests/nflog_pair.py). The kernel tests do the same with the real kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from enforcer.ruleids import RuleRef, RuleTable
from flowtui.collector.service import Collector
from flowtui.store.status import read_status
from tests.nflog_pair import PairNflog, skb_of, start_collector

PKT = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=9999) / Raw(b"x" * 18))


def skb(first_seq: int, n: int, prefix: str = "ft:D7") -> bytes:
    return skb_of(first_seq, [PKT] * n, prefix)


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def make(tmp_path: Path) -> Callable[..., tuple[Collector, PairNflog]]:
    RuleTable(
        [
            RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 1, "ingress", 0, "Deny"),
        ]
    ).dump(tmp_path / "rules.jsonl")
    made: list[Collector] = []

    def build(**kw: object) -> tuple[Collector, PairNflog]:
        c, sock = start_collector(db=tmp_path / "flows.duckdb", bucket_seconds=1.0, batch_seconds=0.05,
                                  snapshot_interval=0.5, **kw)
        made.append(c)
        return c, sock

    yield build
    for c in made:
        c.stop()


def test_events_flows_gaps_and_malformed_end_up_stored_or_counted(make, tmp_path: Path) -> None:
    c, sock = make()
    sock.tx.send(skb(0, 100))
    sock.tx.send(skb(100, 50))
    sock.tx.send(skb(180, 20))  # 30 events never arrived: a sequence gap
    bad = bytearray(skb(200, 3))
    bad[0:4] = (len(bad) + 100).to_bytes(4, "little")  # the first header claims too much
    sock.tx.send(bytes(bad))
    wait_for(lambda: c.book.stat_total("received") == 170)
    # a policy changes while we run: id 8 appears in the rule table, then its events arrive
    RuleTable(
        [
            RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 1, "ingress", 0, "Deny"),
            RuleRef(8, "GlobalNetworkPolicy", None, "deny-9999", "default", 2, "ingress", 0, "Deny"),
        ]
    ).dump(tmp_path / "rules.jsonl")
    sock.tx.send(skb(203, 10, prefix="ft:D8"))
    sock.tx.send(skb(213, 5, prefix="ft:D404"))
    wait_for(lambda: c.book.stat_total("received") == 185)
    summary = c.stop()
    assert summary["stats"]["stored"] == 185
    assert summary["lost"]["rcvbuf_overrun"] == 30
    assert summary["lost"]["malformed"] == 3  # the unframeable chunk, sized by the sequence numbers
    assert summary["stats"]["unknown_rule"] == 5

    con = duckdb.connect(str(tmp_path / "flows.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT seq) FROM events").fetchone() == (185, 185)
        by_rule = dict(con.execute("SELECT rule_id, count(*) FROM events GROUP BY ALL").fetchall())
        assert by_rule == {7: 170, 8: 10, 404: 5}
        revisions = dict(
            con.execute(
                "SELECT e.rule_id, r.revision FROM events e JOIN rules r ON r.id = e.rule_id GROUP BY ALL"
            ).fetchall()
        )
        assert revisions == {7: 1, 8: 2}
        assert con.execute("SELECT sum(events), sum(packets) FROM flows").fetchone() == (185, 185)
        policies = con.execute("SELECT DISTINCT policy FROM flows_v WHERE rule_id = 8").fetchall()
        assert policies == [("0|default|gnp:deny-9999|deny|0",)]
    finally:
        con.close()
    status = read_status(tmp_path / "flows.duckdb")
    run = status["runs"][0]
    assert run["received"] == 185 and run["stored"] == 185
    assert run["lost"]["rcvbuf_overrun"] == 30 and run["lost"]["malformed"] == 3
    assert run["ended"] is not None and not status["snapshot"]


def test_a_writer_that_falls_behind_drops_whole_chunks_and_counts_them(make) -> None:
    c, sock = make(buffers=1, buffer_bytes=320_000, slow_writer_seconds=0.3, handoff_seconds=0.0)
    sent = 0
    for i in range(40):
        sock.tx.send(skb(i * 100, 100))
        sent += 100
    wait_for(lambda: c.book.stat_total("received") == sent)
    summary = c.stop()
    lost = summary["lost"]
    assert lost["writer_backlog"] > 0
    assert lost["rcvbuf_overrun"] == 0  # backlog drops are not mistaken for sequence gaps
    assert summary["stats"]["stored"] + lost["writer_backlog"] == sent


def test_readers_see_a_snapshot_while_the_collector_writes(make, tmp_path: Path) -> None:
    c, sock = make()
    sock.tx.send(skb(0, 10))
    wait_for(lambda: c.store.stats.snapshots >= 1 and c.book.stat_total("stored") == 10)
    wait_for(lambda: c.store.stats.snapshots >= 2)
    status = read_status(tmp_path / "flows.duckdb")  # the live file is locked: the snapshot it is
    assert status["snapshot"] and status["runs"][0]["ended"] is None
    assert status["tables"]["events"] == 10
