"""One DuckDB journal file shared by several processes (DESIGN.md "DuckDB, one file, several
processes"; FACTS.md: naive open/close sharing lost acknowledged rows).

Real child processes on a real file: concurrent writers lose no acknowledged step, a reader in
another process never fails while a writer runs, and a holder that never lets go gives a
JournalBusy that names its pid (and says when it is stopped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import spawn_child

from contd_nb import Client, JournalBusy
from contd_nb.core.events import StepCompleted, WorkflowCompleted, WorkflowStarted
from contd_nb.persistence.duckdb_store import DuckDBStore

WRITER = """
import os, sys, time
from pathlib import Path
from contd_nb import Client, step, workflow

N, WID, ACK, GO, SLEEP = {n!r}, {wid!r}, {ack!r}, {go!r}, {sleep!r}

@step
def trivial(i):
    if SLEEP:
        time.sleep(SLEEP)
    return i

@workflow
def many_steps(n):
    with open(ACK, "a") as ack:
        for i in range(1, n + 1):
            assert trivial(i) == i
            ack.write(f"{{i}}\\n")   # the step returned: it is acknowledged
            ack.flush()
    return n

Path(ACK).touch()                    # ready
while GO and not os.path.exists(GO):  # start together with the others
    time.sleep(0.005)
print("result", Client().run(many_steps, N, workflow_id=WID), flush=True)
"""


def _writer(journal: Path, tmp: Path, wid: str, n: int, go: Path | None = None,
            sleep: float = 0.0) -> tuple[subprocess.Popen, Path]:
    ack = tmp / f"{wid}.ack"
    code = WRITER.format(n=n, wid=wid, ack=str(ack), go=str(go) if go else "", sleep=sleep)
    return spawn_child(code, journal), ack


def _acked(ack: Path) -> list[int]:
    return [int(line) for line in ack.read_text().split()]


def _wait_for(cond, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit  # a safety limit, not a speed assertion
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _finish(proc: subprocess.Popen, limit: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child {proc.pid} did not finish: {err[-3000:]}") from None
    return proc.returncode, out, err


def _check_journal(journal: Path, wid: str, n: int, acked: list[int]) -> None:
    client = Client(journal=str(journal))
    try:
        events = client.engine.journal.get_events(wid)
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(events) + 1)), f"{wid}: seq not contiguous"
        assert isinstance(events[0], WorkflowStarted)
        assert isinstance(events[-1], WorkflowCompleted)
        done = [e for e in events if isinstance(e, StepCompleted)]
        numbers = [e.step_number for e in done]
        assert numbers == list(range(1, n + 1)), f"{wid}: completions {numbers[:5]}..."
        assert [e.value() for e in done] == numbers
        assert {e.step_name for e in done} == {"trivial"}
        lost = sorted(set(acked) - set(numbers))
        assert lost == [], f"{wid}: acknowledged steps missing from the journal: {lost[:20]}"
        rec = client.engine.store.get_workflow(wid)
        assert rec is not None and rec.status == "completed"
        assert client.result(wid) == n
    finally:
        client.engine.close()


def _concurrent_writers(journal: Path, tmp: Path, writers: int, n: int) -> None:
    go = tmp / "go"
    children = [_writer(journal, tmp, f"wf-share-{k}", n, go) for k in range(writers)]
    try:
        _wait_for(lambda: all(ack.exists() for _, ack in children), "children ready")
        go.touch()
        outcomes = [_finish(proc, 600) for proc, _ in children]
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for (rc, out, err), (proc, _) in zip(outcomes, children, strict=True):
        assert "JournalBusy" not in err, err[-3000:]
        assert rc == 0, f"child {proc.pid} exited {rc}: {err[-3000:]}"
        assert f"result {n}" in out
    for k, (_, ack) in enumerate(children):
        acked = _acked(ack)
        assert acked == list(range(1, n + 1))
        _check_journal(journal, f"wf-share-{k}", n, acked)
    client = Client(journal=str(journal))
    try:
        listed = {s.workflow_id: s.status for s in client.list()}
    finally:
        client.engine.close()
    assert listed == {f"wf-share-{k}": "completed" for k in range(writers)}


@pytest.mark.timeout(180)
def test_three_processes_share_one_file_no_acked_step_lost(journal_path, tmp_path):
    _concurrent_writers(journal_path, tmp_path, writers=3, n=200)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_processes_2000_steps_each_no_acked_step_lost(journal_path, tmp_path):
    _concurrent_writers(journal_path, tmp_path, writers=3, n=2000)


@pytest.mark.timeout(180)
def test_reader_process_never_fails_while_a_writer_runs(journal_path, tmp_path):
    n, wid = 50, "wf-long"
    proc, ack = _writer(journal_path, tmp_path, wid, n, sleep=0.03)
    client = None
    try:
        _wait_for(lambda: ack.exists() and ack.read_text().strip(), "the first step")
        client = Client(journal=str(journal_path))
        engine = client.engine
        reads, seen_midway, last_step, last_len = 0, [], 0, 0
        while proc.poll() is None:
            listed = {s.workflow_id: s for s in client.list()}
            assert wid in listed
            assert listed[wid].status in ("running", "completed")
            state = engine.restore(wid)
            assert state.step_number >= last_step
            assert state.results == {i: i for i in range(1, state.step_number + 1)}
            last_step = state.step_number
            events = engine.journal.get_events(wid)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert len(events) >= last_len
            last_len = len(events)
            reads += 1
            time.sleep(0.02)  # a polling widget, not a busy loop
            if proc.poll() is None and 0 < state.step_number < n:
                seen_midway.append(state.step_number)
        rc, out, err = _finish(proc, 120)
        assert rc == 0, err[-3000:]
        assert "JournalBusy" not in err
        assert f"result {n}" in out
        assert reads >= 3, reads
        assert seen_midway, "the reader never saw the workflow in progress"
        final = engine.restore(wid)
        assert final.status == "completed" and final.step_number == n
        assert client.status(wid).status == "completed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if client is not None:
            client.engine.close()
    _check_journal(journal_path, wid, n, _acked(ack))


MANY_WORKFLOWS = """
from pathlib import Path
from contd_nb import Client, step, workflow

