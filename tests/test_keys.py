"""Signing keys: generation, the JWKS, rotation decided once, retired keys kept until their tokens expire."""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import attrs
import pytest
from conftest import RESOURCE, START, Harness, make_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet as JoseKeySet
from oauth_flows import add_client, get_code, jwt_parts, redeem
from token_kit import mint, put_grant, verifying

from kavach_core import access_tokens, keys
from kavach_core import effects as fx
from kavach_core.config import Config, Lifetimes
from kavach_core.context import Context
from kavach_core.drivers import Flow
from kavach_core.endpoints import jwks
from kavach_core.jose import JoseError, VerifyingKey
from kavach_core.keys import KeySet
from kavach_core.memo import Memo
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


@pytest.mark.parametrize("before_end", [keys.SUCCESSOR_LEAD - 1, 30, 1])
def test_a_successor_made_late_still_starts_after_every_cached_jwks_expired(h: Harness, before_end: int) -> None:
    """After a quiet spell the first request of the active key's last PREPUBLISH seconds may come
    with less than SUCCESSOR_LEAD left: the successor then starts SUCCESSOR_LEAD after it is
    published (a JWKS cached just before has expired by then, on any instance's clock), and the
    active key signs until then, published as much longer (its tokens' lifetime unchanged)."""
    h.run(keys.current(h.ctx()))
    (first,) = h.store.keys
    h.now = first.signs_until - before_end
    keyset = h.run(keys.current(h.ctx()))
    extended = next(k for k in h.store.keys if k.kid == first.kid)
    successor = next(k for k in h.store.keys if k.kid != first.kid)
    assert successor.created_at == h.now + keys.SUCCESSOR_LEAD == extended.signs_until
    assert keys.token_lifetime(extended) == keys.token_lifetime(first)
    assert successor.kid in {k["kid"] for k in keyset.jwks(h.now)["keys"]}
    stored = KeySet(h.store.keys)
    for t in range(h.now, successor.created_at - keys.CLOCK_SKEW):  # the old key, past its first end too
        assert stored.active(t, "ES256") == extended, t
    assert stored.active(successor.created_at - keys.CLOCK_SKEW, "ES256") == successor
    # An instance CLOCK_SKEW ahead signs with it CLOCK_SKEW before that by its clock: by the
    # publisher's (true) clock, still no sooner than a JWKS cached at publication expires.
    assert successor.created_at - 2 * keys.CLOCK_SKEW - h.now >= jwks.MAX_AGE
    h.now += 10  # decided once: later calls change nothing
    _, effects = h.trace(keys.current(h.ctx()))
    assert [type(e) for e in effects] == [fx.GetSigningKeys]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 4 * 3600), min_size=1, max_size=12))
@example([2 * 3600 - 30, 400])  # a quiet spell, then a request 30 s before the key stops signing
@example([2 * 3600 - 400, 10, 400])
def test_every_successor_signs_only_once_every_earlier_jwks_has_expired(gaps: list[int]) -> None:
    """Invariant: with requests at any times (``gaps`` seconds apart, quiet spells included), a key
    that follows another first signs no sooner than JWKS max-age after it entered the JWKS, in
    true time, on any instance's clock up to CLOCK_SKEW ahead (which signs with a key CLOCK_SKEW
    before its ``created_at`` by its own clock: twice the skew early), and some key can sign at
    every request (the active one is extended rather than left to lapse while its successor
    waits)."""
    h = Harness(make_config(lifetimes=Lifetimes(signing_key=2 * 3600)))
    h.run(keys.current(h.ctx()))
    published = {h.store.keys[0].kid: h.now}
    for gap in gaps:
        h.now += gap
        keyset = h.run(keys.current(h.ctx()))
        for record in keyset.records:
            published.setdefault(record.kid, h.now)
        assert keyset.active(h.now, "ES256") is not None
    followers = [k for k in h.store.keys if published[k.kid] < k.created_at]  # made ahead, not at once
    ahead = keys.CLOCK_SKEW  # an instance this far ahead: when it first signs with each, in true time
    for record in followers:
        stored = KeySet(h.store.keys)
        first = min(
            t
            for t in range(record.created_at - 3 * ahead, record.created_at + 1)
            if stored.active(t + ahead, "ES256") == record
        )
        assert first - published[record.kid] >= jwks.MAX_AGE


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


