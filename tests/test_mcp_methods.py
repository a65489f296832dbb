"""The MCP method -> scope map (design "Scope grammar"; RS-03 step-up)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import RESOURCE, Harness
from hypothesis import given, settings
from hypothesis import strategies as st
from token_kit import mint, put_grant

from kavach_core import guard
from kavach_core.errors import ConfigurationError, KavachError, OAuthError
from kavach_core.http import Response
from kavach_core.mcp_methods import MAX_REQUIRED_SCOPES, UNKNOWN_METHOD_SCOPE, McpScopeMap, required_scopes
from kavach_core.scopes import MAX_SCOPE_TOKENS, covers, is_valid_scope, parse_scope


def _body(method: str, params: Any = None, **extra: Any) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, **extra}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("method", "params", "scopes"),
    [
        ("tools/list", {}, ("tools:list",)),
        ("tools/call", {"name": "search", "arguments": {"q": "x"}}, ("tools:call:search",)),
        ("resources/list", None, ("resources:list",)),
        ("resources/templates/list", None, ("resources:list",)),
        ("resources/read", {"uri": "file:///a"}, ("resources:read",)),
        ("resources/subscribe", {"uri": "file:///a"}, ("resources:read",)),
        ("resources/unsubscribe", {"uri": "file:///a"}, ("resources:read",)),
        ("prompts/list", None, ("prompts:list",)),
        ("prompts/get", {"name": "greet"}, ("prompts:get:greet",)),
        ("prompts/get", {"name": "a:b"}, ("prompts:get",)),
        ("initialize", {"protocolVersion": "2025-11-25"}, ()),
        ("ping", None, ()),
        ("notifications/initialized", None, ()),
        ("notifications/cancelled", {"requestId": 1}, ()),
        ("notifications/roots/list_changed", None, ()),
        ("logging/setLevel", {"level": "info"}, ()),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"}}, ("prompts:get:greet",)),
        ("completion/complete", {"ref": {"type": "ref/resource", "uri": "file:///{p}"}}, ("resources:read",)),
        ("completion/complete", {"ref": {}}, (UNKNOWN_METHOD_SCOPE,)),
        ("completion/complete", {"ref": {"type": "ref/tool"}}, (UNKNOWN_METHOD_SCOPE,)),
        ("completion/complete", None, (UNKNOWN_METHOD_SCOPE,)),
        ("subscriptions/listen", None, ()),
        ("subscriptions/listen", {}, ()),
        ("subscriptions/listen", {"notifications": {}}, ()),
        ("subscriptions/listen", {"notifications": {"toolsListChanged": False, "resourceSubscriptions": []}}, ()),
        ("subscriptions/listen", {"notifications": {"toolsListChanged": None, "resourceSubscriptions": None}}, ()),
        ("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, ("tools:list",)),
        (
            "subscriptions/listen",
            {
                "notifications": {
                    "promptsListChanged": True,
                    "resourcesListChanged": 1,
                    "resourceSubscriptions": ["file:///secret"],
                }
            },
            ("prompts:list", "resources:list", "resources:read"),
        ),
        ("subscriptions/listen", {"notifications": {"resourceSubscriptions": "file:///x"}}, ("resources:read",)),
        ("subscriptions/listen", {"notifications": {"tasksChanged": True}}, (UNKNOWN_METHOD_SCOPE,)),
        ("subscriptions/listen", {"notifications": ["toolsListChanged"]}, (UNKNOWN_METHOD_SCOPE,)),
        ("subscriptions/listen", [], (UNKNOWN_METHOD_SCOPE,)),
        ("tasks/get", {"taskId": "t"}, (UNKNOWN_METHOD_SCOPE,)),
        ("sampling/createMessage", None, (UNKNOWN_METHOD_SCOPE,)),
        ("Tools/list", None, (UNKNOWN_METHOD_SCOPE,)),
        ("tools/list ", None, (UNKNOWN_METHOD_SCOPE,)),
    ],
)
def test_default_map(method: str, params: Any, scopes: tuple[str, ...]) -> None:
    assert required_scopes(_body(method, params)) == scopes


def test_unknown_methods_fail_closed_with_a_scope_no_default_catalogue_has() -> None:
    from kavach_core.config import DEFAULT_MCP_SCOPES

    assert UNKNOWN_METHOD_SCOPE not in {s for s, _ in DEFAULT_MCP_SCOPES}
    assert is_valid_scope(UNKNOWN_METHOD_SCOPE)
    assert required_scopes(_body("x/y")) == (UNKNOWN_METHOD_SCOPE,)
    assert required_scopes(_body("x/y"), McpScopeMap(unknown_method_scopes=())) == ()
    assert required_scopes(_body("x/y"), McpScopeMap(unknown_method_scopes="admin")) == ("admin",)


@pytest.mark.parametrize(
    "params",
    [
        None,
        {},
        [],
        {"name": 5},
        {"name": ""},
        {"name": "a:b"},
        {"name": "a b"},
        {"name": 'a"b'},
        {"name": "é"},
        {"name": ["search"]},
    ],
)
def test_odd_tool_names_require_the_whole_tools_call(params: Any) -> None:
    """``tools:call:a`` must not cover tool ``a:b``: names the prefix rule cannot reason about need ``tools:call``."""
    assert required_scopes(_body("tools/call", params)) == ("tools:call",)


def test_tool_names_with_mcp_allowed_characters_are_scoped_per_tool() -> None:
    for name in ("search", "get_weather", "fs.read", "a-b", "A1"):
        assert required_scopes(_body("tools/call", {"name": name})) == (f"tools:call:{name}",)


def test_per_tool_and_per_prompt_switches() -> None:
    coarse = McpScopeMap(per_tool=False, per_prompt=False)
    assert required_scopes(_body("tools/call", {"name": "search"}), coarse) == ("tools:call",)
    assert required_scopes(_body("prompts/get", {"name": "greet"}), coarse) == ("prompts:get",)
    assert required_scopes(_body("prompts/get", {"name": "a:b"}), coarse) == ("prompts:get",)


def test_every_narrowed_scope_consent_describes_is_one_the_default_map_honours() -> None:
    """Consent describes ``prompts:get:greet`` as "Use the prompt greet" and ``tools:call:search``
    as "Run the tool search": a token holding only that scope passes the default map for exactly
    that prompt or tool (before, prompts always needed the whole ``prompts:get``, so a client
    granted one prompt was refused it). No wording promises a single resource, which no scope
    can name (a resource URI is no single scope segment)."""
    from kavach_core.config import NARROW_WORDING, ProtectedResource
    from kavach_core.scopes import covers

    assert set(NARROW_WORDING) == {"tools:call", "prompts:get"}
    resource = ProtectedResource("https://mcp.example.com/mcp")
    narrowed = (("prompts:get:greet", "prompts/get", "greet"), ("tools:call:search", "tools/call", "search"))
    for granted, method, name in narrowed:
        assert name in resource.describe(granted) and "limited" not in resource.describe(granted)
        needed = required_scopes(_body(method, {"name": name}))
        assert all(covers(granted, scope) for scope in needed), needed
        other = required_scopes(_body(method, {"name": "other"}))
        assert not all(covers(granted, scope) for scope in other), other
    assert "limited to" in resource.describe("resources:read:about")


def test_overrides_replace_the_default_for_that_method() -> None:
    scope_map = McpScopeMap(
        overrides={"tools/list": ["catalog:read"], "tasks/get": (), "tools/call": "tools:run", "initialize": ["x"]}
    )
    assert required_scopes(_body("tools/list"), scope_map) == ("catalog:read",)
    assert required_scopes(_body("tasks/get"), scope_map) == ()
    assert required_scopes(_body("tools/call", {"name": "search"}), scope_map) == ("tools:run",)
    assert required_scopes(_body("initialize"), scope_map) == ("x",)
    assert required_scopes(_body("resources/read"), scope_map) == ("resources:read",)


def test_scopes_for_answers_like_the_body_rule() -> None:
    """The public per-method answer agrees with the body rule, overrides first, repeats dropped."""
    scope_map = McpScopeMap(overrides={"notifications/secret": ["a", "b", "a"], "ping": ["p"]})
    for method, params in [
        ("tools/list", None),
        ("tools/call", {"name": "search"}),
        ("notifications/initialized", None),
        ("notifications/secret", None),
        ("ping", None),
        ("prompts/get", {"name": "greet"}),
        ("x/y", None),
    ]:
        assert scope_map.scopes_for(method, params) == required_scopes(_body(method, params), scope_map)
    assert scope_map.scopes_for("notifications/secret") == ("a", "b")
    assert scope_map.scopes_for("ping") == ("p",)
    assert scope_map.scopes_for("notifications/other") == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overrides": {"tools/list": ["bad scope"]}},
        {"overrides": {"": ["a"]}},
        {"overrides": [("a", ["x"]), ("a", ["y"])]},
        {"unknown_method_scopes": ["a::b"]},
    ],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        McpScopeMap(**kwargs)


def test_batch_requires_every_members_scopes() -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 4, "result": {}},
    ]
    assert required_scopes(json.dumps(batch).encode()) == ("tools:list", "tools:call:search")
    assert required_scopes(b"[]") == ()


def test_a_batch_inside_a_batch_fails_closed() -> None:
    """No server should run a message nested in a batch's member, but a lenient one might flatten
    it: the nested array needs what an unknown method needs, besides its siblings' scopes."""
    nested = b'[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin"}}]]'
    assert required_scopes(nested) == (UNKNOWN_METHOD_SCOPE,)
    mixed = b'[{"jsonrpc":"2.0","id":2,"method":"tools/list"},[{}]]'
    assert required_scopes(mixed) == ("tools:list", UNKNOWN_METHOD_SCOPE)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"  \r\n",
        b"null",
        b"42",
        b'"tools/call"',
        b'{"jsonrpc":"2.0","id":1,"result":{}}',
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}',
        b'{"method":5}',
        b'{"method":null}',
    ],
)
def test_json_that_is_not_a_json_rpc_request_needs_no_extra_scope(body: bytes) -> None:
    """Documented choice: nothing here is run by the MCP server; a valid token is still required."""
    assert required_scopes(body) == ()


