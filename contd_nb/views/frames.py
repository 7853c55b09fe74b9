"""pandas views of a journal: what workflows did, step by step, try by try, and how long their
restores took.

Every view is one SQL query that DuckDB runs over the journal file (filters, JSON fields,
grouping and time conversion happen in the database; no Python loop over rows), read through
the store's gate session: the file is opened for the query and released as soon as the process
is idle again, so a kernel running a workflow on the same journal goes on.

Columns and dtypes are stable (each function's docstring lists them): timestamps are
``datetime64[us, UTC]``, statuses and kinds are ``category`` (fixed categories first, in the
order listed), text is ``string`` (``pd.StringDtype()``, missing = ``<NA>``), counts and ids are
``Int64`` (nullable), durations are ``float64`` with the unit in the column name
(``duration_ms``, ``delay_s``), flags are ``boolean`` (nullable).

Filters: ``workflow_id`` (one id or a list), ``status`` (one value or a list; what it means is
given per view), ``since`` / ``until`` (a ``datetime``, a pandas ``Timestamp``, an ISO string,
epoch seconds, or a ``timedelta`` meaning "that long ago"; naive datetimes are UTC).

Journal: ``journal=`` (a DuckDB file path) or ``engine=``; default the journal of the current
notebook run if there is one, else ``ExecutionEngine.get_instance()``'s.

Portability: the SQL keeps to what PostgreSQL also has (CTEs, ``FILTER (WHERE ...)``,
``CASE``, ``to_timestamp``, epoch arithmetic on the stored DOUBLE columns); the few DuckDB
spellings go through ``_DuckDBDialect`` (JSON field access, "value at the latest seq"), so a
PostgreSQL backend needs only its own dialect object.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..core.engine import ExecutionEngine
from .detail import event_detail
from .query import (
    ATTEMPT_OUTCOMES,
    EVENT_KINDS,
    LEASE_STATES,
    RESTORE_PURPOSES,
    UTC_TS,
    WORKFLOW_KINDS,
    WORKFLOW_STATUSES,
    D,
    _event_fields,
    _info_fields,
    _query,
    _store,
    _ts,
    _typed,
    _Where,
)
from .steps_frame import steps

__all__ = ["EVENT_KINDS", "WORKFLOW_STATUSES", "attempts", "event_detail", "events", "leases",
           "recovery", "restores", "snapshots", "steps", "workflows"]


# -- views ----------------------------------------------------------------------------------------
def workflows(workflow_id: str | list[str] | None = None, *,
              status: str | list[str] | None = None, since: Any = None, until: Any = None,
              journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """One row per workflow (Python ``@workflow`` runs and notebook runs), oldest first.

    ``status`` filters on the workflow status; ``since``/``until`` keep workflows active in
    that window (created before ``until``, last updated after ``since``).

    ============== ===================== =====================================================
    column         dtype                 meaning
    ============== ===================== =====================================================
    workflow_id    string                the workflow id (a notebook run's NAME)
    name           string                workflow name
    kind           category              python | notebook
    function       string                'module:qualname' or 'notebook:NAME'
    status         category              running | completed | failed | cancelled
    created_at     datetime64[us, UTC]   when it was first started
    updated_at     datetime64[us, UTC]   last status change
    duration_s     float64               updated_at - created_at, seconds
    events         Int64                 journal events written
    steps_done     Int64                 distinct steps with a completion
    failures       Int64                 failed attempts (step_failed events)
    resumes        Int64                 workflow_resumed events (restarts after a stop)
    error_type     string                the workflow's error type (failed workflows)
    error_message  string                its message
    lease_owner    string                executor holding the lease now (<NA>: none)
    ============== ===================== =====================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("w.workflow_id", workflow_id, "workflow_id")
    w.isin("w.status", status, "status")
    w.window("w.created_at", "w.updated_at", since, until)
    ev_where = _Where()
    ev_where.isin("workflow_id", workflow_id, "workflow_id")
    sql = f"""
        WITH ev AS (
            SELECT workflow_id, count(*) AS events,
                   count(*) FILTER (WHERE kind = 'step_failed') AS failures,
                   count(*) FILTER (WHERE kind = 'workflow_resumed') AS resumes,
                   count(DISTINCT step_number) FILTER (WHERE kind = 'step_completed')
                       AS done_numbers,
                   count(DISTINCT step_name) FILTER (WHERE kind = 'step_completed')
                       AS done_names
            FROM events{ev_where.sql()} GROUP BY workflow_id)
        SELECT w.workflow_id, w.name,
               CASE WHEN w.function LIKE 'notebook:%' THEN 'notebook' ELSE 'python' END
                   AS kind,
               w.function, w.status, {_ts('w.created_at')} AS created_at,
               {_ts('w.updated_at')} AS updated_at, w.updated_at - w.created_at AS duration_s,
               coalesce(ev.events, 0) AS events,
               coalesce(CASE WHEN w.function LIKE 'notebook:%' THEN ev.done_names
                             ELSE ev.done_numbers END, 0) AS steps_done,
               coalesce(ev.failures, 0) AS failures, coalesce(ev.resumes, 0) AS resumes,
               coalesce({D.json('w.error', 'error_type')}, {D.json('w.error', 'type')})
                   AS error_type,
               {D.json('w.error', 'message')} AS error_message,
               l.owner_id AS lease_owner
        FROM workflows w
        LEFT JOIN ev ON ev.workflow_id = w.workflow_id
        LEFT JOIN leases l ON l.workflow_id = w.workflow_id
        {w.sql()}
        ORDER BY w.created_at, w.workflow_id"""
    df = _query(store, sql, ev_where.params + w.params)
    return _typed(df, {
        "workflow_id": "string", "name": "string", "kind": WORKFLOW_KINDS,
        "function": "string", "status": WORKFLOW_STATUSES, "created_at": UTC_TS,
        "updated_at": UTC_TS, "duration_s": "float64", "events": "Int64",
        "steps_done": "Int64", "failures": "Int64", "resumes": "Int64",
        "error_type": "string", "error_message": "string", "lease_owner": "string"})


EVENT_SCHEMA = {
    "workflow_id": "string", "seq": "Int64", "kind": EVENT_KINDS, "step_number": "Int64",
    "step_name": "string", "attempt": "Int64", "started_at": UTC_TS, "ended_at": UTC_TS,
    "duration_ms": "float64", "cell": "boolean", "error_type": "string", "message": "string",
    "will_retry": "boolean", "delay_s": "float64", "encoding": "string",
    "payload_bytes": "Int64", "lease_token": "Int64", "info": "string"}


def events(workflow_id: str | list[str] | None = None, *, kind: str | list[str] | None = None,
           step: str | list[str] | None = None, since: Any = None, until: Any = None,
           journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """The journal's events in order (by workflow, then seq).

    ``kind`` filters on the event kind, ``step`` on the step name, ``since``/``until`` on the
    time the event was written (``ended_at``).

    ============== ===================== =====================================================
    column         dtype                 meaning
    ============== ===================== =====================================================
    workflow_id    string                workflow
    seq            Int64                 position in the workflow's journal (1, 2, ...)
    kind           category              workflow_started | workflow_resumed | step_started |
                                         step_completed | step_failed | workflow_completed |
                                         workflow_failed | workflow_cancelled
    step_number    Int64                 step position (Python steps; a cell's completion
                                         count); <NA> for workflow events
    step_name      string                step or cell name
    attempt        Int64                 attempt number of a step event
    started_at     datetime64[us, UTC]   when the attempt began (step events)
    ended_at       datetime64[us, UTC]   when the event was written
    duration_ms    float64               ended_at - started_at (NaN without a start)
    cell           boolean               a notebook cell step
    error_type     string                step_failed: the exception type
    message        string                step_failed: its message
    will_retry     boolean               step_failed: another attempt follows
    delay_s        float64               step_failed: wait before that attempt
    encoding       string                payload encoding (json, arrow, pickle, ...)
    payload_bytes  Int64                 payload size (<NA>: none)
    lease_token    Int64                 fencing token of the writer
    info           string                the event's info (JSON text)
    ============== ===================== =====================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("e.workflow_id", workflow_id, "workflow_id")
    w.isin("e.kind", kind, "kind", EVENT_KINDS)
    w.isin("e.step_name", step, "step")
    if since is not None or until is not None:
        ended = f"CAST({D.json('e.meta', 'ended_at')} AS DOUBLE)"
        w.window(ended, ended, since, until)
    sql = f"""
        WITH ev AS (
            SELECT {_event_fields()}, {D.json('e.meta', 'enc')} AS encoding,
                   CAST({D.json('e.meta', 'token')} AS BIGINT) AS lease_token,
                   octet_length(e.payload) AS payload_bytes
            FROM events e{w.sql()})
        SELECT workflow_id, seq, kind, step_number, step_name, attempt,
               {_ts('started_s')} AS started_at, {_ts('ended_s')} AS ended_at,
               (ended_s - started_s) * 1000 AS duration_ms, {_info_fields()},
               encoding, payload_bytes, lease_token, info
        FROM ev ORDER BY workflow_id, seq"""
    return _typed(_query(store, sql, w.params), EVENT_SCHEMA)


def attempts(workflow_id: str | list[str] | None = None, *, step: str | list[str] | None = None,
             status: str | list[str] | None = None, since: Any = None, until: Any = None,
             journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """Every try of every step, with its error: one row per step_failed or step_completed
    event, in journal order.

    ``step`` filters on the step name, ``status`` on the outcome, ``since``/``until`` on the
    try's time span.

    ============== ===================== =====================================================
    column         dtype                 meaning
    ============== ===================== =====================================================
    workflow_id    string                workflow
    step_number    Int64                 step position (see ``events``)
    step_name      string                step or cell name
    cell           boolean               a notebook cell
    attempt        Int64                 attempt number
    outcome        category              completed | failed
    started_at     datetime64[us, UTC]   the try began
    ended_at       datetime64[us, UTC]   it ended (completion or failure written)
    duration_ms    float64               ended_at - started_at
    error_type     string                failed: the exception type
    message        string                failed: its message
    timeout        boolean               failed because the step timed out
    will_retry     boolean               failed: another attempt follows
    delay_s        float64               failed: wait before it
    seq            Int64                 the event's seq
    ============== ===================== =====================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("e.workflow_id", workflow_id, "workflow_id")
    w.isin("e.step_name", step, "step")
    outer = _Where()
    outer.isin("outcome", status, "status", ATTEMPT_OUTCOMES)
    outer.window("coalesce(started_s, ended_s)", "ended_s", since, until)
    sql = f"""
        WITH ev AS (
            SELECT {_event_fields()} FROM events e
            WHERE e.kind IN ('step_completed', 'step_failed'){w.sql('AND')}),
        t AS (
            SELECT *, {_info_fields()},
                   CASE WHEN kind = 'step_completed' THEN 'completed' ELSE 'failed' END
                       AS outcome,
                   CASE WHEN kind = 'step_failed' THEN
                       coalesce({D.json('info', 'timeout')} = 'true', false)
                       OR coalesce({D.json('info', 'error_type')} = 'StepTimeout', false)
                   END AS timeout
            FROM ev)
        SELECT workflow_id, step_number, step_name, cell, attempt, outcome,
               {_ts('started_s')} AS started_at, {_ts('ended_s')} AS ended_at,
               (ended_s - started_s) * 1000 AS duration_ms, error_type, message, timeout,
               will_retry, delay_s, seq
        FROM t{outer.sql()}
        ORDER BY workflow_id, seq"""
    return _typed(_query(store, sql, w.params + outer.params), {
        "workflow_id": "string", "step_number": "Int64", "step_name": "string",
        "cell": "boolean", "attempt": "Int64", "outcome": ATTEMPT_OUTCOMES,
        "started_at": UTC_TS, "ended_at": UTC_TS, "duration_ms": "float64",
        "error_type": "string", "message": "string", "timeout": "boolean",
        "will_retry": "boolean", "delay_s": "float64", "seq": "Int64"})


def leases(workflow_id: str | list[str] | None = None, *, status: str | list[str] | None = None,
           journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """One row per lease (every workflow that was ever run has one), by workflow id.

    ``status`` filters on ``state``.

    ============== ===================== =====================================================
    column         dtype                 meaning
    ============== ===================== =====================================================
    workflow_id    string                workflow
    state          category              held | expired | released
    owner_id       string                executor holding it (<NA>: released)
    host           string                the holder's host
    pid            Int64                 the holder's process id
    token          Int64                 fencing token (grows on every take-over)
    acquired_at    datetime64[us, UTC]   taken
    renewed_at     datetime64[us, UTC]   last heartbeat
    expires_at     datetime64[us, UTC]   expires unless renewed
    expires_in_s   float64               seconds left (negative: expired; NaN: released)
    ============== ===================== =====================================================
    """
    store = _store(journal, engine)
    now = time.time()
    w = _Where()
    w.isin("workflow_id", workflow_id, "workflow_id")
    outer = _Where()
    outer.isin("state", status, "status", LEASE_STATES)
    sql = f"""
        WITH l AS (
            SELECT *, CASE WHEN owner_id IS NULL THEN 'released'
                           WHEN expires_at <= ? THEN 'expired' ELSE 'held' END AS state
            FROM leases{w.sql()})
        SELECT workflow_id, state, owner_id, host, pid, token,
               {_ts('acquired_at')} AS acquired_at, {_ts('renewed_at')} AS renewed_at,
               {_ts('expires_at')} AS expires_at,
               CASE WHEN owner_id IS NULL THEN NULL ELSE expires_at - ? END AS expires_in_s
        FROM l{outer.sql()}
        ORDER BY workflow_id"""
    return _typed(_query(store, sql, [now] + w.params + [now] + outer.params), {
        "workflow_id": "string", "state": LEASE_STATES, "owner_id": "string",
        "host": "string", "pid": "Int64", "token": "Int64", "acquired_at": UTC_TS,
        "renewed_at": UTC_TS, "expires_at": UTC_TS, "expires_in_s": "float64"})


def restores(workflow_id: str | list[str] | None = None, *,
             status: str | list[str] | None = None, since: Any = None, until: Any = None,
             journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """Replay timings: one row per restore of a workflow's state (a resume after a stop, or an
    inspection), oldest first. ``status`` filters on ``purpose``; ``since``/``until`` on
    ``started_at``.

    =============== ===================== ====================================================
    column          dtype                 meaning
    =============== ===================== ====================================================
    workflow_id     string                workflow
    started_at      datetime64[us, UTC]   the restore began
    duration_ms     float64               how long reading and replaying took
    events_replayed Int64                 events folded after the snapshot (all without one)
    snapshot_step   Int64                 the snapshot's step (<NA>: none used)
    from_snapshot   boolean               a snapshot was used
    purpose         category              resume | inspect
    owner_id        string                the executor that restored it
    =============== ===================== ====================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("workflow_id", workflow_id, "workflow_id")
    w.isin("purpose", status, "status")
    w.window("started_at", "started_at", since, until)
    sql = f"""
        SELECT workflow_id, {_ts('started_at')} AS started_at, duration_ms, events_replayed,
               snapshot_step, snapshot_step IS NOT NULL AS from_snapshot, purpose, owner_id
        FROM restores{w.sql()}
        ORDER BY started_at, workflow_id"""
    return _typed(_query(store, sql, w.params), {
        "workflow_id": "string", "started_at": UTC_TS, "duration_ms": "float64",
        "events_replayed": "Int64", "snapshot_step": "Int64", "from_snapshot": "boolean",
        "purpose": RESTORE_PURPOSES, "owner_id": "string"})


def snapshots(workflow_id: str | list[str] | None = None, *, since: Any = None,
              until: Any = None, journal: str | os.PathLike | None = None,
              engine: ExecutionEngine | None = None):
    """Snapshots taken (every ``snapshot_interval`` steps), oldest first.

    ============== ===================== =====================================================
    column         dtype                 meaning
    ============== ===================== =====================================================
    workflow_id    string                workflow
    step_number    Int64                 last step included
    seq            Int64                 last event included
    created_at     datetime64[us, UTC]   written
    size_bytes     Int64                 stored size
    ============== ===================== =====================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("workflow_id", workflow_id, "workflow_id")
    w.window("created_at", "created_at", since, until)
    sql = f"""
        SELECT workflow_id, step_number, seq, {_ts('created_at')} AS created_at,
               octet_length(payload) AS size_bytes
        FROM snapshots{w.sql()} ORDER BY created_at, workflow_id"""
    return _typed(_query(store, sql, w.params), {
        "workflow_id": "string", "step_number": "Int64", "seq": "Int64",
        "created_at": UTC_TS, "size_bytes": "Int64"})


def recovery(workflow_id: str | list[str] | None = None, *,
             journal: str | os.PathLike | None = None, engine: ExecutionEngine | None = None):
    """Recovery per workflow: restores, their timings and snapshots taken. One row per
    workflow that has restores or snapshots, by workflow id.

    ==================== =================== ==============================================
    column               dtype               meaning
    ==================== =================== ==============================================
    workflow_id          string              workflow
    restores             Int64               restores (resume + inspect)
    resumes              Int64               restores to resume it
    mean_restore_ms      float64             mean restore duration
    max_restore_ms       float64             longest restore
    mean_events_replayed float64             mean events replayed per restore
    max_events_replayed  Int64               most events replayed by one restore
    snapshots            Int64               snapshots taken
    last_snapshot_step   Int64               step of the latest snapshot
    ==================== =================== ==============================================
    """
    store = _store(journal, engine)
    wr, ws = _Where(), _Where()
    wr.isin("workflow_id", workflow_id, "workflow_id")
    ws.isin("workflow_id", workflow_id, "workflow_id")
    sql = f"""
        WITH r AS (
            SELECT workflow_id, count(*) AS restores,
                   count(*) FILTER (WHERE purpose = 'resume') AS resumes,
                   avg(duration_ms) AS mean_restore_ms, max(duration_ms) AS max_restore_ms,
                   avg(events_replayed) AS mean_events_replayed,
                   max(events_replayed) AS max_events_replayed
            FROM restores{wr.sql()} GROUP BY workflow_id),
        s AS (
            SELECT workflow_id, count(*) AS snapshots, max(step_number) AS last_snapshot_step
            FROM snapshots{ws.sql()} GROUP BY workflow_id)
        SELECT coalesce(r.workflow_id, s.workflow_id) AS workflow_id,
               coalesce(r.restores, 0) AS restores, coalesce(r.resumes, 0) AS resumes,
               r.mean_restore_ms, r.max_restore_ms, r.mean_events_replayed,
               r.max_events_replayed, coalesce(s.snapshots, 0) AS snapshots,
               s.last_snapshot_step
        FROM r FULL OUTER JOIN s ON r.workflow_id = s.workflow_id
        ORDER BY 1"""
    return _typed(_query(store, sql, wr.params + ws.params), {
        "workflow_id": "string", "restores": "Int64", "resumes": "Int64",
        "mean_restore_ms": "float64", "max_restore_ms": "float64",
        "mean_events_replayed": "float64", "max_events_replayed": "Int64",
        "snapshots": "Int64", "last_snapshot_step": "Int64"})


