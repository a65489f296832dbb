"""Rules of :mod:`kavach.server` the other tests leave open: the sign-in form's rate limits and
decisions, the consent form's decisions, the headers kept on error pages, the answers and log
line of a failing store, and :meth:`AuthorizationServer.protected`'s refusals.

Driven in this process through :meth:`AuthorizationServer.handle` and ``ahandle``, as every
framework adapter calls them, with the browser of ``test_http_issuer_sessions``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import kavach.server as kavach_server
import pytest
from conftest import make_config
from failing_stores import BrokenStore, DownStore
from kavach.server import AuthorizationServer, LoginLimits
from person import forms
from test_http_issuer_sessions import CALLBACK, HTTP, HTTPS, SESSION_ID, Browser, _server, consents, signs_in

from kavach_core import effects as fx
from kavach_core.http import HttpRequest, Response
from kavach_core.memory_store import MemoryStore

PASSWORD = "a long enough password"


class _OnEventLoop:
    """``server`` answering through :meth:`AuthorizationServer.ahandle`, as the async adapters
    (Starlette, aiohttp) call it; everything else read from ``server`` itself."""

    def __init__(self, server: AuthorizationServer) -> None:
        self._server = server

    def handle(self, req: HttpRequest) -> Response:
        return asyncio.run(self._server.ahandle(req))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


def test_a_sign_in_refused_for_a_full_password_queue_gives_its_account_attempt_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sign-in answered 503 because every password-check place is taken ran no check, so it
    leaves the account's count as it found it (OWASP Authentication Cheat Sheet, "Account
    Lockout": only checked attempts count): with ``per_user=2``, a failure, a busy refusal and
    a second failure are all checked, and only the attempt after them is 429."""
    server = _server(HTTPS)
    server.login_limits = LoginLimits(per_user=2, per_address=100)
    person = Browser(_OnEventLoop(server))  # type: ignore[arg-type]
    page = person.authorize()
    assert signs_in(page)
    failed = person.submit(page, username="alice", password="wrong")
    assert signs_in(failed) and b"did not match" in failed.body
    full = threading.BoundedSemaphore(1)
    assert full.acquire(blocking=False)
    monkeypatch.setattr(kavach_server, "_password_slots", full)
    busy = person.submit(failed, username="alice", password=PASSWORD)
    assert busy.status == 503 and busy.header("Retry-After") == str(kavach_server.PASSWORDS_BUSY_RETRY)
    full.release()
    again = person.submit(busy, username="alice", password="wrong")
    assert signs_in(again) and b"did not match" in again.body, "the busy refusal took none of the two attempts"
    limited = person.submit(again, username="alice", password=PASSWORD)
    assert limited.status == 429 and not consents(limited)


def _redirecting_router(status: int, location: str) -> Any:
    """A router (``AuthorizationServer(router=...)``) answering every request with ``status`` and
    ``location`` (none when empty)."""

    def router(ctx: Any, req: HttpRequest) -> Any:
        return Response(status, (("Location", location),) if location else (), b"")
        yield  # a generator, as every router is

    return router


