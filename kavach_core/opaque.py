"""Opaque secrets: codes, consent tickets, client secrets and refresh tokens.

Each carries 256 bits from the injected entropy source (AZ-09, TK-09, GN-02) and is stored
only as its SHA-256 digest, so the stored records alone yield no live credential.
Refresh tokens are derived, not stored: ``HMAC(secret, grant id || generation)`` lets a retry
within the grace window receive the same successor without any plaintext at rest. Whoever holds
``config.secret`` as well as the grants can derive them: the adapters' PostgreSQL and Redis
stores keep that secret sealed under the store key, while an SQLite file holds it in the clear
(with the signing keys), so the file itself must be protected like a private key.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac

from .context import Context

SECRET_BYTES = 32
REFRESH_PREFIX = "kvr_"
_GRANT_ID_BYTES = 16


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_+/=", b"+/!!!")
"""base64url to standard base64; ``+``, ``/`` and ``=`` become ``!``, which strict mode refuses."""
_PADDING = (b"", b"", b"==", b"=")
_LAST_CHARS = (
    b"",
    b"",
    frozenset(b"AQgw"),  # 2 characters left over: the last one carries 4 unused bits, all zero
    frozenset(b"AEIMQUYcgkosw048"),  # 3 left over: 2 unused bits, both zero
)


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5, RFC 7515 §2)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict, canonical, unpadded base64url (RFC 4648 §5 and §3.5, RFC 7515 §2); ``ValueError``
    on anything else.

    The C decoder's strict mode refuses anything outside the alphabet (``+``, ``/`` and ``=``
    are mapped out of it first) and a length of 1 modulo 4; the last character must leave the
    unused bits zero, so every byte string has exactly one accepted encoding.
    """
    try:
        raw = text.encode("ascii")
        rest = len(raw) % 4
        data = binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + _PADDING[rest], strict_mode=True)
    except ValueError as exc:  # binascii.Error and UnicodeEncodeError are ValueErrors
        raise ValueError("not base64url") from exc
    if rest and raw[-1] not in _LAST_CHARS[rest]:
        raise ValueError("non-canonical base64url")
    return data


def new_secret(ctx: Context) -> str:
    """A fresh 256-bit secret, base64url encoded (43 characters)."""
    return b64url(ctx.random(SECRET_BYTES))


def new_id(ctx: Context) -> str:
    """A fresh 128-bit identifier (grant ids, JWT ids, client ids)."""
    return b64url(ctx.random(16))


CLIENT_ID_PREFIX = "kvc_"


def new_client_id(ctx: Context) -> str:
    """A fresh 128-bit client identifier. The prefix keeps it from starting with ``-`` (which a
    command line would read as an option) and makes it recognisable."""
    return CLIENT_ID_PREFIX + new_id(ctx)


def digest(secret: str) -> str:
    """The at-rest form of a secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string equality (GN-02)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _refresh_mac(key: bytes, grant_bytes: bytes, generation: int) -> bytes:
    message = b"kavach refresh v1\x00" + grant_bytes + generation.to_bytes(4, "big")
    return hmac.new(key, message, hashlib.sha256).digest()


def refresh_token(key: bytes, grant_id: str, generation: int) -> str:
    """The refresh token of ``grant_id`` at ``generation``: 256 bits of MAC plus where to look."""
    grant_bytes = b64url_decode(grant_id)
    mac = _refresh_mac(key, grant_bytes, generation)
    return REFRESH_PREFIX + b64url(grant_bytes + generation.to_bytes(4, "big") + mac)


def parse_refresh_token(key: bytes, token: str) -> tuple[str, int] | None:
    """``(grant_id, generation)`` of a genuine refresh token, else ``None`` (MAC checked in constant time)."""
    if not token.startswith(REFRESH_PREFIX) or len(token) > 200:
        return None
    try:
        raw = b64url_decode(token[len(REFRESH_PREFIX) :])
    except ValueError:
        return None
    if len(raw) != _GRANT_ID_BYTES + 4 + 32:
        return None
    grant_bytes = raw[:_GRANT_ID_BYTES]
    generation = int.from_bytes(raw[_GRANT_ID_BYTES : _GRANT_ID_BYTES + 4], "big")
    if not hmac.compare_digest(raw[_GRANT_ID_BYTES + 4 :], _refresh_mac(key, grant_bytes, generation)):
        return None
    return b64url(grant_bytes), generation
