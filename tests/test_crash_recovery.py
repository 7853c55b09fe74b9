"""Crash torture with real processes: SIGKILL a child running a 20-step workflow at a random
moment, resume it in a fresh child, and check the result, the side effects and the journal.

Semantics under test (DESIGN.md "Semantics"): completed steps run exactly once, the in-flight
step at least once and at most twice, the journal stays intact (checksums, seq 1..n, one
completion per step, a WorkflowResumed for every recovery), and a step that kills its own
process every time ends in TooManyAttempts after ``max_attempts`` recoveries.

Children come from tests/crash_workflows.py. Set CRASH_SEED to replay a run's kill schedule.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import crash_workflows as cw
import pytest

from contd_nb import Client, ExecutionEngine
from contd_nb.core.events import (
    StepCompleted,
    StepFailed,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowResumed,
    WorkflowStarted,
)

N = cw.TORTURE_STEPS
EXPECTED = cw.expected_torture(N)


@contextmanager
def open_journal(path: Path):
    """An engine of this (pytest) process on the journal; lets go of the file afterwards."""
    eng = ExecutionEngine(str(path))
    try:
        yield eng
    finally:
        eng.close()
        eng.store.close()


def calibrate(journal: Path, workdir: Path, runs: int = 2) -> float:
    """Run the workflow uninterrupted in children; returns the last run's duration as the
    parent sees it (from the child's 'ready' to its 'done') and checks those runs."""
    for i in range(runs):
        wid = f"calibration-{i}"
        side = workdir / f"{wid}.side"
        child = cw.Child(cw.child_code("run", wid, "torture", (str(side),)), journal, workdir)
        try:
            child.expect("ready")
            t0 = time.monotonic()
            done = child.expect("done", 60)
            duration = time.monotonic() - t0
            rc = child.wait(60)
        finally:
            child.close()
        assert rc == 0, child.describe()
        assert done["result"] == EXPECTED
        assert Counter(cw.read_side(side)) == {f"step-{n}": 1 for n in range(1, N + 1)}
    return duration


def in_process_reference(workdir: Path) -> dict:
    """An uninterrupted run in this process on a separate journal."""
    side = workdir / "reference.side"
    with open_journal(workdir / "reference.duckdb") as eng:
        result = Client(engine=eng).run(cw.torture, str(side), workflow_id="reference")
    assert Counter(cw.read_side(side)) == {f"step-{n}": 1 for n in range(1, N + 1)}
    return result


def run_trial(journal: Path, workdir: Path, wid: str, delay: float, how: str,
              context: str) -> dict:
    """One kill-and-resume trial; asserts everything; returns what happened."""
    side = workdir / f"{wid}.side"
    first = cw.Child(cw.child_code("run", wid, "torture", (str(side),)), journal, workdir)
    try:
        first.expect("ready")
        time.sleep(delay)
        first.signal(signal.SIGKILL)  # not reaped yet, so the pid is still ours
        rc1 = first.wait(30)
    finally:
        first.close()
    assert rc1 in (0, -signal.SIGKILL), f"{context}: {first.describe()}"

    # what the crash left behind
    with open_journal(journal) as eng:
        record = eng.store.get_workflow(wid)
        before = eng.journal.get_events(wid)  # verifies every checksum
    lines_before = cw.read_side(side)
    done_before = [e.step_number for e in before if isinstance(e, StepCompleted)]
    k = len(done_before)
    finished_before = any(isinstance(e, WorkflowCompleted) for e in before)
    ctx = f"{context}; first rc={rc1}, k={k}, events before={[e.kind for e in before]}"
    assert done_before == list(range(1, k + 1)), ctx
    assert [e.seq for e in before] == list(range(1, len(before) + 1)), ctx
    if rc1 == 0:
        assert finished_before, ctx
    counts_before = Counter(lines_before)
    inflight = f"step-{k + 1}"
    assert set(counts_before) <= {f"step-{n}" for n in range(1, k + 2)}, ctx
    for n in range(1, k + 1):
        assert counts_before[f"step-{n}"] == 1, ctx  # journaled steps ran exactly once
    assert counts_before[inflight] <= 1, ctx

    # recover in a fresh process
    second = cw.Child(cw.child_code(how, wid, "torture", (str(side),)), journal, workdir)
    try:
        done = second.expect("done", 60)
        rc2 = second.wait(60)
    finally:
        second.close()
    assert rc2 == 0, f"{ctx}: {second.describe()}"
    assert done["result"] == EXPECTED, ctx
    if how == "resume-or-run":
        assert done["mode"] == ("resume" if record is not None else "run"), ctx

    # side effects: completed before the kill exactly once, the in-flight step at most twice
    counts = Counter(cw.read_side(side))
    assert set(counts) == {f"step-{n}" for n in range(1, N + 1)}, ctx
    for n in range(1, N + 1):
        name = f"step-{n}"
        want = counts_before[name] + 1 if n == k + 1 else 1
        assert counts[name] == want, f"{ctx}: {name} ran {counts[name]} times, {counts}"
    assert counts.get(inflight, 0) <= 2, ctx

    # the journal
    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)  # checksums verified
        status = Client(engine=eng).status(wid)
        try:
            result = Client(engine=eng).result(wid)
        except Exception as e:  # noqa: BLE001 - compared below
            result = f"{type(e).__name__}: {e}"
    kinds = [e.kind for e in events]
    ctx = f"{ctx}; events after={kinds}"
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), ctx
    # resuming never rewrites history: what the crash left is a prefix of the final journal
    assert [(e.seq, e.kind, e.step_number, e.lease_token) for e in events[:len(before)]] == \
        [(e.seq, e.kind, e.step_number, e.lease_token) for e in before], ctx
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [e.step_number for e in completed] == list(range(1, N + 1)), ctx
    assert [e.step_name for e in completed] == ["torture_step"] * N, ctx
    assert [e.value() for e in completed] == EXPECTED["results"], ctx
    recovered_step = k + 1 if (before and not finished_before and k < N) else None
    for e in completed:
        assert e.attempt == (2 if e.step_number == recovered_step else 1), \
            f"{ctx}: step {e.step_number} attempt {e.attempt}"
    assert not [e for e in events if isinstance(e, StepFailed)], ctx
    finals = [e for e in events if isinstance(e, WorkflowCompleted)]
    assert len(finals) == 1 and events[-1] is finals[0], ctx
    assert finals[0].value() == EXPECTED, ctx
    resumed = [e for e in events if isinstance(e, WorkflowResumed)]
    if finished_before:
        assert len(events) == len(before), ctx  # nothing ran or was written again
        assert not resumed, ctx
    elif record is not None:  # the kill came after the start
        assert len(resumed) == 1, ctx
        assert resumed[0].seq == len(before) + 1, ctx
        assert resumed[0].info["steps_completed"] == k, ctx
    else:  # killed before the workflow existed: the second process started it
        assert not before and not resumed, ctx
        assert isinstance(events[0], WorkflowStarted), ctx
    if not (before or record):
        assert isinstance(events[0], WorkflowStarted), ctx
    tokens = [e.lease_token for e in events]
    assert all(t is not None for t in tokens), ctx
    assert tokens == sorted(tokens), f"{ctx}: lease tokens went down: {tokens}"
    if resumed and before:  # the recovering executor holds a newer fencing token
        assert resumed[0].lease_token > before[-1].lease_token, ctx
    assert status.status == "completed", ctx
    assert status.steps_completed == N, ctx
    assert result == EXPECTED, ctx
    return {"k": k, "rc": rc1, "duplicate": counts[inflight] == 2 if k < N else False,
            "started": bool(record), "finished_before": finished_before}


