"""End to end over real HTTP: every framework adapter, the memory and the SQLite store.

httpx plays both the OAuth client and the person (who reads the HTML forms and submits them).
Add a framework by adding an entry to ``e2e_frameworks.FRAMEWORKS``; every test here then runs
against it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import httpx
import kavach.server as kavach_server
import pytest
from e2e_frameworks import FRAMEWORKS, RELEASE
from kavach.server import AuthorizationServer, LoginLimits
from kavach.sessions import parse_cookies
from kavach.users import MemoryUsers, SQLiteUsers, Users
from public_client import pkce

from kavach_core import effects as fx
from kavach_core.config import Config, ProtectedResource
from kavach_core.drivers import StoreUnavailable

PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/callback"
SECRET = b"s" * 32


# -- reading pages like a browser -------------------------------------------------------------


@attrs.define
class Form:
    action: str = ""
    method: str = "get"
    fields: list[tuple[str, str]] = attrs.Factory(list)
    checkboxes: list[tuple[str, str, bool]] = attrs.Factory(list)
    buttons: list[tuple[str, str]] = attrs.Factory(list)
    labelled: set[str] = attrs.Factory(set)
    ids: set[str] = attrs.Factory(set)

    def submit(self, button: str | None = None, **values: str) -> list[tuple[str, str]]:
        """The pairs a browser sends: hidden and text fields, ticked boxes, the pressed button."""
        data = [(n, values.pop(n, v)) for n, v in self.fields]
        data += [(n, v) for n, v, checked in self.checkboxes if checked]
        data += list(values.items())
        if button is not None:
            data += [(n, v) for n, v in self.buttons if v == button]
        return data


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.external: list[str] = []
        """What the page would load: any ``src``, and ``href`` but on a link the person follows."""
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs_}
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        for key in ("src", "href"):
            if key in a and tag != "a":
                self.external.append(a[key])
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif tag == "label" and self.forms:
            self.forms[-1].labelled.add(a.get("for", ""))
        elif tag == "input" and self.forms:
            form = self.forms[-1]
            kind = a.get("type", "text")
            if kind != "hidden":
                form.ids.add(a.get("id", ""))
            if kind == "checkbox":
                form.checkboxes.append((a["name"], a.get("value", "on"), "checked" in a))
            else:
                form.fields.append((a["name"], a.get("value", "")))
        elif tag == "button" and self.forms and "name" in a:
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))


def post_form(browser: httpx.Client, url: str, pairs: list[tuple[str, str]], **kw: Any) -> httpx.Response:
    """What a browser sends when a form is submitted (repeated names kept, in order)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", **kw.pop("headers", {})}
    return browser.post(url, content=urlencode(pairs), headers=headers, **kw)


def read_page(response: httpx.Response) -> _Forms:
    parser = _Forms()
    parser.feed(response.text)
    return parser


def the_form(response: httpx.Response) -> Form:
    forms = read_page(response).forms
    assert len(forms) == 1, response.text
    return forms[0]


# -- a running deployment ----------------------------------------------------------------------


