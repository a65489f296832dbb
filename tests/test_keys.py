"""Signing keys: generation, the JWKS, rotation decided once, retired keys kept until their tokens expire."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from conftest import RESOURCE, START, Harness, make_config
from joserfc.jwk import KeySet as JoseKeySet
from token_kit import mint, put_grant, verifying

from kavach_core import access_tokens, keys
from kavach_core import effects as fx
from kavach_core.config import Lifetimes
from kavach_core.drivers import Flow
from kavach_core.endpoints import jwks
from kavach_core.jose import JoseError, VerifyingKey
from kavach_core.keys import KeySet
from kavach_core.records import SigningKey

ALGS = ["ES256", "RS256", "EdDSA"]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def _keyset(h: Harness) -> KeySet:
    return KeySet(h.store.keys)


@pytest.mark.parametrize("alg", ALGS)
def test_generated_kid_is_the_rfc7638_thumbprint_other_libraries_compute(alg: str) -> None:
    h = Harness(make_config(signing_alg=alg))
    keyset = h.run(keys.current(h.ctx()))
    doc = json.loads(json.dumps(keyset.jwks(h.now)))
    (jwk,) = doc["keys"]
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    assert not PRIVATE_MEMBERS & set(jwk)
    imported = JoseKeySet.import_key_set(doc).keys[0]
    assert imported.thumbprint() == jwk["kid"]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_keys_come_from_the_injected_entropy(alg: str) -> None:
    """Deterministic under test: the same seed gives the same key, another seed another key."""
    a = keys.generate(Harness(make_config(signing_alg=alg), seed=7).ctx())
    b = keys.generate(Harness(make_config(signing_alg=alg), seed=7).ctx())
    c = keys.generate(Harness(make_config(signing_alg=alg), seed=8).ctx())
    assert a.kid == b.kid != c.kid
    assert a.private_pem == b.private_pem


def test_first_use_generates_one_key_then_reads_only(h: Harness) -> None:
    keyset, effects = h.trace(keys.current(h.ctx()))
    assert [type(e) for e in effects] == [fx.GetSigningKeys, fx.SwapSigningKeys]
    assert len(h.store.keys) == 1
    record = h.store.keys[0]
    assert record.created_at == START and record.signs_until == START + h.config.lifetimes.signing_key
    assert keyset.active(h.now, "ES256") == record
    again, effects = h.trace(keys.current(h.ctx()))
    assert [type(e) for e in effects] == [fx.GetSigningKeys]
    assert again.records == (record,)


def _race(h: Harness, make: Any) -> tuple[KeySet, KeySet]:
    """Two "processes" run ``make(ctx)`` against one store, interleaved: both read, then both swap."""
    a: Flow[KeySet] = make(h.ctx())
    b: Flow[KeySet] = make(h.ctx())
    effect_a = next(a)
    effect_b = next(b)
    assert isinstance(effect_a, fx.GetSigningKeys) and isinstance(effect_b, fx.GetSigningKeys)
    swap_a = a.send(h.store.perform(effect_a))
    swap_b = b.send(h.store.perform(effect_b))
    assert isinstance(swap_a, fx.SwapSigningKeys) and isinstance(swap_b, fx.SwapSigningKeys)
    assert swap_a.keys[0].kid != swap_b.keys[0].kid
    results = []
    for flow, swap in ((a, swap_a), (b, swap_b)):
        with pytest.raises(StopIteration) as stop:
            flow.send(h.store.perform(swap))
        results.append(stop.value.value)
    return results[0], results[1]


def test_concurrent_first_generation_is_decided_once(h: Harness) -> None:
    """Design "Effects": a rotation is decided once even with many server processes."""
    first, second = _race(h, keys.current)
    assert len(h.store.keys) == 1
    assert first == second == KeySet(h.store.keys)


def _finish(h: Harness, flow: Flow[Any], reply: Any) -> Any:
    """Send ``reply`` into ``flow``, then perform its effects on the store until it returns."""
    try:
        effect = flow.send(reply)
        while True:
            effect = flow.send(h.store.perform(effect))
    except StopIteration as stop:
        return stop.value


def test_concurrent_rotations_each_store_their_key_and_the_later_one_signs(h: Harness) -> None:
    """Two rotations read the same set; the first swap wins, the second one's swap loses, so it
    reads again and swaps again: each returns with its own key signing, the second's last, and
    every key that signed stays published for its tokens."""
    h.run(keys.current(h.ctx()))
    original = h.store.keys[0]
    h.now += 100
    a, b = keys.rotate(h.ctx()), keys.rotate(h.ctx())
    read_a, read_b = next(a), next(b)
    swap_a, swap_b = a.send(h.store.perform(read_a)), b.send(h.store.perform(read_b))
    assert isinstance(swap_a, fx.SwapSigningKeys) and isinstance(swap_b, fx.SwapSigningKeys)
    fresh_a, fresh_b = swap_a.keys[0], swap_b.keys[0]
    first = _finish(h, a, h.store.perform(swap_a))
    second = _finish(h, b, h.store.perform(swap_b))
    assert first.active(h.now, "ES256").kid == fresh_a.kid
    assert second.active(h.now, "ES256").kid == fresh_b.kid == KeySet(h.store.keys).active(h.now, "ES256").kid
    stored = {k.kid: k for k in h.store.keys}
    assert set(stored) == {original.kid, fresh_a.kid, fresh_b.kid}
    for kid in (original.kid, fresh_a.kid):
        assert stored[kid].signs_until == h.now
        assert stored[kid].publish_until >= h.now + h.config.lifetimes.access_token + keys.PUBLISH_MARGIN


def test_a_rotation_racing_a_successors_publication_still_signs_with_its_own_key(h: Harness) -> None:
    """Another instance publishes the active key's successor (its last hour) between the rotation's
    read and its swap: the rotation tries again, and its key, not the old one, signs when it
    returns (``kavach keys rotate`` names it); the successor that never signed is dropped."""
    h.run(keys.current(h.ctx()))
    old = h.store.keys[0]
    h.now = old.signs_until - keys.PREPUBLISH + 10
    flow = keys.rotate(h.ctx())
    swap = flow.send(h.store.perform(next(flow)))
    h.run(keys.current(h.ctx()))  # the other instance
    assert len(h.store.keys) == 2, "a successor was published in between"
    result = _finish(h, flow, h.store.perform(swap))
    fresh = swap.keys[0]
    assert result.active(h.now, "ES256").kid == fresh.kid
    assert {k.kid for k in h.store.keys} == {old.kid, fresh.kid}
    assert next(k for k in h.store.keys if k.kid == old.kid).signs_until == h.now


def test_a_rotation_gives_up_on_keys_that_keep_changing_and_stores_nothing(h: Harness) -> None:
    h.run(keys.current(h.ctx()))
    flow = keys.rotate(h.ctx())
    effect = next(flow)
    ours: set[str] = set()
    with pytest.raises(keys.KeyRotationError, match="run it again"):
        while True:
            if isinstance(effect, fx.SwapSigningKeys):
                ours.add(effect.keys[0].kid)
                h.run(keys.rotate(h.ctx()))  # another process rotates first, every time
            effect = flow.send(h.store.perform(effect))
    assert len(ours) == 1, "one key, offered again"
    assert not ours & {k.kid for k in h.store.keys}


def test_a_rotation_configured_for_shorter_tokens_keeps_the_longer_tokens_keys_published() -> None:
    """The server signs tokens for an hour; ``kavach keys rotate`` run without its settings uses
    the default lifetime. The retired key stays published until the hour-long token expires, and
    the new key records the hour too, for the server's next tokens."""
    h = Harness(make_config(lifetimes=Lifetimes(access_token=3600)))
    put_grant(h)
    token, claims = mint(h)
    old_kid = h.store.keys[0].kid
    h.now += 30
    h.config = make_config()  # the rotating process: access tokens of 600 s
    h.run(keys.rotate(h.ctx()))
    old = next(k for k in h.store.keys if k.kid == old_kid)
    assert old.publish_until >= claims.expires_at + keys.PUBLISH_MARGIN
    fresh = KeySet(h.store.keys).active(h.now, "ES256")
    assert fresh is not None and keys.token_lifetime(fresh) == 3600
    h.now = claims.expires_at - 1
    assert access_tokens.verify(token, verifying(h), issuer=h.config.issuer, resource=RESOURCE, now=h.now)


