"""Starlette specifics the end-to-end module does not cover: FastAPI, async identify, limits."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RESOURCE, make_config
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
    messages: list[Any] = []

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        messages.append(message)

    import asyncio

    asyncio.run(guard({"type": "websocket", "path": "/mcp", "headers": []}, receive, send))
    assert messages == [{"type": "websocket.close", "code": 1008}]
    asyncio.run(KavachEndpoint(server)({"type": "websocket", "path": "/token", "headers": []}, receive, send))
    assert messages == [{"type": "websocket.close", "code": 1008}] * 2


@pytest.mark.parametrize("name", [b"authorization", b"Authorization", b"AUTHORIZATION"])
def test_guard_never_hands_the_token_on_whatever_the_header_name_case(name: bytes) -> None:
    """RS-04: ASGI only recommends lowercase header names; a server sending another spelling
    must not get the token past the guard to the wrapped app (nor be refused for it)."""
    import asyncio

    from conftest import Harness
    from token_kit import mint, put_grant

    h = Harness()
    put_grant(h)
    token, _ = mint(h)
    server = AuthorizationServer(h.config, h.store, users=Users(MemoryUsers(), log_n=10), clock=lambda: h.now)
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["headers"], scope["state"]["principal"].subject, await receive()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = KavachGuard(inner, server, RESOURCE)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "query_string": b"",
        "headers": [(b"host", b"mcp.example.com"), (name, b"Bearer " + token.encode()), (b"x-other", b"1")],
    }
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
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
    import asyncio

    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    guard = KavachGuard(app, server, RESOURCE)  # type: ignore[arg-type]
    part = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
    for target, path in ((guard, "/mcp"), (KavachEndpoint(server), "/token")):
        messages = [{"type": "http.request", "body": part, "more_body": True}, {"type": "http.disconnect"}]
        sent: list[Any] = []

        async def receive(messages: list[Any] = messages) -> Any:
            return messages.pop(0)

        async def send(message: Any, sent: list[Any] = sent) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"authorization", b"Bearer a.b.c")]}
        asyncio.run(target(scope, receive, send))
        assert sent == [] and reached == [], path


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
