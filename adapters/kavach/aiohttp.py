"""aiohttp: mount the authorization server, guard handlers with a middleware. Translation only.

    server = AuthorizationServer(config, store, users=users)
    app = web.Application(middlewares=[guard_middleware(server, "https://example.com/mcp")])
    app.router.add_post("/mcp", mcp)
    mount(app, server)                        # every advertised path, issuer path included

    async def mcp(request):
        principal = request[PRINCIPAL]        # kavach_core.guard.Principal
        body = await request.json()           # the body the guard read is still there

The middleware guards the resource's own path (or the ``paths`` given), reads the JSON-RPC
method(s) from the body to require their scopes, removes the ``Authorization`` header from the
request before the handler sees it (RS-04; the same request object, so state the handler sets is
seen by outer middlewares), and returns the handler's response as it is, so a
:class:`~aiohttp.web.StreamResponse` streams unbuffered. It also answers the resource's
metadata (MD-03, CORS per MD-04) when :func:`mount` did not.

Bodies are capped at :data:`MAX_BODY` (4 MiB, as in the Starlette and Flask adapters) on guarded
paths and on the mounted endpoints, whatever the application's ``client_max_size``: a larger one
does not let a bigger body through, a smaller one does not refuse a body the other adapters take.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

from kavach_core.guard import Principal
from kavach_core.http import HttpRequest, Response, json_response
from kavach_core.resource_indicators import PRM_WELL_KNOWN, resource_path
from kavach_core.router import cors_headers

from .server import (
    FORM_TYPES,
    PARSED_AWAY,
    TOO_LARGE,
    AuthorizationServer,
    bare_path,
    body_coding_problem,
    failure_response,
    guarded_body_problem,
    guarded_paths,
    incoming,
)

Required = Callable[[HttpRequest], "tuple[str, ...] | Response"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 4 * 1024 * 1024
"""The largest request body the guard and the mounted endpoints read; past it they answer
:data:`~kavach.server.TOO_LARGE` (413). The application's ``client_max_size`` does not apply here."""

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


UNREADABLE = json_response(
    400, {"error": "invalid_request", "error_description": "the request body could not be read"}, no_store=True
)
"""A body that ended before its length, or whose coding aiohttp could not undo: answered, not logged
as a server error (the client may already be gone)."""


async def _body(request: web.Request, *, guarded: bool) -> bytes | Response:
    """The whole body; or the answer to send instead: 415 for a content-coded body (aiohttp would
    decode it itself, other frameworks do not, and every reader must see what was sent), and on a
    ``guarded`` path for a body the server behind may read otherwise than the guard
    (:func:`~kavach.server.guarded_body_problem`), 413 past :data:`MAX_BODY`, 400 for a body that
    cannot be read to its end. Kept on the request, where ``request.read()`` (``text()``,
    ``json()``, ``post()``) finds it, so the handler reads it again.

    ``request.read()`` itself stops at the app's ``client_max_size`` instead, so the stream is read
    here. A body an outer middleware already read is the one aiohttp kept; on a ``guarded`` path,
    one it read as a multipart form, keeping no copy, is refused (:data:`~kavach.server.PARSED_AWAY`)."""
    codings = request.headers.getall(hdrs.CONTENT_ENCODING, ())
    if guarded:
        refused = guarded_body_problem(codings, request.headers.getall(hdrs.CONTENT_TYPE, ()))
    else:
        refused = body_coding_problem(codings) if codings else None
    if refused is not None:
        return refused
    if (request.content_length or 0) > MAX_BODY:  # declared too large: answered before any of it is read
        return TOO_LARGE
    try:
        if not request.can_read_body:  # read before (aiohttp kept it), or none at all
            if guarded and request._read_bytes is None and request.content_type in FORM_TYPES and request._post:
                return PARSED_AWAY  # a multipart post() read it, keeping only the form
            body = await request.read()
            return body if len(body) <= MAX_BODY else TOO_LARGE
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > MAX_BODY:
                return TOO_LARGE
            chunks.append(chunk)
    except (HttpProcessingError, RequestPayloadError, ConnectionError):
        return UNREADABLE
    body = b"".join(chunks)
    request._read_bytes = body  # where aiohttp keeps a read body (BaseRequest.read)
    if await request.read() is not body:
        raise RuntimeError("aiohttp did not keep the request body for the handler")
    return body


