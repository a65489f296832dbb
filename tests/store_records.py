"""Records the store tests put and read back: one authorization code and one grant family, each
overridable field by field, at a fixed time ``T0``."""

from __future__ import annotations

from typing import Any

from kavach_core.records import AuthorizationCode, Grant

T0 = 1_700_000_000
DAY = 86_400


def code(code_hash: str = "h1", grant_id: str = "g1", **fields: Any) -> AuthorizationCode:
    """A live code of ``alice`` for client ``c1``, issued at ``T0`` for a minute."""
    values: dict[str, Any] = {
        "code_hash": code_hash,
        "client_id": "c1",
        "redirect_uri": "https://app.example/cb",
        "redirect_uri_given": False,
        "code_challenge": "challenge",
        "resources": ("https://mcp.example.com/mcp",),
        "scopes": ("tools:list",),
        "subject": "alice",
        "grant_id": grant_id,
        "issued_at": T0,
        "expires_at": T0 + 60,
    }
    values.update(fields)
    return AuthorizationCode(**values)


def grant(grant_id: str = "g1", **fields: Any) -> Grant:
    """A live family of ``alice`` for client ``c1`` at refresh generation 0 (hash ``r0``), made at
    ``T0`` for 90 days, its refresh token idle for at most 14."""
    values: dict[str, Any] = {
        "grant_id": grant_id,
        "subject": "alice",
        "client_id": "c1",
        "resources": ("https://mcp.example.com/mcp",),
        "scopes": ("tools:list", "tools:call"),
        "created_at": T0,
        "expires_at": T0 + 90 * DAY,
        "refresh_generation": 0,
        "refresh_hash": "r0",
        "refresh_expires_at": T0 + 14 * DAY,
        "rotated_at": T0,
    }
    values.update(fields)
    return Grant(**values)
