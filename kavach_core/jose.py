"""A small, strict JWS (RFC 7515, compact serialization) on ``cryptography``.

Rules (RFC 8725 §2.1, §3.1, §3.2, §3.11; design "Tokens and keys"):

- the algorithm is fixed by the key, never chosen by the token header (RFC 8725 §3.1): the
  header's ``alg`` must *equal* the algorithm of the key its ``kid`` names;
- ``kid`` is required and selects the key; an unknown ``kid`` fails;
- ``alg: none``, HMAC algorithms and header-supplied keys (``jwk``, ``jku``, ``x5u``, ``x5c``,
  ``x5t``) are refused (RFC 8725 §3.10), and so is any ``crit`` extension (RFC 7515 §4.1.11:
  we understand none, so a token that needs one must be rejected);
- base64url must be canonical and unpadded (RFC 7515 §2), JSON must be an object without
  duplicate members (RFC 7515 §5.2 step 4) and without ``NaN``/``Infinity``;
- the token is ASCII and at most :data:`MAX_TOKEN` characters long.

Algorithms: ES256 (P-256, raw ``r||s`` signatures, RFC 7518 §3.4), RS256 (RSA ≥ 2048 bits,
RFC 7518 §3.3) and EdDSA with Ed25519 (RFC 8037 §3.1).

Every failure raises :class:`JoseError`; no other exception escapes :func:`verify`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
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
from .memo import Memo
from .opaque import b64url, b64url_decode
from .params import decode_exactly, unique_members

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

ALGORITHMS = ("ES256", "RS256", "EdDSA")
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64", "zip", "enc"})
MAX_TOKEN = 8192
"""Longest compact JWS accepted, in characters; our access tokens are well under 1 KiB."""

_MIN_RSA_BITS = 2048


class JoseError(KavachError):
    """A token that is malformed, unsigned, signed with the wrong key, or signed badly."""


class UnknownKid(JoseError):
    """The token's ``kid`` names no key we were given (a caller holding a cached key set may
    re-read the keys once and try again; nothing else about the token was accepted)."""


def _reject_constant(name: str) -> Any:
    raise JoseError("invalid JSON constant")


_STRICT_JSON = json.JSONDecoder(
    object_pairs_hook=unique_members(lambda name: JoseError("duplicate JSON member")), parse_constant=_reject_constant
)
"""Built once: ``json.loads`` with these hooks would build a new decoder for every call."""


def json_object(data: bytes) -> dict[str, Any]:
    """Strict JSON object decoding (RFC 7515 §5.2 step 4, RFC 8259 §4, RFC 7493 §2.3).

    UTF-8 only, one object, no duplicate member names, no ``NaN``/``Infinity``.
    """
    try:
        value = decode_exactly(_STRICT_JSON, data.decode("utf-8"))
    except JoseError:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise JoseError("invalid JSON") from exc
    if not isinstance(value, dict):
        raise JoseError("JSON is not an object")
    return value


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def check_key_matches_alg(alg: str, key: PrivateKey | PublicKey) -> None:
    """Raise :class:`JoseError` unless ``key`` is the kind ``alg`` needs (RFC 7518 §3.3, §3.4; RFC 8037)."""
    if alg == "ES256":
        ok = isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
            key.curve, ec.SECP256R1
        )
    elif alg == "RS256":
        ok = isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS
    elif alg == "EdDSA":
        ok = isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey)
    else:
        raise JoseError(f"unsupported algorithm {alg}")
    if not ok:
        raise JoseError(f"key does not fit algorithm {alg}")


def _check_pair(instance: VerifyingKey | SigningKeyPair) -> None:
    if not isinstance(instance.kid, str) or not instance.kid:
        raise JoseError("a key needs a non-empty kid")
    check_key_matches_alg(instance.alg, instance.key)


@attrs.frozen
class VerifyingKey:
    """A public key together with the one algorithm it verifies and its ``kid``.

    Construction checks that the key fits the algorithm, so a key can never verify with
    another algorithm than its own (RFC 8725 §3.1).
    """

    kid: str
    alg: str
    key: PublicKey = attrs.field(eq=False, repr=False)

    _check: Callable[[bytes, bytes], None] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_pair(self)
        object.__setattr__(self, "_check", _checker(self.alg, self.key))

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``signing_input`` under ``alg``."""
        try:
            self._check(signing_input, signature)
        except (InvalidSignature, ValueError):
            return False
        return True

    def jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517 §4, RFC 7518 §6.2 and §6.3, RFC 8037 §2), with ``kid``, ``alg``, ``use``."""
        return {**_required_members(self.key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint (SHA-256, base64url) of this public key."""
        return jwk_thumbprint(self.key)


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def _checker(alg: str, key: PublicKey) -> Callable[[bytes, bytes], None]:
    """The signature check of ``key`` under ``alg``, its branch chosen once (the pair was checked).

    Each returns when the signature is good and raises ``InvalidSignature`` otherwise, a wrong
    length included.
    """
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
        ec_verify = key.verify

        def es256(signing_input: bytes, signature: bytes) -> None:
            # RFC 7518 §3.4: exactly 64 octets, R then S, each 32 octets big-endian.
            if len(signature) != 64:
                raise InvalidSignature
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            ec_verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)

        return es256
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        rsa_verify = key.verify
        size = (key.key_size + 7) // 8

        def rs256(signing_input: bytes, signature: bytes) -> None:
            # RFC 8017 §8.2.2 step 1: the signature is exactly as long as the modulus.
            if len(signature) != size:
                raise InvalidSignature
            rsa_verify(signature, signing_input, _PKCS1V15, _SHA256)

        return rs256
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
        ed_verify = key.verify

        def eddsa(signing_input: bytes, signature: bytes) -> None:
            if len(signature) != 64:
                raise InvalidSignature
            ed_verify(signature, signing_input)

        return eddsa
    raise JoseError(f"key does not fit algorithm {alg}")  # unreachable: _check_pair ran first


