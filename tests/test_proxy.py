"""The upstream proxy of ``kavach serve --upstream``, in process (RS-04, RFC 9110 §7.6.1).

The upstream is an ``httpx.MockTransport``; the proxy is called as the ASGI app it is. What must
hold: the client's ``Authorization`` header and kavachOS's own cookies never go upstream,
hop-by-hop headers (and any header ``Connection`` names) are dropped both ways, end-to-end headers
such as ``Mcp-Session-Id`` pass both ways, the body streams chunk by chunk, and an unreachable
upstream is a 502 with a JSON body, not an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from kavach.proxy import UpstreamProxy, forwarding_headers, request_headers, response_headers

UPSTREAM = "http://upstream.test:9000/mcp"


def _scope(method: str, headers: list[tuple[str, str]], query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": "/mcp",
        "query_string": query,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }


async def _call(proxy: UpstreamProxy, scope: dict[str, Any], body: bytes = b"") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(10):
        await proxy(scope, receive, send)
    return sent


def test_rs_04_the_token_and_hop_by_hop_headers_stay_behind() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            headers=[
                ("Content-Type", "application/json"),
                ("Mcp-Session-Id", "s-1"),
                ("Connection", "close, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("X-End", "kept"),
            ],
            content=b'{"jsonrpc":"2.0","id":1,"result":{}}',
        )

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    headers = [
        ("Host", "127.0.0.1:8000"),
        ("Authorization", "Bearer the-clients-token"),
        ("Content-Type", "application/json"),
        ("Mcp-Session-Id", "s-1"),
        ("MCP-Protocol-Version", "2025-06-18"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic x"),
        ("Cookie", "kavach-session=abc; theirs=1; __Host-kavach-browser=zzz"),
        ("Accept", "application/json"),
    ]
    sent = anyio.run(_call, proxy, _scope("POST", headers, b"a=1"), b'{"jsonrpc":"2.0","id":1,"method":"ping"}')

    (request,) = seen
    assert str(request.url) == UPSTREAM + "?a=1"
    assert "authorization" not in request.headers and "proxy-authorization" not in request.headers
    assert "x-private" not in request.headers and "te" not in request.headers
    assert request.headers["host"] == "upstream.test:9000"
    assert request.headers["mcp-session-id"] == "s-1"
    assert request.headers["mcp-protocol-version"] == "2025-06-18"
    assert request.headers["cookie"] == "theirs=1"
    assert request.content == b'{"jsonrpc":"2.0","id":1,"method":"ping"}'

    start = sent[0]
    assert start["status"] == 200
    returned = {k.decode(): v.decode() for k, v in start["headers"]}
    assert returned["mcp-session-id"] == "s-1" and returned["x-end"] == "kept"
    assert "connection" not in returned and "x-hop" not in returned and "keep-alive" not in returned
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert sent[-1]["more_body"] is False


def test_headers_an_upstream_could_misread_stay_behind() -> None:
    """Names with ``_`` (a CGI/WSGI upstream reads ``X_Forwarded_For`` as ``X-Forwarded-For``),
    kavach's own client-address header, and path or method overrides some frameworks honour."""
    sent = request_headers(
        [
            (b"X_Forwarded_For", b"6.6.6.6"),
            (b"x-kavach-client-address", b"6.6.6.6"),
            (b"X-Original-URL", b"/admin"),
            (b"X-Rewrite-URL", b"/admin"),
            (b"X-HTTP-Method-Override", b"DELETE"),
            (b"accept", b"*/*"),
        ]
    )
    assert sent == [("accept", "*/*")]


def test_the_upstreams_date_and_server_stay_behind() -> None:
    """The server in front sends its own (RFC 9110 §6.6.1: one Date field)."""
    upstream = httpx.Headers([("Date", "Thu, 01 Jan 1970 00:00:00 GMT"), ("Server", "up/1"), ("X-End", "kept")])
    assert response_headers(upstream) == [(b"x-end", b"kept")]


def test_request_headers_without_any_cookie_of_ours_drop_the_cookie_header() -> None:
    assert request_headers([(b"cookie", b"kavach-session=1"), (b"accept", b"*/*")]) == [("accept", "*/*")]
    # Empty pairs are no cookies (RFC 6265 §4.2.1 cookie-string): what is left of ours is nothing,
    # and the cookies kept are joined without them.
    assert request_headers([(b"cookie", b"kavach-session=1; ;")]) == []
    mixed = [(b"cookie", b"theirs=1; ;kavach-session=2; ; other=3;")]
    assert request_headers(mixed) == [("cookie", "theirs=1; other=3")]


