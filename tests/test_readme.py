"""The README's tour works as written: its Python blocks, assembled, build every adapter."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_readme_tour_blocks_run(tmp_path: Path, monkeypatch: Any) -> None:
    """Setup (local users created before the store, one database file), then each framework."""
    blocks = python_blocks()
    assert len(blocks) == 4, "setup, MCP SDK/Starlette, Flask, aiohttp"
    monkeypatch.chdir(tmp_path)
    import flask
    from aiohttp import web
    from mcp.server import MCPServer

    namespace: dict[str, Any] = {"SECRET": secrets.token_bytes(32)}
    exec(blocks[0], namespace)
    server = namespace["server"]
    assert (tmp_path / "kavach.db").exists()

    namespace.update(mcp_server=MCPServer("tour"))
    exec(blocks[1], namespace)
    assert callable(namespace["app"])

    flask_app = flask.Flask("tour")
    namespace.update(app=flask_app)
    exec(blocks[2].replace("def mcp(): ...", "def mcp():\n    return 'ok'"), namespace)
    assert any(rule.rule == "/token" for rule in flask_app.url_map.iter_rules())
    assert any(rule.rule == "/mcp" for rule in flask_app.url_map.iter_rules())

    namespace.update(web=web)
    exec(blocks[3], namespace)
    aio_app = namespace["app"]
    assert isinstance(aio_app, web.Application)
    assert any(r.resource is not None and r.resource.canonical == "/token" for r in aio_app.router.routes())
    assert server.config.issuer == "https://auth.example.com"