@attrs.define
class Deployment:
    base: str
    issuer: str
    resource: str
    server: AuthorizationServer
    client: httpx.Client  # the OAuth client application
    person: httpx.Client  # the person's browser (keeps cookies)

    def metadata(self) -> dict[str, Any]:
        path = "/.well-known/oauth-authorization-server" + urlsplit(self.issuer).path
        return dict(self.client.get(self.base + path).json())

    def register(self, **extra: Any) -> str:
        body = {"redirect_uris": [REDIRECT], "client_name": "Test Client", "token_endpoint_auth_method": "none"}
        body.update(extra)
        r = self.client.post(self.metadata()["registration_endpoint"], json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["client_id"])

    def authorize_url(
        self, client_id: str, challenge: str, scope: str = "tools:list tools:call:echo", redirect_uri: str = REDIRECT
    ) -> str:
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": "xyz-state",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": self.resource,
        }
        return self.metadata()["authorization_endpoint"] + "?" + urlencode(query)

    def login(self, page: httpx.Response, username: str = "alice", password: str = PASSWORD) -> httpx.Response:
        form = the_form(page)
        return post_form(self.person, self.base + form.action, form.submit(username=username, password=password))

    def redeem(self, client_id: str, code: str, verifier: str, *, resource: bool = True) -> httpx.Response:
        """The token endpoint's answer to ``code`` with its PKCE verifier (RFC 6749 §4.1.3, RFC 7636
        §4.5), naming this deployment's resource (RFC 8707) unless ``resource`` is false."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        if resource:
            form["resource"] = self.resource
        return self.client.post(self.metadata()["token_endpoint"], data=form)

    def mcp(self, token: str | None, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        return self.client.post(self.resource, json=message, headers=headers)


def deploy(framework: str, store_kind: str, prefix: str, tmp_path: Any, **server_options: Any) -> Iterator[Deployment]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    resource = f"{base}/mcp"
    config = Config(issuer=base + prefix, resources=[ProtectedResource(resource, name="Demo tools")], secret=SECRET)
    if store_kind == "sqlite":
        from kavach.stores.sqlite import SQLiteStore

        path = str(tmp_path / "kavach.db")
        store: Any = SQLiteStore(path)
        users = Users(SQLiteUsers(path), log_n=10)
    else:
        from kavach_core.memory_store import MemoryStore

        store = MemoryStore()
        users = Users(MemoryUsers(), log_n=10)
    users.add("alice", PASSWORD)
    options: dict[str, Any] = {"users": users}
    options.update(server_options)
    server = AuthorizationServer(config, store, **options)
    stop = FRAMEWORKS[framework](sock, server, resource)
    with httpx.Client(timeout=10) as client, httpx.Client(timeout=10) as person:
        try:
            yield Deployment(base, config.issuer, resource, server, client, person)
        finally:
            stop()
            sock.close()


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dep(framework: str, tmp_path: Any) -> Iterator[Deployment]:
    yield from deploy(framework, "memory", "", tmp_path)


def consent_page(
    dep: Deployment, client_id: str | None = None, scope: str = "tools:list tools:call:echo"
) -> httpx.Response:
    """Register, start an authorization, sign in: the consent page."""
    client_id = client_id or dep.register()
    _, challenge = pkce()
    login = dep.person.get(dep.authorize_url(client_id, challenge, scope))
    assert login.status_code == 200
    after = dep.login(login)
    assert after.status_code == 303
    return dep.person.get(dep.base + after.headers["location"])


def signed_out_login(dep: Deployment, client_id: str) -> httpx.Response:
    """A new sign-in form for this browser, signed out first: a form served before a sign-in is
    void after it (the browser id it is bound to is replaced)."""
    dep.person.cookies.clear()
    login = dep.person.get(dep.authorize_url(client_id, pkce()[1]))
    assert login.status_code == 200 and 'name="password"' in login.text
    return login


# -- the whole journey -------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("prefix", ["", "/tenant/auth"])
def test_end_to_end(framework: str, store_kind: str, prefix: str, tmp_path: Any) -> None:
    """metadata -> registration -> login and consent through the forms -> token -> guarded MCP
    (tools/list allowed, tools/call outside the grant 403) -> refresh -> revoke -> 401."""
    for dep in deploy(framework, store_kind, prefix, tmp_path):
        # Discovery: the resource's metadata (MD-03) names the AS, whose metadata (MD-01) names the rest.
        anonymous = dep.mcp(None, "tools/list")
        assert anonymous.status_code == 401
        prm_url = f"{dep.base}/.well-known/oauth-protected-resource/mcp"
        assert f'resource_metadata="{prm_url}"' in anonymous.headers["www-authenticate"]
        prm = dep.client.get(prm_url).json()
        assert prm["resource"] == dep.resource
        assert prm["authorization_servers"] == [dep.issuer]
        meta = dep.metadata()
        assert meta["issuer"] == dep.issuer
        assert meta["authorization_endpoint"] == dep.issuer + "/authorize"

        client_id = dep.register()
        verifier, challenge = pkce()
        login = dep.person.get(dep.authorize_url(client_id, challenge))
        assert login.status_code == 200 and "Sign in" in login.text
        after_login = dep.login(login)
        assert after_login.status_code == 303
        consent = dep.person.get(dep.base + after_login.headers["location"])
        assert consent.status_code == 200
        assert "Test Client" in consent.text and "127.0.0.1" in consent.text
        form = the_form(consent)
        assert {v for _, v, _ in form.checkboxes} == {"tools:list", "tools:call:echo"}
        decided = post_form(dep.person, dep.base + form.action, form.submit("approve"))
        assert decided.status_code == 303
        location = decided.headers["location"]
        assert location.startswith(REDIRECT + "?")
        answer = parse_qs(urlsplit(location).query)
        assert answer["state"] == ["xyz-state"] and answer["iss"] == [dep.issuer]

        tokens = dep.redeem(client_id, answer["code"][0], verifier)
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert set(body["scope"].split()) == {"tools:list", "tools:call:echo"}

        listed = dep.mcp(body["access_token"], "tools/list")
        assert listed.status_code == 200, listed.text
        result = listed.json()["result"]
        assert result["subject"] == "alice"
        assert result["saw_authorization"] is False  # RS-04: the token is not passed on
        assert dep.mcp(body["access_token"], "tools/call", {"name": "echo"}).status_code == 200

        refused = dep.mcp(body["access_token"], "tools/call", {"name": "delete"})
        assert refused.status_code == 403
        assert refused.headers["www-authenticate"] == (
            'Bearer error="insufficient_scope", scope="tools:call:delete", '
            f'resource_metadata="{prm_url}", '
            'error_description="The access token does not grant the scope this request needs"'
        )

        refreshed = dep.client.post(
            meta["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client_id},
        )
        assert refreshed.status_code == 200, refreshed.text
        fresh = refreshed.json()
        assert dep.mcp(fresh["access_token"], "tools/list").status_code == 200

        revoked = dep.client.post(
            meta["revocation_endpoint"], data={"token": fresh["refresh_token"], "client_id": client_id}
        )
        assert revoked.status_code == 200
        after = dep.mcp(fresh["access_token"], "tools/list")
        assert after.status_code == 401
        assert 'error="invalid_token"' in after.headers["www-authenticate"]


# -- pages: headers, CSRF, 303, errors ---------------------------------------------------------


def assert_page_headers(r: httpx.Response) -> None:
    """AZ-10: no framing, no referrer, never cached, nothing from elsewhere, no CORS."""
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in r.headers
    if r.headers.get("content-type", "").startswith("text/html"):
        assert read_page(r).external == []
        assert "<script" not in r.text


def test_az_10_pages_headers_labels_and_no_external_resources(dep: Deployment) -> None:
    client_id = dep.register()
    login = dep.person.get(dep.authorize_url(client_id, pkce()[1]))
    assert_page_headers(login)
    form = the_form(login)
    assert form.method == "post"
    assert {"username", "password"} <= form.labelled and form.ids <= form.labelled
    consent = dep.person.get(dep.base + dep.login(login).headers["location"])
    assert_page_headers(consent)
    form = the_form(consent)
    assert form.ids <= form.labelled  # every checkbox has its label
    # both forms' 303 may lead to the client (Cancel on the sign-in form, Approve and Deny on the
    # consent form) and on wherever it sends the browser, which no form-action could list
    # (browsers check them all); the error page has no form and keeps form-action 'self'
    assert "form-action" not in login.headers["content-security-policy"]
    assert "form-action" not in consent.headers["content-security-policy"]
    error = dep.person.get(dep.authorize_url("nobody", pkce()[1]))
    assert error.status_code == 400 and "form-action 'self';" in error.headers["content-security-policy"]


def test_az_10_style_is_pinned_by_hash(dep: Deployment) -> None:
    login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
    style = login.text.split("<style>", 1)[1].split("</style>", 1)[0]
    pinned = "sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src '{pinned}'" in login.headers["content-security-policy"]


def test_az_11_consent_content_and_loopback_warning(dep: Deployment) -> None:
    consent = consent_page(dep)
    text = consent.text
    assert "Test Client" in text and "127.0.0.1" in text
    assert "See the list of tools" in text and "Run the tool \u201cecho\u201d" in text  # each scope described
    assert "Demo tools" in text and dep.resource in text
    assert "runs on a computer, not a website" in text  # loopback-only warning
    assert "Signed in as <strong>alice</strong>" in text


def test_az_10_consent_post_without_or_with_wrong_csrf_token_is_refused(dep: Deployment) -> None:
    consent = consent_page(dep)
    form = the_form(consent)
    url = dep.base + form.action
    without = [(k, v) for k, v in form.submit("approve") if k != "csrf_token"]
    assert post_form(dep.person, url, without).status_code == 403
    wrong = form.submit("approve", csrf_token="A" * 43)
    r = post_form(dep.person, url, wrong)
    assert r.status_code == 403 and "location" not in r.headers
    assert_page_headers(r)
    # A token from this browser does not work from another one (bound to the browser cookie).
    with httpx.Client(timeout=10, cookies={k: v for k, v in dep.person.cookies.items() if "session" in k}) as other:
        assert post_form(other, url, form.submit("approve")).status_code == 403
    # The refusals used nothing up: the real form still works.
    ok = post_form(dep.person, url, form.submit("approve"))
    assert ok.status_code == 303 and "code=" in ok.headers["location"]


def test_az_10_login_post_without_csrf_token_is_refused(dep: Deployment) -> None:
    login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
    form = the_form(login)
    data = [(k, v) for k, v in form.submit(username="alice", password=PASSWORD) if k != "csrf_token"]
    r = post_form(dep.person, dep.base + form.action, data)
    assert r.status_code == 403
    assert not any("session" in c for c in r.headers.get_list("set-cookie"))


def test_az_10_signing_in_gives_the_browser_a_new_id(dep: Deployment) -> None:
    """The CSRF tokens are bound to the browser cookie; signing in replaces it, so a consent token
    made for the id the browser had before (one an attacker planted in it, or read) is refused,
    while the consent page served after the sign-in, under the new id, works."""
    login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
    before = dep.person.cookies["kavach-browser"]
    signed_in = dep.login(login)
    assert signed_in.status_code == 303
    renewed = [c for c in signed_in.headers.get_list("set-cookie") if c.startswith("kavach-browser=")]
    assert len(renewed) == 1 and "HttpOnly" in renewed[0] and "SameSite=Lax" in renewed[0]
    after = dep.person.cookies["kavach-browser"]
    assert after != before and len(after) >= 43
    consent = dep.person.get(dep.base + signed_in.headers["location"])
    assert consent.status_code == 200, "the consent link is bound to the new id"
    form = the_form(consent)
    ticket = dict(form.submit("approve"))["ticket"]
    stale = dep.server.cookies.csrf_token(before, "consent", ticket)  # what a form made for that id holds
    refused = post_form(dep.person, dep.base + form.action, form.submit("approve", csrf_token=stale))
    assert refused.status_code == 403 and "location" not in refused.headers
    decided = post_form(dep.person, dep.base + form.action, form.submit("approve"))
    assert decided.status_code == 303 and "code=" in decided.headers["location"]


def test_az_04_no_automatic_redirect_to_a_site_anyone_registered(dep: Deployment) -> None:
    """RFC 9700 §4.11.2 over HTTP: a client registered by anyone for a web redirect URI, sent an
    erroneous request with no one signed in, gets no redirect: the page shows the error and a
    link carrying the error response to the client's host. A loopback client's errors still
    redirect at once."""
    site = "https://evil.example/landing"
    registered = dep.client.post(
        dep.metadata()["registration_endpoint"], json={"redirect_uris": [site], "token_endpoint_auth_method": "none"}
    )
    assert registered.status_code == 201, registered.text
    query = {"response_type": "token", "client_id": registered.json()["client_id"], "redirect_uri": site,
             "state": "Sign in again at evil.example"}  # fmt: skip
    with httpx.Client(timeout=10) as stranger:
        page = stranger.get(dep.metadata()["authorization_endpoint"] + "?" + urlencode(query))
    assert page.status_code == 400 and "location" not in page.headers
    assert page.headers["content-type"].startswith("text/html")
    assert_page_headers(page)  # the link loads nothing
    links = read_page(page).links
    assert len(links) == 1 and links[0].startswith(site + "?error=unsupported_response_type&")
    back = parse_qs(urlsplit(links[0]).query)
    assert back["state"] == [query["state"]] and back["iss"] == [dep.issuer] and "code" not in back
    assert '<span class="host">evil.example</span>' in page.text
    erroneous = dep.authorize_url(dep.register(), pkce()[1]).replace("response_type=code", "response_type=token")
    loopback = dep.person.get(erroneous)
    assert loopback.status_code == 303 and loopback.headers["location"].startswith(REDIRECT + "?error=unsupported")


def test_az_10_303_after_every_post(dep: Deployment) -> None:
    login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
    wrong = dep.login(login, password="nope")
    assert wrong.status_code == 303
    assert_page_headers(wrong)
    again = dep.person.get(dep.base + wrong.headers["location"])
    assert "did not match" in again.text
    right = dep.login(again)
    assert right.status_code == 303
    consent = dep.person.get(dep.base + right.headers["location"])
    form = the_form(consent)
    decided = post_form(dep.person, dep.base + form.action, form.submit("approve"))
    assert decided.status_code == 303


def test_session_cookie_attributes(dep: Deployment) -> None:
    login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
    r = dep.login(login)
    session = [c for c in r.headers.get_list("set-cookie") if c.startswith("kavach-session=")]
    assert len(session) == 1
    assert "HttpOnly" in session[0] and "SameSite=Lax" in session[0] and "; Path=/authorize;" in session[0]


def test_under_an_http_issuer_the_cookies_stay_under_the_pages_path(dep: Deployment) -> None:
    """No ``__Host-`` prefix under http, and browsers send a host's cookies to all its ports (RFC
    6265 §8.5): the cookies' ``Path`` is the authorization endpoint's, so the rest of the host
    never receives them. A listener there picks its own path, though, so that is not all: the
    sign-in lasts for this one authorization only, ended at the redirect to the client."""
    client_id = dep.register()
    pages = urlsplit(dep.metadata()["authorization_endpoint"]).path
    signed_in = dep.login(dep.person.get(dep.authorize_url(client_id, pkce()[1])))
    assert {c.path for c in dep.person.cookies.jar} == {pages}
    assert all(f"; Path={pages};" in c for c in signed_in.headers.get_list("set-cookie"))
    form = the_form(dep.person.get(dep.base + signed_in.headers["location"]))
    left = post_form(dep.person, dep.base + form.action, form.submit("approve"))
    assert left.headers["location"].startswith(REDIRECT + "?code=")
    cleared = [c for c in left.headers.get_list("set-cookie") if c.startswith("kavach-session=")]
    assert len(cleared) == 1 and "Max-Age=0" in cleared[0] and f"; Path={pages};" in cleared[0]
    assert "kavach-session" not in dep.person.cookies
    again = dep.person.get(dep.authorize_url(client_id, pkce()[1]))
    assert shows_sign_in(again) and "Signed in as" not in again.text


@pytest.mark.parametrize("path", ["/callback", "/authorize/cb", "/x/../authorize/cb", "/%61uthorize/cb"])
@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_client_redirect_the_cookies_would_reach_ends_the_sign_in(dep: Deployment, decision: str, path: str) -> None:
    """Under an http issuer every redirect to the client ends the sign-in: one on the issuer's
    host under the pages' path (or one a browser may normalise into it) would receive the
    session cookie itself, and one outside it (``/callback``) can send the browser on to such a
    URL. The redirect clears the cookie first, and the next authorization asks for the password."""
    redirect = "http://127.0.0.1:9" + path
    client_id = dep.register(redirect_uris=[redirect])
    signed_in = dep.login(dep.person.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect)))
    assert signed_in.status_code == 303 and "kavach-session" in dep.person.cookies
    form = the_form(dep.person.get(dep.base + signed_in.headers["location"]))
    left = post_form(dep.person, dep.base + form.action, form.submit(decision))
    assert left.status_code == 303 and left.headers["location"].startswith(redirect + "?")
    cleared = [c for c in left.headers.get_list("set-cookie") if c.startswith("kavach-session=")]
    assert len(cleared) == 1 and "Max-Age=0" in cleared[0], cleared
    assert "kavach-session" not in dep.person.cookies
    again = dep.person.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect))
    assert again.status_code == 200 and 'name="password"' in again.text


def test_an_error_redirect_the_cookies_would_reach_ends_the_sign_in_too(dep: Deployment) -> None:
    redirect = "http://127.0.0.1:9/authorize/cb"
    client_id = dep.register(redirect_uris=[redirect])
    signed_in = dep.login(dep.person.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect)))
    assert signed_in.status_code == 303 and "kavach-session" in dep.person.cookies
    error = dep.person.get(dep.authorize_url(client_id, pkce()[1], "no-such-scope", redirect_uri=redirect))
    assert error.status_code in (302, 303) and "error=invalid_scope" in error.headers["location"]
    assert "kavach-session" not in dep.person.cookies


class _Collector(BaseHTTPRequestHandler):
    """A native client's loopback listener that wants the person's kavach cookies: its redirect
    URI sends the browser on to a path under the cookies' own on its port, where it keeps the
    ``Cookie`` header the browser sends (RFC 6265 §8.5: the port is no boundary)."""

    collected: list[dict[str, str]]

    def do_GET(self) -> None:
        if self.path.startswith("/callback"):
            self.send_response(302)
            self.send_header("Location", "/authorize/x")
        elif self.path.startswith("/authorize/"):
            self.collected.append(parse_cookies(self.headers.get_all("Cookie") or []))
            self.send_response(200)
        else:  # a browser's /favicon.ico
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def collecting_client() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """The collector's redirect URI, and the cookies it has collected so far."""
    collected: list[dict[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Collector", (_Collector,), {"collected": collected}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback", collected
    finally:
        server.shutdown()
        server.server_close()


def test_cookies_a_loopback_client_collects_under_an_http_issuer_sign_no_one_in(dep: Deployment) -> None:
    """The attack over real HTTP: a loopback client collects the person's cookies at a path of
    its own port (a local process opening it in the browser while the request is pending, or
    the client's redirect URI sending the browser on after the answer). With them it starts a
    request of its own: the sign-in page, not a consent page signed in as the person, and a
    decision posted for it, even with a valid CSRF token, sends no code. The answer's redirect
    ended the session: a copy taken before it signs no one in, and none is left to take after."""
    with collecting_client() as (redirect, collected):
        client_id = dep.register(redirect_uris=[redirect], client_name="Native tool")
        signed_in = dep.login(dep.person.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect)))
        form = the_form(dep.person.get(dep.base + signed_in.headers["location"]))
        dep.person.get(urlsplit(redirect)._replace(path="/authorize/x").geturl())  # a local process opened it
        (early,) = collected
        assert early.get("kavach-session") and early.get("kavach-browser"), "the port is no boundary"
        with httpx.Client(timeout=10, cookies=early) as attacker:
            own = attacker.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect))
            assert shows_sign_in(own) and "Signed in as" not in own.text, "a session for another request"
            ticket = dict(the_form(own).fields)["ticket"]
            token = dep.server.cookies.csrf_token(early["kavach-browser"], "consent", ticket)
            forged = post_form(
                attacker,
                dep.base + dep.server.decision_path,
                [("ticket", ticket), ("csrf_token", token), ("decision", "approve")],
            )
            assert forged.status_code == 303 and forged.headers["location"].startswith(dep.server.consent_path)
        answered = post_form(dep.person, dep.base + form.action, form.submit("approve"), follow_redirects=True)
        assert [str(r.url).split("?")[0] for r in answered.history][-2:] == [dep.base + form.action, redirect]
        late = collected[-1]
        assert "kavach-session" not in late and "kavach-browser" in late, "the redirect cleared the session first"
    session = dep.server.cookies.session(early, int(time.time()))
    assert session is not None and dep.server.store.perform(fx.IsSessionEnded(session.session_hash))
    with httpx.Client(timeout=10, cookies=early) as attacker:
        assert shows_sign_in(attacker.get(dep.authorize_url(client_id, pkce()[1], redirect_uri=redirect)))
    assert len(dep.server.store.codes) == 1, "the person's code only"