def test_via_names_the_protocol_the_client_spoke() -> None:
    """RFC 9110 §7.6.3: a proxy appends the protocol version it received and its own name to any
    ``Via`` already there; a request of unknown version is taken as HTTP/1.1, and with no peer
    address or ``Host`` known no ``X-Forwarded-For`` or ``-Host`` is made up."""
    h2: dict[str, Any] = {"type": "http", "http_version": "2", "scheme": "https", "client": ("10.0.0.1", 5)}
    h2["headers"] = [(b"via", b"1.0 edge")]
    expect = [("via", "1.0 edge, 2 kavach"), ("x-forwarded-for", "10.0.0.1"), ("x-forwarded-proto", "https")]
    assert forwarding_headers(h2) == expect
    unknown = [("via", "1.1 kavach"), ("x-forwarded-proto", "http")]
    assert forwarding_headers({"type": "http", "headers": []}) == unknown
    assert forwarding_headers({"type": "http", "headers": [], "client": ("", 5)}) == unknown


def test_an_sse_answer_streams_event_by_event() -> None:
    events = [b'event: message\ndata: {"n":1}\n\n', b'event: message\ndata: {"n":2}\n\n']

    async def stream() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=stream())

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    sent = anyio.run(_call, proxy, _scope("GET", [("Accept", "text/event-stream")]))
    chunks = [m["body"] for m in sent[1:] if m.get("body")]
    assert chunks == events, "each event is sent on as it arrives"


def test_delete_is_forwarded_without_a_body() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    sent = anyio.run(_call, proxy, _scope("DELETE", [("Mcp-Session-Id", "s-9")]))
    assert seen[0].method == "DELETE" and seen[0].headers["mcp-session-id"] == "s-9" and seen[0].content == b""
    assert sent[0]["status"] == 204


def test_an_unreachable_upstream_is_a_502() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    sent = anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"{}")
    assert sent[0]["status"] == 502
    assert b"bad_gateway" in sent[1]["body"]


def _recording(seen: list[httpx.Request], *headers: tuple[str, str]) -> UpstreamProxy:
    """A proxy whose upstream records each request and answers 200 with ``headers``."""

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=[("Content-Type", "application/json"), *headers], content=b"{}")

    return UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))


def test_cookies_the_upstream_sets_for_one_person_never_go_with_anothers_request() -> None:
    """The proxy is no user agent: it keeps no cookies (RFC 6265 §5.3), so what the upstream set
    on one answer (a session of its own, a load balancer's affinity) is not replayed upstream on
    the next request, whoever sends it; a client's own cookies go as it sent them."""
    seen: list[httpx.Request] = []
    proxy = _recording(seen, ("Set-Cookie", "upstream_sid=ALICE; Path=/"), ("Set-Cookie", "kavach-session=up"))
    anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"{}")
    anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"{}")
    anyio.run(_call, proxy, _scope("POST", [("Cookie", "upstream_sid=BOB")]), b"{}")
    assert [r.headers.get("cookie") for r in seen] == [None, None, "upstream_sid=BOB"]
    own = UpstreamProxy(UPSTREAM)  # the client kavach serve makes: its jar keeps nothing at all
    own.client.cookies.extract_cookies(httpx.Response(200, headers=[("Set-Cookie", "a=1")], request=seen[0]))
    assert len(own.client.cookies) == 0


def test_the_proxy_header_stays_behind() -> None:
    """A CGI upstream would read ``Proxy`` as ``HTTP_PROXY``, its own outgoing proxy (httpoxy)."""
    assert request_headers([(b"Proxy", b"http://attacker.example:8080"), (b"accept", b"*/*")]) == [("accept", "*/*")]


def test_methods_other_than_the_transports_are_answered_here() -> None:
    """Streamable HTTP uses POST, GET and DELETE; CONNECT would switch the connection's protocol
    on a 2xx and TRACE echo the request, so neither reaches the upstream: 405 with ``Allow``."""
    seen: list[httpx.Request] = []
    proxy = _recording(seen)
    for method in ("CONNECT", "TRACE", "PUT", "PATCH", "HEAD", "OPTIONS", "PROPFIND"):
        sent = anyio.run(_call, proxy, _scope(method, [("Content-Type", "application/json")]), b"{}")
        assert sent[0]["status"] == 405, method
        assert dict(sent[0]["headers"])[b"allow"] == b"GET, POST, DELETE"
        assert b"method_not_allowed" in sent[1]["body"]
    assert seen == []
    for method in ("GET", "POST", "DELETE"):
        assert anyio.run(_call, proxy, _scope(method, []), b"")[0]["status"] == 200
    assert [r.method for r in seen] == ["GET", "POST", "DELETE"]


