"""Values to bytes and back: JSON for plain data, Arrow for DataFrames and arrays, signed
cloudpickle for the rest; checksums for journal rows.

A pickled payload is stored as ``HMAC-SHA256(key, data) || data`` and only unpickled after the
HMAC checks, so a row written without the journal's key cannot run code on load. This module
does not import pandas or numpy: it recognises their objects only when the caller already
imported them.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import sys
from typing import Any

from ..sdk.errors import PayloadSignatureError, UnserializableValue

__all__ = ["checksum", "decode", "encode", "sign", "unsign"]

_JSON_SCALARS = (str, int, float, bool, type(None))
_SIG = 32


def _json_safe(value: Any, depth: int = 0) -> bool:
    t = type(value)
    if t in _JSON_SCALARS:
        return True
    if depth > 50:
        return False
    if t is list:
        return all(_json_safe(v, depth + 1) for v in value)
    if t is dict:
        return all(type(k) is str and _json_safe(v, depth + 1) for k, v in value.items())
    return False


def sign(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest() + data


def unsign(key: bytes, blob: bytes, workflow_id: str | None, seq: int | None,
           what: str) -> bytes:
    mac, data = blob[:_SIG], blob[_SIG:]
    if len(blob) < _SIG or not hmac.compare_digest(
            mac, hmac.new(key, data, hashlib.sha256).digest()):
        raise PayloadSignatureError(workflow_id, seq, what)
    return data


def _arrow_dataframe(df) -> bytes | None:
    """Arrow IPC of a DataFrame, or None where Arrow would not round-trip it exactly."""
    import pyarrow as pa

    cols = list(df.columns)
    if not all(type(c) is str for c in cols) or len(set(cols)) != len(cols):
        return None
    try:
        # preserve_index=None keeps a RangeIndex as metadata (not an 8-byte-per-row column)
        # and stores any other index as columns
        table = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _arrow_ndarray(arr) -> bytes | None:
    import pyarrow as pa

    # Arrow tensors have no bool (it would come back as uint8) and no complex: pickle those
    if arr.dtype.kind not in "iuf" or arr.dtype.byteorder not in "=|<":
        return None
    try:
        tensor = pa.Tensor.from_numpy(arr)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    sink = pa.BufferOutputStream()
    pa.ipc.write_tensor(tensor, sink)
    return sink.getvalue().to_pybytes()


def encode(value: Any, key: bytes, what: str = "value") -> tuple[str, bytes]:
    """(encoding, payload) for a value. Raises UnserializableValue naming ``what``."""
    if _json_safe(value):
        try:
            return "json", json.dumps(value, separators=(",", ":")).encode()
        except (ValueError, RecursionError):
            pass
    pd = sys.modules.get("pandas")
    if pd is not None and type(value) is pd.DataFrame:
        data = _arrow_dataframe(value)
        if data is not None:
            return "arrow-df", data
    np = sys.modules.get("numpy")
    if np is not None and type(value) is np.ndarray:
        data = _arrow_ndarray(value)
        if data is not None:
            return "arrow-tensor", data
    import cloudpickle

    try:
        data = cloudpickle.dumps(value, protocol=5)
    except Exception as e:
        raise UnserializableValue(what, _type_name(value), f"{type(e).__name__}: {e}") from e
    return "pickle", sign(key, data)


def decode(encoding: str | None, payload: bytes | None, key: bytes,
           workflow_id: str | None = None, seq: int | None = None,
           what: str = "value") -> Any:
    if encoding is None:
        return None
    if encoding == "json":
        return json.loads(payload)
    if encoding == "pickle":
        import pickle

        return pickle.loads(unsign(key, payload, workflow_id, seq, what))
    import pyarrow as pa

    if encoding == "arrow-df":
        return pa.ipc.open_stream(payload).read_all().to_pandas()
    if encoding == "arrow-tensor":
        # a copy: the tensor is a read-only view of the payload, the original was writable
        return pa.ipc.read_tensor(pa.py_buffer(payload)).to_numpy().copy()
    raise ValueError(f"unknown payload encoding {encoding!r}")


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def checksum(*parts: object, payload: bytes | None = None) -> str:
    """A short digest of a journal row's fields and payload."""
    h = hashlib.blake2b(digest_size=12)
    h.update("\x1f".join("" if p is None else str(p) for p in parts).encode())
    if payload:
        h.update(b"\x1e")
        h.update(payload)
    return h.hexdigest()