def test_az_12_deny_redirects_with_access_denied(dep: Deployment) -> None:
    form = the_form(consent_page(dep))
    r = post_form(dep.person, dep.base + form.action, form.submit("deny"))
    assert r.status_code == 303
    answer = parse_qs(urlsplit(r.headers["location"]).query)
    assert answer["error"] == ["access_denied"]
    assert answer["state"] == ["xyz-state"] and answer["iss"] == [dep.issuer]
    # The ticket is used: answering again shows an error page, never a redirect to the client.
    # (Under an http issuer the redirect above ended the sign-in: the answer goes by the consent
    # page, which finds the request answered.)
    again = post_form(dep.person, dep.base + form.action, form.submit("approve"), follow_redirects=True)
    assert again.status_code == 400 and "expired or was already answered" in again.text
    assert all(urlsplit(str(r.url)).netloc == urlsplit(dep.base).netloc for r in [*again.history, again])


def test_az_12_cancel_on_the_sign_in_form_denies_and_signs_no_one_in(dep: Deployment) -> None:
    """Cancel on the sign-in form (``decision=deny``, no username or password) answers the request
    as Deny would: 303 to the client with ``access_denied``, ``state`` and ``iss``, no session
    cookie, the request spent (signing in with the same form then finds it answered). A wrong
    CSRF token or another ``decision`` before it changed nothing: the Cancel still found the
    request pending."""
    client_id = dep.register()
    login = dep.person.get(dep.authorize_url(client_id, pkce()[1]))
    form = the_form(login)
    assert [v for n, v in form.buttons if n == "decision"] == ["deny"]
    url = dep.base + form.action
    wrong = post_form(dep.person, url, form.submit("deny", csrf_token="A" * 43))
    assert wrong.status_code == 403 and "location" not in wrong.headers
    odd = post_form(dep.person, url, [*form.submit(), ("decision", "approve")])
    assert odd.status_code == 400 and "Choose Sign in or Cancel" in odd.text and "location" not in odd.headers
    cancelled = post_form(dep.person, url, form.submit("deny"))
    assert cancelled.status_code == 303
    answer = parse_qs(urlsplit(cancelled.headers["location"]).query)
    assert answer["error"] == ["access_denied"] and "code" not in answer
    assert answer["state"] == ["xyz-state"] and answer["iss"] == [dep.issuer]
    assert not any("session" in c for c in cancelled.headers.get_list("set-cookie"))
    again = dep.login(login)  # the password is right, the request is gone
    assert again.status_code == 303
    assert dep.person.get(dep.base + again.headers["location"]).status_code == 400
    assert not dep.server.store.codes


