"""Routing: which endpoint answers a request, which methods it takes, and CORS.

Paths (all exact; an adapter passes the full request path):

- RFC 8414 §3.1 authorization server metadata: ``/.well-known/oauth-authorization-server``
  with the issuer's path inserted after it (MD-01);
- the same document as OpenID Connect discovery, at ``/.well-known/openid-configuration`` with
  the issuer's path inserted after it and, for an issuer with a path, also appended after the
  issuer's path (``/tenant/.well-known/openid-configuration``): the three locations MCP
  clients try (MCP 2025-11-25, "Authorization Server Metadata Discovery");
- RFC 9728 §3.1 protected resource metadata at ``/.well-known/oauth-protected-resource`` with
  each resource's path inserted after it (the bare path for a resource at the root; MD-03).
  When resources on different hosts share a path, the ``Host`` header picks one, and among
  resources that differ only in their query, the request's query;
- the endpoints at the paths of ``config.endpoint(name)``.

Anything else is 404 ``{"error": "not_found"}``; a method an endpoint does not take is 405 with
``Allow``. Documents (metadata, JWKS) answer ``HEAD`` like ``GET`` without content, their
``Content-Length`` the ``GET``'s (RFC 9110 §9.3.2, §8.6). The authorization endpoint takes no
``HEAD``: its ``GET`` starts an authorization (a stored request), which ``HEAD`` must not do.

Every path except the authorization endpoint answers CORS (MD-04): an ``OPTIONS``
preflight gets 204 with ``Access-Control-Allow-*``, and every actual response carries
``Access-Control-Allow-Origin: *`` (no credentials are ever allowed, so no cookie is ever sent
cross-origin). The authorization endpoint is a page the person navigates to and never gets
CORS headers (AZ-10). That rule lives in :func:`route`, and in :func:`cors_headers` for the
answers an adapter gives when the flow itself fails (a store outage).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import attrs

from .config import Config, ProtectedResource
from .context import Context
from .drivers import Flow
from .endpoints import authorize, introspection, jwks, metadata, registration, revocation, token
from .errors import OAuthError
from .http import HttpRequest, Response, error_page, error_response, json_response
from .memo import Memo
from .messages.authorization import ConsentRequired
from .params import split_form
from .resource_indicators import PRM_WELL_KNOWN

AS_WELL_KNOWN = "/.well-known/oauth-authorization-server"
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"

Outcome = Response | ConsentRequired
Handler = Callable[[Context, HttpRequest], Flow[Outcome]]

CORS_ALLOW_HEADERS = "Authorization, Content-Type, MCP-Protocol-Version"
CORS_MAX_AGE = "7200"
"""Seconds a browser may cache a preflight (Chromium caps it at two hours)."""


@attrs.frozen
class Route:
    """An endpoint and the methods it takes. ``navigated``: a person's browser comes here (the
    authorization endpoint), so it answers no CORS (MD-04) and its errors are pages (AZ-02)."""

    handler: Handler
    methods: tuple[str, ...]
    navigated: bool = False

    @property
    def cors(self) -> bool:
        return not self.navigated

    @property
    def allow(self) -> str:
        methods = (*self.methods, "OPTIONS") if self.cors else self.methods
        return ", ".join(methods)


# -- protected resource metadata -----------------------------------------------------------------


def _resource_metadata(resources: tuple[ProtectedResource, ...]) -> Handler:
    def handle(ctx: Context, req: HttpRequest) -> Flow[Outcome]:
        resource = _pick(resources, req)
        if resource is None:
            return _not_found()
        return (yield from metadata.resource_handler(resource)(ctx, req))

    return handle


def _pick(resources: tuple[ProtectedResource, ...], req: HttpRequest) -> ProtectedResource | None:
    """The resource at this path; when several share it, the one on the request's host, and
    when several share that too (they differ in their query), the one whose query the request's
    repeats (RFC 9728 §3.1: the metadata URL keeps the resource identifier's query), both read
    alike (:func:`~kavach_core.params.split_form`, escapes that are not UTF-8 kept as the adapters
    keep them)."""
    if len(resources) == 1:
        return resources[0]
    wanted = _normal_host(req.header("host") or "")
    on_host = [r for r in resources if _normal_host(urlsplit(r.uri).netloc) == wanted]
    if len(on_host) == 1:
        return on_host[0]
    for resource in on_host:
        if tuple(split_form(urlsplit(resource.uri).query, errors="surrogateescape")) == req.query:
            return resource
    return None


def _normal_host(host: str) -> str:
    host = host.strip().lower()
    for suffix in (":443", ":80"):
        if host.endswith(suffix):
            return host[: -len(suffix)]
    return host


# -- the table ---------------------------------------------------------------------------------


_tables: Memo[int, tuple[Config, dict[str, Route]]] = Memo(16)


def _table(config: Config) -> dict[str, Route]:
    """:func:`routes` built once per configuration object (a frozen value; the entry holds it,
    so its ``id`` cannot be reused while remembered). Callers must not change the table."""
    entry = _tables.get(id(config))
    if entry is not None and entry[0] is config:
        return entry[1]
    return _tables.put(id(config), (config, routes(config)))[1]


def routes(config: Config) -> dict[str, Route]:
    """Every path this server answers, and how (the table is small and cheap to build). Each route
    holds its endpoint's ``handle`` as it was when the table was built, and the table is kept per
    configuration (:func:`_table`)."""
    table: dict[str, Route] = {}
    issuer_path = config.issuer_path
    as_metadata = Route(metadata.handle, ("GET", "HEAD"))
    table[AS_WELL_KNOWN + issuer_path] = as_metadata
    table[OIDC_WELL_KNOWN + issuer_path] = as_metadata
    table[issuer_path + OIDC_WELL_KNOWN] = as_metadata

    by_path: dict[str, list[ProtectedResource]] = {}
    for resource in config.resources:
        by_path.setdefault(PRM_WELL_KNOWN + resource.path, []).append(resource)
    for path, resources in by_path.items():
        table[path] = Route(_resource_metadata(tuple(resources)), ("GET", "HEAD"))

    def path_of(name: str) -> str:
        return urlsplit(config.endpoint(name)).path

    table[path_of("authorization")] = Route(authorize.handle, ("GET", "POST"), navigated=True)
    table[path_of("token")] = Route(token.handle, ("POST",))
    table[path_of("jwks")] = Route(jwks.handle, ("GET", "HEAD"))
    table[path_of("revocation")] = Route(revocation.handle, ("POST",))
    table[path_of("introspection")] = Route(introspection.handle, ("POST",))
    if config.registration.mode != "closed":
        table[path_of("registration")] = Route(registration.handle, ("POST",))
    return table


# -- routing -----------------------------------------------------------------------------------


def _not_found() -> Response:
    return json_response(404, {"error": "not_found"})


def _preflight(route: Route) -> Response:
    """A CORS preflight answer (Fetch standard, CORS protocol; MD-04)."""
    headers = (
        ("Allow", route.allow),
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", route.allow),
        ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
        ("Access-Control-Max-Age", CORS_MAX_AGE),
    )
    return Response(204, headers, b"")


def _dispatch(ctx: Context, req: HttpRequest, route: Route) -> Flow[Outcome]:
    if req.method not in route.methods:
        err = OAuthError("invalid_request", f"use {' or '.join(route.methods)}", status=405)
        allow = (("Allow", route.allow),)
        if route.navigated:
            return error_page(405, err.error, err.description).with_headers(allow)
        return error_response(err, headers=allow)
    try:
        return (yield from route.handler(ctx, req))
    except OAuthError as err:
        # Endpoints answer their own errors; this is the last line of GN-03.
        return error_response(err)


_ANY_ORIGIN = (("Access-Control-Allow-Origin", "*"),)


def cors_headers(config: Config, path: str) -> tuple[tuple[str, str], ...]:
    """The CORS header an answer on ``path`` carries (MD-04): for a failure an adapter answers
    itself (503, 500), so a browser client reads it instead of a network error."""
    target = _table(config).get(path)
    return _ANY_ORIGIN if target is not None and target.cors else ()


def route(ctx: Context, req: HttpRequest) -> Flow[Response | ConsentRequired]:
    """Answer ``req``: find its endpoint, check the method, apply CORS (MD-04)."""
    target = _table(ctx.config).get(req.path)
    if target is None:
        return _not_found()
    if target.cors and req.method == "OPTIONS":
        return _preflight(target)
    outcome = yield from _dispatch(ctx, req, target)
    if isinstance(outcome, Response):
        if req.method == "HEAD":  # RFC 9110 §9.3.2: the GET answer's headers, no content; §8.6: its length
            outcome = attrs.evolve(outcome, body=b"").with_headers((("Content-Length", str(len(outcome.body))),))
        if target.cors:
            outcome = outcome.with_headers(_ANY_ORIGIN)
    return outcome
