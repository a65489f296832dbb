"""PostgreSQL and Redis stores: what the shared contract suite cannot show.

Schemas and migrations, signing keys sealed at rest, keys namespaced and expiring, URLs, and
faults: a connection killed in the middle of an effect, the server going away and coming back.
Needs the services of tests/services.py (skipped elsewhere, failing in CI, when unreachable).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import attrs
import psycopg
import pytest
import redis
import services
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from kavach.instance import redis_secret
from kavach.stores import SQLiteStore, open_store
from kavach.stores._codec import CLIENTS, GRANTS
from kavach.stores._sealing import SEALED_PREFIX, DamagedSealError, KeySealer, StoreKeyError
from kavach.stores.postgres import (
    _DEADLINES,
    SCHEMA_VERSION,
    DamagedRowError,
    PostgresStore,
    PostgresStoreError,
    SchemaVersionError,
)
from kavach.stores.redis import DamagedValueError, RedisStore
from kavach.users import RedisUsers
from prerequisites import missing
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from store_records import DAY, T0, code, grant
from tcp_proxy import TcpProxy

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.memory_store import MemoryStore
from kavach_core.records import Client, PendingAuthorization, SigningKey

STORE_KEY = "u7Bq3cJ0v3l0Y1m8c4Yl0cWl6oQ1k8mTt2e3x9f0Z5A"  # base64url of 32 bytes
PEM = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKk=\n-----END PRIVATE KEY-----\n"


def key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", PEM, T0, T0 + DAY, T0 + 2 * DAY)


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresStore]:
    services.require("postgres")
    store: PostgresStore = services.postgres_store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    services.require("postgres")
    with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture
def rd(tmp_path: Path) -> Iterator[RedisStore]:
    services.require("redis")
    store: RedisStore = services.redis_store(tmp_path)
    yield store
    store.close()


# -- PostgreSQL: schema and migrations --------------------------------------------------------------


def test_pg_schema_is_versioned_one_row_per_migration(pg: PostgresStore, admin: psycopg.Connection[Any]) -> None:
    assert pg.perform(fx.ListClients()) == ()
    assert pg.schema_version == SCHEMA_VERSION
    rows = admin.execute(f'SELECT version, description FROM "{pg.schema}".schema_version ORDER BY version').fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert all(r[1] for r in rows)


def test_pg_many_processes_starting_at_once_migrate_once(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    """Twelve store objects (twelve connections) use a fresh schema at the same moment."""
    stores = [services.postgres_store(tmp_path) for _ in range(12)]
    barrier = threading.Barrier(len(stores))

    def first_use(i: int) -> None:
        barrier.wait(timeout=30)
        stores[i].perform(fx.PutClient(Client(f"c{i}", ("https://app.example/cb",))))

    threads = [threading.Thread(target=first_use, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    schema = stores[0].schema
    assert admin.execute(f'SELECT count(*) FROM "{schema}".schema_version').fetchone() == (SCHEMA_VERSION,)
    assert len(stores[0].perform(fx.ListClients())) == 12
    for store in stores:
        store.close()


def test_pg_instances_starting_at_once_share_one_secret_and_the_users_table(
    tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """What ``kavach serve`` does first on a PostgreSQL store, by eight instances at the same moment
    on a fresh schema: every one starts (no race between ``CREATE TABLE`` statements), all read the
    one secret made, and a user added through one is seen through all."""
    from kavach.instance import postgres_secret
    from kavach.users import PostgresUsers, Users

    stores = [services.postgres_store(tmp_path) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    secrets: list[bytes] = []
    users: list[Users] = []
    failures: list[BaseException] = []

    def start(store: PostgresStore) -> None:
        try:
            barrier.wait(timeout=30)
            secrets.append(postgres_secret(store))
            users.append(Users(PostgresUsers(store), log_n=10))
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert failures == []
        assert len(secrets) == 8 and len(set(secrets)) == 1
        users[0].add("alice", "correct horse battery staple")
        assert all(u.authenticate("alice", "correct horse battery staple") == "alice" for u in users)
        schema = stores[0].schema
        assert admin.execute(f'SELECT count(*) FROM "{schema}".kavach_settings').fetchone() == (1,)
    finally:
        for store in stores:
            store.close()


def test_pg_refuses_a_newer_schema_and_leaves_it_alone(
    pg: PostgresStore, tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    pg.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    admin.execute(f'INSERT INTO "{pg.schema}".schema_version (version, description) VALUES (99, %s)', ("future",))
    newer = services.postgres_store(tmp_path)
    refusal = (  # names the schema, the version found, the newest this kavachOS knows, and the way out
        rf"^schema {re.escape(repr(pg.schema))} is at version 99, newer than this kavachOS understands"
        rf" \({SCHEMA_VERSION}\); upgrade kavachOS to use it$"
    )
    with pytest.raises(SchemaVersionError, match=refusal):
        newer.perform(fx.ListClients())
    newer.close()
    assert admin.execute(f'SELECT count(*) FROM "{pg.schema}".clients').fetchone() == (1,)


def test_pg_refuses_a_schema_holding_foreign_tables(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    schema = services.postgres_schema(tmp_path)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".clients (id int)')
    store = services.postgres_store(tmp_path)
    with pytest.raises(
        PostgresStoreError, match=rf"^schema {re.escape(repr(schema))} holds tables that are not a kavachOS"
    ):
        store.perform(fx.ListClients())
    store.close()


def test_pg_migrates_into_an_empty_schema_made_beforehand(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    """A schema made ahead of the store (by an administrator, to grant it) is the store's while it
    holds no table: only tables make a schema foreign."""
    schema = services.postgres_schema(tmp_path)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    store = services.postgres_store(tmp_path)
    try:
        assert store.perform(fx.ListClients()) == ()
        assert store.schema_version == SCHEMA_VERSION
    finally:
        store.close()


def test_pg_a_url_with_no_host_before_its_path_and_a_schema_reaches_the_server(
    tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """``postgresql:///DB?host=...&schema=S`` (the form a socket directory is given in, the host in
    the query) connects once ``schema`` is taken out: the URL keeps its ``//``, which libpq needs."""
    services.require("postgres")
    parts = urlsplit(services.POSTGRES_URL)
    schema = services.postgres_schema(tmp_path)
    query = urlencode({"host": parts.hostname, "port": parts.port or 5432, "user": parts.username or "postgres"})
    store = PostgresStore(f"postgresql://{parts.path}?{query}&schema={schema}", min_connections=0)
    try:
        assert store.perform(fx.ListClients()) == ()
        assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() == (1,)
    finally:
        store.close()


