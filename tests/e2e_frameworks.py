"""Real servers on 127.0.0.1 for the end-to-end adapter tests, one entry per web framework.

Each entry of :data:`FRAMEWORKS` takes a listening socket, the :class:`AuthorizationServer`
and the guarded resource's URI, serves the authorization server plus a small MCP-like tool
endpoint at ``/mcp`` behind the framework's guard, and returns a function that stops it.

The tool endpoint answers JSON-RPC ``tools/list`` and ``tools/call`` with the verified
principal's subject and scopes, reports whether an ``Authorization`` header reached it, and
for ``tools/call`` of ``slow`` streams two chunks, the second only after ``RELEASE`` is set
(so a test can prove the guard does not buffer responses).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

from kavach.server import AuthorizationServer
from kavach.starlette import read_body

Stop = Callable[[], None]
Serve = Callable[[socket.socket, AuthorizationServer, str], Stop]

RELEASE = threading.Event()


def tool_result(
    message: dict[str, Any], subject: str, scopes: tuple[str, ...], saw_authorization: bool
) -> dict[str, Any]:
    """The JSON-RPC answer every framework's tool endpoint gives."""
    method = message.get("method")
    if method == "tools/list":
        result: dict[str, Any] = {"tools": [{"name": "echo"}, {"name": "delete"}, {"name": "slow"}]}
    elif method == "tools/call":
        result = {"called": message.get("params", {}).get("name")}
    else:
        result = {}
    result.update(subject=subject, scopes=list(scopes), saw_authorization=saw_authorization)
    return {"jsonrpc": "2.0", "id": message.get("id"), "result": result}


# -- Starlette (uvicorn) ----------------------------------------------------------------------


def _starlette_tools() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive, send)
        assert body is not None
        principal = scope["state"]["principal"]
        saw = any(k == b"authorization" for k, _ in scope["headers"])
        message = json.loads(body)
        answer = json.dumps(tool_result(message, principal.subject, principal.scopes, saw)).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if message.get("params", {}).get("name") == "slow":
            await send({"type": "http.response.body", "body": b"chunk-1\n", "more_body": True})
            await asyncio.to_thread(RELEASE.wait, 10)
            await send({"type": "http.response.body", "body": b"chunk-2\n"})
            return
        await send({"type": "http.response.body", "body": answer})

    return app


def serve_starlette(sock: socket.socket, server: AuthorizationServer, resource: str) -> Stop:
    from kavach.starlette import KavachGuard, mount
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/mcp", KavachGuard(_starlette_tools(), server, resource))])
    mount(app, server)
    return serve_asgi(sock, app)


def serve_asgi(sock: socket.socket, app: Any) -> Stop:
    """Run an ASGI app under uvicorn in a thread, on ``sock``, lifespan included when it has one."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="auto", access_log=False)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if uv.started:
            break
        threading.Event().wait(0.01)

    def stop() -> None:
        uv.should_exit = True
        thread.join(10)

    return stop


# -- Flask (werkzeug's threaded server) --------------------------------------------------------


def flask_app(server: AuthorizationServer, resource: str) -> Any:
    """The Flask deployment: the AS mounted, ``/mcp`` behind the :func:`guarded` decorator."""
    import flask
    from kavach.flask import current_principal, guarded, mount

    app = flask.Flask("kavach_e2e")

    @app.post("/mcp")
    @guarded(server, resource)
    def mcp() -> Any:
        principal = current_principal()
        message = json.loads(flask.request.get_data())
        saw = "Authorization" in flask.request.headers
        if message.get("params", {}).get("name") == "slow":

            def chunks() -> Any:
                yield b"chunk-1\n"
                RELEASE.wait(10)
                yield b"chunk-2\n"

            return flask.Response(chunks(), content_type="application/json")
        return flask.jsonify(tool_result(message, principal.subject, principal.scopes, saw))

    mount(app, server)
    return app


def serve_flask(sock: socket.socket, server: AuthorizationServer, resource: str) -> Stop:
    from werkzeug.serving import make_server

    sock.listen(64)
    host, port = sock.getsockname()[:2]
    wsgi = make_server(host, port, flask_app(server, resource), threaded=True, fd=sock.fileno())
    thread = threading.Thread(target=wsgi.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        wsgi.shutdown()
        wsgi.server_close()
        thread.join(10)

    return stop


# -- aiohttp (AppRunner + SockSite on its own loop) --------------------------------------------


def aiohttp_app(server: AuthorizationServer, resource: str) -> Any:
    """The aiohttp deployment: the AS mounted, ``/mcp`` behind :func:`guard_middleware`."""
    from aiohttp import web
    from kavach.aiohttp import PRINCIPAL, guard_middleware, mount

    async def mcp(request: web.Request) -> web.StreamResponse:
        principal = request[PRINCIPAL]
        message = await request.json()
        saw = "Authorization" in request.headers
        if message.get("params", {}).get("name") == "slow":
            streamed = web.StreamResponse(headers={"Content-Type": "application/json"})
            await streamed.prepare(request)
            await streamed.write(b"chunk-1\n")
            await asyncio.to_thread(RELEASE.wait, 10)
            await streamed.write(b"chunk-2\n")
            await streamed.write_eof()
            return streamed
        return web.json_response(tool_result(message, principal.subject, principal.scopes, saw))

    app = web.Application(middlewares=[guard_middleware(server, resource)])
    app.router.add_post("/mcp", mcp)
    mount(app, server)
    return app


def serve_aiohttp(sock: socket.socket, server: AuthorizationServer, resource: str) -> Stop:
    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(aiohttp_app(server, resource), access_log=None)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return stop


FRAMEWORKS: dict[str, Serve] = {"starlette": serve_starlette, "flask": serve_flask, "aiohttp": serve_aiohttp}