def test_cancelling_sign_in_is_no_sign_in_attempt(tmp_path: Any) -> None:
    """Cancel checks no password, so no login limit counts it: with one attempt allowed per
    address, two requests cancelled leave that attempt for the third's sign-in."""
    for dep in deploy("starlette", "memory", "", tmp_path, login_limits=LoginLimits(per_user=1, per_address=1)):
        client_id = dep.register()
        for _ in range(2):
            form = the_form(signed_out_login(dep, client_id))
            assert post_form(dep.person, dep.base + form.action, form.submit("deny")).status_code == 303
        signed_in = dep.login(signed_out_login(dep, client_id))
        assert signed_in.status_code == 303 and "notice" not in signed_in.headers["location"]
        assert dep.login(signed_out_login(dep, client_id)).status_code == 429  # the limit is there


def test_az_12_state_comes_back_exactly_or_the_request_is_refused(dep: Deployment) -> None:
    """RFC 6749 §4.1.2: ``state`` is returned exactly as received. UTF-8 escapes round-trip; escapes
    that are not UTF-8 cannot be passed on unaltered, so the request is refused: ``invalid_request``
    at the redirect URI without a state (RFC 6749 §4.1.2.1), as for a state given twice."""
    client_id = dep.register()
    url = dep.authorize_url(client_id, pkce()[1])
    refused = dep.person.get(url.replace("state=xyz-state", "state=%FF%FEx"))
    assert refused.status_code == 303
    answer = parse_qs(urlsplit(refused.headers["location"]).query)
    assert answer["error"] == ["invalid_request"] and answer["iss"] == [dep.issuer]
    assert "state" not in answer and "code" not in answer
    login = dep.person.get(url.replace("state=xyz-state", "state=%C3%A9t%C3%A9+%2B1+100%25ff%26"))
    consent = dep.person.get(dep.base + dep.login(login).headers["location"])
    form = the_form(consent)
    r = post_form(dep.person, dep.base + form.action, form.submit("deny"))
    assert parse_qs(urlsplit(r.headers["location"]).query)["state"] == ["\u00e9t\u00e9 +1 100%ff&"]


def test_az_07_unticked_scope_is_not_granted(dep: Deployment) -> None:
    tokens = grant(dep, "tools:list tools:call:echo", ticked={"tools:list"})
    assert tokens["scope"] == "tools:list"
    assert dep.mcp(tokens["access_token"], "tools/call", {"name": "echo"}).status_code == 403


def test_az_07_az_12_unticking_every_scope_refuses(dep: Deployment) -> None:
    form = the_form(consent_page(dep))
    form.checkboxes = [(n, v, False) for n, v, _ in form.checkboxes]
    r = post_form(dep.person, dep.base + form.action, form.submit("approve"))
    assert r.status_code == 303
    answer = parse_qs(urlsplit(r.headers["location"]).query)
    assert answer["error"] == ["access_denied"] and "code" not in answer
    assert answer["state"] == ["xyz-state"] and answer["iss"] == [dep.issuer]


