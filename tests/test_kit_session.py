"""The conformance kit's client side step by step (conformance/kavach_conformance/session.py,
person.py, stateful.py): what the session sends, and what it refuses, in discovery, registration,
authorization requests (PKCE) and token requests; what the built-in person does with the pages it
is shown; how a ``--person`` callable is loaded; how a stateful run ends when it cannot go on, and
what its model tolerates of a server.

Where the step is the server's, against ``kavach serve``; where the test is about an answer kavach
never gives, against a small local HTTP server answering as the test says and recording what it heard.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest
from hypothesis.stateful import multiple
from kavach_conformance.http import Http, KitError, RateLimited, Stop
from kavach_conformance.person import (
    FormPerson,
    PersonError,
    SignInRefused,
    UnreadablePage,
    load_callable,
    person_post,
)
from kavach_conformance.report import FAIL, NA, PASS
from kavach_conformance.runner import make_session
from kavach_conformance.session import (
    BadAnswer,
    Client,
    Outcome,
    RegistrationFailed,
    Session,
    Skip,
    b64url,
    describe,
    jwt_payload,
    mistyped_members,
    refresh_token_of,
)
from kavach_conformance.stateful import machine_for, run_stateful
from kavach_serve import Served, free_port, serve
from test_conformance_kit import PASSWORD, SIGN_IN, USER, quick

CB = "https://client.example/cb"


@attrs.define
class Heard:
    method: str
    target: str
    body: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body, keep_blank_values=True)


Page = tuple[int, dict[str, str], str]
"""A local server's answer: status, headers (Content-Type ``text/html`` unless given), body."""


@contextmanager
def site(answer: Callable[[Heard], Page]) -> Iterator[tuple[str, list[Heard]]]:
    """A loopback HTTP server answering each request with ``answer(request)``; its base URL and
    every request it heard, in order."""
    heard: list[Heard] = []

    class Handler(BaseHTTPRequestHandler):
        def respond(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            request = Heard(self.command, self.path, body, {k.lower(): v for k, v in self.headers.items()})
            heard.append(request)
            status, headers, text = answer(request)
            data = text.encode()
            self.send_response(status)
            for name, value in {"Content-Type": "text/html", **headers}.items():
                if value:  # an empty value: no such header
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = respond

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", heard
    finally:
        server.shutdown()
        server.server_close()


def as_json(status: int, body: object) -> Page:
    return status, {"Content-Type": "application/json"}, json.dumps(body)


def session_at(base: str, person: Callable[[str, str], str] = lambda url, back: back, **kwargs: Any) -> Session:
    """A session with the server under test at ``base`` (its metadata left to the test)."""
    options: dict[str, Any] = {"issuer": base, "resource": None, "other_resource": None, "redirect_uri": CB}
    return Session(Http([base], timeout=5), person=person, **{**options, **kwargs})


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve(config_toml=SIGN_IN) as running:
        running.add_user(USER, PASSWORD)
        yield running


@pytest.fixture
def kavach_session(served: Served) -> Iterator[Session]:
    """A session against ``kavach serve`` as the kit makes it: discovered, its three clients registered."""
    session = make_session(quick(served))
    try:
        yield session
    finally:
        assert isinstance(session.person, FormPerson)
        session.person.close()
        session.http.close()


# -- discovery -----------------------------------------------------------------------------------


def test_discovery_tries_each_well_known_url_in_turn_and_keeps_the_first_usable_document() -> None:
    """RFC 8414 §3.1 (the well-known path inserted before the issuer's path) before the path
    appended, OAuth's document before OpenID Connect's; a 404, a body that is no JSON object and
    a document without ``authorization_endpoint`` are passed over."""
    answers: dict[str, Callable[[str], Page]] = {
        "/.well-known/oauth-authorization-server/tenant": lambda base: as_json(
            404, {"authorization_endpoint": base + "/a"}
        ),
        "/tenant/.well-known/oauth-authorization-server": lambda base: (200, {}, "<html>not json</html>"),
        "/.well-known/openid-configuration/tenant": lambda base: as_json(200, {"issuer": base + "/tenant"}),
        "/tenant/.well-known/openid-configuration": lambda base: as_json(200, {"authorization_endpoint": base + "/a"}),
    }
    with site(lambda request: answers[request.path](base)) as (base, heard):
        session = session_at(base, issuer=base + "/tenant/")
        session.discover()
    assert [request.path for request in heard] == list(answers)
    assert session.meta == {"authorization_endpoint": base + "/a"}
    assert session.meta_source == base + "/tenant/.well-known/openid-configuration"


def test_discovery_without_a_usable_document_says_what_each_url_answered() -> None:
    """An issuer without a path has one URL per document; the error names both and what was wrong."""
    pages = {
        "/.well-known/oauth-authorization-server": as_json(200, ["authorization_endpoint"]),
        "/.well-known/openid-configuration": as_json(200, {"authorization_endpoint": ""}),
    }
    with site(lambda request: pages[request.path]) as (base, heard):
        session = session_at(base)
        with pytest.raises(KitError) as raised:
            session.discover()
    assert [request.path for request in heard] == list(pages)
    assert str(raised.value) == (
        f"no authorization server metadata found for {base}: "
        f"GET {base}/.well-known/oauth-authorization-server: 200, not a JSON object; "
        f"GET {base}/.well-known/openid-configuration: 200, no authorization_endpoint"
    )
    assert session.meta == {} and session.meta_source == ""


@pytest.mark.parametrize(
    "name",
    [
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ],
)
def test_a_document_naming_an_endpoint_on_a_server_not_given_is_refused(name: str) -> None:
    """The kit sends codes, secrets and tokens only to the servers it was given: an endpoint
    elsewhere stops it at discovery, before anything is sent there."""

    def document(request: Heard) -> Page:
        return as_json(200, {"authorization_endpoint": base + "/a", name: "https://elsewhere.example/x"})

    refused = pytest.raises(KitError, match=r"refusing to contact https://elsewhere\.example/x")
    with site(document) as (base, heard), refused:
        session_at(base).discover()
    assert len(heard) == 1


def test_an_issuer_that_does_not_answer_is_tried_at_every_url_then_refused() -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KitError, match="no authorization server metadata found") as raised:
        session_at(issuer).discover()
    assert str(raised.value).count("ConnectError") == 2, raised.value
    assert str(raised.value).count(f"GET {issuer}/.well-known/") == 2, raised.value


def test_a_rate_limited_discovery_stops_without_trying_the_other_urls() -> None:
    with site(lambda request: as_json(429, {"error": "slow_down"})) as (base, heard), pytest.raises(RateLimited):
        session_at(base).discover()
    assert len(heard) == 1


# -- clients -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (as_json(400, {"client_id": "refused-but-named"}), "no JSON object"),
        (as_json(201, ["client_id"]), "no JSON object"),
        (as_json(201, {"client_id": ""}), "no client_id"),
        (as_json(201, {"client_id": 7}), "no client_id"),
        ((200, {}, "<html>registered</html>"), "no JSON object"),
    ],
    ids=["400", "array", "empty-id", "number-id", "html"],
)
def test_a_registration_answer_without_a_usable_record_gives_no_client(answer: Page, why: str) -> None:
    """RG-02: only a 200/201 JSON object with a non-empty string ``client_id`` is a client; with
    every registration refused the session has none, and the checks needing one are n/a."""
    with site(lambda request: answer) as (base, heard):
        session = session_at(base)
        session.meta = {"registration_endpoint": base + "/register"}
        with pytest.raises(RegistrationFailed, match=rf"registration of a none client failed: {answer[0]}, {why}: "):
            session.register_client("none", "a name")
        session.setup_clients(None, None, register=True)
        with pytest.raises(Skip, match="no client"):
            session.client()
    assert (session.primary, session.second, session.confidential, session.may_register) == (None, None, None, True)
    sent = [json.loads(request.body) for request in heard]
    assert [body["token_endpoint_auth_method"] for body in sent] == ["none", "none", "none", "client_secret_basic"]
    assert all(body["redirect_uris"] == [CB] and body["response_types"] == ["code"] for body in sent), sent
    assert all(body["grant_types"] == ["authorization_code", "refresh_token"] for body in sent), sent
    assert [body for body, _ in session.registrations] == sent


def test_a_registered_client_is_the_one_the_server_answered_with() -> None:
    """The server's ``client_id``, secret and authentication method; the method asked for when it names none."""
    ids = iter(range(1, 100))

    def register(request: Heard) -> Page:
        asked = json.loads(request.body)["token_endpoint_auth_method"]
        record: dict[str, Any] = {"client_id": f"c{next(ids)}"}
        if asked != "none":
            record.update(client_secret="s3cret", token_endpoint_auth_method="client_secret_post")
        return as_json(201 if asked == "none" else 200, record)

    with site(register) as (base, _heard):
        session = session_at(base)
        session.meta = {"registration_endpoint": base + "/register"}
        session.setup_clients(None, None, register=True)
    assert session.primary == Client("c1", CB, None, "none")
    assert session.second == Client("c2", CB, None, "none")
    assert session.confidential == Client("c3", CB, "s3cret", "client_secret_post")
    assert session.client() is session.primary


def test_a_given_client_is_used_and_only_the_missing_ones_registered() -> None:
    with site(lambda request: as_json(201, {"client_id": f"r{len(heard)}"})) as (base, heard):
        confidential = session_at(base)
        confidential.meta = {"registration_endpoint": base + "/register"}
        confidential.setup_clients("given", "its-secret", register=True)
        public = session_at(base)
        public.meta = {"registration_endpoint": base + "/register"}
        public.setup_clients("given-public", None, register=True)
        unregistered = session_at(base)
        unregistered.meta = {"registration_endpoint": base + "/register"}
        unregistered.setup_clients("only", None, register=False)
        unlisted = session_at(base)  # --register against metadata without a registration_endpoint
        unlisted.setup_clients("given-anyway", None, register=True)
    given = Client("given", CB, "its-secret", "client_secret_basic")
    assert (confidential.primary, confidential.confidential) == (given, given)
    assert confidential.second == Client("r1", CB, None, "none")
    assert public.primary == Client("given-public", CB, None, "none")
    assert [json.loads(request.body)["token_endpoint_auth_method"] for request in heard[1:]] == [
        "none",
        "client_secret_basic",
    ]
    assert public.confidential is not None and public.confidential.client_id == "r3"
    assert (unregistered.primary, unregistered.second, unregistered.may_register) == (
        Client("only", CB, None, "none"),
        None,
        False,
    )
    assert (unlisted.primary, unlisted.may_register) == (Client("given-anyway", CB, None, "none"), False)
    assert len(heard) == 3


