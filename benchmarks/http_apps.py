"""The ASGI apps the HTTP benchmark serves under uvicorn (``--factory benchmarks.http_apps:app``).

``KAVACH_BENCH_APP`` picks one: ``plain`` (the trivial endpoint alone: the ceiling),
``kavach`` (:class:`kavach.starlette.KavachGuard` in front of it), ``kavach-store`` (the same
guard on the shared store ``KAVACH_BENCH_STORE`` names: an SQLite file, a PostgreSQL schema or a
Redis prefix, filled by :func:`shared_stores`; ``kavach-store-unchecked``: a PostgreSQL store
lending its pooled connections without checking them first), ``kavach-adapter`` and
``kavach-adapter-scopes`` (the same guard with fixed answers in place of its checks, part f's
breakdown), ``least`` (the least any bearer guard does: part f's bound on what a guard can
reach), ``mcp`` (the MCP SDK's
``AuthenticationMiddleware`` + ``BearerAuthBackend`` + ``RequireAuthMiddleware`` in front of it,
with a token verifier that checks the same ES256 JWT with PyJWT), ``kavach-token`` (kavach's
token endpoint) and ``mcp-token`` (the SDK's ``TokenHandler`` with a dict-backed provider).

Every worker process builds the same state from fixed seeds: the same ES256 key, the grant the
access tokens name, and ``KAVACH_BENCH_GRANTS`` refresh-token families whose generation-0 tokens
the load generator can compute, so each refresh request presents a token used nowhere before.
Stores are in memory, one per worker, except ``kavach-store``'s, which every worker shares.
"""

# ruff: noqa: S311 -- seeded generators make every process derive the same benchmark keys; nothing here is a secret.

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from kavach_core import access_tokens, keys
from kavach_core import effects as fx
from kavach_core.config import Config, Lifetimes, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import run
from kavach_core.memory_store import MemoryStore
from kavach_core.opaque import b64url, digest, refresh_token
from kavach_core.records import AuthorizationCode, Client

from .common import day_grant

ISSUER = "https://as.example.com"
RESOURCE = "https://mcp.example.com/mcp"
SECRET = b"b" * 32
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
ANSWER = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}'


def config() -> Config:
    """The benchmark's authorization server. Its access tokens live an hour, not ten minutes: part d
    presents tokens minted once at its start for longer than ten minutes, and an expired one would
    be measured as a 401."""
    return Config(
        issuer=ISSUER,
        resources=[ProtectedResource(RESOURCE)],
        secret=SECRET,
        signing_alg="ES256",
        lifetimes=Lifetimes(access_token=3600),
    )


def grant_id(i: int) -> str:
    return b64url(i.to_bytes(16, "big"))


def refresh_for(i: int) -> str:
    """The generation-0 refresh token of family ``i`` (derived, as the server derives it)."""
    return refresh_token(SECRET, grant_id(i), 0)


def mcp_refresh_for(i: int) -> str:
    return f"rt-{i:08d}-" + "x" * 32


def store(grants: int = 0) -> MemoryStore:
    """The seeded state every process agrees on."""
    cfg = config()
    memory = MemoryStore()
    now = int(time.time())
    run(keys.current(Context(cfg, now - 60, random.Random(42).randbytes)), memory)
    memory.perform(fx.PutClient(Client("c1", ("http://127.0.0.1:33418/callback",))))
    families = [(grant_id(0), "x")] + [(grant_id(i), digest(refresh_for(i))) for i in range(1, grants + 1)]
    for gid, refresh_hash in families:
        memory.grants[gid] = day_grant(gid, "c1", RESOURCE, now, refresh_hash, rotated_at=now - 3600)
    return memory


def seed(target: Any) -> None:
    """Write the seeded state the access tokens need (the keys, the client and their grant) into
    the empty store ``target`` through its own effects: a grant is stored as a code redemption
    stores one, so every backend takes the same steps."""
    seeded = store()
    target.perform(fx.SwapSigningKeys((), seeded.keys))
    target.perform(fx.PutClient(seeded.clients["c1"]))
    grant = seeded.grants[grant_id(0)]
    code = AuthorizationCode(
        code_hash=digest("benchmark code"),
        client_id="c1",
        redirect_uri="http://127.0.0.1:33418/callback",
        redirect_uri_given=True,
        code_challenge="c" * 43,
        resources=grant.resources,
        scopes=grant.scopes,
        subject=grant.subject,
        grant_id=grant.grant_id,
        issued_at=grant.created_at,
        expires_at=grant.created_at + 60,
    )
    target.perform(fx.PutCode(code))
    if not target.perform(fx.ConsumeCode(code.code_hash, grant)):
        raise RuntimeError("the benchmark grant could not be stored")


POSTGRES_URL = os.environ.get("KAVACH_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KAVACH_BENCH_REDIS", "redis://127.0.0.1:6379/0")


