"""Dynamic client registration (RFC 7591; RG-01, RG-02, RG-03).

Policy (``config.registration``, RG-03):

- ``open``: anyone may register. ``token``: the request must carry an initial access token as
  a Bearer token (RFC 7591 §3, RFC 6750 §2.1) whose SHA-256 digest is one of
  ``initial_access_token_hashes``; otherwise 401 with ``WWW-Authenticate: Bearer`` (400
  ``invalid_request`` for a repeated ``Authorization`` header, RFC 6750 §3.1, as the guard answers).
  ``closed``: the endpoint does not exist (404 ``not_found``, and the metadata omits
  ``registration_endpoint``), so a closed server looks exactly like one without the feature.
- Rate limit: ``rate_limit`` successful-looking registrations per ``rate_window`` per client
  address (the ``X-Kavach-Client-Address`` header, which adapters set from the socket peer and
  strip from incoming requests; without it every caller shares one bucket). Over the limit:
  429 with ``Retry-After`` and ``{"error": "temporarily_unavailable"}`` (RFC 6585 §4; the
  error code is RFC 6749's for "temporarily unable to handle the request"). The counter is
  only touched once the request is valid, so malformed requests write nothing at all.

Metadata rules (RFC 7591 §2, §3.2.2), in :mod:`kavach_core.client_metadata` (shared with
client ID metadata documents):

- ``redirect_uris`` required (the only grant is ``authorization_code``), each accepted by
  :func:`kavach_core.redirect_uris.registration_problem`, and, when ``allowed_redirect_hosts`` is
  set, on a listed host (exact, case-insensitive) or a loopback host (an IP literal of
  127.0.0.0/8 or ``::1``, or ``localhost``); only http and https URIs name a web host, so a
  private-use scheme is then refused, even written with an authority. Problems are ``invalid_redirect_uri``.
- ``client_uri``, ``logo_uri``, ``tos_uri``, ``policy_uri``: absolute https URLs with a host and
  no user information; stored and echoed, never fetched (RG-01).
- ``token_endpoint_auth_method`` in ``none``, ``client_secret_basic``, ``client_secret_post``.
  Omitted means ``client_secret_basic``, the RFC 7591 §2 default: a client that wants to be
  public (every MCP client that runs on a user's device should) says ``none``, and a client that
  says nothing gets a secret it must present, which fails safe.
- ``grant_types`` within ``authorization_code``, ``refresh_token`` and including
  ``authorization_code``; omitted means both (RFC 7591 §3.2.1 lets the server substitute values:
  MCP clients rely on refresh tokens, and the response states what was registered).
  ``response_types`` exactly ``["code"]`` (omitted: ``["code"]``). ``implicit``, ``password``,
  ``client_credentials`` and ``token`` are ``invalid_client_metadata``.
- ``scope``: well-formed scope tokens, each covered by a scope some resource publishes.
- Unknown members are ignored and not echoed.

The 201 response (RFC 7591 §3.2.1) is the full client record with ``client_id`` (128 random
bits), ``client_id_issued_at`` and, for a confidential client, ``client_secret`` (256 bits,
stored only as a digest) and ``client_secret_expires_at`` (0: never). ``Cache-Control:
no-store``. Registration management (RFC 7592) is not offered.
"""

from __future__ import annotations

from typing import Any

from .. import effects as fx
from ..client_metadata import accept
from ..clients import count_registration
from ..context import Context
from ..credentials import REPEATED_AUTHORIZATION_DESCRIPTION
from ..drivers import Flow
from ..errors import MISSING_TOKEN_ERROR, OAuthError
from ..http import HttpRequest, Response, client_address, error_response, json_response
from ..messages.registration import RegistrationRequest, initial_access_token, parse
from ..opaque import digest, new_client_id, new_secret, same
from ..records import Client

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
DEFAULT_AUTH_METHOD = "client_secret_basic"
BEARER_CHALLENGE = "Bearer"


def _missing_token() -> OAuthError:
    """No initial access token: RFC 6750 §3.1 gives the challenge no error code, so the body uses
    the word the resource guard uses for the same case, not ``invalid_token``."""
    return OAuthError(MISSING_TOKEN_ERROR, "an initial access token is required", status=401)


