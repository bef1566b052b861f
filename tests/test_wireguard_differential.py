"""Policy with encryption on (root): the evaluator-versus-kernel differential test of
`test_differential_kernel.py`, re-run with WireGuard on for IPv4 and IPv6, and the places where
encryption changes what host endpoint policy sees.

With WireGuard, pod traffic between nodes leaves the source node on `ftwg0`/`ftwg0v6` and enters
the destination node there, encrypted on `eth0` in between. eth0's host endpoint sees only the
tunnel's UDP, which Calico auto-allows between nodes (filter INPUT and OUTPUT); an all-interfaces
host endpoint also covers the tunnel interface. What follows from that for flowtui:

- without host endpoints, the evaluator's path model is unchanged and every verdict and every
  NFLOG attribution must agree, tunnel or not (`test_differential_with_wireguard`);
- with host endpoints too, every flow must agree, tunnelled or not
  (`test_differential_with_wireguard_and_host_endpoints`): eth0's host endpoint stages stay off
  tunnelled pod traffic, an all-interfaces host endpoint's preDNAT and applyOnForward policy see
  it as it leaves the pod and as it comes out of the tunnel (Calico's "with wireguard tunnel"
  apply-on-forward FV test), and both allow the tunnel's UDP between nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from enforcer.evaluate import Evaluator, peer_for_address
from enforcer.evaluate.path import stages_for
from enforcer.lab import LabPlan, lab_resources, lab_up, plan_lab
from enforcer.lab.probe import Probe
from enforcer.loader import load_text
from enforcer.model import FelixConfiguration, ResourceSet
from enforcer.resolve import ClusterState
from enforcer.ruleids import IdAllocator, RuleTable
from enforcer.synth import SynthSpec, synth_resources
from enforcer.wireguard.keys import KeyStore
from enforcer.wireguard.manager import apply_lab
from enforcer.wireguard.status import lab_wireguard_status
from flowtui.cli.common import scenario_dir
from tests.test_differential_kernel import (
    PROBES_PER_SEED,
    Attribution,
    apply_tables,
    disagreements,
    events_by_key,
    expected_attribution,
    probe_key,
    probe_with_collector,
    random_probes,
)

pytestmark = pytest.mark.kernel

SEEDS = int(os.environ.get("FLOWTUI_WG_DIFF_SEEDS", "3"))
BOTH = FelixConfiguration(wireguard_enabled=True, wireguard_enabled_v6=True)
@dataclass
class Run:
    res: ResourceSet
    plan: LabPlan
    ev: Evaluator
    probes: list[Probe]
    delivered: set[Probe]
    answered: set[Probe]
    events: dict[tuple[object, ...], set[Attribution]]

    def rides_tunnel(self, p: Probe) -> bool:
        """Pod to pod on another node: what WireGuard encrypts (both families are on)."""
        nodes = {f"{pod.namespace}/{pod.name}": pod.node for pod in self.res.pods}
        src, dst = nodes.get(p.src_target), nodes.get(p.dst_target)
        return src is not None and dst is not None and src != dst

    def disagreements(self, probes: list[Probe]) -> list[str]:
        return disagreements(self.ev, probes, self.delivered, self.answered)

    def attribution_mismatches(self, probes: list[Probe]) -> tuple[list[str], int]:
        wrong, compared = [], 0
        for p in probes:
            key = probe_key(p, self.probes)
            if key is None:
                continue
            want = expected_attribution(self.ev.decide(p.flow))
            got = self.events.get(key, set())
            compared += 1
            if got != want:
                wrong.append(f"{p.src_target} → {p.dst_target} proto {p.proto} port {p.dport}: kernel logged "
                             f"{sorted(map(str, got))}, evaluator implies {sorted(map(str, want))}")
        return wrong, compared


def differential(lab_id: str, tmp_path: Path, res: ResourceSet, probes_for: int | list[Probe],
                 felix: FelixConfiguration = BOTH, seed: int = 0) -> Run:
    """Build the lab for `res`, apply every node's table, turn WireGuard on as `felix` says, send
    the probes (random ones for `seed` when `probes_for` is a count) with the collector on."""
    plan = plan_lab(res, lab_id)
    lab_up(plan)
    res = replace(lab_resources(res, plan), felix=replace(res.felix, wireguard_enabled=felix.wireguard_enabled,
                                                          wireguard_enabled_v6=felix.wireguard_enabled_v6))
    state = ClusterState(res)
    ev = Evaluator(state)
    rules: RuleTable = apply_tables(lab_id, state, ev, IdAllocator())
    rules.dump(tmp_path / "rules.jsonl")
    result = apply_lab(res.felix, plan, KeyStore(tmp_path / "keys"))
    assert result.ok, result.describe()
    assert all(t.action == "enabled" for t in result.tunnels if t.family in result.families)

    probes = random_probes(res, seed, probes_for) if isinstance(probes_for, int) else probes_for
    delivered, answered = probe_with_collector(lab_id, state.nodes, tmp_path / "flows.duckdb",
                                               tmp_path / "rules.jsonl", probes)
    events = events_by_key(tmp_path / "flows.duckdb", rules, check_action=False)
    return Run(res, plan, ev, probes, delivered, answered, events)


def tunnel_bytes(lab_id: str) -> int:
    return sum(s.rx_bytes for s in lab_wireguard_status(lab_id) if s.enabled)


# ---- random policy sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(SEEDS))
def test_differential_with_wireguard(seed: int, lab_id: str, tmp_path: Path) -> None:
    """No host endpoints: encryption must change no verdict and no attribution."""
    spec = SynthSpec(nodes=2, namespaces=2, pods=4, externals=2, policies=8, rules_per_policy=3, host_endpoints=False)
    run = differential(lab_id, tmp_path, synth_resources(seed, spec), PROBES_PER_SEED, seed=seed)
    wrong = run.disagreements(run.probes)
    assert not wrong, f"{len(wrong)}/{len(run.probes)} probes disagree (seed {seed}); first: {wrong[0]}"
    assert run.delivered, "no probe was delivered: the lab is not forwarding"
    tunnelled = [p for p in run.probes if run.rides_tunnel(p)]
    assert tunnelled, "no probe between pods on different nodes: the tunnel was not exercised"
    if any(p in run.delivered for p in tunnelled):
        assert tunnel_bytes(lab_id) > 0, "pod traffic between nodes was delivered but not through the tunnel"
    mismatches, compared = run.attribution_mismatches(run.probes)
    assert not mismatches, f"seed {seed}: {mismatches[0]}"
    assert compared >= len(run.probes) * 3 // 4


@pytest.mark.parametrize("seed", range(SEEDS))
def test_differential_with_wireguard_and_host_endpoints(seed: int, lab_id: str, tmp_path: Path) -> None:
    """With host endpoints (untracked, preDNAT, forward policy): every flow agrees, verdict and
    attribution, tunnelled or not — tunnelled pod traffic bypasses eth0's host endpoint stages in
    both the kernel and the evaluator, and the tunnel's own UDP is allowed between nodes."""
    spec = host_endpoint_spec(seed)
    run = differential(lab_id, tmp_path, synth_resources(seed, spec), PROBES_PER_SEED, seed=seed)
    wrong = run.disagreements(run.probes)
    assert not wrong, f"{len(wrong)}/{len(run.probes)} probes disagree (seed {seed}); first: {wrong[0]}"
    mismatches, _ = run.attribution_mismatches(run.probes)
    assert not mismatches, f"seed {seed}: {mismatches[0]}"
    assert any(run.rides_tunnel(p) for p in run.probes)
    if spec.wildcard_heps:
        # All-interfaces HEPs cover the tunnel: their preDNAT/forward policy lies on tunnelled paths.
        state = run.ev.state
        paths = [stages_for(state, peer_for_address(state, p.src), peer_for_address(state, p.dst), p.src.version)
                 for p in run.probes]
        assert any(st.via == "tunnel" and run.ev.stage_tiers(st) for path in paths for st in path)


