"""The cluster flows dataset without root: per-node collectors fed hand-built NFLOG skbs through
socketpairs (as in test_collector_service), writing one hive-partitioned Parquet dataset, read
back with `--cluster` by query, export and whatif.

Two nodes see one flow: the client's node `a` logs its egress Allow, the server's node `b` its
ingress Deny. Read together, the flow is there once, denied, with both policies."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from enforcer.loader import load_paths
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.cli.main import cli
from flowtui.collector import dataset as dataset_mod
from flowtui.collector.dataset import DatasetSink
from flowtui.collector.service import Collector
from flowtui.store import schema
from tests.nflog_pair import PairNflog, skb_of, start_collector
from tests.test_collector_service import wait_for

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
PKT = bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=1000, dport=9999) / Raw(b"x" * 18))
RULES = [
    RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 1, "ingress", 0, "Deny"),
    RuleRef(8, "GlobalNetworkPolicy", None, "allow-out", "default", 1, "egress", 0, "Allow"),
]
CLUSTER = f"""apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop, labels: {{app: client}}}}
spec: {{nodeName: a}}
status: {{podIP: {CLIENT}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: shop, labels: {{app: server}}}}
spec: {{nodeName: b}}
status: {{podIP: {SERVER}}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: deny-9999}}
spec:
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {{action: Deny, protocol: UDP, destination: {{ports: [9999]}}}}
"""
ALLOW_9999 = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-9999}
spec:
  order: 1
  selector: app == 'server'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: UDP, destination: {ports: [9999]}}
"""


def skb(first_seq: int, n: int, prefix: str, at: float | None = None) -> bytes:
    """`n` events; `at`: their time (two nodes logging one packet log it at the same moment)."""
    return skb_of(first_seq, [PKT] * n, prefix, at)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def sql(root: Path, text: str) -> list[dict[str, object]]:
    result = invoke("query", "--cluster", str(root), "--sql", text, "-o", "json")
    assert result.exit_code == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[..., tuple[Collector, PairNflog]]]:
    RuleTable(RULES).dump(tmp_path / "rules.jsonl")
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    made: list[Collector] = []

    def start(name: str, **kw: object) -> tuple[Collector, PairNflog]:
        options: dict[str, object] = {"batch_seconds": 0.05, "flush_seconds": 0.2, "snapshot_interval": None}
        options.update(kw)
        c, sock = start_collector(db=tmp_path / f"{name}.duckdb", rules_path=tmp_path / "rules.jsonl",
                                  load_resources=lambda: load_paths([str(tmp_path / "cluster.yaml")]),
                                  node=name, flows_dir=tmp_path / "flows", **options)
        made.append(c)
        return c, sock

    yield start
    for c in made:
        c.stop()


def two_nodes(node: Callable[..., tuple[Collector, PairNflog]], tmp_path: Path) -> Path:
    (a, a_in), (b, b_in) = node("a"), node("b")
    now = time.time()
    a_in.tx.send(skb(0, 5, "ft:A8", now))  # the client's egress allowed it
    b_in.tx.send(skb(0, 5, "ft:D7", now))  # the server's ingress denied it
    a.stop()
    b.stop()
    return tmp_path / "flows"


