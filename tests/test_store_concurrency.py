"""Security decisions stay single under real contention: 100 racers over 4 processes.

Each process opens its own store object on the same database (SQLite file, PostgreSQL schema,
Redis prefix) and runs 25 threads; all 100 start together behind one barrier. MemoryStore is
excluded: it lives in one process.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import services
from store_records import DAY, T0, code, grant

from kavach_core import effects as fx

PROCESSES = 4
RACERS = 100
BACKENDS = ["sqlite", "postgres", "redis"]


def open_store(backend: str, directory: Path) -> Any:
    if backend == "sqlite":
        from kavach.stores.sqlite import SQLiteStore

        return SQLiteStore(directory / "kavach.db", busy_timeout=60, max_connections=8)
    if backend == "postgres":
        return services.postgres_store(directory, max_connections=8, timeout=60)
    return services.redis_store(directory)


def rotate(grace: int, now: int = T0 + 100) -> fx.RotateRefresh:
    return fx.RotateRefresh("g1", 0, "r0", "r1", now, grace, now + 14 * DAY)


def _racer(backend: str, directory: str, effect: fx.Effect, threads: int, barrier: Any, results: Any) -> None:
    """In a spawned process: one store object, ``threads`` threads performing ``effect`` at once."""
    store = open_store(backend, Path(directory))
    local = threading.Barrier(threads)

    def one(_: int) -> Any:
        local.wait(timeout=60)
        try:
            return store.perform(effect)
        except Exception as exc:  # reported to the parent, which fails the test
            return f"error: {type(exc).__name__}: {exc}"

    try:
        barrier.wait(timeout=120)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            outcomes = list(pool.map(one, range(threads)))
        results.put([o.outcome if isinstance(o, fx.Rotation) else o for o in outcomes])
    finally:
        getattr(store, "close", lambda: None)()


def race(backend: str, directory: Path, effect: fx.Effect) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    share = RACERS // PROCESSES
    procs = [
        ctx.Process(target=_racer, args=(backend, str(directory), effect, share, barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    collected: list[Any] = []
    try:
        for _ in procs:
            collected.extend(results.get(timeout=180))
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    assert len(collected) == RACERS
    errors = [o for o in collected if isinstance(o, str) and o.startswith("error:")]
    assert not errors, errors[:3]
    return collected


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    name: str = request.param
    if name != "sqlite":
        services.require(name)
    store = open_store(name, tmp_path)
    yield name, store
    store.close()


def test_tk04_100_redemptions_of_one_code_over_4_processes_have_one_winner(backend: Any, tmp_path: Path) -> None:
    name, store = backend
    store.perform(fx.PutCode(code()))
    results = race(name, tmp_path, fx.ConsumeCode("h1", grant()))
    assert Counter(results) == {True: 1, False: RACERS - 1}
    assert store.perform(fx.GetCode("h1")).consumed is True
    assert store.perform(fx.ListGrants()) == (grant(),)


def test_tk07_100_refreshes_within_grace_rotate_once_and_retry_the_rest(backend: Any, tmp_path: Path) -> None:
    name, store = backend
    store.perform(fx.PutCode(code()))
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    results = race(name, tmp_path, rotate(grace=10))
    assert Counter(results) == {"rotated": 1, "retried": RACERS - 1}
    final = store.perform(fx.GetGrant("g1"))
    assert (final.refresh_generation, final.refresh_hash, final.rotated_at) == (1, "r1", T0 + 100)
    assert final.revoked_at is None


def test_tk07_100_refreshes_without_grace_rotate_once_then_revoke_the_family(backend: Any, tmp_path: Path) -> None:
    name, store = backend
    store.perform(fx.PutCode(code()))
    assert store.perform(fx.ConsumeCode("h1", grant())) is True
    results = race(name, tmp_path, rotate(grace=0))
    # One rotation wins; the next presentation of the superseded token is reuse and revokes the
    # family in the same step; every later one finds the family revoked.
    assert Counter(results) == {"rotated": 1, "reused": 1, "unknown": RACERS - 2}
    final = store.perform(fx.GetGrant("g1"))
    assert (final.refresh_generation, final.revoked_at) == (1, T0 + 100)
    assert store.perform(fx.IsTokenRevoked("any-jti", "g1")) is True
