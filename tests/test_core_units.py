"""Focused tests of the core's small modules: configuration (GN-01 and what each error says),
parameters (AZ-01, TK-01), credentials (TK-02, RS-01), opaque secrets (GN-02), scopes,
redirect URIs (AZ-03, RG-01), resource indicators (AZ-06, RS-05), drivers, the memory store,
the context and the HTTP values."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import parse_qsl, quote

import attrs
import pytest
from compare_spy import spy_on_compare_digest
from conftest import ISSUER, RESOURCE, SECRET, Harness, basic, make_config, s256
from hypothesis import given, settings
from hypothesis import strategies as st
from oauth_flows import CHALLENGE, VERIFIER, add_client, code_form, get_code, jwt_parts, redeem, refresh, tokens

from kavach_core import effects as fx
from kavach_core import opaque, pkce
from kavach_core.config import (
    Lifetimes,
    Paths,
    ProtectedResource,
    RegistrationPolicy,
    is_loopback_host,
    redact,
)
from kavach_core.context import Context
from kavach_core.credentials import bearer_token, client_credentials, parse_bearer
from kavach_core.drivers import arun, run, trace
from kavach_core.endpoints import authorize, token
from kavach_core.errors import ConfigurationError, OAuthError, safe_description
from kavach_core.http import HttpRequest, Response, add_query, error_response, json_response
from kavach_core.memory_store import MemoryStore
from kavach_core.opaque import b64url, b64url_decode, digest, parse_refresh_token, refresh_token, same
from kavach_core.params import (
    MAX_BODY,
    MAX_FIELDS,
    Params,
    decode_exactly,
    form_params,
    json_object,
    parse_query_string,
    query_params,
    unique_members,
)
from kavach_core.records import Grant
from kavach_core.redirect_uris import find_match, is_loopback, matches, registration_problem
from kavach_core.resource_indicators import canonical_resource, metadata_url, parse_resource, resource_path
from kavach_core.scopes import any_covers, covers, format_scope, is_valid_scope, parse_scope, uncovered, within

# -- configuration (GN-01) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("http://as.example.com", "non-loopback"),
        ("https://as.example.com?x=1", "no query or fragment"),
        ("https://as.example.com?", "no query or fragment"),
        ("https://as.example.com#top", "no query or fragment"),
        ("https://as.example.com/", "trailing slash"),
        ("https://as.example.com/tenant/", "trailing slash"),
        ("ftp://as.example.com", "absolute https URL"),
        ("as.example.com", "absolute https URL"),
        ("https://", "absolute https URL"),
        ("", "absolute https URL"),
        ("https://[::1", "not a valid URL"),
        ("https://as.example.com:99999", "not a valid URL"),
        ("https://user:pw@as.example.com", "user information"),
        ("https://as.example.com/a b", "spaces"),
        ("https://as.example.com/t%7e1", "without percent-escapes"),  # served decoded: never found
        ("https://as.example.com/a%2Fb", "without percent-escapes"),
        ("https://as.example.com/%zz", "without percent-escapes"),
        ("https://as.example.com/\u00e9", "without percent-escapes"),
        ("https://as.example.com/a/../b", "dot segments"),
        ("https://as.example.com/a/.", "dot segments"),
        ("https://as.example.com//a", "empty segments"),
        ('https://as.example.com/a"b', "letters, digits"),
        ("HTTPS://as.example.com", "lower case"),
        ("https://AS.example.com", "lower case"),
    ],
)
def test_gn_01_bad_issuers_fail_with_a_message_that_says_what_to_change(issuer: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_config(issuer=issuer)


@pytest.mark.parametrize("path", ["/tenant", "/a/b.c/d-e_f~g", "/t1:x@y", "/x!$&'()*+,;=", "/.well", "/a..b"])
def test_gn_01_issuer_paths_of_plain_characters_are_allowed(path: str) -> None:
    assert make_config(issuer="https://as.example.com" + path).issuer_path == path


def test_gn_01_issuer_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="absolute https URL"):
        make_config(issuer=None)


@pytest.mark.parametrize(
    "issuer", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:9000", "http://127.1.2.3"]
)
def test_gn_01_http_issuer_on_loopback_is_allowed(issuer: str) -> None:
    assert make_config(issuer=issuer).issuer == issuer


def test_gn_01_http_issuer_elsewhere_only_when_forced() -> None:
    config = make_config(
        issuer="http://as.example.com",
        allow_insecure_http=True,
        resources=[ProtectedResource("http://mcp.example.com/mcp")],
    )
    assert config.issuer == "http://as.example.com"
    with pytest.raises(ConfigurationError, match=r"resource http://mcp\.example\.com/mcp uses http"):
        make_config(resources=[ProtectedResource("http://mcp.example.com/mcp")])
    assert make_config(resources=[ProtectedResource("http://127.0.0.1:3000/mcp")]).resources[0].uri == (
        "http://127.0.0.1:3000/mcp"
    )


def test_is_loopback_host() -> None:
    assert is_loopback_host("LOCALHOST") and is_loopback_host("[::1]") and is_loopback_host("127.9.9.9")
    assert not is_loopback_host(None) and not is_loopback_host("128.0.0.1") and not is_loopback_host("example.com")
    assert is_loopback_host("127.255.0.1") and is_loopback_host("0:0:0:0:0:0:0:1")
    for name in ("127.attacker.example", "127.0.0.1.nip.io", "127.0.0.1.", "127.1", "2130706433", "[127.0.0.1", "::2"):
        assert not is_loopback_host(name), name


@pytest.mark.parametrize("issuer", ["http://127.attacker.example", "http://127.0.0.1.nip.io:8000"])
def test_gn_01_http_issuer_on_a_name_beginning_like_loopback_is_refused(issuer: str) -> None:
    """GN-01: plain http only on a loopback address; these are public DNS names."""
    with pytest.raises(ConfigurationError, match="non-loopback"):
        make_config(issuer=issuer)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uri": "/mcp"}, "give an absolute https URI"),
        ({"uri": "ftp://x.example/mcp"}, "give an absolute https URI"),
        ({"uri": "https://x.example/mcp#f"}, "fragment"),
        ({"uri": RESOURCE, "scopes": {}}, "at least one scope"),
        ({"uri": RESOURCE, "scopes": {"bad scope": ""}}, "not a valid scope token"),
        ({"uri": RESOURCE, "scopes": [("a", "x"), ("a", "y")]}, "listed twice"),
        ({"uri": RESOURCE, "default_scopes": ("nope",)}, "default scope 'nope' is not in its catalogue"),
    ],
)
def test_protected_resource_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ProtectedResource(**kwargs)


def test_protected_resource_is_canonical_and_describes_scopes() -> None:
    resource = ProtectedResource(
        "HTTPS://MCP.Example.com:443/mcp/", scopes=["tools:list", ("tools:call", "Run")], default_scopes=["tools:list"]
    )
    assert resource.uri == RESOURCE
    assert resource.path == "/mcp"
    assert resource.scope_names == ("tools:list", "tools:call")
    assert resource.describe("tools:call:search") == "Run the tool \u201csearch\u201d"
    assert ProtectedResource(RESOURCE, scopes=[("files", "Files")]).describe("files:read") == "Files (limited to read)"
    assert resource.describe("tools:list") == ""
    assert resource.describe("prompts:get") == ""
    root = ProtectedResource("https://mcp.example.com/")
    assert root.uri == "https://mcp.example.com" and root.path == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": 0}, "code must be between 1 and 600"),
        ({"code": 601}, "code must be between 1 and 600"),
        ({"code": -1}, "whole number of seconds"),
        ({"code": True}, "whole number of seconds"),
        ({"code": 1.5}, "whole number of seconds"),
        ({"access_token": 0}, "access_token must be between"),
        ({"access_token": 86401}, "access_token must be between"),
        ({"refresh_idle": 0}, "refresh_absolute must be >= refresh_idle >= 1"),
        ({"refresh_idle": 100, "refresh_absolute": 99}, "refresh_absolute must be >= refresh_idle"),
        ({"consent": 0}, "consent must be at least 1 second"),
        ({"access_token": 600, "signing_key": 599}, "signing_key must be at least the access token lifetime"),
        ({"access_token": 600, "signing_key": 3599}, "signing_key must be at least 3600 seconds"),
        ({"metadata_document_min": 100, "metadata_document_max": 99}, "metadata_document_max"),
    ],
)
def test_bad_lifetimes(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Lifetimes(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sometimes"}, "open, token, closed"),
        ({"mode": "token"}, "initial_access_token_hashes"),
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_window": 0}, "rate_window"),
    ],
)
def test_bad_registration_policy(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RegistrationPolicy(**kwargs)


def test_registration_policy_lowercases_allowed_hosts() -> None:
    assert RegistrationPolicy(allowed_redirect_hosts=["App.Example.COM"]).allowed_redirect_hosts == ("app.example.com",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "token"}, "must start with /"),
        ({"token": "/token?x"}, "no query"),
        ({"token": "/authorize"}, "used twice"),
    ],
)
def test_bad_paths(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Paths(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resources": []}, "at least one protected resource"),
        ({"resources": [RESOURCE, RESOURCE + "/"]}, "listed twice"),
        ({"secret": b"short"}, "at least 32 random bytes"),
        ({"secret": "k" * 32}, "at least 32 random bytes"),
        ({"signing_alg": "HS256"}, "signing_alg must be one of"),
        ({"signing_alg": "none"}, "signing_alg must be one of"),
        ({"refresh_grace": -1}, "refresh_grace"),
        ({"refresh_grace": 301}, "refresh_grace"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_config(**kwargs)


def test_config_derived_values() -> None:
    config = make_config(issuer="https://as.example.com/tenant", resources=[RESOURCE])
    assert config.resources[0].uri == RESOURCE
    assert config.endpoint("token") == "https://as.example.com/tenant/token"
    assert config.issuer_path == "/tenant"
    assert config.default_resource is config.resources[0]
    assert config.resource(RESOURCE) is config.resources[0]
    assert config.resource("https://nope.example") is None
    two = make_config()
    assert two.default_resource is None
    assert two.scopes_supported == (
        "tools:list",
        "tools:call",
        "resources:list",
        "resources:read",
        "prompts:list",
        "prompts:get",
    )
    assert repr(SECRET) not in repr(two)


# -- the context ------------------------------------------------------------------------------


def test_context_refuses_a_short_or_wrong_entropy_answer() -> None:
    ctx = Context(make_config(), 0, lambda n: b"x" * (n - 1))
    with pytest.raises(ValueError, match="wrong number of bytes"):
        ctx.random(32)
    ctx = Context(make_config(), 0, lambda n: "x" * n)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        ctx.random(4)
    assert Context(make_config(), 0, lambda n: b"\0" * n).random(3) == b"\0\0\0"


# -- parameters (AZ-01, TK-01) -------------------------------------------------------------------


def test_params_rules() -> None:
    params = Params((("a", "1"), ("b", ""), ("b", "2"), ("c", "3"), ("c", "4"), ("d", "")))
    assert params.get("a") == "1"
    assert params.get("b") == "2"  # an empty value is absent, so this is no duplicate
    assert params.get("d") is None and params.get("zz") is None
    with pytest.raises(OAuthError, match="given more than once"):
        params.get("c")
    assert params.get_all("c") == ("3", "4")
    assert params.duplicated("c") and not params.duplicated("b")
    assert params.names() == frozenset({"a", "b", "c", "d"})


def test_query_params_limits() -> None:
    with pytest.raises(OAuthError, match="too many"):
        query_params(HttpRequest("GET", "/", [("a", "1")] * (MAX_FIELDS + 1)))
    for name in ("a\x00", "a\udcff"):  # a name that is not text names no parameter: the whole query is refused
        with pytest.raises(OAuthError, match="NUL" if "\x00" in name else "UTF-8"):
            query_params(HttpRequest("GET", "/", [(name, "x")]))
    assert query_params(HttpRequest("GET", "/", {"é": "ü"})).get("é") == "ü"


@pytest.mark.parametrize("value", ["x\x00", "\udcff", "a\udcc3b"])
def test_a_value_that_is_not_text_spoils_its_own_parameter_only(value: str) -> None:
    """A query's or an authorization form's value holding a NUL or an escape that is not UTF-8
    is ``invalid_request`` when that parameter is read, once or as a repeatable one; the
    others read as usual. The strict form (every other endpoint's) refuses the whole body."""
    raw = "b=1&a=" + quote(value, errors="surrogateescape") + "&c=2&c=3"
    form = HttpRequest("POST", "/", (), [("Content-Type", "application/x-www-form-urlencoded")], raw.encode())
    pairs = [("b", "1"), ("a", value), ("c", "2"), ("c", "3")]
    for params in (query_params(HttpRequest("GET", "/", pairs)), form_params(form, by_parameter=True)):
        assert params.get("b") == "1" and params.get_all("c") == ("2", "3") and params.get("z") is None
        assert params.unreadable == frozenset({"a"})
        for read in (params.get, params.get_all):
            with pytest.raises(OAuthError, match="parameter a is not UTF-8 text without NUL") as raised:
                read("a")
            assert raised.value.error == "invalid_request"
    with pytest.raises(OAuthError, match=r"NUL|malformed"):
        form_params(form)


@pytest.mark.parametrize(
    ("raw", "message"),
    [("a=%ff", "malformed"), ("a=%00", "NUL"), ("a\x00=1", "NUL"), ("&".join(["a=1"] * (MAX_FIELDS + 1)), "too many")],
)
def test_parse_query_string_errors(raw: str, message: str) -> None:
    with pytest.raises(OAuthError, match=message):
        parse_query_string(raw)


def test_parse_query_string_takes_exactly_max_fields() -> None:
    raw = "&".join(f"p{i}=v" for i in range(MAX_FIELDS))
    assert len(parse_query_string(raw).pairs) == MAX_FIELDS
    with pytest.raises(OAuthError, match="too many"):  # separators are counted, empty fields too
        parse_query_string(raw + "&")


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="ab=&+%2C3FAe9\x00\u00e9 ", max_size=24))
def test_parse_query_string_agrees_with_the_standard_library(raw: str) -> None:
    """Invariant: the form parser yields exactly ``urllib.parse.parse_qsl``'s pairs (blank values
    kept, strict UTF-8), and refuses with ``invalid_request`` exactly what that refuses (too many
    fields, invalid UTF-8 in an escape) or what holds a NUL once decoded."""
    try:
        expected: object = parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except ValueError:  # UnicodeDecodeError included
        expected = "refused"
    if isinstance(expected, list) and any("\x00" in name + value for name, value in expected):
        expected = "refused"
    try:
        got: object = list(parse_query_string(raw).pairs)
    except OAuthError as exc:
        assert exc.error == "invalid_request"
        got = "refused"
    assert got == expected


