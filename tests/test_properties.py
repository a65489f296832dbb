"""Hypothesis properties of the protocol core. Each test's docstring states its invariant."""

from __future__ import annotations

import base64
import hashlib
import re
import string
from typing import Any

from conftest import ISSUER, OTHER_RESOURCE, RESOURCE, Harness, basic, make_config
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from oauth_flows import REDIRECT, VERIFIER, add_client, az_query, code_form, jwt_parts, location_params

from kavach_core import pkce
from kavach_core.endpoints import authorize, token
from kavach_core.http import HttpRequest, Response
from kavach_core.messages.authorization import ConsentRequired
from kavach_core.redirect_uris import matches
from kavach_core.router import route, routes
from kavach_core.scopes import covers, parse_scope

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNRESERVED = string.ascii_letters + string.digits + "-._~"
VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")

valid_verifiers = st.text(alphabet=UNRESERVED, min_size=43, max_size=128)


def raw_s256(text: str) -> str:
    """S256 of any string (UTF-8, surrogates passed through): what a sloppy client would send."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# -- PKCE -------------------------------------------------------------------------------------


@SETTINGS
@given(valid_verifiers)
def test_pkce_valid_verifier_matches_its_own_challenge(verifier: str) -> None:
    """Every verifier of RFC 7636's grammar (43-128 unreserved characters) verifies against
    its own S256 challenge, and that challenge is 43 base64url characters."""
    challenge = pkce.s256(verifier)
    assert pkce.is_valid_challenge(challenge)
    assert challenge == raw_s256(verifier)
    assert pkce.verify(verifier, challenge)


@SETTINGS
@given(valid_verifiers, st.one_of(valid_verifiers, st.text(max_size=200)))
def test_pkce_every_other_string_fails(verifier: str, other: str) -> None:
    """No string other than the verifier itself verifies against the verifier's challenge."""
    assume(other != verifier)
    assert not pkce.verify(other, pkce.s256(verifier))


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=42),
        st.text(min_size=129, max_size=300, alphabet=UNRESERVED),
        st.text(min_size=43, max_size=128).filter(lambda s: not VERIFIER_RE.fullmatch(s)),
        st.builds(
            lambda a, c, b: a + c + b,
            st.text(alphabet=UNRESERVED, min_size=21, max_size=60),
            st.characters().filter(lambda c: c not in UNRESERVED),
            st.text(alphabet=UNRESERVED, min_size=21, max_size=60),
        ),
    )
)
def test_pkce_verifier_outside_the_grammar_fails_even_against_its_own_hash(bad: str) -> None:
    """A verifier outside RFC 7636 §4.1's grammar never verifies, not even against its own hash."""
    assert not VERIFIER_RE.fullmatch(bad)
    assert not pkce.is_valid_verifier(bad)
    assert not pkce.verify(bad, raw_s256(bad))


BASE64URL = string.ascii_letters + string.digits + "-_"


def _one_changed(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


challenges_and_near_misses = st.one_of(
    st.text(alphabet=BASE64URL, min_size=43, max_size=43),
    valid_verifiers.map(raw_s256),
    st.text(alphabet=BASE64URL, min_size=42, max_size=42),
    st.text(alphabet=BASE64URL, min_size=44, max_size=129),
    st.text(alphabet=UNRESERVED, min_size=43, max_size=128),  # RFC 7636's code-challenge ABNF, not an S256 digest
    st.builds(
        _one_changed,
        st.text(alphabet=BASE64URL, min_size=43, max_size=43),
        st.integers(min_value=0, max_value=42),
        st.one_of(st.sampled_from(".~=+/ "), st.characters().filter(lambda c: c not in BASE64URL)),
    ),
    st.text(max_size=60),
)


@SETTINGS
@given(challenges_and_near_misses)
@example(raw_s256(VERIFIER))
@example("A" * 43)
@example("A" * 42)
@example("A" * 44)
@example("A" * 42 + ".")
@example("A" * 42 + "=")
def test_pkce_challenge_grammar(challenge: str) -> None:
    """A challenge is accepted exactly when it is 43 base64url characters, the form of an S256
    digest (RFC 7636 §4.2; only S256 is supported), for well-formed challenges and digests of
    verifiers, near misses (42 or 44 to 129 characters, one character outside the alphabet,
    longer strings of RFC 7636's unreserved characters) and any text alike. The examples make
    sure both verdicts are reached whatever is drawn."""
    expected = bool(re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge))
    event("accepted" if expected else "refused")
    assert pkce.is_valid_challenge(challenge) == expected


