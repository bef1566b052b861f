"""Conntrack DESTROY events with accounting: packet and byte counts of finished connections.

A raw `NETLINK_NETFILTER` socket joins the `NFNLGRP_CONNTRACK_DESTROY` multicast group of its
namespace. Counters are only filled when `net.netfilter.nf_conntrack_acct=1` in that namespace
(`enable_accounting` sets it, in lab namespaces only). Rates are per connection, far below the
NFLOG rates, so messages are parsed with `struct` one by one. Malformed messages are counted,
never fatal; ENOBUFS (the kernel dropped events) is counted too.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from flowtui.collector.nflog import NETLINK_NETFILTER, NLA_HDR, NLA_TYPE_MASK, NLMSG_HDR, SOL_NETLINK, set_rcvbuf

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
NFNLGRP_CONNTRACK_DESTROY = 3
NETLINK_ADD_MEMBERSHIP = 1

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 9, 10
CTA_TIMESTAMP = 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
CTA_TIMESTAMP_START = 1
PORT_PROTOCOLS = (6, 17, 33, 132, 136)


@dataclass(frozen=True)
class Connection:
    proto: int | None
    src_ip: str | None
    dst_ip: str | None
    sport: int | None
    dport: int | None
    packets: int
    bytes: int
    reply_packets: int
    reply_bytes: int
    start_ns: int | None


def _attrs(data: Buffer, start: int, end: int) -> dict[int, tuple[int, int]] | None:
    """type -> (value offset, value length); None if malformed."""
    out: dict[int, tuple[int, int]] = {}
    pos = start
    while pos + 4 <= end:
        alen, kind = NLA_HDR.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            return None
        out[kind & NLA_TYPE_MASK] = (pos + 4, alen - 4)
        pos += (alen + 3) & ~3
    return out


Tuple5 = tuple[int | None, str | None, str | None, int | None, int | None]
Buffer = bytes | bytearray | memoryview


def _tuple(data: Buffer, off: int, ln: int) -> Tuple5:
    top = _attrs(data, off, off + ln) or {}
    src = dst = None
    proto = sport = dport = None
    if CTA_TUPLE_IP in top:
        o, n = top[CTA_TUPLE_IP]
        ip = _attrs(data, o, o + n) or {}
        for s_key, d_key, size in ((CTA_IP_V4_SRC, CTA_IP_V4_DST, 4), (CTA_IP_V6_SRC, CTA_IP_V6_DST, 16)):
            if s_key in ip and d_key in ip and ip[s_key][1] >= size and ip[d_key][1] >= size:
                so, do = ip[s_key][0], ip[d_key][0]
                src = str(ipaddress.ip_address(bytes(data[so : so + size])))
                dst = str(ipaddress.ip_address(bytes(data[do : do + size])))
    if CTA_TUPLE_PROTO in top:
        o, n = top[CTA_TUPLE_PROTO]
        pr = _attrs(data, o, o + n) or {}
        if CTA_PROTO_NUM in pr:
            proto = data[pr[CTA_PROTO_NUM][0]]
        if proto in PORT_PROTOCOLS and CTA_PROTO_SRC_PORT in pr and CTA_PROTO_DST_PORT in pr:
            sport = struct.unpack_from("!H", data, pr[CTA_PROTO_SRC_PORT][0])[0]
            dport = struct.unpack_from("!H", data, pr[CTA_PROTO_DST_PORT][0])[0]
    return proto, src, dst, sport, dport


def _counters(data: Buffer, at: tuple[int, int] | None) -> tuple[int, int]:
    if at is None:
        return 0, 0
    c = _attrs(data, at[0], at[0] + at[1]) or {}
    packets = bytes_ = 0
    for key, fmt, is_packets in (
        (CTA_COUNTERS_PACKETS, "!Q", True),
        (CTA_COUNTERS_BYTES, "!Q", False),
        (CTA_COUNTERS32_PACKETS, "!I", True),
        (CTA_COUNTERS32_BYTES, "!I", False),
    ):
        if key in c and c[key][1] >= struct.calcsize(fmt):
            value = struct.unpack_from(fmt, data, c[key][0])[0]
            if is_packets:
                packets = value
            else:
                bytes_ = value
    return packets, bytes_


@dataclass
class ConntrackStats:
    events: int = 0
    malformed: int = 0
    other: int = 0  # messages that are not DESTROY events
    enobufs: int = 0


def parse_destroy(data: Buffer, length: int, stats: ConntrackStats) -> list[Connection]:
    """All DESTROY events in one received datagram."""
    out: list[Connection] = []
    off = 0
    want = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    while off + 16 <= length:
        ln, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if ln < 16 or off + ln > length:
            stats.malformed += 1
            break
        if kind != want:
            if kind != 3:  # NLMSG_DONE
                stats.other += 1
            off += (ln + 3) & ~3
            continue
        attrs = _attrs(data, off + 20, off + ln) if ln >= 20 else None
        if attrs is None or CTA_TUPLE_ORIG not in attrs:
            stats.malformed += 1
        else:
            proto, src, dst, sport, dport = _tuple(data, *attrs[CTA_TUPLE_ORIG])
            packets, bytes_ = _counters(data, attrs.get(CTA_COUNTERS_ORIG))
            rpackets, rbytes = _counters(data, attrs.get(CTA_COUNTERS_REPLY))
            start = None
            if CTA_TIMESTAMP in attrs:
                o, n = attrs[CTA_TIMESTAMP]
                ts = _attrs(data, o, o + n) or {}
                if CTA_TIMESTAMP_START in ts and ts[CTA_TIMESTAMP_START][1] >= 8:
                    start = struct.unpack_from("!Q", data, ts[CTA_TIMESTAMP_START][0])[0]
            stats.events += 1
            out.append(Connection(proto, src, dst, sport, dport, packets, bytes_, rpackets, rbytes, start))
        off += (ln + 3) & ~3
    return out


class ConntrackSocket:
    """DESTROY events of one namespace."""

    def __init__(self, netns: str | None, rcvbuf: int = 16 << 20) -> None:
        def create() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)

        if netns is None:
            self.sock = create()
        else:
            from enforcer.lab.kernel import in_netns

            self.sock = in_netns(netns, create)
        self.netns = netns
        self.stats = ConntrackStats()
        try:
            set_rcvbuf(self.sock, rcvbuf)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_DESTROY)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray(1 << 17)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Connection]:
        """Everything waiting (non-blocking)."""
        out: list[Connection] = []
        view = memoryview(self.buf)
        while True:
            try:
                n = self.sock.recv_into(view)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.stats.enobufs += 1
                    continue
                raise
            if n == 0:
                return out
            out.extend(parse_destroy(self.buf, n, self.stats))

    def close(self) -> None:
        self.sock.close()


def enable_accounting(netns: str) -> None:
    """nf_conntrack_acct=1 and nf_conntrack_timestamp=1 inside lab namespace `netns`."""
    from enforcer.lab.kernel import in_netns

    def write() -> None:
        for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
            try:
                with open(f"/proc/sys/net/netfilter/{key}", "w") as f:
                    f.write("1")
            except FileNotFoundError:
                pass

    in_netns(netns, write)


def accounting_enabled(netns: str | None) -> bool:
    def read() -> bool:
        try:
            with open("/proc/sys/net/netfilter/nf_conntrack_acct") as f:
                return f.read().strip() == "1"
        except FileNotFoundError:
            return False

    if netns is None:
        return read()
    from enforcer.lab.kernel import in_netns

    return in_netns(netns, read)