@pytest.mark.parametrize(
    ("meta", "register", "expect"),
    [
        ({}, False, "no client: give --client-id (and --client-secret), or --register"),
        ({"registration_endpoint": "https://as.example/r"}, False, "no client: give --client-id"),
        ({}, True, "lists no registration_endpoint: give --client-id"),
        (
            {"registration_endpoint": 5},
            True,
            "has a registration_endpoint that is not a URL (registration_endpoint is not an http(s) URL: '5'): give",
        ),
    ],
)
def test_without_a_client_the_session_says_how_to_get_one(meta: dict[str, Any], register: bool, expect: str) -> None:
    session = session_at("https://as.example")
    session.meta = meta
    with pytest.raises(KitError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        session.setup_clients(None, None, register=register)
    assert session.registrations == []


# -- authorization -------------------------------------------------------------------------------


def test_authorization_requests_carry_a_fresh_s256_challenge_state_scope_and_resource() -> None:
    """OAuth 2.1 §4.1.1 / RFC 7636 §4: ``code_challenge`` is BASE64URL(SHA-256(verifier)) of a
    verifier of 43 characters (32 random bytes), method S256; the state, the verifier and so the
    challenge are new for every request; the endpoint's own query is kept."""
    urls: list[str] = []

    def person(url: str, redirect_uri: str) -> str:
        urls.append(url)
        return redirect_uri + ("#" if "response_mode=fragment" in url else "?") + "code=c" + str(len(urls))

    session = session_at("https://as.example", person, resource="https://rs.example/mcp", scopes=("a", "b"))
    session.meta = {"authorization_endpoint": "https://as.example/authorize?tenant=1"}
    client = Client("kit-client", "https://client.example/other-cb")
    first = session.code(client)
    second = session.code(client, scope=None, prompt="consent")
    queries = [parse_qsl(urlsplit(url).query) for url in urls]
    assert [url.split("?", 1)[0] for url in urls] == ["https://as.example/authorize"] * 2
    assert queries[0][0] == ("tenant", "1")
    sent = [dict(query) for query in queries]
    for (code, verifier, outcome), params, number in zip((first, second), sent, ("1", "2"), strict=True):
        assert (code, outcome.final) == ("c" + number, client.redirect_uri + "?code=c" + number)
        digest = hashlib.sha256(verifier.encode()).digest()
        assert params["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert len(verifier) == 43 and len(base64.urlsafe_b64decode(verifier + "=")) == 32
        assert params["code_challenge_method"] == "S256" and params["response_type"] == "code"
        assert (params["client_id"], params["redirect_uri"]) == ("kit-client", client.redirect_uri)
        assert params["resource"] == "https://rs.example/mcp" and params["state"].startswith("kit-")
    assert sent[0]["scope"] == "a b" and "scope" not in sent[1] and sent[1]["prompt"] == "consent"
    assert len({params["state"] for params in sent}) == 2 and first[1] != second[1]
    assert session.authorized and session.unauthorized is None
    assert session.attempt({"client_id": "x"}).final == CB + "?code=c3"  # the session's redirect URI
    assert session.attempt({"redirect_uri": CB}, "https://client.example/given").final == (
        "https://client.example/given?code=c4"
    )
    fragment = session.attempt({"redirect_uri": CB, "response_mode": "fragment", "state": "s"})
    assert fragment.final == CB + "#code=c5" and fragment.params == {"#code": ["c5"]} and fragment.one("code") is None
    assert Outcome(CB + "?error=&x=1#code=&state=s").params == {
        "error": [""],
        "x": ["1"],
        "#code": [""],
        "#state": ["s"],
    }


def test_without_scopes_or_a_resource_the_request_names_neither() -> None:
    """No ``--scope`` and an empty catalogue: no ``scope`` parameter (not an empty one); no resource, no indicator."""
    urls: list[str] = []
    session = session_at("https://as.example", lambda url, back: urls.append(url) or back)
    session.meta = {"authorization_endpoint": "https://as.example/authorize", "scopes_supported": ["openid"]}
    outcome = session.attempt(session.auth_params(Client("c", CB))[0])
    assert outcome.final == CB and outcome.params == {} and outcome.one("code") is None
    sent = dict(parse_qsl(urlsplit(urls[0]).query, keep_blank_values=True))
    assert "scope" not in sent and "resource" not in sent


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (PersonError("https://as.example/login answered 403", 403), 403, "https://as.example/login answered 403"),
        (RuntimeError("cannot sign in"), None, "RuntimeError: cannot sign in"),
    ],
)
def test_a_person_step_that_gives_up_is_an_authorization_that_stayed(
    failure: Exception, status: int | None, reason: str
) -> None:
    """The first valid request without a code is remembered (the kit's stop message shows it); no code, no flow.
    A code later completes the person step."""

    def person(url: str, redirect_uri: str) -> str:
        raise failure

    session = session_at("https://as.example", person)
    session.meta = {"authorization_endpoint": "https://as.example/authorize"}
    outcome = session.attempt({"client_id": "c"})
    assert (outcome.final, outcome.status, outcome.reason, outcome.redirected) == (None, status, reason, False)
    with pytest.raises(Skip, match="could not obtain a code: stayed on the server"):
        session.code(Client("c", CB))
    first = session.unauthorized
    assert first == f"stayed on the server ({status or reason})"
    session.person = lambda url, back: back + "?error=access_denied"
    with pytest.raises(Skip, match="could not complete the person step for a valid request: redirected to"):
        session.primary = Client("c", CB)
        session.person_completes()
    assert session.unauthorized == first and not session.authorized
    session.person = lambda url, back: back + "?code=c"
    session.person_completes()  # a code: it completes
    assert session.authorized and session.unauthorized == first


def test_an_authorization_request_may_repeat_a_parameter() -> None:
    """Parameters as pairs are each sent, in order (after the endpoint's own query); the person is
    sent to the redirect URI they name."""
    steps: list[tuple[str, str]] = []

    def person(url: str, redirect_uri: str) -> str:
        steps.append((url, redirect_uri))
        return redirect_uri + "?code=1"

    session = session_at("https://as.example", person)
    session.meta = {"authorization_endpoint": "https://as.example/authorize?tenant=t"}
    outcome = session.attempt([("client_id", "c"), ("client_id", "d"), ("redirect_uri", "https://c.example/x")])
    assert outcome.one("code") == "1"
    assert steps == [
        (
            "https://as.example/authorize?tenant=t&client_id=c&client_id=d&redirect_uri=https%3A%2F%2Fc.example%2Fx",
            "https://c.example/x",
        )
    ]


def test_a_kit_error_in_the_person_step_is_not_an_outcome() -> None:
    """An answer the kit cannot read (or a server not given) stops the check: it is not a page the person stayed on."""

    def person(url: str, redirect_uri: str) -> str:
        raise KitError("refusing to contact https://elsewhere.example")

    session = session_at("https://as.example", person)
    session.meta = {"authorization_endpoint": "https://as.example/authorize"}
    with pytest.raises(KitError, match="refusing to contact"):
        session.attempt({"client_id": "c"})


def test_an_authorization_request_by_post_goes_to_the_persons_post_step() -> None:
    """With a ``post`` step, the person gets the endpoint, the parameters and the redirect URI."""
    calls: list[tuple[str, list[tuple[str, str]], str]] = []

    class Person:
        def __call__(self, url: str, redirect_uri: str) -> str:
            raise AssertionError("not by GET")

        def post(self, endpoint: str, params: list[tuple[str, str]], redirect_uri: str) -> str:
            calls.append((endpoint, params, redirect_uri))
            return redirect_uri + "?code=by-post"

    session = session_at("https://as.example", Person())
    session.meta = {"authorization_endpoint": "https://as.example/authorize"}
    outcome = session.attempt_post({"client_id": "c", "redirect_uri": "https://client.example/given"})
    assert outcome.one("code") == "by-post"
    assert calls == [
        (
            "https://as.example/authorize",
            [("client_id", "c"), ("redirect_uri", "https://client.example/given")],
            "https://client.example/given",
        )
    ]
    session.attempt_post({"client_id": "c"})
    assert calls[-1][2] == CB


@pytest.mark.parametrize(
    ("status", "location", "final"),
    [
        (302, CB + "?code=x", CB + "?code=x"),
        (303, CB + "?error=invalid_request", CB + "?error=invalid_request"),
        *((status, CB + "?code=y", CB + "?code=y") for status in (301, 307, 308)),
        (302, "https://elsewhere.example/cb?code=x", None),
        (201, CB + "?code=x", None),
        (200, "", None),
        (400, "", None),
    ],
)
def test_without_a_post_step_only_the_posts_first_answer_is_read(status: int, location: str, final: str | None) -> None:
    """A ``--person`` callable taking URLs only: a redirect to the redirect URI ends the
    authorization there; anything else stayed on the server, with the first answer's status."""

    def page(request: Heard) -> Page:
        return status, {"Location": location} if location else {}, "<p>sign in</p>"

    with site(page) as (base, heard):
        session = session_at(base, lambda url, back: pytest.fail("not by GET"))
        session.meta = {"authorization_endpoint": base + "/authorize"}
        outcome = session.attempt_post({"client_id": "c", "state": "s"})
    assert [(request.method, request.path, request.form()) for request in heard] == [
        ("POST", "/authorize", [("client_id", "c"), ("state", "s")])
    ]
    assert outcome.final == final
    if final is None:
        assert (outcome.status, outcome.reason) == (status, f"{status} (first answer only)")


def test_an_outcome_is_described_by_where_it_ended() -> None:
    """For the report: the redirect URI without its query and each parameter's first value, cut to
    24 characters; else the status, or the reason, it stayed on the server with."""
    outcome = Outcome(CB + "?code=" + "x" * 30 + "&state=first&state=second")
    assert outcome.describe() == f"redirected to {CB} with {{'code': '{'x' * 24}', 'state': 'first'}}"
    assert (outcome.one("state"), outcome.one("iss")) == ("first", None)
    assert Outcome(None, 400, "refused").describe() == "stayed on the server (400)"
    assert Outcome(None, None, "gave up").describe() == "stayed on the server (gave up)"


# -- token, revocation and introspection requests ------------------------------------------------


def basic_of(request: Heard) -> tuple[str, str] | None:
    """The Basic credentials a request carried (form-urlencoded as RFC 6749 §2.3.1 has them, decoded back)."""
    field = request.headers.get("authorization")
    if field is None:
        return None
    scheme, _, value = field.partition(" ")
    assert scheme == "Basic", field
    user, _, secret = base64.b64decode(value).decode().partition(":")
    return user, secret


