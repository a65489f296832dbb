"""The token endpoint: TK-01..TK-09."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, basic, make_config, s256
from oauth_flows import (
    REDIRECT,
    VERIFIER,
    add_client,
    az_query,
    az_request,
    code_form,
    get_code,
    is_revoked,
    jwt_parts,
    location_params,
    redeem,
    refresh,
    snapshot,
    token_request,
    tokens,
)

from kavach_core import effects as fx
from kavach_core import keys
from kavach_core.config import Lifetimes
from kavach_core.drivers import StoreUnavailable
from kavach_core.endpoints import authorize, token
from kavach_core.http import Response
from kavach_core.memory_store import MemoryStore
from kavach_core.opaque import digest
from kavach_core.records import Grant, SigningKey

SECRET = "s3cret-value"


@pytest.fixture
def hc(h: Harness) -> Harness:
    add_client(h)
    return h


def assert_error(resp: Response, error: str, status: int = 400) -> dict[str, Any]:
    """An RFC 6749 §5.2 error: JSON, never cached, description without CR/LF (TK-01)."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.header("cache-control") == "no-store"
    assert resp.header("content-type") == "application/json"
    body: dict[str, Any] = resp.json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "error_uri"}
    description = body.get("error_description", "")
    assert "\r" not in description and "\n" not in description
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)
    return body


def assert_tokens(resp: Response) -> dict[str, Any]:
    assert resp.status == 200, resp.body
    assert resp.header("cache-control") == "no-store"
    assert resp.header("pragma") == "no-cache"
    body: dict[str, Any] = resp.json()
    assert body["token_type"] == "Bearer"
    return body


def confidential(h: Harness, method: str = "client_secret_basic", client_id: str = "conf") -> None:
    add_client(h, client_id, secret=SECRET, method=method)


def conf_code(h: Harness, client_id: str = "conf") -> str:
    return get_code(h, client_id=client_id)


# -- TK-01: POST, form, no-store, error shape ------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD", "DELETE"])
def test_tk_01_post_only(hc: Harness, method: str) -> None:
    req = hc.request(method, "/token", query={"grant_type": "authorization_code"})
    resp = hc.run(token.handle(hc.ctx(), req))
    assert_error(resp, "invalid_request", status=405)
    assert resp.header("allow") == "POST"


def test_tk_01_json_body_is_invalid_request(hc: Harness) -> None:
    code = get_code(hc)
    req = hc.request(
        "POST",
        "/token",
        json={"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER, "client_id": "c1"},
    )
    assert_error(hc.run(token.handle(hc.ctx(), req)), "invalid_request")
    # The code was not touched.
    assert not hc.store.codes[digest(code)].consumed


def test_tk_01_form_content_type_with_charset_is_accepted(hc: Harness) -> None:
    code = get_code(hc)
    form = f"grant_type=authorization_code&code={code}&code_verifier={VERIFIER}&client_id=c1&redirect_uri={REDIRECT}"
    req = hc.request(
        "POST",
        "/token",
        body=form.encode(),
        headers=[("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8")],
    )
    assert_tokens(hc.run(token.handle(hc.ctx(), req)))


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"grant_type=authorization_code", None),
        (b"grant_type=authorization_code", "text/plain"),
        (b"grant_type=authorization_code&x=\xff", "application/x-www-form-urlencoded"),
        (b"grant_type=%ff", "application/x-www-form-urlencoded"),
        (b"grant_type=a%00b", "application/x-www-form-urlencoded"),
        (b"x=" + b"a" * 70000, "application/x-www-form-urlencoded"),
        (b"&".join(b"p%d=1" % i for i in range(200)), "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
    ],
)
def test_tk_01_unreadable_bodies_are_invalid_request(hc: Harness, body: bytes, ctype: str | None) -> None:
    headers = [("Content-Type", ctype)] if ctype else []
    req = hc.request("POST", "/token", body=body, headers=headers)
    assert_error(hc.run(token.handle(hc.ctx(), req)), "invalid_request")


def _padded_redemption(h: Harness, *, fields: int = 0, size: int = 0) -> Response:
    """A valid redemption of a fresh code, padded with ignored parameters (RFC 6749 §3.2) to
    ``fields`` name/value pairs or to ``size`` bytes of body."""
    body = urlencode(code_form(get_code(h)))
    if fields:
        body += "".join(f"&x{i}=1" for i in range(fields - len(body.split("&"))))
    if size:
        body += "&pad=" + "a" * (size - len(body) - len("&pad="))
    req = h.request(
        "POST", "/token", body=body.encode(), headers=[("Content-Type", "application/x-www-form-urlencoded")]
    )
    return h.run(token.handle(h.ctx(), req))


def test_tk_01_limits_are_100_parameters_and_64_kib(hc: Harness) -> None:
    """The documented limits (``params.MAX_FIELDS``, ``params.MAX_BODY``), exactly: a body at the
    limit is served, one parameter or one byte more is ``invalid_request`` (GN-03)."""
    assert_tokens(_padded_redemption(hc, fields=100))
    assert_error(_padded_redemption(hc, fields=101), "invalid_request")
    assert_tokens(_padded_redemption(hc, size=64 * 1024))
    assert_error(_padded_redemption(hc, size=64 * 1024 + 1), "invalid_request")


def test_tk_01_success_and_every_error_are_no_store(hc: Harness) -> None:
    body = tokens(hc)
    responses = [
        refresh(hc, body["refresh_token"]),
        refresh(hc, body["refresh_token"] + "x"),
        token_request(hc, {"grant_type": "password", "client_id": "c1"}),
        token_request(
            hc, {"grant_type": "authorization_code", "client_id": "nobody", "code": "x", "code_verifier": VERIFIER}
        ),
        token_request(hc, {}),
    ]
    for resp in responses:
        assert resp.header("cache-control") == "no-store"


@pytest.mark.parametrize("name", ["grant_type", "code", "code_verifier", "redirect_uri", "client_id"])
def test_tk_01_repeated_parameter_is_invalid_request(hc: Harness, name: str) -> None:
    code = get_code(hc)
    form = code_form(code)
    resp = token_request(hc, [*form.items(), (name, form[name])])
    assert_error(resp, "invalid_request")
    assert not hc.store.codes[digest(code)].consumed


