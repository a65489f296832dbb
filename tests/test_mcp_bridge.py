"""kavach.mcp: a server built with the official MCP Python SDK, called by the SDK's own client.

Both ways of protecting it are exercised over real HTTP (uvicorn on 127.0.0.1): the SDK's auth
with :class:`kavach.mcp.KavachTokenVerifier` (RS-02, RS-04, RS-05: another resource's token and
an expired token are 401), and :func:`kavach.mcp.guard` (per-method scopes, RS-03).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from e2e_frameworks import serve_asgi
from failing_stores import BrokenStore, DownStore
from kavach.mcp import KavachTokenVerifier, auth_settings, guard, sdk_auth
from kavach.server import AuthorizationServer
from kavach.starlette import mount
from kavach.users import MemoryUsers, Users
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer
from mcp_messages import INITIALIZE, INITIALIZE_BODY, MCP_HEADERS
from test_adapters_e2e import PASSWORD, Deployment, grant

from kavach_core.config import Config, ProtectedResource
from kavach_core.memory_store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _tools(**options: Any) -> MCPServer:
    tools = MCPServer("demo", **options)

    @tools.tool()
    def echo(text: str) -> str:
        return text

    @tools.tool()
    def whoami() -> str:
        token = get_access_token()
        return f"{token.subject} {token.resource} {' '.join(token.scopes)}" if token else "nobody"

    @tools.tool()
    def delete(path: str) -> str:
        return "deleted"

    return tools


class Site:
    def __init__(self, sdk_native: bool, *, stateless: bool = True, security: Any = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.mcp_url = self.base + "/mcp"
        self.other_url = self.base + "/other"
        config = Config(
            issuer=self.base,
            resources=[ProtectedResource(self.mcp_url, name="SDK tools"), ProtectedResource(self.other_url)],
            secret=b"b" * 32,
        )
        users = Users(MemoryUsers(), log_n=10)
        users.add("alice", PASSWORD)
        users.add("bob", PASSWORD)
        self.clock = Clock()
        self.server = AuthorizationServer(config, MemoryStore(), users=users, clock=self.clock)
        if sdk_native:
            app: Any = _tools(**sdk_auth(self.server, self.mcp_url)).streamable_http_app(stateless_http=True)
            mount(app, self.server)
        else:
            sdk_app = _tools().streamable_http_app(stateless_http=stateless, transport_security=security)
            app = guard(sdk_app, self.server, self.mcp_url)
        self.stop = serve_asgi(self.sock, app)

    def token(
        self, resource: str, scope: str = "tools:list tools:call:echo tools:call:whoami", username: str = "alice"
    ) -> str:
        with httpx.Client(timeout=10) as client, httpx.Client(timeout=10) as person:
            dep = Deployment(self.base, self.base, resource, self.server, client, person)
            return str(grant(dep, scope, username)["access_token"])

    def call(self, token: str, tool: str, arguments: dict[str, Any]) -> tuple[Any, list[int]]:
        """The SDK's client: initialize, list tools, call ``tool``; the statuses it saw."""
        statuses: list[int] = []

        async def seen(response: httpx2.Response) -> None:
            statuses.append(response.status_code)

        async def body() -> Any:
            headers = {"Authorization": f"Bearer {token}"}
            with anyio.fail_after(30):
                async with (
                    httpx2.AsyncClient(headers=headers, timeout=10, event_hooks={"response": [seen]}) as http,
                    Client(streamable_http_client(self.mcp_url, http_client=http)) as client,
                ):
                    listed = await client.list_tools()
                    assert {"echo", "whoami", "delete"} <= {t.name for t in listed.tools}
                    return await client.call_tool(tool, arguments)

        try:
            return anyio.run(body), statuses
        except Exception as exc:  # the SDK's client raises on a refused request
            return exc, statuses

    def close(self) -> None:
        self.stop()
        self.sock.close()


