"""The adapters' shared modules on their own: request translation, failures, cookies, users."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, quote_from_bytes

import pytest
from compare_spy import spy_on_compare_digest
from conftest import RESOURCE, SECRET, make_config
from failing_stores import BrokenStore, DownStore
from hypothesis import given, settings
from hypothesis import strategies as st
from kavach import mcp_sessions, sessions
from kavach.mcp_sessions import SessionSeal
from kavach.server import CLIENT_ADDRESS_HEADER, AuthorizationServer, incoming
from kavach.sessions import Cookies, Session, parse_cookies
from kavach.users import MemoryUsers, SQLiteUsers, Users, credential_stamp, hash_password, verify_password

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.errors import OAuthError
from kavach_core.http import HttpRequest
from kavach_core.memory_store import MemoryStore
from kavach_core.params import query_params

SESSION_ID = bytes(range(16))
SESSION_HASH = hashlib.sha256(SESSION_ID).hexdigest()


def _server(store: Any, **kw: Any) -> AuthorizationServer:
    kw.setdefault("users", Users(MemoryUsers(), log_n=10))
    return AuthorizationServer(make_config(), store, **kw)


JWKS = HttpRequest("GET", "/jwks.json")


def test_incoming_replaces_a_spoofed_client_address_with_the_peer() -> None:
    req = incoming("post", "/register", b"a=1&a=2&b=", [(CLIENT_ADDRESS_HEADER.lower(), "1.2.3.4")], b"{}", "9.9.9.9")
    assert req.method == "POST"
    assert req.query == (("a", "1"), ("a", "2"), ("b", ""))
    assert req.header_values(CLIENT_ADDRESS_HEADER) == ["9.9.9.9"]
    assert incoming("GET", "/", "", [(CLIENT_ADDRESS_HEADER, "x")], b"", None).header(CLIENT_ADDRESS_HEADER) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.lists(st.sampled_from([*"a=&+%;3e9 \x00\x7f\u00e9", "%C3%A9", "%ff"])).map("".join))
def test_incoming_splits_the_query_as_escaping_then_parse_qsl_would(query: bytes | str) -> None:
    """Invariant: the pairs ``incoming`` makes of any query, bytes or text, are those of escaping
    every octet outside visible ASCII and splitting with ``parse_qsl`` (surrogates kept), the
    reading its docstring promises; the visible-ASCII shortcut and :func:`split_form` change none."""
    raw = query if isinstance(query, bytes) else query.encode("utf-8", "surrogateescape")
    escaped = quote_from_bytes(raw, safe=bytes(range(0x21, 0x7F)))
    want = parse_qsl(escaped, keep_blank_values=True, errors="surrogateescape")
    assert list(incoming("GET", "/", query, [], b"", None).query) == want


def test_incoming_reads_the_query_as_utf8_and_keeps_what_is_not() -> None:
    """Escapes and raw octets alike are UTF-8; a sequence that is not stays visible (as lone
    surrogates) for the core to refuse, instead of being replaced and passed on altered."""
    for query in (b"x=%C3%A9&y=\xc3\xa9&a+b=%2B", "x=%C3%A9&y=\u00e9&a+b=%2B"):
        assert incoming("GET", "/", query, [], b"", None).query == (("x", "\u00e9"), ("y", "\u00e9"), ("a b", "+"))
    for query in (b"state=%FF", b"state=\xff", "state=%ff"):
        params = query_params(incoming("GET", "/", query, [], b"", None))
        assert params.unreadable == frozenset({"state"})
        with pytest.raises(OAuthError, match="UTF-8"):
            params.get("state")


def test_store_unavailable_is_503_temporarily_unavailable() -> None:
    r = _server(DownStore()).handle(JWKS)
    assert r.status == 503 and r.json() == {"error": "temporarily_unavailable"}
    assert r.header("Cache-Control") == "no-store"
    r = asyncio.run(_server(DownStore()).ahandle(JWKS))
    assert r.status == 503


def test_md_04_failures_on_cors_paths_carry_cors_too() -> None:
    """A browser client reads a 503/500 on a CORS path instead of meeting a network error; the
    authorization endpoint still gets no CORS header (AZ-10)."""
    for server, status in ((_server(DownStore()), 503), (_server(BrokenStore()), 500)):
        for r in (server.handle(JWKS), asyncio.run(server.ahandle(JWKS))):
            assert r.status == status and r.header("Access-Control-Allow-Origin") == "*"
    authorize = HttpRequest("GET", "/authorize", (("client_id", "c"),))
    r = _server(DownStore()).handle(authorize)
    assert r.status == 503 and r.header("Access-Control-Allow-Origin") is None


def test_gn_03_unexpected_error_is_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    r = _server(BrokenStore()).handle(JWKS)
    assert r.status == 500 and r.json() == {"error": "server_error"}
    assert b"passwd" not in r.body and b"Traceback" not in r.body
    assert "passwd" in caplog.text  # logged server-side
    assert asyncio.run(_server(BrokenStore()).ahandle(JWKS)).status == 500


def test_guard_failures_are_503_and_500() -> None:
    req = HttpRequest("POST", "/mcp", headers=[("Authorization", "Bearer abc.def.ghi")], body=b"{}")
    assert _server(DownStore()).guard(RESOURCE, req, ()).status == 503  # type: ignore[union-attr]
    assert asyncio.run(_server(BrokenStore()).aguard(RESOURCE, req, ())).status == 500  # type: ignore[union-attr]


def test_a_way_to_sign_in_is_required() -> None:
    """The refusal is the whole line naming both ways, so an embedder sees what to pass."""
    both = r"^give users= \(built-in sign-in\) or identify= \(your application's login\), or both$"
    with pytest.raises(ValueError, match=both):
        AuthorizationServer(make_config(), MemoryStore())


def test_unknown_resource_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        _server(MemoryStore()).protected("https://elsewhere.example/mcp")
    assert _server(MemoryStore()).protected("HTTPS://MCP.example.com/mcp/") == RESOURCE


def test_paths_include_metadata_endpoints_and_forms() -> None:
    server = _server(MemoryStore())
    paths = server.paths()
    for path in (
        "/.well-known/oauth-authorization-server",
        "/authorize",
        "/token",
        "/register",
        "/.well-known/oauth-protected-resource/mcp",
        "/authorize/login",
        "/authorize/decision",
    ):
        assert path in paths


def test_forms_refuse_get_and_non_form_bodies() -> None:
    server = _server(MemoryStore())
    assert server.handle(HttpRequest("GET", server.decision_path)).status == 405
    refused = server.handle(HttpRequest("GET", server.decision_path))
    assert refused.header("Allow") == "POST"
    page = server.handle(HttpRequest("POST", server.consent_path))
    assert page.status == 405 and page.header("Allow") == "GET, HEAD", "the consent page answers HEAD too"
    assert server.handle(HttpRequest("HEAD", server.consent_path)).status != 405
    bad = HttpRequest("POST", server.login_path, headers=[("Content-Type", "application/json")], body=b"{}")
    r = server.handle(bad)
    assert r.status == 400 and r.header("X-Frame-Options") == "DENY"


def test_login_url_hook_sends_the_person_to_the_applications_login() -> None:
    from kavach_core.records import Client

    store = MemoryStore()
    store.clients["c1"] = Client("c1", ("https://app.example.com/cb",), client_name="App")
    server = AuthorizationServer(
        make_config(), store, identify=lambda req: None, login_url=lambda back: "https://sso.example/login?next=" + back
    )
    req = HttpRequest(
        "GET",
        "/authorize",
        query=[
            ("response_type", "code"),
            ("client_id", "c1"),
            ("code_challenge", "E" * 43),
            ("code_challenge_method", "S256"),
            ("resource", RESOURCE),
        ],
    )
    r = server.handle(req)
    assert r.status == 303
    assert (r.header("Location") or "").startswith("https://sso.example/login?next=/authorize/consent?ticket=")


# -- cookies -------------------------------------------------------------------------------------


def test_session_cookie_is_host_prefixed_and_secure_under_https() -> None:
    cookies = Cookies(make_config())
    name, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)
    assert name == "Set-Cookie"
    assert value.startswith("__Host-kavach-session=")
    for part in ("Path=/", "HttpOnly", "SameSite=Lax", "Secure"):
        assert part in value
    jar = parse_cookies([value.split(";")[0]])
    expiry = 1000 + cookies.session_lifetime
    assert cookies.session(jar, 1001) == Session("alice", "stamp-1", SESSION_HASH, expiry)
    assert cookies.session(jar, expiry) is None  # expired


def test_a_session_lasts_eight_hours_unless_told_otherwise() -> None:
    """:class:`Cookies` made without a lifetime sign a person in for 8 hours: the cookie's
    ``Max-Age`` and the expiry it carries."""
    cookies = Cookies(make_config())
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)
    assert f"; Max-Age={8 * 3600};" in value
    jar = parse_cookies([value.split(";")[0]])
    assert cookies.session(jar, 1001) == Session("alice", "stamp-1", SESSION_HASH, 1000 + 8 * 3600)


def test_csrf_tokens_and_ticket_digests_are_hmac_sha256_under_keys_of_their_own() -> None:
    """A CSRF token is the unpadded base64url HMAC-SHA256 of browser id, form and ticket joined by
    NUL, and a session's ticket binding that of the ticket, each under HMAC-SHA256(secret, its own
    label): instances of any release keyed with one secret accept each other's forms and sessions,
    and neither value is a MAC a use of the secret elsewhere could give."""
    cookies = Cookies(make_config(issuer="http://127.0.0.1:8000"))
    csrf_key = hmac.new(SECRET, b"kavach adapter: csrf v1", hashlib.sha256).digest()
    expected = _b64(hmac.new(csrf_key, b"browser-1\0consent\0T1", hashlib.sha256).digest())
    assert cookies.csrf_token("browser-1", "consent", "T1") == expected
    ticket_key = hmac.new(SECRET, b"kavach adapter: session ticket v1", hashlib.sha256).digest()
    assert _session_for(cookies, "T1").ticket_digest == _b64(hmac.new(ticket_key, b"T1", hashlib.sha256).digest())


def test_a_session_id_is_random_enough() -> None:
    cookies = Cookies(make_config())
    with pytest.raises(ValueError, match="16 random bytes"):
        cookies.session_cookie("alice", "stamp-1", now=1000, session_id=b"short")
    with pytest.raises(ValueError, match="16 random bytes"):
        cookies.session_cookie("alice", "stamp-1", now=1000, session_id=bytes(15))
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)  # 16 bytes
    assert cookies.session(parse_cookies([value.split(";")[0]]), 1001) is not None


def test_session_cookie_cannot_be_forged() -> None:
    cookies = Cookies(make_config())
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)
    token = value.split(";")[0].split("=", 1)[1]
    payload, mac = token.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for bad in (f"{forged_payload}.{mac}", f"{payload}.{mac[:-1]}", "garbage", "", "a.b.c"):
        assert cookies.session({cookies.session_name: bad}, 1001) is None
    other = Cookies(make_config(secret=b"z" * 32))
    assert other.session({other.session_name: token}, 1001) is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(label: bytes, payload: bytes) -> str:
    """A session cookie value as a server with ``SECRET`` signs it under key label ``label``."""
    key = hmac.new(SECRET, label, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(hmac.new(key, payload, hashlib.sha256).digest())}"


def test_session_cookie_of_the_previous_format_is_signed_out() -> None:
    """Cookies made before sessions carried a credential stamp (subject and expiry only, key
    label v1) or a session id (key label v2) are no session at all, however valid their signature
    was then; so is a payload without a stamp or an id under the current key."""
    cookies = Cookies(make_config())
    subject = _b64(b"alice")
    old = _signed(b"kavach adapter: login session v1", f"{1000 + 3600}:{subject}".encode())
    assert cookies.session({cookies.session_name: old}, 1001) is None
    stampless = _signed(b"kavach adapter: login session v2", f"{1000 + 3600}:{subject}".encode())
    assert cookies.session({cookies.session_name: stampless}, 1001) is None
    empty_stamp = _signed(b"kavach adapter: login session v2", f"{1000 + 3600}:{subject}:".encode())
    assert cookies.session({cookies.session_name: empty_stamp}, 1001) is None
    stamped = _signed(b"kavach adapter: login session v2", f"{1000 + 3600}:{subject}:{_b64(b's')}".encode())
    assert cookies.session({cookies.session_name: stamped}, 1001) is None
    idless = _signed(b"kavach adapter: login session v3", f"{1000 + 3600}:{subject}:{_b64(b's')}".encode())
    assert cookies.session({cookies.session_name: idless}, 1001) is None
    fields = f"{1000 + 3600}:{subject}:{_b64(b's')}:{_b64(SESSION_ID)}"
    current = _signed(b"kavach adapter: login session v3", fields.encode())
    assert cookies.session({cookies.session_name: current}, 1001) == Session("alice", "s", SESSION_HASH, 4600)


def test_a_session_holds_only_while_the_credential_is_unchanged() -> None:
    session = Session("alice", "stamp-1", SESSION_HASH, 4600)
    assert session.holds("stamp-1")
    assert not session.holds("stamp-2")
    assert not session.holds("")
    assert not session.holds(None)  # the account is gone


def test_csrf_token_is_bound_to_browser_form_and_ticket() -> None:
    cookies = Cookies(make_config())
    browser, set_cookie = cookies.browser_id({})
    assert set_cookie is not None and "HttpOnly" in set_cookie[1]
    jar = {cookies.browser_name: browser}
    token = cookies.csrf_token(browser, "consent", "T1")
    assert cookies.csrf_valid(jar, "consent", "T1", token)
    assert not cookies.csrf_valid(jar, "consent", "T2", token)
    assert not cookies.csrf_valid(jar, "login", "T1", token)
    assert not cookies.csrf_valid({cookies.browser_name: cookies.browser_id({})[0]}, "consent", "T1", token)
    assert not cookies.csrf_valid({}, "consent", "T1", token)
    assert not cookies.csrf_valid(jar, "consent", "T1", None)


def test_parse_cookies_keeps_the_first_of_a_name_and_skips_parts_without_a_name_and_value() -> None:
    """RFC 6265 §5.4: a browser lists the cookie with the longer ``Path`` (kavach's own, under an
    http issuer) before a same-named one set for a shorter path by another listener of the host,
    so the first occurrence is the one read; a part without ``=`` or without a name is no cookie."""
    assert parse_cookies(["a=1; flag; =x", 'a=2; b="q"', "a=3"]) == {"a": "1", "b": "q"}


def test_a_session_cookie_longer_than_the_bound_is_not_read() -> None:
    """A cookie of 4096 characters (RFC 6265 §6.1: what a browser stores at least) is read; a
    longer one, validly signed or not, is refused before it is decoded."""
    cookies = Cookies(make_config())
    by_length: dict[int, str] = {}
    for n in range(2200, 2300):
        value = cookies.session_cookie("a" * n, "stamp-1", now=1000, session_id=SESSION_ID)[1]
        token = value.split(";")[0].split("=", 1)[1]
        by_length.setdefault(len(token), token)
    assert cookies.session({cookies.session_name: by_length[4096]}, 1001) is not None
    too_long = by_length[min(n for n in by_length if n > 4096)]
    assert cookies.session({cookies.session_name: too_long}, 1001) is None


def test_a_session_cookie_is_read_only_as_unpadded_base64url() -> None:
    """The seal is written in unpadded base64url (RFC 4648 §5); a copy spelled with ``=``
    padding is not a second spelling of the same session."""
    cookies = Cookies(make_config())
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)
    token = value.split(";")[0].split("=", 1)[1]
    assert cookies.session({cookies.session_name: token}, 1001) is not None
    assert len(token.split(".")[1]) % 4 == 3  # a 32-byte tag: one "=" short of a padded quad
    assert cookies.session({cookies.session_name: token + "="}, 1001) is None
    # Nor with characters outside the alphabet put in, nor a last character whose unused bits
    # are set (RFC 4648 §3.5): each decodes to the same bytes by a lenient decoder.
    assert cookies.session({cookies.session_name: token + "!!!!"}, 1001) is None
    assert cookies.session({cookies.session_name: token[:8] + "\n" + token[8:]}, 1001) is None
    payload, mac = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    loose = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]  # the tag's last 2 bits are unused
    assert base64.urlsafe_b64decode(loose + "=") == base64.urlsafe_b64decode(mac + "=")
    assert cookies.session({cookies.session_name: f"{payload}.{loose}"}, 1001) is None


def test_a_session_without_a_subject_or_a_stamp_signs_no_one_in() -> None:
    """Validly signed under the current key, a payload with an empty subject or an empty
    credential stamp is no session."""
    cookies = Cookies(make_config())
    session_id = _b64(SESSION_ID)
    for subject, stamp in ((b"", b"s"), (b"alice", b"")):
        fields = f"{1000 + 3600}:{_b64(subject)}:{_b64(stamp)}:{session_id}"
        value = _signed(b"kavach adapter: login session v3", fields.encode())
        assert cookies.session({cookies.session_name: value}, 1001) is None


def test_a_browser_cookie_not_of_the_issued_form_is_replaced() -> None:
    """Only a browser id of 32 to 64 characters of the base64url alphabet, as the server issues
    them, is kept; anything else gets a new id (and so invalidates CSRF tokens bound to it)."""
    cookies = Cookies(make_config())
    fresh = cookies.new_browser_id()[0]
    for kept in (fresh, "a" * 32, "a" * 64, "A-_9" * 8):
        assert cookies.browser_id({cookies.browser_name: kept}) == (kept, None)
    for replaced in ("a" * 31, "a" * 65, "\u00e9" * 32, "!" * 32, "a" * 31 + "\0", ""):
        browser, set_cookie = cookies.browser_id({cookies.browser_name: replaced})
        assert browser != replaced and set_cookie is not None
        assert set_cookie[1].startswith(f"{cookies.browser_name}={browser};")


def test_a_new_browser_id_is_256_random_bits_kept_for_400_days() -> None:
    """The id is 32 random bytes; the cookie's ``Max-Age`` is the 400 days browsers cap it at
    (RFC 6265bis §5.6.2)."""
    cookies = Cookies(make_config())
    browser, (_, header) = cookies.new_browser_id()
    assert len(base64.urlsafe_b64decode(browser + "=" * (-len(browser) % 4))) == 32
    assert f"; Max-Age={400 * 86400};" in header


# -- constant-time comparisons (GN-02) -----------------------------------------------------------
#
# Each check compares its secret through ``hmac.compare_digest`` (compare_spy.py records every
# comparison, with the real verdict): with ``==`` how long a refusal takes tells an attacker how
# long a prefix of a guessed tag or token was right.


def test_a_session_seal_is_opened_by_comparing_its_tag_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = spy_on_compare_digest(monkeypatch, mcp_sessions)
    seal = SessionSeal(b"s" * 32)
    sealed = seal.seal("session-1", ("alice", "app"))
    tag = sealed.rpartition(".")[2]
    mallorys_tag = seal.seal("session-1", ("mallory", "app")).rpartition(".")[2]
    assert tag != mallorys_tag and not spy.calls
    assert seal.open(sealed, ("mallory", "app")) is None
    assert len(spy.calls) == 1 and spy.saw(tag, mallorys_tag, False)
    assert seal.open(sealed, ("alice", "app")) == "session-1"
    assert len(spy.calls) == 2 and spy.saw(tag, tag, True)


def test_a_csrf_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = spy_on_compare_digest(monkeypatch, sessions)
    cookies = Cookies(make_config())
    browser = cookies.browser_id({})[0]
    jar = {cookies.browser_name: browser}
    token = cookies.csrf_token(browser, "consent", "T1")
    for_another_ticket = cookies.csrf_token(browser, "consent", "T2")
    assert not cookies.csrf_valid(jar, "consent", "T1", for_another_ticket)
    assert len(spy.calls) == 1 and spy.saw(token, for_another_ticket, False)
    assert cookies.csrf_valid(jar, "consent", "T1", token)
    assert len(spy.calls) == 2 and spy.saw(token, token, True)


def test_a_login_sessions_mac_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = spy_on_compare_digest(monkeypatch, sessions)
    cookies = Cookies(make_config())
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID)
    payload, mac = value.split(";")[0].split("=", 1)[1].split(".")
    genuine = base64.urlsafe_b64decode(mac + "=")
    forged = bytes([genuine[0] ^ 1]) + genuine[1:]
    assert cookies.session({cookies.session_name: f"{payload}.{_b64(forged)}"}, 1001) is None
    assert len(spy.calls) == 1 and spy.saw(forged, genuine, False)
    assert cookies.session({cookies.session_name: f"{payload}.{mac}"}, 1001) is not None
    assert len(spy.calls) == 2 and spy.saw(genuine, genuine, True)


def _session_for(cookies: Cookies, ticket: str) -> Session:
    _, value = cookies.session_cookie("alice", "stamp-1", now=1000, session_id=SESSION_ID, ticket=ticket)
    session = cookies.session(parse_cookies([value.split(";")[0]]), 1001)
    assert session is not None and session.ticket_digest
    return session


def test_a_login_sessions_stamp_and_ticket_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    cookies = Cookies(make_config(issuer="http://127.0.0.1:8000"))  # sessions bound to a ticket
    for_t1, for_t2 = _session_for(cookies, "T1"), _session_for(cookies, "T2")
    spy = spy_on_compare_digest(monkeypatch, sessions)
    assert not for_t1.holds("stamp-2")
    assert len(spy.calls) == 1 and spy.saw("stamp-1", "stamp-2", False)
    assert for_t1.holds("stamp-1")
    assert len(spy.calls) == 2 and spy.saw("stamp-1", "stamp-1", True)
    spy.calls.clear()
    assert not cookies.serves(for_t1, "T2")
    assert len(spy.calls) == 1 and spy.saw(for_t1.ticket_digest, for_t2.ticket_digest, False)
    assert cookies.serves(for_t1, "T1")
    assert len(spy.calls) == 2 and spy.saw(for_t1.ticket_digest, for_t1.ticket_digest, True)


# -- users ---------------------------------------------------------------------------------------


def test_scrypt_hash_verifies_and_is_salted() -> None:
    one, two = hash_password("pw", log_n=10), hash_password("pw", log_n=10)
    assert one != two and one.startswith("scrypt$10$8$3$")
    assert verify_password("pw", one) and not verify_password("pW", one)
    for bad in (
        "",
        "scrypt$",
        "bcrypt$10$8$1$AA$AA",
        "scrypt$40$8$1$AA$AA",
        one.replace("$10$", "$x$"),
        one.replace("scrypt$", "scrypt-nfd$"),
        one[:-3],
        one[:-3] + "!!!",
    ):  # a key cut short
        assert not verify_password("pw", bad)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_users_authenticate(kind: str, tmp_path: Any) -> None:
    store = MemoryUsers() if kind == "memory" else SQLiteUsers(str(tmp_path / "u.db"))
    users = Users(store, log_n=10)
    users.add("alice", "s3cret passphrase")
    users.add(" alice ", "a n3w passphrase")  # normalised: replaces
    assert store.usernames() == ("alice",)
    assert users.authenticate("alice", "a n3w passphrase") == "alice"
    assert users.authenticate("alice", "s3cret passphrase") is None
    assert users.authenticate("bob", "a n3w passphrase") is None
    assert users.authenticate("", "x") is None
    assert users.remove("alice") and not users.remove("alice")
    with pytest.raises(ValueError):
        users.add("", "x")
    with pytest.raises(ValueError):
        users.add("carol", "")


def test_session_stamp_follows_the_stored_hash() -> None:
    """A password change, a removal and a re-adding each give the account a stamp no earlier
    session holds, even with the same password (every hash has a fresh salt); the stamp is a
    short digest, never the hash."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    assert users.session_stamp("alice") is None
    users.add("alice", "a long enough password")
    first = users.session_stamp("alice")
    assert first is not None and first == users.session_stamp(" alice ") == credential_stamp(store._hashes["alice"])
    assert users.sign_in("alice", "a long enough password") == ("alice", first)
    assert users.sign_in("alice", "nope") is None and users.sign_in("bob", "a long enough password") is None
    assert len(first) == 22 and first not in store._hashes["alice"]
    users.add("alice", "a long enough password")  # the same password again: a new salt, a new stamp
    second = users.session_stamp("alice")
    assert second is not None and second != first
    users.remove("alice")
    assert users.session_stamp("alice") is None
    users.add("alice", "a long enough password")
    assert users.session_stamp("alice") not in (None, first, second)
    for name in ("", "x" * 200, "bad\x00name"):
        assert users.session_stamp(name) is None


