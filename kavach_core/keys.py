"""Signing keys that rotate (RFC 7517 key sets; RFC 9068 §4 key rollover).

The active key signs; a key retired by rotation stays published in the JWKS until every token
it signed has expired. Rotation is a compare-and-set on the stored key set, so with many
processes it is decided once. Keys for ES256 and Ed25519 are derived from the injected entropy
source; RSA keys come from ``cryptography``'s generator (OpenSSL's CSPRNG).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import effects as fx
from .context import Context
from .drivers import Flow
from .jose import PrivateKey, SigningKeyPair, VerifyingKey, check_key_matches_alg
from .opaque import b64url
from .records import SigningKey

PUBLISH_MARGIN = 300
"""Seconds a retired key stays published beyond the last expiry of a token it signed (clock skew)."""

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_loaded: dict[tuple[str, bytes], SigningKeyPair] = {}


def _private_key(alg: str, ctx: Context) -> PrivateKey:
    if alg == "ES256":
        # 384 bits reduced modulo n-1 keeps the bias below 2^-128 (FIPS 186-5 A.2.1).
        scalar = int.from_bytes(ctx.random(48), "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.from_private_bytes(ctx.random(32))
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported algorithm {alg}")


def generate(ctx: Context, alg: str | None = None) -> SigningKey:
    """A new key for ``alg`` (default: the configured one), active from ``ctx.now``."""
    alg = alg or ctx.config.signing_alg
    key = _private_key(alg, ctx)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # RFC 7638-like stable kid: a digest of the public key, so every process agrees on it.
    kid = b64url(hashlib.sha256(public_der).digest()[:12])
    lifetime = ctx.config.lifetimes
    return SigningKey(
        kid=kid,
        alg=alg,
        private_pem=pem,
        created_at=ctx.now,
        signs_until=ctx.now + lifetime.signing_key,
        publish_until=ctx.now + lifetime.signing_key + lifetime.access_token + PUBLISH_MARGIN,
    )


def load(record: SigningKey) -> SigningKeyPair:
    """The usable key pair of a stored key (parsed once per process)."""
    cache_key = (record.kid, record.private_pem)
    pair = _loaded.get(cache_key)
    if pair is None:
        key = serialization.load_pem_private_key(record.private_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError("unsupported key type")
        check_key_matches_alg(record.alg, key)
        pair = SigningKeyPair(record.kid, record.alg, key)
        if len(_loaded) > 64:
            _loaded.clear()
        _loaded[cache_key] = pair
    return pair


@attrs.frozen
class KeySet:
    """The stored keys, with the answers every caller needs at a given time."""

    records: tuple[SigningKey, ...]

    def active(self, now: int, alg: str) -> SigningKey | None:
        """The newest key of ``alg`` that may sign at ``now``."""
        candidates = [k for k in self.records if k.alg == alg and k.created_at <= now < k.signs_until]
        return max(candidates, key=lambda k: k.created_at, default=None)

    def published(self, now: int) -> tuple[SigningKey, ...]:
        return tuple(k for k in self.records if k.publish_until > now)

    def verifying_keys(self, now: int) -> Mapping[str, VerifyingKey]:
        """``kid -> key`` for every key still published at ``now``."""
        return {k.kid: load(k).public for k in self.published(now)}

    def jwks(self, now: int) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5)."""
        return {"keys": [load(k).public.jwk() for k in self.published(now)]}


def _retire(record: SigningKey, now: int, access_token_lifetime: int) -> SigningKey:
    if record.signs_until <= now:
        return record
    return attrs.evolve(
        record,
        signs_until=now,
        publish_until=min(record.publish_until, now + access_token_lifetime + PUBLISH_MARGIN),
    )


def _swap(ctx: Context, current: tuple[SigningKey, ...]) -> Flow[KeySet]:
    now = ctx.now
    fresh = generate(ctx)
    lifetime = ctx.config.lifetimes.access_token
    kept = tuple(_retire(k, now, lifetime) for k in current if k.publish_until > now)
    stored = yield fx.SwapSigningKeys(tuple(k.kid for k in current), (fresh, *kept))
    return KeySet(tuple(stored))


def current(ctx: Context) -> Flow[KeySet]:
    """The key set, with a key able to sign now: generated once, cluster-wide, when none is."""
    records: tuple[SigningKey, ...] = tuple((yield fx.GetSigningKeys()))
    keyset = KeySet(records)
    if keyset.active(ctx.now, ctx.config.signing_alg) is not None:
        return keyset
    return (yield from _swap(ctx, records))


def rotate(ctx: Context) -> Flow[KeySet]:
    """Retire the active key now and start signing with a new one (``kavach keys rotate``)."""
    records: tuple[SigningKey, ...] = tuple((yield fx.GetSigningKeys()))
    return (yield from _swap(ctx, records))
