"""Bad store input: files the SQLite store refuses, damaged kavachOS databases, odd ``--db`` paths
and malformed ``--store`` URLs.

Each case runs the real ``kavach`` command on real files (and real PostgreSQL and Redis where a
URL reaches them): a refusal is exit status 2 and one line on stderr, and leaves every file as it
was, byte for byte. The store-level cases open :class:`SQLiteStore` on real files directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sqlite3
from pathlib import Path

import pytest
import services
from kavach.stores import DamagedDatabaseError, SQLiteStore, SQLiteStoreError
from kavach.stores._codec import CLIENTS, GRANTS, KEYS
from kavach.stores.sqlite import APPLICATION_ID, MIGRATIONS
from kavach.users import SQLiteUsers
from kavach_serve import Cli

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.records import AuthorizationCode, Client, Grant, SigningKey

STORE_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAVACH_")}
    env["KAVACH_STORE_KEY"] = STORE_KEY
    return env


CLI = Cli(clean_env)
ok, bad = CLI.ok, CLI.bad


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _sql(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


def _kavach_db(path: Path) -> None:
    """A real kavachOS database: a signing key, a user, a client and the server secret."""
    ok(["keys", "rotate", "--db", str(path)])
    ok(["users", "add", "bob", "--password-stdin", "--db", str(path)], stdin="a long enough password\n")
    ok(["clients", "add", "--name", "Tool", "--redirect-uri", "http://127.0.0.1:9/cb", "--db", str(path)])


# -- 1. a refused file is left as it was --------------------------------------------------------------------------


REFUSED = {
    "newer-schema": (("PRAGMA user_version = 99", "CREATE TABLE t (x)"), ["keys", "list"], "schema version 99"),
    "other-application": (
        ("PRAGMA application_id = 12345", "CREATE TABLE t (x)"),
        ["keys", "list"],
        "another application",
    ),
    "unrelated-clients-table": (("CREATE TABLE clients (x)",), ["keys", "list"], "not a kavachOS one"),
    "foreign-kavach-settings": (
        ("CREATE TABLE kavach_settings (x)",),
        ["keys", "list"],
        "kavach_settings lacks columns name, value",
    ),
    "foreign-kavach-users": (
        ("CREATE TABLE kavach_users (x)",),
        ["users", "list"],
        "kavach_users lacks columns username, password_hash",
    ),
    "kavach-settings-view": (
        ("CREATE VIEW kavach_settings AS SELECT 1 AS name",),
        ["keys", "list"],
        "kavach_settings lacks columns",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_file_stays_byte_for_byte_unchanged(tmp_path: Path, case: str) -> None:
    statements, command, expect = REFUSED[case]
    path = tmp_path / "f.db"
    _sql(path, *statements)
    before = _files(tmp_path)
    bad([*command, "--db", str(path)], expect)
    assert _files(tmp_path) == before
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


def test_a_version_1_file_with_a_table_in_the_way_of_version_2_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.execute("CREATE TABLE rate_limits (x)")
    db.close()
    before = _files(tmp_path)
    bad(["clients", "list", "--db", str(path)], "already holds rate_limits")
    assert _files(tmp_path) == before


# -- 2. damaged kavachOS databases --------------------------------------------------------------------------------


DAMAGE = {
    "grants-dropped": ("DROP TABLE grants", ["grants", "list"], "table grants is missing"),
    "client-name-dropped": (
        "ALTER TABLE clients DROP COLUMN client_name",
        ["clients", "list"],
        "table clients lacks column client_name",
    ),
    "secret-as-text": ("UPDATE kavach_settings SET value = 'abc'", ["keys", "list"], "server secret"),
    "secret-too-short": ("UPDATE kavach_settings SET value = x'0102'", ["users", "list"], "server secret"),
    "pem-as-text-list": ("UPDATE signing_keys SET private_pem = 'garbage'", ["keys", "list"], "table signing_keys"),
    "pem-as-text-rotate": ("UPDATE signing_keys SET private_pem = 'garbage'", ["keys", "rotate"], "table signing_keys"),
    "redirect-uris-not-json": ("UPDATE clients SET redirect_uris = 'oops'", ["clients", "list"], "table clients"),
    # SQLite's column affinity keeps text that is no number as text: read as damage, not used
    "key-time-as-text": ("UPDATE signing_keys SET created_at = 'abc'", ["keys", "list"], "created_at = 'abc'"),
    "client-time-as-text": ("UPDATE clients SET issued_at = 'yesterday'", ["clients", "list"], "not an integer"),
    "client-name-as-blob": ("UPDATE clients SET client_name = x'41'", ["clients", "list"], "not text"),
    # JSON of another shape than an array of text: read, before, as the characters of a string
    "redirect-uris-a-string": (
        """UPDATE clients SET redirect_uris = '"http://127.0.0.1:9/cb"'""",
        ["clients", "list"],
        "not an array of text",
    ),
    "client-metadata-not-json": (
        "UPDATE clients SET metadata = '{not json'",
        ["clients", "list"],
        "metadata that is not the JSON text",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_kavach_database_is_one_line(tmp_path: Path, case: str) -> None:
    damage, command, expect = DAMAGE[case]
    path = tmp_path / "kavach.db"
    _kavach_db(path)
    _sql(path, damage)
    line = bad([*command, "--db", str(path)], expect)
    assert "damaged" in line and "not a usable kavachOS database" in line


T0 = 1_700_000_000
GRANT = Grant("g1", "alice", "c1", ("https://mcp.example.com/mcp",), ("tools:list",), T0, T0 + 86_400, 0, "r0",
              T0 + 3600, T0)  # fmt: skip
CODE = AuthorizationCode("h1", "c1", "https://app.example/cb", True, "challenge", GRANT.resources, GRANT.scopes,
                         "alice", "g1", T0, T0 + 60)  # fmt: skip


def _row_with(fields: tuple[str, ...], row: tuple[object, ...], field: str, value: object) -> list[object]:
    """``row`` with ``value`` in place of ``field``'s."""
    return [value if name == field else stored for name, stored in zip(fields, row, strict=True)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("scopes", "tools:list"), ("scopes", [1, 2]), ("resources", [None]), ("scopes", {"tools:list": True})],
    ids=["a-string", "numbers", "a-null", "an-object"],
)
def test_the_codec_reads_an_array_only_as_an_array_of_text(field: str, value: object) -> None:
    """A tuple field holding anything but an array of text is damage (``ValueError``), in a JSON
    record (Redis) and in a row, as a list (PostgreSQL) or JSON text (SQLite); a JSON string read
    as the tuple of its characters, or numbers and ``None`` read as they are, failed far later."""
    record = {**GRANTS.to_dict(GRANT), field: value}
    with pytest.raises(ValueError, match=f"{field} = .*, not an array of text"):
        GRANTS.from_dict(record)
    for stored in [json.dumps(value)] + ([value] if isinstance(value, list) else []):  # SQLite's, PostgreSQL's
        with pytest.raises(ValueError, match="not an array of text"):
            GRANTS.from_row(_row_with(GRANTS.fields, GRANTS.to_row(GRANT), field, stored))


