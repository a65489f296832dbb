"""RFC 9068 JWT access tokens: minted with exactly one audience, verified strictly.

Claims (RFC 9068 §2.2): ``iss sub aud client_id scope iat exp jti``; ``aud`` is the single
canonical resource URI the token was minted for (RFC 8707 §2, AZ-06, TK-06). ``gid`` names
the grant, so revoking a grant revokes its access tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from . import jose
from .context import Context
from .jose import SigningKeyPair, VerifyingKey
from .opaque import new_id
from .resource_indicators import canonical_resource
from .scopes import format_scope

TYP = "at+jwt"


@attrs.frozen
class AccessToken:
    """The verified claims of an access token."""

    subject: str
    client_id: str
    audience: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    jti: str
    grant_id: str
    claims: Mapping[str, Any] = attrs.field(eq=False, repr=False)


class InvalidToken(jose.JoseError):
    """A token that is not a valid access token here; the message says why (never sent to clients)."""


def mint(
    ctx: Context,
    pair: SigningKeyPair,
    *,
    subject: str,
    client_id: str,
    resource: str,
    scopes: tuple[str, ...],
    grant_id: str,
    not_after: int | None = None,
) -> tuple[str, AccessToken]:
    """Sign a new access token for one resource; it expires after the configured lifetime,
    and never after ``not_after`` (the end of its grant)."""
    exp = ctx.now + ctx.config.lifetimes.access_token
    if not_after is not None:
        exp = min(exp, not_after)
    claims: dict[str, Any] = {
        "iss": ctx.config.issuer,
        "sub": subject,
        "aud": resource,
        "client_id": client_id,
        "scope": format_scope(scopes),
        "iat": ctx.now,
        "exp": exp,
        "jti": new_id(ctx),
        "gid": grant_id,
    }
    token = jose.sign(pair, claims, TYP)
    return token, AccessToken(subject, client_id, resource, scopes, ctx.now, exp, claims["jti"], grant_id, claims)


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"claim {name} missing or not a string")
    return value


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidToken(f"claim {name} missing or not an integer")
    return value


def verify(
    token: str,
    keys: Mapping[str, VerifyingKey],
    *,
    issuer: str,
    resource: str,
    now: int,
    leeway: int = 0,
) -> AccessToken:
    """Verify signature, ``typ``, ``iss``, ``aud`` (exactly ``resource``, canonical), ``exp``, ``iat``.

    RFC 9068 §4; RS-02, RS-04, RS-05. Raises :class:`InvalidToken` or :class:`jose.JoseError`.
    """
    _, claims = jose.verify(token, keys, TYP)
    if claims.get("iss") != issuer:
        raise InvalidToken("wrong issuer")
    aud = claims.get("aud")
    if isinstance(aud, list):
        if len(aud) != 1:
            raise InvalidToken("a token must have exactly one audience")
        aud = aud[0]
    if not isinstance(aud, str):
        raise InvalidToken("audience missing")
    try:
        if canonical_resource(aud) != aud or aud != resource:
            raise InvalidToken("wrong audience")
    except ValueError as exc:
        raise InvalidToken("wrong audience") from exc
    exp = _int_claim(claims, "exp")
    iat = _int_claim(claims, "iat")
    if now >= exp + leeway:
        raise InvalidToken("expired")
    if iat > now + leeway + 60:
        raise InvalidToken("issued in the future")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or nbf > now + leeway):
        raise InvalidToken("not yet valid")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("scope is not a string")
    return AccessToken(
        subject=_str_claim(claims, "sub"),
        client_id=_str_claim(claims, "client_id"),
        audience=aud,
        scopes=tuple(s for s in scope.split(" ") if s),
        issued_at=iat,
        expires_at=exp,
        jti=_str_claim(claims, "jti"),
        grant_id=_str_claim(claims, "gid"),
        claims=claims,
    )
