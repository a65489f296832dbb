"""Discovery: RFC 8414 authorization server metadata (MD-01, MD-02, AZ-08) and RFC 9728
protected resource metadata (MD-03)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, make_config

from kavach_core.config import Paths, ProtectedResource, RegistrationPolicy
from kavach_core.endpoints import metadata
from kavach_core.http import Response
from kavach_core.resource_indicators import metadata_url

AS_PATH = "/.well-known/oauth-authorization-server"


def get(h: Harness, path: str, host: str | None = None) -> Response:
    headers = [("Host", host)] if host else []
    resp = h.route(h.request("GET", path, headers=headers))
    assert isinstance(resp, Response)
    return resp


def test_md_01_issuer_is_byte_identical(h: Harness) -> None:
    resp = h.route(h.request("GET", AS_PATH))
    assert resp.status == 200
    assert resp.json()["issuer"] == ISSUER
    assert b'"issuer":"https://as.example.com"' in resp.body


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/oauth-authorization-server/tenant/one",
        "/.well-known/openid-configuration/tenant/one",
        "/tenant/one/.well-known/openid-configuration",
    ],
)
def test_md_01_issuer_with_path_uses_path_insertion(path: str) -> None:
    issuer = "https://as.example.com/tenant/one"
    h = Harness(make_config(issuer=issuer))
    resp = h.route(h.request("GET", path))
    assert resp.status == 200
    body = resp.json()
    assert body["issuer"] == issuer
    assert body["token_endpoint"] == issuer + "/token"
    assert body["authorization_endpoint"] == issuer + "/authorize"


def test_md_01_bare_well_known_is_not_this_issuers_when_it_has_a_path() -> None:
    h = Harness(make_config(issuer="https://as.example.com/tenant"))
    assert h.route(h.request("GET", AS_PATH)).status == 404
    assert h.route(h.request("GET", "/.well-known/oauth-authorization-server/tenant/")).status == 404


def test_md_01_openid_configuration_alias_is_the_same_document(h: Harness) -> None:
    a = h.route(h.request("GET", AS_PATH))
    b = h.route(h.request("GET", "/.well-known/openid-configuration"))
    assert a.body == b.body


def test_md_02_lists_every_endpoint_and_capability(h: Harness) -> None:
    body = h.route(h.request("GET", AS_PATH)).json()
    assert body["authorization_endpoint"] == ISSUER + "/authorize"
    assert body["token_endpoint"] == ISSUER + "/token"
    assert body["registration_endpoint"] == ISSUER + "/register"
    assert body["revocation_endpoint"] == ISSUER + "/revoke"
    assert body["introspection_endpoint"] == ISSUER + "/introspect"
    assert body["jwks_uri"] == ISSUER + "/jwks.json"
    assert body["scopes_supported"] == list(h.config.scopes_supported)
    assert body["response_types_supported"] == ["code"]
    assert body["response_modes_supported"] == ["query"]
    assert body["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "client_secret_post"]
    assert body["revocation_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "client_secret_post"]
    assert body["introspection_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    assert body["client_id_metadata_document_supported"] is True
    assert "service_documentation" not in body


def test_az_08_metadata_announces_the_iss_parameter(h: Harness) -> None:
    body = h.route(h.request("GET", AS_PATH)).json()
    assert body["authorization_response_iss_parameter_supported"] is True


def test_md_02_advertised_endpoints_are_routed() -> None:
    paths = Paths(
        authorization="/oauth/authorize",
        token="/oauth/token",
        registration="/oauth/register",
        revocation="/oauth/revoke",
        introspection="/oauth/introspect",
        jwks="/oauth/keys",
    )
    h = Harness(make_config(issuer="https://as.example.com/t", paths=paths))
    body = h.route(h.request("GET", AS_PATH + "/t")).json()
    for member in ("registration_endpoint", "revocation_endpoint", "introspection_endpoint"):
        path = urlsplit(body[member]).path
        assert path.startswith("/t/oauth/")
        resp = h.route(h.request("OPTIONS", path))
        assert resp.status == 204, member
    assert h.route(h.request("GET", urlsplit(body["jwks_uri"]).path)).status == 200


def test_md_02_closed_registration_is_not_advertised() -> None:
    h = Harness(make_config(registration=RegistrationPolicy(mode="closed")))
    body = h.route(h.request("GET", AS_PATH)).json()
    assert "registration_endpoint" not in body


def test_md_02_optional_members_follow_configuration() -> None:
    h = Harness(make_config(client_id_metadata_documents=False, service_documentation="https://docs.example.com"))
    body = metadata.authorization_server_metadata(h.config)
    assert body["client_id_metadata_document_supported"] is False
    assert body["service_documentation"] == "https://docs.example.com"


def test_md_02_metadata_is_cacheable_briefly_and_writes_nothing(h: Harness) -> None:
    resp, effects = h.trace(metadata.handle(h.ctx(), h.request("GET", AS_PATH)))
    assert resp.header("Cache-Control") == "public, max-age=300"
    assert resp.header("Content-Type") == "application/json"
    assert effects == []


# -- MD-03 ------------------------------------------------------------------------------------


def test_md_03_protected_resource_metadata(h: Harness) -> None:
    resp = get(h, "/.well-known/oauth-protected-resource/mcp", "mcp.example.com")
    assert resp.status == 200
    assert resp.json() == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": [s for s, _ in h.config.resources[0].scopes],
        "bearer_methods_supported": ["header"],
        "resource_name": "Example MCP",
    }
    assert resp.header("Cache-Control") == "public, max-age=300"


def test_md_03_resources_sharing_a_path_are_told_apart_by_host(h: Harness) -> None:
    path = "/.well-known/oauth-protected-resource/mcp"
    assert get(h, path, "other.example.com").json()["resource"] == OTHER_RESOURCE
    assert get(h, path, "mcp.example.com:443").json()["resource"] == RESOURCE
    assert get(h, path, "MCP.example.com").json()["resource"] == RESOURCE
    assert get(h, path, "elsewhere.example.com").status == 404


def test_md_03_each_resource_at_its_metadata_url() -> None:
    resources = [
        ProtectedResource("https://mcp.example.com", name=""),
        ProtectedResource("https://mcp.example.com/a/b/", scopes={"files:read": "Read files"}, default_scopes=()),
        ProtectedResource("HTTPS://MCP.Example.com:443/c"),
    ]
    h = Harness(make_config(resources=resources))
    for resource in h.config.resources:
        path = urlsplit(metadata_url(resource.uri)).path
        resp = get(h, path, "mcp.example.com")
        assert resp.status == 200, path
        body = resp.json()
        assert body["resource"] == resource.uri
        assert body["scopes_supported"] == list(resource.scope_names)
    root = get(h, "/.well-known/oauth-protected-resource").json()
    assert root["resource"] == "https://mcp.example.com"
    assert "resource_name" not in root
    assert get(h, "/.well-known/oauth-protected-resource/a/b").json()["resource"] == "https://mcp.example.com/a/b"
    assert get(h, "/.well-known/oauth-protected-resource/c").json()["resource"] == "https://mcp.example.com/c"
    assert get(h, "/.well-known/oauth-protected-resource/a").status == 404


def test_md_03_resources_differing_in_their_query_are_told_apart_by_it() -> None:
    """RFC 9728 §3.1: the metadata URL keeps the resource's query, so two resources on one host
    and path differing only there each answer at their own URL (and no other query is guessed)."""
    tenants = ("https://mcp.example.com/mcp?tenant=a", "https://mcp.example.com/mcp?tenant=b%20c")
    h = Harness(make_config(resources=[ProtectedResource(uri) for uri in tenants]))
    for resource in h.config.resources:
        parts = urlsplit(metadata_url(resource.uri))
        query = parse_qsl(parts.query, keep_blank_values=True)
        resp = h.route(h.request("GET", parts.path, query=query, headers=[("Host", "mcp.example.com")]))
        assert isinstance(resp, Response)
        assert resp.status == 200 and resp.json()["resource"] == resource.uri
    for other in ("", "tenant=c", "tenant=a&tenant=b%20c"):
        query = parse_qsl(other, keep_blank_values=True)
        resp = h.route(h.request("GET", parts.path, query=query, headers=[("Host", "mcp.example.com")]))
        assert isinstance(resp, Response) and resp.status == 404, other


def test_md_03_a_query_holding_an_escape_that_is_not_utf8_finds_its_resource() -> None:
    """The resource's query is read as the adapters read a request's (``%FF`` kept as a lone
    surrogate, :func:`kavach.server.incoming`), so a metadata URL whose query is not UTF-8 still
    finds the resource it was made from, and only that one."""
    from kavach.server import incoming

    tenants = ("https://mcp.example.com/mcp?tenant=%FF", "https://mcp.example.com/mcp?tenant=%FE")
    h = Harness(make_config(resources=[ProtectedResource(uri) for uri in tenants]))
    for resource in h.config.resources:
        parts = urlsplit(metadata_url(resource.uri))
        req = incoming("GET", parts.path, parts.query, [("Host", "mcp.example.com")], b"", None)
        resp = h.route(req)
        assert isinstance(resp, Response)
        assert resp.status == 200 and resp.json()["resource"] == resource.uri


def test_md_03_single_resource_needs_no_host() -> None:
    h = Harness(make_config(resources=[ProtectedResource(RESOURCE)]))
    resp = get(h, "/.well-known/oauth-protected-resource/mcp")
    assert resp.json()["resource"] == RESOURCE


def test_md_03_head_has_headers_and_no_content(h: Harness) -> None:
    path = "/.well-known/oauth-protected-resource/mcp"
    resp = h.route(h.request("HEAD", path, headers=[("Host", "mcp.example.com")]))
    assert resp.status == 200
    assert resp.body == b""
    assert resp.header("Content-Type") == "application/json"