def test_two_nodes_write_one_dataset_and_each_flow_is_read_once(node, tmp_path: Path) -> None:
    root = two_nodes(node, tmp_path)
    # Every node writes its own partitions, in the layout any engine discovers.
    ds = pads.dataset(root / "flows", format="parquet", partitioning="hive")
    assert {"node", "date", "hour"} <= set(ds.schema.names)
    per_node = ds.to_table().group_by("node").aggregate([("events", "sum")]).to_pylist()
    assert sorted((r["node"], r["events_sum"]) for r in per_node) == [("a", 5), ("b", 5)]
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "no temporary file is left"

    once = sql(root, "SELECT src_ip, dst_ip, dport, denied, packets FROM flows_once")
    assert once == [{"src_ip": CLIENT, "dst_ip": SERVER, "dport": 9999, "denied": True, "packets": 5}]
    reports = sql(root, "SELECT node, reporter, action, policy, events FROM flows_v ORDER BY node")
    assert reports == [
        {"node": "a", "reporter": "src", "action": "Allow", "policy": "0|default|gnp:allow-out|allow|0", "events": 5},
        {"node": "b", "reporter": "dst", "action": "Deny", "policy": "0|default|gnp:deny-9999|deny|0", "events": 5},
    ]
    # One pair of endpoints, whichever node named them.
    pairs = sql(root, "SELECT s.name AS src, d.name AS dst, p.flows FROM flow_pairs p "
                      "JOIN endpoints s ON s.id = p.src_ep JOIN endpoints d ON d.id = p.dst_ep")
    assert pairs == [{"src": "client", "dst": "server", "flows": 1}]
    # Loss is exact per node: everything received was stored, nothing lost.
    stats = sql(root, "SELECT s.node, t.name, t.value FROM stats_latest t JOIN sources s USING (source_id) "
                      "WHERE t.name = 'received' ORDER BY s.node")
    assert [(r["node"], r["value"]) for r in stats] == [("a", 5), ("b", 5)]
    assert sql(root, "SELECT coalesce(sum(events), 0) AS lost FROM loss_latest") == [{"lost": 0}]
    assert sql(root, "SELECT count(*) AS runs FROM runs WHERE outcome = 'stopped'") == [{"runs": 2}]
    # `flowtui status --cluster`: each node's run, its received events and loss by cause.
    result = invoke("status", "--cluster", str(root), "-o", "json", "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert sorted((s["node"], s["received"], s["lost_total"]) for r in runs for s in r["sources"]) == [
        ("a", 5, 0), ("b", 5, 0)]
    assert {r["state"] for r in runs} == {"stopped"} and all(r["stored"] == 5 for r in runs)


def test_export_and_whatif_read_every_node(node, tmp_path: Path) -> None:
    root = two_nodes(node, tmp_path)
    result = invoke("export", "--cluster", str(root), "--format", "jsonl", "--out", "-")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["node"] for r in records) == ["a", "b"]

    edit = tmp_path / "allow.yaml"
    edit.write_text(ALLOW_9999)
    result = invoke("whatif", "--cluster", str(root), "--current", str(tmp_path / "cluster.yaml"), "-f", str(edit),
                    "-o", "json", "--no-progress")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"]["newly_allowed"] == 1  # the flow both nodes reported, once


def test_cluster_needs_a_dataset(tmp_path: Path) -> None:
    result = invoke("query", "--cluster", str(tmp_path), "--sql", "SELECT 1")
    assert result.exit_code == 2
    assert f"--cluster {tmp_path}: no cluster flows dataset there" in result.stderr


def test_rows_appear_within_the_flush_bound(node, tmp_path: Path) -> None:
    """The defaults (a commit every second, dataset parts every 2 s) keep a flow in the dataset
    no more than 5 s after its packet was logged, although its 15 s bucket is still open."""
    _c, sock = node("a", batch_seconds=1.0, flush_seconds=2.0, bucket_seconds=15.0)
    sent = time.time()
    sock.tx.send(skb(0, 3, "ft:D7"))
    flows = tmp_path / "flows" / "flows"
    wait_for(lambda: flows.is_dir() and any(flows.rglob("*.parquet")), timeout=30)
    seen = time.time() - sent
    assert seen <= 5.0, f"the flow reached the dataset {seen:.1f} s after it was logged"


def test_an_unwritable_dataset_counts_its_loss_exactly(node, tmp_path: Path) -> None:
    """Disk full / a bad directory: the flow rows are retried, then dropped and counted by the
    events they held; the count reaches the dataset once it is writable again."""
    blocked = tmp_path / "flows" / "flows" / "node=a"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # every flows part of node a fails
    c, sock = node("a", dataset_give_up_seconds=0.5)
    sock.tx.send(skb(0, 7, "ft:D7"))
    wait_for(lambda: c.book.lost_by_cause().get("dataset_error") == 7)
    blocked.unlink()
    sock.tx.send(skb(7, 3, "ft:D7"))
    summary = c.stop()
    assert summary["lost"]["dataset_error"] == 7
    root = tmp_path / "flows"
    assert sql(root, "SELECT sum(events) AS events FROM flows") == [{"events": 3}]
    assert sql(root, "SELECT cause, events FROM loss_latest WHERE events > 0") == [
        {"cause": "dataset_error", "events": 7}]
    assert sql(root, "SELECT value FROM stats_latest WHERE name = 'received'") == [{"value": 10}]