def _unread(response: Response) -> web.StreamResponse:
    """``response`` for a request whose body was not read to its end (413, 415, 400 from
    :func:`_body`), with ``Connection: close``: the rest of the body is not worth reading."""
    out = _outgoing(response)
    out.force_close()
    return out


def _is_authorization(name: bytes) -> bool:
    return name.lower() == b"authorization"


def _remove_authorization(request: web.Request) -> None:
    """Remove every ``Authorization`` header from ``request`` itself (RS-04), then check it is gone.

    aiohttp's only public way to change a request's headers, ``clone(headers=...)``, refuses a
    request whose body was read (an outer middleware may have read it), re-encodes every header
    value as UTF-8 (a latin-1 byte, RFC 9110 §5.5 obs-text, makes it raise), and gives the handler
    a copy whose state outer middlewares never see. So the request's own header fields are
    replaced: the parsed ones and the raw ones, the other headers' bytes untouched. Anything
    unexpected raises, and the guard answers 500 without calling the handler."""
    if hdrs.AUTHORIZATION in request.headers or any(_is_authorization(k) for k, _ in request.raw_headers):
        kept = CIMultiDict(request.headers)
        kept.popall(hdrs.AUTHORIZATION, None)
        raw = tuple((k, v) for k, v in request.raw_headers if not _is_authorization(k))
        message = request._message._replace(headers=CIMultiDictProxy(kept), raw_headers=raw)
        request._message = message
        request._headers = message.headers
        request._cache.pop("headers", None)  # what the reified properties kept
        request._cache.pop("raw_headers", None)
    if hdrs.AUTHORIZATION in request.headers or any(_is_authorization(k) for k, _ in request.raw_headers):
        raise RuntimeError(
            "kavach could not remove the Authorization header from the aiohttp request, so the handler"
            " is not called (RS-04); this aiohttp version may need a kavach update"
        )


def endpoint(server: AuthorizationServer) -> Handler:
    """An aiohttp handler answering every request with :meth:`AuthorizationServer.ahandle`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            body = await _body(request, guarded=False)
            if isinstance(body, Response):  # answered as the endpoints answer: with their CORS headers
                return _unread(body.with_headers(cors_headers(server.config, request.path)))
            response = await server.ahandle(_translate(request, body))
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
) -> Middleware:
    """A middleware requiring a valid access token for ``resource`` on ``paths`` (RS-01..RS-05).

    ``paths`` defaults to the resource's own path. ``required(request)`` gives the scopes a
    request needs, or a response to send instead (default: from its JSON-RPC method(s), a batch
    needing every one). The resource's metadata is answered when :func:`mount` did not route it,
    on an application that receives the origin root's paths: on a sub-app it never arrives (the
    path is the root's, RFC 9728 §3.1), so mount the server on the outermost application then.
    """
    if required is not None and not callable(required):
        raise TypeError(f"required= takes a function of the request giving its scopes, not {required!r}")
    canonical = server.protected(resource)
    guarded = guarded_paths(paths, canonical)
    metadata_path = PRM_WELL_KNOWN + resource_path(canonical)
    metadata = endpoint(server)

    @web.middleware
    async def kavach_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == metadata_path and request.match_info.http_exception is not None:
            return await metadata(request)  # not mounted here: answer the resource's metadata
        if bare_path(request.path) not in guarded:
            return await handler(request)
        try:
            body = await _body(request, guarded=True)
            if isinstance(body, Response):
                return _unread(body)
            req = _translate(request, body)
            authorization = req.header_values("authorization")
            if required is None:
                outcome = await server.aguard_body(canonical, authorization, body)
            else:  # the body's codings and charset were checked by _body
                need = required(req)
                if isinstance(need, Response):
                    outcome = need
                else:
                    outcome = await server.aguard_values(canonical, authorization, need)
            if not isinstance(outcome, Response):
                _remove_authorization(request)  # RS-04: the handler never sees the token
        except Exception as exc:
            outcome = failure_response(exc)
        if isinstance(outcome, Response):
            return _outgoing(outcome)
        request[PRINCIPAL] = outcome
        return await handler(request)

    return kavach_guard
