"""One deadline for a whole exchange: connecting, sending, the answer's head and its whole body.

httpx's ``timeout`` bounds each socket operation on its own, so a server sending its status line
and headers one byte at a time, each byte well within the timeout, keeps a client waiting for
ever. The kit promises more: every answer arrives whole within ``--timeout`` seconds of starting
the exchange, or the exchange ends as "no answer" (``stopped:``). This module enforces that at the
socket: a network backend (httpcore's extension point, the layer below HTTP/1.1 parsing, RFC 9112)
whose every connect, read and write waits at most until the current exchange's deadline.
"""

from __future__ import annotations

import time
import typing

import httpcore
import httpx


class Deadline:
    """The monotonic time the current exchange must end by (``None``: no exchange running)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.received = 0
        """Bytes read in the current exchange: a late answer that had begun is "still sending"."""

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.received = 0

    def clear(self) -> None:
        self.at = None

    def bound(self, timeout: float | None, late: type[httpcore.TimeoutException]) -> float | None:
        """``timeout`` cut to the time left; ``late`` (an httpcore timeout) once none is left."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise late("the whole answer did not arrive in time")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose reads and writes end at the exchange's deadline."""

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
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded), self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's network backend, each connection made (and used) within the deadline."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _Stream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def client(timeout: float, deadline: Deadline) -> httpx.Client:
    """An httpx client (never following redirects) whose connections all keep to ``deadline``.

    httpx offers no public way to choose httpcore's network backend, so the transport's pool gets
    the wrapped backend after it is built (checked: httpx 0.28, httpcore 1.0)."""
    transport = httpx.HTTPTransport()
    pool = transport._pool
    pool._network_backend = _Backend(pool._network_backend, deadline)
    return httpx.Client(follow_redirects=False, timeout=timeout, transport=transport, trust_env=False)
