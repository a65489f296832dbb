"""The rule ids of the kavachOS spec checklist, with a short title each, in checklist order.

``OBSERVABLE`` are the rules this kit can decide from outside; the others are reported as not
applicable with the reason ``not observable over HTTP`` (entropy, storage, constant time ...).
"""

from __future__ import annotations

RULES: dict[str, str] = {
    "AZ-01": "GET and POST; duplicate parameters refused",
    "AZ-02": "bad client or redirect_uri: error page, never a redirect",
    "AZ-03": "redirect URI matched exactly (loopback port may vary)",
    "AZ-04": "response_type other than code: unsupported_response_type",
    "AZ-05": "PKCE required, S256 only",
    "AZ-06": "resource indicators validated (invalid_target)",
    "AZ-07": "scope validated; granted scope reported",
    "AZ-08": "state verbatim and iss in every authorization response",
    "AZ-09": "codes single use, short-lived, bound",
    "AZ-10": "page security headers, CSRF, 303",
    "AZ-11": "consent shows client, host, scopes, resource",
    "AZ-12": "the user can deny (access_denied)",
    "TK-01": "token endpoint: POST form only, no-store, JSON errors",
    "TK-02": "client authentication; 401 + WWW-Authenticate: Basic",
    "TK-03": "code bound to client, redirect URI and PKCE verifier",
    "TK-04": "code reuse refused and its tokens revoked",
    "TK-05": "another client's (or an expired) code: invalid_grant",
    "TK-06": "token resource within the grant; aud is exactly that resource",
    "TK-07": "refresh rotation, reuse detection, scope narrowing",
    "TK-08": "password, implicit, unknown grants: unsupported_grant_type",
    "TK-09": "opaque refresh tokens, short-lived JWT access tokens",
    "RG-01": "registration: redirect and human-facing URI rules",
    "RG-02": "registration: auth methods, consistency, 201 with the record",
    "RG-03": "registration policy",
    "CM-01": "client ID metadata documents",
    "CM-02": "SSRF-safe document fetch",
    "RV-01": "revocation (RFC 7009)",
    "IN-01": "introspection (RFC 7662)",
    "MD-01": "AS metadata at the well-known URL, issuer byte-identical",
    "MD-02": "AS metadata lists the required members",
    "MD-03": "protected resource metadata (RFC 9728), resource exact",
    "MD-04": "CORS preflight on metadata and endpoints a browser calls, not on authorize",
    "RS-01": "Bearer token from the header only",
    "RS-02": "401 challenges with resource_metadata and scope (and invalid_token)",
    "RS-03": "403 insufficient_scope naming the scope",
    "RS-04": "tokens for another resource refused",
    "RS-05": "canonical resource URIs",
    "GN-01": "HTTPS except loopback",
    "GN-02": "constant-time comparison, hashed secrets, entropy",
    "GN-03": "malformed input: a spec error, never a 500",
}

OBSERVABLE = frozenset(
    {
        "AZ-01",
        "AZ-02",
        "AZ-03",
        "AZ-04",
        "AZ-05",
        "AZ-06",
        "AZ-07",
        "AZ-08",
        "TK-01",
        "TK-02",
        "TK-03",
        "TK-04",
        "TK-05",
        "TK-06",
        "TK-07",
        "TK-08",
        "RG-01",
        "RG-02",
        "RV-01",
        "IN-01",
        "MD-01",
        "MD-02",
        "MD-03",
        "MD-04",
        "RS-01",
        "RS-02",
        "RS-03",
        "RS-04",
    }
)
"""The rules this kit checks (the issue's list plus AZ-01, RS-01, RFC 7009 revocation and RFC 7662 introspection)."""
