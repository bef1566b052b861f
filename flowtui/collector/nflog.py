"""NFLOG over a raw netlink socket: open, bind groups, configure, receive in batches.

pyroute2 has no nfnetlink_log support, and a message-class parser is ~25x too slow for the rates
we need, so this is a plain `AF_NETLINK`/`NETLINK_NETFILTER` socket:

- **Batched delivery.** The kernel queues up to `qthreshold` messages of one group in one skb of
  up to `nlbufsiz` bytes, or sends what it has after `timeout` hundredths of a second. One
  `recv()` returns one such skb: dozens to hundreds of events for one system call.
- **Sequence numbers.** `NFULNL_CFG_F_SEQ` stamps every message of a group (an "instance") with
  a 32-bit counter, so a receive-buffer overrun shows as a gap (`parse.SeqTracker`).
- **A large receive buffer.** `SO_RCVBUFFORCE` (root) of 64 MiB by default absorbs bursts of a
  few hundred thousand events while the writer checkpoints.
- **ENOBUFS is not fatal.** When the socket buffer overflows the kernel drops skbs and reports
  `ENOBUFS` once on the next `recv`; we count it and keep reading (`NflogSocket.recv_into`).

A socket keeps the network namespace it was created in: `open_nflog(netns=...)` creates it
inside a lab namespace through `enforcer.lab.kernel.in_netns`, never by switching the process.
Parsing lives in `parse.py`; this module only moves bytes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host byte order)
NFGEN_HDR = struct.Struct("!BBH")  # family, version, res_id (big endian)
NLA_HDR = struct.Struct("=HH")  # len, type (host byte order)
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFLOG_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NFLOG_CONFIG_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

# Config attributes (NFULA_CFG_*).
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
CMD_BIND, CMD_UNBIND = 1, 2
COPY_NONE, COPY_META, COPY_PACKET = 0, 1, 2
CFG_F_SEQ, CFG_F_SEQ_GLOBAL, CFG_F_CONNTRACK = 0x1, 0x2, 0x4

# Packet attributes (NFULA_*), as the kernel emits them.
NFULA_PACKET_HDR = 1  # be16 hw_protocol, u8 hook, u8 pad
NFULA_MARK = 2  # be32
NFULA_TIMESTAMP = 3  # be64 sec, be64 usec
NFULA_IFINDEX_INDEV = 4  # be32
NFULA_IFINDEX_OUTDEV = 5  # be32
NFULA_IFINDEX_PHYSINDEV = 6
NFULA_IFINDEX_PHYSOUTDEV = 7
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9  # the packet from its network header, up to the copy range
NFULA_PREFIX = 10  # NUL-terminated string
NFULA_UID = 11
NFULA_SEQ = 12  # be32, per instance (group)
NFULA_SEQ_GLOBAL = 13  # be32, per network namespace
NFULA_GID = 14
NFULA_HWTYPE = 15
NFULA_HWHEADER = 16
NFULA_HWLEN = 17
NFULA_CT = 18
NFULA_CT_INFO = 19
NFULA_VLAN = 20
NFULA_L2HDR = 21
NFULA_MAX = 21

NLBUFSIZ_MAX = 131072  # the kernel refuses more (ERANGE)


@dataclass(frozen=True)
class NflogConfig:
    """How the kernel should deliver NFLOG messages to us (one config for every bound group)."""

    groups: tuple[int, ...] = (1, 2)
    copy_range: int = 80  # bytes of packet: IPv6 (40) + TCP (20) + options; Calico uses 80
    qthreshold: int = 128  # messages per skb before the kernel sends it
    nlbufsiz: int = NLBUFSIZ_MAX  # bytes per skb
    timeout_cs: int = 5  # hundredths of a second a partly filled skb may wait
    rcvbuf: int = 64 << 20  # SO_RCVBUFFORCE
    seq: bool = True  # NFULNL_CFG_F_SEQ: per-group sequence numbers
    seq_global: bool = False


class NetlinkError(OSError):
    """The kernel refused a configuration request (errno from its NLMSG_ERROR reply)."""


def nlattr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    body = NLA_HDR.pack(NLA_HDR.size + len(payload), kind) + payload
    return body + b"\0" * (-len(body) % 4)


def nfnl_message(msg_type: int, flags: int, seq: int, family: int, res_id: int, attrs: Iterable[bytes]) -> bytes:
    """A complete nfnetlink message: nlmsghdr + nfgenmsg + attributes."""
    body = NFGEN_HDR.pack(family, 0, res_id) + b"".join(attrs)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), msg_type, flags, seq, 0) + body


def config_messages(group: int, cfg: NflogConfig, seq0: int) -> list[bytes]:
    """The requests that bind `group` and configure it (each asks for an ACK)."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    mode = struct.pack("!IBB", cfg.copy_range, COPY_PACKET, 0)
    cfg_flags = (CFG_F_SEQ if cfg.seq else 0) | (CFG_F_SEQ_GLOBAL if cfg.seq_global else 0)
    return [
        nfnl_message(NFLOG_CONFIG_TYPE, flags, seq0, socket.AF_UNSPEC, group, [nlattr(CFG_CMD, bytes([CMD_BIND]))]),
        nfnl_message(
            NFLOG_CONFIG_TYPE,
            flags,
            seq0 + 1,
            socket.AF_UNSPEC,
            group,
            [
                nlattr(CFG_MODE, mode),
                nlattr(CFG_NLBUFSIZ, struct.pack("!I", min(cfg.nlbufsiz, NLBUFSIZ_MAX))),
                nlattr(CFG_TIMEOUT, struct.pack("!I", cfg.timeout_cs)),
                nlattr(CFG_QTHRESH, struct.pack("!I", cfg.qthreshold)),
                nlattr(CFG_FLAGS, struct.pack("!H", cfg_flags)),
            ],
        ),
    ]


