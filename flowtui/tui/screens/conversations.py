"""Conversations: the filtered stream aggregated by endpoint pair (termshark's view), refreshed
every few seconds for live sources; Enter shows the flows of a pair.

From a store with rollups the pairs come first (from `pair_hours`: fast at any size), then their
services, logged flows and policies (from the rows of the pairs shown only); a refresh keeps the
previous details of a pair until the new ones arrive."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from flowtui.tui import format as fmt
from flowtui.tui.filters import CompiledFilter
from flowtui.tui.messages import ConversationDetailsLoaded, ConversationsLoaded
from flowtui.tui.screens.base import DashboardScreen
from flowtui.tui.widgets.filter_bar import FilterBar

REFRESH = 2.0
COLUMNS = ("SOURCE", "DESTINATION", "FLOWS OK", "DENIED", "LOGGED", "PACKETS", "BYTES", "SERVICES", "POLICIES",
           "LAST SEEN")


class ConversationsScreen(DashboardScreen):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("enter", "show_flows", "Flows of pair"),
        Binding("r", "refresh", "Refresh"),
        Binding("x", "clear_filter", "Clear filter"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.rows: list[dict[str, Any]] = []
        self._armed = False

    def compose(self) -> ComposeResult:
        yield FilterBar()
        yield Static(id="conv-title", classes="screen-title")
        yield DataTable(id="conversations", cursor_type="row", zebra_stripes=True)
        yield from self.chrome()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for col in COLUMNS:
            table.add_column(col, key=col)
        self.watch(self.app, "filter", self._filter_changed, init=False)
        self.action_refresh()
        table.focus()

    def _filter_changed(self, _f: CompiledFilter) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        self.generation += 1
        self.load(self.generation, self.dash.filter.where)

    @work(thread=True, group="conversations", exclusive=True, exit_on_error=False,
          description="aggregating conversations")
    def load(self, generation: int, where: str | None) -> None:
        rows = self.dash.source.conversations(where)
        pending = any(r.get("_ids") for r in rows)
        self.post_message(ConversationsLoaded(rows, generation, complete=not pending))
        if pending:
            self.post_message(ConversationDetailsLoaded(self.dash.source.conversation_details(rows, where), generation))

    def on_conversations_loaded(self, message: ConversationsLoaded) -> None:
        if message.generation == self.generation:
            before = {(r["source"], r["destination"]): r for r in self.rows}
            for r in message.rows if not message.complete else ():
                old = before.get((r["source"], r["destination"]))
                if old is not None:  # until the new details arrive
                    r["services"], r["logged"], r["policies"] = old["services"], old["logged"], old["policies"]
            self.rows = message.rows
            self._fill()
        if message.complete:
            self._loaded()

    def on_conversation_details_loaded(self, message: ConversationDetailsLoaded) -> None:
        if message.generation == self.generation:
            for r in self.rows:
                r["services"], r["logged"], r["policies"] = message.details.get(
                    (r["source"], r["destination"]), ("", 0, ""))
            self._fill()
        self._loaded()

    def _loaded(self) -> None:
        self._armed = False
        if self.dash.source.can_tail and not self._armed:
            self._armed = True
            self.set_timer(REFRESH, self._again)

    def _again(self) -> None:
        if self.is_current:
            self.load(self.generation, self.dash.filter.where)
        else:
            self._armed = False

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        if not self._armed:
            self.action_refresh()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row
        with self.app.batch_update():
            table.clear()
            for r in self.rows:
                denied = int(r["denied"] or 0)
                table.add_row(
                    Text(str(r["source"]), "red" if denied and not r["allowed"] else ""),
                    Text(str(r["destination"])),
                    Text(f"{int(r['allowed'] or 0):,}", "green"),
                    Text(f"{denied:,}", "bold red" if denied else "dim"),
                    Text(f"{int(r['logged'] or 0):,}", "yellow"),
                    fmt.count(r["packets"]),
                    fmt.size(r["bytes"]),
                    str(r["services"] or "")[:40],
                    str(r["policies"] or "")[:60],
                    fmt.when(r["last_seen"]),
                )
            if self.rows:
                table.move_cursor(row=min(keep, len(self.rows) - 1))
        title = Text(" Conversations ", style="bold reverse")
        counted = ("5-tuples per time bucket, both nodes merged" if any("_ids" in r for r in self.rows)
                   else "5-tuples")  # the rollups' count (`flowtui query conversations`'s), or the stream's
        title.append(f"  flows ({counted}) by endpoint pair and final verdict · {len(self.rows):,} pairs · "
                     f"filter: {self.dash.filter.describe()}")
        self.query_one("#conv-title", Static).update(title)

    def action_filter(self) -> None:
        self.query_one(FilterBar).open(self.dash.filter.text)

    def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
        self.dash.set_filter(message.compiled)
        self.query_one(DataTable).focus()

    def action_clear_filter(self) -> None:
        self.dash.set_filter_text("")

    def action_show_flows(self) -> None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row >= len(self.rows):
            return
        r = self.rows[table.cursor_row]
        self.dash.set_filter_text(f'from:"{r["source"]}" to:"{r["destination"]}"')
        self.app.switch_mode("flows")

    def on_data_table_row_selected(self, _event: DataTable.RowSelected) -> None:
        self.action_show_flows()
