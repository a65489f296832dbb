"""Storage engines: each implements every effect in :mod:`kavach_core.effects` atomically.

- :class:`~kavach.stores.sqlite.SQLiteStore`: the embedded default (standard library only).
- :class:`~kavach.stores.postgres.PostgresStore`: several processes on one PostgreSQL (``kavachos[postgres]``).
- :class:`~kavach.stores.redis.RedisStore`: several processes on one Redis (``kavachos[redis]``).

:func:`open_store` makes any of them from one string (a URL or a file path).

Every store offers ``perform(effect)`` for threads, ``await aperform(effect)`` for event loops
(never blocking the loop) and ``purge(now)`` to drop what has expired; a store that cannot
reach its backend raises :class:`kavach_core.drivers.StoreUnavailable` (the endpoint answers 503).
"""

from __future__ import annotations

from typing import Any

from .sqlite import DamagedDatabaseError, SchemaVersionError, SQLiteStore, SQLiteStoreError

__all__ = ["DamagedDatabaseError", "SQLiteStore", "SQLiteStoreError", "SchemaVersionError", "open_store", "sqlite_path"]

_SQLITE = "sqlite:///"


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (scheme in any letter case); ``ValueError`` for other
    ``sqlite:`` forms (``sqlite://host/...``) and for ``sqlite:///`` alone, which name no local file."""
    if url[: len(_SQLITE)].lower() != _SQLITE or len(url) == len(_SQLITE):
        raise ValueError(f"{url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
    return url[len(_SQLITE) :]


def open_store(url_or_path: str, **options: Any) -> Any:
    """The store named by ``url_or_path``; ``options`` go to its constructor.

    - ``memory:``: a :class:`~kavach_core.memory_store.MemoryStore` (one process, nothing kept);
    - ``postgresql://...`` or ``postgres://...``: a :class:`~kavach.stores.postgres.PostgresStore`
      (a ``schema`` query parameter picks the schema);
    - ``redis://...``, ``rediss://...`` or ``unix://...``: a :class:`~kavach.stores.redis.RedisStore`
      (a ``prefix`` query parameter sets the key prefix);
    - ``sqlite:///relative/path``, ``sqlite:////absolute/path`` (as SQLAlchemy writes them) or any
      other string, taken as a file path: a :class:`SQLiteStore`.

    Schemes are matched in any letter case.
    """
    scheme = url_or_path.partition("://")[0].lower() if "://" in url_or_path else ""
    if url_or_path == "memory:":
        from kavach_core.memory_store import MemoryStore

        return MemoryStore(**options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url_or_path, **options)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore(url_or_path, **options)
    if scheme == "sqlite":
        return SQLiteStore(sqlite_path(url_or_path), **options)
    if scheme:
        raise ValueError(
            f"unknown store {url_or_path!r}: use memory:, a file path, sqlite:///, postgresql:// or redis://"
        )
    return SQLiteStore(url_or_path, **options)
