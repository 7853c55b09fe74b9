"""`contd worker`: workers resume orphaned workflows, each exactly once, and stop cleanly."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import spawn_child
from worker_workflows import pipeline

from contd_nb import Client, ExecutionEngine
from contd_nb.sdk.worker import Worker, is_orphaned

WORKER = """
import sys
from contd_nb.cli import main
sys.exit(main(["worker", "--poll", "0.05", "--max-seconds", "120"]))
"""


def _side_counts(path: Path) -> Counter:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_is_orphaned_decision():
    from contd_nb.persistence.base import LeaseRecord

    now = 1000.0
    held = LeaseRecord("w", "me", 1, now + 5, "h", 1, None, now, now)
    assert is_orphaned(None, now, False)
    assert is_orphaned(LeaseRecord("w", None, 3, now + 5, "h", 1, None, now, now), now, False)
    assert not is_orphaned(held, now, False)
    assert is_orphaned(held, now + 6, False)           # expired
    assert is_orphaned(held, now, True)                # its process is gone


def test_enqueued_workflows_are_run_by_a_worker_once(engine, tmp_path):
    side = tmp_path / "side.txt"
    ids = [Client().enqueue(pipeline, f"t{k}", 4, str(side), workflow_id=f"q-{k}")
           for k in range(3)]
    assert ids == ["q-0", "q-1", "q-2"]
    assert sorted(Worker(engine).orphans()) == ids
    assert Client().status("q-0").status == "interrupted"      # journaled, nobody runs it
    assert Worker(engine).run_once() == 3
    assert [Client().result(i) for i in ids] == [0 + 1 + 4 + 9] * 3
    assert _side_counts(side) == Counter({f"t{k}:{i}": 1 for k in range(3) for i in range(4)})
    assert Worker(engine).orphans() == []
    first = engine.journal.get_events("q-0")
    assert [e.kind for e in first][:2] == ["workflow_enqueued", "workflow_resumed"]
    # the enqueue is not an execution: the first real attempt of each step is attempt 1
    assert {e.attempt for e in first if e.kind == "step_completed"} == {1}


def _tokens_only_grow(events) -> bool:
    """No write of a fenced-out executor: along the journal, lease tokens never go back."""
    tokens = [e.lease_token for e in events if e.lease_token is not None]
    return tokens == sorted(tokens)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend,n_workers,n_workflows,kills", [
    ("duckdb", 3, 12, 1),
    ("postgres", 4, 40, 4),
])
def test_workers_killed_at_random_every_workflow_completes_once(backend, n_workers,
                                                                n_workflows, kills, request,
                                                                tmp_path):
    """Worker processes share one journal while workers are SIGKILLed at random and replaced.
    Every workflow completes; each step ran once, except at most the one in flight in each
    killed worker (at least once); no write of a fenced-out executor was accepted."""
    import random

    journal = str(request.getfixturevalue("journal_path")) if backend == "duckdb" else \
        request.getfixturevalue("pg_journal")
    side = tmp_path / "side.txt"
    engine = ExecutionEngine(journal)
    n_steps = 6
    for k in range(n_workflows):
        Client(engine=engine).enqueue(pipeline, f"w{k}", n_steps, str(side), 0.03,
                                      workflow_id=f"job-{k}")
    engine.close()
    workers = [spawn_child(WORKER, journal) for _ in range(n_workers)]
    killed = []
    rng = random.Random(1234)
    deadline = time.monotonic() + 120
    reader = ExecutionEngine(journal)
    try:
        for _ in range(kills):
            target = sum(_side_counts(side).values()) + rng.randint(5, 25)
            while sum(_side_counts(side).values()) < target:
                assert time.monotonic() < deadline, "no worker made progress"
                if all(s.status == "completed" for s in Client(engine=reader).list()):
                    break
                time.sleep(0.02)
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed.append(victim)
            workers.append(spawn_child(WORKER, journal))   # a replacement
        while True:
            statuses = {s.workflow_id: s.status for s in Client(engine=reader).list()}
            if all(v == "completed" for v in statuses.values()):
                break
            assert time.monotonic() < deadline + 60, statuses
            time.sleep(0.2)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        outs = [w.communicate(timeout=60) for w in workers]
        assert [w.returncode for w in workers] == [0] * n_workers, [o[1][-2000:] for o in outs]
        counts = _side_counts(side)
        expected = {f"w{k}:{i}" for k in range(n_workflows) for i in range(n_steps)}
        assert set(counts) == expected
        twice = [k for k, v in counts.items() if v > 1]
        assert all(v <= 2 for v in counts.values()) and len(twice) <= len(killed), twice
        for k in range(n_workflows):
            wid = f"job-{k}"
            assert Client(engine=reader).result(wid) == sum(i * i for i in range(n_steps))
            events = reader.journal.get_events(wid)
            done = [e.step_number for e in events if e.kind == "step_completed"]
            assert done == list(range(1, n_steps + 1))       # each step journaled once
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert _tokens_only_grow(events), [(e.seq, e.lease_token) for e in events]
        assert all(lease.owner_id is None for lease in reader.lease_manager.list_leases())
    finally:
        for w in workers + killed:
            if w.poll() is None:
                w.kill()
        reader.close()


@pytest.mark.timeout(120)
def test_sigterm_releases_the_lease_at_once(journal_path, tmp_path):
    side = tmp_path / "side.txt"
    engine = ExecutionEngine(str(journal_path))
    Client(engine=engine).enqueue(pipeline, "slow", 3, str(side), 2.0, workflow_id="slow-1")
    engine.close()
    worker = spawn_child(WORKER, journal_path)
    reader = ExecutionEngine(str(journal_path))
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the worker holds the lease (inside the first 2 s step)
            lease = reader.lease_manager.get_current_lease("slow-1")
            if lease is not None and lease.owner_id is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err[-2000:]
        assert "resumed 0 workflow(s); 0 failed" in out
        lease = reader.lease_manager.get_current_lease("slow-1")
        assert lease.owner_id is None                       # released, not left to expire
        assert Client(engine=reader).status("slow-1").status == "interrupted"
        assert Worker(reader).run_once() == 1               # another worker finishes it
        assert Client(engine=reader).result("slow-1") == 0 + 1 + 4
    finally:
        if worker.poll() is None:
            worker.kill()
        reader.close()
