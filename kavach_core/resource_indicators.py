"""Resource indicators and canonical resource URIs.

RFC 8707 §2: ``resource`` is an absolute URI without a fragment. The MCP authorization spec
(canonical server URI) and RS-05: lower-case scheme and host, no default port, no fragment,
no trailing slash unless the path is the root; both sides are compared after canonicalisation.
A path with percent-encodings or dot segments has other spellings (RFC 3986 §6.2.2.2, §6.2.2.3)
that a server's decoded request path would not equal, so it is refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import OAuthError
from .memo import Memo

_DEFAULT_PORTS = {"http": 80, "https": 443}


_memo: Memo[str, str] = Memo(256)


def canonical_resource(uri: str) -> str:
    """The canonical form of a resource URI; ``ValueError`` when it cannot be one.

    The function is pure, so the answers for the last few distinct valid URIs are remembered
    (every request of a flow names the same resource); a URI that fails is never remembered.
    """
    if type(uri) is not str:  # a subclass may compare or hash otherwise: never remembered
        return _canonical(uri)
    found = _memo.get(uri)
    return found if found is not None else _memo.put(uri, _canonical(uri))


_BRACKETED = re.compile(r"\[[^\[\]]*\](?::[0-9]*)?")
_REG_NAME = re.compile(r"[a-z0-9\-._~]+")


def host_problem(netloc: str, host: str) -> str | None:
    """Why ``host`` is not an RFC 3986 §3.2.2 host written out: a bracketed IPv6 literal, or a
    reg-name / IPv4 address of unreserved characters only (letters, digits, ``-._~``).

    ``urlsplit`` does not check this: from ``]x[y`` it takes ``y`` as the host, and it keeps DEL
    and non-ASCII characters, so a garbage authority would canonicalise to a URI that no longer
    parses (found by conformance/fuzz/fuzz_uris.py). RFC 3986 also lets a reg-name hold
    percent-encoded octets, but a browser decodes them (WHATWG URL host parsing), so
    ``https://ex%61mple.com/cb`` would land on a host other than the one a consent page shows and
    two spellings of one resource would be two audiences: such hosts are refused (an
    internationalised name is given in its ``xn--`` form). So are the sub-delimiters RFC 3986
    also allows (``*.example.com``, ``a!b``): no DNS name has them, and a wildcard host would
    read as a pattern where matching is exact. A reg-name may also be empty between its dots
    (``a..b``, ``.a``), but no resolver looks such a name up (RFC 1034 §3.1: only the root label
    is empty, so one trailing dot stays allowed): refused here, it is refused once, where it is
    written, instead of failing on every request that would reach it. Underscores stay allowed:
    container networks name hosts with them."""
    hostport = netloc.rpartition("@")[2]
    if "[" in hostport or "]" in hostport:
        if not _BRACKETED.fullmatch(hostport):
            return "a bracketed host must be one IPv6 literal, then at most a port"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "the bracketed host is not an IPv6 address"
        return None
    if "%" in host:
        return "the host must not be percent-encoded (give an internationalised name in its xn-- form)"
    if not _REG_NAME.fullmatch(host):
        return "the host has characters a host name cannot have (letters, digits and -._~ only)"
    if host.startswith(".") or ".." in host:
        return "the host has an empty label (a leading dot, or two dots in a row)"
    return None


def has_dot_segment(path: str) -> bool:
    """True when a segment of ``path`` is ``.`` or ``..``, written out or with its dots
    percent-encoded (``%2e``, ``%2E``, ``.%2e``): RFC 3986 §6.2.2.2 decodes percent-encoded
    unreserved characters, so a server that normalises its request path reads ``%2e%2e`` as ``..``
    and removes it with the segment before it (§5.2.4)."""
    return any(segment.lower().replace("%2e", ".") in (".", "..") for segment in path.split("/"))


def _canonical(uri: str) -> str:
    if not uri or any(ch.isspace() for ch in uri) or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in uri):
        raise ValueError("a resource must be an absolute URI without spaces or control characters")
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
    problem = host_problem(parts.netloc, host)
    if problem is not None:
        raise ValueError(f"{uri!r}: {problem}")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = parts.path
    if "%" in path:
        raise ValueError(f"{uri!r}: write the path without percent-encoding (servers compare paths decoded)")
    if has_dot_segment(path):
        raise ValueError(f"{uri!r}: write the path without dot segments (RFC 3986 §5.2.4)")
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
        raise OAuthError(
            "invalid_target",
            "resource must be an absolute https URI (http on loopback) without user information, "
            "percent-encoding or dot segments",
        ) from exc


PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"


def metadata_url(resource: str) -> str:
    """Where the protected resource metadata of a canonical ``resource`` lives (RFC 9728 §3.1):
    the well-known path inserted between the host and the resource's path."""
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN + parts.path, parts.query, ""))
