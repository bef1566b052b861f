"""Packet captures as flow frames (`flowtui import pcap`): the first packet of each connection.

Packets are read with scapy (pcap and pcapng; Ethernet, Linux SLL and SLL2, raw IPv4/IPv6, BSD
loopback, NFLOG, VLAN and QinQ) and grouped into
connections by their unordered 5-tuple (protocol, the two address/port pairs; for ICMP echo, the
echo identifier instead of ports; other ICMP messages are one flow per type and code and
direction). A connection's flow is its first packet, turned around when that packet is plainly
an answer: a TCP SYN-ACK (the capture missed the SYN) or an ICMP echo reply. Packets and bytes
(IP length) of both directions are summed. Overlay traffic (VXLAN, Geneve, IP-in-IP) gives the
inner (pod) flow, with the tunnel's outer addresses (the nodes) in `outer_src_ip`/`outer_dst_ip`.
Packets without an IP flow (ARP, OSPF's neighbours are IP and count; Ethernet loopback frames do
not) are counted by reason; a damaged or truncated file keeps the flows read before the damage.

Addresses are attributed to cluster endpoints when a cluster is given (`src_endpoint`,
`dst_endpoint`: `ns/pod`, `node:NAME`, `external:NAME`, or the address itself).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from enforcer.resolve import ClusterState
from flowtui.interop.imports import PCAP_MAGIC
from flowtui.whatif.classes import parse_address, peer_label
from flowtui.whatif.frames import SCHEMA, FlowSourceError, normalize

ECHO = {1: (8, 0), 58: (128, 129)}  # protocol -> (echo request, echo reply)


@dataclass
class _Conn:
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    icmp_type: int | None
    icmp_code: int | None
    time: datetime
    packets: int = 0
    bytes: int = 0
    outer_src: str | None = None
    outer_dst: str | None = None


def _l4(ip: Any) -> tuple[int, int | None, int | None, int | None, int | None, int | None, bool]:
    """(proto, sport, dport, icmp type, code, echo id, syn-ack) of an IP/IPv6 layer."""
    from scapy.layers.inet import ICMP, TCP, UDP
    from scapy.layers.sctp import SCTP

    proto = int(ip.proto) if ip.version == 4 else int(ip.nh)
    payload = ip.payload
    if ip.version == 6:  # skip extension headers to the upper layer
        while hasattr(payload, "nh") and payload.name.startswith(("IPv6 Extension", "Fragmentation", "Routing")):
            proto = int(payload.nh)
            payload = payload.payload
    for layer in (TCP, UDP, SCTP):
        if isinstance(payload, layer):
            synack = layer is TCP and (int(payload.flags) & 0x12) == 0x12
            return proto, int(payload.sport), int(payload.dport), None, None, None, synack
    if isinstance(payload, ICMP) or proto == 58:
        icmp_type = getattr(payload, "type", None)
        code = getattr(payload, "code", None)
        echo_id = getattr(payload, "id", None)
        return (proto, None, None, None if icmp_type is None else int(icmp_type),
                None if code is None else int(code), None if echo_id is None else int(echo_id), False)
    return proto, None, None, None, None, None, False


NFLOG_LINKTYPE = 239
NFULA_PAYLOAD = 9


@dataclass
class CaptureStats:
    """What a capture held: packets read, flows, and packets that gave none (by reason)."""

    packets: int = 0
    flows: int = 0
    overlay_packets: int = 0  # packets whose flow is the inner one of a VXLAN/Geneve/IP-in-IP tunnel
    skipped: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # a truncated or damaged file, with where

    def summary(self) -> str:
        parts = [f"{self.packets:,} packets", f"{self.flows:,} flows"]
        if self.overlay_packets:
            parts.append(f"{self.overlay_packets:,} packets decapsulated")
        if self.skipped:
            parts.append("no IP flow in " + ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items())))
        return "; ".join(parts)


def load_layers() -> None:
    """Register every link type and protocol scapy decodes (Ethernet, SLL/SLL2, raw IPv4/IPv6, BSD
    loopback, VLAN/QinQ, VXLAN, IP-in-IP, and Geneve from contrib) before a file is opened: a
    reader opened first decodes nothing but raw bytes."""
    import scapy.contrib.geneve  # noqa: F401  (binds UDP 6081)
    import scapy.layers.all  # noqa: F401


def _nflog_ip(data: bytes) -> Any:
    """The packet inside an NFLOG record (link type 239: nfgenmsg, then TLVs; NFULA_PAYLOAD is it)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    family, offset = data[0], 4
    while offset + 4 <= len(data):
        length = int.from_bytes(data[offset:offset + 2], "little")
        kind = int.from_bytes(data[offset + 2:offset + 4], "little") & 0x7FFF
        if length < 4:
            break
        if kind == NFULA_PAYLOAD:
            payload = data[offset + 4:offset + length]
            return IPv6(payload) if family == 10 else IP(payload)
        offset += (length + 3) & ~3
    return None


