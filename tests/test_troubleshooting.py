"""Every engine/SDK snippet of the troubleshooting guide (seed/TROUBLESHOOTING.md), run as
written with ``contd`` read as ``contd_nb``, asserting what the guide promises.

The snippets are kept here verbatim (``SNIPPETS``) so the suite runs on a clean clone;
``test_snippets_are_verbatim_copies_of_the_guide`` checks them against the guide kept in
``docs/TROUBLESHOOTING.md`` (a copy of the seed guide with ``contd``). Each is
executed with ``exec`` in a prepared namespace (the names the guide assumes: ``client``,
``workflow_id``, ``my_step``, ...). The only edits are the ``contd`` -> ``contd_nb`` rename and,
where the guide waits for real time, a shorter wait (the lease TTL is shortened to match,
and ``test_default_lease_ttl_is_30_seconds`` shows the guide's "sleep 35" is right for the
default), or a body given to a ``...`` function so its promise can be observed.

Not covered here (later features, not part of the engine/SDK):
- "Database Connection Errors": PostgreSQL (``pg_isready``, ``DATABASE_URL``,
  ``PostgresAdapter().health_check()``) and ``contd init --backend sqlite`` (CLI);
- "Metrics Not Appearing": ``setup_observability(metrics_port=9090)``, the Prometheus
  endpoint and scrape config;
- "Slow Recovery Times" items 2 and 3: the ``contd_restore_duration_milliseconds`` /
  ``contd_events_replayed_per_restore`` metrics, and Redis/S3 storage (comments only);
- "Debug Mode" CLI: ``contd --debug run my_workflow``;
- "Health Checks": ``contd.observability.health.HealthChecker``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import select
import signal
import socket
import subprocess
import time
import traceback
from datetime import timedelta

import pytest
from conftest import ROOT, run_child, spawn_child

from contd_nb import (
    Client,
    ExecutionContext,
    ExecutionEngine,
    NoActiveWorkflow,
    RetryPolicy,
    StepConfig,
    StepTimeout,
    TooManyAttempts,
    WorkflowConfig,
    WorkflowLocked,
    step,
    workflow,
)
from contd_nb.core.events import StepCompleted, StepFailed
from contd_nb.persistence.file_gate import FileGate

# -- the guide's snippets, verbatim ---------------------------------------------------------

SNIPPETS = {
    "locked.symptom": "contd.sdk.errors.WorkflowLocked: Workflow wf-123 is locked by another "
                      "executor",
    "locked.option1": """\
# Option 1: Wait for lease to expire (default: 30s)
import time
time.sleep(35)
client.resume(workflow_id)
""",
    "locked.option2": """\
# Option 2: Force release (admin only)
from contd.core.engine import ExecutionEngine
engine = ExecutionEngine.get_instance()
engine.lease_manager.force_release(workflow_id)
""",
    "locked.option3": """\
# Option 3: Check who holds the lease
lease = engine.lease_manager.get_current_lease(workflow_id)
print(f"Held by: {lease.owner_id}, expires: {lease.expires_at}")
""",
    "timeout.symptom": "contd.sdk.errors.StepTimeout: Step 'fetch_data' timed out after 30.0s",
    "timeout.increase": """\
# Increase timeout
@step(StepConfig(timeout=timedelta(minutes=5)))
def fetch_data():
    ...
""",
    "timeout.retry": """\
# Add retry for transient failures
@step(StepConfig(
    timeout=timedelta(seconds=30),
    retry=RetryPolicy(max_attempts=3)
))
def fetch_data():
    ...
""",
    "timeout.async": """\
# Use async with proper timeout handling
import asyncio
async def fetch_with_timeout():
    try:
        return await asyncio.wait_for(fetch(), timeout=30)
    except asyncio.TimeoutError:
        return {"status": "timeout", "fallback": True}
""",
    "attempts.symptom": "contd.sdk.errors.TooManyAttempts: Step 'process' failed after 3 "
                        "attempts",
    "attempts.last_error": """\
# Check the last error
try:
    process_data()
except TooManyAttempts as e:
    print(f"Last error: {e.last_error}")
    # Decide: fix bug, increase attempts, or fail gracefully
""",
    "attempts.increase": """\
