"""The storage contract every journal backend implements.

A backend stores five kinds of rows: workflows, events (the append-only journal), snapshots,
leases and restore timings. The engine decides (who owns a lease, which step replays); a
backend only offers atomic primitives. Every write an executor makes carries its lease token
and is refused (``LeaseLost``) unless that token is the workflow's current one, checked
atomically with the write. ``tests/test_store_contract.py`` is the one suite all backends pass.

Timestamps are float seconds since the epoch (UTC); payloads are bytes with an encoding tag.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = [
    "SCHEMA_VERSION",
    "BlobRecord",
    "EventRecord",
    "JournalStore",
    "LeaseRecord",
    "RestoreRecord",
    "SnapshotRecord",
    "WorkflowRecord",
]

SCHEMA_VERSION = 2  # 2: content-addressed blobs (notebook variables)


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    workflow_id: str
    name: str
    function: str | None          # "module:qualname", to resume it from another process
    status: str                   # running | completed | failed | cancelled
    created_at: float
    updated_at: float
    input_encoding: str | None = None
    input_payload: bytes | None = None
    result_encoding: str | None = None
    result_payload: bytes | None = None
    error: str | None = None      # JSON: {"type", "message", "traceback"}
    config: str | None = None     # JSON


@dataclass(frozen=True, slots=True)
class EventRecord:
    workflow_id: str
    seq: int
    kind: str
    step_number: int | None
    step_name: str | None
    attempt: int | None
    started_at: float | None
    ended_at: float
    info: str | None              # JSON text: code hash, error, restore figures, ...
    encoding: str | None
    payload: bytes | None
    checksum: str
    lease_token: int | None


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """A stored value, addressed by the hash of its encoding and bytes (stored once)."""

    hash: str
    encoding: str
    payload: bytes
    size: int
    created_at: float


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    workflow_id: str
    step_number: int              # last step included
    seq: int                      # last event seq included
    created_at: float
    encoding: str
    payload: bytes
    checksum: str


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    workflow_id: str
    owner_id: str | None          # None: released (the token stays)
    token: int
    expires_at: float
    host: str | None
    pid: int | None
    pid_started: float | None     # process start time, to tell a reused pid apart
    acquired_at: float
    renewed_at: float


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    workflow_id: str
    started_at: float
    duration_ms: float
    events_replayed: int
    snapshot_step: int | None
    purpose: str                  # resume | inspect
    owner_id: str | None


class JournalStore(abc.ABC):
    """Atomic primitives over one journal. Implementations must be thread-safe."""

    #: "duckdb", "memory", "postgres"
    backend: str = "?"

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the journal lives (a path or a URL without password), for messages."""

    @abc.abstractmethod
    def signing_key(self) -> bytes:
        """The key that signs pickled payloads of this journal."""

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- workflows ------------------------------------------------------------------------
    @abc.abstractmethod
    def insert_workflow(self, record: WorkflowRecord) -> bool:
        """Insert; False (and no change) if the id exists."""

    @abc.abstractmethod
    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None: ...

    @abc.abstractmethod
    def update_workflow(self, workflow_id: str, token: int | None, *, status: str,
                        result_encoding: str | None = None,
                        result_payload: bytes | None = None,
                        error: str | None = None, only_if_status: tuple[str, ...] = ()) -> bool:
        """Set status (and result or error). Fenced by ``token`` unless it is None (an
        administrative change such as cancel). ``only_if_status`` restricts which current
        statuses may change. Returns whether a row changed."""

    @abc.abstractmethod
    def list_workflows(self, status: str | None = None) -> list[WorkflowRecord]: ...

    # -- events -----------------------------------------------------------------------------
    @abc.abstractmethod
    def append_event(self, event: EventRecord, token: int | None,
                     blobs: tuple[BlobRecord, ...] = ()) -> None:
        """Commit one event, atomically with the check that ``token`` is current (raises
        LeaseLost otherwise). ``token=None`` writes without a lease check (imports, tests).
        Stores need not enforce unique (workflow_id, seq): the fenced lease holder is the
        only writer of a workflow and continues from the last seq it restored. ``blobs`` are
        stored in the same transaction (a blob whose hash exists is skipped)."""

    @abc.abstractmethod
    def read_events(self, workflow_id: str, after_seq: int = 0) -> list[EventRecord]:
        """Events with seq > after_seq, in seq order."""

    @abc.abstractmethod
    def last_seq(self, workflow_id: str) -> int:
        """Highest seq of the workflow, 0 if none."""

    # -- blobs ------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_blobs(self, hashes: list[str]) -> dict[str, BlobRecord]:
        """The blobs that exist among ``hashes``, by hash."""

    @abc.abstractmethod
    def known_blobs(self, hashes: list[str]) -> set[str]:
        """Which of ``hashes`` are stored (without reading payloads)."""

    # -- snapshots --------------------------------------------------------------------------
    @abc.abstractmethod
    def write_snapshot(self, snapshot: SnapshotRecord, token: int | None) -> None: ...

    @abc.abstractmethod
    def latest_snapshot(self, workflow_id: str) -> SnapshotRecord | None: ...

    # -- restores ---------------------------------------------------------------------------
    @abc.abstractmethod
    def record_restore(self, record: RestoreRecord) -> None: ...

    @abc.abstractmethod
    def list_restores(self, workflow_id: str | None = None) -> list[RestoreRecord]: ...

    # -- leases (compare-and-set) -----------------------------------------------------------
    @abc.abstractmethod
    def get_lease(self, workflow_id: str) -> LeaseRecord | None: ...

    @abc.abstractmethod
    def list_leases(self) -> list[LeaseRecord]: ...

    @abc.abstractmethod
    def take_lease(self, lease: LeaseRecord, expected_token: int | None) -> bool:
        """Write ``lease`` (its token must be expected_token + 1) only if the current row's
        token is ``expected_token`` (None: only if there is no row). One atomic statement."""

    @abc.abstractmethod
    def renew_lease(self, workflow_id: str, owner_id: str, token: int,
                    expires_at: float, now: float) -> bool:
        """Extend the lease if this owner still holds this token."""

    @abc.abstractmethod
    def release_lease(self, workflow_id: str, owner_id: str, token: int) -> bool:
        """Give the lease up (owner cleared, token kept) if this owner holds this token."""

    @abc.abstractmethod
    def force_release(self, workflow_id: str, now: float) -> LeaseRecord | None:
        """Clear the owner whoever it is and bump the token, so the old owner is fenced
        out. Returns the lease as it was, or None if there was none."""

    # -- health -----------------------------------------------------------------------------
    def health_check(self) -> dict:
        """Whether the journal can be reached and read, without raising: ``{"status": "ok" |
        "down", "backend", "journal", "schema_version"}``, or with ``error`` and
        ``error_type`` instead of the version when it cannot be read."""
        info: dict = {"backend": self.backend, "journal": self.describe(),
                      "supported_schema_version": SCHEMA_VERSION}
        try:
            info["schema_version"] = self.schema_version()
        except Exception as e:  # noqa: BLE001 - a health check reports, it does not raise
            return {"status": "down", **info, "error_type": type(e).__name__,
                    "error": str(e)}
        return {"status": "ok", **info}

    # -- hand-over --------------------------------------------------------------------------
    def is_open(self) -> bool:
        """Whether the store holds its file or connection right now."""
        return True

    def idle(self) -> None:  # noqa: B027 - optional hook
        """The caller has nothing more to write for now (a file-based store lets go of the
        file so other processes can use it)."""