@step
def only(i):
    return i

@workflow
def short(i):
    return only(i)

client = Client()
Path({ready!r}).touch()
for i in range({count!r}):
    assert client.run(short, i, workflow_id=f"wf-short-{{i}}") == i
print("done", flush=True)
"""


@pytest.mark.timeout(180)
def test_reader_never_sees_a_finishing_workflow_as_interrupted(journal_path, tmp_path):
    """A workflow that completes while Client.list() reads must show as running or
    completed: 'interrupted' tells users to resume something that is not interrupted."""
    ready, count = tmp_path / "ready", 40
    proc = spawn_child(MANY_WORKFLOWS.format(ready=str(ready), count=count), journal_path)
    client = None
    try:
        _wait_for(ready.exists, "the child")
        client = Client(journal=str(journal_path))
        wrong, lists = [], 0
        while proc.poll() is None:
            for s in client.list():
                if s.status not in ("running", "completed"):
                    wrong.append((s.workflow_id, s.status))
            lists += 1
        rc, out, err = _finish(proc, 120)
        assert rc == 0 and "done" in out, err[-3000:]
        assert lists >= 3
        assert wrong == [], f"{len(wrong)} of {lists} listings showed: {wrong[:5]}"
        assert sorted((s.workflow_id, s.status) for s in client.list()) == sorted(
            (f"wf-short-{i}", "completed") for i in range(count))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if client is not None:
            client.engine.close()


def _seed_journal(path: Path) -> None:
    """A journal with one completed workflow, then every handle of this process closed."""
    client = Client(journal=str(path))
    from contd_nb import step, workflow

    @step
    def one():
        return 1

    @workflow
    def seeded():
        return one()

    assert client.run(seeded, workflow_id="wf-seeded") == 1
    client.engine.close()
    client.engine.store.close()


def _assert_seed_intact(path: Path) -> None:
    store = DuckDBStore(path, busy_timeout=10)
    try:
        rec = store.get_workflow("wf-seeded")
        assert rec is not None and rec.status == "completed"
        assert [e.kind for e in store.read_events("wf-seeded")] == [
            "workflow_started", "step_completed", "workflow_completed"]
    finally:
        store.close()


def _hold(code: str, journal: Path) -> subprocess.Popen:
    proc = spawn_child(code, journal)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"holder did not start: {line!r} {proc.stderr.read()[-3000:]}")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


@pytest.mark.timeout(60)
def test_foreign_duckdb_holder_gives_journal_busy_naming_its_pid(journal_path):
    _seed_journal(journal_path)
    holder = _hold(f"""
        import duckdb, time
        conn = duckdb.connect({str(journal_path)!r})   # outside contd_nb's gate
        print("ready", flush=True)
        time.sleep(120)
        """, journal_path)
    try:
        with pytest.raises(JournalBusy) as info:
            DuckDBStore(journal_path, busy_timeout=1)
        err = info.value
        assert err.holder_pid == holder.pid
        assert err.waited_seconds >= 1.0
        assert err.path == str(journal_path.resolve())
        message = str(err)
        assert f"process {holder.pid}" in message
        assert "is busy" in message and str(journal_path.resolve()) in message

        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(JournalBusy) as info:
            DuckDBStore(journal_path, busy_timeout=1)
        assert info.value.holder_pid == holder.pid
        assert "stopped" in info.value.holder_state
        assert "stopped" in str(info.value)
    finally:
        _stop(holder)
    _assert_seed_intact(journal_path)


GATE_HOLDER = """
    import time
    from contd_nb.persistence.file_gate import FileGate
    gate = FileGate({path!r})
    gate.acquire(5)
    print("ready", flush=True)
    time.sleep(120)
    """


@pytest.mark.timeout(60)
def test_gate_holder_gives_journal_busy_with_env_timeout(journal_path, monkeypatch):
    _seed_journal(journal_path)
    path = str(journal_path.resolve())
    holder = _hold(GATE_HOLDER.format(path=path), journal_path)
    monkeypatch.setenv("CONTD_BUSY_TIMEOUT", "1")
    try:
        with pytest.raises(JournalBusy) as info:
            Client(journal=str(journal_path))
        err = info.value
        assert err.holder_pid == holder.pid
        assert err.holder_state == "running"
        assert err.waited_seconds >= 1.0
        assert f"process {holder.pid}" in str(err) and path in str(err)

        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(JournalBusy) as info:
            DuckDBStore(journal_path)          # busy_timeout from the environment
        err = info.value
        assert err.holder_pid == holder.pid
        assert err.holder_state == "stopped (SIGSTOP)"
        assert f"process {holder.pid} (stopped (SIGSTOP))" in str(err)
    finally:
        _stop(holder)
    monkeypatch.delenv("CONTD_BUSY_TIMEOUT")
    _assert_seed_intact(journal_path)


@pytest.mark.timeout(60)
def test_gate_holder_killed_frees_the_file_at_once(journal_path):
    _seed_journal(journal_path)
    holder = _hold(GATE_HOLDER.format(path=str(journal_path.resolve())), journal_path)
    try:
        with pytest.raises(JournalBusy) as info:
            DuckDBStore(journal_path, busy_timeout=0.5)
        assert info.value.holder_pid == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    _assert_seed_intact(journal_path)  # flock died with its process: no stale gate
