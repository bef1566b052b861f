"""The lab in etcd mode, in the kernel: `lab up --datastore etcd` with three members and three
nodes, commands given only `--lab` reaching every node through the agents, and the faults a
cluster must survive (a member down, quorum lost, a node cut from etcd, an agent killed).

One lab for the module (building it costs tens of seconds on a loaded machine); every test
leaves it healthy and enforcing `deny-icmp` as it found it. Probes are pings between pods on
different nodes: `deny-icmp` (ingress ICMP denied to every pod) is enforced by the destination's
node, so each ping tells about one node's kernel.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_etcd

pytestmark = pytest.mark.kernel

FLOWTUI = [sys.executable, "-c", "from flowtui.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[1]
PODS = {"a1": ("node-a", "10.244.1.10"), "b1": ("node-b", "10.244.2.10"), "c1": ("node-c", "10.244.3.10")}
# Each ping's destination is on another node: a1 -> b1 is decided by node-b's kernel, and so on.
PINGS = {"node-b": ("a1", "b1"), "node-c": ("b1", "c1"), "node-a": ("c1", "a1")}
CLUSTER_YAML = "".join(f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}
spec: {{nodeName: {node}}}
status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
""" for name, (node, ip) in PODS.items())
DENY_YAML = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-icmp}
spec:
  selector: all()
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: ICMP}
  - {action: Allow}
"""
CONVERGE_S = 5.0  # after etcd is back (the bound): the agents probe its health while degraded


class Lab:
    def __init__(self, lab_id: str, home: Path, files: Path) -> None:
        self.id = lab_id
        self.home = home
        self.files = files
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWTUI_DATASTORE", "FLOWTUI_ETCD",
                                                                             "FLOWTUI_LAB"))}
        self.env.update(PYTHONPATH=str(ROOT), FLOWTUI_HOME=str(home))

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FLOWTUI, *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.cli(*args)
        assert done.returncode == 0, f"flowtui {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done

    def status(self) -> dict[str, Any]:
        return json.loads(self.ok("lab", "status", "--lab", self.id, "-o", "json").stdout)  # type: ignore[no-any-return]

    def cluster(self) -> Any:
        from enforcer.lab.cluster import read_cluster

        cluster = read_cluster(self.id)
        assert cluster is not None
        return cluster

    def agents(self) -> dict[str, dict[str, Any]]:
        from enforcer.lab.cluster import agents_status

        return {a["node"]: a for a in agents_status(self.cluster())}

    def ping(self, node: str) -> bool:
        """Whether a ping whose destination is on `node` passes."""
        src, dst = PINGS[node]
        done = subprocess.run(["ip", "netns", "exec", f"ft-{self.id}-pod-default.{src}", "ping", "-c1", "-W1",
                               PODS[dst][1]], capture_output=True, timeout=30)
        return done.returncode == 0

    def pings(self) -> dict[str, bool]:
        return {node: self.ping(node) for node in sorted(PINGS)}

    def toggle(self, disabled: bool) -> subprocess.CompletedProcess[str]:
        return self.ok("policy", "disable" if disabled else "enable", "deny-icmp", "--lab", self.id)

    def revision(self) -> int:
        from enforcer.datastore import TLSFiles, open_datastore

        cluster = self.cluster()
        return open_datastore(cluster.url, self.home, TLSFiles(cluster.ca, cluster.cert, cluster.key)).revision


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    """Poll `check` until it returns something true; its value. Fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s (last: {value!r})")
        time.sleep(every)


def in_sync(lab: Lab, nodes: tuple[str, ...] = tuple(PINGS), revision: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        want = lab.revision() if revision is None else revision
        agents = lab.agents()
        return all(agents.get(n, {}).get("state") == "in-sync" and (agents[n].get("revision") or 0) >= want
                   for n in nodes)
    return check


def all_pings(lab: Lab, passing: bool) -> Callable[[], bool]:
    return lambda: all(ok == passing for ok in lab.pings().values())


@contextmanager
def etcd_lab(prefix: str, folder: Path, members: int, files: dict[str, str] | None = None) -> Iterator[Lab]:
    """`lab up --datastore etcd` of the three pods (`cluster.yaml`) with `members` etcd members, as
    lab `prefix` + random hex; `files` (name: text) written beside it with `deny.yaml`. Its logs
    are kept in `folder`/logs; the lab is taken down after, whatever happened."""
    require_etcd()
    from enforcer.lab import lab_down
    from enforcer.lab.state import lab_namespaces

    lab_id = prefix + secrets.token_hex(3)[:5]
    assert not lab_namespaces(lab_id)
    (folder / "files").mkdir()
    for name, text in {"cluster.yaml": CLUSTER_YAML, "deny.yaml": DENY_YAML, **(files or {})}.items():
        (folder / "files" / name).write_text(text)
    the_lab = Lab(lab_id, folder / "home", folder / "files")
    try:
        up = the_lab.cli("lab", "up", "--lab", lab_id, "--datastore", "etcd", "--etcd-members", str(members),
                         "-f", str(folder / "files" / "cluster.yaml"))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "does not reconcile nodes itself in etcd mode" in up.stdout
        assert "agents: 3 of 3 nodes enforce revision" in up.stdout
        yield the_lab
    finally:
        _keep_logs(lab_id, folder / "logs")  # pytest keeps tmp_path_factory's folders of recent runs
        lab_down(lab_id)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with etcd_lab("xb", tmp_path_factory.mktemp("xb-lab"), members=3) as the_lab:
        yield the_lab


def _keep_logs(lab_id: str, into: Path) -> None:
    import shutil

    from enforcer.lab.cluster import lab_dir

    source = lab_dir(lab_id)
    for log in [*source.glob("*.log"), *source.glob("*/*.log"), *source.glob("agents.json")]:
        target = into / log.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, target)


