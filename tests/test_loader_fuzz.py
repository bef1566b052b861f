"""Mutated real policy files through `flowtui check`, in-process: exit 0 or 2 only, never a traceback
(nor the loader's internal-error safety net). Bounded in time for CI; the long run is
`python bench/fuzz_loader.py --seconds 600`."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.loader_fuzz import MUTATIONS, Case, Tally, cases, corpus, make_case, run_check

SECONDS = float(os.environ.get("FLOWTUI_FUZZ_SECONDS", "15"))
MIN_CASES = 300


def test_corpus_is_the_published_material_and_the_fixtures() -> None:
    files = corpus()
    assert any("external/material" in str(f) for f in files), "the published material is missing"
    assert any("fixtures" in str(f) for f in files)
    assert len(files) >= 80


def test_cases_are_reproducible_and_mutate() -> None:
    source = corpus()[0]
    first, again = make_case(7, source), make_case(7, source)
    assert (first.mutations, first.data) == (again.mutations, again.data)
    assert first.data != source.read_bytes() or first.mutations == ("swap",)


def test_mutated_files_give_exit_0_or_2_never_a_traceback(tmp_path: Path) -> None:
    files = corpus()
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    for case in cases(int(os.environ.get("FLOWTUI_FUZZ_SEED", "1")), files):
        tally.add(case, run_check(case, tmp_path))
        if (time.monotonic() > deadline and tally.cases >= MIN_CASES) or len(tally.failures) >= 5:
            break
    report = [f"{case.key} {case.mutations}: {failure}" for case, failure in tally.failures]
    assert not tally.failures, "\n".join(report)
    assert set(tally.exits) <= {0, 2}
    assert tally.exits.get(2, 0) > tally.cases // 2, tally.exits  # the mutations do break files
    assert set(tally.by_mutation) == set(MUTATIONS)  # every kind of mutation was exercised


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_alone_on_a_real_policy(tmp_path: Path, mutation: str) -> None:
    source = next(f for f in corpus() if f.suffix == ".yaml" and b"GlobalNetworkPolicy" in f.read_bytes())
    for seed in range(20):
        data = MUTATIONS[mutation](source.read_bytes(), random.Random(seed))
        outcome = run_check(Case(seed, source, (mutation,), data), tmp_path)
        assert outcome.failure is None, (mutation, seed, outcome.failure)
