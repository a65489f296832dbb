"""The Redis store: several kavach processes sharing one Redis (redis-py, sync and asyncio).

Guarantees:

- Every effect in :mod:`kavach_core.effects` (except the outbound ``FetchDocument``) is one
  atomic step, with results identical to :class:`kavach_core.memory_store.MemoryStore`: each is
  a single command (``GET``, ``GETDEL`` for consent tickets, ``SET``) or a Lua script, which
  Redis runs without interleaving anything else (code redemption, refresh rotation, key swaps,
  rate-limit hits, client deletion, revocations).
- Keys are namespaced by ``prefix`` (default ``kavach:``). Everything that expires gets a TTL
  from its record: its lifetime (``expires_at`` minus its creation time) plus ``ttl_slack``
  seconds, so Redis drops expired data by itself and never before the core stops accepting it.
  Revoked access-token ids, whose record has no creation time, live until ``expires_at`` by the
  store's clock plus the slack. ``purge(now)`` also deletes, immediately, whatever has expired
  at ``now`` (for parity with the SQL stores).
- Records are JSON (:mod:`kavach.stores._codec`). Codes and grants are hashes: a ``record``
  field with the JSON plus the fields the scripts read and change (the code's ``consumed``,
  ``sub``, ``cid``; the refresh family's ``gen``, ``hash``, ``rexp``, ``rot``, ``rev`` and the
  grant's ``exp``, ``sub``, ``cid``). Sorted sets index grants (all, per subject, per client) and
  codes (per subject, per client; scored by expiry), so ``RevokeSubject`` and ``DeleteClient``
  find, in one script, the codes to drop and the grants to revoke.
- A Redis that cannot be reached, a connection lost during an effect, or a Redis that is up but
  refuses to serve (out of memory under ``noeviction``, a read-only replica after a failover,
  writes stopped after a failed save: see :func:`outage`) raises
  :class:`kavach_core.drivers.StoreUnavailable` (503). Commands are never retried blindly (a
  write may have been applied before the connection dropped); read-only effects are retried
  once. A script either ran completely or not at all: no partial state. When Redis returns the
  next call reconnects. A key under the prefix holding what is not its record (another type,
  other text, a number that is not a whole number, a code's or grant's hash without its
  ``record``) raises :class:`DamagedValueError`, a
  ``StoreUnavailable`` too. Scripts read and check every stored number they need before they
  write anything, and a rotation reads and decodes the family's record first, so an effect
  meeting a damaged number or record changes nothing. ``purge`` logs a damaged
  key and leaves it as it is, and purges the others.
- Signing keys' private PEMs are encrypted at rest when a store key is configured (``store_key``
  or ``KAVACH_STORE_KEY``), see :mod:`kavach.stores._sealing`.

Scripts touch keys they compute from the prefix, so on Redis Cluster use a prefix with a hash
tag (``{kavach}:``) to keep every key in one slot. Durability is Redis's: run it with AOF
(``appendfsync everysec`` or ``always``) if a restart must not forget consumed codes or rotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

import attrs
import redis
import redis.asyncio
import redis.exceptions
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from kavach_core import effects as fx
from kavach_core.drivers import StoreUnavailable
from kavach_core.records import AuthorizationCode, Client, Grant, PendingAuthorization, SigningKey

from ._codec import CLIENTS, CODES, GRANTS, KEYS, PENDING, RecordCodec
from ._sealing import KeySealer, seal, sealer_from, unseal
from ._urls import take_parameters

__all__ = ["RedisStore"]

log = logging.getLogger("kavach.stores.redis")

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


@attrs.frozen
class _Command:
    args: tuple[Any, ...]


@attrs.frozen
class _Script:
    name: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


Plan = Generator["_Command | _Script", Any, T]
"""A handler: yields commands and scripts, receives each one's reply, returns the effect's result."""


# -- Lua scripts ------------------------------------------------------------------------------------
# Numbers travel as decimal strings; string.format('%d') keeps integers integral. A script reads every
# stored number it needs through whole() before it writes anything, and answers {'damaged', key} for
# one that is not a whole number (see _undamaged), and so for a key it adds to that holds another type
# (misfit): a damaged value makes it change nothing.

_WHOLE = """
local function whole(v)
  if type(v) == 'string' and string.match(v, '^%-?%d+$') then return tonumber(v) end
  return nil
end
"""
"""``whole(value)``: the whole number stored as decimal text, else ``nil`` (also for a missing
value, which Redis hands a script as ``false``). Python reads stored numbers the same way
(:func:`_integer`)."""

_MISFIT = """
local function misfit(kind, first, last)
  for i = first, last do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' and t ~= kind then return KEYS[i] end
  end
  return false
end
"""
"""``misfit(kind, first, last)``: the first of ``KEYS[first..last]`` holding a type other than
``kind`` (absent is fine), else ``false``. A script checks the keys it adds to this way before it
writes anything: Redis stops a script at a command meeting the wrong type and keeps the writes
made before it."""

_EXTEND = """
local function extend(key, ttl)
  local t = redis.call('TTL', key)
  if t < ttl then redis.call('EXPIRE', key, ttl) end