# -- scopes -----------------------------------------------------------------------------------

CATALOGUE = ("tools:list", "tools:call", "resources:list", "resources:read", "prompts:list", "prompts:get")
NARROWER = ("tools:call:search", "tools:call:echo", "resources:read:file", "tools:list:x")
OUTSIDE = ("admin", "tools", "tools:write", "resources", "files:read", "tools:calls")
scope_names = st.sampled_from(CATALOGUE + NARROWER + OUTSIDE)


def _covered(scope: str, allowed: tuple[str, ...] | list[str]) -> bool:
    return any(scope.split(":")[: len(a.split(":"))] == a.split(":") for a in allowed)


def _flow_to_token(h: Harness, requested: list[str], ticked: list[str] | None) -> Any:
    query = az_query(state=None, scope=" ".join(requested) or None)
    out = h.run(authorize.handle(h.ctx(), h.request("GET", "/authorize", query=query)))
    if not isinstance(out, ConsentRequired):
        return out
    resp = h.run(authorize.approve(h.ctx(), out.ticket, "alice", tuple(ticked) if ticked is not None else None))
    if "code" not in location_params(resp):
        return resp
    return h.run(token.handle(h.ctx(), h.request("POST", "/token", form=code_form(location_params(resp)["code"]))))


@FEW
@given(
    st.lists(scope_names, max_size=5),
    st.one_of(st.none(), st.lists(scope_names, max_size=6)),
    st.lists(st.one_of(st.none(), st.lists(scope_names, max_size=4)), max_size=3),
)
def test_scope_issued_within_requested_and_catalogue_and_refresh_never_widens(
    requested: list[str], ticked: list[str] | None, refreshes: list[list[str] | None]
) -> None:
    """Issued scopes are always within requested ∩ catalogue (prefix rule; the defaults when
    nothing is requested); a request naming anything outside the catalogue is invalid_scope;
    the person's ticks only narrow, and ticking none of the requested scopes is access_denied;
    every refresh issues a subset of what the grant holds and a refresh asking for more is
    invalid_scope."""
    h = Harness()
    add_client(h)
    out = _flow_to_token(h, requested, ticked)
    if any(not _covered(s, CATALOGUE) for s in requested):
        assert isinstance(out, Response) and out.status == 303
        assert location_params(out)["error"] == "invalid_scope"
        return
    effective = requested or ["tools:list", "tools:call"]
    if ticked is not None and not set(effective) & set(ticked):
        assert isinstance(out, Response) and location_params(out)["error"] == "access_denied"
        return
    assert isinstance(out, Response) and out.status == 200, out
    body = out.json()
    issued = body["scope"].split()
    assert set(issued) <= set(effective)
    assert all(_covered(s, CATALOGUE) for s in issued)
    if ticked is not None:
        assert set(issued) <= set(ticked)
    assert jwt_parts(body["access_token"])[1]["scope"] == body["scope"]
    granted = issued
    rt = body["refresh_token"]
    for asked in refreshes:
        form = {"grant_type": "refresh_token", "refresh_token": rt, "client_id": "c1"}
        if asked:
            form["scope"] = " ".join(asked)
        resp = h.run(token.handle(h.ctx(), h.request("POST", "/token", form=form)))
        if asked and any(not _covered(s, granted) for s in asked):
            assert resp.status == 400 and resp.json()["error"] == "invalid_scope"
            continue
        assert resp.status == 200, resp.body
        nxt = resp.json()
        got = nxt["scope"].split()
        assert all(_covered(s, granted) for s in got)
        assert set(got) <= set(asked or granted)
        rt = nxt["refresh_token"]


