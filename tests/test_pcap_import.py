"""`flowtui import pcap`: packet captures (pcap and pcapng, written here with scapy) become one flow
per connection, from its first packet, attributed to cluster endpoints, and can be what-if'd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap, wrpcapng

from enforcer.resolve import ClusterState
from flowtui.cli.main import cli
from flowtui.whatif.frames import FlowSourceError
from flowtui.whatif.pcap import attribute, read_pcap
from flowtui.whatif.sources import read_flows
from tests.test_whatif_fixtures import ADDR, cluster, write_cluster

WEB, API, DB, NET = ADDR["web-1"], ADDR["api-1"], ADDR["db-1"], ADDR["internet"]


def stamp(packets: list[Any]) -> list[Any]:
    for i, p in enumerate(packets):
        p.time = 1767268800 + i
    return packets


def capture() -> list[Any]:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # explicit: no ARP lookups
    return stamp([
        # a TCP connection web -> api:8080, both directions
        eth / IP(src=WEB, dst=API) / TCP(sport=40000, dport=8080, flags="S"),
        eth / IP(src=API, dst=WEB) / TCP(sport=8080, dport=40000, flags="SA"),
        eth / IP(src=WEB, dst=API) / TCP(sport=40000, dport=8080, flags="A"),
        eth / IP(src=WEB, dst=API) / TCP(sport=40000, dport=8080, flags="PA") / b"GET / HTTP/1.1\r\n\r\n",
        # the capture starts at the SYN-ACK of api -> db:5432: the opener is api
        eth / IP(src=DB, dst=API) / TCP(sport=5432, dport=41000, flags="SA"),
        eth / IP(src=API, dst=DB) / TCP(sport=41000, dport=5432, flags="A"),
        # DNS and its answer
        eth / IP(src=WEB, dst=NET) / UDP(sport=45000, dport=53) / b"q",
        eth / IP(src=NET, dst=WEB) / UDP(sport=53, dport=45000) / b"a",
        # ping, and a ping whose request was missed
        eth / IP(src=WEB, dst=DB) / ICMP(type=8, id=7),
        eth / IP(src=DB, dst=WEB) / ICMP(type=0, id=7),
        eth / IP(src=API, dst=WEB) / ICMP(type=0, id=9),
        # an error message is its own flow
        eth / IP(src=DB, dst=WEB) / ICMP(type=3, code=3),
        # IPv6 ping through a hop-by-hop header, and its reply
        eth / IPv6(src=ADDR["web-1/6"], dst=ADDR["db-1/6"]) / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(id=1),
        eth / IPv6(src=ADDR["db-1/6"], dst=ADDR["web-1/6"]) / ICMPv6EchoReply(id=1),
        # not IP
        eth / ARP(psrc=WEB, pdst=API),
    ])


EXPECTED = [
    (WEB, API, 6, 40000, 8080, None, None, 4),
    (API, DB, 6, 41000, 5432, None, None, 2),
    (WEB, NET, 17, 45000, 53, None, None, 2),
    (WEB, DB, 1, None, None, 8, 0, 2),
    (WEB, API, 1, None, None, 8, 0, 1),
    (DB, WEB, 1, None, None, 3, 3, 1),
    (ADDR["web-1/6"], ADDR["db-1/6"], 58, None, None, 128, 0, 2),
]


def rows(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return frame.select("src_ip", "dst_ip", "proto", "src_port", "dst_port", "icmp_type", "icmp_code",
                        "packets").rows()


@pytest.mark.parametrize("writer", [wrpcap, wrpcapng])
def test_first_packet_per_connection(tmp_path: Path, writer: Any) -> None:
    path = tmp_path / "capture.pcap"
    writer(str(path), capture())
    frame = read_pcap(path)
    assert rows(frame) == EXPECTED
    assert frame["time"][0].isoformat() == "2026-01-01T12:00:00"
    assert frame["bytes"][0] == sum(len(p[IP]) for p in capture()[:4])
    assert frame["count"].to_list() == [1] * len(EXPECTED)


def test_attribution(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    wrpcap(str(path), capture())
    frame = attribute(read_pcap(path), ClusterState(cluster()))
    assert frame.select("src_endpoint", "dst_endpoint").rows()[:3] == [
        ("shop/web-1", "shop/api-1"), ("shop/api-1", "shop/db-1"), ("shop/web-1", "external:internet")]


def test_not_a_capture(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(FlowSourceError):
        read_pcap(bad)
    with pytest.raises(FlowSourceError, match="no such file"):
        read_pcap(tmp_path / "missing.pcap")


def test_cli_import_then_whatif(tmp_path: Path) -> None:
    pcap = tmp_path / "lab.pcap"
    wrpcap(str(pcap), capture())
    current = write_cluster(tmp_path)
    out = tmp_path / "flows" / "lab.parquet"
    runner = CliRunner()
    result = runner.invoke(cli, ["import", "pcap", str(pcap), "--current", str(current), "-w", str(out)],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert f"wrote 7 flows to {out}" in result.stderr
    assert "shop/web-1" in result.stdout and "SRC_ENDPOINT" in result.stdout
    stored = pl.read_parquet(out)
    assert stored["src_endpoint"][0] == "shop/web-1"
    assert rows(read_flows([str(out)])) == EXPECTED
    as_json = runner.invoke(cli, ["import", "pcap", str(pcap), "--current", str(current), "-o", "json"])
    assert json.loads(as_json.stdout)[0]["dst_endpoint"] == "shop/api-1"
    edit = tmp_path / "deny.yaml"
    edit.write_text("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: no-dns}\n"
                    "spec:\n  selector: app == 'web'\n  types: [Egress]\n  egress:\n"
                    "  - {action: Deny, protocol: UDP, destination: {ports: [53]}}\n  - {action: Allow}\n")
    for flows in (str(out), str(pcap)):  # the Parquet written by import, or the capture itself
        replay = runner.invoke(cli, ["whatif", "--current", str(current), "--flows", flows, "-f", str(edit),
                                     "-o", "json"], catch_exceptions=False)
        assert replay.exit_code == 0, replay.stderr
        assert json.loads(replay.stdout)["summary"]["newly_denied"] == 1


def test_link_types_tags_and_tunnels(tmp_path: Path) -> None:
    from scapy.layers.l2 import CookedLinuxV2, Dot1AD, Dot1Q
    from scapy.layers.vxlan import VXLAN

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    tagged = stamp([eth / Dot1AD(vlan=200) / Dot1Q(vlan=10) / IP(src=WEB, dst=API) / TCP(sport=1, dport=80, flags="S")])
    wrpcap(str(tmp_path / "qinq.pcap"), tagged)
    assert rows(read_pcap(tmp_path / "qinq.pcap")) == [(WEB, API, 6, 1, 80, None, None, 1)]
    sll2 = stamp([CookedLinuxV2(proto=0x0800) / IP(src=WEB, dst=DB) / UDP(sport=2, dport=53)])
    wrpcap(str(tmp_path / "sll2.pcap"), sll2, linktype=276)
    assert rows(read_pcap(tmp_path / "sll2.pcap")) == [(WEB, DB, 17, 2, 53, None, None, 1)]
    tunnels = stamp([
        eth / IP(src="192.0.2.1", dst="192.0.2.2") / IP(src=WEB, dst=DB) / TCP(sport=3, dport=5432, flags="S"),
        eth / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=40000, dport=4789) / VXLAN(vni=1) / eth
        / IP(src=API, dst=DB) / TCP(sport=4, dport=5432, flags="S"),
    ])
    wrpcap(str(tmp_path / "tunnels.pcap"), tunnels)
    frame = read_pcap(tmp_path / "tunnels.pcap")
    assert frame.select("src_ip", "dst_ip", "dst_port", "outer_src_ip", "outer_dst_ip").rows() == [
        (WEB, DB, 5432, "192.0.2.1", "192.0.2.2"), (API, DB, 5432, "192.0.2.1", "192.0.2.2")]


def test_a_damaged_capture_keeps_what_came_before(tmp_path: Path) -> None:
    from flowtui.whatif.pcap import read_capture

    path = tmp_path / "cut.pcap"
    wrpcap(str(path), capture())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # the last record cut short
    frame, stats = read_capture(path)
    assert rows(frame) == EXPECTED  # the cut record was the ARP packet at the end
    assert stats.problems == [f"{path}: packet 15: Pcap: packet has been truncated"]
    result = CliRunner().invoke(cli, ["import", "pcap", str(path), "--current", "/dev/null", "-o", "json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == len(EXPECTED)
    assert f"warning: {path}: packet 15" in result.stderr
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(data[:24] + b"\xff" * 40)  # a header, then a record that claims 4 GB
    frame, stats = read_capture(garbage)
    assert frame.height == 0
    result = CliRunner().invoke(cli, ["import", "pcap", str(garbage), "--current", "/dev/null"])
    assert result.exit_code == 1 and "no flows" in result.stderr
