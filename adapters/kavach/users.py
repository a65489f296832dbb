"""Built-in local users: a username and an scrypt password hash, for the CLI and demos.

Applications with their own login (a session cookie, SSO) do not need this module: they pass an
``identify`` hook to :class:`kavach.server.AuthorizationServer` instead.

Where users live: :class:`MemoryUsers` (a dict), :class:`SQLiteUsers` (a table of an SQLite
file), :class:`PostgresUsers` and :class:`RedisUsers` (in the database of a
:class:`~kavach.stores.postgres.PostgresStore` or :class:`~kavach.stores.redis.RedisStore`, so
every instance sharing that store shares its users). The last two raise
:class:`kavach_core.drivers.StoreUnavailable` when the backend cannot be reached, which the
server answers with 503 like any other store outage.

A password set is :data:`MIN_PASSWORD` (15) characters or more, as NIST SP 800-63B-4 §3.1.1.2 asks
of a password that is the only factor (it is, at the sign-in page); a shorter one set before
this rule still signs in.

Hashes are ``scrypt$<log2 n>$<r>$<p>$<salt>$<key>`` (RFC 7914, base64url salt and key) of the
password's UTF-8 once NFKC-normalised (UAX #15), as NIST SP 800-63B-4 §3.1.1.2 asks of a
verifier accepting Unicode: a password typed on a keyboard composing ``é`` and one sending ``e``
and a combining accent are the same password. A password is checked as typed and, when that is
not its normal form, as normalised too, so a hash an earlier release made of the password as
typed still opens with it, and an earlier release reads a hash made now whenever the password
is typed in normal form (every ASCII password): instances of two releases can share a store.
Verifying is constant-time (``cryptography``'s ``Scrypt.verify``), and an unknown username
still costs the scrypt runs a wrong password for a real one does, so timing does not tell which
usernames exist. A failed check against a hash made with cheaper settings (an earlier release's
``p = 1``, kept until that account next signs in) is padded with the scrypt work it lacks, so
it costs what an unknown name does.

A sign-in session is bound to the account's current hash through :meth:`Users.session_stamp`: every
``add`` stores a freshly salted hash, so removing a user, changing the password, or removing and
adding the name again ends every session signed in before (OWASP ASVS 5.0 §7.4.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kavach_core.opaque import b64url, b64url_decode

from .settings import SettingsError
from .stores.sqlite import COMPANIONS, create_private

if TYPE_CHECKING:
    from .stores.postgres import PostgresStore
    from .stores.redis import RedisStore

DEFAULT_LOG_N = 15
"""n = 2**15, r = 8, p = 3: 32 MiB and about a tenth of a second per attempt (RFC 7914 §2), one of
the OWASP Password Storage Cheat Sheet's minimum scrypt settings (equal in cost to n = 2**17, p = 1
at a quarter of the memory). A hash made with other settings is replaced at the next sign-in."""
_R = 8
_P = 3
_SALT_BYTES = 16
_KEY_BYTES = 32
MAX_USERNAME = 128
MIN_PASSWORD = 15
"""The shortest password an account may be given: the sign-in page is its only factor, and NIST SP
800-63B-4 §3.1.1.2 asks for 15 characters of a password used alone. Checked when a password is set,
never at sign-in, so an account given a shorter one earlier still signs in."""
MAX_PASSWORD = 1024


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode general categories a username must not contain: controls (C0, DEL, C1), format
characters (bidi controls, zero-width characters), surrogates, line and paragraph separators."""


class UsernameError(ValueError, SettingsError):
    """A username that is not printable; the message is one line (the ``kavach`` command reports it
    as bad input, like a :class:`~kavach.settings.SettingsError`)."""


class PasswordError(ValueError, SettingsError):
    """A password no account may be given (too short, too long); one line, reported like :class:`UsernameError`."""


