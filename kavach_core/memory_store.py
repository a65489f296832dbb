"""The in-memory store: every effect atomic; for tests, demos and one process.

Effects that write run under one lock. Point reads (one record by its key, or whether a token
is revoked) take no lock: each reads dictionaries that writers only ever change by a single
assignment, so a read sees the record before or after a concurrent write, never a mixture."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from . import effects as fx
from .records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey

_POINT_READS = frozenset(
    {fx.GetClient, fx.GetPending, fx.GetCode, fx.GetGrant, fx.GetSigningKeys, fx.IsTokenRevoked, fx.IsSessionEnded}
)
"""Effects whose handlers only look records up by key: they need no lock (see the module doc)."""


class MemoryStore:
    """A thread-safe, dict-backed store implementing every effect in :mod:`kavach_core.effects`."""

    @property
    def nonblocking(self) -> bool:
        """``perform`` does no I/O (see :func:`kavach_core.drivers.nonblocking`); a subclass
        that replaces ``perform`` or ``aperform`` is not assumed to be so."""
        cls = type(self)
        return cls.perform is MemoryStore.perform and cls.aperform is MemoryStore.aperform

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clients: dict[str, Client] = {}
        self.pending: dict[str, PendingAuthorization] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.grants: dict[str, Grant] = {}
        self.revoked_jtis: dict[str, int] = {}
        self.keys: tuple[SigningKey, ...] = ()
        self.hits: dict[tuple[str, int], int] = {}
        self._handlers: dict[type[fx.Effect], Callable[[Any], Any]] = {
            kind: handler if kind in _POINT_READS else self._locked(handler)
            for kind, handler in fx.bind_handlers(self).items()
        }

    def perform(self, effect: fx.Effect) -> Any:
        handler = self._handlers.get(type(effect))
        if handler is None:
            raise TypeError(f"MemoryStore cannot perform {type(effect).__name__}")
        return handler(effect)

    def _locked(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        lock = self._lock

        def locked(effect: Any) -> Any:
            with lock:
                return handler(effect)

        return locked

    async def aperform(self, effect: fx.Effect) -> Any:
        return self.perform(effect)

    def purge(self, now: int) -> None:
        """Drop everything that has expired at ``now``."""
        with self._lock:
            self.pending = {k: v for k, v in self.pending.items() if v.expires_at > now}
            self.codes = {k: v for k, v in self.codes.items() if v.expires_at > now}
            self.grants = {k: v for k, v in self.grants.items() if v.expires_at > now}
            self.revoked_jtis = {k: v for k, v in self.revoked_jtis.items() if v > now}
            self.clients = {k: c for k, c in self.clients.items() if c.expires_at is None or c.expires_at > now}
            self.hits = {k: v for k, v in self.hits.items() if k[1] > now}

    # -- handlers (every one but the point reads called with the lock held) -------------

    def _get_client(self, e: fx.GetClient) -> Client | None:
        return self.clients.get(e.client_id)

    def _put_client(self, e: fx.PutClient) -> None:
        self.clients[e.client.client_id] = e.client

    def _list_clients(self, e: fx.ListClients) -> tuple[Client, ...]:
        return tuple(self.clients.values())

    def _get_code(self, e: fx.GetCode) -> AuthorizationCode | None:
        return self.codes.get(e.code_hash)

    def _get_grant(self, e: fx.GetGrant) -> Grant | None:
        return self.grants.get(e.grant_id)

    def _get_keys(self, e: fx.GetSigningKeys) -> tuple[SigningKey, ...]:
        return self.keys

    def _delete_client(self, e: fx.DeleteClient) -> bool:
        existed = self.clients.pop(e.client_id, None) is not None
        self._drop_codes(lambda code: code.client_id == e.client_id)
        self._revoke_grants(lambda grant: grant.client_id == e.client_id, e.now)
        return existed

    def _drop_codes(self, matches: Callable[[AuthorizationCode], bool]) -> None:
        """Drop the codes not yet redeemed that ``matches`` (redeemed ones stay for replay detection)."""
        self.codes = {k: v for k, v in self.codes.items() if v.consumed or not matches(v)}

    def _revoke_grants(self, matches: Callable[[Grant], bool], now: int) -> int:
        """Revoke, at ``now``, the grants not yet revoked that ``matches``; returns how many."""
        doomed = [gid for gid, grant in self.grants.items() if grant.revoked_at is None and matches(grant)]
        for gid in doomed:
            self.grants[gid] = attrs.evolve(self.grants[gid], revoked_at=now)
        return len(doomed)

    def _put_pending(self, e: fx.PutPending) -> None:
        self.pending[e.pending.ticket_hash] = e.pending

    def _get_pending(self, e: fx.GetPending) -> PendingAuthorization | None:
        record = self.pending.get(e.ticket_hash)
        if record is None or record.expires_at <= e.now:
            return None
        return record

    def _take_pending(self, e: fx.TakePending) -> PendingAuthorization | None:
        record = self.pending.pop(e.ticket_hash, None)
        if record is None or record.expires_at <= e.now:
            return None
        return record

    def _put_code(self, e: fx.PutCode) -> None:
        self.codes[e.code.code_hash] = e.code

    def _consume_code(self, e: fx.ConsumeCode) -> bool:
        code = self.codes.get(e.code_hash)
        if code is None or code.consumed:
            return False
        self.codes[e.code_hash] = attrs.evolve(code, consumed=True)
        self.grants[e.grant.grant_id] = e.grant
        return True

    def _revoke_grant(self, e: fx.RevokeGrant) -> bool:
        grant = self.grants.get(e.grant_id)
        if grant is None or grant.revoked_at is not None:
            return False
        self.grants[e.grant_id] = attrs.evolve(grant, revoked_at=e.now)
        return True

    def _revoke_subject(self, e: fx.RevokeSubject) -> int:
        self._drop_codes(lambda code: code.subject == e.subject)
        return self._revoke_grants(lambda grant: grant.subject == e.subject, e.now)

    def _list_grants(self, e: fx.ListGrants) -> tuple[Grant, ...]:
        return tuple(
            g
            for g in self.grants.values()
            if (e.subject is None or g.subject == e.subject) and (e.client_id is None or g.client_id == e.client_id)
        )

    def _rotate(self, e: fx.RotateRefresh) -> fx.Rotation:
        rotation = e.decide(self.grants.get(e.grant_id))
        if rotation.outcome in ("rotated", "reused") and rotation.grant is not None:
            self.grants[e.grant_id] = rotation.grant
        return rotation

    def _revoke_access(self, e: fx.RevokeAccessToken) -> None:
        self.revoked_jtis[e.jti] = max(e.expires_at, self.revoked_jtis.get(e.jti, 0))

    def _is_revoked(self, e: fx.IsTokenRevoked) -> bool:
        if e.jti in self.revoked_jtis:
            return True
        grant = self.grants.get(e.grant_id)
        return grant is None or grant.revoked_at is not None

    def _end_session(self, e: fx.EndSession) -> None:
        self._revoke_access(fx.RevokeAccessToken(e.record_id, e.expires_at))

    def _is_session_ended(self, e: fx.IsSessionEnded) -> bool:
        return e.record_id in self.revoked_jtis

    def _swap_keys(self, e: fx.SwapSigningKeys) -> tuple[SigningKey, ...]:
        if tuple(k.kid for k in self.keys) == e.expected:
            self.keys = e.keys
        return self.keys

    def _hit(self, e: fx.Hit) -> bool:
        key = (e.bucket, e.window_end)
        held = self.hits.get(key)
        count = max((held or 0) + e.step, 0)
        if e.step > 0 or held is not None:  # reading or giving back never makes an entry
            self.hits[key] = count
        return count <= e.limit
