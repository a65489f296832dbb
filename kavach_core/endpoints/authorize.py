"""The authorization endpoint and the person's decision.

RFC 6749 §4.1.1-§4.1.2.1, OAuth 2.1 §4.1, RFC 7636 §4.3, RFC 8707 §2, RFC 9207 §2,
RFC 9700 §4.1. The request ends either in a page that never redirects (unknown client, bad
redirect URI: AZ-02), an error for the client (AZ-04..AZ-08; also for what kavachOS does not
do: request objects, RFC 9101 §7; a ``response_mode`` but ``query``; ``prompt=none``, OpenID
Connect Core §3.1.2.6), redirected at once only to a URI the server trusts and otherwise offered
on a page (:func:`trusted_redirect`, RFC 9700 §4.11.2), or :class:`ConsentRequired`; the
adapter then signs the person in and calls :func:`approve` or :func:`deny` (AZ-12).
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from .. import effects as fx
from .. import pkce
from ..clients import lookup
from ..config import ProtectedResource
from ..context import Context
from ..drivers import Flow
from ..errors import OAuthError
from ..http import HttpRequest, Response, add_query, client_address, error_page, redirect_response
from ..messages.authorization import (
    AuthorizationRequest,
    ConsentRequired,
    ConsentView,
    ScopeView,
    parse,
)
from ..opaque import digest, new_id, new_secret
from ..records import AuthorizationCode, Client, PendingAuthorization
from ..redirect_uris import find_match, is_loopback
from ..resource_indicators import parse_resource
from ..scopes import parse_scope, uncovered, within


class _Redirectable(Exception):
    """An error reported to the client through its redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, err: OAuthError) -> None:
        super().__init__(str(err))
        self.err = err


def error_redirect(ctx: Context, redirect_uri: str, err: OAuthError, state: str | None) -> Response:
    """A 303 to the client with ``error``, ``error_description``, ``state`` and ``iss`` (AZ-08)."""
    params = [("error", err.error)]
    if err.description:
        params.append(("error_description", err.description))
    if state is not None:
        params.append(("state", state))
    params.append(("iss", ctx.config.issuer))
    return redirect_response(add_query(redirect_uri, params))


def trusted_redirect(ctx: Context, client: Client, redirect_uri: str) -> bool:
    """Whether kavachOS sends the person to ``redirect_uri`` on its own, before anyone signed in.

    RFC 9700 §4.11.2: anyone may make a client (dynamic registration, a client ID metadata
    document) whose redirect URI is their own site, then send people an erroneous authorization
    request, turning the server's trusted address into an open redirector. So the server
    redirects at once only to a URI it trusts: one an operator registered (a static client), one
    on a host the registration policy allows (``allowed_redirect_hosts``), or a loopback one,
    which only reaches the person's own device (RFC 8252 §7.3, §8.3).
    """
    if client.kind == "static" or _is_local(redirect_uri):
        return True
    allowed = ctx.config.registration.allowed_redirect_hosts
    host = (urlsplit(redirect_uri).hostname or "").lower() if not _is_private_use(redirect_uri) else ""
    return allowed is not None and bool(host) and host in allowed


def _refusal(ctx: Context, client: Client, redirect_uri: str, err: OAuthError, state: str | None) -> Response:
    """An erroneous request from a known client to a matching redirect URI: the error goes to the
    client (RFC 6749 §4.1.2.1) by redirect when the URI is trusted (:func:`trusted_redirect`);
    otherwise the person sees it on a page that never redirects, with a link carrying the same
    error response to the client, to follow if they choose (RFC 9700 §4.11.2)."""
    redirect = error_redirect(ctx, redirect_uri, err, state)
    if trusted_redirect(ctx, client, redirect_uri):
        return redirect
    description = f"The application's request cannot be served: {err.description or err.error}."
    return error_page(400, err.error, description, back=redirect.header("location"), back_to=_destination(redirect_uri))


def _client_and_redirect(
    ctx: Context, msg: AuthorizationRequest, requester: str | None
) -> Flow[tuple[Client, str, bool] | Response]:
    """The client and the redirect URI to use, or an error page (AZ-02, AZ-03)."""
    if msg.client_problem is not None:
        return error_page(msg.client_problem.status, msg.client_problem.error, msg.client_problem.description)
    if msg.client_id is None:
        return error_page(400, "invalid_request", "The request does not name a client (client_id is missing).")
    try:
        client = yield from lookup(ctx, msg.client_id, requester)
    except OAuthError as exc:
        # A client ID metadata document that could not be used (CM-01, CM-02): say why, never redirect.
        return error_page(400, exc.error, f"The application could not be identified: {exc.description}.")
    if client is None:
        return error_page(400, "invalid_client", "The application asking for access is not known here.")
    if msg.redirect_uri is None:
        if len(client.redirect_uris) != 1:
            return error_page(400, "invalid_request", "The request must name its redirect_uri.")
        return client, client.redirect_uris[0], False
    if find_match(msg.redirect_uri, client.redirect_uris) is None:
        return error_page(
            400, "invalid_request", "The redirect_uri is not registered for this application; no redirect was made."
        )
    return client, msg.redirect_uri, True


