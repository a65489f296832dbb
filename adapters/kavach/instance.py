"""One kavachOS instance: its store, local users, the server secret and the configuration.

Where the data lives is :attr:`Settings.store` (any :func:`kavach.stores.open_store` URL or
path), else :attr:`Settings.db` (an SQLite file, ``./kavach.db`` by default). The secret and the
local users live with the store, so every instance sharing a store shares them too:

- SQLite: the ``kavach_settings`` and ``kavach_users`` tables of the same file (below);
- PostgreSQL: the same two tables in the store's schema (``INSERT ... ON CONFLICT DO NOTHING``
  then a read, so instances starting together on a fresh schema agree on one secret);
- Redis: ``<prefix>settings:secret`` (``SET ... NX`` then ``GET``) and the hash ``<prefix>users``,
  with no TTL (a Redis without persistence forgets them on restart: see ``docs/deployment.md``).

A PostgreSQL or Redis store is shared by several processes, possibly on several machines, so its
signing keys and the server secret are kept encrypted (:mod:`kavach.stores._sealing`, the secret
under the associated data :data:`SECRET_AAD`): an instance on one refuses to open without
``KAVACH_STORE_KEY``, and checks at once that the key opens what the store holds. A copy of the
database alone then yields neither a signing key nor the secret that keys session cookies and
refresh-token derivation.

The server secret (:attr:`kavach_core.config.Config.secret`, which keys refresh-token derivation
and the pages' cookies) is generated once, on first use of a database, and kept in the
``kavach_settings`` table of that database: restarts, and every process serving the same file,
agree on it without anyone handling it. The insert is ``INSERT OR IGNORE`` followed by a read, so
two processes starting together on a fresh file still end up with one secret.

The store is opened before any other table is touched: :class:`~kavach.stores.sqlite.SQLiteStore`
refuses a fresh file that already holds foreign tables.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from kavach_core import effects as fx
from kavach_core.config import Config, ProtectedResource, redact
from kavach_core.context import Context
from kavach_core.drivers import Flow, StoreUnavailable, run
from kavach_core.errors import ConfigurationError

from .settings import Settings, SettingsError
from .stores import open_store, sqlite_path
from .stores._sealing import ENV_VAR as STORE_KEY_VAR
from .stores._sealing import KeySealer, StoreKeyError, seal, sealer_from, unseal
from .stores.sqlite import SQLiteStore, SQLiteStoreError
from .users import MemoryUsers, PostgresUsers, RedisUsers, SQLiteUsers, Users

SECRET_BYTES = 32
SECRET_AAD = "kavach-server-secret"
"""The associated data sealing the server secret (a sealed signing key's PEM does not open as it)."""
_SETTINGS_TABLE = (
    "CREATE TABLE IF NOT EXISTS kavach_settings "
    "(name TEXT PRIMARY KEY, value BLOB NOT NULL, created_at INTEGER NOT NULL)"
)


_PLACEHOLDER = ProtectedResource("http://127.0.0.1/mcp")
_SHARED_KINDS = ("postgres", "redis")
MAKE_STORE_KEY = 'python3 -c "import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'


class InstanceError(Exception):
    """The instance cannot be opened; the message is one line for the person at the terminal."""


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def server_secret(path: str, *, creates: bool = True, entropy: Callable[[int], bytes] = os.urandom) -> bytes:
    """The secret stored in the database at ``path``, created on first call (atomically). Unless
    it ``creates``, a database without one (a store the library made) is left as it is, and the
    secret returned is this process's alone: what only reads or removes needs none kept."""
    db = _connect(path)
    try:
        if creates:
            db.execute(_SETTINGS_TABLE)
            db.execute(
                "INSERT OR IGNORE INTO kavach_settings (name, value, created_at) VALUES ('secret', ?, ?)",
                (entropy(SECRET_BYTES), int(time.time())),
            )
        elif "kavach_settings" not in _tables(db):
            return entropy(SECRET_BYTES)
        row = db.execute("SELECT value FROM kavach_settings WHERE name = 'secret'").fetchone()
    finally:
        db.close()
    if row is None:
        return entropy(SECRET_BYTES)
    value = bytes(row[0])
    if len(value) < SECRET_BYTES:
        raise InstanceError(f"the server secret stored in {path!r} is too short; the database is damaged")
    return value


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(row[0]) for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


def sqlite_tables(path: str) -> set[str]:
    """The names of the tables in the SQLite database at ``path``."""
    db = _connect(path)
    try:
        return _tables(db)
    finally:
        db.close()


def store_kind(location: str) -> str:
    """``"memory"``, ``"sqlite"``, ``"postgres"`` or ``"redis"``: what :func:`open_store` makes of ``location``."""
    if location in ("memory:", ":memory:"):
        return "memory"
    scheme = location.partition("://")[0].lower() if "://" in location else ""
    if scheme in ("postgresql", "postgres"):
        return "postgres"
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme == "sqlite":
        try:
            sqlite_path(location)
        except ValueError as exc:
            raise InstanceError(str(exc)) from None
    if scheme not in ("", "sqlite"):
        raise InstanceError(
            f"unknown store {redact(location)!r}: use a file path, sqlite:///PATH, postgresql://... or redis://..."
        )
    if not scheme and _KEYWORD_DSN.match(location):  # a file of that name would hold the password in its name
        raise InstanceError("a PostgreSQL store is given as a postgresql:// URL, not as libpq keywords (host=...)")
    return "sqlite"


_KEYWORD_DSN = re.compile(r"\s*(host|hostaddr|port|dbname|user|password|service|sslmode)\s*=", re.IGNORECASE)
"""A libpq keyword string (``host=db dbname=kavach ...``), which would otherwise name an SQLite file."""


def sqlite_file(location: str) -> str:
    """The SQLite file a store location names: a plain path as given, a ``sqlite://`` URL's path."""
    return sqlite_path(location) if "://" in location else location


def postgres_secret(
    store: Any, sealer: KeySealer | None = None, *, creates: bool = True, entropy: Callable[[int], bytes] = os.urandom
) -> bytes:
    """The secret kept in ``kavach_settings`` of a PostgreSQL store's schema, made on first call
    (sealed with ``sealer`` when given, like the signing keys). Unless it ``creates``, a schema
    that holds no store (no ``schema_version`` table) raises :class:`NoStoreError` and is left as
    it is."""
    s = f'"{store.schema}"'

    def holds_a_store() -> Any:
        rows = yield "SELECT to_regclass(%s) IS NOT NULL", (f"{s}.schema_version",)
        return bool(rows[0][0])

    if not creates and not store._run(holds_a_store(), False):  # same package; before any migration
        raise NoStoreError(f"schema {store.schema}")

    def plan() -> Any:
        read = f"SELECT value FROM {s}.kavach_settings WHERE name = 'secret'", ()  # noqa: S608
        rows = yield read
        if not rows:  # first use: written once, then read (a database taking no writes opens if it has one)
            yield (
                f"INSERT INTO {s}.kavach_settings (name, value, created_at) VALUES ('secret', %s, %s)"  # noqa: S608
                " ON CONFLICT (name) DO NOTHING",
                (seal(sealer, SECRET_AAD, entropy(SECRET_BYTES)), int(time.time())),
            )
            rows = yield read
        return bytes(rows[0][0])

    store.migrate()  # makes kavach_settings (migration 2), under the migration lock
    value: bytes = store._run(plan(), False)  # same package; each statement commits
    return _open_secret(sealer, value)


def redis_secret(
    store: Any, sealer: KeySealer | None = None, *, creates: bool = True, entropy: Callable[[int], bytes] = os.urandom
) -> bytes:
    """The secret kept at ``<prefix>settings:secret`` of a Redis store, made on first call
    (sealed with ``sealer`` when given, like the signing keys). Before it is made, the prefix must
    hold only keys kavachOS writes (:data:`~kavach.stores.redis.KEY_KINDS`: a store the library
    made), else :class:`InstanceError`; unless it ``creates``, a prefix with no key under it raises
    :class:`NoStoreError`. Either way nothing is written."""
    from .stores.redis import KEY_KINDS, _glob_escape, outages_unavailable

    key = store.prefix + "settings:secret"
    client = store._sync_client()  # same package
    with outages_unavailable():
        value = client.get(key)  # there already: only read (so a read-only replica opens too)
        if value is None:  # first use: every key under the prefix is looked at, once per store
            found = False
            for held in client.scan_iter(match=_glob_escape(store.prefix) + "*", count=1000):
                found, name = True, _text(held)
                if name[len(store.prefix) :].split(":", 1)[0] not in KEY_KINDS:
                    raise InstanceError(
                        f"prefix {store.prefix!r} holds keys kavachOS did not write (such as {name!r});"
                        " give a prefix of its own (?prefix=... in the URL)"
                    )
            if not found and not creates:
                raise NoStoreError(f"prefix {store.prefix!r}")
            client.set(key, seal(sealer, SECRET_AAD, entropy(SECRET_BYTES)), nx=True)
            value = client.get(key)
    return _open_secret(sealer, bytes(value))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class NoStoreError(InstanceError):
    """A command that only reads or changes what exists found no store where it was pointed."""


def _open_secret(sealer: KeySealer | None, stored: bytes) -> bytes:
    try:
        return unseal(sealer, SECRET_AAD, stored)
    except StoreKeyError as exc:
        raise StoreKeyError("the server secret in this store was sealed with another store key") from exc


def build_config(settings: Settings, secret: bytes) -> Config:
    """The core configuration for these settings (one protected resource: ``<origin>/mcp``)."""
    try:
        # The issuer alone first, so a bad one is reported as such (the resource derives from it).
        Config(
            issuer=settings.issuer_url,
            resources=(_PLACEHOLDER,),
            secret=secret,
            allow_insecure_http=settings.allow_insecure_http,
        )
        resource = ProtectedResource(
            settings.resource_url,
            scopes=settings.scopes,
            default_scopes=settings.default_scopes,
            name=settings.resource_name,
        )
        return Config(
            issuer=settings.issuer_url,
            resources=(resource,),
            secret=secret,
            lifetimes=settings.lifetimes_config(),
            registration=settings.registration_config(),
            signing_alg=settings.signing_alg,
            refresh_grace=settings.refresh_grace,
            allow_insecure_http=settings.allow_insecure_http,
        )
    except ConfigurationError as exc:
        message = str(exc)
        if "allow_insecure_http" in message:  # the library's name for it; here it is a flag
            message = message.replace(
                "set allow_insecure_http", "--allow-insecure-http or KAVACH_ALLOW_INSECURE_HTTP=1"
            )
        raise SettingsError(message) from exc


def check_issuer(settings: Settings) -> Config:
    """Validate the configuration before the database is touched (a throwaway secret)."""
    return build_config(settings, b"\0" * SECRET_BYTES)


class Instance:
    """The store, the local users, the server secret and the configuration of one deployment."""

    store: Any
    users: Users

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None, creates: bool = True) -> None:
        """Opens the store; unless it ``creates``, a PostgreSQL schema or Redis prefix holding no
        store raises :class:`NoStoreError` and is left untouched (a mistyped location must not
        become a new, empty store), and an SQLite store the library made gets no secret or users
        table (:func:`server_secret`)."""
        check_issuer(settings)
        self.settings = settings
        self.location = settings.store or settings.db
        self.kind = store_kind(self.location)
        self.path = sqlite_file(self.location) if self.kind == "sqlite" else self.location
        if self.kind in _SHARED_KINDS:
            self._open_shared(os.environ if environ is None else environ, creates)
        else:
            self._open_local(creates)
        self.config = build_config(settings, self.secret)

    def describe(self) -> str:
        """Where the data lives, for people: ``SQLite: /abs/path``, ``PostgreSQL: postgresql://...``."""
        if self.kind == "sqlite":
            return "SQLite: " + (self.path if self.path == ":memory:" else os.path.abspath(self.path))
        if self.kind == "memory":
            return "memory (nothing is kept)"
        name = "PostgreSQL" if self.kind == "postgres" else "Redis"
        where = f"schema {self.store.schema}" if self.kind == "postgres" else f"prefix {self.store.prefix!r}"
        return f"{name}: {redact(self.location)} ({where})"

    def _open_local(self, creates: bool) -> None:
        if self.kind == "memory":
            from kavach_core.memory_store import MemoryStore

            self.store = MemoryStore()
            self.secret = os.urandom(SECRET_BYTES)
            self.users = Users()
            return
        try:
            self.store = SQLiteStore(self.path)
        except (SQLiteStoreError, StoreUnavailable) as exc:
            raise InstanceError(str(exc)) from exc
        try:
            if self.path == ":memory:":
                self.secret = os.urandom(SECRET_BYTES)
                self.users = Users()
            else:
                self.secret = server_secret(self.path, creates=creates)
                kept = creates or "kavach_users" in sqlite_tables(self.path)  # else: made by the library, no user
                self.users = Users(SQLiteUsers(self.path) if kept else MemoryUsers())
        except sqlite3.Error as exc:
            self.store.close()
            raise InstanceError(f"cannot use database {self.path!r}: {exc}") from exc

    def _open_shared(self, environ: Mapping[str, str], creates: bool) -> None:
        """A PostgreSQL or Redis store: the store key first, then one round of reads proving that
        the backend answers and that the key opens the signing keys it holds."""
        where = redact(self.location)
        try:
            key = sealer_from(None, environ)
        except StoreKeyError as exc:
            raise InstanceError(f"{exc}; make one with: {MAKE_STORE_KEY}") from exc
        if key is None:
            raise InstanceError(
                f"a PostgreSQL or Redis store needs {STORE_KEY_VAR} (the same in every instance) to encrypt"
                f" signing keys at rest; make one with: {MAKE_STORE_KEY}"
            )
        try:
            self.store = open_store(self.location)
        except ImportError as exc:
            extra = "postgres" if self.kind == "postgres" else "redis"
            raise InstanceError(f"this store needs {exc.name}: pip install 'kavachos[{extra}]'") from exc
        except Exception as exc:  # a malformed URL or schema name: one line, not a traceback
            raise InstanceError(f"cannot use store {where}: {exc}") from exc
        try:
            if self.kind == "postgres":
                self.secret = postgres_secret(self.store, key, creates=creates)
                self.users = Users(PostgresUsers(self.store))
            else:
                self.secret = redis_secret(self.store, key, creates=creates)
                self.users = Users(RedisUsers(self.store))
            if len(self.secret) < SECRET_BYTES:
                raise InstanceError(f"the server secret stored in {where} is too short; the store is damaged")
            self.store.perform(fx.GetSigningKeys())
        except StoreUnavailable as exc:
            self.close()
            raise InstanceError(f"cannot reach the store at {where}: {_first_line(exc)}") from exc
        except StoreKeyError as exc:
            self.close()
            raise InstanceError(f"{exc} (check {STORE_KEY_VAR}: every instance needs the same one)") from exc
        except NoStoreError as exc:
            self.close()
            raise NoStoreError(f"no kavach store in {exc} of {where}") from None
        except InstanceError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise InstanceError(f"cannot use store {where}: {_first_line(exc)}") from exc

    def context(self) -> Context:
        """A context for one request: the wall clock now and the operating system's entropy."""
        return Context(self.config, int(time.time()), os.urandom)

    def run(self, flow: Flow[Any]) -> Any:
        try:
            return run(flow, self.store)
        except StoreUnavailable as exc:
            raise InstanceError(str(exc)) from exc

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