@pytest.mark.parametrize(
    ("status", "location", "away"),
    [
        *((status, "http://127.0.0.1:9/cb", True) for status in (301, 302, 303, 307, 308)),
        (303, "//127.0.0.1:9/cb", True),  # scheme-relative: another origin (RFC 3986 §4.2)
        (303, "/authorize/consent?ticket=t", False),  # kavach's own page
        (300, "http://127.0.0.1:9/cb", False),  # no redirect (RFC 9110 §15.4.1)
        (304, "http://127.0.0.1:9/cb", False),
        (302, "", False),  # a redirect status without a Location sends the browser nowhere
    ],
)
def test_under_http_every_redirect_status_away_ends_the_session(status: int, location: str, away: bool) -> None:
    """Under an http issuer a redirect away from kavach (any of RFC 9110 §15.4's redirect
    statuses, to an absolute or a scheme-relative URL) ends the session its request carries
    (RFC 6265 §8.5: the page there can hand the cookies on); kavach's own paths and answers
    that are no redirect keep it."""
    server = _server(HTTP)
    server.router = _redirecting_router(status, location)
    stamp = server.users.session_stamp("alice")  # type: ignore[union-attr]
    assert stamp is not None
    now = int(server.clock())
    cookie = server.cookies.session_cookie("alice", stamp, now, SESSION_ID, "t")[1].split(";")[0]
    session = server.cookies.session(dict([cookie.split("=", 1)]), now)
    assert session is not None
    answer = server.handle(HttpRequest("GET", "/elsewhere", (), [("Cookie", cookie)]))
    assert answer.status == status and answer.header("Location") == (location or None)
    cleared = [v for k, v in answer.headers if k == "Set-Cookie" and v.startswith(server.cookies.session_name + "=;")]
    assert len(cleared) == int(away), answer.headers
    assert server.store.perform(fx.IsSessionEnded(session.session_hash)) is away


def test_a_limited_sign_in_form_still_names_the_client() -> None:
    """The 429 sign-in form (OWASP ASVS 5.0 §6.1.1: a locked account) is the same request's form
    again: it still names the client asking (AZ-11: the person sees who asks), not a stand-in."""
    server = _server(HTTPS)
    server.login_limits = LoginLimits(per_user=1, per_address=100)
    person = Browser(server)
    page = person.authorize()
    assert b"Native tool" in page.body
    failed = person.submit(page, username="alice", password="wrong")
    limited = person.submit(failed, username="alice", password="wrong")
    assert limited.status == 429 and b'name="password"' in limited.body
    assert b"Native tool" in limited.body and b"the application" not in limited.body


@pytest.mark.parametrize("name", ["ticket", "csrf_token", "decision"])
def test_a_consent_form_field_given_twice_is_400_and_decides_nothing(name: str) -> None:
    """A consent form whose ``ticket``, ``csrf_token`` or ``decision`` comes twice cannot be read
    as one answer (RFC 6749 §3.1: parameters must not be included more than once): 400
    ``invalid_request`` page, no redirect, no code, and the request still pending, so the form
    sent as it is then approves."""
    server = _server(HTTPS)
    person = Browser(server)
    page = person.submit(person.authorize(), username="alice", password=PASSWORD)
    assert consents(page)
    form = next(f for f in forms(page.body.decode()) if f.method == "post")
    fields = [*form.fields, ("decision", "approve")]
    twice = [*fields, *((k, v) for k, v in fields if k == name)]
    refused = person.post(form.action, twice)
    assert refused.status == 400 and refused.header("Location") is None
    assert b"invalid_request" in refused.body and b"more than once" in refused.body
    assert not server.store.codes and len(server.store.pending) == 1
    approved = person.post(form.action, fields)
    assert (approved.header("Location") or "").startswith(CALLBACK + "?code=")


@pytest.mark.parametrize("name", ["ticket", "csrf_token", "username", "password", "decision"])
def test_a_sign_in_form_field_given_twice_is_400_and_signs_no_one_in(name: str) -> None:
    """The sign-in form read the same way (RFC 6749 §3.1's rule, kept by kavach's own forms): a
    field given twice is a 400 ``invalid_request`` page, with no session cookie and no answer to
    the client; the form sent as it is then signs in."""
    server = _server(HTTPS)
    person = Browser(server)
    page = person.authorize()
    form = next(f for f in forms(page.body.decode()) if f.method == "post")
    fields = [(k, {"username": "alice", "password": PASSWORD}.get(k, v)) for k, v in form.fields]
    if name == "decision":  # Cancel pressed twice is no answer either
        twice = [*fields, ("decision", "deny"), ("decision", "deny")]
    else:
        twice = [*fields, (name, dict(fields)[name])]
    refused = person.post(form.action, twice)
    assert refused.status == 400 and refused.header("Location") is None
    assert b"invalid_request" in refused.body and b"more than once" in refused.body
    assert server.cookies.session_name not in person.cookies and len(server.store.pending) == 1
    assert consents(person.post(form.action, fields))


