"""The resource-server guard (RS-01..RS-05; RFC 6750 §2-3, RFC 9728 §5.1, MCP authorization)."""

from __future__ import annotations

import re

import pytest
from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from token_kit import claims, forge, header_for, mint, put_grant, signer, verifying

from kavach_core import effects as fx
from kavach_core import guard, keys
from kavach_core.access_tokens import InvalidToken
from kavach_core.errors import ConfigurationError
from kavach_core.guard import Principal
from kavach_core.http import Response
from kavach_core.jose import JoseError
from kavach_core.verified_cache import VerifiedCache

META = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
DEFAULT_SCOPES = "tools:list tools:call"
INVALID = "The access token is invalid, expired or revoked"
NO_TOKEN_HEADER = f'Bearer resource_metadata="{META}", scope="{DEFAULT_SCOPES}"'
INVALID_HEADER = (
    f'Bearer resource_metadata="{META}", scope="{DEFAULT_SCOPES}", error="invalid_token", error_description="{INVALID}"'
)


def _auth(h: Harness, authorization: str | None, required: tuple[str, ...] = ()) -> Principal | Response:
    return h.run(guard.authenticate(h.config, RESOURCE, authorization, required, h.now))  # type: ignore[no-any-return]


def _valid(h: Harness, scopes: tuple[str, ...] = ("tools:list", "tools:call")) -> str:
    put_grant(h)
    return mint(h, scopes=scopes)[0]


def _assert_challenge(response: object, status: int, header: str, error: str) -> Response:
    assert isinstance(response, Response)
    assert response.status == status
    assert response.header("WWW-Authenticate") == header
    assert response.header("Cache-Control") == "no-store"
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error
    return response


def _assert_invalid(response: object) -> None:
    _assert_challenge(response, 401, INVALID_HEADER, "invalid_token")


# -- RS-01 -------------------------------------------------------------------------------------


def test_rs_01_token_in_query_or_form_body_is_ignored(h: Harness) -> None:
    token = _valid(h)
    req = h.request("POST", "/mcp", query={"access_token": token}, form={"access_token": token})
    response = h.run(guard.authenticate_request(h.config, RESOURCE, req, (), h.now))
    _assert_challenge(response, 401, NO_TOKEN_HEADER, "unauthorized")


def test_rs_01_token_in_the_authorization_header_is_used(h: Harness) -> None:
    token = _valid(h)
    req = h.request("POST", "/mcp", headers=[("Authorization", f"Bearer {token}")], json={"jsonrpc": "2.0"})
    principal = h.run(guard.authenticate_request(h.config, RESOURCE, req, ("tools:list",), h.now))
    assert isinstance(principal, Principal)
    assert (principal.subject, principal.client_id, principal.scopes) == (
        "alice",
        "client-1",
        ("tools:list", "tools:call"),
    )