def test_parse_query_string_decodes_plus_and_percent() -> None:
    assert parse_query_string("a=x+y%2Bz&b=%C3%A9").pairs == (("a", "x y+z"), ("b", "é"))


def _form(body: bytes, ctype: str = "application/x-www-form-urlencoded") -> HttpRequest:
    return HttpRequest("POST", "/", (), [("Content-Type", ctype)], body)


def test_form_params() -> None:
    assert form_params(_form(b"a=1")).get("a") == "1"
    assert form_params(_form(b"a=1", "Application/X-WWW-Form-Urlencoded; charset=utf-8")).get("a") == "1"
    with pytest.raises(OAuthError, match="must be application/x-www-form-urlencoded"):
        form_params(_form(b"a=1", "multipart/form-data"))
    with pytest.raises(OAuthError, match="too large"):
        form_params(_form(b"a=" + b"1" * 70000))
    with pytest.raises(OAuthError, match="ASCII"):
        form_params(_form("a=é".encode()))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"b": 0, "a": 1, "a": 2}', "member a given more than once"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'"x"', "must be a JSON object"),
        (b"[" * 100000 + b"]" * 100000, "too large"),
        (b"[" * 30000 + b"]" * 30000, "not valid JSON"),
    ],
)
def test_json_object_is_strict(body: bytes, message: str) -> None:
    req = HttpRequest("POST", "/", (), [("Content-Type", "application/json")], body)
    with pytest.raises(OAuthError, match=message) as info:
        json_object(req, error="invalid_client_metadata")
    assert info.value.error == "invalid_client_metadata"