def _required_members(key: PublicKey) -> dict[str, str]:
    """The members RFC 7638 §3.2 names as required for each key type, in lexicographic order."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": _int_b64(numbers.x, 32), "y": _int_b64(numbers.y, 32)}
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {"e": _int_b64(rsa_numbers.e), "kty": "RSA", "n": _int_b64(rsa_numbers.n)}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, without whitespace; base64url."""
    members = _required_members(key)
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64url(hashlib.sha256(canonical).digest())


@attrs.frozen
class SigningKeyPair:
    """A private key able to sign with exactly one algorithm, and its public half."""

    kid: str
    alg: str
    key: PrivateKey = attrs.field(eq=False, repr=False)

    _signer: Callable[[bytes], bytes] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_pair(self)
        object.__setattr__(self, "_signer", _signer(self.alg, self.key))

    @property
    def public(self) -> VerifyingKey:
        return VerifyingKey(self.kid, self.alg, self.key.public_key())

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature of ``signing_input`` (RFC 7515 §5.1 step 5) under this key's algorithm."""
        return self._signer(signing_input)


def _signer(alg: str, key: PrivateKey) -> Callable[[bytes], bytes]:
    """The JWS signing of ``key`` under ``alg``, its branch chosen once (the pair was checked)."""
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        ec_sign = key.sign

        def es256(signing_input: bytes) -> bytes:
            # RFC 7518 §3.4: R then S, each 32 octets big-endian (not the DER of X9.62).
            r, s = decode_dss_signature(ec_sign(signing_input, _ECDSA_SHA256))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return es256
    if alg == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        rsa_sign = key.sign

        def rs256(signing_input: bytes) -> bytes:
            return rsa_sign(signing_input, _PKCS1V15, _SHA256)

        return rs256
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    raise JoseError(f"key does not fit algorithm {alg}")  # unreachable: _check_pair ran first


