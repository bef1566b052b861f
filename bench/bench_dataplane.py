"""Dataplane benchmark (issue 3): apply and update latency, and packet rates, ratios from one run.

    python bench/bench_dataplane.py [--quick] [--json] [--skip-apply] [--skip-rate] [--policies N]
                                    [--decision-budget CELLS] [--lab-id ID]

Needs root, `ip`, `nft`, gcc and libnftables; builds its own lab (`bench<pid>`) and removes it,
even on failure.

1. Apply. A synthetic cluster on ONE node: 1,000 pods, 1,000 policies of exactly 10 rules each
   (`synth_resources`, staged policies off; rules topped up or cut to 10 per policy), compiled
   with decision maps (--decision-budget, as the rate section's flowtui row). Memory: the kernel's
   rules, sets/maps and elements read back, the kernel memory the full apply charged to this
   process's memory cgroup, and the Python RSS peak while compiling. Timed:
   compile (ClusterState + compile_node), render of the full script, and its apply to the node's
   namespace through libnftables and through an `nft -f FILE` process (`ip netns exec`). Then
   one-policy changes (rule 0 of a random policy rewritten, revision bumped; then reverted) and
   live toggles (a random policy disabled; then enabled again), each timed as compile, diff,
   render and apply (libnftables) separately. The reconciler compiles the whole node for every
   change, so that is what "compile" is for changes; a toggle compiles nothing (policy gates:
   `CompiledNode.with_disabled`), so its "compile" is switching the gate. Changes and toggles are
   sampled until their count or a time budget is reached (at least one pair each).
   Then the live toggle the way the product does it, end to end: the same cluster stored in a
   datastore (YAML documents), a Reconciler with the kernel backend, and `set_disabled` +
   `reconcile()` timed from the call to the kernel's commit (the backend's apply returning),
   and to the call's return (which also records the applied table); the first reconcile (a whole
   compile and apply) is the baseline in the same run. Also as the CLI does it (a new reconciler
   and backend per toggle), and one-policy edits (a stored document's rule rewritten).

2. Packet rate. A lab with one node, one receiving pod and one external host. On the node:
   (a) an empty table, (b) the flowtui table compiled from 1,000 policies that all select the pod
   (ingress, 10 rules each: none matches the probe, except the last rule of the last policy,
   an allow), (c) the same policies in the iptables-era linear layout (bench/linear_layout.py);
   for reference, (r1) a conntrack rule alone and (r0) a drop on arrival at the node (what the
   generator can push at all). Traffic: 60-byte IPv4/UDP frames from bench/pktgen.c (AF_PACKET,
   sendmmsg, pinned to one CPU, nice -20), carrying the external host's addresses and injected
   at the underlay side of the node's link (so the bridge hop costs the generator nothing).
   Established: one 5-tuple, after a real request/reply through the node, so conntrack holds it
   ESTABLISHED (one-way UDP would stay NEW). New flows: every frame a new source port/address
   (198.18.0.0/15), so each packet makes a conntrack entry; the count is capped below the
   conntrack table size. Received packets are counted by an nft counter on the pod's eth0
   ingress hook (then dropped there, so the pod adds no socket cost); rate = received / the
   generator's sending time. Rulesets are interleaved over repetitions; the figure is the best
   run (other load on the machine only ever slows a run down), the median-based ratio beside it.
   Checks read the node's rule counters: every new-flow packet delivered hit the final allow,
   no other policy rule matched, and established packets did not reach the policies.

The generator and the kernel's packet path share one CPU (veth processes a sent packet in the
sender's context), so a rate is 1 / (generator cost + path cost): "added µs/pkt" (versus the
empty table) is the dataplane's own cost, largely independent of the generator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_layout import linear_table, rule_count  # noqa: E402

from enforcer.evaluate import Evaluator  # noqa: E402
from enforcer.lab import lab_resources, netns_name, plan_lab  # noqa: E402
from enforcer.lab.names import port_name  # noqa: E402
from enforcer.model import (  # noqa: E402
    EntityRule,
    ExternalHost,
    ICMPMatch,
    Namespace,
    Node,
    Pod,
    Policy,
    PortRange,
    ResourceSet,
    Rule,
)
from enforcer.nft import ir  # noqa: E402
from enforcer.nft.compiler import CompiledNode, CompileOptions, compile_node  # noqa: E402
from enforcer.nft.decision import DEFAULT_BUDGET  # noqa: E402
from enforcer.nft.elements import ElementSocket  # noqa: E402
from enforcer.nft.elements import supported as elements_only  # noqa: E402
from enforcer.resolve import ClusterState  # noqa: E402
from enforcer.ruleids import IdAllocator  # noqa: E402
from enforcer.selector import parse_selector  # noqa: E402
from enforcer.synth import SynthSpec, synth_resources  # noqa: E402

HERE = Path(__file__).resolve().parent
NODE = "node-1"
TOGGLE_TARGET_MS = 10.0
PROBE_PORT = 9999
PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60-byte frames (64 on a wire)
SENDER_IP = "203.0.113.10"
SENDER_PORT = 40000
NEW_FLOW_BASE = "198.18.0.0"  # RFC 2544 benchmarking range: never in any rule
GEN_CPU = 0
GEN_NICE = -20


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def stats(values: list[float]) -> dict[str, float]:
    """median and p95 (nearest rank) of `values` in ms; p95 is the max below 20 samples."""
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return {"n": len(values), "median_ms": ms(statistics.median(ordered)), "p95_ms": ms(p95),
            "max_ms": ms(ordered[-1])}


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


class RssPeak:
    """Peak resident set size of this process while a block runs (VmRSS sampled every 5 ms; the
    sample misses spikes shorter than that), and the RSS before it, in MB."""

    def __init__(self) -> None:
        self.before_mb = self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kmem_bytes() -> int | None:
    """Kernel memory charged to this process's memory cgroup (cgroup v1 `memory.kmem.usage_in_bytes`,
    or v2 `memory.stat` kernel), read only; None when unavailable. nf_tables charges rules, sets and
    their elements to the cgroup of the process that commits them."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            f = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.kmem.usage_in_bytes"
            if f.exists():
                return int(f.read_text())
        if controllers == "":
            f = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.stat"
            if f.exists():
                for stat in f.read_text().splitlines():
                    if stat.startswith("kernel "):
                        return int(stat.split()[1])
    return None