@pytest.mark.parametrize("text", ['{{"a": 1}', "[[1]", '{"a": 1}}', "[1] x"])
def test_decode_exactly_refuses_what_decode_refuses(text: str) -> None:
    """``decode_exactly`` answers as ``decode`` does (its docstring): its scan starts at the first
    character, so no character is skipped, and trailing data is refused."""
    with pytest.raises(json.JSONDecodeError):
        json.JSONDecoder().decode(text)
    with pytest.raises(json.JSONDecodeError):
        decode_exactly(json.JSONDecoder(), text)


def test_json_object_accepts_exactly_the_body_limit() -> None:
    """A JSON body of ``MAX_BODY`` bytes (64 KiB) is read; one byte more is too large."""
    ctype = [("Content-Type", "application/json")]
    body = b'{"client_name": "' + b"a" * (MAX_BODY - len(b'{"client_name": ""}')) + b'"}'
    assert len(body) == MAX_BODY == 64 * 1024
    assert json_object(HttpRequest("POST", "/register", (), ctype, body))["client_name"].startswith("a")
    with pytest.raises(OAuthError, match="too large"):
        json_object(HttpRequest("POST", "/register", (), ctype, body + b" "))


def test_json_object_needs_json_content_type() -> None:
    req = HttpRequest("POST", "/", (), [("Content-Type", "text/plain")], b"{}")
    with pytest.raises(OAuthError, match="application/json"):
        json_object(req)
    ok = HttpRequest("POST", "/", (), [("Content-Type", "application/json; charset=utf-8")], b'{"a": [1]}')
    assert json_object(ok) == {"a": [1]}


