"""Selector sets render their members collapsed in integers (`match.collapsed_texts`): the same
elements as ipaddress.collapse_addresses gives, for hosts and networks of both families."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.nft.match import _net_text, collapse, collapsed_texts, ip_text


def _reference(hosts: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
               nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], version: int) -> list[str]:
    members = [ipaddress.ip_network(h) for h in hosts] + nets
    return [_net_text(n) for n in collapse([n for n in members if n.version == version])]


v4_host = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6_host = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
# Addresses crowded into a small space, so that runs merge, overlap and cross block boundaries.
near_v4 = st.integers(0, 300).map(lambda i: ipaddress.IPv4Address(0x0A000000 + i))
near_v6 = st.integers(0, 300).map(lambda i: ipaddress.IPv6Address((0x20010DB8 << 96) + i))
v4_net = st.tuples(st.integers(0x0A000000, 0x0A000200), st.integers(22, 32)).map(
    lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False))
v6_net = st.tuples(st.integers(0, 600), st.integers(118, 128)).map(
    lambda t: ipaddress.IPv6Network(((0x20010DB8 << 96) + t[0], t[1]), strict=False))


@settings(max_examples=300, deadline=None)
@given(hosts=st.lists(st.one_of(v4_host, v6_host, near_v4, near_v6), max_size=40),
       nets=st.lists(st.one_of(v4_net, v6_net), max_size=6))
def test_collapsed_texts_equal_collapse_addresses(hosts: list, nets: list) -> None:  # type: ignore[type-arg]
    for version in (4, 6):
        assert collapsed_texts(hosts, nets, version) == _reference(hosts, nets, version)


def test_whole_spaces_and_edges() -> None:
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert collapsed_texts([], everything, 4) == ["0.0.0.0/0"]
    assert collapsed_texts([], everything, 6) == ["::/0"]
    top = [ipaddress.IPv4Address("255.255.255.254"), ipaddress.IPv4Address("255.255.255.255")]
    assert collapsed_texts(top, [], 4) == ["255.255.255.254/31"]
    run = [ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(1, 7)]
    assert collapsed_texts(run, [], 4) == ["10.0.0.1", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6"]


@settings(max_examples=500, deadline=None)
@given(st.one_of(v4_host, v6_host, near_v6,
                 st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF]), min_size=8, max_size=8).map(
                     lambda hs: ipaddress.IPv6Address(sum(h << (112 - 16 * i) for i, h in enumerate(hs))))))
def test_address_text_is_ipaddress_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert ip_text(ip) == str(ip)
