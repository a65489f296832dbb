"""Client ID Metadata Documents: a client whose ``client_id`` is the https URL of its metadata.

draft-ietf-oauth-client-id-metadata-document (CIMD) and MCP 2025-11-25 authorization, "Client ID
Metadata Documents" (the preferred way for MCP clients to identify themselves from revision
2026-07-28); checklist CM-01.

- A URL-shaped ``client_id`` (CIMD §3): ``https`` with a host and a path other than ``/``; no
  fragment, no user information, no ``.`` or ``..`` path segments, percent-encoded or not
  (RFC 3986 §6.2.2.2 makes ``%2e%2e`` a ``..``). The host is an RFC 3986 §3.2.2 host written out
  (a bracketed host is an IPv6 address, never an IPvFuture literal); an explicit port is 1 to
  65535 (port 0 names no TCP service, RFC 6335 §6; an empty port, which RFC 3986 §3.2.3 reads as
  the default, is a second spelling of another URL). An ``http`` URL, or a malformed one, is
  refused with a reason rather than treated as an unknown client.
- The document is fetched through the :class:`~kavach_core.effects.FetchDocument` effect; the
  adapter's fetcher is SSRF-safe (CM-02) and may refuse. Why it refused (the address a host
  resolved to, a status code, a TLS failure) is never told to the client: that would make the
  server an oracle for its own network (draft-ietf-oauth-client-id-metadata-document §6,
  "Server-Side Request Forgery"). The client reads :data:`NOT_FETCHED`; the fetcher logs the
  reason.
- The document (CIMD §4.1): strict JSON (RFC 8259 §4: a member name given twice is refused, not
  resolved by taking the last one; no ``NaN``), an object whose ``client_id`` equals the URL
  exactly (simple string comparison, CIMD §4.1); the RFC 7591 §2 metadata rules of
  :mod:`kavach_core.client_metadata` (``redirect_uris`` required, ...). Shared secrets are
  impossible for a client that publishes its metadata (CIMD §4.1): ``client_secret`` and
  ``client_secret_expires_at`` are refused, and so are the ``client_secret_*`` methods;
  ``private_key_jwt`` is allowed by CIMD but not supported here, which is said plainly. Omitted,
  the method is ``none``.
- Caching (CIMD §4.3, "respect HTTP cache headers ... within bounds"): the record is stored with
  ``expires_at = now + max_age`` clamped to ``[metadata_document_min, metadata_document_max]``;
  no ``max-age`` (or ``no-store``) means the minimum, so the authorization and the code
  redemption a minute later see the same document. Expired, it is fetched again.
- A refused or invalid document raises :class:`DocumentRefused` (``invalid_client``) and stores
  nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from . import effects as fx
from .client_metadata import accept
from .context import Context
from .drivers import Flow
from .errors import OAuthError, safe_description
from .messages.registration import parse_metadata
from .params import decode_exactly, unique_members
from .records import Client
from .resource_indicators import has_dot_segment, host_problem

MAX_DOCUMENT_BYTES = 64 * 1024
"""Largest document the core reads, whatever the fetcher allowed (CIMD §4.3 suggests 5 KB)."""

DOCUMENT_AUTH_METHODS = ("none",)
REFUSED_AUTH_METHODS = {
    "client_secret_basic": "a client metadata document cannot use a shared secret (client_secret_basic); use none",
    "client_secret_post": "a client metadata document cannot use a shared secret (client_secret_post); use none",
    "client_secret_jwt": "a client metadata document cannot use a shared secret (client_secret_jwt); use none",
    "private_key_jwt": "token_endpoint_auth_method private_key_jwt is not supported by this server; use none",
}
"""CIMD §4.1 forbids shared-secret methods; ``private_key_jwt`` is not implemented here."""

JSON_TYPES = ("application/json",)

NOT_FETCHED = "it could not be fetched from its URL"
"""What the client is told about any refused fetch; the fetcher's log has the reason."""


class DocumentRefused(OAuthError):
    """The client's metadata document could not be used; the description says why, except for
    a refused fetch (:data:`NOT_FETCHED`).

    ``invalid_client`` with status 401 (RFC 6749 §5.2) so the token, revocation and introspection
    endpoints answer it as any failed client authentication; the authorization endpoint shows it
    on a page that never redirects (AZ-02).
    """


def refused(reason: str) -> DocumentRefused:
    text = safe_description(f"client metadata document refused: {reason}")
    return DocumentRefused("invalid_client", text, 401)


