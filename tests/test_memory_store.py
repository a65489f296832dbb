"""kavach_core.memory_store: what the in-memory store promises beyond the contract every store keeps
(tests/test_stores.py runs that contract against it with the other backends)."""

from __future__ import annotations

from typing import Any

from test_stores import T0, client, code, grant, key, pending, rotate

from kavach_core import effects as fx
from kavach_core.drivers import nonblocking
from kavach_core.memory_store import MemoryStore


def test_a_subclass_replacing_perform_is_not_taken_as_nonblocking() -> None:
    """``MemoryStore.nonblocking`` holds only while both ``perform`` and ``aperform`` are the memory
    store's own: a subclass whose ``perform`` may wait on I/O is awaited, never called on the
    event loop directly (:func:`kavach_core.drivers.nonblocking`)."""

    class Remote(MemoryStore):
        def perform(self, effect: fx.Effect) -> Any:  # stands for a store that waits on a network
            return super().perform(effect)

    class Awaited(MemoryStore):
        async def aperform(self, effect: fx.Effect) -> Any:
            return self.perform(effect)

    assert nonblocking(MemoryStore()) is True
    assert nonblocking(Remote()) is False
    assert nonblocking(Awaited()) is False


class _CountingLock:
    """The store's own lock, counting how many times it was taken."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.taken = 0

    def __enter__(self) -> _CountingLock:
        self.lock.acquire()
        self.taken += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class _Counted(MemoryStore):
    """A memory store whose handlers are given a :class:`_CountingLock` around the lock it makes."""

    @property
    def _lock(self) -> Any:
        return self.__dict__["counted"]

    @_lock.setter
    def _lock(self, lock: Any) -> None:
        self.__dict__["counted"] = _CountingLock(lock)


def test_every_effect_but_the_point_reads_takes_the_lock_once() -> None:
    """The module's promise: every effect that writes (and every listing) runs under the store's one
    lock, so a read-decide-write such as redeeming a code once (RFC 6749 §4.1.2) or rotating a refresh
    token (RFC 9700 §4.14.2) is atomic; the point reads take no lock."""
    store = _Counted()
    store.perform(fx.PutCode(code("h1")))
    store.perform(fx.ConsumeCode("h1", grant("g1")))
    locked = [
        fx.PutClient(client()), fx.ListClients(), fx.DeleteClient("c2", T0), fx.PutPending(pending()),
        fx.TakePending("t1", T0), fx.PutCode(code("h2", grant_id="g2")), fx.ConsumeCode("h2", grant("g2")),
        fx.RevokeGrant("g2", T0), fx.ListGrants(), fx.RevokeSubject("bob", T0), rotate(),
        fx.RevokeAccessToken("j1", T0 + 600), fx.EndSession("s1", T0 + 600), fx.SwapSigningKeys((), (key("k1"),)),
        fx.Hit("login:alice", 3, 60, T0),
    ]  # fmt: skip
    free = [
        fx.GetClient("c1"), fx.GetPending("t1", T0), fx.GetCode("h1"), fx.GetGrant("g1"), fx.GetSigningKeys(),
        fx.IsTokenRevoked("j1", "g1"), fx.IsSessionEnded("s1"),
    ]  # fmt: skip
    assert {type(e) for e in locked + free} == set(fx.STORE_HANDLERS), "every effect the store handles is here"
    for effect, times in [(e, 1) for e in locked] + [(e, 0) for e in free]:
        before = store._lock.taken
        store.perform(effect)
        assert store._lock.taken - before == times, type(effect).__name__
    assert store.perform(fx.GetGrant("g1")).refresh_generation == 1  # the rotation was performed
