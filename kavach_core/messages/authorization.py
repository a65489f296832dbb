"""Authorization requests (RFC 6749 §4.1.1, OAuth 2.1 §4.1.1, RFC 7636 §4.3, RFC 8707 §2)
and the outcome that asks the person for a decision.

Unknown parameters are ignored (AZ-01), but four that would change what the client expects
back are read, so that the endpoint can refuse what it does not do instead of answering
something else: ``request`` and ``request_uri`` (RFC 9101 §5.1, §5.2), ``response_mode``
(OAuth 2.0 Multiple Response Type Encoding Practices §2.1) and ``prompt`` (OpenID Connect
Core §3.1.2.1).
"""

from __future__ import annotations

import attrs

from ..errors import OAuthError
from ..http import HttpRequest
from ..params import Params, form_params, query_params

MAX_STATE = 2048

_SINGLE_VALUED = (
    "response_type",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "request",
    "request_uri",
    "response_mode",
    "prompt",
)
"""Parameters read besides ``client_id`` and ``redirect_uri``; each may be given once (RFC 6749 §3.1)."""


@attrs.frozen
class AuthorizationRequest:
    """An authorization request, parsed.

    ``client_id`` and ``redirect_uri`` are read first and on their own: a problem with either is
    shown to the person and never redirected (AZ-02), so it is raised by :func:`parse` as
    ``client_problem``. A problem with any other parameter is kept in ``problem`` and reported
    to the client through the redirect once client and redirect URI are known good.
    """

    client_id: str | None
    redirect_uri: str | None
    client_problem: OAuthError | None
    response_type: str | None = None
    state: str | None = None
    scope: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    resources: tuple[str, ...] = ()
    problem: OAuthError | None = None
    request: str | None = None
    """A request object by value (RFC 9101 §5.1); not supported."""
    request_uri: str | None = None
    """A request object by reference (RFC 9101 §5.2); not supported."""
    response_mode: str | None = None
    prompt: tuple[str, ...] = ()
    """The space-delimited values of ``prompt`` (OpenID Connect Core §3.1.2.1)."""


def _params(req: HttpRequest) -> Params:
    if req.method == "GET":
        return query_params(req)
    if req.method == "POST":
        return form_params(req, by_parameter=True)
    raise OAuthError("invalid_request", "use GET or POST", status=405)


def parse(req: HttpRequest) -> AuthorizationRequest:
    """Parse a GET query or a POST form (AZ-01). A request that cannot be read at all (too many
    fields, a name that is not text, a body that is no form) is a ``client_problem``; a value that
    is not text spoils its own parameter only (:func:`~kavach_core.params.query_params`)."""
    try:
        params = _params(req)
    except OAuthError as exc:
        return AuthorizationRequest(None, None, exc)
    client_problem: OAuthError | None = None
    client_id = redirect_uri = None
    try:
        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
    except OAuthError as exc:
        client_problem = exc
    problem: OAuthError | None = None
    values: dict[str, str | None] = {}
    for name in _SINGLE_VALUED:
        try:
            values[name] = params.get(name)
        except OAuthError as exc:
            values[name] = None
            problem = problem or exc
    try:
        resources = params.get_all("resource")
    except OAuthError as exc:
        resources = ()
        problem = problem or exc
    # ``state`` is echoed verbatim even when another parameter is bad, unless it is itself bad.
    state = values["state"]
    if state is not None and len(state) > MAX_STATE:
        state = None
        problem = problem or OAuthError("invalid_request", "state is too long")
    return AuthorizationRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        client_problem=client_problem,
        response_type=values["response_type"],
        state=state,
        scope=values["scope"],
        code_challenge=values["code_challenge"],
        code_challenge_method=values["code_challenge_method"],
        resources=resources,
        problem=problem,
        request=values["request"],
        request_uri=values["request_uri"],
        response_mode=values["response_mode"],
        prompt=tuple((values["prompt"] or "").split()),
    )


@attrs.frozen
class ScopeView:
    scope: str
    description: str


@attrs.frozen
class ConsentView:
    """What the consent page shows (AZ-11): who asks, where the answer goes, for what.

    ``redirect_host`` is where the answer goes, as the person should read it. For an http or
    https redirect URI it is the host, lowercase, with the port when the URI names one
    (``app.example.com``, ``app.example.com:8443``, ``[::1]:5173``). For any other scheme, a
    native app's private-use scheme (RFC 8252 §7.1), it is the scheme and a colon
    (``com.example.app:``), and ``private_use`` is true: whichever app on the device claims the
    scheme receives the answer, so an authority in such a URI (``com.example.app://host/cb``)
    names nothing and is never shown (kavachOS 0.1.0 showed it, and dropped ports).
    """

    client_id: str
    client_name: str
    client_kind: str
    """``dynamic``, ``static`` or ``document``; a dynamic client is never auto-approved."""
    redirect_uri: str
    redirect_host: str
    loopback_only: bool
    """Every redirect URI of the client is a loopback address: warn the person (AZ-11)."""
    resources: tuple[str, ...]
    resource_names: tuple[str, ...]
    scopes: tuple[ScopeView, ...]
    client_uri: str | None = None
    logo_uri: str | None = None
    on_device: bool = False
    """Every redirect URI of the client is a loopback address or a private-use scheme: an app on
    the person's device, whose maker kavachOS cannot check (RFC 8252 §8.6); true whenever
    ``loopback_only`` is. Warn the person (AZ-11)."""
    private_use: bool = False
    """The answer goes to a private-use scheme (RFC 8252 §7.1), which any app can claim: warn the person."""


@attrs.frozen
class ConsentRequired:
    """The authorization request is valid; the person must now sign in and decide.

    ``ticket`` is the 256-bit secret the adapter carries through its login and consent forms
    and passes to ``approve`` or ``deny``; it is stored only as a digest and used once.
    """

    ticket: str
    view: ConsentView
    expires_at: int
