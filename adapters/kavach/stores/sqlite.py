"""The SQLite store: the embedded default, standard library only.

Guarantees:

- Every effect in :mod:`kavach_core.effects` is one atomic step across threads *and* processes
  sharing the file: effects that write run in a ``BEGIN IMMEDIATE`` transaction (the database's
  single write lock is taken before anything is read), reads are single ``SELECT`` statements
  (one consistent snapshot each). Results are identical to :class:`kavach_core.memory_store.MemoryStore`.
- The file is in WAL journal mode (readers never wait for the writer) with ``synchronous=FULL``:
  a consumed code or rotated refresh token stays consumed after a power loss.
- Connections come from a small pool; each is used by one thread at a time, so no
  ``sqlite3.Connection`` is ever shared between threads concurrently. Each keeps a page cache of
  up to :data:`CACHE_KIB` (SQLite's default is 2 MiB), filled only as pages are read.
- ``aperform`` runs the work in a worker thread: it never blocks the event loop.
- A database that cannot be reached (locked past ``busy_timeout``, I/O error, disk full, file
  gone) raises :class:`kavach_core.drivers.StoreUnavailable`: the endpoint answers 503.
- The schema is versioned (``PRAGMA user_version``, tagged with ``PRAGMA application_id``):
  opening an older file migrates it in one transaction; a file written by a newer kavachOS is
  refused with :class:`SchemaVersionError`; a file that is not a kavachOS database (or not a
  SQLite database at all) is refused with :class:`SQLiteStoreError`. Every check runs before
  anything is written: a refused file is left byte for byte as it was.
- A kavachOS file whose tables lack what this version reads (a dropped table or column, a value
  of the wrong type) raises :class:`DamagedDatabaseError` when opened or when the row is read.
- Secrets are stored only as the digests the core hands over (client secrets, codes, refresh
  tokens, consent tickets). Signing keys are stored as given (PKCS#8 PEM): protect the file.

``":memory:"`` is supported for tests and demos: one private in-memory database served by a
single connection (effects are serialised; nothing is shared with other processes).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Generic, TypeVar

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey

from ._codec import CLIENTS, CODES, GRANTS, KEYS, PENDING, RecordCodec

__all__ = [
    "APPLICATION_ID",
    "COMPANIONS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DamagedDatabaseError",
    "SQLiteStore",
    "SQLiteStoreError",
    "SchemaVersionError",
]

APPLICATION_ID = 0x4B564348
"""``PRAGMA application_id`` of a kavachOS database ("KVCH")."""

CACHE_KIB = 16 * 1024
"""Each pooled connection's page cache, in KiB (``PRAGMA cache_size``). With tokens naming grants
all over a large table, SQLite's default of 2 MiB no longer holds the pages a server's lookups
keep coming back to, and each miss is a read from the file: the benchmark's verification with a
million grants took 1.21x what it takes with a thousand that way, 1.15x with 16 MiB
(docs/performance.md, part e). A small store's cache never grows past its file; a large one's
costs at most this much memory per connection (eight by default)."""

log = logging.getLogger("kavach.stores.sqlite")

MIN_SQLITE = (3, 35, 0)
"""``RETURNING`` and ``ON CONFLICT ... DO UPDATE`` are needed."""

# Primary result codes (sqlite3.h) meaning "the database cannot be reached right now".
_UNAVAILABLE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY: locked by another connection past the busy timeout
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY: file or directory became read-only
        10,  # SQLITE_IOERR
        11,  # SQLITE_CORRUPT
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
        26,  # SQLITE_NOTADB
    }
)


_FOREIGN_OBJECTS = (
    "SELECT count(*) FROM sqlite_schema"
    " WHERE name NOT LIKE 'kavach\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
"""Objects of an unversioned file that are neither kavachOS companions (``kavach_users``,
``kavach_settings``: local users and the server secret may be created first) nor SQLite's own."""

