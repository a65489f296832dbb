"""The strict JWS: what it signs, and every forgery it must refuse (RFC 7515, RFC 8725)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

import pytest
from conftest import Harness, make_config
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from token_kit import b64, b64json, claims, forge, header_for, signer

from kavach_core import jose
from kavach_core.errors import KavachError
from kavach_core.jose import JoseError, SigningKeyPair, VerifyingKey

ALGS = ["ES256", "RS256", "EdDSA"]


@pytest.fixture(params=ALGS)
def alg_h(request: pytest.FixtureRequest) -> Harness:
    return Harness(make_config(signing_alg=request.param))


@pytest.fixture(scope="module")
def es_pair() -> SigningKeyPair:
    h = Harness()
    return signer(h)


def keymap(pair: SigningKeyPair) -> dict[str, VerifyingKey]:
    return {pair.kid: pair.public}


def test_roundtrip_each_algorithm(alg_h: Harness) -> None:
    pair = signer(alg_h)
    token = jose.sign(pair, {"a": 1}, "at+jwt")
    header, payload = jose.verify(token, keymap(pair), "at+jwt")
    assert header == {"alg": alg_h.config.signing_alg, "kid": pair.kid, "typ": "at+jwt"}
    assert payload == {"a": 1}


def test_typ_accepts_media_type_prefix_and_case(es_pair: SigningKeyPair) -> None:
    """RFC 7515 §4.1.9: ``application/`` may be omitted; media types compare case-insensitively."""
    for typ in ("application/at+jwt", "AT+JWT", "Application/At+Jwt"):
        token = forge(es_pair, header_for(es_pair, typ=typ), {"a": 1})
        assert jose.verify(token, keymap(es_pair), "at+jwt")[1] == {"a": 1}
        # ... on the expected side too, which may be spelled either way.
        assert jose.verify(token, keymap(es_pair), "Application/AT+JWT")[1] == {"a": 1}
    # No expected typ: any typ, or none, passes this check.
    for header in (header_for(es_pair, typ="JWT"), header_for(es_pair, typ=None)):
        assert jose.verify(forge(es_pair, header, {"a": 1}), keymap(es_pair), None)[1] == {"a": 1}


# -- forgeries ----------------------------------------------------------------------------


def _reject(token: str, keys: dict[str, VerifyingKey], typ: str | None = "at+jwt") -> None:
    with pytest.raises(JoseError):
        jose.verify(token, keys, typ)


@pytest.mark.parametrize("signature", ["", b64(b"\x00" * 64)])
def test_alg_none_is_refused(es_pair: SigningKeyPair, signature: str) -> None:
    """RFC 8725 §3.2: ``none`` is never accepted, with or without a signature part."""
    token = f"{b64json(header_for(es_pair, alg='none'))}.{b64json({'a': 1})}.{signature}"
    _reject(token, keymap(es_pair))


def _hs256(header: dict[str, object], payload: dict[str, object], secret: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_hs256_keyed_with_our_public_key_pem_is_refused(es_pair: SigningKeyPair) -> None:
    """RFC 8725 §2.1 algorithm confusion: the public key used as an HMAC secret."""
    pem = es_pair.public.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = _hs256(header_for(es_pair, alg="HS256"), {"a": 1}, pem)
    _reject(token, keymap(es_pair))


def test_hs256_keyed_with_our_public_jwk_is_refused(es_pair: SigningKeyPair) -> None:
    jwk = es_pair.public.jwk()
    for secret in (json.dumps(jwk).encode(), json.dumps(jwk, separators=(",", ":")).encode(), jwk["x"].encode()):
        _reject(_hs256(header_for(es_pair, alg="HS256"), {"a": 1}, secret), keymap(es_pair))


def test_alg_other_than_the_keys_is_refused_even_with_a_valid_signature() -> None:
    """The algorithm is fixed by the key: a header naming another algorithm fails, whatever signed it."""
    h = Harness(make_config(signing_alg="EdDSA"))
    pair = signer(h)
    for alg in ("ES256", "RS256", "EdDSA ", "eddsa", "Ed25519", None):
        token = forge(pair, header_for(pair, alg=alg), {"a": 1})
        _reject(token, keymap(pair))


def test_unknown_kid_is_refused(es_pair: SigningKeyPair) -> None:
    token = forge(es_pair, header_for(es_pair, kid="someone-else"), {"a": 1})
    _reject(token, keymap(es_pair))


@pytest.mark.parametrize("kid", [None, "", 7, ["k"]])
def test_missing_or_non_string_kid_is_refused(es_pair: SigningKeyPair, kid: object) -> None:
    header = header_for(es_pair)
    header.pop("kid")
    if kid is not None:
        header["kid"] = kid
    with pytest.raises(JoseError, match="kid is required") as raised:
        jose.verify(forge(es_pair, header, {"a": 1}), keymap(es_pair), "at+jwt")
    # Not UnknownKid: a token naming no key must not make a key ring read the keys again.
    assert not isinstance(raised.value, jose.UnknownKid)


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"])
def test_header_supplied_keys_are_refused(es_pair: SigningKeyPair, name: str) -> None:
    """RFC 8725 §3.10: even a token our own key signed is refused when it points at another key."""
    value: object = es_pair.public.jwk() if name == "jwk" else ["MIIB"] if name == "x5c" else "https://evil.example/k"
    token = forge(es_pair, header_for(es_pair, **{name: value}), {"a": 1})
    _reject(token, keymap(es_pair))


def test_header_supplied_attacker_jwk_is_refused(es_pair: SigningKeyPair) -> None:
    """The classic embedded-key attack: signed by the attacker's key, which the header carries."""
    attacker = SigningKeyPair(es_pair.kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
    token = forge(attacker, header_for(es_pair, jwk=attacker.public.jwk()), {"a": 1})
    _reject(token, keymap(es_pair))


def test_crit_is_refused(es_pair: SigningKeyPair) -> None:
    """RFC 7515 §4.1.11: we understand no extension, so a token listing one is invalid."""
    token = forge(es_pair, header_for(es_pair, crit=["exp"], exp=1), {"a": 1})
    _reject(token, keymap(es_pair))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt2", "application/jwt", "", 1, None])
def test_wrong_or_missing_typ_is_refused(es_pair: SigningKeyPair, typ: object) -> None:
    """RFC 8725 §3.11, RFC 9068 §4: an ID token or other JWT cannot pass as an access token."""
    _reject(forge(es_pair, header_for(es_pair, typ=typ), {"a": 1}), keymap(es_pair))


def test_tampered_payload_is_refused(es_pair: SigningKeyPair) -> None:
    token = jose.sign(es_pair, {"scope": "tools:list"}, "at+jwt")
    h64, _, s64 = token.split(".")
    _reject(f"{h64}.{b64json({'scope': 'tools:call'})}.{s64}", keymap(es_pair))


def test_tampered_header_is_refused(es_pair: SigningKeyPair) -> None:
    token = jose.sign(es_pair, {"a": 1}, "at+jwt")
    _, p64, s64 = token.split(".")
    _reject(f"{b64json(header_for(es_pair, extra='x'))}.{p64}.{s64}", keymap(es_pair))


def test_tampered_signature_is_refused(alg_h: Harness) -> None:
    pair = signer(alg_h)
    token = jose.sign(pair, {"a": 1}, "at+jwt")
    h64, p64, s64 = token.split(".")
    raw = bytearray(jose.b64url_decode(s64))
    for i in (0, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        _reject(f"{h64}.{p64}.{b64(bytes(bad))}", keymap(pair))
    longer, shorter = b64(bytes(raw) + bytes(1)), b64(bytes(raw)[:-1])
    _reject(f"{h64}.{p64}.{longer}", keymap(pair))
    _reject(f"{h64}.{p64}.{shorter}", keymap(pair))


def test_der_encoded_es256_signature_is_refused(es_pair: SigningKeyPair) -> None:
    """RFC 7518 §3.4: ES256 signatures are raw ``R||S``; a DER signature is not accepted."""
    header, payload = b64json(header_for(es_pair)), b64json({"a": 1})
    der = es_pair.key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]
    _reject(f"{header}.{payload}.{b64(der)}", keymap(es_pair))


def test_es256_signature_padded_with_a_zero_octet_is_refused(es_pair: SigningKeyPair) -> None:
    """RFC 7518 §3.4: R and S are exactly 32 octets each; ``R || 0x00 || S`` encodes the same
    integers but is another token, so it must not verify (signature malleability)."""
    token = jose.sign(es_pair, {"a": 1}, "at+jwt")
    h64, p64, s64 = token.split(".")
    raw = jose.b64url_decode(s64)
    for padded in (raw[:32] + b"\x00" + raw[32:], b"\x00" + raw, raw + b"\x00"):
        _reject(f"{h64}.{p64}.{b64(padded)}", keymap(es_pair))


def test_signature_by_another_key_with_the_same_kid_is_refused(es_pair: SigningKeyPair) -> None:
    other = SigningKeyPair(es_pair.kid, "ES256", ec.generate_private_key(ec.SECP256R1()))
    _reject(jose.sign(other, {"a": 1}, "at+jwt"), keymap(es_pair))


def _non_canonical(segment: str) -> str:
    """The same bytes with the unused low bits of the last character set (RFC 4648 §3.5)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(segment) % 4]
    index = alphabet.index(segment[-1]) | ((1 << unused) - 1)
    return segment[:-1] + alphabet[index]


def test_non_canonical_base64url_is_refused(es_pair: SigningKeyPair) -> None:
    """RFC 7515 §2: base64url without padding; a second spelling of the same bytes is refused."""
    token = jose.sign(es_pair, {"a": 1}, "at+jwt")
    h64, p64, s64 = token.split(".")
    assert jose.verify(token, keymap(es_pair), "at+jwt")
    variants = [
        f"{h64}.{p64}.{_non_canonical(s64)}",
        f"{h64}.{p64}.{s64}==",
        f"{h64}=.{p64}.{s64}",
        f"{h64}.{p64}.{s64.replace('-', '+').replace('_', '/')}"
        if ("-" in s64 or "_" in s64)
        else f"{h64}.{p64}.{s64}+",
        f"{h64}.{p64}. {s64}",
    ]
    if len(h64) % 4:
        variants.append(f"{_non_canonical(h64)}.{p64}.{s64}")
    for token_variant in variants:
        assert token_variant != token
        _reject(token_variant, keymap(es_pair))


def test_duplicate_json_members_are_refused(es_pair: SigningKeyPair) -> None:
    """RFC 7515 §5.2 step 4: duplicate header (or payload) member names are rejected, even when signed."""
    header = f'{{"alg":"ES256","kid":"{es_pair.kid}","typ":"at+jwt","kid":"{es_pair.kid}"}}'
    _reject(forge(es_pair, header, {"a": 1}), keymap(es_pair))
    _reject(
        forge(es_pair, header_for(es_pair), '{"aud":"https://a.example","aud":"https://b.example"}'), keymap(es_pair)
    )


@pytest.mark.parametrize("payload", ['{"exp":NaN}', '{"exp":Infinity}', "[1,2]", '"text"', "{", ""])
def test_payload_must_be_a_strict_json_object(es_pair: SigningKeyPair, payload: str) -> None:
    _reject(forge(es_pair, header_for(es_pair), payload), keymap(es_pair))


def test_payload_not_utf8_is_refused(es_pair: SigningKeyPair) -> None:
    h64 = b64json(header_for(es_pair))
    p64 = b64(b'{"a":"\xff"}')
    token = f"{h64}.{p64}.{b64(es_pair.sign(f'{h64}.{p64}'.encode()))}"
    _reject(token, keymap(es_pair))


def test_huge_tokens_are_refused_before_any_work(es_pair: SigningKeyPair) -> None:
    big = jose.sign(es_pair, {"pad": "x" * jose.MAX_TOKEN}, "at+jwt")
    assert len(big) > jose.MAX_TOKEN
    _reject(big, keymap(es_pair))
    _reject("a" * 10_000_000, keymap(es_pair))


def _token_of_length(pair: SigningKeyPair, length: int) -> str:
    """A token ``pair`` signed that is exactly ``length`` characters long (its ``typ`` and a padding
    claim are sized to fit)."""
    for typ in ("a", "ab", "abc"):
        for n in range(length):
            token = jose.sign(pair, {"pad": "x" * n}, typ)
            if len(token) >= length:
                break
        if len(token) == length:
            return token
    raise AssertionError(f"no token of length {length}")


def test_max_token_is_the_longest_token_accepted(es_pair: SigningKeyPair) -> None:
    """The length cap is exactly 8192 characters (:data:`jose.MAX_TOKEN`): a well-signed token that
    long verifies, one character longer is refused before any other check."""
    longest = _token_of_length(es_pair, 8192)
    assert jose.verify(longest, keymap(es_pair), None)[1]["pad"]
    with pytest.raises(JoseError, match="too long"):
        jose.verify(_token_of_length(es_pair, 8193), keymap(es_pair), None)


@pytest.mark.parametrize(
    "token",
    ["", ".", "..", "a.b", "a.b.c.d", "a.b.c.d.e", "é.é.é", "eyJ.eyJ.sig", "...", "a..c", ".b.c", "a.b."],
)
def test_structurally_broken_tokens_are_refused(es_pair: SigningKeyPair, token: str) -> None:
    _reject(token, keymap(es_pair))


@pytest.mark.parametrize("token", [None, 7, b"a.b.c"])
def test_a_token_that_is_not_text_is_refused_with_jose_error(es_pair: SigningKeyPair, token: object) -> None:
    """No exception but JoseError escapes ``verify`` (GN-03), whatever a caller passes as the token."""
    _reject(token, keymap(es_pair))  # type: ignore[arg-type]


def test_verifying_key_refuses_a_key_of_another_algorithm() -> None:
    """A key can verify only with its own algorithm: the pair is checked at construction."""
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(JoseError):
        VerifyingKey("k", "RS256", ec_public)
    with pytest.raises(JoseError):
        VerifyingKey("k", "RS256", ed_public)
    with pytest.raises(JoseError):
        VerifyingKey("k", "ES256", ed_public)
    with pytest.raises(JoseError):
        VerifyingKey("k", "HS256", ec_public)
    with pytest.raises(JoseError):
        VerifyingKey("k", "ES256", ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(JoseError):
        VerifyingKey("", "ES256", ec_public)


def test_small_rsa_keys_are_refused() -> None:
    """RFC 7518 §3.3: RS256 keys are 2048 bits or larger; 2047 bits is too small."""
    with pytest.raises(JoseError):
        SigningKeyPair("k", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(JoseError):
        SigningKeyPair("k", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2047))


def test_rsa_jwk_encodes_the_exponent_in_the_fewest_octets() -> None:
    """RFC 7518 §6.3.1.2: ``e`` is the base64url of the exponent's minimal big-endian octets
    (``3`` is ``Aw``, ``65537`` is ``AQAB``), so the JWK and its RFC 7638 thumbprint match other libraries'."""
    for exponent, expected in ((3, "Aw"), (65537, "AQAB")):
        key = rsa.generate_private_key(public_exponent=exponent, key_size=2048).public_key()
        assert VerifyingKey("k", "RS256", key).jwk()["e"] == expected


def test_thumbprint_matches_rfc7638_example() -> None:
    """RFC 7638 §3.1: the worked example's RSA key has thumbprint NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
        "6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    numbers = rsa.RSAPublicNumbers(65537, int.from_bytes(jose.b64url_decode(n), "big"))
    assert jose.jwk_thumbprint(numbers.public_key()) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_payload_is_decoded_only_after_the_signature_verifies(es_pair: SigningKeyPair) -> None:
    """A forged token with a broken payload reports the bad signature, not a parse error."""
    h64 = b64json(header_for(es_pair))
    with pytest.raises(JoseError, match="bad signature"):
        jose.verify(f"{h64}.{b64(b'{{{')}.{b64(b'0' * 64)}", keymap(es_pair), "at+jwt")


# -- arbitrary input -----------------------------------------------------------------------

_b64_segment = st.binary(max_size=200).map(b64)
_json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
).map(json.dumps)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(max_size=400))
def test_arbitrary_text_raises_only_jose_error(es_pair: SigningKeyPair, token: str) -> None:
    """Invariant: for any text, ``verify`` returns or raises :class:`JoseError`, nothing else (GN-03)."""
    try:
        jose.verify(token, keymap(es_pair), "at+jwt")
    except JoseError:
        pass
    else:
        pytest.fail("arbitrary text verified")


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.one_of(
        _json_text,
        st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jwk"]), st.text(max_size=8)).map(json.dumps),
    ),
    payload=_json_text,
    signature=_b64_segment,
)
def test_arbitrary_well_shaped_tokens_raise_only_jose_error(
    es_pair: SigningKeyPair, header: str, payload: str, signature: str
) -> None:
    """Invariant: base64url segments of arbitrary JSON never verify and never raise anything but :class:`JoseError`."""
    token = f"{b64(header.encode())}.{b64(payload.encode())}.{signature}"
    with pytest.raises(KavachError):
        jose.verify(token, keymap(es_pair), "at+jwt")


def test_claims_helper_is_consistent() -> None:
    """Guard for the test helpers themselves: a claims dict built here has the RFC 9068 §2.2 names."""
    assert set(claims(Harness())) == {"iss", "sub", "aud", "client_id", "scope", "iat", "exp", "jti", "gid"}


def _reference_b64url_decode(text: str) -> bytes | None:
    """RFC 7515 §2 by definition: only the base64url alphabet, no padding, and the one spelling
    that re-encodes to itself."""
    if re.fullmatch(r"[A-Za-z0-9_-]*", text) is None:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        return None
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == text else None


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ABCDQgwEIMYcz0189-_+/=. \u00e9\n", max_size=12) | st.binary(max_size=9).map(jose.b64url))
def test_segment_decoder_accepts_exactly_the_canonical_spelling(text: str) -> None:
    """Invariant: the decoder returns the bytes of exactly the strings that are the canonical,
    unpadded base64url of some bytes (the re-encoding definition), and refuses every other."""
    expected = _reference_b64url_decode(text)
    try:
        got: bytes | None = jose._decode(text)
    except jose.JoseError:
        got = None
    assert got == expected
    if expected is not None:
        assert jose.b64url(expected) == text


def test_json_object_scan_path_matches_decode() -> None:
    for text in ('{"a":1}', '{"a":1} ', ' {"a":1}', '{"a":1}x', '{"a":1,"a":2}', '{"a":NaN}', "{", '{"a":1}{}'):
        try:
            fast: object = jose.json_object(text.encode())
        except jose.JoseError:
            fast = "refused"
        try:
            slow: object = jose._STRICT_JSON.decode(text)
            if not isinstance(slow, dict):
                slow = "refused"
        except (jose.JoseError, ValueError):
            slow = "refused"
        assert fast == slow, text


# -- the signing side and the JWKs it publishes (RFC 7515 §5.1, RFC 7517, RFC 7518 §6, RFC 8037) --


def test_a_key_set_signs_with_a_key_of_each_algorithm_active() -> None:
    """RFC 7518 §3.3, §3.4 and RFC 8037 §3.1: ES256, RS256 and EdDSA are each an algorithm we sign
    with; during a rolling change with a key of each active, the key set signs with all three, in
    that order (so a rotation naming no algorithm renews every one of them)."""
    from kavach_core import keys

    h = Harness()
    for alg in ALGS:
        h.config = make_config(signing_alg=alg)
        h.run(keys.current(h.ctx()))
    assert [key.alg for key in keys.KeySet(h.store.keys).signing(h.now)] == ALGS
    assert keys.signing_algorithms(h.store.keys, h.now) == tuple(sorted(ALGS))


@pytest.mark.parametrize("kid", [7, b"kid", ["k"], {"k": 1}])
def test_a_key_whose_kid_is_not_a_string_is_refused(kid: object) -> None:
    """RFC 7517 §4.5: ``kid`` is a string; a key named by anything else is refused when made,
    for verifying and for signing alike."""
    private = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(JoseError):
        VerifyingKey(kid, "ES256", private.public_key())  # type: ignore[arg-type]
    with pytest.raises(JoseError):
        SigningKeyPair(kid, "ES256", private)  # type: ignore[arg-type]


def test_verifying_key_verify_is_true_exactly_for_its_own_signature(alg_h: Harness) -> None:
    """RFC 7515 §5.2 step 8: ``VerifyingKey.verify`` answers ``True`` for the signature its pair
    made of that input, and ``False`` (never an exception) for another input, a cut or an
    extended signature."""
    pair = signer(alg_h)
    data = b"eyJhbGciOiJFUzI1NiJ9.e30"
    signature = pair.sign(data)
    assert pair.public.verify(data, signature) is True
    assert pair.public.verify(data + b"x", signature) is False
    assert pair.public.verify(data, signature[:-1]) is False
    assert pair.public.verify(data, signature + b"\x00") is False


def test_es256_signature_is_r_then_s_in_32_octets_each(es_pair: SigningKeyPair) -> None:
    """RFC 7518 §3.4: the JWS signature is the 64 octets R || S (each 32 octets big-endian),
    not the DER of X9.62; the pair read back as DER verifies with the public key."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    data = b"eyJhbGciOiJFUzI1NiJ9.e30"
    signature = es_pair.sign(data)
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    es_pair.key.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]


