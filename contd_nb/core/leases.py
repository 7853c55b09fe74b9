"""Leases: one executor per workflow.

A lease row has an owner, an expiry, a fencing token that only grows, and the owner's host and
pid. ``decide_acquire`` is the pure decision (free, expired, dead owner on this host, ours, or
locked); ``LeaseManager`` applies it with the store's compare-and-set and keeps held leases
alive with a heartbeat thread (every ttl/3).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from ..persistence.base import JournalStore, LeaseRecord
from ..sdk.errors import WorkflowLocked

__all__ = ["DEFAULT_TTL", "Lease", "LeaseManager", "decide_acquire", "process_start_time"]

log = logging.getLogger("contd_nb.core.leases")
DEFAULT_TTL = 30.0
HOST = socket.gethostname()


def process_start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return float(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def owner_is_dead(lease: LeaseRecord, host: str) -> bool:
    """True only when we can be sure: the owner ran on this host and its process is gone."""
    if lease.host != host or not lease.pid:
        return False
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    if _process_state(lease.pid) in ("Z", "X"):  # exited; its parent has not reaped it yet
        return True
    started = process_start_time(lease.pid)
    return (lease.pid_started is not None and started is not None
            and started != lease.pid_started)  # the pid now belongs to another process


def decide_acquire(current: LeaseRecord | None, owner_id: str, now: float,
                   owner_dead: bool) -> str:
    """'insert' (no row yet), 'take' (free, expired, ours, or its owner died) or 'locked'."""
    if current is None:
        return "insert"
    if current.owner_id is None or current.owner_id == owner_id:
        return "take"
    if current.expires_at <= now:
        return "take"
    if owner_dead:
        return "take"
    return "locked"


@dataclass(frozen=True)
class Lease:
    """A lease as users see it (``lease_manager.get_current_lease``)."""

    workflow_id: str
    owner_id: str | None
    token: int
    expires_at: dt.datetime
    host: str | None
    pid: int | None
    acquired_at: dt.datetime
    renewed_at: dt.datetime

    @classmethod
    def from_record(cls, r: LeaseRecord) -> Lease:
        ts = lambda x: dt.datetime.fromtimestamp(x, dt.UTC)  # noqa: E731
        return cls(r.workflow_id, r.owner_id, r.token, ts(r.expires_at), r.host, r.pid,
                   ts(r.acquired_at), ts(r.renewed_at))

    @property
    def is_held(self) -> bool:
        return self.owner_id is not None and self.expires_at > dt.datetime.now(dt.UTC)

    @property
    def seconds_left(self) -> float:
        return (self.expires_at - dt.datetime.now(dt.UTC)).total_seconds()


class LeaseManager:
    def __init__(self, store: JournalStore, owner_id: str, ttl: float = DEFAULT_TTL,
                 on_event=None) -> None:
        self.store = store
        self.owner_id = owner_id
        self.ttl = ttl
        self._held: dict[str, int] = {}          # workflow_id -> token
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._emit = on_event or (lambda *a, **k: None)
        self._pid_started = process_start_time(os.getpid())

    # -- acquire / release ----------------------------------------------------------------------
    def acquire(self, workflow_id: str) -> int:
        """Take the lease or raise WorkflowLocked. Returns the new fencing token."""
        for _ in range(20):  # retry lost compare-and-set races
            now = time.time()
            current = self.store.get_lease(workflow_id)
            dead = current is not None and current.owner_id not in (None, self.owner_id) \
                and current.expires_at > now and owner_is_dead(current, HOST)
            decision = decide_acquire(current, self.owner_id, now, dead)
            if decision == "locked":
                self._emit("lease_conflict", workflow_id)
                raise WorkflowLocked(workflow_id, current.owner_id,
                                     dt.datetime.fromtimestamp(current.expires_at, dt.UTC),
                                     current.host, current.pid)
            token = 1 if current is None else current.token + 1
            record = LeaseRecord(workflow_id, self.owner_id, token, now + self.ttl, HOST,
                                 os.getpid(), self._pid_started, now, now)
            if self.store.take_lease(record, None if current is None else current.token):
                if current is not None and current.owner_id not in (None, self.owner_id):
                    why = "its owner's process is gone" if dead else "it expired"
                    log.info("took over lease of %s from %s (%s); token %d", workflow_id,
                             current.owner_id, why, token)
                    self._emit("lease_expired" if not dead else "lease_takeover", workflow_id)
                else:
                    log.debug("acquired lease of %s, token %d", workflow_id, token)
                self._emit("lease_acquired", workflow_id)
                with self._lock:
                    self._held[workflow_id] = token
                self._ensure_heartbeat()
                return token
            log.debug("lost a lease race on %s; retrying", workflow_id)
        raise WorkflowLocked(workflow_id, "unknown (the lease kept changing)")

    def release(self, workflow_id: str) -> bool:
        with self._lock:
            token = self._held.pop(workflow_id, None)
        if token is None:
            return False
        released = self.store.release_lease(workflow_id, self.owner_id, token)
        log.debug("released lease of %s (token %d): %s", workflow_id, token, released)
        return released

    def force_release(self, workflow_id: str) -> Lease | None:
        """Take the lease from whoever holds it (admin). The holder is fenced out: its next
        journal write is refused. Returns the lease as it was."""
        before = self.store.force_release(workflow_id, time.time())
        with self._lock:
            self._held.pop(workflow_id, None)
        log.warning("force-released lease of %s (was %s)", workflow_id,
                    before.owner_id if before else None)
        self._emit("lease_force_released", workflow_id)
        return Lease.from_record(before) if before else None

    def get_current_lease(self, workflow_id: str) -> Lease | None:
        rec = self.store.get_lease(workflow_id)
        return Lease.from_record(rec) if rec else None

    def list_leases(self) -> list[Lease]:
        return [Lease.from_record(r) for r in self.store.list_leases()]

    def token_of(self, workflow_id: str) -> int | None:
        """The fencing token this executor holds for the workflow (None if none)."""
        return self._held.get(workflow_id)

    # -- heartbeat ----------------------------------------------------------------------------
    def heartbeat(self) -> None:
        """Renew every held lease once (the background thread calls this every ttl/3)."""
        with self._lock:
            held = list(self._held.items())
        was_open = self.store.is_open()
        for workflow_id, token in held:
            now = time.time()
            try:
                ok = self.store.renew_lease(workflow_id, self.owner_id, token, now + self.ttl,
                                            now)
            except Exception as e:  # journal busy or unreachable: try again next beat
                log.warning("heartbeat for %s failed: %s", workflow_id, e)
                continue
            if not ok:
                log.warning("lease of %s was taken over (token %d is no longer current)",
                            workflow_id, token)
                with self._lock:
                    if self._held.get(workflow_id) == token:
                        self._held.pop(workflow_id)  # its next write is refused anyway
        if not was_open:  # opened the journal only to renew: let go of it at once
            self.store.idle()

    def _ensure_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="contd-lease-heartbeat",
                                            daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self._held:
                continue
            self.heartbeat()

    def close(self) -> None:
        self._stop.set()
        for workflow_id in list(self._held):
            try:
                self.release(workflow_id)
            except Exception as e:  # noqa: BLE001 - closing must not fail
                log.warning("could not release %s on close: %s", workflow_id, e)
