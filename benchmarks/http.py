"""(d) Over HTTP: requests per second through each guard, and token-endpoint refreshes.

Each app of :mod:`benchmarks.http_apps` runs under uvicorn (1 or 2 workers, default event loop
and HTTP parser of the installed uvicorn) on 127.0.0.1, started by :mod:`benchmarks.serve`; the
load comes from ``wrk`` in a separate process over loopback, a bounded run each time. The
guarded request is an MCP ``tools/list`` POST with a Bearer token (the guards must parse the
JSON-RPC body to know the scope needed). Runs are interleaved per round; a ratio is against the
no-guard ceiling of the same round and worker count. Stores are in memory, one per worker process,
except in the rows naming a store: there the guard asks an SQLite file, a PostgreSQL schema or a
Redis prefix that every worker shares (the revocation check on every request, the keys once a
second), as instances of one deployment do; a server that cannot be reached is reported as skipped.
The PostgreSQL store runs twice: as configured by default (each pooled connection checked before
it is lent) and with that check off, which shows what the check costs.

Every row without a shared store runs a third time, as ``1, pinned``: the one worker on one CPU
and wrk on another (``sched_setaffinity``), so the two never take turns on a core and the ratio
measures the worker alone; reported as skipped where this process may use fewer than two CPUs.
"""

# ruff: noqa: S603, S607 -- uvicorn and wrk are started with fixed arguments.

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from .common import round_orders, spread, table

ROOT = Path(__file__).resolve().parent.parent

LUA = r"""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  threads[#threads + 1] = thread
  counter = counter + 1
end
function done(summary, latency, requests)
  local most = 0
  for _, thread in ipairs(threads) do
    local served = thread:get("served")
    if served > most then most = served end
  end
  io.write(string.format("most tokens presented by one thread: %%d\n", most))
end
function init(args)
  tokens = {}
  for line in io.lines("%(file)s") do tokens[#tokens + 1] = line end
  i = tid
  served = 0
end
function request()
  local t = tokens[(i %% #tokens) + 1]
  i = i + %(threads)d
  served = served + 1
  %(build)s
end
"""

GUARD_BUILD = r"""return wrk.format("POST", "/mcp", {["Authorization"] = "Bearer " .. t,
    ["Content-Type"] = "application/json", ["Accept"] = "application/json, text/event-stream"},
    '{"jsonrpc":"2.0","id":1,"method":"tools/list"}')"""
UNCHECKED = "connections lent unchecked"
"""The row of the PostgreSQL store with ``check_connections=False``."""
TOKEN_BUILD = r"""return wrk.format("POST", "/token", {["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&client_id=c1&refresh_token=" .. t)"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until a worker answers HTTP (the listener accepts connections before any worker runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmark server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                if s.recv(5) == b"HTTP/":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the benchmark server did not start")


def _parse(out: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    most = re.search(r"most tokens presented by one thread: (\d+)", out)

    def ms(m: re.Match[str] | None) -> float:
        if m is None:
            return 0.0
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "most_per_thread": float(most.group(1)) if most else 0.0,
    }


WRK_THREADS = 2
"""wrk's threads (``-t``); each presents its own share of the tokens, every ``WRK_THREADS``-th."""


class Run(NamedTuple):
    """One row of part d: the app (:mod:`benchmarks.http_apps`), the tokens wrk presents, the Lua
    that builds each request, the refresh families each worker seeds, the shared store's URL."""

    app: str
    tokens: Path
    build: str
    grants: int = 0
    store: str = ""


PINNED = "1, pinned"
"""Part d's configuration with one worker and wrk each on a CPU of their own."""


class Setup(NamedTuple):
    """How part d serves a row: the uvicorn worker processes and, when pinned, the CPUs the
    server and wrk may each run on."""

    workers: int
    server_cpus: frozenset[int] = frozenset()
    wrk_cpus: frozenset[int] = frozenset()


def _setups() -> tuple[dict[str, Setup], str]:
    """Part d's configurations, and why the pinned one is left out ('' when it is not)."""
    setups = {"1": Setup(1), "2": Setup(2)}
    if not hasattr(os, "sched_getaffinity"):
        return setups, "pinning a process to a CPU needs sched_setaffinity (Linux)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return setups, f"this process may run on {len(cpus)} CPU only; pinning needs two"
    setups[PINNED] = Setup(1, frozenset(cpus[:1]), frozenset(cpus[1:2]))
    return setups, ""


