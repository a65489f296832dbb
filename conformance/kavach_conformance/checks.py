"""The checks, each observing one rule of the checklist over HTTP.

Every check function takes the :class:`~.session.Session` and a ``record`` callback
``record(rule, name, passed, reason)``; ``passed=None`` means not applicable. A check raising
:class:`~.session.Skip` is recorded as not applicable for its rules with the reason given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from .http import KitError, challenges
from .person import person_post
from .session import (
    MCP_HEADERS,
    TOOLS_LIST,
    URL_MEMBERS,
    Client,
    Outcome,
    RegistrationFailed,
    Session,
    Skip,
    Tokens,
    jwt_payload,
    mistyped_members,
    refresh_token_of,
    well_known,
)
from .session import json_object as json_body

Record = Callable[[str, str, bool | None, str], None]

TOKEN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
    }
)
CORS_ORIGIN = "https://conformance-client.example"
UNPROTECTED = "https://unprotected.conformance.invalid/mcp"
ATTACKER = "https://attacker.conformance.invalid/callback"
CORS_ENDPOINTS = (
    ("token endpoint", "token_endpoint", "POST"),
    ("registration endpoint", "registration_endpoint", "POST"),
    ("revocation endpoint", "revocation_endpoint", "POST"),
    ("introspection endpoint", "introspection_endpoint", "POST"),
    ("JWKS", "jwks_uri", "GET"),
)
"""MD-04: the endpoints a browser client calls, each preflighted when the metadata lists it (the
authorization endpoint, where a browser navigates, must not answer a preflight)."""


def error_of(response: httpx.Response) -> str | None:
    """The ``error`` code of an OAuth error answer (RFC 6749 §5.2), ``None`` without a readable one."""
    body = json_body(response)
    value = body.get("error") if body is not None else None
    return value if isinstance(value, str) else None


def expect_error(response: httpx.Response, *codes: str) -> tuple[bool, str]:
    err = error_of(response)
    ok = 400 <= response.status_code < 500 and err in codes
    return ok, f"{response.status_code} error={err} (expected {'/'.join(codes)})"


def well_formed_tokens(response: httpx.Response) -> tuple[bool, str]:
    """RFC 6749 §5.1: a 200 JSON object with string ``access_token`` and ``token_type``, and a
    ``refresh_token`` that is a string when present."""
    body = json_body(response) if response.status_code == 200 else None
    if body is None:
        return False, f"{response.status_code}, no JSON object"
    wrong = [k for k in ("access_token", "token_type") if not isinstance(body.get(k), str)]
    if "refresh_token" in body and not isinstance(body["refresh_token"], str):
        wrong.append("refresh_token")
    return not wrong, f"not strings: {wrong}" if wrong else "access_token, token_type (and refresh_token) strings"


def json_media_type(response: httpx.Response) -> tuple[bool, str]:
    """RFC 6749 §5.1, §5.2: a token response, success or error, is ``application/json`` (parameters
    such as ``charset`` allowed)."""
    kind = response.headers.get("content-type", "")
    ok = kind.split(";", 1)[0].strip().lower() == "application/json"
    return ok, f"{response.status_code}, Content-Type {kind!r}"


def no_code_at(outcome: Outcome, bad_uri: str) -> tuple[bool, str]:
    """AZ-02/AZ-03: the request must not end at ``bad_uri`` (nor anywhere off the server)."""
    if outcome.redirected:
        return False, f"{outcome.describe()} (must show an error page instead)"
    return True, outcome.describe()


def case_variants(uri: str) -> dict[str, str]:
    """AZ-03 (OAuth 2.1 §2.3.1, RFC 9700 §4.1.3: simple string comparison): ``uri`` differing only
    in the case of its path, and, for a URI not on a loopback IP, only in that of scheme and host."""
    parts = urlsplit(uri)
    out: dict[str, str] = {}
    if parts.path.swapcase() != parts.path:
        out["path case only"] = urlunsplit(parts._replace(path=parts.path.swapcase()))
    if parts.hostname not in ("127.0.0.1", "::1"):
        upper = urlunsplit(parts._replace(scheme=parts.scheme.upper(), netloc=parts.netloc.upper()))
        if upper != uri:
            out["scheme and host case only"] = upper
    return out


def error_redirect(outcome: Outcome, *codes: str) -> tuple[bool, str]:
    err = outcome.one("error") or outcome.one("#error")  # a fragment for response types that use one
    if outcome.one("code") is not None or outcome.one("#access_token") is not None:
        return False, f"a code or token was issued: {outcome.describe()}"
    return outcome.redirected and err in codes, outcome.describe()


# -- metadata --------------------------------------------------------------------------------


def check_metadata(s: Session, record: Record) -> None:
    url = well_known(s.issuer, "oauth-authorization-server")
    response = s.http.request("GET", url)
    body = json_body(response) if response.status_code == 200 else None
    if body is None:
        record("MD-01", "rfc8414 document", False, f"GET {url}: {response.status_code}, no JSON object")
    else:
        issuer = body.get("issuer")
        record("MD-01", "rfc8414 issuer", issuer == s.issuer, f"issuer {issuer!r}, configured {s.issuer!r}")
    oidc = [well_known(s.issuer, "openid-configuration"), s.issuer.rstrip("/") + "/.well-known/openid-configuration"]
    found = None
    for candidate in dict.fromkeys(oidc):
        r = s.http.request("GET", candidate)
        if r.status_code == 200 and json_body(r) is not None:
            found = json_body(r)
            break
    if found is None:
        record("MD-01", "openid-configuration", False, "no OIDC discovery document")
    else:
        record(
            "MD-01", "openid-configuration issuer", found.get("issuer") == s.issuer, f"issuer {found.get('issuer')!r}"
        )
    meta = s.meta
    required = (
        *(member for member in URL_MEMBERS if member != "issuer"),  # the issuer: MD-01, above
        "scopes_supported",
        "response_types_supported",
        "grant_types_supported",
        "code_challenge_methods_supported",
        "token_endpoint_auth_methods_supported",
        "authorization_response_iss_parameter_supported",
    )
    missing = [m for m in required if m not in meta]
    record("MD-02", "required members", not missing, f"missing {missing}" if missing else "all listed")
    wrong = mistyped_members(meta)
    record("MD-02", "member types", not wrong, "; ".join(wrong) if wrong else "URLs and arrays of strings")
    rts = meta.get("response_types_supported")
    record("MD-02", "response_types_supported", rts == ["code"], f"{rts!r} (expected ['code'])")
    ccm = meta.get("code_challenge_methods_supported")
    record("MD-02", "code_challenge_methods_supported", ccm == ["S256"], f"{ccm!r} (expected ['S256'])")
    iss_flag = meta.get("authorization_response_iss_parameter_supported")
    record("MD-02", "iss parameter flag", iss_flag is True, f"{iss_flag!r}")
    if s.resource is None or not s.resource_served:
        record("MD-03", "protected resource metadata", None, "no protected resource served (--resource)")
    else:
        prm_url = well_known(s.resource, "oauth-protected-resource")
        r = s.http.request("GET", prm_url)
        prm = json_body(r) if r.status_code == 200 else None
        if prm is None:
            record("MD-03", "document", False, f"GET {prm_url}: {r.status_code}")
        else:
            record(
                "MD-03",
                "resource exact",
                prm.get("resource") == s.resource,
                f"resource {prm.get('resource')!r}, given {s.resource!r}",
            )
            servers = prm.get("authorization_servers")
            record("MD-03", "authorization_servers", isinstance(servers, list) and s.issuer in servers, f"{servers!r}")
            record(
                "MD-03",
                "scopes_supported",
                isinstance(prm.get("scopes_supported"), list),
                f"{prm.get('scopes_supported')!r}",
            )
            bearer = prm.get("bearer_methods_supported")
            record("MD-03", "bearer_methods_supported", bearer == ["header"], f"{bearer!r} (expected ['header'])")
    check_cors(s, record)


def _preflight(s: Session, url: str, method: str) -> httpx.Response:
    return s.http.request(
        "OPTIONS",
        url,
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


def check_cors(s: Session, record: Record) -> None:
    listed = [(name, s.meta.get(member), method) for name, member, method in CORS_ENDPOINTS]
    for name, url, method in [("metadata", s.meta_source, "GET"), *listed]:
        if not isinstance(url, str):
            continue  # not listed (MD-02 says so)
        try:
            s.http.check_allowed(url)
        except KitError:
            record("MD-04", f"preflight {name}", None, f"{url[:80]!r} is not on the servers given: not contacted")
            continue
        r = _preflight(s, url, method)
        allow = r.headers.get("access-control-allow-origin")
        record(
            "MD-04",
            f"preflight {name}",
            r.status_code < 300 and allow in (CORS_ORIGIN, "*"),
            f"{r.status_code}, Access-Control-Allow-Origin {allow!r}",
        )
    r = _preflight(s, s.endpoint("authorization_endpoint"), "GET")
    allow = r.headers.get("access-control-allow-origin")
    record("MD-04", "no CORS on authorize", allow is None, f"Access-Control-Allow-Origin {allow!r}")


# -- registration ----------------------------------------------------------------------------


def check_registration(s: Session, record: Record) -> None:
    if not isinstance(s.meta.get("registration_endpoint"), str):
        raise Skip("no registration_endpoint")
    if not s.may_register:
        raise Skip("registration is probed only with --register")
    for body, response in list(s.registrations):
        data = json_body(response) or {}
        ok = response.status_code == 201 and "client_id" in data and data.get("redirect_uris") == body["redirect_uris"]
        record(
            "RG-02",
            f"register {body['token_endpoint_auth_method']} client",
            ok,
            f"{response.status_code}, client_id {'present' if 'client_id' in data else 'missing'}, "
            f"redirect_uris {data.get('redirect_uris')!r}",
        )
    bad_redirects = {
        "http on a public host": "http://client.conformance.invalid/cb",
        "fragment": "https://client.conformance.invalid/cb#frag",
        "javascript scheme": "javascript:alert(1)",
        "data scheme": "data:text/html,hi",
        "file scheme": "file:///etc/passwd",
        "userinfo": "https://user:pw@client.conformance.invalid/cb",
    }
    base = s.client_body("none", "conformance kit (bad)")
    for name, uri in bad_redirects.items():
        r = s.register({**base, "redirect_uris": [uri]})
        ok, why = expect_error(r, "invalid_redirect_uri", "invalid_client_metadata")
        record("RG-01", f"redirect {name}", ok, why)
    bad_uris = {
        "client_uri": "http://client.conformance.invalid/",
        "logo_uri": "javascript:alert(1)",
        "tos_uri": "http://client.conformance.invalid/tos",
        "policy_uri": "javascript:alert(1)",
    }
    for member, uri in bad_uris.items():  # human-facing URIs: https only (one refused registration each)
        r = s.register({**base, member: uri})
        ok, why = expect_error(r, "invalid_client_metadata")
        record("RG-01", f"{member} {'over http' if uri.startswith('http:') else 'javascript scheme'}", ok, why)
    r = s.register({**base, "token_endpoint_auth_method": "conformance_unknown_method"})
    ok, why = expect_error(r, "invalid_client_metadata")
    record("RG-02", "unknown token_endpoint_auth_method", ok, why)
    r = s.register({**base, "grant_types": ["authorization_code"], "response_types": ["token"]})
    ok, why = expect_error(r, "invalid_client_metadata")
    record("RG-02", "inconsistent grant_types/response_types", ok, why)


# -- authorization endpoint ------------------------------------------------------------------


def check_authorize_errors(s: Session, record: Record) -> None:
    client = s.client()
    s.person_completes()
    params, _ = s.auth_params(client, client_id="conformance-unknown-client")
    record("AZ-02", "unknown client_id", *no_code_at(s.attempt(params), client.redirect_uri))
    params, _ = s.auth_params(client, client_id=None)
    record("AZ-02", "missing client_id", *no_code_at(s.attempt(params), client.redirect_uri))
    params, _ = s.auth_params(client, redirect_uri=ATTACKER)
    record("AZ-02", "unregistered redirect_uri", *no_code_at(s.attempt(params, ATTACKER), ATTACKER))
    registered = client.redirect_uri
    variants = {
        "path extended": registered + "/extra",
        "path prefix": registered + "x",
        "query added": registered + ("&" if "?" in registered else "?") + "extra=1",
        "host case": registered.replace("127.0.0.1", "LOCALHOST") if "127.0.0.1" in registered else registered.upper(),
        **case_variants(registered),
    }
    for name, uri in variants.items():
        params, _ = s.auth_params(client, redirect_uri=uri)
        record("AZ-03", f"redirect {name}", *no_code_at(s.attempt(params, uri), uri))
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)?", registered)
    if m:
        port = int(m.group(1))
        other = f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}{m.group(2) or ''}"
        params, _ = s.auth_params(client, redirect_uri=other)
        outcome = s.attempt(params, other)
        ok = outcome.redirected and (outcome.final or "").startswith(other) and outcome.one("code") is not None
        record("AZ-03", "loopback port may vary", ok, outcome.describe())
    params, _ = s.auth_params(client)
    outcome = s.attempt_post(params)
    # A person with a POST step (the built-in one, a --person callable with a post method) must
    # get a code; of another callable's run only the POST's first answer is seen: a redirect with
    # a code, or a page (the sign-in) that is not an error.
    first_only = person_post(s.person) is None and not outcome.redirected
    ok = outcome.status is not None and outcome.status < 400 if first_only else outcome.one("code") is not None
    record("AZ-01", "valid request by POST proceeds as by GET", ok, outcome.describe())
    params, _ = s.auth_params(client)
    pairs = [*params.items(), ("scope", params.get("scope") or "x"), ("state", "duplicate")]
    outcome = s.attempt(pairs, client.redirect_uri)
    if not outcome.redirected:
        record("AZ-01", "parameter given twice", True, f"refused: {outcome.describe()}")
    else:
        record("AZ-01", "parameter given twice", *error_redirect(outcome, "invalid_request"))
    params, _ = s.auth_params(client, response_type="token")
    record("AZ-04", "response_type=token", *error_redirect(s.attempt(params), "unsupported_response_type"))
    params, _ = s.auth_params(client, response_type="conformance_bogus")
    record("AZ-04", "unknown response_type", *error_redirect(s.attempt(params), "unsupported_response_type"))


def check_pkce(s: Session, record: Record) -> None:
    client = s.client()
    params, _ = s.auth_params(client, code_challenge=None, code_challenge_method=None)
    outcome = s.attempt(params)
    record("AZ-05", "code_challenge missing", *error_redirect(outcome, "invalid_request"))
    if outcome.one("error") is not None:
        record("AZ-08", "iss on an error redirect", outcome.one("iss") == s.issuer, f"iss={outcome.one('iss')!r}")
        record(
            "AZ-08",
            "state on an error redirect",
            outcome.one("state") == params["state"],
            f"state={outcome.one('state')!r}",
        )
    downgrade = outcome.one("code")
    params, verifier = s.auth_params(client, code_challenge_method="plain")
    params["code_challenge"] = verifier
    record("AZ-05", "code_challenge_method=plain", *error_redirect(s.attempt(params), "invalid_request"))
    record("AZ-05", "code_challenge without a method", *_no_implicit_plain(s, client))
    params, verifier = s.auth_params(client)
    outcome = s.attempt(params)
    code = outcome.one("code")
    if code is None:
        raise Skip(f"could not obtain a code: {outcome.describe()}")
    echoed = params["code_challenge"] in (outcome.final or "")
    record("AZ-05", "challenge not echoed", not echoed, "echoed in the redirect" if echoed else "not in the redirect")
    r = s.redeem(client, code, "W" * 43)
    record("TK-03", "wrong code_verifier", *expect_error(r, "invalid_grant"))
    code, verifier, _ = s.code(client)
    r = s.redeem(client, code, None)
    record("TK-03", "code_verifier missing", *expect_error(r, "invalid_request", "invalid_grant"))
    if downgrade is not None:
        r = s.redeem(client, downgrade, "D" * 43)
        record("TK-03", "verifier without a stored challenge", *expect_error(r, "invalid_request", "invalid_grant"))
    else:
        record("TK-03", "verifier without a stored challenge", True, "no code is issued without a challenge")
    code, verifier, _ = s.code(client)
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)?", client.redirect_uri)
    other = f"http://127.0.0.1:{int(m.group(1)) + 1}{m.group(2) or ''}" if m else client.redirect_uri + "/other"
    r = s.redeem(client, code, verifier, redirect_uri=other)
    record("TK-03", "redirect_uri differs from the authorization request", *expect_error(r, "invalid_grant"))


def _no_implicit_plain(s: Session, client: Client) -> tuple[bool, str]:
    """A challenge without ``code_challenge_method`` means ``plain`` (RFC 7636 §4.3), which the
    project refuses (S256 only): ``invalid_request``. A server issuing a code anyway fails when
    the code redeems with the challenge itself as the verifier (plain PKCE)."""
    params, verifier = s.auth_params(client, code_challenge_method=None)
    params["code_challenge"] = verifier
    outcome = s.attempt(params)
    code = outcome.one("code")
    if code is None:
        return error_redirect(outcome, "invalid_request")
    r = s.redeem(client, code, verifier)
    if r.status_code == 200:
        return False, f"a code was issued and redeemed with code_verifier == code_challenge: {outcome.describe()}"
    return True, f"a code was issued but plain PKCE refused ({r.status_code} error={error_of(r)}): S256 assumed"


def check_success_response(s: Session, record: Record) -> None:
    client = s.client()
    state = "kit state/é+%&=x"
    code, verifier, outcome = s.code(client, state=state)
    params = outcome.params
    record("AZ-08", "state verbatim", outcome.one("state") == state, f"state={outcome.one('state')!r}")
    record("AZ-08", "iss on success", outcome.one("iss") == s.issuer, f"iss={outcome.one('iss')!r}")
    repeated = [k for k, v in params.items() if len(v) > 1]
    record("AZ-08", "no repeated parameters", not repeated, f"repeated {repeated}" if repeated else "none")
    record(
        "AZ-08",
        "metadata advertises iss",
        s.meta.get("authorization_response_iss_parameter_supported") is True,
        f"{s.meta.get('authorization_response_iss_parameter_supported')!r}",
    )
    r = s.redeem(client, code, verifier)
    record("TK-01", "success response well-formed", *well_formed_tokens(r))
    record("TK-01", "success is application/json", *json_media_type(r))
    record(
        "TK-01",
        "success has Cache-Control: no-store",
        "no-store" in r.headers.get("cache-control", ""),
        f"{r.status_code}, Cache-Control {r.headers.get('cache-control')!r}",
    )


def check_resource_and_scope(s: Session, record: Record) -> None:
    client = s.client()
    if s.resource is not None:
        params, _ = s.auth_params(client, resource=UNPROTECTED)
        record("AZ-06", "resource not protected here", *error_redirect(s.attempt(params), "invalid_target"))
        params, _ = s.auth_params(client, resource=s.resource + "#fragment")
        record("AZ-06", "resource with a fragment", *error_redirect(s.attempt(params), "invalid_target"))
        params, _ = s.auth_params(client, resource="mcp")
        record("AZ-06", "relative resource", *error_redirect(s.attempt(params), "invalid_target"))
        tokens = s.tokens(client)
        claims = jwt_payload(tokens.access_token)
        if claims is not None:
            aud = claims.get("aud")
            ok = aud == s.resource or aud == [s.resource]
            record("TK-06", "aud is exactly the resource", ok, f"aud={aud!r}")
        elif s.confidential is not None and s.introspection(tokens.access_token) is not None:
            # An opaque token: its audience as introspection reports it (asked by the same client).
            own = s.tokens(s.confidential)
            aud = (s.introspection(own.access_token) or {}).get("aud")
            ok = aud == s.resource or aud == [s.resource]
            record("TK-06", "aud is exactly the resource (introspected)", ok, f"aud={aud!r}")
        else:
            record("TK-06", "aud is exactly the resource", None, "opaque access token (aud not observable)")
        code, verifier, _ = s.code(client)
        r = s.redeem(client, code, verifier, resource=UNPROTECTED)
        record("TK-06", "token resource outside the grant", *expect_error(r, "invalid_target"))
    else:
        record("AZ-06", "resource indicators", None, "no --resource given")
        record("TK-06", "token audience", None, "no --resource given")
    params, _ = s.auth_params(client, scope="conformance:unknown-scope")
    record("AZ-07", "unknown scope", *error_redirect(s.attempt(params), "invalid_scope"))
    catalogue = s.scopes()
    if catalogue:
        tokens = s.tokens(client, scope=catalogue[0])
        granted, source = granted_scope(s, tokens)
        record(
            "AZ-07",
            "granted scope within the request",
            granted is None or set(granted.split()) <= {catalogue[0]},
            f"asked {catalogue[0]!r}, granted {granted!r} ({source})",
        )


def granted_scope(s: Session, tokens: Tokens) -> tuple[str | None, str]:
    """The scope a token was granted, and where the kit read it. The token response's ``scope``;
    without one (RFC 6749 §5.1: only when granted as asked) the access token's own ``scope`` claim
    (RFC 9068 §2.2.3) or introspection's (RFC 7662 §2.2), so an unreported wider grant is seen."""
    if isinstance(tokens.scope, str):
        return tokens.scope, "token response"
    claims = jwt_payload(tokens.access_token) or {}
    if isinstance(claims.get("scope"), str):
        return claims["scope"], "no scope in the token response; the JWT's scope claim"
    introspected = s.introspection(tokens.access_token) if s.confidential is not None else None
    if introspected is not None and isinstance(introspected.get("scope"), str):
        return introspected["scope"], "no scope in the token response; introspection"
    return None, "no scope in the token response, none observable: as asked"


