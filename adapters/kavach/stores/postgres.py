"""The PostgreSQL store: several kavach processes sharing one database (psycopg 3).

Guarantees:

- Every effect in :mod:`kavach_core.effects` (except the outbound ``FetchDocument``) is one
  atomic step for every process sharing the database, with results identical to
  :class:`kavach_core.memory_store.MemoryStore`:

  - code redemption (``ConsumeCode``) is a single statement: ``UPDATE codes ... WHERE NOT
    consumed RETURNING`` feeding an ``INSERT INTO grants`` in the same statement, so of any
    number of concurrent redemptions exactly one consumes the code and stores the grant;
  - refresh rotation (``RotateRefresh``) reads the family with ``SELECT ... FOR UPDATE`` and
    writes the outcome in the same short transaction (concurrent rotations queue on the row);
  - consent tickets are taken with ``DELETE ... RETURNING``; revocations of a grant or an access
    token and rate-limit hits are single statements;
  - client deletion (``DeleteClient``) and a subject's revocation (``RevokeSubject``) run in one
    ``READ COMMITTED`` transaction: the codes not yet redeemed are deleted first, then the grants
    are revoked in a later statement, whose fresh snapshot sees any grant a concurrent
    redemption committed meanwhile (see the comment above ``_delete_client``);
  - a signing-key swap locks the key table (``EXCLUSIVE`` mode: readers go on) for its
    compare-and-set, so a rotation is decided once for the whole cluster.
- The schema is versioned: ``<schema>.schema_version`` holds one row per applied migration.
  The first use by a process takes a transaction-scoped advisory lock and applies the missing
  migrations in order in that transaction, so processes starting together migrate once; a
  database migrated by a newer kavachOS is refused with :class:`SchemaVersionError`.
- Connections come from psycopg_pool pools (one for threads, one per event loop for
  ``aperform``), opened on first use; a pooled connection is checked before it is lent, so a
  connection killed while idle (server restart, ``pg_terminate_backend``, an idle timeout) is
  replaced quietly. The check costs no round trip while nothing arrived on the connection in the
  pool: a server ending a session says so on it first (see :func:`_quiet`).
- A database that cannot be reached, a connection lost during an effect, or an effect given no
  answer within ``timeout`` (a peer gone silent: a link cut mid-network sends no reset) raises
  :class:`kavach_core.drivers.StoreUnavailable` (the endpoint answers 503). An effect past its
  ``timeout`` has its connection severed and closed, never lent again (see :class:`_Deadlines`);
  the kernel gives up on a silent link by itself too, idle or not (TCP keepalives and
  ``tcp_user_timeout``, see :func:`_link_options`). An effect is one statement or one
  transaction, so it is applied entirely or not at all, never in part: one whose answer was lost
  was rolled back by the server, unless its statement or ``COMMIT`` had already completed there
  (then it was applied). It is never retried. When the database returns, the next call works
  again. Purges and migrations, which may rightly run long, are bounded by the kernel alone.
  The server ends a transaction whose client fell silent between its statements about
  ``timeout`` after the last one (``idle_in_transaction_session_timeout``, unless the server's
  own bound is tighter: :func:`_session_setup`), so its row locks are not held for hours.
- A row holding what does not read as its record (a value of the wrong type, an array holding a
  ``NULL`` or a client's ``metadata`` that is not the JSON text of an object: written by hand or
  by another program) raises :class:`DamagedRowError`, a ``StoreUnavailable`` too.
- ``purge(now)`` deletes what has expired.
- Signing keys' private PEMs are encrypted at rest when a store key is configured (``store_key``
  or ``KAVACH_STORE_KEY``): AES-GCM with the kid as associated data, see :mod:`kavach.stores._sealing`.

All tables live in one schema (``schema``, default ``kavach``; also accepted as a ``schema``
query parameter of the URL), so several deployments, or test runs, can share one database.
"""

# ruff: noqa: S608 -- SQL text is built from fixed identifiers and a validated schema name only;
# every value travels as a bound parameter.
from __future__ import annotations

import asyncio
import hashlib
import math
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import attrs
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey

from ._codec import CLIENTS, CODES, GRANTS, KEYS, PENDING, RecordCodec
from ._sealing import KeySealer, seal, sealer_from, unseal
from ._urls import take_parameters

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DamagedRowError",
    "PostgresStore",
    "PostgresStoreError",
    "SchemaVersionError",
]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Query = tuple[str, Sequence[Any]]
Plan = Generator[Query, Rows, T]
"""A handler: yields queries, receives each one's rows, returns the effect's result."""

_TRANSACTIONAL = frozenset({fx.RotateRefresh, fx.SwapSigningKeys, fx.DeleteClient, fx.RevokeSubject})
"""Effects whose plan runs several queries in one transaction (the others are one statement each)."""


class PostgresStoreError(Exception):
    """The database cannot be used as a kavachOS store (bad schema name, foreign schema)."""


class SchemaVersionError(PostgresStoreError):
    """The schema was migrated by a newer kavachOS than this one; it is left untouched."""


class DamagedRowError(PostgresStoreError, StoreUnavailable):
    """A row of the store's schema holding what does not read as the record it should be.

    Also a :class:`StoreUnavailable`, so an effect meeting it is answered like any store outage
    (503), as the SQLite store answers a damaged file and the Redis store a damaged value.
    """


# -- schema ------------------------------------------------------------------------------------
# ``{s}`` is the quoted schema name. Migrations are history: append new ones, never edit.

