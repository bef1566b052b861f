"""The lab in the real kernel: connectivity, binding, status, idempotence, crash-safe teardown.

Runs as root (see the `kernel` marker in conftest.py). Most tests share one module-scoped lab;
the lifecycle tests build their own with the `lab_id` fixture.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from enforcer.lab import (
    LabPlan,
    endpoint_interface,
    exec_in,
    lab_down,
    lab_status,
    lab_up,
    plan_lab,
    popen_in,
)
from enforcer.lab.netns import remove_netns
from enforcer.lab.state import lab_namespaces, netns_pids
from enforcer.model import ExternalHost, IPAddress, Node, Pod, ResourceSet

pytestmark = pytest.mark.kernel

ip = ipaddress.ip_address
ROOT = Path(__file__).resolve().parents[1]
# Root-namespace sysctls the lab writes inside its namespaces: they must not move here.
ROOT_SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/default/accept_dad",
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/all/proxy_arp",
    "net/ipv6/conf/all/disable_ipv6",
)


def cluster() -> ResourceSet:
    """2 nodes x 2 pods + 1 outside host with two IPv4 addresses and one IPv6 address."""
    return ResourceSet(
        nodes=(Node("n1"), Node("n2", addresses=(ip("172.31.0.20"),))),
        pods=(
            Pod("a", "default", node="n1"),
            Pod("b", "default", node="n1"),
            Pod("c", "prod", node="n2"),
            Pod("d", "prod", node="n2", ips=(ip("10.99.0.4"), ip("fd00:99::4"))),
        ),
        external_hosts=(ExternalHost("web", (ip("203.0.113.10"), ip("203.0.113.11"), ip("2001:db8::10"))),),
    )


def root_snapshot() -> dict[str, str]:
    """What the lab must never change in the root namespace."""
    snap = {
        " ".join(argv): subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
        for argv in (["ip", "-o", "link"], ["ip", "route"], ["ip", "-6", "route"], ["ip", "rule"])
    }
    for key in ROOT_SYSCTLS:
        snap[key] = Path("/proc/sys", key).read_text()
    return snap


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_id = "t" + secrets.token_hex(3)[:5]
    plan = plan_lab(cluster(), lab_id)
    try:
        lab_up(plan)
        yield plan
    finally:
        lab_down(lab_id)


def ping(lab_id: str, src: str, dst: IPAddress) -> subprocess.CompletedProcess[str]:
    return exec_in(
        lab_id, src, ["ping", "-n", "-q", "-c", "1", "-W", "2", str(dst)], capture_output=True, text=True, timeout=15
    )


def pairs(plan: LabPlan, kind: str) -> list[tuple[str, str]]:
    """(source target, destination target) pairs of one connectivity category."""
    pods = [(p.key, p.node) for p in plan.pods]
    nodes = [f"node:{n.name}" for n in plan.nodes]
    exts = [f"external:{e.name}" for e in plan.externals]
    if kind == "pod-pod-same-node":
        return [(a, b) for a, na in pods for b, nb in pods if a != b and na == nb]
    if kind == "pod-pod-across-nodes":
        return [(a, b) for a, na in pods for b, nb in pods if na != nb]
    if kind == "pod-external":
        return [(a, e) for a, _ in pods for e in exts]
    if kind == "external-pod":
        return [(e, a) for a, _ in pods for e in exts]
    if kind == "node-node":
        return [(a, b) for a in nodes for b in nodes if a != b]
    if kind == "node-pod":
        return [(n, a) for n in nodes for a, _ in pods]
    if kind == "pod-node":
        return [(a, n) for n in nodes for a, _ in pods]
    if kind == "node-external":
        return [(n, e) for n in nodes for e in exts]
    raise AssertionError(kind)


CATEGORIES = [
    "pod-pod-same-node",
    "pod-pod-across-nodes",
    "pod-external",
    "external-pod",
    "node-node",
    "node-pod",
    "pod-node",
    "node-external",
]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", CATEGORIES)
def test_ping(lab: LabPlan, kind: str, version: int) -> None:
    jobs = [
        (src, dst, address)
        for src, dst in pairs(lab, kind)
        for address in lab.addresses(dst)
        if address.version == version
    ]
    assert jobs, "the test cluster must have this kind of pair"
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda job: (job, ping(lab.lab_id, job[0], job[2])), jobs))
    failures = [
        f"{src} -> {dst} ({address}): {r.stdout.strip()} {r.stderr.strip()}"
        for (src, dst, address), r in done
        if r.returncode
    ]
    assert not failures, "\n".join(failures)


SERVER = textwrap.dedent(
    """
    import socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.settimeout(10)
    srv.bind((sys.argv[1], 0))
    srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, peer = srv.accept()
    conn.settimeout(10)
    data = conn.recv(100)
    conn.sendall(data + b" from " + peer[0].encode())
    conn.close()
    """
)
CLIENT = textwrap.dedent(
    """
    import socket, sys
    dst, port, src = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    c = socket.socket(family, socket.SOCK_STREAM)
    c.settimeout(5)
    if src:
        c.bind((src, 0))
    c.connect((dst, port))
    c.sendall(b"hello")
    print(c.recv(200).decode())
    """
)


def tcp_exchange(lab_id: str, server: str, server_addr: IPAddress, client: str, source: str = "") -> str:
    """Listen in `server` on `server_addr`, connect from `client` (from `source` if given)."""
    proc = popen_in(lab_id, server, [sys.executable, "-c", SERVER, str(server_addr)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), f"server did not start (exit {proc.poll()})"
        done = exec_in(
            lab_id,
            client,
            [sys.executable, "-c", CLIENT, str(server_addr), port, source],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, done.stderr
        proc.wait(timeout=10)
        return done.stdout.strip()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_across_nodes(lab: LabPlan, version: int) -> None:
    server = lab.pod("prod", "c")
    client = lab.pod("default", "a")
    address = next(a for a in server.addresses if a.version == version)
    source = next(a for a in client.addresses if a.version == version)
    assert tcp_exchange(lab.lab_id, server.key, address, client.key) == f"hello from {source}"


@pytest.mark.parametrize("source", ["203.0.113.11", "203.0.113.10", "2001:db8::10"])
def test_exec_in_binds_a_chosen_source_address(lab: LabPlan, source: str) -> None:
    pod = lab.pod("prod", "d")  # explicit Pod.ips outside the node's pod CIDR
    address = next(a for a in pod.addresses if a.version == ip(source).version)
    assert tcp_exchange(lab.lab_id, pod.key, address, "external:web", source) == f"hello from {source}"


def test_every_target_can_bind_each_of_its_addresses(lab: LabPlan) -> None:
    code = textwrap.dedent(
        """
        import socket, sys
        for a in sys.argv[1:]:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            socket.create_server((a, 0), family=family).close()
        """
    )
    targets = (
        [p.key for p in lab.pods]
        + [f"node:{n.name}" for n in lab.nodes]
        + [f"external:{e.name}" for e in lab.externals]
    )
    for target in targets:
        done = exec_in(
            lab.lab_id,
            target,
            [sys.executable, "-c", code, *map(str, lab.addresses(target))],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert done.returncode == 0, f"{target}: {done.stderr}"


def test_status_lists_everything(lab: LabPlan) -> None:
    status = lab_status(lab.lab_id)
    assert status.missing(lab) == ()
    assert status.stale(lab) == ()
    assert set(status.targets) == {str(spec.target) for spec in lab.namespaces}
    for item in (*lab.nodes, *lab.pods, *lab.externals):
        assert set(status.addresses(item.target)) == set(item.addresses)
    node = status.netns("node:n2")
    assert node is not None
    cali = node.interface(endpoint_interface(lab, "prod/c"))
    assert cali is not None and cali.up and cali.mac == "ee:ee:ee:ee:ee:ee"
    underlay = status.netns("underlay")
    assert underlay is not None
    assert {i.name for i in underlay.interfaces if i.master == "ftbr0"} == {
        i.name for i in lab.namespaces[0].interfaces if i.master == "ftbr0"
    }
    assert "prod/c" in status.describe()
    assert status.to_dict()["lab_id"] == lab.lab_id


def test_lab_sysctls_are_set_inside(lab: LabPlan) -> None:
    read = "import sys\nprint(' '.join(open('/proc/sys/' + k).read().strip() for k in sys.argv[1:]))"
    cali = endpoint_interface(lab, "default/a")
    keys = [
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        f"net/ipv4/conf/{cali}/proxy_arp",
        f"net/ipv6/conf/{cali}/proxy_ndp",
    ]
    done = exec_in(
        lab.lab_id,
        "node:n1",
        [sys.executable, "-c", read, *keys],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stdout.split() == ["1", "1", "1", "1"]
    done = exec_in(
        lab.lab_id,
        "default/a",
        [sys.executable, "-c", read, *keys[:2]],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stdout.split() == ["0", "0"]


def test_nothing_routes_out_of_the_lab(lab: LabPlan) -> None:
    """Nodes, outside hosts and the underlay have no route to the machine's own addresses."""
    out = subprocess.run(["ip", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=10)
    machine = {ip(line.split()[3].split("/")[0]) for line in out.stdout.splitlines()}
    lab_addresses = {a for item in (*lab.nodes, *lab.pods, *lab.externals) for a in item.addresses}
    probes = sorted(machine - lab_addresses, key=str) + [ip("8.8.8.8"), ip("2001:4860:4860::8888")]
    for spec in lab.namespaces:
        if spec.kind == "pod":
            continue  # pods route everything to their node
        for probe in probes:
            argv = ["ip", "route", "get", str(probe)]
            done = exec_in(lab.lab_id, spec.target, argv, capture_output=True, text=True, timeout=10)
            assert done.returncode != 0, f"{spec.name} has a route to {probe}: {done.stdout}"


# --------------------------------------------------------------------------------------------
# Lifecycle: each test builds its own lab


def small() -> ResourceSet:
    return ResourceSet(
        nodes=(Node("n1"), Node("n2")),
        pods=(Pod("a", "default", node="n1"), Pod("c", "prod", node="n2")),
        external_hosts=(ExternalHost("web", (ip("198.51.100.7"), ip("2001:db8::7"))),),
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_up_down_leave_the_root_namespace_alone(lab_id: str) -> None:
    before = root_snapshot()
    plan = plan_lab(small(), lab_id)
    status = lab_up(plan)
    assert status.missing(plan) == ()
    assert ping(lab_id, "default/a", plan.pod("prod", "c").addresses[1]).returncode == 0
    assert lab_down(lab_id) == len(plan.namespaces)
    assert lab_namespaces(lab_id) == []
    assert lab_down(lab_id) == 0  # twice is fine
    assert not lab_status(lab_id).exists
    assert root_snapshot() == before


def test_up_is_idempotent_repairs_and_prunes(lab_id: str) -> None:
    plan = plan_lab(small(), lab_id)
    first = lab_up(plan)
    assert lab_up(plan) == first  # nothing recreated: same links, addresses, routes

    # Damage it: a pod's veth, a node's address, a route; an extra namespace from an older plan.
    pod = plan.pod("prod", "c")
    node = plan.node("n2")
    exec_in(lab_id, "node:n2", ["ip", "link", "del", pod.interface], check=True, timeout=10)
    exec_in(lab_id, "node:n2", ["ip", "addr", "del", f"{node.addresses[0]}/32", "dev", "eth0"], check=True, timeout=10)
    exec_in(lab_id, "external:web", ["ip", "route", "del", "10.244.0.0/24"], check=True, timeout=10)
    exec_in(
        lab_id,
        "external:web",
        ["ip", "route", "add", "10.77.0.0/16", "dev", "eth0", "proto", "static"],
        check=True,
        timeout=10,
    )
    bigger = plan_lab(replace(small(), pods=(*small().pods, Pod("x", "default", node="n1"))), lab_id)
    lab_up(bigger)
    assert len(lab_status(lab_id).missing(plan)) == 0 and lab_status(lab_id).stale(plan) == (
        "ft-" + lab_id + "-pod-default.x",
    )

    status = lab_up(plan)
    assert status.missing(plan) == () and status.stale(plan) == ()
    web = status.netns("external:web")
    assert web is not None and "10.77.0.0/16 dev eth0 scope link" not in web.routes
    assert ping(lab_id, "external:web", pod.addresses[0]).returncode == 0
    assert ping(lab_id, "default/a", pod.addresses[1]).returncode == 0


def test_down_after_a_crash_needs_no_plan(lab_id: str) -> None:
    """A process builds a lab, starts a long command inside it, and dies without cleaning up."""
    script = textwrap.dedent(
        f"""
        import os, subprocess
        from tests.test_lab_kernel import small
        from enforcer.lab import lab_up, plan_lab, command_in
        lab_up(plan_lab(small(), {lab_id!r}))
        subprocess.Popen(command_in({lab_id!r}, "default/a", ["sleep", "60"]), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os._exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    pod_ns = f"ft-{lab_id}-pod-default.a"
    assert wait_for(lambda: bool(netns_pids(pod_ns))), "the sleep inside the lab did not start"
    sleeper = netns_pids(pod_ns)
    names = lab_namespaces(lab_id)
    assert len(names) == 6

    assert lab_down(lab_id) == 6
    assert lab_namespaces(lab_id) == [] and lab_down(lab_id) == 0
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in sleeper)), "lab process survived down"


def test_down_removes_a_half_built_lab(lab_id: str) -> None:
    from enforcer.lab.netns import create_netns

    create_netns(f"ft-{lab_id}-underlay")
    create_netns(f"ft-{lab_id}-node-n1")
    assert remove_netns(f"ft-{lab_id}-node-n1")
    assert not remove_netns(f"ft-{lab_id}-node-n1")
    assert lab_down(lab_id) == 1
