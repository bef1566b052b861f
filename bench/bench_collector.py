"""Collector benchmark: NFLOG -> DuckDB events/s with zero loss, overload, and ulogd2 in the same run.

    python bench/bench_collector.py [--seconds 8] [--rates 100k,150k,200k,250k,max]
                                    [--ulogd-rates 10k,25k,40k,50k,75k,100k] [--no-ulogd] [--json]
                                    [--rollups shipped,every-commit,off]

Needs root, gcc and nft; ulogd2 with its JSON plugin for the comparison
(`apt-get install -y --no-install-recommends ulogd2 ulogd2-json`). Everything happens in one
lab, `ft-bc<hex>-*`, removed at the end, even after Ctrl-C:

    ft-bc…-ext-gen  --veth-->  ft-bc…-node-rx
    generator (CPU 0)          nft: udp dport 9999 counter log prefix "ft:D7" group 1 drop
                               listener (CPU 1): our collector, or ulogd2 (NFLOG -> JSON)

The generator is a small C program compiled here: pre-built Ethernet frames (UDP, 256 flows)
sent with `sendmmsg` on an AF_PACKET socket, paced to the asked rate, a fixed count per trial
(rate x seconds) and a time limit. The nft rule counter is the ground truth for every trial.

Ours: the full collector (parse, decode, attribution, enrichment, flows, events into DuckDB,
snapshots for readers). A rate counts as *sustained with zero loss* when nothing was lost and
the writer's queue never held more than half of its buffer pool (so the rate was not merely
absorbed by buffers). ulogd2: the NFLOG input -> BASE -> IFINDEX -> IP2STR -> HWHDR -> JSON
stack with the same kernel batching (qthreshold 128, 50 ms) and a 64 MiB receive buffer;
zero loss = as many JSON lines as the counter counted.

Overload: a spoofed-source flood (65,536 sources: every event is a new flow and a new address,
the expensive case) from one generator per CPU, so the collector also loses half its CPU; the
offered rate is then more than twice what the collector can store, and every event must still
be stored or counted lost by cause (stored + lost == nft counter).

Rollups (`--rollups`, one series of trials per mode, the JSON's `rollups`): `shipped`, the writer
as it is (each commit that closes flow buckets rolls up the hours that closed: in an 8 s trial,
none unless it crosses an hour, so little more than the bookkeeping); `every-commit`, the
worst case of that work: every such commit rolls up the current hour too (`pair_hours`,
`rule_hours`, `talkers` recomputed from its raw flows, then unrolled by the next insert); `off`,
no rollups at all (the store before them), the baseline. A trial is seconds long, so the hourly
roll-up itself is timed apart (`--hour-rows`, 0 skips it): one hour of that many flow rows
(`bench_queries.py`'s flows: 416k rows is its 10M-row day's hour) written by the store's writer
in 15 s batches, then `roll_up` of that hour as the collector's writer runs it at the hour's end,
in its transaction, both ways: from the raw flows (before `DuckStore.fold`) and after folding
each batch (the fold's own cost per batch is given too). The writer is that long away from the
queue, so the figure is given as the events that queue up meanwhile at 150k/s next to what the
reader's buffer pool holds.

The machine is shared: CPU time used by other processes during each trial is reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.ruleids import RuleRef, RuleTable  # noqa: E402
from flowtui.collector.service import Collector, CollectorConfig  # noqa: E402
from flowtui.collector.testbed import GEN_MAC, GEN_V4, RX_MAC, RX_V4, Testbed  # noqa: E402

GEN_C = r"""
// gen IFNAME FRAMES COUNT RATE MAXSECONDS: send COUNT frames (round robin) at RATE/s (0 = max).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#define BATCH 64
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static unsigned char data[1 << 24];
static struct iovec iov[1 << 17];
int main(int argc, char **argv) {
  if (argc != 6) { fprintf(stderr, "usage: gen IFNAME FRAMES COUNT RATE MAXSECONDS\n"); return 2; }
  long count = atol(argv[3]); double rate = atof(argv[4]), limit = atof(argv[5]);
  FILE *f = fopen(argv[2], "rb"); if (!f) { perror("frames"); return 1; }
  size_t n = fread(data, 1, sizeof data, f); fclose(f);
  int nframes = 0; size_t off = 0;
  while (off + 2 <= n && nframes < (1 << 17)) {
    uint16_t len = data[off] | (data[off + 1] << 8); off += 2;
    if (off + len > n) break;
    iov[nframes].iov_base = data + off; iov[nframes].iov_len = len; nframes++; off += len;
  }
  if (!nframes) { fprintf(stderr, "no frames\n"); return 1; }
  int s = socket(AF_PACKET, SOCK_RAW, 0); if (s < 0) { perror("socket"); return 1; }
  struct sockaddr_ll sll = {0};
  sll.sll_family = AF_PACKET; sll.sll_ifindex = if_nametoindex(argv[1]); sll.sll_protocol = htons(ETH_P_ALL);
  if (!sll.sll_ifindex || bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
  int sndbuf = 4 << 20; setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  struct mmsghdr msgs[BATCH]; memset(msgs, 0, sizeof msgs);
  long sent = 0; int next = 0; double start = now();
  while (sent < count && now() - start < limit) {
    int k = count - sent < BATCH ? (int)(count - sent) : BATCH;
    for (int i = 0; i < k; i++) {
      msgs[i].msg_hdr.msg_iov = &iov[(next + i) % nframes]; msgs[i].msg_hdr.msg_iovlen = 1;
    }
    if (rate > 0) {
      double due = start + sent / rate, t = now();
      if (due > t) {
        double w = due - t;
        struct timespec ts = {(time_t)w, (long)((w - (time_t)w) * 1e9)};
        nanosleep(&ts, NULL);
      }
    }
    int r = sendmmsg(s, msgs, k, 0);
    if (r < 0) { if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) continue; perror("sendmmsg"); return 1; }
    next = (next + r) % nframes; sent += r;
  }
  printf("%ld %.6f\n", sent, now() - start);
  return 0;
}
"""

RULESET = """
table inet ft {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 9999 counter log prefix "ft:D7" group 1 drop
  }
}
"""

ULOGD_CONF = """[global]
logfile="{dir}/ulogd.log"
loglevel=5
plugin="{lib}/ulogd_inppkt_NFLOG.so"
plugin="{lib}/ulogd_raw2packet_BASE.so"
plugin="{lib}/ulogd_filter_IFINDEX.so"
plugin="{lib}/ulogd_filter_IP2STR.so"
plugin="{lib}/ulogd_filter_HWHDR.so"
plugin="{lib}/ulogd_output_JSON.so"
stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON
[log1]
group=1
netlink_socket_buffer_size=67108864
netlink_socket_buffer_maxsize=67108864
netlink_qthreshold=128
netlink_qtimeout=5
[json1]
sync=0
file="{dir}/ulogd.json"
"""

GEN_CPU, LISTENER_CPU = 0, 1


@dataclass
class Trial:
    listener: str
    target: int  # asked rate, 0 = as fast as possible
    sent: int
    seconds: float
    offered: float  # sent / seconds
    counted: int  # nft rule counter
    stored: int
    lost: int
    lost_by_cause: dict[str, int]
    drain: float  # seconds after the generator stopped until everything was processed
    queue_peak_mb: float
    others_cpu_s: float  # CPU seconds other processes used during the trial

    @property
    def zero_loss(self) -> bool:
        return self.lost == 0 and self.stored == self.counted


# ------------------------------------------------------------------------------------------
# Machinery


class Others:
    """CPU used by processes that are not this benchmark, between start() and stop()."""

    def __init__(self) -> None:
        self.before: dict[int, int] = {}

    @staticmethod
    def snapshot() -> dict[int, int]:
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
                fields = raw.rsplit(")", 1)[1].split()
                if int(fields[1]) == os.getpid() or int(entry) == os.getpid():
                    continue  # ourselves and our children
                out[int(entry)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                continue
        return out

    def start(self) -> None:
        self.before = self.snapshot()

    def stop(self) -> float:
        after = self.snapshot()
        ticks = sum(v - self.before[p] for p, v in after.items() if p in self.before and v >= self.before[p])
        return ticks / os.sysconf("SC_CLK_TCK")


def frames_file(path: Path, sources: int) -> Path:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    template = bytes(
        Ether(src=GEN_MAC, dst=RX_MAC) / IP(src=GEN_V4, dst=RX_V4) / UDP(sport=10000, dport=9999) / Raw(b"x" * 18)
    )
    out = bytearray()
    for i in range(sources):
        frame = bytearray(template)
        if sources > 256:  # spoofed sources 198.18.0.0/15 (benchmarking range), varying ports
            frame[26:30] = bytes([198, 18 + ((i >> 16) & 1), (i >> 8) & 255, i & 255])
        struct.pack_into("!H", frame, 34, 10000 + (i % 50000))
        struct.pack_into("!H", frame, 24, 0)  # IP checksum: recomputed below
        header = frame[14:34]
        s = sum(struct.unpack("!10H", header))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        struct.pack_into("!H", frame, 24, ~s & 0xFFFF)
        struct.pack_into("!H", frame, 40, 0)  # UDP checksum optional over IPv4
        out += struct.pack("<H", len(frame)) + frame
    path.write_bytes(bytes(out))
    return path


def compile_gen(work: Path) -> Path:
    src = work / "gen.c"
    src.write_text(GEN_C)
    exe = work / "gen"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True, capture_output=True)
    return exe


def generate(
    bed: Testbed, gen: Path, frames: Path, count: int, rate: int, limit: float, cpu: int
) -> subprocess.Popen[str]:
    argv = ["taskset", "-c", str(cpu), "ip", "netns", "exec", bed.gen, str(gen), "eth0", str(frames)]
    return subprocess.Popen([*argv, str(count), str(rate), str(limit)], stdout=subprocess.PIPE, text=True)


def finish_gen(procs: list[subprocess.Popen[str]]) -> tuple[int, float]:
    sent, seconds = 0, 0.0
    for p in procs:
        out, _ = p.communicate(timeout=600)
        n, t = out.split()
        sent += int(n)
        seconds = max(seconds, float(t))
    return sent, seconds


# ------------------------------------------------------------------------------------------
# Trials


ROLLUP_MODES = ("shipped", "every-commit", "off")


def rollup_mode(mode: str) -> None:
    """Make this process's writers roll up as `mode` says (see the docstring)."""
    from flowtui.store.duckdb_store import DuckStore

    shipped_roll_up = getattr(DuckStore, "_shipped_roll_up", DuckStore.roll_up)
    shipped_unroll = getattr(DuckStore, "_shipped_unroll_from", DuckStore._unroll_from)
    DuckStore._shipped_roll_up = shipped_roll_up  # type: ignore[attr-defined]
    DuckStore._shipped_unroll_from = shipped_unroll  # type: ignore[attr-defined]

    def every_commit(self: DuckStore, until: object = None, max_hours: int | None = None) -> int:
        return int(shipped_roll_up(self, None))  # up to the end of the newest flow's hour

    def off(self: DuckStore, until: object = None, max_hours: int | None = None) -> int:
        return 0

    DuckStore.roll_up = {"shipped": shipped_roll_up, "every-commit": every_commit, "off": off}[mode]  # type: ignore[method-assign]
    DuckStore._unroll_from = shipped_unroll if mode != "off" else (lambda self, first: None)  # type: ignore[method-assign]


