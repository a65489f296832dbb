"""The Flask adapter against a real werkzeug server: what it refuses and what never reaches a view.

- a chunked body over the limit is 413 like one with ``Content-Length``, never a truncated prefix
  judged by the guard (and the view never runs);
- behind a WSGI prefix (``SCRIPT_NAME``) the ``before_request`` hook still guards the path the
  client asked for;
- after the guard, no API of ``flask.request`` shows the token, even when an earlier hook had
  parsed ``request.authorization`` (RS-04);
- misuse is refused when the app is set up (a bare string for ``paths``, an async ``identify``,
  a ``required`` that is not a function), not with a 500 on every request;
- every method on an authorization server path reaches the core, which answers its JSON 405.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import flask
import httpx
import pytest
from conftest import RESOURCE, Harness, make_config
from issued_tokens import issue
from kavach import flask as kflask
from kavach.server import TOO_LARGE, AuthorizationServer
from kavach.users import MemoryUsers, Users
from werkzeug.datastructures import Authorization, Headers
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server
from werkzeug.wrappers import Response as WerkzeugResponse

from kavach_core.config import ProtectedResource

LIMIT = kflask.MAX_BODY
TOO_LARGE_JSON = json.loads(TOO_LARGE.body)
PREFIXED = "https://mcp.example.com/tools/mcp"


# -- a real werkzeug server and its clients ----------------------------------------------------


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under werkzeug's threaded server on 127.0.0.1; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def send_chunked(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` with ``Transfer-Encoding: chunked`` (no ``Content-Length``) over a raw socket.

    The body is written from another thread while the answer is read, so a server that answers
    before reading everything (a 413) is heard even though it closes the connection early.
    """
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Transfer-Encoding: chunked", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]

    def write() -> None:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            for i in range(0, len(body), 65536):
                piece = body[i : i + 65536]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before reading the rest

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        writer.join(30)
        sock.close()


def padded_call(size: int, name: str = "delete") -> bytes:
    """A ``tools/call`` of ``name``, exactly ``size`` bytes, padded inside a string: any prefix
    of it shorter than the whole is not JSON, so a guard judging a prefix judges another body."""
    head = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "pad": ""}})
    cut = head.index('"pad": "') + len('"pad": "')
    body = (head[:cut] + "x" * (size - len(head)) + head[cut:]).encode()
    assert len(body) == size
    return body


def padded_list(size: int) -> bytes:
    """A ``tools/list``, exactly ``size`` bytes, padded with trailing blanks (still JSON)."""
    head = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    return head + b" " * (size - len(head))


def _server(*resources: str) -> tuple[AuthorizationServer, Harness]:
    config = make_config(resources=[ProtectedResource(r) for r in resources]) if resources else make_config()
    h = Harness(config)
    server = AuthorizationServer(h.config, h.store, users=Users(MemoryUsers(), log_n=10), clock=lambda: h.now)
    return server, h


def _token(h: Harness, *scopes: str, resource: str = RESOURCE) -> str:
    return issue(h, scopes=scopes, resource=resource).access


