"""Workflows for the crash and lease tests (tests/test_crash_recovery.py,
tests/test_leases_processes.py).

Both the pytest process and the child processes import this module (tests/ is on the children's
PYTHONPATH), so the journaled function path ``crash_workflows:<name>`` resolves everywhere and
``Client().resume(workflow_id)`` finds the function in a fresh process.

Every step appends one line to a side-effect file, flushed and fsynced before the step returns,
so the parent can count how often each step really ran, even when the child was SIGKILLed.
Children talk to the parent with ``emit``: one line ``@@ {json}`` per event on stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from contd_nb import (
    Client,
    ContdError,
    ExecutionContext,
    ExecutionEngine,
    RetryPolicy,
    StepConfig,
    WorkflowConfig,
    step,
    workflow,
)

TORTURE_STEPS = 20
MARK = "@@ "


# -- talking to the parent ---------------------------------------------------------------------
def emit(event: str, **fields) -> None:
    sys.stdout.write(MARK + json.dumps({"event": event, "pid": os.getpid(), **fields},
                                       default=str) + "\n")
    sys.stdout.flush()


def record(side: str, line: str) -> None:
    """Append one line to the side-effect file, durably, before the step returns."""
    with open(side, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_side(side: str | os.PathLike) -> list[str]:
    p = Path(side)
    if not p.exists():
        return []
    return p.read_text(encoding="utf-8").splitlines()


def error_fields(exc: BaseException) -> dict:
    """A structured description of an error, for JSON."""
    out = {"type": type(exc).__name__, "message": str(exc)}
    for attr in ("workflow_id", "owner_id", "expires_at", "host", "pid", "token",
                 "current_token", "current_owner", "attempts", "step_name", "holder_pid",
                 "holder_state"):
        if hasattr(exc, attr):
            value = getattr(exc, attr)
            key = "owner_pid" if attr == "pid" else attr  # "pid" is the emitter's own
            out[key] = value.isoformat() if hasattr(value, "isoformat") else value
    last = getattr(exc, "last_error", None)
    if last is not None:
        out["last_error_type"] = type(last).__name__
        out["last_error_message"] = str(last)
    return out


def current_token() -> int | None:
    ctx = ExecutionContext.current()
    return ExecutionEngine.get_instance().lease_manager.token_of(ctx.workflow_id)


# -- the 20-step torture workflow --------------------------------------------------------------
def mix(n: int, prev: int) -> int:
    """Step n's value from its input and the previous result (deterministic)."""
    return (prev * 1_000_003 + n * n * 7919 + 17) % 2_147_483_647


def expected_torture(steps: int = TORTURE_STEPS) -> dict:
    """The result of an uninterrupted run, analytically."""
    acc, results = 0, []
    for n in range(1, steps + 1):
        acc = mix(n, acc)
        results.append(acc)
    return {"final": acc, "results": results}


@step()
def torture_step(n: int, prev: int, side: str) -> int:
    time.sleep(random.uniform(0.001, 0.006))
    value = mix(n, prev)
    record(side, f"step-{n}")
    time.sleep(random.uniform(0.0, 0.002))
    return value


@workflow(WorkflowConfig(snapshot_interval=5))
def torture(side: str, steps: int = TORTURE_STEPS) -> dict:
    acc, results = 0, []
    for n in range(1, steps + 1):
        acc = torture_step(n, acc, side)
        results.append(acc)
    return {"final": acc, "results": results}


# -- a step that kills its own process on every attempt ----------------------------------------
@step()
def plain_step(n: int, side: str) -> int:
    record(side, f"step-{n}")
    return n * 10


@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01)))
def suicide_step(n: int, side: str) -> int:
    record(side, f"crash-{n}-attempt-{ExecutionContext.current().attempt}")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)  # never reached
    return -1


@workflow()
def suicidal(side: str, crash_at: int, steps: int = 4) -> list[int]:
    out = []
    for n in range(1, steps + 1):
        out.append(suicide_step(n, side) if n == crash_at else plain_step(n, side))
    return out


