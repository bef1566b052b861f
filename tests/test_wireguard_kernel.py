"""WireGuard in a real lab (root): the underlay carries only WireGuard when encryption is on and a
pod's plaintext when it is off (IPv4 and IPv6, independently), live toggling restores plain
routing, MTUs, backend detection, `wg` against the userspace device, cleanup, and the datastore
path (keys published on the Nodes, the reconciler's hook).

The proof captures frames with an AF_PACKET socket on node a's port of the underlay bridge (in
the underlay namespace): everything node a sends to or receives from the other nodes.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enforcer.datastore import Datastore
from enforcer.lab import LabPlan, exec_in, lab_down, lab_up, netns_name, plan_lab
from enforcer.lab.kernel import in_netns, open_netns
from enforcer.lab.names import port_name, underlay_netns
from enforcer.lab.state import netns_pids
from enforcer.model import FelixConfiguration, IPAddress, Node, Pod, ResourceSet
from enforcer.wireguard import routing, userspace
from enforcer.wireguard.backend import existing_device
from enforcer.wireguard.device import parse_wg_dump, wg_set_args
from enforcer.wireguard.keys import KeyStore
from enforcer.wireguard.manager import WireGuardResult, apply_lab, disable_lab
from enforcer.wireguard.plan import INTERFACES, PORTS
from enforcer.wireguard.publish import ANNOTATIONS, published_keys
from enforcer.wireguard.status import lab_wireguard_status

pytestmark = pytest.mark.kernel

V4_ONLY = FelixConfiguration(wireguard_enabled=True)
V6_ONLY = FelixConfiguration(wireguard_enabled_v6=True)
BOTH = FelixConfiguration(wireguard_enabled=True, wireguard_enabled_v6=True)
ETH_P_ALL = 0x0003


def cluster() -> ResourceSet:
    """Two nodes; a pod on a, two on b (one with addresses outside b's pod CIDRs)."""
    import ipaddress

    ip = ipaddress.ip_address
    return ResourceSet(
        nodes=(Node("a"), Node("b")),
        pods=(
            Pod("pa", "default", node="a"),
            Pod("pb", "default", node="b"),
            Pod("pc", "default", node="b", ips=(ip("10.99.0.3"), ip("fd00:99::3"))),
        ),
    )


@dataclass
class WGLab:
    plan: LabPlan
    keys: KeyStore

    @property
    def lab_id(self) -> str:
        return self.plan.lab_id

    def apply(self, felix: FelixConfiguration) -> WireGuardResult:
        result = apply_lab(felix, self.plan, self.keys)
        assert result.ok, result.describe()
        return result

    def addr(self, pod: str, family: int) -> IPAddress:
        return next(a for a in self.plan.pod("default", pod).addresses if a.version == family)

    def node_ns(self, node: str) -> str:
        return self.plan.node(node).netns


def wireguard_pids(plan: LabPlan) -> list[int]:
    pids = []
    for node in plan.nodes:
        for pid in netns_pids(node.netns):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "wireguard-go":
                pids.append(pid)
    return pids


def gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def wg_lab(lab_id: str, tmp_path: Path) -> Iterator[WGLab]:
    plan = plan_lab(cluster(), lab_id)
    lab_up(plan)
    try:
        yield WGLab(plan, KeyStore(tmp_path / "keys"))
    finally:
        pids = wireguard_pids(plan)
        lab_down(lab_id)  # kills every process left in the lab's namespaces, wireguard-go included
        userspace.sweep()
        assert gone(pids), f"wireguard-go still running after lab_down: {pids}"
        assert not (userspace.RUN_DIR / plan.node("a").netns).exists()


# ---- sending a marker and capturing the underlay -----------------------------------------------

SENDER = textwrap.dedent("""\
    import socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    for _ in range(5):
        s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    """)
RECEIVER = textwrap.dedent("""\
    import socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    s.settimeout(5)
    try:
        first = s.recv(2048).decode()
    except socket.timeout:
        first = "timeout"
    s.settimeout(0.5)
    try:
        while True:  # the sender's other datagrams: no port-unreachable errors quoting the marker
            s.recv(2048)
    except socket.timeout:
        pass
    print(first, flush=True)
    """)


@dataclass(frozen=True)
class Frame:
    data: bytes
    version: int | None  # 4, 6 or None (ARP, ...)
    proto: int | None
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    payload: bytes


def parse_frame(data: bytes) -> Frame:
    ethertype = struct.unpack("!H", data[12:14])[0]
    ip = data[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        proto = ip[9]
        src, dst = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20])
        l4, version = ip[ihl:], 4
    elif ethertype == 0x86DD and len(ip) >= 40:
        proto = ip[6]
        src, dst = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40])
        l4, version = ip[40:], 6
    else:
        return Frame(data, None, None, None, None, None, None, b"")
    sport = dport = None
    payload = l4
    if proto in (6, 17) and len(l4) >= 8:
        sport, dport = struct.unpack("!HH", l4[:4])
        payload = l4[8:] if proto == 17 else l4[(l4[12] >> 4) * 4:]
    return Frame(data, version, proto, src, dst, sport, dport, payload)