segments = st.lists(st.text(alphabet=string.ascii_lowercase + "_-", min_size=1, max_size=4), min_size=1, max_size=4)


@SETTINGS
@given(segments, segments)
def test_scope_prefix_rule_holds_both_ways(a: list[str], b: list[str]) -> None:
    """covers(a, b) holds exactly when a's segments are a prefix of b's: a extended by any
    segments is covered, and whenever covers holds b starts with a's segments; covers both ways
    means equal."""
    sa, sb = ":".join(a), ":".join(b)
    assert covers(sa, sb) == (b[: len(a)] == a)
    assert covers(sa, ":".join(a + b))
    assert covers(sa, sa)
    if covers(sa, sb) and covers(sb, sa):
        assert sa == sb
    # A longer scope never covers a shorter one; a shared string prefix is not enough.
    assert not covers(":".join(a + b), sa)
    assert not covers(sa + "x", sa + ":y")
    assert not covers(sa, sa + "x")
    assert parse_scope(sa) == (sa,)


# -- redirects --------------------------------------------------------------------------------

REGISTERED = {
    "c1": (REDIRECT,),
    "c2": ("http://127.0.0.1/cb", "https://b.example.com/x?y=1", "http://[::1]:8000/cb"),
}


def _variants(uri: str) -> list[str]:
    return [uri, uri + "/", uri.upper(), uri + "?z=1", uri + "#f", uri[:-1], uri.replace("https", "http")]


redirect_candidates = st.one_of(
    st.sampled_from([v for uris in REGISTERED.values() for u in uris for v in _variants(u)]),
    st.builds(
        lambda port, path: f"http://127.0.0.1:{port}{path}",
        st.integers(0, 70000),
        st.sampled_from(["/cb", "/cb/", "", "/x"]),
    ),
    st.builds(lambda port: f"http://[::1]:{port}/cb", st.integers(0, 70000)),
    st.builds(lambda port: f"http://localhost:{port}/cb", st.integers(0, 70000)),
    st.text(max_size=40),
)
param_values = {
    "client_id": st.one_of(st.sampled_from(["c1", "c2", "ghost", ""]), st.text(max_size=10)),
    "response_type": st.one_of(st.sampled_from(["code", "token", "code id_token", ""]), st.text(max_size=8)),
    "code_challenge": st.one_of(st.just(pkce.s256(VERIFIER)), st.text(max_size=50)),
    "code_challenge_method": st.sampled_from(["S256", "plain", "", "s256"]),
    "state": st.text(max_size=20),
    "scope": st.one_of(st.sampled_from(["tools:list", "admin", "tools:call:x"]), st.text(max_size=15)),
    "resource": st.one_of(st.sampled_from([RESOURCE, OTHER_RESOURCE, RESOURCE + "#x", "/rel"]), st.text(max_size=15)),
    "redirect_uri": redirect_candidates,
}
pairs_strategy = st.lists(
    st.one_of(
        *[st.tuples(st.just(name), values) for name, values in param_values.items()],
        st.tuples(st.text(max_size=8), st.text(max_size=8)),
    ),
    max_size=14,
)


