"""Client ID Metadata Documents: a client whose ``client_id`` is the https URL of its metadata.

draft-ietf-oauth-client-id-metadata-document (CIMD) and MCP 2025-11-25 authorization, "Client ID
Metadata Documents" (the preferred way for MCP clients to identify themselves from revision
2026-07-28); checklist CM-01.

- A URL-shaped ``client_id`` (CIMD §3): ``https`` with a host and a path other than ``/``; no
  fragment, no user information, no ``.`` or ``..`` path segments. An ``http`` URL, or a
  malformed one, is refused with a reason rather than treated as an unknown client.
- The document is fetched through the :class:`~kavach_core.effects.FetchDocument` effect; the
  adapter's fetcher is SSRF-safe (CM-02) and may refuse.
- The document (CIMD §4.1): a JSON object whose ``client_id`` equals the URL exactly (simple
  string comparison, CIMD §4.1); the RFC 7591 §2 metadata rules of
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
from urllib.parse import urlsplit

from . import effects as fx
from .client_metadata import accept
from .context import Context
from .drivers import Flow
from .errors import OAuthError, safe_description
from .messages.registration import parse_metadata
from .records import Client

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


class DocumentRefused(OAuthError):
    """The client's metadata document could not be used; the description says why.

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


def url_problem(client_id: str) -> str | None:
    """Why ``client_id`` is not a valid document URL (CIMD §3), or ``None`` when it is."""
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in client_id):
        return "the client_id URL must be printable ASCII without spaces"
    try:
        parts = urlsplit(client_id)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        return "the client_id is not a valid URL"
    if parts.scheme != "https":
        return "the client_id URL must use https"
    if not parts.hostname:
        return "the client_id URL has no host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "the client_id URL must not carry user information"
    if "#" in client_id:
        return "the client_id URL must not have a fragment"
    if parts.path in ("", "/"):
        return "the client_id URL must have a path"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return "the client_id URL must not contain . or .. path segments"
    return None


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
        body = json.loads(fetched.body.decode("utf-8"))
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
    meta = dict(accepted.meta)
    meta["client_id"] = url
    return Client(
        client_id=url,
        redirect_uris=accepted.redirect_uris,
        token_endpoint_auth_method=accepted.token_endpoint_auth_method,
        grant_types=accepted.grant_types,
        response_types=accepted.response_types,
        client_name=accepted.client_name,
        scope=accepted.scope,
        kind="document",
        issued_at=ctx.now,
        metadata=json.dumps(meta, separators=(",", ":")),
        expires_at=ctx.now + _lifetime(ctx, fetched.max_age),
    )


def resolve(ctx: Context, url: str) -> Flow[Client]:
    """Fetch, validate and cache the document at ``url``: one ``FetchDocument``, then one
    ``PutClient`` when, and only when, the document is good."""
    problem = url_problem(url)
    if problem is not None:
        raise refused(problem)
    result = yield fx.FetchDocument(url)
    if isinstance(result, fx.FetchRefused):
        raise refused(result.reason)
    if not isinstance(result, fx.Fetched):
        raise refused("the fetcher gave no answer")
    client = document_client(ctx, url, result)
    yield fx.PutClient(client)
    return client