# -- credentials (TK-02, RS-01) ------------------------------------------------------------------


def _creds(headers: Any = (), **form: str) -> Any:
    req = HttpRequest("POST", "/token", (), list(headers), b"")
    return client_credentials(req, Params(tuple(form.items())))


def test_client_credentials_methods() -> None:
    raw = base64.b64encode(b"my%20id:p%3Aw+x").decode()
    creds = _creds([("Authorization", f"Basic {raw}")])
    assert (creds.client_id, creds.secret, creds.method) == ("my id", "p:w x", "client_secret_basic")
    assert _creds([("Authorization", f"bAsIc   {raw}  ")]).client_id == "my id"
    assert _creds(client_id="c", client_secret="s").method == "client_secret_post"
    assert _creds(client_id="c").method == "none"
    assert _creds() is None
    assert _creds([("Authorization", "Bearer abc")]) is None
    with pytest.raises(OAuthError, match="without client_id"):
        _creds(client_secret="s")
    # A secret never shows in a repr (logs, tracebacks), here or in the parsed token request.
    assert "s3cret" not in repr(_creds(client_id="c", client_secret="s3cret"))
    from kavach_core.messages.token import parse as parse_token_request

    form = b"grant_type=refresh_token&client_id=c&client_secret=s3cret&refresh_token=r"
    assert "s3cret" not in repr(parse_token_request(_form(form)))


@pytest.mark.parametrize(
    "header",
    [
        "Basicx " + base64.b64encode(b"c:s").decode(),  # another scheme that only starts like Basic
        "Basic " + base64.b64encode(b"c:s").decode() + "!",  # RFC 7617 §2: token68 is base64, strictly
        "Basic " + base64.b64encode(b"c-without-colon").decode(),  # user-pass needs the ":"
        "Basic " + base64.b64encode(b"c%00:s").decode(),  # a NUL, form-urlencoded, in the id (GN-03)
        "Basic " + base64.b64encode(b"c:s%00").decode(),  # or in the secret
        "Basic " + base64.b64encode(b":s").decode(),  # no client identifier at all
    ],
)
def test_tk_02_malformed_basic_credentials_are_invalid_client(header: str) -> None:
    """RFC 6749 §2.3.1 / RFC 7617 §2: what is not ``Basic base64(id ":" secret)`` authenticates nothing."""
    with pytest.raises(OAuthError) as raised:
        _creds([("Authorization", header)])
    assert (raised.value.error, raised.value.status) == ("invalid_client", 401)


def test_bearer_token_header_only_and_strict() -> None:
    assert bearer_token(HttpRequest("GET", "/", {"access_token": "abc"})) is None
    assert bearer_token(HttpRequest("GET", "/", (), [("Authorization", "Bearer abc.def-_~+/==")])) == "abc.def-_~+/=="
    assert bearer_token(HttpRequest("GET", "/", (), [("Authorization", "Basic abc")])) is None
    # RFC 6750 §3.1: a repeated credential is invalid_request (400), a malformed one invalid_token (401)
    twice = [("Authorization", "Bearer a"), ("authorization", "Bearer b")]
    for repeated in (twice, [("Authorization", "Bearer a, Bearer b")]):
        with pytest.raises(OAuthError, match="one Authorization header") as raised:
            bearer_token(HttpRequest("GET", "/", (), repeated))
        assert (raised.value.error, raised.value.status) == ("invalid_request", 400)
    for bad in ("Bearer", "Bearer a b", "Bearer é", "Bearer =abc"):
        with pytest.raises(OAuthError, match="malformed") as raised:
            parse_bearer(bad)
        assert (raised.value.error, raised.value.status) == ("invalid_token", 401)


# -- opaque secrets (GN-02) --------------------------------------------------------------------


def test_b64url_is_strict() -> None:
    assert b64url_decode(b64url(b"\xff\xfe\x00")) == b"\xff\xfe\x00"
    for bad in ("a=", "é", "a+b/", "A", "AB=", "AF"):  # "AF" is a non-canonical encoding of b"\x00"
        with pytest.raises(ValueError):
            b64url_decode(bad)


def test_refresh_token_round_trip_and_forgery() -> None:
    grant_id = b64url(b"g" * 16)
    tok = refresh_token(SECRET, grant_id, 7)
    assert parse_refresh_token(SECRET, tok) == (grant_id, 7)
    assert parse_refresh_token(b"other" * 8, tok) is None
    assert parse_refresh_token(SECRET, "kvr_" + b64url(b"short")) is None
    assert parse_refresh_token(SECRET, "kvr_" + "A" * 300) is None
    assert parse_refresh_token(SECRET, tok.replace("kvr_", "")) is None
    assert refresh_token(SECRET, grant_id, 8) != tok
    for other in ("kvx_", "kvc_", "KVR_"):  # a genuine MAC behind another prefix: the prefix names the type
        assert parse_refresh_token(SECRET, other + tok[len("kvr_") :]) is None


def test_digest_and_same() -> None:
    assert digest("a") == digest("a") != digest("b")
    assert len(digest("x")) == 64
    assert digest("\udcff")  # surrogates never crash the digest
    assert same("abc", "abc") and not same("abc", "abd") and not same("abc", "ab")


# -- constant-time comparisons of secrets (GN-02, TK-02, TK-03, TK-07) -------------------------
#
# Each check below must compare through ``hmac.compare_digest``: with ``==`` the time a refusal
# takes tells an attacker how long a prefix of a guess was right. The spy (compare_spy.py) sees
# each comparison and delegates to the real function, so the verdicts stay the real ones.


