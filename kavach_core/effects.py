"""Effects: every read or write of state the core asks its caller to perform.

Each effect is one atomic step for every backend; the docstring of each says what it returns.
Decisions that matter for security (code redemption, refresh rotation, consent tickets) are
single effects, never read-then-write pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from .records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey


@attrs.frozen
class Effect:
    """Base class of all effects."""

    writes = False


# -- clients ------------------------------------------------------------------------------


@attrs.frozen
class GetClient(Effect):
    """Returns the :class:`Client` with this id, or ``None`` (expired metadata documents: ``None``)."""

    client_id: str


@attrs.frozen
class PutClient(Effect):
    """Inserts or replaces a client. Returns ``None``."""

    writes = True
    client: Client


@attrs.frozen
class DeleteClient(Effect):
    """Removes a client, drops its authorization codes not yet redeemed and revokes (``revoked_at
    = now``) every grant it holds, in one step. Returns ``True`` when the client existed.

    The codes go in the same step as the grants: a redemption racing the deletion either
    consumed its code first (its grant is revoked here) or finds the code gone and stores nothing.
    """

    writes = True
    client_id: str
    now: int


@attrs.frozen
class ListClients(Effect):
    """Returns every registered client as a tuple."""


# -- the authorization step --------------------------------------------------------------


@attrs.frozen
class PutPending(Effect):
    """Stores a pending authorization under its ticket digest. Returns ``None``."""

    writes = True
    pending: PendingAuthorization


@attrs.frozen
class GetPending(Effect):
    """Returns the :class:`PendingAuthorization` without taking it, or ``None`` when unknown or
    expired at ``now`` (to show the consent page again after a login)."""

    ticket_hash: str
    now: int


@attrs.frozen
class TakePending(Effect):
    """Reads and deletes in one step: at most one caller receives the record.

    Returns the :class:`PendingAuthorization`, or ``None`` when unknown, taken or expired at ``now``.
    """

    writes = True
    ticket_hash: str
    now: int


@attrs.frozen
class PutCode(Effect):
    """Stores an authorization code record. Returns ``None``."""

    writes = True
    code: AuthorizationCode


@attrs.frozen
class GetCode(Effect):
    """Returns the :class:`AuthorizationCode` with this digest (consumed or not), or ``None``."""

    code_hash: str


@attrs.frozen
class ConsumeCode(Effect):
    """Marks the code consumed and stores ``grant``, in one step.

    Returns ``True`` for the single caller that consumed it; ``False`` when it was already
    consumed (or is gone), in which case nothing is written.
    """

    writes = True
    code_hash: str
    grant: Grant


# -- grants and refresh-token families ---------------------------------------------------


@attrs.frozen
class GetGrant(Effect):
    """Returns the :class:`Grant`, or ``None``."""

    grant_id: str


@attrs.frozen
class RevokeGrant(Effect):
    """Marks the grant revoked at ``now``: its refresh family and every access token it issued
    stop working. Returns ``True`` when the grant existed and was not yet revoked."""

    writes = True
    grant_id: str
    now: int


@attrs.frozen
class ListGrants(Effect):
    """Returns the grants matching the filters (``None`` matches any), as a tuple."""

    subject: str | None = None
    client_id: str | None = None


@attrs.frozen
class RevokeSubject(Effect):
    """Drops every authorization code of ``subject`` not yet redeemed and revokes (``revoked_at =
    now``) every grant of ``subject`` not yet revoked, in one step. Returns how many grants it revoked.

    A code's grant exists only once the code is redeemed (``ConsumeCode``), so revoking the grants
    alone would let a code issued before the revocation become a live grant after it (a removed
    user's tokens, for up to the refresh family's lifetime). Redeemed codes stay, consumed, so a
    replay of one is still detected and answered (RFC 6749 §4.1.2).
    """

    writes = True
    subject: str
    now: int


@attrs.frozen
class RotateRefresh(Effect):
    """Compare-and-set on the family's current refresh token.

    With ``grant`` the family's record as stored:

    - unknown grant, revoked, or past ``expires_at`` or ``refresh_expires_at``: ``unknown``;
    - ``generation`` is current and ``presented_hash`` equals ``refresh_hash``: the family moves
      to ``generation + 1`` with ``successor_hash``, ``rotated_at = now`` and
      ``refresh_expires_at = idle_expires_at`` (capped at ``expires_at``): ``rotated``;
    - ``grace > 0``, ``generation + 1`` is current and ``now - rotated_at <= grace``: ``retried``
      (no write); a grace of 0 disables retries;
    - any other generation: the grant is revoked in the same step: ``reused``.

    Returns a :class:`Rotation`.
    """

    writes = True
    grant_id: str
    generation: int
    presented_hash: str
    successor_hash: str
    now: int
    grace: int
    idle_expires_at: int

    def decide(self, grant: Grant | None) -> Rotation:
        """The decision table above, for a backend that reads the family's record under a lock.

        Returns the outcome with the record as it must be stored afterwards: the successor for
        ``rotated``, the revoked family for ``reused``, the record unchanged otherwise (write
        only for ``rotated`` and ``reused``).
        """
        if grant is None or grant.revoked_at is not None or self.now >= grant.expires_at:
            return Rotation("unknown", grant)
        if self.generation == grant.refresh_generation and self.presented_hash == grant.refresh_hash:
            if self.now >= grant.refresh_expires_at:
                return Rotation("unknown", grant)
            return Rotation(
                "rotated",
                attrs.evolve(
                    grant,
                    refresh_generation=self.generation + 1,
                    refresh_hash=self.successor_hash,
                    rotated_at=self.now,
                    refresh_expires_at=min(self.idle_expires_at, grant.expires_at),
                ),
            )
        if (
            self.grace > 0
            and self.generation + 1 == grant.refresh_generation
            and self.now - grant.rotated_at <= self.grace
        ):
            return Rotation("retried", grant)
        return Rotation("reused", attrs.evolve(grant, revoked_at=self.now))


@attrs.frozen
class Rotation:
    """The outcome of :class:`RotateRefresh` and the family's record after it."""

    outcome: Literal["rotated", "retried", "reused", "unknown"]
    grant: Grant | None