@pytest.mark.parametrize(
    ("stored", "problem"),
    [("LS0t!LS0", "that is not canonical"), ("LS0tLS0=", "that is not canonical"), ("LS0tLS1", "that is not canonical"),
     (45, "of type int, not base64url text"), (["LS0t"], "of type list, not base64url text")],
    ids=["a-stray-character", "padding", "stray-bits", "a-number", "an-array"],
)  # fmt: skip
def test_the_codec_reads_bytes_only_as_canonical_base64url(stored: object, problem: str) -> None:
    """A ``bytes`` field (a signing key's PEM, in a JSON record: Redis) is read back as it was
    written, unpadded canonical base64url, or it is damage (``ValueError``) whose message names
    the field and not its value: a lenient decoder would skip a stray character and read a value
    that was never written."""
    key = SigningKey("k1", "ES256", b"-----", T0, T0 + 60, T0 + 120)
    assert KEYS.to_dict(key)["private_pem"] == "LS0tLS0"
    assert KEYS.from_dict(KEYS.to_dict(key)) == key
    with pytest.raises(ValueError, match=f"^stored SigningKey has private_pem {problem}") as caught:
        KEYS.from_dict({**KEYS.to_dict(key), "private_pem": stored})
    assert "LS0" not in str(caught.value)


@pytest.mark.parametrize(
    "metadata", ["{not json", "[1]", '"text"', "null", ""], ids=["not-json", "an-array", "a-string", "null", "empty"]
)
def test_the_codec_reads_a_clients_metadata_only_as_the_json_of_an_object(metadata: str) -> None:
    """A client's ``metadata`` (echoed by registration, read by the consent page) that is not the
    JSON text of an object is damage, in a JSON record and in a row."""
    registered = Client("c1", ("https://app.example/cb",))
    with pytest.raises(ValueError, match="metadata that is not the JSON text of an object"):
        CLIENTS.from_dict({**CLIENTS.to_dict(registered), "metadata": metadata})
    with pytest.raises(ValueError, match="metadata that is not the JSON text of an object"):
        CLIENTS.from_row(_row_with(CLIENTS.fields, CLIENTS.to_row(registered), "metadata", metadata))
    assert CLIENTS.from_dict(CLIENTS.to_dict(registered)) == registered