end
"""

_DROP_CODES = """
local function drop_codes(index, prefix, field, value)
  for _, h in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local key = prefix .. h
    local f = redis.pcall('HMGET', key, field, 'consumed')
    if not f.err and f[1] == value and f[2] == '0' then redis.call('DEL', key) end
  end
  redis.call('DEL', index)
end
"""
"""``drop_codes(index, code key prefix, 'sub' or 'cid', value)``: delete the codes not yet redeemed
that the index lists and whose field still holds ``value``, then the index (what stays is redeemed,
gone, or indexed under another value). A code key of another type is passed over: nothing reads
as a code from it."""

_REVOKE_GRANTS = """
local function revoke_grants(index, prefix, field, value, now)
  local n = 0
  for _, gid in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local key = prefix .. gid
    local f = redis.pcall('HMGET', key, field, 'rev')
    if not f.err and f[1] == value and f[2] == '' then
      redis.call('HSET', key, 'rev', now)
      n = n + 1
    end
  end
  return n
end
"""
"""``revoke_grants(index, grant key prefix, 'sub' or 'cid', value, now)``: revoke the grants the index
lists whose field holds ``value`` and that are not yet revoked; returns how many. A grant key of
another type is passed over: no token of it is served (reading it is the store's damage, 503)."""

_SCRIPTS = {
    # KEYS: client, clients zset, seq. ARGV: json, client_id
    "put_client": _WHOLE
    + _MISFIT
    + """
local bad = misfit('zset', 2, 2)
if bad then return {'damaged', bad} end
local listed = redis.call('ZSCORE', KEYS[2], ARGV[2])
local seq = redis.call('GET', KEYS[3])
if not listed and seq and not whole(seq) then return {'damaged', KEYS[3]} end
redis.call('SET', KEYS[1], ARGV[1])
if not listed then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
end
return 1
""",
    # KEYS: client, clients zset, grants-of-client zset, codes-of-client zset
    # ARGV: client_id, now, grant key prefix, code key prefix
    "delete_client": _DROP_CODES
    + _REVOKE_GRANTS
    + _MISFIT
    + """
local bad = misfit('zset', 2, 4)
if bad then return {'damaged', bad} end
local existed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
drop_codes(KEYS[4], ARGV[4], 'cid', ARGV[1])
revoke_grants(KEYS[3], ARGV[3], 'cid', ARGV[1], ARGV[2])
return existed
""",
    # KEYS: clients zset. ARGV: client key prefix
    "list_clients": """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v end
end
return out
""",
    # KEYS: code, codes-of-subject zset, codes-of-client zset
    # ARGV: json, consumed (0/1), expires_at, ttl, code_hash, subject, client_id, stale (an expiry
    # so long past that its code's key has expired too: index members up to it are dropped)
    "put_code": _EXTEND
    + _MISFIT
    + """
local bad = misfit('zset', 2, 3)
if bad then return {'damaged', bad} end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'consumed', ARGV[2], 'exp', ARGV[3], 'sub', ARGV[6], 'cid', ARGV[7])
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
for i = 2, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[8])
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[5])
  extend(KEYS[i], ttl)
end
return 1
""",
    # KEYS: code, grant, grants zset, subject zset, client zset, seq
    # ARGV: grant_id, json, exp, gen, hash, rexp, rot, rev, sub, cid, ttl
    "consume_code": _EXTEND
    + _WHOLE
    + _MISFIT
    + """
if redis.call('HGET', KEYS[1], 'consumed') ~= '0' then return 0 end
local bad = misfit('zset', 3, 5) or misfit('string', 6, 6)
if bad then return {'damaged', bad} end
local seq = redis.call('ZSCORE', KEYS[3], ARGV[1])
local last = redis.call('GET', KEYS[6])
if not seq and last and not whole(last) then return {'damaged', KEYS[6]} end
redis.call('HSET', KEYS[1], 'consumed', '1')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'record', ARGV[2], 'exp', ARGV[3], 'gen', ARGV[4], 'hash', ARGV[5],
  'rexp', ARGV[6], 'rot', ARGV[7], 'rev', ARGV[8], 'sub', ARGV[9], 'cid', ARGV[10])
local ttl = tonumber(ARGV[11])
redis.call('EXPIRE', KEYS[2], ttl)
if not seq then seq = redis.call('INCR', KEYS[6]) end
for i = 3, 5 do
  redis.call('ZADD', KEYS[i], seq, ARGV[1])
  extend(KEYS[i], ttl)
end
return 1
""",
    # KEYS: grant. ARGV: now
    "revoke_grant": """
if redis.call('HGET', KEYS[1], 'rev') ~= '' then return 0 end
redis.call('HSET', KEYS[1], 'rev', ARGV[1])
return 1
""",
    # KEYS: codes-of-subject zset, grants-of-subject zset. ARGV: subject, now, grant key prefix, code key prefix
    "revoke_subject": _DROP_CODES
    + _REVOKE_GRANTS
    + _MISFIT
    + """
local bad = misfit('zset', 1, 2)
if bad then return {'damaged', bad} end
drop_codes(KEYS[1], ARGV[4], 'sub', ARGV[1])
return revoke_grants(KEYS[2], ARGV[3], 'sub', ARGV[1], ARGV[2])
""",
    # KEYS: an index zset. ARGV: grant key prefix
    "list_grants": """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then out[#out + 1] = h end
end
return out
""",
    # KEYS: grant. ARGV: generation, presented, successor, now, grace, idle_expires_at, record
    # (the grant's record as the store read and decoded it just before: see RedisStore._rotate)
    "rotate": _WHOLE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown', {}} end
local f = redis.call('HMGET', KEYS[1], 'exp', 'gen', 'hash', 'rexp', 'rot', 'rev', 'record')
local exp, gen, rexp, rot = whole(f[1]), whole(f[2]), whole(f[4]), whole(f[5])
if not (exp and gen and rexp and rot and f[3] and (f[6] == '' or whole(f[6])) and f[7] == ARGV[7]) then
  return {'damaged', KEYS[1]}
end
local g, now = tonumber(ARGV[1]), tonumber(ARGV[4])
local outcome
if f[6] ~= '' or now >= exp then
  outcome = 'unknown'
elseif g == gen and ARGV[2] == f[3] then
  if now >= rexp then
    outcome = 'unknown'
  else
    local idle = tonumber(ARGV[6])
    if idle > exp then idle = exp end
    redis.call('HSET', KEYS[1], 'gen', string.format('%d', g + 1), 'hash', ARGV[3], 'rot', ARGV[4],
      'rexp', string.format('%d', idle))
    outcome = 'rotated'
  end
elseif tonumber(ARGV[5]) > 0 and g + 1 == gen and now - rot <= tonumber(ARGV[5]) then
  outcome = 'retried'
else
  redis.call('HSET', KEYS[1], 'rev', ARGV[4])
  outcome = 'reused'
end
return {outcome, redis.call('HGETALL', KEYS[1])}
""",
    # KEYS: revoked jti. ARGV: expires_at, ttl
    "revoke_access": _WHOLE
    + """
local held = redis.call('GET', KEYS[1])
local old = 0
if held then old = whole(held) end
if not old then return {'damaged', KEYS[1]} end
local oldttl = redis.call('TTL', KEYS[1])
local exp = tonumber(ARGV[1])
if old > exp then exp = old end
local ttl = tonumber(ARGV[2])
if oldttl > ttl then ttl = oldttl end
redis.call('SET', KEYS[1], string.format('%d', exp), 'EX', ttl)
return 1
""",
    # KEYS: revoked jti, grant
    "is_revoked": """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('HGET', KEYS[2], 'rev') == '' then return 0 end
return 1
""",
    # KEYS: keys. ARGV: expected kids (JSON array), new set (JSON)
    "swap_keys": """
local current = redis.call('GET', KEYS[1])
local kids = {}
if current then
  local ok, set = pcall(cjson.decode, current)
  if not ok or type(set) ~= 'table' then return {'damaged', KEYS[1]} end
  for i, k in ipairs(set) do
    if type(k) ~= 'table' then return {'damaged', KEYS[1]} end
    kids[i] = k['kid']
  end
end
local expected = cjson.decode(ARGV[1])
local same = #kids == #expected
if same then
  for i = 1, #kids do
    if kids[i] ~= expected[i] then same = false end
  end
end
if same then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
""",
    # KEYS: counter. ARGV: ttl, step (not 0: a step of 0 is a plain GET, which makes no key). A
    # negative step gives back at most the count, and only to a counter that exists (DECRBY keeps
    # its TTL), so no key is ever made without one.
    "hit": _WHOLE
    + """
local step = tonumber(ARGV[2])
local held = redis.call('GET', KEYS[1])
if held and not whole(held) then return {'damaged', KEYS[1]} end
if step < 0 then
  if not held then return 0 end
  return redis.call('DECRBY', KEYS[1], math.min(-step, whole(held)))
end
local n = redis.call('INCRBY', KEYS[1], step)
if n == step then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
""",
    # KEYS: key. ARGV: field, now: delete a hash whose numeric field is <= now
    "purge_hash": _WHOLE
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
if not whole(v) then return {'damaged', KEYS[1]} end
if whole(v) <= tonumber(ARGV[2]) then return redis.call('DEL', KEYS[1]) end
return 0
""",
    # KEYS: key. ARGV: value: delete the key when it still holds this value
    "purge_value": """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    # KEYS: client, clients index. ARGV: the expired value, client id. Key and index entry go
    # together: a client put again meanwhile (a document fetched again) keeps both.
    "purge_client": """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
""",
    # KEYS: zset. ARGV: member key prefix: drop members whose key is gone
    "purge_index": """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    n = n + 1
  end
end
return n
""",
}

KEY_KINDS = frozenset(
    {"client", "clients", "code", "codes", "grant", "grants", "hit", "keys", "pending", "revoked", "seq"}
    | {"users", "settings"}  # kavach.users.RedisUsers, kavach.instance's server secret
)
"""What comes between the prefix and the first ``:`` (or the end) of every key kavachOS writes."""

_SHA = {name: hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest() for name, body in _SCRIPTS.items()}

FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, redis.exceptions.ResponseError)
"""What a command raises when Redis cannot serve it now, among other things (:func:`outage` tells)."""

_REFUSING = (
    redis.exceptions.OutOfMemoryError,  # OOM: maxmemory reached under noeviction
    redis.exceptions.ReadOnlyError,  # READONLY: a replica, e.g. the old primary after a failover
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, and MASTERDOWN: a replica cut off from its master
    redis.exceptions.TryAgainError,  # TRYAGAIN: a cluster slot moving
)
"""The classes redis-py gives the replies of a server that is up but will not serve now."""

_REFUSALS = ("MISCONF", "BUSY", "NOREPLICAS")
"""Such replies redis-py raises as a plain ``ResponseError`` with the reply's code first: writes
stopped after a failed save, a script running past its time limit, too few replicas answering."""


class DamagedValueError(StoreUnavailable):
    """A key under the store's prefix holding what does not read as the record it should be
    (another type, text that is not the record's JSON: written by hand or by another program).
    Answered like an outage (503), as the SQLite store answers a damaged file."""


def outage(exc: BaseException) -> StoreUnavailable | None:
    """The :class:`StoreUnavailable` an error of :data:`FAILURES` means, or ``None`` when it is no
    outage (a bug, to surface as it is). Outages: no connection or a timeout, and the refusals of a
    server that is up (:data:`_REFUSING`, :data:`_REFUSALS`). Nothing was written: Redis refuses a
    command, or a script that may write, before it runs."""
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("WRONGTYPE"):
        return DamagedValueError(f"a key under the store's prefix is damaged: it holds another type of value ({exc})")
    if isinstance(exc, redis.exceptions.ResponseError) and not (
        isinstance(exc, _REFUSING) or str(exc).startswith(_REFUSALS)
    ):
        return None
    return StoreUnavailable(f"Redis is unavailable: {exc}")


def attempt(call: Callable[[], T], *, read: bool) -> T:
    """``call()``, an :func:`outage` raising :class:`StoreUnavailable`; a ``read`` (it changes
    nothing) is tried once more first, on a fresh connection, a write never (it may have been
    applied before the connection dropped)."""
    if read:
        try:
            return call()
        except FAILURES as exc:
            if outage(exc) is None:
                raise
    with outages_unavailable():
        return call()


@contextlib.contextmanager
def outages_unavailable() -> Iterator[None]:
    """Raise :class:`StoreUnavailable` for an :func:`outage` in the block; anything else as it is."""
    try:
        yield
    except FAILURES as exc:
        unavailable = outage(exc)
        if unavailable is None:
            raise
        raise unavailable from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, Any]:
    """A hash as ``{field: value}`` from a dict reply or a flat Lua list, with text keys."""
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    items = list(reply)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def _checked_url(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` with its scheme in lower case, once redis-py can parse it and its database (the
    path of a ``redis://`` or ``rediss://`` URL) is a number, and the connection options redis-py
    reads from it; ``ValueError`` otherwise."""
    scheme, sep, rest = url.partition("://")
    if sep:
        url = scheme.lower() + sep + rest
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number from 0 to 65535)
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]  # redis-py ships it unannotated
    except ValueError as exc:
        raise ValueError(f"malformed Redis URL: {exc}") from None
    if parts.scheme in ("redis", "rediss") and not re.fullmatch(r"/?[0-9]*", parts.path):
        raise ValueError(
            f"the Redis database {parts.path[1:]!r} in the URL must be a number, as in redis://HOST:PORT/0"
        )
    unknown = _unknown_parameters(url)
    if unknown:
        raise ValueError(f"the Redis URL has parameters no Redis connection takes: {', '.join(unknown)}")
    return url, options


def _unknown_parameters(url: str) -> list[str]:
    """The URL's query parameters (``prefix`` aside) the connection redis-py would make for it does
    not take: redis-py passes every parameter it does not know on to the connection, which then
    fails with a ``TypeError`` when first used. Making a connection object opens no socket."""
    pool = redis.ConnectionPool.from_url(url)
    options = pool.connection_kwargs
    unknown = []
    for name in dict.fromkeys(k for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)):
        if name == "prefix" or name not in options:
            continue
        try:
            pool.connection_class(**{name: options[name]})
        except TypeError:
            unknown.append(name)
    return unknown


