"""Errors as values.

The core never lets an exception other than :class:`KavachError` escape a parser, and
endpoints turn every :class:`OAuthError` into a spec-shaped response (GN-03).
"""

from __future__ import annotations

import attrs

MISSING_TOKEN_ERROR = "unauthorized"
"""The JSON body's ``error`` when no token was sent (the resource guard, and registration in
``token`` mode). RFC 6750 §3.1 says the challenge then carries no error code, so the body uses
this plain word rather than a registered OAuth code."""


class KavachError(Exception):
    """Base class of every exception the core raises on purpose."""


@attrs.frozen(auto_exc=True)
class OAuthError(KavachError):
    """An OAuth error code with a human description (RFC 6749 §4.1.2.1, §5.2).

    ``status`` is the HTTP status used when the error is rendered as a JSON body.
    Descriptions are ASCII without CR/LF or quotes so they are safe in headers (TK-01).
    """

    error: str
    description: str = ""
    status: int = 400

    def __str__(self) -> str:
        return f"{self.error}: {self.description}" if self.description else self.error


class ConfigurationError(KavachError, ValueError):
    """Raised at construction of a configuration object; the message says what to change."""


_READABLE = {'"': "'", "\u00a7": "section "}
"""Characters outside the alphabet that have a readable stand-in: a quote becomes an apostrophe
and ``§`` (in citations such as ``RFC 7636 §4.1``) the word."""


def safe_description(text: str) -> str:
    """Restrict an error description to RFC 6749's ``error_description`` alphabet.

    RFC 6749 §5.2 allows %x20-21 / %x23-5B / %x5D-7E: printable ASCII without ``"`` and ``\\``.
    ``"`` and ``§`` get readable stand-ins (:data:`_READABLE`); anything else outside becomes ``?``.
    """
    out = []
    for ch in text:
        code = ord(ch)
        if 0x20 <= code <= 0x7E and ch != '"' and ch != "\\":
            out.append(ch)
        else:
            out.append(_READABLE.get(ch, "?"))
    return "".join(out)
