"""The lab's etcd mode without a kernel: planning members, their names, the lab's record and
certificates, reading an agent's report, and how `--lab` picks the lab's datastore."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from contextlib import AbstractContextManager
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography import x509

from enforcer.datastore import Datastore
from enforcer.lab import cluster as cluster_mod
from enforcer.lab import parse_target, plan_lab
from enforcer.lab.cluster import agent_report, create_cluster, logged_report, read_cluster
from enforcer.lab.names import LabError, Target, netns_name, target_of_netns
from enforcer.loader import load_text
from enforcer.model import ResourceSet
from flowtui.cli.main import cli
from flowtui.cli.state import Runtime

PODS = """apiVersion: v1
kind: Pod
metadata: {name: a1, namespace: default}
spec: {nodeName: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: b1, namespace: default}
spec: {nodeName: node-b}
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Labs' state directories under tmp_path instead of /run/flowtui/labs."""
    folder = tmp_path / "labs"
    monkeypatch.setattr(cluster_mod, "LAB_RUN_DIR", folder)
    return folder


def test_members_are_named_and_placed_on_the_underlay() -> None:
    assert parse_target("etcd:m0") == Target("etcd", "m0") and str(Target("etcd", "m0")) == "etcd:m0"
    assert netns_name("xbu", "etcd:m1") == "ft-xbu-etcd-m1"
    assert target_of_netns("xbu", "ft-xbu-etcd-m1") == Target("etcd", "m1")
    resources = load_text(PODS, "pods.yaml")
    plain = plan_lab(resources, "xbu")
    plan = plan_lab(resources, "xbu", etcd_members=3)
    assert not plain.etcd and [m.name for m in plan.etcd] == ["m0", "m1", "m2"]
    assert [str(m.address) for m in plan.etcd] == ["172.31.254.10", "172.31.254.11", "172.31.254.12"]
    assert plan.nodes == plain.nodes and plan.pods == plain.pods  # members move nothing
    node = plan.netns("ft-xbu-node-node-a")
    assert "172.31.254.11 dev eth0 scope link" in {str(r) for r in node.routes}  # nodes reach every member...
    member = plan.netns("ft-xbu-etcd-m1")
    routes = {str(r) for r in member.routes}
    back = {f"{a} dev eth0 scope link" for n in plan.nodes for a in n.addresses if a.version == 4}
    assert back <= routes  # ...and back
    assert "172.31.254.10 dev eth0 scope link" in routes and not any(r.startswith("10.244.") for r in routes)  # no pods
    assert plan.addresses("etcd:m2") == (ipaddress.ip_address("172.31.254.12"),)


def test_member_counts_and_addresses_are_checked() -> None:
    with pytest.raises(LabError, match="etcd members: 8"):
        plan_lab(ResourceSet(), "xbu", etcd_members=8)
    taken = load_text("""apiVersion: v1
kind: Node
metadata: {name: node-x}
status: {addresses: [{type: InternalIP, address: 172.31.254.10}]}
""", "node.yaml")
    with pytest.raises(LabError, match=r"172\.31\.254\.10 is used by both node node-x .* and etcd member m0"):
        plan_lab(taken, "xbu", etcd_members=1)


