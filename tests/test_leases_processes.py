"""Leases between real processes on one DuckDB journal (DESIGN.md "Leases").

- a second executor of a running workflow gets WorkflowLocked naming the owner;
- a dead owner on this host is taken over at once, long before its lease expires;
- an executor frozen with SIGSTOP past its TTL is fenced: after another executor took over
  and finished, the frozen one's next write is refused (LeaseLost) and the journal holds
  nothing it wrote after the takeover;
- force_release from another process fences out a live owner.

Children come from tests/crash_workflows.py.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import signal
import socket
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import crash_workflows as cw
import pytest

from contd_nb import Client, ExecutionEngine
from contd_nb.core.events import StepCompleted, WorkflowResumed, WorkflowStarted


@contextmanager
def open_journal(path: Path):
    """An engine of this (pytest) process on the journal; lets go of the file afterwards."""
    eng = ExecutionEngine(str(path))
    try:
        yield eng
    finally:
        eng.close()
        eng.store.close()


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while proc_state(pid) not in states:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {states}"
        time.sleep(0.002)


def gate_is_free(journal: Path) -> bool:
    """Whether no process holds the journal file (its FileGate lock)."""
    fd = os.open(str(journal) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def freeze(child: cw.Child, journal: Path, holding_file: bool, tries: int = 500) -> int:
    """SIGSTOP the child at a moment when it does (or does not) hold the journal file; returns
    how many tries that took. (A process frozen while it holds a DuckDB file blocks the file
    for everyone: that case has its own test.)"""
    for attempt in range(1, tries + 1):
        child.signal(signal.SIGSTOP)
        wait_state(child.pid, "T")
        if gate_is_free(journal) != holding_file:
            return attempt
        child.signal(signal.SIGCONT)
        time.sleep(0.003 + 0.01 * (attempt % 5))
    raise AssertionError(f"could not freeze pid {child.pid} with holding_file={holding_file} "
                         f"in {tries} tries")


def paths(tmp_path: Path) -> tuple[Path, str, str]:
    return tmp_path / "contd" / "journal.duckdb", str(tmp_path / "side.txt"), \
        str(tmp_path / "gate")


def open_gate(gate: str) -> None:
    Path(gate).touch()


@pytest.mark.timeout(90)
def test_second_process_gets_workflow_locked(tmp_path):
    journal, side, gate = paths(tmp_path)
    wid = "locked-wf"
    a = cw.Child(cw.child_code("run", wid, "gated", (side, gate)), journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        in_step = a.expect("in-step")
        assert in_step["step"] == 2 and in_step["executor"] == owner
        assert f":{a.pid}:" in owner  # the owner id names the process

        b = cw.Child(cw.child_code("run", wid, "gated", (side, gate)), journal, tmp_path)
        rc_b = b.finish(60)
        err = b.last("error")
        assert rc_b == 3 and err is not None, b.describe()
        assert err["type"] == "WorkflowLocked", err
        assert err["message"].startswith(f"Workflow {wid} is locked by another executor"), err
        assert owner in err["message"], err
        assert err["owner_id"] == owner, err
        assert err["owner_pid"] == a.pid and err["host"] == socket.gethostname(), err
        expires = dt.datetime.fromisoformat(err["expires_at"])
        assert expires.tzinfo is not None and expires > dt.datetime.now(dt.UTC), err
        assert expires.isoformat() in err["message"], err

        with open_journal(journal) as eng:
            lease = eng.lease_manager.get_current_lease(wid)
            events = eng.journal.get_events(wid)
        assert lease.owner_id == owner and lease.pid == a.pid and lease.token == in_step["token"]
        # the refused process wrote nothing and ran nothing
        assert [e.kind for e in events] == ["workflow_started", "step_completed"]
        assert {e.lease_token for e in events} == {in_step["token"]}
        assert cw.read_side(side) == ["step-1"]

        open_gate(gate)
        done = a.expect("done")
        assert a.finish(60) == 0, a.describe()
    finally:
        a.close()
    assert done["result"] == [10, 200, 30]
    assert cw.read_side(side) == ["step-1", "step-2", "step-3"]


def _dead_owner(tmp_path: Path, reap: bool) -> None:
    journal, side, gate = paths(tmp_path)
    wid = "dead-owner"
    a = cw.Child(cw.child_code("run", wid, "gated", (side, gate), lease_ttl=60.0),
                 journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        a_token = a.expect("in-step")["token"]
        a.signal(signal.SIGKILL)
        if reap:
            assert a.wait(30) == -signal.SIGKILL
        else:
            wait_state(a.pid, "Z")  # dead, its exit status not collected yet

        with open_journal(journal) as eng:
            lease = eng.lease_manager.get_current_lease(wid)
        assert lease.owner_id == owner and lease.pid == a.pid and lease.token == a_token
        assert lease.seconds_left > 30  # far from expiry: a takeover now is not by expiry

        open_gate(gate)
        b = cw.Child(cw.child_code("resume", wid, listen=True), journal, tmp_path)
        rc_b = b.finish(60)
        done = b.last("done")
        assert rc_b == 0 and done is not None, b.describe()
    finally:
        a.close()
    assert done["result"] == [10, 200, 30]
    assert "lease_takeover" in done["kinds"] and "lease_conflict" not in done["kinds"], done

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        lease = eng.lease_manager.get_current_lease(wid)
        status = Client(engine=eng).status(wid)
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [(e.step_number, e.attempt) for e in completed] == [(1, 1), (2, 2), (3, 1)]
    assert len([e for e in events if isinstance(e, WorkflowResumed)]) == 1
    assert [e.lease_token for e in events] == [a_token] * 2 + [a_token + 1] * (len(events) - 2)
    assert lease.owner_id is None and lease.token == a_token + 1
    assert status.status == "completed"
    assert Counter(cw.read_side(side)) == {"step-1": 1, "step-2": 1, "step-3": 1}


@pytest.mark.timeout(90)
def test_dead_owner_on_same_host_is_taken_over_at_once(tmp_path):
    """SIGKILLed owner (lease TTL 60 s, reaped): another process resumes at once."""
    _dead_owner(tmp_path, reap=True)


@pytest.mark.timeout(90)
def test_dead_owner_not_yet_reaped_is_taken_over_at_once(tmp_path):
    """The killed owner is a zombie (its parent has not collected its exit status yet, as
    happens for a Jupyter kernel until the server polls it): it is dead all the same."""
    _dead_owner(tmp_path, reap=False)


HOLD = 2.0  # seconds the long step sleeps on its first attempt


@pytest.mark.timeout(120)
def test_sigstop_fencing(tmp_path):
    """A is frozen inside a long step past its 1 s TTL; B takes over and completes; A, thawed,
    finishes its step and its write is refused with LeaseLost."""
    journal, side, _ = paths(tmp_path)
    wid = "frozen-owner"
    a = cw.Child(cw.child_code("run", wid, "fenced", (side, HOLD), lease_ttl=1.0),
                 journal, tmp_path)
    try:
        a_owner = a.expect("ready")["executor"]
        a_in = a.expect("in-step")
        a_token = a_in["token"]
        assert (a_in["step"], a_in["attempt"]) == (3, 1)
        time.sleep(0.5)  # well inside the step
        tries = freeze(a, journal, holding_file=False)
        try:
            with open_journal(journal) as eng:
                lease = eng.lease_manager.get_current_lease(wid)
            assert lease.owner_id == a_owner and lease.token == a_token
            # A is frozen: no heartbeat; wait until its lease has expired
            time.sleep(max(0.0, lease.expires_at.timestamp() - time.time()) + 0.3)
            b = cw.Child(cw.child_code("resume", wid, listen=True), journal, tmp_path)
            b_in = b.expect("in-step")
            rc_b = b.finish(60)
            b_done = b.last("done")
            assert rc_b == 0 and b_done is not None, b.describe()
        finally:
            a.signal(signal.SIGCONT)
        rc_a = a.finish(60)
    finally:
        a.close()
    print(f"\nfroze A outside a journal session after {tries} tries")

    b_token = b_in["token"]
    assert b_token > a_token
    assert (b_in["step"], b_in["attempt"]) == (3, 2)
    assert b_done["result"] == [10, 20, 3000, 40, 50]
    assert "lease_expired" in b_done["kinds"], b_done

    err = a.last("error")
    assert rc_a == 3 and err is not None, a.describe()
    assert a.last("done") is None
    assert err["type"] == "LeaseLost", err
    assert err["message"].startswith(
        f"Workflow {wid}: this executor lost its lease (token {a_token})"), err
    assert "The write was refused" in err["message"], err
    assert err["token"] == a_token and err["current_token"] == b_token, err

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        lease = eng.lease_manager.get_current_lease(wid)
        status = Client(engine=eng).status(wid)
    kinds = [e.kind for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), kinds
    tokens = [e.lease_token for e in events]
    assert set(tokens) == {a_token, b_token}, tokens
    assert tokens == sorted(tokens), tokens
    # nothing with A's token after B's first event (B's takeover)
    b_first = min(e.seq for e in events if e.lease_token == b_token)
    assert max(e.seq for e in events if e.lease_token == a_token) < b_first, kinds
    assert isinstance(events[b_first - 1], WorkflowResumed), kinds
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [e.step_number for e in completed] == [1, 2, 3, 4, 5], kinds
    assert [e.lease_token for e in completed] == [a_token, a_token, b_token, b_token, b_token]
    assert events[-1].kind == "workflow_completed" and events[-1].lease_token == b_token
    assert isinstance(events[0], WorkflowStarted)
    # the lease's fencing token only grew: A's, then B's, and B's is still the current one
    assert lease.token == b_token and lease.owner_id is None
    assert status.status == "completed"
    # at-least-once: A ran step 3 too (its completion was refused); everything else once
    assert Counter(cw.read_side(side)) == {"step-1": 1, "step-2": 1, "step-3": 2,
                                           "step-4": 1, "step-5": 1}


BUSY_CHILD = """
import crash_workflows as cw
from contd_nb import Client, JournalBusy
try:
    status = Client().status({wid!r})
