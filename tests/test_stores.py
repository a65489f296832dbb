"""One contract suite for every store: the effects of :mod:`kavach_core.effects`, atomically.

Every test taking ``opener`` or ``store`` runs against each entry of ``BACKENDS``; a new backend
(PostgreSQL, Redis) joins the whole suite by adding one :class:`Backend` there. An opener returns
a *new store object on the same database* each time it is called, so the concurrency tests race
independent store objects the way separate workers would.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kavach.stores import SchemaVersionError, SQLiteStore, SQLiteStoreError
from kavach.stores.sqlite import APPLICATION_ID, SCHEMA_VERSION
from store_records import DAY, T0, code, grant

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.memory_store import MemoryStore
from kavach_core.records import Client, Grant, PendingAuthorization, SigningKey

# -- backends ----------------------------------------------------------------------------------

Opener = Callable[[], Any]


@attrs.frozen
class Backend:
    """How to reach one storage engine from a test.

    ``connect(directory)`` prepares an empty database (in ``directory`` if it needs files) and
    returns an opener. ``processes`` says whether stores opened in other processes with the same
    ``directory`` share the database (the multi-process races run only then).
    """

    name: str
    connect: Callable[[Path], Opener]
    processes: bool = False


def _memory(directory: Path) -> Opener:
    shared = MemoryStore()
    return lambda: shared


def _sqlite_file(directory: Path) -> Opener:
    path = directory / "kavach.db"
    return lambda: SQLiteStore(path)


def _sqlite_memory(directory: Path) -> Opener:
    shared = SQLiteStore(":memory:")
    return lambda: shared


def _postgres(directory: Path) -> Opener:
    import services  # tests/services.py: skip, or fail in CI, when PostgreSQL is unreachable

    services.require("postgres")
    return lambda: services.postgres_store(directory)


def _redis(directory: Path) -> Opener:
    import services

    services.require("redis")
    return lambda: services.redis_store(directory)


BACKENDS = [
    Backend("memory", _memory),
    Backend("sqlite", _sqlite_file, processes=True),
    Backend("sqlite-memory", _sqlite_memory),
    Backend("postgres", _postgres, processes=True),
    Backend("redis", _redis, processes=True),
]
BY_NAME = {b.name: b for b in BACKENDS}


@pytest.fixture(params=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    return BY_NAME[request.param]


@pytest.fixture
def opener(backend: Backend, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Any] = []
    base = backend.connect(tmp_path)

    def open_store() -> Any:
        store = base()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        close = getattr(store, "close", None)
        if close is not None:
            close()


@pytest.fixture
def store(opener: Opener) -> Any:
    return opener()


# -- records -------------------------------------------------------------------------------------


def client(client_id: str = "c1", **kw: Any) -> Client:
    return Client(client_id, kw.pop("redirect_uris", ("https://app.example/cb",)), **kw)


def pending(ticket: str = "t1", expires_at: int = T0 + 600, **kw: Any) -> PendingAuthorization:
    base: dict[str, Any] = {
        "ticket_hash": ticket,
        "client_id": "c1",
        "redirect_uri": "https://app.example/cb",
        "redirect_uri_given": True,
        "state": "xyz",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "resources": ("https://mcp.example.com/mcp",),
        "scopes": ("tools:list", "tools:call"),
        "created_at": T0,
        "expires_at": expires_at,
    }
    base.update(kw)
    return PendingAuthorization(**base)


def key(kid: str, created_at: int = T0) -> SigningKey:
    pem = b"-----BEGIN PRIVATE KEY-----\n" + kid.encode() + b"\x00\xff\n-----END PRIVATE KEY-----\n"
    return SigningKey(kid, "ES256", pem, created_at, created_at + 30 * DAY, created_at + 31 * DAY)


def rotate(
    grant_id: str = "g1",
    generation: int = 0,
    presented: str = "r0",
    successor: str = "r1",
    now: int = T0 + 100,
    grace: int = 10,
    idle: int | None = None,
) -> fx.RotateRefresh:
    return fx.RotateRefresh(grant_id, generation, presented, successor, now, grace, idle or now + 14 * DAY)


# -- dispatch ------------------------------------------------------------------------------------


class _NotAnEffectWeKnow(fx.Effect):
    pass


def test_non_storage_effects_are_refused(store: Any) -> None:
    with pytest.raises(TypeError):
        store.perform(fx.FetchDocument("https://app.example/client.json"))
    with pytest.raises(TypeError):
        store.perform(_NotAnEffectWeKnow())


def test_aperform_gives_the_same_results(store: Any) -> None:
    async def main() -> tuple[Any, ...]:
        try:
            await store.aperform(fx.PutClient(client()))
            return await asyncio.gather(
                store.aperform(fx.GetClient("c1")),
                store.aperform(fx.ListClients()),
                store.aperform(fx.Hit("b", 5, 60, T0)),
            )
        finally:
            if hasattr(store, "aclose"):  # an event loop's connections are closed before it ends
                await store.aclose()

    got, listed, hit = asyncio.run(main())
    assert got == client()
    assert listed == (client(),)
    assert hit is True


# -- clients ---------------------------------------------------------------------------------------


def test_client_round_trip_keeps_every_field_and_tuples(store: Any) -> None:
    full = Client(
        "https://app.example/client.json",
        ("https://app.example/cb", "http://127.0.0.1/cb"),
        token_endpoint_auth_method="client_secret_basic",
        secret_hash="sha256:abc",
        grant_types=("authorization_code",),
        response_types=("code",),
        client_name="App ✓",
        scope=("tools:list", "resources:read"),
        kind="document",
        issued_at=T0,
        secret_expires_at=T0 + DAY,
        metadata='{"client_name": "App \\u2713"}',
        expires_at=T0 + 3600,
    )
    assert store.perform(fx.PutClient(full)) is None
    got = store.perform(fx.GetClient(full.client_id))
    assert got == full
    assert isinstance(got.redirect_uris, tuple)
    assert isinstance(got.scope, tuple)
    assert store.perform(fx.GetClient("nobody")) is None


def test_client_without_scope_keeps_none(store: Any) -> None:
    store.perform(fx.PutClient(client(scope=None)))
    assert store.perform(fx.GetClient("c1")).scope is None


def test_put_client_replaces_and_keeps_listing_order(store: Any) -> None:
    assert store.perform(fx.ListClients()) == ()
    store.perform(fx.PutClient(client("a")))
    store.perform(fx.PutClient(client("b")))
    store.perform(fx.PutClient(client("a", client_name="renamed")))
    listed = store.perform(fx.ListClients())
    assert isinstance(listed, tuple)
    assert [c.client_id for c in listed] == ["a", "b"]
    assert listed[0].client_name == "renamed"


def test_delete_client_revokes_every_grant_it_holds(store: Any) -> None:
    store.perform(fx.PutClient(client("c1")))
    store.perform(fx.PutClient(client("c2")))
    store.perform(fx.ConsumeCode("x1", grant("g1")))  # unknown code: nothing written
    for gid, cid, revoked in (("g1", "c1", None), ("g2", "c1", T0 + 5), ("g3", "c2", None)):
        store.perform(fx.PutCode(code(f"h-{gid}", grant_id=gid, client_id=cid)))
        assert store.perform(fx.ConsumeCode(f"h-{gid}", grant(gid, client_id=cid, revoked_at=revoked)))
    assert store.perform(fx.DeleteClient("c1", T0 + 50)) is True
    assert store.perform(fx.GetClient("c1")) is None
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 50
    assert store.perform(fx.GetGrant("g2")).revoked_at == T0 + 5  # first revocation stands
    assert store.perform(fx.GetGrant("g3")).revoked_at is None
    assert store.perform(fx.DeleteClient("c1", T0 + 60)) is False
    assert [c.client_id for c in store.perform(fx.ListClients())] == ["c2"]


def test_delete_client_answers_whether_the_client_was_there_not_whether_grants_were(store: Any) -> None:
    """``DeleteClient`` is ``True`` when the client's record existed, with or without grants, and
    revokes the grants of its id even when no record is left (a fetched client purged)."""
    store.perform(fx.PutClient(client("lonely")))
    assert store.perform(fx.DeleteClient("lonely", T0 + 50)) is True
    store.perform(fx.PutCode(code("h-g1", grant_id="g1", client_id="gone")))
    assert store.perform(fx.ConsumeCode("h-g1", grant("g1", client_id="gone")))
    assert store.perform(fx.DeleteClient("gone", T0 + 50)) is False
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 50


# -- pending authorizations ------------------------------------------------------------------------


def test_pending_round_trip_and_get_does_not_take(store: Any) -> None:
    record = pending(state=None, redirect_uri_given=False)
    assert store.perform(fx.PutPending(record)) is None
    assert store.perform(fx.GetPending("t1", T0)) == record
    assert store.perform(fx.GetPending("t1", T0)) == record
    assert store.perform(fx.GetPending("other", T0)) is None


def test_get_pending_expiry_edge(store: Any) -> None:
    store.perform(fx.PutPending(pending(expires_at=T0 + 600)))
    assert store.perform(fx.GetPending("t1", T0 + 599)) is not None
    assert store.perform(fx.GetPending("t1", T0 + 600)) is None


def test_take_pending_is_used_once(store: Any) -> None:
    store.perform(fx.PutPending(pending()))
    taken = store.perform(fx.TakePending("t1", T0 + 10))
    assert taken == pending()
    assert isinstance(taken.scopes, tuple)
    assert store.perform(fx.TakePending("t1", T0 + 10)) is None
    assert store.perform(fx.GetPending("t1", T0 + 10)) is None


def test_take_pending_expired_returns_none_and_removes_it(store: Any) -> None:
    store.perform(fx.PutPending(pending(expires_at=T0 + 600)))
    assert store.perform(fx.TakePending("t1", T0 + 600)) is None
    assert store.perform(fx.GetPending("t1", T0)) is None
    assert store.perform(fx.TakePending("unknown", T0)) is None


# -- authorization codes (TK-04) ---------------------------------------------------------------------


def test_code_round_trip(store: Any) -> None:
    record = code(redirect_uri_given=True)
    store.perform(fx.PutCode(record))
    got = store.perform(fx.GetCode("h1"))
    assert got == record
    assert got.consumed is False
    assert store.perform(fx.GetCode("nope")) is None


def test_tk04_consume_code_has_one_winner_and_the_loser_writes_nothing(store: Any) -> None:
    store.perform(fx.PutCode(code()))
    assert store.perform(fx.ConsumeCode("h1", grant("g1"))) is True
    assert store.perform(fx.GetCode("h1")).consumed is True
    assert store.perform(fx.GetGrant("g1")) == grant("g1")
    assert store.perform(fx.ConsumeCode("h1", grant("g-second", subject="mallory"))) is False
    assert store.perform(fx.GetGrant("g-second")) is None
    assert store.perform(fx.ListGrants()) == (grant("g1"),)
    assert store.perform(fx.ConsumeCode("missing", grant("g-missing"))) is False
    assert store.perform(fx.GetGrant("g-missing")) is None


# -- grants -----------------------------------------------------------------------------------------


def _seed_grant(store: Any, g: Grant) -> Grant:
    store.perform(fx.PutCode(code(f"code-{g.grant_id}", grant_id=g.grant_id, client_id=g.client_id, subject=g.subject)))
    assert store.perform(fx.ConsumeCode(f"code-{g.grant_id}", g)) is True
    return g


def test_grant_round_trip(store: Any) -> None:
    g = _seed_grant(store, grant())
    got = store.perform(fx.GetGrant("g1"))
    assert got == g
    assert isinstance(got.resources, tuple)
    assert store.perform(fx.GetGrant("nope")) is None


def test_revoke_grant_once(store: Any) -> None:
    _seed_grant(store, grant())
    assert store.perform(fx.RevokeGrant("g1", T0 + 7)) is True
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 7
    assert store.perform(fx.RevokeGrant("g1", T0 + 9)) is False
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 7
    assert store.perform(fx.RevokeGrant("nope", T0)) is False


def test_list_grants_filters(store: Any) -> None:
    g1 = _seed_grant(store, grant("g1", subject="alice", client_id="c1"))
    g2 = _seed_grant(store, grant("g2", subject="bob", client_id="c1"))
    g3 = _seed_grant(store, grant("g3", subject="alice", client_id="c2"))
    assert store.perform(fx.ListGrants()) == (g1, g2, g3)
    assert store.perform(fx.ListGrants(subject="alice")) == (g1, g3)
    assert store.perform(fx.ListGrants(client_id="c1")) == (g1, g2)
    assert store.perform(fx.ListGrants(subject="alice", client_id="c2")) == (g3,)
    assert store.perform(fx.ListGrants(subject="carol")) == ()


# -- a subject's revocation and a client's deletion take codes not yet redeemed with them --------------


def test_revoke_subject_drops_its_codes_not_yet_redeemed_and_revokes_its_grants(store: Any) -> None:
    """A code issued before the revocation never becomes a grant after it; redeemed codes stay
    consumed (a replay is still detected), and other subjects are untouched."""
    _seed_grant(store, grant("g-c1"))
    _seed_grant(store, grant("g-c2", client_id="c2"))
    _seed_grant(store, grant("g-old", revoked_at=T0 + 5))
    _seed_grant(store, grant("g-bob", subject="bob"))
    store.perform(fx.PutCode(code("new-c1", grant_id="g-new-c1")))
    store.perform(fx.PutCode(code("new-c2", grant_id="g-new-c2", client_id="c2")))
    store.perform(fx.PutCode(code("new-bob", grant_id="g-new-bob", subject="bob")))

    assert store.perform(fx.RevokeSubject("alice", T0 + 50)) == 2

    assert store.perform(fx.GetGrant("g-c1")).revoked_at == T0 + 50
    assert store.perform(fx.GetGrant("g-c2")).revoked_at == T0 + 50
    assert store.perform(fx.GetGrant("g-old")).revoked_at == T0 + 5  # the first revocation stands
    assert store.perform(fx.GetGrant("g-bob")).revoked_at is None
    for code_hash, gid, cid in (("new-c1", "g-new-c1", "c1"), ("new-c2", "g-new-c2", "c2")):
        assert store.perform(fx.GetCode(code_hash)) is None
        assert store.perform(fx.ConsumeCode(code_hash, grant(gid, client_id=cid))) is False
        assert store.perform(fx.GetGrant(gid)) is None
    assert store.perform(fx.GetCode("code-g-c1")).consumed is True  # kept: a replay is still detected
    assert store.perform(fx.ConsumeCode("code-g-c1", grant("g-replay"))) is False
    assert store.perform(fx.ConsumeCode("new-bob", grant("g-new-bob", subject="bob"))) is True
    assert store.perform(fx.GetGrant("g-new-bob")).revoked_at is None
    assert [g.grant_id for g in store.perform(fx.ListGrants(subject="alice")) if g.revoked_at is None] == []
    assert store.perform(fx.RevokeSubject("alice", T0 + 60)) == 0
    assert store.perform(fx.RevokeSubject("nobody", T0 + 60)) == 0


def test_delete_client_drops_its_codes_not_yet_redeemed_only(store: Any) -> None:
    store.perform(fx.PutClient(client("c1")))
    store.perform(fx.PutClient(client("c2")))
    _seed_grant(store, grant("g1"))
    store.perform(fx.PutCode(code("new-c1", grant_id="g-new-c1")))
    store.perform(fx.PutCode(code("new-c2", grant_id="g-new-c2", client_id="c2")))

    assert store.perform(fx.DeleteClient("c1", T0 + 50)) is True

    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 50
    assert store.perform(fx.GetCode("code-g1")).consumed is True
    assert store.perform(fx.GetCode("new-c1")) is None
    assert store.perform(fx.ConsumeCode("new-c1", grant("g-new-c1"))) is False
    assert store.perform(fx.GetGrant("g-new-c1")) is None
    assert store.perform(fx.ConsumeCode("new-c2", grant("g-new-c2", client_id="c2"))) is True
    assert store.perform(fx.GetGrant("g-new-c2")).revoked_at is None


def test_a_code_put_again_under_another_subject_or_client_follows_its_new_record(store: Any) -> None:
    """The stores that index codes by subject and client (Redis) act on the record as stored now."""
    store.perform(fx.PutCode(code("h1", subject="alice", client_id="c1")))
    store.perform(fx.PutCode(code("h1", subject="bob", client_id="c2")))
    assert store.perform(fx.RevokeSubject("alice", T0)) == 0
    assert store.perform(fx.DeleteClient("c1", T0)) is False
    assert store.perform(fx.GetCode("h1")) == code("h1", subject="bob", client_id="c2")
    assert store.perform(fx.RevokeSubject("bob", T0)) == 0
    assert store.perform(fx.GetCode("h1")) is None


# -- refresh rotation (TK-07) -------------------------------------------------------------------------


def test_tk07_rotate_moves_the_family_forward(store: Any) -> None:
    _seed_grant(store, grant())
    result = store.perform(rotate(now=T0 + 100, idle=T0 + 100 + 14 * DAY))
    assert result.outcome == "rotated"
    expected = grant(
        refresh_generation=1, refresh_hash="r1", rotated_at=T0 + 100, refresh_expires_at=T0 + 100 + 14 * DAY
    )
    assert result.grant == expected
    assert store.perform(fx.GetGrant("g1")) == expected


def test_tk07_rotate_caps_idle_expiry_at_absolute_expiry(store: Any) -> None:
    _seed_grant(store, grant(expires_at=T0 + 1000, refresh_expires_at=T0 + 1000))
    result = store.perform(rotate(now=T0 + 100, idle=T0 + 5000))
    assert result.outcome == "rotated"
    assert result.grant.refresh_expires_at == T0 + 1000


@pytest.mark.parametrize("late", [0, 10])
def test_tk07_retry_within_grace_is_retried_without_write(store: Any, late: int) -> None:
    _seed_grant(store, grant())
    rotated = store.perform(rotate(now=T0 + 100)).grant
    result = store.perform(rotate(now=T0 + 100 + late, successor="r1-again", grace=10))
    assert result == fx.Rotation("retried", rotated)
    assert store.perform(fx.GetGrant("g1")) == rotated


def test_tk07_retry_after_grace_is_reuse_and_revokes(store: Any) -> None:
    _seed_grant(store, grant())
    rotated = store.perform(rotate(now=T0 + 100)).grant
    result = store.perform(rotate(now=T0 + 111, grace=10))
    assert result == fx.Rotation("reused", attrs.evolve(rotated, revoked_at=T0 + 111))
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 111
    # The family is dead: even its current token is refused now.
    after = store.perform(rotate(generation=1, presented="r1", successor="r2", now=T0 + 112))
    assert after.outcome == "unknown"
    assert after.grant.revoked_at == T0 + 111


def test_tk07_grace_zero_disables_retries(store: Any) -> None:
    """A grace window of 0 turns off retries: even a same-second retry is reuse."""
    _seed_grant(store, grant())
    store.perform(rotate(now=T0 + 100, grace=0))
    assert store.perform(rotate(now=T0 + 100, grace=0)).outcome == "reused"
    assert store.perform(fx.GetGrant("g1")).revoked_at == T0 + 100


@pytest.mark.parametrize(
    ("generation", "presented"),
    [(0, "r0"), (2, "forged"), (3, "r3")],
    ids=["older-generation", "current-generation-wrong-hash", "future-generation"],
)
def test_tk07_any_other_presentation_is_reuse(store: Any, generation: int, presented: str) -> None:
    _seed_grant(store, grant())
    store.perform(rotate(now=T0 + 100))
    store.perform(rotate(generation=1, presented="r1", successor="r2", now=T0 + 200))
    result = store.perform(rotate(generation=generation, presented=presented, successor="x", now=T0 + 201, grace=300))
    assert result.outcome == "reused"
    assert result.grant.revoked_at == T0 + 201
    assert store.perform(fx.GetGrant("g1")) == result.grant


def test_rotate_unknown_and_revoked_grants(store: Any) -> None:
    assert store.perform(rotate(grant_id="missing")) == fx.Rotation("unknown", None)
    g = _seed_grant(store, grant())
    store.perform(fx.RevokeGrant("g1", T0 + 1))
    result = store.perform(rotate())
    assert result == fx.Rotation("unknown", attrs.evolve(g, revoked_at=T0 + 1))


def test_rotate_absolute_expiry_edge(store: Any) -> None:
    g = _seed_grant(store, grant(expires_at=T0 + 500, refresh_expires_at=T0 + 500))
    assert store.perform(rotate(now=T0 + 500)) == fx.Rotation("unknown", g)
    assert store.perform(fx.GetGrant("g1")) == g
    assert store.perform(rotate(now=T0 + 499)).outcome == "rotated"


def test_rotate_idle_expiry_edge(store: Any) -> None:
    g = _seed_grant(store, grant(refresh_expires_at=T0 + 300))
    assert store.perform(rotate(now=T0 + 300)) == fx.Rotation("unknown", g)
    assert store.perform(fx.GetGrant("g1")) == g
    assert store.perform(rotate(now=T0 + 299)).outcome == "rotated"


def test_rotate_superseded_token_after_idle_expiry_is_reuse(store: Any) -> None:
    # MemoryStore checks idle expiry only for the current token, so a superseded token presented
    # after the family went idle still counts as reuse (and revokes). Every backend agrees.
    _seed_grant(store, grant())
    store.perform(rotate(now=T0 + 100, idle=T0 + 200))
    assert store.perform(rotate(now=T0 + 250)).outcome == "reused"


# -- access-token revocation -----------------------------------------------------------------------


def test_is_token_revoked(store: Any) -> None:
    _seed_grant(store, grant("live"))
    _seed_grant(store, grant("dead"))
    store.perform(fx.RevokeGrant("dead", T0))
    assert store.perform(fx.IsTokenRevoked("j1", "live")) is False
    assert store.perform(fx.RevokeAccessToken("j1", T0 + 600)) is None
    assert store.perform(fx.IsTokenRevoked("j1", "live")) is True
    assert store.perform(fx.IsTokenRevoked("j2", "live")) is False
    assert store.perform(fx.IsTokenRevoked("j2", "dead")) is True
    assert store.perform(fx.IsTokenRevoked("j2", "gone")) is True


def test_an_ended_session_is_kept_apart_from_revoked_tokens(store: Any) -> None:
    """``EndSession`` is what ``IsSessionEnded`` sees, and only it: a session hash spelled like a
    revoked jti is not ended, nor is a token revoked by an ended session's hash."""
    _seed_grant(store, grant("live"))
    assert store.perform(fx.IsSessionEnded("s1")) is False
    assert store.perform(fx.EndSession("s1", T0 + 600)) is None
    assert store.perform(fx.IsSessionEnded("s1")) is True
    assert store.perform(fx.IsSessionEnded("s2")) is False
    assert store.perform(fx.IsTokenRevoked("s1", "live")) is False
    store.perform(fx.RevokeAccessToken("j1", T0 + 600))
    assert store.perform(fx.IsSessionEnded("j1")) is False
    assert store.perform(fx.EndSession("s1", T0 + 300)) is None  # ending it again changes nothing
    assert store.perform(fx.IsSessionEnded("s1")) is True


