"""Under an http issuer a sign-in session serves one authorization; under https, many.

Without the ``__Host-`` prefix browsers send a host's cookies to every port of it (RFC 6265
§8.5), so a native client's loopback listener (RFC 8252 §7.3) on the issuer's host can collect
the session cookie: by sending the browser on from its redirect URI to a URL under the cookies'
path on its own port, or, as any local process can, by opening such a URL at any time. There
the session cookie is bound to the consent ticket it signed in for (a keyed digest of it), and
every redirect away from kavach ends the session. Under https (``__Host-``, ``Secure``) neither
applies and one sign-in answers any number of requests. Driven in this process through
:meth:`AuthorizationServer.handle`, as every framework adapter calls it (the same over real
HTTP and in Chromium: ``test_adapters_e2e``, ``test_browser``).
"""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from conftest import RESOURCE, make_config
from kavach.server import AuthorizationServer
from kavach.sessions import Cookies, parse_cookies
from kavach.users import MemoryUsers, Users
from person import Form, forms

from kavach_core import effects as fx
from kavach_core.http import CLIENT_ADDRESS_HEADER, HttpRequest, Response
from kavach_core.memory_store import MemoryStore
from kavach_core.records import Client

HTTP = "http://127.0.0.1:8000"
HTTPS = "https://as.example.com"
CALLBACK = "http://127.0.0.1:4711/callback"
SESSION_ID = bytes(range(16))


def _server(issuer: str) -> AuthorizationServer:
    users = Users(MemoryUsers(), log_n=10)
    users.add("alice", "a long enough password")
    store = MemoryStore()
    store.clients["c1"] = Client("c1", (CALLBACK,), client_name="Native tool")
    return AuthorizationServer(make_config(issuer=issuer), store, users=users)


