"""A YAML editor that shows validation problems inline, on the line they are about."""

from __future__ import annotations

from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widgets import TextArea

ERROR_LINE = Style(bgcolor="#4a0000")
ERROR_NOTE = Style(color="#ff6b6b", italic=True, bold=True)


class YamlEditor(TextArea):
    """TextArea with `problems`: 0-based line -> message, drawn on that line."""

    DEFAULT_CSS = "YamlEditor { height: 1fr; }"

    def __init__(self, text: str = "", **kwargs: Any) -> None:
        super().__init__(text, soft_wrap=False, show_line_numbers=True, tab_behavior="indent", **kwargs)
        self.problems: dict[int, str] = {}

    def set_problems(self, problems: dict[int, str]) -> None:
        if problems != self.problems:
            self.problems = dict(problems)
            self.refresh()

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        if not self.problems:
            return strip
        scroll_x, scroll_y = self.scroll_offset
        line = scroll_y + y
        message = self.problems.get(line)
        if message is None:
            return strip
        width = self.size.width
        strip = strip.apply_style(ERROR_LINE)
        if scroll_x == 0 and line < self.document.line_count:
            used = self.gutter_width + len(self.document.get_line(line).rstrip())
            room = width - used - 4
            if room > 8:
                note = "  ◀ " + (message if len(message) <= room else message[: room - 1] + "…")
                strip = Strip.join([strip.crop(0, used), Strip([Segment(note, ERROR_NOTE + ERROR_LINE)])])
                strip = strip.extend_cell_length(width, ERROR_LINE)
        return strip