def test_memory_store_point_reads_take_no_lock_and_writes_wait_for_it() -> None:
    """The memory store answers a point read while another thread holds its lock (a writer
    mid-effect), and a write waits for the lock; both see the state a write left whole."""
    store = MemoryStore()
    _seed_grant(store, grant("g"))
    done: list[object] = []
    read: list[object] = []
    with store._lock:  # a write effect in progress elsewhere
        reader = threading.Thread(
            target=lambda: read.extend([store.perform(fx.IsTokenRevoked("j1", "g")), store.perform(fx.GetGrant("g"))])
        )
        reader.start()
        reader.join(5)
        assert not reader.is_alive() and read == [False, grant("g")]  # answered, lock or not
        writer = threading.Thread(target=lambda: done.append(store.perform(fx.RevokeGrant("g", T0))))
        writer.start()
        writer.join(0.2)
        assert writer.is_alive() and done == []  # the write is held back by the lock
    writer.join(5)
    assert done == [True]
    assert store.perform(fx.IsTokenRevoked("j1", "g")) is True


def test_revoked_jti_lives_until_its_latest_expiry(store: Any) -> None:
    _seed_grant(store, grant())
    store.perform(fx.RevokeAccessToken("j1", T0 + 600))
    store.perform(fx.RevokeAccessToken("j1", T0 + 300))  # an earlier expiry never shortens it
    store.purge(T0 + 599)
    assert store.perform(fx.IsTokenRevoked("j1", "g1")) is True
    store.purge(T0 + 600)
    assert store.perform(fx.IsTokenRevoked("j1", "g1")) is False