def test_tk_03_the_code_verifier_is_compared_with_the_challenge_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = spy_on_compare_digest(monkeypatch, pkce)
    h = Harness()
    add_client(h)
    wrong = "w" * 43  # a well-formed verifier, of another challenge
    refused = redeem(h, get_code(h), code_verifier=wrong)
    assert refused.status == 400
    assert refused.json() == {
        "error": "invalid_grant",
        "error_description": "code_verifier does not match the code_challenge",
    }
    assert len(spy.calls) == 1 and spy.saw(s256(wrong), CHALLENGE, False)
    assert redeem(h, get_code(h)).status == 200
    assert spy.saw(s256(VERIFIER), CHALLENGE, True) and len(spy.calls) == 2


def test_tk_02_a_client_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = spy_on_compare_digest(monkeypatch, opaque)
    h = Harness()
    add_client(h, "conf", secret="the right secret")
    refused = redeem(h, get_code(h, client_id="conf"), client_id=None, headers=[basic("conf", "a wrong secret")])
    assert refused.status == 401 and refused.json()["error"] == "invalid_client"
    assert len(spy.calls) == 1 and spy.saw(digest("a wrong secret"), digest("the right secret"), False)
    accepted = redeem(h, get_code(h, client_id="conf"), client_id=None, headers=[basic("conf", "the right secret")])
    assert accepted.status == 200
    assert spy.saw(digest("the right secret"), digest("the right secret"), True)


def test_tk_07_a_refresh_tokens_mac_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    add_client(h)
    presented = tokens(h)["refresh_token"]
    raw = b64url_decode(presented.removeprefix("kvr_"))
    genuine_mac = raw[20:]  # after the grant id (16 bytes) and the generation (4)
    forged_mac = bytes([genuine_mac[0] ^ 1]) + genuine_mac[1:]
    spy = spy_on_compare_digest(monkeypatch, opaque)
    refused = refresh(h, "kvr_" + b64url(raw[:20] + forged_mac))
    assert refused.status == 400 and refused.json()["error"] == "invalid_grant"
    assert len(spy.calls) == 1 and spy.saw(forged_mac, genuine_mac, False)
    assert refresh(h, presented).status == 200
    assert spy.saw(genuine_mac, genuine_mac, True)


def test_safe_description_keeps_rfc6749_alphabet() -> None:
    assert safe_description('a "b"\r\nc\\é') == "a 'b'??c??"
    # readable stand-ins for what descriptions cite and quote, still inside the alphabet
    assert safe_description('RFC 7636 §4.1: ["code"]') == "RFC 7636 section 4.1: ['code']"


# -- scopes ----------------------------------------------------------------------------------


def test_scope_helpers() -> None:
    assert parse_scope(None) is None and parse_scope("  ") is None
    assert parse_scope("b a b") == ("b", "a")
    with pytest.raises(OAuthError) as info:
        parse_scope("ok bad\x7f")
    assert info.value.error == "invalid_scope"
    assert not is_valid_scope("") and not is_valid_scope("a:") and not is_valid_scope("a b")
    assert is_valid_scope("tools:call:my-tool.v2")
    assert covers("tools", "tools:call") and not covers("tools:call", "tools")
    assert not covers("tool", "tools:call")
    assert any_covers(["x", "tools:call"], "tools:call:a") and not any_covers([], "a")
    assert within(["tools:call:a", "x", "tools:list"], ["tools"]) == ("tools:call:a", "tools:list")
    assert uncovered(["tools:call:a", "x"], ["tools"]) == ("x",)
    assert format_scope(("a", "b")) == "a b" and format_scope(()) == ""


# -- redirect URIs (AZ-03, RG-01) ----------------------------------------------------------------


def test_redirect_matching() -> None:
    assert matches("https://a.example/cb", "https://a.example/cb")
    assert not matches("https://a.example/cb/", "https://a.example/cb")
    assert matches("http://127.0.0.1:1/cb", "http://127.0.0.1:65535/cb")
    assert not matches("http://127.0.0.1:65536/cb", "http://127.0.0.1/cb")
    assert matches("http://[::1]:8080", "http://[::1]")
    assert is_loopback("http://127.0.0.1") and not is_loopback("http://localhost:80/")
    assert find_match("http://127.0.0.1:9/x", ("https://a.example", "http://127.0.0.1/x")) == "http://127.0.0.1/x"
    assert find_match("https://b.example", ("https://a.example",)) is None


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "non-empty"),
        ("https://a.example/c b", "non-empty"),
        ("https://a.example/c\x7fb", "non-empty"),  # DEL is a control character too
        ("https://a.example/" + "x" * 2000, "non-empty"),
        ("https://[::1/cb", "not a valid URI"),
        ("https://a.example:99999/cb", "not a valid URI"),
        ("/relative", "not an absolute URI"),
        ("https://a.example/cb#frag", "fragment"),
        ("javascript:alert(1)", "javascript scheme"),
        ("data:text/html,x", "data scheme"),
        ("file:///etc/passwd", "file scheme"),
        ("https://user@a.example/cb", "user information"),
        ("https:///cb", "no host"),
        ("http://a.example/cb", "only allowed on loopback"),
        ("myapp:/cb", "myapp scheme is not allowed"),
        # a browser decodes a percent-encoded host: the consent page would name another host
        ("https://ex%61mple.com/cb", "percent-encoded"),
        ("http://127.0.0.%31/cb", "percent-encoded"),
        ("https://*.example.com/cb", "host name cannot have"),  # matching is exact: no patterns
        ("https://app..example.com/cb", "empty label"),  # no resolver looks such a name up
        ("https://.example.com/cb", "empty label"),
        ("http://a.example/cb?x", "127.0.0.1, [::1] or localhost"),
        ('https://app.example.com/"><x>', "characters a URI cannot have"),
        ("https://app.example.com/caf\u00e9", "characters a URI cannot have"),
        ("https://app.example.com/cb%zz", "characters a URI cannot have"),
        ("https://app.example.com/{cb}", "characters a URI cannot have"),
    ],
)
def test_rg_01_redirect_registration_problems(uri: str, problem: str) -> None:
    assert problem in (registration_problem(uri) or "")


