"""Memos: the answers a pure function gave for its last few distinct arguments.

A request's texts (a resource URI, a JOSE header segment, a peer address) repeat from one
request to the next, and what is derived from them never changes, so each is worked out once.
Arguments come from clients, so a memo is bounded: when full it forgets everything at once, a
step that costs one dictionary clear and no bookkeeping per hit. Reads and writes are single
dictionary operations, safe between threads without a lock.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` remembered answers, keyed by argument."""

    __slots__ = ("_entries", "get", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[K, V] = {}
        self.get = self._entries.get
        """The remembered answer for a key, or ``None`` (the dictionary's own ``get``: a hit costs
        no more than a dictionary lookup)."""

    def put(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` (forgetting everything first when full); returns ``value``."""
        entries = self._entries
        if len(entries) >= self.size:
            entries.clear()
        entries[key] = value
        return value

    def __reduce__(self) -> tuple[type[Memo[K, V]], tuple[int]]:
        """A copy or an unpickled memo starts empty: what it held is only ever a cache (and its
        ``get`` must be the new dictionary's own)."""
        return (type(self), (self.size,))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(tuple(self._entries))
