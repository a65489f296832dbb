"""Storage engines: each implements every effect in :mod:`kavach_core.effects` atomically.

- :class:`~kavach.stores.sqlite.SQLiteStore`: the embedded default (standard library only).

Every store offers ``perform(effect)`` for threads, ``await aperform(effect)`` for event loops
(never blocking the loop) and ``purge(now)`` to drop what has expired; a store that cannot
reach its backend raises :class:`kavach_core.drivers.StoreUnavailable` (the endpoint answers 503).
"""

from __future__ import annotations

from .sqlite import SchemaVersionError, SQLiteStore, SQLiteStoreError

__all__ = ["SQLiteStore", "SQLiteStoreError", "SchemaVersionError"]