def test_rs_01_two_authorization_headers_are_an_invalid_request(h: Harness) -> None:
    """RFC 6750 §3.1: a request repeating the credential is ``invalid_request``, 400, even when
    each copy is a valid token."""
    token = _valid(h)
    req = h.request("GET", "/mcp", headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    response = h.run(guard.authenticate_request(h.config, RESOURCE, req, (), h.now))
    assert isinstance(response, Response) and response.status == 400
    assert response.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in (response.header("WWW-Authenticate") or "")


# -- RS-02 -------------------------------------------------------------------------------------


def test_rs_02_missing_token_gets_a_challenge_without_error(h: Harness) -> None:
    response = _assert_challenge(_auth(h, None), 401, NO_TOKEN_HEADER, "unauthorized")
    assert "error=" not in (response.header("WWW-Authenticate") or "")


def test_rs_02_challenge_names_the_required_scopes_when_given(h: Harness) -> None:
    header = f'Bearer resource_metadata="{META}", scope="tools:call:search"'
    _assert_challenge(_auth(h, None, ("tools:call:search",)), 401, header, "unauthorized")


@pytest.mark.parametrize("value", ["Basic YWxpY2U6c2VjcmV0", "DPoP abc.def.ghi", "Negotiate x", "Bearerabc"])
def test_rs_02_other_schemes_are_treated_as_no_token(h: Harness, value: str) -> None:
    _assert_challenge(_auth(h, value), 401, NO_TOKEN_HEADER, "unauthorized")


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b", 'Bearer "x"', "Bearer é"])
def test_rs_02_malformed_bearer_gets_invalid_token(h: Harness, value: str) -> None:
    _assert_invalid(_auth(h, value))


def test_rs_02_scheme_is_case_insensitive(h: Harness) -> None:
    """RFC 9110 §11.1: auth schemes compare case-insensitively."""
    token = _valid(h)
    assert isinstance(_auth(h, f"bearer {token}"), Principal)
    assert isinstance(_auth(h, f"BEARER {token}"), Principal)


def test_rs_02_expired_token_gets_invalid_token(h: Harness) -> None:
    token = _valid(h)
    h.now += h.config.lifetimes.access_token - 1
    assert isinstance(_auth(h, f"Bearer {token}"), Principal)
    h.now += 1
    _assert_invalid(_auth(h, f"Bearer {token}"))


def test_rs_02_revoked_jti_gets_invalid_token(h: Harness) -> None:
    token = _valid(h)
    at = guard.verify_bearer(token, verifying(h), issuer=ISSUER, resource=RESOURCE, now=h.now)
    assert isinstance(_auth(h, f"Bearer {token}"), Principal)
    h.store.perform(fx.RevokeAccessToken(at.jti, at.expires_at))
    _assert_invalid(_auth(h, f"Bearer {token}"))


def test_rs_02_revoked_grant_gets_invalid_token(h: Harness) -> None:
    token = _valid(h)
    assert isinstance(_auth(h, f"Bearer {token}"), Principal)
    assert h.store.perform(fx.RevokeGrant("grant-1", h.now))
    _assert_invalid(_auth(h, f"Bearer {token}"))


def test_rs_02_token_of_an_unknown_grant_gets_invalid_token(h: Harness) -> None:
    token, _ = mint(h, grant_id="never-stored")
    _assert_invalid(_auth(h, f"Bearer {token}"))


def test_rs_02_wrong_issuer_gets_invalid_token(h: Harness) -> None:
    put_grant(h)
    pair = signer(h)
    _assert_invalid(_auth(h, "Bearer " + forge(pair, header_for(pair), claims(h, iss="https://evil.example"))))


def test_rs_02_forged_and_junk_tokens_get_invalid_token(h: Harness) -> None:
    token = _valid(h)
    pair = signer(h)
    h64, p64, s64 = token.split(".")
    for bad in (
        f"{h64}.{p64}.{s64[:-4]}AAAA",
        f"{h64}.{p64}",
        forge(pair, header_for(pair, typ="JWT"), claims(h)),
        forge(pair, header_for(pair, kid="other"), claims(h)),
        "kvr_notajwt",
        "a" * 9000,
    ):
        _assert_invalid(_auth(h, f"Bearer {bad}"))


def test_rs_02_token_signed_by_a_key_no_longer_published_gets_invalid_token(h: Harness) -> None:
    token = _valid(h)
    h.store.keys = ()
    _assert_invalid(_auth(h, f"Bearer {token}"))


def test_rs_02_every_failure_reads_the_same(h: Harness) -> None:
    """The description never says which check failed (nothing that helps an attacker)."""
    token = _valid(h)
    other, _ = mint(h, resource=OTHER_RESOURCE)
    h.store.perform(fx.RevokeGrant("grant-1", h.now))
    responses = [_auth(h, f"Bearer {t}") for t in (token, other, "x.y.z")]
    headers = {r.header("WWW-Authenticate") for r in responses if isinstance(r, Response)}
    bodies = {r.body for r in responses if isinstance(r, Response)}
    assert headers == {INVALID_HEADER} and len(bodies) == 1


def test_rs_02_guard_never_generates_keys_or_writes(h: Harness) -> None:
    """With an empty key store the guard reads and refuses; it never creates a key."""
    outcome, effects = h.trace(guard.authenticate(h.config, RESOURCE, "Bearer a.b.c", (), h.now))
    _assert_invalid(outcome)
    assert [type(e) for e in effects] == [fx.GetSigningKeys]
    assert h.store.keys == ()
    token = _valid(h)
    outcome, effects = h.trace(guard.authenticate(h.config, RESOURCE, f"Bearer {token}", (), h.now))
    assert isinstance(outcome, Principal)
    assert [type(e) for e in effects] == [fx.GetSigningKeys, fx.IsTokenRevoked]
    assert not any(e.writes for e in effects)


def test_rs_02_no_token_needs_no_store_at_all(h: Harness) -> None:
    _, effects = h.trace(guard.authenticate(h.config, RESOURCE, None, (), h.now))
    assert effects == []


# -- RS-03 -------------------------------------------------------------------------------------


def test_rs_03_missing_scope_gets_403_naming_it(h: Harness) -> None:
    token = _valid(h, scopes=("tools:list",))
    header = (
        f'Bearer error="insufficient_scope", scope="tools:call:search", resource_metadata="{META}", '
        'error_description="The access token does not grant the scope this request needs"'
    )
    _assert_challenge(_auth(h, f"Bearer {token}", ("tools:call:search",)), 403, header, "insufficient_scope")


def test_rs_03_challenge_names_every_required_scope(h: Harness) -> None:
    token = _valid(h, scopes=("tools:list",))
    response = _auth(h, f"Bearer {token}", ("tools:list", "resources:read"))
    assert isinstance(response, Response) and response.status == 403
    assert 'scope="tools:list resources:read"' in (response.header("WWW-Authenticate") or "")


@pytest.mark.parametrize(
    ("granted", "required", "allowed"),
    [
        (("tools:call",), ("tools:call:search",), True),
        (("tools",), ("tools:call:search",), True),
        (("tools:call:search",), ("tools:call:search",), True),
        (("tools:call:search",), ("tools:call:fetch",), False),
        (("tools:call:search",), ("tools:call",), False),
        (("tool",), ("tools:call",), False),
        (("tools:cal",), ("tools:call:x",), False),
        (("tools:list",), ("tools:list", "tools:call:x"), False),
        (("tools:list", "tools:call"), ("tools:list", "tools:call:x"), True),
        ((), (), True),
    ],
)
def test_rs_03_prefix_rule(h: Harness, granted: tuple[str, ...], required: tuple[str, ...], allowed: bool) -> None:
    """A granted scope covers a required one when its segments are a prefix of the required one's."""
    token = _valid(h, scopes=granted)
    outcome = _auth(h, f"Bearer {token}", required)
    if allowed:
        assert isinstance(outcome, Principal)
        assert all(outcome.has_scope(s) for s in required)
    else:
        assert isinstance(outcome, Response) and outcome.status == 403


def test_rs_03_revocation_is_checked_before_scope(h: Harness) -> None:
    """A revoked token gets 401, not a 403 that would invite a step-up with a dead grant."""
    token = _valid(h, scopes=("tools:list",))
    h.store.perform(fx.RevokeGrant("grant-1", h.now))
    _assert_challenge(
        _auth(h, f"Bearer {token}", ("tools:call:x",)),
        401,
        INVALID_HEADER.replace(DEFAULT_SCOPES, "tools:call:x"),
        "invalid_token",
    )


# -- RS-04 / RS-05 -----------------------------------------------------------------------------


def test_rs_04_token_for_another_resource_gets_invalid_token(h: Harness) -> None:
    put_grant(h)
    token, _ = mint(h, resource=OTHER_RESOURCE)
    _assert_invalid(_auth(h, f"Bearer {token}"))
    other = h.run(guard.authenticate(h.config, OTHER_RESOURCE, f"Bearer {token}", (), h.now))
    assert isinstance(other, Principal) and other.token.audience == OTHER_RESOURCE


def test_rs_05_resource_is_canonicalised_before_comparison(h: Harness) -> None:
    token = _valid(h)
    for spelling in ("https://MCP.example.com/mcp/", "https://mcp.example.com:443/mcp"):
        outcome = h.run(guard.authenticate(h.config, spelling, f"Bearer {token}", (), h.now))
        assert isinstance(outcome, Principal)


def test_rs_05_unconfigured_resource_is_a_configuration_error(h: Harness) -> None:
    for resource in ("https://mcp.example.com/MCP", "not a uri"):
        with pytest.raises(ConfigurationError):
            h.run(guard.authenticate(h.config, resource, None, (), h.now))


def test_verify_bearer_is_pure_and_strict(h: Harness) -> None:
    token = _valid(h)
    keymap = verifying(h)
    at = guard.verify_bearer(token, keymap, issuer=ISSUER, resource=RESOURCE, now=h.now)
    assert at.subject == "alice" and at.audience == RESOURCE
    with pytest.raises(InvalidToken):
        guard.verify_bearer(token, keymap, issuer=ISSUER, resource=OTHER_RESOURCE, now=h.now)
    with pytest.raises(JoseError):
        guard.verify_bearer(token, {}, issuer=ISSUER, resource=RESOURCE, now=h.now)


def test_retired_key_still_authenticates_its_tokens(h: Harness) -> None:
    token = _valid(h)
    h.now += 60
    h.run(keys.rotate(h.ctx()))
    assert isinstance(_auth(h, f"Bearer {token}"), Principal)


# -- challenges for adapters -------------------------------------------------------------------


def test_challenge_builder_escapes_and_sanitises() -> None:
    header = guard.www_authenticate('https://x.example/a"b\\c', ("s",), "invalid_token", 'bad "news"\r\nX-Injected: 1')
    assert "\r" not in header and "\n" not in header
    assert 'resource_metadata="https://x.example/.well-known/oauth-protected-resource/a\\"b\\\\c"' in header
    assert header.endswith("error_description=\"bad 'news'??X-Injected: 1\"")


def test_challenge_builder_keeps_printable_ascii_and_replaces_control_characters() -> None:
    """RFC 9110 §5.6.4: a quoted-string holds printable ASCII (``~`` included, as in a scope or a
    URI path, RFC 6749 §3.3, RFC 3986 §2.3); control characters such as US and DEL become ``?``."""
    header = guard.www_authenticate("https://x.example/~a\x1fb\x7fc", ("s~1",))
    assert (
        header
        == 'Bearer resource_metadata="https://x.example/.well-known/oauth-protected-resource/~a?b?c", scope="s~1"'
    )


def test_challenge_builder_adds_a_description_only_to_an_error() -> None:
    """RFC 6750 §3: ``error_description`` accompanies an ``error``; without one, or without a
    description, the header has no ``error_description``."""
    meta = 'Bearer resource_metadata="https://x.example/.well-known/oauth-protected-resource"'
    assert guard.www_authenticate("https://x.example", (), None, "ignored") == meta
    assert guard.www_authenticate("https://x.example", (), "invalid_token") == meta + ', error="invalid_token"'


def test_challenge_without_error_describes_the_missing_token() -> None:
    """RS-02: the no-token challenge's body carries the standard description, or the one given."""
    assert guard.challenge(RESOURCE, ()).json() == {
        "error": "unauthorized",
        "error_description": guard.MISSING_TOKEN_DESCRIPTION,
    }
    assert guard.challenge(RESOURCE, (), None, "Sign in first").json()["error_description"] == "Sign in first"


def test_challenge_builder_omits_an_empty_scope() -> None:
    assert guard.www_authenticate("https://x.example", ()) == (
        'Bearer resource_metadata="https://x.example/.well-known/oauth-protected-resource"'
    )


def test_challenge_response_statuses() -> None:
    assert guard.challenge(RESOURCE, ()).status == 401
    assert guard.challenge(RESOURCE, (), "invalid_token").status == 401
    assert guard.challenge(RESOURCE, ("a",), "insufficient_scope").status == 403
    assert guard.challenge(RESOURCE, (), "invalid_request", "two tokens").status == 400


_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(max_size=300), st.text(max_size=300).map(lambda t: "Bearer " + t)))
def test_rs_02_arbitrary_authorization_values_get_a_challenge(h: Harness, value: str) -> None:
    """Invariant (GN-03): any header value yields a 401 challenge with a header-safe value, never an exception."""
    outcome = _auth(h, value)
    assert isinstance(outcome, Response) and outcome.status == 401
    assert _HEADER_SAFE.fullmatch(outcome.header("WWW-Authenticate") or "")


