"""Prometheus metrics from engine events, scraped from the real endpoint; logging levels.

The metrics live in a process-wide registry, so each test compares scrapes taken before and
after its workflow (deltas), never absolute values left by other tests.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contd_nb import (
    ExecutionEngine,
    RetryPolicy,
    StepConfig,
    TooManyAttempts,
    WorkflowConfig,
    WorkflowLocked,
    step,
    workflow,
)
from contd_nb.core.leases import HOST
from contd_nb.observability import metrics as m
from contd_nb.observability import setup_observability
from contd_nb.observability.logging_setup import configure_logging
from contd_nb.persistence.base import LeaseRecord


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    srv = setup_observability(metrics_port=_free_port())
    return srv


def scrape(srv) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name: str, **labels) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


# -- the endpoint after a workflow with a retry and a resume ----------------------------------
FLAKY = {"calls": 0}
BREAK = {"on": True}


@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01,
                                   retryable_exceptions=[ConnectionError])))
def m_fetch(x):
    FLAKY["calls"] += 1
    if FLAKY["calls"] == 1:
        raise ConnectionError("transient")
    return x + 1


@step()
def m_store(x):
    if BREAK["on"]:
        raise ValueError("disk says no")
    return x * 10


@workflow(WorkflowConfig(snapshot_interval=1))
def m_pipeline(x):
    return m_store(m_fetch(x))


@pytest.mark.timeout(60)
def test_endpoint_counts_a_retry_and_a_resume(server, engine):
    FLAKY["calls"], BREAK["on"] = 0, True
    before = scrape(server)
    with pytest.raises(ValueError, match="disk says no"):
        engine.run(m_pipeline.__contd_workflow__, (1,), {}, "m-wf-1")
    BREAK["on"] = False
    assert engine.run(m_pipeline.__contd_workflow__, (1,), {}, "m-wf-1") == 20
    after = scrape(server)

    assert delta(before, after, "contd_steps_started_total", step="m_fetch") == 2
    assert delta(before, after, "contd_steps_started_total", step="m_store") == 2
    assert delta(before, after, "contd_steps_completed_total", step="m_fetch") == 1
    assert delta(before, after, "contd_steps_completed_total", step="m_store") == 1
    assert delta(before, after, "contd_steps_failed_total", step="m_fetch") == 1
    assert delta(before, after, "contd_steps_failed_total", step="m_store") == 1
    assert delta(before, after, "contd_step_retries_total", step="m_fetch") == 1
    assert delta(before, after, "contd_step_retries_total", step="m_store") == 0
    assert delta(before, after, "contd_steps_replayed_total", step="m_fetch") == 1
    assert delta(before, after, "contd_step_duration_seconds_count", step="m_fetch",
                 outcome="failed") == 1
    assert delta(before, after, "contd_step_duration_seconds_count", step="m_store",
                 outcome="completed") == 1

    restores = [r for r in engine.store.list_restores("m-wf-1") if r.purpose == "resume"]
    assert len(restores) == 1
    # snapshot after step 1; the resume replays step_failed(m_store) and workflow_failed
    assert restores[0].events_replayed == 2 and restores[0].snapshot_step == 1
    assert delta(before, after, "contd_restore_duration_milliseconds_count",
                 purpose="resume") == 1
    assert delta(before, after, "contd_events_replayed_per_restore_count",
                 purpose="resume") == 1
    assert delta(before, after, "contd_events_replayed_per_restore_sum",
                 purpose="resume") == restores[0].events_replayed
    assert delta(before, after, "contd_restore_duration_milliseconds_sum",
                 purpose="resume") == pytest.approx(restores[0].duration_ms, rel=1e-6)

    events = engine.journal.get_events("m-wf-1")
    assert delta(before, after, "contd_journal_write_seconds_count") == len(events) == 8
    assert delta(before, after, "contd_snapshots_written_total") == 2
    with engine.store._session() as c:
        sizes = c.execute("SELECT sum(octet_length(payload)) FROM snapshots WHERE workflow_id = ?",
                          ["m-wf-1"]).fetchone()[0]
    assert delta(before, after, "contd_snapshot_size_bytes_sum") == sizes
    assert delta(before, after, "contd_leases_acquired_total") == 2
    assert delta(before, after, "contd_workflows_finished_total", workflow="m_pipeline",
                 outcome="failed") == 1
    assert delta(before, after, "contd_workflows_finished_total", workflow="m_pipeline",
                 outcome="completed") == 1
    assert val(after, "contd_active_workflows", workflow="m_pipeline") == 0


@step(StepConfig(timeout=timedelta(seconds=0.05),
                 retry=RetryPolicy(max_attempts=2, backoff_initial=0.01,
                                   retryable_exceptions=[TimeoutError])))
def m_slow():
    time.sleep(5)


@workflow()
def m_slow_flow():
    return m_slow()


@pytest.mark.timeout(60)
def test_timeouts_and_retries_are_counted(server, engine):
    before = scrape(server)
    with pytest.raises(TooManyAttempts):
        engine.run(m_slow_flow.__contd_workflow__, (), {}, "m-slow")
    after = scrape(server)
    assert delta(before, after, "contd_step_timeouts_total", step="m_slow") == 2
    assert delta(before, after, "contd_step_retries_total", step="m_slow") == 1
    assert delta(before, after, "contd_steps_failed_total", step="m_slow") == 2
    assert delta(before, after, "contd_steps_completed_total", step="m_slow") == 0


@step()
def m_wait(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


@workflow()
def m_waiting_flow(path):
    return m_wait(path)


@pytest.mark.timeout(60)
def test_active_gauge_and_lease_counters(server, engine, journal_path, tmp_path):
    import threading

    go = tmp_path / "go"
    before = scrape(server)
    t = threading.Thread(target=engine.run,
                         args=(m_waiting_flow.__contd_workflow__, (str(go),), {}, "m-act"))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while val(scrape(server), "contd_active_workflows", workflow="m_waiting_flow") != 1:
            assert time.monotonic() < deadline, "the gauge never showed the running workflow"
            time.sleep(0.02)
        other = ExecutionEngine(str(journal_path), executor_id="other-executor")
        with pytest.raises(WorkflowLocked):  # a live executor holds it: a conflict
            other.lease_manager.acquire("m-act")
    finally:
        go.touch()
        t.join(30)
    mid = scrape(server)
    assert val(mid, "contd_active_workflows", workflow="m_waiting_flow") == 0
    assert delta(before, mid, "contd_lease_conflicts_total") == 1

    now = time.time()  # an expired lease, then one whose owner process is gone
    engine.store.take_lease(LeaseRecord("m-exp", "ghost", 1, now - 1, "elsewhere", 1, None,
                                        now - 31, now - 31), None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    engine.store.take_lease(LeaseRecord("m-dead", "gone", 1, now + 300, HOST, dead.pid, None,
                                        now, now), None)
    engine.lease_manager.acquire("m-exp")
    engine.lease_manager.acquire("m-dead")
    engine.lease_manager.force_release("m-dead")
    after = scrape(server)
    assert delta(mid, after, "contd_leases_expired_total", reason="expired") == 1
    assert delta(mid, after, "contd_leases_expired_total", reason="owner_dead") == 1
    assert delta(mid, after, "contd_leases_force_released_total") == 1
    assert delta(mid, after, "contd_leases_acquired_total") == 2
    engine.lease_manager.release("m-exp")


@step()
def m_one():
    return 1


@workflow()
def m_one_flow():
    return m_one()


def test_setup_twice_is_harmless(server, engine):
    again = setup_observability(metrics_port=server.port)
    assert again is server
    assert setup_observability(metrics_port=0) is server  # no second server
    assert ExecutionEngine._global_listeners.count(m.on_event) == 1
    assert server.host == "127.0.0.1" and server.server.server_address[0] == "127.0.0.1"
    before = scrape(server)
    engine.run(m_one_flow.__contd_workflow__, (), {}, "m-twice")
    after = scrape(server)
    assert delta(before, after, "contd_steps_completed_total", step="m_one") == 1
    assert delta(before, after, "contd_steps_started_total", step="m_one") == 1


def test_names_units_and_bounded_labels(server, engine):
    engine.run(m_one_flow.__contd_workflow__, (), {}, "m-names-1")
    engine.run(m_one_flow.__contd_workflow__, (), {}, "m-names-2")
    samples = scrape(server)
    names = {n for n, _ in samples}
    required = ["contd_restore_duration_milliseconds_bucket",
                "contd_events_replayed_per_restore_bucket", "contd_steps_started_total",
                "contd_steps_completed_total", "contd_steps_failed_total",
                "contd_step_duration_seconds_bucket", "contd_step_retries_total",
                "contd_step_timeouts_total", "contd_leases_acquired_total",
                "contd_lease_conflicts_total", "contd_leases_expired_total",
                "contd_leases_force_released_total", "contd_active_workflows",
                "contd_journal_write_seconds_bucket", "contd_snapshots_written_total",
                "contd_snapshot_size_bytes_bucket"]
    assert [r for r in required if r not in names] == []
    allowed = {"step", "workflow", "purpose", "outcome", "reason", "le"}
    for name, labels in samples:
        assert name.startswith("contd_"), name
        assert {k for k, _ in labels} <= allowed, (name, labels)
        assert not any("m-names" in v for _, v in labels), (name, labels)  # never an id


def test_core_does_not_import_prometheus_and_import_stays_light():
    code = ("import sys, contd_nb, contd_nb.observability.health, "
            "contd_nb.observability.logging_setup; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- logging -----------------------------------------------------------------------------------
SECRET = "s3cr3t-token-7f1e"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


LOGGED = {"calls": 0, "crash": True}


@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01,
                                   retryable_exceptions=[ConnectionError])))
def l_secret(api_key):
    LOGGED["calls"] += 1
    if LOGGED["calls"] == 1:
        raise ConnectionError("upstream reset")
    return {"token": api_key}


@step()
def l_then(value):
    if LOGGED["crash"]:
        raise KeyError("not yet")
    return value


@workflow(WorkflowConfig(snapshot_interval=0))
def l_flow(api_key):
    return l_then(l_secret(api_key))


@pytest.fixture
def captured():
    handler = _Records()
    root = logging.getLogger("contd_nb")
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    configure_logging("WARNING")


def _run_logged_flow(engine, wid):
    LOGGED["calls"], LOGGED["crash"] = 0, True
    with pytest.raises(KeyError):
        engine.run(l_flow.__contd_workflow__, (SECRET,), {}, wid)
    LOGGED["crash"] = False
    assert engine.run(l_flow.__contd_workflow__, (SECRET,), {}, wid) == {"token": SECRET}


def test_debug_explains_lease_replay_and_retry_decisions(engine, captured):
    configure_logging("INFO", debug=True)
    assert logging.getLogger("contd_nb.core.replay").getEffectiveLevel() == logging.DEBUG
    _run_logged_flow(engine, "l-debug")
    by = [(r.name, r.levelno, r.getMessage()) for r in captured.records]
    lease = [msg for name, _, msg in by if name == "contd_nb.core.leases"]
    assert any("acquired lease of l-debug" in msg for msg in lease), lease
    retry = [msg for name, _, msg in by if name == "contd_nb.core.replay"]
    assert any("retrying in" in msg and "attempt 1" in msg for msg in retry), retry
    assert any("l_then" in msg and "not retrying (no retry policy)" in msg
               for msg in retry), retry
    core = [msg for name, _, msg in by if name == "contd_nb.core"]
    assert any("restored l-debug" in msg and "events replayed" in msg for msg in core), core
    # the replay decision for the step whose journaled result is used on resume
    replayed = [msg for name, lvl, msg in by if name.startswith("contd_nb.core")
                and lvl == logging.DEBUG and "l_secret" in msg and "replay" in msg]
    assert replayed, ("no DEBUG record explains that step 1 'l_secret' was replayed from the "
                      f"journal: {by}")


def test_info_and_above_never_log_payloads(engine, captured):
    configure_logging("INFO")
    _run_logged_flow(engine, "l-info")
    assert not any(r.levelno < logging.INFO for r in captured.records)
    assert any("retrying in" in r.getMessage() for r in captured.records)  # logs did flow
    for r in captured.records:
        text = r.getMessage() + (logging.Formatter().formatException(r.exc_info)
                                 if r.exc_info else "")
        assert SECRET not in text, (r.name, text)


def test_configure_logging_levels_and_single_handler(capsys):
    import io

    buf = io.StringIO()
    configure_logging("warning", stream=buf)
    configure_logging(logging.INFO, stream=buf)
    root = logging.getLogger("contd_nb")
    mine = [h for h in root.handlers if getattr(h, "_contd_nb_handler", False)]
    assert len(mine) == 1 and root.level == logging.INFO
    logging.getLogger("contd_nb.sdk").info("hello from sdk")
    logging.getLogger("contd_nb.notebook").debug("hidden")
    assert "contd_nb.sdk: hello from sdk" in buf.getvalue()
    assert "hidden" not in buf.getvalue()
    from contd_nb import ConfigurationError

    with pytest.raises(ConfigurationError, match="log level 'LOUD' is not valid"):
        configure_logging("LOUD")
    configure_logging("WARNING")
