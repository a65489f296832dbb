"""Shared pieces of the atheris fuzz targets (see docs/fuzzing.md).

Every target feeds fuzzer bytes to parsers of :mod:`kavach_core`. The contract under test: a
parser either returns a value or raises :class:`kavach_core.errors.KavachError` (the core's own
error type, which adapters turn into spec error responses). Any other exception escapes the
target, and atheris reports it as a crash with the input that caused it.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.errors import KavachError

ISSUER = "https://as.example.com"
RESOURCE = "https://mcp.example.com/mcp"
OTHER_RESOURCE = "https://other.example.com/mcp"
NOW = 1_700_000_000


def config() -> Config:
    return Config(
        issuer=ISSUER,
        resources=[ProtectedResource(RESOURCE, name="Example MCP"), ProtectedResource(OTHER_RESOURCE, name="Other")],
        secret=b"f" * 32,
    )


def context() -> Context:
    rng = random.Random(7)  # noqa: S311 - deterministic entropy for a reproducible fuzz context
    return Context(config(), NOW, rng.randbytes)


def expect_kavach_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a :class:`KavachError` is an accepted outcome (``None``), anything else escapes."""
    try:
        return fn(*args, **kwargs)
    except KavachError:
        return None


def run(test_one_input: Callable[[bytes], None]) -> None:
    """Start atheris with ``sys.argv`` (libFuzzer flags such as ``-max_total_time=600``)."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