def test_tk_01_missing_grant_type_is_invalid_request(hc: Harness) -> None:
    assert_error(token_request(hc, {"client_id": "c1"}), "invalid_request")


# -- TK-02: client authentication --------------------------------------------------------------


def test_tk_02_public_client_authenticates_with_none(hc: Harness) -> None:
    assert_tokens(redeem(hc, get_code(hc)))


def test_tk_02_client_secret_basic(h: Harness) -> None:
    confidential(h)
    resp = redeem(h, conf_code(h), client_id=None, headers=[basic("conf", SECRET)])
    assert jwt_parts(assert_tokens(resp)["access_token"])[1]["client_id"] == "conf"


def test_tk_02_client_secret_basic_with_matching_body_client_id(h: Harness) -> None:
    confidential(h)
    assert_tokens(redeem(h, conf_code(h), client_id="conf", headers=[basic("conf", SECRET)]))


def test_tk_02_basic_credentials_are_form_urlencoded(h: Harness) -> None:
    secret = "p@ss word:+/é"
    add_client(h, "id with:colon", secret=secret)
    code = get_code(h, client_id="id with:colon")
    assert_tokens(redeem(h, code, client_id=None, headers=[basic("id with:colon", secret)]))


def test_tk_02_client_secret_post(h: Harness) -> None:
    confidential(h, "client_secret_post")
    assert_tokens(redeem(h, conf_code(h), client_id="conf", client_secret=SECRET))


def test_tk_02_wrong_basic_secret_is_401_with_basic_challenge(h: Harness) -> None:
    confidential(h)
    code = conf_code(h)
    resp = redeem(h, code, client_id=None, headers=[basic("conf", "wrong")])
    assert_error(resp, "invalid_client", status=401)
    assert (resp.header("www-authenticate") or "").startswith("Basic")
    assert not h.store.codes[digest(code)].consumed


def test_tk_02_unknown_client_via_basic_is_401_with_challenge(h: Harness) -> None:
    resp = token_request(h, {"grant_type": "refresh_token", "refresh_token": "x"}, [basic("ghost", "pw")])
    assert_error(resp, "invalid_client", status=401)
    assert (resp.header("www-authenticate") or "").startswith("Basic")


def test_tk_02_wrong_post_secret_is_401_with_a_challenge_too(h: Harness) -> None:
    """RFC 9110 §15.5.2: every 401 carries a challenge; Basic is a method this server takes."""
    confidential(h, "client_secret_post")
    resp = redeem(h, conf_code(h), client_id="conf", client_secret="wrong")
    assert_error(resp, "invalid_client", status=401)
    assert (resp.header("www-authenticate") or "").startswith("Basic realm=")


def test_tk_02_registered_method_must_be_used(h: Harness) -> None:
    confidential(h, "client_secret_post")
    resp = redeem(h, conf_code(h), client_id=None, headers=[basic("conf", SECRET)])
    assert_error(resp, "invalid_client", status=401)
    confidential(h, "client_secret_basic", client_id="conf2")
    resp = redeem(h, conf_code(h, "conf2"), client_id="conf2", client_secret=SECRET)
    assert_error(resp, "invalid_client", status=401)


def test_tk_02_public_client_posting_a_secret_is_refused(hc: Harness) -> None:
    code = get_code(hc)
    assert_error(redeem(hc, code, client_secret="anything"), "invalid_client", status=401)
    resp = redeem(hc, code, client_id=None, headers=[basic("c1", "anything")])
    assert_error(resp, "invalid_client", status=401)
    assert not hc.store.codes[digest(code)].consumed


def test_tk_02_confidential_client_without_secret_is_refused(h: Harness) -> None:
    confidential(h)
    code = conf_code(h)
    resp = redeem(h, code, client_id="conf")
    assert_error(resp, "invalid_client", status=401)
    assert not h.store.codes[digest(code)].consumed


def test_tk_02_confidential_client_with_no_stored_secret_is_refused(h: Harness) -> None:
    add_client(h, "broken", method="client_secret_basic")
    code = get_code(h, client_id="broken")
    assert_error(redeem(h, code, client_id=None, headers=[basic("broken", "")]), "invalid_client", status=401)


def test_tk_02_expired_client_secret_is_refused(h: Harness) -> None:
    add_client(h, "conf", secret=SECRET, secret_expires_at=h.now + 100)
    code = conf_code(h)
    h.now += 30
    assert_tokens(redeem(h, code, client_id=None, headers=[basic("conf", SECRET)]))
    code = conf_code(h)
    h.now += 70
    assert_error(redeem(h, code, client_id=None, headers=[basic("conf", SECRET)]), "invalid_client", status=401)


def test_tk_02_two_methods_at_once_are_refused(h: Harness) -> None:
    confidential(h)
    code = conf_code(h)
    resp = redeem(h, code, client_id=None, client_secret=SECRET, headers=[basic("conf", SECRET)])
    assert_error(resp, "invalid_request")
    assert not h.store.codes[digest(code)].consumed


def test_tk_02_basic_and_a_different_body_client_id_are_refused(h: Harness) -> None:
    confidential(h)
    resp = redeem(h, conf_code(h), client_id="c1", headers=[basic("conf", SECRET)])
    assert_error(resp, "invalid_request")


def test_tk_02_no_client_at_all_is_invalid_client(hc: Harness) -> None:
    resp = redeem(hc, get_code(hc), client_id=None)
    assert_error(resp, "invalid_client", status=401)


