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

    monkeypatch.setenv("AUTH_SECRET", secrets.token_hex(32))
    namespace: dict[str, Any] = {}
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


def shell_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## On a new machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def test_readme_shows_exactly_two_commands_for_a_new_machine() -> None:
    blocks = shell_blocks()
    assert len(blocks) == 2
    assert all("\n" not in block for block in blocks)
    assert "kavach serve" in blocks[0] and "pytest" in blocks[1]


def test_readme_serve_command_works_in_a_fresh_clone(tmp_path: Path) -> None:
    """The README's first command, exactly as written, in a fresh clone of this commit: it installs,
    starts ``kavach serve`` on the SQLite default, and answers its metadata; then Ctrl-C stops it.
    (The second command is the one ``.ci/run`` runs.)"""
    import json
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    serve = shell_blocks()[0]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAVACH_", "VIRTUAL_ENV"))}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        ["bash", "-c", serve], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = "http://127.0.0.1:8000/.well-known/oauth-authorization-server"
    metadata = None
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    metadata = json.loads(answer.read())
                    break
            except OSError:
                time.sleep(1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert metadata is not None, output[-3000:]
    assert metadata["issuer"] == "http://127.0.0.1:8000"
    assert (clone / "kavach.db").exists()
    assert "http://127.0.0.1:8000/mcp" in output
    assert proc.returncode == 0, output[-3000:]
