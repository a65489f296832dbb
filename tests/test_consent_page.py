"""The built-in consent page's words about where the answer goes and whom to trust (AZ-11).

Each view comes from the core's ``authorize`` for a client put straight into the store, then is
rendered by :func:`kavach.pages.consent_page` as every framework adapter renders it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape, unescape

import attrs
import pytest
from conftest import Harness
from kavach.pages import consent_page, error_page, login_page, page_headers
from oauth_flows import LOOPBACK, REDIRECT, add_client, consent

from kavach_core.messages.authorization import ConsentView, ScopeView

DEVICE = "runs on a computer, not a website"
LOCAL = "It only returns to a local address, so kavachOS cannot check who made it."
TRUST = "This application registered itself. Its name is not verified; make sure you trust"
STARTED = "Approve only if you started this application yourself just now."


def text_of(view: ConsentView) -> str:
    """The rendered consent page's text, tags removed."""
    resp = consent_page(view, action="/consent", ticket="t", csrf="c", subject="alice")
    assert resp.status == 200
    return unescape(re.sub(r"<[^>]+>", "", resp.body.decode()))


def page_text(h: Harness, redirect_uris: tuple[str, ...], requested: str, kind: str = "dynamic") -> str:
    """The consent page for a client of ``kind`` named Demo App asking to answer to ``requested``."""
    add_client(h, redirect_uris=redirect_uris, client_name="Demo App", kind=kind)
    return text_of(consent(h, redirect_uri=requested).view)


@pytest.mark.parametrize(
    ("uri", "host"),
    [(REDIRECT, "app.example.com"), ("https://App.Example.com:8443/cb", "app.example.com:8443")],
)
def test_az_11_web_redirect_names_its_host_and_port(h: Harness, uri: str, host: str) -> None:
    text = page_text(h, (uri,), uri)
    assert f"After you answer you will be sent to {host}." in text
    assert f"{TRUST} {host}." in text  # a self-registered client: trust the host its answer goes to
    assert DEVICE not in text


def test_az_11_static_web_client_has_no_warning(h: Harness) -> None:
    text = page_text(h, (REDIRECT,), REDIRECT, kind="static")
    assert "After you answer you will be sent to app.example.com." in text
    assert "trust" not in text and DEVICE not in text


@pytest.mark.parametrize(
    ("registered", "requested", "host"),
    [
        (LOOPBACK, "http://127.0.0.1:4000/cb", "127.0.0.1:4000"),
        ("http://[::1]/cb", "http://[::1]:5173/cb", "[::1]:5173"),
    ],
)
def test_az_11_loopback_client_is_warned_about_and_not_trusted_by_host(
    h: Harness, registered: str, requested: str, host: str
) -> None:
    text = page_text(h, (registered,), requested)
    assert f"After you answer you will be sent to {host}." in text
    assert f"Demo App {DEVICE}. {LOCAL} {STARTED}" in text
    assert "trust" not in text


@pytest.mark.parametrize("uri", ["com.evil://app.example.com/cb", "com.evil:/cb"])
def test_az_11_private_use_scheme_is_named_never_its_authority(h: Harness, uri: str) -> None:
    """The answer goes to whichever app claims ``com.evil:``, whatever host the URI spells
    (RFC 8252 §7.1, §8.6): the page says so, warns, and asks no one to trust a host."""
    text = page_text(h, (uri,), uri)
    assert "After you answer you will be sent to the application on this computer that opens com.evil: links." in text
    assert (
        f"Demo App {DEVICE}. Any application can claim com.evil: links, so kavachOS cannot check who made it. {STARTED}"
    ) in text
    assert "app.example.com" not in text and "trust" not in text


def test_az_11_loopback_and_private_use_client_is_an_app_on_the_device(h: Harness) -> None:
    uris = (LOOPBACK, "com.example.app:/cb")
    text = page_text(h, uris, LOOPBACK)
    assert "After you answer you will be sent to 127.0.0.1." in text
    assert f"Demo App {DEVICE}. {LOCAL} {STARTED}" in text
    assert "trust" not in text


def test_az_11_web_client_answering_to_its_private_use_scheme_is_warned_about(h: Harness) -> None:
    text = page_text(h, (REDIRECT, "com.example.app:/cb"), "com.example.app:/cb")
    assert "opens com.example.app: links." in text
    assert "Any application can claim com.example.app: links" in text
    assert "app.example.com" not in text and "trust" not in text


def test_az_11_document_client_still_names_its_publisher(h: Harness) -> None:
    client_id = "https://client.example.com/client.json"
    add_client(h, client_id, (LOOPBACK,), client_name="Doc App", kind="document")
    text = text_of(consent(h, client_id=client_id, redirect_uri=LOOPBACK).view)
    assert DEVICE in text and "approve only if you trust client.example.com." in text