_CALL_ADMIN = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin","arguments":{}%s}}'


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b"[" * 100_000,
        # readable by other servers' parsers, not by Python's: a tools/call must not pass unscoped
        (_CALL_ADMIN % (',"_meta":{"x":' + "[" * 2000 + "]" * 2000 + "}")).encode(),
        (_CALL_ADMIN % (',"_meta":{"n":' + "9" * 5000 + "}")).encode(),
    ],
    ids=["text", "cut", "bytes", "deep-garbage", "deep-call", "long-number-call"],
)
def test_a_body_that_cannot_be_read_is_an_unknown_method(body: bytes) -> None:
    """Fail closed: another JSON parser may read what Python's cannot and run the call in it."""
    assert required_scopes(body) == (UNKNOWN_METHOD_SCOPE,)
    assert McpScopeMap(unknown_method_scopes=("tools:call",)).required_scopes(body) == ("tools:call",)


def test_duplicate_members_require_the_scopes_of_every_reading() -> None:
    """A parser differential (first-wins vs last-wins) cannot smuggle a method past the guard."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"search"}}'
    assert set(required_scopes(body)) == {"tools:list", "tools:call:search"}
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"danger"}}'
    assert set(required_scopes(body)) == {"tools:call:safe", "tools:call:danger"}


_CALL = '{"jsonrpc":"2.0","id":1,%s}'


@pytest.mark.parametrize(
    "members",
    [
        '"method":"tools/call","params":{"name":"search","Name":"admin"}',
        '"Method":"tools/call","params":{"name":"admin"}',  # no "method" at all for a strict reader
        '"method":"ping","METHOD":"tools/call","params":{"name":"admin"}',
        '"method":"tools/call","params":{"name":"search"},"param\u017f":{"name":"admin"}',  # long s: Go folds it
        '"method":"tools/call","params":{"name":"search","name\\u0000":"admin"}',  # a NUL some decoders drop
        '"method":"tools/call","params":{"name":"search","\uff4e\uff41\uff4d\uff45":"admin"}',  # fullwidth
        '"method":"tools/call","PARAMS":{"name":"admin"},"params":{"name":"search"}',
    ],
)
def test_a_member_spelled_otherwise_requires_what_a_lenient_parser_reads(members: str) -> None:
    """JSON-RPC member names are case-sensitive, but Go's encoding/json (and MCP servers built on
    it) matches them ignoring case and folds ``ſ`` and the Kelvin sign; other decoders drop NULs:
    the guard and such a server would read different calls from the same bytes. A member the map
    reads, spelled otherwise, also counts as that member, first or last: ``tools:call:admin`` is
    required however the call to ``admin`` is spelled."""
    body = (_CALL % members).encode()
    assert "tools:call:admin" in required_scopes(body), members


def test_respelled_members_deeper_in_what_the_map_reads_count_too() -> None:
    """``ref`` of ``completion/complete`` and the flags of ``subscriptions/listen`` are read too."""
    completing = '"method":"completion/complete","params":{"ref":{"type":"ref/resource","TYPE":"ref/prompt"}}'
    assert set(required_scopes((_CALL % completing).encode())) >= {"resources:read", "prompts:get"}
    listening = '"method":"subscriptions/listen","params":{"notifications":{"ToolsListChanged":true}}'
    assert set(required_scopes((_CALL % listening).encode())) >= {"tools:list"}
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"mEthod":"tools/call"}]'
    assert set(required_scopes(batch)) >= {"tools:list", "tools:call"}


def test_plain_messages_and_unread_members_spelled_otherwise_change_nothing() -> None:
    """Only the members the map reads matter: other names, in any case, add no reading."""
    body = b'{"jsonrpc":"2.0","ID":1,"method":"tools/call","params":{"name":"search","Arguments":{"Name":"admin"}}}'
    assert required_scopes(body) == ("tools:call:search",)


_READ = ("method", "params", "name")


def _respelled_name(draw: st.DrawFn, name: str) -> str:
    letters = [
        draw(st.sampled_from([ch, ch.upper()] + (["\u017f"] if ch == "s" else []) + (["\u212a"] if ch == "k" else [])))
        for ch in name
    ]
    return "".join(letters) + draw(st.sampled_from(["", "\x00"]))


@st.composite
def _lenient_messages(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """A tools/call message whose read members may be respelled or repeated, as (the members in
    text order, the message as a case-insensitive last-wins parser such as Go's reads it)."""

    def member(name: str, value: Any) -> tuple[str, Any]:
        return (_respelled_name(draw, name) if draw(st.booleans()) else name, value)

    tools = st.sampled_from(["search", "admin", "x"])
    params = [member("name", draw(tools)) for _ in range(draw(st.integers(1, 3)))]
    pairs = [("jsonrpc", "2.0"), ("id", 1)]
    methods = st.sampled_from(["tools/call", "ping", "tools/list"])
    pairs += [member("method", draw(methods)) for _ in range(draw(st.integers(1, 2)))]
    pairs.append(member("params", params))
    pairs = draw(st.permutations(pairs))

    def go(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            folded = key.replace("\x00", "").replace("\u017f", "s").replace("\u212a", "k").lower()
            out[folded if folded in _READ else key] = go(value) if isinstance(value, list) else value
        return out

    return pairs, go(pairs)


def _text(pairs: list[tuple[str, Any]]) -> str:
    inner = (json.dumps(k) + ":" + (_text(v) if isinstance(v, list) else json.dumps(v)) for k, v in pairs)
    return "{" + ",".join(inner) + "}"


@settings(max_examples=400)
@given(case=_lenient_messages())
def test_what_a_case_insensitive_parser_reads_is_always_required(
    case: tuple[list[tuple[str, Any]], dict[str, Any]],
) -> None:
    """Invariant: for a message whose read members are respelled (case, ``ſ``, Kelvin sign, a
    trailing NUL) or repeated, the scopes required include those of the message as a
    case-insensitive, last-wins parser (Go's encoding/json) reads it."""
    pairs, as_go_reads = case
    required = set(required_scopes(_text(pairs).encode()))
    assert set(required_scopes(json.dumps(as_go_reads).encode())) <= required, (_text(pairs), as_go_reads)


@pytest.mark.parametrize(
    ("body", "needed"),
    [
        # Go's reading: the last of name, name<NUL>, name as they stand in the text: "admin"
        (
            '{"jsonrpc":"2.0","id":1,"method":"ping","method\\u0000":"tools/call",'
            '"params":{"name":"search","name\\u0000":"search","name":"admin"}}',
            "tools:call:admin",
        ),
        # a parser ignoring case but keeping NULs (.NET's, Jackson's option): Name is the last name
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","Name":"admin","name\\u0000":"x"}}',
            "tools:call:admin",
        ),
        # one dropping NULs but minding case: name<NUL> is the last name, Name is another member
        (
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name\\u0000":"x","Name":"y"}}',
            "tools:call:x",
        ),
    ],
)
def test_a_respelled_member_counts_where_it_stands_in_the_text(body: str, needed: str) -> None:
    """Repeats and respellings together: each lenient parser takes the first or last member by its
    place in the text, whichever spelling it has, and each way of matching names counts."""
    assert needed in required_scopes(body.encode())


def test_lenient_decoding_still_finds_the_method() -> None:
    """Bodies a lenient server might still parse are read the same way here."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}}
    text = json.dumps(message)
    for body in (
        text.encode("utf-16"),
        text.encode("utf-16-le"),
        text.encode("utf-32"),
        b"\xef\xbb\xbf" + text.encode(),
        text.encode().replace(b'"search"}', b'"search","arguments":{"q":"\xff"}}'),
        text.replace("}}", ', "n": NaN}}').encode(),
    ):
        assert required_scopes(body) == ("tools:call:search",), body


@settings(max_examples=500)
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    """Invariant: any bytes yield a tuple of valid scopes (or a KavachError), never another exception."""
    try:
        scopes = required_scopes(body)
    except KavachError:
        return
    assert all(is_valid_scope(s) for s in scopes)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["tools/call", "tools/list", "search", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["method", "params", "name", "id", "jsonrpc"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500)
@given(value=_json_values)
def test_arbitrary_json_yields_valid_scopes(value: Any) -> None:
    """Invariant: any JSON document yields valid scope tokens, and a top-level ``tools/call``
    (alone or in a batch) always needs some ``tools:call`` scope."""
    scopes = required_scopes(json.dumps(value).encode())
    assert all(is_valid_scope(s) for s in scopes)
    messages = value if isinstance(value, list) else [value]
    if any(isinstance(m, dict) and m.get("method") == "tools/call" for m in messages):
        assert any(s.startswith("tools:call") for s in scopes)


def test_rs_03_step_up_names_the_tool_scope_end_to_end(h: Harness) -> None:
    """Body -> required scopes -> guard: a ``tools:list`` token calling a tool gets 403 naming ``tools:call:search``."""
    put_grant(h)
    token, _ = mint(h, scopes=("tools:list",))
    body = _body("tools/call", {"name": "search"})
    req = h.request("POST", "/mcp", headers=[("Authorization", f"Bearer {token}")], body=body)
    outcome = h.run(guard.authenticate_request(h.config, RESOURCE, req, required_scopes(req.body), h.now))
    assert isinstance(outcome, Response) and outcome.status == 403
    assert 'scope="tools:call:search"' in (outcome.header("WWW-Authenticate") or "")
    allowed = h.run(guard.authenticate_request(h.config, RESOURCE, req, required_scopes(_body("tools/list")), h.now))
    assert not isinstance(allowed, Response)


# -- the plain-UTF-8 fast path reads every body exactly as the lenient path does ---------------


def _lenient_readings(body: bytes) -> list[object] | None:
    """The reading without the fast path: lenient text, then the decoder's own ``decode``."""
    from kavach_core import mcp_methods as mm

    if not body.strip():
        return []
    try:
        text = mm._text(body)
        try:
            document = json.JSONDecoder(object_pairs_hook=mm._last_wins_strict).decode(text)
        except mm._Duplicate:
            return mm._every_reading(text)
        if mm._respelled(document) or (isinstance(document, list) and any(map(mm._respelled, document))):
            return mm._every_reading(text)
        return [document]
    except (ValueError, RecursionError, OverflowError, MemoryError):
        return None


_PREFIXES = st.sampled_from([b"", b"{", b"[", b"{\x00", b"[\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"{\xff", b" "])
_JSONISH = st.text(alphabet='{}[]":,. \\0123456789abcdefmnotu/NaIy\x00\ufeff\u00e9', max_size=40)


@settings(max_examples=400, deadline=None)
@given(prefix=_PREFIXES, text=_JSONISH, encoding=st.sampled_from(["utf-8", "utf-16-le", "utf-32-be", "latin-1"]))
def test_fast_path_reads_like_the_lenient_path(prefix: bytes, text: str, encoding: str) -> None:
    """Invariant: for any body of an awkward prefix (nothing, a brace or bracket with or without a
    NUL, a UTF-8 or UTF-16 byte order mark, a byte that is not UTF-8, a space) and JSON-like text
    encoded in UTF-8, UTF-16-LE, UTF-32-BE or Latin-1, the fast path's readings equal the lenient
    path's (lenient text, then the strict decoder; every reading of a duplicated or respelled
    member), compared as reprs so that NaN equals NaN; ``None`` (unreadable) included."""
    from kavach_core import mcp_methods as mm

    body = prefix + text.encode(encoding, "replace")
    assert repr(mm._readings(body)) == repr(_lenient_readings(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}',
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"prompts/list"}]',
        b'{"jsonrpc":"2.0","id":NaN,"method":"resources/read"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/\xff"}',
        '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    ],
)
def test_fast_path_examples_read_like_the_lenient_path(body: bytes) -> None:
    from kavach_core import mcp_methods as mm

    assert repr(mm._readings(body)) == repr(_lenient_readings(body))


# -- many names in one request -----------------------------------------------------------------------


def _calls(names: list[str]) -> bytes:
    batch = [{"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": n}} for i, n in enumerate(names)]
    return json.dumps(batch).encode()


def test_a_batch_naming_up_to_the_limit_needs_each_name() -> None:
    names = [f"t{i}" for i in range(MAX_REQUIRED_SCOPES)]
    assert required_scopes(_calls(names + names)) == tuple(f"tools:call:{n}" for n in names)


@pytest.mark.parametrize("count", [MAX_REQUIRED_SCOPES + 1, 52_000])
def test_a_batch_naming_more_needs_the_families_which_cover_every_name(count: int) -> None:
    """Past the limit each named scope is replaced by its family: what is required covers what
    the batch needs by name (the guard asks for no less), and stays one short scope string."""
    names = [f"t{i}" for i in range(count)]
    body = _calls(names[:-1])[:-1] + b', {"jsonrpc": "2.0", "id": 0, "method": "tools/list"}]'
    required = required_scopes(body)
    assert required == ("tools:call", "tools:list")
    assert all(any(covers(r, f"tools:call:{n}") for r in required) for n in names[:-1])


def test_parse_scope_keeps_order_and_refuses_more_than_the_limit() -> None:
    tokens = [f"tools:call:t{i}" for i in range(MAX_SCOPE_TOKENS)]
    assert parse_scope(" ".join(tokens + tokens[::-1])) == tuple(tokens)
    with pytest.raises(OAuthError) as refused:
        parse_scope(" ".join([*tokens, "tools:list"]))
    assert refused.value.error == "invalid_scope"


# -- configuration that is not of the documented shape, and bodies that are not bytes ---------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_tool": "yes"},
        {"per_tool": 1},
        {"per_prompt": None},
        {"overrides": "tools/list"},
        {"overrides": 5},
        {"overrides": ["ab"]},  # a two-character string is no (method, scopes) pair
        {"overrides": [("a",)]},
        {"overrides": [("a", ["x"], "y")]},
        {"overrides": {"a": 5}},
        {"overrides": {5: ["a"]}},
        {"overrides": {"a": [5]}},
        {"unknown_method_scopes": 5},
        {"unknown_method_scopes": [5]},
    ],
)
def test_configuration_of_the_wrong_shape_is_refused_with_configuration_error(kwargs: dict[str, Any]) -> None:
    """Design "Scope grammar": the switches are booleans, ``overrides`` a mapping or
    ``(method, scopes)`` pairs of a method name and a scope or list of scopes (RFC 6749 §3.3
    scope tokens): anything else is refused when the map is made, as a ConfigurationError and
    not whatever Python raises first."""
    with pytest.raises(ConfigurationError):
        McpScopeMap(**kwargs)


