"""What screens may use of the app, as a Protocol: screens depend on this, not on `app.py`.

The app imports every screen (its MODES); if screens imported the app back, the two would form
an import cycle (a screen could not be imported, tested or reused without the whole app). The
App satisfies this Protocol structurally; mypy checks it where `make_app` returns it as one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from flowtui.tui.control import PolicyControl, PolicyRef
from flowtui.tui.filters import CompiledFilter
from flowtui.tui.sources import DataSource


class Dashboard(Protocol):
    """The shared state and actions of the dashboard (see `flowtui.tui.app.FlowtuiApp`)."""

    source: DataSource
    control: PolicyControl
    read_only: bool
    stream_capacity: int
    queries_dir: Path | None
    whatif_target: PolicyRef | None
    filter: CompiledFilter

    def set_filter(self, compiled: CompiledFilter) -> None: ...

    def set_filter_text(self, text: str) -> bool: ...

    def refresh_status(self) -> None: ...

    def open_whatif(self, ref: PolicyRef) -> None: ...

    def find_policy(self, text: str) -> PolicyRef | None: ...
