"""RFC 9068 access tokens: what we mint, that others verify it, and what our verifier refuses."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import jwt as pyjwt
import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet as JoseKeySet
from token_kit import claims, forge, header_for, mint, signer, verifying

from kavach_core import access_tokens, keys
from kavach_core.access_tokens import InvalidToken
from kavach_core.jose import JoseError
from kavach_core.opaque import b64url_decode
from kavach_core.resource_indicators import canonical_resource

ALGS = ["ES256", "RS256", "EdDSA"]


def _verify(h: Harness, token: str, *, resource: str = RESOURCE, issuer: str = ISSUER) -> access_tokens.AccessToken:
    return access_tokens.verify(token, verifying(h), issuer=issuer, resource=resource, now=h.now)


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h64, p64, _ = token.split(".")
    return json.loads(b64url_decode(h64)), json.loads(b64url_decode(p64))


# -- what we mint ----------------------------------------------------------------------------


def test_tk_09_minted_token_has_rfc9068_header_and_claims(h: Harness) -> None:
    token, at = mint(h, scopes=("tools:list", "tools:call:search"))
    header, payload = _parts(token)
    assert header == {"alg": "ES256", "kid": h.store.keys[0].kid, "typ": "at+jwt"}
    assert payload == {
        "iss": ISSUER,
        "sub": "alice",
        "aud": RESOURCE,
        "client_id": "client-1",
        "scope": "tools:list tools:call:search",
        "iat": h.now,
        "exp": h.now + h.config.lifetimes.access_token,
        "jti": at.jti,
        "gid": "grant-1",
    }
    assert len(b64url_decode(at.jti)) == 16
    assert _verify(h, token) == at


def test_tk_06_audience_is_exactly_one_canonical_resource(h: Harness) -> None:
    """RFC 8707 §2: the token names one resource, in canonical form (RS-05)."""
    token, at = mint(h, resource="HTTPS://MCP.Example.com:443/mcp/")
    assert _parts(token)[1]["aud"] == RESOURCE == at.audience


def test_not_after_caps_the_expiry(h: Harness) -> None:
    token, at = access_tokens.mint(
        h.ctx(), signer(h), subject="s", client_id="c", resource=RESOURCE, scopes=(), grant_id="g", not_after=h.now + 5
    )
    assert at.expires_at == h.now + 5 == _parts(token)[1]["exp"]


def test_every_token_gets_a_fresh_jti(h: Harness) -> None:
    jtis = {mint(h)[1].jti for _ in range(20)}
    assert len(jtis) == 20


# -- interop: independent JOSE libraries verify our tokens against our JWKS JSON -------------


def _interop_harness(alg: str) -> tuple[Harness, str, str]:
    h = Harness(make_config(signing_alg=alg))
    h.now = int(time.time())  # pyjwt checks exp and iat against the real clock
    token, _ = mint(h, scopes=("tools:list",))
    jwks_json = json.dumps(h.run(keys.current(h.ctx())).jwks(h.now))
    return h, token, jwks_json


@pytest.mark.parametrize("alg", ALGS)
def test_interop_pyjwt_verifies_our_tokens(alg: str) -> None:
    _, token, jwks_json = _interop_harness(alg)
    jwk_set = pyjwt.PyJWKSet.from_json(jwks_json)
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = jwk_set[kid]
    decoded = pyjwt.decode(
        token,
        key.key,
        algorithms=[alg],
        audience=RESOURCE,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert decoded["client_id"] == "client-1" and decoded["scope"] == "tools:list"
    assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, key.key, algorithms=[alg], audience=OTHER_RESOURCE, issuer=ISSUER)


@pytest.mark.parametrize("alg", ALGS)
def test_interop_joserfc_verifies_our_tokens(alg: str) -> None:
    h, token, jwks_json = _interop_harness(alg)
    key_set = JoseKeySet.import_key_set(json.loads(jwks_json))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags EdDSA as superseded by RFC 9864's Ed25519
        decoded = jose_jwt.decode(token, key_set, algorithms=[alg])
    assert decoded.header["typ"] == "at+jwt"
    registry = jose_jwt.JWTClaimsRegistry(
        now=h.now,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": RESOURCE},
        sub={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    )
    registry.validate(decoded.claims)
    assert decoded.claims["scope"] == "tools:list"


@pytest.mark.parametrize("alg", ALGS)
def test_interop_tokens_signed_by_another_library_with_our_key_verify_here(alg: str) -> None:
    """The reverse direction: joserfc signs with our private key; our strict verifier agrees."""
    h = Harness(make_config(signing_alg=alg))
    record = h.run(keys.current(h.ctx())).records[0]
    from joserfc.jwk import import_key
    from joserfc.jws import serialize_compact

    private = import_key(record.private_pem, {"ES256": "EC", "RS256": "RSA", "EdDSA": "OKP"}[alg])
    header = {"alg": alg, "kid": record.kid, "typ": "at+jwt"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = serialize_compact(
            header, json.dumps(claims(h), separators=(",", ":")).encode(), private, algorithms=[alg]
        )
    assert _verify(h, token).subject == "alice"


# -- what our verifier refuses ---------------------------------------------------------------


def test_rs_02_expired_token_gets_invalid_token(h: Harness) -> None:
    token, at = mint(h)
    h.now = at.expires_at - 1
    assert _verify(h, token)
    h.now = at.expires_at
    with pytest.raises(InvalidToken, match="expired"):
        _verify(h, token)


def test_wrong_issuer_is_refused(h: Harness) -> None:
    token, _ = mint(h)
    for issuer in (ISSUER + "/", "https://as.example.org", ISSUER.upper()):
        with pytest.raises(InvalidToken, match="issuer"):
            _verify(h, token, issuer=issuer)


def test_rs_04_wrong_audience_is_refused(h: Harness) -> None:
    token, _ = mint(h, resource=OTHER_RESOURCE)
    assert _verify(h, token, resource=OTHER_RESOURCE)
    with pytest.raises(InvalidToken, match="audience"):
        _verify(h, token, resource=RESOURCE)


@pytest.mark.parametrize(
    "aud",
    [[RESOURCE, OTHER_RESOURCE], [OTHER_RESOURCE, RESOURCE], [RESOURCE, RESOURCE], [], None, 5, [5], "not a uri", ""],
)
def test_rs_04_audience_must_be_exactly_one_uri(h: Harness, aud: object) -> None:
    pair = signer(h)
    token = forge(pair, header_for(pair), claims(h, aud=aud) if aud is not None else claims(h, aud=None))
    with pytest.raises(InvalidToken):
        _verify(h, token)


def test_single_element_audience_list_is_accepted(h: Harness) -> None:
    """RFC 7519 §4.1.3 allows an array; one element naming this resource is one audience."""
    pair = signer(h)
    assert _verify(h, forge(pair, header_for(pair), claims(h, aud=[RESOURCE]))).audience == RESOURCE


def test_rs_05_audience_is_canonicalised_before_comparison(h: Harness) -> None:
    """RS-05: both sides are compared canonical, so a non-canonical spelling of this resource is this resource."""
    pair = signer(h)
    for aud in ("https://MCP.example.com/mcp/", "HTTPS://mcp.example.com:443/mcp"):
        assert _verify(h, forge(pair, header_for(pair), claims(h, aud=aud))).audience == RESOURCE
    with pytest.raises(InvalidToken):
        _verify(h, forge(pair, header_for(pair), claims(h, aud="https://mcp.example.com/MCP")))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sub", None),
        ("sub", ""),
        ("sub", 1),
        ("client_id", None),
        ("client_id", ""),
        ("client_id", 5),
        ("jti", None),
        ("jti", ["x"]),
        ("jti", ""),
        ("gid", None),
        ("gid", ""),
        ("gid", 5),
        ("exp", None),
        ("exp", "1900000000"),
        ("exp", True),
        ("exp", 1.9e9),
        ("iat", None),
        ("iat", True),
        ("scope", ["tools:list"]),
        ("nbf", "soon"),
        ("nbf", True),
    ],
)
def test_malformed_claims_are_refused(h: Harness, name: str, value: object) -> None:
    pair = signer(h)
    body = claims(h)
    if value is None:
        body.pop(name)
    else:
        body[name] = value
    with pytest.raises(InvalidToken):
        _verify(h, forge(pair, header_for(pair), body))


def test_non_string_identity_claims_are_refused_even_when_all_are_non_strings(h: Harness) -> None:
    """RFC 9068 §2.2: ``sub``, ``client_id`` and ``jti`` are strings (``gid`` too, here); a token
    whose identity claims are all numbers is refused, not one claim at a time."""
    pair = signer(h)
    body = claims(h, sub=1, client_id=2, jti=3, gid=4)
    with pytest.raises(InvalidToken, match="not a string"):
        _verify(h, forge(pair, header_for(pair), body))


@pytest.mark.parametrize(("scope", "scopes"), [("", ()), ("tools:list  tools:call ", ("tools:list", "tools:call"))])
def test_empty_scope_items_are_dropped(h: Harness, scope: str, scopes: tuple[str, ...]) -> None:
    """RFC 6749 §3.3: scope tokens are non-empty; an empty ``scope`` grants nothing (not the
    empty-string scope), and doubled or trailing spaces add no scope."""
    pair = signer(h)
    assert _verify(h, forge(pair, header_for(pair), claims(h, scope=scope))).scopes == scopes


def test_tokens_from_the_future_are_refused(h: Harness) -> None:
    pair = signer(h)
    with pytest.raises(InvalidToken, match="future"):
        _verify(h, forge(pair, header_for(pair), claims(h, iat=h.now + 3600, exp=h.now + 4000)))
    # RFC 7519 §4.1.6 clock skew: up to 60 s ahead of now is accepted, one more second is not.
    assert _verify(h, forge(pair, header_for(pair), claims(h, iat=h.now + 60, exp=h.now + 600)))
    with pytest.raises(InvalidToken, match="future"):
        _verify(h, forge(pair, header_for(pair), claims(h, iat=h.now + 61, exp=h.now + 600)))
    with pytest.raises(InvalidToken, match="not yet"):
        _verify(h, forge(pair, header_for(pair), claims(h, nbf=h.now + 10)))
    assert _verify(h, forge(pair, header_for(pair), claims(h, nbf=h.now)))


@pytest.mark.parametrize("resource", ["not a uri", "https://mcp.example.com/mcp#frag", ""])
def test_an_invalid_resource_to_verify_for_raises_invalid_token(h: Harness, resource: str) -> None:
    """``verify`` raises InvalidToken or JoseError and nothing else (GN-03), a bad ``resource`` argument included."""
    token, _ = mint(h)
    with pytest.raises(InvalidToken, match="resource URI"):
        _verify(h, token, resource=resource)


def test_jwt_typ_is_refused_for_an_access_token(h: Harness) -> None:
    """RFC 9068 §4 / RFC 8725 §3.11: a correctly signed ``typ: JWT`` (say, an ID token) is not an access token."""
    pair = signer(h)
    with pytest.raises(JoseError, match="typ"):
        _verify(h, forge(pair, header_for(pair, typ="JWT"), claims(h)))


# -- the audience property -------------------------------------------------------------------

_label = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
_segment = st.from_regex(r"[A-Za-z0-9_\-]{1,8}", fullmatch=True)


@st.composite
def _resources(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["https", "http"]))
    host = ".".join(draw(st.lists(_label, min_size=1, max_size=3))) + ".example"
    port = draw(st.sampled_from(["", ":8443", ":443", ":80", ":9000"]))
    path = "".join("/" + s for s in draw(st.lists(_segment, max_size=3)))
    return f"{scheme}://{host}{port}{path}"


def _variants(uri: str) -> list[str]:
    """URIs that differ from ``uri`` only in trailing slash, host or path case, port, scheme or an added segment."""
    scheme, rest = uri.split("://", 1)
    host, _, path = rest.partition("/")
    path = "/" + path if path else ""
    bare_host = host.split(":")[0]
    other_scheme = "http" if scheme == "https" else "https"
    out = [
        uri + "/",
        uri.rstrip("/") + "//" if path else uri + "/",
        f"{scheme}://{host.upper()}{path}",
        f"{scheme.upper()}://{host}{path}",
        f"{scheme}://{host}{path.upper()}",
        f"{scheme}://{host}{path.lower()}",
        f"{scheme}://{bare_host}:1234{path}",
        f"{scheme}://{bare_host}:443{path}",
        f"{scheme}://{bare_host}:80{path}",
        f"{scheme}://{bare_host}{path}",
        f"{other_scheme}://{host}{path}",
        f"{scheme}://{host}{path}/extra",
        f"{scheme}://{host}/extra{path}",
        f"{scheme}://{host}{path[:-1]}" if len(path) > 2 else f"{scheme}://{host}/x",
        f"{scheme}://www.{host}{path}",
    ]
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resource=_resources())
def test_rs_05_token_for_r_verifies_at_r_and_nowhere_else(resource: str) -> None:
    """Invariant (RS-04, RS-05, RFC 8707): a token minted for resource R verifies at a resource S
    exactly when canonical(S) == canonical(R). URIs that differ only in trailing slash, default
    port or scheme/host case are the same resource; a different path case, port, scheme, host or
    an added path segment is a different resource and the token is refused there."""
    h = Harness()
    token, _ = mint(h, resource=resource)
    assert _verify(h, token, resource=resource).audience == canonical_resource(resource)
    for other in _variants(resource):
        same = canonical_resource(other) == canonical_resource(resource)
        try:
            _verify(h, token, resource=other)
            verified = True
        except InvalidToken:
            verified = False
        assert verified == same, (resource, other)


def test_rs_05_trailing_slash_port_and_case_variants_are_the_same_resource(h: Harness) -> None:
    token, _ = mint(h)
    for same in ("https://mcp.example.com/mcp/", "https://MCP.EXAMPLE.COM/mcp", "HTTPS://mcp.example.com:443/mcp"):
        assert _verify(h, token, resource=same).audience == RESOURCE
    for other in (
        "https://mcp.example.com/MCP",
        "http://mcp.example.com/mcp",
        "https://mcp.example.com:8443/mcp",
        "https://mcp.example.com/mcp/x",
        "https://mcp.example.com",
        "https://mcp.example.com/mc",
    ):
        with pytest.raises(InvalidToken):
            _verify(h, token, resource=other)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "gid", "client_id", "scope"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=30), st.lists(st.text(max_size=30), max_size=3)
        ),
    )
)
def test_signed_arbitrary_claims_raise_only_jose_errors(h: Harness, payload: dict[str, Any]) -> None:
    """Invariant: whatever claims a validly signed token carries, ``verify`` returns or raises JoseError."""
    pair = signer(h)
    try:
        at = _verify(h, forge(pair, header_for(pair), payload))
    except JoseError:
        return
    assert at.audience == RESOURCE and payload["iss"] == ISSUER