def unknown_client_url(dep: Deployment) -> str:
    """An authorization request from a client nobody registered, naming a redirect URI the
    server must never send the person to (AZ-02)."""
    query = {
        "response_type": "code",
        "client_id": "nobody",
        "redirect_uri": "https://evil.example/cb",
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    return dep.metadata()["authorization_endpoint"] + "?" + urlencode(query)


def test_az_02_unknown_client_shows_an_error_page_and_never_redirects(dep: Deployment) -> None:
    url = unknown_client_url(dep)
    r = dep.person.get(url)
    assert r.status_code == 400
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert "invalid_client" in r.text and "evil.example" not in r.text
    assert_page_headers(r)


def test_az_02_unregistered_redirect_uri_never_redirects(dep: Deployment) -> None:
    client_id = dep.register()
    url = dep.authorize_url(client_id, pkce()[1]).replace("127.0.0.1%3A9", "evil.example")
    r = dep.person.get(url)
    assert r.status_code == 400 and "location" not in r.headers


def test_a_consent_link_opened_in_another_browser_is_refused(dep: Deployment) -> None:
    """The page after sign-in is bound to the browser that signed in: its URL (in logs and
    histories) opened in another browser, even one signed in, shows no form to approve with, so a
    code for someone else's account cannot be sent to this person's client (RFC 9700 §4.4)."""
    client_id = dep.register()
    signed_in = dep.login(dep.person.get(dep.authorize_url(client_id, pkce()[1])))
    link = dep.base + signed_in.headers["location"]
    assert "&link=" in link and dep.person.get(link).status_code == 200
    with httpx.Client(timeout=10) as browser:
        other = Deployment(dep.base, dep.issuer, dep.resource, dep.server, dep.client, browser)
        own = other.login(browser.get(dep.authorize_url(client_id, pkce()[1])))
        assert own.status_code == 303 and browser.get(dep.base + own.headers["location"]).status_code == 200
        for stolen in (link, link.split("&link=")[0], link.replace("&link=", "&link=x")):
            refused = browser.get(stolen)
            assert refused.status_code == 403 and "another browser" in refused.text, stolen
            assert 'name="decision"' not in refused.text
            assert_page_headers(refused)
    assert dep.person.get(link).status_code == 200, "the person's own browser still gets its page"


def test_expired_or_unknown_consent_ticket_is_an_error_page(dep: Deployment) -> None:
    r = dep.person.get(dep.base + dep.server.consent_path + "?ticket=nope")
    assert r.status_code == 400 and "expired" in r.text
    assert_page_headers(r)


def count_password_checks(dep: Deployment, seconds: float = 0) -> list[str]:
    """The usernames whose password the server checks from now on (each one an scrypt run), each
    check taking at least ``seconds`` (a slow hash: many attempts are checked at once)."""
    users = dep.server.users
    assert users is not None
    checked: list[str] = []
    sign_in = users.sign_in

    def counting(username: str, password: str) -> tuple[str, str] | None:
        checked.append(username)
        time.sleep(seconds)
        return sign_in(username, password)

    users.sign_in = counting  # type: ignore[method-assign]
    return checked


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_failed_sign_ins_lock_the_username_without_a_password_check(
    framework: str, store_kind: str, tmp_path: Any
) -> None:
    """``per_user`` failed attempts lock the account for the window: the next attempt, even with the
    right password, is a 429 with Retry-After and runs no scrypt; other accounts are not affected."""
    limits = LoginLimits(per_user=3, per_address=100)
    for dep in deploy(framework, store_kind, "", tmp_path, login_limits=limits):
        dep.server.users.add("bob", PASSWORD)  # type: ignore[union-attr]
        checked = count_password_checks(dep)
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        for _ in range(3):
            failed = dep.login(login, password="wrong")
            assert failed.status_code == 303 and "notice=failed" in failed.headers["location"]
        assert checked == ["alice"] * 3
        for password in (PASSWORD, "wrong"):  # even the right password
            limited = dep.login(login, password=password)
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == str(limits.window)
            assert "Too many sign-in attempts" in limited.text
            assert not any("session" in c for c in limited.headers.get_list("set-cookie"))
            assert_page_headers(limited)
        assert checked == ["alice"] * 3  # no password check, no scrypt, for a locked name
        assert dep.login(login, username="bob").status_code == 303  # another name signs in


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_every_spelling_of_an_account_shares_its_limit(framework: str, tmp_path: Any) -> None:
    """The limit counts per account the password check reaches (NFKC, stripped): full-width,
    mathematical or padded spellings of ``alice`` are all ``alice``. Names no account can have
    share one limit of their own."""
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=3, per_address=100)):
        checked = count_password_checks(dep)
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        for spelling in ("\uff41lice", "\U0001d41alice", " alice\u00a0"):
            assert "notice=failed" in dep.login(login, username=spelling, password="wrong").headers["location"]
        assert len(checked) == 3
        for spelling in ("alice", "\uff41lice", "\u2006alice"):
            assert dep.login(login, username=spelling).status_code == 429
        for invalid in ("", "x" * 200, "bob\u200b"):
            assert dep.login(login, username=invalid, password="wrong").status_code == 303
        assert dep.login(login, username="\x85alice", password="wrong").status_code == 429  # 4 > 3
        assert len(checked) == 6


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_accounts_differing_in_case_have_their_own_limits(framework: str, tmp_path: Any) -> None:
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=3, per_address=100)):
        dep.server.users.add("Alice", "another password")  # type: ignore[union-attr]
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        for _ in range(3):
            assert "notice=failed" in dep.login(login, password="wrong").headers["location"]
        assert dep.login(login).status_code == 429
        signed_in = dep.login(login, username="Alice", password="another password")
        assert signed_in.status_code == 303 and "notice" not in signed_in.headers["location"]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_burst_of_guesses_runs_no_more_password_checks_than_the_limit(framework: str, tmp_path: Any) -> None:
    """Each attempt is counted before its password check, so guesses sent all at once, while the
    first checks are still running, get no more than ``per_user`` checks between them."""
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=3, per_address=100)):
        checked = count_password_checks(dep, seconds=0.2)
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(dep.login, [login] * 32, ["alice"] * 32, [f"guess {n}" for n in range(32)]))
        assert len(checked) == 3
        assert sorted(r.status_code for r in answers) == [303] * 3 + [429] * 29


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_successful_sign_in_gives_its_attempt_back(framework: str, tmp_path: Any) -> None:
    """Failures add up to ``per_user``; successes in between take none of it."""
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=3, per_address=100)):
        client_id = dep.register()
        login = signed_out_login(dep, client_id)
        for _ in range(2):
            assert "notice=failed" in dep.login(login, password="wrong").headers["location"]
        for _ in range(5):
            signed_in = dep.login(signed_out_login(dep, client_id))
            assert signed_in.status_code == 303 and "notice" not in signed_in.headers["location"]
        login = signed_out_login(dep, client_id)
        assert "notice=failed" in dep.login(login, password="wrong").headers["location"]
        assert dep.login(login).status_code == 429


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_successful_sign_ins_do_not_count_toward_the_username_limit(framework: str, tmp_path: Any) -> None:
    """Ten successful sign-ins in a window (the default ``per_user``) do not lock the person out."""
    for dep in deploy(framework, "memory", "", tmp_path):
        client_id = dep.register()
        for _ in range(LoginLimits().per_user + 1):
            signed_in = dep.login(signed_out_login(dep, client_id))
            assert signed_in.status_code == 303 and "notice" not in signed_in.headers["location"]


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_login_attempts_are_rate_limited_per_address(framework: str, tmp_path: Any) -> None:
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=100, per_address=2)):
        dep.server.users.add("bob", PASSWORD)  # type: ignore[union-attr]
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        assert dep.login(login, username="carol", password="x").status_code == 303
        assert dep.login(login, username="dave", password="x").status_code == 303
        assert dep.login(login, username="bob").status_code == 429


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_successful_sign_ins_count_toward_the_address_limit(framework: str, tmp_path: Any) -> None:
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=100, per_address=2)):
        checked = count_password_checks(dep)
        client_id = dep.register()
        for _ in range(2):
            assert dep.login(signed_out_login(dep, client_id)).status_code == 303
        limited = dep.login(signed_out_login(dep, client_id))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "900"
        assert checked == ["alice", "alice"]


def test_spoofed_client_address_header_does_not_escape_the_limit(framework: str, tmp_path: Any) -> None:
    for dep in deploy(framework, "memory", "", tmp_path, login_limits=LoginLimits(per_user=100, per_address=2)):
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        form = the_form(login)
        for n in range(3):
            r = post_form(
                dep.person,
                dep.base + form.action,
                form.submit(username=f"u{n}", password="x"),
                headers={"X-Kavach-Client-Address": f"10.0.0.{n}"},
            )
        assert r.status_code == 429


SIGN_INS_AT_ONCE = 32
"""More sign-ins than an event loop's default executor has threads (min(32, CPUs + 4)), well
within the default per-address limit (50)."""


def counted_attempts(dep: Deployment) -> threading.Semaphore:
    """Released once for each sign-in attempt the store counts against its account: the store's
    last step before that attempt's password check."""
    store = dep.server.store
    perform = store.perform
    counted = threading.Semaphore(0)

    def counting(effect: fx.Effect) -> Any:
        result = perform(effect)
        if isinstance(effect, fx.Hit) and effect.bucket.startswith("login:user:") and effect.step == 1:
            counted.release()
        return result

    store.perform = counting
    return counted


def hold_password_checks(dep: Deployment) -> tuple[threading.Semaphore, threading.Event]:
    """From now on every password check the server starts waits for the event, then fails (a
    wrong password); the semaphore is released as each one starts."""
    users = dep.server.users
    assert users is not None
    checking, release = threading.Semaphore(0), threading.Event()

    def held(username: str, password: str) -> tuple[str, str] | None:
        checking.release()
        release.wait(60)
        return None

    users.sign_in = held  # type: ignore[method-assign]
    return checking, release


def test_store_calls_are_answered_while_sign_ins_wait_for_their_password_check(framework: str, tmp_path: Any) -> None:
    """Password checks never take the threads the store's calls run in. While more wrong sign-ins
    than the event loop's default executor has threads (no account needed) are held in their
    check, every one of them is still counted by the store and ``GET /jwks.json`` on the SQLite
    store is answered, before any sign-in is. When the checks ran in the default executor, a
    few dozen of them (a few seconds of scrypt) held up every store call of every request."""
    for dep in deploy(framework, "sqlite", "", tmp_path):
        jwks_uri = dep.metadata()["jwks_uri"]
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        checking, release = hold_password_checks(dep)
        counted = counted_attempts(dep)
        with ThreadPoolExecutor(max_workers=SIGN_INS_AT_ONCE) as pool:
            try:
                names = [f"nobody{n}" for n in range(SIGN_INS_AT_ONCE)]
                answers = [pool.submit(dep.login, login, name, "wrong") for name in names]
                for _ in names:
                    assert counted.acquire(timeout=20), "a store call (a sign-in's count) waited behind password checks"
                assert checking.acquire(timeout=20)  # a check is under way, and held
                assert dep.client.get(jwks_uri).status_code == 200  # within the client's 10 s
                assert not any(answer.done() for answer in answers)
            finally:
                release.set()
        assert [answer.result().status_code for answer in answers] == [303] * SIGN_INS_AT_ONCE


