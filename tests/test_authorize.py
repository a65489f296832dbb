"""The authorization endpoint, approve and deny: AZ-01..AZ-12 as far as the core owns them.

The HTML consent and login pages, their CSRF tokens and the adapter's 303 after a form POST
belong to the adapters; the core's own error pages and redirects are checked here (AZ-10).
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, make_config, s256
from oauth_flows import (
    CHALLENGE,
    LOOPBACK,
    REDIRECT,
    STATE,
    VERIFIER,
    add_client,
    az_query,
    az_request,
    consent,
    get_code,
    location_base,
    location_params,
    redeem,
    snapshot,
)

from kavach_core.config import ProtectedResource, RegistrationPolicy
from kavach_core.endpoints import authorize
from kavach_core.endpoints.metadata import authorization_server_metadata
from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.opaque import digest


@pytest.fixture
def hc(h: Harness) -> Harness:
    """The harness with one public client ``c1`` registered for :data:`REDIRECT`."""
    add_client(h)
    return h


def assert_page(out: object, error: str | None = None, status: int = 400) -> Response:
    """An error page: never a redirect (AZ-02), with the AZ-10 headers."""
    assert isinstance(out, Response), out
    assert out.status == status
    assert out.header("location") is None
    assert out.view is not None
    if error is not None:
        assert out.view.error == error
    assert_az10_headers(out)
    return out


def assert_az10_headers(resp: Response) -> None:
    csp = resp.header("content-security-policy") or ""
    assert "frame-ancestors 'none'" in csp
    assert resp.header("x-frame-options") == "DENY"
    assert resp.header("referrer-policy") == "no-referrer"
    assert not any(k.lower().startswith("access-control-") for k, _ in resp.headers), "no CORS (AZ-10)"


def assert_error_redirect(out: object, error: str, state: str | None = STATE, base: str = REDIRECT) -> dict[str, str]:
    assert isinstance(out, Response), out
    params = location_params(out)
    assert location_base(out) == base
    assert params["error"] == error
    assert params["iss"] == ISSUER
    if state is None:
        assert "state" not in params
    else:
        assert params["state"] == state
    assert "code" not in params
    assert_az10_headers(out)
    return params


# -- AZ-01: GET and POST, duplicates, empty values, unknown parameters ------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_get_and_post_both_reach_consent(hc: Harness, method: str) -> None:
    out = az_request(hc, method=method)
    assert isinstance(out, ConsentRequired)
    assert out.view.client_id == "c1"
    assert out.view.redirect_uri == REDIRECT
    assert out.view.resources == (RESOURCE,)
    assert [s.scope for s in out.view.scopes] == ["tools:list", "tools:call"]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_up_to_100_parameters_are_read(hc: Harness, method: str) -> None:
    """Unknown parameters are ignored (AZ-01) up to the documented limit of 100 pairs
    (``params.MAX_FIELDS``), exactly; one more is ``invalid_request`` and stores nothing."""
    pairs = list(az_query().items())
    padding = [(f"x{i}", "1") for i in range(100 - len(pairs))]
    assert isinstance(az_request(hc, [*pairs, *padding], method=method), ConsentRequired)
    before = snapshot(hc)
    out = az_request(hc, [*pairs, *padding, ("x", "1")], method=method)
    assert not isinstance(out, ConsentRequired) and out.status == 400
    assert snapshot(hc) == before


def test_az_01_post_reads_the_form_not_the_query(hc: Harness) -> None:
    req = hc.request("POST", "/authorize", query=az_query(), form={"client_id": "c1"})
    out = hc.run(authorize.handle(hc.ctx(), req))
    # Only the form counts: client and redirect URI are fine, the rest is missing.
    assert_error_redirect(out, "invalid_request", state=None)


def test_az_01_post_with_json_body_is_an_error_page(hc: Harness) -> None:
    req = hc.request("POST", "/authorize", json=az_query())
    assert_page(hc.run(authorize.handle(hc.ctx(), req)), "invalid_request")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_az_01_other_methods_are_refused_without_redirect(hc: Harness, method: str) -> None:
    req = hc.request(method, "/authorize", query=az_query())
    assert_page(hc.run(authorize.handle(hc.ctx(), req)), "invalid_request", status=405)


@pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_duplicate_client_id_or_redirect_uri_is_a_page_never_a_redirect(
    hc: Harness, name: str, method: str
) -> None:
    pairs = [*az_query().items(), (name, az_query()[name])]
    assert_page(az_request(hc, pairs, method=method), "invalid_request")


@pytest.mark.parametrize("name", ["response_type", "state", "scope", "code_challenge", "code_challenge_method"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_other_duplicate_parameters_redirect_invalid_request(hc: Harness, name: str, method: str) -> None:
    pairs = [*az_query().items(), (name, az_query()[name])]
    before = snapshot(hc)
    out = az_request(hc, pairs, method=method)
    # A duplicated state is not echoed (which one would be "the" state?); any other is.
    assert_error_redirect(out, "invalid_request", state=None if name == "state" else STATE)
    assert snapshot(hc) == before


def _raw_request(hc: Harness, method: str, pairs: list[tuple[str, str]]) -> object:
    """An authorization request of ``pairs``, which may hold text that is not text: a GET query
    split as the adapters split it (an escape that is not UTF-8 kept as a lone surrogate), or a
    POST form carrying each percent-encoded."""
    if method == "GET":
        req = hc.request("GET", "/authorize", query=pairs)
    else:
        body = urlencode(pairs, encoding="utf-8", errors="surrogateescape").encode()
        headers = [("Content-Type", "application/x-www-form-urlencoded")]
        req = hc.request("POST", "/authorize", headers=headers, body=body)
    return hc.run(authorize.handle(hc.ctx(), req))


def _with(name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in az_query().items()]


_READ_PARAMETERS = ["response_type", "state", "scope", "code_challenge", "code_challenge_method", "resource"]


@pytest.mark.parametrize("value", ["\udcff", "tools:list\x00"], ids=["not-utf-8", "nul"])
@pytest.mark.parametrize("name", _READ_PARAMETERS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_a_value_that_is_not_text_is_redirected_invalid_request(
    hc: Harness, method: str, name: str, value: str
) -> None:
    """RFC 6749 §4.1.2.1: once client and redirect URI are good, a parameter holding a NUL or an
    escape that is not UTF-8 is ``invalid_request`` at the redirect URI (a state that is not text
    is not echoed); nothing is stored."""
    before = snapshot(hc)
    out = _raw_request(hc, method, _with(name, value))
    assert_error_redirect(out, "invalid_request", state=None if name == "state" else STATE)
    assert snapshot(hc) == before


@pytest.mark.parametrize("value", ["\udcff", "c1\x00"], ids=["not-utf-8", "nul"])
@pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_02_a_client_id_or_redirect_uri_that_is_not_text_is_a_page(
    hc: Harness, method: str, name: str, value: str
) -> None:
    before = snapshot(hc)
    assert_page(_raw_request(hc, method, _with(name, value)), "invalid_request")
    assert snapshot(hc) == before


@pytest.mark.parametrize("name", ["state\x00", "sta\udcffte"], ids=["nul", "not-utf-8"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_a_parameter_name_that_is_not_text_is_a_page(hc: Harness, method: str, name: str) -> None:
    """A name holding a NUL or an escape that is not UTF-8 names no parameter one can tell: the
    request is refused on a page, whatever it might have been."""
    assert_page(_raw_request(hc, method, [*az_query().items(), (name, "x")]), "invalid_request")


def test_az_01_duplicate_with_different_values_is_refused_too(hc: Harness) -> None:
    pairs = [*az_query().items(), ("code_challenge_method", "plain")]
    assert_error_redirect(az_request(hc, pairs), "invalid_request")


def test_az_01_empty_value_is_absent(hc: Harness) -> None:
    # An empty duplicate is not a duplicate; an empty state is no state.
    pairs = [*az_query(state="").items(), ("scope", ""), ("response_type", "")]
    out = az_request(hc, pairs)
    assert isinstance(out, ConsentRequired)
    resp = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice"))
    assert "state" not in location_params(resp)


def test_az_01_empty_required_value_counts_as_missing(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, code_challenge=""), "invalid_request")
    assert_page(az_request(hc, client_id=""), "invalid_request")


def test_az_01_empty_redirect_uri_is_absent_and_the_single_registered_one_is_used(hc: Harness) -> None:
    out = consent(hc, redirect_uri="")
    assert out.view.redirect_uri == REDIRECT
    code = location_params(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))["code"]
    # Not sent at authorize: the token request may omit it (TK-03).
    assert redeem(hc, code, redirect_uri=None).status == 200


def test_az_01_unknown_parameters_are_ignored(hc: Harness) -> None:
    pairs = [*az_query().items(), ("nonce", "n"), ("display", "page"), ("foo", "1"), ("foo", "2")]
    assert isinstance(az_request(hc, pairs), ConsentRequired)


# -- AZ-01: parameters that change the answer are refused, not ignored --------------------------

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJjbGllbnRfaWQiOiJjMSJ9.c2ln"


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("request", JWT, "request_not_supported"),
        ("request_uri", "https://app.example.com/request.jwt", "request_uri_not_supported"),
        ("request_uri", "urn:ietf:params:oauth:request_uri:abc", "request_uri_not_supported"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_01_request_objects_are_refused(hc: Harness, name: str, value: str, error: str, method: str) -> None:
    """RFC 9101 §7: ``request_not_supported`` / ``request_uri_not_supported``, with ``state`` and
    ``iss`` (AZ-08); nothing is stored, so no consent is ever shown for it."""
    before = snapshot(hc)
    out = az_request(hc, [*az_query().items(), (name, value)], method=method)
    params = assert_error_redirect(out, error)
    assert set(params) == {"error", "error_description", "state", "iss"}
    assert snapshot(hc) == before


def test_az_01_a_request_object_alone_is_refused_as_such(hc: Harness) -> None:
    """A JAR request may carry only ``client_id`` outside the object (RFC 9101 §5): the answer is
    that the object is not supported, not that ``response_type`` or PKCE is missing."""
    out = az_request(hc, {"client_id": "c1", "request": JWT, "state": STATE})
    assert_error_redirect(out, "request_not_supported")


def test_az_01_request_object_with_a_bad_client_or_redirect_is_still_a_page(hc: Harness) -> None:
    assert_page(az_request(hc, [*az_query(client_id="nobody").items(), ("request", JWT)]), "invalid_client")
    evil = az_query(redirect_uri="https://evil.example/cb")
    assert_page(az_request(hc, [*evil.items(), ("request_uri", "https://evil.example/r")]), "invalid_request")


@pytest.mark.parametrize("mode", ["form_post", "fragment", "jwt", "query.jwt", "QUERY", "query "])
def test_az_01_response_modes_other_than_query_are_invalid_request(hc: Harness, mode: str) -> None:
    """Only ``query`` (OAuth 2.0 Multiple Response Type Encoding Practices §2.1), as the metadata
    says (RFC 8414 §2); the refusal itself goes back in the query, with ``state`` and ``iss``."""
    before = snapshot(hc)
    out = az_request(hc, response_mode=mode)
    params = assert_error_redirect(out, "invalid_request")
    assert "response_mode" in params["error_description"] and "query" in params["error_description"]
    assert "#" not in out.header("location")  # type: ignore[union-attr]
    assert snapshot(hc) == before


def test_az_01_response_mode_query_is_accepted_and_is_what_the_metadata_advertises(hc: Harness) -> None:
    assert isinstance(az_request(hc, response_mode="query"), ConsentRequired)
    modes = authorization_server_metadata(hc.config)["response_modes_supported"]
    assert modes == [authorize.RESPONSE_MODE] == ["query"]


@pytest.mark.parametrize("prompt", ["none", "none consent", "login none"])
def test_az_01_az_11_prompt_none_is_interaction_required(hc: Harness, prompt: str) -> None:
    """kavachOS always asks the person, so it can never answer without a page: OpenID Connect
    Core §3.1.2.1 (``none``), §3.1.2.6 (``interaction_required``)."""
    before = snapshot(hc)
    params = assert_error_redirect(az_request(hc, prompt=prompt), "interaction_required")
    assert set(params) == {"error", "error_description", "state", "iss"}
    assert snapshot(hc) == before


def test_az_01_prompt_none_comes_after_the_request_s_own_errors(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, prompt="none", scope="admin"), "invalid_scope")
    assert_error_redirect(az_request(hc, prompt="none", code_challenge=None), "invalid_request")


@pytest.mark.parametrize("prompt", ["consent", "login", "login consent", "select_account", "create"])
def test_az_01_other_prompt_values_still_reach_consent(hc: Harness, prompt: str) -> None:
    """MCP SDK clients send ``prompt=consent``; the person is asked anyway, so it changes nothing."""
    out = consent(hc, prompt=prompt)
    assert location_params(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))["state"] == STATE


@pytest.mark.parametrize(
    ("name", "value"),
    [("request", JWT), ("request_uri", "https://app.example.com/r"), ("response_mode", "query"), ("prompt", "consent")],
)
def test_az_01_these_parameters_given_twice_are_invalid_request(hc: Harness, name: str, value: str) -> None:
    before = snapshot(hc)
    out = az_request(hc, [*az_query().items(), (name, value), (name, value)])
    assert_error_redirect(out, "invalid_request")
    assert snapshot(hc) == before


# -- AZ-02 / AZ-03: client and redirect URI problems never redirect ----------------------------


def test_az_02_missing_client_id_is_a_page(hc: Harness) -> None:
    assert_page(az_request(hc, client_id=None), "invalid_request")


def test_az_02_unknown_client_is_a_page(hc: Harness) -> None:
    assert_page(az_request(hc, client_id="nobody"), "invalid_client")


def test_az_02_overlong_client_id_is_a_page(hc: Harness) -> None:
    assert_page(az_request(hc, client_id="c" * 5000), "invalid_client")


def test_az_02_expired_metadata_document_client_is_unknown(h: Harness) -> None:
    add_client(h, expires_at=h.now + 10, kind="document")
    assert isinstance(az_request(h), ConsentRequired)
    h.now += 10
    assert_page(az_request(h), "invalid_client")


def test_az_02_missing_redirect_uri_with_several_registered_is_a_page(h: Harness) -> None:
    add_client(h, redirect_uris=(REDIRECT, "https://app.example.com/other"))
    assert_page(az_request(h, redirect_uri=None), "invalid_request")


def test_az_02_missing_redirect_uri_with_one_registered_uses_it(hc: Harness) -> None:
    out = consent(hc, redirect_uri=None)
    assert out.view.redirect_uri == REDIRECT


def test_az_02_problems_with_other_parameters_do_not_hide_a_bad_client(hc: Harness) -> None:
    # Everything else is wrong too; still a page, never a redirect to an unverified URI.
    out = az_request(hc, redirect_uri="https://evil.example/cb", response_type="token", code_challenge=None)
    assert_page(out, "invalid_request")


@pytest.mark.parametrize(
    "requested",
    [
        "https://evil.example.com/callback",
        REDIRECT + "/",
        "https://APP.example.com/callback",
        "HTTPS://app.example.com/callback",
        "https://app.example.com/Callback",
        REDIRECT + "?x=1",
        REDIRECT + "#frag",
        "https://app.example.com/call",
        "https://app.example.com/callback/extra",
        "https://app.example.com:443/callback",
        "https://app.example.com:8443/callback",
        "http://app.example.com/callback",
        "https://user@app.example.com/callback",
        "//app.example.com/callback",
        "/callback",
        " " + REDIRECT,
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_az_03_redirect_uri_is_compared_exactly(hc: Harness, requested: str, method: str) -> None:
    out = az_request(hc, az_query(redirect_uri=requested), method=method)
    assert_page(out, "invalid_request")


def test_az_03_registered_uri_with_query_matches_exactly(h: Harness) -> None:
    registered = "https://app.example.com/cb?tenant=a"
    add_client(h, redirect_uris=(registered,))
    assert_page(az_request(h, redirect_uri="https://app.example.com/cb"))
    assert_page(az_request(h, redirect_uri="https://app.example.com/cb?tenant=b"))
    out = consent(h, redirect_uri=registered)
    resp = h.run(authorize.approve(h.ctx(), out.ticket, "alice"))
    params = location_params(resp)
    assert params["tenant"] == "a" and "code" in params
    assert resp.header(
        "location",
    ).startswith(registered + "&code=")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("registered", "requested"),
    [
        ("http://127.0.0.1/cb", "http://127.0.0.1:4000/cb"),
        ("http://127.0.0.1:3000/cb", "http://127.0.0.1:4000/cb"),
        ("http://127.0.0.1:3000/cb", "http://127.0.0.1/cb"),
        ("http://[::1]/cb", "http://[::1]:51234/cb"),
        ("http://[::1]:80/cb?x=1", "http://[::1]:8080/cb?x=1"),
        # RFC 3986 §3.1: the scheme's case is no part of the match (registration accepts any)
        ("HTTP://127.0.0.1/cb", "HTTP://127.0.0.1:4000/cb"),
        ("HTTP://127.0.0.1/cb", "http://127.0.0.1:4000/cb"),
        ("http://[::1]/cb", "Http://[::1]:4000/cb"),
    ],
)
def test_az_03_loopback_ip_may_vary_the_port(h: Harness, registered: str, requested: str) -> None:
    add_client(h, redirect_uris=(registered,))
    out = consent(h, redirect_uri=requested)
    # The redirect goes to the port the client asked for.
    resp = h.run(authorize.approve(h.ctx(), out.ticket, "alice"))
    assert resp.header("location").startswith(requested)  # type: ignore[union-attr]
    # And errors go there too.
    err = az_request(h, redirect_uri=requested, response_type="token")
    assert err.header("location").startswith(requested + ("&" if "?" in requested else "?") + "error=")


@pytest.mark.parametrize(
    ("registered", "requested"),
    [
        ("http://localhost/cb", "http://localhost:4000/cb"),
        ("https://127.0.0.1/cb", "https://127.0.0.1:4000/cb"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:4000/cb/"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:4000/CB"),
        ("http://127.0.0.1/cb", "http://127.0.0.2:4000/cb"),
        ("http://127.0.0.1/cb", "http://[::1]:4000/cb"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:99999/cb"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:/cb"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:4000/cb?x=1"),
        ("http://127.0.0.1/cb", "http://127.0.0.1:4000@evil.example/cb"),
        ("http://127.0.0.1:3000/cb", "http://127.0.0.1:3000/cb#x"),
    ],
)
def test_az_03_port_variation_only_for_http_loopback_ips(h: Harness, registered: str, requested: str) -> None:
    add_client(h, redirect_uris=(registered,))
    assert_page(az_request(h, redirect_uri=requested), "invalid_request")


# -- AZ-04: response_type ----------------------------------------------------------------------


@pytest.mark.parametrize("response_type", ["token", "id_token", "code token", "code id_token", "none", "CODE"])
def test_az_04_other_response_types_are_unsupported(hc: Harness, response_type: str) -> None:
    before = snapshot(hc)
    out = az_request(hc, response_type=response_type)
    params = assert_error_redirect(out, "unsupported_response_type")
    assert "access_token" not in params and "id_token" not in params
    assert "#" not in out.header("location")  # type: ignore[union-attr]
    assert snapshot(hc) == before


def test_az_04_missing_response_type_is_invalid_request(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, response_type=None), "invalid_request")


def test_az_04_client_not_allowed_the_code_flow_is_unauthorized(h: Harness) -> None:
    add_client(h, grant_types=("refresh_token",))
    assert_error_redirect(az_request(h), "unauthorized_client")
    add_client(h, "c2", response_types=())
    assert_error_redirect(az_request(h, client_id="c2"), "unauthorized_client")


# -- AZ-04: an error is redirected at once only to a redirect URI the server trusts (RFC 9700 §4.11.2)


def assert_error_offered(out: object, error: str, where: str, base: str = REDIRECT) -> dict[str, str]:
    """A page that does not redirect, with a link carrying the error response to the client (the
    same parameters a redirect would: error, state, iss, no code), naming where it leads."""
    page = assert_page(out, error)
    assert page.view is not None and page.view.back is not None and page.view.back_to == where
    link = Response(303, (("Location", page.view.back),))
    assert location_base(link) == base
    params = location_params(link)
    assert params["error"] == error and params["iss"] == ISSUER and params["state"] == STATE and "code" not in params
    assert page.view.back.replace("&", "&amp;").encode() in page.body, "the page's own HTML has the link too"
    return params


@pytest.mark.parametrize("kind", ["dynamic", "document"])
@pytest.mark.parametrize(
    ("params", "error"),
    [({"response_type": "token"}, "unsupported_response_type"), ({"scope": "nope"}, "invalid_scope"),
     ({"prompt": "none"}, "interaction_required"), ({"code_challenge": None}, "invalid_request"),
     ({"request_uri": "https://evil.example/r"}, "request_uri_not_supported")],
)  # fmt: skip
def test_az_04_a_client_anyone_could_make_gets_no_automatic_redirect(
    h: Harness, kind: str, params: dict[str, str | None], error: str
) -> None:
    """Anyone may register a client, or publish a metadata document, whose redirect URI is their
    own site; an erroneous request for it must not make the server an open redirector: the error
    is shown on a page, with a link to take it to the client, and nothing is stored. An
    operator's client with the same redirect URI gets the same error redirected."""
    add_client(h, kind=kind)
    before = snapshot(h)
    assert_error_offered(az_request(h, **params), error, "app.example.com")
    assert snapshot(h) == before
    add_client(h, "c-static", kind="static")
    assert_error_redirect(az_request(h, client_id="c-static", **params), error)


