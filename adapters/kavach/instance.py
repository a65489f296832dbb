"""One kavachOS instance on one SQLite file: store, users, the server secret and the configuration.

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
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import Flow, StoreUnavailable, run
from kavach_core.errors import ConfigurationError

from .settings import Settings, SettingsError
from .stores.sqlite import SQLiteStore, SQLiteStoreError
from .users import SQLiteUsers, Users

SECRET_BYTES = 32
_SETTINGS_TABLE = (
    "CREATE TABLE IF NOT EXISTS kavach_settings "
    "(name TEXT PRIMARY KEY, value BLOB NOT NULL, created_at INTEGER NOT NULL)"
)


_PLACEHOLDER = ProtectedResource("http://127.0.0.1/mcp")


class InstanceError(Exception):
    """The instance cannot be opened; the message is one line for the person at the terminal."""


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def server_secret(path: str, *, entropy: Callable[[int], bytes] = os.urandom) -> bytes:
    """The secret stored in the database at ``path``, created on first call (atomically)."""
    db = _connect(path)
    try:
        db.execute(_SETTINGS_TABLE)
        db.execute(
            "INSERT OR IGNORE INTO kavach_settings (name, value, created_at) VALUES ('secret', ?, ?)",
            (entropy(SECRET_BYTES), int(time.time())),
        )
        row = db.execute("SELECT value FROM kavach_settings WHERE name = 'secret'").fetchone()
    finally:
        db.close()
    value = bytes(row[0])
    if len(value) < SECRET_BYTES:
        raise InstanceError(f"the server secret stored in {path!r} is too short; the database is damaged")
    return value


def build_config(settings: Settings, secret: bytes) -> Config:
    """The core configuration for these settings (one protected resource: ``<origin>/mcp``)."""
    try:
        # The issuer alone first, so a bad one is reported as such (the resource derives from it).
        Config(issuer=settings.issuer_url, resources=(_PLACEHOLDER,), secret=secret,
               allow_insecure_http=settings.allow_insecure_http)
        resource = ProtectedResource(
            settings.resource_url,
            scopes=settings.scopes,
            default_scopes=settings.default_scopes,  # type: ignore[arg-type]  # attrs converter=tuple
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
        if "allow_insecure_http" in message:
            message += " with --allow-insecure-http or KAVACH_ALLOW_INSECURE_HTTP=1"
        raise SettingsError(message) from exc


def check_issuer(settings: Settings) -> Config:
    """Validate the configuration before the database is touched (a throwaway secret)."""
    return build_config(settings, b"\0" * SECRET_BYTES)


class Instance:
    """The store, the local users and the configuration of one database file."""

    def __init__(self, settings: Settings) -> None:
        check_issuer(settings)
        self.settings = settings
        self.path = settings.db
        try:
            self.store = SQLiteStore(self.path)
        except (SQLiteStoreError, StoreUnavailable) as exc:
            raise InstanceError(str(exc)) from exc
        try:
            if self.path == ":memory:":
                self.secret = os.urandom(SECRET_BYTES)
                self.users = Users()
            else:
                self.secret = server_secret(self.path)
                self.users = Users(SQLiteUsers(self.path))
        except sqlite3.Error as exc:
            self.store.close()
            raise InstanceError(f"cannot use database {self.path!r}: {exc}") from exc
        self.config = build_config(settings, self.secret)

    def context(self) -> Context:
        """A context for one request: the wall clock now and the operating system's entropy."""
        return Context(self.config, int(time.time()), os.urandom)

    def run(self, flow: Flow[Any]) -> Any:
        try:
            return run(flow, self.store)
        except StoreUnavailable as exc:
            raise InstanceError(str(exc)) from exc

    def close(self) -> None:
        self.store.close()
