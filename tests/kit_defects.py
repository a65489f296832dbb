"""``kavach serve`` misbehaving on the wire, for the conformance kit's robustness tests
(tests/test_conformance_kit.py): answers that hang, trickle, are huge, malformed, rate-limited,
random or full of terminal escapes.

    python tests/kit_defects.py DEFECT serve --port P --db FILE

Wraps the ASGI application ``kavach serve`` builds in a middleware that applies DEFECT to some
requests; everything else reaches kavach unchanged. ``escape``, ``no_refresh`` and others
rewrite kavach's own JSON answers; ``token_get_json``, ``pkce_default_plain`` and
``scope_widened`` rewrite the request kavach sees. Besides the wire, some of these are protocol
defects the kit must report under their rule (a false pass of the kit otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

from kavach.starlette import read_body

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
Answer = tuple[int, str, bytes] | None

ESCAPE = "\x1b[2J\x1b[31mPWNED\x1b[0m\nAZ-02   pass    injected line"
METADATA = "/.well-known/oauth-authorization-server"
DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested too deeply for Python's recursive decoder (200 kB, well under the kit's 1 MiB)."""
ATTACKER = "https://attacker.conformance.invalid"
CATALOGUE = ("tools:list", "tools:call", "resources:list", "resources:read", "prompts:list", "prompts:get")


def s256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=").decode()


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

    async def answer(self, method: str, path: str, form: dict[str, list[str]], posted: dict[str, list[str]]) -> Answer:
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
        if self.name == "deep_meta" and path == METADATA and next(self.metadata) > 1:
            return 200, "application/json", DEEP
        if self.name == "deep_register" and path == "/register":
            return 201, "application/json", DEEP
        if self.name == "html_redirect" and path == "/authorize" and one.get("redirect_uri", "").startswith(ATTACKER):
            # A 200 page that sends the browser to the unregistered URI with a code all the same.
            target = one["redirect_uri"] + "?" + urlencode({"code": "LEAKED-CODE", "state": one.get("state", "")})
            page = f'<html><head><meta http-equiv="refresh" content="0;url={target}"></head><body>...</body></html>'
            return 200, "text/html", page.encode()
        if self.name == "no_post_authorize" and path == "/authorize" and "response_type" in posted:
            return 405, "application/json", b'{"error": "invalid_request", "error_description": "GET only"}'
        return None

    def request(self, method: str, path: str, query: bytes, body: bytes) -> tuple[str, bytes, bytes]:
        """The request kavach sees instead: (method, query string, form body)."""
        pairs = parse_qsl(query.decode(), keep_blank_values=True)
        one = dict(pairs)
        repeated = len(one) != len(pairs)
        if self.name == "token_get_json" and path == "/token":
            if method == "GET":  # the query taken as the form
                return "POST", b"", query
            if body.startswith(b"{"):  # a JSON body taken as the form
                return method, query, urlencode(json.loads(body)).encode()
        if path == "/authorize" and method == "GET" and not repeated:
            if self.name == "pkce_default_plain" and one.get("code_challenge") and "code_challenge_method" not in one:
                # RFC 7636's default ("plain") applied: the verifier is the challenge itself.
                one |= {"code_challenge": s256(one["code_challenge"]), "code_challenge_method": "S256"}
                return method, urlencode(one).encode(), body
            if self.name == "scope_widened" and set(one.get("scope", "-").split()) <= set(CATALOGUE):
                return method, urlencode(one | {"scope": " ".join(CATALOGUE)}).encode(), body
        return method, query, body

    def rewrite(self, path: str, form: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        if self.name == "escape" and isinstance(body.get("error"), str):
            body["error"] += ESCAPE
        if self.name == "no_refresh":
            body.pop("refresh_token", None)
        if self.name == "refresh_int" and isinstance(body.get("refresh_token"), str):
            body["refresh_token"] = 12345678901234567890
        if self.name == "meta_types" and path.startswith("/.well-known/o"):
            body |= {"jwks_uri": None, "grant_types_supported": "authorization_code", "scopes_supported": 42}
        jwt = form.get("token", [""])[0].count(".") == 2
        if self.name == "introspect_revoked" and path == "/introspect" and jwt and body.get("active") is False:
            body = {"active": True, "token_type": "Bearer"}  # a revoked JWT access token said active
        if self.name == "scope_widened" and path == "/token":
            body.pop("scope", None)  # the whole catalogue granted, and not said
        return body


def middleware(app: App, defect: Defect) -> App:
    async def wrapped(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        body = await read_body(receive, send)
        if body is None:  # answered (413) or the client left
            return None
        request = (scope["method"], scope.get("query_string", b""), body)
        method, query, body = defect.request(scope["method"], scope["path"], request[1], body)
        if (method, query, body) != request:  # kavach sees a form POST (or the rewritten GET)
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
            if body:
                headers += [(b"content-type", b"application/x-www-form-urlencoded")]
                headers += [(b"content-length", str(len(body)).encode())]
            scope = {**scope, "method": method, "query_string": query, "headers": headers}
        posted = parse_qs(body.decode(errors="replace"))
        form = parse_qs(query.decode()) | posted
        if scope["path"] == METADATA and defect.name == "trickle_meta" and next(defect.metadata) > 1:
            return await trickle(send)
        answer = await defect.answer(scope["method"], scope["path"], form, posted)
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
                content = json.dumps(defect.rewrite(scope["path"], form, parsed)).encode()
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
