"""`?`: every key of the screen you came from, the `:` commands, and the filter language."""

from __future__ import annotations

from rich.markdown import Markdown
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from flowtui.tui.filters import HELP as FILTER_HELP

COMMANDS = (
    (":flows  :f", "live flows"),
    (":conversations  :conv  :c", "flows aggregated by endpoint pair"),
    (":policies  :pol  :p", "tiers, policies, rules, hits; toggle live"),
    (":whatif [POLICY]  :w", "edit a policy and replay the recorded flows"),
    (":sql [FILE]  :s", "SQL over the flow store"),
    (":filter TEXT  :/ TEXT", "set the filter (empty clears it)"),
    (":readonly", "no policy changes from now on"),
    (":help", "this screen"),
    (":quit  :q", "leave (the demo cleans up)"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, bindings: list[tuple[str, str]], screen_name: str) -> None:
        super().__init__()
        self.keys = bindings
        self.screen_name = screen_name

    def compose(self) -> ComposeResult:
        keys = Table(title=f"Keys on {self.screen_name}", show_header=False, box=None, padding=(0, 2))
        keys.add_column(style="bold cyan")
        keys.add_column()
        for key, what in self.keys:
            keys.add_row(key, what)
        keys.add_row("ctrl+p", "command palette (every action, searchable)")
        keys.add_row("alt+1…alt+5, F1…F5", "switch screens from inside an editor or input (where 1–5 are text)")
        commands = Table(title="Commands (type : first, as in k9s)", show_header=False, box=None, padding=(0, 2))
        commands.add_column(style="bold cyan")
        commands.add_column()
        for cmd, what in COMMANDS:
            commands.add_row(cmd, what)
        with Vertical(classes="dialog wide"):
            yield Label("flowtui help", classes="dialog-title")
            with VerticalScroll():
                yield Static(keys)
                yield Static("")
                yield Static(commands)
                yield Static("")
                yield Static(Markdown("## The `/` filter\n" + FILTER_HELP))
            yield Label("esc to close", classes="dialog-hint")