@pytest.mark.parametrize(
    ("ahead", "kept"), [(keys.CLOCK_SKEW + 1, True), (2 * keys.CLOCK_SKEW, True), (2 * keys.CLOCK_SKEW + 1, False)]
)
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


def test_changing_the_configured_algorithm_starts_a_key_of_that_algorithm_and_leaves_the_other(h: Harness) -> None:
    """An instance configured for EdDSA finds only an ES256 key: it starts an EdDSA key, signing at
    once as a first key does, and leaves the ES256 key exactly as stored, still signing for the
    instances configured with ES256; the JWKS publishes both (RFC 7517 §5)."""
    h.run(keys.current(h.ctx()))
    es = h.store.keys[0]
    h.config = make_config(signing_alg="EdDSA")
    keyset = h.run(keys.current(h.ctx()))
    ed = keyset.active(h.now, "EdDSA")
    assert ed is not None and ed.alg == "EdDSA" and ed.created_at == h.now
    assert keyset.active(h.now, "ES256") == es
    assert set(h.store.keys) == {es, ed}
    assert {k["kid"] for k in keyset.jwks(h.now)["keys"]} == {es.kid, ed.kid}


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


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384"])
def test_no_key_is_generated_for_an_algorithm_we_do_not_sign_with(h: Harness, alg: str) -> None:
    """RFC 8725 §3.1/§3.2: only ES256, RS256 and EdDSA keys exist here; asking for another fails."""
    with pytest.raises(JoseError, match="unsupported algorithm"):
        keys.generate(h.ctx(), alg)


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


# -- a stored record that cannot be loaded never signs ------------------------------------------


def _p384_pem() -> bytes:
    key = ec.derive_private_key(12345, ec.SECP384R1())  # fixed: the test needs no randomness
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


GARBAGE_PEM = b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"


def _served_jwks(h: Harness) -> dict[str, Any]:
    response = h.run(jwks.handle(h.ctx(), h.request("GET", "/jwks.json")))
    assert response.status == 200
    body: dict[str, Any] = response.json()
    return body


def _assert_verifies_with_the_jwks(h: Harness, token: str) -> None:
    """``token`` verifies against the JWKS served now: by this library's verifier, with the keys a
    guard reads, and by an independent one (joserfc) with the JWKS document itself."""
    alg = jwt_parts(token)[0]["alg"]
    doc = _served_jwks(h)
    assert access_tokens.verify(token, verifying(h), issuer=h.config.issuer, resource=RESOURCE, now=h.now).subject
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc flags EdDSA as superseded by RFC 9864's Ed25519
        decoded = jose_jwt.decode(token, JoseKeySet.import_key_set(doc), algorithms=[alg])
    assert decoded.claims["aud"] == RESOURCE


@pytest.mark.parametrize("pem", [_p384_pem(), GARBAGE_PEM], ids=["p384-stored-as-es256", "garbage"])
def test_an_unloadable_active_key_is_replaced_and_the_next_token_request_succeeds(h: Harness, pem: bytes) -> None:
    """The active record cannot be loaded (a P-384 key stored as ES256, a PEM that is no key): it is
    out of the JWKS, so it must not sign either. The next token request gets a token from a new key
    of the configured algorithm, which the JWKS publishes; the broken record is retired (it may
    load in another process, whose tokens then keep verifying there until they expire) and is
    gone from the store at the first change after its publication ends."""
    add_client(h)
    assert redeem(h, get_code(h)).status == 200
    (good,) = h.store.keys
    broken = attrs.evolve(good, private_pem=pem)
    h.store.keys = (broken,)
    with pytest.raises(JoseError):
        keys.load(broken)
    assert KeySet(h.store.keys).jwks(h.now)["keys"] == []
    h.now += 86400  # a day on: before, still the same broken key, every token request failing

    response = redeem(h, get_code(h))
    assert response.status == 200, response.body
    token = response.json()["access_token"]
    fresh = KeySet(h.store.keys).active(h.now, "ES256")
    assert fresh is not None and fresh.kid != broken.kid and fresh.created_at == h.now
    assert jwt_parts(token)[0]["kid"] == fresh.kid
    assert [k["kid"] for k in _served_jwks(h)["keys"]] == [fresh.kid]
    _assert_verifies_with_the_jwks(h, token)
    retired = next(k for k in h.store.keys if k.kid == broken.kid)
    assert retired.signs_until == h.now
    assert retired.publish_until == h.now + h.config.lifetimes.access_token + keys.PUBLISH_MARGIN

    h.now = retired.publish_until
    h.run(keys.rotate(h.ctx()))
    assert broken.kid not in {k.kid for k in h.store.keys}


