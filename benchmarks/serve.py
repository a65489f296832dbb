"""Run one benchmark app under uvicorn, one process per worker.

``python -m benchmarks.serve PORT WORKERS`` (the app is picked by ``KAVACH_BENCH_APP``, see
:mod:`benchmarks.http_apps`).

One worker listens on the socket :func:`kavach.cli.listen_socket` makes, the one ``kavach serve``
uses. Several workers each get a listening socket of their own on the same port
(``SO_REUSEPORT``), so the kernel spreads new connections over them by address. Two things
that uvicorn's own ``--workers N`` does would otherwise be measured instead of the apps:

- it binds a socket with protocol 0, so the workers' connections keep Nagle's algorithm on and
  every kept-alive request waits about 40 ms for a delayed ACK (on Linux);
- its workers share one listening socket, and the one that wakes first on a burst of new
  connections accepts as many as are waiting: wrk's 32 kept-alive connections, opened at once,
  all landed on one worker in 2 of 5 rounds of an earlier run, which then measured one worker.

Both listeners are made with ``IPPROTO_TCP`` named explicitly and the same backlog.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any

import uvicorn
from kavach.cli import CliError, listen_socket
from uvicorn._subprocess import get_subprocess

BACKLOG = 2048


def _config() -> uvicorn.Config:
    return uvicorn.Config("benchmarks.http_apps:app", factory=True, access_log=False, log_level="warning")


def reuse_port_listeners(port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on 127.0.0.1:``port`` (0: a free port, the same for all), each
    with ``SO_REUSEPORT`` so the kernel balances new connections across them."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    return sockets


def _stop(signum: int, frame: Any) -> None:
    sys.exit(0)


def main(port: int, workers: int) -> None:
    config = _config()
    if workers == 1:
        sock = listen_socket("127.0.0.1", port)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
        return
    listeners = reuse_port_listeners(port, workers)
    processes = [get_subprocess(config, uvicorn.Server(config).run, [sock]) for sock in listeners]
    signal.signal(signal.SIGTERM, _stop)
    try:
        for process in processes:
            process.start()
        for sock in listeners:  # each worker holds its own copy now
            sock.close()
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            if process.pid is not None:
                process.join(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("workers", type=int, help="uvicorn worker processes (1-64)")
    args = parser.parse_args()
    if not 0 <= args.port < 65536:
        parser.error(f"port must be between 0 and 65535, not {args.port}")
    if not 1 <= args.workers <= 64:
        parser.error(f"workers must be between 1 and 64, not {args.workers}")
    try:
        main(args.port, args.workers)
    except CliError as exc:
        parser.exit(1, f"python -m benchmarks.serve: {exc}\n")