def test_a_consent_link_with_a_parameter_given_twice_is_400() -> None:
    """The page after sign-in (``?ticket=&link=``) given ``ticket`` twice: 400 ``invalid_request``,
    no form to answer with."""
    server = _server(HTTPS)
    person = Browser(server)
    page = person.authorize()
    ticket = dict(next(f for f in forms(page.body.decode()) if f.method == "post").fields)["ticket"]
    link = server.cookies.csrf_token(person.cookies[server.cookies.browser_name], "consent-link", ticket)
    refused = person.get(server.consent_path, [("ticket", ticket), ("ticket", ticket), ("link", link)])
    assert refused.status == 400 and b"invalid_request" in refused.body and b"more than once" in refused.body
    assert b'name="decision"' not in refused.body and b'name="password"' not in refused.body
    assert signs_in(person.get(server.consent_path, [("ticket", ticket), ("link", link)]))


def _answering_router(answer: Response) -> Any:
    """A router (``AuthorizationServer(router=...)``) answering every request with ``answer``."""

    def router(ctx: Any, req: HttpRequest) -> Any:
        return answer
        yield  # a generator, as every router is

    return router


def test_a_core_error_page_is_shown_as_kavachs_page_keeping_allow_retry_after_and_set_cookie() -> None:
    """An error page of the core (a :class:`~kavach_core.http.ErrorView`) is drawn again as
    kavach's own page (the pages' CSP and headers, AZ-10), status and error code kept; of the
    core's headers only those that still mean something travel with it: ``Allow`` (RFC 9110
    §15.5.6: a 405 must have it), ``Retry-After`` (RFC 9110 §10.2.3) and ``Set-Cookie``."""
    from kavach_core.http import error_page

    server = _server(HTTPS)
    core = error_page(429, "slow_down", "Wait a little.").with_headers(
        (("Allow", "GET"), ("Retry-After", "7"), ("Set-Cookie", "kept=1; Path=/"), ("X-Core-Only", "1"))
    )
    server.router = _answering_router(core)
    answer = server.handle(HttpRequest("GET", "/authorize"))
    assert answer.status == 429 and answer.view is None
    assert b"This request cannot continue" in answer.body and b"slow_down" in answer.body
    assert b"Wait a little." in answer.body
    assert answer.header("Allow") == "GET" and answer.header("Retry-After") == "7"
    assert answer.header("Set-Cookie") == "kept=1; Path=/" and answer.header("X-Core-Only") is None
    assert "frame-ancestors 'none'" in (answer.header("Content-Security-Policy") or "")
    assert [v for k, v in answer.headers if k.lower() == "content-type"] == ["text/html; charset=utf-8"]


def test_without_local_users_the_sign_in_form_is_404_and_signs_no_one_in() -> None:
    """A server whose people sign in with the application (``identify=`` only) has no sign-in
    form: a POST to its path is a 404 page (RFC 9110 §15.5.5), whatever it carries, with no
    session cookie, no redirect and no answer to the client, Cancel included."""
    from kavach_core.memory_store import MemoryStore
    from kavach_core.records import Client

    store = MemoryStore()
    store.clients["c1"] = Client("c1", (CALLBACK,), client_name="Native tool")
    server = AuthorizationServer(_server(HTTPS).config, store, identify=lambda request: None)
    person = Browser(server)
    page = person.authorize()
    assert page.status == 401 and len(store.pending) == 1
    ticket = "t" * 43
    browser = server.cookies.browser_name
    person.cookies[browser] = "b" * 43
    token = server.cookies.csrf_token(person.cookies[browser], "login", ticket)
    for decision in ((), (("decision", "deny"),)):
        form = [("ticket", ticket), ("csrf_token", token), ("username", "alice"), ("password", PASSWORD), *decision]
        answer = person.post(server.login_path, form)
        assert answer.status == 404 and answer.header("Location") is None, answer.body
        assert b"not enabled" in answer.body and not [k for k, _ in answer.headers if k == "Set-Cookie"]
    assert len(store.pending) == 1


