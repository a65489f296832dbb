"""A host without HTTP: the whole OAuth flow by handing messages to ``kavach_core``.

A desktop MCP host, a stdio bridge or a test harness can embed the authorization server and the
resource guard without any web server: it builds :class:`HttpRequest` messages, runs the core's
flows against a store, and reads :class:`Response` values. Run it with
``python examples/embedded_host.py``; it prints each step and exits non-zero on any surprise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from kavach_core import guard, mcp_methods
from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import run
from kavach_core.endpoints import authorize
from kavach_core.http import HttpRequest, Response
from kavach_core.memory_store import MemoryStore
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.router import route

ISSUER = "https://auth.desktop.example"
RESOURCE = "https://tools.desktop.example/mcp"
REDIRECT = "http://127.0.0.1:53682/callback"

config = Config(
    issuer=ISSUER,
    resources=[ProtectedResource(RESOURCE, name="Desktop tools")],
    secret=secrets.token_bytes(32),
)
store = MemoryStore()


def context() -> Context:
    """A fresh context: the host injects the clock and the entropy source."""
    return Context(config, int(time.time()), secrets.token_bytes)


def call(req: HttpRequest) -> Any:
    """Hand one message to the core's router and return its outcome."""
    return run(route(context(), req), store)


def form(path: str, fields: dict[str, str]) -> HttpRequest:
    body = urlencode(fields).encode()
    return HttpRequest("POST", path, headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body)


def expect(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {what}")


def tool_call(access_token: str, tool: str) -> Response | guard.Principal:
    """The host's guarded function: what an MCP server does before running ``tools/call``."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    required = mcp_methods.required_scopes(json.dumps(message).encode())
    flow = guard.authenticate(config, RESOURCE, f"Bearer {access_token}", required, int(time.time()))
    return run(flow, store)


def main() -> None:
    # 1. Register a public client (RFC 7591).
    registered = call(
        HttpRequest(
            "POST",
            "/register",
            headers=[("Content-Type", "application/json")],
            body=json.dumps(
                {"client_name": "Embedded host", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
            ).encode(),
        )
    )
    expect(registered.status == 201, "client registered")
    client_id = registered.json()["client_id"]

    # 2. Authorize with PKCE S256 and a resource indicator.
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    outcome = call(
        HttpRequest(
            "GET",
            "/authorize",
            query=[
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                ("resource", RESOURCE),
                ("scope", "tools:list tools:call:search"),
                ("state", "s1"),
            ],
        )
    )
    expect(isinstance(outcome, ConsentRequired), "consent requested")
    assert isinstance(outcome, ConsentRequired)
    print(f"     {outcome.view.client_name} asks for {[s.scope for s in outcome.view.scopes]}")

    # 3. The person approves (the host identified them its own way).
    redirect = run(authorize.approve(context(), outcome.ticket, "alice"), store)
    query = parse_qs(urlsplit(redirect.header("Location") or "").query)
    expect(query.get("iss") == [ISSUER] and query.get("state") == ["s1"], "redirect carries state and iss")
    code = query["code"][0]

    # 4. Redeem the code.
    tokens = call(
        form(
            "/token",
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "client_id": client_id,
                "redirect_uri": REDIRECT,
                "resource": RESOURCE,
            },
        )
    )
    expect(tokens.status == 200, "code redeemed")
    body = tokens.json()

    # 5. Call guarded functions with the token.
    allowed = tool_call(body["access_token"], "search")
    expect(isinstance(allowed, guard.Principal), "tools/call search allowed")
    refused = tool_call(body["access_token"], "delete")
    expect(isinstance(refused, Response) and refused.status == 403, "tools/call delete refused: insufficient_scope")

    # 6. Refresh (rotation), then revoke the family.
    refreshed = call(
        form("/token", {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id})
    )
    expect(refreshed.status == 200 and refreshed.json()["refresh_token"] != body["refresh_token"], "refresh rotated")
    new = refreshed.json()
    revoked = call(form("/revoke", {"token": new["refresh_token"], "client_id": client_id}))
    expect(revoked.status == 200, "refresh token revoked")
    after = tool_call(new["access_token"], "search")
    expect(isinstance(after, Response) and after.status == 401, "access token of the revoked grant refused")
    print("embedded flow complete")


if __name__ == "__main__":
    main()
