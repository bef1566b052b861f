"""What-if for the editor: validate edited YAML (problems with their line), then replay the
recorded flows of the data source under the current and the edited policy set with the what-if
engine (`flowtui.whatif`: `compare` + `build_report`). Headless."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from enforcer.loader import LoadError, Problem, load_text
from enforcer.model import ResourceSet
from flowtui.tui.sources import DataSource

EDIT_FILE = "<edit>.yaml"


@dataclass
class WhatIfOutcome:
    report: Any = None  # flowtui.whatif.report.WhatIfReport
    problems: list[Problem] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    edits: list[str] = field(default_factory=list)
    recorded_pods: int = 0  # pods taken from the flows' recorded endpoints (imported Hubble/Calico flows)

    @property
    def ok(self) -> bool:
        return self.report is not None and not self.problems and self.error is None


def load_frame(source: DataSource) -> pl.DataFrame:
    """The source's recorded flows as a what-if flow frame (one row per flow and time bucket), with
    the endpoints they recorded (namespace, name, labels), as `flowtui whatif --db` reads them."""
    from flowtui.whatif.frames import normalize
    from flowtui.whatif.storeread import flows_query

    with source.connect() as con:
        cols = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE flows)").fetchall()}
        ep_cols = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE endpoints)").fetchall()}
        sql, params = flows_query(cols, None, endpoints={"id", "type", "namespace", "name", "labels"} <= ep_cols)
        table = con.sql(sql, params=params).to_arrow_table()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return normalize(frame)


def validate(text: str) -> tuple[ResourceSet | None, list[Problem]]:
    """The edited objects, or the problems (1-based lines of `text`)."""
    try:
        return load_text(text, EDIT_FILE), []
    except LoadError as err:
        return None, list(err.problems)


def run_whatif(frame: pl.DataFrame, base: ResourceSet, text: str, *, limit: int = 50) -> WhatIfOutcome:
    from flowtui.whatif.edits import EditError, apply_edits, describe_changes
    from flowtui.whatif.engine import compare
    from flowtui.whatif.recorded import with_recorded_pods
    from flowtui.whatif.report import build_report

    start = time.perf_counter()
    edits, problems = validate(text)
    if problems or edits is None:
        return WhatIfOutcome(problems=problems, seconds=time.perf_counter() - start)
    # imported flows name their pods: decide them as those pods when the current set does not know them
    base, recorded = with_recorded_pods(base, frame)
    try:
        edited = apply_edits(base, edits)
    except EditError as exc:
        return WhatIfOutcome(error=str(exc), seconds=time.perf_counter() - start)
    described = describe_changes(base, edited)
    cmp = compare(frame, base, edited)
    report = build_report(cmp, limit=limit, examples=1, edits=described)
    return WhatIfOutcome(report=report, seconds=time.perf_counter() - start, edits=described,
                         recorded_pods=recorded)


def problem_lines(problems: list[Problem]) -> dict[int, str]:
    """0-based line -> message, for the problems in the edited text."""
    out: dict[int, str] = {}
    for p in problems:
        if p.file == EDIT_FILE and p.line > 0:
            msg = ": ".join(x for x in (p.path, p.message) if x)
            out[p.line - 1] = (out[p.line - 1] + "; " + msg) if p.line - 1 in out else msg
    return out
