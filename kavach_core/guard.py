"""The resource-server guard: who is calling this MCP server, and may they do this?

RFC 6750 §2.1 and §3 (Bearer tokens and their challenges), RFC 9068 §4 (validating JWT
access tokens), RFC 8707 (audience = this resource), RFC 9728 §5.1 (``resource_metadata`` in
the challenge) and the MCP authorization spec (2026-07-28; also 2025-11-25 and 2025-06-18):

- RS-01: the token is read from the ``Authorization`` header only; a token in the query string
  or a form body is never looked at.
- RS-02: no token -> 401 with a challenge naming where the resource metadata lives and the
  scopes to ask for; a bad token of any kind -> the same plus ``error="invalid_token"``.
  The description is the same for every reason, so a caller learns nothing about which check
  failed.
- RS-03: a valid token lacking a required scope -> 403 ``insufficient_scope`` naming the scopes
  (step-up authorization); a granted ``tools:call`` covers ``tools:call:search`` (prefix rule).
- RS-04/RS-05: the audience must be this resource once both sides are canonical.

:func:`verify_bearer` is the pure check (no store); :func:`authenticate` adds the key set and
revocation effects. :func:`challenge` builds every challenge response, for adapters too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import effects as fx
from .access_tokens import AccessToken, verify
from .config import Config, ProtectedResource
from .credentials import REPEATED_AUTHORIZATION_DESCRIPTION, bearer_credentials, is_b64token, repeated_authorization
from .drivers import Flow
from .errors import MISSING_TOKEN_ERROR, ConfigurationError, safe_description
from .http import HttpRequest, Response, json_response
from .jose import JoseError, UnknownKid, VerifyingKey
from .keys import KeyRing, KeySet
from .resource_indicators import canonical_resource, metadata_url
from .scopes import any_covers, format_scope
from .verified_cache import VerifiedCache

INVALID_TOKEN_DESCRIPTION = "The access token is invalid, expired or revoked"
MISSING_TOKEN_DESCRIPTION = "A Bearer access token is required"
INSUFFICIENT_SCOPE_DESCRIPTION = "The access token does not grant the scope this request needs"


@attrs.frozen
class Principal:
    """The verified caller: the access token's claims, checked for this resource."""

    token: AccessToken

    @property
    def subject(self) -> str:
        return self.token.subject

    @property
    def client_id(self) -> str:
        return self.token.client_id

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.token.scopes

    def has_scope(self, scope: str) -> bool:
        """True when a granted scope covers ``scope`` (prefix rule)."""
        return any_covers(self.token.scopes, scope)


