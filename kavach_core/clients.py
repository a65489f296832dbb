"""Finding the client a request names.

Every endpoint looks clients up through :func:`lookup`, so the rule for where a client comes
from (registered, pre-registered, or a client ID metadata document) lives in one place.
"""

from __future__ import annotations

from . import client_documents
from . import effects as fx
from .context import Context
from .drivers import Flow
from .opaque import digest
from .records import Client


def lookup(ctx: Context, client_id: str, requester: str | None = None) -> Flow[Client | None]:
    """The client called ``client_id``, or ``None`` when there is none.

    A URL-shaped ``client_id`` names a client ID metadata document (CM-01): the stored copy while
    it is fresh, else the document fetched, validated and stored again
    (:func:`kavach_core.client_documents.resolve`). When that fails, raises
    :class:`~kavach_core.client_documents.DocumentRefused` (``invalid_client``, 401) whose
    description says why; callers turn it into their own error answer. ``requester``, the
    caller's address (``None`` when unknown), is charged for a document client not known here
    (:func:`_charge`).
    """
    if not client_id or len(client_id) > 2048:
        return None
    client: Client | None = yield fx.GetClient(client_id)
    if client is not None and (client.expires_at is None or client.expires_at > ctx.now):
        return client
    if ctx.config.client_id_metadata_documents and client_documents.looks_like_url(client_id):
        if client is None:
            yield from _charge(ctx, client_id, requester)
        client = yield from client_documents.resolve(ctx, client_id)
        yield from _seen(ctx, client_id, 1)
        return client
    return None


def count_registration(ctx: Context, requester: str | None) -> Flow[bool]:
    """One registration against ``requester``'s rate limit (RG-03): whether it is within the limit.
    Callers whose address is not known share one bucket; a limit of 0 counts nothing."""
    policy = ctx.config.registration
    if policy.rate_limit == 0:
        return True
    bucket = f"register:{requester}" if requester is not None else "register:*"
    return bool((yield fx.Hit(bucket, policy.rate_limit, policy.rate_window, ctx.now)))


def _charge(ctx: Context, client_id: str, requester: str | None) -> Flow[None]:
    """One registration (:func:`count_registration`) for a document client not known here yet:
    such a client registers by being fetched, and without a limit anyone could make this server
    fetch URL after URL (holding its fetch slots). A client already stored and refetched when its
    copy expires is not charged, nor is one whose document was fetched and kept within the
    current rate window although its copy has since been purged (:func:`_seen`)."""
    if (yield from _seen(ctx, client_id, 0)):
        return
    if not (yield from count_registration(ctx, requester)):
        raise client_documents.refused("too many new clients from this address; try again later")


def _seen(ctx: Context, client_id: str, step: int) -> Flow[bool]:
    """Whether the document ``client_id`` was fetched and accepted in the registration rate
    window now running; ``step=1`` records that it just was. Counted in a bucket of its own,
    named by the URL's digest, so the mark outlives the purge of the client's expired copy."""
    policy = ctx.config.registration
    if policy.rate_limit == 0:
        return False
    bucket = f"document:{digest(client_id)}"
    return not (yield fx.Hit(bucket, 0, policy.rate_window, ctx.now, step=step))
