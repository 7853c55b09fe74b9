"""The PostgreSQL journal end to end: the engine, real processes, fencing, errors.

The server is the session's throwaway one (conftest ``pg_url``: CONTD_TEST_PG_URL from
scripts/test.sh, else started here with scripts/pg.sh); every test has a schema of its own.
The store contract suite runs on PostgreSQL too (tests/test_store_contract.py).
Children come from tests/crash_workflows.py; the crash torture reuses
tests/test_crash_recovery.py's trial with a PostgreSQL journal.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import crash_workflows as cw
import pytest
from conftest import child_env, pg_schema_url

from contd_nb import (
    Client,
    ContdError,
    ExecutionEngine,
    JournalSchemaTooNew,
    JournalUnavailable,
    RetryPolicy,
    StepConfig,
    WorkflowConfig,
    step,
    workflow,
)
from contd_nb.core.events import StepCompleted, StepFailed, WorkflowResumed, WorkflowStarted
from contd_nb.persistence.adapters import PostgresAdapter, open_store
from contd_nb.persistence.base import SCHEMA_VERSION
from contd_nb.persistence.postgres_store import PostgresStore
from contd_nb.sdk.errors import ConfigurationError


@contextmanager
def open_journal(url: str):
    """An engine of this (pytest) process on the journal; closes its pool afterwards."""
    eng = ExecutionEngine(url)
    try:
        yield eng
    finally:
        eng.close()
        eng.store.close()


def psql(url: str, sql: str) -> list[tuple]:
    """Run SQL on the test server directly, in the URL's schema."""
    import psycopg

    from contd_nb.persistence.postgres_store import parse_url

    conninfo, schema, _ = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


# -- the engine in this process -----------------------------------------------------------------
FLAKY_CALLS: Counter = Counter()


@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01,
                                   retryable_exceptions=[ConnectionError])))
def flaky_fetch(n: int) -> dict:
    FLAKY_CALLS[n] += 1
    if FLAKY_CALLS[n] < 3:
        raise ConnectionError(f"flaky {n} (call {FLAKY_CALLS[n]})")
    return {"n": n, "calls": FLAKY_CALLS[n]}


@step()
def add(a: int, b: int) -> int:
    return a + b


@workflow(WorkflowConfig(snapshot_interval=2))
def pg_pipeline(n: int) -> dict:
    total = 0
    for i in range(n):
        total = add(total, i)
    fetched = flaky_fetch(n)
    return {"total": total, "fetched": fetched}


@pytest.mark.timeout(60)
def test_engine_runs_a_workflow_with_retries_on_postgres(pg_journal):
    FLAKY_CALLS.clear()
    with open_journal(pg_journal) as eng:
        assert eng.store.backend == "postgres"
        assert isinstance(eng.store, PostgresStore)
        client = Client(engine=eng)
        result = client.run(pg_pipeline, 5, workflow_id="pg-wf-1")
        assert result == {"total": 10, "fetched": {"n": 5, "calls": 3}}
        events = eng.journal.get_events("pg-wf-1")  # checksums verified
        status = client.status("pg-wf-1")
        # a second run of a completed workflow returns the journaled result, running nothing
        assert client.run(pg_pipeline, 5, workflow_id="pg-wf-1") == result
        restored = eng.restore("pg-wf-1")
        lease = eng.lease_manager.get_current_lease("pg-wf-1")
    assert FLAKY_CALLS[5] == 3
    kinds = [e.kind for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), kinds
    assert isinstance(events[0], WorkflowStarted), kinds
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert [(e.step_name, e.attempt) for e in failed] == [("flaky_fetch", 1), ("flaky_fetch", 2)]
    assert all("ConnectionError" in e.info["error_type"] for e in failed), failed[0].info
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [(e.step_name, e.attempt) for e in completed] == [("add", 1)] * 5 + \
        [("flaky_fetch", 3)]
    assert [e.value() for e in completed][:5] == [0, 1, 3, 6, 10]
    assert kinds[-1] == "workflow_completed"
    assert {e.lease_token for e in events} == {1}
    assert status.status == "completed" and status.steps_completed == 6
    assert restored.step_number == 6 and restored.snapshot_step == 6
    assert restored.results[6] == {"n": 5, "calls": 3}
    assert lease.owner_id is None and lease.token == 1