class Seen:
    """What the guarded view was given, one entry per time it ran."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def view(self) -> Any:
        self.bodies.append(flask.request.get_data())
        return {"ran": True, "length": len(self.bodies[-1])}


def _decorated(server: AuthorizationServer, seen: Seen, resource: str = RESOURCE) -> flask.Flask:
    app = flask.Flask("decorated")
    app.add_url_rule("/mcp", "mcp", kflask.guarded(server, resource)(seen.view), methods=["POST"])
    kflask.mount(app, server)
    return app


def _hooked(server: AuthorizationServer, seen: Seen, resource: str = RESOURCE, **protect: Any) -> flask.Flask:
    app = flask.Flask("hooked")
    app.add_url_rule("/mcp", "mcp", seen.view, methods=["POST"])
    kflask.mount(app, server)
    kflask.protect(app, server, resource, **protect)
    return app


Build = Callable[[AuthorizationServer, Seen], flask.Flask]
BUILDS = pytest.mark.parametrize("build", [_decorated, _hooked], ids=["guarded", "protect"])


# -- 1. a chunked body over the limit is 413, never a judged prefix ----------------------------


@BUILDS
def test_chunked_body_over_the_limit_is_413_and_the_view_never_runs(build: Build) -> None:
    server, h = _server()
    seen = Seen()
    token = _token(h, "tools:list")  # may list tools, may not call "delete"
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with serving(build(server, seen)) as base:
        status, headers, body = send_chunked(base, "/mcp", padded_call(LIMIT + 1), auth)
        assert (status, json.loads(body)) == (413, TOO_LARGE_JSON)
        assert headers["content-type"] == "application/json"
        status, _, body = send_chunked(base, "/mcp", padded_call(LIMIT + 300_000), auth)
        assert (status, json.loads(body)) == (413, TOO_LARGE_JSON)
        assert seen.bodies == []
        # with Content-Length, the same answer
        over = httpx.post(base + "/mcp", content=padded_call(LIMIT + 1), headers=auth, timeout=30)
        assert (over.status_code, over.json()) == (413, TOO_LARGE_JSON)
        assert seen.bodies == []


@BUILDS
def test_chunked_body_at_the_limit_is_judged_whole_and_handed_whole_to_the_view(build: Build) -> None:
    server, h = _server()
    seen = Seen()
    auth = {"Authorization": f"Bearer {_token(h, 'tools:list')}", "Content-Type": "application/json"}
    with serving(build(server, seen)) as base:
        status, _, body = send_chunked(base, "/mcp", padded_call(LIMIT), auth)
        assert status == 403 and seen.bodies == []  # the whole call was read: it needs tools:call:delete
        listing = padded_list(LIMIT)
        status, _, body = send_chunked(base, "/mcp", listing, auth)
        assert (status, json.loads(body)) == (200, {"ran": True, "length": LIMIT})
        assert seen.bodies == [listing]


@pytest.mark.parametrize(("app_limit", "size"), [(None, LIMIT + 1), (1000, 1001)])
def test_chunked_body_an_earlier_hook_read_is_judged_by_its_whole_length(app_limit: int | None, size: int) -> None:
    """An earlier hook read the body (Werkzeug silently cuts a chunked one at the app's limit)."""
    server, h = _server()
    seen = Seen()
    app = flask.Flask("early")
    app.config["MAX_CONTENT_LENGTH"] = app_limit

    @app.before_request
    def peek() -> None:
        flask.request.get_data()

    app.add_url_rule("/mcp", "mcp", seen.view, methods=["POST"])
    kflask.protect(app, server, RESOURCE)
    auth = {"Authorization": f"Bearer {_token(h, 'tools:list')}", "Content-Type": "application/json"}
    with serving(app) as base:
        status, _, body = send_chunked(base, "/mcp", padded_call(size), auth)
        assert (status, json.loads(body)) == (413, TOO_LARGE_JSON)
        assert seen.bodies == []
        listing = padded_list(size - 1)
        status, _, body = send_chunked(base, "/mcp", listing, auth)
        # at the app's own limit a body Werkzeug read cannot be told from a cut one: refused
        assert status == (413 if app_limit else 200)
        assert seen.bodies == ([] if app_limit else [listing])


def test_chunked_body_over_the_limit_to_the_token_endpoint_is_413() -> None:
    server, _ = _server()
    form = b"grant_type=client_credentials&pad=" + b"x" * LIMIT
    with serving(_decorated(server, Seen())) as base:
        status, _, body = send_chunked(base, "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, json.loads(body)) == (413, TOO_LARGE_JSON)


@BUILDS
def test_the_apps_smaller_max_content_length_is_the_guards_limit(build: Build) -> None:
    """An app that takes at most 1000 bytes (``MAX_CONTENT_LENGTH``) gets the guard's 413 for 1001,
    declared or chunked, and the view never runs; 1000 bytes are judged and handed on."""
    server, h = _server()
    seen = Seen()
    app = build(server, seen)
    app.config["MAX_CONTENT_LENGTH"] = 1000
    auth = {"Authorization": f"Bearer {_token(h, 'tools:list')}", "Content-Type": "application/json"}
    with serving(app) as base:
        over = httpx.post(base + "/mcp", content=padded_list(1001), headers=auth, timeout=30)
        assert (over.status_code, over.json()) == (413, TOO_LARGE_JSON)
        status, _, body = send_chunked(base, "/mcp", padded_list(1001), auth)
        assert (status, json.loads(body)) == (413, TOO_LARGE_JSON)
        assert seen.bodies == []
        at = httpx.post(base + "/mcp", content=padded_list(1000), headers=auth, timeout=30)
        assert (at.status_code, at.json()) == (200, {"ran": True, "length": 1000})


@BUILDS
def test_a_chunked_body_with_a_broken_chunk_is_400_not_a_server_error(build: Build) -> None:
    """A chunk size that is no number ends the body's reading: the client is told its request
    was bad (400, JSON, not to be cached), never a 500, and the view does not run."""
    server, h = _server()
    seen = Seen()
    with serving(build(server, seen)) as base:
        host_port = base.removeprefix("http://")
        host, port = host_port.split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = [
                "POST /mcp HTTP/1.1",
                f"Host: {host_port}",
                "Transfer-Encoding: chunked",
                "Connection: close",
                f"Authorization: Bearer {_token(h, 'tools:list')}",
                "Content-Type: application/json",
            ]
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"zz\r\n{}\r\n0\r\n\r\n")
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            status, cache, body = answer.status, answer.getheader("Cache-Control"), answer.read()
    assert (status, json.loads(body)["error"], cache) == (400, "invalid_request", "no-store")
    assert seen.bodies == []


# -- 2. behind a WSGI prefix the hook guards the path the client asked for ---------------------


def _prefixed(app: flask.Flask) -> DispatcherMiddleware:
    return DispatcherMiddleware(WerkzeugResponse("outside", status=404), {"/tools": app})


def test_hook_guards_the_full_path_under_a_wsgi_prefix() -> None:
    server, h = _server(PREFIXED)
    seen = Seen()
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with serving(_prefixed(_hooked(server, seen, PREFIXED))) as base:
        refused = httpx.post(base + "/tools/mcp", json=call)
        assert refused.status_code == 401
        assert (
            'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/tools/mcp"'
            in (refused.headers["WWW-Authenticate"])
        )
        assert seen.bodies == []
        token = _token(h, "tools:list", resource=PREFIXED)
        ok = httpx.post(base + "/tools/mcp", json=call, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and len(seen.bodies) == 1


def test_hook_with_app_relative_paths_still_guards_under_a_prefix() -> None:
    """``paths`` written as the app sees them (``/mcp``) keep guarding when the app is mounted."""
    server, _ = _server(PREFIXED)
    seen = Seen()
    with serving(_prefixed(_hooked(server, seen, PREFIXED, paths=["/mcp"]))) as base:
        assert httpx.post(base + "/tools/mcp", json={}).status_code == 401
    assert seen.bodies == []


def test_decorator_guards_under_a_wsgi_prefix() -> None:
    server, _ = _server(PREFIXED)
    seen = Seen()
    with serving(_prefixed(_decorated(server, seen, PREFIXED))) as base:
        assert httpx.post(base + "/tools/mcp", json={}).status_code == 401
    assert seen.bodies == []


def test_hook_guards_a_trailing_slash_the_view_also_answers() -> None:
    server, _ = _server()
    seen = Seen()
    app = flask.Flask("lenient")
    app.add_url_rule("/mcp", "mcp", seen.view, methods=["POST"], strict_slashes=False)
    kflask.protect(app, server, RESOURCE)
    with serving(app) as base:
        for path in ("/mcp", "/mcp/"):
            assert httpx.post(base + path, json={}).status_code == 401, path
    assert seen.bodies == []


# -- 3. no API of flask.request shows the token after the guard (RS-04) ------------------------


def _exposed() -> dict[str, Any]:
    r = flask.request
    return {
        "authorization": None if r.authorization is None else r.authorization.token,
        "header": r.headers.get("Authorization"),
        "environ": r.environ.get("HTTP_AUTHORIZATION"),
        "in_headers": any(k.lower() == "authorization" for k, _ in r.headers.items()),
        "subject": kflask.current_principal().subject,
    }


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def _guarding(app: flask.Flask, server: AuthorizationServer, view: Any, style: str) -> None:
    """``view`` at ``/mcp`` of ``app`` behind the guard: decorated (``guarded``) or under the hook (``protect``)."""
    app.add_url_rule(
        "/mcp", "mcp", kflask.guarded(server, RESOURCE)(view) if style == "guarded" else view, methods=["POST"]
    )
    if style == "protect":
        kflask.protect(app, server, RESOURCE)


@pytest.mark.parametrize("style", ["guarded", "protect"])
def test_token_never_reaches_the_view_even_when_an_earlier_hook_parsed_it(style: str) -> None:
    server, h = _server()
    token = _token(h, "tools:list")
    app = flask.Flask("audited")
    audited: list[str | None] = []

    @app.before_request
    def audit() -> None:  # an audit log reading the header first caches request.authorization
        auth = flask.request.authorization
        audited.append(None if auth is None else auth.type)

    _guarding(app, server, _exposed, style)
    with serving(app) as base:
        r = httpx.post(base + "/mcp", json=TOOLS_LIST, headers={"Authorization": f"Bearer {token}"})
    assert audited == ["bearer"]
    assert r.status_code == 200
    assert r.json() == {"authorization": None, "header": None, "environ": None, "in_headers": False, "subject": "alice"}
    assert token not in r.text


class _KeepsHeaders(flask.Request):
    """A request whose headers are a copy taken when it was made, not a view of its environ."""

    def __init__(self, environ: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(environ, *args, **kwargs)
        self.headers = Headers(self.headers)


class _KeepsCredentials(flask.Request):
    """A request whose ``authorization`` is parsed from a copy of the header taken when it was made."""

    def __init__(self, environ: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(environ, *args, **kwargs)
        self._kept = environ.get("HTTP_AUTHORIZATION")

    @property  # type: ignore[override]
    def authorization(self) -> Authorization | None:
        return Authorization.from_header(self._kept)


@pytest.mark.parametrize("request_class", [_KeepsHeaders, _KeepsCredentials], ids=["headers", "authorization"])
@pytest.mark.parametrize("style", ["guarded", "protect"])
def test_a_token_the_request_still_shows_after_removal_stops_the_view(
    request_class: type[flask.Request], style: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RS-04: where the request still shows the token after the guard took it out (a request class,
    or a Flask release, keeping its own copy), the view is not called: 500, the reason logged."""
    server, h = _server()
    token = _token(h, "tools:list")
    app = flask.Flask("keeps")
    app.request_class = request_class
    ran: list[bool] = []

    def view() -> Any:
        ran.append(True)
        return {"ran": True}

    _guarding(app, server, view, style)
    with serving(app) as base:
        r = httpx.post(base + "/mcp", json=TOOLS_LIST, headers={"Authorization": f"Bearer {token}"})
        refused = httpx.post(base + "/mcp", json=TOOLS_LIST)
    assert r.status_code == 500 and r.json() == {"error": "server_error"}
    assert token not in r.text
    assert ran == []
    assert refused.status_code == 401  # no token: nothing to remove, the guard answers as usual
    logged = [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
    assert any("could not remove the Authorization header" in text for text in logged)


# -- 4, 5. misuse is refused at set-up ----------------------------------------------------------


def test_protect_refuses_a_bare_string_for_paths() -> None:
    server, _ = _server()
    with pytest.raises(TypeError, match="paths="):
        kflask.protect(flask.Flask("t"), server, RESOURCE, paths="/mcp")
    with pytest.raises(TypeError, match="paths="):
        kflask.protect(flask.Flask("t"), server, RESOURCE, paths=b"/mcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'/'"):
        kflask.protect(flask.Flask("t"), server, RESOURCE, paths=["mcp"])
    with pytest.raises(ValueError, match="empty"):
        kflask.protect(flask.Flask("t"), server, RESOURCE, paths=[])


@pytest.mark.parametrize("paths", [["/mcp", "/also"], ("/mcp", "/also"), {"/mcp", "/also"}])
def test_protect_takes_a_collection_of_paths(paths: Any) -> None:
    server, _ = _server()
    seen = Seen()
    app = flask.Flask("t")
    app.add_url_rule("/mcp", "mcp", seen.view, methods=["POST"])
    app.add_url_rule("/also", "also", seen.view, methods=["POST"])
    app.add_url_rule("/", "root", lambda: "open", methods=["GET"])
    kflask.protect(app, server, RESOURCE, paths=paths)
    with serving(app) as base:
        assert [httpx.post(base + p, json={}).status_code for p in ("/mcp", "/also")] == [401, 401]
        root = httpx.get(base + "/")
        assert (root.status_code, root.text) == (200, "open")
    assert seen.bodies == []


def test_mount_refuses_an_async_identify_hook() -> None:
    async def identify(request: Any) -> str | None:
        return "alice"

    class AsyncCallable:
        async def __call__(self, request: Any) -> str | None:
            return "alice"

    for hook in (identify, AsyncCallable()):
        server = AuthorizationServer(make_config(), Harness().store, identify=hook)
        with pytest.raises(TypeError, match="sync"):
            kflask.mount(flask.Flask("t"), server)
    sync = AuthorizationServer(make_config(), Harness().store, identify=lambda request: "alice")
    kflask.mount(flask.Flask("t"), sync)


def test_required_must_be_a_function() -> None:
    server, _ = _server()
    with pytest.raises(TypeError, match="required="):
        kflask.guarded(server, RESOURCE, required=("tools:list",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="required="):
        kflask.protect(flask.Flask("t"), server, RESOURCE, required="tools:list")  # type: ignore[arg-type]
    kflask.guarded(server, RESOURCE, required=lambda req: ("tools:list",))


# -- 6. every method on an authorization server path reaches the core ---------------------------


def test_unlisted_methods_on_authorization_server_paths_get_the_cores_405() -> None:
    server, _ = _server()
    with serving(_decorated(server, Seen())) as base:
        for method, path in (("FOO", "/token"), ("PROPFIND", "/jwks.json"), ("TRACE", "/register")):
            r = httpx.request(method, base + path)
            assert r.status_code == 405, (method, path)
            assert r.headers["Content-Type"] == "application/json"
            assert r.json()["error"] == "invalid_request"
            assert "POST" in r.headers["Allow"] or "GET" in r.headers["Allow"]
        assert httpx.post(base + "/token", data={}).status_code == 400  # still the core's endpoint


# -- every way a view reads the body gives the bytes the guard judged ---------------------------


class Streams:
    """What a guarded view read from each of ``request``'s raw inputs."""

    def __init__(self) -> None:
        self.read: list[dict[str, bytes]] = []

    def view(self) -> Any:
        r = flask.request
        self.read.append({"input_stream": r.input_stream.read(), "stream": r.stream.read(), "data": r.get_data()})
        return {"ran": True}


@pytest.mark.parametrize("early", [False, True], ids=["first read by the guard", "read by an earlier hook"])
def test_the_views_raw_streams_replay_the_judged_body_not_what_followed_it(early: bool) -> None:
    """A body sent with ``Content-Length`` and followed by more bytes (the connection then closed):
    the guard judges the declared body, and ``request.input_stream`` (the server's own input) and
    ``request.stream`` give the view those bytes too, never the ``tools/call`` sent after them."""
    server, h = _server()
    streams = Streams()
    app = flask.Flask("streams")
    if early:
        app.before_request(lambda: flask.request.get_data() and None)
    app.add_url_rule("/mcp", "mcp", kflask.guarded(server, RESOURCE)(streams.view), methods=["POST"])
    judged = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    after = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete"}}'
    with serving(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Authorization: Bearer "
                + _token(h, "tools:list").encode()
                + b"\r\nContent-Length: %d\r\n\r\n" % len(judged)
                + judged
                + after
            )
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert streams.read == [{"input_stream": judged, "stream": judged, "data": judged}]


@pytest.mark.parametrize("kind", ["urlencoded", "multipart"])
def test_a_body_an_earlier_hook_parsed_as_a_form_is_refused_not_judged_empty(kind: str) -> None:
    """A hook before the guard read ``request.form`` (as CSRF extensions do on every POST): that
    consumes the body and keeps no copy, so the guard would judge an empty body while the view is
    given the form. The guard refuses instead (415), and the view never runs."""
    server, h = _server()
    ran: list[dict[str, str]] = []
    app = flask.Flask("form")
    app.before_request(lambda: flask.request.form and None)

    @app.post("/mcp")
    @kflask.guarded(server, RESOURCE)
    def mcp() -> Any:
        ran.append(flask.request.form.to_dict())
        return {"ran": True}

    auth = {"Authorization": f"Bearer {_token(h, 'tools:list')}"}
    form = {"method": "tools/call", "name": "delete"}
    with serving(app) as base:
        if kind == "urlencoded":
            answer = httpx.post(base + "/mcp", data=form, headers=auth, timeout=10)
        else:
            answer = httpx.post(base + "/mcp", data=form, files={"f": b"x"}, headers=auth, timeout=10)
        assert answer.status_code == 415, answer.text
        assert "application/json" in answer.json()["error_description"]
        listing = httpx.post(base + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=auth)
        assert listing.status_code == 200  # a JSON body is no form: the hook's parse leaves it whole
    assert ran == []
