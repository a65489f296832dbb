"""The verified-token cache: never serves an expired, revoked, re-targeted or tampered token."""

from __future__ import annotations

import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from token_kit import claims, forge, header_for, mint, put_grant, signer, verifying

from kavach_core import access_tokens, guard
from kavach_core import effects as fx
from kavach_core.guard import Principal
from kavach_core.http import Response
from kavach_core.verified_cache import VerifiedCache

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def _auth(h: Harness, token: str, cache: VerifiedCache, resource: str = RESOURCE) -> Principal | Response:
    flow = guard.authenticate(h.config, resource, f"Bearer {token}", (), h.now, cache)
    return h.run(flow)  # type: ignore[no-any-return]


def _cached(h: Harness, cache: VerifiedCache, **kw: object) -> tuple[str, access_tokens.AccessToken]:
    put_grant(h)
    token, _ = mint(h, **kw)  # type: ignore[arg-type]
    access = access_tokens.verify(token, verifying(h), issuer=ISSUER, resource=RESOURCE, now=h.now)
    cache.put(token, access, resource=RESOURCE, issuer=ISSUER)
    return token, access


def test_a_repeat_token_is_served_and_counts_as_a_hit(h: Harness) -> None:
    cache = VerifiedCache()
    put_grant(h)
    token, _ = mint(h)
    first = _auth(h, token, cache)
    second = _auth(h, token, cache)
    assert isinstance(first, Principal) and isinstance(second, Principal)
    assert first.token == second.token
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_an_entry_carries_its_claims_and_the_revocation_question_for_them(h: Harness) -> None:
    cache = VerifiedCache()
    put_grant(h)
    token, _ = mint(h)
    access = access_tokens.verify(token, verifying(h), issuer=ISSUER, resource=RESOURCE, now=h.now)
    put = cache.put(token, access, resource=RESOURCE, issuer=ISSUER)
    got = cache.get(token, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=verifying(h))
    assert got == put and got is not None
    assert got.token == access
    assert got.revocation == fx.IsTokenRevoked(access.jti, access.grant_id)


def test_an_expired_token_is_never_served(h: Harness) -> None:
    cache = VerifiedCache()
    token, access = _cached(h, cache)
    kids = verifying(h)
    assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=access.expires_at - 1, kids=kids) is not None
    assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=access.expires_at, kids=kids) is None
    assert len(cache) == 0  # the dead entry is dropped
    h.now = access.expires_at
    assert isinstance(_auth(h, token, cache), Response)


def test_a_token_not_yet_valid_at_now_is_not_served(h: Harness) -> None:
    cache = VerifiedCache()
    token, access = _cached(h, cache)
    kids = verifying(h)
    assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=access.issued_at - 61, kids=kids) is None


def test_the_served_window_starts_exactly_where_verify_starts_accepting(h: Harness) -> None:
    """The cache serves a token from the first second :func:`access_tokens.verify` accepts it:
    ``iat`` up to 60 s ahead of ``now`` (RFC 7519 §4.1.6 skew) and ``nbf`` equal to ``now``
    (RFC 7519 §4.1.5); one second earlier it misses, as verify refuses."""
    pair = signer(h)
    kids = verifying(h)
    for body in (claims(h, iat=h.now + 60, exp=h.now + 600), claims(h, nbf=h.now + 5)):
        cache = VerifiedCache()
        token = forge(pair, header_for(pair), body)
        start = body["iat"] - 60 if "nbf" not in body else body["nbf"]
        access = access_tokens.verify(token, kids, issuer=ISSUER, resource=RESOURCE, now=start)
        cache.put(token, access, resource=RESOURCE, issuer=ISSUER)
        assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=start, kids=kids) is not None
        assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=start - 1, kids=kids) is None
        with pytest.raises(access_tokens.InvalidToken):
            access_tokens.verify(token, kids, issuer=ISSUER, resource=RESOURCE, now=start - 1)


def test_a_cache_of_size_one_keeps_the_latest_token(h: Harness) -> None:
    cache = VerifiedCache(size=1)
    first, _ = _cached(h, cache)
    second, _ = _cached(h, cache)
    kids = verifying(h)
    assert len(cache) == 1
    assert cache.get(second, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=kids) is not None
    assert cache.get(first, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=kids) is None


def test_a_token_revoked_after_it_was_cached_is_refused(h: Harness) -> None:
    cache = VerifiedCache()
    put_grant(h)
    token, access = mint(h)
    assert isinstance(_auth(h, token, cache), Principal)
    h.store.perform(fx.RevokeAccessToken(access.jti, access.expires_at))
    refused = _auth(h, token, cache)
    assert isinstance(refused, Response) and refused.status == 401
    assert cache.hits == 1  # served from the cache, refused by the revocation check