def kill_schedule(rng: random.Random, trials: int, duration: float) -> list[float]:
    """Delays after 'ready': every 10th trial very early, every 10th+1 very late, the rest
    anywhere within the run's expected duration."""
    out = []
    for i in range(trials):
        if i % 10 == 0:
            out.append(rng.uniform(0.0, 0.03 * duration))
        elif i % 10 == 1:
            out.append(rng.uniform(0.9 * duration, 1.15 * duration))
        else:
            out.append(rng.uniform(0.0, duration))
    return out


def torture(tmp_path: Path, trials: int, delays_for) -> list[dict]:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000_007))
    rng = random.Random(seed)
    journal = tmp_path / "contd" / "journal.duckdb"  # one shared file, distinct workflow ids
    assert in_process_reference(tmp_path) == EXPECTED
    duration = calibrate(journal, tmp_path)
    delays = delays_for(rng, trials, duration)
    outcomes, failures = [], []
    for i, delay in enumerate(delays):
        how = "resume-or-run" if i % 2 == 0 else "run"
        context = (f"trial {i} (CRASH_SEED={seed}, delay {delay * 1000:.1f} ms of "
                   f"{duration * 1000:.0f} ms, recover by {how})")
        try:
            outcomes.append(run_trial(journal, tmp_path, f"torture-{i}", delay, how, context))
        except AssertionError as e:  # go on: the summary shows every failed trial
            failures.append(str(e)[:3000])
    ks = Counter(o["k"] for o in outcomes)
    print(f"\nCRASH_SEED={seed} duration={duration * 1000:.0f}ms steps completed at the kill: "
          f"{sorted(ks.items())}; in-flight step ran twice in "
          f"{sum(o['duplicate'] for o in outcomes)} trials; finished before the kill in "
          f"{sum(o['finished_before'] for o in outcomes)}; killed before the start in "
          f"{sum(not o['started'] for o in outcomes)}; failed trials: {len(failures)}")
    assert not failures, (f"{len(failures)} of {trials} trials failed:\n\n"
                          + "\n\n".join(failures))
    return outcomes


