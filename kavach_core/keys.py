"""Signing keys that rotate (RFC 7517 §5 key sets; RFC 9068 §4 and RFC 8414 §2 ``jwks_uri``).

- The active key signs; a key retired by rotation stays published in the JWKS until every
  token it signed has expired (``publish_until``). A key records the longest a token it signs
  may live (:func:`token_lifetime`): tokens are never minted longer, a rotation never shortens
  it, and a new key takes the longest of the keys it follows, so processes configured with
  different access-token lifetimes (``kavach keys rotate`` run without the server's settings)
  can never leave a token valid after its key is withdrawn.
- A successor is published :data:`PREPUBLISH` seconds before it starts signing, so verifiers
  that cache the JWKS (for :data:`JWKS_MAX_AGE` seconds) already know it when the first token
  it signs reaches them. Keys are changed only when asked for (a token or JWKS request), so
  after a quiet spell the successor may be made later than that: it then starts
  :data:`SUCCESSOR_LEAD` seconds after it is published (so that, on any instance's clock, it
  signs only once every JWKS cached before has expired), and the active key signs until then.
  An explicit :func:`rotate` switches at once, and so does the first key made when none can sign
  (a store with no key, or no request at all while the last one stopped signing); verifiers
  that meet an unknown ``kid`` are expected to refetch the JWKS.
- Every change to the stored set is a compare-and-set (:class:`~kavach_core.effects.SwapSigningKeys`),
  so with many processes a rotation is decided once.
- ``kid`` is the RFC 7638 thumbprint of the public key, so every process agrees on it.
- Each algorithm's keys rotate on their own. During a rolling change of ``signing_alg``
  instances configured for different algorithms share one store: each starts, rotates and
  retires only keys of its own algorithm, so the other's key keeps signing for the instances
  configured with it and the JWKS publishes both (RFC 7517 §5 lets a set hold keys of many
  algorithms; RFC 7515 §4.1.4 ``kid`` tells a verifier which one signed).
- A stored record this process cannot load (:func:`load` raises) never signs here: it is not in
  the JWKS (it could verify nothing; RFC 9068 §4 has resource servers verify with the published
  keys), so it is never :meth:`KeySet.active` either, and a key of this instance's algorithm that
  cannot be loaded is retired at the next change of the set, not dropped: a load can fail in one
  process only (a ``cryptography``/OpenSSL build lacking the curve, a FIPS provider refusing
  Ed25519), and tokens another process signed with it must verify until they expire. The outcome
  of a load, success or failure, is kept per process, so the token endpoint parses no PEM per request.

Keys for ES256 and Ed25519 are derived from the injected entropy source; RSA keys come from
``cryptography``'s generator (OpenSSL's CSPRNG), since deriving RSA primes from a byte stream
would mean writing prime generation ourselves.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from . import effects as fx
from .config import KEY_PREPUBLISH
from .context import Context
from .drivers import Flow
from .errors import KavachError
from .jose import (
    ALGORITHMS,
    JoseError,
    PrivateKey,
    SigningKeyPair,
    VerifyingKey,
    check_key_matches_alg,
    jwk_thumbprint,
)
from .memo import Memo
from .records import SigningKey

PUBLISH_MARGIN = 300
"""Seconds a retired key stays published beyond the last expiry of a token it signed (clock skew)."""

PREPUBLISH = KEY_PREPUBLISH
"""Seconds before the active key stops signing from which its successor is generated and published
(by the first request in that time: a key signs at least this long, so a successor made by it is
published this far ahead; one made later, at least :data:`SUCCESSOR_LEAD` ahead)."""

JWKS_MAX_AGE = 300
"""Seconds verifiers may cache the JWKS (its ``Cache-Control: max-age``)."""

CLOCK_SKEW = 60
"""Seconds the clocks of a cluster's instances may differ by. A key created up to this far in an
instance's future was started by an instance whose clock runs ahead: it signs here too. A key
created up to twice this far ahead is never dropped as a successor that never signed (an
instance ahead may have signed with it; dropping it would leave its tokens with no published
key). A successor is published :data:`PREPUBLISH` seconds ahead, so it may sign this early."""

SUCCESSOR_LEAD = JWKS_MAX_AGE + 2 * CLOCK_SKEW
"""The least time, by the publishing instance's clock, between a successor's publication and its
``created_at``. An instance whose clock runs :data:`CLOCK_SKEW` ahead signs with it
:data:`CLOCK_SKEW` before that by its own clock (:meth:`KeySet.active`), so twice the skew
early in true time: even so every JWKS cached before the publication has expired by then."""

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CACHE_SIZE = 64
_CacheKey = tuple[str, str, bytes]
_loaded: Memo[_CacheKey, SigningKeyPair] = Memo(_CACHE_SIZE)
_unloadable: Memo[_CacheKey, str] = Memo(_CACHE_SIZE)
"""Records :func:`load` refused, with the reason. The key set is read on every token request and a
retired record stays stored until its publication ends, so the same broken record comes back
often: it is refused again without parsing its PEM again."""


def _private_key(alg: str, ctx: Context) -> PrivateKey:
    if alg == "ES256":
        # 384 bits reduced modulo n-1, plus one: bias below 2^-128 (FIPS 186-5 §A.2.1).
        scalar = int.from_bytes(ctx.random(48), "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())
    if alg == "EdDSA":
        # RFC 8032 §5.1.5: an Ed25519 private key is 32 random octets.
        return ed25519.Ed25519PrivateKey.from_private_bytes(ctx.random(32))
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise JoseError(f"unsupported algorithm {alg}")


ROTATE_ATTEMPTS = 8
"""How many times :func:`rotate` and :func:`current` decide and swap before they give up on a key
set that keeps changing."""


class KeyRotationError(KavachError):
    """A rotation could not store its key: the key set kept changing under it."""


def token_lifetime(record: SigningKey) -> int:
    """The longest an access token signed by ``record`` may live: what its publication keeps
    beyond its signing period, less :data:`PUBLISH_MARGIN`."""
    return max(0, record.publish_until - record.signs_until - PUBLISH_MARGIN)


def _longest_token_lifetime(ctx: Context, records: tuple[SigningKey, ...]) -> int:
    """The configured access-token lifetime, or a longer one a live key records (another
    process's setting): what a new key's publication, and a retired key's, must allow for."""
    return max([ctx.config.lifetimes.access_token, *(token_lifetime(k) for k in _live(records, ctx.now))])


def generate(
    ctx: Context, alg: str | None = None, *, start: int | None = None, token_lifetime: int | None = None
) -> SigningKey:
    """A new key for ``alg`` (default: the configured one) that signs from ``start``
    (default ``ctx.now``) for ``lifetimes.signing_key`` seconds, then stays published until
    every token it can have signed has expired: tokens of up to ``token_lifetime`` seconds
    (default: the configured access-token lifetime)."""
    alg = alg or ctx.config.signing_alg
    start = ctx.now if start is None else start
    key = _private_key(alg, ctx)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    lifetime = ctx.config.lifetimes
    tokens = lifetime.access_token if token_lifetime is None else token_lifetime
    record = SigningKey(
        kid=jwk_thumbprint(key.public_key()),
        alg=alg,
        private_pem=pem,
        created_at=start,
        signs_until=start + lifetime.signing_key,
        publish_until=_published_until(start + lifetime.signing_key, tokens),
    )
    # Loaded once here (and kept, so its first token parses nothing): a key this process could not
    # load would never be active, so current() would store another one on every request.
    load(record)
    return record


def _published_until(stops_signing: int, tokens: int) -> int:
    """How long a key stopping to sign at ``stops_signing`` stays published: until the last token
    it can sign (valid ``tokens`` seconds) has expired, and :data:`PUBLISH_MARGIN` more."""
    return stops_signing + tokens + PUBLISH_MARGIN


def load(record: SigningKey) -> SigningKeyPair:
    """The usable key pair of a stored key (parsed once per process).

    Raises :class:`~kavach_core.jose.JoseError` when the record does not hold a key of its ``alg``
    (the algorithm is fixed by the key, never by a token header: RFC 8725 §3.1). A refusal is
    remembered like a success, so a broken record costs one parse per process, not one per request.
    """
    cache_key = (record.kid, record.alg, record.private_pem)
    pair = _loaded.get(cache_key)
    if pair is not None:
        return pair
    refused = _unloadable.get(cache_key)
    if refused is not None:
        raise JoseError(refused)
    try:
        pair = _parse(record)
    except JoseError as exc:
        _unloadable.put(cache_key, str(exc))
        raise
    return _loaded.put(cache_key, pair)


def _parse(record: SigningKey) -> SigningKeyPair:
    try:
        key = serialization.load_pem_private_key(record.private_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise JoseError(f"stored signing key {record.kid} cannot be loaded") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise JoseError(f"stored signing key {record.kid} has an unsupported type")
    check_key_matches_alg(record.alg, key)
    return SigningKeyPair(record.kid, record.alg, key)


def usable(record: SigningKey) -> bool:
    """Whether this process can sign with ``record`` (:func:`load` succeeds); cached like :func:`load`."""
    try:
        load(record)
    except JoseError:
        return False
    return True


_public: Memo[_CacheKey, VerifyingKey] = Memo(_CACHE_SIZE)


def verifying(record: SigningKey) -> VerifyingKey:
    """The public half of a stored key (built once per process, like :func:`load`)."""
    cache_key = (record.kid, record.alg, record.private_pem)
    found = _public.get(cache_key)
    return found if found is not None else _public.put(cache_key, load(record).public)


@attrs.frozen
class KeySet:
    """The stored keys, with the answers every caller needs at a given time."""

    records: tuple[SigningKey, ...]
    _chosen: Memo[tuple[int, str], tuple[SigningKey | None]] = attrs.field(
        init=False, factory=lambda: Memo(16), eq=False, repr=False
    )
    """What :meth:`active` answered, per time and algorithm (the records never change)."""

    def active(self, now: int, alg: str) -> SigningKey | None:
        """The newest key of ``alg`` that may sign at ``now`` (one created up to :data:`CLOCK_SKEW`
        seconds ahead included: another instance's clock may run ahead of this one's).

        A record that cannot be loaded (:func:`usable`) is passed over: it is not in the JWKS, so
        a token it signed would verify nowhere (RFC 9068 §4), and choosing it would fail every
        token request while :func:`current` saw no reason to make a key. Only the newest records
        are tried, each from the load cache, so the usual call parses nothing.
        """
        found = self._chosen.get((now, alg))
        if found is not None:
            return found[0]
        start = now + CLOCK_SKEW
        candidates = [k for k in self.records if k.alg == alg and k.created_at <= start and now < k.signs_until]
        candidates.sort(key=lambda k: k.created_at, reverse=True)  # stable: the first stored of a tie wins
        return self._chosen.put((now, alg), (next((k for k in candidates if usable(k)), None),))[0]

    def signing(self, now: int) -> tuple[SigningKey, ...]:
        """The key signing at ``now`` (:meth:`active`) of each algorithm that has one, in
        :data:`~kavach_core.jose.ALGORITHMS` order."""
        return tuple(key for key in (self.active(now, alg) for alg in ALGORITHMS) if key is not None)

    def signer(self, now: int, alg: str) -> SigningKeyPair | None:
        """The loaded pair of :meth:`active`, or ``None``."""
        record = self.active(now, alg)
        return None if record is None else load(record)

    def published(self, now: int) -> tuple[SigningKey, ...]:
        """Keys in the JWKS at ``now``: until ``publish_until``, successors included before they sign."""
        return tuple(k for k in self.records if k.publish_until > now)

    def verifying_keys(self, now: int) -> Mapping[str, VerifyingKey]:
        """``kid -> key`` for every key still published at ``now``.

        A record that cannot be loaded is left out: it could verify nothing.
        """
        out: dict[str, VerifyingKey] = {}
        for record in self.published(now):
            try:
                out[record.kid] = verifying(record)
            except JoseError:
                continue
        return out

    def jwks(self, now: int) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5) of the keys published at ``now``."""
        return {"keys": [key.jwk() for key in self.verifying_keys(now).values()]}


KEYRING_TTL = 1
"""Seconds a guard's :class:`KeyRing` reuses one read of the key set (see its bound)."""


class KeyRing:
    """The verifying keys a resource server read last, reused for at most ``ttl`` seconds.

    A guard needs the published keys on every request, and they change rarely (a successor is
    published :data:`PREPUBLISH` seconds before it signs), so one store read can serve every
    request for a short while. What this costs, and what it does not:

    - A key *removed* from the store keeps verifying in this process for at most ``ttl`` seconds
      after the read that saw it (``now`` is whole seconds, and a read made during second ``t``
      serves only while ``now < t + ttl``): with the default of 1 second, a withdrawn key stops
      verifying within one second.
    - A key *ageing out* (``publish_until``) stops verifying at once: publication is decided
      again with the caller's ``now`` whenever ``now`` changes, from the records read.
    - A token naming a ``kid`` the snapshot lacks makes the guard read the store again at once
      (:class:`~kavach_core.jose.UnknownKid`), so a new key verifies from its first token.

    ``ttl = 0`` turns reuse off (every request reads the keys). Safe under threads: the snapshot
    is one tuple, replaced whole.
    """

    def __init__(self, ttl: int = KEYRING_TTL) -> None:
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:  # whole seconds, as ``now`` is
            raise ValueError("a key ring's ttl must be a whole number of seconds, >= 0")
        self.ttl = ttl
        self._snapshot: tuple[int, tuple[SigningKey, ...], int, Mapping[str, VerifyingKey]] | None = None

    def keys(self, now: int) -> Mapping[str, VerifyingKey] | None:
        """``kid -> key`` published at ``now`` from the last read, or ``None`` when that read is too old."""
        snapshot = self._snapshot
        if snapshot is None:
            return None
        read_at, records, at, found = snapshot
        if not read_at <= now < read_at + self.ttl:
            return None
        if at != now:
            found = KeySet(records).verifying_keys(now)
            self._snapshot = (read_at, records, now, found)
        return found

    def update(self, records: tuple[SigningKey, ...], now: int) -> Mapping[str, VerifyingKey]:
        """Remember the key set just read from the store at ``now``; returns its published keys."""
        found = KeySet(records).verifying_keys(now)
        if self.ttl > 0:
            self._snapshot = (now, records, now, found)
        return found

    def clear(self) -> None:
        """Forget the snapshot: the next request reads the store."""
        self._snapshot = None


def _retire(record: SigningKey, now: int, access_token_lifetime: int) -> SigningKey:
    """Stop ``record`` signing at ``now``; publish it until tokens signed before now have expired
    (tokens of up to ``access_token_lifetime`` seconds, or the longer lifetime it records)."""
    if record.signs_until <= now:
        return record
    # A successor that never signed: no token needs it. An instance whose clock runs CLOCK_SKEW
    # ahead may sign with one CLOCK_SKEW before its start, by a clock this far behind: twice.
    if record.created_at > now + 2 * CLOCK_SKEW:
        return attrs.evolve(record, signs_until=now, publish_until=now)
    tokens = max(access_token_lifetime, token_lifetime(record))
    return attrs.evolve(
        record,
        signs_until=now,
        publish_until=min(record.publish_until, _published_until(now, tokens)),
    )


def _extended(record: SigningKey, until: int) -> SigningKey:
    """``record`` signing until ``until`` at least (its successor, made late, starts then), and
    published for as long after that as before: tokens it signs still expire before it is
    withdrawn (:func:`token_lifetime` unchanged)."""
    if record.signs_until >= until:
        return record
    return attrs.evolve(record, signs_until=until, publish_until=record.publish_until + until - record.signs_until)


def _store(current: tuple[SigningKey, ...], keys: tuple[SigningKey, ...]) -> Flow[KeySet]:
    stored = yield fx.SwapSigningKeys(tuple(k.kid for k in current), keys)
    return KeySet(tuple(stored))


def _live(records: tuple[SigningKey, ...], now: int) -> tuple[SigningKey, ...]:
    return tuple(k for k in records if k.publish_until > now)


def current(ctx: Context) -> Flow[KeySet]:
    """The key set, with a key of the configured ``signing_alg`` able to sign now.

    Generates a key, signing at once, when no usable key of that algorithm can sign (none yet, or
    the one stored cannot be loaded), and a successor when the active key stops signing within
    :data:`PREPUBLISH` seconds and no usable one is published yet; each change is decided once,
    cluster-wide (a compare-and-set on the stored kids). The usual call performs one read and no
    write. When another process's swap wins and what it stored still lacks what this one needs
    (instances of two algorithms writing their first keys at once), the decision is made again on
    the set it stored, up to :data:`ROTATE_ATTEMPTS` times; after that the set is returned as it
    is, without a key of this algorithm (the token endpoint answers 503 with ``Retry-After``).

    Only keys of this instance's algorithm are retired: every key of it when none can sign (a key
    created beyond :data:`CLOCK_SKEW` ahead, one that cannot be loaded), and at any change one
    that cannot be loaded. A key of another algorithm signs for the instances configured with it
    (a rolling change of ``signing_alg``) and is left as it is, published until its own
    ``publish_until`` (RFC 9068 §4: until its tokens have expired); were it retired, those
    instances would retire this one's key in turn, and every request would make a key that signs
    unannounced. Every swap drops the keys whose publication has ended, so the stored set holds,
    per algorithm, at most the keys of one rotation period and those whose tokens may still be live.
    """
    now = ctx.now
    alg = ctx.config.signing_alg
    records: tuple[SigningKey, ...] = tuple((yield fx.GetSigningKeys()))
    for _ in range(ROTATE_ATTEMPTS):
        keyset = KeySet(records)
        active = keyset.active(now, alg)
        if active is not None:
            if active.signs_until - now > PREPUBLISH:
                return keyset
            if any(k.alg == alg and k.created_at >= active.signs_until and usable(k) for k in records):
                return keyset
        lifetime = _longest_token_lifetime(ctx, records)
        if active is None:
            fresh = generate(ctx, token_lifetime=lifetime)
        else:
            fresh = generate(ctx, start=max(active.signs_until, now + SUCCESSOR_LEAD), token_lifetime=lifetime)
        kept: list[SigningKey] = []
        for k in _live(records, now):
            if k.alg == alg and (active is None or not usable(k)):
                k = _retire(k, now, lifetime)
            elif active is not None and k.kid == active.kid:
                k = _extended(k, fresh.created_at)
            kept.append(k)
        stored = yield from _store(records, (fresh, *_live(tuple(kept), now)))
        if any(k.kid == fresh.kid for k in stored.records):
            return stored
        records = stored.records
    return KeySet(records)


def signing_algorithms(records: tuple[SigningKey, ...], now: int) -> tuple[str, ...]:
    """The algorithms of the usable keys signing at ``now``, sorted: those the servers sharing
    this key set sign with (one while all are configured alike, two during a rolling change)."""
    return tuple(sorted(key.alg for key in KeySet(records).signing(now)))


def rotate(ctx: Context, algs: tuple[str, ...] | None = None) -> Flow[KeySet]:
    """Retire every signing key now and start signing with new ones (``kavach keys rotate``): one
    of each algorithm in ``algs``; by default one of each algorithm signing now
    (:func:`signing_algorithms`), or of the configured ``signing_alg`` when none signs.

    Every key, of every algorithm, is retired: an operator rotates when a key may be exposed, and
    after a rolling change of ``signing_alg``, a rotation naming the new algorithm alone withdraws
    the old algorithm's key from signing at once (instances still configured with it start a new
    one of it, as :func:`current` does when none signs). Tokens the retired keys signed keep
    verifying until they expire (RFC 9068 §4). When another process changes the key set between
    this one's read and its swap (publishing a successor, rotating too), the swap is tried again on
    what it stored, up to :data:`ROTATE_ATTEMPTS` times, so the keys this rotation made are the ones
    signing when it returns; else :class:`KeyRotationError`, and nothing of it was stored.
    """
    now = ctx.now
    fresh: tuple[SigningKey, ...] = ()
    for _ in range(ROTATE_ATTEMPTS):
        records: tuple[SigningKey, ...] = tuple((yield fx.GetSigningKeys()))
        lifetime = _longest_token_lifetime(ctx, records)
        if not fresh:
            wanted = algs if algs else signing_algorithms(records, now) or (ctx.config.signing_alg,)
            fresh = tuple(generate(ctx, alg, token_lifetime=lifetime) for alg in wanted)
        else:  # the same keys, published as long as the set they now join needs
            fresh = tuple(attrs.evolve(k, publish_until=_published_until(k.signs_until, lifetime)) for k in fresh)
        kept = tuple(_retire(k, now, lifetime) for k in _live(records, now))
        stored = yield from _store(records, (*fresh, *_live(kept, now)))
        if {k.kid for k in fresh} <= {k.kid for k in stored.records}:
            return stored
    raise KeyRotationError(
        f"the signing keys changed {ROTATE_ATTEMPTS} times while rotating; nothing was changed: run it again"
    )
