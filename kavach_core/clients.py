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
    (:func:`_charge`), and for a known one's refetch that fails (:func:`_refetch_failed`).
    """
    if not client_id or len(client_id) > client_documents.MAX_CLIENT_ID:
        return None
    client: Client | None = yield fx.GetClient(client_id)
    if client is not None and (client.expires_at is None or client.expires_at > ctx.now):
        return client
    if ctx.config.client_id_metadata_documents and client_documents.looks_like_url(client_id):
        known = client is not None or (yield from _seen(ctx, client_id, 0))
        if not known:
            yield from _charge(ctx, requester)
        elif not (yield from _refetch_failed(ctx, requester, 0)):
            raise client_documents.refused("too many failed fetches of client documents from this address; try later")
        try:
            client = yield from client_documents.resolve(ctx, client_id)
        except client_documents.DocumentRefused:
            if known:
                yield from _refetch_failed(ctx, requester, 1)
            raise
        yield from _seen(ctx, client_id, 1)
        return client
    return None


def count_registration(ctx: Context, requester: str | None) -> Flow[bool]:
    """One registration against ``requester``'s rate limit (RG-03): whether it is within the limit.
    Callers whose address is not known share one bucket; a limit of 0 counts nothing."""
    return (yield from _per_address(ctx, "register", requester, 1))


def _per_address(ctx: Context, kind: str, requester: str | None, step: int) -> Flow[bool]:
    """``step`` events of ``kind`` counted against ``requester``'s address in the registration
    rate window (RG-03's limit): whether the count stays within it; ``step=0`` counts nothing and
    asks whether one more event would. Callers whose address is not known share one bucket; a
    limit of 0 counts nothing."""
    policy = ctx.config.registration
    if policy.rate_limit == 0:
        return True
    bucket = f"{kind}:{requester if requester is not None else '*'}"
    limit = policy.rate_limit - 1 if step == 0 else policy.rate_limit
    return bool((yield fx.Hit(bucket, limit, policy.rate_window, ctx.now, step=step)))


def _charge(ctx: Context, requester: str | None) -> Flow[None]:
    """One registration (:func:`count_registration`) for a document client not known here yet:
    such a client registers by being fetched, and without a limit anyone could make this server
    fetch URL after URL (holding its fetch slots). A client already stored and refetched when its
    copy expires is not charged, nor is one whose document was fetched and kept within the
    current rate window although its copy has since been purged (:func:`_seen`)."""
    if not (yield from count_registration(ctx, requester)):
        raise client_documents.refused("too many new clients from this address; try again later")


def _refetch_failed(ctx: Context, requester: str | None, step: int) -> Flow[bool]:
    """Failed refetches of known document clients, per address (as registrations are counted):
    ``step=1`` counts one, ``step=0`` asks whether the address may try another (fewer than the
    registration limit failed in the window now running). A refetch that succeeds costs nothing
    (its copy is then kept for at least the documents' shortest lifetime); one that fails is not
    kept (an error answer is not cached), so without this count a URL accepted once would make
    this server fetch it on every request for free, a slow host holding a fetch slot each time."""
    return (yield from _per_address(ctx, "document-failures", requester, step))


def _seen(ctx: Context, client_id: str, step: int) -> Flow[bool]:
    """Whether the document ``client_id`` was fetched and accepted in the registration rate
    window now running; ``step=1`` records that it just was. Counted in a bucket of its own,
    named by the URL's digest, so the mark outlives the purge of the client's expired copy."""
    policy = ctx.config.registration
    if policy.rate_limit == 0:
        return False
    bucket = f"document:{digest(client_id)}"
    return not (yield fx.Hit(bucket, 0, policy.rate_window, ctx.now, step=step))
