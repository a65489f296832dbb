"""Client metadata rules, shared by dynamic registration and client ID metadata documents.

One set of rules decides what client metadata this server accepts, whether it arrives in a
registration request (RFC 7591 §2, §3.1) or in a client ID metadata document
(draft-ietf-oauth-client-id-metadata-document §4.1: the document's members are RFC 7591 §2
client metadata). The two differ only in the token endpoint authentication methods they accept
and the default when none is named, which the caller passes in.

- ``redirect_uris`` required, each accepted by
  :func:`kavach_core.redirect_uris.registration_problem` and, when
  ``allowed_redirect_hosts`` is set, on a listed or a loopback host (RG-01, RG-03):
  ``invalid_redirect_uri``.
- ``client_uri``, ``logo_uri``, ``tos_uri``, ``policy_uri``: absolute https URLs without user
  information; stored and shown, never fetched (RG-01).
- ``grant_types`` within ``authorization_code`` and ``refresh_token`` and including
  ``authorization_code`` (default: both); ``response_types`` exactly ``["code"]`` (RG-02).
- ``scope``: well-formed scopes, each covered by some resource's catalogue.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import attrs

from .config import is_loopback_host
from .context import Context
from .errors import OAuthError
from .messages.registration import RegistrationRequest
from .records import Client
from .redirect_uris import URI_CHARACTERS, registration_problem
from .resource_indicators import host_problem
from .scopes import format_scope, parse_scope, uncovered

GRANT_TYPES = ("authorization_code", "refresh_token")
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token")
RESPONSE_TYPES = ("code",)
URI_MEMBERS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")


def invalid(description: str) -> OAuthError:
    """``invalid_client_metadata`` (RFC 7591 §3.2.2)."""
    return OAuthError("invalid_client_metadata", description)


@attrs.frozen
class AcceptedMetadata:
    """Client metadata that passed every rule; ``meta`` is the JSON object to store and echo."""

    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    scope: tuple[str, ...] | None
    client_name: str
    meta: dict[str, Any]

    def client(
        self, client_id: str, *, kind: str, issued_at: int, meta: dict[str, Any] | None = None, **record: Any
    ) -> Client:
        """The client record of this metadata under ``client_id`` (RFC 7591 §3.2.1): ``meta``
        (the accepted members unless given) is kept as compact JSON, ``record`` fills the rest
        (a secret's hash and expiry, a document's refetch time)."""
        return Client(
            client_id=client_id,
            redirect_uris=self.redirect_uris,
            token_endpoint_auth_method=self.token_endpoint_auth_method,
            grant_types=self.grant_types,
            response_types=self.response_types,
            client_name=self.client_name,
            scope=self.scope,
            kind=kind,
            issued_at=issued_at,
            metadata=json.dumps(self.meta if meta is None else meta, separators=(",", ":")),
            **record,
        )


def https_uri(name: str, value: str) -> str:
    """RG-01: ``client_uri``-like members are absolute https URLs (never fetched), written as a
    redirect URI must be: URI characters only (RFC 3986 §2) and a plain host (no percent-encoded,
    wildcard or non-ASCII host to show on a consent page as another: :func:`host_problem`)."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise invalid(f"{name} must not contain spaces or control characters")
    if not URI_CHARACTERS.fullmatch(value):
        raise invalid(f"{name} has characters a URI cannot have (RFC 3986 §2: percent-encode them)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise invalid(f"{name} is not a valid URL") from exc
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise invalid(f"{name} must be an absolute https URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise invalid(f"{name} must not carry user information")
    problem = host_problem(parts.netloc, parts.hostname.lower())
    if problem is not None:
        raise invalid(f"{name}: {problem}")
    return value


def _redirect_host_allowed(uri: str, allowed: tuple[str, ...]) -> bool:
    """RG-03: an http(s) URI on a listed or a loopback host. A private-use scheme (RFC 8252 §7.1)
    names no web host even when written with an authority (``com.example.app://host/``), as the
    authorization endpoint reads it too, so an allowlist refuses it."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return False
    host = (parts.hostname or "").lower()
    return bool(host) and (is_loopback_host(host) or host in allowed)


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


def check_grant_types(
    grant_types: tuple[str, ...] | None, response_types: tuple[str, ...] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RG-02, RFC 7591 §2.1: only the code flow (with refresh), and the two lists agree."""
    grants = DEFAULT_GRANT_TYPES if grant_types is None else grant_types
    responses = RESPONSE_TYPES if response_types is None else response_types
    for grant in grants:
        if grant not in GRANT_TYPES:
            raise invalid(f"grant type {grant} is not supported; use authorization_code and refresh_token")
    if "authorization_code" not in grants:
        raise invalid("grant_types must include authorization_code")
    for response in responses:
        if response not in RESPONSE_TYPES:
            raise invalid(f"response type {response} is not supported; use code")
    if "code" not in responses:
        raise invalid('response_types must be ["code"] for the authorization_code grant')
    return grants, responses


def check_scope(ctx: Context, scope: str | None) -> tuple[str, ...] | None:
    """The scopes the client may ask for: well-formed and within some resource's catalogue."""
    try:
        scopes = parse_scope(scope)
    except OAuthError as exc:
        raise invalid("scope is malformed") from exc
    if scopes is None:
        return None
    if uncovered(scopes, ctx.config.scopes_supported):
        raise invalid("scope names a scope this server does not offer")
    return scopes


def accept(
    ctx: Context,
    msg: RegistrationRequest,
    *,
    auth_methods: tuple[str, ...],
    default_auth_method: str,
    refused_auth_methods: dict[str, str] | None = None,
) -> AcceptedMetadata:
    """Apply every metadata rule to ``msg`` (RFC 7591 §2); reads and writes nothing.

    ``auth_methods`` are the ``token_endpoint_auth_method`` values accepted; a method in
    ``refused_auth_methods`` is refused with the description given there. Raises
    ``invalid_redirect_uri`` or ``invalid_client_metadata`` (RFC 7591 §3.2.2).
    """
    redirect_uris = check_redirect_uris(ctx, msg.redirect_uris)
    method = msg.token_endpoint_auth_method or default_auth_method
    if refused_auth_methods and method in refused_auth_methods:
        raise invalid(refused_auth_methods[method])
    if method not in auth_methods:
        raise invalid(f"token_endpoint_auth_method {method} is not supported")
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
    for name in URI_MEMBERS:
        value = getattr(msg, name)
        if value is not None:
            meta[name] = https_uri(name, value)
    if msg.contacts:
        if any(not c.strip() for c in msg.contacts):
            raise invalid("contacts must not hold empty entries")
        meta["contacts"] = list(msg.contacts)
    if scopes is not None:
        meta["scope"] = format_scope(scopes)
    if msg.software_id is not None:
        meta["software_id"] = msg.software_id
    if msg.software_version is not None:
        meta["software_version"] = msg.software_version
    return AcceptedMetadata(
        redirect_uris=redirect_uris,
        token_endpoint_auth_method=method,
        grant_types=grants,
        response_types=responses,
        scope=scopes,
        client_name=msg.client_name or "",
        meta=meta,
    )
