"""An independent OAuth 2.0 authorization server built on Authlib's Flask integration, for the
conformance kit to be run against (tests/test_conformance_peers.py, conformance/compare.py).

What it offers, all from Authlib, configured the way its documentation shows: the authorization
code grant with PKCE required (``CodeChallenge(required=True)``), refresh tokens rotated on use
(``INCLUDE_NEW_REFRESH_TOKEN``) with the old token revoked, dynamic client registration
(RFC 7591, open), revocation (RFC 7009), introspection (RFC 7662), RFC 9068 JWT access tokens,
RFC 9207 ``iss`` on authorization responses, and RFC 8414 metadata. Consent is automatic for the
fixed user ``alice`` (this is a test peer). State lives in memory. Authlib has no RFC 8707
resource indicators or RFC 9728 resource metadata, so it is run without ``--resource``.

    python tests/peers/authlib_server.py --port 9000
"""

from __future__ import annotations

import argparse
import hmac
import secrets
import time
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.jose import JsonWebKey
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask, jsonify, request


class User:
    def get_user_id(self) -> str:
        return "alice"


USER = User()
SCOPES = ["tools:list", "tools:call", "resources:read"]
AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]
CONFIDENTIAL_METHODS = AUTH_METHODS[1:]


class Client(ClientMixin):
    def __init__(self, client_id: str, secret: str | None, metadata: dict[str, Any]) -> None:
        self.client_id = client_id
        self.client_secret = secret
        self.metadata = metadata

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.metadata.get("redirect_uris") or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        allowed = set((self.metadata.get("scope") or " ".join(SCOPES)).split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in (self.metadata.get("redirect_uris") or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.metadata.get("token_endpoint_auth_method", "client_secret_basic")
        return True

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.metadata.get("response_types") or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.metadata.get("grant_types") or ["authorization_code"])


class Code(AuthorizationCodeMixin):
    def __init__(
        self, code: str, client_id: str, redirect_uri: str, scope: str, challenge: str | None, method: str | None
    ) -> None:
        self.code = code
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.user_id = USER.get_user_id()
        self.code_challenge = challenge
        self.code_challenge_method = method
        self.created = time.time()

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class Token(TokenMixin):
    def __init__(self, client: Client, body: dict[str, Any]) -> None:
        self.client = client
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token")
        self.scope = body.get("scope", "")
        self.expires_in = int(body.get("expires_in", 0))
        self.issued_at = int(time.time())
        self.revoked = False

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User:
        return USER

    def get_client(self) -> Client:
        return self.client


class Store:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.tokens: list[Token] = []

    def find(self, value: str, hint: str | None = None) -> Token | None:
        for token in self.tokens:
            if hint != "refresh_token" and token.access_token == value:
                return token
            if hint != "access_token" and token.refresh_token == value:
                return token
        return None


def create_app(issuer: str) -> Flask:
    app = Flask(__name__)
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    store = Store()
    key = JsonWebKey.generate_key("RSA", 2048, {"kid": "peer-1", "alg": "RS256", "use": "sig"}, is_private=True)
    jwks = {"keys": [key.as_dict(is_private=True)]}

    class JwtTokens(JWTBearerTokenGenerator):
        def get_jwks(self) -> dict[str, Any]:
            return jwks

    def query_client(client_id: str) -> Client | None:
        return store.clients.get(client_id)

    def save_token(body: dict[str, Any], req: Any) -> None:
        store.tokens.append(Token(req.client, body))

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator(
        "default", JwtTokens(issuer, refresh_token_generator=lambda *a, **k: secrets.token_urlsafe(32))
    )

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

        def save_authorization_code(self, code: str, req: Any) -> None:
            store.codes[code] = Code(
                code,
                req.client.client_id,
                req.payload.redirect_uri,
                req.payload.scope or "",
                req.payload.data.get("code_challenge"),
                req.payload.data.get("code_challenge_method"),
            )

        def query_authorization_code(self, code: str, client: Client) -> Code | None:
            item = store.codes.get(code)
            if item and item.client_id == client.client_id and time.time() - item.created < 300:
                return item
            return None

        def delete_authorization_code(self, item: Code) -> None:
            store.codes.pop(item.code, None)

        def authenticate_user(self, item: Code) -> User:
            return USER

    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
            token = store.find(refresh_token, "refresh_token")
            return token if token and not token.revoked else None

        def authenticate_user(self, token: Token) -> User:
            return USER

        def revoke_old_credential(self, token: Token) -> None:
            token.revoked = True

    class Revocation(RevocationEndpoint):
        CLIENT_AUTH_METHODS = AUTH_METHODS

        def query_token(self, value: str, hint: str | None) -> Token | None:
            return store.find(value, hint)

        def revoke_token(self, token: Token, req: Any) -> None:
            token.revoked = True

    class Introspection(IntrospectionEndpoint):
        CLIENT_AUTH_METHODS = CONFIDENTIAL_METHODS

        def query_token(self, value: str, hint: str | None) -> Token | None:
            return store.find(value, hint)

        def introspect_token(self, token: Token) -> dict[str, Any]:
            return {
                "active": True,
                "client_id": token.client.client_id,
                "token_type": "Bearer",
                "scope": token.scope,
                "sub": USER.get_user_id(),
                "iss": issuer,
                "iat": token.issued_at,
                "exp": token.issued_at + token.expires_in,
            }

        def check_permission(self, token: Token, client: Client, req: Any) -> bool:
            return True

    class Registration(ClientRegistrationEndpoint):
        def authenticate_token(self, req: Any) -> bool:
            return True  # open registration

        def get_server_metadata(self) -> dict[str, Any]:
            return metadata()

        def save_client(self, info: dict[str, Any], meta: dict[str, Any], req: Any) -> Client:
            meta.setdefault("token_endpoint_auth_method", "client_secret_basic")
            secret = None if meta["token_endpoint_auth_method"] == "none" else info["client_secret"]
            client = Client(info["client_id"], secret, meta)
            store.clients[client.client_id] = client
            return client

    class Issuer(IssuerParameter):
        def get_issuer(self) -> str:
            return issuer

    server.register_grant(CodeGrant, [CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    server.register_endpoint(Registration)
    server.register_extension(Issuer())

    def metadata() -> dict[str, Any]:
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "jwks_uri": f"{issuer}/jwks.json",
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "authorization_response_iss_parameter_supported": True,
        }

    @app.get("/.well-known/oauth-authorization-server")
    @app.get("/.well-known/openid-configuration")
    def well_known() -> Any:
        return jsonify(metadata())

    @app.get("/jwks.json")
    def jwks_document() -> Any:
        return jsonify({"keys": [key.as_dict(is_private=False)]})

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        try:
            grant = server.get_consent_grant(end_user=USER)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return server.create_authorization_response(grant_user=USER, grant=grant)

    @app.post("/token")
    def issue_token() -> Any:
        return server.create_token_response()

    @app.post("/revoke")
    def revoke() -> Any:
        return server.create_endpoint_response("revocation")

    @app.post("/introspect")
    def introspect() -> Any:
        return server.create_endpoint_response("introspection")

    @app.post("/register")
    def register() -> Any:
        return server.create_endpoint_response("client_registration")

    _ = request  # Flask's request proxy is what Authlib reads
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    create_app(issuer).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
