"""The built-in pages in a real browser: headless Chromium (Debian's ``chromium``) via Playwright.

A person signs in with the keyboard, reads the consent page, approves and lands on the client's
redirect (a tiny local catcher) with a code; a second person denies and lands with
``error=access_denied``. Every page must work under its own Content-Security-Policy: any CSP
violation Chromium reports on the console fails the test (AZ-10). Screenshots of the sign-in,
consent and error pages go to ``artifacts/screenshots/`` (copy them to ``docs/screenshots/`` to refresh the docs).

Without Chromium the module is skipped, except in CI (tests/prerequisites.py), where that is a
failure: ``tests/setup_system_packages.sh`` installs it. Playwright comes with the ``test`` extra.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from playwright import sync_api
from prerequisites import missing
from public_client import pkce
from test_adapters_e2e import PASSWORD, Deployment, collecting_client, deploy, shows_sign_in, unknown_client_url

from kavach_core import effects as fx

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "screenshots"

if not (Path(CHROMIUM).exists() and shutil.which("chromium")):
    missing(f"{CHROMIUM} is not installed: run tests/setup_system_packages.sh", allow_module_level=True)


class _Catcher(BaseHTTPRequestHandler):
    """The client's redirect URI: remembers where the browser landed, shows a plain page; with
    ``onward``, ``/callback`` sends the browser on there (a native tool's listener handing over
    to its hosted "signed in" page)."""

    landed: list[str]
    onward: str | None = None

    def do_GET(self) -> None:
        self.landed.append(self.path)
        if self.onward is not None and self.path.startswith("/callback"):
            self.send_response(302)
            self.send_header("Location", self.onward)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"<!doctype html><title>Back in the app</title><h1>Back in the app</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _CatcherV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def _catching(host: str = "127.0.0.1", onward: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """A redirect URI on loopback ``host`` and the paths the browser landed on there; ``onward``
    (``{port}`` standing for the listener's own port) is where ``/callback`` sends it on."""
    landed: list[str] = []
    handler = type("Catcher", (_Catcher,), {"landed": landed})
    server = (_CatcherV6 if ":" in host else ThreadingHTTPServer)((host, 0), handler)
    if onward is not None:
        handler.onward = onward.format(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{server.server_address[1]}/callback", landed
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def catcher() -> Iterator[tuple[str, list[str]]]:
    with _catching() as caught:
        yield caught


@pytest.fixture
def dep(tmp_path: Any) -> Iterator[Deployment]:
    yield from deploy("starlette", "memory", "", tmp_path)


@pytest.fixture
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Person:
    """One browser profile; collects console messages so CSP violations fail the test."""

    def __init__(self, chromium: Any) -> None:
        self.context = chromium.new_context(viewport={"width": 720, "height": 900}, java_script_enabled=False)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m or "Refused to" in m]


def _authorize_url(dep: Deployment, client_id: str, redirect: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "scope": "tools:list tools:call:echo",
        "state": "browser-state",
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
        "resource": dep.resource,
    }
    return dep.metadata()["authorization_endpoint"] + "?" + urlencode(query)


def _sign_in_with_the_keyboard(person: Person) -> None:
    page = person.page
    assert page.locator("h1").inner_text() == "Sign in"
    assert "Browser Client" in page.locator("main").inner_text()
    page.get_by_label("Username").focus()  # autofocus, asserted below, is not given to headless pages
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_az_10_az_11_az_12_sign_in_consent_approve_then_deny(
    dep: Deployment, catcher: tuple[str, list[str]], chromium: Any
) -> None:
    redirect, landed = catcher
    client_id = dep.register(redirect_uris=[redirect], client_name="Browser Client")

    alice = Person(chromium)
    alice.page.goto(_authorize_url(dep, client_id, redirect))
    assert alice.page.get_attribute("#username", "autofocus") is not None
    alice.shot("login")
    _sign_in_with_the_keyboard(alice)

    page = alice.page
    text = page.locator("main").inner_text()
    assert page.locator("h1").inner_text() == "Browser Client wants to access your account"
    assert "127.0.0.1" in text  # the redirect's host
    assert "See the list of tools" in text and "tools:call:echo" in text  # each scope, described
    assert "runs on a computer, not a website" in text  # the loopback-only warning
    assert "Demo tools" in text and "Signed in as alice" in text
    assert page.get_by_label("See the list of tools").is_checked()
    alice.shot("consent")
    with page.expect_navigation(url=lambda url: url.startswith(redirect)):
        page.get_by_role("button", name="Approve").click()
    answer = parse_qs(urlsplit(page.url).query)
    assert answer["code"] and answer["state"] == ["browser-state"] and answer["iss"] == [dep.issuer]
    assert page.locator("h1").inner_text() == "Back in the app"

    bob = Person(chromium)  # a fresh profile: no session, signs in again, then denies
    bob.page.goto(_authorize_url(dep, client_id, redirect))
    _sign_in_with_the_keyboard(bob)
    with bob.page.expect_navigation(url=lambda url: url.startswith(redirect)):
        bob.page.get_by_role("button", name="Deny").click()
    answer = parse_qs(urlsplit(bob.page.url).query)
    assert answer["error"] == ["access_denied"] and "code" not in answer
    assert answer["state"] == ["browser-state"] and answer["iss"] == [dep.issuer]
    assert [urlsplit(p).path for p in landed if not p.startswith("/favicon")] == ["/callback", "/callback"]

    assert alice.csp_violations() == [] and bob.csp_violations() == []


def test_az_12_cancel_on_the_sign_in_page_denies_without_signing_in(
    dep: Deployment, catcher: tuple[str, list[str]], chromium: Any
) -> None:
    """Someone who will not sign in can still answer: Cancel, with both fields left empty (the
    button skips their ``required`` checks), lands on the client with ``error=access_denied``
    (AZ-12), the ``state`` and ``iss`` (RFC 9207) and no code, and nobody is signed in. Chromium
    checks ``form-action`` on the 303 to the client, so this fails if the sign-in page names only
    its own origin there. Enter in a field still signs in (the other tests), Sign in being the
    form's first button."""
    redirect, landed = catcher
    client_id = dep.register(redirect_uris=[redirect], client_name="Browser Client")
    person = Person(chromium)
    person.page.goto(_authorize_url(dep, client_id, redirect))
    sign_in_page = person.page.url
    assert person.page.locator("h1").inner_text() == "Sign in"
    with person.page.expect_navigation(url=lambda url: url.startswith(redirect)):
        person.page.get_by_role("button", name="Cancel").click()
    answer = parse_qs(urlsplit(person.page.url).query)
    assert answer["error"] == ["access_denied"] and "code" not in answer
    assert answer["state"] == ["browser-state"] and answer["iss"] == [dep.issuer]
    assert [urlsplit(p).path for p in landed if not p.startswith("/favicon")] == ["/callback"]
    person.page.goto(sign_in_page)  # the same authorization request again: asked to sign in again
    assert person.page.locator("h1").inner_text() == "Sign in"
    assert "kavach-session" not in {c["name"] for c in person.context.cookies()}  # nobody signed in
    assert person.csp_violations() == []


def test_az_12_an_ipv6_loopback_redirect_is_reached(dep: Deployment, chromium: Any) -> None:
    """RFC 8252 §7.3 allows ``http://[::1]:PORT``; CSP cannot name that host, and a form-action
    that dropped it would make Chromium block the 303 after Approve."""
    with _catching("::1") as (redirect, landed):
        client_id = dep.register(redirect_uris=[redirect], client_name="Browser Client")
        person = Person(chromium)
        person.page.goto(_authorize_url(dep, client_id, redirect))
        _sign_in_with_the_keyboard(person)
        with person.page.expect_navigation(url=lambda url: url.startswith(redirect)):
            person.page.get_by_role("button", name="Approve").click()
        answer = parse_qs(urlsplit(person.page.url).query)
        assert answer["code"] and answer["state"] == ["browser-state"]
        assert [urlsplit(p).path for p in landed if not p.startswith("/favicon")] == ["/callback"]
    assert person.csp_violations() == []


def test_a_client_sending_the_browser_on_to_another_origin_after_approve_is_followed(
    dep: Deployment, chromium: Any
) -> None:
    """The client's listener answers the code with a redirect to another origin (here
    ``localhost``, the listener's own port): the browser gets there. Chromium checks a page's
    ``form-action`` on every redirect after its form, so a consent page naming only the redirect
    URI's origin left the person on it (the code delivered, the tab stuck, a second Approve
    answered "expired")."""
    with _catching(onward="http://localhost:{port}/done") as (redirect, landed):
        client_id = dep.register(redirect_uris=[redirect], client_name="Browser Client")
        person = Person(chromium)
        person.page.goto(_authorize_url(dep, client_id, redirect))
        _sign_in_with_the_keyboard(person)
        with person.page.expect_navigation(url=lambda url: url.startswith("http://localhost:")):
            person.page.get_by_role("button", name="Approve").click()
        assert urlsplit(person.page.url).path == "/done"
        assert [urlsplit(p).path for p in landed if not p.startswith("/favicon")] == ["/callback", "/done"]
    assert person.csp_violations() == []


def test_a_loopback_client_cannot_act_as_the_person_with_cookies_it_collects(dep: Deployment, chromium: Any) -> None:
    """Under an http issuer Chromium sends kavach's cookies to every port of 127.0.0.1 (RFC 6265
    §8.5). A native client collects them at a path under theirs on its own port: once opened in
    the person's browser while the request is pending (as any local process can), once by its
    redirect URI sending the browser on after Approve. Neither set signs anyone in to a request
    of the client's own, the sign-in the person made is over (ended in the store), and the
    person's next authorization asks for the password again."""
    with collecting_client() as (redirect, collected):
        client_id = dep.register(redirect_uris=[redirect], client_name="Browser Client")
        alice = Person(chromium)
        alice.page.goto(_authorize_url(dep, client_id, redirect))
        _sign_in_with_the_keyboard(alice)
        assert "Signed in as alice" in alice.page.locator("main").inner_text()
        alice.context.new_page().goto(redirect.replace("/callback", "/authorize/x"))  # a local process opened it
        with alice.page.expect_navigation(url=lambda url: url.endswith("/authorize/x")):
            alice.page.get_by_role("button", name="Approve").click()
        early, late = collected
        assert early.get("kavach-session") and early.get("kavach-browser"), "the port is no boundary"
        assert "kavach-session" not in late and "kavach-browser" in late, "the redirect ended the session first"
        for cookies in (early, late):
            with httpx.Client(timeout=10, cookies=cookies) as client:
                own = client.get(_authorize_url(dep, client_id, redirect))
                assert shows_sign_in(own) and "Signed in as" not in own.text, cookies
        session = dep.server.cookies.session(early, int(time.time()))
        assert session is not None and dep.server.store.perform(fx.IsSessionEnded(session.session_hash))
        assert "kavach-session" not in {c["name"] for c in alice.context.cookies()}
        alice.page.goto(_authorize_url(dep, client_id, redirect))
        assert alice.page.locator("h1").inner_text() == "Sign in"
    assert alice.csp_violations() == []


def test_az_02_error_page_renders_and_never_redirects(dep: Deployment, chromium: Any) -> None:
    person = Person(chromium)
    url = unknown_client_url(dep)
    response = person.page.goto(url)
    assert response is not None and response.status == 400
    assert person.page.url == url  # stayed here
    assert person.page.locator("h1").inner_text() == "This request cannot continue"
    assert "invalid_client" in person.page.locator("main").inner_text()
    person.shot("error")
    assert person.csp_violations() == []


def test_style_applies_under_the_pages_own_csp(dep: Deployment, chromium: Any) -> None:
    """The pinned inline stylesheet is really applied (a blocked one would leave default styles)."""
    person = Person(chromium)
    person.page.goto(_authorize_url(dep, dep.register(client_name="Browser Client"), "http://127.0.0.1:9/callback"))
    background = person.page.eval_on_selector("main", "e => getComputedStyle(e).borderRadius")
    assert background == "14px"
    assert person.csp_violations() == []
