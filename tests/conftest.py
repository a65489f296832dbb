"""Shared fixtures: a deterministic clock and entropy source, a memory store, a request helper."""

from __future__ import annotations

import base64
import hashlib
import json as jsonlib
import random
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, settings

from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import Flow, run, trace
from kavach_core.effects import Effect
from kavach_core.http import HttpRequest
from kavach_core.memory_store import MemoryStore

# Property tests assert invariants, never speed: a loaded CI machine must not turn a slow example
# into a failure. The number of examples stays each test's own choice.
settings.register_profile("kavach", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kavach")

ISSUER = "https://as.example.com"
RESOURCE = "https://mcp.example.com/mcp"
OTHER_RESOURCE = "https://other.example.com/mcp"
SECRET = b"k" * 32
START = 1_700_000_000


def make_config(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "resources": [
            ProtectedResource(RESOURCE, name="Example MCP"),
            ProtectedResource(OTHER_RESOURCE, name="Other MCP"),
        ],
        "secret": SECRET,
    }
    base.update(overrides)
    return Config(**base)


class Harness:
    """A configuration, a memory store, a settable clock and seeded entropy."""

    def __init__(self, config: Config | None = None, seed: int = 1) -> None:
        self.config = config or make_config()
        self.store = MemoryStore()
        self.now = START
        self._rng = random.Random(seed)

    def entropy(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def ctx(self) -> Context:
        return Context(self.config, self.now, self.entropy)

    def run(self, flow: Flow[Any]) -> Any:
        return run(flow, self.store)

    def trace(self, flow: Flow[Any]) -> tuple[Any, list[Effect]]:
        return trace(flow, self.store)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] | dict[str, str] = (),
        form: Iterable[tuple[str, str]] | dict[str, str] | None = None,
        json: Any = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> HttpRequest:
        hdrs = list(headers)
        data = b"" if body is None else body
        if form is not None:
            data = urlencode(list(form.items()) if isinstance(form, dict) else list(form)).encode()
            hdrs.append(("Content-Type", "application/x-www-form-urlencoded"))
        if json is not None:
            data = jsonlib.dumps(json).encode()
            hdrs.append(("Content-Type", "application/json"))
        pairs = list(query.items()) if isinstance(query, dict) else list(query)
        return HttpRequest(method, path, pairs, hdrs, data)

    def route(self, req: HttpRequest) -> Any:
        from kavach_core.router import route

        return self.run(route(self.ctx(), req))


def basic(client_id: str, secret: str) -> tuple[str, str]:
    from urllib.parse import quote_plus

    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return ("Authorization", "Basic " + base64.b64encode(raw).decode())


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture(scope="session", autouse=True)
def _drop_service_databases() -> Iterable[None]:
    """Drop the PostgreSQL schemas and Redis key prefixes the store tests created (tests/services.py)."""
    yield
    import services

    services.cleanup()
