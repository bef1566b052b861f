"""Datastore benchmark (issue 13): the directory and etcd backends side by side in one run.

    python bench/bench_datastore.py [--policies 500] [--repeat 20] [--json]

Starts its own single-member etcd on loopback (needs `etcd` on PATH; `run.sh` installs it; with
`--max-txn-ops` raised to fit one apply of every policy) and a
temporary directory datastore, then for each backend: `apply` of `--policies` GlobalNetworkPolicies
in one input (one transaction), loading every stored object (`resources()`, a fresh process's
first read), re-applying the same input (all unchanged), a policy edit (one object), and a live
toggle (`set_disabled`). Medians over `--repeat` runs for the single-object operations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.datastore import Datastore, DesiredState, open_datastore  # noqa: E402
from tests.etcd_server import etcd_server  # noqa: E402

GNP = """apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p{i}
spec:
  order: {order}
  selector: app == 'app{i}'
  ingress:
  - action: Allow
    protocol: TCP
    source: {{selector: role == 'client{i}'}}
    destination: {{ports: [80, 443, "8000:8100"]}}
  - action: Deny
"""


def ms(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1000


def measure(make: Callable[[], DesiredState], folder: Path, policies: int, repeat: int) -> dict[str, float]:
    ds = make()
    whole = folder / "all.yaml"
    whole.write_text("---\n".join(GNP.format(i=i, order=i) for i in range(policies)))
    out = {"apply_all_ms": ms(lambda: ds.apply_documents([str(whole)]))}
    out["load_all_ms"] = ms(lambda: make().resources())
    out["reapply_unchanged_ms"] = ms(lambda: ds.apply_documents([str(whole)]))
    edits, toggles = [], []
    for n in range(repeat):
        one = folder / f"edit{n}.yaml"
        one.write_text(GNP.format(i=n % policies, order=policies + n))
        edits.append(ms(lambda: ds.apply_documents([str(one)])))  # noqa: B023 - called at once
        toggles.append(ms(lambda: ds.set_disabled("gnp", f"p{n % policies}", None, n % 2 == 0)))  # noqa: B023
    out["edit_one_ms"] = statistics.median(edits)
    out["toggle_ms"] = statistics.median(toggles)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="ft-bench-ds-") as tmp:
        folder = Path(tmp)
        results["file"] = measure(lambda: Datastore(folder / "state"), folder, args.policies, args.repeat)
        # one apply of N objects is one transaction of 2N+1 operations: above etcd's default 128
        with etcd_server(extra=("--max-txn-ops", str(2 * args.policies + 16),
                                "--max-request-bytes", str(64 << 20))) as server:
            results["etcd"] = measure(lambda: open_datastore(server.url, folder / "local"), folder,
                                      args.policies, args.repeat)
    if args.json:
        print(json.dumps({"policies": args.policies, **results}, indent=2))
        return
    print(f"{args.policies} GlobalNetworkPolicies; medians of {args.repeat} for one-object operations")
    print(f"{'':22}{'file':>10}{'etcd':>10}")
    for key in results["file"]:
        print(f"{key:22}{results['file'][key]:>10}{results['etcd'][key]:>10}")


if __name__ == "__main__":
    main()
