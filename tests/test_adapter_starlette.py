"""Starlette specifics the end-to-end module does not cover: FastAPI, async identify, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import RESOURCE, Harness, make_config
from failing_stores import BrokenStore, DownStore
from kavach.server import AuthorizationServer
from kavach.starlette import KavachEndpoint, KavachGuard, mount
from kavach.users import MemoryUsers, Users
from mcp_messages import INITIALIZE, MCP_HEADERS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from token_kit import mint, put_grant

from kavach_core.memory_store import MemoryStore
from kavach_core.records import Client

AUTHORIZE = {
    "response_type": "code",
    "client_id": "c1",
    "code_challenge": "E" * 43,
    "code_challenge_method": "S256",
    "resource": RESOURCE,
}


def _store() -> MemoryStore:
    store = MemoryStore()
    store.clients["c1"] = Client("c1", ("https://app.example.com/cb",), client_name="App")
    return store


async def _tools(request: Request) -> JSONResponse:
    return JSONResponse({"subject": request.state.principal.subject})


def _granted(**minted: Any) -> tuple[AuthorizationServer, str]:
    """A server whose store holds one grant, and an access token of it (``minted``: :func:`token_kit.mint`'s
    options), the server's clock at the token's time."""
    h = Harness()
    put_grant(h)
    token, _ = mint(h, **minted)
    return AuthorizationServer(h.config, h.store, users=Users(MemoryUsers(), log_n=10), clock=lambda: h.now), token


def asgi_call(app: Any, scope: dict[str, Any], messages: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Run the ASGI ``app`` once on ``scope``, ``receive`` handing out the client's ``messages`` in
    order; returns what it sent, in order. An app waiting for more than the client sent fails."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not pending:
            raise AssertionError("the app waited for a message the client never sent")
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def guarded_post(
    token: str, name: bytes = b"authorization", *headers: tuple[bytes, bytes], **scope: Any
) -> dict[str, Any]:
    """The ASGI scope of a ``tools/list`` POST to the guarded path, the token in header ``name``."""
    credentials = [(b"host", b"mcp.example.com"), (name, b"Bearer " + token.encode()), *headers]
    return {"type": "http", "method": "POST", "path": "/mcp", "query_string": b"", "headers": credentials, **scope}


TOOLS_LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


async def _answer(send: Any) -> None:
    """An empty JSON 200, as the wrapped app's answer."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def request_body(*pieces: bytes) -> list[dict[str, Any]]:
    """The ``http.request`` messages of a body sent in ``pieces``."""
    return [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]


def _app(server: AuthorizationServer, **kw: Any) -> Starlette:
    app = Starlette(routes=[Route("/mcp", KavachGuard(_tools, server, RESOURCE))], **kw)  # type: ignore[arg-type]
    mount(app, server)
    return app


def test_async_identify_hook() -> None:
    async def identify(req: Any) -> str | None:
        return "erin"

    server = AuthorizationServer(make_config(), _store(), identify=identify)
    with TestClient(_app(server), base_url="https://as.example.com") as client:
        r = client.get("/authorize", params=AUTHORIZE)
    assert r.status_code == 200 and "Signed in as <strong>erin</strong>" in r.text


def test_mount_works_in_fastapi() -> None:
    import fastapi

    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    app = fastapi.FastAPI()
    mount(app, server)
    with TestClient(app, base_url="https://as.example.com") as client:
        assert client.get("/.well-known/oauth-authorization-server").json()["issuer"] == "https://as.example.com"


def test_gn_03_no_debug_page_even_in_debug_mode() -> None:
    for store, status in ((DownStore(), 503), (BrokenStore(), 500)):
        server = AuthorizationServer(make_config(), store, users=Users(MemoryUsers(), log_n=10))
        with TestClient(_app(server, debug=True), raise_server_exceptions=False) as client:
            for r in (client.get("/jwks.json"), client.post("/mcp", headers={"Authorization": "Bearer a.b.c"})):
                assert r.status_code == status
                assert "Traceback" not in r.text and "internal" not in r.text
                assert r.headers["content-type"] == "application/json"