@pytest.mark.parametrize(
    ("damage", "effect"),
    [
        ("UPDATE grants SET scopes = '[1, 2]'", fx.GetGrant("g1")),
        ("""UPDATE grants SET resources = '"https://mcp.example.com/mcp"'""", fx.ListGrants()),
        ("UPDATE grants SET scopes = '[null]'", fx.RotateRefresh("g1", 0, "r0", "r1", T0 + 10, 10, T0 + 3600)),
        ("UPDATE codes SET scopes = '{\"tools:list\": 1}'", fx.GetCode("h1")),
        ("UPDATE clients SET metadata = '{not json'", fx.GetClient("c1")),
        ("UPDATE clients SET metadata = '[]'", fx.ListClients()),
    ],
    ids=["numbers", "a-string", "a-null-met-by-a-rotation", "an-object", "metadata-not-json", "metadata-an-array"],
)
def test_a_damaged_array_or_metadata_is_damage_and_changes_nothing(
    tmp_path: Path, damage: str, effect: fx.Effect
) -> None:
    """A row whose array or client metadata does not read: :class:`DamagedDatabaseError` (503)
    for the effect that meets it, never a record that fails later in the core (500); a rotation
    meeting it neither rotates nor revokes the family."""
    path = tmp_path / "k.db"
    with SQLiteStore(path) as store:
        store.perform(fx.PutClient(Client("c1", ("https://app.example/cb",))))
        store.perform(fx.PutCode(CODE))
        assert store.perform(fx.ConsumeCode("h1", GRANT)) is True
        _sql(path, damage)
        with pytest.raises(DamagedDatabaseError, match="cannot be read") as caught:
            store.perform(effect)
        assert isinstance(caught.value, StoreUnavailable)
    db = sqlite3.connect(path)
    try:
        family = db.execute("SELECT refresh_generation, refresh_hash, revoked_at FROM grants").fetchall()
    finally:
        db.close()
    assert family == [(0, "r0", None)]


def test_only_a_foreign_kavach_users_table_is_one_line_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    _sql(path, "CREATE TABLE kavach_users (x)")
    before = _files(tmp_path)
    bad(["users", "add", "bob", "--password-stdin", "--db", str(path)], "kavach_users lacks", stdin="fifteen chars!!\n")
    assert _files(tmp_path) == before


def test_damage_after_opening_is_reported_as_damage(tmp_path: Path) -> None:
    """A table dropped, or a value rewritten, while the store is open: the effect that meets it
    raises :class:`DamagedDatabaseError` (a :class:`StoreUnavailable`, so endpoints answer 503)."""
    path = tmp_path / "k.db"
    with SQLiteStore(path) as store:
        store.perform(fx.SwapSigningKeys((), ()))
        assert store.perform(fx.ListGrants()) == ()
        _sql(path, "DROP TABLE grants")
        with pytest.raises(DamagedDatabaseError, match="table grants is missing") as caught:
            store.perform(fx.ListGrants())
        assert isinstance(caught.value, StoreUnavailable)
    path = tmp_path / "keys.db"
    ok(["keys", "rotate", "--db", str(path)])
    with SQLiteStore(path) as store:
        assert len(store.perform(fx.GetSigningKeys())) == 1
        _sql(path, "UPDATE signing_keys SET private_pem = 'garbage'")
        with pytest.raises(DamagedDatabaseError, match="signing_keys"):
            store.perform(fx.GetSigningKeys())