def test_tk_02_secret_without_client_id_is_invalid_request(hc: Harness) -> None:
    assert_error(redeem(hc, get_code(hc), client_id=None, client_secret="x"), "invalid_request")


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic ",
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b":secret").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic " + base64.b64encode(b"a%ff:x").decode(),
        "Basic " + base64.b64encode(b"c%001:secret").decode(),  # NUL, as in no parameter (GN-03)
        "Basic " + base64.b64encode(b"c\x001:secret").decode(),
        "Basic " + base64.b64encode(b"c1:se%00cret").decode(),
        "Basicx abc",
    ],
)
def test_tk_02_malformed_basic_is_401(hc: Harness, header: str) -> None:
    resp = token_request(hc, {"grant_type": "refresh_token", "refresh_token": "x"}, [("Authorization", header)])
    assert_error(resp, "invalid_client", status=401)
    assert (resp.header("www-authenticate") or "").startswith("Basic")


def test_tk_02_a_bearer_header_is_not_client_authentication(hc: Harness) -> None:
    resp = redeem(hc, get_code(hc), headers=[("Authorization", "Bearer abc")])
    assert_tokens(resp)


# -- TK-03: the authorization code grant --------------------------------------------------------


def test_tk_03_code_is_bound_to_its_client(h: Harness) -> None:
    add_client(h)
    add_client(h, "c2")
    code = get_code(h)
    assert_error(redeem(h, code, client_id="c2"), "invalid_grant")
    assert not h.store.codes[digest(code)].consumed
    assert_tokens(redeem(h, code))


def test_tk_03_redirect_uri_must_match_when_sent_at_authorize(hc: Harness) -> None:
    code = get_code(hc)
    assert_error(redeem(hc, code, redirect_uri=None), "invalid_grant")
    assert_error(redeem(hc, code, redirect_uri=REDIRECT + "/"), "invalid_grant")
    assert_error(redeem(hc, code, redirect_uri="https://evil.example/cb"), "invalid_grant")
    assert not hc.store.codes[digest(code)].consumed
    assert_tokens(redeem(hc, code))


def test_tk_03_redirect_uri_not_sent_at_authorize_may_be_omitted_or_equal(hc: Harness) -> None:
    assert_tokens(redeem(hc, get_code(hc, redirect_uri=None), redirect_uri=None))
    assert_tokens(redeem(hc, get_code(hc, redirect_uri=None), redirect_uri=REDIRECT))
    assert_error(redeem(hc, get_code(hc, redirect_uri=None), redirect_uri="https://x.example/cb"), "invalid_grant")


def test_tk_03_loopback_redirect_uri_must_repeat_the_port_used(h: Harness) -> None:
    add_client(h, redirect_uris=("http://127.0.0.1/cb",))
    code = get_code(h, redirect_uri="http://127.0.0.1:5000/cb")
    assert_error(redeem(h, code, redirect_uri="http://127.0.0.1/cb"), "invalid_grant")
    assert_tokens(redeem(h, code, redirect_uri="http://127.0.0.1:5000/cb"))


def test_tk_03_missing_verifier_is_invalid_request(hc: Harness) -> None:
    code = get_code(hc)
    assert_error(redeem(hc, code, code_verifier=None), "invalid_request")
    assert not hc.store.codes[digest(code)].consumed


def test_tk_03_missing_code_is_invalid_request(hc: Harness) -> None:
    form = {"grant_type": "authorization_code", "code_verifier": VERIFIER, "client_id": "c1"}
    assert_error(token_request(hc, form), "invalid_request")


@pytest.mark.parametrize(
    "verifier",
    [
        "y" * 50,
        VERIFIER[:-1],
        VERIFIER + "a",
        VERIFIER.upper(),
        "short",
        "a" * 129,
        VERIFIER[:-1] + " ",
        VERIFIER[:-1] + "+",
        VERIFIER[:-1] + "é",
        s256(VERIFIER),
    ],
)
def test_tk_03_wrong_or_malformed_verifier_is_invalid_grant(hc: Harness, verifier: str) -> None:
    code = get_code(hc)
    assert_error(redeem(hc, code, code_verifier=verifier), "invalid_grant")
    assert not hc.store.codes[digest(code)].consumed


def test_tk_03_verifier_outside_the_grammar_fails_even_against_its_own_hash(hc: Harness) -> None:
    bad = "a" * 42  # one short of RFC 7636's minimum
    code = get_code(hc, code_challenge=s256(bad))
    response = redeem(hc, code, code_verifier=bad)
    assert_error(response, "invalid_grant")
    assert "43 to 128" in json.loads(response.body)["error_description"], "the description says what is wrong"


def test_tk_03_code_without_stored_challenge_is_refused(hc: Harness) -> None:
    """RFC 9700 §4.8: a verifier presented for a code that has no challenge (PKCE downgrade)."""
    code = get_code(hc)
    record = hc.store.codes[digest(code)]
    import attrs

    hc.store.codes[digest(code)] = attrs.evolve(record, code_challenge="")
    assert_error(redeem(hc, code), "invalid_grant")


def test_tk_03_unknown_code_is_invalid_grant(hc: Harness) -> None:
    assert_error(redeem(hc, "A" * 43), "invalid_grant")


def test_tk_03_client_without_authorization_code_grant_is_unauthorized(hc: Harness) -> None:
    code = get_code(hc)
    add_client(hc, grant_types=("refresh_token",))
    assert_error(redeem(hc, code), "unauthorized_client")


def test_tk_03_client_without_refresh_grant_gets_no_refresh_token(h: Harness) -> None:
    add_client(h, grant_types=("authorization_code",))
    body = assert_tokens(redeem(h, get_code(h)))
    assert "refresh_token" not in body
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}


# -- TK-04: code replay -------------------------------------------------------------------------


def test_tk_04_replay_is_invalid_grant_and_revokes_the_grant(hc: Harness) -> None:
    code = get_code(hc)
    first = assert_tokens(redeem(hc, code))
    assert not is_revoked(hc, first["access_token"])
    assert_tokens(refresh(hc, first["refresh_token"]))  # works before the replay
    body = assert_error(redeem(hc, code), "invalid_grant")
    assert "used" in body["error_description"]
    assert is_revoked(hc, first["access_token"])
    _, claims = jwt_parts(first["access_token"])
    assert hc.store.grants[claims["gid"]].revoked
    # Neither the original refresh token nor its successor work any more.
    assert_error(refresh(hc, first["refresh_token"]), "invalid_grant")