def check_code_reuse(s: Session, record: Record) -> None:
    client = s.client()
    code, verifier, _ = s.code(client)
    first = s.tokens_of(s.redeem(client, code, verifier))
    second = s.redeem(client, code, verifier)
    record("TK-04", "second redemption refused", *expect_error(second, "invalid_grant"))
    if second.status_code == 200:
        return
    active = s.token_active(client, first.access_token)
    if active is None:
        record("TK-04", "access token revoked after reuse", None, "no introspection or resource to observe it")
    else:
        record("TK-04", "access token revoked after reuse", not active, f"still active: {active}")
    if first.refresh_token:
        r = s.refresh(client, first.refresh_token)
        record("TK-04", "refresh token revoked after reuse", *expect_error(r, "invalid_grant"))


def check_code_binding(s: Session, record: Record) -> None:
    if s.second is None:
        raise Skip("needs a second client (--register)")
    code, verifier, _ = s.code(s.client())
    r = s.redeem(s.second, code, verifier)
    record("TK-05", "another client's code", *expect_error(r, "invalid_grant", "invalid_client", "unauthorized_client"))


def _redemption_form(s: Session, client: Client) -> dict[str, str]:
    """A complete, valid authorization_code redemption of a fresh code by the public ``client``."""
    code, verifier, _ = s.code(client)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": client.redirect_uri,
        "code_verifier": verifier,
        "client_id": client.client_id,
    }
    return form | ({"resource": s.resource} if s.resource else {})