# -- the key ring: one key-set read serves requests for at most its ttl ------------------------


def _ring_auth(h: Harness, ring: keys.KeyRing, token: str) -> tuple[object, list[type]]:
    outcome, effects = h.trace(guard.authenticate(h.config, RESOURCE, f"Bearer {token}", (), h.now, keyring=ring))
    return outcome, [type(e) for e in effects]


def test_keyring_reuses_one_read_within_its_ttl_and_still_checks_revocation(h: Harness) -> None:
    token = _valid(h)
    ring = keys.KeyRing(ttl=2)
    assert _ring_auth(h, ring, token)[1] == [fx.GetSigningKeys, fx.IsTokenRevoked]
    outcome, effects = _ring_auth(h, ring, token)
    assert isinstance(outcome, Principal) and effects == [fx.IsTokenRevoked]
    h.now += 1
    assert _ring_auth(h, ring, token)[1] == [fx.IsTokenRevoked]
    h.now += 1  # the read is ttl seconds old: read again
    assert _ring_auth(h, ring, token)[1] == [fx.GetSigningKeys, fx.IsTokenRevoked]
    h.store.perform(fx.RevokeGrant("grant-1", h.now))
    outcome, effects = _ring_auth(h, ring, token)
    _assert_invalid(outcome)
    assert effects == [fx.IsTokenRevoked]