def _on(cpus: frozenset[int]) -> Any:
    """A ``preexec_fn`` confining the child process to ``cpus`` (``None``: anywhere)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _run(spec: Run, setup: Setup, *, seconds: int, connections: int) -> dict[str, float]:
    workers = setup.workers
    port = _free_port()
    env = {
        **os.environ,
        "KAVACH_BENCH_APP": spec.app,
        "KAVACH_BENCH_GRANTS": str(spec.grants),
        "KAVACH_BENCH_STORE": spec.store,
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "benchmarks.serve", str(port), str(workers)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_on(setup.server_cpus)
    )
    try:
        _wait(port, proc)
        time.sleep(1.0 + workers)  # every worker up and its state built
        threads = WRK_THREADS
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(LUA % {"file": spec.tokens, "threads": threads, "build": spec.build})
            script = f.name
        out = subprocess.run(
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--latency",
                "-s",
                script,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
            preexec_fn=_on(setup.wrk_cpus),
        ).stdout
        os.unlink(script)
        return _parse(out)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_tokens(directory: Path, name: str, tokens: list[str]) -> Path:
    path = directory / f"{name}.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def over_http(quick: bool = False) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    from . import http_apps

    # enough distinct tokens that no wrk thread presents one twice in a run (checked: "reused")
    seconds, rounds, distinct, connections = (1, 1, 20000, 8) if quick else (5, 5, 60000, 32)
    share = -(-distinct // WRK_THREADS)
    setups, unpinned = _setups()
    minted = http_apps.tokens(distinct + 1)

    with tempfile.TemporaryDirectory() as tmp, http_apps.shared_stores() as (stores, missing):
        d = Path(tmp)
        repeat = _write_tokens(d, "repeat", minted[:1])
        first = _write_tokens(d, "first", minted[1:])
        kavach_refresh = _write_tokens(d, "krefresh", [http_apps.refresh_for(i) for i in range(1, distinct + 1)])
        mcp_refresh = _write_tokens(d, "mrefresh", [http_apps.mcp_refresh_for(i) for i in range(1, distinct + 1)])
        guard_runs = {
            "no guard (ceiling)": Run("plain", repeat, GUARD_BUILD),
            "kavach, repeat token": Run("kavach", repeat, GUARD_BUILD),
            **{
                f"kavach, repeat token, {label} store": Run("kavach-store", repeat, GUARD_BUILD, store=url)
                for label, url in stores.items()
            },
            **{
                f"kavach, repeat token, {label} store, {UNCHECKED}": Run(
                    "kavach-store-unchecked", repeat, GUARD_BUILD, store=url
                )
                for label, url in stores.items()
                if label == "PostgreSQL"
            },
            "kavach, first-sight tokens": Run("kavach", first, GUARD_BUILD),
            "MCP SDK bearer middleware (PyJWT verifier)": Run("mcp", repeat, GUARD_BUILD),
            "kavach token endpoint (refresh, rotation)": Run("kavach-token", kavach_refresh, TOKEN_BUILD, distinct),
            "MCP SDK TokenHandler (refresh, rotation)": Run("mcp-token", mcp_refresh, TOKEN_BUILD, distinct),
        }
        result: dict[str, Any] = {
            "seconds_per_run": seconds,
            "connections": connections,
            "wrk_threads": WRK_THREADS,
            "distinct_tokens": distinct,
            "skipped": {f"kavach, repeat token, {label} store": why for label, why in missing.items()},
            "workers": {},
        }
        pinned = setups.get(PINNED)
        result["pinned"] = (
            {"server_cpus": sorted(pinned.server_cpus), "wrk_cpus": sorted(pinned.wrk_cpus)}
            if pinned
            else {"skipped": unpinned}
        )
        for configuration, setup in setups.items():
            names = [n for n in guard_runs if not (setup.server_cpus and guard_runs[n].store)]
            raw: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            for order in round_orders(names, rounds):
                for name in order:
                    raw[name].append(_run(guard_runs[name], setup, seconds=seconds, connections=connections))
            summary: dict[str, Any] = {}
            ceiling = raw["no guard (ceiling)"]
            token_base = raw["MCP SDK TokenHandler (refresh, rotation)"]
            for name in names:
                runs = raw[name]
                file = guard_runs[name].tokens
                base = token_base if "token" in guard_runs[name].app else ceiling
                summary[name] = {
                    "rps": spread([x["rps"] for x in runs]),
                    "ratio": spread(
                        [x["rps"] / b["rps"] if b["rps"] else 0.0 for x, b in zip(runs, base, strict=True)]
                    ),
                    "baseline": "MCP SDK TokenHandler (refresh, rotation)"
                    if base is token_base
                    else "no guard (ceiling)",
                    "non_2xx": sum(x["non_2xx"] for x in runs),
                    "socket_errors": sum(x["socket_errors"] for x in runs),
                    # each wrk thread walks its own share of the tokens: a thread that presented more
                    # than its share presented some twice (first sight became repeat sight; a
                    # refresh became a retry or a reuse)
                    "reused_tokens": file is not repeat and any(x["most_per_thread"] > share for x in runs),
                    "requests": sum(x["requests"] for x in runs),
                    "p50_ms": spread([x["p50_ms"] for x in runs]),
                    "p99_ms": spread([x["p99_ms"] for x in runs]),
                    "runs": runs,
                }
            result["workers"][configuration] = summary
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for workers, summary in result["workers"].items():
        for name, s in summary.items():
            r = s["ratio"]
            rows.append(
                [
                    workers,
                    name,
                    f"{s['rps']['median']:.0f} [{s['rps']['min']:.0f}-{s['rps']['max']:.0f}]",
                    f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]",
                    s["baseline"],
                    f"{s['p99_ms']['median']:.1f}",
                    f"{s['non_2xx']:.0f}" + (" (tokens reused)" if s.get("reused_tokens") else ""),
                ]
            )
    text = table(
        f"d. over HTTP: uvicorn, wrk on loopback, {result['connections']} connections,"
        f" {result['seconds_per_run']} s per run",
        ["workers", "app", "req/s [min-max]", "ratio [min-max]", "ratio to", "p99 ms", "non-2xx"],
        rows,
    )
    for name, why in result.get("skipped", {}).items():
        text += f"\nskipped: {name} ({why})"
    pinned = result.get("pinned", {})
    if "skipped" in pinned:
        text += f"\nskipped: workers {PINNED} ({pinned['skipped']})"
    elif pinned:
        server, wrk = (", ".join(map(str, pinned[key])) for key in ("server_cpus", "wrk_cpus"))
        text += f"\n{PINNED}: the worker on CPU {server}, wrk on CPU {wrk}"
    return text
