"""The conformance kit's client side step by step (conformance/kavach_conformance/session.py,
person.py, stateful.py): what the session sends, and what it refuses, in discovery, registration,
authorization requests (PKCE) and token requests; what the built-in person does with the pages it
is shown; how a ``--person`` callable is loaded; how a stateful run ends when it cannot go on.

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
from kavach_conformance.stateful import run_stateful
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
        "/.well-known/oauth-authorization-server/tenant": lambda base: (404, {}, "no"),
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
    assert len(heard) == 3


@pytest.mark.parametrize(
    ("meta", "register", "expect"),
    [
        ({}, False, "no client: give --client-id (and --client-secret), or --register"),
        ({"registration_endpoint": "https://as.example/r"}, False, "no client: give --client-id"),
        ({}, True, "lists no registration_endpoint: give --client-id"),
        ({"registration_endpoint": 5}, True, "has a registration_endpoint that is not a URL"),
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
    assert "scope" not in dict(parse_qsl(urlsplit(urls[0]).query))
    assert "resource" not in dict(parse_qsl(urlsplit(urls[0]).query))


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
    """The first valid request without a code is remembered (the kit's stop message shows it); no code, no flow."""

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
        session.revoke(public, "t1")
        session.revoke(basic, "t2", "refresh_token")
        session.revoke(post, "t3", "access_token")
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
        ("/revocation", [("token", "t1"), ("client_id", "pub")], None),
        ("/revocation", [("token", "t2"), ("token_type_hint", "refresh_token")], ("conf", "s1")),
        (
            "/revocation",
            [("token", "t3"), ("token_type_hint", "access_token"), ("client_id", "posting"), ("client_secret", "s2")],
            None,
        ),
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


def test_the_scopes_asked_for_are_the_resources_catalogue_without_openid_scopes() -> None:
    """The protected resource's ``scopes_supported`` (RFC 9728), else the authorization server's,
    OpenID Connect's own scopes left out; the first two are asked for unless ``--scope`` says."""
    prm: dict[str, Any] = {"scopes_supported": ["openid", "tools:list", 5, "offline_access", "tools:call", "x"]}

    def answer(request: Heard) -> Page:
        return as_json(200, prm) if request.path == "/.well-known/oauth-protected-resource/mcp" else (404, {}, "")

    with site(answer) as (base, heard):
        session = session_at(base, resource=base + "/mcp")
        session.meta = {"scopes_supported": ["profile", "meta:a"]}
        assert session.catalogue() == ["tools:list", "tools:call", "x"]
        assert session.scopes() == ("tools:list", "tools:call")
        assert [request.path for request in heard] == ["/.well-known/oauth-protected-resource/mcp"]  # once
        elsewhere = session_at(base, resource=base + "/other")
        elsewhere.meta = session.meta
        assert elsewhere.load_prm() is None and elsewhere.scopes() == ("meta:a",)
        prm["scopes_supported"] = []
        empty = session_at(base, resource=base + "/mcp", scopes=("chosen",))
        empty.meta = session.meta
        assert empty.catalogue() == ["meta:a"] and empty.scopes() == ("chosen",)
        nothing = session_at(base)
        assert (nothing.load_prm(), nothing.catalogue()) == (None, [])
        with pytest.raises(Skip, match="no --resource"):
            nothing.call_resource("t")
    assert len(heard) == 4


# -- the built-in person -------------------------------------------------------------------------

SIGN_IN_PAGE = """<html><body>
<form action="/search"><input name="q"><button>Search</button></form>
<form method="post" action="/login">
  <input type="hidden" name="csrf" value="tok">
  <input type="text" name="nickname" value="prefilled">
  <input type="text" name="note">
  <input type="email" name="email_address">
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
  <input type="text" name="comment">
  <button type="submit" name="decision" value="deny">Deny</button>
  <button type="button" name="help">Help</button>
  <button name="decision" value="ok">Allow access</button>
</form></body></html>"""


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
    username in the field named like one (else the first empty text field), the password in the
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
    assert heard[3].form() == [("ticket", "t1"), ("decision", "ok")]


def test_without_a_field_named_like_a_username_the_first_empty_text_field_takes_it() -> None:
    page = '<form method=post action=/login><input name="a"><input name="b"><input type=password name=p></form>'
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
        ('<button name="c" value="1">Maybe</button><button name="c" value="2">Later</button>', ("c", "1")),
        ("", None),
    ],
)
def test_the_form_person_presses_an_approving_button_else_one_that_does_not_refuse(
    buttons: str, sent: tuple[str, str] | None
) -> None:
    """A button without a name sends nothing of its own; a form without buttons is submitted as is."""
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
    ],
)
def test_the_form_person_stays_where_a_person_could_not_go_on(
    pages: dict[str, Page], expect: str, status: int | None
) -> None:
    ended, heard, _base = walk(pages)
    assert isinstance(ended, PersonError), ended
    assert ended.status == status and re.search(expect, str(ended)), ended
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
    pages = {"GET /authorize": (302, {"Location": location}, ""), "GET /next": (307, {"Location": CB + "?code=3"}, "")}
    ended, heard, base = walk(pages, redirect_uri)
    assert ended == ends.format(base=base)
    assert [request.path for request in heard] == ["/authorize"] + ["/next"] * (location == "/next")


@pytest.mark.parametrize(
    ("page", "ends"),
    [
        (f'<meta http-equiv="refresh" content="0;url={CB}?code=r">', CB + "?code=r"),
        ('<meta http-equiv="refresh" content="0;url=https://elsewhere.example/x">', "https://elsewhere.example/x"),
        (f"<script>location.replace('{CB}?error=e')</script>", CB + "?error=e"),
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
    login = '<form method=post action="/login"><input name="username"><input type=password name=p><button>In</button>'
    again = {"GET /authorize": (200, {}, login), "POST /login": (200, {}, login)}
    ended, heard, base = walk(again)
    assert isinstance(ended, SignInRefused) and isinstance(ended, Stop), ended
    assert str(ended) == (
        f"the sign-in was refused, its form shown again: {base}/login (check --username and --password)"
    )
    assert [(request.method, request.path) for request in heard] == [("GET", "/authorize"), ("POST", "/login")]
    step_up = login.replace('"/login"', '"/confirm"')
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