def host_endpoint_spec(seed: int) -> SynthSpec:
    """Even seeds: every node's host endpoint all-interfaces (they cover the tunnel, so their
    preDNAT and applyOnForward policy see decapsulated pod traffic); odd seeds: eth0's (the
    tunnel bypasses them). A preDNAT and an untracked policy on every host endpoint."""
    return SynthSpec(nodes=2, namespaces=2, pods=4, externals=2, policies=8, rules_per_policy=3,
                     wildcard_heps=1.0 if seed % 2 == 0 else 0.0, endpoint_to_host=True, host_extras=True)


# ---- fixed scenarios ---------------------------------------------------------------------------

ARTICLE = scenario_dir("article")
DENY_TCP_9000 = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: transaction-ingress}
spec:
  order: 5
  selector: tier == 'transaction'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, source: {selector: tier == 'frontend'}, destination: {ports: [9000]}}
  - {action: Allow}
"""
HEP_FORWARD_DENY = """\
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-b-eth0, labels: {hep: node-b}}
spec: {node: node-b, interfaceName: eth0, expectedIPs: [172.31.0.12, "fd00:172:31::12"]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: node-b-forward}
spec:
  order: 10
  selector: hep == 'node-b'
  applyOnForward: true
  types: [Ingress, Egress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [9000]}}
  - {action: Allow}
  egress:
  - {action: Allow}
