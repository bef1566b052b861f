"""The oracle: on random policy sets, the kernel's outcome equals the evaluator's verdict.

Random clusters and policies (tiers, orders, Allow/Deny/Pass/Log, selectors, nets, ports, named
ports, network sets, host endpoints with untracked/preDNAT/forward policy) are compiled to
nftables and applied in a lab; random TCP, UDP and ICMP probes run between pods, nodes and outside
hosts, IPv4 and IPv6. Every probe's first packet must arrive exactly when the evaluator allows it.
`FLOWTUI_DIFF_SEEDS` widens the run (bench/ uses it for the long mode).
"""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from enforcer.evaluate import Evaluator, decision_text
from enforcer.lab import lab_resources, netns_name, plan_lab
from enforcer.lab.probe import Probe, run_probes
from enforcer.model import IPAddress, ResourceSet
from enforcer.nft import ir
from enforcer.nft.compiler import compile_node
from enforcer.resolve import ClusterState
from enforcer.synth import PORTS, SynthSpec, synth_resources

SEEDS = int(os.environ.get("FLOWTUI_DIFF_SEEDS", "8"))
PROBES_PER_SEED = 60


def _targets(res: ResourceSet) -> list[tuple[str, tuple[IPAddress, ...]]]:
    out = [(f"{p.namespace}/{p.name}", p.ips) for p in res.pods]
    out += [(f"node:{n.name}", n.addresses) for n in res.nodes]
    out += [(f"external:{e.name}", e.addresses) for e in res.external_hosts]
    return out


def random_probes(res: ResourceSet, seed: int, count: int) -> list[Probe]:
    r = random.Random(seed)
    ends = _targets(res)
    probes: list[Probe] = []
    while len(probes) < count:
        (src_t, src_ips), (dst_t, dst_ips) = r.sample(ends, 2)
        if src_t.startswith("external:") and dst_t.startswith("external:"):
            continue  # never crosses a node
        version = 6 if r.random() < 0.25 else 4
        src = next((ip for ip in src_ips if ip.version == version), None)
        dst = next((ip for ip in dst_ips if ip.version == version), None)
        if src is None or dst is None:
            continue
        proto = r.choice((6, 6, 17, 17, 1))
        if proto == 1 and version == 6:
            proto = 58
        marker = 20000 + len(probes)
        dport = None if proto in (1, 58) else r.choice((*PORTS, 22, 9050))
        probes.append(Probe(src_t, src, dst_t, dst, proto, marker, dport))
    return probes


def apply_tables(lab_id: str, state: ClusterState, evaluator: Evaluator) -> None:
    for node in state.nodes:
        compiled = compile_node(state, node, evaluator=evaluator)
        script = ir.render(compiled.table, ir.full(compiled.table, existing=False))
        ns = netns_name(lab_id, f"node:{node}")
        done = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                              capture_output=True)
        assert done.returncode == 0, f"nft rejected the ruleset of {node}: {done.stderr}"


@pytest.mark.kernel
@pytest.mark.parametrize("seed", range(SEEDS))
def test_kernel_agrees_with_evaluator(seed: int, lab_id: str) -> None:
    from enforcer.lab import lab_up

    spec = SynthSpec(nodes=2, namespaces=2, pods=4, externals=2, policies=8, rules_per_policy=3)
    res = synth_resources(seed, spec)
    plan = plan_lab(res, lab_id)
    lab_up(plan)
    res = lab_resources(res, plan)
    state = ClusterState(res)
    ev = Evaluator(state)
    apply_tables(lab_id, state, ev)

    probes = random_probes(res, seed, PROBES_PER_SEED)
    delivered = run_probes(lab_id, probes)
    wrong = []
    for p in probes:
        decision = ev.decide(p.flow)
        if (p in delivered) != (decision.verdict == "allow"):
            wrong.append((p, decision))
    if wrong:
        p, d = wrong[0]
        detail = decision_text(ev.decide(p.flow, explain=True))
        pytest.fail(f"{len(wrong)}/{len(probes)} probes disagree (seed {seed}); first: {p.src_target} → "
                    f"{p.dst_target} proto {p.proto} port {p.dport}: kernel "
                    f"{'delivered' if p in delivered else 'dropped'}, evaluator says {d.verdict}\n{detail}")
    # The test must be able to fail: both verdicts occur across the probes of a seed set.
    assert delivered, "no probe was delivered: the lab is not forwarding"
