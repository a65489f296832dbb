"""Finding the client a request names.

Every endpoint looks clients up through :func:`lookup`, so the rule for where a client comes
from (registered, pre-registered, or a client ID metadata document) lives in one place.
"""

from __future__ import annotations

from . import effects as fx
from .context import Context
from .drivers import Flow
from .records import Client


def lookup(ctx: Context, client_id: str) -> Flow[Client | None]:
    """The client called ``client_id``, or ``None`` when there is none."""
    if not client_id or len(client_id) > 2048:
        return None
    client = yield fx.GetClient(client_id)
    if client is not None and client.expires_at is not None and client.expires_at <= ctx.now:
        return None
    return client  # type: ignore[no-any-return]
