"""The ``contd`` commands (``cli.py`` parses the arguments and reports errors)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .cli import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from .core.engine import ExecutionEngine, resolve_workflow_id, validate_workflow_id
from .core.leases import HOST, owner_is_dead
from .persistence.adapters import open_store, resolve_journal
from .persistence.duckdb_store import DuckDBStore
from .sdk.client import Client
from .sdk.errors import ContdError, WorkflowNotFound

FINISHED = ("completed", "failed", "cancelled")


# -- helpers ----------------------------------------------------------------------------------
def _ts(x: float | dt.datetime | None) -> str:
    if x is None:
        return "-"
    if not isinstance(x, dt.datetime):
        x = dt.datetime.fromtimestamp(x, dt.UTC)
    return x.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _json_default(o: Any) -> Any:
    if isinstance(o, dt.datetime):
        return o.isoformat()
    if isinstance(o, bytes):
        return f"<{len(o)} bytes>"
    return repr(o)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=_json_default, indent=None))


def _where(args) -> str:
    return resolve_journal(args.journal)


def _engine(args, create: bool = False) -> ExecutionEngine:
    """An engine on the journal; without ``create``, a missing journal file is an error."""
    where = _where(args)
    if not create and "://" not in where and where not in ("memory", ":memory:"):
        path = Path(where).expanduser().resolve()
        if not path.exists():
            raise CliError(f"no journal at {path}: create it with `contd init`, or give "
                           "--journal PATH / CONTD_JOURNAL", EXIT_NOT_FOUND)
    engine = ExecutionEngine(where)
    ExecutionEngine.set_instance(engine)
    return engine


def _duckdb(engine: ExecutionEngine, what: str) -> DuckDBStore:
    if not isinstance(engine.store, DuckDBStore):
        raise CliError(f"`contd {what}` works on DuckDB journals; this one is "
                       f"{engine.store.backend}")
    return engine.store


def _arrow(result):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
        return fetch()


# -- init -------------------------------------------------------------------------------------
def cmd_init(args) -> int:
    where = _where(args)
    if args.backend == "postgres":
        if not where.startswith(("postgresql://", "postgres://")):
            raise CliError("--backend postgres needs a server: give --journal "
                           "postgresql://user:pass@host:5432/db or set DATABASE_URL",
                           EXIT_USAGE)
        store = open_store(where)
        version = store.schema_version()
        print(f"Journal ready: {store.describe()} (PostgreSQL, schema version {version})")
        return EXIT_OK
    if "://" in where:
        raise CliError(f"journal {where.split('@')[-1]!r} is not a file path; give "
                       "--journal PATH for the DuckDB journal", EXIT_USAGE)
    if args.backend == "sqlite":
        print("contd_nb has no SQLite backend: DuckDB is its embedded default (one local "
              "file, no server), which is what \"for development, use SQLite\" means here. "
              "Creating the DuckDB journal.")
    path = Path(where).expanduser().resolve()
    existed = path.exists()
    store = open_store(str(path))
    version = store.schema_version()
    store.idle()
    verb = "Journal exists" if existed else "Created journal"
    print(f"{verb}: {path} (DuckDB, schema version {version})")
    if not existed and os.environ.get("CONTD_JOURNAL") != str(path) and args.journal:
        print(f"Use it with: export CONTD_JOURNAL={path}")
    return EXIT_OK


# -- run / resume -----------------------------------------------------------------------------
def _import_workflow(target: str):
    if ":" in target:
        module, _, qualname = target.partition(":")
    elif "." in target:
        module, _, qualname = target.rpartition(".")
    elif Path(f"{target}.py").is_file() or Path(target, "__init__.py").is_file():
        # the guide's `contd run my_workflow`: module my_workflow, function my_workflow
        module, qualname = target, target
    else:
        raise CliError(f"{target!r}: give MODULE:FUNCTION, e.g. pipeline:{target} for "
                       f"{target} defined in pipeline.py", EXIT_USAGE)
    if not module or not qualname:
        raise CliError(f"{target!r}: give MODULE:FUNCTION", EXIT_USAGE)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise CliError(f"cannot import module {module!r}: {e} (run contd from the folder "
                           "that holds it, or set PYTHONPATH)", EXIT_NOT_FOUND) from e
        raise
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise CliError(f"module {module!r} has no {qualname!r}", EXIT_NOT_FOUND) from e
    if getattr(obj, "__contd_workflow__", None) is None:
        raise CliError(f"{target} is not a workflow: decorate it with @workflow")
    return obj


def _parse_input(text: str | None) -> tuple[tuple, dict]:
    if text is None:
        return (), {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--input is not valid JSON: {e}", EXIT_USAGE) from e
    if isinstance(value, dict):
        return (), value
    if isinstance(value, list):
        return tuple(value), {}
    raise CliError("--input must be a JSON object (keyword arguments) or array (positional "
                   f"ones), not {type(value).__name__}", EXIT_USAGE)


def _report_result(wid: str, result: Any) -> None:
    print(json.dumps(result, default=_json_default))
    print(f"workflow {wid} completed", file=sys.stderr)


def _run_guarded(wid: str, fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ContdError:
        raise
    except Exception as e:
        raise CliError(f"workflow {wid} failed: {type(e).__name__}: {e}; fix the cause and "
                       f"continue it with `contd resume {wid}`") from e


def cmd_run(args) -> int:
    fn = _import_workflow(args.target)
    a, kw = _parse_input(args.input)
    engine = _engine(args, create=True)
    try:
        wid = resolve_workflow_id(args.workflow_id, fn.__contd_workflow__)
        print(f"running {args.target} as workflow {wid}", file=sys.stderr)
        result = _run_guarded(wid, Client(engine=engine).run, fn, *a, workflow_id=wid, **kw)
        _report_result(wid, result)
    finally:
        engine.close()
    return EXIT_OK


def cmd_resume(args) -> int:
    validate_workflow_id(args.workflow_id)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    engine = _engine(args)
    try:
        wid = args.workflow_id
        result = _run_guarded(wid, Client(engine=engine).resume, wid)
        _report_result(wid, result)
    finally:
        engine.close()
    return EXIT_OK


# -- status / list ----------------------------------------------------------------------------
def _status_dict(s) -> dict:
    return {"workflow_id": s.workflow_id, "name": s.name, "status": s.status,
            "steps_completed": s.steps_completed, "created_at": s.created_at,
            "updated_at": s.updated_at, "lease_owner": s.lease_owner,
            "lease_expires_at": s.lease_expires_at, "error": s.error}


def cmd_status(args) -> int:
    engine = _engine(args)
    client = Client(engine=engine)
    if args.workflow_id:
        s = client.status(validate_workflow_id(args.workflow_id))
        if args.json:
            _print_json(_status_dict(s))
            return EXIT_OK
        lease = (f"held by {s.lease_owner} until {_ts(s.lease_expires_at)}"
                 if s.lease_owner else "not held")
        rows = [("workflow", s.workflow_id), ("name", s.name), ("status", s.status),
                ("steps", f"{s.steps_completed} completed"), ("created", _ts(s.created_at)),
                ("updated", _ts(s.updated_at)), ("lease", lease)]
        if s.error:
            rows.append(("error", s.error))
        for k, v in rows:
            print(f"{k:<9} {v}")
        if s.status == "interrupted":
            print(f"\nresume it with: contd resume {s.workflow_id}")
        return EXIT_OK
    summaries = client.list()
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.status] = counts.get(s.status, 0) + 1
    now = time.time()
    leases = engine.store.list_leases()
    held = sum(1 for r in leases if r.owner_id is not None and r.expires_at > now)
    out = {"journal": engine.store.describe(), "backend": engine.store.backend,
           "schema_version": engine.store.schema_version(), "workflows": len(summaries),
           "by_status": counts, "leases_held": held}
    if args.json:
        _print_json(out)
        return EXIT_OK
    print(f"journal   {out['journal']} ({out['backend']}, schema {out['schema_version']})")
    detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"workflows {len(summaries)}" + (f" ({detail})" if detail else ""))
    print(f"leases    {held} held")
    return EXIT_OK


def cmd_list(args) -> int:
    engine = _engine(args)
    summaries = Client(engine=engine).list(args.status)
    if args.json:
        _print_json([_status_dict(s) for s in summaries])
        return EXIT_OK
    if not summaries:
        print("no workflows" + (f" with status {args.status}" if args.status else ""))
        return EXIT_OK
    _table([[s.workflow_id, s.name, s.status, _ts(s.created_at), _ts(s.updated_at)]
            for s in summaries], ["ID", "NAME", "STATUS", "CREATED", "UPDATED"])
    return EXIT_OK


# -- events -----------------------------------------------------------------------------------
def _event_dict(ev) -> dict:
    info = {k: v for k, v in (ev.info or {}).items() if k != "traceback"}
    return {"seq": ev.seq, "time": _ts(ev.ended_at), "kind": ev.kind,
            "step_number": ev.step_number, "step_name": ev.step_name, "attempt": ev.attempt,
            "duration_ms": None if ev.duration_ms is None else round(ev.duration_ms, 3),
            "info": info}


def _event_detail(ev) -> str:
    info = ev.info or {}
    if ev.kind == "step_failed":
        msg = str(info.get("message", ""))
        msg = msg if len(msg) <= 80 else msg[:77] + "..."
        retry = "will retry" if info.get("will_retry") else "no retry"
        return f"{info.get('error_type')}: {msg} ({retry})"
    if ev.kind == "workflow_resumed":
        return (f"after step {info.get('steps_completed')}, "
                f"{info.get('events_replayed')} events replayed")
    if ev.duration_ms is not None:
        return f"{ev.duration_ms:.1f} ms"
    return ""


def _print_events(events, as_json: bool) -> None:
    for ev in events:
        if as_json:
            _print_json(_event_dict(ev))
        else:
            step = f"{ev.step_number} {ev.step_name}" if ev.step_number is not None else \
                (ev.step_name or "")
            att = f"#{ev.attempt}" if ev.attempt else ""
            print(f"{ev.seq:>5}  {_ts(ev.ended_at)}  {ev.kind:<18} {step:<24} {att:<4} "
                  f"{_event_detail(ev)}".rstrip())
    sys.stdout.flush()


def cmd_events(args) -> int:
    wid = validate_workflow_id(args.workflow_id)
    engine = _engine(args)
    if engine.store.get_workflow(wid) is None:
        raise WorkflowNotFound(wid, engine.store.describe())
    events = engine.journal.get_events(wid)
    _print_events(events, args.json)
    if not args.follow:
        return EXIT_OK
    last = events[-1].seq if events else 0
    ended = any(e.kind in ("workflow_completed", "workflow_failed", "workflow_cancelled")
                for e in events)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while not ended:
            rec = engine.store.get_workflow(wid)
            if rec is not None and rec.status == "cancelled":
                break
            engine.store.idle()  # let the executor have the file between polls
            if deadline is not None and time.monotonic() >= deadline:
                print(f"contd: stopped following {wid} after {args.timeout:g}s",
                      file=sys.stderr)
                return EXIT_OK
            time.sleep(max(args.interval, 0.01))
            new = engine.journal.get_events(wid, last)
            _print_events(new, args.json)
            if new:
                last = new[-1].seq
                ended = any(e.kind in ("workflow_completed", "workflow_failed",
                                       "workflow_cancelled") for e in new)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# -- leases -----------------------------------------------------------------------------------
def _lease_state(r, now: float) -> str:
    if r.owner_id is None:
        return "released"
    if r.expires_at <= now:
        return "expired"
    if owner_is_dead(r, HOST):
        return "owner gone"
    return "held"


def cmd_leases(args) -> int:
    engine = _engine(args)
    now = time.time()
    rows = engine.store.list_leases()
    if args.json:
        _print_json([{"workflow_id": r.workflow_id, "state": _lease_state(r, now),
                      "owner_id": r.owner_id, "token": r.token, "expires_at": _ts(r.expires_at),
                      "host": r.host, "pid": r.pid} for r in rows])
        return EXIT_OK
    if not rows:
        print("no leases")
        return EXIT_OK
    _table([[r.workflow_id, _lease_state(r, now), r.owner_id, r.token, _ts(r.expires_at),
             r.host, r.pid] for r in rows],
           ["WORKFLOW", "STATE", "OWNER", "TOKEN", "EXPIRES", "HOST", "PID"])
    return EXIT_OK


def _confirm(question: str) -> bool:
    print(question, end=" ", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except (OSError, ValueError):
        answer = ""
    if not answer:
        print("", file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def cmd_release(args) -> int:
    wid = validate_workflow_id(args.workflow_id)
    engine = _engine(args)
    lease = engine.store.get_lease(wid)
    if lease is None:
        if engine.store.get_workflow(wid) is None:
            raise WorkflowNotFound(wid, engine.store.describe())
        raise CliError(f"workflow {wid} has no lease", EXIT_NOT_FOUND)
    if lease.owner_id is None:
        print(f"the lease of {wid} is not held (released already); nothing to do")
        return EXIT_OK
    if not args.yes:
        engine.store.idle()  # do not keep the journal while waiting for an answer
        if not _confirm(f"Release lease of {wid} held by {lease.owner_id}? [y/N]"):
            raise CliError(f"lease of {wid} not released (answer yes, or pass --yes)")
    before = engine.lease_manager.force_release(wid)
    owner = before.owner_id if before else lease.owner_id
    print(f"released the lease of {wid} (was held by {owner}); that executor is fenced out: "
          "its next journal write is refused")
    return EXIT_OK


def cmd_gc(args) -> int:
    from .cli_journal import cmd_gc as gc

    return gc(args)


def cmd_export(args) -> int:
    from .cli_journal import cmd_export as export

    return export(args)


def cmd_import(args) -> int:
    from .cli_journal import cmd_import as import_

    return import_(args)


# -- worker -----------------------------------------------------------------------------------
def cmd_worker(args) -> int:
    from .sdk.worker import Worker

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    engine = _engine(args)
    worker = Worker(engine, poll_interval=args.poll)
    print(f"contd worker {engine.executor_id} on {engine.store.describe()}", file=sys.stderr,
          flush=True)
    if args.once:
        resumed = worker.run_once()
        engine.close()
    else:
        resumed = len(worker.run_forever(max_seconds=args.max_seconds).resumed)
    print(f"resumed {resumed} workflow(s); {len(worker.stats.failed)} failed", flush=True)
    return EXIT_OK if not worker.stats.failed else EXIT_ERROR


# -- metrics / health -------------------------------------------------------------------------
def cmd_metrics(args) -> int:
    from .observability import setup_observability
    from .observability.metrics import register_journal_collector

    engine = _engine(args)
    server = setup_observability(metrics_port=args.port, host=args.host)
    register_journal_collector(engine.store)
    engine.store.idle()
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"serving contd_nb metrics on {server.url} (journal {engine.store.describe()}); "
          "stop with Ctrl-C or SIGTERM", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    print("metrics server stopped", file=sys.stderr)
    return EXIT_OK


def cmd_health(args) -> int:
    from .observability.health import HealthChecker, overall

    results = HealthChecker(_where(args)).check_all()
    status = overall(results)
    if args.json:
        _print_json({"status": status, **results})
    else:
        for name, r in results.items():
            details = ", ".join(f"{k}={v}" for k, v in r["details"].items()
                                if k not in ("stale_leases",))
            print(f"{name:<9} {r['status']:<9} {details}")
    return EXIT_ERROR if status == "down" else EXIT_OK
