"""The journal on PostgreSQL: many processes on many machines, real concurrent executors.

``PostgresStore(url)`` keeps a psycopg 3 connection pool (autocommit connections whose
``search_path`` is the journal's schema). The tables and columns are persistence/schema.py's
(``bytea`` for payloads), created in their own schema (default ``contd``; ``?schema=NAME`` in the
URL or ``schema=`` picks another, so several journals share one database), versioned in
``contd_meta`` and migrated like the DuckDB journal.

Fencing: every write of an executor (an event with its blobs, a fenced status change, a
snapshot) is ONE statement whose first part locks the workflow's lease row ``FOR SHARE`` and
whose write happens only if the row still carries the writer's token. The lock is held until the
statement's commit, so a takeover (an UPDATE of that row) cannot commit in between: either the
write commits first and the takeover follows, or the takeover commits first and the write is
refused (LeaseLost). One statement also means no transaction ever stays open across a round
trip, so a frozen (SIGSTOP) client cannot hold the lease row locked.

Leases are row-level compare-and-set, one statement each (INSERT ... ON CONFLICT DO NOTHING,
UPDATE ... WHERE token = expected); under READ COMMITTED a concurrent UPDATE re-checks the
newest row version, so exactly one of several racers wins.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..sdk.errors import (
    ConfigurationError,
    JournalCorrupted,
    JournalSchemaTooNew,
    JournalUnavailable,
    LeaseLost,
)
from . import schema as sql_schema
from .base import (
    SCHEMA_VERSION,
    BlobRecord,
    EventRecord,
    JournalStore,
    LeaseRecord,
    RestoreRecord,
    SnapshotRecord,
    WorkflowRecord,
)
from .signing_key import key_for_user

__all__ = ["DEFAULT_SCHEMA", "PostgresStore", "parse_url"]

DEFAULT_SCHEMA = "contd"
INSTALL_HINT = "pip install 'contd_nb[postgres]'"

# PostgreSQL-only additions to the shared schema (reading one workflow must not scan all)
PG_INDEXES = [
    "CREATE INDEX IF NOT EXISTS events_workflow_seq ON events (workflow_id, seq)",
    "CREATE INDEX IF NOT EXISTS snapshots_workflow_seq ON snapshots (workflow_id, seq)",
]

_EVENT_COLS = "workflow_id, seq, kind, step_number, step_name, meta, payload"
_EVENT_VALUES = "%s::varchar, %s::bigint, %s::varchar, %s::integer, %s::varchar, %s::varchar, " \
                "%s::bytea"
# the lease row of one workflow, locked until the statement commits (see the module doc)
_FENCE = "fence AS (SELECT owner_id, token FROM leases WHERE workflow_id = %s FOR SHARE)"
_FENCE_OK = "EXISTS (SELECT 1 FROM fence WHERE owner_id IS NOT NULL AND token = %s)"
_FENCE_RESULT = "(SELECT owner_id FROM fence), (SELECT token FROM fence)"


def _import_psycopg():
    try:
        import psycopg
        import psycopg_pool
    except ImportError as e:
        raise ConfigurationError(
            f"the PostgreSQL journal needs psycopg 3 and psycopg_pool ({e.name} is missing)",
            hint=INSTALL_HINT) from e
    return psycopg, psycopg_pool


def parse_url(url: str, schema: str | None = None) -> tuple[str, str, dict]:
    """``(conninfo, schema, parts)``: the URL without ``schema=`` (what libpq gets), the
    journal's schema, and host/port/database/user for messages (never the password)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(f"{url.split('@')[-1]!r} is not a postgresql:// URL")
    split = urlsplit(url)
    query = parse_qsl(split.query, keep_blank_values=True)
    from_url = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    name = schema or (from_url[-1] if from_url else None) or DEFAULT_SCHEMA
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", name):
        raise ConfigurationError(
            f"schema={name!r} is not valid: a PostgreSQL identifier (letters, digits, _; at "
            "most 63 characters, not starting with a digit)")
    conninfo = urlunsplit((split.scheme, split.netloc, split.path, urlencode(rest), ""))
    params = dict(rest)
    parts = {
        "host": split.hostname or params.get("host") or os.environ.get("PGHOST") or "localhost",
        "port": split.port or params.get("port") or os.environ.get("PGPORT") or 5432,
        "database": unquote(split.path.lstrip("/")) or params.get("dbname")
        or os.environ.get("PGDATABASE") or (unquote(split.username) if split.username else None),
        "user": unquote(split.username) if split.username else None,
        "password": unquote(split.password) if split.password else None,
    }
    return conninfo, name, parts