def test_az_11_a_view_built_without_the_new_fields_still_warns_for_loopback(h: Harness) -> None:
    """An application that builds its own :class:`ConsentView` with only ``loopback_only`` set."""
    add_client(h, redirect_uris=(LOOPBACK,), client_name="Demo App", kind="dynamic")
    view = attrs.evolve(consent(h, redirect_uri=LOOPBACK).view, on_device=False, private_use=False)
    text = text_of(view)
    assert f"Demo App {DEVICE}. {LOCAL}" in text and "trust" not in text


def test_switching_account_is_offered_only_when_asked_for(h: Harness) -> None:
    """Built-in sign-in gets "Sign in as someone else" (a third submit button of the same form, so it
    carries the form's ticket and CSRF token); an application's own login (``identify``) does not."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    view = consent(h).view
    offered = consent_page(view, action="/consent", ticket="t", csrf="c", subject="al<i>ce", switch_account=True)
    body = offered.body.decode()
    form = body[body.index("<form") : body.index("</form>")]
    assert '<button type="submit" name="decision" value="switch"' in form
    assert "Not al&lt;i&gt;ce?" in body, "the name is escaped"
    plain = consent_page(view, action="/consent", ticket="t", csrf="c", subject="alice")
    assert 'value="switch"' not in plain.body.decode()


HOSTILE = '"><script>x</script>'
"""A value that would end an attribute and open a script if it reached the page unescaped."""


def test_every_value_a_page_shows_is_escaped(h: Harness) -> None:
    """Names, hosts, scopes, resources, the subject, the form's action and hidden fields, the
    username typed and the error shown come from clients and people: every one is escaped, so
    none of them can open an element or leave an attribute."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    view = attrs.evolve(
        consent(h).view,
        client_id=HOSTILE + "id",
        client_name=HOSTILE + "name",
        redirect_host=HOSTILE + "host",
        scopes=(ScopeView(HOSTILE + "scope", HOSTILE + "description"), ScopeView(HOSTILE + "bare", "")),
        resources=(HOSTILE + "uri", HOSTILE + "plain"),
        resource_names=(HOSTILE + "label", ""),
    )
    pages = {
        "consent": consent_page(
            view, action=HOSTILE + "action", ticket=HOSTILE + "t", csrf=HOSTILE + "c", subject=HOSTILE + "s"
        ),
        "device": consent_page(
            attrs.evolve(view, private_use=True), action="/consent", ticket="t", csrf="c", subject="alice"
        ),
        "document": consent_page(
            attrs.evolve(view, client_kind="document"), action="/consent", ticket="t", csrf="c", subject="alice"
        ),
        "switch": consent_page(
            view, action="/consent", ticket="t", csrf="c", subject=HOSTILE + "s", switch_account=True
        ),
        "login": login_page(
            action=HOSTILE + "action",
            ticket=HOSTILE + "t",
            csrf=HOSTILE + "c",
            client_name=HOSTILE + "name",
            username=HOSTILE + "user",
            error=HOSTILE + "error",
        ),
        "error": error_page(400, HOSTILE + "code", HOSTILE + "why", back=HOSTILE + "back", back_to=HOSTILE + "to"),
    }
    shown = {
        "consent": ("id", "name", "host", "scope", "description", "bare", "uri", "plain", "label", "action", "t", "c"),
        "login": ("name", "user", "error", "action", "t", "c"),
        "error": ("code", "why", "back", "to"),
        "switch": ("s",),
    }
    for kind, page in pages.items():
        body = page.body.decode()
        assert "<script" not in body and HOSTILE not in body, kind
        for marker in shown.get(kind, ("name",)):
            assert escape(HOSTILE) + marker in body, (kind, marker)