# Increase max attempts for flaky operations
@step(StepConfig(retry=RetryPolicy(max_attempts=10)))
def flaky_operation():
    ...
""",
    "attempts.retryable": """\
# Add specific retryable exceptions
@step(StepConfig(retry=RetryPolicy(
    max_attempts=5,
    retryable_exceptions=[ConnectionError, TimeoutError]
)))
def network_call():
    ...
""",
    "noactive.symptom": "contd.sdk.errors.NoActiveWorkflow: No workflow context found",
    "noactive.wrong": """\
# Wrong: calling step directly
result = my_step()  # NoActiveWorkflow!
""",
    "noactive.correct": """\
# Correct: call within workflow
@workflow()
def my_workflow():
    result = my_step()  # Works!
""",
    "noactive.testing": """\
# For testing, use mock context
from contd.sdk.testing import ContdTestCase
tc = ContdTestCase()
tc.setUp()
result = tc.run_workflow("test", my_workflow, {})
""",
    "resuming.same_id": """\
# Ensure same workflow_id is used
original_id = "wf-123"
client.resume(original_id)  # Not a new ID!
""",
    "resuming.state": """\
# Check state exists
engine = ExecutionEngine.get_instance()
state = engine.restore(original_id)
print(f"State at step: {state.step_number}")
""",
    "resuming.events": """\
# Verify journal has events
events = engine.journal.get_events(original_id)
print(f"Events: {len(events)}")
""",
    "memory.small_state": """\
# 1. Keep state small
@step()
def process_large_file(path: str):
    # Don't return large data
    result = process(path)
    save_to_storage(result)
    return {"status": "done", "path": path}  # Small state
""",
    "memory.streaming": """\
# 2. Use streaming for large data
@step()
def stream_process():
    for chunk in read_chunks():
        process_chunk(chunk)
    return {"processed": True}
""",
    "memory.snapshot_interval": """\
# 3. Configure snapshot interval
engine = ExecutionEngine.get_instance()
engine.snapshot_interval = 10  # Snapshot every 10 steps
""",
    "recovery.snapshots": """\
# 1. Enable more frequent snapshots
@workflow(WorkflowConfig(snapshot_interval=5))
def my_workflow():
    ...
""",
    "debug.basic": """\
import logging
logging.basicConfig(level=logging.DEBUG)
""",
    "debug.modules": """\
# Or specific modules
logging.getLogger('contd.core').setLevel(logging.DEBUG)
logging.getLogger('contd.sdk').setLevel(logging.DEBUG)
""",
}


def nb(text: str) -> str:
    """The snippet with the package ``contd`` read as ``contd_nb``."""
    return (text.replace("from contd.", "from contd_nb.")
            .replace("'contd.", "'contd_nb.")
            .replace("contd.sdk.errors.", "contd_nb.sdk.errors."))


def run_snippet(name: str, namespace: dict | None = None, *, replace: dict | None = None,
                body: str | None = None) -> dict:
    """exec a snippet in a namespace that has what the guide assumes in scope."""
    text = nb(SNIPPETS[name])
    for old, new in (replace or {}).items():
        assert old in text, f"{old!r} not in snippet {name}"
        text = text.replace(old, new)
    if body is not None:
        assert text.count("    ...\n") == 1
        text = text.replace("    ...\n", body)
    ns = {"__name__": f"guide_{name.replace('.', '_')}", "step": step, "workflow": workflow,
          "StepConfig": StepConfig, "WorkflowConfig": WorkflowConfig,
          "RetryPolicy": RetryPolicy, "timedelta": timedelta, "TooManyAttempts": TooManyAttempts,
          "ExecutionEngine": ExecutionEngine}
    ns.update(namespace or {})
    exec(compile(text, f"<guide:{name}>", "exec"), ns)
    return ns


def symptom(exc: BaseException) -> str:
    """The last line of the traceback as the user sees it ("module.Class: message")."""
    return "".join(traceback.format_exception_only(exc))


FAST = {"RetryPolicy(max_attempts=3)": "RetryPolicy(max_attempts=3, backoff_initial=0.01)"}


GUIDE = ROOT / "docs" / "TROUBLESHOOTING.md"  # the guide users read, kept in the repo


def test_snippets_are_verbatim_copies_of_the_guide():
    guide = GUIDE.read_text()
    for name, text in SNIPPETS.items():
        assert text.rstrip("\n") in guide, f"snippet {name} is not in {GUIDE} as written"


# -- WorkflowLocked -------------------------------------------------------------------------
# A child process runs workflow wf-123 and sits in step two; this process is "another
# executor" that finds it locked.

LOCK_CALLS: list[str] = []


@step()
def locked_one():
    LOCK_CALLS.append("one")
    return 1


@step()
def locked_two(go_file):
    LOCK_CALLS.append("two")
    print("IN-STEP-TWO", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.02)
    return 2


@step()
def locked_three():
    LOCK_CALLS.append("three")
    return 3


@workflow(WorkflowConfig(workflow_id="wf-123"))
def locked_workflow(go_file):
    return [locked_one(), locked_two(go_file), locked_three()]


CHILD = """
    import contd_nb
    {configure}
    import test_troubleshooting as t
    try:
        print("RESULT", t.locked_workflow({go!r}), flush=True)
    except BaseException as e:
        print("ERROR", type(e).__name__, str(e).splitlines()[0], flush=True)
