"""The IPython magics: %contd_run, %%contd_step, %contd_resume, %contd_status, %contd_release.

Thin: they parse arguments (``magic_arguments``, so ``%contd_run?`` shows help; bad arguments
raise ``UsageError``) and hand over to NotebookSession.
"""

from __future__ import annotations

import datetime as dt
import re
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..core.engine import ExecutionEngine
from ..sdk.client import Client
from ..sdk.errors import NoActiveWorkflow
from .session import NOTEBOOK_FUNCTION, CellOptions, NotebookSession

__all__ = ["ContdMagics", "parse_duration", "rewrite_async_step_cells",
           "run_async_step_cell"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str) -> float:
    """'30s', '1.5m', '500ms', '2h' or plain seconds -> seconds (UsageError otherwise)."""
    m = _DURATION.match(text or "")
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"{what} {text!r} is not a duration: use e.g. 30s, 500ms, 2m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parse(magic, line: str):
    try:
        return parse_argstring(magic, line)
    except UsageError:
        raise
    except SystemExit as e:  # argparse on bad input
        raise UsageError(f"bad arguments: {line!r}") from e


def _step_options(magic, line: str) -> tuple[NotebookSession, CellOptions]:
    args = _parse(magic, line)
    if args.retry < 0:
        raise UsageError("--retry must be 0 or more")
    session = NotebookSession.current
    if session is None:
        raise NoActiveWorkflow("a %%contd_step cell ran before %contd_run: run "
                               "`%contd_run NAME` first")
    return session, CellOptions(
        name=args.name, retry=args.retry,
        timeout=parse_duration(args.timeout, "--timeout") if args.timeout else None,
        backoff=parse_duration(args.backoff, "--backoff") if args.backoff else 1.0,
        force=args.force, always_run=args.always_run,
        no_save=frozenset(v.strip() for v in args.no_save.split(",") if v.strip()))


_STEP = "%%contd_step"


def rewrite_async_step_cells(lines: list[str]) -> list[str]:
    """An input transformer: a ``%%contd_step`` cell whose body has top-level ``await`` becomes
    ``await <run it>``, so IPython runs the cell in the kernel's own event loop (a cell magic
    is synchronous and cannot await). Other cells pass unchanged."""
    if not lines or not lines[0].startswith(_STEP):
        return lines
    body = "".join(lines[1:])
    if not _needs_await(body):
        return lines
    line = lines[0][len(_STEP):].strip()
    return [f"await __import__('contd_nb.notebook.magics', fromlist=['_'])"
            f".run_async_step_cell({line!r}, {body!r})\n"]


def _needs_await(body: str) -> bool:
    from IPython.core.async_helpers import _should_be_async
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return _should_be_async(TransformerManager().transform_cell(body))
    except Exception:  # noqa: BLE001 - not valid Python: the magic reports it as usual
        return False


async def run_async_step_cell(line: str, body: str) -> None:
    """What a rewritten ``%%contd_step`` cell with top-level await runs."""
    __tracebackhide__ = True
    session, opts = _step_options(ContdMagics.contd_step, line)
    await session.run_cell_step_async(body, opts)


