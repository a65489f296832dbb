"""The aiohttp guard and endpoints on input the happy path does not send, against a real aiohttp
server: how ``paths`` and ``required`` are given, header bytes that are not UTF-8, a body an outer
middleware already read, state the handler sets, and the 4 MiB body cap every adapter shares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from conftest import RESOURCE, Harness
from issued_tokens import issue
from kavach import aiohttp as kaiohttp
from kavach.aiohttp import MAX_BODY, PRINCIPAL, guard_middleware, mount
from kavach.server import TOO_LARGE, AuthorizationServer
from kavach.users import MemoryUsers, Users

CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
HANDLED: Any = getattr(web, "RequestKey", lambda name, _: name)("test.handled", bool)
Middleware = Any  # an aiohttp middleware
LATIN = (b"X-Name", b"caf\xe9")
"""A header value that is not UTF-8: latin-1 é, RFC 9110 §5.5 obs-text."""


class Kit:
    """An authorization server on a memory store with a fixed clock, and tokens for ``RESOURCE``."""

    def __init__(self) -> None:
        self.h = Harness()
        self.server = AuthorizationServer(
            self.h.config, self.h.store, users=Users(MemoryUsers(), log_n=10), clock=lambda: self.h.now
        )

    def token(self, scopes: tuple[str, ...] = ("tools:list",)) -> str:
        return issue(self.h, scopes=scopes).access


def _call(size: int) -> bytes:
    """A ``tools/list`` call of exactly ``size`` bytes (JSON padded with trailing spaces)."""
    return CALL + b" " * (size - len(CALL))


async def _tool(request: web.Request) -> web.Response:
    """Reports what the handler got: the principal, the body, any Authorization, the raw X-Name."""
    body = await request.read()
    message = await request.json()
    request[HANDLED] = True
    return web.json_response(
        {
            "subject": request[PRINCIPAL].subject,
            "method": message["method"],
            "size": len(body),
            "authorization": [k for k in request.headers if k.lower() == "authorization"]
            + [k.decode("latin-1") for k, _ in request.raw_headers if k.lower() == b"authorization"],
            "x_name": [v.decode("latin-1") for k, v in request.raw_headers if k.lower() == b"x-name"],
        }
    )


async def _open(request: web.Request) -> web.Response:
    return web.Response(text="open")


def _app(
    kit: Kit, *, outer: tuple[Middleware, ...] = (), client_max_size: int = 1024**2, **guard: Any
) -> web.Application:
    app = web.Application(
        middlewares=[*outer, guard_middleware(kit.server, RESOURCE, **guard)], client_max_size=client_max_size
    )
    app.router.add_post("/mcp", _tool)
    app.router.add_post("/also", _tool)
    app.router.add_get("/", _open)
    mount(app, kit.server)
    return app


@contextlib.asynccontextmanager
async def _serving(app: web.Application) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` on a real aiohttp server on 127.0.0.1 (AppRunner + TCPSite), and an httpx client for it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        await runner.cleanup()


def _run(app: web.Application, body: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with _serving(app) as client:
            await body(client)

    asyncio.run(main())


@pytest.fixture
def kit() -> Kit:
    return Kit()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERROR records logged so far (aiohttp logs its own 500s, with a traceback)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _bearer(token: str, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode()), (b"Content-Type", b"application/json"), *extra]


# -- defect 1: paths= and required= of the wrong shape are refused when the middleware is built -----


@pytest.mark.parametrize("paths", ["/mcp", b"/mcp", bytearray(b"/mcp"), 42])
def test_paths_that_are_not_a_collection_of_paths_are_refused(kit: Kit, paths: Any) -> None:
    with pytest.raises(TypeError, match="paths= takes a collection of paths"):
        guard_middleware(kit.server, RESOURCE, paths=paths)


@pytest.mark.parametrize("paths", [["mcp"], ["/mcp", b"/also"], [("/mcp",)], ["/mcp", ""]])
def test_paths_must_each_start_with_a_slash(kit: Kit, paths: Any) -> None:
    with pytest.raises(ValueError, match="paths= takes paths starting with '/'"):
        guard_middleware(kit.server, RESOURCE, paths=paths)


@pytest.mark.parametrize("paths", [[], (), set()])
def test_no_paths_at_all_is_refused(kit: Kit, paths: Any) -> None:
    with pytest.raises(ValueError, match="paths= is empty"):
        guard_middleware(kit.server, RESOURCE, paths=paths)


@pytest.mark.parametrize("required", [("tools:list",), "tools:list", ["tools:list"], 0])
def test_required_that_is_not_callable_is_refused(kit: Kit, required: Any) -> None:
    with pytest.raises(TypeError, match="required= takes a function"):
        guard_middleware(kit.server, RESOURCE, required=required)


@pytest.mark.parametrize("make", [list, tuple, set, frozenset, lambda ps: (p for p in ps)])
def test_paths_as_any_collection_guard_exactly_those_paths(kit: Kit, make: Callable[[Any], Any]) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        for path in ("/mcp", "/also"):
            refused = await client.post(path, content=CALL, headers={"Content-Type": "application/json"})
            assert refused.status_code == 401
            assert refused.json() == {"error": "unauthorized", "error_description": "A Bearer access token is required"}
        opened = await client.get("/")
        assert opened.status_code == 200 and opened.text == "open"
        r = await client.post("/also", content=CALL, headers=_bearer(kit.token()))
        assert r.status_code == 200 and r.json()["subject"] == "alice" and r.json()["authorization"] == []

    _run(_app(kit, paths=make(["/mcp", "/also"])), body)


def test_a_callable_required_still_decides_the_scopes(kit: Kit) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        r = await client.post("/mcp", content=CALL, headers=_bearer(kit.token(("tools:list",))))
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"

    _run(_app(kit, required=lambda req: ("tools:call",)), body)


# -- defect 2: a header value that is not UTF-8 (RFC 9110 §5.5 obs-text) ------------------------------


HANDED_ON = {"subject": "alice", "method": "tools/list", "size": len(CALL), "authorization": [], "x_name": ["caf\xe9"]}
"""What the handler reports for alice's CALL with the latin-1 header: the body whole, the header's
bytes as sent, no Authorization."""


def test_a_latin_1_header_value_is_no_500_and_reaches_the_handler_unchanged(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        refused = await client.post("/mcp", content=CALL, headers=[LATIN, (b"Content-Type", b"application/json")])
        assert refused.status_code == 401  # as Starlette: the token is checked, not the header's bytes
        assert refused.json() == {"error": "unauthorized", "error_description": "A Bearer access token is required"}
        r = await client.post("/mcp", content=CALL, headers=_bearer(kit.token(), LATIN))
        assert r.status_code == 200
        assert r.json() == HANDED_ON

    _run(_app(kit), body)
    assert _errors(caplog) == []


def test_a_latin_1_authorization_value_is_an_invalid_token(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        headers = [(b"Authorization", b"Bearer caf\xe9"), (b"Content-Type", b"application/json")]
        r = await client.post("/mcp", content=CALL, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"

    _run(_app(kit), body)
    assert _errors(caplog) == []


# -- defect 3: an outer middleware read the body first ------------------------------------------------


@web.middleware
async def _reads_first(request: web.Request, handler: Any) -> web.StreamResponse:
    """A logging middleware, say, that reads the body before the guard runs."""
    await request.read()
    response: web.StreamResponse = await handler(request)
    return response


def test_a_body_read_by_an_outer_middleware_is_guarded_and_handed_on(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        refused = await client.post("/mcp", content=CALL, headers={"Content-Type": "application/json"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        r = await client.post("/mcp", content=CALL, headers=_bearer(kit.token(), LATIN))
        assert r.status_code == 200
        assert r.json() == HANDED_ON

    _run(_app(kit, outer=(_reads_first,)), body)
    assert _errors(caplog) == []


@web.middleware
async def _reads_the_form(request: web.Request, handler: Any) -> web.StreamResponse:
    """A CSRF check, say, that reads the form of every POST before the guard runs."""
    await request.post()
    response: web.StreamResponse = await handler(request)
    return response


@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_a_body_an_outer_middleware_read_as_a_form_is_judged_or_refused(kit: Kit, kind: str) -> None:
    """aiohttp keeps a urlencoded body it parsed (the guard judges it: a form is no JSON-RPC, so
    the unknown-method scope), but not a multipart one: the guard would judge an empty body while
    the handler is given the form, so it refuses (415) and the handler never runs."""
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({k: str(v) for k, v in (await request.post()).items()})
        return web.json_response({"ran": True})

    app = web.Application(middlewares=[_reads_the_form, guard_middleware(kit.server, RESOURCE)])
    app.router.add_post("/mcp", handler)
    auth = {"Authorization": f"Bearer {kit.token()}"}
    form = {"method": "tools/call", "name": "delete"}

    async def body(client: httpx.AsyncClient) -> None:
        if kind == "urlencoded":
            r = await client.post("/mcp", data=form, headers=auth)
            assert r.status_code == 403 and 'scope="mcp:unknown-method"' in r.headers["www-authenticate"]
        else:
            r = await client.post("/mcp", data=form, files={"f": b"x"}, headers=auth)
            assert r.status_code == 415, r.text
            assert "application/json" in r.json()["error_description"]
        listing = await client.post("/mcp", content=CALL, headers={**auth, "Content-Type": "application/json"})
        assert listing.status_code == 200  # a JSON body is no form: read whole, judged, handed on

    _run(app, body)
    assert seen == [{}]  # only the JSON request reached the handler


@pytest.mark.parametrize("outer", [(), (_reads_the_form,)], ids=["alone", "after a form reader"])
def test_an_empty_chunked_body_is_judged_empty_not_refused_as_a_form_read_before(
    kit: Kit, outer: tuple[Middleware, ...]
) -> None:
    """A body sent chunked with no chunk at all is over before the guard runs, with nothing
    parsed: it is an empty body (no scope beyond a valid token), whatever ran before."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"size": len(await request.read())})

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator: httpx sends it chunked

    app = web.Application(middlewares=[*outer, guard_middleware(kit.server, RESOURCE)])
    app.router.add_route("*", "/mcp", handler)

    async def body(client: httpx.AsyncClient) -> None:
        for method in ("POST", "DELETE", "GET"):
            auth = {"Authorization": f"Bearer {kit.token()}"}
            r = await client.request(method, "/mcp", content=nothing(), headers=auth)
            assert (r.status_code, r.json()) == (200, {"size": 0}), (method, r.text)

    _run(app, body)


