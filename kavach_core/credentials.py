"""Credentials carried in headers and bodies: HTTP Basic client credentials and Bearer tokens.

RFC 6749 §2.3.1 (client_secret_basic, with form-urlencoding inside Basic), RFC 7617 (Basic),
RFC 6750 §2.1 (Bearer, header only: RS-01).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from urllib.parse import unquote_plus

import attrs

from .errors import OAuthError
from .http import HttpRequest
from .params import Params

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@attrs.frozen
class ClientCredentials:
    """Who the caller says it is, and how it proved it.

    ``method`` is ``none``, ``client_secret_basic`` or ``client_secret_post`` (RFC 7591 §2).
    """

    client_id: str
    secret: str | None = attrs.field(repr=False)
    method: str


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401) from exc
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
    # RFC 6749 §2.3.1: the client identifier and secret are form-urlencoded first.
    client_id, secret = unquote_plus(user, errors="strict"), unquote_plus(password, errors="strict")
    if "\x00" in client_id or "\x00" in secret:  # as in every other parameter (GN-03): no client has one
        raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
    return client_id, secret


def client_credentials(req: HttpRequest, params: Params) -> ClientCredentials | None:
    """The client credentials of a token, revocation or introspection request.

    Using more than one authentication method in a request is ``invalid_request``
    (RFC 6749 §2.3). Returns ``None`` when no client is identified at all.
    """
    authorization = req.header("authorization")
    body_id = params.get("client_id")
    body_secret = params.get("client_secret")
    if authorization is not None and authorization.strip().lower().startswith("basic"):
        if body_secret is not None:
            raise OAuthError("invalid_request", "use one client authentication method")
        try:
            client_id, secret = _basic(authorization)
        except UnicodeDecodeError as exc:
            raise OAuthError("invalid_client", "malformed Basic credentials", status=401) from exc
        if not client_id:
            raise OAuthError("invalid_client", "malformed Basic credentials", status=401)
        if body_id is not None and body_id != client_id:
            raise OAuthError("invalid_request", "client_id does not match the credentials")
        return ClientCredentials(client_id, secret, "client_secret_basic")
    if body_id is None:
        if body_secret is not None:
            raise OAuthError("invalid_request", "client_secret without client_id")
        return None
    if body_secret is not None:
        return ClientCredentials(body_id, body_secret, "client_secret_post")
    return ClientCredentials(body_id, None, "none")


REPEATED_AUTHORIZATION_DESCRIPTION = "Send the access token in one Authorization header"


def repeated_authorization(values: Sequence[str]) -> bool:
    """Whether a request's ``Authorization`` header values repeat a Bearer credential: split at
    commas they make more than one part, and one of them is a Bearer credential (no b64token has
    a comma, RFC 6750 §2.1). So several headers, or one that a server joined from several
    (RFC 9110 §5.3, as WSGI servers do), read alike, in whichever order they came. RFC 6750 §3.1
    makes that ``invalid_request``; values naming no Bearer credential at all (another scheme
    twice, or one whose parameters hold commas) send no access token, which is no such error."""
    if len(values) == 1 and "," not in values[0]:  # the usual request: one credential, no comma
        return False
    parts = [part for value in values for part in value.split(",")]
    return len(parts) > 1 and any(_scheme(part)[0] == "bearer" for part in parts)


def _scheme(value: str) -> tuple[str, str]:
    """An ``Authorization`` value's scheme, lower-cased, and what follows it: one reading for
    every rule here, so what :func:`bearer_credentials` takes for a Bearer credential
    :func:`repeated_authorization` counts as one, whatever whitespace surrounds it."""
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest


def bearer_token(req: HttpRequest) -> str | None:
    """The Bearer token of the ``Authorization`` header (RFC 6750 §2.1), or ``None``.

    Only the header counts (RS-01): ``access_token`` in a query or body is ignored. Raises, as
    RFC 6750 §3.1 names them, ``invalid_request`` (400) for a repeated header
    (:func:`repeated_authorization`) and ``invalid_token`` (401) for a malformed token.
    """
    values = req.header_values("authorization")
    if not values:
        return None
    if repeated_authorization(values):
        raise OAuthError("invalid_request", REPEATED_AUTHORIZATION_DESCRIPTION, status=400)
    return parse_bearer(values[0])


def bearer_credentials(header: str) -> str | None:
    """What follows the ``Bearer`` scheme in one ``Authorization`` value, unchecked; ``None`` for
    another scheme. :func:`is_b64token` says whether it has the RFC 6750 §2.1 syntax."""
    scheme, rest = _scheme(header)
    if scheme != "bearer":
        return None
    return rest.strip()


def is_b64token(token: str) -> bool:
    """RFC 6750 §2.1: ``1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``."""
    return _B64TOKEN.fullmatch(token) is not None


def parse_bearer(header: str) -> str | None:
    """The token of one ``Authorization`` header value; ``None`` for another scheme."""
    token = bearer_credentials(header)
    if token is not None and not is_b64token(token):
        raise OAuthError("invalid_token", "malformed Bearer token", status=401)
    return token
