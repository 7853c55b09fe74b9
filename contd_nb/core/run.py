"""One execution of a workflow: step calls, replay, attempts, retries, timeouts, snapshots.

A ``WorkflowRun`` lives while an executor runs a workflow under its lease. Each step call
either replays (the journal has its completion: return the journaled result without running)
or runs for real: attempts are numbered across recoveries, each failure is journaled, retries
follow the policy, and the completion is committed (one commit) before the workflow goes on.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..sdk.config import StepConfig
from ..sdk.context import ExecutionContext, _current_step
from ..sdk.errors import (
    LeaseLost,
    NoActiveWorkflow,
    NonDeterministicReplay,
    StepInterrupted,
    StepTimeout,
    TooManyAttempts,
    UnserializableValue,
    WorkflowCancelled,
)
from . import retry
from .replay import CompletedStep, FoldedState, check_all_replayed, match_step
from .timeouts import acall_with_timeout, call_with_timeout

if TYPE_CHECKING:
    from .engine import ExecutionEngine

__all__ = ["StepDefinition", "WorkflowRun"]

log = logging.getLogger("contd_nb.core.replay")

# errors that stop the workflow at once instead of counting as a failed attempt
_FATAL = (LeaseLost, TooManyAttempts, NonDeterministicReplay, NoActiveWorkflow,
          WorkflowCancelled)


@dataclass(frozen=True)
class StepDefinition:
    fn: Any
    name: str
    config: StepConfig
    code_hash: str | None
    is_async: bool


class WorkflowRun:
    def __init__(self, engine: ExecutionEngine, workflow_id: str, workflow_name: str,
                 token: int, state: FoldedState, snapshot_interval: int) -> None:
        self.engine = engine
        self.journal = engine.journal
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        self.executor_id = engine.executor_id
        self.token = token
        self.state = state
        self.snapshot_interval = snapshot_interval
        self.position = 0
        self.next_seq = state.last_seq + 1
        self.interrupted = state.alive_executions  # earlier executions that died pending
        self.failures = list(state.pending_failures)
        self.replayed: list[str] = []
        self.ran: list[str] = []

    # -- journal writes -----------------------------------------------------------------------
    def write(self, kind: str, **fields) -> int:
        seq = self.next_seq
        t0 = time.perf_counter()
        self.journal.append(self.workflow_id, seq, kind, self.token, **fields)
        self.next_seq = seq + 1
        if self.engine.listening:
            self.engine.emit("journal_write", self.workflow_id,
                             duration_ms=(time.perf_counter() - t0) * 1000)
        return seq

    # -- step calls ---------------------------------------------------------------------------
    def _begin(self, step: StepDefinition) -> tuple[int, Any, CompletedStep | None]:
        self.position += 1
        pos = self.position
        match = match_step(self.workflow_id, self.state.steps, pos, step.name, step.code_hash)
        if match.replay:
            log.debug("step %d '%s' of %s: replaying its journaled result (completed on "
                      "attempt %d, event %d); not running it", pos, step.name,
                      self.workflow_id, match.step.attempt, match.step.seq)
            if match.code_changed:
                log.warning("step %d '%s' of %s changed since it ran; using its journaled "
                            "result (start a new workflow id to run the new code)",
                            pos, step.name, self.workflow_id)
            self.replayed.append(step.name)
            if self.engine.listening:
                self.engine.emit("step_replayed", self.workflow_id, step_name=step.name,
                                 step_number=pos)
            return pos, self._decode(match.step), match.step
        return pos, None, None

    def _decode(self, done: CompletedStep) -> Any:
        return self.journal.decode(done.encoding, done.payload, self.workflow_id, done.seq,
                                   f"the result of step '{done.name}'")

    def _first_attempt(self, step: StepDefinition, pos: int) -> int:
        """Attempt number of the next try, counting journaled failures and interrupted
        executions; raises TooManyAttempts when the policy is already exhausted."""
        policy = step.config.retry or retry.DEFAULT_POLICY
        mine = [f for f in self.failures if f.get("step_name") == step.name]
        attempt = len(mine) + self.interrupted + 1
        if attempt > policy.max_attempts:
            last: BaseException = StepInterrupted(step.name, attempt - 1)
            if not self.interrupted and mine:
                f = mine[-1]
                last = RuntimeError(f"{f.get('error_type')}: {f.get('message')}")
            raise TooManyAttempts(step.name, attempt - 1, last)
        if attempt > 1:
            log.debug("step %d '%s' of %s: attempt %d (%d failed, %d interrupted before)",
                      pos, step.name, self.workflow_id, attempt, len(mine),
                      self.interrupted)
        return attempt

    def call_step(self, step: StepDefinition, args: tuple, kwargs: dict) -> Any:
        pos, value, done = self._begin(step)
        if done is not None:
            return value
        attempt = self._first_attempt(step, pos)
        timeout = step.config.timeout_seconds
        while True:
            started = time.time()
            token = _current_step.set(self._context(step, pos, attempt))
            self._emit_start(step, pos, attempt)
            try:
                if self.engine.fault_hook is not None:
                    self.engine.fault_hook("attempt", step.name, pos, attempt)
                result = call_with_timeout(step.fn, args, kwargs, timeout, step.name)
            except BaseException as exc:  # noqa: BLE001 - journaled, then re-raised or retried
                delay = self._failed(step, pos, attempt, started, exc)
                if delay is None:
                    raise
                time.sleep(delay)
                attempt += 1
                continue
            finally:
                _current_step.reset(token)
            return self._completed(step, pos, attempt, started, result)

    async def acall_step(self, step: StepDefinition, args: tuple, kwargs: dict) -> Any:
        import asyncio

        pos, value, done = self._begin(step)
        if done is not None:
            return value
        attempt = self._first_attempt(step, pos)
        timeout = step.config.timeout_seconds
        while True:
            started = time.time()
            token = _current_step.set(self._context(step, pos, attempt))
            self._emit_start(step, pos, attempt)
            try:
                if self.engine.fault_hook is not None:
                    self.engine.fault_hook("attempt", step.name, pos, attempt)
                result = await acall_with_timeout(step.fn, args, kwargs, timeout, step.name)
            except BaseException as exc:  # noqa: BLE001
                delay = self._failed(step, pos, attempt, started, exc)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1
                continue
            finally:
                _current_step.reset(token)
            return self._completed(step, pos, attempt, started, result)

    def _context(self, step: StepDefinition, pos: int, attempt: int) -> ExecutionContext:
        return ExecutionContext(self.workflow_id, self.workflow_name, self.executor_id,
                                step.name, pos, attempt)

    def _emit_start(self, step: StepDefinition, pos: int, attempt: int) -> None:
        self.ran.append(step.name)
        if self.engine.listening:
            self.engine.emit("step_started", self.workflow_id, step_name=step.name,
                             step_number=pos, attempt=attempt)

    def _completed(self, step: StepDefinition, pos: int, attempt: int, started: float,
                   result: Any) -> Any:
        try:
            encoding, payload = self.journal.encode(result, f"the result of step '{step.name}'")
        except UnserializableValue as exc:
            self._failed(step, pos, attempt, started, exc)
            raise
        ended = time.time()
        info = {"code_hash": step.code_hash} if step.code_hash else None
        seq = self.write("step_completed", step_number=pos, step_name=step.name,
                         attempt=attempt, started_at=started, ended_at=ended, info=info,
                         encoding=encoding, payload=payload)
        self.state.steps.append(CompletedStep(pos, step.name, step.code_hash, encoding, payload,
                                              seq, attempt))
        self.state.last_seq = seq
        self.failures = []
        self.interrupted = 0
        if self.engine.listening:
            self.engine.emit("step_completed", self.workflow_id, step_name=step.name,
                             step_number=pos, attempt=attempt,
                             duration_ms=(ended - started) * 1000)
        if self.snapshot_interval and pos % self.snapshot_interval == 0:
            self.engine._write_snapshot(self)
        if self.engine.fault_hook is not None:
            self.engine.fault_hook("completed", step.name, pos, attempt)
        return result

    def _failed(self, step: StepDefinition, pos: int, attempt: int, started: float,
                exc: BaseException) -> float | None:
        """Journal a failed attempt; return the delay before the next one, or None to stop."""
        if isinstance(exc, _FATAL) or not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit: not a failure of the step; the next resume
            # counts this execution as interrupted
            return None
        policy = step.config.retry
        unserializable = isinstance(exc, UnserializableValue)
        decision = retry.decide(None if unserializable else policy, exc, attempt)
        info = {"error_type": type(exc).__name__, "message": str(exc)[:4000],
                "traceback": "".join(traceback.format_exception(exc))[-8000:],
                "will_retry": decision.retry, "delay_s": round(decision.delay, 3),
                "decision": decision.reason}
        self.write("step_failed", step_number=pos, step_name=step.name, attempt=attempt,
                   started_at=started, info=info)
        self.failures.append(info | {"attempt": attempt, "step_name": step.name})
        if self.engine.listening:
            self.engine.emit("step_failed", self.workflow_id, step_name=step.name,
                             step_number=pos, attempt=attempt,
                             error_type=type(exc).__name__,
                             duration_ms=(time.time() - started) * 1000,
                             timeout=isinstance(exc, StepTimeout), will_retry=decision.retry)
        if decision.retry:
            # the message may carry data (a URL with a token...): DEBUG only
            log.info("step '%s' of %s failed on attempt %d (%s); retrying in %.2fs",
                     step.name, self.workflow_id, attempt, type(exc).__name__, decision.delay)
            log.debug("step '%s' attempt %d error: %s", step.name, attempt, exc)
            return decision.delay
        log.debug("step '%s' of %s: not retrying (%s)", step.name, self.workflow_id,
                  decision.reason)
        if policy is not None and retry.is_retryable(policy, exc) and not unserializable:
            raise TooManyAttempts(step.name, attempt, exc) from exc
        return None

    # -- end of the workflow ------------------------------------------------------------------
    def check_complete_replay(self) -> None:
        check_all_replayed(self.workflow_id, self.state.steps, self.position)