def test_each_request_authenticates_the_client_by_its_method() -> None:
    """RFC 6749 §2.3.1: client_secret_basic in the Authorization header only, client_secret_post in
    the form only, a public client sends its ``client_id`` alone; a check may send another secret
    or method than the client's own."""
    public = Client("pub", CB)
    basic = Client("conf", CB, "s1", "client_secret_basic")
    post = Client("posting", CB, "s2", "client_secret_post")
    with site(lambda request: as_json(200, {"active": True})) as (base, heard):
        session = session_at(base, resource=base + "/mcp")
        session.meta = {f"{name}_endpoint": f"{base}/{name}" for name in ("token", "revocation", "introspection")}
        session.redeem(public, "code-1", "verifier-1")
        session.redeem(basic, "code-2", None, resource=None)
        session.refresh(post, "rt-1", scope="a")
        session.token_request(basic, {"grant_type": "x"}, secret="wrong")
        session.token_request(basic, {"grant_type": "x"}, method="client_secret_post")
        session.token_request(None, {"grant_type": "x"})
        session.token_request(Client("conf", CB, None, "client_secret_basic"), {"grant_type": "x"})
        session.revoke(public, "t1")
        session.revoke(basic, "t2", "refresh_token")
        session.revoke(post, "t3", "access_token")
        session.revoke(Client("conf", CB, None, "client_secret_basic"), "t6")  # a secret not known: empty
        assert session.introspection("t4") is None  # no confidential client
        session.confidential = basic
        assert session.introspection("t5") == {"active": True} and session.introspect("t5") is True
    seen = [(request.path, request.form(), basic_of(request)) for request in heard]
    assert seen == [
        (
            "/token",
            [
                ("grant_type", "authorization_code"),
                ("code", "code-1"),
                ("redirect_uri", CB),
                ("code_verifier", "verifier-1"),
                ("resource", base + "/mcp"),
                ("client_id", "pub"),
            ],
            None,
        ),
        ("/token", [("grant_type", "authorization_code"), ("code", "code-2"), ("redirect_uri", CB)], ("conf", "s1")),
        (
            "/token",
            [
                ("grant_type", "refresh_token"),
                ("refresh_token", "rt-1"),
                ("resource", base + "/mcp"),
                ("scope", "a"),
                ("client_id", "posting"),
                ("client_secret", "s2"),
            ],
            None,
        ),
        ("/token", [("grant_type", "x")], ("conf", "wrong")),
        ("/token", [("grant_type", "x"), ("client_id", "conf"), ("client_secret", "s1")], None),
        ("/token", [("grant_type", "x")], None),
        ("/token", [("grant_type", "x")], ("conf", "")),
        ("/revocation", [("token", "t1"), ("client_id", "pub")], None),
        ("/revocation", [("token", "t2"), ("token_type_hint", "refresh_token")], ("conf", "s1")),
        (
            "/revocation",
            [("token", "t3"), ("token_type_hint", "access_token"), ("client_id", "posting"), ("client_secret", "s2")],
            None,
        ),
        ("/revocation", [("token", "t6")], ("conf", "")),
        ("/introspection", [("token", "t5")], ("conf", "s1")),
        ("/introspection", [("token", "t5")], ("conf", "s1")),
    ]


@pytest.mark.parametrize(
    ("answer", "expect"),
    [
        (as_json(400, {"error": "invalid_grant"}), None),
        (as_json(200, ["access_token"]), None),
        (as_json(200, {"scope": "a"}), False),
        (as_json(200, {"active": False}), False),
        (as_json(200, {"active": "yes"}), True),
        ((200, {}, "active"), None),
    ],
)
def test_introspection_is_the_answer_of_a_200_json_object_only(answer: Page, expect: bool | None) -> None:
    with site(lambda request: answer) as (base, _heard):
        session = session_at(base)
        session.meta = {"introspection_endpoint": base + "/introspect"}
        session.confidential = Client("conf", CB, None, "client_secret_basic")
        assert session.introspect("t") is expect
        session.meta = {"introspection_endpoint": 5}
        assert session.introspection("t") is None


@pytest.mark.parametrize(
    ("answer", "raises"),
    [
        (as_json(400, {"access_token": "a"}), Skip),
        (as_json(201, {"access_token": "a"}), Skip),
        ((200, {}, "<html>access_token</html>"), BadAnswer),
        (as_json(200, {"access_token": ["a"]}), BadAnswer),
        (as_json(200, [{"access_token": "a"}]), BadAnswer),
    ],
)
def test_a_token_answer_without_tokens_is_no_tokens(answer: Page, raises: type[Exception]) -> None:
    """A refusal of a valid redemption makes the check n/a (:class:`Skip`); a 200 without an access
    token is an answer against the protocol (:class:`BadAnswer`)."""
    with site(lambda request: answer) as (base, _heard):
        session = session_at(base)
        session.meta = {"token_endpoint": base + "/token"}
        response = session.redeem(Client("c", CB), "code", "verifier")
    with pytest.raises(raises):
        Session.tokens_of(response)


def test_tokens_are_read_from_a_200_token_response() -> None:
    """A refresh token that is not a string is no refresh token here (TK-01 and TK-07 fail it where checked)."""
    bodies = [
        {"access_token": "at", "refresh_token": "rt", "scope": "a b"},
        {"access_token": "at", "refresh_token": 5},
        {"access_token": "at"},
    ]
    with site(lambda request: as_json(200, bodies[len(heard) - 1])) as (base, heard):
        session = session_at(base)
        session.meta = {"token_endpoint": base + "/token"}
        tokens = [Session.tokens_of(session.redeem(Client("c", CB), "code", None)) for _ in bodies]
    assert [(t.access_token, t.refresh_token, t.scope, t.body) for t in tokens] == [
        ("at", "rt", "a b", bodies[0]),
        ("at", None, None, bodies[1]),
        ("at", None, None, bodies[2]),
    ]
    assert refresh_token_of(bodies[0]) == "rt" and refresh_token_of(bodies[2]) is None
    for wrong in (5, "", [], {"t": 1}):
        with pytest.raises(BadAnswer, match="refresh_token is not a string"):
            refresh_token_of({"refresh_token": wrong})


def test_tokens_for_another_resource_are_asked_for_it_in_both_requests() -> None:
    """RFC 8707 §2: a ``resource`` given for the tokens is the one in the authorization request and
    in the redemption (``None``: in neither); else the session's resource is in both."""
    with site(lambda request: as_json(200, {"access_token": "at"})) as (base, heard):
        asked: list[str] = []

        def person(url: str, redirect_uri: str) -> str:
            asked.append(dict(parse_qsl(urlsplit(url).query)).get("resource", ""))
            return redirect_uri + "?code=c"

        session = session_at(base, person, resource=base + "/mcp")
        session.meta = {"authorization_endpoint": base + "/authorize", "token_endpoint": base + "/token"}
        for resource in ("https://other.example/mcp", None):
            assert session.tokens(Client("c", CB), resource=resource).access_token == "at"
        session.tokens(Client("c", CB))
    redeemed = [dict(request.form()).get("resource", "") for request in heard if request.path == "/token"]
    assert asked == redeemed == ["https://other.example/mcp", "", base + "/mcp"]


# -- the protected resource and its scopes -------------------------------------------------------


def test_a_tokens_state_comes_from_introspection_for_the_confidential_client_else_the_resource(
    kavach_session: Session,
) -> None:
    """Against ``kavach serve``: the resource answers 401 without a token, so a 401 means inactive;
    the confidential client asks introspection instead; with nothing served at the resource
    (``--indicator-only``) a public client's token state is unobservable."""
    session = kavach_session
    public, confidential = session.client(), session.confidential
    assert confidential is not None and confidential.secret
    assert session.guarded() is True and session.call_resource(None).status_code == 401
    tokens = session.tokens(confidential)
    assert tokens.refresh_token is not None
    assert session.token_state(public, tokens.access_token) == (True, "resource")
    assert session.token_active(confidential, tokens.access_token) is True
    assert session.token_state(confidential, tokens.access_token) == (True, "introspection")
    assert session.token_state(public, tokens.access_token + "x") == (False, "resource")
    assert session.revoke(confidential, tokens.refresh_token, "refresh_token").status_code == 200
    assert session.token_state(confidential, tokens.access_token) == (False, "introspection")
    assert session.token_state(public, tokens.access_token) == (False, "resource")
    session.resource_served = False
    assert session.token_state(public, tokens.access_token) == (None, "")


def test_a_session_made_with_its_resources_asks_the_resource_served_there() -> None:
    """A session keeps both resources it is given, and, unless told nothing is served there
    (``--indicator-only``), reads a token's state from the resource answering 401 without one."""

    def answer(request: Heard) -> Page:
        return (200, {}, "") if request.headers.get("authorization") == "Bearer good" else (401, {}, "")

    with site(answer) as (base, heard):
        session = session_at(base, resource=base + "/mcp", other_resource=base + "/other")
        assert (session.resource, session.other_resource) == (base + "/mcp", base + "/other")
        assert session.token_state(Client("c", CB), "good") == (True, "resource")
        assert session.token_state(Client("c", CB), "bad") == (False, "resource")
    assert [request.headers.get("authorization") for request in heard] == [None, "Bearer good", "Bearer bad"]


def test_a_tokens_state_is_unobservable_without_a_resource_refusing_a_request_without_one() -> None:
    """Without introspection, a token's state is read from the resource only when it answers a
    request without a token with 401 (else any answer is no sign of the token's state), and only
    when there is a resource at all."""
    with site(lambda request: as_json(200, {"jsonrpc": "2.0", "id": 1, "result": {}})) as (base, heard):
        open_resource = session_at(base, resource=base + "/mcp")
        assert open_resource.token_state(Client("c", CB), "any") == (None, "")
        assert open_resource.token_active(Client("c", CB), "other") is None
    assert [request.headers.get("authorization") for request in heard] == [None]  # asked once, without a token
    assert session_at("https://as.example").token_state(Client("c", CB), "any") == (None, "")


