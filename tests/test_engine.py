"""Engine behaviour through the public API, on a real DuckDB journal file (``engine`` fixture)
and, for a few, on the in-memory store (``memory_engine``).

Replay, retries, timeouts (sync in the main thread and in other threads, async), decorators,
ExecutionContext, idempotent starts, the Client, snapshots and restores, ContdTestCase, value
round-trips and listener events. A "crash" here is a BaseException raised inside a step (the
engine treats it like a killed run: no failure journaled, the workflow stays resumable); real
process kills are in the crash-recovery tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import json
import signal
import threading
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from conftest import run_child

from contd_nb import (
    Client,
    ExecutionContext,
    ExecutionEngine,
    NoActiveWorkflow,
    RetryPolicy,
    StepConfig,
    StepTimeout,
    TooManyAttempts,
    WorkflowCancelled,
    WorkflowConfig,
    WorkflowFailed,
    WorkflowNotFinished,
    WorkflowNotFound,
    step,
    workflow,
)
from contd_nb.core.events import StepCompleted, StepFailed, WorkflowResumed
from contd_nb.sdk import testing as contd_testing

FAST = dict(backoff_initial=0.01, backoff_jitter=0)


class Crash(BaseException):
    """Stands for the process dying inside a step (not a step failure)."""


def kinds(engine, wid) -> list[str]:
    return [e.kind for e in engine.journal.get_events(wid)]


def assert_seqs_contiguous(engine, wid) -> None:
    seqs = [e.seq for e in engine.journal.get_events(wid)]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


# -- replay ---------------------------------------------------------------------------------


def _replay_scenario(engine, wid):
    calls = {"a": 0, "b": 0, "c": 0}
    crash = {"on": True}

    @step()
    def a(x):
        calls["a"] += 1
        return {"x": x, "run": calls["a"]}

    @step()
    def b(v):
        calls["b"] += 1
        return v["x"] * 10 + calls["b"]

    @step()
    def c(v):
        calls["c"] += 1
        if crash["on"]:
            raise Crash()
        return v + 1

    @workflow(WorkflowConfig(workflow_id=wid))
    def pipeline(x):
        r = a(x)
        s = b(r)
        return [r, s, c(s)]

    with pytest.raises(Crash):
        pipeline(3)
    assert calls == {"a": 1, "b": 1, "c": 1}
    crash["on"] = False
    # a and b return their journaled results (run counters say 1), without running again
    assert pipeline(3) == [{"x": 3, "run": 1}, 31, 32]
    assert calls == {"a": 1, "b": 1, "c": 2}
    assert kinds(engine, wid) == ["workflow_started", "step_completed", "step_completed",
                                  "workflow_resumed", "step_completed", "workflow_completed"]
    assert_seqs_contiguous(engine, wid)


def test_replay_returns_journaled_results_without_running(engine):
    _replay_scenario(engine, "wf-replay")


def test_replay_returns_journaled_results_without_running_memory(memory_engine):
    _replay_scenario(memory_engine, "wf-replay")


def test_replay_in_a_different_order_raises_non_deterministic(engine):
    from contd_nb import NonDeterministicReplay

    order = {"first": "fetch", "crash": True}

    @step()
    def fetch():
        return 1

    @step()
    def parse():
        return 2

    @step()
    def stop():
        if order["crash"]:
            raise Crash()

    @workflow(WorkflowConfig(workflow_id="wf-nondet"))
    def wf():
        if order["first"] == "fetch":
            fetch()
        else:
            parse()
        stop()

    with pytest.raises(Crash):
        wf()
    order.update(first="parse", crash=False)
    with pytest.raises(NonDeterministicReplay) as err:
        wf()
    assert "'fetch'" in str(err.value) and "'parse'" in str(err.value)
    assert Client().status("wf-nondet").status == "failed"


# -- retries --------------------------------------------------------------------------------


def _retry_scenario(engine):
    attempts = []

    @step(StepConfig(retry=RetryPolicy(max_attempts=3, retryable_exceptions=[ConnectionError],
                                       **FAST)))
    def flaky():
        attempts.append(ExecutionContext.current().attempt)
        if len(attempts) < 3:
            raise ConnectionError(f"upstream down #{len(attempts)}")
        return "ok"

    @workflow()
    def wf():
        return flaky()

    assert Client().run(wf, workflow_id="wf-retry") == "ok"
    assert attempts == [1, 2, 3]
    events = engine.journal.get_events("wf-retry")
    assert [e.kind for e in events] == ["workflow_started", "step_failed", "step_failed",
                                        "step_completed", "workflow_completed"]
    failures = [e for e in events if isinstance(e, StepFailed)]
    assert [(f.attempt, f.error_type, f.error_message, f.step_name, f.step_number)
            for f in failures] == [(1, "ConnectionError", "upstream down #1", "flaky", 1),
                                   (2, "ConnectionError", "upstream down #2", "flaky", 1)]
    assert [f.info["will_retry"] for f in failures] == [True, True]
    assert "ConnectionError: upstream down #1" in failures[0].traceback
    done = [e for e in events if isinstance(e, StepCompleted)]
    assert [(d.attempt, d.value()) for d in done] == [(3, "ok")]


def test_retries_journal_failed_attempts_then_succeed(engine):
    _retry_scenario(engine)


def test_retries_journal_failed_attempts_then_succeed_memory(memory_engine):
    _retry_scenario(memory_engine)


def test_too_many_attempts_after_max_attempts(engine):
    raised = []

    @step(StepConfig(retry=RetryPolicy(max_attempts=3, **FAST)))
    def process():
        e = ValueError(f"bad record #{len(raised) + 1}")
        raised.append(e)
        raise e

    @workflow()
    def wf():
        return process()

    with pytest.raises(TooManyAttempts) as err:
        Client().run(wf, workflow_id="wf-tma")
    e = err.value
    assert len(raised) == 3
    assert e.last_error is raised[-1]
    assert str(e.last_error) == "bad record #3"
    assert (e.step_name, e.attempts) == ("process", 3)
    assert str(e).startswith("Step 'process' failed after 3 attempts")
    assert "ValueError: bad record #3" in str(e)
    events = engine.journal.get_events("wf-tma")
    assert [ev.kind for ev in events] == ["workflow_started"] + ["step_failed"] * 3 + \
        ["workflow_failed"]
    assert [(ev.attempt, ev.info["will_retry"]) for ev in events[1:4]] == \
        [(1, True), (2, True), (3, False)]
    with pytest.raises(WorkflowFailed) as failed:
        Client().result("wf-tma")
    assert failed.value.error_type == "TooManyAttempts"
    assert "Step 'process' failed after 3 attempts" in failed.value.error_message
    assert Client().status("wf-tma").status == "failed"


def test_failed_workflow_resumed_gets_fresh_attempts(engine):
    attempts = []
    broken = {"on": True}

    @step()
    def first():
        return 1

    @step(StepConfig(retry=RetryPolicy(max_attempts=2, **FAST)))
    def process():
        attempts.append(ExecutionContext.current().attempt)
        if broken["on"]:
            raise ValueError("still broken")
        return 2

    @workflow()
    def wf():
        return first() + process()

    with pytest.raises(TooManyAttempts):
        Client().run(wf, workflow_id="wf-refail")
    broken["on"] = False
    assert Client().resume("wf-refail") == 3
    assert attempts == [1, 2, 1]
    assert Client().status("wf-refail").status == "completed"
    assert_seqs_contiguous(engine, "wf-refail")


def test_non_retryable_exception_propagates_unchanged(engine):
    raised = []

    @step(StepConfig(retry=RetryPolicy(max_attempts=5, retryable_exceptions=[ConnectionError],
                                       **FAST)))
    def parse():
        raised.append(ValueError("not a number: 'x'"))
        raise raised[-1]

    @step(StepConfig(retry=RetryPolicy(max_attempts=5, non_retryable_exceptions=[KeyError],
                                       **FAST)))
    def lookup():
        raised.append(KeyError("missing"))
        raise raised[-1]

    @workflow()
    def wf(which):
        return parse() if which == "parse" else lookup()

    with pytest.raises(ValueError) as err:
        Client().run(wf, "parse", workflow_id="wf-nr1")
    assert err.value is raised[0] and type(err.value) is ValueError
    with pytest.raises(KeyError) as err2:
        Client().run(wf, "lookup", workflow_id="wf-nr2")
    assert err2.value is raised[1]
    assert len(raised) == 2  # one attempt each
    failed = [e for e in engine.journal.get_events("wf-nr1") if isinstance(e, StepFailed)]
    assert [(f.attempt, f.info["will_retry"], f.info["decision"]) for f in failed] == \
        [(1, False, "ValueError is not retryable")]


def test_no_retry_policy_raises_the_original_exception_after_one_attempt(engine):
    raised = []

    @step()
    def once():
        raised.append(RuntimeError("boom"))
        raise raised[-1]

    @workflow()
    def wf():
        return once()

    with pytest.raises(RuntimeError) as err:
        Client().run(wf, workflow_id="wf-noretry")
    assert err.value is raised[0] and len(raised) == 1
    failed = [e for e in engine.journal.get_events("wf-noretry") if isinstance(e, StepFailed)]
    assert [(f.attempt, f.error_type, f.error_message, f.info["decision"]) for f in failed] == \
        [(1, "RuntimeError", "boom", "no retry policy")]
    st = Client().status("wf-noretry")
    assert (st.status, st.error, st.steps_completed) == ("failed", "RuntimeError: boom", 0)


def test_keyboard_interrupt_leaves_the_workflow_resumable(engine):
    stop = {"on": True}

    @step()
    def one():
        return 1

    @step()
    def two():
        if stop["on"]:
            raise KeyboardInterrupt
        return 2

    @workflow()
    def wf():
        return one() + two()

    with pytest.raises(KeyboardInterrupt):
        Client().run(wf, workflow_id="wf-kbi")
    assert Client().status("wf-kbi").status == "interrupted"
    assert "step_failed" not in kinds(engine, "wf-kbi")
    stop["on"] = False
    assert Client().resume("wf-kbi") == 3


# -- timeouts -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sync_step_timeout_in_the_main_thread(engine):
    assert threading.current_thread() is threading.main_thread()
    reached = []

    @step(StepConfig(timeout=timedelta(seconds=0.3)))
    def fetch_data():
        reached.append("start")
        time.sleep(5)
        reached.append("end")
        return 1

    @workflow()
    def wf():
        return fetch_data()

    handler_before = signal.getsignal(signal.SIGALRM)
    timer_before = signal.getitimer(signal.ITIMER_REAL)[0]
    with pytest.raises(StepTimeout) as err:
        Client().run(wf, workflow_id="wf-to-main")
    assert reached == ["start"]
    assert str(err.value).startswith("Step 'fetch_data' timed out after 0.3s")
    assert (err.value.step_name, err.value.timeout_seconds) == ("fetch_data", 0.3)
    assert isinstance(err.value, TimeoutError)
    # the previous SIGALRM handler (pytest-timeout's) and its timer are given back
    assert signal.getsignal(signal.SIGALRM) == handler_before
    assert (signal.getitimer(signal.ITIMER_REAL)[0] > 0) == (timer_before > 0)
    failed = [e for e in engine.journal.get_events("wf-to-main") if isinstance(e, StepFailed)]
    assert [(f.error_type, f.attempt) for f in failed] == [("StepTimeout", 1)]


@pytest.mark.timeout(60)
def test_sync_step_timeout_in_another_thread_stops_a_busy_loop(engine):
    progress = {"loops": 0, "finished": False}

    @step(StepConfig(timeout=timedelta(seconds=0.3)))
    def crunch():
        deadline = time.monotonic() + 15  # safety: the test fails instead of spinning forever
        n = 0
        while time.monotonic() < deadline:
            n += 1
            progress["loops"] = n
        progress["finished"] = True
        return n

    @workflow()
    def wf():
        return crunch()

    handle = Client().start(wf, workflow_id="wf-to-thread")
    with pytest.raises(StepTimeout) as err:
        handle.result(timeout=30)
    assert handle.done()
    assert progress["finished"] is False and progress["loops"] > 0
    assert str(err.value).startswith("Step 'crunch' timed out after 0.3s")
    assert Client().status("wf-to-thread").status == "failed"


@pytest.mark.timeout(60)
def test_async_step_timeout(engine):
    reached = []

    @step(StepConfig(timeout=timedelta(seconds=0.3)))
    async def fetch_data():
        reached.append("start")
        await asyncio.sleep(5)
        reached.append("end")

    @workflow()
    async def wf():
        return await fetch_data()

    with pytest.raises(StepTimeout) as err:
        asyncio.run(wf())
    assert reached == ["start"]
    assert str(err.value).startswith("Step 'fetch_data' timed out after 0.3s")


@pytest.mark.timeout(60)
def test_timeout_is_retried_per_policy_then_too_many_attempts(engine):
    runs = []

    @step(StepConfig(timeout=0.2, retry=RetryPolicy(max_attempts=2, **FAST)))
    def slow():
        runs.append(1)
        time.sleep(5)

    @workflow()
    def wf():
        return slow()

    with pytest.raises(TooManyAttempts) as err:
        Client().run(wf, workflow_id="wf-to-retry")
    assert len(runs) == 2
    assert isinstance(err.value.last_error, StepTimeout)
    assert str(err.value).startswith("Step 'slow' failed after 2 attempts")
    failed = [e for e in engine.journal.get_events("wf-to-retry") if isinstance(e, StepFailed)]
    assert [(f.attempt, f.error_type) for f in failed] == [(1, "StepTimeout"), (2, "StepTimeout")]


@pytest.mark.timeout(60)
def test_timeout_then_fast_retry_succeeds_sync_and_async(engine):
    runs = {"sync": 0, "async": 0}

    @step(StepConfig(timeout=0.2, retry=RetryPolicy(max_attempts=3, **FAST)))
    def sometimes_slow():
        runs["sync"] += 1
        if runs["sync"] == 1:
            time.sleep(5)
        return "sync-ok"

    @step(StepConfig(timeout=0.2, retry=RetryPolicy(max_attempts=3, **FAST)))
    async def asometimes_slow():
        runs["async"] += 1
        if runs["async"] == 1:
            await asyncio.sleep(5)
        return "async-ok"

    @workflow()
    async def wf():
        return [sometimes_slow(), await asometimes_slow()]

    assert asyncio.run(Client().engine.arun(wf.__contd_workflow__, (), {}, "wf-to-ok")) == \
        ["sync-ok", "async-ok"]
    assert runs == {"sync": 2, "async": 2}
    done = [e for e in engine.journal.get_events("wf-to-ok") if isinstance(e, StepCompleted)]
    assert [(d.step_name, d.attempt) for d in done] == \
        [("sometimes_slow", 2), ("asometimes_slow", 2)]


# -- async workflows ------------------------------------------------------------------------


def test_async_workflow_with_async_steps_replays(engine):
    calls = {"a": 0, "b": 0}
    crash = {"on": True}

    @step()
    async def fetch(i):
        calls["a"] += 1
        await asyncio.sleep(0)
        return i * 2

    @step()
    async def store(vals):
        calls["b"] += 1
        if crash["on"]:
            raise Crash()
        return sum(vals)

    @workflow(WorkflowConfig(workflow_id="wf-async"))
    async def wf(n):
        vals = [await fetch(i) for i in range(n)]
        return await store(vals)

    assert inspect.iscoroutinefunction(wf)
    with pytest.raises(Crash):
        asyncio.run(wf(4))
    crash["on"] = False
    assert asyncio.run(wf(4)) == 12
    assert calls == {"a": 4, "b": 2}
    assert Client().result("wf-async") == 12
    # Client.run drives an async workflow too (idempotent: journaled result)
    assert Client().run(wf, 4, workflow_id="wf-async") == 12
    assert calls == {"a": 4, "b": 2}


# -- decorators -----------------------------------------------------------------------------


def test_decorators_keep_name_doc_and_signature():
    def plain(a: int, b: str = "x", *rest, flag: bool = False) -> list:
        """Plain docstring."""
        return [a, b]

    async def aplain(a: int, *, k: float = 1.0) -> float:
        """Async docstring."""
        return a * k

    for deco in (workflow, workflow(), workflow(WorkflowConfig(name="n")), step, step(),
                 step(StepConfig(name="n"))):
        for fn in (plain, aplain):
            wrapped = deco(fn)
            assert wrapped.__name__ == fn.__name__
            assert wrapped.__doc__ == fn.__doc__
            assert inspect.signature(wrapped) == inspect.signature(fn)
            assert wrapped.__wrapped__ is fn
            assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(fn)


def test_bare_decorators_work(engine):
    @step
    def inc(x):
        return x + 1

    @workflow
    def wf(x):
        return inc(inc(x))

    assert wf(1) == 3
    wid = engine.store.list_workflows()[-1].workflow_id
    assert wid.startswith("wf-")
    assert [e.step_name for e in engine.journal.get_events(wid)
            if isinstance(e, StepCompleted)] == ["inc", "inc"]


def test_step_outside_a_workflow_raises_no_active_workflow(engine):
    @step()
    def lonely():
        return 1

    @step()
    async def alonely():
        return 1

    with pytest.raises(NoActiveWorkflow) as err:
        lonely()
    assert str(err.value).startswith("No workflow context found")
    assert "lonely" in str(err.value)
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(NoActiveWorkflow, match="^No workflow context found"):
        asyncio.run(alonely())
    assert engine.store.list_workflows() == []


# -- ExecutionContext -----------------------------------------------------------------------


def test_execution_context_inside_and_outside(engine):
    seen: list[ExecutionContext] = []
    between: list[ExecutionContext] = []
    crash = {"on": True}

    @step()
    def prepare():
        seen.append(ExecutionContext.current())
        return 1

    @step(StepConfig(retry=RetryPolicy(max_attempts=5, **FAST)))
    def charge(amount):
        ctx = ExecutionContext.current()
        seen.append(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("payment API flaked")
        if crash["on"]:
            raise Crash()
        return amount

    @workflow(WorkflowConfig(name="billing"))
    def wf(amount):
        prepare()
        between.append(ExecutionContext.current())
        return charge(amount)

    with pytest.raises(NoActiveWorkflow, match="^No workflow context found"):
        ExecutionContext.current()
    with pytest.raises(Crash):
        Client().run(wf, 10, workflow_id="wf-ctx")
    crash["on"] = False
    assert Client().run(wf, 10, workflow_id="wf-ctx") == 10
    with pytest.raises(NoActiveWorkflow):
        ExecutionContext.current()

    first, *charges = seen
    assert (first.workflow_id, first.workflow_name, first.step_name, first.step_number,
            first.attempt) == ("wf-ctx", "billing", "prepare", 1, 1)
    # attempt 1 failed, attempt 2 crashed the "process", attempt 3 after the recovery
    assert [(c.step_name, c.step_number, c.attempt) for c in charges] == \
        [("charge", 2, 1), ("charge", 2, 2), ("charge", 2, 3)]
    assert {c.idempotency_key for c in charges} == {"wf-ctx/2/charge"}
    assert len({c.attempt_key for c in charges}) == 3
    assert first.idempotency_key != charges[0].idempotency_key
    assert charges[0].executor_id == engine.executor_id
    assert [(b.workflow_id, b.step_name, b.idempotency_key) for b in between] == \
        [("wf-ctx", None, "wf-ctx"), ("wf-ctx", None, "wf-ctx")]


# -- idempotent start -----------------------------------------------------------------------


def test_same_workflow_id_after_completion_returns_journaled_result(engine):
    calls = []

    @step()
    def work(x):
        calls.append(x)
        return x * 100

    @workflow(WorkflowConfig(workflow_id="wf-once"))
    def wf(x):
        return {"value": work(x)}

    assert wf(1) == {"value": 100}
    n_events = len(engine.journal.get_events("wf-once"))
    assert wf(2) == {"value": 100}  # same id: the journaled result, not a new run
    assert Client().run(wf, 3) == {"value": 100}
    assert calls == [1]
    assert len(engine.journal.get_events("wf-once")) == n_events


def test_same_workflow_id_unfinished_resumes(engine):
    calls = []
    crash = {"on": True}

    @step()
    def work(i):
        calls.append(i)
        if i == 2 and crash["on"]:
            raise Crash()
        return i

    @workflow()
    def wf(n):
        return [work(i) for i in range(n)]

    with pytest.raises(Crash):
        Client().run(wf, 4, workflow_id="wf-again")
    crash["on"] = False
    assert Client().run(wf, 4, workflow_id="wf-again") == [0, 1, 2, 3]
    assert calls == [0, 1, 2, 2, 3]
    assert_seqs_contiguous(engine, "wf-again")


# -- Client ---------------------------------------------------------------------------------


def test_client_run_start_and_result(engine):
    @step()
    def add(a, b):
        return a + b

    @workflow()
    def wf(a, b=0):
        return add(a, b)

    client = Client()
    assert client.engine is engine
    assert client.run(wf, 2, b=3, workflow_id="wf-run") == 5
    handle = client.start(wf, 4, b=5, workflow_id="wf-start")
    assert handle.workflow_id == "wf-start"
    assert handle.result(timeout=30) == 9
    assert handle.done()
    assert handle.status().status == "completed"
    auto = client.start(wf, 1)
    assert auto.result(timeout=30) == 1
    assert auto.workflow_id.startswith("wf-") and len(auto.workflow_id) == 19
    assert client.result("wf-run") == 5
    assert client.result(auto.workflow_id) == 1
    with pytest.raises(WorkflowNotFound, match="Workflow wf-nope was not found"):
        client.result("wf-nope")


def test_client_status_result_and_list_by_status(engine):
    crash = {"on": True}
    gate = threading.Event()
    waiting = threading.Event()

    @step()
    def s(i):
        return i

    @step()
    def crashy():
        if crash["on"]:
            raise Crash()

    @step()
    def bad():
        raise ValueError("bad input")

    @step()
    def wait():
        waiting.set()
        assert gate.wait(30)

    @workflow()
    def ok():
        return [s(1), s(2), s(3)]

    @workflow()
    def interrupted():
        s(1)
        crashy()

    @workflow()
    def failing():
        s(1)
        bad()

    @workflow()
    def running():
        s(1)
        wait()
        return "done"

    client = Client()
    client.run(ok, workflow_id="wf-ok")
    with pytest.raises(Crash):
        client.run(interrupted, workflow_id="wf-int")
    with pytest.raises(ValueError):
        client.run(failing, workflow_id="wf-fail")
    handle = client.start(running, workflow_id="wf-run")
    assert waiting.wait(30)

    st = {w: client.status(w) for w in ("wf-ok", "wf-int", "wf-fail", "wf-run")}
    assert {w: (x.status, x.steps_completed) for w, x in st.items()} == {
        "wf-ok": ("completed", 3), "wf-int": ("interrupted", 1),
        "wf-fail": ("failed", 1), "wf-run": ("running", 1)}
    assert st["wf-run"].lease_owner == engine.executor_id
    assert st["wf-run"].lease_expires_at > dt.datetime.now(dt.UTC)
    assert st["wf-ok"].lease_owner is None
    assert st["wf-fail"].error == "ValueError: bad input"
    assert st["wf-ok"].name == "ok"
    assert st["wf-ok"].created_at.tzinfo is not None

    with pytest.raises(WorkflowNotFinished) as nf:
        client.result("wf-int")
    assert nf.value.status == "interrupted"
    assert "Workflow wf-int has no result yet (status: interrupted)" in str(nf.value)
    with pytest.raises(WorkflowNotFinished, match=r"status: running"):
        client.result("wf-run")
    with pytest.raises(WorkflowFailed) as wf_err:
        client.result("wf-fail")
    assert (wf_err.value.error_type, wf_err.value.error_message) == ("ValueError", "bad input")
    assert str(wf_err.value).startswith("Workflow wf-fail failed: ValueError: bad input")

    assert sorted(x.workflow_id for x in client.list()) == \
        ["wf-fail", "wf-int", "wf-ok", "wf-run"]
    by = {s_: [x.workflow_id for x in client.list(s_)]
          for s_ in ("completed", "interrupted", "failed", "running", "cancelled")}
    assert by == {"completed": ["wf-ok"], "interrupted": ["wf-int"], "failed": ["wf-fail"],
                  "running": ["wf-run"], "cancelled": []}
    gate.set()
    assert handle.result(timeout=30) == "done"
    assert client.status("wf-run").status == "completed"
    with pytest.raises(WorkflowNotFound):
        client.status("wf-missing")


@pytest.mark.timeout(60)
def test_client_cancel_stops_a_running_workflow_at_its_next_step(engine):
    entered = threading.Event()
    release = threading.Event()
    ran = []

    @step()
    def first():
        ran.append("first")
        entered.set()
        assert release.wait(30)
        return 1

    @step()
    def second():
        ran.append("second")
        return 2

    @workflow()
    def wf():
        return first() + second()

    client = Client()
    handle = client.start(wf, workflow_id="wf-cancel")
    assert entered.wait(30)
    assert client.cancel("wf-cancel") is True
    release.set()
    with pytest.raises(WorkflowCancelled) as err:
        handle.result(timeout=30)
    assert str(err.value).startswith("Workflow wf-cancel was cancelled")
    assert ran == ["first"]
    assert client.status("wf-cancel").status == "cancelled"
    assert "step_completed" not in kinds(engine, "wf-cancel")  # the fenced write was refused
    # a cancelled workflow does not start again under its id, and cancel is not repeated
    with pytest.raises(WorkflowCancelled):
        client.run(wf, workflow_id="wf-cancel")
    assert client.cancel("wf-cancel") is False
    assert ran == ["first"]


def test_client_cancel_of_a_finished_workflow_returns_false(engine):
    @step()
    def s():
        return 1

    @workflow()
    def wf():
        return s()

    Client().run(wf, workflow_id="wf-done")
    assert Client().cancel("wf-done") is False
    assert Client().status("wf-done").status == "completed"


# module-level, so that its journaled path "test_engine:module_pipeline" imports anywhere
MODULE_STATE = {"crash": False, "calls": []}


@step()
def module_double(x):
    MODULE_STATE["calls"].append("double")
    return x * 2


@step()
def module_finish(v, label):
    MODULE_STATE["calls"].append("finish")
    if MODULE_STATE["crash"]:
        raise Crash()
    return f"{label}:{v}"


@workflow()
def module_pipeline(x, label="res"):
    return module_finish(module_double(x), label)


def test_client_resume_by_id_imports_the_journaled_function(engine):
    MODULE_STATE.update(crash=True, calls=[])
    with pytest.raises(Crash):
        Client().run(module_pipeline, 21, label="answer", workflow_id="wf-mod")
    rec = engine.store.get_workflow("wf-mod")
    assert rec.function == "test_engine:module_pipeline"
    MODULE_STATE.update(crash=False, calls=[])
    definition = ExecutionEngine.registry.pop(rec.function)  # force the import path
    try:
        assert Client().resume("wf-mod") == "answer:42"  # the journaled input, not ours
    finally:
        ExecutionEngine.registry[rec.function] = definition
    assert MODULE_STATE["calls"] == ["finish"]


@pytest.mark.timeout(120)
def test_client_resume_by_id_in_another_process(engine, journal_path):
    MODULE_STATE.update(crash=True, calls=[])
    with pytest.raises(Crash):
        Client().run(module_pipeline, 5, label="child", workflow_id="wf-mod-child")
    MODULE_STATE.update(crash=False)
    proc = run_child("""
        import json
        import test_engine
        from contd_nb import Client
        print(json.dumps({"result": Client().resume("wf-mod-child"),
                          "calls": test_engine.MODULE_STATE["calls"]}))
    """, journal_path, timeout=100)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"result": "child:10", "calls": ["finish"]}
    assert Client().result("wf-mod-child") == "child:10"
    assert kinds(engine, "wf-mod-child") == ["workflow_started", "step_completed",
                                             "workflow_resumed", "step_completed",
                                             "workflow_completed"]


def test_client_resume_unknown_id(engine):
    with pytest.raises(WorkflowNotFound):
        Client().resume("wf-unknown")


# -- snapshots and restore ------------------------------------------------------------------


def _snapshot_workflow(n_steps: int, config: WorkflowConfig | None, crash_at: int | None):
    calls = []
    state = {"crash": crash_at}

    @step()
    def square(i):
        calls.append(i)
        if state["crash"] == i:
            raise Crash()
        return {"i": i, "sq": i * i}

    @workflow(config) if config is not None else workflow()
    def wf(n):
        return [square(i)["sq"] for i in range(1, n + 1)]

    return wf, calls, state


def _snapshot_scenario(engine, wid):
    wf, calls, state = _snapshot_workflow(24, WorkflowConfig(snapshot_interval=5), crash_at=24)
    with pytest.raises(Crash):
        Client().run(wf, 24, workflow_id=wid)
    assert engine.store.latest_snapshot(wid).step_number == 20
    state["crash"] = None
    calls.clear()
    assert Client().run(wf, 24, workflow_id=wid) == [i * i for i in range(1, 25)]
    assert calls == [24]
    # the resume read snapshot 20 and exactly the 3 events after it (steps 21..23)
    resumed = [e for e in engine.journal.get_events(wid) if isinstance(e, WorkflowResumed)]
    assert len(resumed) == 1
    assert resumed[0].events_replayed == 3
    assert resumed[0].info["snapshot_step"] == 20
    assert resumed[0].info["steps_completed"] == 23
    rec = [r for r in engine.store.list_restores(wid) if r.purpose == "resume"]
    assert [(r.events_replayed, r.snapshot_step, r.owner_id) for r in rec] == \
        [(3, 20, engine.executor_id)]
    assert rec[0].duration_ms >= 0

    restored = engine.restore(wid)
    # after snapshot 20 (seq 21): steps 21-23, resumed, step 24, completed
    assert (restored.snapshot_step, restored.events_replayed, restored.step_number) == (20, 6, 24)
    assert restored.status == "completed"
    journaled = {e.step_number: e.value() for e in engine.journal.get_events(wid)
                 if isinstance(e, StepCompleted)}
    assert restored.results == journaled
    assert restored.results == {i: {"i": i, "sq": i * i} for i in range(1, 25)}
    assert restored.steps == ["square"] * 24
    assert restored.result() == [i * i for i in range(1, 25)]
    inspects = [r for r in engine.store.list_restores(wid) if r.purpose == "inspect"]
    assert [(r.events_replayed, r.snapshot_step) for r in inspects] == [(6, 20)]
    assert_seqs_contiguous(engine, wid)


def test_snapshots_restore_reads_only_events_after_the_latest(engine):
    _snapshot_scenario(engine, "wf-snap")


def test_snapshots_restore_reads_only_events_after_the_latest_memory(memory_engine):
    _snapshot_scenario(memory_engine, "wf-snap")


def test_restore_of_23_steps_uses_snapshot_20(engine):
    wf, _, _ = _snapshot_workflow(23, WorkflowConfig(snapshot_interval=5), crash_at=None)
    Client().run(wf, 23, workflow_id="wf-23")
    restored = engine.restore("wf-23")
    # events: started (1), steps 1..23 (2..24), completed (25); snapshot 20 is at seq 21
    assert (restored.snapshot_step, restored.events_replayed, restored.step_number) == (20, 4, 23)
    snaps = []
    engine.add_listener(lambda e: snaps.append(e) if e.kind == "restore" else None)
    engine.restore("wf-23", purpose="inspect")
    assert snaps[0].fields["events_replayed"] == 4 and snaps[0].fields["snapshot_step"] == 20


def test_without_snapshots_restore_replays_every_event(engine):
    wf, _, _ = _snapshot_workflow(12, WorkflowConfig(snapshot_interval=0), crash_at=None)
    Client().run(wf, 12, workflow_id="wf-nosnap")
    restored = engine.restore("wf-nosnap")
    assert engine.store.latest_snapshot("wf-nosnap") is None
    assert restored.snapshot_step is None
    assert restored.events_replayed == len(engine.journal.get_events("wf-nosnap")) == 14
    assert restored.step_number == 12


def test_engine_snapshot_interval_is_settable(engine):
    written = []
    engine.add_listener(lambda e: written.append(e.fields["step_number"])
                        if e.kind == "snapshot_written" else None)
    engine.snapshot_interval = 4
    assert engine.snapshot_interval == 4
    wf, _, _ = _snapshot_workflow(10, None, crash_at=None)
    Client().run(wf, 10, workflow_id="wf-interval")
    assert written == [4, 8]
    restored = engine.restore("wf-interval")
    assert (restored.snapshot_step, restored.events_replayed) == (8, 3)
    # a workflow's own interval wins over the engine's
    wf2, _, _ = _snapshot_workflow(10, WorkflowConfig(snapshot_interval=3), crash_at=None)
    written.clear()
    Client().run(wf2, 10, workflow_id="wf-interval-own")
    assert written == [3, 6, 9]


def test_restore_of_unknown_workflow(engine):
    with pytest.raises(WorkflowNotFound, match="Workflow wf-ghost was not found"):
        engine.restore("wf-ghost")


# -- ContdTestCase --------------------------------------------------------------------------


@step()
def tc_load(n):
    return list(range(n))


@step(StepConfig(retry=RetryPolicy(max_attempts=3, **FAST)))
def tc_transform(rows):
    return [r * 10 for r in rows]


@step()
def tc_save(rows):
    return sum(rows)


@workflow()
def tc_pipeline(n):
    return tc_save(tc_transform(tc_load(n)))


@step()
def tc_strict(rows):
    return len(rows)


@workflow()
def tc_strict_pipeline(n):
    return tc_strict(tc_load(n))


class TestContdTestCaseHelpers(contd_testing.ContdTestCase):
    def test_crash_after_step_then_resume(self):
        with self.assertRaises(contd_testing.SimulatedCrash):
            self.run_workflow("wf-t1", tc_pipeline, {"n": 4}, crash_after_step=2)
        self.assertStepsRan(["tc_load", "tc_transform"])
        self.assertStepsReplayed([])
        self.assertEqual(self.resume_workflow("wf-t1", tc_pipeline, {"n": 4}), 60)
        self.assertStepsReplayed(["tc_load", "tc_transform"])
        self.assertStepsRan(["tc_save"])
        self.assertWorkflowStatus("wf-t1", "completed")

    def test_fail_step_is_retried(self):
        self.assertEqual(self.run_workflow("wf-t2", tc_pipeline, {"n": 3}, fail_step=2,
                                           fail_times=2), 30)
        self.assertStepsRan(["tc_load", "tc_transform", "tc_save"])
        failed = [e for e in self.engine.journal.get_events("wf-t2")
                  if isinstance(e, StepFailed)]
        self.assertEqual([(f.step_number, f.attempt, f.error_type) for f in failed],
                         [(2, 1, "InjectedFailure"), (2, 2, "InjectedFailure")])

    def test_fail_step_without_retry_fails_then_resumes(self):
        with self.assertRaises(contd_testing.InjectedFailure):
            self.run_workflow("wf-t3", tc_strict_pipeline, {"n": 3}, fail_step=2)
        self.assertWorkflowStatus("wf-t3", "failed")
        self.assertEqual(self.resume_workflow("wf-t3", tc_strict_pipeline, {"n": 3}), 3)
        self.assertStepsReplayed(["tc_load"])
        self.assertStepsRan(["tc_strict"])

    def test_assertions_fail_when_wrong(self):
        self.run_workflow("wf-t4", tc_pipeline, {"n": 2})
        with self.assertRaises(AssertionError):
            self.assertStepsRan(["tc_load"])
        with self.assertRaises(AssertionError):
            self.assertStepsReplayed(["tc_load"])
        with self.assertRaises(AssertionError):
            self.assertWorkflowStatus("wf-t4", "failed")


def test_contd_test_case_isolated_journal_and_restores_default(engine):
    tc = contd_testing.ContdTestCase()
    tc.setUp()
    try:
        assert ExecutionEngine.get_instance() is tc.engine
        assert tc.engine.store is not engine.store
        assert tc.run_workflow("wf-iso", tc_pipeline, {"n": 2}) == 10
        assert engine.store.get_workflow("wf-iso") is None
    finally:
        tc.tearDown()
    assert ExecutionEngine.get_instance() is engine


# -- value round-trips ----------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: tuple = ()


class Opaque:
    def __init__(self, items):
        self.items = items

    def __eq__(self, other):
        return type(other) is Opaque and other.items == self.items


def _frame():
    df = pd.DataFrame({
        "i64": np.array([1, 2, 3], dtype="int64"),
        "i32": np.array([4, 5, 6], dtype="int32"),
        "f": [1.5, np.nan, -0.25],
        "s": ["a", "b", "c"],
        "b": [True, False, True],
        "ts": pd.to_datetime(["2024-01-01", "2024-06-01", "2025-01-01"]).tz_localize("UTC"),
        "cat": pd.Categorical(["x", "y", "x"]),
        "nullable": pd.array([1, None, 3], dtype="Int64"),
    }, index=pd.Index([10, 20, 30], name="row_id"))
    df.columns.name = "features"
    return df


VALUES = {
    "int": 42, "big-int": 2 ** 80, "float": 0.1, "str": "héllo\n", "bool": True,
    "none": None, "list": [1, "a", None, [2.5]], "dict": {"a": {"b": [1, 2]}},
    "int-keys": {1: "one", (2, 3): "tuple key"}, "tuple": (1, ("a", None)),
    "set": {1, 2, 3}, "frozenset": frozenset({"a"}), "bytes": b"\x00\xff binary",
    "datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
    "date": dt.date(2024, 2, 29), "timedelta": timedelta(hours=1, microseconds=5),
    "dataclass": Point(1, 2.5, ("t",)), "custom": Opaque([1, {"k": b"v"}]),
    "nested-tuple-in-list": [(1, 2), (3, 4)],
}


def _journal_round_trip(value, wid: str):
    calls = []
    crash = {"on": True}

    @step()
    def produce():
        calls.append(1)
        return value

    @step()
    def after():
        if crash["on"]:
            raise Crash()

    @workflow()
    def wf():
        v = produce()
        after()
        return v

    with pytest.raises(Crash):
        Client().run(wf, workflow_id=wid)
    crash["on"] = False
    replayed = Client().run(wf, workflow_id=wid)
    assert calls == [1]  # the second value came from the journal
    return replayed, Client().result(wid)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_step_results_round_trip(engine, name):
    value = VALUES[name]
    replayed, final = _journal_round_trip(value, f"wf-rt-{name}")
    for got in (replayed, final):
        assert type(got) is type(value)
        assert got == value
        if isinstance(value, list):
            assert [type(x) for x in got] == [type(x) for x in value]


def test_dataframe_round_trips_with_dtypes_index_and_names(engine):
    df = _frame()
    replayed, final = _journal_round_trip(df, "wf-rt-df")
    for got in (replayed, final):
        assert got is not df
        pd.testing.assert_frame_equal(got, df)
        assert got.index.name == "row_id" and got.columns.name == "features"
        assert list(got.dtypes.astype(str)) == list(df.dtypes.astype(str))


def test_dataframe_with_unusual_columns_round_trips(engine):
    df = pd.DataFrame([[1, "a"], [2, "b"]], columns=[0, 0])  # duplicate, non-str labels
    replayed, _ = _journal_round_trip(df, "wf-rt-df2")
    pd.testing.assert_frame_equal(replayed, df)
    mi = pd.DataFrame({"v": [1.0, 2.0]},
                      index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"]))
    replayed, _ = _journal_round_trip(mi, "wf-rt-df3")
    pd.testing.assert_frame_equal(replayed, mi)


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(12, dtype=np.int64).reshape(3, 4).T,   # not C-contiguous
    np.array([True, False]),
    np.array(3.5),                                    # 0-d
    np.array([], dtype=np.int16),
    np.array([1 + 2j, 3j]),
    np.array(["a", "bc"]),
    np.array([1, None], dtype=object),
], ids=["f32-2d", "transposed", "bool", "0d", "empty", "complex", "unicode", "object"])
def test_numpy_array_round_trips(engine, arr, request):
    replayed, final = _journal_round_trip(arr, f"wf-rt-np-{request.node.callspec.id}")
    for got in (replayed, final):
        assert type(got) is np.ndarray
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


# -- listener events ------------------------------------------------------------------------


def test_listener_events_arrive_in_order(engine):
    got = []

    def listen(e):
        if e.kind != "journal_write":
            got.append((e.kind, e.workflow_id, e.fields.get("step_name"),
                        e.fields.get("attempt")))

    fails = {"left": 1}
    crash = {"on": True}

    @step()
    def a():
        return 1

    @step(StepConfig(retry=RetryPolicy(max_attempts=3, **FAST)))
    def b():
        if fails["left"]:
            fails["left"] -= 1
            raise ConnectionError("once")
        return 2

    @step()
    def c():
        if crash["on"]:
            raise Crash()
        return 3

    @workflow()
    def wf():
        return a() + b() + c()

    engine.add_listener(listen)
    with pytest.raises(Crash):
        Client().run(wf, workflow_id="wf-listen")
    W = "wf-listen"  # noqa: N806
    assert got == [
        ("lease_acquired", W, None, None), ("workflow_started", W, None, None),
        ("step_started", W, "a", 1), ("step_completed", W, "a", 1),
        ("step_started", W, "b", 1), ("step_failed", W, "b", 1),
        ("step_started", W, "b", 2), ("step_completed", W, "b", 2),
        ("step_started", W, "c", 1), ("workflow_interrupted", W, None, None)]
    got.clear()
    crash["on"] = False
    assert Client().run(wf, workflow_id=W) == 6
    assert got == [
        ("lease_acquired", W, None, None), ("restore", W, None, None),
        ("workflow_resumed", W, None, None),
        ("step_replayed", W, "a", None), ("step_replayed", W, "b", None),
        ("step_started", W, "c", 2), ("step_completed", W, "c", 2),
        ("workflow_completed", W, None, None)]
    engine.remove_listener(listen)
    Client().run(wf, workflow_id="wf-listen-2")
    assert all(x[1] != "wf-listen-2" for x in got)


def test_a_broken_listener_does_not_break_the_workflow(engine):
    def broken(e):
        raise RuntimeError("listener bug")

    @step()
    def s():
        return 1

    @workflow()
    def wf():
        return s()

    engine.add_listener(broken)
    assert Client().run(wf, workflow_id="wf-broken-listener") == 1
    assert Client().status("wf-broken-listener").status == "completed"


def test_replayed_numpy_array_is_writable_like_the_original(engine):
    arr = np.zeros((2, 3))
    assert arr.flags.writeable
    replayed, _ = _journal_round_trip(arr, "wf-rt-np-writable")
    assert replayed.flags.writeable, "the replayed array is read-only; the original was not"
    replayed[0, 0] = 1.0  # what the workflow code after the step may well do
    assert replayed[0, 0] == 1.0


def test_cancel_while_a_resume_is_starting_raises_workflow_cancelled(engine):
    """A cancel that lands between the resume taking the lease and its first write."""
    crash = {"on": True}

    @step()
    def one():
        return 1

    @step()
    def two():
        if crash["on"]:
            raise Crash()
        return 2

    @workflow()
    def wf():
        return one() + two()

    with pytest.raises(Crash):
        Client().run(wf, workflow_id="wf-cancel-resume")
    crash["on"] = False
    cancelled = []

    def cancel_on_acquire(e):
        if e.kind == "lease_acquired" and not cancelled:
            cancelled.append(Client().cancel("wf-cancel-resume"))

    engine.add_listener(cancel_on_acquire)
    with pytest.raises(WorkflowCancelled):
        Client().run(wf, workflow_id="wf-cancel-resume")
    assert cancelled == [True]
    assert Client().status("wf-cancel-resume").status == "cancelled"


# -- torture: crashes at random points, cancels at random moments ----------------------------


def _crash_trial(engine, rng, wid: str) -> None:
    from collections import Counter

    n = rng.randint(3, 25)
    interval = rng.choice([0, 2, 3, 5, 7])
    crash_points = set(rng.sample(range(n), k=rng.randint(1, min(4, n))))
    crashes = len(crash_points)
    completed: Counter = Counter()

    @step()
    def unit(i):
        if i in crash_points:
            crash_points.discard(i)
            raise Crash()
        completed[i] += 1
        return i * i

    @workflow(WorkflowConfig(snapshot_interval=interval))
    def wf(n):
        return [unit(i) for i in range(n)]

    runs = 0
    while True:
        runs += 1
        assert runs <= crashes + 1
        try:
            result = Client().run(wf, n, workflow_id=wid)
            break
        except Crash:
            continue
    ctx = f"{wid}: n={n} interval={interval} crashes={crashes}"
    assert result == [i * i for i in range(n)], ctx
    assert completed == Counter(range(n)), ctx  # every step completed exactly once
    events = engine.journal.get_events(wid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), ctx
    assert sum(isinstance(e, WorkflowResumed) for e in events) == crashes, ctx
    restored = engine.restore(wid)
    assert restored.results == {i + 1: i * i for i in range(n)}, ctx
    expected_snap = (n // interval) * interval if interval and n >= interval else None
    assert restored.snapshot_step == expected_snap, ctx
    snap_seq = 0 if expected_snap is None else next(
        e.seq for e in events if isinstance(e, StepCompleted) and e.step_number == expected_snap)
    assert restored.events_replayed == sum(e.seq > snap_seq for e in events), ctx


def _crash_torture(engine, trials: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    for trial in range(trials):
        _crash_trial(engine, rng, f"wf-torture-{seed}-{trial}")


def test_crash_torture_short(engine):
    _crash_torture(engine, 4, seed=1)


@pytest.mark.slow
def test_crash_torture_many_trials(engine):
    _crash_torture(engine, 80, seed=2)


def _cancel_trial(engine, rng, wid: str) -> None:
    ran = []

    @step()
    def unit(i):
        ran.append(i)
        time.sleep(0.002)
        return i

    @workflow()
    def wf(n):
        return [unit(i) for i in range(n)]

    client = Client()
    handle = client.start(wf, 30, workflow_id=wid)
    deadline = time.monotonic() + 30
    while engine.store.get_workflow(wid) is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.08))
    changed = client.cancel(wid)
    ctx = f"{wid}: cancel returned {changed}"
    if changed:
        with pytest.raises(WorkflowCancelled):
            handle.result(timeout=30)
        assert client.status(wid).status == "cancelled", ctx
    else:
        assert handle.result(timeout=30) == list(range(30)), ctx
        assert client.status(wid).status == "completed", ctx
    events = engine.journal.get_events(wid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), ctx
    done = [e.step_number for e in events if isinstance(e, StepCompleted)]
    assert done == list(range(1, len(done) + 1)), ctx
    # a step may have run once more after the cancel; its completion was refused
    assert len(ran) - len(done) in ((0, 1) if changed else (0,)), ctx
    assert len({e.lease_token for e in events}) == 1, ctx


def _cancel_torture(engine, trials: int, seed: int) -> None:
    import random

    rng = random.Random(seed)
    for trial in range(trials):
        _cancel_trial(engine, rng, f"wf-cancel-{seed}-{trial}")


@pytest.mark.timeout(120)
def test_cancel_torture_short(engine):
    _cancel_torture(engine, 4, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cancel_torture_many_trials(engine):
    _cancel_torture(engine, 80, seed=2)
