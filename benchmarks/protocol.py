"""(f) The guards' cost per HTTP request without sockets: uvicorn's own HTTP protocol, in process.

Each app of :mod:`benchmarks.http_apps` sits behind the HTTP protocol class uvicorn picks for
itself (``http="auto"``: httptools when installed, else h11) and uvicorn's proxy-headers
middleware, as in a worker; one kept-alive connection per app gets the bytes of the same MCP
``tools/list`` POST that part d sends, through an in-memory transport instead of a socket. So
every request pays what a worker's Python pays (HTTP parsing, the ASGI cycle, the guard,
writing the response) and nothing of the kernel, ``wrk`` or the other vCPU: the host's noise,
which swings part d's ratios by a tenth, mostly drops out, and the ratio to the no-guard app
isolates the guard. Batches of requests are interleaved per round like every other part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .common import fmt_ratio, fmt_time, interleaved, table

APPS = {
    "no guard (ceiling)": ("plain", "repeat"),
    "least a guard does (dict lookup, json.loads)": ("least", "repeat"),
    "kavach adapter alone (guard flow, scope map fixed)": ("kavach-adapter", "repeat"),
    "kavach adapter + scope map (guard flow fixed)": ("kavach-adapter-scopes", "repeat"),
    "kavach, repeat token": ("kavach", "repeat"),
    "kavach, first-sight tokens": ("kavach", "first"),
    "MCP SDK bearer middleware (PyJWT verifier)": ("mcp", "repeat"),
}


KEEP_ALIVE = 24 * 3600
"""Seconds a connection may stay idle: longer than any whole run of this part."""


class _Transport:
    """The socket's stand-in: keeps nothing, notes whether each response began with a 2xx status."""

    def __init__(self) -> None:
        self.non_2xx = 0
        self.responses = 0
        self._closing = False

    def write(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            self.responses += 1
            if data[9:10] != b"2":
                self.non_2xx += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Done:
    """The ASGI app as uvicorn is given it, plus a future that resolves when a request is answered."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and not self.future.done():
                self.future.set_result(None)


class Connection:
    """One kept-alive HTTP/1.1 connection to ``app`` through uvicorn's protocol class."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        import uvicorn
        from uvicorn.server import ServerState

        self.loop = loop
        self.done = _Done(app, loop)
        # The connection waits on the loop while the other apps' batches run, for seconds on a slow
        # host: uvicorn's keep-alive timer (5 s by default) would close it in between.
        config = uvicorn.Config(
            self.done, access_log=False, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE
        )
        config.load()  # picks the protocol class and adds the proxy-headers middleware, as a worker does
        self.transport = _Transport()
        self.protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        self.protocol.connection_made(self.transport)

    async def request(self, data: bytes) -> None:
        self.done.future = self.loop.create_future()
        self.protocol.data_received(data)
        await self.done.future


def request_bytes(token: str) -> bytes:
    """The bytes of part d's guarded request (its wrk script sends the same headers and body)."""
    from .http_apps import BODY

    return (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer "
        + token.encode("ascii")
        + b"\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        + b"Content-Length: "
        + str(len(BODY)).encode()
        + b"\r\n\r\n"
        + BODY
    )


def in_protocol(quick: bool = False) -> dict[str, Any]:
    rounds, batch = (2, 20) if quick else (15, 1000)
    loop = asyncio.new_event_loop()
    try:
        from . import http_apps

        minted = [request_bytes(token) for token in http_apps.tokens((rounds + 1) * batch + 1)]
        repeat, first = minted[0], iter(minted[1:])
        connections: dict[str, Connection] = {}

        def batched(name: str, app: str, source: str) -> Callable[[], None]:
            connection = connections[name] = Connection(http_apps.app(app), loop)

            async def many() -> None:
                for _ in range(batch):
                    await connection.request(repeat if source == "repeat" else next(first))

            return lambda: loop.run_until_complete(many())

        variants = {name: batched(name, app, source) for name, (app, source) in APPS.items()}
        result = interleaved(variants, baseline="no guard (ceiling)", rounds=rounds, number=1)
        for name, entry in result.items():
            transport = connections[name].transport
            entry["seconds"] = {k: v / batch for k, v in entry["seconds"].items()}
            entry["requests_per_s"] = entry["ops_per_s"] * batch  # ops: batches
            ratio = entry["ratio"]  # time per request against the ceiling's; its inverse compares throughput
            entry["throughput_ratio"] = {
                "median": 1 / ratio["median"],
                "min": 1 / ratio["max"],
                "max": 1 / ratio["min"],
            }
            entry["responses"] = transport.responses
            entry["non_2xx"] = transport.non_2xx
        protocol = type(next(iter(connections.values())).protocol)
        return {"protocol": f"{protocol.__module__}.{protocol.__name__}", "batch": batch, "apps": result}
    finally:
        loop.close()


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, r in result["apps"].items():
        rows.append([name, fmt_time(r["seconds"]["median"]), fmt_ratio(r["throughput_ratio"]), str(r["non_2xx"])])
    protocol = result["protocol"].rsplit(".", 1)[-1]
    return table(
        f"f. the guards through uvicorn's {protocol} in process, no sockets (requests/s ratio to no guard)",
        ["app", "time per request", "ratio [min-max]", "non-2xx"],
        rows,
    )
