"""Routing: paths, methods, CORS (MD-04) and GN-03 for anything that reaches the router."""

from __future__ import annotations

import pytest
from conftest import Harness, make_config, s256
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issued_tokens import writes

from kavach_core.config import Paths, RegistrationPolicy
from kavach_core.errors import OAuthError
from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.router import cors_headers, route, routes

CORS_PATHS = {
    "/.well-known/oauth-authorization-server": "GET, HEAD, OPTIONS",
    "/.well-known/openid-configuration": "GET, HEAD, OPTIONS",
    "/.well-known/oauth-protected-resource/mcp": "GET, HEAD, OPTIONS",
    "/jwks.json": "GET, HEAD, OPTIONS",
    "/token": "POST, OPTIONS",
    "/register": "POST, OPTIONS",
    "/revoke": "POST, OPTIONS",
    "/introspect": "POST, OPTIONS",
}


def call(h: Harness, method: str, path: str, **kwargs: object) -> Response:
    headers = [*kwargs.pop("headers", []), ("Host", "mcp.example.com")]  # type: ignore[misc]
    resp = h.route(h.request(method, path, headers=headers, **kwargs))  # type: ignore[arg-type]
    assert isinstance(resp, Response)
    return resp


@pytest.mark.parametrize(("path", "allow"), CORS_PATHS.items())
def test_md_04_preflight(h: Harness, path: str, allow: str) -> None:
    headers = [
        ("Origin", "https://inspector.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "authorization, content-type, mcp-protocol-version"),
    ]
    resp, effects = h.trace(route(h.ctx(), h.request("OPTIONS", path, headers=[*headers, ("Host", "mcp.example.com")])))
    assert resp.status == 204
    assert resp.body == b""
    assert resp.header("Access-Control-Allow-Origin") == "*"
    assert resp.header("Access-Control-Allow-Methods") == allow
    assert resp.header("Allow") == allow
    allowed_headers = {v.strip().lower() for v in (resp.header("Access-Control-Allow-Headers") or "").split(",")}
    assert {"authorization", "content-type", "mcp-protocol-version"} <= allowed_headers
    assert int(resp.header("Access-Control-Max-Age") or "0") > 0
    assert resp.header("Access-Control-Allow-Credentials") is None
    assert effects == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/.well-known/oauth-protected-resource/mcp"),
        ("GET", "/jwks.json"),
        ("POST", "/token"),
        ("POST", "/register"),
        ("POST", "/revoke"),
        ("POST", "/introspect"),
        ("PUT", "/token"),
        ("DELETE", "/.well-known/oauth-authorization-server"),
    ],
)
def test_md_04_actual_responses_allow_any_origin(h: Harness, method: str, path: str) -> None:
    resp = call(h, method, path, headers=[("Origin", "https://inspector.example")])
    assert resp.header("Access-Control-Allow-Origin") == "*"
    assert resp.header("Access-Control-Allow-Credentials") is None


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS", "PUT"])
def test_md_04_authorization_endpoint_never_gets_cors(h: Harness, method: str) -> None:
    resp = h.route(h.request(method, "/authorize", headers=[("Origin", "https://evil.example")]))
    assert isinstance(resp, Response)
    assert not any(k.lower().startswith("access-control-") for k, _ in resp.headers)
    if method in ("OPTIONS", "PUT"):
        assert resp.status == 405
        assert resp.header("Allow") == "GET, POST"


@pytest.mark.parametrize("path", [*CORS_PATHS, "/authorize", "/nowhere", "/mcp"])
def test_md_04_cors_headers_of_an_answer_the_adapter_gives_itself(path: str) -> None:
    """The CORS header an adapter adds to its own 503/500 (MD-04): exactly the router's rule, any
    origin on every CORS path, nothing on the authorization endpoint (AZ-10) nor off the table."""
    expected = (("Access-Control-Allow-Origin", "*"),) if path in CORS_PATHS else ()
    assert cors_headers(make_config(), path) == expected


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_az_02_a_wrong_method_at_the_authorization_endpoint_is_a_page(h: Harness, method: str) -> None:
    """A person's browser lands here: even a 405 is an HTML page (and never a redirect)."""
    resp, effects = h.trace(route(h.ctx(), h.request(method, "/authorize")))
    assert resp.status == 405 and resp.header("Allow") == "GET, POST"
    assert resp.header("Content-Type") == "text/html; charset=utf-8" and resp.view is not None
    assert resp.header("Location") is None and effects == []