def test_a_sign_in_form_without_a_ticket_is_refused_as_not_sent_from_the_page() -> None:
    """A sign-in POST naming no ticket cannot carry a CSRF token made for one: 403, as any form
    not sent from the page (AZ-10), never a server error, and no password is checked."""
    server = _server(HTTPS)
    person = Browser(server)
    page = person.authorize()
    form = dict(next(f for f in forms(page.body.decode()) if f.method == "post").fields)
    refused = person.post(server.login_path, [("csrf_token", form["csrf_token"]), ("username", "alice"),
                                              ("password", PASSWORD)])  # fmt: skip
    assert refused.status == 403 and b"not sent from this page" in refused.body
    assert server.cookies.session_name not in person.cookies


def test_a_sign_in_form_without_a_password_is_a_failed_sign_in() -> None:
    """A sign-in POST whose ``password`` field is missing is a wrong password (the form again,
    saying so), never a server error; no session is started."""
    server = _server(HTTPS)
    person = Browser(server)
    page = person.authorize()
    form = [
        (k, v) for k, v in next(f for f in forms(page.body.decode()) if f.method == "post").fields if k != "password"
    ]
    failed = person.post(server.login_path, [(k, "alice" if k == "username" else v) for k, v in form])
    assert signs_in(failed) and b"did not match" in failed.body
    assert server.cookies.session_name not in person.cookies


class _Recording:
    """``server``, keeping each request it is handed."""

    def __init__(self, server: AuthorizationServer) -> None:
        self._server = server
        self.requests: list[HttpRequest] = []

    def handle(self, req: HttpRequest) -> Response:
        self.requests.append(req)
        return self._server.handle(req)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


@pytest.mark.parametrize("notice", [None, "expired", "<b>failed</b>", "FAILED"])
def test_the_sign_in_page_says_the_password_did_not_match_only_after_a_failed_attempt(notice: str | None) -> None:
    """The consent link a failed sign-in redirects to carries ``notice=failed``, and only that
    value shows the failure: the same link without it, or with any other value, shows the plain
    sign-in form (the notice is never echoed)."""
    recording = _Recording(_server(HTTPS))
    person = Browser(recording)  # type: ignore[arg-type]
    failed = person.submit(person.authorize(), username="alice", password="wrong")
    assert signs_in(failed) and b"did not match" in failed.body
    shown = recording.requests[-1]
    assert shown.method == "GET" and ("notice", "failed") in shown.query
    query = [(k, v) for k, v in shown.query if k != "notice"] + ([("notice", notice)] if notice else [])
    page = person.get(shown.path, query)
    assert signs_in(page) and b"did not match" not in page.body and b"expired" not in page.body
    assert notice is None or notice.encode() not in page.body


def test_incoming_reads_a_text_query_holding_escaped_octets_as_those_octets() -> None:
    """A framework may hand the query over as text whose octets beyond UTF-8 are kept as
    surrogate escapes (``surrogateescape``); ``incoming`` reads it as the same octets would be
    read as bytes, so a ``state`` that is not UTF-8 reaches the core as unreadable (RFC 3986
    §2.5, RFC 6749 §4.1.2) instead of failing the request while it is built."""
    from kavach.server import incoming

    from kavach_core.params import query_params

    as_text = incoming("GET", "/authorize", "state=\udcff&x=%C3%A9", [], b"", None)
    as_bytes = incoming("GET", "/authorize", b"state=\xff&x=%C3%A9", [], b"", None)
    assert as_text.query == as_bytes.query
    params = query_params(as_text)
    assert params.unreadable == frozenset({"state"}) and params.get("x") == "\u00e9"