def _bad_token() -> OAuthError:
    return OAuthError("invalid_token", "the initial access token is not valid", status=401)


def _bearer_challenge(err: OAuthError) -> tuple[tuple[str, str], ...]:
    """RFC 6750 §3: a missing token gets a bare challenge, a bad one ``error="invalid_token"``
    and a repeated ``Authorization`` header ``error="invalid_request"`` (§3.1), as the guard's."""
    missing = _missing_token()
    if (err.error, err.description, err.status) == (missing.error, missing.description, missing.status):
        return (("WWW-Authenticate", BEARER_CHALLENGE),)
    if err.status == 401:
        return (("WWW-Authenticate", f'{BEARER_CHALLENGE} error="invalid_token"'),)
    if (err.error, err.description) == ("invalid_request", REPEATED_AUTHORIZATION_DESCRIPTION):
        return (("WWW-Authenticate", f'{BEARER_CHALLENGE} error="invalid_request"'),)
    return ()


def check_initial_access_token(ctx: Context, req: HttpRequest) -> None:
    """RFC 7591 §3: in ``token`` mode the Bearer token's digest must be a configured one.

    Every configured digest is compared, in constant time, whatever the outcome (GN-02).
    """
    policy = ctx.config.registration
    if policy.mode != "token":
        return
    token = initial_access_token(req)
    if token is None:
        raise _missing_token()
    presented = digest(token)
    ok = False
    for accepted in policy.initial_access_token_hashes:
        ok = same(presented, accepted.strip().lower()) or ok
    if not ok:
        raise _bad_token()


def build_client(ctx: Context, msg: RegistrationRequest) -> tuple[Client, dict[str, Any]]:
    """Validate ``msg`` and make the client record and the response body (which alone holds
    the plain secret of a confidential client).

    The metadata rules are :func:`kavach_core.client_metadata.accept`, shared with client ID
    metadata documents. Raises ``invalid_redirect_uri`` or ``invalid_client_metadata``
    (RFC 7591 §3.2.2). Reads nothing and writes nothing.
    """
    accepted = accept(ctx, msg, auth_methods=AUTH_METHODS, default_auth_method=DEFAULT_AUTH_METHOD)
    method = accepted.token_endpoint_auth_method
    client_id = new_client_id(ctx)
    secret: str | None = None
    secret_expires_at = 0
    if method != "none":
        secret = new_secret(ctx)
        lifetime = ctx.config.lifetimes.client_secret
        secret_expires_at = ctx.now + lifetime if lifetime else 0
    client = accepted.client(
        client_id,
        kind="dynamic",
        issued_at=ctx.now,
        secret_hash=digest(secret) if secret is not None else None,
        secret_expires_at=secret_expires_at,
    )
    body: dict[str, Any] = {"client_id": client_id, "client_id_issued_at": ctx.now}
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = secret_expires_at
    body.update(accepted.meta)
    return client, body


def _rate_limited(ctx: Context, req: HttpRequest) -> Flow[Response | None]:
    """RG-03: one registration counted against the caller (:func:`~kavach_core.clients.count_registration`);
    a 429 answer when over the limit."""
    if (yield from count_registration(ctx, client_address(req))):
        return None
    policy = ctx.config.registration
    retry_after = (ctx.now // policy.rate_window + 1) * policy.rate_window - ctx.now
    err = OAuthError("temporarily_unavailable", "too many registrations; try again later", status=429)
    return error_response(err, headers=(("Retry-After", str(max(retry_after, 1))),))


def register(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """Register a client (RFC 7591 §3): policy, validation, rate limit, then one ``PutClient``."""
    if ctx.config.registration.mode == "closed":
        return json_response(404, {"error": "not_found"})
    try:
        check_initial_access_token(ctx, req)
        msg = parse(req)
        client, body = build_client(ctx, msg)
    except OAuthError as err:
        return error_response(err, headers=_bearer_challenge(err))
    limited = yield from _rate_limited(ctx, req)
    if limited is not None:
        return limited
    yield fx.PutClient(client)
    return json_response(201, body, no_store=True)


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """``POST`` registration endpoint (RFC 7591 §3.1)."""
    return (yield from register(ctx, req))
