"""The official MCP Python SDK client against a real ``kavach serve`` (issue 3).

The client (``mcp.Client`` over ``streamable_http_client`` with the SDK's
``OAuthClientProvider``) is given nothing but the MCP URL. It finds everything else itself: the
401 challenge names the protected resource metadata (RFC 9728), that names the authorization
server, whose metadata (RFC 8414) gives the registration, authorization and token endpoints. The
test plays only the person: its redirect handler opens the authorization URL in a small browser
(:class:`tests.person.Person`) that signs in and approves, and hands the code, state and ``iss``
from the final redirect to the SDK's callback handler.

Step-up (MCP authorization, "Scope challenge handling"; RS-03): the SDK does it on its own. On a
403 with ``error="insufficient_scope"`` it re-authorizes with the union of what it asked before
and the challenged scope, then retries the request. Refresh: the SDK refreshes before a request
once its token has expired by its own clock (``expires_in``).

The proxy (``kavach serve --upstream``): an upstream MCPServer started by the test is reached
through kavachOS; progress notifications stream through and the upstream never sees the token;
a session started through one instance continues through another of the same cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from kavach_serve import mcp_upstream, serve
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_messages import INITIALIZE
from mcp_sdk_client import PASSWORD, ChoosyPerson, SdkClient, served_with_user

# A catalogue with a scope per demo tool, so a token can hold ``echo`` without ``add``.
PER_TOOL_TOML = """
[resource]
name = "Demo tools"
default_scopes = ["tools:list", "tools:call:echo", "tools:call:add"]

[resource.scopes]
"tools:list" = "See the list of tools"
"tools:call:echo" = "Run the echo tool"
"tools:call:add" = "Run the add tool"
"resources:list" = "See the list of resources"
"resources:read" = "Read resources"
"prompts:list" = "See the list of prompts"
"prompts:get" = "Use prompts"
"""


def _text(result: Any) -> str:
    assert not result.is_error, result
    return "".join(getattr(part, "text", "") for part in result.content)


@pytest.fixture
def person() -> Iterator[ChoosyPerson]:
    with ChoosyPerson("alice", PASSWORD) as p:
        yield p


# -- discovery, registration, authorization, tools ---------------------------------------------


def test_sdk_client_discovers_registers_authorizes_and_calls_a_tool(person: ChoosyPerson) -> None:
    """401 challenge -> PRM (RFC 9728) -> AS metadata (RFC 8414) -> registration (RFC 7591) ->
    authorization with PKCE, sign-in and consent -> code redemption -> tools/list, tools/call."""
    with served_with_user() as served:
        sdk = SdkClient(served.mcp_url, person)

        async def body(client: Client) -> tuple[list[str], str]:
            tools = await client.list_tools()
            echoed = await client.call_tool("echo", {"text": "hello through kavachOS"})
            return [t.name for t in tools.tools], _text(echoed)

        names, echoed = anyio.run(sdk.run, body)

    assert {"echo", "add"} <= set(names)
    assert echoed == "hello through kavachOS"
    paths = sdk.seen.paths()
    assert paths[0] == ("POST", "/mcp", 401), "the first request is challenged"
    order = [(m, p) for m, p, s in paths if s < 400]
    discovery = [
        ("GET", "/.well-known/oauth-protected-resource/mcp"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("POST", "/register"),
        ("POST", "/token"),
    ]
    positions = [order.index(step) for step in discovery]
    assert positions == sorted(positions), f"discovery out of order: {paths}"
    assert sdk.seen.token_grants() == ["authorization_code"]
    assert len(sdk.seen.authorizations) == 1
    auth = parse_qs(urlsplit(sdk.seen.authorizations[0]).query)
    assert auth["resource"] == [served.mcp_url], "RFC 8707: the token is asked for this MCP server"
    assert auth["code_challenge_method"] == ["S256"]
    assert sdk.storage.tokens is not None and sdk.storage.tokens.refresh_token
    assert any(p.endswith("/authorize/consent") or "/consent" in p for p in person.pages)


def test_sdk_client_resource_and_prompt(person: ChoosyPerson) -> None:
    """The demo's resource and prompt are reachable with the scopes that cover them."""
    toml = PER_TOOL_TOML.replace(
        'default_scopes = ["tools:list", "tools:call:echo", "tools:call:add"]',
        'default_scopes = ["tools:list", "resources:list", "resources:read", "prompts:list", "prompts:get"]',
    )
    with served_with_user(config_toml=toml) as served:
        sdk = SdkClient(served.mcp_url, person)

        async def body(client: Client) -> tuple[list[str], str, list[str]]:
            resources = await client.list_resources()
            read = await client.read_resource("kavach://about")
            prompts = await client.list_prompts()
            return (
                [str(r.uri) for r in resources.resources],
                "".join(getattr(c, "text", "") for c in read.contents),
                [p.name for p in prompts.prompts],
            )

        uris, about, prompts = anyio.run(sdk.run, body)
    assert uris == ["kavach://about"]
    assert "kavachOS" in about
    assert prompts == ["greet"]


