"""Client authentication at the token, revocation and introspection endpoints.

RFC 6749 §2.3 and §3.2.1; OAuth 2.1 §2.4; TK-02: ``none`` for public clients,
``client_secret_basic`` and ``client_secret_post`` for confidential ones. A client must use the
method it registered; secrets are compared as digests in constant time. A failed attempt is
answered 401 with ``WWW-Authenticate: Basic``: RFC 6749 §5.2 requires the challenge when Basic
was tried, and RFC 9110 §15.5.2 a challenge on every 401 (Basic is a method the server takes).
"""

from __future__ import annotations

from .clients import lookup
from .context import Context
from .credentials import ClientCredentials
from .drivers import Flow
from .errors import OAuthError
from .opaque import digest, same
from .records import Client

BASIC_CHALLENGE = ("WWW-Authenticate", 'Basic realm="kavach", charset="UTF-8"')


def authentication_failed() -> OAuthError:
    """``invalid_client``: 401 (a ``Basic`` challenge is added by :func:`challenge_headers`)."""
    return OAuthError("invalid_client", "client authentication failed", status=401)


def challenge_headers(err: OAuthError) -> tuple[tuple[str, str], ...]:
    """The headers an ``invalid_client`` answer carries: the Basic challenge on its 401, whatever
    method the client tried."""
    if err.error == "invalid_client" and err.status == 401:
        return (BASIC_CHALLENGE,)
    return ()


def authenticate(ctx: Context, creds: ClientCredentials | None, requester: str | None = None) -> Flow[Client]:
    """The authenticated client, or :class:`OAuthError` ``invalid_client``. Writes nothing but
    what :func:`~kavach_core.clients.lookup` does for a client ID metadata document (``requester``
    is the caller's address, charged for a document client not known here)."""
    if creds is None:
        raise OAuthError("invalid_client", "client authentication required", status=401)
    client = yield from lookup(ctx, creds.client_id, requester)
    if client is None:
        # Burn comparable time so unknown and known ids are not told apart by timing.
        same(digest(creds.secret or ""), digest("kavach"))
        raise authentication_failed()
    registered = client.token_endpoint_auth_method
    if registered == "none":
        if creds.method != "none":
            raise authentication_failed()
        return client
    if creds.method != registered or creds.secret is None or client.secret_hash is None:
        raise authentication_failed()
    if not same(digest(creds.secret), client.secret_hash):
        raise authentication_failed()
    if client.secret_expires_at and client.secret_expires_at <= ctx.now:
        raise authentication_failed()
    return client
