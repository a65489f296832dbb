"""What the kit knows about the server under test, and the protocol steps it performs over HTTP.

Discovery, client registration (or the given client), building authorization requests with
PKCE, running the person's step, token requests with each client authentication method,
refresh, revocation, introspection and calls to the protected resource. Checks and the
stateful test are written in terms of these steps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import traceback
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
import httpx

from .http import Http, KitError, Stop, parse_json
from .person import PersonError, PersonStep, person_post, redirect_params

OIDC_SCOPES = frozenset({"openid", "profile", "email", "address", "phone", "offline_access"})
MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


class Skip(Exception):
    """A check cannot be decided here (a missing endpoint or client); the message says why."""


class BadAnswer(Exception):
    """The server answered, but not as the protocol says (a 200 without tokens, say)."""


def describe(exc: BaseException) -> str:
    """An exception as one reason: the kit's own message, else the exception's type and text
    (without the notes hypothesis may add after it; printed on one line by the report)."""
    if isinstance(exc, KitError | BadAnswer):
        return str(exc)
    return traceback.format_exception_only(type(exc), exc)[0].strip()


class RegistrationFailed(KitError):
    """A registration of one of the kit's clients was refused or answered without a usable record."""


URL_MEMBERS = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "jwks_uri",
)
ARRAY_MEMBERS = frozenset(
    {
        # RFC 8414 §2
        "scopes_supported",
        "response_types_supported",
        "response_modes_supported",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "token_endpoint_auth_signing_alg_values_supported",
        "ui_locales_supported",
        "revocation_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_signing_alg_values_supported",
        "introspection_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_signing_alg_values_supported",
        "code_challenge_methods_supported",
        # OpenID Connect Discovery 1.0 §3
        "acr_values_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
        "id_token_encryption_alg_values_supported",
        "id_token_encryption_enc_values_supported",
        "userinfo_signing_alg_values_supported",
        "userinfo_encryption_alg_values_supported",
        "userinfo_encryption_enc_values_supported",
        "request_object_signing_alg_values_supported",
        "request_object_encryption_alg_values_supported",
        "request_object_encryption_enc_values_supported",
        "display_values_supported",
        "claim_types_supported",
        "claims_supported",
        "claims_locales_supported",
    }
)
"""The metadata members RFC 8414 §2 and OIDC Discovery §3 define as JSON arrays of strings. Other
specifications name members alike that are not arrays (OIDC Identity Assurance's boolean
``verified_claims_supported``): members the kit does not know are not type-checked."""
BOOLEAN_MEMBERS = frozenset(
    {
        "claims_parameter_supported",  # OIDC Discovery §3, as are the next three
        "request_parameter_supported",
        "request_uri_parameter_supported",
        "require_request_uri_registration",
        "authorization_response_iss_parameter_supported",  # RFC 9207 §3
    }
)


def mistyped_members(meta: dict[str, object]) -> list[str]:
    """RFC 8414 §2: endpoints (and ``jwks_uri``) are URL strings, the array members
    (:data:`ARRAY_MEMBERS`, ``scopes_supported`` ...) JSON arrays of strings, the flags
    (:data:`BOOLEAN_MEMBERS`) booleans; the members present that are not."""
    wrong = []
    for name in URL_MEMBERS:
        value = meta.get(name)
        if name in meta and not (isinstance(value, str) and urlsplit(value).scheme in ("http", "https")):
            wrong.append(f"{name} is not an http(s) URL: {str(value)[:40]!r}")
    for name, value in meta.items():
        if name in BOOLEAN_MEMBERS and not isinstance(value, bool):
            wrong.append(f"{name} is not a boolean: {str(value)[:40]!r}")
        elif name in ARRAY_MEMBERS and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            wrong.append(f"{name} is not an array of strings: {str(value)[:40]!r}")
    return wrong


