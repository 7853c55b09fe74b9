"""What user code touches: decorators, configuration, context, errors, client, testing.

``errors``, ``config`` and ``context`` are leaf modules (every layer may import them); the
rest builds on ``contd_nb.core`` and is loaded on first use.
"""

from __future__ import annotations

from .config import RetryPolicy, StepConfig, WorkflowConfig
from .context import ExecutionContext
from .errors import *  # noqa: F403
from .errors import __all__ as _error_names

__all__ = sorted(["Client", "ExecutionContext", "RetryPolicy", "StepConfig", "WorkflowConfig",
                  "step", "workflow", *_error_names])


def __getattr__(name: str):
    if name in ("step", "workflow"):
        from . import decorators

        return getattr(decorators, name)
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'contd_nb.sdk' has no attribute {name!r}")
