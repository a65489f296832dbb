"""What a public OAuth client and its person do over HTTP against a served kavach.

Register (RFC 7591, ``token_endpoint_auth_method`` ``none``), authorize with PKCE S256 (RFC 7636)
as a person signing in and approving, redeem the code and refresh (RFC 6749 §4.1.3, §6, with the
RFC 8707 ``resource``), then call the guarded MCP endpoint. Shared by test_cli.py and
test_serve_stores.py (``kavach serve`` processes) and test_adapters_e2e.py (:func:`pkce`).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from mcp_messages import INITIALIZE, MCP_HEADERS
from person import Person

PASSWORD = "a long enough password"
"""A password the served instance accepts (longer than its minimum)."""
REDIRECT_URI = "http://127.0.0.1:45998/callback"
"""The client's loopback redirect URI; nothing listens there: the person stops at the redirect."""
SCOPE = "tools:list tools:call"
TIMEOUT = 30
"""Seconds any one request may take (a store behind a slowed proxy answers late, never this late)."""


def pkce() -> tuple[str, str]:
    """A fresh code verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(issuer: str) -> str:
    """Register a public client at ``issuer``: its client_id."""
    answer = httpx.post(
        f"{issuer}/register",
        timeout=TIMEOUT,
        json={"client_name": "test client", "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none"},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["client_id"])


def authorization(issuer: str, resource: str) -> tuple[str, str, str]:
    """Register a public client at ``issuer``: its client_id, a PKCE verifier, and the
    authorization URL a person opens."""
    client_id = register(issuer)
    verifier, challenge = pkce()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
            "scope": SCOPE,
        }
    )
    return client_id, verifier, f"{issuer}/authorize?{query}"


def obtain_code(issuer: str, resource: str, username: str = "alice") -> dict[str, str]:
    """Register a public client at ``issuer`` and authorize as ``username``: the code, not yet
    redeemed, with the client_id and PKCE verifier that redeem it."""
    client_id, verifier, url = authorization(issuer, resource)
    with Person(username, PASSWORD) as person:
        final = person.authorize(url)
    params = {k: v[0] for k, v in parse_qs(urlsplit(final).query).items()}
    assert "code" in params, final
    return {"code": params["code"], "client_id": client_id, "verifier": verifier}


def token_request(issuer: str, **form: str) -> httpx.Response:
    """The token endpoint's answer to ``form`` (RFC 6749 §3.2: form-encoded, POST)."""
    return httpx.post(f"{issuer}/token", timeout=TIMEOUT, data=form)


def redeem(issuer: str, resource: str, issued: dict[str, str]) -> httpx.Response:
    """The token endpoint's answer to the code :func:`obtain_code` gave."""
    return token_request(
        issuer,
        grant_type="authorization_code",
        code=issued["code"],
        redirect_uri=REDIRECT_URI,
        client_id=issued["client_id"],
        code_verifier=issued["verifier"],
        resource=resource,
    )


def obtain_tokens(issuer: str, resource: str, username: str = "alice") -> dict[str, Any]:
    """Register a public client at ``issuer``, authorize as ``username`` and redeem the code: the
    token response, with the ``client_id`` that refreshes it."""
    issued = obtain_code(issuer, resource, username)
    answer = redeem(issuer, resource, issued)
    assert answer.status_code == 200, answer.text
    return {**answer.json(), "client_id": issued["client_id"]}


def refresh(issuer: str, tokens: dict[str, Any], resource: str) -> httpx.Response:
    """The token endpoint's answer to ``tokens``' refresh token (a public client: its client_id)."""
    return token_request(
        issuer,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
        client_id=tokens["client_id"],
        resource=resource,
    )


def call_mcp(mcp_url: str, access_token: str) -> httpx.Response:
    """MCP ``initialize`` at ``mcp_url`` with ``access_token`` as the bearer token."""
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {access_token}"}
    return httpx.post(mcp_url, timeout=TIMEOUT, headers=headers, json=INITIALIZE)
