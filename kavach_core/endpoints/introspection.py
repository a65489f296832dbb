"""The introspection endpoint (RFC 7662; IN-01).

- POST, form body (RFC 7662 §2.1). The caller must authenticate as a **confidential** client
  (``client_secret_basic`` or ``client_secret_post``). Public clients are refused with 401
  ``invalid_client``: they hold no credential, so anyone could call as them, and RFC 7662 §4
  requires the endpoint to be protected against token scanning.
- A caller learns only about tokens issued to itself. A token issued to another client is
  answered ``{"active": false}`` exactly as an unknown one (RFC 7662 §2.2: the server "MAY
  respond differently to different protected resources"; §4: never reveal another party's
  data). kavachOS resource servers verify the JWT themselves and do not need introspection.
- An access token is active when it verifies (RFC 9068 §4), has not expired, and neither it
  nor its grant is revoked (``IsTokenRevoked``). A refresh token is active when its grant
  exists, is not revoked or expired, and it is the family's current generation.
- Every response carries ``Cache-Control: no-store`` (RFC 7662 §2.2 responses hold token data).
"""

from __future__ import annotations

from typing import Any

from .. import effects as fx
from .. import presented_tokens
from ..client_auth import authenticate, authentication_failed, challenge_headers
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import HttpRequest, Response, client_address, error_response, json_response
from ..messages.introspection import IntrospectionRequest, parse
from ..records import Client
from ..scopes import format_scope

INACTIVE: dict[str, Any] = {"active": False}


def _access(ctx: Context, client: Client, token: str) -> Flow[dict[str, Any] | None]:
    """The RFC 7662 §2.2 answer for an access token, or ``None`` when it is not one of ours."""
    found = yield from presented_tokens.access_token(ctx, token)
    if found is None:
        return None
    if found.client_id != client.client_id:
        return INACTIVE
    revoked = yield fx.IsTokenRevoked(found.jti, found.grant_id)
    if revoked:
        return INACTIVE
    return {
        "active": True,
        "scope": format_scope(found.scopes),
        "client_id": found.client_id,
        "sub": found.subject,
        "aud": found.audience,
        "iss": ctx.config.issuer,
        "exp": found.expires_at,
        "iat": found.issued_at,
        "jti": found.jti,
        "token_type": "Bearer",
    }


def _refresh(ctx: Context, client: Client, token: str) -> Flow[dict[str, Any] | None]:
    """The RFC 7662 §2.2 answer for a refresh token, or ``None`` when it is not one of ours."""
    found = yield from presented_tokens.refresh_token(ctx, token)
    if found is None:
        return None
    grant = found.grant
    if grant is None or grant.client_id != client.client_id or not found.is_current(token, ctx.now):
        return INACTIVE
    return {
        "active": True,
        "scope": format_scope(grant.scopes),
        "client_id": grant.client_id,
        "sub": grant.subject,
        "aud": list(grant.resources),
        "iss": ctx.config.issuer,
        "exp": min(grant.expires_at, grant.refresh_expires_at),
        "iat": grant.rotated_at,
    }


def introspect(ctx: Context, client: Client, msg: IntrospectionRequest) -> Flow[Response]:
    """Describe ``msg.token`` to the authenticated confidential ``client`` (RFC 7662 §2.2)."""
    kinds = (_refresh, _access)
    if msg.token_type_hint == "access_token":
        kinds = (_access, _refresh)
    body: dict[str, Any] = INACTIVE
    for kind in kinds:
        answer = yield from kind(ctx, client, msg.token)
        if answer is not None:
            body = answer
            break
    return json_response(200, body, no_store=True)


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """``POST`` introspection endpoint; writes nothing, ever."""
    try:
        msg = parse(req)
        client = yield from authenticate(ctx, msg.credentials, client_address(req))
        if not client.is_confidential:
            raise authentication_failed()
    except OAuthError as err:
        return error_response(err, headers=challenge_headers(err))
    return (yield from introspect(ctx, client, msg))