_CLAIMS_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""Compact JSON without ``NaN`` or ``Infinity`` (RFC 8259 §6 has none), built once."""


def _encode_json(value: Mapping[str, Any]) -> str:
    return b64url(_CLAIMS_ENCODER.encode(value).encode("utf-8"))


_encoded_headers: Memo[tuple[str, str, str], str] = Memo(256)


def _encoded_header(alg: str, kid: str, typ: str) -> str:
    """The encoded protected header ``{alg, kid, typ}``: the same text for every token a key signs."""
    key = (alg, kid, typ)
    found = _encoded_headers.get(key)
    return found if found is not None else _encoded_headers.put(key, _encode_json({"alg": alg, "kid": kid, "typ": typ}))


def sign(pair: SigningKeyPair, payload: Mapping[str, Any], typ: str) -> str:
    """Compact JWS (RFC 7515 §7.1) of ``payload`` with the protected header ``{alg, kid, typ}``."""
    signing_input = f"{_encoded_header(pair.alg, pair.kid, typ)}.{_encode_json(payload)}"
    return f"{signing_input}.{b64url(pair.sign(signing_input.encode('ascii')))}"


def _decode(part: str) -> bytes:
    """:func:`~kavach_core.opaque.b64url_decode` (strict, canonical, unpadded; RFC 7515 §2),
    failing with :class:`JoseError`."""
    try:
        return b64url_decode(part)
    except ValueError as exc:
        raise JoseError("invalid base64url") from exc


@attrs.frozen
class _Header:
    """What :func:`verify` needs from a protected header that passed every key-independent check."""

    header: dict[str, Any]
    kid: str
    alg: str
    typ: str | None  # normalised (see _norm_typ), None when absent or not a string


_headers: Memo[str, _Header] = Memo(256)


def _parse_header(h64: str) -> _Header:
    """The checked header of the encoded segment ``h64``, parsed once per distinct segment.

    The checks here depend on the segment's text only (JSON, forbidden members, ``kid`` and
    ``alg`` present), so a cached answer is the answer; a segment that fails is never cached.
    Every token a key signs carries the same header, so the cache stays tiny.
    """
    found = _headers.get(h64)
    if found is not None:
        return found
    header = json_object(_decode(h64))
    if _FORBIDDEN_HEADERS.intersection(header):
        raise JoseError("header carries a forbidden parameter")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JoseError("kid is required")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JoseError("alg does not match the key")
    typ = header.get("typ")
    return _headers.put(h64, _Header(header, kid, alg, _norm_typ(typ) if isinstance(typ, str) else None))


def verify(token: str, keys: Mapping[str, VerifyingKey], typ: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS (RFC 7515 §5.2) and return ``(header, payload)``.

    ``keys`` maps ``kid`` to its key; the header's ``alg`` must equal that key's algorithm.
    ``typ``, when given, must equal the header's ``typ`` (compared case-insensitively,
    with or without the ``application/`` prefix, RFC 7515 §4.1.9, RFC 8725 §3.11).
    The payload is decoded only after the signature has verified.
    """
    head, payload = _verified(token, keys, typ)
    return dict(head.header), payload


def verify_kid(token: str, keys: Mapping[str, VerifyingKey], typ: str | None) -> tuple[str, dict[str, Any]]:
    """:func:`verify`, returning the ``kid`` that verified instead of a copy of the whole header."""
    head, payload = _verified(token, keys, typ)
    return head.kid, payload


def _verified(token: str, keys: Mapping[str, VerifyingKey], typ: str | None) -> tuple[_Header, dict[str, Any]]:
    # The hot path of every guarded request: each check is written once, cheapest first, and
    # the payload is not even decoded until the signature over it has verified.
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not token.isascii():
        raise JoseError("token too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("not a compact JWS")
    h64, p64, s64 = parts
    if not p64 or not s64:
        raise JoseError("not a compact JWS")
    head = _headers.get(h64) or _parse_header(h64)
    key = keys.get(head.kid)
    if key is None:
        raise UnknownKid("unknown kid")
    if head.alg != key.alg:
        raise JoseError("alg does not match the key")
    if typ is not None and head.typ != typ and head.typ != _norm_typ(typ):
        raise JoseError("wrong typ")
    try:
        key._check(token[: len(h64) + 1 + len(p64)].encode("ascii"), _decode(s64))
    except (InvalidSignature, ValueError) as exc:
        raise JoseError("bad signature") from exc
    return head, json_object(_decode(p64))


def _norm_typ(value: str) -> str:
    value = value.lower()
    return value[len("application/") :] if value.startswith("application/") else value
