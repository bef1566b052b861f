"""The lab plan (no root): names, addresses, topology, routes, and the safety guards."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import sys
from typing import Any

import pytest

from enforcer.lab import (
    LabError,
    LabPlan,
    Route,
    Target,
    cali_name,
    endpoint_interface,
    lab_resources,
    netns_name,
    parse_target,
    plan_lab,
)
from enforcer.lab.names import lab_id_of_netns, port_name, target_of_netns
from enforcer.lab.spec import GATEWAY_V4, GATEWAY_V6, host_interface
from enforcer.lab.state import InterfaceStatus, LabStatus, NetnsStatus, format_route
from enforcer.model import ExternalHost, Node, Pod, ResourceSet

ip = ipaddress.ip_address
net = ipaddress.ip_network


def cluster() -> ResourceSet:
    """Two nodes (one with declared addresses and an IPv4 pod CIDR), four pods, one outside host."""
    return ResourceSet(
        nodes=(
            Node("n1", addresses=(ip("172.31.0.11"),), pod_cidrs=(net("10.10.1.0/24"),)),
            Node("n2"),
        ),
        pods=(
            Pod("a", "default", node="n1"),
            Pod("b", "default", node="n1", ips=(ip("10.10.1.50"), ip("fd00:99::50"))),
            Pod("c", "prod", node="n2"),
            Pod("d", "prod", node="n2"),
        ),
        external_hosts=(ExternalHost("web", (ip("203.0.113.10"), ip("203.0.113.11"), ip("2001:db8::10"))),),
    )


@pytest.fixture
def plan() -> LabPlan:
    return plan_lab(cluster(), "t1")


def routes(plan: LabPlan, target: str) -> set[str]:
    return {str(r) for r in plan.netns(netns_name(plan.lab_id, target)).routes}


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("target", "netns"),
    [
        ("node:n1", "ft-lab-node-n1"),
        ("external:web", "ft-lab-ext-web"),
        ("ext:web", "ft-lab-ext-web"),
        ("default/a", "ft-lab-pod-default.a"),
        ("kube-system/coredns-5d.x", "ft-lab-pod-kube-system.coredns-5d.x"),
        ("underlay", "ft-lab-underlay"),
    ],
)
def test_netns_names_round_trip(target: str, netns: str) -> None:
    assert netns_name("lab", target) == netns
    assert target_of_netns("lab", netns) == parse_target(target)
    assert lab_id_of_netns(netns) == "lab"


@pytest.mark.parametrize("lab_id", ["", "a-b", "LAB", "x" * 13, "la b", "../x"])
def test_bad_lab_ids_are_rejected(lab_id: str) -> None:
    with pytest.raises(LabError, match="invalid lab id"):
        netns_name(lab_id, "node:n1")


@pytest.mark.parametrize("target", ["n1", "node:", "pod:x/y", "Default/a", "a/", "node:a/b", "node:../x"])
def test_bad_targets_are_rejected(target: str) -> None:
    with pytest.raises(LabError):
        parse_target(target)


def test_prefixes_of_two_labs_never_overlap() -> None:
    assert target_of_netns("a", netns_name("ab", "node:n1")) is None
    assert target_of_netns("ab", netns_name("a", "node:n1")) is None
    assert target_of_netns("lab", "ft-lab-weird") is None
    assert lab_id_of_netns("other-ns") is None


def test_cali_name_is_calicos() -> None:
    expected = "cali" + hashlib.sha1(b"default.frontend").hexdigest()[:11]
    assert cali_name("default", "frontend") == expected
    assert len(expected) == 15


# --------------------------------------------------------------------------------------------
# Addresses


def test_addresses_follow_the_model_then_the_defaults(plan: LabPlan) -> None:
    n1, n2 = plan.node("n1"), plan.node("n2")
    assert n1.addresses == (ip("172.31.0.11"), ip("fd00:172:31::1"))  # IPv6 added: dual-stack underlay
    assert n2.addresses == (ip("172.31.0.1"), ip("fd00:172:31::2"))  # .11 is taken by n1
    assert n1.pod_cidrs == (net("10.10.1.0/24"), net("fd00:10:244::/64"))
    assert n2.pod_cidrs == (net("10.244.1.0/24"), net("fd00:10:244:1::/64"))
    assert plan.pod("default", "a").addresses == (ip("10.10.1.1"), ip("fd00:10:244::1"))
    assert plan.pod("default", "b").addresses == (ip("10.10.1.50"), ip("fd00:99::50"))  # exactly Pod.ips
    assert plan.pod("prod", "c").addresses == (ip("10.244.1.1"), ip("fd00:10:244:1::1"))
    assert plan.pod("prod", "d").addresses == (ip("10.244.1.2"), ip("fd00:10:244:1::2"))
    assert plan.external("web").addresses == cluster().external_hosts[0].addresses
    assert plan.addresses("prod/c") == plan.pod("prod", "c").addresses
    assert plan.addresses("underlay") == ()


def test_assigned_addresses_skip_declared_ones() -> None:
    resources = ResourceSet(
        nodes=(Node("n1"),),
        pods=(Pod("x", "default", node="n1", ips=(ip("10.244.0.1"),)), Pod("y", "default", node="n1")),
    )
    assert plan_lab(resources).pod("default", "y").addresses[0] == ip("10.244.0.2")


def test_duplicates_are_errors() -> None:
    same = ResourceSet(nodes=(Node("n1"),), external_hosts=(ExternalHost("e", (ip("10.244.0.1"),)),))
    dup_ip = ResourceSet(
        nodes=same.nodes,
        pods=(Pod("p", "default", node="n1", ips=(ip("10.244.0.1"),)),),
        external_hosts=same.external_hosts,
    )
    with pytest.raises(LabError, match="used by both"):
        plan_lab(dup_ip)
    with pytest.raises(LabError, match="declared twice"):
        plan_lab(ResourceSet(nodes=(Node("n1"), Node("n1"))))
    with pytest.raises(LabError, match="declared twice"):
        plan_lab(ResourceSet(pods=(Pod("p", "default", node="n"), Pod("p", "default", node="n"))))


def test_unscheduled_pods_are_left_out_and_undeclared_nodes_made() -> None:
    plan = plan_lab(ResourceSet(pods=(Pod("p", "default"), Pod("q", "default", node="w1"))))
    assert [p.key for p in plan.pods] == ["default/q"]
    assert [n.name for n in plan.nodes] == ["w1"] and plan.nodes[0].implicit
    assert any("default/p has no node" in w for w in plan.warnings)
    assert any("'w1' is not declared" in w for w in plan.warnings)


def test_lab_resources_carries_the_lab_addresses(plan: LabPlan) -> None:
    resources = lab_resources(cluster(), plan)
    assert [p.ips for p in resources.pods] == [p.addresses for p in plan.pods]
    assert [n.addresses for n in resources.nodes] == [n.addresses for n in plan.nodes]
    assert resources.external_hosts == cluster().external_hosts


# --------------------------------------------------------------------------------------------
# Topology


def test_every_namespace_and_interface_is_prefixed_and_short(plan: LabPlan) -> None:
    assert all(spec.name.startswith("ft-t1-") for spec in plan.namespaces)
    names = [iface.name for spec in plan.namespaces for iface in spec.interfaces]
    assert all(len(n) <= 15 for n in names)
    assert all(n.startswith(("ft", "cali")) or n == "eth0" for n in names)
    for veth in plan.veths:  # both ends in lab namespaces: nothing in the root namespace
        assert veth.netns.startswith("ft-t1-") and veth.peer_netns.startswith("ft-t1-")
    planned = {(s.name, i.name) for s in plan.namespaces for i in s.interfaces}
    for veth in plan.veths:
        assert {(veth.netns, veth.name), (veth.peer_netns, veth.peer_name)} <= planned


def test_kinds_and_order(plan: LabPlan) -> None:
    assert [s.kind for s in plan.namespaces] == ["underlay", "node", "node", "ext", "pod", "pod", "pod", "pod"]
    underlay = plan.namespaces[0]
    ports = {port_name("node", "n1"), port_name("node", "n2"), port_name("ext", "web")}
    assert {i.name for i in underlay.interfaces if i.master == "ftbr0"} == ports


def test_pods_hang_off_their_node_like_calico(plan: LabPlan) -> None:
    pod = plan.pod("prod", "c")
    assert endpoint_interface(plan, "prod/c") == pod.interface == cali_name("prod", "c")
    assert endpoint_interface(plan, Pod("c", "prod")) == pod.interface
    veth = next(v for v in plan.veths if v.netns == pod.netns)
    assert (veth.name, veth.peer_netns, veth.peer_name) == ("eth0", plan.node("n2").netns, pod.interface)
    assert veth.peer_mac == "ee:ee:ee:ee:ee:ee"
    spec = plan.netns(pod.netns)
    assert spec.interfaces[0].addresses == tuple(host_interface(a) for a in pod.addresses)
    assert routes(plan, "prod/c") == {
        f"{GATEWAY_V4} dev eth0 scope link",
        f"default via {GATEWAY_V4} dev eth0",
        f"default via {GATEWAY_V6} dev eth0",
    }
    cali = next(i for i in plan.netns(plan.node("n2").netns).interfaces if i.name == pod.interface)
    sysctls = dict(cali.sysctls)
    assert sysctls[f"net/ipv4/conf/{pod.interface}/proxy_arp"] == "1"
    assert sysctls[f"net/ipv4/neigh/{pod.interface}/proxy_delay"] == "0"
    assert sysctls[f"net/ipv6/conf/{pod.interface}/proxy_ndp"] == "1"
    with pytest.raises(LabError):
        endpoint_interface(plan, "default/nope")


def test_node_routes(plan: LabPlan) -> None:
    n1 = routes(plan, "node:n1")
    a, b = plan.pod("default", "a"), plan.pod("default", "b")
    assert {f"{x} dev {p.interface} scope link" for p in (a, b) for x in p.addresses if x.version == 4} <= n1
    assert {f"{x} dev {p.interface}" for p in (a, b) for x in p.addresses if x.version == 6} <= n1
    assert {
        "172.31.0.1 dev eth0 scope link",  # n2, on-link
        "fd00:172:31::2 dev eth0",
        "203.0.113.10 dev eth0 scope link",  # the outside host, on-link
        "203.0.113.11 dev eth0 scope link",
        "2001:db8::10 dev eth0",
        "10.244.1.0/24 via 172.31.0.1 dev eth0",  # n2's pods, like BGP
        "fd00:10:244:1::/64 via fd00:172:31::2 dev eth0",
        "blackhole 10.10.1.0/24",
        "blackhole fd00:10:244::/64",
    } <= n1
    n2 = routes(plan, "node:n2")
    assert {
        "10.10.1.0/24 via 172.31.0.11 dev eth0",
        "fd00:10:244::/64 via fd00:172:31::1 dev eth0",
        "fd00:99::50 via fd00:172:31::1 dev eth0",  # b's address outside n1's CIDRs
    } <= n2
    assert not any(r.startswith("default") for r in n1 | n2)  # nothing leads out of the lab


def test_external_routes(plan: LabPlan) -> None:
    assert routes(plan, "external:web") == {
        "172.31.0.11 dev eth0 scope link",
        "fd00:172:31::1 dev eth0",
        "172.31.0.1 dev eth0 scope link",
        "fd00:172:31::2 dev eth0",
        "10.10.1.0/24 via 172.31.0.11 dev eth0",
        "fd00:10:244::/64 via fd00:172:31::1 dev eth0",
        "fd00:99::50 via fd00:172:31::1 dev eth0",
        "10.244.1.0/24 via 172.31.0.1 dev eth0",
        "fd00:10:244:1::/64 via fd00:172:31::2 dev eth0",
    }


def test_v4_only_external_host_gets_no_v6_routes() -> None:
    resources = ResourceSet(nodes=(Node("n1"),), external_hosts=(ExternalHost("e", (ip("192.0.2.7"),)),))
    plan = plan_lab(resources)
    assert all(r.version == 4 for r in plan.netns("ft-lab-ext-e").routes)


def test_on_link_routes_come_before_routes_through_them(plan: LabPlan) -> None:
    for spec in plan.namespaces:
        onlink = {r.dst.network_address for r in spec.routes if r.via is None and r.type == "unicast"}
        for i, route in enumerate(spec.routes):
            if route.via is not None and not route.via.is_link_local:
                earlier = {r.dst.network_address for r in spec.routes[:i] if r.via is None}
                assert route.via in onlink and route.via in earlier, (spec.name, str(route))


def test_nodes_forward_and_others_do_not(plan: LabPlan) -> None:
    for spec in plan.namespaces:
        sysctls = dict(spec.sysctls)
        expected = "1" if spec.kind == "node" else "0"
        assert sysctls["net/ipv4/ip_forward"] == sysctls["net/ipv6/conf/all/forwarding"] == expected
        assert sysctls["net/ipv6/conf/default/accept_dad"] == "0"
        assert all(key.startswith("net/") for key in sysctls)


def test_plan_is_deterministic_and_described(plan: LabPlan) -> None:
    assert plan_lab(cluster(), "t1") == plan
    text = plan.describe()
    assert text.startswith("lab t1\nnetns ft-t1-underlay (underlay)\n")
    assert "veth ft-t1-pod-prod.c:eth0 <-> ft-t1-node-n2:" + cali_name("prod", "c") in text
    summary = plan.to_dict()
    assert summary["pods"][0] == {
        "namespace": "default",
        "name": "a",
        "node": "n1",
        "netns": "ft-t1-pod-default.a",
        "interface": cali_name("default", "a"),
        "addresses": ["10.10.1.1", "fd00:10:244::1"],
    }


def test_describe_golden_for_one_pod() -> None:
    plan = plan_lab(ResourceSet(nodes=(Node("n"),), pods=(Pod("p", "ns", node="n"),)), "g")
    cali = cali_name("ns", "p")
    pod_part = plan.describe().split("netns ft-g-pod-ns.p (ns/p)\n")[1]
    assert pod_part.splitlines()[:4] == [
        "  link eth0 10.244.0.1/32 fd00:10:244::1/128",
        "  route 169.254.1.1 dev eth0 scope link",
        "  route default via 169.254.1.1 dev eth0",
        "  route default via fe80::ecee:eeff:feee:eeee dev eth0",
    ]
    assert f"veth ft-g-pod-ns.p:eth0 <-> ft-g-node-n:{cali}" in pod_part


# --------------------------------------------------------------------------------------------
# Status (pure parts)


def _msg(family: int, dst: str | None, dst_len: int, **kw: Any) -> dict[str, Any]:
    return {"family": family, "dst": dst, "dst_len": dst_len, "type": 1, "scope": 0, **kw}


@pytest.mark.parametrize(
    ("msg", "route"),
    [
        (_msg(2, "10.0.0.2", 32, oif=2, scope=253), Route(net("10.0.0.2/32"), dev="eth0")),
        (_msg(2, None, 0, oif=2, gateway="169.254.1.1"), Route(net("0.0.0.0/0"), dev="eth0", via=GATEWAY_V4)),
        (_msg(10, "fd00::", 64, oif=2, gateway="fd00:1::1"), Route(net("fd00::/64"), dev="eth0", via=ip("fd00:1::1"))),
        (_msg(10, "fd00::5", 128, oif=2), Route(net("fd00::5/128"), dev="eth0")),
        (_msg(2, "10.244.0.0", 24, type=6), Route(net("10.244.0.0/24"), type="blackhole")),
    ],
)
def test_kernel_routes_read_back_like_planned_ones(msg: dict[str, Any], route: Route) -> None:
    assert format_route(msg, {2: "eth0"}) == str(route)


def test_missing_reports_what_the_kernel_lacks(plan: LabPlan) -> None:
    spec = plan.netns("ft-t1-ext-web")
    eth0 = InterfaceStatus("eth0", "veth", True, None, None, spec.interfaces[0].addresses[:1])
    ns = NetnsStatus(spec.name, Target("ext", "web"), (eth0,), tuple(str(r) for r in spec.routes[1:]), ())
    missing = LabStatus("t1", (ns,)).missing(plan)
    assert "namespace ft-t1-underlay" in missing
    assert f"ft-t1-ext-web: route {spec.routes[0]}" in missing
    assert "ft-t1-ext-web: 203.0.113.11/32 on eth0" in missing
    assert not any(m.startswith("ft-t1-ext-web: 203.0.113.10") for m in missing)


# --------------------------------------------------------------------------------------------
# Guards that keep the lab away from the root namespace (no root needed to check them)


def test_kernel_helpers_refuse_non_lab_namespaces() -> None:
    from enforcer.lab.kernel import in_netns, open_netns
    from enforcer.lab.netns import create_netns, remove_netns, write_sysctls

    for call in (
        lambda: in_netns("default", lambda: None),
        lambda: open_netns("x").__enter__(),
        lambda: create_netns("myns"),
        lambda: remove_netns("../ft-x"),
        lambda: write_sysctls("ft-t1-node-n1", (("kernel/panic", "1"),)),
        lambda: write_sysctls("ft-t1-node-n1", (("net/../kernel/panic", "1"),)),
    ):
        with pytest.raises(LabError, match="refusing"):
            call()


def test_plan_does_not_load_the_kernel_half() -> None:
    code = (
        "import sys, enforcer.lab\n"
        "from enforcer.lab import plan_lab\n"
        "from enforcer.model import ResourceSet\n"
        "plan_lab(ResourceSet())\n"
        "assert 'pyroute2' not in sys.modules, 'pyroute2 loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
