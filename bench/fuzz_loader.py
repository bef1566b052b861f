"""Loader fuzzing, long mode: mutated real policy files through `flowtui check`, in-process.

    python bench/fuzz_loader.py [--seconds 600] [--seed 1] [--save DIR]
    python bench/fuzz_loader.py --replay SEED:FILE      # one case again, with its output

The CI test (`tests/test_loader_fuzz.py`) runs the same cases for ~15 s. Every case must exit 0
(valid) or 2 (FILE:LINE problems): any other exit, an exception or the loader's internal-error
safety net is a failure, printed with the SEED:FILE that reproduces it (and its bytes written to
--save DIR). Prints cases/s, exit codes, mutations used and the slowest case.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.loader_fuzz import Tally, cases, corpus, make_case, run_check  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to run (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="first case's seed (default 1)")
    parser.add_argument("--save", type=Path, help="write the bytes of failing cases here")
    parser.add_argument("--replay", metavar="SEED:FILE", help="run one case and print what check said")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowtui-fuzz-") as tmp:
        work = Path(tmp)
        if args.replay:
            seed, _, file = args.replay.partition(":")
            case = make_case(int(seed), Path(file))
            outcome = run_check(case, work)
            print(f"mutations {case.mutations}: exit {outcome.exit_code}; {outcome.failure or 'ok'}")
            return 0 if outcome.failure is None else 1
        files = corpus()
        tally = Tally()
        slowest = (0.0, "")
        start = time.monotonic()
        for case in cases(args.seed, files):
            t = time.monotonic()
            tally.add(case, run_check(case, work))
            took = time.monotonic() - t
            if took > slowest[0]:
                slowest = (took, f"{case.key} {case.mutations}")
            if t - start > args.seconds:
                break
        elapsed = time.monotonic() - start
    rate = tally.cases / elapsed
    print(f"corpus: {len(files)} files; {tally.cases:,} cases in {elapsed:.1f} s = {rate:,.0f} cases/s")
    print("exit codes: " + ", ".join(f"{code}: {n:,}" for code, n in sorted(tally.exits.items())))
    print("mutations:  " + ", ".join(f"{name} {n:,}" for name, n in sorted(tally.by_mutation.items())))
    print(f"slowest:    {slowest[0] * 1e3:.0f} ms ({slowest[1]})")
    print(f"failures:   {len(tally.failures)}")
    for case, failure in tally.failures[:50]:
        print(f"  {case.key} {case.mutations}: {failure}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{case.seed}-{case.source.name}").write_bytes(case.data)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
