"""Flow detail: the whole evaluation trace of the selected flow, its deciding rule as YAML with
the matching fields highlighted, the Log rules that fired, and the recorded, enforced and
pending (staged) verdicts side by side."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from flowtui.tui import format as fmt
from flowtui.tui.explain import Explanation, explain_row
from flowtui.tui.messages import DecisionExplained
from flowtui.tui.screens.base import DashboardScreen
from flowtui.tui.widgets.detail.panels import detail_renderable, recorded_panel, verdict_panel


class DetailScreen(DashboardScreen):
    BINDINGS = [
        Binding("escape,q,backspace", "app.pop_screen", "Back"),
        Binding("w", "whatif", "What-if on this policy"),
        Binding("f", "filter_pair", "Flows of this pair"),
    ]

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__()
        self.row = row
        self.explanation: Explanation | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._title(), classes="screen-title")
        with Horizontal(id="verdicts"):
            yield Static(id="recorded", classes="verdict-box")
            yield Static(id="enforced", classes="verdict-box")
            yield Static(id="pending", classes="verdict-box")
        with VerticalScroll(id="detail-body"):
            yield Static("evaluating…", id="detail")
        yield from self.chrome()

    def _title(self) -> Text:
        r = self.row
        text = Text(" Flow ", style="bold reverse")
        text.append(f"  {fmt.endpoint(r, 'src')} → {fmt.endpoint(r, 'dst')}  {fmt.service(r)}", "bold")
        one_port = r.get("sport") is not None and (r.get("ports") or 1) <= 1
        sport = f":{r['sport']}" if one_port else ""
        dport = f":{r['dport']}" if r.get("dport") is not None else ""
        text.append(f"  {r.get('src_ip')}{sport} → {r.get('dst_ip')}{dport}", "dim")
        if "first_seen" in r:  # a row of the flows view: the flow's counts
            ports = f" · {r['ports']} sports" if (r.get("ports") or 0) > 1 else ""
            text.append(f"  {fmt.count(r.get('packets'))} pkts{ports} · last {fmt.when(r.get('last_seen'))}"
                        f" on {r.get('node') or '?'}", "dim")
        else:
            text.append(f"  at {fmt.when(r.get('time'))} on {r.get('node') or '?'}", "dim")
        return text

    def on_mount(self) -> None:
        self.explain()

    @work(thread=True, group="detail", exclusive=True, exit_on_error=False, description="evaluating the flow")
    def explain(self) -> None:
        from flowtui.tui.queries import recorded_extras

        exp = explain_row(self.row, self.dash.control)
        try:
            with self.dash.source.connect() as con:
                exp.l7, exp.other_policies = recorded_extras(con, self.row)
        except Exception as exc:  # the trace is still shown
            exp.l7 = [f"(cannot read the recorded L7 summary: {exc})"]
        self.post_message(DecisionExplained(exp))

    def on_decision_explained(self, message: DecisionExplained) -> None:
        exp: Explanation = message.explanation
        self.explanation = exp
        d = exp.decision
        self.query_one("#recorded", Static).update(recorded_panel(exp))
        self.query_one("#enforced", Static).update(verdict_panel("Enforced (evaluator, policies now)",
                                                                 d.enforced if d else None))
        same = d is not None and (d.pending.verdict, d.pending.decided_by) == (d.enforced.verdict,
                                                                                d.enforced.decided_by)
        self.query_one("#pending", Static).update(verdict_panel(
            "Pending (staged policies enforced)", d.pending if d else None, "same as enforced" if same else ""))
        self.query_one("#detail", Static).update(detail_renderable(exp))

    def action_whatif(self) -> None:
        ref = self.explanation.policy_ref if self.explanation else None
        if ref is None:
            self.notify("no user policy decided this flow", severity="warning")
            return
        self.app.pop_screen()
        self.dash.open_whatif(ref)

    def action_filter_pair(self) -> None:
        src, dst = fmt.endpoint(self.row, "src"), fmt.endpoint(self.row, "dst")
        self.app.pop_screen()
        self.dash.set_filter_text(f'from:"{src}" to:"{dst}"')
