"""Rolling up again what a rollup read before it was known: rules and network sets written after
their flows.

Three rollups read more than the flows: `pair_hours` joins `rules` (a rule's direction says which
reporter's counts are the source's egress), the implicit-deny and profile-allow rollups keep the
flows of rule kinds (a join on `rules`), and `denylisted_hours` keeps the flows of `netset_sources`.
A rule id resolved after its flows (another machine compiled it), or a network set whose members
sent flows before it was loaded, leaves their rows as if the rule or the set did not exist. The
writer then makes the rows concerned again from the raw flows, in the insert's transaction:

- the hour rollups, by key (`rule_id IN ...`, `src_ip IN ...`), as `_reroll` always did;
- `pair_hours`, by whole hours (its keys hold no rule id): the hours with flows of the new rules;
- inside compacted days (before `rollup_state.days_until`) the rows made again are summed per day, so
  a compacted day stays one row per key; the hours with no raw flows left (before
  `compacted_until`, and all of a compacted day that retention cut into) keep what they had.

The totals of the keys touched are summed again from their hours. When the hours that keep what they
had held flows of the rule or set (`rule_hours` and `talkers` keep every hour), the rollups are
incomplete before them: `rollup_state.complete_from` says so, and `flowtui query` with it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flowtui.store import schema

PAIR_KEYS = ("src_ep", "src_ip", "dst_ep", "dst_ip", "proto", "dport", "denied")
_HOUR = "date_trunc('hour', {})"
PAIR_SUMS = ("flows", "connections", "packets", "bytes", "reply_packets", "reply_bytes")


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def _day(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def floor(compacted_until: datetime | None, days_until: datetime | None) -> datetime:
    """The first hour whose rollup rows can be made again: raw flows exist from `compacted_until`
    on, and a compacted day is made again whole or not at all."""
    since = compacted_until or datetime.min
    if days_until is not None and since < days_until and since != _day(since):
        since = _day(since) + timedelta(days=1)
    return since


def bucket(column: str, days_until: datetime | None) -> str:
    """The rollup bucket of an hour: its day inside the compacted days, else itself."""
    if days_until is None:
        return column
    return f"CASE WHEN {column} < {_ts(days_until)} THEN date_trunc('day', {column}) ELSE {column} END"


def hour_rollups(con: Any, rollups: Any, keys: str, since: datetime, days_until: datetime | None,
                 pairs_until: datetime | None) -> None:
    """The rows of `rollups` whose keys `keys` keeps, from `since` on, made again from the raw
    flows (per day inside the compacted days), and their totals."""
    for r in rollups:
        con.execute(f"DELETE FROM {r.hours.name} WHERE {keys} AND hour >= ?", [since]).fetchall()
        rows = r.rows_sql(f"f.{keys} AND f.start_time >= {_ts(since)}")
        if days_until is not None:
            rows = r.merged(f"(SELECT * REPLACE ({bucket('hour', days_until)} AS hour) FROM ({rows}))")
        con.execute(f"INSERT INTO {r.hours.name} BY NAME {rows}").fetchall()
        con.execute(f"DELETE FROM {r.totals.name} WHERE {keys}").fetchall()
        if pairs_until is not None:
            hours = f"(SELECT * FROM {r.hours.name} WHERE {keys} AND hour < {_ts(pairs_until)})"
            con.execute(f"INSERT INTO {r.totals.name} BY NAME {r.merged(hours, with_hour=False)}").fetchall()


def pair_hours(con: Any, rule_ids: list[int], since: datetime, rolled_until: datetime,
               days_until: datetime | None, pairs_until: datetime | None) -> int:
    """`pair_hours` of the rolled-up hours (days) from `since` with flows of `rule_ids`, made again
    from the raw flows, and `pair_totals` of the pairs they hold (before and after); returns the
    buckets made again."""
    ids = ", ".join(str(int(i)) for i in rule_ids)
    within = f"start_time >= {_ts(since)} AND start_time < {_ts(rolled_until)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ft_units AS SELECT DISTINCT "
                f"{bucket(_HOUR.format('start_time'), days_until)} AS u "
                f"FROM flows WHERE rule_id IN ({ids}) AND {within}").fetchall()
    (units,) = con.execute("SELECT count(*) FROM _ft_units").fetchone()
    if units:
        in_units = f"{bucket('hour', days_until)} IN (SELECT u FROM _ft_units)"
        hours = f"hour >= {_ts(since)} AND hour < {_ts(rolled_until)} AND {in_units}"
        keys = ", ".join(PAIR_KEYS)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _ft_pairs AS SELECT DISTINCT {keys} FROM pair_hours "
                    f"WHERE {hours}").fetchall()
        con.execute(f"DELETE FROM pair_hours WHERE {hours}").fetchall()
        flows = (f"f.start_time >= {_ts(since)} AND f.start_time < {_ts(rolled_until)} AND "
                 f"{bucket(_HOUR.format('f.start_time'), days_until)} IN (SELECT u FROM _ft_units)")
        sums = ", ".join(f"sum({c}) AS {c}" for c in PAIR_SUMS)
        con.execute(f"INSERT INTO pair_hours BY NAME SELECT {bucket('hour', days_until)} AS hour, {keys}, {sums}, "
                    f"min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM "
                    f"({schema.pair_hours_sql(flows)}) GROUP BY ALL").fetchall()
        con.execute(f"INSERT INTO _ft_pairs SELECT DISTINCT {keys} FROM pair_hours WHERE {hours}").fetchall()
        if pairs_until is not None:
            on = " AND ".join(f"t.{k} IS NOT DISTINCT FROM k.{k}" for k in PAIR_KEYS)
            con.execute(f"DELETE FROM pair_totals t USING (SELECT DISTINCT * FROM _ft_pairs) k WHERE {on}").fetchall()
            con.execute(f"INSERT INTO pair_totals BY NAME SELECT {', '.join('t.' + k for k in PAIR_KEYS)}, "
                        + ", ".join(f"sum(t.{c}) AS {c}" for c in PAIR_SUMS)
                        + ", min(t.first_seen) AS first_seen, max(t.last_seen) AS last_seen FROM pair_hours t "
                        f"SEMI JOIN (SELECT DISTINCT * FROM _ft_pairs) k ON {on} "
                        f"WHERE t.hour < {_ts(pairs_until)} GROUP BY ALL").fetchall()
        con.execute("DROP TABLE _ft_pairs").fetchall()
    con.execute("DROP TABLE _ft_units").fetchall()
    return int(units)


def incomplete_before(con: Any, when: datetime) -> None:
    """The hour rollups may miss flows before `when` (`rollup_state.complete_from` only moves later)."""
    con.execute("UPDATE rollup_state SET complete_from = greatest(coalesce(complete_from, ?), ?)",
                [when, when]).fetchall()


def missed(con: Any, evidence: str, since: datetime) -> None:
    """`incomplete_before(since)` if `evidence` (a query with one `?`: `since`) finds a row: flows the
    rollups could not be made again for."""
    if since > datetime.min and con.execute(evidence + " LIMIT 1", [since]).fetchall():
        incomplete_before(con, since)
