"""Effect traces: a rejected request writes nothing (GN-03), except the two revocations the rules
demand (TK-04 code replay, TK-07 refresh reuse), whose writes are asserted exactly.

Each test runs a flow with ``h.trace`` and inspects the effects it yielded, so a write that the
memory store would happen to ignore is caught too.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import OTHER_RESOURCE, Harness, basic, make_config
from oauth_flows import (
    REDIRECT,
    add_client,
    az_query,
    code_form,
    consent,
    get_code,
    jwt_parts,
    location_params,
    snapshot,
    tokens,
    writes,
)

from kavach_core import effects as fx
from kavach_core import keys
from kavach_core.config import Lifetimes
from kavach_core.endpoints import authorize, token
from kavach_core.http import Response
from kavach_core.messages.authorization import ConsentRequired

SECRET = "s3cret"


@pytest.fixture
def hc(h: Harness) -> Harness:
    add_client(h)
    add_client(h, "conf", secret=SECRET)
    add_client(h, "c2")
    return h


def trace_authorize(h: Harness, pairs: Any, method: str = "GET") -> tuple[Any, list[fx.Effect]]:
    if method == "GET":
        req = h.request("GET", "/authorize", query=pairs)
    else:
        req = h.request(method, "/authorize", form=pairs)
    return h.trace(authorize.handle(h.ctx(), req))


def trace_token(h: Harness, form: Any, headers: Any = ()) -> tuple[Response, list[fx.Effect]]:
    req = h.request("POST", "/token", form=form, headers=headers)
    out, effects = h.trace(token.handle(h.ctx(), req))
    assert isinstance(out, Response)
    return out, effects


REJECTED_AUTHORIZE: list[Any] = [
    az_query(client_id=None),
    az_query(client_id="ghost"),
    az_query(redirect_uri="https://evil.example/cb"),
    az_query(redirect_uri=REDIRECT + "/"),
    [*az_query().items(), ("client_id", "c1")],
    [*az_query().items(), ("redirect_uri", REDIRECT)],
    [*az_query().items(), ("state", "x")],
    az_query(response_type="token"),
    az_query(response_type=None),
    az_query(code_challenge=None),
    az_query(code_challenge_method="plain"),
    az_query(code_challenge_method=None),
    az_query(code_challenge="short"),
    az_query(resource="https://unknown.example/mcp"),
    az_query(resource="https://mcp.example.com/mcp#f"),
    az_query(resource="/relative"),
    az_query(resource=None),
    az_query(scope="admin"),
    az_query(scope="tools::x"),
    az_query(state="s" * 5000),
    az_query(client_id="c" * 3000),
]


@pytest.mark.parametrize("pairs", REJECTED_AUTHORIZE)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_gn_03_rejected_authorization_request_writes_nothing(hc: Harness, pairs: Any, method: str) -> None:
    before = snapshot(hc)
    out, effects = trace_authorize(hc, pairs, method)
    assert isinstance(out, Response) and out.status in (303, 400), out
    assert writes(effects) == []
    assert snapshot(hc) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_gn_03_authorization_with_wrong_method_writes_nothing(hc: Harness, method: str) -> None:
    req = hc.request(method, "/authorize", query=az_query())
    out, effects = hc.trace(authorize.handle(hc.ctx(), req))
    assert out.status == 405
    assert effects == []


def test_accepted_authorization_request_writes_only_the_pending_record(hc: Harness) -> None:
    out, effects = trace_authorize(hc, az_query())
    assert isinstance(out, ConsentRequired)
    assert [type(e) for e in writes(effects)] == [fx.PutPending]


def test_approve_writes_take_pending_and_put_code(hc: Harness) -> None:
    ticket = consent(hc).ticket
    resp, effects = hc.trace(authorize.approve(hc.ctx(), ticket, "alice"))
    assert resp.status == 303
    assert [type(e) for e in writes(effects)] == [fx.TakePending, fx.PutCode]


def test_deny_takes_the_pending_record_and_writes_no_code(hc: Harness) -> None:
    ticket = consent(hc).ticket
    resp, effects = hc.trace(authorize.deny(hc.ctx(), ticket))
    assert resp.status == 303
    assert [type(e) for e in writes(effects)] == [fx.TakePending]


@pytest.mark.parametrize("decide", ["approve", "deny"])
def test_unknown_or_used_ticket_changes_nothing(hc: Harness, decide: str) -> None:
    """A stale ticket's only effect is the atomic take, which finds nothing and so changes nothing."""
    ticket = consent(hc).ticket
    hc.run(authorize.deny(hc.ctx(), ticket))
    for t in (ticket, "nope"):
        before = snapshot(hc)
        flow = authorize.approve(hc.ctx(), t, "alice") if decide == "approve" else authorize.deny(hc.ctx(), t)
        resp, effects = hc.trace(flow)
        assert resp.status == 400 and resp.header("location") is None
        assert [type(e) for e in effects] == [fx.TakePending]
        assert snapshot(hc) == before


