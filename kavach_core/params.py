"""Request parameters: query strings, form bodies and JSON bodies, parsed once and strictly.

RFC 6749 §3.1: parameters sent without a value are treated as omitted; request and response
parameters must not be included more than once. OAuth 2.1 §4.1.1 / AZ-01.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import attrs

from .errors import OAuthError
from .http import HttpRequest

MAX_FIELDS = 100
"""Parameter pairs accepted in one query string or form body."""

MAX_BODY = 64 * 1024
"""Bytes accepted in one form or JSON body; larger bodies are refused as ``invalid_request``."""

FORM = "application/x-www-form-urlencoded"


@attrs.frozen
class Params:
    """An ordered multi-dict of parameters with the RFC 6749 §3.1 rules built in."""

    pairs: tuple[tuple[str, str], ...] = ()
    unreadable: frozenset[str] = frozenset()
    """Names given a value that is not text (see :func:`query_params`): reading one is
    ``invalid_request``, the other parameters read as usual."""
    _values: dict[str, list[str]] = attrs.field(init=False, eq=False, repr=False)
    """Every non-empty value of each name, in order (RFC 6749 §3.1: empty means omitted)."""

    def __attrs_post_init__(self) -> None:
        values: dict[str, list[str]] = {}
        for name, value in self.pairs:
            if value:
                found = values.get(name)
                if found is None:
                    values[name] = [value]
                else:
                    found.append(value)
        object.__setattr__(self, "_values", values)

    def get(self, name: str) -> str | None:
        """The single value of ``name``; empty means absent; given twice, or not as text, is
        ``invalid_request``."""
        if self.unreadable and name in self.unreadable:
            raise _not_text(name)
        values = self._values.get(name)
        if values is None:
            return None
        if len(values) > 1:
            raise OAuthError("invalid_request", f"parameter {name} given more than once")
        return values[0]

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every non-empty value of a parameter that may repeat (``resource``, RFC 8707 §2); one
        not given as text is ``invalid_request``."""
        if self.unreadable and name in self.unreadable:
            raise _not_text(name)
        return tuple(self._values.get(name, ()))

    def duplicated(self, name: str) -> bool:
        return len(self._values.get(name, ())) > 1

    def names(self) -> frozenset[str]:
        return frozenset(k for k, _ in self.pairs)


def split_form(raw: str, errors: str = "strict") -> list[tuple[str, str]]:
    """The name/value pairs of ``application/x-www-form-urlencoded`` text (URL Standard §5.1):
    ``&``-separated fields, empty fields skipped, a field without ``=`` has an empty value,
    ``+`` is a space, and percent-escapes decode as UTF-8 with ``errors`` (a ``%`` not followed by
    two hex digits stays as it is). The same pairs as ``urllib.parse.parse_qsl(raw,
    keep_blank_values=True, errors=errors)``, without its per-field work for the fields (nearly
    all) that hold no ``+`` or ``%``. Nothing is checked here: see :func:`parse_query_string`.
    """
    pairs = []
    for field in raw.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "+" in field:
            name, value = name.replace("+", " "), value.replace("+", " ")
        if "%" in field:
            name, value = _unescape(name, errors), _unescape(value, errors)
        pairs.append((name, value))
    return pairs


def _unescape(text: str, errors: str) -> str:
    """``unquote(text, errors=errors)``: for ASCII text (what a form body and an adapter's query
    are), its one decoding of every escape at once, without its search for non-ASCII runs."""
    if "%" not in text:
        return text
    if text.isascii():
        return unquote_to_bytes(text).decode("utf-8", errors)
    return unquote(text, errors=errors)


def _fields(raw: str, errors: str = "strict") -> list[tuple[str, str]]:
    """:func:`split_form` of ``raw``; more than :data:`MAX_FIELDS` fields, empty ones included
    (``&`` separators are counted, as ``parse_qsl`` counts them), is ``invalid_request``."""
    if raw.count("&") >= MAX_FIELDS:
        raise OAuthError("invalid_request", "too many parameters")
    return split_form(raw, errors)


def _form_pairs(raw: str) -> list[tuple[str, str]]:
    """:func:`_fields` of ``raw``, strictly: invalid UTF-8 in an escape raises
    ``UnicodeDecodeError``, and a NUL anywhere is ``invalid_request``."""
    pairs = _fields(raw)
    if "%00" in raw or "\x00" in raw:
        for name, value in pairs:
            if "\x00" in name or "\x00" in value:
                raise OAuthError("invalid_request", "parameters must not contain NUL")
    return pairs


def parse_query_string(raw: str) -> Params:
    """Parse ``application/x-www-form-urlencoded`` text; malformed input is ``invalid_request``."""
    try:
        return Params(tuple(_form_pairs(raw)))
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "malformed parameters") from exc


