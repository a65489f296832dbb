"""Records <-> JSON and records <-> table rows, written once for every store.

Each record class of :mod:`kavach_core.records` is a frozen attrs class whose fields are
strings, integers, booleans, ``bytes`` (a signing key's PEM), tuples of strings, or optional
versions of those. A :class:`RecordCodec` knows which field is which and converts:

- to and from a JSON object (Redis values): tuples become arrays, ``bytes`` become unpadded
  base64url text, read back strictly (:func:`kavach_core.opaque.b64url_decode`); unknown keys
  are ignored and missing keys take the field's default, so a record written by an older
  kavachOS (fewer fields) still reads;
- to and from a row in field order (SQL stores): tuples become whatever ``tuple_dumper``
  makes of them (a list for PostgreSQL ``text[]``, JSON text for SQLite) and come back from a
  list or JSON text.

Reading checks what it reads: an ``int`` or ``str`` field holding another type, a tuple field that
is not an array of text (a JSON string, number or object; an array holding numbers, arrays or
``null``), or a field named to hold the JSON text of an object (a client's ``metadata``) holding
anything else raises ``ValueError``, which each store reports as damage instead of a record failing
later, far from its cause.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from kavach_core.opaque import b64url, b64url_decode
from kavach_core.records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey

__all__ = ["CLIENTS", "CODES", "GRANTS", "KEYS", "PENDING", "RecordCodec"]

R = TypeVar("R")


def _kind(annotation: Any) -> str:
    """``tuple``, ``bytes``, ``bool``, ``int`` or ``str`` for a field's (possibly optional) type."""
    options: tuple[Any, ...] = (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = tuple(a for a in typing.get_args(annotation) if a is not type(None))
    for option in options:
        if option is tuple or typing.get_origin(option) is tuple:
            return "tuple"
        if option is bytes:
            return "bytes"
        if option is bool:
            return "bool"
        if option is int:
            return "int"
    return "str"


def _checked(record: str, name: str, kind: str, value: Any) -> Any:
    """``value`` when it has the type of an ``int`` or ``str`` field, else ``ValueError`` (a stored
    value of the wrong type, which SQLite's column affinity lets through, is damage: the stores
    report it as such instead of a record failing later, far from its cause)."""
    if kind == "int" and type(value) is not int:
        raise ValueError(f"stored {record} has {name} = {value!r}, not an integer")
    if kind == "str" and type(value) is not str:
        raise ValueError(f"stored {record} has {name} = {value!r}, not text")
    return value


def _strings(record: str, name: str, value: Any) -> tuple[str, ...]:
    """A tuple field's stored array as a tuple, when it is a list of text, else ``ValueError``."""
    if not isinstance(value, list) or not all(type(item) is str for item in value):
        raise ValueError(f"stored {record} has {name} = {value!r}, not an array of text")
    return tuple(value)


def _octets(record: str, name: str, value: Any) -> bytes:
    """A ``bytes`` field's stored base64url text, decoded strictly, else ``ValueError``."""
    if type(value) is not str:
        raise ValueError(f"stored {record} has {name} of type {type(value).__name__}, not base64url text")
    try:
        return b64url_decode(value)
    except ValueError:
        raise ValueError(f"stored {record} has {name} that is not canonical base64url text") from None


def _json_object(record: str, name: str, text: str) -> str:
    """``text`` when it is the JSON text of an object, else ``ValueError``."""
    try:
        is_object = isinstance(json.loads(text), dict)
    except ValueError:
        is_object = False
    if not is_object:
        raise ValueError(f"stored {record} has a {name} that is not the JSON text of an object")
    return text


class RecordCodec(Generic[R]):
    """Converts one record class to and from JSON objects and rows (see the module docstring).

    ``json_objects`` names the ``str`` fields holding the JSON text of an object.
    """

    def __init__(self, record: type[R], json_objects: tuple[str, ...] = ()) -> None:
        self.record = record
        hints = typing.get_type_hints(record)
        fields = attrs.fields(record)  # type: ignore[arg-type]
        self.fields: tuple[str, ...] = tuple(f.name for f in fields)
        self._kinds: dict[str, str] = {f.name: _kind(hints[f.name]) for f in fields}
        self._required = frozenset(f.name for f in fields if f.default is attrs.NOTHING)
        self._objects = frozenset(json_objects)

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self, record: R) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.fields:
            value = getattr(record, name)
            kind = self._kinds[name]
            if value is not None:
                if kind == "tuple":
                    value = list(value)
                elif kind == "bytes":
                    value = b64url(value)
            out[name] = value
        return out

    def from_dict(self, data: Mapping[str, Any]) -> R:
        missing = self._required - data.keys()
        if missing:
            raise ValueError(f"{self.record.__name__} record lacks {sorted(missing)}")
        kwargs: dict[str, Any] = {}
        for name in self.fields:
            if name not in data:
                continue
            value = data[name]
            kind = self._kinds[name]
            if value is not None:
                if kind == "tuple":
                    value = _strings(self.record.__name__, name, value)
                elif kind == "bytes":
                    value = _octets(self.record.__name__, name, value)
                elif kind == "bool":
                    value = bool(value)
                else:
                    value = self._scalar(name, value)
            kwargs[name] = value
        return self.record(**kwargs)

    def dumps(self, record: R) -> str:
        """Compact JSON text of ``record``."""
        return json.dumps(self.to_dict(record), separators=(",", ":"), ensure_ascii=False)

    def loads(self, text: str | bytes) -> R:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"stored {self.record.__name__} is not a JSON object")
        return self.from_dict(data)

    # -- rows --------------------------------------------------------------------------------

    def to_row(self, record: R, tuple_dumper: Callable[[tuple[str, ...]], Any] = list) -> tuple[Any, ...]:
        """Values in field order; tuples through ``tuple_dumper``, everything else as is."""
        values: list[Any] = []
        for name in self.fields:
            value = getattr(record, name)
            if value is not None and self._kinds[name] == "tuple":
                value = tuple_dumper(value)
            values.append(value)
        return tuple(values)

    def from_row(self, row: Sequence[Any]) -> R:
        """Inverse of :meth:`to_row`: tuples from a list/array or JSON text, booleans from 0/1."""
        kwargs: dict[str, Any] = {}
        for name, value in zip(self.fields, row, strict=True):
            kind = self._kinds[name]
            if value is not None:
                if kind == "tuple":
                    value = _strings(self.record.__name__, name, json.loads(value) if isinstance(value, str) else value)
                elif kind == "bool":
                    value = bool(value)
                elif kind == "bytes":
                    value = bytes(value)
                else:
                    value = self._scalar(name, value)
            kwargs[name] = value
        return self.record(**kwargs)

    def _scalar(self, name: str, value: Any) -> Any:
        """An ``int`` or ``str`` field's stored value, checked (:func:`_checked`), and checked to be
        the JSON text of an object when the field holds one."""
        value = _checked(self.record.__name__, name, self._kinds[name], value)
        if name in self._objects:
            value = _json_object(self.record.__name__, name, value)
        return value


CLIENTS = RecordCodec(Client, json_objects=("metadata",))
PENDING = RecordCodec(PendingAuthorization)
CODES = RecordCodec(AuthorizationCode)
GRANTS = RecordCodec(Grant)
KEYS = RecordCodec(SigningKey)
