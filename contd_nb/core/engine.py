"""The ExecutionEngine: starts, resumes and restores workflows on one journal.

``ExecutionEngine.get_instance()`` is the process's default engine (journal from
``CONTD_JOURNAL`` / ``DATABASE_URL`` / ``.contd/journal.duckdb``). Metrics and views do not live
here: they subscribe with ``add_listener`` or read the journal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..persistence.adapters import open_store
from ..persistence.base import JournalStore, RestoreRecord, WorkflowRecord
from ..sdk.config import WorkflowConfig, to_seconds
from ..sdk.context import _current_run
from ..sdk.errors import (
    ConfigurationError,
    InvalidWorkflowId,
    LeaseLost,
    UnserializableValue,
    WorkflowCancelled,
    WorkflowLocked,
    WorkflowNotFound,
)
from .journal import Journal
from .leases import DEFAULT_TTL, HOST, LeaseManager
from .replay import FoldedState, fold
from .run import WorkflowRun

__all__ = ["EngineEvent", "ExecutionEngine", "RestoredState", "WorkflowDefinition",
           "resolve_workflow_id", "validate_workflow_id"]

log = logging.getLogger("contd_nb.core")
_ID_OK = re.compile(r"[A-Za-z0-9._:@+=-]{1,200}")
DEFAULT_SNAPSHOT_INTERVAL = 100


def validate_workflow_id(workflow_id: Any) -> str:
    if not isinstance(workflow_id, str):
        raise InvalidWorkflowId(workflow_id, f"it is a {type(workflow_id).__name__}, not a str")
    if not workflow_id:
        raise InvalidWorkflowId(workflow_id, "it is empty")
    if len(workflow_id) > 200:
        raise InvalidWorkflowId(workflow_id, f"it is {len(workflow_id)} characters long")
    if not _ID_OK.fullmatch(workflow_id):
        bad = sorted({c for c in workflow_id if not _ID_OK.fullmatch(c)})
        raise InvalidWorkflowId(workflow_id, f"it contains {''.join(bad)!r}")
    return workflow_id


def resolve_workflow_id(workflow_id: Any, definition: WorkflowDefinition) -> str:
    """The given id, else the definition's configured one, else a new one; validated. Only
    None means "not given": an empty id is an error, not a request for a new one."""
    if workflow_id is None:
        workflow_id = definition.config.workflow_id
    if workflow_id is None:
        return f"wf-{uuid.uuid4().hex[:16]}"
    return validate_workflow_id(workflow_id)


@dataclass(frozen=True)
class WorkflowDefinition:
    fn: Callable[..., Any]
    name: str
    function: str                     # "module:qualname"
    config: WorkflowConfig
    is_async: bool


@dataclass(frozen=True)
class EngineEvent:
    """What listeners receive (metrics, views, tests). ``fields`` varies by kind."""

    kind: str
    workflow_id: str | None
    time: float
    fields: dict = field(default_factory=dict)


@dataclass
class RestoredState:
    """A workflow's state as the journal has it: ``engine.restore(workflow_id)``."""

    workflow_id: str
    status: str
    step_number: int
    events_replayed: int
    snapshot_step: int | None
    duration_ms: float
    folded: FoldedState = field(repr=False)
    _journal: Journal = field(repr=False)

    @property
    def steps(self) -> list[str]:
        return [s.name for s in self.folded.steps]

    @property
    def results(self) -> dict[int, Any]:
        """Journaled result of every completed step, by step number (decoded now)."""
        return {s.number: self._journal.decode(s.encoding, s.payload, self.workflow_id, s.seq,
                                               f"the result of step '{s.name}'")
                for s in self.folded.steps}

    def result(self) -> Any:
        """The workflow's journaled result (None until it completed)."""
        if self.folded.result is None:
            return None
        enc, payload = self.folded.result
        return self._journal.decode(enc, payload, self.workflow_id, None, "the workflow result")