@pytest.mark.parametrize("uri", [LOOPBACK, "http://[::1]:8080/cb", "http://localhost:3000/cb"])
def test_az_04_loopback_redirects_stay_automatic(h: Harness, uri: str) -> None:
    """A loopback redirect URI reaches only the person's own device (RFC 8252 §7.3): the error is
    redirected at once, whoever made the client (the usual MCP client)."""
    add_client(h, redirect_uris=(uri,), kind="dynamic")
    assert_error_redirect(az_request(h, redirect_uri=uri, response_type="token"), "unsupported_response_type", base=uri)


def test_az_04_hosts_the_registration_policy_allows_stay_automatic() -> None:
    """With ``allowed_redirect_hosts``, the operator has vouched for those hosts: a self-registered
    client's error is redirected at once there, and offered on a page elsewhere (a client
    registered before the list was set)."""
    h = Harness(make_config(registration=RegistrationPolicy(allowed_redirect_hosts=("app.example.com",))))
    add_client(h, kind="dynamic")
    assert_error_redirect(az_request(h, scope="nope"), "invalid_scope")
    add_client(h, "c2", redirect_uris=("https://other.example/cb",), kind="dynamic")
    out = az_request(h, client_id="c2", redirect_uri="https://other.example/cb", scope="nope")
    assert_error_offered(out, "invalid_scope", "other.example", base="https://other.example/cb")