def test_sqlite_users_checks_its_table(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    _sql(path, "CREATE TABLE kavach_users (username TEXT)")
    with pytest.raises(sqlite3.DatabaseError, match="kavach_users lacks password_hash, updated_at"):
        SQLiteUsers(str(path))


# -- 3 and 4. --db paths ------------------------------------------------------------------------------------------


def test_a_file_name_too_long_is_one_line(tmp_path: Path) -> None:
    bad(["keys", "list", "--db", "a" * 300], "File name too long", cwd=tmp_path)
    assert _files(tmp_path) == {}
    with pytest.raises(SQLiteStoreError, match="File name too long"):
        SQLiteStore(tmp_path / ("b" * 300))


@pytest.mark.parametrize("flag", ["--db", "--store"])
def test_a_path_ending_in_a_separator_is_refused(tmp_path: Path, flag: str) -> None:
    where = "newdir/" if flag == "--db" else "sqlite:///newdir/"
    bad(["keys", "list", flag, where], "names a directory", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "existing").mkdir()
    bad(["keys", "list", flag, where.replace("newdir", "existing")], "names a directory", cwd=tmp_path)
    assert list((tmp_path / "existing").iterdir()) == []


def test_each_path_that_names_no_database_file_is_refused_in_one_whole_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's refusal of a path names the path and the one reason, whole: the separator it
    ends in, a directory, a file that is not a regular one, a missing parent directory, and what
    ``stat`` said of a path it cannot look up (its ``strerror``, or the ``ValueError``'s words).
    None of them leaves a file behind."""
    fifo = str(tmp_path / "fifo.db")
    os.mkfifo(fifo)
    monkeypatch.chdir(tmp_path)
    ending, parent = "newdir" + os.sep, str(tmp_path / "missing")
    missing = os.path.join(parent, "k.db")
    too_long, nul = str(tmp_path / ("b" * 300)), str(tmp_path / "a\x00.db")
    refusals = {
        ending: f"cannot use {ending!r} as a SQLite database: ending in {os.sep!r}, it names a directory",
        str(tmp_path): f"cannot open SQLite database {str(tmp_path)!r}: it is a directory",
        fifo: f"cannot open SQLite database {fifo!r}: it is not a regular file",
        missing: f"cannot create SQLite database {missing!r}: directory {parent!r} does not exist",
        too_long: f"cannot open SQLite database {too_long!r}: File name too long",
        nul: f"cannot open SQLite database {nul!r}: embedded null byte",
    }
    for path, refusal in refusals.items():
        with pytest.raises(SQLiteStoreError) as caught:
            SQLiteStore(path)
        assert str(caught.value) == refusal
    assert [p.name for p in tmp_path.iterdir()] == ["fifo.db"]


# -- 5. store URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["SQLITE", "Sqlite"])
def test_the_sqlite_scheme_is_case_insensitive(tmp_path: Path, scheme: str) -> None:
    ok(["keys", "rotate", "--store", f"{scheme}:///x.db"], cwd=tmp_path)
    assert "ES256" in ok(["keys", "list", "--db", "x.db"], cwd=tmp_path)


def test_a_redis_database_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    prefix = services.redis_prefix(tmp_path)  # dropped at the end of the session, had anything been written
    url = f"redis://127.0.0.1:6379/abc?prefix={prefix}"
    bad(["users", "list", "--store", url], "'abc' in the URL must be a number")


@pytest.mark.parametrize(
    ("url", "left", "taken"),
    [
        ("unix:///run/redis.sock?prefix=app:", "unix:///run/redis.sock", {"prefix": "app:"}),
        ("unix:///run/redis.sock?db=2&prefix=app:", "unix:///run/redis.sock?db=2", {"prefix": "app:"}),
        ("redis://:pw@127.0.0.1:6379/0?prefix=a%3Ab&x=1#f", "redis://:pw@127.0.0.1:6379/0?x=1#f", {"prefix": "a:b"}),
        ("redis://127.0.0.1/0?socket_timeout=2", "redis://127.0.0.1/0?socket_timeout=2", {}),
        ("postgresql:///test?host=/run/pg&schema=s", "postgresql:///test?host=%2Frun%2Fpg", {"schema": "s"}),
        ("postgresql://?schema=s&max_connections=3", "postgresql://", {"schema": "s", "max_connections": "3"}),
        ("postgres://u@h/db?options=-c%20a%3Db&schema=s", "postgres://u@h/db?options=-c%20a%3Db", {"schema": "s"}),
    ],
)
def test_the_stores_own_parameters_leave_the_rest_of_the_url_as_written(
    url: str, left: str, taken: dict[str, str]
) -> None:
    """A store's own query parameters (``schema``, the pool bounds, ``prefix``) are taken out of the
    URL and nothing else changes but the query: an empty authority keeps its ``//`` (a Redis Unix
    socket, PostgreSQL on a socket directory), a fragment stays, and the query left is escaped
    with ``%20`` (libpq keeps a ``+``)."""
    from kavach.stores._urls import take_parameters

    assert take_parameters(url, ("prefix", "schema", "max_connections"), {}) == (left, taken)


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("postgresql://[::1/test", "Invalid IPv6 URL"),
        ("redis://[::1/0", "Invalid IPv6 URL"),
        ("postgresql://127.0.0.1:abc/test", "port 'abc' is not a number"),
        ("postgresql://127.0.0.1:99999/test", "port '99999' is not a number"),
        ("postgresql://127.0.0.1:PORT/test?bogus=1", "invalid URI query parameter"),
        # an empty or repeated namespace silently meant the default one, or the first
        (
            "postgresql://127.0.0.1:PORT/test?schema=",
            "schema must be given once and not empty (leave it out for kavach)",
        ),
        ("postgresql://127.0.0.1:PORT/test?schema=a&schema=b", "schema must be given once and not empty"),
        (
            "postgresql://127.0.0.1:PORT/test?max_connections=",
            "max_connections must be given once and not empty (leave it out for 10)",
        ),
        (
            "postgresql://127.0.0.1:PORT/test?min_connections=1&min_connections=2",
            "min_connections must be given once and not empty (leave it out for 1)",
        ),
        ("postgresql://127.0.0.1:PORT/test?max_connections=ten", "max_connections 'ten' is not a whole number"),
        ("postgresql://127.0.0.1:PORT/test?min_connections=-1", "min_connections '-1' is not a whole number"),
        ("postgresql://127.0.0.1:PORT/test?max_connections=0", "max_connections >= 1 (here 1 and 0)"),
        ("postgresql://127.0.0.1:PORT/test?min_connections=5&max_connections=2", "<= max_connections and"),
        ("redis://127.0.0.1:PORT/0?prefix=", "prefix must be given once and not empty (leave it out for kavach:)"),
        ("redis://127.0.0.1:PORT/0?prefix=a:&prefix=b:", "prefix must be given once and not empty"),
        # redis-py hands a parameter it does not know to the connection: a TypeError at first use
        ("redis://127.0.0.1:PORT/0?bogus=1&socket_timeout=2&x=y", "no Redis connection takes: bogus, x"),
        ("unix:///tmp/kavach-no-such.sock?bogus=1", "store unix:///tmp/kavach-no-such.sock?bogus=1: the Redis URL"),
        # psycopg ignored a malformed one, and the store's own default replaced a well-formed one
        ("postgresql://127.0.0.1:PORT/test?connect_timeout=abc", "connect_timeout 'abc' is not a whole number"),
        # libpq keywords made an SQLite file named after them, password included
        ("host=127.0.0.1 port=PORT password=hunter2 dbname=test", "postgresql:// URL, not as libpq keywords"),
        # libpq ends the user info at the first "@": the rest of the password was shown as the host
        ("postgresql://u:hunter2@horse@127.0.0.1:PORT/test", "password of a PostgreSQL URL holds an unescaped '@'"),
        ("POSTGRES://u@x:p@127.0.0.1:PORT/test", "password of a PostgreSQL URL holds an unescaped '@'"),
        ("postgresql://u:se?cr@et@127.0.0.1:PORT/test", "password of a PostgreSQL URL holds an unescaped '@'"),
        ("postgresql://u:Tr0ub#x@horse@127.0.0.1:PORT/test", "password of a PostgreSQL URL holds an unescaped '@'"),
    ],
)
def test_malformed_store_urls_fail_at_once(tmp_path: Path, url: str, expect: str) -> None:
    """Refused from the URL alone, before any connection (so nothing waits for a connection
    pool): a listener on the URL's port (``PORT``) is never connected to, and no file is made."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        bad(["keys", "list", "--store", url.replace("PORT", str(listener.getsockname()[1]))], expect, cwd=tmp_path)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # the kernel queues every connection made, answered or not
            listener.accept()
    assert _files(tmp_path) == {}


@pytest.mark.parametrize("url", ["postgresql://u:hunter2secret@[::1/test", "redis://u:hunter2secret@[::1/0"])
def test_a_malformed_url_keeps_its_password_out_of_the_message(url: str) -> None:
    line = bad(["users", "list", "--store", url], "Invalid IPv6 URL")
    assert "hunter2secret" not in line and "u:***@" in line


def test_a_password_with_an_unescaped_at_sign_stays_out_of_the_message() -> None:
    """libpq would take what follows the password's "@" for the host and name it in its error;
    the URL is refused first, and no part of the password is shown."""
    for password in ("Tr0ub4dor@horse-battery", "Tr0ub4dor#x@horse-battery", "Tr0ub4dor?x@horse-battery"):
        line = bad(["users", "list", "--store", f"postgresql://u:{password}@127.0.0.1:5432/test"], "%40")
        assert "Tr0ub4dor" not in line and "horse-battery" not in line, line
    from kavach.stores.postgres import PostgresStore

    escaped = PostgresStore("postgresql://u:Tr0ub4dor%40horse-battery@127.0.0.1:5432/test", min_connections=0)
    escaped.close()  # taken as written: no connection is made to a pool of no connections


def test_a_postgresql_connection_failure_keeps_its_cause() -> None:
    services.require("postgres")
    bad(["keys", "list", "--store", "postgresql://127.0.0.1:5432/kavach_no_such_database"], "does not exist")
    bad(["keys", "list", "--store", "postgresql://nosuchhost.invalid/test"], "failed to resolve host")


@pytest.mark.parametrize(("given", "used"), [(None, 5), ("30", 30), ("1", 2), ("0", 5), (" 7 ", 7)])
def test_a_postgresql_url_sets_the_connect_timeout(given: str | None, used: int) -> None:
    """The URL's ``connect_timeout`` (read as libpq reads it) is the one each connection gets; the
    store's default only when the URL sets none. No connection is made here."""
    from kavach.stores.postgres import PostgresStore

    query = "" if given is None else f"?connect_timeout={given}"
    store = PostgresStore(f"postgresql://127.0.0.1:5432/test{query}", min_connections=0, store_key=STORE_KEY)
    assert store._pool_args["kwargs"]["connect_timeout"] == used
    explicit = PostgresStore(f"postgresql://127.0.0.1:5432/test{query}", connect_timeout=9, store_key=STORE_KEY)
    assert explicit._pool_args["kwargs"]["connect_timeout"] == 9


@pytest.mark.parametrize(
    ("query", "explicit", "sizes"),
    [
        ("", {}, (1, 10)),
        ("?min_connections=0&max_connections=3", {}, (0, 3)),
        ("?schema=k_pool&max_connections=20&sslmode=disable", {}, (1, 20)),
        ("?min_connections=4&max_connections=4", {"min_connections": 2}, (2, 4)),
        ("?max_connections=4", {"max_connections": 6}, (1, 6)),
    ],
)
def test_a_postgresql_url_sizes_the_pools(query: str, explicit: dict[str, int], sizes: tuple[int, int]) -> None:
    """The URL's ``min_connections``/``max_connections`` size the pools, the constructor's own
    arguments win over them, and they (with ``schema``) are taken out of what libpq is given,
    while libpq's own parameters stay. No connection is made here."""
    from kavach.stores.postgres import PostgresStore

    store = PostgresStore(f"postgresql://127.0.0.1:5432/test{query}", store_key=STORE_KEY, **explicit)
    assert (store._pool_args["min_size"], store._pool_args["max_size"]) == sizes
    assert "connections" not in store.dsn and "schema" not in store.dsn
    assert ("sslmode=disable" in store.dsn) == ("sslmode" in query)
    assert store.schema == ("k_pool" if "schema" in query else "kavach")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2%zzsecret@127.0.0.1:5432/test",  # the password in the user info
        "postgresql://u@127.0.0.1:5432/test?password=hunter2%zzsecret",  # ... or as a query parameter
        "postgresql://u@127.0.0.1:5432/test?sslmode=disable&password = hunter2%zzsecret",
    ],
)
def test_a_password_libpq_quotes_in_its_refusal_is_hidden(url: str) -> None:
    """libpq names the token it cannot read ("invalid percent-encoded token"), here the password
    itself: the store's refusal shows ``***`` in its place. No connection is made."""
    from kavach.stores.postgres import PostgresStore, PostgresStoreError

    with pytest.raises(PostgresStoreError) as refused:
        PostgresStore(url, min_connections=0)
    message = str(refused.value)
    assert "invalid percent-encoded token" in message and "***" in message, message
    assert "hunter2" not in message and "secret" not in message, message


