"""The introspection endpoint: IN-01 (RFC 7662), and GN-03 for everything it rejects."""

from __future__ import annotations

import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, basic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issued_tokens import CLIENT_SECRET, add_client, clients, form_request, issue, snapshot, writes

from kavach_core import effects as fx
from kavach_core.endpoints import introspection
from kavach_core.http import Response
from kavach_core.opaque import refresh_token

PATH = "/introspect"


@pytest.fixture
def hi(h: Harness) -> Harness:
    clients(h)
    return h


def introspect(
    h: Harness, token: str, *, client: tuple[str, str] | None = ("c1", CLIENT_SECRET), hint: str | None = None
) -> tuple[Response, list[fx.Effect]]:
    form = {"token": token}
    if hint is not None:
        form["token_type_hint"] = hint
    return h.trace(introspection.handle(h.ctx(), form_request(h, PATH, form, client=client)))


def test_in_01_active_access_token(hi: Harness) -> None:
    issued = issue(hi, scopes=("tools:list",), resource=OTHER_RESOURCE)
    resp, effects = introspect(hi, issued.access)
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    assert resp.json() == {
        "active": True,
        "scope": "tools:list",
        "client_id": "c1",
        "sub": "alice",
        "aud": OTHER_RESOURCE,
        "iss": ISSUER,
        "exp": issued.expires_at,
        "iat": hi.now,
        "jti": issued.jti,
        "token_type": "Bearer",
    }
    assert writes(effects) == []
    assert fx.IsTokenRevoked(issued.jti, issued.grant.grant_id) in effects


def test_in_01_active_refresh_token(hi: Harness) -> None:
    issued = issue(hi)
    resp, effects = introspect(hi, issued.refresh, hint="refresh_token")
    body = resp.json()
    assert body["active"] is True
    assert body["client_id"] == "c1"
    assert body["sub"] == "alice"
    assert body["scope"] == "tools:list tools:call"
    assert body["aud"] == [RESOURCE]
    assert body["exp"] == issued.grant.refresh_expires_at
    assert "token_type" not in body
    assert writes(effects) == []


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token", "nonsense"])
def test_in_01_hint_does_not_change_the_answer(hi: Harness, hint: str | None) -> None:
    issued = issue(hi)
    assert introspect(hi, issued.access, hint=hint)[0].json()["active"] is True
    assert introspect(hi, issued.refresh, hint=hint)[0].json()["active"] is True


def test_in_01_revoked_access_token_is_inactive(hi: Harness) -> None:
    issued = issue(hi)
    hi.store.perform(fx.RevokeAccessToken(issued.jti, issued.expires_at))
    assert introspect(hi, issued.access)[0].json() == {"active": False}


def test_in_01_revoked_grant_makes_both_tokens_inactive(hi: Harness) -> None:
    issued = issue(hi)
    hi.store.perform(fx.RevokeGrant(issued.grant.grant_id, hi.now))
    assert introspect(hi, issued.access)[0].json() == {"active": False}
    assert introspect(hi, issued.refresh)[0].json() == {"active": False}


def test_in_01_expired_tokens_are_inactive(hi: Harness) -> None:
    issued = issue(hi)
    hi.now = issued.expires_at
    assert introspect(hi, issued.access)[0].json() == {"active": False}
    assert introspect(hi, issued.refresh)[0].json()["active"] is True
    hi.now = issued.grant.refresh_expires_at
    assert introspect(hi, issued.refresh)[0].json() == {"active": False}


def test_in_01_superseded_refresh_token_is_inactive(hi: Harness) -> None:
    issued = issue(hi, generation=2)
    stale = refresh_token(hi.config.secret, issued.grant.grant_id, 1)
    assert introspect(hi, stale)[0].json() == {"active": False}
    assert introspect(hi, issued.refresh)[0].json()["active"] is True


def test_in_01_deleted_grant_is_inactive(hi: Harness) -> None:
    issued = issue(hi)
    del hi.store.grants[issued.grant.grant_id]
    assert introspect(hi, issued.access)[0].json() == {"active": False}
    assert introspect(hi, issued.refresh)[0].json() == {"active": False}


@pytest.mark.parametrize("kind", ["access", "refresh"])
def test_in_01_another_clients_token_reveals_nothing(hi: Harness, kind: str) -> None:
    issued = issue(hi, "c2")
    token = issued.access if kind == "access" else issued.refresh
    resp, effects = introspect(hi, token)
    assert resp.status == 200
    assert resp.json() == {"active": False}
    assert writes(effects) == []


@pytest.mark.parametrize("token", ["unknown", "a.b.c", "kvr_" + "B" * 70, "ey" * 3000])
def test_in_01_unknown_tokens_are_inactive(hi: Harness, token: str) -> None:
    issue(hi)
    resp, effects = introspect(hi, token)
    assert resp.status == 200
    assert resp.json() == {"active": False}
    assert writes(effects) == []