_DEFAULT_PREFIX = "kavach:"
"""The key prefix when neither the constructor nor the URL's ``prefix`` gives one."""


class RedisStore:
    """A store on one Redis database, implementing every effect in :mod:`kavach_core.effects`.

    ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL (a ``prefix`` query parameter
    sets the key prefix). ``prefix`` namespaces every key; ``ttl_slack`` (seconds) is added to
    every TTL; ``timeout`` bounds connecting, each reply, and the wait for a free connection;
    ``max_connections`` bounds each pool (more requests than that at once wait their turn);
    ``store_key`` (else ``KAVACH_STORE_KEY``) encrypts signing keys at rest; ``clock`` is what
    "now" means for revoked token ids' TTLs (the wall clock by default). Connection options the
    URL itself gives (``max_connections``, ``socket_timeout``, ...) are redis-py's, and win over
    these arguments; a pool bound below 1, from either, is refused here.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        ttl_slack: int = 60,
        timeout: float = 5.0,
        max_connections: int = 50,
        store_key: bytes | str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        url, options = _checked_url(url)
        url, taken = take_parameters(url, ("prefix",), {"prefix": f"leave it out for {_DEFAULT_PREFIX}"})
        self.url = url
        self.prefix = prefix if prefix is not None else taken.get("prefix", _DEFAULT_PREFIX)
        if ttl_slack < 0:
            raise ValueError("ttl_slack must be >= 0 seconds")
        # redis-py reads a bound of 0 as none given (its default), a negative one it refuses only
        # when the pool is made, at the first request; the URL's own bound is the one it uses.
        if min(max_connections, options.get("max_connections", 1)) < 1:
            raise ValueError("max_connections must be at least 1 (each pool's bound on its connections)")
        self.ttl_slack = ttl_slack
        self._clock = clock
        self._sealer: KeySealer | None = sealer_from(store_key)
        self._client_args: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "max_connections": max_connections,
            "health_check_interval": 0,
        }
        self._pool_wait = timeout
        """How long a command waits for a free connection when all ``max_connections`` are busy
        (a burst of requests queues, as on PostgreSQL; past it the store is unavailable)."""
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._aclients: dict[int, tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}
        self._closed = False
        self._handlers: dict[type[fx.Effect], Callable[[Any], Plan[Any]]] = fx.bind_handlers(self)

    # -- public API ---------------------------------------------------------------------------

    def perform(self, effect: fx.Effect) -> Any:
        """Perform one effect atomically and return its result (see :mod:`kavach_core.effects`).

        Raises ``TypeError`` for an effect this store does not perform and
        :class:`StoreUnavailable` when Redis cannot be reached.
        """
        handler = self._handler(effect)
        client = self._sync_client()
        return attempt(lambda: _drive(client, handler(effect)), read=not effect.writes)

    async def aperform(self, effect: fx.Effect) -> Any:
        """:meth:`perform` with redis.asyncio, on a client of the running event loop."""
        handler = self._handler(effect)
        client = self._async_client()
        if not effect.writes:
            try:
                return await _adrive(client, handler(effect))
            except FAILURES as exc:
                if outage(exc) is None:
                    raise
        with outages_unavailable():
            return await _adrive(client, handler(effect))

    def purge(self, now: int) -> dict[str, int]:
        """Delete what has expired at ``now`` (TTLs do it anyway, later); returns counts per kind.

        Each key is checked and deleted by one script, so a record renewed meanwhile survives.
        """
        client = self._sync_client()
        with outages_unavailable():
            return _drive(client, self._purge_plan(client, now))

    async def apurge(self, now: int) -> dict[str, int]:
        """:meth:`purge` in a worker thread (it scans with the sync client), off the event loop."""
        return await asyncio.to_thread(self.purge, now)

    def close(self) -> None:
        """Close the sync client's connections (async clients: :meth:`aclose` from their loop)."""
        self._closed = True
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        entry = self._aclients.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].aclose()
        self.close()

    def delete_all(self) -> int:
        """Delete every key under this store's prefix (tests and teardown). Irreversible."""
        client = self._sync_client()
        keys = list(client.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)

    # -- clients and drivers --------------------------------------------------------------------

    def _handler(self, effect: fx.Effect) -> Callable[[Any], Plan[Any]]:
        handler = self._handlers.get(type(effect))
        if handler is None:
            raise TypeError(f"RedisStore cannot perform {type(effect).__name__}")
        return handler

    def _sync_client(self) -> redis.Redis:
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if self._client is None:
                pool = redis.BlockingConnectionPool.from_url(
                    self.url, retry=Retry(NoBackoff(), 0), timeout=self._pool_wait, **self._client_args
                )
                self._client = redis.Redis.from_pool(pool)
            return self._client

    def _async_client(self) -> redis.asyncio.Redis:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        entry = self._aclients.get(id(loop))
        if entry is None or entry[0] is not loop:
            from redis.asyncio.retry import Retry as AsyncRetry

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, retry=AsyncRetry(NoBackoff(), 0), timeout=self._pool_wait, **self._client_args
            )
            client = redis.asyncio.Redis.from_pool(pool)
            self._aclients = {k: v for k, v in self._aclients.items() if not v[0].is_closed()}
            self._aclients[id(loop)] = (loop, client)
            return client
        return entry[1]

    # -- keys and TTLs ---------------------------------------------------------------------------

    def _k(self, *parts: str) -> str:
        """A key of :data:`KEY_KINDS`: the prefix, then its parts joined with ``:``."""
        return self.prefix + ":".join(parts)

    def _ttl(self, lifetime: int) -> int:
        return max(lifetime, 0) + self.ttl_slack + 1

    # -- clients ---------------------------------------------------------------------------------

    def _get_client(self, e: fx.GetClient) -> Plan[Client | None]:
        raw = yield _Command(("GET", self._k("client", e.client_id)))
        return None if raw is None else _record(CLIENTS, raw)

    def _put_client(self, e: fx.PutClient) -> Plan[None]:
        c = e.client
        keys = (self._k("client", c.client_id), self._k("clients"), self._k("seq"))
        _undamaged((yield _Script("put_client", keys, (CLIENTS.dumps(c), c.client_id))))

    def _delete_client(self, e: fx.DeleteClient) -> Plan[bool]:
        keys = (
            self._k("client", e.client_id),
            self._k("clients"),
            self._k("grants", "client", e.client_id),
            self._k("codes", "client", e.client_id),
        )
        args = (e.client_id, e.now, self._k("grant", ""), self._k("code", ""))
        existed = _undamaged((yield _Script("delete_client", keys, args)))
        return bool(existed)

    def _list_clients(self, e: fx.ListClients) -> Plan[tuple[Client, ...]]:
        raw = yield _Script("list_clients", (self._k("clients"),), (self._k("client", ""),))
        return tuple(_record(CLIENTS, v) for v in raw)

    # -- pending authorizations and codes --------------------------------------------------------

    def _put_pending(self, e: fx.PutPending) -> Plan[None]:
        p = e.pending
        ttl = self._ttl(p.expires_at - p.created_at)
        yield _Command(("SET", self._k("pending", p.ticket_hash), PENDING.dumps(p), "EX", ttl))

    def _get_pending(self, e: fx.GetPending) -> Plan[PendingAuthorization | None]:
        raw = yield _Command(("GET", self._k("pending", e.ticket_hash)))
        record = None if raw is None else _record(PENDING, raw)
        return None if record is None or record.expires_at <= e.now else record

    def _take_pending(self, e: fx.TakePending) -> Plan[PendingAuthorization | None]:
        raw = yield _Command(("GETDEL", self._k("pending", e.ticket_hash)))
        record = None if raw is None else _record(PENDING, raw)
        return None if record is None or record.expires_at <= e.now else record

    def _put_code(self, e: fx.PutCode) -> Plan[None]:
        """The code, and its hash in the indexes of its subject's and its client's codes, which
        ``RevokeSubject`` and ``DeleteClient`` read. An index lives at least as long as every code
        it lists; members whose code has expired are harmless, and dropped by a later code's write
        (those long expired) and by ``purge`` (those whose key is gone)."""
        c = e.code
        ttl = self._ttl(c.expires_at - c.issued_at)
        keys = (
            self._k("code", c.code_hash),
            self._k("codes", "subject", c.subject),
            self._k("codes", "client", c.client_id),
        )
        stale = c.issued_at - ttl  # codes that expired this long before this one was issued: keys gone
        args = (
            CODES.dumps(attrs.evolve(c, consumed=False)),
            int(c.consumed),
            c.expires_at,
            ttl,
            c.code_hash,
            c.subject,
            c.client_id,
            stale,
        )
        _undamaged((yield _Script("put_code", keys, args)))

    def _get_code(self, e: fx.GetCode) -> Plan[AuthorizationCode | None]:
        return _code((yield _Command(("HGETALL", self._k("code", e.code_hash)))))

    def _consume_code(self, e: fx.ConsumeCode) -> Plan[bool]:
        g = e.grant
        keys = (
            self._k("code", e.code_hash),
            self._k("grant", g.grant_id),
            self._k("grants"),
            self._k("grants", "subject", g.subject),
            self._k("grants", "client", g.client_id),
            self._k("seq"),
        )
        args = (
            g.grant_id,
            GRANTS.dumps(g),
            g.expires_at,
            g.refresh_generation,
            g.refresh_hash,
            g.refresh_expires_at,
            g.rotated_at,
            "" if g.revoked_at is None else g.revoked_at,
            g.subject,
            g.client_id,
            self._ttl(g.expires_at - g.created_at),
        )
        consumed = _undamaged((yield _Script("consume_code", keys, args)))
        return bool(consumed)

    # -- grants ----------------------------------------------------------------------------------

    def _get_grant(self, e: fx.GetGrant) -> Plan[Grant | None]:
        reply = yield _Command(("HGETALL", self._k("grant", e.grant_id)))
        return _grant(reply)

    def _revoke_grant(self, e: fx.RevokeGrant) -> Plan[bool]:
        revoked = yield _Script("revoke_grant", (self._k("grant", e.grant_id),), (e.now,))
        return bool(revoked)

    def _revoke_subject(self, e: fx.RevokeSubject) -> Plan[int]:
        keys = (self._k("codes", "subject", e.subject), self._k("grants", "subject", e.subject))
        args = (e.subject, e.now, self._k("grant", ""), self._k("code", ""))
        revoked = _undamaged((yield _Script("revoke_subject", keys, args)))
        return int(revoked)

    def _list_grants(self, e: fx.ListGrants) -> Plan[tuple[Grant, ...]]:
        if e.subject is not None:
            index = self._k("grants", "subject", e.subject)
        elif e.client_id is not None:
            index = self._k("grants", "client", e.client_id)
        else:
            index = self._k("grants")
        reply = yield _Script("list_grants", (index,), (self._k("grant", ""),))
        grants = (_grant(h) for h in reply)
        return tuple(
            g
            for g in grants
            if g is not None
            and (e.subject is None or g.subject == e.subject)
            and (e.client_id is None or g.client_id == e.client_id)
        )

    def _rotate(self, e: fx.RotateRefresh) -> Plan[fx.Rotation]:
        """The family's record is read and decoded first, so a record that does not read is
        damage found before anything is written; the script then rotates only while the record
        is still the text that read (a grant's record is written once, by ``ConsumeCode``, so any
        other text there is damage too), checking the numbers beside it as it reads them."""
        key = self._k("grant", e.grant_id)
        fields = _pairs((yield _Command(("HGETALL", key))))
        read = _grant(fields)
        if read is None:  # no grant: nothing to rotate
            return fx.Rotation("unknown", None)
        args = (e.generation, e.presented_hash, e.successor_hash, e.now, e.grace, e.idle_expires_at, fields["record"])
        reply = _undamaged((yield _Script("rotate", (key,), args)))
        after = _pairs(reply[1])  # the record is the one read (the script compared it): decoded once
        return fx.Rotation(_text(reply[0]), _numbered(read, after) if after else None)  # type: ignore[arg-type]

    # -- access tokens ---------------------------------------------------------------------------

    def _revoke_access(self, e: fx.RevokeAccessToken) -> Plan[None]:
        ttl = self._ttl(e.expires_at - int(self._clock()))
        _undamaged((yield _Script("revoke_access", (self._k("revoked", e.jti),), (e.expires_at, ttl))))

    def _is_revoked(self, e: fx.IsTokenRevoked) -> Plan[bool]:
        revoked = yield _Script("is_revoked", (self._k("revoked", e.jti), self._k("grant", e.grant_id)), ())
        return bool(revoked)

    def _end_session(self, e: fx.EndSession) -> Plan[None]:
        yield from self._revoke_access(fx.RevokeAccessToken(e.record_id, e.expires_at))

    def _is_session_ended(self, e: fx.IsSessionEnded) -> Plan[bool]:
        return bool((yield _Command(("EXISTS", self._k("revoked", e.record_id)))))

    # -- signing keys ----------------------------------------------------------------------------

    def _decode_keys(self, raw: Any) -> tuple[SigningKey, ...]:
        keys = _keys(raw)
        return tuple(attrs.evolve(k, private_pem=unseal(self._sealer, k.kid, k.private_pem)) for k in keys)

    def _get_keys(self, e: fx.Effect) -> Plan[tuple[SigningKey, ...]]:
        raw = yield _Command(("GET", self._k("keys")))
        return self._decode_keys(raw)

    def _swap_keys(self, e: fx.SwapSigningKeys) -> Plan[tuple[SigningKey, ...]]:
        sealed = [KEYS.to_dict(attrs.evolve(k, private_pem=seal(self._sealer, k.kid, k.private_pem))) for k in e.keys]
        args = (json.dumps(list(e.expected)), json.dumps(sealed, separators=(",", ":")))
        raw = _undamaged((yield _Script("swap_keys", (self._k("keys"),), args)))
        return self._decode_keys(raw)

    # -- rate limits -----------------------------------------------------------------------------

    def _hit(self, e: fx.Hit) -> Plan[bool]:
        key = self._k("hit", str(e.window_end), e.bucket)
        if e.step == 0:
            count = (yield _Command(("GET", key))) or 0
        else:
            count = _undamaged((yield _Script("hit", (key,), (self._ttl(e.window_end - e.now), e.step))))
        return bool(_whole(count) <= e.limit)

    # -- purge -----------------------------------------------------------------------------------

    def _purge_plan(self, client: redis.Redis, now: int) -> Plan[dict[str, int]]:
        """Each key is purged under :func:`_skipped_if_damaged`: a damaged one is logged and left
        as it is, and the purge goes on."""
        counts = {"pending": 0, "codes": 0, "grants": 0, "revoked_tokens": 0, "rate_limits": 0, "clients": 0}
        esc = _glob_escape(self.prefix)

        def scan(kind: str) -> list[str]:
            return [_text(k) for k in client.scan_iter(match=f"{esc}{kind}:*", count=1000)]

        for key in scan("pending"):
            with _skipped_if_damaged(key):
                raw = yield _Command(("GET", key))
                if raw is not None and _record(PENDING, raw).expires_at <= now:
                    counts["pending"] += int((yield _Script("purge_value", (key,), (raw,))))
        for key in scan("code"):
            with _skipped_if_damaged(key):
                counts["codes"] += int(_undamaged((yield _Script("purge_hash", (key,), ("exp", now)))))
        for key in scan("grant"):
            with _skipped_if_damaged(key):
                counts["grants"] += int(_undamaged((yield _Script("purge_hash", (key,), ("exp", now)))))
        for key in scan("revoked"):
            with _skipped_if_damaged(key):
                raw = yield _Command(("GET", key))
                if raw is not None and _whole(raw) <= now:
                    counts["revoked_tokens"] += int((yield _Script("purge_value", (key,), (raw,))))
        for key in scan("hit"):
            with _skipped_if_damaged(key):
                window_end = _whole(key[len(self.prefix) :].split(":", 2)[1])
                if window_end <= now:
                    counts["rate_limits"] += int((yield _Command(("DEL", key))))
        for key in scan("client"):
            with _skipped_if_damaged(key):
                raw = yield _Command(("GET", key))
                if raw is not None:
                    client_record = _record(CLIENTS, raw)
                    if client_record.expires_at is not None and client_record.expires_at <= now:
                        keys = (key, self._k("clients"))
                        counts["clients"] += int((yield _Script("purge_client", keys, (raw, client_record.client_id))))
        for index in [self._k("grants"), *scan("grants")]:
            with _skipped_if_damaged(index):
                yield _Script("purge_index", (index,), (self._k("grant", ""),))
        for index in scan("codes"):
            with _skipped_if_damaged(index):
                yield _Script("purge_index", (index,), (self._k("code", ""),))
        return counts


