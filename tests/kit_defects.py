"""``kavach serve`` misbehaving on the wire, for the conformance kit's robustness tests
(tests/test_conformance_kit.py): answers that hang, trickle, are huge, malformed, rate-limited,
random or full of terminal escapes.

    python tests/kit_defects.py DEFECT serve --port P --db FILE

Wraps the ASGI application ``kavach serve`` builds in a middleware that applies DEFECT to some
requests; everything else reaches kavach unchanged. ``escape``, ``no_refresh`` and others
rewrite kavach's own JSON answers; ``token_get_json``, ``pkce_default_plain`` and
``scope_widened`` rewrite the request kavach sees. Besides the wire, some of these are protocol
defects the kit must report under their rule (a false pass of the kit otherwise). DEFECT may name
several of the later ones joined by ``+`` (``cc_public+no_cors_rest``), each applied as alone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote_plus, urlencode, urlsplit

from kavach.starlette import read_body

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
Answer = tuple[int, str, bytes] | None
Headers = list[tuple[bytes, bytes]]

ESCAPE = "\x1b[2J\x1b[31mPWNED\x1b[0m\nAZ-02   pass    injected line"
METADATA = "/.well-known/oauth-authorization-server"
DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested too deeply for Python's recursive decoder (200 kB, well under the kit's 1 MiB)."""
ATTACKER = "https://attacker.conformance.invalid"
TOKENS = b'{"access_token": "defect-token", "token_type": "Bearer"}'
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post")
TOKEN_FORM_DEFECTS = {"token_resource_ignored", "refresh_scope_widened", "refresh_scope_ignored"}
"""The defects rewriting a token request's form."""
RESPONSE_DEFECTS = {"iss_dropped", "error_state_dropped", "state_decoded_twice"}
"""The defects rewriting the authorization response (``Defect.redirect``)."""
CATALOGUE = ("tools:list", "tools:call", "resources:list", "resources:read", "prompts:list", "prompts:get")


def s256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=").decode()


async def hang() -> Answer:
    await asyncio.sleep(3600)
    return None


def _form(body: bytes) -> dict[str, str] | None:
    """A form body's fields (the last of a repeated one), or None when it is not UTF-8: such a body
    goes to kavach as sent, whatever defect is on."""
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        return None