def normalize_username(username: str) -> str:
    """The account ``username`` names: NFKC-normalised (UAX #15) and stripped, so visually equal
    names are one account.

    Every path that accepts a username goes through here, so one rule holds everywhere: a name
    with a control, format, surrogate or line/paragraph separator character anywhere in it raises
    :class:`UsernameError` (it would print as something else, or as nothing, in lists and logs).
    """
    name = unicodedata.normalize("NFKC", username)
    for char in name:
        category = unicodedata.category(char)
        if category == "Cs":
            raise UsernameError(
                "a username must be valid Unicode text (it has a lone surrogate, as from bytes that are not UTF-8)"
            )
        if category in _UNPRINTABLE:
            raise UsernameError(
                f"a username must not contain control, invisible or line-breaking characters (it has U+{ord(char):04X})"
            )
    return name.strip()


def valid_password(password: str) -> str:
    """``password`` when an account may be given it (:data:`MIN_PASSWORD` to :data:`MAX_PASSWORD`
    characters), else :class:`UsernameError`'s sibling :class:`PasswordError`.

    Characters are Unicode code points (NIST SP 800-63B-4 §3.1.1.2), counted as typed and once
    normalised (:func:`_normal_form`): the shorter of the two must reach the minimum, so neither
    combining accents (``e`` and an accent are one character once normalised) nor compatibility
    characters (a ligature is one character as typed) make a password count as longer than it is.
    The maximum is counted as typed (a longer text is refused before it is normalised)."""
    too_long = len(password) > MAX_PASSWORD  # first: a huge text is not normalised
    if too_long or min(len(password), len(unicodedata.normalize("NFKC", password))) < MIN_PASSWORD:
        raise PasswordError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if "\x00" in password:  # no sign-in form can send one (GN-03): the account could never sign in
        raise PasswordError("a password cannot contain the NUL character")
    return password


def valid_username(username: str) -> str:
    """The account ``username`` names (:func:`normalize_username`), or :class:`UsernameError` when
    no account can have it: empty or longer than :data:`MAX_USERNAME` once normalised, too."""
    name = normalize_username(username)
    if not name or len(name) > MAX_USERNAME:
        raise UsernameError(f"a username has 1 to {MAX_USERNAME} printable characters")
    return name


def _normal_form(password: str) -> bytes:
    """What :func:`hash_password` hashes: the password's UTF-8 once NFKC-normalised."""
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _spellings(password: str) -> tuple[bytes, ...]:
    """The octets a stored hash may have been made of: the password as typed and, when that is not
    its normal form, the normal form (:func:`_normal_form`)."""
    typed = password.encode("utf-8")
    normal = _normal_form(password)
    return (typed,) if normal == typed else (typed, normal)


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N) -> str:
    """A fresh scrypt hash of ``password`` (NFKC-normalised) with a random 128-bit salt."""
    if not 10 <= log_n <= 20:
        raise ValueError("log_n must be between 10 and 20")
    salt = os.urandom(_SALT_BYTES)
    key = Scrypt(salt=salt, length=_KEY_BYTES, n=2**log_n, r=_R, p=_P).derive(_normal_form(password))
    return f"scrypt${log_n}${_R}${_P}${b64url(salt)}${b64url(key)}"