# -- the token endpoint ---------------------------------------------------------------------------


def test_gn_03_rejected_code_redemptions_write_nothing(hc: Harness) -> None:
    code = get_code(hc)
    cases: list[tuple[Any, Any]] = [
        (code_form(code, code_verifier="w" * 43), ()),
        (code_form(code, code_verifier=None), ()),
        (code_form(code, code_verifier="short"), ()),
        (code_form(code, redirect_uri=None), ()),
        (code_form(code, redirect_uri="https://evil.example/cb"), ()),
        (code_form(code, client_id="c2"), ()),
        (code_form(code, client_id="ghost"), ()),
        (code_form(code, client_id=None), [basic("conf", SECRET)]),
        (code_form(code, client_id=None), [basic("conf", "wrong")]),
        (code_form(code, client_secret="x"), ()),
        (code_form(code, resource=OTHER_RESOURCE), ()),
        (code_form(code, resource="nonsense"), ()),
        ([*code_form(code).items(), ("resource", OTHER_RESOURCE), ("resource", OTHER_RESOURCE)], ()),
        ([*code_form(code).items(), ("code", code)], ()),
        (code_form(code, code=None), ()),
        (code_form("A" * 43), ()),
        (code_form(code, grant_type="password"), ()),
        (code_form(code, grant_type=None), ()),
    ]
    for form, headers in cases:
        before = snapshot(hc)
        resp, effects = trace_token(hc, form, headers)
        assert resp.status in (400, 401), (form, resp.body)
        assert writes(effects) == [], (form, effects)
        assert snapshot(hc) == before
    # Expired.
    hc.now += 60
    resp, effects = trace_token(hc, code_form(code))
    assert resp.status == 400 and writes(effects) == []


def test_gn_03_non_form_token_requests_write_nothing(hc: Harness) -> None:
    code = get_code(hc)
    for req in (
        hc.request("GET", "/token", query=code_form(code)),
        hc.request("POST", "/token", json=code_form(code)),
        hc.request("POST", "/token", body=b"\xff\xfe", headers=[("Content-Type", "application/x-www-form-urlencoded")]),
    ):
        resp, effects = hc.trace(token.handle(hc.ctx(), req))
        assert resp.status in (400, 405)
        assert effects == []


def test_successful_redemption_writes_the_first_key_then_consume_code(hc: Harness) -> None:
    """The signing key is read, and the first one stored, before the code is spent: a failure at
    that step leaves the code redeemable (RFC 6749 §4.1.2, §10.5)."""
    code = get_code(hc)
    resp, effects = trace_token(hc, code_form(code))
    assert resp.status == 200
    assert [type(e) for e in writes(effects)] == [fx.SwapSigningKeys, fx.ConsumeCode]
    assert isinstance(effects[-1], fx.ConsumeCode)
    resp, effects = trace_token(hc, code_form(get_code(hc)))
    assert [type(e) for e in writes(effects)] == [fx.ConsumeCode]