@pytest.mark.parametrize("framework", ["aiohttp", "starlette"])  # threads of a WSGI server bound their own
def test_sign_ins_beyond_the_password_queue_are_told_to_retry_at_once(
    framework: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the password checks' queue full (here two places), one more sign-in is answered at
    once, 503 with ``Retry-After`` and the form again (its attempt not counted against the
    account), instead of waiting behind the others; the places come back as checks end, so the
    next sign-in is checked. Before, the queue grew without bound, however many addresses sent."""
    monkeypatch.setattr(kavach_server, "_password_slots", threading.BoundedSemaphore(2))
    for dep in deploy(framework, "memory", "", tmp_path):
        login = dep.person.get(dep.authorize_url(dep.register(), pkce()[1]))
        sign_in = dep.server.users.sign_in  # type: ignore[union-attr]
        checking, release = hold_password_checks(dep)
        with ThreadPoolExecutor(max_workers=2) as pool:
            try:
                held = [pool.submit(dep.login, login, f"nobody{n}", "wrong") for n in range(2)]
                assert checking.acquire(timeout=20)  # one under way, the other waiting for a thread (or both under way)
                deadline = time.monotonic() + 20
                while kavach_server._password_slots._value > 0 and time.monotonic() < deadline:  # both queued
                    time.sleep(0.01)
                busy = dep.login(login, "alice", "wrong")
                assert busy.status_code == 503, busy.text
                assert busy.headers["retry-after"] == str(kavach_server.PASSWORDS_BUSY_RETRY)
                assert "Too many people are signing in right now" in busy.text
                assert the_form(busy).action == dep.server.login_path  # the form again, to send once more
                assert not any(answer.done() for answer in held)
            finally:
                release.set()
        assert [answer.result().status_code for answer in held] == [303, 303]
        dep.server.users.sign_in = sign_in  # type: ignore[union-attr,method-assign]
        assert kavach_server._password_slots._value == 2  # every place given back
        answer = dep.login(dep.person.get(dep.authorize_url(dep.register(), pkce()[1])))
        assert answer.status_code == 303 and "consent" in answer.headers["location"], answer.text


# -- sign-in sessions end with the credential ---------------------------------------------------


def shows_sign_in(page: httpx.Response) -> bool:
    return page.status_code == 200 and any(n == "password" for n, _ in the_form(page).fields)


def test_a_valid_session_keeps_working(dep: Deployment) -> None:
    """For the request it signed in for (under an http issuer a session serves that one only:
    ``test_http_issuer_sessions``): the consent page opened again asks for no password."""
    client_id = dep.register()
    link = consent_page(dep, client_id).url
    again = dep.person.get(link)  # no sign-in form this time
    assert again.status_code == 200 and "Signed in as <strong>alice</strong>" in again.text
    decided = post_form(dep.person, dep.base + the_form(again).action, the_form(again).submit("approve"))
    assert decided.status_code == 303 and "code=" in decided.headers["location"]


def test_removing_a_user_ends_their_session(dep: Deployment) -> None:
    """After ``users remove``, the old cookie signs no one in: the next authorization asks to sign
    in, a consent form already on screen cannot approve, and adding the name again (same
    password) does not revive the session."""
    users = dep.server.users
    assert users is not None
    client_id = dep.register()
    open_form = the_form(consent_page(dep, client_id))
    assert users.remove("alice")
    assert shows_sign_in(dep.person.get(dep.authorize_url(client_id, pkce()[1])))
    refused = post_form(dep.person, dep.base + open_form.action, open_form.submit("approve"))
    assert refused.status_code == 303
    assert refused.headers["location"].startswith(dep.server.consent_path)  # back to sign in, no code
    assert shows_sign_in(dep.person.get(dep.base + refused.headers["location"]))
    users.add("alice", PASSWORD)
    assert shows_sign_in(dep.person.get(dep.authorize_url(client_id, pkce()[1])))
    consent_page(dep, client_id)  # signing in again works as ever


def test_a_new_password_ends_earlier_sessions(dep: Deployment) -> None:
    users = dep.server.users
    assert users is not None
    client_id = dep.register()
    open_form = the_form(consent_page(dep, client_id))
    users.add("alice", "a newer password")  # kavach users add over an existing name
    assert shows_sign_in(dep.person.get(dep.authorize_url(client_id, pkce()[1])))
    refused = post_form(dep.person, dep.base + open_form.action, open_form.submit("approve"))
    assert refused.status_code == 303 and refused.headers["location"].startswith(dep.server.consent_path)
    login = dep.person.get(dep.authorize_url(client_id, pkce()[1]))
    assert "notice=failed" in dep.login(login).headers["location"]  # the old password is gone too
    assert "notice" not in dep.login(login, password="a newer password").headers["location"]


def test_someone_else_can_sign_in_from_the_consent_page(dep: Deployment) -> None:
    """A shared computer: the consent page says who is signed in and offers "Sign in as someone
    else", which signs this browser out (the session cookie cleared, and the session recorded as
    ended, so a copy of the cookie is refused too), keeps the request, and asks who it is; the next
    person then decides, and the code is theirs."""
    users = dep.server.users
    assert users is not None
    users.add("bob", "bob's own password")
    client_id = dep.register()
    verifier, challenge = pkce()
    first = dep.login(dep.person.get(dep.authorize_url(client_id, challenge)))
    link = dep.base + first.headers["location"]
    page = dep.person.get(link)
    assert "Signed in as <strong>alice</strong>" in page.text and "Sign in as someone else" in page.text
    copied = "; ".join(f"{c.name}={c.value}" for c in dep.person.cookies.jar)  # say, from a shared profile
    with httpx.Client(timeout=10) as elsewhere:  # on this request's page: an http session serves no other
        assert "Signed in as <strong>alice</strong>" in elsewhere.get(link, headers={"Cookie": copied}).text
        form = the_form(page)
        switched = post_form(dep.person, dep.base + form.action, form.submit("switch"))
        assert shows_sign_in(elsewhere.get(link, headers={"Cookie": copied})), (
            "signing out ends the session in the store: a copy of its cookie no longer signs in"
        )
    assert switched.status_code == 303 and switched.headers["location"].startswith(dep.server.consent_path)
    assert any(
        value.startswith(("kavach-session=;", "__Host-kavach-session=;")) and "Max-Age=0" in value
        for value in switched.headers.get_list("set-cookie")
    ), "the session cookie is cleared"
    login = dep.person.get(dep.base + switched.headers["location"])
    assert shows_sign_in(login), "the request is kept and the browser asks who it is"
    assert "alice" not in dep.person.get(dep.authorize_url(client_id, pkce()[1])).text
    consent = dep.person.get(dep.base + dep.login(login, "bob", "bob's own password").headers["location"])
    assert "Signed in as <strong>bob</strong>" in consent.text
    decided = post_form(dep.person, dep.base + the_form(consent).action, the_form(consent).submit("approve"))
    code = parse_qs(urlsplit(decided.headers["location"]).query)["code"][0]
    tokens = dep.redeem(client_id, code, verifier)
    assert tokens.status_code == 200, tokens.text
    listed = dep.mcp(tokens.json()["access_token"], "tools/list")
    assert listed.status_code == 200
    (grant,) = dep.server.store.perform(fx.ListGrants(client_id=client_id))
    assert grant.subject == "bob", "the code is the second person's"


def test_switching_account_needs_the_forms_csrf_token(dep: Deployment) -> None:
    client_id = dep.register()
    page = consent_page(dep, client_id)
    form = the_form(page)
    forged = [(n, "x" * 43 if n == "csrf_token" else v) for n, v in form.submit("switch")]
    refused = post_form(dep.person, dep.base + form.action, forged)
    assert refused.status_code == 403 and "set-cookie" not in {k.lower() for k in refused.headers}
    assert "Signed in as <strong>alice</strong>" in dep.person.get(page.url).text  # this request's page


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_users_unreachable_while_checking_a_session_is_503(framework: str, tmp_path: Any) -> None:
    class Flaky(MemoryUsers):
        down = False

        def get_hash(self, username: str) -> str | None:
            if self.down:
                raise StoreUnavailable("the users table cannot be reached")
            return super().get_hash(username)

    user_store = Flaky()
    users = Users(user_store, log_n=10)
    users.add("alice", PASSWORD)
    for dep in deploy(framework, "memory", "", tmp_path, users=users):
        client_id = dep.register()
        link = consent_page(dep, client_id).url  # this request's page: an http session serves no other
        user_store.down = True
        r = dep.person.get(link)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        user_store.down = False
        assert "Signed in as <strong>alice</strong>" in dep.person.get(link).text


# -- the identify hook -------------------------------------------------------------------------


def test_identify_hook_skips_the_login_page(framework: str, tmp_path: Any) -> None:
    seen: list[str | None] = []

    def identify(req: Any) -> str | None:
        seen.append(req.header("x-app-user"))
        return req.header("x-app-user")

    for dep in deploy(framework, "memory", "", tmp_path, identify=identify):
        url = dep.authorize_url(dep.register(), pkce()[1])
        consent = dep.person.get(url, headers={"X-App-User": "carol"})
        assert consent.status_code == 200 and "Signed in as <strong>carol</strong>" in consent.text
        form = the_form(consent)
        r = post_form(dep.person, dep.base + form.action, form.submit("approve"), headers={"X-App-User": "carol"})
        assert r.status_code == 303 and "code=" in r.headers["location"]
        # Without the application's user, the built-in login is shown (users= is also set here).
        assert "Sign in" in dep.person.get(url).text


def test_switching_account_is_only_for_kavachs_own_sign_in(framework: str, tmp_path: Any) -> None:
    """With ``identify=`` and ``users=`` both set, a person the application's hook names is not
    offered "Sign in as someone else" (signing kavach's session out would not change who the hook
    says it is), and a forged ``decision=switch`` is refused; a person signed in with kavach's own
    form is offered it, and it signs them out."""
    app_user = {"X-App-User": "carol"}
    for dep in deploy(framework, "memory", "", tmp_path, identify=lambda req: req.header("x-app-user")):
        client_id = dep.register()
        page = dep.person.get(dep.authorize_url(client_id, pkce()[1]), headers=app_user)
        assert "Signed in as <strong>carol</strong>" in page.text and 'value="switch"' not in page.text
        form = the_form(page)
        refused = post_form(dep.person, dep.base + form.action, form.submit(decision="switch"), headers=app_user)
        assert refused.status_code == 400 and "Choose Approve or Deny." in refused.text
        assert "set-cookie" not in {k.lower() for k in refused.headers}
        form = the_form(consent_page(dep, client_id))  # no application user: kavach's own sign-in
        assert ("decision", "switch") in form.buttons
        switched = post_form(dep.person, dep.base + form.action, form.submit("switch"))
        assert switched.status_code == 303 and "Max-Age=0" in switched.headers["set-cookie"]
        assert shows_sign_in(dep.person.get(dep.base + switched.headers["location"]))


# -- the guard ---------------------------------------------------------------------------------


def grant(
    dep: Deployment,
    scope: str = "tools:list tools:call:echo tools:call:slow",
    username: str = "alice",
    ticked: set[str] | None = None,
) -> dict[str, Any]:
    """Register, authorize ``scope`` as ``username`` and approve (only the ``ticked`` scopes, when
    given), then redeem the code: the token response."""
    client_id = dep.register()
    verifier, challenge = pkce()
    login = dep.person.get(dep.authorize_url(client_id, challenge, scope))
    consent = dep.person.get(dep.base + dep.login(login, username).headers["location"])
    form = the_form(consent)
    if ticked is not None:
        form.checkboxes = [(n, v, v in ticked) for n, v, _ in form.checkboxes]
    r = post_form(dep.person, dep.base + form.action, form.submit("approve"))
    code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
    tokens = dep.redeem(client_id, code, verifier, resource=False)
    assert tokens.status_code == 200, tokens.text
    return dict(tokens.json())


def test_rs_01_token_in_query_or_body_is_ignored(dep: Deployment) -> None:
    token = grant(dep)["access_token"]
    r = dep.client.post(dep.resource + "?access_token=" + token, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert r.status_code == 401
    assert 'error="invalid_token"' not in r.headers["www-authenticate"]


def test_rs_02_bad_token_gets_invalid_token_challenge(dep: Deployment) -> None:
    r = dep.mcp("not-a-token", "tools/list")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith(
        f'Bearer resource_metadata="{dep.base}/.well-known/oauth-protected-resource/mcp", scope="tools:list", '
        'error="invalid_token"'
    )


def test_rs_03_batch_needs_every_methods_scope(dep: Deployment) -> None:
    token = grant(dep, "tools:list")["access_token"]
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo"}},
    ]
    r = dep.client.post(dep.resource, json=batch, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    assert 'scope="tools:list tools:call:echo"' in r.headers["www-authenticate"]


@pytest.mark.parametrize(
    "members",
    [
        '"method":"tools/call","params":{"name":"echo","Name":"slow"}',
        '"Method":"tools/call","params":{"name":"slow"}',
        '"method":"ping","METHOD":"tools/call","params":{"name":"slow"}',
        '"method":"tools/call","params":{"name":"echo"},"param\u017f":{"name":"slow"}',
        '"method":"tools/call","params":{"name":"echo","name\\u0000":"slow"}',
    ],
)
def test_rs_03_a_member_spelled_otherwise_cannot_call_a_tool_unscoped(dep: Deployment, members: str) -> None:
    """Over HTTP, on every framework: a token for ``tools:call:echo`` only cannot get a call to
    ``slow`` past the guard by spelling ``method``, ``params`` or ``name`` as a case-insensitive
    server (Go's encoding/json) would still read them: 403 naming ``tools:call:slow``."""
    token = grant(dep, "tools:call:echo")["access_token"]
    body = ('{"jsonrpc":"2.0","id":1,' + members + "}").encode()
    r = dep.client.post(
        dep.resource, content=body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    )
    assert r.status_code == 403, r.text
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert "tools:call:slow" in r.headers["www-authenticate"]


def test_rs_03_a_content_coded_body_is_415_not_an_unscoped_call(dep: Deployment) -> None:
    """A gzip body reads as no JSON-RPC method here, while a server behind that decodes it would
    run the call inside: only identity is taken (RFC 9110 §15.5.16)."""
    import gzip
    import json

    token = grant(dep, "tools:list")["access_token"]
    call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}).encode()
    for coding, body in (("gzip", gzip.compress(call)), ("identity, gzip", gzip.compress(call))):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Content-Encoding": coding}
        r = dep.client.post(dep.resource, content=body, headers=headers)
        assert r.status_code == 415 and r.headers["accept-encoding"] == "identity", (coding, r.text)
    plain = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Content-Encoding": "identity"}
    assert dep.client.post(dep.resource, content=call, headers=plain).status_code == 403