@pytest.mark.parametrize("body", ["{}", None, 5, {"method": "tools/call"}, [b"{}"]])
def test_a_body_that_is_not_bytes_raises_only_kavach_error(body: Any) -> None:
    """``required_scopes`` raises nothing but KavachError (module docstring), for a caller that
    passes text, a number or an already parsed body."""
    with pytest.raises(KavachError):
        required_scopes(body)


def test_a_respelled_ref_or_notifications_member_counts_as_that_member() -> None:
    """``ref`` (of ``completion/complete``) and ``notifications`` (of ``subscriptions/listen``)
    are members the map reads: a case-insensitive parser (Go's encoding/json) reads ``REF`` and
    ``Notifications`` as them, so what they ask for is required, as for ``method`` and ``name``."""
    completing = '"method":"completion/complete","params":{"REF":{"type":"ref/prompt","name":"admin"}}'
    assert "prompts:get:admin" in required_scopes((_CALL % completing).encode())
    listening = '"method":"subscriptions/listen","params":{"Notifications":{"toolsListChanged":true}}'
    assert "tools:list" in required_scopes((_CALL % listening).encode())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32-le"])
def test_an_invalid_sequence_in_a_utf16_or_utf32_body_is_replaced_and_the_call_still_read(encoding: str) -> None:
    """RFC 8259 §8.1 and the lenient reading (module docstring): a UTF-16/32 body with a lone
    surrogate in a string is read as a lenient parser reads it, that sequence replaced, so the
    ``tools/call`` in it still needs its tool's scope (and is not misread as another encoding)."""
    text = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"\ud800"}}}'
    assert required_scopes(text.encode(encoding, "surrogatepass")) == ("tools:call:search",)