def _refused(response: httpx.Response) -> tuple[bool, str]:
    """TK-01 (RFC 6749 §3.2: POST, application/x-www-form-urlencoded): no 2xx, no tokens."""
    issued = "access_token" in (json_body(response) or {})
    ok = response.status_code >= 400 and not issued
    return ok, f"{response.status_code} error={error_of(response)}" + (", tokens issued" if issued else "")


def check_token_endpoint(s: Session, record: Record) -> None:
    url = s.endpoint("token_endpoint")
    client = s.client()
    r = s.token_request(
        client,
        {
            "grant_type": "authorization_code",
            "code": "conformance-bogus-code",
            "code_verifier": "v" * 43,
            "redirect_uri": client.redirect_uri,
        },
    )
    err = error_of(r)
    body = json_body(r) or {}
    desc = body.get("error_description", "")
    record(
        "TK-01",
        "error is JSON with an RFC 6749 code",
        err in TOKEN_ERRORS,
        f"{r.status_code} content-type {r.headers.get('content-type')!r} error={err!r}",
    )
    record("TK-01", "error is application/json", *json_media_type(r))
    record(
        "TK-01",
        "error has Cache-Control: no-store",
        "no-store" in r.headers.get("cache-control", ""),
        f"Cache-Control {r.headers.get('cache-control')!r}",
    )
    record("TK-01", "no CR/LF in error values", not any(c in f"{err}{desc}" for c in "\r\n"), "checked")
    for grant in ("password", "implicit", "urn:conformance:unknown-grant"):
        form = {"grant_type": grant}
        if grant == "password":
            form.update(username="x", password="y")
        r = s.token_request(client, form)
        record("TK-08", f"grant_type={grant}", *expect_error(r, "unsupported_grant_type"))
    if client.method == "none":  # client_credentials only for a confidential client (OAuth 2.1 §4.2)
        r = s.token_request(client, {"grant_type": "client_credentials"})
        codes = ("unauthorized_client", "unsupported_grant_type", "invalid_client")
        record("TK-08", "grant_type=client_credentials for a public client", *expect_error(r, *codes))
    # Each probe carries a real, unused code: refused only for its method or body, or not at all
    # (after the probes above, which need no code).
    r = s.http.request("GET", url, params=_redemption_form(s, client))
    record("TK-01", "GET refused (with a valid code)", *_refused(r))
    r = s.http.request("POST", url, json_body=_redemption_form(s, client))
    record("TK-01", "JSON body refused (with a valid code)", *_refused(r))
    conf = s.confidential
    if conf is None or not conf.secret:
        record("TK-02", "client authentication", None, "needs a confidential client")
        return
    r = s.token_request(
        conf,
        {
            "grant_type": "authorization_code",
            "code": "bogus",
            "code_verifier": "v" * 43,
            "redirect_uri": conf.redirect_uri,
        },
        secret="wrong-" + conf.secret,
        method="client_secret_basic",
    )
    challenge = ", ".join(r.headers.get_list("www-authenticate"))
    record(
        "TK-02",
        "bad Basic secret: 401",
        r.status_code == 401 and error_of(r) == "invalid_client",
        f"{r.status_code} error={error_of(r)}",
    )
    record(
        "TK-02",
        "bad Basic secret: WWW-Authenticate Basic",
        any(scheme == "basic" for scheme, _ in challenges(challenge)),
        f"WWW-Authenticate {challenge!r}",
    )
    # A confidential client must authenticate (RFC 6749 §2.3, §3.2.1): its client_id alone, or a
    # wrong secret sent another way, is invalid_client, even with a valid code.
    code, verifier, _ = s.code(conf)
    r = s.redeem(Client(conf.client_id, conf.redirect_uri), code, verifier)
    record("TK-02", "confidential client with no secret refused", *_invalid_client(r))
    code, verifier, _ = s.code(conf)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": conf.redirect_uri}
    form |= {"code_verifier": verifier} | ({"resource": s.resource} if s.resource else {})
    r = s.token_request(conf, form, secret="wrong-" + conf.secret, method="client_secret_post")
    record("TK-02", "wrong client_secret_post secret refused", *_invalid_client(r))
    code, verifier, _ = s.code(conf)
    r = s.redeem(conf, code, verifier)
    record("TK-02", "client_secret_basic accepted", r.status_code == 200, f"{r.status_code} error={error_of(r)}")
    supported = s.meta.get("token_endpoint_auth_methods_supported")  # an array (RFC 8414 §2); else MD-02's
    if isinstance(supported, list) and "client_secret_post" in supported and s.may_register:
        try:
            post = s.register_client("client_secret_post", "conformance kit (client_secret_post)")
        except RegistrationFailed as exc:
            record("RG-02", "register a client_secret_post client", False, str(exc))
            return
        code, verifier, _ = s.code(post)
        r = s.redeem(post, code, verifier)
        record("TK-02", "client_secret_post accepted", r.status_code == 200, f"{r.status_code} error={error_of(r)}")


