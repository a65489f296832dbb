"""Redirect URIs: what may be registered, and how a requested one is matched.

RFC 9700 §4.1.3 and OAuth 2.1 §2.3.1: exact string matching; the only exception is the port
of a loopback IP redirect (RFC 8252 §7.3). AZ-03, RG-01.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from .resource_indicators import host_problem

_LOOPBACK = re.compile(r"(?i:http)://(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?([/?].*)?", re.DOTALL)
"""An http loopback IP redirect URI, split into host, port and the rest (RFC 8252 §7.3). The
scheme is matched in any case (RFC 3986 §3.1), as registration accepts it: ``HTTP://127.0.0.1/cb``
keeps the loopback port rule, and the scheme's spelling never decides a match."""


URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
"""RFC 3986 §2: unreserved and reserved characters, and complete percent-encodings; anything else
(``"``, ``<``, ``>``, ``\\``, ``{``, non-ASCII...) is not a URI, and a browser would encode it
before following the redirect, so the registered string would not be where the answer lands."""


_RESPONSE_PARAMETERS = frozenset({"code", "state", "iss", "error", "error_description", "error_uri"})
"""What the authorization response adds to the redirect URI's query (RFC 6749 §4.1.2, §4.1.2.1;
RFC 9207 §2); a registered query that already had one would send it twice (RFC 6749 §3.1)."""


def _loopback(uri: str) -> tuple[str, str] | None:
    """``(host, rest)`` of an http loopback IP URI (the port removed), else ``None``."""
    m = _LOOPBACK.fullmatch(uri)
    if m is None or (m.group(2) is not None and int(m.group(2)) > 65535):
        return None
    return m.group(1), m.group(3) or ""


def is_loopback(uri: str) -> bool:
    """True for an ``http://127.0.0.1[:port]`` or ``http://[::1][:port]`` redirect URI."""
    return _loopback(uri) is not None


def matches(requested: str, registered: str) -> bool:
    """Exact string comparison; only a loopback IP redirect's port may differ (AZ-03)."""
    if requested == registered:
        return True
    req = _loopback(requested)
    return req is not None and req == _loopback(registered)


def find_match(requested: str, registered: tuple[str, ...]) -> str | None:
    """The registered URI that ``requested`` matches, or ``None``."""
    for candidate in registered:
        if matches(requested, candidate):
            return candidate
    return None


def registration_problem(uri: str) -> str | None:
    """Why ``uri`` may not be registered as a redirect URI, or ``None`` when it may (RG-01).

    https anywhere; http only on loopback (``127.0.0.1``, ``[::1]``, ``localhost``); private-use
    schemes (``com.example.app:/cb``) for native apps; never a fragment, user information,
    a query naming a parameter the response adds (``code``, ``state``, ``iss``, ``error``...),
    or a ``javascript:``, ``data:``, ``file:``, ``vbscript:`` or ``about:`` scheme.
    """
    if not uri or len(uri) > 2000 or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        return "redirect URIs must be non-empty without spaces or control characters"
    if not URI_CHARACTERS.fullmatch(uri):
        return f"{uri} has characters a URI cannot have (RFC 3986 §2: percent-encode them)"
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        return f"{uri} is not a valid URI"
    scheme = parts.scheme.lower()
    if not scheme:
        return f"{uri} is not an absolute URI"
    if "#" in uri:
        return f"{uri} must not have a fragment"
    taken = _RESPONSE_PARAMETERS.intersection(name for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if taken:
        return f"{uri}: its query must not name {', '.join(sorted(taken))} (the authorization response adds them)"
    if scheme in {"javascript", "data", "file", "vbscript", "about", "blob", "filesystem"}:
        return f"the {scheme} scheme is not allowed"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return f"{uri} must not carry user information"
    if scheme in ("https", "http"):
        host = (parts.hostname or "").lower()
        if not host:
            return f"{uri} has no host"
        problem = host_problem(parts.netloc, host)
        if problem is not None:
            return f"{uri}: {problem}"
    if scheme == "https":
        return None
    if scheme == "http":
        if host in {"127.0.0.1", "::1", "localhost"}:
            return None
        return "http redirect URIs are only allowed on loopback (127.0.0.1, [::1] or localhost)"
    # Private-use URI scheme for native apps (RFC 8252 §7.1): reverse-domain, with a dot.
    if "." not in scheme:
        return f"the {scheme} scheme is not allowed; use https, or a reverse-domain private-use scheme"
    return None
