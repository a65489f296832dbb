"""Stores that fail on every effect, for what the server answers when its store does (GN-03).

:class:`DownStore` is an outage (``StoreUnavailable``: 503 with ``Retry-After``, a warning naming
its reason); :class:`BrokenStore` has a bug of its own (500, saying nothing of its message, which
names a file to show it never reaches a client).
"""

from __future__ import annotations

from typing import Any

from kavach_core.drivers import StoreUnavailable


class DownStore:
    """A store whose database cannot be reached."""

    def perform(self, effect: Any) -> Any:
        raise StoreUnavailable("database is locked")


class BrokenStore:
    """A store with a bug: every call raises something that is not an outage."""

    def perform(self, effect: Any) -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")
