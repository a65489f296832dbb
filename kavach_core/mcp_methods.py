"""Which scope each MCP JSON-RPC request needs (MCP 2026-07-28 authorization, scope challenges).

Defaults (design "Scope grammar"):

============================================  ===========================================
method                                        required scope
============================================  ===========================================
``tools/list``                                ``tools:list``
``tools/call`` of tool ``N``                  ``tools:call:N`` (``tools:call`` covers it)
``resources/list``, ``resources/templates/list``  ``resources:list``
``resources/read``, ``resources/subscribe``,  ``resources:read``
``resources/unsubscribe``
``prompts/list``                              ``prompts:list``
``prompts/get`` of prompt ``N``               ``prompts:get:N`` (``prompts:get`` covers it)
``subscriptions/listen``                      what it listens to: ``tools:list``,
                                              ``prompts:list``, ``resources:list`` for the
                                              ``*ListChanged`` flags, ``resources:read`` for
                                              ``resourceSubscriptions`` (none for nothing)
``completion/complete``                       as ``prompts/get`` of that prompt for a
                                              ``ref/prompt``, ``resources:read`` for a
                                              ``ref/resource``
``initialize``, ``server/discover``,           none beyond a valid token
``ping``, ``notifications/*``,
``logging/setLevel``
a JSON-RPC response (no ``method``)           none beyond a valid token
any other method                              ``mcp:unknown-method`` (see below)
============================================  ===========================================

Choices, and why:

- **Prompts** are per-name like tools, so a consent to one prompt (``prompts:get:greet``, which
  the authorization server describes as "Use the prompt greet") is honoured here;
  ``prompts:get`` covers every one. ``per_prompt=False`` asks for the whole ``prompts:get``.
- **Resources** are never narrowed: a resource URI holds ``:`` and ``/``, so it cannot be one
  scope segment; ``resources/read`` needs ``resources:read`` whatever it reads.
- **Tool names** that are missing, not strings, or not a single scope segment (a ``:`` in the
  name would let ``tools:call:a`` cover tool ``a:b``) require the whole ``tools:call``: only a
  caller trusted with every tool may send a name the prefix rule cannot reason about.
- **Unknown methods fail closed**: they require :data:`UNKNOWN_METHOD_SCOPE`, which is in no
  default catalogue, so a method added by a later MCP revision or a server extension is refused
  (403 naming the scope) until the operator maps it (``overrides``) or sets
  ``unknown_method_scopes=()`` to let any valid token through.
- **A body that cannot be read as JSON** here (not JSON, nested deeper than Python's parser
  goes, a number longer than it takes) is treated like an unknown method: another server's
  parser may read it and run what it holds, so it fails closed. JSON that is not a JSON-RPC
  request (a response, a bare value) requires no extra scope: a valid token is still required,
  and the MCP server answers it without running anything. An empty body needs nothing.
- **Parser differentials are resolved towards more scope**: the body is parsed the way the
  most lenient JSON parsers would (UTF-8/16/32 detection, BOM, invalid UTF-8 replaced, ``NaN``),
  and when an object repeats a member name (RFC 8259 §4 leaves the meaning open) the scopes of
  both the first-wins and the last-wins reading are required. JSON-RPC member names are
  case-sensitive, but some parsers match them ignoring case (Go's ``encoding/json``, which also
  folds ``ſ`` to ``s`` and the Kelvin sign to ``k``) or ignoring NUL characters: when a member
  this map reads (``method``, ``params``, ``name``...) is spelled otherwise (``Method``,
  ``name\u0000``), the readings where such a spelling counts as the member, first or last by its
  place in the text, ignoring case, NULs or both, are required too.
- A **batch** (JSON-RPC 2.0 §6; MCP 2025-03-26) requires every member's scopes; an array inside
  a batch is no JSON-RPC message a server should run, so it fails closed like an unknown method.
  One needing more than :data:`MAX_REQUIRED_SCOPES` scopes (many tools called by name) requires
  their families instead (``tools:call``), which cover them: never less, and a short challenge.
- **Listening and completing** read what they serve: ``subscriptions/listen`` (MCP 2026-07-28,
  replacing ``resources/subscribe``) delivers changes of the lists and resources it names, and
  ``completion/complete`` reveals argument values of a prompt or resource template, so each
  needs the scope that reading those would. A kind of notification, a ``ref`` type or params of
  a shape the map does not know fail closed like an unknown method.

:func:`required_scopes` raises nothing but :class:`~kavach_core.errors.KavachError` on any bytes.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from .errors import ConfigurationError, KavachError
from .params import decode_exactly, unique_members
from .scopes import is_valid_scope

UNKNOWN_METHOD_SCOPE = "mcp:unknown-method"
"""Required by methods the map does not know (fail closed; see the module docstring)."""

NO_SCOPE_METHODS = frozenset({"initialize", "server/discover", "ping", "logging/setLevel"})
"""Methods that need nothing beyond a valid token (notifications too, by prefix)."""

DEFAULT_METHOD_SCOPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tools/list", ("tools:list",)),
    ("resources/list", ("resources:list",)),
    ("resources/templates/list", ("resources:list",)),
    ("resources/read", ("resources:read",)),
    ("resources/subscribe", ("resources:read",)),
    ("resources/unsubscribe", ("resources:read",)),
    ("prompts/list", ("prompts:list",)),
)
"""The fixed part of the default map; ``tools/call`` and ``prompts/get`` look at ``params.name``,
``subscriptions/listen`` and ``completion/complete`` at what they ask for."""

_LISTEN_FLAGS = {
    "toolsListChanged": "tools:list",
    "promptsListChanged": "prompts:list",
    "resourcesListChanged": "resources:list",
}
"""``subscriptions/listen``'s ``params.notifications`` flags and the scope each one needs."""
_RESOURCE_SUBSCRIPTIONS = "resourceSubscriptions"
_RESOURCES_READ = "resources:read"

