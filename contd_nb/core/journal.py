"""The journal: typed, checksummed, signed access to a store's events and snapshots.

``Journal.append`` builds one event row (checksum included) and commits it through the store
with the writer's lease token; ``get_events`` verifies every row's checksum and returns typed
events. This is the only place that turns rows into events and values into payloads.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..persistence.base import EventRecord, JournalStore, SnapshotRecord
from ..sdk.errors import JournalCorrupted
from . import codec
from .events import EVENT_TYPES, JournalEvent, parse_info

__all__ = ["Journal"]


class Journal:
    def __init__(self, store: JournalStore) -> None:
        self.store = store
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = self.store.signing_key()
        return self._key

    # -- writing -----------------------------------------------------------------------------
    def encode(self, value: Any, what: str) -> tuple[str, bytes]:
        return codec.encode(value, self.key, what)

    def append(self, workflow_id: str, seq: int, kind: str, token: int | None, *,
               step_number: int | None = None, step_name: str | None = None,
               attempt: int | None = None, started_at: float | None = None,
               info: dict | None = None, encoding: str | None = None,
               payload: bytes | None = None, ended_at: float | None = None,
               blobs: tuple = ()) -> EventRecord:
        ended = time.time() if ended_at is None else ended_at
        info_text = json.dumps(info, separators=(",", ":")) if info else None
        record = EventRecord(
            workflow_id, seq, kind, step_number, step_name, attempt, started_at, ended,
            info_text, encoding, payload,
            codec.checksum(workflow_id, seq, kind, step_number, step_name, attempt, info_text,
                           encoding, payload=payload),
            token)
        self.store.append_event(record, token, blobs)
        return record

    # -- reading -----------------------------------------------------------------------------
    def verify(self, rec: EventRecord) -> EventRecord:
        expected = codec.checksum(rec.workflow_id, rec.seq, rec.kind, rec.step_number,
                                  rec.step_name, rec.attempt, rec.info, rec.encoding,
                                  payload=rec.payload)
        if expected != rec.checksum:
            raise JournalCorrupted(self.store.describe(), "checksum mismatch: the event was "
                                   "changed after it was written", rec.workflow_id, rec.seq)
        return rec

    def records(self, workflow_id: str, after_seq: int = 0) -> list[EventRecord]:
        return [self.verify(r) for r in self.store.read_events(workflow_id, after_seq)]

    def to_event(self, rec: EventRecord) -> JournalEvent:
        cls = EVENT_TYPES.get(rec.kind)
        if cls is None:
            raise JournalCorrupted(self.store.describe(), f"unknown event kind {rec.kind!r}",
                                   rec.workflow_id, rec.seq)
        return cls(rec.workflow_id, rec.seq, rec.step_number, rec.step_name, rec.attempt,
                   rec.started_at, rec.ended_at, parse_info(rec.info), rec.encoding,
                   rec.payload, rec.lease_token, self._decode_event)

    def get_events(self, workflow_id: str, after_seq: int = 0) -> list[JournalEvent]:
        """Every event of a workflow in order, checksums verified."""
        return [self.to_event(r) for r in self.records(workflow_id, after_seq)]

    def _decode_event(self, ev: JournalEvent) -> Any:
        return self.decode(ev.encoding, ev.payload, ev.workflow_id, ev.seq,
                           f"the payload of {ev.kind}")

    def decode(self, encoding: str | None, payload: bytes | None, workflow_id: str,
               seq: int | None, what: str) -> Any:
        return codec.decode(encoding, payload, self.key, workflow_id, seq, what)

    # -- snapshots ---------------------------------------------------------------------------
    def write_snapshot(self, workflow_id: str, step_number: int, seq: int, state: Any,
                       token: int | None) -> int:
        import pickle

        data = codec.sign(self.key, pickle.dumps(state, protocol=5))
        snap = SnapshotRecord(workflow_id, step_number, seq, time.time(), "pickle", data,
                              codec.checksum(workflow_id, step_number, seq, payload=data))
        self.store.write_snapshot(snap, token)
        return len(data)

    def latest_snapshot(self, workflow_id: str) -> tuple[SnapshotRecord, Any] | None:
        import pickle

        snap = self.store.latest_snapshot(workflow_id)
        if snap is None:
            return None
        if codec.checksum(workflow_id, snap.step_number, snap.seq,
                          payload=snap.payload) != snap.checksum:
            raise JournalCorrupted(self.store.describe(), "snapshot checksum mismatch",
                                   workflow_id, snap.seq)
        data = codec.unsign(self.key, snap.payload, workflow_id, snap.seq, "a snapshot")
        return snap, pickle.loads(data)
