"""The per-request context: configuration, the current time and the entropy source.

The core never reads a clock or an entropy source of its own; the caller passes ``now`` (whole
seconds since the epoch) and ``entropy`` (a function returning n random bytes), so every flow
is deterministic under test.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .config import Config


@attrs.frozen
class Context:
    config: Config
    now: int
    entropy: Callable[[int], bytes] = attrs.field(repr=False)

    def random(self, n: int) -> bytes:
        """``n`` bytes from the injected source; a short answer is a programming error."""
        data = self.entropy(n)
        if not isinstance(data, bytes) or len(data) != n:
            raise ValueError("the entropy source returned the wrong number of bytes")
        return data