def _invalid_client(response: httpx.Response) -> tuple[bool, str]:
    """RFC 6749 §5.2: ``invalid_client``, 400 or (401 required when a Basic header was sent) 401."""
    issued = "access_token" in (json_body(response) or {})
    ok = response.status_code in (400, 401) and error_of(response) == "invalid_client" and not issued
    why = f"{response.status_code} error={error_of(response)} (expected 401 invalid_client)"
    return ok, why + (", tokens issued" if issued else "")


def check_refresh(s: Session, record: Record) -> None:
    client = s.client()
    first = s.tokens(client)
    rt0 = refresh_token_of(first.body)  # BadAnswer (TK-07 fails) when it is not a string
    if not rt0:
        raise Skip("no refresh token issued")
    r1 = s.refresh(client, rt0)
    if r1.status_code != 200:
        record("TK-07", "refresh works", False, f"{r1.status_code} error={error_of(r1)}")
        return
    rt1 = refresh_token_of(json_body(r1) or {})
    why = "no refresh token returned" if not rt1 else "same token" if rt1 == rt0 else "new refresh token"
    record("TK-07", "rotated on use", bool(rt1) and rt1 != rt0, why)
    if not rt1 or rt1 == rt0:
        r = s.refresh(client, rt0)
        record("TK-07", "used refresh token refused", r.status_code != 200, f"{r.status_code} on a second use")
        return
    r2 = s.refresh(client, rt1)
    rt2 = refresh_token_of(json_body(r2) or {}) if r2.status_code == 200 else None
    if not rt2:
        record("TK-07", "second rotation", False, f"{r2.status_code} error={error_of(r2)}")
        return
    replay = s.refresh(client, rt0)
    record("TK-07", "superseded token refused", *expect_error(replay, "invalid_grant"))
    after = s.refresh(client, rt2)
    record("TK-07", "reuse revokes the family", *expect_error(after, "invalid_grant"))
    scopes = s.scopes()
    fresh = s.tokens(client)
    if fresh.refresh_token and scopes:
        r = s.refresh(client, fresh.refresh_token, scope=" ".join([*scopes, "conformance:wider"]))
        record("TK-07", "scope cannot widen", *expect_error(r, "invalid_scope"))
        fresh = s.tokens(client)
        assert fresh.refresh_token
        r = s.refresh(client, fresh.refresh_token, scope=scopes[0])
        granted = ((json_body(r) or {}).get("scope") or scopes[0]).split()
        record(
            "TK-07",
            "scope can narrow",
            r.status_code == 200 and set(granted) <= {scopes[0]},
            f"{r.status_code} scope={granted}",
        )
    if s.second is not None:
        other = s.tokens(client)
        if other.refresh_token:
            r = s.refresh(s.second, other.refresh_token)
            record(
                "TK-07",
                "bound to the client",
                *expect_error(r, "invalid_grant", "invalid_client", "unauthorized_client"),
            )


