"""What every dashboard screen has: a title line, the status bar, the footer."""

from __future__ import annotations

from typing import cast

from textual.screen import Screen
from textual.widgets import Footer

from flowtui.tui.dashboard import Dashboard
from flowtui.tui.widgets.status_bar import StatusBar


class DashboardScreen(Screen[None]):
    """A screen of the dashboard: `self.dash` is the app, with its source and policy control."""

    @property
    def dash(self) -> Dashboard:
        # The app, seen through what screens may use of it (no import of app.py: no cycle).
        return cast(Dashboard, self.app)

    def chrome(self) -> tuple[StatusBar, Footer]:
        return StatusBar(), Footer()

    def on_screen_resume(self) -> None:
        self.dash.refresh_status()

    def status_extra(self) -> str:
        """Screen-specific text for the status bar (e.g. PAUSED)."""
        return ""
