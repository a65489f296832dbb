"""Token introspection requests (RFC 7662 §2.1), parsed.

A POST with an ``application/x-www-form-urlencoded`` body carrying ``token`` and, optionally,
``token_type_hint``; the caller authenticates as a client (RFC 7662 §2.1).
"""

from __future__ import annotations

import attrs

from ..credentials import ClientCredentials
from ..http import HttpRequest
from .revocation import form, parse_credentials, parse_token


@attrs.frozen
class IntrospectionRequest:
    """``token`` to describe, the caller's ``token_type_hint`` and its client credentials."""

    token: str
    token_type_hint: str | None
    credentials: ClientCredentials | None = attrs.field(repr=False)


def parse(req: HttpRequest) -> IntrospectionRequest:
    """Parse an introspection request. Raises :class:`~kavach_core.errors.OAuthError`."""
    params = form(req)
    credentials = parse_credentials(req, params)
    token, hint = parse_token(params)
    return IntrospectionRequest(token, hint, credentials)