def test_tk_04_replay_after_a_refresh_stops_the_successor(hc: Harness) -> None:
    code = get_code(hc)
    first = assert_tokens(redeem(hc, code))
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    assert_error(redeem(hc, code), "invalid_grant")
    assert_error(refresh(hc, second["refresh_token"]), "invalid_grant")
    assert is_revoked(hc, second["access_token"])


def test_tk_04_replay_with_wrong_verifier_revokes_nothing(hc: Harness) -> None:
    code = get_code(hc)
    first = assert_tokens(redeem(hc, code))
    before = snapshot(hc)
    assert_error(redeem(hc, code, code_verifier="z" * 43), "invalid_grant")
    assert_error(redeem(hc, code, code_verifier=None), "invalid_request")
    assert_error(redeem(hc, code, redirect_uri="https://other.example/cb"), "invalid_grant")
    assert snapshot(hc) == before
    assert not is_revoked(hc, first["access_token"])
    assert_tokens(refresh(hc, first["refresh_token"]))


def test_tk_04_replay_by_another_client_revokes_nothing(hc: Harness) -> None:
    add_client(hc, "c2")
    code = get_code(hc)
    first = assert_tokens(redeem(hc, code))
    before = snapshot(hc)
    assert_error(redeem(hc, code, client_id="c2"), "invalid_grant")
    assert snapshot(hc) == before
    assert not is_revoked(hc, first["access_token"])


def test_tk_04_replay_after_expiry_revokes_nothing(hc: Harness) -> None:
    code = get_code(hc)
    first = assert_tokens(redeem(hc, code))
    hc.now += 60
    assert_error(redeem(hc, code), "invalid_grant")
    assert not is_revoked(hc, first["access_token"])


def test_tk_04_a_lost_race_revokes_the_grant() -> None:
    """Two redemptions read the code before either consumes it: exactly one wins, and the
    loser's ConsumeCode returning False revokes the winner's grant (at most one token set)."""
    h = Harness()
    add_client(h)
    code = get_code(h)
    req = h.request("POST", "/token", form=code_form(code))
    a = token.handle(h.ctx(), req)
    b = token.handle(h.ctx(), req)

    def until_consume(flow: Any) -> fx.ConsumeCode:
        effect = next(flow)
        while not isinstance(effect, fx.ConsumeCode):
            effect = flow.send(h.store.perform(effect))
        return effect

    ea = until_consume(a)
    eb = until_consume(b)
    won = h.store.perform(ea)
    lost = h.store.perform(eb)
    assert won is True and lost is False
    eb2 = b.send(lost)
    assert isinstance(eb2, fx.RevokeGrant) and eb2.grant_id == ea.grant.grant_id
    h.store.perform(eb2)
    with pytest.raises(StopIteration) as stop:
        b.send(True)
    assert_error(stop.value.value, "invalid_grant")
    assert h.store.grants[ea.grant.grant_id].revoked


# -- TK-05: expired code, another client's code --------------------------------------------------


def test_tk_05_expired_code_is_invalid_grant(hc: Harness) -> None:
    code = get_code(hc)
    hc.now += 61
    before = snapshot(hc)
    assert_error(redeem(hc, code), "invalid_grant")
    assert snapshot(hc) == before


def test_tk_05_another_clients_code_is_invalid_grant(hc: Harness) -> None:
    add_client(hc, "c2", secret=SECRET)
    code = get_code(hc)
    assert_error(redeem(hc, code, client_id=None, headers=[basic("c2", SECRET)]), "invalid_grant")


# -- TK-06: resource at the token endpoint ---------------------------------------------------------


def _two_resource_code(h: Harness) -> str:
    out = az_request(h, [*az_query().items(), ("resource", OTHER_RESOURCE)])
    return location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice")))["code"]


def test_tk_06_audience_is_exactly_the_one_resource(hc: Harness) -> None:
    body = tokens(hc)
    _, claims = jwt_parts(body["access_token"])
    assert claims["aud"] == RESOURCE


def test_tk_06_resource_must_be_in_the_grant(hc: Harness) -> None:
    code = get_code(hc)
    assert_error(redeem(hc, code, resource=OTHER_RESOURCE), "invalid_target")
    assert_error(redeem(hc, code, resource="not a uri"), "invalid_target")
    assert_error(redeem(hc, code, resource=RESOURCE + "#f"), "invalid_target")
    assert not hc.store.codes[digest(code)].consumed
    body = assert_tokens(redeem(hc, code, resource="https://MCP.example.com/mcp/"))
    assert jwt_parts(body["access_token"])[1]["aud"] == RESOURCE


def test_tk_06_grant_with_several_resources_needs_one_named(hc: Harness) -> None:
    code = _two_resource_code(hc)
    assert_error(redeem(hc, code), "invalid_target")
    body = assert_tokens(redeem(hc, code, resource=OTHER_RESOURCE))
    assert jwt_parts(body["access_token"])[1]["aud"] == OTHER_RESOURCE
    # The refresh token can mint for either resource, one per request.
    for resource in (RESOURCE, OTHER_RESOURCE):
        nxt = assert_tokens(refresh(hc, body["refresh_token"], resource=resource))
        assert jwt_parts(nxt["access_token"])[1]["aud"] == resource
        body = nxt
    assert_error(refresh(hc, body["refresh_token"]), "invalid_target")


def test_tk_06_several_resources_in_one_request_are_invalid_target(hc: Harness) -> None:
    code = _two_resource_code(hc)
    resp = token_request(hc, [*code_form(code).items(), ("resource", RESOURCE), ("resource", OTHER_RESOURCE)])
    assert_error(resp, "invalid_target")
    assert not hc.store.codes[digest(code)].consumed


def _two_catalogues(tools: tuple[str, ...] = ("tools:list", "tools:call")) -> Harness:
    """A harness with client ``c1`` and two resources whose catalogues share no scope: ``tools``
    at RESOURCE, ``files:read`` at OTHER_RESOURCE (which has no default scope)."""
    from kavach_core.config import ProtectedResource

    h = Harness(make_config(resources=[
        ProtectedResource(RESOURCE, scopes=dict.fromkeys(tools, "")),
        ProtectedResource(OTHER_RESOURCE, scopes={"files:read": ""}, default_scopes=()),
    ]))  # fmt: skip
    add_client(h)
    return h