# -- lease workflows ---------------------------------------------------------------------------
def wait_for_file(path: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {limit}s")
        time.sleep(0.01)


@step()
def gated_step(n: int, side: str, gate: str) -> int:
    """Announces itself, then waits until the parent creates ``gate``."""
    ctx = ExecutionContext.current()
    emit("in-step", step=n, attempt=ctx.attempt, token=current_token(),
         executor=ctx.executor_id)
    wait_for_file(gate)
    record(side, f"step-{n}")
    return n * 100


@workflow()
def gated(side: str, gate: str, gate_at: int = 2, steps: int = 3) -> list[int]:
    out = []
    for n in range(1, steps + 1):
        out.append(gated_step(n, side, gate) if n == gate_at else plain_step(n, side))
    return out


@step()
def long_step(n: int, side: str, hold: float) -> int:
    """Sleeps ``hold`` seconds on its first attempt (the executor that gets frozen)."""
    ctx = ExecutionContext.current()
    emit("in-step", step=n, attempt=ctx.attempt, token=current_token(),
         executor=ctx.executor_id)
    time.sleep(hold if ctx.attempt == 1 else 0.05)
    record(side, f"step-{n}")
    return n * 1000


@workflow()
def fenced(side: str, hold: float, long_at: int = 3, steps: int = 5) -> list[int]:
    out = []
    for n in range(1, steps + 1):
        out.append(long_step(n, side, hold) if n == long_at else plain_step(n, side))
    return out


@step()
def fast_step(n: int, prev: int, side: str) -> int:
    record(side, f"step-{n}")
    return mix(n, prev)


@workflow()
def fast_loop(side: str, steps: int) -> int:
    acc = 0
    for n in range(1, steps + 1):
        acc = fast_step(n, acc, side)
    return acc


# -- child entry point -------------------------------------------------------------------------
FUNCTIONS = {"torture": torture, "suicidal": suicidal, "gated": gated, "fenced": fenced,
             "fast_loop": fast_loop}


def child_main(how: str, workflow_id: str, name: str | None = None, args: tuple = (),
               lease_ttl: float | None = None, listen: bool = False,
               die_after_final_write: int | None = None) -> None:
    """Run in a child process: ``how`` is "run" (call the workflow with this id),
    "resume" (Client().resume) or "resume-or-run" (resume, or run if the journal has no
    record of it yet). Emits ready / done / error events.

    ``die_after_final_write=N``: SIGKILL this process right after the first journal write
    that follows the completion of step N (for a workflow of N steps: the workflow_completed
    event, before the workflow's status row is updated)."""
    import contd_nb

    if lease_ttl is not None:
        contd_nb.configure(lease_ttl=lease_ttl)
    engine = ExecutionEngine.get_instance()
    kinds: list[str] = []
    if listen:
        engine.add_listener(lambda ev: kinds.append(ev.kind))
    if die_after_final_write is not None:
        after_last = []

        def killer(ev) -> None:
            if ev.kind == "step_completed" and \
                    ev.fields.get("step_number") == die_after_final_write:
                after_last.append(True)
            elif ev.kind == "journal_write" and after_last:
                os.kill(os.getpid(), signal.SIGKILL)

        engine.add_listener(killer)
    emit("ready", executor=engine.executor_id)
    client = Client()
    try:
        mode = how
        if how == "resume-or-run":
            mode = "resume" if engine.store.get_workflow(workflow_id) is not None else "run"
        if mode == "resume":
            result = client.resume(workflow_id)
        else:
            result = client.run(FUNCTIONS[name], *args, workflow_id=workflow_id)
    except ContdError as exc:
        emit("error", mode=mode, kinds=kinds, **error_fields(exc))
        engine.close()
        sys.exit(3)
    emit("done", mode=mode, result=result, kinds=kinds)
    engine.close()


def child_code(how: str, workflow_id: str, name: str | None = None, args: tuple = (),
               **options) -> str:
    """Code for a child process that calls ``child_main`` (options: its keyword args)."""
    return ("import crash_workflows as cw\n"
            f"cw.child_main({how!r}, {workflow_id!r}, {name!r}, {tuple(args)!r}, "
            f"**{options!r})\n")


# -- parent side -------------------------------------------------------------------------------
class Child:
    """A child python process on a journal: stdout events in a queue, stderr in a file (so a
    chatty child can never block on a full pipe)."""

    def __init__(self, code: str, journal: str | os.PathLike, workdir: str | os.PathLike,
                 **extra_env: str) -> None:
        import itertools
        import queue
        import subprocess
        import threading

        from conftest import child_env

        Child._counter = getattr(Child, "_counter", itertools.count())
        self.stderr_path = Path(workdir) / f"child-{next(Child._counter)}.stderr"
        self._stderr = open(self.stderr_path, "w+", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", code],
                                     env=child_env(journal, **extra_env),
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.pid = self.proc.pid
        self.events: list[dict] = []
        self.other_lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.startswith(MARK):
                ev = json.loads(line[len(MARK):])
                self.events.append(ev)
                self._queue.put(ev)
            else:
                self.other_lines.append(line)
        self._queue.put(None)

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8")

    def describe(self) -> str:
        return (f"child pid {self.pid} rc={self.proc.poll()} events={self.events}\n"
                f"stdout: {''.join(self.other_lines)[-2000:]}\nstderr: {self.stderr()[-4000:]}")

    def expect(self, event: str, timeout: float = 30.0) -> dict:
        """The next event named ``event`` (others are skipped; they stay in .events)."""
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} event within {timeout}s; {self.describe()}")
            try:
                ev = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if ev is None:
                self._queue.put(None)
                raise AssertionError(f"child ended before {event!r}; {self.describe()}")
            if ev["event"] == event:
                return ev

    def last(self, event: str) -> dict | None:
        found = [e for e in self.events if e["event"] == event]
        return found[-1] if found else None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the end (kill it if it overstays) and close its files."""
        try:
            return self.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        self._stderr.close()
