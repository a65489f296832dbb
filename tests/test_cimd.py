"""Client ID Metadata Documents (issue 4; CM-01, AZ-11), core and end to end.

Core: the flows run against the memory store wrapped by :class:`Documents`, which answers the
``FetchDocument`` effect with a prepared result and records every effect, so each test states
exactly what was fetched and what was written. End to end: the official MCP Python SDK client,
configured with a client metadata URL, against ``kavach serve`` with the document published over
HTTPS by :mod:`document_host` (a ``trustme`` test CA).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from conftest import Harness, make_config
from document_host import DocumentHost, document_host
from kavach_serve import Served
from oauth_flows import CHALLENGE, VERIFIER, az_query, location_params, writes

from kavach_core import effects as fx
from kavach_core.client_documents import NOT_FETCHED, DocumentRefused
from kavach_core.config import Lifetimes
from kavach_core.drivers import run
from kavach_core.endpoints import authorize, metadata, revocation, token
from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentRequired

URL = "https://client.example.com/mcp/client.json"
REDIRECT = "https://client.example.com/callback"
LOOPBACK = "http://127.0.0.1:33418/callback"


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "client_id": URL,
        "client_name": "Example MCP Client",
        "redirect_uris": [REDIRECT],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def fetched(doc: Any, content_type: str = "application/json", max_age: int | None = 300) -> fx.Fetched:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return fx.Fetched(body, content_type, max_age)


class Documents:
    """The memory store, plus ``FetchDocument`` answered from ``answers``; records every effect."""

    def __init__(self, h: Harness, answers: dict[str, fx.Fetched | fx.FetchRefused] | None = None) -> None:
        self.h = h
        self.answers = answers or {}
        self.fetches: list[str] = []
        self.effects: list[fx.Effect] = []

    def perform(self, effect: fx.Effect) -> Any:
        self.effects.append(effect)
        if isinstance(effect, fx.FetchDocument):
            self.fetches.append(effect.url)
            return self.answers.get(effect.url, fx.FetchRefused("it answered with HTTP status 404"))
        return self.h.store.perform(effect)

    def run(self, flow: Any) -> Any:
        self.effects = []
        return run(flow, self)

    def authorize(self, **overrides: str | None) -> Any:
        query = az_query(**{"client_id": URL, "redirect_uri": REDIRECT, **overrides})
        req = self.h.request("GET", "/authorize", query=query)
        return self.run(authorize.handle(self.h.ctx(), req))

    def token(self, form: dict[str, str]) -> Response:
        req = self.h.request("POST", "/token", form=form)
        out = self.run(token.handle(self.h.ctx(), req))
        assert isinstance(out, Response)
        return out


@pytest.fixture
def docs(h: Harness) -> Documents:
    return Documents(h, {URL: fetched(document())})


def refused_page(out: Any, *words: str) -> str:
    """A page that never redirects and names the reason (AZ-02, CM-01)."""
    assert isinstance(out, Response), out
    assert out.status == 400 and out.header("location") is None
    assert out.view is not None and out.view.error == "invalid_client"
    text = out.view.description
    assert "metadata document" in text
    for word in words:
        assert word in text, text
    return text


def assert_nothing_stored(d: Documents) -> None:
    """No record written; a fetch for a client not known yet is still counted against the
    caller (one ``Hit``: the fetch was made, or refused for the count itself)."""
    stored = [e for e in writes(d.effects) if not isinstance(e, fx.Hit)]
    assert stored == [], stored
    assert d.h.store.clients == {} and d.h.store.pending == {} and d.h.store.codes == {}


# -- discovery -------------------------------------------------------------------------------


def test_cm_01_metadata_advertises_documents(h: Harness) -> None:
    assert metadata.authorization_server_metadata(h.config)["client_id_metadata_document_supported"] is True
    off = make_config(client_id_metadata_documents=False)
    assert metadata.authorization_server_metadata(off)["client_id_metadata_document_supported"] is False


# -- the happy path --------------------------------------------------------------------------


def test_cm_01_authorize_fetches_validates_caches_and_asks_for_consent(docs: Documents) -> None:
    out = docs.authorize()
    assert isinstance(out, ConsentRequired), out
    assert docs.fetches == [URL]
    kinds = [type(e).__name__ for e in docs.effects]
    # the first sight is charged (its mark read, then the count), then marked once accepted
    assert kinds == ["GetClient", "Hit", "Hit", "FetchDocument", "PutClient", "Hit", "PutPending"]
    stored = docs.h.store.clients[URL]
    assert stored.kind == "document" and stored.token_endpoint_auth_method == "none"
    assert stored.redirect_uris == (REDIRECT,) and stored.client_name == "Example MCP Client"
    assert stored.expires_at == docs.h.now + 300
    assert stored.meta["client_id"] == URL
    # AZ-11: the document's name and the redirect host; a document client is never auto-approved.
    view = out.view
    assert (view.client_name, view.client_kind) == ("Example MCP Client", "document")
    assert view.redirect_host == "client.example.com"
    assert view.loopback_only is False


def test_az_11_loopback_only_document_is_flagged(h: Harness) -> None:
    d = Documents(h, {URL: fetched(document(redirect_uris=[LOOPBACK]))})
    out = d.authorize(redirect_uri=LOOPBACK)
    assert isinstance(out, ConsentRequired), out
    assert out.view.loopback_only is True and out.view.redirect_host == "127.0.0.1:33418"


def test_cm_01_without_client_name_the_url_is_shown(h: Harness) -> None:
    d = Documents(h, {URL: fetched(document(client_name=None))})
    out = d.authorize()
    assert isinstance(out, ConsentRequired), out
    assert out.view.client_name == URL


def test_cm_01_whole_flow_code_token_refresh_and_revocation_with_one_fetch(docs: Documents) -> None:
    out = docs.authorize()
    assert isinstance(out, ConsentRequired)
    redirect = docs.run(authorize.approve(docs.h.ctx(), out.ticket, "alice"))
    code = location_params(redirect)["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": VERIFIER,
        "client_id": URL,
        "redirect_uri": REDIRECT,
    }
    resp = docs.token(form)
    assert resp.status == 200, resp.body
    body = resp.json()
    resp = docs.token({"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": URL})
    assert resp.status == 200, resp.body
    req = docs.h.request("POST", "/revoke", form={"token": resp.json()["refresh_token"], "client_id": URL})
    assert docs.run(revocation.handle(docs.h.ctx(), req)).status == 200
    assert docs.fetches == [URL], "authorization, redemption, refresh and revocation share one fetch"


def test_registration_keeps_working_beside_documents(docs: Documents) -> None:
    from kavach_core.endpoints import registration

    req = docs.h.request("POST", "/register", json={"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
    resp = docs.run(registration.handle(docs.h.ctx(), req))
    assert resp.status == 201
    client_id = resp.json()["client_id"]
    out = docs.authorize(client_id=client_id)
    assert isinstance(out, ConsentRequired) and out.view.client_kind == "dynamic"
    assert docs.fetches == []
    assert isinstance(docs.authorize(), ConsentRequired)
    assert docs.fetches == [URL]


# -- fetches for clients not known yet are rate-limited per address ------------------------------


def test_rg_03_a_document_client_not_known_yet_costs_its_requester_one_registration() -> None:
    """Each fetch for a client not stored yet is one registration against the caller's address
    (RG-03's limit): unknown URL after unknown URL from one address stops fetching at the limit,
    at /authorize and at /token alike, while another address, and a stored client refetched once
    its copy expires, still fetch."""
    from kavach_core.config import RegistrationPolicy
    from kavach_core.http import CLIENT_ADDRESS_HEADER

    h = Harness(make_config(registration=RegistrationPolicy(rate_limit=3, rate_window=3600)))
    d = Documents(h, {URL: fetched(document())})
    attacker = [(CLIENT_ADDRESS_HEADER, "203.0.113.9")]

    def authorize_as(client_id: str, headers: list[tuple[str, str]]) -> Any:
        query = az_query(client_id=client_id, redirect_uri=REDIRECT)
        return d.run(authorize.handle(h.ctx(), h.request("GET", "/authorize", query=query, headers=headers)))

    unknown = [f"https://h{i}.attacker.example/c.json" for i in range(4)]
    for url in unknown[:2]:
        refused_page(authorize_as(url, attacker), NOT_FETCHED)
    form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": unknown[2]}
    answer = d.run(token.handle(h.ctx(), h.request("POST", "/token", form=form, headers=attacker)))
    assert isinstance(answer, Response) and answer.status == 401
    assert d.fetches == unknown[:3]
    refused_page(authorize_as(unknown[3], attacker), "too many new clients")
    assert d.fetches == unknown[:3], "over the limit: nothing fetched"
    # Another address is not held back; a stored client's refetch after expiry is not charged.
    assert isinstance(authorize_as(URL, [(CLIENT_ADDRESS_HEADER, "198.51.100.7")]), ConsentRequired)
    h.now += 301
    assert isinstance(authorize_as(URL, attacker), ConsentRequired)
    assert d.fetches == [*unknown[:3], URL, URL]
    # A client fetched in this rate window is not charged again once the purge has removed its
    # expired copy (it would be, client after client, every purge): fill the address's count to
    # the limit, purge, and the known client still fetches while a new one is refused.
    h.now += 301
    h.store.purge(h.now)
    assert URL not in h.store.clients
    refused_page(authorize_as(unknown[3], attacker), "too many new clients")
    assert isinstance(authorize_as(URL, attacker), ConsentRequired)
    assert d.fetches == [*unknown[:3], URL, URL, URL]
    # Callers whose address is not known share one bucket, as registrations do.
    nameless = [f"https://n{i}.attacker.example/c.json" for i in range(4)]
    for url in nameless[:3]:
        refused_page(authorize_as(url, []), NOT_FETCHED)
    refused_page(authorize_as(nameless[3], []), "too many new clients")
    assert d.fetches[-3:] == nameless[:3]


def test_rg_03_a_document_fetched_once_in_the_window_is_not_charged_again_after_the_purge() -> None:
    """RG-03: asking whether a document was already fetched in this rate window only reads its
    mark. A client fetched once, its copy since purged, fetches again for free even from an
    address at its limit."""
    from kavach_core.config import RegistrationPolicy
    from kavach_core.http import CLIENT_ADDRESS_HEADER

    h = Harness(make_config(registration=RegistrationPolicy(rate_limit=1, rate_window=3600)))
    d = Documents(h, {URL: fetched(document())})
    query = az_query(client_id=URL, redirect_uri=REDIRECT)
    request = h.request("GET", "/authorize", query=query, headers=[(CLIENT_ADDRESS_HEADER, "203.0.113.9")])
    assert isinstance(d.run(authorize.handle(h.ctx(), request)), ConsentRequired)  # the address's one registration
    h.now += 301
    h.store.purge(h.now)
    assert URL not in h.store.clients
    assert isinstance(d.run(authorize.handle(h.ctx(), request)), ConsentRequired)
    assert d.fetches == [URL, URL]


def test_rg_03_with_rate_limit_zero_a_document_client_counts_nothing() -> None:
    """RG-03: a limit of 0 counts nothing, so fetching and storing a document client neither
    reads nor writes a counter or a mark."""
    from kavach_core.config import RegistrationPolicy

    h = Harness(make_config(registration=RegistrationPolicy(rate_limit=0)))
    d = Documents(h, {URL: fetched(document())})
    assert isinstance(d.authorize(), ConsentRequired)
    assert [e for e in d.effects if isinstance(e, fx.Hit)] == []
    assert h.store.hits == {} and URL in h.store.clients


def test_rg_03_failed_refetches_of_a_known_document_are_counted_per_address() -> None:
    """A document accepted once and expired is refetched for free while its host answers with a
    document; a refetch that fails is counted against the caller's address (its limit: the
    registration limit), so a URL accepted once does not make this server fetch it on every
    request, a slow host holding a fetch slot each time. Another address is not held back, and
    once the host answers again the refetch succeeds and costs nothing."""
    from kavach_core.config import RegistrationPolicy
    from kavach_core.http import CLIENT_ADDRESS_HEADER

    h = Harness(make_config(registration=RegistrationPolicy(rate_limit=3, rate_window=3600)))
    d = Documents(h, {URL: fetched(document(), max_age=60)})
    attacker = [(CLIENT_ADDRESS_HEADER, "203.0.113.9")]

    def authorize_as(headers: list[tuple[str, str]]) -> Any:
        query = az_query(client_id=URL, redirect_uri=REDIRECT)
        return d.run(authorize.handle(h.ctx(), h.request("GET", "/authorize", query=query, headers=headers)))

    assert isinstance(authorize_as(attacker), ConsentRequired)
    h.now += 61
    for _ in range(3):  # the host answers, then with a document again: free
        assert isinstance(authorize_as(attacker), ConsentRequired)
        h.now += 61
    assert len(d.fetches) == 4
    d.answers[URL] = fx.FetchRefused("it answered with HTTP status 503")
    for _ in range(3):
        refused_page(authorize_as(attacker), NOT_FETCHED)
    for _ in range(5):
        refused_page(authorize_as(attacker), "too many failed fetches")
    assert len(d.fetches) == 7, "three failed refetches, then nothing fetched for this address"
    refused_page(authorize_as([(CLIENT_ADDRESS_HEADER, "198.51.100.7")]), NOT_FETCHED)
    assert len(d.fetches) == 8
    d.answers[URL] = fetched(document(), max_age=60)
    assert isinstance(authorize_as([(CLIENT_ADDRESS_HEADER, "198.51.100.7")]), ConsentRequired)
    assert len(d.fetches) == 9


# -- cache -----------------------------------------------------------------------------------


def test_cm_01_second_authorization_within_the_lifetime_fetches_nothing_then_once_after(docs: Documents) -> None:
    assert isinstance(docs.authorize(), ConsentRequired)
    assert docs.fetches == [URL]
    docs.h.now += 299
    assert isinstance(docs.authorize(), ConsentRequired)
    assert docs.fetches == [URL], "within max-age: the cached document is used"
    docs.h.now += 1
    assert isinstance(docs.authorize(), ConsentRequired)
    assert docs.fetches == [URL, URL], "expired: fetched once more"
    assert docs.h.store.clients[URL].expires_at == docs.h.now + 300
    assert isinstance(docs.authorize(), ConsentRequired)
    assert docs.fetches == [URL, URL]


@pytest.mark.parametrize(
    ("max_age", "lifetime"),
    [(None, 60), (0, 60), (5, 60), (600, 600), (10**9, 86400)],
    ids=["unstated", "no-store", "below-min", "within", "above-max"],
)
def test_cm_01_cache_lifetime_is_clamped_to_the_configured_bounds(max_age: int | None, lifetime: int) -> None:
    h = Harness(make_config(lifetimes=Lifetimes(metadata_document_min=60, metadata_document_max=86400)))
    d = Documents(h, {URL: fetched(document(), max_age=max_age)})
    assert isinstance(d.authorize(), ConsentRequired)
    assert h.store.clients[URL].expires_at == h.now + lifetime


def test_cm_01_a_changed_document_is_seen_after_expiry(docs: Documents) -> None:
    assert isinstance(docs.authorize(), ConsentRequired)
    docs.answers[URL] = fetched(document(client_name="Renamed"))
    docs.h.now += 300
    out = docs.authorize()
    assert isinstance(out, ConsentRequired) and out.view.client_name == "Renamed"


@pytest.mark.parametrize("answer", ["consent", "approve", "deny"])
def test_cm_01_a_redirect_uri_the_document_withdrew_gets_nothing(docs: Documents, answer: str) -> None:
    """The document lists the request's redirect URI when it is asked, and no longer does when
    the person answers (its client changed it, and the copy kept here expired): the request is
    answered as expired. No code goes to the withdrawn URI, no one is sent there, and the consent
    page is not drawn from the new list (which may hold only loopback URIs while the answer would
    go to a website)."""
    docs.answers[URL] = fetched(document(redirect_uris=[REDIRECT, LOOPBACK]))
    out = docs.authorize()
    assert isinstance(out, ConsentRequired) and not out.view.loopback_only
    docs.answers[URL] = fetched(document(redirect_uris=[LOOPBACK]))
    docs.h.now += 420  # past the kept copy's 300 s, within the request's 600 s
    if answer == "consent":
        assert docs.run(authorize.consent(docs.h.ctx(), out.ticket)) is None
        return
    flow = (
        authorize.approve(docs.h.ctx(), out.ticket, "alice")
        if answer == "approve"
        else authorize.deny(docs.h.ctx(), out.ticket)
    )
    page = docs.run(flow)
    assert isinstance(page, Response) and page.status == 400 and page.header("location") is None
    assert docs.h.store.codes == {} and docs.h.store.pending == {}
    assert docs.h.store.clients[URL].redirect_uris == (LOOPBACK,), "the document was read again"


def test_cm_01_a_document_still_listing_the_redirect_uri_is_answered(docs: Documents) -> None:
    docs.answers[URL] = fetched(document(redirect_uris=[REDIRECT, LOOPBACK]))
    out = docs.authorize()
    docs.answers[URL] = fetched(document(redirect_uris=[REDIRECT]))
    docs.h.now += 420  # past the kept copy's 300 s, within the request's 600 s
    answered = docs.run(authorize.approve(docs.h.ctx(), out.ticket, "alice"))
    assert location_params(answered)["code"] and len(docs.h.store.codes) == 1


def test_cm_01_refused_refetch_of_an_expired_document_keeps_nothing_usable(docs: Documents) -> None:
    assert isinstance(docs.authorize(), ConsentRequired)
    docs.answers[URL] = fx.FetchRefused("it answered with HTTP status 500")
    docs.h.now += 300
    assert "500" not in refused_page(docs.authorize(), NOT_FETCHED)
    written = writes(docs.effects)  # the failure asked about, then counted for the address: nothing kept
    assert [(e.bucket, e.step) for e in written if isinstance(e, fx.Hit)] == [
        ("document-failures:*", 0),
        ("document-failures:*", 1),
    ]
    assert [e for e in written if not isinstance(e, fx.Hit)] == []


# -- refusals: an error page at authorize, nothing stored --------------------------------------

DUPLICATED = json.dumps(document()).replace('{"client_id"', '{"client_id": "https://evil.example/x", "client_id"', 1)
BAD_DOCUMENTS = {
    "fetch-refused": (fx.FetchRefused("10.0.0.1 is a private address"), NOT_FETCHED),
    "duplicate-client-id": (fetched(DUPLICATED.encode()), "gives the member client_id more than once"),
    "duplicate-redirect-uris": (
        fetched(json.dumps(document()).replace('"redirect_uris"', '"redirect_uris": [], "redirect_uris"').encode()),
        "gives the member redirect_uris more than once",
    ),
    "duplicate-long-name": (fetched(b'{"' + b"m" * 100 + b'": 1, "' + b"m" * 100 + b'": 2}'), "m" * 40 + "... more"),
    "nan": (fetched(json.dumps(document(client_name=None))[:-1].encode() + b', "client_name": NaN}'), "NaN is not"),
    "client-id-one-char-off": (fetched(document(client_id=URL[:-1] + "N")), "does not equal the URL"),
    "client-id-missing": (fetched(document(client_id=None)), "does not equal the URL"),
    "not-json-type": (fetched(document(), content_type="text/html"), "not JSON"),
    "not-json-body": (fetched(b"<html>hello</html>"), "not valid JSON"),
    "not-an-object": (fetched(b"[1, 2]"), "not a JSON object"),
    "no-redirect-uris": (fetched(document(redirect_uris=None)), "redirect_uris is required"),
    "bad-redirect-uri": (fetched(document(redirect_uris=["http://evil.example.com/cb"])), "loopback"),
    "client-secret-basic": (fetched(document(token_endpoint_auth_method="client_secret_basic")), "shared secret"),
    "client-secret-post": (fetched(document(token_endpoint_auth_method="client_secret_post")), "shared secret"),
    "private-key-jwt": (
        fetched(document(token_endpoint_auth_method="private_key_jwt")),
        "private_key_jwt is not supported",
    ),
    "client-secret-member": (fetched(document(client_secret="s3cret")), "client_secret"),
    "implicit-grant": (fetched(document(grant_types=["implicit"])), "implicit"),
    "too-large": (fetched(b" " * (64 * 1024 + 1)), "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_cm_01_bad_documents_are_refused_at_authorize_with_the_reason(h: Harness, case: str) -> None:
    answer, reason = BAD_DOCUMENTS[case]
    d = Documents(h, {URL: answer})
    refused_page(d.authorize(), reason)
    assert d.fetches == [URL]
    assert_nothing_stored(d)


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_cm_01_bad_documents_are_invalid_client_at_the_token_endpoint(h: Harness, case: str) -> None:
    answer, reason = BAD_DOCUMENTS[case]
    d = Documents(h, {URL: answer})
    resp = d.token({"grant_type": "authorization_code", "code": "x" * 43, "code_verifier": VERIFIER, "client_id": URL})
    assert resp.status == 401 and resp.json()["error"] == "invalid_client"
    assert reason in resp.json()["error_description"]
    assert resp.header("cache-control") == "no-store"
    assert_nothing_stored(d)


@pytest.mark.parametrize(
    ("client_id", "reason"),
    [
        ("http://client.example.com/client.json", "must use https"),
        ("https://client.example.com", "must have a path"),
        ("https://client.example.com/", "must have a path"),
        ("https://client.example.com/a/../client.json", ". or .. path segments"),
        ("https://user@client.example.com/client.json", "user information"),
        ("https://client.example.com/client.json#frag", "fragment"),
        ("https://client.example.com:99999/client.json", "not a valid URL"),
        ("https://client.example.com:0/client.json", "port must be a number from 1 to 65535"),
        ("https://client.example.com:/client.json", "port must be a number from 1 to 65535"),
        ("https://[::1]:0/client.json", "port must be a number from 1 to 65535"),
        ("https://[v1.x]/client.json", "the bracketed host is not an IPv6 address"),
        ("https://[v7.fe80::1+en0]/client.json", "the bracketed host is not an IPv6 address"),
        ("https://client.ex%61mple.com/client.json", "must not be percent-encoded"),
        ("https://client.example.com/a/%2e%2e/client.json", ". or .. path segments (percent-encoded or not)"),
        ("https://client.example.com/a/%2E%2E/client.json", ". or .. path segments"),
        ("https://client.example.com/a/.%2e/client.json", ". or .. path segments"),
        ("https://client.example.com/%2e/client.json", ". or .. path segments"),
    ],
)
def test_cm_01_malformed_document_urls_are_refused_without_a_fetch(h: Harness, client_id: str, reason: str) -> None:
    d = Documents(h)
    refused_page(d.authorize(client_id=client_id), reason)
    assert d.fetches == []
    assert_nothing_stored(d)


def test_cm_01_redirect_uri_not_in_the_document_is_refused_without_redirecting(docs: Documents) -> None:
    out = docs.authorize(redirect_uri="https://client.example.com/other")
    assert isinstance(out, Response) and out.status == 400 and out.header("location") is None
    assert out.view is not None and "redirect_uri is not registered" in out.view.description
    # The (valid) document is cached; no authorization is pending.
    # its mark read (a Hit of step 0), counted, cached, then marked as seen
    assert [type(e).__name__ for e in writes(docs.effects)] == ["Hit", "Hit", "PutClient", "Hit"]
    assert docs.h.store.pending == {} and docs.h.store.codes == {}


def test_cm_01_documents_off_means_a_url_is_just_an_unknown_client() -> None:
    h = Harness(make_config(client_id_metadata_documents=False))
    d = Documents(h, {URL: fetched(document())})
    out = d.authorize()
    assert isinstance(out, Response) and out.view is not None
    assert "not known here" in out.view.description
    assert d.fetches == []


def test_lookup_raises_document_refused_saying_only_that_the_fetch_failed(h: Harness) -> None:
    """Why the fetcher refused (an address, a status code, a TLS failure) is the server's
    business, in its log; the client learns only that the document could not be fetched."""
    from kavach_core.clients import lookup

    d = Documents(h, {URL: fx.FetchRefused("internal.example.com resolves to 10.1.2.3, a private address")})
    with pytest.raises(DocumentRefused) as info:
        d.run(lookup(h.ctx(), URL))
    assert info.value.error == "invalid_client" and info.value.status == 401
    assert info.value.description == f"client metadata document refused: {NOT_FETCHED}"


def test_cm_01_a_client_id_longer_than_the_limit_names_no_client_and_costs_nothing(h: Harness) -> None:
    """A ``client_id`` over ``MAX_CLIENT_ID`` characters is an unknown client: not read, not
    fetched, not counted against the caller (RG-03); one of exactly the limit is a document URL."""
    from kavach_core.client_documents import MAX_CLIENT_ID
    from kavach_core.clients import lookup

    prefix = "https://client.example.com/"
    at_limit = prefix + "x" * (MAX_CLIENT_ID - len(prefix))
    too_long = at_limit + "x"
    d = Documents(h, {url: fetched(document(client_id=url)) for url in (at_limit, too_long)})
    assert d.run(lookup(h.ctx(), too_long)) is None
    assert d.effects == [] and d.fetches == []
    client = d.run(lookup(h.ctx(), at_limit))
    assert client is not None and client.client_id == at_limit
    assert d.fetches == [at_limit]


def test_cm_01_a_document_with_a_repeated_member_is_refused_whichever_copy_is_right(h: Harness) -> None:
    url_twice = json.dumps(document()).replace('"client_id"', f'"client_id": "{URL}", "client_id"', 1)
    for doc in (DUPLICATED, url_twice):
        d = Documents(h, {URL: fetched(doc.encode())})
        refused_page(d.authorize(), "more than once")
        assert_nothing_stored(d)


def test_consent_after_sign_in_with_a_refused_refetch_is_simply_expired(docs: Documents) -> None:
    out = docs.authorize()
    assert isinstance(out, ConsentRequired)
    docs.answers[URL] = fx.FetchRefused("gone")
    docs.h.now += 300
    assert docs.run(authorize.consent(docs.h.ctx(), out.ticket)) is None


# -- end to end: the official MCP Python SDK client against kavach serve ---------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DocumentHost]:
    with document_host(tmp_path) as running:
        yield running


def _sdk_document(host: DocumentHost) -> str:
    from mcp_sdk_client import REDIRECT_URI

    url = host.url("/mcp-client/client.json")
    host.publish(
        "/mcp-client/client.json",
        {
            "client_id": url,
            "client_name": "kavachOS test (CIMD)",
            "redirect_uris": [REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        headers=[("Content-Type", "application/json"), ("Cache-Control", "max-age=600")],
    )
    return url


def _serve_documents(host: DocumentHost, *, loopback: bool) -> Any:
    from mcp_sdk_client import served_with_user

    args = ["--document-ca-bundle", str(host.ca_file)]
    if loopback:
        args.append("--document-allow-loopback")
    return served_with_user(extra_args=args)


def test_cm_01_sdk_client_with_a_client_metadata_url_completes_the_flow(host: DocumentHost) -> None:
    """The SDK sees ``client_id_metadata_document_supported``, skips registration and uses its URL
    as ``client_id``; kavach serve fetches the document once (over HTTPS, trusting the test CA,
    loopback permitted by the development switch), shows consent, and issues tokens."""
    from mcp_sdk_client import ChoosyPerson, SdkClient, person_password

    url = _sdk_document(host)
    with _serve_documents(host, loopback=True) as served, ChoosyPerson("alice", person_password()) as person:
        sdk = SdkClient(served.mcp_url, person, client_metadata_url=url)

        async def body(client: Any) -> str:
            result = await client.call_tool("echo", {"text": "hello via CIMD"})
            return "".join(getattr(part, "text", "") for part in result.content)

        echoed = anyio.run(sdk.run, body)
        log = served.output()

    assert echoed == "hello via CIMD"
    paths = [p for _, p, _ in sdk.seen.paths()]
    assert "/register" not in paths, "no dynamic registration with a client metadata URL"
    auth = parse_qs(urlsplit(sdk.seen.authorizations[0]).query)
    assert auth["client_id"] == [url]
    assert sdk.seen.token_grants() == ["authorization_code"]
    assert host.hits("/mcp-client/client.json") == 1, "authorize and token share the cached document"
    assert "DEVELOPMENT SWITCH ON" in log, "the loopback switch is loud in the log"


def test_cm_02_without_the_loopback_switch_the_same_document_is_refused(host: DocumentHost) -> None:
    url = _sdk_document(host)
    with _serve_documents(host, loopback=False) as served:
        resp = httpx.get(
            f"{served.issuer}/authorize",
            params={
                "client_id": url,
                "redirect_uri": "http://127.0.0.1:45999/callback",
                "response_type": "code",
                "code_challenge": CHALLENGE,
                "code_challenge_method": "S256",
                "state": "s",
            },
        )
        clients = _clients(served)
        log = served.output()
    assert resp.status_code == 400 and "location" not in resp.headers
    assert NOT_FETCHED in resp.text and "loopback" not in resp.text and "127.0.0.1" not in resp.text
    assert "refused: the address 127.0.0.1 is a loopback address" in log, "the reason is in the server's log"
    assert host.hits("/mcp-client/client.json") == 0, "nothing was sent to the document's host"
    assert clients == [], "nothing stored"


def _clients(served: Served) -> list[str]:
    from kavach_serve import kavach

    out = kavach(["clients", "list", "--db", served.db], env=served.env)
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