def kernel_elements(json_text: str) -> dict[str, int]:
    """Counts read back from the kernel (`nft -j list table`): rules, sets/maps, their elements."""
    doc = json.loads(json_text)["nftables"]
    out = {"rules": 0, "sets": 0, "maps": 0, "set_elements": 0, "map_elements": 0}
    for item in doc:
        for kind in ("set", "map"):
            if kind in item:
                out[f"{kind}s"] += 1
                out[f"{kind}_elements"] += len(item[kind].get("elem", []))
        out["rules"] += "rule" in item
    return out


def layout_counts(compiled: CompiledNode) -> dict[str, int]:
    """Workload endpoint chains by layout: decision maps, or the walk by cause (`ChainLayout.cause`,
    the agent metric's label; the reasons themselves carry each chain's figures and are in
    `apply --dry-run`)."""
    counts: dict[str, int] = {}
    for c in compiled.layouts:
        key = "decision" if c.layout == "decision" else f"walk: {c.cause}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# ---- lab plumbing ------------------------------------------------------------------------------


def nft_counters(text: str) -> dict[str, int]:
    """Sum of `counter packets N` per chain of an `nft list table` output."""
    out: dict[str, int] = {}
    chain = None
    for line in text.splitlines():
        m = re.match(r"\s*chain (\S+) \{", line)
        if m:
            chain = m[1]
            continue
        if chain is not None:
            for n in re.findall(r"counter packets (\d+)", line):
                out[chain] = out.get(chain, 0) + int(n)
    return out


def nft_process(netns: str, path: str) -> float:
    """Seconds for `ip netns exec NETNS nft -f PATH` (raises if nft refuses)."""
    start = time.perf_counter()
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", path], capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"nft -f failed in {netns}: {done.stderr[:2000]}")
    return took


def build_pktgen(tmp: Path) -> Path:
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is needed to build bench/pktgen.c")
    exe = tmp / "pktgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "pktgen.c")], check=True)
    return exe


# ---- section 1: apply --------------------------------------------------------------------------


def apply_cluster(seed: int, pods: int, policies: int, rules: int) -> ResourceSet:
    """synth_resources on one node, every policy with exactly `rules` rules over its directions."""
    res = synth_resources(seed, SynthSpec(nodes=1, namespaces=4, pods=pods, policies=policies,
                                          rules_per_policy=rules, staged=False))
    pool = [r for p in res.policies for r in (*p.ingress, *p.egress)]
    rng = random.Random(seed)
    out = []
    for p in res.policies:
        share = {"ingress": 0, "egress": 0}
        for i in range(rules):
            share[p.types[i % len(p.types)]] += 1

        def fill(existing: tuple[Rule, ...], n: int) -> tuple[Rule, ...]:
            got = list(existing[:n])
            while len(got) < n:
                got.append(rng.choice(pool))
            return tuple(got)

        out.append(replace(p, ingress=fill(p.ingress, share["ingress"]), egress=fill(p.egress, share["egress"])))
    return replace(res, policies=tuple(out))


def edited(k: int, p: Policy) -> Policy:
    """`p` with its first rule rewritten (a new TCP port), as an edit of the policy file would."""
    direction = p.types[0]
    rules = list(p.rules(direction))
    rules[0] = Rule(action="Allow", protocol=6, destination=EntityRule(ports=(PortRange(20000 + k, 20000 + k),)))
    if direction == "ingress":
        return replace(p, revision=p.revision + 1, ingress=tuple(rules))
    return replace(p, revision=p.revision + 1, egress=tuple(rules))


@dataclass
class OpTiming:
    compile: float | None
    diff: float
    render: float
    apply: float
    chains: int  # chains written or deleted
    lines: int  # script lines

    @property
    def total(self) -> float:
        return (self.compile or 0.0) + self.diff + self.render + self.apply