def test_open_store_gives_one_store_per_url_and_hides_the_password(pg_url):
    url = pg_schema_url(pg_url)
    first = open_store(url)
    try:
        assert isinstance(first, PostgresStore)
        assert open_store(url) is first
        other = open_store(pg_schema_url(pg_url))
        assert other is not first and other.schema != first.schema
        other.close()
        assert first.describe().endswith(f"?schema={first.schema}")
    finally:
        first.close()
    assert open_store(url) is not first  # a closed store is replaced
    open_store(url).close()
    with_password = url.replace("postgres@", "postgres:s3cret-pw@")
    store = PostgresStore(with_password)  # trust auth: the password is not checked
    try:
        assert "s3cret-pw" not in store.describe()
        assert store.describe().startswith("postgresql://postgres@127.0.0.1:")
        assert "s3cret-pw" not in str(store.health_check())
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_postgres_adapter_health_check_with_database_url(pg_journal, monkeypatch):
    """The troubleshooting guide's line, in a fresh process, then in this one."""
    monkeypatch.setenv("DATABASE_URL", pg_journal)
    line = ("from contd_nb.persistence.adapters import PostgresAdapter; "
            "PostgresAdapter().health_check()")
    done = subprocess.run([sys.executable, "-c", line], env=child_env(pg_journal),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    adapter = PostgresAdapter()
    try:
        health = adapter.health_check()
    finally:
        adapter.close()
    assert health["status"] == "ok", health
    assert health["backend"] == "postgres"
    assert health["schema_version"] == SCHEMA_VERSION
    assert health["server_version"].split(".")[0].isdigit(), health
    assert health["workflows"] == 0
    assert health["size_bytes"] > 0 and health["database_size_bytes"] >= health["size_bytes"]
    assert health["journal"] == adapter.describe()
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ConfigurationError, match="PostgresAdapter\\(\\) needs a URL"):
        PostgresAdapter()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.timeout(60)
def test_unreachable_server_raises_journal_unavailable(monkeypatch):
    port = _closed_port()
    url = f"postgresql://alice:TopSecret1@127.0.0.1:{port}/jobs"
    with pytest.raises(JournalUnavailable) as err:
        PostgresStore(url)
    e = err.value
    assert isinstance(e, ContdError)
    assert (e.host, e.port, e.database) == ("127.0.0.1", port, "jobs")
    msg = str(e)
    assert msg.startswith(f"Journal postgresql://alice@127.0.0.1:{port}/jobs?schema=contd is "
                          f"unavailable: cannot connect to PostgreSQL at 127.0.0.1:{port} "
                          "(database jobs): "), msg
    assert "refused" in msg.lower(), msg
    assert "hint: check that the server is running" in msg
    assert "TopSecret1" not in msg and "TopSecret1" not in repr(e.args)
    back = pickle.loads(pickle.dumps(e))  # errors cross process boundaries
    assert type(back) is JournalUnavailable and str(back) == msg
    assert (back.host, back.port, back.database, back.journal) == \
        ("127.0.0.1", port, "jobs", e.journal)
    # the same through the engine and the environment
    monkeypatch.setenv("CONTD_JOURNAL", url)
    with pytest.raises(JournalUnavailable, match=f"127.0.0.1:{port}"):
        ExecutionEngine()


