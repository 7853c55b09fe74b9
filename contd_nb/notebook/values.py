"""Notebook variables to journal blobs and back, content-addressed.

A variable's value is encoded like any step result (JSON, Arrow, signed cloudpickle); the
blob's address is a hash of its encoding and bytes, so a value that did not change is stored
once however many steps keep it. Modules are stored by name and imported again on restore.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import types
from dataclasses import dataclass
from typing import Any

from ..core.journal import Journal
from ..persistence.base import BlobRecord
from ..sdk.errors import JournalIntegrityError, UnserializableValue

__all__ = ["EncodedValues", "encode_values", "load_values", "value_hash"]


def value_hash(encoding: str, payload: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(encoding.encode())
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


@dataclass
class EncodedValues:
    refs: dict[str, dict]               # variable -> {"blob": hash, "size": n} | {"module": m}
    blobs: list[BlobRecord]             # new blobs to store with the step
    unpersistable: dict[str, str]       # variable -> type name
    reasons: dict[str, str]             # variable -> why it could not be persisted
    nbytes: int


def encode_values(journal: Journal, namespace: dict, names: list[str],
                  known: set[str]) -> EncodedValues:
    """Encode ``names`` from the namespace. ``known`` holds blob hashes already stored (it is
    updated), so unchanged values are not stored twice."""
    out = EncodedValues({}, [], {}, {}, 0)
    now = time.time()
    for name in names:
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            out.refs[name] = {"module": value.__name__}
            continue
        try:
            encoding, payload = journal.encode(value, f"variable `{name}`")
        except UnserializableValue as e:
            out.unpersistable[name] = e.type_name
            out.reasons[name] = e.reason
            continue
        h = value_hash(encoding, payload)
        out.refs[name] = {"blob": h, "size": len(payload)}
        out.nbytes += len(payload)
        if h not in known:
            out.blobs.append(BlobRecord(h, encoding, payload, len(payload), now))
            known.add(h)
    return out


def hash_of(journal: Journal, value: Any) -> str | None:
    """The content hash a value would be stored under (None if it cannot be encoded)."""
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    try:
        encoding, payload = journal.encode(value, "value")
    except UnserializableValue:
        return None
    return value_hash(encoding, payload)


def ref_hash(ref: dict) -> str | None:
    if "module" in ref:
        return f"module:{ref['module']}"
    return ref.get("blob")


def load_values(journal: Journal, workflow_id: str, refs: dict[str, dict]) -> dict[str, Any]:
    """Decode variables from their refs (modules imported again)."""
    hashes = [r["blob"] for r in refs.values() if "blob" in r]
    blobs = journal.store.get_blobs(hashes) if hashes else {}
    values: dict[str, Any] = {}
    for name, ref in refs.items():
        if "module" in ref:
            values[name] = importlib.import_module(ref["module"])
            continue
        if "blob" not in ref:
            continue
        blob = blobs.get(ref["blob"])  # the store checked its size and CRC
        if blob is None:
            raise JournalIntegrityError(
                f"Journal {journal.store.describe()}: the value of `{name}` in workflow "
                f"{workflow_id} is missing (blob {ref['blob']})",
                hint="run the cell that assigns it again (%%contd_step --force)")
        values[name] = journal.decode(blob.encoding, blob.payload, workflow_id, None,
                                      f"variable `{name}`")
    return values
