"""Token requests (RFC 6749 §4.1.3, §6; RFC 7636 §4.5; RFC 8707 §2.2)."""

from __future__ import annotations

import attrs

from ..credentials import ClientCredentials, client_credentials
from ..errors import OAuthError
from ..http import HttpRequest
from ..params import form_params


@attrs.frozen
class TokenRequest:
    """A parsed token request; which fields matter depends on ``grant_type``."""

    grant_type: str
    credentials: ClientCredentials | None
    code: str | None = None
    redirect_uri: str | None = None
    code_verifier: str | None = None
    refresh_token: str | None = None
    scope: str | None = None
    resources: tuple[str, ...] = ()


def parse(req: HttpRequest) -> TokenRequest:
    """POST with a form body only (TK-01); a repeated parameter is ``invalid_request``."""
    if req.method != "POST":
        raise OAuthError("invalid_request", "the token endpoint accepts POST only", status=405)
    params = form_params(req)
    creds = client_credentials(req, params)
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise OAuthError("invalid_request", "grant_type is required")
    return TokenRequest(
        grant_type=grant_type,
        credentials=creds,
        code=params.get("code"),
        redirect_uri=params.get("redirect_uri"),
        code_verifier=params.get("code_verifier"),
        refresh_token=params.get("refresh_token"),
        scope=params.get("scope"),
        resources=params.get_all("resource"),
    )
