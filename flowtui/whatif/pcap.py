"""Packet captures as flow frames (`flowtui import pcap`): the first packet of each connection.

Packets are read with scapy (pcap and pcapng, any link type scapy decodes) and grouped into
connections by their unordered 5-tuple (protocol, the two address/port pairs; for ICMP echo, the
echo identifier instead of ports; other ICMP messages are one flow per type and code and
direction). A connection's flow is its first packet, turned around when that packet is plainly
an answer: a TCP SYN-ACK (the capture missed the SYN) or an ICMP echo reply. Packets and bytes
(IP length) of both directions are summed.

Addresses are attributed to cluster endpoints when a cluster is given (`src_endpoint`,
`dst_endpoint`: `ns/pod`, `node:NAME`, `external:NAME`, or the address itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


def packets_to_flows(packets: Iterable[Any], progress: Callable[[int], None] | None = None) -> pl.DataFrame:
    """Flows from scapy packets (anything with an IP or IPv6 layer; the rest is skipped)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    conns: dict[tuple[object, ...], _Conn] = {}
    seen = 0
    for pkt in packets:
        seen += 1
        if progress is not None and seen % 10000 == 0:
            progress(10000)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            continue
        src, dst = str(ip.src), str(ip.dst)
        proto, sport, dport, icmp_type, icmp_code, echo_id, synack = _l4(ip)
        size = int(ip.len) if ip.version == 4 else int(ip.plen) + 40
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
            if synack or (proto in ECHO and icmp_type == ECHO[proto][1]):  # an answer: the opener is the other end
                src, dst, sport, dport = dst, src, dport, sport
                if icmp_type is not None:
                    icmp_type = ECHO[proto][0]
            conn = conns[key] = _Conn(src, dst, proto, sport, dport, icmp_type, icmp_code, when)
        conn.packets += 1
        conn.bytes += size
    if progress is not None:
        progress(seen % 10000)
    rows = [(c.src, c.dst, c.proto, c.sport, c.dport, c.icmp_type, c.icmp_code, c.time, c.packets, c.bytes)
            for c in conns.values()]
    schema = {**SCHEMA, "time": pl.Datetime("us"), "packets": pl.Int64(), "bytes": pl.Int64()}
    return normalize(pl.DataFrame(rows, schema=schema, orient="row"))


def read_pcap(path: str | Path, progress: Callable[[int], None] | None = None) -> pl.DataFrame:
    """The flows of a pcap or pcapng file."""
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
    try:
        with PcapReader(str(path)) as reader:
            return packets_to_flows(reader, progress)
    except (Scapy_Exception, OSError, EOFError) as exc:
        raise FlowSourceError(f"{path}: not a readable capture: {exc}") from exc


def attribute(frame: pl.DataFrame, state: ClusterState) -> pl.DataFrame:
    """`src_endpoint` and `dst_endpoint` columns naming each address's owner in `state`."""
    texts = pl.concat([frame.get_column("src_ip"), frame.get_column("dst_ip")]).unique().drop_nulls().to_list()
    names = {t: peer_label(state, parse_address(t), t) for t in texts}
    return frame.with_columns(
        src_endpoint=pl.col("src_ip").replace_strict(names, default=None, return_dtype=pl.String),
        dst_endpoint=pl.col("dst_ip").replace_strict(names, default=None, return_dtype=pl.String),
    )