@pytest.mark.parametrize(
    "uri",
    [
        "https://a.example/cb",
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "http://localhost/cb",
        "com.example.app:/cb",
        "https://a.example/c%62?x=%20",  # percent-encoding outside the host is the client's own spelling
        "https://a.example/cb!$&'()*+,;=:@~",  # RFC 3986 §2.2 sub-delims are URI characters, not controls
    ],
)
def test_rg_01_acceptable_redirect_uris(uri: str) -> None:
    assert registration_problem(uri) is None


def test_rg_01_redirect_uris_of_up_to_2000_characters_are_registrable() -> None:
    """The length limit is 2000 characters: the longest is accepted, one more is refused."""
    longest = "https://a.example/" + "x" * (2000 - len("https://a.example/"))
    assert len(longest) == 2000 and registration_problem(longest) is None
    assert "non-empty" in (registration_problem(longest + "x") or "")


# -- resource indicators (AZ-06, RS-05) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("HTTPS://MCP.EXAMPLE.COM/mcp", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com:443/mcp/", "https://mcp.example.com/mcp"),
        ("http://127.0.0.1:80/", "http://127.0.0.1"),
        ("https://mcp.example.com:8443/MCP", "https://mcp.example.com:8443/MCP"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://mcp.example.com/a?b=1", "https://mcp.example.com/a?b=1"),
        ("https://mcp.example.com/~user/mcp", "https://mcp.example.com/~user/mcp"),  # "~" is unreserved
    ],
)
def test_rs_05_canonical_resource(uri: str, canonical: str) -> None:
    assert canonical_resource(uri) == canonical


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "https://a.example/ x",
        "urn:x:y",
        "https://",
        "https://a.example/#f",
        "https://u@a.example/",
        "https://a.example:port/",
        "https://a.example\x01/",
        "https://a.example/m\x01cp",  # a control character is refused in the path too, not only the host
        "https://a.example/m\x7fcp",  # and so is DEL
        # other spellings of a path: a guard comparing the decoded request path would miss them
        "https://a.example/x/../mcp",
        "https://a.example/./mcp",
        "https://a.example/%7Emcp",
        "https://a.example/m%63p",
        "https://a.example/x/%2e%2e/mcp",
        # another spelling of a host: a second audience for the same server
        "https://%61.example/mcp",
        "https://a!b.example/mcp",
        # a host no resolver looks up (an empty label)
        "https://mcp..example.com/mcp",
        "https://.example.com/mcp",
    ],
)
def test_rs_05_not_a_resource(uri: str) -> None:
    with pytest.raises(ValueError):
        canonical_resource(uri)


def test_az_06_parse_resource_errors_are_invalid_target() -> None:
    for bad in ("https://a.example/#", "mcp", "ftp://a.example/x"):
        with pytest.raises(OAuthError) as info:
            parse_resource(bad)
        assert info.value.error == "invalid_target"
    # RFC 8707 §2: the resource "MUST NOT include a fragment component"; the answer says so
    with pytest.raises(OAuthError, match="must not contain a fragment"):
        parse_resource("https://a.example/x#")
    assert parse_resource("https://A.example/x/") == "https://a.example/x"


def test_resource_metadata_url() -> None:
    assert metadata_url(RESOURCE) == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://mcp.example.com") == "https://mcp.example.com/.well-known/oauth-protected-resource"
    assert resource_path("https://mcp.example.com") == ""


# -- HTTP values ------------------------------------------------------------------------------


def test_http_values() -> None:
    req = HttpRequest("GET", "/", {"a": "1"}, [("X-A", "1"), ("x-a", "2")])
    assert req.header("X-a") == "1,2" and req.header("nope") is None
    assert req.header_values("X-A") == ["1", "2"]
    assert req.content_type == ""
    resp = json_response(201, {"a": 1}, headers=[("X-B", "2")])
    assert resp.header("content-type") == "application/json" and resp.header("x-b") == "2"
    assert resp.header("cache-control") is None and resp.header("nope") is None
    assert resp.json() == {"a": 1}
    assert resp.with_headers([("X-C", "3")]).header("x-c") == "3"
    bare = error_response(OAuthError("server_error", status=503))
    assert bare.status == 503 and bare.json() == {"error": "server_error"}
    assert bare.header("cache-control") == "no-store"
    assert add_query("https://a.example/cb", []) == "https://a.example/cb"
    assert add_query("https://a.example/cb?x=1", [("a b", "c&d")]) == "https://a.example/cb?x=1&a%20b=c%26d"


def test_az_08_error_redirect_without_description() -> None:
    h = Harness()
    resp = authorize.error_redirect(h.ctx(), "https://a.example/cb", OAuthError("access_denied"), None)
    assert resp.header("location") == "https://a.example/cb?error=access_denied&iss=https%3A%2F%2Fas.example.com"


# -- drivers ---------------------------------------------------------------------------------


def _flow() -> Any:
    first = yield fx.GetClient("a")
    second = yield fx.GetClient("b")
    return (first, second)


class _SyncOnly:
    def __init__(self) -> None:
        self.seen: list[fx.Effect] = []

    def perform(self, effect: fx.Effect) -> Any:
        self.seen.append(effect)
        return len(self.seen)


class _AsyncStore(_SyncOnly):
    async def aperform(self, effect: fx.Effect) -> Any:
        await asyncio.sleep(0)
        return ("async", self.perform(effect))


def test_drivers_run_and_trace() -> None:
    store = _SyncOnly()
    assert run(_flow(), store) == (1, 2)
    out, seen = trace(_flow(), store)
    assert out == (3, 4) and seen == [fx.GetClient("a"), fx.GetClient("b")]

    def no_effects() -> Any:
        return "done"
        yield  # pragma: no cover

    assert run(no_effects(), store) == "done"


def test_drivers_arun_uses_aperform_when_present_else_perform() -> None:
    assert asyncio.run(arun(_flow(), _AsyncStore())) == (("async", 1), ("async", 2))
    assert asyncio.run(arun(_flow(), _SyncOnly())) == (1, 2)