def test_az_04_a_private_use_scheme_is_offered_by_its_scheme(h: Harness) -> None:
    """Any app may claim a private-use scheme (RFC 8252 §8.6): no automatic redirect for one a
    self-registered client names, and the page names the scheme, never an authority in it."""
    uri = "com.example.app://evil.example/cb"
    add_client(h, redirect_uris=(uri,), kind="dynamic")
    out = az_request(h, redirect_uri=uri, response_type="token")
    page = assert_page(out, "unsupported_response_type")
    assert page.view is not None and page.view.back_to == "com.example.app:"
    assert page.view.back is not None and page.view.back.startswith(uri + "?error=unsupported_response_type")
    # The page tells the person why, in the error's own words (RFC 6749 §4.1.2.1 error_description).
    assert "only response_type=code is supported" in page.view.description


# -- AZ-05: PKCE ------------------------------------------------------------------------------


def test_az_05_missing_challenge_is_invalid_request(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, code_challenge=None), "invalid_request")


def test_az_05_plain_challenge_refused(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, code_challenge_method="plain", code_challenge=VERIFIER), "invalid_request")


def test_az_05_missing_method_is_refused(hc: Harness) -> None:
    # RFC 7636 defaults a missing method to plain, which OAuth 2.1 servers must not accept.
    assert_error_redirect(az_request(hc, code_challenge_method=None), "invalid_request")


