"""Issue 3: the official MCP TypeScript SDK client, given only the MCP URL of a ``kavach serve``.

The client (``tests/node/mcp_oauth_client.ts``, on ``@modelcontextprotocol/sdk`` and its OAuth
support, run on the project-local Node 22 from ``tests/node_env.py``) discovers the server
through the 401 challenge and both metadata documents (RFC 9728, RFC 8414), registers
(RFC 7591), authorizes with PKCE, lists the tools and calls one; a tool its grant does not
cover gets 403 ``insufficient_scope`` and the client steps up; an expired access token is
answered with 401 and the client's refresh succeeds. This test plays the person: it signs in
and approves at each authorization URL the client prints (:mod:`person`).

Rules exercised across processes: MD-01..MD-03, RG-01/02, AZ-03/05/08/11, TK-03/07/09,
RS-02/03/04.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import node_env
import pytest
from kavach_serve import Served, serve
from person import Person
from process_lines import lines

CLIENT = node_env.PROJECT / "mcp_oauth_client.ts"
RUN_TIMEOUT = 180.0
ACCESS_TOKEN_LIFETIME = 5
USERNAME, PASSWORD = "alice", "correct horse battery staple"

# The demo resource with a catalogue in which a grant can cover one tool but not the other:
# the default grant lets the client list tools and call `echo`; `add` needs a step-up.
CONFIG = f"""
[lifetimes]
access_token = {ACCESS_TOKEN_LIFETIME}

[resource]
default_scopes = ["tools:list", "tools:call:echo"]

[resource.scopes]
"tools:list" = "See the list of tools"
"tools:call" = "Run any tool"
"tools:call:echo" = "Run the echo tool"
"""


@pytest.fixture(scope="module")
def node() -> dict[str, str]:
    return node_env.require()


def run_client(served: Served, env: dict[str, str]) -> tuple[dict[str, Any], list[str], Person]:
    """Run the TypeScript client to its end, approving every authorization it asks for."""
    person = Person(USERNAME, PASSWORD)
    proc = subprocess.Popen(
        [node_env.node(), str(CLIENT), served.mcp_url],
        cwd=node_env.PROJECT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr or ()), daemon=True).start()
    events: list[str] = []
    result: dict[str, Any] | None = None
    try:
        for line in lines(proc, RUN_TIMEOUT, lambda: f"TypeScript client timed out; events so far: {events}"):
            events.append(line.rstrip())
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "authorize":
                landed = person.authorize(event["url"])
                events.append(f"(person landed on {landed.split('?')[0]})")
            elif event.get("event") == "result":
                result = event
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        person.close()
    if result is None:
        raise AssertionError(
            f"TypeScript client ended (status {proc.returncode}) without a result.\nevents: {events}\n"
            f"stderr: {''.join(errors)[-4000:]}\nserver: {served.output()}"
        )
    if not result.get("ok"):
        raise AssertionError(
            f"TypeScript client failed: {result.get('error')}\nevents: {json.dumps(events, indent=1)}\n"
            f"stderr: {''.join(errors)[-4000:]}\nserver: {served.output()}"
        )
    assert proc.returncode == 0, "".join(errors)
    return result, events, person


def test_typescript_sdk_client_discovers_registers_authorizes_steps_up_and_refreshes(
    node: dict[str, str], tmp_path: Path
) -> None:
    with serve(tmp_path, config_toml=CONFIG) as served:
        served.add_user(USERNAME, PASSWORD)
        result, events, person = run_client(served, node)

    # Discovery from the MCP URL alone: the 401's resource_metadata, then RFC 8414 metadata, then
    # RFC 7591 registration, in that order, before any token request.
    oauth = result["oauth_requests"]
    assert oauth[:3] == [
        f"GET {served.issuer}/.well-known/oauth-protected-resource/mcp 200",
        f"GET {served.issuer}/.well-known/oauth-authorization-server 200",
        f"POST {served.issuer}/register 201",
    ], oauth

    # One dynamic registration, two authorizations (first
    # access and step-up): the refresh needed no person.
    assert result["registrations"] == 1
    assert result["authorizations"] == 2
    grants = result["token_grants"]
    assert grants.count("authorization_code:200") == 2, grants
    assert grants[-1] == "refresh_token:200", grants
    assert all(g.endswith(":200") for g in grants), grants

    # The first grant: the resource's default scopes, a JWT for exactly this resource (RFC 8707).
    claims = result["first_token_claims"]
    assert claims["aud"] == served.mcp_url
    assert claims["iss"] == served.issuer
    assert set(result["first_token_scope"].split()) == {"tools:list", "tools:call:echo"}
    assert {"echo", "add"} <= set(result["tools"])
    assert result["allowed_tool_text"] == "hello kavach"

    # RS-03: the 403 names the scope to ask for; the SDK asks exactly for it and then succeeds.
    challenge = result["insufficient_scope_challenge"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="tools:call:add"' in challenge
    assert "resource_metadata=" in challenge
    assert "tools:call:add" in result["step_up_authorization_scope"].split()
    assert "tools:call:add" in result["step_up_token_scope"].split()
    assert float(result["step_up_tool_text"]) == 5

    # RS-02 then TK-07: the expired token is refused with invalid_token, the refresh works.
    assert 'error="invalid_token"' in result["expired_token_challenge"]
    assert float(result["after_refresh_text"]) == 42

    # The person signed in and approved at each of the two authorizations: under this http issuer
    # (kavach serve's default) a sign-in is good for one authorization only, its session ending
    # with the redirect back to the client, so the step-up asks for the password again. (Under
    # https the session would be reused and the second authorization would show the consent page
    # alone.)
    paths = [urlsplit(page).path for page in person.pages]
    assert paths == ["/authorize", "/authorize/consent"] * 2, person.pages
    landed = [e for e in events if e.startswith("(person landed on")]
    assert len(landed) == 2


def test_typescript_client_uses_the_sdk_api_it_imports(node: dict[str, str]) -> None:
    """The client type-checks against the installed SDK's declarations (its real API)."""
    proc = subprocess.run(
        [node_env.node(), str(node_env.MODULES / "typescript" / "bin" / "tsc"), "-p", str(node_env.PROJECT)],
        cwd=node_env.PROJECT,
        env=node,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
