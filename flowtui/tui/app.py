"""The flowtui dashboard: one App, five screens (modes), a status poll, the `?`/`:` habits.

    app = make_app(source, control)      # what `flowtui tui` and `flowtui demo` run, and tests drive
    app.run()

The App holds what the screens share: the data source, the policy control, the filter, the
latest status. Screens live in `screens/`, widgets in `widgets/`; everything slow runs in
thread workers whose results come back as messages (`messages.py`); worker failures are
reported in one place (`on_worker_state_changed`).
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from flowtui.tui.control import PolicyControl, PolicyRef
from flowtui.tui.dashboard import Dashboard
from flowtui.tui.filters import NOTHING, CompiledFilter, FilterError, compile_filter
from flowtui.tui.messages import StatusUpdated
from flowtui.tui.screens.conversations import ConversationsScreen
from flowtui.tui.screens.flows import FlowsScreen
from flowtui.tui.screens.policies import PoliciesScreen
from flowtui.tui.screens.sql import SqlScreen
from flowtui.tui.screens.whatif import WhatIfScreen
from flowtui.tui.sources import DataSource, SourceStatus
from flowtui.tui.widgets.status_bar import StatusBar

STATUS_INTERVAL = 1.0


def freeze_heap() -> None:
    """Everything allocated so far lives as long as the app: keep it out of the garbage
    collector's full passes, which otherwise pause the UI for tens of milliseconds (measured:
    gen-2 pauses of ~80 ms with the collector in the process, ~15 ms after this)."""
    gc.collect()
    gc.freeze()
SCREENS = {"flows": "Flows", "conversations": "Conversations", "policies": "Policies", "whatif": "What-if",
           "sql": "SQL"}
SHORT = {"flows": "Flows", "conversations": "Convs", "policies": "Policies", "whatif": "What-if", "sql": "SQL"}


def typing_in(widget: object) -> bool:
    """Whether keys typed now are text: an editable TextArea or an Input has the focus."""
    from textual.widgets import Input, TextArea

    return isinstance(widget, Input) or (isinstance(widget, TextArea) and not widget.read_only)


class FlowtuiApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "flowtui"
    MODES = {
        "flows": FlowsScreen,
        "conversations": ConversationsScreen,
        "policies": PoliciesScreen,
        "whatif": WhatIfScreen,
        "sql": SqlScreen,
    }
    DEFAULT_MODE = "flows"
    # Screen keys: `1`-`5` everywhere but while typing in an editor or an input (where they are
    # text: `check_action` lets the key through); alt+1..5 and F1..F5 everywhere, editors included.
    BINDINGS = [
        *(Binding(str(n), f"screen('{mode}')", SHORT[mode], priority=True) for n, mode in enumerate(SCREENS, 1)),
        *(Binding(f"alt+{n},f{n}", f"goto('{mode}')", SHORT[mode], show=False, priority=True)
          for n, mode in enumerate(SCREENS, 1)),
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command", "Cmd"),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    filter: reactive[CompiledFilter] = reactive(NOTHING, always_update=True)

    def __init__(self, source: DataSource, control: PolicyControl, *, read_only: bool = False,
                 stream_capacity: int = 100_000, queries_dir: Path | None = None) -> None:
        super().__init__()
        self.source = source
        self.control = control
        self.read_only = read_only
        self.stream_capacity = stream_capacity
        self.queries_dir = queries_dir
        self.status: SourceStatus | None = None
        self.whatif_target: PolicyRef | None = None
        self._errors: dict[str, float] = {}
        self.status_polls = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.sub_title = self.source.label
        self.poll_status()
        if not self.is_headless:  # (tests share one interpreter: leave its heap alone there)
            freeze_heap()

    def poll_status(self) -> None:
        self.run_worker(self._status_worker, thread=True, group="status", exclusive=True, exit_on_error=False,
                        description="reading the status")

    def _status_worker(self) -> None:
        self.control.refresh_wireguard()
        self.post_message(StatusUpdated(self.source.status()))

    def on_status_updated(self, message: StatusUpdated) -> None:
        self.status = message.status
        self.status_polls += 1
        self.refresh_status()
        self.set_timer(STATUS_INTERVAL, self.poll_status)  # re-armed: polls never overlap

    def refresh_status(self) -> None:
        extra = ""
        screen = self.screen
        if hasattr(screen, "status_extra"):
            extra = screen.status_extra()
        if self.read_only:
            extra = ("READ-ONLY " + extra).strip()
        for bar in screen.query(StatusBar):
            bar.show(self.status, self.control.describe(), extra)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker failures are reported (rate-limited per kind of failure)."""
        worker = event.worker
        if event.state == WorkerState.ERROR:
            error = worker.error
            key = f"{worker.group}:{type(error).__name__}"
            now = time.monotonic()
            if now - self._errors.get(key, 0.0) > 10.0:
                self._errors[key] = now
                self.notify(f"{worker.description or worker.name}: {error}", title="error", severity="error",
                            timeout=8)
            if worker.group == "status":
                self.set_timer(STATUS_INTERVAL * 3, self.poll_status)

    # ---- what screens share ----------------------------------------------------------------

    def set_filter(self, compiled: CompiledFilter) -> None:
        self.filter = compiled

    def set_filter_text(self, text: str) -> bool:
        try:
            self.filter = compile_filter(text)
        except FilterError as exc:
            self.notify(str(exc), severity="error")
            return False
        return True

    def open_whatif(self, ref: PolicyRef) -> None:
        self.whatif_target = ref
        self.switch_mode("whatif")
        screen = self.screen
        if isinstance(screen, WhatIfScreen):
            screen.on_screen_resume()

    def find_policy(self, text: str) -> PolicyRef | None:
        """`name`, `ns/name`, `gnp/name`, `np/ns/name` -> the policy."""
        from flowtui.tui.filters import KIND_PREFIX

        parts = text.strip().split("/")
        kind = KIND_PREFIX.get(parts[0].lower()) if len(parts) > 1 else None
        if kind is not None:
            parts = parts[1:]
        name, ns = parts[-1], parts[0] if len(parts) == 2 else None
        for p in self.control.resources().policies:
            if p.name == name and (ns is None or p.namespace == ns) and (kind is None or p.kind == kind):
                return PolicyRef(p.kind, p.namespace, p.name)
        return None

    # ---- keys ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("screen", "goto") and self.screen.is_modal:
            return False  # a dialog (help, `:`, confirm) is open: its keys are its own
        if action == "screen" and typing_in(self.focused):
            return False  # the digit is text here: the focused editor gets the key
        return True

    def action_screen(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_goto(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_help(self) -> None:
        from flowtui.tui.screens.help import HelpScreen

        # One line per action: `1  alt+1  f1  Flows`, the keys that do the same thing together.
        keys: dict[tuple[str, str], list[str]] = {}
        for _key, active in self.active_bindings.items():
            b = active.binding
            if b.description:
                shown = keys.setdefault((b.action.replace("goto(", "screen("), b.description), [])
                if (display := self.get_key_display(b)) not in shown:
                    shown.append(display)
        seen = {"  ".join(shown): description for (_action, description), shown in keys.items()}
        name = SCREENS.get(self.current_mode, self.screen.__class__.__name__)
        self.push_screen(HelpScreen(sorted(seen.items()), name))

    def action_command(self) -> None:
        from flowtui.tui.screens.command import CommandScreen

        def run(text: str | None) -> None:
            if text is not None:
                self.run_command(text)

        self.push_screen(CommandScreen(), run)

    def run_command(self, text: str) -> None:
        """k9s-style `:` commands."""
        word, _, arg = text.strip().partition(" ")
        word = word.lower()
        arg = arg.strip()
        modes = {"f": "flows", "flows": "flows", "flow": "flows", "c": "conversations", "conv": "conversations",
                 "conversations": "conversations", "p": "policies", "pol": "policies", "policies": "policies",
                 "policy": "policies", "w": "whatif", "whatif": "whatif", "what-if": "whatif", "s": "sql",
                 "sql": "sql"}
        if word in ("q", "quit", "exit", "q!"):
            self.exit()
        elif word in ("help", "h", "?"):
            self.action_help()
        elif word in ("filter", "/"):
            if self.set_filter_text(arg):
                self.switch_mode("flows") if self.current_mode not in ("flows", "conversations") else None
        elif word == "readonly":
            self.read_only = True
            self.refresh_status()
            self.notify("read-only: policy changes are off")
        elif word in modes:
            if modes[word] == "whatif" and arg:
                ref = self.find_policy(arg)
                if ref is None:
                    self.notify(f"no policy {arg!r}", severity="error")
                    return
                self.open_whatif(ref)
                return
            self.switch_mode(modes[word])
            if modes[word] == "sql" and arg and isinstance(self.screen, SqlScreen):
                self.screen.action_run(arg if " " in arg else self.screen.queries.get(arg, ("", arg))[1])
        elif word:
            self.notify(f"unknown command :{word} (try :help)", severity="warning")

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, title in SCREENS.items():
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen", lambda m=mode: self.switch_mode(m))
        yield SystemCommand("Clear filter", "Show all flows", lambda: self.set_filter_text(""))
        yield SystemCommand("Show denied flows", "Filter verdict:deny", lambda: self.set_filter_text("verdict:deny"))
        yield SystemCommand("Help", "Keys, commands and the filter language", self.action_help)
        if not self.read_only:
            yield SystemCommand("Read-only mode", "Turn policy changes off", lambda: self.run_command("readonly"))
        if self.control.has_policies:
            for p in self.control.resources().policies:
                ref = PolicyRef(p.kind, p.namespace, p.name)
                yield SystemCommand(f"What-if: {ref}", "Edit this policy and replay the recorded flows",
                                    lambda r=ref: self.open_whatif(r))


def make_app(source: DataSource, control: PolicyControl | None = None, *, read_only: bool = False,
             stream_capacity: int = 100_000, queries_dir: Path | None = None) -> FlowtuiApp:
    """The one factory the CLI and the tests share."""
    control = control or PolicyControl()
    if read_only:
        control.read_only = True
    app = FlowtuiApp(source, control, read_only=read_only, stream_capacity=stream_capacity,
                     queries_dir=queries_dir)
    _dashboard: Dashboard = app  # mypy: the app gives screens what `Dashboard` promises them
    return app


# The dashboard shares its process with the collector's threads and the enforcer: a thread back
# from a system call waits up to the GIL switch interval (5 ms by default) for the running one.
# A live toggle makes ~20 such calls (index write, netlink batch, applied record): measured 1.3 ms
# alone, 108 ms beside two busy threads at 5 ms, 27 ms at 0.5 ms. 1 ms keeps keypresses and
# toggles prompt at little cost to throughput.
SWITCH_INTERVAL_S = 0.001


def run_app(app: FlowtuiApp) -> None:
    """Run the dashboard with a short GIL switch interval (restored afterwards)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        app.run()
    finally:
        sys.setswitchinterval(previous)