def looks_like_url(client_id: str) -> bool:
    """True when ``client_id`` is meant as a document URL (it names a scheme and an authority)."""
    scheme, sep, _ = client_id.partition("://")
    return bool(sep) and scheme.lower() in ("https", "http")


MAX_CLIENT_ID = 2048
"""The longest ``client_id`` looked up, in characters (a URL naming a document included)."""


def url_problem(client_id: str) -> str | None:
    """Why ``client_id`` is not a valid document URL (CIMD §3), or ``None`` when it is."""
    if len(client_id) > MAX_CLIENT_ID:
        return f"the client_id URL is longer than {MAX_CLIENT_ID} characters"
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in client_id):
        return "the client_id URL must be printable ASCII without spaces"
    try:
        parts = urlsplit(client_id)
        port = parts.port
    except ValueError:
        return "the client_id is not a valid URL"
    if parts.scheme != "https":
        return "the client_id URL must use https"
    if not parts.hostname:
        return "the client_id URL has no host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "the client_id URL must not carry user information"
    problem = host_problem(parts.netloc, parts.hostname)
    if problem is not None:
        return f"the client_id URL's host is not valid: {problem}"
    if port == 0 or parts.netloc.endswith(":"):
        return "the client_id URL's port must be a number from 1 to 65535"
    if "#" in client_id:
        return "the client_id URL must not have a fragment"
    if parts.path in ("", "/"):
        return "the client_id URL must have a path"
    if has_dot_segment(parts.path):
        return "the client_id URL must not contain . or .. path segments (percent-encoded or not)"
    return None


def _repeated(name: str) -> DocumentRefused:
    shown = name if len(name) <= 40 else name[:40] + "..."
    return refused(f"it gives the member {shown} more than once")


def _constant(name: str) -> Any:
    raise refused(f"it is not valid JSON ({name} is not a JSON value)")


_DOCUMENT_JSON = json.JSONDecoder(object_pairs_hook=unique_members(_repeated), parse_constant=_constant)
"""Strict JSON (RFC 8259 §4, §6): a repeated member name or ``NaN``/``Infinity`` is refused."""


def _json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def _lifetime(ctx: Context, max_age: int | None) -> int:
    """CIMD §4.3: the response's freshness, within the configured bounds."""
    low = ctx.config.lifetimes.metadata_document_min
    high = ctx.config.lifetimes.metadata_document_max
    wanted = low if max_age is None else max_age
    return max(low, min(wanted, high))


def document_client(ctx: Context, url: str, fetched: fx.Fetched) -> Client:
    """The client record the fetched document describes; :class:`DocumentRefused` when invalid."""
    if not _json_type(fetched.content_type):
        raise refused("it is not JSON (Content-Type must be application/json)")
    if len(fetched.body) > MAX_DOCUMENT_BYTES:
        raise refused("it is too large")
    try:
        body = decode_exactly(_DOCUMENT_JSON, fetched.body.decode("utf-8"))
    except DocumentRefused:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise refused("it is not valid JSON") from None
    if not isinstance(body, dict):
        raise refused("it is not a JSON object")
    if body.get("client_id") != url:
        raise refused("its client_id does not equal the URL it was fetched from")
    for secret in ("client_secret", "client_secret_expires_at"):
        if secret in body:
            raise refused(f"it contains {secret}; a public document cannot hold a shared secret")
    try:
        accepted = accept(
            ctx,
            parse_metadata(body),
            auth_methods=DOCUMENT_AUTH_METHODS,
            default_auth_method="none",
            refused_auth_methods=REFUSED_AUTH_METHODS,
        )
    except OAuthError as exc:
        raise refused(exc.description or exc.error) from exc
    return accepted.client(
        url,
        kind="document",
        issued_at=ctx.now,
        meta={**accepted.meta, "client_id": url},
        expires_at=ctx.now + _lifetime(ctx, fetched.max_age),
    )


def resolve(ctx: Context, url: str) -> Flow[Client]:
    """Fetch, validate and cache the document at ``url``: one ``FetchDocument``, then one
    ``PutClient`` when, and only when, the document is good. A refused fetch is
    :data:`NOT_FETCHED` whatever the fetcher's reason (CIMD §6)."""
    problem = url_problem(url)
    if problem is not None:
        raise refused(problem)
    result = yield fx.FetchDocument(url)
    if isinstance(result, fx.FetchRefused):
        raise refused(NOT_FETCHED)
    if not isinstance(result, fx.Fetched):
        raise refused("the fetcher gave no answer")
    client = document_client(ctx, url, result)
    yield fx.PutClient(client)
    return client
