"""A small, strict JWS (RFC 7515, compact serialization) on ``cryptography``.

Rules (RFC 8725 §3.1, §3.2; design "Tokens and keys"):

- the algorithm is fixed by the key, never chosen by the token header;
- ``kid`` is required and selects the key; an unknown ``kid`` fails;
- ``alg: none``, HMAC algorithms and header-supplied keys (``jwk``, ``jku``, ``x5u``, ``x5c``)
  are refused, and so is any ``crit`` extension;
- base64url must be canonical and unpadded, JSON must be an object without duplicate members.

Algorithms: ES256 (P-256, raw ``r||s`` signatures, RFC 7518 §3.4), RS256 (RFC 7518 §3.3) and
EdDSA with Ed25519 (RFC 8037).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import KavachError
from .opaque import b64url, b64url_decode

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

ALGORITHMS = ("ES256", "RS256", "EdDSA")
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})
MAX_TOKEN = 8192


class JoseError(KavachError):
    """A token that is malformed, unsigned, signed with the wrong key, or signed badly."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JoseError("duplicate JSON member")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise JoseError("invalid JSON constant")


def json_object(data: bytes) -> dict[str, Any]:
    """Strict JSON object decoding (RFC 7515 §5.2 step 4, RFC 8259 §4)."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except JoseError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JoseError("invalid JSON") from exc
    if not isinstance(value, dict):
        raise JoseError("JSON is not an object")
    return value


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


@attrs.frozen
class VerifyingKey:
    """A public key together with the one algorithm it verifies and its ``kid``."""

    kid: str
    alg: str
    key: PublicKey = attrs.field(eq=False, repr=False)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        try:
            if self.alg == "ES256":
                assert isinstance(self.key, ec.EllipticCurvePublicKey)
                if len(signature) != 64:
                    return False
                r = int.from_bytes(signature[:32], "big")
                s = int.from_bytes(signature[32:], "big")
                self.key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
            elif self.alg == "RS256":
                assert isinstance(self.key, rsa.RSAPublicKey)
                self.key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            else:
                assert isinstance(self.key, ed25519.Ed25519PublicKey)
                self.key.verify(signature, signing_input)
        except InvalidSignature:
            return False
        return True

    def jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2)."""
        base = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            numbers = self.key.public_numbers()
            return {"kty": "EC", "crv": "P-256", "x": _int_b64(numbers.x, 32), "y": _int_b64(numbers.y, 32), **base}
        if isinstance(self.key, rsa.RSAPublicKey):
            rsa_numbers = self.key.public_numbers()
            return {"kty": "RSA", "n": _int_b64(rsa_numbers.n), "e": _int_b64(rsa_numbers.e), **base}
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), **base}


@attrs.frozen
class SigningKeyPair:
    """A private key able to sign with exactly one algorithm, and its public half."""

    kid: str
    alg: str
    key: PrivateKey = attrs.field(eq=False, repr=False)

    @property
    def public(self) -> VerifyingKey:
        return VerifyingKey(self.kid, self.alg, self.key.public_key())

    def sign(self, signing_input: bytes) -> bytes:
        if self.alg == "ES256":
            assert isinstance(self.key, ec.EllipticCurvePrivateKey)
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.alg == "RS256":
            assert isinstance(self.key, rsa.RSAPrivateKey)
            return self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        assert isinstance(self.key, ed25519.Ed25519PrivateKey)
        return self.key.sign(signing_input)


def check_key_matches_alg(alg: str, key: PrivateKey | PublicKey) -> None:
    """Raise :class:`JoseError` unless ``key`` is the kind ``alg`` needs."""
    if alg == "ES256":
        ok = isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    elif alg == "RS256":
        ok = isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size >= 2048
    elif alg == "EdDSA":
        ok = isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey)
    else:
        raise JoseError(f"unsupported algorithm {alg}")
    if not ok:
        raise JoseError(f"key does not fit algorithm {alg}")


def sign(pair: SigningKeyPair, payload: Mapping[str, Any], typ: str) -> str:
    """Compact JWS of ``payload`` with header ``{alg, kid, typ}``."""
    header = {"alg": pair.alg, "kid": pair.kid, "typ": typ}
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{h}.{p}".encode("ascii")
    return f"{h}.{p}.{b64url(pair.sign(signing_input))}"


def verify(token: str, keys: Mapping[str, VerifyingKey], typ: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS and return ``(header, payload)``.

    ``keys`` maps ``kid`` to its key; the header's ``alg`` must equal that key's algorithm.
    ``typ``, when given, must equal the header's ``typ`` (compared case-insensitively,
    with or without the ``application/`` prefix, RFC 7515 §4.1.9).
    """
    if len(token) > MAX_TOKEN or not token.isascii():
        raise JoseError("token too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("not a compact JWS")
    h64, p64, s64 = parts
    try:
        header_raw = b64url_decode(h64)
        signature = b64url_decode(s64)
    except ValueError as exc:
        raise JoseError("invalid base64url") from exc
    header = json_object(header_raw)
    if _FORBIDDEN_HEADERS.intersection(header):
        raise JoseError("header carries a forbidden parameter")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JoseError("kid is required")
    key = keys.get(kid)
    if key is None:
        raise JoseError("unknown kid")
    if header.get("alg") != key.alg:
        raise JoseError("alg does not match the key")
    if typ is not None:
        got = header.get("typ")
        if not isinstance(got, str) or _norm_typ(got) != _norm_typ(typ):
            raise JoseError("wrong typ")
    if not key.verify(f"{h64}.{p64}".encode("ascii"), signature):
        raise JoseError("bad signature")
    try:
        payload_raw = b64url_decode(p64)
    except ValueError as exc:
        raise JoseError("invalid base64url") from exc
    return header, json_object(payload_raw)


def _norm_typ(value: str) -> str:
    value = value.lower()
    return value[len("application/"):] if value.startswith("application/") else value
