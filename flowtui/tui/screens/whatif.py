"""What-if editor: a policy as YAML; every edit is validated (problems shown at their line) and
the recorded flows are replayed under the edited set, showing the flows whose verdict or
deciding rule would change. Then apply it, stage it (a Staged* policy: pending verdicts, nothing
enforced), or discard the edit."""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, TextArea

from flowtui.tui.control import ChangeRefused, PolicyRef
from flowtui.tui.messages import PolicyApplied, WhatIfComputed
from flowtui.tui.screens.base import DashboardScreen
from flowtui.tui.whatif_run import WhatIfOutcome, load_frame, problem_lines, run_whatif
from flowtui.tui.widgets.whatif.editor import YamlEditor

DEBOUNCE = 0.6
HINT = """\
# What-if: open a policy here from the Policies screen (3, select it, e),
# or from a flow's detail (w), or with ctrl+o; or write any policy YAML.
# Every edit replays the recorded flows: the table shows what would change.
"""
CATEGORY_STYLE = {"newly_denied": "bold red", "newly_allowed": "bold green", "attribution_changed": "yellow",
                  "pending_denied": "red", "pending_allowed": "green", "pending_attribution": "yellow"}


class WhatIfScreen(DashboardScreen):
    BINDINGS = [
        Binding("ctrl+r", "preview", "Preview", priority=True),
        Binding("ctrl+s", "apply", "Apply", priority=True),
        Binding("ctrl+t", "stage", "Stage", priority=True),
        Binding("ctrl+g", "discard", "Discard edits", priority=True),
        Binding("ctrl+o", "open", "Open policy", priority=True),
        Binding("escape", "leave_editor", "Leave editor", show=False),
        Binding("ctrl+l", "reload_flows", "Reload flows", show=False, priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.ref: PolicyRef | None = None
        self.original = HINT
        self.frame: pl.DataFrame | None = None
        self.generation = 0
        self.outcome: WhatIfOutcome | None = None
        self._debounce: Any = None
        self.runs = 0

    def compose(self) -> ComposeResult:
        yield Static(id="whatif-title", classes="screen-title")
        with Horizontal(id="whatif-main"):
            with Vertical(id="editor-pane"):
                yield YamlEditor(HINT, id="editor")
                yield Static("", id="problems")
            with Vertical(id="results-pane"):
                yield Static("", id="whatif-summary")
                yield DataTable(id="whatif-table", cursor_type="row", zebra_stripes=True)
        yield from self.chrome()

    @property
    def editor(self) -> YamlEditor:
        return self.query_one(YamlEditor)

    def on_mount(self) -> None:
        table = self.query_one("#whatif-table", DataTable)
        for col in ("CHANGE", "FLOWS", "SOURCE", "DESTINATION", "SERVICE", "NOW", "WAS"):
            table.add_column(col, key=col)
        self._title()
        self._open_target()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self._open_target()

    def _open_target(self) -> None:
        target = self.dash.whatif_target
        if target is not None and target != self.ref:
            self.dash.whatif_target = None
            self.open_policy(target)

    # ---- opening ---------------------------------------------------------------------------

    def open_policy(self, ref: PolicyRef) -> None:
        self.ref = ref
        self.load_document(ref)

    @work(thread=True, group="whatif-doc", exclusive=True, exit_on_error=False, description="reading the policy")
    def load_document(self, ref: PolicyRef) -> None:
        text = self.dash.control.document_text(ref)
        self.app.call_from_thread(self._set_document, ref, text)

    def _set_document(self, ref: PolicyRef, text: str | None) -> None:
        if text is None:
            self.notify(f"{ref}: no document found", severity="error")
            return
        self.ref = ref
        self.original = text
        self.editor.load_text(text)
        self.editor.set_problems({})
        self._title()
        self.editor.focus()
        self.action_preview()

    def action_open(self) -> None:
        from flowtui.tui.screens.text import PromptScreen

        def chosen(value: str | None) -> None:
            if value:
                ref = self.dash.find_policy(value)
                if ref is None:
                    self.notify(f"no policy {value!r}", severity="error")
                else:
                    self.open_policy(ref)

        prompt = PromptScreen("Open policy (name, ns/name or kind/name):", placeholder="deny-other-ingress")
        self.app.push_screen(prompt, chosen)

    # ---- previewing ------------------------------------------------------------------------

    def on_text_area_changed(self, _event: TextArea.Changed) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE, self.action_preview)
        self._title()

    def action_preview(self) -> None:
        self.generation += 1
        text = self.editor.text
        if not text.strip() or text == HINT:
            return
        self.query_one("#whatif-summary", Static).update(Text("replaying recorded flows…", "italic dim"))
        self.preview(self.generation, text)

    def action_reload_flows(self) -> None:
        self.frame = None
        self.action_preview()

    @work(thread=True, group="whatif", exclusive=True, exit_on_error=False, description="what-if replay")
    def preview(self, generation: int, text: str) -> None:
        if self.frame is None or self.dash.source.can_tail:
            self.frame = load_frame(self.dash.source)  # live sources: the newest flows each time
        outcome = run_whatif(self.frame, self.dash.control.resources(), text)
        self.post_message(WhatIfComputed(outcome, generation))

    def on_what_if_computed(self, message: WhatIfComputed) -> None:
        if message.generation != self.generation:
            return
        self.runs += 1
        outcome: WhatIfOutcome = message.result
        self.outcome = outcome
        self.editor.set_problems(problem_lines(outcome.problems))
        problems = self.query_one("#problems", Static)
        if outcome.problems:
            text = Text()
            for p in outcome.problems:
                where = f"line {p.line}" if p.line > 0 else "file"
                text.append(f"✗ {where}: ", "bold red")
                text.append(": ".join(x for x in (p.obj, p.path, p.message) if x) + "\n")
            problems.update(text)
            self.query_one("#whatif-summary", Static).update(Text("fix the problems to see what would change",
                                                                   "bold red"))
            self.query_one("#whatif-table", DataTable).clear()
            return
        problems.update(Text(f"✗ {outcome.error}", "bold red") if outcome.error else "")
        if outcome.report is not None:
            self._show_report(outcome)

    def _show_report(self, outcome: WhatIfOutcome) -> None:
        from flowtui.whatif.engine import hit_label

        report = outcome.report
        cats = report.categories
        summary = Text()
        summary.append(f"{report.flows:,} recorded flows replayed ({report.flow_classes:,} classes) in "
                       f"{outcome.seconds:.2f} s", "dim")
        if outcome.recorded_pods:
            summary.append(f"; {outcome.recorded_pods:,} pods the current set does not have taken from the "
                           "flows' recorded endpoints", "dim")
        summary.append("\n")
        for label, names in (("enforced: ", ("newly_denied", "newly_allowed", "attribution_changed")),
                             ("\npending (staged policies promoted): ",
                              ("pending_denied", "pending_allowed", "pending_attribution"))):
            summary.append(label, "bold")
            for i, name in enumerate(names):
                cat = cats[name]
                word = {"newly_denied": "newly denied", "newly_allowed": "newly allowed",
                        "attribution_changed": "other rule", "pending_denied": "denied",
                        "pending_allowed": "allowed", "pending_attribution": "other rule"}[name]
                summary.append(("  ·  " if i else "") + f"{word} ")
                summary.append(f"{cat.flows:,}", CATEGORY_STYLE.get(name, "") if cat.flows else "dim")
        if report.edits:
            summary.append("\nedits: " + "; ".join(report.edits), "italic")
        elif not any(c.flows for c in cats.values()):
            summary.append("\nno change: the edited set decides every recorded flow as the current one", "dim")
        self.query_one("#whatif-summary", Static).update(summary)
        table = self.query_one("#whatif-table", DataTable)
        with self.app.batch_update():
            table.clear()
            for name, cat in cats.items():
                for g in cat.groups:
                    table.add_row(
                        Text(cat.title, CATEGORY_STYLE.get(name, "")), f"{g.flows:,}", g.source, g.destination,
                        g.service, f"{g.after.verdict}: {hit_label(g.after.decided_by)}",
                        f"{g.before.verdict}: {hit_label(g.before.decided_by)}",
                    )

    # ---- applying --------------------------------------------------------------------------

    def _changeable(self) -> bool:
        control = self.dash.control
        if self.dash.read_only or not control.can_change:
            self.notify(f"cannot change policy: {control.why_not or 'read-only mode'} (the preview still works)",
                        severity="warning")
            return False
        if self.outcome is not None and self.outcome.problems:
            self.notify("fix the problems first", severity="error")
            return False
        return True

    def action_apply(self) -> None:
        self._confirm(staged=False)

    def action_stage(self) -> None:
        self._confirm(staged=True)

    def _confirm(self, staged: bool) -> None:
        if not self._changeable():
            return
        from flowtui.tui.screens.text import ConfirmScreen

        report = self.outcome.report if self.outcome else None
        detail = ""
        if report is not None:
            c = report.categories
            detail = (f"{c['newly_denied'].flows:,} flows newly denied, {c['newly_allowed'].flows:,} newly allowed, "
                      f"{c['attribution_changed'].flows:,} decided by another rule")
        question = ("Stage this policy (observe only: pending verdicts, nothing enforced)?" if staged
                    else "Apply this policy and enforce it now?")
        text = self.editor.text

        def done(ok: bool | None) -> None:
            if ok:
                self.apply(text, staged)

        self.app.push_screen(ConfirmScreen(question, detail), done)

    @work(thread=True, group="policy-change", exit_on_error=False, description="applying an edited policy")
    def apply(self, text: str, staged: bool) -> None:
        try:
            result = self.dash.control.apply_text(text, staged=staged)
        except ChangeRefused as exc:
            self.app.call_from_thread(self.notify, f"cannot change policy: {exc}", severity="warning")
            return
        self.post_message(PolicyApplied(result, staged))

    def on_policy_applied(self, message: PolicyApplied) -> None:
        result = message.result
        self.notify(("staged: " if message.staged else "") + result.message,
                    severity="information" if result.ok else "error", timeout=6)
        if result.ok and not message.staged:
            self.original = self.editor.text
        self._title()
        self.dash.refresh_status()
        self.action_preview()

    def action_discard(self) -> None:
        self.editor.load_text(self.original)
        self.editor.set_problems({})
        self._title()
        self.action_preview()

    def _title(self) -> None:
        text = Text(" What-if ", style="bold reverse")
        text.append(f"  {self.ref or 'no policy open'}", "bold")
        try:
            edited = self.editor.text != self.original
        except Exception:
            edited = False
        if edited:
            text.append("  ● edited", "yellow")
        if not self.dash.control.can_change or self.dash.read_only:
            text.append(f"  · preview only ({self.dash.control.why_not or 'read-only'})", "dim")
        self.query_one("#whatif-title", Static).update(text)

    def action_leave_editor(self) -> None:
        """Escape: focus the results, where the screen keys (1-5, ?, :) work again."""
        self.query_one("#whatif-table").focus()