def test_drivers_arun_runs_a_full_flow_on_the_memory_store() -> None:
    h = Harness()
    add_client(h)
    code = get_code(h)
    resp = asyncio.run(arun(token.handle(h.ctx(), h.request("POST", "/token", form=code_form(code))), h.store))
    assert isinstance(resp, Response) and resp.status == 200


# -- the memory store ------------------------------------------------------------------------------


def test_memory_store_refuses_unknown_effects() -> None:
    @attrs.frozen
    class Strange(fx.Effect):
        pass

    with pytest.raises(TypeError, match="cannot perform Strange"):
        MemoryStore().perform(Strange())


def test_memory_store_delete_client_revokes_its_grants_and_purge_drops_expired() -> None:
    h = Harness()
    add_client(h)
    add_client(h, "c2")
    body = tokens(h)
    gid = jwt_parts(body["access_token"])[1]["gid"]
    assert h.store.perform(fx.ListGrants(subject="alice")) == (h.store.grants[gid],)
    assert h.store.perform(fx.ListGrants(client_id="c2")) == ()
    assert len(h.store.perform(fx.ListClients())) == 2
    assert h.store.perform(fx.DeleteClient("c1", h.now)) is True
    assert h.store.perform(fx.DeleteClient("c1", h.now)) is False
    assert h.store.grants[gid].revoked
    assert refresh(h, body["refresh_token"]).status == 401  # the client is gone
    h.store.perform(fx.RevokeAccessToken("jti", h.now + 5))
    h.store.perform(fx.Hit("b", 1, 10, h.now))
    get_code(h, client_id="c2")
    h.store.purge(h.now + 90 * 86400)
    assert h.store.codes == {} and h.store.grants == {} and h.store.revoked_jtis == {}
    assert h.store.hits == {} and h.store.pending == {}


def test_memory_store_rotation_outcomes() -> None:
    store = MemoryStore()
    grant = Grant("g", "s", "c", ("r",), ("x",), 0, 1000, 0, "h0", 100, 0)
    store.grants["g"] = grant

    def rotate(generation: int, presented: str, now: int, grace: int = 10) -> str:
        return str(
            store.perform(
                fx.RotateRefresh("g", generation, presented, f"h{generation + 1}", now, grace, now + 100)
            ).outcome
        )

    assert rotate(0, "wrong", 1) == "reused"  # a current generation with the wrong hash is not the token
    store.grants["g"] = grant
    assert rotate(0, "h0", 100) == "unknown"  # idle-expired
    assert rotate(0, "h0", 50) == "rotated"
    assert store.grants["g"].refresh_expires_at == 150
    assert rotate(0, "h0", 60) == "retried"
    assert rotate(0, "h0", 61, grace=0) == "reused"
    assert rotate(1, "h1", 62) == "unknown"  # revoked
    assert store.perform(fx.RotateRefresh("nope", 0, "h", "h1", 1, 10, 2)).outcome == "unknown"
    store.grants["g"] = attrs.evolve(grant, expires_at=120, refresh_expires_at=120)
    assert rotate(0, "h0", 110) == "rotated"
    assert store.grants["g"].refresh_expires_at == 120  # capped at the absolute expiry
    assert rotate(1, "h1", 120) == "unknown"


def test_memory_store_pending_and_codes() -> None:
    h = Harness()
    add_client(h)
    out = authorize.handle(h.ctx(), h.request("GET", "/authorize", query={}))
    assert run(out, h.store).status == 400
    assert h.store.perform(fx.GetPending("nope", 0)) is None
    assert h.store.perform(fx.TakePending("nope", 0)) is None
    assert h.store.perform(fx.ConsumeCode("nope", Grant("g", "s", "c", (), (), 0, 1, 0, "h", 1, 0))) is False
    assert h.store.perform(fx.RevokeGrant("nope", 0)) is False
    assert h.store.perform(fx.IsTokenRevoked("j", "nope")) is True  # a grant that is gone revokes its tokens


def test_memory_store_signing_key_swap_is_compare_and_set() -> None:
    from kavach_core import keys

    h = Harness()
    first = h.run(keys.current(h.ctx()))
    assert len(first.records) == 1
    stale = fx.SwapSigningKeys((), (keys.generate(h.ctx()),))
    assert h.store.perform(stale) == first.records  # lost the race: the stored set wins


# -- token endpoint races the model cannot reach ------------------------------------------------


def test_tk_07_grant_revoked_between_read_and_rotation_is_invalid_grant() -> None:
    h = Harness()
    add_client(h)
    body = tokens(h)
    gid = jwt_parts(body["access_token"])[1]["gid"]
    form = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "c1"}
    flow = token.handle(h.ctx(), h.request("POST", "/token", form=form))
    effect = next(flow)
    while not isinstance(effect, fx.RotateRefresh):
        effect = flow.send(h.store.perform(effect))
    h.store.perform(fx.RevokeGrant(gid, h.now))  # a concurrent revocation lands first
    with pytest.raises(StopIteration) as stop:
        flow.send(h.store.perform(effect))
    resp = stop.value.value
    assert resp.status == 400 and resp.json()["error"] == "invalid_grant"


def test_tk_03_redeem_with_issuer_in_env() -> None:
    h = Harness()
    add_client(h)
    resp = redeem(h, get_code(h))
    assert jwt_parts(resp.json()["access_token"])[1]["iss"] == ISSUER


def test_drivers_nonblocking_is_an_explicit_declaration() -> None:
    from kavach_core.drivers import nonblocking

    class Truthy:
        nonblocking = 1

    assert nonblocking(MemoryStore()) is True
    assert nonblocking(_SyncOnly()) is False
    assert nonblocking(Truthy()) is False  # only ``True`` itself counts


def test_rs_05_canonical_resource_memo_is_bounded_and_never_keeps_failures() -> None:
    from kavach_core import resource_indicators

    for i in range(resource_indicators._memo.size + 5):
        assert canonical_resource(f"https://R{i}.example/x/") == f"https://r{i}.example/x"
    assert len(resource_indicators._memo) <= resource_indicators._memo.size
    with pytest.raises(ValueError):
        canonical_resource("https://bad.example/#f")
    assert "https://bad.example/#f" not in resource_indicators._memo

    class Text(str):
        pass

    assert canonical_resource(Text("https://A.example/")) == "https://a.example"
    assert Text("https://A.example/") not in [k for k in resource_indicators._memo if type(k) is not str]