def _user_store(kind: str, tmp_path: Any) -> Any:
    """A :class:`UserStore` of ``kind`` (PostgreSQL and Redis through a real store)."""
    import services
    from kavach.users import PostgresUsers, RedisUsers

    if kind == "memory":
        return MemoryUsers()
    if kind == "sqlite":
        return SQLiteUsers(str(tmp_path / "u.db"))
    services.require(kind)
    if kind == "postgres":
        return PostgresUsers(services.postgres_store(tmp_path))
    return RedisUsers(services.redis_store(tmp_path))


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "redis"])
def test_replace_hash_sets_the_new_hash_only_over_the_old_one(kind: str, tmp_path: Any) -> None:
    store = _user_store(kind, tmp_path)
    store.set_hash("alice", "h1")
    assert not store.replace_hash("alice", "h0", "h2") and store.get_hash("alice") == "h1"
    assert store.replace_hash("alice", "h1", "h2") and store.get_hash("alice") == "h2"
    assert not store.replace_hash("alice", "h1", "h3") and store.get_hash("alice") == "h2"
    assert not store.replace_hash("bob", "h1", "h2") and store.get_hash("bob") is None


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "redis"])
def test_a_hash_made_with_other_settings_is_replaced_at_sign_in(kind: str, tmp_path: Any) -> None:
    """Signing in with the right password re-hashes a password stored with other scrypt settings
    (weaker defaults of an earlier version, or a changed ``log_n``) under the current ones; the
    session gets the new hash's stamp and sessions of the old hash end, as after a new password.
    A wrong password changes nothing; a hash with the current settings is kept."""
    store = _user_store(kind, tmp_path)
    users = Users(store, log_n=10)
    weak = hash_password("pw", log_n=11)  # settings other than the Users' own (log_n 10)
    store.set_hash("alice", weak)
    old_stamp = credential_stamp(weak)
    assert users.sign_in("alice", "wrong") is None and store.get_hash("alice") == weak
    signed_in = users.sign_in("alice", "pw")
    upgraded = store.get_hash("alice")
    assert upgraded is not None and upgraded.startswith("scrypt$10$8$3$") and verify_password("pw", upgraded)
    assert signed_in == ("alice", credential_stamp(upgraded)) and signed_in[1] != old_stamp
    assert users.session_stamp("alice") == credential_stamp(upgraded)
    assert users.sign_in("alice", "pw") == ("alice", credential_stamp(upgraded))  # current settings: kept
    assert store.get_hash("alice") == upgraded


