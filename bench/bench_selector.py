"""Selector engine benchmark: matches/s and parses/s, against a naive baseline in the same run.

    python bench/bench_selector.py [--pods 5000] [--selectors 2000] [--seed 1]

The workload is shaped like policy resolution: a few thousand pods with Kubernetes-style labels
(plus the ``projectcalico.org/*`` and ``pcns.*`` labels Calico adds) and a couple of thousand
selectors of the kinds real policies use. Every selector is matched against every pod.

Baseline: the tree-walking interpreter ``enforcer.selector.ast.evaluate``, i.e. what you get by
dispatching on node types for every node on every match. It runs on a sample of the selectors so
the benchmark stays quick; the rate is per match either way.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enforcer.selector import Selector, parse_selector  # noqa: E402
from enforcer.selector.ast import evaluate  # noqa: E402
from enforcer.selector.compiler import compile_matcher  # noqa: E402
from enforcer.selector.parser import parse  # noqa: E402

APPS = ["web", "api", "db", "cache", "worker", "frontend", "backend", "auth", "billing", "search"]
TIERS = ["frontend", "backend", "data", "transaction"]
ENVS = ["prod", "staging", "dev"]
TEAMS = ["payments", "platform", "growth", "security", "infra"]
NAMESPACES = [f"ns-{i}" for i in range(40)]

Labels = dict[str, str]


def make_pods(count: int, rng: random.Random) -> list[Labels]:
    pods = []
    for i in range(count):
        ns = rng.choice(NAMESPACES)
        app = rng.choice(APPS)
        labels = {
            "app": app,
            "app.kubernetes.io/name": app,
            "tier": rng.choice(TIERS),
            "version": f"v{rng.randint(1, 5)}",
            "pod-template-hash": f"{rng.getrandbits(40):010x}",
            "projectcalico.org/namespace": ns,
            "projectcalico.org/orchestrator": "k8s",
            "projectcalico.org/serviceaccount": f"{app}-sa",
            "pcns.projectcalico.org/name": ns,
            "pcns.env": rng.choice(ENVS),
            "pcns.team": rng.choice(TEAMS),
        }
        if rng.random() < 0.3:
            labels["canary"] = "true"
        if rng.random() < 0.2:
            labels["k8s-app"] = rng.choice(["kube-dns", "metrics-server", "coredns"])
        if i % 7 == 0:
            labels["role"] = rng.choice(["leader", "follower"])
        pods.append(labels)
    return pods


def make_selectors(count: int, rng: random.Random) -> list[str]:
    """Unique selector texts drawn from templates seen in real Calico and K8s policies."""

    def one() -> str:
        ns, app, tier = rng.choice(NAMESPACES), rng.choice(APPS), rng.choice(TIERS)
        apps = ", ".join(f"'{a}'" for a in rng.sample(APPS, rng.randint(2, 4)))
        uniq = rng.getrandbits(16)
        templates = [
            f"app == '{app}'",
            f"app == '{app}' && version != 'v{uniq % 5}'",
            f"(projectcalico.org/namespace == '{ns}') && (app == '{app}')",
            f"projectcalico.org/orchestrator == 'k8s' && app in {{{apps}}} && tier == '{tier}'",
            f"tier in {{'frontend', '{tier}'}} && !has(canary)",
            f"has(role) || app == '{app}'",
            f"(pcns.env == 'prod' && pcns.team == '{rng.choice(TEAMS)}') && (app == '{app}')",
            f"k8s-app contains 'dns' || app starts with '{app[:2]}'",
            f"pcns.projectcalico.org/name == '{ns}' && has(projectcalico.org/namespace)",
            f"app not in {{{apps}}} && tier != '{tier}'",
            f"!(app == '{app}' || tier == '{tier}') && pod-template-hash ends with '{uniq % 16:x}'",
            "all()",
        ]
        return rng.choice(templates)

    texts: dict[str, None] = {}
    while len(texts) < count:
        texts[one()] = None
        if len(texts) < count and rng.random() < 0.02:
            texts[one() + f" && version != 'x{len(texts)}'"] = None
    return list(texts)


def rate(label: str, operations: int, seconds: float) -> float:
    per_second = operations / seconds
    print(f"  {label:<46} {per_second:>14,.0f} /s   ({operations:,} in {seconds:.2f} s)")
    return per_second


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    operations = fn()
    return operations, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--selectors", type=int, default=2000)
    parser.add_argument("--baseline-selectors", type=int, default=150, help="sample size for the baseline")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    pods = make_pods(args.pods, rng)
    texts = make_selectors(args.selectors, rng)
    print(f"{len(pods):,} pods x {len(texts):,} selectors (Python {sys.version.split()[0]})")

    print("parsing")
    _, seconds = timed(lambda: len([parse(text) for text in texts]))
    rate("parse text -> AST", len(texts), seconds)
    selectors: list[Selector] = []

    def build() -> int:
        selectors.extend(Selector(parse(text)) for text in texts)
        return len(selectors)

    _, seconds = timed(build)
    parse_rate = rate("parse text -> Selector (uncached)", len(texts), seconds)
    _, seconds = timed(lambda: len([compile_matcher(s.root) for s in selectors]))
    rate("compile Selector -> matcher", len(texts), seconds)
    for text in texts:
        parse_selector(text)
    repeats = 20
    _, seconds = timed(lambda: len([parse_selector(t) for _ in range(repeats) for t in texts]))
    rate("parse_selector (cached)", repeats * len(texts), seconds)

    print("matching")
    baseline_sample = rng.sample(selectors, min(args.baseline_selectors, len(selectors)))

    def run_baseline() -> int:
        hits = 0
        for selector in baseline_sample:
            root = selector.root
            for labels in pods:
                hits += evaluate(root, labels)
        return len(baseline_sample) * len(pods)

    def run_compiled_sample() -> int:
        hits = 0
        for selector in baseline_sample:
            matches = selector.matches
            for labels in pods:
                hits += matches(labels)
        return len(baseline_sample) * len(pods)

    def run_compiled_all() -> int:
        hits = 0
        for selector in selectors:
            matches = selector.matches
            for labels in pods:
                hits += matches(labels)
        return len(selectors) * len(pods)

    for selector in selectors:  # compile outside the timed region
        selector.matches(pods[0])
    baseline_ops, baseline_seconds = timed(run_baseline)
    baseline_rate = rate("baseline: tree-walking evaluate()", baseline_ops, baseline_seconds)
    sample_ops, sample_seconds = timed(run_compiled_sample)
    sample_rate = rate("compiled Selector.matches (same sample)", sample_ops, sample_seconds)
    all_ops, all_seconds = timed(run_compiled_all)
    rate("compiled Selector.matches (all selectors)", all_ops, all_seconds)

    agree = all(s.matches(p) == evaluate(s.root, p) for s in baseline_sample[:20] for p in pods[:200])
    print(f"speed-up over baseline: {sample_rate / baseline_rate:.1f}x  (results agree: {agree})")
    print(
        f"resolving {len(pods):,} pods x {len(texts):,} selectors: {all_seconds:.2f} s matching,"
        f" {len(texts) / parse_rate:.3f} s parsing"
    )


if __name__ == "__main__":
    main()