@contextlib.contextmanager
def shared_stores() -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """``({label: store URL}, {label: why it is missing})`` for the stores worker processes share:
    a new SQLite file, a new PostgreSQL schema in the ``test`` database and a new Redis prefix,
    each seeded (:func:`seed`), and all removed afterwards. A server that cannot be reached is
    reported as missing instead of failing the run."""
    from kavach.stores import open_store

    tag = f"{os.getpid()}_{random.Random().randrange(1 << 30)}"
    urls: dict[str, str] = {}
    missing: dict[str, str] = {}
    opened: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        candidates = {
            "SQLite": f"{tmp}/bench.db",
            "PostgreSQL": f"{POSTGRES_URL}?schema=kavach_bench_http_{tag}",
            "Redis": f"{REDIS_URL}?prefix=kavach-bench-http:{tag}:",
        }
        try:
            for label, url in candidates.items():
                try:
                    target = open_store(url)
                    opened.append(target)
                    seed(target)
                    urls[label] = url
                except Exception as exc:  # no server here: say so in the results instead of failing the run
                    missing[label] = f"{type(exc).__name__}: {exc}"
            yield urls, missing
        finally:
            for target in opened:
                _remove(target)


def _remove(target: Any) -> None:
    """Drop what :func:`shared_stores` made in ``target`` (its schema, its keys), then close it."""
    with contextlib.suppress(Exception):  # nothing was made where the server could not be reached
        if hasattr(target, "drop_schema"):
            target.drop_schema()
        elif hasattr(target, "prefix"):
            client = target._sync_client()
            for key in client.scan_iter(match=target.prefix + "*", count=1000):
                client.unlink(key)
    target.close()


def tokens(count: int) -> list[str]:
    """``count`` distinct access tokens (``tools:list tools:call``) on the benchmark grant, signed
    with the key every process derives; the same list in every process."""
    memory = store()
    now = int(time.time())
    pair = keys.KeySet(memory.keys).signer(now, "ES256")
    assert pair is not None
    ctx = Context(config(), now, random.Random(7).randbytes)
    scopes = ("tools:list", "tools:call")
    return [
        access_tokens.mint(
            ctx, pair, subject="alice", client_id="c1", resource=RESOURCE, scopes=scopes, grant_id=grant_id(0)
        )[0]
        for _ in range(count)
    ]


async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def _kavach_server(grants: int = 0) -> Any:
    from kavach.server import AuthorizationServer

    return AuthorizationServer(config(), store(grants), identify=lambda request: None)


def _kavach_steps(scope_map: bool) -> Any:
    """:class:`kavach.starlette.KavachGuard` with its checks replaced by fixed answers, for part
    f's breakdown of the guard's cost: the guard flow always answers with the principal of the
    benchmark token (verified once, here), and unless ``scope_map`` the body is not mapped to
    scopes either. What is left is the adapter's own work (and the scope map's), the guard's code."""
    from kavach.server import AuthorizationServer
    from kavach.starlette import KavachGuard

    from kavach_core.guard import Principal

    principal = _kavach_server().guard_values(RESOURCE, [f"Bearer {tokens(1)[0]}"], ("tools:list",))
    if not isinstance(principal, Principal):
        raise RuntimeError("the benchmark token did not verify")

    class Fixed(AuthorizationServer):
        def body_scopes(self, body: bytes) -> tuple[str, ...]:
            return super().body_scopes(body) if scope_map else ()

        async def aguard_values(self, resource: str, authorization: Any, required: tuple[str, ...]) -> Any:
            return principal

    return KavachGuard(plain, Fixed(config(), store(), identify=lambda request: None), RESOURCE)


def _least() -> Any:
    """The least a bearer guard with per-method scopes in front of ``plain`` can do, for part f
    (one with a single scope for every method need not read the body): a token seen before looked
    up in a dictionary (a token seen first is verified once, by the kavach server, to fill it),
    the method read with ``json.loads`` and compared with the token's scopes, the body replayed.
    None of the checks a guard owes on every request (expiry, keys still published, revocation,
    duplicate members, content coding and charset, the ``Authorization`` header kept from the
    app, sessions), so what it costs bounds from below what such a guard costs, and its ratio is
    the most such a guard can reach here."""
    import json

    from kavach_core.guard import Principal

    server = _kavach_server()
    known: dict[bytes, frozenset[str]] = {}

    def methods(value: bytes) -> frozenset[str]:
        outcome = server.guard_values(RESOURCE, [value.decode("latin-1")], ())
        granted = outcome.token.scopes if isinstance(outcome, Principal) else ()
        return known.setdefault(value, frozenset(scope.replace(":", "/") for scope in granted))

    async def least(scope: dict[str, Any], receive: Any, send: Any) -> None:
        granted: frozenset[str] = frozenset()
        for name, value in scope["headers"]:
            if name == b"authorization":
                granted = known.get(value) or methods(value)
        message = await receive()
        if json.loads(message["body"]).get("method") not in granted:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        pending = [message]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        await plain(scope, replay, send)

    return least