def test_schema_too_new_is_refused_without_writing(pg_journal):
    store = PostgresStore(pg_journal)
    try:
        psql(pg_journal, "UPDATE contd_meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(JournalSchemaTooNew) as err:
            PostgresStore(pg_journal)
        assert (err.value.found, err.value.supported) == (99, SCHEMA_VERSION)
        assert str(err.value).startswith(f"Journal {store.describe()} has schema version 99, "
                                         f"newer than this contd_nb understands "
                                         f"({SCHEMA_VERSION})")
        with pytest.raises(JournalSchemaTooNew):
            store.schema_version()  # an open store notices too
        health = store.health_check()
        assert (health["status"], health["error_type"]) == ("down", "JournalSchemaTooNew")
        assert psql(pg_journal, "SELECT value FROM contd_meta") == [("99",)]
    finally:
        store.close()


def test_schema_1_journal_is_migrated(pg_journal):
    from contd_nb.persistence import schema

    psql(pg_journal.split("?")[0] + "?schema=public",
         f'CREATE SCHEMA "{pg_journal.rsplit("=", 1)[1]}"')
    for stmt in schema.CREATE_STATEMENTS:
        if "CREATE TABLE blobs" not in stmt:
            psql(pg_journal, stmt.format(blob="BYTEA"))
    psql(pg_journal, "INSERT INTO contd_meta VALUES ('schema_version', '1')")
    psql(pg_journal, "INSERT INTO workflows (workflow_id, name, function, status, created_at, "
                     "updated_at) VALUES ('old-wf', 'p', 'm:p', 'completed', 1, 2)")
    store = PostgresStore(pg_journal)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.get_workflow("old-wf").status == "completed"
        assert psql(pg_journal, "SELECT count(*) FROM blobs") == [(0,)]
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_missing_psycopg_is_a_configuration_error(pg_journal):
    code = ("import sys; sys.modules['psycopg'] = None\n"
            "from contd_nb import ConfigurationError, ExecutionEngine\n"
            "try:\n    ExecutionEngine()\n"
            "except ConfigurationError as e:\n    print('ERR', e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=child_env(pg_journal),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ERR the PostgreSQL journal needs psycopg 3"), done.stdout
    assert "pip install 'contd_nb[postgres]'" in done.stdout


# -- the fence holds the lease row for the whole write ----------------------------------------
def _wait_for_lock_wait(url: str, limit: float = 20.0) -> None:
    """Until a contd_nb backend of the server is waiting for a row lock."""
    deadline = time.monotonic() + limit
    while not psql(url, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'contd_nb' "
                        "AND wait_event_type = 'Lock'"):
        assert time.monotonic() < deadline, "the write never waited for the lease row"
        time.sleep(0.01)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("takeover", ["commit", "rollback"])
def test_a_write_racing_a_takeover_waits_for_it(pg_journal, takeover):
    """A takeover is in flight (its UPDATE of the lease row not committed yet) when the owner
    writes: the write waits for it, then is refused if the takeover committed (LeaseLost
    naming the new owner) and accepted if it rolled back. Never accepted 'in between'."""
    import threading

    import psycopg

    from contd_nb.persistence.base import EventRecord, LeaseRecord
    from contd_nb.persistence.postgres_store import parse_url
    from contd_nb.sdk.errors import LeaseLost

    store = PostgresStore(pg_journal)
    now = time.time()
    assert store.take_lease(LeaseRecord("wf", "exec-A", 1, now + 60, "h", 1, None, now, now),
                            None)
    event = EventRecord("wf", 1, "step_completed", 1, "s", 1, now, now, None, "json", b"1",
                        "sum", 1)
    outcome: list = []
    conninfo, schema, _ = parse_url(pg_journal)
    other = psycopg.connect(conninfo)  # not autocommit: the takeover stays open
    try:
        other.execute(f'SET search_path TO "{schema}"')
        other.execute("UPDATE leases SET owner_id = 'exec-B', token = 2 WHERE workflow_id = 'wf'")

        def write() -> None:
            try:
                store.append_event(event, 1)
                outcome.append("accepted")
            except LeaseLost as e:
                outcome.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        _wait_for_lock_wait(pg_journal)
        assert outcome == []  # still waiting for the takeover to finish
        other.commit() if takeover == "commit" else other.rollback()
        writer.join(20)
        assert not writer.is_alive()
        if takeover == "commit":
            assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost), outcome
            assert (outcome[0].token, outcome[0].current_token, outcome[0].current_owner) == \
                (1, 2, "exec-B")
            assert store.read_events("wf") == []
        else:
            assert outcome == ["accepted"]
            assert store.read_events("wf") == [event]
    finally:
        other.close()
        store.close()


@pytest.mark.timeout(60)
def test_a_takeover_waits_for_a_write_in_flight(pg_journal):
    """The mirror image: a writer holds the lease row (FOR SHARE, as a fenced write does until
    its commit); take_lease and force_release wait for it instead of slipping in between."""
    import threading

    import psycopg

    from contd_nb.persistence.base import LeaseRecord
    from contd_nb.persistence.postgres_store import parse_url

    store = PostgresStore(pg_journal)
    now = time.time()
    assert store.take_lease(LeaseRecord("wf", "exec-A", 1, now + 60, "h", 1, None, now, now),
                            None)
    conninfo, schema, _ = parse_url(pg_journal)
    writer = psycopg.connect(conninfo)
    try:
        writer.execute(f'SET search_path TO "{schema}"')
        writer.execute("SELECT token FROM leases WHERE workflow_id = 'wf' FOR SHARE")
        writer.execute("INSERT INTO events (workflow_id, seq, kind, meta) VALUES "
                       "('wf', 1, 'x', '{}')")
        results: list = []
        t = threading.Thread(target=lambda: results.append(store.take_lease(
            LeaseRecord("wf", "exec-B", 2, now + 60, "h", 2, None, now, now), 1)))
        t.start()
        _wait_for_lock_wait(pg_journal)
        assert results == []
        writer.commit()
        t.join(20)
        assert results == [True]
        assert store.get_lease("wf").owner_id == "exec-B"
    finally:
        writer.close()
        store.close()


