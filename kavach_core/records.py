"""What the store keeps. Secrets appear only as digests (see :mod:`kavach_core.opaque`).

Everything that expires carries its expiry (whole seconds since the epoch) so any backend can
purge it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    """Converter for string tuples (a typed ``tuple``: mypy cannot solve the bare ``tuple`` converter)."""
    return tuple(value)


@attrs.frozen
class Client:
    """A registered client (RFC 7591 §2).

    ``kind`` is ``dynamic`` (RFC 7591 registration), ``static`` (pre-registered by an operator)
    or ``document`` (a client ID metadata document). ``metadata`` is the JSON of the accepted
    client metadata, echoed by the registration response.
    """

    client_id: str
    redirect_uris: tuple[str, ...] = attrs.field(converter=_strings)
    token_endpoint_auth_method: str = "none"
    secret_hash: str | None = attrs.field(default=None, repr=False)
    grant_types: tuple[str, ...] = attrs.field(default=("authorization_code", "refresh_token"), converter=_strings)
    response_types: tuple[str, ...] = attrs.field(default=("code",), converter=_strings)
    client_name: str = ""
    scope: tuple[str, ...] | None = None
    kind: str = "dynamic"
    issued_at: int = 0
    secret_expires_at: int = 0
    metadata: str = "{}"
    expires_at: int | None = None
    """When a cached metadata document must be fetched again; ``None`` for registered clients."""

    @property
    def is_confidential(self) -> bool:
        return self.token_endpoint_auth_method != "none"

    @property
    def meta(self) -> dict[str, Any]:
        value = json.loads(self.metadata)
        return value if isinstance(value, dict) else {}


@attrs.frozen
class PendingAuthorization:
    """A validated authorization request waiting for the person's decision (a consent ticket)."""

    ticket_hash: str
    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    state: str | None
    code_challenge: str
    resources: tuple[str, ...] = attrs.field(converter=_strings)
    scopes: tuple[str, ...] = attrs.field(converter=_strings)
    created_at: int
    expires_at: int


@attrs.frozen
class AuthorizationCode:
    """An issued authorization code, bound to everything it was issued for (AZ-09)."""

    code_hash: str
    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    code_challenge: str
    resources: tuple[str, ...] = attrs.field(converter=_strings)
    scopes: tuple[str, ...] = attrs.field(converter=_strings)
    subject: str
    grant_id: str
    issued_at: int
    expires_at: int
    consumed: bool = False


@attrs.frozen
class Grant:
    """What a person granted a client, and the state of its refresh-token family.

    ``refresh_generation``/``refresh_hash`` describe the current refresh token; ``rotated_at`` is
    when it became current (the grace window runs from there). ``expires_at`` is the absolute
    end of the family; ``refresh_expires_at`` the idle expiry of the current token.
    """

    grant_id: str
    subject: str
    client_id: str
    resources: tuple[str, ...] = attrs.field(converter=_strings)
    scopes: tuple[str, ...] = attrs.field(converter=_strings)
    created_at: int
    expires_at: int
    refresh_generation: int
    refresh_hash: str
    refresh_expires_at: int
    rotated_at: int
    revoked_at: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@attrs.frozen
class SigningKey:
    """A JWS signing key. ``private_pem`` is PKCS#8 PEM; stores may encrypt it at rest.

    The key signs from ``created_at`` until ``signs_until``; it stays in the JWKS until
    ``publish_until``, after every token it signed has expired.
    """

    kid: str
    alg: str
    private_pem: bytes = attrs.field(repr=False)
    created_at: int
    signs_until: int
    publish_until: int