def test_on_an_event_loop_a_user_lookup_runs_in_a_worker_thread_and_a_password_check_in_the_password_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under :meth:`AuthorizationServer.ahandle` a blocking step never runs on the event loop: the
    session's user lookup (``session_stamp``) runs in a worker thread, and only a password check
    (``sign_in``) runs in the password threads (:func:`kavach.server.password_threads`), so the
    lookups of every request never wait behind scrypt."""
    server = _server(HTTPS)
    loop_thread = threading.current_thread()  # asyncio.run runs the loop in this thread
    ran: dict[str, list[threading.Thread]] = {"sign_in": [], "session_stamp": []}
    for name in ran:
        real = getattr(server.users, name)

        def recording(*args: Any, _real: Any = real, _name: str = name) -> Any:
            ran[_name].append(threading.current_thread())
            return _real(*args)

        monkeypatch.setattr(server.users, name, recording)
    person = Browser(_OnEventLoop(server))  # type: ignore[arg-type]
    page = person.authorize()
    assert signs_in(page)
    signed = person.submit(page, username="alice", password=PASSWORD)
    assert consents(signed)
    assert ran["sign_in"] and ran["session_stamp"]
    assert all(t.name.startswith("kavach-password") for t in ran["sign_in"])
    assert all(t is not loop_thread for t in ran["session_stamp"]), "a user lookup ran on the event loop"
    assert not any(t.name.startswith("kavach-password") for t in ran["session_stamp"])


def test_an_async_identify_hook_under_a_synchronous_server_fails_the_request_and_signs_no_one_in() -> None:
    """A synchronous server (:meth:`AuthorizationServer.handle`, Flask) cannot await an async
    ``identify`` hook: the request fails (500 ``server_error``) rather than taking the hook's
    un-awaited coroutine, which is truthy, as the signed-in subject; here the hook would say
    no one is signed in, and no consent page may be shown."""

    async def nobody(req: HttpRequest) -> str | None:
        return None

    server = _server(HTTPS)
    server.identify = nobody
    answer = Browser(server).authorize()
    assert answer.status == 500 and answer.json() == {"error": "server_error"}
    assert not consents(answer)


def test_an_async_identify_hook_refused_by_a_synchronous_server_leaves_no_coroutine_unawaited() -> None:
    """The coroutine the refused hook made is closed where it is refused, so no "never awaited"
    warning surfaces later, far from its cause (whenever the error's traceback is let go)."""
    import inspect

    async def nobody(req: HttpRequest) -> str | None:
        return None

    made: list[Any] = []

    def hook(req: HttpRequest) -> Any:
        made.append(nobody(req))
        return made[-1]

    server = _server(HTTPS)
    server.identify = hook
    assert Browser(server).authorize().status == 500
    assert made and all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in made)


@pytest.mark.parametrize("on_loop", [False, True], ids=["returning", "awaitable"])
def test_on_an_event_loop_the_identify_hook_s_subject_is_signed_in(on_loop: bool) -> None:
    """Under :meth:`AuthorizationServer.ahandle` the application's ``identify`` hook may be a
    plain function or an async one; the subject it gives, awaited when it is awaitable, is the
    person signed in, whose consent page is shown."""
    seen: list[HttpRequest] = []

    def plain(req: HttpRequest) -> str:
        seen.append(req)
        return "bob"

    async def awaitable(req: HttpRequest) -> str:
        return plain(req)

    server = _server(HTTPS)
    server.identify = awaitable if on_loop else plain
    page = Browser(_OnEventLoop(server)).authorize()  # type: ignore[arg-type]
    assert seen and page.status == 200 and b'value="approve"' in page.body
    assert b"Signed in as <strong>bob</strong>" in page.body


# -- building the server, and answering when the store fails (server.py: failure_response to protected)


def _failing(store: Any) -> AuthorizationServer:
    return AuthorizationServer(make_config(), store, identify=lambda request: None)