def _scrypt_work(monkeypatch: Any) -> list[int]:
    """Record the work (N * r * p) of every scrypt run the users module makes."""
    import kavach.users as users_module

    real = users_module.Scrypt
    work: list[int] = []

    def counted(**kwargs: Any) -> Any:
        work.append(kwargs["n"] * kwargs["r"] * kwargs["p"])
        return real(**kwargs)

    monkeypatch.setattr(users_module, "Scrypt", counted)
    return work


def test_a_wrong_password_costs_the_same_scrypt_work_for_any_name(monkeypatch: Any) -> None:
    """Timing must not tell which usernames exist, nor which accounts still hold a hash of an
    earlier release (p = 1, cheaper to check): a wrong password for such an account, for a
    current one and for a name with no account each run the same scrypt work (counted, not timed)."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    users.add("current", "a long enough password")
    legacy = hash_password("pw", log_n=10).replace("scrypt$10$8$3$", "scrypt$10$8$1$")  # an earlier release's p
    store.set_hash("legacy", legacy)
    store.set_hash("older", hash_password("pw", log_n=10).replace("scrypt$10$8$3$", "scrypt$10$4$1$"))
    work = _scrypt_work(monkeypatch)
    spent = {}
    for name in ("nobody", "current", "legacy", "older"):
        work.clear()
        assert users.sign_in(name, "wrong") is None
        spent[name] = sum(work)
    assert spent["current"] == spent["nobody"] > 0
    assert spent["nobody"] <= spent["legacy"] < spent["nobody"] + 2**10 * 8  # padded to within one p unit
    assert spent["nobody"] <= spent["older"] < spent["nobody"] + 2**10 * 8
    assert store.get_hash("legacy") == legacy, "a wrong password upgrades nothing"


def _as_given_hash(password: str, log_n: int = 10) -> str:
    """A hash as an earlier release made it: scrypt of the password's code points as typed."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=2**log_n, r=8, p=3).derive(password.encode("utf-8"))
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    return f"scrypt${log_n}$8$3${b64(salt)}${b64(key)}"


