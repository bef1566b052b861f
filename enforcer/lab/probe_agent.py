"""Runs inside a lab namespace (`python -m enforcer.lab.probe_agent send|recv`).

recv: raw sockets for TCP, UDP and ICMP on both families see every packet delivered locally
      after the namespace's INPUT hook; reports (src, proto, sport-or-icmp-id, dport) as JSON
      lines on stdout when stdin closes or the deadline passes. This observes the *first packet*
      of each probe arriving, independent of any reply path.
send: reads probes as JSON lines on stdin and sends one packet (a UDP datagram, a TCP SYN via a
      non-blocking connect, an ICMP echo request) for each, from the given source address; then
      reports which were answered — a TCP SYN-ACK or RST, an ICMP echo reply — as
      {"replied": [[proto, marker], ...]}: the reply path's verdict (UDP: not observed).
Bounded: every loop has a deadline and a count.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import struct
import sys
import time

IPPROTO_ICMPV6 = 58


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an ICMPv4 message."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _parse(family: int, proto: int, data: bytes, src: str) -> tuple[str, int, int, int] | None:
    if family == socket.AF_INET:
        ihl = (data[0] & 0x0F) * 4
        data = data[ihl:]
    if proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and len(data) >= 4:
        sport, dport = struct.unpack("!HH", data[:4])
        if proto == socket.IPPROTO_TCP and len(data) >= 14 and not (data[13] & 0x02 and not data[13] & 0x10):
            return None  # only SYNs: the first packet of a connection
        return src, proto, sport, dport
    if proto in (socket.IPPROTO_ICMP, IPPROTO_ICMPV6) and len(data) >= 8:
        typ = data[0]
        if typ not in (8, 128):  # echo requests only
            return None
        ident = struct.unpack("!H", data[4:6])[0]
        return src, proto, ident, typ
    return None


def recv(deadline_s: float) -> None:
    socks: dict[int, tuple[int, int]] = {}
    opened = []
    plan: tuple[tuple[int, tuple[int, ...]], ...] = (
        (socket.AF_INET, (socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP)),
        (socket.AF_INET6, (socket.IPPROTO_TCP, socket.IPPROTO_UDP, IPPROTO_ICMPV6)),
    )
    for fam, protos in plan:
        for proto in protos:
            s = socket.socket(fam, socket.SOCK_RAW, proto)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            socks[s.fileno()] = (fam, proto)
            opened.append(s)
    by_fd = {s.fileno(): s for s in opened}
    print("ready", flush=True)
    seen: set[tuple[str, int, int, int]] = set()
    end = time.monotonic() + deadline_s
    stdin_fd = sys.stdin.fileno()
    while time.monotonic() < end:
        ready, _, _ = select.select([*by_fd, stdin_fd], [], [], max(0.0, end - time.monotonic()))
        for fd in ready:
            if fd == stdin_fd:
                if not sys.stdin.readline():
                    end = 0.0  # stdin closed: report now
                continue
            family, proto = socks[fd]
            for _ in range(256):
                try:
                    data, addr = by_fd[fd].recvfrom(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                item = _parse(family, proto, data, addr[0].split("%")[0])
                if item is not None:
                    seen.add(item)
    for item in sorted(seen):
        print(json.dumps(item))
    sys.stdout.flush()


def _echo_reply_ids(sock: socket.socket, family: int) -> set[int]:
    """Echo-reply identifiers waiting on a raw ICMP/ICMPv6 socket."""
    ids: set[int] = set()
    for _ in range(4096):
        try:
            data = sock.recv(65535, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if family == socket.AF_INET:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) >= 8 and data[0] == (0 if family == socket.AF_INET else 129):
            ids.add(struct.unpack("!H", data[4:6])[0])
    return ids


def _answered(sock: socket.socket) -> bool:
    """Whether a non-blocking connect got its reply: connected (SYN-ACK) or refused (RST)."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err == errno.ECONNREFUSED:
        return True
    if err:
        return False
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def send(wait_s: float = 0.8) -> None:
    keep: list[tuple[int, socket.socket]] = []
    echo: dict[int, socket.socket] = {}  # one raw socket per family receives the echo replies
    echo_markers: set[tuple[int, int]] = set()
    count = 0
    for line in sys.stdin:
        if not line.strip() or count >= 100_000:
            continue
        p = json.loads(line)
        count += 1
        family: int = socket.AF_INET6 if ":" in p["dst"] else socket.AF_INET
        proto = p["proto"]
        try:
            if proto == 17:
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.bind((p["src"], p["sport"]))
                s.sendto(b"flowtui-probe", (p["dst"], p["dport"]))
                s.close()
            elif proto == 6:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((p["src"], p["sport"]))
                s.connect_ex((p["dst"], p["dport"]))
                keep.append((p["sport"], s))
            else:
                icmp = socket.IPPROTO_ICMP if family == socket.AF_INET else IPPROTO_ICMPV6
                if family not in echo:
                    echo[family] = socket.socket(family, socket.SOCK_RAW, icmp)
                s = socket.socket(family, socket.SOCK_RAW, icmp)
                s.bind((p["src"], 0))
                typ = 8 if family == socket.AF_INET else 128
                header = struct.pack("!BBHHH", typ, 0, 0, p["sport"], 1) + b"flowtui-probe"
                if family == socket.AF_INET:
                    header = header[:2] + struct.pack("!H", icmp_checksum(header)) + header[4:]
                s.sendto(header, (p["dst"], 0))
                s.close()
                echo_markers.add((proto, p["sport"]))
        except PermissionError:
            pass  # EPERM: a local OUTPUT rule dropped it — a verdict, not a failure
        except OSError as err:
            print(json.dumps({"error": str(err), "probe": p}), flush=True)
    # Let SYNs leave and replies come back (closing an unanswered connect sends nothing).
    time.sleep(wait_s)
    replied = [[6, marker] for marker, s in keep if _answered(s)]
    for family, sock in echo.items():
        proto = 1 if family == socket.AF_INET else IPPROTO_ICMPV6
        replied += [[proto, ident] for ident in sorted(_echo_reply_ids(sock, family)) if (proto, ident) in echo_markers]
        sock.close()
    for _, s in keep:
        s.close()
    print(json.dumps({"replied": replied}), flush=True)
    print(json.dumps({"sent": count}), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["recv"]:
        recv(float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
    elif sys.argv[1:2] == ["send"]:
        send()
    else:
        raise SystemExit("usage: python -m enforcer.lab.probe_agent recv [SECONDS] | send")


if __name__ == "__main__":
    main()