def test_a_token_never_outlives_its_keys_publication() -> None:
    """A server restarted with a longer access-token lifetime signs with a key published for
    shorter tokens: its tokens are cut to what the key records, until a key made for the
    longer lifetime signs."""
    from oauth_flows import add_client, get_code, redeem

    h = Harness(make_config())
    h.run(keys.current(h.ctx()))
    key = h.store.keys[0]
    h.config = make_config(lifetimes=Lifetimes(access_token=3600))
    add_client(h)
    body = redeem(h, get_code(h)).json()
    assert body["expires_in"] == keys.token_lifetime(key) == 600
    h.run(keys.rotate(h.ctx()))
    assert redeem(h, get_code(h)).json()["expires_in"] == 3600


def test_retired_key_stays_published_and_its_tokens_verify_until_they_expire(h: Harness) -> None:
    """RFC 9068 §4 / design: retired keys stay in the JWKS until every token they signed has expired."""
    put_grant(h)
    token, claims = mint(h)
    old_kid = h.store.keys[0].kid
    h.now += 30
    h.run(keys.rotate(h.ctx()))
    old = next(k for k in h.store.keys if k.kid == old_kid)
    assert old.publish_until >= claims.expires_at
    # Still in the JWKS and still verifying until the token expires.
    h.now = claims.expires_at - 1
    assert old_kid in {k["kid"] for k in _keyset(h).jwks(h.now)["keys"]}
    assert access_tokens.verify(token, verifying(h), issuer=h.config.issuer, resource=RESOURCE, now=h.now)
    # New tokens are signed by the new key.
    new_token, _ = mint(h)
    assert json.loads(keys_header(new_token))["kid"] != old_kid
    # Gone once publish_until has passed, and dropped from the store at the next change.
    h.now = old.publish_until
    assert old_kid not in {k["kid"] for k in _keyset(h).jwks(h.now)["keys"]}
    with pytest.raises(JoseError, match="unknown kid"):
        access_tokens.verify(token, verifying(h), issuer=h.config.issuer, resource=RESOURCE, now=h.now)
    h.run(keys.rotate(h.ctx()))
    assert old_kid not in {k.kid for k in h.store.keys}