def _parsed(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """``(log2 n, r, p, salt, key)`` of a stored scrypt hash; ``None`` when it is malformed (the
    salt or the key not canonical base64url, the key not :data:`_KEY_BYTES` long: a shorter one
    is a prefix of the right one) or its settings are outside what is ever checked (so a damaged
    record cannot ask for unbounded work)."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        log_n, r, p = (int(part) for part in parts[1:4])
        salt, key = b64url_decode(parts[4]), b64url_decode(parts[5])
    except ValueError:
        return None
    if not (10 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16) or len(key) != _KEY_BYTES:
        return None
    return log_n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password``, as typed or NFKC-normalised (:func:`_spellings`), matches
    ``encoded``; constant-time, never raises on a bad hash. A wrong password costs one scrypt run
    per spelling, whatever ``encoded`` is (a dummy hash included)."""
    parsed = _parsed(encoded)
    if parsed is None:
        return False
    log_n, r, p, salt_bytes, key_bytes = parsed
    for spelling in _spellings(password):
        try:
            Scrypt(salt=salt_bytes, length=_KEY_BYTES, n=2**log_n, r=r, p=p).verify(spelling, key_bytes)
        except (ValueError, InvalidKey):
            continue
        return True
    return False


def credential_stamp(password_hash: str) -> str:
    """A short digest naming one stored hash (128 bits of SHA-256, base64url): it changes whenever
    the hash does, and reveals nothing usable about the password (the salt stays in the store)."""
    digest = hashlib.sha256(b"kavach session stamp v1\0" + password_hash.encode("utf-8")).digest()
    return b64url(digest[:16])


def _settings_of(encoded: str) -> tuple[str, ...]:
    """The ``(log_n, r, p)`` texts a stored hash was made with (nonsense for a malformed one)."""
    return tuple(encoded.split("$")[1:4])


def _dummy_hash(log_n: int, p: int = _P) -> str:
    return f"scrypt${log_n}${_R}${p}${b64url(bytes(_SALT_BYTES))}${b64url(bytes(_KEY_BYTES))}"


def _work(encoded: str) -> int:
    """The scrypt work of checking a password against ``encoded``: N * r * p (RFC 7914 §2), none
    for a hash :func:`verify_password` refuses before any."""
    parsed = _parsed(encoded)
    if parsed is None:
        return 0
    log_n, r, p = parsed[:3]
    return (1 << log_n) * r * p


class UserStore(Protocol):
    """Where local users live; every method is blocking (async adapters call it from a thread)."""

    def get_hash(self, username: str) -> str | None: ...

    def set_hash(self, username: str, password_hash: str) -> None: ...

    def replace_hash(self, username: str, old: str, new: str) -> bool:
        """Set ``new`` only while the stored hash is still ``old``, atomically; whether it did
        (a sign-in upgrading a hash must not undo a password changed meanwhile)."""
        ...

    def delete(self, username: str) -> bool: ...

    def usernames(self) -> tuple[str, ...]: ...


class MemoryUsers:
    """Users in a dict; for tests and demos."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hashes: dict[str, str] = {}

    def get_hash(self, username: str) -> str | None:
        with self._lock:
            return self._hashes.get(username)

    def set_hash(self, username: str, password_hash: str) -> None:
        with self._lock:
            self._hashes[username] = password_hash

    def replace_hash(self, username: str, old: str, new: str) -> bool:
        with self._lock:
            if self._hashes.get(username) != old:
                return False
            self._hashes[username] = new
            return True

    def delete(self, username: str) -> bool:
        with self._lock:
            return self._hashes.pop(username, None) is not None

    def usernames(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._hashes))


class SQLiteUsers:
    """Users in a table of an SQLite file (the store's own file is fine: the table is separate).
    Each call opens and closes its own connection, except for ``":memory:"``: an in-memory
    database lives only as long as its connection, so that one is kept (and shared under a lock).

    An existing ``kavach_users`` without the columns this class uses raises ``sqlite3.DatabaseError``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._memory: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if path == ":memory:":
            self._memory = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        else:
            create_private(path)  # opened first, before the store: still owner-only (password hashes)
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS kavach_users ("
                "username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, updated_at INTEGER NOT NULL)"
            )
            have = {row[0] for row in db.execute("SELECT name FROM pragma_table_info('kavach_users')")}
        missing = [c for c in COMPANIONS["kavach_users"] if c not in have]
        if missing:
            raise sqlite3.DatabaseError(f"table kavach_users lacks {', '.join(missing)}: not kavachOS's users table")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call: a fresh one to the file, or the in-memory database's own."""
        if self._memory is not None:
            with self._lock:
                yield self._memory
            return
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            yield db
        finally:
            db.close()

    def _changed(self, sql: str, args: tuple[object, ...]) -> bool:
        """Whether the statement changed a row."""
        with self._db() as db:
            return db.execute(sql, args).rowcount > 0

    def get_hash(self, username: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT password_hash FROM kavach_users WHERE username = ?", (username,)).fetchone()
        return None if row is None else str(row[0])

    def set_hash(self, username: str, password_hash: str) -> None:
        self._changed(
            "INSERT INTO kavach_users (username, password_hash, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(username) DO UPDATE SET password_hash = excluded.password_hash, "
            "updated_at = excluded.updated_at",
            (username, password_hash, int(time.time())),
        )

    def replace_hash(self, username: str, old: str, new: str) -> bool:
        return self._changed(
            "UPDATE kavach_users SET password_hash = ?, updated_at = ? WHERE username = ? AND password_hash = ?",
            (new, int(time.time()), username, old),
        )

    def delete(self, username: str) -> bool:
        return self._changed("DELETE FROM kavach_users WHERE username = ?", (username,))

    def usernames(self) -> tuple[str, ...]:
        with self._db() as db:
            rows = db.execute("SELECT username FROM kavach_users ORDER BY username").fetchall()
        return tuple(str(r[0]) for r in rows)


_SqlPlan = Generator[tuple[str, tuple[Any, ...]], list[tuple[Any, ...]], Any]


class PostgresUsers:
    """Users in the ``kavach_users`` table of a :class:`~kavach.stores.postgres.PostgresStore`'s
    schema, reached through that store's connection pool (its migrations run first, so the table
    sits next to the store's own). Each method is one statement."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._s = f'"{store.schema}"'
        store.migrate()  # makes kavach_users (migration 2), under the migration lock

    def _one(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def plan() -> _SqlPlan:
            return (yield sql, args)

        rows: list[tuple[Any, ...]] = self._store._run(plan(), False)  # same package
        return rows

    def get_hash(self, username: str) -> str | None:
        rows = self._one(f"SELECT password_hash FROM {self._s}.kavach_users WHERE username = %s", (username,))  # noqa: S608
        return str(rows[0][0]) if rows else None

    def set_hash(self, username: str, password_hash: str) -> None:
        self._one(
            f"INSERT INTO {self._s}.kavach_users (username, password_hash, updated_at) VALUES (%s, %s, %s)"  # noqa: S608
            " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,"
            " updated_at = excluded.updated_at",
            (username, password_hash, int(time.time())),
        )

    def replace_hash(self, username: str, old: str, new: str) -> bool:
        rows = self._one(
            f"UPDATE {self._s}.kavach_users SET password_hash = %s, updated_at = %s"  # noqa: S608
            " WHERE username = %s AND password_hash = %s RETURNING 1",
            (new, int(time.time()), username, old),
        )
        return bool(rows)

    def delete(self, username: str) -> bool:
        rows = self._one(f"DELETE FROM {self._s}.kavach_users WHERE username = %s RETURNING 1", (username,))  # noqa: S608
        return bool(rows)

    def usernames(self) -> tuple[str, ...]:
        rows = self._one(f"SELECT username FROM {self._s}.kavach_users ORDER BY username", ())  # noqa: S608
        return tuple(str(r[0]) for r in rows)


_REPLACE_HASH = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    return 1
end
return 0
"""
"""``replace_hash`` in one step: KEYS[1] the users hash; ARGV: username, old hash, new hash."""


class RedisUsers:
    """Users in one hash, ``<prefix>users`` (username -> password hash, no TTL), of a
    :class:`~kavach.stores.redis.RedisStore`'s Redis, through that store's client. Each method is
    one command; reads are retried once on a fresh connection, writes never (like the store)."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self.key = store.prefix + "users"

    def _command(self, *args: Any, read: bool) -> Any:
        from .stores.redis import attempt

        client = self._store._sync_client()  # same package
        return attempt(lambda: client.execute_command(*args), read=read)  # type: ignore[no-untyped-call]

    def get_hash(self, username: str) -> str | None:
        raw = self._command("HGET", self.key, username, read=True)
        return None if raw is None else bytes(raw).decode() if isinstance(raw, bytes) else str(raw)

    def set_hash(self, username: str, password_hash: str) -> None:
        self._command("HSET", self.key, username, password_hash, read=False)

    def replace_hash(self, username: str, old: str, new: str) -> bool:
        return bool(self._command("EVAL", _REPLACE_HASH, 1, self.key, username, old, new, read=False))

    def delete(self, username: str) -> bool:
        return bool(self._command("HDEL", self.key, username, read=False))

    def usernames(self) -> tuple[str, ...]:
        raw = self._command("HKEYS", self.key, read=True)
        return tuple(sorted(k.decode() if isinstance(k, bytes) else str(k) for k in raw))


class Users:
    """Local accounts over a :class:`UserStore`; the subject of a local user is its username."""

    def __init__(self, store: UserStore | None = None, *, log_n: int = DEFAULT_LOG_N) -> None:
        self.store: UserStore = store if store is not None else MemoryUsers()
        self.log_n = log_n
        self._settings = _settings_of(_dummy_hash(log_n))

    def add(self, username: str, password: str) -> None:
        """Create or replace a user; :class:`PasswordError` for a password no account may be given
        (:func:`valid_password`: shorter than :data:`MIN_PASSWORD` characters, for one)."""
        name = valid_username(username)
        self.store.set_hash(name, hash_password(valid_password(password), log_n=self.log_n))

    def remove(self, username: str) -> bool:
        """Delete a user; :class:`UsernameError` for a name no account can have."""
        return self.store.delete(normalize_username(username))

    def authenticate(self, username: str, password: str) -> str | None:
        """The subject when the password is right, else ``None`` (same cost either way)."""
        signed_in = self.sign_in(username, password)
        return None if signed_in is None else signed_in[0]

    def sign_in(self, username: str, password: str) -> tuple[str, str] | None:
        """:meth:`authenticate`, with the :meth:`session_stamp` of the very hash the password
        matched (one read, so a password changed meanwhile cannot lend the session its new stamp)."""
        name = account_name(username)
        if name is None or len(password) > MAX_PASSWORD:
            return None
        stored = self.store.get_hash(name)
        if stored is None:
            verify_password(password, _dummy_hash(self.log_n))
            return None
        if not verify_password(password, stored):
            self._pad(password, stored)
            return None
        current = hash_password(password, log_n=self.log_n) if _settings_of(stored) != self._settings else None
        replace = getattr(self.store, "replace_hash", None)  # a store written before it existed keeps its hash
        if current is not None and replace is not None:
            if replace(name, stored, current):
                stored = current  # upgraded: other sessions of this account end, as with a new password
            else:  # changed meanwhile: by a sign-in upgrading it too, or by a new password
                now = self.store.get_hash(name)
                if now is not None and _settings_of(now) == self._settings and verify_password(password, now):
                    stored = now
        return name, credential_stamp(stored)

    def _pad(self, password: str, stored: str) -> None:
        """After a failed check against ``stored``: the scrypt work it lacks against a current
        hash, so the answer takes as long as for a name with no account."""
        missing = 2**self.log_n * _R * _P - _work(stored)
        if missing > 0:
            unit = 2**self.log_n * _R
            verify_password(password, _dummy_hash(self.log_n, min(16, -(-missing // unit))))

    def session_stamp(self, username: str) -> str | None:
        """The :func:`credential_stamp` of the account's current hash; ``None`` when there is no
        such account. A session records it when it is made and holds only while it is unchanged."""
        name = account_name(username)
        stored = None if name is None else self.store.get_hash(name)
        return None if stored is None else credential_stamp(stored)


def account_name(username: str) -> str | None:
    """The account a sign-in as ``username`` reaches (:func:`normalize_username`), or ``None`` when
    no account can have it (empty, too long, unprintable). The sign-in limit counts per this name."""
    try:
        name = normalize_username(username)
    except UsernameError:
        return None
    return name if name and len(name) <= MAX_USERNAME else None
