"""WireGuard benchmark (issue 7): pod-to-pod TCP throughput between two nodes, plain and encrypted,
measured in the same run, IPv4 and IPv6.

    python bench/bench_wireguard.py [--seconds 3] [--repeat 2] [--json]

Needs root, `ip`, and wireguard-go when the kernel has no WireGuard (the backend used is printed).
Builds its own lab (`wgb<pid>`: nodes a and b, one pod on each) and removes it, even on failure.

Each measurement is one TCP connection from the pod on node a to the pod on node b: a Python
sender writes 256 KiB buffers for `--seconds`, the receiver counts bytes from the first byte to the
end of the stream (so connection setup is not counted). Plain (encryption off) and encrypted
(`wireguardEnabled` + `wireguardEnabledV6`) runs are interleaved `--repeat` times and the median
is reported, with the ratio encrypted / plain. The plain figure is the Python sender's rate over
veth and a bridge (a few Gbit/s); the encrypted one is wireguard-go's (userspace crypto, one TUN
per node, no offloads) or the kernel's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.lab import exec_in, lab_down, lab_up, netns_name, plan_lab  # noqa: E402
from enforcer.model import FelixConfiguration, Node, Pod, ResourceSet  # noqa: E402
from enforcer.wireguard import userspace  # noqa: E402
from enforcer.wireguard.keys import KeyStore  # noqa: E402
from enforcer.wireguard.manager import apply_lab, disable_lab  # noqa: E402

PORT = 5201
RECEIVER = textwrap.dedent("""\
    import json, socket, sys, time
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(1)
    srv.settimeout(float(sys.argv[3]))
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(float(sys.argv[3]))
    buf = bytearray(1 << 20)
    total, first = 0, None
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        if first is None:
            first = time.perf_counter()
        total += n
    end = time.perf_counter()
    print(json.dumps({"bytes": total, "seconds": end - (first or end)}), flush=True)
    """)
SENDER = textwrap.dedent("""\
    import socket, sys, time
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    chunk = b"x" * (256 * 1024)
    end = time.perf_counter() + float(sys.argv[3])
    while time.perf_counter() < end:
        s.sendall(chunk)
    s.close()
    """)


def measure(lab_id: str, dst: str, seconds: float) -> float:
    """Mbit/s of one TCP stream from default/src to `dst` (default/dst's address)."""
    bound = seconds + 20
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", netns_name(lab_id, "default/dst"), sys.executable, "-c", RECEIVER, dst, str(PORT),
         str(bound)], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("receiver did not start")
        done = exec_in(lab_id, "default/src", [sys.executable, "-c", SENDER, dst, str(PORT), str(seconds)],
                       capture_output=True, text=True, timeout=bound)
        if done.returncode != 0:
            raise RuntimeError(f"sender failed: {done.stderr.strip()}")
        out, _ = receiver.communicate(timeout=bound)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["bytes"]) * 8 / max(result["seconds"], 1e-9) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each stream (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="plain/encrypted pairs per family (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_wireguard needs root (network namespaces)", file=sys.stderr)
        return 2
    seconds = min(max(args.seconds, 0.5), 30.0)
    repeat = min(max(args.repeat, 1), 10)
    lab_id = f"wgb{os.getpid() % 1_000_000}"
    res = ResourceSet(nodes=(Node("a"), Node("b")), pods=(Pod("src", "default", node="a"),
                                                          Pod("dst", "default", node="b")))
    plan = plan_lab(res, lab_id)
    keys = KeyStore(tempfile.mkdtemp(prefix="flowtui-wg-bench-"))
    on = FelixConfiguration(wireguard_enabled=True, wireguard_enabled_v6=True)
    figures: dict[tuple[int, str], list[float]] = {}
    backend = reason = ""
    try:
        lab_up(plan)
        for _ in range(repeat):
            for mode in ("plain", "wireguard"):
                if mode == "wireguard":
                    result = apply_lab(on, plan, keys)
                    if not result.ok:
                        raise RuntimeError(result.describe())
                    first = result.tunnels[0]
                    backend, reason = first.backend or "", first.reason
                else:
                    disable_lab(plan, keys)
                for family in (4, 6):
                    dst = str(next(a for a in plan.pod("default", "dst").addresses if a.version == family))
                    figures.setdefault((family, mode), []).append(measure(lab_id, dst, seconds))
                time.sleep(0.2)
    finally:
        lab_down(lab_id)
        userspace.sweep()
    rows = []
    for family in (4, 6):
        plain = statistics.median(figures[(family, "plain")])
        enc = statistics.median(figures[(family, "wireguard")])
        rows.append({"family": f"IPv{family}", "plain_mbit_s": round(plain, 1), "wireguard_mbit_s": round(enc, 1),
                     "ratio": round(enc / plain, 3) if plain else None,
                     "samples": {"plain": [round(x, 1) for x in figures[(family, "plain")]],
                                 "wireguard": [round(x, 1) for x in figures[(family, "wireguard")]]}})
    if args.json:
        print(json.dumps({"backend": backend, "reason": reason, "seconds": seconds, "repeat": repeat,
                          "results": rows}, indent=2))
        return 0
    print(f"pod-to-pod TCP between two nodes, one stream, {seconds:g} s x {repeat} (median)")
    print(f"WireGuard backend: {backend} ({reason})")
    print(f"{'family':<8}{'plain Mbit/s':>14}{'WireGuard Mbit/s':>18}{'ratio':>8}")
    for r in rows:
        print(f"{r['family']:<8}{r['plain_mbit_s']:>14.1f}{r['wireguard_mbit_s']:>18.1f}{r['ratio']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