def test_status_shows_datastore_members_and_agents(lab: Lab) -> None:
    status = lab.status()
    ds = status["datastore"]
    assert ds["url"].startswith("etcds://127.0.0.1:") and len(ds["endpoints"]) == 3
    for path in (ds["ca"], ds["cert"], ds["key"]):
        assert Path(path).is_file() and path.startswith(f"/run/flowtui/labs/{lab.id}/")
    assert [m["name"] for m in ds["members"]] == ["m0", "m1", "m2"]
    assert all(m["state"] == "healthy" and m["pid"] for m in ds["members"])
    agents = {a["node"]: a for a in status["agents"]}
    assert sorted(agents) == ["node-a", "node-b", "node-c"]
    assert all(a["state"] == "in-sync" and a["pid"] and a["revision"] >= 1 for a in agents.values())
    # members listen on their lab address only: nothing of theirs in the root namespace...
    for member in ds["members"]:
        listening = subprocess.run(["ip", "netns", "exec", member["netns"], "ss", "-Htln"], capture_output=True,
                                   text=True, timeout=30, check=True).stdout
        ports = {line.split()[3] for line in listening.splitlines()}
        assert ports == {f"{member['address']}:2379", f"{member['address']}:2380"}, ports
    # ...and each agent runs inside its node's namespace
    for node, agent in agents.items():
        here = os.stat(f"/proc/{agent['pid']}/ns/net")
        want = os.stat(f"/var/run/netns/ft-{lab.id}-node-{node}")
        assert (here.st_dev, here.st_ino) == (want.st_dev, want.st_ino)
    text = lab.ok("lab", "status", "--lab", lab.id).stdout
    assert "MEMBER" in text and "AGENT" in text and "healthy" in text and "in-sync" in text
    # TLS is required: the lab's etcd refuses a client without a certificate
    from enforcer.datastore import TLSFiles, open_datastore
    from enforcer.datastore.store import DatastoreError

    with pytest.raises(DatastoreError):
        _ = open_datastore(ds["url"], lab.home / "nocert", TLSFiles(ds["ca"])).revision


def test_apply_and_toggle_with_only_lab_reach_every_node(lab: Lab) -> None:
    wait_for("pings pass before any policy", all_pings(lab, True))
    applied = lab.ok("apply", "--lab", lab.id, "-f", str(lab.files / "deny.yaml"))
    assert "gnp/deny-icmp created" in applied.stdout and "etcd mode" in applied.stderr
    got = lab.ok("get", "gnp", "deny-icmp", "--lab", lab.id, "-o", "json")  # the lab's datastore, no further flag
    assert json.loads(got.stdout)["metadata"]["name"] == "deny-icmp"
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)
    lab.toggle(disabled=True)
    wait_for("every node lets ICMP pass again", all_pings(lab, True), timeout=15)
    wait_for("agents in sync", in_sync(lab))
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)
    # --datastore given: that datastore, not the lab's
    other = lab.cli("get", "gnp", "--lab", lab.id, "--datastore", f"file://{lab.home}/other")
    assert other.returncode == 0 and "deny-icmp" not in other.stdout


