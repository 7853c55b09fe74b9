"""Typed journal events, as ``engine.journal.get_events(workflow_id)`` returns them.

Each row of the events table becomes one of these frozen dataclasses (by its ``kind``). The
payload (a step's result, a workflow's input or result) is decoded on demand with ``.value()``
so listing a long history stays cheap.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "EVENT_TYPES",
    "JournalEvent",
    "StepCompleted",
    "StepFailed",
    "StepStarted",
    "WorkflowCancelled",
    "WorkflowCompleted",
    "WorkflowEnqueued",
    "WorkflowFailedEvent",
    "WorkflowResumed",
    "WorkflowStarted",
]


@dataclass(frozen=True)
class JournalEvent:
    kind: ClassVar[str] = "?"
    workflow_id: str
    seq: int
    step_number: int | None
    step_name: str | None
    attempt: int | None
    started_at: float | None
    ended_at: float
    info: dict = field(repr=False)
    encoding: str | None = field(repr=False)
    payload: bytes | None = field(repr=False)
    lease_token: int | None = field(repr=False)
    _decode: Any = field(repr=False, compare=False, default=None)

    @property
    def timestamp(self) -> dt.datetime:
        """When the event was written (UTC)."""
        return dt.datetime.fromtimestamp(self.ended_at, dt.UTC)

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at - self.started_at) * 1000

    def value(self) -> Any:
        """The decoded payload (a signed pickle is verified first)."""
        if self.encoding is None or self._decode is None:
            return None
        return self._decode(self)


@dataclass(frozen=True)
class WorkflowStarted(JournalEvent):
    kind: ClassVar[str] = "workflow_started"


@dataclass(frozen=True)
class WorkflowEnqueued(JournalEvent):
    """Created for a worker to run (``Client.enqueue``); not an execution."""

    kind: ClassVar[str] = "workflow_enqueued"


@dataclass(frozen=True)
class WorkflowResumed(JournalEvent):
    kind: ClassVar[str] = "workflow_resumed"

    @property
    def events_replayed(self) -> int:
        return int(self.info.get("events_replayed", 0))


@dataclass(frozen=True)
class StepCompleted(JournalEvent):
    kind: ClassVar[str] = "step_completed"

    @property
    def code_hash(self) -> str | None:
        return self.info.get("code_hash")


@dataclass(frozen=True)
class StepStarted(JournalEvent):
    """A notebook cell step began (cells journal their start: a kernel that dies mid-cell
    leaves it as the pending step)."""

    kind: ClassVar[str] = "step_started"


@dataclass(frozen=True)
class StepFailed(JournalEvent):
    kind: ClassVar[str] = "step_failed"

    @property
    def error_type(self) -> str:
        return self.info.get("error_type", "")

    @property
    def error_message(self) -> str:
        return self.info.get("message", "")

    @property
    def traceback(self) -> str:
        return self.info.get("traceback", "")


@dataclass(frozen=True)
class WorkflowCompleted(JournalEvent):
    kind: ClassVar[str] = "workflow_completed"


@dataclass(frozen=True)
class WorkflowFailedEvent(JournalEvent):
    kind: ClassVar[str] = "workflow_failed"


@dataclass(frozen=True)
class WorkflowCancelled(JournalEvent):
    kind: ClassVar[str] = "workflow_cancelled"


EVENT_TYPES: dict[str, type[JournalEvent]] = {
    cls.kind: cls for cls in (WorkflowStarted, WorkflowEnqueued, WorkflowResumed, StepStarted,
                              StepCompleted,
                              StepFailed,
                              WorkflowCompleted, WorkflowFailedEvent, WorkflowCancelled)
}


def parse_info(text: str | None) -> dict:
    return json.loads(text) if text else {}