def test_tk_04_replay_writes_exactly_one_grant_revocation(hc: Harness) -> None:
    code = get_code(hc)
    resp, effects = trace_token(hc, code_form(code))
    gid = jwt_parts(resp.json()["access_token"])[1]["gid"]
    resp, effects = trace_token(hc, code_form(code))
    assert resp.status == 400
    assert writes(effects) == [fx.RevokeGrant(gid, hc.now)]
    # A second replay still yields the revocation, which finds the grant already revoked.
    before = snapshot(hc)
    resp, effects = trace_token(hc, code_form(code))
    assert writes(effects) == [fx.RevokeGrant(gid, hc.now)]
    assert snapshot(hc) == before


def test_tk_04_replay_that_is_otherwise_invalid_writes_nothing(hc: Harness) -> None:
    code = get_code(hc)
    trace_token(hc, code_form(code))
    for form in (
        code_form(code, code_verifier="w" * 43),
        code_form(code, client_id="c2"),
        code_form(code, redirect_uri="https://x.example/cb"),
        code_form(code, resource=OTHER_RESOURCE),
    ):
        resp, effects = trace_token(hc, form)
        assert resp.status == 400
        assert writes(effects) == [], form


def _refresh_form(rt: str, /, **overrides: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "c1"}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def test_gn_03_rejected_refreshes_write_nothing(hc: Harness) -> None:
    rt = tokens(hc)["refresh_token"]
    cases: list[Any] = [
        _refresh_form(rt, client_id="c2"),
        _refresh_form(rt, client_id="ghost"),
        _refresh_form(rt, scope="resources:read"),
        _refresh_form(rt, scope="::"),
        _refresh_form(rt, resource=OTHER_RESOURCE),
        _refresh_form(rt, resource="#"),
        _refresh_form(rt, refresh_token=None),
        _refresh_form(rt + "x"),
        _refresh_form("kvr_" + "A" * 70),
        [*_refresh_form(rt).items(), ("refresh_token", rt)],
    ]
    for form in cases:
        before = snapshot(hc)
        resp, effects = trace_token(hc, form)
        assert resp.status in (400, 401)
        assert writes(effects) == [], (form, effects)
        assert snapshot(hc) == before


def test_gn_03_refresh_of_an_idle_expired_token_writes_nothing() -> None:
    h = Harness(make_config(lifetimes=Lifetimes(refresh_idle=100, refresh_absolute=1000)))
    add_client(h)
    rt = tokens(h)["refresh_token"]
    h.now += 100
    resp, effects = trace_token(h, _refresh_form(rt))
    assert resp.status == 400
    assert writes(effects) == []


def test_gn_03_refresh_of_an_absolutely_expired_or_revoked_grant_writes_nothing(hc: Harness) -> None:
    body = tokens(hc)
    gid = jwt_parts(body["access_token"])[1]["gid"]
    hc.store.perform(fx.RevokeGrant(gid, hc.now))
    resp, effects = trace_token(hc, _refresh_form(body["refresh_token"]))
    assert resp.status == 400 and writes(effects) == []
    rt = tokens(hc)["refresh_token"]
    hc.now += 90 * 86400
    resp, effects = trace_token(hc, _refresh_form(rt))
    assert resp.status == 400 and writes(effects) == []


def test_successful_refresh_writes_one_rotation(hc: Harness) -> None:
    rt = tokens(hc)["refresh_token"]
    resp, effects = trace_token(hc, _refresh_form(rt))
    assert resp.status == 200
    assert [type(e) for e in writes(effects)] == [fx.RotateRefresh]
    assert isinstance(effects[-1], fx.RotateRefresh)


def test_successful_refresh_writes_a_new_key_before_the_rotation(hc: Harness) -> None:
    """A key made during a refresh (none can sign any more) is stored before the refresh token is
    rotated: a failure at the key step leaves the presented token current (RFC 9700 §4.14.2)."""
    rt = tokens(hc)["refresh_token"]
    hc.store.keys = ()
    resp, effects = trace_token(hc, _refresh_form(rt))
    assert resp.status == 200
    assert [type(e) for e in writes(effects)] == [fx.SwapSigningKeys, fx.RotateRefresh]


