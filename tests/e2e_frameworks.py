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
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
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


FRAMEWORKS: dict[str, Serve] = {"starlette": serve_starlette}
