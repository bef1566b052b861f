"""Vectorised header decoding against packets built with scapy (the oracle)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from flowtui.collector.decode import address_table, decode


def run(*packets: bytes, cap: int = 80):
    buf = bytearray()
    offs, lens = [], []
    for p in packets:
        offs.append(len(buf))
        data = p[:cap]
        lens.append(len(data))
        buf += data + b"\0" * (-len(data) % 4)
    buf += b"\0" * 64
    arr = np.frombuffer(bytes(buf), dtype=np.uint8)
    return decode(arr, np.asarray(offs, dtype=np.int64), np.asarray(lens, dtype=np.int64))


def test_ipv4_udp_tcp_icmp() -> None:
    d = run(
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1234, dport=53) / Raw(b"q" * 30)),
        bytes(IP(src="10.0.0.3", dst="10.0.0.4") / TCP(sport=40000, dport=443, flags="SA")),
        bytes(IP(src="10.0.0.5", dst="10.0.0.6") / ICMP(type=8, code=0)),
    )
    assert d.ip_version.tolist() == [4, 4, 4]
    assert d.proto.tolist() == [17, 6, 1]
    assert d.length.tolist() == [58, 40, 28]
    assert d.has_ports.tolist() == [True, True, False]
    assert d.sport[:2].tolist() == [1234, 40000] and d.dport[:2].tolist() == [53, 443]
    assert d.has_tcp_flags.tolist() == [False, True, False] and d.tcp_flags[1] == 0x12
    assert d.has_icmp.tolist() == [False, False, True] and (d.icmp_type[2], d.icmp_code[2]) == (8, 0)
    texts, src, dst = address_table(d)
    assert [texts[i] for i in src] == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert [texts[i] for i in dst] == ["10.0.0.2", "10.0.0.4", "10.0.0.6"]


def test_ipv4_options_move_the_transport_header() -> None:
    p = bytes(IP(src="1.1.1.1", dst="2.2.2.2", options=[b"\x01" * 8]) / UDP(sport=7, dport=8))
    d = run(p)
    assert d.has_ports[0] and (d.sport[0], d.dport[0]) == (7, 8)


def test_ipv4_later_fragment_has_no_ports() -> None:
    first = bytes(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF", frag=0) / UDP(sport=7, dport=8))
    later = bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=10, proto=17) / Raw(b"\x00\x07\x00\x08" * 4))
    d = run(first, later)
    assert d.has_ports.tolist() == [True, False]
    assert d.proto.tolist() == [17, 17]


def test_ipv6_transport_and_extension_headers() -> None:
    d = run(
        bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=22, flags="S")),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(sport=5, dport=6)),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=0, m=1) / UDP(sport=9, dport=10)),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=5, nh=17) / Raw(b"x" * 16)),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()),
    )
    assert d.ip_version.tolist() == [6] * 5
    assert d.proto.tolist() == [6, 17, 17, 17, 58]
    assert d.has_ports.tolist() == [True, True, True, False, False]
    assert d.sport[:3].tolist() == [1, 5, 9] and d.dport[:3].tolist() == [22, 6, 10]
    assert d.tcp_flags[0] == 0x02
    assert d.has_icmp.tolist() == [False, False, False, False, True] and d.icmp_type[4] == 128
    texts, src, dst = address_table(d)
    assert texts[src[1]] == "2001:db8::1" and texts[dst[0]] == "fd00::2"


def test_truncated_and_non_ip_payloads_are_absent_not_wrong() -> None:
    tcp = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=1, dport=2))
    d = run(tcp, cap=22)  # ports need 24 bytes
    assert d.ip_version[0] == 4 and not d.has_ports[0] and not d.has_tcp_flags[0]
    d = run(b"\x00" * 40, b"", bytes(IP(src="1.1.1.1", dst="2.2.2.2"))[:10])
    assert d.ip_version.tolist() == [0, 0, 0]
    assert not d.has_ports.any() and not d.has_proto.any()
    texts, src, dst = address_table(d)
    assert texts == [] and src.tolist() == [-1, -1, -1]


def test_missing_payload_offsets() -> None:
    arr = np.zeros(64, dtype=np.uint8)
    d = decode(arr, np.array([-1], dtype=np.int64), np.array([0], dtype=np.int64))
    assert d.ip_version.tolist() == [0]


_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just(4), _v4, _v4, st.sampled_from([6, 17, 1]), st.integers(0, 65535), st.integers(0, 65535)),
            st.tuples(st.just(6), _v6, _v6, st.sampled_from([6, 17, 58]), st.integers(0, 65535), st.integers(0, 65535)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_matches_scapy(items: list[tuple[int, str, str, int, int, int]]) -> None:
    packets = []
    for version, src, dst, proto, sport, dport in items:
        ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
        if proto == 6:
            l4 = TCP(sport=sport, dport=dport, flags="PA")
        elif proto == 17:
            l4 = UDP(sport=sport, dport=dport)
        else:
            l4 = ICMP(type=sport % 256, code=dport % 256) if version == 4 else ICMPv6EchoRequest()
        packets.append(bytes(ip / l4 / Raw(b"z" * 10)))
    d = run(*packets)
    texts, s_code, d_code = address_table(d)
    for i, (version, src, dst, proto, sport, dport) in enumerate(items):
        assert d.ip_version[i] == version and d.proto[i] == proto
        assert texts[s_code[i]] == src and texts[d_code[i]] == dst
        if proto in (6, 17):
            assert (int(d.sport[i]), int(d.dport[i])) == (sport, dport)
        if proto == 1:
            assert (int(d.icmp_type[i]), int(d.icmp_code[i])) == (sport % 256, dport % 256)
        assert d.length[i] == len(packets[i])
