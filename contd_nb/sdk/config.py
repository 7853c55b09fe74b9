"""Configuration objects: RetryPolicy, StepConfig, WorkflowConfig.

Plain frozen dataclasses, validated on construction (a bad value raises ConfigurationError
saying which field and what is allowed). This module is a leaf shared by every layer.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ConfigurationError

__all__ = ["RetryPolicy", "StepConfig", "WorkflowConfig", "to_seconds"]


def _check(cond: bool, field_name: str, allowed: str, value) -> None:
    if not cond:
        raise ConfigurationError(f"{field_name}={value!r} is not valid: {allowed}")


def _as_type_tuple(name: str, value) -> tuple[type, ...]:
    if value is None:
        return ()
    if isinstance(value, type):
        value = (value,)
    try:
        types = tuple(value)
    except TypeError:
        raise ConfigurationError(
            f"{name}={value!r} is not valid: give a list of exception classes") from None
    for t in types:
        _check(isinstance(t, type) and issubclass(t, BaseException), name,
               "every item must be an exception class such as ConnectionError", t)
    return types


def to_seconds(value, field_name: str = "timeout") -> float | None:
    """A timedelta or a number of seconds as float seconds (None stays None)."""
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(
            f"{field_name}={value!r} is not valid: give a datetime.timedelta or seconds")
    _check(math.isfinite(seconds) and seconds > 0, field_name, "must be more than zero",
           value)
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is tried again.

    The delay after failed attempt ``n`` is ``backoff_initial * backoff_base ** (n - 1)``
    seconds, capped at ``backoff_max``, then spread by ``backoff_jitter`` (0.5 means anywhere
    from 75% to 125% of it). Only exceptions that are instances of ``retryable_exceptions``
    (default: any Exception) and not of ``non_retryable_exceptions`` are retried.
    """

    max_attempts: int = 3
    backoff_base: float = 2.0
    backoff_max: float = 60.0
    backoff_jitter: float = 0.5
    retryable_exceptions: Iterable[type[BaseException]] | None = None
    non_retryable_exceptions: Iterable[type[BaseException]] | None = None
    backoff_initial: float = 1.0

    def __post_init__(self) -> None:
        _check(isinstance(self.max_attempts, int) and not isinstance(self.max_attempts, bool)
               and 1 <= self.max_attempts <= 10_000, "max_attempts",
               "an integer from 1 to 10000", self.max_attempts)
        for name in ("backoff_base", "backoff_max", "backoff_initial"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                   and math.isfinite(value) and value >= 0, name,
                   "a finite number of seconds >= 0", value)
        _check(self.backoff_base >= 1 or self.backoff_base == 0, "backoff_base",
               "0 (no wait) or a growth factor >= 1", self.backoff_base)
        _check(isinstance(self.backoff_jitter, (int, float)) and 0 <= self.backoff_jitter <= 1,
               "backoff_jitter", "a fraction from 0 to 1", self.backoff_jitter)
        retryable = _as_type_tuple("retryable_exceptions", self.retryable_exceptions)
        object.__setattr__(self, "retryable_exceptions", retryable or (Exception,))
        object.__setattr__(self, "non_retryable_exceptions",
                           _as_type_tuple("non_retryable_exceptions",
                                          self.non_retryable_exceptions))


@dataclass(frozen=True)
class StepConfig:
    """Per-step settings: ``timeout`` (timedelta or seconds), ``retry`` (RetryPolicy),
    ``name`` (defaults to the function's name)."""

    timeout: _dt.timedelta | float | None = None
    retry: RetryPolicy | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        to_seconds(self.timeout, "timeout")
        _check(self.retry is None or isinstance(self.retry, RetryPolicy), "retry",
               "a RetryPolicy(...)", self.retry)
        _check(self.name is None or (isinstance(self.name, str) and self.name.strip() != ""),
               "name", "a non-empty string", self.name)

    @property
    def timeout_seconds(self) -> float | None:
        return to_seconds(self.timeout, "timeout")


@dataclass(frozen=True)
class WorkflowConfig:
    """Per-workflow settings. ``workflow_id`` fixes the id (an idempotency key: running the
    workflow again with it continues the same run); ``snapshot_interval`` overrides the
    engine's (0 disables snapshots)."""

    workflow_id: str | None = None
    snapshot_interval: int | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.snapshot_interval is None
               or (isinstance(self.snapshot_interval, int) and self.snapshot_interval >= 0),
               "snapshot_interval", "an integer >= 0 (0 disables snapshots)",
               self.snapshot_interval)
        _check(self.workflow_id is None or isinstance(self.workflow_id, str), "workflow_id",
               "a string", self.workflow_id)