@pytest.mark.parametrize(
    ("query", "options"),
    [("", {"max_connections": 0}), ("", {"max_connections": -1}), ("?max_connections=0", {})],
)
def test_a_redis_pool_of_no_connections_is_refused_at_once(query: str, options: dict[str, int]) -> None:
    """A bound below one connection cannot serve a request: refused when the store is made, as on
    PostgreSQL (``max_connections >= 1``), neither taken for redis-py's default (it reads 0 as no
    bound given) nor failing at the first request with an error that is no :class:`StoreUnavailable`."""
    from kavach.stores.redis import RedisStore

    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        RedisStore(f"redis://127.0.0.1:6379/0{query}", timeout=1, **options).close()


def test_a_redis_ttl_slack_below_zero_is_refused_and_zero_is_taken() -> None:
    """``ttl_slack`` is added to every TTL: a negative one would let a key expire before its
    record does, so it is refused at once; no slack at all is a valid choice. No connection is made."""
    from kavach.stores.redis import RedisStore

    with pytest.raises(ValueError, match="ttl_slack must be >= 0 seconds"):
        RedisStore("redis://127.0.0.1:6379/0", ttl_slack=-1)
    store = RedisStore("redis://127.0.0.1:6379/0", ttl_slack=0)
    assert store.ttl_slack == 0 and store._ttl(30) == 31 and store._ttl(-5) == 1
    store.close()


