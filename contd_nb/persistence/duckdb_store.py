"""The embedded default journal: one DuckDB file, shared by several processes in turns.

How the file is shared (DESIGN.md "DuckDB, one file, several processes"):
- a process opens the file behind a FileGate (its own flock held across open..close) and keeps
  its connection while it works, so a tight loop of steps pays one commit per step;
- a background janitor closes the connection when the process has been idle for
  ``idle_release`` seconds, or when another process waits and this one has held the file for
  ``handover_after`` seconds; the next write opens it again;
- a process that waits longer than ``busy_timeout`` gets JournalBusy naming the holder's pid.

Fencing: while a process holds the gate no other process can change a lease, so a lease token
checked once in a gate session stays valid until this process changes that lease or lets go of
the file. The first fenced write of a session reads the token; later ones reuse the check.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..sdk.errors import ConfigurationError, JournalBusy, JournalCorrupted, LeaseLost
from . import schema
from .base import (
    BlobRecord,
    EventRecord,
    JournalStore,
    LeaseRecord,
    RestoreRecord,
    SnapshotRecord,
    WorkflowRecord,
)
from .blob_files import BlobFiles, crc32
from .file_gate import FileGate, process_state
from .signing_key import key_for_file

if TYPE_CHECKING:
    import duckdb

__all__ = ["DuckDBStore", "default_busy_timeout"]

_LOCK_CONFLICT = re.compile(r"Could not set lock|Conflicting lock", re.I)
_PID_IN_MESSAGE = re.compile(r"PID (\d+)")
_DAMAGED = re.compile(r"Could not read enough bytes|Corrupt|checksum|not a valid DuckDB", re.I)


def default_busy_timeout() -> float:
    raw = os.environ.get("CONTD_BUSY_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"CONTD_BUSY_TIMEOUT={raw!r} is not valid: give a number of "
                                 "seconds >= 0")
    return value


class DuckDBStore(JournalStore):
    backend = "duckdb"

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float | None = None,
                 idle_release: float = 0.1, handover_after: float = 0.05,
                 blob_file_threshold: int = 1 << 20) -> None:
        self.path = str(Path(path).expanduser().resolve())
        self.blob_file_threshold = blob_file_threshold
        self._blob_files = BlobFiles(self.path)
        self.busy_timeout = default_busy_timeout() if busy_timeout is None else busy_timeout
        self.idle_release = idle_release
        self.handover_after = handover_after
        self._gate = FileGate(self.path)
        self._lock = threading.RLock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._fence_ok: dict[str, int] = {}
        self._last_use = 0.0
        self._closed = False
        self._key: bytes | None = None
        self._schema_version: int | None = None
        self._wake = threading.Event()
        self._janitor_active = False
        try:
            with self._session():  # validate (or create) the schema now: fail early, clearly
                pass
        except BaseException:
            self._gate.close()
            raise

    # -- connection management ----------------------------------------------------------------
    def describe(self) -> str:
        return self.path

    def signing_key(self) -> bytes:
        if self._key is None:
            self._key = key_for_file(self.path)
        return self._key

    def schema_version(self) -> int:
        with self._session():
            return self._schema_version  # type: ignore[return-value]

    @contextmanager
    def _session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"journal store {self.path} is closed")
            conn = self._ensure_open()
            try:
                yield conn
            except Exception as e:
                if _DAMAGED.search(str(e)) and type(e).__module__.startswith(("duckdb",
                                                                               "_duckdb")):
                    self._close_conn()
                    raise JournalCorrupted(self.path, f"DuckDB cannot read it: {e}") from e
                raise
            finally:
                self._last_use = time.monotonic()

    def _ensure_open(self) -> duckdb.DuckDBPyConnection:
        after_yield = False
        if self._conn is not None:
            if (time.monotonic() - self._gate.held_since < self.handover_after
                    or not self._gate.someone_waits()):
                return self._conn
            self._close_conn()  # hand the file over between two operations
            after_yield = True
        self._gate.acquire(self.busy_timeout, after_yield=after_yield)
        try:
            self._conn = self._connect()
            self._schema_version = schema.ensure(self._conn, self.path)
        except BaseException:
            self._close_conn()
            raise
        self._start_janitor()
        return self._conn

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb  # here, not at module level: `import contd_nb` stays cheap

        start = time.monotonic()
        while True:
            try:
                conn = duckdb.connect(self.path)
                # timestamps that views build (to_timestamp) come out as UTC-aware
                conn.execute("SET TimeZone='UTC'")
                return conn
            except duckdb.IOException as e:
                if not _LOCK_CONFLICT.search(str(e)):
                    raise JournalCorrupted(self.path, f"DuckDB cannot open it: {e}") from e
                waited = time.monotonic() - start
                if waited >= self.busy_timeout:  # a process outside contd_nb holds the file
                    m = _PID_IN_MESSAGE.search(str(e))
                    pid = int(m.group(1)) if m else None
                    raise JournalBusy(self.path, pid, waited,
                                      process_state(pid) if pid else "") from e
                time.sleep(0.01)
            except duckdb.Error as e:
                raise JournalCorrupted(self.path, f"DuckDB cannot open it: {e}") from e

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        self._fence_ok.clear()
        self._gate.release()

    def _start_janitor(self) -> None:  # called with self._lock held
        if not self._janitor_active:
            self._janitor_active = True
            threading.Thread(target=_janitor_loop, args=(weakref.ref(self),),
                             name="contd-journal-janitor", daemon=True).start()

    def _janitor_tick(self) -> bool:
        """Close the file if idle or wanted elsewhere. Returns False when done for good."""
        if not self._lock.acquire(blocking=False):
            return not self._closed
        try:
            now = time.monotonic()
            if self._conn is not None and not (
                    now - self._last_use >= self.idle_release
                    or (now - self._gate.held_since >= self.handover_after
                        and self._gate.someone_waits())):
                return True
            if self._conn is not None:
                self._close_conn()
            self._janitor_active = False
            return False
        finally:
            self._lock.release()

    def is_open(self) -> bool:
        return self._conn is not None

    def idle(self) -> None:
        with self._lock:
            self._close_conn()

    def close(self) -> None:
        with self._lock:
            self._close_conn()
            self._closed = True
            self._gate.close()
        self._wake.set()

    def health_check(self) -> dict:
        """The store contract's check, plus the file's size (journal and its WAL)."""
        result = super().health_check()
        if result["status"] == "ok":  # the version may be cached: read a table as well
            try:
                with self._session() as c:
                    result["workflows"] = c.execute(
                        "SELECT count(*) FROM workflows").fetchone()[0]
            except Exception as e:  # noqa: BLE001 - reported, not raised
                result.update(status="down", error_type=type(e).__name__, error=str(e))
        size = 0
        for suffix in ("", ".wal"):
            try:
                size += os.stat(self.path + suffix).st_size
            except OSError:
                pass
        result["size_bytes"] = size
        result["busy_timeout_s"] = self.busy_timeout
        return result

    # -- workflows ---------------------------------------------------------------------------
    def insert_workflow(self, record: WorkflowRecord) -> bool:
        with self._session() as c:
            rows = c.execute(
                "INSERT INTO workflows VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING "
                "RETURNING workflow_id", list(_astuple(record))).fetchall()
            return bool(rows)

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._session() as c:
            row = c.execute(f"SELECT {schema.WORKFLOW_COLUMNS} FROM workflows "
                            "WHERE workflow_id = ?", [workflow_id]).fetchone()
        return WorkflowRecord(*row) if row else None

    def update_workflow(self, workflow_id, token, *, status, result_encoding=None,
                        result_payload=None, error=None, only_if_status=()) -> bool:
        with self._session() as c:
            self._check_fence(c, workflow_id, token)
            sql = ("UPDATE workflows SET status = ?, updated_at = ?, result_encoding = ?, "
                   "result_payload = ?, error = ? WHERE workflow_id = ?")
            params = [status, time.time(), result_encoding, result_payload, error, workflow_id]
            if only_if_status:
                sql += f" AND status IN ({','.join('?' * len(only_if_status))})"
                params += list(only_if_status)
            return bool(c.execute(sql + " RETURNING 1", params).fetchall())

    def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        with self._session() as c:
            sql = f"SELECT {schema.WORKFLOW_COLUMNS} FROM workflows"
            params: list = []
            if status:
                sql += " WHERE status = ?"
                params.append(status)
            rows = c.execute(sql + " ORDER BY created_at", params).fetchall()
        return [WorkflowRecord(*r) for r in rows]

    # -- events ------------------------------------------------------------------------------
    def _check_fence(self, c, workflow_id: str, token: int | None) -> None:
        if token is None or self._fence_ok.get(workflow_id) == token:
            return
        row = c.execute("SELECT owner_id, token FROM leases WHERE workflow_id = ?",
                        [workflow_id]).fetchone()
        if row is None or row[0] is None or row[1] != token:
            raise LeaseLost(workflow_id, token, row[1] if row else None,
                            row[0] if row else None)
        self._fence_ok[workflow_id] = token

    def append_event(self, event: EventRecord, token: int | None,
                     blobs: tuple[BlobRecord, ...] = ()) -> None:
        row = [event.workflow_id, event.seq, event.kind, event.step_number, event.step_name,
               _event_meta(event), event.payload]
        with self._session() as c:
            self._check_fence(c, event.workflow_id, token)
            if not blobs:
                c.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)", row)
                return
            have = self._known_blobs(c, [b.hash for b in blobs])
            new = [b for b in blobs if b.hash not in have]
            for b in new:  # files first: a commit never refers to a missing file
                if b.size >= self.blob_file_threshold:
                    self._blob_files.write(b.hash, b.payload)
            c.execute("BEGIN TRANSACTION")
            try:
                for b in new:  # a plain INSERT: ON CONFLICT made large blobs 7x slower
                    in_file = b.size >= self.blob_file_threshold
                    c.execute("INSERT INTO blobs VALUES (?,?,?,?,?,?,?)",
                              [b.hash, b.encoding, None if in_file else b.payload, b.size,
                               b.created_at, crc32(b.payload), in_file])
                c.execute("INSERT INTO events VALUES (?,?,?,?,?,?,?)", row)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def get_blobs(self, hashes: list[str]) -> dict[str, BlobRecord]:
        if not hashes:
            return {}
        with self._session() as c:
            rows = c.execute(f"SELECT {schema.BLOB_COLUMNS} FROM blobs WHERE hash IN "
                             f"({','.join('?' * len(hashes))})", list(hashes)).fetchall()
        out = {}
        for h, encoding, payload, size, created_at, crc, in_file in rows:
            if in_file:
                payload = self._blob_files.read(h)
            if payload is None or len(payload) != size or crc32(payload) != crc:
                where = f"file {self._blob_files.path(h)}" if in_file else "its row"
                raise JournalCorrupted(self.path, f"blob {h} ({size} bytes) in {where} is "
                                       "missing or damaged")
            out[h] = BlobRecord(h, encoding, payload, size, created_at)
        return out

    def known_blobs(self, hashes: list[str]) -> set[str]:
        if not hashes:
            return set()
        with self._session() as c:
            return self._known_blobs(c, hashes)

    @staticmethod
    def _known_blobs(c, hashes: list[str]) -> set[str]:
        rows = c.execute(f"SELECT hash FROM blobs WHERE hash IN "
                         f"({','.join('?' * len(hashes))})", list(hashes)).fetchall()
        return {r[0] for r in rows}

    def read_events(self, workflow_id: str, after_seq: int = 0) -> list[EventRecord]:
        with self._session() as c:
            rows = c.execute(f"SELECT {schema.EVENT_SELECT} FROM events WHERE workflow_id = ? "
                             "AND seq > ? ORDER BY seq", [workflow_id, after_seq]).fetchall()
        return [EventRecord(*r) for r in rows]

    def last_seq(self, workflow_id: str) -> int:
        with self._session() as c:
            row = c.execute("SELECT max(seq) FROM events WHERE workflow_id = ?",
                            [workflow_id]).fetchone()
        return int(row[0] or 0)

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self, snapshot: SnapshotRecord, token: int | None) -> None:
        with self._session() as c:
            self._check_fence(c, snapshot.workflow_id, token)
            c.execute("INSERT INTO snapshots VALUES (?,?,?,?,?,?,?)", list(_astuple(snapshot)))

    def latest_snapshot(self, workflow_id: str) -> SnapshotRecord | None:
        with self._session() as c:
            row = c.execute(f"SELECT {schema.SNAPSHOT_COLUMNS} FROM snapshots "
                            "WHERE workflow_id = ? ORDER BY seq DESC LIMIT 1",
                            [workflow_id]).fetchone()
        return SnapshotRecord(*row) if row else None

    # -- restores ----------------------------------------------------------------------------
    def record_restore(self, record: RestoreRecord) -> None:
        with self._session() as c:
            c.execute("INSERT INTO restores VALUES (?,?,?,?,?,?,?)", list(_astuple(record)))

    def list_restores(self, workflow_id: str | None = None) -> list[RestoreRecord]:
        with self._session() as c:
            sql = f"SELECT {schema.RESTORE_COLUMNS} FROM restores"
            params: list = []
            if workflow_id is not None:
                sql += " WHERE workflow_id = ?"
                params.append(workflow_id)
            rows = c.execute(sql + " ORDER BY started_at", params).fetchall()
        return [RestoreRecord(*r) for r in rows]

    # -- reading for views ---------------------------------------------------------------------
    def query_df(self, sql: str, params: list | tuple | None = None, *, arrow: bool = False):
        """Run one read-only query and return its result as a pandas DataFrame (for
        ``contd_nb.views``), or as a ``pyarrow.Table`` with ``arrow=True`` (faster to fetch:
        the caller converts it). It runs inside a normal gate session, so the file is released
        when this process goes idle, as after any other read."""
        with self._session() as c:
            if arrow:  # a relation, not a DB-API result: that would copy the rows once more
                cur = c.cursor()  # (its own cursor: c may hold an unfinished result)
                try:
                    return cur.sql(sql, params=list(params or ())).to_arrow_table()
                finally:
                    cur.close()
            return c.execute(sql, list(params or ())).df()

    # -- leases ------------------------------------------------------------------------------
    def get_lease(self, workflow_id: str) -> LeaseRecord | None:
        with self._session() as c:
            row = c.execute(f"SELECT {schema.LEASE_COLUMNS} FROM leases WHERE workflow_id = ?",
                            [workflow_id]).fetchone()
        return LeaseRecord(*row) if row else None

    def list_leases(self) -> list[LeaseRecord]:
        with self._session() as c:
            rows = c.execute(f"SELECT {schema.LEASE_COLUMNS} FROM leases "
                             "ORDER BY workflow_id").fetchall()
        return [LeaseRecord(*r) for r in rows]

    def take_lease(self, lease: LeaseRecord, expected_token: int | None) -> bool:
        with self._session() as c:
            self._fence_ok.pop(lease.workflow_id, None)
            if expected_token is None:
                rows = c.execute("INSERT INTO leases VALUES (?,?,?,?,?,?,?,?,?) "
                                 "ON CONFLICT DO NOTHING RETURNING token",
                                 list(_astuple(lease))).fetchall()
            else:
                rows = c.execute(
                    "UPDATE leases SET owner_id = ?, token = ?, expires_at = ?, host = ?, "
                    "pid = ?, pid_started = ?, acquired_at = ?, renewed_at = ? "
                    "WHERE workflow_id = ? AND token = ? RETURNING token",
                    [lease.owner_id, lease.token, lease.expires_at, lease.host, lease.pid,
                     lease.pid_started, lease.acquired_at, lease.renewed_at,
                     lease.workflow_id, expected_token]).fetchall()
            if rows:
                self._fence_ok[lease.workflow_id] = lease.token
            return bool(rows)

    def renew_lease(self, workflow_id, owner_id, token, expires_at, now) -> bool:
        with self._session() as c:
            return bool(c.execute(
                "UPDATE leases SET expires_at = ?, renewed_at = ? WHERE workflow_id = ? "
                "AND owner_id = ? AND token = ? RETURNING 1",
                [expires_at, now, workflow_id, owner_id, token]).fetchall())

    def release_lease(self, workflow_id, owner_id, token) -> bool:
        with self._session() as c:
            self._fence_ok.pop(workflow_id, None)
            return bool(c.execute(
                "UPDATE leases SET owner_id = NULL WHERE workflow_id = ? AND owner_id = ? "
                "AND token = ? RETURNING 1", [workflow_id, owner_id, token]).fetchall())

    def force_release(self, workflow_id: str, now: float) -> LeaseRecord | None:
        with self._session() as c:
            self._fence_ok.pop(workflow_id, None)
            before = c.execute(f"SELECT {schema.LEASE_COLUMNS} FROM leases "
                               "WHERE workflow_id = ?", [workflow_id]).fetchone()
            if before is None:
                return None
            c.execute("UPDATE leases SET owner_id = NULL, token = token + 1, expires_at = ?, "
                      "renewed_at = ? WHERE workflow_id = ?", [now, now, workflow_id])
        return LeaseRecord(*before)


def _event_meta(e: EventRecord) -> str:
    return json.dumps({"attempt": e.attempt, "started_at": e.started_at, "ended_at": e.ended_at,
                       "info": e.info, "enc": e.encoding, "sum": e.checksum,
                       "token": e.lease_token}, separators=(",", ":"))


def _astuple(record) -> tuple:
    return tuple(getattr(record, f) for f in record.__slots__)


def _janitor_loop(store_ref: weakref.ref) -> None:
    while True:
        store = store_ref()
        if store is None:
            return
        wake, interval = store._wake, min(store.idle_release, store.handover_after) / 2
        if not store._janitor_tick():
            return
        del store
        wake.wait(max(interval, 0.005))
