"""Every benchmark runs once at tiny size, so none of them rots. No timing assertions: only that
each produces well-formed results (the keys are there, the numbers are positive)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from prerequisites import in_ci, missing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as bench  # noqa: E402
from benchmarks import http_apps  # noqa: E402
from benchmarks.http import PINNED, UNCHECKED  # noqa: E402
from benchmarks.protocol import Connection, request_bytes  # noqa: E402
from kavach_core import effects as fx  # noqa: E402


def _positive_spread(value: dict[str, float]) -> None:
    assert set(value) == {"median", "min", "max"}
    assert 0 < value["min"] <= value["median"] <= value["max"]


def _timed(result: dict[str, Any], variants: set[str]) -> None:
    assert variants <= set(result)
    for entry in result.values():
        _positive_spread(entry["seconds"])
        _positive_spread(entry["ratio"])
        assert entry["ops_per_s"] > 0


def test_verification_and_flows_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "a,b,c", "--out", str(tmp_path)])
    assert set(results["first_sight"]) == {"ES256", "RS256", "EdDSA"}
    for per_alg in results["first_sight"].values():
        _timed(per_alg, {"raw cryptography", "kavach", "pyjwt", "joserfc"})
    _timed(results["repeat_sight"]["ES256"], {"pyjwt.decode", "cache hit", "cache hit + revocation check"})
    _timed(results["as_flows"], {"kavach", "Authlib (Flask integration)", "MCP SDK handlers"})
    assert all(r["flows_per_s"] > 0 for r in results["as_flows"].values())
    written = json.loads((tmp_path / "quick.json").read_text())
    assert written["machine"]["nproc"] >= 1 and written["table"]


def test_a_protocol_connection_outlasts_the_other_apps_batches() -> None:
    """Part f keeps one connection per app on one event loop while the other apps' batches run,
    for seconds on a slow host: a connection left idle longer than uvicorn's default keep-alive
    still answers its next request (the timer would otherwise close it between rounds)."""
    import uvicorn

    loop = asyncio.new_event_loop()
    try:
        connection = Connection(http_apps.app("plain"), loop)
        request = request_bytes(http_apps.tokens(1)[0])
        loop.run_until_complete(connection.request(request))
        idle = uvicorn.Config(http_apps.plain).timeout_keep_alive + 0.5
        loop.run_until_complete(asyncio.sleep(idle))
        loop.run_until_complete(asyncio.wait_for(connection.request(request), 10))
        assert (connection.transport.responses, connection.transport.non_2xx) == (2, 0)
        assert not connection.transport.is_closing()
    finally:
        loop.close()


def test_http_at_tiny_size(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        missing("wrk is not installed: run tests/setup_system_packages.sh")
    results = bench.main(["--quick", "--only", "d", "--out", str(tmp_path)])
    http = results["http"]
    pinned = http["pinned"]
    if "skipped" in pinned:  # a machine (or a CPU set) with one CPU: said why, and only there
        assert len(os.sched_getaffinity(0)) < 2, pinned["skipped"]
        assert set(http["workers"]) == {"1", "2"}
    else:
        assert set(http["workers"]) == {"1", "2", PINNED}
        assert pinned["server_cpus"] and pinned["wrk_cpus"]
        assert not set(pinned["server_cpus"]) & set(pinned["wrk_cpus"])
    stored = {f"kavach, repeat token, {label} store" for label in ("SQLite", "PostgreSQL", "Redis")}
    stored.add(f"kavach, repeat token, PostgreSQL store, {UNCHECKED}")
    _services_or_skipped(set(http["skipped"]), stored - {"kavach, repeat token, SQLite store"})  # a file: always there
    for configuration, summary in http["workers"].items():
        unstored = {"no guard (ceiling)", "kavach, repeat token", "MCP SDK TokenHandler (refresh, rotation)"}
        assert unstored <= set(summary)
        measured = set() if configuration == PINNED else stored - set(http["skipped"])  # pinned: no store rows
        assert set(summary) & stored == measured  # each store measured or said skipped
        for name, entry in summary.items():
            _positive_spread(entry["rps"])
            assert entry["requests"] > 0
            # every row answered every request as it should: the seeded grant verifies on every
            # store, and no token was presented twice (a refresh token presented again is a
            # retry or a reuse, a first-sight token a repeat)
            assert entry["non_2xx"] == 0 and not entry["reused_tokens"], (configuration, name)
    assert _left_behind(http["skipped"]) == []


def _left_behind(skipped: dict[str, str]) -> list[str]:
    """The PostgreSQL schemas and Redis keys this process's part d made and did not remove."""
    tag = f"{os.getpid()}_"
    found: list[str] = []
    if not any("PostgreSQL" in name for name in skipped):
        with psycopg.connect(http_apps.POSTGRES_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (f"kavach_bench_http_{tag}",)
            )
            found += [str(name) for (name,) in rows]
    if not any("Redis" in name for name in skipped):
        client = redis.Redis.from_url(http_apps.REDIS_URL)
        found += [key.decode() for key in client.scan_iter(match=f"kavach-bench-http:{tag}*")]
        client.close()
    return found