def _is_text(value: str) -> bool:
    """True when ``value`` is encodable text (no lone surrogates, as a lenient decoder may produce)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_problem(text: str) -> str | None:
    """Why ``text``, a decoded name or value, is not a parameter's text: a NUL (GN-03), or a lone
    surrogate, which a lenient decoding leaves for an escape that is not UTF-8."""
    if "\x00" in text:
        return "parameters must not contain NUL"
    if not (text.isascii() or _is_text(text)):
        return "parameters must be valid UTF-8"
    return None


def _not_text(name: str) -> OAuthError:
    return OAuthError("invalid_request", f"parameter {name} is not UTF-8 text without NUL")


def _params_by_parameter(pairs: Sequence[tuple[str, str]]) -> Params:
    """``pairs`` as :class:`Params` in which a value that is not text spoils its own parameter
    only (:attr:`Params.unreadable`); more than :data:`MAX_FIELDS` pairs, or a name that is not
    text (it names no parameter), is ``invalid_request`` for the whole request."""
    if len(pairs) > MAX_FIELDS:
        raise OAuthError("invalid_request", "too many parameters")
    readable: list[tuple[str, str]] = []
    unreadable: set[str] = set()
    for key, value in pairs:
        problem = _text_problem(key)
        if problem is not None:
            raise OAuthError("invalid_request", problem)
        if _text_problem(value) is None:
            readable.append((key, value))
        else:
            unreadable.add(key)
    return Params(tuple(readable), frozenset(unreadable))


def query_params(req: HttpRequest) -> Params:
    """The query parameters of ``req`` (already split into pairs by the adapter, escapes that
    are not UTF-8 kept as lone surrogates), each value that is not text spoiling its own
    parameter only: an authorization request (RFC 6749 §4.1.2.1) whose client and redirect URI
    read is answered at that redirect URI whatever else it holds."""
    return _params_by_parameter(req.query)


def form_params(req: HttpRequest, *, by_parameter: bool = False) -> Params:
    """The form body of a POST (RFC 6749 §3.2: ``application/x-www-form-urlencoded`` only).

    Strict: any field that is not text is ``invalid_request`` for the whole body. With
    ``by_parameter`` (an authorization request's form), such a value spoils its own parameter
    only, as in :func:`query_params`.
    """
    if req.content_type != FORM:
        raise OAuthError("invalid_request", f"the request body must be {FORM}")
    if len(req.body) > MAX_BODY:
        raise OAuthError("invalid_request", "request body too large")
    try:
        text = req.body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "a form body must be ASCII, percent-encoded") from exc
    if by_parameter:
        return _params_by_parameter(_fields(text, "surrogateescape"))
    return parse_query_string(text)


Pairs = list[tuple[str, Any]]


def unique_members(refuse: Callable[[str], Exception]) -> Callable[[Pairs], dict[str, Any]]:
    """A JSON ``object_pairs_hook`` that builds the object and raises ``refuse(name)`` when a
    member name repeats (RFC 8259 §4 leaves duplicates undefined; RFC 7515 §5.2 and RFC 7591 §3
    readers here refuse them). The dictionary is built in one C call; only a repeat, seen as a
    shorter dictionary than the list of pairs, costs a second pass, in linear time (a stranger's
    body may hold many thousand members), to name the first member met again."""

    def hook(pairs: Pairs) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for name, _ in pairs:
                if name in seen:
                    raise refuse(name)
                seen.add(name)
        return out

    return hook


_reject_duplicate_keys = unique_members(
    lambda name: OAuthError("invalid_client_metadata", f"member {name} given more than once")
)


def _reject_constant(name: str) -> Any:
    raise OAuthError("invalid_client_metadata", f"{name} is not valid JSON")


_VALUE_STARTS = frozenset("{[")


def decode_exactly(decoder: json.JSONDecoder, text: str) -> Any:
    """``decoder.decode(text)``, without its leading-whitespace match when ``text`` opens with an
    object or array: the decoder's own scanner runs from the first character, and its value is
    taken when it ends the text. Anything else (whitespace around the value, trailing data, a
    syntax error) goes through ``decode`` itself, so results and errors are ``decode``'s; the
    decoder's hooks raise as they would there.
    """
    if text[:1] in _VALUE_STARTS:
        try:
            value, end = decoder.scan_once(text, 0)  # type: ignore[attr-defined]
        except StopIteration:
            end = -1
        if end == len(text):
            return value
    return decoder.decode(text)


def json_object(req: HttpRequest, *, error: str = "invalid_request") -> dict[str, Any]:
    """A JSON object body (RFC 7591 §3.1), strictly: UTF-8, no duplicate members, no NaN."""
    if req.content_type != "application/json":
        raise OAuthError(error, "the request body must be application/json")
    if len(req.body) > MAX_BODY:
        raise OAuthError(error, "request body too large")
    try:
        value = json.loads(
            req.body.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except OAuthError as exc:
        raise OAuthError(error, exc.description) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise OAuthError(error, "the request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise OAuthError(error, "the request body must be a JSON object")
    return value