def test_agents_write_every_nodes_flows_into_the_labs_dataset(lab: Lab) -> None:
    """The supervised agents collect (`--flows-dir`, the lab's default dataset): a denied ping to
    each node is a flow of that node, readable with `query --cluster`, and no event was lost."""
    _ensure_denied(lab)
    flows = lab.home / "flows" / lab.id
    assert lab.status()["datastore"]["flows_dir"] == str(flows)
    wait_for("pings denied", all_pings(lab, False), timeout=15)

    def denied_nodes() -> set[str]:
        done = lab.cli("query", "--cluster", str(flows), "-o", "json", "--sql",
                       "SELECT DISTINCT node FROM flows_v WHERE proto = 1 AND action = 'Deny' "
                       "AND policy_name = 'deny-icmp'")
        return {r["node"] for r in json.loads(done.stdout)} if done.returncode == 0 else set()

    assert wait_for("every node's denied pings in the dataset", lambda: denied_nodes() >= set(PINGS) or None,
                    timeout=30)
    lost = lab.ok("query", "--cluster", str(flows), "-o", "json", "--sql",
                  "SELECT coalesce(sum(events), 0) AS lost FROM loss_latest")
    assert json.loads(lost.stdout) == [{"lost": 0}]


def _agent(status: dict[str, Any], node: str) -> dict[str, Any]:
    return next(a for a in status["agents"] if a["node"] == node)


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(f"pid {pid} gone", lambda: not Path(f"/proc/{pid}").exists()
             or Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z", timeout=10)


def _member_pid(lab: Lab, name: str) -> int:
    from enforcer.lab.cluster import member_pid

    cluster = lab.cluster()
    pid = member_pid(cluster, cluster.member(name))
    assert pid is not None
    return pid


def _ensure_denied(lab: Lab) -> None:
    lab.ok("apply", "--lab", lab.id, "-f", str(lab.files / "deny.yaml"))
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)


def test_one_member_of_three_down_changes_nothing(lab: Lab) -> None:
    _ensure_denied(lab)
    _kill(_member_pid(lab, "m0"))  # the first endpoint of every client
    lab.toggle(disabled=True)  # applies still work...
    wait_for("every node lets ICMP pass", all_pings(lab, True), timeout=15)  # ...and reach every node
    wait_for("agents in sync with one member down", in_sync(lab), timeout=15)
    members = {m["name"]: m["state"] for m in lab.status()["datastore"]["members"]}
    assert members == {"m0": "down", "m1": "healthy", "m2": "healthy"}
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)
    # `lab up` again keeps the lab as it is and starts the member that is down
    again = lab.ok("lab", "up", "--lab", lab.id, "-f", str(lab.files / "cluster.yaml"))
    assert "agents: 3 of 3 nodes enforce revision" in again.stdout
    wait_for("m0 back", lambda: all(m["state"] == "healthy" for m in lab.status()["datastore"]["members"]))
    assert not any(lab.pings().values())


def _lose_quorum(lab: Lab) -> None:
    _kill(_member_pid(lab, "m1"))
    _kill(_member_pid(lab, "m2"))
    wait_for("m0 without quorum", lambda: lab.status()["datastore"]["members"][0]["state"] == "no-quorum")


def _restore_quorum(lab: Lab) -> float:
    from enforcer.lab.cluster import start_member, wait_ready

    cluster = lab.cluster()
    start_member(cluster, "m1")
    start_member(cluster, "m2")
    wait_ready(cluster)
    return time.monotonic()


def test_quorum_lost_keeps_tables_and_converges_after(lab: Lab) -> None:
    _ensure_denied(lab)
    before = lab.revision()
    _lose_quorum(lab)
    try:
        started = time.monotonic()
        refused = lab.cli("policy", "disable", "deny-icmp", "--lab", lab.id, timeout=120)
        assert refused.returncode != 0 and "127.0.0.1:" in refused.stderr and "Traceback" not in refused.stderr
        assert time.monotonic() - started < 60
        time.sleep(1)
        assert not any(lab.pings().values())  # the last table is enforced on every node
        assert all(a["pid"] for a in lab.agents().values())  # no agent died of it
    finally:
        back = _restore_quorum(lab)
    assert lab.revision() == before  # the refused write changed nothing
    wait_for("agents in sync after quorum is back", in_sync(lab), timeout=CONVERGE_S)
    assert time.monotonic() - back < CONVERGE_S
    lab.toggle(disabled=True)
    wait_for("every node lets ICMP pass", all_pings(lab, True), timeout=15)
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)


def test_quorum_lost_agents_report_degraded(lab: Lab) -> None:
    _ensure_denied(lab)
    _lose_quorum(lab)
    try:
        wait_for("agents degraded in lab status",
                 lambda: all(a["state"] == "degraded" for a in lab.status()["agents"]), timeout=20)
    finally:
        _restore_quorum(lab)
        wait_for("agents in sync", in_sync(lab), timeout=30)


# Both ways: with outgoing packets alone dropped, what etcd already sends on an open watch still
# arrives (only the ACKs are lost), and the agent would follow a change from its watch-fed copy.
CUT = """table inet xbcut {
  chain out { type filter hook output priority -10; ip daddr 172.31.254.0/24 tcp dport 2379 drop; }
  chain in { type filter hook input priority -10; ip saddr 172.31.254.0/24 tcp sport 2379 drop; }
}
"""