class ExecutionEngine:
    _instance: ClassVar[ExecutionEngine | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()
    registry: ClassVar[dict[str, WorkflowDefinition]] = {}

    def __init__(self, journal: str | os.PathLike | JournalStore | None = None, *,
                 lease_ttl: float = DEFAULT_TTL,
                 snapshot_interval: int = DEFAULT_SNAPSHOT_INTERVAL,
                 executor_id: str | None = None) -> None:
        to_seconds(lease_ttl, "lease_ttl")
        self.snapshot_interval = snapshot_interval
        self.store = open_store(journal)
        self.journal = Journal(self.store)
        self._pid = os.getpid()
        self.executor_id = executor_id or f"{HOST}:{self._pid}:{uuid.uuid4().hex[:8]}"
        self._listeners: list[Callable[[EngineEvent], None]] = []
        self.lease_manager = LeaseManager(self.store, self.executor_id, lease_ttl,
                                          on_event=self.emit)
        # tests only: called as hook("attempt"|"completed", step_name, step_number, attempt);
        # whatever it raises happens at that point of the step (see sdk.testing)
        self.fault_hook: Callable[[str, str, int, int], None] | None = None
        self._active: dict[str, WorkflowRun] = {}
        self._active_lock = threading.Lock()

    @property
    def snapshot_interval(self) -> int:
        """Write a snapshot every this many steps (0: never). Workflows may override it."""
        return self._snapshot_interval

    @snapshot_interval.setter
    def snapshot_interval(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigurationError(f"snapshot_interval={value!r} is not valid: an integer "
                                     ">= 0 (0 disables snapshots)")
        self._snapshot_interval = value

    # -- the default instance -------------------------------------------------------------------
    @classmethod
    def get_instance(cls) -> ExecutionEngine:
        with cls._instance_lock:
            if cls._instance is None or cls._instance._pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    @classmethod
    def set_instance(cls, engine: ExecutionEngine | None) -> ExecutionEngine | None:
        with cls._instance_lock:
            previous, cls._instance = cls._instance, engine
            return previous

    # -- listeners ----------------------------------------------------------------------------
    # Instance listeners hear one engine; global ones (metrics) hear every engine.
    _global_listeners: ClassVar[list[Callable[[EngineEvent], None]]] = []

    def add_listener(self, fn: Callable[[EngineEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[EngineEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    @classmethod
    def add_global_listener(cls, fn: Callable[[EngineEvent], None]) -> None:
        if fn not in cls._global_listeners:
            cls._global_listeners.append(fn)

    @classmethod
    def remove_global_listener(cls, fn: Callable[[EngineEvent], None]) -> None:
        if fn in cls._global_listeners:
            cls._global_listeners.remove(fn)

    @property
    def listening(self) -> bool:
        return bool(self._listeners or ExecutionEngine._global_listeners)

    def emit(self, kind: str, workflow_id: str | None = None, **fields) -> None:
        if not self.listening:
            return
        event = EngineEvent(kind, workflow_id, time.time(), fields)
        for fn in [*self._listeners, *ExecutionEngine._global_listeners]:
            try:
                fn(event)
            except Exception:  # a broken listener must not break a workflow
                log.exception("engine listener %r failed on %s", fn, kind)

    # -- restore ------------------------------------------------------------------------------
    def restore(self, workflow_id: str, purpose: str = "inspect") -> RestoredState:
        """Read a workflow's state: the latest snapshot plus the events after it. Records
        how long it took and how many events were replayed."""
        validate_workflow_id(workflow_id)
        t0 = time.perf_counter()
        started = time.time()
        snap = self.journal.latest_snapshot(workflow_id)
        if snap is not None:
            record, data = snap
            state = FoldedState.from_snapshot(data)
            snapshot_step = record.step_number
        else:
            state, snapshot_step = FoldedState(), None
        records = self.journal.records(workflow_id, state.last_seq)
        fold(state, records)
        if state.last_seq == 0:
            if self.store.get_workflow(workflow_id) is None:
                raise WorkflowNotFound(workflow_id, self.store.describe())
        duration = (time.perf_counter() - t0) * 1000
        self.store.record_restore(RestoreRecord(workflow_id, started, duration, len(records),
                                                snapshot_step, purpose, self.executor_id))
        self.emit("restore", workflow_id, duration_ms=duration, events_replayed=len(records),
                  snapshot_step=snapshot_step, purpose=purpose)
        log.debug("restored %s: step %d, %d events replayed after snapshot %s, %.2f ms",
                  workflow_id, state.step_number, len(records), snapshot_step, duration)
        return RestoredState(workflow_id, state.status, state.step_number, len(records),
                             snapshot_step, duration, state, self.journal)

    # -- running ------------------------------------------------------------------------------
    def _begin(self, definition: WorkflowDefinition, args: tuple, kwargs: dict,
               workflow_id: str | None) -> tuple[WorkflowRun | None, Any]:
        """Take the lease and prepare a run; or (None, result) if it already completed."""
        wid = resolve_workflow_id(workflow_id, definition)
        existing = self.store.get_workflow(wid)
        if existing is not None and existing.status == "completed":
            log.info("workflow %s already completed; returning its journaled result", wid)
            return None, self.journal.decode(existing.result_encoding, existing.result_payload,
                                             wid, None, "the workflow result")
        if existing is not None and existing.status == "cancelled":
            raise WorkflowCancelled(wid)
        with self._active_lock:
            if wid in self._active:  # running in this process already (another thread)
                raise WorkflowLocked(wid, self.executor_id, None, HOST, os.getpid())
            self._active[wid] = None  # type: ignore[assignment]  # reserve the id
        try:
            run, done = self._prepare(definition, args, kwargs, wid)
        except BaseException:
            run = None
            raise
        finally:
            if run is None:
                with self._active_lock:
                    self._active.pop(wid, None)
        return run, done

    def _prepare(self, definition, args, kwargs, wid):
        token = self.lease_manager.acquire(wid)
        try:
            # read again under the lease: another executor may have run it meanwhile
            existing = self.store.get_workflow(wid)
            if existing is not None and existing.status in ("completed", "cancelled"):
                self.lease_manager.release(wid)
                if existing.status == "cancelled":
                    raise WorkflowCancelled(wid)
                return None, self.journal.decode(existing.result_encoding,
                                                 existing.result_payload, wid, None,
                                                 "the workflow result")
            interval = definition.config.snapshot_interval
            interval = self.snapshot_interval if interval is None else interval
            if existing is None:
                self._create(definition, args, kwargs, wid, token)
                run = WorkflowRun(self, wid, definition.name, token, FoldedState(), interval)
                run.write("workflow_started", info={"name": definition.name,
                                                    "function": definition.function,
                                                    "executor": self.executor_id})
                self.emit("workflow_started", wid, workflow_name=definition.name)
            else:
                restored = self.restore(wid, purpose="resume")
                if restored.status == "completed":  # its events say so (status row lagged)
                    enc, payload = restored.folded.result
                    self.store.update_workflow(wid, token, status="completed",
                                               result_encoding=enc, result_payload=payload)
                    self.lease_manager.release(wid)
                    return None, restored.result()
                run = WorkflowRun(self, wid, definition.name, token, restored.folded, interval)
                if existing.status != "running":
                    self.store.update_workflow(wid, token, status="running")
                run.write("workflow_resumed", info={
                    "duration_ms": round(restored.duration_ms, 3),
                    "events_replayed": restored.events_replayed,
                    "snapshot_step": restored.snapshot_step,
                    "steps_completed": restored.step_number,
                    "executor": self.executor_id})
                log.info("resuming %s after step %d (%d events replayed, %.1f ms)", wid,
                         restored.step_number, restored.events_replayed, restored.duration_ms)
                self.emit("workflow_resumed", wid, workflow_name=definition.name,
                          steps_completed=restored.step_number)
        except BaseException:
            self.lease_manager.release(wid)
            raise
        with self._active_lock:
            self._active[wid] = run
        return run, None

    def _create(self, definition, args, kwargs, wid, token) -> None:
        try:
            enc, payload = self.journal.encode((list(args), kwargs), "the workflow input")
        except UnserializableValue as e:
            log.warning("workflow %s: input not journaled (%s); resuming it from another "
                        "process will need the input again", wid, e.reason)
            enc = payload = None
        now = time.time()
        config = json.dumps({"snapshot_interval": definition.config.snapshot_interval,
                             "tags": definition.config.tags})
        self.store.insert_workflow(WorkflowRecord(wid, definition.name, definition.function,
                                                  "running", now, now, enc, payload,
                                                  config=config))

    def _finish(self, run: WorkflowRun, outcome: str, value: Any = None,
                error: BaseException | None = None) -> None:
        wid = run.workflow_id
        try:
            if outcome == "completed":
                run.check_complete_replay()
                enc, payload = run.journal.encode(value, "the workflow result")
                run.write("workflow_completed", encoding=enc, payload=payload)
                self.store.update_workflow(wid, run.token, status="completed",
                                           result_encoding=enc, result_payload=payload)
                self.emit("workflow_completed", wid, workflow_name=run.workflow_name)
            elif outcome == "failed" and error is not None:
                info = {"error_type": type(error).__name__, "message": str(error)[:4000],
                        "traceback": "".join(traceback.format_exception(error))[-8000:]}
                run.write("workflow_failed", info=info)
                self.store.update_workflow(wid, run.token, status="failed",
                                           error=json.dumps(info))
                self.emit("workflow_failed", wid, workflow_name=run.workflow_name,
                          error_type=type(error).__name__)
        finally:
            with self._active_lock:
                self._active.pop(wid, None)
            self.lease_manager.release(wid)

    def _on_error(self, run: WorkflowRun, exc: BaseException) -> BaseException:
        """Record a failed workflow; translate a refused write into what happened."""
        if isinstance(exc, LeaseLost):
            with self._active_lock:
                self._active.pop(run.workflow_id, None)
            rec = self.store.get_workflow(run.workflow_id)
            if rec is not None and rec.status == "cancelled":
                return WorkflowCancelled(run.workflow_id)
            return exc
        if isinstance(exc, Exception):
            try:
                self._finish(run, "failed", error=exc)
            except LeaseLost as lost:
                return lost
        else:  # KeyboardInterrupt, SystemExit: resumable, not failed
            self._finish(run, "interrupted")
            self.emit("workflow_interrupted", run.workflow_id, workflow_name=run.workflow_name,
                      error_type=type(exc).__name__)
        return exc

    def run(self, definition: WorkflowDefinition, args: tuple = (), kwargs: dict | None = None,
            workflow_id: str | None = None,
            on_started: Callable[[], None] | None = None) -> Any:
        """Run (or continue) a sync workflow to its end and return its result.
        ``on_started`` is called once the lease is held and the workflow is journaled."""
        kwargs = kwargs or {}
        run, done = self._begin(definition, args, kwargs, workflow_id)
        if on_started is not None:
            on_started()
        if run is None:
            return done
        ctx = _current_run.set(run)
        try:
            value = definition.fn(*args, **kwargs)
        except BaseException as exc:
            translated = self._on_error(run, exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            _current_run.reset(ctx)
        try:
            self._finish(run, "completed", value)
        except LeaseLost as exc:
            translated = self._on_error(run, exc)
            raise translated from (exc if translated is not exc else None)
        return value

    async def arun(self, definition: WorkflowDefinition, args: tuple = (),
                   kwargs: dict | None = None, workflow_id: str | None = None,
                   on_started: Callable[[], None] | None = None) -> Any:
        """The async twin of ``run`` for ``async def`` workflows."""
        kwargs = kwargs or {}
        run, done = self._begin(definition, args, kwargs, workflow_id)
        if on_started is not None:
            on_started()
        if run is None:
            return done
        ctx = _current_run.set(run)
        try:
            value = await definition.fn(*args, **kwargs)
        except BaseException as exc:
            translated = self._on_error(run, exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            _current_run.reset(ctx)
        self._finish(run, "completed", value)
        return value

    def enqueue(self, definition: WorkflowDefinition, args: tuple = (),
                kwargs: dict | None = None, workflow_id: str | None = None) -> str:
        """Journal a workflow for a worker to run (``contd worker``) and return its id. An id
        that exists is left as it is."""
        wid = resolve_workflow_id(workflow_id, definition)
        token = self.lease_manager.acquire(wid)
        try:
            if self.store.get_workflow(wid) is None:
                self._create(definition, args, kwargs or {}, wid, token)
                WorkflowRun(self, wid, definition.name, token, FoldedState(), 0).write(
                    "workflow_enqueued", info={"name": definition.name,
                                               "function": definition.function})
                self.emit("workflow_enqueued", wid, workflow_name=definition.name)
        finally:
            self.lease_manager.release(wid)
        return wid

    # -- snapshots ----------------------------------------------------------------------------
    def _write_snapshot(self, run: WorkflowRun) -> None:
        state = run.state
        size = self.journal.write_snapshot(run.workflow_id, state.step_number, state.last_seq,
                                           state.to_snapshot(), run.token)
        log.debug("snapshot of %s at step %d: %d bytes", run.workflow_id, state.step_number,
                  size)
        self.emit("snapshot_written", run.workflow_id, step_number=state.step_number,
                  size_bytes=size)

    def close(self) -> None:
        """Release held leases and the journal."""
        self.lease_manager.close()
        self.store.idle()