def test_a_grant_revoked_after_caching_refuses_its_tokens(h: Harness) -> None:
    cache = VerifiedCache()
    put_grant(h)
    token, access = mint(h)
    assert isinstance(_auth(h, token, cache), Principal)
    h.store.perform(fx.RevokeGrant(access.grant_id, h.now))
    assert isinstance(_auth(h, token, cache), Response)


def test_another_resource_is_never_served_from_the_entry_of_one(h: Harness) -> None:
    cache = VerifiedCache()
    token, _ = _cached(h, cache)
    kids = verifying(h)
    assert cache.get(token, resource=OTHER_RESOURCE, issuer=ISSUER, now=h.now, kids=kids) is None
    assert cache.get(token, resource=RESOURCE, issuer="https://evil.example", now=h.now, kids=kids) is None
    assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=kids) is not None  # still there
    refused = _auth(h, token, cache, OTHER_RESOURCE)
    assert isinstance(refused, Response) and refused.status == 401


def test_a_withdrawn_key_withdraws_its_cached_tokens(h: Harness) -> None:
    cache = VerifiedCache()
    token, _ = _cached(h, cache)
    assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=()) is None
    h.store.keys = ()
    assert isinstance(_auth(h, token, cache), Response)


def test_size_is_bounded_and_least_recently_used_goes_first(h: Harness) -> None:
    cache = VerifiedCache(size=3)
    put_grant(h)
    tokens = [mint(h)[0] for _ in range(5)]
    kids = verifying(h)
    for n, token in enumerate(tokens):
        access = access_tokens.verify(token, kids, issuer=ISSUER, resource=RESOURCE, now=h.now)
        cache.put(token, access, resource=RESOURCE, issuer=ISSUER)
        assert len(cache) <= 3
        if n == 2:  # touch the oldest: it becomes the most recent
            assert cache.get(tokens[0], resource=RESOURCE, issuer=ISSUER, now=h.now, kids=kids) is not None
    present = [t for t in tokens if cache.get(t, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=kids)]
    assert present == [tokens[0], tokens[3], tokens[4]]


def test_purge_and_clear(h: Harness) -> None:
    cache = VerifiedCache()
    _, access = _cached(h, cache)
    assert cache.purge(access.expires_at - 1) == 0
    assert cache.purge(access.expires_at) == 1
    _cached(h, cache)
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        VerifiedCache(size=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), flip=st.sampled_from(_ALPHABET))
def test_any_tampered_token_misses(h: Harness, position: int, flip: str) -> None:
    """Invariant: a cached access token with any one character replaced by another base64url
    character or a dot is never a cache hit; through the guard it is verified from scratch,
    refused, and not cached (the cache still holds the original alone)."""
    cache = VerifiedCache()
    token, _ = _cached(h, cache)
    i = position % len(token)
    if token[i] == flip:
        return
    tampered = token[:i] + flip + token[i + 1 :]
    assert cache.get(tampered, resource=RESOURCE, issuer=ISSUER, now=h.now, kids=verifying(h)) is None
    # Through the guard a tampered token is verified from scratch: refused, and never cached.
    assert isinstance(_auth(h, tampered, cache), Response)
    assert len(cache) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 900), st.booleans()), min_size=1, max_size=12))
def test_property_cached_answers_equal_uncached_answers(h: Harness, steps: list[tuple[int, bool]]) -> None:
    """Over any schedule of time steps and revocations, the guard with a cache answers exactly
    as the guard without one."""
    cache = VerifiedCache(size=2)
    put_grant(h)
    start = h.now
    tokens = [mint(h)[0] for _ in range(3)]
    for i, (advance, revoke) in enumerate(steps):
        h.now = start + advance
        token = tokens[i % 3]
        if revoke and i % 4 == 3:
            verified = access_tokens.verify(token, verifying(h), issuer=ISSUER, resource=RESOURCE, now=start)
            h.store.perform(fx.RevokeAccessToken(verified.jti, verified.expires_at))
        plain = h.run(guard.authenticate(h.config, RESOURCE, f"Bearer {token}", (), h.now))
        cached = _auth(h, token, cache)
        assert type(plain) is type(cached)
        if isinstance(plain, Principal):
            assert isinstance(cached, Principal) and plain.token == cached.token
        else:
            assert isinstance(cached, Response) and (plain.status, plain.body) == (cached.status, cached.body)
    h.now = start