def check_revocation(s: Session, record: Record) -> None:
    if not isinstance(s.meta.get("revocation_endpoint"), str):
        raise Skip("no revocation_endpoint")
    client = s.client()
    r = s.revoke(client, "conformance-unknown-token")
    record("RV-01", "unknown token: 200", r.status_code == 200, f"{r.status_code}")
    check_access_token_revocation(s, record)
    tokens = s.tokens(client)
    if not tokens.refresh_token:
        return
    refresh_token = tokens.refresh_token
    if s.second is not None:
        # RFC 7009 §2.1: a token is revoked only for the client it was issued to. The second
        # client's request may be answered 200 or refused; the token must go on working.
        r = s.revoke(s.second, refresh_token, "refresh_token")
        after = s.refresh(client, refresh_token)
        record(
            "RV-01",
            "another client's refresh token not revoked",
            r.status_code < 500 and after.status_code == 200,
            f"revoked by the second client: {r.status_code}; refreshed by its own: {after.status_code} "
            f"error={error_of(after)}",
        )
        if after.status_code == 200:  # rotated: its successor is the one to revoke below
            refresh_token = refresh_token_of(json_body(after) or {}) or refresh_token
    r = s.revoke(client, refresh_token, "refresh_token")
    record("RV-01", "revoke refresh token: 200", r.status_code == 200, f"{r.status_code}")
    r = s.refresh(client, refresh_token)
    record("RV-01", "revoked refresh token refused", *expect_error(r, "invalid_grant"))
    check_revoked_access_token(s, record)