def _as_an_earlier_release_checks(password: str, encoded: str) -> bool:
    """An earlier release's check: scrypt of the password's code points as typed, nothing more."""
    from cryptography.exceptions import InvalidKey
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    _, log_n, r, p, salt, key = encoded.split("$")
    unb64 = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
    try:
        Scrypt(salt=unb64(salt), length=32, n=2 ** int(log_n), r=int(r), p=int(p)).verify(
            password.encode("utf-8"), unb64(key)
        )
    except InvalidKey:
        return False
    return True


@pytest.mark.parametrize(
    ("set_as", "typed"),
    [
        ("caf\u00e9 with two sugars", "cafe\u0301 with two sugars"),  # composed when set, decomposed when typed
        ("cafe\u0301 with two sugars", "caf\u00e9 with two sugars"),  # (NFC vs NFD)
        ("\uff50\uff57\u2460 and a long tail", "pw1 and a long tail"),  # fullwidth letters, a circled digit
        ("\u212bngstr\u00f6m units of length", "\u00c5ngstro\u0308m units of length"),  # Angstrom sign: A, a ring
    ],
)
def test_passwords_are_compared_nfkc_normalised(set_as: str, typed: str) -> None:
    """NIST SP 800-63B-4 §3.1.1.2: a verifier accepting Unicode passwords normalises them (NFKC
    here), so the same password typed on keyboards or systems that encode it differently signs in;
    a different password still does not."""
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", set_as)
    assert users.authenticate("alice", typed) == "alice"
    assert users.authenticate("alice", set_as) == "alice"
    assert users.authenticate("alice", typed + "x") is None
    assert users.authenticate("alice", "cafe") is None