def test_gn_03_a_required_hook_that_raises_is_a_json_500_without_a_traceback() -> None:
    """The application's ``required`` hook fails on a body it did not expect: the guard answers
    as the Flask and aiohttp guards do, 500 ``server_error`` in JSON, and neither the exception
    nor a debug page reaches the client (before, the exception escaped to Starlette, whose debug
    mode showed the traceback)."""

    def required(req: Any) -> tuple[str, ...]:
        raise KeyError("secret-internal-detail")

    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    guard = KavachGuard(_tools, server, RESOURCE, required=required)  # type: ignore[arg-type]
    app = Starlette(routes=[Route("/mcp", guard, methods=["POST"])], debug=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/mcp", headers={"Authorization": "Bearer a.b.c"}, content=b"{}")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json" and r.json() == {"error": "server_error"}
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text


def test_guard_refuses_oversized_bodies_and_websockets() -> None:
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    guard = KavachGuard(_tools, server, RESOURCE)  # type: ignore[arg-type]
    with TestClient(Starlette(routes=[Route("/mcp", guard)])) as client:
        too_large = client.post("/mcp", content=b"x" * (4 * 1024 * 1024 + 1))
        assert too_large.status_code == 413 and too_large.json()["error_description"] == "the request body is too large"
    connect = [{"type": "websocket.connect"}]
    closed = [{"type": "websocket.close", "code": 1008}]
    assert asgi_call(guard, {"type": "websocket", "path": "/mcp", "headers": []}, connect) == closed
    assert asgi_call(KavachEndpoint(server), {"type": "websocket", "path": "/token", "headers": []}, connect) == closed


@pytest.mark.parametrize("name", [b"authorization", b"Authorization", b"AUTHORIZATION"])
def test_guard_never_hands_the_token_on_whatever_the_header_name_case(name: bytes) -> None:
    """RS-04: ASGI only recommends lowercase header names; a server sending another spelling
    must not get the token past the guard to the wrapped app (nor be refused for it)."""
    server, token = _granted()
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["headers"], scope["state"]["principal"].subject, await receive()))
        await _answer(send)

    body = TOOLS_LIST
    sent = asgi_call(
        KavachGuard(inner, server, RESOURCE), guarded_post(token, name, (b"x-other", b"1")), request_body(body)
    )
    assert sent[0]["status"] == 200
    headers, subject, message = seen[0]
    assert headers == [(b"host", b"mcp.example.com"), (b"x-other", b"1")]
    assert subject == "alice" and message["body"] == body  # the body read by the guard is replayed


# -- the MCP SDK's own Streamable HTTP app, wrapped whole ------------------------------------------


def test_guard_wraps_the_mcp_sdk_streamable_http_app(tmp_path: Any) -> None:
    """KavachGuard around the SDK's app serves the AS too; tools/list works, a tool outside the grant is 403."""
    import socket

    from e2e_frameworks import serve_asgi
    from mcp.server import mcpserver  # the `test` extra installs the MCP SDK: never skipped
    from test_adapters_e2e import Deployment, grant

    from kavach_core.config import Config, ProtectedResource

    tools = mcpserver.MCPServer("demo")

    @tools.tool()
    def echo(text: str) -> str:
        return text

    @tools.tool()
    def delete(path: str) -> str:
        return "deleted"

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = Config(issuer=base, resources=[ProtectedResource(base + "/mcp", name="SDK tools")], secret=b"q" * 32)
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "correct horse battery staple")
    server = AuthorizationServer(config, MemoryStore(), users=users)
    app = KavachGuard(tools.streamable_http_app(stateless_http=True, json_response=True), server, base + "/mcp")
    stop = serve_asgi(sock, app)
    try:
        import httpx

        with httpx.Client(timeout=10) as client, httpx.Client(timeout=10) as person:
            dep = Deployment(base, base, base + "/mcp", server, client, person)
            token = grant(dep)["access_token"]
            headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            r = client.post(base + "/mcp", json=INITIALIZE, headers=headers)
            assert r.status_code == 200, r.text
            list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            listed = client.post(base + "/mcp", json=list_tools, headers=headers)
            assert listed.status_code == 200, listed.text
            assert {t["name"] for t in listed.json()["result"]["tools"]} == {"echo", "delete"}
            call = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "hi"}},
            }
            assert client.post(base + "/mcp", json=call, headers=headers).status_code == 200
            call["params"] = {"name": "delete", "arguments": {"path": "/"}}
            refused = client.post(base + "/mcp", json=call, headers=headers)
            assert refused.status_code == 403
            assert 'scope="tools:call:delete"' in refused.headers["www-authenticate"]
            assert client.post(base + "/mcp", json=call).status_code == 401
    finally:
        stop()
        sock.close()


