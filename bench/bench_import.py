"""Import benchmark: records/s of `flowtui import hubble|calico` and packets/s of `import pcap`.

    python bench/bench_import.py [--records 100000] [--packets 50000] [--json]

Inputs are made from the published interop material (`../shared/external/material/interop/`):
the redirected-flows Hubble capture and the Calico flows.log line, repeated with shifted times
and varied pods, and a capture of TCP connections written with scapy. Each import goes into a
fresh store in a temporary directory, through the same code as the CLI (parse, then the store's
writer); the capture is read as `import pcap` reads it. No root needed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MATERIAL = ROOT.parent / "shared" / "external" / "material" / "interop"


def hubble_file(path: Path, n: int) -> None:
    source = (MATERIAL / "hubble" / "hubble-otel__basic-sample-400-l7-redirected-flows.json").read_text().splitlines()
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            doc = json.loads(source[i % len(source)])
            day, hour, minute, second = 1 + i // 86400 % 28, i // 3600 % 24, i // 60 % 60, i % 60
            doc["flow"]["time"] = f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"
            out.write(json.dumps(doc) + "\n")


def calico_file(path: Path, n: int) -> None:
    line = json.loads((MATERIAL / "calico" / "flows.log").read_text())
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            line.update(start_time=1659621542 + 10 * i, end_time=1659621552 + 10 * i, source_name=f"pod-{i % 500}")
            out.write(json.dumps(line) + "\n")


def capture_file(path: Path, n: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    rng = random.Random(1)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    with PcapWriter(str(path)) as writer:
        for i in range(n):
            conn = i // 4
            pkt = eth / IP(src=f"10.0.{conn % 250}.{conn // 250 % 250}", dst="10.1.0.1") / TCP(
                sport=1024 + conn % 60000, dport=80, flags="S" if i % 4 == 0 else "A")
            pkt.time = 1767268800 + i / 1000 + rng.random() / 10000
            writer.write(pkt)


def timed_import(kind: str, path: Path, db: Path) -> dict[str, float]:
    from flowtui.interop.imports import import_file
    from flowtui.store.duckdb_store import DuckStore

    t0 = time.perf_counter()
    store = DuckStore(db, snapshot_interval=None)
    try:
        result, _ = import_file(store, str(path), fmt=kind)
    finally:
        store.close(snapshot=False)
    seconds = time.perf_counter() - t0
    return {"records": result.records, "seconds": round(seconds, 2), "per_second": round(result.records / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ft-bench-import-") as tmp:
        work = Path(tmp)
        hubble_file(work / "hubble.json", args.records)
        calico_file(work / "flows.log", args.records)
        capture_file(work / "capture.pcap", args.packets)
        results["hubble"] = timed_import("hubble", work / "hubble.json", work / "h.duckdb")
        results["calico"] = timed_import("calico", work / "flows.log", work / "c.duckdb")
        from flowtui.whatif.pcap import read_capture

        t0 = time.perf_counter()
        frame, stats = read_capture(work / "capture.pcap")
        seconds = time.perf_counter() - t0
        results["pcap"] = {"packets": stats.packets, "flows": frame.height, "seconds": round(seconds, 2),
                           "per_second": round(stats.packets / seconds)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, row in results.items():
        unit = "packets" if name == "pcap" else "records"
        print(f"{name:7} {row[unit]:>9,} {unit} in {row['seconds']:6.2f} s  {row['per_second']:>8,}/s")


if __name__ == "__main__":
    main()