@pytest.mark.parametrize(
    ("query", "explicit", "refused"),
    [
        ("", {"min_connections": 0, "max_connections": 0}, "(here 0 and 0)"),
        ("?min_connections=0&max_connections=0", {}, "(here 0 and 0)"),
        ("", {"min_connections": -1}, "(here -1 and 10)"),
        ("?max_connections=3", {"min_connections": 4}, "(here 4 and 3)"),
        ("", {"min_connections": 0, "max_connections": 1}, None),
        ("?min_connections=1&max_connections=1", {}, None),
        ("?max_connections=9999", {}, None),
        ("?max_connections=10000", {}, "max_connections '10000' is not a whole number from 0 to 9999"),
    ],
)
def test_postgresql_pool_bounds_need_a_connection_at_most(
    query: str, explicit: dict[str, int], refused: str | None
) -> None:
    """Each pool opens between 0 and ``max_connections`` connections, and ``max_connections`` is at
    least 1 (a pool of none serves nothing), whether the bounds come from the constructor or the
    URL: a pool of exactly one connection is taken. No connection is made here."""
    from kavach.stores.postgres import PostgresStore, PostgresStoreError

    url = f"postgresql://127.0.0.1:5432/test{query}"
    if refused is None:
        store = PostgresStore(url, store_key=STORE_KEY, **explicit)
        assert store._pool_args["max_size"] >= 1
        store.close()
    else:
        with pytest.raises(PostgresStoreError) as error:
            PostgresStore(url, store_key=STORE_KEY, **explicit)
        assert refused in str(error.value)


