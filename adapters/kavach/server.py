"""The composition every framework adapter shares: configuration, store, clock, entropy, users.

:class:`AuthorizationServer` answers an :class:`~kavach_core.http.HttpRequest` with a
:class:`~kavach_core.http.Response`, synchronously (:meth:`~AuthorizationServer.handle`) or on an
event loop (:meth:`~AuthorizationServer.ahandle`). The protocol is the core's router; this module
adds only the person's part of the authorization step: sign in (built-in local users or the
application's own ``identify`` hook), then the consent page, whose form posts back here and ends
in the core's ``approve`` or ``deny``.

Framework modules build the request with :func:`incoming` (which also sets the client address
from the socket peer) and translate the response; nothing else.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, quote_from_bytes

import attrs

from kavach_core import effects as fx
from kavach_core.config import MAX_RATE_LIMIT, MAX_RATE_WINDOW, Config, is_whole_number
from kavach_core.context import Context
from kavach_core.drivers import Flow, StoreUnavailable, arun, nonblocking, run
from kavach_core.endpoints import authorize
from kavach_core.errors import OAuthError
from kavach_core.guard import Principal, authenticate_values, scope_challenge
from kavach_core.http import CLIENT_ADDRESS_HEADER, HttpRequest, Response, client_address, json_response
from kavach_core.keys import KEYRING_TTL, KeyRing
from kavach_core.mcp_methods import DEFAULT_MAP, McpScopeMap
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.params import Params, form_params, split_form
from kavach_core.resource_indicators import canonical_resource, resource_path
from kavach_core.router import cors_headers
from kavach_core.verified_cache import VerifiedCache

from . import pages
from .sessions import Cookies, parse_cookies
from .users import Users, account_name

log = logging.getLogger("kavach")


MAX_QUERY_PAIRS = 1000
_QUERY_OCTETS = bytes(range(0x21, 0x7F))
"""Visible ASCII, left as it is (``%`` escapes included); any other octet is escaped first."""

Router = Callable[[Context, HttpRequest], Flow["Response | ConsentRequired"]]
Identify = Callable[[HttpRequest], "str | Awaitable[str | None] | None"]


def incoming(
    method: str,
    path: str,
    query_string: str | bytes,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    peer: str | None,
) -> HttpRequest:
    """The core's request from a framework's parts.

    The query's escapes are read as UTF-8 (RFC 3986 §2.5), raw non-ASCII octets as if escaped; a
    sequence that is not UTF-8 is kept as lone surrogates, which the core refuses
    (``invalid_request``), so no value (``state`` above all, RFC 6749 §4.1.2) is ever passed on
    altered. Any ``X-Kavach-Client-Address`` the client sent is dropped and replaced by the
    socket peer, so no one can pick the address their rate limit is counted against.
    """
    raw = query_string if isinstance(query_string, bytes) else query_string.encode("utf-8", "surrogateescape")
    # Escaping changes what the split reads only for octets beyond ASCII; the usual query has none.
    escaped = raw.decode("ascii") if raw.isascii() else quote_from_bytes(raw, safe=_QUERY_OCTETS)
    pairs = split_form(escaped, errors="surrogateescape")[:MAX_QUERY_PAIRS]
    kept = [(k, v) for k, v in headers if k.lower() != CLIENT_ADDRESS_HEADER.lower()]
    if peer:
        kept.append((CLIENT_ADDRESS_HEADER, peer))
    return HttpRequest(method.upper(), path, pairs, kept, body)


@attrs.frozen
class LoginLimits:
    """Sign-in limits per fixed ``window`` of seconds (OWASP Authentication Cheat Sheet, "Account
    Lockout"; OWASP ASVS 5.0 §6.1.1).

    ``per_user`` counts sign-in attempts per account: each is counted before its password check,
    and one more than ``per_user`` in the window is refused (429) without a check, so guessing one
    account's password gets at most ``per_user`` checks per window, however many attempts are sent
    at once. A successful sign-in gives its attempt back once its check is done, so successes never
    add up to a lockout (only checks running at the same moment count together). The account is
    the name the password check reaches (:func:`~kavach.users.account_name`: NFKC, stripped,
    case kept), so every spelling of one name shares its count and distinct accounts never do;
    every name no account can have shares one count. ``per_address`` counts every attempt,
    failed or not, per client address.

    The trade-off that remains: someone who knows a username can fail on purpose and so hold that
    user's sign-in off until the window ends. Only the window is lost, never the account, and
    people already signed in stay signed in; the per-user limit is what stops password guessing
    spread over many addresses, so it is kept.

    Each is bounded as ``[registration]``'s limit is (:class:`~kavach_core.config.RegistrationPolicy`):
    the counts by :data:`~kavach_core.config.MAX_RATE_LIMIT`, the window by
    :data:`~kavach_core.config.MAX_RATE_WINDOW` (366 days). Every store keeps a window's end as a
    64-bit number (an SQLite ``INTEGER``, a PostgreSQL ``bigint``, a Redis expiry), so a larger
    window, taken at start, would make every sign-in fail with a 500 instead.
    """

    per_user: int = 10
    per_address: int = 50
    window: int = 900

    def __attrs_post_init__(self) -> None:
        bounds = (("per_user", MAX_RATE_LIMIT), ("per_address", MAX_RATE_LIMIT), ("window", MAX_RATE_WINDOW))
        for name, most in bounds:
            value = getattr(self, name)
            if not is_whole_number(value) or not 1 <= value <= most:
                raise ValueError(f"LoginLimits.{name} must be a whole number between 1 and {most}, not {value!r}")


PASSWORD_THREADS = max(1, os.cpu_count() or 1)
"""How many password checks run at once on event loops (:func:`password_threads`): one per CPU,
since each is CPU work (scrypt, about a tenth of a second) that more threads would only share."""

PASSWORD_QUEUE = max(64, 32 * PASSWORD_THREADS)
"""The most password checks waiting or under way at once on event loops: a few seconds of scrypt
at most. A sign-in beyond them is answered at once, 503 with ``Retry-After``
(:data:`PASSWORDS_BUSY`), instead of queued without end: the limits per address and per account
bound one sender, not a crowd of addresses, and a queue nobody bounds holds every sign-in of
the crowd's victims behind it, and the memory of each waiting request."""

PASSWORDS_BUSY_RETRY = 5
"""``Retry-After`` seconds for a sign-in refused while :data:`PASSWORD_QUEUE` checks are waiting."""

_password_pool: ThreadPoolExecutor | None = None
_password_pool_lock = threading.Lock()
_password_slots = threading.BoundedSemaphore(PASSWORD_QUEUE)


class _Busy:
    """The type of :data:`PASSWORDS_BUSY`."""

    def __repr__(self) -> str:
        return "PASSWORDS_BUSY"


PASSWORDS_BUSY = _Busy()
"""What a password check (a ``hashing`` :class:`Call`) gives on an event loop when
:data:`PASSWORD_QUEUE` checks are already waiting or under way: it was not made."""


def password_threads() -> ThreadPoolExecutor:
    """The threads in which :meth:`AuthorizationServer.ahandle` checks passwords, made on first use.

    Not the event loop's default executor: the store calls of every request (SQLite's, the
    local users' lookups) run in its min(32, CPUs + 4) threads, so a few dozen wrong sign-ins,
    within the per-address limit and needing no account, would hold ``/token``, ``/jwks.json``
    and the guards' revocation checks behind scrypt for seconds. Here sign-ins beyond
    :data:`PASSWORD_THREADS` wait for one another only. One pool per process, shared by every
    server in it, as the CPUs are; its threads end with the interpreter, a check under way being
    finished first. A synchronous server (Flask) checks in the request's own thread instead.
    """
    global _password_pool
    with _password_pool_lock:
        if _password_pool is None:
            _password_pool = ThreadPoolExecutor(PASSWORD_THREADS, thread_name_prefix="kavach-password")
        return _password_pool


@attrs.frozen
class Call(fx.Effect):
    """An adapter-side step (a user lookup, the identify hook), run by the adapter's own driver.

    ``blocking`` calls run in a worker thread under :meth:`AuthorizationServer.ahandle`: a
    ``hashing`` one (a password check) in :func:`password_threads`, any other in the event
    loop's default executor.
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    blocking: bool = True
    hashing: bool = False


@attrs.frozen
class BestEffort(fx.Effect):
    """``effect``, performed if the store can: when it cannot (:class:`StoreUnavailable`) the
    outage is logged and the answer is ``None``. For a step that must not hold up the answer it
    belongs to: signing out clears the browser's cookie even when the store cannot record the end."""

    effect: fx.Effect


def _not_recorded(effect: BestEffort, exc: StoreUnavailable) -> None:
    log.warning("store unavailable, %s not recorded: %s", type(effect.effect).__name__, exc)


class _SyncPerformer:
    def __init__(self, store: Any, fetcher: Any = None) -> None:
        self.store = store
        self.fetcher = fetcher

    def perform(self, effect: fx.Effect) -> Any:
        if isinstance(effect, BestEffort):
            try:
                return self.perform(effect.effect)
            except StoreUnavailable as exc:
                return _not_recorded(effect, exc)
        if isinstance(effect, fx.FetchDocument):
            return _no_fetcher() if self.fetcher is None else self.fetcher.fetch(effect.url)
        if isinstance(effect, Call):
            result = effect.fn(*effect.args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: closed here, not left to warn when collected
                raise TypeError("an async identify hook needs an async adapter")
            return result
        return self.store.perform(effect)


class _AsyncPerformer:
    def __init__(self, store: Any, fetcher: Any = None) -> None:
        self.store = store
        self.fetcher = fetcher
        self._aperform = None if nonblocking(store) else getattr(store, "aperform", None)
        self._inline = nonblocking(store)

    async def aperform(self, effect: fx.Effect) -> Any:
        if isinstance(effect, BestEffort):
            try:
                return await self.aperform(effect.effect)
            except StoreUnavailable as exc:
                return _not_recorded(effect, exc)
        if isinstance(effect, fx.FetchDocument):
            return _no_fetcher() if self.fetcher is None else await self.fetcher.afetch(effect.url)
        if isinstance(effect, Call):
            if effect.hashing:
                return await _in_password_thread(effect.fn, *effect.args)
            if effect.blocking:
                return await asyncio.to_thread(effect.fn, *effect.args)
            result = effect.fn(*effect.args)
            return await result if inspect.isawaitable(result) else result
        if self._aperform is not None:
            return await self._aperform(effect)
        if self._inline:
            return self.store.perform(effect)
        return await asyncio.to_thread(self.store.perform, effect)


async def _in_password_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in :func:`password_threads`, with this task's context variables, as
    :func:`asyncio.to_thread` runs a call in the default executor; :data:`PASSWORDS_BUSY`, with
    nothing run, when :data:`PASSWORD_QUEUE` calls are waiting or under way. A call's place is
    given back when it ends or, never started, is cancelled (its request gone), not when its
    request stops waiting for it: a started check still holds its thread."""
    if not _password_slots.acquire(blocking=False):
        return PASSWORDS_BUSY
    try:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        job = password_threads().submit(call)
    except BaseException:
        _password_slots.release()
        raise
    job.add_done_callback(lambda _: _password_slots.release())
    return await asyncio.wrap_future(job)


def _no_fetcher() -> fx.FetchRefused:
    return fx.FetchRefused("this server is not configured to fetch client metadata documents")


TOO_LARGE = json_response(
    413, {"error": "invalid_request", "error_description": "the request body is too large"}, no_store=True
)
"""What every adapter answers to a body over its limit (RFC 9110 §15.5.14), before the core sees it."""


def bare_path(path: str) -> str:
    """``path`` without trailing slashes, so ``/mcp/`` is guarded with ``/mcp`` (a route or view
    may answer both)."""
    return path.rstrip("/") or "/"


def guarded_paths(paths: Iterable[str] | None, resource: str) -> frozenset[str]:
    """The paths a framework guard covers, as :func:`bare_path` gives them (compare a request's
    bare path): ``paths`` as given (a collection of paths starting with ``/``; a bare string
    would be read as its characters, so it is refused), or the canonical ``resource``'s own path."""
    if paths is None:
        return frozenset({bare_path(resource_path(resource) or "/")})
    if isinstance(paths, str | bytes | bytearray) or not isinstance(paths, Iterable):
        raise TypeError(f"paths= takes a collection of paths, such as paths={{'/mcp'}}, not {paths!r}")
    found = frozenset(paths)
    for path in found:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"paths= takes paths starting with '/', such as '/mcp', not {path!r}")
    if not found:
        raise ValueError("paths= is empty: the guard would cover nothing")
    return frozenset(bare_path(path) for path in found)


THREADED_BODY = 64 * 1024
"""The guards read the JSON-RPC methods of a larger body only for a valid token
(:meth:`AuthorizationServer.guard_body`), on an event loop in a worker thread
(:meth:`AuthorizationServer.abody_scopes`); a usual MCP request is far smaller and stays inline."""

ENCODED_BODY = json_response(
    415,
    {"error": "invalid_request", "error_description": "send the request body without a content coding"},
    no_store=True,
    headers=(("Accept-Encoding", "identity"),),
)


def body_coding_problem(codings: Sequence[str]) -> Response | None:
    """415 for a guarded request whose body carries a content coding (RFC 9110 §8.4, §15.5.16).

    The guard reads the JSON-RPC methods from the body as sent; a gzip body reads as no method at
    all, while a server behind that decodes it would run the call inside. So only ``identity`` is
    taken (``Content-Encoding`` values are the request's header values, possibly comma lists)."""
    for value in codings:
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "identity"):
                return ENCODED_BODY
    return None