class Defect:
    """Decides, per request, an answer of its own (status, content type, body), or ``None``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.names = set(name.split("+"))
        self.codes: set[str] = set()
        self.owners: dict[str, str] = {}
        """The public client each refresh token was issued to (``revoke_any_client``)."""
        self.secrets: dict[str, str] = {}
        """Each registered client's secret (``introspect_any_secret``)."""
        self.issued: set[str] = set()
        """Every access and refresh token the token endpoint answered with (``revoke_unknown_refused``)."""
        self.registrations = itertools.count(1)
        self.metadata = itertools.count(1)
        """Metadata requests: the first (tests/kavach_serve.py's readiness probe) is answered as it should."""
        self.authorizing: dict[str, str] = {}
        """The parameters of the latest authorization request naming a client (as the client sent them)."""
        self.authorized: dict[str, dict[str, str]] = {}
        """Each code kavach issued: the authorization request it answers (``code_any_client`` and others)."""
        self.redeemed: set[str] = set()
        """Every code kavach issued that was sent to the token endpoint (``replay_refused_only``)."""
        self.registered: set[str] = set()
        """Every redirect URI registered (``loopback_port_fixed``)."""
        self.rotated: set[str] = set()
        """Every refresh token kavach rotated (``refresh_replay_refused_only``)."""
        self.successors: set[str] = set()
        """Every refresh token a refresh answered with (``second_rotation_refused``)."""
        self.basic_wrong = False
        """Whether the request being answered has Basic credentials with a wrong secret (``basic_wrong_400``)."""
        self.authorization = False
        """Whether the request being answered has an Authorization header (``introspect_open``)."""
        self.clients: set[str] = set()
        """Every client_id registration answered with (``unknown_client_redirected``)."""

    async def answer(self, method: str, path: str, form: dict[str, list[str]], posted: dict[str, list[str]]) -> Answer:
        one = {k: v[0] for k, v in form.items()}
        grant = one.get("grant_type")
        public = "client_id" in posted and "client_secret" not in posted
        replayed = grant == "refresh_token" and one.get("refresh_token") in self.rotated
        if self.name == "hang_plain" and path == "/authorize" and one.get("code_challenge_method") == "plain":
            return await hang()
        if self.name == "hang_token_replay" and grant == "authorization_code":
            if one.get("code") in self.codes:
                return await hang()
            self.codes.add(one.get("code", ""))
        if self.name == "hang_refresh" and grant == "refresh_token":
            return await hang()
        if path == "/register" and method == "POST":
            number = next(self.registrations)
            if self.name == "reg_html":
                return 201, "text/html", b"<html>created</html>"
            if self.name == "reg_noid":
                return 201, "application/json", b'{"ok": true}'
            if self.name == "reg_429_third" and number >= 3:
                return 429, "application/json", b'{"error": "slow_down"}'
        if self.name == "token_html" and grant == "authorization_code":
            return 200, "text/html", b"<html>ok</html>"
        if self.name == "refresh_flaky" and grant == "refresh_token" and random.random() < 0.5:
            return 400, "application/json", b'{"error": "invalid_grant"}'
        if self.name == "huge_meta" and path == METADATA and next(self.metadata) > 1:
            return 200, "application/json", json.dumps({"padding": "A" * (2 << 20)}).encode()
        if self.name == "deep_meta" and path == METADATA and next(self.metadata) > 1:
            return 200, "application/json", DEEP
        if self.name == "deep_register" and path == "/register":
            return 201, "application/json", DEEP
        if self.name == "html_redirect" and path == "/authorize" and one.get("redirect_uri", "").startswith(ATTACKER):
            # A 200 page that sends the browser to the unregistered URI with a code all the same.
            target = one["redirect_uri"] + "?" + urlencode({"code": "LEAKED-CODE", "state": one.get("state", "")})
            page = f'<html><head><meta http-equiv="refresh" content="0;url={target}"></head><body>...</body></html>'
            return 200, "text/html", page.encode()
        if self.name == "no_post_authorize" and path == "/authorize" and "response_type" in posted:
            return 405, "application/json", b'{"error": "invalid_request", "error_description": "GET only"}'
        if "revoke_access_ignored" in self.names and path == "/revoke" and one.get("token", "").count(".") == 2:
            return 200, "application/json", b""  # an access token's revocation answered, never done
        unknown_client = path == "/authorize" and "redirect_uri" in one and one.get("client_id") not in self.clients
        if "unknown_client_redirected" in self.names and unknown_client:
            # AZ-02: an error sent to a redirect URI no registered client vouches for.
            target = one["redirect_uri"] + "?" + urlencode({"error": "invalid_client", "state": one.get("state", "")})
            page = f'<html><head><meta http-equiv="refresh" content="0;url={target}"></head></html>'
            return 200, "text/html", page.encode()
        if "no_oidc" in self.names and path == "/.well-known/openid-configuration":
            return 404, "application/json", b'{"error": "not_found"}'  # MD-01: the OIDC discovery document
        refresh = one.get("token_type_hint") == "refresh_token"
        if "revoke_refresh_ignored" in self.names and path == "/revoke" and refresh:
            return 200, "application/json", b""  # RV-01: a refresh token's revocation answered, never done
        if "revoke_refresh_refused" in self.names and path == "/revoke" and refresh:
            return 400, "application/json", b'{"error": "invalid_request"}'  # RV-01: 200 for its own client
        unregistered = path == "/authorize" and one.get("redirect_uri") not in (None, *self.registered)
        if "loopback_port_fixed" in self.names and unregistered and one.get("client_id") in self.clients:
            return 400, "text/html", b"<html>unregistered redirect_uri</html>"  # AZ-03: the port may vary
        if "replay_refused_only" in self.names and grant == "authorization_code" and one.get("code") in self.authorized:
            if one["code"] in self.redeemed:  # TK-04: refused, the tokens already issued left working
                return 400, "application/json", b'{"error": "invalid_grant"}'
            self.redeemed.add(one["code"])
        if "introspect_open" in self.names and path == "/introspect" and not self.authorization and public is False:
            return 200, "application/json", b'{"active": false}'  # IN-01: anyone may introspect
        secret = self.secrets.get(one.get("client_id", ""))
        wrong_secret = secret is not None and "client_secret" in posted and one["client_secret"] != secret
        if "secret_post_unchecked" in self.names and path == "/token" and wrong_secret:
            return 200, "application/json", TOKENS  # TK-02: any client_secret_post secret accepted
        if "secret_post_unaccepted" in self.names and path == "/token" and "client_secret" in posted:
            return 401, "application/json", b'{"error": "invalid_client"}'  # TK-02: a method listed, refused
        if self.names & {"superseded_accepted", "refresh_not_rotated_wire"} and replayed:
            return 200, "application/json", TOKENS  # TK-07: a superseded refresh token honoured
        successor = grant == "refresh_token" and one.get("refresh_token") in self.successors
        if "second_rotation_refused" in self.names and successor:
            return 400, "application/json", b'{"error": "invalid_grant"}'  # TK-07: a rotated-in token refused
        if "valid_token_refused" in self.names and path == "/mcp" and self.authorization:
            return 403, "application/json", b'{"error": "forbidden"}'  # RS-02: a valid token refused
        if "basic_wrong_400" in self.names and path == "/token" and self.basic_wrong:
            return 400, "application/json", b'{"error": "invalid_client"}'  # TK-02: 401 to Basic credentials
        if "refresh_replay_refused_only" in self.names and replayed:
            return 400, "application/json", b'{"error": "invalid_grant"}'  # TK-07: the token family left working
        if "prm_missing" in self.names and path.startswith("/.well-known/oauth-protected-resource"):
            return 404, "application/json", b'{"error": "not_found"}'  # MD-03: no protected resource metadata
        if "implicit_invalid_grant" in self.names and grant == "implicit":
            return 400, "application/json", b'{"error": "invalid_grant"}'  # TK-08: unsupported_grant_type
        if "unknown_grant_500" in self.names and grant == "urn:conformance:unknown-grant":
            return 500, "application/json", b'{"error": "unsupported_grant_type"}'  # TK-08: a 400
        if "password_grant" in self.names and grant == "password":
            return 200, "application/json", TOKENS  # TK-08: the password grant honoured
        if "verifier_optional" in self.names and grant == "authorization_code" and "code_verifier" not in one:
            return 200, "application/json", TOKENS  # TK-03: a code redeemed without its code_verifier
        unchallenged = "code_challenge" not in self.authorized.get(one.get("code", ""), {"code_challenge": ""})
        if "pkce_optional" in self.names and grant == "authorization_code" and unchallenged:
            return 200, "application/json", TOKENS  # TK-03: a code issued without a challenge redeemed at all
        if "cc_public" in self.names and grant == "client_credentials":
            return 200, "application/json", b'{"access_token": "cc-token", "token_type": "Bearer"}'
        if "revoke_unknown_refused" in self.names and path == "/revoke" and one.get("token") not in self.issued:
            return 400, "application/json", b'{"error": "invalid_request"}'  # RFC 7009 §2.2: 200 for these
        if "introspect_public" in self.names and path == "/introspect" and public:
            # A client_id alone taken as authentication: the token's data shown.
            data = {"active": True, "client_id": one["client_id"], "sub": "alice", "scope": "tools:list"}
            return 200, "application/json", json.dumps(data).encode()
        rest = ("/register", "/revoke", "/introspect", "/jwks.json")
        if "no_cors_rest" in self.names and method == "OPTIONS" and path in rest:
            return 204, "text/plain", b""  # a preflight answered without Access-Control-Allow-Origin
        return None

    def request(self, method: str, path: str, query: bytes, body: bytes) -> tuple[str, bytes, bytes]:
        """The request kavach sees instead: (method, query string, form body)."""
        pairs = parse_qsl(query.decode(), keep_blank_values=True)
        one = dict(pairs)
        repeated = len(one) != len(pairs)
        if path == "/authorize":
            asked = one | dict(parse_qsl(body.decode(errors="replace")))
            if "client_id" in asked:
                self.authorizing = asked
        if "token_get_json" in self.names and path == "/token":
            if method == "GET":  # the query taken as the form
                return "POST", b"", query
            if body.startswith(b"{"):  # a JSON body taken as the form
                return method, query, urlencode(json.loads(body)).encode()
        if "duplicates_ignored" in self.names and path == "/authorize" and method == "GET" and repeated:
            return method, urlencode(one).encode(), body  # AZ-01: a parameter given twice, its last value taken
        if path == "/authorize" and method == "GET" and not repeated:
            if self.name == "pkce_default_plain" and one.get("code_challenge") and "code_challenge_method" not in one:
                # RFC 7636's default ("plain") applied: the verifier is the challenge itself.
                one |= {"code_challenge": s256(one["code_challenge"]), "code_challenge_method": "S256"}
                return method, urlencode(one).encode(), body
            if self.name == "scope_widened" and set(one.get("scope", "-").split()) <= set(CATALOGUE):
                return method, urlencode(one | {"scope": " ".join(CATALOGUE)}).encode(), body
            if "plain_accepted" in self.names and one.get("code_challenge_method") == "plain":
                # AZ-05: code_challenge_method=plain honoured (kavach given the challenge's S256 form).
                one |= {"code_challenge": s256(one.get("code_challenge", "")), "code_challenge_method": "S256"}
                return method, urlencode(one).encode(), body
            if "token_as_code" in self.names and one.get("response_type") == "token":
                return method, urlencode(one | {"response_type": "code"}).encode(), body  # AZ-04: a code all the same
            if "unknown_scope_dropped" in self.names and "scope" in one:  # AZ-07: only the known scopes asked
                scope = " ".join(s for s in one["scope"].split() if s in CATALOGUE)
                if scope != one["scope"]:
                    return method, urlencode(one | {"scope": scope}).encode(), body
            resource = one.get("resource")
            foreign = resource is not None and (urlsplit(resource).hostname != "127.0.0.1" or "#" in resource)
            if "resource_unchecked" in self.names and foreign:
                # AZ-06: a resource this server does not protect (or not a resource at all) ignored.
                return method, urlencode({k: v for k, v in one.items() if k != "resource"}).encode(), body
            if "pkce_optional" in self.names and "code_challenge" not in one:
                # AZ-05: a code issued without a challenge (kavach given one of its own; see answer).
                one |= {"code_challenge": s256("pkce-optional" * 4), "code_challenge_method": "S256"}
                return method, urlencode(one).encode(), body
        if "uris_unchecked" in self.names and path == "/register" and body.startswith(b"{"):
            # Only client_uri checked: logo_uri, tos_uri and policy_uri registered whatever they are.
            record = {k: v for k, v in json.loads(body).items() if k not in ("logo_uri", "tos_uri", "policy_uri")}
            return method, query, json.dumps(record).encode()
        if "fragment_dropped" in self.names and path == "/register" and body.startswith(b"{"):
            # A redirect URI's fragment cut off and the rest registered, instead of a refusal.
            record = json.loads(body)
            uris = record.get("redirect_uris")
            if isinstance(uris, list):
                record["redirect_uris"] = [u.partition("#")[0] if isinstance(u, str) else u for u in uris]
            return method, query, json.dumps(record).encode()
        unchecked = self.names & {"auth_method_unchecked", "response_types_unchecked", "secret_post_refused"}
        if unchecked and path == "/register" and body.startswith(b"{"):
            # RG-02: an unknown token_endpoint_auth_method, or response_types other than ["code"], left
            # out and the client registered with the defaults, instead of a refusal; or a
            # client_secret_post client (a method the metadata lists) refused.
            record = json.loads(body)
            if "auth_method_unchecked" in self.names and record.get("token_endpoint_auth_method") not in AUTH_METHODS:
                record.pop("token_endpoint_auth_method", None)
            if "response_types_unchecked" in self.names and record.get("response_types") != ["code"]:
                record.pop("response_types", None)
            if "secret_post_refused" in self.names and record.get("token_endpoint_auth_method") == "client_secret_post":
                record["redirect_uris"] = ["javascript:alert(1)"]  # RG-02: a method listed, its registration refused
            return method, query, json.dumps(record).encode()
        posted = _form(body) if path in ("/token", "/revoke") else None
        if posted is None:
            return method, query, body
        if path == "/token" and self.names & TOKEN_FORM_DEFECTS:
            fixed = dict(posted)
            resource = posted.get("resource", "")
            if "token_resource_ignored" in self.names and urlsplit(resource).hostname not in (None, "127.0.0.1"):
                del fixed["resource"]  # TK-06: a resource outside the grant ignored
            refresh = posted.get("grant_type") == "refresh_token" and "scope" in posted
            if "refresh_scope_widened" in self.names and refresh:  # TK-07: an unknown scope asked left out
                fixed["scope"] = " ".join(s for s in posted["scope"].split() if s in CATALOGUE)
            if "refresh_scope_ignored" in self.names and refresh:  # TK-07: the grant's whole scope again
                del fixed["scope"]
            if fixed != posted:
                return method, query, urlencode(fixed).encode()
        if path == "/token" and self.names & {"code_any_client", "redirect_uri_unchecked"}:
            # A code redeemed by whichever public client asks (TK-05), or with another redirect_uri
            # than its authorization request's (TK-03): kavach sees the authorization's own.
            asked = self.authorized.get(posted.get("code", ""), {})
            names = {"code_any_client": "client_id", "redirect_uri_unchecked": "redirect_uri"}
            kept = {names[n]: asked[names[n]] for n in self.names & set(names) if names[n] in asked}
            if any(posted.get(k, v) != v for k, v in kept.items()):
                return method, query, urlencode(posted | {k: v for k, v in kept.items() if k in posted}).encode()
        if "refresh_any_client" in self.names and path == "/token":
            owner = self.owners.get(posted.get("refresh_token", ""))
            if owner is not None and posted.get("client_id") not in (None, owner):  # refreshed for whoever asks
                return method, query, urlencode(posted | {"client_id": owner}).encode()
        if "revoke_any_client" in self.names and path == "/revoke":
            owner = self.owners.get(posted.get("token", ""))
            if owner is not None and posted.get("client_id") not in (None, owner):  # revoked for whoever asks
                return method, query, urlencode(posted | {"client_id": owner}).encode()
        return method, query, body

    def credentials(self, path: str, query: bytes, headers: Headers) -> Headers:
        """The request's headers kavach sees instead: ``introspect_any_secret`` puts the registered
        secret in place of any other sent with a client_id by Basic to the introspection endpoint;
        ``query_token`` makes an ``access_token`` in the resource's query string its Bearer header."""
        self.authorization = any(k == b"authorization" for k, _ in headers)
        basic = next((v for k, v in headers if k == b"authorization" and v[:6].lower() == b"basic "), None)
        sent = base64.b64decode(basic[6:]).decode(errors="replace").partition(":") if basic else ("", "", "")
        self.basic_wrong = self.secrets.get(unquote_plus(sent[0])) not in (None, unquote_plus(sent[2]))
        token = dict(parse_qsl(query.decode())).get("access_token")
        if "query_token" in self.names and path == "/mcp" and token:
            return [*(h for h in headers if h[0] != b"authorization"), (b"authorization", f"Bearer {token}".encode())]
        if "introspect_any_secret" not in self.names or path != "/introspect":
            return headers
        out = []
        for key, value in headers:
            if key == b"authorization" and value[:6].lower() == b"basic ":
                client_id = unquote_plus(base64.b64decode(value[6:]).decode().partition(":")[0])
                if client_id in self.secrets:
                    value = b"Basic " + base64.b64encode(f"{client_id}:{self.secrets[client_id]}".encode())
            out.append((key, value))
        return out

    def headers(self, path: str, status: int, headers: Headers) -> Headers:
        """The answer's headers sent instead: redirects (:meth:`location`), challenges without a
        member, token answers not JSON or cacheable, a CORS header on the authorization endpoint."""
        out = []
        for key, value in headers:
            name = key.lower()
            if name == b"location":
                value = self.location(value)
            elif name == b"www-authenticate" and path == "/mcp":
                if "challenge_no_scope" in self.names and status == 401:
                    value = re.sub(rb',\s*scope="[^"]*"', b"", value)
                if "unauthorized_no_metadata" in self.names and status == 401:
                    value = re.sub(rb'resource_metadata="[^"]*",?\s*', b"", value)
                if "forbidden_no_metadata" in self.names and status == 403:
                    value = re.sub(rb',\s*resource_metadata="[^"]*"', b"", value)
            elif name == b"www-authenticate" and path == "/token" and "token_no_challenge" in self.names:
                continue  # RFC 6749 §5.2: a 401 to Basic credentials challenges Basic
            elif name == b"content-type" and path == "/token" and "token_text_html" in self.names:
                value = b"text/html; charset=utf-8"  # RFC 6749 §5.1/§5.2: application/json
            elif name == b"cache-control" and path == "/token" and "token_cacheable" in self.names:
                continue  # RFC 6749 §5.1/§5.2: no-store on every token answer
            out.append((key, value))
        if "cors_authorize" in self.names and path == "/authorize":
            out.append((b"access-control-allow-origin", b"*"))  # MD-04: no CORS where a browser navigates
        return out

    def location(self, value: bytes) -> bytes:
        """A ``Location`` sent instead; a code in it is remembered with the authorization request
        it answers (``self.authorized``)."""
        query = parse_qs(urlsplit(value.decode(errors="replace")).query)
        code = query.get("code")
        if code:
            self.authorized[code[0]] = self.authorizing
            if "challenge_echoed" in self.names:  # AZ-05: the code_challenge sent back with the code
                value += b"&challenge=" + self.authorizing.get("code_challenge", "").encode()
            if "iss_repeated" in self.names:  # AZ-08: a parameter twice in the redirect
                value += b"&iss=" + query.get("iss", [""])[0].encode()
        if self.names & RESPONSE_DEFECTS:
            value = self.redirect(value)
        if "wrong_redirect_error" in self.names:  # AZ-04: the wrong error code
            value = value.replace(b"error=unsupported_response_type", b"error=invalid_request")
        return value

    def redirect(self, location: bytes) -> bytes:
        """An authorization response sent instead (AZ-08): without ``iss``, without ``state`` on an
        error, or with the ``state`` of a success decoded twice (a ``+`` in it now a space)."""
        base, _, query = location.decode().partition("?")
        pairs = parse_qsl(query, keep_blank_values=True)
        error = any(k == "error" for k, _ in pairs)
        if not error and not any(k == "code" for k, _ in pairs):
            return location  # not to the client
        if "iss_dropped" in self.names:
            pairs = [(k, v) for k, v in pairs if k != "iss"]
        if "error_state_dropped" in self.names and error:
            pairs = [(k, v) for k, v in pairs if k != "state"]
        if "state_decoded_twice" in self.names and not error:
            pairs = [(k, unquote_plus(v) if k == "state" else v) for k, v in pairs]
        return f"{base}?{urlencode(pairs)}".encode()

    def rewrite(self, path: str, form: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        if self.name == "escape" and isinstance(body.get("error"), str):
            body["error"] += ESCAPE
        if self.name == "no_refresh":
            body.pop("refresh_token", None)
        if self.name == "refresh_int" and isinstance(body.get("refresh_token"), str):
            body["refresh_token"] = 12345678901234567890
        if "iss_flag_off" in self.names and path == METADATA:
            body["authorization_response_iss_parameter_supported"] = False  # RFC 9207 §3, while sending iss
        if "prm_query_bearer" in self.names and path.startswith("/.well-known/oauth-protected-resource"):
            body["bearer_methods_supported"] = ["header", "query"]  # MD-03 (and RS-01): the header only
        if "prm_slash" in self.names and path.startswith("/.well-known/oauth-protected-resource"):
            body["resource"] = f"{body.get('resource')}/"  # MD-03: exactly the resource, no slash added
        if "meta_issuer_slash" in self.names and path == METADATA:
            body["issuer"] = f"{body.get('issuer')}/"  # MD-01: byte-identical to the configured issuer
        refreshed = form.get("grant_type") == ["refresh_token"] and isinstance(body.get("refresh_token"), str)
        if path == "/token" and refreshed:
            self.rotated.add(form.get("refresh_token", [""])[0])
            self.successors.add(body["refresh_token"])
            if "refresh_not_rotated_wire" in self.names:  # TK-07: the same refresh token answered
                body["refresh_token"] = form.get("refresh_token", [""])[0]
        if "introspect_inactive" in self.names and path == "/introspect" and body.get("active") is True:
            body = {"active": False}  # IN-01: a fresh token said inactive
        if "oidc_slash" in self.names and path == "/.well-known/openid-configuration":
            body["issuer"] = f"{body.get('issuer')}/"  # MD-01: byte-identical to the configured issuer
        unknown = form.get("token", [""])[0] not in self.issued
        if "introspect_unknown" in self.names and path == "/introspect" and body.get("active") is False and unknown:
            body = {"active": True}  # a token never issued said active (IN-01)
        if "meta_lists_more" in self.names and path == METADATA:  # MD-02: ["code"] and ["S256"] only
            body |= {
                "response_types_supported": ["code", "token"],
                "code_challenge_methods_supported": ["S256", "plain"],
            }
        if "meta_members_missing" in self.names and path == METADATA:  # MD-02: required members
            body.pop("jwks_uri", None)
            body.pop("authorization_response_iss_parameter_supported", None)
        if path == "/register" and isinstance(body.get("client_id"), str):
            self.clients.add(body["client_id"])
            self.registered |= {u for u in body.get("redirect_uris") or () if isinstance(u, str)}
        if "prm_types" in self.names and path.startswith("/.well-known/oauth-protected-resource"):
            body |= {"authorization_servers": [ATTACKER], "scopes_supported": "tools:list"}  # MD-03
        code = form.get("code", [""])[0]
        if path == "/token" and body.get("error") == "invalid_grant" and code and code not in self.authorized:
            if "unknown_code_error" in self.names:
                body["error"] = "invalid_code"  # TK-01: not an RFC 6749 §5.2 code
            if "error_crlf" in self.names:
                body["error_description"] = f"{body.get('error_description')}\r\nX-Injected: 1"  # TK-01
        if self.name == "meta_types" and path.startswith("/.well-known/o"):
            body |= {"jwks_uri": None, "grant_types_supported": "authorization_code", "scopes_supported": 42}
        jwt = form.get("token", [""])[0].count(".") == 2
        if self.name == "introspect_revoked" and path == "/introspect" and jwt and body.get("active") is False:
            body = {"active": True, "token_type": "Bearer"}  # a revoked JWT access token said active
        if self.name == "scope_widened" and path == "/token":
            body.pop("scope", None)  # the whole catalogue granted, and not said
        if path == "/token":
            self.issued |= {v for k, v in body.items() if k in ("access_token", "refresh_token") and isinstance(v, str)}
        if path == "/token" and isinstance(body.get("refresh_token"), str) and "client_id" in form:
            self.owners[body["refresh_token"]] = form["client_id"][0]
        if path == "/register" and isinstance(body.get("client_secret"), str):
            self.secrets[str(body.get("client_id"))] = body["client_secret"]
        return body


def middleware(app: App, defect: Defect) -> App:
    async def wrapped(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body = await read_body(receive, send)
        if body is None:  # answered (413) or the client left
            return None
        request = (scope["method"], scope.get("query_string", b""), body)
        method, query, body = defect.request(scope["method"], scope["path"], request[1], body)
        if (method, query, body) != request:  # kavach sees a form POST (or the rewritten GET)
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
            if body:
                kind = b"application/json" if body.startswith(b"{") else b"application/x-www-form-urlencoded"
                headers += [(b"content-type", kind)]
                headers += [(b"content-length", str(len(body)).encode())]
            scope = {**scope, "method": method, "query_string": query, "headers": headers}
        scope = {**scope, "headers": defect.credentials(scope["path"], query, scope["headers"])}
        posted = parse_qs(body.decode(errors="replace"))
        form = parse_qs(query.decode()) | posted
        if scope["path"] == METADATA and defect.name == "trickle_meta" and next(defect.metadata) > 1:
            return await trickle(send)
        answer = await defect.answer(scope["method"], scope["path"], form, posted)
        if answer is not None:
            status, kind, content = answer
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind.encode())]})
            return await send({"type": "http.response.body", "body": content})
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = b"".join(chunks)
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                content = json.dumps(defect.rewrite(scope["path"], form, parsed)).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers = defect.headers(scope["path"], start["status"], headers)
            await send({**start, "headers": [*headers, (b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})

        await app(scope, replay, capture)

    return wrapped


async def trickle(send: Send) -> None:
    """A metadata document sent one byte every 0.2 s (a whole answer would take minutes)."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    for byte in json.dumps({"issuer": "x" * 1000}).encode():
        await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b""})


def main(argv: list[str]) -> int:
    name, *rest = argv
    from kavach import cli

    build_app = cli.build_app
    cli.build_app = lambda *args, **kwargs: middleware(build_app(*args, **kwargs), Defect(name))
    return int(cli.main(rest))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
