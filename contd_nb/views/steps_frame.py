"""``steps()``: one row per step, computed by the database.

Most Python steps are a single ``step_completed`` event: their rows come straight from that
event; only steps with failures, starts or notebook cells are grouped. A journal where one
Python step completed twice (not written by this engine) falls back to grouping everything.
"""

from __future__ import annotations

import os
from typing import Any

from ..core.engine import ExecutionEngine
from .query import (
    STEP_STATUSES,
    UTC_TS,
    D,
    _epoch,
    _event_fields,
    _info_fields,
    _query,
    _query_arrow,
    _store,
    _ts,
    _typed,
    _values,
    _Where,
)

__all__ = ["steps"]


_STEP_KINDS = "('step_started', 'step_completed', 'step_failed')"
_TRIES = "kind IN ('step_completed', 'step_failed')"


def steps(workflow_id: str | list[str] | None = None, *, status: str | list[str] | None = None,
          since: Any = None, until: Any = None, journal: str | os.PathLike | None = None,
          engine: ExecutionEngine | None = None):
    """One row per step: a Python step is (workflow, step_number, name); a notebook cell is
    (workflow, name), however often it ran (``runs``). Ordered by workflow, then first event.

    ``status`` filters on the step status; ``since``/``until`` keep steps with activity in
    that window.

    ================== =================== ==================================================
    column             dtype               meaning
    ================== =================== ==================================================
    workflow_id        string              workflow
    step_number        Int64               Python: position; cell: completion count at its
                                           last completion
    step_name          string              step or cell name
    cell               boolean             a notebook cell
    status             category            completed | failed | pending (the last event:
                                           completion, failure with no retry, or a start or
                                           a failure with a retry to come)
    attempts           Int64               journaled tries (failed + completed)
    failures           Int64               failed tries
    runs               Int64               completions (a cell re-run completes again)
    last_attempt       Int64               the last try's attempt number (counts tries of
                                           executions that died, too)
    started_at         datetime64[us, UTC] first try began
    completed_at       datetime64[us, UTC] last completion (NaT: none)
    duration_ms        float64             the last completed try's duration
    total_duration_ms  float64             all tries' durations added up
    last_error_type    string              the last failure's exception type
    last_error_message string              its message
    first_seq          Int64               first event of the step
    last_seq           Int64               last event of the step
    ================== =================== ==================================================
    """
    store = _store(journal, engine)
    w = _Where()
    w.isin("e.workflow_id", workflow_id, "workflow_id")
    statuses = None if status is None else _values(status, "status", STEP_STATUSES)
    lo = None if since is None else _epoch(since, "since")
    hi = None if until is None else _epoch(until, "until")
    table = _steps_checked(_query_arrow(store, _steps_split_sql(w.sql("AND")), w.params))
    if table is None:  # a Python step completed twice: only the full grouping is exact
        outer = _Where()
        if statuses is not None:
            outer.add(f"status IN ({', '.join('?' * len(statuses))})", *statuses)
        if lo is not None:
            outer.add("last_s >= ?", lo)
        if hi is not None:
            outer.add("first_s <= ?", hi)
        sql = f"""
            WITH ev AS (
                SELECT {_event_fields()} FROM events e
                WHERE e.kind IN {_STEP_KINDS}{w.sql('AND')}),
            {_steps_grouped()}
            SELECT workflow_id, step_number, step_name, cell, status, attempts, failures, runs,
                   last_attempt, {_ts('first_s')} AS started_at,
                   {_ts('completed_s')} AS completed_at, duration_ms, total_duration_ms,
                   last_error_type, last_error_message, first_seq, last_seq
            FROM r{outer.sql()}
            ORDER BY workflow_id, first_seq"""
        return _typed(_query(store, sql, w.params + outer.params), STEPS_SCHEMA)
    return _steps_frame(table, statuses, lo, hi)


STEPS_SCHEMA = {
    "workflow_id": "string", "step_number": "Int64", "step_name": "string", "cell": "boolean",
    "status": STEP_STATUSES, "attempts": "Int64", "failures": "Int64", "runs": "Int64",
    "last_attempt": "Int64", "started_at": UTC_TS, "completed_at": UTC_TS,
    "duration_ms": "float64", "total_duration_ms": "float64", "last_error_type": "string",
    "last_error_message": "string", "first_seq": "Int64", "last_seq": "Int64"}


