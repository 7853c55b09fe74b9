"""HealthChecker on a healthy journal and on broken ones (real files, real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_child, spawn_child

from contd_nb import StepConfig, step, workflow
from contd_nb.core.leases import HOST
from contd_nb.observability.health import HealthChecker, overall
from contd_nb.persistence.adapters import open_store
from contd_nb.persistence.base import LeaseRecord

RELAXED = {"min_free_bytes": 0, "min_free_ratio": 0.0, "full_free_bytes": 0}


@step(StepConfig())
def h_step(x):
    return x + 1


@workflow()
def h_flow(x):
    return h_step(x)


def _journal_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(str(path) + ".wal")) if p.is_file())


def test_healthy_journal(engine, journal_path):
    engine.run(h_flow.__contd_workflow__, (1,), {}, "h-ok")
    engine.store.idle()
    result = HealthChecker(journal_path, **RELAXED).check_all()
    assert set(result) == {"database", "storage", "leases"}
    db = result["database"]
    assert db["status"] == "ok"
    assert db["details"]["schema_version"] == 2 and db["details"]["workflows"] == 1
    assert db["details"]["backend"] == "duckdb"
    assert db["details"]["journal"] == str(journal_path.resolve())
    st = result["storage"]
    assert st["status"] == "ok"
    assert st["details"]["journal_bytes"] == _journal_bytes(journal_path) > 0
    assert st["details"]["blob_files_bytes"] == 0
    assert 0 < st["details"]["free_bytes"] <= st["details"]["total_bytes"]
    assert result["leases"] == {"status": "ok", "details": {
        "held": 0, "stale": 0, "released": 1, "stale_leases": []}}
    assert overall(result) == "ok"


def test_guide_snippet_uses_the_default_engine(engine, journal_path):
    status = HealthChecker().check_all()  # as the troubleshooting guide calls it
    assert status["database"]["status"] == "ok"
    assert status["database"]["details"]["journal"] == str(journal_path.resolve())
    assert status["storage"]["details"]["journal"] == str(journal_path.resolve())


def test_store_health_check(engine, journal_path):
    info = engine.store.health_check()
    assert info["status"] == "ok" and info["schema_version"] == 2
    assert info["backend"] == "duckdb" and info["size_bytes"] == _journal_bytes(journal_path)
    from contd_nb.persistence.memory_store import MemoryStore

    assert MemoryStore().health_check()["status"] == "ok"


def test_held_and_stale_leases(engine, journal_path):
    engine.lease_manager.acquire("h-held")
    now = time.time()
    engine.store.take_lease(LeaseRecord("h-expired", "ghost", 1, now - 5, "elsewhere", 7,
                                        None, now - 40, now - 40), None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    engine.store.take_lease(LeaseRecord("h-dead", "gone", 1, now + 300, HOST, dead.pid, None,
                                        now, now), None)
    leases = HealthChecker(journal_path, **RELAXED).check_leases()
    assert leases["status"] == "degraded"
    d = leases["details"]
    assert (d["held"], d["stale"], d["released"]) == (1, 2, 0)
    stale = {s["workflow_id"]: s for s in d["stale_leases"]}
    assert stale["h-expired"]["reason"] == "expired"
    assert stale["h-expired"]["expired_seconds_ago"] >= 5
    assert stale["h-dead"]["reason"] == f"owner process {dead.pid} is gone"
    assert "expired without release" in d["reason"]
    engine.lease_manager.release("h-held")


def test_missing_journal_is_down_and_not_created(tmp_path):
    path = tmp_path / "nothing" / "journal.duckdb"
    result = HealthChecker(path, **RELAXED).check_all()
    assert result["database"]["status"] == "down"
    assert result["database"]["details"]["error_type"] == "FileNotFoundError"
    assert "contd init" in result["database"]["details"]["error"]
    assert result["leases"]["status"] == "down"
    assert not path.exists() and not path.parent.exists()


def test_directory_at_journal_path_is_down(tmp_path):
    path = tmp_path / "journal.duckdb"
    path.mkdir()
    result = HealthChecker(path, **RELAXED).check_all()
    db = result["database"]
    assert db["status"] == "down" and db["details"]["error_type"] == "JournalCorrupted"
    assert "is corrupted" in db["details"]["error"]
    assert "Is a directory" in db["details"]["detail"]
    assert result["leases"]["status"] == "down"
    assert result["leases"]["details"]["error_type"] == "JournalCorrupted"


def test_random_bytes_journal_is_down(tmp_path):
    path = tmp_path / "journal.duckdb"
    path.write_bytes(os.urandom(64 * 1024))
    before = path.read_bytes()
    db = HealthChecker(path, **RELAXED).check_database()
    assert db["status"] == "down" and db["details"]["error_type"] == "JournalCorrupted"
    assert "cannot open it" in db["details"]["error"]
    assert path.read_bytes() == before  # the checker wrote nothing


def test_newer_schema_is_down(tmp_path):
    path = tmp_path / "journal.duckdb"
    out = run_child(f"""
        from contd_nb.persistence.adapters import open_store
        open_store({str(path)!r}).close()
        import duckdb
        c = duckdb.connect({str(path)!r})
        c.execute("UPDATE contd_meta SET value = '99' WHERE key = 'schema_version'")
        c.close()
        """, path)
    assert out.returncode == 0, out.stderr
    db = HealthChecker(path, **RELAXED).check_database()
    assert db["status"] == "down"
    d = db["details"]
    assert d["error_type"] == "JournalSchemaTooNew"
    assert (d["schema_version"], d["supported_schema_version"]) == (99, 2)
    assert "schema version 99, newer than this contd_nb understands (2)" in d["error"]
    import duckdb

    c = duckdb.connect(str(path), read_only=True)
    try:  # not migrated, not touched
        assert c.execute("SELECT value FROM contd_meta").fetchone()[0] == "99"
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_journal_held_by_another_process_is_down_naming_the_pid(tmp_path, monkeypatch):
    path = tmp_path / "journal.duckdb"
    child = spawn_child(f"""
        import duckdb, sys, time
        c = duckdb.connect({str(path)!r})
        print("ready", flush=True)
        time.sleep(60)
        """, path)
    try:
        assert child.stdout.readline().strip() == "ready"
        monkeypatch.setenv("CONTD_BUSY_TIMEOUT", "1")
        result = HealthChecker(path, **RELAXED).check_all()
    finally:
        child.kill()
        child.wait()
    db = result["database"]
    assert db["status"] == "down"
    d = db["details"]
    assert d["error_type"] == "JournalBusy" and d["holder_pid"] == child.pid
    assert f"is busy: process {child.pid}" in d["error"]
    assert d["waited_seconds"] >= 1
    assert result["leases"]["status"] == "down"
    assert result["leases"]["details"]["error_type"] == "JournalBusy"
    # once the holder is gone the same checker reports the journal reachable (a new file
    # without contd_nb's tables is made a journal by the store)
    assert HealthChecker(path, **RELAXED).check_database()["status"] == "ok"
    open_store(str(path)).close()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(where)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


@pytest.mark.timeout(120)
def test_full_disk_on_a_small_filesystem(tmp_path):
    fs = tmp_path / "smallfs"
    if not _mount_tmpfs(fs, "16m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    path = fs / "journal.duckdb"
    store = None
    try:
        store = open_store(str(path))
        store.idle()
        mib = 1 << 20
        checker = HealthChecker(path, min_free_bytes=4 * mib, min_free_ratio=0.05,
                                full_free_bytes=mib)
        st = checker.check_storage()
        assert st["status"] == "ok", st
        assert st["details"]["total_bytes"] == 16 * mib
        # the default thresholds (1 GiB) already call a 16 MiB filesystem degraded
        assert HealthChecker(path).check_storage()["status"] == "degraded"

        free = st["details"]["free_bytes"]
        with open(fs / "filler1", "wb") as f:
            f.write(b"\0" * (free - 2 * mib))
        st = checker.check_storage()
        assert st["status"] == "degraded", st
        assert "low free space" in st["details"]["reason"]
        assert mib <= st["details"]["free_bytes"] <= 2 * mib

        with open(fs / "filler2", "wb") as f:  # fill it to the last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        result = checker.check_all()
        assert result["storage"]["status"] == "down", result["storage"]
        assert "full" in result["storage"]["details"]["reason"]
        assert result["storage"]["details"]["free_bytes"] < mib
        assert result["database"]["status"] == "ok"  # reading still works
        assert overall(result) == "down"
    finally:
        if store is not None:
            store.close()
        subprocess.run(["umount", "-l", str(fs)], capture_output=True, timeout=30)