def test_locations_naming_the_upstream_and_nameless_cookies_of_ours_stay_behind() -> None:
    """``Location`` and ``Content-Location`` name the upstream's own address (as on a redirect,
    which is refused); a nameless ``Set-Cookie`` whose value reads ``kavach-session=...`` is what a
    browser then sends as that cookie (RFC 6265bis §5.7), so it is dropped like the named one."""
    upstream = httpx.Headers(
        [
            ("Location", "http://10.0.0.7:9000/mcp/1"),
            ("Content-Location", "http://10.0.0.7:9000/x"),
            ("Set-Cookie", "=kavach-session=forged; Path=/"),
            ("Set-Cookie", " = __Host-kavach-browser=x"),
            ("Set-Cookie", "kavach-session"),
            ("Set-Cookie", "theirs=1"),
            ("Set-Cookie", "=theirs=2"),
            ("Set-Cookie", "kavach-session; Path=/"),
            ("X-Cookie-Name", "kavach-session"),
        ]
    )
    # Only a Set-Cookie sets a cookie: another header that names one of ours passes.
    kept = [(b"set-cookie", b"theirs=1"), (b"set-cookie", b"=theirs=2"), (b"x-cookie-name", b"kavach-session")]
    assert response_headers(upstream) == kept


def test_a_scope_other_than_http_is_left_alone() -> None:
    """The proxy answers HTTP requests only: a ``lifespan`` or ``websocket`` scope is returned from
    at once, nothing received, nothing sent, nothing forwarded."""
    seen: list[httpx.Request] = []
    proxy = _recording(seen)
    events: list[tuple[str, str]] = []

    async def call(kind: str) -> None:
        async def receive() -> dict[str, Any]:
            events.append((kind, "receive"))
            return {"type": f"{kind}.disconnect"}

        async def send(message: Any) -> None:
            events.append((kind, message["type"]))

        scope = {"type": kind, "path": "/mcp", "headers": [], "query_string": b""}
        with anyio.fail_after(10):
            await proxy(scope, receive, send)

    for kind in ("lifespan", "websocket"):
        anyio.run(call, kind)
    assert events == [] and seen == []


def test_a_connect_timeout_is_an_unreachable_upstream_a_502() -> None:
    """An upstream that cannot be connected to in time is unreachable (502), as a refused
    connection is; 504 is for an upstream that took the request and did not answer."""

    def upstream(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
    sent = anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"{}")
    assert sent[0]["status"] == 502
    assert json.loads(sent[1]["body"]) == {
        "error": "bad_gateway",
        "error_description": "the upstream MCP server could not be reached (ConnectTimeout)",
    }


def test_a_body_over_the_limit_is_answered_413_and_not_forwarded() -> None:
    """Over 4 MiB the proxy answers 413 itself, and the request goes no further, whatever the
    server in front does with the connection afterwards."""
    from kavach.starlette import MAX_BODY

    seen: list[httpx.Request] = []
    proxy = _recording(seen)
    sent = anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"x" * (MAX_BODY + 1))
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert seen == []


def test_a_url_too_long_to_build_is_answered_414_and_the_call_ends_cleanly() -> None:
    """The 414 is the whole answer: the proxy returns without an error after it (a server would
    log a traceback for one), and nothing is forwarded."""
    seen: list[httpx.Request] = []
    proxy = _recording(seen)
    sent = anyio.run(_call, proxy, _scope("POST", [], b"x=" + b"a" * 65536), b"{}")
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [414]
    assert json.loads(sent[-1]["body"]) == {
        "error": "invalid_request",
        "error_description": "the request's URL is too long to forward",
    }
    assert seen == []


def test_an_informational_status_as_the_final_answer_is_a_502() -> None:
    """A transport handing back a 1xx as the response (HTTP/1.1 over h11 never does: it waits for
    the final one) gets the client a 502, never a 1xx that would leave it waiting."""
    for status in (101, 199):

        def upstream(request: httpx.Request, status: int = status) -> httpx.Response:
            return httpx.Response(status)

        proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))
        sent = anyio.run(_call, proxy, _scope("POST", [("Content-Type", "application/json")]), b"{}")
        assert sent[0]["status"] == 502, status
        assert json.loads(sent[1]["body"])["error_description"] == (
            f"the upstream MCP server answered with status {status}"
        )


