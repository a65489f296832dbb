"""(e) Scale: verification and token-endpoint latency with few vs many stored grants.

For SQLite (a temporary file) and PostgreSQL (a temporary schema in the ``test`` database on
127.0.0.1:5432, dropped afterwards), two stores are filled: one with ``small`` grants, one with
``large``; rows are bulk-inserted straight into the grants table (``executemany`` / ``COPY``).
Then, interleaved between the two stores:

- **verify**: the guard flow for a repeat token with the verified-token cache (what a resource
  server does per request: key set read + cache + the revocation check, an indexed lookup);
- **verify, first sight**: the same flow without the cache (adds the ES256 signature);
- **refresh**: a token-endpoint refresh (with rotation) of a family that exists in the table.

The tokens verified name :data:`WORKING_SET` grants picked at random over the whole table, the
same number in both stores, and each request takes the next of them; the families refreshed
(:data:`LIVE`) are picked at random over the table too. So the lookups land on pages all over
the large table, as a deployment's tokens name grants made at any time, and not on one hot row or
on a few neighbouring ones, which any store keeps in its cache whatever the table's size.

Reported: median latency per store size and the large/small ratio, and bytes per stored grant
(SQLite: file growth; PostgreSQL: ``pg_total_relation_size`` of the grants table with its indexes).
"""

# ruff: noqa: S311, S608 -- seeded benchmark keys; SQL is built from fixed column lists and a generated schema name.

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kavach_core import access_tokens, guard, keys
from kavach_core import effects as fx
from kavach_core.context import Context
from kavach_core.drivers import run
from kavach_core.http import HttpRequest
from kavach_core.opaque import digest
from kavach_core.router import route
from kavach_core.verified_cache import VerifiedCache

from . import http_apps
from .common import fmt_time, interleaved, table

PG_DSN = http_apps.POSTGRES_URL
FORM = (("Content-Type", "application/x-www-form-urlencoded"),)
LIVE = 400
"""Families with real refresh tokens in each store, picked over the table (:func:`_live`); the
rest carry dummy hashes."""
WORKING_SET = 1000
"""Distinct grants the verified tokens name, in each store."""


def _live(n: int) -> frozenset[int]:
    """The families of a store of ``n`` bulk grants whose generation-0 refresh tokens are real."""
    return frozenset(random.Random(17).sample(range(1, n + 1), LIVE))


def _rows(n: int, now: int) -> Any:
    live = _live(n)
    for i in range(1, n + 1):
        gid = http_apps.grant_id(i)
        refresh_hash = digest(http_apps.refresh_for(i)) if i in live else digest(gid)[:64]
        yield (gid, f"user-{i % 5000}", "c1", now, now + 86400, 0, refresh_hash, now + 86400, now)


def _seed(store: Any) -> None:
    """Keys, the client and grant 0, through the store's own effects."""
    seeded = http_apps.store()
    store.perform(fx.SwapSigningKeys((), seeded.keys))
    store.perform(fx.PutClient(seeded.clients["c1"]))
    if hasattr(store, "_connection"):
        with store._connection() as db:
            cols = (
                "grant_id, subject, client_id, resources, scopes, created_at, expires_at, refresh_generation,"
                " refresh_hash, refresh_expires_at, rotated_at"
            )
            db.executemany(
                f"INSERT INTO grants ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        g.grant_id,
                        g.subject,
                        g.client_id,
                        json.dumps(list(g.resources)),
                        json.dumps(list(g.scopes)),
                        g.created_at,
                        g.expires_at,
                        g.refresh_generation,
                        g.refresh_hash,
                        g.refresh_expires_at,
                        g.rotated_at,
                    )
                    for g in seeded.grants.values()
                ],
            )
            db.commit()


def _fill_sqlite(path: Path, n: int) -> tuple[Any, int]:
    from kavach.stores.sqlite import SQLiteStore

    store = SQLiteStore(path)
    _seed(store)
    before = path.stat().st_size
    now = int(time.time())
    res, scopes = json.dumps([http_apps.RESOURCE]), json.dumps(["tools:list", "tools:call"])
    with store._connection() as db:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO grants (grant_id, subject, client_id, resources, scopes, created_at, expires_at,"
            " refresh_generation, refresh_hash, refresh_expires_at, rotated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((r[0], r[1], r[2], res, scopes, *r[3:]) for r in _rows(n, now)),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    return store, max(0, size - before)


def _fill_postgres(schema: str, n: int) -> tuple[Any, int]:
    import psycopg
    from kavach.stores.postgres import PostgresStore

    store = PostgresStore(PG_DSN, schema=schema, max_connections=2)
    store.migrate()
    seeded = http_apps.store()
    store.perform(fx.SwapSigningKeys((), seeded.keys))
    store.perform(fx.PutClient(seeded.clients["c1"]))
    now = int(time.time())
    cols = (
        "grant_id, subject, client_id, resources, scopes, created_at, expires_at, refresh_generation,"
        " refresh_hash, refresh_expires_at, rotated_at"
    )
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f'COPY "{schema}".grants ({cols}) FROM STDIN') as copy:
            res, scopes = [http_apps.RESOURCE], ["tools:list", "tools:call"]
            for g in seeded.grants.values():
                copy.write_row(
                    (
                        g.grant_id,
                        g.subject,
                        g.client_id,
                        list(g.resources),
                        list(g.scopes),
                        g.created_at,
                        g.expires_at,
                        g.refresh_generation,
                        g.refresh_hash,
                        g.refresh_expires_at,
                        g.rotated_at,
                    )
                )
            for r in _rows(n, now):
                copy.write_row((r[0], r[1], r[2], res, scopes, *r[3:]))
        conn.execute(f'ANALYZE "{schema}".grants')
        size = conn.execute(f"SELECT pg_total_relation_size('\"{schema}\".grants')").fetchone()[0]  # type: ignore[index]
    return store, int(size)


