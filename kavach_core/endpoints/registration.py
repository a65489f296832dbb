"""Dynamic client registration (RFC 7591; RG-01, RG-02, RG-03).

Policy (``config.registration``, RG-03):

- ``open``: anyone may register. ``token``: the request must carry an initial access token as
  a Bearer token (RFC 7591 §3, RFC 6750 §2.1) whose SHA-256 digest is one of
  ``initial_access_token_hashes``; otherwise 401 with ``WWW-Authenticate: Bearer``.
  ``closed``: the endpoint does not exist (404 ``not_found``, and the metadata omits
  ``registration_endpoint``), so a closed server looks exactly like one without the feature.
- Rate limit: ``rate_limit`` successful-looking registrations per ``rate_window`` per client
  address (the ``X-Kavach-Client-Address`` header, which adapters set from the socket peer and
  strip from incoming requests; without it every caller shares one bucket). Over the limit:
  429 with ``Retry-After`` and ``{"error": "temporarily_unavailable"}`` (RFC 6585 §4; the
  error code is RFC 6749's for "temporarily unable to handle the request"). The counter is
  only touched once the request is valid, so malformed requests write nothing at all.

Metadata rules (RFC 7591 §2, §3.2.2):

- ``redirect_uris`` required (the only grant is ``authorization_code``), each accepted by
  :func:`kavach_core.redirect_uris.registration_problem`, and, when ``allowed_redirect_hosts`` is
  set, on a listed host (exact, case-insensitive) or a loopback host; a private-use scheme has
  no host and is then refused. Problems are ``invalid_redirect_uri``.
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

import json
from typing import Any
from urllib.parse import urlsplit

from .. import effects as fx
from ..config import is_loopback_host
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import HttpRequest, Response, error_response, json_response
from ..messages.registration import (
    RegistrationRequest,
    client_address,
    initial_access_token,
    parse,
)
from ..opaque import digest, new_id, new_secret, same
from ..records import Client
from ..redirect_uris import registration_problem
from ..scopes import format_scope, parse_scope, uncovered

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
DEFAULT_AUTH_METHOD = "client_secret_basic"
GRANT_TYPES = ("authorization_code", "refresh_token")
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token")
RESPONSE_TYPES = ("code",)
BEARER_CHALLENGE = "Bearer"


def _invalid(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def _missing_token() -> OAuthError:
    return OAuthError("invalid_token", "an initial access token is required", status=401)


def _bad_token() -> OAuthError:
    return OAuthError("invalid_token", "the initial access token is not valid", status=401)


def _bearer_challenge(err: OAuthError) -> tuple[tuple[str, str], ...]:
    """RFC 6750 §3: a missing token gets a bare challenge, a bad one ``error="invalid_token"``."""
    missing = _missing_token()
    if (err.error, err.description, err.status) == (missing.error, missing.description, missing.status):
        return (("WWW-Authenticate", BEARER_CHALLENGE),)
    if err.status == 401:
        return (("WWW-Authenticate", f'{BEARER_CHALLENGE} error="invalid_token"'),)
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


def _https_uri(name: str, value: str) -> str:
    """RG-01: ``client_uri``-like members are absolute https URLs (never fetched)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise _invalid(f"{name} must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise _invalid(f"{name} is not a valid URL") from exc
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise _invalid(f"{name} must be an absolute https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _invalid(f"{name} must not carry user information")
    return value


def _redirect_host_allowed(uri: str, allowed: tuple[str, ...]) -> bool:
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    if not host:
        return False
    return is_loopback_host(host) or host in allowed


def check_redirect_uris(ctx: Context, uris: tuple[str, ...] | None) -> tuple[str, ...]:
    """RG-01, RG-03: every redirect URI registrable and, with an allowlist, on an allowed host."""
    if not uris:
        raise OAuthError("invalid_redirect_uri", "redirect_uris is required")
    allowed = ctx.config.registration.allowed_redirect_hosts
    for uri in uris:
        problem = registration_problem(uri)
        if problem is not None:
            raise OAuthError("invalid_redirect_uri", problem)
        if allowed is not None and not _redirect_host_allowed(uri, allowed):
            raise OAuthError("invalid_redirect_uri", "a redirect URI's host is not allowed on this server")
    return uris


def check_grant_types(grant_types: tuple[str, ...] | None, response_types: tuple[str, ...] | None) -> tuple[
    tuple[str, ...], tuple[str, ...]
]:
    """RG-02, RFC 7591 §2.1: only the code flow (with refresh), and the two lists agree."""
    grants = DEFAULT_GRANT_TYPES if grant_types is None else grant_types
    responses = RESPONSE_TYPES if response_types is None else response_types
    for grant in grants:
        if grant not in GRANT_TYPES:
            raise _invalid(f"grant type {grant} is not supported; use authorization_code and refresh_token")
    if "authorization_code" not in grants:
        raise _invalid("grant_types must include authorization_code")
    for response in responses:
        if response not in RESPONSE_TYPES:
            raise _invalid(f"response type {response} is not supported; use code")
    if "code" not in responses:
        raise _invalid("response_types must be [\"code\"] for the authorization_code grant")
    return grants, responses


def check_scope(ctx: Context, scope: str | None) -> tuple[str, ...] | None:
    """The scopes the client may ask for: well-formed and within some resource's catalogue."""
    try:
        scopes = parse_scope(scope)
    except OAuthError as exc:
        raise _invalid("scope is malformed") from exc
    if scopes is None:
        return None
    if uncovered(scopes, ctx.config.scopes_supported):
        raise _invalid("scope names a scope this server does not offer")
    return scopes


def build_client(ctx: Context, msg: RegistrationRequest) -> tuple[Client, dict[str, Any]]:
    """Validate ``msg`` and make the client record and the response body (which alone holds
    the plain secret of a confidential client).

    Raises ``invalid_redirect_uri`` or ``invalid_client_metadata`` (RFC 7591 §3.2.2).
    Reads nothing and writes nothing.
    """
    redirect_uris = check_redirect_uris(ctx, msg.redirect_uris)
    method = msg.token_endpoint_auth_method or DEFAULT_AUTH_METHOD
    if method not in AUTH_METHODS:
        raise _invalid(f"token_endpoint_auth_method {method} is not supported")
    grants, responses = check_grant_types(msg.grant_types, msg.response_types)
    scopes = check_scope(ctx, msg.scope)
    meta: dict[str, Any] = {
        "redirect_uris": list(redirect_uris),
        "token_endpoint_auth_method": method,
        "grant_types": list(grants),
        "response_types": list(responses),
    }
    if msg.client_name is not None:
        meta["client_name"] = msg.client_name
    for name in ("client_uri", "logo_uri", "tos_uri", "policy_uri"):
        value = getattr(msg, name)
        if value is not None:
            meta[name] = _https_uri(name, value)
    if msg.contacts:
        if any(not c.strip() for c in msg.contacts):
            raise _invalid("contacts must not hold empty entries")
        meta["contacts"] = list(msg.contacts)
    if scopes is not None:
        meta["scope"] = format_scope(scopes)
    if msg.software_id is not None:
        meta["software_id"] = msg.software_id
    if msg.software_version is not None:
        meta["software_version"] = msg.software_version

    client_id = new_id(ctx)
    secret: str | None = None
    secret_expires_at = 0
    if method != "none":
        secret = new_secret(ctx)
        lifetime = ctx.config.lifetimes.client_secret
        secret_expires_at = ctx.now + lifetime if lifetime else 0
    client = Client(
        client_id=client_id,
        redirect_uris=redirect_uris,
        token_endpoint_auth_method=method,
        secret_hash=digest(secret) if secret is not None else None,
        grant_types=grants,
        response_types=responses,
        client_name=msg.client_name or "",
        scope=scopes,
        kind="dynamic",
        issued_at=ctx.now,
        secret_expires_at=secret_expires_at,
        metadata=json.dumps(meta, separators=(",", ":")),
    )
    body: dict[str, Any] = {"client_id": client_id, "client_id_issued_at": ctx.now}
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = secret_expires_at
    body.update(meta)
    return client, body


def _rate_limited(ctx: Context, req: HttpRequest) -> Flow[Response | None]:
    """RG-03: one ``Hit`` in the caller's bucket; a 429 answer when over the limit."""
    policy = ctx.config.registration
    if policy.rate_limit == 0:
        return None
    address = client_address(req)
    bucket = f"register:{address}" if address is not None else "register:*"
    allowed = yield fx.Hit(bucket, policy.rate_limit, policy.rate_window, ctx.now)
    if allowed:
        return None
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