def test_a_hash_of_either_release_opens_with_the_other_for_a_password_typed_as_it_was_made() -> None:
    """Instances of this release and an earlier one may share a store while one replaces the other:
    a hash made now (of the normal form) opens under the earlier release's check for a password
    typed in normal form (every ASCII one), and one made then (of the password as typed) still
    opens here for that same typing, without being rewritten. Another normal form of a password
    hashed as typed opens only once the account has a hash made now."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    for password in ("correct horse", "caf\u00e9"):
        made_now = hash_password(password, log_n=10)
        assert _as_an_earlier_release_checks(password, made_now)
        assert not _as_an_earlier_release_checks(password + "!", made_now)
    decomposed, composed = "cafe\u0301 with two sugars", "caf\u00e9 with two sugars"
    old = _as_given_hash(decomposed)
    store.set_hash("alice", old)
    assert users.authenticate("alice", decomposed) == "alice" and store.get_hash("alice") == old  # kept
    assert users.authenticate("alice", composed) is None  # as the earlier release answered
    users.add("alice", decomposed)
    assert users.authenticate("alice", composed) == "alice" and users.authenticate("alice", decomposed) == "alice"


def test_a_wrong_password_not_in_normal_form_costs_the_same_for_any_name(monkeypatch: Any) -> None:
    """A password typed otherwise than in its normal form is checked twice (as typed, normalised),
    for a name with no account too: timing tells nothing about which names exist."""
    store = MemoryUsers()
    users = Users(store, log_n=10)
    users.add("current", "a long enough password")
    store.set_hash("legacy", hash_password("pw", log_n=10).replace("scrypt$10$8$3$", "scrypt$10$8$1$"))
    work = _scrypt_work(monkeypatch)
    spent = {}
    for name in ("nobody", "current", "legacy"):
        work.clear()
        assert users.sign_in(name, "wro\u0301ng") is None
        spent[name] = (len(work), sum(work))
    assert spent["current"] == spent["nobody"] and spent["nobody"][0] == 2  # two spellings, two runs
    assert spent["nobody"][1] <= spent["legacy"][1] < spent["nobody"][1] + 2 * 2**10 * 8


def test_a_password_with_a_nul_is_refused_when_set() -> None:
    """No sign-in form can send a NUL (every parameter with one is refused), so an account given
    such a password could never sign in: it is refused when set."""
    from kavach.users import PasswordError

    users = Users(MemoryUsers(), log_n=10)
    with pytest.raises(PasswordError, match="NUL"):
        users.add("bob", "a password with\x00a NUL in it")
    assert users.sign_in("bob", "a password with") is None and users.session_stamp("bob") is None


def test_a_password_changed_during_a_sign_in_is_not_undone_by_its_upgrade() -> None:
    class Racing(MemoryUsers):
        def get_hash(self, username: str) -> str | None:
            found = super().get_hash(username)
            self.set_hash(username, hash_password("new", log_n=10))  # changed between read and upgrade
            return found

    store = Racing()
    store.set_hash("alice", hash_password("pw", log_n=11))
    users = Users(store, log_n=10)
    signed_in = users.sign_in("alice", "pw")
    assert verify_password("new", store._hashes["alice"]) and not verify_password("pw", store._hashes["alice"])
    assert signed_in is not None and signed_in[1] != credential_stamp(store._hashes["alice"])  # holds nothing


def test_two_sign_ins_upgrading_one_hash_at_once_both_hold() -> None:
    """The second sign-in's compare-and-set finds the hash the first just upgraded: when the
    password matches that one it takes its stamp, so both sessions hold."""

    class Racing(MemoryUsers):
        def replace_hash(self, username: str, old: str, new: str) -> bool:
            if not getattr(self, "raced", False):  # another sign-in upgrades first
                self.raced = True
                super().replace_hash(username, old, hash_password("pw", log_n=10))
            return super().replace_hash(username, old, new)

    store = Racing()
    store.set_hash("alice", hash_password("pw", log_n=11))
    users = Users(store, log_n=10)
    signed_in = users.sign_in("alice", "pw")
    assert signed_in == ("alice", users.session_stamp("alice"))


def test_headers_of_a_guarded_body_are_read_as_http_spells_them() -> None:
    from kavach.server import guarded_body_problem

    for taken in (
        ["application/json"],
        ["application/json;\tcharset=UTF-8"],
        ["application/json", "Application/JSON "],
        ["application/json; x=charset"],
        ['application/json; charset="utf-8"'],
    ):
        assert guarded_body_problem([], taken) is None, taken
    for refused in (
        ["application/json; charset=utf-7"],
        ["application/json; Charset*=utf-8''"],
        ["application/json", "text/plain"],
        ["application/json; charset=utf-8;charset=latin1"],
    ):
        problem = guarded_body_problem([], refused)
        assert problem is not None and problem.status == 415, refused


class _CountingUsers(MemoryUsers):
    """Local users that count their reads, and can be made unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    def get_hash(self, username: str) -> str | None:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("the users table cannot be reached")
        return super().get_hash(username)