def test_tk_06_token_scope_is_limited_to_the_audience_catalogue(h: Harness) -> None:
    h = _two_catalogues()
    out = az_request(h, [*az_query(scope="tools:list files:read").items(), ("resource", OTHER_RESOURCE)])
    code = location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice")))["code"]
    body = assert_tokens(redeem(h, code, resource=OTHER_RESOURCE))
    assert body["scope"] == "files:read"
    nxt = assert_tokens(refresh(h, body["refresh_token"], resource=RESOURCE))
    assert nxt["scope"] == "tools:list"


def test_tk_06_a_resource_with_no_scope_approved_is_left_out_of_the_grant(h: Harness) -> None:
    """RFC 6749 §3.3 has no empty scope: a resource of the request for which the person approved
    nothing (only another resource's scopes) is not granted, so no token with no scope is minted."""
    h = _two_catalogues()
    out = az_request(h, [*az_query(scope="tools:list files:read").items(), ("resource", OTHER_RESOURCE)])
    code = location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice", ("files:read",))))["code"]
    assert h.store.codes[digest(code)].resources == (OTHER_RESOURCE,)
    assert_error(redeem(h, code, resource=RESOURCE), "invalid_target")
    body = assert_tokens(redeem(h, code, resource=OTHER_RESOURCE))
    assert body["scope"] == "files:read"
    assert_error(refresh(h, body["refresh_token"], resource=RESOURCE), "invalid_target")


def test_tk_06_a_token_with_no_scope_for_its_resource_is_never_minted(h: Harness) -> None:
    """RFC 6749 §3.3: a refresh narrowed to another resource's scopes, or a grant stored with a
    resource none of its scopes is for (as approval once stored them), is ``invalid_scope``, and
    the refresh token stays current (nothing rotated)."""
    h = _two_catalogues(("tools:list",))
    out = az_request(h, [*az_query(scope="tools:list files:read").items(), ("resource", OTHER_RESOURCE)])
    code = location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice")))["code"]
    body = assert_tokens(redeem(h, code, resource=OTHER_RESOURCE))
    grant = next(iter(h.store.grants.values()))
    assert_error(refresh(h, body["refresh_token"], resource=RESOURCE, scope="files:read"), "invalid_scope")
    assert h.store.grants[grant.grant_id] == grant
    assert assert_tokens(refresh(h, body["refresh_token"], resource=RESOURCE))["scope"] == "tools:list"
    # A code stored for both resources with only the other resource's scope (an older approval).
    out = az_request(h, [*az_query(scope="files:read").items(), ("resource", OTHER_RESOURCE)])
    code = location_params(h.run(authorize.approve(h.ctx(), out.ticket, "alice")))["code"]
    record = h.store.codes[digest(code)]
    h.store.codes[digest(code)] = attrs.evolve(record, resources=(RESOURCE, OTHER_RESOURCE))
    assert_error(redeem(h, code, resource=RESOURCE), "invalid_scope")
    assert not h.store.codes[digest(code)].consumed
    assert assert_tokens(redeem(h, code, resource=OTHER_RESOURCE))["scope"] == "files:read"


def test_tk_06_resource_removed_from_the_configuration_is_invalid_target(hc: Harness) -> None:
    body = tokens(hc)
    from kavach_core.config import ProtectedResource

    hc.config = make_config(resources=[ProtectedResource(OTHER_RESOURCE)])
    assert_error(refresh(hc, body["refresh_token"]), "invalid_target")


# -- TK-07: refresh ---------------------------------------------------------------------------


def test_tk_07_rotation_on_every_use(hc: Harness) -> None:
    body = tokens(hc)
    seen = {body["refresh_token"]}
    for _ in range(4):
        hc.now += 20
        body = assert_tokens(refresh(hc, body["refresh_token"]))
        assert body["refresh_token"] not in seen
        seen.add(body["refresh_token"])


def test_tk_07_reuse_of_a_superseded_token_revokes_the_family(hc: Harness) -> None:
    first = tokens(hc)
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    hc.now += 11  # past the grace window
    third = assert_tokens(refresh(hc, second["refresh_token"]))
    hc.now += 11
    body = assert_error(refresh(hc, first["refresh_token"]), "invalid_grant")
    assert "reuse" in body["error_description"]
    for tok in (first, second, third):
        assert is_revoked(hc, tok["access_token"])
    assert_error(refresh(hc, third["refresh_token"]), "invalid_grant")


def test_tk_07_grace_window_retry_returns_the_same_successor(hc: Harness) -> None:
    first = tokens(hc)
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    hc.now += 10  # the default window is 10 s, inclusive
    retry = assert_tokens(refresh(hc, first["refresh_token"]))
    assert retry["refresh_token"] == second["refresh_token"]
    assert retry["access_token"] != second["access_token"]
    assert not is_revoked(hc, second["access_token"])
    # The family continues normally from the successor.
    assert_tokens(refresh(hc, second["refresh_token"]))


def test_tk_07_after_the_grace_window_the_retry_is_reuse(hc: Harness) -> None:
    first = tokens(hc)
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    hc.now += 11
    assert_error(refresh(hc, first["refresh_token"]), "invalid_grant")
    assert is_revoked(hc, second["access_token"])
    assert_error(refresh(hc, second["refresh_token"]), "invalid_grant")


@pytest.mark.parametrize(
    "extra", [{"scope": "admin"}, {"scope": "tools:list tools:call resources:read"}, {"resource": OTHER_RESOURCE}]
)
def test_tk_07_reuse_is_detected_before_scope_and_resource_checks(hc: Harness, extra: dict[str, str]) -> None:
    """A superseded token revokes its family even when the request also asks for a bad scope or
    resource: reuse detection is not skipped by an otherwise invalid request (RFC 9700 §4.14.2)."""
    first = tokens(hc)
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    hc.now += 11
    body = assert_error(refresh(hc, first["refresh_token"], **extra), "invalid_grant")
    assert "reuse" in body["error_description"]
    assert is_revoked(hc, second["access_token"])


