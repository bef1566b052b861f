"""What every dashboard screen has: a title line, the status bar, the footer."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen
from textual.widgets import Footer

from flowtui.tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from flowtui.tui.app import FlowtuiApp


class DashboardScreen(Screen[None]):
    """A screen of the dashboard: `self.dash` is the app, with its source and policy control."""

    @property
    def dash(self) -> FlowtuiApp:
        from flowtui.tui.app import FlowtuiApp

        return cast(FlowtuiApp, self.app)

    def chrome(self) -> tuple[StatusBar, Footer]:
        return StatusBar(), Footer()

    def on_screen_resume(self) -> None:
        self.dash.refresh_status()

    def status_extra(self) -> str:
        """Screen-specific text for the status bar (e.g. PAUSED)."""
        return ""
