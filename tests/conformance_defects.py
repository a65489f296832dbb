"""``kavach`` with one defect injected, for the conformance kit's teeth (tests/test_conformance_kit.py).

    python tests/conformance_defects.py DEFECT serve --port P --db FILE

Applies the defect named DEFECT to the protocol core (a monkeypatch in this process only), adds a
second protected resource ``<issuer>/other-mcp`` to the configuration (so a token minted for
another resource exists, RS-04), then runs the ordinary ``kavach`` command line. ``none`` injects
nothing: the baseline the defects are compared with.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Generator
from typing import Any

import attrs

from kavach_core import effects as fx
from kavach_core import pkce
from kavach_core.config import ProtectedResource
from kavach_core.endpoints import authorize, token
from kavach_core.opaque import parse_refresh_token

OTHER_PATH = "/other-mcp"


def _other_resource() -> None:
    from kavach import instance

    original = instance.build_config

    def build_config(settings: Any, secret: bytes) -> Any:
        config = original(settings, secret)
        first = config.resources[0]
        other = ProtectedResource(config.issuer + OTHER_PATH, scopes=first.scopes, name="Other MCP server")
        return attrs.evolve(config, resources=(*config.resources, other))

    instance.build_config = build_config


def pkce_unchecked() -> None:
    """Any code_verifier matches any code_challenge (TK-03)."""
    pkce.verify = lambda verifier, challenge: True


def redirect_prefix() -> None:
    """A requested redirect URI matches any registered URI it starts with (AZ-03)."""
    authorize.find_match = lambda requested, registered: next((r for r in registered if requested.startswith(r)), None)


def refresh_not_rotated() -> None:
    """A refresh answers with the same refresh token and writes nothing (TK-07)."""

    def _refresh(ctx: Any, client: Any, msg: Any) -> Generator[Any, Any, Any]:
        from kavach_core.errors import OAuthError

        parsed = parse_refresh_token(ctx.config.secret, msg.refresh_token or "")
        if parsed is None:
            raise OAuthError("invalid_grant", "bad refresh token")
        grant = yield fx.GetGrant(parsed[0])
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "bad refresh token")
        resource = token._one_resource(ctx, msg.resources, grant.resources)
        return (yield from token._issue(ctx, client, grant, resource, grant.scopes, msg.refresh_token))

    token._refresh = _refresh


def code_reusable() -> None:
    """A code can be redeemed again and again (TK-04)."""
    original = token._authorization_code

    def _authorization_code(ctx: Any, client: Any, msg: Any) -> Generator[Any, Any, Any]:
        flow = original(ctx, client, msg)
        value: Any = None
        try:
            while True:
                effect = flow.send(value)
                value = yield effect
                if isinstance(effect, fx.GetCode) and value is not None:
                    value = attrs.evolve(value, consumed=False)
                elif isinstance(effect, fx.ConsumeCode):
                    value = True
        except StopIteration as stop:
            return stop.value

    token._authorization_code = _authorization_code


def wrong_audience() -> None:
    """Access tokens are minted with the issuer as their audience, not the resource (TK-06)."""
    original = token.mint

    def mint(ctx: Any, pair: Any, **kwargs: Any) -> Any:
        kwargs["resource"] = ctx.config.issuer + "/not-the-resource"
        return original(ctx, pair, **kwargs)

    token.mint = mint


def audience_ignored() -> None:
    """The resource server accepts a token whatever its audience (RS-04)."""
    from kavach_core import guard

    original: Callable[..., Any] = guard.verify

    def verify(tok: str, keys: Any, **kwargs: Any) -> Any:
        try:
            payload = tok.split(".")[1]
            aud = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("aud")
            if isinstance(aud, str):
                kwargs["resource"] = aud
        except (IndexError, ValueError):
            pass
        return original(tok, keys, **kwargs)

    guard.verify = verify


def iss_missing() -> None:
    """Authorization responses lack the RFC 9207 ``iss`` parameter (AZ-08)."""
    original = authorize.add_query
    authorize.add_query = lambda uri, params: original(uri, [(k, v) for k, v in params if k != "iss"])


def auth_bypass() -> None:
    """A confidential client sending only its client_id (no secret) is authenticated (TK-02)."""
    from kavach_core.clients import lookup

    original = token.authenticate

    def authenticate(ctx: Any, creds: Any, requester: Any = None) -> Generator[Any, Any, Any]:
        if creds is not None and creds.method == "none":
            client = yield from lookup(ctx, creds.client_id, requester)
            if client is not None:
                return client  # whatever method it registered
        return (yield from original(ctx, creds, requester))

    token.authenticate = authenticate


def redirect_nocase() -> None:
    """Redirect URIs compared case-insensitively: ``/CALLBACK`` matches ``/callback`` (AZ-03)."""
    original = authorize.find_match
    authorize.find_match = lambda requested, registered: original(requested.lower(), [r.lower() for r in registered])


DEFECTS: dict[str, Callable[[], None]] = {
    "none": lambda: None,
    "pkce_unchecked": pkce_unchecked,
    "redirect_prefix": redirect_prefix,
    "refresh_not_rotated": refresh_not_rotated,
    "code_reusable": code_reusable,
    "wrong_audience": wrong_audience,
    "audience_ignored": audience_ignored,
    "iss_missing": iss_missing,
    "auth_bypass": auth_bypass,
    "redirect_nocase": redirect_nocase,
}


def main(argv: list[str]) -> int:
    defect, *rest = argv
    _other_resource()
    DEFECTS[defect]()
    from kavach.cli import main as kavach_main

    return kavach_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
