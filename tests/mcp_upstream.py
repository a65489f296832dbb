"""An upstream MCP server for the proxy tests: ``python tests/mcp_upstream.py PORT SEEN_FILE``.

Made with the official SDK (``MCPServer``, Streamable HTTP at ``/mcp``). Tools:

- ``count(n)``: reports progress ``1..n`` (a notification each, 50 ms apart), then returns ``n``;
- ``auth_header()``: the ``Authorization`` header its request arrived with, or ``"<none>"``.

Every HTTP request is also appended to ``SEEN_FILE`` as one JSON line: its method, its
``Authorization`` header (``null`` when absent) and its ``Mcp-Session-Id``, so a test can check
that no request ever carried the client's token and which requests went through.
"""

from __future__ import annotations

import json
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import Receive, Scope, Send


def build(seen_file: str) -> object:
    server: MCPServer = MCPServer(name="upstream", log_level="WARNING")

    @server.tool(description="Count to n, reporting progress.")
    async def count(n: int, ctx: Context) -> int:
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
            await anyio.sleep(0.05)
        return n

    @server.tool(description="The Authorization header this request carried.")
    def auth_header(ctx: Context) -> str:
        headers = ctx.headers or {}
        return headers.get("authorization") or "<none>"

    inner = server.streamable_http_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            record = {
                "method": scope["method"],
                "authorization": headers.get("authorization"),
                "session": headers.get("mcp-session-id"),
            }
            with open(seen_file, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        await inner(scope, receive, send)

    return app


if __name__ == "__main__":
    port, seen = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(build(seen), host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
