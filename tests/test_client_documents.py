"""Client ID Metadata Documents (CM-01): the edges of what names a document and what is read.

Complements ``test_cimd``, whose :class:`Documents` (the memory store answering ``FetchDocument``
with prepared results) and helpers these tests reuse.
"""

from __future__ import annotations

import json

import pytest
from conftest import Harness, make_config
from test_cimd import URL, Documents, assert_nothing_stored, document, fetched, refused_page

from kavach_core.client_documents import DocumentRefused, url_problem
from kavach_core.clients import lookup


@pytest.mark.parametrize(
    "client_id", ["https", "http:client.example.com/client.json", "ftp://client.example.com/c.json"]
)
def test_cm_01_only_an_http_or_https_url_with_an_authority_names_a_document(h: Harness, client_id: str) -> None:
    """A ``client_id`` without ``scheme://`` or of another scheme is an ordinary client id, not
    known here: no fetch, no refusal naming a document (CIMD §3)."""
    d = Documents(h, {client_id: fetched(document(client_id=client_id))})
    assert d.run(lookup(h.ctx(), client_id)) is None
    assert d.fetches == []


@pytest.mark.parametrize(
    "client_id",
    [
        "https://client.example.com/a b.json",  # a space (0x20)
        "https://client.example.com/a\x7fb.json",  # DEL
        "https://client.example.com/caf\u00e9.json",  # not ASCII
    ],
)
def test_cm_01_a_document_url_is_printable_ascii(h: Harness, client_id: str) -> None:
    """CIMD §3 (an RFC 3986 URI): a space, a control character or a character outside ASCII is
    refused without a fetch."""
    d = Documents(h)
    refused_page(d.authorize(client_id=client_id), "printable ASCII")
    assert d.fetches == []
    assert_nothing_stored(d)


def test_cm_01_the_printable_ascii_edges_are_allowed(h: Harness) -> None:
    """``!`` (0x21) and ``~`` (0x7E), the first and last printable characters, may appear."""
    url = "https://client.example.com/!client~.json"
    assert url_problem(url) is None
    d = Documents(h, {url: fetched(document(client_id=url))})
    client = d.run(lookup(h.ctx(), url))
    assert client is not None and client.client_id == url


def test_cm_01_url_problem_refuses_an_overlong_url_by_itself() -> None:
    """The fetcher vets every URL with :func:`url_problem` too (CM-02), not only after
    :func:`lookup`'s own length check: a URL over ``MAX_CLIENT_ID`` characters is a problem."""
    url = "https://client.example.com/" + "x" * 3000
    problem = url_problem(url)
    assert problem is not None and "longer than" in problem


def test_cm_01_a_document_of_exactly_64_kib_is_read(h: Harness) -> None:
    """The core reads a document of up to 64 KiB (``MAX_DOCUMENT_BYTES``); one byte more is
    refused as too large (``test_cimd``'s ``too-large`` case)."""
    body = json.dumps(document()).encode()
    body += b" " * (64 * 1024 - len(body))
    d = Documents(h, {URL: fetched(body)})
    client = d.run(lookup(h.ctx(), URL))
    assert client is not None and client.client_id == URL
    d = Documents(Harness(make_config()), {URL: fetched(body + b" ")})
    with pytest.raises(DocumentRefused, match="too large"):
        d.run(lookup(d.h.ctx(), URL))


def test_cm_01_a_document_url_without_a_host_is_refused_saying_so(h: Harness) -> None:
    d = Documents(h)
    refused_page(d.authorize(client_id="https:///client.json"), "has no host")
    assert d.fetches == []


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON", "application/json; charset=utf-8", "application/vnd.example+json"],
)
def test_cm_01_a_json_media_type_is_read_whatever_its_case_and_parameters(h: Harness, content_type: str) -> None:
    """RFC 8259 §11 ``application/json`` and RFC 6839 §3.1 ``+json`` types; media types are
    case-insensitive (RFC 9110 §8.3.1) and parameters do not change the type."""
    d = Documents(h, {URL: fetched(document(), content_type=content_type)})
    client = d.run(lookup(h.ctx(), URL))
    assert client is not None and client.client_id == URL


@pytest.mark.parametrize("content_type", ["text/json", "text/x+json", "application/jsonp", "application/json+x", ""])
def test_cm_01_other_media_types_are_not_json(h: Harness, content_type: str) -> None:
    d = Documents(h, {URL: fetched(document(), content_type=content_type)})
    refused_page(d.authorize(), "not JSON (Content-Type")
    assert_nothing_stored(d)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"client_id": "\xff"}', "not valid JSON"),  # not UTF-8
        (b"[" * 30_000 + b"]" * 30_000, "not valid JSON"),  # nesting deeper than the parser's stack
        (json.dumps(document(client_secret_expires_at=0)).encode(), "client_secret_expires_at"),
    ],
)
def test_cm_01_more_bad_documents_are_refused_with_the_reason(h: Harness, body: bytes, reason: str) -> None:
    """CIMD §4.1: a document is UTF-8 JSON (RFC 8259 §8.1) and holds no shared secret, not even
    its expiry."""
    d = Documents(h, {URL: fetched(body)})
    refused_page(d.authorize(), reason)
    assert_nothing_stored(d)


def test_cm_01_a_fetcher_that_answers_nothing_usable_is_a_refusal(h: Harness) -> None:
    """Neither ``Fetched`` nor ``FetchRefused`` from the fetcher: refused, nothing stored."""
    d = Documents(h, {URL: None})  # type: ignore[dict-item]
    refused_page(d.authorize(), "the fetcher gave no answer")
    assert_nothing_stored(d)


def test_cm_01_a_document_url_of_2048_characters_is_read_one_longer_is_not() -> None:
    """``MAX_CLIENT_ID`` is 2048 characters, a URL naming a document included."""
    prefix = "https://client.example.com/"
    at_limit = prefix + "x" * (2048 - len(prefix))
    assert url_problem(at_limit) is None
    assert url_problem(at_limit + "x") is not None


def test_cm_01_a_repeated_member_name_is_shown_up_to_40_characters() -> None:
    """The refusal names the repeated member, cut after 40 characters (a document is the
    client's text, shown on a page)."""
    for name, shown in (("m" * 40, "m" * 40 + " more"), ("m" * 41, "m" * 40 + "... more")):
        h = Harness(make_config())
        d = Documents(h, {URL: fetched(b'{"' + name.encode() + b'": 1, "' + name.encode() + b'": 2}')})
        refused_page(d.authorize(), f"the member {shown} than once")
