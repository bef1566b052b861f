"""A small cluster and flow frames shared by the what-if, propose and pcap tests, and checks that
the cluster is what those tests assume.

Two nodes, namespaces `shop` (web ×2, api, db) and `dev` (tester), an outside host; a tier
`security` (default Pass) whose GNP denies dev → db, an NP that lets web reach api on its named
port, and a staged NP that would allow only api → db.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import polars as pl

from enforcer.evaluate import Evaluator, Flow
from enforcer.loader import load_text
from enforcer.model import ResourceSet
from enforcer.resolve import ClusterState

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {role: worker}}
spec: {podCIDRs: [10.244.1.0/24, "fd00:10:244:1::/64"]}
status:
  addresses: [{type: InternalIP, address: 172.31.0.11}, {type: InternalIP, address: "fd00:172:31::11"}]
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {role: worker}}
spec: {podCIDRs: [10.244.2.0/24, "fd00:10:244:2::/64"]}
status:
  addresses: [{type: InternalIP, address: 172.31.0.12}, {type: InternalIP, address: "fd00:172:31::12"}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web, pod-template-hash: 5d8f}}
spec: {nodeName: node-a, containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.244.1.10}, {ip: "fd00:10:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, pod-template-hash: 77aa}}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.244.2.10}, {ip: "fd00:10:244:2::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api, tier: backend}}
spec:
  nodeName: node-b
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.244.2.20}, {ip: "fd00:10:244:2::20"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db, tier: backend}}
spec:
  nodeName: node-a
  containers: [{name: c, image: x, ports: [{name: postgres, containerPort: 5432}]}]
status: {podIPs: [{ip: 10.244.1.30}, {ip: "fd00:10:244:1::30"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tester, namespace: dev, labels: {app: tester}}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
status: {podIPs: [{ip: 10.244.2.40}, {ip: "fd00:10:244:2::40"}]}
---
apiVersion: lab.flowtui.dev/v1
kind: ExternalHost
metadata: {name: internet}
spec: {addresses: [198.51.100.7, "2001:db8:1::7"]}
"""

POLICY = """
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-dev-to-db}
spec:
  tier: security
  order: 10
  selector: app == 'db'
  ingress:
  - action: Deny
    source: {namespaceSelector: env == 'dev'}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  selector: app == 'api'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web'}
    destination: {ports: [http]}
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: lock-db, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'api'}
    destination: {ports: [5432]}
"""

ADDR = {
    "web-1": "10.244.1.10", "web-2": "10.244.2.10", "api-1": "10.244.2.20", "db-1": "10.244.1.30",
    "tester": "10.244.2.40", "node-a": "172.31.0.11", "node-b": "172.31.0.12", "internet": "198.51.100.7",
    "web-1/6": "fd00:10:244:1::10", "db-1/6": "fd00:10:244:1::30", "outside": "203.0.113.9",
}


def cluster(policy: str = POLICY) -> ResourceSet:
    return load_text(CLUSTER + "---\n" + policy, "cluster.yaml")


def write_cluster(tmp: Path, policy: str = POLICY) -> Path:
    path = tmp / "cluster.yaml"
    path.write_text(CLUSTER + "---\n" + policy)
    return path


def flow_frame(rows: list[tuple[str, str, int, int | None, int | None]], repeat: int = 1) -> pl.DataFrame:
    """Rows of (src, dst, proto, sport, dport) by name from ADDR (or a literal address)."""
    out = []
    for src, dst, proto, sport, dport in rows:
        for i in range(repeat):
            out.append((ADDR.get(src, src), ADDR.get(dst, dst), proto,
                        None if sport is None else sport + i, dport, None, None))
    return pl.DataFrame(out, schema={"src_ip": pl.String, "dst_ip": pl.String, "proto": pl.Int64,
                                     "src_port": pl.Int64, "dst_port": pl.Int64, "icmp_type": pl.Int64,
                                     "icmp_code": pl.Int64}, orient="row")


SHOP_TRAFFIC = [
    ("web-1", "api-1", 6, 40000, 8080),
    ("web-2", "api-1", 6, 41000, 8080),
    ("api-1", "db-1", 6, 42000, 5432),
    ("tester", "db-1", 6, 43000, 5432),
    ("internet", "web-1", 6, 44000, 443),
    ("web-1", "internet", 17, 45000, 53),
    ("node-a", "web-1", 6, 46000, 8080),
    ("web-1/6", "db-1/6", 6, 47000, 5432),
]


