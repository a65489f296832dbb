"""Helpers for the revocation and introspection tests: clients, grants and tokens put straight
into the store, without going through the authorization and token endpoints."""

from __future__ import annotations

from typing import Any

import attrs
from conftest import RESOURCE, SECRET, Harness, basic

from kavach_core import access_tokens, keys, opaque
from kavach_core import effects as fx
from kavach_core.effects import Effect
from kavach_core.http import HttpRequest
from kavach_core.records import Client, Grant

CLIENT_SECRET = "s3cret-of-c1"
OTHER_SECRET = "s3cret-of-c2"


@attrs.frozen
class Issued:
    grant: Grant
    refresh: str
    access: str
    jti: str
    expires_at: int


def add_client(h: Harness, client_id: str, secret: str | None = None, method: str | None = None) -> Client:
    """A client in the store; with ``secret`` it is confidential (``client_secret_basic``)."""
    if method is None:
        method = "client_secret_basic" if secret is not None else "none"
    client = Client(
        client_id,
        ("https://app.example.com/cb",),
        token_endpoint_auth_method=method,
        secret_hash=opaque.digest(secret) if secret is not None else None,
    )
    h.store.perform(fx.PutClient(client))
    return client


def clients(h: Harness) -> None:
    """``c1`` and ``c2`` confidential, ``pub`` public."""
    add_client(h, "c1", CLIENT_SECRET)
    add_client(h, "c2", OTHER_SECRET)
    add_client(h, "pub")


def issue(
    h: Harness,
    client_id: str = "c1",
    *,
    subject: str = "alice",
    resource: str = RESOURCE,
    scopes: tuple[str, ...] = ("tools:list", "tools:call"),
    generation: int = 0,
) -> Issued:
    """A grant with its current refresh token and one access token for ``resource``."""
    ctx = h.ctx()
    keyset = h.run(keys.current(ctx))
    pair = keys.load(keyset.active(h.now, h.config.signing_alg))
    grant_id = opaque.new_id(ctx)
    refresh = opaque.refresh_token(SECRET, grant_id, generation)
    lifetimes = h.config.lifetimes
    grant = Grant(
        grant_id=grant_id,
        subject=subject,
        client_id=client_id,
        resources=(resource,),
        scopes=scopes,
        created_at=h.now,
        expires_at=h.now + lifetimes.refresh_absolute,
        refresh_generation=generation,
        refresh_hash=opaque.digest(refresh),
        refresh_expires_at=h.now + lifetimes.refresh_idle,
        rotated_at=h.now,
    )
    h.store.grants[grant_id] = grant
    access, claims = access_tokens.mint(
        ctx, pair, subject=subject, client_id=client_id, resource=resource, scopes=scopes, grant_id=grant_id
    )
    return Issued(grant, refresh, access, claims.jti, claims.expires_at)


def form_request(
    h: Harness,
    path: str,
    form: dict[str, str],
    *,
    client: tuple[str, str] | None = ("c1", CLIENT_SECRET),
    headers: tuple[tuple[str, str], ...] = (),
) -> HttpRequest:
    """A POST form request, authenticated with HTTP Basic as ``client`` unless ``None``."""
    hdrs = list(headers)
    if client is not None:
        hdrs.append(basic(*client))
    return h.request("POST", path, form=form, headers=hdrs)


def writes(effects: list[Effect]) -> list[Effect]:
    """The effects of a trace that write."""
    return [e for e in effects if e.writes]


def snapshot(h: Harness) -> dict[str, Any]:
    """Everything the memory store holds, to show that a request changed nothing."""
    s = h.store
    return {
        "clients": dict(s.clients),
        "grants": dict(s.grants),
        "codes": dict(s.codes),
        "pending": dict(s.pending),
        "revoked": dict(s.revoked_jtis),
        "keys": s.keys,
        "hits": dict(s.hits),
    }