# -- access tokens -----------------------------------------------------------------------


@attrs.frozen
class RevokeAccessToken(Effect):
    """Records ``jti`` as revoked until ``expires_at``. Returns ``None``."""

    writes = True
    jti: str
    expires_at: int


@attrs.frozen
class IsTokenRevoked(Effect):
    """Returns ``True`` when ``jti`` was revoked or grant ``grant_id`` is revoked or gone."""

    jti: str
    grant_id: str


# -- sign-in sessions -----------------------------------------------------------------------


SESSION_RECORD_PREFIX = "session:"
"""Ended sign-in sessions are kept with revoked access-token ids (the same rule: an id refused
until it would have expired anyway), under this prefix, which no ``jti`` minted here can carry."""


@attrs.frozen
class _SessionEffect(Effect):
    session_hash: str
    """A hash of the id the session's cookie holds."""

    @property
    def record_id(self) -> str:
        """The id the store keeps the ended session under, among revoked token ids."""
        return SESSION_RECORD_PREFIX + self.session_hash


@attrs.frozen
class EndSession(_SessionEffect):
    """Records the sign-in session ``session_hash`` as ended until ``expires_at``, when its cookie
    expires anyway (OWASP ASVS 5.0 §7.4.1: a session signed out is refused by the server, not
    only forgotten by the browser). Returns ``None``."""

    writes = True
    expires_at: int


@attrs.frozen
class IsSessionEnded(_SessionEffect):
    """Returns ``True`` when :class:`EndSession` recorded ``session_hash`` (and it was not yet purged)."""


# -- signing keys --------------------------------------------------------------------------


@attrs.frozen
class GetSigningKeys(Effect):
    """Returns the stored signing keys as a tuple, newest first."""


@attrs.frozen
class SwapSigningKeys(Effect):
    """Compare-and-set of the key set: when the stored kids equal ``expected``, store ``keys``.

    Returns the key set stored afterwards (ours, or the one another process stored first),
    so a rotation is decided once however many processes try.
    """

    writes = True
    expected: tuple[str, ...]
    keys: tuple[SigningKey, ...]


# -- rate limits ----------------------------------------------------------------------------


@attrs.frozen
class Hit(Effect):
    """Counts ``step`` events in ``bucket`` for the fixed window containing ``now``.

    Returns ``True`` when the window's count, these events included, is at most ``limit``.
    ``step=0`` counts nothing and stores nothing: it answers whether the count so far is at most
    ``limit``. A negative step gives events back: the count goes down by at most what it holds
    (never below 0), and a window with nothing counted stays absent (no row or key is made, so
    giving back after the window ended does nothing). A sign-in counts its attempt before the
    password check and gives it back when the check succeeds (OWASP Authentication Cheat Sheet,
    "Account Lockout"). ``writes`` holds for every ``Hit``, so no store retries one, of any
    step, after a lost connection.
    """

    writes = True
    bucket: str
    limit: int
    window: int
    now: int
    step: int = attrs.field(default=1, validator=attrs.validators.instance_of(int))

    @property
    def window_end(self) -> int:
        """When the window containing ``now`` ends: its count is dropped then (``purge``, TTLs)."""
        return (self.now // self.window + 1) * self.window


# -- outbound fetches ----------------------------------------------------------------------


@attrs.frozen
class FetchDocument(Effect):
    """Fetches a client ID metadata document through an SSRF-safe fetcher (CM-02).

    Returns a :class:`Fetched` or a :class:`FetchRefused`.
    """

    url: str


@attrs.frozen
class Fetched:
    body: bytes
    content_type: str
    max_age: int | None
    """Seconds the response may be cached, from ``Cache-Control``; ``None`` when not stated."""


@attrs.frozen
class FetchRefused:
    reason: str


# -- the storage effects and their handlers ------------------------------------------------


STORE_HANDLERS: Mapping[type[Effect], str] = {
    GetClient: "_get_client",
    PutClient: "_put_client",
    DeleteClient: "_delete_client",
    ListClients: "_list_clients",
    PutPending: "_put_pending",
    GetPending: "_get_pending",
    TakePending: "_take_pending",
    PutCode: "_put_code",
    GetCode: "_get_code",
    ConsumeCode: "_consume_code",
    GetGrant: "_get_grant",
    RevokeGrant: "_revoke_grant",
    RevokeSubject: "_revoke_subject",
    ListGrants: "_list_grants",
    RotateRefresh: "_rotate",
    RevokeAccessToken: "_revoke_access",
    IsTokenRevoked: "_is_revoked",
    EndSession: "_end_session",
    IsSessionEnded: "_is_session_ended",
    GetSigningKeys: "_get_keys",
    SwapSigningKeys: "_swap_keys",
    Hit: "_hit",
}
"""Every storage effect and the name of the store method that performs it (``FetchDocument`` is
not storage). Every store, in memory or in a database, names its handlers alike, so a new storage
effect is added here once."""


def bind_handlers(store: object) -> dict[type[Effect], Callable[..., Any]]:
    """``store``'s bound handler for every effect of :data:`STORE_HANDLERS`."""
    return {effect: getattr(store, name) for effect, name in STORE_HANDLERS.items()}