def test_a_postgresql_pool_timeout_keeps_its_cause_on_the_event_loop() -> None:
    from kavach.stores.postgres import PostgresStore

    services.require("postgres")
    store = PostgresStore("postgresql://127.0.0.1:5432/kavach_no_such_database", timeout=1, min_connections=0)

    async def attempt() -> None:
        try:
            await store.aperform(fx.GetSigningKeys())
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailable, match='database "kavach_no_such_database" does not exist'):
        asyncio.run(attempt())


def test_postgresql_and_redis_schemes_are_case_insensitive(tmp_path: Path) -> None:
    from kavach.stores.postgres import PostgresStore
    from kavach.stores.redis import RedisStore

    services.require("postgres")
    services.require("redis")
    pg_url = services.POSTGRES_URL.replace("postgresql://", "POSTGRESQL://", 1)
    pg = PostgresStore(pg_url, schema=services.postgres_schema(tmp_path), min_connections=0)
    try:
        assert pg.perform(fx.GetSigningKeys()) == ()
    finally:
        pg.close()
    rd = RedisStore(services.REDIS_URL.replace("redis://", "REDIS://", 1), prefix=services.redis_prefix(tmp_path))
    try:
        assert rd.perform(fx.GetSigningKeys()) == ()
    finally:
        rd.close()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_commands_that_only_read_or_change_refuse_a_location_with_no_store(kind: str, tmp_path: Path) -> None:
    """A mistyped schema or prefix is an error, not a new empty store with a fresh server secret:
    nothing is created there. A command that creates (``keys rotate``) makes the store, after
    which the others use it."""
    import redis

    services.require(kind)
    if kind == "postgres":
        schema = services.postgres_schema(tmp_path)
        url, where = f"{services.POSTGRES_URL}?schema={schema}", f"no kavach store in schema {schema} of "

        def created() -> bool:
            import psycopg

            with psycopg.connect(services.POSTGRES_URL) as db:
                return bool(db.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()[0])
    else:
        prefix = services.redis_prefix(tmp_path)
        url, where = f"{services.REDIS_URL}?prefix={prefix}", f"no kavach store in prefix '{prefix}' of "

        def created() -> bool:
            return any(redis.Redis.from_url(services.REDIS_URL).scan_iter(match=prefix + "*"))

    for command in (
        ["users", "list"],
        ["clients", "list"],
        ["grants", "list"],
        ["keys", "list"],
        ["users", "remove", "alice"],
        ["clients", "show", "x"],
        ["grants", "revoke", "--subject", "a"],
    ):
        bad([*command, "--store", url], where)
        assert not created(), command
    ok(["keys", "rotate", "--store", url])
    assert created() and "ES256" in ok(["keys", "list", "--store", url])
    ok(["users", "list", "--store", url])  # exits 0 now that the store exists


def test_a_new_database_file_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    """It holds the signing keys and the server secret in the clear: mode 0600 from the start
    (whatever the umask lets others read), and SQLite's -wal and -shm files follow it."""
    path = tmp_path / "kavach.db"
    ok(["keys", "rotate", "--db", str(path)])
    store = SQLiteStore(str(path))
    try:
        store.perform(fx.GetSigningKeys())
        for name in ("kavach.db", "kavach.db-wal", "kavach.db-shm"):
            mode = (tmp_path / name).stat().st_mode & 0o777
            assert mode == 0o600, (name, oct(mode))
    finally:
        store.close()


