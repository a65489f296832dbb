"""The demo MCP server ``kavach serve`` puts behind the guard when no ``--upstream`` is given.

Made with the official MCP Python SDK (``mcp.server.mcpserver.MCPServer``), served over
Streamable HTTP: two tools (``echo`` and ``add``), one resource (``kavach://about``) and one
prompt (``greet``), enough for any MCP client to show every kind of scope at work
(``tools:call:echo``, ``resources:read``, ``prompts:get:greet``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

ABOUT = (
    "This MCP server is protected by kavachOS: every request carries an OAuth 2.1 access token "
    "bound to this server (RFC 8707) and scoped per tool."
)


def build_server() -> MCPServer:
    """The demo server: ``echo``, ``add``, the ``kavach://about`` resource and the ``greet`` prompt."""
    server: MCPServer = MCPServer(
        name="kavachOS demo",
        instructions="A small server to try an MCP client against kavachOS authorization.",
        log_level="WARNING",
    )

    @server.tool(description="Repeat the text you send.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

    @server.resource("kavach://about", name="about", description="What protects this server", mime_type="text/plain")
    def about() -> str:
        return ABOUT

    @server.prompt(description="A friendly greeting for someone.")
    def greet(name: str) -> str:
        return f"Say hello to {name}, warmly and briefly."

    return server


def transport_security() -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check turned off: ``kavach serve`` checks ``Origin`` itself, in
    front of the guard, for the demo and an upstream alike, against the origins it is configured
    to allow (:mod:`kavach.origins`; MCP 2025-11-25 transports, "Security Warning"). The SDK's
    check would also refuse those origins (403), and any ``Host`` but loopback and the issuer's,
    as a proxy in front may send (421)."""
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


class DemoApp:
    """The demo server's Streamable HTTP endpoint as a bare ASGI app, with its lifespan.

    Route it at ``/mcp`` (path-agnostic: it answers whatever path it is given) and enter
    :meth:`lifespan` in the host application's lifespan, since Starlette does not run the
    lifespans of routed sub-applications.
    """

    def __init__(self) -> None:
        self.server = build_server()
        # Building the Starlette app creates the session manager; only the manager is used.
        self.server.streamable_http_app(transport_security=transport_security())
        self.manager = self.server.session_manager
        self.app: ASGIApp = self.manager.handle_request

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield
