"""The agent without a kernel: a real etcd, an in-memory backend. Its metrics (per-agent registry,
served over HTTP), its status file, its CLI's refusals, and fail static when etcd goes silent
(a node cut off: no reset, no error, just nothing) rather than away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from enforcer.agent import Agent
from enforcer.agent_metrics import AgentMetrics, BadAddress, CollectorCounts, parse_address
from enforcer.agent_status import AgentStatus, StatusWriter, read_agents
from enforcer.datastore import open_datastore
from enforcer.datastore.etcd import SHARED, EtcdDatastore
from enforcer.nft import ir
from enforcer.nft.backend import FakeBackend
from enforcer.nft.compiler import CompileOptions, compile_node
from enforcer.reconcile import Reconciler
from flowtui.cli.main import cli
from tests.conftest import require_etcd
from tests.etcd_server import free_port
from tests.test_datastore import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]


def sample(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, {"node": metrics.node, **labels})
    return value


@contextmanager
def running(agent: Agent) -> Iterator[Agent]:
    """The agent on a thread for the block; stopped and joined after (even on failure)."""
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop"


def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_report_state_table_latency_and_the_collector() -> None:
    a, b = AgentMetrics("node-a"), AgentMetrics("node-b")  # two agents in one process: no clash
    assert sample(a, "flowtui_datastore_state", state="starting") == 1
    a.state("degraded")
    assert [sample(a, "flowtui_datastore_state", state=s) for s in ("starting", "in-sync", "degraded", "failed")] \
        == [0, 0, 1, 0]
    assert sample(b, "flowtui_datastore_state", state="degraded") == 0
    with pytest.raises(ValueError, match="unknown agent state 'up'"):
        a.state("up")
    table = ir.Table("inet", "flowtui", {"c1": ir.Chain("c1", ("accept", "drop")), "c2": ir.Chain("c2", ("drop",))},
                     {"s": ir.NftSet("s", "ipv4_addr", (), frozenset({"10.0.0.1", "10.0.0.2"}))})
    a.table(table)
    assert (sample(a, "flowtui_table_rules"), sample(a, "flowtui_table_chains"),
            sample(a, "flowtui_table_set_elements"), sample(a, "flowtui_table_sets")) == (3, 2, 2, 1)
    a.programmed(0.003)
    a.programmed(0.2)
    assert sample(a, "flowtui_policy_programming_seconds_count") == 2
    assert sample(a, "flowtui_policy_programming_seconds_bucket", le="0.005") == 1
    a.reconciled("applied")
    a.reconciled("failed")
    assert sample(a, "flowtui_reconciles_total", result="applied") == 1
    assert sample(a, "flowtui_reconciles_total", result="unchanged") == 0
    assert sample(a, "flowtui_reconcile_errors_total") == 1
    a.revision(42)
    assert sample(a, "flowtui_datastore_revision") == 42
    # the collector's hook: its own cumulative counts, read at every scrape
    counts = {"received": 0}
    a.collector(lambda: CollectorCounts(counts["received"], counts["received"] - 1, {"rcvbuf_overrun": 1}))
    counts["received"] = 10
    assert sample(a, "flowtui_nflog_events_received_total") == 10
    assert sample(a, "flowtui_nflog_events_stored_total") == 9
    assert sample(a, "flowtui_nflog_events_lost_total", cause="rcvbuf_overrun") == 1
    assert sample(b, "flowtui_nflog_events_received_total") == 0


def test_metrics_say_which_workload_chains_kept_the_walk_and_why() -> None:
    """Each cause a compile gives for keeping a chain's walk is its own label value; decision
    chains and their map elements are counted as the compile laid them out."""
    from enforcer.nft.decision import DEFAULT_BUDGET
    from enforcer.resolve import ClusterState
    from enforcer.synth import SynthSpec, synth_resources

    res = synth_resources(3, SynthSpec(nodes=1, namespaces=2, pods=12, policies=20, rules_per_policy=4))
    node = res.nodes[0].name

    def report(options: CompileOptions) -> tuple[AgentMetrics, tuple[Any, ...]]:
        layouts = compile_node(ClusterState(res), node, options).layouts
        metrics = AgentMetrics(node)
        metrics.layouts(layouts)
        return metrics, layouts

    def chains(m: AgentMetrics, layout: str, cause: str = "") -> float | None:
        return sample(m, "flowtui_workload_chains", layout=layout, cause=cause)

    m, layouts = report(CompileOptions(decision_budget=DEFAULT_BUDGET))
    decided = [c for c in layouts if c.layout == "decision"]
    assert chains(m, "decision") == len(decided) > 1
    assert sample(m, "flowtui_decision_map_elements") == sum(c.elements for c in decided) > 0
    m, layouts = report(CompileOptions(decision_budget=0))
    assert chains(m, "walk", "off") == len(layouts) > 1 and chains(m, "decision") == 0
    assert sample(m, "flowtui_decision_map_elements") == 0
    m, _ = report(CompileOptions(decision_budget=5))
    assert chains(m, "walk", "budget") == len(layouts) and chains(m, "walk", "off") == 0
    # room for the costliest chain's maps only: the others keep the walk for the node's budget
    m, _ = report(CompileOptions(decision_budget=DEFAULT_BUDGET, decision_node_budget=max(c.elements for c in decided)))
    assert chains(m, "walk", "node_budget") >= 1 and chains(m, "decision") >= 1
    assert chains(m, "walk", "unsupported") == 0


def test_metrics_are_served_over_http() -> None:
    metrics = AgentMetrics("node-a")
    port = free_port()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        metrics.revision(7)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'flowtui_datastore_revision{node="node-a"} 7.0' in text
        assert 'flowtui_datastore_state{node="node-a",state="starting"} 1.0' in text
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            AgentMetrics("other").serve(f"127.0.0.1:{port}")  # taken
    finally:
        server.close()


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9091", ("127.0.0.1", 9091)), (":9091", ("0.0.0.0", 9091)), ("[::1]:9091", ("::1", 9091)),
    ("localhost:1", ("localhost", 1)),
])
def test_metrics_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(("text", "error"), [
    ("9091", "expected HOST:PORT"), ("127.0.0.1:0", "port 1-65535"), ("host:http", "expected HOST:PORT"),
    ("::1:9091", "in brackets"), ("[nope]:9091", "not an IPv6 address"), ("127.0.0.1:70000", "port 1-65535"),
])
def test_bad_metrics_addresses(text: str, error: str) -> None:
    with pytest.raises(BadAddress, match=error):
        parse_address(text)


# ---- status ------------------------------------------------------------------------------------


def test_status_file_follows_the_agent_and_a_dead_agent_reads_stopped(tmp_path: Path) -> None:
    writer = StatusWriter(tmp_path, "node-a", "ft-xa1-node-a", "etcd://127.0.0.1:1")
    path = tmp_path / "agents" / "node-a.json"
    assert json.loads(path.read_text())["state"] == "starting" and oct(path.stat().st_mode & 0o777) == "0o600"
    writer.update(state="in-sync", revision=5)
    first = path.stat().st_mtime_ns, path.stat().st_ino
    writer.update(state="in-sync", revision=5)  # nothing changed: not rewritten
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == first
    degraded = writer.update(state="degraded", revision=5, error="etcd datastore etcd://127.0.0.1:1: refused")
    assert degraded.since >= degraded.updated - 0.001 and degraded.error is not None
    still = writer.update(state="degraded", revision=5)  # the error stays until in sync again
    assert still.error == degraded.error and still.since == degraded.since
    [read] = read_agents(tmp_path)
    assert read == still and read.pid == os.getpid()
    assert writer.update(state="in-sync", revision=6).error is None
    # an agent killed without a word left its last state; the reader says it is gone
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    doc = {**json.loads(path.read_text()), "pid": int(gone.stdout)}
    (tmp_path / "agents" / "node-b.json").write_text(json.dumps({**doc, "node": "node-b"}))
    (tmp_path / "agents" / "junk.json").write_text("{not json")
    found = {s.node: s for s in read_agents(tmp_path)}
    assert set(found) == {"node-a", "node-b"}
    assert found["node-b"].state == "stopped" and "was in-sync" in (found["node-b"].error or "")
    assert found["node-a"].state == "in-sync"


# ---- the agent on a real etcd, in-memory tables --------------------------------------------------


class Silencer:
    """A TCP proxy to etcd that can go silent: connections stay open, nothing passes either way
    (what a node cut off by a firewall sees: no reset, no error)."""

    def __init__(self, target: tuple[str, int], netns: str | None = None, port: int = 0) -> None:
        """Listens on 127.0.0.1:`port` (0: any) of lab namespace `netns` (None: here)."""
        from enforcer.lab.kernel import in_place

        def listen() -> socket.socket:
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            return sock

        self.target = target
        self.silent = threading.Event()
        self.listener = in_place(netns, listen)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.sockets.append(client)
                if self._closed:
                    client.close()
                    return
                try:
                    upstream = socket.create_connection(self.target)
                except OSError:
                    client.close()
                    continue
                self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.silent.is_set():
                    time.sleep(0.05)  # hold it: silence, not an error
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.listener.close()
            for sock in self.sockets:
                sock.close()


@pytest.fixture
def silencer(etcd_url: str) -> Iterator[Silencer]:
    host, port = etcd_url.split("://", 1)[1].split(":")
    proxy = Silencer((host, int(port)))
    yield proxy
    proxy.close()


def observed_agent(ds: EtcdDatastore, lab_id: str, backoff: tuple[float, float]
                   ) -> tuple[Agent, FakeBackend, AgentMetrics, list[dict[str, Any]]]:
    """An agent of node-a on a fake backend, with metrics, a status file and its events kept."""
    backend = FakeBackend()
    reconciler = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a"], lab_id=lab_id)
    metrics = AgentMetrics("node-a")
    status = StatusWriter(ds.path, "node-a", "memory", str(ds))
    events: list[dict[str, Any]] = []
    agent = Agent(ds, reconciler, "node-a", events.append, backoff=backoff, metrics=metrics, status=status,
                  heartbeat=0.3)
    return agent, backend, metrics, events


def test_agent_programs_changes_reports_them_and_degrades_when_etcd_goes_silent(
        etcd_url: str, silencer: Silencer, tmp_path: Path) -> None:
    writer = open_datastore(etcd_url, tmp_path / "writer")
    writer.apply_documents([str(SCENARIOS)])
    ds = open_datastore(f"etcd://127.0.0.1:{silencer.port}", tmp_path / "agent")
    assert isinstance(ds, EtcdDatastore)
    ds.kv.timeout = 1.0  # a silent etcd is an error after 1 s
    agent, backend, metrics, events = observed_agent(ds, "lab", backoff=(0.1, 0.5))
    with running(agent):
        until(lambda: agent.state == "in-sync", what="the first reconcile")
        table = backend.tables["node-a"]
        assert sample(metrics, "flowtui_table_rules") == sum(len(c.rules) for c in table.chains.values()) > 0
        assert sample(metrics, "flowtui_table_set_elements") == sum(len(s.elements) for s in table.sets.values())
        # the workload chains' layouts, as the compile chose them (the default options: decision maps)
        layouts = agent.reconciler.layouts("node-a")
        assert sample(metrics, "flowtui_workload_chains", layout="decision", cause="") \
            == sum(c.layout == "decision" for c in layouts) > 0
        assert sample(metrics, "flowtui_decision_map_elements") == sum(
            len(s.elements) for name, s in table.sets.items() if name[:2] in ("da", "dh", "dp", "di", "dn", "do")) > 0
        assert sample(metrics, "flowtui_policy_programming_seconds_count") == 0  # a list is no change seen
        # a change: seen by the watch, programmed, timed
        toggled = writer.set_disabled("gnp", "allow-cluster-internal", None, True)
        until(lambda: agent.revision >= toggled.revision, what="the toggle")
        assert sample(metrics, "flowtui_policy_programming_seconds_count") == 1
        assert sample(metrics, "flowtui_datastore_revision") == agent.revision
        assert sample(metrics, "flowtui_reconciles_total", result="applied") == 2  # the first table, the toggle
        assert read_agents(ds.path)[0].revision == agent.revision
        kept = backend.tables["node-a"]
        # etcd goes silent: no error ever comes on the watch, the heartbeat finds out
        silencer.silent.set()
        cut = time.monotonic()
        until(lambda: agent.state == "degraded", timeout=15, what="degraded")
        assert time.monotonic() - cut < 5
        [on_file] = read_agents(ds.path)
        assert on_file.state == "degraded" and f"127.0.0.1:{silencer.port}" in (on_file.error or "")
        assert sample(metrics, "flowtui_datastore_state", state="degraded") == 1
        assert backend.tables["node-a"] is kept  # fail static: nothing touched
        writer.set_disabled("gnp", "allow-cluster-internal", None, False)  # while cut off
        silencer.silent.clear()
        until(lambda: agent.state == "in-sync", timeout=15, what="convergence after the cut")
        assert backend.tables["node-a"] != kept  # the change made while cut off is enforced
        assert read_agents(ds.path)[0].state == "in-sync" and read_agents(ds.path)[0].error is None
        assert any(e["event"] == "degraded" for e in events)


# ---- the CLI's refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "error"), [
    (["--netns", "ft-xa1-node-a", "--host"], "--netns and --host exclude each other"),
    (["--netns", "docker-1"], "not a flowtui lab namespace"),
    (["--netns", "ft-xa1-node-a", "--lab", "xa2"], "belongs to lab xa1, not --lab xa2"),
    (["--host", "--metrics", "9091"], "--metrics '9091': expected HOST:PORT"),
    (["--host", "--node", "../x"], "not a node name"),
])
def test_agent_cli_refuses_bad_placements(argv: list[str], error: str, tmp_path: Path) -> None:
    args = ["agent", "--node", "node-a", "--datastore", "etcd://127.0.0.1:1", "--state-dir", str(tmp_path), *argv]
    if "--node" in argv:
        args = ["agent", "--datastore", "etcd://127.0.0.1:1", "--state-dir", str(tmp_path), *argv]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2, done.output
    assert error in done.output and not (tmp_path / "etcd").exists()


def test_agent_needs_etcd(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["agent", "--node", "node-a", "--host", "--state-dir", str(tmp_path)])
    assert done.exit_code == 2 and "needs an etcd datastore" in done.output


def test_status_shows_agents_without_a_flow_store(tmp_path: Path) -> None:
    url = "etcd://127.0.0.1:1"
    ds = open_datastore(url, tmp_path)
    StatusWriter(ds.path, "node-a", "this namespace", url).update(state="degraded", revision=3,
                                                                   error="etcd datastore: connection refused")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTUI_HOME": str(tmp_path)}
    done = subprocess.run([*FLOWTUI, "status", "--db", str(tmp_path / "none.duckdb"), "--datastore", url],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "agent node-a: DEGRADED since" in done.stdout and "connection refused" in done.stdout
    done = subprocess.run([*FLOWTUI, "status", "-o", "json", "--db", str(tmp_path / "none.duckdb"),
                           "--datastore", url], capture_output=True, text=True, env=env, timeout=60)
    [agent] = json.loads(done.stdout)["agents"]
    assert AgentStatus(**agent).state == "degraded" and agent["revision"] == 3


def test_a_host_table_opens_the_failsafe_ports_before_any_policy() -> None:
    """What `--host` relies on: in every host endpoint chain (raw, mangle, filter; in and out),
    Felix's failsafe ports come first, before any tier (scenario 4: node-a's eth0 HEP with a policy
    that allows SSH only from 203.0.113.0/24)."""
    from enforcer.loader import load_paths
    from enforcer.reconcile import cluster_state
    from enforcer.ruleids import IdAllocator

    state = cluster_state(load_paths([str(SCENARIOS)]), "xa1")
    compiled = compile_node(state, "node-a", CompileOptions(), IdAllocator())
    felix = state.felix
    heps = {name: c for name, c in compiled.table.chains.items()
            if name.split("-node-a-eth0")[0] in ("fh", "th", "mangle-fh", "raw-fh", "raw-th") and c.hook is None}
    assert {n.split("-node-a-eth0")[0] for n in heps} == {"fh", "th", "mangle-fh", "raw-fh", "raw-th"}
    for name, chain in heps.items():
        inbound = "-fh" in f"-{name}"
        ports = list(felix.failsafe_inbound if inbound else felix.failsafe_outbound)
        if name.startswith("raw-"):  # untracked: the other direction's ports as source ports too
            ports += list(felix.failsafe_outbound if inbound else felix.failsafe_inbound)
        head = chain.rules[:len(ports)]
        assert len(ports) >= 9 and all("th dport" in r or "th sport" in r for r in head), (name, head)
        assert {f"{fs.port}" for fs in ports} == {r.split("port ", 1)[1].split()[0] for r in head}
        assert all(r.split(" counter")[0].endswith(" accept") or " accept comment" in r for r in head), name
        policy = next((i for i, r in enumerate(chain.rules) if "jump pi-" in r or "jump po-" in r), len(chain.rules))
        assert policy > len(ports), name  # the host's policy only after every failsafe


def test_agent_rides_out_a_member_down_and_degrades_without_quorum(tmp_path: Path) -> None:
    """Three members: the first one named down changes nothing (the watch goes to the next);
    with two down the last one has no leader, ends the watch itself, and the agent is degraded;
    with quorum back it converges on what was written meanwhile."""
    require_etcd()
    from tests.etcd_server import etcd_cluster

    with etcd_cluster(3) as cluster:
        writer = open_datastore(cluster.url, tmp_path / "writer")
        writer.apply_documents([str(SCENARIOS)])
        first, second, third = cluster.members
        first.process.kill()
        first.process.wait()
        ds = open_datastore(cluster.url, tmp_path / "agent")
        assert isinstance(ds, EtcdDatastore)
        backend = FakeBackend()
        reconciler = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a"], lab_id="lab")
        events: list[dict[str, Any]] = []
        agent = Agent(ds, reconciler, "node-a", events.append, backoff=(0.1, 0.5), heartbeat=0.5)
        with running(agent):
            until(lambda: agent.state == "in-sync", what="the first reconcile")
            toggled = writer.set_disabled("gnp", "allow-cluster-internal", None, True)
            until(lambda: agent.revision >= toggled.revision, what="the toggle through a surviving member")
            assert not any(e["event"] == "degraded" for e in events)
            kept = backend.tables["node-a"]
            third.process.kill()  # quorum lost: `second` is alone and leaderless
            third.process.wait()
            until(lambda: agent.state == "degraded", timeout=30, what="degraded without quorum")
            assert backend.tables["node-a"] is kept
            third.restart()
            until(lambda: agent.state == "in-sync", timeout=30, what="in sync with quorum back")
            enabled = writer.set_disabled("gnp", "allow-cluster-internal", None, False)
            until(lambda: agent.revision >= enabled.revision, what="following changes again")
            assert backend.tables["node-a"] != kept


def test_agent_converges_as_soon_as_quorum_returns_whatever_its_back_off(tmp_path: Path) -> None:
    """The back-off's wait (30 s here) ends when a member says it can serve again: converged on
    what was written meanwhile within 5 s of quorum's return (the issue's bound)."""
    require_etcd()
    from tests.etcd_server import etcd_cluster

    with etcd_cluster(3) as cluster:
        writer = open_datastore(cluster.url, tmp_path / "writer")
        assert isinstance(writer, EtcdDatastore)
        writer.apply_documents([str(SCENARIOS)])
        ds = open_datastore(cluster.url, tmp_path / "agent")
        assert isinstance(ds, EtcdDatastore)
        reconciler = Reconciler(ds, FakeBackend(), compile_node, CompileOptions(), lambda: ["node-a"], lab_id="lab")
        agent = Agent(ds, reconciler, "node-a", lambda _: None, backoff=(30.0, 30.0), heartbeat=0.5)
        with running(agent):
            until(lambda: agent.state == "in-sync", what="the first reconcile")
            _, second, third = cluster.members
            for member in (second, third):
                member.process.kill()
                member.process.wait()
            until(lambda: agent.state == "degraded", timeout=30, what="degraded without quorum")
            second.restart()
            third.restart()
            until(lambda: writer.kv.healthy() is not None, timeout=30, what="quorum back")
            back = time.monotonic()
            toggled = writer.set_disabled("gnp", "allow-cluster-internal", None, True)
            until(lambda: agent.state == "in-sync" and agent.revision >= toggled.revision, timeout=30,
                  what="in sync with quorum back")
            assert time.monotonic() - back < 5.0


POD_B = """apiVersion: v1
kind: Pod
metadata: {name: client-b, namespace: production, labels: {app: client, role: client}}
spec: {nodeName: node-b}
status: {podIP: 10.244.2.77, podIPs: [{ip: 10.244.2.77}]}
"""
POLICY = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: mirror-test}
spec:
  order: 5
  selector: tier == 'frontend'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, source: {selector: role == 'client'}, destination: {ports: [PORT]}}
  - {action: Deny, protocol: UDP, destination: {ports: [PORT]}}
"""
# node-a's frontends are selected; the client pod is on node-b: only node-a's sets see it.


