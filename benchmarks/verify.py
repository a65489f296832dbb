"""Access-token verification: first sight (a) and repeat sight (b).

(a) ours (:func:`kavach_core.access_tokens.verify`: signature, ``typ``, ``iss``, single ``aud``,
lifetime, claim types) against the limit, the raw ``cryptography`` verify of the same signature
over the same signing input (for ES256 including the ``r||s`` -> DER conversion every JWS
verifier must do), and against ``jwt.decode`` (PyJWT) and joserfc's ``jwt.decode`` plus its claims
registry, both asked to check the same ``iss``, ``aud`` and ``exp``.

(b) a token seen before: :class:`kavach_core.verified_cache.VerifiedCache` hit, with and without
the revocation check against the memory store, and the whole guard flow
(:func:`kavach_core.guard.authenticate` with the cache, and with the key ring the
:class:`kavach.server.AuthorizationServer` guards use) against ``jwt.decode``.
"""

# ruff: noqa: S311 -- seeded generators make every process derive the same benchmark keys; nothing here is a secret.

from __future__ import annotations

import random
import time
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwk as jrfc_jwk
from joserfc import jwt as jrfc_jwt

from kavach_core import access_tokens, guard, keys
from kavach_core.config import Config, ProtectedResource
from kavach_core.context import Context
from kavach_core.drivers import run
from kavach_core.memory_store import MemoryStore
from kavach_core.opaque import b64url_decode
from kavach_core.verified_cache import VerifiedCache

from .common import day_grant, fmt_ratio, fmt_time, interleaved, table

ISSUER = "https://as.example.com"
RESOURCE = "https://mcp.example.com/mcp"
NOW = int(time.time())  # PyJWT reads the real clock, so tokens are minted for now
ALGS = ("ES256", "RS256", "EdDSA")


