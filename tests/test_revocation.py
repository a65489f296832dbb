"""The revocation endpoint: RV-01 (RFC 7009), and GN-03 for everything it rejects."""

from __future__ import annotations

import attrs
import pytest
from conftest import RESOURCE, Harness, basic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issued_tokens import CLIENT_SECRET, OTHER_SECRET, add_client, clients, form_request, issue, snapshot, writes

from kavach_core import effects as fx
from kavach_core import jose, keys
from kavach_core.endpoints import revocation
from kavach_core.http import Response

PATH = "/revoke"


@pytest.fixture
def hr(h: Harness) -> Harness:
    clients(h)
    return h


def revoke(h: Harness, req: object) -> tuple[Response, list[fx.Effect]]:
    return h.trace(revocation.handle(h.ctx(), req))  # type: ignore[arg-type]


def is_revoked(h: Harness, jti: str, gid: str) -> bool:
    return bool(h.store.perform(fx.IsTokenRevoked(jti, gid)))


def test_rv_01_refresh_token_revokes_its_whole_grant(hr: Harness) -> None:
    issued = issue(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.refresh}))
    assert resp.status == 200
    assert resp.header("Cache-Control") == "no-store"
    assert [type(e) for e in writes(effects)] == [fx.RevokeGrant]
    assert hr.store.grants[issued.grant.grant_id].revoked
    # the access token issued under the grant stops working too
    assert is_revoked(hr, issued.jti, issued.grant.grant_id)


def test_rv_01_access_token_revoked_until_it_expires(hr: Harness) -> None:
    issued = issue(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.access}))
    assert resp.status == 200
    assert writes(effects) == [fx.RevokeAccessToken(issued.jti, issued.expires_at)]
    assert hr.store.revoked_jtis[issued.jti] == issued.expires_at
    assert not hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_superseded_refresh_token_still_revokes_the_family(hr: Harness) -> None:
    issued = issue(hr, generation=3)
    from kavach_core.opaque import refresh_token

    stale = refresh_token(hr.config.secret, issued.grant.grant_id, 1)
    resp, _ = revoke(hr, form_request(hr, PATH, {"token": stale}))
    assert resp.status == 200
    assert hr.store.grants[issued.grant.grant_id].revoked


@pytest.mark.parametrize("hint", ["access_token", "refresh_token", "id_token", "bogus"])
def test_rv_01_token_type_hint_is_only_a_hint(hr: Harness, hint: str) -> None:
    a = issue(hr)
    b = issue(hr)
    revoke(hr, form_request(hr, PATH, {"token": a.refresh, "token_type_hint": hint}))
    revoke(hr, form_request(hr, PATH, {"token": b.access, "token_type_hint": hint}))
    assert hr.store.grants[a.grant.grant_id].revoked
    assert b.jti in hr.store.revoked_jtis


def test_rv_01_public_client_revokes_its_own_token(hr: Harness) -> None:
    issued = issue(hr, "pub")
    req = form_request(hr, PATH, {"token": issued.refresh, "client_id": "pub"}, client=None)
    resp, _ = revoke(hr, req)
    assert resp.status == 200
    assert hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_client_secret_post_is_accepted(hr: Harness) -> None:
    add_client(hr, "cp", "post-secret", method="client_secret_post")
    issued = issue(hr, "cp")
    form = {"token": issued.access, "client_id": "cp", "client_secret": "post-secret"}
    req = form_request(hr, PATH, form, client=None)
    resp, _ = revoke(hr, req)
    assert resp.status == 200
    assert issued.jti in hr.store.revoked_jtis


def test_rv_01_client_must_use_its_registered_method(hr: Harness) -> None:
    issued = issue(hr)
    form = {"token": issued.access, "client_id": "c1", "client_secret": CLIENT_SECRET}
    req = form_request(hr, PATH, form, client=None)
    resp, effects = revoke(hr, req)
    assert resp.status == 401
    assert writes(effects) == []
    assert issued.jti not in hr.store.revoked_jtis