COMPANIONS: dict[str, tuple[str, ...]] = {
    "kavach_settings": ("name", "value", "created_at"),
    "kavach_users": ("username", "password_hash", "updated_at"),
}
"""Columns of the tables other kavachOS modules keep in the same file (:mod:`kavach.instance`,
:class:`kavach.users.SQLiteUsers`), checked when the store opens the file."""

_SECRET_BYTES = 32
"""The shortest server secret :mod:`kavach.instance` accepts from ``kavach_settings``."""


def create_private(path: str) -> bool:
    """Make a new database file at ``path`` readable by its owner alone (0600: it will hold signing
    keys, the server secret and password hashes; SQLite gives its -wal and -shm files the same
    mode), unless one is there; whether it did."""
    try:  # the file a symbolic link names, which O_EXCL would not create through the link
        os.close(os.open(os.path.realpath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    except OSError as exc:
        raise SQLiteStoreError(f"cannot create SQLite database {path!r}: {exc.strerror or exc}") from None
    return True


class SQLiteStoreError(Exception):
    """The file cannot be used as a kavachOS database (missing directory, corrupt, foreign, closed)."""


class SchemaVersionError(SQLiteStoreError):
    """The database was written by a newer kavachOS than this one; it is left untouched."""


class DamagedDatabaseError(SQLiteStoreError, StoreUnavailable):
    """A kavachOS database lacks a table or column this version needs, or holds a value it cannot read.

    Also a :class:`StoreUnavailable`, so an effect meeting it is answered like any store outage.
    """


class _Unreadable(Exception):
    """A stored row that does not decode into its record (mapped to :class:`DamagedDatabaseError`)."""


# -- schema ----------------------------------------------------------------------------------


def _migrate_1(db: sqlite3.Connection) -> None:
    """Version 1: the records of :mod:`kavach_core.records`. Tuples are JSON arrays, booleans 0/1."""
    db.execute(
        """CREATE TABLE clients (
            seq INTEGER PRIMARY KEY,
            client_id TEXT NOT NULL UNIQUE,
            redirect_uris TEXT NOT NULL,
            token_endpoint_auth_method TEXT NOT NULL,
            secret_hash TEXT,
            grant_types TEXT NOT NULL,
            response_types TEXT NOT NULL,
            client_name TEXT NOT NULL,
            scope TEXT,
            kind TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            secret_expires_at INTEGER NOT NULL,
            metadata TEXT NOT NULL,
            expires_at INTEGER
        )"""
    )
    db.execute(
        """CREATE TABLE pending (
            ticket_hash TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            redirect_uri TEXT NOT NULL,
            redirect_uri_given INTEGER NOT NULL,
            state TEXT,
            code_challenge TEXT NOT NULL,
            resources TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE codes (
            code_hash TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            redirect_uri TEXT NOT NULL,
            redirect_uri_given INTEGER NOT NULL,
            code_challenge TEXT NOT NULL,
            resources TEXT NOT NULL,
            scopes TEXT NOT NULL,
            subject TEXT NOT NULL,
            grant_id TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            consumed INTEGER NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE grants (
            seq INTEGER PRIMARY KEY,
            grant_id TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            client_id TEXT NOT NULL,
            resources TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            refresh_generation INTEGER NOT NULL,
            refresh_hash TEXT NOT NULL,
            refresh_expires_at INTEGER NOT NULL,
            rotated_at INTEGER NOT NULL,
            revoked_at INTEGER
        )"""
    )
    db.execute("CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)")
    db.execute(
        """CREATE TABLE signing_keys (
            position INTEGER PRIMARY KEY,
            kid TEXT NOT NULL,
            alg TEXT NOT NULL,
            private_pem BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            signs_until INTEGER NOT NULL,
            publish_until INTEGER NOT NULL
        )"""
    )


def _migrate_2(db: sqlite3.Connection) -> None:
    """Version 2: rate-limit windows (the ``Hit`` effect), and indexes for lookups and ``purge``."""
    db.execute(
        """CREATE TABLE rate_limits (
            bucket TEXT NOT NULL,
            window_end INTEGER NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (bucket, window_end)
        )"""
    )
    db.execute("CREATE INDEX rate_limits_window_end ON rate_limits (window_end)")
    db.execute("CREATE INDEX grants_subject ON grants (subject)")
    db.execute("CREATE INDEX grants_client_id ON grants (client_id)")
    db.execute("CREATE INDEX grants_expires_at ON grants (expires_at)")
    db.execute("CREATE INDEX pending_expires_at ON pending (expires_at)")
    db.execute("CREATE INDEX codes_expires_at ON codes (expires_at)")
    db.execute("CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at)")
    db.execute("CREATE INDEX clients_expires_at ON clients (expires_at) WHERE expires_at IS NOT NULL")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_1, _migrate_2)
"""``MIGRATIONS[n]`` takes a version-``n`` database to version ``n + 1``; append only."""

SCHEMA_VERSION = len(MIGRATIONS)


@functools.cache
def _expected(version: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{name: (type, columns)}`` of every table and index a version-``version`` file holds."""
    db = sqlite3.connect(":memory:")
    try:
        for migrate in MIGRATIONS[:version]:
            migrate(db)
        rows = db.execute("SELECT name, type FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
        return {name: (kind, _columns(db, name) if kind == "table" else ()) for name, kind in rows.fetchall()}
    finally:
        db.close()


def _columns(db: sqlite3.Connection, table: str) -> tuple[str, ...]:
    return tuple(row[0] for row in db.execute("SELECT name FROM pragma_table_info(?)", (table,)))


def _plural(word: str, items: Sequence[str]) -> str:
    return word if len(items) == 1 else word + "s"


def _kind(db: sqlite3.Connection, name: str) -> str | None:
    """``table``, ``index``, ``view`` or ``trigger`` for the object ``name`` (any letter case), if any."""
    row = db.execute("SELECT type FROM sqlite_schema WHERE name = ? COLLATE NOCASE", (name,)).fetchone()
    return None if row is None else str(row[0])


def _missing(db: sqlite3.Connection, table: str, columns: Sequence[str]) -> tuple[str, ...]:
    """The ``columns`` that ``table`` lacks (all of them when it is not a table)."""
    have = set(_columns(db, table)) if _kind(db, table) == "table" else set()
    return tuple(c for c in columns if c not in have)


# -- record <-> row ---------------------------------------------------------------------------

R = TypeVar("R")


def _json_array(values: tuple[str, ...]) -> str:
    return json.dumps(list(values))


class _Table(Generic[R]):
    """One record class on one table: a column per attrs field, same name, through ``codec``.

    Tuple fields are stored as JSON arrays (``None`` stays ``NULL``); booleans as 0/1 (sqlite3 binds
    ``bool`` as an integer).
    """

    def __init__(self, name: str, codec: RecordCodec[R], key: str) -> None:
        self.name = name
        self.codec = codec
        self.key = key
        self.columns = codec.fields
        cols = ", ".join(self.columns)
        marks = ", ".join("?" for _ in self.columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c != key)
        # Identifiers below are attrs field names and literal table names, never input.
        self.select = f"SELECT {cols} FROM {name}"  # noqa: S608
        self.upsert = f"INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {updates}"  # noqa: S608
        self.take = f"DELETE FROM {name} WHERE {key} = ? RETURNING {cols}"  # noqa: S608

    def encode(self, record: R) -> tuple[Any, ...]:
        return self.codec.to_row(record, _json_array)

    def decode(self, row: Sequence[Any]) -> R:
        try:
            return self.codec.from_row(row)
        except (TypeError, ValueError) as exc:
            raise _Unreadable(f"a row of table {self.name} cannot be read ({exc})") from exc


_CLIENTS = _Table("clients", CLIENTS, "client_id")
_PENDING = _Table("pending", PENDING, "ticket_hash")
_CODES = _Table("codes", CODES, "code_hash")
_GRANTS = _Table("grants", GRANTS, "grant_id")
_KEYS = _Table("signing_keys", KEYS, "kid")


# -- the store ----------------------------------------------------------------------------------


class SQLiteStore:
    """A store on one SQLite file, implementing every effect in :mod:`kavach_core.effects`.

    ``busy_timeout`` (seconds) is how long an effect waits for another connection's lock (or for
    a free pooled connection) before raising :class:`StoreUnavailable`. ``max_connections``
    bounds the pool; many store objects, threads and processes may share one file.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0, max_connections: int = 8) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise SQLiteStoreError(
                f"SQLite {sqlite3.sqlite_version} is too old; kavachOS needs {'.'.join(map(str, MIN_SQLITE))} or newer"
            )
        if busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0 seconds")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._memory = self.path == ":memory:"
        created = False
        if not self._memory:
            self._check_path(self.path)
            created = create_private(self.path)
        self._slots = threading.BoundedSemaphore(1 if self._memory else max_connections)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self._handlers: dict[type[fx.Effect], Callable[[sqlite3.Connection, Any], Any]] = fx.bind_handlers(self)
        try:
            self._open()
        except BaseException:
            made = os.path.realpath(self.path)
            if created and os.path.getsize(made) == 0:  # nothing was written: leave no file behind
                os.remove(made)
            raise
        mode = 0 if self._memory else stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            log.warning(
                "SQLite database %r can be read by other users (mode %o): it holds signing keys and the server"
                " secret in the clear; chmod 600 it",
                self.path,
                mode,
            )

    # -- public API -------------------------------------------------------------------------

    def perform(self, effect: fx.Effect) -> Any:
        """Perform one effect atomically and return its result (see :mod:`kavach_core.effects`).

        Raises ``TypeError`` for an effect this store does not perform (``FetchDocument`` is an
        outbound fetch, not storage) and :class:`StoreUnavailable` when the database cannot be reached.
        """
        handler = self._handlers.get(type(effect))
        if handler is None:
            raise TypeError(f"SQLiteStore cannot perform {type(effect).__name__}")
        with self._connection() as db:
            if effect.writes:
                with _transaction(db):
                    return handler(db, effect)
            return handler(db, effect)

    async def aperform(self, effect: fx.Effect) -> Any:
        """:meth:`perform` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.perform, effect)

    def purge(self, now: int) -> dict[str, int]:
        """Delete, in one transaction, everything that has expired at ``now``.

        Pending authorizations, codes and grants whose ``expires_at <= now``, revoked access-token
        ids past their expiry, finished rate-limit windows, and cached metadata-document clients
        past their ``expires_at`` (they are fetched again when next used; their grants stay).
        Returns the number of rows deleted per table.
        """
        statements = {
            "pending": "DELETE FROM pending WHERE expires_at <= ?",
            "codes": "DELETE FROM codes WHERE expires_at <= ?",
            "grants": "DELETE FROM grants WHERE expires_at <= ?",
            "revoked_tokens": "DELETE FROM revoked_tokens WHERE expires_at <= ?",
            "rate_limits": "DELETE FROM rate_limits WHERE window_end <= ?",
            "clients": "DELETE FROM clients WHERE expires_at IS NOT NULL AND expires_at <= ?",
        }
        with self._connection() as db, _transaction(db):
            return {table: db.execute(sql, (now,)).rowcount for table, sql in statements.items()}

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (always :data:`SCHEMA_VERSION` once open)."""
        with self._connection() as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close every pooled connection; later calls raise :class:`SQLiteStoreError`."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------

    @staticmethod
    def _check_path(path: str) -> None:
        """Refuse, before SQLite creates anything, a path that cannot name a database file."""
        if path.startswith("file:"):
            raise SQLiteStoreError("pass a filesystem path, not a SQLite URI")
        if path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
            raise SQLiteStoreError(
                f"cannot use {path!r} as a SQLite database: ending in {path[-1]!r}, it names a directory"
            )
        try:
            found = os.stat(path)
        except FileNotFoundError:
            found = None
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SQLiteStoreError(f"cannot open SQLite database {path!r}: {reason}") from None
        if found is not None and stat.S_ISDIR(found.st_mode):
            raise SQLiteStoreError(f"cannot open SQLite database {path!r}: it is a directory")
        if found is not None and not stat.S_ISREG(found.st_mode):  # a device, a FIFO: SQLite would write beside it
            raise SQLiteStoreError(f"cannot open SQLite database {path!r}: it is not a regular file")
        parent = os.path.dirname(os.path.abspath(path))
        if found is None and not os.path.isdir(parent):
            raise SQLiteStoreError(f"cannot create SQLite database {path!r}: directory {parent!r} does not exist")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> None:
        """First connection: every check (read only), then WAL mode, then bring the schema to
        :data:`SCHEMA_VERSION`; a file refused by a check is left as it was."""
        try:
            db = self._connect()
        except sqlite3.Error as exc:  # its first PRAGMA waits for another connection's write lock too
            raise self._refusal(exc, f"cannot open SQLite database {self.path!r}") from exc
        try:
            db.execute("BEGIN")  # one read snapshot for every check
            try:
                needed = self._needs_migration(db)
            finally:
                db.execute("COMMIT")
            if not self._memory:
                self._use_wal(db)
            if needed:
                with _transaction(db):
                    if self._needs_migration(db):  # re-read under the write lock: another process may have won
                        version = int(_scalar(db, "PRAGMA user_version"))
                        for migrate in MIGRATIONS[version:]:
                            migrate(db)
                        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            db.close()
            raise self._refusal(exc, f"cannot use {self.path!r} as a SQLite database") from exc
        except BaseException:
            db.close()
            raise
        self._idle.append(db)

    def _refusal(self, exc: sqlite3.Error, refused: str) -> Exception:
        """What opening the file raises for ``exc``: :class:`StoreUnavailable` while another
        connection holds it locked past ``busy_timeout`` (``SQLITE_BUSY``, ``SQLITE_LOCKED``: try
        again later), else :class:`SQLiteStoreError` saying ``refused`` (the file is no use)."""
        if _unavailable(exc) and _primary(exc) in (5, 6):
            return StoreUnavailable(f"SQLite database {self.path!r} is locked: {exc}")
        return SQLiteStoreError(f"{refused}: {exc}")

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Put the database in WAL mode, waiting up to ``busy_timeout`` for other connections.

        Switching the journal mode needs every other connection out of the file, and SQLite
        answers ``SQLITE_BUSY`` at once (its busy handler is not called), or leaves the mode
        unchanged, when another connection opening the same new file holds a lock; so the
        switch is retried here, re-reading the mode another connection may have set meanwhile.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = _scalar(db, "PRAGMA journal_mode")
                if mode != "wal":
                    mode = _scalar(db, "PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if _primary(exc) != 5 or time.monotonic() >= deadline:  # not SQLITE_BUSY, or waited long enough
                    raise
            else:
                if mode == "wal":
                    return
                if time.monotonic() >= deadline:
                    raise SQLiteStoreError(f"cannot put {self.path!r} in WAL mode (got {mode!r})")
            time.sleep(0.005)

    def _needs_migration(self, db: sqlite3.Connection) -> bool:
        """Whether the schema must be upgraded; refuses newer, foreign and damaged databases."""
        version = int(_scalar(db, "PRAGMA user_version"))
        application_id = int(_scalar(db, "PRAGMA application_id"))
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path!r} has schema version {version}, newer than this kavachOS "
                f"understands ({SCHEMA_VERSION}); upgrade kavachOS to open it"
            )
        if application_id not in (0, APPLICATION_ID):
            raise SQLiteStoreError(f"{self.path!r} belongs to another application (application_id {application_id})")
        if version == 0 and _scalar(db, _FOREIGN_OBJECTS) != 0:
            raise SQLiteStoreError(f"{self.path!r} is a SQLite database but not a kavachOS one")
        self._check_companions(db)
        self._check_tables(db, version)
        return version < SCHEMA_VERSION

    def _damaged(self, what: str) -> DamagedDatabaseError:
        return DamagedDatabaseError(f"{self.path!r} is damaged, not a usable kavachOS database: {what}")

    def _check_companions(self, db: sqlite3.Connection) -> None:
        """``kavach_settings`` and ``kavach_users``, when present, have the columns kavachOS uses
        and the server secret is bytes of the length :mod:`kavach.instance` needs."""
        for table, columns in COMPANIONS.items():
            if _kind(db, table) is None:
                continue
            missing = _missing(db, table, columns)
            if missing:
                raise self._damaged(f"its table {table} lacks {_plural('column', missing)} {', '.join(missing)}")
        if "value" in _columns(db, "kavach_settings"):
            secret = "SELECT typeof(value), length(value) FROM kavach_settings WHERE name = 'secret'"
            row = db.execute(secret).fetchone()
            if row is not None and (row[0] != "blob" or row[1] < _SECRET_BYTES):
                raise self._damaged(f"the server secret in kavach_settings is not {_SECRET_BYTES} or more bytes")

    def _check_tables(self, db: sqlite3.Connection, version: int) -> None:
        """The tables of schema ``version`` are there with their columns, and nothing is in the way
        of the migrations still to run."""
        expected = _expected(version)
        for name, (kind, columns) in expected.items():
            if kind != "table":
                continue
            if _kind(db, name) != "table":
                raise self._damaged(f"table {name} is missing")
            missing = _missing(db, name, columns)
            if missing:
                raise self._damaged(f"table {name} lacks {_plural('column', missing)} {', '.join(missing)}")
        if 0 < version < SCHEMA_VERSION:
            for name in _expected(SCHEMA_VERSION).keys() - expected.keys():
                if _kind(db, name) is not None:
                    raise self._damaged(f"it already holds {name}, which version {SCHEMA_VERSION} adds")

    def _recheck(self, db: sqlite3.Connection, exc: sqlite3.Error) -> None:
        """Raise :class:`DamagedDatabaseError` when the schema, changed since opening, explains ``exc``."""
        try:
            self._needs_migration(db)
        except DamagedDatabaseError as damage:
            raise damage from exc
        except SQLiteStoreError as other:  # replaced by a newer or foreign file meanwhile
            raise DamagedDatabaseError(str(other)) from exc
        except sqlite3.Error:
            pass

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Lend one pooled connection to the calling thread, exclusively, mapping outages (to
        :class:`StoreUnavailable`) and damage (to :class:`DamagedDatabaseError`)."""
        if self._closed:
            raise SQLiteStoreError("the store is closed")
        if not self._slots.acquire(timeout=self.busy_timeout):
            raise StoreUnavailable("no SQLite connection became free within the busy timeout")
        db: sqlite3.Connection | None = None
        try:
            with self._pool_lock:
                db = self._idle.pop() if self._idle else None
            try:
                if db is None:
                    db = self._connect()
                yield db
            except sqlite3.Error as exc:
                if _unavailable(exc):
                    raise StoreUnavailable(f"SQLite database {self.path!r} is unavailable: {exc}") from exc
                if db is not None and isinstance(exc, sqlite3.OperationalError):
                    self._recheck(db, exc)
                raise
            except _Unreadable as exc:
                raise self._damaged(str(exc)) from exc
        finally:
            if db is not None:
                with self._pool_lock:
                    if self._closed:
                        db.close()
                    else:
                        self._idle.append(db)
            self._slots.release()

    # -- clients ----------------------------------------------------------------------------

    def _get_client(self, db: sqlite3.Connection, e: fx.GetClient) -> Client | None:
        return _one(db, _CLIENTS, "WHERE client_id = ?", (e.client_id,))

    def _put_client(self, db: sqlite3.Connection, e: fx.PutClient) -> None:
        db.execute(_CLIENTS.upsert, _CLIENTS.encode(e.client))

    # DeleteClient and RevokeSubject run in the write transaction, so a redemption (ConsumeCode)
    # comes wholly before them (its grant is revoked) or wholly after (its code is gone). Codes
    # need no index on client_id or subject: they live a minute and ``kavach serve`` purges them.

    def _delete_client(self, db: sqlite3.Connection, e: fx.DeleteClient) -> bool:
        existed = db.execute("DELETE FROM clients WHERE client_id = ?", (e.client_id,)).rowcount > 0
        db.execute("DELETE FROM codes WHERE client_id = ? AND consumed = 0", (e.client_id,))
        db.execute("UPDATE grants SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL", (e.now, e.client_id))
        return existed

    def _list_clients(self, db: sqlite3.Connection, e: fx.ListClients) -> tuple[Client, ...]:
        return _many(db, _CLIENTS, "ORDER BY seq", ())

    # -- pending authorizations and codes ---------------------------------------------------

    def _put_pending(self, db: sqlite3.Connection, e: fx.PutPending) -> None:
        db.execute(_PENDING.upsert, _PENDING.encode(e.pending))

    def _get_pending(self, db: sqlite3.Connection, e: fx.GetPending) -> PendingAuthorization | None:
        record = _one(db, _PENDING, "WHERE ticket_hash = ?", (e.ticket_hash,))
        return None if record is None or record.expires_at <= e.now else record

    def _take_pending(self, db: sqlite3.Connection, e: fx.TakePending) -> PendingAuthorization | None:
        rows = db.execute(_PENDING.take, (e.ticket_hash,)).fetchall()
        if not rows:
            return None
        record = _PENDING.decode(rows[0])
        return None if record.expires_at <= e.now else record

    def _put_code(self, db: sqlite3.Connection, e: fx.PutCode) -> None:
        db.execute(_CODES.upsert, _CODES.encode(e.code))

    def _get_code(self, db: sqlite3.Connection, e: fx.GetCode) -> AuthorizationCode | None:
        return _one(db, _CODES, "WHERE code_hash = ?", (e.code_hash,))

    def _consume_code(self, db: sqlite3.Connection, e: fx.ConsumeCode) -> bool:
        sql = "UPDATE codes SET consumed = 1 WHERE code_hash = ? AND consumed = 0"
        if db.execute(sql, (e.code_hash,)).rowcount == 0:
            return False  # already consumed or gone: nothing is written
        db.execute(_GRANTS.upsert, _GRANTS.encode(e.grant))
        return True

    # -- grants -----------------------------------------------------------------------------

    def _get_grant(self, db: sqlite3.Connection, e: fx.GetGrant) -> Grant | None:
        return _one(db, _GRANTS, "WHERE grant_id = ?", (e.grant_id,))

    def _revoke_grant(self, db: sqlite3.Connection, e: fx.RevokeGrant) -> bool:
        sql = "UPDATE grants SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL"
        return bool(db.execute(sql, (e.now, e.grant_id)).rowcount > 0)

    def _revoke_subject(self, db: sqlite3.Connection, e: fx.RevokeSubject) -> int:
        db.execute("DELETE FROM codes WHERE subject = ? AND consumed = 0", (e.subject,))
        sql = "UPDATE grants SET revoked_at = ? WHERE subject = ? AND revoked_at IS NULL"
        return int(db.execute(sql, (e.now, e.subject)).rowcount)

    def _list_grants(self, db: sqlite3.Connection, e: fx.ListGrants) -> tuple[Grant, ...]:
        where = "WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR client_id = ?2) ORDER BY seq"
        return _many(db, _GRANTS, where, (e.subject, e.client_id))

    def _rotate(self, db: sqlite3.Connection, e: fx.RotateRefresh) -> fx.Rotation:
        """:meth:`RotateRefresh.decide <kavach_core.effects.RotateRefresh.decide>` under the write lock."""
        rotation = e.decide(_one(db, _GRANTS, "WHERE grant_id = ?", (e.grant_id,)))
        after = rotation.grant
        if rotation.outcome == "rotated" and after is not None:
            db.execute(
                "UPDATE grants SET refresh_generation = ?, refresh_hash = ?, rotated_at = ?, refresh_expires_at = ?"
                " WHERE grant_id = ?",
                (after.refresh_generation, after.refresh_hash, after.rotated_at, after.refresh_expires_at, e.grant_id),
            )
        elif rotation.outcome == "reused":
            db.execute("UPDATE grants SET revoked_at = ? WHERE grant_id = ?", (e.now, e.grant_id))
        return rotation

    # -- access tokens ----------------------------------------------------------------------

    def _revoke_access(self, db: sqlite3.Connection, e: fx.RevokeAccessToken) -> None:
        db.execute(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?)"
            " ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
            (e.jti, e.expires_at),
        )

    def _is_revoked(self, db: sqlite3.Connection, e: fx.IsTokenRevoked) -> bool:
        row = db.execute(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?)"
            " OR NOT EXISTS (SELECT 1 FROM grants WHERE grant_id = ? AND revoked_at IS NULL)",
            (e.jti, e.grant_id),
        ).fetchone()
        return bool(row[0])

    def _end_session(self, db: sqlite3.Connection, e: fx.EndSession) -> None:
        self._revoke_access(db, fx.RevokeAccessToken(e.record_id, e.expires_at))

    def _is_session_ended(self, db: sqlite3.Connection, e: fx.IsSessionEnded) -> bool:
        return db.execute("SELECT 1 FROM revoked_tokens WHERE jti = ?", (e.record_id,)).fetchone() is not None

    # -- signing keys -----------------------------------------------------------------------

    def _get_keys(self, db: sqlite3.Connection, e: fx.Effect) -> tuple[SigningKey, ...]:
        return _many(db, _KEYS, "ORDER BY position", ())

    def _swap_keys(self, db: sqlite3.Connection, e: fx.SwapSigningKeys) -> tuple[SigningKey, ...]:
        current = tuple(row[0] for row in db.execute("SELECT kid FROM signing_keys ORDER BY position"))
        if current == e.expected:
            db.execute("DELETE FROM signing_keys")
            columns = ", ".join(("position", *_KEYS.columns))
            marks = ", ".join("?" for _ in range(len(_KEYS.columns) + 1))
            db.executemany(
                f"INSERT INTO signing_keys ({columns}) VALUES ({marks})",  # noqa: S608 (fixed identifiers)
                [(position, *_KEYS.encode(key)) for position, key in enumerate(e.keys)],
            )
        return self._get_keys(db, e)

    # -- rate limits ------------------------------------------------------------------------

    def _hit(self, db: sqlite3.Connection, e: fx.Hit) -> bool:
        if e.step == 0:  # a read: no row is made for a window nothing was counted in
            rows = db.execute(
                "SELECT coalesce((SELECT count FROM rate_limits WHERE bucket = ? AND window_end = ?), 0)",
                (e.bucket, e.window_end),
            ).fetchall()
        elif e.step < 0:  # giving back: never below 0, and no row is made where none is
            rows = db.execute(
                "UPDATE rate_limits SET count = max(count + ?, 0) WHERE bucket = ? AND window_end = ? RETURNING count",
                (e.step, e.bucket, e.window_end),
            ).fetchall()
        else:
            rows = db.execute(
                "INSERT INTO rate_limits (bucket, window_end, count) VALUES (?, ?, ?)"
                " ON CONFLICT (bucket, window_end) DO UPDATE SET count = count + excluded.count RETURNING count",
                (e.bucket, e.window_end, e.step),
            ).fetchall()
        return bool((rows[0][0] if rows else 0) <= e.limit)


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is held from the first read, so a
    read-modify-write is one step for every other connection; any failure rolls back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with suppress(sqlite3.Error):  # a broken connection: the original error says why
                db.execute("ROLLBACK")
        raise


def _one(db: sqlite3.Connection, table: _Table[R], where: str, args: Sequence[Any]) -> R | None:
    rows = db.execute(f"{table.select} {where}", args).fetchall()
    return table.decode(rows[0]) if rows else None


def _many(db: sqlite3.Connection, table: _Table[R], where: str, args: Sequence[Any]) -> tuple[R, ...]:
    return tuple(table.decode(row) for row in db.execute(f"{table.select} {where}", args).fetchall())


def _scalar(db: sqlite3.Connection, sql: str) -> Any:
    return db.execute(sql).fetchone()[0]


def _primary(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _unavailable(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means the database cannot be reached now, rather than a programming error."""
    return _primary(exc) in _UNAVAILABLE_CODES
