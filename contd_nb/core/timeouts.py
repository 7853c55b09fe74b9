"""Step timeouts for sync and async functions.

How a timed-out *sync* step is stopped:
- in the main thread (scripts, notebook cells), a ``SIGALRM`` timer interrupts it: StepTimeout
  is raised inside the step at the next Python instruction, which also cuts short a blocking
  ``time.sleep`` or socket wait (they return on the signal). The previous SIGALRM handler and
  timer are put back afterwards.
- in any other thread, a watchdog raises StepTimeout in that thread asynchronously
  (``PyThreadState_SetAsyncExc``): it takes effect at the next Python instruction, so a step
  blocked inside one long C call stops when that call returns.
Async steps are cancelled by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..sdk.errors import StepTimeout

__all__ = ["acall_with_timeout", "call_with_timeout", "interrupt_after"]


class _Expired(BaseException):
    """Raised inside the step by the timer; a BaseException so user code's ``except
    Exception`` does not swallow it."""


def call_with_timeout(fn: Callable[..., Any], args: tuple, kwargs: dict, seconds: float | None,
                      step_name: str) -> Any:
    if not seconds:
        return fn(*args, **kwargs)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(fn, args, kwargs, seconds, step_name)
    return _with_watchdog(fn, args, kwargs, seconds, step_name)


def _with_alarm(fn, args, kwargs, seconds, step_name):
    def on_alarm(signum, frame):
        raise _Expired()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    prev_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args, **kwargs)
    except _Expired:
        raise StepTimeout(step_name, seconds) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if prev_delay:  # an outer timer was running: give it back what is left (roughly)
            signal.setitimer(signal.ITIMER_REAL, max(prev_delay - seconds, 0.001))


def _with_watchdog(fn, args, kwargs, seconds, step_name):
    target = threading.get_ident()
    done = threading.Event()
    fired = threading.Event()

    def watchdog():
        if not done.wait(seconds):
            fired.set()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                       ctypes.py_object(_Expired))

    timer = threading.Thread(target=watchdog, name=f"contd-timeout-{step_name}", daemon=True)
    timer.start()
    try:
        return fn(*args, **kwargs)
    except _Expired:
        raise StepTimeout(step_name, seconds) from None
    finally:
        done.set()
        if fired.is_set():  # the async exception may still be pending: absorb it here
            try:
                timer.join()
            except _Expired:
                pass


async def acall_with_timeout(coro_fn: Callable[..., Awaitable[Any]], args: tuple,
                             kwargs: dict, seconds: float | None, step_name: str) -> Any:
    if not seconds:
        return await coro_fn(*args, **kwargs)
    try:
        return await asyncio.wait_for(coro_fn(*args, **kwargs), timeout=seconds)
    except TimeoutError:
        raise StepTimeout(step_name, seconds) from None


@contextlib.contextmanager
def interrupt_after(seconds: float | None, step_name: str):
    """In the main thread, raise StepTimeout inside whatever runs in the block once
    ``seconds`` passed (used for notebook cells, where IPython shows the error as usual)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise StepTimeout(step_name, seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
