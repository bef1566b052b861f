"""The `/` filter bar (k9s): free text and `key:value` terms, `/!` to negate; compiled live."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input, Static

from flowtui.tui.filters import CompiledFilter, FilterError, compile_filter

SUGGESTIONS = [
    "verdict:deny", "verdict:allow", "verdict:log", "!verdict:allow", "ns:production", "ns:staging",
    "pod:production/frontend", "from-pod:", "to-pod:", "label:tier=frontend", "port:", "proto:tcp", "proto:udp",
    "proto:icmp", "policy:", "tier:", "rule:-1", "to:node:", "from:external:", "node:",
]


class FilterBar(Vertical):
    """Hidden until `/`; Enter applies, Escape closes (and keeps the filter)."""

    DEFAULT_CSS = """
    FilterBar { height: auto; display: none; dock: top; }
    FilterBar.open { display: block; }
    FilterBar Input { border: tall $accent; }
    FilterBar Input.-invalid { border: tall $error; }
    FilterBar #filter-error { color: $error; height: auto; padding: 0 1; }
    """

    BINDINGS = [Binding("escape", "close", "Close filter", show=False)]

    class Applied(Message):
        def __init__(self, compiled: CompiledFilter) -> None:
            super().__init__()
            self.compiled = compiled

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: verdict:deny ns:production port:9000 …  (! negates, ? help)",
                    id="filter-input", suggester=SuggestFromList(SUGGESTIONS, case_sensitive=False))
        yield Static("", id="filter-error")

    def open(self, text: str | None = None) -> None:
        self.add_class("open")
        field = self.query_one(Input)
        if text is not None:
            field.value = text
            field.cursor_position = len(text)
        field.focus()

    def action_close(self) -> None:
        self.remove_class("open")
        self.screen.focus_next()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        error = self.query_one("#filter-error", Static)
        try:
            compiled = compile_filter(event.value)
        except FilterError as exc:
            event.input.add_class("-invalid")
            error.update(str(exc))
            return
        event.input.remove_class("-invalid")
        error.update("" if compiled.empty else f"= {compiled.describe()}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            compiled = compile_filter(event.value)
        except FilterError as exc:
            self.query_one("#filter-error", Static).update(str(exc))
            self.app.bell()
            return
        self.post_message(self.Applied(compiled))
        self.action_close()