def _tracing(seen: dict[str, float], then: Callable[[], Awaitable[object]] | None = None) -> httpx.AsyncClient:
    """A client whose transport reports the phases of a request as httpcore does (connecting,
    then waiting for the response headers), noting how long the proxy lets each last; it then
    awaits ``then`` (a wait that never ends, say) before answering 200."""

    async def upstream(request: httpx.Request) -> httpx.Response:
        trace = request.extensions["trace"]
        await trace("connection.connect_tcp.started", {})
        seen["connecting"] = anyio.current_effective_deadline() - anyio.current_time()
        await trace("http11.receive_response_headers.started", {})
        seen["waiting"] = anyio.current_effective_deadline() - anyio.current_time()
        if then is not None:
            await then()
        return httpx.Response(200)

    return httpx.AsyncClient(transport=httpx.MockTransport(upstream))


def test_the_header_timeout_bounds_the_wait_for_the_headers_and_every_phase_together_the_whole_wait() -> None:
    """Until the transport reports the wait for the response headers, the whole request may take
    the connect, write, pool and header timeouts together (each phase has its own limit besides);
    from then on, the header timeout alone."""
    seen: dict[str, float] = {}
    timeouts = {"connect_timeout": 1.0, "write_timeout": 1.5, "pool_timeout": 2.0, "header_timeout": 4.0}
    proxy = UpstreamProxy(UPSTREAM, client=_tracing(seen), **timeouts)
    assert anyio.run(_call, proxy, _scope("POST", []), b"{}")[0]["status"] == 200
    # what is left of each deadline when it is read (within _call's own 10 s): 8.5 s and 4 s less
    # the moments since, never a whole second; any of the four left out of the sum leaves 7.5 s
    assert 7.5 < seen["connecting"] <= 8.5, seen
    assert 3.0 < seen["waiting"] <= 4.0, seen


def test_no_response_headers_within_the_header_timeout_is_a_504_the_log_explains(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, float] = {}
    proxy = UpstreamProxy(UPSTREAM, client=_tracing(seen, anyio.sleep_forever), header_timeout=0.25)
    with caplog.at_level(logging.WARNING, logger="kavach.proxy"):
        sent = anyio.run(_call, proxy, _scope("POST", []), b"{}")
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {
        "error": "gateway_timeout",
        "error_description": "the upstream MCP server did not answer in time",
    }
    (warning,) = [r for r in caplog.records if r.name == "kavach.proxy"]
    assert warning.levelno == logging.WARNING and "no response headers in 0.25 s" in warning.getMessage()


def test_the_proxys_own_client_has_no_read_timeout_and_waits_30_s_for_the_headers() -> None:
    """A GET stream may stay quiet as long as the server has nothing to say: the client the proxy
    makes times out connecting, writing and waiting for a connection, never reading; the wait for
    the response headers is bounded instead, 30 s unless told otherwise (docs/deployment.md)."""
    own = UpstreamProxy(UPSTREAM, connect_timeout=1.0, write_timeout=2.0, pool_timeout=3.0)
    assert own.client.timeout == httpx.Timeout(connect=1.0, read=None, write=2.0, pool=3.0)
    assert UpstreamProxy(UPSTREAM).header_timeout == 30


def test_a_client_leaving_mid_stream_closes_the_upstream_response_however_long_the_close_waits() -> None:
    """The client gone, the upstream response is closed (its connection given back or shut) even
    when the transport's close has to wait: the cancellation of the request does not cut it short."""
    closed: list[bool] = []

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await anyio.sleep_forever()

        async def aclose(self) -> None:
            await anyio.sleep(0.05)  # as a transport waits to shut its connection
            closed.append(True)

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=Endless())

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)))

    async def leave() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        streaming = anyio.Event()
        request = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            for message in request:
                return message
            await streaming.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body"):
                streaming.set()

        with anyio.fail_after(10):
            await proxy(_scope("GET", [("Accept", "text/event-stream")]), receive, send)
        return sent

    sent = anyio.run(leave)
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]
    assert closed == [True]


def test_every_upstream_connection_in_use_is_a_503_the_log_reports(caplog: pytest.LogCaptureFixture) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection free", request=request)

    proxy = UpstreamProxy(UPSTREAM, client=httpx.AsyncClient(transport=httpx.MockTransport(upstream)), retry_after=7)
    with caplog.at_level(logging.WARNING, logger="kavach.proxy"):
        sent = anyio.run(_call, proxy, _scope("POST", []), b"{}")
    assert sent[0]["status"] == 503 and dict(sent[0]["headers"])[b"retry-after"] == b"7"
    (warning,) = [r for r in caplog.records if r.name == "kavach.proxy"]
    assert warning.levelno == logging.WARNING and "every connection" in warning.getMessage()