_MIGRATION_1 = """
CREATE TABLE {s}.clients (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    client_id text PRIMARY KEY,
    redirect_uris text[] NOT NULL,
    token_endpoint_auth_method text NOT NULL,
    secret_hash text,
    grant_types text[] NOT NULL,
    response_types text[] NOT NULL,
    client_name text NOT NULL,
    scope text[],
    kind text NOT NULL,
    issued_at bigint NOT NULL,
    secret_expires_at bigint NOT NULL,
    metadata text NOT NULL,
    expires_at bigint
);
CREATE INDEX clients_seq ON {s}.clients (seq);
CREATE INDEX clients_expires_at ON {s}.clients (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE {s}.pending (
    ticket_hash text PRIMARY KEY,
    client_id text NOT NULL,
    redirect_uri text NOT NULL,
    redirect_uri_given boolean NOT NULL,
    state text,
    code_challenge text NOT NULL,
    resources text[] NOT NULL,
    scopes text[] NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX pending_expires_at ON {s}.pending (expires_at);
CREATE TABLE {s}.codes (
    code_hash text PRIMARY KEY,
    client_id text NOT NULL,
    redirect_uri text NOT NULL,
    redirect_uri_given boolean NOT NULL,
    code_challenge text NOT NULL,
    resources text[] NOT NULL,
    scopes text[] NOT NULL,
    subject text NOT NULL,
    grant_id text NOT NULL,
    issued_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    consumed boolean NOT NULL
);
CREATE INDEX codes_expires_at ON {s}.codes (expires_at);
CREATE TABLE {s}.grants (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    grant_id text PRIMARY KEY,
    subject text NOT NULL,
    client_id text NOT NULL,
    resources text[] NOT NULL,
    scopes text[] NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    refresh_generation bigint NOT NULL,
    refresh_hash text NOT NULL,
    refresh_expires_at bigint NOT NULL,
    rotated_at bigint NOT NULL,
    revoked_at bigint
);
CREATE INDEX grants_seq ON {s}.grants (seq);
CREATE INDEX grants_subject ON {s}.grants (subject);
CREATE INDEX grants_client_id ON {s}.grants (client_id);
CREATE INDEX grants_expires_at ON {s}.grants (expires_at);
CREATE TABLE {s}.revoked_tokens (
    jti text PRIMARY KEY,
    expires_at bigint NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON {s}.revoked_tokens (expires_at);
CREATE TABLE {s}.signing_keys (
    position integer PRIMARY KEY,
    kid text NOT NULL,
    alg text NOT NULL,
    private_pem bytea NOT NULL,
    created_at bigint NOT NULL,
    signs_until bigint NOT NULL,
    publish_until bigint NOT NULL
);
CREATE TABLE {s}.rate_limits (
    bucket text NOT NULL,
    window_end bigint NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (bucket, window_end)
);
CREATE INDEX rate_limits_window_end ON {s}.rate_limits (window_end);
"""

_MIGRATION_2 = """
CREATE TABLE IF NOT EXISTS {s}.kavach_settings (
    name text PRIMARY KEY,
    value bytea NOT NULL,
    created_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.kavach_users (
    username text PRIMARY KEY,
    password_hash text NOT NULL,
    updated_at bigint NOT NULL
);
"""
"""The tables of :mod:`kavach.instance` (the server secret) and :class:`kavach.users.PostgresUsers`:
made here, under the migration lock, so instances starting together on a fresh schema do not race
to create them (``IF NOT EXISTS``: stores those modules had already given them keep their rows)."""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("the records of kavach_core.records", _MIGRATION_1),
    ("kavach serve's settings and local users", _MIGRATION_2),
)
"""``MIGRATIONS[n]`` (description, SQL) takes a version-``n`` schema to version ``n + 1``."""

SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_COLUMNS = {("version", "integer"), ("description", "text"), ("applied_at", "timestamp with time zone")}
_TABLES_OF_VERSION_1 = frozenset(re.findall(r"CREATE TABLE \{s\}\.(\w+)", _MIGRATION_1))

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_CLIENT_COLS = ", ".join(CLIENTS.fields)
_PENDING_COLS = ", ".join(PENDING.fields)
_CODE_COLS = ", ".join(CODES.fields)
_GRANT_COLS = ", ".join(GRANTS.fields)
_KEY_COLS = ", ".join(KEYS.fields)