def test_keyring_a_withdrawn_key_stops_verifying_within_the_ttl(h: Harness) -> None:
    token = _valid(h)
    ring = keys.KeyRing()  # default: 1 second
    cache = VerifiedCache()

    def auth() -> object:
        return h.run(guard.authenticate(h.config, RESOURCE, f"Bearer {token}", (), h.now, cache, ring))

    assert isinstance(auth(), Principal)
    h.store.keys = ()  # the key is withdrawn from the store
    assert isinstance(auth(), Principal)  # the same second: the read made in it still serves
    h.now += 1  # the documented bound of the default ring: one second (keys.KeyRing)
    _assert_invalid(auth())


def test_keyring_a_key_aging_out_stops_at_once_without_a_read(h: Harness) -> None:
    token = _valid(h)
    (record,) = h.store.keys
    # A ttl outlasting the key's publication: the snapshot is still fresh when the key ages out,
    # so it is publication, decided again at the new ``now``, that withdraws it (keys.KeyRing).
    ring = keys.KeyRing(ttl=record.publish_until - h.now + 1)
    assert isinstance(_ring_auth(h, ring, token)[0], Principal)
    h.now = record.publish_until
    outcome, effects = _ring_auth(h, ring, token)
    _assert_invalid(outcome)
    assert effects == [fx.GetSigningKeys]  # aged out of the snapshot: unknown kid, read once, refused