def _resources(ctx: Context, msg: AuthorizationRequest) -> tuple[ProtectedResource, ...]:
    """The protected resources asked for (AZ-06); the default one when none is named."""
    if not msg.resources:
        default = ctx.config.default_resource
        if default is None:
            raise _Redirectable(OAuthError("invalid_target", "name the resource (the MCP server URL)"))
        return (default,)
    found: list[ProtectedResource] = []
    for value in msg.resources:
        try:
            uri = parse_resource(value)
        except OAuthError as exc:
            raise _Redirectable(exc) from exc
        resource = ctx.config.resource(uri)
        if resource is None:
            raise _Redirectable(OAuthError("invalid_target", "the resource is not protected by this server"))
        if resource not in found:
            found.append(resource)
    return tuple(found)


def _scopes(client: Client, resources: tuple[ProtectedResource, ...], requested: str | None) -> tuple[str, ...]:
    """The scopes to ask the person for (AZ-07): within the resources' catalogues; the resources'
    defaults when none is requested, narrowed to the client's registered scope.

    A registered ``scope`` is a ceiling on explicit requests only for clients an operator
    registered (``kind == "static"``). A self-registered client's ``scope`` (RFC 7591 §2: values
    it "can use", no restriction stated) is its own claim, so as a ceiling it protects nothing (it
    could register again) and it breaks MCP step-up (MCP 2025-11-25 authorization, "Step-Up
    Authorization Flow"): MCP SDK clients register with the scope of the first challenge, then
    must ask for more after a 403 ``insufficient_scope``. The person still consents to each scope.
    """
    catalogue = tuple(s for r in resources for s in r.scope_names)
    try:
        asked = parse_scope(requested)
    except OAuthError as exc:
        raise _Redirectable(exc) from exc
    if asked is None:
        defaults: list[str] = []
        for resource in resources:
            defaults.extend(s for s in resource.default_scopes if s not in defaults)
        asked = tuple(defaults)
        if client.scope is not None:
            asked = within(asked, client.scope)
        if not asked:
            raise _Redirectable(OAuthError("invalid_scope", "no default scope is allowed for this client; ask for one"))
        return asked
    if uncovered(asked, catalogue):
        raise _Redirectable(OAuthError("invalid_scope", "a requested scope is not offered by the resource"))
    if client.kind == "static" and client.scope is not None and uncovered(asked, client.scope):
        raise _Redirectable(OAuthError("invalid_scope", "a requested scope is not allowed for this client"))
    return asked


RESPONSE_MODE = "query"
"""The only response mode (RFC 6749 §4.1.2); the metadata's ``response_modes_supported`` (RFC 8414 §2)."""


def _check(msg: AuthorizationRequest, client: Client) -> None:
    """The redirectable checks of AZ-01, AZ-04, AZ-05, in RFC 6749 §4.1.2.1 order.

    A request object (RFC 9101 §5) is refused before the parameters it would carry are checked,
    since they are never read from it (RFC 9101 §7: ``request_not_supported``,
    ``request_uri_not_supported``). Any ``response_mode`` but ``query`` asks for a response this
    endpoint never sends (OAuth 2.0 Multiple Response Type Encoding Practices §2.1).
    """
    if msg.problem is not None:
        raise _Redirectable(msg.problem)
    if msg.request is not None:
        raise _Redirectable(OAuthError("request_not_supported", "the request parameter (RFC 9101) is not supported"))
    if msg.request_uri is not None:
        raise _Redirectable(OAuthError("request_uri_not_supported", "the request_uri parameter is not supported"))
    if msg.response_type is None:
        raise _Redirectable(OAuthError("invalid_request", "response_type is required"))
    if msg.response_type != "code":
        raise _Redirectable(OAuthError("unsupported_response_type", "only response_type=code is supported"))
    if "code" not in client.response_types or "authorization_code" not in client.grant_types:
        raise _Redirectable(OAuthError("unauthorized_client", "this client may not use the authorization code flow"))
    if msg.response_mode not in (None, RESPONSE_MODE):
        raise _Redirectable(OAuthError("invalid_request", f"response_mode must be {RESPONSE_MODE} (the only mode)"))
    if msg.code_challenge is None:
        raise _Redirectable(OAuthError("invalid_request", "code_challenge is required (PKCE)"))
    if msg.code_challenge_method != "S256":
        raise _Redirectable(OAuthError("invalid_request", "code_challenge_method must be S256"))
    if not pkce.is_valid_challenge(msg.code_challenge):
        raise _Redirectable(OAuthError("invalid_request", "code_challenge is not a base64url SHA-256 digest"))