@pytest.mark.parametrize("outer", [(), (_reads_first,)])
def test_no_spelling_of_authorization_reaches_the_handler(kit: Kit, outer: tuple[Middleware, ...]) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        token = kit.token()
        for name in ("authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"):
            headers = [(name, f"Bearer {token}"), ("Content-Type", "application/json")]
            r = await client.post("/mcp", content=CALL, headers=headers)
            assert r.status_code == 200 and r.json()["subject"] == "alice"
            assert r.json()["authorization"] == []

    _run(_app(kit, outer=outer), body)


def test_if_the_header_cannot_be_removed_the_handler_is_not_called(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def cannot(request: web.Request) -> None:
        raise RuntimeError("cannot remove it")

    monkeypatch.setattr(kaiohttp, "_remove_authorization", cannot)
    called: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        called.append(True)
        return web.Response(text="reached")

    app = web.Application(middlewares=[guard_middleware(kit.server, RESOURCE)])
    app.router.add_post("/mcp", handler)

    async def body(client: httpx.AsyncClient) -> None:
        r = await client.post("/mcp", content=CALL, headers=_bearer(kit.token()))
        assert r.status_code == 500 and r.json() == {"error": "server_error"}
        assert r.headers["Content-Type"] == "application/json"

    _run(app, body)
    assert called == []
    assert any(r.name == "kavach" and r.exc_info and str(r.exc_info[1]) == "cannot remove it" for r in caplog.records)


# -- defect 6: the handler's request is the outer middlewares' request ---------------------------------


@web.middleware
async def _reports_state(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    principal = request.get(PRINCIPAL)
    response.headers["X-Handled"] = str(request.get(HANDLED, False))
    response.headers["X-Subject"] = principal.subject if principal is not None else "-"
    response.headers["X-Saw-Authorization"] = str("Authorization" in request.headers)
    return response


def test_state_the_handler_sets_is_seen_by_outer_middlewares(kit: Kit) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        r = await client.post("/mcp", content=CALL, headers=_bearer(kit.token()))
        assert r.status_code == 200
        assert (r.headers["X-Handled"], r.headers["X-Subject"]) == ("True", "alice")
        assert r.headers["X-Saw-Authorization"] == "False"  # removed for good, not only for the handler

    _run(_app(kit, outer=(_reports_state,)), body)


# -- defect 4: 4 MiB, as the Starlette and Flask adapters, whatever client_max_size says -------------


@pytest.mark.parametrize("outer", [(), (_reads_first,)])
def test_the_guard_caps_bodies_at_4_mib_even_when_client_max_size_is_larger(
    kit: Kit, outer: tuple[Middleware, ...]
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        token = kit.token()
        ok = await client.post("/mcp", content=_call(MAX_BODY), headers=_bearer(token))
        assert ok.status_code == 200 and ok.json()["size"] == MAX_BODY
        big = await client.post("/mcp", content=_call(MAX_BODY + 1), headers=_bearer(token))
        assert big.status_code == 413
        assert big.content == TOO_LARGE.body and big.headers["Content-Type"] == "application/json"

    _run(_app(kit, outer=outer, client_max_size=100 * 1024 * 1024), body)


def test_the_guard_reads_up_to_4_mib_even_when_client_max_size_is_smaller(kit: Kit) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        token = kit.token()
        for size in (1024 + 1, 3 * 1024 * 1024 // 2, MAX_BODY):
            r = await client.post("/mcp", content=_call(size), headers=_bearer(token))
            assert r.status_code == 200 and r.json()["size"] == size and r.json()["subject"] == "alice"
        big = await client.post("/mcp", content=_call(MAX_BODY + 1), headers=_bearer(token))
        assert big.status_code == 413 and big.content == TOO_LARGE.body

    _run(_app(kit, client_max_size=1024), body)


@pytest.mark.parametrize("outer", [(), (_reads_first,)], ids=["read by the guard", "read by an outer middleware"])
def test_a_chunked_body_past_4_mib_is_413(kit: Kit, outer: tuple[Middleware, ...]) -> None:
    """Sent without a ``Content-Length``, so only its length once read can tell: whoever read it."""

    async def chunks() -> AsyncIterator[bytes]:
        data = _call(MAX_BODY + 1)
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    async def body(client: httpx.AsyncClient) -> None:
        r = await client.post("/mcp", content=chunks(), headers=_bearer(kit.token()))
        assert r.status_code == 413 and r.content == TOO_LARGE.body

    _run(_app(kit, outer=outer, client_max_size=100 * 1024 * 1024), body)


@pytest.mark.parametrize("client_max_size", [1024, 100 * 1024 * 1024])
def test_the_mounted_endpoints_cap_bodies_at_4_mib(kit: Kit, client_max_size: int) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    async def body(client: httpx.AsyncClient) -> None:
        small = await client.post("/token", content=b"grant_type=nonsense&pad=" + b"x" * 2048, headers=form)
        assert small.status_code == 400 and small.json()["error"] == "unsupported_grant_type"  # the core's answer
        padded = b"grant_type=nonsense&pad=" + b"x" * (3 * 1024 * 1024)
        mid = await client.post("/token", content=padded, headers=form)  # the core's own form limit, not aiohttp's
        assert mid.status_code == 400
        assert mid.json() == {"error": "invalid_request", "error_description": "request body too large"}
        big = await client.post("/token", content=b"x" * (MAX_BODY + 1), headers=form)
        assert big.status_code == 413 and big.content == TOO_LARGE.body
        assert json.loads(big.content)["error_description"] == "the request body is too large"

    _run(_app(kit, client_max_size=client_max_size), body)


# -- content codings and bodies that end early ----------------------------------------------------


@pytest.mark.parametrize("path", ["/mcp", "/token", "/register"])
@pytest.mark.parametrize("coding", [["gzip"], ["deflate"], ["identity", "gzip"]])
def test_a_content_coded_body_is_415_before_aiohttp_decodes_it(
    kit: Kit, path: str, coding: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Plain JSON sent as gzip would make aiohttp's own decoder fail (a 500 and a traceback before);
    valid gzip would be decoded and acted on here but not on the other frameworks. Both are a 415
    naming ``identity`` (RFC 9110 §15.5.16), and kavach logs no server error."""

    async def body(client: httpx.AsyncClient) -> None:
        headers = [*_bearer(kit.token()), *((b"Content-Encoding", c.encode()) for c in coding)]
        r = await client.post(path, content=CALL, headers=headers)
        assert r.status_code == 415, r.text
        assert r.headers["accept-encoding"] == "identity"

    with caplog.at_level(logging.ERROR):
        _run(_app(kit), body)
    # aiohttp itself may still log its failure to decode what is left of the body after the answer
    # (its lingering read, web_protocol "Unhandled exception"); kavach's own code logs nothing
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("kavach")]


def test_a_body_cut_short_is_no_server_error(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    """The client promises 1,000 bytes, sends 10 and leaves: nothing reaches the handler and
    nothing is logged as a server error."""

    async def body(client: httpx.AsyncClient) -> None:
        port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
        for path in ("/mcp", "/token"):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path.encode()
                + b"Content-Length: 1000\r\n\r\n"
                + CALL[:10]
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.3)
        assert (await client.get("/")).status_code == 200, "the server still answers"

    handled: list[bool] = []
    app = _app(kit)
    with caplog.at_level(logging.ERROR):
        _run(app, body)
    assert handled == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- a guarded path with a trailing slash, or escaped, is guarded too -----------------------------


@pytest.mark.parametrize("path", ["/mcp/", "/mcp//", "/%6dcp/", "/%6Dcp"])
def test_a_guarded_path_with_a_trailing_slash_or_an_escape_is_guarded(kit: Kit, path: str) -> None:
    """aiohttp routes ``/mcp/`` to a handler of its own when the app has one; the guard covers it
    as ``/mcp`` (as Flask's does), and ``/%6dcp`` decodes to the guarded path."""
    app = _app(kit)
    app.router.add_post("/mcp/", _tool)
    app.router.add_post("/mcp//", _tool)

    async def body(client: httpx.AsyncClient) -> None:
        anonymous = await client.post(path, content=CALL, headers={"Content-Type": "application/json"})
        assert anonymous.status_code == 401, (path, anonymous.text)
        signed = await client.post(path, content=CALL, headers=dict(_bearer(kit.token())))
        assert signed.status_code == 200 and signed.json()["method"] == "tools/list", signed.text

    _run(app, body)
