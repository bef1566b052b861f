"""Cluster state (v1 Namespace, ServiceAccount, Pod, Node) and the lab's ExternalHost."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from enforcer.loader import LoadError, load_paths, load_text
from enforcer.model import ExternalHost, NamedPortDef, Namespace, Node, Origin, Pod, ResourceSet, ServiceAccount

GOOD = Path(__file__).parent / "fixtures" / "good"
FILE = str(GOOD / "cluster.yaml")
ip = ipaddress.ip_address
net = ipaddress.ip_network


def at(line: int) -> Origin:
    return Origin(FILE, line)


@pytest.fixture(scope="module")
def resources() -> ResourceSet:
    return load_paths([FILE])


def test_namespace_ignores_server_fields(resources: ResourceSet) -> None:
    assert resources.namespaces == (
        Namespace("prod", (("env", "prod"), ("kubernetes.io/metadata.name", "prod")), at(1)),
    )


def test_service_account(resources: ResourceSet) -> None:
    assert resources.service_accounts == (ServiceAccount("api", "prod", (("team", "backend"),), at(17)),)


def test_pod_reads_what_policy_needs(resources: ResourceSet) -> None:
    assert resources.pods[0] == Pod(
        name="api-7d9f",
        namespace="prod",
        labels=(("app", "api"), ("pod-template-hash", "7d9f")),
        node="node1",
        service_account="api",
        ips=(ip("10.244.1.5"), ip("fd00:10:244:1::5")),  # podIPs wins over podIP
        ports=(
            NamedPortDef("http", 6, 8080),  # protocol defaults to TCP
            NamedPortDef("metrics", 6, 9090),
            NamedPortDef("dns", 17, 53),  # unnamed ports are not named ports
            NamedPortDef("admin", 132, 15000),
        ),
        origin=at(27),
    )


def test_pod_defaults(resources: ResourceSet) -> None:
    fresh = resources.pods[1]
    assert (fresh.name, fresh.node, fresh.service_account, fresh.ips) == ("fresh", None, "default", (ip("10.244.1.6"),))


def test_host_networked_and_finished_pods_have_no_addresses(resources: ResourceSet) -> None:
    by_name = {p.name: p for p in resources.pods}
    assert by_name["host-agent"] == Pod("host-agent", "kube-system", node="node1", origin=at(71))
    assert by_name["done-job"].ips == ()


def test_nodes(resources: ResourceSet) -> None:
    assert resources.nodes == (
        Node(
            "node1",
            (("kubernetes.io/hostname", "node1"), ("node-role.kubernetes.io/control-plane", "")),
            (ip("192.168.1.10"), ip("203.0.113.10"), ip("fd00::10")),  # InternalIP and ExternalIP only
            (net("10.244.1.0/24"), net("fd00:10:244:1::/64")),  # podCIDRs wins over podCIDR
            at(91),
        ),
        Node("node2", pod_cidrs=(net("10.244.2.0/24"),), origin=at(108)),
    )


def test_external_host() -> None:
    file = str(GOOD / "lab.yaml")
    assert load_paths([file]).external_hosts == (
        ExternalHost(
            "partner-api",
            tuple(ip(a) for a in ("198.51.100.7", "203.0.113.9", "192.0.2.1", "2001:db8::7", "fd12:3456::1")),
            Origin(file, 1),
        ),
    )


def test_cluster_kinds_check_metadata_strictly() -> None:
    text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n  labels: {'a b': c}\nspec: {anything: [goes]}\n"
    with pytest.raises(LoadError) as info:
        load_text(text, "node.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (5, 'metadata.labels["a b"]')