def test_record_and_certificates(run_dir: Path) -> None:
    cluster = create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=3))
    assert read_cluster("xbu") == cluster
    assert cluster.dir == run_dir / "xbu"
    assert cluster.agent_url == "etcds://172.31.254.10:2379,172.31.254.11:2379,172.31.254.12:2379"
    assert cluster.url == "etcds://" + ",".join(f"127.0.0.1:{m.forward_port}" for m in cluster.members)
    assert len({m.forward_port for m in cluster.members}) == 3
    for path in (cluster.ca, cluster.cert, cluster.key):
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(Path(cluster.ca).read_bytes())
    for member in cluster.members:
        cert = x509.load_pem_x509_certificate((cluster.dir / "tls" / f"{member.name}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(map(str, sans.get_values_for_type(x509.IPAddress))) == {member.address, "127.0.0.1"}
    client = x509.load_pem_x509_certificate(Path(cluster.cert).read_bytes())
    client.verify_directly_issued_by(ca)
    assert read_cluster("xbv") is None  # a lab without etcd


def test_a_damaged_record_is_a_clear_error(run_dir: Path) -> None:
    folder = run_dir / "xbu"
    folder.mkdir(parents=True)
    (folder / "cluster.json").write_text("{not json")
    with pytest.raises(LabError, match=r"cluster\.json: unreadable: .*lab down --lab xbu"):
        read_cluster("xbu")
    (folder / "cluster.json").write_text(json.dumps({"lab_id": "xbu", "members": [{"name": "m0"}]}))
    with pytest.raises(LabError, match=r"cluster\.json: bad field 'address'"):
        read_cluster("xbu")


def test_agent_report_is_the_last_of_this_run(run_dir: Path) -> None:
    cluster = create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=1))
    log = cluster.agent_log("node-a")
    assert logged_report(log) is None and agent_report(cluster, "node-a", 123) is None
    events = [{"event": "reconciled", "state": "in-sync", "revision": 4},
              {"event": "degraded", "state": "degraded", "revision": 4, "error": "x"}]
    log.write_text("".join(json.dumps(e) + "\n" for e in events) + "Traceback (most recent call last):\n")
    assert logged_report(log) == events[1]  # lines that are not reports are skipped
    assert agent_report(cluster, "node-a", 123) == events[1]  # no status file: the log
    with open(log, "a") as out:  # the supervisor restarted the agent: nothing reported yet
        out.write(json.dumps({"event": "started", "state": "starting", "revision": None, "by": "supervisor"}) + "\n")
    report = logged_report(log)
    assert report is not None and report["state"] == "starting" and report["revision"] is None
    # the agent's own status file wins, when the running agent wrote it
    from enforcer.agent_status import StatusWriter

    records = cluster.agents_state_dir / "etcd" / "0123456789ab"
    writer = StatusWriter(records, "node-a", "ft-xbu-node-node-a", cluster.agent_url)
    writer.update(state="in-sync", revision=9)
    mine = os.getpid()
    assert agent_report(cluster, "node-a", mine)["revision"] == 9  # type: ignore[index]
    assert agent_report(cluster, "node-a", mine + 1)["state"] == "starting"  # type: ignore[index]


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), obj=Runtime(is_root=lambda: True), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_lab_implies_its_datastore_unless_one_is_given(run_dir: Path, tmp_path: Path) -> None:
    cluster = create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=1))
    code, _, err = _run("get", "gnp", "--lab", "xbu", "--state-dir", str(tmp_path / "home"))
    # nothing listens on the lab's forwarder here: the error names it, so the lab's URL was used
    assert code == 1 and f"127.0.0.1:{cluster.members[0].forward_port}" in err and "Traceback" not in err
    assert "lab xbu's supervisor is not running" in err  # and why it cannot be reached
    code, _, err = _run("get", "gnp", "--lab", "xbu", "--datastore", f"file://{tmp_path}/files")
    assert code == 0 and "No resources found" in err
    code, _, err = _run("get", "gnp", "--lab", "xbv", "--state-dir", str(tmp_path / "home"))
    assert code == 0  # another lab: the directory datastore as before


def test_lab_up_etcd_checks_input_before_starting_anything(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Not_A_Label}\n")
    code, _, err = _run("lab", "up", "--lab", "xbu", "--datastore", "etcd", "-f", str(bad),
                        "--state-dir", str(tmp_path / "s"))
    assert code == 2 and f"{bad}:" in err
    clash = tmp_path / "clash.yaml"
    clash.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n"
                     "status: {addresses: [{type: InternalIP, address: 172.31.254.10}]}\n")
    code, _, err = _run("lab", "up", "--lab", "xbu", "--datastore", "etcd", "-f", str(clash),
                        "--state-dir", str(tmp_path / "s"))
    assert code == 2 and "etcd member m0" in err
    assert not (run_dir / "xbu").exists()
    code, _, err = _run("lab", "up", "--lab", "xbu", "--etcd-members", "3", "-f", str(clash))
    assert code == 2 and "--etcd-members goes with --datastore etcd" in err


def test_dashboard_leaves_enforcement_to_the_agents(run_dir: Path, tmp_path: Path) -> None:
    from flowtui.cli.tui import _control

    if os.geteuid() != 0:
        pytest.skip("the dashboard enforces only as root; this checks that it does not in etcd mode")
    create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=1))
    with click.Context(cli).scope() as ctx:
        ctx.params["lab_id"] = "xbu"
        control = _control((), None, str(tmp_path / "home"), "xbu", False)
    assert not control.can_change and "etcd mode" in control.why_not
    assert str(control.datastore.url).startswith("etcds://127.0.0.1:")  # the lab's datastore


def test_apply_to_an_etcd_lab_refuses_a_member_address(run_dir: Path, tmp_path: Path) -> None:
    from flowtui.cli.state import store_planned

    create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=2))
    clash = tmp_path / "clash.yaml"
    clash.write_text("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n"
                     "status: {addresses: [{type: InternalIP, address: 172.31.254.11}]}\n")
    ds = Datastore(tmp_path / "files")
    with click_context("xbu"), pytest.raises(SystemExit) as exit_info:
        store_planned(ds, [str(clash)], "xbu")
    assert exit_info.value.code == 2 and not ds.objects()
    with click_context("xbv"):
        assert store_planned(ds, [str(clash)], "xbv").changed  # a lab without etcd has no member there