def section_apply(args: argparse.Namespace, lab: str, report: dict[str, Any]) -> None:
    from enforcer.nft.libnft import OUTPUT_JSON, Nft

    res = apply_cluster(args.seed, args.pods, args.policies, args.rules)
    ids = IdAllocator()
    options = rate_options(args)  # decision maps on, as in the rate section's flowtui row

    def compile_node_of(r: ResourceSet) -> tuple[CompiledNode, float]:
        start = time.perf_counter()
        compiled = compile_node(ClusterState(r), NODE, options, ids=ids)
        return compiled, time.perf_counter() - start

    def compile_res(r: ResourceSet) -> tuple[ir.Table, float]:
        compiled, seconds = compile_node_of(r)
        return compiled.table, seconds

    log(f"apply: compiling {args.policies} policies x {args.rules} rules over {args.pods} pods ...")
    with RssPeak() as rss:
        base_node, t_compile = compile_node_of(res)
    base = base_node.table
    with timed() as t_render:
        script = ir.render(base, ir.full(base, existing=False))
    n_rules = sum(len(c.rules) for c in base.chains.values())
    n_elems = sum(len(s.elements) for s in base.sets.values())
    log(f"apply: compile {t_compile:.2f}s, {len(base.chains)} chains, {n_rules} rules, "
        f"{len(base.sets)} sets ({n_elems} elements), script {len(script) / 1e6:.1f} MB")
    ns = netns_name(lab, f"node:{NODE}")
    nft = Nft(ns)
    sock = ElementSocket(ns)
    try:
        kmem_before = kmem_bytes()
        with timed() as t_lib:
            nft.run(script)
        kmem_after = kmem_bytes()
        log(f"apply: libnftables full apply {t_lib[0]:.2f}s")
        in_kernel = kernel_elements(nft.run("list table inet flowtui", flags=OUTPUT_JSON))
        nft.run("delete table inet flowtui")
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write(script)
        try:
            t_proc = nft_process(ns, f.name)
        finally:
            os.unlink(f.name)
        log(f"apply: nft -f full apply {t_proc:.2f}s")
        report["apply"] = {
            "pods": args.pods, "policies": args.policies, "rules_per_policy": args.rules,
            "chains": len(base.chains), "nft_rules": n_rules, "sets": len(base.sets), "set_elements": n_elems,
            "script_mb": round(len(script) / 1e6, 2),
            "compile_s": round(t_compile, 3), "render_s": round(t_render[0], 3),
            "apply_libnftables_s": round(t_lib[0], 3), "apply_nft_process_s": round(t_proc, 3),
            "decision_budget": options.decision_budget, "workload_chain_layouts": layout_counts(base_node),
            "memory": {
                "kernel": in_kernel,
                # Kernel memory charged to this process's memory cgroup by the full apply (noisy:
                # anything else this process allocates in the kernel meanwhile counts too).
                "kernel_bytes": (kmem_after - kmem_before) if kmem_before is not None and kmem_after is not None
                else None,
                "kernel_bytes_source": "memory cgroup kmem delta around the full apply",
                "python_rss_before_compile_mb": round(rss.before_mb, 1),
                "python_rss_peak_compile_mb": round(rss.peak_mb, 1),
            },
        }

        state = ClusterState(res)
        on_node: set[tuple[str, str, str]] = set()
        for ep in state.endpoints:
            on_node.update(p.key for p in state.applicable_policies(ep))
        candidates = [i for i, p in enumerate(res.policies) if p.key in on_node and p.rules(p.types[0])]
        rng = random.Random(args.seed + 1)
        rng.shuffle(candidates)

        def step(old: ir.Table, new: ir.Table, compile_s: float | None) -> OpTiming:
            with timed() as t_diff:
                ops = ir.diff(old, new)
            with timed() as t_rend:
                text = ir.render(new, ops)
            with timed() as t_app:
                if elements_only(new, ops):  # as KernelBackend does: straight to the kernel
                    sock.apply(new, ops)
                else:
                    nft.run(text)
            chains = sum(1 for o in ops if isinstance(o, (ir.DefineChain, ir.DeleteChain)))
            return OpTiming(compile_s, t_diff[0], t_rend[0], t_app[0], chains, text.count("\n"))

        def sample(kind: str, change: Callable[[int, Policy], Policy]) -> list[OpTiming]:
            timings: list[OpTiming] = []
            started = time.perf_counter()
            for k, index in enumerate(candidates):
                if len(timings) >= args.samples or (timings and time.perf_counter() - started > args.budget):
                    break
                policies = list(res.policies)
                policies[index] = change(k, policies[index])
                new, t_c = compile_res(replace(res, policies=tuple(policies)))
                timings.append(step(base, new, t_c))  # the change
                timings.append(step(new, base, None))  # and back (its compile is the base's)
                log(f"apply: {kind} {k + 1}: compile {t_c:.2f}s, apply {ms(timings[-2].apply)} ms / "
                    f"{ms(timings[-1].apply)} ms, {timings[-2].chains} chains")
            return timings

        def sample_toggles() -> list[OpTiming]:
            timings: list[OpTiming] = []
            started = time.perf_counter()
            for k, index in enumerate(candidates):
                if len(timings) >= args.samples or (timings and time.perf_counter() - started > args.budget):
                    break
                with timed() as t_gate:
                    off = base_node.with_disabled({res.policies[index].key}).table
                timings.append(step(base, off, t_gate[0]))
                with timed() as t_gate:
                    on = base_node.with_disabled(set()).table
                timings.append(step(off, on, t_gate[0]))
                log(f"apply: toggle {k + 1}: gate {ms(t_gate[0])} ms, apply {ms(timings[-2].apply)} ms / "
                    f"{ms(timings[-1].apply)} ms, {timings[-2].chains} chains, {timings[-2].lines} lines")
            return timings

        changes = sample("change", edited)
        toggles = sample_toggles()
    finally:
        nft.close()
        sock.close()
    report["apply"]["live_toggle"] = live_toggles(args, lab, res, [res.policies[i] for i in candidates])
    for name, timings in (("change", changes), ("toggle", toggles)):
        report["apply"][name] = {
            "samples": len(timings),
            "compile": stats([t.compile for t in timings if t.compile is not None]),
            "diff": stats([t.diff for t in timings]),
            "render": stats([t.render for t in timings]),
            "apply": stats([t.apply for t in timings]),
            "diff_render_apply": stats([t.diff + t.render + t.apply for t in timings]),
            "end_to_end": stats([t.total if t.compile is not None or name == "toggle" else t.total + t_compile
                                 for t in timings]),
            "chains_written": statistics.median([t.chains for t in timings]) if timings else 0,
            "script_lines": statistics.median([t.lines for t in timings]) if timings else 0,
        }