def test_keyring_an_unknown_kid_reads_the_keys_again_once(h: Harness) -> None:
    token = _valid(h)
    ring = keys.KeyRing(ttl=60)
    assert isinstance(_ring_auth(h, ring, token)[0], Principal)
    h.run(keys.rotate(h.ctx()))  # a new key signs from now on
    fresh, _ = mint(h)
    outcome, effects = _ring_auth(h, ring, fresh)
    assert isinstance(outcome, Principal)
    assert effects == [fx.GetSigningKeys, fx.IsTokenRevoked]
    assert _ring_auth(h, ring, fresh)[1] == [fx.IsTokenRevoked]
    stranger = forge(signer(h), {**header_for(signer(h)), "kid": "nobody"}, claims(h))
    outcome, effects = _ring_auth(h, ring, stranger)
    _assert_invalid(outcome)
    assert effects == [fx.GetSigningKeys]  # one re-read, then refused


def test_keyring_ttl_zero_reads_every_time(h: Harness) -> None:
    token = _valid(h)
    ring = keys.KeyRing(ttl=0)
    for _ in range(2):
        assert _ring_auth(h, ring, token)[1] == [fx.GetSigningKeys, fx.IsTokenRevoked]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            keys.KeyRing(ttl=bad)  # type: ignore[arg-type]


def test_authenticate_values_refuses_two_authorization_headers(h: Harness) -> None:
    token = _valid(h)
    twice = h.run(guard.authenticate_values(h.config, RESOURCE, [f"Bearer {token}"] * 2, (), h.now))
    assert isinstance(twice, Response) and twice.status == 400 and twice.json()["error"] == "invalid_request"
    # RFC 6750 §3: the 400 challenge names the scopes the request needs, else the resource's defaults.
    assert f'scope="{DEFAULT_SCOPES}"' in (twice.header("WWW-Authenticate") or "")
    needs = h.run(guard.authenticate_values(h.config, RESOURCE, [f"Bearer {token}"] * 2, ("tools:call:x",), h.now))
    assert isinstance(needs, Response) and 'scope="tools:call:x"' in (needs.header("WWW-Authenticate") or "")
    assert isinstance(h.run(guard.authenticate_values(h.config, RESOURCE, [f"Bearer {token}"], (), h.now)), Principal)
    outcome = h.run(guard.authenticate_values(h.config, RESOURCE, [], (), h.now))
    _assert_challenge(outcome, 401, NO_TOKEN_HEADER, "unauthorized")


