"""Progress bars for long what-if runs, drawn with `rich` on stderr (rich, not Textual: headless).

The engine reports through the small `engine.Progress` protocol (a phase with an optional total,
then advances); this adapter turns each phase into a rich task. Phases without a total show a
spinner and the elapsed time.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any


class RichProgress:
    """`with RichProgress() as progress: compare(..., progress=progress)`."""

    def __init__(self, transient: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(stderr=True), transient=transient,
        )
        self._task: Any = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish()
        self._progress.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total or 1, total=task.total or 1)

    def phase(self, description: str, total: int | None = None) -> None:
        self._finish()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None and n:
            self._progress.advance(self._task, n)