def _upsert(table: str, columns: Sequence[str], key: str) -> str:
    marks = ", ".join("%s" for _ in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    insert = f"INSERT INTO {{s}}.{table} ({', '.join(columns)}) VALUES ({marks})"
    return f"{insert} ON CONFLICT ({key}) DO UPDATE SET {updates}"


# Column types of the grant, for the casts of ConsumeCode's INSERT ... SELECT (parameters in a
# SELECT list have no target column to take their type from).
_GRANT_TYPES = {
    "resources": "text[]",
    "scopes": "text[]",
    "created_at": "bigint",
    "expires_at": "bigint",
    "refresh_generation": "bigint",
    "refresh_expires_at": "bigint",
    "rotated_at": "bigint",
    "revoked_at": "bigint",
}

_SQL_TEMPLATES = {
    "get_client": f"SELECT {_CLIENT_COLS} FROM {{s}}.clients WHERE client_id = %s",
    "put_client": _upsert("clients", CLIENTS.fields, "client_id"),
    "delete_client": (
        "WITH gone AS (DELETE FROM {s}.clients WHERE client_id = %s RETURNING 1),"
        " revoked AS (UPDATE {s}.grants SET revoked_at = %s WHERE client_id = %s AND revoked_at IS NULL RETURNING 1)"
        " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM revoked)"
    ),
    "drop_client_codes": "DELETE FROM {s}.codes WHERE client_id = %s AND NOT consumed",
    "list_clients": f"SELECT {_CLIENT_COLS} FROM {{s}}.clients ORDER BY seq",
    "put_pending": _upsert("pending", PENDING.fields, "ticket_hash"),
    "get_pending": f"SELECT {_PENDING_COLS} FROM {{s}}.pending WHERE ticket_hash = %s AND expires_at > %s",
    "take_pending": f"DELETE FROM {{s}}.pending WHERE ticket_hash = %s RETURNING {_PENDING_COLS}",
    "put_code": _upsert("codes", CODES.fields, "code_hash"),
    "get_code": f"SELECT {_CODE_COLS} FROM {{s}}.codes WHERE code_hash = %s",
    "consume_code": (
        "WITH taken AS (UPDATE {s}.codes SET consumed = true WHERE code_hash = %s AND NOT consumed RETURNING 1),"
        f" stored AS (INSERT INTO {{s}}.grants ({_GRANT_COLS})"
        f" SELECT {', '.join('%s::' + _GRANT_TYPES.get(c, 'text') for c in GRANTS.fields)} FROM taken"
        " ON CONFLICT (grant_id) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in GRANTS.fields if c != "grant_id")
        + " RETURNING 1)"
        " SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM stored)"
    ),
    "get_grant": f"SELECT {_GRANT_COLS} FROM {{s}}.grants WHERE grant_id = %s",
    "lock_grant": f"SELECT {_GRANT_COLS} FROM {{s}}.grants WHERE grant_id = %s FOR UPDATE",
    "revoke_grant": "UPDATE {s}.grants SET revoked_at = %s WHERE grant_id = %s AND revoked_at IS NULL RETURNING 1",
    "drop_subject_codes": "DELETE FROM {s}.codes WHERE subject = %s AND NOT consumed",
    "revoke_subject": (
        "WITH revoked AS (UPDATE {s}.grants SET revoked_at = %s WHERE subject = %s AND revoked_at IS NULL RETURNING 1)"
        " SELECT count(*) FROM revoked"
    ),
    "force_revoke_grant": "UPDATE {s}.grants SET revoked_at = %s WHERE grant_id = %s",
    "rotate_grant": (
        "UPDATE {s}.grants SET refresh_generation = %s, refresh_hash = %s, rotated_at = %s, refresh_expires_at = %s"
        " WHERE grant_id = %s"
    ),
    "list_grants": (
        f"SELECT {_GRANT_COLS} FROM {{s}}.grants"
        " WHERE (%s::text IS NULL OR subject = %s) AND (%s::text IS NULL OR client_id = %s) ORDER BY seq"
    ),
    "revoke_access": (
        "INSERT INTO {s}.revoked_tokens AS t (jti, expires_at) VALUES (%s, %s)"
        " ON CONFLICT (jti) DO UPDATE SET expires_at = greatest(t.expires_at, excluded.expires_at)"
    ),
    "is_revoked": (
        "SELECT EXISTS (SELECT 1 FROM {s}.revoked_tokens WHERE jti = %s)"
        " OR NOT EXISTS (SELECT 1 FROM {s}.grants WHERE grant_id = %s AND revoked_at IS NULL)"
    ),
    "is_session_ended": "SELECT EXISTS (SELECT 1 FROM {s}.revoked_tokens WHERE jti = %s)",
    "get_keys": f"SELECT {_KEY_COLS} FROM {{s}}.signing_keys ORDER BY position",
    "lock_keys": "LOCK TABLE {s}.signing_keys IN EXCLUSIVE MODE",
    "key_ids": "SELECT kid FROM {s}.signing_keys ORDER BY position",
    "delete_keys": "DELETE FROM {s}.signing_keys",
    "insert_key": (
        f"INSERT INTO {{s}}.signing_keys (position, {_KEY_COLS}) VALUES (%s, {', '.join('%s' for _ in KEYS.fields)})"
    ),
    "hit": (
        "INSERT INTO {s}.rate_limits AS t (bucket, window_end, count) VALUES (%s, %s, %s)"
        " ON CONFLICT (bucket, window_end) DO UPDATE SET count = t.count + excluded.count RETURNING t.count"
    ),
    "hit_back": (
        "UPDATE {s}.rate_limits SET count = greatest(count + %s, 0) WHERE bucket = %s AND window_end = %s"
        " RETURNING count"
    ),
    "hit_count": "SELECT coalesce((SELECT count FROM {s}.rate_limits WHERE bucket = %s AND window_end = %s), 0)",
}

_READ_COMMITTED = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
"""First statement of a transactional plan whose correctness needs a fresh snapshot per statement."""

_PURGE_TEMPLATES = {
    "pending": "DELETE FROM {s}.pending WHERE expires_at <= %s",
    "codes": "DELETE FROM {s}.codes WHERE expires_at <= %s",
    "grants": "DELETE FROM {s}.grants WHERE expires_at <= %s",
    "revoked_tokens": "DELETE FROM {s}.revoked_tokens WHERE expires_at <= %s",
    "rate_limits": "DELETE FROM {s}.rate_limits WHERE window_end <= %s",
    "clients": "DELETE FROM {s}.clients WHERE expires_at IS NOT NULL AND expires_at <= %s",
}

# Errors meaning "the database cannot serve now" rather than a bug: lost or refused connections,
# an administrator's shutdown or termination, a pool that lent nothing in time, and a database
# taking no writes (a hot standby after a failover, ``default_transaction_read_only`` switched on):
# SQLSTATE 25006, raised before the statement changes anything.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, psycopg.errors.ReadOnlySqlTransaction)

_SESSION_ISOLATION = "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"
"""Run on every connection the pools open: the guarantees above (the loser of a race over a code
or a refresh token gets its answer: ``False``, ``retried``, ``reused``) are READ COMMITTED's; under
a server, database or role default of REPEATABLE READ or SERIALIZABLE the losers would get
serialization failures (503) instead."""


def _session_setup(timeout: float) -> str:
    """What every connection the pools open runs first: :data:`_SESSION_ISOLATION`, and the
    server's bound on waiting for this client inside a transaction
    (``idle_in_transaction_session_timeout``) set to ``timeout``, unless the server's own is
    tighter. A client gone silent mid-transaction (its link cut: the store gave up on it after
    ``timeout``, the server heard no end) would otherwise hold the transaction's row locks until
    the server's TCP keepalives notice, hours later by default; with the bound the server ends it
    about ``timeout`` after the last statement, and every other instance can go on. No effect
    waits between its statements: only Python's work on an answer separates them."""
    ms = max(1000, math.ceil(timeout * 1000))  # a whole number: nothing but digits reaches the text
    return (
        f"{_SESSION_ISOLATION};"
        f" SELECT set_config('idle_in_transaction_session_timeout', '{ms}', false) FROM pg_settings"
        f" WHERE name = 'idle_in_transaction_session_timeout' AND (setting::bigint = 0 OR setting::bigint > {ms})"
    )


def _quiet(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether nothing has arrived on the idle pooled connection ``conn`` since its last command
    ended, so it can be lent without a round trip.

    Every command's reply is read whole before a connection goes back to the pool, so anything
    readable on its socket came unasked: the notice and end of a server closing the session
    (``pg_terminate_backend``, a shutdown or restart, ``idle_session_timeout``; the protocol's
    ErrorResponse, then the TCP close), or a report of a changed parameter. Either way the
    connection gets the full check (:meth:`psycopg_pool.ConnectionPool.check_connection`, one
    round trip), which fails for a closed one so the pool replaces it. A peer gone without a
    word (a link cut mid-network) is not seen here, nor by a round trip, which would wait for it,
    until the kernel gives up on the link (:func:`_link_options`): then the socket reports an
    error, and the check fails at once.
    """
    if conn.closed:  # closed by us, or broken (a broken connection is closed too)
        return False
    try:
        socket = conn.pgconn.socket
    except psycopg.Error:
        return False
    poll = getattr(select, "poll", None)
    if poll is None:  # no poll(2) on this platform
        return not select.select([socket], [], [], 0)[0]
    watcher = poll()
    watcher.register(socket, select.POLLIN | select.POLLPRI)
    return not watcher.poll(0)


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before lending ``conn``: a round trip only when it is not :func:`_quiet`."""
    if not _quiet(conn):
        ConnectionPool.check_connection(conn)


async def _acheck(conn: psycopg.AsyncConnection[Any]) -> None:
    """:func:`_check` for the pools of event loops."""
    if not _quiet(conn):
        await AsyncConnectionPool.check_connection(conn)


def _link_options(dsn: str, timeout: float) -> dict[str, int]:
    """The libpq options that make the kernel give up on a link gone silent about ``timeout``
    seconds after it fell quiet (TCP keepalive probes, idle or not, and ``tcp_user_timeout`` for
    data left unacknowledged), except those ``dsn`` sets itself. libpq ignores them on a
    Unix-domain socket; ``tcp_user_timeout`` (milliseconds) needs libpq 12 or later."""
    seconds = max(1, math.ceil(timeout))
    options = {
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": max(1, math.ceil(timeout / 3)),
        "keepalives_count": 3,
    }
    if psycopg.pq.version() >= 120000:
        options["tcp_user_timeout"] = seconds * 1000
    given = conninfo_to_dict(dsn)
    return {name: value for name, value in options.items() if name not in given}


@attrs.define(eq=False)
class _Watch:
    """One effect's connection (its socket), watched until ``deadline`` (a ``time.monotonic()``)."""

    deadline: float
    socket: int
    severed: bool = False


def _sever(fd: int) -> None:
    """Shut the socket ``fd`` down both ways, leaving the descriptor open (it stays libpq's)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class _Deadlines:
    """One thread severing the connection of an effect still running at its deadline.

    A reply from a peer gone silent (a link cut mid-network: no reset, no close) would be waited
    for until the kernel gives up on the link. Severing shuts the connection's socket down: libpq's
    wait ends at once with an error, on a thread and on an event loop alike (where cancelling the
    task would have psycopg try to cancel the query over that same silent link first). It happens
    under the lock an effect takes to stop being watched, so a connection that has left
    :meth:`watch` (then perhaps closed, its descriptor reused) is never touched.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watched: set[_Watch] = set()
        self._wakes_at: float | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], seconds: float) -> Iterator[None]:
        """Sever ``conn`` if the block still runs ``seconds`` from now: its error is then
        :class:`StoreUnavailable`, and ``conn`` is closed, so its pool discards it."""
        watch = _Watch(time.monotonic() + seconds, conn.pgconn.socket)
        with self._lock:
            self._watched.add(watch)
            if self._thread is None or not self._thread.is_alive():  # not yet, or not in this forked process
                self._thread = threading.Thread(target=self._run, name="kavach-postgres-deadlines", daemon=True)
                self._thread.start()
            elif self._wakes_at is None or watch.deadline < self._wakes_at:
                self._lock.notify()
        try:
            yield
        except psycopg.Error as exc:
            if watch.severed:
                message = f"PostgreSQL gave no answer within {seconds:g} s: its connection was closed"
                raise StoreUnavailable(message) from exc
            raise
        finally:
            with self._lock:
                self._watched.discard(watch)
            if watch.severed:
                conn.pgconn.finish()

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watched if w.deadline <= now]:
                    self._watched.discard(watch)
                    watch.severed = True
                    _sever(watch.socket)
                self._wakes_at = min((w.deadline for w in self._watched), default=None)
                self._lock.wait(None if self._wakes_at is None else self._wakes_at - now)