except JournalBusy as e:
    cw.emit("error", **cw.error_fields(e))
else:
    cw.emit("done", status=status.status, owner=status.lease_owner)
"""


@pytest.mark.timeout(90)
def test_frozen_process_holding_the_file_makes_others_journal_busy(tmp_path):
    """DuckDB's limit, reported clearly: a process frozen while it has the journal file open
    blocks the file; a waiter gets JournalBusy naming its pid and 'stopped (SIGSTOP)'. Once it
    is thawed, others can use the file again between its steps."""
    journal, side, _ = paths(tmp_path)
    wid = "frozen-holder"
    a = cw.Child(cw.child_code("run", wid, "fast_loop", (side, 100_000)), journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        deadline = time.monotonic() + 30
        while len(cw.read_side(side)) < 20:  # in its tight loop of steps
            assert time.monotonic() < deadline, a.describe()
            time.sleep(0.01)
        freeze(a, journal, holding_file=True)
        try:
            b = cw.Child(BUSY_CHILD.format(wid=wid), journal, tmp_path, CONTD_BUSY_TIMEOUT="1")
            assert b.finish(60) == 0, b.describe()
        finally:
            a.signal(signal.SIGCONT)
        c = cw.Child(BUSY_CHILD.format(wid=wid), journal, tmp_path)
        assert c.finish(60) == 0, c.describe()
    finally:
        a.close()
    err = b.last("error")
    assert err is not None, b.describe()
    assert err["type"] == "JournalBusy", err
    assert err["holder_pid"] == a.pid and err["holder_state"] == "stopped (SIGSTOP)", err
    assert err["message"].startswith(
        f"Journal {journal.resolve()} is busy: process {a.pid} (stopped (SIGSTOP)) held it "
        "for the whole"), err
    # thawed, the owner yields the file between steps: a reader gets through while it runs
    seen = c.last("done")
    assert seen is not None and (seen["status"], seen["owner"]) == ("running", owner), seen


@pytest.mark.timeout(90)
def test_force_release_fences_out_a_waiting_owner(tmp_path):
    """force_release from another process while the owner is inside a step: the owner's
    completion write is refused (LeaseLost); a later resume finishes the workflow."""
    journal, side, gate = paths(tmp_path)
    wid = "force-released"
    a = cw.Child(cw.child_code("run", wid, "gated", (side, gate)), journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        a_token = a.expect("in-step")["token"]
        with open_journal(journal) as eng:
            before = eng.lease_manager.force_release(wid)
            after = eng.lease_manager.get_current_lease(wid)
            last_seq = eng.store.last_seq(wid)
        assert before.owner_id == owner and before.token == a_token and before.pid == a.pid
        assert after.owner_id is None and after.token == a_token + 1
        open_gate(gate)
        rc_a = a.finish(60)
    finally:
        a.close()
    err = a.last("error")
    assert rc_a == 3 and err is not None, a.describe()
    assert err["type"] == "LeaseLost", err
    assert err["message"].startswith(
        f"Workflow {wid}: this executor lost its lease (token {a_token})"), err
    assert "The write was refused" in err["message"], err
    assert err["token"] == a_token and err["current_token"] == a_token + 1, err

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        status = Client(engine=eng).status(wid)
    assert [e.kind for e in events] == ["workflow_started", "step_completed"]
    assert events[-1].seq == last_seq  # nothing written after the force-release
    assert status.status == "interrupted"
    assert cw.read_side(side) == ["step-1", "step-2"]  # step 2 ran; its completion refused

    b = cw.Child(cw.child_code("resume", wid), journal, tmp_path)
    rc_b = b.finish(60)
    assert rc_b == 0 and b.last("done")["result"] == [10, 200, 30], b.describe()
    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        lease = eng.lease_manager.get_current_lease(wid)
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [(e.step_number, e.attempt) for e in completed] == [(1, 1), (2, 2), (3, 1)]
    tokens = [e.lease_token for e in events]
    assert tokens == [a_token, a_token] + [a_token + 2] * (len(events) - 2), tokens
    assert lease.token == a_token + 2
    assert Counter(cw.read_side(side)) == {"step-1": 1, "step-2": 2, "step-3": 1}


@pytest.mark.timeout(90)
def test_force_release_fences_out_an_owner_in_a_tight_loop(tmp_path):
    """The owner commits a step every few ms (it keeps the journal file open between
    steps); force_release from another process: its very next write is refused."""
    journal, side, _ = paths(tmp_path)
    wid = "tight-loop"
    a = cw.Child(cw.child_code("run", wid, "fast_loop", (side, 100_000)), journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        deadline = time.monotonic() + 30
        while len(cw.read_side(side)) < 30:
            assert time.monotonic() < deadline, a.describe()
            time.sleep(0.005)
        with open_journal(journal) as eng:
            before = eng.lease_manager.force_release(wid)
            last_seq = eng.store.last_seq(wid)  # after the release: A cannot add to it
        rc_a = a.finish(60)
    finally:
        a.close()
    assert before.owner_id == owner
    a_token = before.token
    err = a.last("error")
    assert rc_a == 3 and err is not None, a.describe()
    assert err["type"] == "LeaseLost", err
    assert err["token"] == a_token and err["current_token"] == a_token + 1, err

    with open_journal(journal) as eng:
        events = eng.journal.get_events(wid)
        lease = eng.lease_manager.get_current_lease(wid)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].seq == last_seq, "the owner wrote after the force-release"
    assert {e.lease_token for e in events} == {a_token}
    completed = [e.step_number for e in events if isinstance(e, StepCompleted)]
    k = len(completed)
    assert completed == list(range(1, k + 1)) and k >= 29
    # the step whose completion was refused ran once; nothing after it ran
    assert cw.read_side(side) == [f"step-{n}" for n in range(1, k + 2)]
    assert lease.owner_id is None and lease.token == a_token + 1