def _probes(store: Any, n: int) -> dict[str, Any]:
    """The three operations on ``store`` (``n`` bulk grants), each taking its next grant."""
    cfg = http_apps.config()
    now = int(time.time())
    pair = keys.KeySet(tuple(store.perform(fx.GetSigningKeys()))).signer(now, "ES256")
    assert pair is not None
    ctx = Context(cfg, now, random.Random(3).randbytes)
    named = random.Random(19).sample(range(n + 1), min(WORKING_SET, n + 1))  # grant 0 is seeded, 1..n bulk
    headers = [
        "Bearer "
        + access_tokens.mint(
            ctx,
            pair,
            subject="alice",
            client_id="c1",
            resource=http_apps.RESOURCE,
            scopes=("tools:list",),
            grant_id=http_apps.grant_id(i),
        )[0]
        for i in named
    ]
    cache = VerifiedCache(size=len(headers))
    for header in headers:  # every token seen once: "verify" measures repeat sight
        seen = run(guard.authenticate(cfg, http_apps.RESOURCE, header, (), now, cache), store)
        assert isinstance(seen, guard.Principal), seen
    turn = itertools.cycle(headers)
    rng = random.Random(5).randbytes
    live = sorted(_live(n))
    random.Random(23).shuffle(live)

    def verify() -> None:
        out = run(guard.authenticate(cfg, http_apps.RESOURCE, next(turn), ("tools:list",), now, cache), store)
        assert isinstance(out, guard.Principal), out

    def verify_first() -> None:
        out = run(guard.authenticate(cfg, http_apps.RESOURCE, next(turn), ("tools:list",), now), store)
        assert isinstance(out, guard.Principal), out

    def refresh() -> None:
        i = live.pop()
        body = urlencode(
            {"grant_type": "refresh_token", "client_id": "c1", "refresh_token": http_apps.refresh_for(i)}
        ).encode()
        response = run(
            route(Context(cfg, int(time.time()), rng), HttpRequest("POST", cfg.paths.token, [], FORM, body)), store
        )
        assert response.status == 200, response.body

    return {"verify": verify, "verify, first sight": verify_first, "refresh": refresh}


def _compare(small: tuple[Any, int], large: tuple[Any, int], rounds: int, number: int) -> dict[str, Any]:
    per_kind: dict[str, Any] = {}
    a, b = _probes(*small), _probes(*large)
    for kind in a:
        per_kind[kind] = interleaved(
            {"small": a[kind], "large": b[kind]},
            baseline="small",
            rounds=rounds,
            number=number if kind != "refresh" else max(1, min(number, LIVE // (rounds + 1) - 1)),
        )
    return per_kind


def scale(quick: bool = False) -> dict[str, Any]:
    small_n, large_n = (500, 2000) if quick else (1_000, 1_000_000)
    rounds, number = (2, 3) if quick else (9, 30)
    out: dict[str, Any] = {"small": small_n, "large": large_n}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s_small, _ = _fill_sqlite(Path(tmp) / "small.db", small_n)
        s_large, grown = _fill_sqlite(Path(tmp) / "large.db", large_n)
        fill = time.perf_counter() - t0
        try:
            out["sqlite"] = {
                "fill_seconds": fill,
                "bytes_per_grant": grown / large_n,
                "latency": _compare((s_small, small_n), (s_large, large_n), rounds, number),
            }
        finally:
            s_small.close()
            s_large.close()
    suffix = random.Random().randrange(1 << 30)
    p_small = p_large = None
    try:
        t0 = time.perf_counter()
        p_small, _ = _fill_postgres(f"kavach_bench_s_{suffix}", small_n)
        p_large, size = _fill_postgres(f"kavach_bench_l_{suffix}", large_n)
        out["postgres"] = {
            "fill_seconds": time.perf_counter() - t0,
            "bytes_per_grant": size / large_n,
            "latency": _compare((p_small, small_n), (p_large, large_n), rounds, number),
        }
    except Exception as exc:  # no database here: say so in the results instead of failing the run
        out["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    finally:
        for store in (p_small, p_large):
            if store is not None:
                store.drop_schema()
                store.close()
    return out


def _ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"


def report(result: dict[str, Any]) -> str:
    rows = []
    for backend in ("sqlite", "postgres"):
        data = result.get(backend, {})
        if "skipped" in data:
            rows.append([backend, "skipped", data["skipped"][:60], "", "", ""])
            continue
        for kind, res in data["latency"].items():
            rows.append(
                [
                    backend,
                    kind,
                    fmt_time(res["small"]["seconds"]["median"]),
                    fmt_time(res["large"]["seconds"]["median"]),
                    _ratio(res["large"]["ratio"]),
                    f"{data['bytes_per_grant']:.0f}",
                ]
            )
    return table(
        f"e. scale: {result['small']} vs {result['large']} stored grants",
        [
            "store",
            "operation",
            f"{result['small']} grants",
            f"{result['large']} grants",
            "ratio [min-max]",
            "bytes/grant",
        ],
        rows,
    )
