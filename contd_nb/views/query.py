"""The SQL side of the views: which journal, filters, typed columns, JSON fields.

Shared by ``frames`` (the views) and ``detail`` (one event in full). See ``frames`` for
the column conventions."""


from __future__ import annotations

import datetime as dt
import os
import sys
import time
from typing import Any

from ..core.engine import ExecutionEngine
from ..persistence.adapters import open_store, resolve_journal
from ..persistence.base import JournalStore
from ..sdk.errors import ConfigurationError

WORKFLOW_STATUSES = ["running", "completed", "failed", "cancelled"]
EVENT_KINDS = ["workflow_started", "workflow_enqueued", "workflow_resumed", "step_started",
               "step_completed", "step_failed", "workflow_completed", "workflow_failed",
               "workflow_cancelled"]
STEP_STATUSES = ["completed", "failed", "pending"]
ATTEMPT_OUTCOMES = ["completed", "failed"]
LEASE_STATES = ["held", "expired", "released"]
RESTORE_PURPOSES = ["resume", "inspect"]
WORKFLOW_KINDS = ["python", "notebook"]

UTC_TS = "datetime64[us, UTC]"


# -- SQL dialect ----------------------------------------------------------------------------------
class _DuckDBDialect:
    """The DuckDB spellings. PostgreSQL: ``(col::jsonb ->> 'key')``,
    ``strpos(col, 'text') > 0``, ``(array_agg(value ORDER BY seq DESC))[1]``,
    ``jsonb_to_record(col::jsonb) AS m(key type, ...)`` for several fields at once and
    ``md5(row(a, b)::text)`` for a key's hash."""

    @staticmethod
    def json(col: str, key: str) -> str:
        return f"json_extract_string({col}, '$.{key}')"

    @staticmethod
    def json_fields(col: str, fields: dict[str, str]) -> str:
        """A struct of several typed fields of a JSON object, parsed once (``m.key``)."""
        spec = ",".join(f'"{k}":"{t}"' for k, t in fields.items())
        return f"json_transform({col}, '{{{spec}}}')"

    @staticmethod
    def key_hash(*cols: str) -> str:
        """One value for a tuple of columns (equal tuples, equal values; collisions rare)."""
        return f"hash({', '.join(cols)})"

    @staticmethod
    def contains(col: str, text: str) -> str:
        return f"contains({col}, '{text}')"

    @staticmethod
    def last(value: str, order: str = "seq") -> str:
        return f"arg_max({value}, {order})"


D = _DuckDBDialect


# -- where the journal is -------------------------------------------------------------------------
def _store(journal: str | os.PathLike | JournalStore | None = None,
           engine: ExecutionEngine | None = None) -> JournalStore:
    if journal is not None and engine is not None:
        raise ConfigurationError("give journal= or engine=, not both")
    if engine is not None:
        store = engine.store
    elif journal is not None:
        if not isinstance(journal, JournalStore):
            where = resolve_journal(journal)
            if "://" not in where and where not in ("memory", ":memory:") \
                    and not os.path.exists(os.path.expanduser(where)):
                raise ConfigurationError(f"journal {where!r} does not exist")
        store = open_store(journal)
    else:
        session_mod = sys.modules.get("contd_nb.notebook.session")
        session = session_mod.NotebookSession.current if session_mod else None
        store = (session.engine if session is not None else ExecutionEngine.get_instance()).store
    if getattr(store, "backend", None) != "duckdb" or not hasattr(store, "query_df"):
        raise ConfigurationError(
            f"contd_nb.views need a DuckDB journal; this one is {store.describe()!r} "
            f"({getattr(store, 'backend', '?')} backend). Give journal='path/journal.duckdb' "
            "(views of a PostgreSQL journal are coming)")
    return store


def _query(store: JournalStore, sql: str, params: list) -> Any:
    return store.query_df(sql, params)  # type: ignore[attr-defined]


def _query_arrow(store: JournalStore, sql: str, params: list) -> Any:
    """The result as a ``pyarrow.Table`` (cheaper to fetch than a DataFrame)."""
    return store.query_df(sql, params, arrow=True)  # type: ignore[attr-defined]