UTF7_CALL = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list","z":"+ACI-,+ACI-method+ACI-:+ACI-tools/call+ACI-,'
    b'+ACI-params+ACI-:{+ACI-name+ACI-:+ACI-echo+ACI-},+ACI-w+ACI-:+ACI-"}'
)
"""A ``tools/list`` call as UTF-8; as UTF-7 its string also holds ``"method":"tools/call"``,
which a server decoding the declared charset (and keeping the last member) would run."""


@pytest.mark.parametrize(
    "content_type",
    [
        ["application/json; charset=utf-7"],
        ["application/json; charset=UTF-16"],
        ["application/json;charset=iso-8859-1"],
        ["application/json; charset*=utf-7''"],
        ["application/json; charset=utf-8; charset=utf-7"],
        ["application/json", "application/json; charset=utf-7"],
    ],
)
def test_rs_03_a_charset_other_than_utf8_is_415_not_a_reading_the_guard_never_made(
    dep: Deployment, content_type: list[str]
) -> None:
    """MCP messages are UTF-8 JSON; the guard reads the methods of the bytes as UTF-8, so a body
    declared in another charset (which a server behind may decode as declared) is refused."""
    token = grant(dep, "tools:list")["access_token"]
    headers = [("Authorization", f"Bearer {token}"), *(("Content-Type", value) for value in content_type)]
    r = dep.client.post(dep.resource, content=UTF7_CALL, headers=headers)
    if len(content_type) > 1 and r.status_code == 400:  # aiohttp's parser refuses the request itself
        return
    assert r.status_code == 415 and "UTF-8" in r.json()["error_description"], r.text


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        'application/json; charset="UTF-8"',
        "application/json ;charset = utf-8",
        "application/json;\tcharset=utf-8",
        "application/json; x=charset",
        "Application/JSON",
    ],
)
def test_a_utf8_charset_is_taken(dep: Deployment, content_type: str) -> None:
    token = grant(dep, "tools:list")["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    r = dep.client.post(dep.resource, content=UTF7_CALL, headers=headers)
    assert r.status_code == 200, r.text


def test_guard_streams_without_buffering(dep: Deployment) -> None:
    token = grant(dep)["access_token"]
    RELEASE.clear()
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}}
    headers = {"Authorization": f"Bearer {token}"}
    with dep.client.stream("POST", dep.resource, json=message, headers=headers) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        first = next(chunks)
        assert first.startswith(b"chunk-1")  # arrived while the app is still waiting
        RELEASE.set()
        rest = b"".join(chunks)
    assert (first + rest) == b"chunk-1\nchunk-2\n"