@pytest.mark.parametrize("method", ["s256", "S512", "SHA256", "S256 "])
def test_az_05_other_methods_are_refused(hc: Harness, method: str) -> None:
    assert_error_redirect(az_request(hc, code_challenge_method=method), "invalid_request")


@pytest.mark.parametrize(
    "challenge",
    [
        CHALLENGE[:-1],
        CHALLENGE + "A",
        CHALLENGE[:-1] + "=",
        CHALLENGE[:-1] + "+",
        CHALLENGE[:-1] + "/",
        VERIFIER,
        "a" * 128,
        "é" * 43,
    ],
)
def test_az_05_malformed_challenge_is_refused(hc: Harness, challenge: str) -> None:
    assert_error_redirect(az_request(hc, code_challenge=challenge), "invalid_request")


def test_az_05_challenge_is_never_echoed(hc: Harness) -> None:
    outcomes: list[object] = [
        az_request(hc),
        az_request(hc, response_type="token"),
        az_request(hc, scope="nope"),
        az_request(hc, resource="https://unknown.example/mcp"),
        az_request(hc, redirect_uri="https://evil.example/cb"),
        az_request(hc, code_challenge_method="plain"),
    ]
    pending = consent(hc)
    outcomes.append(hc.run(authorize.approve(hc.ctx(), pending.ticket, "alice")))
    outcomes.append(hc.run(authorize.deny(hc.ctx(), consent(hc).ticket)))
    for out in outcomes:
        text = repr(out)
        if isinstance(out, Response):
            text += out.body.decode() + repr(out.headers)
        assert CHALLENGE not in text


