"""The MCP scope grammar and the prefix rule.

A scope is ``segment(":" segment)*``; a granted scope covers a required one when its segments
are a prefix of the required one's (``tools:call`` covers ``tools:call:search``).
RFC 6749 §3.3 defines the space-separated list and the scope-token alphabet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import OAuthError

_SEGMENT = r"[A-Za-z0-9_.\-/~+*@!$&'()\[\]]+"
_SCOPE = re.compile(rf"{_SEGMENT}(?::{_SEGMENT})*")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); ours is a subset of it.


def is_valid_scope(scope: str) -> bool:
    """True when ``scope`` is one well-formed MCP scope token."""
    return bool(_SCOPE.fullmatch(scope))


MAX_SCOPE_TOKENS = 256
"""The most different scopes one request may ask for: every requested scope is checked against
every scope it may have (on ``/authorize`` and refresh requests), and a grant keeps them all."""


def parse_scope(value: str | None) -> tuple[str, ...] | None:
    """Split a ``scope`` parameter (RFC 6749 §3.3) into unique tokens in order of first use.

    ``None`` or only spaces means no scope was requested. A malformed token is ``invalid_scope``,
    and so are more than :data:`MAX_SCOPE_TOKENS` different ones.
    """
    if value is None:
        return None
    tokens: dict[str, None] = {}  # ordered, and linear however many tokens are sent
    for token in value.split(" "):
        if token == "":
            continue
        if not is_valid_scope(token):
            raise OAuthError("invalid_scope", "malformed scope")
        tokens[token] = None
    if len(tokens) > MAX_SCOPE_TOKENS:
        raise OAuthError("invalid_scope", f"more than {MAX_SCOPE_TOKENS} different scopes requested")
    return tuple(tokens) if tokens else None


def format_scope(scopes: Iterable[str]) -> str:
    """The space-separated form of a scope set, in a stable order."""
    return " ".join(scopes)


def covers(granted: str, required: str) -> bool:
    """True when ``granted`` is ``required`` or a segment-prefix of it: ``required`` is
    ``granted`` followed by ``:`` and more segments (``tools:call`` covers ``tools:call:search``,
    never ``tools:caller``)."""
    return required == granted or required.startswith(granted + ":")


def any_covers(granted: Iterable[str], required: str) -> bool:
    """True when some scope in ``granted`` covers ``required``."""
    return any(covers(scope, required) for scope in granted)


def within(requested: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes that some allowed scope covers, in request order."""
    allowed_t = tuple(allowed)
    return tuple(s for s in requested if any_covers(allowed_t, s))


def uncovered(requested: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes that no allowed scope covers."""
    allowed_t = tuple(allowed)
    return tuple(s for s in requested if not any_covers(allowed_t, s))