def _ip_layers(pkt: Any) -> list[Any]:
    """The IP/IPv6 headers of a packet, outermost first (not those quoted inside ICMP errors)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    out = []
    layer = pkt
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        if type(layer) in (IP, IPv6):
            out.append(layer)
        layer = layer.payload
    return out


def _not_ip_reason(pkt: Any) -> str:
    from scapy.config import conf

    layer, ethertype = pkt, None
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        if layer.__class__ is conf.raw_layer:
            return f"ethertype {ethertype:#06x} (not IP)" if ethertype is not None else "undecoded link or payload"
        if layer.__class__.__name__ in ("Ether", "Dot1Q", "Dot1AD", "CookedLinux", "CookedLinuxV2"):
            ethertype = getattr(layer, "type", getattr(layer, "proto", None))
        if layer.__class__.__name__ not in ("Ether", "Dot1Q", "Dot1AD", "CookedLinux", "CookedLinuxV2", "Loopback",
                                            "LLC", "SNAP", "Padding"):
            return f"{layer.name} (not IP)"
        layer = layer.payload
    return "no payload"


def packets_to_flows(packets: Iterable[Any], progress: Callable[[int], None] | None = None,
                     stats: CaptureStats | None = None, linktype: int | None = None) -> pl.DataFrame:
    """Flows from scapy packets (anything with an IP or IPv6 layer; the rest is counted in `stats`).
    Tunnelled packets give their innermost flow, with the outer (node) addresses."""
    stats = stats if stats is not None else CaptureStats()
    conns: dict[tuple[object, ...], _Conn] = {}
    for pkt in packets:
        stats.packets += 1
        if progress is not None and stats.packets % 10000 == 0:
            progress(10000)
        try:
            if linktype == NFLOG_LINKTYPE:
                inner = _nflog_ip(bytes(pkt))
                layers = _ip_layers(inner) if inner is not None else []
            else:
                layers = _ip_layers(pkt)
            if not layers:
                nflog = linktype == NFLOG_LINKTYPE
                stats.skipped["NFLOG record without payload" if nflog else _not_ip_reason(pkt)] += 1
                continue
            ip = layers[-1]
            outer = layers[0] if len(layers) > 1 else None
            if outer is not None:
                stats.overlay_packets += 1
            _count(conns, pkt, ip, outer)
        except Exception as exc:  # noqa: BLE001  (nothing in a capture may stop the ones after it)
            stats.skipped[f"undecodable ({type(exc).__name__})"] += 1
    if progress is not None:
        progress(stats.packets % 10000)
    stats.flows = len(conns)
    rows = [(c.src, c.dst, c.proto, c.sport, c.dport, c.icmp_type, c.icmp_code, c.time, c.packets, c.bytes,
             c.outer_src, c.outer_dst) for c in conns.values()]
    schema = {**SCHEMA, "time": pl.Datetime("us"), "packets": pl.Int64(), "bytes": pl.Int64(),
              "outer_src_ip": pl.String(), "outer_dst_ip": pl.String()}
    return normalize(pl.DataFrame(rows, schema=schema, orient="row"))


def _count(conns: dict[tuple[object, ...], _Conn], pkt: Any, ip: Any, outer: Any) -> None:
    src, dst = str(ip.src), str(ip.dst)
    proto, sport, dport, icmp_type, icmp_code, echo_id, synack = _l4(ip)
    size = int(ip.len or 0) if ip.version == 4 else int(ip.plen or 0) + 40
    when = datetime.fromtimestamp(float(pkt.time), UTC).replace(tzinfo=None)
    key: tuple[object, ...]
    if proto in ECHO and icmp_type in ECHO[proto]:
        key = (proto, "echo", frozenset((src, dst)), echo_id)
    elif icmp_type is not None:
        key = (proto, src, dst, icmp_type, icmp_code)
    else:
        key = (proto, frozenset(((src, sport), (dst, dport))))
    conn = conns.get(key)
    if conn is None:
        outer_src, outer_dst = (str(outer.src), str(outer.dst)) if outer is not None else (None, None)
        if synack or (proto in ECHO and icmp_type == ECHO[proto][1]):  # an answer: the opener is the other end
            src, dst, sport, dport = dst, src, dport, sport
            outer_src, outer_dst = outer_dst, outer_src
            if icmp_type is not None:
                icmp_type = ECHO[proto][0]
        conn = conns[key] = _Conn(src, dst, proto, sport, dport, icmp_type, icmp_code, when,
                                  outer_src=outer_src, outer_dst=outer_dst)
    conn.packets += 1
    conn.bytes += size


def read_capture(path: str | Path, progress: Callable[[int], None] | None = None) -> tuple[pl.DataFrame, CaptureStats]:
    """The flows of a pcap or pcapng file, and what it held."""
    from scapy.error import Scapy_Exception
    from scapy.utils import PcapReader

    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError as exc:
        raise FlowSourceError(f"{path}: no such file") from exc
    except OSError as exc:
        raise FlowSourceError(f"{path}: {exc.strerror or exc}") from exc
    if magic not in PCAP_MAGIC:
        raise FlowSourceError(f"{path}: not a pcap or pcapng capture")
    load_layers()
    stats = CaptureStats()
    with _scapy_warnings(stats, str(path)):
        try:
            reader = PcapReader(str(path))
        except (Scapy_Exception, OSError, EOFError, ValueError) as exc:
            raise FlowSourceError(f"{path}: not a readable capture: {exc}") from exc
        with reader:
            linktype = getattr(reader, "linktype", None)
            frame = packets_to_flows(_guarded(reader, stats, str(path)), progress, stats, linktype)
    return frame, stats


class _Collect(logging.Handler):
    def __init__(self, stats: CaptureStats, path: str) -> None:
        super().__init__(logging.WARNING)
        self.stats, self.path = stats, path

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "unknown LL type" in message:  # NFLOG: decoded here
            return
        self.stats.problems.append(f"{self.path}: packet {self.stats.packets + 1}: {message}")


@contextlib.contextmanager
def _scapy_warnings(stats: CaptureStats, path: str) -> Iterator[None]:
    """Scapy's warnings about the file (a truncated packet, ...) become the capture's problems,
    reported with the packet number, instead of log lines on stderr."""
    log = logging.getLogger("scapy.runtime")
    handler = _Collect(stats, path)
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _guarded(reader: Any, stats: CaptureStats, path: str) -> Iterator[Any]:
    """The reader's packets, stopping (and saying where) at a truncated or damaged record."""
    iterator = iter(reader)
    while True:
        try:
            pkt = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001  (a damaged record ends the file, not the import)
            stats.problems.append(f"{path}: packet {stats.packets + 1}: cannot read it ({exc}); "
                                  "the rest of the file is ignored")
            return
        yield pkt


def read_pcap(path: str | Path, progress: Callable[[int], None] | None = None) -> pl.DataFrame:
    """The flows of a pcap or pcapng file."""
    return read_capture(path, progress)[0]


def attribute(frame: pl.DataFrame, state: ClusterState) -> pl.DataFrame:
    """`src_endpoint` and `dst_endpoint` columns naming each address's owner in `state`."""
    texts = pl.concat([frame.get_column("src_ip"), frame.get_column("dst_ip")]).unique().drop_nulls().to_list()
    names = {t: peer_label(state, parse_address(t), t) for t in texts}
    return frame.with_columns(
        src_endpoint=pl.col("src_ip").replace_strict(names, default=None, return_dtype=pl.String),
        dst_endpoint=pl.col("dst_ip").replace_strict(names, default=None, return_dtype=pl.String),
    )
