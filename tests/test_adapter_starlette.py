"""Starlette specifics the end-to-end module does not cover: FastAPI, async identify, limits."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RESOURCE, make_config
from kavach.server import AuthorizationServer
from kavach.starlette import KavachGuard, mount
from kavach.users import MemoryUsers, Users
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from kavach_core.drivers import StoreUnavailable
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
    fastapi = pytest.importorskip("fastapi")
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    app = fastapi.FastAPI()
    mount(app, server)
    with TestClient(app, base_url="https://as.example.com") as client:
        assert client.get("/.well-known/oauth-authorization-server").json()["issuer"] == "https://as.example.com"


class _Down:
    def perform(self, effect: Any) -> Any:
        raise StoreUnavailable("gone")


class _Broken:
    def perform(self, effect: Any) -> Any:
        raise ZeroDivisionError("internal")


def test_gn_03_no_debug_page_even_in_debug_mode() -> None:
    for store, status in ((_Down(), 503), (_Broken(), 500)):
        server = AuthorizationServer(make_config(), store, users=Users(MemoryUsers(), log_n=10))
        with TestClient(_app(server, debug=True), raise_server_exceptions=False) as client:
            for r in (client.get("/jwks.json"), client.post("/mcp", headers={"Authorization": "Bearer a.b.c"})):
                assert r.status_code == status
                assert "Traceback" not in r.text and "internal" not in r.text
                assert r.headers["content-type"] == "application/json"


def test_guard_refuses_oversized_bodies_and_websockets() -> None:
    server = AuthorizationServer(make_config(), _store(), users=Users(MemoryUsers(), log_n=10))
    guard = KavachGuard(_tools, server, RESOURCE)  # type: ignore[arg-type]
    with TestClient(Starlette(routes=[Route("/mcp", guard)])) as client:
        assert client.post("/mcp", content=b"x" * (4 * 1024 * 1024 + 1)).status_code == 413
    messages: list[Any] = []

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        messages.append(message)

    import asyncio

    asyncio.run(guard({"type": "websocket", "path": "/mcp", "headers": []}, receive, send))
    assert messages == [{"type": "websocket.close", "code": 1008}]
