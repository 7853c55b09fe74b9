"""One journal event in full: fields, decoded payload preview, error traceback."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from ..core.engine import ExecutionEngine
from .query import _query, _store

__all__ = ["event_detail"]


def event_detail(workflow_id: str, seq: int, *, max_chars: int = 2000,
                 journal: str | os.PathLike | None = None,
                 engine: ExecutionEngine | None = None) -> dict:
    """One event in full: its fields, info, error traceback and a preview of its payload
    (decoded with the journal's key; for a notebook cell, the manifest of saved variables and
    outputs), truncated to ``max_chars``. Raises KeyError if there is no such event."""
    from ..core.journal import Journal
    from ..persistence import schema

    store = _store(journal, engine)
    df = _query(store, f"SELECT {schema.EVENT_SELECT} FROM events "
                       "WHERE workflow_id = ? AND seq = ?", [workflow_id, int(seq)])
    if df.empty:
        raise KeyError(f"no event {workflow_id}#{seq} in {store.describe()}")
    (wid, seq_, kind, step_number, step_name, attempt, started, ended, info_text, enc,
     payload, _sum, token) = df.itertuples(index=False, name=None).__next__()
    info = json.loads(info_text) if isinstance(info_text, str) and info_text else {}
    payload = bytes(payload) if payload is not None and not _isna(payload) else None
    preview = None
    if payload is not None:
        try:
            value = Journal(store).decode(enc, payload, wid, int(seq_), f"the payload of {kind}")
            if enc == "json" and info.get("cell") and isinstance(value, dict):
                value = _cell_manifest_preview(value)
            preview = value if isinstance(value, str) else _pretty(value)
        except Exception as e:  # noqa: BLE001 - shown, not raised: it is a preview
            preview = f"<cannot decode: {type(e).__name__}: {e}>"
        if len(preview) > max_chars:
            preview = preview[:max_chars] + f"... ({len(preview) - max_chars} more characters)"

    def num(x):
        return None if _isna(x) else int(x)

    def when(x):
        return None if _isna(x) else dt.datetime.fromtimestamp(float(x), dt.UTC)

    return {"workflow_id": wid, "seq": int(seq_), "kind": kind, "step_number": num(step_number),
            "step_name": None if _isna(step_name) else step_name, "attempt": num(attempt),
            "started_at": when(started), "ended_at": when(ended), "info": info,
            "error_type": info.get("error_type"), "message": info.get("message"),
            "traceback": info.get("traceback"), "encoding": None if _isna(enc) else enc,
            "payload_bytes": len(payload) if payload is not None else None,
            "payload_preview": preview, "lease_token": num(token)}


def _isna(x) -> bool:
    try:
        import pandas as pd

        return x is None or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _pretty(value: Any) -> str:
    import pprint

    text = repr(value) if hasattr(value, "to_string") else pprint.pformat(value, width=90)
    if hasattr(value, "head") and hasattr(value, "shape"):
        text = f"{type(value).__name__} {value.shape}\n{value.head(10)!r}"
    return text


def _cell_manifest_preview(manifest: dict) -> str:
    """A cell completion's payload: which variables it saved (and their sizes) and the text
    of its outputs."""
    lines = ["variables:"]
    for var, ref in sorted(manifest.get("values", {}).items()):
        if "module" in ref:
            lines.append(f"  {var} = module {ref['module']}")
        else:
            lines.append(f"  {var}: {ref.get('size', '?')} bytes (blob {ref.get('blob', '')[:12]})")
    outputs = manifest.get("outputs", [])
    lines.append(f"outputs: {len(outputs)}")
    for out in outputs:
        text = out.get("text") or (out.get("data") or {}).get("text/plain") or ""
        if isinstance(text, list):
            text = "".join(text)
        lines.append("  " + str(text).rstrip().replace("\n", "\n  "))
    return "\n".join(lines)
