"""Dynamic client registration: RG-01, RG-02, RG-03 (RFC 7591), and GN-03 for rejections."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs
import pytest
from conftest import Harness, basic, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issued_tokens import snapshot, writes

from kavach_core import effects as fx
from kavach_core.client_auth import authenticate
from kavach_core.config import RegistrationPolicy
from kavach_core.credentials import ClientCredentials
from kavach_core.endpoints import registration
from kavach_core.http import Response
from kavach_core.messages.registration import RegistrationRequest
from kavach_core.opaque import digest

PATH = "/register"
APP = "https://app.example.com/callback"
ADDRESS = "X-Kavach-Client-Address"


def meta(**overrides: Any) -> dict[str, Any]:
    """A valid public-client registration; ``None`` drops a member."""
    body: dict[str, Any] = {
        "redirect_uris": [APP],
        "token_endpoint_auth_method": "none",
        "client_name": "Example App",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def register(
    h: Harness, body: Any = None, *, headers: list[tuple[str, str]] | None = None, raw: bytes | None = None
) -> tuple[Response, list[fx.Effect]]:
    if raw is not None:
        req = h.request("POST", PATH, headers=[("Content-Type", "application/json"), *(headers or [])], body=raw)
    else:
        req = h.request("POST", PATH, json=meta() if body is None else body, headers=headers or [])
    return h.trace(registration.handle(h.ctx(), req))


def refused(h: Harness, body: Any, error: str, **kwargs: Any) -> Response:
    """Register ``body`` and check it is refused with ``error`` and writes nothing (GN-03)."""
    before = snapshot(h)
    resp, effects = register(h, body, **kwargs)
    assert resp.status == 400, resp.body
    assert resp.json()["error"] == error
    assert resp.header("Cache-Control") == "no-store"
    assert writes(effects) == []
    assert snapshot(h) == before
    return resp


def harness(**policy: Any) -> Harness:
    return Harness(make_config(registration=RegistrationPolicy(**policy)))


# -- RG-01: redirect URIs and other URIs ------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        APP,
        "https://app.example.com/cb?x=1",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:53682/cb",
        "http://[::1]:8080/callback",
        "http://localhost:3000/callback",
        "com.example.app:/oauth/callback",
        "https://app.example.com/cb?codes=1&mystate=x&issuer=y",  # other names, however close
    ],
)
def test_rg_01_acceptable_redirect_uris(h: Harness, uri: str) -> None:
    resp, _ = register(h, meta(redirect_uris=[uri]))
    assert resp.status == 201, resp.body
    assert resp.json()["redirect_uris"] == [uri]
    assert h.store.clients[resp.json()["client_id"]].redirect_uris == (uri,)


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example.com/cb",
        "https://app.example.com/cb#frag",
        "https://user:pw@app.example.com/cb",
        "https://user@app.example.com/cb",
        "javascript:alert(1)",
        "data:text/html,hi",
        "file:///etc/passwd",
        "vbscript:x",
        "/relative/cb",
        "https:///nohost",
        "https://app.example.com/c b",
        "noscheme",
        "",
        "https://app.example.com:99999/cb",
        # RFC 6749 §3.1: the response would carry these twice (a client reading the first iss
        # or state would read the registered one)
        "https://app.example.com/cb?state=fixed",
        "https://app.example.com/cb?x=1&code=fake",
        "https://app.example.com/cb?iss=https%3A%2F%2Fevil.example",
        "http://127.0.0.1:8080/cb?error=x",
        "https://app.example.com/cb?error_description=",
        "https://app.example.com/cb?co%64e=1",
        "com.example.app:/cb?error_uri=x",
    ],
)
def test_rg_01_refused_redirect_uris(h: Harness, uri: str) -> None:
    refused(h, meta(redirect_uris=[APP, uri]), "invalid_redirect_uri")


@pytest.mark.parametrize("value", [None, [], "https://app.example.com/cb", [1], [APP, None], {"a": APP}])
def test_rg_01_redirect_uris_required_as_array_of_strings(h: Harness, value: Any) -> None:
    body = meta()
    if value is None:
        del body["redirect_uris"]
    else:
        body["redirect_uris"] = value
    refused(h, body, "invalid_redirect_uri")


def test_rg_01_too_many_redirect_uris(h: Harness) -> None:
    uris = [f"https://app.example.com/cb{i}" for i in range(21)]
    refused(h, meta(redirect_uris=uris), "invalid_redirect_uri")


def test_rg_01_duplicate_redirect_uris_are_stored_once(h: Harness) -> None:
    resp, _ = register(h, meta(redirect_uris=[APP, APP]))
    assert resp.json()["redirect_uris"] == [APP]


@pytest.mark.parametrize("member", ["client_uri", "logo_uri", "tos_uri", "policy_uri"])
def test_rg_01_human_uris_are_https_only_and_never_fetched(h: Harness, member: str) -> None:
    resp, effects = register(h, meta(**{member: "https://app.example.com/about"}))
    assert resp.status == 201
    assert resp.json()[member] == "https://app.example.com/about"
    assert not any(isinstance(e, fx.FetchDocument) for e in effects)
    stored = h.store.clients[resp.json()["client_id"]]
    assert stored.meta[member] == "https://app.example.com/about"
    for bad in [
        "http://app.example.com/about",
        "javascript:alert(1)",
        "data:image/png;base64,AA",
        "//x.example",
        "https://u:p@app.example.com/",
        "https:///x",
        7,
        ["https://a.example"],
        "https://a.example/ x",
        "https://u@app.example.com/",
        "https://app.example.com:99999/",
    ]:  # a user alone; no such port
        refused(h, meta(**{member: bad}), "invalid_client_metadata")
    answer = refused(h, meta(**{member: "https://a.example/ x"}), "invalid_client_metadata")
    assert "spaces or control characters" in answer.json()["error_description"]  # said as such
    resp, _ = register(h, meta(**{member: "https://app.example.com/a!b~c"}))  # RFC 3986 §2 characters
    assert resp.status == 201 and resp.json()[member] == "https://app.example.com/a!b~c"


@pytest.mark.parametrize("member", ["client_uri", "logo_uri", "tos_uri", "policy_uri"])
@pytest.mark.parametrize(
    "value",
    ['https://app.example.com/x"onerror="y', "https://app.example.com/<svg>", "https://g\u043e\u043egle.com/",
     "https://ex%61mple.com/", "https://*.example.com/", "https://app.example.com/caf\u00e9"],
)  # fmt: skip
def test_rg_01_human_uris_are_written_as_redirect_uris_must_be(h: Harness, member: str, value: str) -> None:
    """The URIs a consent page may show as the application's (its site, logo, terms) obey the
    rules redirect URIs do: URI characters only (RFC 3986 §2), so none breaks out of an HTML
    attribute a page puts it in; and a plain host, so none shows a percent-encoded, wildcard or
    look-alike (non-ASCII) host in place of the one a browser would reach. Nothing is stored."""
    refused(h, meta(**{member: value}), "invalid_client_metadata")
    assert h.store.clients == {}


# -- RG-02: methods, grant types, scope, types, the response -----------------------------------


def test_rg_02_public_client_gets_no_secret(h: Harness) -> None:
    resp, effects = register(h, meta())
    assert resp.status == 201
    body = resp.json()
    assert "client_secret" not in body and "client_secret_expires_at" not in body
    assert body["token_endpoint_auth_method"] == "none"
    client = h.store.clients[body["client_id"]]
    assert client.secret_hash is None and not client.is_confidential
    assert client.secret_expires_at == 0  # no secret, so nothing expires (RFC 7591 §3.2.1: 0 is "never")
    nameless, _ = register(h, meta(client_name=None))
    assert h.store.clients[nameless.json()["client_id"]].client_name == ""  # a text field, even when omitted
    assert client.kind == "dynamic"
    assert [type(e) for e in writes(effects)] == [fx.Hit, fx.PutClient]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", None])
def test_rg_02_confidential_client_secret_is_stored_hashed(h: Harness, method: str | None) -> None:
    body = meta(token_endpoint_auth_method=method)  # None: the member is omitted
    assert ("token_endpoint_auth_method" in body) == (method is not None)
    resp, _ = register(h, body)
    assert resp.status == 201
    answer = resp.json()
    expected = method or "client_secret_basic"  # RFC 7591 §2 default
    assert answer["token_endpoint_auth_method"] == expected
    secret = answer["client_secret"]
    assert len(secret) >= 43
    assert answer["client_secret_expires_at"] == 0
    client = h.store.clients[answer["client_id"]]
    assert client.secret_hash == digest(secret)
    assert secret not in repr(h.store.clients) and secret not in client.metadata
    # the registered client can authenticate with what it was given
    creds = ClientCredentials(answer["client_id"], secret, expected)
    assert h.run(authenticate(h.ctx(), creds)).client_id == answer["client_id"]


def test_rg_02_client_secret_expiry_follows_configuration() -> None:
    from kavach_core.config import Lifetimes

    h = Harness(make_config(lifetimes=Lifetimes(client_secret=3600)))
    resp, _ = register(h, meta(token_endpoint_auth_method="client_secret_basic"))
    assert resp.json()["client_secret_expires_at"] == h.now + 3600
    assert h.store.clients[resp.json()["client_id"]].secret_expires_at == h.now + 3600


@pytest.mark.parametrize("method", ["private_key_jwt", "client_secret_jwt", "tls_client_auth", "NONE", "basic"])
def test_rg_02_unsupported_auth_methods(h: Harness, method: str) -> None:
    refused(h, meta(token_endpoint_auth_method=method), "invalid_client_metadata")


def test_rg_02_full_record_in_201(h: Harness) -> None:
    body = meta(
        client_uri="https://app.example.com",
        logo_uri="https://app.example.com/logo.png",
        tos_uri="https://app.example.com/tos",
        policy_uri="https://app.example.com/privacy",
        contacts=["ops@example.com"],
        scope="tools:list tools:call:search",
        software_id="4NRB1-0XZABZI9E6-5SM3R",
        software_version="2.1",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )
    resp, _ = register(h, body)
    assert resp.status == 201
    assert resp.header("Cache-Control") == "no-store"
    assert resp.header("Content-Type") == "application/json"
    answer = resp.json()
    for key, value in body.items():
        assert answer[key] == value
    assert answer["client_id_issued_at"] == h.now
    assert len(answer["client_id"]) >= 22
    client = h.store.clients[answer["client_id"]]
    assert client.scope == ("tools:list", "tools:call:search")
    assert client.client_name == "Example App"
    assert client.issued_at == h.now
    assert client.grant_types == ("authorization_code", "refresh_token")
    assert client.meta["software_id"] == "4NRB1-0XZABZI9E6-5SM3R"


def test_rg_02_defaults_for_grant_and_response_types(h: Harness) -> None:
    resp, _ = register(h, meta())
    answer = resp.json()
    assert answer["grant_types"] == ["authorization_code", "refresh_token"]
    assert answer["response_types"] == ["code"]


def test_rg_02_authorization_code_alone_is_fine(h: Harness) -> None:
    resp, _ = register(h, meta(grant_types=["authorization_code"]))
    assert resp.status == 201
    assert h.store.clients[resp.json()["client_id"]].grant_types == ("authorization_code",)


@pytest.mark.parametrize(
    ("grants", "responses"),
    [
        (["implicit"], ["token"]),
        (["authorization_code", "implicit"], ["code"]),
        (["password"], None),
        (["authorization_code", "password"], None),
        (["client_credentials"], None),
        (["refresh_token"], None),
        ([], None),
        (["urn:ietf:params:oauth:grant-type:device_code"], None),
        (None, ["token"]),
        (None, ["code", "token"]),
        (None, ["code id_token"]),
        (None, []),
        (None, ["id_token"]),
    ],
)
def test_rg_02_grant_and_response_types_must_be_the_code_flow(
    h: Harness, grants: list[str] | None, responses: list[str] | None
) -> None:
    refused(h, meta(grant_types=grants, response_types=responses), "invalid_client_metadata")


@pytest.mark.parametrize("scope", ["tools:list", "tools:call:search", "resources:read prompts:get", "  tools:list  "])
def test_rg_02_scope_within_the_catalogue(h: Harness, scope: str) -> None:
    resp, _ = register(h, meta(scope=scope))
    assert resp.status == 201


@pytest.mark.parametrize("scope", ["admin", "tools", "tools:list admin", 'bad"scope', "a::b", ":x"])
def test_rg_02_scope_outside_the_catalogue_or_malformed(h: Harness, scope: str) -> None:
    refused(h, meta(scope=scope), "invalid_client_metadata")


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("client_name", 5),
        ("client_name", ["x"]),
        ("client_name", "x" * 1001),
        ("client_name", "line\nbreak"),
        ("token_endpoint_auth_method", 1),
        ("token_endpoint_auth_method", ["none"]),
        ("grant_types", "authorization_code"),
        ("grant_types", [1]),
        ("response_types", "code"),
        ("contacts", "ops@example.com"),
        ("contacts", [1]),
        ("contacts", [""]),
        ("contacts", ["x" * 2001]),
        ("contacts", ["a@example.com"] * 3 + [f"x{i}@example.com" for i in range(20)]),
        ("scope", ["tools:list"]),
        ("scope", 1),
        ("software_id", {"id": 1}),
        ("software_version", 2.1),
        ("client_uri", True),
    ],
)
def test_rg_02_every_member_is_type_checked(h: Harness, member: str, value: Any) -> None:
    refused(h, meta(**{member: value}), "invalid_client_metadata")


@pytest.mark.parametrize(
    ("member", "value", "error"),
    [
        ("client_name", "Example \ud800 App", "invalid_client_metadata"),  # a lone surrogate: not Unicode text
        ("client_name", "\udfff", "invalid_client_metadata"),
        ("client_name", "Trusted\u202eppa.live", "invalid_client_metadata"),  # shown reversed on the consent page
        ("client_name", "Trusted\u2066 App", "invalid_client_metadata"),
        ("client_name", "next\u0085line", "invalid_client_metadata"),  # C1 control
        ("software_id", "id\ud83d", "invalid_client_metadata"),
        ("contacts", ["ops\udc00@example.com"], "invalid_client_metadata"),
        ("redirect_uris", ["https://app.example.com/\ud800"], "invalid_redirect_uri"),
        ("redirect_uris", ["https://app.example.com/cb\u200f"], "invalid_redirect_uri"),
        # characters that hide or fake text on the consent page
        ("client_name", "Safe\u200bApp", "invalid_client_metadata"),  # zero-width space
        ("client_name", "App\U000e0041", "invalid_client_metadata"),  # a tag character
        ("client_name", "App\ue000", "invalid_client_metadata"),  # private use
        ("client_name", "App\u2028", "invalid_client_metadata"),  # line separator
        ("client_name", "   ", "invalid_client_metadata"),  # nothing visible
        ("client_name", "\u3164\u3164 \u3164", "invalid_client_metadata"),  # Hangul fillers print as nothing
        ("client_name", "\u2800", "invalid_client_metadata"),
        ("client_name", "\u034f", "invalid_client_metadata"),  # a combining grapheme joiner alone
        ("client_name", "\ufe0f\U000e0100", "invalid_client_metadata"),  # variation selectors alone
        ("client_name", "\u17b4 ", "invalid_client_metadata"),
        ("client_name", "\u0378", "invalid_client_metadata"),  # unassigned
    ],
)
def test_rg_02_text_members_are_unicode_text_without_controls(h: Harness, member: str, value: Any, error: str) -> None:
    refused(h, meta(**{member: value}), error)


SCRIPTS = [
    "Cafe\u0301 Tools",
    "\u2764\ufe0f Tools",
    "Caf\u00e9 Tools",
    "\u30c4\u30fc\u30eb",
    "Tools\u00a0Pro",
    "\u0421\u0435\u0440\u0432\u0438\u0441",
]


@pytest.mark.parametrize("name", SCRIPTS)
def test_rg_02_names_in_any_script_are_fine(h: Harness, name: str) -> None:
    resp, _ = register(h, meta(client_name=name))
    assert resp.status == 201, resp.body
    assert resp.json()["client_name"] == name


def test_rg_02_a_surrogate_pair_is_one_character_and_fine(h: Harness) -> None:
    raw = json.dumps(meta(client_name="Tools \U0001f600")).encode()
    assert b"\\ud83d\\ude00" in raw, "the JSON text escapes the character as a surrogate pair"
    resp, _ = register(h, raw=raw)
    assert resp.status == 201, resp.body
    assert resp.json()["client_name"] == "Tools \U0001f600"


def test_gn_03_a_lone_surrogate_changes_nothing_in_a_real_store(tmp_path: Any) -> None:
    """Through the server on SQLite (which cannot store a lone surrogate): a 400, no client, and
    no registration counted against the address."""
    import sqlite3

    from kavach.server import AuthorizationServer
    from kavach.stores.sqlite import SQLiteStore

    from kavach_core.http import HttpRequest

    path = tmp_path / "k.db"
    server = AuthorizationServer(make_config(), SQLiteStore(str(path)), identify=lambda req: None)
    body = b'{"redirect_uris":["https://app.example.com/cb"],"client_name":"a\\ud800b"}'
    headers = [("Content-Type", "application/json"), (ADDRESS, "192.0.2.7")]
    resp = server.handle(HttpRequest("POST", PATH, headers=headers, body=body))
    assert resp.status == 400 and resp.json()["error"] == "invalid_client_metadata", resp.body
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM clients").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM rate_limits").fetchone() == (0,)


def test_rg_02_null_and_empty_members_count_as_absent(h: Harness) -> None:
    body = meta()
    body.update({"client_uri": None, "logo_uri": "", "contacts": None, "scope": "", "software_id": None})
    resp, _ = register(h, body)
    assert resp.status == 201
    answer = resp.json()
    for member in ("client_uri", "logo_uri", "contacts", "scope", "software_id"):
        assert member not in answer


def test_rg_02_unknown_members_are_ignored(h: Harness) -> None:
    body = meta(
        jwks_uri="https://evil.example/jwks",
        software_statement="x.y.z",
        extra={"a": [1, 2]},
        **{"client_name#ja-Jpan-JP": "名前"},
    )
    resp, effects = register(h, body)
    assert resp.status == 201
    answer = resp.json()
    assert "jwks_uri" not in answer and "extra" not in answer and "software_statement" not in answer
    assert not any(isinstance(e, fx.FetchDocument) for e in effects)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"string"',
        b"null",
        b'{"redirect_uris": ["https://a.example/cb"], "redirect_uris": ["https://b.example/cb"]}',
        b'{"client_name": NaN, "redirect_uris": ["https://a.example/cb"]}',
        b"\xff\xfe{}",
        b"[" * 5000,
    ],
)
def test_rg_02_body_must_be_one_json_object(h: Harness, raw: bytes) -> None:
    before = snapshot(h)
    resp, effects = register(h, raw=raw)
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_client_metadata"
    assert writes(effects) == []
    assert snapshot(h) == before


def test_rg_02_body_must_be_json(h: Harness) -> None:
    req = h.request("POST", PATH, form={"redirect_uris": APP})
    resp, effects = h.trace(registration.handle(h.ctx(), req))
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_client_metadata"
    assert writes(effects) == []


def test_rg_02_post_only(h: Harness) -> None:
    req = h.request("GET", PATH)
    resp, effects = h.trace(registration.handle(h.ctx(), req))
    assert resp.status == 405
    assert writes(effects) == []


def test_rg_02_each_registration_gets_a_new_client_id(h: Harness) -> None:
    ids = {register(h, meta())[0].json()["client_id"] for _ in range(5)}
    assert len(ids) == 5
    assert set(h.store.clients) == ids


# -- RG-03: policy --------------------------------------------------------------------------


def test_rg_03_closed_registration_is_not_found() -> None:
    h = harness(mode="closed")
    before = snapshot(h)
    resp, effects = register(h, meta())
    assert resp.status == 404
    assert resp.json() == {"error": "not_found"}
    assert effects == []
    assert snapshot(h) == before
    assert h.route(h.request("POST", PATH, json=meta())).status == 404


TOKEN = "initial-access-token-for-tests"


def token_harness() -> Harness:
    return harness(mode="token", initial_access_token_hashes=[hashlib.sha256(b"other").hexdigest(), digest(TOKEN)])


def test_rg_03_initial_access_token_accepted() -> None:
    h = token_harness()
    resp, _ = register(h, meta(), headers=[("Authorization", f"Bearer {TOKEN}")])
    assert resp.status == 201


def test_rg_03_each_configured_initial_access_token_is_accepted_wherever_it_is_listed() -> None:
    """RG-03 / RFC 7591 §3: every configured digest is compared, so any one of them admits its token."""
    h = harness(mode="token", initial_access_token_hashes=[digest(TOKEN), hashlib.sha256(b"other").hexdigest()])
    for token in (TOKEN, "other"):
        resp, _ = register(h, meta(), headers=[("Authorization", f"Bearer {token}")])
        assert resp.status == 201, (token, resp.body)


def test_rg_03_upper_case_hash_in_configuration_still_matches() -> None:
    h = harness(mode="token", initial_access_token_hashes=[digest(TOKEN).upper()])
    resp, _ = register(h, meta(), headers=[("Authorization", f"Bearer {TOKEN}")])
    assert resp.status == 201


def test_rg_03_missing_initial_access_token() -> None:
    h = token_harness()
    for headers in ([], [basic("x", "y")]):
        before = snapshot(h)
        resp, effects = register(h, meta(), headers=headers)
        assert resp.status == 401
        # RFC 6750 §3.1: no credentials, no error code, in the challenge or the body (the guard's word)
        assert resp.json()["error"] == "unauthorized"
        assert resp.header("WWW-Authenticate") == "Bearer"
        assert writes(effects) == []
        assert snapshot(h) == before


@pytest.mark.parametrize("value", ["Bearer wrong-token", "Bearer " + digest(TOKEN), "Bearer a b", "Bearer"])
def test_rg_03_bad_initial_access_token(value: str) -> None:
    h = token_harness()
    before = snapshot(h)
    resp, effects = register(h, meta(), headers=[("Authorization", value)])
    assert resp.status == 401
    assert resp.json()["error"] == "invalid_token"
    assert resp.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert writes(effects) == []
    assert snapshot(h) == before


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer " + TOKEN), ("Authorization", "Bearer " + TOKEN)],
        [("Authorization", "Bearer " + TOKEN), ("authorization", "Bearer other")],
        [("Authorization", f"Bearer {TOKEN}, Bearer other")],
        [("Authorization", f"Basic eDp5, Bearer {TOKEN}")],
    ],
    ids=["twice", "two-tokens", "joined", "joined-after-basic"],
)
def test_rg_03_repeated_initial_access_token_is_invalid_request(headers: list[tuple[str, str]]) -> None:
    """RFC 6750 §3.1: the token sent more than once is ``invalid_request`` (400), with its
    challenge, as the resource guard answers it, even when one of them is the right token."""
    h = token_harness()
    before = snapshot(h)
    resp, effects = register(h, meta(), headers=headers)
    assert resp.status == 400
    assert resp.json()["error"] == "invalid_request"
    assert resp.header("WWW-Authenticate") == 'Bearer error="invalid_request"'
    assert writes(effects) == []
    assert snapshot(h) == before


def test_rg_03_token_checked_before_the_body() -> None:
    h = token_harness()
    resp, _ = register(h, raw=b"not json")
    assert resp.status == 401


def test_rg_03_rate_limited_per_client_address() -> None:
    h = harness(rate_limit=2, rate_window=60)
    a = [(ADDRESS, "198.51.100.7")]
    b = [(ADDRESS, "2001:db8::1")]
    assert register(h, meta(), headers=a)[0].status == 201
    assert register(h, meta(), headers=a)[0].status == 201
    resp, effects = register(h, meta(), headers=a)
    assert resp.status == 429
    assert resp.json()["error"] == "temporarily_unavailable"
    assert 1 <= int(resp.header("Retry-After") or "0") <= 60
    assert [type(e) for e in writes(effects)] == [fx.Hit]  # the counter, and no client
    assert len(h.store.clients) == 2
    assert register(h, meta(), headers=b)[0].status == 201
    h.now += 60
    assert register(h, meta(), headers=a)[0].status == 201


def test_rg_03_retry_after_is_the_time_left_in_the_rate_window() -> None:
    """RG-03, RFC 6585 §4: the 429's ``Retry-After`` (RFC 9110 §10.2.3, seconds) is when the
    current window ends, and never less than one second."""
    h = harness(rate_limit=1, rate_window=60)
    start = h.now // 60 * 60
    h.now = start + 15
    assert register(h, meta())[0].status == 201
    resp, _ = register(h, meta())
    assert (resp.status, resp.header("Retry-After")) == (429, "45")
    h.now = start + 59
    resp, _ = register(h, meta())
    assert (resp.status, resp.header("Retry-After")) == (429, "1")


def test_rg_03_an_ipv6_host_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() -> None:
    """One IPv6 host normally holds a whole /64 (RFC 4291 §2.5.4): counted per address, it
    could register without limit by changing its source address; an IPv4 address reaching a
    dual-stack listener IPv4-mapped is the same client as without the mapping."""
    h = harness(rate_limit=2, rate_window=60)
    same_64 = [f"2001:db8:5:6:{i:x}::{i + 1:x}" for i in range(3)]
    assert [register(h, meta(), headers=[(ADDRESS, a)])[0].status for a in same_64] == [201, 201, 429]
    assert register(h, meta(), headers=[(ADDRESS, "2001:db8:5:7::1")])[0].status == 201, "another /64"
    v4 = ["192.0.2.9", "::ffff:192.0.2.9", "::FFFF:c000:209"]
    assert [register(h, meta(), headers=[(ADDRESS, a)])[0].status for a in v4] == [201, 201, 429]
    assert register(h, meta(), headers=[(ADDRESS, "192.0.2.10")])[0].status == 201, "IPv4 is per address"


def test_rg_03_without_an_address_everyone_shares_a_bucket() -> None:
    h = harness(rate_limit=1, rate_window=60)
    assert register(h, meta())[0].status == 201
    assert register(h, meta())[0].status == 429
    assert register(h, meta(), headers=[(ADDRESS, "203.0.113.5")])[0].status == 201


@pytest.mark.parametrize("value", ["", "   ", "x" * 129])
def test_rg_03_unusable_address_falls_back_to_the_shared_bucket(value: str) -> None:
    h = harness(rate_limit=1, rate_window=60)
    assert register(h, meta())[0].status == 201
    assert register(h, meta(), headers=[(ADDRESS, value)])[0].status == 429


def test_rg_03_repeated_address_header_falls_back_to_the_shared_bucket() -> None:
    h = harness(rate_limit=1, rate_window=60)
    assert register(h, meta())[0].status == 201
    assert register(h, meta(), headers=[(ADDRESS, "192.0.2.1"), (ADDRESS, "192.0.2.2")])[0].status == 429


def test_rg_03_invalid_requests_do_not_count() -> None:
    h = harness(rate_limit=1, rate_window=60)
    for _ in range(3):
        refused(h, meta(redirect_uris=["http://evil.example/cb"]), "invalid_redirect_uri")
    assert register(h, meta())[0].status == 201


def test_rg_03_rate_limit_zero_disables_it() -> None:
    h = harness(rate_limit=0)
    for _ in range(5):
        resp, effects = register(h, meta())
        assert resp.status == 201
        assert not any(isinstance(e, fx.Hit) for e in effects)


def test_rg_03_allowed_redirect_hosts() -> None:
    h = harness(allowed_redirect_hosts=["App.Example.com"])
    assert register(h, meta(redirect_uris=[APP]))[0].status == 201
    assert register(h, meta(redirect_uris=["http://127.0.0.1:9999/cb", "http://[::1]/cb"]))[0].status == 201
    assert register(h, meta(redirect_uris=["http://localhost:9999/cb"]))[0].status == 201
    refused(h, meta(redirect_uris=[APP, "https://evil.example/cb"]), "invalid_redirect_uri")
    refused(h, meta(redirect_uris=["https://sub.app.example.com/cb"]), "invalid_redirect_uri")
    refused(h, meta(redirect_uris=["com.example.app:/cb"]), "invalid_redirect_uri")


@pytest.mark.parametrize(
    "uri",
    [
        "https://127.attacker.example/cb",  # DNS names that only begin like a loopback address
        "https://127.0.0.1.nip.io/cb",
        "http://127.0.0.1.example.net:8080/cb",
        "com.evil.app://app.example.com/cb",  # a private-use scheme written with a listed host
        "com.evil.app://localhost/cb",
        "com.evil.app://127.0.0.1/cb",
    ],
)
def test_rg_03_allowlist_reads_hosts_of_web_uris_only(uri: str) -> None:
    """RG-03: only an http(s) URI has a web host the allowlist can admit, and "loopback" means
    an IP literal of 127.0.0.0/8 or ::1 (or ``localhost``), never a name that starts like one."""
    h = harness(allowed_redirect_hosts=["app.example.com"])
    refused(h, meta(redirect_uris=[uri]), "invalid_redirect_uri")
    assert not h.store.clients


def test_rg_03_registered_client_is_never_marked_static(h: Harness) -> None:
    """AZ-11 relies on ``kind``: a dynamically registered client is never auto-approved."""
    resp, _ = register(h, meta())
    assert h.store.clients[resp.json()["client_id"]].kind == "dynamic"


def test_rg_01_through_the_router_with_cors(h: Harness) -> None:
    resp = h.route(h.request("POST", PATH, json=meta()))
    assert resp.status == 201
    assert resp.header("Access-Control-Allow-Origin") == "*"


# -- GN-03: arbitrary input -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
members = st.sampled_from([*attrs.fields_dict(RegistrationRequest), "other"])


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(body=st.dictionaries(members, json_values, max_size=8))
def test_gn_03_registration_arbitrary_metadata(h: Harness, body: dict[str, Any]) -> None:
    """Invariant: for any JSON object of up to 8 members (registration metadata names and an
    unknown one) with any JSON values, registration either answers 201 having written exactly a
    rate-limit hit and the client, or answers 400 ``invalid_client_metadata`` or
    ``invalid_redirect_uri`` having written nothing."""
    resp, effects = register(h, body)
    if resp.status == 201:
        assert [type(e) for e in writes(effects)] == [fx.Hit, fx.PutClient]
    else:
        assert resp.status == 400
        assert resp.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
        assert writes(effects) == []


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    raw=st.binary(max_size=300) | st.text(max_size=200).map(str.encode),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
    auth=st.one_of(st.none(), st.text(max_size=40)),
)
def test_gn_03_registration_arbitrary_bytes(h: Harness, raw: bytes, content_type: str, auth: str | None) -> None:
    """Invariant: for any body bytes (arbitrary, or UTF-8 text), content type and Authorization
    value, registration raises nothing; unless it registers (201) it answers a 4xx whose JSON
    ``error`` is a string, having written nothing."""
    headers = [("Content-Type", content_type)]
    if auth is not None:
        headers.append(("Authorization", auth))
    resp, effects = h.trace(registration.handle(h.ctx(), h.request("POST", PATH, headers=headers, body=raw)))
    if resp.status != 201:
        assert 400 <= resp.status < 500
        assert isinstance(json.loads(resp.body)["error"], str)
        assert writes(effects) == []


def test_rg_02_client_ids_are_command_line_safe() -> None:
    """Issued client ids never start with ``-`` (``kavach clients show ID`` would read an option)
    and carry 128 random bits after their prefix."""
    from kavach_core.config import RegistrationPolicy

    h = Harness(make_config(registration=RegistrationPolicy(rate_limit=0)))
    ids = set()
    for _ in range(200):
        resp = h.route(
            h.request(
                "POST",
                "/register",
                json={"redirect_uris": ["https://app.example.com/cb"], "token_endpoint_auth_method": "none"},
            )
        )
        assert resp.status == 201
        ids.add(resp.json()["client_id"])
    assert len(ids) == 200
    assert all(i.startswith("kvc_") and len(i) == len("kvc_") + 22 for i in ids)
