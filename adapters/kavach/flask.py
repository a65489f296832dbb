"""Flask: mount the authorization server, guard views. Translation only.

    server = AuthorizationServer(config, store, users=users)
    mount(app, server)                                   # every advertised path, issuer path included

    @app.post("/mcp")
    @guarded(server, "https://example.com/mcp")          # RS-01..RS-05, scope from the JSON-RPC method
    def mcp():
        principal = flask.g.kavach_principal              # kavach_core.guard.Principal
        ...

or, for a set of paths at once, ``protect(app, server, resource, paths={"/mcp"})`` (a
``before_request`` hook). The verified principal is ``flask.g.kavach_principal`` (also
:func:`current_principal`), and the ``Authorization`` header is removed from the request before
the view runs, so it cannot be forwarded upstream (RS-04). The kavach routes live in a blueprint
whose error handlers answer JSON, so no debug page or stack trace reaches a client (GN-03).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any, TypeVar, cast

import flask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from kavach_core.guard import Principal
from kavach_core.http import HttpRequest, Response, json_response
from kavach_core.resource_indicators import PRM_WELL_KNOWN, resource_path

from .server import TOO_LARGE, AuthorizationServer, failure_response, incoming

Required = Callable[[HttpRequest], "tuple[str, ...] | Response"]
View = TypeVar("View", bound=Callable[..., Any])

MAX_BODY = 4 * 1024 * 1024
PRINCIPAL = "kavach_principal"
"""The attribute of :data:`flask.g` holding the verified :class:`~kavach_core.guard.Principal`."""

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""Every kavach route takes every method, so the core answers 405 and CORS preflights itself."""


class _Plain(flask.Response):
    default_mimetype = None  # no Content-Type unless the core set one (a 204 preflight, a 303)


def _outgoing(response: Response) -> flask.Response:
    out = _Plain(response.body, status=response.status, headers=list(response.headers))
    length = response.header("content-length")
    if length is not None:  # a HEAD's, the GET's length: Werkzeug set its own from the empty body
        out.headers["Content-Length"] = length
    return out


def _translate(body: bytes) -> HttpRequest:
    r = flask.request
    return incoming(r.method, r.path, r.query_string, r.headers.items(), body, r.remote_addr)


def _body() -> bytes | None:
    """The request body, or ``None`` when it is larger than :data:`MAX_BODY`; cached for the view."""
    r = flask.request
    if r.max_content_length is None or r.max_content_length > MAX_BODY:
        r.max_content_length = MAX_BODY
    try:
        return r.get_data(cache=True)
    except RequestEntityTooLarge:
        return None


def _too_large() -> flask.Response:
    return _outgoing(TOO_LARGE)


def mount(app: flask.Flask, server: AuthorizationServer, *, name: str = "kavach") -> None:
    """Add every path the authorization server answers (metadata, endpoints, sign-in and consent)."""
    blueprint = flask.Blueprint(name, __name__)

    def answer() -> flask.Response:
        body = _body()
        return _too_large() if body is None else _outgoing(server.handle(_translate(body)))

    for path in server.paths():
        blueprint.add_url_rule(
            path, "answer", answer, methods=list(METHODS), provide_automatic_options=False, strict_slashes=False
        )
    blueprint.register_error_handler(Exception, _on_error)
    app.register_blueprint(blueprint)


def _on_error(exc: Exception) -> flask.Response:
    """GN-03: an HTTP error keeps its status as JSON; anything else is logged, never shown."""
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        return _outgoing(json_response(exc.code, {"error": "invalid_request"}, no_store=True))
    return _outgoing(failure_response(exc))


def _check(server: AuthorizationServer, resource: str, required: Required) -> flask.Response | None:
    """Verify the caller; on success set :data:`flask.g` and drop the ``Authorization`` header."""
    try:
        body = _body()
        if body is None:
            return _too_large()
        req = _translate(body)
        need = required(req)
        outcome = need if isinstance(need, Response) else server.guard(resource, req, need)
    except Exception as exc:
        outcome = failure_response(exc)
    if isinstance(outcome, Response):
        return _outgoing(outcome)
    setattr(flask.g, PRINCIPAL, outcome)
    flask.request.environ.pop("HTTP_AUTHORIZATION", None)  # RS-04: never passed on
    return None


def guarded(server: AuthorizationServer, resource: str, *, required: Required | None = None) -> Callable[[View], View]:
    """Decorate a view so it runs only for a valid access token for ``resource`` (RS-01..RS-05).

    ``required(request)`` gives the scopes a request needs, or a response to send instead
    (default: the scopes of its JSON-RPC method(s); a batch needs every one).
    """
    canonical = server.protected(resource)
    need = required or server.required_scopes

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            refused = _check(server, canonical, need)
            return refused if refused is not None else view(*args, **kwargs)

        return cast(View, wrapper)

    return decorate


def protect(
    app: flask.Flask,
    server: AuthorizationServer,
    resource: str,
    *,
    paths: Iterable[str] | None = None,
    required: Required | None = None,
) -> None:
    """Guard every request to ``paths`` (default: the resource's own path) with a ``before_request`` hook.

    The resource's metadata (MD-03, CORS per MD-04) is answered too when :func:`mount` did not
    already add it, so a resource whose authorization server runs elsewhere needs only this.
    """
    canonical = server.protected(resource)
    guarded_paths = frozenset(paths) if paths is not None else frozenset({resource_path(canonical) or "/"})
    need = required or server.required_scopes
    metadata_path = PRM_WELL_KNOWN + resource_path(canonical)
    if not any(rule.rule == metadata_path for rule in app.url_map.iter_rules()):
        blueprint = flask.Blueprint(f"kavach_resource_{len(app.blueprints)}", __name__)

        def metadata() -> flask.Response:
            return _outgoing(server.handle(_translate(b"")))

        blueprint.add_url_rule(metadata_path, "metadata", metadata, methods=list(METHODS),
                               provide_automatic_options=False)
        blueprint.register_error_handler(Exception, _on_error)
        app.register_blueprint(blueprint)

    def hook() -> flask.Response | None:
        return _check(server, canonical, need) if flask.request.path in guarded_paths else None

    app.before_request(hook)


def current_principal() -> Principal:
    """The verified caller of the current request (inside a guarded view)."""
    return cast(Principal, getattr(flask.g, PRINCIPAL))
