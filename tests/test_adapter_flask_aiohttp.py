"""Flask and aiohttp specifics the end-to-end module does not cover: the app-wide hook and the
middleware's ``paths``, resource metadata without mounting the AS, body limits, and GN-03 (no
debug page or stack trace, even in debug mode)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import flask
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import RESOURCE, make_config
from e2e_frameworks import FRAMEWORKS, serve_flask
from failing_stores import BrokenStore, DownStore
from kavach import flask as kflask
from kavach.aiohttp import MAX_BODY as AIOHTTP_MAX_BODY
from kavach.aiohttp import PRINCIPAL, guard_middleware, mount
from kavach.server import AuthorizationServer
from kavach.users import MemoryUsers, Users
from test_adapters_e2e import deploy, grant

from kavach_core.memory_store import MemoryStore

PRM = "/.well-known/oauth-protected-resource/mcp"
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def _server(store: Any = None) -> AuthorizationServer:
    return AuthorizationServer(make_config(), store or MemoryStore(), users=Users(MemoryUsers(), log_n=10))


# -- Flask -------------------------------------------------------------------------------------


def _flask(server: AuthorizationServer, *, mounted: bool = True) -> flask.Flask:
    app = flask.Flask("t")
    app.debug = True  # the debugger page must never show up

    @app.route("/mcp", methods=["POST"])
    def mcp() -> Any:
        return {"subject": kflask.current_principal().subject, "auth": "Authorization" in flask.request.headers}

    @app.get("/public")
    def public() -> str:
        return "open"

    if mounted:
        kflask.mount(app, server)
    kflask.protect(app, server, RESOURCE)
    return app


def test_flask_hook_guards_only_its_paths_and_serves_resource_metadata_without_mount() -> None:
    client = _flask(_server(), mounted=False).test_client()
    assert client.get("/public").text == "open"
    r = client.post("/mcp", json=CALL)
    assert r.status_code == 401 and 'resource_metadata="https://mcp.example.com' in r.headers["WWW-Authenticate"]
    prm = client.get(PRM, headers={"Host": "mcp.example.com"})
    assert prm.status_code == 200 and prm.json["resource"] == RESOURCE
    assert prm.headers["Access-Control-Allow-Origin"] == "*"
    pre = client.options(PRM, headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 204 and "Content-Type" not in pre.headers
    assert client.get("/.well-known/oauth-authorization-server").status_code == 404  # not mounted


@pytest.mark.parametrize(("store", "status"), [(DownStore(), 503), (BrokenStore(), 500)])
def test_flask_gn_03_no_debug_page_even_in_debug_mode(store: Any, status: int) -> None:
    client = _flask(_server(store)).test_client()
    for r in (client.get("/jwks.json"), client.post("/mcp", json=CALL, headers={"Authorization": "Bearer a.b.c"})):
        assert r.status_code == status
        assert r.headers["Content-Type"] == "application/json"
        assert "Traceback" not in r.text and "internal" not in r.text


def test_flask_gn_03_a_failure_outside_the_core_is_json_too(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _server()
    app = _flask(server)
    app.config["PROPAGATE_EXCEPTIONS"] = True

    def explode(req: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server, "handle", explode)
    r = app.test_client().get("/jwks.json")
    assert r.status_code == 500 and r.json == {"error": "server_error"}


def test_flask_oversized_bodies_are_413() -> None:
    client = _flask(_server()).test_client()
    big = b"x" * (kflask.MAX_BODY + 1)
    assert client.post("/token", data=big, content_type="application/x-www-form-urlencoded").status_code == 413
    too_large = client.post("/mcp", data=big, content_type="application/json")
    assert too_large.status_code == 413
    assert too_large.get_json() == {"error": "invalid_request", "error_description": "the request body is too large"}


def test_flask_hook_hands_the_principal_and_strips_the_token(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The before_request hook (not the decorator) in front of a real werkzeug server."""

    def serve(sock: socket.socket, server: AuthorizationServer, resource: str) -> Any:
        app = flask.Flask("hooked")

        @app.post("/mcp")
        def mcp() -> Any:
            p = kflask.current_principal()
            return {"subject": p.subject, "auth": "Authorization" in flask.request.headers}

        kflask.mount(app, server)
        kflask.protect(app, server, resource)
        monkeypatch.setattr("e2e_frameworks.flask_app", lambda *_: app)
        return serve_flask(sock, server, resource)

    monkeypatch.setitem(FRAMEWORKS, "flask-hook", serve)
    for dep in deploy("flask-hook", "memory", "", tmp_path):
        token = grant(dep)["access_token"]
        r = dep.client.post(dep.resource, json=CALL, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == {"subject": "alice", "auth": False}


# -- aiohttp -----------------------------------------------------------------------------------


async def _tools(request: web.Request) -> web.Response:
    return web.json_response({"subject": request[PRINCIPAL].subject})


async def _open(request: web.Request) -> web.Response:
    return web.Response(text="open")


def _aiohttp(server: AuthorizationServer, *, mounted: bool = True, **guard: Any) -> web.Application:
    app = web.Application(middlewares=[guard_middleware(server, RESOURCE, **guard)], client_max_size=1024)
    app.router.add_post("/mcp", _tools)
    app.router.add_post("/also", _tools)
    app.router.add_get("/public", _open)
    if mounted:
        mount(app, server)
    return app


def _with_client(app: web.Application, body: Any) -> Any:
    async def run() -> Any:
        async with TestClient(TestServer(app)) as client:
            return await body(client)

    return asyncio.run(run())


def test_aiohttp_middleware_paths_and_resource_metadata_without_mount() -> None:
    async def body(client: TestClient) -> None:
        assert (await client.get("/public")).status == 200
        for path in ("/mcp", "/also"):
            r = await client.post(path, json=CALL)
            assert r.status == 401 and "resource_metadata=" in r.headers["WWW-Authenticate"]
        prm = await client.get(PRM, headers={"Host": "mcp.example.com"})  # two resources share /mcp
        assert prm.status == 200 and (await prm.json())["resource"] == RESOURCE
        assert prm.headers["Access-Control-Allow-Origin"] == "*"
        assert (await client.get("/.well-known/oauth-authorization-server")).status == 404

    _with_client(_aiohttp(_server(), mounted=False, paths={"/mcp", "/also"}), body)


@pytest.mark.parametrize(("store", "status"), [(DownStore(), 503), (BrokenStore(), 500)])
def test_aiohttp_gn_03_no_stack_trace(store: Any, status: int) -> None:
    async def body(client: TestClient) -> None:
        for r in (
            await client.get("/jwks.json"),
            await client.post("/mcp", json=CALL, headers={"Authorization": "Bearer a.b.c"}),
        ):
            assert r.status == status and r.headers["Content-Type"] == "application/json"
            text = await r.text()
            assert "Traceback" not in text and "internal" not in text

    _with_client(_aiohttp(_server(store)), body)


def test_aiohttp_oversized_bodies_are_413() -> None:
    async def body(client: TestClient) -> None:
        big = b"x" * (AIOHTTP_MAX_BODY + 1)  # the adapters' cap, whatever the app's client_max_size
        assert (await client.post("/token", data=big)).status == 413
        too_large = await client.post("/mcp", data=big, headers={"Authorization": "Bearer a.b.c"})
        assert too_large.status == 413
        assert (await too_large.json())["error_description"] == "the request body is too large"

    _with_client(_aiohttp(_server()), body)


def test_aiohttp_responses_carry_only_the_cores_content_type() -> None:
    async def body(client: TestClient) -> None:
        pre = await client.options(PRM, headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"})
        assert pre.status == 204 and "Content-Type" not in pre.headers

    _with_client(_aiohttp(_server()), body)
