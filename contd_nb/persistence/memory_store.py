"""An in-process journal for fast unit tests. Same contract as the others; nothing survives
the process, so it is never the default."""

from __future__ import annotations

import dataclasses
import secrets
import threading

from ..sdk.errors import LeaseLost
from .base import (
    SCHEMA_VERSION,
    BlobRecord,
    EventRecord,
    JournalStore,
    LeaseRecord,
    RestoreRecord,
    SnapshotRecord,
    WorkflowRecord,
)

__all__ = ["MemoryStore"]


class MemoryStore(JournalStore):
    backend = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._workflows: dict[str, WorkflowRecord] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._snapshots: dict[str, list[SnapshotRecord]] = {}
        self._leases: dict[str, LeaseRecord] = {}
        self._restores: list[RestoreRecord] = []
        self._blobs: dict[str, BlobRecord] = {}
        self._key = secrets.token_bytes(32)

    def describe(self) -> str:
        return "memory"

    def signing_key(self) -> bytes:
        return self._key

    def schema_version(self) -> int:
        return SCHEMA_VERSION

    def close(self) -> None:
        pass

    def insert_workflow(self, record):
        with self._lock:
            if record.workflow_id in self._workflows:
                return False
            self._workflows[record.workflow_id] = record
            return True

    def get_workflow(self, workflow_id):
        return self._workflows.get(workflow_id)

    def update_workflow(self, workflow_id, token, *, status, result_encoding=None,
                        result_payload=None, error=None, only_if_status=()):
        import time

        with self._lock:
            self._check_fence(workflow_id, token)
            rec = self._workflows.get(workflow_id)
            if rec is None or (only_if_status and rec.status not in only_if_status):
                return False
            self._workflows[workflow_id] = dataclasses.replace(
                rec, status=status, updated_at=time.time(), result_encoding=result_encoding,
                result_payload=result_payload, error=error)
            return True

    def list_workflows(self, status=None):
        with self._lock:
            recs = [w for w in self._workflows.values() if status is None or w.status == status]
        return sorted(recs, key=lambda w: w.created_at)

    def _check_fence(self, workflow_id: str, token: int | None) -> None:
        if token is None:
            return
        lease = self._leases.get(workflow_id)
        if lease is None or lease.owner_id is None or lease.token != token:
            raise LeaseLost(workflow_id, token, lease.token if lease else None,
                            lease.owner_id if lease else None)

    def append_event(self, event, token, blobs=()):
        with self._lock:
            self._check_fence(event.workflow_id, token)
            for b in blobs:
                self._blobs.setdefault(b.hash, b)
            self._events.setdefault(event.workflow_id, []).append(event)

    def get_blobs(self, hashes):
        with self._lock:
            return {h: self._blobs[h] for h in hashes if h in self._blobs}

    def known_blobs(self, hashes):
        with self._lock:
            return {h for h in hashes if h in self._blobs}

    def read_events(self, workflow_id, after_seq=0):
        with self._lock:
            return sorted((e for e in self._events.get(workflow_id, []) if e.seq > after_seq),
                          key=lambda e: e.seq)

    def last_seq(self, workflow_id):
        return max((e.seq for e in self._events.get(workflow_id, [])), default=0)

    def write_snapshot(self, snapshot, token):
        with self._lock:
            self._check_fence(snapshot.workflow_id, token)
            self._snapshots.setdefault(snapshot.workflow_id, []).append(snapshot)

    def latest_snapshot(self, workflow_id):
        snaps = self._snapshots.get(workflow_id)
        return max(snaps, key=lambda s: s.seq) if snaps else None

    def record_restore(self, record):
        with self._lock:
            self._restores.append(record)

    def list_restores(self, workflow_id=None):
        with self._lock:
            return [r for r in self._restores if workflow_id in (None, r.workflow_id)]

    def get_lease(self, workflow_id):
        return self._leases.get(workflow_id)

    def list_leases(self):
        with self._lock:
            return sorted(self._leases.values(), key=lambda lease: lease.workflow_id)

    def take_lease(self, lease, expected_token):
        with self._lock:
            current = self._leases.get(lease.workflow_id)
            if (current is None) != (expected_token is None):
                return False
            if current is not None and current.token != expected_token:
                return False
            self._leases[lease.workflow_id] = lease
            return True

    def renew_lease(self, workflow_id, owner_id, token, expires_at, now):
        with self._lock:
            cur = self._leases.get(workflow_id)
            if cur is None or cur.owner_id != owner_id or cur.token != token:
                return False
            self._leases[workflow_id] = dataclasses.replace(cur, expires_at=expires_at,
                                                            renewed_at=now)
            return True

    def release_lease(self, workflow_id, owner_id, token):
        with self._lock:
            cur = self._leases.get(workflow_id)
            if cur is None or cur.owner_id != owner_id or cur.token != token:
                return False
            self._leases[workflow_id] = dataclasses.replace(cur, owner_id=None)
            return True

    def force_release(self, workflow_id, now):
        with self._lock:
            cur = self._leases.get(workflow_id)
            if cur is None:
                return None
            self._leases[workflow_id] = dataclasses.replace(
                cur, owner_id=None, token=cur.token + 1, expires_at=now, renewed_at=now)
            return cur