HUNG_AGENT = """
import threading
from flowtui.cli.agent import dump_stacks_on_sigusr1
dump_stacks_on_sigusr1()
print("armed", flush=True)
def stuck_in_startup():
    threading.Event().wait()
stuck_in_startup()
"""
SYNCED_AGENT = """
import json, time
print(json.dumps({"event": "reconciled", "node": "n2", "state": "in-sync", "revision": 1}), flush=True)
time.sleep(30)
"""


def test_supervisor_restarts_an_agent_that_hangs_in_start_up_after_taking_its_stacks(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An agent alive but `starting` past the watchdog (it hangs: it would stay `starting` in
    `lab status` forever, as new agents once did after a supervisor was replaced) writes its
    threads' stacks to its log on SIGUSR1, is stopped and restarted, and is given twice as long
    next time; an agent that reported a state is left alone."""
    import sys
    import time

    from enforcer.lab import supervisor as supervisor_mod

    cluster = create_cluster(plan_lab(ResourceSet(), "xbw", etcd_members=1))
    monkeypatch.setattr(supervisor_mod, "lab_nodes", lambda lab_id: ["n1", "n2"])
    monkeypatch.setattr(supervisor_mod, "agent_argv", lambda c, node: [
        sys.executable, "-c", HUNG_AGENT if node == "n1" else SYNCED_AGENT])
    monkeypatch.setattr(supervisor_mod, "BACKOFF", (0.2, 0.8))
    monkeypatch.setattr(supervisor_mod, "START_WATCHDOG", 1.0)
    monkeypatch.setattr(supervisor_mod, "DUMP_GRACE", 0.5)
    sup = supervisor_mod.Supervisor(cluster)
    try:
        sup.step()
        first, synced = sup.agents["n1"].process, sup.agents["n2"].process
        assert first is not None and synced is not None
        deadline = time.monotonic() + 60  # the stacks need the handler: its import takes seconds under load
        while "armed" not in cluster.agent_log("n1").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        while sup.agents["n1"].restarts < 1 and time.monotonic() < deadline:
            sup.step()
            time.sleep(0.05)
        n1 = sup.agents["n1"]
        assert n1.restarts == 1 and n1.process is not first and first.poll() is not None
        assert n1.watchdog == 2.0  # twice as long for the next start
        log = cluster.agent_log("n1").read_text()
        assert "most recent call first" in log and "in stuck_in_startup" in log  # where it hung, on record
        assert "n1: still starting after" in capsys.readouterr().out
        assert sup.agents["n2"].process is synced and synced.poll() is None and sup.agents["n2"].reported
        assert agent_report(cluster, "n2", synced.pid)["state"] == "in-sync"  # type: ignore[index]
    finally:
        for agent in list(sup.agents.values()):
            sup._stop(agent)


def click_context(lab_id: str) -> AbstractContextManager[click.Context]:
    """A command's context with `--lab lab_id`, for helpers that read the command's options."""
    ctx = click.Context(cli)
    ctx.params["lab_id"] = lab_id
    return ctx.scope()


def test_supervisor_restarts_exited_agents_with_backoff(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's loop alone: agents that exit at once are restarted after a delay that
    doubles up to its cap; a node that goes away has its agent stopped."""
    import time

    from enforcer.lab import supervisor as supervisor_mod

    cluster = create_cluster(plan_lab(ResourceSet(), "xbu", etcd_members=1))
    nodes = ["n1", "n2"]
    monkeypatch.setattr(supervisor_mod, "lab_nodes", lambda lab_id: list(nodes))
    monkeypatch.setattr(supervisor_mod, "agent_argv",  # n1 fails at once, n2 runs
                        lambda c, node: ["sh", "-c", "exit 3"] if node == "n1" else ["sleep", "30"])
    monkeypatch.setattr(supervisor_mod, "BACKOFF", (0.2, 0.8))
    sup = supervisor_mod.Supervisor(cluster)
    starts: list[float] = []
    try:
        deadline = time.monotonic() + 10
        while len(starts) < 5 and time.monotonic() < deadline:
            before = sup.agents["n1"].process if "n1" in sup.agents else None
            sup.step()
            if sup.agents["n1"].process is not before:
                starts.append(time.monotonic())
            time.sleep(0.01)
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert len(gaps) == 4
        for gap, delay in zip(gaps, (0.2, 0.4, 0.8, 0.8), strict=True):  # doubling, then capped (not 1.6)
            assert delay <= gap < delay + 0.7, gaps
        state = json.loads((cluster.dir / "agents.json").read_text())
        assert state["n1"]["restarts"] == 4 and state["n2"]["restarts"] == 0 and state["n2"]["pid"]
        assert logged_report(cluster.agent_log("n1"))["by"] == "supervisor"  # type: ignore[index]
        sleeper = sup.agents["n2"].process
        assert sleeper is not None and sleeper.poll() is None
        nodes.remove("n2")
        sup.step()
        assert "n2" not in sup.agents and sleeper.poll() is not None
    finally:
        for agent in list(sup.agents.values()):
            sup._stop(agent)