def live_toggles(args: argparse.Namespace, lab: str, res: ResourceSet, policies: list[Policy]) -> dict[str, Any]:
    """set_disabled + reconcile through the datastore and the kernel backend, as the CLI and the
    dashboard do it: from the call to the kernel's commit, and to the call's return."""
    from bench_evaluate import write_yaml

    from enforcer.datastore import Datastore
    from enforcer.nft.backend import KernelBackend
    from enforcer.reconcile import Reconciler

    committed: list[float] = []

    class Stamped(KernelBackend):
        def apply(self, node: str, table: ir.Table, ops: list[ir.Op]) -> None:
            super().apply(node, table, ops)
            committed.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="flowtui-bench-ds-") as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        write_yaml(res, docs)
        ds = Datastore(Path(tmp) / "state")
        with timed() as t_store:
            ds.apply_documents([str(docs)])
        rec = Reconciler(ds, Stamped(lab, lambda node: netns_name(lab, f"node:{node}")), compile_node,
                         rate_options(args), lambda: [NODE])
        with timed() as t_first:
            first = rec.reconcile()
        log(f"live toggle: stored {len(list(ds.objects()))} objects in {t_store[0]:.1f} s; first reconcile "
            f"(whole compile and apply) {t_first[0]:.1f} s")
        to_kernel: list[float] = []
        to_return: list[float] = []
        store: list[float] = []
        served = 0
        started = time.perf_counter()
        for p in policies:
            if len(to_kernel) >= args.samples or (to_kernel and time.perf_counter() - started > args.budget):
                break
            for disabled in (True, False):
                committed.clear()
                t0 = time.perf_counter()
                ds.set_disabled(p.kind, p.name, p.namespace, disabled)
                t1 = time.perf_counter()
                result = rec.reconcile()
                t2 = time.perf_counter()
                node = result.nodes[0]
                assert node.status == "applied" and committed, node
                served += node.toggled
                store.append(t1 - t0)
                to_kernel.append(committed[-1] - t0)
                to_return.append(t2 - t0)
        log(f"live toggle: {len(to_kernel)} toggles, median {ms(statistics.median(to_kernel))} ms to the kernel")

        # As `flowtui policy disable` does it: a fresh reconciler and backend each time (a new
        # process), served from the recorded table after the first-use check of the live one.
        fresh: list[float] = []
        fresh_served = 0
        for p in policies[: max(2, args.samples // 3)]:
            for disabled in (True, False):
                backend = Stamped(lab, lambda node: netns_name(lab, f"node:{node}"))
                other = Reconciler(Datastore(ds.path), backend, compile_node, rate_options(args), lambda: [NODE])
                committed.clear()
                t0 = time.perf_counter()
                other.datastore.set_disabled(p.kind, p.name, p.namespace, disabled)
                result = other.reconcile()
                node = result.nodes[0]
                assert node.status == "applied" and committed, node
                fresh_served += node.toggled
                fresh.append(committed[-1] - t0)
                backend.close()
        log(f"live toggle, fresh process: {len(fresh)} toggles, median {ms(statistics.median(fresh))} ms "
            f"to the kernel, {fresh_served} served by gates")
        rec.forget()  # the fresh processes changed the table behind this reconciler's back: re-check it
        rec.reconcile()  # (now, not inside the first edit's timing)

        # One-policy edits the same way: a stored document's first rule rewritten and applied;
        # the reconciler derives the state from the last one and recompiles the edited chain.
        edit_store: list[float] = []
        edit_compile: list[float] = []
        edit_kernel: list[float] = []
        edit_return: list[float] = []
        started = time.perf_counter()
        for k, p in enumerate(policies):
            if len(edit_kernel) >= args.samples or (edit_kernel and time.perf_counter() - started > args.budget):
                break
            (_, doc), = ds.object_documents(p.kind, name=p.name, namespace=p.namespace)
            direction = p.types[0]
            rules = doc["spec"].get(direction) or []
            if not rules:
                continue
            rules[0] = {"action": "Allow", "protocol": "TCP", "destination": {"ports": [21000 + k]}}
            path = Path(tmp) / f"edit-{k}.json"
            path.write_text(json.dumps(doc))
            committed.clear()
            t0 = time.perf_counter()
            ds.apply_documents([str(path)])
            t1 = time.perf_counter()
            result = rec.reconcile()
            t2 = time.perf_counter()
            node = result.nodes[0]
            assert node.status == "applied" and committed and not node.toggled, node
            edit_store.append(t1 - t0)
            edit_compile.append(node.compile_ms / 1e3)
            edit_kernel.append(committed[-1] - t0)
            edit_return.append(t2 - t0)
            log(f"live edit {k + 1}: store {ms(t1 - t0)} ms, compile {node.compile_ms:.0f} ms, "
                f"to the kernel {ms(committed[-1] - t0)} ms, {node.ops} changes")
    return {
        "first_reconcile_s": round(t_first[0], 3), "first": first.to_json(),
        "samples": len(to_kernel), "served_by_gates": served,
        "datastore_write": stats(store), "to_kernel": stats(to_kernel), "to_return": stats(to_return),
        "fresh_process": {"samples": len(fresh), "served_by_gates": fresh_served, "to_kernel": stats(fresh)},
        "edit": {"samples": len(edit_kernel), "datastore_write": stats(edit_store), "compile": stats(edit_compile),
                 "to_kernel": stats(edit_kernel), "to_return": stats(edit_return)},
    }


# ---- section 2: packet rate ----------------------------------------------------------------------


def rate_lab_resources() -> ResourceSet:
    return ResourceSet(
        nodes=(Node(NODE),),
        namespaces=(Namespace("bench"),),
        pods=(Pod("recv", "bench", (("app", "recv"),), NODE),),
        external_hosts=(ExternalHost("sender", (ip_address(SENDER_IP),)),),
    )


def rate_policies(count: int) -> tuple[Policy, ...]:
    """`count` policies selecting the receiving pod, 10 ingress rules each; only the last rule of
    the last policy matches the probe (UDP to PROBE_PORT from the sender or 198.18.0.0/15)."""

    def src(selector: str) -> EntityRule:
        return EntityRule(selector=parse_selector(selector))

    def ports(*p: int) -> EntityRule:
        return EntityRule(ports=tuple(PortRange(x, x) for x in p))

    out = []
    for i in range(count):
        rules = [
            Rule("Allow", protocol=6, source=src("app == 'web'"), destination=ports(80, 443)),
            Rule("Allow", protocol=17, source=src("app == 'dns'"), destination=ports(53)),
            Rule("Deny", protocol=17, source=EntityRule(nets=(ip_network("192.0.2.0/24"),))),
            Rule("Allow", protocol=17, destination=ports(5000 + i % 1000)),
            Rule("Allow", protocol=6, source=EntityRule(nets=(ip_network("10.0.0.0/8"),)), destination=ports(8080)),
            Rule("Deny", protocol=17, source=EntityRule(nets=(ip_network("198.51.100.0/24"),))),
            Rule("Allow", protocol=1, icmp=ICMPMatch(8)),
            Rule("Allow", protocol=17, source=src("app == 'api'"), destination=ports(PROBE_PORT)),
            Rule("Allow", protocol=6, destination=EntityRule(ports=(PortRange(9000, 9100),))),
            Rule("Deny", protocol=17, source=src("app == 'db'"), destination=ports(PROBE_PORT)),
        ]
        if i == count - 1:
            rules[-1] = Rule("Allow", protocol=17, destination=ports(PROBE_PORT))
        out.append(Policy("NetworkPolicy", f"p{i:04d}", "bench", order=float(i + 1),
                          selector=parse_selector("app == 'recv'"), types=("ingress",), ingress=tuple(rules)))
    return tuple(out)


def peer_pods() -> tuple[Pod, ...]:
    """Pods on another node (not built): members of the rules' source selectors."""
    apps = ("web", "api", "dns", "db")
    return tuple(Pod(f"peer{i}", "bench", (("app", apps[i % 4]),), "node-2", "default",
                     (ip_address(f"10.250.0.{10 + i}"), ip_address(f"fd00:250::{10 + i:x}"))) for i in range(40))


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + PAYLOAD, 0) + bytes(PAYLOAD)  # checksum 0: none
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    total = sum(struct.unpack("!10H", hdr))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~total & 0xFFFF) + hdr[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return eth + hdr + udp


def link_mac(netns: str, ifname: str) -> str:
    from enforcer.lab.kernel import open_netns

    with open_netns(netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))