def handle(ctx: Context, req: HttpRequest) -> Flow[Response | ConsentRequired]:
    """Validate an authorization request; store it as pending and ask for consent."""
    msg = parse(req)
    found = yield from _client_and_redirect(ctx, msg, client_address(req))
    if isinstance(found, Response):
        return found
    client, redirect_uri, given = found
    try:
        _check(msg, client)
        resources = _resources(ctx, msg)
        scopes = _scopes(client, resources, msg.scope)
        if "none" in msg.prompt:
            # OpenID Connect Core §3.1.2.1, §3.1.2.6: kavachOS always asks the person, so never answers without a page.
            raise _Redirectable(OAuthError("interaction_required", "prompt=none: the user must always be asked"))
    except _Redirectable as exc:
        return _refusal(ctx, client, redirect_uri, exc.err, msg.state)
    assert msg.code_challenge is not None
    ticket = new_secret(ctx)
    pending = PendingAuthorization(
        ticket_hash=digest(ticket),
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        redirect_uri_given=given,
        state=msg.state,
        code_challenge=msg.code_challenge,
        resources=tuple(r.uri for r in resources),
        scopes=scopes,
        created_at=ctx.now,
        expires_at=ctx.now + ctx.config.lifetimes.consent,
    )
    yield fx.PutPending(pending)
    return ConsentRequired(ticket, consent_view(ctx, client, pending), pending.expires_at)


def consent_view(ctx: Context, client: Client, pending: PendingAuthorization) -> ConsentView:
    """What the person is shown (AZ-11): where the answer goes, and whether the client is an app
    on the person's device (RFC 8252 §7.1, §7.3), whose maker kavachOS cannot check (§8.6)."""
    resources = [ctx.config.resource(uri) for uri in pending.resources]
    known = [r for r in resources if r is not None]
    described: list[ScopeView] = []
    for scope in pending.scopes:
        text = next((text for text in (r.describe(scope) for r in known) if text), "")
        described.append(ScopeView(scope, text))
    meta = client.meta
    client_uri = meta.get("client_uri")
    logo_uri = meta.get("logo_uri")
    return ConsentView(
        client_id=client.client_id,
        client_name=client.client_name or client.client_id,
        client_kind=client.kind,
        redirect_uri=pending.redirect_uri,
        redirect_host=_destination(pending.redirect_uri),
        loopback_only=all(_is_local(u) for u in client.redirect_uris),
        resources=pending.resources,
        resource_names=tuple((r.name or r.uri) if r is not None else "" for r in resources),
        scopes=tuple(described),
        client_uri=client_uri if isinstance(client_uri, str) else None,
        logo_uri=logo_uri if isinstance(logo_uri, str) else None,
        on_device=all(_is_local(u) or _is_private_use(u) for u in client.redirect_uris),
        private_use=_is_private_use(pending.redirect_uri),
    )


def _is_local(uri: str) -> bool:
    """A loopback redirect URI (RFC 8252 §7.3), ``localhost`` included."""
    parts = urlsplit(uri)
    return is_loopback(uri) or (parts.scheme == "http" and parts.hostname == "localhost")


def _is_private_use(uri: str) -> bool:
    """A native app's private-use scheme (RFC 8252 §7.1): registration allows no other scheme
    but http and https (RG-01)."""
    return urlsplit(uri).scheme not in ("http", "https")


def _destination(uri: str) -> str:
    """Where an answer sent to ``uri`` goes, as the person should read it (AZ-11).

    For http and https, the host with the port the URI names: ``netloc`` after any user
    information (which registration refuses, RG-01), lowercase; an IPv6 literal keeps its
    brackets. For a private-use scheme, the scheme alone (``com.example.app:``): an authority in
    such a URI is not who receives the answer, whichever app claims the scheme does (RFC 8252
    §7.1, §8.6).
    """
    parts = urlsplit(uri)
    if _is_private_use(uri):
        return f"{parts.scheme}:"
    return parts.netloc.rpartition("@")[2].lower()


def _expired_page() -> Response:
    return error_page(
        400, "invalid_request", "This authorization request has expired or was already answered. Start again."
    )


def consent(ctx: Context, ticket: str) -> Flow[ConsentRequired | None]:
    """The pending request of ``ticket`` without using it up (to show consent after a login)."""
    pending = yield fx.GetPending(digest(ticket), ctx.now)
    if pending is None:
        return None
    client = yield from _client_for(ctx, pending)
    if client is None:
        return None
    return ConsentRequired(ticket, consent_view(ctx, client, pending), pending.expires_at)


