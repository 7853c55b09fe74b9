"""Health checks of a journal: database, storage, leases.

    from contd_nb.observability.health import HealthChecker
    status = HealthChecker().check_all()
    status["database"]   # {"status": "ok" | "degraded" | "down", "details": {...}}

- database: the journal can be opened and read, and its schema version is one this contd_nb
  understands (down when the file is missing, damaged, newer, or held by another process past
  CONTD_BUSY_TIMEOUT: details name the error and, when busy, the holder's pid);
- storage: the journal's size and the free space of its filesystem (degraded under 5 % or
  1 GiB free, down under 1 MiB: the next commit may fail);
- leases: held, released and stale leases (an owner whose lease expired without release, or
  whose process on this host is gone); degraded while stale ones exist.

The checker never raises for a broken journal and never creates one: checking a path where no
journal exists reports it down.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.engine import ExecutionEngine
from ..core.leases import HOST, owner_is_dead
from ..persistence.adapters import open_store, resolve_journal
from ..persistence.base import JournalStore
from ..sdk.errors import ContdError, JournalBusy, JournalCorrupted, JournalSchemaTooNew

__all__ = ["HealthChecker", "overall"]

GiB = 1 << 30
MiB = 1 << 20
_RANK = {"ok": 0, "degraded": 1, "down": 2}


def _result(status: str, **details: Any) -> dict:
    return {"status": status, "details": details}


def overall(results: dict[str, dict]) -> str:
    """The worst status among check_all()'s results."""
    return max((r["status"] for r in results.values()), key=_RANK.__getitem__, default="ok")


def _error_details(e: BaseException) -> dict:
    details: dict[str, Any] = {"error_type": type(e).__name__, "error": str(e)}
    if isinstance(e, JournalBusy):
        details.update(holder_pid=e.holder_pid, holder_state=e.holder_state,
                       waited_seconds=round(e.waited_seconds, 3))
    elif isinstance(e, JournalSchemaTooNew):
        details.update(schema_version=e.found, supported_schema_version=e.supported)
    elif isinstance(e, JournalCorrupted):
        details.update(detail=e.detail)
    return details


class HealthChecker:
    """Checks one journal: ``journal`` is a path, a ``JournalStore``, or None (the default
    engine's journal if one exists in this process, else CONTD_JOURNAL / DATABASE_URL /
    .contd/journal.duckdb)."""

    def __init__(self, journal: str | os.PathLike | JournalStore | None = None, *,
                 min_free_bytes: int = GiB, min_free_ratio: float = 0.05,
                 full_free_bytes: int = MiB) -> None:
        self.journal = journal
        self.min_free_bytes = min_free_bytes
        self.min_free_ratio = min_free_ratio
        self.full_free_bytes = full_free_bytes
        self._store: JournalStore | None = None
        self._error: BaseException | None = None
        self._tried = False  # within check_all: open (and wait for a busy file) once

    # -- the journal --------------------------------------------------------------------------
    def _location(self) -> str:
        if isinstance(self.journal, JournalStore):
            return self.journal.describe()
        if self.journal is None:
            inst = ExecutionEngine._instance
            if inst is not None and inst._pid == os.getpid():
                return inst.store.describe()
        return resolve_journal(self.journal)

    def _open(self) -> JournalStore | None:
        """The store, or None with ``self._error`` set. Does not create a missing journal."""
        self._store, self._error, self._tried = None, None, True
        if isinstance(self.journal, JournalStore):
            self._store = self.journal
            return self._store
        if self.journal is None:
            inst = ExecutionEngine._instance
            if inst is not None and inst._pid == os.getpid():
                self._store = inst.store
                return self._store
        where = resolve_journal(self.journal)
        if "://" not in where and where not in ("memory", ":memory:") \
                and not Path(where).expanduser().exists():
            self._error = FileNotFoundError(
                f"no journal at {Path(where).expanduser().resolve()} (`contd init` creates one)")
            return None
        try:
            self._store = open_store(where)
        except (ContdError, OSError) as e:
            self._error = e
        return self._store

    # -- checks -------------------------------------------------------------------------------
    def check_database(self) -> dict:
        store = self._open()
        if store is None:
            return _result("down", journal=self._location(), **_error_details(self._error))
        was_open = store.is_open()
        try:
            info = store.health_check()
        finally:
            if not was_open:
                store.idle()
        status = info.pop("status")
        return _result(status, **info)

    def check_storage(self) -> dict:
        where = self._location()
        if "://" in where or where in ("memory", ":memory:"):
            return _result("ok", journal=where, note="not a local file: storage is the "
                           "database server's")
        path = Path(where).expanduser().resolve()
        size = 0
        for p in (path, Path(str(path) + ".wal")):
            try:
                if p.is_file():
                    size += p.stat().st_size
            except OSError:
                pass
        blob_bytes = 0  # large values live in files beside the journal
        for root, _, files in os.walk(str(path) + ".blobs"):
            for name in files:
                try:
                    blob_bytes += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            usage = shutil.disk_usage(probe)
        except OSError as e:
            return _result("down", journal=str(path), journal_bytes=size,
                           error_type=type(e).__name__, error=str(e))
        ratio = usage.free / usage.total if usage.total else 0.0
        details = {"journal": str(path), "journal_bytes": size,
                   "blob_files_bytes": blob_bytes, "free_bytes": usage.free,
                   "total_bytes": usage.total, "free_ratio": round(ratio, 4),
                   "filesystem": str(probe)}
        if usage.free < self.full_free_bytes:
            return _result("down", **details, reason="the filesystem is full: journal "
                           "commits will fail")
        if usage.free < self.min_free_bytes or ratio < self.min_free_ratio:
            return _result("degraded", **details, reason=(
                f"low free space (under {self.min_free_ratio:.0%} or "
                f"{self.min_free_bytes / GiB:.3g} GiB)"))
        return _result("ok", **details)

    def check_leases(self) -> dict:
        store = self._store if self._tried else self._open()
        if store is None:
            return _result("down", reason="the journal is unreachable",
                           **_error_details(self._error))
        was_open = store.is_open()
        try:
            leases = store.list_leases()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return _result("down", **_error_details(e))
        finally:
            if not was_open:
                store.idle()
        now = time.time()
        held = released = 0
        stale: list[dict] = []
        for lease in leases:
            if lease.owner_id is None:
                released += 1
            elif lease.expires_at <= now:
                stale.append({"workflow_id": lease.workflow_id, "owner_id": lease.owner_id,
                              "reason": "expired",
                              "expired_seconds_ago": round(now - lease.expires_at, 1)})
            elif owner_is_dead(lease, HOST):
                stale.append({"workflow_id": lease.workflow_id, "owner_id": lease.owner_id,
                              "reason": f"owner process {lease.pid} is gone"})
            else:
                held += 1
        details = {"held": held, "stale": len(stale), "released": released,
                   "stale_leases": stale[:20]}
        if stale:
            return _result("degraded", **details, reason=(
                f"{len(stale)} lease(s) expired without release: their workflows were "
                "interrupted (resume them, or `contd release ID`)"))
        return _result("ok", **details)

    def check_all(self) -> dict[str, dict]:
        try:
            database = self.check_database()
            return {"database": database, "storage": self.check_storage(),
                    "leases": self.check_leases()}
        finally:
            self._tried = False