def test_the_agents_mirror_enforces_what_a_fresh_list_and_compile_give(etcd_url: str, tmp_path: Path) -> None:
    """The agent reads etcd once and then keeps what it listed current from the watch: after a
    policy added, edited, a pod and a policy in one transaction, a pod removed, toggles and a
    delete, each reconciled from that copy, the node's table is what a fresh process compiles
    from a fresh list of etcd (with the same rule ids)."""
    from enforcer.reconcile import cluster_state
    from enforcer.ruleids import IdAllocator, RuleIdError, RuleTable

    writer = open_datastore(etcd_url, tmp_path / "writer")
    writer.apply_documents([str(SCENARIOS)])
    ds = open_datastore(etcd_url, tmp_path / "agent")
    assert isinstance(ds, EtcdDatastore)
    lists: list[int] = []
    listing = ds.kv.list

    def counted(*prefixes: str) -> Any:
        if not any(p.startswith(SHARED) for p in prefixes):  # the desired state, not the shared records
            lists.append(1)
        return listing(*prefixes)

    ds.kv.list = counted  # type: ignore[method-assign]
    backend = FakeBackend()
    reconciler = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a"], lab_id="lab")
    agent = Agent(ds, reconciler, "node-a", lambda _: None, heartbeat=0.3)

    def write(name: str, text: str) -> int:
        path = tmp_path / name
        path.write_text(text)
        return writer.apply_documents([str(path)]).revision

    changes: list[tuple[str, Callable[[], int]]] = [
        ("policy added", lambda: write("p1.yaml", POLICY.replace("PORT", "9000"))),
        ("policy edited", lambda: write("p2.yaml", POLICY.replace("PORT", "9001"))),
        ("pod and policy in one transaction",
         lambda: write("p3.yaml", POD_B + "---\n" + POLICY.replace("PORT", "9002"))),
        ("toggled off", lambda: writer.set_disabled("gnp", "mirror-test", None, True).revision),
        ("toggled on", lambda: writer.set_disabled("gnp", "mirror-test", None, False).revision),
        ("pod removed", lambda: writer.delete("pod", "client-b", "production").revision),
        ("policy deleted", lambda: writer.delete("gnp", "mirror-test").revision),
    ]
    with running(agent):
        until(lambda: agent.state == "in-sync", what="the first reconcile")
        fresh = open_datastore(etcd_url, tmp_path / "fresh")  # each read lists etcd afresh
        for what, change in changes:
            revision = change()
            until(lambda r=revision: agent.revision >= r and agent.state == "in-sync", what=what)  # type: ignore[misc]

            def enforced() -> bool:
                # A write of both watched ranges reaches the agent as two streams' events: the
                # revision may be enforced before the second half is, so wait for the whole.
                try:
                    ids = IdAllocator.load(ds.ids_path, RuleTable.load(ds.rules_path))
                except RuleIdError:  # read while the agent appends a line
                    return False
                expected = compile_node(cluster_state(fresh.resources(), "lab"), "node-a", CompileOptions(), ids)
                # every rule id was already allocated by the agent, and its table is the fresh one
                return ids.pending == 0 and backend.tables["node-a"] == expected.table

            until(enforced, what=f"{what}: the table a fresh list and compile give")
    assert len(lists) == 1  # one list at the start: every change was read from the mirror