def _client_for(ctx: Context, pending: PendingAuthorization) -> Flow[Client | None]:
    """The client a pending request is for, as it stands now; ``None`` once it is gone (deleted,
    or a metadata document that no longer reads) or no longer lists the request's redirect URI
    (its document changed since, or an operator replaced it): that request is answered as
    expired, never sent on to a redirect URI the client has withdrawn (AZ-03), nor described by
    redirect URIs it does not go to (AZ-11)."""
    try:
        client = yield from lookup(ctx, pending.client_id)
    except OAuthError:
        return None
    if client is None or find_match(pending.redirect_uri, client.redirect_uris) is None:
        return None
    return client


MAX_SUBJECT = 255
"""Longest subject, in characters (OpenID Connect Core §2 caps ``sub`` at 255): it is stored,
indexed and signed into every access token of the grant (RFC 9068 §2.2)."""


def subject_problem(subject: object) -> str | None:
    """Why ``subject`` cannot name the person a grant is for, or ``None``: it must be text of 1
    to :data:`MAX_SUBJECT` characters without control characters (a NUL included) or lone
    surrogates, which no store keeps as given (RFC 7519 §4.1.2: a case-sensitive string)."""
    if not isinstance(subject, str) or not subject:
        return "it must be a non-empty string"
    if len(subject) > MAX_SUBJECT:
        return f"it is longer than {MAX_SUBJECT} characters"
    if not subject.isprintable() and any(unicodedata.category(ch) in ("Cc", "Cs") for ch in subject):
        return "it holds a control character or a lone surrogate"
    return None


def approve(ctx: Context, ticket: str, subject: str, scopes: tuple[str, ...] | None = None) -> Flow[Response]:
    """The person approved: issue a code bound to everything it is for (AZ-09) and redirect
    with ``code``, ``state`` and ``iss`` (RFC 6749 §4.1.2, RFC 9207 §2).

    ``scopes``, when given, is what the person ticked: it can only narrow the request. Approving
    no scope at all grants nothing, so it ends like a refusal (``access_denied``, AZ-12): a token
    must carry at least one scope (RFC 6749 §3.3 has no empty scope value). For the same reason a
    resource none of whose catalogue covers a granted scope is left out of the grant: nothing was
    consented to there, and its token would carry no scope.

    ``subject`` is the authenticated person (:func:`subject_problem` says what it may be); any
    other is ``ValueError``, raised before anything is read or written.
    """
    problem = subject_problem(subject)
    if problem is not None:
        raise ValueError(f"approve needs the authenticated subject, and this one cannot be: {problem}")
    pending = yield fx.TakePending(digest(ticket), ctx.now)
    if pending is None or (yield from _client_for(ctx, pending)) is None:
        return _expired_page()
    granted = pending.scopes if scopes is None else tuple(s for s in pending.scopes if s in scopes)
    if not granted:
        err = OAuthError("access_denied", "no scope was approved")
        return error_redirect(ctx, pending.redirect_uri, err, pending.state)
    code = new_secret(ctx)
    record = AuthorizationCode(
        code_hash=digest(code),
        client_id=pending.client_id,
        redirect_uri=pending.redirect_uri,
        redirect_uri_given=pending.redirect_uri_given,
        code_challenge=pending.code_challenge,
        resources=tuple(uri for uri in pending.resources if _grants_any(ctx, uri, granted)),
        scopes=granted,
        subject=subject,
        grant_id=new_id(ctx),
        issued_at=ctx.now,
        expires_at=ctx.now + ctx.config.lifetimes.code,
    )
    yield fx.PutCode(record)
    params = [("code", code)]
    if pending.state is not None:
        params.append(("state", pending.state))
    params.append(("iss", ctx.config.issuer))
    return redirect_response(add_query(pending.redirect_uri, params))


def _grants_any(ctx: Context, uri: str, granted: tuple[str, ...]) -> bool:
    """Whether ``granted`` holds a scope of the resource ``uri``'s catalogue (a resource no longer
    configured is kept: the token endpoint answers for it, ``invalid_target``)."""
    resource = ctx.config.resource(uri)
    return resource is None or bool(within(granted, resource.scope_names))


def deny(ctx: Context, ticket: str) -> Flow[Response]:
    """The person refused: redirect with ``error=access_denied`` (AZ-12)."""
    pending = yield fx.TakePending(digest(ticket), ctx.now)
    if pending is None or (yield from _client_for(ctx, pending)) is None:
        return _expired_page()
    err = OAuthError("access_denied", "the user denied the request")
    return error_redirect(ctx, pending.redirect_uri, err, pending.state)