def test_md_03_md_04_resource_metadata_and_cors(dep: Deployment) -> None:
    url = f"{dep.base}/.well-known/oauth-protected-resource/mcp"
    r = dep.client.get(url, headers={"Origin": "https://inspector.example"})
    assert r.status_code == 200
    assert r.json()["bearer_methods_supported"] == ["header"]
    assert r.headers["access-control-allow-origin"] == "*"
    pre = dep.client.options(url, headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"


def test_head_has_the_gets_headers_and_length_and_no_content(dep: Deployment) -> None:
    """RFC 9110 §9.3.2 and §8.6, through each framework and its server."""
    meta = "/.well-known/oauth-authorization-server" + urlsplit(dep.issuer).path
    for path in (meta, urlsplit(dep.metadata()["jwks_uri"]).path):
        got = dep.client.get(dep.base + path)
        head = dep.client.head(dep.base + path)
        assert head.status_code == got.status_code == 200
        assert head.content == b"" and len(got.content) > 0
        assert head.headers["content-length"] == str(len(got.content)), path
        assert head.headers.get_list("content-length") == [head.headers["content-length"]]
        assert head.headers["content-type"] == got.headers["content-type"]


def test_md_04_authorization_endpoint_has_no_cors(dep: Deployment) -> None:
    pre = dep.client.options(
        dep.metadata()["authorization_endpoint"],
        headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in pre.headers


def test_concurrent_people_do_not_share_sessions(dep: Deployment) -> None:
    """Two browsers at once: each gets its own form tokens; nothing crosses."""
    results: list[int] = []

    def one() -> None:
        with httpx.Client(timeout=10) as browser:
            other = Deployment(dep.base, dep.issuer, dep.resource, dep.server, dep.client, browser)
            form = the_form(consent_page(other))
            results.append(post_form(browser, dep.base + form.action, form.submit("approve")).status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [303] * 4


# -- the same answer from every framework (a review's findings) ------------------------------------------


def test_the_endpoints_read_forms_and_json_with_any_charset_and_answer_415_with_cors(dep: Deployment) -> None:
    """The guard's UTF-8 rule is the guarded path's only: the authorization server's endpoints take
    a charset parameter (clients send ``charset=ISO-8859-1``) and ignore one on a GET; a
    content-coded body (415) and one too large (413) are answered everywhere with the endpoints'
    CORS headers (MD-04)."""
    token_url = dep.metadata()["token_endpoint"]
    latin = dep.client.post(
        token_url,
        content=b"grant_type=password&username=a&password=b",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"},
    )
    assert latin.status_code == 400 and latin.json()["error"] == "unsupported_grant_type", latin.text
    body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
    registered = dep.client.post(
        dep.metadata()["registration_endpoint"],
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; charset=us-ascii"},
    )
    assert registered.status_code == 201, registered.text
    meta = dep.client.get(
        dep.base + "/.well-known/oauth-authorization-server", headers={"Content-Type": "text/plain; charset=latin1"}
    )
    assert meta.status_code == 200
    coded = dep.client.post(
        token_url,
        content=b"\x1f\x8b",
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "https://app.example",
        },
    )
    assert coded.status_code == 415 and coded.headers.get("access-control-allow-origin") == "*", coded.headers
    huge = dep.client.post(
        token_url,
        content=b"x" * (4 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://app.example"},
    )
    assert huge.status_code == 413 and huge.headers.get("access-control-allow-origin") == "*", huge.headers


def _head_only(base: str, path: str, length: int, wait: float = 5.0) -> bytes:
    """Send a POST's headers declaring ``length`` bytes of body and none of the body: the answer's
    status line and headers, as far as they come within ``wait`` seconds."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=wait) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        answer = b""
        try:
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def test_a_body_declared_over_the_limit_is_413_before_any_of_it_is_sent(dep: Deployment) -> None:
    """A ``Content-Length`` over 4 MiB is answered at once, on the guarded path and the
    authorization server's alike, on every framework: nothing waits for (or buffers) a body that
    would be refused anyway, whoever sends it."""
    too_long = 4 * 1024 * 1024 + 1
    for path in ("/mcp", urlsplit(dep.metadata()["token_endpoint"]).path):
        assert _head_only(dep.base, path, too_long).startswith(b"HTTP/1.1 413"), path
    assert _head_only(dep.base, "/mcp", 4 * 1024 * 1024, wait=1.0) == b"", "at the limit: the body is awaited"


def test_a_preflight_204_has_no_content_length(dep: Deployment) -> None:
    preflight = dep.client.options(
        dep.metadata()["token_endpoint"],
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert "content-length" not in preflight.headers, preflight.headers  # RFC 9110 §8.6


def test_two_authorization_headers_are_400_on_every_framework(dep: Deployment) -> None:
    """WSGI servers join repeated headers into one value; the guard still sees two credentials."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    answer = dep.client.post(
        dep.resource, json=message, headers=[("Authorization", "Bearer aaaa"), ("Authorization", "Bearer bbbb")]
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request", answer.text


def test_a_large_batch_is_read_only_for_a_valid_token(dep: Deployment) -> None:
    """A batch over 64 KiB calling thousands of tools: without a valid token the 401 names the
    resource's default scopes, the batch unread (no parsing for anyone without a token); with a
    token lacking them, the 403 names the family of scopes covering every tool called, one short
    scope instead of a challenge as long as the batch. A large single call is likewise read once
    the token is valid: 403 naming its tool without the scope, the tool's answer with it."""
    batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": f"n{i}"}} for i in range(5000)]
    assert len(json.dumps(batch)) > 64 * 1024
    small = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "n1"}}]
    default = dep.server.config.resource(dep.resource).default_scopes  # type: ignore[union-attr]
    for token in (None, "not-a-token"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = dep.client.post(dep.resource, json=batch, headers=headers)
        assert answer.status_code == 401
        assert f'scope="{" ".join(default)}"' in answer.headers["www-authenticate"], answer.headers
        answer = dep.client.post(dep.resource, json=small, headers=headers)
        assert 'scope="tools:call:n1"' in answer.headers["www-authenticate"]  # a small body is read first
    narrow = grant(dep, "tools:list tools:call:echo")["access_token"]
    answer = dep.client.post(dep.resource, json=batch, headers={"Authorization": f"Bearer {narrow}"})
    assert answer.status_code == 403
    challenge = answer.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="tools:call"' in challenge and len(challenge) < 300
    large_call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "n7", "text": "x" * 70_000}}
    answer = dep.client.post(dep.resource, json=large_call, headers={"Authorization": f"Bearer {narrow}"})
    assert answer.status_code == 403 and 'scope="tools:call:n7"' in answer.headers["www-authenticate"]
    dep.person.cookies.clear()  # the next grant signs in again
    broad = grant(dep, "tools:list tools:call")["access_token"]
    answer = dep.client.post(dep.resource, json=large_call, headers={"Authorization": f"Bearer {broad}"})
    assert answer.status_code == 200 and answer.json()["result"]["called"] == "n7", answer.text
