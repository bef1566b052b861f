"""Widgets, grouped by feature: `stream/` (the live table), `detail/`, `whatif/`, and the bars."""