def _quoted(value: str) -> str:
    """An RFC 9110 §5.6.4 quoted-string; control characters (never in our values) become ``?``."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) <= 0x7E:
            out.append(ch)
        else:
            out.append("?")
    return '"' + "".join(out) + '"'


def www_authenticate(
    resource: str,
    scopes: Sequence[str],
    error: str | None = None,
    description: str | None = None,
) -> str:
    """The ``WWW-Authenticate`` value for ``resource`` (canonical URI): RFC 6750 §3, RFC 9728 §5.1.

    Without ``error``: ``Bearer resource_metadata="…", scope="…"``. With ``insufficient_scope``
    the error leads (``Bearer error="insufficient_scope", scope="…", resource_metadata="…"``, as
    the MCP spec shows it); other errors follow the two attributes. ``scope`` is left out when
    ``scopes`` is empty; ``error_description`` comes last when given.
    """
    meta = ("resource_metadata", metadata_url(resource))
    scope = [("scope", format_scope(scopes))] if scopes else []
    attrs_: list[tuple[str, str]]
    if error == "insufficient_scope":
        attrs_ = [("error", error), *scope, meta]
    else:
        attrs_ = [meta, *scope]
        if error is not None:
            attrs_.append(("error", error))
    if error is not None and description:
        attrs_.append(("error_description", safe_description(description)))
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in attrs_)


_STATUS = {"insufficient_scope": 403, "invalid_request": 400}


def challenge(
    resource: str,
    scopes: Sequence[str],
    error: str | None = None,
    description: str | None = None,
) -> Response:
    """A complete challenge response (RFC 6750 §3, §3.1): 401 (no token, ``invalid_token``),
    403 (``insufficient_scope``) or 400 (``invalid_request``), with ``WWW-Authenticate``,
    a JSON body ``{error, error_description}`` and ``Cache-Control: no-store``."""
    status = _STATUS.get(error or "", 401)
    if error is None:
        body = {"error": MISSING_TOKEN_ERROR, "error_description": description or MISSING_TOKEN_DESCRIPTION}
    else:
        body = {"error": error, "error_description": safe_description(description or error)}
    header = www_authenticate(resource, scopes, error, body["error_description"] if error else None)
    return json_response(status, body, no_store=True, headers=(("WWW-Authenticate", header),))


def verify_bearer(
    token: str,
    keys: Mapping[str, VerifyingKey],
    *,
    issuer: str,
    resource: str,
    now: int,
) -> AccessToken:
    """The pure fast path of the guard: a token's signature, ``typ``, ``iss``, single ``aud``
    (equal to ``resource`` once both are canonical, RS-04/RS-05) and lifetime (RFC 9068 §4).

    Revocation is not checked here (it needs the store). Raises
    :class:`~kavach_core.jose.JoseError` (of which :class:`~kavach_core.access_tokens.InvalidToken`
    is a kind) and nothing else.
    """
    return verify(token, keys, issuer=issuer, resource=resource, now=now)


def _protected(config: Config, resource: str) -> ProtectedResource:
    found = config.resource(resource)  # the usual: adapters pass the canonical URI
    if found is not None:
        return found
    try:
        found = config.resource(canonical_resource(resource))
    except ValueError as exc:
        raise ConfigurationError(f"{resource!r} is not a resource URI") from exc
    if found is None:
        raise ConfigurationError(f"{resource!r} is not one of the configured protected resources")
    return found


def _read_keys(now: int, keyring: KeyRing | None) -> Flow[Mapping[str, VerifyingKey]]:
    records = tuple((yield fx.GetSigningKeys()))
    if keyring is not None:
        return keyring.update(records, now)
    return KeySet(records).verifying_keys(now)


def authenticate(
    config: Config,
    resource: str,
    authorization: str | None,
    required: tuple[str, ...],
    now: int,
    cache: VerifiedCache | None = None,
    keyring: KeyRing | None = None,
) -> Flow[Principal | Response]:
    """Check the ``Authorization`` header value of a request to ``resource`` (RS-01..RS-05).

    Yields :class:`~kavach_core.effects.GetSigningKeys` (only keys still published verify; none
    is ever generated here) and, for a token that verifies, :class:`~kavach_core.effects.IsTokenRevoked`.
    Returns a :class:`Principal`, or the challenge :class:`Response` to send.

    ``required`` are the scopes this request needs (see :mod:`kavach_core.mcp_methods`); the
    401 challenge names them, or the resource's default scopes when there are none. Raises
    :class:`~kavach_core.errors.ConfigurationError` when ``resource`` is not configured.

    With ``cache``, a token already verified for this resource skips the signature and claims
    checks (its expiry and key are checked against ``now`` and the published keys); revocation
    is still asked of the store on every request (see :mod:`kavach_core.verified_cache`).

    With ``keyring``, the key set read by an earlier request is reused within the ring's ``ttl``
    (see :class:`~kavach_core.keys.KeyRing` for the bound on a withdrawn key); a token whose
    ``kid`` the snapshot lacks makes the flow read the keys again before deciding.
    """
    protected = _protected(config, resource)
    here = protected.uri
    ask = required or protected.default_scopes
    if authorization is None:
        return challenge(here, ask)
    token = bearer_credentials(authorization)
    if token is None:  # another scheme (Basic, DPoP, ...): no Bearer credentials were sent
        return challenge(here, ask)
    keys = None if keyring is None else keyring.keys(now)
    reread = keys is not None
    if keys is None:
        keys = yield from _read_keys(now, keyring)
    # A cached token verified before, so it is well formed; only a miss needs the syntax check.
    hit = None if cache is None else cache.get(token, resource=here, issuer=config.issuer, now=now, kids=keys)
    if hit is None:
        if not is_b64token(token):
            return challenge(here, ask, "invalid_token", INVALID_TOKEN_DESCRIPTION)
        try:
            try:
                access = verify_bearer(token, keys, issuer=config.issuer, resource=here, now=now)
            except UnknownKid:
                if not reread:
                    raise
                keys = yield from _read_keys(now, keyring)  # a key newer than the snapshot
                access = verify_bearer(token, keys, issuer=config.issuer, resource=here, now=now)
        except JoseError:
            return challenge(here, ask, "invalid_token", INVALID_TOKEN_DESCRIPTION)
        if cache is None:
            revocation = fx.IsTokenRevoked(access.jti, access.grant_id)
        else:
            revocation = cache.put(token, access, resource=here, issuer=config.issuer).revocation
    else:
        access, revocation = hit.token, hit.revocation
    revoked: Any = yield revocation
    if revoked:
        return challenge(here, ask, "invalid_token", INVALID_TOKEN_DESCRIPTION)
    principal = Principal(access)
    return scope_challenge(principal, required) or principal


def scope_challenge(principal: Principal, required: tuple[str, ...]) -> Response | None:
    """The 403 ``insufficient_scope`` challenge naming ``required`` when the verified caller's
    token covers not all of it (RS-03, RFC 6750 §3.1), else ``None``."""
    granted = principal.token.scopes
    for scope in required:
        if scope not in granted and not any_covers(granted, scope):
            return challenge(principal.token.audience, required, "insufficient_scope", INSUFFICIENT_SCOPE_DESCRIPTION)
    return None


def authenticate_values(
    config: Config,
    resource: str,
    authorization: Sequence[str],
    required: tuple[str, ...],
    now: int,
    cache: VerifiedCache | None = None,
    keyring: KeyRing | None = None,
) -> Flow[Principal | Response]:
    """:func:`authenticate` given every ``Authorization`` header value of a request, in order.

    For adapters that can pick that header out of their framework's request without building an
    :class:`~kavach_core.http.HttpRequest`. Values that repeat the credential
    (:func:`~kavach_core.credentials.repeated_authorization`: several, or one joining several)
    are 400 ``invalid_request`` (RFC 6750 §3.1), whichever of them is valid.
    """
    if repeated_authorization(authorization):
        protected = _protected(config, resource)
        ask = required or protected.default_scopes
        return _answer(challenge(protected.uri, ask, "invalid_request", REPEATED_AUTHORIZATION_DESCRIPTION))
    return authenticate(config, resource, authorization[0] if authorization else None, required, now, cache, keyring)


def _answer(response: Response) -> Flow[Response]:
    """A flow that performs nothing and returns ``response``."""
    return response
    yield  # unreachable: it makes this function a generator, a flow like the others


def authenticate_request(
    config: Config,
    resource: str,
    req: HttpRequest,
    required: tuple[str, ...],
    now: int,
    cache: VerifiedCache | None = None,
    keyring: KeyRing | None = None,
) -> Flow[Principal | Response]:
    """:func:`authenticate` for an :class:`~kavach_core.http.HttpRequest`.

    Only the ``Authorization`` header is read (RS-01, RFC 6750 §2.1); the query string and the
    body are never looked at. Several ``Authorization`` headers are an invalid request.
    """
    values = req.header_values("authorization")
    return (yield from authenticate_values(config, resource, values, required, now, cache, keyring))
