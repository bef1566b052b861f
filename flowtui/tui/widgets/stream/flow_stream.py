"""The live flow table: a line-API scroll view that renders only the rows on screen.

Two views of the same stream: `flows` (the default) holds a `FlowTable`, one row per flow whose
counts are updated in place; `events` holds a `FlowRing` (Arrow batches, bounded), one row per
logged packet. `render_line(y)` turns the one row at that line into a strip, so the cost of a
repaint depends on the height of the terminal, not on how many rows are held or how fast they
arrive. Allowed, denied, logged and passed rows have their own colours. `follow` keeps the cursor
and the view on the newest row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from flowtui.tui import format as fmt
from flowtui.tui.flowtable import FlowTable
from flowtui.tui.ring import FlowRing

VIEWS = {"flows": fmt.FLOW_COLUMNS, "events": fmt.COLUMNS}

VERDICT_STYLES = {v: Style.parse(s) for v, s in fmt.ROW_STYLE.items()}
VERDICT_CELL = {v: Style.parse(s) for v, s in fmt.VERDICT_STYLE.items()}
CURSOR = Style(reverse=True)
DIM = Style(dim=True)


class FlowHeader(Widget):
    """Column titles, laid out as the stream lays out its rows."""

    DEFAULT_CSS = "FlowHeader { height: 1; }"

    view: reactive[str] = reactive("flows")

    def render_line(self, y: int) -> Strip:
        cols = fmt.layout(self.size.width - 1, VIEWS[self.view])
        text = " ".join(title.ljust(width)[:width] for title, width, _f in cols)
        return Strip([Segment(text, Style(bold=True, underline=True))]).crop_extend(0, self.size.width, None)


class FlowStream(ScrollView, can_focus=True):
    """Stream rows, newest at the bottom."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "Oldest", show=False),
        Binding("end,G", "last", "Newest", show=False),
        Binding("enter", "select", "Detail"),
    ]

    follow: reactive[bool] = reactive(True)

    class Selected(Message):
        """Enter on a row: show its detail."""

        def __init__(self, row: dict[str, Any]) -> None:
            super().__init__()
            self.row = row

    def __init__(self, capacity: int = 100_000, view: str = "flows", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = capacity
        self.view = view
        self.ring: FlowRing | FlowTable = FlowTable(capacity) if view == "flows" else FlowRing(capacity)
        self.cursor: int | None = None  # absolute row index
        self._cache: LRUCache[tuple[int, int, bool], Strip] = LRUCache(1024)
        self._rows: dict[int, dict[str, Any]] = {}  # the rows on screen, as Python objects
        self.renders = 0  # lines rendered (benchmarks and tests look)
        self.last_render: float = 0.0
        self.cursor_painted: tuple[int, float] = (-1, 0.0)  # (row, perf_counter) the cursor was last drawn

    # ---- data ------------------------------------------------------------------------------

    def set_view(self, view: str) -> None:
        """`flows` (one row per flow) or `events` (one per logged packet); empties the view."""
        if view != self.view:
            self.view = view
            self.ring = FlowTable(self.capacity) if view == "flows" else FlowRing(self.capacity)
        self.clear()

    @property
    def busiest_first(self) -> bool:
        return isinstance(self.ring, FlowTable) and self.ring.busiest_first

    def set_busiest_first(self, on: bool) -> None:
        """Flows view: rank the flows by packets (the busiest on top) or show them as first seen."""
        if not isinstance(self.ring, FlowTable):
            return
        self.ring.set_busiest_first(on)
        self._cache.clear()
        self._rows = {}
        if on:
            self.follow = False
            self._move_to(self.ring.first)
        elif len(self.ring):
            self.follow = True
        self.refresh()

    def clear(self) -> None:
        self.ring.clear()
        self.cursor = None
        self._cache.clear()
        self._rows = {}
        self._resize()
        self.refresh()

    def add(self, table: pa.Table, *, reduced: bool = False) -> None:
        """Append stream rows (one batch), or rows already reduced per flow (`reduced`, the
        flows view's first load); keeps the view steady unless following."""
        if table.num_rows == 0:
            return
        old_first, old_end = self.ring.first, self.ring.end
        if isinstance(self.ring, FlowTable):
            if reduced:
                self.ring.append_reduced(table)
            else:
                self.ring.append(table)
            # rows on screen changed in place, and every rate moves with the newest data: render
            # the screen's rows again (a few dozen), not only the new ones
            self._cache.clear()
            self._rows = {}
        else:
            self.ring.append(table)
        dropped = self.ring.first - old_first
        if self.ring.end == old_end and not dropped and self.cursor is not None:  # no new row: stay put
            self.refresh()
            return
        self._resize()
        if self.busiest_first:  # a ranking: the cursor stays on its place in it (the top, at first)
            if self.cursor is None or self.cursor < self.ring.first:
                self.cursor = self.ring.first
        elif self.follow or self.cursor is None:  # following, or a fresh view: the newest row
            self.cursor = self.ring.end - 1
            self._stick_to_end()
        else:
            if self.cursor is not None and self.cursor < self.ring.first:
                self.cursor = self.ring.first
            if dropped:
                self.scroll_to(y=max(0, self.scroll_offset.y - dropped), animate=False, immediate=True)
        self.refresh()

    def _stick_to_end(self) -> None:
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        if self.size.height == 0 or self.scroll_offset.y < self.max_scroll_y:  # not laid out yet
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True, x_axis=False)

    def _resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.ring))

    def on_resize(self) -> None:
        self._cache.clear()
        self._resize()

    @property
    def selected(self) -> dict[str, Any] | None:
        return None if self.cursor is None else self.ring.row(self.cursor)

    # ---- rendering -------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        import time

        self.last_render = time.perf_counter()
        width = self.size.width
        index = self.ring.first + self.scroll_offset.y + y
        if index >= self.ring.end:
            return Strip.blank(width, self.rich_style)
        selected = index == self.cursor
        if selected:
            self.cursor_painted = (index, self.last_render)
        key = (index, width, selected)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        row = self._rows.get(index)
        if row is None:  # one Arrow -> Python conversion for every row on screen, not one per line
            top = self.ring.first + self.scroll_offset.y
            self._rows = dict(enumerate(self.ring.rows(top, top + self.size.height + 1), start=top))
            row = self._rows.get(index)
            if row is None:
                return Strip.blank(width, self.rich_style)
        self.renders += 1
        strip = self._strip(row, width, selected)
        self._cache[key] = strip
        return strip

    def _strip(self, row: dict[str, Any], width: int, selected: bool) -> Strip:
        cols = fmt.layout(width - 1, VIEWS[self.view])
        verdict = str(row.get("verdict") or "")
        base = VERDICT_STYLES.get(verdict, Style())
        segments = []
        for i, ((title, _w, _f), text) in enumerate(zip(cols, fmt.cells(row, cols), strict=True)):
            if title == "VERDICT":
                style = VERDICT_CELL.get(verdict, base)
            else:
                style = DIM if title in ("TIME", "LAST SEEN") else base
            if selected:
                style = style + CURSOR
            segments.append(Segment(text, style))
            if i < len(cols) - 1:
                segments.append(Segment(" ", base + CURSOR if selected else Style()))
        return Strip(segments).crop_extend(0, width, self.rich_style)

    def watch_follow(self, follow: bool) -> None:
        if follow and len(self.ring):
            self.cursor = self.ring.end - 1
            self._stick_to_end()
            self.refresh()

    # ---- moving ----------------------------------------------------------------------------

    def _move_to(self, index: int) -> None:
        if not len(self.ring):
            return
        index = max(self.ring.first, min(index, self.ring.end - 1))
        old = self.cursor
        self.cursor = index
        self.follow = index == self.ring.end - 1 and self.follow
        rel = index - self.ring.first
        top = self.scroll_offset.y
        height = max(1, self.size.height)
        if rel < top:
            self.scroll_to(y=rel, animate=False, immediate=True)
        elif rel >= top + height:
            self.scroll_to(y=rel - height + 1, animate=False, immediate=True)
        for i in (old, index):
            if i is not None:
                self.refresh_line(i - self.ring.first)  # virtual y: refresh_line subtracts the scroll

    def action_cursor(self, delta: int) -> None:
        if delta < 0:
            self.follow = False
        start = self.cursor if self.cursor is not None else self.ring.end - 1
        self._move_to(start + delta)

    def action_page(self, direction: int) -> None:
        if direction < 0:
            self.follow = False
        start = self.cursor if self.cursor is not None else self.ring.end - 1
        self._move_to(start + direction * max(1, self.size.height - 1))

    def action_first(self) -> None:
        self.follow = False
        self._move_to(self.ring.first)

    def action_last(self) -> None:
        self._move_to(self.ring.end - 1)

    def action_select(self) -> None:
        row = self.selected
        if row is not None:
            self.post_message(self.Selected(row))