class Browser:
    """A cookie jar in front of ``server.handle``, following kavach's own redirects as a browser
    would and stopping at the first one away from it (returned, not followed)."""

    def __init__(
        self, server: AuthorizationServer, cookies: dict[str, str] | None = None, address: str | None = None
    ) -> None:
        self.server = server
        self.cookies: dict[str, str] = dict(cookies or {})
        self.address = address
        """The peer address an adapter would pass on (``None``: unknown)."""

    def _send(self, req: HttpRequest) -> Response:
        answer = self.server.handle(req)
        for name, value in answer.headers:
            if name.lower() == "set-cookie":
                pair, _, attributes = value.partition(";")
                key, _, cookie = pair.partition("=")
                if "Max-Age=0" in attributes:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = cookie
        location = answer.header("location") or ""
        if answer.status in (302, 303) and location.startswith("/"):
            url = urlsplit(location)
            return self.get(url.path, parse_qsl(url.query, keep_blank_values=True))
        return answer

    def _cookie_header(self) -> list[tuple[str, str]]:
        peer = [(CLIENT_ADDRESS_HEADER, self.address)] if self.address else []
        return peer + ([("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))] if self.cookies else [])

    def get(self, path: str, query: list[tuple[str, str]]) -> Response:
        return self._send(HttpRequest("GET", path, query, self._cookie_header()))

    def authorize(self) -> Response:
        """A new authorization request of client ``c1``: a new consent ticket."""
        query = [("response_type", "code"), ("client_id", "c1"), ("redirect_uri", CALLBACK), ("state", "s"),
                 ("code_challenge", "E" * 43), ("code_challenge_method", "S256"), ("resource", RESOURCE)]  # fmt: skip
        return self.get("/authorize", query)

    def post(self, path: str, pairs: list[tuple[str, str]]) -> Response:
        headers = [*self._cookie_header(), ("Content-Type", "application/x-www-form-urlencoded")]
        return self._send(HttpRequest("POST", path, [], headers, urlencode(pairs).encode()))

    def submit(self, page: Response, **values: str) -> Response:
        """The page's form as a browser sends it, with ``values`` filled in or added."""
        form = _the_form(page)
        return self.post(form.action, [(k, values.pop(k, v)) for k, v in form.fields] + list(values.items()))


def _the_form(page: Response) -> Form:
    (form,) = [f for f in forms(page.body.decode()) if f.method == "post"]
    return form


def _ticket(page: Response) -> str:
    return dict(_the_form(page).fields)["ticket"]


def signs_in(page: Response) -> bool:
    return page.status == 200 and b'name="password"' in page.body and b'value="approve"' not in page.body


def consents(page: Response) -> bool:
    signed_in = b"Signed in as <strong>alice</strong>" in page.body
    return page.status == 200 and signed_in and b'value="approve"' in page.body


def _signed_in(browser: Browser) -> Response:
    """A new authorization, signed in with the password: its consent page."""
    page = browser.submit(browser.authorize(), username="alice", password="a long enough password")
    assert consents(page), page.body
    return page


def test_under_http_a_session_signed_in_for_one_ticket_is_refused_for_another() -> None:
    """Cookies copied from the person's browser while their request A is pending (a local
    process opened a URL of its own port under the cookies' path in that browser) cannot start
    and approve request B: B shows the sign-in page, and a decision for B posted with a valid
    CSRF token finds no one signed in and sends no code. A itself still works."""
    server = _server(HTTP)
    person = Browser(server)
    page_a = _signed_in(person)
    thief = Browser(server, person.cookies)
    page_b = thief.authorize()
    assert signs_in(page_b), "a session signed in for A is no session for B"
    ticket_b = _ticket(page_b)
    token = server.cookies.csrf_token(thief.cookies[server.cookies.browser_name], "consent", ticket_b)
    decision = [("ticket", ticket_b), ("csrf_token", token), ("decision", "approve"), ("scope", "tools:list")]
    forged = thief.post(server.decision_path, decision)
    assert signs_in(forged) and not server.store.codes, "not signed in for B: no code, the sign-in page again"
    answered = person.submit(page_a, decision="approve")
    assert answered.status in (302, 303) and (answered.header("location") or "").startswith(CALLBACK + "?code=")


def test_under_http_a_session_cookie_is_bound_to_its_ticket_by_a_digest() -> None:
    """The cookie made at sign-in carries a keyed digest of its ticket, never the ticket; one
    made for ticket A (or for none) signs no one in for B, however valid its signature."""
    server = _server(HTTP)
    stamp = server.users.session_stamp("alice")  # type: ignore[union-attr]
    assert stamp is not None
    person = Browser(server)
    page_b = person.authorize()
    ticket_b = _ticket(page_b)
    now = int(time.time())
    for ticket, serves in (("ticket-A", False), (None, False), (ticket_b, True)):
        value = server.cookies.session_cookie("alice", stamp, now, SESSION_ID, ticket)[1].split(";")[0]
        signed = value.split("=", 1)[1].split(".")[0]
        payload = base64.urlsafe_b64decode(signed + "=" * (-len(signed) % 4))
        assert b"ticket-A" not in payload and ticket_b.encode() not in payload
        with_session = Browser(server, {**person.cookies, **parse_cookies([value])})
        page = with_session.get(*_consent_link(server, with_session, ticket_b))
        assert consents(page) is serves and signs_in(page) is not serves, ticket


def _consent_link(server: AuthorizationServer, browser: Browser, ticket: str) -> tuple[str, list[tuple[str, str]]]:
    link = server.cookies.csrf_token(browser.cookies[server.cookies.browser_name], "consent-link", ticket)
    return server.consent_path, [("ticket", ticket), ("link", link)]


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_under_http_every_redirect_away_ends_the_session(decision: str) -> None:
    """The client's redirect URI is outside the cookies' path, yet its page can send the browser
    on to one inside it: the answer's redirect clears the cookie and records the session as
    ended, so a copy of the cookie taken before (the listener's, say) signs no one in, even for
    its own ticket."""
    server = _server(HTTP)
    person = Browser(server)
    page = _signed_in(person)
    copy = dict(person.cookies)
    session = server.cookies.session(copy, int(time.time()))
    assert session is not None
    answered = person.submit(page, decision=decision)
    assert (answered.header("location") or "").startswith(CALLBACK + "?")
    assert server.cookies.session_name not in person.cookies, "the cookie is cleared"
    assert server.store.perform(fx.IsSessionEnded(session.session_hash)), "and the session ended"
    assert signs_in(Browser(server, copy).authorize())
    assert signs_in(person.authorize()), "the next authorization asks for the password again"


def test_under_https_one_sign_in_serves_authorizations_in_a_row() -> None:
    """Unchanged under https: ``__Host-`` cookies, no ticket binding, nothing cleared at the
    redirect; the second request shows its consent page at once and is approved."""
    server = _server(HTTPS)
    person = Browser(server)
    page = _signed_in(person)
    for _ in range(2):
        answered = person.submit(page, decision="approve")
        assert (answered.header("location") or "").startswith(CALLBACK + "?code=")
        assert not [v for k, v in answered.headers if k.lower() == "set-cookie"]
        page = person.authorize()
        assert consents(page), "signed in still: no password asked"
    assert len(server.store.codes) == 2


def test_the_binding_is_read_under_http_only() -> None:
    """:meth:`Cookies.serves` and what :meth:`Cookies.reach` says for any URL, per scheme."""
    plain, secure = Cookies(make_config(issuer=HTTP)), Cookies(make_config(issuer=HTTPS))
    for url in (CALLBACK, "https://app.example.com/cb", "com.example.app:/cb", HTTP + "/elsewhere"):
        assert plain.reach(url) and not secure.reach(url), url
    for cookies in (plain, secure):
        value = cookies.session_cookie("alice", "s", 1000, SESSION_ID, "T1")[1].split(";")[0]
        session = cookies.session(parse_cookies([value]), 1001)
        assert session is not None
        assert cookies.serves(session, "T1")
        assert cookies.serves(session, "T2") is cookies.secure
        assert (session.ticket_digest == "") is cookies.secure, "https cookies carry no binding"


def test_sign_in_attempts_from_one_ipv6_64_share_the_address_limit() -> None:
    """The per-address sign-in limit counts an IPv6 client by its /64 (RFC 4291 §2.5.4), as every
    per-address limit does: changing the source address within it gains no attempt."""
    from kavach.server import LoginLimits

    server = _server(HTTPS)
    server.login_limits = LoginLimits(per_user=100, per_address=2)
    answers = []
    for host in range(1, 4):
        browser = Browser(server, address=f"2001:db8:7:8::{host:x}")
        answers.append(browser.submit(browser.authorize(), username="mallory", password="guess").status)
    assert answers[:2] == [200, 200] and answers[2] == 429, answers
    other = Browser(server, address="2001:db8:7:9::1")
    assert other.submit(other.authorize(), username="mallory", password="guess").status == 200


def test_an_identify_hook_naming_an_unusable_subject_fails_its_approval_and_stores_nothing() -> None:
    """An application's hook answering a subject no store keeps as given (over 255 characters
    here) is the application's error: the approval answers 500 and stores no code, and the
    consent ticket is not spent."""
    store = MemoryStore()
    store.clients["c1"] = Client("c1", (CALLBACK,), client_name="Native tool")
    server = AuthorizationServer(make_config(issuer=HTTPS), store, identify=lambda request: "x" * 256)
    person = Browser(server)
    page = person.authorize()
    assert page.status == 200 and b'value="approve"' in page.body
    answered = person.submit(page, decision="approve")
    assert answered.status == 500 and answered.json() == {"error": "server_error"}
    assert not store.codes and len(store.pending) == 1