class Responder:
    """A UDP echo in the pod (a thread whose socket lives in the pod's namespace): the reply
    that makes the node's conntrack entry ESTABLISHED."""

    def __init__(self, netns: str) -> None:
        from enforcer.lab.kernel import in_netns

        self.sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sock.bind(("0.0.0.0", PROBE_PORT))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-responder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 3600  # self-terminating
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                data, peer = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def handshake(netns: str, pod_ip: str) -> bool:
    """One request/reply from the sender's real socket: conntrack on the node sees both ways."""
    from enforcer.lab.kernel import in_netns

    sock = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((SENDER_IP, SENDER_PORT))
        sock.settimeout(1.0)
        for _ in range(3):
            sock.sendto(b"handshake" * 4, (pod_ip, PROBE_PORT))
            try:
                sock.recvfrom(2048)
                return True
            except TimeoutError:
                continue
        return False
    finally:
        sock.close()


def rate_options(args: argparse.Namespace) -> CompileOptions:
    """The options of the apply section and of the rate section's flowtui row: decision maps with
    --decision-budget (default 4,096)."""
    return CompileOptions(decision_budget=DEFAULT_BUDGET if args.decision_budget is None else args.decision_budget)


def final_allow_chain(compiled: CompiledNode, last: str) -> str:
    """The chain whose rule attributes the final allow of policy `last` (its policy chain in the
    rule walk, its outcome chain under decision maps): the checks read its counter."""
    rid = next(r.id for r in compiled.rules if r.name == last and r.rule == 9 and r.action == "Allow")
    holding = sorted(n for n, c in compiled.table.chains.items() if any(f'comment "r{rid}"' in r for r in c.rules))
    decided = [n for n in holding if n.startswith("dx-")]
    return (decided or holding)[0]


@dataclass
class Ruleset:
    key: str
    label: str
    script: str  # applied to an empty node
    table: str | None  # inet table whose counters the checks read
    last_chain: str | None  # the chain holding the final allow