class Setup:
    """A config, a memory store with one signing key of ``alg`` and a grant, and a token."""

    def __init__(self, alg: str, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.config = Config(issuer=ISSUER, resources=[ProtectedResource(RESOURCE)], secret=b"s" * 32, signing_alg=alg)
        self.store = MemoryStore()
        self.ctx = Context(self.config, NOW, rng.randbytes)
        keyset = run(keys.current(self.ctx), self.store)
        pair = keyset.signer(NOW, alg)
        assert pair is not None
        self.pair = pair
        self.keys = dict(keys.KeySet(self.store.keys).verifying_keys(NOW))
        self.store.grants["g1"] = day_grant("g1", "client-1", RESOURCE, NOW, "x", rotated_at=NOW)

    def token(self) -> str:
        token, _ = access_tokens.mint(
            self.ctx,
            self.pair,
            subject="alice",
            client_id="client-1",
            resource=RESOURCE,
            scopes=("tools:list", "tools:call"),
            grant_id="g1",
        )
        return token


def _raw(alg: str, setup: Setup, token: str) -> Any:
    h64, p64, s64 = token.split(".")
    signing_input = f"{h64}.{p64}".encode()
    sig = b64url_decode(s64)
    pub = setup.pair.key.public_key()
    if alg == "ES256":
        sha = ec.ECDSA(hashes.SHA256())

        def raw() -> None:
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            pub.verify(der, signing_input, sha)  # type: ignore[call-arg]

    elif alg == "RS256":
        pad, sha256 = padding.PKCS1v15(), hashes.SHA256()

        def raw() -> None:
            pub.verify(sig, signing_input, pad, sha256)  # type: ignore[call-arg]

    else:

        def raw() -> None:
            pub.verify(sig, signing_input)  # type: ignore[call-arg]

    return raw


def _peers(alg: str, setup: Setup, token: str) -> dict[str, Any]:
    pub = setup.pair.key.public_key()

    def pyjwt_decode() -> None:
        pyjwt.decode(
            token,
            pub,
            algorithms=[alg],
            audience=RESOURCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )

    jkey = jrfc_jwk.import_key(setup.pair.public.jwk())
    registry = jrfc_jwt.JWTClaimsRegistry(
        now=lambda: NOW + 1,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": RESOURCE},
        sub={"essential": True},
        exp={"essential": True},
    )
    jalg = alg

    def joserfc_decode() -> None:
        decoded = jrfc_jwt.decode(token, jkey, algorithms=[jalg])
        registry.validate(decoded.claims)

    return {"pyjwt": pyjwt_decode, "joserfc": joserfc_decode}


def first_sight(quick: bool = False) -> dict[str, Any]:
    rounds, number = (2, 3) if quick else (41, 150)
    out: dict[str, Any] = {}
    for alg in ALGS:
        setup = Setup(alg)
        token = setup.token()

        def ours(token: str = token, setup: Setup = setup) -> None:
            access_tokens.verify(token, setup.keys, issuer=ISSUER, resource=RESOURCE, now=NOW + 1)

        variants = {"raw cryptography": _raw(alg, setup, token), "kavach": ours, **_peers(alg, setup, token)}
        out[alg] = interleaved(variants, baseline="raw cryptography", rounds=rounds, number=number)
    return out


def repeat_sight(quick: bool = False) -> dict[str, Any]:
    rounds, number = (2, 3) if quick else (15, 300)
    setup = Setup("ES256")
    token = setup.token()
    cache = VerifiedCache()
    access = access_tokens.verify(token, setup.keys, issuer=ISSUER, resource=RESOURCE, now=NOW + 1)
    cache.put(token, access, resource=RESOURCE, issuer=ISSUER)
    store, keymap, config = setup.store, setup.keys, setup.config
    header = f"Bearer {token}"

    def cache_only() -> None:
        assert cache.get(token, resource=RESOURCE, issuer=ISSUER, now=NOW + 1, kids=keymap) is not None

    def cache_and_revocation() -> None:
        hit = cache.get(token, resource=RESOURCE, issuer=ISSUER, now=NOW + 1, kids=keymap)
        assert hit is not None
        assert not store.perform(hit.revocation)

    def guard_flow() -> None:
        run(guard.authenticate(config, RESOURCE, header, ("tools:list",), NOW + 1, cache), store)

    ring = keys.KeyRing()

    def guard_flow_ring() -> None:
        run(guard.authenticate(config, RESOURCE, header, ("tools:list",), NOW + 1, cache, ring), store)

    def guard_flow_no_cache() -> None:
        run(guard.authenticate(config, RESOURCE, header, ("tools:list",), NOW + 1), store)

    variants = {
        "pyjwt.decode": _peers("ES256", setup, token)["pyjwt"],
        "cache hit": cache_only,
        "cache hit + revocation check": cache_and_revocation,
        "guard flow, cache": guard_flow,
        "guard flow, cache + key ring": guard_flow_ring,
        "guard flow, no cache": guard_flow_no_cache,
    }
    return {"ES256": interleaved(variants, baseline="pyjwt.decode", rounds=rounds, number=number)}


def report(first: dict[str, Any], repeat: dict[str, Any]) -> str:
    rows = []
    for alg, res in first.items():
        for name, r in res.items():
            rows.append([alg, name, fmt_time(r["seconds"]["median"]), fmt_ratio(r["ratio"])])
    text = table(
        "a. verification, first sight (ratio to raw cryptography verify)",
        ["alg", "verifier", "median", "ratio [min-max]"],
        rows,
    )
    rows = []
    for alg, res in repeat.items():
        for name, r in res.items():
            speedup = 1 / r["ratio"]["median"]
            rows.append([alg, name, fmt_time(r["seconds"]["median"]), fmt_ratio(r["ratio"]), f"{speedup:.1f}x faster"])
    text += table(
        "b. verification, repeat sight (ratio to pyjwt.decode)",
        ["alg", "path", "median", "ratio [min-max]", "vs pyjwt"],
        rows,
    )
    return text
