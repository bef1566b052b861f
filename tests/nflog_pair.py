"""A collector fed without root: NFLOG skbs arrive through a datagram socketpair.

A `SOCK_DGRAM` unix socketpair keeps message boundaries exactly like a netlink socket keeps
skbs, so the reader, the writer, the store, attribution, aggregation and loss accounting run
for real on hand-built NFLOG bytes. Shared by the collector tests and bench_cluster_flows.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from typing import Any

from flowtui.collector import nflog
from flowtui.collector.nflog import NflogConfig
from flowtui.collector.service import Collector, CollectorConfig


class PairNflog:
    """Stands in for NflogSocket: the caller writes skbs into `tx`."""

    instances: list[PairNflog] = []

    def __init__(self, netns: str | None, cfg: NflogConfig) -> None:
        self.tx, self.rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.rx.setblocking(False)
        self.enobufs = 0
        self.rcvbuf = 8 << 20
        PairNflog.instances.append(self)

    def fileno(self) -> int:
        return self.rx.fileno()

    def recv_into(self, view: memoryview) -> int:
        try:
            return self.rx.recv_into(view)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


def skb_of(first_seq: int, packets: Iterable[bytes], prefix: str = "ft:D7", at: float | None = None) -> bytes:
    """One skb of NFLOG messages, one per packet, then NLMSG_DONE; `at`: their time (now if None)."""
    stamp = int((time.time() if at is None else at) * 1e6)
    msgs = [nflog.packet_message(1, prefix, p, seq=first_seq + i, timestamp_us=stamp) for i, p in enumerate(packets)]
    return b"".join(m + b"\0" * (-len(m) % 4) for m in msgs) + nflog.done_message(1)


def start_collector(**options: Any) -> tuple[Collector, PairNflog]:
    """A started collector (CollectorConfig `options`, no conntrack or counters) and its socketpair."""
    PairNflog.instances.clear()
    cfg = CollectorConfig(nflog_socket=PairNflog, conntrack=False, counters=False,  # type: ignore[arg-type]
                          **options)
    c = Collector(cfg)
    c.start()
    return c, PairNflog.instances[0]