@pytest.fixture(params=[True, False], ids=["sdk-auth", "kavach-guard"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    s = Site(bool(request.param))
    try:
        yield s
    finally:
        s.close()


def _text(result: Any) -> str:
    assert not getattr(result, "is_error", True), result
    return "".join(getattr(part, "text", "") for part in result.content)


def test_sdk_client_with_a_kavach_token_works(site: Site) -> None:
    result, statuses = site.call(site.token(site.mcp_url), "echo", {"text": "hello"})
    assert _text(result) == "hello", statuses
    assert set(statuses) <= {200, 202, 204}


def test_tools_see_the_verified_token_through_the_sdk(site: Site) -> None:
    result, _ = site.call(site.token(site.mcp_url), "whoami", {})
    assert _text(result) == f"alice {site.mcp_url} tools:list tools:call:echo tools:call:whoami"


def test_rs_04_token_minted_for_another_resource_is_401(site: Site) -> None:
    foreign = site.token(site.other_url)
    result, statuses = site.call(foreign, "echo", {"text": "hello"})
    assert isinstance(result, Exception) and statuses[:1] == [401]
    r = httpx.post(
        site.mcp_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": f"Bearer {foreign}", "Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 401
    assert f'resource_metadata="{site.base}/.well-known/oauth-protected-resource/mcp"' in r.headers["www-authenticate"]


def test_rs_02_expired_token_is_401(site: Site) -> None:
    token = site.token(site.mcp_url)
    site.clock.now += 3600  # past the access token's ten minutes
    result, statuses = site.call(token, "echo", {"text": "hello"})
    assert isinstance(result, Exception) and statuses[:1] == [401]


def test_revoked_grant_is_401_through_the_verifier() -> None:
    s = Site(sdk_native=True)
    try:
        token = s.token(s.mcp_url)
        verifier = KavachTokenVerifier(s.server, s.mcp_url + "/")  # RS-05: compared canonically
        checked = anyio.run(verifier.verify_token, token)
        assert checked is not None and checked.resource == s.mcp_url and checked.subject == "alice"
        assert anyio.run(verifier.verify_token, token + "x") is None
        assert anyio.run(KavachTokenVerifier(s.server, s.other_url).verify_token, token) is None
    finally:
        s.close()


def test_the_verifier_hands_tools_no_token_and_never_calls_a_token_invalid_when_the_store_is_down() -> None:
    """``AccessToken.token`` is empty (RS-04). With the store down, the SDK's app answers 500, not
    401 ``invalid_token`` (which sends a client to authorize again); the guard answers 503."""
    s = Site(sdk_native=True)
    try:
        token = s.token(s.mcp_url)
        checked = anyio.run(KavachTokenVerifier(s.server, s.mcp_url).verify_token, token)
        assert checked is not None and checked.token == "" and checked.subject == "alice"
        s.server.store = DownStore()
        s.server.verified.clear()
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
        r = httpx.post(s.mcp_url, json=message, headers=headers, timeout=10)
        assert r.status_code == 500 and "invalid_token" not in r.headers.get("www-authenticate", ""), r.text
    finally:
        s.close()


def test_rs_03_guard_enforces_per_tool_scope_the_sdk_cannot() -> None:
    s = Site(sdk_native=False)
    try:
        result, statuses = s.call(s.token(s.mcp_url), "delete", {"path": "/"})
        assert 403 in statuses
        assert not _is_success(result)
    finally:
        s.close()


_MCP = {**MCP_HEADERS, "Content-Type": "application/json"}


@pytest.mark.parametrize(("security", "status"), [(None, 421), ("documented", 200)])
def test_the_documented_guard_serves_the_resources_own_host(security: str | None, status: int) -> None:
    """The recommended setup (README, the ``kavach.mcp`` docstring) names the resource's host in
    the SDK's transport security: a request to that host (not loopback) reaches the tools. Without
    it the SDK's DNS-rebinding check, on by default, answers 421 to every such request, which the
    documented example once did."""
    from mcp.server.transport_security import TransportSecuritySettings

    settings = None
    if security == "documented":
        settings = TransportSecuritySettings(
            allowed_hosts=["tools.example.com"], allowed_origins=["https://tools.example.com"]
        )
    s = Site(sdk_native=False, security=settings)
    try:
        token = s.token(s.mcp_url)
        headers = {**_MCP, "Authorization": f"Bearer {token}", "Host": "tools.example.com"}
        with httpx.Client(timeout=10) as http:
            answered = http.post(s.mcp_url, headers=headers, content=INITIALIZE_BODY)
        assert answered.status_code == status, answered.text
    finally:
        s.close()


def test_an_mcp_session_continues_only_for_the_principal_it_was_opened_for() -> None:
    """Session hijacking (MCP security best practices): the SDK's session ids are bound to the
    principal behind ``kavach.mcp.guard``, so another person's token, or the same person's
    token for another client, cannot post into, listen to or end the session: 404, and the SDK
    never sees the request. The owner's session lives on."""
    s = Site(sdk_native=False, stateless=False)
    try:
        alice, bob = s.token(s.mcp_url), s.token(s.mcp_url, username="bob")
        alice_elsewhere = s.token(s.mcp_url)  # another registration: another client

        def call(token: str, body: bytes | None, sid: str | None = None, method: str = "POST") -> httpx.Response:
            headers = {**_MCP, "Authorization": f"Bearer {token}", **({"Mcp-Session-Id": sid} if sid else {})}
            return httpx.request(method, s.mcp_url, content=body, headers=headers, timeout=10)

        opened = call(alice, INITIALIZE_BODY)
        assert opened.status_code == 200, opened.text
        sid = opened.headers["mcp-session-id"]
        own, _, tag = sid.rpartition(".")
        assert own and len(tag) == 43, "the client holds the SDK's id sealed to its principal"
        assert call(alice, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', sid).status_code == 202
        listing = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
        assert call(alice, listing, sid).status_code == 200
        for token, method, body in ((bob, "POST", listing), (bob, "DELETE", None), (bob, "GET", None),
                                    (alice_elsewhere, "POST", listing), (alice, "POST", listing)):  # fmt: skip
            target = own if token is alice else sid  # the SDK's own id, unsealed, is no better
            refused = call(token, body, target, method)
            assert refused.status_code == 404 and refused.json()["error"] == "session_not_found", refused.text
        after = call(alice, listing, sid)
        assert after.status_code == 200 and "echo" in after.text, "the session survived the others' attempts"
        assert call(alice, None, sid, "DELETE").status_code == 200
    finally:
        s.close()


def test_an_sdk_sse_session_takes_messages_only_from_the_user_who_opened_it() -> None:
    """The SDK's SSE transport names its session in the event stream's endpoint URL
    (``/messages/?session_id=...``), which no guard can seal; behind ``kavach.mcp.guard`` the SDK
    is handed the verified user, so its own check keeps the session to that user: another
    person's valid token posting to the session's URL is answered 404, the owner's is taken."""
    import threading

    from mcp.server.transport_security import TransportSecuritySettings

    tools = MCPServer("demo")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    resource = base + "/sse"
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", PASSWORD)
    users.add("bob", PASSWORD)
    config = Config(issuer=base, resources=[ProtectedResource(resource)], secret=b"b" * 32)
    server = AuthorizationServer(config, MemoryStore(), users=users)
    app = tools.sse_app(transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    stop = serve_asgi(sock, guard(app, server, resource))
    try:
        with httpx.Client(timeout=10) as client, httpx.Client(timeout=10) as person:
            dep = Deployment(base, base, resource, server, client, person)
            alice = grant(dep, "tools:list")["access_token"]
            bob = grant(dep, "tools:list", "bob")["access_token"]
        endpoint: dict[str, str] = {}
        done = threading.Event()

        def listen() -> None:
            headers = {"Authorization": f"Bearer {alice}"}
            try:
                with httpx.stream("GET", resource, headers=headers, timeout=15) as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data:") and "session_id" in line:
                            endpoint["url"] = base + line[5:].strip()
                        if done.is_set():
                            break
            except httpx.HTTPError:  # the stream ends with the server, at the end of the test
                return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        deadline = time.monotonic() + 10  # the hang guard
        while "url" not in endpoint and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "url" in endpoint, "the SSE stream named no endpoint"
        bobs = httpx.post(endpoint["url"], json=INITIALIZE, headers={"Authorization": f"Bearer {bob}"}, timeout=10)
        alices = httpx.post(endpoint["url"], json=INITIALIZE, headers={"Authorization": f"Bearer {alice}"}, timeout=10)
        done.set()
        assert bobs.status_code == 404, bobs.text
        assert alices.status_code == 202, alices.text
    finally:
        stop()
    listener.join(timeout=15)
    assert not listener.is_alive()


def _is_success(result: Any) -> bool:
    return not isinstance(result, Exception) and not getattr(result, "is_error", True)


def test_auth_settings_name_kavach_and_check_the_audience() -> None:
    s = Site(sdk_native=True)
    try:
        settings = auth_settings(s.server, "HTTP" + s.mcp_url[4:] + "/", required_scopes=["tools"])
        assert str(settings.issuer_url) == s.base
        assert str(settings.resource_server_url) == s.mcp_url
        assert settings.validate_token_resource is True and settings.required_scopes == ["tools"]
    finally:
        s.close()


# -- what the bridge passes on, and what it leaves behind ------------------------------------------


def _serve_elsewhere(app: Any) -> tuple[str, Any]:
    """Serve ``app`` on a port of its own; the tokens are a :class:`Site`'s, for its ``mcp_url``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    stop = serve_asgi(sock, app)

    def close() -> None:
        stop()
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", close


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT as sent (the server verified it; this only reads it)."""
    import base64

    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_guard_passes_the_applications_own_scope_rule_on() -> None:
    """``guard(..., required=...)`` is the application's rule for the scopes a request needs
    (:class:`kavach.starlette.KavachGuard`): a token without them is 403 ``insufficient_scope``
    naming them (RS-03, RFC 6750 §3.1), a token with them reaches the SDK."""
    s = Site(sdk_native=False)
    sdk_app = _tools().streamable_http_app(stateless_http=True)
    base, close = _serve_elsewhere(guard(sdk_app, s.server, s.mcp_url, required=lambda request: ("prompts:list",)))
    try:
        listing = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        answered = {}
        for scope in ("tools:list", "prompts:list"):
            headers = {**_MCP, "Authorization": f"Bearer {s.token(s.mcp_url, scope=scope)}"}
            answered[scope] = httpx.post(base + "/mcp", content=listing, headers=headers, timeout=10)
        refused, allowed = answered["tools:list"], answered["prompts:list"]
        assert refused.status_code == 403, refused.text
        challenge = refused.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="prompts:list"' in challenge
        assert allowed.status_code == 200 and "echo" in allowed.text, allowed.text
    finally:
        close()
        s.close()


def test_sdk_auth_hands_the_required_scopes_to_the_sdk() -> None:
    """``sdk_auth(..., required_scopes=...)``: the SDK's own check asks every request for them, so
    a valid token for this resource without them is 403 ``insufficient_scope`` (RFC 6750 §3.1)."""
    s = Site(sdk_native=True)
    tools = _tools(**sdk_auth(s.server, s.mcp_url, required_scopes=["prompts:list"]))
    base, close = _serve_elsewhere(tools.streamable_http_app(stateless_http=True))
    try:
        listing = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        answered = {}
        for scope in ("tools:list", "tools:list prompts:list"):
            token = s.token(s.mcp_url, scope=scope)
            headers = {**_MCP, "Authorization": f"Bearer {token}"}
            answered[scope] = httpx.post(base + "/mcp", content=listing, headers=headers, timeout=10)
        refused, allowed = answered["tools:list"], answered["tools:list prompts:list"]
        assert refused.status_code == 403, refused.text
        assert "insufficient_scope" in refused.headers.get("www-authenticate", "")
        assert allowed.status_code == 200 and "echo" in allowed.text, allowed.text
    finally:
        close()
        s.close()


def test_the_sdk_sees_the_whole_verified_token_behind_the_guard_and_never_the_credential() -> None:
    """Behind ``kavach.mcp.guard`` a route of the SDK's app finds the verified user where Starlette
    and the SDK look (``request.user``, ``request.auth``): the token's client, scopes, expiry,
    audience and claims, its ``token`` empty and no ``Authorization`` header (RS-04)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    s = Site(sdk_native=False)
    tools = _tools()

    @tools.custom_route("/whoami", methods=["GET"])
    async def whoami(request: Request) -> JSONResponse:
        seen = request.user.access_token
        return JSONResponse({
            "auth": sorted(request.auth.scopes), "client_id": seen.client_id, "expires_at": seen.expires_at,
            "resource": seen.resource, "subject": seen.subject, "claims": seen.claims, "token": seen.token,
            "authorization": request.headers.get("authorization"), "sdk": get_access_token() is not None,
        })  # fmt: skip

    base, close = _serve_elsewhere(guard(tools.streamable_http_app(stateless_http=True), s.server, s.mcp_url))
    try:
        token = s.token(s.mcp_url)
        issued = _claims(token)
        r = httpx.get(base + "/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["auth"] == sorted(issued["scope"].split())
        assert seen["client_id"] == issued["client_id"] and seen["subject"] == issued["sub"] == "alice"
        assert seen["expires_at"] == issued["exp"] and seen["resource"] == s.mcp_url
        assert seen["claims"]["jti"] == issued["jti"] and seen["claims"]["aud"] == issued["aud"]
        assert seen["token"] == "" and seen["authorization"] is None and seen["sdk"] is True
    finally:
        close()
        s.close()


def test_the_verifier_reports_the_tokens_client_expiry_and_claims() -> None:
    """``KavachTokenVerifier.verify_token`` gives the SDK the token's client, expiry (the SDK's own
    expiry check reads it) and claims, beside its subject and audience."""
    s = Site(sdk_native=True)
    try:
        token = s.token(s.mcp_url)
        issued = _claims(token)
        checked = anyio.run(KavachTokenVerifier(s.server, s.mcp_url).verify_token, token)
        assert checked is not None
        assert checked.client_id == issued["client_id"] and checked.expires_at == issued["exp"]
        assert checked.claims["jti"] == issued["jti"] and checked.claims["sub"] == "alice"
    finally:
        s.close()


def test_the_sdk_user_does_not_outlive_the_request_in_the_callers_context() -> None:
    """The guard sets the SDK's authenticated user for the request only: an app called in-process
    (in the caller's own context, as ``httpx.ASGITransport`` does) leaves no user behind for
    whatever runs next in that context."""
    s = Site(sdk_native=False)
    during: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        during.append(get_access_token())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    try:
        token = s.token(s.mcp_url)

        async def call() -> tuple[int, Any]:
            transport = httpx.ASGITransport(app=guard(app, s.server, s.mcp_url))
            async with httpx.AsyncClient(transport=transport, base_url=s.base) as http:
                r = await http.post("/mcp", content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
                                    headers={**_MCP, "Authorization": f"Bearer {token}"})  # fmt: skip
            return r.status_code, get_access_token()

        status, after = anyio.run(call)
        assert status == 204 and during[0] is not None and during[0].subject == "alice"
        assert after is None
    finally:
        s.close()


def test_the_verifier_lets_an_outage_propagate_and_refuses_on_any_other_fault() -> None:
    """``verify_token`` raises the store's ``StoreUnavailable`` itself (the caller can tell an outage
    from a bad token), and answers ``None`` (a refusal, fail closed) when the store fails otherwise."""
    from kavach_core.drivers import StoreUnavailable

    s = Site(sdk_native=True)
    try:
        token = s.token(s.mcp_url)
        verifier = KavachTokenVerifier(s.server, s.mcp_url)
        s.server.store = DownStore()
        s.server.verified.clear()
        with pytest.raises(StoreUnavailable):
            anyio.run(verifier.verify_token, token)
        s.server.store = BrokenStore()
        s.server.verified.clear()
        assert anyio.run(verifier.verify_token, token) is None
    finally:
        s.close()


def test_the_verifier_refuses_a_token_whose_grant_was_revoked() -> None:
    """The verifier asks the store whether the token's grant still stands: after the person's
    grants are revoked (``kavach revoke``'s effect) a token that still verifies cryptographically
    and has not expired is ``None`` to the SDK, its 401 (RFC 7009 §2, RS-02)."""
    from kavach_core import effects as fx

    s = Site(sdk_native=True)
    try:
        token = s.token(s.mcp_url)
        verifier = KavachTokenVerifier(s.server, s.mcp_url)
        assert anyio.run(verifier.verify_token, token) is not None
        assert s.server.store.perform(fx.RevokeSubject("alice", int(s.clock.now))) == 1
        assert anyio.run(verifier.verify_token, token) is None
    finally:
        s.close()


def test_the_guarded_sdk_app_starts_under_a_server_that_gives_lifespan_no_state() -> None:
    """The ASGI spec makes ``state`` optional in a lifespan scope (a server without state support
    sends none): the guarded SDK app's lifespan (its session manager) still starts and stops."""
    s = Site(sdk_native=False)
    app = guard(_tools().streamable_http_app(stateless_http=True), s.server, s.mcp_url)
    sent: list[str] = []

    async def lifespan() -> None:
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        with anyio.fail_after(30):
            await app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}, receive, send)

    try:
        anyio.run(lifespan)
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    finally:
        s.close()