def test_az_05_challenge_is_bound_to_the_code(hc: Harness) -> None:
    code = get_code(hc)
    record = hc.store.codes[digest(code)]
    assert record.code_challenge == CHALLENGE
    other = "o" * 43
    code2 = get_code(hc, code_challenge=s256(other))
    assert redeem(hc, code2).json()["error"] == "invalid_grant"
    assert redeem(hc, code2, code_verifier=other).status == 200


# -- AZ-06: resource indicators -------------------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        RESOURCE + "#frag",
        RESOURCE + "#",
        "/mcp",
        "mcp.example.com/mcp",
        "urn:example:mcp",
        "https://unknown.example.com/mcp",
        "https://mcp.example.com/mcp/extra",
        "https://mcp.example.com/MCP",
        "https://mcp.example.com:8443/mcp",
        "http://mcp.example.com/mcp",
        "https://mcp.example.com/mcp?x=1",
        "https://user@mcp.example.com/mcp",
        "https://[::1/mcp",
        "https://mcp.example.com:99999/mcp",
    ],
)
def test_az_06_resource_must_be_an_absolute_protected_uri(hc: Harness, resource: str) -> None:
    before = snapshot(hc)
    assert_error_redirect(az_request(hc, resource=resource), "invalid_target")
    assert snapshot(hc) == before


@pytest.mark.parametrize("spelling", ["https://MCP.Example.COM/mcp", "https://mcp.example.com:443/mcp", RESOURCE + "/"])
def test_az_06_resource_is_compared_canonically(hc: Harness, spelling: str) -> None:
    assert consent(hc, resource=spelling).view.resources == (RESOURCE,)


def test_az_06_several_resources_allowed(hc: Harness) -> None:
    pairs = [*az_query().items(), ("resource", OTHER_RESOURCE), ("resource", RESOURCE)]
    out = az_request(hc, pairs)
    assert isinstance(out, ConsentRequired)
    assert out.view.resources == (RESOURCE, OTHER_RESOURCE)
    assert out.view.resource_names == ("Example MCP", "Other MCP")


def test_az_06_one_bad_resource_among_several_is_invalid_target(hc: Harness) -> None:
    pairs = [*az_query().items(), ("resource", "https://unknown.example/mcp")]
    assert_error_redirect(az_request(hc, pairs), "invalid_target")


def test_az_06_no_resource_with_several_configured_is_invalid_target(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, resource=None), "invalid_target")


def test_az_06_no_resource_with_one_configured_uses_it() -> None:
    h = Harness(make_config(resources=[ProtectedResource(RESOURCE, name="Only")]))
    add_client(h)
    out = consent(h, resource=None)
    assert out.view.resources == (RESOURCE,)
    code = location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice")))["code"]
    assert h.store.codes[digest(code)].resources == (RESOURCE,)
    assert redeem(h, code).status == 200


# -- AZ-07: scope ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    ["admin", "tools", "tools:list admin", "tools:", ":tools", "tools::call", "tools:list\ttools:call", 'a"b'],
)
def test_az_07_scope_outside_the_catalogue_or_malformed_is_invalid_scope(hc: Harness, scope: str) -> None:
    before = snapshot(hc)
    assert_error_redirect(az_request(hc, scope=scope), "invalid_scope")
    assert snapshot(hc) == before


def test_az_07_defaults_when_no_scope_is_requested(hc: Harness) -> None:
    out = consent(hc, scope=None)
    assert [s.scope for s in out.view.scopes] == ["tools:list", "tools:call"]
    assert [s.scope for s in consent(hc, scope="   ").view.scopes] == ["tools:list", "tools:call"]


def test_az_07_defaults_are_limited_by_the_client_scope(h: Harness) -> None:
    add_client(h, scope=("tools:list",))
    assert [s.scope for s in consent(h, scope=None).view.scopes] == ["tools:list"]


