"""Faults in cluster mode, in the kernel, each asserting nothing is lost (the lab's etcd faults,
member down, quorum lost, node cut, are `lab up --datastore etcd`'s tests):

- `kill -9` of an agent while the kernel commits a big change: the table is the old one or the
  new one, never a mix; probes between pods pass throughout; the restarted agent converges and
  adopts the live table (rules of chains the change did not touch keep their kernel handles: no
  table was flushed or replaced).
- etcd compacts and defragments past the revision a paused agent's watch had reached: the agent
  lists again (when etcd cancels its lagging watch) and converges on the last write.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from enforcer.lab import netns_name
from enforcer.lab.probe import Probe, probe_both_ways
from enforcer.model import ResourceSet
from enforcer.synth import SynthSpec, synth_resources
from tests.cluster_harness import ClusterLab, cluster_lab
from tests.conftest import require_etcd
from tests.manifests import cluster_documents

TOPOLOGY = SynthSpec(nodes=2, namespaces=1, pods=4, externals=0, policies=0, host_endpoints=False, tiers=False,
                     staged=False, ipv6=False)
BIG = 20_000  # set elements in the change the agent is killed in


def topology() -> ResourceSet:
    return synth_resources(1, TOPOLOGY)


def big_change(version: int, rules: int) -> list[dict[str, Any]]:
    """A network set of BIG IPv6 documentation nets and a policy on every pod that denies them and
    allows pods in on `rules` ports (and on 80, where the probes go)."""
    nets = [f"2001:db8:{version:x}:{i:x}::/64" for i in range(BIG)]
    ports = [80, *range(10_000 + version * 1000, 10_000 + version * 1000 + rules)]
    ingress = [{"action": "Deny", "source": {"selector": "big == 'yes'"}}]
    ingress += [{"action": "Allow", "protocol": "TCP", "source": {"selector": "all()"},
                 "destination": {"ports": [p]}} for p in ports]
    return [
        {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
         "metadata": {"name": "big", "labels": {"big": "yes"}}, "spec": {"nets": nets}},
        {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "pods-in"},
         "spec": {"selector": "has(app)", "types": ["Ingress"], "ingress": ingress}},
    ]


def pod_probes(res: ResourceSet, first_marker: int) -> list[Probe]:
    """TCP to port 80 from every pod to every pod on another node: allowed before and after."""
    out: list[Probe] = []
    for src in res.pods:
        for dst in res.pods:
            if src.node != dst.node:
                out.append(Probe(f"{src.namespace}/{src.name}", src.ips[0], f"{dst.namespace}/{dst.name}",
                                 dst.ips[0], 6, first_marker + len(out), 80))
    return out


class Prober:
    """Rounds of probes on a thread until stopped; every probe of every round must pass both ways."""

    def __init__(self, lab_id: str, res: ResourceSet) -> None:
        self.lab_id, self.res = lab_id, res
        self.rounds = 0
        self.lost: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        marker = 30000
        while not self._stop.is_set():
            probes = pod_probes(self.res, marker)
            marker = 30000 + (marker - 30000 + len(probes)) % 20000
            delivered, answered = probe_both_ways(self.lab_id, probes, settle=0.3)
            self.rounds += 1
            for p in probes:
                if p not in delivered or p not in answered:
                    self.lost.append(f"round {self.rounds}: {p.src_target} → {p.dst_target}")

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)


def chains(lab_id: str, node: str) -> dict[str, list[tuple[str, int]]]:
    """Each chain's rules (text, kernel handle) as `nft -a` lists them."""
    done = subprocess.run(["ip", "netns", "exec", netns_name(lab_id, f"node:{node}"), "nft", "-a", "-s", "list",
                           "table", "inet", "flowtui"], capture_output=True, text=True, timeout=60, check=True)
    out: dict[str, list[tuple[str, int]]] = {}
    current: list[tuple[str, int]] | None = None
    for line in done.stdout.splitlines():
        line = line.strip()
        head = re.match(r"chain (\S+) \{", line)
        if head:
            current = out.setdefault(head.group(1), [])
        elif line == "}":
            current = None
        elif current is not None:
            rule = re.match(r"(.*) # handle (\d+)$", line)
            if rule and not rule.group(1).startswith(("type ", "policy ")):
                current.append((rule.group(1), int(rule.group(2))))
    return out