@pytest.mark.timeout(120)
def test_sigkill_then_resume_three_trials(tmp_path):
    """Short variant: one very early, one mid-run and one late kill."""
    def delays(rng, trials, duration):
        return [rng.uniform(0.0, 0.03 * duration), rng.uniform(0.3 * duration, 0.7 * duration),
                rng.uniform(0.85 * duration, 1.0 * duration)]

    outcomes = torture(tmp_path, 3, delays)
    assert len(outcomes) == 3


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_then_resume_torture(tmp_path):
    outcomes = torture(tmp_path, 60, kill_schedule)
    mid_run = [o for o in outcomes if 0 < o["k"] < N]
    # the schedule must really land inside runs, or the test proves nothing
    assert len(mid_run) >= 15, outcomes


@pytest.mark.timeout(120)
@pytest.mark.parametrize("crash_at", [1, 3])
def test_step_that_kills_its_process_every_time(tmp_path, crash_at):
    """RetryPolicy(max_attempts=3): three executions die inside the step; the fourth does not
    run it again and fails the workflow with TooManyAttempts(last_error=StepInterrupted)."""
    journal = tmp_path / "journal.duckdb"
    side = tmp_path / "side.txt"
    wid = f"suicidal-{crash_at}"
    args = (str(side), crash_at)
    earlier = [f"step-{n}" for n in range(1, crash_at)]
    for execution in (1, 2, 3):
        how = "run" if execution == 1 else "resume"
        child = cw.Child(cw.child_code(how, wid, "suicidal", args), journal, tmp_path)
        rc = child.finish(60)
        assert rc == -signal.SIGKILL, child.describe()
        assert child.last("done") is None and child.last("error") is None, child.describe()
        assert cw.read_side(side) == earlier + [
            f"crash-{crash_at}-attempt-{a}" for a in range(1, execution + 1)]

    child = cw.Child(cw.child_code("resume", wid), journal, tmp_path)
    rc = child.finish(60)
    err = child.last("error")
    assert rc == 3 and err is not None, child.describe()
    assert err["type"] == "TooManyAttempts", err
    assert err["attempts"] == 3, err
    assert err["step_name"] == "suicide_step", err
    assert err["last_error_type"] == "StepInterrupted", err
    assert err["message"].startswith(
        "Step 'suicide_step' failed after 3 attempts; last error: StepInterrupted: "
        "Step 'suicide_step' attempt 3 was interrupted"), err
    # the fourth execution did not run the step again, nor anything after it
    assert cw.read_side(side) == earlier + [
        f"crash-{crash_at}-attempt-{a}" for a in (1, 2, 3)]

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        client = Client(engine=eng)
        status = client.status(wid)
        with pytest.raises(Exception) as failed:
            client.result(wid)
    kinds = [e.kind for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), kinds
    assert isinstance(events[0], WorkflowStarted), kinds
    assert [e.step_number for e in events if isinstance(e, StepCompleted)] == \
        list(range(1, crash_at)), kinds
    assert len([e for e in events if isinstance(e, WorkflowResumed)]) == 3, kinds
    assert isinstance(events[-1], WorkflowFailedEvent), kinds
    assert events[-1].info["error_type"] == "TooManyAttempts", events[-1].info
    assert status.status == "failed", status
    assert "TooManyAttempts" in (status.error or ""), status
    assert type(failed.value).__name__ == "WorkflowFailed", failed.value
    assert "failed: TooManyAttempts: Step 'suicide_step' failed after 3 attempts" in \
        str(failed.value)


@pytest.mark.timeout(60)
def test_kill_between_final_event_and_status_update(tmp_path):
    """The process dies right after committing workflow_completed, before the workflow's
    status row says completed. Recovering must return the journaled result without running
    anything, and leave the workflow completed (status and Client.result)."""
    journal = tmp_path / "journal.duckdb"
    side = tmp_path / "side.txt"
    wid = "dies-at-the-end"
    first = cw.Child(cw.child_code("run", wid, "torture", (str(side),),
                                   die_after_final_write=N), journal, tmp_path)
    assert first.finish(60) == -signal.SIGKILL, first.describe()
    with open_journal(journal) as eng:
        before = eng.journal.get_events(wid)
        assert eng.store.get_workflow(wid).status == "running"  # the row lags the events
    assert isinstance(before[-1], WorkflowCompleted), [e.kind for e in before]

    second = cw.Child(cw.child_code("resume", wid), journal, tmp_path)
    done = second.expect("done")
    assert second.finish(60) == 0, second.describe()
    assert done["result"] == EXPECTED
    assert Counter(cw.read_side(side)) == {f"step-{n}": 1 for n in range(1, N + 1)}

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        client = Client(engine=eng)
        status = client.status(wid)
        try:
            result = client.result(wid)
        except Exception as e:  # noqa: BLE001 - compared below
            result = f"{type(e).__name__}: {e}"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == [e.kind for e in before]  # nothing ran again
    assert status.status == "completed", status
    assert result == EXPECTED