_DEADLINES = _Deadlines()


def _checked_dsn(dsn: str) -> tuple[str, dict[str, str], int | None]:
    """``dsn`` parsed as libpq will (scheme in any letter case, every port from 1 to 65535), without
    the store's own query parameters (:data:`_OWN`), those parameters and the ``connect_timeout``
    it sets (see :func:`_connect_timeout`); :class:`PostgresStoreError` when malformed."""
    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        dsn = scheme.lower() + sep + rest
        if rest.split("/", 1)[0].count("@") > 1:
            # libpq ends the user info at the first "@" before any "/" (a "?" or "#" does not end
            # its search), Python's URL readers (and so every message here that hides the
            # password) at the last: the rest of such a password would be taken for the host and
            # shown in libpq's errors.
            raise PostgresStoreError(
                "the user name or password of a PostgreSQL URL holds an unescaped '@': write it as %40"
            )
    try:
        dsn, own = take_parameters(dsn, _OWN, _OMITTED) if "://" in dsn else (dsn, {})
        params = conninfo_to_dict(dsn)
    except (ValueError, psycopg.ProgrammingError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for secret in _passwords(dsn):
            message = message.replace(secret, "***")
        raise PostgresStoreError(f"malformed PostgreSQL connection string: {message}") from None
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not (re.fullmatch(r"[0-9]{1,5}", port.strip()) and 0 < int(port) < 65536):
            raise PostgresStoreError(f"PostgreSQL port {port.strip()!r} is not a number from 1 to 65535")
    return dsn, own, _connect_timeout(params.get("connect_timeout"))


def _connect_timeout(value: object) -> int | None:
    """A ``connect_timeout`` parameter in seconds as libpq reads it (a whole number; 0 or less
    means none, which the store bounds by its default; 1 means 2), or ``None`` when not given."""
    if value is None:
        return None
    if not re.fullmatch(r"\s*[-+]?[0-9]{1,9}\s*", str(value)):
        raise PostgresStoreError(f"PostgreSQL connect_timeout {str(value)!r} is not a whole number of seconds")
    seconds = int(str(value))
    return None if seconds <= 0 else max(2, seconds)


def _passwords(dsn: str) -> list[str]:
    """The password texts written in ``dsn`` (URL user info, ``password=``), to keep out of messages."""
    found = [m.group(1) for m in re.finditer(r"password\s*=\s*('(?:\\.|[^'])*'|[^\s&]*)", dsn)]
    _, sep, rest = dsn.partition("://")
    if sep:
        userinfo = rest.rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
    return [text for text in found if text]


_DEFAULTS: dict[str, Any] = {"schema": "kavach", "min_connections": 1, "max_connections": 10}
"""The store's own settings when neither the constructor nor the URL gives them."""
_OWN = tuple(_DEFAULTS)
"""The store URL's query parameters that are the store's, not libpq's (which would refuse them)."""
_OMITTED = {name: f"leave it out for {value}" for name, value in _DEFAULTS.items()}


def _pool_size(own: Mapping[str, str], name: str, given: int | None, default: int) -> int:
    """A pool bound: ``given`` (the constructor's), else the URL's ``name`` (a whole number), else ``default``."""
    if given is not None:
        return given
    text = own.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,4}", text):
        raise PostgresStoreError(f"the store URL's {name} {text!r} is not a whole number from 0 to 9999")
    return int(text)