CHARSET_BODY = json_response(
    415,
    {"error": "invalid_request", "error_description": "send the request body as UTF-8 JSON (charset=utf-8 or none)"},
    no_store=True,
)

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
"""The media types a framework parses as a form (``request.form``, ``post()``)."""

PARSED_AWAY = json_response(
    415,
    {
        "error": "invalid_request",
        "error_description": "the body was read as a form before the guard: send MCP messages as application/json",
    },
    no_store=True,
)
"""What a guard answers when something before it (a Flask ``before_request`` hook reading
``request.form``, an aiohttp middleware reading a multipart ``post()``) parsed the body as a
form and kept no copy of it: the handler is given that form, which the guard cannot read, so
it refuses rather than judge an empty body."""

_UTF8 = frozenset({"charset=utf-8", "charset=utf8"})


def guarded_body_problem(codings: Sequence[str], content_types: Sequence[str]) -> Response | None:
    """415 for a guarded request whose body the server behind may read otherwise than the guard:
    a content coding (:func:`body_coding_problem`), or a ``Content-Type`` charset other than
    UTF-8, or two ``Content-Type`` values. MCP messages are UTF-8 JSON (MCP base protocol,
    JSON-RPC); the guard reads the methods of the bytes as UTF-8, while a server decoding
    ``charset=utf-7`` would find a ``"method"`` the guard never saw. Any parameter naming a
    charset (``charset*=``, a quoted or spaced one) must read ``charset=utf-8`` exactly."""
    refused = body_coding_problem(codings) if codings else None
    if refused is not None or not content_types:
        return refused
    if len(content_types) == 1 and ";" not in content_types[0]:
        return None  # no parameter, so no charset: the usual request, on every guarded call
    spelled = {"".join(value.lower().split()) for value in content_types}  # RFC 9110 §5.6.6: spaces, tabs
    if len(spelled) > 1:
        return CHARSET_BODY
    for parameter in spelled.pop().split(";")[1:]:
        name = parameter.partition("=")[0]
        if name.startswith("charset") and parameter.replace('"', "") not in _UTF8:
            return CHARSET_BODY
    return None