# -- signing keys --------------------------------------------------------------------------------------


def test_signing_keys_compare_and_set(store: Any) -> None:
    assert store.perform(fx.GetSigningKeys()) == ()
    k1, k2, k3 = key("k1"), key("k2", T0 + DAY), key("k3", T0 + DAY)
    assert store.perform(fx.SwapSigningKeys((), (k1,))) == (k1,)
    # A stale expectation loses and learns the winner's set.
    assert store.perform(fx.SwapSigningKeys((), (k3,))) == (k1,)
    assert store.perform(fx.SwapSigningKeys(("k1",), (k2, k1))) == (k2, k1)
    got = store.perform(fx.GetSigningKeys())
    assert got == (k2, k1)
    assert isinstance(got[0].private_pem, bytes)
    assert store.perform(fx.SwapSigningKeys(("k1", "k2"), (k3,))) == (k2, k1)  # order matters
    assert store.perform(fx.SwapSigningKeys(("k2", "k1"), ())) == ()


# -- rate limits ------------------------------------------------------------------------------------------


def test_hit_counts_within_fixed_windows(store: Any) -> None:
    assert [store.perform(fx.Hit("login:alice", 3, 60, T0 + s)) for s in (0, 1, 2, 3)] == [True, True, True, False]
    assert store.perform(fx.Hit("login:bob", 3, 60, T0)) is True  # buckets are independent
    start = (T0 // 60 + 1) * 60  # the next window starts here
    assert store.perform(fx.Hit("login:alice", 3, 60, start - 1)) is False
    assert store.perform(fx.Hit("login:alice", 3, 60, start)) is True
    assert store.perform(fx.Hit("zero", 0, 60, T0)) is False


def _windows_held(store: Any, after: int) -> int:
    """How many rate-limit windows ``store`` holds, all of which end before ``after`` (the SQL and
    Redis stores say how many rows or keys ``purge`` deleted; Redis's scan finds keys without a TTL too)."""
    if isinstance(store, MemoryStore):
        return len(store.hits)
    return int(store.purge(after)["rate_limits"])


def test_hit_with_step_zero_reads_the_count_and_stores_nothing(store: Any) -> None:
    """A sign-in asks whether a username's failures are still under its limit without counting the
    attempt (step 0), and counts a failure afterwards (step 1)."""
    assert store.perform(fx.Hit("login:carol", 0, 60, T0, step=0)) is True  # nothing counted: 0 <= 0
    assert store.perform(fx.Hit("login:carol", 5, 60, T0 + 1, step=0)) is True
    assert _windows_held(store, T0 + DAY) == 0  # no row, key or entry for a window with no count
    assert store.perform(fx.Hit("login:carol", 2, 60, T0)) is True  # count 1
    for _ in range(3):  # reading never adds
        assert store.perform(fx.Hit("login:carol", 1, 60, T0 + 2, step=0)) is True  # 1 <= 1
        assert store.perform(fx.Hit("login:carol", 0, 60, T0 + 2, step=0)) is False  # 1 > 0
    assert store.perform(fx.Hit("login:carol", 2, 60, T0 + 3)) is True  # count 2
    assert store.perform(fx.Hit("login:carol", 1, 60, T0 + 3, step=0)) is False
    start = (T0 // 60 + 1) * 60
    assert store.perform(fx.Hit("login:carol", 0, 60, start, step=0)) is True  # a new window starts at 0
    assert store.perform(fx.Hit("login:dave", 3, 60, T0, step=2)) is True  # a step of 2 counts two
    assert store.perform(fx.Hit("login:dave", 3, 60, T0, step=2)) is False  # 4 > 3
    assert store.perform(fx.Hit("login:dave", 4, 60, T0, step=0)) is True  # 4 <= 4
    assert _windows_held(store, T0 + DAY) == 2  # carol's and dave's counted windows, no more


def test_hit_with_a_negative_step_gives_back_and_never_goes_below_zero(store: Any) -> None:
    """A successful sign-in gives its attempt back (step -1): the count goes down by at most what
    it holds, and a window with nothing counted (one that ended between the two, say) stays absent."""
    assert store.perform(fx.Hit("login:erin", 0, 60, T0, step=-1)) is True  # nothing held, nothing made
    assert _windows_held(store, T0 + DAY) == 0
    assert store.perform(fx.Hit("login:erin", 3, 60, T0, step=3)) is True  # count 3
    assert store.perform(fx.Hit("login:erin", 2, 60, T0 + 1, step=-1)) is True  # count 2: 2 <= 2
    assert store.perform(fx.Hit("login:erin", 1, 60, T0 + 1, step=0)) is False  # 2 > 1
    assert store.perform(fx.Hit("login:erin", 0, 60, T0 + 2, step=-5)) is True  # count 0, not -3
    assert store.perform(fx.Hit("login:erin", 0, 60, T0 + 2, step=1)) is False  # count 1: 1 > 0
    start = (T0 // 60 + 1) * 60
    assert store.perform(fx.Hit("login:erin", 0, 60, start, step=-1)) is True  # the next window: nothing held
    assert store.perform(fx.Hit("login:frank", 0, 60, start, step=-1)) is True
    assert _windows_held(store, T0 + DAY) == 1  # erin's first window only


def test_hit_window_end_and_step_type() -> None:
    with pytest.raises(TypeError, match="step"):
        fx.Hit("b", 1, 60, T0, step=1.5)  # type: ignore[arg-type]
    start = (T0 // 60 + 1) * 60  # the next window starts here
    assert fx.Hit("b", 1, 60, T0).window_end == fx.Hit("b", 1, 60, start - 1).window_end == start
    assert fx.Hit("b", 1, 60, start).window_end == start + 60


# -- purge -------------------------------------------------------------------------------------------------


def test_purge_drops_what_has_expired(store: Any) -> None:
    now = T0 + 1000
    store.perform(fx.PutPending(pending("old", expires_at=now)))
    store.perform(fx.PutPending(pending("new", expires_at=now + 1)))
    store.perform(fx.PutCode(code("old", expires_at=now)))
    store.perform(fx.PutCode(code("new", expires_at=now + 1)))
    _seed_grant(store, grant("old", expires_at=now))
    _seed_grant(store, grant("new", expires_at=now + 1))
    store.perform(fx.RevokeAccessToken("old", now))
    store.perform(fx.RevokeAccessToken("new", now + 1))
    store.perform(fx.EndSession("old", now))
    store.perform(fx.EndSession("new", now + 1))
    assert store.perform(fx.Hit("past", 1, 100, now - 1)) is True  # window ends at now
    assert store.perform(fx.Hit("live", 1, 100, now)) is True  # window ends at now + 100
    store.perform(fx.PutClient(client("registered")))
    store.perform(fx.PutClient(client("fetched-old", kind="document", expires_at=now)))
    store.perform(fx.PutClient(client("fetched-new", kind="document", expires_at=now + 1)))

    store.purge(now)

    assert store.perform(fx.GetPending("old", T0)) is None
    assert store.perform(fx.GetPending("new", T0)) is not None
    assert store.perform(fx.GetCode("old")) is None
    assert store.perform(fx.GetCode("new")) is not None
    assert store.perform(fx.GetGrant("old")) is None
    assert store.perform(fx.GetGrant("new")) is not None
    assert store.perform(fx.IsTokenRevoked("old", "new")) is False
    assert store.perform(fx.IsTokenRevoked("new", "new")) is True
    assert store.perform(fx.IsSessionEnded("old")) is False
    assert store.perform(fx.IsSessionEnded("new")) is True
    assert store.perform(fx.Hit("past", 1, 100, now - 1)) is True  # a fresh count
    assert store.perform(fx.Hit("live", 1, 100, now)) is False
    assert store.perform(fx.GetClient("registered")) is not None
    assert [c.client_id for c in store.perform(fx.ListClients())] == ["registered", "fetched-new"]


# -- races (threads: one store object each, same database) ------------------------------------------------

RACERS = 50


def _race(
    opener: Opener, effect_for: Callable[[int], fx.Effect], n: int = RACERS, stores: list[Any] | None = None
) -> list[Any]:
    """Run ``n`` effects at once, each from its own thread and its own store object (``stores``,
    to race the same ones again, or new ones)."""
    stores = stores or [opener() for _ in range(n)]
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        barrier.wait(timeout=30)
        return stores[i].perform(effect_for(i))

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_tk04_concurrent_consume_code_has_exactly_one_winner(opener: Opener) -> None:
    store = opener()
    store.perform(fx.PutCode(code()))
    results = _race(opener, lambda i: fx.ConsumeCode("h1", grant(f"g{i}")))
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.perform(fx.ListGrants()) == (grant(f"g{winner}"),)


@pytest.mark.parametrize("revoke", ["subject", "client"])
def test_no_grant_survives_a_revocation_racing_redemptions(opener: Opener, revoke: str) -> None:
    """Codes of one subject at one client are redeemed by many threads while another revokes the
    subject (or deletes the client): every redemption either came first, and its grant is revoked,
    or came after, and found its code gone; no grant is live afterwards."""
    store = opener()
    store.perform(fx.PutClient(client("c1")))
    racers = [opener() for _ in range(RACERS)]
    for round_ in range(3):
        subject = f"user{round_}"
        for i in range(1, RACERS):
            store.perform(fx.PutCode(code(f"h{round_}-{i}", subject=subject, grant_id=f"g{round_}-{i}")))

        def effect(i: int, subject: str = subject, round_: int = round_) -> fx.Effect:
            if i == RACERS // 2:  # started with the others, so it runs among them
                return fx.RevokeSubject(subject, T0 + 1) if revoke == "subject" else fx.DeleteClient("c1", T0 + 1)
            return fx.ConsumeCode(f"h{round_}-{i}", grant(f"g{round_}-{i}", subject=subject))

        results = _race(opener, effect, stores=racers)
        redeemed = sum(r is True for i, r in enumerate(results) if i != RACERS // 2)
        grants = store.perform(fx.ListGrants(subject=subject))
        assert [g.grant_id for g in grants if g.revoked_at is None] == []
        assert len(grants) == redeemed
        if revoke == "subject":
            assert results[RACERS // 2] == redeemed  # it revoked exactly the grants that exist


def test_concurrent_take_pending_has_exactly_one_winner(opener: Opener) -> None:
    store = opener()
    store.perform(fx.PutPending(pending()))
    results = _race(opener, lambda i: fx.TakePending("t1", T0))
    assert sum(r is not None for r in results) == 1


def test_tk07_concurrent_rotation_rotates_once_and_retries_within_grace(opener: Opener) -> None:
    store = opener()
    _seed_grant(store, grant())
    results = _race(opener, lambda i: rotate(successor="r1", now=T0 + 100, grace=10))
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {"rotated": 1, "retried": RACERS - 1}
    final = store.perform(fx.GetGrant("g1"))
    assert (final.refresh_generation, final.refresh_hash, final.revoked_at) == (1, "r1", None)
    assert all(r.grant == final for r in results)


def test_tk07_concurrent_replay_without_grace_revokes_once(opener: Opener) -> None:
    store = opener()
    _seed_grant(store, grant())
    assert store.perform(rotate(now=T0 + 100, grace=0)).outcome == "rotated"
    results = _race(opener, lambda i: rotate(now=T0 + 101, grace=0))
    outcomes = Counter(r.outcome for r in results)
    assert outcomes == {"reused": 1, "unknown": RACERS - 1}
    final = store.perform(fx.GetGrant("g1"))
    assert final.revoked_at == T0 + 101
    assert all(r.grant == final for r in results)


def test_concurrent_hits_never_exceed_the_limit(opener: Opener) -> None:
    results = _race(opener, lambda i: fx.Hit("b", 10, 60, T0))
    assert results.count(True) == 10


def test_concurrent_key_rotation_is_decided_once(opener: Opener) -> None:
    store = opener()
    store.perform(fx.SwapSigningKeys((), (key("k0"),)))
    results = _race(opener, lambda i: fx.SwapSigningKeys(("k0",), (key(f"new{i}"), key("k0"))), n=20)
    assert len(set(results)) == 1
    assert results[0][0].kid.startswith("new")
    assert store.perform(fx.GetSigningKeys()) == results[0]


# -- races across processes ------------------------------------------------------------------------------------

PROCESSES = 4


def _process_racer(
    backend_name: str, directory: str, effect: fx.Effect, threads: int, barrier: Any, results: Any
) -> None:
    """Runs in a spawned process: ``threads`` threads sharing one store object perform ``effect``."""
    store = BY_NAME[backend_name].connect(Path(directory))()
    local = threading.Barrier(threads)

    def one(_: int) -> Any:
        local.wait(timeout=60)
        return store.perform(effect)

    barrier.wait(timeout=120)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(one, range(threads)))
    results.put([o.outcome if isinstance(o, fx.Rotation) else o for o in outcomes])


def _race_processes(backend: Backend, directory: Path, effect: fx.Effect) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    shares = [RACERS // PROCESSES + (1 if i < RACERS % PROCESSES else 0) for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_process_racer, args=(backend.name, str(directory), effect, n, barrier, results))
        for n in shares
    ]
    for p in procs:
        p.start()
    collected: list[Any] = []
    for _ in procs:
        collected.extend(results.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(collected) == RACERS
    return collected


@pytest.fixture
def multiprocess_backend(backend: Backend) -> Backend:
    if not backend.processes:
        pytest.skip(f"{backend.name} is not shared between processes")
    return backend


def test_tk04_consume_code_across_processes_has_exactly_one_winner(
    multiprocess_backend: Backend, opener: Opener, tmp_path: Path
) -> None:
    store = opener()
    store.perform(fx.PutCode(code()))
    results = _race_processes(multiprocess_backend, tmp_path, fx.ConsumeCode("h1", grant("g1")))
    assert results.count(True) == 1
    assert results.count(False) == RACERS - 1
    assert store.perform(fx.GetCode("h1")).consumed is True


def test_tk07_rotation_across_processes_rotates_once(
    multiprocess_backend: Backend, opener: Opener, tmp_path: Path
) -> None:
    store = opener()
    _seed_grant(store, grant())
    results = _race_processes(multiprocess_backend, tmp_path, rotate(now=T0 + 100, grace=10))
    assert Counter(results) == {"rotated": 1, "retried": RACERS - 1}
    assert store.perform(fx.GetGrant("g1")).refresh_generation == 1


# -- every backend answers like MemoryStore (differential, property-based) --------------------------------------

_ids = st.sampled_from(["a", "b", "c"])
_times = st.integers(T0, T0 + 40)
_subjects = st.sampled_from(["alice", "bob"])
_effects = st.one_of(
    st.builds(lambda c: fx.PutClient(client(c)), _ids),
    st.builds(fx.GetClient, _ids),
    st.builds(fx.DeleteClient, _ids, _times),
    st.just(fx.ListClients()),
    st.builds(lambda t, e: fx.PutPending(pending(t, expires_at=e)), _ids, _times),
    st.builds(fx.GetPending, _ids, _times),
    st.builds(fx.TakePending, _ids, _times),
    st.builds(lambda h, g, s, c: fx.PutCode(code(h, grant_id=g, subject=s, client_id=c)), _ids, _ids, _subjects, _ids),
    st.builds(fx.GetCode, _ids),
    st.builds(
        lambda h, g, s, c: fx.ConsumeCode(h, grant(g, subject=s, client_id=c, expires_at=T0 + 30)),
        _ids,
        _ids,
        _subjects,
        _ids,
    ),
    st.builds(fx.GetGrant, _ids),
    st.builds(fx.RevokeGrant, _ids, _times),
    st.builds(fx.RevokeSubject, _subjects, _times),
    st.builds(fx.ListGrants, st.none() | _subjects, st.none() | _ids),
    st.builds(
        lambda g, gen, n, grace: rotate(g, gen, f"r{gen}", f"r{gen + 1}", n, grace, n + 5),
        _ids,
        st.integers(0, 3),
        _times,
        st.integers(0, 5),
    ),
    st.builds(fx.RevokeAccessToken, _ids, _times),
    st.builds(fx.IsTokenRevoked, _ids, _ids),
    st.just(fx.GetSigningKeys()),
    st.builds(
        lambda exp, new: fx.SwapSigningKeys(tuple(exp), tuple(key(k) for k in new)),
        st.lists(_ids, max_size=2),
        st.lists(_ids, max_size=2),
    ),
    st.builds(fx.Hit, _ids, st.integers(0, 3), st.sampled_from([1, 7, 60]), _times, st.integers(0, 2)),
)
_steps = st.lists(st.one_of(_effects, st.builds(lambda t: ("purge", t), _times)), max_size=40)


@pytest.mark.parametrize("name", [b.name for b in BACKENDS if b.name != "memory"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps)
def test_every_backend_answers_like_memory_store(
    name: str, tmp_path_factory: pytest.TempPathFactory, steps: list[Any]
) -> None:
    """Invariant: for any sequence of up to 40 effects over three ids, two subjects and a
    40-second span (clients, pending requests, codes, grants, rotations with a grace of 0 to 5
    seconds, revocations, signing-key swaps, rate-limit hits), with purges between them, the
    backend answers every effect exactly as MemoryStore, the reference, does."""
    reference = MemoryStore()
    candidate = BY_NAME[name].connect(tmp_path_factory.mktemp(name))()
    try:
        for step in steps:
            if isinstance(step, tuple):
                reference.purge(step[1])
                candidate.purge(step[1])
                continue
            assert candidate.perform(step) == reference.perform(step), step
    finally:
        getattr(candidate, "close", lambda: None)()


# -- SQLite specifics -----------------------------------------------------------------------------------------------


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def test_sqlite_connections_keep_a_larger_page_cache(tmp_path: Path) -> None:
    """Every pooled connection's page cache is CACHE_KIB, not SQLite's 2 MiB default: a large
    store's lookups spread over its table would otherwise read most pages from the file."""
    from kavach.stores.sqlite import CACHE_KIB

    store = SQLiteStore(tmp_path / "k.db")
    try:
        with store._connection() as first, store._connection() as second:
            sizes = [db.execute("PRAGMA cache_size").fetchone()[0] for db in (first, second)]
        assert sizes == [-CACHE_KIB, -CACHE_KIB] and CACHE_KIB > 2000
    finally:
        store.close()


def test_sqlite_file_is_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    db = _raw(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()
    with SQLiteStore(path) as again:  # reopening migrates nothing and keeps data
        assert again.schema_version == SCHEMA_VERSION


def test_sqlite_stores_secrets_only_as_given_digests(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    with SQLiteStore(path) as store:
        store.perform(
            fx.PutClient(client(secret_hash="digest-of-secret", token_endpoint_auth_method="client_secret_post"))
        )
        _seed_grant(store, grant(refresh_hash="digest-of-refresh"))
    db = _raw(path)
    assert db.execute("SELECT secret_hash FROM clients").fetchone() == ("digest-of-secret",)
    assert db.execute("SELECT refresh_hash FROM grants").fetchone() == ("digest-of-refresh",)
    db.close()


# Version 1 of the schema, written out by hand: what a kavachOS of that version left on disk.
_V1_SCHEMA = [
    """CREATE TABLE clients (seq INTEGER PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, redirect_uris TEXT NOT NULL,
        token_endpoint_auth_method TEXT NOT NULL, secret_hash TEXT, grant_types TEXT NOT NULL,
        response_types TEXT NOT NULL, client_name TEXT NOT NULL, scope TEXT, kind TEXT NOT NULL,
        issued_at INTEGER NOT NULL, secret_expires_at INTEGER NOT NULL, metadata TEXT NOT NULL, expires_at INTEGER)""",
    """CREATE TABLE pending (ticket_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, redirect_uri TEXT NOT NULL,
        redirect_uri_given INTEGER NOT NULL, state TEXT, code_challenge TEXT NOT NULL, resources TEXT NOT NULL,
        scopes TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL)""",
    """CREATE TABLE codes (code_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, redirect_uri TEXT NOT NULL,
        redirect_uri_given INTEGER NOT NULL, code_challenge TEXT NOT NULL, resources TEXT NOT NULL,
        scopes TEXT NOT NULL, subject TEXT NOT NULL, grant_id TEXT NOT NULL, issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, consumed INTEGER NOT NULL)""",
    """CREATE TABLE grants (seq INTEGER PRIMARY KEY, grant_id TEXT NOT NULL UNIQUE, subject TEXT NOT NULL,
        client_id TEXT NOT NULL, resources TEXT NOT NULL, scopes TEXT NOT NULL, created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, refresh_generation INTEGER NOT NULL, refresh_hash TEXT NOT NULL,
        refresh_expires_at INTEGER NOT NULL, rotated_at INTEGER NOT NULL, revoked_at INTEGER)""",
    "CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)",
    """CREATE TABLE signing_keys (position INTEGER PRIMARY KEY, kid TEXT NOT NULL, alg TEXT NOT NULL,
        private_pem BLOB NOT NULL, created_at INTEGER NOT NULL, signs_until INTEGER NOT NULL,
        publish_until INTEGER NOT NULL)""",
]


def test_sqlite_migrates_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = _raw(path)
    for statement in _V1_SCHEMA:
        db.execute(statement)
    db.execute(
        "INSERT INTO clients (client_id, redirect_uris, token_endpoint_auth_method, grant_types, response_types,"
        " client_name, kind, issued_at, secret_expires_at, metadata)"
        """ VALUES ('old', '["https://old.example/cb"]', 'none', '["authorization_code"]', '["code"]',"""
        " 'Old', 'static', 5, 0, '{}')"
    )
    db.execute("PRAGMA user_version = 1")
    db.close()

    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.perform(fx.GetClient("old")) == Client(
            "old",
            ("https://old.example/cb",),
            grant_types=("authorization_code",),
            client_name="Old",
            kind="static",
            issued_at=5,
        )
        assert store.perform(fx.Hit("b", 1, 60, T0)) is True  # the table version 2 added
    db = _raw(path)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    assert {"grants_subject", "rate_limits_window_end", "codes_expires_at"} <= indexes
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


def test_sqlite_migrates_an_empty_version_0_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with SQLiteStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.perform(fx.PutClient(client()))
        assert store.perform(fx.GetClient("c1")) == client()


def test_sqlite_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    barrier = threading.Barrier(20)

    def open_one(i: int) -> int:
        barrier.wait(timeout=30)
        with SQLiteStore(path) as store:
            store.perform(fx.PutClient(client(f"c{i}")))
            return int(store.schema_version)

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert list(pool.map(open_one, range(20))) == [SCHEMA_VERSION] * 20
    with SQLiteStore(path) as store:
        assert len(store.perform(fx.ListClients())) == 20


def _reader_holding(path: Path) -> sqlite3.Connection:
    """A connection to a new rollback-journal file, inside a read transaction: while it is open
    nobody can switch the file to WAL."""
    db = _raw(path)
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return db


@pytest.mark.parametrize("answer", ["busy", "unchanged"])
def test_sqlite_open_retries_the_switch_to_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    """When a new file is opened by many connections at once, SQLite may answer the switch to WAL
    with an immediate SQLITE_BUSY (no busy handler) or leave the mode as it was; both are retried."""
    import kavach.stores.sqlite as sqlite_store

    real = sqlite_store._scalar
    refused: list[str] = []

    def first_switch_refused(db: sqlite3.Connection, sql: str) -> Any:
        if sql == "PRAGMA journal_mode = WAL" and not refused:
            refused.append(sql)
            if answer == "unchanged":
                return "delete"
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
            raise busy
        return real(db, sql)

    monkeypatch.setattr(sqlite_store, "_scalar", first_switch_refused)
    path = tmp_path / "raced.db"
    with SQLiteStore(path) as store:
        store.perform(fx.PutClient(client("c1")))
    assert refused
    db = _raw(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_sqlite_open_gives_up_on_wal_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    reader = _reader_holding(path)
    try:
        with pytest.raises(StoreUnavailable, match="is locked"):
            SQLiteStore(path, busy_timeout=0.2)
    finally:
        reader.close()
    db = _raw(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left as it was
    db.close()


def test_sqlite_refuses_a_newer_schema_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SQLiteStore(path).close()
    db = _raw(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        SQLiteStore(path)
    db = _raw(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_sqlite_refuses_foreign_databases(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    db = _raw(other)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.close()
    with pytest.raises(SQLiteStoreError, match="not a kavachOS"):
        SQLiteStore(other)
    tagged = tmp_path / "tagged.db"
    db = _raw(tagged)
    db.execute("PRAGMA application_id = 42")
    db.close()
    with pytest.raises(SQLiteStoreError, match="another application"):
        SQLiteStore(tagged)


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(SQLiteStoreError, match=r"garbage\.db"):
        SQLiteStore(path)


def test_sqlite_path_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SQLiteStoreError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "k.db")
    with pytest.raises(SQLiteStoreError, match="is a directory"):
        SQLiteStore(tmp_path)
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore(tmp_path / "k.db", busy_timeout=-1)


def test_sqlite_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    store.close()
    with pytest.raises(SQLiteStoreError, match="closed"):
        store.perform(fx.ListClients())


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    db = _raw(path)
    db.execute("BEGIN EXCLUSIVE")
    return db


def test_sqlite_locked_past_busy_timeout_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    store.perform(fx.PutCode(code()))
    holder = _hold_write_lock(path)
    locked = re.escape(f"SQLite database {str(path)!r} is unavailable: database is locked")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=locked):
        store.perform(fx.ConsumeCode("h1", grant()))
    # A hang guard only (25 times the busy_timeout); that the store waits for the lock the whole
    # busy_timeout is the next test's to show, by a lock released meanwhile.
    assert time.monotonic() - started < 5, "hung: busy_timeout did not end the wait for the lock"
    with pytest.raises(StoreUnavailable, match=locked):
        asyncio.run(store.aperform(fx.Hit("b", 1, 60, T0)))
    assert store.perform(fx.GetCode("h1")).consumed is False  # WAL: readers still read
    holder.execute("ROLLBACK")
    holder.close()
    # Nothing was left half-done: the connection is usable and the effect now succeeds once.
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    assert store.perform(fx.ConsumeCode("h1", grant())) is False
    store.close()


def test_sqlite_a_lock_released_within_busy_timeout_is_waited_for(tmp_path: Path) -> None:
    """``busy_timeout`` is how long an effect waits for another connection's lock: a write lock
    released halfway through it (by a timer) lets the effect through, not refused early."""
    path = tmp_path / "k.db"
    store = SQLiteStore(path, busy_timeout=2)
    store.perform(fx.PutCode(code()))
    holder = _hold_write_lock(path)
    release = threading.Timer(1.0, lambda: (holder.execute("ROLLBACK"), holder.close()))
    release.start()
    try:
        assert store.perform(fx.ConsumeCode("h1", grant())) is True
    finally:
        release.join()
        store.close()


def test_sqlite_no_connection_free_within_busy_timeout_is_store_unavailable(tmp_path: Path) -> None:
    """``max_connections`` bounds the pool and ``busy_timeout`` the wait for a free connection
    (SQLiteStore's docstring): with every connection lent out, an effect is an outage (503), not
    one more connection past the bound."""
    store = SQLiteStore(tmp_path / "k.db", busy_timeout=0.2, max_connections=1)
    busy = pytest.raises(StoreUnavailable, match="no SQLite connection became free")
    with store._connection(), busy:  # the pool's only connection, lent out until the block ends
        store.perform(fx.GetClient("c1"))
    assert store.perform(fx.GetClient("c1")) is None
    store.close()


def test_sqlite_writers_waiting_for_a_lock_use_up_the_pool_and_the_one_refused_writes_nothing(tmp_path: Path) -> None:
    """The pool bound reached through ``perform`` alone: a writer keeps its connection for the
    whole ``busy_timeout`` it waits for another connection's write lock. With one connection
    and three writers started together, while the first waits the lock out the others wait for
    the connection; the one taking it next holds it a whole ``busy_timeout`` more, so the wait of
    the last ends first: no connection became free (the threads start together, well within the
    two seconds). Each writer is an outage; none writes."""
    path = tmp_path / "k.db"
    store = SQLiteStore(path, busy_timeout=2, max_connections=1)
    holder = _hold_write_lock(path)
    start = threading.Barrier(3)

    def write(n: int) -> str:
        start.wait(timeout=30)
        try:
            store.perform(fx.PutClient(client(f"c{n}")))
        except StoreUnavailable as exc:
            return str(exc)
        return "written"

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            refusals = list(pool.map(write, range(3)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    no_connection = "no SQLite connection became free within the busy timeout"
    assert all(r == no_connection or r.endswith("is unavailable: database is locked") for r in refusals), refusals
    assert no_connection in refusals
    assert store.perform(fx.ListClients()) == ()
    store.close()


def test_sqlite_an_effect_failing_part_way_writes_nothing(tmp_path: Path) -> None:
    """Every effect is atomic (kavach_core.effects; ``BEGIN IMMEDIATE`` ... ``COMMIT``, any failure
    rolled back and raised): a key rotation whose second key the table refuses (NOT NULL) leaves
    the keys as they were, not the new set cut short."""
    store = SQLiteStore(tmp_path / "k.db")
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    refused = attrs.evolve(key("k3"), alg=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        store.perform(fx.SwapSigningKeys(("k1",), (key("k2"), refused)))
    assert store.perform(fx.GetSigningKeys()) == (key("k1"),)
    store.close()


def test_sqlite_aperform_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SQLiteStore(path, busy_timeout=5)
    holder = _hold_write_lock(path)
    release = threading.Timer(0.4, lambda: (holder.execute("ROLLBACK"), holder.close()))

    async def main() -> tuple[int, Any]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        try:
            result = await store.aperform(fx.Hit("b", 1, 60, T0))  # waits ~0.4 s for the lock
        finally:
            done.set()
            await task
        return ticks, result

    release.start()
    ticks, result = asyncio.run(main())
    release.join()
    assert result is True
    assert ticks >= 10
    store.close()


def test_sqlite_purge_drops_expired_metadata_documents_only(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "k.db") as store:
        store.perform(fx.PutClient(client("https://app.example/old.json", kind="document", expires_at=T0)))
        store.perform(fx.PutClient(client("https://app.example/new.json", kind="document", expires_at=T0 + 1)))
        store.perform(fx.PutClient(client("registered")))
        _seed_grant(store, grant(client_id="https://app.example/old.json"))
        counts = store.purge(T0)
        assert counts["clients"] == 1
        assert [c.client_id for c in store.perform(fx.ListClients())] == ["https://app.example/new.json", "registered"]
        assert store.perform(fx.GetGrant("g1")).revoked_at is None  # a cache entry went, not the grant


def test_sqlite_memory_database_is_private_to_its_store() -> None:
    first, second = SQLiteStore(":memory:"), SQLiteStore(":memory:")
    first.perform(fx.PutClient(client()))
    assert second.perform(fx.GetClient("c1")) is None
    first.close()
    second.close()


def test_hit_with_a_negative_step_keeps_what_it_gave_back(store: Any) -> None:
    """What a negative step gives back is gone from the window's count for good, not only from the
    answer to that one call: an attempt given back (a successful sign-in) makes room for one more."""
    assert store.perform(fx.Hit("login:gina", 3, 60, T0, step=3)) is True  # count 3: the limit reached
    assert store.perform(fx.Hit("login:gina", 3, 60, T0 + 1, step=-1)) is True  # count 2
    assert store.perform(fx.Hit("login:gina", 2, 60, T0 + 1, step=0)) is True  # 2 <= 2: the 2 was kept
    assert store.perform(fx.Hit("login:gina", 3, 60, T0 + 2)) is True  # count 3 again, within the limit
    assert store.perform(fx.Hit("login:gina", 3, 60, T0 + 3)) is False  # count 4
    assert store.perform(fx.Hit("login:gina", 0, 60, T0 + 3, step=-9)) is True  # count 0, kept
    assert store.perform(fx.Hit("login:gina", 1, 60, T0 + 4)) is True  # count 1