def test_pg_migrates_into_a_schema_whose_version_table_records_no_migration(
    tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """A ``schema_version`` table of kavachOS's shape with no row in it (and no other table) records
    no migration: the schema is a store at version 0, migrated from the start, not one that lost its
    tables; every migration gets its row in that table."""
    schema = services.postgres_schema(tmp_path)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(
        f'CREATE TABLE "{schema}".schema_version (version integer PRIMARY KEY, description text NOT NULL,'
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    store = services.postgres_store(tmp_path)
    try:
        assert store.perform(fx.ListClients()) == ()
        rows = admin.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY version').fetchall()
        assert [row[0] for row in rows] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("table", "expect"),
    [
        ("version integer, description text", "a schema_version table that is not a kavachOS store's"),  # a look-alike
        ("version text, description text, applied_at timestamptz", "not a kavachOS store's"),  # Flyway-like
        (
            "version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()",
            "records kavachOS migrations but lacks the tables clients, codes",
        ),  # kavachOS's shape, no tables
    ],
    ids=["look-alike", "text-versions", "no-tables"],
)
def test_pg_refuses_a_schema_version_table_it_did_not_make(
    tmp_path: Path, admin: psycopg.Connection[Any], table: str, expect: str
) -> None:
    """Another tool's ``schema_version`` (or one left with no tables) is not taken for a store:
    nothing is migrated into the schema, no row is added to that table."""
    schema = services.postgres_schema(tmp_path)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".schema_version ({table})')
    admin.execute(f'INSERT INTO "{schema}".schema_version (version, description) VALUES (%s, %s)', ("1", "theirs"))
    store = services.postgres_store(tmp_path)
    with pytest.raises(PostgresStoreError, match=expect):
        store.perform(fx.ListClients())
    store.close()
    tables = admin.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    assert tables == [("schema_version",)]
    assert admin.execute(f'SELECT count(*) FROM "{schema}".schema_version').fetchone() == (1,)


def test_pg_rejects_unsafe_schema_names() -> None:
    with pytest.raises(PostgresStoreError, match="schema name"):
        PostgresStore(services.POSTGRES_URL, schema='x"; DROP TABLE y; --')


def test_pg_async_first_use_migrates(tmp_path: Path) -> None:
    store = services.postgres_store(tmp_path)

    async def main() -> Any:
        await store.aperform(fx.PutCode(code()))
        result = await asyncio.gather(*(store.aperform(fx.ConsumeCode("h1", grant(f"g{i}"))) for i in range(10)))
        await store.aclose()
        return result

    assert sorted(asyncio.run(main())) == [False] * 9 + [True]


# -- signing keys sealed at rest --------------------------------------------------------------------------


def _raw_pg_pems(admin: psycopg.Connection[Any], schema: str) -> list[tuple[str, bytes]]:
    rows = admin.execute(f'SELECT kid, private_pem FROM "{schema}".signing_keys ORDER BY position').fetchall()
    return [(kid, bytes(pem)) for kid, pem in rows]


def test_pg_signing_keys_are_sealed_with_the_store_key(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    store = services.postgres_store(tmp_path, store_key=STORE_KEY)
    assert store.perform(fx.SwapSigningKeys((), (key("k1"), key("k2")))) == (key("k1"), key("k2"))
    raw = _raw_pg_pems(admin, store.schema)
    assert all(pem.startswith(SEALED_PREFIX) and b"PRIVATE KEY" not in pem for _, pem in raw)
    assert services.postgres_store(tmp_path, store_key=STORE_KEY).perform(fx.GetSigningKeys()) == (key("k1"), key("k2"))
    with pytest.raises(StoreKeyError, match="KAVACH_STORE_KEY"):
        services.postgres_store(tmp_path).perform(fx.GetSigningKeys())
    with pytest.raises(StoreKeyError, match="another store key"):
        services.postgres_store(tmp_path, store_key=b"\x01" * 32).perform(fx.GetSigningKeys())
    # The kid is associated data: a sealed PEM moved onto another key's row does not open.
    admin.execute(f'UPDATE "{store.schema}".signing_keys SET private_pem = %s WHERE kid = %s', (raw[0][1], "k2"))
    with pytest.raises(StoreKeyError):
        store.perform(fx.GetSigningKeys())
    store.close()


def test_a_sealed_value_is_read_as_base64url_strictly_padding_allowed() -> None:
    """A sealed value reads as canonical base64url, padded as Python's encoders pad it or not: a
    character of neither alphabet inside it is damage (a lenient decoder would skip it and open
    the key), and so is padding of the wrong length."""
    sealer = KeySealer(STORE_KEY)
    body = sealer.seal("k1", PEM)[len(SEALED_PREFIX) :]
    padded = base64.urlsafe_b64encode(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    assert padded != body and padded.rstrip(b"=") == body
    for readable in (body, padded):
        assert sealer.open("k1", SEALED_PREFIX + readable) == PEM
    for damaged in (body[:8] + b"!" + body[8:], body[:8] + b"!!!!" + body[8:], padded + b"=", padded + b"===="):
        with pytest.raises(DamagedSealError, match="not a sealed value"):
            sealer.open("k1", SEALED_PREFIX + damaged)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (b"\xff\xfe not text", "not a sealed value"),
        (b"AAAA", "cut short"),
        (b"", "cut short"),
        # one byte less than a 12-byte nonce and a 16-byte tag (NIST SP 800-38D)
        (base64.urlsafe_b64encode(bytes(27)), "cut short"),
    ],
    ids=["not-ascii", "short", "empty", "one-byte-short-of-nonce-and-tag"],
)
def test_pg_a_damaged_sealed_key_is_a_store_outage_not_a_wrong_key(
    tmp_path: Path, admin: psycopg.Connection[Any], damage: bytes, says: str
) -> None:
    """A value that begins like a sealed key but is none is damage, answered 503 like any damaged
    record (a ``StoreUnavailable``), never a crash and never blamed on the store key."""
    store = services.postgres_store(tmp_path, store_key=STORE_KEY)
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    admin.execute(f'UPDATE "{store.schema}".signing_keys SET private_pem = %s', (SEALED_PREFIX + damage,))
    with pytest.raises(StoreUnavailable, match=says) as caught:
        store.perform(fx.GetSigningKeys())
    assert not isinstance(caught.value, StoreKeyError)
    store.close()


def test_pg_sealed_keys_follow_the_documented_layout(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    """kavach.stores._sealing: ``prefix + base64url(nonce[12] || AES-GCM ciphertext-and-tag)``, the
    kid as associated data, so a value sealed by another release (or by hand) still opens. A bare
    nonce and tag (28 bytes, no ciphertext) is a well-formed sealed value that this key does not
    open: a wrong store key, not damage."""
    store = services.postgres_store(tmp_path, store_key=STORE_KEY)
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    ((_, stored),) = _raw_pg_pems(admin, store.schema)
    aead = AESGCM(base64.urlsafe_b64decode(STORE_KEY + "="))
    text = stored[len(SEALED_PREFIX) :]
    blob = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    assert aead.decrypt(blob[:12], blob[12:], b"k1") == PEM
    nonce = b"\x07" * 12
    by_hand = SEALED_PREFIX + base64.urlsafe_b64encode(nonce + aead.encrypt(nonce, PEM, b"k1")).rstrip(b"=")
    update = f'UPDATE "{store.schema}".signing_keys SET private_pem = %s'
    admin.execute(update, (by_hand,))
    assert store.perform(fx.GetSigningKeys()) == (key("k1"),)
    admin.execute(update, (SEALED_PREFIX + base64.urlsafe_b64encode(bytes(28)),))
    with pytest.raises(StoreKeyError, match="another store key"):
        store.perform(fx.GetSigningKeys())
    store.close()


def test_redis_a_damaged_sealed_key_is_a_store_outage(tmp_path: Path) -> None:
    services.require("redis")
    store = services.redis_store(tmp_path, store_key=STORE_KEY)
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    client = redis.Redis.from_url(services.REDIS_URL)
    raw = client.get(store.prefix + "keys")
    assert raw is not None
    records = json.loads(raw)
    records[0]["private_pem"] = base64.urlsafe_b64encode(SEALED_PREFIX + b"\xff%%").decode().rstrip("=")
    client.set(store.prefix + "keys", json.dumps(records))
    with pytest.raises(StoreUnavailable, match="damaged"):
        store.perform(fx.GetSigningKeys())


def test_store_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services.require("redis")
    monkeypatch.setenv("KAVACH_STORE_KEY", STORE_KEY)
    store = services.redis_store(tmp_path)
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    monkeypatch.delenv("KAVACH_STORE_KEY")
    assert services.redis_store(tmp_path, store_key=STORE_KEY).perform(fx.GetSigningKeys()) == (key("k1"),)
    with pytest.raises(StoreKeyError):
        services.redis_store(tmp_path).perform(fx.GetSigningKeys())


def test_an_empty_store_key_variable_sets_no_store_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KAVACH_STORE_KEY=`` (set but empty, as a unit file or compose file leaves it) is no store
    key: the store opens and keeps PEMs as given, which a store without a key then reads."""
    services.require("redis")
    monkeypatch.setenv("KAVACH_STORE_KEY", "")
    services.redis_store(tmp_path).perform(fx.SwapSigningKeys((), (key("k1"),)))
    monkeypatch.delenv("KAVACH_STORE_KEY")
    assert services.redis_store(tmp_path).perform(fx.GetSigningKeys()) == (key("k1"),)


def test_keys_stored_in_the_clear_still_read_once_a_store_key_is_set(pg: PostgresStore, tmp_path: Path) -> None:
    pg.perform(fx.SwapSigningKeys((), (key("old"),)))
    sealed = services.postgres_store(tmp_path, store_key=STORE_KEY)
    assert sealed.perform(fx.GetSigningKeys()) == (key("old"),)
    assert sealed.perform(fx.SwapSigningKeys(("old",), (key("new"), key("old")))) == (key("new"), key("old"))
    sealed.close()


def test_malformed_store_keys_are_refused() -> None:
    with pytest.raises(StoreKeyError, match="16, 24 or 32 bytes"):
        PostgresStore(services.POSTGRES_URL, store_key="c2hvcnQ")
    with pytest.raises(StoreKeyError, match="must be base64"):  # five characters are no base64
        PostgresStore(services.POSTGRES_URL, store_key="abcde")
    good = base64.urlsafe_b64encode(b"k" * 32).decode()
    assert KeySealer(good).open("k1", KeySealer(b"k" * 32).seal("k1", PEM)) == PEM
    for stray in ("!", "!!!!", " \t\n "):  # not skipped, whether or not the rest would pad out
        with pytest.raises(StoreKeyError, match="must be base64"):
            KeySealer(good[:10] + stray + good[10:])
    with pytest.raises(StoreKeyError):
        RedisStore(services.REDIS_URL, store_key=b"short")


@pytest.mark.parametrize("size", [16, 24, 32])
def test_store_keys_of_each_aes_size_in_each_spelling_seal_and_open(size: int) -> None:
    """A store key is 16, 24 or 32 bytes (AES-128/192/256), given as bytes or as base64, standard
    or url-safe, padded or not (kavach.stores._sealing); every spelling is the same key."""
    raw = (b"\xfb\xff\xbf" * 11)[:size]  # base64 with "+" and "/", base64url with "-" and "_"
    spellings = [raw, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    for given in spellings:
        sealed = KeySealer(given).seal("k1", PEM)
        assert sealed.startswith(SEALED_PREFIX) and PEM not in sealed
        assert KeySealer(raw).open("k1", sealed) == PEM, given
    with pytest.raises(StoreKeyError, match="16, 24 or 32 bytes"):
        KeySealer(raw[:-1])


def test_redis_signing_keys_are_sealed(tmp_path: Path) -> None:
    services.require("redis")
    store = services.redis_store(tmp_path, store_key=STORE_KEY)
    store.perform(fx.SwapSigningKeys((), (key("k1"),)))
    raw = redis.Redis.from_url(services.REDIS_URL).get(store.prefix + "keys")
    assert raw is not None and b"PRIVATE KEY" not in raw and b"k1" in raw
    assert store.perform(fx.GetSigningKeys()) == (key("k1"),)


# -- Redis: namespacing and TTLs --------------------------------------------------------------------------


def test_redis_keys_are_namespaced_and_expire_with_their_records(rd: RedisStore) -> None:
    raw = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    rd.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    rd.perform(
        fx.PutPending(
            PendingAuthorization("t1", "c1", "https://app.example/cb", True, None, "ch", (), (), T0, T0 + 600)
        )
    )
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    rd.perform(fx.RevokeAccessToken("j1", int(time.time()) + 600))
    rd.perform(fx.Hit("login", 5, 60, T0 + 30))
    keys = sorted(raw.scan_iter(match=rd.prefix + "*"))
    assert keys and all(k.startswith(rd.prefix) for k in keys)
    slack = rd.ttl_slack

    def ttl(name: str) -> int:
        return int(raw.ttl(rd.prefix + name))

    assert ttl("client:c1") == -1  # registered clients do not expire
    assert 600 + slack - 5 <= ttl("pending:t1") <= 600 + slack + 1
    assert 60 + slack - 5 <= ttl("code:h1") <= 60 + slack + 1
    for index in ("codes:subject:alice", "codes:client:c1"):  # a subject's and a client's codes
        assert 60 + slack - 5 <= ttl(index) <= 60 + slack + 1
    assert 90 * DAY + slack - 5 <= ttl("grant:g1") <= 90 * DAY + slack + 1
    assert 600 + slack - 5 <= ttl("revoked:j1") <= 600 + slack + 1
    window_end = ((T0 + 30) // 60 + 1) * 60
    assert window_end - (T0 + 30) + slack - 5 <= ttl(f"hit:{window_end}:login") <= window_end - (T0 + 30) + slack + 1
    # A rotation keeps the family's TTL.
    assert rd.perform(fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 5, 10, T0 + DAY)).outcome == "rotated"
    assert 90 * DAY + slack - 5 <= ttl("grant:g1")


def test_redis_code_indexes_keep_live_codes_and_lose_stale_members(rd: RedisStore) -> None:
    """The indexes ``RevokeSubject`` and ``DeleteClient`` read: a later code's write drops members
    whose code expired long before, ``purge`` those whose code is gone, and the TTL only grows."""
    raw = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    old = attrs.evolve(code("old"), issued_at=T0, expires_at=T0 + 600)
    rd.perform(fx.PutCode(old))
    rd.perform(fx.PutCode(code("h1")))  # issued at T0 too: "old" is live, and its longer TTL stays
    index = rd.prefix + "codes:subject:alice"
    assert raw.zrange(index, 0, -1) == ["h1", "old"]
    assert raw.ttl(index) > 600
    later = T0 + 600 + rd.ttl_slack + 61 + 60
    rd.perform(fx.PutCode(attrs.evolve(code("new"), issued_at=later, expires_at=later + 60)))
    assert raw.zrange(index, 0, -1) == ["new"]  # "h1" and "old" expired (and their keys) long before
    assert raw.zrange(rd.prefix + "codes:client:c1", 0, -1) == ["new"]
    raw.delete(rd.prefix + "code:new")  # as its TTL would
    rd.purge(T0)
    assert raw.exists(index) == 0


def test_redis_hit_with_step_zero_makes_no_key_and_leaves_the_ttl(rd: RedisStore) -> None:
    """A step of 0 is a plain ``GET``: it never makes a counter (an ``INCRBY 0`` would make one with
    no TTL, kept forever), and reading a counter leaves its expiry alone; sync and asyncio alike."""
    raw = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    now = T0 + 30
    name = f"{rd.prefix}hit:{(now // 60 + 1) * 60}:login"
    assert rd.perform(fx.Hit("login", 0, 60, now, step=0)) is True
    assert asyncio.run(rd.aperform(fx.Hit("login", 0, 60, now, step=0))) is True
    assert raw.exists(name) == 0
    assert rd.perform(fx.Hit("login", 5, 60, now, step=2)) is True
    ttl = int(raw.ttl(name))
    assert 0 < ttl <= 30 + rd.ttl_slack + 1
    assert rd.perform(fx.Hit("login", 1, 60, now, step=0)) is False
    assert asyncio.run(rd.aperform(fx.Hit("login", 2, 60, now, step=0))) is True
    assert raw.get(name) == "2" and 0 < int(raw.ttl(name)) <= ttl


def test_redis_hit_giving_back_keeps_the_ttl_and_makes_no_key(rd: RedisStore) -> None:
    """A negative step (a successful sign-in giving its attempt back) lowers an existing counter, never
    below 0, and keeps its TTL; where there is no counter it makes none (which would have no TTL)."""
    raw = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    now = T0 + 30
    name = f"{rd.prefix}hit:{(now // 60 + 1) * 60}:login"
    assert rd.perform(fx.Hit("login", 0, 60, now, step=-1)) is True
    assert asyncio.run(rd.aperform(fx.Hit("login", 0, 60, now, step=-3))) is True
    assert raw.exists(name) == 0
    assert rd.perform(fx.Hit("login", 5, 60, now, step=3)) is True
    ttl = int(raw.ttl(name))
    assert 0 < ttl <= 30 + rd.ttl_slack + 1
    assert rd.perform(fx.Hit("login", 1, 60, now, step=-1)) is False  # 2 > 1
    assert raw.get(name) == "2" and 0 < int(raw.ttl(name)) <= ttl
    assert asyncio.run(rd.aperform(fx.Hit("login", 0, 60, now, step=-5))) is True
    assert raw.get(name) == "0" and 0 < int(raw.ttl(name)) <= ttl
    assert rd.perform(fx.Hit("login", 0, 60, now, step=-1)) is True  # 0 already: "-0" never reaches DECRBY
    assert rd.perform(fx.Hit("login", 0, 60, now)) is False  # counts from 0 again: 1 > 0
    assert raw.get(name) == "1" and 0 < int(raw.ttl(name)) <= ttl


def test_pg_hit_giving_back_never_goes_below_zero_or_makes_a_row(
    pg: PostgresStore, admin: psycopg.Connection[Any]
) -> None:
    def rows() -> list[tuple[Any, ...]]:
        return admin.execute(f'SELECT bucket, count FROM "{pg.schema}".rate_limits').fetchall()

    assert pg.perform(fx.Hit("login", 0, 60, T0, step=-1)) is True
    assert asyncio.run(pg.aperform(fx.Hit("login", 0, 60, T0, step=-1))) is True
    assert rows() == []
    assert pg.perform(fx.Hit("login", 3, 60, T0, step=2)) is True
    assert asyncio.run(pg.aperform(fx.Hit("login", 0, 60, T0, step=-1))) is False  # 1 > 0
    assert pg.perform(fx.Hit("login", 0, 60, T0, step=-4)) is True
    assert rows() == [("login", 0)]


def test_pg_hit_with_step_zero_makes_no_row(pg: PostgresStore, admin: psycopg.Connection[Any]) -> None:
    def rows() -> list[tuple[Any, ...]]:
        return admin.execute(f'SELECT bucket, count FROM "{pg.schema}".rate_limits').fetchall()

    assert pg.perform(fx.Hit("login", 0, 60, T0, step=0)) is True
    assert asyncio.run(pg.aperform(fx.Hit("login", 0, 60, T0, step=0))) is True
    assert rows() == []
    assert asyncio.run(pg.aperform(fx.Hit("login", 3, 60, T0, step=3))) is True
    assert pg.perform(fx.Hit("login", 2, 60, T0, step=0)) is False
    assert rows() == [("login", 3)]


def test_two_prefixes_on_one_redis_do_not_see_each_other(rd: RedisStore, tmp_path: Path) -> None:
    other = services.redis_store(tmp_path / "other")
    rd.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    assert other.perform(fx.GetClient("c1")) is None
    assert other.perform(fx.ListClients()) == ()
    other.close()


def test_a_redis_prefix_with_glob_characters_scans_only_its_own_keys(rd: RedisStore) -> None:
    """``purge`` and ``delete_all`` find keys by ``SCAN MATCH``: the prefix is escaped there, so a
    prefix holding ``*?[]\\`` never reaches the keys of another prefix it would match as a pattern."""
    globbed = RedisStore(services.REDIS_URL, prefix=rd.prefix + "[ab]*?\\:")
    other = RedisStore(services.REDIS_URL, prefix=rd.prefix + "ax\\:")
    expired = PendingAuthorization("t1", "c1", "https://app.example/cb", True, None, "ch", (), (), T0, T0 + 600)
    other.perform(fx.PutPending(expired))
    other.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    globbed.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    raw = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    own = [k for k in raw.scan_iter(match=rd.prefix + "*") if k.startswith(globbed.prefix)]
    assert globbed.purge(T0 + 600)["pending"] == 0
    assert globbed.delete_all() == len(own) > 0
    assert other.perform(fx.GetPending("t1", T0)) == expired
    assert [c.client_id for c in other.perform(fx.ListClients())] == ["c1"]
    globbed.close()
    other.close()


def test_redis_delete_all_deletes_every_key_of_its_prefix_however_many(rd: RedisStore) -> None:
    """``delete_all`` deletes in batches (500 keys to a command): every key under the prefix goes,
    and the count it returns is theirs."""
    raw = redis.Redis.from_url(services.REDIS_URL)
    try:
        raw.mset({f"{rd.prefix}hit:{i}": 1 for i in range(1001)})
        assert rd.delete_all() == 1001
        assert list(raw.scan_iter(match=rd.prefix + "*")) == []
    finally:
        raw.close()


def test_a_redis_url_gives_its_prefix_to_the_store_and_the_rest_to_the_connection(tmp_path: Path) -> None:
    """The URL's ``prefix`` is taken out (redis-py would refuse it) and every other parameter stays
    the connection's: here its client name, which Redis then lists, until ``close`` closes the
    connections. A ``prefix`` argument wins over the URL's."""
    prefix = services.redis_prefix(tmp_path)
    name = "kavach-" + prefix.replace(":", "-").strip("-")
    store = RedisStore(f"{services.REDIS_URL}?prefix={quote(prefix)}&client_name={name}")
    try:
        assert store.prefix == prefix and "prefix" not in store.url and f"client_name={name}" in store.url
        assert store.perform(fx.GetSigningKeys()) == ()
        with redis.Redis.from_url(services.REDIS_URL) as admin:
            assert name in [client["name"] for client in admin.client_list()]
            store.close()  # its connections are closed: Redis lists them no more
            assert eventually(lambda: name not in [client["name"] for client in admin.client_list()])
    finally:
        store.close()
    explicit = RedisStore(f"{services.REDIS_URL}?prefix=kavach-test:elsewhere:", prefix=prefix)
    assert explicit.prefix == prefix
    explicit.close()


def test_redis_requests_beyond_the_pool_wait_for_a_connection(tmp_path: Path) -> None:
    """More concurrent requests than ``max_connections`` queue for a connection, on threads and on
    an event loop, as on PostgreSQL: the pool that refused at once ("Too many connections") made a
    healthy Redis answer 503 to a burst of more than 50 requests on one instance."""
    store = services.redis_store(tmp_path, max_connections=2)
    try:
        store.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                for _ in range(40):
                    assert store.perform(fx.GetClient("c1")) is not None
            except BaseException as exc:  # collected for the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []

        async def burst() -> list[Any]:
            return await asyncio.gather(*(store.aperform(fx.GetClient("c1")) for _ in range(200)))

        assert all(found is not None for found in asyncio.run(burst()))
    finally:
        store.close()


def test_redis_and_postgres_stores_refuse_an_effect_they_do_not_know(rd: RedisStore, pg: PostgresStore) -> None:
    """An effect with no handler is a ``TypeError`` naming it, raised before any connection is used."""

    @attrs.frozen
    class Strange(fx.Effect):
        pass

    for store in (rd, pg):
        with pytest.raises(TypeError, match=f"^{type(store).__name__} cannot perform Strange$"):
            store.perform(Strange())
        with pytest.raises(TypeError, match=f"^{type(store).__name__} cannot perform Strange$"):
            asyncio.run(store.aperform(Strange()))


def test_a_closed_redis_store_refuses_work_and_closes_again_quietly(tmp_path: Path) -> None:
    """Closing is idempotent (``aclose`` twice, ``close`` after it) and final: a closed store
    opens no new client, on an event loop or on a thread, but says it is closed."""
    store = services.redis_store(tmp_path)

    async def on_a_loop() -> None:
        assert await store.aperform(fx.GetSigningKeys()) == ()
        await store.aclose()
        await store.aclose()
        with pytest.raises(RuntimeError, match=r"^the store is closed$"):
            await store.aperform(fx.GetSigningKeys())

    asyncio.run(on_a_loop())
    store.close()
    with pytest.raises(RuntimeError, match=r"^the store is closed$"):
        store.perform(fx.GetSigningKeys())
    assert store._client is None and store._aclients == {}


def test_a_redis_store_keeps_no_client_of_an_event_loop_that_has_closed(tmp_path: Path) -> None:
    """Each event loop gets its own client (redis-py's asyncio connections belong to one loop);
    a store used from one ``asyncio.run`` after another, never closed between them, holds the
    client of the loop running now only: one of a closed loop is dropped when the next is made,
    so the store does not grow with every loop it has served."""
    store = services.redis_store(tmp_path)

    async def on_a_loop() -> int:
        assert await store.aperform(fx.GetSigningKeys()) == ()
        return len(store._aclients)

    try:
        assert [asyncio.run(on_a_loop()) for _ in range(3)] == [1, 1, 1]
    finally:
        store.close()


def test_a_redis_store_serves_one_event_loop_through_one_client(tmp_path: Path) -> None:
    """Effects awaited one after another on an event loop all go through that loop's one client:
    its pooled connection, the same each time, not a client (and a connection) made per effect."""
    prefix = services.redis_prefix(tmp_path)
    name = "kavach-" + prefix.replace(":", "-").strip("-")
    store = RedisStore(f"{services.REDIS_URL}?client_name={name}", prefix=prefix)

    async def on_a_loop() -> set[int]:
        seen: set[int] = set()
        with redis.Redis.from_url(services.REDIS_URL) as admin:
            for _ in range(5):
                assert await store.aperform(fx.GetSigningKeys()) == ()
                seen |= {int(client["id"]) for client in admin.client_list() if client["name"] == name}
        return seen

    try:
        assert len(asyncio.run(on_a_loop())) == 1
    finally:
        store.close()


def test_a_closed_postgres_store_refuses_work_and_closes_again_quietly(
    tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """As on Redis: ``aclose`` twice, then ``close``, raise nothing; the thread pool's connections
    are closed (the server counts none left under the URL's ``application_name``), and every use
    after the first close (an effect, a purge, on an event loop or a thread) is refused."""
    schema = services.postgres_schema(tmp_path)
    name = f"kavach_close_{schema[-12:]}"
    pg = PostgresStore(f"{services.POSTGRES_URL}?schema={schema}&application_name={name}")

    def opened() -> int:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
        return int(row[0]) if row else 0

    assert pg.perform(fx.GetSigningKeys()) == ()
    assert opened() >= 1

    async def on_a_loop() -> None:
        assert await pg.aperform(fx.GetSigningKeys()) == ()
        await pg.aclose()
        await pg.aclose()
        with pytest.raises(PostgresStoreError, match="the store is closed"):
            await pg.aperform(fx.GetSigningKeys())

    asyncio.run(on_a_loop())
    assert eventually(lambda: opened() == 0), f"{opened()} connections left open"
    pg.close()
    with pytest.raises(PostgresStoreError, match="the store is closed"):
        pg.perform(fx.GetSigningKeys())
    with pytest.raises(PostgresStoreError, match="the store is closed"):
        pg.purge(T0)
    assert pg._pool is None and pg._apools == {}


# -- open_store --------------------------------------------------------------------------------------------


def test_open_store_names_every_backend(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    path_store = open_store(str(tmp_path / "a.db"))
    assert isinstance(path_store, SQLiteStore)
    path_store.close()
    url_store = open_store(f"sqlite:///{tmp_path}/b.db")
    assert isinstance(url_store, SQLiteStore) and url_store.path == f"{tmp_path}/b.db"
    url_store.close()
    pg = open_store("postgresql://postgres@127.0.0.1:5432/test?schema=kv_custom&connect_timeout=3")
    assert isinstance(pg, PostgresStore) and pg.schema == "kv_custom" and "schema" not in pg.dsn
    assert "connect_timeout=3" in pg.dsn
    rd = open_store("redis://127.0.0.1:6379/0?prefix=tenant1:")
    assert isinstance(rd, RedisStore) and rd.prefix == "tenant1:" and "prefix" not in rd.url
    assert open_store("redis://127.0.0.1:6379/0").prefix == "kavach:"
    with pytest.raises(ValueError, match="unknown store"):
        open_store("mysql://localhost/db")


def test_a_postgresql_url_sizes_the_pool_it_opens(tmp_path: Path, admin: psycopg.Connection[Any]) -> None:
    """``min_connections`` in the store URL: that many connections open at start (counted by the
    server, under the URL's libpq ``application_name``, which reaches it); ``max_connections``:
    no more are lent, the next caller waits its ``timeout``, then the store is unavailable."""
    schema = services.postgres_schema(tmp_path)
    name = f"kavach_pool_{schema[-12:]}"
    url = f"{services.POSTGRES_URL}?schema={schema}&application_name={name}&min_connections=3&max_connections=3"
    store = open_store(url, timeout=1)
    try:
        assert store.perform(fx.GetSigningKeys()) == ()

        def opened() -> int:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()
            return int(row[0]) if row else 0

        assert eventually(lambda: opened() == 3), f"{opened()} connections open"
        pool = store._sync_pool()
        with store._lending(), pool.connection(), pool.connection(), pool.connection():  # lent, as in use
            waited = r"^PostgreSQL is unavailable: couldn't get a connection after 1\.00 sec$"
            with pytest.raises(StoreUnavailable, match=waited):  # the pool's account: it waited the whole timeout
                store.perform(fx.GetSigningKeys())
            assert opened() == 3
        assert store.perform(fx.GetSigningKeys()) == ()
    finally:
        store.close()


@pytest.mark.parametrize("credentials", [b"c%001:secret", b"c\x001:secret", b"c1:se%00cret"])
def test_a_nul_in_basic_credentials_is_invalid_client_on_postgresql(pg: PostgresStore, credentials: bytes) -> None:
    """PostgreSQL text holds no NUL, so a client id with one must never reach it: the token,
    revocation and introspection endpoints answer 401 ``invalid_client`` (GN-03), as on every
    other store, and never 500."""
    import base64

    from conftest import make_config
    from kavach.server import AuthorizationServer

    from kavach_core.http import HttpRequest

    server = AuthorizationServer(make_config(), pg, identify=lambda req: None)
    form = ("Content-Type", "application/x-www-form-urlencoded")
    basic = ("Authorization", "Basic " + base64.b64encode(credentials).decode())
    for path, body in (("/token", b"grant_type=refresh_token&refresh_token=x"), ("/revoke", b"token=abc"),
                       ("/introspect", b"token=abc")):  # fmt: skip
        answer = server.handle(HttpRequest("POST", path, (), [form, basic], body))
        assert (answer.status, answer.json()["error"]) == (401, "invalid_client"), (path, answer.body)
        assert (answer.header("www-authenticate") or "").startswith("Basic")


# -- faults: PostgreSQL --------------------------------------------------------------------------------------


def _blocked_backend(admin: psycopg.Connection[Any], schema: str) -> int:
    def find() -> int | None:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE %s AND pid <> pg_backend_pid()",
            (f'%"{schema}"%',),
        ).fetchone()
        return None if row is None else int(row[0])

    pid = eventually(find)
    assert pid, "the effect never blocked on the lock"
    return int(pid)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_pg_connection_killed_during_code_redemption(pg: PostgresStore, admin: psycopg.Connection[Any]) -> None:
    """pg_terminate_backend while ConsumeCode waits: 503, nothing consumed, nothing stored, next call works."""
    pg.perform(fx.PutCode(code()))
    locker = psycopg.connect(services.POSTGRES_URL)
    locker.execute(f'SELECT 1 FROM "{pg.schema}".codes WHERE code_hash = %s FOR UPDATE', ("h1",))
    thread, outcome = _in_thread(lambda: pg.perform(fx.ConsumeCode("h1", grant())))
    admin.execute("SELECT pg_terminate_backend(%s)", (_blocked_backend(admin, pg.schema),))
    thread.join(timeout=30)
    locker.rollback()
    locker.close()
    assert isinstance(outcome.get("error"), StoreUnavailable), outcome
    assert pg.perform(fx.GetCode("h1")).consumed is False
    assert pg.perform(fx.GetGrant("g1")) is None
    assert pg.perform(fx.ConsumeCode("h1", grant())) is True


def test_pg_connection_killed_during_refresh_rotation(pg: PostgresStore, admin: psycopg.Connection[Any]) -> None:
    pg.perform(fx.PutCode(code()))
    pg.perform(fx.ConsumeCode("h1", grant()))
    locker = psycopg.connect(services.POSTGRES_URL)
    locker.execute(f'SELECT 1 FROM "{pg.schema}".grants WHERE grant_id = %s FOR UPDATE', ("g1",))
    rotate = fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY)
    thread, outcome = _in_thread(lambda: pg.perform(rotate))
    admin.execute("SELECT pg_terminate_backend(%s)", (_blocked_backend(admin, pg.schema),))
    thread.join(timeout=30)
    locker.rollback()
    locker.close()
    assert isinstance(outcome.get("error"), StoreUnavailable), outcome
    assert pg.perform(fx.GetGrant("g1")) == grant()  # the family did not move
    assert pg.perform(rotate).outcome == "rotated"


def _end_idle_sessions(admin: psycopg.Connection[Any], schema: str) -> int:
    """Terminate the store's pooled connections and wait until their server processes are gone
    (``pg_terminate_backend`` with a timeout), as a restart or an idle timeout would end them."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE %s",
        (f'%"{schema}"%',),
    ).fetchall()
    assert rows and all(ended for (ended,) in rows)
    return len(rows)


def _counted_round_trip_checks(monkeypatch: pytest.MonkeyPatch, pool: Any) -> list[object]:
    """Count the round-trip checks ``pool`` (the pool class) makes before lending a connection."""
    checked: list[object] = []
    real = pool.check_connection

    def counted(conn: Any) -> Any:
        checked.append(conn)
        return real(conn)

    monkeypatch.setattr(pool, "check_connection", staticmethod(counted))
    return checked


@pytest.mark.parametrize("poll", [True, False], ids=["poll", "no-poll"])
def test_pg_idle_connections_killed_are_replaced_quietly(
    pg: PostgresStore, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, poll: bool
) -> None:
    """A pooled connection is lent without a round trip while nothing arrived on it; one whose
    session the server ended gets the round trip, fails it and is replaced: no error for the caller.
    The same where the platform has no ``poll(2)`` (``select`` tells then)."""
    if not poll:
        monkeypatch.delattr(select, "poll", raising=False)
    checked = _counted_round_trip_checks(monkeypatch, ConnectionPool)
    pg.perform(fx.PutCode(code()))
    for _ in range(5):
        assert pg.perform(fx.GetCode("h1")) is not None
    assert checked == []
    _end_idle_sessions(admin, pg.schema)
    assert pg.perform(fx.ConsumeCode("h1", grant())) is True
    assert checked  # the ended session was noticed and checked, not lent as it was
    assert pg.perform(fx.GetCode("h1")).consumed is True


def test_pg_idle_async_connections_killed_are_replaced_quietly(
    pg: PostgresStore, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """:func:`test_pg_idle_connections_killed_are_replaced_quietly` for the pools of event loops."""
    checked = _counted_round_trip_checks(monkeypatch, AsyncConnectionPool)

    async def main() -> None:
        try:
            await pg.aperform(fx.PutCode(code()))
            for _ in range(5):
                assert await pg.aperform(fx.GetCode("h1")) is not None
            assert checked == []
            _end_idle_sessions(admin, pg.schema)
            assert await pg.aperform(fx.ConsumeCode("h1", grant())) is True
            assert checked
        finally:
            await pg.aclose()  # its pool's tasks end with the loop, even after a failed assertion

    asyncio.run(main())


def _pg_proxy() -> TcpProxy:
    """A TCP proxy in front of the PostgreSQL server, to cut, freeze and restore."""
    services.require("postgres")
    url = urlsplit(services.POSTGRES_URL)
    return TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)


def _pg_through(proxy: TcpProxy, tmp_path: Path, timeout: float = 3) -> PostgresStore:
    url = urlsplit(services.POSTGRES_URL)
    dsn = url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()
    return PostgresStore(
        dsn, schema=services.postgres_schema(tmp_path), timeout=timeout, connect_timeout=2, max_connections=2
    )


def test_pg_outage_is_503_and_service_resumes_when_the_database_returns(tmp_path: Path) -> None:
    proxy = _pg_proxy()
    store = _pg_through(proxy, tmp_path)
    try:
        store.perform(fx.PutCode(code()))
        proxy.cut()
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                store.perform(fx.ConsumeCode("h1", grant()))
        time.sleep(1.5)  # an outage longer than the pool's first reconnection attempts
        proxy.restore()
        assert store.perform(fx.ConsumeCode("h1", grant())) is True
        assert store.perform(fx.GetCode("h1")).consumed is True
    finally:
        store.close()
        proxy.cut()


def test_pg_async_outage_is_503_and_recovers(tmp_path: Path) -> None:
    proxy = _pg_proxy()
    store = _pg_through(proxy, tmp_path)

    async def main() -> None:
        await store.aperform(fx.PutCode(code()))
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.aperform(fx.ConsumeCode("h1", grant()))
        proxy.restore()
        assert await store.aperform(fx.ConsumeCode("h1", grant())) is True
        await store.aclose()

    try:
        asyncio.run(main())
    finally:
        proxy.cut()


def _within_30_s(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread; what it returned or raised, failing the test when it still runs after 30 s."""
    thread, outcome = _in_thread(fn)
    thread.join(timeout=30)
    assert not thread.is_alive(), "still waiting after 30 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


SEVERED_AFTER_3_S = r"^PostgreSQL gave no answer within 3 s: its connection was closed$"
"""The store's refusal when its own deadline (``timeout``, here 3 s) severed a silent connection."""


def test_pg_an_effect_given_no_answer_is_503_within_the_timeout(tmp_path: Path) -> None:
    """The database's side of the link goes silent during an effect: StoreUnavailable about the
    store's ``timeout`` (3 s) later, on a thread and on an event loop, where the effect waited
    without end; the silenced connection is closed, and once the link carries again the store
    serves, on fresh connections. A silence shorter than the timeout is waited out."""
    proxy = _pg_proxy()
    store = _pg_through(proxy, tmp_path)

    def on_a_thread() -> None:
        store.perform(fx.PutCode(code()))  # a pooled connection, open
        proxy.freeze()
        thaw = threading.Timer(1.5, proxy.thaw)  # silent for half the timeout: waited out, not severed
        thaw.start()
        try:
            assert store.perform(fx.GetCode("h1")) is not None
        finally:
            thaw.join()
        proxy.freeze()
        with pytest.raises(StoreUnavailable, match=SEVERED_AFTER_3_S):  # by the 3-s deadline, not the link's end
            store.perform(fx.GetCode("h1"))
        proxy.thaw()
        assert store.perform(fx.GetCode("h1")) is not None

    async def on_a_loop() -> None:
        try:
            assert await store.aperform(fx.GetCode("h1")) is not None  # a connection of this loop, open
            proxy.freeze()
            with pytest.raises(StoreUnavailable, match=SEVERED_AFTER_3_S):
                await store.aperform(fx.ConsumeCode("h1", grant()))
            proxy.thaw()
            assert await store.aperform(fx.GetCode("h1")) is not None
        finally:
            await store.aclose()

    try:  # the hang guard: 30 s, ten times the store's timeout
        _within_30_s(on_a_thread)
        _within_30_s(lambda: asyncio.run(on_a_loop()))
    finally:
        proxy.thaw()
        store.close()
        proxy.cut()


def test_pg_a_deadline_nearer_than_those_watched_is_kept(tmp_path: Path) -> None:
    """An effect of a store with a 3-s ``timeout``, begun while one of a 60-s store waits on a
    silent link, is severed after its own 3 s, not the other's 60; the other, its link carrying
    again before its deadline, gets its answer."""
    slow_proxy, proxy = _pg_proxy(), _pg_proxy()
    slow = _pg_through(slow_proxy, tmp_path, timeout=60)
    store = _pg_through(proxy, tmp_path)
    try:
        store.perform(fx.PutCode(code()))
        assert slow.perform(fx.GetCode("h1")) is not None  # a pooled connection, open
        slow_proxy.freeze()
        waiting, outcome = _in_thread(lambda: slow.perform(fx.GetCode("h1")))

        def sleeping_until_the_60_s_deadline() -> bool:
            watched = list(_DEADLINES._watched)
            return len(watched) == 1 and _DEADLINES._wakes_at == watched[0].deadline

        assert eventually(sleeping_until_the_60_s_deadline), "the 60-s effect is not watched"
        proxy.freeze()

        def severed() -> None:
            with pytest.raises(StoreUnavailable, match=SEVERED_AFTER_3_S):
                store.perform(fx.GetCode("h1"))

        _within_30_s(severed)
        slow_proxy.thaw()
        waiting.join(timeout=30)
        assert outcome.get("value") is not None, outcome
    finally:
        slow_proxy.thaw()
        proxy.thaw()
        slow.close()
        store.close()
        slow_proxy.cut()
        proxy.cut()


def test_pg_the_deadline_watcher_outlives_the_effects_it_watched(tmp_path: Path) -> None:
    """Once an effect has ended before its deadline, the thread watching deadlines wakes at that
    deadline, finds nothing left to watch, and waits for the next effect: it does not fail there."""
    store = services.postgres_store(tmp_path, timeout=1)
    try:
        assert store.perform(fx.GetSigningKeys()) == ()  # watched for 1 s, done long before
        watcher = _DEADLINES._thread
        assert watcher is not None
        assert eventually(lambda: _DEADLINES._wakes_at is None), "the watcher did not go back to waiting"
        assert watcher.is_alive()
    finally:
        store.close()


def test_pg_the_deadline_watcher_never_keeps_a_process_from_ending(tmp_path: Path) -> None:
    """The thread that watches effects' deadlines, started by the first bounded effect and waiting
    for the next one ever after, is no reason for a process to stay: a program that performed an
    effect and closed its store ends as soon as its last line has run."""
    program = (
        "import sys\n"
        "from kavach.stores.postgres import PostgresStore\n"
        "from kavach_core import effects as fx\n"
        "store = PostgresStore(sys.argv[1], schema=sys.argv[2], min_connections=0, max_connections=1)\n"
        "assert store.perform(fx.GetSigningKeys()) == ()\n"
        "store.close()\n"
    )
    services.require("postgres")
    argv = [sys.executable, "-c", program, services.POSTGRES_URL, services.postgres_schema(tmp_path)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_pg_a_transaction_cut_off_mid_way_gives_its_row_locks_back(tmp_path: Path) -> None:
    """The link goes silent while a rotation holds its grant's row lock (the lock taken, the
    answer never delivered): the store gives up after its ``timeout`` (3 s), and the server, which
    never learns the client left, ends the transaction within about that long too
    (``idle_in_transaction_session_timeout``), so the row is free for every other instance
    instead of locked until the server's own TCP keepalives notice, hours later."""
    proxy = _pg_proxy()
    store = _pg_through(proxy, tmp_path)
    locker = psycopg.connect(services.POSTGRES_URL)
    try:
        store.perform(fx.PutCode(code()))
        store.perform(fx.ConsumeCode("h1", grant()))
        locker.execute(f'SELECT 1 FROM "{store.schema}".grants WHERE grant_id = %s FOR UPDATE', ("g1",))
        rotate = fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY)
        thread, outcome = _in_thread(lambda: store.perform(rotate))
        with psycopg.connect(services.POSTGRES_URL, autocommit=True) as admin:
            _blocked_backend(admin, store.schema)
        proxy.freeze()  # the lock is granted once the locker lets go; the answer goes nowhere
        locker.rollback()
        thread.join(timeout=30)
        assert isinstance(outcome.get("error"), StoreUnavailable), outcome

        def free() -> bool:
            try:
                locker.execute(f'SELECT 1 FROM "{store.schema}".grants WHERE grant_id = %s FOR UPDATE NOWAIT', ("g1",))
            except psycopg.errors.LockNotAvailable:
                locker.rollback()
                return False
            locker.rollback()
            return True

        assert eventually(free, timeout=12), "the grant's row stayed locked by a transaction nobody will end"
    finally:
        locker.close()
        proxy.thaw()
        store.close()
        proxy.cut()


@pytest.mark.parametrize(
    ("query", "timeout", "expected"),
    [
        ("", 2.5, {"keepalives": "1", "keepalives_idle": "3", "keepalives_interval": "1", "keepalives_count": "3"}),
        ("&keepalives_idle=60&keepalives_count=9", 7, {"keepalives_idle": "60", "keepalives_interval": "3"}),
    ],
)
def test_pg_connections_give_up_on_a_silent_link_after_the_timeout(
    tmp_path: Path, query: str, timeout: float, expected: dict[str, str]
) -> None:
    """Each pooled connection asks the kernel to probe an idle link after ``timeout`` seconds
    (rounded up), every third of it, three times, and to drop data left unacknowledged for
    ``timeout`` (``tcp_user_timeout``, libpq 12+); an option the URL sets itself is kept as given.
    Read back from libpq's own account of the connection it made."""
    url = f"{services.POSTGRES_URL}?schema={services.postgres_schema(tmp_path)}{query}"
    store = PostgresStore(url, timeout=timeout, min_connections=0)
    try:
        with store._sync_pool().connection() as conn:
            used = conn.info.get_parameters()
    finally:
        store.close()
    assert {name: used.get(name) for name in expected} == expected
    if "keepalives_count" in query:
        assert used.get("keepalives_count") == "9"
    if psycopg.pq.version() >= 120000:
        assert used.get("tcp_user_timeout") == str(math.ceil(timeout) * 1000)


def test_pg_sessions_wait_in_a_transaction_no_longer_than_the_timeout(
    tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    """Every pooled connection bounds how long the server waits on it inside a transaction to the
    store's ``timeout``, never under a second, unless the server's own bound is already tighter
    (then it is kept)."""
    schema = services.postgres_schema(tmp_path)
    base = services.POSTGRES_URL
    store = PostgresStore(base, schema=schema, timeout=3)
    brief = PostgresStore(base, schema=schema, timeout=0.9, min_connections=0)
    tight = PostgresStore(
        base + ("&" if "?" in base else "?") + "options=-c%20idle_in_transaction_session_timeout%3D1500",
        schema=schema,
        timeout=3,
    )
    try:
        store.perform(fx.GetCode("h1"))
        tight.perform(fx.GetCode("h1"))
        with store._sync_pool().connection() as conn:
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("3s",)
        with tight._sync_pool().connection() as conn:
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1500ms",)
        with brief._sync_pool().connection() as conn:
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1s",)
    finally:
        store.close()
        tight.close()
        brief.close()


def test_pg_unreachable_from_the_start_is_503(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=1, connect_timeout=2)
    # The cause, naming the port (libpq's words may be translated), not only the pool's "couldn't
    # get a connection after 1.00 sec".
    with pytest.raises(StoreUnavailable, match=f"^PostgreSQL is unavailable: .*\\b{port}\\b"):
        store.perform(fx.GetClient("c1"))
    store.close()


def test_pg_gone_after_serving_is_503_with_the_cause(tmp_path: Path) -> None:
    """Once every connection it lent is back, a store whose server went away says why a new one
    fails (naming the address refused), as when unreachable from the start: not only that its
    pool waited in vain."""
    proxy = _pg_proxy()
    store = _pg_through(proxy, tmp_path)
    try:
        store.perform(fx.PutCode(code()))
        proxy.cut()
        with pytest.raises(StoreUnavailable):  # the pooled connection's end, or the pool's wait
            store.perform(fx.GetCode("h1"))
        with pytest.raises(StoreUnavailable, match=f"^PostgreSQL is unavailable: .*\\b{proxy.port}\\b"):
            store.perform(fx.GetCode("h1"))
    finally:
        store.close()
        proxy.cut()


# -- faults: Redis -----------------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server (CLIENT PAUSE must not stall anyone else's Redis)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with _private_redis(tmp_path, f"redis://127.0.0.1:{port}/0", "--port", str(port), "--bind", "127.0.0.1") as url:
        yield url


@contextlib.contextmanager
def _private_redis(tmp_path: Path, url: str, *listen: str) -> Iterator[str]:
    """A redis-server of its own listening as ``listen`` says, answering at ``url`` until the test ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("the redis-server program is not on PATH: install it (apt-get install redis-server)")
    proc = subprocess.Popen(
        [binary, *listen, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(probe.ping())
        except redis.exceptions.ConnectionError:
            return False

    try:
        assert eventually(up), "redis-server did not start"
        yield url
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_a_unix_socket_url_with_a_prefix_reaches_the_server(tmp_path: Path) -> None:
    """``unix:///path?prefix=P`` names a Redis on a Unix socket with the key prefix ``P``: the store
    connects there (the prefix taken out, the URL otherwise as written) and keeps its keys under ``P``."""
    sock = tmp_path / "redis.sock"
    url = f"unix://{sock}"
    with _private_redis(tmp_path, url, "--port", "0", "--unixsocket", str(sock)) as served:
        store = RedisStore(f"{served}?db=0&prefix=app:")
        try:
            store.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
            assert [c.client_id for c in store.perform(fx.ListClients())] == ["c1"]
            with redis.Redis.from_url(served) as admin:
                assert admin.keys("*") and all(key.startswith(b"app:") for key in admin.keys("*"))
        finally:
            store.close()


def _paused_script(admin: redis.Redis) -> int | None:
    """The id of the client whose script Redis holds under ``CLIENT PAUSE ... WRITE``, if any."""
    for c in admin.client_list():
        if c["cmd"] in ("evalsha", "eval") and "b" in c["flags"]:
            return int(c["id"])
    return None


def _kill_the_paused_redemption(
    admin: redis.Redis, thread: threading.Thread, outcome: dict[str, Any], store: RedisStore
) -> None:
    """Kill the connection of the script Redis holds under ``CLIENT PAUSE ... WRITE``, unpause,
    and check the redemption failed as an outage with nothing consumed and the next one works."""
    victim = eventually(lambda: _paused_script(admin))
    assert victim, "the redemption never reached the server"
    admin.execute_command("CLIENT", "KILL", "ID", victim)
    admin.execute_command("CLIENT", "UNPAUSE")
    thread.join(timeout=30)
    assert isinstance(outcome.get("error"), StoreUnavailable), outcome
    assert store.perform(fx.GetCode("h1")).consumed is False
    assert store.perform(fx.GetGrant("g1")) is None
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    store.close()
    admin.close()


def test_redis_connection_killed_during_code_redemption(own_redis: str) -> None:
    """CLIENT KILL while ConsumeCode is queued: 503, nothing consumed, next call works."""
    store = RedisStore(own_redis, prefix="t:")
    admin = redis.Redis.from_url(own_redis, decode_responses=True)
    store.perform(fx.PutCode(code()))
    admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    thread, outcome = _in_thread(lambda: store.perform(fx.ConsumeCode("h1", grant())))
    _kill_the_paused_redemption(admin, thread, outcome, store)


def test_redis_connection_killed_during_code_redemption_on_the_event_loop(own_redis: str) -> None:
    """The same on the asyncio path (``aperform``): a write whose connection dies is not tried
    again (only reads are, after an outage), since the script may have run before the reply was
    lost: 503, nothing consumed, and the next redemption works (TK-04)."""
    store = RedisStore(own_redis, prefix="t:")
    admin = redis.Redis.from_url(own_redis, decode_responses=True)
    store.perform(fx.PutCode(code()))
    on_loop = RedisStore(own_redis, prefix="t:")

    async def redeem() -> Any:
        try:
            return await on_loop.aperform(fx.ConsumeCode("h1", grant()))
        finally:
            await on_loop.aclose()

    admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    thread, outcome = _in_thread(lambda: asyncio.run(redeem()))
    _kill_the_paused_redemption(admin, thread, outcome, store)


def test_redis_a_read_whose_connection_is_killed_is_tried_again(own_redis: str) -> None:
    """A read (it changes nothing) whose connection dies mid-way is tried once more, on a fresh
    connection: an answer, not a 503, on a thread and on an event loop. The listing is a script,
    held by ``CLIENT PAUSE ... WRITE`` until its connection is killed."""
    store = RedisStore(own_redis, prefix="t:")
    admin = redis.Redis.from_url(own_redis, decode_responses=True)
    store.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))

    async def on_a_loop() -> Any:
        try:
            return await store.aperform(fx.ListClients())
        finally:
            await store.aclose()

    for listing in (lambda: store.perform(fx.ListClients()), lambda: asyncio.run(on_a_loop())):
        admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        thread, outcome = _in_thread(listing)
        victim = eventually(lambda: _paused_script(admin))
        assert victim, "the listing never reached the server"
        admin.execute_command("CLIENT", "KILL", "ID", victim)
        admin.execute_command("CLIENT", "UNPAUSE")
        thread.join(timeout=30)
        assert [c.client_id for c in outcome.get("value", ())] == ["c1"], outcome
    store.close()
    admin.close()


def test_redis_an_effect_on_an_event_loop_waits_for_a_busy_connection_no_longer_than_the_timeout(
    own_redis: str,
) -> None:
    """On an event loop, an effect finding every connection busy waits for one no longer than the
    store's ``timeout`` (1 s here), then is StoreUnavailable: the only connection is held by a
    listing Redis keeps paused for 10 s (its reply awaited up to the URL's ``socket_timeout``), and
    the read is refused before the pause ends; the listing is then answered."""
    store = RedisStore(f"{own_redis}?socket_timeout=30", prefix="t:", max_connections=1, timeout=1)
    admin = redis.Redis.from_url(own_redis, decode_responses=True)
    store.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))

    async def on_a_loop() -> None:
        try:
            listing = asyncio.ensure_future(store.aperform(fx.ListClients()))
            assert await asyncio.to_thread(eventually, lambda: _paused_script(admin)), "the listing never ran"
            with pytest.raises(StoreUnavailable):
                await store.aperform(fx.GetClient("c1"))
            admin.execute_command("CLIENT", "UNPAUSE")
            assert [c.client_id for c in await listing] == ["c1"]
        finally:
            await store.aclose()

    admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    try:
        _within_30_s(lambda: asyncio.run(on_a_loop()))
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        store.close()
        admin.close()


def test_redis_idle_connections_killed_are_replaced_quietly(own_redis: str) -> None:
    store = RedisStore(own_redis, prefix="t:")
    admin = redis.Redis.from_url(own_redis)
    store.perform(fx.PutCode(code()))
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert store.perform(fx.ConsumeCode("h1", grant())) is True  # a write, on a fresh connection
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert store.perform(fx.GetCode("h1")).consumed is True
    store.close()
    admin.close()


def test_redis_outage_is_503_and_service_resumes_when_redis_returns(tmp_path: Path) -> None:
    services.require("redis")
    url = urlsplit(services.REDIS_URL)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}{url.path}", prefix=services.redis_prefix(tmp_path), timeout=2)
    try:
        store.perform(fx.PutCode(code()))
        proxy.cut()
        with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
            store.perform(fx.ConsumeCode("h1", grant()))
        with pytest.raises(StoreUnavailable):
            store.perform(fx.GetCode("h1"))
        proxy.restore()
        assert store.perform(fx.GetCode("h1")).consumed is False  # the failed write left nothing
        assert store.perform(fx.ConsumeCode("h1", grant())) is True

        async def main() -> None:
            proxy.cut()
            with pytest.raises(StoreUnavailable):
                await store.aperform(fx.GetCode("h1"))
            proxy.restore()
            assert (await store.aperform(fx.GetCode("h1"))).consumed is True
            await store.aclose()

        asyncio.run(main())
    finally:
        store.close()
        proxy.cut()


def test_redis_store_survives_a_redis_restart(own_redis: str) -> None:
    """Scripts are loaded again after a restart (NOSCRIPT falls back to EVAL)."""
    store = RedisStore(own_redis, prefix="t:")
    admin = redis.Redis.from_url(own_redis)
    store.perform(fx.PutCode(code()))
    admin.script_flush()
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    assert attrs.evolve(store.perform(fx.GetCode("h1")), consumed=False) == code()
    store.close()
    admin.close()


# -- Redis refusing to serve, and purge against a concurrent put -----------------------------------------------


def _each_unavailable(store: Any, effects: Sequence[fx.Effect], match: str) -> None:
    """Each of ``effects`` raises StoreUnavailable saying ``match``, through perform and aperform."""
    for effect in effects:
        with pytest.raises(StoreUnavailable, match=match):
            store.perform(effect)
        with pytest.raises(StoreUnavailable, match=match):
            asyncio.run(store.aperform(effect))


def _writes_refused(store: RedisStore, secret: bytes) -> None:
    """Every kind of write is a 503-style StoreUnavailable; reads still answer (the server secret
    there already is only read: an instance still starts); nothing is written."""
    writes = (
        fx.PutPending(PendingAuthorization("t9", "c1", "https://app.example/cb", True, None, "x" * 43,
                                           ("https://mcp.example.com/mcp",), ("tools:list",), T0, T0 + 600)),
        fx.ConsumeCode("h1", grant()),
        fx.RevokeAccessToken("j1", int(time.time()) + 600),
        fx.EndSession("s1", int(time.time()) + 600),
        fx.Hit("b", 5, 60, T0),
    )  # fmt: skip
    _each_unavailable(store, writes, "Redis is unavailable")
    assert store.perform(fx.GetCode("h1")).consumed is False
    assert store.perform(fx.IsTokenRevoked("j1", "g1")) is True  # no grant g1: a read that answers
    assert store.perform(fx.IsSessionEnded("s1")) is False
    users = RedisUsers(store)
    assert users.get_hash("alice") == "h-1"
    with pytest.raises(StoreUnavailable):
        users.replace_hash("alice", "h-1", "h-2")
    with pytest.raises(StoreUnavailable):
        redis_secret(RedisStore(store.url, prefix="other:"))
    assert redis_secret(store) == secret
    assert users.get_hash("alice") == "h-1"


def _refusing_writes(url: str, refuse: Callable[[redis.Redis], Any], restore: Callable[[redis.Redis], Any]) -> None:
    """A store on ``url`` holding a code, a user and the server secret; ``refuse`` makes Redis
    refuse writes (:func:`_writes_refused` holds then), ``restore`` lets it serve again, and the
    store serves again at once."""
    store = RedisStore(url, prefix="t:")
    admin = redis.Redis.from_url(url)
    store.perform(fx.PutCode(code()))
    RedisUsers(store).set_hash("alice", "h-1")
    secret = redis_secret(store)
    refuse(admin)
    try:
        _writes_refused(store, secret)
    finally:
        restore(admin)
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    store.close()
    admin.close()


def test_redis_out_of_memory_is_an_outage_not_a_bug(own_redis: str) -> None:
    """``maxmemory`` reached under ``noeviction`` (the policy the deployment guide asks for):
    Redis refuses every write with OOM, which is StoreUnavailable (503), never a 500."""

    def full(admin: redis.Redis) -> None:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")

    _refusing_writes(own_redis, full, lambda admin: admin.config_set("maxmemory", "0"))


def test_redis_demoted_to_a_replica_is_an_outage_not_a_bug(own_redis: str) -> None:
    """After a failover the old primary is a read-only replica: READONLY is StoreUnavailable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()[1]
    _refusing_writes(
        own_redis,
        lambda admin: admin.execute_command("REPLICAOF", "127.0.0.1", str(nowhere)),
        lambda admin: admin.execute_command("REPLICAOF", "NO", "ONE"),
    )


@pytest.mark.parametrize("damage", ["another type", "not the record", "not JSON"])
def test_redis_values_that_do_not_read_are_damage(rd: RedisStore, damage: str) -> None:
    """A key under the store's prefix holding another type, or text that is not its record, is
    damage, answered like an outage (503) as a damaged SQLite file is, on reads and writes alike."""
    client = rd._sync_client()
    if damage == "another type":
        client.hset(rd.prefix + "keys", "x", "y")
        client.hset(rd.prefix + "pending:t1", "x", "y")
    else:
        value = "[1, 2]" if damage == "not the record" else "{not json"
        client.set(rd.prefix + "keys", value)
        client.set(rd.prefix + "pending:t1", value)
    for effect in (fx.GetSigningKeys(), fx.GetPending("t1", T0)):
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            rd.perform(effect)
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            asyncio.run(rd.aperform(effect))


def test_redis_damage_in_every_kind_of_value_reads_as_damage(rd: RedisStore) -> None:
    """Each decoder of what Redis holds (a client, a code's and a grant's hash, a rate-limit
    counter) reports a value that does not read as damage, and changes nothing."""
    client = rd._sync_client()
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    client.set(rd.prefix + "client:c9", '{"client_id": 7}')
    client.hset(rd.prefix + "code:h1", "consumed", "1")
    client.hset(rd.prefix + "code:h1", "record", "{not json")
    client.hset(rd.prefix + "grant:g1", "gen", "one")
    hit = fx.Hit("b1", 5, 60, T0, step=0)
    client.set(rd.prefix + f"hit:{hit.window_end}:b1", "many")
    damaged = [fx.GetClient("c9"), fx.GetCode("h1"), fx.GetGrant("g1"), fx.ListGrants(subject="alice"), hit]
    before = {k: client.dump(k) for k in client.scan_iter(match=rd.prefix + "*")}
    for effect in damaged:
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            rd.perform(effect)
    assert {k: client.dump(k) for k in client.scan_iter(match=rd.prefix + "*")} == before


def test_redis_a_hash_without_its_record_is_damage_not_a_missing_record(rd: RedisStore) -> None:
    """Every write of a code's or a grant's hash sets its record with the other fields, so a hash
    holding fields but no record (made by hand or by another program) is damage (503), never read
    as no code or no grant: a refresh token of that grant is not answered ``invalid_grant`` while
    its family cannot be read, and nothing is written."""
    client = rd._sync_client()
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    client.hdel(rd.prefix + "code:h1", "record")
    client.hdel(rd.prefix + "grant:g1", "record")
    before = _redis_contents(rd)
    rotate = fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY)
    for effect in (fx.GetCode("h1"), fx.GetGrant("g1"), fx.ListGrants(subject="alice"), rotate):
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            rd.perform(effect)
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            asyncio.run(rd.aperform(effect))
    assert _redis_contents(rd) == before
    assert rd.perform(fx.GetGrant("g2")) is None and rd.perform(fx.GetCode("h2")) is None


@pytest.mark.parametrize("number", ["+1", " 1", "1_0", "\u0661"])
def test_redis_numbers_read_only_as_the_scripts_read_them(rd: RedisStore, number: str) -> None:
    """A stored number is decimal digits with an optional ``-``, in Python as in the scripts'
    ``whole``: text ``int()`` would also take (a sign, spaces, ``_``, other scripts' digits) is
    damage, so a read never answers from a value a rotation or a counter would refuse."""
    client = rd._sync_client()
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    client.hset(rd.prefix + "grant:g1", "gen", number)
    hit = fx.Hit("b1", 5, 60, T0, step=0)
    client.set(rd.prefix + f"hit:{hit.window_end}:b1", number)
    for effect in (fx.GetGrant("g1"), hit):
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            rd.perform(effect)


def _redis_contents(rd: RedisStore) -> dict[bytes, Any]:
    """Every key under the store's prefix, its type and what it holds (not ``DUMP``: a large hash
    may come out in another order after Redis merely read it)."""
    client = rd._sync_client()
    read: dict[bytes, Callable[[bytes], Any]] = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
    }
    return {k: (client.type(k), read[client.type(k)](k)) for k in client.scan_iter(match=rd.prefix + "*")}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *((name, "one") for name in ("exp", "gen", "rexp", "rot")),
        ("record", "{not json"),
        ("record", "[1]"),
        ("record", json.dumps({**GRANTS.to_dict(grant()), "scopes": [None]})),
    ],
    ids=["exp", "gen", "rexp", "rot", "record-not-json", "record-not-an-object", "record-null-scope"],
)
def test_redis_a_rotation_meeting_damage_writes_nothing(rd: RedisStore, field: str, value: str) -> None:
    """A grant's number that is not a whole number, or a record that does not read, is damage
    (503) found before the rotation writes anything: the current token presented does not rotate
    the family, nor (with a damaged generation taken for another one) revoke it as a replay."""
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    rd._sync_client().hset(rd.prefix + "grant:g1", field, value)
    before = _redis_contents(rd)
    rotate = fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        rd.perform(rotate)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        asyncio.run(rd.aperform(rotate))
    assert _redis_contents(rd) == before