def test_az_07_no_default_left_for_the_client_is_invalid_scope(h: Harness) -> None:
    add_client(h, scope=("resources:read",))
    assert_error_redirect(az_request(h, scope=None), "invalid_scope")
    assert h.store.pending == {}
    assert [s.scope for s in consent(h, scope="resources:read").view.scopes] == ["resources:read"]


def test_az_07_operator_registered_scope_limits_requests(h: Harness) -> None:
    add_client(h, scope=("tools:list",), kind="static")
    assert_error_redirect(az_request(h, scope="tools:call"), "invalid_scope")


def test_az_07_self_registered_scope_does_not_block_step_up(h: Harness) -> None:
    """MCP step-up: a client that registered with its first challenge's scope may ask for a scope
    a later 403 ``insufficient_scope`` names; the catalogue and the person still decide."""
    add_client(h, scope=("tools:list",), kind="dynamic")
    assert [s.scope for s in consent(h, scope="tools:call:add").view.scopes] == ["tools:call:add"]
    assert_error_offered(az_request(h, scope="admin"), "invalid_scope", "app.example.com")


def test_az_07_narrower_prefix_scope_is_allowed(hc: Harness) -> None:
    out = consent(hc, scope="tools:call:search resources:read")
    assert [s.scope for s in out.view.scopes] == ["tools:call:search", "resources:read"]
    # A narrowed scope is described for what it is, never with its wider family's wording.
    assert out.view.scopes[0].description == "Run the tool \u201csearch\u201d"
    assert out.view.scopes[1].description == "Read resources"
    resp = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice"))
    body = redeem(hc, location_params(resp)["code"]).json()
    assert body["scope"] == "tools:call:search resources:read"


def test_az_07_repeated_scope_tokens_collapse(hc: Harness) -> None:
    assert [s.scope for s in consent(hc, scope="tools:list  tools:list").view.scopes] == ["tools:list"]


def test_az_07_approve_can_narrow_and_the_token_reports_it(hc: Harness) -> None:
    code = get_code(hc, scopes=("tools:list", "admin"))
    body = redeem(hc, code).json()
    assert body["scope"] == "tools:list"


@pytest.mark.parametrize("ticked", [(), ("prompts:get",)])  # nothing, or only what was not asked for
def test_az_07_az_12_approving_no_scope_is_a_refusal(hc: Harness, ticked: tuple[str, ...]) -> None:
    out = consent(hc)
    before_codes = dict(hc.store.codes)
    resp = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice", ticked))
    assert_error_redirect(resp, "access_denied")
    assert hc.store.codes == before_codes and hc.store.grants == {}
    assert hc.store.pending == {}, "the ticket is used up"


# -- AZ-08 / AZ-12: code, state and iss; deny ----------------------------------------------------


def test_az_08_success_carries_code_state_and_iss(hc: Harness) -> None:
    state = "a b&c=d/é?"
    out = consent(hc, state=state)
    resp = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice"))
    params = location_params(resp)
    assert set(params) == {"code", "state", "iss"}
    assert params["state"] == state
    assert params["iss"] == ISSUER
    assert location_base(resp) == REDIRECT
    assert_az10_headers(resp)


def test_az_08_state_is_optional(hc: Harness) -> None:
    out = consent(hc, state=None)
    params = location_params(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))
    assert set(params) == {"code", "iss"}


def test_az_08_errors_carry_state_iss_and_a_description(hc: Harness) -> None:
    params = assert_error_redirect(
        az_request(hc, response_type="token", state="xyz"), "unsupported_response_type", "xyz"
    )
    assert params["error_description"]
    assert set(params) == {"error", "error_description", "state", "iss"}


def test_az_08_overlong_state_is_invalid_request_and_not_echoed(hc: Harness) -> None:
    assert_error_redirect(az_request(hc, state="s" * 3000), "invalid_request", state=None)


def test_az_12_deny_redirects_access_denied_with_state_and_iss(hc: Harness) -> None:
    out = consent(hc)
    before_codes = dict(hc.store.codes)
    resp = hc.run(authorize.deny(hc.ctx(), out.ticket))
    assert_error_redirect(resp, "access_denied")
    assert hc.store.codes == before_codes
    assert hc.store.pending == {}


def test_az_12_deny_without_state(hc: Harness) -> None:
    out = consent(hc, state=None)
    assert_error_redirect(hc.run(authorize.deny(hc.ctx(), out.ticket)), "access_denied", state=None)


def test_az_12_deny_then_approve_is_a_page(hc: Harness) -> None:
    out = consent(hc)
    hc.run(authorize.deny(hc.ctx(), out.ticket))
    assert_page(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))
    assert_page(hc.run(authorize.deny(hc.ctx(), out.ticket)))


# -- AZ-09: codes ------------------------------------------------------------------------------


def test_az_09_code_is_256_bits_base64url(hc: Harness) -> None:
    codes = {get_code(hc) for _ in range(5)}
    assert len(codes) == 5
    for code in codes:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", code)
        assert len(__import__("base64").urlsafe_b64decode(code + "=")) == 32
        assert digest(code) in hc.store.codes
        assert code not in repr(hc.store.codes)


def test_az_09_code_is_bound_to_everything(hc: Harness) -> None:
    pairs = [*az_query(scope="tools:list").items(), ("resource", OTHER_RESOURCE)]
    out = az_request(hc, pairs)
    hc.now += 5
    code = location_params(hc.run(authorize.approve(hc.ctx(), out.ticket, "bob")))["code"]
    record = hc.store.codes[digest(code)]
    assert record.client_id == "c1"
    assert record.redirect_uri == REDIRECT
    assert record.redirect_uri_given is True
    assert record.code_challenge == CHALLENGE
    assert record.resources == (RESOURCE, OTHER_RESOURCE)
    assert record.scopes == ("tools:list",)
    assert record.subject == "bob"
    assert record.issued_at == hc.now
    assert record.expires_at == hc.now + 60
    assert record.consumed is False


