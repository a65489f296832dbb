"""``kavach serve`` misbehaving on the wire, for the conformance kit's robustness tests
(tests/test_conformance_kit.py): answers that hang, trickle, are huge, malformed, rate-limited,
random or full of terminal escapes.

    python tests/kit_defects.py DEFECT serve --port P --db FILE

Wraps the ASGI application ``kavach serve`` builds in a middleware that applies DEFECT to some
requests; everything else reaches kavach unchanged. ``escape`` and ``no_refresh`` rewrite
kavach's own JSON answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from kavach.starlette import read_body

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
Answer = tuple[int, str, bytes] | None

ESCAPE = "\x1b[2J\x1b[31mPWNED\x1b[0m\nAZ-02   pass    injected line"
METADATA = "/.well-known/oauth-authorization-server"


async def hang() -> Answer:
    await asyncio.sleep(3600)
    return None


class Defect:
    """Decides, per request, an answer of its own (status, content type, body), or ``None``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.codes: set[str] = set()
        self.registrations = itertools.count(1)
        self.metadata = itertools.count(1)
        """Metadata requests: the first (tests/kavach_serve.py's readiness probe) is answered as it should."""

    async def answer(self, method: str, path: str, form: dict[str, list[str]]) -> Answer:
        one = {k: v[0] for k, v in form.items()}
        grant = one.get("grant_type")
        if self.name == "hang_plain" and path == "/authorize" and one.get("code_challenge_method") == "plain":
            return await hang()
        if self.name == "hang_token_replay" and grant == "authorization_code":
            if one.get("code") in self.codes:
                return await hang()
            self.codes.add(one.get("code", ""))
        if self.name == "hang_refresh" and grant == "refresh_token":
            return await hang()
        if path == "/register" and method == "POST":
            number = next(self.registrations)
            if self.name == "reg_html":
                return 201, "text/html", b"<html>created</html>"
            if self.name == "reg_noid":
                return 201, "application/json", b'{"ok": true}'
            if self.name == "reg_429_third" and number >= 3:
                return 429, "application/json", b'{"error": "slow_down"}'
        if self.name == "token_html" and grant == "authorization_code":
            return 200, "text/html", b"<html>ok</html>"
        if self.name == "refresh_flaky" and grant == "refresh_token" and random.random() < 0.5:
            return 400, "application/json", b'{"error": "invalid_grant"}'
        if self.name == "huge_meta" and path == METADATA and next(self.metadata) > 1:
            return 200, "application/json", json.dumps({"padding": "A" * (2 << 20)}).encode()
        return None

    def rewrite(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.name == "escape" and isinstance(body.get("error"), str):
            body["error"] += ESCAPE
        if self.name == "no_refresh":
            body.pop("refresh_token", None)
        return body


def middleware(app: App, defect: Defect) -> App:
    async def wrapped(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body = await read_body(receive, send)
        if body is None:  # answered (413) or the client left
            return None
        form = parse_qs(scope.get("query_string", b"").decode()) | parse_qs(body.decode(errors="replace"))
        if scope["path"] == METADATA and defect.name == "trickle_meta" and next(defect.metadata) > 1:
            return await trickle(send)
        answer = await defect.answer(scope["method"], scope["path"], form)
        if answer is not None:
            status, kind, content = answer
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind.encode())]})
            return await send({"type": "http.response.body", "body": content})
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = b"".join(chunks)
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                content = json.dumps(defect.rewrite(parsed)).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})

        await app(scope, replay, capture)

    return wrapped


async def trickle(send: Send) -> None:
    """A metadata document sent one byte every 0.2 s (a whole answer would take minutes)."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    for byte in json.dumps({"issuer": "x" * 1000}).encode():
        await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b""})


def main(argv: list[str]) -> int:
    name, *rest = argv
    from kavach import cli

    build_app = cli.build_app
    cli.build_app = lambda *args, **kwargs: middleware(build_app(*args, **kwargs), Defect(name))
    return int(cli.main(rest))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