@pytest.mark.parametrize("kind", ["login", "consent", "error"])
def test_every_page_is_html_never_cached_framed_sniffed_or_loading_from_elsewhere(h: Harness, kind: str) -> None:
    """AZ-10, for each page: HTML in UTF-8, no caching (``no-store``, and ``Pragma`` for HTTP/1.0
    caches), no framing (CSP and ``X-Frame-Options``), no referrer, no type sniffing, nothing
    loaded but the pinned stylesheet and this server's images, no ``<base>``; only the error
    page, whose form never leads away, limits forms to this server."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    page = {
        "login": lambda: login_page(action="/login", ticket="t", csrf="c", client_name="Demo App"),
        "consent": lambda: consent_page(consent(h).view, action="/consent", ticket="t", csrf="c", subject="alice"),
        "error": lambda: error_page(400, "invalid_request", "The request is not valid."),
    }[kind]()
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert page.header("cache-control") == "no-store" and page.header("pragma") == "no-cache"
    assert page.header("x-frame-options") == "DENY" and page.header("referrer-policy") == "no-referrer"
    assert page.header("x-content-type-options") == "nosniff"
    style = page.body.decode().split("<style>", 1)[1].split("</style>", 1)[0]
    pinned = "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
    directives = {d.split()[0]: d.split()[1:] for d in (page.header("content-security-policy") or "").split("; ")}
    expected = {
        "default-src": ["'none'"],
        "style-src": [pinned],
        "img-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
    }
    if kind == "error":
        expected["form-action"] = ["'self'"]
    assert directives == expected


def test_every_page_carries_the_headers_it_is_given(h: Harness) -> None:
    """The caller's own headers (the sign-in's cookies) go out with each page, after the page's own."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    cookie = ("Set-Cookie", "__Host-kavach=v; Path=/; Secure; HttpOnly")
    pages = (
        login_page(action="/login", ticket="t", csrf="c", client_name="Demo App", headers=[cookie]),
        consent_page(consent(h).view, action="/consent", ticket="t", csrf="c", subject="alice", headers=[cookie]),
        error_page(400, "invalid_request", "The request is not valid.", headers=[cookie]),
    )
    for page in pages:
        assert page.headers[-1] == cookie and page.header("set-cookie") == cookie[1]


def test_a_consent_for_no_scopes_says_it_asks_for_nothing_beyond_who_you_are(h: Harness) -> None:
    """A request that asks for no scopes has no permission to tick: the
    page says so, and its form has no ``scope`` field."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    view = attrs.evolve(consent(h).view, scopes=())
    page = consent_page(view, action="/consent", ticket="t", csrf="c", subject="alice")
    assert "It asks for no permissions beyond knowing it is you." in text_of(view)
    assert 'name="scope"' not in page.body.decode()


def test_each_page_is_titled_for_what_it_shows(h: Harness) -> None:
    """The ``<title>`` (the tab, and what a screen reader announces first) names the page."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    titles = {
        "Sign in": login_page(action="/login", ticket="t", csrf="c", client_name="Demo App"),
        "Authorize Demo App": consent_page(consent(h).view, action="/consent", ticket="t", csrf="c", subject="alice"),
        "Authorization error": error_page(400, "invalid_request", "The request is not valid."),
    }
    for title, page in titles.items():
        assert f"<title>{title}</title>" in page.body.decode(), title


def test_an_error_without_a_way_back_sends_the_person_back_to_the_application_themselves() -> None:
    """Without ``back`` the error page links nowhere; it tells the person to return to the
    application and try again."""
    body = error_page(400, "invalid_request", "The request is not valid.").body.decode()
    assert "<p>Return to the application and try again. You can close this window.</p>" in body
    assert "<a " not in body


def test_headers_given_no_word_on_forms_keep_them_to_this_server() -> None:
    """:func:`page_headers` unqualified (every page whose forms stay here, and kavach's own
    redirects) carries ``form-action 'self'``; only ``forms_leave`` drops it."""
    assert "form-action 'self'" in dict(page_headers())["Content-Security-Policy"]
    assert "form-action" not in dict(page_headers(forms_leave=True))["Content-Security-Policy"]


def test_a_resource_without_a_name_of_its_own_is_listed_by_its_uri_once(h: Harness) -> None:
    """A resource named only by its URI (its name is the URI, or unknown) shows the URI once; a
    named one shows its name with the URI beside it."""
    add_client(h, redirect_uris=(REDIRECT,), client_name="Demo App")
    view = attrs.evolve(
        consent(h).view,
        resources=("https://a.example/mcp", "https://b.example/mcp", "https://c.example/mcp"),
        resource_names=("https://a.example/mcp", "", "Calendar"),
    )
    body = consent_page(view, action="/consent", ticket="t", csrf="c", subject="alice").body.decode()
    listed = body[body.index('<ul class="resources">') : body.index("</ul>")]
    assert "<li>https://a.example/mcp</li>" in listed and "<li>https://b.example/mcp</li>" in listed
    assert '<li>Calendar <span class="host">https://c.example/mcp</span></li>' in listed


def test_an_error_with_a_way_back_to_an_unnamed_client_calls_it_the_application() -> None:
    """With ``back`` and no ``back_to``, the link back names no host: it returns "to the application"."""
    body = error_page(400, "invalid_scope", "Unknown scope.", back="https://app.example.com/cb?error=x").body.decode()
    assert '<a href="https://app.example.com/cb?error=x">return to the application</a>' in body