def test_a_file_the_users_table_makes_first_is_the_owners_alone_too(tmp_path: Path) -> None:
    """The README builds ``SQLiteUsers`` before ``SQLiteStore`` on one file: whichever makes the
    file, it is 0600 from the start (password hashes, then keys and the secret)."""
    from kavach.users import SQLiteUsers, Users

    path = tmp_path / "kavach.db"
    users = Users(SQLiteUsers(str(path)), log_n=10)
    assert path.stat().st_mode & 0o777 == 0o600
    users.add("alice", "a long enough password")
    with SQLiteStore(str(path)) as store:
        store.perform(fx.GetSigningKeys())
    assert path.stat().st_mode & 0o777 == 0o600 and users.authenticate("alice", "a long enough password") == "alice"


def test_a_database_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "kavach.db"
    ok(["keys", "rotate", "--db", str(path)])
    path.chmod(0o644)
    proc = CLI.run(["keys", "list", "--db", str(path)])
    assert proc.returncode == 0 and "ES256" in proc.stdout
    assert "can be read by other users (mode 644)" in proc.stderr and "chmod 600" in proc.stderr
    path.chmod(0o600)
    assert CLI.run(["keys", "list", "--db", str(path)]).stderr == ""


def test_a_database_that_cannot_be_made_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is created (0600) before SQLite opens it; when opening then fails, the empty file
    made for it is removed, so a refused command leaves nothing behind."""
    path = tmp_path / "new.db"

    def failing(self: SQLiteStore) -> None:
        assert path.exists() and path.stat().st_size == 0
        raise SQLiteStoreError("refused")

    monkeypatch.setattr(SQLiteStore, "_open", failing)
    with pytest.raises(SQLiteStoreError, match="refused"):
        SQLiteStore(str(path))
    assert not path.exists()


def test_a_new_database_through_a_dangling_symbolic_link_is_made_0600_too(tmp_path: Path) -> None:
    (tmp_path / "link.db").symlink_to(tmp_path / "target.db")
    store = SQLiteStore(str(tmp_path / "link.db"))
    try:
        store.perform(fx.GetSigningKeys())
    finally:
        store.close()
    assert (tmp_path / "target.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "link.db").is_symlink()


def test_store_arguments_out_of_range_are_refused_before_any_file_is_made(tmp_path: Path) -> None:
    """A negative ``busy_timeout`` or a pool of no connections is a ``ValueError`` raised before
    the file is created; the bounds themselves (no waiting, one connection) are accepted."""
    path = tmp_path / "k.db"
    with pytest.raises(ValueError, match=r"^busy_timeout must be >= 0 seconds$"):
        SQLiteStore(str(path), busy_timeout=-0.001)
    with pytest.raises(ValueError, match=r"^max_connections must be >= 1$"):
        SQLiteStore(str(path), max_connections=0)
    assert not path.exists()
    with SQLiteStore(str(path), busy_timeout=0, max_connections=1) as store:
        assert store.perform(fx.GetSigningKeys()) == ()


def test_a_sqlite_uri_is_refused_and_makes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file:`` names a SQLite URI, not a file: refused with one line before anything is created
    (SQLite would otherwise read it as a URI and the check of the path would look elsewhere)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SQLiteStoreError, match=r"^pass a filesystem path, not a SQLite URI$"):
        SQLiteStore("file:k.db")
    assert list(tmp_path.iterdir()) == []


def test_a_closed_store_refuses_every_call(tmp_path: Path) -> None:
    """After ``close`` every call raises :class:`SQLiteStoreError` ("closed") instead of opening a
    new connection; closing again is harmless."""
    store = SQLiteStore(str(tmp_path / "k.db"))
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    for call in (lambda: store.perform(fx.GetSigningKeys()), lambda: store.purge(0), lambda: store.schema_version):
        with pytest.raises(SQLiteStoreError, match=r"^the store is closed$"):
            call()
    store.close()


def test_an_empty_file_another_connection_holds_locked_is_kept(tmp_path: Path) -> None:
    """Only a file this store itself created is removed when opening fails: an empty file that
    was already there (here held under an exclusive lock) is reported unavailable and left.

    Also pins that a file locked past ``busy_timeout`` when the store first connects is
    :class:`StoreUnavailable` ("is locked"), as it is later in opening, not a refusal of the file."""
    path = tmp_path / "k.db"
    path.touch(mode=0o600)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="is locked"):
            SQLiteStore(str(path), busy_timeout=0)
        assert path.exists()
    finally:
        holder.close()
    assert path.exists() and path.stat().st_size == 0


@pytest.mark.parametrize("mode", [0o601, 0o610, 0o640, 0o604])
def test_any_access_for_group_or_others_is_warned_about(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Any permission bit for the group or for others (not only read) gets the chmod 600 warning."""
    path = tmp_path / "k.db"
    SQLiteStore(str(path)).close()
    path.chmod(mode)
    with caplog.at_level("WARNING", logger="kavach.stores.sqlite"):
        SQLiteStore(str(path)).close()
    assert f"(mode {mode:o})" in caplog.text and "chmod 600" in caplog.text
