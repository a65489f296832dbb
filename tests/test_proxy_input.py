"""The upstream proxy of ``kavach serve --upstream`` against upstreams that misbehave, over real sockets.

The proxy runs under uvicorn; the upstream is either a raw TCP fake (below: it answers whatever
the ``mode`` query parameter asks for, byte for byte, and records every request it reads) or the
official SDK's MCP server (``tests/mcp_upstream.py``). A small wrapper plays the guard's part of
naming the verified principal (``scope["state"]["principal"]``) from a test header.

What must hold: a silent upstream is a 504 and an abandoned request frees its upstream
connection; pool exhaustion is a 503 and one subject's streams are capped (429); an upstream that
breaks off mid-response leaves the client's response visibly unfinished; a session id works only
for the principal it was issued to; no ``access_token`` query parameter, forged forwarding
header, kavachOS cookie or upstream challenge crosses the proxy; a nonsense status is a 502; the
request body goes upstream with its ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from kavach.mcp_sessions import SessionBinding, SessionSeal, owner_of, refuse
from kavach.proxy import UpstreamProxy, redacted_target
from kavach_serve import mcp_upstream
from mcp_messages import INITIALIZE_BODY, INITIALIZED, MCP_HEADERS, TOOLS_LIST

pytestmark = pytest.mark.timeout(60)

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
OK_BODY = b'{"jsonrpc":"2.0","id":1,"result":{}}'


# -- a raw TCP upstream ------------------------------------------------------------------------


class FakeUpstream:
    """An HTTP/1.1 server written with bare sockets, so it can answer anything at all."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.open = 0
        self.sessions = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            for _ in range(100):
                if not self.open:
                    break
                await asyncio.sleep(0.02)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        fields = dict(headers)
        body = b""
        if "content-length" in fields:
            body = await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                body += await reader.readexactly(size)
                await reader.readline()
        return {"line": lines[0], "headers": headers, "body": body}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    request = await self._read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(request)
                target = request["line"].split(" ")[1]
                mode = target.split("mode=")[1].split("&")[0] if "mode=" in target else "ok"
                if not await self._answer(mode, reader, writer):
                    return
                await writer.drain()
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def _answer(self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Write the answer for ``mode``; ``False`` when the connection is to be closed."""
        w = writer.write
        if mode == "ok":
            w(_json(b"200 OK", OK_BODY))
        elif mode == "hang_headers":
            await reader.read()  # say nothing until the proxy hangs up
            return False
        elif mode == "truncated_cl":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            w(b'{"jsonrpc":"2.0","res')
            await writer.drain()
            return False
        elif mode == "truncated_chunked":
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            w(b"10\r\nevent: message\nd\r\n")
            await writer.drain()
            return False
        elif mode in ("sse_forever", "sse_quiet"):
            # sse_quiet: the headers at once, then a second of silence before the one event
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            if mode == "sse_quiet":
                await asyncio.sleep(1.0)
                event = b"data: late\n\n"
                w(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
                return True
            try:
                while True:
                    event = b"data: tick\n\n"
                    w(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(0.2)
            except (ConnectionError, OSError):
                return False
        elif mode == "headers":
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Set-Cookie: upstream_sess=abc; Path=/\r\n"
                b"Set-Cookie: kavach-session=hijack; Path=/\r\n"
                b"Set-Cookie: __Host-kavach-browser=hijack; Path=/; Secure\r\n"
                b"WWW-Authenticate: Basic realm=upstream\r\nProxy-Authenticate: Basic\r\n"
                b"X-Upstream: kept\r\nContent-Length: %d\r\n\r\n" % len(OK_BODY) + OK_BODY
            )
        elif mode in ("401", "407"):
            body = b'{"error":"nope"}'
            reason = b"Unauthorized" if mode == "401" else b"Proxy Authentication Required"
            challenge = b"WWW-Authenticate" if mode == "401" else b"Proxy-Authenticate"
            w(
                b'HTTP/1.1 %s %s\r\n%s: Bearer realm="upstream"\r\nContent-Type: application/json\r\n'
                b"Content-Length: %d\r\n\r\n" % (mode.encode(), reason, challenge, len(body)) + body
            )
        elif mode in ("301", "307", "308", "304"):
            reason = {
                "301": b"Moved Permanently",
                "307": b"Temporary Redirect",
                "308": b"Permanent Redirect",
                "304": b"Not Modified",
            }[mode]
            location = b"" if mode == "304" else b"Location: http://127.0.0.1:%d/mcp/\r\n" % self.port
            w(b"HTTP/1.1 %s %s\r\n%sContent-Length: 0\r\n\r\n" % (mode.encode(), reason, location))
        elif mode == "utf8header":
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Name: \xe2\x9c\x93 caf\xc3\xa9\r\n"
                b"Content-Length: %d\r\n\r\n" % len(OK_BODY) + OK_BODY
            )
        elif mode == "badstatus":
            w(b"HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n")
        elif mode == "init":
            self.sessions += 1
            w(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s-%d\r\n"
                b"Content-Length: %d\r\n\r\n" % (self.sessions, len(OK_BODY)) + OK_BODY
            )
        elif mode == "gone":
            body = b'{"error":"no such session"}'
            w(_json(b"404 Not Found", body))
        elif mode.startswith("status"):  # status300: that status line, nothing else
            w(b"HTTP/1.1 %s Other\r\nContent-Length: 0\r\n\r\n" % mode[len("status") :].encode())
        elif mode == "hang_up":  # the request read, the connection closed without a word
            return False
        return True


def _json(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    try:
        yield upstream
    finally:
        upstream.close()


# -- the proxy under uvicorn -----------------------------------------------------------------


def _as_principal(proxy: UpstreamProxy, secret: bytes) -> Any:
    """The guard's part: ``X-Test-Principal: subject/client`` becomes ``scope["state"]["principal"]``,
    and the session ids are bound to it (:class:`~kavach.mcp_sessions.SessionBinding`, as
    ``KavachGuard`` binds them for the app it guards)."""
    binding = SessionBinding(secret)

    async def bound(scope: Any, receive: Any, send: Any) -> None:
        """The guard's session binding (as KavachGuard applies it) in front of the proxy."""
        owner = owner_of(scope)
        if owner is None:
            return await proxy(scope, receive, send)
        named = [v for k, v in scope["headers"] if k == b"mcp-session-id"]
        if named:
            opened = binding.open(named, owner)
            if isinstance(opened, tuple):
                return await refuse(send, *opened)
            scope = dict(scope, headers=[*[(k, v) for k, v in scope["headers"] if k != b"mcp-session-id"],
                                         (b"mcp-session-id", opened)])  # fmt: skip
        await proxy(scope, receive, binding.sealing(send, owner))
        return None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await proxy.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-test-principal"]
        named = [v.decode() for k, v in scope["headers"] if k == b"x-test-principal"]
        scope = dict(scope, headers=headers)
        if named:
            subject, client_id = named[0].split("/")
            scope["state"] = {"principal": SimpleNamespace(subject=subject, client_id=client_id)}
        await bound(scope, receive, send)

    return app


class Served:
    def __init__(self, proxy: UpstreamProxy, secret: bytes = b"s" * 32) -> None:
        import uvicorn

        self.proxy = proxy
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        # as ``kavach serve`` runs it without --trusted-proxies: nobody's X-Forwarded-For is believed
        config = uvicorn.Config(
            _as_principal(proxy, secret), log_level="warning", log_config=None, lifespan="on", proxy_headers=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        _until(lambda: self.server.started, "uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def post(self, query: str = "mode=ok", body: bytes = PING, as_: str | None = None, **headers: str) -> Any:
        extra = {"Content-Type": "application/json", **headers}
        if as_:
            extra["X-Test-Principal"] = as_
        return httpx.post(f"{self.base}/mcp?{query}", content=body, headers=extra, timeout=10)

    def raw(self, request: bytes, timeout: float = 10) -> bytes:
        """Send ``request`` on a fresh connection, read until the server closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    def open_stream(self, query: str, as_: str | None = None) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        who = b"X-Test-Principal: %s\r\n" % as_.encode() if as_ else b""
        s.sendall(b"GET /mcp?%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n%s\r\n" % (query.encode(), who))
        return s


def _until(condition: Callable[[], bool], message: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.02)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(upstream: str, secret: bytes = b"s" * 32, **options: Any) -> Served:
        served = Served(UpstreamProxy(upstream, **options), secret)
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()


def _json_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == error


# -- 1. waiting for the headers --------------------------------------------------------------


def test_an_upstream_that_never_answers_is_a_504_after_the_header_timeout(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url, header_timeout=0.5)
    started = time.monotonic()
    response = served.post("mode=hang_headers")
    assert time.monotonic() - started < 5, "hung: the header timeout did not end the wait"  # a hang guard: 10x
    _json_error(response, 504, "gateway_timeout")
    assert response.json()["error_description"] == "the upstream MCP server did not answer in time"
    _until(lambda: fake.open == 0, "the timed-out upstream connection was not closed")


def test_a_quiet_stream_after_its_headers_is_not_cut_by_the_header_timeout(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url, header_timeout=0.3)
    response = httpx.get(f"{served.base}/mcp?mode=sse_quiet", timeout=10)
    assert response.status_code == 200 and response.text == "data: late\n\n"


def test_a_client_leaving_before_the_headers_frees_the_upstream_connection(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url)
    for i in range(3):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
            s.sendall(
                b"POST /mcp?mode=hang_headers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(PING), PING)
            )
            _until(lambda n=i + 1: len(fake.requests) == n, "the request did not reach the upstream")
    _until(lambda: fake.open == 0, "abandoned requests still hold upstream connections", timeout=5)
    assert len(fake.requests) == 3


# -- 2. the connection pool, and streams per subject -----------------------------------------


def test_an_exhausted_pool_is_a_503_with_retry_after(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url, max_connections=2, pool_timeout=0.3)
    streams = [served.open_stream("mode=sse_forever", as_=f"user{i}/app") for i in range(2)]
    try:
        _until(lambda: fake.open == 2, "the streams did not reach the upstream")
        started = time.monotonic()
        response = served.post(as_="user3/app")
        assert time.monotonic() - started < 5, "hung: the pool timeout did not end the wait"  # a hang guard: 16x
        _json_error(response, 503, "temporarily_unavailable")
        assert response.json()["error_description"] == "every connection to the upstream MCP server is in use"
        assert int(response.headers["retry-after"]) > 0
    finally:
        for s in streams:
            s.close()
    _until(lambda: served.post().status_code == 200, "the pool did not recover", timeout=5)


def test_one_subject_cannot_hold_more_than_its_share_of_streams(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url, max_open_per_subject=2)
    streams = [served.open_stream("mode=sse_forever", as_=f"alice/app{i}") for i in range(2)]
    try:
        _until(lambda: fake.open == 2, "the streams did not reach the upstream")
        response = served.post(as_="alice/app3")
        _json_error(response, 429, "too_many_requests")
        assert int(response.headers["retry-after"]) > 0
        assert served.post(as_="bob/app").status_code == 200, "another subject is not held back"
    finally:
        for s in streams:
            s.close()
    _until(lambda: served.post(as_="alice/app3").status_code == 200, "alice's count was not released", timeout=5)


# -- 3. an upstream breaking off mid-response ------------------------------------------------


@pytest.mark.parametrize("mode", ["truncated_cl", "truncated_chunked"])
def test_an_upstream_breaking_off_leaves_the_response_unfinished(
    fake: FakeUpstream, serve: Callable[..., Served], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve(fake.url)
    request = (
        b"POST /mcp?mode=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (mode.encode(), len(PING), PING)
    )
    complete = served.raw(request.replace(mode.encode(), b"ok"))
    assert complete.startswith(b"HTTP/1.1 200") and complete.endswith(b"0\r\n\r\n"), "control: a whole answer"
    with caplog.at_level(logging.WARNING):
        data = served.raw(request)
        _until(lambda: any(r.name == "kavach.proxy" for r in caplog.records), "the truncation was not logged")
    assert data.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in data.lower()
    assert not data.endswith(b"0\r\n\r\n"), "the response must not look complete"
    (warning,) = [r for r in caplog.records if r.name == "kavach.proxy"]
    assert warning.levelno == logging.WARNING and "broke off" in warning.getMessage()
    assert all(r.exc_info is None for r in caplog.records), "no traceback"


def test_a_truncated_answer_is_an_error_for_an_http_client(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    with pytest.raises(httpx.RemoteProtocolError):
        served.post("mode=truncated_chunked")


# -- 4. sessions belong to the principal they were issued to ---------------------------------


@pytest.fixture
def sdk_upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The SDK's MCP server (tests/mcp_upstream.py) and the file it logs its requests to."""
    with mcp_upstream(tmp_path) as running:
        yield running


def test_a_session_is_usable_and_deletable_only_by_its_own_principal(
    sdk_upstream: tuple[str, Path], serve: Callable[..., Served]
) -> None:
    url, seen = sdk_upstream
    served = serve(url)

    def call(body: bytes | None, as_: str, session: str | None = None, method: str = "POST") -> httpx.Response:
        headers = {**MCP_HEADERS, "X-Test-Principal": as_, "Content-Type": "application/json"}
        if session:
            headers["Mcp-Session-Id"] = session
        return httpx.request(method, served.base + "/mcp", content=body, headers=headers, timeout=10)

    def reached() -> int:
        return sum(1 for line in seen.read_text().splitlines() if line.strip())

    init = call(INITIALIZE_BODY, "alice/app")
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    assert call(INITIALIZED, "alice/app", sid).status_code == 202
    assert call(TOOLS_LIST, "alice/app", sid).status_code == 200

    before = reached()
    _json_error(call(TOOLS_LIST, "bob/app", sid), 404, "session_not_found")
    _json_error(call(None, "bob/app", sid, method="DELETE"), 404, "session_not_found")
    _json_error(call(TOOLS_LIST, "alice/other-app", sid), 404, "session_not_found")
    _json_error(call(TOOLS_LIST, "alice/app", "made-up-session"), 404, "session_not_found")
    assert reached() == before, "the upstream saw requests in a session that was not theirs"

    listed = call(TOOLS_LIST, "alice/app", sid)
    assert listed.status_code == 200 and "count" in listed.text, "the session survived bob's DELETE"
    assert call(None, "alice/app", sid, method="DELETE").status_code == 200
    assert call(TOOLS_LIST, "alice/app", sid).status_code == 404, "the upstream ended it"


def test_the_upstream_sees_its_own_session_id_and_the_client_a_sealed_one(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url)
    sid = served.post("mode=init", as_="alice/app").headers["mcp-session-id"]
    assert sid.startswith("s-1.") and len(sid) > len("s-1.") + 40
    assert all(0x21 <= ord(c) <= 0x7E for c in sid), "an Mcp-Session-Id is visible ASCII"
    assert served.post(as_="alice/app", **{"Mcp-Session-Id": sid}).status_code == 200
    assert dict(fake.requests[-1]["headers"])["mcp-session-id"] == "s-1"
    reached = len(fake.requests)
    for forged in ("s-1", sid[:-1] + ("A" if sid[-1] != "A" else "B"), sid + "x", "." + sid.split(".")[1]):
        _json_error(served.post(as_="alice/app", **{"Mcp-Session-Id": forged}), 404, "session_not_found")
    assert len(fake.requests) == reached, "no forged session id reached the upstream"


def test_several_session_ids_are_a_400(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    sid = served.post("mode=init", as_="alice/app").headers["mcp-session-id"]
    request = (
        b"POST /mcp?mode=ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Test-Principal: alice/app\r\n"
        b"Mcp-Session-Id: %s\r\nMcp-Session-Id: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (sid.encode(), sid.encode(), len(PING), PING)
    )
    answer = served.raw(request)
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"invalid_request"' in answer
    assert len(fake.requests) == 1


def test_a_session_started_through_one_instance_continues_through_another(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """Instances sharing a secret share sessions (no sticky load balancing); the binding holds across them."""
    first, second = serve(fake.url, secret=b"k" * 32), serve(fake.url, secret=b"k" * 32)
    stranger = serve(fake.url, secret=b"z" * 32)
    sid = first.post("mode=init", as_="alice/app").headers["mcp-session-id"]
    assert second.post(as_="alice/app", **{"Mcp-Session-Id": sid}).status_code == 200
    assert dict(fake.requests[-1]["headers"])["mcp-session-id"] == "s-1"
    reached = len(fake.requests)
    _json_error(second.post(as_="bob/app", **{"Mcp-Session-Id": sid}), 404, "session_not_found")
    _json_error(stranger.post(as_="alice/app", **{"Mcp-Session-Id": sid}), 404, "session_not_found")
    assert len(fake.requests) == reached


def test_a_seal_opens_only_for_its_owner() -> None:
    seal = SessionSeal(b"s" * 32)
    sealed = seal.seal("a.b.c", ("alice", "app"))
    assert seal.open(sealed, ("alice", "app")) == "a.b.c", "an upstream id with dots comes back whole"
    assert seal.open(sealed, ("bob", "app")) is None and seal.open(sealed, ("alice", "app2")) is None
    # the owner's parts cannot be shifted into each other or into the id
    assert SessionSeal(b"s" * 32).open(seal.seal("x", ("a", "b.c")), ("a.b", "c")) is None
    assert seal.open(seal.seal("x", ("a", "b")), ("a", "b")) == "x"
    assert seal.open(sealed, ("alice", "app")) == SessionSeal(b"s" * 32).open(sealed, ("alice", "app"))
    assert SessionSeal(b"t" * 32).open(sealed, ("alice", "app")) is None
    for garbage in ("", ".", "nodot", sealed + "\u00e9", "\u00ff." + sealed.split(".")[-1], sealed.replace(".", "")):
        assert seal.open(garbage, ("alice", "app")) is None
    with pytest.raises(ValueError):
        SessionSeal(b"short")


# -- 5. no access token in the forwarded URL --------------------------------------------------


def test_an_access_token_in_the_query_string_is_not_forwarded(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    query = "mode=ok&access_token=SECRET1&x=1&access%5Ftoken=SECRET2;access_token=SECRET3&y=2"
    assert served.post(query).status_code == 200
    (request,) = fake.requests
    assert "SECRET" not in request["line"]
    assert request["line"] == "POST /mcp?mode=ok&x=1&y=2 HTTP/1.1"


@pytest.mark.parametrize(
    "name",
    [
        "ACCESS_TOKEN",
        "Access_Token",
        "access_Token",
        "access.token",
        "access+token",
        "access[token",
        "access_token[]",
        "access_token%5B0%5D",
    ],
)
def test_an_access_token_parameter_spelt_otherwise_is_not_forwarded(
    fake: FakeUpstream, serve: Callable[..., Served], name: str
) -> None:
    """Spellings a lenient upstream reads as ``access_token`` stay here too: another case (ASP.NET
    Core's query is case-insensitive), ``.``, space or ``[`` for ``_`` (PHP's variable names), and
    an array of that name (PHP and Rails read ``access_token[]`` as ``access_token``)."""
    served = serve(fake.url)
    assert served.post(f"mode=ok&{name}=SECRET&x=1").status_code == 200
    (request,) = fake.requests
    assert request["line"] == "POST /mcp?mode=ok&x=1 HTTP/1.1"


def test_the_client_cannot_override_a_parameter_of_the_upstream_url(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """A parameter the operator wrote into ``--upstream`` (a profile, a tenant) is the operator's:
    the client's own copy of it, in any spelling read as the same name, is not sent after it,
    where a server taking the last value would read the client's. Other parameters go on."""
    served = serve(fake.url + "?profile=readonly")
    assert served.post("mode=ok&profile=admin&PROFILE=admin&x=1").status_code == 200
    (request,) = fake.requests
    assert request["line"] == "POST /mcp?profile=readonly&mode=ok&x=1 HTTP/1.1"


def test_the_client_cannot_override_a_header_of_the_given_client(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """A header a ``client=`` given to the proxy sets (its key for the upstream) is the
    operator's: the end client's header of that name is not sent in its place."""
    served = serve(fake.url, client=httpx.AsyncClient(headers={"X-Upstream-Key": "k1"}))
    assert served.post("mode=ok", **{"X-Upstream-Key": "mine"}).status_code == 200
    (request,) = fake.requests
    assert [v for k, v in request["headers"] if k == "x-upstream-key"] == ["k1"]


def test_a_url_too_long_to_forward_is_a_414_not_a_500(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """A query that makes the upstream URL longer than the HTTP client builds is answered 414 in
    JSON (RFC 9110 §15.5.15), and nothing reaches the upstream; before, a 500 and a traceback."""
    served = serve(fake.url)
    target = b"/mcp?mode=ok&x=" + b"a" * 65500
    answer = served.raw(
        b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Test-Principal: alice/app\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (target, len(PING), PING)
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414"), answer[:200]
    assert json.loads(body)["error"] == "invalid_request"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/mcp", "/mcp"),
        ("/mcp?x=1", "/mcp?x=1"),
        ("/mcp?access_token=abc&x=1", "/mcp?access_token=[redacted]&x=1"),
        ("/mcp?x=1;Access.Token=abc&access_token", "/mcp?x=1;Access.Token=[redacted]&access_token=[redacted]"),
        ("/mcp?access%5Ftoken=a=b", "/mcp?access%5Ftoken=[redacted]"),
        (
            "/token?grant_type=refresh_token&Refresh_Token=kvr_x&client_id=c&client_secret=s",
            "/token?grant_type=refresh_token&Refresh_Token=[redacted]&client_id=c&client_secret=[redacted]",
        ),
        ("/token?code=abc;code_verifier=v&x=1", "/token?code=[redacted];code_verifier=[redacted]&x=1"),
        ("/revoke?token=t&token_type_hint=refresh_token", "/revoke?token=[redacted]&token_type_hint=refresh_token"),
        ("/consent?ticket=t&link=l", "/consent?ticket=[redacted]&link=l"),
        ("/login?password=p&client_assertion=a", "/login?password=[redacted]&client_assertion=[redacted]"),
        (
            "/token?client_secret[]=s&password%5B0%5D=p&x[]=1",
            "/token?client_secret[]=[redacted]&password%5B0%5D=[redacted]&x[]=1",
        ),
    ],
)
def test_a_logged_target_shows_no_credential(target: str, logged: str) -> None:
    """RFC 6750 §5.3, RFC 6749 §10.3 and §10.5: tokens, codes and secrets sent in a URL stay out of
    the access log, however their names are spelt; other parameters are logged as sent."""
    assert redacted_target(target) == logged


# -- 6. the upstream's Set-Cookie and challenges ----------------------------------------------


def test_upstream_cookies_of_kavach_and_challenges_stay_behind(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    served = serve(fake.url)
    response = served.post("mode=headers")
    assert response.status_code == 200
    assert response.headers.get_list("set-cookie") == ["upstream_sess=abc; Path=/"]
    assert "www-authenticate" not in response.headers and "proxy-authenticate" not in response.headers
    assert response.headers["x-upstream"] == "kept"


def test_the_proxys_own_client_keeps_no_cookie_and_adds_no_header(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """The client ``kavach serve`` makes: a cookie the upstream set on one person's answer is not
    sent with the next request (anyone's), and a request without ``User-Agent``, ``Accept`` or
    ``Accept-Encoding`` goes upstream without them (an upstream honouring an added
    ``Accept-Encoding`` would answer in a coding the client never asked for)."""
    served = serve(fake.url)
    assert served.post("mode=headers", as_="alice/c1").status_code == 200
    answer = served.raw(
        b"POST /mcp?mode=ok HTTP/1.1\r\nHost: x\r\nX-Test-Principal: bob/c1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(PING), PING)
    )
    assert answer.startswith(b"HTTP/1.1 200")
    first, second = (dict(request["headers"]) for request in fake.requests)
    assert "cookie" not in second, second
    assert not {"user-agent", "accept", "accept-encoding"} & set(second), second
    assert first["user-agent"].startswith("python-httpx")  # the test's own client sent one: it went on


def test_a_client_given_to_the_proxy_keeps_its_configuration(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """A ``client=`` authenticating the proxy to its upstream (a header of its own) is used as
    configured; only the cookies its jar keeps stay behind."""
    given = httpx.AsyncClient(headers={"X-Upstream-Key": "k1"})
    served = serve(fake.url, client=given)
    assert served.post("mode=headers").status_code == 200
    assert "upstream_sess" in str(given.cookies.jar)  # its jar took the upstream's cookie...
    assert served.post("mode=ok").status_code == 200
    second = dict(fake.requests[1]["headers"])
    assert second["x-upstream-key"] == "k1" and "cookie" not in second  # ...which is never sent


@pytest.mark.parametrize("mode", ["401", "407"])
def test_an_upstream_challenge_is_a_502(fake: FakeUpstream, serve: Callable[..., Served], mode: str) -> None:
    served = serve(fake.url)
    response = served.post(f"mode={mode}")
    _json_error(response, 502, "bad_gateway")
    assert "www-authenticate" not in response.headers and "proxy-authenticate" not in response.headers


def test_a_refused_answer_gives_back_its_upstream_connection(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """A challenge or a redirect is answered 502 without its body being read: the upstream
    response is closed all the same, so with one upstream connection the next request gets it
    (not a 503 for a connection still held)."""
    served = serve(fake.url, max_connections=1, pool_timeout=0.5)
    for mode in ("401", "307"):
        _json_error(served.post(f"mode={mode}"), 502, "bad_gateway")
    assert served.post().status_code == 200


@pytest.mark.parametrize("mode", ["301", "307", "308"])
def test_an_upstream_redirect_is_a_502_that_names_no_upstream_address(
    fake: FakeUpstream, serve: Callable[..., Served], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve(fake.url)
    with caplog.at_level(logging.WARNING, logger="kavach.proxy"):
        response = served.post(f"mode={mode}")
    _json_error(response, 502, "bad_gateway")
    assert "location" not in response.headers
    assert str(fake.port) not in response.text, "the upstream's own address stays behind"
    assert len(fake.requests) == 1, "the redirect is not followed"
    assert f"127.0.0.1:{fake.port}/mcp/" in caplog.text, "the operator learns where the upstream pointed"
    assert served.post().status_code == 200, "the proxy still answers"


def test_not_modified_is_no_redirect(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    assert served.post("mode=304").status_code == 304


# -- 7. forwarding headers ---------------------------------------------------------------------


def test_forwarding_headers_are_the_proxys_own(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "1",
        "Forwarded": "for=6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "Host": "mcp.example:8000",
    }
    assert served.post(**forged).status_code == 200
    (request,) = fake.requests
    headers = request["headers"]
    names = [k for k, _ in headers]
    fields = dict(headers)
    assert "6.6.6.6" not in json.dumps(headers) and "evil.example" not in json.dumps(headers)
    assert "forwarded" not in names and "x-real-ip" not in names and "x-forwarded-port" not in names
    assert names.count("x-forwarded-for") == 1 and fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["x-forwarded-proto"] == "http"
    assert fields["x-forwarded-host"] == "mcp.example:8000"
    assert fields["via"] == "1.1 kavach"
    assert fields["host"] == f"127.0.0.1:{fake.port}"


def test_header_bytes_outside_ascii_pass_both_ways_unchanged(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """An upstream header in UTF-8 and a client header with a latin-1 byte (RFC 9110 §5.5
    obs-text) go on byte for byte, not as a 500."""
    served = serve(fake.url)
    request = (
        b"POST /mcp?mode=utf8header HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Client: caf\xe9\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(PING), PING)
    )
    answer = served.raw(request)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"\r\nx-name: \xe2\x9c\x93 caf\xc3\xa9\r\n" in answer.lower()
    (seen,) = fake.requests
    assert dict(seen["headers"])["x-client"] == "caf\xe9"


# -- 8. a status code that is no HTTP status ---------------------------------------------------


def test_a_nonsense_status_is_a_502(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    _json_error(served.post("mode=badstatus"), 502, "bad_gateway")
    assert served.post().status_code == 200, "the proxy still answers"


# -- 9. the request body goes with its length --------------------------------------------------


def test_the_request_body_is_sent_with_its_content_length(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    served = serve(fake.url)
    assert served.post().status_code == 200
    assert httpx.get(f"{served.base}/mcp?mode=ok", timeout=10).status_code == 200
    post, get = fake.requests
    assert dict(post["headers"])["content-length"] == str(len(PING)) and post["body"] == PING
    assert "transfer-encoding" not in dict(post["headers"])
    assert "content-length" not in dict(get["headers"]) and "transfer-encoding" not in dict(get["headers"])


# -- 10. the session binding, message by message (kavach.mcp_sessions) -------------------------


def _recorded() -> tuple[list[dict[str, Any]], Callable[[Any], Any]]:
    """An ASGI ``send`` that records each message it is given."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    return sent, send


def test_a_sealed_session_id_is_hmac_sha256_under_a_key_of_its_own() -> None:
    """``ID.TAG``, TAG the unpadded base64url HMAC-SHA256 (RFC 2104) of ``[subject, client, ID]``
    under HMAC-SHA256(secret, the binding's label): instances of any release keyed with one secret
    open each other's ids, and the tag is no MAC a raw use of the secret elsewhere could give."""
    import base64
    import hashlib
    import hmac

    secret = b"k" * 32
    key = hmac.new(secret, b"kavach guard: Mcp-Session-Id binding", hashlib.sha256).digest()
    mac = hmac.new(key, json.dumps(["alice", "app", "s-1"]).encode("ascii"), hashlib.sha256).digest()
    tag = base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
    assert SessionSeal(secret).seal("s-1", ("alice", "app")) == f"s-1.{tag}"
    assert SessionSeal(secret).open(f"s-1.{tag}", ("alice", "app")) == "s-1"


def test_the_session_secret_is_16_bytes_or_more() -> None:
    SessionSeal(b"x" * 16)  # the shortest secret taken
    for wrong in (b"x" * 15, "x" * 32):
        with pytest.raises(ValueError, match="at least 16 bytes"):
            SessionSeal(wrong)  # type: ignore[arg-type]


def test_a_seal_of_an_empty_id_or_with_a_tag_outside_latin_1_never_opens() -> None:
    """An empty session id is no session, even with its right tag; a tag with characters outside
    Latin-1 (a header decoded otherwise) is refused, never an error."""
    seal = SessionSeal(b"s" * 32)
    owner = ("alice", "app")
    assert seal.open(seal.seal("", owner), owner) is None
    assert seal.open(seal.seal("s-1", owner) + "\u0100", owner) is None
    assert seal.open("s-1.\u0100\u2603", owner) is None


def test_the_owner_is_read_from_a_state_mapping_or_object_and_is_none_without_a_principal() -> None:
    principal = SimpleNamespace(subject="alice", client_id="app")
    assert owner_of({"state": {"principal": principal}}) == ("alice", "app")
    assert owner_of({"state": SimpleNamespace(principal=principal)}) == ("alice", "app"), "Starlette's State"
    for scope in ({}, {"state": None}, {"state": {}}, {"state": SimpleNamespace()}):
        assert owner_of(scope) is None


def test_a_refusal_is_a_json_error_with_its_length_and_retry_after_when_given() -> None:
    sent, send = _recorded()
    asyncio.run(refuse(send, 429, "too_many_requests", "wait", 7, more=[(b"x-more", b"1")]))
    start, body = sent
    assert start["type"] == "http.response.start" and start["status"] == 429
    data = json.dumps({"error": "too_many_requests", "error_description": "wait"}).encode()
    assert start["headers"] == [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"x-more", b"1"),
        (b"retry-after", b"7"),
    ]
    assert body == {"type": "http.response.body", "body": data, "more_body": False}
    sent.clear()
    asyncio.run(refuse(send, 404, "session_not_found", "no such MCP session"))
    assert not any(name == b"retry-after" for name, _ in sent[0]["headers"])


def test_the_binding_opens_one_id_of_its_owner_and_refuses_others() -> None:
    binding = SessionBinding(b"s" * 32)
    sealed = binding.seal.seal("s-\xe9", ("alice", "app")).encode("latin-1")
    assert binding.open([sealed], ("alice", "app")) == "s-\xe9".encode("latin-1")
    assert binding.open([sealed], ("bob", "app")) == (404, "session_not_found", "no such MCP session")
    assert binding.open([sealed, sealed], ("alice", "app")) == (
        400, "invalid_request", "more than one Mcp-Session-Id header"
    )  # fmt: skip


def test_the_binding_seals_only_the_session_header_of_the_response_start() -> None:
    """Every ``Mcp-Session-Id`` of the answer's head, whatever its case, is sealed to the owner; other
    headers and the body pass unchanged, and a head without one is passed as it was."""
    binding = SessionBinding(b"s" * 32)
    owner = ("alice", "app")
    sent, send = _recorded()
    sealing = binding.sealing(send, owner)
    head = {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"Mcp-Session-Id", b"s-1")]}  # fmt: skip
    body = {"type": "http.response.body", "body": b"mcp-session-id", "more_body": False}

    async def answer() -> None:
        await sealing(head)
        await sealing(body)

    asyncio.run(answer())
    (name, value) = sent[0]["headers"][1]
    assert sent[0]["headers"][0] == (b"content-type", b"text/plain") and name == b"Mcp-Session-Id"
    assert binding.seal.open(value.decode("latin-1"), owner) == "s-1"
    assert sent[1] == body
    plain = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    sent.clear()
    asyncio.run(sealing(plain))
    assert sent == [plain]
    sent.clear()
    asyncio.run(sealing({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", b"s-2")]}))
    ((_, alone),) = sent[0]["headers"]
    assert binding.seal.open(alone.decode("latin-1"), owner) == "s-2", "the only header of the head is sealed too"


# -- 11. failures, bodies and the client the proxy makes ----------------------------------------


def test_an_upstream_hanging_up_without_an_answer_is_a_502(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """A connection the upstream closes after reading the request, with no status line, is a
    JSON 502 naming the failure (no 500, no traceback), and the proxy answers the next request."""
    served = serve(fake.url)
    response = served.post("mode=hang_up")
    _json_error(response, 502, "bad_gateway")
    assert response.json()["error_description"] == "the upstream MCP server gave no usable answer (RemoteProtocolError)"
    assert len(fake.requests) == 1
    assert served.post().status_code == 200, "the proxy still answers"


def test_a_read_timeout_of_a_given_client_is_a_504(fake: FakeUpstream, serve: Callable[..., Served]) -> None:
    """A ``client=`` with a read timeout of its own: the upstream silent past it is a timeout,
    answered 504 in JSON (a gateway timeout, not an unreachable upstream's 502)."""
    given = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=0.2))
    served = serve(fake.url, client=given)
    response = served.post("mode=hang_headers")
    _json_error(response, 504, "gateway_timeout")
    assert response.json()["error_description"] == "the upstream MCP server did not answer in time (ReadTimeout)"
    _until(lambda: fake.open == 0, "the timed-out upstream connection was not closed")


@pytest.mark.parametrize("status", ["300", "399", "600"])
def test_any_3xx_but_304_or_a_status_past_599_is_a_502(
    fake: FakeUpstream, serve: Callable[..., Served], status: str
) -> None:
    """300 and an unregistered 3xx are redirects like any other but 304 (their ``Location`` would
    name the upstream), and 600 is no HTTP status (RFC 9110 §15: 100-599): none goes to the
    client, each is a 502."""
    served = serve(fake.url)
    _json_error(served.post(f"mode=status{status}"), 502, "bad_gateway")
    for passed in ("299", "599"):  # control: a 2xx, and the last status of HTTP, pass
        assert served.post(f"mode=status{passed}").status_code == int(passed)


def test_a_post_without_a_body_says_so_and_a_get_or_delete_sends_no_length(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """An empty POST goes upstream with ``Content-Length: 0`` (RFC 9110 §8.6: a request whose
    method expects content says it has none), a GET or DELETE without a body with no framing
    header at all."""
    served = serve(fake.url)
    assert served.post(body=b"").status_code == 200
    assert httpx.delete(f"{served.base}/mcp?mode=ok", timeout=10).status_code == 200
    post, delete = fake.requests
    assert dict(post["headers"])["content-length"] == "0" and post["body"] == b""
    assert delete["line"].startswith("DELETE ")
    assert "content-length" not in dict(delete["headers"]) and "transfer-encoding" not in dict(delete["headers"])


def test_a_body_over_the_limit_is_a_413_and_never_reaches_the_upstream(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """The proxy reads the body itself when no guard did: one over 4 MiB is answered 413 here and
    nothing goes upstream; the connection then serves the next request."""
    from kavach.starlette import MAX_BODY

    served = serve(fake.url)

    def request(query: bytes, body: bytes, last: bool = False) -> bytes:
        close = b"Connection: close\r\n" if last else b""
        head = b"POST /mcp?%s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n" % (query, close)
        return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(request(b"mode=ok&n=1", b"x" * (MAX_BODY + 1)))
        data = b""
        while b"}" not in data:  # the 413's JSON body, whole
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 413 ") and b'"invalid_request"' in data
        s.sendall(request(b"mode=ok&n=2", PING, last=True))  # the same connection, once the first is answered
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and OK_BODY in data
    assert [r["line"] for r in fake.requests] == ["POST /mcp?mode=ok&n=2 HTTP/1.1"]


def test_the_proxys_own_client_ignores_proxy_environment_variables(
    fake: FakeUpstream, serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client ``kavach serve`` makes takes nothing from the environment (``trust_env=False``):
    an ``HTTP_PROXY`` or ``ALL_PROXY`` set for other programs does not divert the upstream traffic,
    with the client's request in it, through another host."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, nowhere)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    served = serve(fake.url)  # an httpx client reads the environment when it is made
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name)  # (the test's own client goes straight to the proxy)
    assert served.post().status_code == 200
    assert len(fake.requests) == 1, "the request went straight to the upstream"


def test_the_proxy_closes_its_own_client_and_never_a_given_one(fake: FakeUpstream) -> None:
    """``aclose`` (at the app's shutdown) closes the client the proxy made, and leaves a ``client=``
    given to it open: its owner may still be using it."""

    async def run() -> None:
        own = UpstreamProxy(fake.url)
        given = httpx.AsyncClient()
        lent = UpstreamProxy(fake.url, client=given)
        await own.aclose()
        await lent.aclose()
        assert own.client.is_closed
        assert not given.is_closed
        assert (await given.post(fake.url, content=PING)).status_code == 200, "the given client still works"
        await given.aclose()

    asyncio.run(run())


def test_nothing_is_kept_per_subject_once_its_requests_are_done(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """The count of one subject's open requests (for the 429) is dropped once none is open: a
    proxy that has seen many subjects keeps nothing for them."""
    served = serve(fake.url, max_open_per_subject=2)
    for i in range(3):
        assert served.post(as_=f"user{i}/app").status_code == 200
    stream = served.open_stream("mode=sse_forever", as_="alice/app")
    try:
        _until(lambda: served.proxy._open == {"alice": 1}, "the open stream was not counted")
    finally:
        stream.close()
    _until(lambda: served.proxy._open == {}, "a subject's count outlived its requests")


def test_a_request_without_a_query_goes_to_the_upstream_url_as_it_is(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """No query left to forward (none sent, or only an ``access_token``): the upstream URL is
    requested as given, with no dangling ``?``."""
    served = serve(fake.url)
    assert httpx.post(f"{served.base}/mcp", content=PING, timeout=10).status_code == 200
    assert served.post("access_token=SECRET").status_code == 200
    assert [r["line"] for r in fake.requests] == ["POST /mcp HTTP/1.1", "POST /mcp HTTP/1.1"]


def test_a_finished_request_gives_back_one_place_of_its_subject_not_all(
    fake: FakeUpstream, serve: Callable[..., Served]
) -> None:
    """With two of alice's streams open and one closed, she holds one place: one more stream is
    let in, and then her next request is refused again (429)."""
    served = serve(fake.url, max_open_per_subject=2)
    streams = [served.open_stream("mode=sse_forever", as_=f"alice/app{i}") for i in range(2)]
    try:
        _until(lambda: fake.open == 2, "the streams did not reach the upstream")
        streams.pop(0).close()
        _until(lambda: fake.open == 1, "the closed stream's upstream request was not ended")
        _until(lambda: served.post(as_="alice/app").status_code == 200, "the closed stream's place was not given back")
        streams.append(served.open_stream("mode=sse_forever", as_="alice/app2"))
        _until(lambda: fake.open == 2, "the third stream did not reach the upstream")
        _json_error(served.post(as_="alice/app3"), 429, "too_many_requests")
    finally:
        for s in streams:
            s.close()


@pytest.mark.parametrize("status", ["400", "403", "404", "500", "503"])
def test_an_upstream_error_other_than_a_challenge_passes_as_it_is(
    fake: FakeUpstream, serve: Callable[..., Served], status: str
) -> None:
    """Only 401 and 407 (a challenge) and the redirects are the proxy's to refuse: the upstream's
    other 4xx and 5xx answers (a malformed JSON-RPC message, an ended session, its own failure)
    reach the client with their status."""
    served = serve(fake.url)
    assert served.post(f"mode=status{status}").status_code == int(status)


def test_an_upstream_challenge_is_logged_for_the_operator(
    fake: FakeUpstream, serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """The client only sees a 502; the log says the upstream asked the proxy for credentials (an
    upstream configured to check tokens itself, or missing the ``client=`` key it expects)."""
    served = serve(fake.url)
    with caplog.at_level(logging.WARNING, logger="kavach.proxy"):
        _json_error(served.post("mode=401"), 502, "bad_gateway")
    (warning,) = [r for r in caplog.records if r.name == "kavach.proxy"]
    assert warning.levelno == logging.WARNING and "401" in warning.getMessage()
    assert "credentials" in warning.getMessage()


def test_an_upstream_refusing_connections_is_a_502_saying_it_could_not_be_reached(
    serve: Callable[..., Served],
) -> None:
    """Nothing listening at the upstream's port: a 502 whose description says the upstream could
    not be reached (not that it answered badly), and no traceback."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    served = serve(f"http://127.0.0.1:{port}/mcp")
    response = served.post()
    _json_error(response, 502, "bad_gateway")
    assert response.json()["error_description"] == "the upstream MCP server could not be reached (ConnectError)"
