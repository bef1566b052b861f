"""The inline cluster the evaluator semantics tests share, the helpers they use, and the checks
that the cluster itself is what those tests assume.

Article-style: two nodes (`node-a`, `node-b`), two namespaces (`prod`, `dev`) with pods on both
nodes, and outside hosts in documentation ranges. No host endpoints and no policy: each test
adds the resources it is about with `cluster(...)`.
"""

from __future__ import annotations

from enforcer.evaluate import Decision, Evaluator, Hit
from enforcer.loader import load_text
from enforcer.resolve import ClusterState
from flowtui.cli.policy import build_flow, parse_protocol

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod, team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web-sa, namespace: prod, labels: {role: frontend}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api-sa, namespace: prod, labels: {role: backend}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {role: worker}}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status:
  addresses:
  - {type: InternalIP, address: 172.31.0.11}
  - {type: InternalIP, address: "fd00:172:31::11"}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {role: edge}}
spec: {podCIDRs: [10.244.2.0/24, "fd00:10:244:2::/64"]}
status:
  addresses:
  - {type: InternalIP, address: 172.31.0.12}
  - {type: InternalIP, address: "fd00:172:31::12"}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  nodeName: node-a
  serviceAccountName: web-sa
  containers:
  - {name: c, image: x, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]}
status:
  podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec:
  nodeName: node-b
  serviceAccountName: api-sa
  containers:
  - {name: c, image: x, ports: [{name: http, containerPort: 9000}]}
status:
  podIPs: [{ip: 10.244.2.10}, {ip: "fd00:10:244:2::10"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  nodeName: node-b
  containers: [{name: c, image: x, ports: [{name: pg, containerPort: 5432}]}]
status:
  podIPs: [{ip: 10.244.2.11}, {ip: "fd00:10:244:2::11"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]
status:
  podIPs: [{ip: 10.244.1.20}, {ip: "fd00:10:244:1::20"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: dev, labels: {app: db}}
spec:
  nodeName: node-b
  containers: [{name: c, image: x}]
status:
  podIPs: [{ip: 10.244.2.20}, {ip: "fd00:10:244:2::20"}]
---
apiVersion: lab.flowtui.dev/v1
kind: ExternalHost
metadata: {name: client}
spec: {addresses: [192.0.2.50, "2001:db8:0:2::50"]}
---
apiVersion: lab.flowtui.dev/v1
kind: ExternalHost
metadata: {name: admin}
spec: {addresses: [203.0.113.10, "2001:db8:0:113::10"]}
"""

# Host endpoints for the two nodes' eth0, to add where a test is about host endpoints.
HEP_A = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-a-eth0, labels: {host: a, hep: "yes"}}
spec:
  node: node-a
  interfaceName: eth0
  expectedIPs: [172.31.0.11, "fd00:172:31::11"]
  ports: [{name: kubelet, protocol: TCP, port: 10250}]
"""
HEP_B = """
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-b-eth0, labels: {host: b, hep: "yes"}}
spec:
  node: node-b
  interfaceName: eth0
  expectedIPs: [172.31.0.12, "fd00:172:31::12"]
"""

GNP = "GlobalNetworkPolicy"
NP = "NetworkPolicy"
KNP = "KubernetesNetworkPolicy"


def cluster(*docs: str, base: str = BASE) -> Evaluator:
    """An evaluator over the base cluster plus `docs` (YAML documents, joined with `---`)."""
    text = "\n---\n".join([base, *docs]) if base else "\n---\n".join(docs)
    return Evaluator(ClusterState(load_text(text, "cluster.yaml")))


def decide(
    ev: Evaluator,
    src: str,
    dst: str,
    proto: str = "tcp",
    port: int | None = None,
    *,
    sport: int | None = None,
    v6: bool = False,
    icmp_type: int | None = None,
    icmp_code: int | None = None,
    explain: bool = True,
) -> Decision:
    """Decide a flow between references as `flowtui eval` does (`ns/pod`, `node:N`, `external:N`, IP)."""
    flow = build_flow(ev.state, src, dst, parse_protocol(proto), port, sport, icmp_type, icmp_code, v6)
    return ev.decide(flow, explain=explain)


Attribution = tuple[object, ...]


def hit(h: Hit | None) -> Attribution | None:
    """(kind, namespace, name, tier, direction, rule, action), or None."""
    if h is None:
        return None
    return (h.kind, h.namespace, h.name, h.tier, h.direction, h.rule, h.action)


def by(d: Decision) -> Attribution | None:
    return hit(d.enforced.decided_by)


def pending_by(d: Decision) -> Attribution | None:
    return hit(d.pending.decided_by)


def logged(d: Decision) -> list[tuple[object, ...]]:
    """The enforced walk's Log hits: (kind, namespace, name, direction, rule)."""
    return [(h.kind, h.namespace, h.name, h.direction, h.rule) for h in d.enforced.logged]


def families(d: Decision) -> list[tuple[str, str]]:
    """(family, direction) of every stage the enforced walk went through."""
    return [(r.stage.family, r.stage.direction) for r in d.enforced.stages]


# --------------------------------------------------------------------------------------------
# The base cluster is what the other evaluator tests assume.


class TestBaseCluster:
    ev = cluster()

    def test_no_policy_pods_allowed_by_their_namespace_profiles(self) -> None:
        d = decide(self.ev, "prod/web", "dev/db", "tcp", 5432)
        assert d.verdict == "allow" and by(d) is None and d.pending.verdict == "allow"
        assert families(d) == [("workload", "egress"), ("workload", "ingress")]
        assert [r.hit.name if r.hit else None for r in d.enforced.stages] == ["kns.prod", "kns.dev"]
        assert all(r.hit is not None and r.hit.builtin for r in d.enforced.stages)

    def test_nodes_without_host_endpoints_are_not_policed(self) -> None:
        d = decide(self.ev, "external:client", "node:node-a", "tcp", 80)
        assert d.verdict == "allow" and d.enforced.stages == ()

    def test_references_resolve_to_the_expected_addresses(self) -> None:
        d = decide(self.ev, "dev/web", "external:admin", "udp", 53, v6=True)
        assert (str(d.flow.src), str(d.flow.dst)) == ("fd00:10:244:1::20", "2001:db8:0:113::10")
        assert (d.src.kind, d.dst.kind) == ("pod", "external")

    def test_service_account_labels_are_inherited(self) -> None:
        ep = self.ev.state.pods_by_ref["prod/web"]
        assert ep.labels["projectcalico.org/serviceaccount"] == "web-sa"
        assert ep.labels["pcsa.role"] == "frontend"
        assert ep.labels["pcns.env"] == "prod"
