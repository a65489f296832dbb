"""``kavach serve --store`` on PostgreSQL and Redis, through HTTP (issue 6).

- Every CLI command works against ``--store`` (and ``KAVACH_STORE``, and ``store =`` in the TOML
  file); a shared store without ``KAVACH_STORE_KEY``, or with the wrong one, is one line and exit 2.
- Two ``kavach serve`` processes on one store behind one issuer: a token issued by one verifies at
  the other, its refresh token rotates at the other (one server secret), a revocation at one is
  refused at the other on the next request (even with the token in the other's verified cache),
  a user added once signs in at both, and ``kavach keys rotate --store`` is seen by both (JWKS,
  and tokens signed by the new key verify at both).
- Faults: a TCP proxy between kavach and the real service is cut (the store "stops") and
  restored: every endpoint that needs the store answers 503 with a JSON body, nothing is left
  half-done (the code and the refresh token presented during the outage still work once), and
  service resumes by itself. The proxy is also cut while a refresh is in flight (its forwarding
  slowed, so the cut lands between the flow's round trips): 503, and a retry of the same refresh
  token afterwards succeeds (not rotated, or rotated and answered again within the grace window).

PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (``tests/services.py``): in CI their
absence fails these tests, elsewhere it skips them. Each test has its own schema or key prefix;
every process and proxy is stopped when its test ends. The machine's shared PostgreSQL and
Redis are never stopped.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import redis
import services
from kavach.settings import SettingsError, resolve
from kavach.stores.redis import RedisStore
from kavach_serve import Cli, free_port, kavach_command, stop, wait_ready
from public_client import PASSWORD, REDIRECT_URI, call_mcp, obtain_code, obtain_tokens, redeem, refresh
from tcp_proxy import TcpProxy

from kavach_core import effects as fx
from kavach_core.records import Client

BACKENDS = ("postgres", "redis")
STORE_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
KEY_ROTATION_BOUND = 5.0
"""Seconds within which a key rotation must show everywhere (the guards' KeyRing reuses a read for
1 s; the JWKS and the token endpoint read the store on every request)."""


# -- stores, proxies and processes ---------------------------------------------------------------


def _with_query(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({name: value})))


def _via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port`` (a proxy in front of it)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


def _upstream(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def store_url(backend: str, directory: Path) -> str:
    """The URL of a fresh store of ``backend`` for one test (its own schema or key prefix)."""
    services.require(backend)
    if backend == "postgres":
        return _with_query(services.POSTGRES_URL, "schema", services.postgres_schema(directory))
    return _with_query(services.REDIS_URL, "prefix", services.redis_prefix(directory))


class SlowProxy(TcpProxy):
    """:class:`TcpProxy` whose forwarding can be slowed (``delay`` seconds before each chunk), so
    that a cut can land between the round trips of one request's flow."""

    delay = 0.0

    def _pump(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def proxied(backend: str, url: str) -> Iterator[tuple[SlowProxy, str]]:
    """A proxy in front of ``backend``'s service and the store URL that goes through it."""
    base = services.POSTGRES_URL if backend == "postgres" else services.REDIS_URL
    host, port = _upstream(base, 5432 if backend == "postgres" else 6379)
    proxy = SlowProxy(host, port)
    try:
        yield proxy, _via(url, proxy.port)
    finally:
        proxy.cut()


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("KAVACH_")}
    out["KAVACH_STORE_KEY"] = STORE_KEY
    out.update(extra)
    return out


CLI = Cli(env)
run, ok, bad = CLI.run, CLI.ok, CLI.bad


