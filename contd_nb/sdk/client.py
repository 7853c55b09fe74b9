"""``Client``: start, resume, inspect and cancel workflows on a journal.

``client = contd_nb.Client()`` uses the default engine (journal from the environment);
``Client(journal="path.duckdb")`` opens another. A workflow id is an idempotency key: running
a workflow with an id that exists continues it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.engine import (
    ExecutionEngine,
    WorkflowDefinition,
    resolve_workflow_id,
    validate_workflow_id,
)
from ..core.leases import HOST, owner_is_dead
from ..persistence.base import WorkflowRecord
from .errors import (
    ConfigurationError,
    WorkflowFailed,
    WorkflowNotFinished,
    WorkflowNotFound,
)

__all__ = ["Client", "WorkflowHandle", "WorkflowStatus"]


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True)
class WorkflowStatus:
    workflow_id: str
    name: str
    status: str          # running | interrupted | completed | failed | cancelled
    created_at: dt.datetime
    updated_at: dt.datetime
    steps_completed: int | None = None
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    error: str | None = None


class WorkflowHandle:
    """A workflow started in a background thread by ``Client.start``."""

    def __init__(self, client: Client, workflow_id: str, thread: threading.Thread,
                 box: dict) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self._thread = thread
        self._box = box

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float | None = None) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"workflow {self.workflow_id} still running after {timeout}s")
        if "error" in self._box:
            raise self._box["error"]
        return self._box.get("result")

    def status(self) -> WorkflowStatus:
        return self.client.status(self.workflow_id)


class Client:
    def __init__(self, journal: str | None = None, *, engine: ExecutionEngine | None = None,
                 **engine_options: Any) -> None:
        if engine is not None:
            self.engine = engine
        elif journal is None and not engine_options:
            self.engine = ExecutionEngine.get_instance()
        else:
            self.engine = ExecutionEngine(journal, **engine_options)

    # -- running ------------------------------------------------------------------------------
    @staticmethod
    def _definition(fn: Callable[..., Any]) -> WorkflowDefinition:
        definition = getattr(fn, "__contd_workflow__", None)
        if definition is None:
            raise ConfigurationError(f"{getattr(fn, '__name__', fn)!r} is not a workflow: "
                                     "decorate it with @workflow")
        return definition

    def _run(self, definition: WorkflowDefinition, args, kwargs, workflow_id, on_started=None):
        if definition.is_async:
            return asyncio.run(self.engine.arun(definition, args, kwargs, workflow_id,
                                                on_started))
        return self.engine.run(definition, args, kwargs, workflow_id, on_started)

    def run(self, fn: Callable[..., Any], *args: Any, workflow_id: str | None = None,
            **kwargs: Any) -> Any:
        """Run a workflow here and now (or continue it, if ``workflow_id`` exists)."""
        return self._run(self._definition(fn), args, kwargs, workflow_id)

    def start(self, fn: Callable[..., Any], *args: Any, workflow_id: str | None = None,
              **kwargs: Any) -> WorkflowHandle:
        """Run a workflow in a background thread; returns a handle with ``.result()``."""
        definition = self._definition(fn)
        wid = resolve_workflow_id(workflow_id, definition)
        box: dict = {}
        started = threading.Event()

        def target() -> None:
            try:
                box["result"] = self._run(definition, args, kwargs, wid, started.set)
            except BaseException as e:  # noqa: BLE001 - handed to result()
                box["error"] = e
            finally:
                started.set()

        thread = threading.Thread(target=target, name=f"contd-workflow-{wid}", daemon=True)
        thread.start()
        started.wait()  # the lease is held and the workflow journaled (or it failed to start)
        return WorkflowHandle(self, wid, thread, box)

    def enqueue(self, fn: Callable[..., Any], *args: Any, workflow_id: str | None = None,
                **kwargs: Any) -> str:
        """Journal a workflow for a worker (``contd worker``) to run; returns its id."""
        return self.engine.enqueue(self._definition(fn), args, kwargs, workflow_id)

    def resume(self, workflow_id: str, fn: Callable[..., Any] | None = None) -> Any:
        """Continue a workflow from its journal: completed steps are not run again. The
        function is found by the name it was journaled under (or pass ``fn``)."""
        rec = self._record(workflow_id)
        definition = self._definition(fn) if fn is not None else self._find(rec)
        if rec.input_encoding is None:
            raise ConfigurationError(
                f"workflow {workflow_id} has no journaled input; call the workflow function "
                "again with its arguments and WorkflowConfig(workflow_id=...) instead")
        args, kwargs = self.engine.journal.decode(rec.input_encoding, rec.input_payload,
                                                  workflow_id, None, "the workflow input")
        return self._run(definition, tuple(args), kwargs, workflow_id)

    def _find(self, rec: WorkflowRecord) -> WorkflowDefinition:
        path = rec.function or ""
        definition = ExecutionEngine.registry.get(path)
        if definition is None and ":" in path:
            module, _, qualname = path.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                raise ConfigurationError(
                    f"cannot find workflow function {path} to resume {rec.workflow_id} "
                    f"({e}); import it first or pass fn=") from e
            definition = ExecutionEngine.registry.get(path) or self._definition(obj)
        if definition is None:
            raise ConfigurationError(f"workflow {rec.workflow_id} has no function to resume")
        return definition

    # -- inspecting ---------------------------------------------------------------------------
    def _record(self, workflow_id: str) -> WorkflowRecord:
        validate_workflow_id(workflow_id)
        rec = self.engine.store.get_workflow(workflow_id)
        if rec is None:
            raise WorkflowNotFound(workflow_id, self.engine.store.describe())
        return rec

    _UNREAD = object()

    def _summary(self, rec: WorkflowRecord, steps: int | None = None,
                 lease: Any = _UNREAD) -> WorkflowStatus:
        """``lease``: the workflow's lease as the caller read it (``list`` reads all leases
        at once). A running workflow that looks unheld is checked again one by one: it may
        have started after the leases were read, or finished after the row was read."""
        if lease is not Client._UNREAD:
            held = lease is not None and lease.owner_id is not None \
                and lease.expires_at > time.time() and not owner_is_dead(lease, HOST)
            if rec.status == "running" and not held:
                return self._summary(rec, steps)
        lease = self.engine.store.get_lease(rec.workflow_id)
        held = lease is not None and lease.owner_id is not None \
            and lease.expires_at > time.time() and not owner_is_dead(lease, HOST)
        if rec.status == "running" and not held:
            # the final status is written before the lease is released: read it again, so a
            # workflow that just finished is not reported as interrupted
            rec = self.engine.store.get_workflow(rec.workflow_id) or rec
        status = rec.status
        if status == "running" and not held:
            status = "interrupted"
        error = None
        if rec.error:
            info = json.loads(rec.error)
            error = f"{info.get('error_type')}: {info.get('message')}"
        return WorkflowStatus(rec.workflow_id, rec.name, status, _utc(rec.created_at),
                              _utc(rec.updated_at), steps,
                              lease.owner_id if held else None,
                              _utc(lease.expires_at) if held else None, error)

    def status(self, workflow_id: str) -> WorkflowStatus:
        rec = self._record(workflow_id)
        steps = self.engine.restore(workflow_id).step_number
        return self._summary(rec, steps)

    def result(self, workflow_id: str) -> Any:
        rec = self._record(workflow_id)
        if rec.status == "completed":
            return self.engine.journal.decode(rec.result_encoding, rec.result_payload,
                                              workflow_id, None, "the workflow result")
        if rec.status == "failed":
            info = json.loads(rec.error or "{}")
            raise WorkflowFailed(workflow_id, info.get("error_type", "?"),
                                 info.get("message", ""))
        raise WorkflowNotFinished(workflow_id, self._summary(rec).status)

    def list(self, status: str | None = None) -> list[WorkflowStatus]:
        # two reads (leases, then workflows) instead of one per workflow: on a shared DuckDB
        # file each read can hand the file to another process
        leases = {lease.workflow_id: lease for lease in self.engine.store.list_leases()}
        summaries = [self._summary(r, lease=leases.get(r.workflow_id))
                     for r in self.engine.store.list_workflows()]
        return [s for s in summaries if status is None or s.status == status]

    def cancel(self, workflow_id: str) -> bool:
        """Cancel an unfinished workflow: its executor is fenced out at its next journal
        write and stops with WorkflowCancelled. Returns False if it had already finished."""
        self._record(workflow_id)
        changed = self.engine.store.update_workflow(
            workflow_id, None, status="cancelled", only_if_status=("running", "failed"))
        if changed:
            self.engine.lease_manager.force_release(workflow_id)
        return changed