def test_gn_03_unknown_path_is_404_json(h: Harness) -> None:
    for path in ("/", "/nope", "/token/", "/.well-known/oauth-protected-resource/other", "/TOKEN", "/register/x"):
        resp = call(h, "GET", path)
        assert resp.status == 404
        assert resp.json() == {"error": "not_found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/token"),
        ("GET", "/register"),
        ("PUT", "/revoke"),
        ("GET", "/introspect"),
        ("POST", "/jwks.json"),
        ("POST", "/.well-known/oauth-authorization-server"),
        ("PATCH", "/.well-known/oauth-protected-resource/mcp"),
    ],
)
def test_gn_03_wrong_method_is_405_with_allow(h: Harness, method: str, path: str) -> None:
    resp, effects = h.trace(route(h.ctx(), h.request(method, path, headers=[("Host", "mcp.example.com")])))
    assert resp.status == 405
    assert resp.header("Allow") == CORS_PATHS[path]
    assert resp.json()["error"] == "invalid_request"
    assert effects == []


def test_gn_03_endpoint_paths_follow_configuration() -> None:
    paths = Paths(token="/oauth2/token", registration="/oauth2/clients")
    h = Harness(make_config(issuer="https://as.example.com/tenant", paths=paths))
    table = routes(h.config)
    assert "/tenant/oauth2/token" in table and "/tenant/oauth2/clients" in table
    assert "/tenant/authorize" in table and "/tenant/jwks.json" in table
    assert "/token" not in table
    assert call(h, "POST", "/tenant/oauth2/clients", json={"redirect_uris": ["https://a.example/cb"]}).status == 201


def test_rg_03_closed_registration_has_no_route() -> None:
    h = Harness(make_config(registration=RegistrationPolicy(mode="closed")))
    assert "/register" not in routes(h.config)
    assert call(h, "POST", "/register", json={}).status == 404
    assert call(h, "OPTIONS", "/register").status == 404


def test_md_04_jwks_head_and_get(h: Harness) -> None:
    got = call(h, "GET", "/jwks.json")
    head = call(h, "HEAD", "/jwks.json")
    assert got.status == head.status == 200
    assert got.json()["keys"]
    assert head.body == b""
    assert head.header("Content-Length") == str(len(got.body))
    assert head.header("Access-Control-Allow-Origin") == "*"


def test_gn_03_oauth_error_escaping_an_endpoint_becomes_a_response(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from kavach_core.endpoints import revocation

    def broken(ctx: object, req: object) -> object:
        raise OAuthError("server_error", "boom", status=400)
        yield

    monkeypatch.setattr(revocation, "handle", broken)
    resp = call(h, "POST", "/revoke", form={"token": "x"})
    assert resp.status == 400
    assert resp.json() == {"error": "server_error", "error_description": "boom"}
    assert resp.header("Access-Control-Allow-Origin") == "*"


def test_gn_03_register_then_authorize_through_the_router(h: Harness) -> None:
    """The router hands the authorization endpoint's ``ConsentRequired`` back untouched."""
    resp = call(
        h,
        "POST",
        "/register",
        json={"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none", "client_name": "CLI"},
    )
    client_id = resp.json()["client_id"]
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": "http://127.0.0.1:4567/cb",
        "code_challenge": s256("v" * 50),
        "code_challenge_method": "S256",
        "state": "abc",
        "resource": "https://mcp.example.com/mcp",
    }
    outcome = h.route(h.request("GET", "/authorize", query=query))
    assert isinstance(outcome, ConsentRequired)
    assert outcome.view.client_kind == "dynamic"


# -- GN-03: anything at all -------------------------------------------------------------------

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "get", ""])
paths = st.sampled_from([*CORS_PATHS, "/authorize", "/", "/x"]) | st.text(max_size=30)
header_names = st.sampled_from(["Content-Type", "Authorization", "Host", "X-Kavach-Client-Address", "Origin"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    method=methods,
    path=paths,
    query=st.lists(st.tuples(st.text(max_size=15), st.text(max_size=30)), max_size=5),
    headers=st.lists(st.tuples(header_names, st.text(max_size=60)), max_size=4),
    body=st.binary(max_size=200),
)
def test_gn_03_router_never_raises(
    h: Harness, method: str, path: str, query: list[tuple[str, str]], headers: list[tuple[str, str]], body: bytes
) -> None:
    """Invariant: for any method, path (an endpoint's, or any text), query, headers and body, the
    router raises nothing. Unless it hands back the consent page to show (``ConsentRequired``),
    it answers no 5xx; a refusal (4xx) writes nothing but rate-limit hits, and one with a JSON
    body (to any method but HEAD) names its ``error`` as a string."""
    outcome, effects = h.trace(route(h.ctx(), h.request(method, path, query=query, headers=headers, body=body)))
    if isinstance(outcome, ConsentRequired):
        return
    assert outcome.status < 500
    if outcome.status >= 400 and outcome.header("Content-Type") == "application/json" and method != "HEAD":
        assert isinstance(outcome.json()["error"], str)
    if outcome.status >= 400:
        # only the rate-limit counter may be written by a refused request
        assert all(type(e).__name__ == "Hit" for e in writes(effects))