def _assert_location_registered(resp: Response, client_id: str | None) -> None:
    """The Location, with the parameters we appended removed, matches a registered URI
    (a loopback-port variant at most) of the client the request named."""
    location = resp.header("location")
    if location is None:
        return
    assert client_id in REGISTERED, location
    for i, ch in enumerate(location):
        if ch not in "?&":
            continue
        rest = location[i + 1 :]
        if not (rest.startswith("code=") or rest.startswith("error=")):
            continue
        if any(matches(location[:i], registered) for registered in REGISTERED[client_id]):
            return
    raise AssertionError(f"{location!r} is not a registered redirect URI of {client_id!r}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["c1", "c2", None]),
    st.one_of(st.none(), redirect_candidates),
    pairs_strategy,
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["approve", "deny", "none"]),
)
def test_redirects_only_ever_go_to_registered_uris(
    client_id: str | None, redirect_uri: str | None, extra: list[tuple[str, str]], method: str, decision: str
) -> None:
    """No response of the authorization endpoint, approve or deny, error responses included,
    carries a Location that is not (a loopback-port variant of) a redirect URI registered for
    the client the request names; error pages carry no Location at all."""
    h = Harness()
    for cid, uris in REGISTERED.items():
        add_client(h, cid, uris)
    pairs: list[tuple[str, str]] = []
    if client_id is not None:
        pairs.append(("client_id", client_id))
    if redirect_uri is not None:
        pairs.append(("redirect_uri", redirect_uri))
    pairs.extend(extra)
    if method == "GET":
        req = h.request("GET", "/authorize", query=pairs)
    else:
        req = h.request("POST", "/authorize", form=pairs)
    out = h.run(authorize.handle(h.ctx(), req))
    named = [v for k, v in pairs if k == "client_id" and v != ""]
    named_client = named[0] if len(named) == 1 else None
    if isinstance(out, ConsentRequired):
        assert named_client in REGISTERED
        if decision == "approve":
            out = h.run(authorize.approve(h.ctx(), out.ticket, "alice"))
        elif decision == "deny":
            out = h.run(authorize.deny(h.ctx(), out.ticket))
        else:
            return
    assert isinstance(out, Response)
    if out.status == 303:
        _assert_location_registered(out, named_client)
        params = location_params(out)
        assert params["iss"] == ISSUER
    else:
        assert out.header("location") is None
        assert out.status in (400, 405)


# -- arbitrary input --------------------------------------------------------------------------

header_pairs = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["Content-Type", "Authorization", "Host", "Origin"]), st.text(max_size=40)),
        st.tuples(st.just("Content-Type"), st.sampled_from(["application/x-www-form-urlencoded", "application/json"])),
        st.tuples(
            st.just("Authorization"), st.builds(lambda a, b: basic(a, b)[1], st.text(max_size=8), st.text(max_size=8))
        ),
        st.tuples(st.just("Authorization"), st.builds(lambda t: "Bearer " + t, st.text(max_size=30))),
        st.tuples(st.text(max_size=10), st.text(max_size=10)),
    ),
    max_size=4,
)
any_text = st.text(st.characters(codec="utf-8"), max_size=30) | st.text(max_size=30)
query_pairs = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "client_id",
                "redirect_uri",
                "grant_type",
                "code",
                "code_verifier",
                "refresh_token",
                "scope",
                "resource",
                "response_type",
                "state",
                "code_challenge",
                "code_challenge_method",
                "token",
                "token_type_hint",
                "client_secret",
            ]
        )
        | st.text(max_size=6),
        any_text,
    ),
    max_size=10,
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass"),
        query_pairs,
    ),
    st.sampled_from([b'{"redirect_uris": ["https://a.example/cb"]}', b"{}", b"[]", b'{"a":1,"a":2}', b"NaN"]),
)
methods = st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get", ""]) | st.text(max_size=6)


def _requests() -> st.SearchStrategy[HttpRequest]:
    return st.builds(HttpRequest, methods, st.just("/"), query_pairs, header_pairs, bodies)


def _assert_spec_answer(out: object) -> None:
    if isinstance(out, ConsentRequired):
        return
    assert isinstance(out, Response), out
    assert out.status < 500, (out.status, out.body)
    if out.status >= 400 and out.header("content-type") == "application/json" and out.body:
        body = out.json()
        assert isinstance(body.get("error"), str)


def _prepared() -> Harness:
    h = Harness()
    add_client(h)
    add_client(h, "conf", secret="pw")
    return h


