"""Which web origins may call ``kavach serve``'s MCP endpoint (MCP 2025-11-25 transports,
"Security Warning": servers MUST validate the ``Origin`` header of every request, and answer one
present and not allowed with 403, against DNS rebinding).

Allowed: the issuer's own origin, every loopback origin (``127.0.0.0/8``, ``::1``, ``localhost``;
any port, http or https: a developer's MCP inspector runs there), and the origins an operator
names (``allowed_origins``), ``*`` for any. A request without ``Origin`` (every MCP client that
is not a browser page) is not a page's and passes. Origins compare in their ASCII serialisation
(RFC 6454 §6.2): scheme and host lower-cased, a default port dropped.

The ``Host`` header is not checked: behind a proxy it names whatever the proxy sends, and a
page rebound to the server's address sends an ``Origin`` of its own (browsers do on every
cross-origin request and on every ``POST``), besides having no token to present.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from kavach_core.config import is_loopback_host

from .mcp_sessions import refuse

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANY = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def serialise(origin: str) -> str | None:
    """The ASCII serialisation of ``origin`` (``scheme://host[:port]``, RFC 6454 §6.2), or ``None``
    when it is none: another scheme, a path, user information, a query, no host, a bad port, or
    the opaque ``null``."""
    if not origin or not origin.isascii() or origin != origin.strip():
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path or parts.query or parts.fragment or "?" in origin or "#" in origin:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def origin_of(url: str) -> str | None:
    """The serialised origin (RFC 6454 §4, §6.2) of an http(s) URL such as the issuer or a resource;
    ``None`` for a URL that has none (see :func:`serialise`)."""
    parts = urlsplit(url)
    return serialise(f"{parts.scheme}://{parts.netloc}")


class OriginPolicy:
    """The origins allowed to call the MCP endpoint served under ``issuer`` (module docstring)."""

    def __init__(self, issuer: str, allowed: Iterable[str] = ()) -> None:
        named = tuple(allowed)
        self.any = ANY in named
        own = origin_of(issuer)
        self.allowed = frozenset(o for o in (own, *(serialise(n) for n in named if n != ANY)) if o is not None)

    def allows(self, origin: str) -> bool:
        """Whether a request carrying ``Origin: origin`` may proceed."""
        if self.any:
            return True
        normal = serialise(origin)
        if normal is None:
            return False
        return normal in self.allowed or is_loopback_host(urlsplit(normal).hostname)


def require_origin(app: ASGIApp, policy: OriginPolicy) -> ASGIApp:
    """``app`` behind the ``Origin`` check: a request whose ``Origin`` the policy refuses gets 403
    ``{"error": "origin_not_allowed"}`` and never reaches ``app``; a request naming more than one
    ``Origin`` is refused too (a browser sends one)."""

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origins = [value for name, value in scope["headers"] if name.lower() == b"origin"]
            if origins and (len(origins) > 1 or not policy.allows(origins[0].decode("latin-1"))):
                description = "this page's origin may not call this MCP server (see allowed_origins)"
                return await refuse(send, 403, "origin_not_allowed", description)
        await app(scope, receive, send)

    return checked