def section_rate(args: argparse.Namespace, lab: str, pktgen: Path, report: dict[str, Any]) -> None:
    from enforcer.lab import lab_up
    from enforcer.lab.kernel import in_netns
    from enforcer.nft.libnft import Nft

    lab_res = rate_lab_resources()
    plan = plan_lab(lab_res, lab)
    log("rate: building the lab (sender, node, pod) ...")
    lab_up(plan)
    res = lab_resources(lab_res, plan)
    last = f"p{args.rate_policies - 1:04d}"
    res = replace(res, pods=res.pods + peer_pods(), nodes=res.nodes + (Node("node-2"),),
                  policies=rate_policies(args.rate_policies))
    state = ClusterState(res)
    ev = Evaluator(state)
    with timed() as t_c:
        compiled = compile_node(state, NODE, rate_options(args), evaluator=ev)
    flowtui = compiled.table
    layouts = [(c.layout, c.elements, c.reason) for c in compiled.layouts]
    walked = compile_node(state, NODE, CompileOptions(decision_budget=0), evaluator=ev)
    linear = linear_table(state, NODE, evaluator=ev)
    log(f"rate: flowtui table {rule_count(flowtui)} rules (compiled in {t_c[0]:.1f}s; workload chains {layouts}), "
        f"linear table {rule_count(linear)} rules")
    node_ns = netns_name(lab, f"node:{NODE}")
    pod_ns = netns_name(lab, "bench/recv")
    ext_ns = netns_name(lab, "external:sender")
    pod_ip = str(next(a for a in plan.pods[0].addresses if a.version == 4))
    flow_last = final_allow_chain(compiled, last)
    walk_last = final_allow_chain(walked, last)
    lin_last = next(n for n in linear.chains if n.startswith("pi4-") and n.endswith(f".{last}"))
    ct_only = ("add table inet flowtui\nadd chain inet flowtui forward "
               "{ type filter hook forward priority filter; policy accept; }\n"
               "add rule inet flowtui forward ct state established,related accept\n")
    arrival = ("add table netdev flowtui\nadd chain netdev flowtui in "
               "{ type filter hook ingress device \"eth0\" priority 0; }\n"
               "add rule netdev flowtui in counter drop\n")
    rulesets = [
        Ruleset("arrival", "(r0) drop on arrival at the node", arrival, None, None),
        Ruleset("empty", "(a) empty table", "add table inet flowtui\n", None, None),
        Ruleset("ct", "(r1) conntrack rule only", ct_only, None, None),
        Ruleset("flowtui", f"(b) flowtui, {args.rate_policies} policies",
                ir.render(flowtui, ir.full(flowtui, existing=False)), "flowtui", flow_last),
        Ruleset("walk", "(b') flowtui, rule walk (budget 0)",
                ir.render(walked.table, ir.full(walked.table, existing=False)), "flowtui", walk_last),
        Ruleset("linear", f"(c) linear, {args.rate_policies} policies",
                ir.render(linear, ir.full(linear, existing=False)), "linear", lin_last),
    ]
    ct_max = int(in_netns(node_ns, lambda: Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text()))
    new_cap = int(ct_max * 0.8)
    underlay = netns_name(lab, "underlay")
    inject = port_name("node", NODE)
    node_mac, ext_mac = link_mac(node_ns, "eth0"), link_mac(ext_ns, "eth0")
    frames = {
        "established": udp_frame(ext_mac, node_mac, SENDER_IP, pod_ip, SENDER_PORT, PROBE_PORT).hex(),
        "new": udp_frame(ext_mac, node_mac, NEW_FLOW_BASE, pod_ip, 1024, PROBE_PORT).hex(),
    }

    node_nft, pod_nft = Nft(node_ns), Nft(pod_ns)
    responder = Responder(pod_ns)
    pod_nft.run("add table netdev ftbench\nadd chain netdev ftbench in "
                "{ type filter hook ingress device \"eth0\" priority 0; }\n"
                f"add rule netdev ftbench in udp dport {PROBE_PORT} udp length {8 + PAYLOAD} counter drop\n")

    def delivered() -> int:
        counts = nft_counters(pod_nft.run("list table netdev ftbench"))
        return counts.get("in", 0)

    def node_counters(rs: Ruleset) -> dict[str, int]:
        return nft_counters(node_nft.run(f"list table inet {rs.table}")) if rs.table else {}

    def clear_node() -> None:
        for family, name in (("inet", "flowtui"), ("inet", "linear"), ("netdev", "flowtui")):
            try:
                node_nft.run(f"delete table {family} {name}")
            except Exception:  # noqa: BLE001 - absent is fine
                pass
        subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)

    def run_gen(mode: str, seconds: float, count: int) -> tuple[int, float]:
        argv = ["ip", "netns", "exec", underlay, str(pktgen), inject, frames[mode], str(count),
                str(seconds), "vary" if mode == "new" else "fixed", str(GEN_CPU), str(GEN_NICE)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 10)
        m = re.search(r"sent (\d+) seconds ([\d.]+)", done.stdout)
        if done.returncode != 0 or m is None:
            raise RuntimeError(f"pktgen failed: {done.stdout} {done.stderr}")
        return int(m[1]), float(m[2])

    results: dict[str, dict[str, list[float]]] = {rs.key: {"established": [], "new": []} for rs in rulesets}
    sent_rates: dict[str, dict[str, list[float]]] = {rs.key: {"established": [], "new": []} for rs in rulesets}
    checks: list[dict[str, Any]] = []
    try:
        if not handshake(ext_ns, pod_ip):
            raise RuntimeError("the sender gets no reply from the pod: the lab does not forward")
        for rep in range(args.reps):
            order = rulesets if rep % 2 == 0 else list(reversed(rulesets))
            for rs in order:
                clear_node()
                node_nft.run(rs.script)
                for mode in ("established", "new"):
                    if rs.key == "arrival" and mode == "new":
                        continue
                    subprocess.run(["ip", "netns", "exec", node_ns, "conntrack", "-F"], capture_output=True)
                    if mode == "established" and rs.key != "arrival" and not handshake(ext_ns, pod_ip):
                        raise RuntimeError(f"{rs.label}: no reply to the handshake")
                    before_pod, before_node = delivered(), node_counters(rs)
                    count = new_cap if mode == "new" else int(3e6 * args.seconds)
                    sent, secs = run_gen(mode, args.seconds, count)
                    time.sleep(0.05)  # the last batch drains
                    got = delivered() - before_pod
                    after_node = node_counters(rs)
                    if rs.key == "arrival":
                        got = nft_counters(node_nft.run("list table netdev flowtui")).get("in", 0)
                    results[rs.key][mode].append(got / secs)
                    sent_rates[rs.key][mode].append(sent / secs)
                    log(f"rate: rep {rep + 1} {rs.key:8} {mode:11} {got / secs:12,.0f} pps received "
                        f"({sent / secs:,.0f} sent)")
                    if rs.table and rs.last_chain:
                        allow = after_node.get(rs.last_chain, 0) - before_node.get(rs.last_chain, 0)
                        others = sum(after_node.get(c, 0) - before_node.get(c, 0) for c in after_node
                                     if c != rs.last_chain and c.startswith(("pi", "po")))
                        ok = (allow >= got * 0.99 and others == 0) if mode == "new" else allow <= 1
                        checks.append({"ruleset": rs.key, "mode": mode, "delivered": got, "final_allow_hits": allow,
                                       "other_policy_hits": others, "ok": ok})
    finally:
        responder.close()
        node_nft.close()
        pod_nft.close()

    def med(v: list[float]) -> float:
        return statistics.median(v) if v else 0.0

    def best(v: list[float]) -> float:
        return max(v) if v else 0.0

    rows = []
    empty = {m: (best(results["empty"][m]), med(results["empty"][m])) for m in ("established", "new")}
    for rs in rulesets:
        row: dict[str, Any] = {"ruleset": rs.key, "label": rs.label}
        for mode in ("established", "new"):
            vals = results[rs.key][mode]
            if not vals:
                continue
            top, mid = best(vals), med(vals)
            e_top, e_mid = empty[mode]
            row[mode] = {
                "pps": round(top), "median_pps": round(mid), "min_pps": round(min(vals)), "runs": len(vals),
                "sent_pps": round(best(sent_rates[rs.key][mode])),
                "ratio_to_empty": round(top / e_top, 4) if e_top else None,
                "median_ratio_to_empty": round(mid / e_mid, 4) if e_mid else None,
                "added_us_per_packet": round((1 / top - 1 / e_top) * 1e6, 3) if top and e_top else None,
            }
        rows.append(row)
    by_key = {row["ruleset"]: row for row in rows}

    def versus(mode: str, field: str) -> float | None:
        fl, li = by_key["flowtui"].get(mode), by_key["linear"].get(mode)
        return round(fl[field] / li[field], 3) if fl and li and li[field] else None

    toggles = decision_toggles(args, node_ns, compiled, next(rs.script for rs in rulesets if rs.key == "flowtui"))
    report["rate"] = {
        "decision_toggle": toggles,
        "policies": args.rate_policies, "workload_chain_layouts": layouts,
        "flowtui_rules": rule_count(flowtui), "linear_rules": rule_count(linear),
        "frame_bytes": 14 + 20 + 8 + PAYLOAD, "generator_seconds": args.seconds, "repetitions": args.reps,
        "new_flow_cap": new_cap, "conntrack_max": ct_max, "rows": rows,
        "flowtui_vs_linear": {m: versus(m, "pps") for m in ("established", "new")},
        "flowtui_vs_linear_median": {m: versus(m, "median_pps") for m in ("established", "new")},
        "checks": checks, "checks_ok": all(c["ok"] for c in checks),
    }


