"""Starlette and FastAPI: mount the authorization server, guard any ASGI app. Translation only.

    server = AuthorizationServer(config, store, users=users)
    app = Starlette(routes=[Route("/mcp", KavachGuard(mcp_app, server, "https://example.com/mcp"))])
    mount(app, server)

:func:`mount` adds every path the metadata advertises (issuer paths included) and the sign-in
and consent forms. :class:`KavachGuard` is pure ASGI: it reads the request body to learn the
JSON-RPC method(s), replays it to the wrapped app, passes the response through untouched
(streaming included) and puts the verified :class:`~kavach_core.guard.Principal` in
``scope["state"]["principal"]`` (``request.state.principal``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route, Router

from kavach_core.http import HttpRequest, Response
from kavach_core.resource_indicators import PRM_WELL_KNOWN, resource_path
from kavach_core.router import cors_headers

from .mcp_sessions import HEADER as SESSION_HEADER
from .mcp_sessions import SessionBinding, refuse
from .origins import origin_of
from .server import TOO_LARGE, AuthorizationServer, failure_response, guarded_body_problem, incoming

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Required = Callable[[HttpRequest], "tuple[str, ...] | Response"]

MAX_BODY = 4 * 1024 * 1024


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client left before its body was complete: nothing of it is acted on (RFC 9112 §8)."""


