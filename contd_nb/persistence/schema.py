"""The journal's SQL schema, its version, and migrations (shared by the SQL backends).

``ensure(conn, where)`` creates the schema in an empty database, migrates an older one, and
refuses (JournalSchemaTooNew, without writing) one written by a newer contd_nb.
"""

from __future__ import annotations

from ..sdk.errors import JournalCorrupted, JournalSchemaTooNew
from .base import SCHEMA_VERSION

__all__ = ["CREATE_STATEMENTS", "EVENT_COLUMNS", "LEASE_COLUMNS", "RESTORE_COLUMNS",
           "SNAPSHOT_COLUMNS", "WORKFLOW_COLUMNS", "ensure"]

WORKFLOW_COLUMNS = ("workflow_id, name, function, status, created_at, updated_at, "
                    "input_encoding, input_payload, result_encoding, result_payload, error, "
                    "config")
EVENT_COLUMNS = ("workflow_id, seq, kind, step_number, step_name, attempt, started_at, "
                 "ended_at, info, encoding, payload, checksum, lease_token")
SNAPSHOT_COLUMNS = "workflow_id, step_number, seq, created_at, encoding, payload, checksum"
LEASE_COLUMNS = ("workflow_id, owner_id, token, expires_at, host, pid, pid_started, "
                 "acquired_at, renewed_at")
RESTORE_COLUMNS = ("workflow_id, started_at, duration_ms, events_replayed, snapshot_step, "
                   "purpose, owner_id")

# Types are written so that DuckDB and PostgreSQL both accept them (BLOB: see blob_type).
CREATE_STATEMENTS = [
    "CREATE TABLE contd_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE workflows (
        workflow_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, function VARCHAR,
        status VARCHAR NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, input_encoding VARCHAR, input_payload {blob},
        result_encoding VARCHAR, result_payload {blob}, error VARCHAR, config VARCHAR)""",
    """CREATE TABLE events (
        workflow_id VARCHAR NOT NULL, seq BIGINT NOT NULL, kind VARCHAR NOT NULL,
        step_number INTEGER, step_name VARCHAR, attempt INTEGER,
        started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION NOT NULL, info VARCHAR,
        encoding VARCHAR, payload {blob}, checksum VARCHAR NOT NULL, lease_token BIGINT,
        PRIMARY KEY (workflow_id, seq))""",
    """CREATE TABLE snapshots (
        workflow_id VARCHAR NOT NULL, step_number INTEGER NOT NULL, seq BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, encoding VARCHAR NOT NULL,
        payload {blob} NOT NULL, checksum VARCHAR NOT NULL)""",
    "CREATE INDEX snapshots_workflow ON snapshots (workflow_id)",
    """CREATE TABLE leases (
        workflow_id VARCHAR PRIMARY KEY, owner_id VARCHAR, token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL, host VARCHAR, pid INTEGER,
        pid_started DOUBLE PRECISION, acquired_at DOUBLE PRECISION NOT NULL,
        renewed_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE restores (
        workflow_id VARCHAR NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL, events_replayed INTEGER NOT NULL,
        snapshot_step INTEGER, purpose VARCHAR NOT NULL, owner_id VARCHAR)""",
    "CREATE INDEX restores_workflow ON restores (workflow_id)",
]

# MIGRATIONS[n] takes a journal from version n to n + 1.
MIGRATIONS: dict[int, list[str]] = {}


def ensure(conn, where: str, blob: str = "BLOB") -> int:
    """Create, migrate or validate the schema; return the version in force."""
    try:
        has_meta = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'contd_meta'"
        ).fetchone()[0]
        if has_meta:
            row = conn.execute(
                "SELECT value FROM contd_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                raise JournalCorrupted(where, "contd_meta has no schema_version row")
            version = int(row[0])
        else:
            others = conn.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name IN ('workflows', 'events', 'leases')").fetchone()[0]
            if others:
                raise JournalCorrupted(where, "journal tables exist without contd_meta")
            version = 0
    except (JournalCorrupted, JournalSchemaTooNew):
        raise
    except Exception as e:  # an unreadable catalog: the file is damaged
        raise JournalCorrupted(where, f"cannot read its schema: {e}") from e
    if version > SCHEMA_VERSION:
        raise JournalSchemaTooNew(where, version, SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        return version
    conn.execute("BEGIN TRANSACTION")
    try:
        if version == 0:
            for stmt in CREATE_STATEMENTS:
                conn.execute(stmt.format(blob=blob))
            conn.execute("INSERT INTO contd_meta VALUES ('schema_version', ?)",
                         [str(SCHEMA_VERSION)])
        else:
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    conn.execute(stmt.format(blob=blob))
            conn.execute("UPDATE contd_meta SET value = ? WHERE key = 'schema_version'",
                         [str(SCHEMA_VERSION)])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