def keys_header(token: str) -> str:
    from kavach_core.opaque import b64url_decode

    return b64url_decode(token.split(".")[0]).decode()


def test_successor_is_published_before_it_signs(h: Harness) -> None:
    """A scheduled successor enters the JWKS ``PREPUBLISH`` seconds before its first signature,
    longer than the JWKS may be cached, so verifiers know it in time."""
    h.run(keys.current(h.ctx()))
    first = h.store.keys[0]
    h.now = first.signs_until - keys.PREPUBLISH - 1
    _, effects = h.trace(keys.current(h.ctx()))
    assert [type(e) for e in effects] == [fx.GetSigningKeys]
    h.now += 1
    keyset = h.run(keys.current(h.ctx()))
    successor = next(k for k in h.store.keys if k.kid != first.kid)
    assert successor.created_at == first.signs_until
    assert keyset.active(h.now, "ES256") == first
    assert {k["kid"] for k in keyset.jwks(h.now)["keys"]} == {first.kid, successor.kid}
    assert keys.PREPUBLISH > jwks.MAX_AGE
    # Exactly one successor, however often current() runs meanwhile.
    h.now += 10
    _, effects = h.trace(keys.current(h.ctx()))
    assert [type(e) for e in effects] == [fx.GetSigningKeys] and len(h.store.keys) == 2
    h.now = first.signs_until
    assert KeySet(h.store.keys).active(h.now, "ES256") == successor


def test_rotating_drops_a_successor_that_never_signed(h: Harness) -> None:
    h.run(keys.current(h.ctx()))
    h.now = h.store.keys[0].signs_until - 2 * keys.CLOCK_SKEW - 10
    h.run(keys.current(h.ctx()))
    assert len(h.store.keys) == 2
    h.run(keys.rotate(h.ctx()))
    kinds = [(k.created_at <= h.now < k.signs_until, k.publish_until > h.now) for k in h.store.keys]
    assert kinds == [(True, True), (False, True)]


@pytest.mark.parametrize("ahead", [1, 5, keys.CLOCK_SKEW])
def test_an_instance_with_a_clock_behind_signs_with_the_key_one_ahead_made(h: Harness, ahead: int) -> None:
    """Instance A, its clock ``ahead`` seconds fast, makes the first key; instance B then finds a
    key created in its future. B signs with it (no second key) and keeps it published; before,
    B made a key of its own and dropped A's, and every token A had signed stopped verifying."""
    h.now += ahead
    h.run(keys.current(h.ctx()))  # A
    (made,) = h.store.keys
    token = mint(h)[0]
    h.now -= ahead  # B
    keyset = h.run(keys.current(h.ctx()))
    assert list(h.store.keys) == [made]
    assert keyset.active(h.now, "ES256") == made
    assert made.kid in {k["kid"] for k in keyset.jwks(h.now)["keys"]}
    checked = access_tokens.verify(
        token, keyset.verifying_keys(h.now), issuer=h.config.issuer, resource=RESOURCE, now=h.now + ahead
    )
    assert checked.subject