def _session_server() -> tuple[AuthorizationServer, _CountingUsers]:
    from kavach_core.records import Client

    user_store = _CountingUsers()
    users = Users(user_store, log_n=10)
    users.add("alice", "a long enough password")
    store = MemoryStore()
    store.clients["c1"] = Client("c1", ("https://app.example.com/cb",), client_name="App")
    return _server(store, users=users), user_store


def _authorize(cookie: str) -> HttpRequest:
    query = [
        ("response_type", "code"),
        ("client_id", "c1"),
        ("code_challenge", "E" * 43),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
    ]
    return HttpRequest("GET", "/authorize", query=query, headers=[("Cookie", cookie)])


def _session_cookie(server: AuthorizationServer, subject: str, stamp: str) -> str:
    return server.cookies.session_cookie(subject, stamp, int(time.time()), secrets.token_bytes(16))[1].split(";")[0]


def test_a_forged_session_cookie_costs_no_user_lookup() -> None:
    """The signature is checked first: only a cookie this server signed makes it read the user."""
    server, user_store = _session_server()
    stamp = server.users.session_stamp("alice")  # type: ignore[union-attr]
    assert stamp is not None
    good = _session_cookie(server, "alice", stamp)
    name, value = good.split("=", 1)
    payload, mac = value.split(".")
    other = AuthorizationServer(make_config(secret=b"z" * 32), MemoryStore(), users=Users(MemoryUsers()))
    previous = f"{int(time.time()) + 60}:{_b64(b'alice')}".encode()
    forged = (
        f"{name}={payload}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",  # a different MAC
        _session_cookie(other, "alice", stamp),
        f"{name}={_signed(b'kavach adapter: login session v1', previous)}",  # signed before stamps
        f"{name}=garbage",
    )
    user_store.reads = 0
    for cookie in forged:
        r = server.handle(_authorize(cookie))
        assert r.status == 200 and b'name="password"' in r.body, cookie
        r = asyncio.run(server.ahandle(_authorize(cookie)))
        assert r.status == 200 and b'name="password"' in r.body, cookie
    assert user_store.reads == 0
    for r in (server.handle(_authorize(good)), asyncio.run(server.ahandle(_authorize(good)))):
        assert r.status == 200 and b'value="approve"' in r.body
    assert user_store.reads == 2  # one read per use of a genuine session


