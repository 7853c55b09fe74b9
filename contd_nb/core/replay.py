"""Replay decisions as pure functions: fold journal events into a workflow's state, and match a
step call against the journal.

The folded state says which steps completed (and their journaled results), how many attempts
of the next step already failed, and how many executions were interrupted while it was pending
(a process that died mid-step left no failure event: each one counts as an attempt, so a step
that kills its process every time still ends in TooManyAttempts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..persistence.base import EventRecord
from ..sdk.errors import NonDeterministicReplay

__all__ = ["CompletedStep", "FoldedState", "ReplayMatch", "fold", "match_step"]


@dataclass(frozen=True, slots=True)
class CompletedStep:
    number: int
    name: str
    code_hash: str | None
    encoding: str | None
    payload: bytes | None
    seq: int
    attempt: int


@dataclass
class FoldedState:
    """What the journal says about a workflow, up to some event."""

    steps: list[CompletedStep] = field(default_factory=list)
    last_seq: int = 0
    status: str = "running"
    # executions alive since the last completion (each one that is not the caller was
    # interrupted); failures journaled for the pending step
    alive_executions: int = 0
    pending_failures: list[dict] = field(default_factory=list)
    result: tuple[str | None, bytes | None] | None = None
    error: dict | None = None

    @property
    def step_number(self) -> int:
        return self.steps[-1].number if self.steps else 0

    def to_snapshot(self) -> dict:
        return {"steps": [tuple(getattr(s, f) for f in s.__slots__) for s in self.steps],
                "last_seq": self.last_seq}

    @classmethod
    def from_snapshot(cls, data: dict) -> FoldedState:
        steps = [CompletedStep(*row) for row in data["steps"]]
        # a snapshot is written right after a completion by the execution that made it
        return cls(steps=steps, last_seq=data["last_seq"], alive_executions=1)


def fold(state: FoldedState, records: list[EventRecord]) -> FoldedState:
    """Apply events (in seq order, after state.last_seq) to the state, in place."""
    for r in records:
        kind = r.kind
        if kind == "step_completed":
            info = json.loads(r.info) if r.info else {}
            state.steps.append(CompletedStep(r.step_number, r.step_name, info.get("code_hash"),
                                             r.encoding, r.payload, r.seq, r.attempt or 1))
            state.alive_executions = 1
            state.pending_failures = []
        elif kind == "step_failed":
            info = json.loads(r.info) if r.info else {}
            state.pending_failures.append(info | {"attempt": r.attempt,
                                                  "step_name": r.step_name})
        elif kind in ("workflow_started", "workflow_resumed"):
            state.alive_executions += 1
            state.status = "running"
        elif kind == "workflow_completed":
            state.status = "completed"
            state.result = (r.encoding, r.payload)
            state.alive_executions = 0
        elif kind == "workflow_failed":
            state.status = "failed"
            state.error = json.loads(r.info) if r.info else {}
            state.alive_executions = 0
            state.pending_failures = []
        elif kind == "workflow_cancelled":
            state.status = "cancelled"
            state.alive_executions = 0
        state.last_seq = r.seq
    return state


@dataclass(frozen=True, slots=True)
class ReplayMatch:
    replay: bool                      # True: return the journaled result
    step: CompletedStep | None
    code_changed: bool = False


def match_step(workflow_id: str, steps: list[CompletedStep], position: int, name: str,
               code_hash: str | None) -> ReplayMatch:
    """Step call number ``position`` (1-based) named ``name``: replay it or run it?"""
    if position > len(steps):
        return ReplayMatch(False, None)
    journaled = steps[position - 1]
    if journaled.name != name:
        raise NonDeterministicReplay(workflow_id, position, journaled.name, name)
    changed = bool(code_hash and journaled.code_hash and code_hash != journaled.code_hash)
    return ReplayMatch(True, journaled, changed)


def check_all_replayed(workflow_id: str, steps: list[CompletedStep], calls: int) -> None:
    """A workflow that returns before calling every journaled step replayed differently."""
    if calls < len(steps):
        raise NonDeterministicReplay(workflow_id, calls + 1, steps[calls].name, None)