# -- helpers ----------------------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _decoder(decode: Callable[P, R]) -> Callable[P, R]:
    """``decode``, a reader of what Redis holds, raising :class:`DamagedValueError` for a value that
    does not read as what it should be (what the record codecs, ``json`` and ``int`` raise). Only
    decoding is so wrapped: an error anywhere else in a handler is a bug, raised as it is."""

    @functools.wraps(decode)
    def decoded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return decode(*args, **kwargs)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise DamagedValueError(f"a value under the store's prefix is damaged: it cannot be read ({exc})") from exc

    return decoded


@_decoder
def _record(codec: RecordCodec[R], raw: Any) -> R:
    return codec.loads(raw)


def _integer(raw: Any) -> int:
    """A whole number stored as decimal text (or a script's integer reply), read as the scripts
    read one (``whole`` of :data:`_WHOLE`): ``ValueError`` for anything else."""
    text = _text(raw)
    if not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


@_decoder
def _whole(raw: Any) -> int:
    """A counter, a timestamp or a window's end, stored as decimal text."""
    return _integer(raw)


@_decoder
def _keys(raw: Any) -> tuple[SigningKey, ...]:
    """The signing keys' JSON array (their private PEMs still sealed); none when the key is missing."""
    return () if raw is None else tuple(KEYS.from_dict(item) for item in json.loads(raw))


