"""The key that signs pickled payloads of a journal.

A pickled payload is only unpickled after its HMAC checks against this key, so a journal row
written by someone without the key cannot run code in your kernel. The key is
``CONTD_SIGNING_KEY`` if set, else a random 32-byte file beside the journal (``journal.key``,
mode 0600), created on first use. A journal on a server (PostgreSQL) has no file beside it: its
key is the user's, ``~/.contd/signing.key`` (``key_for_user``); machines that share such a
journal share the key through CONTD_SIGNING_KEY (or a copy of that file).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["USER_KEY_FILE", "key_for_file", "key_for_user", "key_from_env"]

USER_KEY_FILE = "~/.contd/signing.key"


def key_from_env() -> bytes | None:
    value = os.environ.get("CONTD_SIGNING_KEY")
    return value.encode() if value else None


def key_for_file(journal_path: str | os.PathLike) -> bytes:
    env = key_from_env()
    if env:
        return env
    key_path = Path(journal_path).with_suffix(".key")
    try:
        return key_path.read_bytes()
    except FileNotFoundError:
        pass
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # write a private temp file, then link it into place: readers never see a half key
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, key_path)
    except FileExistsError:  # another process made it first: use theirs
        pass
    finally:
        tmp.unlink()
    return key_path.read_bytes()


def key_for_user() -> bytes:
    """``CONTD_SIGNING_KEY``, else the user's key file ``~/.contd/signing.key`` (0600, made on
    first use): the key of journals that live on a server."""
    return key_for_file(Path(USER_KEY_FILE).expanduser())