def test_a_body_cut_short_by_the_client_is_never_acted_on() -> None:
    """RFC 9112 §8: a request whose body did not arrive whole is incomplete; the client left, so
    nothing is sent and the wrapped app (or the authorization server) never sees the part."""
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    guard = KavachGuard(app, server, RESOURCE)  # type: ignore[arg-type]
    part = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
    for target, path in ((guard, "/mcp"), (KavachEndpoint(server), "/token")):
        messages = [{"type": "http.request", "body": part, "more_body": True}, {"type": "http.disconnect"}]
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"authorization", b"Bearer a.b.c")]}
        assert asgi_call(target, scope, messages) == [] and reached == [], path


@pytest.mark.parametrize(
    ("declared", "over"),
    [
        (b"0", False),
        (b"4194304", False),
        (b"4194305", True),
        (b"00000000004194304", False),
        (b"00000000004194305", True),
        (b"9" * 40, True),
        (b"12 34567", False),
        (b"", False),
        (b"-4194305", False),
    ],
)
def test_a_declared_length_is_over_the_limit_only_when_it_is_a_number_past_it(declared: bytes, over: bool) -> None:
    """Leading zeros change nothing; what is no number is the server's parser's to refuse."""
    from kavach.starlette import MAX_BODY, _over_limit

    assert MAX_BODY == 4194304
    assert _over_limit(declared) is over


def test_a_body_arriving_in_pieces_past_the_limit_is_413_and_never_reaches_the_app() -> None:
    """Without a declared length (a chunked body), the pieces are counted as they come: one byte
    past 4 MiB in all, in pieces or in one message, is answered 413, and neither the wrapped app
    nor the authorization server sees any of it; exactly 4 MiB is read whole."""
    from kavach.starlette import MAX_BODY

    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    piece = MAX_BODY // 4
    for extra, status in ((1, 413), (0, 401)):
        for pieces in ([b"x" * piece] * 4 + [b"x" * extra], [b"x" * (MAX_BODY + extra)]):
            for target, path in ((KavachGuard(app, server, RESOURCE), "/mcp"), (KavachEndpoint(server), "/token")):  # type: ignore[arg-type]
                scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": []}
                sent = asgi_call(target, scope, request_body(*pieces))
                if status == 413 or path == "/mcp":
                    assert sent[0]["status"] == status, (path, extra, len(pieces))
                else:  # the whole body reached the token endpoint, which refuses it as a form it cannot read
                    assert sent[0]["status"] in (400, 415), sent[0]
    assert reached == []


def test_the_wrapped_app_keeps_the_servers_state_and_hears_the_client_after_the_body() -> None:
    """Past the guard the app gets the state an outer layer put in the scope with the principal
    added, the body (sent in two pieces) whole in one message, then whatever the client sends next
    (its disconnect); a lifespan scope goes to the app untouched, as it would without the guard."""
    server, token = _granted()
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            seen.append(("lifespan", await receive()))
            return
        seen.append((scope["state"], await receive(), await receive()))
        await _answer(send)

    guard = KavachGuard(inner, server, RESOURCE)
    body = TOOLS_LIST
    scope = guarded_post(token, state={"tenant": "t1"})
    sent = asgi_call(guard, scope, [*request_body(body[:10], body[10:]), {"type": "http.disconnect"}])
    assert sent[0]["status"] == 200
    state, first, then = seen[0]
    assert state["tenant"] == "t1" and state["principal"].subject == "alice"
    assert first == {"type": "http.request", "body": body, "more_body": False}
    assert then == {"type": "http.disconnect"}
    assert scope["state"] == {"tenant": "t1"}  # the outer layer's own dict is left as it was

    assert asgi_call(guard, {"type": "lifespan"}, [{"type": "lifespan.startup"}]) == []
    assert seen[1] == ("lifespan", {"type": "lifespan.startup"})


def test_answers_state_their_length_except_a_204() -> None:
    """Every answer carries ``Content-Length`` equal to its body, so the server need not chunk it;
    a 204 (a CORS preflight) carries none (RFC 9110 §8.6)."""
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    preflight = [(b"origin", b"https://app.example.com"), (b"access-control-request-method", b"POST")]
    for method, path, headers in (("GET", "/jwks.json", []), ("OPTIONS", "/token", preflight)):
        scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": headers}
        start, body = asgi_call(KavachEndpoint(server), scope, request_body(b""))
        lengths = [v for k, v in start["headers"] if k == b"content-length"]
        if method == "GET":
            assert start["status"] == 200 and body["body"]
            assert lengths == [str(len(body["body"])).encode()]
        else:
            assert start["status"] == 204 and lengths == [] and body["body"] == b""