"""


def _start_holder(journal_path, go_file, lease_ttl=None) -> subprocess.Popen:
    configure = f"contd_nb.configure(lease_ttl={lease_ttl})" if lease_ttl else ""
    child = spawn_child(CHILD.format(configure=configure, go=str(go_file)), journal_path)
    _wait_for_line(child, "IN-STEP-TWO", 60)
    return child


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if text in line:
                return
    proc.kill()
    raise AssertionError(f"child never printed {text!r}; stdout {seen}, "
                         f"stderr {proc.stderr.read()[-3000:]}")


def _stop_while_idle(engine, pid: int) -> None:
    """SIGSTOP a child at a moment it does not hold the journal file (we hold the gate)."""
    engine.store.idle()
    gate = FileGate(engine.store.describe())
    try:
        gate.acquire(30)
        os.kill(pid, signal.SIGSTOP)
    finally:
        gate.release()
        gate.close()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


@pytest.mark.timeout(120)
def test_locked_symptom_option3_then_option2_force_release(engine, journal_path, tmp_path,
                                                           capsys):
    go = tmp_path / "go"
    child = _start_holder(journal_path, go)
    try:
        # the symptom
        with pytest.raises(WorkflowLocked) as err:
            Client().resume("wf-123")
        assert symptom(err.value).startswith(nb(SNIPPETS["locked.symptom"]))
        assert (err.value.pid, err.value.host) == (child.pid, socket.gethostname())

        # Option 3: who holds the lease
        capsys.readouterr()
        run_snippet("locked.option3", {"engine": ExecutionEngine.get_instance(),
                                       "workflow_id": "wf-123"})
        out = capsys.readouterr().out
        lease = engine.lease_manager.get_current_lease("wf-123")
        assert out == f"Held by: {lease.owner_id}, expires: {lease.expires_at}\n"
        assert lease.owner_id.startswith(f"{socket.gethostname()}:{child.pid}:")
        left = (lease.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        assert 0 < left <= 30.5

        # Option 2: force release, after which this process can resume at once
        ns = run_snippet("locked.option2", {"workflow_id": "wf-123"})
        assert ns["engine"] is engine
        after = engine.lease_manager.get_current_lease("wf-123")
        assert after.owner_id is None and after.token == lease.token + 1
        go.touch()
        LOCK_CALLS.clear()
        assert Client().resume("wf-123") == [1, 2, 3]
        assert LOCK_CALLS == ["two", "three"]  # step one replayed from the child's journal

        # the fenced-out child finishes its step, and its write is refused
        out, err_text = child.communicate(timeout=60)
        assert "ERROR LeaseLost" in out, (out, err_text)
    finally:
        _kill(child)
    events = engine.journal.get_events("wf-123")
    assert [e.kind for e in events] == ["workflow_started", "step_completed",
                                        "workflow_resumed", "step_completed", "step_completed",
                                        "workflow_completed"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert {e.lease_token for e in events[2:]} == {lease.token + 2}


@pytest.mark.timeout(120)
def test_locked_option1_wait_for_expiry_then_resume(engine, journal_path, tmp_path):
    ttl = 2.0
    go = tmp_path / "go"
    child = _start_holder(journal_path, go, lease_ttl=ttl)
    try:
        with pytest.raises(WorkflowLocked):
            Client().resume("wf-123")
        _stop_while_idle(engine, child.pid)  # hung: alive, no heartbeat
        go.touch()
        LOCK_CALLS.clear()
        run_snippet("locked.option1", {"client": Client(), "workflow_id": "wf-123"},
                    replace={"time.sleep(35)": f"time.sleep({ttl + 0.5})"})
        assert Client().result("wf-123") == [1, 2, 3]
        assert LOCK_CALLS == ["two", "three"]
    finally:
        _kill(child)
    assert Client().status("wf-123").status == "completed"


def test_default_lease_ttl_is_30_seconds(journal_path, monkeypatch):
    """The guide's Option 1 sleeps 35 s because the default lease lasts 30 s."""
    from contd_nb.core.leases import DEFAULT_TTL

    assert DEFAULT_TTL == 30.0
    monkeypatch.setenv("CONTD_JOURNAL", str(journal_path))
    previous = ExecutionEngine.set_instance(None)
    default = ExecutionEngine.get_instance()  # built from the environment, no options
    try:
        assert default.lease_manager.ttl == 30.0
        seen = []

        @step()
        def look():
            lease = default.lease_manager.get_current_lease(
                ExecutionContext.current().workflow_id)
            seen.append(lease.expires_at - lease.acquired_at)

        @workflow()
        def wf():
            look()

        wf()
        assert len(seen) == 1
        assert abs(seen[0].total_seconds() - 30.0) < 0.001
        assert 30.0 < 35  # "time.sleep(35)" outlasts a lease nobody renews
    finally:
        ExecutionEngine.set_instance(previous)
        default.close()
        default.store.close()