def test_redis_a_rotation_whose_record_changes_after_it_was_read_writes_nothing(
    rd: RedisStore, monkeypatch: Any
) -> None:
    """The record read and decoded before the rotation script runs is the one the script rotates:
    a record that became other text in between (records are written once, so this is damage)
    makes the script write nothing."""
    from kavach.stores import redis as redis_store

    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    key = rd.prefix + "grant:g1"
    damaged = json.dumps({**GRANTS.to_dict(grant()), "subject": "mallory"})
    execute = redis_store._execute

    def damaging(client: Any, step: Any) -> Any:
        reply = execute(client, step)
        if getattr(step, "args", None) == ("HGETALL", key):
            client.hset(key, "record", damaged)  # the record changes once it has been read
        return reply

    before = _redis_contents(rd)
    monkeypatch.setattr(redis_store, "_execute", damaging)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        rd.perform(fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY))
    after = _redis_contents(rd)
    assert after[key.encode()][1][b"record"] == damaged.encode()
    after[key.encode()][1][b"record"] = before[key.encode()][1][b"record"]
    assert after == before  # the generation, hash and times are as they were


_WINDOW_END = fx.Hit("b1", 5, 60, T0).window_end


@pytest.mark.parametrize(
    ("key", "value", "effect"),
    [
        (f"hit:{_WINDOW_END}:b1", "many", fx.Hit("b1", 5, 60, T0, step=1)),
        (f"hit:{_WINDOW_END}:b1", "many", fx.Hit("b1", 5, 60, T0, step=-1)),
        ("revoked:j1", "x", fx.RevokeAccessToken("j1", T0 + 600)),
        ("keys", "{not json", fx.SwapSigningKeys((), (key("k1"),))),
        ("keys", "[1, 2]", fx.SwapSigningKeys((), (key("k1"),))),
        ("seq", "x", fx.PutClient(Client("c2", ("https://app.example/cb",)))),
        ("seq", "x", fx.ConsumeCode("h1", grant())),
    ],
    ids=["hit", "hit-given-back", "revoke-access", "swap-keys-not-json", "swap-keys-not-keys", "put-client",
         "consume-code"],
)  # fmt: skip
def test_redis_a_script_meeting_a_damaged_value_writes_nothing(
    rd: RedisStore, key: str, value: str, effect: fx.Effect
) -> None:
    """A counter, a revoked token's expiry or the sequence that is not a whole number, or signing
    keys that are not their JSON, met by a script that would change it or write beside it: damage
    (503), never Redis's own error (500), and nothing written."""
    rd.perform(fx.PutCode(code()))
    rd._sync_client().set(rd.prefix + key, value)
    before = _redis_contents(rd)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        rd.perform(effect)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        asyncio.run(rd.aperform(effect))
    assert _redis_contents(rd) == before


