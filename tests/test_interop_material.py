"""Real published material (`../shared/external/material/interop/`): every Hubble export, Calico flow
log and capture imports with the flows it holds and no warning, and a what-if on the imported
Hubble and Calico flows names the flows an edit newly denies.

The expected counts were found without flowtui:
- captures: `tshark -r FILE -T fields -E occurrence=l -e ip.src -e ipv6.src ... -e icmp.ident`, the
  innermost addresses of each packet grouped into connections the way the importer does
  (unordered 5-tuple; ICMP echo by identifier); packet counts agree with `tcpdump -nn -r FILE`;
- Hubble: `jq` over the file: flows that are not replies (`is_reply`, L7 `RESPONSE`) and are
  decisions (policy-verdict or drop events, L7 requests, DROPPED/REDIRECTED); files with none
  give their connection openings (not replies; TCP only SYN without ACK);
- the Calico line by reading it: one record, denied at its destination at the end of tier
  `app-hipstershop` after a Pass in tier `security`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

from flowtui.cli.main import cli
from flowtui.interop.imports import read_file
from flowtui.whatif.pcap import read_capture

MATERIAL = Path(__file__).resolve().parents[2] / "shared" / "external" / "material" / "interop"
pytestmark = pytest.mark.skipif(not MATERIAL.is_dir(), reason=f"{MATERIAL} is not here")

# file: (packets, flows, reason there is no flow)
CAPTURES: dict[str, tuple[int, int, str | None]] = {
    "802.1ad_QinQ.pcap": (2, 0, "ARP (not IP)"),
    "LINKTYPE_IPV4.pcap": (1, 1, None),
    "LINKTYPE_IPV6.pcap": (1, 1, None),
    "LINKTYPE_RAW_ipv4.pcap": (1, 1, None),
    "LINKTYPE_RAW_ipv6.pcap": (1, 1, None),
    "OSPFv2_Capture_FINAL.pcapng": (30, 6, None),
    "RADIUS-RFC5580.pcap": (1, 1, None),  # Linux SLL
    "bigtcp-ipv6.pcap": (1, 1, None),
    "dns-badcookie.pcap": (4, 2, None),  # BSD loopback
    "dns_tcp.pcap": (11, 1, None),
    "dns_udp.pcap": (2, 1, None),
    "empty.pcap": (0, 0, "holds no packets"),
    "empty.pcapng": (0, 0, "holds no packets"),
    "geneve.pcap": (39, 2, None),
    "gso-ipv4-vxlan-ipv4.pcap": (1, 1, None),
    "icmp-length-zero.pcapng": (1, 1, None),
    "ipv4_tcp_http_xml.pcap": (1, 1, None),
    "loopback.pcap": (6, 0, "ethertype 0x9000 (not IP)"),  # Ethernet configuration testing frames
    "mptcp-v1.pcap": (20, 1, None),
    "nflog.pcap": (4, 4, None),
}

# file: (lines, flow records)
HUBBLE: dict[str, tuple[int, int]] = {
    "cilium-docs__export-fieldmask-example.json": (2, 2),
    "hubble-otel__basic-sample-10-flows.json": (10, 1),
    "hubble-otel__basic-sample-330-dns-flows.json": (330, 165),
    "hubble-otel__basic-sample-348-http-flows.json": (348, 175),
    "hubble-otel__basic-sample-400-icmpv4-flows.json": (18, 14),
    "hubble-otel__basic-sample-400-l7-redirected-flows.json": (400, 400),
    "hubble-otel__basic-sample-400-tcp-flows.json": (400, 60),
    "hubble-otel__basic-sample-400-udp-flows.json": (400, 104),
    "hubble-otel__basic-sample-5-dns-flows.json": (5, 3),
    "hubble-otel__basic-sample-5-http-flows.json": (5, 3),
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_material_is_all_covered() -> None:
    assert sorted(p.name for p in (MATERIAL / "pcap").iterdir()) == sorted(CAPTURES)
    assert sorted(p.name for p in (MATERIAL / "hubble").iterdir()) == sorted(HUBBLE)
    assert [p.name for p in (MATERIAL / "calico").iterdir()] == ["flows.log"]


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture(name: str) -> None:
    packets, flows, reason = CAPTURES[name]
    path = MATERIAL / "pcap" / name
    frame, stats = read_capture(path)
    assert (stats.packets, frame.height, stats.problems) == (packets, flows, [])
    result = invoke("import", "pcap", str(path), "--current", "/dev/null", "--limit", "0", "-o", "json")
    assert "warning" not in result.stderr.lower()
    if flows:
        assert result.exit_code == 0, result.stderr
        assert len(json.loads(result.stdout)) == flows
    else:  # nothing to import is said, and is a failure a script notices
        assert result.exit_code == 1 and "no flows" in result.stderr
        assert reason in result.stderr or reason in stats.summary()


def test_overlays_give_the_inner_flows_with_the_node_addresses() -> None:
    geneve, _ = read_capture(MATERIAL / "pcap" / "geneve.pcap")
    assert sorted(geneve.select("src_ip", "dst_ip", "proto", "dst_port", "outer_src_ip", "outer_dst_ip").rows(),
                  key=str) == [
        ("30.0.0.1", "30.0.0.2", 1, None, "20.0.0.1", "20.0.0.2"),  # ping, through VNI 10
        ("30.0.0.2", "30.0.0.1", 6, 22, "20.0.0.2", "20.0.0.1"),  # ssh, opened from the other node
    ]
    vxlan, _ = read_capture(MATERIAL / "pcap" / "gso-ipv4-vxlan-ipv4.pcap")
    assert vxlan.select("src_ip", "dst_ip", "src_port", "dst_port", "outer_src_ip", "outer_dst_ip").rows() == [
        ("192.168.1.2", "192.168.1.1", 37099, 41547, "10.25.132.11", "10.25.132.13")]
    nflog, _ = read_capture(MATERIAL / "pcap" / "nflog.pcap")
    assert set(nflog["src_ip"]) == {"74.82.42.42"} and set(nflog["dst_port"]) == {42585, 45190, 44031, 48736}


@pytest.mark.parametrize("name", sorted(HUBBLE))
def test_hubble_file(name: str, tmp_path: Path) -> None:
    lines, records = HUBBLE[name]
    result = invoke("import", "hubble", str(MATERIAL / "hubble" / name), "--db", str(tmp_path / "h.duckdb"),
                    "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr.lower()
    [doc] = json.loads(result.stdout)
    assert (doc["lines"], doc["records"], doc["malformed"]) == (lines, records, 0)


def _flows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def test_hubble_redirects_l7_labels_and_service_accounts(tmp_path: Path) -> None:
    db = tmp_path / "h.duckdb"
    redirected = MATERIAL / "hubble" / "hubble-otel__basic-sample-400-l7-redirected-flows.json"
    assert invoke("import", "hubble", str(redirected), "--db", str(db)).exit_code == 0
    kinds = _flows(db, "SELECT policy_kind, policy_name, sum(events) FROM flows_v GROUP BY ALL ORDER BY ALL")
    assert kinds == [("ProxyRedirect", "policy-match:L3-L4", 178), ("ProxyRedirect", "policy-match:L4-only", 222)]
    labels = _flows(db, "SELECT DISTINCT src_labels FROM flows_v WHERE src_name LIKE 'ratings-%'")[0][0]
    assert "projectcalico.org/serviceaccount=bookinfo-ratings" in labels
    assert "pcns.kubernetes.io/metadata.name=bookinfo" in labels and "app=ratings" in labels
    exported = invoke("export", "--format", "hubble", "--db", str(db), "--out", "-").stdout.splitlines()
    flows = [json.loads(line)["flow"] for line in exported]
    assert {f["verdict"] for f in flows} == {"REDIRECTED"} and {f["policy_match_type"] for f in flows} == {2, 3}
    assert not any(k.endswith(("_allowed_by", "_denied_by")) for f in flows for k in f)  # no invented policy

    dns = read_file(str(MATERIAL / "hubble" / "hubble-otel__basic-sample-5-dns-flows.json")).parsed
    http = read_file(str(MATERIAL / "hubble" / "hubble-otel__basic-sample-5-http-flows.json")).parsed
    assert [o.l7 for o in dns.observations][0].startswith("dns ")
    assert http.observations[0].l7 == "http GET http://10.128.0.4:9990/metrics"


def test_calico_flows_log(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    result = invoke("import", "calico", str(MATERIAL / "calico" / "flows.log"), "--db", str(db), "-o", "json")
    assert result.exit_code == 0 and "warning" not in result.stderr.lower(), result.stderr
    assert json.loads(result.stdout)[0]["records"] == 1
    rows = _flows(db, "SELECT f.action, r.kind, r.namespace, r.name, r.tier, r.rule, r.trigger_kind, f.packets, "
                      "f.bytes, f.src_ip, f.dst_ip, f.dport FROM flows f JOIN rules r ON r.id = f.rule_id "
                      "ORDER BY f.action DESC")
    assert rows == [
        ("Pass", "GlobalNetworkPolicy", None, "security.tenant-histershop", "security", 0, None, 0, 0,
         "10.48.116.157", "10.48.127.224", 5050),
        ("Deny", "EndOfTier", "hipstershop", "app-hipstershop.checkoutservice", "app-hipstershop", -1,
         "NetworkPolicy", 5, 300, "10.48.116.157", "10.48.127.224", 5050),
    ]
    names = _flows(db, "SELECT src_name, src_labels, dst_namespace, dst_name, dst_labels, reporter FROM flows_v "
                       "WHERE action = 'Deny'")
    assert names == [("multitool", ["run=multitool"], "hipstershop", "checkoutservice-598d5b586d-wsvmz",
                      ["app=checkoutservice", "pod-template-hash=598d5b586d", "tenant=hipstershop"], "dst")]
    again = invoke("import", "calico", str(MATERIAL / "calico" / "flows.log"), "--db", str(db))
    assert again.exit_code == 0 and "already imported" in again.stderr
    assert _flows(db, "SELECT count(*) FROM flows") == [(2,)]  # nothing doubled


DENY_DNS = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-dns}
spec:
  selector: k8s-app == 'kube-dns'
  types: [Ingress]
  ingress:
    - action: Deny
      protocol: UDP
      source: {namespaceSelector: kubernetes.io/metadata.name == 'bookinfo'}
      destination: {ports: [53]}
"""

