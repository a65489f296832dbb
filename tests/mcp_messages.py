"""The MCP messages tests write by hand, in one place: a client's ``initialize`` request and the
notification that follows it (MCP 2025-06-18, basic/lifecycle), a ``tools/list`` request, and the
headers the Streamable HTTP transport asks of a client (basic/transports: ``Accept`` naming both
JSON and the event stream, and ``MCP-Protocol-Version`` after initialization)."""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = "2025-06-18"

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
"""The first request of a session, as JSON (``httpx``'s ``json=``); :data:`INITIALIZE_BODY` as bytes."""

INITIALIZE_BODY = json.dumps(INITIALIZE).encode()
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
TOOLS_LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL_VERSION}
