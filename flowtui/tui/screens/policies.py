"""Policies: tiers and policies in evaluation order with per-rule hit counts and last hit, unused
rules marked; a policy can be turned off and on live (with confirmation), the change enforced
on every node in one nftables transaction each."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from enforcer.ruleids import RuleRef
from flowtui.tui import format as fmt
from flowtui.tui import queries
from flowtui.tui.control import ChangeRefused, PolicyRef
from flowtui.tui.messages import PoliciesLoaded, PolicyToggled
from flowtui.tui.policyview import PolicyLine, activity_by_rule, policy_lines
from flowtui.tui.screens.base import DashboardScreen

REFRESH = 2.0
COLUMNS = ("TIER / POLICY / RULE", "ORDER", "STATE", "DIR", "ACTION", "HITS", "LAST HIT", "")
ACTION_STYLE = {"Allow": "green", "Deny": "red", "Log": "yellow", "Pass": "blue"}


def load_lines(dash: Any) -> tuple[list[PolicyLine], str]:
    """Everything the policies table shows (runs in a worker thread)."""
    control, source = dash.control, dash.source
    resources = control.resources()
    refs = control.rule_refs()
    notes = []
    try:
        if not refs:
            refs = _store_refs(source)
        events = {int(r["rule_id"]): (int(r["hits"]), r["last_hit"])
                  for r in source.query(queries.rule_activity_sql(
                      source.stream_kind, source.relations())).to_pylist()}
    except Exception as exc:  # a recording without these tables: show the policies anyway
        events = {}
        notes.append(f"no activity: {exc}")
    counters = None
    try:
        counters = control.kernel_hits()
        if counters is not None:
            notes.append("hits: live nftables counters")
    except Exception as exc:
        notes.append(f"kernel counters unavailable: {exc}")
    if counters is None:
        try:
            stored = {int(r["rule_id"]): int(r["packets"]) for r in source.query(queries.RULE_COUNTERS_SQL).to_pylist()}
            if stored:
                counters = stored
                notes.append("hits: nftables counters stored by the collector")
        except Exception:
            pass
    if counters is None:
        notes.append("hits: logged events")
    activity = activity_by_rule(refs, counters, events)
    return policy_lines(resources, activity), "; ".join(notes)


def _store_refs(source: Any) -> dict[int, RuleRef]:
    out = {}
    for r in source.query(queries.RULES_SQL).to_pylist():
        out[int(r["id"])] = RuleRef(int(r["id"]), r["kind"], r["namespace"], r["name"], r["tier"],
                                    int(r["revision"] or 0), r["direction"], int(r["rule"]), r["action"])
    return out


class PoliciesScreen(DashboardScreen):
    BINDINGS = [
        Binding("space,t", "toggle_policy", "Enable/disable"),
        Binding("e,w", "whatif", "What-if edit"),
        Binding("u", "unused", "Unused only"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[PolicyLine] = []
        self.shown: list[PolicyLine] = []
        self.unused_only = False
        self.note = ""
        self._armed = False
        self.toggles = 0

    def compose(self) -> ComposeResult:
        yield Static(id="pol-title", classes="screen-title")
        yield DataTable(id="policies", cursor_type="row")
        yield from self.chrome()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        self.action_refresh()
        table.focus()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if not self._armed:
            self.action_refresh()

    def action_refresh(self) -> None:
        self.load()

    @work(thread=True, group="policies", exclusive=True, exit_on_error=False, description="reading policies and hits")
    def load(self) -> None:
        lines, note = load_lines(self.dash)
        self.post_message(PoliciesLoaded(lines, note))

    def on_policies_loaded(self, message: PoliciesLoaded) -> None:
        self._armed = False
        self.lines, self.note = message.rows, message.note
        self._fill()
        if self.dash.source.can_tail:
            self._armed = True
            self.set_timer(REFRESH, self._again)

    def _again(self) -> None:
        if self.is_current:
            self.load()
        else:
            self._armed = False

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row
        lines = [ln for ln in self.lines if not self.unused_only or ln.level in ("tier", "policy") or ln.unused]
        self.shown = lines
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with self.app.batch_update():
            table.clear()
            for ln in lines:
                table.add_row(*self._cells(ln, now))
            if lines:
                table.move_cursor(row=min(keep, len(lines) - 1))
        unused = sum(1 for ln in self.lines if ln.unused)
        title = Text(" Policies ", style="bold reverse")
        title.append(f"  in evaluation order · {unused} unused rules")
        if self.unused_only:
            title.append(" (showing unused only: u)", "yellow")
        if not self.dash.control.can_change:
            title.append(f" · read-only: {self.dash.control.why_not}", "dim")
        title.append(f" · {self.note}", "dim")
        self.query_one("#pol-title", Static).update(title)

    def _cells(self, ln: PolicyLine, now: dt.datetime) -> list[Any]:
        act = ln.activity
        hits = Text(f"{act.hits:,}", "bold" if act.hits else "dim")
        if act.last is None:
            last = Text("never", "dim")
        elif self.dash.source.mode == "replay":  # a recording: when, not how long ago
            last = Text(act.last.strftime("%H:%M:%S"))
        else:
            last = Text(_ago(act.last, now))
        action = Text(ln.action, ACTION_STYLE.get(ln.action, ""))
        if ln.level == "tier":
            return [Text(ln.text, "bold magenta"), ln.order, "", "", "", "", "", ""]
        if ln.level == "policy":
            state = Text(ln.state, {"disabled": "bold red", "staged": "bold yellow"}.get(ln.state, "green"))
            name = Text("  " + ln.text, "bold strike" if ln.state == "disabled" else "bold")
            return [name, ln.order, state, "", "", hits, last, ""]
        mark = Text("unused", "bold red") if ln.unused else Text("")
        if ln.level == "eot":
            return [Text(f"      {ln.text}", "italic"), "", "", ln.direction, action, hits, last, mark]
        if ln.level == "profile":
            return [Text(f"  {ln.text}", "italic"), "", "", ln.direction, action, hits, last, ""]
        style = "dim" if ln.state == "disabled" else ""
        return [Text(f"      #{ln.rule} {ln.text}", style), "", "", ln.direction, action, hits, last, mark]

    def current(self) -> PolicyLine | None:
        table = self.query_one(DataTable)
        if not self.shown or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def action_unused(self) -> None:
        self.unused_only = not self.unused_only
        self._fill()

    def action_toggle_policy(self) -> None:
        line = self.current()
        if line is None or line.ref is None or line.level == "eot":
            self.notify("select a policy (or one of its rules) to turn it off or on", severity="warning")
            return
        control = self.dash.control
        if not control.can_change or self.dash.read_only:
            self.notify(f"cannot change policy: {control.why_not or 'read-only mode'}", severity="warning")
            return
        ref = line.ref
        policy = next((ln for ln in self.lines if ln.level == "policy" and ln.ref == ref), line)
        disable = policy.state != "disabled"
        from flowtui.tui.screens.text import ConfirmScreen

        verb = "Disable" if disable else "Enable"
        detail = ("Every node gets the change in one nftables transaction; flows it decided are decided by the "
                  "next policy, or the end of the tier." if disable else "The policy is enforced again.")

        def done(ok: bool | None) -> None:
            if ok:
                self.toggle(ref, disable)

        self.app.push_screen(ConfirmScreen(f"{verb} {ref}?", detail), done)

    @work(thread=True, group="policy-change", exclusive=False, exit_on_error=False, description="toggling a policy")
    def toggle(self, ref: PolicyRef, disable: bool) -> None:
        try:
            result = self.dash.control.set_disabled(ref, disable)
        except ChangeRefused as exc:
            self.app.call_from_thread(self.notify, f"cannot change policy: {exc}", severity="warning")
            return
        self.post_message(PolicyToggled(result))

    def on_policy_toggled(self, message: PolicyToggled) -> None:
        self.toggles += 1
        result = message.result
        self.notify(result.message, severity="information" if result.ok else "error", timeout=6)
        self.dash.refresh_status()
        self.load()

    def action_whatif(self) -> None:
        line = self.current()
        if line is None or line.ref is None:
            self.notify("select a policy to edit", severity="warning")
            return
        self.dash.open_whatif(line.ref)


def _ago(when: dt.datetime, now: dt.datetime) -> str:
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return fmt.when(when)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h ago"
    return when.strftime("%Y-%m-%d")