def _clashing_pods(folder: Path) -> Path:
    """Two pods that are valid objects but cannot share a lab: one address for both."""
    docs = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": name, "namespace": "default", "labels": {"app": "clash"}},
             "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "busybox"}]},
             "status": {"podIP": "10.244.77.7", "podIPs": [{"ip": "10.244.77.7"}]}} for name in ("clash-1", "clash-2")]
    path = folder / "clash.yaml"
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path


def test_agent_fails_static_when_the_store_cannot_be_planned_for_its_lab(etcd_url: str, tmp_path: Path) -> None:
    writer = open_datastore(etcd_url, tmp_path / "writer")
    writer.apply_documents([str(SCENARIOS)])
    ds = open_datastore(etcd_url, tmp_path / "agent")
    assert isinstance(ds, EtcdDatastore)
    agent, backend, metrics, events = observed_agent(ds, "xp1", backoff=(0.1, 0.3))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        until(lambda: agent.state == "in-sync", what="the first reconcile")
        kept = backend.tables["node-a"]
        bad = writer.apply_documents([str(_clashing_pods(tmp_path))])
        until(lambda: agent.state == "failed", what="failed")
        assert thread.is_alive(), "the agent exited"
        assert "10.244.77.7" in (agent.error or "") and "clash-" in (agent.error or "")
        assert backend.tables["node-a"] is kept  # fail static: the last table stays
        [on_file] = read_agents(ds.path)
        assert on_file.state == "failed" and "10.244.77.7" in (on_file.error or "")
        assert sample(metrics, "flowtui_datastore_state", state="failed") == 1
        assert any(e["event"] == "failed" for e in events)
        # the bad object removed: the agent converges past it
        gone = writer.delete("pod", "clash-2", "default")
        until(lambda: agent.state == "in-sync" and agent.revision >= gone.revision, what="convergence")
        assert agent.revision > bad.revision
        assert thread.is_alive()
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive(), "the agent did not stop"


