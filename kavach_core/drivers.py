"""Drivers: run a flow (a generator of effects) against a store, synchronously or not.

A flow yields :class:`~kavach_core.effects.Effect` values, receives each one's result, and
returns its outcome. ``run`` serves threads (Flask, the CLI); ``arun`` serves event loops
(Starlette, aiohttp). A store offers ``perform(effect)`` and, if it does I/O, ``aperform``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol, TypeVar

from .effects import Effect
from .errors import KavachError

T = TypeVar("T")
Flow = Generator[Effect, Any, T]


class StoreUnavailable(KavachError):
    """Raised by a store that cannot reach its backend; endpoints answer 503."""


class Store(Protocol):
    def perform(self, effect: Effect) -> Any: ...


def nonblocking(store: object) -> bool:
    """True when ``store`` declares (``nonblocking = True``) that its ``perform`` never waits on
    I/O, a pool or another process: only dictionary work under a short in-process lock, like
    :class:`~kavach_core.memory_store.MemoryStore`. An event-loop adapter may then call
    ``perform`` directly instead of awaiting ``aperform`` (same effects, same results)."""
    return getattr(store, "nonblocking", False) is True


class AsyncStore(Protocol):
    async def aperform(self, effect: Effect) -> Any: ...


def run(flow: Flow[T], store: Store) -> T:
    """Drive ``flow`` to completion, performing each effect with ``store.perform``."""
    try:
        effect = next(flow)
        while True:
            effect = flow.send(store.perform(effect))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(flow: Flow[T], store: Store | AsyncStore) -> T:
    """Drive ``flow`` on an event loop: ``aperform`` when the store has it, else ``perform``."""
    aperform = getattr(store, "aperform", None)
    try:
        effect = next(flow)
        while True:
            if aperform is not None:
                result = await aperform(effect)
            else:
                result = store.perform(effect)  # type: ignore[union-attr]
            effect = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def trace(flow: Flow[T], store: Store) -> tuple[T, list[Effect]]:
    """Run ``flow`` and return its outcome with every effect it yielded, in order (for tests)."""
    seen: list[Effect] = []

    class _Recorder:
        def perform(self, effect: Effect) -> Any:
            seen.append(effect)
            return store.perform(effect)

    return run(flow, _Recorder()), seen
