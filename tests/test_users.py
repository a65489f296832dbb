"""Local users (:mod:`kavach.users`): the stored hash format (RFC 7914 scrypt), the limits of a
username and a password (NIST SP 800-63B-4 §3.1.1.2), and the scrypt work of a failed sign-in.

The neighbouring tests in test_adapter_shared.py cover signing in, stamps and upgrades; these pin
the edges of each rule, in process and with ``log_n=10`` so each hash is quick.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from kavach.users import (
    MAX_PASSWORD,
    MAX_USERNAME,
    MIN_PASSWORD,
    MemoryUsers,
    PasswordError,
    PostgresUsers,
    RedisUsers,
    SQLiteUsers,
    UsernameError,
    Users,
    account_name,
    credential_stamp,
    hash_password,
    valid_password,
    valid_username,
    verify_password,
)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_hash_is_scrypt_with_its_settings_a_128_bit_salt_and_a_256_bit_key() -> None:
    """``scrypt$<log2 n>$<r>$<p>$<salt>$<key>``: the key is RFC 7914 scrypt of the password's
    UTF-8 (NFKC) under the salt and the settings written before it, base64url without padding."""
    encoded = hash_password("a long enough password", log_n=10)
    tag, log_n, r, p, salt, key = encoded.split("$")
    assert (tag, log_n, r, p) == ("scrypt", "10", "8", "3")
    assert "=" not in salt + key
    salt_bytes, key_bytes = _unb64(salt), _unb64(key)
    assert len(salt_bytes) == 16, "a 128-bit salt"
    assert len(key_bytes) == 32
    again = Scrypt(salt=salt_bytes, length=32, n=2**10, r=8, p=3).derive(b"a long enough password")
    assert again == key_bytes


@pytest.mark.parametrize("log_n", [9, 21])
def test_hash_settings_outside_what_is_ever_checked_are_refused(log_n: int) -> None:
    """``log_n`` 10 to 20 only: a hash made outside the range could never be verified (a stored
    one outside it is treated as damaged)."""
    with pytest.raises(ValueError, match="between 10 and 20"):
        hash_password("a long enough password", log_n=log_n)
    with pytest.raises(ValueError, match="between 10 and 20"):
        Users(MemoryUsers(), log_n=log_n).add("alice", "a long enough password")


def test_the_lowest_hash_setting_is_made_and_verified() -> None:
    low = hash_password("a long enough password", log_n=10)
    assert low.startswith("scrypt$10$") and verify_password("a long enough password", low) is True


def test_verify_password_answers_a_boolean() -> None:
    encoded = hash_password("a long enough password", log_n=10)
    assert verify_password("a long enough password", encoded) is True
    assert verify_password("another password", encoded) is False
    assert verify_password("a long enough password", "not a hash") is False


@pytest.mark.parametrize(
    ("log_n", "r", "p", "opens"),
    [
        (10, 1, 1, True),
        (10, 32, 1, True),
        (10, 1, 16, True),
        (9, 1, 1, False),
        (10, 0, 1, False),
        (10, 33, 1, False),
        (10, 1, 0, False),
        (10, 1, 17, False),
    ],
)
def test_stored_settings_are_checked_within_bounds_only(log_n: int, r: int, p: int, opens: bool) -> None:
    """A stored hash asks for scrypt work only within ``log_n`` 10..20, ``r`` 1..32 and ``p`` 1..16
    (a damaged record cannot ask for unbounded work); one made with such settings verifies at the
    ends, one outside them never, even with the right key."""
    salt = bytes(range(16))
    key = Scrypt(salt=salt, length=32, n=2**log_n, r=r or 1, p=p or 1).derive(b"pw")
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    assert verify_password("pw", f"scrypt${log_n}${r}${p}${b64(salt)}${b64(key)}") is opens


def test_a_damaged_stored_hash_is_no_match_and_no_error() -> None:
    """A salt that is not base64, a part too many or a key cut short: ``False``, never an exception."""
    encoded = hash_password("a long enough password", log_n=10)
    parts = encoded.split("$")
    bad_salt = "$".join([*parts[:4], "A", parts[5]])  # one base64 character: not a whole byte
    for damaged in (bad_salt, encoded + "$more", encoded[:-4]):
        assert verify_password("a long enough password", damaged) is False, damaged


def test_a_stored_hash_is_read_as_canonical_base64url_only() -> None:
    """The salt and the key are read back as they were written, unpadded canonical base64url
    (kavach_core.opaque.b64url_decode): a stored hash with a character slipped into its salt, padding,
    or a last character with stray bits is damaged, not the hash it resembles (a lenient decoder
    skips the stray character and reads the same salt)."""
    password = "a long enough password"
    encoded = hash_password(password, log_n=10)
    assert verify_password(password, encoded) is True
    parts = encoded.split("$")
    salt, key = parts[4], parts[5]
    stray_bits = key[:-1] + chr(ord(key[-1]) + 1)  # 43 characters: the last one's 2 unused bits set
    for damaged_salt, damaged_key in ((salt[:5] + "!" + salt[5:], key), (salt + "==", key), (salt, stray_bits)):
        damaged = "$".join([*parts[:4], damaged_salt, damaged_key])
        assert verify_password(password, damaged) is False, damaged


def test_a_username_has_1_to_128_characters_once_normalised() -> None:
    assert MAX_USERNAME == 128
    assert valid_username("x" * 128) == "x" * 128
    assert valid_username(" " + "x" * 128 + " ") == "x" * 128, "measured once stripped"
    assert account_name("x" * 128) == "x" * 128
    for name in ("", "   ", "x" * 129, "\uff41" * 129):
        with pytest.raises(UsernameError, match="1 to 128"):
            valid_username(name)
        assert account_name(name) is None
    users = Users(MemoryUsers(), log_n=10)
    users.add("y" * 128, "a long enough password")
    assert users.authenticate("y" * 128, "a long enough password") == "y" * 128
    with pytest.raises(UsernameError):
        users.add("y" * 129, "a long enough password")


def test_a_password_has_15_to_1024_characters_counted_as_typed() -> None:
    """NIST SP 800-63B-4 §3.1.1.2: at least 15 characters for a password used alone; at most
    1024 here, counted as typed (a longer text is refused before it is normalised)."""
    assert (MIN_PASSWORD, MAX_PASSWORD) == (15, 1024)
    assert valid_password("x" * 1024) == "x" * 1024
    assert valid_password("x" * 15) == "x" * 15
    for password in ("x" * 1025, "x" * 14, "\ufb01" * 1025):  # a ligature: two letters once normalised
        with pytest.raises(PasswordError, match="15 to 1024"):
            valid_password(password)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scrypt work (N * r * p, RFC 7914 §2) of every ``Scrypt`` that :mod:`kavach.users`
    makes from here on, in order; the real ``Scrypt`` still does the work."""
    import kavach.users as users_module

    done: list[int] = []
    real = users_module.Scrypt

    def counted(**kwargs: Any) -> Any:
        done.append(kwargs["n"] * kwargs["r"] * kwargs["p"])
        return real(**kwargs)

    monkeypatch.setattr(users_module, "Scrypt", counted)
    return done


