"""A streaming reverse proxy to an MCP server over Streamable HTTP (``kavach serve --upstream``).

The methods of Streamable HTTP (``POST`` with a JSON or an SSE answer, ``GET`` for the server's
SSE stream, ``DELETE`` to end a session) are forwarded to the one upstream URL, the query string
kept (less any ``access_token`` parameter, and less the parameters the upstream URL sets itself,
which stay the operator's); any other method is answered 405 here (``CONNECT``
would switch the connection's protocol, ``TRACE`` echo the request). The request body, already
read by the guard, is sent with its ``Content-Length``; the response body streams back without
buffering: an SSE answer reaches the client event by event, as the upstream writes it.
``Mcp-Session-Id``, ``MCP-Protocol-Version`` and ``Last-Event-ID`` pass through in both
directions like any end-to-end header.

What does not pass (RFC 9110 §7.6.1, RS-04):

- the client's ``Authorization`` header and any ``access_token`` query parameter, however spelt
  (:func:`parameter_name`): the access token was minted for this server and is never forwarded
  (no token passthrough, MCP authorization "Access Token Privilege Restriction"; RFC 6750 §2.3,
  OAuth 2.1 §5.1.3);
- hop-by-hop headers, and any header the ``Connection`` header names; ``Proxy``, which a CGI
  upstream would take for its own outgoing proxy (httpoxy, CVE-2016-5385);
- what an HTTP client adds by default: the proxy's own sends no ``User-Agent``, ``Accept`` or
  ``Accept-Encoding`` the client did not (an upstream honouring one would send a coding the
  client never asked for); and no cookie but the client's own, whatever ``client=`` is given:
  the proxy keeps none, so cookies the upstream sets for one person never reach it on another's
  request (a cookie is the user agent's, RFC 6265 §5.3). A ``client=`` given keeps the rest of
  its configuration (its own headers, which the client's of the same name never replace,
  authentication for the upstream, event hooks);
- kavachOS's own cookies (the login session of the authorization server's pages), both ways: the
  client's are not sent upstream, and an upstream ``Set-Cookie`` for one of them is dropped (the
  upstream shares the authorization server's origin);
- the client's ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` (anyone can write them): the
  proxy sends its own ``X-Forwarded-For``/``-Proto``/``-Host`` from what it knows, and appends
  itself to ``Via`` (RFC 9110 §7.6.3);
- ``Host`` (the upstream's own is sent);
- the upstream's ``WWW-Authenticate`` and ``Proxy-Authenticate``: this server is the resource
  server, so an upstream 401 or 407 is a 502 (a challenge would make the client drop its token);
  and its ``Location`` and ``Content-Location``, which name the upstream's own address;
- an upstream redirect (3xx but 304): its ``Location`` names the upstream's own address, which
  the client cannot reach through this proxy (only the MCP path is proxied), so the answer is a
  502 and the log says where the upstream pointed (usually a missing or extra slash in
  ``--upstream``); redirects are not followed either.

Sessions: the guard in front (:class:`kavach.starlette.KavachGuard`) binds every
``Mcp-Session-Id`` to the principal whose request it answers (:mod:`kavach.mcp_sessions`): a
request naming another principal's session, or a forged one, never reaches the upstream, which
only ever sees its own ids. Nothing is kept per session: every instance of a deployment continues
the sessions any of them started, so a load balancer needs no sticky sessions, and a restart
loses none.

Failures are answered with a JSON body and never hang: the upstream cannot be reached -> 502; its
response headers take longer than ``header_timeout`` -> 504; every upstream connection is in use
-> 503 with ``Retry-After``; a URL longer than the HTTP client builds -> 414; one subject has
``max_open_per_subject`` requests in flight -> 429 with ``Retry-After``; an upstream answer that
is not HTTP (a status outside 200-599, or a 1xx as final answer) -> 502. Once the response has
started, an upstream that breaks off (a body shorter than its ``Content-Length``, a chunked body
without its last chunk) is logged at warning level and the client's connection is closed without
ending the response, so the client sees the truncation instead of a complete answer. There is no
read timeout after the headers: a ``GET`` stream may stay quiet as long as the server has nothing
to say.

When the client goes away (before or after the upstream's headers) the upstream request is closed
too, so an abandoned request does not hold a connection open upstream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from kavach_core.http import CLIENT_ADDRESS_HEADER

from .mcp_sessions import owner_of, refuse
from .sessions import BROWSER_COOKIE, SESSION_COOKIE
from .starlette import read_body

log = logging.getLogger("kavach.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Written by whoever sent the request, so believed by no one: the proxy sends its own.
_FORWARDING = frozenset(
    {
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "via",
    }
)
# Path overrides some servers and frameworks honour (IIS, Symfony, Zend): the upstream would
# serve another path than the one the guard covered.
_PATH_OVERRIDES = frozenset({"x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method"})
_NOT_FORWARDED = (
    HOP_BY_HOP
    | _FORWARDING
    | _PATH_OVERRIDES
    | {"host", "content-length", "authorization", "expect", "proxy", CLIENT_ADDRESS_HEADER.lower()}
)
# The server in front answers with its own Date and Server (RFC 9110 §6.6.1: one Date); a
# location names the upstream's own address, which the client cannot reach through the proxy.
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "www-authenticate", "date", "server", "location", "content-location"}
_CLIENT_DEFAULTS = ("accept", "accept-encoding", "user-agent")
"""Headers an httpx client adds to every request unless told otherwise: the proxy's own sends the
client's, or none (an added ``Accept-Encoding`` would get the client a coding it never asked for)."""
FORWARDED_METHODS = ("GET", "POST", "DELETE")
"""The methods of MCP's Streamable HTTP transport: only these reach the upstream."""
_ALLOW = (b"allow", ", ".join(FORWARDED_METHODS).encode("ascii"))
_OWN_COOKIES = frozenset({SESSION_COOKIE.lower(), BROWSER_COOKIE.lower()})
_COOKIE_PREFIXES = ("__host-", "__secure-")
_TOKEN_PARAMETER = "access_token"
_LOGGED_SECRETS = frozenset(
    {
        _TOKEN_PARAMETER,
        "refresh_token",
        "token",  # RFC 7009 §2.1, RFC 7662 §2.1
        "code",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "assertion",
        "password",
        "ticket",  # the consent page's
    }
)
"""Parameters whose values stay out of the access log, however spelt (:func:`parameter_name`):
credentials of RFC 6749, RFC 6750, RFC 7009, RFC 7521, RFC 7636 and RFC 7662, which a client may
put in a URL even where no endpoint reads them there, and the consent page's ticket."""
_VIA = "kavach"


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too, RFC 9110 §7.6.1)."""
    named: set[str] = set()
    for name, value in headers:
        if name == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def _own_cookie(name: str) -> bool:
    """True for the name of one of kavachOS's cookies, with or without a ``__Host-`` prefix."""
    name = name.strip().lower()
    if "=" in name:  # a nameless cookie's value: a browser sends it as ``name=value`` (RFC 6265bis §5.7)
        name = name.split("=", 1)[0].strip()
    for prefix in _COOKIE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return name in _OWN_COOKIES