class _CountedName(str):
    """A member name that counts how often it is compared or hashed."""

    looks = 0

    def __eq__(self, other: object) -> bool:
        _CountedName.looks += 1
        return str.__eq__(self, other)

    def __hash__(self) -> int:
        _CountedName.looks += 1
        return str.__hash__(self)


@pytest.mark.parametrize("members", [2_000, 8_000])
def test_naming_a_repeated_member_takes_linear_work(members: int) -> None:
    """GN-03: a stranger's JSON body (a guarded MCP request read before its token, an open
    registration) may hold thousands of members with one repeat at the end. Naming it looks at
    each name a bounded number of times, so the work grows with the body, not with its square
    (comparisons are counted here, not timed)."""
    hook = unique_members(lambda name: ValueError(name))
    pairs: list[tuple[str, Any]] = [(_CountedName(f"k{i}"), i) for i in range(members)]
    pairs.append((_CountedName(f"k{members - 1}"), 0))
    _CountedName.looks = 0
    with pytest.raises(ValueError, match=f"^k{members - 1}$"):
        hook(pairs)
    assert _CountedName.looks <= 6 * (members + 1), _CountedName.looks


# -- memos ---------------------------------------------------------------------------------------


def test_memo_is_bounded_and_answers_what_was_put() -> None:
    from kavach_core.memo import Memo

    memo: Memo[str, int] = Memo(3)
    assert memo.get("a") is None
    assert memo.put("a", 1) == 1
    assert memo.get("a") == 1 and "a" in memo and list(memo) == ["a"]
    for i in range(10):
        memo.put(f"k{i}", i)
        assert len(memo) <= 3
        assert memo.get(f"k{i}") == i  # the newest answer is always kept
    assert memo.get("a") is None  # forgotten once the memo filled up


def test_client_address_counts_each_kind_of_peer_the_same_way_the_first_time_and_after() -> None:
    """IPv4 as itself, IPv4-mapped IPv6 as its IPv4, IPv6 as its /64, anything else as it is:
    asked twice (the second answer from the memo), and when the memo is full."""
    from kavach_core import http

    expected = {
        "203.0.113.7": "203.0.113.7",
        "::ffff:203.0.113.7": "203.0.113.7",
        "2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
        "2001:DB8:1:2::9": "2001:db8:1:2::/64",
        "unix-socket": "unix-socket",
    }

    def counted_as(peer: str) -> str | None:
        return http.client_address(HttpRequest("POST", "/", headers=[(http.CLIENT_ADDRESS_HEADER, peer)]))

    for _ in range(2):
        for peer, counted in expected.items():
            assert counted_as(peer) == counted
    for i in range(http._counted_as.size + 10):
        peer = f"10.0.{i // 256}.{i % 256}"
        assert counted_as(peer) == peer
    assert len(http._counted_as) <= http._counted_as.size
    assert counted_as("2001:db8::1") == "2001:db8::/64"


def test_scope_descriptions_are_the_same_remembered_or_not() -> None:
    resource = ProtectedResource(RESOURCE)
    scopes = ["tools:list", "tools:call", "tools:call:search", "resources:read:x:y", "other", "tools"]
    first = [resource.describe(s) for s in scopes]
    assert first == [resource._description(s) for s in scopes]
    assert [resource.describe(s) for s in scopes] == first
    assert first[2] == "Run the tool \u201csearch\u201d" and first[4] == ""
    for i in range(600):
        resource.describe(f"tools:call:t{i}")
    assert len(resource._described) <= resource._described.size
    assert ProtectedResource(RESOURCE) == resource  # the memo is no part of the value


def test_a_copied_or_unpickled_memo_starts_empty_and_answers_from_its_own_entries() -> None:
    import copy
    import pickle

    from kavach_core.memo import Memo

    memo: Memo[str, str] = Memo(4)
    memo.put("k", "old")
    for made in (copy.copy(memo), copy.deepcopy(memo), pickle.loads(pickle.dumps(memo))):
        assert len(made) == 0 and made.size == 4 and made.get("k") is None
        made.put("k", "new")
        assert made.get("k") == "new" and memo.get("k") == "old"


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("postgresql://u:hunter2@db.example:5432/k", "postgresql://u:***@db.example:5432/k"),
        ("postgresql://u@db.example/k", "postgresql://u@db.example/k"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1/0?password=hunter2&db=1", "redis://127.0.0.1/0?password=***&db=1"),
        ("unix:///run/redis.sock?Password=hunter2", "unix:///run/redis.sock?Password=***"),
        ("postgresql://h/k?application_name=a@b", "postgresql://h/k?application_name=a@b"),
        # unescaped reserved characters in the password: hidden whole, however a driver splits it
        ("postgresql://u:hun@ter2@db.example/k", "postgresql://u:***@db.example/k"),
        ("postgresql://u:hun#ter2@db.example/k", "postgresql://u:***@db.example/k"),
        ("postgresql://u:hun?ter2@db.example/k", "postgresql://u:***@db.example/k"),
        ("postgresql://u:hun/ter2@db.example/k", "postgresql://u:***@db.example/k"),
        (
            "postgresql://u:hun#x@ter2@db.example/k?sslpassword=hunter3",
            "postgresql://u:***@db.example/k?sslpassword=***",
        ),
        ("postgresql://u:hunter2@[::1/k", "postgresql://u:***@[::1/k"),
        ("kavach.db", "kavach.db"),
    ],
)
def test_redact_hides_every_password_a_url_reader_might_find(location: str, shown: str) -> None:
    """Messages and the banner show store and upstream URLs with their passwords hidden, in the
    user information however a reader would delimit it (libpq ends it at the first '@', Python's
    readers at the last, and at a '#' or '?'), and in the query."""
    assert redact(location) == shown
