"""RFC 9068 JWT access tokens: minted with exactly one audience, verified strictly.

Claims (RFC 9068 §2.2): ``iss sub aud client_id scope iat exp jti``; ``aud`` is the single
canonical resource URI the token was minted for (RFC 8707 §2, AZ-06, TK-06). ``gid`` names
the grant, so revoking a grant revokes its access tokens. The header carries
``typ: at+jwt`` (RFC 9068 §2.1) so an ID token or other JWT can never pass as an access token
(RFC 8725 §3.11).
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
    kid: str = attrs.field(default="", eq=False)
    """The ``kid`` of the key that signed it (for :mod:`kavach_core.verified_cache`)."""


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
    """Sign a new access token for one resource (RFC 9068 §2; RFC 8707 §2: one audience).

    ``aud`` is ``resource`` in canonical form (RS-05). The token expires after the configured
    lifetime, and never after ``not_after`` (the end of its grant).
    """
    audience = canonical_resource(resource)
    exp = ctx.now + ctx.config.lifetimes.access_token
    if not_after is not None:
        exp = min(exp, not_after)
    jti = new_id(ctx)
    claims: dict[str, Any] = {
        "iss": ctx.config.issuer,
        "sub": subject,
        "aud": audience,
        "client_id": client_id,
        "scope": format_scope(scopes),
        "iat": ctx.now,
        "exp": exp,
        "jti": jti,
        "gid": grant_id,
    }
    token = jose.sign(pair, claims, TYP)
    access = AccessToken(subject, client_id, audience, tuple(scopes), ctx.now, exp, jti, grant_id, claims, pair.kid)
    return token, access


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


def _audience(claims: Mapping[str, Any], here: str) -> str:
    """The single audience (RFC 7519 §4.1.3 allows a string or an array; we require exactly one).

    ``here`` is canonical, so an ``aud`` spelled exactly like it is canonical too and needs no
    parsing; any other spelling is made canonical before it is compared (RS-05).
    """
    aud = claims.get("aud")
    if isinstance(aud, list):
        if len(aud) != 1:
            raise InvalidToken("a token must have exactly one audience")
        aud = aud[0]
    if not isinstance(aud, str):
        raise InvalidToken("audience missing")
    if aud == here:
        return here
    try:
        return canonical_resource(aud)
    except ValueError as exc:
        raise InvalidToken("audience is not a resource URI") from exc


def verify(
    token: str,
    keys: Mapping[str, VerifyingKey],
    *,
    issuer: str,
    resource: str,
    now: int,
    leeway: int = 0,
) -> AccessToken:
    """Verify an access token the way RFC 9068 §4 asks a resource server to.

    Signature and ``typ`` (RFC 9068 §4 steps 1-3, via :func:`jose.verify`); ``iss`` equals
    ``issuer`` byte for byte (step 4); ``aud`` is exactly one URI equal to ``resource`` once both
    are canonical (step 5; RFC 8707, RS-04, RS-05); ``exp`` not passed and ``iat``/``nbf`` not in
    the future, allowing ``leeway`` seconds (step 7; RFC 7519 §4.1.4, §4.1.5). ``sub``,
    ``client_id``, ``jti`` and ``gid`` must be non-empty strings, ``scope`` a string.

    Raises :class:`InvalidToken` or :class:`jose.JoseError`, and nothing else.
    """
    try:
        here = canonical_resource(resource)
    except ValueError as exc:
        raise InvalidToken("this resource URI is not valid") from exc
    kid, claims = jose.verify_kid(token, keys, TYP)
    get = claims.get
    if get("iss") != issuer:
        raise InvalidToken("wrong issuer")
    aud = get("aud")
    if aud != here:  # the token spells it differently (or as a list): make it canonical first
        aud = _audience(claims, here)
        if aud != here:
            raise InvalidToken("wrong audience")
    exp = get("exp")
    iat = get("iat")
    if type(exp) is not int:
        exp = _int_claim(claims, "exp")  # an int subclass other than bool passes; the rest raise
    if type(iat) is not int:
        iat = _int_claim(claims, "iat")
    if now >= exp + leeway:
        raise InvalidToken("expired")
    if iat > now + leeway + 60:
        raise InvalidToken("issued in the future")
    nbf = get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or isinstance(nbf, bool) or nbf > now + leeway):
        raise InvalidToken("not yet valid")
    scope = get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("scope is not a string")
    sub, client_id, jti, gid = get("sub"), get("client_id"), get("jti"), get("gid")
    if not (type(sub) is str and type(client_id) is str and type(jti) is str and type(gid) is str):
        sub, client_id = _str_claim(claims, "sub"), _str_claim(claims, "client_id")
        jti, gid = _str_claim(claims, "jti"), _str_claim(claims, "gid")
    if not (sub and client_id and jti and gid):
        raise InvalidToken("claim sub, client_id, jti or gid is empty")
    scopes = scope.split(" ")
    if "" in scopes:  # empty scope, or doubled spaces
        scopes = [s for s in scopes if s]
    return AccessToken(sub, client_id, here, tuple(scopes), iat, exp, jti, gid, claims, kid)