def decision_toggles(args: argparse.Namespace, node_ns: str, compiled: CompiledNode, script: str) -> dict[str, Any]:
    """Live toggles of policies that select the pod, on the flowtui table of the rate section
    (decision maps where they fit): the decision chains the policy is in decided again
    (`CompiledNode.with_disabled`), the diff, and its apply to the node's kernel — one nfnetlink
    batch when every op is one `enforcer.nft.elements` encodes, else libnftables. Each policy is
    switched off, then on again."""
    from enforcer.nft.libnft import Nft

    keys = sorted(compiled.gates)
    rng = random.Random(args.seed + 2)
    rng.shuffle(keys)
    nft, sock = Nft(node_ns), ElementSocket(node_ns)
    redecide: list[float] = []
    diff: list[float] = []
    apply: list[float] = []
    total: list[float] = []
    elements = 0
    batched = 0
    try:
        for family, name in (("inet", "flowtui"), ("inet", "linear"), ("netdev", "flowtui")):
            try:
                nft.run(f"delete table {family} {name}")
            except Exception:  # noqa: BLE001 - absent is fine
                pass
        nft.run(script)
        current = compiled.table
        for key in keys[: max(2, args.samples // 3)]:
            for disabled in ({key}, set()):
                t0 = time.perf_counter()
                table = compiled.with_disabled(disabled).table
                t1 = time.perf_counter()
                ops = ir.diff(current, table)
                t2 = time.perf_counter()
                if elements_only(table, ops):
                    sock.apply(table, ops)
                    batched += 1
                elif ops:
                    nft.run(ir.render(table, ops))
                t3 = time.perf_counter()
                redecide.append(t1 - t0)
                diff.append(t2 - t1)
                apply.append(t3 - t2)
                total.append(t3 - t0)
                elements += sum(len(o.add) + len(o.delete) for o in ops if isinstance(o, ir.SetElements))
                current = table
        nft.run("delete table inet flowtui")
    finally:
        nft.close()
        sock.close()
    log(f"rate: decision-map toggles: {len(total)}, median {ms(statistics.median(total))} ms from the call to the "
        f"kernel's commit ({batched} as one nfnetlink batch)")
    return {"samples": len(total), "one_batch": batched, "elements_changed": elements,
            "redecide": stats(redecide), "diff": stats(diff), "apply": stats(apply), "to_kernel": stats(total)}


# ---- output ----------------------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (issue 14), each None when its section did not run."""
    rows = {r["ruleset"]: r for r in report.get("rate", {}).get("rows", [])}

    def ratio(ruleset: str, mode: str) -> float | None:
        cell = rows.get(ruleset, {}).get(mode)
        return cell["ratio_to_empty"] if cell else None

    apply = report.get("apply", {})
    toggle = apply.get("live_toggle", {})
    full = None
    if "compile_s" in apply:
        full = round(apply["compile_s"] + apply["render_s"] + apply["apply_libnftables_s"], 3)
    return {
        "new_flow_ratio": ratio("flowtui", "new"), "established_ratio": ratio("flowtui", "established"),
        "walk_new_flow_ratio": ratio("walk", "new"), "linear_new_flow_ratio": ratio("linear", "new"),
        "full_apply_s": full,
        "toggle_median_ms": toggle.get("to_kernel", {}).get("median_ms"),
        "edit_median_ms": toggle.get("edit", {}).get("to_kernel", {}).get("median_ms"),
        "established_vs_conntrack_only": _vs_ct(rows),
        "apply_policies": apply.get("policies"),
        "compile_s": apply.get("compile_s"),
        "apply_workload_chain_layouts": apply.get("workload_chain_layouts"),
        "kernel_elements": apply.get("memory", {}).get("kernel"),
        "kernel_bytes": apply.get("memory", {}).get("kernel_bytes"),
        "python_rss_peak_compile_mb": apply.get("memory", {}).get("python_rss_peak_compile_mb"),
        "rate_policies": report.get("rate", {}).get("policies"),
        "decision_toggle_median_ms": report.get("rate", {}).get("decision_toggle", {}).get("to_kernel", {}).get(
            "median_ms"),
        "workload_chain_layouts": report.get("rate", {}).get("workload_chain_layouts"),
        "loadavg_start": report.get("machine", {}).get("loadavg_start"),
        "loadavg_end": report.get("machine", {}).get("loadavg_end"),
    }


def _vs_ct(rows: dict[str, Any]) -> float | None:
    """Established flows against the conntrack rule alone: what stateful filtering costs at least."""
    flow, ct = rows.get("flowtui", {}).get("established"), rows.get("ct", {}).get("established")
    if not flow or not ct or not ct.get("pps"):
        return None
    return round(flow["pps"] / ct["pps"], 3)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "python": platform.python_version(),
            "nft": nft, "loadavg_start": os.getloadavg()[0]}


def fmt_stats(s: dict[str, float]) -> str:
    return f"{s['median_ms']:>10.1f} {s['p95_ms']:>10.1f}" if s else f"{'-':>10} {'-':>10}"


def table_text(report: dict[str, Any]) -> str:
    out: list[str] = []
    m = report["machine"]
    out.append(f"machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, {m['nft']}, "
               f"load average {m['loadavg_start']:.2f} at start / {m.get('loadavg_end', 0):.2f} at end")
    a = report.get("apply")
    if a:
        out.append("")
        out.append(f"1. APPLY  {a['policies']} policies x {a['rules_per_policy']} rules, {a['pods']} pods on one node: "
                   f"{a['chains']} chains, {a['nft_rules']} rules, {a['sets']} sets "
                   f"({a['set_elements']} elements), {a['script_mb']} MB script")
        lib, proc = a["apply_libnftables_s"], a["apply_nft_process_s"]
        out.append(f"   compile {a['compile_s']:.2f} s | render {a['render_s']:.2f} s | apply libnftables "
                   f"{lib:.2f} s | apply `nft -f` {proc:.2f} s (libnftables / nft -f = {lib / proc:.2f})")
        mem = a.get("memory")
        if mem:
            kb = mem["kernel_bytes"]
            out.append(f"   decision budget {a['decision_budget']}: workload chains {a['workload_chain_layouts']}")
            out.append(f"   memory: kernel {mem['kernel']} ({'?' if kb is None else f'{kb / 1e6:.1f} MB'}, "
                       f"{mem['kernel_bytes_source']}); Python RSS {mem['python_rss_before_compile_mb']} MB before "
                       f"the compile, peak {mem['python_rss_peak_compile_mb']} MB while compiling")
        out.append(f"   {'':28} {'median ms':>10} {'p95 ms':>10}")
        for kind in ("change", "toggle"):
            k = a[kind]
            out.append(f"   {kind} (n={k['samples']}, {k['chains_written']:g} chains, {k['script_lines']:g} lines)")
            for part in ("compile", "diff", "render", "apply", "diff_render_apply", "end_to_end"):
                out.append(f"     {part:26} {fmt_stats(k[part])}")
        lt = a.get("live_toggle")
        if lt:
            first_ms = lt["first_reconcile_s"] * 1e3
            out.append(f"   live toggle through datastore + reconciler (n={lt['samples']}, "
                       f"{lt['served_by_gates']} served by gates, no compile); baseline: the first reconcile, "
                       f"whole compile + apply, "
                       f"{lt['first_reconcile_s']:.1f} s")
            for part in ("datastore_write", "to_kernel", "to_return"):
                ratio = f"  (x{first_ms / lt[part]['median_ms']:,.0f} faster)" if part == "to_kernel" else ""
                out.append(f"     {part:26} {fmt_stats(lt[part])}{ratio}")
            fp = lt.get("fresh_process")
            if fp and fp["samples"]:
                out.append(f"     {'fresh process (CLI), to_kernel':26} {fmt_stats(fp['to_kernel'])}  "
                           f"({fp['served_by_gates']}/{fp['samples']} served by gates; a new reconciler and backend "
                           f"each time: records and the ruleset generation checked, nothing read back)")
            ed = lt.get("edit")
            if ed and ed["samples"]:
                scratch = a["change"]["compile"]["median_ms"] if a["change"]["compile"] else 0.0
                out.append(f"   live one-policy edit through datastore + reconciler (n={ed['samples']}; the state "
                           f"derived from the last one); baseline: compiling from scratch, {scratch:.0f} ms above")
                for part in ("datastore_write", "compile", "to_kernel", "to_return"):
                    ratio = (f"  (x{scratch / ed[part]['median_ms']:,.1f} faster)"
                             if part == "compile" and scratch and ed[part] else "")
                    out.append(f"     {part:26} {fmt_stats(ed[part])}{ratio}")
        t = a["toggle"]
        if t["apply"]:
            kernel, e2e = t["apply"]["median_ms"], t["end_to_end"]["median_ms"]

            def verdict(value: float) -> str:
                return "met" if value < TOGGLE_TARGET_MS else "MISSED"

            out.append(f"   toggle target {TOGGLE_TARGET_MS:g} ms median: kernel apply {kernel:.1f} ms "
                       f"({verdict(kernel)}), gate+diff+render+apply {e2e:.1f} ms ({verdict(e2e)})")
            if lt:
                kern = lt["to_kernel"]["median_ms"]
                out.append(f"   live toggle from the call to the kernel's commit {kern:.1f} ms ({verdict(kern)})")
    r = report.get("rate")
    if r:
        out.append("")
        out.append(f"2. PACKET RATE  {r['frame_bytes']}-byte UDP frames, best of {r['repetitions']} interleaved runs "
                   f"(median-based ratio in brackets); {r['policies']} policies select the pod: flowtui "
                   f"{r['flowtui_rules']} rules, linear {r['linear_rules']} rules")
        out.append(f"   {'ruleset':34} {'established pps':>15} {'ratio':>15} {'+us/pkt':>7}  "
                   f"{'new-flow pps':>12} {'ratio':>15} {'+us/pkt':>7}")
        for row in r["rows"]:
            cells = []
            for mode, width in (("established", 15), ("new", 12)):
                c = row.get(mode)
                if c is None:
                    cells.append(f"{'-':>{width}} {'-':>15} {'-':>7}")
                    continue
                ratio = "-"
                if c["ratio_to_empty"] is not None:
                    ratio = f"{c['ratio_to_empty']:.3f} [{c['median_ratio_to_empty']:.3f}]"
                added = f"{c['added_us_per_packet']:.2f}" if c["added_us_per_packet"] is not None else "-"
                cells.append(f"{c['pps']:>{width},} {ratio:>15} {added:>7}")
            out.append(f"   {row['label']:34} {cells[0]}  {cells[1]}")
        fv, fm = r["flowtui_vs_linear"], r["flowtui_vs_linear_median"]
        out.append(f"   flowtui / linear pps: established {fv['established']} [{fm['established']}], "
                   f"new flows {fv['new']} [{fm['new']}]")
        out.append(f"   checks (new flows hit only the final allow; established skip the policies): "
                   f"{'ok' if r['checks_ok'] else 'FAILED'} ({len(r['checks'])} runs)")
    out.append(f"\ntotal run time {report['runtime_s']:.0f} s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and short runs (smoke test, < 1 min)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pods", type=int, help="apply section: pods (default 1000, quick 60)")
    ap.add_argument("--policies", type=int,
                    help="policies: the apply section's, and the rate section's unless --rate-policies "
                         "(default 1000, quick 60 and 200)")
    ap.add_argument("--rules", type=int, default=10, help="apply section: rules per policy")
    ap.add_argument("--samples", type=int, help="changes and toggles to time, each (default 30, quick 4)")
    ap.add_argument("--budget", type=float, help="seconds for sampling changes, and toggles (default 120, quick 8)")
    ap.add_argument("--rate-policies", type=int,
                    help="rate section: policies selecting the pod (default 1000, quick 200)")
    ap.add_argument("--reps", type=int, help="rate section: runs per ruleset and traffic kind (default 5, quick 2)")
    ap.add_argument("--seconds", type=float, help="rate section: generator run length (default 1.0, quick 0.5)")
    ap.add_argument("--decision-budget", type=int,
                    help="decision-map budget in cells: the apply section's and the rate section's flowtui row "
                         "(default 4,096)")
    ap.add_argument("--lab-id", help="lab id of the bench's own lab (default bench<pid>)")
    ap.add_argument("--skip-apply", action="store_true")
    ap.add_argument("--skip-rate", action="store_true")
    args = ap.parse_args(argv)
    quick = args.quick
    if args.rate_policies is None and args.policies is not None:
        args.rate_policies = args.policies
    for name, full, small in (("pods", 1000, 60), ("policies", 1000, 60), ("samples", 30, 4), ("budget", 120.0, 8.0),
                              ("rate_policies", 1000, 200), ("reps", 5, 2), ("seconds", 1.0, 0.5)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if os.geteuid() != 0:
        print("bench_dataplane needs root (network namespaces, nftables)", file=sys.stderr)
        return 2

    from enforcer.lab import lab_down

    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "quick": quick}
    lab = args.lab_id or f"bench{os.getpid() % 10_000_000}"
    with tempfile.TemporaryDirectory(prefix="flowtui-bench-") as tmp:
        pktgen = build_pktgen(Path(tmp)) if not args.skip_rate else None
        try:
            if not args.skip_apply:
                from enforcer.lab import lab_up

                lab_up(plan_lab(ResourceSet(nodes=(Node(NODE),)), lab))
                section_apply(args, lab, report)
                lab_down(lab)
            if pktgen is not None:
                section_rate(args, lab, pktgen, report)
        finally:
            lab_down(lab)
    report["machine"]["loadavg_end"] = os.getloadavg()[0]
    report["runtime_s"] = round(time.perf_counter() - started, 1)
    text = table_text(report)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(report, indent=2))
        print(json.dumps(summary(report)))  # the last line: the headline figures
    else:
        print(text)
    return 0 if report.get("rate", {}).get("checks_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