class PostgresStore:
    """A store on one PostgreSQL schema, implementing every effect in :mod:`kavach_core.effects`.

    ``dsn`` is a libpq connection string or ``postgresql://`` URL. ``schema`` (else the URL's
    ``schema`` parameter, else ``kavach``) names the schema holding the tables (created on first
    use). ``min_connections``/``max_connections`` (else the URL's parameters of those names, else 1
    and 10) size each pool: the connections it opens at start, and at most. ``timeout`` (seconds)
    bounds the wait for a connection and each effect's run on it, and ``connect_timeout`` (else the
    URL's ``connect_timeout``, else 5) the opening of one, before :class:`StoreUnavailable` is
    raised; the kernel gives up on a silent link within about twice ``timeout`` (libpq's
    ``keepalives*`` and ``tcp_user_timeout`` options, unless the URL sets them).
    ``store_key`` (else ``KAVACH_STORE_KEY``) encrypts signing keys at rest. ``check_connections``
    checks each pooled connection before lending it, replacing one the server closed while it was
    idle: without a round trip unless something arrived on it in the pool (:func:`_quiet`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_connections: int | None = None,
        max_connections: int | None = None,
        timeout: float = 5.0,
        connect_timeout: int | None = None,
        store_key: bytes | str | None = None,
        check_connections: bool = True,
    ) -> None:
        dsn, own, url_connect_timeout = _checked_dsn(dsn)
        connect_timeout = connect_timeout or url_connect_timeout or 5
        schema = schema or own.get("schema") or _DEFAULTS["schema"]
        if not _SCHEMA_NAME.fullmatch(schema):
            raise PostgresStoreError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
        min_connections = _pool_size(own, "min_connections", min_connections, _DEFAULTS["min_connections"])
        max_connections = _pool_size(own, "max_connections", max_connections, _DEFAULTS["max_connections"])
        if not 0 <= min_connections <= max_connections or max_connections < 1:
            raise PostgresStoreError(
                "the pool needs 0 <= min_connections <= max_connections and max_connections >= 1"
                f" (here {min_connections} and {max_connections})"
            )
        self.dsn = dsn
        self.schema = schema
        self._sealer: KeySealer | None = sealer_from(store_key)
        self._pool_args: dict[str, Any] = {
            "min_size": min_connections,
            "max_size": max_connections,
            "timeout": timeout,
            "kwargs": {
                "autocommit": True,
                "connect_timeout": max(2, int(connect_timeout)),
                **_link_options(dsn, timeout),
            },
            # A short reconnection episode (attempts at 0, 1 and 3 s, then give up): the next
            # caller after an outage starts a fresh attempt, or waits at most ~2 s for one, so
            # service resumes within ``timeout`` of the database returning.
            "reconnect_timeout": max(1.0, min(timeout / 2, 5.0)),
        }
        self._check = check_connections
        self._effect_timeout = timeout
        self._setup_sql = _session_setup(timeout)
        quoted = f'"{schema}"'
        self._sql = {name: template.format(s=quoted) for name, template in _SQL_TEMPLATES.items()}
        self._purge_sql = {name: template.format(s=quoted) for name, template in _PURGE_TEMPLATES.items()}
        digest = hashlib.sha256(f"kavach-migrate:{schema}".encode()).digest()
        self._lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self._pool: ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._lent = 0
        self._lent_lock = threading.Lock()
        self._ready = False
        self._apools: dict[int, tuple[asyncio.AbstractEventLoop, AsyncConnectionPool]] = {}
        self._closed = False
        # effect type -> (plan, runs in a transaction)
        self._handlers: dict[type[fx.Effect], tuple[Callable[[Any], Plan[Any]], bool]] = {
            effect: (handler, effect in _TRANSACTIONAL) for effect, handler in fx.bind_handlers(self).items()
        }

    # -- public API -------------------------------------------------------------------------

    def perform(self, effect: fx.Effect) -> Any:
        """Perform one effect atomically and return its result (see :mod:`kavach_core.effects`).

        Raises ``TypeError`` for an effect this store does not perform and
        :class:`StoreUnavailable` when the database cannot be reached.
        """
        plan, transactional = self._handler(effect)
        self._ensure_schema()
        return self._run(plan(effect), transactional)

    async def aperform(self, effect: fx.Effect) -> Any:
        """:meth:`perform` on the running event loop, with an async pool of that loop."""
        plan, transactional = self._handler(effect)
        pool = await self._apool()
        return await self._arun(pool, plan(effect), transactional)

    def migrate(self) -> int:
        """Bring the schema up to :data:`SCHEMA_VERSION` now (otherwise done on first use); returns it."""
        self._ensure_schema()
        return SCHEMA_VERSION

    @property
    def schema_version(self) -> int:
        """The version recorded in ``<schema>.schema_version``."""
        self._ensure_schema()
        rows = self._run(self._version_plan(), False)
        return int(rows)

    def purge(self, now: int) -> dict[str, int]:
        """Delete, in one transaction, everything that has expired at ``now``.

        Pending authorizations, codes and grants whose ``expires_at <= now``, revoked access-token
        ids past their expiry, finished rate-limit windows and cached metadata-document clients
        past their ``expires_at``. Returns the number of rows deleted per table.
        """
        self._ensure_schema()
        return self._run(self._purge_plan(now), True, bounded=False)

    async def apurge(self, now: int) -> dict[str, int]:
        """:meth:`purge` on the running event loop."""
        pool = await self._apool()
        return await self._arun(pool, self._purge_plan(now), True, bounded=False)

    def close(self) -> None:
        """Close the thread pool (async pools: :meth:`aclose` from their loop)."""
        self._closed = True
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the pool of the running event loop, and the thread pool."""
        loop = asyncio.get_running_loop()
        entry = self._apools.pop(id(loop), None)
        if entry is not None:
            await entry[1].close()
        self.close()

    def drop_schema(self) -> None:
        """Drop the schema and everything in it (tests and teardown). Irreversible."""
        self._run(self._drop_plan(), False, bounded=False)
        self._ready = False

    # -- running plans ------------------------------------------------------------------------

    def _handler(self, effect: fx.Effect) -> tuple[Callable[[Any], Plan[Any]], bool]:
        entry = self._handlers.get(type(effect))
        if entry is None:
            raise TypeError(f"PostgresStore cannot perform {type(effect).__name__}")
        if self._closed:
            raise PostgresStoreError("the store is closed")
        return entry

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._setup_sql)

    async def _aconfigure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(self._setup_sql)

    def _sync_pool(self) -> ConnectionPool:
        with self._pool_lock:
            if self._closed:
                raise PostgresStoreError("the store is closed")
            if self._pool is None:
                check = _check if self._check else None
                self._pool = ConnectionPool(
                    self.dsn, open=False, check=check, configure=self._configure, **self._pool_args
                )
                self._pool.open(wait=False)
            return self._pool

    def _deadline(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], bounded: bool
    ) -> AbstractContextManager[None]:
        """A plan's run on ``conn`` bounded by ``timeout`` (:class:`_Deadlines`), unless not ``bounded``
        (purges and migrations: the kernel gives up on a silent link for them)."""
        return _DEADLINES.watch(conn, self._effect_timeout) if bounded else nullcontext()

    def _run(self, plan: Plan[T], transactional: bool, *, bounded: bool = True) -> T:
        pool = self._sync_pool()
        try:
            with pool.connection() as conn, self._lending(), self._deadline(conn, bounded):
                if transactional:
                    with conn.transaction():
                        return _drive(conn, plan)
                return _drive(conn, plan)
        except PoolTimeout as exc:
            cause = self._cause() if self._lent == 0 else None
            raise StoreUnavailable(f"PostgreSQL is unavailable: {cause or exc}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc

    @contextmanager
    def _lending(self) -> Iterator[None]:
        """Count a connection lent by any of the pools while the block runs."""
        with self._lent_lock:
            self._lent += 1
        try:
            yield
        finally:
            with self._lent_lock:
                self._lent -= 1

    # A pool that times out with no connection lent could not open one; it keeps the reason to
    # itself (it only logs it), so one direct attempt asks the server. With connections lent, the
    # pool is merely busy and nothing more is opened.

    def _cause(self) -> str | None:
        """Why a new connection fails, from one direct attempt; ``None`` when it opens."""
        try:
            psycopg.connect(self.dsn, **self._pool_args["kwargs"]).close()
        except psycopg.Error as exc:
            return _one_line(exc)
        return None

    async def _acause(self) -> str | None:
        """:meth:`_cause` on the running event loop."""
        try:
            await (await psycopg.AsyncConnection.connect(self.dsn, **self._pool_args["kwargs"])).close()
        except psycopg.Error as exc:
            return _one_line(exc)
        return None

    def _ensure_schema(self) -> None:
        if not self._ready:
            self._run(self._migrate_plan(), True, bounded=False)
            self._ready = True

    async def _apool(self) -> AsyncConnectionPool:
        if self._closed:
            raise PostgresStoreError("the store is closed")
        loop = asyncio.get_running_loop()
        entry = self._apools.get(id(loop))
        if entry is None or entry[0] is not loop:
            check = _acheck if self._check else None
            pool = AsyncConnectionPool(self.dsn, open=False, check=check, configure=self._aconfigure, **self._pool_args)
            self._apools = {k: v for k, v in self._apools.items() if not v[0].is_closed()}
            self._apools[id(loop)] = (loop, pool)
            await pool.open(wait=False)
        else:
            pool = entry[1]
        if not self._ready:
            await self._arun(pool, self._migrate_plan(), True, bounded=False)
            self._ready = True
        return pool

    async def _arun(self, pool: AsyncConnectionPool, plan: Plan[T], transactional: bool, *, bounded: bool = True) -> T:
        try:
            async with pool.connection() as conn:
                with self._lending(), self._deadline(conn, bounded):
                    if transactional:
                        async with conn.transaction():
                            return await _adrive(conn, plan)
                    return await _adrive(conn, plan)
        except PoolTimeout as exc:
            cause = await self._acause() if self._lent == 0 else None
            raise StoreUnavailable(f"PostgreSQL is unavailable: {cause or exc}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc

    # -- schema plans ---------------------------------------------------------------------------

    def _migrate_plan(self) -> Plan[None]:
        """Under the advisory lock: create the schema, then apply the missing migrations in order."""
        s = f'"{self.schema}"'
        yield "SELECT pg_advisory_xact_lock(%s)", (self._lock_id,)
        current = 0
        rows = yield "SELECT to_regclass(%s) IS NOT NULL", (f"{s}.schema_version",)
        if rows[0][0]:
            yield from self._check_version_table()
            rows = yield f"SELECT coalesce(max(version), 0) FROM {s}.schema_version", ()
            current = int(rows[0][0])
            if current > 0:
                yield from self._check_tables()
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema {self.schema!r} is at version {current}, newer than this kavachOS understands"
                f" ({SCHEMA_VERSION}); upgrade kavachOS to use it"
            )
        if current == SCHEMA_VERSION:  # up to date: no DDL, so a read-only database can still be read
            return
        rows = yield "SELECT to_regnamespace(%s) IS NOT NULL", (s,)
        if not rows[0][0]:
            yield f"CREATE SCHEMA {s}", ()
        yield (
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer PRIMARY KEY,"
            " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            (),
        )
        if current == 0:
            rows = yield (
                "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename <> 'schema_version'",
                (self.schema,),
            )
            if rows[0][0]:
                raise PostgresStoreError(f"schema {self.schema!r} holds tables that are not a kavachOS store's")
        for version in range(current, SCHEMA_VERSION):
            description, script = MIGRATIONS[version]
            yield script.format(s=s), ()
            yield f"INSERT INTO {s}.schema_version (version, description) VALUES (%s, %s)", (version + 1, description)

    def _check_version_table(self) -> Plan[None]:
        """A ``schema_version`` table is kavachOS's only with its columns, of its types: another
        tool's (Flyway, Alembic, an application's own) must not be taken for a store and migrated."""
        rows = yield (
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'schema_version'",
            (self.schema,),
        )
        if set(map(tuple, rows)) != _VERSION_COLUMNS:
            raise PostgresStoreError(
                f"schema {self.schema!r} holds a schema_version table that is not a kavachOS store's"
            )

    def _check_tables(self) -> Plan[None]:
        """The tables of version 1 are there (a schema at version 1 or later without them is not a
        kavachOS store, or was damaged by hand)."""
        rows = yield "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)
        missing = sorted(_TABLES_OF_VERSION_1 - {row[0] for row in rows})
        if missing:
            raise PostgresStoreError(
                f"schema {self.schema!r} records kavachOS migrations but lacks the tables {', '.join(missing)}"
            )

    def _version_plan(self) -> Plan[int]:
        rows = yield f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version', ()
        return int(rows[0][0])

    def _drop_plan(self) -> Plan[None]:
        yield f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE', ()

    def _record(self, codec: RecordCodec[T], row: Sequence[Any]) -> T:
        """``codec``'s record from ``row``; :class:`DamagedRowError` when it does not read as one."""
        try:
            return codec.from_row(row)
        except (TypeError, ValueError) as exc:
            raise DamagedRowError(f"schema {self.schema!r} holds a row that cannot be read ({exc})") from exc

    def _purge_plan(self, now: int) -> Plan[dict[str, int]]:
        counts: dict[str, int] = {}
        for table, sql in self._purge_sql.items():
            rows = yield f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", (now,)
            counts[table] = int(rows[0][0])
        return counts

    # -- clients ---------------------------------------------------------------------------------

    def _get_client(self, e: fx.GetClient) -> Plan[Client | None]:
        rows = yield self._sql["get_client"], (e.client_id,)
        return self._record(CLIENTS, rows[0]) if rows else None

    def _put_client(self, e: fx.PutClient) -> Plan[None]:
        yield self._sql["put_client"], CLIENTS.to_row(e.client)

    # DeleteClient and RevokeSubject against a concurrent redemption (ConsumeCode: one statement
    # that marks the code consumed and inserts its grant). Under READ COMMITTED each statement
    # reads a fresh snapshot, so the codes are dropped FIRST, in a statement of their own, and
    # the grants revoked in a LATER one:
    # - a redemption that holds a code's row when the DELETE reaches it makes the DELETE wait; it
    #   commits, the DELETE re-reads the row (consumed: kept), and the later UPDATE's snapshot,
    #   taken after that commit, sees the new grant and revokes it. In one statement (one
    #   snapshot) that grant would be invisible to the UPDATE and stay live;
    # - a redemption reaching a code's row after the DELETE waits for this transaction, then finds
    #   the row gone: it consumes nothing and stores no grant.
    # The isolation level is set explicitly, whatever the server's default. No index on
    # codes(client_id) or codes(subject): codes live a minute and ``kavach serve`` purges them,
    # so the table stays small, and these are an operator's rare actions; a scan locks only the
    # rows that match.

    def _delete_client(self, e: fx.DeleteClient) -> Plan[bool]:
        yield _READ_COMMITTED, ()
        yield self._sql["drop_client_codes"], (e.client_id,)
        rows = yield self._sql["delete_client"], (e.client_id, e.now, e.client_id)
        return bool(rows[0][0])

    def _list_clients(self, e: fx.ListClients) -> Plan[tuple[Client, ...]]:
        rows = yield self._sql["list_clients"], ()
        return tuple(self._record(CLIENTS, row) for row in rows)

    # -- pending authorizations and codes --------------------------------------------------------

    def _put_pending(self, e: fx.PutPending) -> Plan[None]:
        yield self._sql["put_pending"], PENDING.to_row(e.pending)

    def _get_pending(self, e: fx.GetPending) -> Plan[PendingAuthorization | None]:
        rows = yield self._sql["get_pending"], (e.ticket_hash, e.now)
        return self._record(PENDING, rows[0]) if rows else None

    def _take_pending(self, e: fx.TakePending) -> Plan[PendingAuthorization | None]:
        rows = yield self._sql["take_pending"], (e.ticket_hash,)
        if not rows:
            return None
        record = self._record(PENDING, rows[0])
        return None if record.expires_at <= e.now else record

    def _put_code(self, e: fx.PutCode) -> Plan[None]:
        yield self._sql["put_code"], CODES.to_row(e.code)

    def _get_code(self, e: fx.GetCode) -> Plan[AuthorizationCode | None]:
        rows = yield self._sql["get_code"], (e.code_hash,)
        return self._record(CODES, rows[0]) if rows else None

    def _consume_code(self, e: fx.ConsumeCode) -> Plan[bool]:
        rows = yield self._sql["consume_code"], (e.code_hash, *GRANTS.to_row(e.grant))
        return bool(rows[0][0])

    # -- grants ----------------------------------------------------------------------------------

    def _get_grant(self, e: fx.GetGrant) -> Plan[Grant | None]:
        rows = yield self._sql["get_grant"], (e.grant_id,)
        return self._record(GRANTS, rows[0]) if rows else None

    def _revoke_grant(self, e: fx.RevokeGrant) -> Plan[bool]:
        rows = yield self._sql["revoke_grant"], (e.now, e.grant_id)
        return bool(rows)

    def _revoke_subject(self, e: fx.RevokeSubject) -> Plan[int]:
        """Codes first, then grants: see the comment above :meth:`_delete_client`."""
        yield _READ_COMMITTED, ()
        yield self._sql["drop_subject_codes"], (e.subject,)
        rows = yield self._sql["revoke_subject"], (e.now, e.subject)
        return int(rows[0][0])

    def _list_grants(self, e: fx.ListGrants) -> Plan[tuple[Grant, ...]]:
        rows = yield self._sql["list_grants"], (e.subject, e.subject, e.client_id, e.client_id)
        return tuple(self._record(GRANTS, row) for row in rows)

    def _rotate(self, e: fx.RotateRefresh) -> Plan[fx.Rotation]:
        """:meth:`RotateRefresh.decide <kavach_core.effects.RotateRefresh.decide>` with the row locked."""
        rows = yield self._sql["lock_grant"], (e.grant_id,)
        rotation = e.decide(self._record(GRANTS, rows[0]) if rows else None)
        after = rotation.grant
        if rotation.outcome == "rotated" and after is not None:
            yield (
                self._sql["rotate_grant"],
                (after.refresh_generation, after.refresh_hash, after.rotated_at, after.refresh_expires_at, e.grant_id),
            )
        elif rotation.outcome == "reused":
            yield self._sql["force_revoke_grant"], (e.now, e.grant_id)
        return rotation

    # -- access tokens ---------------------------------------------------------------------------

    def _revoke_access(self, e: fx.RevokeAccessToken) -> Plan[None]:
        yield self._sql["revoke_access"], (e.jti, e.expires_at)

    def _is_revoked(self, e: fx.IsTokenRevoked) -> Plan[bool]:
        rows = yield self._sql["is_revoked"], (e.jti, e.grant_id)
        return bool(rows[0][0])

    def _end_session(self, e: fx.EndSession) -> Plan[None]:
        yield from self._revoke_access(fx.RevokeAccessToken(e.record_id, e.expires_at))

    def _is_session_ended(self, e: fx.IsSessionEnded) -> Plan[bool]:
        rows = yield self._sql["is_session_ended"], (e.record_id,)
        return bool(rows[0][0])

    # -- signing keys ----------------------------------------------------------------------------

    def _decode_key(self, row: Sequence[Any]) -> SigningKey:
        key = self._record(KEYS, row)
        return attrs.evolve(key, private_pem=unseal(self._sealer, key.kid, key.private_pem))

    def _get_keys(self, e: fx.Effect) -> Plan[tuple[SigningKey, ...]]:
        rows = yield self._sql["get_keys"], ()
        return tuple(self._decode_key(row) for row in rows)

    def _swap_keys(self, e: fx.SwapSigningKeys) -> Plan[tuple[SigningKey, ...]]:
        yield self._sql["lock_keys"], ()
        rows = yield self._sql["key_ids"], ()
        if tuple(row[0] for row in rows) == tuple(e.expected):
            yield self._sql["delete_keys"], ()
            for position, key in enumerate(e.keys):
                sealed = attrs.evolve(key, private_pem=seal(self._sealer, key.kid, key.private_pem))
                yield self._sql["insert_key"], (position, *KEYS.to_row(sealed))
        rows = yield self._sql["get_keys"], ()
        return tuple(self._decode_key(row) for row in rows)

    # -- rate limits -----------------------------------------------------------------------------

    def _hit(self, e: fx.Hit) -> Plan[bool]:
        if e.step == 0:  # a read: no row is made for a window nothing was counted in
            rows = yield self._sql["hit_count"], (e.bucket, e.window_end)
        elif e.step < 0:  # giving back: never below 0, and no row is made where none is
            rows = yield self._sql["hit_back"], (e.step, e.bucket, e.window_end)
        else:
            rows = yield self._sql["hit"], (e.bucket, e.window_end, e.step)
        return bool((rows[0][0] if rows else 0) <= e.limit)


# -- drivers ---------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _drive(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    try:
        query = next(plan)
        while True:
            cursor = conn.execute(query[0], query[1] or None, prepare=None)
            rows: Rows = cursor.fetchall() if cursor.description is not None else []
            query = plan.send(rows)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _adrive(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    try:
        query = next(plan)
        while True:
            cursor = await conn.execute(query[0], query[1] or None, prepare=None)
            rows: Rows = await cursor.fetchall() if cursor.description is not None else []
            query = plan.send(rows)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
