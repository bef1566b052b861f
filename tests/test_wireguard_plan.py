"""WireGuard without root: desired-state planning, the device text protocols, key publication on
the stored Nodes, the status summary and the `get wireguard` command's root check."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from enforcer.datastore import Datastore
from enforcer.lab import plan_lab
from enforcer.model import FelixConfiguration, Node, Pod, ResourceSet
from enforcer.wireguard.device import (
    DeviceConfig,
    DeviceError,
    DeviceStatus,
    PeerConfig,
    PeerStatus,
    parse_uapi_get,
    parse_wg_dump,
    uapi_errno,
    uapi_set,
    wg_set_args,
)
from enforcer.wireguard.keys import KeyStore, generate_private_key, key_to_hex, public_key
from enforcer.wireguard.plan import INTERFACES, PORTS, enabled_families, owned_prefixes, plan_wireguard
from enforcer.wireguard.publish import ANNOTATIONS, publish_keys, published_keys
from enforcer.wireguard.status import PeerView, TunnelStatus, handshake_text, summary
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime

ip = ipaddress.ip_address
net = ipaddress.ip_network
ON = FelixConfiguration(wireguard_enabled=True, wireguard_enabled_v6=True)


def cluster() -> ResourceSet:
    return ResourceSet(
        nodes=(Node("a"), Node("b", addresses=(ip("172.31.0.20"),)), Node("c")),
        pods=(
            Pod("p1", "default", node="a"),
            Pod("p2", "default", node="b"),
            Pod("p3", "default", node="b", ips=(ip("10.99.0.3"), ip("fd00:99::3"))),
            Pod("p4", "default", node="c"),
        ),
    )


def keys_for(nodes: list[str], families: tuple[int, ...] = (4, 6)) -> dict[tuple[str, int], str]:
    return {(n, f): public_key(generate_private_key()) for n in nodes for f in families}


# ---- planning ----------------------------------------------------------------------------------


def test_families_are_independent() -> None:
    assert enabled_families(FelixConfiguration()) == ()
    assert enabled_families(FelixConfiguration(wireguard_enabled=True)) == (4,)
    assert enabled_families(FelixConfiguration(wireguard_enabled_v6=True)) == (6,)
    assert enabled_families(ON) == (4, 6)


def test_peers_allowed_ips_routes_and_mtu() -> None:
    lab = plan_lab(cluster(), "tp")
    pubs = keys_for(["a", "b", "c"])
    plan = plan_wireguard(ON, lab, pubs)
    a = plan.node("a")
    t4, t6 = a.tunnel(4), a.tunnel(6)
    assert t4 is not None and t6 is not None
    assert (t4.interface, t4.port, t4.mtu) == (INTERFACES[4], PORTS[4], 1440) == ("ftwg0", 51820, 1440)
    assert (t6.interface, t6.port, t6.mtu) == ("ftwg0v6", 51821, 1420)
    assert t4.public_key == pubs[("a", 4)]
    b_peer = next(p for p in t4.peers if p.node == "b")
    assert b_peer.public_key == pubs[("b", 4)]
    assert b_peer.endpoint_text == "172.31.0.20:51820"
    # b's pod CIDR plus the address of its pod outside it, IPv4 only on the IPv4 tunnel
    assert b_peer.allowed_ips == (net("10.244.1.0/24"), net("10.99.0.3/32"))
    b6 = next(p for p in t6.peers if p.node == "b")
    assert b6.allowed_ips == (net("fd00:10:244:1::/64"), net("fd00:99::3/128"))
    assert b6.endpoint_text.startswith("[fd00:172:31::") and b6.endpoint_text.endswith("]:51821")
    assert {p.node for p in t4.peers} == {"b", "c"}  # never itself
    assert set(t4.routes) == {n for p in t4.peers for n in p.allowed_ips}
    assert a.pod_mtu == 1420  # the smallest tunnel MTU: Calico's veth MTU
    assert [p.interface for p in a.pods] == [lab.pod("default", "p1").interface]
    assert plan.warnings == ()
    assert plan.describe() == plan_wireguard(ON, lab, pubs).describe()  # deterministic


def test_owned_prefixes_match_the_lab_routes() -> None:
    lab = plan_lab(cluster(), "tp")
    for node in lab.nodes:
        others = [n for n in lab.nodes if n.name != node.name]
        routes = {str(r.dst) for r in lab.netns(others[0].netns).routes if r.via is not None and r.dev == "eth0"}
        assert {str(p) for p in owned_prefixes(lab, node)} <= routes


def test_only_ipv4_leaves_ipv6_plain_and_off_restores_the_underlay_mtu() -> None:
    lab = plan_lab(cluster(), "tp")
    v4 = plan_wireguard(FelixConfiguration(wireguard_enabled=True), lab, keys_for(["a", "b", "c"]), 9000)
    node = v4.node("c")
    assert [t.family for t in node.tunnels] == [4]
    assert node.tunnel(4) is not None and node.tunnel(4).mtu == 8940  # type: ignore[union-attr]
    assert node.pod_mtu == 8940
    off = plan_wireguard(FelixConfiguration(), lab, {}, {"a": 1500, "b": 1400})
    assert not off.enabled and all(not n.tunnels for n in off.nodes)
    assert [n.pod_mtu for n in off.nodes] == [1500, 1400, 1500]


def test_nodes_without_keys_get_no_tunnel_and_are_no_peers() -> None:
    lab = plan_lab(cluster(), "tp")
    pubs = keys_for(["a", "b"])  # c has published nothing
    plan = plan_wireguard(ON, lab, pubs)
    assert plan.node("c").tunnels == ()
    t = plan.node("a").tunnel(4)
    assert t is not None and [p.node for p in t.peers] == ["b"]
    assert any("node c has no IPv4 public key" in w for w in plan.warnings)


def test_tiny_underlay_mtu_is_refused() -> None:
    lab = plan_lab(cluster(), "tp")
    plan = plan_wireguard(ON, lab, keys_for(["a", "b", "c"]), 1300)
    assert all(t.family == 4 for n in plan.nodes for t in n.tunnels)  # 1300 - 80 < 1280
    assert any("IPv6" in w and "MTU" in w for w in plan.warnings)


# ---- the device protocols ----------------------------------------------------------------------


def config(peers: int = 2) -> tuple[DeviceConfig, list[str]]:
    pubs = [public_key(generate_private_key()) for _ in range(peers)]
    cfg = DeviceConfig(generate_private_key(), 51820, tuple(
        PeerConfig(pub, f"172.31.0.{i + 2}:51820", (net(f"10.244.{i}.0/24"),)) for i, pub in enumerate(pubs)))
    return cfg, pubs


def test_uapi_set_from_nothing_then_nothing_to_do() -> None:
    cfg, pubs = config()
    request = uapi_set(cfg, None)
    assert request is not None and request.startswith("set=1\n") and request.endswith("\n\n")
    lines = request.splitlines()
    assert f"private_key={key_to_hex(cfg.private_key)}" in lines
    assert "listen_port=51820" in lines
    assert lines.count("replace_allowed_ips=true") == 2 and "allowed_ip=10.244.1.0/24" in lines
    assert "replace_peers=true" not in lines  # differential: sessions of kept peers survive
    have = DeviceStatus(cfg.public_key, 51820, tuple(
        PeerStatus(p.public_key, p.endpoint, p.allowed_ips, 1.0, 10, 20) for p in cfg.peers))
    assert uapi_set(cfg, have) is None
    assert wg_set_args("ftwg0", cfg, have) is None


def test_uapi_set_removes_and_updates_only_what_differs() -> None:
    cfg, pubs = config()
    stale = public_key(generate_private_key())
    have = DeviceStatus(cfg.public_key, 51820, (
        PeerStatus(pubs[0], "172.31.0.2:51820", (net("10.244.0.0/24"),)),
        PeerStatus(pubs[1], "172.31.0.3:51820", (net("10.244.9.0/24"),)),  # allowed IPs changed
        PeerStatus(stale, "172.31.0.9:51820", ()),
    ))
    request = uapi_set(cfg, have)
    assert request is not None
    lines = request.splitlines()
    assert not any(line.startswith(("private_key=", "listen_port=")) for line in lines)
    assert lines[1:3] == [f"public_key={key_to_hex(stale)}", "remove=true"]
    assert f"public_key={key_to_hex(pubs[0])}" not in lines
    assert f"public_key={key_to_hex(pubs[1])}" in lines and "allowed_ip=10.244.1.0/24" in lines
    args = wg_set_args("ftwg0", cfg, have)
    assert args == ["set", "ftwg0", "peer", stale, "remove", "peer", pubs[1], "endpoint", "172.31.0.3:51820",
                    "allowed-ips", "10.244.1.0/24"]
    fresh = wg_set_args("ftwg0", cfg, None)
    assert fresh is not None and fresh[2:6] == ["private-key", "/dev/stdin", "listen-port", "51820"]


def test_parse_uapi_get() -> None:
    private = generate_private_key()
    peer = public_key(generate_private_key())
    reply = textwrap.dedent(f"""\
        private_key={key_to_hex(private)}
        listen_port=51820
        public_key={key_to_hex(peer)}
        preshared_key={'0' * 64}
        protocol_version=1
        endpoint=[fd00:172:31::2]:51821
        last_handshake_time_sec=1700000000
        last_handshake_time_nsec=500000000
        tx_bytes=1234
        rx_bytes=5678
        persistent_keepalive_interval=0
        allowed_ip=fd00:10:244:1::/64
        allowed_ip=fd00:99::3/128
        errno=0

        """)
    st = parse_uapi_get(reply)
    assert st.public_key == public_key(private) and st.listen_port == 51820
    (p,) = st.peers
    assert p.public_key == peer and p.endpoint == "[fd00:172:31::2]:51821"
    assert p.allowed_ips == (net("fd00:10:244:1::/64"), net("fd00:99::3/128"))
    assert (p.last_handshake, p.rx_bytes, p.tx_bytes) == (1700000000.5, 5678, 1234)
    empty = parse_uapi_get("listen_port=0\nerrno=0\n\n")
    assert empty.public_key is None and empty.peers == ()
    assert uapi_errno("errno=-22\n\n") == -22
    with pytest.raises(DeviceError):
        parse_uapi_get("errno=1\n\n")
    with pytest.raises(DeviceError):
        uapi_errno("garbage")


def test_parse_wg_dump() -> None:
    private = generate_private_key()
    pub = public_key(private)
    peer = public_key(generate_private_key())
    text = (f"{private}\t{pub}\t51820\toff\n"
            f"{peer}\t(none)\t172.31.0.2:51820\t10.244.1.0/24,10.99.0.3/32\t1700000000\t100\t200\toff\n"
            f"{pub}\t(none)\t(none)\t(none)\t0\t0\t0\t25\n")
    st = parse_wg_dump(text)
    assert (st.public_key, st.listen_port, st.fwmark) == (pub, 51820, 0)
    first, second = st.peers
    assert first.allowed_ips == (net("10.244.1.0/24"), net("10.99.0.3/32"))
    assert (first.last_handshake, first.rx_bytes, first.tx_bytes) == (1700000000.0, 100, 200)
    assert (second.endpoint, second.allowed_ips, second.last_handshake, second.keepalive) == (None, (), None, 25)
    for bad in ("", "a\tb\n", f"{private}\t{pub}\t51820\toff\nx\ty\n"):
        with pytest.raises(DeviceError):
            parse_wg_dump(bad)


# ---- publication ---------------------------------------------------------------------------------

NODES_YAML = """\
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {role: worker}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
"""


def test_publish_annotates_stored_nodes_and_heals(tmp_path: Path) -> None:
    ds = Datastore(tmp_path / "state")
    src = tmp_path / "nodes.yaml"
    src.write_text(NODES_YAML)
    ds.apply_documents([str(src)])
    store = KeyStore.for_datastore(ds.path)
    a4, a6, b4 = store.ensure("node-a", 4), store.ensure("node-a", 6), store.ensure("node-b", 4)
    wanted = {"node-a": {4: a4.public, 6: a6.public}, "node-b": {4: b4.public, 6: None}, "ghost": {4: "x"}}
    assert publish_keys(ds, wanted) == ["node-a", "node-b"]
    assert published_keys(ds) == {("node-a", 4): a4.public, ("node-a", 6): a6.public, ("node-b", 4): b4.public}
    revision = ds.revision
    assert publish_keys(ds, wanted) == [] and ds.revision == revision  # idempotent: no new revision
    (_, doc), = ds.object_documents("node", name="node-a")
    assert doc["metadata"]["annotations"] == {ANNOTATIONS[4]: a4.public, ANNOTATIONS[6]: a6.public}
    assert doc["metadata"]["labels"] == {"role": "worker"}  # the rest of the Node is kept
    # the user re-applies the Node without the annotations: the next publication writes them back
    ds.apply_documents([str(src)])
    assert published_keys(ds) == {}
    assert publish_keys(ds, wanted) == ["node-a", "node-b"]
    # turning a family off removes its annotation (Calico clears the field)
    publish_keys(ds, {"node-a": {4: None, 6: None}})
    assert set(published_keys(ds)) == {("node-b", 4)}
    assert ds.resources().nodes[0].name == "node-a"  # the datastore still loads


# ---- status ------------------------------------------------------------------------------------


def tunnel(node: str, family: int, *, enabled: bool = True, handshake: float | None = 990.0,
           desired: bool = True) -> TunnelStatus:
    peer = PeerView("x", "k", "e", (), handshake, 1, 2)
    return TunnelStatus(node, family, INTERFACES[family], f"ns-{node}", desired, enabled, enabled,
                        "userspace" if enabled else None, peers=(peer,) if enabled else ())


def test_summary_line() -> None:
    now = 1000.0
    items = [tunnel("a", 4), tunnel("b", 4, handshake=None), tunnel("a", 6, enabled=False, desired=False),
             tunnel("b", 6, enabled=False, desired=False)]
    assert summary(items, now) == "WireGuard IPv4 2/2 nodes, 1/2 peers up (userspace) · IPv6 off"
    broken = [tunnel("a", 4), tunnel("b", 4, enabled=False)]
    assert summary(broken, now) == "WireGuard IPv4 1/2 nodes, 1/1 peers up (userspace), 1 not ready · IPv6 off"
    assert handshake_text(None, now) == "never" and handshake_text(988.0, now) == "12s ago"
    assert handshake_text(now - 600, now) == "10m ago"
    assert tunnel("a", 4).to_json(now)["status"] == {"wireguardPublicKey": None}


def test_backend_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from enforcer.wireguard.backend import MODE_ENV, mode_from_env

    monkeypatch.delenv(MODE_ENV, raising=False)
    assert mode_from_env() == "auto"
    for value in ("kernel", "userspace", "AUTO"):
        monkeypatch.setenv(MODE_ENV, value)
        assert mode_from_env() == value.lower()
    monkeypatch.setenv(MODE_ENV, "ipsec")
    with pytest.raises(DeviceError, match="auto, kernel or userspace"):
        mode_from_env()


def test_get_wireguard_needs_root(tmp_path: Path) -> None:
    rt = Runtime(lab_nodes=lambda lab: [], is_root=lambda: False)
    result = CliRunner().invoke(cli, ["get", "wireguard", "--state-dir", str(tmp_path)], obj=rt)
    assert result.exit_code == 1
    assert "needs root" in result.stderr


def test_reconciler_hook_is_a_no_op_without_a_kernel_backend(tmp_path: Path) -> None:
    """Tables that went to a fake backend never turn WireGuard on in a real lab of the same id."""
    from enforcer.nft.backend import FakeBackend
    from enforcer.nft.compiler import CompileOptions, compile_node
    from enforcer.reconcile import Reconciler

    ds = Datastore(tmp_path / "state")
    (tmp_path / "cluster.yaml").write_text(NODES_YAML + "---\napiVersion: projectcalico.org/v3\n"
                                           "kind: FelixConfiguration\nmetadata: {name: default}\n"
                                           "spec: {wireguardEnabled: true}\n")
    ds.apply_documents([str(tmp_path / "cluster.yaml")])
    revision = ds.revision
    rec = Reconciler(ds, FakeBackend(), compile_node, CompileOptions(), lambda: ["node-a", "node-b"], lab_id="lab")
    assert rec.reconcile().ok
    assert rec.wireguard is None and ds.revision == revision
    assert not (tmp_path / "state" / "wireguard").exists()
