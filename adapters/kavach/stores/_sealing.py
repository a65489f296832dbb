"""Signing keys encrypted at rest (PostgreSQL and Redis stores).

With a *store key* configured (the ``store_key`` constructor argument, else the environment
variable ``KAVACH_STORE_KEY``), each signing key's private PEM is stored as::

    b"kavach-sealed-v1:" + base64url(nonce[12] || AES-GCM ciphertext-and-tag)

encrypted with AES-GCM under the store key, with the key's ``kid`` as associated data: a
sealed PEM copied onto another key's row does not open. The store key is 16, 24 or 32 bytes
(AES-128/192/256); as text it is base64 (standard or url-safe, padding optional, whitespace
around it ignored), and a character of neither alphabet inside it is refused, not skipped. Make one with::

    python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"

Every process sharing a store needs the same store key. Without one, PEMs are stored as given
(protect the database instead). A store key can be introduced later: PEMs stored in the clear
still read, and the next key rotation stores the new set sealed. A sealed PEM read without a
store key, or with the wrong one, raises :class:`StoreKeyError` (never a silent fallback).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kavach_core.drivers import StoreUnavailable
from kavach_core.opaque import b64url, b64url_decode

__all__ = ["ENV_VAR", "SEALED_PREFIX", "DamagedSealError", "KeySealer", "StoreKeyError", "sealer_from"]

ENV_VAR = "KAVACH_STORE_KEY"
SEALED_PREFIX = b"kavach-sealed-v1:"


_NONCE = 12
_TAG = 16
"""AES-GCM's nonce and tag lengths as sealed here (NIST SP 800-38D §5.2.1.1, §5.2.1.2)."""


class DamagedSealError(StoreUnavailable):
    """A stored value that begins like a sealed key but is none (written by hand, cut short):
    answered like a damaged record, as an outage (503), and told apart from a wrong store key."""


class StoreKeyError(Exception):
    """The store key is malformed, missing for a sealed signing key, or not the one that sealed it."""


def _unpadded(text: str) -> str:
    """``text`` without the padding RFC 4648 §3.2 puts on base64 of a length that is a multiple of
    four (one or two ``=``): what Python's own encoders write, so a value made by hand reads."""
    return text.removesuffix("=").removesuffix("=") if len(text) % 4 == 0 else text


def _parse_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        text = key.strip().replace("+", "-").replace("/", "_")
        try:
            raw = b64url_decode(_unpadded(text))
        except ValueError as exc:
            raise StoreKeyError(f"{ENV_VAR} must be base64 of 16, 24 or 32 bytes") from exc
    else:
        raw = bytes(key)
    if len(raw) not in (16, 24, 32):
        raise StoreKeyError(f"a store key must be 16, 24 or 32 bytes, not {len(raw)}")
    return raw


class KeySealer:
    """Seals and opens signing-key PEMs with AES-GCM; see the module docstring."""

    def __init__(self, key: bytes | str) -> None:
        self._aead = AESGCM(_parse_key(key))

    def seal(self, kid: str, pem: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return SEALED_PREFIX + b64url(nonce + self._aead.encrypt(nonce, pem, kid.encode())).encode("ascii")

    def open(self, kid: str, stored: bytes) -> bytes:
        """The PEM sealed in ``stored``; :class:`DamagedSealError` when it is no sealed value at
        all (not base64url, shorter than a nonce and a tag), :class:`StoreKeyError` when it is one
        that this store key does not open."""
        try:
            blob = b64url_decode(_unpadded(stored[len(SEALED_PREFIX) :].decode("ascii")))
        except ValueError as exc:  # not ASCII, or not base64url
            raise DamagedSealError(f"signing key {kid!r} is damaged in the store: not a sealed value") from exc
        if len(blob) < _NONCE + _TAG:
            raise DamagedSealError(f"signing key {kid!r} is damaged in the store: its sealed value is cut short")
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], kid.encode())
        except InvalidTag as exc:
            raise StoreKeyError(f"signing key {kid!r} was sealed with another store key") from exc


def seal(sealer: KeySealer | None, kid: str, pem: bytes) -> bytes:
    """What to store for ``pem``: sealed when a store key is configured, else as given."""
    return pem if sealer is None else sealer.seal(kid, pem)


def unseal(sealer: KeySealer | None, kid: str, stored: bytes) -> bytes:
    """The PEM behind a stored value (sealed or, from before a store key was set, clear)."""
    if not stored.startswith(SEALED_PREFIX):
        return stored
    if sealer is None:
        raise StoreKeyError(f"signing key {kid!r} is encrypted at rest: set {ENV_VAR} (or pass store_key)")
    return sealer.open(kid, stored)


def sealer_from(key: bytes | str | None, environ: Mapping[str, str] | None = None) -> KeySealer | None:
    """The sealer for a ``store_key`` argument, else ``KAVACH_STORE_KEY``; ``None`` when neither is set."""
    if key is None:
        key = (os.environ if environ is None else environ).get(ENV_VAR) or None
    return None if key is None else KeySealer(key)
