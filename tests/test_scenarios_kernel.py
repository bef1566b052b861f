"""The article's five scenarios, end to end in the kernel: real namespaces, real nftables, real packets."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from enforcer.evaluate import Evaluator
from enforcer.lab import lab_resources, netns_name, plan_lab
from enforcer.lab.probe import Probe, run_probes
from enforcer.loader import load_paths
from enforcer.nft import ir
from enforcer.nft.compiler import CompiledNode, compile_node
from enforcer.nft.hits import hits_from_json
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator
from flowtui.cli.common import scenario_dir
from flowtui.cli.policy import build_flow, parse_protocol
from flowtui.demo.probes import ARTICLE_PROBES

pytestmark = pytest.mark.kernel


@dataclass
class ArticleLab:
    lab_id: str
    state: ClusterState
    evaluator: Evaluator
    compiled: dict[str, CompiledNode]

    def ns(self, target: str) -> str:
        return netns_name(self.lab_id, target)

    def hits(self, node: str) -> dict[int, int]:
        out = subprocess.run(["ip", "netns", "exec", self.ns(f"node:{node}"), "nft", "-j", "list", "table",
                              "inet", "flowtui"], capture_output=True, text=True, check=True).stdout
        return {k: v.packets for k, v in hits_from_json(out).items()}

    def rule_id(self, node: str, name: str, direction: str, rule: int) -> int:
        refs = [r for r in self.compiled[node].rules if (r.name, r.direction, r.rule) == (name, direction, rule)]
        assert refs, f"no rule {name} {direction} {rule} on {node}"
        return refs[0].id


@pytest.fixture(scope="module")
def lab() -> Iterator[ArticleLab]:
    from enforcer.lab import lab_down, lab_up

    lab_id = "a" + secrets.token_hex(3)[:5]
    res = load_paths([str(scenario_dir())])
    plan = plan_lab(res, lab_id)
    try:
        lab_up(plan)
        state = ClusterState(lab_resources(res, plan))
        ev = Evaluator(state)
        ids = IdAllocator()
        compiled = {}
        for node in state.nodes:
            compiled[node] = c = compile_node(state, node, ids=ids, evaluator=ev)
            script = ir.render(c.table, ir.full(c.table, existing=False))
            subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), "nft", "-f", "-"],
                           input=script, text=True, check=True, capture_output=True)
        yield ArticleLab(lab_id, state, ev, compiled)
    finally:
        lab_down(lab_id)


def test_every_article_probe_gets_the_evaluators_verdict(lab: ArticleLab) -> None:
    probes: list[tuple[Probe, str]] = []
    for i, p in enumerate(ARTICLE_PROBES):
        proto_num = parse_protocol(p.proto)
        sport = None if proto_num in (1, 58) else 30000 + i
        flow = build_flow(lab.state, p.src, p.dst, proto_num, p.port, sport, None, None, p.ipv6)
        proto = flow.protocol
        probe = Probe(p.src, flow.src, p.dst, flow.dst, proto, 30000 + i, flow.dst_port)
        probes.append((probe, lab.evaluator.decide(probe.flow).verdict))
    delivered = run_probes(lab.lab_id, [p for p, _ in probes])
    outcome = {p.src_target + "→" + p.dst_target + f"/{p.proto}/{p.dport}": (p in delivered, v == "allow")
               for p, v in probes}
    assert all(got == want for got, want in outcome.values()), outcome
    assert any(v == "deny" for _, v in probes) and any(v == "allow" for _, v in probes)


def _listen(lab: ArticleLab, target: str, port: int, seconds: float = 8.0) -> subprocess.Popen[str]:
    code = (f"import socket,sys,time\ns=socket.socket(socket.AF_INET6);s.setsockopt(socket.IPPROTO_IPV6,"
            f"socket.IPV6_V6ONLY,0);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('::',{port}));s.listen(64);s.settimeout({seconds});print('up',flush=True)\n"
            f"end=time.time()+{seconds}\nwhile time.time()<end:\n try:\n  c,_=s.accept();c.close()\n"
            f" except OSError:\n  break\n")
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns(target), sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def _connect(lab: ArticleLab, target: str, dst: str, port: int) -> bool:
    code = (f"import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{dst}' else socket.AF_INET)\n"
            f"s.settimeout(1.5)\ntry:\n s.connect(('{dst}',{port}));print('ok')\nexcept OSError as e:\n print('no',e)")
    out = subprocess.run(["ip", "netns", "exec", lab.ns(target), sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=10).stdout
    return out.startswith("ok")


def _addr(lab: ArticleLab, node: str, version: int = 4) -> str:
    return str(next(a for a in lab.state.nodes[node].addresses if a.version == version))


def test_favorite_worker_real_connections(lab: ArticleLab) -> None:
    node_a = _addr(lab, "node-a")
    listeners = [_listen(lab, "node:node-a", port) for port in (22, 80, 10250)]
    try:
        assert _connect(lab, "external:admin", node_a, 22)  # management network
        assert _connect(lab, "external:client", node_a, 22)  # failsafe: open to anyone
        assert _connect(lab, "external:client", node_a, 10250)  # kubelet rule
        assert not _connect(lab, "external:client", node_a, 80)  # end of tier
    finally:
        for p in listeners:
            _stop(p)
    eot = [r.id for r in lab.compiled["node-a"].rules if r.kind == "EndOfTier" and r.name == "favorite-worker-host"
           and r.direction == "ingress"]
    assert eot and lab.hits("node-a")[eot[0]] >= 1


def test_log_rule_counts_then_deny(lab: ArticleLab) -> None:
    log_id = lab.rule_id("node-b", "log-and-deny-frontend", "ingress", 0)
    deny_id = lab.rule_id("node-b", "log-and-deny-frontend", "ingress", 1)
    before = lab.hits("node-b")
    db = str(next(p.ips[0] for p in lab.state.resources.pods if p.name == "database"))
    assert not _connect(lab, "staging/frontend", db, 6379)
    after = lab.hits("node-b")
    assert after[log_id] > before.get(log_id, 0)
    assert after[deny_id] > before.get(deny_id, 0)


def _flood(lab: ArticleLab, src_target: str, dst: str, port: int, count: int) -> None:
    code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for i in range({count}): s.sendto(b'x'*16,('{dst}',{port}))")
    subprocess.run(["ip", "netns", "exec", lab.ns(src_target), sys.executable, "-c", code], check=True, timeout=20)


def _conntrack_sources(lab: ArticleLab, node: str) -> str:
    return subprocess.run(["ip", "netns", "exec", lab.ns(f"node:{node}"), "conntrack", "-L"],
                          capture_output=True, text=True).stdout


def test_dos_deny_list_drops_before_conntrack_with_exact_counts(lab: ArticleLab) -> None:
    dos_id = lab.rule_id("node-b", "dos-mitigation", "ingress", 0)
    before = lab.hits("node-b").get(dos_id, 0)
    tx = str(lab.state.pods_by_ref["production/transaction"].ips[0])
    count = 3000  # above the log rate's burst: the counter must still see every packet
    _flood(lab, "external:attacker", tx, 9000, count)
    _flood(lab, "external:attacker", _addr(lab, "node-b"), 80, 100)
    time.sleep(0.2)
    assert lab.hits("node-b")[dos_id] - before == count + 100
    table = _conntrack_sources(lab, "node-b")
    assert "198.51.100.9" not in table, "a denied untracked packet created a conntrack entry"
    # An allowed flow does create one, so the check above can fail.
    assert lab.evaluator.decide(build_flow(lab.state, "external:client", "node:node-b", 17, 80, None, None, None,
                                           False)).verdict == "allow"
    _flood(lab, "external:client", _addr(lab, "node-b"), 80, 1)
    assert "192.0.2.50" in _conntrack_sources(lab, "node-b")


def test_failsafe_ssh_reachable_by_the_attacker_despite_the_deny_list(lab: ArticleLab) -> None:
    listener = _listen(lab, "node:node-b", 22)
    try:
        assert _connect(lab, "external:attacker", _addr(lab, "node-b"), 22)
    finally:
        _stop(listener)


def test_ipv6_deny_list(lab: ArticleLab) -> None:
    v6 = _addr(lab, "node-b", 6)
    listener = _listen(lab, "node:node-b", 8080)
    try:
        assert not _connect(lab, "external:attacker", v6, 8080)
        assert _connect(lab, "external:client", v6, 8080)
    finally:
        _stop(listener)


def test_nothing_leaks_into_the_root_namespace() -> None:
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "flowtui" not in ruleset
    assert socket.if_nametoindex("lo")  # sanity: we are looking at a real namespace
