"""The execution context: one ContextVar that says which workflow and step is running.

``ExecutionContext.current()`` is what user code calls to learn its workflow id, step and
attempt, and to get the step's idempotency key for external APIs. The engine sets it; this
module is a leaf shared by every layer.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from .errors import NoActiveWorkflow

__all__ = ["ExecutionContext", "current_run", "set_notebook_run"]

# The running workflow (an engine-internal run object), or None outside workflows.
_current_run: contextvars.ContextVar[Any] = contextvars.ContextVar("contd_nb_run", default=None)
# The step being executed inside that run, or None between steps.
_current_step: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar(
    "contd_nb_step", default=None)


# A notebook run (%contd_run) spans many cells, each of which may run in its own asyncio task
# (a copied context), so it is process-wide; a running @workflow's ContextVar wins over it.
_notebook_run: Any = None


def set_notebook_run(run: Any) -> None:
    global _notebook_run
    _notebook_run = run


def current_run() -> Any:
    run = _current_run.get()
    return run if run is not None else _notebook_run


@dataclass(frozen=True)
class ExecutionContext:
    """Where the calling code runs: workflow, step and attempt.

    ``idempotency_key`` is stable for a step of a workflow: the same on every attempt and every
    recovery, so an external API that deduplicates on it performs the step's effect once.
    ``attempt_key`` adds the attempt number, for APIs that want one key per try.
    """

    workflow_id: str
    workflow_name: str
    executor_id: str
    step_name: str | None = None
    step_number: int | None = None
    attempt: int | None = None

    @property
    def idempotency_key(self) -> str:
        if self.step_number is None:
            return self.workflow_id
        return f"{self.workflow_id}/{self.step_number}/{self.step_name}"

    @property
    def attempt_key(self) -> str:
        return f"{self.idempotency_key}#{self.attempt or 0}"

    @classmethod
    def current(cls) -> ExecutionContext:
        step_ctx = _current_step.get()
        if step_ctx is not None:
            return step_ctx
        run = current_run()
        if run is None:
            raise NoActiveWorkflow("ExecutionContext.current() was called outside a workflow")
        return cls(workflow_id=run.workflow_id, workflow_name=run.workflow_name,
                   executor_id=run.executor_id)