def _steps_grouped() -> str:
    """CTEs ``t``, ``k``, ``s``, ``r``: one row per step (``r``, with its ``status``) from the
    step events in ``ev`` (columns of ``_event_fields``). The general form of ``steps()``."""
    done = "kind = 'step_completed'"
    failed = "kind = 'step_failed'"
    return f"""t AS (
            SELECT *, {_info_fields()}, (ended_s - started_s) * 1000 AS ms FROM ev),
        k AS (
            SELECT *, CASE WHEN cell THEN NULL ELSE step_number END AS key_number FROM t),
        s AS (
            SELECT workflow_id, key_number, step_name, cell,
                   coalesce(key_number, {D.last('step_number')} FILTER (WHERE {done}))
                       AS step_number,
                   {D.last('kind')} AS last_kind, {D.last('will_retry')} AS last_will_retry,
                   count(*) FILTER (WHERE {_TRIES}) AS attempts,
                   count(*) FILTER (WHERE {failed}) AS failures,
                   count(*) FILTER (WHERE {done}) AS runs,
                   {D.last('attempt')} FILTER (WHERE {_TRIES}) AS last_attempt,
                   min(coalesce(started_s, ended_s)) AS first_s, max(ended_s) AS last_s,
                   max(ended_s) FILTER (WHERE {done}) AS completed_s,
                   {D.last('ms')} FILTER (WHERE {done}) AS duration_ms,
                   sum(ms) FILTER (WHERE {_TRIES}) AS total_duration_ms,
                   {D.last('error_type')} FILTER (WHERE {failed}) AS last_error_type,
                   {D.last('message')} FILTER (WHERE {failed}) AS last_error_message,
                   min(seq) AS first_seq, max(seq) AS last_seq
            FROM k GROUP BY workflow_id, key_number, step_name, cell),
        r AS (
            SELECT *, CASE WHEN last_kind = 'step_completed' THEN 'completed'
                           WHEN last_kind = 'step_failed' AND NOT coalesce(last_will_retry,
                                                                           false)
                               THEN 'failed'
                           ELSE 'pending' END AS status FROM s)"""


# A step event is "plain" when it is a Python step's completion whose meta cannot make it a
# cell (the text has no "cell", nor a \u escape that could spell it).
_PLAIN = ("e.kind = 'step_completed' AND e.step_number IS NOT NULL AND e.step_name IS NOT NULL "
          f"AND NOT {D.contains('e.meta', 'cell')} AND NOT {D.contains('e.meta', chr(92) + 'u')}")
_TIMES = {"attempt": "BIGINT", "started_at": "DOUBLE", "ended_at": "DOUBLE"}
_FIELDS = {**_TIMES, "info": "VARCHAR"}