# -- StepTimeout ----------------------------------------------------------------------------


def test_step_timeout_symptom_wording():
    e = StepTimeout("fetch_data", timedelta(seconds=30).total_seconds())
    assert symptom(e).startswith(nb(SNIPPETS["timeout.symptom"]))


@pytest.mark.timeout(60)
def test_step_timeout_symptom_from_a_real_timeout(engine):
    @step(StepConfig(timeout=timedelta(seconds=0.3)))
    def fetch_data():
        time.sleep(5)

    @workflow()
    def wf():
        return fetch_data()

    with pytest.raises(StepTimeout) as err:
        wf()
    assert symptom(err.value).startswith(
        "contd_nb.sdk.errors.StepTimeout: Step 'fetch_data' timed out after 0.3s")


def test_step_timeout_increase_timeout(engine):
    ns = run_snippet("timeout.increase")
    fetch_data = ns["fetch_data"]
    assert fetch_data.__contd_step__.config.timeout_seconds == 300.0

    @workflow()
    def wf():
        return fetch_data()

    assert Client().run(wf, workflow_id="wf-increase") is None
    assert [e.step_name for e in engine.journal.get_events("wf-increase")
            if isinstance(e, StepCompleted)] == ["fetch_data"]


def test_step_timeout_add_retry_config(engine):
    cfg = run_snippet("timeout.retry")["fetch_data"].__contd_step__.config
    assert cfg.timeout_seconds == 30.0
    assert cfg.retry.max_attempts == 3


@pytest.mark.timeout(60)
def test_step_timeout_add_retry_recovers_from_transient_slowness(engine):
    state = {"runs": 0}
    ns = run_snippet(
        "timeout.retry", {"state": state, "time": time},
        replace={"seconds=30": "seconds=0.3", **FAST},
        body="    state['runs'] += 1\n"
             "    if state['runs'] == 1:\n"
             "        time.sleep(5)  # the slow first call\n"
             "    return {'data': state['runs']}\n")
    fetch_data = ns["fetch_data"]

    @workflow()
    def wf():
        return fetch_data()

    assert Client().run(wf, workflow_id="wf-slow-once") == {"data": 2}
    events = engine.journal.get_events("wf-slow-once")
    assert [(e.kind, e.attempt, e.info.get("error_type")) for e in events
            if isinstance(e, (StepFailed, StepCompleted))] == \
        [("step_failed", 1, "StepTimeout"), ("step_completed", 2, None)]