def test_agent_fails_static_on_an_object_another_tool_stored_unreadable(etcd_url: str, tmp_path: Path) -> None:
    """calicoctl-style writes are read as they are: one the loader rejects makes the node
    `failed` (named in the error), its table kept, and the agent keeps watching."""
    from enforcer.datastore.etcd import CALICO_PREFIX, LAYOUT

    writer = open_datastore(etcd_url, tmp_path / "writer")
    writer.apply_documents([str(SCENARIOS)])
    assert isinstance(writer, EtcdDatastore)
    ds = open_datastore(etcd_url, tmp_path / "agent")
    assert isinstance(ds, EtcdDatastore)
    backend = FakeBackend()
    reconciler = Reconciler(ds, backend, compile_node, CompileOptions(), lambda: ["node-a"], lab_id="xp3")
    events: list[dict[str, Any]] = []
    agent = Agent(ds, reconciler, "node-a", events.append, backoff=(0.1, 0.3), heartbeat=0.3)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    key = CALICO_PREFIX + "globalnetworkpolicies/xp3-bad"
    try:
        until(lambda: agent.state == "in-sync", what="the first reconcile")
        kept = backend.tables["node-a"]
        bad = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "xp3-bad"},
               "spec": {"selector": "all()", "types": ["Ingress"], "ingress": [{"action": "Teleport"}]}}
        writer.kv.apply(key, json.dumps(bad))
        # the layout moves (as another writer's apply moves it): the next reconcile loads every object
        layout = writer.kv.get(LAYOUT)
        assert layout is not None
        writer.kv.apply(LAYOUT, layout.value.decode())
        until(lambda: agent.state == "failed", what=f"failed: {events[-3:]}")
        assert thread.is_alive(), "the agent exited"
        assert "xp3-bad" in (agent.error or "") and "Teleport" in (agent.error or "")
        assert backend.tables["node-a"] is kept
        gone = writer.kv.delete(key)
        until(lambda: agent.state == "in-sync" and agent.revision >= gone, what="convergence")
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive(), "the agent did not stop"
