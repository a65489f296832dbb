"""Fuzz target: whole requests through the core's router and endpoints (kavach_core.router.route
with the memory store; GN-03: any input yields a response below 500, and no exception at all,
not even KavachError).

This exercises every request parser in place (kavach_core.messages.*: authorization, token,
registration, revocation, introspection requests) with the store effects behind them. A client
``c1`` (public) and ``c2`` (confidential) are registered in a fresh store for every input.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from kavach_core import effects as fx
    from kavach_core.drivers import run
    from kavach_core.http import HttpRequest, Response
    from kavach_core.memory_store import MemoryStore
    from kavach_core.messages.authorization import ConsentRequired
    from kavach_core.opaque import digest
    from kavach_core.records import Client
    from kavach_core.router import route, routes

from common import context
from common import run as fuzz_run

CTX = context()
PATHS = [*routes(CTX.config), "/nope"]
"""Every path the router answers (its own table), and one it does not."""
NAMES = [
    "client_id",
    "redirect_uri",
    "response_type",
    "code_challenge",
    "code_challenge_method",
    "state",
    "resource",
    "scope",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "client_secret",
]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "application/json", "text/plain", "", "application/json; x"]
CLIENTS = (
    Client("c1", ("https://app.example.com/cb", "http://127.0.0.1/cb"), token_endpoint_auth_method="none"),
    Client(
        "c2",
        ("https://app.example.com/cb",),
        token_endpoint_auth_method="client_secret_basic",
        secret_hash=digest("s3cret"),
    ),
)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    method = fdp.PickValueInList(["GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE"])
    path = fdp.PickValueInList(PATHS) if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeUnicode(30)
    query = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = fdp.PickValueInList(NAMES) if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)
        query.append((name, fdp.ConsumeUnicode(40)))
    headers = [("Content-Type", fdp.PickValueInList(CONTENT_TYPES))]
    if fdp.ConsumeBool():
        headers.append(("Authorization", fdp.PickValueInList(["Basic ", "Bearer ", ""]) + fdp.ConsumeUnicode(60)))
    if fdp.ConsumeBool():
        headers.append(("Origin", fdp.ConsumeUnicode(20)))
    if fdp.ConsumeBool():
        form = "&".join(
            f"{fdp.PickValueInList(NAMES)}={fdp.ConsumeUnicode(30)}" for _ in range(fdp.ConsumeIntInRange(0, 6))
        )
        body = form.encode("utf-8", "surrogatepass")
    else:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
    req = HttpRequest(method, path, query=query, headers=headers, body=body)
    store = MemoryStore()
    for client in CLIENTS:
        store.perform(fx.PutClient(client))
    # Stricter than the parser targets: the router answers every request, even with KavachError.
    outcome = run(route(CTX, req), store)
    assert isinstance(outcome, Response | ConsentRequired), outcome
    if isinstance(outcome, Response):
        assert outcome.status < 500, (req, outcome)


if __name__ == "__main__":
    fuzz_run(test_one_input)