@pytest.mark.parametrize(("ahead", "kept"), [(keys.CLOCK_SKEW + 1, True), (2 * keys.CLOCK_SKEW, True),
                                             (2 * keys.CLOCK_SKEW + 1, False)])
def test_a_key_created_beyond_the_skew_does_not_sign_and_is_dropped_only_beyond_twice_it(
    h: Harness, ahead: int, kept: bool
) -> None:
    """Further ahead than CLOCK_SKEW, a key does not sign here: this instance starts its own. An
    instance ahead by CLOCK_SKEW may have signed with it up to CLOCK_SKEW early, so it stays
    published unless it was made more than twice CLOCK_SKEW ahead (then it never signed)."""
    h.now += ahead
    h.run(keys.current(h.ctx()))
    (future,) = h.store.keys
    h.now -= ahead
    keyset = h.run(keys.current(h.ctx()))
    assert keyset.active(h.now, "ES256") not in (None, future)
    assert (future.kid in {k["kid"] for k in keyset.jwks(h.now)["keys"]}) is kept


def test_changing_the_configured_algorithm_starts_a_key_of_that_algorithm(h: Harness) -> None:
    h.run(keys.current(h.ctx()))
    es = h.store.keys[0]
    h.config = make_config(signing_alg="EdDSA")
    keyset = h.run(keys.current(h.ctx()))
    ed = keyset.active(h.now, "EdDSA")
    assert ed is not None and ed.alg == "EdDSA"
    assert keyset.active(h.now, "ES256") is None
    retired = next(k for k in h.store.keys if k.kid == es.kid)
    assert retired.signs_until == h.now and retired.publish_until > h.now


def test_algorithm_is_fixed_by_the_stored_key(h: Harness) -> None:
    """A record whose ``alg`` does not fit its key cannot be loaded, so it can neither sign nor verify."""
    h.run(keys.current(h.ctx()))
    record = h.store.keys[0]
    for alg in ("RS256", "EdDSA", "HS256", "none"):
        with pytest.raises(JoseError):
            keys.load(attrs.evolve(record, alg=alg))
    mismatched = KeySet((attrs.evolve(record, alg="EdDSA"),))
    assert mismatched.verifying_keys(h.now) == {}
    assert isinstance(keys.load(record).public, VerifyingKey)
    assert keys.load(record).public.alg == "ES256"


def test_unloadable_record_is_left_out_of_the_key_set(h: Harness) -> None:
    h.run(keys.current(h.ctx()))
    good = h.store.keys[0]
    bad = SigningKey(
        "bad", "ES256", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", START, START + 10, START + 99
    )
    with pytest.raises(JoseError):
        keys.load(bad)
    keyset = KeySet((bad, good))
    assert set(keyset.verifying_keys(h.now)) == {good.kid}
    assert [k["kid"] for k in keyset.jwks(h.now)["keys"]] == [good.kid]


# -- the JWKS endpoint ---------------------------------------------------------------------


def test_jwks_endpoint_serves_the_public_keys(h: Harness) -> None:
    response = h.run(jwks.handle(h.ctx(), h.request("GET", "/jwks.json")))
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.header("Cache-Control") == "public, max-age=300"
    body = response.json()
    assert [k["kid"] for k in body["keys"]] == [k.kid for k in h.store.keys]
    assert all(not PRIVATE_MEMBERS & set(k) for k in body["keys"])


def test_jwks_endpoint_head_has_no_body(h: Harness) -> None:
    got = h.route(h.request("GET", "/jwks.json"))
    response = h.route(h.request("HEAD", "/jwks.json"))
    assert response.status == 200 and response.body == b""
    assert response.header("Cache-Control") == "public, max-age=300"
    assert response.header("Content-Length") == str(len(got.body))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_jwks_endpoint_refuses_other_methods(h: Harness, method: str) -> None:
    response, effects = h.trace(jwks.handle(h.ctx(), h.request(method, "/jwks.json")))
    assert response.status == 405
    assert response.header("Allow") == "GET, HEAD"
    assert response.json()["error"] == "invalid_request"
    assert effects == []
