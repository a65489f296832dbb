"""MCP sessions bound to the principal that opened them (MCP security best practices: session hijacking).

A Streamable HTTP server names a session with ``Mcp-Session-Id`` (MCP transports, session
management); a session id is no credential, yet anyone who learns one could otherwise continue
that session, read its stream or end it with a token of their own. :class:`SessionBinding`, which
:class:`kavach.starlette.KavachGuard` applies to the app it guards, binds each id to the
principal (subject and client) whose request the app answered with it:

- the client is given ``ID.TAG`` (:class:`SessionSeal`) in place of every ``Mcp-Session-Id`` the
  app sends in answer to a request that names a session or may start one (its body mentions
  ``initialize``: MCP servers assign a session id at initialization); an id sent elsewhere
  reaches the client as it is, and, having no tag, never opens: it fails closed;
- a request naming a session reaches the app, with ``ID`` alone, only when the id opens for the
  request's own principal; another's, a forged or an altered one is answered 404
  (``session_not_found``), as the MCP SDK answers an unknown session; two ids are a 400.

Nothing is kept per session: every instance keyed with the same secret (the deployment's) opens
the ids any of them sealed, so a load balancer needs no sticky sessions for this.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from kavach_core.opaque import b64url

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Owner = tuple[str, str]

HEADER = b"mcp-session-id"


def owner_of(scope: Scope) -> Owner | None:
    """The verified principal's (subject, client), when a guard has put one in the scope."""
    state = scope.get("state") or {}
    principal = state.get("principal") if isinstance(state, dict) else getattr(state, "principal", None)
    if principal is None:
        return None
    return (str(principal.subject), str(principal.client_id))


class SessionSeal:
    """Binds ``Mcp-Session-Id`` values to principals without keeping anything.

    ``seal(ID, owner)`` is ``ID.TAG``, TAG the unpadded base64url HMAC-SHA256 (RFC 2104) of the
    owner's subject and client and ID, under a key derived from ``secret`` for this use alone;
    ``open`` gives ID back only for that owner (the tags compared in constant time). The MCP
    transport asks for session ids of visible ASCII (0x21-0x7E): a tag adds only such characters.
    """

    _LABEL = b"kavach guard: Mcp-Session-Id binding"

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._key = hmac.new(secret, self._LABEL, hashlib.sha256).digest()

    def _tag(self, session: str, owner: Owner) -> bytes:
        message = json.dumps([owner[0], owner[1], session]).encode("ascii")  # unambiguous, whatever the values
        return b64url(hmac.new(self._key, message, hashlib.sha256).digest()).encode("ascii")

    def seal(self, session: str, owner: Owner) -> str:
        return f"{session}.{self._tag(session, owner).decode('ascii')}"

    def open(self, sealed: str, owner: Owner) -> str | None:
        """The session id inside ``sealed`` when it was sealed for ``owner``, else ``None``."""
        session, dot, tag = sealed.rpartition(".")
        if not dot or not session:
            return None
        return session if hmac.compare_digest(tag.encode("latin-1", "replace"), self._tag(session, owner)) else None


async def refuse(
    send: Send,
    status: int,
    error: str,
    description: str,
    retry_after: int | None = None,
    more: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with a JSON ``{"error", "error_description"}`` body (and ``Retry-After`` when given,
    and the headers ``more``)."""
    data = json.dumps({"error": error, "error_description": description}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode("ascii")), *more]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode("ascii")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class SessionBinding:
    """The binding of one guard (see the module docstring), keyed by ``secret``: :meth:`open`
    reads the session ids a request names, :meth:`sealing` seals those its response carries."""

    def __init__(self, secret: bytes) -> None:
        self.seal = SessionSeal(secret)

    def open(self, named: list[bytes], owner: Owner) -> bytes | tuple[int, str, str]:
        """The session id to hand the app for the ``Mcp-Session-Id`` values ``named`` (one or
        more), or the refusal to answer instead (status, error, description)."""
        if len(named) > 1:
            return (400, "invalid_request", "more than one Mcp-Session-Id header")
        session = self.seal.open(named[0].decode("latin-1"), owner)
        if session is None:
            return (404, "session_not_found", "no such MCP session")
        return session.encode("latin-1")

    def sealing(self, send: Send, owner: Owner) -> Send:
        """``send``, with every ``Mcp-Session-Id`` of the response sealed to ``owner``."""

        async def sealed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if any(k.lower() == HEADER for k, _ in headers):
                    message = dict(message, headers=[(k, self._sealed(k, v, owner)) for k, v in headers])
            await send(message)

        return sealed

    def _sealed(self, name: bytes, value: bytes, owner: Owner) -> bytes:
        return self.seal.seal(value.decode("latin-1"), owner).encode("latin-1") if name.lower() == HEADER else value
