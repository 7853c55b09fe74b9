"""A notebook run: ``%contd_run NAME`` starts one, ``%%contd_step`` cells are its steps.

The session holds the workflow's lease for the kernel's life, journals each cell's start and
completion (variables as content-addressed blobs, outputs, the names it read and where they
came from), restores a cell instead of running it when it completed before with the same code
and nothing upstream ran again, and brings every variable back at once on ``%contd_resume``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from ..core import retry
from ..core.engine import ExecutionEngine, validate_workflow_id
from ..core.replay import FoldedState
from ..core.run import StepDefinition, WorkflowRun
from ..core.timeouts import interrupt_after
from ..persistence.base import RestoreRecord, WorkflowRecord
from ..sdk.config import RetryPolicy
from ..sdk.context import ExecutionContext, _current_step, set_notebook_run
from ..sdk.errors import ConfigurationError, StepTimeout, TooManyAttempts
from .capture import OutputCapture, replay_outputs
from .cell_analysis import analyze_cell
from .state import (
    CellStep,
    NotebookState,
    apply_cell_completion,
    decide,
    fold_notebook,
    to_recompute,
    value_producers,
)
from .values import encode_values, hash_of, load_values, ref_hash

__all__ = ["CellOptions", "NotebookRun", "NotebookSession"]

log = logging.getLogger("contd_nb.notebook")
NOTEBOOK_FUNCTION = "notebook:"


@dataclass(frozen=True)
class CellOptions:
    name: str | None = None
    retry: int = 0
    timeout: float | None = None
    backoff: float = 1.0
    force: bool = False
    always_run: bool = False
    no_save: frozenset[str] = frozenset()


class NotebookRun(WorkflowRun):
    """The run object of a notebook workflow: journal writes under the lease, and ``@step``
    functions called from cells (identified by cell, function and call number)."""

    def __init__(self, engine: ExecutionEngine, workflow_id: str, token: int,
                 state: NotebookState) -> None:
        super().__init__(engine, workflow_id, workflow_id, token,
                         FoldedState(last_seq=state.last_seq), 0)
        self.nb_state = state
        self.cell: str | None = None
        self.calls: Counter = Counter()

    def call_step(self, step: StepDefinition, args: tuple, kwargs: dict) -> Any:
        cell = self.cell or "notebook"
        self.calls[(cell, step.name)] += 1
        key = f"{cell}/{step.name}#{self.calls[(cell, step.name)]}"
        done = self.nb_state.fn_steps.get(key)
        if done is not None and done["code_hash"] == step.code_hash:
            self.replayed.append(key)
            return self.journal.decode(done["encoding"], done["payload"], self.workflow_id,
                                       done["seq"], f"the result of step '{key}'")
        self.state.steps.clear()  # positions do not apply here: always run past the replay
        self.position = 0
        result = super().call_step(replace(step, name=key), args, kwargs)
        last = self.state.steps[-1]
        self.nb_state.fn_steps[key] = {"seq": last.seq, "code_hash": step.code_hash,
                                       "encoding": last.encoding, "payload": last.payload}
        self.nb_state.last_seq = last.seq
        return result


class NotebookSession:
    current: NotebookSession | None = None

    def __init__(self, shell, engine: ExecutionEngine, name: str, run: NotebookRun) -> None:
        self.shell = shell
        self.engine = engine
        self.name = name
        self.run = run
        self.state = run.nb_state
        # where the value now in the kernel came from: variable -> (step name, seq)
        self.producers: dict[str, tuple[str, int]] = {}
        self._known_blobs: set[str] = set()

    # -- start / stop -------------------------------------------------------------------------
    @classmethod
    def start(cls, shell, name: str, journal: str | None = None, ttl: float | None = None,
              engine: ExecutionEngine | None = None) -> NotebookSession:
        validate_workflow_id(name)
        previous = cls.current
        if previous is not None:
            if previous.name == name and journal is None and engine is None:
                return previous
            previous.close()
        if engine is None and journal is None and ttl is None:
            engine = ExecutionEngine.get_instance()
        elif engine is None:
            options = {"lease_ttl": ttl} if ttl is not None else {}
            engine = ExecutionEngine(journal, **options)
        if previous is not None and previous.engine is not engine \
                and previous.engine is not ExecutionEngine._instance:
            previous.engine.close()  # an engine this session opened for itself
        token = engine.lease_manager.acquire(name)
        try:
            run = cls._open_run(engine, name, token)
        except BaseException:
            engine.lease_manager.release(name)
            raise
        session = cls(shell, engine, name, run)
        cls.current = session
        set_notebook_run(run)
        atexit.register(session.close)
        return session

    @staticmethod
    def _open_run(engine: ExecutionEngine, name: str, token: int) -> NotebookRun:
        rec = engine.store.get_workflow(name)
        if rec is not None and not (rec.function or "").startswith(NOTEBOOK_FUNCTION):
            raise ConfigurationError(
                f"workflow {name} is a Python workflow ({rec.function}), not a notebook run; "
                f"use %contd_resume {name} to resume it, or pick another name for %contd_run")
        if rec is None:
            now = time.time()
            engine.store.insert_workflow(WorkflowRecord(name, name, NOTEBOOK_FUNCTION + name,
                                                        "running", now, now))
            run = NotebookRun(engine, name, token, NotebookState())
            run.write("workflow_started", info={"name": name, "function": "notebook",
                                                "executor": engine.executor_id})
            return run
        started, t0 = time.time(), time.perf_counter()
        state, replayed, snap_step = restore_notebook_state(engine, name)
        duration = (time.perf_counter() - t0) * 1000
        engine.store.record_restore(RestoreRecord(name, started, duration, replayed, snap_step,
                                                  "resume", engine.executor_id))
        run = NotebookRun(engine, name, token, state)
        run.write("workflow_resumed", info={"duration_ms": round(duration, 3),
                                            "events_replayed": replayed,
                                            "snapshot_step": snap_step,
                                            "steps_completed": len(state.steps),
                                            "executor": engine.executor_id})
        engine.emit("restore", name, duration_ms=duration, events_replayed=replayed,
                    snapshot_step=snap_step, purpose="resume")
        return run

    def close(self) -> None:
        atexit.unregister(self.close)
        if NotebookSession.current is self:
            NotebookSession.current = None
            set_notebook_run(None)
        try:
            self.engine.lease_manager.release(self.name)
        except Exception as e:  # noqa: BLE001 - closing must not fail
            log.warning("could not release the lease of %s: %s", self.name, e)

    # -- cells --------------------------------------------------------------------------------
    def run_cell_step(self, raw_cell: str, opts: CellOptions) -> None:
        """Restore or run a step cell whose code has no top-level ``await``."""
        __tracebackhide__ = True

        async def execute(cell: str):
            return self.shell.run_cell(cell, store_history=False)

        async def sleep(seconds: float) -> None:
            time.sleep(seconds)

        _drive(self._step(raw_cell, opts, execute, sleep, uses_await=False))

    async def run_cell_step_async(self, raw_cell: str, opts: CellOptions) -> None:
        """The same for a cell with top-level ``await``: it runs in the kernel's own event
        loop (the extension rewrites such cells to await this)."""
        __tracebackhide__ = True

        async def execute(cell: str):
            try:
                transformed, failure = self.shell.transform_cell(cell), None
            except Exception:  # noqa: BLE001 - IPython reports it as the cell's error
                transformed, failure = cell, sys.exc_info()
            return await self.shell.run_cell_async(cell, store_history=False,
                                                   transformed_cell=transformed,
                                                   preprocessing_exc_tuple=failure)

        await self._step(raw_cell, opts, execute, asyncio.sleep, uses_await=True)

    async def _step(self, raw_cell: str, opts: CellOptions, execute, sleep, uses_await: bool
                    ) -> None:
        __tracebackhide__ = True
        analysis = analyze_cell(self.shell.transform_cell(raw_cell))
        name = opts.name or f"cell-{analysis.code_hash[:10]}"
        decision = decide(self.state, name, analysis.code_hash, force=opts.force,
                          always_run=opts.always_run)
        if not decision.run:
            self._restore_cell(self.state.steps[name])
            return
        if uses_await and opts.timeout:
            raise ConfigurationError(
                f"step '{name}': --timeout cannot interrupt a cell with top-level await; "
                "use asyncio.wait_for(...) inside the cell")
        if decision.reason != "first run":
            print(f"contd_nb: running step '{name}': {decision.reason}")
        await self._run_cell(name, raw_cell, analysis, opts, execute, sleep)

    def _restore_cell(self, step: CellStep) -> None:
        values = load_values(self.run.journal, self.name, step.values)
        self.shell.user_ns.update(values)
        for var in step.deleted:
            self.shell.user_ns.pop(var, None)
            self.producers.pop(var, None)
        for var in values:
            self.producers[var] = (step.name, step.seq)
        self.engine.emit("step_replayed", self.name, step_name=step.name, step_number=step.seq,
                         cell=True)
        when = dt.datetime.fromtimestamp(step.ran_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        replay_outputs(self.shell, step.outputs,
                       f"\u21ba contd_nb: step '{step.name}' restored from the journal "
                       f"(ran {when}, took {step.duration_s:.1f}s); not run again")

    async def _run_cell(self, name: str, raw_cell: str, analysis, opts: CellOptions,
                        execute, sleep) -> None:
        __tracebackhide__ = True
        policy = RetryPolicy(max_attempts=opts.retry + 1, backoff_initial=opts.backoff) \
            if opts.retry else None
        candidates = [v for v in analysis.mutation_candidates
                      if v in self.producers and v in self.state.variables]
        self.run.write("step_started", step_name=name, attempt=1,
                       info={"cell": True, "code_hash": analysis.code_hash})
        self.state.pending = name
        attempt = 1
        while True:
            started = time.time()
            self.engine.emit("step_started", self.name, step_name=name,
                             step_number=self.state.completions + 1, attempt=attempt, cell=True)
            self.run.cell, self.run.calls = name, Counter()
            ctx = _current_step.set(ExecutionContext(self.name, self.name,
                                                     self.engine.executor_id, name,
                                                     self.state.completions + 1, attempt))
            try:
                with OutputCapture(self.shell) as cap, _as_plain_cell(self.shell, raw_cell), \
                        interrupt_after(opts.timeout, name):
                    result = await execute(raw_cell)
            finally:
                _current_step.reset(ctx)
                self.run.cell = None
            error = result.error_before_exec or result.error_in_exec
            if error is None:
                break
            delay = self._failed(name, attempt, started, error, policy)
            if delay is None:
                if policy is not None and retry.is_retryable(policy, error) \
                        and not isinstance(error, StepTimeout):
                    raise TooManyAttempts(name, attempt, error) from error
                raise error
            print(f"contd_nb: step '{name}' attempt {attempt} failed "
                  f"({type(error).__name__}: {error}); retrying in {delay:.2f}s",
                  file=sys.stderr, flush=True)
            await sleep(delay)
            attempt += 1
        self._completed(name, analysis, opts, candidates, attempt, started, cap.outputs)

    def _failed(self, name, attempt, started, error, policy) -> float | None:
        import traceback

        decision = retry.decide(policy, error, attempt)
        self.run.write("step_failed", step_name=name, attempt=attempt, started_at=started,
                       info={"cell": True, "error_type": type(error).__name__,
                             "message": str(error)[:4000],
                             "traceback": "".join(traceback.format_exception(error))[-8000:],
                             "will_retry": decision.retry, "delay_s": round(decision.delay, 3),
                             "decision": decision.reason,
                             "timeout": isinstance(error, StepTimeout)})
        self.engine.emit("step_failed", self.name, step_name=name, attempt=attempt,
                         error_type=type(error).__name__, duration_ms=(time.time() - started)
                         * 1000, timeout=isinstance(error, StepTimeout),
                         will_retry=decision.retry, cell=True)
        return decision.delay if decision.retry else None

    def _completed(self, name, analysis, opts, candidates, attempt, started, outputs) -> None:
        journal = self.run.journal
        user_ns = self.shell.user_ns
        mutated = [v for v in candidates if v not in analysis.assigned and v in user_ns
                   and hash_of(journal, user_ns[v]) != ref_hash(self.state.variables[v][0])]
        names = sorted((set(analysis.assigned) | set(mutated)) - set(opts.no_save))
        names = [n for n in names if n in user_ns and not n.startswith("_")]
        deleted = sorted(v for v in analysis.deleted if v not in user_ns)
        enc = encode_values(journal, user_ns, names, self._known_blobs)
        for var, type_name in enc.unpersistable.items():
            print(f"contd_nb: `{var}` ({type_name}) was not persisted: {enc.reasons[var]}; "
                  "a resume will list it to recompute", file=sys.stderr)
        reads = {v: list(self.producers[v]) for v in sorted(analysis.read)
                 if v in self.producers}
        info = {"cell": True, "code_hash": analysis.code_hash, "reads": reads,
                "deleted": deleted, "unpersistable": enc.unpersistable,
                "mutated": sorted(mutated), "no_save": sorted(opts.no_save)}
        manifest = {"values": enc.refs, "outputs": outputs}
        ended = time.time()
        seq = self.run.write("step_completed", step_number=self.state.completions + 1,
                             step_name=name, attempt=attempt, started_at=started,
                             ended_at=ended, info=info, encoding="json",
                             payload=json.dumps(manifest).encode(), blobs=tuple(enc.blobs))
        self.engine.emit("step_completed", self.name, step_name=name,
                         step_number=self.state.completions + 1, attempt=attempt,
                         duration_ms=(ended - started) * 1000, cell=True)
        apply_cell_completion(self.state, CellStep(
            name, seq, analysis.code_hash, started, ended - started, attempt, reads,
            enc.refs, deleted, enc.unpersistable, outputs))
        self.state.last_seq = seq
        for var in list(enc.refs) + list(enc.unpersistable):
            self.producers[var] = (name, seq)
        for var in deleted:
            self.producers.pop(var, None)
        interval = self.engine.snapshot_interval
        if interval and self.state.completions % interval == 0:
            self.run.journal.write_snapshot(self.name, self.state.completions, seq,
                                            {"notebook": self.state.to_snapshot()},
                                            self.run.token)

    # -- resume -------------------------------------------------------------------------------
    def resume_all(self) -> dict:
        """Put every variable the journal has back into the namespace at once."""
        t0 = time.perf_counter()
        refs = {var: ref for var, (ref, _, _) in self.state.variables.items()
                if "unpersistable" not in ref}
        values = _load_with_progress(self.run.journal, self.name, refs)
        self.shell.user_ns.update(values)
        producers = value_producers(self.state)
        self.producers.update({var: producers[var] for var in values})
        nbytes = sum(ref.get("size", 0) for ref in refs.values())
        return {"steps": len(self.state.steps), "variables": len(values), "bytes": nbytes,
                "seconds": time.perf_counter() - t0, "recompute": to_recompute(self.state),
                "pending": self.state.pending}


def _drive(coro) -> None:
    """Run a coroutine that never suspends (the sync path of a step cell) to its end."""
    __tracebackhide__ = True
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("contd_nb: a step cell without top-level await suspended")


@contextlib.contextmanager
def _as_plain_cell(shell, raw_cell: str):
    """Make the nested run_cell behave like the cell itself: it does not show the error (the
    magic re-raises it, or retries, and IPython then shows it once, as for a plain cell), and
    a trailing ';' hides the last value (IPython looks for it in the outer cell's source)."""
    saved = shell.showtraceback, shell.showsyntaxerror
    shell.showtraceback = lambda *a, **k: None
    shell.showsyntaxerror = lambda *a, **k: None
    hook = shell.displayhook
    had_quiet = "quiet" in vars(hook)
    hook.quiet = lambda: type(hook).semicolon_at_end_of_expression(raw_cell)
    try:
        yield
    finally:
        shell.showtraceback, shell.showsyntaxerror = saved
        if not had_quiet:
            del hook.quiet


def restore_notebook_state(engine: ExecutionEngine, name: str
                           ) -> tuple[NotebookState, int, int | None]:
    """Latest snapshot plus the events after it: (state, events replayed, snapshot step)."""
    journal = engine.journal
    snap = journal.latest_snapshot(name)
    if snap is not None and "notebook" in snap[1]:
        state = NotebookState.from_snapshot(snap[1]["notebook"])
        snap_step: int | None = snap[0].step_number
    else:
        state, snap_step = NotebookState(), None
    records = journal.records(name, state.last_seq)

    def manifest(rec) -> dict:
        return json.loads(rec.payload) if rec.payload else {}

    fold_notebook(state, records, manifest)
    return state, len(records), snap_step


def _load_with_progress(journal, name: str, refs: dict[str, dict]) -> dict[str, Any]:
    """Load values in batches, with a progress line once it takes more than a second."""
    items = sorted(refs.items())
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    shown = False
    for i in range(0, len(items), 8):
        out.update(load_values(journal, name, dict(items[i:i + 8])))
        if time.perf_counter() - t0 > 1.0:
            shown = True
            done = min(i + 8, len(items))
            bar = "#" * int(30 * done / len(items))
            print(f"\rcontd_nb: restoring [{bar:<30}] {done}/{len(items)} variables",
                  end="", flush=True)
    if shown:
        print()
    return out