def _services_or_skipped(skipped: set[str], rows: set[str]) -> None:
    """A benchmark row may be skipped for a database server it could not reach, except in CI,
    where PostgreSQL and Redis run (as the store tests require)."""
    assert skipped <= rows
    if in_ci():
        assert not skipped, f"benchmark rows skipped in CI: {sorted(skipped)}"


def test_scale_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "e", "--out", str(tmp_path)])
    scale = results["scale"]
    assert scale["large"] > scale["small"] > 0
    _services_or_skipped({name for name in ("sqlite", "postgres") if "skipped" in scale[name]}, {"postgres"})
    for backend in ("sqlite", "postgres"):
        data = scale[backend]
        if "skipped" in data:
            continue
        assert data["bytes_per_grant"] > 0
        for kind in ("verify", "verify, first sight", "refresh"):
            _timed(data["latency"][kind], {"small", "large"})


def test_scale_probes_ask_about_grants_spread_over_the_table(tmp_path: Path) -> None:
    """Part e's lookups land all over the table, as a deployment's tokens name grants made at any
    time: the tokens verified name many grants (not one hot row), and the families refreshed are
    picked over the whole table (not neighbours at its start), so a large table's pages cannot
    all stay in the store's cache."""
    from benchmarks import scale

    store, _ = scale._fill_sqlite(tmp_path / "s.db", 5000)
    asked: list[str] = []
    perform = store.perform

    def spying(effect: Any) -> Any:
        if isinstance(effect, fx.IsTokenRevoked):
            asked.append(effect.grant_id)
        return perform(effect)

    store.perform = spying
    try:
        probes = scale._probes(store, 5000)
        asked.clear()
        for _ in range(50):
            probes["verify"]()
        assert len(set(asked)) == 50, "each verification asks about a grant of its own"
    finally:
        store.close()
    live = sorted(scale._live(5000))
    assert len(live) == scale.LIVE and live[-1] - live[0] > 4000  # spread over 1..5000, not 1..400


def test_authlib_is_timed_on_a_server_s_environ_not_the_test_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Part c hands Authlib's Flask integration the WSGI environ a server would (as kavach gets
    the request its adapters build): Werkzeug's test client builder, which no server runs, is
    not timed as Authlib's."""
    from flask import Flask

    from benchmarks.flows import AuthlibServer

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the benchmark timed Werkzeug's test request builder")

    monkeypatch.setattr(Flask, "test_request_context", refused)
    server = AuthlibServer()
    for _ in range(2):
        server.flow()