def test_ed25519_signature_and_jwk_match_rfc8037_appendix_a() -> None:
    """RFC 8037 A.1-A.4: the example Ed25519 key's public JWK and its RFC 7638 thumbprint, and
    its (deterministic) EdDSA signature of the example JWS signing input."""
    d = jose.b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    pair = SigningKeyPair("k", "EdDSA", ed25519.Ed25519PrivateKey.from_private_bytes(d))
    assert pair.public.jwk() == {
        "crv": "Ed25519",
        "kty": "OKP",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "kid": "k",
        "alg": "EdDSA",
        "use": "sig",
    }
    assert pair.public.thumbprint() == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    signature = pair.sign(b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc")
    assert jose.b64url(signature) == (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )


def test_ec_jwk_matches_rfc7517_appendix_a1() -> None:
    """RFC 7517 A.1 / RFC 7518 §6.2.1: the example P-256 public key's JWK members, exactly."""
    x = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4"
    y = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(jose.b64url_decode(x), "big"), int.from_bytes(jose.b64url_decode(y), "big"), ec.SECP256R1()
    )
    key = VerifyingKey("1", "ES256", numbers.public_key())
    assert key.jwk() == {"crv": "P-256", "kty": "EC", "x": x, "y": y, "kid": "1", "alg": "ES256", "use": "sig"}
    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":")).encode()
    assert key.thumbprint() == jose.b64url(hashlib.sha256(canonical).digest())