def _pyjwt_verifier() -> Any:
    import jwt as pyjwt
    from mcp.server.auth.provider import AccessToken

    public = keys.KeySet(store().keys).verifying_keys(int(time.time()))
    (key,) = public.values()

    class Verifier:
        async def verify_token(self, token: str) -> AccessToken | None:
            try:
                claims = pyjwt.decode(token, key.key, algorithms=["ES256"], audience=RESOURCE, issuer=ISSUER)
            except pyjwt.PyJWTError:
                return None
            return AccessToken(
                token=token,
                client_id=claims["client_id"],
                scopes=claims["scope"].split(),
                expires_at=claims["exp"],
                resource=claims["aud"],
                subject=claims["sub"],
            )

    return Verifier()


def _mcp_token_app(grants: int) -> Any:
    import jwt as pyjwt
    from mcp.server.auth.handlers.token import TokenHandler
    from mcp.server.auth.middleware.client_auth import ClientAuthenticator
    from mcp.server.auth.provider import RefreshToken
    from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
    from starlette.applications import Starlette
    from starlette.routing import Route

    signing = keys.KeySet(store().keys).signer(int(time.time()), "ES256")
    assert signing is not None
    client = OAuthClientInformationFull(
        client_id="c1",
        redirect_uris=["http://127.0.0.1:33418/callback"],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
    )
    refresh = {
        mcp_refresh_for(i): RefreshToken(
            token=mcp_refresh_for(i),
            client_id="c1",
            scopes=["tools:list", "tools:call"],
            resource=RESOURCE,
            subject="alice",
        )
        for i in range(1, grants + 1)
    }

    class Provider:
        async def get_client(self, client_id: str) -> Any:
            return client if client_id == "c1" else None

        async def load_refresh_token(self, c: Any, token: str) -> Any:
            return refresh.get(token)

        async def exchange_refresh_token(self, c: Any, token: Any, scopes: list[str]) -> OAuthToken:
            del refresh[token.token]
            now = int(time.time())
            claims = {
                "iss": ISSUER,
                "sub": "alice",
                "aud": RESOURCE,
                "client_id": "c1",
                "scope": " ".join(scopes or token.scopes),
                "iat": now,
                "exp": now + 600,
                "jti": os.urandom(16).hex(),
            }
            access = pyjwt.encode(claims, signing.key, algorithm="ES256", headers={"kid": signing.kid, "typ": "at+jwt"})
            successor = os.urandom(32).hex()
            refresh[successor] = RefreshToken(token=successor, client_id="c1", scopes=token.scopes, resource=RESOURCE)
            return OAuthToken(access_token=access, token_type="Bearer", expires_in=600, refresh_token=successor)

    provider = Provider()
    handler = TokenHandler(provider, ClientAuthenticator(provider))  # type: ignore[arg-type]
    return Starlette(routes=[Route("/token", handler.handle, methods=["POST"])])


def app(name: str | None = None) -> Any:
    """The app ``name``, by default the one ``KAVACH_BENCH_APP`` names (uvicorn ``--factory``)."""
    name = name or os.environ.get("KAVACH_BENCH_APP", "plain")
    grants = int(os.environ.get("KAVACH_BENCH_GRANTS", "0"))
    if name == "plain":
        return plain
    if name == "kavach":
        from kavach.starlette import KavachGuard

        return KavachGuard(plain, _kavach_server(), RESOURCE)
    if name in ("kavach-store", "kavach-store-unchecked"):
        from kavach.server import AuthorizationServer
        from kavach.starlette import KavachGuard
        from kavach.stores import open_store

        options = {"check_connections": False} if name == "kavach-store-unchecked" else {}
        shared = open_store(os.environ["KAVACH_BENCH_STORE"], **options)
        return KavachGuard(plain, AuthorizationServer(config(), shared, identify=lambda request: None), RESOURCE)
    if name in ("kavach-adapter", "kavach-adapter-scopes"):
        return _kavach_steps(scope_map=name == "kavach-adapter-scopes")
    if name == "least":
        return _least()
    if name == "mcp":
        from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
        from starlette.middleware.authentication import AuthenticationMiddleware

        inner = RequireAuthMiddleware(plain, ["tools:list"])
        return AuthenticationMiddleware(inner, backend=BearerAuthBackend(_pyjwt_verifier()))
    if name == "kavach-token":
        from kavach.starlette import KavachEndpoint

        return KavachEndpoint(_kavach_server(grants))
    if name == "mcp-token":
        return _mcp_token_app(grants)
    raise ValueError(f"unknown KAVACH_BENCH_APP {name!r}")
