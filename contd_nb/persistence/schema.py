"""The journal's SQL schema, its version, and migrations (shared by the SQL backends).

``ensure(conn, where)`` creates the schema in an empty database, migrates an older one, and
refuses (JournalSchemaTooNew, without writing) one written by a newer contd_nb.
"""

from __future__ import annotations

from ..sdk.errors import JournalCorrupted, JournalSchemaTooNew
from .base import SCHEMA_VERSION

__all__ = ["BLOB_COLUMNS", "CREATE_STATEMENTS", "EVENT_SELECT", "LEASE_COLUMNS", "RESTORE_COLUMNS",
           "SNAPSHOT_COLUMNS", "WORKFLOW_COLUMNS", "ensure"]

WORKFLOW_COLUMNS = ("workflow_id, name, function, status, created_at, updated_at, "
                    "input_encoding, input_payload, result_encoding, result_payload, error, "
                    "config")
# events.meta holds: attempt, started_at, ended_at (epoch seconds), info (JSON text), enc,
# sum (checksum), token (lease token). This select gives EventRecord's fields in order.
EVENT_SELECT = ("workflow_id, seq, kind, step_number, step_name, "
                "CAST(meta->>'$.attempt' AS INTEGER), CAST(meta->>'$.started_at' AS DOUBLE), "
                "CAST(meta->>'$.ended_at' AS DOUBLE), meta->>'$.info', meta->>'$.enc', "
                "payload, meta->>'$.sum', CAST(meta->>'$.token' AS BIGINT)")
SNAPSHOT_COLUMNS = "workflow_id, step_number, seq, created_at, encoding, payload, checksum"
LEASE_COLUMNS = ("workflow_id, owner_id, token, expires_at, host, pid, pid_started, "
                 "acquired_at, renewed_at")
RESTORE_COLUMNS = ("workflow_id, started_at, duration_ms, events_replayed, snapshot_step, "
                   "purpose, owner_id")

# payload is NULL when the blob lives in a file beside the journal (in_file); crc32 is
# checked on every read
BLOBS_V2 = [
    """CREATE TABLE blobs (
        hash VARCHAR PRIMARY KEY, encoding VARCHAR NOT NULL, payload {blob},
        size BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, crc32 BIGINT NOT NULL,
        in_file BOOLEAN NOT NULL)""",
]
BLOB_COLUMNS = "hash, encoding, payload, size, created_at, crc32, in_file"

# The DuckDB schema (a PostgreSQL backend keeps the same tables and columns).
CREATE_STATEMENTS = [
    "CREATE TABLE contd_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    """CREATE TABLE workflows (
        workflow_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, function VARCHAR,
        status VARCHAR NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, input_encoding VARCHAR, input_payload {blob},
        result_encoding VARCHAR, result_payload {blob}, error VARCHAR, config VARCHAR)""",
    # Events are narrow on purpose: a DuckDB commit costs ~40 us per column, so the fields
    # that analysis rarely filters on travel in ``meta`` (JSON; see EVENT_SELECT). No primary
    # key either: it cost ~0.13 ms per commit and did not speed up reading one workflow
    # (measured on 1M rows). (workflow_id, seq) stays unique because only the lease holder
    # writes (fenced) and it continues from the last seq it restored.
    """CREATE TABLE events (
        workflow_id VARCHAR NOT NULL, seq BIGINT NOT NULL, kind VARCHAR NOT NULL,
        step_number INTEGER, step_name VARCHAR, meta VARCHAR NOT NULL, payload {blob})""",
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
    *BLOBS_V2,
]

# MIGRATIONS[n] takes a journal from version n to n + 1.
MIGRATIONS: dict[int, list[str]] = {
    1: BLOBS_V2,
}


def quick_version(conn) -> int | None:
    """The schema version, with one cheap query (None if it cannot be read that way)."""
    try:
        row = conn.execute(
            "SELECT value FROM contd_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else None
    except Exception:
        return None


def ensure(conn, where: str, blob: str = "BLOB") -> int:
    """Create, migrate or validate the schema; return the version in force."""
    if quick_version(conn) == SCHEMA_VERSION:
        return SCHEMA_VERSION
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