def test_ec_jwk_coordinates_keep_their_leading_zero_octets() -> None:
    """RFC 7518 §6.2.1.2-3: ``x`` and ``y`` are the full 32 octets of the coordinate, leading
    zeros included (unlike RSA's ``n`` and ``e``, which are minimal)."""
    scalar = 1
    while ec.derive_private_key(scalar, ec.SECP256R1()).public_key().public_numbers().x >= 1 << 248:
        scalar += 1
    public = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    jwk = VerifyingKey("k", "ES256", public).jwk()
    assert len(jose.b64url_decode(jwk["x"])) == 32 and jose.b64url_decode(jwk["x"])[0] == 0
    assert len(jose.b64url_decode(jwk["y"])) == 32


def test_rfc7638_thumbprint_of_a_verifying_key() -> None:
    """RFC 7638 §3.1: ``VerifyingKey.thumbprint`` is the example's thumbprint for the example RSA key."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
        "6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    numbers = rsa.RSAPublicNumbers(65537, int.from_bytes(jose.b64url_decode(n), "big"))
    key = VerifyingKey("k", "RS256", numbers.public_key())
    assert key.thumbprint() == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert key.jwk() == {"e": "AQAB", "kty": "RSA", "n": n, "kid": "k", "alg": "RS256", "use": "sig"}


@pytest.mark.parametrize(("name", "value"), [("b64", False), ("zip", "DEF"), ("enc", "A256GCM")])
def test_headers_changing_how_the_payload_is_read_are_refused(
    es_pair: SigningKeyPair, name: str, value: object
) -> None:
    """RFC 7797 §3 (``b64``: an unencoded payload), RFC 7516 §4.1.3 (``zip``: a compressed one) and
    §4.1.2 (``enc``: a JWE, not a JWS): a token our own key signed is still refused with any of them,
    since we would read its payload otherwise than its signer meant."""
    _reject(forge(es_pair, header_for(es_pair, **{name: value}), {"a": 1}), keymap(es_pair))


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_sign_refuses_a_payload_json_cannot_carry(es_pair: SigningKeyPair, number: float) -> None:
    """RFC 8259 §6: JSON has no ``NaN`` or ``Infinity``; signing such a claim fails instead of
    writing a token no strict reader (ours included) accepts."""
    with pytest.raises(ValueError):
        jose.sign(es_pair, {"exp": number}, "at+jwt")


def test_rs256_with_a_modulus_not_a_whole_number_of_octets() -> None:
    """RFC 8017 §8.2.2 step 1 and RFC 7518 §3.3: an RS256 signature is as long as the modulus in
    octets, rounded up; a 2049-bit key signs and verifies 257-octet signatures, and one octet
    fewer is refused."""
    # OpenSSL makes moduli of whole octets only: multiply a 1025-bit and a 1024-bit prime (each with
    # its top two bits set, so the product has exactly 2049 bits).
    p = rsa.generate_private_key(public_exponent=65537, key_size=2050).private_numbers().p
    q = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers().p
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(65537, p * q),
    )
    pair = SigningKeyPair("k", "RS256", numbers.private_key())
    assert pair.key.key_size == 2049
    token = jose.sign(pair, {"a": 1}, "at+jwt")
    assert len(jose.b64url_decode(token.rsplit(".", 1)[1])) == 257
    assert jose.verify(token, keymap(pair), "at+jwt")[1] == {"a": 1}
    signature = pair.sign(b"x.y")
    assert pair.public.verify(b"x.y", signature) is True
    assert pair.public.verify(b"x.y", signature[1:]) is False