# -- real processes -----------------------------------------------------------------------------
def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while proc_state(pid) not in states:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {states}"
        time.sleep(0.002)


@pytest.mark.timeout(90)
def test_sigkill_then_resume_from_another_process(pg_journal, tmp_path):
    """A child is SIGKILLed inside step 2 (lease TTL 60 s); another process resumes at once
    (the dead owner on this host is taken over) and nothing that completed runs again."""
    side, gate = str(tmp_path / "side.txt"), str(tmp_path / "gate")
    wid = "pg-killed"
    a = cw.Child(cw.child_code("run", wid, "gated", (side, gate), lease_ttl=60.0),
                 pg_journal, tmp_path)
    try:
        a_token = a.expect("in-step")["token"]
        a.signal(signal.SIGKILL)
        assert a.wait(30) == -signal.SIGKILL
    finally:
        a.close()
    (tmp_path / "gate").touch()
    b = cw.Child(cw.child_code("resume", wid, listen=True), pg_journal, tmp_path)
    t0 = time.monotonic()
    rc_b = b.finish(60)
    took = time.monotonic() - t0
    done = b.last("done")
    assert rc_b == 0 and done is not None, b.describe()
    assert done["result"] == [10, 200, 30]
    assert "lease_takeover" in done["kinds"], done
    assert took < 50, took  # safety limit only: far below the 60 s TTL
    with open_journal(pg_journal) as eng:
        events = eng.journal.get_events(wid)
        status = Client(engine=eng).status(wid)
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [(e.step_number, e.attempt) for e in completed] == [(1, 1), (2, 2), (3, 1)]
    assert [e.lease_token for e in events] == [a_token] * 2 + [a_token + 1] * (len(events) - 2)
    assert status.status == "completed"
    assert Counter(cw.read_side(side)) == {"step-1": 1, "step-2": 1, "step-3": 1}


@pytest.mark.timeout(90)
def test_second_process_gets_workflow_locked(pg_journal, tmp_path):
    side, gate = str(tmp_path / "side.txt"), str(tmp_path / "gate")
    wid = "pg-locked"
    a = cw.Child(cw.child_code("run", wid, "gated", (side, gate)), pg_journal, tmp_path)
    try:
        owner = a.expect("ready")["executor"]
        in_step = a.expect("in-step")
        b = cw.Child(cw.child_code("run", wid, "gated", (side, gate)), pg_journal, tmp_path)
        rc_b = b.finish(60)
        err = b.last("error")
        assert rc_b == 3 and err is not None, b.describe()
        assert err["type"] == "WorkflowLocked", err
        assert err["message"].startswith(f"Workflow {wid} is locked by another executor"), err
        assert err["owner_id"] == owner and err["owner_pid"] == a.pid, err
        with open_journal(pg_journal) as eng:
            events = eng.journal.get_events(wid)
            lease = eng.lease_manager.get_current_lease(wid)
        assert [e.kind for e in events] == ["workflow_started", "step_completed"]
        assert lease.owner_id == owner and lease.token == in_step["token"]
        (tmp_path / "gate").touch()
        done = a.expect("done")
        assert a.finish(60) == 0, a.describe()
    finally:
        a.close()
    assert done["result"] == [10, 200, 30]
    assert cw.read_side(side) == ["step-1", "step-2", "step-3"]


HOLD = 2.0


