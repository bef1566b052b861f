"""A bounded traffic generator for the demo lab: service calls, denied attempts, pings, a flood.

    plan = article_mix(lab_plan)                 # what to send, from which lab target to which
    gen = TrafficGenerator("demo", plan, round_seconds=60)
    gen.start(); ...; gen.stop()                 # rounds of self-terminating agents

The orchestrator (this module, imported) starts one *server* agent per destination that must
answer (TCP listeners on the ports the scenarios talk about) and one *client* agent per source,
both as `python -m flowtui.demo.traffic serve|client` inside the lab namespaces (`popen_in`).
A round starts every agent at once and waits until each says `ready`; only then does it pick the
round's start (`go`) and send every agent the same end, `go + seconds` on the monotonic clock
(one clock for every namespace). An agent's own start-up time (seconds under load) therefore
never eats into the traffic, and the round's length counts from traffic actually flowing.
Every agent also has a deadline of its own, so nothing outlives a round even if this process
dies; `lab_down` kills whatever is left in the lab's namespaces anyway.

Job kinds:

* `call`: a TCP connection that is expected to succeed: connect, send a request, read the
  reply, close (conntrack then reports its packets and bytes);
* `attempt`: a TCP connection that policy should refuse: one SYN, given up after 0.2 s;
* `ping`: one ICMP echo request (the reply comes back if allowed);
* `flood`: UDP datagrams at `pps` from a rotating set of source ports, for the deny list.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from enforcer.lab.probe_agent import icmp_checksum

MAX_JOBS_PER_AGENT = 64
MAX_FLOOD_PPS = 20_000
MAX_ROUND_SECONDS = 600.0
SERVE_BACKLOG = 256
# How long a round waits for its agents to say `ready` (a Python start-up each; slow under load).
AGENT_START_TIMEOUT = 120.0
SERVER_LINGER = 2.0  # servers outlive the clients' end by this much, for the last replies


@dataclass(frozen=True)
class Job:
    """One stream of traffic from the agent's namespace to `dst` (an address)."""

    kind: str  # call | attempt | ping | flood
    dst: str
    proto: str = "tcp"
    port: int | None = None
    every: float = 1.0  # seconds between two calls, attempts or pings
    pps: int = 0  # flood: datagrams per second
    burst: float = 0.0  # flood: seconds on in every `period` (0: continuous)
    period: float = 0.0
    payload: int = 512  # bytes sent per call or datagram
    what: str = ""  # for people: what the scenarios say about it


@dataclass(frozen=True)
class SourcePlan:
    target: str  # lab target the client runs in: NS/POD, node:NAME, external:NAME
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class TrafficPlan:
    servers: dict[str, tuple[int, ...]]  # lab target -> TCP ports to listen on
    sources: tuple[SourcePlan, ...]

    def describe(self) -> list[str]:
        out = []
        for src in self.sources:
            for j in src.jobs:
                rate = f"every {j.every:g}s"
                if j.kind == "flood":
                    rate = f"{j.pps}/s" + (f", {j.burst:g} s every {j.period:g} s" if j.period else "")
                port = f":{j.port}" if j.port else ""
                out.append(f"{j.kind:7} {src.target} -> {j.dst} {j.proto}{port} {rate}  {j.what}")
        return out