def _strip_cookies(value: str) -> str:
    kept = []
    for part in value.split(";"):
        name = part.split("=", 1)[0]
        if part.strip() and not _own_cookie(name):
            kept.append(part.strip())
    return "; ".join(kept)


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The client's headers as forwarded upstream (no token, no hop-by-hop, forwarding or path
    override headers, and no name with ``_``: a CGI or WSGI upstream reads ``X_Forwarded_For``
    as ``X-Forwarded-For``)."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    drop = _NOT_FORWARDED | _connection_tokens(pairs)
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in drop or name.startswith("x-forwarded-") or "_" in name:
            continue
        if name == "cookie":
            value = _strip_cookies(value)
            if not value:
                continue
        out.append((name, value))
    return out


def forwarding_headers(scope: Scope) -> list[tuple[str, str]]:
    """``Via`` and ``X-Forwarded-*`` as this proxy knows them: the peer, its scheme, its ``Host``."""
    via = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"via"]
    version = str(scope.get("http_version") or "1.1")
    out = [("via", ", ".join([*via, f"{version} {_VIA}"]))]
    client = scope.get("client")
    if client and client[0]:
        out.append(("x-forwarded-for", str(client[0])))
    out.append(("x-forwarded-proto", str(scope.get("scheme") or "http")))
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), None)
    if host:
        out.append(("x-forwarded-host", host))
    return out