@pytest.mark.parametrize(
    ("index", "effect"),
    [
        ("clients", fx.PutClient(Client("c2", ("https://app.example/cb",)))),
        ("codes:subject:bob", fx.PutCode(attrs.evolve(code("h2"), subject="bob"))),
        ("codes:client:c1", fx.PutCode(code("h2"))),
        ("grants:subject:alice", fx.ConsumeCode("h1", grant())),
        ("grants:client:c1", fx.ConsumeCode("h1", grant())),
        ("clients", fx.DeleteClient("c1", T0 + 5)),
        ("grants:client:c1", fx.DeleteClient("c1", T0 + 5)),
        ("codes:client:c1", fx.DeleteClient("c1", T0 + 5)),
        ("codes:subject:alice", fx.RevokeSubject("alice", T0 + 5)),
        ("grants:subject:alice", fx.RevokeSubject("alice", T0 + 5)),
    ],
    ids=["put-client", "put-code-subject", "put-code-client", "consume-code-subject", "consume-code-client",
         "delete-client", "delete-client-grants", "delete-client-codes", "revoke-subject-codes",
         "revoke-subject-grants"],
)  # fmt: skip
def test_redis_an_index_of_another_type_is_damage_met_before_any_write(
    rd: RedisStore, index: str, effect: fx.Effect
) -> None:
    """An index key holding another type than the sorted set a script adds to or reads: damage
    (503), found before the script writes anything. Before, Redis stopped the script at that
    index with the writes before it kept: a code stored but missing from its subject's index
    (so the subject's revocation would not drop it), a grant stored but not listed, a client
    deleted with its grants left unrevoked."""
    client = rd._sync_client()
    rd.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    rd.perform(fx.PutCode(code()))
    if not isinstance(effect, fx.ConsumeCode):
        rd.perform(fx.PutCode(code("h0", "g0")))
        assert rd.perform(fx.ConsumeCode("h0", grant("g0"))) is True
    client.delete(rd.prefix + index)
    client.set(rd.prefix + index, "another type")
    before = _redis_contents(rd)
    with pytest.raises(DamagedValueError, match=f"prefix is damaged: {re.escape(rd.prefix + index)} cannot"):
        rd.perform(effect)
    with pytest.raises(DamagedValueError, match="prefix is damaged"):
        asyncio.run(rd.aperform(effect))
    assert _redis_contents(rd) == before


