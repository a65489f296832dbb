"""Recognising a token a client hands back to the authorization server.

Revocation (RFC 7009 §2.1) and introspection (RFC 7662 §2.1) receive a token without being
told reliably what it is: ``token_type_hint`` is only a hint. Our two kinds cannot be confused:
refresh tokens carry the ``kvr_`` prefix and a MAC under the server secret
(:func:`kavach_core.opaque.parse_refresh_token`); access tokens are RFC 9068 JWTs signed by one
of our published keys. Both lookups here only read (no effect that writes), so a request that
is rejected or names an unknown token changes nothing.
"""

from __future__ import annotations

from typing import Any

import attrs

from . import effects as fx
from . import jose
from .access_tokens import AccessToken, verify
from .context import Context
from .drivers import Flow
from .keys import KeySet
from .opaque import digest, parse_refresh_token, same
from .records import Grant
from .resource_indicators import canonical_resource


@attrs.frozen
class PresentedRefresh:
    """A genuine refresh token (its MAC checks) and the grant it names, as stored."""

    grant_id: str
    generation: int
    grant: Grant | None

    def is_current(self, token: str, now: int) -> bool:
        """True when this exact token may still be redeemed at ``now`` (RFC 6749 §6)."""
        grant = self.grant
        return (
            grant is not None
            and not grant.revoked
            and now < grant.expires_at
            and now < grant.refresh_expires_at
            and self.generation == grant.refresh_generation
            and same(digest(token), grant.refresh_hash)
        )


def looks_like_jwt(token: str) -> bool:
    """Cheap shape test: a compact JWS has exactly two dots."""
    return token.count(".") == 2


def refresh_token(ctx: Context, token: str) -> Flow[PresentedRefresh | None]:
    """The grant a genuine refresh token names (``GetGrant``), or ``None`` for anything else."""
    parsed = parse_refresh_token(ctx.config.secret, token)
    if parsed is None:
        return None
    grant_id, generation = parsed
    grant: Grant | None = yield fx.GetGrant(grant_id)
    return PresentedRefresh(grant_id, generation, grant)


def _audience(claims: dict[str, Any]) -> str | None:
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if not isinstance(aud, str):
        return None
    try:
        return canonical_resource(aud)
    except ValueError:
        return None


def access_token(ctx: Context, token: str) -> Flow[AccessToken | None]:
    """The verified claims of an unexpired access token this server issued, else ``None``.

    RFC 9068 §4: signature by a published key (``GetSigningKeys``; a read, never a key
    generation), ``typ`` ``at+jwt``, ``iss`` equal to our issuer, an ``aud`` that is one of our
    resources, ``exp`` in the future. Revocation is not checked here (see ``IsTokenRevoked``).
    """
    if not looks_like_jwt(token):
        return None
    records = yield fx.GetSigningKeys()
    keys = KeySet(tuple(records)).verifying_keys(ctx.now)
    if not keys:
        return None
    try:
        _, claims = jose.verify(token, keys, "at+jwt")
        audience = _audience(claims)
        if audience is None or ctx.config.resource(audience) is None:
            return None
        return verify(token, keys, issuer=ctx.config.issuer, resource=audience, now=ctx.now)
    except jose.JoseError:
        return None