def test_a_session_is_checked_against_the_current_user_on_every_use() -> None:
    server, _ = _session_server()
    users = server.users
    assert users is not None
    stamp = users.session_stamp("alice")
    assert stamp is not None
    cookie = _session_cookie(server, "alice", stamp)
    assert b'value="approve"' in server.handle(_authorize(cookie)).body
    users.add("alice", "a new long enough password")
    assert b'name="password"' in server.handle(_authorize(cookie)).body
    fresh = _session_cookie(server, "alice", users.session_stamp("alice") or "")
    assert b'value="approve"' in server.handle(_authorize(fresh)).body
    users.remove("alice")
    assert b'name="password"' in server.handle(_authorize(fresh)).body
    users.add("alice", "a new long enough password")
    assert b'name="password"' in server.handle(_authorize(fresh)).body  # re-added: no old session revives


def test_users_unreachable_while_checking_a_session_is_503() -> None:
    server, user_store = _session_server()
    stamp = server.users.session_stamp("alice")  # type: ignore[union-attr]
    cookie = _session_cookie(server, "alice", stamp or "")
    user_store.down = True
    for r in (server.handle(_authorize(cookie)), asyncio.run(server.ahandle(_authorize(cookie)))):
        assert r.status == 503 and r.json() == {"error": "temporarily_unavailable"}


class _Counting(MemoryStore):
    """A memory store that counts key-set reads (a subclass: not taken as non-blocking)."""

    def __init__(self) -> None:
        super().__init__()
        self.key_reads = 0

    def perform(self, effect: Any) -> Any:
        from kavach_core import effects as fx

        if isinstance(effect, fx.GetSigningKeys):
            self.key_reads += 1
        return super().perform(effect)


def _guarded(store: MemoryStore, clock: list[float], **kw: Any) -> tuple[AuthorizationServer, str]:
    import random

    from kavach_core import access_tokens, keys
    from kavach_core.context import Context
    from kavach_core.drivers import run
    from kavach_core.records import Grant

    server = _server(store, clock=lambda: clock[0], **kw)
    now = int(clock[0])
    ctx = Context(server.config, now, random.Random(3).randbytes)
    pair = run(keys.current(ctx), store).signer(now, server.config.signing_alg)
    store.grants["g"] = Grant(
        grant_id="g",
        subject="alice",
        client_id="c1",
        resources=(RESOURCE,),
        scopes=("tools:list",),
        created_at=now,
        expires_at=now + 3600,
        refresh_generation=0,
        refresh_hash="x",
        refresh_expires_at=now + 3600,
        rotated_at=now,
    )
    token, _ = access_tokens.mint(
        ctx, pair, subject="alice", client_id="c1", resource=RESOURCE, scopes=("tools:list",), grant_id="g"
    )
    return server, f"Bearer {token}"


@pytest.mark.parametrize("ttl", [0, 1, 5])
def test_guards_read_the_keys_once_per_keyring_ttl_and_revocation_every_time(ttl: int) -> None:
    from kavach_core.guard import Principal

    store, clock = _Counting(), [1_700_000_000.5]
    server, header = _guarded(store, clock, keyring_ttl=ttl)
    reads = store.key_reads
    for _ in range(3):
        assert isinstance(server.guard_values(RESOURCE, [header], ("tools:list",)), Principal)
        assert isinstance(asyncio.run(server.aguard_values(RESOURCE, [header], ("tools:list",))), Principal)
    assert store.key_reads - reads == (6 if ttl == 0 else 1)
    clock[0] += max(ttl, 1)
    assert isinstance(server.guard_values(RESOURCE, [header], ()), Principal)
    assert store.key_reads - reads == (7 if ttl == 0 else 2)
    from kavach_core import effects as fx

    store.perform(fx.RevokeGrant("g", int(clock[0])))
    assert server.guard_values(RESOURCE, [header], ()).status == 401  # type: ignore[union-attr]
    assert asyncio.run(server.aguard_values(RESOURCE, [header], ())).status == 401  # type: ignore[union-attr]


def test_guard_values_refuses_two_authorization_values() -> None:
    server, header = _guarded(MemoryStore(), [1_700_000_000.0])
    assert server.guard_values(RESOURCE, [header, header], ()).status == 400  # type: ignore[union-attr]
    assert asyncio.run(server.aguard_values(RESOURCE, [header], ())).__class__.__name__ == "Principal"


class _NoSessionEnds(MemoryStore):
    """A memory store that cannot record the end of a session (as in an outage); all else works."""

    def perform(self, effect: Any) -> Any:
        if isinstance(effect, fx.EndSession):
            raise StoreUnavailable("the store is read-only")
        return super().perform(effect)