def test_redis_revocations_pass_over_a_damaged_entry_and_revoke_the_rest(rd: RedisStore) -> None:
    """A subject's revocation meeting a grant or code key of another type among those its indexes
    list passes over it (nothing can be read or used from it: every token of it is refused as the
    store's damage) and revokes every other grant, drops every other code, and counts only them."""
    client = rd._sync_client()
    for n in range(3):
        rd.perform(fx.PutCode(code(f"h{n}", f"g{n}")))
        assert rd.perform(fx.ConsumeCode(f"h{n}", grant(f"g{n}"))) is True
    for n in range(3, 6):
        rd.perform(fx.PutCode(code(f"h{n}", f"g{n}")))
    for damaged in ("grant:g1", "code:h4"):
        client.delete(rd.prefix + damaged)
        client.set(rd.prefix + damaged, "another type")
    assert rd.perform(fx.RevokeSubject("alice", T0 + 5)) == 2
    assert [rd.perform(fx.GetGrant(g)).revoked_at for g in ("g0", "g2")] == [T0 + 5, T0 + 5]
    assert [rd.perform(fx.GetCode(h)) for h in ("h3", "h5")] == [None, None]
    assert client.get(rd.prefix + "grant:g1") == b"another type"


def test_redis_list_grants_follows_the_records_not_the_indexes(rd: RedisStore) -> None:
    """An index is only where to look: a listing returns a grant only when its record matches the
    subject or client asked for, and passes over a member whose key has gone. Here a grant id met
    again under another subject, after the first grant's key expired (its subject's index keeps
    the member until purge). A hash without its record is damage
    (test_redis_a_hash_without_its_record_is_damage_not_a_missing_record)."""
    client = rd._sync_client()
    rd.perform(fx.PutCode(code("h1", "g1")))
    assert rd.perform(fx.ConsumeCode("h1", grant("g1"))) is True
    client.delete(rd.prefix + "grant:g1")  # as its TTL would: "alice"'s index still lists g1
    bob = attrs.evolve(grant("g1"), subject="bob")
    rd.perform(fx.PutCode(attrs.evolve(code("h2", "g1"), subject="bob")))
    assert rd.perform(fx.ConsumeCode("h2", bob)) is True
    assert rd.perform(fx.ListGrants(subject="alice")) == ()
    assert rd.perform(fx.ListGrants(subject="bob")) == (bob,)
    assert rd.perform(fx.ListGrants()) == (bob,)
    assert rd.perform(fx.ListGrants(client_id="c1")) == (bob,)