def test_in_01_public_clients_may_not_introspect(hi: Harness) -> None:
    issued = issue(hi, "pub")
    req = form_request(hi, PATH, {"token": issued.access, "client_id": "pub"}, client=None)
    resp, effects = hi.trace(introspection.handle(hi.ctx(), req))
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_client"
    assert writes(effects) == []


@pytest.mark.parametrize("client", [("c1", "wrong"), ("ghost", "x"), None])
def test_in_01_callers_must_authenticate(hi: Harness, client: tuple[str, str] | None) -> None:
    issued = issue(hi)
    resp, effects = introspect(hi, issued.access, client=client)
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_client"
    assert (resp.header("WWW-Authenticate") or "").startswith("Basic")
    assert "active" not in resp.json()
    assert writes(effects) == []


def test_in_01_client_secret_post(hi: Harness) -> None:
    add_client(hi, "cp", "post-secret", method="client_secret_post")
    issued = issue(hi, "cp")
    form = {"token": issued.access, "client_id": "cp", "client_secret": "post-secret"}
    req = form_request(hi, PATH, form, client=None)
    resp, _ = hi.trace(introspection.handle(hi.ctx(), req))
    assert resp.json()["active"] is True


def test_in_01_token_is_required_and_post_only(hi: Harness) -> None:
    resp, effects = hi.trace(introspection.handle(hi.ctx(), form_request(hi, PATH, {})))
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"
    get = hi.request("GET", PATH, query={"token": "x"}, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = hi.trace(introspection.handle(hi.ctx(), get))
    assert resp.status == 405
    assert writes(effects) == []


def test_in_01_introspection_never_writes(hi: Harness) -> None:
    """Introspection has no reason to write: not even a signing key on an empty store."""
    before = snapshot(hi)
    resp, effects = introspect(hi, "a.b.c")
    assert resp.json() == {"active": False}
    assert writes(effects) == []
    assert snapshot(hi) == before


def test_in_01_through_the_router(hi: Harness) -> None:
    issued = issue(hi)
    resp = hi.route(form_request(hi, PATH, {"token": issued.access}))
    assert resp.json()["active"] is True
    assert resp.header("Access-Control-Allow-Origin") == "*"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", ""]),
    auth=st.one_of(st.none(), st.text(max_size=60), st.just("Basic YzE6czNjcmV0LW9mLWMx")),
)
def test_gn_03_introspection_never_raises_on_arbitrary_input(
    h: Harness, body: bytes, content_type: str, auth: str | None
) -> None:
    """Invariant: for any body (up to 300 bytes), under a form, JSON or no content type, with no,
    any, or a valid client's Basic Authorization value, introspection raises nothing and writes
    nothing: it answers 200 with a boolean ``active``, or a 4xx whose JSON ``error`` is a string."""
    clients(h)
    headers = [("Content-Type", content_type)]
    if auth is not None:
        headers.append(("Authorization", auth))
    resp, effects = h.trace(introspection.handle(h.ctx(), h.request("POST", PATH, headers=headers, body=body)))
    assert writes(effects) == []
    if resp.status == 200:
        assert isinstance(resp.json()["active"], bool)
    else:
        assert 400 <= resp.status < 500
        assert isinstance(resp.json()["error"], str)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(token=st.text(min_size=1, max_size=200))
def test_gn_03_introspection_arbitrary_tokens_are_inactive(h: Harness, token: str) -> None:
    """Invariant: any token string (1 to 200 characters, none issued here) that an authenticated
    client presents writes nothing and is answered ``{"active": false}`` (200), unless the form
    itself is refused (400, as for a NUL in it)."""
    clients(h)
    req = h.request("POST", PATH, form={"token": token}, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = h.trace(introspection.handle(h.ctx(), req))
    assert writes(effects) == []
    assert resp.status in (200, 400)
    if resp.status == 200:
        assert resp.json() == {"active": False}


def _resign(h: Harness, token: str, **changes: object) -> str:
    """``token``'s claims changed by ``changes`` (``None`` removes one), signed with our key."""
    from kavach_core import jose, keys

    keyset = keys.KeySet(h.store.keys)
    _, claims = jose.verify(token, keyset.verifying_keys(h.now), "at+jwt")
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jose.sign(keys.load(keyset.active(h.now, h.config.signing_alg)), claims, "at+jwt")


def test_in_01_single_audience_array_is_accepted(hi: Harness) -> None:
    issued = issue(hi)
    token = _resign(hi, issued.access, aud=[RESOURCE])
    assert introspect(hi, token)[0].json()["aud"] == RESOURCE


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": None},
        {"aud": [RESOURCE, OTHER_RESOURCE]},
        {"aud": 5},
        {"aud": "not a uri"},
        {"aud": "https://unknown.example.com/mcp"},
        {"iss": "https://evil.example.com"},
        {"client_id": None},
        {"jti": 7},
        {"exp": "soon"},
    ],
)
def test_in_01_our_signature_on_wrong_claims_is_inactive(hi: Harness, changes: dict[str, object]) -> None:
    issued = issue(hi)
    resp, effects = introspect(hi, _resign(hi, issued.access, **changes))
    assert resp.json() == {"active": False}
    assert writes(effects) == []