class Served:
    def __init__(self, port: int, proc: subprocess.Popen[str], log: Path, issuer: str) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.issuer = issuer
        self.base = f"http://127.0.0.1:{port}"
        self.mcp_url = f"{self.base}/mcp"
        self.resource = f"{issuer}/mcp"

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@contextmanager
def serve(
    store: str,
    tmp: Path,
    *,
    issuer: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """``kavach serve --store STORE`` on a free loopback port until the block ends (always stopped)."""
    log = tmp / f"serve-{secrets.token_hex(4)}.log"
    for _attempt in range(3):  # a free port can be taken between probe and bind
        port = free_port()
        args = ["serve", "--port", str(port), "--store", store]
        if issuer is not None:
            args += ["--issuer", issuer]
        with open(log, "w") as sink:
            proc = subprocess.Popen(
                [*kavach_command(), *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env(**(extra_env or {})),
                text=True,
            )
        served = Served(port, proc, log, issuer or f"http://127.0.0.1:{port}")
        try:
            if wait_ready(proc, served.base):
                yield served
                return
        finally:
            stop(proc)
    raise AssertionError(f"kavach serve --store did not start:\n{served.output()}")


# -- tokens, keys and outages over HTTP ------------------------------------------------------------


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def jwks_kids(base: str) -> set[str]:
    answer = httpx.get(f"{base}/jwks.json", timeout=10)
    assert answer.status_code == 200, answer.text
    return {key["kid"] for key in answer.json()["keys"]}


def unavailable(answer: httpx.Response) -> bool:
    """503 with a JSON error body: how every endpoint reports a store it cannot reach."""
    if answer.status_code != 503:
        return False
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    assert answer.json() == {"error": "temporarily_unavailable"}, answer.text
    return True


def until(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {seconds} s")
        time.sleep(0.2)


# -- settings: db and store are one setting --------------------------------------------------------


def test_store_setting_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "kavach.toml"
    toml.write_text('store = "redis://127.0.0.1:6379/0?prefix=a:"\n')
    assert resolve({"config": str(toml)}, {}).store == "redis://127.0.0.1:6379/0?prefix=a:"
    # a higher source naming db replaces a lower source's store, and the other way round
    from_env = resolve({"config": str(toml)}, {"KAVACH_DB": "/tmp/x.db"})
    assert from_env.store is None and from_env.db == "/tmp/x.db"
    flagged = resolve({"store": "postgresql://h/db"}, {"KAVACH_DB": "/tmp/x.db"})
    assert flagged.store == "postgresql://h/db"
    assert resolve({"db": "y.db"}, {"KAVACH_STORE": "redis://h"}).store is None
    # a relative path in the file is relative to the file, like db
    toml.write_text('store = "data/k.db"\n')
    assert resolve({"config": str(toml)}, {}).store == str(tmp_path / "data" / "k.db")
    toml.write_text('store = "redis://h"\ndb = "k.db"\n')
    with pytest.raises(SettingsError, match="not both"):
        resolve({"config": str(toml)}, {})
    with pytest.raises(SettingsError, match="not both"):
        resolve({}, {"KAVACH_STORE": "redis://h", "KAVACH_DB": "k.db"})


def test_db_and_store_flags_exclude_each_other(tmp_path: Path) -> None:
    bad(["users", "list", "--db", str(tmp_path / "a.db"), "--store", "redis://127.0.0.1:1"], "not allowed with")


def test_store_accepts_sqlite_urls_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    ok(["users", "add", "alice", "--store", f"sqlite:///{path}", "--password-stdin"], stdin=PASSWORD + "\n")
    assert ok(["users", "list", "--store", str(path)]).split() == ["alice"]
    assert ok(["users", "list", "--db", str(path)]).split() == ["alice"]
    assert ok(["users", "list"], env=env(KAVACH_STORE=f"sqlite:///{path}")).split() == ["alice"]
    bad(["users", "list", "--store", "mongodb://h/x"], "unknown store")


# -- every command against --store ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_commands_against_a_store(backend: str, tmp_path: Path) -> None:
    url = store_url(backend, tmp_path)
    where = ["--store", url]
    bad(["users", "list", *where], "no kavach store in")  # nothing there yet: not made by a listing
    assert "created user 'alice'" in ok(["users", "add", "alice", *where, "--password-stdin"], stdin=PASSWORD + "\n")
    assert "changed the password" in ok(["users", "add", "alice", *where, "--password-stdin"], stdin=PASSWORD + "\n")
    ok(["users", "add", "bob", *where, "--password-stdin"], stdin="a second password\n")
    assert ok(["users", "list", *where]).split() == ["alice", "bob"]
    assert "removed user 'bob'" in ok(["users", "remove", "bob", *where])
    bad(["users", "remove", "bob", *where], "no user named 'bob'")
    # the same store by KAVACH_STORE and by store = in the TOML file
    assert ok(["users", "list"], env=env(KAVACH_STORE=url)).split() == ["alice"]
    toml = tmp_path / "kavach.toml"
    toml.write_text(f"store = {json.dumps(url)}\n")
    assert ok(["users", "list", "--config", str(toml)]).split() == ["alice"]

    added = ok(["clients", "add", *where, "--name", "Desk", "--redirect-uri", REDIRECT_URI, "--confidential"])
    client_id = added.split("client_id:")[1].split()[0]
    assert "client_secret:" in added
    assert client_id in ok(["clients", "list", *where])
    assert json.loads(ok(["clients", "show", client_id, *where]))["client_name"] == "Desk"
    assert "no grants" in run(["grants", "list", *where]).stderr
    assert "revoked 0 grants" in ok(["grants", "revoke", *where, "--subject", "alice"])
    assert "deleted client" in ok(["clients", "revoke", client_id, *where])
    bad(["clients", "show", client_id, *where], "no client with id")

    first = ok(["keys", "rotate", *where]).split("key ")[1].split()[0]
    second = ok(["keys", "rotate", *where]).split("key ")[1].split()[0]
    listing = ok(["keys", "list", *where])
    assert first in listing and second in listing and "active" in listing


def test_a_redis_prefix_holding_other_keys_is_not_taken_for_a_store(tmp_path: Path) -> None:
    """Keys kavachOS did not write under the prefix: no command adopts it (no secret written), and
    a prefix holding only what the library itself writes is a store."""
    url = store_url("redis", tmp_path)
    prefix = services.redis_prefix(tmp_path)
    client = redis.Redis.from_url(services.REDIS_URL)
    client.set(prefix + "app:thing", "theirs")
    try:
        for command in (["users", "list"], ["keys", "rotate"]):
            bad([*command, "--store", url], "holds keys kavachOS did not write")
        bad(
            ["users", "add", "alice", "--store", url, "--password-stdin"],
            "kavachOS did not write",
            stdin=PASSWORD + "\n",
        )
        assert sorted(k.decode() for k in client.scan_iter(match=prefix + "*")) == [prefix + "app:thing"]
        client.delete(prefix + "app:thing")
        RedisStore(services.REDIS_URL, prefix=prefix).perform(fx.PutClient(Client("c1", (REDIRECT_URI,))))
        assert "c1" in ok(["clients", "list", "--store", url])  # made by the library: a store
    finally:
        client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_shared_store_needs_the_store_key(backend: str, tmp_path: Path) -> None:
    url = store_url(backend, tmp_path)
    plain = {k: v for k, v in env().items() if k != "KAVACH_STORE_KEY"}
    bad(["users", "list", "--store", url], "needs KAVACH_STORE_KEY", env=plain)
    bad(["users", "list", "--store", url], "16, 24 or 32 bytes", env=env(KAVACH_STORE_KEY="c2hvcnQ"))
    ok(["keys", "rotate", "--store", url])
    other = base64.urlsafe_b64encode(b"o" * 32).decode()
    bad(["keys", "list", "--store", url], "sealed with another store key", env=env(KAVACH_STORE_KEY=other))
    bad(["users", "list", "--store", url], "sealed with another store key", env=env(KAVACH_STORE_KEY=other))
    port = free_port()
    proc = run(["serve", "--port", str(port), "--store", url], env=plain)
    assert proc.returncode == 2 and "needs KAVACH_STORE_KEY" in proc.stderr, proc.stderr
    # the signing keys and the server secret are stored sealed: no PEM in the backend
    if backend == "postgres":
        import psycopg

        schema = parse_qs(urlsplit(url).query)["schema"][0]
        with psycopg.connect(services.POSTGRES_URL) as conn:
            rows = conn.execute(f'SELECT private_pem FROM "{schema}".signing_keys').fetchall()
            found = conn.execute(f'SELECT value FROM "{schema}".kavach_settings WHERE name = %s', ("secret",))
            secret = bytes(found.fetchall()[0][0])
        stored = [bytes(r[0]) for r in rows]
    else:
        import redis

        client = redis.Redis.from_url(services.REDIS_URL)
        try:
            prefix = parse_qs(urlsplit(url).query)["prefix"][0]
            stored = [client.dump(k) or b"" for k in client.scan_iter(match=prefix + "*")]
            raw = client.get(prefix + "settings:secret")
            secret = raw if isinstance(raw, bytes) else b""
        finally:
            client.close()
    assert stored and not any(b"PRIVATE KEY" in value for value in stored)
    assert secret.startswith(b"kavach-sealed-v1:"), secret


def test_unreachable_store_is_one_line(tmp_path: Path) -> None:
    bad(["users", "list", "--store", f"redis://127.0.0.1:{free_port()}/0"], "cannot reach the store")


# -- two processes on one store --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_serve_processes_on_one_store(backend: str, tmp_path: Path) -> None:
    url = store_url(backend, tmp_path)
    ok(["users", "add", "alice", "--store", url, "--password-stdin"], stdin=PASSWORD + "\n")
    with serve(url, tmp_path) as first, serve(url, tmp_path, issuer=first.issuer) as second:
        resource = first.resource
        assert "Data (PostgreSQL)" in first.output() or "Data (Redis)" in first.output()
        # the user added once signs in at the second process too (shared users, shared secret)
        at_second = obtain_tokens(second.base, resource)
        assert call_mcp(first.mcp_url, at_second["access_token"]).status_code == 200

        tokens = obtain_tokens(first.base, resource)
        for _ in range(2):  # the second sight comes from the second process's verified cache
            assert call_mcp(second.mcp_url, tokens["access_token"]).status_code == 200
        rotated = refresh(second.base, tokens, resource)
        assert rotated.status_code == 200, rotated.text
        tokens = {**tokens, **rotated.json()}
        assert call_mcp(first.mcp_url, tokens["access_token"]).status_code == 200
        assert call_mcp(second.mcp_url, tokens["access_token"]).status_code == 200

        # revocation at one is honoured by the other on its very next request
        revoked = httpx.post(
            f"{first.base}/revoke",
            timeout=10,
            data={"token": tokens["access_token"], "token_type_hint": "access_token", "client_id": tokens["client_id"]},
        )
        assert revoked.status_code == 200, revoked.text
        assert call_mcp(second.mcp_url, tokens["access_token"]).status_code == 401
        assert call_mcp(first.mcp_url, tokens["access_token"]).status_code == 401

        # a key rotation by the CLI: both publish the new key, and its tokens verify at both
        old_kid = kid_of(tokens["access_token"])
        assert jwks_kids(first.base) == jwks_kids(second.base)
        new_kid = ok(["keys", "rotate", "--store", url]).split("key ")[1].split()[0]
        assert new_kid != old_kid
        for served in (first, second):
            until(
                lambda s=served: {old_kid, new_kid} <= jwks_kids(s.base),
                KEY_ROTATION_BOUND,
                f"the new key in {served.base}/jwks.json",
            )
        fresh = refresh(first.base, tokens, resource)
        assert fresh.status_code == 200, fresh.text
        tokens = {**tokens, **fresh.json()}
        assert kid_of(tokens["access_token"]) == new_kid
        for served in (first, second):
            assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 200
        # a token the retired key signed keeps verifying until it expires
        assert kid_of(at_second["access_token"]) == old_kid
        assert call_mcp(second.mcp_url, at_second["access_token"]).status_code == 200

        # grants are shared too: revoking by the CLI ends both processes' tokens
        assert "revoked 2 grants" in ok(["grants", "revoke", "--store", url, "--subject", "alice"])
        for served in (first, second):
            assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 401
        assert refresh(second.base, tokens, resource).json()["error"] == "invalid_grant"


# -- faults -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_store_outage_answers_503_and_service_resumes(backend: str, tmp_path: Path) -> None:
    url = store_url(backend, tmp_path)
    ok(["users", "add", "alice", "--store", url, "--password-stdin"], stdin=PASSWORD + "\n")
    with ExitStack() as stack:
        proxy, via = stack.enter_context(proxied(backend, url))
        served = stack.enter_context(serve(via, tmp_path))
        tokens = obtain_tokens(served.base, served.resource)
        issued = obtain_code(served.base, served.resource)
        assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 200

        proxy.cut()  # the store "stops": every connection reset, new ones refused
        assert unavailable(call_mcp(served.mcp_url, tokens["access_token"]))
        assert unavailable(refresh(served.base, tokens, served.resource))
        assert unavailable(redeem(served.base, served.resource, issued))
        assert unavailable(httpx.get(f"{served.base}/jwks.json", timeout=30))
        assert unavailable(
            httpx.post(
                f"{served.base}/register",
                timeout=30,
                json={"client_name": "x", "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none"},
            )
        )
        # what needs no store still answers
        meta = httpx.get(f"{served.base}/.well-known/oauth-authorization-server", timeout=10)
        assert meta.status_code == 200

        proxy.restore()  # the store returns: service resumes by itself
        until(
            lambda: call_mcp(served.mcp_url, tokens["access_token"]).status_code == 200,
            30,
            "the guard answering 200 again",
        )
        # nothing was half-done during the outage: the code and the refresh token still work, once
        redeemed = redeem(served.base, served.resource, issued)
        assert redeemed.status_code == 200, redeemed.text
        again = redeem(served.base, served.resource, issued)
        assert again.json()["error"] == "invalid_grant"
        rotated = refresh(served.base, tokens, served.resource)
        assert rotated.status_code == 200, rotated.text
        assert call_mcp(served.mcp_url, rotated.json()["access_token"]).status_code == 200
        assert "Traceback" not in served.output()


@pytest.mark.parametrize("backend", BACKENDS)
def test_connections_killed_are_replaced(backend: str, tmp_path: Path) -> None:
    """Every live connection reset while the service stays up (a failover, an idle-connection
    reaper): at most one answer per request kind is 503, then everything works."""
    url = store_url(backend, tmp_path)
    ok(["users", "add", "alice", "--store", url, "--password-stdin"], stdin=PASSWORD + "\n")
    with ExitStack() as stack:
        proxy, via = stack.enter_context(proxied(backend, url))
        served = stack.enter_context(serve(via, tmp_path))
        tokens = obtain_tokens(served.base, served.resource)
        proxy.cut()
        proxy.restore()
        statuses = []
        for _ in range(3):
            answer = call_mcp(served.mcp_url, tokens["access_token"])
            assert answer.status_code == 200 or unavailable(answer), answer.text
            statuses.append(answer.status_code)
        assert statuses[-1] == 200, statuses
        answer = refresh(served.base, tokens, served.resource)
        if unavailable(answer):  # a write on a dead connection is never retried blindly
            answer = refresh(served.base, tokens, served.resource)
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_killed_mid_refresh(backend: str, tmp_path: Path) -> None:
    """The store's connections are cut while a refresh is in flight, at several points of its
    flow: the answer is 200 or 503 with a JSON body, never anything else; after a 503, retrying
    the same refresh token succeeds (it was not rotated, or it was and the grace window answers
    again) and the family stays usable."""
    url = store_url(backend, tmp_path)
    ok(["users", "add", "alice", "--store", url, "--password-stdin"], stdin=PASSWORD + "\n")
    with ExitStack() as stack:
        proxy, via = stack.enter_context(proxied(backend, url))
        served = stack.enter_context(serve(via, tmp_path, extra_env={"KAVACH_REFRESH_GRACE": "120"}))
        tokens = obtain_tokens(served.base, served.resource)
        cut_mid_flow = 0
        for offset in (0.15, 0.45, 0.75, 1.05, 1.35):
            proxy.delay = 0.1
            answers: list[httpx.Response] = []
            worker = threading.Thread(target=_refresh_into, args=(answers, served, tokens))
            worker.start()
            time.sleep(offset)
            proxy.cut()
            worker.join(timeout=60)
            proxy.delay = 0.0
            proxy.restore()
            assert answers, "the refresh did not answer"
            answer = answers[0]
            if answer.status_code == 200:
                tokens = {**tokens, **answer.json()}
                continue
            assert unavailable(answer), answer.text
            cut_mid_flow += 1
            retried = until(lambda t=tokens: _not_503(refresh(served.base, t, served.resource)), 30, "a retry")
            assert retried.status_code == 200, retried.text
            tokens = {**tokens, **retried.json()}
            assert call_mcp(served.mcp_url, tokens["access_token"]).status_code == 200
        assert cut_mid_flow, "no cut landed inside a refresh; slow the proxy further"
        final = refresh(served.base, tokens, served.resource)
        assert final.status_code == 200, final.text


def _refresh_into(answers: list[httpx.Response], served: Served, tokens: dict[str, Any]) -> None:
    answers.append(refresh(served.base, tokens, served.resource))


def _not_503(answer: httpx.Response) -> httpx.Response | None:
    return None if unavailable(answer) else answer


def test_a_read_only_postgres_store_opens_and_lists(tmp_path: Path) -> None:
    """A database taking no writes (a hot standby, ``default_transaction_read_only``): the commands
    that read still work, the server secret being only read when it is there; the URL keeps its
    other parameters as libpq reads them once its ``schema`` is taken out (``%20``, not ``+``)."""
    url = store_url("postgres", tmp_path)
    ok(["users", "add", "alice", "--store", url, "--password-stdin"], stdin=PASSWORD + "\n")
    read_only = url + "&options=" + quote("-c default_transaction_read_only=on")
    assert ok(["users", "list", "--store", read_only]).split() == ["alice"]
    bad(["users", "add", "bob", "--store", read_only, "--password-stdin"], "read-only", stdin=PASSWORD + "\n")
    assert ok(["users", "list", "--store", url]).split() == ["alice"]