def test_redis_purge_counts_what_it_drops_of_each_kind(rd: RedisStore) -> None:
    """``purge`` returns, per kind, how many keys it deleted: those expired at ``now``, no others."""
    now = T0 + 1000
    for name, expires_at in (("old", now), ("new", now + 1)):
        pend = PendingAuthorization(name, "c1", "https://app.example/cb", True, None, "ch", (), (), T0, expires_at)
        rd.perform(fx.PutPending(pend))
        rd.perform(fx.PutCode(attrs.evolve(code(name, name), expires_at=expires_at)))
        rd.perform(fx.PutCode(attrs.evolve(code("x" + name, name), expires_at=expires_at)))
        assert rd.perform(fx.ConsumeCode("x" + name, attrs.evolve(grant(name), expires_at=expires_at))) is True
        rd.perform(fx.RevokeAccessToken(name, expires_at))
        rd.perform(fx.EndSession("s" + name, expires_at))
        fetched = Client("d" + name, ("https://app.example/cb",), kind="document", expires_at=expires_at)
        rd.perform(fx.PutClient(fetched))
    rd.perform(fx.Hit("past", 1, 100, now - 1))  # window ends at now
    rd.perform(fx.Hit("live", 1, 100, now))
    assert rd.purge(now) == {
        "pending": 1, "codes": 2, "grants": 1, "revoked_tokens": 2, "rate_limits": 1, "clients": 1,
    }  # fmt: skip


