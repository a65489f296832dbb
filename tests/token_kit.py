"""Helpers for the token, key and guard tests: keys in a harness, tokens, hand-made JWS."""

from __future__ import annotations

import base64
import json
from typing import Any

from conftest import RESOURCE, Harness

from kavach_core import access_tokens, keys
from kavach_core.jose import SigningKeyPair, VerifyingKey
from kavach_core.records import Grant


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def signer(h: Harness) -> SigningKeyPair:
    """The harness's active signing key (created on first use, as the token endpoint does)."""
    keyset = h.run(keys.current(h.ctx()))
    pair = keyset.signer(h.now, h.config.signing_alg)
    assert pair is not None
    return pair


def verifying(h: Harness) -> dict[str, VerifyingKey]:
    return dict(keys.KeySet(h.store.keys).verifying_keys(h.now))


def put_grant(
    h: Harness, grant_id: str = "grant-1", *, scopes: tuple[str, ...] = ("tools:list", "tools:call")
) -> Grant:
    grant = Grant(
        grant_id=grant_id,
        subject="alice",
        client_id="client-1",
        resources=(RESOURCE,),
        scopes=scopes,
        created_at=h.now,
        expires_at=h.now + 86400,
        refresh_generation=0,
        refresh_hash="x",
        refresh_expires_at=h.now + 86400,
        rotated_at=h.now,
    )
    h.store.grants[grant_id] = grant
    return grant


def mint(
    h: Harness,
    *,
    resource: str = RESOURCE,
    scopes: tuple[str, ...] = ("tools:list", "tools:call"),
    grant_id: str = "grant-1",
    pair: SigningKeyPair | None = None,
) -> tuple[str, access_tokens.AccessToken]:
    return access_tokens.mint(
        h.ctx(),
        pair or signer(h),
        subject="alice",
        client_id="client-1",
        resource=resource,
        scopes=scopes,
        grant_id=grant_id,
    )


def claims(h: Harness, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": h.config.issuer,
        "sub": "alice",
        "aud": RESOURCE,
        "client_id": "client-1",
        "scope": "tools:list",
        "iat": h.now,
        "exp": h.now + 600,
        "jti": "jti-1",
        "gid": "grant-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(pair: SigningKeyPair, header: dict[str, Any] | str, payload: dict[str, Any] | str) -> str:
    """A JWS signed by ``pair`` over exactly the given header and payload (raw JSON text allowed)."""
    h64 = b64(header.encode()) if isinstance(header, str) else b64json(header)
    p64 = b64(payload.encode()) if isinstance(payload, str) else b64json(payload)
    signature = pair.sign(f"{h64}.{p64}".encode())
    return f"{h64}.{p64}.{b64(signature)}"


def header_for(pair: SigningKeyPair, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": pair.alg, "kid": pair.kid, "typ": "at+jwt"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}