@pytest.mark.parametrize("kind", ["refresh", "access"])
def test_rv_01_another_clients_token_is_200_and_untouched(hr: Harness, kind: str) -> None:
    issued = issue(hr, "c2")
    token = issued.refresh if kind == "refresh" else issued.access
    before = snapshot(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": token}))
    assert resp.status == 200
    assert writes(effects) == []
    assert snapshot(hr) == before


@pytest.mark.parametrize(
    "token",
    [
        "unknown",
        "kvr_" + "A" * 70,
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJqdGkiOiJ4In0.",
        "x" * 5000,
    ],
)
def test_rv_01_unknown_or_invalid_tokens_get_200_and_change_nothing(hr: Harness, token: str) -> None:
    issue(hr)
    before = snapshot(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": token}))
    assert resp.status == 200
    assert writes(effects) == []
    assert snapshot(hr) == before


def test_rv_01_refresh_token_under_another_secret_is_unknown(hr: Harness) -> None:
    issued = issue(hr)
    from kavach_core.opaque import refresh_token

    forged = refresh_token(b"z" * 32, issued.grant.grant_id, 0)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": forged}))
    assert resp.status == 200
    assert writes(effects) == []
    assert not hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_access_token_signed_by_a_stranger_is_unknown(hr: Harness) -> None:
    issued = issue(hr)
    _, claims = jose.verify(issued.access, keys.KeySet(hr.store.keys).verifying_keys(hr.now), "at+jwt")
    other = Harness(seed=99)
    stranger = keys.load(keys.generate(other.ctx()))
    forged = jose.sign(attrs.evolve(stranger, kid=keys.KeySet(hr.store.keys).records[0].kid), claims, "at+jwt")
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": forged}))
    assert resp.status == 200
    assert writes(effects) == []


def test_rv_01_expired_access_token_needs_no_write(hr: Harness) -> None:
    issued = issue(hr)
    hr.now = issued.expires_at + 1
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.access}))
    assert resp.status == 200
    assert writes(effects) == []


def test_rv_01_already_revoked_grant_is_not_written_again(hr: Harness) -> None:
    issued = issue(hr)
    revoke(hr, form_request(hr, PATH, {"token": issued.refresh}))
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.refresh}))
    assert resp.status == 200
    assert writes(effects) == []


def test_rv_01_refresh_token_of_a_purged_grant_is_200_and_writes_nothing(hr: Harness) -> None:
    """A genuine refresh token whose grant the store has purged (past its absolute expiry) is an
    invalid token: 200 and nothing written (RFC 7009 §2.2), not a server error (GN-03)."""
    issued = issue(hr)
    hr.now = issued.grant.expires_at
    hr.store.purge(hr.now)
    assert issued.grant.grant_id not in hr.store.grants
    before = snapshot(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.refresh}))
    assert resp.status == 200
    assert writes(effects) == []
    assert snapshot(hr) == before


def test_rv_01_revocation_never_generates_signing_keys(h: Harness) -> None:
    clients(h)
    resp, effects = revoke(h, form_request(h, PATH, {"token": "a.b.c"}))
    assert resp.status == 200
    assert writes(effects) == []
    assert h.store.keys == ()


# -- client authentication ---------------------------------------------------------------


@pytest.mark.parametrize(
    "client",
    [("c1", "wrong"), ("nobody", "x"), ("c1", OTHER_SECRET)],
)
def test_rv_01_failed_basic_authentication_is_401_with_challenge(hr: Harness, client: tuple[str, str]) -> None:
    issued = issue(hr)
    before = snapshot(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.refresh}, client=client))
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_client"
    assert (resp.header("WWW-Authenticate") or "").startswith("Basic")
    assert resp.header("Cache-Control") == "no-store"
    assert writes(effects) == []
    assert snapshot(hr) == before


def test_rv_01_no_client_authentication_is_401(hr: Harness) -> None:
    issued = issue(hr)
    resp, effects = revoke(hr, form_request(hr, PATH, {"token": issued.refresh}, client=None))
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_client"
    assert writes(effects) == []
    assert not hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_confidential_client_posing_as_public_is_refused(hr: Harness) -> None:
    issued = issue(hr)
    req = form_request(hr, PATH, {"token": issued.refresh, "client_id": "c1"}, client=None)
    resp, effects = revoke(hr, req)
    assert resp.status == 401
    assert writes(effects) == []


