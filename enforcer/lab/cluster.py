"""A lab in etcd mode: its etcd members, their TLS material, its supervisor, and the record of it.

    record = create_cluster(plan)            # certificates, ports, data dirs: /run/flowtui/labs/<lab>
    start_member(record, "m0"); ...          # `etcd` inside ft-<lab>-etcd-m0, on its lab address
    start_supervisor(record)                 # loopback forwarders + one supervised agent per node
    read_cluster(lab_id)                     # what `--lab ID` finds: URL and TLS files
    stop_cluster(lab_id)                     # supervisor, members, files (lab_down calls it)

Everything of lab X lives in its state directory `/run/flowtui/labs/X/` (`lab_dir`): `cluster.json`
(this record), `tls/` (CA, member and client certificates), `etcd/<member>.data|.log|.pid`,
`supervisor.pid|.log`, `agents.json` (the supervisor's view) and `agents/<node>.log`. A fixed
place, not `--state-dir`, so that `--lab X` alone finds the lab's datastore and `lab down` (or the
test fixtures) can clean up after a crash.

Members listen only on their lab address (client 2379, peer 2380, TLS both ways). The root
namespace cannot route into a lab, and must not be given routes or interfaces, so the supervisor
forwards `127.0.0.1:<port>` (one port per member, in the root namespace) to the member, opening
each upstream connection from inside the member's own namespace (`enforcer.lab.forward`). TLS
stays end to end: member certificates name both the lab address and 127.0.0.1. Agents run inside
their node's namespace and reach the members over the underlay, as on real hosts, so a rule in a
node's namespace can cut that node from etcd.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from enforcer.lab.names import LabError, check_lab_id, netns_name
from enforcer.lab.spec import ETCD_CLIENT_PORT, ETCD_PEER_PORT, LabPlan
from enforcer.procs import pid_running

LAB_RUN_DIR = Path("/run/flowtui/labs")
RECORD = "cluster.json"
START_TIMEOUT = 60.0  # seconds for a cluster to elect a leader on a loaded machine
HEALTH_TIMEOUT = 3.0  # etcd answers /health within its own 1 s quorum-read timeout; leave it room
STOP_TIMEOUT = 10.0
QUOTA = 256 << 20


def lab_dir(lab_id: str) -> Path:
    """The lab's state directory (certificates, etcd data, logs, pids)."""
    return LAB_RUN_DIR / check_lab_id(lab_id)


@dataclass(frozen=True)
class Member:
    name: str  # m0, m1, ...
    address: str  # on the underlay
    forward_port: int  # 127.0.0.1:<port> in the root namespace reaches it