@pytest.mark.timeout(120)
def test_sigstop_fencing_inside_a_step(pg_journal, tmp_path):
    """A is frozen inside a long step past its 1 s TTL; B takes over and completes; A, thawed,
    finishes its step and its write is refused with LeaseLost."""
    side = str(tmp_path / "side.txt")
    wid = "pg-frozen"
    a = cw.Child(cw.child_code("run", wid, "fenced", (side, HOLD), lease_ttl=1.0),
                 pg_journal, tmp_path)
    try:
        a_in = a.expect("in-step")
        a_token = a_in["token"]
        time.sleep(0.3)
        a.signal(signal.SIGSTOP)
        wait_state(a.pid, "T")
        try:
            with open_journal(pg_journal) as eng:
                lease = eng.lease_manager.get_current_lease(wid)
            time.sleep(max(0.0, lease.expires_at.timestamp() - time.time()) + 0.3)
            b = cw.Child(cw.child_code("resume", wid, listen=True), pg_journal, tmp_path)
            b_in = b.expect("in-step")
            rc_b = b.finish(60)
            b_done = b.last("done")
            assert rc_b == 0 and b_done is not None, b.describe()
        finally:
            a.signal(signal.SIGCONT)
        rc_a = a.finish(60)
    finally:
        a.close()
    b_token = b_in["token"]
    assert b_token > a_token and (b_in["step"], b_in["attempt"]) == (3, 2)
    assert b_done["result"] == [10, 20, 3000, 40, 50]
    assert "lease_expired" in b_done["kinds"], b_done
    err = a.last("error")
    assert rc_a == 3 and err is not None, a.describe()
    assert err["type"] == "LeaseLost", err
    assert err["message"].startswith(
        f"Workflow {wid}: this executor lost its lease (token {a_token})"), err
    assert err["token"] == a_token and err["current_token"] == b_token, err
    with open_journal(pg_journal) as eng:
        events = eng.journal.get_events(wid)
    tokens = [e.lease_token for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert set(tokens) == {a_token, b_token} and tokens == sorted(tokens), tokens
    b_first = min(e.seq for e in events if e.lease_token == b_token)
    assert isinstance(events[b_first - 1], WorkflowResumed)
    completed = [e for e in events if isinstance(e, StepCompleted)]
    assert [e.lease_token for e in completed] == [a_token, a_token, b_token, b_token, b_token]
    assert Counter(cw.read_side(side)) == {"step-1": 1, "step-2": 1, "step-3": 2,
                                           "step-4": 1, "step-5": 1}


LOOP_STEPS = 400


def _freeze_anywhere_trial(url: str, tmp_path, trial: int, rng: random.Random) -> dict:
    """A runs a tight loop of steps (TTL 1 s); it is frozen at a random moment (in a step,
    in a commit, in a heartbeat: no file lock to avoid); B takes over after expiry and
    finishes; A, thawed, has every later write refused."""
    side = str(tmp_path / f"loop-{trial}.side")
    wid = f"pg-loop-{trial}"
    a = cw.Child(cw.child_code("run", wid, "fast_loop", (side, LOOP_STEPS), lease_ttl=1.0),
                 url, tmp_path)
    try:
        a.expect("ready")
        deadline = time.monotonic() + 30
        target = rng.randint(5, LOOP_STEPS // 3)
        while len(cw.read_side(side)) < target:
            assert time.monotonic() < deadline, a.describe()
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
        a.signal(signal.SIGSTOP)
        wait_state(a.pid, "T")
        try:
            with open_journal(url) as eng:
                lease = eng.lease_manager.get_current_lease(wid)
                a_token = lease.token
                frozen_at = eng.store.last_seq(wid)
            assert lease.owner_id is not None, "A finished before it was frozen"
            time.sleep(max(0.0, lease.expires_at.timestamp() - time.time()) + 0.3)
            b = cw.Child(cw.child_code("resume", wid, listen=True), url, tmp_path)
            rc_b = b.finish(120)
            b_done = b.last("done")
            assert rc_b == 0 and b_done is not None, b.describe()
        finally:
            a.signal(signal.SIGCONT)
        rc_a = a.finish(60)
    finally:
        a.close()
    ctx = f"trial {trial}: frozen after {target} steps, seq {frozen_at}"
    err = a.last("error")
    assert rc_a == 3 and err is not None, f"{ctx}: {a.describe()}"
    assert err["type"] == "LeaseLost" and err["token"] == a_token, f"{ctx}: {err}"
    assert b_done["result"] == _expected_loop(LOOP_STEPS), f"{ctx}: {b_done}"
    with open_journal(url) as eng:
        events = eng.journal.get_events(wid)
    tokens = [e.lease_token for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), ctx
    assert tokens == sorted(tokens) and len(set(tokens)) == 2, f"{ctx}: {set(tokens)}"
    b_token = tokens[-1]
    b_first = tokens.index(b_token) + 1
    # nothing of A's after B took over; B's first event is its resume
    assert b_first == frozen_at + 1, f"{ctx}: A wrote after it was frozen (b_first {b_first})"
    assert isinstance(events[b_first - 1], WorkflowResumed), ctx
    completed = [e.step_number for e in events if isinstance(e, StepCompleted)]
    assert completed == list(range(1, LOOP_STEPS + 1)), ctx
    counts = Counter(cw.read_side(side))
    twice = [k for k, v in counts.items() if v == 2]
    assert set(counts) == {f"step-{n}" for n in range(1, LOOP_STEPS + 1)}, ctx
    assert max(counts.values()) <= 2 and len(twice) <= 1, f"{ctx}: {twice}"
    return {"frozen_at": frozen_at, "twice": twice}


def _expected_loop(steps: int) -> int:
    acc = 0
    for n in range(1, steps + 1):
        acc = cw.mix(n, acc)
    return acc


def _freeze_anywhere(url: str, tmp_path, trials: int) -> list[dict]:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000_007))
    rng = random.Random(seed)
    out = []
    for trial in range(trials):
        try:
            out.append(_freeze_anywhere_trial(url, tmp_path, trial, rng))
        except AssertionError as e:
            raise AssertionError(f"CRASH_SEED={seed}: {e}") from e
    return out