def test_node_cut_from_etcd_keeps_its_table_and_converges(lab: Lab) -> None:
    _ensure_denied(lab)
    wait_for("agents in sync", in_sync(lab))
    netns = f"ft-{lab.id}-node-node-c"
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=CUT, text=True, check=True, timeout=30)
    try:
        changed = lab.toggle(disabled=True)  # the others follow; node-c cannot
        assert "disabled" in changed.stdout
        wait_for("node-a and node-b let ICMP pass", lambda: lab.ping("node-a") and lab.ping("node-b"), timeout=15)
        wait_for("node-c degraded", lambda: _agent(lab.status(), "node-c")["state"] == "degraded", timeout=30)
        assert not lab.ping("node-c")  # its last table, still enforced
        assert lab.agents()["node-c"]["revision"] < lab.revision()
    finally:
        subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "xbcut"], check=True,
                       timeout=30)
    back = time.monotonic()
    wait_for("node-c in sync once the cut is gone", in_sync(lab, ("node-c",)), timeout=CONVERGE_S, every=0.1)
    assert time.monotonic() - back < CONVERGE_S
    assert lab.ping("node-c")
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)


def test_supervisor_restarts_a_killed_agent(lab: Lab) -> None:
    _ensure_denied(lab)
    old = lab.agents()["node-b"]
    _kill(old["pid"])

    def restarted_agent() -> dict[str, Any] | None:
        agent = lab.agents()["node-b"]
        return agent if agent["pid"] not in (None, old["pid"]) and agent["state"] == "in-sync" else None

    restarted = wait_for("node-b's agent restarted", restarted_agent, timeout=30)
    assert restarted["restarts"] == old["restarts"] + 1
    assert not lab.ping("node-b")  # the restart adopted the table, policy still enforced
    lab.toggle(disabled=True)
    wait_for("node-b follows changes again", lambda: lab.ping("node-b"), timeout=15)
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)


def test_a_killed_supervisor_is_replaced_by_lab_up(lab: Lab) -> None:
    from enforcer.lab.cluster import agent_pids, supervisor_pid

    _ensure_denied(lab)
    old = supervisor_pid(lab.id)
    assert old is not None
    before = set(agent_pids(lab.id))
    assert len(before) == 3
    _kill(old)
    assert lab.status()["datastore"]["supervisor"] is None
    # the CLI reaches etcd through the supervisor's forwarders: a clear error, and why
    cut_off = lab.cli("policy", "disable", "deny-icmp", "--lab", lab.id)
    assert cut_off.returncode == 1 and "connection refused" in cut_off.stderr
    assert f"lab {lab.id}'s supervisor is not running" in cut_off.stderr and "Traceback" not in cut_off.stderr
    assert set(agent_pids(lab.id)) == before and not any(lab.pings().values())  # agents run on, enforcing
    lab.cluster()  # the record is intact
    again = lab.ok("lab", "up", "--lab", lab.id, "-f", str(lab.files / "cluster.yaml"))
    assert "agents: 3 of 3 nodes enforce revision" in again.stdout
    new = supervisor_pid(lab.id)
    assert new not in (None, old)
    agents = agent_pids(lab.id)
    assert len(agents) == 3 and not before & set(agents)  # the orphans were replaced, not doubled
    assert sorted(a["pid"] for a in lab.agents().values()) == sorted(agents)
    assert not any(lab.pings().values())  # the new agents adopted the tables
    lab.toggle(disabled=True)
    wait_for("every node lets ICMP pass", all_pings(lab, True), timeout=15)
    lab.toggle(disabled=False)
    wait_for("every node denies ICMP", all_pings(lab, False), timeout=15)


def test_lab_down_stops_and_removes_everything(lab: Lab) -> None:
    from enforcer.lab.cluster import lab_dir
    from enforcer.lab.state import lab_namespaces

    status = lab.status()
    pids = [status["datastore"]["supervisor"], *(m["pid"] for m in status["datastore"]["members"]),
            *(a["pid"] for a in status["agents"])]
    assert all(pids)
    down = lab.ok("lab", "down", "--lab", lab.id)
    assert "removed" in down.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[
            0] == "Z", pid
    assert not lab_namespaces(lab.id) and not lab_dir(lab.id).exists()
    assert "not up" in lab.ok("lab", "down", "--lab", lab.id).stdout  # idempotent
    plain = lab.cli("get", "gnp", "--lab", lab.id)  # the lab's datastore is gone with it
    assert "deny-icmp" not in plain.stdout