def hour_rollup(work: Path, rows: int) -> dict[str, float]:
    """The hour's end in the writer, both ways (see the docstring): one hour of `rows` flow rows
    written in 15 s batches of closed buckets; `recompute`: `roll_up` of the hour from its raw
    flows (the writer before `fold`); `fold`: each batch folded as the writer does (the per-commit
    cost: median and max) and then `roll_up`, which compacts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import argparse as _argparse
    import statistics

    import bench_queries
    import numpy as np

    from flowtui.store.duckdb_store import DuckStore

    out: dict[str, float] = {"rows": rows}
    for way in ("recompute", "fold"):
        rng = np.random.default_rng(1)
        dims = bench_queries.build_dimensions(rng, _argparse.Namespace(namespaces=50, pods=5000, policies=1000,
                                                                       nodes=20))
        store = DuckStore(work / f"hour-{way}-{secrets.token_hex(2)}.duckdb", snapshot_interval=None)
        try:
            store.insert_rows("rules", dims["rules"])
            store.insert_rows("endpoints", dims["endpoints"])
            t0_us = int((bench_queries.START - bench_queries.datetime(1970, 1, 1)).total_seconds() * 1e6)
            batches, folds = 240, []
            for i in range(batches):  # one batch per 15 s bucket
                n = rows // batches
                a, b = t0_us + 15_000_000 * i, t0_us + 15_000_000 * (i + 1)
                chunk = bench_queries.flow_chunk(rng, dims, n, a, b, 20)
                with store.transaction():
                    store.insert("flows", chunk)
                    t = time.perf_counter()
                    if way == "fold":
                        store.fold(chunk)
                    folds.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.roll_up(bench_queries.START + bench_queries.timedelta(hours=1), max_hours=1)
            out[f"{way}_hour_end_s"] = round(time.perf_counter() - t, 3)
            if way == "fold":
                out["fold_median_s"] = round(statistics.median(folds), 4)
                out["fold_max_s"] = round(max(folds), 4)
        finally:
            store.close(snapshot=False)
    return out


@dataclass
class HourEnd:
    """A trial whose collector clock crosses an hour's end (see `trial_hour_end`)."""

    mode: str  # "worker": the totals on the store's worker; "in-commit": merged in the writer's commit;
    # "control": as "worker", the clock half an hour before the hour's end (what the same trial loses without it)
    trial: Trial
    prefilled_rows: int  # flow rows in the store before the trial (a whole hour and the one that ends)
    crossed: bool  # the writer rolled the hour up during the trial
    longest_commit_s: float  # the writer away from its queue: its longest commit
    hour_commit_s: float  # the commit that rolled the hour up
    worker_s: float | None  # the worker's job for that hour (None: in the commit)
    drained_during_job: float | None  # events/s the writer stored while the worker's job ran

    @property
    def zero_loss(self) -> bool:
        return self.trial.zero_loss