def test_the_scopes_asked_for_are_the_resources_catalogue_without_openid_scopes() -> None:
    """The protected resource's ``scopes_supported`` (RFC 9728), else the authorization server's,
    OpenID Connect's own scopes left out; the first two are asked for unless ``--scope`` says."""
    prm: dict[str, Any] = {"scopes_supported": ["openid", "tools:list", 5, "offline_access", "tools:call", "x"]}

    def answer(request: Heard) -> Page:
        if request.path == "/.well-known/oauth-protected-resource/mcp":
            return as_json(200, prm)
        return as_json(404, {"scopes_supported": ["not:found"]})  # not a document, whatever its body

    with site(answer) as (base, heard):
        session = session_at(base, resource=base + "/mcp")
        session.meta = {"scopes_supported": ["profile", "meta:a"]}
        assert session.catalogue() == ["tools:list", "tools:call", "x"]
        assert session.scopes() == ("tools:list", "tools:call")
        assert [request.path for request in heard] == ["/.well-known/oauth-protected-resource/mcp"]  # once
        elsewhere = session_at(base, resource=base + "/other")
        elsewhere.meta = session.meta
        assert elsewhere.load_prm() is None and elsewhere.scopes() == ("meta:a",)
        prm["scopes_supported"] = "tools:list tools:call"  # a string: not the array RFC 9728 has
        stringy = session_at(base, resource=base + "/mcp")
        stringy.meta = session.meta
        assert stringy.scopes() == ("meta:a",)
        prm["scopes_supported"] = []
        empty = session_at(base, resource=base + "/mcp", scopes=("chosen",))
        empty.meta = session.meta
        assert empty.catalogue() == ["meta:a"] and empty.scopes() == ("chosen",)
        nothing = session_at(base)
        assert (nothing.load_prm(), nothing.catalogue()) == (None, [])
        with pytest.raises(Skip, match="no --resource"):
            nothing.call_resource("t")
    assert len(heard) == 5


# -- the built-in person -------------------------------------------------------------------------

SIGN_IN_PAGE = """<html><body>
<form action="/search"><input name="q"><button>Search</button></form>
<form method="post" action="/login">
  <input type="hidden" name="csrf" value="tok">
  <input type="text" name="nickname" value="prefilled">
  <input type="text" name="note">
  <input type="email" name="email_address">
  <input type="text" name="display_name">
  <input type="password" name="pw">
  <input type="password" name="pw_again">
  <input type="checkbox" name="remember" value="yes" checked>
  <input type="checkbox" name="spam">
  <input type="radio" name="plan" value="1">
  <input type="file" name="upload">
  <input type="reset" name="clear">
  <input name="">
  <button type="submit" name="go" value="in">Sign in</button>
</form></body></html>"""
CONSENT_PAGE = """<html><body></script><form method="POST">
  <input type="hidden" name="ticket" value="t1">
  <input type="hidden" name="nonce" value="">
  <input type="text" name="comment">
  <button type="submit" name="decision" value="deny">Deny</button>
  <button type="button" name="help">Help</button>
  <button name="decision" value="ok">Allow access</button>
</form><form method="post" action="/language"><button name="lang" value="fr">Continuer en français</button></form>
</body></html>"""


def form_page(buttons: str, action: str = "") -> Page:
    return 200, {}, f'<form method="post" action="{action}"><input type="hidden" name="n" value="1">{buttons}</form>'


def walk(pages: dict[str, Page], redirect_uri: str = CB, **kwargs: Any) -> tuple[str | Exception, list[Heard], str]:
    """The built-in person from ``GET /authorize`` through ``pages`` (by method and path, ``"GET /x"``):
    the URL it ended at (or the exception it stopped with), what the server heard, the server's base URL."""
    with (
        site(lambda request: pages[f"{request.method} {request.path}"]) as (base, heard),
        Http([base], timeout=5) as http,
    ):
        person = FormPerson(http, USER, PASSWORD, **kwargs)
        try:
            ended: str | Exception = person(base + "/authorize?client_id=c", redirect_uri.format(base=base))
        except KitError as exc:
            ended = exc
        finally:
            person.close()
    return ended, heard, base


def test_the_form_person_signs_in_and_approves_through_the_servers_forms() -> None:
    """The first POST form of each page: its hidden and prefilled fields and checked boxes, the
    username in the first field named like one (else the first empty text field), the password in the
    first password field, the approving button's name and value; a redirect within the server is
    followed, and the first one to the redirect URI is where the person stops."""
    pages = {
        "GET /authorize": SIGN_IN_PAGE,
        "POST /login": (303, {"Location": "/consent?step=2"}, ""),
        "GET /consent": CONSENT_PAGE,
        "POST /consent": (302, {"Location": CB + "?code=abc&state=s"}, ""),
    }
    ended, heard, _base = walk({key: (200, {}, page) if isinstance(page, str) else page for key, page in pages.items()})
    assert ended == CB + "?code=abc&state=s"
    assert [(request.method, request.target) for request in heard] == [
        ("GET", "/authorize?client_id=c"),
        ("POST", "/login"),
        ("GET", "/consent?step=2"),
        ("POST", "/consent?step=2"),
    ]
    assert heard[1].form() == [
        ("csrf", "tok"),
        ("nickname", "prefilled"),
        ("remember", "yes"),
        ("email_address", USER),
        ("pw", PASSWORD),
        ("go", "in"),
    ]
    assert heard[3].form() == [("ticket", "t1"), ("nonce", ""), ("decision", "ok")]


def test_without_a_field_named_like_a_username_the_first_empty_text_field_takes_it() -> None:
    """Only ``<input>`` elements with a name are fields: a fieldset named like a username takes nothing."""
    fields = '<input><input name="a"><input name="b"><input type=password name=p>'
    page = f'<form method=post action=/login><fieldset name="account">{fields}</fieldset></form>'
    pages = {"GET /authorize": (200, {}, page), "POST /login": (302, {"Location": CB + "?code=x"}, "")}
    ended, heard, _base = walk(pages)
    assert ended == CB + "?code=x" and heard[1].form() == [("a", USER), ("p", PASSWORD)]


@pytest.mark.parametrize(
    ("buttons", "sent"),
    [
        ('<input type="submit" name="op" value="Cancel"><input type="image" name="op" value="Maybe">', ("op", "Maybe")),
        ('<button name="choice" value="no">No</button><button name="choice" value="2">Later</button>', ("choice", "2")),
        ('<button value="x">Grant</button>', None),
        ('<button name="b" value="later">Later</button><button name="b" value="yes">Allow</button>', ("b", "yes")),
        ('<button name="b" value="0">Cancel sign-in</button><button name="b" value="1">Allow</button>', ("b", "1")),
        ('<button name="later" value="1">1</button><button name="allow" value="2">2</button>', ("allow", "2")),
        ('<button name="d" value="1">Don’t allow</button><button name="d" value="2">Allow</button>', ("d", "2")),
        ('<button name="d" value="1">Do not allow</button><button name="d" value="2">Allow</button>', ("d", "2")),
        (  # a character reference is its character: "No thanks" refuses
            '<button name="d" value="1">No&nbsp;thanks, continue</button><button name="d" value="2">Continue</button>',
            ("d", "2"),
        ),
        ('<button name="c" value="1">Maybe</button><button name="c" value="2">Later</button>', ("c", "1")),
        (  # a type=button button is no submit button, and its label is not the one's before it
            '<button name="d" value="1">Later</button><button type="button">Allow pop-ups</button>'
            '<button name="d" value="2">Grant</button>',
            ("d", "2"),
        ),
        (  # the label is the button's whole text, past the elements in it
            '<button name="d" value="1">Later</button>'
            '<button name="d" value="2"><span class="icon"></span>Grant</button>',
            ("d", "2"),
        ),
        ("", None),
    ],
)
def test_the_form_person_presses_an_approving_button_else_one_that_does_not_refuse(
    buttons: str, sent: tuple[str, str] | None
) -> None:
    """The first button whose value, label or name approves and none refuses ("Don't allow" refuses); a
    button without a name sends nothing of its own; a form without buttons is submitted as is."""
    ended, heard, _base = walk({"GET /authorize": form_page(buttons), "POST /authorize": (302, {"Location": CB}, "")})
    assert ended == CB
    assert heard[1].form() == [("n", "1"), *([sent] if sent else [])]


@pytest.mark.parametrize(
    ("pages", "expect", "status"),
    [
        ({"GET /authorize": (200, {}, "<p>Signed out. Close this window.</p>")}, "shows no form to submit", 200),
        ({"GET /authorize": (200, {}, '<form action="/go"><button>Go</button></form>')}, "shows no form", 200),
        ({"GET /authorize": (500, {}, "<p>oops</p>")}, r"/authorize\?client_id=c answered 500", 500),
        ({"GET /authorize": (500, {}, f'<a href="{CB}?error=x">back</a>')}, "answered 500", 500),  # 4xx only
        ({"GET /authorize": (399, {}, f'<a href="{CB}?error=x">back</a>')}, "answered 399", 399),
        ({"GET /authorize": (302, {}, "")}, "answered 302", 302),  # a redirect without a Location
        (
            {"GET /authorize": form_page('<button name="deny" value="1">1</button>')},
            r"no approving button among \['1'\]",
            None,
        ),
        (
            {"GET /authorize": (200, {}, '<meta name="description" content="0;url=https://elsewhere.example/x">')},
            "shows no form",
            200,
        ),
        (
            {"GET /authorize": (200, {}, '<script>var a = 1;</script><p>location = "https://e.example/?code=1"</p>')},
            "shows no form",
            200,
        ),
        (
            {
                "GET /authorize": (
                    200,
                    {"Content-Type": "text/plain"},
                    f'<meta http-equiv="refresh" content="0;url={CB}">',
                )
            },
            "shows no form",
            200,
        ),
        (
            {"GET /authorize": form_page('<button value="d">Deny</button><input type=submit value="Cancel">')},
            r"/authorize\?client_id=c: no approving button among \['Deny', 'Cancel'\]",
            None,
        ),
        (
            {"GET /authorize": (200, {}, '<meta http-equiv="refresh" content="0;url=/elsewhere">')},
            "shows no form",
            200,
        ),
        (  # only a meta element refreshes, and only one naming where to
            {"GET /authorize": (200, {}, '<p http-equiv="refresh" content="0;url=https://elsewhere.example/x"></p>')},
            "shows no form",
            200,
        ),
        ({"GET /authorize": (200, {}, '<meta http-equiv="refresh" content="5">')}, "shows no form", 200),
        ({"GET /authorize": (200, {}, '<meta http-equiv="refresh" content>')}, "shows no form", 200),  # empty
        (  # no delay: not a refresh a browser follows at once
            {"GET /authorize": (200, {}, '<meta http-equiv="refresh" content="url=https://elsewhere.example/x">')},
            "shows no form",
            200,
        ),
        ({"GET /authorize": (200, {"Location": CB + "?code=x"}, "<p>?</p>")}, "shows no form", 200),  # no redirect
        (  # a later refresh off the server, to no redirect URI and with no answer: an error page's way home
            {"GET /authorize": (200, {}, '<meta http-equiv="refresh" content="10;url=https://www.operator.example/">')},
            "shows no form",
            200,
        ),
    ],
)
def test_the_form_person_stays_where_a_person_could_not_go_on(
    pages: dict[str, Page], expect: str, status: int | None
) -> None:
    ended, heard, base = walk(pages)
    assert isinstance(ended, PersonError), ended
    assert ended.status == status and re.search(expect, str(ended)), ended
    assert str(ended).startswith(base + "/authorize?client_id=c"), ended  # the page it stopped at comes first
    assert len(heard) == 1


