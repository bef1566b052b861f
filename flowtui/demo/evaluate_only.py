"""The demo without a lab: decide the article's probe flows and explain them."""

from __future__ import annotations

from pathlib import Path

from enforcer.evaluate import Decision, Evaluator, decision_text
from enforcer.loader import load_paths
from enforcer.resolve import ClusterState
from flowtui.demo.probes import ARTICLE_PROBES, Probe


def decide_probes(scenario: Path) -> list[tuple[Probe, Decision]]:
    from flowtui.cli.policy import build_flow, parse_protocol

    state = ClusterState(load_paths([str(scenario)]))
    evaluator = Evaluator(state)
    out = []
    for probe in ARTICLE_PROBES:
        flow = build_flow(state, probe.src, probe.dst, parse_protocol(probe.proto), probe.port,
                          None, None, None, probe.ipv6)
        out.append((probe, evaluator.decide(flow, explain=True)))
    return out


def render(results: list[tuple[Probe, Decision]], explain_logged: bool = True) -> str:
    lines = [f"{'verdict':7}  {'flow':58}  decided by", "-" * 110]
    for probe, d in results:
        hit = d.enforced.decided_by
        by = hit.describe() if hit else ("failsafe port" if d.enforced.failsafe else d.enforced.stages[-1].reason
                                         if d.enforced.stages else "not policed")
        flow = f"{probe.src} → {probe.dst} {probe.proto}{'' if probe.port is None else '/' + str(probe.port)}"
        if probe.ipv6:
            flow += " (v6)"
        lines.append(f"{d.verdict.upper():7}  {flow:58}  {by}")
        lines.append(f"{'':7}  {probe.what}")
    if explain_logged:
        for _probe, d in results:
            if d.enforced.logged:
                lines += ["", "Why? One decision explained step by step:", "", decision_text(d)]
                break
    return "\n".join(lines)