def test_a_sign_in_with_a_password_over_the_limit_runs_no_scrypt(work: list[int]) -> None:
    """A sign-in with more than 1024 characters is refused before any hashing (a huge text would be
    a cheap way to spend the server's time); 1024 characters still sign in."""
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "x" * 1024)
    work.clear()  # the hash made for alice
    assert users.sign_in("alice", "x" * 1025) is None and work == []
    assert users.authenticate("alice", "x" * 1024) == "alice"


def test_a_hash_at_the_top_of_the_range_is_made(monkeypatch: Any) -> None:
    """``log_n`` 20 is still in the range, to make and to check (scrypt itself replaced by a
    recorder: 2**20 with r = 8 would take a gibibyte)."""
    import kavach.users as users_module

    asked: list[int] = []

    class Recorder:
        def __init__(self, *, salt: bytes, length: int, n: int, r: int, p: int) -> None:
            asked.append(n)
            self.length = length

        def derive(self, data: bytes) -> bytes:
            return bytes(self.length)

        def verify(self, data: bytes, key: bytes) -> None:
            pass

    monkeypatch.setattr(users_module, "Scrypt", Recorder)
    made = hash_password("a long enough password", log_n=20)
    assert made.startswith("scrypt$20$8$3$") and asked == [2**20]
    assert verify_password("a long enough password", made) is True and asked == [2**20, 2**20]
    beyond = made.replace("scrypt$20$", "scrypt$21$")  # a damaged record asking for twice the memory
    assert verify_password("a long enough password", beyond) is False and asked == [2**20, 2**20]


