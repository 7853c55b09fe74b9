"""The one contract suite every JournalStore backend passes (persistence/base.py).

Each backend is a factory ``make(tmp_path) -> JournalStore`` in ``BACKENDS``; the ``store``
fixture is parametrized over them, so adding PostgreSQL later is one entry, e.g.::

    def _postgres(tmp_path):
        url = os.environ.get("CONTD_TEST_DATABASE_URL") or pytest.skip("no PostgreSQL")
        return PostgresStore(url, schema=f"t_{tmp_path.name}")
    BACKENDS["postgres"] = _postgres

Backend-specific behaviour (a DuckDB file surviving close/reopen, two store objects on one
file) is at the end, on the ``duckdb`` factory only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from contd_nb.persistence.base import (
    SCHEMA_VERSION,
    BlobRecord,
    EventRecord,
    JournalStore,
    LeaseRecord,
    RestoreRecord,
    SnapshotRecord,
    WorkflowRecord,
)
from contd_nb.persistence.duckdb_store import DuckDBStore
from contd_nb.persistence.memory_store import MemoryStore
from contd_nb.sdk.errors import LeaseLost

# -- backends -------------------------------------------------------------------------------


def _memory(tmp_path: Path) -> JournalStore:
    return MemoryStore()


def _duckdb(tmp_path: Path) -> JournalStore:
    return DuckDBStore(tmp_path / "contract" / "journal.duckdb", busy_timeout=20)


def _postgres(tmp_path: Path) -> JournalStore:
    from conftest import pg_schema_url

    from contd_nb.persistence.postgres_store import PostgresStore

    return PostgresStore(pg_schema_url())  # a schema of its own on the session's server


BACKENDS = {"memory": _memory, "duckdb": _duckdb, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path):
    s = BACKENDS[request.param](tmp_path)
    yield s
    s.close()


# -- record builders ------------------------------------------------------------------------

T0 = 1_700_000_000.0


def wf(workflow_id="wf-1", status="running", created_at=T0, **kw) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, kw.pop("name", "pipeline"),
                          kw.pop("function", "mod:pipeline"), status, created_at, created_at,
                          **kw)


def ev(seq, workflow_id="wf-1", kind="step_completed", token=None, payload=b"\x00\x01x",
       **kw) -> EventRecord:
    return EventRecord(workflow_id, seq, kind, kw.get("step_number", seq),
                       kw.get("step_name", f"s{seq}"), kw.get("attempt", 1), T0 + seq,
                       T0 + seq + 0.5, kw.get("info", '{"code_hash":"abc"}'),
                       kw.get("encoding", "json"), payload, f"sum{seq}", token)


def lease(workflow_id="wf-1", owner="exec-A", token=1, expires_at=None, now=None
          ) -> LeaseRecord:
    now = time.time() if now is None else now
    return LeaseRecord(workflow_id, owner, token, now + 30 if expires_at is None else expires_at,
                       "host-a", 4242, 123.0, now, now)


def snap(seq, step_number, workflow_id="wf-1") -> SnapshotRecord:
    return SnapshotRecord(workflow_id, step_number, seq, T0 + seq, "pickle",
                          f"state-{seq}".encode(), f"c{seq}")


def hold(store: JournalStore, workflow_id="wf-1", owner="exec-A") -> int:
    """Take a fresh lease for owner (insert or CAS on the current row); return the token."""
    cur = store.get_lease(workflow_id)
    token = 1 if cur is None else cur.token + 1
    assert store.take_lease(lease(workflow_id, owner, token),
                            None if cur is None else cur.token)
    return token


# -- metadata -------------------------------------------------------------------------------


def test_backend_metadata(store):
    assert store.backend in BACKENDS
    assert store.schema_version() == SCHEMA_VERSION
    key = store.signing_key()
    assert isinstance(key, bytes) and len(key) >= 16
    assert store.signing_key() == key  # stable
    assert isinstance(store.describe(), str) and store.describe()
    store.idle()  # optional hook: must not break later use
    assert store.schema_version() == SCHEMA_VERSION
    assert store.signing_key() == key


# -- workflows ------------------------------------------------------------------------------


def test_insert_and_get_workflow_round_trips_every_field(store):
    rec = wf("wf-1", input_encoding="pickle", input_payload=b"\x00in\xff",
             result_encoding=None, error=None, config='{"snapshot_interval": 5}')
    assert store.insert_workflow(rec) is True
    assert store.get_workflow("wf-1") == rec
    assert store.get_workflow("nope") is None


def test_insert_workflow_twice_returns_false_and_changes_nothing(store):
    first = wf("wf-1", name="first")
    assert store.insert_workflow(first) is True
    assert store.insert_workflow(wf("wf-1", name="second", status="failed")) is False
    assert store.get_workflow("wf-1") == first


def test_update_workflow_sets_status_result_and_error(store):
    store.insert_workflow(wf("wf-1"))
    token = hold(store)
    before = store.get_workflow("wf-1").updated_at
    assert store.update_workflow("wf-1", token, status="completed", result_encoding="json",
                                 result_payload=b"42") is True
    got = store.get_workflow("wf-1")
    assert (got.status, got.result_encoding, got.result_payload, got.error) == \
        ("completed", "json", b"42", None)
    assert got.updated_at >= before
    assert store.update_workflow("wf-1", token, status="failed",
                                 error='{"type": "ValueError"}') is True
    got = store.get_workflow("wf-1")
    assert (got.status, got.error, got.result_payload) == \
        ("failed", '{"type": "ValueError"}', None)


def test_update_workflow_is_fenced_by_token(store):
    store.insert_workflow(wf("wf-1"))
    old = hold(store, owner="exec-A")
    new = hold(store, owner="exec-B")
    assert new == old + 1
    with pytest.raises(LeaseLost) as err:
        store.update_workflow("wf-1", old, status="completed")
    assert (err.value.token, err.value.current_token) == (old, new)
    assert store.get_workflow("wf-1").status == "running"
    assert store.update_workflow("wf-1", new, status="completed") is True


def test_update_workflow_without_token_is_administrative(store):
    store.insert_workflow(wf("wf-1"))
    hold(store)
    assert store.update_workflow("wf-1", None, status="cancelled") is True
    assert store.get_workflow("wf-1").status == "cancelled"
    assert store.update_workflow("missing", None, status="cancelled") is False


def test_update_workflow_only_if_status(store):
    store.insert_workflow(wf("wf-1", status="completed"))
    assert store.update_workflow("wf-1", None, status="cancelled",
                                 only_if_status=("running", "failed")) is False
    assert store.get_workflow("wf-1").status == "completed"
    store.insert_workflow(wf("wf-2", status="failed"))
    assert store.update_workflow("wf-2", None, status="cancelled",
                                 only_if_status=("running", "failed")) is True
    assert store.get_workflow("wf-2").status == "cancelled"


def test_list_workflows_by_status_in_creation_order(store):
    store.insert_workflow(wf("wf-c", status="running", created_at=T0 + 3))
    store.insert_workflow(wf("wf-a", status="completed", created_at=T0 + 1))
    store.insert_workflow(wf("wf-b", status="running", created_at=T0 + 2))
    assert [w.workflow_id for w in store.list_workflows()] == ["wf-a", "wf-b", "wf-c"]
    assert [w.workflow_id for w in store.list_workflows("running")] == ["wf-b", "wf-c"]
    assert [w.workflow_id for w in store.list_workflows("completed")] == ["wf-a"]
    assert store.list_workflows("cancelled") == []


# -- events ---------------------------------------------------------------------------------


def test_append_and_read_events_in_seq_order(store):
    for seq in (1, 2, 3, 4):
        store.append_event(ev(seq), None)
    store.append_event(ev(1, workflow_id="wf-other"), None)
    got = store.read_events("wf-1")
    assert [e.seq for e in got] == [1, 2, 3, 4]
    assert got[2] == ev(3)  # every field round-trips, bytes included
    assert [e.seq for e in store.read_events("wf-1", after_seq=2)] == [3, 4]
    assert store.read_events("wf-1", after_seq=4) == []
    assert store.read_events("nobody") == []
    assert [e.workflow_id for e in store.read_events("wf-other")] == ["wf-other"]


def test_events_with_null_fields_round_trip(store):
    e = EventRecord("wf-1", 1, "workflow_started", None, None, None, None, T0, None, None,
                    None, "sum", None)
    store.append_event(e, None)
    assert store.read_events("wf-1") == [e]


def test_last_seq(store):
    assert store.last_seq("wf-1") == 0
    store.append_event(ev(1), None)
    store.append_event(ev(2), None)
    store.append_event(ev(7, workflow_id="wf-2"), None)
    assert store.last_seq("wf-1") == 2
    assert store.last_seq("wf-2") == 7


def test_read_events_is_in_seq_order_whatever_the_append_order(store):
    # (workflow_id, seq) uniqueness is the fenced writer's job, not the store's (base.py:
    # "Stores need not enforce unique (workflow_id, seq)"); order on read is the store's.
    for seq in (2, 5, 1, 4, 3):
        store.append_event(ev(seq), None)
    assert [e.seq for e in store.read_events("wf-1")] == [1, 2, 3, 4, 5]
    assert [e.seq for e in store.read_events("wf-1", after_seq=3)] == [4, 5]
    assert store.last_seq("wf-1") == 5


def test_append_with_current_token_is_accepted_and_recorded(store):
    token = hold(store)
    store.append_event(ev(1, token=token), token)
    assert store.read_events("wf-1")[0].lease_token == token


def test_append_with_a_token_that_is_not_current_raises_lease_lost(store):
    old = hold(store, owner="exec-A")
    store.append_event(ev(1, token=old), old)
    new = hold(store, owner="exec-B")
    with pytest.raises(LeaseLost) as err:
        store.append_event(ev(2, token=old), old)
    assert err.value.token == old
    assert err.value.current_token == new
    assert err.value.current_owner == "exec-B"
    assert err.value.workflow_id == "wf-1"
    assert "lost its lease" in str(err.value)
    assert store.last_seq("wf-1") == 1
    store.append_event(ev(2, token=new), new)
    assert store.last_seq("wf-1") == 2


def test_append_with_a_token_and_no_lease_row_raises_lease_lost(store):
    with pytest.raises(LeaseLost) as err:
        store.append_event(ev(1), 1)
    assert (err.value.token, err.value.current_token) == (1, None)
    assert store.read_events("wf-1") == []


def test_append_after_release_is_refused(store):
    token = hold(store)
    store.append_event(ev(1), token)
    assert store.release_lease("wf-1", "exec-A", token) is True
    with pytest.raises(LeaseLost) as err:
        store.append_event(ev(2), token)
    assert (err.value.token, err.value.current_token) == (token, token)
    assert store.last_seq("wf-1") == 1


def test_append_after_force_release_is_refused_and_token_bumped(store):
    token = hold(store)
    store.append_event(ev(1), token)
    store.force_release("wf-1", time.time())
    with pytest.raises(LeaseLost) as err:
        store.append_event(ev(2), token)
    assert (err.value.token, err.value.current_token) == (token, token + 1)
    with pytest.raises(LeaseLost):  # and the new token is not held by anyone either
        store.append_event(ev(2), token + 1)
    assert store.last_seq("wf-1") == 1


def test_append_without_token_needs_no_lease(store):
    hold(store)
    store.force_release("wf-1", time.time())
    store.append_event(ev(1), None)
    assert store.last_seq("wf-1") == 1


# -- leases ---------------------------------------------------------------------------------


def test_take_lease_inserts_only_if_absent(store):
    assert store.get_lease("wf-1") is None
    first = lease(owner="exec-A", token=1)
    assert store.take_lease(first, None) is True
    assert store.get_lease("wf-1") == first
    assert store.take_lease(lease(owner="exec-B", token=1), None) is False
    assert store.get_lease("wf-1") == first


def test_take_lease_updates_only_if_expected_token_matches(store):
    assert store.take_lease(lease(owner="exec-A", token=1), None)
    second = lease(owner="exec-B", token=2)
    assert store.take_lease(second, 1) is True
    assert store.get_lease("wf-1") == second
    # a stale expected token (someone took it in between) fails and changes nothing
    assert store.take_lease(lease(owner="exec-C", token=2), 1) is False
    assert store.get_lease("wf-1") == second
    # expecting a row that does not exist fails too
    assert store.take_lease(lease("wf-none", owner="exec-C", token=5), 4) is False
    assert store.get_lease("wf-none") is None


def test_renew_only_by_the_owner_with_the_current_token(store):
    now = time.time()
    assert store.take_lease(lease(owner="exec-A", token=1, now=now), None)
    assert store.renew_lease("wf-1", "exec-A", 1, now + 100, now + 1) is True
    got = store.get_lease("wf-1")
    assert (got.expires_at, got.renewed_at, got.acquired_at) == (now + 100, now + 1, now)
    assert store.renew_lease("wf-1", "exec-B", 1, now + 500, now + 2) is False
    assert store.renew_lease("wf-1", "exec-A", 2, now + 500, now + 2) is False
    assert store.renew_lease("wf-missing", "exec-A", 1, now + 500, now + 2) is False
    assert store.get_lease("wf-1").expires_at == now + 100
    assert store.release_lease("wf-1", "exec-A", 1)
    assert store.renew_lease("wf-1", "exec-A", 1, now + 500, now + 2) is False


def test_release_keeps_the_token_and_only_the_owner_releases(store):
    assert store.take_lease(lease(owner="exec-A", token=1), None)
    assert store.release_lease("wf-1", "exec-B", 1) is False
    assert store.release_lease("wf-1", "exec-A", 2) is False
    assert store.get_lease("wf-1").owner_id == "exec-A"
    assert store.release_lease("wf-1", "exec-A", 1) is True
    got = store.get_lease("wf-1")
    assert (got.owner_id, got.token) == (None, 1)
    assert store.release_lease("wf-1", "exec-A", 1) is False  # not the owner any more
    assert store.release_lease("wf-missing", "exec-A", 1) is False


def test_force_release_returns_the_old_lease_and_bumps_the_token(store):
    assert store.force_release("wf-1", time.time()) is None
    held = lease(owner="exec-A", token=1)
    assert store.take_lease(held, None)
    now = time.time()
    before = store.force_release("wf-1", now)
    assert before == held
    got = store.get_lease("wf-1")
    assert (got.owner_id, got.token, got.expires_at) == (None, 2, now)
    # a free row can be force-released again: still bumps
    assert store.force_release("wf-1", now).token == 2
    assert store.get_lease("wf-1").token == 3


def test_tokens_only_grow_across_acquire_release_force_release_cycles(store):
    seen = []
    for cycle in range(4):
        token = hold(store, owner=f"exec-{cycle}")
        seen.append(token)
        assert store.release_lease("wf-1", f"exec-{cycle}", token)
        seen.append(store.get_lease("wf-1").token)
        token = hold(store, owner=f"exec-{cycle}b")
        seen.append(token)
        store.force_release("wf-1", time.time())
        seen.append(store.get_lease("wf-1").token)
    assert seen == sorted(seen)
    assert seen[0] == 1 and seen[-1] == 12
    assert len(set(seen)) == 12  # release keeps the token; every take and force bumps it


def test_list_leases_sorted_by_workflow(store):
    for wid in ("wf-c", "wf-a", "wf-b"):
        assert store.take_lease(lease(wid, owner=f"o-{wid}"), None)
    got = store.list_leases()
    assert [(x.workflow_id, x.owner_id) for x in got] == \
        [("wf-a", "o-wf-a"), ("wf-b", "o-wf-b"), ("wf-c", "o-wf-c")]


def test_lease_fields_round_trip(store):
    rec = LeaseRecord("wf-1", "exec-A", 1, T0 + 30, "host-x", 99, None, T0, T0 + 1)
    assert store.take_lease(rec, None)
    assert store.get_lease("wf-1") == rec


def _lease_races(store: JournalStore, trials: int) -> None:
    for trial in range(trials):
        wid = f"wf-race-{trial}"
        winners = _race_for(store, wid, None, 1)
        assert len(winners) == 1, winners
        assert store.get_lease(wid).owner_id == winners[0]
        winners = _race_for(store, wid, 1, 2)
        assert len(winners) == 1, winners
        got = store.get_lease(wid)
        assert (got.owner_id, got.token) == (winners[0], 2)


def _race_for(store, wid, expected, token):
    barrier = threading.Barrier(4)
    winners: list[str] = []
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            barrier.wait()
            if store.take_lease(lease(wid, owner=f"racer-{i}", token=token), expected):
                winners.append(f"racer-{i}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return winners


def test_take_lease_race_has_exactly_one_winner(store):
    _lease_races(store, 3)


@pytest.mark.slow
def test_take_lease_race_has_exactly_one_winner_many_trials(store):
    _lease_races(store, 150)


def test_concurrent_appends_of_different_workflows_all_land(store):
    def writer(wid: str) -> None:
        for seq in range(1, 31):
            store.append_event(ev(seq, workflow_id=wid), None)

    threads = [threading.Thread(target=writer, args=(f"wf-t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(4):
        assert [e.seq for e in store.read_events(f"wf-t{i}")] == list(range(1, 31))


# -- snapshots ------------------------------------------------------------------------------


def _blob(data: bytes, h: str | None = None) -> BlobRecord:
    return BlobRecord(h or f"h-{len(data)}-{data[:4].hex()}", "pickle", data, len(data), T0)


def test_blobs_are_committed_with_their_event_and_stored_once(store):
    store.take_lease(lease(), None)
    a, b = _blob(b"alpha" * 100), _blob(b"beta" * 10)
    store.append_event(ev(1, token=1), 1, blobs=(a, b))
    store.append_event(ev(2, token=1), 1, blobs=(a,))  # same hash again: skipped, not an error
    assert [e.seq for e in store.read_events("wf-1")] == [1, 2]
    got = store.get_blobs([a.hash, b.hash, "missing"])
    assert set(got) == {a.hash, b.hash}
    assert got[a.hash] == a and got[b.hash] == b
    assert store.known_blobs([a.hash, "missing"]) == {a.hash}
    assert store.get_blobs([]) == {} and store.known_blobs([]) == set()


def test_blobs_of_a_fenced_out_write_are_not_stored(store):
    store.take_lease(lease(), None)
    store.force_release("wf-1", time.time())
    blob = _blob(b"never")
    with pytest.raises(LeaseLost):
        store.append_event(ev(1, token=1), 1, blobs=(blob,))
    assert store.known_blobs([blob.hash]) == set()
    assert store.read_events("wf-1") == []


def test_snapshots_latest_by_seq(store):
    assert store.latest_snapshot("wf-1") is None
    store.write_snapshot(snap(11, 5), None)
    store.write_snapshot(snap(31, 15), None)
    store.write_snapshot(snap(21, 10), None)  # written later, but older
    store.write_snapshot(snap(99, 40, workflow_id="wf-2"), None)
    assert store.latest_snapshot("wf-1") == snap(31, 15)
    assert store.latest_snapshot("wf-2") == snap(99, 40, workflow_id="wf-2")


def test_write_snapshot_is_fenced(store):
    old = hold(store, owner="exec-A")
    store.write_snapshot(snap(5, 2), old)
    new = hold(store, owner="exec-B")
    with pytest.raises(LeaseLost) as err:
        store.write_snapshot(snap(9, 4), old)
    assert (err.value.token, err.value.current_token) == (old, new)
    assert store.latest_snapshot("wf-1") == snap(5, 2)
    store.write_snapshot(snap(9, 4), new)
    assert store.latest_snapshot("wf-1") == snap(9, 4)


# -- restores -------------------------------------------------------------------------------


def test_restores_are_listed_per_workflow(store):
    assert store.list_restores() == []
    r1 = RestoreRecord("wf-1", T0 + 1, 1.5, 7, None, "resume", "exec-A")
    r2 = RestoreRecord("wf-2", T0 + 2, 0.25, 3, 20, "inspect", None)
    r3 = RestoreRecord("wf-1", T0 + 3, 2.0, 4, 20, "resume", "exec-B")
    for r in (r1, r2, r3):
        store.record_restore(r)
    assert store.list_restores("wf-1") == [r1, r3]
    assert store.list_restores("wf-2") == [r2]
    assert store.list_restores() == [r1, r2, r3]
    assert store.list_restores("wf-none") == []


# -- DuckDB only: a file that outlives its store objects ------------------------------------


def _fill(s: JournalStore) -> dict:
    s.insert_workflow(wf("wf-1", input_encoding="json", input_payload=b"[[],{}]"))
    token = hold(s)
    for seq in (1, 2, 3):
        s.append_event(ev(seq, token=token), token)
    s.write_snapshot(snap(3, 3), token)
    s.record_restore(RestoreRecord("wf-1", T0, 1.0, 3, None, "inspect", None))
    s.update_workflow("wf-1", token, status="completed", result_encoding="json",
                      result_payload=b"6")
    return {"workflow": s.get_workflow("wf-1"), "events": s.read_events("wf-1"),
            "snapshot": s.latest_snapshot("wf-1"), "lease": s.get_lease("wf-1"),
            "restores": s.list_restores(), "key": s.signing_key(), "token": token}


def test_duckdb_data_survives_close_and_reopen(tmp_path):
    path = tmp_path / "j" / "journal.duckdb"
    first = DuckDBStore(path, busy_timeout=20)
    before = _fill(first)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.get_workflow("wf-1")
    second = DuckDBStore(path, busy_timeout=20)
    try:
        assert second.get_workflow("wf-1") == before["workflow"]
        assert second.read_events("wf-1") == before["events"]
        assert second.latest_snapshot("wf-1") == before["snapshot"]
        assert second.get_lease("wf-1") == before["lease"]
        assert second.list_restores() == before["restores"]
        assert second.signing_key() == before["key"]
        assert second.last_seq("wf-1") == 3
        # fencing state is in the file, not in the object: the old token still works
        second.append_event(ev(4), before["token"])
        assert second.last_seq("wf-1") == 4
    finally:
        second.close()


def test_duckdb_two_store_objects_on_one_file_take_turns(tmp_path):
    path = tmp_path / "j" / "journal.duckdb"
    a = DuckDBStore(path, busy_timeout=20)
    b = DuckDBStore(path, busy_timeout=20)
    try:
        assert a.signing_key() == b.signing_key()
        for i in range(5):
            assert a.insert_workflow(wf(f"wf-a{i}", created_at=T0 + 2 * i))
            assert b.insert_workflow(wf(f"wf-b{i}", created_at=T0 + 2 * i + 1))
            assert b.get_workflow(f"wf-a{i}") is not None
            assert a.get_workflow(f"wf-b{i}") is not None
        assert a.insert_workflow(wf("wf-b0")) is False
        assert len(a.list_workflows()) == len(b.list_workflows()) == 10
        # fencing across objects: A holds the lease, B force-releases, A is refused
        token = hold(a, owner="exec-A")
        a.append_event(ev(1), token)
        assert b.force_release("wf-1", time.time()).owner_id == "exec-A"
        with pytest.raises(LeaseLost) as err:
            a.append_event(ev(2), token)
        assert (err.value.token, err.value.current_token) == (token, token + 1)
        assert b.last_seq("wf-1") == 1
    finally:
        a.close()
        b.close()


def test_duckdb_journal_of_schema_1_is_migrated_and_keeps_its_rows(tmp_path):
    import duckdb

    from contd_nb.persistence import schema

    path = tmp_path / "old" / "journal.duckdb"
    path.parent.mkdir()
    con = duckdb.connect(str(path))  # a journal as version 1 wrote it (no blobs table)
    for stmt in schema.CREATE_STATEMENTS:
        if "CREATE TABLE blobs" not in stmt:
            con.execute(stmt.format(blob="BLOB"))
    con.execute("INSERT INTO contd_meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO workflows (workflow_id, name, function, status, created_at, "
                "updated_at) VALUES ('old-wf', 'p', 'm:p', 'completed', 1, 2)")
    con.close()
    store = DuckDBStore(path, busy_timeout=20)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 2
        assert store.get_workflow("old-wf").status == "completed"
        store.take_lease(lease("old-wf"), None)
        store.append_event(ev(1, workflow_id="old-wf", token=1), 1, blobs=(_blob(b"new"),))
        assert store.known_blobs([_blob(b"new").hash]) == {_blob(b"new").hash}
    finally:
        store.close()


def test_duckdb_large_blobs_live_in_files_checked_on_read(tmp_path):
    from contd_nb.sdk.errors import JournalCorrupted

    path = tmp_path / "files" / "journal.duckdb"
    store = DuckDBStore(path, busy_timeout=20, blob_file_threshold=1000)
    try:
        store.take_lease(lease(), None)
        small, big = _blob(b"s" * 10, "hsmall"), _blob(bytes(range(256)) * 40, "hbig")
        store.append_event(ev(1, token=1), 1, blobs=(small, big))
        blob_file = Path(str(path) + ".blobs") / "hb" / "hbig"
        assert blob_file.read_bytes() == big.payload  # the big one is a file, fsynced
        assert not (Path(str(path) + ".blobs") / "hs").exists()
        assert store.get_blobs(["hsmall", "hbig"]) == {"hsmall": small, "hbig": big}
        damaged = bytearray(big.payload)
        damaged[100] ^= 0xFF
        blob_file.write_bytes(bytes(damaged))
        with pytest.raises(JournalCorrupted, match="blob hbig .* missing or damaged"):
            store.get_blobs(["hbig"])
        blob_file.unlink()
        with pytest.raises(JournalCorrupted, match="hbig"):
            store.get_blobs(["hbig"])
        assert store.get_blobs(["hsmall"]) == {"hsmall": small}  # the rest still reads
    finally:
        store.close()