def failure_response(exc: BaseException) -> Response:
    """503 when the store is down, 500 for anything else; never a stack trace (GN-03)."""
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        return json_response(503, {"error": "temporarily_unavailable"}, no_store=True, headers=(("Retry-After", "5"),))
    log.error("unexpected error while answering a request", exc_info=exc)
    return json_response(500, {"error": "server_error"}, no_store=True)


def _check_arguments(
    config: object,
    store: object,
    users: object,
    login_limits: object,
    scope_map: object,
    fetcher: object,
    session_lifetime: object,
    keyring_ttl: object,
) -> None:
    """Refuse, when the server is built, what would otherwise fail on every request."""
    expected = (
        ("config", config, Config, False),
        ("users", users, Users, True),
        ("login_limits", login_limits, LoginLimits, True),
        ("scope_map", scope_map, McpScopeMap, False),
    )
    for name, value, kind, optional in expected:
        if not isinstance(value, kind) and not (optional and value is None):
            raise TypeError(f"{name} must be a {kind.__name__}, not {type(value).__name__}")
    if not callable(getattr(store, "perform", None)):
        raise TypeError(f"store must be a kavachOS store (kavach.stores.open_store), not {type(store).__name__}")
    if fetcher is not None and not callable(getattr(fetcher, "fetch", None)):
        raise TypeError(f"fetcher must be a kavach.fetcher.DocumentFetcher, not {type(fetcher).__name__}")
    if not isinstance(session_lifetime, int) or isinstance(session_lifetime, bool) or not 0 < session_lifetime < 10**7:
        raise ValueError(f"session_lifetime must be a whole number of seconds (at least 1), not {session_lifetime!r}")
    if not isinstance(keyring_ttl, int) or isinstance(keyring_ttl, bool) or not 0 <= keyring_ttl < 10**7:
        # whole seconds, as the guards' clock reads: a fraction would be served up to a second past it
        raise ValueError(f"keyring_ttl must be a whole number of seconds, not {keyring_ttl!r}")