@dataclass
class TrafficStats:
    rounds: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, report: dict[str, Any]) -> None:
        for kind, counts in report.get("counts", {}).items():
            mine = self.by_kind.setdefault(kind, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + int(v)
        for err in report.get("errors", [])[:5]:
            if len(self.errors) < 20:
                self.errors.append(str(err))


# --------------------------------------------------------------------------------------------
# The article's mix


def _addresses(plan: Any) -> dict[str, dict[int, str]]:
    """Lab target -> {IP version: first address}."""
    out: dict[str, dict[int, str]] = {}
    for pod in plan.pods:
        out[pod.key] = _by_version(pod.addresses)
    for node in plan.nodes:
        out[f"node:{node.name}"] = _by_version(node.addresses)
    for ext in plan.externals:
        out[f"external:{ext.name}"] = _by_version(ext.addresses)
    return out


def _by_version(addresses: Iterable[Any]) -> dict[int, str]:
    found: dict[int, str] = {}
    for a in addresses:
        found.setdefault(a.version, str(a))
    return found


def article_mix(plan: Any, *, flood_pps: int = 2000, scale: float = 1.0) -> TrafficPlan:
    """The demo's traffic over the article's lab (`enforcer.lab.plan_lab` of the scenarios).

    `scale` multiplies every rate (2.0 = twice as much traffic); the flood rate is separate."""
    addr = _addresses(plan)

    def to(target: str, v: int = 4) -> str:
        return addr[target][v]

    def every(seconds: float) -> float:
        return max(0.02, seconds / max(scale, 0.01))

    sources = [
        SourcePlan("production/frontend", (
            Job("attempt", to("production/transaction"), "tcp", 9000, every(0.3),
                what="frontend -> transaction: deny-frontend-to-transaction"),
            Job("call", to("staging/database"), "tcp", 6379, every(1.5),
                what="prod frontend -> staging db: allowed (selector is namespaced)"),
            Job("ping", to("staging/frontend"), "icmp", None, every(1.0), what="ping: kns profile allows"),
        )),
        SourcePlan("staging/frontend", (
            Job("attempt", to("staging/transaction"), "tcp", 9000, every(0.35),
                what="frontend -> transaction: deny-frontend-to-transaction"),
            Job("attempt", to("staging/database"), "tcp", 6379, every(0.8),
                what="frontend -> database: Log, then Deny"),
            Job("attempt", to("production/transaction", 6), "tcp", 9000, every(2.0),
                what="IPv6 cross-namespace frontend -> transaction: denied"),
        )),
        SourcePlan("staging/transaction", (
            Job("call", to("production/transaction"), "tcp", 9000, every(0.3),
                what="transaction -> transaction: allow-cluster-internal"),
            Job("call", to("staging/database"), "tcp", 6379, every(0.4),
                what="transaction -> database: allowed by rule 2"),
            Job("call", to("production/transaction", 6), "tcp", 9000, every(1.5),
                what="IPv6 transaction -> transaction: allow-cluster-internal"),
            Job("ping", to("production/frontend"), "icmp", None, every(2.0),
                what="ping into production: allow-cluster-internal"),
        )),
        SourcePlan("external:client", (
            Job("attempt", to("production/frontend"), "tcp", 8080, every(1.0),
                what="outside -> production: deny-other-ingress"),
            Job("attempt", to("node:node-a"), "tcp", 80, every(1.0),
                what="outside -> favorite worker :80: end-of-tier deny"),
            Job("call", to("node:node-b"), "tcp", 80, every(0.5), what="outside -> node-b: profile allows"),
            Job("call", to("node:node-a"), "tcp", 22, every(3.0), what="ssh from anywhere: failsafe port"),
        )),
        SourcePlan("external:admin", (
            Job("call", to("node:node-a"), "tcp", 22, every(1.0), what="ssh from management: favorite-worker-host"),
            Job("call", to("node:node-a"), "tcp", 10250, every(1.0), what="kubelet: favorite-worker-host"),
            Job("ping", to("node:node-a"), "icmp", None, every(1.0), what="ping the worker: favorite-worker-host"),
        )),
        SourcePlan("external:attacker", (
            # In bursts, so the rest of the mix stays visible in the live view between them; each
            # burst still outruns the deny log's rate limit, so the sampling (and its exact
            # counters) show.
            Job("flood", to("production/transaction"), "udp", 9000, pps=flood_pps, payload=64, burst=2.0,
                period=12.0, what="deny-listed UDP flood in 2 s bursts: dos-mitigation (untracked)"),
            Job("attempt", to("node:node-b"), "tcp", 80, every(0.5), what="deny-listed at the host: dos-mitigation"),
            Job("attempt", to("node:node-b", 6), "tcp", 80, every(2.0), what="IPv6 deny list: dos-mitigation"),
        )),
        SourcePlan("node:node-a", (
            Job("call", to("node:node-b"), "tcp", 2379, every(1.0), what="worker -> etcd: failsafe out"),
        )),
    ]
    servers = {
        "production/transaction": (9000,),
        "staging/transaction": (9000,),
        "staging/database": (6379,),
        "production/frontend": (8080,),
        "node:node-a": (22, 80, 10250),
        "node:node-b": (80, 2379),
    }
    return TrafficPlan(servers, tuple(sources))


# --------------------------------------------------------------------------------------------
# The orchestrator


class _Stopped(Exception):
    """`stop()` came while a round's agents were starting: not an error."""


class TrafficGenerator:
    """Runs `plan` in lab `lab_id` in rounds of `round_seconds` until `stop()` or `duration`.

    `duration` counts from the first round's start (`started`), not from `start()`: launching the
    agents is not traffic. `launch(target, argv)` starts one agent (default: `popen_in` the lab)."""

    def __init__(self, lab_id: str, plan: TrafficPlan, *, round_seconds: float = 60.0,
                 duration: float | None = None,
                 launch: Callable[[str, list[str]], subprocess.Popen[str]] | None = None) -> None:
        self.lab_id = lab_id
        self.plan = plan
        self.round_seconds = min(round_seconds, MAX_ROUND_SECONDS)
        self.duration = duration
        self.stats = TrafficStats()
        self.started = threading.Event()  # set when the first round's agents got their start
        self._launch = launch or self._popen_in_lab
        self._end: float | None = None  # monotonic end of the traffic (known once started)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._procs: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flowtui traffic", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float) -> bool:
        """Wait until traffic flows (True), the generator gave up, or `timeout` passed (False)."""
        end = time.monotonic() + timeout
        while not self.started.wait(min(0.2, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end or not self.running:
                return self.started.is_set()
        return True

    def stop(self, grace: float = 0.0, timeout: float = 5.0) -> None:
        """Stop; with `grace`, first let a round that is about to end finish and report."""
        self._stop.set()
        if grace and self._thread is not None:
            self._thread.join(grace)
        self._kill_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            left = self.round_seconds
            if self._end is not None:
                left = min(left, self._end - time.monotonic())
            if left <= 0.2:
                break
            try:
                self._round(left)
            except _Stopped:
                break
            except Exception as exc:  # a failed round is reported, the next one tries again
                self.stats.errors.append(f"round failed: {exc}")
                if self._stop.wait(1.0):
                    break
            self.stats.rounds += 1

    def _popen_in_lab(self, target: str, argv: list[str]) -> subprocess.Popen[str]:
        from enforcer.lab import popen_in

        proc: subprocess.Popen[str] = popen_in(
            self.lab_id, target, [sys.executable, "-m", "flowtui.demo.traffic", *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        return proc

    def _spawn(self, target: str, argv: list[str]) -> subprocess.Popen[str]:
        proc = self._launch(target, argv)
        with self._lock:
            self._procs.append(proc)
        return proc

    def _await_ready(self, procs: list[tuple[str, subprocess.Popen[str]]]) -> None:
        """Every agent's `ready` line, read as each comes (they start in parallel)."""
        end = time.monotonic() + AGENT_START_TIMEOUT
        waiting = {proc.stdout.fileno(): (target, proc) for target, proc in procs if proc.stdout is not None}
        while waiting:
            if self._stop.is_set():
                raise _Stopped
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"traffic agents not ready after {AGENT_START_TIMEOUT:g} s: "
                                   + ", ".join(sorted(t for t, _p in waiting.values())))
            ready, _, _ = select.select(list(waiting), [], [], min(left, 0.5))
            for fd in ready:
                target, proc = waiting.pop(fd)
                assert proc.stdout is not None
                line = proc.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"a traffic agent in {target} did not start: {line!r}")

    def _round(self, seconds: float) -> None:
        servers: list[subprocess.Popen[str]] = []
        try:
            # Each agent's own deadline (should this process die) covers its start-up as well.
            cap = f"{AGENT_START_TIMEOUT + seconds + SERVER_LINGER:.1f}"
            agents: list[tuple[str, subprocess.Popen[str]]] = []
            for target, ports in sorted(self.plan.servers.items()):
                proc = self._spawn(target, ["serve", "--deadline", cap, *(str(p) for p in ports)])
                servers.append(proc)
                agents.append((target, proc))
            clients: list[tuple[SourcePlan, subprocess.Popen[str]]] = []
            for src in self.plan.sources:
                proc = self._spawn(src.target, ["client", "--deadline", cap])
                clients.append((src, proc))
                agents.append((src.target, proc))
            self._await_ready(agents)
            go = time.monotonic()
            if self._end is None and self.duration is not None:
                self._end = go + self.duration
            until = go + (seconds if self._end is None else min(seconds, self._end - go))
            for proc in servers:
                self._send(proc, f"until {until + SERVER_LINGER:.3f}")
            for src, proc in clients:
                self._send(proc, json.dumps({"until": until, "jobs": [asdict(j) for j in
                                                                      src.jobs[:MAX_JOBS_PER_AGENT]]}))
            self.started.set()
            for _src, proc in clients:
                try:
                    out, _ = proc.communicate(timeout=until - time.monotonic() + 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate()
                for line in (out or "").splitlines():
                    if line.startswith("{"):
                        try:
                            self.stats.add(json.loads(line))
                        except ValueError:
                            pass
        finally:
            for proc in servers:
                if proc.poll() is None and proc.stdin is not None:
                    try:
                        proc.stdin.close()  # servers exit when stdin closes
                    except OSError:
                        pass
            self._reap()

    @staticmethod
    def _send(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def _reap(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


# --------------------------------------------------------------------------------------------
# The agents (run inside lab namespaces)


def _listen(port: int) -> list[socket.socket]:
    socks = []
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            continue
        s.listen(SERVE_BACKLOG)
        s.setblocking(False)
        socks.append(s)
    return socks


def serve(ports: Sequence[int], deadline: float) -> None:
    """Accept on every port (both families), answer each request once, close. Ends at the
    deadline, at the monotonic time of an `until T` line on stdin, or when stdin closes."""
    listeners = [s for p in ports for s in _listen(p)]
    print("ready", flush=True)
    end = time.monotonic() + min(deadline, MAX_ROUND_SECONDS + 10)
    conns: dict[int, tuple[socket.socket, float]] = {}
    stdin_fd = sys.stdin.fileno()
    watch_stdin = True
    while time.monotonic() < end:
        fds = [s.fileno() for s in listeners] + list(conns) + ([stdin_fd] if watch_stdin else [])
        ready, _, _ = select.select(fds, [], [], 0.2)
        by_fd = {s.fileno(): s for s in listeners}
        for fd in ready:
            if fd == stdin_fd:
                line = sys.stdin.readline()
                if not line:
                    end = 0.0
                    watch_stdin = False
                elif line.startswith("until "):
                    end = min(end, float(line.split()[1]))
                continue
            if fd in by_fd:
                for _ in range(64):
                    try:
                        conn, _addr = by_fd[fd].accept()
                    except (BlockingIOError, OSError):
                        break
                    conn.setblocking(False)
                    conns[conn.fileno()] = (conn, time.monotonic())
                continue
            conn, _t = conns.pop(fd)
            try:
                data = conn.recv(65536)
                if data:
                    conn.sendall(b"ok " + str(len(data)).encode() + b"\n" + b"x" * min(len(data) * 2, 8192))
            except OSError:
                pass
            conn.close()
        now = time.monotonic()
        for fd, (conn, t) in list(conns.items()):
            if now - t > 5.0:
                conns.pop(fd)
                conn.close()
    for conn, _t in conns.values():
        conn.close()
    for s in listeners:
        s.close()



class _Client:
    def __init__(self, jobs: list[Job], end: float) -> None:
        self.jobs = jobs
        self.end = min(end, time.monotonic() + MAX_ROUND_SECONDS)
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []
        self.seq = 0
        self._flood_socks: dict[int, list[socket.socket]] = {}

    def count(self, kind: str, outcome: str, n: int = 1) -> None:
        mine = self.counts.setdefault(kind, {})
        mine[outcome] = mine.get(outcome, 0) + n

    def run(self) -> None:
        started = time.monotonic()
        due = [started + (i * 0.037) % 0.5 for i in range(len(self.jobs))]
        last_flood = [started] * len(self.jobs)
        while True:
            now = time.monotonic()
            if now >= self.end:
                break
            for i, job in enumerate(self.jobs):
                if now < due[i]:
                    continue
                if job.kind == "flood":  # catch up on the time other jobs took: the rate holds
                    if not job.period or (now - started) % job.period < job.burst:
                        self.flood(i, job, min(now - last_flood[i], 0.5))
                    last_flood[i] = now
                    due[i] = now + 0.01
                    continue
                try:
                    getattr(self, job.kind)(job)
                except OSError as exc:
                    self.count(job.kind, "error")
                    if len(self.errors) < 10:
                        self.errors.append(f"{job.kind} {job.dst}:{job.port}: {exc}")
                due[i] = now + job.every
            wait = min(due) - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.05))
        for socks in self._flood_socks.values():
            for s in socks:
                s.close()

    def _family(self, dst: str) -> int:
        return socket.AF_INET6 if ":" in dst else socket.AF_INET

    def call(self, job: Job) -> None:
        assert job.port is not None
        with socket.socket(self._family(job.dst), socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect((job.dst, job.port))
                s.sendall(b"GET /flowtui-demo " + b"y" * max(0, job.payload - 18))
                s.recv(65536)
                self.count("call", "ok")
            except (TimeoutError, ConnectionError, OSError):
                self.count("call", "failed")

    def attempt(self, job: Job) -> None:
        assert job.port is not None
        with socket.socket(self._family(job.dst), socket.SOCK_STREAM) as s:
            s.setblocking(False)
            s.connect_ex((job.dst, job.port))
            _r, w, _x = select.select([], [s], [], 0.2)
            ok = bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            self.count("attempt", "connected" if ok else "refused")

    def ping(self, job: Job) -> None:
        family = self._family(job.dst)
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        self.seq = (self.seq + 1) & 0xFFFF
        typ = 8 if family == socket.AF_INET else 128
        with socket.socket(family, socket.SOCK_RAW, proto) as s:
            header = struct.pack("!BBHHH", typ, 0, 0, os.getpid() & 0xFFFF, self.seq) + b"flowtui-demo"
            if family == socket.AF_INET:
                header = header[:2] + struct.pack("!H", icmp_checksum(header)) + header[4:]
            s.sendto(header, (job.dst, 0))
        self.count("ping", "sent")

    def flood(self, index: int, job: Job, slot: float) -> None:
        assert job.port is not None
        socks = self._flood_socks.get(index)
        if socks is None:
            socks = self._flood_socks[index] = []
            for _ in range(16):
                s = socket.socket(self._family(job.dst), socket.SOCK_DGRAM)
                s.setblocking(False)
                socks.append(s)
        n = int(min(job.pps, MAX_FLOOD_PPS) * slot)
        payload = b"z" * max(1, job.payload)
        sent = 0
        for k in range(n):
            try:
                socks[k % len(socks)].sendto(payload, (job.dst, job.port))
                sent += 1
            except (BlockingIOError, OSError):
                break
        self.count("flood", "sent", sent)


def client(doc: dict[str, Any]) -> dict[str, Any]:
    """Run `doc`'s jobs until its `until` (a monotonic time: the round's shared end) or for its
    `deadline` seconds from now."""
    jobs = [Job(**j) for j in doc.get("jobs", [])[:MAX_JOBS_PER_AGENT]]
    end = float(doc["until"]) if "until" in doc else time.monotonic() + float(doc.get("deadline", 10.0))
    c = _Client(jobs, end)
    c.run()
    return {"counts": c.counts, "errors": c.errors}


def main(argv: Sequence[str] | None = None) -> None:
    """`serve [--deadline S] PORT...`: `ready`, then serve until S or an `until T` line.
    `client [--deadline S]`: `ready`, then run the job document read from stdin and print the
    report; without a document within S seconds, exit."""
    args = list(sys.argv[1:] if argv is None else argv)
    deadline = 30.0
    if args[1:2] == ["--deadline"]:
        deadline = float(args[2])
        args = args[:1] + args[3:]
    if args[:1] == ["serve"]:
        serve([int(p) for p in args[1:]], deadline)
    elif args[:1] == ["client"]:
        print("ready", flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], deadline)
        line = sys.stdin.readline() if ready else ""
        if line.strip():
            print(json.dumps(client(json.loads(line))), flush=True)
    else:
        raise SystemExit("usage: python -m flowtui.demo.traffic serve [--deadline S] PORT... | "
                         "client [--deadline S] < JOB_JSON")


if __name__ == "__main__":
    main()