def test_an_unloadable_record_is_parsed_once_per_process_not_per_request(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token endpoint chooses its key on every request: a broken record (here created in this
    instance's near future, so it is tried before the good key) is refused from the load cache after
    its first parse, and the good key is never parsed again."""
    add_client(h)
    assert redeem(h, get_code(h)).status == 200
    (good,) = h.store.keys
    broken = attrs.evolve(good, kid="broken", private_pem=GARBAGE_PEM, created_at=h.now + keys.CLOCK_SKEW)
    h.store.keys = (broken, good)
    parsed: list[bytes] = []
    parse = keys.serialization.load_pem_private_key

    def counting(data: bytes, password: bytes | None) -> Any:
        parsed.append(data)
        return parse(data, password)

    monkeypatch.setattr(keys.serialization, "load_pem_private_key", counting)
    for _ in range(5):
        h.now += 1
        response = redeem(h, get_code(h))
        assert response.status == 200
        assert jwt_parts(response.json()["access_token"])[0]["kid"] == good.kid
        assert [k["kid"] for k in _served_jwks(h)["keys"]] == [good.kid]
    assert parsed == [GARBAGE_PEM]
    assert set(h.store.keys) == {broken, good}, "a usable key signs: nothing was written"


def test_an_unloadable_successor_is_replaced_by_a_usable_one_before_it_would_sign(h: Harness) -> None:
    """A successor that cannot be loaded does not count as published: a usable one is published
    :data:`~kavach_core.keys.PREPUBLISH` ahead as usual, and the broken one, which never signed,
    is dropped (RFC 9068 §4 needs it for no token)."""
    h.run(keys.current(h.ctx()))
    (first,) = h.store.keys
    h.now = first.signs_until - keys.PREPUBLISH
    broken = attrs.evolve(first, kid="broken", private_pem=GARBAGE_PEM, created_at=first.signs_until)
    h.store.keys = (broken, first)
    keyset = h.run(keys.current(h.ctx()))
    assert keyset.active(h.now, "ES256") == first
    successor = next(k for k in h.store.keys if k.kid not in (first.kid, "broken"))
    assert successor.created_at == first.signs_until and keys.load(successor).kid == successor.kid
    assert {k.kid for k in h.store.keys} == {first.kid, successor.kid}
    h.now = first.signs_until
    assert KeySet(h.store.keys).active(h.now, "ES256") == successor


def test_a_key_this_process_cannot_load_is_never_stored(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`~kavach_core.keys.generate` loads the key it made before anyone stores it: one this
    process could not load would never be active here, so every request would store another.
    The request fails instead, and the set does not grow."""

    def refuse(alg: str, key: object) -> None:
        raise JoseError(f"key does not fit algorithm {alg}")

    monkeypatch.setattr(keys, "check_key_matches_alg", refuse)
    monkeypatch.setattr(keys, "_loaded", Memo(64))  # the seeded keys below were loaded by earlier tests
    monkeypatch.setattr(keys, "_unloadable", Memo(64))  # and this test's refusals must not outlive it
    for _ in range(3):
        with pytest.raises(JoseError):
            h.run(keys.current(h.ctx()))
    assert not h.store.keys


# -- instances configured with different algorithms share one store -------------------------------


def _as(h: Harness, config: Config) -> Harness:
    """``h`` as seen by an instance configured with ``config`` (same store, clock and entropy)."""
    h.config = config
    return h


@pytest.mark.parametrize(("old", "new"), [("ES256", "EdDSA"), ("EdDSA", "RS256")])
def test_a_rolling_change_of_algorithm_makes_one_key_per_algorithm_not_one_per_request(
    h: Harness, old: str, new: str
) -> None:
    """A load balancer alternates token requests between instances configured for ``old`` and for
    ``new`` on one store. Each keeps signing with the one key of its algorithm: two keys in all, not
    a new key per request (before: each retired the other's key and started one, signing at once,
    unannounced, and the JWKS grew by one key per request). Every token verifies against the JWKS."""
    configs = (make_config(signing_alg=old), make_config(signing_alg=new))
    add_client(h)
    issued: list[str] = []
    for i in range(30):
        h.now += 7
        _as(h, configs[i % 2])
        response = redeem(h, get_code(h))
        assert response.status == 200, response.body
        token = response.json()["access_token"]
        assert jwt_parts(token)[0]["alg"] == configs[i % 2].signing_alg
        issued.append(token)
    assert sorted(k.alg for k in h.store.keys) == sorted((old, new))
    assert len({jwt_parts(t)[0]["kid"] for t in issued}) == 2
    assert len(_served_jwks(h)["keys"]) == 2
    for token in issued:
        _assert_verifies_with_the_jwks(h, token)


def test_alternating_algorithms_for_many_periods_rotate_each_on_schedule_and_stay_bounded(h: Harness) -> None:
    """ES256 and EdDSA instances alternate for five rotation periods (keys signing four hours here,
    a request every 25 minutes, so each algorithm is asked within every PREPUBLISH window): each
    algorithm makes its first key and then one successor per period, published PREPUBLISH seconds
    before it signs; the stored set never holds more than three keys per algorithm (active,
    successor, one retired whose tokens may still be live); every token verifies until it expires."""
    lifetimes = Lifetimes(signing_key=4 * 3600)
    configs = tuple(make_config(signing_alg=alg, lifetimes=lifetimes) for alg in ("ES256", "EdDSA"))
    made: dict[str, SigningKey] = {}
    issued: list[tuple[str, int]] = []
    end = h.now + 5 * lifetimes.signing_key
    i = 0
    while h.now < end:
        h.now += 25 * 60
        _as(h, configs[i % 2])
        token, claims = mint(h)
        issued.append((token, claims.expires_at))
        for record in h.store.keys:
            made.setdefault(record.kid, record)
        for alg in ("ES256", "EdDSA"):
            assert sum(k.alg == alg for k in h.store.keys) <= 3
        i += 1
    for alg in ("ES256", "EdDSA"):
        ordered = sorted((k for k in made.values() if k.alg == alg), key=lambda k: k.created_at)
        assert len(ordered) == 6, "the first key, and one successor per period"
        for before, after in itertools.pairwise(ordered):
            assert after.created_at == before.signs_until, "each successor follows its predecessor"
    for token, expires_at in issued[-2:]:  # the last token of each algorithm
        h.now = expires_at - 1
        _assert_verifies_with_the_jwks(h, token)


def test_the_other_algorithms_key_stays_published_exactly_until_its_tokens_expire(h: Harness) -> None:
    """The rolling change ends: the last ES256 instance signs, then only EdDSA instances remain.
    They never change the ES256 key; its token verifies until it expires; the key leaves the JWKS
    at its ``publish_until`` and the store at the next change of the set after that."""
    es_config, ed_config = make_config(signing_alg="ES256"), make_config(signing_alg="EdDSA")
    _as(h, es_config)
    h.run(keys.current(h.ctx()))
    (es,) = h.store.keys
    h.now += 10 * 86400
    _as(h, ed_config)
    h.run(keys.current(h.ctx()))
    ed = next(k for k in h.store.keys if k.alg == "EdDSA")
    _as(h, es_config)
    last_token, last = mint(h)
    assert jwt_parts(last_token)[0]["kid"] == es.kid
    _as(h, ed_config)
    checkpoints = [
        last.expires_at - 1,
        es.signs_until - keys.PREPUBLISH,
        es.signs_until,
        es.publish_until - 1,
        es.publish_until,
        ed.signs_until - keys.PREPUBLISH,
    ]
    for moment in checkpoints:
        h.now = moment
        if h.now == last.expires_at - 1:
            _assert_verifies_with_the_jwks(h, last_token)
        published = {k["kid"] for k in _served_jwks(h)["keys"]}  # the JWKS endpoint runs current()
        assert (es.kid in published) is (h.now < es.publish_until)
        if h.now < ed.signs_until - keys.PREPUBLISH:
            assert next(k for k in h.store.keys if k.kid == es.kid) == es, "left exactly as stored"
    assert es.publish_until == es.signs_until + h.config.lifetimes.access_token + keys.PUBLISH_MARGIN
    assert len(h.store.keys) == 2, "the EdDSA key's successor was published"
    assert es.kid not in {k.kid for k in h.store.keys}


@pytest.mark.parametrize(("old", "new"), [("ES256", "EdDSA"), ("EdDSA", "ES256")])
def test_first_keys_of_two_algorithms_racing_are_decided_once_each(h: Harness, old: str, new: str) -> None:
    """Instances of two algorithms both find the store empty and both swap: the compare-and-set
    keeps the first swap only; the second instance gets the winner's set, which has no key of its
    algorithm, so it decides again on that set and adds its key, keeping the winner's, in the same
    call (before, that call returned without a key of its algorithm: a 503 for its token request).
    Two keys, each stored once."""
    configs = make_config(signing_alg=old), make_config(signing_alg=new)
    a = keys.current(Context(configs[0], h.now, h.entropy))
    b = keys.current(Context(configs[1], h.now, h.entropy))
    swap_a = a.send(h.store.perform(next(a)))
    swap_b = b.send(h.store.perform(next(b)))
    won = _finish(h, a, h.store.perform(swap_a))
    assert [k.alg for k in h.store.keys] == [old]
    lost = _finish(h, b, h.store.perform(swap_b))
    assert lost == KeySet(h.store.keys)
    assert sorted(k.alg for k in h.store.keys) == sorted((old, new))
    assert lost.active(h.now, old) == won.active(h.now, old)
    assert lost.active(h.now, new) is not None
    again = h.run(keys.current(Context(configs[1], h.now, h.entropy)))
    assert again == lost, "nothing more to decide"


def test_current_gives_up_on_keys_that_keep_changing_and_returns_without_its_key(h: Harness) -> None:
    """Whenever this instance swaps, another process's swap has won first with a set lacking this
    algorithm's key: after ROTATE_ATTEMPTS decisions the call returns the stored set as it is (the
    token endpoint's 503 with Retry-After), never looping for ever, and none of its keys is stored."""
    other = Context(make_config(signing_alg="EdDSA"), h.now, h.entropy)
    flow = keys.current(h.ctx())
    effect = next(flow)
    swaps = 0
    try:
        while True:
            if isinstance(effect, fx.SwapSigningKeys):
                swaps += 1
                h.run(keys.rotate(other))  # another process replaces the set first, every time
            effect = flow.send(h.store.perform(effect))
    except StopIteration as stop:
        result = stop.value
    assert swaps == keys.ROTATE_ATTEMPTS
    assert result == KeySet(h.store.keys)
    assert result.active(h.now, "ES256") is None
    assert {k.alg for k in h.store.keys} == {"EdDSA"}


def test_two_instances_of_one_algorithm_racing_beside_anothers_key_store_one_key(h: Harness) -> None:
    """An ES256 key is stored; two EdDSA instances race to start the EdDSA key: one key is stored,
    both return it, and the ES256 key is untouched."""
    h.run(keys.current(h.ctx()))
    (es,) = h.store.keys
    _as(h, make_config(signing_alg="EdDSA"))
    first, second = _race(h, keys.current)
    (ed,) = (k for k in h.store.keys if k.alg == "EdDSA")
    assert first == second == KeySet(h.store.keys)
    assert first.active(h.now, "EdDSA") == ed and first.active(h.now, "ES256") == es
    assert len(h.store.keys) == 2


def test_successors_of_two_algorithms_due_together_are_each_published_once(h: Harness) -> None:
    """Both algorithms' keys enter their last PREPUBLISH seconds together and the two instances
    race: the compare-and-set keeps one successor, the loser decides again on the winner's set and
    publishes the other, and neither instance publishes a second one."""
    es_config, ed_config = make_config(signing_alg="ES256"), make_config(signing_alg="EdDSA")
    h.run(keys.current(Context(es_config, h.now, h.entropy)))
    h.run(keys.current(Context(ed_config, h.now, h.entropy)))
    ends = {k.alg: k.signs_until for k in h.store.keys}
    h.now = max(ends.values()) - keys.PREPUBLISH
    a = keys.current(Context(es_config, h.now, h.entropy))
    b = keys.current(Context(ed_config, h.now, h.entropy))
    swap_a = a.send(h.store.perform(next(a)))
    swap_b = b.send(h.store.perform(next(b)))
    _finish(h, a, h.store.perform(swap_a))
    _finish(h, b, h.store.perform(swap_b))
    assert len(h.store.keys) == 4, "the loser decided again on the winner's set and published its successor"
    for _ in range(3):
        h.now += 1
        h.run(keys.current(Context(es_config, h.now, h.entropy)))
        h.run(keys.current(Context(ed_config, h.now, h.entropy)))
    assert len(h.store.keys) == 4
    for alg in ("ES256", "EdDSA"):
        successors = [k for k in h.store.keys if k.alg == alg and k.created_at == ends[alg]]
        assert len(successors) == 1


def test_rotating_retires_the_keys_of_every_algorithm_and_each_stays_published_for_its_tokens(h: Harness) -> None:
    """``kavach keys rotate`` (here configured for EdDSA) retires every key, the ES256 one too (an
    operator rotates when a key may be exposed, and after a rolling change this ends the old
    algorithm's key). Each stays published for its tokens; with no algorithm named, the rotation
    starts one new key of each algorithm that was signing, so the ES256 instance needs none."""
    es_config, ed_config = make_config(signing_alg="ES256"), make_config(signing_alg="EdDSA")
    _as(h, es_config)
    es_token, es_claims = mint(h)
    _as(h, ed_config)
    ed_token, ed_claims = mint(h)
    old = {k.kid for k in h.store.keys}
    h.now += 30
    h.run(keys.rotate(h.ctx()))
    for record in h.store.keys:
        if record.kid in old:
            assert record.signs_until == h.now
            assert record.publish_until == h.now + h.config.lifetimes.access_token + keys.PUBLISH_MARGIN
    _as(h, es_config)
    mint(h)
    assert sorted(k.alg for k in h.store.keys if k.kid not in old) == ["ES256", "EdDSA"]
    for token, claims in ((es_token, es_claims), (ed_token, ed_claims)):
        h.now = claims.expires_at - 1
        _assert_verifies_with_the_jwks(h, token)


def test_a_rotation_naming_no_algorithm_starts_one_key_of_each_signing_or_the_configured_one(h: Harness) -> None:
    """``kavach keys rotate`` is run without the servers' settings: with no algorithm named, the
    new keys are of the algorithms signing now (RS256 here, though this instance's configuration
    says EdDSA), and of the configured one only when no key signs."""
    _as(h, make_config(signing_alg="RS256"))
    mint(h)
    _as(h, make_config(signing_alg="EdDSA"))
    h.now += 30
    rotated = h.run(keys.rotate(h.ctx()))
    assert keys.signing_algorithms(rotated.records, h.now) == ("RS256",)
    h.store.keys = ()
    assert keys.signing_algorithms(h.run(keys.rotate(h.ctx())).records, h.now) == ("EdDSA",)


def test_a_rotation_naming_an_algorithm_starts_that_ones_key_alone(h: Harness) -> None:
    """Naming the new algorithm after a rolling change withdraws the old one's key from signing
    at once; it stays published for its tokens."""
    mint(h)
    (es,) = h.store.keys
    h.now += 30
    rotated = h.run(keys.rotate(h.ctx(), ("EdDSA",)))
    assert keys.signing_algorithms(rotated.records, h.now) == ("EdDSA",)
    retired = next(k for k in rotated.records if k.kid == es.kid)
    assert retired.signs_until == h.now and retired.publish_until > h.now


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


def test_active_answers_per_time_and_algorithm_when_asked_again(h: Harness) -> None:
    """KeySet.active remembers its answers per (time, algorithm): asking again gives the same
    key, another time or algorithm is decided afresh, and the memo is no part of the value."""
    h.run(keys.current(h.ctx()))
    keyset = _keyset(h)
    active = keyset.active(h.now, "ES256")
    assert active is not None
    assert keyset.active(h.now, "ES256") is active
    assert keyset.active(active.signs_until, "ES256") is None  # the only key has stopped signing
    assert keyset.active(h.now, "RS256") is None
    assert keyset.active(h.now, "ES256") is active
    assert keyset == KeySet(h.store.keys)


def test_active_remembers_a_bounded_number_of_answers(h: Harness) -> None:
    """A key set asked at many times (a caller keeping one for long) remembers a bounded number
    of answers, and still answers each time as a fresh key set would."""
    h.run(keys.current(h.ctx()))
    keyset = _keyset(h)
    for t in range(h.now, h.now + 200):
        assert keyset.active(t, "ES256") == KeySet(h.store.keys).active(t, "ES256")
    assert len(keyset._chosen) <= keyset._chosen.size
