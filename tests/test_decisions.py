"""The engine's decisions as pure functions: retry/backoff, lease acquisition, replay folding
and step matching. No journal, no threads: inputs in, decision out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from contd_nb.core.leases import decide_acquire, owner_is_dead, process_start_time
from contd_nb.core.replay import (
    CompletedStep,
    FoldedState,
    ReplayMatch,
    check_all_replayed,
    fold,
    match_step,
)
from contd_nb.core.retry import DEFAULT_POLICY, RetryDecision, backoff_delay, decide, is_retryable
from contd_nb.persistence.base import EventRecord, LeaseRecord
from contd_nb.sdk.config import RetryPolicy
from contd_nb.sdk.errors import NonDeterministicReplay, StepTimeout

ALMOST_ONE = 1 - 1e-12

# -- retry: backoff_delay -------------------------------------------------------------------


def test_backoff_grows_exponentially_with_base():
    p = RetryPolicy(backoff_initial=0.5, backoff_base=3, backoff_max=1000, backoff_jitter=0)
    assert [backoff_delay(p, n, 0.5) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]
    p2 = RetryPolicy(backoff_initial=1, backoff_base=2, backoff_max=1000, backoff_jitter=0)
    assert [backoff_delay(p2, n, 0.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 16]


def test_backoff_base_one_is_constant():
    p = RetryPolicy(backoff_initial=0.25, backoff_base=1, backoff_jitter=0)
    assert {backoff_delay(p, n, 0.3) for n in range(1, 20)} == {0.25}


def test_backoff_is_capped_at_backoff_max():
    p = RetryPolicy(backoff_initial=1, backoff_base=2, backoff_max=10, backoff_jitter=0)
    assert [backoff_delay(p, n, 0.5) for n in (3, 4, 5, 6, 50)] == [4, 8, 10, 10, 10]
    # an exponent far beyond float range still answers backoff_max
    assert backoff_delay(p, 10_000, 0.5) == 10


def test_backoff_jitter_bounds():
    p = RetryPolicy(backoff_initial=4, backoff_base=2, backoff_max=100, backoff_jitter=0.5)
    # delay 8 after the 2nd failure: jitter 0.5 spreads it over [6, 10)
    assert backoff_delay(p, 2, 0.0) == pytest.approx(6.0)
    assert backoff_delay(p, 2, 0.5) == pytest.approx(8.0)
    hi = backoff_delay(p, 2, ALMOST_ONE)
    assert 9.999 < hi < 10.0
    # full jitter: from 50% below to 50% above
    full = RetryPolicy(backoff_initial=2, backoff_base=2, backoff_jitter=1.0)
    assert backoff_delay(full, 1, 0.0) == pytest.approx(1.0)
    assert backoff_delay(full, 1, ALMOST_ONE) == pytest.approx(3.0)
    # jitter applies after the cap
    capped = RetryPolicy(backoff_initial=1, backoff_base=2, backoff_max=10, backoff_jitter=0.5)
    assert backoff_delay(capped, 30, 0.0) == pytest.approx(7.5)
    assert backoff_delay(capped, 30, ALMOST_ONE) == pytest.approx(12.5)


def test_backoff_base_zero_or_initial_zero_means_no_wait():
    assert backoff_delay(RetryPolicy(backoff_base=0), 1, 0.9) == 0.0
    assert backoff_delay(RetryPolicy(backoff_base=0), 7, 0.9) == 0.0
    assert backoff_delay(RetryPolicy(backoff_initial=0), 3, 0.9) == 0.0


def test_default_policy_values():
    assert DEFAULT_POLICY.max_attempts == 3
    assert [backoff_delay(DEFAULT_POLICY, n, 0.5) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


# -- retry: is_retryable --------------------------------------------------------------------


def test_is_retryable_default_is_any_exception():
    p = RetryPolicy()
    assert is_retryable(p, ValueError("x"))
    assert is_retryable(p, StepTimeout("s", 1))


def test_is_retryable_with_retryable_exceptions():
    p = RetryPolicy(retryable_exceptions=[ConnectionError, TimeoutError])
    assert is_retryable(p, ConnectionError())
    assert is_retryable(p, ConnectionRefusedError())  # subclass
    assert is_retryable(p, StepTimeout("s", 1))        # a TimeoutError
    assert not is_retryable(p, ValueError())
    assert not is_retryable(p, KeyError())


def test_non_retryable_exceptions_win():
    p = RetryPolicy(retryable_exceptions=[OSError], non_retryable_exceptions=[FileNotFoundError])
    assert is_retryable(p, ConnectionError())
    assert not is_retryable(p, FileNotFoundError())
    p2 = RetryPolicy(non_retryable_exceptions=[KeyError])
    assert is_retryable(p2, ValueError())
    assert not is_retryable(p2, KeyError())


def test_keyboard_interrupt_is_never_retried():
    p = RetryPolicy(retryable_exceptions=[BaseException])
    assert not is_retryable(p, KeyboardInterrupt())
    assert not is_retryable(p, SystemExit(1))
    assert not decide(p, KeyboardInterrupt(), 1, 0.5).retry


# -- retry: decide --------------------------------------------------------------------------


def test_decide_without_policy():
    assert decide(None, ValueError(), 1) == RetryDecision(False, 0.0, "no retry policy")


def test_decide_retries_until_max_attempts():
    p = RetryPolicy(max_attempts=3, backoff_initial=1, backoff_jitter=0)
    d1 = decide(p, ValueError(), 1, 0.5)
    assert d1 == RetryDecision(True, 1.0, "attempt 1 of 3 failed")
    d2 = decide(p, ValueError(), 2, 0.5)
    assert d2 == RetryDecision(True, 2.0, "attempt 2 of 3 failed")
    d3 = decide(p, ValueError(), 3, 0.5)
    assert d3 == RetryDecision(False, 0.0, "3 of 3 attempts used")
    assert decide(p, ValueError(), 4, 0.5).retry is False


def test_decide_single_attempt_policy_never_retries():
    assert decide(RetryPolicy(max_attempts=1), ValueError(), 1, 0.5) == \
        RetryDecision(False, 0.0, "1 of 1 attempts used")


def test_decide_not_retryable_reason_names_the_type():
    p = RetryPolicy(retryable_exceptions=[ConnectionError])
    assert decide(p, ValueError(), 1, 0.5) == \
        RetryDecision(False, 0.0, "ValueError is not retryable")


def test_decide_delay_uses_jitter_draw():
    p = RetryPolicy(max_attempts=5, backoff_initial=2, backoff_jitter=0.5)
    assert decide(p, ValueError(), 2, 0.0).delay == pytest.approx(3.0)
    d = decide(p, ValueError(), 2)  # random draw: within the bounds
    assert 3.0 <= d.delay < 5.0 and d.retry


# -- leases ---------------------------------------------------------------------------------

NOW = 1_700_000_000.0
HOST = socket.gethostname()


def lease(owner="other", expires_at=NOW + 10, host=HOST, pid=None, pid_started=None,
          token=4) -> LeaseRecord:
    return LeaseRecord("wf-1", owner, token, expires_at, host, pid, pid_started, NOW - 5,
                       NOW - 1)


def test_decide_acquire_no_row_inserts():
    assert decide_acquire(None, "me", NOW, False) == "insert"


def test_decide_acquire_released_lease_is_taken():
    assert decide_acquire(lease(owner=None), "me", NOW, False) == "take"


def test_decide_acquire_expired_lease_is_taken():
    assert decide_acquire(lease(expires_at=NOW - 0.001), "me", NOW, False) == "take"
    assert decide_acquire(lease(expires_at=NOW), "me", NOW, False) == "take"


def test_decide_acquire_own_lease_is_taken():
    assert decide_acquire(lease(owner="me"), "me", NOW, False) == "take"


def test_decide_acquire_dead_owner_is_taken_before_expiry():
    assert decide_acquire(lease(expires_at=NOW + 25), "me", NOW, True) == "take"


def test_decide_acquire_live_other_owner_is_locked():
    assert decide_acquire(lease(expires_at=NOW + 0.001), "me", NOW, False) == "locked"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_owner_is_dead_false_for_this_live_process():
    me = lease(pid=os.getpid(), pid_started=process_start_time(os.getpid()))
    assert owner_is_dead(me, HOST) is False
    assert owner_is_dead(lease(pid=os.getpid(), pid_started=None), HOST) is False


def test_owner_is_dead_true_for_a_pid_that_does_not_exist():
    assert owner_is_dead(lease(pid=_dead_pid(), pid_started=12345.0), HOST) is True


def test_owner_is_dead_true_when_the_pid_was_reused():
    started = process_start_time(os.getpid())
    assert started is not None
    assert owner_is_dead(lease(pid=os.getpid(), pid_started=started - 1), HOST) is True


def test_owner_is_dead_false_on_another_host_or_without_pid():
    assert owner_is_dead(lease(pid=_dead_pid(), host="some-other-host"), HOST) is False
    assert owner_is_dead(lease(pid=None), HOST) is False
    assert owner_is_dead(lease(pid=_dead_pid(), host=None), HOST) is False


# -- replay: fold ---------------------------------------------------------------------------


def rec(seq, kind, step_number=None, step_name=None, attempt=None, info=None,
        encoding=None, payload=None) -> EventRecord:
    return EventRecord("wf-1", seq, kind, step_number, step_name, attempt, None, float(seq),
                       json.dumps(info) if info is not None else None, encoding, payload,
                       "x", 1)


def done(seq, n, name, code="h", attempt=1, value=None) -> EventRecord:
    return rec(seq, "step_completed", n, name, attempt, {"code_hash": code}, "json",
               json.dumps(value if value is not None else n).encode())


def failed(seq, n, name, attempt, error_type="ValueError", message="bad") -> EventRecord:
    return rec(seq, "step_failed", n, name, attempt, {"error_type": error_type,
                                                      "message": message})


def test_fold_collects_completions():
    state = fold(FoldedState(), [rec(1, "workflow_started"), done(2, 1, "a", "h1"),
                                 done(3, 2, "b", "h2", attempt=3, value=[1, 2])])
    assert [(s.number, s.name, s.code_hash, s.seq, s.attempt) for s in state.steps] == \
        [(1, "a", "h1", 2, 1), (2, "b", "h2", 3, 3)]
    assert state.steps[1].payload == b"[1, 2]" and state.steps[1].encoding == "json"
    assert state.step_number == 2
    assert state.last_seq == 3
    assert state.status == "running"


def test_fold_failures_are_pending_until_a_completion_resets_them():
    state = fold(FoldedState(), [rec(1, "workflow_started"), done(2, 1, "a"),
                                 failed(3, 2, "b", 1, "ConnectionError", "down"),
                                 failed(4, 2, "b", 2, "TimeoutError", "slow")])
    assert [(f["attempt"], f["step_name"], f["error_type"], f["message"])
            for f in state.pending_failures] == \
        [(1, "b", "ConnectionError", "down"), (2, "b", "TimeoutError", "slow")]
    fold(state, [done(5, 2, "b", attempt=3)])
    assert state.pending_failures == []
    assert state.step_number == 2 and state.last_seq == 5


def test_fold_counts_alive_executions():
    state = fold(FoldedState(), [rec(1, "workflow_started")])
    assert state.alive_executions == 1
    fold(state, [rec(2, "workflow_resumed")])   # the first one died while pending
    assert state.alive_executions == 2
    fold(state, [rec(3, "workflow_resumed")])
    assert state.alive_executions == 3
    fold(state, [done(4, 1, "a")])              # a completion: only its execution counts
    assert state.alive_executions == 1
    fold(state, [failed(5, 2, "b", 1)])         # a journaled failure is not an execution
    assert state.alive_executions == 1
    fold(state, [rec(6, "workflow_resumed")])
    assert state.alive_executions == 2
    fold(state, [rec(7, "workflow_failed", info={"error_type": "TooManyAttempts"})])
    assert (state.alive_executions, state.status, state.pending_failures) == (0, "failed", [])
    assert state.error == {"error_type": "TooManyAttempts"}
    fold(state, [rec(8, "workflow_resumed")])   # resumed after failure: running again
    assert (state.alive_executions, state.status) == (1, "running")


def test_fold_completed_and_cancelled():
    state = fold(FoldedState(), [rec(1, "workflow_started"), done(2, 1, "a"),
                                 rec(3, "workflow_completed", encoding="json", payload=b"7")])
    assert (state.status, state.result, state.alive_executions) == \
        ("completed", ("json", b"7"), 0)
    other = fold(FoldedState(), [rec(1, "workflow_started"), rec(2, "workflow_cancelled")])
    assert (other.status, other.alive_executions) == ("cancelled", 0)


def test_fold_continues_from_a_snapshot():
    full = fold(FoldedState(), [rec(1, "workflow_started")] +
                [done(i + 1, i, f"s{i}") for i in range(1, 6)])
    restored = FoldedState.from_snapshot(full.to_snapshot())
    assert restored.steps == full.steps and restored.last_seq == 6
    assert restored.alive_executions == 1
    fold(restored, [rec(7, "workflow_resumed"), done(8, 6, "s6")])
    assert restored.step_number == 6 and restored.alive_executions == 1


# -- replay: match_step ---------------------------------------------------------------------


def steps(*names) -> list[CompletedStep]:
    return [CompletedStep(i, n, f"hash-{n}", "json", b"1", i + 1, 1)
            for i, n in enumerate(names, start=1)]


def test_match_step_replays_journaled_positions_and_runs_new_ones():
    journal = steps("fetch", "parse")
    m = match_step("wf-1", journal, 1, "fetch", "hash-fetch")
    assert m == ReplayMatch(True, journal[0], False)
    assert match_step("wf-1", journal, 2, "parse", "hash-parse").step is journal[1]
    assert match_step("wf-1", journal, 3, "store", "hash-store") == ReplayMatch(False, None)
    assert match_step("wf-1", [], 1, "fetch", None) == ReplayMatch(False, None)


def test_match_step_name_mismatch_raises_naming_both():
    with pytest.raises(NonDeterministicReplay) as err:
        match_step("wf-9", steps("fetch", "parse"), 2, "store", "hash-store")
    e = err.value
    assert (e.workflow_id, e.step_number, e.journaled, e.called) == ("wf-9", 2, "parse", "store")
    msg = str(e)
    assert "wf-9" in msg and "'parse'" in msg and "'store'" in msg and "step 2" in msg
    assert "replayed differently" in msg


def test_match_step_code_change_still_replays_and_says_so():
    m = match_step("wf-1", steps("fetch"), 1, "fetch", "new-hash")
    assert m.replay is True and m.code_changed is True
    # unknown hashes on either side are not a change
    assert match_step("wf-1", steps("fetch"), 1, "fetch", None).code_changed is False
    no_hash = [CompletedStep(1, "fetch", None, "json", b"1", 2, 1)]
    assert match_step("wf-1", no_hash, 1, "fetch", "h").code_changed is False


def test_check_all_replayed():
    journal = steps("a", "b", "c")
    check_all_replayed("wf-1", journal, 3)
    check_all_replayed("wf-1", journal, 4)
    with pytest.raises(NonDeterministicReplay) as err:
        check_all_replayed("wf-1", journal, 1)
    assert (err.value.step_number, err.value.journaled, err.value.called) == (2, "b", None)
    assert "returned without calling it" in str(err.value)
    assert "'b'" in str(err.value)
