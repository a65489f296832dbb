"""(c) The authorization server in process: complete flows per second.

One flow: authorization request (PKCE S256, ``resource``, ``scope``, ``state``) -> the person
approves -> code redeemed at the token endpoint -> one refresh (with rotation). Public client
(``token_endpoint_auth_method=none``), ES256 JWT access tokens, in-memory storage. No HTTP and no
sockets for anyone. Every server is handed each request as a server hands it on: method, path,
the query string as sent, headers and the body's bytes (a form urlencoded per request), and
parses it itself:

- **kavach**: the core's router and ``authorize.approve`` on the
  :class:`~kavach_core.http.HttpRequest` its adapters build (:func:`kavach.server.incoming`, the
  query parsed there), driven by ``run`` against :class:`~kavach_core.memory_store.MemoryStore`
  (what every adapter does per request).
- **Authlib** (Flask integration, the one most Authlib servers use): each step runs inside
  ``app.request_context(environ)`` with the WSGI environ a server would pass (a Werkzeug
  request, no WSGI round trip) calling the
  server's ``get_consent_grant`` / ``create_authorization_response`` / ``create_token_response``;
  grants are Authlib's ``AuthorizationCodeGrant`` with ``CodeChallenge(required=True)`` and
  ``RefreshTokenGrant`` (rotation on); dict storage; ES256 JWT access tokens signed with joserfc.
- **MCP Python SDK**: its ``AuthorizationHandler`` and ``TokenHandler`` called with Starlette
  ``Request`` objects built from an ASGI scope; a minimal dict-backed
  ``OAuthAuthorizationServerProvider`` that approves at ``authorize`` (so authorize+approve is
  one step there) and signs ES256 JWT access tokens with PyJWT. One ``run_until_complete`` per
  batch of flows.
"""

# ruff: noqa: S311 -- seeded generators make every process derive the same benchmark keys; nothing here is a secret.

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import secrets
import sys
import time
import warnings
from typing import Any
from urllib.parse import quote_plus, unquote_plus, urlencode

from kavach_core import effects as fx
from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import run
from kavach_core.endpoints import authorize
from kavach_core.memory_store import MemoryStore
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.records import Client
from kavach_core.router import route

from .common import fmt_ratio, interleaved, table

ISSUER = "https://as.example.com"
RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
VERIFIER = "v" * 20 + secrets.token_urlsafe(32)
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
SCOPE = "tools:list tools:call"
FORM = (("Content-Type", "application/x-www-form-urlencoded"),)

AUTHORIZE = {
    "response_type": "code",
    "client_id": "c1",
    "redirect_uri": REDIRECT,
    "code_challenge": CHALLENGE,
    "code_challenge_method": "S256",
    "state": "xyz",
    "scope": SCOPE,
    "resource": RESOURCE,
}
"""The authorization request every server gets (PKCE S256, one resource)."""


def code_form(code: str, *, resource: bool = True) -> dict[str, str]:
    """The token request redeeming ``code`` (RFC 6749 §4.1.3, the PKCE verifier, the RFC 8707 resource)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        "client_id": "c1",
    }
    return {**form, "resource": RESOURCE} if resource else form


def refresh_form(refresh_token: str) -> dict[str, str]:
    """The refresh request (RFC 6749 §6) of the public client ``c1``."""
    return {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "c1"}


def code_in(location: str) -> str:
    """The ``code`` parameter of a redirect's query (RFC 6749 §4.1.2), as the client reads it: the
    first ``code=`` field, ``+`` and escapes decoded; ``KeyError`` without one. ``parse_qs`` gives
    the same at about eight times the cost (8 us against 1 us here), which every server's timed
    flow would pay alike."""
    query = location.partition("?")[2].partition("#")[0]
    for field in query.split("&"):
        if field.startswith("code="):
            return unquote_plus(field[5:])
    raise KeyError("code")


def _constant_fields(form: dict[str, str]) -> str:
    return "&" + urlencode([(k, v) for k, v in form.items() if k not in ("grant_type", "code")])


_CODE_TAILS = {True: _constant_fields(code_form("")), False: _constant_fields(code_form("", resource=False))}


def code_body(code: str, *, resource: bool = True) -> bytes:
    """``urlencode(code_form(code, resource=resource)).encode()``, byte for byte, with the fields
    that never change encoded once: the client's work per flow, which every server's timed flow
    pays alike, kept to quoting the code (1.4 us here, against 20 us for ``urlencode``)."""
    return ("grant_type=authorization_code&code=" + quote_plus(code) + _CODE_TAILS[resource]).encode()


def refresh_body(refresh_token: str) -> bytes:
    """``urlencode(refresh_form(refresh_token)).encode()``, byte for byte (see :func:`code_body`)."""
    return ("grant_type=refresh_token&refresh_token=" + quote_plus(refresh_token) + "&client_id=c1").encode()


PEER = "127.0.0.1"
"""The client's address, as a server knows it."""