def prefill_hours(path: Path, rows: int, hour_end: float, before: float) -> tuple[int, dict[Any, Any]]:
    """A store holding the hour before `hour_end`'s hour, rolled up with its totals, and the hour that
    ends at `hour_end` up to `before` seconds earlier (whole 15 s buckets), folded by the store's own
    writer API as the collector's writer folds it: `rows` flow rows per hour (`bench_queries.py`'s
    flows). Returns the rows written and the writer's fold state, for the collector's store."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import argparse as _argparse

    import bench_queries
    import numpy as np

    from flowtui.store.duckdb_store import DuckStore

    rng = np.random.default_rng(1)
    dims = bench_queries.build_dimensions(rng, _argparse.Namespace(namespaces=50, pods=5000, policies=1000, nodes=20))
    store = DuckStore(path, snapshot_interval=None)
    written = 0
    try:
        store.insert_rows("rules", [r for r in dims["rules"] if r["id"] != 7])  # 7: the bench's own rule
        store.insert_rows("endpoints", dims["endpoints"])
        first_us = int((hour_end - 7200) * 1e6)
        last_us = int((hour_end - before) * 1e6) // 15_000_000 * 15_000_000
        for a in range(first_us, last_us, 15_000_000):
            chunk = bench_queries.flow_chunk(rng, dims, rows // 240, a, a + 15_000_000, 20)
            with store.transaction():  # as the collector's writer commits closed buckets
                store.insert("flows", chunk)
                store.fold(chunk)
                store.roll_up(datetime.fromtimestamp((a + 15_000_000) / 1e6, UTC).replace(tzinfo=None), max_hours=1)
            written += chunk.num_rows
        folded = dict(store._folded)
    finally:
        store.close(snapshot=False)
    return written, folded


def trial_hour_end(bed: Testbed, gen: Path, frames: Path, work: Path, rate: int, seconds: float,
                   template: tuple[Path, int, dict[Any, Any], float], mode: str) -> HourEnd:
    """`trial_ours` on a copy of the prefilled store, the collector's clock set `lead` seconds before
    the hour's end (`CollectorConfig.clock_offset_seconds`): its last bucket closes ~6 s later and the
    writer rolls the hour up while the generator goes on. The copy's writer is given the prefill's fold
    state (as if one writer had run all hour). Measured around the writer: every commit's time, and
    the store's worker job with the events stored meanwhile."""
    from flowtui.collector import writer as writer_mod
    from flowtui.store import duckdb_store

    path, written, folded, hour_end = template
    db = work / f"hour-{mode}-{secrets.token_hex(2)}.duckdb"
    shutil.copyfile(path, db)
    lead = 5.0 if mode != "control" else 1800.0  # control: the same trial, no hour's end in it
    cfg = CollectorConfig(db=db, namespaces=(bed.rx,), conntrack=False, rules_path=work / "rules.jsonl",
                          clock_offset_seconds=0.0)
    store = duckdb_store.DuckStore(db, threads=cfg.duckdb_threads, snapshot_interval=cfg.snapshot_interval)
    store._folded = dict(folded)
    hour = datetime.fromtimestamp(hour_end, UTC).replace(tzinfo=None)
    commits: list[tuple[float, bool, float]] = []  # seconds, rolled the hour up, when it began
    jobs: list[tuple[float, float, int, int]] = []
    c = Collector(cfg, store=store)
    real_commit, real_defer = writer_mod.Writer._commit, getattr(duckdb_store.DuckStore, "defer_totals", None)

    def timed_commit(self: Any, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        real_commit(self, *args, **kwargs)
        rolled = self.store.rolled_until()
        commits.append((time.perf_counter() - t, rolled is not None and rolled > hour - timedelta(hours=1), t))

    def defer_timed(self: Any) -> None:
        assert real_defer is not None
        real_defer(self)
        worker = self._worker
        real_job = worker._job

        def job() -> None:
            t0, n0 = time.perf_counter(), c.book.stat_total("stored")
            real_job()
            jobs.append((t0, time.perf_counter(), n0, c.book.stat_total("stored")))

        worker._job = job

    writer_mod.Writer._commit = timed_commit  # type: ignore[method-assign]
    if real_defer is not None:
        duckdb_store.DuckStore.defer_totals = defer_timed if mode != "in-commit" else (lambda self: None)  # type: ignore[method-assign]
    try:
        c.cfg.clock_offset_seconds = hour_end - lead - time.time()
        t = _run_collector(c, bed, gen, frames, rate, seconds)
    finally:
        writer_mod.Writer._commit = real_commit  # type: ignore[method-assign]
        if real_defer is not None:
            duckdb_store.DuckStore.defer_totals = real_defer  # type: ignore[method-assign]
    cross = next((k for k in commits if k[1]), None)
    # the worker's job for the hour: the first to start after that commit began (not the one
    # of the partial hour the collector rolls up as it stops)
    job = None if cross is None else next((j for j in jobs if j[0] >= cross[2]), None)
    return HourEnd(
        mode, t, written, cross is not None, round(max((k[0] for k in commits), default=0.0), 3),
        round(cross[0], 3) if cross is not None else 0.0,
        None if job is None else round(job[1] - job[0], 3),
        None if job is None or job[1] <= job[0] else round((job[3] - job[2]) / (job[1] - job[0])),
    )


def trial_ours(
    bed: Testbed,
    gen: Path,
    frames: Path,
    work: Path,
    rate: int,
    seconds: float,
    generators: int = 1,
) -> Trial:
    db = work / f"ours-{rate}-{generators}-{secrets.token_hex(2)}.duckdb"
    cfg = CollectorConfig(db=db, namespaces=(bed.rx,), conntrack=False, rules_path=work / "rules.jsonl")
    return _run_collector(Collector(cfg), bed, gen, frames, rate, seconds, generators)


def _run_collector(c: Collector, bed: Testbed, gen: Path, frames: Path, rate: int, seconds: float,
                   generators: int = 1) -> Trial:
    before = bed.counter("ft:D7")
    c.start()
    others = Others()
    others.start()
    count = int((rate or 400_000) * seconds) // generators
    cpus = [GEN_CPU, LISTENER_CPU][:generators]
    procs = [generate(bed, gen, frames, count, rate // generators, seconds * 3 + 10, cpu) for cpu in cpus]
    sent, took = finish_gen(procs)
    t_end = time.monotonic()
    deadline = t_end + 60
    while time.monotonic() < deadline:
        done = c.book.stat_total("received") + sum(c.book.lost_by_cause().values())
        if done >= sent and c.backlog.empty:
            break
        time.sleep(0.05)
    drain = time.monotonic() - t_end
    summary = c.stop()
    used = others.stop()
    counted = bed.counter("ft:D7") - before
    lost = summary["lost"]
    return Trial(
        "flowtui",
        rate,
        sent,
        took,
        sent / took if took else 0.0,
        counted,
        int(summary["stats"].get("stored", 0)),
        int(sum(lost.values())),
        {k: int(v) for k, v in lost.items() if v},
        round(drain, 2),
        round(summary["stats"].get("queue_peak_bytes", 0) / 1e6, 1),
        round(used, 1),
    )


def ulogd_available() -> Path | None:
    if shutil.which("ulogd") is None:
        return None
    for lib in ("/usr/lib/x86_64-linux-gnu/ulogd", "/usr/lib/aarch64-linux-gnu/ulogd", "/usr/lib/ulogd"):
        if Path(lib, "ulogd_output_JSON.so").exists():
            return Path(lib)
    return None


def trial_ulogd(bed: Testbed, gen: Path, frames: Path, work: Path, lib: Path, rate: int, seconds: float) -> Trial:
    udir = work / f"ulogd-{rate}"
    udir.mkdir()
    conf = udir / "ulogd.conf"
    conf.write_text(ULOGD_CONF.format(dir=udir, lib=lib))
    out = udir / "ulogd.json"
    proc = subprocess.Popen(
        ["taskset", "-c", str(LISTENER_CPU), "ip", "netns", "exec", bed.rx, "ulogd", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            r["group"] == 1 for r in _instances(bed)
        ):  # bound to the group: ready
            time.sleep(0.05)
        before = bed.counter("ft:D7")
        others = Others()
        others.start()
        count = int((rate or 400_000) * seconds)
        sent, took = finish_gen([generate(bed, gen, frames, count, rate, seconds * 3 + 10, GEN_CPU)])
        t_end = time.monotonic()
        last, stable = -1, 0
        while time.monotonic() - t_end < 120 and stable < 4:  # until the JSON file stops growing
            time.sleep(0.25)
            size = out.stat().st_size if out.exists() else 0
            stable = stable + 1 if size == last else 0
            last = size
        drain = time.monotonic() - t_end - 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    used = others.stop()
    counted = bed.counter("ft:D7") - before
    with out.open("rb") as f:
        lines = sum(1 for _ in f)
    return Trial(
        "ulogd2-json",
        rate,
        sent,
        took,
        sent / took if took else 0.0,
        counted,
        lines,
        counted - lines,
        {"unaccounted": counted - lines} if counted != lines else {},
        round(max(drain, 0.0), 2),
        0.0,
        round(used, 1),
    )


def _instances(bed: Testbed) -> list[dict[str, int]]:
    from flowtui.collector.nflog import kernel_instances

    return kernel_instances(bed.rx)


# ------------------------------------------------------------------------------------------
# Main


def run_hour_ends(bed: Testbed, gen: Path, frames: Path, work: Path, args: argparse.Namespace,
                  pool_mb: float) -> list[dict[str, Any]]:
    """The hour-end trials (`trial_hour_end`), one per rate and mode, on one prefilled store."""
    rates = [parse_rate(r) for r in args.hour_end_rates.split(",") if r.strip()]
    if not rates or not args.hour_rows:
        return []
    hour_end = (math.floor(time.time() / 3600) + 1) * 3600.0  # the collector's clock is moved, not ours
    path = work / "hour-end-template.duckdb"
    t0 = time.perf_counter()
    written, folded = prefill_hours(path, args.hour_rows, hour_end, 60.0)
    print(f"hour-end trials: a store of {written:,} flow rows (an hour rolled up, the next folded), "
          f"built in {time.perf_counter() - t0:.0f} s; the collector's clock starts 5 s before the hour's end")
    holds = pool_mb * 1e6 / 200  # events of ~200 B
    out = []
    for rate in rates:
        print(f"  at {rate:,}/s the reader's pool (~{holds:,.0f} events) absorbs a stall of {holds / rate:.1f} s; "
              f"half of it (the sustained criterion) {holds / rate / 2:.1f} s")
        for mode in args.hour_end_modes.split(","):
            h = trial_hour_end(bed, gen, frames, work, rate, args.hour_end_seconds,
                               (path, written, folded, hour_end), mode)
            h.trial.listener = f"hour-end/{mode}"
            show(h.trial)
            job = "" if h.worker_s is None else (f"; worker {h.worker_s:.2f} s, the writer storing "
                                                 f"{h.drained_during_job or 0:,.0f} events/s meanwhile")
            print(f"    crossed the hour: {'yes' if h.crossed else 'NO'}; hour's commit {h.hour_commit_s:.2f} s; "
                  f"longest commit {h.longest_commit_s:.2f} s{job}; queue peak {h.trial.queue_peak_mb:.1f} MB "
                  f"-> {'zero loss' if h.zero_loss else 'LOSS'}", flush=True)
            out.append(asdict(h) | {"zero_loss": h.zero_loss, "load_average": os.getloadavg()})
    return out


def parse_rate(text: str) -> int:
    text = text.strip().lower()
    if text in ("max", "0"):
        return 0
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def show(t: Trial) -> None:
    target = "max" if t.target == 0 else f"{t.target / 1000:.0f}k"
    verdict = "zero loss" if t.zero_loss else f"LOST {t.lost:,} ({t.lost / max(t.counted, 1):.1%}) {t.lost_by_cause}"
    print(
        f"  {t.listener:<12} target {target:>5}/s  offered {t.offered:>9,.0f}/s  sent {t.sent:>9,}  "
        f"counter {t.counted:>9,}  stored {t.stored:>9,}  drain {t.drain:>5.2f}s  "
        f"queue {t.queue_peak_mb:>5.1f}MB  others {t.others_cpu_s:>4.1f}cpu-s  {verdict}",
        flush=True,
    )


def sustained(trials: list[Trial], pool_mb: float) -> float:
    ok = [t.offered for t in trials if t.zero_loss and t.queue_peak_mb <= pool_mb / 2]
    return max(ok, default=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each trial")
    ap.add_argument("--rates", default="100k,150k,200k,250k,max", help="offered rates for flowtui")
    ap.add_argument("--ulogd-rates", default="10k,25k,40k,50k,75k,100k", help="offered rates for ulogd2")
    ap.add_argument("--no-ulogd", action="store_true")
    ap.add_argument("--no-overload", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print all trials as JSON")
    ap.add_argument("--hour-rows", type=int, default=416_000, help="time the roll-up of one hour of this many flows")
    ap.add_argument("--hour-end-rates", default="150k",
                    help="rates of the trials that cross an hour's end (empty: none); their store holds "
                         "--hour-rows flow rows per hour")
    ap.add_argument("--hour-end-seconds", type=float, default=30.0, help="length of each hour-end trial")
    ap.add_argument("--hour-end-modes", default="worker,in-commit",
                    help="worker (as shipped: the totals on the store's worker), in-commit (merged in the "
                         "writer's commit, as before), control (as worker, no hour's end in the trial)")
    ap.add_argument("--no-hour-rollup", action="store_true", help="skip the store-only hour roll-up timing")
    ap.add_argument("--rollups", default="shipped", help=f"comma-separated writer modes: {', '.join(ROLLUP_MODES)}")
    args = ap.parse_args()
    modes = args.rollups.split(",")
    if not set(modes) <= set(ROLLUP_MODES):
        ap.error(f"--rollups: one or more of {', '.join(ROLLUP_MODES)}")
    if os.geteuid() != 0:
        print("needs root (network namespaces, nft, AF_PACKET)", file=sys.stderr)
        return 2
    for tool in ("gcc", "nft", "ip", "taskset"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    lib = None if args.no_ulogd else ulogd_available()
    if not args.no_ulogd and lib is None:
        print(
            "ulogd2 with the JSON plugin is not installed: "
            "apt-get install -y --no-install-recommends ulogd2 ulogd2-json (comparison skipped)",
            file=sys.stderr,
        )
    os.sched_setaffinity(0, {LISTENER_CPU})  # the collector's threads (and DuckDB's) inherit this
    lab_id = "bc" + secrets.token_hex(3)[:5]
    work = Path(tempfile.mkdtemp(prefix="flowtui-bench-collector-"))
    RuleTable([RuleRef(7, "GlobalNetworkPolicy", None, "deny-9999", "default", 1, "ingress", 0, "Deny")]).dump(
        work / "rules.jsonl"
    )
    bed = Testbed.up(lab_id)
    trials: list[Trial] = []
    try:
        bed.nft(RULESET)
        gen = compile_gen(work)
        flows = frames_file(work / "frames-256", 256)
        spoofed = frames_file(work / "frames-spoofed", 65536)
        print(f"lab {lab_id}; {args.seconds:g} s per trial; generator on CPU {GEN_CPU}, listener on CPU {LISTENER_CPU}")
        print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
        pool_mb = CollectorConfig(db=work / "x").buffers * CollectorConfig(db=work / "x").buffer_bytes / 1e6
        by_mode: dict[str, float] = {}
        for mode in modes:
            rollup_mode(mode)
            print(f"flowtui collector (NFLOG -> parse -> flows + events in DuckDB; rollups {mode}):")
            ours = []
            for rate in [parse_rate(r) for r in args.rates.split(",")]:
                t = trial_ours(bed, gen, flows, work, rate, args.seconds)
                t.listener = f"flowtui/{mode}" if mode != "shipped" else "flowtui"
                show(t)
                ours.append(t)
            trials += ours
            by_mode[mode] = sustained(ours, pool_mb)
        rollup_mode("shipped")
        ours_rate = by_mode[modes[0]]
        theirs_rate = 0.0
        if lib is not None:
            print("ulogd2 (NFLOG -> JSON file):")
            theirs = []
            for rate in [parse_rate(r) for r in args.ulogd_rates.split(",")]:
                t = trial_ulogd(bed, gen, flows, work, lib, rate, args.seconds)
                show(t)
                theirs.append(t)
            trials += theirs
            theirs_rate = max((t.offered for t in theirs if t.zero_loss), default=0.0)
        overload = None
        if not args.no_overload:
            print("overload: spoofed-source flood, one generator per CPU (the collector keeps half a CPU):")
            overload = trial_ours(bed, gen, spoofed, work, 0, args.seconds, generators=2)
            show(overload)
            trials.append(overload)
        hour_ends = run_hour_ends(bed, gen, flows, work, args, pool_mb)
        print()
        for mode, rate in by_mode.items():
            print(f"sustained with zero loss, rollups {mode}: flowtui {rate:,.0f} events/s")
        hour = hour_rollup(work, args.hour_rows) if args.hour_rows and not args.no_hour_rollup else None
        if hour is not None:
            holds = pool_mb * 1e6 / 200
            for way in ("recompute", "fold"):
                stall = hour[f"{way}_hour_end_s"]
                print(f"hour end in the commit (store API, no worker), {way}: {stall:.2f} s for "
                      f"{hour['rows']:,.0f} flow rows = "
                      f"{stall * 150_000:,.0f} events queued at 150k/s (the pool holds ~{holds:,.0f} at 200 B each)")
            print(f"fold per 15 s batch: median {hour['fold_median_s'] * 1e3:.1f} ms, "
                  f"max {hour['fold_max_s'] * 1e3:.1f} ms")
        print(f"sustained with zero loss: flowtui {ours_rate:,.0f} events/s", end="")
        if lib is not None and theirs_rate:
            print(f"; ulogd2 JSON {theirs_rate:,.0f} events/s; ratio {ours_rate / theirs_rate:.1f}x")
        elif lib is not None:
            print("; ulogd2 JSON lost events at every rate tried (add lower --ulogd-rates)")
        else:
            print()
        busy = [t for t in trials if t.others_cpu_s > 0.2 * t.seconds]
        if busy:
            print(
                f"note: other processes used > 20% of a CPU during {len(busy)} of {len(trials)} trials "
                "(see `others`): figures are lower than on an idle machine"
            )
        if overload is not None:
            store_rate = overload.stored / (overload.seconds + overload.drain)
            factor = overload.offered / store_rate if store_rate else float("inf")
            accounted = overload.stored + overload.lost == overload.counted
            print(
                f"overload: offered {overload.offered:,.0f}/s = {factor:.1f}x what was stored "
                f"({store_rate:,.0f}/s); stored {overload.stored:,} + lost {overload.lost:,} "
                f"{'==' if accounted else '!='} counter {overload.counted:,}; lost by cause {overload.lost_by_cause}"
            )
        if args.json:
            print(json.dumps([asdict(t) | {"zero_loss": t.zero_loss} for t in trials], indent=2))
            print(json.dumps({"sustained": {"flowtui": ours_rate, "ulogd2": theirs_rate},
                              "rollups": by_mode, "hour_rollup": hour, "hour_end": hour_ends,
                              "load_average": os.getloadavg()}))
        bad = [t for t in trials if t.listener.startswith("flowtui") and t.stored + t.lost != t.counted]
        if bad:
            print(f"ACCOUNTING MISMATCH in {len(bad)} trial(s)", file=sys.stderr)
            return 1
        return 0
    finally:
        bed.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