@pytest.mark.parametrize(
    ("location", "redirect_uri", "ends"),
    [
        ("https://elsewhere.example/cb?code=1", CB, "https://elsewhere.example/cb?code=1"),  # not followed
        ("/cb?code=2", "{base}/cb", "{base}/cb?code=2"),  # the redirect URI on the server's own origin
        ("/next", CB, CB + "?code=3"),  # within the server: followed
    ],
)
def test_the_form_person_follows_redirects_only_within_the_server(location: str, redirect_uri: str, ends: str) -> None:
    """Each redirect status (303 in the sign-in test) is followed on the server."""
    pages = {
        "GET /authorize": (302, {"Location": location}, ""),
        "GET /next": (301, {"Location": "/then"}, ""),
        "GET /then": (308, {"Location": "/last"}, ""),
        "GET /last": (307, {"Location": CB + "?code=3"}, ""),
    }
    ended, heard, base = walk(pages, redirect_uri)
    assert ended == ends.format(base=base)
    assert [request.path for request in heard] == ["/authorize"] + ["/next", "/then", "/last"] * (location == "/next")


def test_a_page_sending_the_browser_to_a_redirect_uri_on_the_server_ends_there() -> None:
    """The redirect URI may be on the authorization server's origin: a navigation there ends the authorization."""
    page = '<meta http-equiv="refresh" content="0;url=/cb?code=p">' + form_page("")[2]
    ended, heard, base = walk({"GET /authorize": (200, {}, page)}, "{base}/cb")
    assert ended == base + "/cb?code=p" and len(heard) == 1


@pytest.mark.parametrize(
    ("page", "ends"),
    [
        (f'<meta http-equiv="refresh" content="0;url={CB}?code=r">', CB + "?code=r"),
        ('<meta http-equiv="refresh" content="0;url=https://elsewhere.example/x">', "https://elsewhere.example/x"),
        (f"<script>location.replace('{CB}?error=e')</script>", CB + "?error=e"),
        (f"<p>One moment</p><script>location.replace('{CB}?code=o')", CB + "?code=o"),  # open to the end: runs
        (f'<script>window.location.href = "{CB}";</script>', CB),  # to the redirect URI, even without an answer
        ('<meta http-equiv="refresh" content=".5; url=https://elsewhere.example/x">', "https://elsewhere.example/x"),
        *(  # later, but with the answer in the fragment (response_mode=fragment, or an implicit grant's)
            (
                f'<meta http-equiv="refresh" content="5;url=https://elsewhere.example/cb#{answer}">',
                f"https://elsewhere.example/cb#{answer}",
            )
            for answer in ("access_token=t", "code=c", "error=e")
        ),
    ],
)
def test_the_form_person_ends_at_a_page_sending_the_browser_off_the_server(page: str, ends: str) -> None:
    """AZ-02: a page that is not a redirect but sends the browser on all the same, to the redirect
    URI or off the server, ends the authorization there (the form on it is not submitted)."""
    ended, heard, _base = walk({"GET /authorize": (200, {}, page + form_page("")[2])})
    assert ended == ends and len(heard) == 1


@pytest.mark.parametrize(
    ("links", "ends"),
    [
        (["{cb}?error=invalid_scope&state=s1"], "{cb}?error=invalid_scope&state=s1"),  # followed, as a person would
        (["/elsewhere", "{cb}?error=x"], "{cb}?error=x"),
        ([], None),  # an error page alone: the person is stuck there
        (["https://other.example/cb?error=x"], None),  # not the client's redirect URI
        (["{cb}?error=x", "{cb}?error=y"], None),  # which one? the person does not guess
    ],
)
def test_the_form_person_follows_an_error_pages_one_link_back_to_the_client(links: list[str], ends: str | None) -> None:
    """A server that will not redirect on its own to a redirect URI it does not trust shows the
    error with a link to the client (RFC 9700 §4.11.2): the kit's person follows that one link, and
    the error reaches the redirect checks as if redirected."""
    body = "".join(f'<a href="{link.format(cb=CB).replace("&", "&amp;")}">back</a>' for link in links)
    ended, _heard, _base = walk(
        {"GET /authorize": (400, {}, f"<html><body><h1>invalid_scope</h1>{body}</body></html>")}
    )
    if ends is None:
        assert isinstance(ended, PersonError) and "answered 400" in str(ended), ended
    else:
        assert ended == ends.format(cb=CB)


@pytest.mark.parametrize(("status", "redirect_uri"), [(400, CB), (499, CB), (400, CB + "?tenant=1")])
def test_the_form_person_follows_an_error_pages_link_back_to_the_redirect_uri(status: int, redirect_uri: str) -> None:
    """The one link to the redirect URI, whatever its query; not a ``<link>``, nor an anchor without ``href``."""
    back = f"{CB}?tenant=1&amp;error=x"
    page = f'<link rel="help" href="{CB}?error=y"><a name="top"></a><a href="/help">?</a><a href="{back}">back</a>'
    ended, heard, _base = walk({"GET /authorize": (status, {}, page)}, redirect_uri)
    assert ended == CB + "?tenant=1&error=x" and len(heard) == 1


def test_a_page_without_a_content_type_is_read_as_html() -> None:
    page = f'<meta http-equiv="refresh" content="0;url={CB}?code=n">'
    ended, _heard, _base = walk({"GET /authorize": (200, {"Content-Type": ""}, page)})
    assert ended == CB + "?code=n"


def test_the_form_person_sends_no_form_to_a_server_it_was_not_given() -> None:
    """A sign-in form posting the password to another origin: the kit refuses to send it."""
    page = form_page('<input name="user"><input type="password" name="pw">', "https://elsewhere.example/collect")
    ended, heard, _base = walk({"GET /authorize": page})
    assert isinstance(ended, KitError) and not isinstance(ended, PersonError)
    assert "refusing to contact https://elsewhere.example/collect" in str(ended) and len(heard) == 1


def test_the_form_person_gives_up_after_its_page_limit() -> None:
    pages = {
        "GET /authorize": form_page("<button>Next</button>"),
        "POST /authorize": form_page("<button>Next</button>"),
    }
    ended, heard, _base = walk(pages, max_steps=3)
    assert isinstance(ended, PersonError) and str(ended) == "still on the authorization server after 3 pages"
    assert [request.method for request in heard] == ["GET", "POST", "POST", "POST"]


def test_the_sign_in_form_shown_again_after_the_password_stops_the_run() -> None:
    """The form the password went in, shown again (the same fields, posted to the same place), is the
    server refusing the username or password: :class:`SignInRefused`, a :class:`Stop` of the whole run,
    after one try; a later page asking for a password in another form (a second factor, a step-up)
    is filled in and walked on."""
    login = (
        '<form method=post action="/login?step=1"><input name=username><input type=password name=p><button>In</button>'
    )
    again = {"GET /authorize": (200, {}, login), "POST /login": (200, {}, login)}
    ended, heard, base = walk(again)
    assert isinstance(ended, SignInRefused) and isinstance(ended, Stop), ended
    assert str(ended) == (
        f"the sign-in was refused, its form shown again: {base}/login (check --username and --password)"  # no query
    )
    assert [(request.method, request.path) for request in heard] == [("GET", "/authorize"), ("POST", "/login")]
    step_up = login.replace('"/login?step=1"', '"/confirm"')
    pages = {**again, "POST /login": (200, {}, step_up), "POST /confirm": (302, {"Location": CB + "?code=c"}, "")}
    ended, heard, _base = walk(pages)
    assert ended == CB + "?code=c" and heard[2].form() == [("username", USER), ("p", PASSWORD)]


def test_the_form_persons_post_step_sends_the_request_as_a_form_and_walks_on() -> None:
    """OAuth 2.1 §4.1.1: an authorization request by POST, form-encoded; the answer is walked as a GET's."""
    pages = {
        "POST /authorize": form_page("<button>Allow</button>"),
        "POST /consent": (302, {"Location": CB + "?code=p"}, ""),
    }
    pages["POST /authorize"] = form_page("<button>Allow</button>", "/consent")
    with (
        site(lambda request: pages[f"{request.method} {request.path}"]) as (base, heard),
        Http([base], timeout=5) as http,
    ):
        person = FormPerson(http, None, None)
        try:
            post = person_post(person)
            assert post is not None
            ended = post(base + "/authorize", [("client_id", "c"), ("scope", "a b")], CB)
        finally:
            person.close()
    assert ended == CB + "?code=p"
    assert [(request.method, request.path, request.form()) for request in heard] == [
        ("POST", "/authorize", [("client_id", "c"), ("scope", "a b")]),
        ("POST", "/consent", [("n", "1")]),
    ]


# -- a person step of the user's own -------------------------------------------------------------


class _NotCallablePost:
    post = "not a method"

    def __call__(self, url: str, redirect_uri: str) -> str:
        return redirect_uri


def test_a_person_steps_post_is_its_callable_post_method_only() -> None:
    step = load_callable("conformance_person:step")
    assert person_post(step) == step.post  # type: ignore[attr-defined]
    assert person_post(lambda url, redirect_uri: redirect_uri) is None
    assert person_post(_NotCallablePost()) is None


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ("conformance_person", "--person wants module:callable, not 'conformance_person'"),
        (":step", "--person wants module:callable"),
        ("conformance_person:", "--person wants module:callable"),
        ("no_such_kit_person_module:step", "--person no_such_kit_person_module:step: No module named"),
        ("conformance_person:missing", "--person conformance_person:missing: .* has no attribute 'missing'"),
        ("conformance_person:step.missing", "has no attribute 'missing'"),
        ("conformance_person:USER", "conformance_person:USER is not callable"),
    ],
)
def test_a_person_spec_that_names_no_callable_is_refused(spec: str, expect: str) -> None:
    with pytest.raises(KitError, match=expect):
        load_callable(spec)