@dataclass(frozen=True)
class Cluster:
    """What `lab up --datastore etcd` made; `cluster.json` in the lab's state directory."""

    lab_id: str
    members: tuple[Member, ...]
    ca: str
    cert: str  # the client certificate the CLI and the agents present
    key: str
    flows_dir: str | None = None  # where the agents write the nodes' flows (`--flows-dir`), if anywhere

    @property
    def dir(self) -> Path:
        return lab_dir(self.lab_id)

    @property
    def url(self) -> str:
        """What the CLI (root namespace) uses: the loopback forwarders."""
        return "etcds://" + ",".join(f"127.0.0.1:{m.forward_port}" for m in self.members)

    @property
    def agent_url(self) -> str:
        """What the agents (in node namespaces) use: the members' lab addresses."""
        return "etcds://" + ",".join(f"{m.address}:{ETCD_CLIENT_PORT}" for m in self.members)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{m.forward_port}" for m in self.members)

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise LabError(f"lab {self.lab_id} has no etcd member {name!r} "
                       f"(members: {', '.join(m.name for m in self.members)})")

    def netns(self, member: Member) -> str:
        return netns_name(self.lab_id, f"etcd:{member.name}")

    def member_file(self, member: Member, suffix: str) -> Path:
        return self.dir / "etcd" / f"{member.name}{suffix}"

    def agent_log(self, node: str) -> Path:
        return self.dir / "agents" / f"{node}.log"

    @property
    def agents_state_dir(self) -> Path:
        """The agents' local records (rule ids, applied tables): one directory for every node of
        this machine, so the nodes share one id allocator, as they do without etcd."""
        return self.dir / "agents" / "state"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def create_cluster(plan: LabPlan, flows_dir: str | None = None) -> Cluster:
    """Certificates and the record for `plan`'s etcd members (nothing started); `flows_dir`: the
    agents collect their nodes' flows there. Replaces what a previous cluster of this lab left
    (call only when none is running)."""
    from enforcer.lab.tls import issue, new_authority, write_authority

    if not plan.etcd:
        raise LabError(f"lab {plan.lab_id}: the plan has no etcd members")
    folder = lab_dir(plan.lab_id)
    shutil.rmtree(folder, ignore_errors=True)
    tls = folder / "tls"
    tls.mkdir(parents=True, mode=0o700)
    (folder / "etcd").mkdir(mode=0o700)
    (folder / "agents").mkdir(mode=0o700)
    ca = new_authority(f"flowtui lab {plan.lab_id} etcd CA")
    ca_path = write_authority(ca, tls / "ca.crt")
    for m in plan.etcd:
        issue(ca, m.name, tls, server=True, addresses=[str(m.address), "127.0.0.1"])
    client = issue(ca, "client", tls, server=False)
    members = tuple(Member(m.name, str(m.address), _free_port()) for m in plan.etcd)
    cluster = Cluster(plan.lab_id, members, ca_path, client.cert, client.key, flows_dir)
    text = json.dumps({"lab_id": cluster.lab_id, "members": [asdict(m) for m in members], "ca": cluster.ca,
                       "cert": cluster.cert, "key": cluster.key, "flows_dir": flows_dir}, indent=2)
    (folder / RECORD).write_text(text + "\n")
    return cluster


def read_cluster(lab_id: str) -> Cluster | None:
    """The lab's etcd record, None when the lab does not run in etcd mode."""
    path = lab_dir(lab_id) / RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: unreadable: {exc} (`flowtui lab down --lab {lab_id}` removes it)") from None
    try:
        members = tuple(Member(str(m["name"]), str(m["address"]), int(m["forward_port"])) for m in data["members"])
        flows = data.get("flows_dir")
        cluster = Cluster(str(data["lab_id"]), members, str(data["ca"]), str(data["cert"]), str(data["key"]),
                          None if flows is None else str(flows))
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(f"{path}: bad field {exc} (`flowtui lab down --lab {lab_id}` removes it)") from None
    if cluster.lab_id != lab_id or not members:
        raise LabError(f"{path}: lab_id {cluster.lab_id!r} or members do not describe lab {lab_id}")
    return cluster


# --------------------------------------------------------------------------------------------
# Processes: found again by pid file, and only if the pid still runs what we started


