"""The flows view's table (`flowtui.tui.flowtable`): one row per flow, updated in place. Headless."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flowtui.demo.synthetic import article_recording
from flowtui.tui import queries
from flowtui.tui.flowtable import KEY, RATE_WINDOW, FlowTable
from flowtui.tui.sources import StoreSource

T0 = datetime(2026, 3, 14, 12, 0, 0)
FLOOD = {"node": "node-b", "action": "Deny", "verdict": "deny", "proto": 17, "src_ip": "198.51.100.9",
         "dst_ip": "10.244.2.10", "dport": 9000, "rule_id": 7, "prefix": "ft:D7", "policy_name": "dos-mitigation",
         "src_type": "external", "src_name": "attacker", "src_labels": ["role=attacker"]}
CALL = {"node": "node-a", "action": "Allow", "verdict": "allow", "proto": 6, "src_ip": "10.244.1.10",
        "dst_ip": "10.244.2.10", "dport": 9000, "rule_id": 3, "prefix": "ft:A3", "policy_name": "allow-web"}


def events(template: dict[str, Any], n: int, start: datetime, every: timedelta, ports: int = 16,
           **changes: Any) -> list[dict[str, Any]]:
    return [{**template, **changes, "time": start + i * every, "sport": 40000 + i % ports, "packets": 1,
             "bytes": 92} for i in range(n)]


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def test_a_flood_from_many_source_ports_is_one_busy_row() -> None:
    flows = FlowTable()
    flows.append(table(events(FLOOD, 3000, T0, timedelta(milliseconds=1)) + events(CALL, 2, T0, timedelta(0), ports=1)))
    assert len(flows) == 2 and flows.total_appended == 3002
    flood = flows.row(flows.first)
    assert flood is not None
    assert (flood["packets"], flood["events"], flood["bytes"], flood["ports"]) == (3000, 3000, 3000 * 92, 16)
    assert flood["sport"] == 40000  # one real port of the flow (the detail decides with it); `ports` counts
    assert flood["first_seen"] == T0 and flood["last_seen"] == T0 + timedelta(milliseconds=2999)
    assert flood["time"] == flood["last_seen"] and flood["src_name"] == "attacker"
    assert flood["rate"] == pytest.approx(1000.0)  # 3000 packets over its 3 seconds
    call = flows.row(flows.first + 1)
    assert call is not None and call["sport"] == 40000 and call["ports"] == 1 and call["verdict"] == "allow"


def test_rows_are_updated_in_place_and_keep_their_place() -> None:
    flows = FlowTable()
    flows.append(table(events(FLOOD, 100, T0, timedelta(milliseconds=10))))
    flows.append(table(events(CALL, 1, T0, timedelta(0))))
    end = flows.end
    later = T0 + timedelta(seconds=5)
    flows.append(table(events(FLOOD, 500, later, timedelta(milliseconds=2))))
    assert flows.end == end and flows.updated == 1  # no new row: the flood's row grew
    flood = flows.row(flows.first)
    assert flood is not None and flood["packets"] == 600 and flood["last_seen"] == later + timedelta(milliseconds=998)
    # a different verdict, rule or destination port is another flow
    flows.append(table(events(FLOOD, 1, later, timedelta(0), verdict="allow", action="Allow", rule_id=8,
                              prefix="ft:A8")))
    flows.append(table(events(FLOOD, 1, later, timedelta(0), dport=9001)))
    assert len(flows) == 4
    keys = {tuple(r[k] for k in KEY) for r in flows.rows(flows.first, flows.end)}
    assert len(keys) == 4


def test_the_rate_is_over_the_last_seconds_of_data_and_falls_to_zero() -> None:
    flows = FlowTable()
    flows.append(table(events(FLOOD, 2000, T0, timedelta(milliseconds=1))))  # 1000/s for 2 s
    busy = flows.row(flows.first)
    assert busy is not None and busy["rate"] == pytest.approx(1000.0)
    quiet = T0 + timedelta(seconds=RATE_WINDOW + 5)
    flows.append(table(events(CALL, 1, quiet, timedelta(0))))  # the data moved on; the flood stopped
    stopped = flows.row(flows.first)
    assert stopped is not None and stopped["rate"] == 0.0 and stopped["packets"] == 2000


def test_capacity_drops_the_oldest_flows() -> None:
    flows = FlowTable(capacity=3)
    for port in range(5):
        flows.append(table(events(CALL, 1, T0 + timedelta(seconds=port), timedelta(0), dport=port)))
    assert len(flows) == 3 and flows.evicted == 2 and (flows.first, flows.end) == (2, 5)
    assert [r["dport"] for r in flows.rows(0, 10)] == [2, 3, 4]
    assert flows.row(1) is None


def test_the_store_reduces_as_the_view_does(tmp_path: Path) -> None:
    """The first load (reduced in DuckDB) and the live path (reduced with Arrow) agree."""
    src = StoreSource(article_recording(tmp_path / "a.duckdb", events=3000))
    try:
        raw = src.recent(None, 100_000)
        live = FlowTable()
        live.append(raw)
        loaded = FlowTable()
        loaded.append_reduced(src.recent_flows(None, 10_000))
        assert raw.num_rows == 3000 + 107 and live.total_appended == loaded.total_appended == raw.num_rows

        def by_key(flows: FlowTable) -> dict[tuple[Any, ...], tuple[Any, ...]]:
            return {tuple(r[k] for k in KEY): (r["packets"], r["bytes"], r["events"], r["ports"], r["first_seen"],
                                               r["last_seen"], r["policy_name"], r["src_name"], round(r["rate"], 6))
                    for r in flows.rows(flows.first, flows.end)}

        assert by_key(live) == by_key(loaded) and len(by_key(live)) == len(live) > 5
        denied = src.recent_flows("verdict = 'deny'", 10_000)
        assert denied.num_rows and set(denied.column("verdict").to_pylist()) == {"deny"}
        newest = src.recent_flows(None, 2)  # the two flows seen last
        assert len({tuple(r[k] for k in KEY) for r in newest.to_pylist()}) == 2
    finally:
        src.close()


def test_flows_sql_columns_are_what_the_table_folds() -> None:
    sql = queries.flows_view_sql("events", None, 10)
    assert "GROUP BY proto, src_ip, dst_ip, dport, icmp_type, verdict, rule_id, prefix, second" in sql


def test_many_new_flows_batch_after_batch_keep_their_counts() -> None:
    """Spoofed sources or a port scan: every packet a new flow. The table keeps the newest
    `capacity` flows, each with its own counts, across the arrays being compacted and grown."""
    flows = FlowTable(capacity=100)
    for batch in range(40):
        rows = [{**CALL, "time": T0 + timedelta(seconds=batch), "dport": batch * 30 + i, "sport": 5000 + i,
                 "packets": 2, "bytes": 120} for i in range(30)]
        flows.append(table(rows))
    assert len(flows) == 100 and flows.evicted == 40 * 30 - 100 and flows.end == 1200
    held = flows.rows(flows.first, flows.end)
    assert [r["dport"] for r in held] == list(range(1100, 1200))
    assert all(r["packets"] == 2 and r["events"] == 1 and r["ports"] == 1 for r in held)
    assert held[0]["sport"] == 5000 + 1100 % 30
    # the same flow again, later: counted on its row, its ports not twice
    flows.append(table([{**CALL, "time": T0 + timedelta(seconds=41), "dport": 1199, "sport": 5029, "packets": 1,
                         "bytes": 60}, {**CALL, "time": T0 + timedelta(seconds=41), "dport": 1199, "sport": 7,
                                        "packets": 1, "bytes": 60}]))
    last = flows.row(flows.end - 1)
    assert last is not None and (last["packets"], last["ports"], last["sport"]) == (4, 2, 7) and flows.updated == 1
    # a flow that was dropped comes back as a new row
    flows.append(table([{**CALL, "time": T0 + timedelta(seconds=42), "dport": 0, "sport": 1}]))
    assert flows.row(flows.end - 1)["dport"] == 0 and len(flows) == 100  # type: ignore[index]


def test_busiest_first_ranks_the_flows_by_packets_after_every_batch() -> None:
    flows = FlowTable()
    flows.append(table(events(CALL, 3, T0, timedelta(0), ports=1)))
    flows.append(table(events(FLOOD, 50, T0, timedelta(milliseconds=1))))
    flows.append(table(events(CALL, 10, T0, timedelta(0), dport=443)))
    flows.set_busiest_first(True)
    assert [(r["dport"], r["packets"]) for r in flows.rows(flows.first, flows.end)] == [(9000, 50), (443, 10),
                                                                                       (9000, 3)]
    assert flows.row(flows.first + 1)["dport"] == 443  # type: ignore[index]
    flows.append(table(events(CALL, 100, T0, timedelta(0), dport=443)))  # the last flow, now the busiest
    assert [(r["dport"], r["packets"]) for r in flows.rows(flows.first, flows.end)] == [(443, 110), (9000, 50),
                                                                                       (9000, 3)]
    flows.set_busiest_first(False)  # as first seen again
    assert [(r["dport"], r["packets"]) for r in flows.rows(flows.first, flows.end)] == [(9000, 3), (9000, 50),
                                                                                       (443, 110)]