def test_a_person_callable_is_found_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``module:callable``, the module found in the current directory, dotted names followed."""
    (tmp_path / "kit_session_person.py").write_text(
        "class Steps:\n    @staticmethod\n    def step(url, redirect_uri):\n"
        "        return redirect_uri + '?code=here'\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "kit_session_person", raising=False)
    step = load_callable("kit_session_person:Steps.step")
    assert step("https://as.example/authorize", CB) == CB + "?code=here"
    assert sys.path[-1] == str(tmp_path)
    load_callable("kit_session_person:Steps")
    assert sys.path.count(str(tmp_path)) == 1


# -- stateful runs that cannot go on -------------------------------------------------------------


@contextmanager
def stateful_session(served: Served, person: Callable[[str, str], str] | None = None) -> Iterator[Session]:
    """The kit's session against ``served`` (its clients registered), with ``person`` for the built-in one."""
    session = make_session(quick(served, person=person))
    try:
        yield session
    finally:
        if isinstance(session.person, FormPerson):
            session.person.close()
        session.http.close()


def test_a_stateful_run_keeping_every_invariant_passes(served: Served) -> None:
    """Against ``kavach serve``: a pass, with the refresh rotations counted; the kit's request
    function and hypothesis's shrinking limit are as they were afterwards."""
    from hypothesis.internal.conjecture import engine

    limit = engine.MAX_SHRINKING_SECONDS
    with stateful_session(served) as session:
        result = run_stateful(session, examples=3, steps=6, derandomize=True, shrink_seconds=limit + 7)
        assert "request" not in vars(session.http)
    assert limit == engine.MAX_SHRINKING_SECONDS
    assert result["status"] == PASS and result["exchanges"] == [] and result["rules"] == ["TK-04", "TK-07"], result
    assert result["reason"] == (
        f"3 random sequences of up to 6 steps kept every invariant ({result['rotations']} refresh rotations)"
    )
    assert result["examples"] == 3 and result["seconds"] >= 0


def test_a_stateful_run_without_a_code_or_a_client_is_not_applicable(served: Served) -> None:
    """Not a failure of the server: the test could not run. While it runs, hypothesis's shrinking
    limit is the run's own budget (it is restored afterwards)."""
    from hypothesis.internal.conjecture import engine

    limits: list[object] = []

    def person(url: str, redirect_uri: str) -> str:
        limits.append(engine.MAX_SHRINKING_SECONDS)
        return redirect_uri + "?error=access_denied"

    limit = engine.MAX_SHRINKING_SECONDS
    with stateful_session(served, person) as session:
        result = run_stateful(session, examples=5, steps=4, shrink_seconds=limit + 17)
        assert "request" not in vars(session.http)
        session.primary = session.confidential = None
        no_client = run_stateful(session, examples=5, steps=4)
    assert limits and set(limits) == {limit + 17} and limit == engine.MAX_SHRINKING_SECONDS, limits
    assert result["status"] == NA and result["rules"] == ["TK-04", "TK-07"], result
    assert result["reason"].startswith("could not run: could not obtain a code: redirected to"), result
    assert no_client["status"] == NA and no_client["exchanges"] == [], no_client
    assert no_client["reason"] == "could not run: no client: its registration failed (RG-02)"


def test_a_stateful_run_stops_at_a_request_the_kit_cannot_make(served: Served) -> None:
    """A request without an answer (here one to a server not given) stops the run, a failure
    showing the exchanges so far; a 429 stops the whole kit."""
    with stateful_session(served, lambda url, redirect_uri: redirect_uri + "?code=not-issued") as session:
        session.meta["token_endpoint"] = "http://127.0.0.1:9/token"
        stopped = run_stateful(session, examples=20, steps=4, derandomize=True)
        with site(lambda request: as_json(429, {"error": "slow_down"})) as (base, heard):
            session.http.allowed.add(base)
            session.meta["token_endpoint"] = base + "/token"
            with pytest.raises(RateLimited):
                run_stateful(session, examples=20, steps=4, derandomize=True)
    assert stopped["status"] == FAIL and stopped["rules"] == ["TK-04", "TK-07"], stopped
    assert stopped["reason"].startswith("stopped: refusing to contact http://127.0.0.1:9/token"), stopped
    assert len(heard) == 1 and heard[0].form()[:2] == [("grant_type", "authorization_code"), ("code", "not-issued")]


def test_a_tokens_payload_is_read_from_a_compact_jws_only(kavach_session: Session) -> None:
    """The kit reads an access token's claims (TK-06's audience) without verifying it: a JWS of
    three parts whose payload is a JSON object; anything else is an opaque token (``None``)."""
    tokens = kavach_session.tokens(kavach_session.client())
    claims = jwt_payload(tokens.access_token)
    assert claims is not None and claims["iss"] == kavach_session.issuer, claims
    header, payload, signature = tokens.access_token.split(".")
    unpadded = b64url(json.dumps({"sub": "xx"}).encode())  # 13 bytes: two "=" of padding left off
    assert len(unpadded) % 4 != 0 and jwt_payload(f"{header}.{unpadded}.{signature}") == {"sub": "xx"}
    assert jwt_payload(f"{b64url(b'{ }')}.{unpadded}.sig") == {"sub": "xx"}  # other parts padded otherwise
    for opaque in (
        payload,
        f"{header}.{payload}",
        f"{tokens.access_token}.extra",
        f"{header}.{b64url(b'[1, 2]')}.{signature}",
        f"{header}.{b64url(b'not json')}.{signature}",
        f"{header}.{b64url(b'[' * 100_000 + b']' * 100_000)}.{signature}",
    ):
        assert jwt_payload(opaque) is None, opaque[:60]


def test_a_page_the_person_cannot_parse_is_named_without_its_query() -> None:
    """The authorization URL's query (a state, a PKCE challenge) is not repeated in the reason."""
    ended, _heard, base = walk({"GET /authorize": (200, {}, "<html><![x]></html>")})
    assert isinstance(ended, UnreadablePage), ended
    assert str(ended).startswith("a page the kit cannot parse: AssertionError: ")
    assert str(ended).endswith(f": {base}/authorize"), ended


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (BadAnswer("a 200 without an access_token"), "a 200 without an access_token"),
        (RateLimited("POST /token answered 429"), "POST /token answered 429"),
        (TypeError("unusable answer"), "TypeError: unusable answer"),
    ],
)
def test_an_exception_is_described_on_one_line_without_hypothesis_notes(exc: Exception, reason: str) -> None:
    """The stateful test's "stopped: ..." reason: the kit's own message, else the type and text."""
    exc.add_note("Falsifying example: run_state_machine(...)")
    assert describe(exc) == reason


@pytest.mark.parametrize("listed", [{}, {"token_endpoint": ""}, {"token_endpoint": ["https://as.example/token"]}])
def test_a_step_needing_an_endpoint_the_metadata_does_not_list_is_not_applicable(listed: dict[str, Any]) -> None:
    session = session_at("https://as.example")
    session.meta = {"authorization_endpoint": "https://as.example/authorize", **listed}
    with pytest.raises(Skip, match="the metadata lists no token_endpoint"):
        session.redeem(Client("c", CB), "code", "verifier")
    assert session.endpoint("authorization_endpoint") == "https://as.example/authorize"


def test_metadata_urls_may_be_http_or_https_only() -> None:
    """MD-02: ``kavach serve``'s default http issuer is as good a URL as an https one; other schemes are not."""
    http = {"issuer": "http://127.0.0.1:8000", "token_endpoint": "http://127.0.0.1:8000/token"}
    assert mistyped_members({**http, "jwks_uri": "https://as.example/jwks"}) == []
    assert mistyped_members({**http, "jwks_uri": "ftp://as.example/jwks"}) == [
        "jwks_uri is not an http(s) URL: 'ftp://as.example/jwks'"
    ]


def test_metadata_flags_are_booleans_and_list_members_arrays_of_strings() -> None:
    """MD-02: RFC 8414 §2's array members are JSON arrays of strings (a string is not one), OIDC
    Discovery's flags JSON booleans; members the kit does not know are not type-checked."""
    right = {
        "claims_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": ["a", "b"],
        "code_challenge_methods_supported": [],
        "verified_claims_supported": "yes",
    }
    assert mistyped_members(right) == []
    assert mistyped_members(
        {
            "request_parameter_supported": "true",
            "require_request_uri_registration": 1,
            "grant_types_supported": "authorization_code",
            "response_types_supported": ["code", 1],
        }
    ) == [
        "request_parameter_supported is not a boolean: 'true'",
        "require_request_uri_registration is not a boolean: '1'",
        "grant_types_supported is not an array of strings: 'authorization_code'",
        "response_types_supported is not an array of strings: \"['code', 1]\"",
    ]


def test_a_stateful_failure_names_its_rule_and_shows_the_exchanges() -> None:
    """TK-04 against a token endpoint that redeems any code every time (a local server; the person
    hands out a fresh code per authorization): the run fails on the replayed code, and the report
    shows the rule, the shortest sequence's token requests, and no pass."""
    codes = iter(range(1, 10_000))
    with site(lambda request: as_json(200, {"access_token": "at", "token_type": "Bearer"})) as (base, heard):
        session = session_at(base, lambda url, redirect_uri: f"{redirect_uri}?code=k{next(codes)}")
        session.meta = {"authorization_endpoint": base + "/authorize", "token_endpoint": base + "/token"}
        session.primary = Client("kit", CB)
        result = run_stateful(session, examples=30, steps=6, derandomize=True, shrink_seconds=5)
    assert result["status"] == FAIL and result["rules"] == ["TK-04"], result
    assert result["reason"] == "TK-04: a code yielded tokens a second time", result
    sent = [re.findall(r" code=(\S+)", line) for line in result["exchanges"] if "/token" in line]
    assert len(sent) >= 2 and len({code for codes_sent in sent for code in codes_sent}) < len(sent), sent
    assert len(result["exchanges"]) <= 6, result  # the final replay's only: one token request a step at most
    assert heard and all(request.path == "/token" for request in heard)


# -- what the stateful model tolerates -----------------------------------------------------------


@attrs.define(eq=False)
class Grant:
    refresh: list[str]
    access: list[str]
    revoked: bool = False
    swept: bool = False
    """Revoked along with another grant (``revoke_all``)."""