def test_a_damaged_stored_hash_is_a_failed_sign_in_costing_what_an_unknown_name_does(work: list[int]) -> None:
    """A record that is no hash at all asks for no scrypt work of its own; the failed sign-in is
    padded to the work of a current hash, so it answers like any wrong password (no error)."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    store.set_hash("damaged", "not a hash")
    assert users.sign_in("damaged", "a long enough password") is None
    assert sum(work) == 2**10 * 8 * 3
    work.clear()
    assert users.sign_in("nobody", "a long enough password") is None and sum(work) == 2**10 * 8 * 3


def test_a_stored_hash_damaged_past_its_settings_costs_what_an_unknown_name_does(work: list[int]) -> None:
    """A record with good settings but a salt or key that does not read (not base64url, a key cut
    short) is checked against no salt at all: its failed sign-in is padded to a current hash's work
    like any other, so the answer does not tell a damaged record from a wrong password."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    parts = hash_password("a long enough password", log_n=10).split("$")
    store.set_hash("bad-salt", "$".join([*parts[:4], "A", parts[5]]))
    store.set_hash("short-key", "$".join([*parts[:5], parts[5][:-4]]))
    for name in ("bad-salt", "short-key", "nobody"):
        work.clear()
        assert users.sign_in(name, "a long enough password") is None
        assert sum(work) == 2**10 * 8 * 3, name


def _store(kind: str, tmp_path: Path) -> Any:
    """A :class:`UserStore` of ``kind``; PostgreSQL and Redis through a real store (services.py)."""
    import services

    if kind == "memory":
        return MemoryUsers()
    if kind == "sqlite":
        return SQLiteUsers(str(tmp_path / "u.db"))
    if kind == "sqlite-memory":
        return SQLiteUsers(":memory:")
    services.require(kind)
    if kind == "postgres":
        return PostgresUsers(services.postgres_store(tmp_path))
    return RedisUsers(services.redis_store(tmp_path))


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-memory", "postgres", "redis"])
def test_every_user_store_lists_names_sorted_and_says_whether_a_delete_removed_one(kind: str, tmp_path: Path) -> None:
    """The user store contract on every backend: what is set is read back, names list sorted,
    ``delete`` and ``replace_hash`` say whether they changed anything (a compare-and-set)."""
    store = _store(kind, tmp_path)
    assert store.usernames() == () and store.get_hash("bob") is None
    for name in ("carol", "alice", "bob"):
        store.set_hash(name, f"h-{name}")
    assert store.usernames() == ("alice", "bob", "carol")
    assert store.get_hash("bob") == "h-bob"
    assert store.delete("bob") is True
    assert store.delete("bob") is False
    assert store.usernames() == ("alice", "carol") and store.get_hash("bob") is None
    assert store.replace_hash("alice", "h-other", "h-new") is False and store.get_hash("alice") == "h-alice"
    assert store.replace_hash("alice", "h-alice", "h-new") is True and store.get_hash("alice") == "h-new"
    assert store.replace_hash("bob", "h-bob", "h-new") is False and store.get_hash("bob") is None
    if kind == "redis":  # one hash, <prefix>users, beside the store's own keys
        import redis
        import services

        raw = redis.Redis.from_url(services.REDIS_URL)
        try:
            assert raw.hgetall(store._store.prefix + "users") == {b"alice": b"h-new", b"carol": b"h-carol"}
        finally:
            raw.close()


def test_an_in_memory_sqlite_users_table_makes_no_file(tmp_path: Path, monkeypatch: Any) -> None:
    """``:memory:`` is SQLite's name for no file: nothing named so is created in the working directory."""
    monkeypatch.chdir(tmp_path)
    SQLiteUsers(":memory:")
    assert list(tmp_path.iterdir()) == []


def test_an_in_memory_sqlite_users_table_is_one_database_for_its_object_in_any_thread() -> None:
    """An in-memory SQLite database lives as long as its connection: ``SQLiteUsers(":memory:")``
    keeps its one connection, so what it holds stays for the object's life, is the same from
    another thread, and is not shared with another such object."""
    import threading

    store, other = SQLiteUsers(":memory:"), SQLiteUsers(":memory:")
    store.set_hash("alice", "h-alice")
    seen: list[Any] = []
    thread = threading.Thread(target=lambda: seen.append((store.get_hash("alice"), store.delete("nobody"))))
    thread.start()
    thread.join()
    assert seen == [("h-alice", False)]
    assert store.usernames() == ("alice",) and other.usernames() == ()


def test_a_name_no_account_can_have_is_refused_without_asking_the_store() -> None:
    """An empty, over-long or unprintable name at the sign-in form is no account: ``None``, and
    the store is never asked about it (Redis would refuse a lookup of no name)."""

    class Asked(MemoryUsers):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[object] = []

        def get_hash(self, username: str) -> str | None:
            self.asked.append(username)
            return super().get_hash(username)

    store = Asked()
    users = Users(store, log_n=10)
    for name in ("", "   ", "x" * 129, "ali\u200bce"):
        assert users.sign_in(name, "a long enough password") is None
        assert users.session_stamp(name) is None
    assert store.asked == []