def one_by_one(frame: pl.DataFrame, res: ResourceSet | ClusterState) -> list[tuple[object, ...]]:
    """The oracle: `Evaluator.decide` on each row; (None,)*4 where the row is not a flow."""
    state = res if isinstance(res, ClusterState) else ClusterState(res)
    ev = Evaluator(state)
    out: list[tuple[object, ...]] = []
    for s, d, proto, sp, dp, it, ic in frame.select(
        pl.col("src_ip", "dst_ip").cast(pl.String), "proto", "src_port", "dst_port", "icmp_type", "icmp_code"
    ).iter_rows():
        try:
            if proto is None or not 0 <= proto <= 255:
                raise ValueError(proto)
            sp = sp if sp is not None and 0 <= sp <= 65535 else None
            dp = dp if dp is not None and 0 <= dp <= 65535 else None
            it = it if it is not None and 0 <= it <= 255 else None
            ic = ic if ic is not None and 0 <= ic <= 255 else None
            flow = Flow(ipaddress.ip_address(s), ipaddress.ip_address(d), proto, sp, dp, it, ic)
        except (ValueError, TypeError):
            out.append((None, None, None, None))
            continue
        dec = ev.decide(flow)
        out.append((dec.enforced.verdict, dec.enforced.decided_by, dec.pending.verdict, dec.pending.decided_by))
    return out


def random_frame(res: ResourceSet, seed: int, n: int) -> pl.DataFrame:
    """Random flows over the cluster's addresses, outside addresses (inside and outside rule nets),
    both families, TCP/UDP/SCTP/ICMP/ICMPv6/GRE, interesting and random ports, ICMP types
    (including ICMPv6 neighbour discovery), null and out-of-range values, and non-addresses."""
    r = random.Random(seed)
    addrs = [str(a) for p in res.pods for a in p.ips]
    addrs += [str(a) for nd in res.nodes for a in nd.addresses]
    addrs += [str(a) for e in res.external_hosts for a in e.addresses]
    addrs += [str(a) for h in res.host_endpoints for a in h.expected_ips]
    nets = [n for p in res.policies for rule in (*p.ingress, *p.egress)
            for side in (rule.source, rule.destination) for n in (*side.nets, *side.not_nets)]
    nets += [n for s in res.network_sets for n in s.nets]
    for net in nets[:20]:
        addrs.append(str(net.network_address + min(net.num_addresses - 1, r.randint(0, 300))))
    addrs += ["192.0.2.99", "8.8.8.8", "2001:db8:1::99", "2001:db8:9::1", "10.244.1.250", "fd00:10:244:1::250",
              "fe80::1%eth0"]
    scoped = [a for a in addrs if ":" in a and "%" not in a][:2]
    addrs += [f"{a}%eth0" for a in scoped]  # a pod's own address with a scope id: a different address
    ports = sorted({p.first for pol in res.policies for rule in (*pol.ingress, *pol.egress)
                    for side in (rule.source, rule.destination) for p in (*side.ports, *side.not_ports)
                    if hasattr(p, "first")} | {22, 53, 67, 68, 80, 179, 443, 2379, 5432, 6443, 8080, 9000, 9100, 9101})
    rows = []
    for _ in range(n):
        s, d = r.choice(addrs), r.choice(addrs)
        if r.random() < 0.02:
            s = r.choice(["bogus", "", "10.0.0.256"])
        proto = r.choice([6, 6, 6, 17, 17, 1, 58, 132, 47])
        sp = r.choice([None, r.choice(ports), r.randint(1024, 65535), r.randint(1024, 65535)])
        dp = r.choice([None, r.choice(ports), r.choice(ports), r.randint(1, 65535)])
        if r.random() < 0.01:
            dp = r.choice([-1, 70000, 0])
        it = ic = None
        if proto in (1, 58):
            it = r.choice([None, 0, 3, 8, 128, 129, 133, 135, 136])
            ic = r.choice([None, 0, 1]) if it is not None else None
            if r.random() < 0.7:
                sp = dp = None
        rows.append((s, d, proto, sp, dp, it, ic))
    return pl.DataFrame(rows, schema={"src_ip": pl.String, "dst_ip": pl.String, "proto": pl.Int64,
                                      "src_port": pl.Int64, "dst_port": pl.Int64, "icmp_type": pl.Int64,
                                      "icmp_code": pl.Int64}, orient="row")


def test_cluster_is_what_the_tests_assume() -> None:
    res = cluster()
    state = ClusterState(res)
    assert {p.name for p in res.pods} == {"web-1", "web-2", "api-1", "db-1", "tester"}
    assert state.owners[ipaddress.ip_address(ADDR["internet"])] == ("external", "internet")
    decided = one_by_one(flow_frame(SHOP_TRAFFIC), res)
    verdicts = [d[0] for d in decided]
    # web -> api on http: allowed by api-from-web; tester -> db: denied by deny-dev-to-db
    assert verdicts[0] == verdicts[1] == "allow"
    assert verdicts[3] == "deny"
    assert verdicts[2] == "allow" and verdicts[4] == "allow"
