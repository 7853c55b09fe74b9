"""``contd worker``: resume orphaned workflows.

A worker polls the journal for Python workflows that are unfinished and whose lease expired,
was released, or belongs to a dead process on this host, and resumes each one (its function is
imported by the name it was journaled under). Several workers may run on several processes or
machines: taking the lease is a compare-and-set, so each orphan is resumed by exactly one of
them. SIGTERM (or SIGINT) interrupts the workflow in hand at once: its lease is released and
the step in flight runs again wherever it is resumed next (at least once).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from ..core.engine import ExecutionEngine
from ..core.leases import HOST, owner_is_dead
from ..persistence.base import LeaseRecord
from .client import Client
from .errors import ContdError, WorkflowLocked

__all__ = ["Worker", "WorkerStopping", "is_orphaned"]

log = logging.getLogger("contd_nb.sdk.worker")
NOTEBOOK = "notebook:"


class WorkerStopping(BaseException):
    """Raised in the worker's thread by SIGTERM/SIGINT: the workflow in hand is interrupted
    (a BaseException, so workflow code does not catch it) and its lease released."""


def is_orphaned(lease: LeaseRecord | None, now: float, owner_dead: bool) -> bool:
    """Whether an unfinished workflow with this lease needs someone to resume it."""
    if lease is None or lease.owner_id is None:
        return True
    return lease.expires_at <= now or owner_dead


@dataclass
class WorkerStats:
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped_locked: int = 0


class Worker:
    def __init__(self, engine: ExecutionEngine | None = None, poll_interval: float = 0.5
                 ) -> None:
        self.engine = engine or ExecutionEngine.get_instance()
        self.client = Client(engine=self.engine)
        self.poll_interval = poll_interval
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._busy = False

    def orphans(self) -> list[str]:
        """Unfinished Python workflows nobody is running, oldest first."""
        store = self.engine.store
        leases = {lease.workflow_id: lease for lease in store.list_leases()}
        now = time.time()
        found = []
        for rec in store.list_workflows(status="running"):
            if (rec.function or "").startswith(NOTEBOOK) or not rec.function:
                continue
            lease = leases.get(rec.workflow_id)
            dead = lease is not None and lease.owner_id is not None and \
                owner_is_dead(lease, HOST)
            if is_orphaned(lease, now, dead):
                found.append(rec.workflow_id)
        return found

    def run_once(self) -> int:
        """Resume every orphan found now (one after another). Returns how many it resumed."""
        done = 0
        for workflow_id in self.orphans():
            if self._stop.is_set():
                break
            try:
                self._busy = True
                self.client.resume(workflow_id)
                self.stats.resumed.append(workflow_id)
                done += 1
                log.info("worker %s resumed and finished %s", self.engine.executor_id,
                         workflow_id)
            except WorkflowLocked:
                self.stats.skipped_locked += 1  # another worker took it first
            except ContdError as e:
                self.stats.failed.append(workflow_id)
                log.warning("worker: %s failed: %s", workflow_id, e)
            except Exception as e:  # the workflow's own error, journaled as failed
                self.stats.failed.append(workflow_id)
                log.warning("worker: %s failed: %s: %s", workflow_id, type(e).__name__, e)
            finally:
                self._busy = False
        return done

    def run_forever(self, max_seconds: float | None = None) -> WorkerStats:
        """Poll and resume until stopped (SIGTERM, SIGINT or ``stop()``)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                try:
                    if not self.run_once():
                        self._stop.wait(self.poll_interval)
                except WorkerStopping:
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.engine.close()
        log.info("worker %s stopped: %d resumed, %d failed", self.engine.executor_id,
                 len(self.stats.resumed), len(self.stats.failed))
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def _on_signal(self, signum, frame) -> None:
        self._stop.set()
        if self._busy:
            raise WorkerStopping(f"signal {signum}")
