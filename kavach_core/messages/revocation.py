"""Token revocation requests (RFC 7009 §2.1), parsed.

A POST with an ``application/x-www-form-urlencoded`` body carrying ``token`` and, optionally,
``token_type_hint``; the client authenticates as at the token endpoint (RFC 7009 §2.1,
RFC 6749 §2.3).
"""

from __future__ import annotations

import attrs

from ..credentials import ClientCredentials, client_credentials
from ..errors import OAuthError
from ..http import HttpRequest
from ..params import Params, form_params

TOKEN_TYPE_HINTS = ("access_token", "refresh_token")
"""The hints RFC 7009 §2.1 defines; any other value is kept but only ever used as a hint."""


@attrs.frozen
class RevocationRequest:
    """``token`` to revoke, the caller's ``token_type_hint`` and its client credentials."""

    token: str
    token_type_hint: str | None
    credentials: ClientCredentials | None = attrs.field(repr=False)


def form(req: HttpRequest) -> Params:
    """The form body of a POST (RFC 7009 §2.1, RFC 7662 §2.1); other methods are 405."""
    if req.method != "POST":
        raise OAuthError("invalid_request", "use POST", status=405)
    return form_params(req)


def parse_credentials(req: HttpRequest, params: Params) -> ClientCredentials | None:
    """The client credentials of the request; malformed ones are ``invalid_client`` (401)."""
    return client_credentials(req, params)


def parse_token(params: Params) -> tuple[str, str | None]:
    """``(token, token_type_hint)``; a missing ``token`` is ``invalid_request``."""
    token = params.get("token")
    hint = params.get("token_type_hint")
    if token is None:
        raise OAuthError("invalid_request", "the token parameter is required")
    return token, hint


def parse(req: HttpRequest) -> RevocationRequest:
    """Parse a revocation request. Raises :class:`OAuthError`."""
    params = form(req)
    credentials = parse_credentials(req, params)
    token, hint = parse_token(params)
    return RevocationRequest(token, hint, credentials)
