"""Request bodies every framework must treat alike: a content coding, and a body large enough that
reading its JSON-RPC methods is real work (RFC 9110 §8.4, §15.5.16).

The authorization server's endpoints answer a content-coded body with 415 and
``Accept-Encoding: identity`` whatever the framework (aiohttp would otherwise decode gzip itself
and act on it, the others would read the coded bytes as a form); an event-loop guard reads the
methods of a body over ``THREADED_BODY`` in a worker thread, so a large body never holds the
loop.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import uvicorn
from conftest import RESOURCE, Harness
from issued_tokens import issue
from kavach.server import THREADED_BODY, AuthorizationServer
from kavach.starlette import KavachGuard
from kavach_serve import free_port

from kavach_core.http import HttpRequest


def _server(h: Harness) -> AuthorizationServer:
    return AuthorizationServer(h.config, h.store, identify=lambda req: None, clock=lambda: h.now)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/token", "application/x-www-form-urlencoded"),
        ("/register", "application/json"),
        ("/revoke", "application/x-www-form-urlencoded"),
    ],
)
@pytest.mark.parametrize("coding", ["gzip", "br", "identity, gzip"])
def test_a_content_coded_body_is_415_at_the_endpoints(path: str, content_type: str, coding: str) -> None:
    h = Harness()
    before = h.store.snapshot() if hasattr(h.store, "snapshot") else None
    req = HttpRequest(
        "POST",
        path,
        headers=[("Content-Type", content_type), ("Content-Encoding", coding), ("Origin", "https://app.example")],
        body=b"\x1f\x8b\x08\x00",
    )
    r = _server(h).handle(req)
    assert r.status == 415 and r.header("Accept-Encoding") == "identity"
    assert json.loads(r.body)["error"] == "invalid_request"
    assert r.header("Access-Control-Allow-Origin") == "*", "a browser client can read why"
    if before is not None:
        assert h.store.snapshot() == before


@pytest.mark.parametrize("coding", ["identity", "", " IDENTITY "])
def test_identity_is_no_coding(coding: str) -> None:
    h = Harness()
    req = HttpRequest(
        "POST",
        "/token",
        headers=[("Content-Type", "application/x-www-form-urlencoded"), ("Content-Encoding", coding)],
        body=b"grant_type=password",
    )
    r = _server(h).handle(req)
    assert r.status == 400 and json.loads(r.body)["error"] == "unsupported_grant_type"


def test_a_large_body_is_mapped_to_scopes_off_the_event_loop() -> None:
    """Under uvicorn: a tools/list padded past THREADED_BODY is read in a worker thread and still
    needs exactly tools:list; a small one is read on the loop's own thread."""
    import httpx

    h = Harness()
    server = _server(h)
    seen: list[str] = []
    original = server.body_scopes

    def recording(body: bytes) -> tuple[str, ...]:
        seen.append(threading.current_thread().name)
        return original(body)

    server.body_scopes = recording  # type: ignore[method-assign]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(KavachGuard(app, server, RESOURCE), port=port, log_level="warning", lifespan="off")
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if runner.started:
                break
            threading.Event().wait(0.05)
        token = issue(h, scopes=("tools:list",)).access
        call = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        small = httpx.post(f"http://127.0.0.1:{port}/mcp", content=call, headers=headers, timeout=30)
        large = httpx.post(
            f"http://127.0.0.1:{port}/mcp", content=call + b" " * (THREADED_BODY + 1), headers=headers, timeout=30
        )
        assert small.status_code == 200 and large.status_code == 200
        denied = httpx.post(
            f"http://127.0.0.1:{port}/mcp",
            headers=headers,
            timeout=30,
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
            + b" " * (THREADED_BODY + 1),
        )
        assert denied.status_code == 403, "the thread's answer is the one used"
    finally:
        runner.should_exit = True
        thread.join(10)
    loop_thread, *threaded = seen
    assert threaded and all(name != loop_thread for name in threaded)