CHECKOUT_ONLY_FROM_FRONTEND = """apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: checkout-ingress, namespace: hipstershop}
spec:
  selector: app == 'checkoutservice'
  types: [Ingress]
  ingress:
    - action: Allow
      source: {selector: app == 'frontend'}
"""


def _newly_denied(result: Result) -> list[tuple[str, str, int, int]]:
    assert result.exit_code == 0, result.stderr
    groups = json.loads(result.stdout)["categories"]["newly_denied"]["groups"]
    return sorted((g["source"], g["destination"], g["port"], g["flows"]) for g in groups)


def test_whatif_on_hubble_flows_names_the_newly_denied(tmp_path: Path) -> None:
    edit = tmp_path / "deny-dns.yaml"
    edit.write_text(DENY_DNS)
    path = MATERIAL / "hubble" / "hubble-otel__basic-sample-400-l7-redirected-flows.json"
    # jq: the UDP/53 flows from namespace bookinfo to pods labelled k8s-app=kube-dns: 178
    want = [("bookinfo/productpage-v1-6b746f74dc-9rcxx", "kube-system/coredns-558bd4d5db-9grjv", 53, 58),
            ("bookinfo/productpage-v1-6b746f74dc-9rcxx", "kube-system/coredns-558bd4d5db-w2m67", 53, 54),
            ("bookinfo/ratings-v1-b6994bb9-jgqxb", "kube-system/coredns-558bd4d5db-9grjv", 53, 27),
            ("bookinfo/ratings-v1-b6994bb9-jgqxb", "kube-system/coredns-558bd4d5db-w2m67", 53, 39)]
    from_file = invoke("whatif", "--flows", str(path), "--current", "/dev/null", "-f", str(edit), "-o", "json")
    assert _newly_denied(from_file) == want
    db = tmp_path / "h.duckdb"
    assert invoke("import", "hubble", str(path), "--db", str(db)).exit_code == 0
    from_store = invoke("whatif", "--db", str(db), "--current", "/dev/null", "-f", str(edit), "-o", "json")
    assert _newly_denied(from_store) == want


