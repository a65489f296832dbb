"""One deadline for a whole HTTP exchange, kept at the socket.

httpx's ``timeout`` bounds each socket operation on its own, so a server sending its status line
and headers one byte at a time, each byte well within the timeout, keeps a client waiting for
ever. Two clients here promise more: the client metadata document fetcher (:mod:`kavach.fetcher`,
CM-02: a whole fetch within its deadline) and the conformance kit (every answer whole within
``--timeout``). Both use :func:`transport`: an httpx transport whose network backend (httpcore's,
the layer below HTTP/1.1 parsing, RFC 9112) cuts every connect, TLS handshake, read, write and
retry pause to the time left before the :class:`Deadline`; past it, the step fails at once with
httpcore's timeout of that step, which httpx reports as its own.

httpx's ``HTTPTransport`` takes no network backend, so the one of its connection pool (``_pool``,
the one attribute its ``handle_request`` uses, httpx 0.23 to 0.28) is wrapped after it is built:
``pyproject.toml`` keeps httpx below 0.29, and the deadline tests of both clients fail should a
release change that.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


class Deadline:
    """The ``time.monotonic()`` instant the current exchange must end by (``None``: no limit),
    and how many bytes it has read so far (a late answer that had begun is "still sending")."""

    def __init__(self, at: float | None = None) -> None:
        self.at = at
        self.received = 0

    def start(self, seconds: float) -> None:
        """A new exchange, to end ``seconds`` from now."""
        self.at = time.monotonic() + seconds
        self.received = 0

    def clear(self) -> None:
        self.at = None

    def bound(self, timeout: float | None, late: type[Exception]) -> float | None:
        """``timeout`` cut to the time left; ``late`` (an httpcore timeout) once none is left."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise late("the deadline has passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose reads, writes and TLS handshake end by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))
        self._deadline.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's network backend, each connection made (and used) by the deadline."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options), self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        left = self._deadline.bound(seconds, httpcore.PoolTimeout)
        self._inner.sleep(seconds if left is None else left)


def transport(
    deadline: Deadline, *, verify: ssl.SSLContext | bool = True, max_connections: int | None = None
) -> httpx.HTTPTransport:
    """An httpx transport (no retries) whose every connection keeps to ``deadline``."""
    limits = httpx.Limits(max_connections=max_connections)
    made = httpx.HTTPTransport(verify=verify, retries=0, limits=limits)
    pool = made._pool
    pool._network_backend = _Backend(pool._network_backend, deadline)
    return made
