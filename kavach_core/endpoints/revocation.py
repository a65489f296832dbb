"""The revocation endpoint (RFC 7009; RV-01).

- POST, form body, client authentication as at the token endpoint (RFC 7009 §2.1). Public
  clients identify with their ``client_id`` (RFC 7009 §5 explicitly allows them); a failed
  authentication is 401 ``invalid_client`` with a ``Basic`` challenge when Basic was tried.
- A refresh token revokes its whole grant: the refresh-token family and every access token
  issued under it (RFC 7009 §2.1: "SHOULD also invalidate all access tokens based on the same
  authorization grant").
- An access token is revoked until it would have expired (``RevokeAccessToken``).
- ``token_type_hint`` only chooses which kind is tried first (RFC 7009 §2.1: the server
  "MUST extend its search across all of its supported token types").
- An unknown, invalid or expired token, or one issued to another client, is answered 200 and
  changes nothing (RFC 7009 §2.2: "invalid tokens do not cause an error response").
"""

from __future__ import annotations

from .. import effects as fx
from .. import presented_tokens
from ..client_auth import authenticate, challenge_headers
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import NO_STORE, HttpRequest, Response, client_address, error_response
from ..messages.revocation import RevocationRequest, parse
from ..records import Client


def _revoke_refresh(ctx: Context, client: Client, token: str) -> Flow[bool]:
    """Revoke the grant a refresh token of ``client`` names; ``True`` when it was one."""
    found = yield from presented_tokens.refresh_token(ctx, token)
    if found is None:
        return False
    grant = found.grant
    if grant is not None and grant.client_id == client.client_id and not grant.revoked:
        yield fx.RevokeGrant(found.grant_id, ctx.now)
    return True


def _revoke_access(ctx: Context, client: Client, token: str) -> Flow[bool]:
    """Revoke an access token of ``client`` until its expiry; ``True`` when it was one."""
    found = yield from presented_tokens.access_token(ctx, token)
    if found is None:
        return False
    if found.client_id == client.client_id:
        yield fx.RevokeAccessToken(found.jti, found.expires_at)
    return True


def revoke(ctx: Context, client: Client, msg: RevocationRequest) -> Flow[Response]:
    """Revoke ``msg.token`` on behalf of the authenticated ``client`` (RFC 7009 §2.1, §2.2)."""
    kinds = (_revoke_refresh, _revoke_access)
    if msg.token_type_hint == "access_token":
        kinds = (_revoke_access, _revoke_refresh)
    for kind in kinds:
        if (yield from kind(ctx, client, msg.token)):
            break
    return Response(200, NO_STORE, b"")


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """``POST`` revocation endpoint. Every rejected request writes nothing (GN-03)."""
    try:
        msg = parse(req)
        client = yield from authenticate(ctx, msg.credentials, client_address(req))
    except OAuthError as err:
        return error_response(err, headers=challenge_headers(err))
    return (yield from revoke(ctx, client, msg))
