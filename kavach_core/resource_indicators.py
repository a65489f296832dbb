"""Resource indicators and canonical resource URIs.

RFC 8707 §2: ``resource`` is an absolute URI without a fragment. The MCP authorization spec
(canonical server URI) and RS-05: lower-case scheme and host, no default port, no fragment,
no trailing slash unless the path is the root; both sides are compared after canonicalisation.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from .errors import OAuthError

_DEFAULT_PORTS = {"http": 80, "https": 443}


_MEMO_SIZE = 256
_memo: dict[str, str] = {}


def canonical_resource(uri: str) -> str:
    """The canonical form of a resource URI; ``ValueError`` when it cannot be one.

    The function is pure, so the answers for the last few distinct valid URIs are remembered
    (every request of a flow names the same resource); a URI that fails is never remembered.
    """
    found = _memo.get(uri) if type(uri) is str else None
    if found is None:
        found = _canonical(uri)
        if type(uri) is str:
            if len(_memo) >= _MEMO_SIZE:
                _memo.clear()
            _memo[uri] = found
    return found


def _canonical(uri: str) -> str:
    if not uri or any(ch.isspace() for ch in uri) or any(ord(ch) < 0x20 for ch in uri):
        raise ValueError("a resource must be an absolute URI without spaces")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{uri!r} is not a valid URI") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"{uri!r} must use https (or http on loopback)")
    if not parts.hostname:
        raise ValueError(f"{uri!r} has no host")
    if "#" in uri:
        raise ValueError(f"{uri!r} must not have a fragment (RFC 8707 §2)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{uri!r} must not carry user information")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path
    if path == "/":
        path = ""
    elif path.endswith("/"):
        path = path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def resource_path(canonical: str) -> str:
    """The path of a canonical resource URI, ``""`` for the root."""
    return urlsplit(canonical).path


def parse_resource(value: str) -> str:
    """A ``resource`` request parameter made canonical, or ``invalid_target`` (RFC 8707 §2)."""
    if "#" in value:
        raise OAuthError("invalid_target", "resource must not contain a fragment")
    try:
        return canonical_resource(value)
    except ValueError as exc:
        raise OAuthError("invalid_target", "resource must be an absolute https URI") from exc


PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource: str) -> str:
    """Where the protected resource metadata of a canonical ``resource`` lives (RFC 9728 §3.1):
    the well-known path inserted between the host and the resource's path."""
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + parts.path, parts.query, ""))