def response_headers(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as returned to the client (no hop-by-hop headers, no challenge,
    no ``Set-Cookie`` for a cookie of kavachOS)."""
    # The bytes as sent (read as latin-1, one character per byte): httpx's decoded values may hold
    # UTF-8 characters that have no single-byte form to send on.
    raw = [(k.decode("latin-1"), v) for k, v in headers.raw]
    pairs = [(k.lower(), v.decode("latin-1")) for k, v in raw]
    drop = _NOT_RETURNED | _connection_tokens(pairs)
    out: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        if name in drop:
            continue
        if name == "set-cookie" and _own_cookie(_set_cookie_name(value)):
            continue
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


def _set_cookie_name(value: str) -> str:
    """The name a browser stores a ``Set-Cookie`` under: for a nameless one (``=name=value``, or
    no ``=`` at all, RFC 6265bis §5.7), the value it then sends as ``name=value``."""
    pair = value.split(";", 1)[0]
    name, sep, rest = pair.partition("=")
    return rest if sep and not name.strip() else name if sep else pair


_LIKE_UNDERSCORE = str.maketrans(". [", "___")


def parameter_name(part: str) -> str:
    """The name of the query parameter ``part`` (``name=value``) as the most lenient server reads
    it: percent-decoded, spaces around dropped, case folded (ASP.NET Core's query is
    case-insensitive) and ``.``, space and ``[`` read as ``_`` (as PHP names its variables). Two
    parts whose names are equal here may be one parameter to some upstream."""
    return unquote_plus(part.split("=", 1)[0]).strip().casefold().translate(_LIKE_UNDERSCORE)


def _parts(query: str) -> list[list[str]]:
    """``query``'s parameters, by ``&`` then ``;`` (both separate parameters for some servers)."""
    return [pair.split(";") for pair in query.split("&")]


def parameter_names(query: str) -> frozenset[str]:
    """The names (:func:`parameter_name`) of ``query``'s parameters."""
    return frozenset(parameter_name(part) for pair in _parts(query) for part in pair if part)


def forwarded_query(query: str, reserved: frozenset[str] = frozenset()) -> str:
    """``query`` without any ``access_token`` parameter, however spelt (a token in the URL stays
    here), nor any parameter the upstream URL sets itself (``reserved``, as
    :func:`parameter_names` gives them): the client's copy of one would follow the operator's in
    the URL, and a server taking the last value would read the client's."""
    drop = reserved | {_TOKEN_PARAMETER}
    kept: list[str] = []
    for pair in _parts(query):
        parts = [part for part in pair if drop.isdisjoint(_read_as(part))]
        if any(parts):
            kept.append(";".join(parts))
    return "&".join(kept)


def _read_as(part: str) -> tuple[str, ...]:
    """The names a lenient server may read the parameter ``part`` as: :func:`parameter_name`, and
    for an array spelling (``client_secret[]``, ``access_token[0]``) the array's own name too, as
    PHP and Rails read it."""
    name = parameter_name(part)
    raw = unquote_plus(part.split("=", 1)[0])
    return (name, parameter_name(raw.split("[", 1)[0])) if "[" in raw else (name,)


def redacted_target(target: str) -> str:
    """A request target (path and query) as it may be logged: the value of every parameter of
    :data:`_LOGGED_SECRETS`, however spelt, replaced by ``[redacted]`` (RFC 6750 §5.3: bearer
    tokens stay out of logs; RFC 6749 §10.3, §10.5: so do refresh tokens, codes and secrets)."""
    path, mark, query = target.partition("?")
    if not mark:
        return target

    def shown(part: str) -> str:
        return part if _LOGGED_SECRETS.isdisjoint(_read_as(part)) else part.split("=", 1)[0] + "=[redacted]"

    return f"{path}?{'&'.join(';'.join(map(shown, pair)) for pair in _parts(query))}"


class _Refused(Exception):
    """The request is answered by the proxy itself."""

    def __init__(self, status: int, error: str, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.retry_after = retry_after


class UpstreamProxy:
    """An ASGI app forwarding every request it receives to ``upstream`` (an MCP endpoint URL).

    ``header_timeout``: how long the upstream may take to send its response headers once the
    request is written (then 504). ``max_connections``: the upstream connection pool; when every
    connection stays busy for ``pool_timeout`` the answer is 503. ``max_open_per_subject``: how
    many requests one subject may have in flight (a ``GET`` stream counts while it is open); above
    it, 429.
    """

    def __init__(
        self,
        upstream: str,
        *,
        client: httpx.AsyncClient | None = None,
        connect_timeout: float = 10.0,
        header_timeout: float = 30.0,
        write_timeout: float = 60.0,
        pool_timeout: float = 5.0,
        max_connections: int = 1000,
        max_keepalive_connections: int = 100,
        max_open_per_subject: int = 64,
        retry_after: int = 5,
    ) -> None:
        self.upstream = upstream
        self._reserved = parameter_names(urlsplit(upstream).query)
        self.header_timeout = header_timeout
        self.max_open_per_subject = max_open_per_subject
        self.retry_after = retry_after
        # The longest the whole wait for the headers may take, should the transport not report
        # when it starts waiting for them (each phase has its own limit besides).
        self._backstop = connect_timeout + write_timeout + pool_timeout + header_timeout
        self._open: dict[str, int] = {}
        self._own_client = client is None
        # No read timeout: a GET stream may stay quiet for as long as the server has nothing to say.
        # The wait for the response headers is bounded by ``header_timeout`` instead (see _send).
        # Its jar keeps nothing, and it adds none of httpx's default headers (see _forward).
        self.client = client or httpx.AsyncClient(
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=write_timeout, pool=pool_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_keepalive_connections, max_connections),
            ),
            follow_redirects=False,
            trust_env=False,
        )
        if client is None:
            for name in _CLIENT_DEFAULTS:
                self.client.headers.pop(name, None)

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def _url(self, scope: Scope) -> str:
        query = forwarded_query(scope.get("query_string", b"").decode("latin-1"), self._reserved)
        if not query:
            return self.upstream
        return f"{self.upstream}{'&' if '?' in self.upstream else '?'}{query}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in FORWARDED_METHODS:
            refused = f"{scope['method']} is not a method of MCP's HTTP transport"
            await refuse(send, 405, "method_not_allowed", refused, more=[_ALLOW])
            return
        body = await read_body(receive, send)  # the guard's replay, or the client's own (413 over 4 MiB)
        if body is None:
            return  # 413 sent, or the client went away before its request was complete: nothing to forward
        owner = owner_of(scope)
        subject = owner[0] if owner is not None else None
        if subject is not None and self._open.get(subject, 0) >= self.max_open_per_subject:
            busy = "too many requests to the MCP server at once"
            await refuse(send, 429, "too_many_requests", busy, self.retry_after)
            return
        if subject is not None:
            self._open[subject] = self._open.get(subject, 0) + 1
        try:
            await self._exchange(scope, receive, send, body)
        finally:
            if subject is not None:
                left = self._open.get(subject, 1) - 1
                if left > 0:
                    self._open[subject] = left
                else:
                    self._open.pop(subject, None)

    async def _exchange(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # The body has been read: all the client can still say is that it has gone.
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_disconnect)
            try:
                await self._forward(scope, send, body)
            finally:
                tg.cancel_scope.cancel()

    async def _forward(self, scope: Scope, send: Send, body: bytes) -> None:
        method = scope["method"]
        has_body = bool(body) or method not in ("GET", "HEAD", "DELETE", "OPTIONS")
        own = {name.lower() for name in self.client.headers} - set(_CLIENT_DEFAULTS)  # the given client's own
        headers = [(k, v) for k, v in request_headers(scope["headers"]) if k not in own]
        try:
            request = self.client.build_request(
                method,
                self._url(scope),
                # as bytes: a client's latin-1 header byte (RFC 9110 §5.5 obs-text) goes on as it came
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers + forwarding_headers(scope)],
                content=body if has_body else None,
            )
        except httpx.InvalidURL:
            await refuse(send, 414, "invalid_request", "the request's URL is too long to forward")
            return
        if not any(name == "cookie" for name, _ in headers):  # none from a jar: only the client's own
            request.headers.pop("cookie", None)
        try:
            upstream = await self._send(request)
        except _Refused as refused:
            await _answer(send, refused)
            return
        try:
            status = upstream.status_code
            if not 200 <= status <= 599:
                raise _Refused(502, "bad_gateway", f"the upstream MCP server answered with status {status}")
            if status in (401, 407):
                log.warning("the upstream MCP server answered %d: it should not ask the proxy for credentials", status)
                raise _Refused(502, "bad_gateway", f"the upstream MCP server refused the request ({status})")
            if 300 <= status < 400 and status != 304:
                log.warning(
                    "the upstream MCP server answered %s %s with %d to %r: redirects are not passed on; "
                    "give --upstream the URL it serves",
                    method,
                    self.upstream,
                    status,
                    upstream.headers.get("location", ""),
                )
                raise _Refused(502, "bad_gateway", f"the upstream MCP server answered with a redirect ({status})")
            complete = await _relay(upstream, send, response_headers(upstream.headers))
            if not complete:
                log.warning(
                    "the upstream MCP server broke off its response to %s %s; the client's connection is closed",
                    method,
                    scope.get("path", ""),
                )
        except _Refused as refused:
            await _answer(send, refused)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await upstream.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The upstream's response, its body still to come; its headers within ``header_timeout``."""
        upstream: httpx.Response | None = None
        with anyio.CancelScope(deadline=anyio.current_time() + self._backstop) as waiting:

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event.endswith(".receive_response_headers.started"):
                    waiting.deadline = anyio.current_time() + self.header_timeout

            request.extensions = {**request.extensions, "trace": trace}
            try:
                upstream = await self.client.send(request, stream=True)
            except httpx.PoolTimeout:
                log.warning("every connection to the upstream MCP server is in use: answering 503")
                raise _Refused(
                    503,
                    "temporarily_unavailable",
                    "every connection to the upstream MCP server is in use",
                    self.retry_after,
                ) from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _Refused(
                    502, "bad_gateway", f"the upstream MCP server could not be reached ({type(exc).__name__})"
                ) from None
            except httpx.TimeoutException as exc:
                raise _Refused(
                    504, "gateway_timeout", f"the upstream MCP server did not answer in time ({type(exc).__name__})"
                ) from None
            except httpx.HTTPError as exc:
                raise _Refused(
                    502, "bad_gateway", f"the upstream MCP server gave no usable answer ({type(exc).__name__})"
                ) from None
        if upstream is None:
            log.warning("the upstream MCP server sent no response headers in %g s: answering 504", self.header_timeout)
            raise _Refused(504, "gateway_timeout", "the upstream MCP server did not answer in time")
        return upstream


async def _relay(upstream: httpx.Response, send: Send, headers: list[tuple[bytes, bytes]]) -> bool:
    """Send the response on as it arrives, with ``headers``; ``False`` when the upstream broke
    off (then the response is left unfinished, and the server closes the client's connection)."""
    await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
    try:
        async for chunk in _raw(upstream):
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError:
        return False
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return True


async def _raw(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The body as the upstream sent it (still encoded); an in-memory transport may have read it."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.StreamConsumed:
        yield upstream.content


async def _answer(send: Send, refused: _Refused) -> None:
    await refuse(send, refused.status, refused.error, refused.description, refused.retry_after)
