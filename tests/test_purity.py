"""Purity of the core (design: "sans-IO"): importing and exercising ``kavach_core`` loads no web
framework, event loop, socket, HTTP client or database driver, and it reads no clock and no
entropy except the ones injected through :class:`~kavach_core.context.Context`.

Both checks run in a fresh interpreter, so nothing the test runner imported can hide or fake
an import.

And, read from the source: the modules that compare secrets never compare one with ``==`` (GN-02).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = (
    "starlette",
    "flask",
    "aiohttp",
    "asyncio",
    "socket",
    "sqlite3",
    "http.client",
    "urllib.request",
    "httpx",
    "requests",
    "psycopg",
    "redis",
)

SCRIPT = textwrap.dedent(
    r"""
    import hashlib, importlib, json, pkgutil, sys

    FORBIDDEN = json.loads(sys.argv[1])
    report = {}

    import kavach_core
    names = sorted(m.name for m in pkgutil.walk_packages(kavach_core.__path__, "kavach_core."))
    for name in names:
        importlib.import_module(name)
    report["modules"] = names

    # -- forbid every clock and entropy source the core could reach on its own -------------------
    import datetime, os, random, secrets, time, uuid

    calls = []

    def forbidden(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"the core called {name}")
        return refuse

    replaced = {}
    for mod, attr in [
        (time, "time"), (time, "time_ns"), (time, "monotonic"), (time, "monotonic_ns"),
        (time, "perf_counter"), (time, "localtime"), (time, "gmtime"), (time, "sleep"),
        (os, "urandom"), (os, "getrandom"), (uuid, "uuid1"), (uuid, "uuid4"),
        (secrets, "token_bytes"), (secrets, "token_hex"), (secrets, "token_urlsafe"),
        (secrets, "randbits"), (secrets, "choice"), (secrets, "randbelow"),
    ]:
        if hasattr(mod, attr):
            original = getattr(mod, attr)
            replaced[id(original)] = forbidden(f"{mod.__name__}.{attr}")
            setattr(mod, attr, replaced[id(original)])
    for attr in dir(random):
        value = getattr(random, attr)
        if not attr.startswith("_") and callable(value) and not isinstance(value, type):
            replaced[id(value)] = forbidden(f"random.{attr}")
            setattr(random, attr, replaced[id(value)])
    for cls in (random.Random, random.SystemRandom):
        for attr in ("random", "getrandbits", "randbytes", "seed"):
            setattr(cls, attr, forbidden(f"{cls.__name__}.{attr}"))

    class Clockless(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return forbidden("datetime.now")()

        @classmethod
        def utcnow(cls):
            return forbidden("datetime.utcnow")()

        @classmethod
        def today(cls):
            return forbidden("datetime.today")()

    class Dateless(datetime.date):
        @classmethod
        def today(cls):
            return forbidden("date.today")()

    real_datetime, real_date = datetime.datetime, datetime.date
    datetime.datetime, datetime.date = Clockless, Dateless
    # Names the core bound at import time (``from time import time``) are swapped too.
    for name in names:
        module = sys.modules[name]
        for attr, value in list(vars(module).items()):
            if value is real_datetime:
                setattr(module, attr, Clockless)
            elif value is real_date:
                setattr(module, attr, Dateless)
            elif id(value) in replaced and callable(value):
                setattr(module, attr, replaced[id(value)])

    # -- a complete flow with injected clock and entropy ------------------------------------------
    from urllib.parse import parse_qsl, urlsplit
    import base64

    from kavach_core import effects as fx
    from kavach_core.config import Config, ProtectedResource
    from kavach_core.context import Context
    from kavach_core.drivers import arun, run
    from kavach_core.endpoints import authorize, token
    from kavach_core.http import HttpRequest
    from kavach_core.memory_store import MemoryStore
    from kavach_core.router import route

    counter = [0]

    def entropy(n):
        out = b""
        while len(out) < n:
            counter[0] += 1
            out += hashlib.sha256(b"purity" + counter[0].to_bytes(8, "big")).digest()
        return out[:n]

    RESOURCE = "https://mcp.example.com/mcp"
    config = Config(issuer="https://as.example.com", resources=[ProtectedResource(RESOURCE)], secret=b"s" * 32)
    store = MemoryStore()
    now = [1_700_000_000]

    def ctx():
        return Context(config, now[0], entropy)

    def form(pairs, headers=()):
        from urllib.parse import urlencode
        return urlencode(pairs).encode(), (("Content-Type", "application/x-www-form-urlencoded"), *headers)

    def post(path, pairs, headers=()):
        body, hdrs = form(pairs, headers)
        return run(route(ctx(), HttpRequest("POST", path, (), hdrs, body)), store)

    # Registration through the router.
    reg = run(route(ctx(), HttpRequest(
        "POST", "/register", (), (("Content-Type", "application/json"),),
        json.dumps({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "Purity",
                    "token_endpoint_auth_method": "none"}).encode(),
    )), store)
    assert reg.status == 201, reg.body
    client_id = json.loads(reg.body)["client_id"]

    verifier = "p" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = (("client_id", client_id), ("redirect_uri", "http://127.0.0.1:9000/cb"), ("response_type", "code"),
             ("code_challenge", challenge), ("code_challenge_method", "S256"), ("state", "s"),
             ("scope", "tools:list tools:call"))
    consent = run(route(ctx(), HttpRequest("GET", "/authorize", query)), store)
    resp = run(authorize.approve(ctx(), consent.ticket, "alice"), store)
    code = dict(parse_qsl(urlsplit(resp.header("location")).query))["code"]
    now[0] += 5
    tok = post("/token", (("grant_type", "authorization_code"), ("code", code), ("code_verifier", verifier),
                          ("client_id", client_id), ("redirect_uri", "http://127.0.0.1:9000/cb")))
    assert tok.status == 200, tok.body
    body = json.loads(tok.body)
    now[0] += 30
    # Refresh through the async driver, run by hand: no event loop is needed for the memory store.
    body_bytes, hdrs = form((("grant_type", "refresh_token"), ("refresh_token", body["refresh_token"]),
                             ("client_id", client_id)))
    coroutine = arun(token.handle(ctx(), HttpRequest("POST", "/token", (), hdrs, body_bytes)), store)
    try:
        coroutine.send(None)
        raise AssertionError("arun should finish without suspending on the memory store")
    except StopIteration as stop:
        refreshed = stop.value
    assert refreshed.status == 200, refreshed.body
    body2 = json.loads(refreshed.body)

    # The guard, introspection, revocation, metadata and JWKS.
    from kavach_core import guard
    bearer = "Bearer " + body2["access_token"]
    principal = run(guard.authenticate(config, RESOURCE, bearer, ("tools:list",), now[0]), store)
    assert isinstance(principal, guard.Principal), principal
    intro = post("/introspect", (("token", body2["access_token"]), ("client_id", client_id)))
    assert intro.status in (200, 401), intro.body
    rev = post("/revoke", (("token", body2["refresh_token"]), ("client_id", client_id)))
    assert rev.status == 200, rev.body
    for path in ("/.well-known/oauth-authorization-server", "/jwks.json", "/.well-known/oauth-protected-resource/mcp"):
        got = run(route(ctx(), HttpRequest("GET", path)), store)
        assert got.status == 200, (path, got.body)
    gone = post("/token", (("grant_type", "refresh_token"), ("refresh_token", body2["refresh_token"]),
                           ("client_id", client_id)))
    assert gone.status == 400

    report["calls"] = calls
    report["forbidden_loaded"] = sorted(m for m in FORBIDDEN if m in sys.modules)
    report["kavach_loaded"] = sorted(m for m in sys.modules if m == "kavach" or m.startswith("kavach."))
    print(json.dumps(report))
    """
)


def _run_fresh(script: str = SCRIPT) -> dict[str, object]:
    """The report ``script`` (the harness above, or a variant of it) prints from a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script, json.dumps(FORBIDDEN)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": ""},  # -I: no PYTHON* variables, no user site, no cwd on sys.path
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_purity_core_loads_no_io_and_reads_only_injected_clock_and_entropy() -> None:
    """Invariant: after importing every kavach_core module and running register, authorize,
    approve, token, refresh (async driver), guard, introspect, revoke, metadata and JWKS with
    the clock and entropy sources of the interpreter booby-trapped, no forbidden module is
    loaded, no adapter package is loaded, and nothing called a clock or entropy source."""
    report = _run_fresh()
    modules = report["modules"]
    assert isinstance(modules, list)
    for expected in ("kavach_core.endpoints.authorize", "kavach_core.endpoints.token", "kavach_core.router"):
        assert expected in modules
    assert report["forbidden_loaded"] == []
    assert report["kavach_loaded"] == []
    assert report["calls"] == []


def test_purity_traps_would_catch_a_clock_read() -> None:
    """The trap is live: the same harness reports a direct time.time() call (the test can fail)."""
    probe = SCRIPT.replace(
        'report["calls"] = calls',
        'import time as _t\ntry:\n    _t.time()\nexcept AssertionError:\n    pass\nreport["calls"] = calls',
    )
    assert _run_fresh(probe)["calls"] == ["time.time"]


# -- secrets are compared in constant time (GN-02) -------------------------------------------

SECRET_COMPARING_MODULES = (
    "kavach_core/pkce.py",
    "kavach_core/opaque.py",
    "kavach_core/client_auth.py",
    "kavach_core/presented_tokens.py",
    "kavach_core/endpoints/registration.py",
    "adapters/kavach/mcp_sessions.py",
    "adapters/kavach/sessions.py",
)
"""The modules that compare client secrets, PKCE verifiers, MACs, tags, CSRF tokens and stamps.
test_core_units.py and test_adapter_shared.py check that each comparison goes through
``hmac.compare_digest``; this checks that no ``==`` on a secret sits beside them."""

_SECRET_NAME = re.compile(r"secret|digest|mac|tag|verifier|challenge|token|stamp|ticket", re.IGNORECASE)
_PROMISE = re.compile(r"constant[- ]time", re.IGNORECASE)


def _names(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def _plain(node: ast.expr) -> bool:
    """A literal or a length: comparing with one, at whatever speed, discloses nothing secret."""
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len"


def variable_time_comparisons(source: str) -> list[str]:
    """Each ``==`` or ``!=`` in ``source`` with no literal or ``len(...)`` side, where a side
    names a secret-like value (secret, digest, mac, tag, verifier, challenge, token, stamp,
    ticket) or which sits in a function whose docstring promises a constant-time comparison."""
    tree = ast.parse(source)
    promised: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and _PROMISE.search(ast.get_docstring(fn) or ""):
            promised.update(id(node) for node in ast.walk(fn))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(_plain(side) for side in sides):
            continue
        if id(node) in promised or any(_SECRET_NAME.search(name) for side in sides for name in _names(side)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", SECRET_COMPARING_MODULES)
def test_gn_02_no_secret_is_compared_with_equality(path: str) -> None:
    assert variable_time_comparisons((ROOT / path).read_text()) == []


VARIABLE_TIME_FORMS = [
    (
        "kavach_core/pkce.py",
        "hmac.compare_digest(s256(verifier).encode(), challenge.encode())",
        "s256(verifier) == challenge",
    ),
    (
        "kavach_core/opaque.py",
        'hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))',
        "a == b",
    ),
    (
        "kavach_core/opaque.py",
        "not hmac.compare_digest(raw[_GRANT_ID_BYTES + 4 :], _refresh_mac(key, grant_bytes, generation))",
        "raw[_GRANT_ID_BYTES + 4 :] != _refresh_mac(key, grant_bytes, generation)",
    ),
    (
        "adapters/kavach/mcp_sessions.py",
        'hmac.compare_digest(tag.encode("latin-1", "replace"), self._tag(session, owner))',
        'tag.encode("latin-1", "replace") == self._tag(session, owner)',
    ),
    ("adapters/kavach/sessions.py", "not hmac.compare_digest(mac, self._mac(payload))", "mac != self._mac(payload)"),
    (
        "adapters/kavach/sessions.py",
        'hmac.compare_digest(self.stamp.encode("utf-8"), current.encode("utf-8"))',
        "self.stamp == current",
    ),
    (
        "adapters/kavach/sessions.py",
        "hmac.compare_digest(expected, session.ticket_digest)",
        "expected == session.ticket_digest",
    ),
    (
        "adapters/kavach/sessions.py",
        'hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))',
        "expected == token",
    ),
]


@pytest.mark.parametrize(("path", "constant_time", "variable_time"), VARIABLE_TIME_FORMS)
def test_gn_02_the_check_finds_each_comparison_rewritten_with_equality(
    path: str, constant_time: str, variable_time: str
) -> None:
    """The check can fail: each constant-time comparison of the modules, rewritten with ``==``
    or ``!=``, is found (and it is the only finding in the module)."""
    source = (ROOT / path).read_text()
    assert source.count(constant_time) == 1, f"{path} no longer compares as {constant_time}"
    line = source[: source.index(constant_time)].count("\n") + 1
    found = variable_time_comparisons(source.replace(constant_time, variable_time))
    assert found == [f"line {line}: {ast.unparse(ast.parse(variable_time))}"]


def test_gn_02_the_check_spares_comparisons_of_what_is_not_secret() -> None:
    assert variable_time_comparisons("if creds.method != registered or len(raw) != size: pass") == []
    assert variable_time_comparisons("if token.count('.') == 2 and registered == 'none': pass") == []
    promised = 'def f(a, b):\n    """Constant-time."""\n    return a == b\n'
    assert variable_time_comparisons(promised) == ["line 3: a == b"]