def test_whatif_on_calico_flows_names_the_newly_denied(tmp_path: Path) -> None:
    edit = tmp_path / "checkout.yaml"
    edit.write_text(CHECKOUT_ONLY_FROM_FRONTEND)
    want = [("default/multitool", "hipstershop/checkoutservice-598d5b586d-wsvmz", 5050, 1)]
    path = MATERIAL / "calico" / "flows.log"
    assert _newly_denied(invoke("whatif", "--flows", str(path), "--current", "/dev/null", "-f", str(edit),
                                "-o", "json")) == want
    db = tmp_path / "c.duckdb"
    assert invoke("import", "calico", str(path), "--db", str(db)).exit_code == 0
    assert _newly_denied(invoke("whatif", "--db", str(db), "--current", "/dev/null", "-f", str(edit),
                                "-o", "json")) == want


def test_propose_from_imported_hubble_flows() -> None:
    path = MATERIAL / "hubble" / "hubble-otel__basic-sample-400-l7-redirected-flows.json"
    result = invoke("propose", "-n", "bookinfo", "--flows", str(path), "--current", "/dev/null", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    names = {d["metadata"]["name"] for d in doc["documents"] if d["kind"] == "NetworkPolicy"}
    assert {"flowtui-ratings", "flowtui-productpage"} <= names and doc["newly_denied"] == 0