def check_access_token_revocation(s: Session, record: Record) -> None:
    """RFC 7009 §2 and the checklist (access tokens revoked until they expire): an access token
    its client revokes is inactive at once, by introspection (the confidential client's own token),
    else at the resource."""
    conf = s.confidential
    owner = conf if conf is not None and conf.secret else s.client()
    access_token = s.tokens(owner).access_token
    before, source = s.token_state(owner, access_token)
    if before is not True:
        why = f"a fresh access token is not seen active: {source}" if source else "no introspection or resource"
        record("RV-01", "revoked access token inactive", None, why)
        return
    r = s.revoke(owner, access_token, "access_token")
    after, source = s.token_state(owner, access_token)
    ok = r.status_code == 200 and after is False
    record("RV-01", "revoked access token inactive", ok, f"revocation {r.status_code}; then {source}: active={after}")


def check_revoked_access_token(s: Session, record: Record) -> None:
    """RFC 7009 §2.1 (and the checklist: a refresh token's revocation revokes its family) with
    RFC 7662 §2.2 (a revoked token is ``active: false``): after the confidential client revokes its
    refresh token, introspection of the grant's access token must say inactive."""
    conf = s.confidential
    if conf is None or not conf.secret or not isinstance(s.meta.get("introspection_endpoint"), str):
        record("RV-01", "access token of a revoked grant", None, "needs introspection and a confidential client")
        return
    tokens = s.tokens(conf)
    if not tokens.refresh_token or s.introspect(tokens.access_token) is not True:
        record("RV-01", "access token of a revoked grant", None, "no refresh token, or the fresh token not active")
        return
    r = s.revoke(conf, tokens.refresh_token, "refresh_token")
    if r.status_code != 200:
        record("RV-01", "revoke the confidential client's refresh token", False, f"{r.status_code}")
        return
    active = s.introspect(tokens.access_token)
    why = f"introspection after revoking its refresh token: active={active}"
    record("RV-01", "access token of a revoked grant inactive", active is False, why)
    record("IN-01", "revoked token: active false", active is False, why)