def well_known(issuer: str, suffix: str) -> str:
    """RFC 8414 §3.1: the well-known path inserted between the host and the issuer's path."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{suffix}{path}", "", ""))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_verifier() -> str:
    return b64url(secrets.token_bytes(32))


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's JSON object, or ``None`` (not JSON the kit can read, or not an object)."""
    try:
        body = parse_json(response)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def jwt_payload(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, not verified (``None`` for an opaque token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to decode
        return None
    return value if isinstance(value, dict) else None


def refresh_token_of(body: Mapping[str, Any]) -> str | None:
    """The ``refresh_token`` of a token response (RFC 6749 §5.1: a string), ``None`` when absent;
    :class:`BadAnswer` when it is there but not a non-empty string (a number, say)."""
    value = body.get("refresh_token")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadAnswer(f"the token response's refresh_token is not a string: {json.dumps(value)[:40]}")
    return value


@attrs.define
class Client:
    client_id: str
    redirect_uri: str
    secret: str | None = None
    method: str = "none"


@attrs.define
class Outcome:
    """How an authorization request ended: at the client's redirect URI, or on a server page."""

    final: str | None
    status: int | None = None
    reason: str = ""

    @property
    def redirected(self) -> bool:
        return self.final is not None

    @property
    def params(self) -> dict[str, list[str]]:
        return redirect_params(self.final) if self.final else {}

    def one(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    def describe(self) -> str:
        if self.final is None:
            return f"stayed on the server ({self.status or self.reason})"
        shown = {k: v[0][:24] for k, v in self.params.items()}
        return f"redirected to {self.final.split('?', 1)[0]} with {shown}"


@attrs.define
class Tokens:
    access_token: str
    refresh_token: str | None
    scope: str | None
    body: dict[str, Any]


class Session:
    def __init__(
        self,
        http: Http,
        *,
        issuer: str,
        resource: str | None,
        other_resource: str | None,
        person: PersonStep,
        redirect_uri: str,
        scopes: tuple[str, ...] | None = None,
    ) -> None:
        self.http = http
        self.issuer = issuer
        self.resource = resource
        self.other_resource = other_resource
        self.person = person
        self.redirect_uri = redirect_uri
        self.wanted_scopes = scopes
        self.resource_served = True
        """False with ``--indicator-only``: ``resource`` is a resource indicator, nothing is served there."""
        self._guarded: bool | None = None
        self.meta: dict[str, Any] = {}
        self.meta_source = ""
        self.prm: dict[str, Any] | None = None
        self.primary: Client | None = None
        self.second: Client | None = None
        self.confidential: Client | None = None
        self.registrations: list[tuple[dict[str, Any], httpx.Response]] = []
        self.may_register = False
        """Only with ``--register`` does the kit register clients (and probe registration)."""
        self.authorized = False
        """Whether a valid authorization request ever ended with a code."""
        self.unauthorized: str | None = None
        """How the first valid authorization request without a code ended: with none ever
        authorized, the checks prove nothing, and the kit could not run (:func:`~.runner.run_kit`)."""

    # -- discovery ----------------------------------------------------------------------

    def discover(self) -> None:
        tried: list[str] = []
        for suffix in ("oauth-authorization-server", "openid-configuration"):
            urls = (well_known(self.issuer, suffix), self.issuer.rstrip("/") + f"/.well-known/{suffix}")
            for url in dict.fromkeys(urls):  # one URL for an issuer without a path
                try:
                    response = self.http.request("GET", url)
                except Stop:
                    raise
                except KitError as exc:
                    tried.append(str(exc))
                    continue
                body = json_object(response) if response.status_code == 200 else None
                if body is not None and body.get("authorization_endpoint"):
                    self.meta = body
                    self.meta_source = url
                    self._allow_endpoints()
                    return
                what = "not a JSON object" if body is None else "no authorization_endpoint"
                tried.append(f"GET {url}: {response.status_code}, {what}")
        raise KitError(f"no authorization server metadata found for {self.issuer}: {'; '.join(tried)}")

    def _allow_endpoints(self) -> None:
        for name in (
            "authorization_endpoint",
            "token_endpoint",
            "registration_endpoint",
            "revocation_endpoint",
            "introspection_endpoint",
        ):
            value = self.meta.get(name)
            if isinstance(value, str):
                self.http.check_allowed(value)

    def endpoint(self, name: str) -> str:
        value = self.meta.get(name)
        if not isinstance(value, str) or not value:
            raise Skip(f"the metadata lists no {name}")
        return value

    def load_prm(self) -> dict[str, Any] | None:
        if self.resource is None:
            return None
        if self.prm is None:
            response = self.http.request("GET", well_known(self.resource, "oauth-protected-resource"))
            if response.status_code == 200:
                self.prm = json_object(response)
        return self.prm

    def catalogue(self) -> list[str]:
        prm = self.load_prm() or {}
        for source in (prm.get("scopes_supported"), self.meta.get("scopes_supported")):
            if isinstance(source, list) and source:
                return [s for s in source if isinstance(s, str) and s not in OIDC_SCOPES]
        return []

    def scopes(self) -> tuple[str, ...]:
        """The scopes the kit asks for: ``--scope``, else the first two of the catalogue."""
        if self.wanted_scopes is not None:
            return self.wanted_scopes
        return tuple(self.catalogue()[:2])

    # -- clients ------------------------------------------------------------------------

    def register(self, body: Mapping[str, Any]) -> httpx.Response:
        response = self.http.request("POST", self.endpoint("registration_endpoint"), json_body=dict(body))
        self.registrations.append((dict(body), response))
        return response

    def client_body(self, method: str, name: str) -> dict[str, Any]:
        return {
            "client_name": name,
            "redirect_uris": [self.redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
        }

    def register_client(self, method: str, name: str) -> Client:
        response = self.register(self.client_body(method, name))
        body = json_object(response) if response.status_code in (200, 201) else None
        if body is None or not isinstance(body.get("client_id"), str) or not body["client_id"]:
            why = "no JSON object" if body is None else "no client_id"
            raise RegistrationFailed(
                f"registration of a {method} client failed: {response.status_code}, {why}: {response.text[:200]}"
            )
        return Client(
            body["client_id"],
            self.redirect_uri,
            body.get("client_secret"),
            body.get("token_endpoint_auth_method", method),
        )

    def setup_clients(self, client_id: str | None, client_secret: str | None, register: bool) -> None:
        if client_id is not None:
            method = "client_secret_basic" if client_secret else "none"
            self.primary = Client(client_id, self.redirect_uri, client_secret, method)
            if client_secret:
                self.confidential = self.primary
        can_register = register and isinstance(self.meta.get("registration_endpoint"), str)
        self.may_register = can_register
        if can_register:
            # A refused registration is reported by the registration checks (RG-02), the checks
            # needing that client are n/a: the kit goes on with the clients it has.
            self.primary = self.primary or self._try_register("none", "conformance kit (public)")
            self.second = self._try_register("none", "conformance kit (second)")
            self.confidential = self.confidential or self._try_register(
                "client_secret_basic", "conformance kit (confidential)"
            )
        elif self.primary is None and register:
            value = self.meta.get("registration_endpoint")
            why = "lists no registration_endpoint" if value is None else "has a registration_endpoint that is not a URL"
            wrong = mistyped_members(self.meta)
            raise KitError(
                f"--register: the metadata at {self.meta_source} {why}"
                + (f" ({'; '.join(wrong)})" if wrong else "")
                + ": give --client-id (and --client-secret) instead"
            )
        elif self.primary is None:
            raise KitError("no client: give --client-id (and --client-secret), or --register")

    def _try_register(self, method: str, name: str) -> Client | None:
        try:
            return self.register_client(method, name)
        except RegistrationFailed:
            return None

    def client(self) -> Client:
        """The kit's first client; :class:`Skip` when its registration failed."""
        if self.primary is None:
            raise Skip("no client: its registration failed (RG-02)")
        return self.primary

    def person_completes(self) -> None:
        """:class:`Skip` unless the person step completes a valid authorization: only then does an
        authorization that stays on the server show the server refusing it."""
        params, _ = self.auth_params(self.client())
        outcome = self.attempt(params)
        if self._code_of(outcome) is None:
            raise Skip(f"could not complete the person step for a valid request: {outcome.describe()}")

    def _code_of(self, outcome: Outcome) -> str | None:
        """The code a valid authorization request ended with, noting whether one ever came (and if
        not, how the first one ended)."""
        code = outcome.one("code")
        if code is not None:
            self.authorized = True
        elif self.unauthorized is None:
            self.unauthorized = outcome.describe()
        return code

    # -- authorization ------------------------------------------------------------------

    def auth_params(self, client: Client, **overrides: str | None) -> tuple[dict[str, str], str]:
        verifier = new_verifier()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": client.redirect_uri,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "state": "kit-" + b64url(secrets.token_bytes(6)),
            "scope": " ".join(self.scopes()) or None,
            "resource": self.resource,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}, verifier

    def attempt(self, params: Mapping[str, str] | list[tuple[str, str]], redirect_uri: str | None = None) -> Outcome:
        url = self.endpoint("authorization_endpoint")
        joiner = "&" if "?" in url else "?"
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        full = url + joiner + urlencode(pairs)
        target = redirect_uri or dict(pairs).get("redirect_uri") or self.redirect_uri
        return self._outcome(lambda: self.person(full, target))

    @staticmethod
    def _outcome(step: Callable[[], str]) -> Outcome:
        """The outcome of one run of the person's step: where it ended, or why it stayed."""
        try:
            final = step()
        except PersonError as exc:
            return Outcome(None, exc.status, str(exc))
        except KitError:
            raise
        except Exception as exc:  # a user-supplied person callable gave up
            return Outcome(None, None, f"{type(exc).__name__}: {exc}")
        return Outcome(final)

    def attempt_post(self, params: Mapping[str, str]) -> Outcome:
        """:meth:`attempt` with the request sent by POST. The built-in person, and a ``--person``
        callable with a ``post(endpoint, params, redirect_uri)`` method, go on from the POST's
        answer as from a GET's; a callable without one takes URLs only, so then the POST's first
        answer alone is read: its redirect, or the page it shows (``final`` ``None``, its status)."""
        url = self.endpoint("authorization_endpoint")
        target = params.get("redirect_uri") or self.redirect_uri
        post = person_post(self.person)
        if post is not None:
            return self._outcome(lambda: post(url, list(params.items()), target))
        response = self.http.request("POST", url, data=params)
        location = response.headers.get("location", "")
        if response.status_code in (301, 302, 303, 307, 308) and location.startswith(target):
            return Outcome(location)
        return Outcome(None, response.status_code, f"{response.status_code} (first answer only)")

    def code(self, client: Client, **overrides: str | None) -> tuple[str, str, Outcome]:
        """Authorize and approve; ``(code, verifier, outcome)``, or :class:`Skip` when no code comes."""
        params, verifier = self.auth_params(client, **overrides)
        outcome = self.attempt(params)
        code = self._code_of(outcome)
        if code is None:
            raise Skip(f"could not obtain a code: {outcome.describe()}")
        return code, verifier, outcome

    # -- token endpoint -----------------------------------------------------------------

    def token_request(
        self, client: Client | None, form: Mapping[str, str], *, secret: str | None = None, method: str | None = None
    ) -> httpx.Response:
        data = dict(form)
        auth: tuple[str, str] | None = None
        if client is not None:
            method = method or client.method
            key = secret if secret is not None else (client.secret or "")
            if method == "client_secret_basic":
                auth = (client.client_id, key)
            elif method == "client_secret_post":
                data.update(client_id=client.client_id, client_secret=key)
            else:
                data["client_id"] = client.client_id
        return self.http.request("POST", self.endpoint("token_endpoint"), data=data, auth=auth)

    def redeem(self, client: Client, code: str, verifier: str | None, **overrides: str | None) -> httpx.Response:
        form: dict[str, str | None] = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client.redirect_uri,
            "code_verifier": verifier,
            "resource": self.resource,
        }
        form.update(overrides)
        return self.token_request(client, {k: v for k, v in form.items() if v is not None})

    def refresh(self, client: Client, refresh_token: str, **overrides: str | None) -> httpx.Response:
        form: dict[str, str | None] = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "resource": self.resource,
        }
        form.update(overrides)
        return self.token_request(client, {k: v for k, v in form.items() if v is not None})

    def tokens(self, client: Client, **overrides: str | None) -> Tokens:
        code, verifier, _ = self.code(client, **overrides)
        extra = {"resource": overrides["resource"]} if "resource" in overrides else {}
        response = self.redeem(client, code, verifier, **extra)
        return self.tokens_of(response)

    @staticmethod
    def tokens_of(response: httpx.Response) -> Tokens:
        if response.status_code != 200:
            raise Skip(f"the token endpoint refused a valid redemption: {response.status_code} {response.text[:200]}")
        body = json_object(response)
        if body is None or not isinstance(body.get("access_token"), str):
            raise BadAnswer(f"the token endpoint answered 200 without an access_token: {response.text[:200]}")
        refresh = body.get("refresh_token")  # one that is not a string fails TK-01 and TK-07 where checked
        return Tokens(body["access_token"], refresh if isinstance(refresh, str) else None, body.get("scope"), body)

    # -- revocation, introspection, resource ---------------------------------------------

    def revoke(self, client: Client, token: str, hint: str | None = None) -> httpx.Response:
        form = {"token": token}
        if hint:
            form["token_type_hint"] = hint
        data = dict(form)
        auth = None
        if client.method == "client_secret_basic":
            auth = (client.client_id, client.secret or "")
        elif client.method == "client_secret_post":
            data.update(client_id=client.client_id, client_secret=client.secret or "")
        else:
            data["client_id"] = client.client_id
        return self.http.request("POST", self.endpoint("revocation_endpoint"), data=data, auth=auth)

    def introspection(self, token: str) -> dict[str, Any] | None:
        """The introspection response for ``token`` (asked by the confidential client), or ``None``."""
        url = self.meta.get("introspection_endpoint")
        client = self.confidential
        if not isinstance(url, str) or client is None:
            return None
        response = self.http.request("POST", url, data={"token": token}, auth=(client.client_id, client.secret or ""))
        return json_object(response) if response.status_code == 200 else None

    def introspect(self, token: str) -> bool | None:
        """``active`` of ``token`` by introspection with the confidential client; ``None`` if unavailable."""
        body = self.introspection(token)
        return None if body is None else bool(body.get("active"))

    def call_resource(self, token: str | None, body: Mapping[str, Any] = TOOLS_LIST) -> httpx.Response:
        if self.resource is None:
            raise Skip("no --resource given")
        headers = dict(MCP_HEADERS)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request("POST", self.resource, json_body=dict(body), headers=headers)

    def token_active(self, client: Client, token: str) -> bool | None:
        """Whether an access token still works: introspection, else the resource; ``None`` if unobservable."""
        return self.token_state(client, token)[0]

    def token_state(self, client: Client, token: str) -> tuple[bool | None, str]:
        """:meth:`token_active` and who said so: ``introspection``, ``resource`` or ``""`` (nobody)."""
        active = self.introspect(token) if client is self.confidential else None
        if active is not None:
            return active, "introspection"
        if self.resource is not None and self.resource_served and self.guarded():
            return self.call_resource(token).status_code != 401, "resource"
        return None, ""

    def guarded(self) -> bool:
        """Whether the resource answers a request without a token with 401 (so a 401 means "inactive")."""
        if self._guarded is None:
            self._guarded = self.call_resource(None).status_code == 401
        return self._guarded