def _steps_split_sql(where: str) -> str:
    """steps() without grouping most events. A Python step completes once, so a step whose
    events are just one plain completion is that event (``one``): its row is computed from
    it directly. Only the other steps' events (failures, starts, cells, and whatever shares a
    key hash with them: ``rest``) go through the grouping. Each event's meta is parsed once.
    Unfiltered by status and time, and with a column ``single``: ``_steps_checked`` makes
    sure no two single rows are one step (then only the full grouping is exact)."""
    key = D.key_hash("e.workflow_id", "e.step_number", "e.step_name")
    codes = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(STEP_STATUSES))
    return f"""
        WITH steps_ev AS NOT MATERIALIZED (
            SELECT e.*, {key} AS h, {_PLAIN} AS plain
            FROM events e WHERE e.kind IN {_STEP_KINDS}{where}),
        mixed AS MATERIALIZED (SELECT h FROM steps_ev WHERE NOT plain),
        one AS (
            SELECT workflow_id, seq, step_number, step_name, {D.json_fields('meta', _TIMES)} AS m
            FROM steps_ev WHERE plain AND h NOT IN (SELECT h FROM mixed)),
        ev AS (
            SELECT workflow_id, seq, kind, step_number, step_name, m.attempt AS attempt,
                   m.started_at AS started_s, m.ended_at AS ended_s, m.info AS info
            FROM (SELECT *, {D.json_fields('meta', _FIELDS)} AS m FROM steps_ev
                  WHERE h IN (SELECT h FROM mixed))),  -- (every event that is not plain)
        {_steps_grouped()},
        u AS (
            SELECT workflow_id, step_number, step_name, false AS cell,
                   'completed' AS status, 1 AS attempts, 0 AS failures, 1 AS runs,
                   m.attempt AS last_attempt, coalesce(m.started_at, m.ended_at) AS first_s,
                   m.ended_at AS last_s, m.ended_at AS completed_s,
                   (m.ended_at - m.started_at) * 1000 AS duration_ms,
                   (m.ended_at - m.started_at) * 1000 AS total_duration_ms,
                   CAST(NULL AS VARCHAR) AS last_error_type,
                   CAST(NULL AS VARCHAR) AS last_error_message, seq AS first_seq,
                   seq AS last_seq, true AS single
            FROM one
            UNION ALL
            SELECT workflow_id, step_number, step_name, cell, status, attempts, failures, runs,
                   last_attempt, first_s, last_s, completed_s, duration_ms, total_duration_ms,
                   last_error_type, last_error_message, first_seq, last_seq, false AS single
            FROM r)
        SELECT workflow_id, CAST(step_number AS BIGINT) AS step_number, step_name, cell,
               CAST(CASE status {codes} END AS TINYINT) AS status,
               CAST(attempts AS BIGINT) AS attempts, CAST(failures AS BIGINT) AS failures,
               CAST(runs AS BIGINT) AS runs, CAST(last_attempt AS BIGINT) AS last_attempt,
               {_ts('first_s')} AS started_at, {_ts('completed_s')} AS completed_at,
               duration_ms, total_duration_ms, last_error_type, last_error_message,
               CAST(first_seq AS BIGINT) AS first_seq, CAST(last_seq AS BIGINT) AS last_seq,
               first_s, last_s, single
        FROM u ORDER BY workflow_id, first_seq"""


def _steps_checked(table):
    """The table, or None if two ``single`` rows may be one step (same workflow and step
    number; the engine never journals that: a Python step's numbers grow with seq)."""
    import pyarrow.compute as pc

    one = table.filter(table["single"])
    if one.num_rows < 2:
        return table
    wf = one["workflow_id"].combine_chunks()
    num = one["step_number"].combine_chunks()
    same = pc.equal(wf[1:], wf[:-1])
    if not pc.any(pc.and_(same, pc.less_equal(num[1:], num[:-1]))).as_py():
        return table  # numbers strictly grow within each workflow: no step twice
    keys = ["workflow_id", "step_number", "step_name"]
    distinct = one.select(keys).group_by(keys).aggregate([]).num_rows
    return table if distinct == one.num_rows else None


def _steps_frame(table, statuses: list[str] | None, lo: float | None, hi: float | None):
    """The Arrow result of ``_steps_split_sql`` -> the documented DataFrame (filters on the
    step's status and activity window applied here, as the SQL left them out)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    conds = []
    if statuses is not None:
        codes = pa.array([STEP_STATUSES.index(v) for v in statuses], pa.int8())
        conds.append(pc.is_in(table["status"], value_set=codes))
    if lo is not None:
        conds.append(pc.greater_equal(table["last_s"], lo))
    if hi is not None:
        conds.append(pc.less_equal(table["first_s"], hi))
    if conds:
        mask = conds[0]
        for c in conds[1:]:
            mask = pc.and_(mask, c)
        table = table.filter(mask)  # null (unknown) drops the row, as in SQL
    utc = pa.timestamp("us", tz="UTC")
    for col in ("started_at", "completed_at"):
        i = table.schema.get_field_index(col)
        table = table.set_column(i, col, table[col].cast(utc))
    table = table.select(list(STEPS_SCHEMA))
    mapping = {pa.string(): pd.StringDtype(), pa.large_string(): pd.StringDtype(),
               pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    df = table.to_pandas(types_mapper=mapping.get)
    df["status"] = pd.Categorical.from_codes(df["status"].to_numpy(), STEP_STATUSES)
    return df