@pytest.mark.parametrize(
    ("issuer", "path", "ends", "recorded"),
    [
        ("https://auth.example.com", "/authorize/cb", False, True),  # __Host- cookies: this origin only
        ("http://127.0.0.1:8000", "/cb", True, True),  # under http every redirect away ends it
        ("http://127.0.0.1:8000", "/authorize/cb", True, True),
        ("http://127.0.0.1:8000", "/authorize/cb", True, False),  # the store cannot record the end
    ],
)
def test_the_sign_in_ends_at_a_redirect_its_cookies_would_reach(
    issuer: str, path: str, ends: bool, recorded: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot record the end of the session does not hold up the answer: the
    redirect goes out, the cookie cleared, and the outage is logged."""
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "a long enough password")
    server = AuthorizationServer(make_config(issuer=issuer), MemoryStore() if recorded else _NoSessionEnds(),
                                 users=users)  # fmt: skip
    redirect = "http://127.0.0.1:9999" + path
    registered = server.handle(
        HttpRequest(
            "POST",
            "/register",
            headers=[("Content-Type", "application/json")],
            body=b'{"redirect_uris": ["%s"], "token_endpoint_auth_method": "none"}' % redirect.encode(),
        )
    )
    assert registered.status == 201, registered.body
    session_id = secrets.token_bytes(16)
    _, value = server.cookies.session_cookie("alice", users.session_stamp("alice") or "", int(time.time()), session_id)
    cookie = ("Cookie", value.split(";")[0])
    query = (
        ("response_type", "code"),
        ("client_id", registered.json()["client_id"]),
        ("redirect_uri", redirect),
        ("scope", "no-such-scope"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
        ("state", "s"),
    )
    answer = server.handle(HttpRequest("GET", "/authorize", query, headers=[cookie]))
    assert answer.status in (302, 303) and (answer.header("Location") or "").startswith(redirect + "?error=")
    cleared = [v for k, v in answer.headers if k == "Set-Cookie" and server.cookies.session_name + "=;" in v]
    assert len(cleared) == int(ends), answer.headers
    ended = server.store.perform(fx.IsSessionEnded(hashlib.sha256(session_id).hexdigest()))
    assert ended is (ends and recorded), "a session cleared there is ended too"
    if not ends:  # https: the session goes on serving authorizations
        valid = tuple(p for p in query if p[0] != "scope")
        page = server.handle(HttpRequest("GET", "/authorize", valid, headers=[cookie]))
        assert b'value="approve"' in page.body
    assert ("EndSession not recorded" in caplog.text) is not recorded
    # Without a session cookie in the request there is nothing to clear.
    answer = server.handle(HttpRequest("GET", "/authorize", query))
    assert not [v for k, v in answer.headers if k == "Set-Cookie"], answer.headers


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/authorize/cb?x=1",
        "https://127.0.0.1:9/authorize/cb",
        "http://127.0.0.1:9/cb",  # outside the cookies' path: its page can send the browser on under it
        "http://localhost:9/authorize/cb",  # another host: its page can send the browser back to this one
        "com.example.app:/authorize/cb",
        "not a url at all",
    ],
)
def test_under_an_http_issuer_every_redirect_away_may_hand_the_cookies_on(url: str) -> None:
    """Under http the cookies reach every port of the issuer's host (RFC 6265 §8.5) and any page a
    redirect leads to can send the browser there, so every redirect away ends the session; under
    https (``__Host-``, ``Secure``) none does."""
    assert Cookies(make_config(issuer="http://127.0.0.1:8000")).reach(url) is True
    assert Cookies(make_config(issuer="https://127.0.0.1:8000")).reach(url) is False


def test_under_an_http_issuer_with_a_path_the_cookies_follow_it() -> None:
    cookies = Cookies(make_config(issuer="http://127.0.0.1:8000/tenant"))
    assert cookies.path == "/tenant/authorize"
    assert "; Path=/tenant/authorize;" in cookies.session_cookie("alice", "s", 0, SESSION_ID)[1]


def test_a_large_body_is_read_only_once_the_token_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """``guard_body``/``aguard_body``: a body over THREADED_BODY from a caller without a valid
    token is answered (401, the resource's default scopes) without its methods being read; with
    a valid token they are, and decide (403 naming them, or the principal). A small body's
    methods are read first, so its 401 names them."""
    from kavach.server import THREADED_BODY

    from kavach_core.guard import Principal

    server, header = _guarded(MemoryStore(), [time.time()])
    reads: list[int] = []
    real = server.body_scopes
    monkeypatch.setattr(server, "body_scopes", lambda body: reads.append(len(body)) or real(body))

    def body(method: str, size: int) -> bytes:
        message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "t", "pad": "x" * size}}
        return json.dumps(message).encode()

    large_list, large_call, small_call = body("tools/list", THREADED_BODY), body("tools/call", THREADED_BODY), \
        body("tools/call", 10)  # fmt: skip
    default = " ".join(server.config.resources[0].default_scopes)
    for guard in (server.guard_body, lambda *a: asyncio.run(server.aguard_body(*a))):
        reads.clear()
        for authorization in ([], ["Bearer not.a.token"]):
            answer = guard(RESOURCE, authorization, large_call)
            assert answer.status == 401 and f'scope="{default}"' in answer.header("WWW-Authenticate")
        assert reads == [], "no token, no reading of a large body"
        answer = guard(RESOURCE, [], small_call)
        assert answer.status == 401 and 'scope="tools:call:t"' in answer.header("WWW-Authenticate")
        answer = guard(RESOURCE, [header], large_call)  # the token has tools:list only
        assert answer.status == 403 and 'scope="tools:call:t"' in answer.header("WWW-Authenticate")
        assert isinstance(guard(RESOURCE, [header], large_list), Principal)
        assert len(reads) == 3


class _RemovedWhileApproving(MemoryStore):
    """A store during whose storing of a code the person's account is removed, as ``kavach users
    remove`` running at that moment does: after the approval checked the session, before it answers."""

    def __init__(self, users: Users) -> None:
        super().__init__()
        self.users = users
        self.removing = True

    def perform(self, effect: Any) -> Any:
        out = super().perform(effect)
        if isinstance(effect, fx.PutCode) and self.removing:
            self.users.remove(effect.code.subject)
        return out

    async def aperform(self, effect: Any) -> Any:
        return self.perform(effect)


@pytest.mark.parametrize("removing", [True, False], ids=["removed meanwhile", "not removed"])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_an_approval_whose_session_ends_while_it_is_made_sends_no_code(removing: bool, driver: str) -> None:
    """The removal of an account revokes its codes, then removes it; an approval whose session was
    checked before that removal may store its code after those codes were revoked. The session is
    checked again once the code is stored, and when it has ended the code is never sent (only its
    hash is kept: nobody can redeem it), so no grant outlives the account."""
    from urllib.parse import urlencode

    from person import forms

    from kavach_core.records import Client

    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "a long enough password")
    store = _RemovedWhileApproving(users)
    store.removing = removing
    store.clients["c1"] = Client("c1", ("https://app.example.com/cb",), client_name="App")
    server = _server(store, users=users)
    handle = server.handle if driver == "sync" else lambda req: asyncio.run(server.ahandle(req))
    session = _session_cookie(server, "alice", users.session_stamp("alice") or "")
    page = handle(_authorize(session))
    assert page.status == 200 and b'value="approve"' in page.body
    cookies = "; ".join([session, *(v.split(";")[0] for k, v in page.headers if k == "Set-Cookie")])
    form = next(f for f in forms(page.body.decode()) if f.method == "post")
    answer = handle(
        HttpRequest(
            "POST",
            form.action,
            headers=[("Cookie", cookies), ("Content-Type", "application/x-www-form-urlencoded")],
            body=urlencode([*form.fields, ("decision", "approve")]).encode(),
        )
    )
    assert len(store.codes) == 1  # the code was stored either way
    location = answer.header("Location") or ""
    if removing:
        assert answer.status == 403 and b"Start again" in answer.body, answer.body
        assert "code=" not in location and b"code=" not in answer.body
    else:
        assert answer.status == 303 and location.startswith("https://app.example.com/cb?code="), answer.headers
