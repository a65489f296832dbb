"""The listening socket of ``kavach serve`` (and of the HTTP benchmark): Nagle stays off.

asyncio sets ``TCP_NODELAY`` on an accepted connection only when the socket reports protocol
``IPPROTO_TCP``, which it inherits from the listener. Without it a response written in two parts
(status line and headers, then the body) waits for the client's delayed ACK on a kept-alive
connection: about 40 ms per request on Linux.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from kavach.cli import CliError, listen_socket


async def _accepted_nodelay(listener: socket.socket) -> int:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
    try:
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        value = await asyncio.wait_for(seen, 10)
        writer.close()
        return value
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_listener_is_tcp_and_connections_get_nodelay(host: str) -> None:
    listener = listen_socket(host, 0)
    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(_accepted_nodelay(listener)) != 0


def test_a_listener_with_protocol_zero_would_not_get_nodelay() -> None:
    """The failure this guards against is real on this platform: the probe can see it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    assert listener.proto == 0
    assert asyncio.run(_accepted_nodelay(listener)) == 0


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(CliError, match=f"port {port} on 127.0.0.1 is already in use"):
            listen_socket("127.0.0.1", port)