@attrs.define
class Grants:
    """An authorization server of the test's own for the stateful test (served by ``site()``, its
    person handing out a fresh code per authorization): a code is good once and a replay revokes
    its grant; refresh tokens rotate and a superseded one revokes its grant; revocation and
    introspection (of access tokens) as RFC 7009 and RFC 7662 have them. The knobs are the other
    answers a server may give:

    - ``revoke_all``: a replay revokes every grant and every code not yet redeemed, where the model
      knows of one grant only (as a server revoking all of a client's grants does);
    - ``retry``: how a superseded refresh token is answered instead of revoking: ``"same"``, the
      immediate predecessor with the current token (kavach within its grace window); ``"any"``,
      any superseded token so; ``"new"``, the immediate predecessor with a token of a new branch;
    - ``outlasting``: the access tokens answering ``"rotated"`` (a refresh) or ``"retried"`` (a
      retry) stay active when their grant is revoked;
    - ``revocation``: how a revocation request is answered: ``"done"``, ``"ignored"`` (200,
      nothing revoked) or ``"refused"`` (400);
    - ``reuse_kept``: a superseded refresh token refused, its grant left working;
    - ``refreshless``: no refresh tokens issued;
    - ``refuse_once``: codes and refresh tokens refused the first time they come, honoured after;
    - ``refusals``: the first token requests, this many, refused whatever they ask.
    """

    revoke_all: bool = False
    retry: str | None = None
    outlasting: str | None = None
    revocation: str = "done"
    reuse_kept: bool = False
    refreshless: bool = False
    refuse_once: set[str] = attrs.Factory(set)
    refusals: int = 0
    codes: dict[str, Grant | None] = attrs.Factory(dict)
    """Each code the person handed out and the grant it gave (``None`` before its redemption)."""
    dead: set[str] = attrs.Factory(set)
    """Codes revoked before their redemption (``revoke_all``)."""
    grants: list[Grant] = attrs.Factory(list)
    outliving: set[str] = attrs.Factory(set)
    did: list[str] = attrs.Factory(list)
    """What the server did, a request at a time: ``issued``, ``rotated``, ``retried``, ``refused``...,
    ``revoked TOKEN as HINT``."""
    issued: int = 0

    def person(self, url: str, redirect_uri: str) -> str:
        code = f"k{len(self.codes) + 1}"
        self.codes[code] = None
        return f"{redirect_uri}?code={code}"

    def new(self, kind: str) -> str:
        self.issued += 1
        return f"{kind}{self.issued}"

    def answer(self, request: Heard) -> Page:
        form = dict(request.form())
        if request.path == "/introspect":
            token = form["token"]
            active = token in self.outliving or any(token in g.access and not g.revoked for g in self.grants)
            return as_json(200, {"active": active})
        grant = next((g for g in self.grants if form.get("token", form.get("refresh_token")) in g.refresh), None)
        if request.path == "/revoke":
            self.did.append(f"revoked {form['token']} as {form.get('token_type_hint')}")
            if grant is not None and self.revocation == "done":
                grant.revoked = True
            return as_json(400 if self.revocation == "refused" else 200, {})
        presented = form.get("code") or form["refresh_token"]
        if presented in self.refuse_once or self.refusals > 0:
            self.refuse_once.discard(presented)
            self.refusals -= 1
            return self.refused("refused once")
        if form["grant_type"] == "authorization_code":
            return self.redeem(presented)
        if grant is None or grant.revoked:
            swept = grant is not None and grant.swept and presented == grant.refresh[-1]
            return self.refused("refused swept" if swept else "refused")
        if presented == grant.refresh[-1]:
            return self.tokens(grant, self.new("rt"), "rotated")
        immediate = presented == grant.refresh[-2]
        if self.retry == "any" or (self.retry == "same" and immediate):
            return self.tokens(grant, grant.refresh[-1], "retried")
        if self.retry == "new" and immediate:
            return self.tokens(grant, self.new("rt"), "branched")
        return self.refused("refused reuse") if self.reuse_kept else self.replayed(grant)

    def redeem(self, code: str) -> Page:
        if code not in self.codes or code in self.dead:
            return self.refused("refused swept" if code in self.dead else "refused")
        grant = self.codes[code]
        if grant is not None:
            return self.replayed(grant)
        grant = self.codes[code] = Grant([], [])
        self.grants.append(grant)
        return self.tokens(grant, self.new("rt"), "issued")

    def replayed(self, grant: Grant) -> Page:
        for each in self.grants if self.revoke_all else [grant]:
            each.swept |= each is not grant and not each.revoked
            each.revoked = True
        if self.revoke_all:
            self.dead |= {code for code, issued in self.codes.items() if issued is None}
        return self.refused("replayed")

    def tokens(self, grant: Grant, refresh: str, did: str) -> Page:
        access = self.new("at")
        if did == self.outlasting:
            self.outliving.add(access)
        grant.access.append(access)
        self.did.append(did)
        body = {"access_token": access, "token_type": "Bearer"}
        if self.refreshless:
            return as_json(200, body)
        if refresh not in grant.refresh:
            grant.refresh.append(refresh)
        return as_json(200, body | {"refresh_token": refresh})

    def refused(self, did: str) -> Page:
        self.did.append(did)
        return as_json(400, {"error": "invalid_grant"})


@contextmanager
def granting(grants: Grants, observed: bool = True) -> Iterator[Session]:
    """A session against ``grants``: its confidential client asks introspection, as the kit's does
    (not ``observed``: a public client only, so whether an access token works goes unseen)."""
    with site(grants.answer) as (base, _heard):
        session = session_at(base, grants.person)
        with session.http:
            session.meta = {
                "authorization_endpoint": base + "/authorize",
                "token_endpoint": base + "/token",
                "revocation_endpoint": base + "/revoke",
                "introspection_endpoint": base + "/introspect",
            }
            session.primary = Client("kit", CB)
            session.confidential = Client("kit-c", CB, "s3cret", "client_secret_basic") if observed else None
            yield session


class Steps:
    """The stateful machine's rules called in the test's order, its invariant checked after each
    step as hypothesis does."""

    def __init__(self, session: Session) -> None:
        self.machine = machine_for(session)()
        self.machine.start()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        rule = getattr(self.machine, name)

        def step(*args: Any) -> Any:
            result = rule(*args)
            self.machine.revoked_families_are_dead()
            return result

        return step


def test_a_fresh_code_refused_after_a_revocation_is_no_failure_and_counts_as_used() -> None:
    """A server may revoke more than the model knows of (here a replayed code revokes every grant
    and every code not yet redeemed): once anything was revoked, a fresh code's refusal is no TK-03
    failure. No family comes of it, and the code counts as used: its replay must be refused too."""
    grants = Grants(revoke_all=True)
    with granting(grants) as session:
        steps = Steps(session)
        first, second = steps.authorize(), steps.authorize()
        steps.redeem(first)
        steps.redeem(first)
        assert steps.redeem(second) == multiple()
        assert steps.redeem(second) == multiple()
        steps.refresh(steps.redeem(steps.authorize()))  # a code issued after: a grant as any other
    assert grants.did == ["issued", "replayed", "refused", "refused swept", "refused swept", "issued", "rotated"]


def revoke(steps: Steps, how: str | None, code: Any, family: Any) -> None:
    """Revokes ``family`` (issued for ``code``) as ``how`` says: its code replayed, its superseded
    refresh token replayed (after a rotation), or a revocation request; ``None``: nothing."""
    if how == "code replay":
        steps.redeem(code)
    elif how == "refresh replay":
        steps.refresh(family)
        steps.replay_refresh(family, 1)
    elif how == "revocation":
        steps.revoke(family)


REVOKED_BY = [None, "code replay", "refresh replay", "revocation"]


@pytest.mark.parametrize("how", REVOKED_BY)
def test_a_fresh_code_refused_fails_tk03_else_it_may_never_yield_tokens(how: str | None) -> None:
    """With nothing revoked, a fresh code must be redeemed (TK-03); a refusal after any revocation
    is taken as the code's revocation, so tokens for it later are a code redeemed twice (TK-04)."""
    with granting(Grants(refuse_once={"k2"})) as session:
        steps = Steps(session)
        first, second = steps.authorize(), steps.authorize()
        revoke(steps, how, first, steps.redeem(first))
        if how:
            steps.redeem(second)
        with pytest.raises(AssertionError) as failed:
            steps.redeem(second)
    assert str(failed.value) == (
        "TK-04: a code yielded tokens a second time" if how else "TK-03: a fresh code was refused: 400"
    )


def test_a_current_refresh_token_refused_after_a_revocation_is_no_failure_and_its_grant_dead() -> None:
    """A replayed code revoking every grant of the client: the current refresh token of another
    grant is refused then, no TK-07 failure; the model takes that grant as revoked, so its tokens
    are checked dead (introspection and one more refresh) and never tried as live again."""
    grants = Grants(revoke_all=True)
    with granting(grants) as session:
        steps = Steps(session)
        first, second = steps.authorize(), steps.authorize()
        _, other = steps.redeem(first), steps.redeem(second)
        steps.redeem(first)
        steps.refresh(other)
        steps.refresh(other)
        later = steps.redeem(steps.authorize())
        steps.refresh(later)  # a grant issued after is refreshed as any other, and stays live
        steps.refresh(later)
    swept = ["refused swept"] * 3  # refused, then in the invariant's check, then as a revoked grant's
    assert grants.did[2:] == ["replayed", "refused", *swept, "issued", "rotated", "rotated"], grants.did


@pytest.mark.parametrize("how", REVOKED_BY)
def test_a_current_refresh_token_refused_fails_tk07_else_it_may_never_work_again(how: str | None) -> None:
    """With nothing revoked, the current refresh token must work (TK-07); a refusal after any
    revocation is taken as its grant's revocation, so its tokens still working are a revoked grant's."""
    with granting(Grants(refuse_once={"rt3"})) as session:
        steps = Steps(session)
        first, second = steps.authorize(), steps.authorize()
        family, other = steps.redeem(first), steps.redeem(second)
        revoke(steps, how, first, family)
        with pytest.raises(AssertionError) as failed:
            steps.refresh(other)
    assert str(failed.value) == (
        "TK-04/TK-07/IN-01: an access token of a revoked grant is still active"
        if how
        else "TK-07: the current refresh token was refused: 400"
    )


@pytest.mark.parametrize(("revocation", "observed", "reason"), [
    ("ignored", False, "TK-07: the refresh token of a revoked grant still works"),
    ("refused", True, "RV-01: revocation answered 400"),
])  # fmt: skip
def test_a_revocation_not_done_fails(revocation: str, observed: bool, reason: str) -> None:
    """A revocation request refused fails RV-01. One answered 200 but not done: where nothing shows
    whether an access token works (a public client only), the invariant tries the revoked grant's
    current refresh token, and its working fails TK-07."""
    with granting(Grants(revocation=revocation), observed=observed) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        with pytest.raises(AssertionError) as failed:
            steps.revoke(family)
    assert str(failed.value) == reason


def test_steps_without_a_refresh_token_or_a_revocation_endpoint_send_nothing() -> None:
    """Refresh, replay and revocation need a refresh token (a server may issue none), revocation an
    endpoint in the metadata; a revoked grant without a refresh token is checked by its access token."""
    grants = Grants(refreshless=True)
    with granting(grants) as session:
        steps = Steps(session)
        code = steps.authorize()
        family = steps.redeem(code)
        steps.refresh(family)
        steps.replay_refresh(family, 1)
        steps.revoke(family)
        steps.redeem(code)
        del session.meta["revocation_endpoint"]
        grants.refreshless = False
        family = steps.redeem(steps.authorize())
        steps.revoke(family)
        steps.refresh(family)
    assert grants.did == ["issued", "replayed", "issued", "rotated"], grants.did