def live_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in `pidfile` if that process runs and its command line contains `marker` (a pid
    reused by an unrelated process is never taken for ours)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline and pid_running(pid) else None


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds if `pid` still runs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):
            return
        try:  # our own child (the supervisor's agents): reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def spawn_detached(argv: Sequence[str], log: Path, pidfile: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` as a daemon: its own session, not our child (so neither a zombie of ours nor
    stopped with us), output appended to `log`; its pid, also written to `pidfile`."""
    pidfile.unlink(missing_ok=True)
    with open(log, "ab") as out:
        # setsid -f forks and returns; the shell records its pid, then becomes `argv` (same pid)
        subprocess.run(["setsid", "-f", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pidfile), *argv],
                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/",
                       check=True, timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            text = pidfile.read_text()
            if text.endswith("\n"):
                return int(text)
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise LabError(f"{argv[0]} did not start: {_tail(log)}")
        time.sleep(0.02)


def member_argv(cluster: Cluster, member: Member) -> list[str]:
    tls = cluster.dir / "tls"
    cert, key = str(tls / f"{member.name}.crt"), str(tls / f"{member.name}.key")
    client = f"https://{member.address}:{ETCD_CLIENT_PORT}"
    peer = f"https://{member.address}:{ETCD_PEER_PORT}"
    initial = ",".join(f"{m.name}=https://{m.address}:{ETCD_PEER_PORT}" for m in cluster.members)
    return ["etcd", "--name", member.name, "--data-dir", str(cluster.member_file(member, ".data")),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial, "--initial-cluster-token", f"ft-{cluster.lab_id}",
            "--initial-cluster-state", "new", "--quota-backend-bytes", str(QUOTA),
            "--logger", "zap", "--log-outputs", "stderr",
            "--cert-file", cert, "--key-file", key, "--trusted-ca-file", cluster.ca, "--client-cert-auth",
            "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", cluster.ca,
            "--peer-client-cert-auth"]


def member_pid(cluster: Cluster, member: Member) -> int | None:
    return live_pid(cluster.member_file(member, ".pid"), str(cluster.member_file(member, ".data")))


def start_member(cluster: Cluster, name: str) -> int:
    """Start member `name` inside its namespace unless it runs; its pid. Detached: it outlives
    the command that started it."""
    member = cluster.member(name)
    running = member_pid(cluster, member)
    if running is not None:
        return running
    if shutil.which("etcd") is None:
        raise LabError("the lab's etcd needs `etcd` on PATH (apt-get install etcd-server)")
    argv = ["ip", "netns", "exec", cluster.netns(member), *member_argv(cluster, member)]
    return spawn_detached(argv, cluster.member_file(member, ".log"), cluster.member_file(member, ".pid"))


def stop_member(cluster: Cluster, name: str) -> None:
    member = cluster.member(name)
    pid = member_pid(cluster, member)
    if pid is not None:
        stop_pid(pid)


def member_health(cluster: Cluster, member: Member, timeout: float = HEALTH_TIMEOUT) -> str:
    """`healthy`, `no-quorum` (answers, unhealthy: no leader, or no quorum read within etcd's own
    1 s), `unreachable` (runs, no answer: or the supervisor's forwarder is down) or `down`."""
    import requests

    if member_pid(cluster, member) is None:
        return "down"
    with requests.Session() as session:
        session.trust_env = False  # no proxy or CA bundle from the environment for a loopback URL
        try:
            resp = session.get(f"https://127.0.0.1:{member.forward_port}/health", timeout=timeout,
                               verify=cluster.ca, cert=(cluster.cert, cluster.key))
            healthy = resp.json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return "unreachable"
    return "healthy" if healthy else "no-quorum"


def members_health(cluster: Cluster) -> dict[str, str]:
    """Every member's `member_health`, asked at once (a slow member does not delay the others)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(cluster.members)) as pool:
        states = pool.map(lambda m: member_health(cluster, m), cluster.members)
        return {m.name: state for m, state in zip(cluster.members, states, strict=True)}


# --------------------------------------------------------------------------------------------
# The supervisor


def agent_pids(lab_id: str) -> dict[int, str]:
    """Every running agent process of lab `lab_id` on this machine (pid: command line), whoever
    started it: a supervisor killed with -9 leaves its agents running, and the next one stops them."""
    marker = f" agent --lab {lab_id} --node "
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and pid_running(int(entry)):
            found[int(entry)] = cmdline
    return found


def supervisor_pid(lab_id: str) -> int | None:
    return live_pid(lab_dir(lab_id) / "supervisor.pid", f"enforcer.lab.supervisor {lab_id} ")  # cmdline args end in NUL


def start_supervisor(cluster: Cluster, python: Sequence[str] = (sys.executable,)) -> int:
    """Start the lab's supervisor (forwarders and agents) unless it runs; its pid. It is a
    process of its own (own session) that outlives the CLI; `stop_cluster` ends it."""
    running = supervisor_pid(cluster.lab_id)
    if running is not None:
        return running
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return spawn_detached([*python, "-m", "enforcer.lab.supervisor", cluster.lab_id], cluster.dir / "supervisor.log",
                          cluster.dir / "supervisor.pid", env)


def wait_ready(cluster: Cluster, timeout: float = START_TIMEOUT) -> None:
    """Until a majority of members is healthy through the forwarders; LabError naming each
    member's state (and the log to read) when that does not happen in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        states = members_health(cluster)
        if sum(s == "healthy" for s in states.values()) * 2 > len(states):
            return
        if time.monotonic() > deadline:
            detail = ", ".join(f"{n} {s}" for n, s in states.items())
            raise LabError(f"lab {cluster.lab_id}: etcd did not become ready in {timeout:.0f} s ({detail}; "
                           f"logs: {cluster.dir / 'etcd'}, {cluster.dir / 'supervisor.log'})")
        if supervisor_pid(cluster.lab_id) is None:
            raise LabError(f"lab {cluster.lab_id}: the supervisor exited: "
                           f"{_tail(cluster.dir / 'supervisor.log')}")
        time.sleep(0.2)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------
# Status


def agent_report(cluster: Cluster, node: str, pid: int | None) -> dict[str, Any] | None:
    """What node's agent last said of itself (state, revision...), None if nothing yet. The one
    place that knows where agents report: the status file the running agent `pid` keeps under
    its records (`enforcer.agent_status`), else the last JSON line of its output (`logged_report`)."""
    for path in cluster.agents_state_dir.glob(f"etcd/*/agents/{node}.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if pid is not None and isinstance(doc, dict) and doc.get("pid") == pid and "state" in doc:
            return doc  # written by this run of the agent, not an earlier one
    return logged_report(cluster.agent_log(node))


def logged_report(log: Path) -> dict[str, Any] | None:
    """The last event (JSON line: event, state, revision...) in an agent's log; None if none."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "state" in event:
            return event
    return None


def agents_status(cluster: Cluster) -> list[dict[str, Any]]:
    """Per node: pid (None while it is down), state (the agent's own, or `down`), the datastore
    revision it enforces, how often the supervisor restarted it."""
    try:
        supervised: dict[str, Any] = json.loads((cluster.dir / "agents.json").read_text())
    except (OSError, ValueError):
        supervised = {}
    running = supervisor_pid(cluster.lab_id) is not None
    out = []
    for node in sorted(supervised):
        info = supervised[node]
        pid = info.get("pid") if running else None
        alive = pid is not None and Path(f"/proc/{pid}").exists()
        report = agent_report(cluster, node, pid if alive else None) or {}
        out.append({"node": node, "pid": pid if alive else None,
                    "state": report.get("state", "starting") if alive else "down",
                    "revision": report.get("revision"), "restarts": info.get("restarts", 0),
                    "log": str(cluster.agent_log(node))})
    return out


def cluster_status(cluster: Cluster) -> dict[str, Any]:
    """`lab status`'s `datastore` entry."""
    health = members_health(cluster)
    return {
        "url": cluster.url,
        "endpoints": list(cluster.endpoints),
        "agent_url": cluster.agent_url,
        "ca": cluster.ca,
        "cert": cluster.cert,
        "key": cluster.key,
        "supervisor": supervisor_pid(cluster.lab_id),
        "flows_dir": cluster.flows_dir,
        "members": [{"name": m.name, "address": m.address, "netns": cluster.netns(m),
                     "pid": member_pid(cluster, m), "state": health[m.name]} for m in cluster.members],
    }


# --------------------------------------------------------------------------------------------
# Teardown


def stop_cluster(lab_id: str) -> bool:
    """Stop the supervisor (and so its agents) and the members, remove the lab's state
    directory; True if there was anything. Safe after a crash and when nothing runs."""
    folder = lab_dir(lab_id)
    if not folder.exists():
        return False
    pid = supervisor_pid(lab_id)
    if pid is not None:
        stop_pid(pid)
    cluster = None
    try:
        cluster = read_cluster(lab_id)
    except LabError:
        pass
    if cluster is not None:
        for member in cluster.members:
            stop_member(cluster, member.name)
    shutil.rmtree(folder, ignore_errors=True)
    return True


__all__ = ["LAB_RUN_DIR", "Cluster", "Member", "agent_pids", "agent_report", "agents_status", "cluster_status",
           "create_cluster", "lab_dir", "live_pid", "logged_report", "member_health", "members_health",
           "read_cluster", "start_member", "start_supervisor", "stop_cluster", "stop_member", "stop_pid",
           "supervisor_pid", "wait_ready"]