def test_protocol_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "f", "--out", str(tmp_path)])
    part = results["protocol"]
    assert part["protocol"].startswith("uvicorn.protocols.http.")
    apps = part["apps"]
    _timed(apps, {"no guard (ceiling)", "kavach, repeat token", "kavach, first-sight tokens"})
    assert sum(name.startswith("kavach adapter") for name in apps) == 2  # the guard's cost, step by step
    for entry in apps.values():
        _positive_spread(entry["throughput_ratio"])
        assert entry["non_2xx"] == 0  # every guard let the valid token through
        assert entry["responses"] == part["batch"] * 3  # one warm-up batch and two rounds, each answered
    assert apps["no guard (ceiling)"]["throughput_ratio"]["median"] == 1.0


def test_worker_listeners_share_a_port_and_the_kernel_spreads_connections() -> None:
    """Each worker of ``benchmarks.serve`` gets its own ``SO_REUSEPORT`` listener on one port, so
    a burst of connections (wrk opens all of its own at once) lands on every worker, not on the
    one that happened to wake first."""
    import select
    import socket

    from benchmarks.serve import reuse_port_listeners

    listeners = reuse_port_listeners(0, 2)
    clients: list[socket.socket] = []
    try:
        port = listeners[0].getsockname()[1]
        assert [sock.getsockname()[1] for sock in listeners] == [port, port]
        for sock in listeners:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
            sock.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]  # handshakes done
        select.select(listeners, [], [], 2.0)
        accepted = [0, 0]
        for index, sock in enumerate(listeners):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[index] += 1
        assert sum(accepted) == 64
        assert min(accepted) > 0  # all on one listener has probability 2**-63
    finally:
        for sock in [*clients, *listeners]:
            sock.close()


def test_worker_listeners_refuse_a_port_in_use() -> None:
    import socket

    from kavach.cli import CliError

    from benchmarks.serve import reuse_port_listeners

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(CliError, match=r"cannot listen on 127\.0\.0\.1"):
            reuse_port_listeners(taken.getsockname()[1], 2)


def test_the_pinned_configuration_is_said_skipped_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """One CPU, or a system without ``sched_setaffinity``: the reason, never an error."""
    from benchmarks.http import PINNED, _setups

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    setups, why = _setups()
    assert PINNED not in setups and "1 CPU" in why and set(setups) == {"1", "2"}
    monkeypatch.delattr(os, "sched_getaffinity")
    setups, why = _setups()
    assert PINNED not in setups and "sched_setaffinity" in why


def test_rounds_shuffle_the_variants_alike_on_every_run() -> None:
    """Each round runs every variant once; over a run's rounds each variant is first and follows
    every other one (a fixed rotation would keep its neighbour), and a rerun repeats the orders."""
    from benchmarks.common import round_orders

    names = ["a", "b", "c", "d"]
    orders = round_orders(names, 41)
    assert len(orders) == 41 and all(sorted(order) == names for order in orders)
    assert {order[0] for order in orders} == set(names)
    after = {(order[i], order[i + 1]) for order in orders for i in range(len(names) - 1)}
    assert after == {(x, y) for x in names for y in names if x != y}
    assert round_orders(names, 41) == orders


@pytest.mark.parametrize("value", ["kvc_AbC-_09", "a b+c&d=e%/?#é", ""])
def test_the_flows_client_builds_and_reads_what_urlencode_and_parse_qs_would(value: str) -> None:
    from urllib.parse import parse_qs, urlencode, urlsplit

    from benchmarks.flows import code_body, code_form, code_in, refresh_body, refresh_form

    assert code_body(value) == urlencode(code_form(value)).encode()
    assert code_body(value, resource=False) == urlencode(code_form(value, resource=False)).encode()
    assert refresh_body(value) == urlencode(refresh_form(value)).encode()
    location = "https://c.example/cb?" + urlencode({"state": "code=x", "code": value, "iss": "https://as"}) + "#code=y"
    assert code_in(location) == parse_qs(urlsplit(location).query, keep_blank_values=True)["code"][0] == value
    with pytest.raises(KeyError):
        code_in("https://c.example/cb?state=x#code=y")