@pytest.mark.timeout(60)
def test_step_timeout_async_fallback(engine):
    async def fetch():
        await asyncio.sleep(30)
        return {"status": "ok"}

    ns = run_snippet("timeout.async", {"fetch": fetch},
                     replace={"timeout=30)": "timeout=0.2)"})
    durable = step()(ns["fetch_with_timeout"])

    @workflow()
    async def wf():
        return await durable()

    assert asyncio.run(Client().engine.arun(wf.__contd_workflow__, (), {}, "wf-fallback")) \
        == {"status": "timeout", "fallback": True}
    assert [e.value() for e in engine.journal.get_events("wf-fallback")
            if isinstance(e, StepCompleted)] == [{"status": "timeout", "fallback": True}]


# -- TooManyAttempts ------------------------------------------------------------------------


def test_too_many_attempts_check_the_last_error(engine, capsys):
    raised = []

    @step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01)))
    def process():
        raised.append(ConnectionError(f"database unreachable (try {len(raised) + 1})"))
        raise raised[-1]

    @workflow()
    def process_data():
        return process()

    with pytest.raises(TooManyAttempts) as err:
        process_data()
    assert symptom(err.value).startswith(nb(SNIPPETS["attempts.symptom"]))
    assert err.value.last_error is raised[-1]

    capsys.readouterr()
    ns = run_snippet("attempts.last_error", {"process_data": process_data})
    assert capsys.readouterr().out == "Last error: database unreachable (try 6)\n"
    assert "e" not in ns  # Python unbinds the except target; nothing else leaked
    assert len(raised) == 6


def test_too_many_attempts_increase_max_attempts(engine):
    cfg = run_snippet("attempts.increase")["flaky_operation"].__contd_step__.config
    assert cfg.retry.max_attempts == 10

    state = {"runs": 0}
    ns = run_snippet(
        "attempts.increase", {"state": state},
        replace={"RetryPolicy(max_attempts=10)":
                 "RetryPolicy(max_attempts=10, backoff_initial=0.001)"},
        body="    state['runs'] += 1\n"
             "    if state['runs'] < 10:\n"
             "        raise ConnectionError('flaky')\n"
             "    return 'finally'\n")
    flaky_operation = ns["flaky_operation"]

    @workflow()
    def wf():
        return flaky_operation()

    assert Client().run(wf, workflow_id="wf-flaky10") == "finally"
    done = [e for e in engine.journal.get_events("wf-flaky10") if isinstance(e, StepCompleted)]
    assert [d.attempt for d in done] == [10]


def test_too_many_attempts_specific_retryable_exceptions(engine):
    cfg = run_snippet("attempts.retryable")["network_call"].__contd_step__.config
    assert cfg.retry.max_attempts == 5
    assert cfg.retry.retryable_exceptions == (ConnectionError, TimeoutError)

    script: list = []
    ns = run_snippet(
        "attempts.retryable", {"script": script},
        replace={"max_attempts=5,": "max_attempts=5, backoff_initial=0.001,"},
        body="    outcome = script.pop(0)\n"
             "    if isinstance(outcome, BaseException):\n"
             "        raise outcome\n"
             "    return outcome\n")
    network_call = ns["network_call"]

    @workflow()
    def wf():
        return network_call()

    script[:] = [ConnectionError("reset"), TimeoutError("slow"), "ok"]
    assert Client().run(wf, workflow_id="wf-net-ok") == "ok"
    bad = ValueError("malformed response")
    script[:] = [ConnectionError("reset"), bad, "never"]
    with pytest.raises(ValueError) as err:  # not in the list: not retried
        Client().run(wf, workflow_id="wf-net-bad")
    assert err.value is bad and script == ["never"]
    script[:] = [ConnectionError(f"down {i}") for i in range(1, 6)]
    with pytest.raises(TooManyAttempts) as err2:
        Client().run(wf, workflow_id="wf-net-down")
    assert str(err2.value).startswith("Step 'network_call' failed after 5 attempts")
    assert str(err2.value.last_error) == "down 5"


# -- NoActiveWorkflow -----------------------------------------------------------------------

MY_STEP_RUNS: list[str] = []


@step()
def my_step():
    MY_STEP_RUNS.append("ran")
    return "stepped"