def test_a_required_hook_decides_the_scopes_or_answers_itself() -> None:
    """``required=``: the scopes it gives are the ones the token must hold (held: the app runs;
    not held: 403 naming them), and a response it gives is sent as it is, the app not called."""

    from kavach_core.http import json_response

    server, token = _granted(scopes=("tools:list",))

    def required(req: Any) -> Any:
        need = req.header("x-need")
        return json_response(418, {"error": "teapot"}) if need == "answer" else (need,)

    app = Starlette(routes=[Route("/mcp", _tools, methods=["POST"])])
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(KavachGuard(app, server, RESOURCE, required=required)) as client:
        held = client.post("/mcp", headers={**auth, "X-Need": "tools:list"}, content=b"{}")
        assert (held.status_code, held.json()) == (200, {"subject": "alice"})
        missing = client.post("/mcp", headers={**auth, "X-Need": "tools:admin"}, content=b"{}")
        assert missing.status_code == 403 and 'scope="tools:admin"' in missing.headers["www-authenticate"]
        answered = client.post("/mcp", headers={**auth, "X-Need": "answer"}, content=b"{}")
        assert (answered.status_code, answered.json()) == (418, {"error": "teapot"})


def test_a_declared_length_past_the_limit_is_413_before_the_body_is_awaited() -> None:
    """A ``Content-Length`` over 4 MiB, wherever it stands among the headers, is answered 413 at
    once by the guard and the endpoints, without waiting for a body the client may never send."""
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    headers = [(b"host", b"mcp.example.com"), (b"content-length", b"4194305"), (b"x-request-id", b"7")]
    for target, path in ((KavachGuard(_tools, server, RESOURCE), "/mcp"), (KavachEndpoint(server), "/token")):  # type: ignore[arg-type]
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": headers}
        assert asgi_call(target, scope)[0]["status"] == 413, path  # no body is sent: none may be awaited


def test_a_guard_around_the_whole_app_answers_the_resources_metadata_without_a_token() -> None:
    """MD-03: wrapping every path, the guard still lets the resource's metadata through with no
    token, answered by the server; the app's own paths need one."""
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    app = Starlette(routes=[Route("/mcp", _tools, methods=["POST"])])
    with TestClient(KavachGuard(app, server, RESOURCE), base_url="https://mcp.example.com") as client:
        metadata = client.get("/.well-known/oauth-protected-resource/mcp")
        assert metadata.status_code == 200 and metadata.json()["resource"] == RESOURCE
        assert client.post("/mcp", content=b"{}").status_code == 401
        # the issuer is on another origin: its paths here are the app's, guarded like any other
        assert client.get("/authorize", params=AUTHORIZE).status_code == 401


def test_a_session_id_the_app_sends_again_mid_session_goes_out_sealed() -> None:
    """An app may send a new ``Mcp-Session-Id`` on any answer in a session, not only at
    initialization: the client gets it sealed to the principal each time, never the app's own id
    (which would open the session for anyone), and the app is handed its own id back."""
    from mcp_messages import INITIALIZE_BODY, TOOLS_LIST

    server, token = _granted()
    issued = iter([b"sdk-1", b"sdk-2", b"sdk-2"])
    heard: list[bytes | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        heard.append(dict(scope["headers"]).get(b"mcp-session-id"))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", next(issued))]})
        await send({"type": "http.response.body", "body": b"{}"})

    auth = {**MCP_HEADERS, "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    client = TestClient(KavachGuard(app, server, RESOURCE), base_url="https://mcp.example.com")  # no lifespan
    first = client.post("/mcp", headers=auth, content=INITIALIZE_BODY).headers["mcp-session-id"]
    again = client.post("/mcp", headers={**auth, "Mcp-Session-Id": first}, content=TOOLS_LIST)
    second = again.headers["mcp-session-id"]
    client.post("/mcp", headers={**auth, "Mcp-Session-Id": second}, content=TOOLS_LIST)
    assert first.rpartition(".")[0] == "sdk-1" and second.rpartition(".")[0] == "sdk-2"
    assert heard == [None, b"sdk-1", b"sdk-2"]
