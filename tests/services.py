"""External services the store tests need (PostgreSQL, Redis), and the one rule for their absence.

The rule (tests/prerequisites.py): in CI an unreachable service is a test **failure**;
elsewhere the test is **skipped** with a message saying what to start.

Addresses come from ``KAVACH_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
and ``KAVACH_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``). Every test database lives in
its own schema (PostgreSQL) or key prefix (Redis), derived from the test's directory so that
spawned worker processes reach the same one; :func:`cleanup` (run at the end of the session by
``tests/conftest.py``) drops every schema and prefix this process handed out.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from prerequisites import missing

POSTGRES_URL = os.environ.get("KAVACH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KAVACH_TEST_REDIS", "redis://127.0.0.1:6379/0")

_HOW_TO_START = {
    "postgres": (
        f"PostgreSQL is not reachable at {POSTGRES_URL}: start one (e.g. `pg_ctlcluster 15 main start`,"
        " or `docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres`)"
        " or point KAVACH_TEST_POSTGRES at one"
    ),
    "redis": (
        f"Redis is not reachable at {REDIS_URL}: start one (e.g. `redis-server --daemonize yes`,"
        " or `docker run -p 6379:6379 redis`) or point KAVACH_TEST_REDIS at one"
    ),
}

_reachable: dict[str, str | None] = {}
_schemas: set[str] = set()
_prefixes: set[str] = set()


def _probe(service: str) -> str | None:
    """``None`` when ``service`` answers, else why not (cached per process)."""
    if service not in _reachable:
        try:
            if service == "postgres":
                import psycopg

                with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
            else:
                import redis

                client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
                try:
                    client.ping()
                finally:
                    client.close()
            _reachable[service] = None
        except Exception as exc:
            _reachable[service] = f"{type(exc).__name__}: {exc}"
    return _reachable[service]


def require(service: str) -> None:
    """Fail (CI) or skip (elsewhere) the calling test when ``service`` is unreachable."""
    problem = _probe(service)
    if problem is None:
        return
    missing(f"{_HOW_TO_START[service]} ({problem})")


def _tag(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:20]


def postgres_schema(directory: Path) -> str:
    """The schema of the test database belonging to ``directory`` (same in every process)."""
    schema = f"kavach_test_{_tag(directory)}"
    _schemas.add(schema)
    return schema


def redis_prefix(directory: Path) -> str:
    """The key prefix of the test database belonging to ``directory`` (same in every process)."""
    prefix = f"kavach-test:{_tag(directory)}:"
    _prefixes.add(prefix)
    return prefix


def postgres_store(directory: Path, **options: Any) -> Any:
    from kavach.stores.postgres import PostgresStore

    require("postgres")
    options.setdefault("min_connections", 0)
    options.setdefault("max_connections", 4)
    return PostgresStore(POSTGRES_URL, schema=postgres_schema(directory), **options)


def redis_store(directory: Path, **options: Any) -> Any:
    from kavach.stores.redis import RedisStore

    require("redis")
    options.setdefault("max_connections", 30)
    return RedisStore(REDIS_URL, prefix=redis_prefix(directory), **options)


def cleanup() -> None:
    """Drop every schema and delete every key prefix handed out in this process."""
    if _schemas and _probe("postgres") is None:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            names = sorted(_schemas)
            for start in range(0, len(names), 10):
                conn.execute(
                    "DROP SCHEMA IF EXISTS " + ", ".join(f'"{n}"' for n in names[start : start + 10]) + " CASCADE"
                )
    _schemas.clear()
    if _prefixes and _probe("redis") is None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        tags = {prefix.split(":")[1] for prefix in _prefixes}
        try:
            doomed = [
                key
                for key in client.scan_iter(match="kavach-test:*", count=1000)
                if key.decode().split(":", 2)[1] in tags
            ]
            for start in range(0, len(doomed), 500):
                client.delete(*doomed[start : start + 500])
        finally:
            client.close()
    _prefixes.clear()
