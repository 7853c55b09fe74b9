"""Every error contd_nb raises on purpose.

All of them derive from :class:`ContdError`, carry structured attributes (so code can react to
``err.owner_id`` instead of parsing text), keep the troubleshooting guide's wording at the start
of their message, and pickle (they cross process boundaries in tests and workers).

This module is a leaf: it imports nothing from contd_nb, so every layer may use it.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = [
    "ConfigurationError",
    "ContdError",
    "InvalidWorkflowId",
    "JournalBusy",
    "JournalCorrupted",
    "JournalIntegrityError",
    "JournalSchemaTooNew",
    "JournalUnavailable",
    "LeaseLost",
    "NoActiveWorkflow",
    "NonDeterministicReplay",
    "PayloadSignatureError",
    "StepInterrupted",
    "StepTimeout",
    "TooManyAttempts",
    "UnserializableValue",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowLocked",
    "WorkflowNotFinished",
    "WorkflowNotFound",
]


def _rebuild(cls: type, args: tuple, state: dict) -> ContdError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ContdError(Exception):
    """Base class of contd_nb's errors. ``hint`` says what to do about it."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        if hint:
            self.hint = hint
        full = f"{message}\n  hint: {self.hint}" if self.hint else message
        super().__init__(full)

    def __reduce__(self):  # keep structured attributes across pickling
        state = {}
        for key, value in self.__dict__.items():
            if isinstance(value, BaseException):
                value = _picklable_exception(value)
            state[key] = value
        return (_rebuild, (type(self), self.args, state))