def shape(listing: dict[str, list[tuple[str, int]]]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(text for text, _ in rules) for name, rules in listing.items()}


def strace_unavailable() -> str | None:
    return None if shutil.which("strace") else "the kill-in-commit test needs `strace` (apt-get install strace)"


def held_at_commit(pid: int, how: str) -> subprocess.Popen[bytes]:
    """Attach strace to the agent so that its next sendmsg (libnftables hands the kernel its
    transaction batch with sendmsg; its reads use sendto, as do the element socket and etcd's HTTP)
    is tampered with: `entry`: SIGKILL as it enters (the batch never reaches the kernel); `exit`:
    held for 30 s after the kernel returned (the commit is done, nothing recorded yet)."""
    inject = "signal=KILL" if how == "entry" else "delay_exit=30000000"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-e", "trace=sendmsg", "-e",
                               f"inject=sendmsg:{inject}:when=1", "-o", "/dev/null"])
    time.sleep(1.0)  # attached (strace has no "ready" signal; a late attach fails the test, never passes it)
    assert tracer.poll() is None, f"strace could not attach to the agent (exit {tracer.returncode})"
    return tracer


def kill_in_commit(lab: ClusterLab, node: str, how: str, change: list[dict[str, Any]],
                   before: dict[str, list[tuple[str, int]]]) -> dict[str, list[tuple[str, int]]]:
    """Apply `change` and kill `node`'s agent in its kernel commit (`how`); the table at the kill."""
    agent = lab.agents[node]
    tracer = held_at_commit(agent.process.pid, how)
    try:
        lab.apply(change, name=f"change-{how}.yaml")
        deadline = time.monotonic() + 120
        if how == "exit":  # the kernel has the new table; the agent is held before recording it
            while shape(chains(lab.lab_id, node)) == shape(before):
                assert time.monotonic() < deadline and agent.process.poll() is None, "the change never committed"
                time.sleep(0.05)
            agent.process.send_signal(signal.SIGKILL)
        agent.process.wait(120)
        assert agent.process.returncode == -signal.SIGKILL
    finally:
        tracer.terminate()
        tracer.wait(20)
    return chains(lab.lab_id, node)


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["entry", "exit"])
def test_kill_9_in_the_kernel_commit_loses_nothing(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`entry`: killed as it hands the kernel its transaction (the old table stays whole); `exit`:
    killed after the kernel took it, before the agent recorded it (the new table is whole, and the
    restarted agent adopts it as it is: nothing to apply). The agents lay the pods out as the rule
    walk, so the change rewrites policy chains through libnftables (sendmsg, where strace holds it);
    with decision maps it would be map elements only, sent on the element socket."""
    monkeypatch.setenv("FLOWTUI_DECISION_BUDGET", "0")  # inherited by the agents and the CLI
    require_etcd()
    reason = strace_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    res = topology()
    with cluster_lab(res, tmp_path) as lab:
        node = lab.nodes[0]
        lab.wait(lab.apply(cluster_documents(res) + big_change(1, 100)))
        before = chains(lab.lab_id, node)
        with Prober(lab.lab_id, res) as prober:
            while prober.rounds < 1:
                time.sleep(0.05)
            at_kill = kill_in_commit(lab, node, how, big_change(2, 300), before)
            revision = lab.revision()
            lab.start_agent(node)
            first = lab.agents[node].lines.until(lambda e: e["event"] == "reconciled")
            lab.wait(revision)
            after = chains(lab.lab_id, node)
            rounds = prober.rounds
            while prober.rounds < rounds + 2:  # probes after the restart too
                time.sleep(0.05)
        assert shape(before) != shape(after), "the change did not change the table"
        assert shape(at_kill) == shape(before if how == "entry" else after), "the table at the kill is not whole"
        # adopted, never replaced: rules of chains the change did not touch kept their kernel handles
        kept = [c for c in before if c in after and shape(before)[c] == shape(after)[c] and before[c]]
        assert kept, "no chain to compare"
        moved = [c for c in kept if before[c] != after[c]]
        assert not moved, f"rules of unchanged chains were re-created after the restart (flush): {moved}"
        if how == "exit":
            assert first["status"] == ["unchanged"], first  # the commit had landed: nothing to do
            assert after == at_kill, "the restarted agent rewrote a table that was already the one wanted"
        else:
            assert first["status"] == ["applied"], first
        assert prober.rounds >= 3 and not prober.lost, f"{len(prober.lost)} probes lost: {prober.lost[:5]}"


def etcd_post(lab: ClusterLab, path: str, body: dict[str, Any]) -> dict[str, Any]:
    host = lab.url.split("://", 1)[1].split(",")[0]
    for _ in range(5):  # etcd answers 503 "request timed out" when the shared disk stalls its fsync
        done = requests.post(f"http://{host}/v3/{path}", json=body, timeout=60)
        if done.status_code != 503:
            break
        time.sleep(1.0)
    assert done.ok, f"etcd {path}: {done.status_code} {done.text[:500]}"
    result: dict[str, Any] = done.json()
    return result


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.kernel
def test_compaction_past_a_paused_watch_relists_and_converges(tmp_path: Path) -> None:
    require_etcd()
    res = topology()
    with cluster_lab(res, tmp_path) as lab:
        node = lab.nodes[0]
        netset = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                  "metadata": {"name": "blocked", "labels": {"blocked": "yes"}}, "spec": {"nets": ["192.0.2.1/32"]}}
        policy = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "block"},
                  "spec": {"selector": "has(app)", "types": ["Ingress"],
                           "ingress": [{"action": "Deny", "source": {"selector": "blocked == 'yes'"}},
                                       {"action": "Allow"}]}}
        lab.wait(lab.apply([*cluster_documents(res), netset, policy]))
        agent = lab.agents[node]
        agent.process.send_signal(signal.SIGSTOP)  # the watch stays open, nobody reads it
        try:
            last = replace_nets(lab, netset, "198.51.100.7/32")
            # Enough revisions behind the stopped reader that etcd's watch falls out of sync (the
            # sockets' buffers full, then etcd's own): keys in the watched range that are not
            # flowtui's (the agent skips them), one revision each, ~30 MB in all (past the TCP
            # buffers and etcd's queue of 128 responses, mostly).
            filler = b64("x" * 50_000)
            for i in range(600):
                etcd_post(lab, "kv/put", {"key": b64(f"/d-filler/{i}"), "value": filler})
            revision = int(etcd_post(lab, "kv/range", {"key": b64("/d")})["header"]["revision"])
            etcd_post(lab, "kv/compaction", {"revision": str(revision), "physical": True})
            etcd_post(lab, "maintenance/defragment", {})
            etcd_post(lab, "kv/deleterange", {"key": b64("/d-filler/"), "range_end": b64("/d-filler0")})
        finally:
            agent.process.send_signal(signal.SIGCONT)
        lab.wait(last)
        # etcd cancels the lagging watch (the agent lists again) unless the HTTP gateway and the
        # sockets held the whole backlog (the agent reads it through): which one happens depends on
        # buffer sizes and load; the watch's Compacted path is also tested alone
        # (test_datastore_backends). Either way the agent must end on the last write.
        relists = [e for e in agent.lines.events if e["event"] == "relist"]
        for relist in relists:
            assert relist["reason"] == f"etcd compacted its history up to revision {revision}", relist
        elements = subprocess.run(
            ["ip", "netns", "exec", netns_name(lab.lab_id, f"node:{node}"), "nft", "list", "table", "inet", "flowtui"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert "198.51.100.7" in elements and "192.0.2.1 " not in elements and "192.0.2.1," not in elements


def replace_nets(lab: ClusterLab, netset: dict[str, Any], net: str) -> int:
    changed = {**netset, "spec": {"nets": [net]}}
    return lab.apply([changed], name="netset.yaml")

