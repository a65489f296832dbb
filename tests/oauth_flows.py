"""Helpers for driving the authorization and token endpoints in tests.

Shared by test_authorize.py, test_token.py, test_properties.py, test_effect_traces.py and
test_state_machine.py. Everything goes through the Harness of conftest.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from conftest import RESOURCE, Harness, s256

from kavach_core import effects as fx
from kavach_core.endpoints import authorize, token
from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.opaque import digest
from kavach_core.records import Client

VERIFIER = "verifier-" + "x" * 40 + "~._-" + "A" * 10
CHALLENGE = s256(VERIFIER)
REDIRECT = "https://app.example.com/callback"
LOOPBACK = "http://127.0.0.1/cb"
STATE = "st-123"

AZ10_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def add_client(
    h: Harness,
    client_id: str = "c1",
    redirect_uris: tuple[str, ...] = (REDIRECT,),
    *,
    secret: str | None = None,
    method: str | None = None,
    **kwargs: Any,
) -> Client:
    """Put a client straight into the store, as an operator does (``kind`` static unless given:
    its errors are redirected at once); a ``secret`` makes it confidential."""
    kwargs.setdefault("kind", "static")
    if method is None:
        method = "client_secret_basic" if secret is not None else "none"
    client = Client(
        client_id,
        redirect_uris,
        token_endpoint_auth_method=method,
        secret_hash=digest(secret) if secret is not None else None,
        **kwargs,
    )
    h.store.perform(fx.PutClient(client))
    return client


def az_query(**overrides: str | None) -> dict[str, str]:
    """A valid authorization request for client ``c1``; ``None`` drops a parameter."""
    params: dict[str, str | None] = {
        "client_id": "c1",
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "state": STATE,
        "resource": RESOURCE,
        "scope": "tools:list tools:call",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def az_request(h: Harness, params: Any = None, method: str = "GET", **overrides: str | None) -> Any:
    """Send an authorization request (GET query or POST form) and return the outcome."""
    pairs = params if params is not None else az_query(**overrides)
    if method == "GET":
        req = h.request("GET", "/authorize", query=pairs)
    else:
        req = h.request(method, "/authorize", form=pairs)
    return h.run(authorize.handle(h.ctx(), req))


def consent(h: Harness, **overrides: str | None) -> ConsentRequired:
    out = az_request(h, **overrides)
    assert isinstance(out, ConsentRequired), out
    return out


def location_params(resp: Response) -> dict[str, str]:
    """The query parameters of a redirect's Location (each must appear once)."""
    assert resp.status == 303, (resp.status, resp.body)
    location = resp.header("location")
    assert location is not None
    pairs = parse_qsl(urlsplit(location).query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), f"parameter repeated in {location}"
    return dict(pairs)


def location_base(resp: Response) -> str:
    location = resp.header("location")
    assert location is not None
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def get_code(h: Harness, subject: str = "alice", scopes: tuple[str, ...] | None = None, **overrides: str | None) -> str:
    """Authorize and approve; return the code."""
    ticket = consent(h, **overrides).ticket
    resp = h.run(authorize.approve(h.ctx(), ticket, subject, scopes))
    return location_params(resp)["code"]


def token_request(h: Harness, form: Any, headers: Any = ()) -> Response:
    req = h.request("POST", "/token", form=form, headers=headers)
    return h.run(token.handle(h.ctx(), req))


def code_form(code: str, /, **overrides: str | None) -> dict[str, str]:
    """The token request redeeming ``code`` for client ``c1`` (PKCE); ``None`` drops a parameter."""
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": VERIFIER,
        "client_id": "c1",
        "redirect_uri": REDIRECT,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def redeem(h: Harness, code: str, /, headers: Any = (), **overrides: str | None) -> Response:
    return token_request(h, code_form(code, **overrides), headers)


def refresh(h: Harness, refresh_token: str, /, headers: Any = (), **overrides: str | None) -> Response:
    form: dict[str, str | None] = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "c1"}
    form.update(overrides)
    return token_request(h, {k: v for k, v in form.items() if v is not None}, headers)


def tokens(h: Harness, **overrides: str | None) -> dict[str, Any]:
    """A full authorization code flow for ``c1``; the token response body."""
    code = get_code(h, **overrides)
    resp = redeem(h, code)
    assert resp.status == 200, resp.body
    body: dict[str, Any] = resp.json()
    return body


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_parts(tok: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWS (not verified)."""
    head, payload, _sig = tok.split(".")
    return json.loads(b64decode(head)), json.loads(b64decode(payload))


def is_revoked(h: Harness, access_token: str) -> bool:
    _, claims = jwt_parts(access_token)
    return bool(h.store.perform(fx.IsTokenRevoked(claims["jti"], claims["gid"])))


def snapshot(h: Harness) -> dict[str, Any]:
    """Every dict of the memory store, copied, to compare before and after a request."""
    s = h.store
    return {
        "clients": dict(s.clients),
        "pending": dict(s.pending),
        "codes": dict(s.codes),
        "grants": dict(s.grants),
        "revoked_jtis": dict(s.revoked_jtis),
        "keys": s.keys,
        "hits": dict(s.hits),
    }


def writes(effects: list[fx.Effect]) -> list[fx.Effect]:
    return [e for e in effects if e.writes]
