"""What workers report back to the UI: one message per result, named for what happened."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from textual.message import Message

from flowtui.tui.sources import SourceStatus


class FlowsArrived(Message):
    """A batch of stream rows (a poll's worth: ~0.25 s of events), or a reload after a filter change."""

    def __init__(self, rows: pa.Table, *, reset: bool = False, generation: int = 0, reduced: bool = False) -> None:
        super().__init__()
        self.rows = rows
        self.reset = reset
        self.generation = generation
        self.reduced = reduced  # rows already reduced per flow (the flows view's first load)


class StatusUpdated(Message):
    """The source's status; a newer one replaces an older one still queued."""

    def __init__(self, status: SourceStatus) -> None:
        super().__init__()
        self.status = status

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusUpdated)


class ConversationsLoaded(Message):
    """`complete`: False when the rows came from the rollups and their services, logged flows and
    policies follow in `ConversationDetailsLoaded`."""

    def __init__(self, rows: list[dict[str, Any]], generation: int = 0, complete: bool = True) -> None:
        super().__init__()
        self.rows = rows
        self.generation = generation
        self.complete = complete


class ConversationDetailsLoaded(Message):
    def __init__(self, details: dict[tuple[str, str], tuple[str, int, str]], generation: int = 0) -> None:
        super().__init__()
        self.details = details
        self.generation = generation


class PoliciesLoaded(Message):
    def __init__(self, rows: list[Any], note: str = "") -> None:
        super().__init__()
        self.rows = rows
        self.note = note


class PolicyToggled(Message):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


class PolicyApplied(Message):
    def __init__(self, result: Any, staged: bool) -> None:
        super().__init__()
        self.result = result
        self.staged = staged


class DecisionExplained(Message):
    def __init__(self, explanation: Any) -> None:
        super().__init__()
        self.explanation = explanation


class WhatIfComputed(Message):
    def __init__(self, result: Any, generation: int = 0) -> None:
        super().__init__()
        self.result = result
        self.generation = generation


class QueryFinished(Message):
    def __init__(self, table: pa.Table | None, seconds: float, error: str | None = None) -> None:
        super().__init__()
        self.table = table
        self.seconds = seconds
        self.error = error


class ExportFinished(Message):
    def __init__(self, path: str, rows: int, error: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.rows = rows
        self.error = error
