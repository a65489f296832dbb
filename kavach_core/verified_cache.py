"""A bounded cache of access tokens already verified, so a repeat token skips the signature.

An MCP client sends the same access token with every request for its whole lifetime (ten
minutes by default), so a resource server sees each token many times. Verifying it again proves
nothing new: the signature, ``typ``, ``iss``, ``aud`` and the claims' types are facts about the
token's bytes. What can change is *time* and *revocation*, and this cache handles both:

- **Time.** An entry remembers the token's validity window; every hit compares it with the
  ``now`` passed in (the core reads no clock), so an expired token is never served, nor one
  not yet valid.
- **Revocation.** The cache skips signature and claims work only. Revocation is still asked of
  the store on *every* request (:class:`~kavach_core.effects.IsTokenRevoked`, one dictionary or
  index lookup; the question is built once per token and kept with it), so a token revoked
  after it was cached is refused on its next use; no invalidation message is needed between
  processes.
- **Keys.** An entry remembers the ``kid`` that verified it; a hit requires that key to be still
  published, so withdrawing a key withdraws every token it signed, cached or not.
- **Identity.** The key is the SHA-256 digest of the exact token text, and an entry also keeps
  the canonical resource and the issuer it was verified for: any change to the token misses,
  and a token verified for one resource is never served for another (RFC 8707, RS-04).

Size is bounded (least recently used entries go first); a lock keeps it consistent under threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container
from hashlib import sha256

import attrs

from .access_tokens import AccessToken
from .effects import IsTokenRevoked

DEFAULT_SIZE = 10_000
"""Entries kept; a few hundred bytes each plus the claims."""

_IAT_SKEW = 60
"""Mirrors :func:`kavach_core.access_tokens.verify`: ``iat`` may be this far in the future."""


@attrs.frozen
class CachedToken:
    """A verified token as the cache keeps it: its claims (``token.kid`` names the key that
    verified it), the resource and issuer it was verified for, the window it may be served in,
    and the revocation question asked of the store on every use (built once, like everything
    else here that depends only on the token)."""

    token: AccessToken
    resource: str
    issuer: str
    valid_from: int
    valid_until: int
    revocation: IsTokenRevoked


def _digest(token: str) -> bytes:
    return sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifiedCache:
    """Verified access tokens by the digest of their text, at most ``size`` of them."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("a verified-token cache needs room for at least one token")
        self.size = size
        self._entries: OrderedDict[bytes, CachedToken] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, *, resource: str, issuer: str, now: int, kids: Container[str]) -> CachedToken | None:
        """``token`` as verified for ``resource`` (its claims are ``.token``), or ``None`` (verify it then).

        ``None`` as well when the entry was verified for another resource or issuer, has expired
        at ``now`` (it is dropped), is not yet valid, or its key is no longer among ``kids`` (the
        published keys). ``resource`` must be canonical.
        """
        key = _digest(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if now >= entry.valid_until:
                    del self._entries[key]
                elif (
                    entry.valid_from <= now
                    and entry.resource == resource
                    and entry.issuer == issuer
                    and entry.token.kid in kids
                ):
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry
            self.misses += 1
            return None

    def put(self, token: str, access: AccessToken, *, resource: str, issuer: str, leeway: int = 0) -> CachedToken:
        """Remember that ``token`` verified as ``access`` for ``resource`` (under key ``access.kid``).

        Call only with what :func:`kavach_core.access_tokens.verify` returned for exactly these
        arguments. The window kept is the one that function enforces (``exp``, ``iat``, ``nbf``).
        An entry the same token had replaces it. Returns the entry, as :meth:`get` will.
        """
        valid_from = access.issued_at - leeway - _IAT_SKEW
        nbf = access.claims.get("nbf")
        if isinstance(nbf, int) and not isinstance(nbf, bool):
            valid_from = max(valid_from, nbf - leeway)
        revocation = IsTokenRevoked(access.jti, access.grant_id)
        entry = CachedToken(access, resource, issuer, valid_from, access.expires_at + leeway, revocation)
        key = _digest(token)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def purge(self, now: int) -> int:
        """Drop every entry expired at ``now``; returns how many."""
        with self._lock:
            dead = [k for k, e in self._entries.items() if now >= e.valid_until]
            for k in dead:
                del self._entries[k]
        return len(dead)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
