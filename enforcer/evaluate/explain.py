"""Decisions as the documented JSON and as a step-by-step explanation for people."""

from __future__ import annotations

from enforcer.evaluate.evaluator import Decision, Hit, StageResult, Verdict


def _hit(hit: Hit | None) -> dict[str, object] | None:
    return None if hit is None else hit.to_json()


def _stage_json(res: StageResult) -> dict[str, object]:
    ep = res.stage.endpoint
    return {
        "stage": res.stage.family,
        "direction": res.stage.direction,
        "endpoint": None if ep is None else ep.ref,
        "node": res.stage.node,
        "result": res.outcome,
        "reason": res.reason,
        "hit": _hit(res.hit),
        "failsafe": res.failsafe,
        "skipped": res.skipped,
        "reply": res.reply,
        "steps": list(res.steps),
    }


def _logged(v: Verdict) -> list[dict[str, object]]:
    return [
        {"kind": h.kind, "namespace": h.namespace, "name": h.name, "direction": h.direction, "rule": h.rule}
        for h in v.logged
    ]


def decision_json(d: Decision) -> dict[str, object]:
    """The `flowtui eval -o json` document (schema in the README)."""
    return {
        "verdict": d.enforced.verdict,
        "decided_by": _hit(d.enforced.decided_by),
        "failsafe": d.enforced.failsafe,
        "logged": _logged(d.enforced),
        "pending": {"verdict": d.pending.verdict, "decided_by": _hit(d.pending.decided_by)},
        "flow": {
            "src": str(d.flow.src),
            "dst": str(d.flow.dst),
            "protocol": d.flow.protocol,
            "src_port": d.flow.src_port,
            "dst_port": d.flow.dst_port,
            "icmp_type": d.flow.icmp_type,
            "icmp_code": d.flow.icmp_code,
            "from": d.src.describe(),
            "to": d.dst.describe(),
        },
        "trace": [_stage_json(r) for r in d.enforced.stages],
    }


def decision_text(d: Decision) -> str:
    """A readable account of the decision, for someone who does not know Calico's internals."""
    lines = [f"Flow: {d.flow.describe()}", f"  from {d.src.describe()}", f"  to   {d.dst.describe()}", ""]
    if not d.enforced.stages:
        lines.append("No policy point lies on this path (for example host to its own pod): allowed.")
    for n, res in enumerate(d.enforced.stages, 1):
        lines.append(f"{n}. {'reply: ' if res.reply else ''}{res.stage.describe()}")
        for step in res.steps:
            lines.append(f"     {step}")
        lines.append(f"   → {res.outcome.upper() if res.outcome != 'continue' else 'continue'}: {res.reason}")
    lines.append("")
    v = d.enforced
    verdict = v.verdict.upper()
    if v.decided_by is not None:
        lines.append(f"Verdict: {verdict}, decided by {v.decided_by.describe()}")
    elif v.failsafe:
        lines.append(f"Verdict: {verdict} by a failsafe port (host endpoints always let these through)")
    else:
        lines.append(f"Verdict: {verdict} (no policy decided: {v.stages[-1].reason if v.stages else 'unpoliced'})")
    for h in v.logged:
        lines.append(f"Logged by {h.describe()}")
    p = d.pending
    if (p.verdict, p.decided_by) != (v.verdict, v.decided_by):
        by = f", decided by {p.decided_by.describe()}" if p.decided_by else ""
        lines.append(f"Pending (with staged policies enforced): {p.verdict.upper()}{by}")
    else:
        lines.append("Pending (with staged policies enforced): the same")
    return "\n".join(lines)
