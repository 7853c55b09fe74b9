"""``@workflow`` and ``@step``: make functions durable.

Both work bare (``@workflow``) or called (``@workflow()``, ``@step(StepConfig(...))``), on sync
and ``async def`` functions, and keep the function's name, signature and docstring.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..core.engine import ExecutionEngine, WorkflowDefinition
from ..core.run import StepDefinition
from .config import StepConfig, WorkflowConfig
from .context import current_run
from .errors import ConfigurationError, NoActiveWorkflow

__all__ = ["code_hash", "step", "workflow"]

F = TypeVar("F", bound=Callable[..., Any])


def code_hash(fn: Callable[..., Any]) -> str | None:
    """A digest of what a function does (bytecode, constants, names), not where it is."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    h = hashlib.blake2b(digest_size=8)

    def feed(c) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        for const in c.co_consts:
            if hasattr(const, "co_code"):
                feed(const)
            else:
                h.update(repr(const).encode())

    feed(code)
    return h.hexdigest()


def _function_path(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


@overload
def workflow(arg: F) -> F: ...
@overload
def workflow(arg: WorkflowConfig | None = None) -> Callable[[F], F]: ...


def workflow(arg=None):
    """Mark a function as a durable workflow. Calling it runs (or continues) it under a lease;
    steps it calls are journaled. ``WorkflowConfig(workflow_id=...)`` fixes its id."""
    if callable(arg) and not isinstance(arg, WorkflowConfig):
        return _make_workflow(arg, WorkflowConfig())
    if arg is not None and not isinstance(arg, WorkflowConfig):
        raise ConfigurationError(f"@workflow takes a WorkflowConfig, not {arg!r}")
    config = arg or WorkflowConfig()
    return lambda fn: _make_workflow(fn, config)


def _make_workflow(fn, config: WorkflowConfig):
    definition = WorkflowDefinition(fn, config.name or fn.__name__, _function_path(fn), config,
                                    inspect.iscoroutinefunction(fn))
    if definition.is_async:
        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            return await ExecutionEngine.get_instance().arun(definition, args, kwargs)
        wrapper = async_wrapper
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return ExecutionEngine.get_instance().run(definition, args, kwargs)
    wrapper.__contd_workflow__ = definition
    ExecutionEngine.registry[definition.function] = definition
    return wrapper


@overload
def step(arg: F) -> F: ...
@overload
def step(arg: StepConfig | None = None) -> Callable[[F], F]: ...


def step(arg=None):
    """Mark a function as a durable step: inside a workflow its completion is journaled, and
    on resume its journaled result is returned without running it again."""
    if callable(arg) and not isinstance(arg, StepConfig):
        return _make_step(arg, StepConfig())
    if arg is not None and not isinstance(arg, StepConfig):
        raise ConfigurationError(f"@step takes a StepConfig, not {arg!r}")
    config = arg or StepConfig()
    return lambda fn: _make_step(fn, config)


def _no_run(name: str) -> NoActiveWorkflow:
    return NoActiveWorkflow(f"step '{name}' was called outside a workflow")


def _make_step(fn, config: StepConfig):
    definition = StepDefinition(fn, config.name or fn.__name__, config, code_hash(fn),
                                inspect.iscoroutinefunction(fn))
    if definition.is_async:
        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            run = current_run()
            if run is None:
                raise _no_run(definition.name)
            return await run.acall_step(definition, args, kwargs)
        wrapper = async_wrapper
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            run = current_run()
            if run is None:
                raise _no_run(definition.name)
            return run.call_step(definition, args, kwargs)
    wrapper.__contd_step__ = definition
    return wrapper