@_decoder
def _code(reply: Any) -> AuthorizationCode | None:
    """A code's hash (its record, and whether it was consumed), ``None`` when it is missing. A
    hash without its record is damage: every write of one sets the record with the other fields."""
    fields = _pairs(reply)
    if not fields:
        return None
    return attrs.evolve(CODES.loads(fields["record"]), consumed=_text(fields["consumed"]) == "1")


@_decoder
def _grant(reply: Any) -> Grant | None:
    """A grant's hash: its record, with the fields rotation and revocation change beside it;
    ``None`` when it is missing. A hash without its record is damage, as for a code."""
    fields = _pairs(reply)
    if not fields:
        return None
    return _numbered(GRANTS.loads(fields["record"]), fields)


@_decoder
def _numbered(record: Grant, fields: dict[str, Any]) -> Grant:
    """``record`` with the fields rotation and revocation change, as the hash ``fields`` holds them."""
    rev = _text(fields["rev"])
    return attrs.evolve(
        record,
        refresh_generation=_integer(fields["gen"]),
        refresh_hash=_text(fields["hash"]),
        refresh_expires_at=_integer(fields["rexp"]),
        rotated_at=_integer(fields["rot"]),
        revoked_at=None if rev == "" else _integer(rev),
    )


def _undamaged(reply: Any) -> Any:
    """A script's reply, unless it is the script's report of a damaged key, ``{'damaged', key}``,
    sent before it wrote anything: then :class:`DamagedValueError`."""
    if isinstance(reply, list) and len(reply) == 2 and _text(reply[0]) == "damaged":
        raise DamagedValueError(f"a value under the store's prefix is damaged: {_text(reply[1])} cannot be read")
    return reply