def _picklable_exception(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class ConfigurationError(ContdError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class InvalidWorkflowId(ContdError, ValueError):
    """A workflow id that cannot be used as a durable key."""

    def __init__(self, workflow_id: Any, reason: str) -> None:
        self.workflow_id = workflow_id
        self.reason = reason
        shown = repr(workflow_id)
        if len(shown) > 60:
            shown = shown[:57] + "...'"
        super().__init__(
            f"Workflow id {shown} is not valid: {reason}",
            hint="use 1-200 characters: letters, digits and . _ - : @ + = (for example 'wf-123')",
        )


class NoActiveWorkflow(ContdError, RuntimeError):
    """A step or ExecutionContext.current() was used outside a running workflow."""

    hint = (
        "call steps from inside a @workflow function (or a notebook run started with "
        "%contd_run NAME); in tests use contd_nb.sdk.testing.ContdTestCase.run_workflow"
    )

    def __init__(self, what: str = "") -> None:
        self.what = what
        detail = f" ({what})" if what else ""
        super().__init__(f"No workflow context found{detail}")


class WorkflowLocked(ContdError):
    """Another live executor holds the workflow's lease."""

    def __init__(
        self,
        workflow_id: str,
        owner_id: str | None = None,
        expires_at: _dt.datetime | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.owner_id = owner_id
        self.expires_at = expires_at
        self.host = host
        self.pid = pid
        where = f" (host {host}, pid {pid})" if host else ""
        when = f", lease expires at {expires_at.isoformat()}" if expires_at else ""
        super().__init__(
            f"Workflow {workflow_id} is locked by another executor: owner {owner_id}{where}{when}",
            hint=(
                "wait for the lease to expire and resume, or, if that executor is gone, "
                "ExecutionEngine.get_instance().lease_manager.force_release(workflow_id)"
            ),
        )


class LeaseLost(ContdError):
    """This executor's lease was taken over (fenced out): its writes are refused."""

    def __init__(self, workflow_id: str, token: int | None, current_token: int | None,
                 current_owner: str | None = None) -> None:
        self.workflow_id = workflow_id
        self.token = token
        self.current_token = current_token
        self.current_owner = current_owner
        owner = f" by {current_owner}" if current_owner else ""
        super().__init__(
            f"Workflow {workflow_id}: this executor lost its lease (token {token}); it is now "
            f"held{owner} with token {current_token}. The write was refused and this executor "
            "stopped; nothing it wrote after losing the lease was kept",
            hint="another executor resumed the workflow; check it with `contd status` before "
            "resuming here",
        )


class WorkflowCancelled(ContdError):
    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"Workflow {workflow_id} was cancelled",
                         hint="start it under a new workflow id to run it again")


class WorkflowNotFound(ContdError, LookupError):
    def __init__(self, workflow_id: str, journal: str = "") -> None:
        self.workflow_id = workflow_id
        self.journal = journal
        where = f" in journal {journal}" if journal else ""
        super().__init__(f"Workflow {workflow_id} was not found{where}",
                         hint="check the id (`contd list`) and that CONTD_JOURNAL points at "
                         "the journal it ran on")


class WorkflowNotFinished(ContdError):
    def __init__(self, workflow_id: str, status: str) -> None:
        self.workflow_id = workflow_id
        self.status = status
        super().__init__(f"Workflow {workflow_id} has no result yet (status: {status})",
                         hint="resume it with client.resume(workflow_id)")


class WorkflowFailed(ContdError):
    """The journaled outcome of a workflow is a failure."""

    def __init__(self, workflow_id: str, error_type: str, error_message: str) -> None:
        self.workflow_id = workflow_id
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"Workflow {workflow_id} failed: {error_type}: {error_message}",
                         hint="fix the cause, then client.resume(workflow_id) runs it again "
                         "from the failed step")


class StepTimeout(ContdError, TimeoutError):
    def __init__(self, step_name: str, timeout_seconds: float) -> None:
        self.step_name = step_name
        self.timeout_seconds = float(timeout_seconds)
        super().__init__(
            f"Step '{step_name}' timed out after {self.timeout_seconds:.1f}s",
            hint="raise StepConfig(timeout=...) or add a RetryPolicy for transient slowness",
        )


class StepInterrupted(ContdError):
    """Stands for an attempt whose process died (crash, SIGKILL) before it finished."""

    def __init__(self, step_name: str, attempt: int) -> None:
        self.step_name = step_name
        self.attempt = attempt
        super().__init__(
            f"Step '{step_name}' attempt {attempt} was interrupted: its process stopped "
            "before the step finished (crash, kill or kernel restart)"
        )


class TooManyAttempts(ContdError):
    def __init__(self, step_name: str, attempts: int, last_error: BaseException | None) -> None:
        self.step_name = step_name
        self.attempts = attempts
        self.last_error = last_error
        last = f"; last error: {type(last_error).__name__}: {last_error}" if last_error else ""
        super().__init__(
            f"Step '{step_name}' failed after {attempts} attempts{last}",
            hint="inspect e.last_error; fix the cause or raise RetryPolicy(max_attempts=...)",
        )


class NonDeterministicReplay(ContdError):
    """The replayed order of steps differs from the journal."""

    def __init__(self, workflow_id: str, step_number: int, journaled: str | None,
                 called: str | None) -> None:
        self.workflow_id = workflow_id
        self.step_number = step_number
        self.journaled = journaled
        self.called = called
        if called is None:
            what = (f"the journal has step {step_number} '{journaled}' but the workflow "
                    "returned without calling it")
        else:
            what = (f"at step {step_number} the journal has '{journaled}' but the code "
                    f"called '{called}'")
        super().__init__(
            f"Workflow {workflow_id} replayed differently from its journal: {what}. "
            "contd_nb will not mix two histories",
            hint="restore the code that produced the journal, or start the changed workflow "
            "under a new workflow id",
        )


class UnserializableValue(ContdError, TypeError):
    def __init__(self, what: str, type_name: str, reason: str) -> None:
        self.what = what
        self.type_name = type_name
        self.reason = reason
        super().__init__(
            f"{what} of type {type_name} cannot be journaled: {reason}",
            hint="return plain data (or a DataFrame/array, or a picklable object); keep "
            "connections, locks and generators out of step results",
        )


class JournalBusy(ContdError):
    """The journal file stayed held by another process longer than the wait limit."""

    def __init__(self, path: str, holder_pid: int | None, waited_seconds: float,
                 holder_state: str = "") -> None:
        self.path = path
        self.holder_pid = holder_pid
        self.waited_seconds = waited_seconds
        self.holder_state = holder_state
        who = f"process {holder_pid}" if holder_pid else "another process"
        state = f" ({holder_state})" if holder_state else ""
        super().__init__(
            f"Journal {path} is busy: {who}{state} held it for the whole "
            f"{waited_seconds:.1f}s wait",
            hint="wait for that process, raise CONTD_BUSY_TIMEOUT, or use PostgreSQL "
            "(DATABASE_URL) for many concurrent processes",
        )


class JournalSchemaTooNew(ContdError):
    def __init__(self, path: str, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"Journal {path} has schema version {found}, newer than this contd_nb "
            f"understands ({supported})",
            hint="upgrade contd_nb (pip install -U contd_nb); the journal was not changed",
        )


class JournalUnavailable(ContdError):
    """The journal's database server cannot be reached (refused, unknown host, bad login,
    timed out). Nothing was written."""

    def __init__(self, journal: str, detail: str, host: str | None = None,
                 port: int | str | None = None, database: str | None = None) -> None:
        self.journal = journal
        self.detail = detail
        self.host = host
        self.port = port
        self.database = database
        where = f"PostgreSQL at {host or 'localhost'}:{port or 5432}"
        if database:
            where += f" (database {database})"
        super().__init__(
            f"Journal {journal} is unavailable: cannot connect to {where}: {detail}",
            hint="check that the server is running and reachable from this machine, and the "
            "URL in CONTD_JOURNAL / DATABASE_URL (host, port, database, user, password)",
        )


class JournalIntegrityError(ContdError):
    """Base of the errors that say journal data is damaged or not ours."""


class JournalCorrupted(JournalIntegrityError):
    def __init__(self, path: str, detail: str, workflow_id: str | None = None,
                 seq: int | None = None) -> None:
        self.path = path
        self.detail = detail
        self.workflow_id = workflow_id
        self.seq = seq
        where = f" (workflow {workflow_id}, event {seq})" if workflow_id is not None else ""
        super().__init__(
            f"Journal {path} is corrupted{where}: {detail}",
            hint="restore the journal file from a backup; contd_nb did not write to it",
        )


class PayloadSignatureError(JournalIntegrityError):
    def __init__(self, workflow_id: str | None, seq: int | None, what: str) -> None:
        self.workflow_id = workflow_id
        self.seq = seq
        self.what = what
        super().__init__(
            f"Refusing to unpickle {what} of workflow {workflow_id} (event {seq}): its "
            "signature does not match this journal's key, so it was not written by contd_nb "
            "with this key",
            hint="if the journal was copied from another machine, copy its key file "
            "(journal.key beside it) or set CONTD_SIGNING_KEY",
        )
