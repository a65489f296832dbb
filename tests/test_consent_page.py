"""The built-in consent page's words about where the answer goes and whom to trust (AZ-11).

Each view comes from the core's ``authorize`` for a client put straight into the store, then is
rendered by :func:`kavach.pages.consent_page` as every framework adapter renders it.
"""

from __future__ import annotations

import re
from html import unescape

import attrs
import pytest
from conftest import Harness
from kavach.pages import consent_page
from oauth_flows import LOOPBACK, REDIRECT, add_client, consent

from kavach_core.messages.authorization import ConsentView

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