class AuthorizationServer:
    """An OAuth 2.1 authorization server for MCP resources, ready to mount in any framework.

    ``users`` enables the built-in sign-in page; ``identify(request) -> subject | None`` lets the
    application say who is signed in with its own login (it may be async under async adapters;
    a subject is text of at most 255 characters, see
    :func:`~kavach_core.endpoints.authorize.subject_problem`: any other fails that request);
    ``login_url(return_to) -> url`` is where to send a person ``identify`` does not know, when
    there are no local users. ``scope_map`` maps MCP methods to scopes for the guards.
    ``keyring_ttl`` is how many seconds the guards reuse one read of the signing keys (a key
    removed from the store stops verifying within that bound; 0 reads them on every request;
    see :class:`~kavach_core.keys.KeyRing`).
    ``clock`` and ``entropy`` are injectable for tests. ``fetcher`` performs the core's
    ``FetchDocument`` effect (client ID metadata documents, CM-02): by default a
    :class:`~kavach.fetcher.DocumentFetcher` with the default (public hosts only) policy when
    the configuration enables documents.
    """

    def __init__(
        self,
        config: Config,
        store: Any,
        *,
        users: Users | None = None,
        identify: Identify | None = None,
        login_url: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.time,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        login_limits: LoginLimits | None = None,
        session_lifetime: int = 8 * 3600,
        router: Router | None = None,
        scope_map: McpScopeMap = DEFAULT_MAP,
        fetcher: Any = None,
        keyring_ttl: int = KEYRING_TTL,
    ) -> None:
        if users is None and identify is None:
            raise ValueError("give users= (built-in sign-in) or identify= (your application's login), or both")
        _check_arguments(config, store, users, login_limits, scope_map, fetcher, session_lifetime, keyring_ttl)
        for name, fn in (
            ("identify", identify),
            ("login_url", login_url),
            ("clock", clock),
            ("entropy", entropy),
            ("router", router),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function, not {type(fn).__name__}")
        if router is None:
            from kavach_core.router import route

            router = route
        self.config = config
        self.store = store
        self.users = users
        self.identify = identify
        self.login_url = login_url
        self.clock = clock
        self.entropy = entropy
        self.login_limits = login_limits or LoginLimits()
        self.cookies = Cookies(config, session_lifetime=session_lifetime)
        self.router = router
        self.scope_map = scope_map
        self.verified = VerifiedCache()
        """Tokens this process already verified (signature skipped; revocation still checked)."""
        self.keyring = KeyRing(keyring_ttl)
        """The signing keys the guards read last, reused for ``keyring_ttl`` seconds."""
        self._inline = nonblocking(store)
        if fetcher is None and config.client_id_metadata_documents:
            from .fetcher import DocumentFetcher

            fetcher = DocumentFetcher()
        policy = getattr(fetcher, "policy", None)
        if policy is not None:
            from .fetcher import FetchPolicy, loopback_switch_problem

            problem = loopback_switch_problem(policy, config.issuer) if isinstance(policy, FetchPolicy) else None
            if problem is not None:
                raise ValueError(problem)
        self.fetcher = fetcher
        base = config.issuer_path + config.paths.authorization
        self.login_path = base + "/login"
        self.consent_path = base + "/consent"
        self.decision_path = base + "/decision"

    # -- what to mount ---------------------------------------------------------------------

    def paths(self) -> tuple[str, ...]:
        """Every path to mount: the core router's table (RFC 8414 §3, RFC 9728 §3.1) and the
        sign-in and consent forms' own paths under the authorization endpoint."""
        from kavach_core.router import routes

        return (*routes(self.config), self.login_path, self.consent_path, self.decision_path)

    # -- answering ---------------------------------------------------------------------------

    def context(self) -> Context:
        return Context(self.config, int(self.clock()), self.entropy)

    def handle(self, req: HttpRequest) -> Response:
        """Answer ``req`` in this thread (Flask, WSGI, the CLI)."""
        try:
            return run(self._serve(self.context(), req), _SyncPerformer(self.store, self.fetcher))
        except Exception as exc:
            return failure_response(exc).with_headers(cors_headers(self.config, req.path))

    async def ahandle(self, req: HttpRequest) -> Response:
        """Answer ``req`` on an event loop (Starlette, aiohttp); blocking steps run in threads, a
        password check in threads of its own (:func:`password_threads`)."""
        try:
            return await arun(self._serve(self.context(), req), _AsyncPerformer(self.store, self.fetcher))
        except Exception as exc:
            return failure_response(exc).with_headers(cors_headers(self.config, req.path))

    def protected(self, resource: str) -> str:
        """The canonical URI of configured resource ``resource``; ``ValueError`` when unknown (RS-05)."""
        try:
            found = self.config.resource(canonical_resource(resource))
        except ValueError as exc:
            raise ValueError(f"{resource!r} is not a resource URI") from exc
        if found is None:
            raise ValueError(f"{resource!r} is not one of the configured protected resources")
        return found.uri

    def required_scopes(self, req: HttpRequest) -> tuple[str, ...]:
        """The scopes an MCP request needs: its JSON-RPC method(s), every member of a batch."""
        return self.body_scopes(req.body)

    def body_scopes(self, body: bytes) -> tuple[str, ...]:
        """:meth:`required_scopes` from the request body alone (all it reads)."""
        return self.scope_map.required_scopes(body) if body else ()

    async def abody_scopes(self, body: bytes) -> tuple[str, ...]:
        """:meth:`body_scopes` in a worker thread, for a body over :data:`THREADED_BODY` on an
        event loop: reading a large body's methods (many objects, repeated members read both
        ways) takes long enough to hold up every other request on the loop."""
        return await asyncio.to_thread(self.body_scopes, body)

    def guard_body(self, resource: str, authorization: Sequence[str], body: bytes) -> Principal | Response:
        """:meth:`guard_values` for the scopes of the request's JSON-RPC ``body``. A body over
        :data:`THREADED_BODY` is read only for a valid token: a caller without one is answered
        first (401 naming the resource's default scopes), so large batches sent without a token
        cost no parsing; a valid token not covering what the body needs gets the 403 naming it."""
        if len(body) <= THREADED_BODY:
            return self.guard_values(resource, authorization, self.body_scopes(body))
        outcome = self.guard_values(resource, authorization, ())
        if isinstance(outcome, Response):
            return outcome
        return scope_challenge(outcome, self.body_scopes(body)) or outcome

    async def aguard_body(self, resource: str, authorization: Sequence[str], body: bytes) -> Principal | Response:
        """:meth:`guard_body` on an event loop (a large body's methods read in a worker thread)."""
        if len(body) <= THREADED_BODY:
            return await self.aguard_values(resource, authorization, self.body_scopes(body))
        outcome = await self.aguard_values(resource, authorization, ())
        if isinstance(outcome, Response):
            return outcome
        return scope_challenge(outcome, await self.abody_scopes(body)) or outcome

    def _guard_flow(
        self, resource: str, authorization: Sequence[str], required: tuple[str, ...]
    ) -> Flow[Principal | Response]:
        now = int(self.clock())
        return authenticate_values(self.config, resource, authorization, required, now, self.verified, self.keyring)

    def guard(self, resource: str, req: HttpRequest, required: tuple[str, ...]) -> Principal | Response:
        """The verified caller of ``resource``, or the 401/403 challenge to send (RS-01..RS-05);
        415 for a body it may read otherwise than the server behind (:func:`guarded_body_problem`)."""
        refused = guarded_body_problem(req.header_values("content-encoding"), req.header_values("content-type"))
        if refused is not None:
            return refused
        return self.guard_values(resource, req.header_values("authorization"), required)

    def guard_values(
        self, resource: str, authorization: Sequence[str], required: tuple[str, ...]
    ) -> Principal | Response:
        """:meth:`guard` given the request's ``Authorization`` header values only (all it reads)."""
        try:
            return run(self._guard_flow(resource, authorization, required), _SyncPerformer(self.store, self.fetcher))
        except Exception as exc:
            return failure_response(exc)

    async def aguard(self, resource: str, req: HttpRequest, required: tuple[str, ...]) -> Principal | Response:
        """:meth:`guard` on an event loop."""
        refused = guarded_body_problem(req.header_values("content-encoding"), req.header_values("content-type"))
        if refused is not None:
            return refused
        return await self.aguard_values(resource, req.header_values("authorization"), required)

    async def aguard_values(
        self, resource: str, authorization: Sequence[str], required: tuple[str, ...]
    ) -> Principal | Response:
        """:meth:`guard_values` on an event loop. A store that never blocks (``nonblocking``, the
        memory store) is asked in this thread, as its ``aperform`` would; any other store's
        effects are awaited as usual, so the loop never waits on a database."""
        try:
            flow = self._guard_flow(resource, authorization, required)
            if self._inline:
                return run(flow, self.store)
            return await arun(flow, _AsyncPerformer(self.store, self.fetcher))
        except Exception as exc:
            return failure_response(exc)

    def run_flow(self, flow: Flow[Any]) -> Any:
        return run(flow, _SyncPerformer(self.store, self.fetcher))

    async def arun_flow(self, flow: Flow[Any]) -> Any:
        return await arun(flow, _AsyncPerformer(self.store, self.fetcher))

    def _serve(self, ctx: Context, req: HttpRequest) -> Generator[fx.Effect, Any, Response]:
        """Answer ``req``; every redirect away from kavach (a code or an error for the client's
        ``redirect_uri``, RFC 6749 §4.1.2; the application's login page) first ends the session
        the request carries, under an http issuer, whatever the target
        (:meth:`~kavach.sessions.Cookies.reach`): there the cookies go to every port of the
        issuer's host (RFC 6265 §8.5) and the page at the target can send the browser on to one,
        so what a listener collects there must sign no one in. The end is recorded in the store
        (a copy of the cookie is refused too) as well as the cookie cleared (:meth:`_sign_out`).
        Under https sessions last (``__Host-`` cookies) and nothing is cleared."""
        if req.body:  # one answer on every framework, whether or not it decodes bodies itself
            refused = body_coding_problem(req.header_values("content-encoding"))
            if refused is not None:
                return refused.with_headers(cors_headers(self.config, req.path))
        response = yield from self._dispatch(ctx, req)
        location = _elsewhere(response)
        if location and self.cookies.reach(location):
            cookies = parse_cookies(req.header_values("cookie"))
            if self.cookies.session_name in cookies:
                response = response.with_headers(((yield from self._sign_out(ctx, cookies)),))
        if response.view is not None:
            extra = [(k, v) for k, v in response.headers if k.lower() in ("allow", "retry-after", "set-cookie")]
            view = response.view
            return pages.error_page(
                response.status, view.error, view.description, headers=extra, back=view.back, back_to=view.back_to
            )
        return response

    def _dispatch(self, ctx: Context, req: HttpRequest) -> Generator[fx.Effect, Any, Response]:
        if req.path == self.login_path:
            return (yield from self._login(ctx, req))
        if req.path == self.decision_path:
            return (yield from self._decision(ctx, req))
        if req.path == self.consent_path:
            return (yield from self._consent_again(ctx, req))
        outcome = yield from self.router(ctx, req)
        if isinstance(outcome, ConsentRequired):
            return (yield from self._person(ctx, req, outcome))
        return outcome

    # -- the person's step -------------------------------------------------------------------

    def _subject(
        self, ctx: Context, req: HttpRequest, cookies: dict[str, str], ticket: str
    ) -> Generator[fx.Effect, Any, tuple[str, bool] | None]:
        """Who is signed in to answer consent ticket ``ticket``, and whether kavach's own session
        cookie says so (``True``; only then can signing this browser out change who it is), or
        ``None``. ``identify`` is asked first. Under an http issuer kavach's session counts only
        for the ticket it signed in for (:meth:`~kavach.sessions.Cookies.serves`): its cookies
        may have been collected by a listener on another port of the host (RFC 6265 §8.5), which
        must not be able to start and approve requests of its own with them."""
        if self.identify is not None:
            subject = yield Call(self.identify, (req,), blocking=False)
            if subject:
                return str(subject), False
        if self.users is None:
            return None
        session = self.cookies.session(cookies, ctx.now)  # the signature first: a forged cookie reads nothing
        if session is None or not self.cookies.serves(session, ticket):
            return None
        if (yield fx.IsSessionEnded(session.session_hash)):
            return None
        current = yield Call(self.users.session_stamp, (session.subject,))
        return (session.subject, True) if session.holds(current) else None

    def _sign_out(self, ctx: Context, cookies: dict[str, str]) -> Generator[fx.Effect, Any, tuple[str, str]]:
        """The header that clears this browser's session cookie, after the session it signs in (if
        any) is recorded as ended, so a copy of the cookie kept elsewhere is refused too. A store
        that cannot record it (an outage) does not keep the cookie: the answer goes out as it is."""
        session = self.cookies.session(cookies, ctx.now)
        if session is not None:
            yield BestEffort(fx.EndSession(session.session_hash, session.expires_at))
        return self.cookies.clear_session()

    def _consent_url(self, ticket: str, browser: str, notice: str | None = None) -> str:
        """The consent page of ``ticket`` for this ``browser`` only: ``link`` binds the two, so a
        ticket read from a log or a history cannot be approved in another browser (by someone
        signed in there, whose code would go to the victim's client: RFC 9700 §4.4)."""
        link = self.cookies.csrf_token(browser, "consent-link", ticket)
        url = f"{self.consent_path}?ticket={quote(ticket, safe='')}&link={link}"
        return url + f"&notice={notice}" if notice else url

    def _person(
        self, ctx: Context, req: HttpRequest, consent: ConsentRequired, notice: str | None = None
    ) -> Generator[fx.Effect, Any, Response]:
        """Sign in if needed, then ask (AZ-11); never decides on the person's behalf."""
        cookies = parse_cookies(req.header_values("cookie"))
        browser, set_browser = self.cookies.browser_id(cookies)
        extra = (set_browser,) if set_browser else ()
        signed_in = yield from self._subject(ctx, req, cookies, consent.ticket)
        if signed_in is None:
            if self.users is None:
                if self.login_url is not None:
                    target = self.login_url(self._consent_url(consent.ticket, browser))
                    return Response(303, (("Location", target), *pages.page_headers(), *extra), b"")
                return pages.error_page(401, "login_required", "Sign in to the application first, then try again.")
            error = "That username and password did not match. Try again." if notice == "failed" else None
            return pages.login_page(
                action=self.login_path,
                ticket=consent.ticket,
                csrf=self.cookies.csrf_token(browser, "login", consent.ticket),
                client_name=consent.view.client_name,
                error=error,
                headers=extra,
            )
        subject, own_session = signed_in
        return pages.consent_page(
            consent.view,
            action=self.decision_path,
            ticket=consent.ticket,
            csrf=self.cookies.csrf_token(browser, "consent", consent.ticket),
            subject=subject,
            headers=extra,
            switch_account=own_session,
        )

    def _consent_again(self, ctx: Context, req: HttpRequest) -> Generator[fx.Effect, Any, Response]:
        """GET after sign-in: the same pending request, not yet used (``authorize.consent``)."""
        if req.method not in ("GET", "HEAD"):
            return pages.error_page(405, "invalid_request", "Use GET for this page.", headers=(("Allow", "GET, HEAD"),))
        try:
            params = Params(req.query)
            ticket, link = params.get("ticket") or "", params.get("link")
            notice = params.get("notice")
        except OAuthError as exc:
            return pages.error_page(400, exc.error, exc.description)
        consent = (yield from authorize.consent(ctx, ticket)) if ticket else None
        if consent is None:
            return _expired()
        if not self.cookies.csrf_valid(parse_cookies(req.header_values("cookie")), "consent-link", ticket, link):
            return pages.error_page(
                403, "invalid_request", "This page belongs to a sign-in started in another browser. Start again."
            )
        return (yield from self._person(ctx, req, consent, notice))

    def _form(self, req: HttpRequest) -> Params | Response:
        if req.method != "POST":
            return pages.error_page(405, "invalid_request", "Use the form on the page.", headers=(("Allow", "POST"),))
        try:
            return form_params(req)
        except OAuthError as exc:
            return pages.error_page(400, exc.error, exc.description)

    def _login(self, ctx: Context, req: HttpRequest) -> Generator[fx.Effect, Any, Response]:
        """The sign-in form's POST: CSRF, rate limits, password; then 303 to consent (AZ-10).
        Under an http issuer the session it starts serves this form's ticket only
        (:meth:`~kavach.sessions.Cookies.serves`; RFC 6265 §8.5 is why). Its Cancel button
        (``decision=deny``) needs only the form's CSRF token: the person at this browser refuses
        the request without signing in, as Deny on the consent page would (AZ-12); it is no
        sign-in attempt, so no rate limit counts it."""
        form = self._form(req)
        if isinstance(form, Response):
            return form
        if self.users is None:
            return pages.error_page(404, "invalid_request", "Local sign-in is not enabled here.")
        try:
            ticket, token = form.get("ticket") or "", form.get("csrf_token")
            username, password = form.get("username") or "", form.get("password") or ""
            decision = form.get("decision")
        except OAuthError as exc:
            return pages.error_page(400, exc.error, exc.description)
        cookies = parse_cookies(req.header_values("cookie"))
        if not self.cookies.csrf_valid(cookies, "login", ticket, token):
            return _csrf_refused()
        if decision == "deny":
            return (yield from authorize.deny(ctx, ticket))
        if decision is not None:
            return pages.error_page(400, "invalid_request", "Choose Sign in or Cancel.")
        browser = cookies[self.cookies.browser_name]  # there: the token is bound to it
        limits = self.login_limits
        account = account_name(username)
        user_key = "invalid" if account is None else hashlib.sha256(account.encode()).hexdigest()[:32]
        attempts = f"login:user:{user_key}"
        address = client_address(req) or "unknown"  # an IPv6 client by its /64, as every per-address limit
        # LoginLimits: every attempt counts against the address; one the address is allowed counts
        # against the account before the password check, and is given back if it succeeds.
        allowed = yield fx.Hit(f"login:address:{address}", limits.per_address, limits.window, ctx.now)
        if allowed:
            allowed = yield fx.Hit(attempts, limits.per_user, limits.window, ctx.now)
        if not allowed:
            error = "Too many sign-in attempts. Wait a few minutes, then try again."
            return (yield from self._login_again(ctx, ticket, token, username, error, 429, limits.window))
        signed_in = yield Call(self.users.sign_in, (username, password), hashing=True)
        if signed_in is PASSWORDS_BUSY:  # not checked: the attempt is the account's again
            yield fx.Hit(attempts, limits.per_user, limits.window, ctx.now, step=-1)
            error = "Too many people are signing in right now. Try again in a few seconds."
            return (yield from self._login_again(ctx, ticket, token, username, error, 503, PASSWORDS_BUSY_RETRY))
        if signed_in is None:
            return _see_other(self._consent_url(ticket, browser, "failed"))
        yield fx.Hit(attempts, limits.per_user, limits.window, ctx.now, step=-1)  # same ctx.now: same window
        subject, stamp = signed_in
        session = self.cookies.session_cookie(subject, stamp, ctx.now, ctx.random(16), ticket)
        browser, set_browser = self.cookies.new_browser_id()  # forms served before this sign-in are void
        return _see_other(self._consent_url(ticket, browser), session, set_browser)

    def _login_again(
        self, ctx: Context, ticket: str, csrf: str | None, username: str, error: str, status: int, retry_after: int
    ) -> Generator[fx.Effect, Any, Response]:
        """The sign-in form once more, saying ``error``, with ``status`` and ``Retry-After``."""
        consent = yield from authorize.consent(ctx, ticket)
        return pages.login_page(
            action=self.login_path,
            ticket=ticket,
            csrf=csrf or "",
            client_name=consent.view.client_name if consent else "the application",
            username=username,
            error=error,
            status=status,
            headers=(("Retry-After", str(retry_after)),),
        )

    def _decision(self, ctx: Context, req: HttpRequest) -> Generator[fx.Effect, Any, Response]:
        """The consent form's POST: CSRF, then switch account (sign out, ask again; only for a person
        signed in with kavach's own session), or the signed-in person approves or denies (AZ-12)."""
        form = self._form(req)
        if isinstance(form, Response):
            return form
        try:
            ticket, token, decision = form.get("ticket") or "", form.get("csrf_token"), form.get("decision")
        except OAuthError as exc:
            return pages.error_page(400, exc.error, exc.description)
        cookies = parse_cookies(req.header_values("cookie"))
        if not ticket or not self.cookies.csrf_valid(cookies, "consent", ticket, token):
            return _csrf_refused()
        browser = cookies[self.cookies.browser_name]  # there: the token is bound to it
        signed_in = yield from self._subject(ctx, req, cookies, ticket)
        if signed_in is None:
            return _see_other(self._consent_url(ticket, browser))
        subject, own_session = signed_in
        if decision == "switch" and own_session:  # not this person: sign out, ask again
            return _see_other(self._consent_url(ticket, browser), (yield from self._sign_out(ctx, cookies)))
        if decision == "approve":
            approved = yield from authorize.approve(ctx, ticket, subject, form.get_all("scope"))
            if own_session and (yield from self._subject(ctx, req, cookies, ticket)) != signed_in:
                return _signed_out()  # the code stays unsent: nobody can redeem it
            return approved
        if decision == "deny":
            return (yield from authorize.deny(ctx, ticket))
        return pages.error_page(400, "invalid_request", "Choose Approve or Deny.")


def _elsewhere(response: Response) -> str | None:
    """The absolute URL ``response`` redirects the browser to, such as a client's
    ``redirect_uri`` (kavach's own redirects are paths), else ``None``."""
    if response.status not in (301, 302, 303, 307, 308):
        return None
    location = response.header("location") or ""
    return location if not location.startswith("/") or location.startswith("//") else None


def _see_other(location: str, *cookies: tuple[str, str]) -> Response:
    """303 See Other after every POST (AZ-10)."""
    return Response(303, (("Location", location), *pages.page_headers(), *cookies), b"")


def _expired() -> Response:
    return pages.error_page(400, "invalid_request", "This request has expired or was already answered. Start again.")


def _signed_out() -> Response:
    """The answer to an approval whose session ended while it was being made (the account
    removed, its password changed, the session signed out): the code it stored is never sent,
    since a removal that revoked the account's codes just before it was stored would miss it."""
    return pages.error_page(
        403, "access_denied", "Your sign-in ended before this request was approved. Start again from the application."
    )


def _csrf_refused() -> Response:
    return pages.error_page(
        403, "invalid_request", "This form was not sent from this page, or it expired. Go back and try again."
    )
