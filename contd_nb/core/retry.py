"""Retry decisions as pure functions of a RetryPolicy, an attempt number and an error."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..sdk.config import RetryPolicy

__all__ = ["DEFAULT_POLICY", "RetryDecision", "backoff_delay", "decide", "is_retryable"]

DEFAULT_POLICY = RetryPolicy()


def backoff_delay(policy: RetryPolicy, failed_attempt: int, unit_random: float) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) failed.

    ``unit_random`` in [0, 1) spreads the delay by +/- backoff_jitter/2.
    """
    if policy.backoff_base == 0 or policy.backoff_initial == 0:
        return 0.0
    exponent = max(failed_attempt - 1, 0)
    try:
        raw = policy.backoff_initial * policy.backoff_base ** exponent
    except OverflowError:
        raw = policy.backoff_max
    delay = min(raw, policy.backoff_max)
    spread = delay * policy.backoff_jitter
    return max(0.0, delay - spread / 2 + unit_random * spread)


def is_retryable(policy: RetryPolicy, error: BaseException) -> bool:
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: never retried
        return False
    if policy.non_retryable_exceptions and isinstance(error, policy.non_retryable_exceptions):
        return False
    return isinstance(error, policy.retryable_exceptions)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float
    reason: str


def decide(policy: RetryPolicy | None, error: BaseException, attempt: int,
           unit_random: float | None = None) -> RetryDecision:
    """What to do after ``attempt`` failed with ``error``."""
    if policy is None:
        return RetryDecision(False, 0.0, "no retry policy")
    if not is_retryable(policy, error):
        return RetryDecision(False, 0.0, f"{type(error).__name__} is not retryable")
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, f"{attempt} of {policy.max_attempts} attempts used")
    r = random.random() if unit_random is None else unit_random
    delay = backoff_delay(policy, attempt, r)
    return RetryDecision(True, delay, f"attempt {attempt} of {policy.max_attempts} failed")