def test_no_signing_key_of_the_configured_alg_writes_only_the_lost_key_swaps() -> None:
    """503 ``temporarily_unavailable`` when every key swap, decided again up to ROTATE_ATTEMPTS
    times, loses to a key set with no active key of ``signing_alg`` (other instances, another
    algorithm, changing it each time): nothing but the lost swaps is written, the code is not
    consumed."""
    h = Harness()
    add_client(h)
    code = get_code(h)
    rivals = [keys.generate(Harness(make_config(signing_alg="EdDSA"), seed=7 + n).ctx()) for n in range(9)]
    req = h.request("POST", "/token", form=code_form(code))
    flow = token.handle(h.ctx(), req)
    effect = next(flow)
    seen: list[fx.Effect] = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(effect)
            if isinstance(effect, fx.SwapSigningKeys):
                h.store.keys = (rivals.pop(),)  # another instance's swap committed first, every time
            effect = flow.send(h.store.perform(effect))
    resp = stop.value.value
    assert isinstance(resp, Response) and resp.status == 503
    assert resp.json()["error"] == "temporarily_unavailable" and resp.header("retry-after")
    assert [type(e) for e in writes(seen)] == [fx.SwapSigningKeys] * keys.ROTATE_ATTEMPTS
    assert [k.alg for k in h.store.keys] == ["EdDSA"]
    assert h.store.grants == {}


def test_a_key_swap_lost_once_is_decided_again_and_the_code_redeemed() -> None:
    """The key swap loses once to an instance of another algorithm (its first key stored at the
    same moment): the token endpoint decides again on that set, adds its own key beside the
    other, and redeems the code (200), the other algorithm's key kept."""
    h = Harness()
    add_client(h)
    code = get_code(h)
    rival = keys.generate(Harness(make_config(signing_alg="EdDSA"), seed=7).ctx())
    req = h.request("POST", "/token", form=code_form(code))
    flow = token.handle(h.ctx(), req)
    effect = next(flow)
    lost = False
    with pytest.raises(StopIteration) as stop:
        while True:
            if isinstance(effect, fx.SwapSigningKeys) and not lost:
                h.store.keys, lost = (rival,), True
            effect = flow.send(h.store.perform(effect))
    resp = stop.value.value
    assert isinstance(resp, Response) and resp.status == 200, resp.body
    assert {k.alg for k in h.store.keys} == {"EdDSA", "ES256"} and len(h.store.keys) == 2
    assert len(h.store.grants) == 1


def test_tk_07_reuse_writes_exactly_the_rotation_that_revokes(hc: Harness) -> None:
    first = tokens(hc)
    gid = jwt_parts(first["access_token"])[1]["gid"]
    trace_token(hc, _refresh_form(first["refresh_token"]))
    hc.now += 11
    resp, effects = trace_token(hc, _refresh_form(first["refresh_token"]))
    assert resp.status == 400
    (rotation,) = writes(effects)
    assert isinstance(rotation, fx.RotateRefresh)
    assert rotation.grant_id == gid and rotation.generation == 0
    assert hc.store.grants[gid].revoked_at == hc.now
    # Afterwards the family is revoked: presenting any of its tokens writes nothing more.
    resp, effects = trace_token(hc, _refresh_form(first["refresh_token"]))
    assert writes(effects) == []


def test_tk_07_grace_retry_changes_no_state(hc: Harness) -> None:
    first = tokens(hc)
    trace_token(hc, _refresh_form(first["refresh_token"]))
    before = snapshot(hc)
    resp, effects = trace_token(hc, _refresh_form(first["refresh_token"]))
    assert resp.status == 200
    assert [type(e) for e in writes(effects)] == [fx.RotateRefresh]
    assert snapshot(hc) == before


def test_approve_code_location_matches_pending(hc: Harness) -> None:
    ticket = consent(hc).ticket
    resp = hc.run(authorize.approve(hc.ctx(), ticket, "alice"))
    assert "code" in location_params(resp)