def unbind_message(group: int, seq: int) -> bytes:
    return nfnl_message(
        NFLOG_CONFIG_TYPE, NLM_F_REQUEST, seq, socket.AF_UNSPEC, group, [nlattr(CFG_CMD, bytes([CMD_UNBIND]))]
    )


def make_socket(netns: str | None) -> socket.socket:
    """A NETLINK_NETFILTER socket in lab namespace `netns`, or in this process's namespace."""

    def create() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)

    if netns is None:
        return create()
    from enforcer.lab.kernel import in_netns

    return in_netns(netns, create)


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE (root) or SO_RCVBUF; returns what the kernel granted (it doubles the ask)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def request(sock: socket.socket, messages: list[bytes], timeout: float = 2.0) -> None:
    """Send requests that ask for ACKs and wait for every ACK; raise NetlinkError on a refusal."""
    wanted = {NLMSG_HDR.unpack_from(m)[3] for m in messages}
    for m in messages:
        sock.send(m)
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        while wanted:
            data = sock.recv(65536)
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, off)
                if length < NLMSG_HDR.size:
                    break
                if kind == NLMSG_ERROR and seq in wanted:
                    (err,) = struct.unpack_from("=i", data, off + NLMSG_HDR.size)
                    wanted.discard(seq)
                    if err != 0:
                        raise NetlinkError(-err, f"NFLOG config refused: {os.strerror(-err)}")
                off += (length + 3) & ~3
    finally:
        sock.settimeout(old)


class NflogSocket:
    """One NFLOG netlink socket in one namespace, bound to `cfg.groups` and configured."""

    def __init__(self, netns: str | None, cfg: NflogConfig) -> None:
        self.netns = netns
        self.cfg = cfg
        self.enobufs = 0  # ENOBUFS reports (overrun episodes, not events)
        self.sock = make_socket(netns)
        try:
            self.rcvbuf = set_rcvbuf(self.sock, cfg.rcvbuf)
            self.sock.bind((0, 0))
            self.portid = int(self.sock.getsockname()[0])
            seq = 1
            for group in cfg.groups:
                try:
                    request(self.sock, config_messages(group, cfg, seq))
                except NetlinkError as exc:
                    if exc.errno == errno.EBUSY:
                        where = f"namespace {netns}" if netns else "this namespace"
                        raise NetlinkError(
                            exc.errno, f"NFLOG group {group} in {where} is bound by another process"
                        ) from exc
                    raise
                seq += 2
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_into(self, view: memoryview) -> int:
        """Receive one skb (many messages) into `view`; 0 if nothing is waiting.

        ENOBUFS (the kernel dropped skbs because our buffer was full) is counted, never raised.
        """
        while True:
            try:
                return self.sock.recv_into(view)
            except BlockingIOError:
                return 0
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        try:
            self.sock.setblocking(True)
            for i, group in enumerate(self.cfg.groups):
                self.sock.send(unbind_message(group, 1000 + i))
        except OSError:
            pass
        self.sock.close()


def kernel_instances(netns: str | None) -> list[dict[str, int]]:
    """`/proc/net/netfilter/nfnetlink_log` of a namespace: what the kernel really configured."""

    def read() -> str:
        with open("/proc/thread-self/net/netfilter/nfnetlink_log") as f:
            return f.read()

    text = read() if netns is None else _in_netns(netns, read)
    keys = ("group", "portid", "qlen", "copy_mode", "copy_range", "flush_timeout", "use")
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= len(keys) and all(p.isdigit() for p in parts[: len(keys)]):
            rows.append(dict(zip(keys, (int(p) for p in parts), strict=False)))
    return rows


def _in_netns(netns: str, work: Callable[[], str]) -> str:
    from enforcer.lab.kernel import in_netns

    return in_netns(netns, work)


def packet_message(
    group: int,
    prefix: bytes | str | None,
    payload: bytes | None,
    *,
    seq: int | None = None,
    hook: int = 1,
    hw_protocol: int = 0x0800,
    family: int = socket.AF_INET,
    timestamp_us: int | None = None,
    indev: int | None = 2,
    mark: int | None = None,
    extra: Iterable[bytes] = (),
) -> bytes:
    """An NFLOG packet message as the kernel builds it (for tests, fuzzing and replays)."""
    attrs = [nlattr(NFULA_PACKET_HDR, struct.pack("!HBB", hw_protocol, hook, 0))]
    if prefix is not None:
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        attrs.append(nlattr(NFULA_PREFIX, raw + b"\0"))
    if indev is not None:
        attrs.append(nlattr(NFULA_IFINDEX_INDEV, struct.pack("!I", indev)))
    if mark is not None:
        attrs.append(nlattr(NFULA_MARK, struct.pack("!I", mark)))
    if timestamp_us is not None:
        attrs.append(nlattr(NFULA_TIMESTAMP, struct.pack("!QQ", timestamp_us // 1_000_000, timestamp_us % 1_000_000)))
    if seq is not None:
        attrs.append(nlattr(NFULA_SEQ, struct.pack("!I", seq & 0xFFFFFFFF)))
    attrs.extend(extra)
    if payload is not None:
        attrs.append(nlattr(NFULA_PAYLOAD, payload))
    return nfnl_message(NFLOG_PACKET_TYPE, 0, 0, family, group, attrs)


def done_message(group: int) -> bytes:
    """The NLMSG_DONE trailer the kernel appends to a batch of more than one message."""
    return nfnl_message(NLMSG_DONE, NLM_F_MULTI, 0, socket.AF_UNSPEC, group, [])