@magics_class
class ContdMagics(Magics):
    @magic_arguments()
    @argument("name", help="the notebook workflow to begin or continue (e.g. analysis-2026)")
    @argument("--journal", help="journal file path or postgresql:// URL (default: "
              "CONTD_JOURNAL or .contd/journal.duckdb)")
    @argument("--ttl", help="lease time to live, e.g. 30s (default 30s)")
    @line_magic
    def contd_run(self, line: str) -> None:
        """Begin or continue the durable notebook run NAME in this kernel (takes its lease).

        After it, ``%%contd_step`` cells are journaled steps of NAME: after a crash, "Run All"
        restores the cells that completed and runs the rest.
        """
        args = _parse(self.contd_run, line)
        ttl = parse_duration(args.ttl, "--ttl") if args.ttl else None
        session = NotebookSession.start(self.shell, args.name, args.journal, ttl)
        done = len(session.state.steps)
        pending = f"; step '{session.state.pending}' did not complete" \
            if session.state.pending else ""
        print(f"contd_nb: notebook run '{args.name}' on {session.engine.store.describe()}: "
              f"{done} completed step(s){pending}")

    @magic_arguments()
    @argument("name", nargs="?", help="step name (default: from the cell's code)")
    @argument("--retry", type=int, default=0, help="retry a failing cell N times")
    @argument("--timeout", help="interrupt the cell after this long, e.g. 30s")
    @argument("--backoff", help="wait before the first retry, e.g. 1s (doubles each time)")
    @argument("--force", action="store_true", help="run even if it completed before")
    @argument("--always-run", action="store_true",
              help="a setup cell (imports, connections): run it every time")
    @argument("--no-save", default="", help="comma-separated variables not to persist")
    @cell_magic
    def contd_step(self, line: str, cell: str) -> None:
        """Run the cell as a durable step of the current notebook run.

        If it completed before with the same code (comments and whitespace do not count) and
        no step it read from ran again, it is not run: its variables come back and its outputs
        are shown again, marked as restored. Otherwise it runs and says why.
        """
        __tracebackhide__ = True
        session, opts = _step_options(self.contd_step, line)
        session.run_cell_step(cell, opts)

    @magic_arguments()
    @argument("name", help="a notebook run or a Python @workflow id")
    @argument("--journal", help="journal file path or postgresql:// URL (default: the "
              "current run's, else CONTD_JOURNAL or .contd/journal.duckdb)")
    @line_magic
    def contd_resume(self, line: str) -> None:
        """Restore, at once, every variable of notebook run NAME (or resume the Python
        workflow with that id) and say what comes next."""
        args = _parse(self.contd_resume, line)
        if args.journal:
            engine = ExecutionEngine(args.journal)
        else:
            engine = (NotebookSession.current.engine if NotebookSession.current
                      else ExecutionEngine.get_instance())
        rec = engine.store.get_workflow(args.name)
        if rec is not None and not (rec.function or "").startswith(NOTEBOOK_FUNCTION):
            t0 = time.perf_counter()
            result = Client(engine=engine).resume(args.name)
            print(f"contd_nb: workflow {args.name} resumed and completed in "
                  f"{time.perf_counter() - t0:.2f}s")
            self.shell.user_ns["_contd_result"] = result
            return
        session = NotebookSession.start(self.shell, args.name, engine=engine)
        report = session.resume_all()
        rows = [("steps restored", report["steps"]), ("variables", report["variables"]),
                ("bytes", f"{report['bytes']:,}"), ("time", f"{report['seconds']:.2f}s"),
                ("to recompute", ", ".join(f"{k} ({v})" for k, v in
                                           sorted(report["recompute"].items())) or "none"),
                ("next pending step", report["pending"] or "none")]
        print(f"contd_nb: resumed notebook run '{args.name}'")
        for key, value in rows:
            print(f"  {key:<18} {value}")

    @line_magic
    def contd_status(self, line: str = "") -> None:
        """The current notebook run: lease, completed steps, pending step, variables."""
        session = NotebookSession.current
        if session is None:
            print("contd_nb: no notebook run in this kernel (start one with %contd_run NAME)")
            return
        lease = session.engine.lease_manager.get_current_lease(session.name)
        print(f"contd_nb: notebook run '{session.name}' on {session.engine.store.describe()}")
        if lease is not None:
            print(f"  lease: owner {lease.owner_id}, token {lease.token}, "
                  f"{max(lease.seconds_left, 0):.0f}s left")
        for step in sorted(session.state.steps.values(), key=lambda s: s.seq):
            when = dt.datetime.fromtimestamp(step.ran_at, dt.UTC).strftime("%H:%M:%S")
            print(f"  step {step.name:<24} ran {when} UTC  {step.duration_s:7.2f}s  "
                  f"attempt {step.attempt}  vars: {', '.join(sorted(step.values)) or '-'}")
        if session.state.pending:
            print(f"  pending: {session.state.pending}")

    @magic_arguments()
    @argument("name", help="the workflow whose lease to release")
    @line_magic
    def contd_release(self, line: str) -> None:
        """Give up this kernel's lease of NAME (or, if another executor holds it, take it from
        them: they are fenced out)."""
        args = _parse(self.contd_release, line)
        session = NotebookSession.current
        if session is not None and session.name == args.name:
            session.close()
            print(f"contd_nb: released '{args.name}'; this kernel no longer runs it")
            return
        engine = session.engine if session else ExecutionEngine.get_instance()
        before = engine.lease_manager.force_release(args.name)
        if before is None or before.owner_id is None:
            print(f"contd_nb: '{args.name}' had no holder")
        else:
            print(f"contd_nb: force-released '{args.name}' from {before.owner_id}")

    @magic_arguments()
    @argument("name", nargs="?", help="the workflow to open first (default: all)")
    @argument("--journal", help="journal file (default: this kernel's notebook run's, else "
              "CONTD_JOURNAL or .contd/journal.duckdb)")
    @line_magic
    def contd_inspect(self, line: str = ""):
        """Open the journal dashboard: browser, leases, retry timeline and recovery (widgets;
        HTML tables without a widget frontend). See ``contd_nb.views.dashboard``."""
        from ..views import dashboard

        args = _parse(self.contd_inspect, line)
        return dashboard(args.name, journal=args.journal)