def test_only_the_plain_memory_store_is_taken_as_nonblocking() -> None:
    from typing import Any

    from kavach_core.drivers import nonblocking
    from kavach_core.memory_store import MemoryStore

    class Slow(MemoryStore):
        async def aperform(self, effect: Any) -> Any:
            return self.perform(effect)

    assert nonblocking(MemoryStore())
    assert not nonblocking(Slow())
    assert not nonblocking(object())


@pytest.mark.parametrize(
    "value",
    [
        "Bearer {t}, Bearer {t}",
        "bearer {t},",
        "Bearer {t},Bearer other",
        "Basic YTpi,Bearer {t}",
        "Basic YTpi, \tbearer {t}",
        'Digest username="a", realm="b",Bearer {t}',
    ],
)
def test_rs_01_authorization_headers_joined_into_one_are_an_invalid_request(h: Harness, value: str) -> None:
    """Repeated headers a server joined with commas (WSGI does) repeat the credential too: a
    b64token has no comma (RFC 6750 §2.1), so 400 ``invalid_request`` as for two headers, whether
    the Bearer one came first or after another scheme's."""
    token = _valid(h)
    req = h.request("GET", "/mcp", headers=[("Authorization", value.format(t=token))])
    response = h.run(guard.authenticate_request(h.config, RESOURCE, req, (), h.now))
    assert isinstance(response, Response) and response.status == 400
    assert response.json()["error"] == "invalid_request"


def test_rs_01_two_headers_naming_no_bearer_token_send_no_token(h: Harness) -> None:
    """RFC 6750 §3.1: a request with no Bearer credential at all (another scheme, twice) lacks
    authentication information: the bare 401 challenge, as for one such header, not 400."""
    for values in (["Foo a", "Bar b"], ["Basic YTpi", "Bearer\tx"], ['Digest username="a", realm="b"', "Foo"]):
        response = h.run(guard.authenticate_values(h.config, RESOURCE, values, (), h.now))
        _assert_challenge(response, 401, NO_TOKEN_HEADER, "unauthorized")


@pytest.mark.parametrize("space", ["\xa0", "\x85", "\t", "\u3000"])
def test_rs_01_a_bearer_credential_behind_any_whitespace_counts_as_repeated(h: Harness, space: str) -> None:
    """Whatever whitespace a server lets through before the scheme, a Bearer credential the guard
    would take counts when the credential is repeated: 400, never the first value verified."""
    token = _valid(h)
    for values in ([f"{space}Bearer {token}", "Basic YTpi"], ["Foo a", f"{space}Bearer {token}"]):
        response = h.run(guard.authenticate_values(h.config, RESOURCE, values, (), h.now))
        assert isinstance(response, Response) and response.status == 400, values
        assert response.json()["error"] == "invalid_request"


_HEADER_VALUES = [
    "Bearer {t}",
    "bearer {t}",
    "Bearer\t{t}",
    "Bearer",
    "Bearer ",
    "Bearer other",
    "Basic YTpi",
    "Foo a",
    'Digest username="a", realm="b"',
    "",
    " ",
    "x,",
    "\xa0Bearer {t}",
    "\x85Bearer {t}",
    "\tBearer {t} \xa0",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_HEADER_VALUES), min_size=1, max_size=3))
def test_rs_01_joined_headers_get_the_answer_the_headers_get(values: list[str]) -> None:
    """Invariant: a request's ``Authorization`` values, sent as separate headers, get the same
    answer (status, error code, principal or none) as the one value a WSGI server joins them
    into (``", "``, RFC 9110 §5.3), so every framework answers a request alike."""
    h = Harness()
    token = _valid(h)
    sent = [value.format(t=token) for value in values]

    def answer(authorization: list[str]) -> tuple[object, ...]:
        out = h.run(guard.authenticate_values(h.config, RESOURCE, authorization, (), h.now))
        if isinstance(out, Principal):
            return ("principal", out.subject)
        return (out.status, out.json().get("error"))

    assert answer(sent) == answer([", ".join(sent)])


def test_rs_02_another_scheme_with_commas_is_no_bearer_token(h: Harness) -> None:
    response = _auth(h, 'Digest username="a", realm="b"')
    assert isinstance(response, Response) and response.status == 401
    assert "error=" not in (response.header("WWW-Authenticate") or "")