def check_introspection(s: Session, record: Record) -> None:
    url = s.meta.get("introspection_endpoint")
    if not isinstance(url, str):
        raise Skip("no introspection_endpoint")
    conf = s.confidential
    if conf is None or not conf.secret:
        raise Skip("needs a confidential client")
    r = s.http.request("POST", url, data={"token": "conformance-unknown-token"}, auth=(conf.client_id, conf.secret))
    if r.status_code in (401, 403):  # RFC 7662 §4: the server decides who may introspect
        raise Skip(
            f"introspection refused the kit's own authenticated client ({r.status_code} error={error_of(r)}): "
            "the server may keep it for resource servers (RFC 7662 §4)"
        )
    body = json_body(r) or {}
    record(
        "IN-01",
        "unknown token: active false",
        r.status_code == 200 and body.get("active") is False,
        f"{r.status_code} {body}",
    )
    r = s.http.request("POST", url, data={"token": "conformance-unknown-token"})
    record("IN-01", "unauthenticated caller refused", r.status_code in (400, 401), f"{r.status_code}")
    tokens = s.tokens(conf)
    active = s.introspect(tokens.access_token)
    record("IN-01", "own fresh token: active true", active is True, f"active={active}")
    # Callers that have not authenticated, asking about a live token: a wrong secret (RFC 7662
    # §2.3: 401, RFC 6749 §5.2 invalid_client), a public client's client_id alone (no credentials).
    r = s.http.request("POST", url, data={"token": tokens.access_token}, auth=(conf.client_id, "wrong-" + conf.secret))
    refused, why = _introspection_refused(r)
    ok = refused and r.status_code == 401 and error_of(r) == "invalid_client"
    record("IN-01", "wrong Basic secret: 401 invalid_client", ok, why)
    public = next((c for c in (s.primary, s.second) if c is not None and c.method == "none"), None)
    if public is not None:
        own = s.tokens(public).access_token
        r = s.http.request("POST", url, data={"token": own, "client_id": public.client_id})
        record("IN-01", "public client's client_id alone refused", *_introspection_refused(r))


