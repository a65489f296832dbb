"""aiohttp: mount the authorization server, guard handlers with a middleware. Translation only.

    server = AuthorizationServer(config, store, users=users)
    app = web.Application(middlewares=[guard_middleware(server, "https://example.com/mcp")])
    app.router.add_post("/mcp", mcp)
    mount(app, server)                        # every advertised path, issuer path included

    async def mcp(request):
        principal = request[PRINCIPAL]        # kavach_core.guard.Principal
        body = await request.json()           # the body the guard read is still there

The middleware guards the resource's own path (or the ``paths`` given), reads the JSON-RPC
method(s) from the body to require their scopes, hands the handler a copy of the request without
the ``Authorization`` header (RS-04), and returns the handler's response as it is, so a
:class:`~aiohttp.web.StreamResponse` streams unbuffered. It also answers the resource's
metadata (MD-03, CORS per MD-04) when :func:`mount` did not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web

from kavach_core.guard import Principal
from kavach_core.http import HttpRequest, Response
from kavach_core.resource_indicators import PRM_WELL_KNOWN, resource_path

from .server import TOO_LARGE, AuthorizationServer, failure_response, incoming

Required = Callable[[HttpRequest], "tuple[str, ...] | Response"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL: Any = getattr(web, "RequestKey", lambda name, _: name)("kavach.principal", Principal)
"""The request key holding the verified :class:`~kavach_core.guard.Principal` (a typed
``web.RequestKey`` named ``kavach.principal``; the plain string on aiohttp without them)."""


def _outgoing(response: Response) -> web.Response:
    out = web.Response(status=response.status, body=response.body)
    out.headers.popall(hdrs.CONTENT_TYPE, None)  # only what the core set
    for name, value in response.headers:
        out.headers.add(name, value)
    return out


def _translate(request: web.Request, body: bytes, headers: Iterable[tuple[str, str]] | None = None) -> HttpRequest:
    pairs = request.headers.items() if headers is None else headers
    return incoming(request.method, request.path, request.rel_url.raw_query_string, pairs, body, request.remote)


async def _body(request: web.Request) -> bytes | None:
    """The body (cached on the request for its handler), ``None`` past the app's ``client_max_size``."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None




def endpoint(server: AuthorizationServer) -> Handler:
    """An aiohttp handler answering every request with :meth:`AuthorizationServer.ahandle`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            body = await _body(request)
            response = TOO_LARGE if body is None else await server.ahandle(_translate(request, body))
        except Exception as exc:  # GN-03: never aiohttp's own error page
            response = failure_response(exc)
        return _outgoing(response)

    return answer


def mount(app: web.Application, server: AuthorizationServer) -> None:
    """Add every path the authorization server answers (metadata, endpoints, sign-in and consent)."""
    answer = endpoint(server)
    for path in server.paths():
        app.router.add_route(hdrs.METH_ANY, path, answer)


def guard_middleware(
    server: AuthorizationServer,
    resource: str,
    *,
    paths: Iterable[str] | None = None,
    required: Required | None = None,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A middleware requiring a valid access token for ``resource`` on ``paths`` (RS-01..RS-05).

    ``paths`` defaults to the resource's own path. ``required(request)`` gives the scopes a
    request needs, or a response to send instead (default: from its JSON-RPC method(s), a batch
    needing every one).
    """
    canonical = server.protected(resource)
    guarded = frozenset(paths) if paths is not None else frozenset({resource_path(canonical) or "/"})
    need = required or server.required_scopes
    metadata_path = PRM_WELL_KNOWN + resource_path(canonical)
    metadata = endpoint(server)

    @web.middleware
    async def kavach_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == metadata_path and request.match_info.http_exception is not None:
            return await metadata(request)  # not mounted here: answer the resource's metadata
        if request.path not in guarded:
            return await handler(request)
        stripped = [(k, v) for k, v in request.headers.items() if k.lower() != "authorization"]
        inner = request.clone(headers=stripped)  # RS-04: the handler never sees the token
        try:
            body = await _body(inner)
            if body is None:
                return _outgoing(TOO_LARGE)
            req = _translate(request, body)
            scopes = need(req)
            outcome = scopes if isinstance(scopes, Response) else await server.aguard(canonical, req, scopes)
        except Exception as exc:
            outcome = failure_response(exc)
        if isinstance(outcome, Response):
            return _outgoing(outcome)
        inner[PRINCIPAL] = outcome
        return await handler(inner)

    return kavach_guard