def _public_url(parts: dict, schema: str, scheme: str = "postgresql") -> str:
    user = f"{quote(parts['user'], safe='')}@" if parts["user"] else ""
    host = parts["host"]
    if ":" in str(host) and not str(host).startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{user}{host}:{parts['port']}/{parts['database'] or ''}?schema={schema}"


class PostgresStore(JournalStore):
    backend = "postgres"

    def __init__(self, url: str, *, schema: str | None = None, min_size: int = 1,
                 max_size: int = 8, connect_timeout: float | None = None,
                 pool_timeout: float = 30.0) -> None:
        psycopg, psycopg_pool = _import_psycopg()
        self._psycopg = psycopg
        self._conninfo, self.schema, self._parts = parse_url(url, schema)
        self.url = _public_url(self._parts, self.schema)
        if connect_timeout is None:
            connect_timeout = float(os.environ.get("CONTD_PG_CONNECT_TIMEOUT", "10"))
        self.connect_timeout = connect_timeout
        self._closed = False
        self._key: bytes | None = None
        self._lock = threading.Lock()
        # fail early and clearly: connect once, create or check the schema, then pool
        with self._direct() as conn:
            self._schema_version = _ensure(conn, self.schema, self.url)
        set_path = psycopg.sql.SQL("SET search_path TO {}").format(
            psycopg.sql.Identifier(self.schema))

        def configure(conn) -> None:
            conn.execute(set_path)

        self._pool = psycopg_pool.ConnectionPool(
            self._conninfo, min_size=min_size, max_size=max_size, open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout)),
                    "application_name": "contd_nb"},
            configure=configure, timeout=pool_timeout, name=f"contd:{self.schema}")
        self._pool.open(wait=False)

    # -- connections -------------------------------------------------------------------------
    def _unavailable(self, e: BaseException) -> JournalUnavailable:
        detail = str(e).strip() or type(e).__name__
        if self._parts.get("password"):
            detail = detail.replace(self._parts["password"], "***")
        return JournalUnavailable(self.url, detail.splitlines()[0] if detail else detail,
                                  self._parts["host"], self._parts["port"],
                                  self._parts["database"])

    def _is_connection_error(self, e: BaseException) -> bool:
        psycopg = self._psycopg
        if type(e).__name__ == "PoolTimeout":
            return True
        if not isinstance(e, psycopg.OperationalError):
            return False
        state = getattr(e, "sqlstate", None)  # lost races (40xxx) are not outages
        return state is None or state.startswith(("08", "57P", "53"))

    @contextmanager
    def _direct(self) -> Iterator[Any]:
        try:
            conn = self._psycopg.connect(self._conninfo, autocommit=True,
                                         connect_timeout=max(1, round(self.connect_timeout)),
                                         application_name="contd_nb")
        except self._psycopg.Error as e:
            raise self._unavailable(e) from e
        try:
            yield conn
        except self._psycopg.Error as e:
            if self._is_connection_error(e):
                raise self._unavailable(e) from e
            raise
        finally:
            conn.close()

    def _run(self, fn: Callable[[Any], Any], *, retry: bool = False) -> Any:
        """``fn(cursor)`` on a pooled connection. Connection failures become
        JournalUnavailable; a read (retry=True) is tried once more on a fresh connection,
        as pooled connections go stale when the server restarts."""
        if self._closed:
            raise RuntimeError(f"journal store {self.url} is closed")
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn, conn.cursor(binary=True) as cur:
                    return fn(cur)
            except Exception as e:
                if not self._is_connection_error(e):
                    raise
                if retry and attempt == 1 and type(e).__name__ != "PoolTimeout":
                    self._pool.check()
                    continue
                raise self._unavailable(e) from e
        raise AssertionError("unreachable")

    def _one(self, sql: str, params: Any = None, *, retry: bool = False) -> tuple | None:
        return self._run(lambda c: c.execute(sql, params).fetchone(), retry=retry)

    def _exec(self, sql: str, params: Any = None) -> None:
        self._run(lambda c: c.execute(sql, params))

    def _all(self, sql: str, params: Any = None, *, retry: bool = True) -> list[tuple]:
        return self._run(lambda c: c.execute(sql, params).fetchall(), retry=retry)

    # -- metadata ----------------------------------------------------------------------------
    def describe(self) -> str:
        return self.url

    def signing_key(self) -> bytes:
        if self._key is None:
            self._key = key_for_user()
        return self._key

    def schema_version(self) -> int:
        row = self._one("SELECT value FROM contd_meta WHERE key = 'schema_version'",
                        retry=True)
        if row is None:
            raise JournalCorrupted(self.url, "contd_meta has no schema_version row")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise JournalSchemaTooNew(self.url, version, SCHEMA_VERSION)
        return version

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def health_check(self) -> dict:
        """The store contract's check plus the server: version, database size, the journal's
        own size (its schema's tables and indexes), workflow count and pool figures."""
        result = super().health_check()
        if result["status"] != "ok":
            return result
        try:
            row = self._one(
                "SELECT current_setting('server_version'), "
                "pg_database_size(current_database()), "
                "(SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                " JOIN pg_namespace n ON n.oid = c.relnamespace "
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'), "
                "(SELECT count(*) FROM workflows)", retry=True)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            result.update(status="down", error_type=type(e).__name__, error=str(e))
            return result
        stats = self._pool.get_stats()
        result.update(server_version=row[0], database_size_bytes=int(row[1]),
                      size_bytes=int(row[2]), workflows=int(row[3]), schema=self.schema,
                      pool={"size": stats.get("pool_size", 0),
                            "available": stats.get("pool_available", 0),
                            "max_size": self._pool.max_size})
        return result

    # -- workflows ---------------------------------------------------------------------------
    def insert_workflow(self, record: WorkflowRecord) -> bool:
        row = self._one(f"INSERT INTO workflows ({sql_schema.WORKFLOW_COLUMNS}) VALUES "
                        "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING "
                        "RETURNING 1", _astuple(record))
        return row is not None

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        row = self._one(f"SELECT {sql_schema.WORKFLOW_COLUMNS} FROM workflows "
                        "WHERE workflow_id = %s", (workflow_id,), retry=True)
        return WorkflowRecord(*row) if row else None

    def update_workflow(self, workflow_id, token, *, status, result_encoding=None,
                        result_payload=None, error=None, only_if_status=()) -> bool:
        where = "workflow_id = %s"
        params: list = [status, time.time(), result_encoding, result_payload, error,
                        workflow_id]
        if only_if_status:
            where += " AND status = ANY(%s::varchar[])"
            params.append(list(only_if_status))
        update = ("UPDATE workflows SET status = %s, updated_at = %s, result_encoding = %s, "
                  f"result_payload = %s::bytea, error = %s WHERE {where}")
        if token is None:
            return self._one(update + " RETURNING 1", params) is not None
        row = self._one(f"WITH {_FENCE}, changed AS ({update} AND {_FENCE_OK} RETURNING 1) "
                        f"SELECT {_FENCE_RESULT}, (SELECT count(*) FROM changed)",
                        [workflow_id, *params, token])
        self._check(workflow_id, token, row)
        return bool(row[2])

    def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]:
        sql = f"SELECT {sql_schema.WORKFLOW_COLUMNS} FROM workflows"
        params: list = []
        if status:
            sql += " WHERE status = %s"
            params.append(status)
        return [WorkflowRecord(*r) for r in self._all(sql + " ORDER BY created_at, workflow_id",
                                                       params)]

    # -- events ------------------------------------------------------------------------------
    @staticmethod
    def _check(workflow_id: str, token: int, row: tuple) -> None:
        owner, current = row[0], row[1]
        if owner is None or current != token:
            raise LeaseLost(workflow_id, token, current, owner)

    def append_event(self, event: EventRecord, token: int | None,
                     blobs: tuple[BlobRecord, ...] = ()) -> None:
        values = [event.workflow_id, event.seq, event.kind, event.step_number, event.step_name,
                  _event_meta(event), event.payload]
        if token is None and not blobs:
            self._exec(f"INSERT INTO events ({_EVENT_COLS}) VALUES ({_EVENT_VALUES})", values)
            return
        with_parts, guard, params = [], "", []
        if token is not None:
            with_parts.append(_FENCE)
            params.append(event.workflow_id)
            guard = f" WHERE {_FENCE_OK}"
        blob_params: list = []
        if blobs:
            unique = list({b.hash: b for b in blobs}.values())
            with_parts.append(
                f"new_blobs AS (INSERT INTO blobs ({sql_schema.BLOB_COLUMNS}) "
                "SELECT b.*, false FROM unnest(%s::varchar[], %s::varchar[], %s::bytea[], "
                "%s::bigint[], %s::float8[], %s::bigint[]) AS b"
                f"{guard} ON CONFLICT (hash) DO NOTHING RETURNING 1)")
            blob_params = [[b.hash for b in unique], [b.encoding for b in unique],
                           [b.payload for b in unique], [b.size for b in unique],
                           [b.created_at for b in unique], [crc32(b.payload) for b in unique]]
            params += blob_params
            if token is not None:
                params.append(token)
        with_parts.append(f"new_event AS (INSERT INTO events ({_EVENT_COLS}) "
                          f"SELECT {_EVENT_VALUES}{guard} RETURNING 1)")
        params += values
        if token is not None:
            params.append(token)
        select = _FENCE_RESULT if token is not None else "NULL, NULL"
        row = self._one(f"WITH {', '.join(with_parts)} SELECT {select}, "
                        "(SELECT count(*) FROM new_event)", params)
        if token is not None:
            self._check(event.workflow_id, token, row)

    def read_events(self, workflow_id: str, after_seq: int = 0) -> list[EventRecord]:
        rows = self._all(f"SELECT {_EVENT_COLS} FROM events WHERE workflow_id = %s "
                         "AND seq > %s ORDER BY seq", (workflow_id, after_seq))
        return [_event_from_row(r) for r in rows]

    def last_seq(self, workflow_id: str) -> int:
        row = self._one("SELECT max(seq) FROM events WHERE workflow_id = %s", (workflow_id,),
                        retry=True)
        return int(row[0] or 0)

    # -- blobs -------------------------------------------------------------------------------
    def get_blobs(self, hashes: list[str]) -> dict[str, BlobRecord]:
        if not hashes:
            return {}
        rows = self._all("SELECT hash, encoding, payload, size, created_at, crc32 FROM blobs "
                         "WHERE hash = ANY(%s::varchar[])", (list(hashes),))
        out = {}
        for h, encoding, payload, size, created_at, crc in rows:
            if payload is None or len(payload) != size or crc32(payload) != crc:
                raise JournalCorrupted(self.url, f"blob {h} ({size} bytes) in its row is "
                                       "missing or damaged")
            out[h] = BlobRecord(h, encoding, bytes(payload), size, created_at)
        return out

    def known_blobs(self, hashes: list[str]) -> set[str]:
        if not hashes:
            return set()
        rows = self._all("SELECT hash FROM blobs WHERE hash = ANY(%s::varchar[])",
                         (list(hashes),))
        return {r[0] for r in rows}

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self, snapshot: SnapshotRecord, token: int | None) -> None:
        insert = (f"INSERT INTO snapshots ({sql_schema.SNAPSHOT_COLUMNS}) SELECT %s::varchar, "
                  "%s::integer, %s::bigint, %s::float8, %s::varchar, %s::bytea, %s::varchar")
        values = list(_astuple(snapshot))
        if token is None:
            self._exec(insert, values)
            return
        row = self._one(f"WITH {_FENCE}, new_snapshot AS ({insert} WHERE {_FENCE_OK} "
                        f"RETURNING 1) SELECT {_FENCE_RESULT}, "
                        "(SELECT count(*) FROM new_snapshot)",
                        [snapshot.workflow_id, *values, token])
        self._check(snapshot.workflow_id, token, row)

    def latest_snapshot(self, workflow_id: str) -> SnapshotRecord | None:
        row = self._one(f"SELECT {sql_schema.SNAPSHOT_COLUMNS} FROM snapshots "
                        "WHERE workflow_id = %s ORDER BY seq DESC LIMIT 1", (workflow_id,),
                        retry=True)
        return _snapshot(row) if row else None

    # -- restores ----------------------------------------------------------------------------
    def record_restore(self, record: RestoreRecord) -> None:
        self._exec(f"INSERT INTO restores ({sql_schema.RESTORE_COLUMNS}) VALUES "
                  "(%s,%s,%s,%s,%s,%s,%s)", _astuple(record))

    def list_restores(self, workflow_id: str | None = None) -> list[RestoreRecord]:
        sql = f"SELECT {sql_schema.RESTORE_COLUMNS} FROM restores"
        params: list = []
        if workflow_id is not None:
            sql += " WHERE workflow_id = %s"
            params.append(workflow_id)
        return [RestoreRecord(*r) for r in self._all(sql + " ORDER BY started_at", params)]

    # -- leases ------------------------------------------------------------------------------
    def get_lease(self, workflow_id: str) -> LeaseRecord | None:
        row = self._one(f"SELECT {sql_schema.LEASE_COLUMNS} FROM leases WHERE workflow_id = %s",
                        (workflow_id,), retry=True)
        return LeaseRecord(*row) if row else None

    def list_leases(self) -> list[LeaseRecord]:
        return [LeaseRecord(*r) for r in self._all(
            f"SELECT {sql_schema.LEASE_COLUMNS} FROM leases ORDER BY workflow_id")]

    def take_lease(self, lease: LeaseRecord, expected_token: int | None) -> bool:
        if expected_token is None:
            row = self._one(f"INSERT INTO leases ({sql_schema.LEASE_COLUMNS}) VALUES "
                            "(%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING RETURNING 1",
                            _astuple(lease))
        else:
            row = self._one(
                "UPDATE leases SET owner_id = %s, token = %s, expires_at = %s, host = %s, "
                "pid = %s, pid_started = %s, acquired_at = %s, renewed_at = %s "
                "WHERE workflow_id = %s AND token = %s RETURNING 1",
                (lease.owner_id, lease.token, lease.expires_at, lease.host, lease.pid,
                 lease.pid_started, lease.acquired_at, lease.renewed_at, lease.workflow_id,
                 expected_token))
        return row is not None

    def renew_lease(self, workflow_id, owner_id, token, expires_at, now) -> bool:
        return self._one("UPDATE leases SET expires_at = %s, renewed_at = %s "
                         "WHERE workflow_id = %s AND owner_id = %s AND token = %s RETURNING 1",
                         (expires_at, now, workflow_id, owner_id, token)) is not None

    def release_lease(self, workflow_id, owner_id, token) -> bool:
        return self._one("UPDATE leases SET owner_id = NULL WHERE workflow_id = %s "
                         "AND owner_id = %s AND token = %s RETURNING 1",
                         (workflow_id, owner_id, token)) is not None

    def force_release(self, workflow_id: str, now: float) -> LeaseRecord | None:
        old = ", ".join(f"old.{c.strip()}" for c in sql_schema.LEASE_COLUMNS.split(","))
        row = self._one(
            "UPDATE leases AS l SET owner_id = NULL, token = old.token + 1, expires_at = %s, "
            "renewed_at = %s FROM (SELECT * FROM leases WHERE workflow_id = %s FOR UPDATE) "
            f"AS old WHERE l.workflow_id = old.workflow_id RETURNING {old}",
            (now, now, workflow_id))
        return LeaseRecord(*row) if row else None


