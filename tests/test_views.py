"""contd_nb.views: the pandas views, the widgets and their HTML fallback, notebook 04.

One journal (a real DuckDB file) is built once for the module, with what the views must show:
- ``rates``: a Python workflow whose step fails twice (ConnectionError) and then completes;
- ``crashed``: a Python workflow run by a child process that is SIGKILLed inside step 2
  (tests/crash_workflows.py ``gated``), then resumed in this process;
- ``nbrun``: a notebook run in an in-process IPython shell whose cell ``load`` fails once and
  is retried, and whose cell ``total`` runs twice (``--force``);
- ``held``: a lease this process takes and keeps.
Values are checked exactly where the engine fixes them (counts, attempts, kinds, order); times
only for being UTC-aware and ordered.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("IPython")
pytest.importorskip("ipywidgets")
import crash_workflows as cw  # noqa: E402
from conftest import ROOT, child_env, spawn_child  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402
from traitlets.config import Config  # noqa: E402

from contd_nb import (  # noqa: E402
    Client,
    ConfigurationError,
    ExecutionEngine,
    RetryPolicy,
    StepConfig,
    step,
    views,  # noqa: E402
    workflow,
)
from contd_nb.notebook.session import NotebookSession  # noqa: E402
from contd_nb.views import widgets  # noqa: E402

S, I64, B, F, TS = "string", "Int64", "boolean", "float64", "datetime64[us, UTC]"
CAT = "category"

COLUMNS = {
    "workflows": [("workflow_id", S), ("name", S), ("kind", CAT), ("function", S),
                  ("status", CAT), ("created_at", TS), ("updated_at", TS), ("duration_s", F),
                  ("events", I64), ("steps_done", I64), ("failures", I64), ("resumes", I64),
                  ("error_type", S), ("error_message", S), ("lease_owner", S)],
    "steps": [("workflow_id", S), ("step_number", I64), ("step_name", S), ("cell", B),
              ("status", CAT), ("attempts", I64), ("failures", I64), ("runs", I64),
              ("last_attempt", I64), ("started_at", TS), ("completed_at", TS),
              ("duration_ms", F), ("total_duration_ms", F), ("last_error_type", S),
              ("last_error_message", S), ("first_seq", I64), ("last_seq", I64)],
    "events": [("workflow_id", S), ("seq", I64), ("kind", CAT), ("step_number", I64),
               ("step_name", S), ("attempt", I64), ("started_at", TS), ("ended_at", TS),
               ("duration_ms", F), ("cell", B), ("error_type", S), ("message", S),
               ("will_retry", B), ("delay_s", F), ("encoding", S), ("payload_bytes", I64),
               ("lease_token", I64), ("info", S)],
    "attempts": [("workflow_id", S), ("step_number", I64), ("step_name", S), ("cell", B),
                 ("attempt", I64), ("outcome", CAT), ("started_at", TS), ("ended_at", TS),
                 ("duration_ms", F), ("error_type", S), ("message", S), ("timeout", B),
                 ("will_retry", B), ("delay_s", F), ("seq", I64)],
    "leases": [("workflow_id", S), ("state", CAT), ("owner_id", S), ("host", S), ("pid", I64),
               ("token", I64), ("acquired_at", TS), ("renewed_at", TS), ("expires_at", TS),
               ("expires_in_s", F)],
    "restores": [("workflow_id", S), ("started_at", TS), ("duration_ms", F),
                 ("events_replayed", I64), ("snapshot_step", I64), ("from_snapshot", B),
                 ("purpose", CAT), ("owner_id", S)],
    "snapshots": [("workflow_id", S), ("step_number", I64), ("seq", I64),
                  ("created_at", TS), ("size_bytes", I64)],
    "recovery": [("workflow_id", S), ("restores", I64), ("resumes", I64),
                 ("mean_restore_ms", F), ("max_restore_ms", F), ("mean_events_replayed", F),
                 ("max_events_replayed", I64), ("snapshots", I64),
                 ("last_snapshot_step", I64)],
}
CATEGORIES = {
    ("workflows", "status"): ["running", "completed", "failed", "cancelled"],
    ("workflows", "kind"): ["python", "notebook"],
    ("steps", "status"): ["completed", "failed", "pending"],
    ("events", "kind"): ["workflow_started", "workflow_enqueued", "workflow_resumed", "step_started",
                         "step_completed", "step_failed", "workflow_completed",
                         "workflow_failed", "workflow_cancelled"],
    ("attempts", "outcome"): ["completed", "failed"],
    ("leases", "state"): ["held", "expired", "released"],
    ("restores", "purpose"): ["resume", "inspect"],
}

# -- the journal --------------------------------------------------------------------------------
FLAKY_CALLS: list[int] = []


@step(StepConfig(retry=RetryPolicy(max_attempts=4, backoff_initial=0.001, backoff_jitter=0)))
def fetch_rates(day: str) -> dict:
    FLAKY_CALLS.append(1)
    if len(FLAKY_CALLS) <= 2:
        raise ConnectionError(f"reset {len(FLAKY_CALLS)}")
    return {"day": day, "eur_usd": 1.08}


@step
def convert(rates: dict, amount: float) -> float:
    return round(amount * rates["eur_usd"], 2)


@workflow
def rates_job(day: str, amount: float) -> float:
    return convert(fetch_rates(day), amount)


def _new_shell() -> InteractiveShell:
    InteractiveShell.clear_instance()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=config)


def _cell(shell, code: str):
    with capture_output() as cap:
        result = shell.run_cell(code, store_history=False)
    return result, cap


class Built:
    path: Path
    engine: ExecutionEngine
    tmp: Path
    crashed_pid: int


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    path = tmp / "journal.duckdb"
    b = Built()
    b.path, b.tmp = path, tmp
    saved_env = os.environ.get("CONTD_JOURNAL")
    os.environ["CONTD_JOURNAL"] = str(tmp / "default.duckdb")
    engine = ExecutionEngine(str(path))
    b.engine = engine
    previous = ExecutionEngine.set_instance(engine)
    try:
        FLAKY_CALLS.clear()
        assert Client(engine=engine).run(rates_job, "2026-01-05", 100.0,
                                         workflow_id="rates") == 108.0
        # a child runs `gated` and is SIGKILLed inside step 2 (it waits for a gate file)
        side, gate = str(tmp / "side.txt"), str(tmp / "gate")
        engine.store.idle()
        child = spawn_child(cw.child_code("run", "crashed", "gated", (side, gate)), path)
        for line in child.stdout:
            if line.startswith(cw.MARK) and json.loads(line[3:])["event"] == "in-step":
                break
        child.kill()  # SIGKILL
        assert child.wait() == -9
        child.stdout.close()
        child.stderr.close()
        b.crashed_pid = child.pid
        Path(gate).write_text("open")
        assert Client(engine=engine).resume("crashed") == [10, 200, 30]
        # a notebook run in an in-process IPython shell
        shell = _new_shell()
        for code in ["%load_ext contd_nb", f"%contd_run nbrun --journal {path}",
                     "tries = []",
                     "%%contd_step load --retry 1 --backoff 1ms\n"
                     "tries.append(1)\n"
                     "if len(tries) == 1:\n"
                     "    raise TimeoutError('warehouse did not answer')\n"
                     "rows = [1, 2, 3]",
                     "%%contd_step total\nsum_rows = sum(rows)",
                     "%%contd_step total --force\nsum_rows = sum(rows)"]:
            result, cap = _cell(shell, code)
            assert result.error_in_exec is None and result.error_before_exec is None, \
                (code, result.error_in_exec, cap.stdout, cap.stderr)
        session = NotebookSession.current
        session.close()
        if session.engine is not engine:
            session.engine.close()
        InteractiveShell.clear_instance()
        engine.lease_manager.acquire("held")
        yield b
    finally:
        ExecutionEngine.set_instance(previous)
        engine.close()
        engine.store.close()
        if saved_env is None:
            os.environ.pop("CONTD_JOURNAL", None)
        else:
            os.environ["CONTD_JOURNAL"] = saved_env


def _dtypes(df) -> list[tuple[str, str]]:
    return [(c, "category" if isinstance(t, pd.CategoricalDtype) else str(t))
            for c, t in df.dtypes.items()]


# -- columns and dtypes ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(COLUMNS))
def test_columns_and_dtypes_are_exactly_the_documented_ones(built, name):
    df = getattr(views, name)(journal=str(built.path))
    assert _dtypes(df) == COLUMNS[name]
    for (view, col), cats in CATEGORIES.items():
        if view == name:
            assert list(df[col].cat.categories) == cats
    doc = getattr(views, name).__doc__
    for col, _ in COLUMNS[name]:
        assert re.search(rf"^\s*{col}\s", doc, re.M), f"{name}: {col} not documented"
    empty = getattr(views, name)("no-such-workflow", journal=str(built.path))
    assert empty.empty and _dtypes(empty) == COLUMNS[name]


# -- values ---------------------------------------------------------------------------------------
def test_workflows(built):
    df = views.workflows(journal=str(built.path))
    rows = df[["workflow_id", "kind", "function", "status", "events", "steps_done",
               "failures", "resumes"]].astype(object).values.tolist()
    assert rows == [
        ["rates", "python", "test_views:rates_job", "completed", 6, 2, 2, 0],
        ["crashed", "python", "crash_workflows:gated", "completed", 6, 3, 0, 1],
        ["nbrun", "notebook", "notebook:nbrun", "running", 8, 2, 1, 0],
    ]
    assert (df["created_at"] <= df["updated_at"]).all()
    assert str(df["created_at"].dt.tz) == "UTC"
    assert df["lease_owner"].isna().all()  # every run released its lease
    assert (df["duration_s"] >= 0).all()


def test_steps(built):
    df = views.steps(journal=str(built.path))
    cols = ["workflow_id", "step_number", "step_name", "cell", "status", "attempts",
            "failures", "runs", "last_attempt", "last_error_type", "first_seq", "last_seq"]
    rows = df[cols].astype(object).where(df[cols].notna(), None).values.tolist()
    assert rows == [
        ["crashed", 1, "plain_step", False, "completed", 1, 0, 1, 1, None, 2, 2],
        ["crashed", 2, "gated_step", False, "completed", 1, 0, 1, 2, None, 4, 4],
        ["crashed", 3, "plain_step", False, "completed", 1, 0, 1, 1, None, 5, 5],
        ["nbrun", 1, "load", True, "completed", 2, 1, 1, 2, "TimeoutError", 2, 4],
        ["nbrun", 3, "total", True, "completed", 2, 0, 2, 1, None, 5, 8],
        ["rates", 1, "fetch_rates", False, "completed", 3, 2, 1, 3, "ConnectionError", 2, 4],
        ["rates", 2, "convert", False, "completed", 1, 0, 1, 1, None, 5, 5],
    ]
    assert (df["completed_at"] >= df["started_at"]).all()
    assert (df["total_duration_ms"] >= df["duration_ms"]).all()
    assert (df["duration_ms"] > 0).all()


def test_attempts_events_and_their_errors(built):
    att = views.attempts("rates", journal=str(built.path))
    assert att[["step_name", "attempt", "outcome", "error_type", "message", "will_retry"]] \
        .astype(object).where(att.notna(), None).values.tolist() == [
        ["fetch_rates", 1, "failed", "ConnectionError", "reset 1", True],
        ["fetch_rates", 2, "failed", "ConnectionError", "reset 2", True],
        ["fetch_rates", 3, "completed", None, None, None],
        ["convert", 1, "completed", None, None, None]]
    assert att["timeout"].astype(object).where(att["timeout"].notna(), None).tolist() == \
        [False, False, None, None]
    assert (att["ended_at"] >= att["started_at"]).all()
    ev = views.events("crashed", journal=str(built.path))
    assert ev[["seq", "kind", "step_number", "step_name", "attempt"]].astype(object) \
        .where(ev[["seq", "kind", "step_number", "step_name", "attempt"]].notna(), None) \
        .values.tolist() == [
        [1, "workflow_started", None, None, None],
        [2, "step_completed", 1, "plain_step", 1],
        [3, "workflow_resumed", None, None, None],
        [4, "step_completed", 2, "gated_step", 2],
        [5, "step_completed", 3, "plain_step", 1],
        [6, "workflow_completed", None, None, None]]
    assert ev["ended_at"].is_monotonic_increasing
    assert ev["lease_token"].tolist() == [1, 1, 2, 2, 2, 2]  # the resume took the lease over
    assert ev.loc[1, "encoding"] == "json" and ev.loc[1, "payload_bytes"] == 2  # "10"
    resumed = json.loads(ev.loc[2, "info"])
    assert resumed["events_replayed"] == 2 and resumed["snapshot_step"] is None
    nb = views.events("nbrun", kind="step_failed", journal=str(built.path))
    assert nb[["step_name", "cell", "error_type", "message", "will_retry", "delay_s"]] \
        .astype(object).values.tolist() == [
        ["load", True, "TimeoutError", "warehouse did not answer", True,
         nb.loc[0, "delay_s"]]]
    assert 0 < nb.loc[0, "delay_s"] < 0.01


def test_leases_restores_snapshots_recovery(built):
    le = views.leases(journal=str(built.path))
    assert le[["workflow_id", "state", "token"]].astype(object).values.tolist() == [
        ["crashed", "released", 2], ["held", "held", 1], ["nbrun", "released", 1],
        ["rates", "released", 1]]
    held = le[le["workflow_id"] == "held"].iloc[0]
    assert held["owner_id"] == built.engine.executor_id and held["pid"] == os.getpid()
    assert 0 < held["expires_in_s"] <= 30
    assert le[le["state"] == "released"]["expires_in_s"].isna().all()
    rs = views.restores(journal=str(built.path))
    assert rs[["workflow_id", "events_replayed", "snapshot_step", "from_snapshot", "purpose",
               "owner_id"]].astype(object).where(rs.notna(), None).values.tolist() == [
        ["crashed", 2, None, False, "resume", built.engine.executor_id]]
    assert rs.loc[0, "duration_ms"] > 0
    assert views.snapshots(journal=str(built.path)).empty
    rec = views.recovery(journal=str(built.path))
    assert rec[["workflow_id", "restores", "resumes", "max_events_replayed", "snapshots"]] \
        .astype(object).values.tolist() == [["crashed", 1, 1, 2, 0]]


def test_event_detail_decodes_payload_and_shows_traceback(built):
    failed = views.event_detail("rates", 2, journal=str(built.path))
    assert (failed["kind"], failed["step_name"], failed["attempt"]) == \
        ("step_failed", "fetch_rates", 1)
    assert failed["traceback"].rstrip().endswith("ConnectionError: reset 1")
    assert "in fetch_rates" in failed["traceback"]
    assert failed["payload_preview"] is None
    done = views.event_detail("rates", 4, journal=str(built.path))
    assert done["payload_preview"] == "{'day': '2026-01-05', 'eur_usd': 1.08}"
    assert done["started_at"].tzinfo is dt.UTC
    cell = views.event_detail("nbrun", 4, journal=str(built.path))
    assert cell["kind"] == "step_completed"
    assert cell["payload_preview"].splitlines()[0] == "variables:"
    assert re.search(r"^  rows: \d+ bytes \(blob [0-9a-f]{12}\)$", cell["payload_preview"],
                     re.M)
    short = views.event_detail("rates", 4, max_chars=10, journal=str(built.path))
    assert short["payload_preview"] == "{'day': '2... (28 more characters)"
    with pytest.raises(KeyError):
        views.event_detail("rates", 99, journal=str(built.path))


# -- filters --------------------------------------------------------------------------------------
def test_filters(built):
    j = str(built.path)
    assert views.workflows(status="running", journal=j)["workflow_id"].tolist() == ["nbrun"]
    assert views.workflows(["rates", "nbrun"], journal=j)["workflow_id"].tolist() == \
        ["rates", "nbrun"]
    assert views.steps(status="failed", journal=j).empty
    assert views.steps("rates", journal=j)["step_name"].tolist() == ["fetch_rates", "convert"]
    assert len(views.attempts(status="failed", journal=j)) == 3
    assert views.attempts(step="load", journal=j)["attempt"].tolist() == [1, 2]
    assert views.events("nbrun", kind=["step_started"], journal=j)["step_name"].tolist() == \
        ["load", "total", "total"]
    assert views.events(step="convert", journal=j)["seq"].tolist() == [5]
    assert views.leases(status="held", journal=j)["workflow_id"].tolist() == ["held"]
    assert len(views.restores(status="resume", journal=j)) == 1
    assert views.restores(status="inspect", journal=j).empty
    # time: everything is before "now", nothing after it
    ev = views.events(journal=j)
    times = ev["ended_at"].sort_values().reset_index(drop=True)
    k = len(times) // 2
    middle = times[k - 1] + (times[k] - times[k - 1]) / 2  # between two events
    after = views.events(since=middle, journal=j)
    before = views.events(until=middle, journal=j)
    assert (len(before), len(after)) == (k, len(ev) - k)
    assert (after["ended_at"] > middle).all() and (before["ended_at"] < middle).all()
    assert views.events(since=dt.timedelta(hours=1), journal=j).shape == ev.shape
    assert views.events(since=time.time() + 3600, journal=j).empty
    assert views.workflows(until="2000-01-01", journal=j).empty
    naive = middle.tz_convert("UTC").tz_localize(None).to_pydatetime()
    assert len(views.events(since=naive, journal=j)) == len(after)  # naive means UTC
    with pytest.raises(ConfigurationError, match="not one of"):
        views.steps(status="done", journal=j)
    with pytest.raises(ConfigurationError, match="not a time"):
        views.events(since="yesterday-ish", journal=j)
    with pytest.raises(ConfigurationError, match="does not exist"):
        views.workflows(journal=str(built.tmp / "missing.duckdb"))
    with pytest.raises(ConfigurationError, match="not both"):
        views.workflows(journal=j, engine=built.engine)


def test_memory_journal_is_refused(memory_engine):
    for view in (views.workflows, views.steps, views.events, views.leases, views.attempts,
                 views.restores):
        with pytest.raises(ConfigurationError, match="need a DuckDB journal"):
            view(engine=memory_engine)
    with pytest.raises(ConfigurationError, match="need a DuckDB journal"):
        views.workflows()  # the default engine is the memory one here
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        views.dashboard(engine=memory_engine)


def test_default_journal_is_the_default_engines(engine):
    FLAKY_CALLS.clear()
    Client(engine=engine).run(rates_job, "d", 1.0, workflow_id="default-one")
    assert views.workflows()["workflow_id"].tolist() == ["default-one"]
    assert views.workflows(engine=engine)["workflow_id"].tolist() == ["default-one"]


# -- another process on the same journal ----------------------------------------------------------
def test_views_while_another_process_runs_a_workflow(tmp_path):
    """The child runs 150 steps (a journal commit each) while this process reads the views
    in a loop; both progress: the child completes with the right result, and the reads saw
    the workflow at several different points of its progress."""
    path = tmp_path / "journal.duckdb"
    ExecutionEngine(str(path)).store.close()  # create it
    side = str(tmp_path / "side.txt")
    steps = 150
    child = spawn_child(cw.child_code("run", "loop", "fast_loop", (side, steps)), path)
    seen: list[int] = []
    done = threading.Event()
    out: list[str] = []

    def drain() -> None:
        out.extend(child.stdout)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    while not done.is_set():
        seen.append(len(views.steps("loop", journal=str(path))))
        views.leases(journal=str(path))
    assert child.wait() == 0, child.stderr.read()
    child.stderr.close()
    events = [json.loads(x[3:]) for x in out if x.startswith(cw.MARK)]
    expected = 0
    for n in range(1, steps + 1):
        expected = cw.mix(n, expected)
    assert events[-1]["event"] == "done" and events[-1]["result"] == expected
    assert len(cw.read_side(side)) == steps  # every step ran once
    assert seen == sorted(seen)  # never went backwards
    assert len({s for s in seen if 0 < s < steps}) >= 2, seen  # reads interleaved with writes
    final = views.steps("loop", journal=str(path))
    assert len(final) == steps and (final["status"] == "completed").all()
    assert views.workflows("loop", journal=str(path))["status"].tolist() == ["completed"]


# -- widgets --------------------------------------------------------------------------------------
def test_journal_browser(built):
    b = widgets.JournalBrowser("rates", journal=str(built.path))
    try:
        assert [o[1] for o in b.workflows.options] == ["rates", "crashed", "nbrun"]
        assert b.workflows.value == "rates"
        assert [o[0] for o in b.steps.options] == [
            "(all events of the workflow)",
            "#1 fetch_rates  [completed]  3 attempt(s), last error ConnectionError",
            "#2 convert  [completed]  1 attempt(s)"]
        assert b.steps.value == (2, 4, "fetch_rates")
        assert [o[0] for o in b.events.options] == [
            "seq 2  step_failed  attempt 1  ConnectionError: reset 1",
            "seq 3  step_failed  attempt 2  ConnectionError: reset 2",
            "seq 4  step_completed  attempt 3"]
        assert b.events.value == 4
        assert "{&#x27;day&#x27;: &#x27;2026-01-05&#x27;, &#x27;eur_usd&#x27;: 1.08}" \
            in b.detail.value
        b.events.value = 2
        assert "class='contd-traceback'" in b.detail.value
        assert "ConnectionError: reset 1" in b.detail.value
        b.steps.value = None  # all events of the workflow
        assert [o[1] for o in b.events.options] == [1, 2, 3, 4, 5, 6]
        b.workflows.value = "nbrun"
        assert [o[0] for o in b.steps.options][1:] == [
            "#1 load  [completed]  2 attempt(s), last error TimeoutError",
            "#3 total  [completed]  2 attempt(s)"]
        assert b.children[1] is b.workflows and b.children[4] is b.detail
    finally:
        b.close()


def test_lease_panel_countdown_stops_on_close(built):
    panel = widgets.LeasePanel(journal=str(built.path), tick_s=0.05, reread_s=0.2)
    assert panel.timer_running
    assert list(panel.force_buttons) == ["held"]
    assert re.fullmatch(r"expires in \d+s", panel.countdowns["held"].value)
    panel.close()
    assert not panel.timer_running
    assert panel.comm is None


def test_force_release_asks_to_confirm_then_releases(tmp_path):
    path = tmp_path / "journal.duckdb"
    holder = ExecutionEngine(str(path))
    token = holder.lease_manager.acquire("stuck")
    panel = widgets.LeasePanel(journal=str(path))
    try:
        box = panel._confirm_boxes["stuck"]
        assert box.layout.display == "none"
        panel.force_buttons["stuck"].click()
        assert box.layout.display == "flex"
        assert holder.store.get_lease("stuck").owner_id == holder.executor_id  # not yet
        panel.refresh()  # the periodic re-read rebuilds the rows: the question stays open
        assert panel._confirm_boxes["stuck"].layout.display == "flex"
        panel.cancel_buttons["stuck"].click()
        assert panel._confirm_boxes["stuck"].layout.display == "none"
        panel.refresh()
        assert panel._confirm_boxes["stuck"].layout.display == "none"
        panel.force_buttons["stuck"].click()
        panel.confirm_buttons["stuck"].click()
        lease = holder.store.get_lease("stuck")
        assert (lease.owner_id, lease.token) == (None, token + 1)
        assert "force-released stuck" in panel.status.value
        assert list(panel.force_buttons) == ["stuck"] and "stuck" not in panel._expiry
        assert views.leases(journal=str(path))["state"].tolist() == ["released"]
    finally:
        panel.close()
        holder.close()
        holder.store.close()


def test_dashboard_widgets_and_the_magic(built):
    d = views.dashboard("crashed", journal=str(built.path), widgets=True)
    try:
        assert d.titles == ("Journal", "Leases", "Retries", "Recovery")
        assert [type(c).__name__ for c in d.children] == [
            "JournalBrowser", "LeasePanel", "RetryTimeline", "RecoveryDashboard"]
        assert d.browser.workflows.value == "crashed"
        assert d.timeline.choose.value == "crashed"
        assert d.timeline.image.value[:8] == b"\x89PNG\r\n\x1a\n"
        assert d.recovery.image.value[:8] == b"\x89PNG\r\n\x1a\n"
        assert "retry_rate" in d.timeline.table.value
        d.timeline.choose.value = ""  # all workflows
        assert "fetch_rates" in d.timeline.table.value
    finally:
        d.close()
    assert not d.leases.timer_running


def test_html_fallback_without_a_widget_frontend(built):
    assert not widgets.has_widget_frontend()  # no kernel in this process
    report = views.dashboard(journal=str(built.path))
    assert isinstance(report, widgets.StaticReport)
    assert repr(report) == ("contd_nb journal: 3 workflow(s), 7 step(s), 3 failed attempt(s), "
                            "1 lease(s) held, 1 restore(s)")
    html_text = report._repr_html_()
    for title in ("Workflows", "Steps", "Leases", "Failed attempts", "Retry rate by step",
                  "Recovery"):
        assert f"<h4>{title}</h4>" in html_text
    assert html_text.count("<img src='data:image/png;base64,") == 2
    assert "warehouse did not answer" in html_text
    shell = _new_shell()
    try:
        result, cap = _cell(shell, f"%load_ext contd_nb\n%contd_inspect crashed --journal "
                                   f"{built.path}")
        assert result.error_in_exec is None, result.error_in_exec
        assert isinstance(result.result, widgets.StaticReport)
        assert result.result.workflows["workflow_id"].tolist() == ["crashed"]
        data, _ = shell.display_formatter.format(result.result)  # what a frontend gets
        assert data["text/html"].startswith("<style>")
        assert data["text/plain"] == repr(result.result)
    finally:
        InteractiveShell.clear_instance()


# -- notebook 04 under nbval ----------------------------------------------------------------------
def test_notebook_04_passes_nbval(tmp_path):
    pytest.importorskip("nbval")
    journal = tmp_path / "journal.duckdb"
    env = child_env(journal)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "notebooks/04-inspect.ipynb",
         "--nbval-sanitize-with", "notebooks/nbval_sanitize.cfg", "-p", "no:cacheprovider",
         "--nbval-current-env", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "04-inspect.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    summary = re.search(r"^=*\s*(\d+) passed in [\d.]+s", out, re.M)
    assert summary is not None and int(summary.group(1)) == len(cells), out[-3000:]
    ignored = [c for c in cells if "nbval-ignore-output" in c.metadata.get("tags", [])]
    assert all(not c.outputs for c in ignored)
    assert len(ignored) <= 6
    assert {"rates-2026-01-05", "batch-7", "inspect-demo", "export-9"} == set(
        views.leases(journal=str(journal))["workflow_id"])
    rs = views.restores(journal=str(journal))
    assert rs[["workflow_id", "events_replayed", "snapshot_step"]].astype(object) \
        .values.tolist() == [["batch-7", 1, 10]]
