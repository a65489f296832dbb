"""The official MCP Python SDK (``mcp``), protected by kavachOS in one import.

The SDK's own bearer check trusts whatever its ``TokenVerifier`` says and then checks neither the
audience (unless ``validate_token_resource`` is set and the verifier reports it) nor any scope
but the fixed ``AuthSettings.required_scopes``, compared exactly (no prefix rule) and the same for
every request. kavach closes both gaps; choose one of two ways.

**The SDK's auth, kavach's verifier** (audience, no per-method scope)::

    from kavach.mcp import sdk_auth
    tools = MCPServer("demo", **sdk_auth(server, "https://example.com/mcp"))
    app = tools.streamable_http_app()
    kavach.starlette.mount(app, server)          # when this process is also the authorization server

:class:`KavachTokenVerifier` checks the signature against the published keys, ``typ``, ``iss``,
the single audience equal to this resource's canonical URI (RS-04/RS-05), the lifetime and, through
the store, revocation; the SDK's ``get_access_token()`` then works in tools (its ``token`` empty).
:func:`auth_settings` turns on ``validate_token_resource`` too (the SDK compares the audience the
verifier reports). The SDK's own middleware leaves the ``Authorization`` header on the request its
app sees, and can answer a store outage only with a 500: the guard below does neither. Where
``mount`` does not put kavach's paths in front (an MCP server on an origin of its own), the
protected resource metadata and the 401 challenges are the SDK's too: its metadata lists no
``scopes_supported`` (MD-03) and no ``resource_name``, and its challenge names no ``scope`` and
says ``invalid_token`` even to a request that sent no token (RS-02). The guard serves kavach's.

**kavach's guard around the SDK's app** (audience and per-method scopes; recommended)::

    from kavach.mcp import guard
    from mcp.server.transport_security import TransportSecuritySettings
    tools = MCPServer("demo")                     # no token_verifier, no auth
    own = TransportSecuritySettings(allowed_hosts=["example.com"], allowed_origins=["https://example.com"])
    app = guard(tools.streamable_http_app(transport_security=own), server, "https://example.com/mcp")

The SDK's DNS-rebinding check is on by default and allows loopback hosts only: without the
server's own host in ``allowed_hosts`` it answers 421 to every request for it. (``kavach serve``
turns the SDK's check off and checks ``Origin`` itself, :mod:`kavach.origins`.)

:func:`guard` is :class:`kavach.starlette.KavachGuard` (RS-01..RS-05, each JSON-RPC method's scope,
``tools/call`` of ``N`` needing ``tools:call:N``, 403 step-up challenges, the resource metadata and,
on the issuer's origin, the whole authorization server) with the verified token handed to the SDK,
so ``get_access_token()`` works there too. The token string itself is not passed on (RS-04):
``AccessToken.token`` is empty and the ``Authorization`` header is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from starlette.authentication import AuthCredentials

from kavach_core.drivers import StoreUnavailable
from kavach_core.guard import Principal, authenticate

from .server import AuthorizationServer
from .starlette import ASGIApp, KavachGuard, Receive, Required, Scope, Send

log = logging.getLogger("kavach.mcp")

__all__ = ["KavachTokenVerifier", "auth_settings", "guard", "sdk_access_token", "sdk_auth"]


def sdk_access_token(principal: Principal, token: str = "") -> AccessToken:
    """The SDK's view of a verified kavach token (scopes, expiry, audience, subject, claims)."""
    t = principal.token
    return AccessToken(
        token=token,
        client_id=t.client_id,
        scopes=list(t.scopes),
        expires_at=t.expires_at,
        resource=t.audience,
        subject=t.subject,
        claims=dict(t.claims),
    )


class KavachTokenVerifier:
    """The SDK's ``TokenVerifier`` for tokens a kavach authorization server issued for ``resource``."""

    def __init__(self, server: AuthorizationServer, resource: str) -> None:
        self.server = server
        self.resource = server.protected(resource)

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's claims when it is valid for this resource now, else ``None`` (the SDK's 401).
        ``AccessToken.token`` is empty: tools get the claims, not the credential (RS-04).

        A store that cannot answer fails closed without calling the token invalid: the error
        propagates, and the SDK's app answers 500, so the client keeps its token and retries
        (a 401 ``invalid_token`` would send it to authorize again). :func:`guard` answers 503.
        """
        server = self.server
        flow = authenticate(server.config, self.resource, f"Bearer {token}", (), int(server.clock()), server.verified)
        try:
            outcome = await self.server.arun_flow(flow)
        except StoreUnavailable:
            log.warning("could not verify an access token: the store is unavailable")
            raise
        except Exception:
            log.warning("could not verify an access token", exc_info=True)
            return None
        return sdk_access_token(outcome) if isinstance(outcome, Principal) else None


def auth_settings(
    server: AuthorizationServer, resource: str, *, required_scopes: Iterable[str] | None = None
) -> AuthSettings:
    """The SDK's ``AuthSettings`` for ``resource``: kavach's issuer, the canonical resource URI,
    audience validation on. ``required_scopes`` are required of every request, matched exactly."""
    return AuthSettings.model_validate(  # strings, so the SDK keeps an empty path empty (RFC 8414 §3.3)
        {
            "issuer_url": server.config.issuer,
            "resource_server_url": server.protected(resource),
            "required_scopes": list(required_scopes) if required_scopes is not None else None,
            "validate_token_resource": True,
        }
    )


def sdk_auth(
    server: AuthorizationServer, resource: str, *, required_scopes: Iterable[str] | None = None
) -> dict[str, Any]:
    """``MCPServer(name, **sdk_auth(server, resource))``: the verifier and the settings together."""
    return {
        "token_verifier": KavachTokenVerifier(server, resource),
        "auth": auth_settings(server, resource, required_scopes=required_scopes),
    }


class _SdkIdentity:
    """Puts the guard's verified principal where the SDK looks for its authenticated user."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = (scope.get("state") or {}).get("principal")
        if not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        user = AuthenticatedUser(sdk_access_token(principal))
        scope = dict(scope, user=user, auth=AuthCredentials(list(principal.scopes)))
        reset = auth_context_var.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)


def guard(app: ASGIApp, server: AuthorizationServer, resource: str, *, required: Required | None = None) -> KavachGuard:
    """The SDK's ASGI app behind :class:`~kavach.starlette.KavachGuard`, the principal handed to the SDK.

    The resource's metadata is answered when its path reaches this app; under a Starlette
    ``Mount`` it does not (the path is the origin root's, RFC 9728 §3.1), so serve it from the
    outermost app (:func:`kavach.starlette.mount`)."""
    return KavachGuard(_SdkIdentity(app), server, resource, required=required)