def test_redis_purge_skips_a_damaged_key_and_purges_the_others(
    rd: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A code whose expiry is not a number, a revoked token's expiry that is not one, a consent
    ticket's key holding another type: each is logged and left as it is, and everything else that
    expired is purged (before, the first of them stopped the purge with Redis's own error)."""
    client = rd._sync_client()
    for h in ("h1", "h2", "h3"):
        rd.perform(fx.PutCode(code(h)))
    client.hset(rd.prefix + "code:h2", "exp", "x")
    rd.perform(fx.RevokeAccessToken("j1", T0 + 600))
    client.set(rd.prefix + "revoked:j2", "x")
    client.hset(rd.prefix + "pending:t1", "x", "y")
    with caplog.at_level("WARNING", logger="kavach.stores.redis"):
        counts = rd.purge(T0 + DAY)
    assert (counts["codes"], counts["revoked_tokens"]) == (2, 1)
    damaged = ["code:h2", "pending:t1", "revoked:j2"]
    left = sorted(k.decode()[len(rd.prefix) :] for k in client.scan_iter(match=rd.prefix + "*"))
    assert left == sorted([*damaged, "codes:client:c1", "codes:subject:alice"])  # indexes listing h2
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert all(rd.prefix + name in skipped for name in damaged)


def test_redis_a_record_with_a_damaged_array_or_metadata_is_damage(rd: RedisStore) -> None:
    """A client whose redirect URIs are a string (read, before, as a tuple of its characters) or
    whose metadata is no JSON object, a grant whose scopes hold a null: damage (503) when read,
    not a record that fails later in the core (500)."""
    client = rd._sync_client()
    rd.perform(fx.PutCode(code()))
    assert rd.perform(fx.ConsumeCode("h1", grant())) is True
    registered = CLIENTS.to_dict(Client("c1", ("https://app.example/cb",)))
    client.set(rd.prefix + "client:c2", json.dumps({**registered, "redirect_uris": "https://app.example/cb"}))
    client.set(rd.prefix + "client:c3", json.dumps({**registered, "metadata": "[1]"}))
    client.hset(rd.prefix + "grant:g1", "record", json.dumps({**GRANTS.to_dict(grant()), "scopes": [None]}))
    for effect in (fx.GetClient("c2"), fx.GetClient("c3"), fx.GetGrant("g1"), fx.ListGrants()):
        with pytest.raises(DamagedValueError, match="prefix is damaged"):
            rd.perform(effect)


@pytest.mark.parametrize("effect", [fx.GetClient("c1"), fx.PutClient(Client("c1", ("https://app.example/cb",)))])
def test_a_redis_error_reply_that_is_no_outage_is_raised_as_itself(
    rd: RedisStore, monkeypatch: Any, effect: fx.Effect
) -> None:
    """An error reply that is no refusal of a server unable to serve now (here: a command Redis
    does not know) is a bug, raised as it is from a read (after its one retry) and from a write;
    never swallowed into an answer, nor turned into a 503."""
    from kavach.stores.redis import _Command

    def unknown(e: fx.Effect) -> Any:
        yield _Command(("NO-SUCH-COMMAND",))
        return "answered"

    monkeypatch.setitem(rd._handlers, type(effect), unknown)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        rd.perform(effect)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        asyncio.run(rd.aperform(effect))


def test_a_redis_handler_bug_is_raised_as_itself_not_as_damage(rd: RedisStore, monkeypatch: Any) -> None:
    """Only decoding is read as damage: an error elsewhere in a handler, after a good reply, is a
    bug, and surfaces as one (not as a 503 blaming the data)."""
    rd.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    assert rd.perform(fx.GetClient("c1")) is not None

    def broken(e: fx.GetClient) -> Any:
        found = yield from RedisStore._get_client(rd, e)
        return found.no_such_field  # the bug

    monkeypatch.setitem(rd._handlers, fx.GetClient, broken)
    with pytest.raises(AttributeError, match="no_such_field"):
        rd.perform(fx.GetClient("c1"))
    with pytest.raises(AttributeError, match="no_such_field"):
        asyncio.run(rd.aperform(fx.GetClient("c1")))


def test_redis_purge_keeps_a_client_put_again_at_any_step(rd: RedisStore, tmp_path: Path) -> None:
    """An expired document client purged while another instance puts it again (the document
    fetched anew): wherever among the purge's commands the put lands, the client is afterwards
    both readable and listed, or neither (the key and its index entry go together)."""
    from kavach.stores.redis import _drive

    now = int(time.time())
    doc = "https://app.example/meta.json"
    expired = Client(doc, ("https://app.example/cb",), kind="document", expires_at=now - 10)
    renewed = attrs.evolve(expired, expires_at=now + 3600)
    other = services.redis_store(tmp_path)  # the other instance
    real = rd._sync_client()

    class Interleaved:
        def __init__(self, at: int) -> None:
            self.at, self.calls = at, 0

        def execute_command(self, *args: Any) -> Any:
            if self.calls == self.at:
                other.perform(fx.PutClient(renewed))
            self.calls += 1
            return real.execute_command(*args)

    counting = Interleaved(-1)
    rd.perform(fx.PutClient(expired))
    _drive(counting, rd._purge_plan(real, now))
    assert counting.calls > 1 and rd.perform(fx.ListClients()) == ()
    for at in range(counting.calls + 1):
        rd.perform(fx.PutClient(expired))
        _drive(Interleaved(at), rd._purge_plan(real, now))
        readable = rd.perform(fx.GetClient(doc)) is not None
        listed = [c.client_id for c in rd.perform(fx.ListClients())] == [doc]
        assert (readable and listed) or (not readable and not listed), (at, readable, listed)
        if at >= counting.calls:
            other.perform(fx.PutClient(renewed))
            assert rd.perform(fx.GetClient(doc)) is not None
    other.close()


# -- PostgreSQL: a stricter default isolation, a database taking no writes -----------------------------------


def _pg_with_options(tmp_path: Path, options: str, **kw: Any) -> PostgresStore:
    """A store on this test's schema whose connections start with libpq ``options`` (as a
    server, database or role default would set them)."""
    services.require("postgres")
    parts = urlsplit(services.POSTGRES_URL)
    query = "&".join(filter(None, [parts.query, "options=" + quote(options)]))
    dsn = parts._replace(query=query).geturl()
    kw.setdefault("min_connections", 0)
    return PostgresStore(dsn, schema=services.postgres_schema(tmp_path), **kw)


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_pg_losers_of_a_race_get_answers_whatever_the_default_isolation(tmp_path: Path, level: str) -> None:
    """Under a default of REPEATABLE READ or SERIALIZABLE the losers of a redemption or a
    rotation race would get serialization failures (503; and no replay detection, TK-04): every
    connection is READ COMMITTED, so they get the answers the contract gives (False; retried)."""
    racers = 16
    store = _pg_with_options(tmp_path, f"-c default_transaction_isolation={level.replace(' ', chr(92) + ' ')}",
                             max_connections=racers)  # fmt: skip
    rows = store._run(_rows_plan("SHOW transaction_isolation"), False)
    assert rows == [("read committed",)], "every connection is pinned, whatever the default"
    barrier = threading.Barrier(racers)

    def race(effect: Callable[[], fx.Effect]) -> list[Any]:
        def one(_: int) -> Any:
            barrier.wait(timeout=30)
            try:
                return store.perform(effect())
            except StoreUnavailable as exc:
                return exc

        with ThreadPoolExecutor(max_workers=racers) as pool:
            return list(pool.map(one, range(racers)))

    for round_ in range(3):
        store.perform(fx.PutCode(code(f"h{round_}", f"g{round_}")))
        consumed = race(lambda round_=round_: fx.ConsumeCode(f"h{round_}", grant(f"g{round_}")))  # type: ignore[misc]
        assert sorted(map(repr, consumed)) == ["False"] * (racers - 1) + ["True"], consumed
        rotated = race(lambda round_=round_: fx.RotateRefresh(  # type: ignore[misc]
            f"g{round_}", 0, "r0", "r1", T0 + 100, 10, T0 + 14 * DAY))  # fmt: skip
        outcomes = sorted(r.outcome if isinstance(r, fx.Rotation) else repr(r) for r in rotated)
        assert outcomes == ["retried"] * (racers - 1) + ["rotated"], outcomes
    store.close()


def _rows_plan(sql: str) -> Any:
    return (yield sql, ())


def test_pg_read_only_database_is_an_outage_and_still_serves_reads(pg: PostgresStore, tmp_path: Path) -> None:
    """A database taking no writes (a hot standby after a failover, or ``default_transaction_
    read_only`` switched on): writes are StoreUnavailable (503), not 500, and write nothing; a
    process starting then (its first use checks the schema) still serves reads."""
    pg.perform(fx.PutCode(code()))
    pg.perform(fx.ConsumeCode("h1", grant()))
    pg.perform(fx.PutCode(code("h2", "g2")))
    read_only = _pg_with_options(tmp_path, "-c default_transaction_read_only=on")
    assert read_only.perform(fx.GetCode("h2")).consumed is False  # first use: no DDL on an up-to-date schema
    assert read_only.perform(fx.GetGrant("g1")) is not None
    writes = (
        fx.ConsumeCode("h2", grant("g2")),
        fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 100, 10, T0 + 14 * DAY),
        fx.RevokeAccessToken("j1", T0 + 600),
        fx.EndSession("s1", T0 + 600),
        fx.Hit("b", 5, 60, T0),
        fx.RevokeSubject("alice", T0 + 1),
    )
    _each_unavailable(read_only, writes, "read-only")
    assert pg.perform(fx.GetCode("h2")).consumed is False
    assert pg.perform(fx.GetGrant("g1")) == grant()
    assert pg.perform(fx.IsSessionEnded("s1")) is False
    read_only.close()


_ROTATE = fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + DAY)