def test_az_09_a_resource_unconfigured_before_approval_stays_bound_to_the_code(h: Harness) -> None:
    """A resource the operator stops protecting while the consent page is open is kept in the
    code (AZ-09): the token endpoint answers for it, ``invalid_target`` (TK-06)."""
    add_client(h)
    out = az_request(h, [*az_query().items(), ("resource", OTHER_RESOURCE)])
    assert isinstance(out, ConsentRequired)
    h.config = make_config(resources=[ProtectedResource(RESOURCE, name="Example MCP")])
    assert h.run(authorize.approve(h.ctx(), out.ticket, "alice")).status == 303
    (code,) = h.store.codes.values()
    assert code.resources == (RESOURCE, OTHER_RESOURCE)


def test_az_09_code_expires_after_the_configured_lifetime() -> None:
    from kavach_core.config import Lifetimes

    h = Harness(make_config(lifetimes=Lifetimes(code=30)))
    add_client(h)
    code = get_code(h)
    assert h.store.codes[digest(code)].expires_at == h.now + 30
    h.now += 30
    assert redeem(h, code).json()["error"] == "invalid_grant"
    code = get_code(h)
    h.now += 29
    assert redeem(h, code).status == 200


def test_az_09_default_code_lifetime_is_60_seconds(hc: Harness) -> None:
    code = get_code(hc)
    hc.now += 60
    assert redeem(hc, code).json()["error"] == "invalid_grant"


def test_az_09_consent_ticket_is_single_use(hc: Harness) -> None:
    out = consent(hc)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", out.ticket)
    assert out.ticket not in repr(hc.store.pending)
    first = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice"))
    assert first.status == 303
    second = hc.run(authorize.approve(hc.ctx(), out.ticket, "alice"))
    assert_page(second, "invalid_request")
    assert len(hc.store.codes) == 1


def test_az_09_expired_ticket_is_a_page(hc: Harness) -> None:
    out = consent(hc)
    assert out.expires_at == hc.now + 600
    hc.now += 600
    assert_page(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))
    assert hc.store.codes == {}
    out = consent(hc)
    hc.now += 600
    assert_page(hc.run(authorize.deny(hc.ctx(), out.ticket)))