@pytest.mark.parametrize("on_loop", [False, True], ids=["handle", "ahandle"])
def test_a_failure_answer_is_never_cached_and_only_an_outage_says_when_to_retry(on_loop: bool) -> None:
    """GN-03: the 503 of a store that is down and the 500 of anything else are both
    ``Cache-Control: no-store`` (no cache may keep an answer about a passing failure, RFC 9111
    §5.2.2.5); the 503 says ``Retry-After: 5`` (RFC 9110 §10.2.3), the 500 names no time."""
    jwks = HttpRequest("GET", "/jwks.json")
    for store, status, retry in ((DownStore(), 503, "5"), (BrokenStore(), 500, None)):
        server = _failing(store)
        answer = asyncio.run(server.ahandle(jwks)) if on_loop else server.handle(jwks)
        assert answer.status == status, answer.body
        assert answer.header("Cache-Control") == "no-store"
        assert answer.header("Retry-After") == retry


def test_a_store_outage_is_logged_as_a_warning_naming_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """The operator learns why requests get 503: one warning on the ``kavach`` logger carrying the
    store's own reason (no stack trace: an outage is expected, not a bug)."""
    with caplog.at_level(logging.WARNING, logger="kavach"):
        assert _failing(DownStore()).handle(HttpRequest("GET", "/jwks.json")).status == 503
    warnings = [r for r in caplog.records if r.name == "kavach" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["store unavailable: database is locked"]
    assert warnings[0].exc_info is None


def test_protected_tells_a_value_that_is_no_resource_uri_from_an_unconfigured_resource() -> None:
    """RS-05: :meth:`AuthorizationServer.protected` refuses with ``ValueError`` both a value that
    is no resource URI (RFC 8707 §2: absolute, no fragment) and a URI no protected resource has,
    and its message says which of the two it was."""
    server = _failing(MemoryStore())
    for value in ("mcp.example.com/mcp", "https://mcp.example.com/mcp#top"):
        with pytest.raises(ValueError, match=f"^{re.escape(repr(value))} is not a resource URI$") as refused:
            server.protected(value)
        assert isinstance(refused.value.__cause__, ValueError)
    elsewhere = "https://elsewhere.example/mcp"
    with pytest.raises(ValueError, match=f"^{re.escape(repr(elsewhere))} is not one of the configured protected"):
        server.protected(elsewhere)


def test_documents_enabled_and_no_fetcher_given_means_the_default_public_hosts_only_fetcher() -> None:
    """CM-02: a server whose configuration enables client ID metadata documents and that is given
    no ``fetcher`` fetches with a :class:`~kavach.fetcher.DocumentFetcher` of the default policy
    (public hosts only, never loopback); with documents disabled it has no fetcher at all."""
    from kavach.fetcher import DocumentFetcher, FetchPolicy

    server = AuthorizationServer(make_config(), MemoryStore(), identify=lambda request: None)
    try:
        assert isinstance(server.fetcher, DocumentFetcher)
        assert server.fetcher.policy == FetchPolicy() and not server.fetcher.policy.allow_loopback
    finally:
        server.fetcher.close()
    config = make_config(client_id_metadata_documents=False)
    assert AuthorizationServer(config, MemoryStore(), identify=lambda request: None).fetcher is None


def test_a_router_given_answers_every_request_in_place_of_the_core_s() -> None:
    """``router=`` replaces the core's router (:func:`kavach_core.router.route`) for
    :meth:`AuthorizationServer.handle` and ``ahandle`` alike; it is not only kept as an attribute."""
    server = AuthorizationServer(
        make_config(), MemoryStore(), identify=lambda request: None, router=_redirecting_router(307, "/elsewhere")
    )
    jwks = HttpRequest("GET", "/jwks.json")
    for answer in (server.handle(jwks), asyncio.run(server.ahandle(jwks))):
        assert answer.status == 307 and answer.header("Location") == "/elsewhere"