def _introspection_refused(response: httpx.Response) -> tuple[bool, str]:
    """IN-01 (RFC 7662 §2.1, §4): a caller that has not authenticated learns nothing of a token:
    an error answer (4xx) with nothing but the error, or ``active: false`` alone (§2.2)."""
    body = json_body(response) or {}
    if response.status_code == 200:
        return body == {"active": False}, f"200, members {sorted(body)[:8]} (expected a refusal, or active false alone)"
    revealed = sorted(set(body) - {"error", "error_description", "error_uri"})[:8]
    ok = 400 <= response.status_code < 500 and not revealed
    return ok, f"{response.status_code} error={error_of(response)}" + (f", members {revealed}" if revealed else "")


# -- protected resource ----------------------------------------------------------------------


def _challenge(response: httpx.Response) -> dict[str, str]:
    """The parameters of the answer's (first) Bearer challenge, among all it makes (RFC 9110 §11.6.1:
    a DPoP challenge may come first, RFC 9449 §7.1); empty without one."""
    header = ", ".join(response.headers.get_list("www-authenticate"))
    return next((params for scheme, params in challenges(header) if scheme == "bearer"), {})


def check_resource_server(s: Session, record: Record) -> None:
    if s.resource is None:
        raise Skip("no --resource given")
    if not s.resource_served:
        raise Skip("--indicator-only: no protected resource is served at --resource")
    client = s.client()
    r = s.call_resource(None)
    ch = _challenge(r)
    record(
        "RS-02",
        "no token: 401 Bearer resource_metadata",
        r.status_code == 401 and "resource_metadata" in ch,
        f"{r.status_code} WWW-Authenticate {r.headers.get('www-authenticate')!r}",
    )
    required = ch.get("scope")
    record("RS-02", "no token: the challenge names the scope", bool(required), f"scope={required!r}")
    r = s.call_resource("conformance.invalid.token")
    ch2 = _challenge(r)
    ok = ch2.get("error") == "invalid_token" and "resource_metadata" in ch2 and bool(ch2.get("scope"))
    record(
        "RS-02",
        "bad token: 401 invalid_token, resource_metadata, scope",
        r.status_code == 401 and ok,
        f"{r.status_code} WWW-Authenticate {r.headers.get('www-authenticate')!r}",
    )
    good = s.tokens(client)
    r = s.call_resource(good.access_token)
    record("RS-02", "valid token accepted", r.status_code not in (401, 403), f"{r.status_code}")
    r = s.http.request(
        "POST", s.resource, params={"access_token": good.access_token}, json_body=TOOLS_LIST, headers=MCP_HEADERS
    )
    record("RS-01", "token in the query string ignored", r.status_code == 401, f"{r.status_code}")
    catalogue = s.catalogue()
    lacking = [sc for sc in catalogue if required and not (required == sc or required.startswith(sc + ":"))]
    if required and lacking:
        narrow = s.tokens(client, scope=lacking[-1])
        r = s.call_resource(narrow.access_token)
        ch3 = _challenge(r)
        ok = r.status_code == 403 and ch3.get("error") == "insufficient_scope" and bool(ch3.get("scope"))
        record(
            "RS-03",
            "token lacking the scope: 403 insufficient_scope, scope, resource_metadata",
            ok and "resource_metadata" in ch3,
            f"token scope {lacking[-1]!r}: {r.status_code} WWW-Authenticate {r.headers.get('www-authenticate')!r}",
        )
    else:
        why = "no other scope exists" if required else "the 401 challenge names no scope (RS-02)"
        record("RS-03", "insufficient scope", None, why)
    if s.other_resource is None:
        record("RS-04", "token for another resource", None, "no --other-resource given")
    else:
        other = s.tokens(client, resource=s.other_resource)
        r = s.call_resource(other.access_token)
        record(
            "RS-04",
            "token for another resource refused",
            r.status_code == 401,
            f"aud={(jwt_payload(other.access_token) or {}).get('aud')!r}: {r.status_code}",
        )


ALL_CHECKS: list[tuple[str, tuple[str, ...], Callable[[Session, Record], None]]] = [
    ("metadata", ("MD-01", "MD-02", "MD-03", "MD-04"), check_metadata),
    ("registration", ("RG-01", "RG-02"), check_registration),
    ("authorization errors", ("AZ-01", "AZ-02", "AZ-03", "AZ-04"), check_authorize_errors),
    ("pkce", ("AZ-05", "TK-03"), check_pkce),
    ("authorization response", ("AZ-08", "TK-01"), check_success_response),
    ("resource and scope", ("AZ-06", "TK-06", "AZ-07"), check_resource_and_scope),
    ("code reuse", ("TK-04",), check_code_reuse),
    ("code binding", ("TK-05",), check_code_binding),
    ("token endpoint", ("TK-01", "TK-02", "TK-08"), check_token_endpoint),
    ("refresh", ("TK-07",), check_refresh),
    ("revocation", ("RV-01",), check_revocation),
    ("introspection", ("IN-01",), check_introspection),
    ("resource server", ("RS-01", "RS-02", "RS-03", "RS-04"), check_resource_server),
]
