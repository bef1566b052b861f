"""Live flows: the streaming table, the `/` filter, follow and pause, and the way to a flow's detail.

Two views (`e` switches): *flows*, the default, one row per flow (5-tuple but for the source
port, verdict, policy and rule) with its packets, rate and last seen updated in place, so a
flood is one busy row; and *events*, one row per logged packet, as the kernel logged them.

Data path: on a filter or view change a thread worker loads the newest matching flows
(`recent_flows`) or rows (`recent`): a first page (`FIRST_PAGE`: fast on any store, the newest
rows are found by time) and, when there is more, the `RECENT_LIMIT` newest, which replace it; then,
for live sources, a tail worker polls every `TAIL_INTERVAL` seconds and posts what arrived as one
`FlowsArrived` message (a batch per poll, never a message per row). The next poll is armed only
when the message has been handled, so polls never overlap and a slow UI slows the polling, not
the reverse. Paused, arriving batches are held (bounded) and shown on resume.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from flowtui.tui.filters import CompiledFilter
from flowtui.tui.flowtable import KEY
from flowtui.tui.messages import FlowsArrived
from flowtui.tui.screens.base import DashboardScreen
from flowtui.tui.widgets.filter_bar import FilterBar
from flowtui.tui.widgets.stream.flow_stream import FlowHeader, FlowStream

TAIL_INTERVAL = 0.15


def _events(rows: pa.Table) -> int:
    """Events in a batch: its rows, or for rows reduced per flow, what they count."""
    if "events" in rows.column_names:
        return int(pc.sum(rows.column("events")).as_py() or 0)
    return int(rows.num_rows)


FIRST_PAGE = 200
RECENT_LIMIT = 5_000
PAUSED_LIMIT = 200_000


class FlowsScreen(DashboardScreen):
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("exclamation_mark", "filter_not", "Filter NOT", show=False),
        Binding("e", "toggle_view", "Flows/Events"),
        Binding("o", "toggle_order", "Busiest first", show=False),
        Binding("f", "toggle_follow", "Follow"),
        Binding("space,p", "toggle_pause", "Pause"),
        Binding("s", "show_sql", "Show SQL", show=False),
        Binding("c", "app.switch_mode('conversations')", "Conversations", show=False),
        Binding("x", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.paused = False
        self.held: list[pa.Table] = []
        self.held_rows = 0
        self._tail_armed = False
        self.loads = 0
        self.view = "flows"  # or "events"
        self.busiest = False  # flows view: ranked by packets instead of in the order first seen

    def compose(self) -> ComposeResult:
        yield FilterBar()
        yield Static(id="flows-title", classes="screen-title")
        yield FlowHeader()
        yield FlowStream(capacity=self.dash.stream_capacity, view=self.view, id="stream")
        yield from self.chrome()

    @property
    def stream(self) -> FlowStream:
        return self.query_one(FlowStream)

    def on_mount(self) -> None:
        self.watch(self.app, "filter", self._filter_changed, init=False)
        self.watch(self.stream, "follow", lambda _follow: self._title(), init=False)
        self.reload()
        self.stream.focus()

    # ---- loading ---------------------------------------------------------------------------

    def _filter_changed(self, _new: CompiledFilter) -> None:
        self.reload()

    def reload(self) -> None:
        self.generation += 1
        self._title()
        self.load_recent(self.generation, self.dash.filter.where, self.view, self.dash.filter.endpoint_needs)

    @work(thread=True, group="flows-load", exclusive=True, exit_on_error=False, description="loading the newest flows")
    def load_recent(self, generation: int, where: str | None, view: str, needs: tuple[str, ...] = ()) -> None:
        for limit in (FIRST_PAGE, RECENT_LIMIT):
            if view == "flows":
                rows = self.dash.source.recent_flows(where, limit, needs)
                found = rows.num_rows and len(set(zip(*(rows.column(k).to_pylist() for k in KEY), strict=True)))
            else:
                rows = self.dash.source.recent(where, limit, needs)
                found = rows.num_rows
            self.post_message(FlowsArrived(rows, reset=True, generation=generation, reduced=view == "flows"))
            if found < limit:  # that was everything
                return

    @work(thread=True, group="flows-tail", exclusive=True, exit_on_error=False, description="polling new flows")
    def tail(self, generation: int, where: str | None, view: str) -> None:
        reduced = view == "flows"  # reduced here, in the worker, not on the UI's thread
        try:
            rows = self.dash.source.tail_flows(where) if reduced else self.dash.source.tail(where)
        except Exception:
            self.post_message(FlowsArrived(pa.table({}), generation=generation))  # keep polling
            raise
        self.post_message(FlowsArrived(rows if rows is not None else pa.table({}), generation=generation,
                                       reduced=reduced))

    def _arm_tail(self) -> None:
        if self._tail_armed or not self.dash.source.can_tail:
            return
        self._tail_armed = True
        self.set_timer(TAIL_INTERVAL, self._poll)

    def _poll(self) -> None:
        self.tail(self.generation, self.dash.filter.where, self.view)

    def on_flows_arrived(self, message: FlowsArrived) -> None:
        if not message.reset:
            self._tail_armed = False
        if message.generation != self.generation:
            self._arm_tail()
            return
        if message.reset:
            self.loads += 1
            self.held, self.held_rows = [], 0
            self.stream.set_view(self.view)
            if self.view == "flows":
                self.stream.set_busiest_first(self.busiest)
            self.query_one(FlowHeader).view = self.view
            self.stream.add(message.rows, reduced=message.reduced)
        elif message.rows.num_rows:
            if self.paused:
                self.held.append(message.rows)
                self.held_rows += _events(message.rows)
                while self.held_rows > PAUSED_LIMIT and len(self.held) > 1:
                    self.held_rows -= _events(self.held.pop(0))
            else:
                self.stream.add(message.rows, reduced=message.reduced)
        self._title()
        self._arm_tail()

    # ---- actions ---------------------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one(FilterBar).open(self.dash.filter.text)

    def action_filter_not(self) -> None:
        text = self.dash.filter.text.strip()
        self.query_one(FilterBar).open(text if text.startswith("!") else "!" + text)

    def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
        self.dash.set_filter(message.compiled)
        self.stream.focus()

    def action_clear_filter(self) -> None:
        self.dash.set_filter_text("")

    def action_toggle_view(self) -> None:
        """Flows (one row per flow, counts in place) <-> events (one row per logged packet)."""
        self.view = "events" if self.view == "flows" else "flows"
        self.reload()

    def action_toggle_order(self) -> None:
        """Flows view: busiest flows first (by packets, re-ranked with every batch) <-> first seen."""
        if self.view != "flows":
            self.notify("o ranks flows: switch to the flows view first (e)", severity="warning")
            return
        self.busiest = not self.busiest
        self.stream.set_busiest_first(self.busiest)
        self._title()

    def action_toggle_follow(self) -> None:
        self.stream.follow = not self.stream.follow
        self._title()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            for table in self.held:  # a view change empties `held`: these are of the current view
                self.stream.add(table, reduced=self.view == "flows")
            self.held, self.held_rows = [], 0
        self._title()
        self.dash.refresh_status()

    def action_show_sql(self) -> None:
        from flowtui.tui.queries import stream_sql
        from flowtui.tui.screens.text import TextScreen

        f = self.dash.filter
        kind = self.dash.source.stream_kind
        body = (f"-- the filter {f.text!r} as SQL over stream rows\n{f.sql('stream')}\n\n"
                f"-- where `stream` is ({kind}):\n{stream_sql(kind).strip()}")
        self.app.push_screen(TextScreen("Filter as SQL", body, language="sql"))

    def on_flow_stream_selected(self, message: FlowStream.Selected) -> None:
        from flowtui.tui.screens.detail import DetailScreen

        self.app.push_screen(DetailScreen(message.row))

    def status_extra(self) -> str:
        return f"PAUSED +{self.held_rows:,}" if self.paused else ""

    def _title(self) -> None:
        f = self.dash.filter
        text = Text(" Flows " if self.view == "flows" else " Events ", style="bold reverse")
        text.append(f"  filter: {f.describe()}", "bold" if not f.empty else "dim")
        stream = self.stream
        what = "flows" if self.view == "flows" else "events"
        text.append(f"  · {len(stream.ring):,} {what} held (of {stream.ring.capacity:,})", "dim")
        text.append("  e: " + ("events" if self.view == "flows" else "flows"), "dim")
        if self.paused:
            text.append(f"  ⏸ PAUSED, {self.held_rows:,} new", "bold yellow")
        elif stream.busiest_first:
            text.append("  ▲ busiest first (o: as first seen)", "green")
        elif stream.follow:
            text.append("  ▼ following", "green")
        else:
            text.append("  (not following: f)", "dim")
        self.query_one("#flows-title", Static).update(text)

    def selected_row(self) -> dict[str, Any] | None:
        return self.stream.selected