@SETTINGS
@given(_requests())
def test_gn_03_arbitrary_input_to_authorize_never_raises(req: HttpRequest) -> None:
    """Any request at all to the authorization endpoint ends in a 4xx page, a 303 redirect or
    ConsentRequired; never an exception."""
    h = _prepared()
    out = h.run(authorize.handle(h.ctx(), req))
    _assert_spec_answer(out)
    if isinstance(out, Response):
        assert out.status in (303, 400, 405)


@SETTINGS
@given(_requests())
def test_gn_03_arbitrary_input_to_token_never_raises(req: HttpRequest) -> None:
    """Any request at all to the token endpoint gets a JSON error of RFC 6749 §5.2 (or tokens);
    never an exception, never a 5xx."""
    h = _prepared()
    out = h.run(token.handle(h.ctx(), req))
    _assert_spec_answer(out)
    assert out.header("cache-control") == "no-store"


@SETTINGS
@given(
    st.sampled_from([*routes(make_config()), "/nowhere"]) | st.text(max_size=20),
    _requests(),
)
def test_gn_03_arbitrary_input_to_every_endpoint_never_raises(path: str, req: HttpRequest) -> None:
    """Through the router, any request to any path (every one in its table, or any text) gets a spec
    answer below 500; never an exception."""
    h = _prepared()
    req = HttpRequest(req.method, path, req.query, req.headers, req.body)
    out = h.run(route(h.ctx(), req))
    _assert_spec_answer(out)


@FEW
@given(
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),
    st.sampled_from(["state", "redirect_uri", "client_id", "scope", "resource"]),
)
def test_gn_03_lone_surrogates_in_parameters_never_raise(junk: str, name: str) -> None:
    """Text no encoder accepts (lone surrogates, as a careless adapter may decode them) in any
    authorization parameter is answered, never raised."""
    h = _prepared()
    query = az_query(state="s", scope="tools:list")
    query[name] = query[name] + junk
    out = h.run(authorize.handle(h.ctx(), h.request("GET", "/authorize", query=query)))
    if isinstance(out, ConsentRequired):
        out = h.run(authorize.approve(h.ctx(), out.ticket, "alice"))
    _assert_spec_answer(out)


# -- form parsing ------------------------------------------------------------------------------

_FORM_PIECES = [*"ab=&+%;3Fe9C", "%00", "%C3%A9", "%e2%82", "%ff", "\u00e9"]
_FORM_TEXT = st.lists(st.sampled_from(_FORM_PIECES), max_size=30).map("".join)


@SETTINGS
@given(_FORM_TEXT, st.sampled_from(["strict", "surrogateescape"]))
def test_split_form_reads_exactly_what_parse_qsl_reads(text: str, errors: str) -> None:
    """``split_form(text, errors)`` gives the pairs ``parse_qsl(text, keep_blank_values=True,
    errors=errors)`` gives, and fails (``UnicodeDecodeError``) exactly when it fails: the fast
    paths for fields without ``+`` or ``%`` and for ASCII text change nothing."""
    from urllib.parse import parse_qsl

    from kavach_core.params import split_form

    try:
        want: object = parse_qsl(text, keep_blank_values=True, errors=errors)
    except UnicodeDecodeError:
        want = UnicodeDecodeError
    try:
        got: object = split_form(text, errors)
    except UnicodeDecodeError:
        got = UnicodeDecodeError
    assert got == want


@SETTINGS
@given(st.text(st.characters(blacklist_categories=["Cs"])) | st.text(alphabet=UNRESERVED))
def test_query_values_are_escaped_exactly_as_quote_escapes_them(text: str) -> None:
    """A value ``add_query`` appends is ``quote(text, safe="")``: only unreserved characters
    stay as they are (RFC 3986 §2.3), whether or not the unreserved-only shortcut is taken."""
    from urllib.parse import quote

    from kavach_core.http import _escaped, add_query

    assert _escaped(text) == quote(text, safe="")
    assert add_query("https://c.example/cb?x=1", [("v", text)]) == f"https://c.example/cb?x=1&v={quote(text, safe='')}"