def test_no_active_workflow_wrong_then_correct(engine):
    with pytest.raises(NoActiveWorkflow) as err:
        run_snippet("noactive.wrong", {"my_step": my_step})
    assert symptom(err.value).startswith(nb(SNIPPETS["noactive.symptom"]))
    with pytest.raises(NoActiveWorkflow) as err2:
        ExecutionContext.current()  # cause 1 of the guide
    assert symptom(err2.value).startswith(nb(SNIPPETS["noactive.symptom"]))

    MY_STEP_RUNS.clear()
    ns = run_snippet("noactive.correct", {"my_step": my_step})
    assert ns["my_workflow"]() is None
    assert MY_STEP_RUNS == ["ran"]


def test_no_active_workflow_contd_test_case_snippet(engine):
    my_workflow = run_snippet("noactive.correct", {"my_step": my_step})["my_workflow"]
    MY_STEP_RUNS.clear()
    ns = run_snippet("noactive.testing", {"my_workflow": my_workflow})
    tc = ns["tc"]
    try:
        assert ns["result"] is None
        assert MY_STEP_RUNS == ["ran"]
        assert tc.steps_ran == ["my_step"]
        tc.assertWorkflowStatus("test", "completed")
        assert tc.engine is not engine  # an isolated journal
        assert engine.store.get_workflow("test") is None
    finally:
        tc.tearDown()


# -- Workflow Not Resuming Correctly --------------------------------------------------------


def test_workflow_not_resuming_correctly(engine, capsys):
    ran = []
    crash = {"on": True}

    @step()
    def load():
        ran.append("load")
        return [1, 2, 3]

    @step()
    def enrich(rows):
        ran.append("enrich")
        return [r * 10 for r in rows]

    @step()
    def publish(rows):
        ran.append("publish")
        if crash["on"]:
            raise KeyboardInterrupt  # the kernel was interrupted here
        return sum(rows)

    @workflow()
    def pipeline():
        return publish(enrich(load()))

    with pytest.raises(KeyboardInterrupt):
        Client().run(pipeline, workflow_id="wf-123")
    crash["on"] = False
    ran.clear()
    capsys.readouterr()
    ns = run_snippet("resuming.same_id", {"client": Client()})
    assert ran == ["publish"]  # resumed, not restarted from the beginning
    assert Client().result("wf-123") == 60
    ns = run_snippet("resuming.state", ns)
    ns = run_snippet("resuming.events", ns)
    # started, load, enrich, resumed, publish, completed
    assert capsys.readouterr().out == "State at step: 3\nEvents: 6\n"
    assert ns["state"].steps == ["load", "enrich", "publish"]
    # cause 1: a new id is a new workflow, which runs everything again
    ran.clear()
    assert Client().run(pipeline, workflow_id="wf-124") == 60
    assert ran == ["load", "enrich", "publish"]


# -- High Memory Usage ----------------------------------------------------------------------


def test_high_memory_keep_state_small_and_stream(engine):
    storage: dict = {}
    chunks_done: list[int] = []
    process_large_file = run_snippet("memory.small_state", {
        "process": lambda path: b"x" * 2_000_000,
        "save_to_storage": lambda result: storage.update(saved=len(result)),
    })["process_large_file"]
    stream_process = run_snippet("memory.streaming", {
        "read_chunks": lambda: iter(range(50)),
        "process_chunk": chunks_done.append,
    })["stream_process"]

    @workflow()
    def wf(path):
        return [process_large_file(path), stream_process()]

    assert Client().run(wf, "/data/big.csv", workflow_id="wf-mem") == \
        [{"status": "done", "path": "/data/big.csv"}, {"processed": True}]
    assert storage == {"saved": 2_000_000}
    assert chunks_done == list(range(50))
    done = [e for e in engine.journal.get_events("wf-mem") if isinstance(e, StepCompleted)]
    assert [len(e.payload) < 100 for e in done] == [True, True]  # small state journaled


def test_high_memory_configure_snapshot_interval(engine):
    ns = run_snippet("memory.snapshot_interval")
    assert ns["engine"] is engine and engine.snapshot_interval == 10

    @step()
    def unit(i):
        return i

    @workflow()
    def wf():
        return [unit(i) for i in range(25)]

    Client().run(wf, workflow_id="wf-snap10")
    assert engine.store.latest_snapshot("wf-snap10").step_number == 20
    restored = engine.restore("wf-snap10")
    # steps 21..25 and the completion: all that is read after snapshot 20
    assert (restored.snapshot_step, restored.events_replayed, restored.step_number) == \
        (20, 6, 25)