def test_a_store_without_replace_hash_keeps_a_hash_of_other_settings_at_sign_in() -> None:
    """A :class:`UserStore` written before ``replace_hash`` existed still signs its users in; the
    hash made with other settings is kept (only a store that can replace it atomically upgrades)."""

    class Older:
        def __init__(self) -> None:
            self.hashes: dict[str, str] = {}

        def get_hash(self, username: str) -> str | None:
            return self.hashes.get(username)

        def set_hash(self, username: str, password_hash: str) -> None:
            self.hashes[username] = password_hash

        def delete(self, username: str) -> bool:
            return self.hashes.pop(username, None) is not None

        def usernames(self) -> tuple[str, ...]:
            return tuple(sorted(self.hashes))

    store = Older()
    old = hash_password("a long enough password", log_n=11)
    store.set_hash("alice", old)
    users = Users(store, log_n=10)  # type: ignore[arg-type]
    assert users.sign_in("alice", "a long enough password") == ("alice", users.session_stamp("alice"))
    assert store.hashes["alice"] == old


def test_a_hash_of_an_earlier_release_with_p_1_is_upgraded_at_sign_in() -> None:
    """Only ``p`` differs (an earlier release's ``p = 1``): the hash is still replaced with one made
    with the current settings when its password signs in, and the session gets the new stamp."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    salt = bytes(range(16))
    key = Scrypt(salt=salt, length=32, n=2**10, r=8, p=1).derive(b"a long enough password")
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    legacy = f"scrypt$10$8$1${b64(salt)}${b64(key)}"
    store.set_hash("alice", legacy)
    signed_in = users.sign_in("alice", "a long enough password")
    upgraded = store.get_hash("alice")
    assert upgraded is not None and upgraded != legacy and upgraded.startswith("scrypt$10$8$3$")
    assert signed_in == ("alice", users.session_stamp("alice"))


class _ChangedOnce(MemoryUsers):
    """The account is changed by ``change`` once, right after the sign-in's first read (before its
    compare-and-set upgrade): another administrator, another instance."""

    def __init__(self, change: Any) -> None:
        super().__init__()
        self.change = change

    def get_hash(self, username: str) -> str | None:
        found = super().get_hash(username)
        change, self.change = self.change, None
        if change is not None:
            change(self)
        return found


def test_a_password_changed_once_during_a_sign_in_lends_the_session_nothing() -> None:
    """The sign-in matched the old hash: its session must not get the stamp of the new password's
    hash (OWASP ASVS 5.0 §7.4.1: a new password ends the sessions signed in before)."""
    store = _ChangedOnce(lambda s: s.set_hash("alice", hash_password("a new long password", log_n=10)))
    store.set_hash("alice", hash_password("a long enough password", log_n=11))
    users = Users(store, log_n=10)
    signed_in = users.sign_in("alice", "a long enough password")
    assert signed_in is not None and signed_in[1] != users.session_stamp("alice")
    assert verify_password("a new long password", store._hashes["alice"])


def test_a_password_set_again_with_other_settings_during_a_sign_in_lends_the_session_nothing() -> None:
    """Only a hash with the current settings is taken as the concurrent upgrade of the one matched;
    a hash made meanwhile with other settings was set by someone else, and is no upgrade."""
    store = _ChangedOnce(lambda s: s.set_hash("alice", hash_password("a long enough password", log_n=12)))
    store.set_hash("alice", hash_password("a long enough password", log_n=11))
    users = Users(store, log_n=10)
    signed_in = users.sign_in("alice", "a long enough password")
    assert signed_in is not None and signed_in[1] != users.session_stamp("alice")


def test_an_account_removed_during_a_sign_in_leaves_a_session_that_never_holds() -> None:
    store = _ChangedOnce(lambda s: s.delete("alice"))
    store.set_hash("alice", hash_password("a long enough password", log_n=11))
    users = Users(store, log_n=10)
    signed_in = users.sign_in("alice", "a long enough password")
    assert signed_in is not None and signed_in[0] == "alice"
    assert users.session_stamp("alice") is None and store.usernames() == ()


def test_the_session_stamp_is_a_fixed_digest_of_the_stored_hash() -> None:
    """128 bits of SHA-256 over a versioned label and the hash, base64url: the stamp sessions
    carry stays the same across releases (an upgrade, or two releases sharing a store, keeps them)."""
    encoded = "scrypt$10$8$3$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    digest = hashlib.sha256(b"kavach session stamp v1\0" + encoded.encode()).digest()[:16]
    assert credential_stamp(encoded) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