def flows_rows(hours: list[datetime], events: int = 1) -> pa.Table:
    rows = [{"start_time": h, "end_time": h + timedelta(seconds=15), "source_id": 1, "action": "Deny",
             "rule_id": 7, "prefix": "ft:D7", "proto": 17, "src_ip": CLIENT, "dst_ip": SERVER, "sport": 1,
             "dport": 9999, "events": events, "packets": events, "count_source": "nflog"} for h in hours]
    return pa.Table.from_pylist(rows, schema=schema.FLOWS.full_arrow_schema)


def test_parts_are_partitioned_by_node_date_and_hour(tmp_path: Path) -> None:
    sink = DatasetSink(tmp_path, "node-1")
    sink.append("flows", flows_rows([datetime(2026, 3, 14, 9, 59, 45), datetime(2026, 3, 14, 10, 0, 0)]))
    assert sink.flush() == {}
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "flows/node=node-1/date=2026-03-14/hour=09", "flows/node=node-1/date=2026-03-14/hour=10"]
    assert all(pq.read_table(tmp_path / f).num_rows == 1 for f in files)
    with pytest.raises(ValueError, match="cannot name a partition"):
        DatasetSink(tmp_path, "../x")


def test_a_failed_write_leaves_no_file_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full half-way through a part: nothing half-written is visible, and the rows are
    written whole at the next flush."""
    sink = DatasetSink(tmp_path, "a")
    sink.append("flows", flows_rows([datetime(2026, 3, 14, 10, 0, 0)], events=4))
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 64:  # the part (not the marker): half of it, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    assert sink.flush() == {}  # retried later, not lost yet
    monkeypatch.setattr(os, "write", real_write)
    assert not [p for p in (tmp_path / "flows").rglob("*") if p.is_file()]
    assert sink.stats.failures == 1 and sink.pending
    sink.flush()
    (part,) = (tmp_path / "flows").rglob("*.parquet")
    assert pq.read_table(io.BytesIO(part.read_bytes())).column("events").to_pylist() == [4]
    assert not [p for p in tmp_path.rglob(".*")]


def test_a_part_that_stays_unwritable_is_dropped_and_counted(tmp_path: Path) -> None:
    now = [100.0]
    sink = DatasetSink(tmp_path, "a", give_up_seconds=10.0, clock=lambda: now[0])
    for table in ("flows", "loss"):  # the disk is full for both
        (tmp_path / table).write_text("in the way")
    sink.append("flows", flows_rows([datetime(2026, 3, 14, 10, 0, 0)], events=6))
    sink.append_rows("loss", [{"time": datetime(2026, 3, 14, 10, 0, 0), "run_id": 1, "source_id": 1,
                               "cause": "malformed", "events": 0, "detail": "x"}])
    assert sink.flush() == {}
    now[0] += 11.0
    assert sink.flush() == {1: 6}  # the events those flow rows aggregated, per source
    assert [p.table for p in sink.pending] == ["loss"]  # the loss rows are kept until written
    assert sink.stats.dropped_rows["flows"] == 1


def test_the_marker_and_layout_are_documented_in_the_dataset(tmp_path: Path) -> None:
    DatasetSink(tmp_path, "a")
    doc = json.loads((tmp_path / dataset_mod.MARKER).read_text())
    assert doc["version"] == 1 and "node=<node>/date=" in doc["layout"]


def test_the_dashboard_follows_nodes_as_they_appear(node, tmp_path: Path) -> None:
    """`flowtui tui --cluster DIR`: opened while only node a has written, it sees node b's flows
    at its next poll, without being reopened."""
    from flowtui.cli.tui import build_app
    from flowtui.tui.sources import ClusterSource

    a, a_in = node("a")
    now = time.time()
    a_in.tx.send(skb(0, 2, "ft:A8", now))
    a.stop()
    root = tmp_path / "flows"
    app = build_app(str(root), None, state_dir=str(tmp_path / "state"), read_only=True)
    source = app.source
    try:
        assert isinstance(source, ClusterSource) and source.nodes == ["a"]
        events = "SELECT sum(events)::BIGINT AS n FROM flows"
        assert source.status().flows_stored >= 1 and source.query(events).column("n").to_pylist() == [2]
        b, b_in = node("b")
        b_in.tx.send(skb(0, 3, "ft:D7", now))  # the same packets, seen at the server's node
        b.stop()
        assert source.query(events).column("n").to_pylist() == [5]
        nodes = source.query("SELECT DISTINCT node FROM flows_v ORDER BY 1").column("node").to_pylist()
        assert nodes == ["a", "b"]
        assert source.query("SELECT denied FROM flows_once").column("denied").to_pylist() == [True]
    finally:
        source.close()


def test_an_hour_that_is_over_becomes_one_file(tmp_path: Path) -> None:
    """Parts every 2 s would be thousands of files an hour: a node merges an hour's parts once it
    is over, swapping the directory in one step, and the rows read the same."""
    sink = DatasetSink(tmp_path, "a", compact_after=timedelta(minutes=15))
    hour = datetime(2026, 3, 14, 10, 0, 0)
    for i in range(3):  # three flushes, three parts
        sink.append("flows", flows_rows([hour + timedelta(seconds=15 * i)], events=i + 1))
        sink.flush()
    sink.append("flows", flows_rows([hour + timedelta(hours=1)], events=10))  # the next hour: still open
    sink.flush()
    directory = tmp_path / "flows" / "node=a" / "date=2026-03-14" / "hour=10"
    assert len(list(directory.glob("*.parquet"))) == 3
    assert sink.compact(hour + timedelta(hours=1, minutes=14)) == 0  # late rows may still come
    assert sink.compact(hour + timedelta(hours=1, minutes=15)) == 1
    (merged,) = directory.glob("*.parquet")
    assert sorted(pq.ParquetFile(merged).read().column("events").to_pylist()) == [1, 2, 3]
    assert len(list((tmp_path / "flows" / "node=a" / "date=2026-03-14" / "hour=11").glob("*.parquet"))) == 1
    assert not [p for p in (tmp_path / ".staging").rglob("*") if p.is_file()]
    assert sql(tmp_path, "SELECT sum(events) AS events, count(*) AS n FROM flows") == [{"events": 16, "n": 4}]


def test_a_run_that_died_before_publishing_is_caught_up_by_the_next(node, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 between a commit and the next part: the local store has rows the dataset lacks.
    The node's next run appends them (local minus published, per flow key), so nothing is lost."""
    import duckdb

    real_flush = DatasetSink.flush
    monkeypatch.setattr(DatasetSink, "flush", lambda self, snapshot=None: {})  # the process dies first
    c, sock = node("a")
    sock.tx.send(skb(0, 4, "ft:D7"))
    wait_for(lambda: c.book.stat_total("stored") == 4)
    c.stop()
    with duckdb.connect(str(tmp_path / "a.duckdb")) as con:  # as a kill -9 leaves it: the run not ended
        con.execute("UPDATE runs SET ended = NULL, outcome = NULL")
    assert not (tmp_path / "flows" / "flows").exists()
    monkeypatch.setattr(DatasetSink, "flush", real_flush)
    c2, sock2 = node("a")
    sock2.tx.send(skb(0, 3, "ft:D7"))
    c2.stop()
    root = tmp_path / "flows"
    assert sql(root, "SELECT sum(events)::BIGINT AS events FROM flows") == [{"events": 7}]
    assert sql(root, "SELECT r.outcome, t.value FROM stats_latest t JOIN runs r USING (run_id) "
                     "WHERE t.name = 'stored' ORDER BY r.started") == [
        {"outcome": "crashed", "value": 4}, {"outcome": "stopped", "value": 3}]
