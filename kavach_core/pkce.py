"""Proof Key for Code Exchange, S256 only (RFC 7636; OAuth 2.1 §4.1.1; AZ-05, TK-03)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
"""RFC 7636 §4.1: code-verifier = 43*128unreserved."""

_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
"""The base64url (no padding) encoding of a SHA-256 digest is exactly 43 characters."""


def is_valid_verifier(verifier: str) -> bool:
    return bool(_VERIFIER.fullmatch(verifier))


def is_valid_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.fullmatch(challenge))


def s256(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(code_verifier)))`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(verifier: str, challenge: str) -> bool:
    """True when ``verifier`` is well-formed and hashes to ``challenge``, compared in constant time."""
    if not is_valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256(verifier).encode(), challenge.encode())
