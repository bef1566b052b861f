"""The `:` command bar (k9s): `:pol`, `:whatif deny-db`, `:filter verdict:deny`, `:q`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Input

WORDS = ["flows", "conversations", "policies", "whatif ", "sql ", "filter ", "readonly", "help", "quit"]


class CommandScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    CommandScreen { align: center bottom; background: $background 30%; }
    CommandScreen Input { dock: bottom; margin-bottom: 2; border: tall $accent; width: 100%; }
    """

    def compose(self) -> ComposeResult:
        yield Input(placeholder=":flows :conv :pol :whatif NAME :sql :filter TEXT :help :q", id="command-input",
                    suggester=SuggestFromList(WORDS, case_sensitive=False))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))

    def action_cancel(self) -> None:
        self.dismiss(None)
