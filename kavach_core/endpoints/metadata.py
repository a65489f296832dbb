"""Discovery documents: authorization server metadata (RFC 8414; MD-01, MD-02, AZ-08) and
protected resource metadata (RFC 9728; MD-03).

Both are public, identical for every caller and change only with the configuration, so they
may be cached briefly: ``Cache-Control: public, max-age=300`` (RFC 8414 §3.2 and RFC 9728 §3.2
say nothing against caching; five minutes bounds how long a configuration change takes to be
seen). The same RFC 8414 document also answers OpenID Connect discovery, which MCP clients try
(MCP 2025-11-25 "Authorization Server Metadata Discovery"); kavachOS is not an OpenID Provider
and does not pretend to be one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config, ProtectedResource
from ..context import Context
from ..drivers import Flow
from ..http import HttpRequest, Response, json_response
from .authorize import RESPONSE_MODE

CACHE_CONTROL = ("Cache-Control", "public, max-age=300")

TOKEN_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]
REVOCATION_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]
"""RFC 7009 §5: public clients may revoke their own tokens."""
INTROSPECTION_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
"""Only confidential clients may introspect (see :mod:`kavach_core.endpoints.introspection`)."""


def authorization_server_metadata(config: Config) -> dict[str, Any]:
    """The RFC 8414 §2 document. ``issuer`` is the configured string, byte for byte (MD-01)."""
    doc: dict[str, Any] = {
        "issuer": config.issuer,
        "authorization_endpoint": config.endpoint("authorization"),
        "token_endpoint": config.endpoint("token"),
        "jwks_uri": config.endpoint("jwks"),
    }
    if config.registration.mode != "closed":
        doc["registration_endpoint"] = config.endpoint("registration")
    doc.update(
        {
            "scopes_supported": list(config.scopes_supported),
            "response_types_supported": ["code"],
            "response_modes_supported": [RESPONSE_MODE],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
            "revocation_endpoint": config.endpoint("revocation"),
            "revocation_endpoint_auth_methods_supported": list(REVOCATION_AUTH_METHODS),
            "introspection_endpoint": config.endpoint("introspection"),
            "introspection_endpoint_auth_methods_supported": list(INTROSPECTION_AUTH_METHODS),
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": config.client_id_metadata_documents,
        }
    )
    if config.service_documentation:
        doc["service_documentation"] = config.service_documentation
    return doc


def protected_resource_metadata(config: Config, resource: ProtectedResource) -> dict[str, Any]:
    """The RFC 9728 §2 document of one resource: ``resource`` is its canonical URI (MD-03, RS-05)."""
    doc: dict[str, Any] = {
        "resource": resource.uri,
        "authorization_servers": [config.issuer],
        "scopes_supported": list(resource.scope_names),
        "bearer_methods_supported": ["header"],
    }
    if resource.name:
        doc["resource_name"] = resource.name
    return doc


def handle(ctx: Context, req: HttpRequest) -> Flow[Response]:
    """``GET`` authorization server metadata (RFC 8414 §3). Yields no effect."""
    yield from ()
    return json_response(200, authorization_server_metadata(ctx.config), headers=(CACHE_CONTROL,))


def resource_handler(resource: ProtectedResource) -> Callable[[Context, HttpRequest], Flow[Response]]:
    """A ``GET`` handler serving the protected resource metadata of ``resource`` (RFC 9728 §3)."""

    def handle_resource(ctx: Context, req: HttpRequest) -> Flow[Response]:
        yield from ()
        return json_response(200, protected_resource_metadata(ctx.config, resource), headers=(CACHE_CONTROL,))

    return handle_resource