# -- schema ----------------------------------------------------------------------------------
def _ensure(conn, schema: str, where: str) -> int:
    """Create, migrate or validate the journal's tables in ``schema`` (one transaction, under an
    advisory lock so that processes starting together do not race); return the version."""
    from psycopg import errors, sql

    ident = sql.Identifier(schema)
    try:
        row = conn.execute(sql.SQL("SELECT value FROM {}.contd_meta WHERE key = "
                                   "'schema_version'").format(ident)).fetchone()
        if row is not None and int(row[0]) == SCHEMA_VERSION:
            return SCHEMA_VERSION
    except (errors.UndefinedTable, errors.InvalidSchemaName):
        pass
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"contd_nb:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,)).fetchall()}
        if "contd_meta" in tables:
            row = conn.execute(
                "SELECT value FROM contd_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                raise JournalCorrupted(where, "contd_meta has no schema_version row")
            version = int(row[0])
        elif tables & {"workflows", "events", "leases"}:
            raise JournalCorrupted(where, "journal tables exist without contd_meta")
        else:
            version = 0
        if version > SCHEMA_VERSION:
            raise JournalSchemaTooNew(where, version, SCHEMA_VERSION)
        if version == 0:
            for stmt in sql_schema.CREATE_STATEMENTS:
                conn.execute(stmt.format(blob="BYTEA"))
            conn.execute("INSERT INTO contd_meta VALUES ('schema_version', %s)",
                         (str(SCHEMA_VERSION),))
        elif version < SCHEMA_VERSION:
            for v in range(version, SCHEMA_VERSION):
                for stmt in sql_schema.MIGRATIONS[v]:
                    conn.execute(stmt.format(blob="BYTEA"))
            conn.execute("UPDATE contd_meta SET value = %s WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION),))
        for stmt in PG_INDEXES:
            conn.execute(stmt)
    return SCHEMA_VERSION


# -- rows ------------------------------------------------------------------------------------
def _event_meta(e: EventRecord) -> str:
    return json.dumps({"attempt": e.attempt, "started_at": e.started_at, "ended_at": e.ended_at,
                       "info": e.info, "enc": e.encoding, "sum": e.checksum,
                       "token": e.lease_token}, separators=(",", ":"))


def _event_from_row(r: tuple) -> EventRecord:
    m = json.loads(r[5])
    payload = r[6]
    return EventRecord(r[0], r[1], r[2], r[3], r[4], m["attempt"], m["started_at"],
                       m["ended_at"], m["info"], m["enc"],
                       None if payload is None else bytes(payload), m["sum"], m["token"])


def _snapshot(row: tuple) -> SnapshotRecord:
    return SnapshotRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), row[6])


def _astuple(record) -> tuple:
    return tuple(getattr(record, f) for f in record.__slots__)


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF
