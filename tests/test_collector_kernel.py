"""The collector against the real kernel, in lab namespaces only (root; see conftest `kernel`).

Each test builds a two-namespace test bed (`ft-<lab>-ext-gen` -> `ft-<lab>-node-rx`), loads an
nftables table INSIDE the receiver namespace, sends a fixed number of packets and checks that
every packet the rule counted is stored or counted lost by cause.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from enforcer.lab.kernel import in_netns
from enforcer.model import ExternalHost, Node, ResourceSet
from enforcer.ruleids import RuleRef, RuleTable
from flowtui.collector.nflog import NflogConfig, kernel_instances
from flowtui.collector.service import Collector, CollectorConfig
from flowtui.collector.testbed import GEN_V4, GEN_V6, RX_V4, RX_V6, Testbed
from flowtui.store.status import read_status

pytestmark = pytest.mark.kernel

DENY7 = RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 3, "ingress", 0, "Deny")
DENY8 = RuleRef(8, "GlobalNetworkPolicy", None, "deny-9999", "default", 4, "ingress", 0, "Deny")
ALLOW12 = RuleRef(12, "NetworkPolicy", "prod", "allow-web", "default", 1, "ingress", 1, "Allow")
LIMITED = RuleRef(20, "GlobalNetworkPolicy", None, "flood", "security", 1, "ingress", 0, "Deny")

RULESET = """
table inet ft {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    udp dport 9999 counter log prefix "ft:D7" group 1 drop
    tcp dport 8080 ct state new counter log prefix "ft:A12" group 1 accept
    udp dport 9997 counter log prefix "ft:D999" group 1 drop
    udp dport 9996 counter limit rate 20/second burst 10 packets counter log prefix "ft:D20" group 1 drop
    udp dport 9996 counter drop
  }
}
"""


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def resources() -> ResourceSet:
    return ResourceSet(
        nodes=(Node("rx", addresses=(ip(RX_V4), ip(RX_V6))),),
        external_hosts=(ExternalHost("gen", (ip(GEN_V4), ip(GEN_V6))),),
    )


@pytest.fixture
def bed(lab_id: str) -> Iterator[Testbed]:
    testbed = Testbed.up(lab_id)
    try:
        testbed.nft(RULESET)
        yield testbed
    finally:
        testbed.down()


def collector(tmp_path: Path, bed: Testbed, refs: list[RuleRef], **kw: object) -> Collector:
    RuleTable(refs).dump(tmp_path / "rules.jsonl")
    cfg = CollectorConfig(
        db=tmp_path / "flows.duckdb",
        namespaces=(bed.rx,),
        load_resources=resources,
        bucket_seconds=1.0,
        batch_seconds=0.05,
        counters_interval=0.5,
        snapshot_interval=1.0,
        **kw,  # type: ignore[arg-type]
    )
    c = Collector(cfg)
    c.start()
    return c


def query(tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(tmp_path / "flows.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_every_packet_is_stored_with_attribution_sequence_and_endpoints(bed: Testbed, tmp_path: Path) -> None:
    c = collector(tmp_path, bed, [DENY7, ALLOW12])
    try:
        kernel = {row["group"]: row for row in kernel_instances(bed.rx)}
        assert kernel[1]["copy_range"] == 80 and kernel[1]["copy_mode"] == 2 and kernel[1]["flush_timeout"] == 5
        bed.send_udp(3000)
        bed.send_udp(1000, v6=True)
        bed.send_udp(7, dport=9997)
    finally:
        summary = c.stop()
    counted = bed.counter("ft:D7") + bed.counter("ft:D999")
    assert counted == 4007
    assert summary["stats"]["received"] == summary["stats"]["stored"] == 4007
    assert sum(summary["lost"].values()) == 0
    assert summary["stats"]["unknown_rule"] == 7
    assert query(tmp_path, "SELECT count(*), min(seq), max(seq), count(DISTINCT seq) FROM events") == [
        (4007, 0, 4006, 4007)
    ]
    rows = query(
        tmp_path,
        "SELECT policy_name, policy_revision, ip_version, src_type, src_name, dst_type, dst_name, node, count(*) "
        "FROM events_v WHERE rule_id = 7 GROUP BY ALL ORDER BY ip_version",
    )
    assert rows == [
        ("deny-9999", 3, 4, "external", "gen", "node", "rx", "rx", 3000),
        ("deny-9999", 3, 6, "external", "gen", "node", "rx", "rx", 1000),
    ]
    assert query(tmp_path, "SELECT sum(events), sum(packets) FROM flows WHERE rule_id = 7") == [(4000, 4000)]
    assert query(
        tmp_path, "SELECT DISTINCT reporter, policy, src_type, dst_name, node FROM flows_v WHERE rule_id = 7"
    ) == [("dst", "0|default|gnp:deny-9999|deny|0", "external", "rx", "rx")]
    status = read_status(tmp_path / "flows.duckdb")
    assert status["runs"][0]["received"] == 4007 and status["runs"][0]["lost_total"] == 0


def test_a_policy_change_while_running_keeps_each_revision(bed: Testbed, tmp_path: Path) -> None:
    c = collector(tmp_path, bed, [DENY7])
    try:
        bed.send_udp(100)
        # the compiler applies revision 4 of the policy: a new identifier, a new table row
        RuleTable([DENY7, DENY8]).dump(tmp_path / "rules.jsonl")
        bed.nft(
            'flush chain inet ft input\nadd rule inet ft input udp dport 9999 counter log prefix "ft:D8" group 1 drop\n'
        )
        bed.send_udp(50)
    finally:
        summary = c.stop()
    assert summary["stats"]["stored"] == 150 and summary["stats"]["unknown_rule"] == 0
    rows = query(tmp_path, "SELECT rule_id, policy_revision, count(*) FROM events_v GROUP BY ALL ORDER BY 1")
    assert rows == [(7, 3, 100), (8, 4, 50)]


def test_rate_limited_logging_is_counted_as_kernel_ratelimit(bed: Testbed, tmp_path: Path) -> None:
    c = collector(tmp_path, bed, [LIMITED])
    try:
        bed.send_udp(500, dport=9996)
    finally:
        summary = c.stop()
    matched, logged = _limited_counters(bed)
    assert matched == 500 and 0 < logged < 500
    assert summary["stats"]["stored"] == logged
    assert summary["lost"]["kernel_ratelimit"] == matched - logged
    exact = query(
        tmp_path,
        "SELECT packets, logged, rate_limited FROM rule_counters WHERE prefix = 'ft:D20' ORDER BY time DESC LIMIT 1",
    )
    assert exact == [(500, logged, True)]
    totals = query(tmp_path, "SELECT packets, logged, rate_limited FROM rule_totals WHERE prefix = 'ft:D20'")
    assert totals == [(500, logged, True)]


def _limited_counters(bed: Testbed) -> tuple[int, int]:
    for item in bed.nft_json()["nftables"]:
        rule = item.get("rule")
        if rule and any("log" in e and e["log"].get("prefix") == "ft:D20" for e in rule["expr"] if isinstance(e, dict)):
            counters = [e["counter"]["packets"] for e in rule["expr"] if isinstance(e, dict) and "counter" in e]
            return int(counters[0]), int(counters[1])
    raise AssertionError("rate-limited rule not found")


def test_overload_every_event_is_stored_or_counted_by_cause(bed: Testbed, tmp_path: Path) -> None:
    """A tiny socket buffer and a writer slower than the sender: loss, all of it accounted."""
    c = collector(
        tmp_path,
        bed,
        [DENY7],
        nflog=NflogConfig(groups=(1,), rcvbuf=4096, qthreshold=16),
        buffers=1,
        buffer_bytes=300_000,
        slow_writer_seconds=0.05,
        conntrack=False,
    )
    try:
        sent = bed.send_udp(30_000)
    finally:
        summary = c.stop()
    counted = bed.counter("ft:D7")
    assert counted == sent
    lost = summary["lost"]
    assert lost["rcvbuf_overrun"] > 0 and lost["writer_backlog"] > 0, f"the overload did not overload: {lost}"
    assert summary["stats"]["stored"] + sum(lost.values()) == counted
    stored = query(tmp_path, "SELECT count(*) FROM events")[0][0]
    assert stored == summary["stats"]["stored"]
    run = read_status(tmp_path / "flows.duckdb")["runs"][0]
    assert run["stored"] + run["lost_total"] == counted


def test_conntrack_gives_allowed_connections_their_counts(bed: Testbed, tmp_path: Path) -> None:
    c = collector(tmp_path, bed, [ALLOW12])
    try:
        server = in_netns(bed.rx, lambda: socket.create_server((RX_V4, 8080)))
        client = in_netns(bed.gen, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        with server, client:
            client.connect((RX_V4, 8080))
            peer, _ = server.accept()
            with peer:
                client.sendall(b"x" * 5000)
                got = 0
                while got < 5000:
                    got += len(peer.recv(65536))
                peer.sendall(b"y" * 100)
                client.recv(100)
            sport = client.getsockname()[1]
        time.sleep(0.2)
        subprocess.run(["ip", "netns", "exec", bed.rx, "conntrack", "-F"], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while c.book.stat_total("conntrack_events") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        c.stop()
    conns = query(
        tmp_path,
        f"SELECT rule_id, packets > 0, bytes >= 5000, reply_bytes >= 100 FROM connections WHERE sport = {sport}",
    )
    assert conns == [(12, True, True, True)]
    flows = query(
        tmp_path,
        "SELECT count_source, sum(events), sum(packets) > 0, sum(connections_started), sum(connections_completed) "
        f"FROM flows WHERE rule_id = 12 AND sport = {sport} GROUP BY ALL ORDER BY 1",
    )
    assert flows == [("conntrack", 0, True, 0, 1), ("nflog", 1, False, 1, 0)]


def test_a_real_lab_two_nodes_both_reporters_and_pod_enrichment(lab_id: str, tmp_path: Path) -> None:
    """`--lab` discovery, one reader per node, a forwarded flow seen by both nodes' dataplanes."""
    from enforcer.lab import lab_down, lab_up, plan_lab
    from enforcer.lab.plan import lab_resources
    from enforcer.model import Pod
    from flowtui.collector.service import lab_namespaces

    cluster = ResourceSet(
        nodes=(Node("n1"), Node("n2")),
        pods=(Pod("a", "default", labels=(("app", "web"),), node="n1"), Pod("c", "prod", node="n2")),
    )
    plan = plan_lab(cluster, lab_id)
    lab_up(plan)
    try:
        res = lab_resources(cluster, plan)
        a = next(p for p in plan.pods if p.name == "a")
        c_pod = next(p for p in plan.pods if p.name == "c")
        a_v4 = next(str(x) for x in a.addresses if x.version == 4)
        c_v4 = next(str(x) for x in c_pod.addresses if x.version == 4)
        namespaces = lab_namespaces(lab_id)
        assert sorted(namespaces) == [f"ft-{lab_id}-node-n1", f"ft-{lab_id}-node-n2"]
        for node, rule in (
            ("n1", f'ip saddr {a_v4} udp dport 7777 counter log prefix "ft:A30" group 2 accept'),
            ("n2", f'ip daddr {c_v4} udp dport 7777 counter log prefix "ft:D31" group 1 drop'),
        ):
            hook = "type filter hook forward priority 0; policy accept;"
            table = f"table inet ft {{\n chain forwarding {{\n  {hook}\n  {rule}\n }}\n}}\n"
            done = subprocess.run(
                ["ip", "netns", "exec", f"ft-{lab_id}-node-{node}", "nft", "-f", "-"],
                input=table,
                text=True,
                capture_output=True,
            )
            assert done.returncode == 0, done.stderr
        refs = [
            RuleRef(30, "NetworkPolicy", "default", "web-out", "default", 1, "egress", 0, "Allow"),
            RuleRef(31, "NetworkPolicy", "prod", "c-in", "default", 2, "ingress", 0, "Deny"),
        ]
        RuleTable(refs).dump(tmp_path / "rules.jsonl")
        col = Collector(
            CollectorConfig(
                db=tmp_path / "flows.duckdb",
                namespaces=tuple(namespaces),
                load_resources=lambda: res,
                bucket_seconds=1.0,
                counters_interval=0.5,
            )
        )
        col.start()
        try:
            sender = in_netns(a.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            with sender:
                for _ in range(200):
                    sender.sendto(b"hello", (c_v4, 7777))
        finally:
            summary = col.stop()
    finally:
        lab_down(lab_id)
    assert summary["stats"]["stored"] == 400 and sum(summary["lost"].values()) == 0
    rows = query(
        tmp_path,
        "SELECT node, reporter, action, policy, src_type, src_namespace, src_name, src_labels, dst_namespace, "
        "dst_name, sum(events) FROM flows_v GROUP BY ALL ORDER BY node",
    )
    assert rows == [
        (
            "n1",
            "src",
            "Allow",
            "0|default|np:default/web-out|allow|0",
            "wep",
            "default",
            "a",
            ["app=web"],
            "prod",
            "c",
            200,
        ),
        ("n2", "dst", "Deny", "0|default|np:prod/c-in|deny|0", "wep", "default", "a", ["app=web"], "prod", "c", 200),
    ]
    groups = query(tmp_path, "SELECT nflog_group, min(seq), max(seq), count(*) FROM events GROUP BY ALL ORDER BY 1")
    assert groups == [(1, 0, 199, 200), (2, 0, 199, 200)]


def test_kill_9_under_load_keeps_committed_rows_open_flows_and_counts_every_event(bed: Testbed, tmp_path: Path) -> None:
    """A collector process killed mid-flood, a flood while none runs, then the next run starts."""
    import os
    import signal
    import sys
    import threading

    RuleTable([DENY7]).dump(tmp_path / "rules.jsonl")
    db = tmp_path / "flows.duckdb"
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-c", "from flowtui.cli import main; main()", "collect", "--db", str(db)]
    argv += ["--netns", bed.rx, "--no-conntrack", "--snapshot-interval", "0.5", "--bucket", "15"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    log_file = tmp_path / "collect.log"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)
    snap = tmp_path / "flows.snapshot.duckdb"

    def snapshot(sql: str) -> tuple[object, ...] | None:
        try:
            con = duckdb.connect(str(snap), read_only=True)
        except duckdb.Error:
            return None
        try:
            return con.execute(sql).fetchone()
        finally:
            con.close()

    def wait(cond: object, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            assert proc.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        with bed.udp_socket() as s:
            while not stop.is_set() and sent[0] < 2_000_000:  # bounded
                for _ in range(500):
                    s.sendto(b"x" * 18, (RX_V4, 9999))
                sent[0] += 500

    try:
        wait(lambda: (snapshot("SELECT count(*) FROM rule_counters") or (0,))[0] > 0, "the baseline counters")  # type: ignore[index]
        sender = threading.Thread(target=flood)
        sender.start()
        wait(lambda: ((snapshot("SELECT count(*) FROM events") or (0,))[0] or 0) > 20_000, "committed events")  # type: ignore[operator,index]
        committed = snapshot("SELECT count(*) FROM events")
        assert committed is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.5)  # the flood goes on with no collector
        dead = read_status(db)["runs"][0]
        assert dead["state"] == "crashed" and dead["ended"] is None, "a killed collector shown as running"
        # the next run closes the dead one, while the flood goes on (its start-up window counts too)
        c = collector(tmp_path, bed, [DENY7], conntrack=False)
        time.sleep(1.0)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sender.join()
    c.stop()
    assert proc.returncode == -signal.SIGKILL
    counted = bed.counter("ft:D7")
    assert counted == sent[0]

    con = duckdb.connect(str(db), read_only=True)
    try:
        first = con.execute("SELECT outcome, ended IS NOT NULL FROM runs WHERE run_id = 1").fetchone()
        in_events = con.execute("SELECT count(*) FROM events e JOIN sources s USING (source_id) WHERE run_id = 1")
        events_1 = in_events.fetchone()[0]  # type: ignore[index]
        flows_1 = con.execute(
            "SELECT sum(events) FROM flows f JOIN sources s USING (source_id) WHERE run_id = 1"
        ).fetchone()[0]  # type: ignore[index]
        open_left = con.execute("SELECT count(*) FROM flows_open").fetchone()[0]  # type: ignore[index]
        lost = dict(
            con.execute(
                "SELECT cause, sum(events) FROM loss_latest WHERE cause <> 'kernel_ratelimit' GROUP BY cause"
            ).fetchall()
        )
        stored_2 = con.execute(
            "SELECT coalesce(sum(events), 0) FROM flows f JOIN sources s USING (source_id) WHERE run_id = 2"
        ).fetchone()[0]  # type: ignore[index]
    finally:
        con.close()
    assert first == ("crashed", True)
    assert events_1 >= committed[0]  # committed rows kept  # type: ignore[index]
    assert flows_1 == events_1  # and every committed event has its flow, though its 15 s bucket never closed
    assert open_left == 0
    assert lost.get("collector_down", 0) > 0  # the flood after the kill
    print(
        f"kill -9: {counted} logged, run 1 stored {flows_1} ({committed} seen committed), run 2 {stored_2}, lost {lost}"
    )
    assert stored_2 > 0  # the second run read part of the flood
    assert flows_1 + stored_2 + sum(lost.values()) == counted, (counted, flows_1, stored_2, lost)
    status = read_status(db, last_runs=2)["runs"]
    assert [r["state"] for r in status] == ["stopped", "crashed"]
    assert status[1]["lost"]["collector_down"] == lost["collector_down"]