# -- filters --------------------------------------------------------------------------------------
def _epoch(value: Any, what: str) -> float:
    """since/until -> epoch seconds."""
    import pandas as pd

    if isinstance(value, bool):
        raise ConfigurationError(f"{what}={value!r} is not a time")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.timedelta | pd.Timedelta):
        return time.time() - pd.Timedelta(value).total_seconds()
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(f"{what}={value!r} is not a time: give a datetime, an ISO "
                                 "string, epoch seconds or a timedelta") from e
    if ts is pd.NaT:
        raise ConfigurationError(f"{what}={value!r} is not a time")
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()


def _values(value: Any, what: str, allowed: list[str] | None = None) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ConfigurationError(f"{what}={value!r}: give a string or a list of strings")
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigurationError(f"{what}={bad[0]!r} is not one of {', '.join(allowed)}")
    return values


class _Where:
    """AND-ed conditions with their parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list = []

    def add(self, sql: str, *params) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    def isin(self, col: str, value: Any, what: str, allowed: list[str] | None = None) -> None:
        if value is None:
            return
        values = _values(value, what, allowed)
        self.add(f"{col} IN ({', '.join('?' * len(values))})", *values)

    def window(self, start_col: str, end_col: str, since: Any, until: Any) -> None:
        """Rows whose [start_col, end_col] interval overlaps [since, until]."""
        if since is not None:
            self.add(f"{end_col} >= ?", _epoch(since, "since"))
        if until is not None:
            self.add(f"{start_col} <= ?", _epoch(until, "until"))

    def sql(self, keyword: str = "WHERE") -> str:
        return f" {keyword} " + " AND ".join(self.parts) if self.parts else ""


# -- dtypes ---------------------------------------------------------------------------------------
def _typed(df, schema: dict[str, Any]):
    """Put the columns in the documented order with the documented dtypes (vectorized)."""
    import pandas as pd

    df = df[list(schema)]
    plain = {}
    for col, dtype in schema.items():
        if isinstance(dtype, list):  # a category with these categories first
            seen = df[col].dropna().unique()
            extra = sorted(str(v) for v in seen if v not in dtype)
            df[col] = pd.Categorical(df[col], categories=dtype + extra)
        elif dtype == "string":
            plain[col] = pd.StringDtype()
        else:
            plain[col] = dtype
    df = df.astype(plain)
    return df.reset_index(drop=True)


def _ts(expr: str) -> str:
    return f"to_timestamp({expr})"


# -- the common event projection ------------------------------------------------------------------
def _event_fields(alias: str = "e") -> str:
    m = f"{alias}.meta"
    return (f"{alias}.workflow_id, {alias}.seq, {alias}.kind, {alias}.step_number, "
            f"{alias}.step_name, "
            f"CAST({D.json(m, 'attempt')} AS BIGINT) AS attempt, "
            f"CAST({D.json(m, 'started_at')} AS DOUBLE) AS started_s, "
            f"CAST({D.json(m, 'ended_at')} AS DOUBLE) AS ended_s, "
            f"{D.json(m, 'info')} AS info")


_CELL_KEY = '"cell"'


def _info_fields(info: str = "info") -> str:
    """Fields of a step event's info. The info JSON is parsed only where it can hold them:
    errors on step_failed, and the cell flag where the text has it (most events are plain
    Python step completions: parsing every info would double the cost of ``steps()``)."""
    failed = "kind = 'step_failed'"
    return (f"CASE WHEN {failed} THEN {D.json(info, 'error_type')} END AS error_type, "
            f"CASE WHEN {failed} THEN {D.json(info, 'message')} END AS message, "
            f"CASE WHEN {failed} THEN CAST({D.json(info, 'will_retry')} AS BOOLEAN) END "
            "AS will_retry, "
            f"CASE WHEN {failed} THEN CAST({D.json(info, 'delay_s')} AS DOUBLE) END "
            "AS delay_s, "
            f"CASE WHEN {D.contains(info, _CELL_KEY)} "
            f"THEN coalesce({D.json(info, 'cell')} = 'true', false) ELSE false END AS cell")


