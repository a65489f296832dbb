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
the view runs (``request.headers``, ``request.environ`` and the parsed ``request.authorization``
alike), so it cannot be forwarded upstream (RS-04). The kavach routes live in a blueprint whose
error handlers answer JSON, so no debug page or stack trace reaches a client (GN-03), and take
every method, so the core answers 405 (with ``Allow``) and CORS preflights itself.

A body larger than :data:`MAX_BODY` (or the app's ``MAX_CONTENT_LENGTH``, when smaller) is
answered 413 before the core or the guard sees it, whether it came with ``Content-Length`` or
chunked; the view is handed exactly the bytes the guard judged. Paths are the ones the client
asked for: behind a WSGI prefix (``SCRIPT_NAME``) they include it.

Flask is synchronous: :func:`mount` refuses an ``async`` ``identify`` hook.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Iterable
from functools import wraps
from typing import IO, Any, TypeVar, cast

import flask
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.routing import Rule
from werkzeug.wsgi import LimitedStream

from kavach_core.guard import Principal
from kavach_core.http import HttpRequest, Response, json_response
from kavach_core.resource_indicators import PRM_WELL_KNOWN, resource_path
from kavach_core.router import cors_headers

from .server import (
    FORM_TYPES,
    PARSED_AWAY,
    TOO_LARGE,
    AuthorizationServer,
    bare_path,
    failure_response,
    guarded_body_problem,
    guarded_paths,
    incoming,
)

Required = Callable[[HttpRequest], "tuple[str, ...] | Response"]
View = TypeVar("View", bound=Callable[..., Any])

MAX_BODY = 4 * 1024 * 1024
PRINCIPAL = "kavach_principal"
"""The attribute of :data:`flask.g` holding the verified :class:`~kavach_core.guard.Principal`."""

_READ = 64 * 1024


class _Plain(flask.Response):
    default_mimetype = None  # no Content-Type unless the core set one (a 204 preflight, a 303)


def _outgoing(response: Response) -> flask.Response:
    out = _Plain(response.body, status=response.status, headers=list(response.headers))
    length = response.header("content-length")
    if length is not None:  # a HEAD's, the GET's length: Werkzeug set its own from the empty body
        out.headers["Content-Length"] = length
    return out


def _full_path() -> str:
    """The path the client asked for: the WSGI prefix (``SCRIPT_NAME``) and the app's own path."""
    r = flask.request
    return r.script_root + r.path


def _translate(body: bytes) -> HttpRequest:
    r = flask.request
    return incoming(r.method, _full_path(), r.query_string, r.headers.items(), body, r.remote_addr)


def _read_at_most(stream: IO[bytes], count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        try:
            piece = stream.read(min(_READ, count - len(out)))
        except (OSError, ValueError) as exc:  # a broken chunk, a dropped connection
            raise ClientDisconnected() from exc
        if not piece:
            break
        out += piece
    return bytes(out)


def _body() -> bytes | None:
    """The request body, or ``None`` when it is larger than the limit; cached for the view.

    Werkzeug stops a chunked body at ``max_content_length`` without an error, so a chunked body
    is read here from the server's (terminated) input, one byte past the limit: that byte
    arriving means 413. The bytes read become the request's input, so every way the view reads
    the body (``get_data``, ``json``, ``form``, ``stream``, ``input_stream``) gives the bytes the
    guard judged, never a remainder it did not see.
    """
    r = _request()
    limit = MAX_BODY if r.max_content_length is None else min(r.max_content_length, MAX_BODY)
    cached = getattr(r, "_cached_data", None)
    if cached is not None:  # read before (an earlier hook): judge what the view will be given
        stream = vars(r).get("stream")
        cut = r.content_length is None and isinstance(stream, LimitedStream) and stream.is_exhausted
        return None if cut or len(cached) > limit else _replayed(r, cast(bytes, cached))
    length = r.content_length
    if length is not None and length > limit:
        return None
    if length is None and "wsgi.input_terminated" in r.environ:  # chunked: the server ends the stream
        data = _read_at_most(r.environ["wsgi.input"], limit + 1)
        if len(data) > limit:
            return None
        _replayed(r, data)
    r.max_content_length = limit
    try:
        return _replayed(r, r.get_data(cache=True))
    except RequestEntityTooLarge:
        return None


def _request() -> flask.Request:
    return cast(flask.Request, flask.request._get_current_object())  # type: ignore[attr-defined]


def _replayed(r: flask.Request, data: bytes) -> bytes:
    """``data``, made the request's input from now on: ``request.stream`` (``get_data``, ``form``)
    and the server's own input (``request.input_stream``), which would otherwise go on with
    whatever the client sent after the body's declared length."""
    r.environ["wsgi.input"] = io.BytesIO(data)
    r.stream = io.BytesIO(data)
    return data


def _parsed_away(r: flask.Request) -> bool:
    """Whether something before the guard parsed the body as a form (``request.form``, ``files``),
    which consumes it and keeps no copy: the view is given a form the guard cannot see."""
    return getattr(r, "_cached_data", None) is None and "form" in vars(r) and r.mimetype in FORM_TYPES


def _too_large() -> flask.Response:
    return _outgoing(TOO_LARGE)


def _any_method(
    app: flask.Flask, blueprint: flask.Blueprint, endpoint: str, view: Callable[[], Any], paths: Iterable[str]
) -> None:
    """Route ``paths`` to ``view`` for every method (a Flask rule lists its methods; a Werkzeug
    rule without any takes them all), under ``blueprint`` so its JSON error handler applies."""
    name = f"{blueprint.name}.{endpoint}"
    app.view_functions[name] = view
    for path in paths:
        app.url_map.add(Rule(path, endpoint=name, methods=None, strict_slashes=False))


def _is_async(fn: Callable[..., Any]) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def mount(app: flask.Flask, server: AuthorizationServer, *, name: str = "kavach") -> None:
    """Add every path the authorization server answers (metadata, endpoints, sign-in and consent)."""
    identify = getattr(server, "identify", None)
    if identify is not None and _is_async(identify):
        raise TypeError(
            f"identify={identify!r} is async, and Flask calls it synchronously: give a plain"
            " (sync) function, or use the Starlette or aiohttp adapter"
        )
    blueprint = flask.Blueprint(name, __name__)
    blueprint.register_error_handler(Exception, _on_error)
    app.register_blueprint(blueprint)

    def answer() -> flask.Response:
        body = _body()
        if body is None:  # answered as the endpoints answer: with their CORS headers (MD-04)
            return _outgoing(TOO_LARGE.with_headers(cors_headers(server.config, flask.request.path)))
        return _outgoing(server.handle(_translate(body)))

    _any_method(app, blueprint, "answer", answer, server.paths())


def _on_error(exc: Exception) -> flask.Response:
    """GN-03: an HTTP error keeps its status as JSON; anything else is logged, never shown."""
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        return _outgoing(json_response(exc.code, {"error": "invalid_request"}, no_store=True))
    return _outgoing(failure_response(exc))


def _remove_authorization() -> None:
    """RS-04: the token leaves the request, including what Werkzeug parsed from it already."""
    r = _request()
    r.environ.pop("HTTP_AUTHORIZATION", None)
    vars(r).pop("authorization", None)  # a cached_property: an earlier hook may have read it
    if r.authorization is not None or "Authorization" in r.headers:
        raise RuntimeError(
            "kavach could not remove the Authorization header from the Flask request, so the view"
            " is not called (RS-04); this Flask version may need a kavach update"
        )


def _check(server: AuthorizationServer, resource: str, required: Required | None) -> flask.Response | None:
    """Verify the caller; on success set :data:`flask.g` and drop the ``Authorization`` header.
    Without ``required``, the scopes of the body's JSON-RPC methods (:meth:`AuthorizationServer.guard_body`)."""
    try:
        if required is None and _parsed_away(_request()):
            return _outgoing(PARSED_AWAY)
        body = _body()
        if body is None:
            return _too_large()
        req = _translate(body)
        if required is None:
            codings, types = req.header_values("content-encoding"), req.header_values("content-type")
            refused = guarded_body_problem(codings, types)
            outcome = refused or server.guard_body(resource, req.header_values("authorization"), body)
        else:
            need = required(req)
            outcome = need if isinstance(need, Response) else server.guard(resource, req, need)
        if not isinstance(outcome, Response):
            _remove_authorization()
    except Exception as exc:
        return _on_error(exc)
    if isinstance(outcome, Response):
        return _outgoing(outcome)
    setattr(flask.g, PRINCIPAL, outcome)
    return None


def _required(required: Required | None) -> Required | None:
    if required is not None and not callable(required):
        raise TypeError(
            f"required= takes a function of the request giving its scopes (or a response), not {required!r}"
        )
    return required


def guarded(server: AuthorizationServer, resource: str, *, required: Required | None = None) -> Callable[[View], View]:
    """Decorate a view so it runs only for a valid access token for ``resource`` (RS-01..RS-05).

    ``required(request)`` gives the scopes a request needs, or a response to send instead
    (default: the scopes of its JSON-RPC method(s); a batch needs every one).
    """
    canonical = server.protected(resource)
    need = _required(required)

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

    A request is guarded when the path the client asked for (WSGI prefix included) or the app's
    own path (without it) is one of ``paths``, trailing slashes aside: an app mounted under a
    prefix is guarded whichever way its paths are written.

    The resource's metadata (MD-03, CORS per MD-04) is answered too when :func:`mount` did not
    already add it, so a resource whose authorization server runs elsewhere needs only this, as
    long as the app answers the origin's root: the metadata path is the root's
    (``/.well-known/oauth-protected-resource`` + the resource's path, RFC 9728 §3.1), which an app
    behind a WSGI prefix never receives; serve it from the outermost app then.
    """
    canonical = server.protected(resource)
    covered = guarded_paths(paths, canonical)
    need = _required(required)
    metadata_path = PRM_WELL_KNOWN + resource_path(canonical)
    if not any(rule.rule == metadata_path for rule in app.url_map.iter_rules()):
        blueprint = flask.Blueprint(f"kavach_resource_{len(app.blueprints)}", __name__)
        blueprint.register_error_handler(Exception, _on_error)
        app.register_blueprint(blueprint)

        def metadata() -> flask.Response:
            return _outgoing(server.handle(_translate(b"")))

        _any_method(app, blueprint, "metadata", metadata, (metadata_path,))

    def hook() -> flask.Response | None:
        r = flask.request
        if bare_path(_full_path()) in covered or bare_path(r.path) in covered:
            return _check(server, canonical, need)
        return None

    app.before_request(hook)


def current_principal() -> Principal:
    """The verified caller of the current request (inside a guarded view)."""
    return cast(Principal, getattr(flask.g, PRINCIPAL))
