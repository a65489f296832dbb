"""Run one benchmark app under uvicorn on a listener made by :func:`kavach.cli.listen_socket`.

``python -m benchmarks.serve PORT WORKERS`` (the app is picked by ``KAVACH_BENCH_APP``, see
:mod:`benchmarks.http_apps`). uvicorn's own ``--workers N`` binds a socket with protocol 0, so
the workers' connections keep Nagle's algorithm on and every kept-alive request waits about
40 ms for a delayed ACK (on Linux); one and two workers are both served from the same kind of
listener here, the one ``kavach serve`` uses, so they compare like for like.
"""

from __future__ import annotations

import argparse

import uvicorn
from kavach.cli import CliError, listen_socket
from uvicorn.supervisors import Multiprocess


def main(port: int, workers: int) -> None:
    config = uvicorn.Config(
        "benchmarks.http_apps:app",
        factory=True,
        workers=workers,
        access_log=False,
        log_level="warning",
    )
    sock = listen_socket("127.0.0.1", port)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[sock]).run()
        else:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


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