def wsgi_environ(method: str, path: str, query: str = "", body: bytes = b"") -> dict[str, Any]:
    """The WSGI environ a server hands an application for this request (PEP 3333): what Authlib's
    Flask integration reads each request from, as kavach's adapters read the framework's parts."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "as.example.com",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": PEER,
        "HTTP_HOST": "as.example.com",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if body:
        environ["CONTENT_TYPE"] = FORM[0][1]
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


# -- kavach ------------------------------------------------------------------------------------


class Kavach:
    def __init__(self) -> None:
        self.config = Config(
            issuer=ISSUER, resources=[ProtectedResource(RESOURCE)], secret=b"s" * 32, signing_alg="ES256"
        )
        self.store = MemoryStore()
        self.rng = random.Random(1)
        self.store.perform(fx.PutClient(Client("c1", (REDIRECT,))))
        self.paths = self.config.paths
        self.query = urlencode(AUTHORIZE).encode()
        from kavach.server import incoming  # the adapters' translation, imported once, not per flow

        self.incoming = incoming

    def ctx(self) -> Context:
        return Context(self.config, int(time.time()), self.rng.randbytes)

    def flow(self) -> None:
        incoming = self.incoming
        asked = incoming("GET", self.paths.authorization, self.query, (), b"", PEER)
        consent = run(route(self.ctx(), asked), self.store)
        assert isinstance(consent, ConsentRequired)
        redirect = run(authorize.approve(self.ctx(), consent.ticket, "alice"), self.store)
        body = code_body(code_in(redirect.header("Location") or ""))
        tokens = run(route(self.ctx(), incoming("POST", self.paths.token, b"", FORM, body, PEER)), self.store).json()
        body = refresh_body(tokens["refresh_token"])
        refreshed = run(route(self.ctx(), incoming("POST", self.paths.token, b"", FORM, body, PEER)), self.store)
        assert refreshed.status == 200, refreshed.body


# -- Authlib ----------------------------------------------------------------------------------


class AuthlibServer:
    def __init__(self) -> None:
        from authlib.deprecate import AuthlibDeprecationWarning
        from authlib.integrations.flask_oauth2 import AuthorizationServer
        from authlib.oauth2.rfc6749 import grants
        from authlib.oauth2.rfc6750 import BearerTokenGenerator
        from authlib.oauth2.rfc7636 import CodeChallenge
        from cryptography.hazmat.primitives.asymmetric import ec
        from flask import Flask
        from joserfc import jwk, jwt

        key = jwk.ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
        kid = key.thumbprint()
        codes: dict[str, dict[str, Any]] = {}
        refresh: dict[str, dict[str, Any]] = {}

        class User:
            def get_user_id(self) -> str:
                return "alice"

        user = User()

        class ClientModel:
            client_id = "c1"

            def get_client_id(self) -> str:
                return "c1"

            def get_default_redirect_uri(self) -> str:
                return REDIRECT

            def get_allowed_scope(self, scope: str) -> str:
                return scope

            def check_redirect_uri(self, uri: str) -> bool:
                return uri == REDIRECT

            def check_client_secret(self, secret: str) -> bool:
                return False

            def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
                return method == "none"

            def check_response_type(self, rt: str) -> bool:
                return rt == "code"

            def check_grant_type(self, gt: str) -> bool:
                return gt in ("authorization_code", "refresh_token")

        client = ClientModel()

        class Code:
            def __init__(self, data: dict[str, Any]) -> None:
                self.data = data

            def get_redirect_uri(self) -> str:
                return self.data["redirect_uri"]

            def get_scope(self) -> str:
                return self.data["scope"]

            def get_nonce(self) -> None:
                return None

            def get_auth_time(self) -> int:
                return self.data["auth_time"]

            def get_acr(self) -> None:
                return None

            def get_amr(self) -> None:
                return None

            def is_expired(self) -> bool:
                return time.time() > self.data["expires_at"]

            @property
            def code_challenge(self) -> str:
                return self.data["code_challenge"]

            @property
            def code_challenge_method(self) -> str:
                return self.data["code_challenge_method"]

        class Token:
            def __init__(self, data: dict[str, Any]) -> None:
                self.data = data

            def check_client(self, c: Any) -> bool:
                return c.get_client_id() == self.data["client_id"]

            def get_scope(self) -> str:
                return self.data["scope"]

            def get_expires_in(self) -> int:
                return 1209600

            def is_expired(self) -> bool:
                return False

            def is_revoked(self) -> bool:
                return self.data.get("revoked", False)

        class CodeGrant(grants.AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 -- Authlib's own spelling

            def save_authorization_code(self, code: str, request: Any) -> None:
                codes[code] = {
                    "client_id": "c1",
                    "redirect_uri": request.payload.redirect_uri,
                    "scope": request.payload.scope,
                    "code_challenge": request.payload.data.get("code_challenge"),
                    "code_challenge_method": request.payload.data.get("code_challenge_method"),
                    "auth_time": int(time.time()),
                    "expires_at": time.time() + 60,
                }

            def query_authorization_code(self, code: str, c: Any) -> Code | None:
                data = codes.get(code)
                return Code(data) if data and data["client_id"] == c.get_client_id() else None

            def delete_authorization_code(self, code: Code) -> None:
                codes.pop(next(k for k, v in codes.items() if v is code.data), None)

            def authenticate_user(self, code: Code) -> User:
                return user

        class RefreshGrant(grants.RefreshTokenGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["none"]  # noqa: RUF012 -- Authlib's own spelling
            INCLUDE_NEW_REFRESH_TOKEN = True

            def authenticate_refresh_token(self, token: str) -> Token | None:
                data = refresh.get(token)
                return Token(data) if data and not data.get("revoked") else None

            def authenticate_user(self, token: Token) -> User:
                return user

            def revoke_old_credential(self, token: Token) -> None:
                token.data["revoked"] = True

        def save_token(token: dict[str, Any], request: Any) -> None:
            if "refresh_token" in token:
                refresh[token["refresh_token"]] = {"client_id": "c1", "scope": token.get("scope", "")}

        def access_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
            now = int(time.time())
            claims = {
                "iss": ISSUER,
                "sub": user.get_user_id(),
                "aud": RESOURCE,
                "client_id": client.get_client_id(),
                "scope": scope,
                "iat": now,
                "exp": now + 600,
                "jti": secrets.token_urlsafe(16),
            }
            return jwt.encode({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims, key)

        def refresh_token(client: Any, grant_type: str, user: Any, scope: str) -> str:
            return secrets.token_urlsafe(32)

        self.app = Flask("authlib-bench")
        self.server = AuthorizationServer(
            self.app, query_client=lambda cid: client if cid == "c1" else None, save_token=save_token
        )
        self.server.register_token_generator("default", BearerTokenGenerator(access_token, refresh_token))
        self.server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        self.server.register_grant(RefreshGrant)
        self.user = user
        self.query = urlencode(AUTHORIZE)
        # Authlib 1.9 warns on every grant ("The 'grant' parameter will become mandatory"): silenced
        # once here, after Authlib's own filter, not timed with each flow.
        warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)

    def flow(self) -> None:
        app, server = self.app, self.server
        with app.request_context(wsgi_environ("GET", "/authorize", self.query)):
            server.get_consent_grant(end_user=self.user)
        with app.request_context(wsgi_environ("POST", "/authorize", self.query)):
            location = server.create_authorization_response(grant_user=self.user).headers["Location"]
        body = code_body(code_in(location), resource=False)
        with app.request_context(wsgi_environ("POST", "/token", body=body)):
            tokens = server.create_token_response().get_json()
        body = refresh_body(tokens["refresh_token"])
        with app.request_context(wsgi_environ("POST", "/token", body=body)):
            response = server.create_token_response()
        assert response.status_code == 200, response.get_data()


# -- MCP Python SDK ---------------------------------------------------------------------------


class McpSdk:
    def __init__(self) -> None:
        import jwt as pyjwt
        from cryptography.hazmat.primitives.asymmetric import ec
        from mcp.server.auth.handlers.authorize import AuthorizationHandler
        from mcp.server.auth.handlers.token import TokenHandler
        from mcp.server.auth.middleware.client_auth import ClientAuthenticator
        from mcp.server.auth.provider import AccessToken, AuthorizationCode, RefreshToken, construct_redirect_uri
        from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

        key = ec.generate_private_key(ec.SECP256R1())
        client = OAuthClientInformationFull(
            client_id="c1",
            redirect_uris=[REDIRECT],
            token_endpoint_auth_method="none",
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            scope=SCOPE,
        )

        class Provider:
            def __init__(self) -> None:
                self.codes: dict[str, AuthorizationCode] = {}
                self.refresh: dict[str, RefreshToken] = {}
                self.access: dict[str, AccessToken] = {}

            async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
                return client if client_id == "c1" else None

            async def register_client(self, info: OAuthClientInformationFull) -> None:
                raise NotImplementedError

            async def authorize(self, c: OAuthClientInformationFull, params: Any) -> str:
                code = secrets.token_urlsafe(32)
                self.codes[code] = AuthorizationCode(
                    code=code,
                    scopes=params.scopes or [],
                    expires_at=time.time() + 60,
                    client_id=c.client_id or "",
                    code_challenge=params.code_challenge,
                    redirect_uri=params.redirect_uri,
                    redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
                    resource=params.resource,
                    subject="alice",
                )
                return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state)

            async def load_authorization_code(self, c: Any, code: str) -> AuthorizationCode | None:
                return self.codes.get(code)

            def _tokens(self, c: Any, scopes: list[str], resource: str | None) -> OAuthToken:
                now = int(time.time())
                claims = {
                    "iss": ISSUER,
                    "sub": "alice",
                    "aud": resource or RESOURCE,
                    "client_id": c.client_id,
                    "scope": " ".join(scopes),
                    "iat": now,
                    "exp": now + 600,
                    "jti": secrets.token_urlsafe(16),
                }
                access = pyjwt.encode(claims, key, algorithm="ES256", headers={"typ": "at+jwt", "kid": "k1"})
                refresh = secrets.token_urlsafe(32)
                self.refresh[refresh] = RefreshToken(
                    token=refresh, client_id=c.client_id, scopes=scopes, resource=resource, subject="alice"
                )
                return OAuthToken(
                    access_token=access,
                    token_type="Bearer",
                    expires_in=600,
                    scope=" ".join(scopes),
                    refresh_token=refresh,
                )

            async def exchange_authorization_code(self, c: Any, code: AuthorizationCode) -> OAuthToken:
                del self.codes[code.code]
                return self._tokens(c, code.scopes, code.resource)

            async def load_refresh_token(self, c: Any, token: str) -> RefreshToken | None:
                return self.refresh.get(token)

            async def exchange_refresh_token(self, c: Any, token: RefreshToken, scopes: list[str]) -> OAuthToken:
                del self.refresh[token.token]
                return self._tokens(c, scopes or token.scopes, token.resource)

            async def load_access_token(self, token: str) -> AccessToken | None:
                return None

            async def revoke_token(self, token: Any) -> None:
                return None

        self.provider = Provider()
        self.authorize = AuthorizationHandler(self.provider)  # type: ignore[arg-type]
        self.token = TokenHandler(self.provider, ClientAuthenticator(self.provider))  # type: ignore[arg-type]
        self.query = urlencode(AUTHORIZE).encode()
        self.loop = asyncio.new_event_loop()

    @staticmethod
    def request(method: str, path: str, query: bytes = b"", body: bytes = b"") -> Any:
        from starlette.requests import Request

        headers = [(b"host", b"as.example.com")]
        if body:
            headers.append((b"content-type", b"application/x-www-form-urlencoded"))
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": query,
            "headers": headers,
            "scheme": "https",
            "server": ("as.example.com", 443),
            "root_path": "",
            "http_version": "1.1",
        }
        sent = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return sent.pop() if sent else {"type": "http.disconnect"}

        return Request(scope, receive)

    async def aflow(self) -> None:
        response = await self.authorize.handle(self.request("GET", "/authorize", self.query))
        body = code_body(code_in(response.headers["location"]))
        tokens = json.loads((await self.token.handle(self.request("POST", "/token", body=body))).body)
        body = refresh_body(tokens["refresh_token"])
        response = await self.token.handle(self.request("POST", "/token", body=body))
        assert response.status_code == 200, response.body

    def flows(self, n: int) -> None:
        async def many() -> None:
            for _ in range(n):
                await self.aflow()

        self.loop.run_until_complete(many())


def in_process(quick: bool = False) -> dict[str, Any]:
    rounds, batch = (2, 1) if quick else (41, 20)
    ours, authlib_server, sdk = Kavach(), AuthlibServer(), McpSdk()

    def batched(fn: Any) -> Any:
        def go() -> None:
            for _ in range(batch):
                fn()

        return go

    variants = {
        "kavach": batched(ours.flow),
        "Authlib (Flask integration)": batched(authlib_server.flow),
        "MCP SDK handlers": lambda: sdk.flows(batch),
    }
    result = interleaved(variants, baseline="Authlib (Flask integration)", rounds=rounds, number=1)
    for r in result.values():
        r["flows_per_s"] = r["ops_per_s"] * batch
    sdk.loop.close()
    return result


def report(result: dict[str, Any]) -> str:
    base = result["Authlib (Flask integration)"]["flows_per_s"]
    rows = [
        [
            name,
            f"{r['flows_per_s']:.0f}",
            fmt_ratio(
                {k: 1 / v for k, v in r["ratio"].items()} | {"min": 1 / r["ratio"]["max"], "max": 1 / r["ratio"]["min"]}
            ),
            f"{r['flows_per_s'] / base:.2f}x",
        ]
        for name, r in result.items()
    ]
    return table(
        "c. authorization server in process: flows/s (authorize, approve, token, refresh; ES256)",
        ["server", "flows/s", "speed vs Authlib [min-max]", "flows/s ratio"],
        rows,
    )