# -- Slow Recovery Times --------------------------------------------------------------------


def test_slow_recovery_more_frequent_snapshots(engine):
    verbatim = run_snippet("recovery.snapshots")["my_workflow"]
    assert verbatim.__contd_workflow__.config.snapshot_interval == 5
    assert verbatim() is None

    @step()
    def unit(i):
        return i * 3

    ns = run_snippet("recovery.snapshots", {"unit": unit},
                     body="    return [unit(i) for i in range(12)]\n")
    assert Client().run(ns["my_workflow"], workflow_id="wf-fast-restore") == \
        [i * 3 for i in range(12)]
    restored = engine.restore("wf-fast-restore")
    assert (restored.snapshot_step, restored.events_replayed) == (10, 3)
    assert restored.results == {n: (n - 1) * 3 for n in range(1, 13)}
    # the same workflow without snapshots reads every event
    plain = run_snippet("recovery.snapshots", {"unit": unit},
                        replace={"snapshot_interval=5": "snapshot_interval=0"},
                        body="    return [unit(i) for i in range(12)]\n")["my_workflow"]
    Client().run(plain, workflow_id="wf-slow-restore")
    assert engine.restore("wf-slow-restore").events_replayed == 14


# -- Debug Mode -----------------------------------------------------------------------------

DEBUG_STATE = {"crash": False}


@step()
def debug_one():
    return 1


@step()
def debug_two():
    if DEBUG_STATE["crash"]:
        raise KeyboardInterrupt
    return 2


@workflow(WorkflowConfig(workflow_id="wf-debug"))
def debug_workflow():
    return debug_one() + debug_two()


def _crash_then_resume() -> int:
    DEBUG_STATE["crash"] = True
    with pytest.raises(KeyboardInterrupt):
        debug_workflow()
    DEBUG_STATE["crash"] = False
    return debug_workflow()


def test_debug_mode_specific_modules(engine, caplog):
    names = ("contd_nb.core", "contd_nb.sdk")
    before = {n: logging.getLogger(n).level for n in names}
    caplog.set_level(logging.NOTSET)  # the capture handler takes everything it is given
    try:
        run_snippet("debug.modules", {"logging": logging})
        assert {n: logging.getLogger(n).level for n in names} == \
            {n: logging.DEBUG for n in names}
        assert _crash_then_resume() == 3
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG
             and r.name.startswith("contd_nb.core")]
    by_logger = {r.name for r in debug}
    assert {"contd_nb.core", "contd_nb.core.leases"} <= by_logger, by_logger
    messages = [r.getMessage() for r in debug]
    assert any(m.startswith("restored wf-debug: step 1") for m in messages), messages
    assert any(m.startswith("acquired lease of wf-debug") for m in messages), messages


def test_debug_mode_is_quiet_without_the_snippet(engine, caplog):
    assert logging.getLogger("contd_nb.core").getEffectiveLevel() > logging.DEBUG
    assert _crash_then_resume() == 3
    assert [r for r in caplog.records if r.name.startswith("contd_nb")
            and r.levelno == logging.DEBUG] == []


@pytest.mark.timeout(120)
def test_debug_mode_basic_config_prints_debug_lines(journal_path):
    code = nb(SNIPPETS["debug.basic"]) + (
        "import pytest\n"
        "import test_troubleshooting as t\n"
        "print('RESULT', t._crash_then_resume())\n")
    proc = run_child(code, journal_path, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 3" in proc.stdout
    assert "DEBUG:contd_nb.core.leases:acquired lease of wf-debug" in proc.stderr
    assert "DEBUG:contd_nb.core:restored wf-debug: step 1" in proc.stderr


def test_contd_nb_module_names_match_the_guide():
    import contd_nb.core.engine
    import contd_nb.sdk.errors
    import contd_nb.sdk.testing

    assert contd_nb.core.engine.ExecutionEngine is ExecutionEngine
    assert contd_nb.sdk.errors.WorkflowLocked is WorkflowLocked
    assert contd_nb.sdk.testing.ContdTestCase.__name__ == "ContdTestCase"
    assert contd_nb.TooManyAttempts is TooManyAttempts
