"""The evaluator-versus-kernel differential test in its long mode: many seeds, one command.

    python bench/bench_differential.py [--seeds 50] [--workers 2]

Runs tests/test_differential_kernel.py with FLOWTUI_DIFF_SEEDS (per seed: 60 probes against the
compiled table, then a third of the policies toggled through their gates and 30 more probes;
verdicts and NFLOG attribution compared probe by probe) and prints probes checked, disagreements
and time.
Needs root (network namespaces and nftables).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBES_PER_SEED = 60 + 30  # compiled, then toggled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, FLOWTUI_DIFF_SEEDS=str(args.seeds))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", str(args.workers), "tests/test_differential_kernel.py"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    seconds = time.monotonic() - started
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", tail)) else 0
    print(f"seeds: {args.seeds} ({PROBES_PER_SEED} probes each, 30 of them after toggles; verdict + attribution)")
    print(f"seeds agreeing: {passed}, disagreeing: {failed}")
    print(f"probes checked: {passed * PROBES_PER_SEED} agreeing in {seconds:.0f} s "
          f"({passed * PROBES_PER_SEED / seconds:.1f} probes/s, lab build and collector included)")
    if done.returncode != 0:
        print(done.stdout[-4000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
