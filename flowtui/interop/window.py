"""Time windows given as text, with the same grammar as the query library's `since`/`until`.

A bound is a time (`2026-03-14 12:00`, `2026-03-14T12:00:00Z`) or a duration back from `now`
(`30m`, `24h`, `7d`, `90 minutes`); DuckDB's own casts decide, so `flowtui export --since X` and
`SET VARIABLE since = 'X'` in `queries/*.sql` accept exactly the same values. `now` defaults to the
end of the latest flow bucket in the store (the present, for a live collector; the end of the
recording, for an archive), and to the current UTC time for an empty store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb


class WindowError(ValueError):
    """A bound that is neither a time nor a duration."""


@dataclass(frozen=True)
class Window:
    """[since, until) in UTC; None means unbounded."""

    since: datetime | None = None
    until: datetime | None = None

    def sql(self, column: str) -> str:
        """A WHERE condition on `column` (literal timestamps, so it also fits COPY statements)."""
        parts = ["TRUE"]
        if self.since is not None:
            parts.append(f"{column} >= TIMESTAMP '{self.since.isoformat(sep=' ')}'")
        if self.until is not None:
            parts.append(f"{column} < TIMESTAMP '{self.until.isoformat(sep=' ')}'")
        return " AND ".join(parts)


def store_now(con: duckdb.DuckDBPyConnection) -> datetime:
    """The end of the latest flow bucket, or the current UTC time for an empty store."""
    row = con.execute(
        "SELECT coalesce((SELECT max(end_time) FROM flows), current_timestamp AT TIME ZONE 'UTC')"
    ).fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def parse_bound(con: duckdb.DuckDBPyConnection, text: str, now: datetime, name: str = "since") -> datetime:
    row = con.execute(
        "SELECT try_cast(?::VARCHAR AS TIMESTAMP), ?::TIMESTAMP - try_cast(?::VARCHAR AS INTERVAL)",
        [text, now, text],
    ).fetchone()
    assert row is not None
    when = row[0] if row[0] is not None else row[1]
    if when is None:
        raise WindowError(f"{name}: {text!r} is neither a time (2026-03-14 12:00) nor a duration (30m, 24h, 7d)")
    result: datetime = when
    return result


def parse_window(
    con: duckdb.DuckDBPyConnection, since: str | None, until: str | None, now: str | None = None
) -> Window:
    """The window for `--since`/`--until` (either may be None)."""
    if since is None and until is None:
        return Window()
    ref = parse_bound(con, now, store_now(con), "now") if now else store_now(con)
    return Window(
        parse_bound(con, since, ref, "since") if since else None,
        parse_bound(con, until, ref, "until") if until else None,
    )


EVERYTHING = Window()