@pytest.mark.parametrize(
    ("damage", "effects"),
    [
        ("UPDATE {s}.grants SET scopes = ARRAY[NULL]::text[]", [fx.GetGrant("g1"), fx.ListGrants(), _ROTATE]),
        ("UPDATE {s}.codes SET resources = ARRAY[ARRAY['a', 'b']]", [fx.GetCode("h1")]),
        ("UPDATE {s}.clients SET metadata = '{{not json'", [fx.GetClient("c1"), fx.ListClients()]),
        ("UPDATE {s}.clients SET metadata = '[1]'", [fx.GetClient("c1")]),
    ],
    ids=["null-in-scopes", "array-of-arrays", "metadata-not-json", "metadata-not-an-object"],
)
def test_pg_a_row_that_does_not_read_is_damage_and_changes_nothing(
    pg: PostgresStore, admin: psycopg.Connection[Any], damage: str, effects: list[fx.Effect]
) -> None:
    """An array holding a NULL or arrays (read, before, as a tuple holding ``None``), a client's
    metadata that is no JSON object: :class:`DamagedRowError`, a StoreUnavailable (503) as on the
    other stores, never a record that fails later in the core (500); a rotation meeting it
    neither rotates nor revokes the family."""
    pg.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
    pg.perform(fx.PutCode(code()))
    pg.perform(fx.ConsumeCode("h1", grant()))
    admin.execute(damage.format(s=f'"{pg.schema}"'))
    family = f'SELECT refresh_generation, refresh_hash, revoked_at FROM "{pg.schema}".grants'
    before = admin.execute(family).fetchall()
    for effect in effects:
        with pytest.raises(DamagedRowError, match="cannot be read") as caught:
            pg.perform(effect)
        assert isinstance(caught.value, StoreUnavailable)
        with pytest.raises(DamagedRowError, match="cannot be read"):
            asyncio.run(pg.aperform(effect))
    assert admin.execute(family).fetchall() == before == [(0, "r0", None)]


@pytest.mark.parametrize(
    ("reply", "is_outage"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", True),
        ("READONLY You can't write against a read only replica.", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.", True),
        ("BUSY Redis is busy running a script.", True),
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", True),  # damage: 503 too
        ("ERR unknown command 'FOO'", False),
    ],
)
def test_redis_replies_of_a_server_that_will_not_serve_now_are_outages(reply: str, is_outage: bool) -> None:
    """Each error reply as redis-py itself raises it (its parser picks the class and may drop
    the code): a refusal of a live server is StoreUnavailable (503), anything else a bug."""
    from kavach.stores.redis import outage
    from redis._parsers.base import BaseParser

    error = BaseParser.parse_error(reply)
    assert (outage(error) is not None) is is_outage, (type(error).__name__, str(error))


@pytest.mark.parametrize(
    ("failure", "read", "calls", "raised"),
    [
        (redis.exceptions.ConnectionError("Connection closed by server."), True, 2, StoreUnavailable),
        (redis.exceptions.ConnectionError("Connection closed by server."), False, 1, StoreUnavailable),
        (redis.exceptions.ResponseError("ERR unknown command 'FOO'"), True, 1, redis.exceptions.ResponseError),
    ],
    ids=["read-outage", "write-outage", "read-bug"],
)
def test_redis_only_a_read_that_met_an_outage_is_tried_again(
    failure: redis.exceptions.RedisError, read: bool, calls: int, raised: type[Exception]
) -> None:
    """A read meeting an outage is tried once more (it changes nothing); a write never is (it may
    have been applied before the connection dropped), and a failure that is no outage (a bug) is
    raised at once, as it is, instead of being run a second time."""
    from kavach.stores.redis import attempt

    made: list[None] = []

    def call() -> None:
        made.append(None)
        raise failure

    with pytest.raises(raised):
        attempt(call, read=read)
    assert len(made) == calls
