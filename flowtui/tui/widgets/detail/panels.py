"""The pieces of the flow detail, as Rich renderables: verdict boxes, the rule, the trace."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from enforcer.evaluate import Verdict
from flowtui.tui.explain import Explanation

STYLE = {"allow": "bold green", "deny": "bold red", "log": "bold yellow", "pass": "bold blue"}


def verdict_panel(title: str, verdict: Verdict | None, note: str = "") -> Panel:
    body = Text()
    if verdict is None:
        body.append("—", "dim")
    else:
        body.append(verdict.verdict.upper(), STYLE.get(verdict.verdict, "bold"))
        body.append("\n")
        if verdict.decided_by is not None:
            body.append(verdict.decided_by.describe())
        elif verdict.failsafe:
            body.append("a failsafe port (host endpoints always let these through)")
        else:
            body.append("no policy decided (" + (verdict.stages[-1].reason if verdict.stages else "unpoliced") + ")",
                        "dim")
    if note:
        body.append("\n" + note, "dim italic")
    return Panel(body, title=title, border_style=STYLE.get(verdict.verdict if verdict else "", "dim"))


SHOWN_L7 = 5  # L7 summaries listed in the recorded verdict's box


def recorded_panel(exp: Explanation) -> Panel:
    verdict = str(exp.row.get("verdict") or "?")
    body = Text(verdict.upper(), STYLE.get(verdict, "bold"))
    body.append("\n" + exp.recorded.split(" by ", 1)[-1])
    for policy in exp.other_policies:  # the source named several policies for this verdict
        body.append("\nalso " + policy)
    for summary in exp.l7[:SHOWN_L7]:
        body.append("\nL7 " + summary, "cyan")
    if len(exp.l7) > SHOWN_L7:
        body.append(f"\n… {len(exp.l7) - SHOWN_L7} more L7 requests", "dim")
    if exp.agrees is False:
        body.append("\n≠ the evaluator now: policy changed since?", "bold yellow")
    elif exp.agrees:
        body.append("\n= the evaluator's verdict", "dim")
    return Panel(body, title="Recorded (kernel, NFLOG)", border_style=STYLE.get(verdict, "dim"))


def logged_panel(exp: Explanation) -> RenderableType:
    if exp.decision is None:
        return Text("")
    logged = exp.decision.enforced.logged
    body = Text()
    if not logged:
        body.append("no Log rule fired on this flow", "dim")
    for hit in logged:
        body.append("● ", "yellow")
        body.append(hit.describe() + "\n")
    return Panel(body, title="Log rules that fired", border_style="yellow" if logged else "dim")


def rule_panel(exp: Explanation) -> RenderableType:
    if exp.policy_ref is None:
        hit = exp.decision.enforced.decided_by if exp.decision else None
        text = Text("no user policy rule decided" + (f": {hit.describe()}" if hit else ""), "dim")
        return Panel(text, title="Deciding rule", border_style="dim")
    body = Text()
    for line in exp.policy_header:
        body.append(line + "\n", "dim")
    body.append("spec:\n", "dim")
    for rl in exp.rule_lines:
        if rl.matched:
            body.append(rl.text, "bold green on grey11")
            if rl.note:
                body.append(f"    # ✓ {rl.note}", "green italic")
        else:
            body.append(rl.text, "bold" if "action" in rl.text else "")
        body.append("\n")
    return Panel(body, title=f"Deciding rule: {exp.policy_ref} (matching fields highlighted)", border_style="cyan")


def trace_panel(exp: Explanation) -> RenderableType:
    body = Text()
    for line in exp.trace.splitlines():
        stripped = line.strip()
        if stripped.startswith("→ ALLOW"):
            body.append(line + "\n", "green")
        elif stripped.startswith("→ DENY"):
            body.append(line + "\n", "red")
        elif stripped.startswith("Verdict:"):
            body.append(line + "\n", "bold")
        elif line[:1].isdigit():
            body.append(line + "\n", "bold cyan")
        elif "matches" in line:
            body.append(line + "\n", "yellow")
        else:
            body.append(line + "\n")
    return Panel(body, title="Evaluation trace: tiers and policies considered, stage by stage", border_style="blue")


def detail_renderable(exp: Explanation) -> RenderableType:
    if exp.error:
        return Panel(Text(exp.error, "yellow"), title="Flow detail")
    return Group(logged_panel(exp), rule_panel(exp), trace_panel(exp))
