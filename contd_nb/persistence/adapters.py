"""Journal backends by name, and ``open_store`` to pick one from a path, URL or environment.

Where the journal is, in order: the ``journal`` argument; ``CONTD_JOURNAL``; ``DATABASE_URL``
when it is a ``postgresql://`` URL; else ``.contd/journal.duckdb`` under the current folder.

PostgreSQL (``postgresql://user:pw@host:port/db?schema=NAME``) needs the optional dependency
``pip install 'contd_nb[postgres]'`` (psycopg 3 and psycopg_pool), imported only when used.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..sdk.errors import ConfigurationError
from .base import JournalStore
from .duckdb_store import DuckDBStore
from .memory_store import MemoryStore
from .postgres_store import PostgresStore  # psycopg itself is imported on first use

__all__ = ["DEFAULT_JOURNAL", "DuckDBAdapter", "DuckDBStore", "JournalStore", "MemoryAdapter",
           "MemoryStore", "PostgresAdapter", "PostgresStore", "open_store", "resolve_journal"]

DEFAULT_JOURNAL = ".contd/journal.duckdb"
DuckDBAdapter = DuckDBStore
MemoryAdapter = MemoryStore

_stores: dict[tuple[str, int], JournalStore] = {}
_stores_lock = threading.Lock()


def resolve_journal(journal: str | os.PathLike | None = None) -> str:
    """The journal location that ``open_store(journal)`` would use, as text."""
    if journal is not None:
        return str(journal)
    env = os.environ.get("CONTD_JOURNAL")
    if env:
        return env
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgresql://", "postgres://")):
        return url
    return DEFAULT_JOURNAL


def open_store(journal: str | os.PathLike | JournalStore | None = None) -> JournalStore:
    """A store for a journal location. DuckDB files are shared: one store per file and
    process, so every engine and client of a process uses the same connection."""
    if isinstance(journal, JournalStore):
        return journal
    where = resolve_journal(journal)
    if where in ("memory", ":memory:"):
        return MemoryStore()
    if where.startswith(("postgresql://", "postgres://")):
        key = (where, os.getpid())  # one pool per URL (schema included) and process
        with _stores_lock:
            store = _stores.get(key)
            if store is None or store._closed:
                store = _stores[key] = PostgresStore(where)
            return store
    if "://" in where:
        raise ConfigurationError(f"journal {where!r} is not a file path or postgresql:// URL")
    path = str(Path(where).expanduser().resolve())
    key = (path, os.getpid())
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store._closed:
            store = _stores[key] = DuckDBStore(path)
        return store


class PostgresAdapter(PostgresStore):
    """The PostgreSQL journal; without a URL it uses ``DATABASE_URL``."""

    def __init__(self, url: str | None = None, **options) -> None:
        url = url or os.environ.get("DATABASE_URL")
        if not url:
            raise ConfigurationError(
                "PostgresAdapter() needs a URL: pass one or set DATABASE_URL "
                "(postgresql://user:password@host:5432/dbname)")
        super().__init__(url, **options)
