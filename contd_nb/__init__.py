"""contd_nb: durable execution for Jupyter.

A notebook cell or a Python function becomes a durable step: its completion is journaled
(DuckDB by default), and after a crash the work resumes where it was, re-running only what had
not completed.

    from contd_nb import workflow, step

    @step()
    def fetch(i): ...

    @workflow()
    def pipeline(n):
        return [fetch(i) for i in range(n)]
"""

from __future__ import annotations

import os

from .core.engine import ExecutionEngine, RestoredState
from .core.events import JournalEvent
from .core.leases import Lease
from .sdk.client import Client, WorkflowHandle, WorkflowStatus
from .sdk.config import RetryPolicy, StepConfig, WorkflowConfig
from .sdk.context import ExecutionContext
from .sdk.decorators import step, workflow
from .sdk.errors import (
    ConfigurationError,
    ContdError,
    InvalidWorkflowId,
    JournalBusy,
    JournalCorrupted,
    JournalIntegrityError,
    JournalSchemaTooNew,
    JournalUnavailable,
    LeaseLost,
    NoActiveWorkflow,
    NonDeterministicReplay,
    PayloadSignatureError,
    StepInterrupted,
    StepTimeout,
    TooManyAttempts,
    UnserializableValue,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowLocked,
    WorkflowNotFinished,
    WorkflowNotFound,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ConfigurationError",
    "ContdError",
    "ExecutionContext",
    "ExecutionEngine",
    "InvalidWorkflowId",
    "JournalBusy",
    "JournalCorrupted",
    "JournalEvent",
    "JournalIntegrityError",
    "JournalSchemaTooNew",
    "JournalUnavailable",
    "Lease",
    "LeaseLost",
    "NoActiveWorkflow",
    "NonDeterministicReplay",
    "PayloadSignatureError",
    "RestoredState",
    "RetryPolicy",
    "StepConfig",
    "StepInterrupted",
    "StepTimeout",
    "TooManyAttempts",
    "UnserializableValue",
    "WorkflowCancelled",
    "WorkflowConfig",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowLocked",
    "WorkflowNotFinished",
    "WorkflowNotFound",
    "WorkflowStatus",
    "__version__",
    "configure",
    "load_ipython_extension",
    "step",
    "unload_ipython_extension",
    "workflow",
]


def load_ipython_extension(ip) -> None:
    """``%load_ext contd_nb``: register the magics (%contd_run, %%contd_step, ...)."""
    from .notebook import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip) -> None:
    from .notebook import unload_ipython_extension as unload

    unload(ip)


def configure(journal: str | os.PathLike | None = None, **engine_options) -> ExecutionEngine:
    """Make a new default engine (on ``journal``, else the environment's) and return it.

    Options: ``lease_ttl`` (seconds, default 30), ``snapshot_interval`` (steps, default 100;
    0 disables), ``executor_id``.
    """
    engine = ExecutionEngine(journal, **engine_options)
    previous = ExecutionEngine.set_instance(engine)
    if previous is not None and previous is not engine:
        previous.close()
    return engine