def test_a_refused_superseded_refresh_token_must_have_revoked_its_grant() -> None:
    """TK-07: a superseded refresh token's reuse revokes its whole grant; refused alone, the grant
    left working, it fails."""
    with granting(Grants(reuse_kept=True)) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        steps.refresh(family)
        with pytest.raises(AssertionError) as failed:
            steps.replay_refresh(family, 1)
    assert str(failed.value) == "TK-04/TK-07/IN-01: an access token of a revoked grant is still active"


def test_the_immediately_preceding_refresh_token_may_be_answered_with_the_same_successor() -> None:
    """A retry within a grace window (RFC 9700 §4.14.2 allows one) is no reuse: the grant stays
    live and its current token rotates on."""
    grants = Grants(retry="same")
    with granting(grants) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        steps.replay_refresh(family, 1)  # no superseded token yet: nothing sent
        steps.refresh(family)
        steps.replay_refresh(family, 4)  # back beyond the first token: the first, here the preceding one
        steps.refresh(family)
        steps.replay_refresh(family, 1)
        steps.revoke(family)
    revoked = ["revoked rt6 as refresh_token", "refused"]  # the current token; refused in the invariant's check
    assert grants.did == ["issued", "rotated", "retried", "rotated", "retried", *revoked], grants.did


@pytest.mark.parametrize("outlasting", ["rotated", "retried"])
def test_the_newest_access_token_is_checked_dead_with_its_grant(outlasting: str) -> None:
    """The access token of the latest refresh, or of a retry, is the grant's newest: one left
    active by the grant's revocation fails."""
    with granting(Grants(retry="same", outlasting=outlasting)) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        steps.refresh(family)
        if outlasting == "retried":
            steps.replay_refresh(family, 1)
        with pytest.raises(AssertionError) as failed:
            steps.revoke(family)
    assert str(failed.value) == "TK-04/TK-07/RV-01/IN-01: an access token of a revoked grant is still active"


@pytest.mark.parametrize(
    ("retried", "reason"),
    [
        (False, "TK-07: the refresh token of a revoked family still works"),
        (True, "TK-07: a refresh token of a revoked family still works"),
    ],
)
def test_a_revoked_familys_refresh_tokens_must_stay_refused(retried: bool, reason: str) -> None:
    """Once its grant was revoked, no refresh token of it may work, the current one or a retried
    one, even where nothing shows its access tokens and the check right after the revocation was
    refused (here a revocation answered but not done, the token refused once and honoured later)."""
    grants = Grants(retry="same", revocation="ignored", refuse_once={"rt3"})
    with granting(grants, observed=False) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        steps.refresh(family)
        steps.revoke(family)
        with pytest.raises(AssertionError) as failed:
            steps.replay_refresh(family, 1) if retried else steps.refresh(family)
    assert str(failed.value) == reason
    steps_done = ["issued", "rotated", "revoked rt3 as refresh_token", "refused once"]
    assert grants.did == [*steps_done, "retried" if retried else "rotated"], grants.did


LONG_PAGE = "<html>" + "rotated " * 20 + "</html>"


@pytest.mark.parametrize(
    ("refreshed", "reason"),
    [
        ({"access_token": "at2", "refresh_token": "rt1"}, "TK-07: the refresh token was not rotated"),
        ({"access_token": "at2"}, "TK-07: the refresh token was not rotated"),
        (
            {"access_token": "at2", "refresh_token": 5},
            "TK-01/TK-07: the token response's refresh_token is not a string: 5",
        ),
        (
            {"refresh_token": "rt2"},
            'TK-01: a 200 token response without an access_token: \'{"refresh_token": "rt2"}\'',
        ),
        (LONG_PAGE, f"TK-01: a 200 token response without an access_token: {LONG_PAGE[:100]!r}"),
    ],
)
def test_a_200_refresh_answer_without_usable_new_tokens_fails(refreshed: object, reason: str) -> None:
    """A refresh's 200 answer must carry an access token (TK-01) and a new refresh token, a string
    (TK-07): the same one again, none, or one that is no string fails; the reason shows the
    answer's first 100 characters."""

    def answer(request: Heard) -> Page:
        if "grant_type=authorization_code" in request.body:
            return as_json(200, {"access_token": "at1", "refresh_token": "rt1"})
        return as_json(200, refreshed) if isinstance(refreshed, dict) else (200, {}, str(refreshed))

    with site(answer) as (base, _heard):
        session = session_at(base, lambda url, redirect_uri: redirect_uri + "?code=k1")
        session.meta = {"authorization_endpoint": base + "/authorize", "token_endpoint": base + "/token"}
        session.primary = Client("kit", CB)
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        with pytest.raises(AssertionError) as failed:
            steps.refresh(family)
    assert str(failed.value) == reason


@pytest.mark.parametrize(
    ("retry", "rotations", "back", "reason"),
    [
        ("new", 1, 1, "TK-07: a retried refresh token produced a new branch instead of the same successor"),
        ("new", 3, 1, "TK-07: a retried refresh token produced a new branch instead of the same successor"),
        ("any", 2, 2, "TK-07: a superseded refresh token was accepted"),
        ("any", 2, 4, "TK-07: a superseded refresh token was accepted"),
        ("any", 4, 3, "TK-07: a superseded refresh token was accepted"),
    ],
)
def test_a_superseded_refresh_token_accepted_fails_tk07_unless_a_retry_of_the_last(
    retry: str, rotations: int, back: int, reason: str
) -> None:
    """Only the immediately preceding token may still be answered, and only with the current one:
    an older one answered at all, or the preceding one with a new token (a second branch of the
    grant), fails TK-07. ``back`` beyond the first token replays the first."""
    with granting(Grants(retry=retry)) as session:
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        for _ in range(rotations):
            steps.refresh(family)
        with pytest.raises(AssertionError) as failed:
            steps.replay_refresh(family, back)
        assert str(failed.value) == reason


def test_kavachs_grace_window_is_the_retry_the_model_tolerates(served: Served) -> None:
    """``kavach serve`` (``refresh_grace``, 10 s by default) answers the immediately preceding
    refresh token, sent again at once, with the current one, and the grant lives on; an older one
    revokes the grant. Short random runs seldom get there (the derandomized one above rotates no
    refresh token), so the steps are given here."""
    with stateful_session(served) as session:
        mark = session.http.mark()
        steps = Steps(session)
        family = steps.redeem(steps.authorize())
        steps.refresh(family)
        steps.replay_refresh(family, 1)
        steps.refresh(family)
        steps.replay_refresh(family, 2)
        steps.refresh(family)
        answers = [line.split(" => ")[1][:3] for line in session.http.since(mark) if "/token [" in line]
    # redeemed, rotated, retried (the same successor, or the step above failed), rotated; the
    # older token refused and the grant revoked: refused in the invariant's check and after.
    assert answers == ["200", "200", "200", "200", "400", "400", "400"], answers


@pytest.mark.parametrize(
    ("knobs", "status", "reason"),
    [
        ({"revoke_all": True, "retry": "same"}, PASS, "100 random sequences of up to 10 steps kept every invariant"),
        ({"retry": "new"}, FAIL, "TK-07: a retried refresh token produced a new branch instead of the same successor"),
    ],
    ids=["revoke-all-and-retry", "retry-branches"],
)
def test_a_stateful_run_tolerates_more_revoked_and_a_retry_but_not_a_new_branch(
    knobs: dict[str, Any], status: str, reason: str
) -> None:
    """The tolerances in whole random runs: against a server revoking every grant on a replay and
    answering retries with the current token the run passes, having met both; against one
    answering a retry with a new token it fails TK-07, shown by the shortest such sequence."""
    grants = Grants(**knobs)
    with granting(grants) as session:
        result = run_stateful(session, examples=100, derandomize=True, shrink_seconds=60)  # steps: the default, 10
    assert result["status"] == status and result["reason"].startswith(reason), result
    assert result["seconds"] == round(result["seconds"], 1), result  # in tenths, as the report shows them
    if status == PASS:
        assert {"replayed", "retried"} <= set(grants.did), grants.did
        assert result["rotations"] == grants.did.count("rotated") > 0, result
    else:  # the shortest sequence's exchanges only: the redemption, the refresh, the retry
        sent = [line.split(" [", 1)[1].split()[0] for line in result["exchanges"]]
        assert (
            result["rules"] == ["TK-07"]
            and sent == ["grant_type=authorization_code"] + ["grant_type=refresh_token"] * 2
        )


def test_a_failure_the_server_does_not_repeat_is_reported_with_its_first_reason() -> None:
    """The server refuses its first token request only: hypothesis's replay of the failing
    sequence passes (``Flaky``); the report keeps the first failure's rule and reason, and says so."""
    with granting(Grants(refusals=1)) as session:
        result = run_stateful(session, examples=10, steps=5, derandomize=True, shrink_seconds=5)
    assert result["status"] == FAIL and result["rules"] == ["TK-03"], result
    assert result["reason"] == (
        "TK-03: a fresh code was refused: 400"
        " (not repeated when replayed: the server answers the same steps differently)"
    )


@pytest.mark.parametrize("once", [False, True])
def test_an_unexpected_exception_in_a_step_stops_the_run_with_its_exchanges(once: bool) -> None:
    """Not an answer the kit could use (here the session's refresh itself fails): "stopped:" and
    the exception on one line, with the exchanges of the sequence it stopped in; failing ``once``
    only, it is a failure not repeated, named by no rule's message."""
    calls: list[object] = []

    def refresh(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if once and len(calls) > 1:
            return Session.refresh(session, *args, **kwargs)
        raise TypeError("unusable answer")

    with granting(Grants()) as session:
        session.refresh = refresh  # type: ignore[method-assign]
        result = run_stateful(session, examples=30, steps=8, derandomize=True, shrink_seconds=60)
    if once:
        assert result["status"] == FAIL and result["rules"] == ["TK-04", "TK-07"], result
        assert result["reason"] == (
            "a failure (not repeated when replayed: the server answers the same steps differently)"
        ), result
        return
    assert result["status"] == FAIL and result["reason"] == "stopped: TypeError: unusable answer", result
    assert [line.split(" [", 1)[0].split()[0] for line in result["exchanges"]] == ["POST"], result
    assert "grant_type=authorization_code" in result["exchanges"][0], result
