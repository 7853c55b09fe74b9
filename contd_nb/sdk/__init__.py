"""What user code touches: decorators, configuration, context, errors, client, testing.

``errors``, ``config`` and ``context`` are leaf modules (every layer may import them); the
rest builds on ``contd_nb.core`` and is loaded on first use, so that ``contd_nb.core`` can
import the leaf modules without a cycle.
"""

from __future__ import annotations

from . import errors
from .config import RetryPolicy, StepConfig, WorkflowConfig
from .context import ExecutionContext

__all__ = ["Client", "ExecutionContext", "RetryPolicy", "StepConfig",  # noqa: F822
           "WorkflowConfig", "errors", "step", "workflow"]


def __getattr__(name: str):
    if name in ("step", "workflow"):
        from . import decorators

        return getattr(decorators, name)
    if name == "Client":
        from .client import Client

        return Client
    if name in errors.__all__:
        return getattr(errors, name)
    raise AttributeError(f"module 'contd_nb.sdk' has no attribute {name!r}")