def test_tk_07_retry_within_grace_with_a_bad_scope_writes_nothing(hc: Harness) -> None:
    first = tokens(hc)
    second = assert_tokens(refresh(hc, first["refresh_token"]))
    assert_error(refresh(hc, first["refresh_token"], scope="admin"), "invalid_scope")
    assert not is_revoked(hc, second["access_token"])
    assert_tokens(refresh(hc, second["refresh_token"]))


def test_tk_07_grace_zero_disables_the_window() -> None:
    h = Harness(make_config(refresh_grace=0))
    add_client(h)
    first = tokens(h)
    second = assert_tokens(refresh(h, first["refresh_token"]))
    # Even in the same second, presenting the superseded token is reuse: 0 means no window at all.
    assert_error(refresh(h, first["refresh_token"]), "invalid_grant")
    assert is_revoked(h, second["access_token"])


def test_tk_07_scope_can_only_narrow(hc: Harness) -> None:
    first = tokens(hc)  # tools:list tools:call
    narrow = assert_tokens(refresh(hc, first["refresh_token"], scope="tools:list"))
    assert narrow["scope"] == "tools:list"
    assert jwt_parts(narrow["access_token"])[1]["scope"] == "tools:list"
    prefix = assert_tokens(refresh(hc, narrow["refresh_token"], scope="tools:call:search"))
    assert prefix["scope"] == "tools:call:search"
    before = snapshot(hc)
    assert_error(refresh(hc, prefix["refresh_token"], scope="tools:list resources:read"), "invalid_scope")
    assert_error(refresh(hc, prefix["refresh_token"], scope="tools"), "invalid_scope")
    assert_error(refresh(hc, prefix["refresh_token"], scope="bad scope::"), "invalid_scope")
    assert snapshot(hc) == before
    # Narrowing one access token does not shrink the grant: the full scope is still available.
    full = assert_tokens(refresh(hc, prefix["refresh_token"]))
    assert full["scope"] == "tools:list tools:call"


def test_tk_07_resource_within_the_grant(hc: Harness) -> None:
    first = tokens(hc)
    assert_error(refresh(hc, first["refresh_token"], resource=OTHER_RESOURCE), "invalid_target")
    assert_tokens(refresh(hc, first["refresh_token"], resource=RESOURCE))


def test_tk_07_bound_to_the_client(hc: Harness) -> None:
    add_client(hc, "c2")
    first = tokens(hc)
    before = snapshot(hc)
    assert_error(refresh(hc, first["refresh_token"], client_id="c2"), "invalid_grant")
    assert snapshot(hc) == before
    assert_tokens(refresh(hc, first["refresh_token"]))


def test_tk_07_missing_or_forged_refresh_tokens(hc: Harness) -> None:
    first = tokens(hc)
    rt = first["refresh_token"]
    assert_error(token_request(hc, {"grant_type": "refresh_token", "client_id": "c1"}), "invalid_request")
    flipped = rt[:-2] + ("A" if rt[-2] != "A" else "B") + rt[-1]
    for forged in (rt + "x", rt[:-1], flipped, "kvr_" + "A" * 70, "kvr_!!", "x" * 300, rt.replace("kvr_", "kvx_")):
        assert_error(refresh(hc, forged), "invalid_grant")
    other_secret = Harness(make_config(secret=b"z" * 32))
    add_client(other_secret)
    foreign = tokens(other_secret)["refresh_token"]
    assert_error(refresh(hc, foreign), "invalid_grant")
    assert_tokens(refresh(hc, rt))


def test_tk_07_refresh_of_a_revoked_grant_fails(hc: Harness) -> None:
    first = tokens(hc)
    _, claims = jwt_parts(first["access_token"])
    hc.store.perform(fx.RevokeGrant(claims["gid"], hc.now))
    assert_error(refresh(hc, first["refresh_token"]), "invalid_grant")


def test_tk_07_idle_expiry(h: Harness) -> None:
    h.config = make_config(lifetimes=Lifetimes(refresh_idle=100, refresh_absolute=1000))
    add_client(h)
    first = tokens(h)
    h.now += 99
    second = assert_tokens(refresh(h, first["refresh_token"]))
    h.now += 100
    before = snapshot(h)
    assert_error(refresh(h, second["refresh_token"]), "invalid_grant")
    assert snapshot(h) == before


def test_tk_07_absolute_expiry(h: Harness) -> None:
    h.config = make_config(lifetimes=Lifetimes(refresh_idle=100, refresh_absolute=250))
    add_client(h)
    body = tokens(h)
    for _ in range(2):
        h.now += 90
        body = assert_tokens(refresh(h, body["refresh_token"]))
    h.now += 60
    # The last access token never outlives the grant.
    h.now += 10
    assert_error(refresh(h, body["refresh_token"]), "invalid_grant")


def test_tk_07_access_token_never_outlives_the_grant(h: Harness) -> None:
    h.config = make_config(lifetimes=Lifetimes(refresh_idle=700, refresh_absolute=1000, access_token=600))
    add_client(h)
    body = tokens(h)
    h.now += 600
    body = assert_tokens(refresh(h, body["refresh_token"]))
    _, claims = jwt_parts(body["access_token"])
    assert claims["exp"] == h.now - 600 + 1000
    assert body["expires_in"] == 400


# -- TK-08: grant types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grant_type",
    ["password", "implicit", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code", "token", "x"],
)
def test_tk_08_unsupported_grant_types(hc: Harness, grant_type: str) -> None:
    form = {"grant_type": grant_type, "client_id": "c1", "username": "u", "password": "p"}
    assert_error(token_request(hc, form), "unsupported_grant_type")


def test_tk_08_client_credentials_for_a_confidential_client_is_unsupported(h: Harness) -> None:
    add_client(h, "conf", secret=SECRET, grant_types=("client_credentials",))
    resp = token_request(h, {"grant_type": "client_credentials"}, [basic("conf", SECRET)])
    assert_error(resp, "unsupported_grant_type")


