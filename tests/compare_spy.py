"""A recording stand-in for ``hmac.compare_digest`` (GN-02), for the tests that check a secret is
compared in constant time: test_core_units.py and test_adapter_shared.py.

A module that compares secrets looks the function up as ``hmac.compare_digest`` on its own
``hmac`` global; :func:`spy_on_compare_digest` gives that module alone an ``hmac`` whose
``compare_digest`` records each comparison and answers as the real one does. A module that
stopped comparing through ``hmac.compare_digest`` (``==`` instead, say) leaves the spy silent,
and the test that expected the comparison fails.
"""

from __future__ import annotations

import hmac
import types
from typing import Any

import pytest

_REAL = hmac.compare_digest


class CompareSpy:
    """Each comparison made, as ``(both operands as bytes, sorted; the verdict)``: sorted so that a
    test names the two values compared without caring which one came first."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[bytes, bytes], bool]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        verdict = _REAL(a, b)
        self.calls.append((_pair(a, b), verdict))
        return verdict

    def saw(self, a: str | bytes, b: str | bytes, verdict: bool) -> bool:
        """Whether ``a`` and ``b`` were compared (in either order), with ``verdict``."""
        return (_pair(a, b), verdict) in self.calls


def _pair(a: str | bytes, b: str | bytes) -> tuple[bytes, bytes]:
    first, second = sorted(x.encode("ascii") if isinstance(x, str) else bytes(x) for x in (a, b))
    return (first, second)


def spy_on_compare_digest(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> CompareSpy:
    """Make ``module``'s ``hmac.compare_digest`` a :class:`CompareSpy` until the test ends; the
    rest of its ``hmac`` (``hmac.new``) is the real module's."""
    assert getattr(module, "hmac", None) is hmac, f"{module.__name__} no longer looks up hmac.compare_digest"
    spy = CompareSpy()
    shim = types.ModuleType("hmac")
    shim.__dict__.update(vars(hmac))
    shim.compare_digest = spy  # type: ignore[attr-defined]
    monkeypatch.setattr(module, "hmac", shim)
    return spy