@contextlib.contextmanager
def _skipped_if_damaged(key: str) -> Iterator[None]:
    """Purge's guard around the steps for ``key``: damage found there (a value that does not read,
    a value of another type) is logged and the key left as it is, so that one damaged key does not
    stop the purge of all the others."""
    try:
        yield
    except (DamagedValueError, redis.exceptions.ResponseError) as exc:
        damage = exc if isinstance(exc, DamagedValueError) else outage(exc)
        if not isinstance(damage, DamagedValueError):
            raise
        log.warning("purge skipped %s: %s", key, damage)


def _call(step: _Command | _Script) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """The EVALSHA form of a step and, for a script, the EVAL to fall back on."""
    if isinstance(step, _Command):
        return step.args, None
    tail = (len(step.keys), *step.keys, *step.args)
    return ("EVALSHA", _SHA[step.name], *tail), ("EVAL", _SCRIPTS[step.name], *tail)


def _execute(client: redis.Redis, step: _Command | _Script) -> Any:
    first, fallback = _call(step)
    try:
        return client.execute_command(*first)  # type: ignore[no-untyped-call]
    except redis.exceptions.NoScriptError:
        return client.execute_command(*fallback)  # type: ignore[misc, no-untyped-call]


async def _aexecute(client: redis.asyncio.Redis, step: _Command | _Script) -> Any:
    first, fallback = _call(step)
    try:
        return await client.execute_command(*first)  # type: ignore[no-untyped-call]
    except redis.exceptions.NoScriptError:
        return await client.execute_command(*fallback)  # type: ignore[misc, no-untyped-call]


def _drive(client: redis.Redis, plan: Plan[T]) -> T:
    """Run ``plan``: each step's reply is sent into it and an error reply raised in it, at that
    step (a plan that does not catch it raises it on; purge skips a damaged key)."""
    try:
        step = next(plan)
        while True:
            try:
                reply = _execute(client, step)
            except redis.exceptions.ResponseError as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _adrive(client: redis.asyncio.Redis, plan: Plan[T]) -> T:
    """:func:`_drive` with redis.asyncio."""
    try:
        step = next(plan)
        while True:
            try:
                reply = await _aexecute(client, step)
            except redis.exceptions.ResponseError as exc:
                step = plan.throw(exc)
            else:
                step = plan.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
