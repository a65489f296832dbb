"""A streaming reverse proxy to an MCP server over Streamable HTTP (``kavach serve --upstream``).

Every method (``POST`` with a JSON or an SSE answer, ``GET`` for the server's SSE stream,
``DELETE`` to end a session) is forwarded to the one upstream URL, the query string kept.
Bodies stream both ways without buffering: an SSE answer reaches the client event by event,
as the upstream writes it. ``Mcp-Session-Id``, ``MCP-Protocol-Version`` and ``Last-Event-ID``
pass through in both directions like any end-to-end header.

What does not pass (RFC 9110 §7.6.1, RS-04):

- the client's ``Authorization`` header: the access token was minted for this server and is
  never forwarded (no token passthrough, MCP authorization "Access Token Privilege Restriction");
- hop-by-hop headers, and any header the ``Connection`` header names;
- kavachOS's own cookies (the login session of the authorization server's pages);
- ``Host`` (the upstream's own is sent) and ``Content-Length`` (recomputed).

When the client goes away the upstream request is closed too, so an abandoned ``GET`` stream
does not hold a connection open upstream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from .sessions import BROWSER_COOKIE, SESSION_COOKIE

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
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}
_OWN_COOKIES = frozenset({SESSION_COOKIE, BROWSER_COOKIE, "__Host-" + SESSION_COOKIE, "__Host-" + BROWSER_COOKIE})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too, RFC 9110 §7.6.1)."""
    named: set[str] = set()
    for name, value in headers:
        if name == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def _strip_cookies(value: str) -> str:
    kept = []
    for part in value.split(";"):
        name = part.split("=", 1)[0].strip()
        if part.strip() and name not in _OWN_COOKIES:
            kept.append(part.strip())
    return "; ".join(kept)


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The client's headers as forwarded upstream (no token, no hop-by-hop headers)."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    drop = _NOT_FORWARDED | _connection_tokens(pairs)
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in drop:
            continue
        if name == "cookie":
            value = _strip_cookies(value)
            if not value:
                continue
        out.append((name, value))
    return out


def response_headers(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as returned to the client (no hop-by-hop headers)."""
    pairs = [(k.lower(), v) for k, v in headers.multi_items()]
    drop = _NOT_RETURNED | _connection_tokens(pairs)
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs if k not in drop]


class UpstreamProxy:
    """An ASGI app forwarding every request it receives to ``upstream`` (an MCP endpoint URL)."""

    def __init__(
        self, upstream: str, *, client: httpx.AsyncClient | None = None, connect_timeout: float = 10.0
    ) -> None:
        self.upstream = upstream
        self._own_client = client is None
        # No read timeout: a GET stream may stay quiet for as long as the server has nothing to say.
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=60.0, pool=connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def _url(self, scope: Scope) -> str:
        query = scope.get("query_string", b"").decode("latin-1")
        if not query:
            return self.upstream
        return f"{self.upstream}{'&' if '?' in self.upstream else '?'}{query}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body_done = anyio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    if chunk:
                        yield chunk
                    if not message.get("more_body", False):
                        return
            finally:
                body_done.set()

        method = scope["method"]
        has_body = method not in ("GET", "HEAD", "DELETE", "OPTIONS") or any(
            k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"]
        )
        if not has_body:
            body_done.set()
        request = self.client.build_request(
            method,
            self._url(scope),
            headers=request_headers(scope["headers"]),
            content=body() if has_body else None,
        )
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            await _bad_gateway(send, f"the upstream MCP server could not be reached ({type(exc).__name__})")
            return
        try:
            await self._relay(upstream, receive, send, body_done)
        finally:
            await upstream.aclose()

    async def _relay(self, upstream: httpx.Response, receive: Receive, send: Send, body_done: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                await body_done.wait()
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch_disconnect)
            headers = response_headers(upstream.headers)
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            try:
                async for chunk in _raw(upstream):
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError:
                pass  # the upstream broke off mid-stream: end ours as well
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


async def _raw(upstream: httpx.Response) -> AsyncIterator[bytes]:
    """The body as the upstream sent it (still encoded); an in-memory transport may have read it."""
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.StreamConsumed:
        yield upstream.content


async def _bad_gateway(send: Send, description: str) -> None:
    body: dict[str, Any] = {"error": "bad_gateway", "error_description": description}
    data = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode("ascii"))],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})