# -- step-up ---------------------------------------------------------------------------------


def test_rs_03_sdk_client_steps_up_on_insufficient_scope(person: ChoosyPerson) -> None:
    """The person grants ``tools:list`` and ``tools:call:echo`` only; calling ``add`` gets 403
    ``insufficient_scope`` naming ``tools:call:add``; the SDK re-authorizes for the union and the
    retried call succeeds, without registering again."""
    person.grant = {"tools:list", "tools:call:echo"}
    with served_with_user(config_toml=PER_TOOL_TOML) as served:
        sdk = SdkClient(served.mcp_url, person)

        async def body(client: Client) -> tuple[str, str | None, str, str]:
            echoed = _text(await client.call_tool("echo", {"text": "first"}))
            before = sdk.storage.tokens.scope if sdk.storage.tokens else None
            person.grant = None  # at the second consent the person approves what is asked
            added = _text(await client.call_tool("add", {"a": 2, "b": 3}))
            echoed_again = _text(await client.call_tool("echo", {"text": "still"}))
            return echoed, before, added, echoed_again

        echoed, before, added, echoed_again = anyio.run(sdk.run, body)

    assert echoed == "first"
    assert before is not None and set(before.split()) == {"tools:list", "tools:call:echo"}
    assert float(added) == 5
    assert echoed_again == "still"
    statuses = sdk.seen.paths()
    assert ("POST", "/mcp", 403) in statuses, "the add call was refused for its scope first"
    assert len(sdk.seen.authorizations) == 2
    second = parse_qs(urlsplit(sdk.seen.authorizations[1]).query)["scope"][0].split()
    assert "tools:call:add" in second and "tools:call:echo" in second, "SEP-2350: the union is asked for"
    assert [p for m, p, s in statuses if p == "/register"] == ["/register"], "registered once"
    assert sdk.storage.tokens is not None
    assert "tools:call:add" in (sdk.storage.tokens.scope or "").split()


def test_sdk_client_steps_up_beyond_its_first_challenge(person: ChoosyPerson) -> None:
    """The first challenge offers only ``tools:list tools:call:echo``, so the SDK registers with
    that scope; ``add`` needs a scope outside it. The SDK steps up and the server lets it: the
    scope a client registers dynamically does not cap it (only an operator's ``kavach clients
    add --scope`` does), since MCP clients learn the scopes they need one challenge at a time."""
    toml = PER_TOOL_TOML.replace(
        'default_scopes = ["tools:list", "tools:call:echo", "tools:call:add"]',
        'default_scopes = ["tools:list", "tools:call:echo"]',
    )
    with served_with_user(config_toml=toml) as served:
        sdk = SdkClient(served.mcp_url, person)

        async def body(client: Client) -> str:
            _text(await client.call_tool("echo", {"text": "first"}))
            return _text(await client.call_tool("add", {"a": 2, "b": 3}))

        assert float(anyio.run(sdk.run, body)) == 5


# -- refresh ---------------------------------------------------------------------------------


def test_tk_07_sdk_client_refreshes_an_expired_access_token(person: ChoosyPerson) -> None:
    """With 2-second access tokens (``KAVACH_ACCESS_TOKEN_LIFETIME=2``) the SDK refreshes once
    its token expires, and the call made with the new token succeeds; no new authorization."""
    with served_with_user(extra_env={"KAVACH_ACCESS_TOKEN_LIFETIME": "2"}) as served:
        sdk = SdkClient(served.mcp_url, person)

        async def body(client: Client) -> tuple[str, str, str | None, str | None]:
            first = _text(await client.call_tool("echo", {"text": "before"}))
            token_before = sdk.storage.tokens.access_token if sdk.storage.tokens else None
            await anyio.sleep(3.2)
            second = _text(await client.call_tool("echo", {"text": "after"}))
            token_after = sdk.storage.tokens.access_token if sdk.storage.tokens else None
            return first, second, token_before, token_after

        first, second, token_before, token_after = anyio.run(sdk.run, body)

    assert (first, second) == ("before", "after")
    assert token_before and token_after and token_before != token_after
    assert sdk.seen.token_grants() == ["authorization_code", "refresh_token"]
    refreshed = [s for m, p, s, _ in sdk.seen.exchanges if p == "/token"]
    assert refreshed == [200, 200]
    assert len(sdk.seen.authorizations) == 1


# -- the proxy ------------------------------------------------------------------------------


class Upstream:
    def __init__(self, url: str, seen: Path) -> None:
        self.url = url
        self.seen = seen

    def requests(self) -> list[dict[str, Any]]:
        """Every request the upstream received: method, authorization, session."""
        if not self.seen.exists():
            return []
        return [json.loads(line) for line in self.seen.read_text().splitlines() if line.strip()]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """An MCPServer (tests/mcp_upstream.py) on a free loopback port, stopped afterwards."""
    with mcp_upstream(tmp_path) as (url, seen):
        yield Upstream(url, seen)


