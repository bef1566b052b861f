"""The status bar: events/s, flows stored, loss by cause, collector and enforcer, the source."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from flowtui.tui.sources import SourceStatus

CAUSE_SHORT = {
    "kernel_ratelimit": "ratelimit",
    "rcvbuf_overrun": "overrun",
    "writer_backlog": "backlog",
    "malformed": "malformed",
    "store_error": "store",
    "dataset_error": "dataset",
    "collector_down": "down",
}


def status_text(st: SourceStatus | None, enforcer: str, extra: str = "") -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    if st is None:
        text.append(" connecting… ", "dim")
        return text
    mark = {"live": ("● LIVE", "bold green"), "attach": ("● ATTACHED", "bold cyan")}.get(
        st.mode, ("■ REPLAY", "bold magenta"))
    text.append(f" {mark[0]} ", mark[1])
    rate = "-" if st.events_per_s is None else f"{st.events_per_s:,.0f}"
    text.append(f" {rate} ev/s", "bold")
    text.append(f" · {st.events_total:,} events · {st.flows_stored:,} flows")
    lost = {c: n for c, n in st.loss.items() if n}
    if lost:
        text.append(" · loss ", "bold red")
        text.append(" ".join(f"{CAUSE_SHORT.get(c, c)} {n:,}" for c, n in lost.items()), "red")
    else:
        text.append(" · loss 0", "green")
    if st.display_dropped:
        text.append(f" (screen skipped {st.display_dropped:,})", "dim")
    text.append(f" · collector {st.collector}", "dim" if st.mode == "replay" else "")
    text.append(f" · enforcer {enforcer}")
    if extra:
        text.append(f" · {extra}", "yellow")
    text.append(f" · {st.label}", "dim")
    return text


class StatusBar(Static):
    """One line; the app's status poll updates every screen's bar."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; }
    """

    def show(self, st: SourceStatus | None, enforcer: str, extra: str = "") -> None:
        self.update(status_text(st, enforcer, extra))