_TOOLS_CALL = "tools:call"
_PROMPTS_GET = "prompts:get"
_SEGMENT_FORBIDDEN = frozenset(": ")


_OVERRIDES_FORM = "overrides must map method names to scopes (a mapping, or (method, scopes) pairs)"


def _freeze_overrides(
    value: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]],
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if isinstance(value, str) or not isinstance(value, Mapping | list | tuple):
        raise ConfigurationError(_OVERRIDES_FORM)
    items = list(value.items()) if isinstance(value, Mapping) else value
    out: list[tuple[str, tuple[str, ...]]] = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ConfigurationError(_OVERRIDES_FORM)
        method, scopes = item
        out.append((method, _freeze_scopes(scopes)))
    return tuple(out)


def _freeze_scopes(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigurationError("scopes must be a scope or a list of scopes")
    return tuple(value)


def _distinct(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """``scopes`` without repeats, in first-use order (an override may name a scope twice)."""
    return tuple(dict.fromkeys(scopes))


@attrs.frozen
class McpScopeMap:
    """The configurable method -> scope map.

    ``overrides``: ``method -> scopes`` replacing the default for that exact method name
    (``()`` means no scope beyond a valid token); an override of ``tools/call`` or
    ``prompts/get`` replaces the per-name rule too. ``per_tool``: ``tools/call`` of ``N``
    requires ``tools:call:N`` (default) instead of ``tools:call``. ``per_prompt``: the same for
    ``prompts/get`` (default too). ``unknown_method_scopes``: required by any method not known here.
    """

    overrides: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(default=(), converter=_freeze_overrides)
    per_tool: bool = True
    per_prompt: bool = True
    unknown_method_scopes: tuple[str, ...] = attrs.field(default=(UNKNOWN_METHOD_SCOPE,), converter=_freeze_scopes)
    _fixed: Mapping[str, tuple[str, ...]] = attrs.field(init=False, eq=False, repr=False)
    """Every method whose scopes do not depend on its params: the no-scope methods, the fixed
    defaults and the overrides (which win), so most requests cost one lookup."""

    def __attrs_post_init__(self) -> None:
        for flag in ("per_tool", "per_prompt"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be True or False")
        seen: set[str] = set()
        for method, scopes in self.overrides:
            if not isinstance(method, str) or not method:
                raise ConfigurationError("an MCP scope override needs a method name")
            if method in seen:
                raise ConfigurationError(f"MCP method {method!r} is overridden twice")
            seen.add(method)
            for scope in scopes:
                if not isinstance(scope, str) or not is_valid_scope(scope):
                    raise ConfigurationError(f"MCP method {method!r}: {scope!r} is not a valid scope")
        for scope in self.unknown_method_scopes:
            if not isinstance(scope, str) or not is_valid_scope(scope):
                raise ConfigurationError(f"unknown_method_scopes: {scope!r} is not a valid scope")
        fixed: dict[str, tuple[str, ...]] = dict.fromkeys(NO_SCOPE_METHODS, ())
        fixed.update(DEFAULT_METHOD_SCOPES)
        fixed.update((method, _distinct(scopes)) for method, scopes in self.overrides)
        object.__setattr__(self, "_fixed", fixed)

    def scopes_for(self, method: str, params: object = None) -> tuple[str, ...]:
        """The scopes one request with ``method`` and ``params`` needs."""
        fixed = self._fixed.get(method)
        if fixed is not None:
            return fixed
        if method.startswith("notifications/"):
            return ()
        if method == "tools/call":
            return (_named(_TOOLS_CALL, params),) if self.per_tool else (_TOOLS_CALL,)
        if method == "prompts/get":
            return self._prompt(params)
        if method == "subscriptions/listen":
            return self._listen(params)
        if method == "completion/complete":
            ref = params.get("ref") if isinstance(params, dict) else None
            kind = ref.get("type") if isinstance(ref, dict) else None
            if kind == "ref/prompt":
                return self._prompt(ref)
            if kind == "ref/resource":
                return (_RESOURCES_READ,)
        return self.unknown_method_scopes

    def _prompt(self, params: object) -> tuple[str, ...]:
        return (_named(_PROMPTS_GET, params),) if self.per_prompt else (_PROMPTS_GET,)

    def _listen(self, params: object) -> tuple[str, ...]:
        """``subscriptions/listen``: the scope of each kind of change it asks to hear about."""
        if params is None:
            return ()
        if not isinstance(params, dict):
            return self.unknown_method_scopes
        wanted = params.get("notifications")
        if wanted is None:
            return ()
        if not isinstance(wanted, dict):
            return self.unknown_method_scopes
        out: list[str] = []
        for name, value in wanted.items():
            if name in _LISTEN_FLAGS:
                scope = _LISTEN_FLAGS[name] if value is not False and value is not None else None
            elif name == _RESOURCE_SUBSCRIPTIONS:
                scope = _RESOURCES_READ if value != [] and value is not None else None
            else:
                return self.unknown_method_scopes
            if scope is not None and scope not in out:
                out.append(scope)
        return tuple(out)

    def scopes_for_message(self, message: object) -> tuple[str, ...]:
        """The scopes one JSON-RPC message needs; a response or a non-request needs none."""
        if not isinstance(message, dict):
            return ()
        method = message.get("method")
        if not isinstance(method, str):
            return ()
        return self.scopes_for(method, message.get("params"))

    def required_scopes(self, body: bytes) -> tuple[str, ...]:
        """The scopes an HTTP request body of JSON-RPC needs: see :func:`required_scopes`."""
        readings = _readings(body)
        if readings is None:
            return self.unknown_method_scopes
        out: dict[str, None] = {}  # ordered, and linear however many messages a batch holds
        for document in readings:
            messages = document if isinstance(document, list) else [document]
            for message in messages:
                needed = self.unknown_method_scopes if isinstance(message, list) else self.scopes_for_message(message)
                out.update(dict.fromkeys(needed))
        if len(out) > MAX_REQUIRED_SCOPES:
            return tuple(dict.fromkeys(":".join(scope.split(":", 2)[:2]) for scope in out))
        return tuple(out)


DEFAULT_MAP = McpScopeMap()

MAX_REQUIRED_SCOPES = 32
"""The most scopes one request is asked for by name. A batch needing more (calling many tools or
prompts by name) needs their families instead, ``tools:call`` for ``tools:call:N``: each covers
the scopes it replaces, so this only ever asks for more, and the guard's check and its challenge
(the ``scope`` of ``WWW-Authenticate``, RFC 6750 §3) stay short however large the batch."""


def _named(family: str, params: object) -> str:
    """``family:NAME`` for a well-formed single-segment name, else ``family`` itself."""
    if not isinstance(params, dict):
        return family
    name = params.get("name")
    if not isinstance(name, str) or not name or _SEGMENT_FORBIDDEN.intersection(name):
        return family
    scope = f"{family}:{name}"
    return scope if is_valid_scope(scope) else family


class _Duplicate(Exception):
    pass


_last_wins_strict = unique_members(lambda name: _Duplicate(name))
"""Refuses a repeated member, so :func:`_readings` reads the text every way instead."""


def _text(body: bytes) -> str:
    """The body as text, as leniently as any JSON parser might read it (RFC 8259 §8.1)."""
    try:
        probe = json.detect_encoding(body)
        return body.decode(probe, "replace").removeprefix("\ufeff")
    except (LookupError, ValueError):
        return body.decode("utf-8", "replace").removeprefix("\ufeff")


_NO_DUPLICATES = json.JSONDecoder(object_pairs_hook=_last_wins_strict)
"""Built once: the usual body has no repeated or respelled member and is read this way alone."""


class _Members(list[tuple[str, Any]]):
    """An object's members in text order, repeats and all, for :func:`_collapse` to read."""


_EVERY_MEMBER = json.JSONDecoder(object_pairs_hook=_Members)

_PLAIN_STARTS = (b"{", b"[")
_BODY_TYPES = (bytes, bytearray, memoryview)


def _plain_utf8(data: bytes) -> str | None:
    """``data`` as text when :func:`_text` would certainly read it as plain UTF-8, else ``None``.

    A body opening with ``{`` or ``[`` and no NUL as its second octet has no byte-order mark and
    no UTF-16/32 pattern, so ``json.detect_encoding`` says ``utf-8`` for it; when it also decodes
    strictly, that text is exactly what the lenient :func:`_text` yields (its replacements only
    touch invalid sequences). Anything else takes the lenient path.
    """
    if data[:1] not in _PLAIN_STARTS or data[1:2] == b"\x00":
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


_READ_MEMBERS = ("method", "params", "name", "ref", "type", "notifications", *_LISTEN_FLAGS, _RESOURCE_SUBSCRIPTIONS)
"""The member names this map reads, in the objects it reads them from."""
_PLAIN_MEMBERS = frozenset(
    (*_READ_MEMBERS, "jsonrpc", "id", "arguments", "_meta", "uri", "cursor", "argument", "context")
)
"""Names spelled as a message spells them: no other parser reads them as another member."""


def _fold_case(name: str) -> str:
    """``name`` as a parser matching member names ignoring case compares it: compatibility forms
    and case folded (``METHOD``, ``ſ``, the Kelvin sign, fullwidth letters)."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFKC", name).casefold()


def _drop_nuls(name: str) -> str:
    """``name`` as a parser dropping NUL characters reads it."""
    return name.replace("\x00", "")


def _fold(name: str) -> str:
    """``name`` as the most lenient parsers compare member names: NULs dropped, then case folded."""
    return _fold_case(_drop_nuls(name))


_FOLDS: tuple[Callable[[str], str], ...] = (_fold, _fold_case, _drop_nuls)
"""The ways lenient parsers match member names: ignoring case and NULs (Go's encoding/json
before go-sdk 1.3.1, mcp-go), case alone (.NET's and Jackson's case-insensitive options), NULs
alone; :func:`_readings` reads a body each way, first-wins and last-wins."""
_READ_FOLDS = {fold: {fold(name): name for name in _READ_MEMBERS} for fold in _FOLDS}


_NESTED = (("params",), ("ref", "notifications"), ())
"""The members holding objects the map reads in turn: a message's ``params``, and their ``ref``
and ``notifications`` (by depth: nothing deeper is read)."""


def _respelled(value: object, depth: int = 0) -> bool:
    """Whether an object the map reads (a message, its ``params``, their ``ref`` and
    ``notifications``) names a member it reads in another spelling."""
    if not isinstance(value, dict):
        return False
    if not _PLAIN_MEMBERS.issuperset(value):  # the usual message has plain names only: no loop here
        for key in value:
            if key not in _PLAIN_MEMBERS and _fold(key) in _READ_FOLDS[_fold]:
                return True
    for key in _NESTED[depth]:
        member = value.get(key)
        if member is not None and _respelled(member, depth + 1):
            return True
    return False


def _collapse(value: object, fold: Callable[[str], str] | None, last: bool) -> object:
    """``value`` (:data:`_EVERY_MEMBER`'s reading) as one parser reads it: every object's members
    taken in text order, a name that ``fold`` makes one the map reads taken as that member, and
    of repeated members the ``last`` one or the first."""
    if isinstance(value, _Members):
        out: dict[str, Any] = {}
        for key, member in value:
            name = key
            if fold is not None and key not in _PLAIN_MEMBERS:
                name = _READ_FOLDS[fold].get(fold(key), key)
            if last or name not in out:
                out[name] = _collapse(member, fold, last)
        return out
    if isinstance(value, list):
        return [_collapse(member, fold, last) for member in value]
    return value


def _every_reading(text: str) -> list[object]:
    """``text`` as each parser reads it: exactly or folding names each way of :data:`_FOLDS`,
    first-wins and last-wins (RFC 8259 §4 leaves repeated names open)."""
    members = decode_exactly(_EVERY_MEMBER, text)
    return [_collapse(members, fold, last) for fold in (None, *_FOLDS) for last in (True, False)]


def _readings(body: bytes) -> list[object] | None:
    """Each plausible reading of ``body``: one when no member repeats and none the map reads is
    spelled otherwise, else every reading of :func:`_every_reading`; none for an empty body,
    ``None`` when it cannot be read as JSON."""
    if not isinstance(body, _BODY_TYPES):
        raise KavachError("a request body must be bytes")
    try:
        data = bytes(body)
        if not data.strip():
            return []
        text = _plain_utf8(data)
        if text is None:
            text = _text(data)
        try:
            document = decode_exactly(_NO_DUPLICATES, text)
        except _Duplicate:
            return _every_reading(text)
        if _respelled(document) or (isinstance(document, list) and any(map(_respelled, document))):
            return _every_reading(text)
        return [document]
    except (ValueError, RecursionError, OverflowError, MemoryError):
        return None


def required_scopes(body: bytes, scope_map: McpScopeMap = DEFAULT_MAP) -> tuple[str, ...]:
    """The scopes the JSON-RPC ``body`` of a request to an MCP server needs, in first-use order.

    A single message needs its method's scopes; a batch needs every member's. A body that cannot
    be read as JSON needs what an unknown method does (module docstring). Raises only
    :class:`~kavach_core.errors.KavachError` (for a body that is not bytes at all).
    """
    return scope_map.required_scopes(body)