"""


def article(*names: str, extra: str = "") -> ResourceSet:
    text = "\n---\n".join((ARTICLE / n).read_text() for n in names)
    return load_text(text + ("\n---\n" + extra if extra else ""), "scenario.yaml")


def frontend_to_transaction(res: ResourceSet, port: int, proto: int = 6, marker: int = 31000) -> list[Probe]:
    pods = {f"{p.namespace}/{p.name}": p for p in res.pods}
    src, dst = pods["production/frontend"], pods["production/transaction"]
    out = []
    for i, version in enumerate((4, 6)):
        s = next(a for a in src.ips if a.version == version)
        d = next(a for a in dst.ips if a.version == version)
        out.append(Probe("production/frontend", s, "production/transaction", d, proto, marker + i, port))
    return out


def test_policy_is_enforced_through_the_tunnel(lab_id: str, tmp_path: Path) -> None:
    res = article("00-cluster.yaml", extra=DENY_TCP_9000)
    plan_res = lab_resources(res, plan_lab(res, lab_id))
    denied = frontend_to_transaction(plan_res, 9000)
    allowed = frontend_to_transaction(plan_res, 8080, marker=31010)
    udp = frontend_to_transaction(plan_res, 9000, proto=17, marker=31020)
    run = differential(lab_id, tmp_path, res, [*denied, *allowed, *udp])
    assert not run.disagreements(run.probes)
    assert run.delivered == {*allowed, *udp}
    assert all(run.rides_tunnel(p) for p in run.probes)
    assert tunnel_bytes(lab_id) > 0
    mismatches, compared = run.attribution_mismatches(run.probes)
    assert not mismatches and compared == len(run.probes)


def test_host_endpoint_forward_policy_does_not_see_tunnelled_traffic(lab_id: str, tmp_path: Path) -> None:
    """The kernel side, as Calico behaves: eth0's applyOnForward policy sees only the tunnel's UDP."""
    res = article("00-cluster.yaml", extra=HEP_FORWARD_DENY)
    probes = frontend_to_transaction(lab_resources(res, plan_lab(res, lab_id)), 9000)
    run = differential(lab_id, tmp_path, res, probes)
    assert run.delivered == set(probes)


def test_evaluator_knows_the_tunnel_bypasses_host_endpoint_stages(lab_id: str, tmp_path: Path) -> None:
    res = article("00-cluster.yaml", extra=HEP_FORWARD_DENY)
    probes = frontend_to_transaction(lab_resources(res, plan_lab(res, lab_id)), 9000)
    run = differential(lab_id, tmp_path, res, probes)
    wrong = run.disagreements(run.probes)
    assert not wrong, wrong[0]


def test_tunnel_survives_the_articles_host_endpoint_policy(lab_id: str, tmp_path: Path) -> None:
    """Scenario 4 of the article (node-a's eth0: SSH, ICMP and kubelet in; etcd and DNS out) with
    encryption on: the tunnel's UDP between nodes is allowed before host endpoint policy, as in
    Calico, so pod traffic between nodes keeps flowing."""
    res = article("00-cluster.yaml", "04-favorite-worker-host.yaml")
    probes = frontend_to_transaction(lab_resources(res, plan_lab(res, lab_id)), 9000)
    run = differential(lab_id, tmp_path, res, probes)
    assert all(run.ev.decide(p.flow).verdict == "allow" for p in probes)
    assert run.delivered == set(probes)
