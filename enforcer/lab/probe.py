"""Probe the lab: send one first packet per flow and see which arrived, and which were answered.

A receiver (raw sockets, after the destination's INPUT hook) runs in every destination; a sender
runs in every source. Each probe carries a marker — its source port, or its ICMP echo id — so
arrivals map back to probes. The sender also sees the destination kernel's answer come back (TCP:
the SYN-ACK or RST; ICMP: the echo reply), which is the reply path's verdict: what untracked
policy decides, since replies skip stateful policy. Used by the evaluator-versus-kernel
differential test, the demo's traffic and the benchmarks. Bounded in count and time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from enforcer.evaluate.flow import Flow
from enforcer.lab.netns import popen_in
from enforcer.model import IPAddress

MAX_PROBES = 20_000


@dataclass(frozen=True)
class Probe:
    src_target: str  # lab target of the sender: NS/POD, node:NAME or external:NAME
    src: IPAddress
    dst_target: str
    dst: IPAddress
    proto: int  # 6, 17, 1 or 58
    marker: int  # source port (TCP/UDP) or ICMP echo id
    dport: int | None = None

    @property
    def flow(self) -> Flow:
        if self.proto in (1, 58):
            return Flow(self.src, self.dst, self.proto, icmp_type=8 if self.proto == 1 else 128, icmp_code=0)
        return Flow(self.src, self.dst, self.proto, self.marker, self.dport)

    def key(self) -> tuple[str, int, int, int]:
        typ = 8 if self.proto == 1 else 128
        return (str(self.src), self.proto, self.marker, typ if self.proto in (1, 58) else (self.dport or 0))


def run_probes(lab_id: str, probes: Iterable[Probe], *, settle: float = 0.6, deadline: float = 30.0) -> set[Probe]:
    """Send every probe once; return those whose first packet reached its destination."""
    return probe_both_ways(lab_id, probes, settle=settle, deadline=deadline)[0]


def answerable(p: Probe) -> bool:
    """Whether the sender can see the probe's reply (UDP has none without a server)."""
    return p.proto in (1, 6, 58)


def probe_both_ways(lab_id: str, probes: Iterable[Probe], *, settle: float = 0.6, deadline: float = 30.0
                    ) -> tuple[set[Probe], set[Probe]]:
    """Send every probe once; return those whose first packet reached its destination, and the
    answerable ones whose reply came back to the sender."""
    todo = list(probes)
    replied: set[tuple[str, int, int]] = set()
    if len(todo) > MAX_PROBES:
        raise ValueError(f"{len(todo)} probes: at most {MAX_PROBES} per run")
    agent = [sys.executable, "-m", "enforcer.lab.probe_agent"]
    receivers: dict[str, subprocess.Popen[str]] = {}
    try:
        for target in sorted({p.dst_target for p in todo}):
            proc = popen_in(lab_id, target, [*agent, "recv", str(deadline)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            receivers[target] = proc
        for target, proc in receivers.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"probe receiver in {target} did not start")
        by_src: dict[str, list[Probe]] = defaultdict(list)
        for p in todo:
            by_src[p.src_target].append(p)
        for target, items in sorted(by_src.items()):
            lines = "".join(
                json.dumps({"src": str(p.src), "dst": str(p.dst), "proto": p.proto, "sport": p.marker,
                            "dport": p.dport}) + "\n"
                for p in items
            )
            sender = popen_in(lab_id, target, [*agent, "send"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
            out, _ = sender.communicate(lines, timeout=deadline)
            errors = [line for line in out.splitlines() if '"error"' in line]
            if errors:
                raise RuntimeError(f"probe sender in {target} failed: {errors[0]}")
            for line in out.splitlines():
                if line.startswith('{"replied"'):
                    replied |= {(target, proto, marker) for proto, marker in json.loads(line)["replied"]}
        time.sleep(settle)
        seen: set[tuple[str, int, int, int]] = set()
        for proc in receivers.values():
            out, _ = proc.communicate("", timeout=deadline)
            for line in out.splitlines():
                if line.startswith("["):
                    src, proto, marker, last = json.loads(line)
                    seen.add((src, proto, marker, last))
    finally:
        for proc in receivers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    delivered = {p for p in todo if p.key() in seen}
    return delivered, {p for p in todo if (p.src_target, p.proto, p.marker) in replied}