def test_rv_01_malformed_basic_header_is_401(hr: Harness) -> None:
    req = form_request(hr, PATH, {"token": "x"}, client=None, headers=(("Authorization", "Basic !!!"),))
    resp, effects = revoke(hr, req)
    assert resp.status == 401
    assert (resp.header("WWW-Authenticate") or "").startswith("Basic")
    assert writes(effects) == []


def test_rv_01_two_authentication_methods_are_invalid_request(hr: Harness) -> None:
    req = form_request(hr, PATH, {"token": "x", "client_secret": CLIENT_SECRET})
    resp, _ = revoke(hr, req)
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"


# -- request shape -------------------------------------------------------------------------


def test_rv_01_token_is_required(hr: Harness) -> None:
    resp, effects = revoke(hr, form_request(hr, PATH, {}))
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"
    assert writes(effects) == []


def test_rv_01_token_given_twice_is_invalid_request(hr: Harness) -> None:
    issued = issue(hr)
    form = [("token", issued.refresh), ("token", "x")]
    req = hr.request("POST", PATH, form=form, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = revoke(hr, req)
    assert resp.status == 400
    assert writes(effects) == []
    assert not hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_post_form_only(hr: Harness) -> None:
    issued = issue(hr)
    as_json = hr.request("POST", PATH, json={"token": issued.refresh}, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = revoke(hr, as_json)
    assert resp.status == 400
    assert writes(effects) == []
    as_get = hr.request("GET", PATH, query={"token": issued.refresh}, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = revoke(hr, as_get)
    assert resp.status == 405
    assert writes(effects) == []
    routed = hr.route(as_get)
    assert routed.status == 405
    assert routed.header("Allow") == "POST, OPTIONS"
    assert not hr.store.grants[issued.grant.grant_id].revoked


def test_rv_01_through_the_router(hr: Harness) -> None:
    issued = issue(hr, resource=RESOURCE)
    resp = hr.route(form_request(hr, PATH, {"token": issued.refresh}))
    assert resp.status == 200
    assert resp.header("Access-Control-Allow-Origin") == "*"
    assert hr.store.grants[issued.grant.grant_id].revoked


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain", ""]),
    auth=st.one_of(st.none(), st.text(max_size=60), st.just("Basic YzE6czNjcmV0LW9mLWMx")),
)
def test_gn_03_revocation_never_raises_on_arbitrary_input(
    h: Harness, body: bytes, content_type: str, auth: str | None
) -> None:
    """Invariant: for any body (up to 300 bytes), content type and no, any, or a valid client's
    Basic Authorization value, revocation raises nothing; unless it answers 200 it answers a 4xx
    whose JSON ``error`` is a string, having written nothing and left the store as it was."""
    clients(h)
    headers = [("Content-Type", content_type)]
    if auth is not None:
        headers.append(("Authorization", auth))
    req = h.request("POST", PATH, headers=headers, body=body)
    before = snapshot(h)
    resp, effects = revoke(h, req)
    if resp.status != 200:
        assert 400 <= resp.status < 500
        assert isinstance(resp.json()["error"], str)
        assert writes(effects) == []
        assert snapshot(h) == before


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    params=st.lists(
        st.tuples(
            st.sampled_from(["token", "token_type_hint", "client_id", "client_secret", "x"]), st.text(max_size=40)
        ),
        max_size=6,
    )
)
def test_gn_03_revocation_arbitrary_parameters(h: Harness, params: list[tuple[str, str]]) -> None:
    """Invariant: for any list of up to six form parameters (the revocation request's, repeated
    or not, and an unknown one) from an authenticated client holding issued tokens, revocation
    answers 200 with an empty body (RFC 7009 §2.2), or a 4xx whose JSON ``error`` is a string
    having written nothing."""
    clients(h)
    issue(h)
    req = h.request("POST", PATH, form=params, headers=[basic("c1", CLIENT_SECRET)])
    resp, effects = revoke(h, req)
    if resp.status == 200:
        assert resp.body == b""
    else:
        assert 400 <= resp.status < 500
        assert isinstance(resp.json()["error"], str)
        assert writes(effects) == []