async def _read_rest(receive: Receive, limit: int, message: Message) -> bytes:
    """The body from ``message`` (already received) on, chunk by chunk, up to ``limit`` bytes;
    :class:`_Gone` when the client disconnects first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


def _translate(scope: Scope, body: bytes) -> HttpRequest:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    client = scope.get("client")
    peer = client[0] if client else None
    return incoming(scope["method"], scope["path"], scope.get("query_string", b""), headers, body, peer)


_NO_CONTENT_LENGTH = frozenset({204, 304})
"""Statuses sent without ``Content-Length`` (RFC 9110 §8.6: a server MUST NOT send it in a 204;
a 304 would state the length of the representation, which is not sent)."""


async def _send(send: Send, response: Response) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    if response.header("content-length") is None and response.status not in _NO_CONTENT_LENGTH:
        headers.append((b"content-length", str(len(response.body)).encode()))  # the core sets it only for HEAD
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def read_body(
    receive: Receive, send: Send, too_large: Response = TOO_LARGE, declared: bytes | None = None
) -> bytes | None:
    """The whole request body; ``None`` once ``too_large`` (413) has been sent for one over
    :data:`MAX_BODY`, or when the client left before the body was complete (nothing is sent,
    nothing acted on). A ``Content-Length`` value ``declared`` over the limit is answered before
    any of the body is read (or waited for)."""
    if declared is not None and _over_limit(declared):
        await _send(send, too_large)
        return None
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):  # the usual: one message
        body: bytes = message.get("body", b"")
        if len(body) <= MAX_BODY:
            return body
    else:
        try:
            return await _read_rest(receive, MAX_BODY, message)
        except _TooLarge:
            pass
        except _Gone:
            return None
    await _send(send, too_large)
    return None


def _over_limit(declared: bytes) -> bool:
    """Whether a ``Content-Length`` value declares a body over :data:`MAX_BODY` (one that is no
    number is the server's to refuse; the body is read as it comes then)."""
    if len(declared) < _LIMIT_DIGITS or not declared.isdigit():  # the usual small body: one comparison
        return False
    digits = declared.lstrip(b"0")
    return len(digits) > _LIMIT_DIGITS or int(digits or b"0") > MAX_BODY


_LIMIT_DIGITS = len(str(MAX_BODY))


class _Headers:
    """A request's headers as the guard reads them, in one pass: the ``Authorization`` values,
    the ``Mcp-Session-Id`` values, the ``Content-Encoding`` and ``Content-Type`` values, and
    every other header (what the wrapped app gets, with the session id the binding opens).

    Names are compared case-insensitively whatever the server sends (ASGI only recommends
    lowercase), so no spelling of the header reaches the wrapped app (RS-04)."""

    __slots__ = ("authorization", "codings", "length", "others", "sessions", "types")

    def __init__(self, scope: Scope) -> None:
        self.authorization: list[str] = []
        self.sessions: list[bytes] = []
        self.others: list[tuple[bytes, bytes]] = []
        self.codings: list[str] = []
        self.types: list[str] = []
        self.length: bytes | None = None
        for header in scope["headers"]:
            name = header[0].lower()
            if name == b"authorization":
                self.authorization.append(header[1].decode("latin-1"))
                continue
            if name == SESSION_HEADER:
                self.sessions.append(header[1])
                continue
            if name == b"content-encoding":
                self.codings.append(header[1].decode("latin-1"))
            elif name == b"content-type":
                self.types.append(header[1].decode("latin-1"))
            elif name == b"content-length":
                self.length = header[1]
            self.others.append(header)


class KavachEndpoint:
    """An ASGI app answering every request with :meth:`AuthorizationServer.ahandle`."""

    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # nothing here speaks WebSocket; lifespan is the app's
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        too_large = TOO_LARGE.with_headers(cors_headers(self.server.config, scope["path"]))
        body = await read_body(receive, send, too_large, _Headers(scope).length)  # with CORS, as the endpoints answer
        if body is not None:
            await _send(send, await self.server.ahandle(_translate(scope, body)))


def mount(app: Starlette, server: AuthorizationServer) -> None:
    """Add the authorization server's paths in front of ``app``'s own routes (Starlette or FastAPI)."""
    if not isinstance(getattr(app, "router", None), Router):  # a guard wrapping the app, say: no routes to add to
        raise TypeError(
            f"mount adds routes to a Starlette or FastAPI app, not a {type(app).__name__} (a KavachGuard serves"
            " the authorization server itself when the issuer shares the resource's origin)"
        )
    endpoint = KavachEndpoint(server)
    app.router.routes[0:0] = [Route(path, endpoint) for path in server.paths()]


class KavachGuard:
    """Pure ASGI middleware requiring a valid access token for ``resource`` (RS-01..RS-05).

    ``required(request)`` gives the scopes a request needs (default: from its JSON-RPC
    method(s), a batch needing every one), or a response to send instead. Requests for the
    resource's metadata (MD-03, with CORS per MD-04) are answered without a token, and so is
    the whole authorization server when it shares the resource's origin (so wrapping the app
    serves the authorization server beside it). The ``Authorization`` header is not passed on (RS-04). The
    ``Mcp-Session-Id`` values the app issues are bound to the principal they were issued to
    (:mod:`kavach.mcp_sessions`): nobody else's token continues a session. A session named
    otherwise (the MCP SDK's SSE transport puts its id in the event stream's endpoint URL) is
    the app's to keep to its user: wrap an SDK app with :func:`kavach.mcp.guard`, which gives the
    SDK the verified user for that check.
    """

    def __init__(
        self, app: ASGIApp, server: AuthorizationServer, resource: str, *, required: Required | None = None
    ) -> None:
        if required is not None and not callable(required):
            raise TypeError("required must be a function of the request giving its scopes (or a response)")
        self.app = app
        self.sessions = SessionBinding(server.config.secret)
        self.server = server
        self.resource = server.protected(resource)
        own = origin_of(server.config.issuer)
        same_origin = own is not None and origin_of(self.resource) == own
        metadata_path = PRM_WELL_KNOWN + resource_path(self.resource)
        self.public = frozenset(server.paths()) if same_origin else frozenset({metadata_path})
        self.required = required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self.app(scope, receive, send)
            await send({"type": "websocket.close", "code": 1008})
            return None
        headers = _Headers(scope)
        body = await read_body(receive, send, declared=headers.length)
        if body is None:
            return None
        if scope["path"] in self.public:
            return await _send(send, await self.server.ahandle(_translate(scope, body)))
        refused = guarded_body_problem(headers.codings, headers.types) if headers.codings or headers.types else None
        if refused is not None:
            return await _send(send, refused)
        if self.required is None:
            outcome = await self.server.aguard_body(self.resource, headers.authorization, body)
        else:
            try:  # the application's own hook: what it raises is answered as the server's failures are
                need = self.required(_translate(scope, body))
            except Exception as exc:
                return await _send(send, failure_response(exc))
            if isinstance(need, Response):
                return await _send(send, need)
            outcome = await self.server.aguard_values(self.resource, headers.authorization, need)
        if isinstance(outcome, Response):
            return await _send(send, outcome)
        others = headers.others
        owner = (outcome.subject, outcome.client_id)
        if headers.sessions:  # the session is this principal's, or the app never hears of it
            opened = self.sessions.open(headers.sessions, owner)
            if isinstance(opened, tuple):
                return await refuse(send, *opened)
            others.append((SESSION_HEADER, opened))
            send = self.sessions.sealing(send, owner)
        elif b"initialize" in body:  # a session starts only at initialization (an id not sealed never opens)
            send = self.sessions.sealing(send, owner)
        inner = dict(scope)
        inner["state"] = {**(scope.get("state") or {}), "principal": outcome}
        inner["headers"] = others
        await self.app(inner, _replay(body, receive), send)
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