def test_rs_04_proxy_streams_progress_and_never_forwards_the_token(person: ChoosyPerson, upstream: Upstream) -> None:
    """Through ``kavach serve --upstream``: tools of the upstream are listed and called, each
    progress notification of ``count`` reaches the client, and no request the upstream received
    carried an ``Authorization`` header (the client's token least of all)."""
    with served_with_user(extra_args=["--upstream", upstream.url]) as served:
        sdk = SdkClient(served.mcp_url, person)
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        async def body(client: Client) -> tuple[list[str], str, str]:
            tools = await client.list_tools()
            header = _text(await client.call_tool("auth_header", {}))
            counted = _text(await client.call_tool("count", {"n": 5}, progress_callback=on_progress))
            return [t.name for t in tools.tools], header, counted

        names, header, counted = anyio.run(sdk.run, body)
        token = sdk.storage.tokens.access_token if sdk.storage.tokens else ""

    assert set(names) == {"count", "auth_header"}
    assert header == "<none>", "the upstream saw an Authorization header"
    assert counted == "5"
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5]
    assert progress[-1][1] == 5 and progress[-1][2] == "step 5"
    seen = upstream.requests()
    assert seen, "the upstream received the client's requests"
    assert [r for r in seen if r["authorization"] is not None] == [], "the upstream saw an Authorization header"
    assert token and token not in upstream.seen.read_text()


def test_proxy_passes_sessions_get_streams_and_delete(person: ChoosyPerson, upstream: Upstream) -> None:
    """A handshake-era client (``mode="legacy"``: initialize, a session id, the GET stream, DELETE
    when done) works through the proxy: ``Mcp-Session-Id`` travels both ways, the GET stream and
    the DELETE reach the upstream, and none of them carries the token."""
    with served_with_user(extra_args=["--upstream", upstream.url]) as served:
        sdk = SdkClient(served.mcp_url, person)
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        async def body(client: Client) -> str:
            await anyio.sleep(0.5)  # let the client open its GET stream
            return _text(await client.call_tool("count", {"n": 3}, progress_callback=on_progress))

        async def legacy() -> str:
            with anyio.fail_after(90):
                async with httpx2.AsyncClient(auth=sdk.provider, timeout=30) as http:
                    transport = streamable_http_client(served.mcp_url, http_client=http)
                    async with Client(transport, mode="legacy") as client:
                        return await body(client)

        counted = anyio.run(legacy)

    assert counted == "3" and progress == [1, 2, 3]
    seen = upstream.requests()
    methods = {r["method"] for r in seen}
    assert {"POST", "GET", "DELETE"} <= methods, seen
    sessions = {r["session"] for r in seen if r["method"] in ("GET", "DELETE")}
    assert len(sessions) == 1 and None not in sessions, "the session id the upstream issued came back to it"
    assert [r for r in seen if r["authorization"] is not None] == []


def test_a_proxied_session_continues_on_another_instance(person: ChoosyPerson, upstream: Upstream) -> None:
    """Two ``kavach serve --upstream`` instances on one store and one public issuer (a cluster
    behind a load balancer that is not sticky): a session the client starts through the first
    continues through the second, which never saw it start; a session id not sealed there is a 404
    that never reaches the upstream."""
    with served_with_user(extra_args=["--upstream", upstream.url]) as first:
        sdk = SdkClient(first.mcp_url, person)

        async def listed(client: Client) -> list[str]:
            return [t.name for t in (await client.list_tools()).tools]

        assert "count" in anyio.run(sdk.run, listed)
        token = sdk.storage.tokens.access_token if sdk.storage.tokens else ""
        with serve(extra_args=["--upstream", upstream.url, "--db", first.db, "--issuer", first.issuer]) as second:
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
                "MCP-Protocol-Version": "2025-06-18",
            }
            started = httpx.post(first.mcp_url, json=INITIALIZE, headers=headers, timeout=30)
            assert started.status_code == 200, started.text
            sealed = started.headers["mcp-session-id"]
            in_session = {**headers, "Mcp-Session-Id": sealed}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            elsewhere = f"http://127.0.0.1:{second.port}/mcp"
            assert httpx.post(elsewhere, json=note, headers=in_session, timeout=30).status_code == 202
            tools = httpx.post(
                elsewhere, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=in_session, timeout=30
            )
            assert tools.status_code == 200 and '"count"' in tools.text, tools.text
            upstream_id = sealed.rpartition(".")[0]
            assert {r["session"] for r in upstream.requests() if r["session"]} >= {upstream_id}
            reached = len(upstream.requests())
            forged = {**headers, "Mcp-Session-Id": upstream_id}
            refused = httpx.post(
                elsewhere, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=forged, timeout=30
            )
            assert refused.status_code == 404 and refused.json()["error"] == "session_not_found"
            assert len(upstream.requests()) == reached