@pytest.mark.parametrize("answer", ["approve", "deny"])
def test_az_09_a_client_deleted_while_its_consent_is_shown_gets_nothing(hc: Harness, answer: str) -> None:
    """An operator deletes the client (``kavach clients revoke``) while the person's consent page
    is open: Approve makes no code and Deny sends no one to it; both are the expired page, as the
    consent page's reload already was."""
    from kavach_core import effects as fx

    out = consent(hc)
    (client_id,) = {p.client_id for p in hc.store.pending.values()}
    assert hc.store.perform(fx.DeleteClient(client_id, hc.now))
    if answer == "approve":
        assert_page(hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")))
    else:
        assert_page(hc.run(authorize.deny(hc.ctx(), out.ticket)))
    assert hc.store.codes == {} and hc.store.pending == {}


@pytest.mark.parametrize("answer", ["consent", "approve", "deny"])
def test_az_09_a_redirect_uri_withdrawn_while_consent_is_shown_gets_nothing(hc: Harness, answer: str) -> None:
    """The operator replaces the client with one that no longer lists the request's redirect URI
    while the consent page is open: the request is answered as expired, never sent on to the
    withdrawn URI (AZ-03: the redirect URI must be one registered now)."""
    out = consent(hc)
    add_client(hc, redirect_uris=("https://app.example.com/other",))
    if answer == "consent":
        assert hc.run(authorize.consent(hc.ctx(), out.ticket)) is None
        return
    flow = (
        authorize.approve(hc.ctx(), out.ticket, "alice")
        if answer == "approve"
        else authorize.deny(hc.ctx(), out.ticket)
    )
    assert_page(hc.run(flow))
    assert hc.store.codes == {} and hc.store.pending == {}


def test_az_09_unknown_ticket_is_a_page(hc: Harness) -> None:
    assert_page(hc.run(authorize.approve(hc.ctx(), "x" * 43, "alice")))
    assert_page(hc.run(authorize.deny(hc.ctx(), "")))


@pytest.mark.parametrize(
    "subject",
    ["", None, 7, "a" * 256, "alice\x00", "al\nice", "alice\udcff", "\x85"],
    ids=["empty", "none", "number", "too-long", "nul", "newline", "surrogate", "c1-control"],
)
def test_az_09_approve_needs_a_subject(hc: Harness, subject: object) -> None:
    """A subject no store keeps as given (PostgreSQL refuses a NUL, and an index entry over about
    2.7 KB, every time) is the embedding application's error: ``ValueError`` before anything is
    read or written, so the ticket is still good."""
    out = consent(hc)
    before = snapshot(hc)
    with pytest.raises(ValueError, match="authenticated subject"):
        hc.run(authorize.approve(hc.ctx(), out.ticket, subject))  # type: ignore[arg-type]
    assert snapshot(hc) == before
    # The ticket was not used up by the programming error.
    assert hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")).status == 303


@pytest.mark.parametrize(
    "subject",
    ["a" * 255, "alice@example.com", "ålice bob", "\u4e2d\u6587", "user|id:42", "alice\u00a0smith", "a\u200db"],
)
def test_az_09_a_subject_is_any_text_up_to_255_characters(hc: Harness, subject: str) -> None:
    """Only control characters and lone surrogates are refused: text Python calls unprintable but
    that is neither (a no-break space, a zero-width joiner) is a subject like any other."""
    out = consent(hc)
    assert authorize.subject_problem(subject) is None
    assert hc.run(authorize.approve(hc.ctx(), out.ticket, subject)).status == 303
    assert [code.subject for code in hc.store.codes.values()] == [subject]


# -- AZ-10 / AZ-11: what the core hands to the pages -----------------------------------------


def test_az_10_error_pages_are_self_contained_and_escaped(hc: Harness) -> None:
    page = assert_page(az_request(hc, client_id="nobody"))
    assert (
        page.header(
            "content-type",
        )
        == "text/html; charset=utf-8"
    )
    assert page.header("cache-control") == "no-store"
    assert b"<script" not in page.body and b"http" not in page.body
    from kavach_core.http import error_page

    evil = error_page(400, "<b>", "<script>alert(1)</script>")
    assert b"<script>" not in evil.body and b"&lt;script&gt;" in evil.body


def test_az_10_redirects_are_303(hc: Harness) -> None:
    assert az_request(hc, response_type="token").status == 303
    out = consent(hc)
    assert hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")).status == 303


def test_az_11_consent_view_describes_client_redirect_scopes_and_resource(h: Harness) -> None:
    add_client(
        h,
        redirect_uris=(REDIRECT,),
        client_name="Demo App",
        kind="dynamic",
        metadata='{"client_uri": "https://app.example.com", "logo_uri": "https://app.example.com/logo.png"}',
    )
    view = consent(h).view
    assert view.client_name == "Demo App"
    assert view.client_kind == "dynamic"
    assert view.redirect_host == "app.example.com"
    assert view.loopback_only is False
    assert view.resource_names == ("Example MCP",)
    assert [(s.scope, s.description) for s in view.scopes] == [
        ("tools:list", "See the list of tools"),
        ("tools:call", "Run any tool"),
    ]
    assert view.client_uri == "https://app.example.com"
    assert view.logo_uri == "https://app.example.com/logo.png"


def test_az_11_a_resource_without_a_name_is_shown_by_its_uri() -> None:
    """The consent shows the resource (AZ-11): by its configured name, else by its URI."""
    h = Harness(make_config(resources=[ProtectedResource(RESOURCE), ProtectedResource(OTHER_RESOURCE, name="Other")]))
    add_client(h)
    out = az_request(h, [*az_query().items(), ("resource", OTHER_RESOURCE)])
    assert isinstance(out, ConsentRequired)
    assert out.view.resource_names == (RESOURCE, "Other")


def test_az_11_loopback_only_client_is_flagged(h: Harness) -> None:
    add_client(h, redirect_uris=(LOOPBACK, "http://[::1]/cb", "http://localhost/cb"))
    view = consent(h, redirect_uri=LOOPBACK).view
    assert view.loopback_only is True
    assert view.client_name == "c1"  # no name registered: the id is shown
    assert view.client_uri is None and view.logo_uri is None


@pytest.mark.parametrize(
    ("registered", "requested", "host", "flags"),
    [
        # (loopback_only, on_device, private_use)
        (REDIRECT, REDIRECT, "app.example.com", (False, False, False)),
        ("https://App.Example.COM/cb", "https://App.Example.COM/cb", "app.example.com", (False, False, False)),
        ("https://app.example.com:8443/cb", "https://app.example.com:8443/cb", "app.example.com:8443", (False,) * 3),
        ("https://app.example.com:443/cb", "https://app.example.com:443/cb", "app.example.com:443", (False,) * 3),
        ("http://[::1]/cb", "http://[::1]:5173/cb", "[::1]:5173", (True, True, False)),
        ("http://[::1]/cb", "http://[::1]/cb", "[::1]", (True, True, False)),
        ("http://localhost:8080/cb", "http://localhost:8080/cb", "localhost:8080", (True, True, False)),
        # Loopback is http only (RFC 8252 §7.3, §8.3): neither https://localhost nor another http host.
        ("https://localhost:8443/cb", "https://localhost:8443/cb", "localhost:8443", (False,) * 3),
        ("http://app.example.com/cb", "http://app.example.com/cb", "app.example.com", (False,) * 3),
        ("com.evil://app.example.com/cb", "com.evil://app.example.com/cb", "com.evil:", (False, True, True)),
        ("com.example.app:/cb", "com.example.app:/cb", "com.example.app:", (False, True, True)),
    ],
)
def test_az_11_consent_view_names_where_the_answer_goes(
    h: Harness, registered: str, requested: str, host: str, flags: tuple[bool, bool, bool]
) -> None:
    """The host with its port for http(s); for a private-use scheme the scheme alone, never the
    authority it may carry: any app can claim the scheme (RFC 8252 §7.1, §8.6)."""
    add_client(h, redirect_uris=(registered,))
    view = consent(h, redirect_uri=requested).view
    assert view.redirect_host == host
    assert (view.loopback_only, view.on_device, view.private_use) == flags


@pytest.mark.parametrize(
    ("requested", "host", "private_use"),
    [("http://127.0.0.1:4000/cb", "127.0.0.1:4000", False), ("com.example.app:/cb", "com.example.app:", True)],
)
def test_az_11_loopback_and_private_use_client_is_on_the_device(
    h: Harness, requested: str, host: str, private_use: bool
) -> None:
    add_client(h, redirect_uris=(LOOPBACK, "com.example.app:/cb"))
    view = consent(h, redirect_uri=requested).view
    assert (view.redirect_host, view.private_use) == (host, private_use)
    assert view.on_device is True and view.loopback_only is False


def test_az_11_web_client_answering_to_its_private_use_scheme(h: Harness) -> None:
    add_client(h, redirect_uris=(REDIRECT, "com.example.app:/cb"))
    web = consent(h).view
    assert (web.redirect_host, web.on_device, web.private_use) == ("app.example.com", False, False)
    app = consent(h, redirect_uri="com.example.app:/cb").view
    assert (app.redirect_host, app.on_device, app.private_use) == ("com.example.app:", False, True)


def test_az_11_consent_can_be_shown_again_without_using_the_ticket(hc: Harness) -> None:
    out = consent(hc)
    again = hc.run(authorize.consent(hc.ctx(), out.ticket))
    assert again == out
    assert hc.run(authorize.approve(hc.ctx(), out.ticket, "alice")).status == 303
    assert hc.run(authorize.consent(hc.ctx(), out.ticket)) is None


def test_az_11_consent_for_a_removed_client_is_none(hc: Harness) -> None:
    out = consent(hc)
    del hc.store.clients["c1"]
    assert hc.run(authorize.consent(hc.ctx(), out.ticket)) is None
