"""The two values an adapter exchanges with the core: :class:`HttpRequest` and :class:`Response`.

An adapter builds an :class:`HttpRequest` from its framework's request and turns a
:class:`Response` back into its framework's response; nothing else crosses the boundary.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import attrs

from .errors import OAuthError, safe_description
from .memo import Memo


def _freeze_pairs(value: Iterable[tuple[str, str]] | Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if type(value) is not tuple and type(value) is not list and isinstance(value, Mapping):  # pairs: no ABC check
        value = value.items()
    return tuple([(str(k), str(v)) for k, v in value])


@attrs.frozen
class HttpRequest:
    """A parsed HTTP request.

    ``query`` keeps every ``(name, value)`` pair in order, so duplicate parameters stay visible
    (AZ-01). Header names are compared case-insensitively; ``headers`` keeps every pair too.
    ``path`` is the decoded path without the query string.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_freeze_pairs)
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_freeze_pairs)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header ``name``, ``None`` when absent; repeated headers are joined with ``,``."""
        lname = name.lower()
        values = [v for k, v in self.headers if k.lower() == lname]
        if not values:
            return None
        return ",".join(values)

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        raw = self.header("content-type") or ""
        return raw.split(";", 1)[0].strip().lower()


CLIENT_ADDRESS_HEADER = "X-Kavach-Client-Address"
"""The peer address of the connection, set by the adapter from its socket (never by the client:
adapters remove any copy that arrives from outside). Registrations, and fetches of client
metadata documents for clients not known yet, are rate-limited per value."""


def client_address(req: HttpRequest) -> str | None:
    """The adapter-supplied peer (:data:`CLIENT_ADDRESS_HEADER`) as the per-address limits count
    it, or ``None``: an IPv4 address as itself, also when it arrives IPv4-mapped (``::ffff:a.b.c.d``
    from a dual-stack listener, RFC 4291 §2.5.5.2); an IPv6 address as its /64, the prefix one
    host is normally given whole (RFC 4291 §2.5.4; RFC 6177 §2), which it could otherwise rotate
    through one address per attempt; anything else (no IP address) as it is."""
    values = req.header_values(CLIENT_ADDRESS_HEADER)
    if len(values) != 1:
        return None
    value = values[0].strip()
    if not value or len(value) > 128:
        return None
    found = _counted_as.get(value)
    return found if found is not None else _counted_as.put(value, _count_as(value))


_counted_as: Memo[str, str] = Memo(4096)
""":func:`_count_as` of the last few distinct peers (it is pure; a server sees the same peers
again and again), forgotten all at once when full."""


def _count_as(value: str) -> str:
    """What :func:`client_address` counts the peer ``value`` as."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@attrs.frozen
class ErrorView:
    """What an error page shows; adapters may render it in their own style (AZ-02).

    ``back`` is set when the error belongs to a client that kavachOS does not redirect to on its
    own (RFC 9700 §4.11.2): the client's redirect URI carrying the error response, for the person
    to follow if they choose; ``back_to`` names where it leads (a host, or a private-use scheme)."""

    error: str
    description: str
    back: str | None = None
    back_to: str | None = None


@attrs.frozen
class Response:
    """An HTTP response as data: status, header pairs and body bytes.

    ``view`` is set on error pages so an adapter can render them with its own templates.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_freeze_pairs)
    body: bytes = b""
    view: ErrorView | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def json(self) -> Any:
        """The body decoded as JSON (convenience for callers and tests)."""
        return json.loads(self.body)

    def with_headers(self, extra: Iterable[tuple[str, str]]) -> Response:
        return Response(self.status, self.headers + tuple(extra), self.body, self.view)


NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))

PAGE_SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)
"""Headers for every HTML page and redirect of the authorization endpoint (AZ-10)."""


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(..., separators=(",", ":"))`` built once (``dumps`` with arguments builds an
encoder per call)."""


def json_response(
    status: int,
    body: Mapping[str, Any],
    *,
    no_store: bool = False,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A JSON response; ``no_store`` adds ``Cache-Control: no-store`` (RFC 6749 §5.1)."""
    all_headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if no_store:
        all_headers.extend(NO_STORE)
    all_headers.extend(headers)
    data = _COMPACT.encode(body).encode()
    return Response(status, tuple(all_headers), data)


def error_response(err: OAuthError, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """An RFC 6749 §5.2 error body, never cached (TK-01)."""
    body: dict[str, str] = {"error": err.error}
    if err.description:
        body["error_description"] = safe_description(err.description)
    return json_response(err.status, body, no_store=True, headers=headers)


def redirect_response(location: str) -> Response:
    """A 303 See Other: safe after a POST and never re-posts the form (AZ-10, RFC 9700 §4.11)."""
    return Response(303, (("Location", location), *PAGE_SECURITY_HEADERS), b"")


def error_page(
    status: int, error: str, description: str, *, back: str | None = None, back_to: str | None = None
) -> Response:
    """A minimal, self-contained HTML error page that never redirects (AZ-02); with ``back``, a
    link the person may follow to take the error to the client (see :class:`ErrorView`)."""
    from html import escape

    title = escape(error)
    text = escape(description)
    link = ""
    if back is not None:
        link = f'<p><a href="{escape(back)}">Return to {escape(back_to or "the application")}</a></p>'
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Authorization error</title></head><body><h1>Authorization error</h1>"
        f"<p><strong>{title}</strong></p><p>{text}</p>{link}</body></html>"
    ).encode()
    headers = (("Content-Type", "text/html; charset=utf-8"), *PAGE_SECURITY_HEADERS)
    return Response(status, headers, html, view=ErrorView(error, description, back, back_to))


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
"""RFC 3986 §2.3: the characters a URI carries as they are."""


def _escaped(text: str) -> str:
    """``quote(text, safe="")``: every character but the unreserved ones percent-encoded as UTF-8
    (RFC 3986 §2.1), with no work for text that is only unreserved (codes, most ``state`` values)."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


def add_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    """Append ``params`` to ``url``'s query, keeping any query it already has (RFC 6749 §3.1.2)."""
    encoded = "&".join([f"{_escaped(k)}={_escaped(v)}" for k, v in params])
    if not encoded:
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{encoded}"