@pytest.mark.timeout(180)
def test_sigstop_fencing_at_any_moment_of_a_tight_loop(pg_journal, tmp_path):
    outcomes = _freeze_anywhere(pg_journal, tmp_path, 2)
    assert len(outcomes) == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigstop_fencing_at_any_moment_many_trials(pg_journal, tmp_path):
    outcomes = _freeze_anywhere(pg_journal, tmp_path, 15)
    print(f"\nfrozen at seqs {[o['frozen_at'] for o in outcomes]}; a step ran twice in "
          f"{sum(bool(o['twice']) for o in outcomes)} trials")


# -- crash torture on PostgreSQL (tests/test_crash_recovery.py's trial) -------------------------
def _pg_torture(url: str, tmp_path, trials: int, delays_for) -> list[dict]:
    import test_crash_recovery as tcr

    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000_007))
    rng = random.Random(seed)
    duration = tcr.calibrate(url, tmp_path)
    delays = delays_for(rng, trials, duration)
    outcomes, failures = [], []
    for i, delay in enumerate(delays):
        how = "resume-or-run" if i % 2 == 0 else "run"
        context = (f"postgres trial {i} (CRASH_SEED={seed}, delay {delay * 1000:.1f} ms of "
                   f"{duration * 1000:.0f} ms, recover by {how})")
        try:
            outcomes.append(tcr.run_trial(url, tmp_path, f"torture-{i}", delay, how, context))
        except AssertionError as e:
            failures.append(str(e)[:3000])
    ks = Counter(o["k"] for o in outcomes)
    print(f"\nCRASH_SEED={seed} duration={duration * 1000:.0f}ms steps completed at the kill: "
          f"{sorted(ks.items())}; in-flight step ran twice in "
          f"{sum(o['duplicate'] for o in outcomes)} trials; failed trials: {len(failures)}")
    assert not failures, (f"{len(failures)} of {trials} trials failed:\n\n"
                          + "\n\n".join(failures))
    return outcomes


@pytest.mark.timeout(180)
def test_sigkill_then_resume_three_trials_on_postgres(pg_journal, tmp_path):
    def delays(rng, trials, duration):
        return [rng.uniform(0.0, 0.03 * duration), rng.uniform(0.3 * duration, 0.7 * duration),
                rng.uniform(0.85 * duration, 1.0 * duration)]

    assert len(_pg_torture(pg_journal, tmp_path, 3, delays)) == 3


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_then_resume_torture_on_postgres(pg_journal, tmp_path):
    import test_crash_recovery as tcr

    outcomes = _pg_torture(pg_journal, tmp_path, 30, tcr.kill_schedule)
    mid_run = [o for o in outcomes if 0 < o["k"] < cw.TORTURE_STEPS]
    assert len(mid_run) >= 8, outcomes
