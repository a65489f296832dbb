"""Dynamic client registration requests (RFC 7591 §2, §3.1), parsed and type-checked.

The body is a JSON object (RFC 7591 §3.1). Every member this server understands is checked for
its JSON type here; members it does not understand are ignored (RFC 7591 §2: "the
authorization server MUST ignore any client metadata sent by the client that it does not
understand"). A ``null`` member, and an empty string, count as absent. Whether the values are
acceptable (URI rules, supported methods, scopes) is decided by
:mod:`kavach_core.endpoints.registration`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import attrs

from ..credentials import bearer_token
from ..errors import OAuthError
from ..http import HttpRequest
from ..params import json_object

MAX_LIST = 20
"""Entries accepted in one list member (``redirect_uris``, ``contacts``, ``grant_types`` ...)."""

MAX_TEXT = 1000
"""Characters accepted in one string member."""

URI_MEMBERS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
"""Human-facing URIs (RFC 7591 §2): https only, and never fetched by this server (RG-01)."""


@attrs.frozen
class RegistrationRequest:
    """A client registration request (RFC 7591 §3.1), its members type-checked.

    ``None`` means the member was absent (or ``null``, or an empty string). Lists keep their
    first occurrence of each entry, in order. The initial access token and the client address
    travel in headers: see :func:`initial_access_token` and :func:`kavach_core.http.client_address`.
    """

    redirect_uris: tuple[str, ...] | None = None
    token_endpoint_auth_method: str | None = None
    grant_types: tuple[str, ...] | None = None
    response_types: tuple[str, ...] | None = None
    client_name: str | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    tos_uri: str | None = None
    policy_uri: str | None = None
    contacts: tuple[str, ...] | None = None
    scope: str | None = None
    software_id: str | None = None
    software_version: str | None = None


def _invalid(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
"""Unicode general categories that do not print as themselves: controls (C0, DEL, C1), format
characters (bidirectional controls, UAX #9 §2, which could make the consent page show text in
another order than it is stored; zero-width and tag characters, which hide text), surrogates (a
JSON ``\\ud800`` escape with no partner is not Unicode text, RFC 8259 §8.2), private-use
characters and line/paragraph separators. RFC 7591 §5 warns that names are chosen by the client."""

_BLANKS = frozenset("\u115f\u1160\u2800\u3164\uffa0")
"""Letters that print as nothing (the Hangul fillers, the blank Braille pattern)."""


def _unsafe(value: str) -> bool:
    """True when ``value`` holds a character of :data:`_HIDDEN_CATEGORIES`."""
    return not value.isprintable() and any(unicodedata.category(c) in _HIDDEN_CATEGORIES for c in value)


_UNSEEN_CATEGORIES = frozenset({"Mn", "Me", "Cn"})
"""Marks (combining characters, variation selectors: nothing on their own) and unassigned code
points (no glyph at all)."""


def _blank(value: str) -> bool:
    """True when nothing of ``value`` would be seen: only spaces, :data:`_BLANKS`, marks and
    unassigned code points."""
    return all(c.isspace() or c in _BLANKS or unicodedata.category(c) in _UNSEEN_CATEGORIES for c in value)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    if len(value) > MAX_TEXT:
        raise _invalid(f"{name} is too long")
    if _unsafe(value):
        raise _invalid(f"{name} must be text without control, format or private-use characters")
    if value and _blank(value):
        raise _invalid(f"{name} must have a visible character")
    return value or None


def _text_list(body: dict[str, Any], name: str, *, error: str = "invalid_client_metadata") -> tuple[str, ...] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise OAuthError(error, f"{name} must be an array of strings")
    if len(value) > MAX_LIST:
        raise OAuthError(error, f"{name} has too many entries (at most {MAX_LIST})")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise OAuthError(error, f"{name} must be an array of strings")
        if len(item) > MAX_TEXT * 2:
            raise OAuthError(error, f"an entry of {name} is too long")
        if _unsafe(item):
            raise OAuthError(error, f"an entry of {name} has control, format or private-use characters")
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_metadata(body: dict[str, Any]) -> RegistrationRequest:
    """Type-check the members of a client metadata object (RFC 7591 §2).

    Raises ``invalid_client_metadata`` (``invalid_redirect_uri`` for ``redirect_uris``),
    RFC 7591 §3.2.2.
    """
    return RegistrationRequest(
        redirect_uris=_text_list(body, "redirect_uris", error="invalid_redirect_uri"),
        token_endpoint_auth_method=_text(body, "token_endpoint_auth_method"),
        grant_types=_text_list(body, "grant_types"),
        response_types=_text_list(body, "response_types"),
        client_name=_text(body, "client_name"),
        client_uri=_text(body, "client_uri"),
        logo_uri=_text(body, "logo_uri"),
        tos_uri=_text(body, "tos_uri"),
        policy_uri=_text(body, "policy_uri"),
        contacts=_text_list(body, "contacts"),
        scope=_text(body, "scope"),
        software_id=_text(body, "software_id"),
        software_version=_text(body, "software_version"),
    )


def initial_access_token(req: HttpRequest) -> str | None:
    """The Bearer token of the request (RFC 7591 §3; RFC 6750 §2.1), or ``None`` when absent.

    As at every protected resource here (:func:`~kavach_core.credentials.bearer_token`): a
    malformed token is ``invalid_token`` (401), a repeated ``Authorization`` header
    ``invalid_request`` (400), as RFC 6750 §3.1 names them.
    """
    return bearer_token(req)


def parse(req: HttpRequest) -> RegistrationRequest:
    """Parse the JSON body of a registration request (RFC 7591 §3.1); POST only."""
    if req.method != "POST":
        raise OAuthError("invalid_request", "use POST", status=405)
    body = json_object(req, error="invalid_client_metadata")
    return parse_metadata(body)