def test_tk_08_refresh_grant_not_registered_is_unauthorized(hc: Harness) -> None:
    first = tokens(hc)
    add_client(hc, grant_types=("authorization_code",))
    assert_error(refresh(hc, first["refresh_token"]), "unauthorized_client")


# -- TK-09: token formats --------------------------------------------------------------------------


def test_tk_09_refresh_token_is_opaque_with_256_bits(hc: Harness) -> None:
    body = tokens(hc)
    rt = body["refresh_token"]
    assert re.fullmatch(r"kvr_[A-Za-z0-9_-]+", rt)
    raw = base64.urlsafe_b64decode(rt[4:] + "=" * (-len(rt[4:]) % 4))
    assert len(raw) >= 32 + 16  # a 256-bit MAC plus the grant id and generation
    # Stored only as a digest.
    assert rt not in repr(hc.store.grants)
    _, claims = jwt_parts(body["access_token"])
    assert hc.store.grants[claims["gid"]].refresh_hash == digest(rt)


def test_tk_09_access_token_is_an_rfc9068_jwt(hc: Harness) -> None:
    body = tokens(hc, scope="tools:list")
    header, claims = jwt_parts(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    assert header["kid"]
    assert {"iss", "sub", "aud", "client_id", "scope", "iat", "exp", "jti"} <= set(claims)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == "c1"
    assert claims["scope"] == "tools:list"
    assert claims["iat"] == hc.now
    assert claims["exp"] == hc.now + 600
    assert body["expires_in"] == 600
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", claims["jti"])


def test_tk_09_access_token_verifies_with_the_published_key(hc: Harness) -> None:
    from kavach_core import keys
    from kavach_core.access_tokens import verify

    body = tokens(hc)
    keyset = hc.run(keys.current(hc.ctx()))
    verified = verify(body["access_token"], keyset.verifying_keys(hc.now), issuer=ISSUER, resource=RESOURCE, now=hc.now)
    assert verified.subject == "alice"
    assert verified.scopes == ("tools:list", "tools:call")


def test_tk_09_each_token_has_a_fresh_jti(hc: Harness) -> None:
    body = tokens(hc)
    jtis = {jwt_parts(body["access_token"])[1]["jti"]}
    for _ in range(3):
        body = assert_tokens(refresh(hc, body["refresh_token"]))
        jtis.add(jwt_parts(body["access_token"])[1]["jti"])
    assert len(jtis) == 4


def test_tk_09_one_signing_key_is_generated_and_reused(hc: Harness) -> None:
    tokens(hc)
    tokens(hc)
    assert len(hc.store.keys) == 1


# -- the signing key is read before the code is spent or the refresh token rotated -------------------


class _Outage(MemoryStore):
    """A memory store whose backend is lost for one effect of the type ``fail`` names, once set
    (the adapters answer the :class:`StoreUnavailable` with 503 ``temporarily_unavailable``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: type[fx.Effect] | None = None

    def perform(self, effect: fx.Effect) -> Any:
        if self.fail is not None and isinstance(effect, self.fail):
            self.fail = None
            raise StoreUnavailable("connection lost")
        return super().perform(effect)


class _RivalAlg(MemoryStore):
    """While ``racing``, every key swap loses to another instance that has just stored a key set of
    another algorithm (a rolling change of ``signing_alg``: ES256 here, EdDSA there), so the swap
    returns a set with no active ES256 key. Deterministic: the rival's keys come from a seeded source."""

    def __init__(self) -> None:
        super().__init__()
        self.racing = True
        self._rival = Harness(make_config(signing_alg="EdDSA"), seed=7)

    def rival_key(self) -> SigningKey:
        return keys.generate(self._rival.ctx())

    def perform(self, effect: fx.Effect) -> Any:
        if self.racing and isinstance(effect, fx.SwapSigningKeys):
            self.keys = (self.rival_key(), *self.keys)  # committed just before ours: our compare fails
        return super().perform(effect)


def _grant_of(h: Harness, access_token: str) -> Grant:
    grant = h.store.grants[jwt_parts(access_token)[1]["gid"]]
    assert isinstance(grant, Grant)
    return grant


@pytest.mark.parametrize("failing", [fx.GetSigningKeys, fx.SwapSigningKeys])
def test_tk_04_store_outage_at_the_key_read_leaves_the_code_redeemable(failing: type[fx.Effect]) -> None:
    """The key read (or the first key's swap) fails before the code is spent: the client's retry of
    the 503 is redeemed, not taken for a replay that revokes the grant (RFC 6749 §4.1.2, §10.5)."""
    h = Harness()
    h.store = store = _Outage()
    add_client(h)
    if failing is fx.GetSigningKeys:
        tokens(h)  # a signing key exists: only the read is left to fail
    code = get_code(h)
    store.fail = failing
    with pytest.raises(StoreUnavailable):
        redeem(h, code)
    assert store.fail is None  # the outage did hit the key step
    assert not store.codes[digest(code)].consumed
    body = assert_tokens(redeem(h, code))
    assert not _grant_of(h, body["access_token"]).revoked
    assert not is_revoked(h, body["access_token"])
    assert_tokens(refresh(h, body["refresh_token"]))


def test_tk_07_store_outage_at_the_key_read_leaves_the_refresh_token_current() -> None:
    """The key read fails before the rotation: the same refresh token works on the retry, even past
    the grace window, and no grant is revoked (RFC 6749 §6; RFC 9700 §4.14.2)."""
    h = Harness()
    h.store = store = _Outage()
    add_client(h)
    first = tokens(h)
    generation = _grant_of(h, first["access_token"]).refresh_generation
    store.fail = fx.GetSigningKeys
    with pytest.raises(StoreUnavailable):
        refresh(h, first["refresh_token"])
    assert store.fail is None
    assert _grant_of(h, first["access_token"]).refresh_generation == generation
    h.now += h.config.refresh_grace + 1  # the retry must not depend on the grace window
    second = assert_tokens(refresh(h, first["refresh_token"]))
    assert not _grant_of(h, second["access_token"]).revoked
    assert not is_revoked(h, first["access_token"])
    assert_tokens(refresh(h, second["refresh_token"]))


def _assert_no_signing_key(resp: Response) -> None:
    assert_error(resp, "temporarily_unavailable", 503)
    assert resp.header("retry-after") == token.RETRY_AFTER


def test_tk_04_no_key_of_the_configured_alg_is_503_and_leaves_the_code_redeemable() -> None:
    """The first key's swap loses to an instance signing with another algorithm: 503 with
    ``Retry-After`` (RFC 9110 §15.6.4, §10.2.3), not a server error, and the code is not spent."""
    h = Harness()
    h.store = store = _RivalAlg()
    add_client(h)
    code = get_code(h)
    _assert_no_signing_key(redeem(h, code))
    assert not store.codes[digest(code)].consumed
    assert store.grants == {}
    _assert_no_signing_key(redeem(h, code))  # the key set keeps changing: still nothing spent
    assert not store.codes[digest(code)].consumed
    store.racing = False
    body = assert_tokens(redeem(h, code))
    assert jwt_parts(body["access_token"])[0]["alg"] == "ES256"
    assert not _grant_of(h, body["access_token"]).revoked


def test_tk_07_no_key_of_the_configured_alg_is_503_and_rotates_nothing() -> None:
    """The other instance retired this one's key; the swap making a new ES256 key loses to it again:
    503, the refresh token stays current and no grant is revoked."""
    h = Harness()
    h.store = store = _RivalAlg()
    store.racing = False
    add_client(h)
    first = tokens(h)
    store.keys = (store.rival_key(), *(attrs.evolve(k, signs_until=h.now) for k in store.keys))
    store.racing = True
    h.now += 1
    before = _grant_of(h, first["access_token"])
    _assert_no_signing_key(refresh(h, first["refresh_token"]))
    assert _grant_of(h, first["access_token"]) == before
    store.racing = False
    h.now += h.config.refresh_grace + 1  # a rotation would have made this retry a reuse
    second = assert_tokens(refresh(h, first["refresh_token"]))
    assert not _grant_of(h, second["access_token"]).revoked
    assert not is_revoked(h, first["access_token"])


# -- TK-07: the rotation's own verdict, and superseded tokens after idling -------------------------


class _RevokedFirst(MemoryStore):
    """A memory store in which another request (a revocation, a reuse elsewhere) revokes the grant
    after the refresh request read it and before its ``RotateRefresh`` runs, once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def perform(self, effect: fx.Effect) -> Any:
        if self.armed and isinstance(effect, fx.RotateRefresh):
            self.armed = False
            super().perform(fx.RevokeGrant(effect.grant_id, effect.now))
        return super().perform(effect)


@pytest.mark.parametrize("superseded", [False, True])
def test_tk_07_a_grant_revoked_before_the_rotation_issues_nothing(superseded: bool) -> None:
    """The grant read as live is revoked before the compare-and-set: the rotation answers
    ``unknown`` and the request is ``invalid_grant`` with no token (RFC 7009 §2.1, RFC 6749 §6;
    TK-07), for the current token and for a superseded one retried within the grace window."""
    h = Harness()
    h.store = store = _RevokedFirst()
    add_client(h)
    first = tokens(h)
    presented = first["refresh_token"]
    if not superseded:
        presented = assert_tokens(refresh(h, presented))["refresh_token"]
        h.now += h.config.refresh_grace + 1
    else:
        assert_tokens(refresh(h, presented))  # `presented` is now superseded, within the grace window
    store.armed = True
    assert_error(refresh(h, presented), "invalid_grant")
    assert store.armed is False  # the revocation did land between the read and the rotation
    assert _grant_of(h, first["access_token"]).revoked


def test_tk_07_a_purged_grants_refresh_token_is_invalid_grant(hc: Harness) -> None:
    """A genuine refresh token whose grant the store has since purged (past its absolute expiry) is
    ``invalid_grant`` (RFC 6749 §5.2), not a server error (GN-03)."""
    body = tokens(hc)
    gid = jwt_parts(body["access_token"])[1]["gid"]
    hc.now = hc.store.grants[gid].expires_at
    hc.store.purge(hc.now)
    assert gid not in hc.store.grants
    assert_error(refresh(hc, body["refresh_token"]), "invalid_grant")


def test_tk_07_reuse_after_the_current_token_idled_out_still_revokes(h: Harness) -> None:
    """A superseded token presented after its successor idled out is still reuse: the family is
    revoked (RFC 9700 §4.14.2), not merely refused as idle (TK-07)."""
    h.config = make_config(lifetimes=Lifetimes(refresh_idle=100, refresh_absolute=1000))
    add_client(h)
    first = tokens(h)
    h.now += 50
    second = assert_tokens(refresh(h, first["refresh_token"]))
    h.now += 100  # the successor has idled out; the grant has not
    body = assert_error(refresh(h, first["refresh_token"]), "invalid_grant")
    assert "reuse" in body["error_description"]
    assert _grant_of(h, second["access_token"]).revoked
    assert is_revoked(h, second["access_token"])


def test_tk_07_superseded_token_of_an_expired_grant_yields_no_rotation(h: Harness) -> None:
    """From the grant's absolute expiry on, even a superseded token is refused before any step that
    writes (GN-03: a rejection writes nothing; RFC 6749 §6): no ``RotateRefresh`` is attempted."""
    h.config = make_config(lifetimes=Lifetimes(refresh_idle=100, refresh_absolute=250))
    add_client(h)
    first = tokens(h)
    h.now += 50
    second = assert_tokens(refresh(h, first["refresh_token"]))
    h.now = _grant_of(h, second["access_token"]).expires_at
    req = h.request(
        "POST",
        "/token",
        form={"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "c1"},
    )
    resp, effects = h.trace(token.handle(h.ctx(), req))
    assert_error(resp, "invalid_grant")
    assert [e for e in effects if e.writes] == []