class Capture:
    """Every frame through node `node`'s port of the underlay bridge while it is open."""

    def __init__(self, lab_id: str, node: str) -> None:
        port = port_name("node", node)

        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((port, 0))
            return s

        self.sock = in_netns(underlay_netns(lab_id), open_socket)
        self.sock.settimeout(0.05)

    def frames(self, linger: float = 0.5) -> list[Frame]:
        out = []
        deadline = time.monotonic() + linger
        try:
            while time.monotonic() < deadline and len(out) < 100_000:
                try:
                    out.append(parse_frame(self.sock.recv(65535)))
                except TimeoutError:
                    continue
        finally:
            self.sock.close()
        return out


def send_marker(lab: WGLab, src_pod: str, dst_pod: str, family: int) -> tuple[str, list[Frame]]:
    """Send a UDP marker string from pod to pod (5 datagrams) while capturing node a's underlay
    port; returns what the receiving pod got and the frames."""
    marker = f"FLOWTUI-MARKER-{secrets.token_hex(8)}"
    dst = str(lab.addr(dst_pod, family))
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", netns_name(lab.lab_id, f"default/{dst_pod}"), sys.executable, "-c", RECEIVER, dst,
         "7777"], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        capture = Capture(lab.lab_id, "a")
        done = exec_in(lab.lab_id, f"default/{src_pod}", [sys.executable, "-c", SENDER, dst, "7777", marker],
                       capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        frames = capture.frames()
        got, _ = receiver.communicate(timeout=10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert got.strip() == marker, f"the receiving pod did not get the marker ({got.strip()!r})"
    return marker, frames


def node_addresses(lab: WGLab) -> set[str]:
    return {str(a) for n in lab.plan.nodes for a in n.addresses}


def pod_addresses(lab: WGLab) -> set[str]:
    return {str(a) for p in lab.plan.pods for a in p.addresses}


def is_wireguard(frame: Frame, family: int) -> bool:
    """UDP between the WireGuard ports, carrying a WireGuard message (type 1-4, 3 zero bytes)."""
    return (frame.proto == 17 and frame.sport == PORTS[family] and frame.dport == PORTS[family]
            and len(frame.payload) >= 4 and frame.payload[0] in (1, 2, 3, 4) and frame.payload[1:4] == b"\0\0\0")


def assert_only_wireguard(lab: WGLab, frames: list[Frame], family: int, marker: str) -> None:
    ip_frames = [f for f in frames if f.version is not None]
    assert not any(marker.encode() in f.data for f in frames), "the pod's plaintext crossed the underlay"
    nodes, pods = node_addresses(lab), pod_addresses(lab)
    tunnel = [f for f in ip_frames if f.version == family and f.proto == 17]
    assert tunnel and all(is_wireguard(f, family) for f in tunnel), "UDP on the underlay that is not WireGuard"
    assert all(f.src in nodes and f.dst in nodes for f in tunnel)
    assert {f.payload[0] for f in tunnel} >= {4}, "no WireGuard data messages"
    assert not [f for f in ip_frames if f.src in pods or f.dst in pods], "pod addresses on the underlay"


def assert_plaintext(lab: WGLab, frames: list[Frame], family: int, marker: str) -> None:
    carrying = [f for f in frames if marker.encode() in f.data]
    assert carrying, "the marker should be visible on the underlay without encryption"
    assert all(f.version == family and f.src in pod_addresses(lab) and f.dport == 7777 for f in carrying)


# ---- the proof ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_underlay_carries_only_wireguard_when_on_and_plaintext_when_off(wg_lab: WGLab, family: int) -> None:
    marker, frames = send_marker(wg_lab, "pa", "pb", family)
    assert_plaintext(wg_lab, frames, family, marker)

    wg_lab.apply(V4_ONLY if family == 4 else V6_ONLY)
    for dst in ("pb", "pc"):  # pc: addresses outside b's pod CIDRs, a /32 and /128 allowed IP
        marker, frames = send_marker(wg_lab, "pa", dst, family)
        assert_only_wireguard(wg_lab, frames, family, marker)
    marker, frames = send_marker(wg_lab, "pb", "pa", family)  # and the other way
    assert_only_wireguard(wg_lab, frames, family, marker)
    # the other family is independent: still in the clear
    other = 6 if family == 4 else 4
    marker, frames = send_marker(wg_lab, "pa", "pb", other)
    assert_plaintext(wg_lab, frames, other, marker)

    wg_lab.apply(FelixConfiguration())
    marker, frames = send_marker(wg_lab, "pa", "pb", family)
    assert_plaintext(wg_lab, frames, family, marker)


# ---- live toggling, routes, MTU -----------------------------------------------------------------


def routing_state(lab: WGLab, node: str) -> dict[str, object]:
    with open_netns(lab.node_ns(node)) as ipr:
        return {
            "rule4": routing.rule_present(ipr, 4), "rule6": routing.rule_present(ipr, 6),
            "table4": routing.describe_table(ipr, 4), "table6": routing.describe_table(ipr, 6),
            "mtu4": routing.link_mtu(ipr, INTERFACES[4]), "mtu6": routing.link_mtu(ipr, INTERFACES[6]),
            "cali": routing.link_mtu(ipr, lab.plan.pods[0].interface) if node == "a" else None,
        }


def ping(lab: WGLab, src: str, dst: str, family: int, size: int = 56) -> bool:
    argv = ["ping", "-c1", "-W2", "-M", "do", "-s", str(size), str(lab.addr(dst, family))]
    return exec_in(lab.lab_id, f"default/{src}", argv, capture_output=True, timeout=30).returncode == 0


def test_toggling_moves_routes_onto_the_tunnel_and_back(wg_lab: WGLab) -> None:
    before = routing_state(wg_lab, "a")
    assert before == {"rule4": False, "rule6": False, "table4": [], "table6": [], "mtu4": None, "mtu6": None,
                      "cali": 1500}
    main_before = exec_in(wg_lab.lab_id, "node:a", ["ip", "route"], capture_output=True, text=True).stdout

    first = wg_lab.apply(BOTH)
    assert {t.action for t in first.tunnels} == {"enabled"}
    on = routing_state(wg_lab, "a")
    assert on == {
        "rule4": True, "rule6": True,
        "table4": ["10.244.1.0/24 dev ftwg0", "10.99.0.3/32 dev ftwg0", "unreachable 10.244.1.0/24",
                   "unreachable 10.99.0.3/32"],
        "table6": ["fd00:10:244:1::/64 dev ftwg0v6", "fd00:99::3/128 dev ftwg0v6", "unreachable fd00:10:244:1::/64",
                   "unreachable fd00:99::3/128"],
        "mtu4": 1440, "mtu6": 1420, "cali": 1420}
    # the main table (the lab's plain routes) is untouched: switching off is removing the rule
    assert exec_in(wg_lab.lab_id, "node:a", ["ip", "route"], capture_output=True, text=True).stdout == main_before
    for family in (4, 6):
        assert ping(wg_lab, "pa", "pb", family) and ping(wg_lab, "pb", "pa", family)
        assert ping(wg_lab, "pa", "pc", family, size=1420 - (28 if family == 4 else 48))  # full pod MTU, DF
    keys = {(s.node, s.family): s.public_key for s in lab_wireguard_status(wg_lab.lab_id)}
    again = wg_lab.apply(BOTH)
    assert {t.action for t in again.tunnels} == {"unchanged"}  # idempotent

    off = disable_lab(wg_lab.plan, wg_lab.keys)
    assert {t.action for t in off.tunnels} == {"disabled"}
    assert routing_state(wg_lab, "a") == before
    assert wireguard_pids(wg_lab.plan) == []
    for family in (4, 6):
        assert ping(wg_lab, "pa", "pb", family, size=1472 if family == 4 else 1452)  # plain, full MTU again
    assert {t.action for t in disable_lab(wg_lab.plan, wg_lab.keys).tunnels} == {"off"}

    wg_lab.apply(BOTH)  # on again: same identities (the key store keeps them)
    assert {(s.node, s.family): s.public_key for s in lab_wireguard_status(wg_lab.lab_id)} == keys
    assert all(ping(wg_lab, "pa", "pb", f) for f in (4, 6))


def test_a_dead_tunnel_fails_closed_until_the_next_reconcile(wg_lab: WGLab) -> None:
    wg_lab.apply(V4_ONLY)
    assert ping(wg_lab, "pa", "pb", 4)
    device = existing_device(wg_lab.node_ns("a"), "ftwg0")
    assert device is not None
    if device.kind == "userspace":
        pid = userspace.find_pid(wg_lab.node_ns("a"), "ftwg0")
        assert pid is not None
        os.kill(pid, 9)
        assert gone([pid])
    else:
        device.remove()
    with open_netns(wg_lab.node_ns("a")) as ipr:
        deadline = time.monotonic() + 10
        while routing.link_mtu(ipr, "ftwg0") is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # the kernel tears the TUN down once the daemon's descriptors are closed
        assert routing.describe_table(ipr, 4) == ["unreachable 10.244.1.0/24", "unreachable 10.99.0.3/32"]
    capture = Capture(wg_lab.lab_id, "a")
    assert not ping(wg_lab, "pa", "pb", 4)  # refused on node a: never sent in the clear
    assert not any(f.src in pod_addresses(wg_lab) or f.dst in pod_addresses(wg_lab) for f in capture.frames())
    a4 = next(s for s in lab_wireguard_status(wg_lab.lab_id) if (s.node, s.family) == ("a", 4))
    assert (a4.present, a4.routed, a4.enabled) == (False, True, False)
    result = wg_lab.apply(V4_ONLY)  # the next reconcile rebuilds it
    assert next(t for t in result.tunnels if (t.node, t.family) == ("a", 4)).action == "enabled"
    marker, frames = send_marker(wg_lab, "pa", "pb", 4)
    assert_only_wireguard(wg_lab, frames, 4, marker)


def test_status_counts_handshakes_and_bytes(wg_lab: WGLab) -> None:
    wg_lab.apply(V4_ONLY)
    assert ping(wg_lab, "pa", "pb", 4)
    statuses = {(s.node, s.family): s for s in lab_wireguard_status(wg_lab.lab_id)}
    a4 = statuses[("a", 4)]
    assert a4.enabled and a4.backend in ("kernel", "userspace") and a4.mtu == 1440 and a4.listen_port == 51820
    (peer,) = a4.peers
    assert peer.endpoint == f"{wg_lab.plan.node('b').next_hop(4)}:51820"
    assert peer.last_handshake is not None and peer.up(time.time())
    assert peer.rx_bytes > 0 and peer.tx_bytes > 0
    assert peer.public_key == statuses[("b", 4)].public_key
    assert not statuses[("a", 6)].present and not statuses[("a", 6)].desired


# ---- backend -----------------------------------------------------------------------------------


def kernel_has_wireguard(lab: WGLab) -> bool:
    from pyroute2.netlink.exceptions import NetlinkError

    with open_netns(lab.node_ns("a")) as ipr:
        try:
            ipr.link("add", ifname="ftwgprobe", kind="wireguard")
        except NetlinkError:
            return False
        ipr.link("del", index=ipr.link_lookup(ifname="ftwgprobe")[0])
        return True


def test_backend_is_detected_and_reported(wg_lab: WGLab) -> None:
    expected = "kernel" if kernel_has_wireguard(wg_lab) else "userspace"
    result = wg_lab.apply(V4_ONLY)
    on = [t for t in result.tunnels if t.family == 4]
    assert {t.backend for t in on} == {expected}
    if expected == "userspace":
        assert all("Unknown device type" in t.reason and "wireguard-go" in t.reason for t in on)
        assert "wireguard-go" in result.describe()
        # each node's configuration socket in its own directory: no collision between nodes
        socks = [userspace.socket_path(n.netns, "ftwg0") for n in wg_lab.plan.nodes]
        assert all(s.is_socket() for s in socks) and len(set(socks)) == 2
        assert not Path("/run/wireguard/ftwg0.sock").exists()  # the root namespace's directory stays empty


def test_forcing_kernel_wireguard_where_there_is_none_fails_in_the_clear(wg_lab: WGLab) -> None:
    if kernel_has_wireguard(wg_lab):
        pytest.skip("this kernel has WireGuard")
    result = apply_lab(V4_ONLY, wg_lab.plan, wg_lab.keys, mode="kernel")
    failed = [t for t in result.tunnels if t.family == 4]
    assert not result.ok and {t.action for t in failed} == {"failed"}
    assert all("Unknown device type" in (t.error or "") for t in failed)
    assert routing_state(wg_lab, "a")["rule4"] is False  # no rule: pod traffic keeps the plain route
    assert ping(wg_lab, "pa", "pb", 4)
    assert wireguard_pids(wg_lab.plan) == []


@pytest.mark.skipif(not Path("/usr/bin/wg").exists(), reason="wireguard-tools not installed")
def test_wg_tool_agrees_with_the_userspace_socket(wg_lab: WGLab) -> None:
    """`wg` is how a kernel device is configured (netlink); here it reaches wireguard-go through the
    node's socket directory, so the kernel path's text forms are checked against the real tool."""
    wg_lab.apply(V4_ONLY)
    device = existing_device(wg_lab.node_ns("a"), "ftwg0")
    assert device is not None
    if device.kind != "userspace":
        pytest.skip("kernel WireGuard here: the kernel path is covered by the other tests")
    ns = wg_lab.node_ns("a")

    def wg(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(userspace.netns_command(ns, ["wg", *args]), input=stdin, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    via_wg = parse_wg_dump(wg("show", "ftwg0", "dump"))
    via_socket = device.status()
    assert via_wg.public_key == via_socket.public_key and via_wg.listen_port == 51820
    assert [(p.public_key, p.endpoint, p.allowed_ips) for p in via_wg.peers] == \
        [(p.public_key, p.endpoint, p.allowed_ips) for p in via_socket.peers]
    # `wg set` arguments as the kernel path renders them take effect
    from enforcer.wireguard.device import DeviceConfig, PeerConfig

    (peer,) = via_socket.peers
    pair = wg_lab.keys.ensure("a", 4)
    import ipaddress

    want = DeviceConfig(pair.private, 51820, (PeerConfig(peer.public_key, peer.endpoint or "",
                                                         (*peer.allowed_ips, ipaddress.ip_network("10.98.0.0/24"))),))
    args = wg_set_args("ftwg0", want, via_wg)
    assert args is not None and args[:3] == ["set", "ftwg0", "peer"]
    wg(*args, stdin=pair.private + "\n")
    assert "10.98.0.0/24" in {str(n) for n in device.status().peers[0].allowed_ips}
    assert wg_set_args("ftwg0", want, parse_wg_dump(wg("show", "ftwg0", "dump"))) is None


def test_lab_down_kills_wireguard_go(lab_id: str, tmp_path: Path) -> None:
    plan = plan_lab(cluster(), lab_id)
    lab_up(plan)
    try:
        apply_lab(BOTH, plan, KeyStore(tmp_path))
        pids = wireguard_pids(plan)
        device = existing_device(plan.node("a").netns, "ftwg0")
        assert device is not None and len(pids) == (4 if device.kind == "userspace" else 0)
    finally:
        lab_down(lab_id)
    assert gone(pids)
    userspace.sweep()  # runtime directories of namespaces that are gone
    assert not any((userspace.RUN_DIR / n.netns).exists() for n in plan.nodes)


# ---- the datastore path: publication and the reconciler's hook ------------------------------------

CLUSTER_YAML = """\
apiVersion: v1
kind: Node
metadata: {name: a}
---
apiVersion: v1
kind: Node
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: pa, namespace: default}
spec: {nodeName: a}
---
apiVersion: v1
kind: Pod
metadata: {name: pb, namespace: default}
spec: {nodeName: b}
"""


def felix_yaml(v4: bool, v6: bool) -> str:
    return (f"apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\n"
            f"spec: {{wireguardEnabled: {str(v4).lower()}, wireguardEnabledV6: {str(v6).lower()}}}\n")


def test_reconciler_turns_wireguard_on_and_off_and_publishes_keys(lab_id: str, tmp_path: Path) -> None:
    from enforcer.nft.backend import KernelBackend
    from enforcer.nft.compiler import CompileOptions, compile_node
    from enforcer.reconcile import Reconciler

    ds = Datastore(tmp_path / "state")
    (tmp_path / "cluster.yaml").write_text(CLUSTER_YAML)
    (tmp_path / "felix.yaml").write_text(felix_yaml(True, True))
    ds.apply_documents([str(tmp_path / "cluster.yaml"), str(tmp_path / "felix.yaml")])
    plan = plan_lab(ds.resources(), lab_id)
    lab_up(plan)
    rec = Reconciler(ds, KernelBackend(lab_id, lambda n: netns_name(lab_id, f"node:{n}")), compile_node,
                     CompileOptions(), lambda: ["a", "b"], lab_id=lab_id)
    try:
        assert rec.reconcile().ok
        result = rec.wireguard
        assert isinstance(result, WireGuardResult) and result.ok, result
        assert sorted(result.published) == ["a", "b"] and result.unpublished == ()
        published = published_keys(ds)
        assert set(published) == {("a", 4), ("a", 6), ("b", 4), ("b", 6)}
        store = KeyStore.for_datastore(ds.path)
        assert published[("a", 4)] == store.ensure("a", 4).public
        key_file = store.path("a", 4)
        assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.is_relative_to(ds.path)
        statuses = lab_wireguard_status(lab_id, ds)
        assert all(s.enabled and s.desired and s.public_key == s.published_key for s in statuses)
        assert {p.node for s in statuses for p in s.peers} == {"a", "b"}  # peers named from published keys
        assert ping_pods(lab_id, plan)
        # reconciling again changes nothing, in the kernel or in the datastore
        revision = ds.revision
        rec.reconcile()
        assert rec.wireguard.ok and not rec.wireguard.changed and ds.revision == revision

        (tmp_path / "felix.yaml").write_text(felix_yaml(False, False))
        ds.apply_documents([str(tmp_path / "felix.yaml")])
        rec.reconcile()
        assert {t.action for t in rec.wireguard.tunnels} == {"disabled"}
        assert published_keys(ds) == {}
        (_, doc), = ds.object_documents("node", name="a")
        assert ANNOTATIONS[4] not in (doc["metadata"].get("annotations") or {})
        assert not any(s.present or s.routed for s in lab_wireguard_status(lab_id, ds))
        assert ping_pods(lab_id, plan)
        rec.reconcile()
        assert rec.wireguard is None  # off and nothing left: a no-op
    finally:
        lab_down(lab_id)
        userspace.sweep()


def ping_pods(lab_id: str, plan: LabPlan) -> bool:
    dst = [a for a in plan.pod("default", "pb").addresses]
    return all(exec_in(lab_id, "default/pa", ["ping", "-c1", "-W2", str(a)], capture_output=True,
                       timeout=30).returncode == 0 for a in dst)
