"""The SSRF-safe fetcher of client ID metadata documents (CM-02), on httpx.

The authorization server fetches a URL a stranger chose, so every step that could reach
somewhere it should not is closed (draft-ietf-oauth-client-id-metadata-document §6, "Server-Side
Request Forgery"; MCP 2025-11-25 authorization, "Client ID Metadata Documents", security
considerations):

- The URL must be one the core accepts as a ``client_id``
  (:func:`kavach_core.client_documents.url_problem`: ``https``, no user information, an RFC 3986
  host, an explicit port from 1 to 65535, no dot segments even percent-encoded); the host is
  checked against the deny list, then the allow list when one is configured (``example.com``
  matches that host, ``.example.com`` its subdomains).
- The host is resolved here, and **every** address it resolves to must be public. The decision
  is this module's own table of the IANA IPv4 and IPv6 Special-Purpose Address Registries
  (RFC 6890, updated by RFC 8190) and the multicast blocks, so it does not change with the
  Python release (``ipaddress.is_global``/``is_private`` moved with CVE-2024-4032); the
  module's checks still apply to what the table does not list. Refused: loopback, private,
  link-local, shared (100.64/10), multicast, unspecified, reserved, documentation (including
  ``3fff::/20``), benchmarking, discard-only and dummy blocks, the IETF protocol assignment
  blocks ``192.0.0.0/24`` and ``2001::/23`` (only the globally reachable AMT, AS112, ORCHIDv2 and
  DET blocks inside ``2001::/23`` pass; the PCP, TURN and DNS-SD anycast addresses reach a
  nearby service, so they stay refused), the deprecated 6to4 relay anycast block, and IPv6
  forms that embed IPv4 (IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``,
  IPv4-translated ``::ffff:0:0:0/96``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, Teredo,
  and 6to4 around a non-public IPv4). An IP literal in the URL is checked the same way, before
  anything is sent anywhere.
- The connection goes to a vetted address (pinned: no second resolution an attacker could
  answer differently) while TLS SNI, certificate verification and ``Host`` use the host name.
- No proxies from the environment; no redirects (a 3xx is a refusal); ``Accept-Encoding:
  identity`` (no decompression bombs); ``Content-Type`` must be JSON; a size cap enforced while
  streaming; ``Cache-Control`` (``max-age``, ``no-store``, ``no-cache``, minus ``Age``) gives
  ``max_age`` for the core's cache bounds.
- Time: ``deadline`` bounds the whole fetch, in threads as on event loops: waiting for a fetch
  slot, resolution (run in a daemon thread of its own and waited for no longer than the time left),
  the connection, the TLS handshake, the response head (``1xx`` responses included) and the
  body. On the thread path every blocking socket step's timeout is the smaller of its own limit
  (``connect_timeout``, ``read_timeout``) and the time left before the deadline; on an event
  loop the deadline is exact.
- Load: concurrent fetches of one URL share one fetch (threads and event loops alike); at most
  ``max_fetches`` fetches run at once, at most ``max_fetches_per_host`` to one host, and a fetch
  that gets no slot while a tenth of its deadline is still left is refused. A lookup that outlives
  its fetch keeps the fetch's slot until it returns, so lookup threads never outnumber the slots
  and one host's hung lookups hold at most ``max_fetches_per_host`` of them. A refusal of this
  server's own policy (a host that does not resolve, or resolves to an address not fetched) is
  remembered for ``refusal_ttl`` seconds (at most ``refusal_cache_entries`` URLs) so it is not
  looked up again at once, and so is a host that gave no answer (no connection or TLS session,
  out of time); what the document's host answered is never remembered (the draft forbids
  caching error responses), malformed answers included, nor is a refusal that says nothing
  about the URL, only about this server's load: no slot in time, a lookup that did not return
  in time.
  These bounds are per :class:`DocumentFetcher`, so per process.
- ``allow_loopback`` is a development switch for documents served on this machine: off by
  default, and a WARNING in the log whenever a fetcher is built with it on.

Why a fetch was refused is logged (WARNING, logger ``kavach.fetcher``) and returned in
:class:`~kavach_core.effects.FetchRefused`; the core never shows it to the client
(:data:`kavach_core.client_documents.NOT_FETCHED`).

:meth:`DocumentFetcher.fetch` serves threads, :meth:`DocumentFetcher.afetch` event loops; both
return the core's :class:`~kavach_core.effects.Fetched` or :class:`~kavach_core.effects.FetchRefused`
and never raise for anything the remote side does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from kavach_core.client_documents import url_problem
from kavach_core.config import is_loopback_host
from kavach_core.effects import Fetched, FetchRefused

log = logging.getLogger("kavach.fetcher")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; blocking (run in a daemon thread of the fetcher's)."""

_EMBEDDING = (
    (ipaddress.ip_network("64:ff9b::/96"), "a NAT64 address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a NAT64 address"),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "an IPv4-translated IPv6 address"),
)


def _table(*rows: tuple[str, str]) -> tuple[tuple[Any, str], ...]:
    return tuple((ipaddress.ip_network(block), what) for block, what in rows)


_SPECIAL_V4 = _table(
    # IANA IPv4 Special-Purpose Address Registry (RFC 6890 §2.2.2, RFC 8190), the blocks that are
    # not globally reachable, the more specific first; and the multicast block (RFC 5771).
    ("0.0.0.0/8", "an unspecified ('this network') address (RFC 791 §3.2)"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address (RFC 6598)"),
    ("127.0.0.0/8", "a loopback address (RFC 1122 §3.2.1.3)"),
    ("169.254.0.0/16", "a link-local address (RFC 3927)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    # DS-Lite, the dummy address, PCP and TURN anycast, NAT64/DNS64 discovery (RFC 7335, 7600,
    # 7723, 8155, 8880) are all inside; the two anycast addresses reach a nearby service.
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890 §2.1)"),
    ("192.0.2.0/24", "a documentation address (RFC 5737)"),
    ("192.88.99.0/24", "a deprecated 6to4 relay anycast address (RFC 7526)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "a documentation address (RFC 5737)"),
    ("203.0.113.0/24", "a documentation address (RFC 5737)"),
    ("224.0.0.0/4", "a multicast address (RFC 5771)"),
    ("255.255.255.255/32", "the limited broadcast address (RFC 919 §7)"),
    ("240.0.0.0/4", "a reserved address (RFC 1112 §4)"),
)
_SPECIAL_V6 = _table(
    # IANA IPv6 Special-Purpose Address Registry (RFC 6890 §2.2.3, RFC 8190), the blocks that are
    # not globally reachable, the more specific first; site-local (RFC 3879) and multicast
    # (RFC 4291 §2.7). The forms that embed IPv4 are refused before this table is read.
    ("::/128", "an unspecified address (RFC 4291 §2.5.2)"),
    ("::1/128", "a loopback address (RFC 4291 §2.5.3)"),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("100:0:0:1::/64", "a dummy address (RFC 9780)"),
    ("2001:2::/48", "a benchmarking address (RFC 5180)"),
    ("2001:db8::/32", "a documentation address (RFC 3849)"),
    ("2001::/23", "an IETF protocol assignment (RFC 2928)"),
    ("3fff::/20", "a documentation address (RFC 9637)"),
    ("5f00::/16", "a segment routing identifier (RFC 9602)"),
    ("fc00::/7", "a unique-local (private) address (RFC 4193)"),
    ("fe80::/10", "a link-local address (RFC 4291 §2.5.6)"),
    ("fec0::/10", "a site-local address (RFC 3879)"),
    ("ff00::/8", "a multicast address (RFC 4291 §2.7)"),
)
_REACHABLE_V6 = tuple(
    ipaddress.ip_network(block)
    # Globally reachable blocks inside 2001::/23 (same registry): AMT (RFC 7450), AS112-v6
    # (RFC 7535), ORCHIDv2 (RFC 7343), Drone Remote ID entity tags (RFC 9374).
    for block in ("2001:3::/32", "2001:4:112::/48", "2001:20::/28", "2001:30::/28")
)

_JSON = "application/json"
USER_AGENT = "kavachOS-client-metadata-fetcher"


def _lower_hosts(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(h.strip().lower().rstrip(".") for h in value if h.strip())


def _hosts(value: Iterable[str]) -> tuple[str, ...]:
    return _lower_hosts(value) or ()


@attrs.frozen
class FetchPolicy:
    """What the fetcher may fetch, and for how long, how much and how often.

    ``allow_hosts``: when set, only these hosts (``.example.com``: any subdomain).
    ``deny_hosts``: never these hosts (same matching; checked first). An entry that is an address
    or a network (``203.0.113.7``, ``2001:db8::/32``) also refuses every host name resolving to
    an address in it, whichever address the connection would use (:attr:`denied_networks`).
    ``allow_loopback``: development only; permits 127.0.0.0/8 and ``::1`` (nothing else).
    ``ca_bundle``: a PEM file of the certificate authorities to trust instead of the system's.
    ``max_bytes``: the largest body read. ``connect_timeout``: seconds for the connection and the
    TLS handshake; ``read_timeout``: seconds the host may stay silent; ``deadline``: seconds for
    the whole fetch (the two others are cut to what is left of it).
    ``max_fetches`` / ``max_fetches_per_host``: fetches running at once, in all and to one host.
    ``refusal_ttl``: seconds a refused URL is answered from memory (0: never);
    ``refusal_cache_entries``: how many refused URLs are remembered (the oldest go first).
    """

    allow_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_lower_hosts)
    deny_hosts: tuple[str, ...] = attrs.field(default=(), converter=_hosts)
    allow_loopback: bool = False
    ca_bundle: str | None = None
    max_bytes: int = 16 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 3.0
    deadline: float = 5.0
    """Seconds for the whole fetch: a slot, resolution, connection, TLS, headers and body."""
    max_fetches: int = 16
    max_fetches_per_host: int = 4
    refusal_ttl: float = 30.0
    refusal_cache_entries: int = 1024

    @property
    def denied_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The entries of ``deny_hosts`` that are addresses or networks, as networks."""
        out = []
        for entry in self.deny_hosts:
            try:
                out.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                continue
        return tuple(out)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.max_bytes <= _MOST_BYTES:
            raise ValueError(f"max_bytes must be from 1 to {_MOST_BYTES}")
        if not all(0 < limit <= _LONGEST_FETCH for limit in (self.connect_timeout, self.read_timeout, self.deadline)):
            raise ValueError(f"every time limit must be more than 0 and at most {_LONGEST_FETCH} seconds")
        if min(self.max_fetches, self.max_fetches_per_host, self.refusal_cache_entries) < 1:
            raise ValueError("max_fetches, max_fetches_per_host and refusal_cache_entries must be at least 1")
        if not 0 <= self.refusal_ttl <= _LONGEST_REFUSAL:
            raise ValueError(f"refusal_ttl must be from 0 to {_LONGEST_REFUSAL} seconds")
        if self.ca_bundle is not None:
            tls_context(self.ca_bundle)  # a bundle that cannot be used fails here, at start-up


_MOST_BYTES = 1024 * 1024
"""A client's metadata document is a few hundred bytes; a megabyte is far past any."""
_LONGEST_FETCH = 60.0
"""Seconds: someone waits at the authorization page while a document is fetched."""
_LONGEST_REFUSAL = 86400.0


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The TLS context documents are fetched with: the server's certificate checked against
    ``ca_bundle`` (a PEM file of CA certificates) or, without one, certifi's CAs; TLS 1.2 or newer
    (RFC 9325 §3.1.1). ``ValueError`` saying why when the bundle is not a readable file holding at
    least one certificate.
    """
    if ca_bundle is None:
        import certifi

        ca_bundle = certifi.where()
    elif not isinstance(ca_bundle, str) or not ca_bundle:
        raise ValueError("ca_bundle must name a PEM file of CA certificates")
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except ssl.SSLError:
        raise ValueError(f"ca_bundle {ca_bundle!r} holds no readable PEM certificate") from None
    except OSError as exc:  # missing, a directory, not readable
        raise ValueError(f"ca_bundle {ca_bundle!r} cannot be read: {exc.strerror or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def loopback_switch_problem(policy: FetchPolicy, issuer: str) -> str | None:
    """Why ``policy`` may not serve the authorization server ``issuer``, or ``None``: fetching from
    loopback addresses is for an authorization server that itself runs on loopback, never in
    production (draft-ietf-oauth-client-id-metadata-document-02 §8.6)."""
    if policy.allow_loopback and not is_loopback_host(urlsplit(issuer).hostname):
        return (
            "fetching client metadata documents from loopback addresses (allow_loopback) is only for an"
            f" authorization server on loopback, not the issuer {issuer}"
        )
    return None


def _answered(reason: str) -> _Refused:
    """A refusal of what the document's host answered (a status other than 200, a redirect, its
    type, coding or size): never remembered, as the draft forbids caching error responses
    (draft-ietf-oauth-client-id-metadata-document-02 §5.2), so a host answering 503 now is asked
    again next time. A host that gave no answer (no connection, out of time) is remembered
    briefly: asking it again at once would only hold a fetch slot for nothing."""
    return _Refused(reason, remember=False)


class _Refused(Exception):
    """A refusal; ``remember`` is false when it says nothing about the URL (the fetcher was busy)."""

    def __init__(self, reason: str, *, remember: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remember = remember


def address_problem(addr: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why the fetcher must not connect to ``addr``, or ``None`` when it is public (CM-02).

    IPv6 forms that embed IPv4 first, then loopback (the development switch), then the registry
    tables: an address in a listed block is refused, unless it is in one of the globally
    reachable blocks inside ``2001::/23``; only an address the tables do not list is left to the
    ``ipaddress`` module's checks.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "a scoped IPv6 address"
        if addr.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        for network, what in _EMBEDDING:
            if addr in network:
                return what
        if addr.teredo is not None:
            return "a Teredo address"
        if addr.sixtofour is not None:
            inner = address_problem(addr.sixtofour)
            if inner is not None:
                return f"a 6to4 address around {inner}"
        if int(addr) >> 32 == 0 and int(addr) > 1:
            return "an IPv4-compatible IPv6 address"
    if addr.is_loopback:
        return None if allow_loopback else "a loopback address"
    if isinstance(addr, ipaddress.IPv6Address):
        table, reachable = _SPECIAL_V6, _REACHABLE_V6
    else:
        table, reachable = _SPECIAL_V4, ()
    for network, what in table:
        if addr in network:
            return None if any(addr in block for block in reachable) else what
    return _module_problem(addr)


def _module_problem(addr: IPAddress) -> str | None:
    """The ``ipaddress`` module's view, for what the registry table does not list."""
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_private:
        return "a private address"
    if addr.is_reserved:
        return "a reserved address"
    if not addr.is_global:
        return "an address that is not publicly routable"
    return None


def _denied(addr: IPAddress, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """Why ``addr`` may not be fetched from: in a network of the deny list, else ``None``. (An
    IPv4-mapped IPv6 address is refused before this, whatever it maps: :func:`address_problem`.)"""
    return "on this server's deny list" if any(addr in network for network in networks) else None


def _matches(host: str, entries: tuple[str, ...]) -> bool:
    for entry in entries:
        if entry.startswith("*."):
            entry = entry[1:]
        if host == entry or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by the operating system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def max_age(headers: Any) -> int | None:
    """Freshness in seconds from ``Cache-Control`` (RFC 9111 §5.2.2) less ``Age`` (§5.1);
    ``0`` for ``no-store``/``no-cache``; ``None`` when the response says nothing."""
    directives: dict[str, str] = {}
    for value in headers.get_list("cache-control"):
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                directives.setdefault(name.strip().lower(), arg.strip().strip('"'))
    if "no-store" in directives or "no-cache" in directives:
        return 0
    if "max-age" not in directives:
        return None
    try:
        seconds = int(directives["max-age"])
    except ValueError:
        return 0
    try:
        age = int(headers.get("age") or "0")
    except ValueError:
        age = 0
    return max(0, seconds - max(0, age))


@attrs.frozen
class _Target:
    host: str
    """ASCII (IDNA) host name, or the IP literal without brackets."""
    port: int
    path: str
    literal: IPAddress | None

    @property
    def host_header(self) -> str:
        shown = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        return shown if self.port == 443 else f"{shown}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        shown = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
        return f"https://{shown}:{self.port}{self.path}"


# -- waiting, from a thread or on an event loop ----------------------------------------------


class _Waiter:
    """One caller waiting for a fetch slot or for another caller's fetch: in a thread (an event)
    or on an event loop (a future). Woken once, from any thread; its owner decides, under its
    own lock, whether the wait was granted."""

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.key = key
        self.loop = loop
        self.event = threading.Event()
        self.future: asyncio.Future[None] | None = None if loop is None else loop.create_future()

    def wake(self) -> None:
        self.event.set()
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits there any more
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(None)

    def wait(self, deadline: float) -> None:
        self.event.wait(max(0.0, deadline - time.monotonic()))

    async def await_(self, deadline: float) -> None:
        assert self.future is not None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.future
        except TimeoutError:
            pass


class _Slots:
    """At most ``total`` fetches at once and ``per_host`` to one host (thread-safe; callers in
    threads and on event loops share the count). A freed slot goes to the longest-waiting caller
    whose host is below its bound."""

    def __init__(self, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self._lock = threading.Lock()
        self._running = 0
        self._by_host: dict[str, int] = {}
        self._queue: list[_Waiter] = []

    def _free(self, host: str) -> bool:
        return self._running < self.total and self._by_host.get(host, 0) < self.per_host

    def _take(self, host: str) -> None:
        self._running += 1
        self._by_host[host] = self._by_host.get(host, 0) + 1

    def _enter(self, waiter: _Waiter) -> bool:
        with self._lock:
            if self._free(waiter.key):
                self._take(waiter.key)
                return True
            self._queue.append(waiter)
            return False

    def _granted(self, waiter: _Waiter) -> bool:
        with self._lock:
            if waiter in self._queue:
                self._queue.remove(waiter)
                return False
            return True

    def take(self, host: str) -> bool:
        """A slot for ``host`` if one is free now (then :meth:`release` it), without waiting."""
        with self._lock:
            if self._free(host):
                self._take(host)
                return True
            return False

    def acquire(self, host: str, deadline: float) -> bool:
        """A slot for ``host`` (then :meth:`release` it), or ``False`` when none came free in time."""
        waiter = _Waiter(host)
        if self._enter(waiter):
            return True
        waiter.wait(deadline)
        return self._granted(waiter)

    async def aacquire(self, host: str, deadline: float) -> bool:
        """:meth:`acquire` for a coroutine; a cancelled caller leaves no slot taken."""
        waiter = _Waiter(host, asyncio.get_running_loop())
        if self._enter(waiter):
            return True
        try:
            await waiter.await_(deadline)
        except BaseException:
            if self._granted(waiter):
                self.release(host)
            raise
        return self._granted(waiter)

    def release(self, host: str) -> None:
        with self._lock:
            self._running -= 1
            left = self._by_host[host] - 1
            if left:
                self._by_host[host] = left
            else:
                del self._by_host[host]
            for waiter in list(self._queue):
                if self._free(waiter.key):
                    self._queue.remove(waiter)
                    self._take(waiter.key)
                    waiter.wake()


class _Flight:
    __slots__ = ("done", "result", "waiters")

    def __init__(self) -> None:
        self.done = False
        self.result: Fetched | FetchRefused | None = None
        """``None`` once done: the leading caller gave up (cancelled) before it had an answer."""
        self.waiters: list[_Waiter] = []


_STILL_RUNNING = FetchRefused("")
"""What :meth:`_Flights.wait` answers (this object, compared by identity) when the caller's deadline
came before the flight landed."""


@attrs.frozen
class _Lead:
    """A step of :meth:`DocumentFetcher._plan`: fetch ``target`` by ``deadline``, for every caller."""

    target: _Target
    deadline: float


@attrs.frozen
class _Await:
    """A step of :meth:`DocumentFetcher._plan`: wait, until ``deadline``, for the answer of ``flight``."""

    flight: _Flight
    deadline: float


_Plan = Generator["_Lead | _Await", "Fetched | FetchRefused | None", "Fetched | FetchRefused"]


class _Flights:
    """Fetches in progress, by URL: the first caller fetches, the others wait for its answer
    (threads and event loops alike), each no longer than its own deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Flight] = {}

    def join(self, url: str) -> tuple[_Flight, bool]:
        """The flight for ``url`` and whether the caller leads it (and must :meth:`land` it)."""
        with self._lock:
            flight = self._running.get(url)
            if flight is not None:
                return flight, False
            flight = self._running[url] = _Flight()
            return flight, True

    def land(self, url: str, flight: _Flight, result: Fetched | FetchRefused | None) -> None:
        with self._lock:
            if self._running.get(url) is flight:
                del self._running[url]
            flight.done, flight.result = True, result
            waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            waiter.wake()

    def _board(self, flight: _Flight, waiter: _Waiter) -> bool:
        with self._lock:
            if flight.done:
                return False
            flight.waiters.append(waiter)
            return True

    def _outcome(self, flight: _Flight, waiter: _Waiter) -> Fetched | FetchRefused | None:
        with self._lock:
            if flight.done:
                return flight.result
            flight.waiters.remove(waiter)
            return _STILL_RUNNING

    def wait(self, url: str, flight: _Flight, deadline: float) -> Fetched | FetchRefused | None:
        """The flight's answer; ``None`` when its leader gave up; ``_STILL_RUNNING`` after ``deadline``."""
        waiter = _Waiter(url)
        if self._board(flight, waiter):
            waiter.wait(deadline)
        return self._outcome(flight, waiter)

    async def await_(self, url: str, flight: _Flight, deadline: float) -> Fetched | FetchRefused | None:
        """:meth:`wait` for a coroutine."""
        waiter = _Waiter(url, asyncio.get_running_loop())
        if self._board(flight, waiter):
            try:
                await waiter.await_(deadline)
            except BaseException:
                self._outcome(flight, waiter)
                raise
        return self._outcome(flight, waiter)


class _Refusals:
    """Refusals remembered for ``ttl`` seconds, at most ``entries`` of them (oldest dropped first)."""

    def __init__(self, ttl: float, entries: int) -> None:
        self.ttl = ttl
        self.entries = entries
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, FetchRefused]] = {}

    def get(self, url: str) -> FetchRefused | None:
        with self._lock:
            kept = self._kept.get(url)
            if kept is None:
                return None
            if kept[0] <= time.monotonic():
                del self._kept[url]
                return None
            return kept[1]

    def put(self, url: str, refusal: FetchRefused) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._kept.pop(url, None)
            for oldest in list(self._kept):  # insertion order is expiry order
                if len(self._kept) < self.entries and self._kept[oldest][0] > now:
                    break
                del self._kept[oldest]
            self._kept[url] = (now + self.ttl, refusal)


# -- the fetcher -------------------------------------------------------------------------------


def _read_error(future: asyncio.Future[Any]) -> None:
    """Mark an ended lookup's error as read: :meth:`DocumentFetcher._resolved` reads the outcome
    from the lookup itself, and asyncio logs a traceback for a future whose error nobody read."""
    if not future.cancelled():
        future.exception()


class DocumentFetcher:
    """Fetches client ID metadata documents under a :class:`FetchPolicy` (CM-02).

    ``resolver``, ``transport`` and ``async_transport`` are injectable (tests record them to
    prove that a refused address is never connected to); the defaults are the system resolver
    and httpx's own transports with the policy's TLS context and no environment proxies (on the
    thread path, with sockets bound by the deadline). One fetcher serves threads and event loops
    at once: the coalescing, the slots and the remembered refusals are shared by both.
    """

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        transport: Callable[[], Any] | None = None,
        async_transport: Callable[[], Any] | None = None,
    ) -> None:
        self.policy = policy or FetchPolicy()
        self._denied = self.policy.denied_networks
        self.resolver = resolver
        self._transport = transport
        self._async_transport = async_transport
        self._ssl: ssl.SSLContext | None = None
        self._flights = _Flights()
        self._slots = _Slots(self.policy.max_fetches, self.policy.max_fetches_per_host)
        self._refusals = _Refusals(self.policy.refusal_ttl, self.policy.refusal_cache_entries)
        self._closed = False
        if self.policy.allow_loopback:
            log.warning(
                "DEVELOPMENT SWITCH ON: client metadata documents may be fetched from loopback addresses "
                "(127.0.0.0/8, ::1). Never enable this on a server others can reach."
            )

    # -- shared steps ----------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            try:
                self._ssl = tls_context(self.policy.ca_bundle)
            except ValueError as exc:  # the bundle was usable when the policy was made, and is no longer
                log.error("client metadata documents cannot be fetched: %s", exc)
                raise _Refused("the server cannot check TLS certificates") from None
        return self._ssl

    def close(self) -> None:
        """Fetch nothing more: later fetches are refused (not remembered). Nothing is waited for; a
        lookup still running runs in a daemon thread, which does not hold the process at exit."""
        self._closed = True

    async def aclose(self) -> None:
        """:meth:`close`, for an event loop's shutdown."""
        self.close()

    def _lookup(self, target: _Target) -> concurrent.futures.Future[Sequence[str]] | None:
        """Start resolving ``target``'s host in a daemon thread of its own (``None`` for an IP
        literal). The caller holds a slot and hands it to :meth:`_free`, so lookup threads never
        outnumber the slots, hung ones included, and none waits in a queue behind a hung one."""
        if self._closed:
            raise _Refused("the fetcher is closed", remember=False)
        if target.literal is not None:
            return None
        future: concurrent.futures.Future[Sequence[str]] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()

        def resolve() -> None:
            try:
                found = self.resolver(target.host, target.port)
            except BaseException as exc:  # the future must end, or the slot is never freed
                future.set_exception(exc)
            else:
                future.set_result(found)

        try:
            threading.Thread(target=resolve, name="kavach-resolve", daemon=True).start()
        except RuntimeError:  # no thread to be had
            raise _Refused("no thread was free to resolve the host in", remember=False) from None
        return future

    def _free(self, host: str, lookup: concurrent.futures.Future[Sequence[str]] | None) -> None:
        """Release a fetch's slot, or, while its lookup still runs, once the lookup returns."""
        if lookup is None:
            self._slots.release(host)
        else:
            lookup.add_done_callback(lambda _: self._slots.release(host))

    def _resolved(self, target: _Target, lookup: concurrent.futures.Future[Sequence[str]]) -> list[IPAddress]:
        try:
            found = lookup.result()
        except (OSError, ValueError):  # getaddrinfo's errors; UnicodeError for a name IDNA cannot encode
            raise _Refused(f"{target.host} does not resolve") from None
        return self._vet(target, found)

    def _lookup_too_long(self, target: _Target) -> _Refused:
        """A lookup that did not return in time: not remembered, since the wait may have been this
        server's (the system resolver's queue), not the host's."""
        return _Refused(
            f"resolving {target.host} took longer than the fetch's limit ({self.policy.deadline:g} s)", remember=False
        )

    def _target(self, url: str) -> _Target:
        problem = url_problem(url)
        if problem is not None:
            raise _Refused(problem)
        parts = urlsplit(url)
        raw = (parts.hostname or "").rstrip(".")
        literal: IPAddress | None
        try:
            literal = ipaddress.ip_address(raw)
            host = str(literal)
        except ValueError:
            literal = None
            try:
                host = raw.encode("idna").decode("ascii").lower()
            except UnicodeError:
                raise _Refused("the host name is not valid") from None
        policy = self.policy
        if _matches(host, policy.deny_hosts):
            raise _Refused(f"the host {host} is on this server's deny list")
        if policy.allow_hosts is not None and not _matches(host, policy.allow_hosts):
            raise _Refused(f"the host {host} is not on this server's allow list")
        path = parts.path
        if parts.query:
            path += "?" + parts.query
        return _Target(host, 443 if parts.port is None else parts.port, path, literal)

    def _vet(self, target: _Target, found: Sequence[str]) -> list[IPAddress]:
        """Every address must be acceptable; the vetted ones in resolver order."""
        vetted: list[IPAddress] = []
        for text in found:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                raise _Refused(f"{target.host} resolved to something that is not an address") from None
            problem = address_problem(addr, allow_loopback=self.policy.allow_loopback) or _denied(addr, self._denied)
            if problem is not None:
                if target.literal is not None:
                    raise _Refused(f"the address {addr} is {problem}")
                raise _Refused(f"{target.host} resolves to {addr}, {problem}")
            if addr not in vetted:
                vetted.append(addr)
        if not vetted:
            raise _Refused(f"{target.host} does not resolve to any address")
        return vetted

    def _request(self, target: _Target, address: IPAddress) -> Any:
        import httpx

        policy = self.policy
        extensions: dict[str, Any] = {
            "timeout": {
                "connect": policy.connect_timeout,
                "read": policy.read_timeout,
                "write": policy.connect_timeout,
                "pool": policy.connect_timeout,
            }
        }
        if target.literal is None:
            extensions["sni_hostname"] = target.host
        headers = {
            "Host": target.host_header,
            "Accept": _JSON,
            "Accept-Encoding": "identity",
            "User-Agent": USER_AGENT,
        }
        return httpx.Request("GET", target.url_for(address), headers=headers, extensions=extensions)

    def _check_head(self, response: Any) -> None:
        status = response.status_code
        if 300 <= status < 400:
            raise _answered(f"it answered with a redirect ({status}); redirects are not followed")
        if status != 200:
            raise _answered(f"it answered with HTTP status {status}")
        media = (response.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
            raise _answered(f"its Content-Type is {media or 'missing'}, not application/json")
        encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise _answered("it is content-encoded; only identity is accepted")
        length = response.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.policy.max_bytes:
            raise _answered(f"it is larger than {self.policy.max_bytes} bytes")

    def _take(self, body: bytearray, chunk: bytes, deadline: float) -> None:
        body.extend(chunk)
        if len(body) > self.policy.max_bytes:
            raise _answered(f"it is larger than {self.policy.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise _Refused(self._too_long())

    def _fetched(self, response: Any, body: bytearray) -> Fetched:
        return Fetched(bytes(body), response.headers.get("content-type", ""), max_age(response.headers))

    def _too_long(self) -> str:
        return f"the fetch took longer than its {self.policy.deadline:g}-second limit"

    def _failure(self, exc: BaseException, deadline: float) -> str:
        import httpx

        policy = self.policy
        if isinstance(exc, httpx.TimeoutException):
            if time.monotonic() >= deadline:
                return self._too_long()
            if isinstance(exc, httpx.ConnectTimeout):
                return f"the connection and TLS handshake took longer than {policy.connect_timeout:g} seconds"
            if isinstance(exc, httpx.WriteTimeout):
                return f"sending the request took longer than {policy.connect_timeout:g} seconds"
            return f"it sent nothing for {policy.read_timeout:g} seconds"
        if isinstance(exc, httpx.ConnectError):
            detail = str(exc).upper()
            if "CERTIFICATE" in detail:  # untrusted, expired, for another name
                return "its TLS certificate could not be verified"
            if "SSL" in detail or "TLS" in detail:  # no TLS spoken there (plain HTTP), no common version
                return "the TLS handshake failed"
            return "the connection failed"
        return f"the fetch failed ({type(exc).__name__})"

    def _broken(self, exc: BaseException, deadline: float) -> _Refused:
        """A fetch that failed once connected: remembered when the host gave no answer (none in
        time, the connection reset, or closed before any response), never when it answered
        something HTTP cannot read (a bad status line or header, a body cut short), which is an
        answer like any other (:func:`_answered`)."""
        import httpx

        reason = self._failure(exc, deadline)
        silent = isinstance(exc, httpx.TimeoutException | httpx.NetworkError) or (
            isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc)
        )
        return _Refused(reason) if silent else _answered(reason)

    def _refusal(self, url: str, refused: _Refused, *, remember: bool = True) -> FetchRefused:
        """Log why, and remember it unless it says nothing about the URL (or the URL was refused
        before anything was looked up: that costs nothing to decide again)."""
        log.warning("client metadata document %r refused: %s", url, refused.reason)
        answer = FetchRefused(refused.reason)
        if remember and refused.remember:
            self._refusals.put(url, answer)
        return answer

    def _slot_deadline(self, deadline: float) -> float:
        """When a caller stops waiting for a slot: a slot that leaves less than a tenth of the
        deadline to fetch in is not worth taking (when a wave of fetches times out, the callers
        queued behind it would otherwise each open a connection they have no time to use)."""
        return deadline - self.policy.deadline / 10

    def _busy(self) -> _Refused:
        return _Refused(
            f"no fetch slot came free in time ({self.policy.max_fetches} at once, "
            f"{self.policy.max_fetches_per_host} per host)",
            remember=False,
        )

    def _remembered(self, url: str) -> FetchRefused | None:
        refusal = self._refusals.get(url)
        if refusal is not None:
            log.debug("client metadata document %r refused again without a fetch: %s", url, refusal.reason)
        return refusal

    # -- one fetch, threads and event loops alike ------------------------------------------

    def _plan(self, url: str) -> _Plan:
        """One fetch of ``url`` as the steps :meth:`fetch` and :meth:`afetch` perform, each in its
        own way: lead the fetch (:class:`_Lead`), or wait for the one another caller leads
        (:class:`_Await`), then answer. A leader lands its flight whatever happens, its caller's
        cancellation included (closing the plan runs the ``finally``)."""
        deadline = time.monotonic() + self.policy.deadline
        try:
            target = self._target(url)
        except _Refused as refused:
            return self._refusal(url, refused, remember=False)
        while True:
            remembered = self._remembered(url)
            if remembered is not None:
                return remembered
            flight, leader = self._flights.join(url)
            if leader:
                result: Fetched | FetchRefused | None = None
                try:
                    result = yield _Lead(target, deadline)
                finally:
                    self._flights.land(url, flight, result)
                assert result is not None  # a lead answers
                return result
            answer = self._followed(url, (yield _Await(flight, deadline)))
            if answer is not None:
                return answer

    # -- threads ---------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched | FetchRefused:
        """Fetch ``url`` in this thread, within the policy's deadline; a caller that finds the same
        URL being fetched (by a thread or a coroutine) waits for that fetch's answer instead."""
        plan = self._plan(url)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Lead):
                    step = plan.send(self._lead(url, step.target, step.deadline))
                else:
                    step = plan.send(self._flights.wait(url, step.flight, step.deadline))
        except StopIteration as done:
            answer: Fetched | FetchRefused = done.value
            return answer
        finally:
            plan.close()

    def _followed(self, url: str, result: Fetched | FetchRefused | None) -> Fetched | FetchRefused | None:
        """A waiter's answer from the fetch it waited for: that fetch's own, a refusal when it was
        still running at the waiter's deadline, ``None`` when it ended without one (its caller
        gave up): then the waiter tries again."""
        if result is _STILL_RUNNING:
            return self._refusal(url, _Refused(self._too_long(), remember=False))
        return result

    def _late(self, waited: bool, deadline: float) -> bool:
        """Whether a refusal says nothing about the URL: the fetch ran out of time after waiting
        for its slot (the host had less than the whole deadline)."""
        return waited and time.monotonic() >= deadline

    def _lead(self, url: str, target: _Target, deadline: float) -> Fetched | FetchRefused:
        waited = False
        try:
            if not self._slots.take(target.host):
                waited = True
                if not self._slots.acquire(target.host, self._slot_deadline(deadline)):
                    raise self._busy()
            lookup = None
            try:
                lookup = self._lookup(target)
                return self._fetch_pinned(target, self._addresses(target, lookup, deadline), deadline)
            finally:
                self._free(target.host, lookup)
        except _Refused as refused:
            return self._refusal(url, refused, remember=not self._late(waited, deadline))

    def _addresses(
        self, target: _Target, lookup: concurrent.futures.Future[Sequence[str]] | None, deadline: float
    ) -> list[IPAddress]:
        if lookup is None:
            return self._vet(target, [target.host])
        done, _ = concurrent.futures.wait([lookup], timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            raise self._lookup_too_long(target)
        return self._resolved(target, lookup)

    def _fetch_pinned(self, target: _Target, addresses: list[IPAddress], deadline: float) -> Fetched:
        import httpx

        from .deadline import Deadline  # every blocking step ends by the deadline
        from .deadline import transport as deadline_transport

        if self._transport:
            transport = self._transport()
        else:
            transport = deadline_transport(Deadline(deadline), verify=self._tls(), max_connections=1)
        last = "the connection failed"
        with httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client:
            for address in addresses:
                if time.monotonic() >= deadline:
                    raise _Refused(self._too_long())
                try:
                    response = client.send(self._request(target, address), stream=True)
                    try:
                        self._check_head(response)
                        body = bytearray()
                        for chunk in response.iter_raw():
                            self._take(body, chunk, deadline)
                        return self._fetched(response, body)
                    finally:
                        response.close()
                except httpx.ConnectError as exc:
                    last = self._failure(exc, deadline)
                    continue
                except httpx.HTTPError as exc:
                    raise self._broken(exc, deadline) from None
        raise _Refused(last)

    # -- event loops ---------------------------------------------------------------------------

    async def afetch(self, url: str) -> Fetched | FetchRefused:
        """Fetch ``url`` on an event loop (resolution in a thread of its own); the deadline is exact.
        Concurrent callers of one URL, coroutines or threads, share one fetch."""
        plan = self._plan(url)
        try:
            step = next(plan)
            while True:
                if isinstance(step, _Lead):
                    step = plan.send(await self._alead(url, step.target, step.deadline))
                else:
                    step = plan.send(await self._flights.await_(url, step.flight, step.deadline))
        except StopIteration as done:
            answer: Fetched | FetchRefused = done.value
            return answer
        finally:
            plan.close()

    async def _alead(self, url: str, target: _Target, deadline: float) -> Fetched | FetchRefused:
        waited = False
        try:
            if not self._slots.take(target.host):
                waited = True
                if not await self._slots.aacquire(target.host, self._slot_deadline(deadline)):
                    raise self._busy()
            lookup = None
            try:
                lookup = self._lookup(target)
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    addresses = await self._aaddresses(target, lookup)
                    return await self._afetch_pinned(target, addresses, deadline)
            except TimeoutError:
                if lookup is not None and not lookup.done():
                    raise self._lookup_too_long(target) from None
                raise _Refused(self._too_long()) from None
            finally:
                self._free(target.host, lookup)
        except _Refused as refused:
            return self._refusal(url, refused, remember=not self._late(waited, deadline))

    async def _aaddresses(
        self, target: _Target, lookup: concurrent.futures.Future[Sequence[str]] | None
    ) -> list[IPAddress]:
        if lookup is None:
            return self._vet(target, [target.host])
        waited = asyncio.wrap_future(lookup)
        waited.add_done_callback(_read_error)  # also when it ends after this fetch gave up waiting
        await asyncio.wait([waited])  # its outcome, error or not, is _resolved's to read
        return self._resolved(target, lookup)

    async def _afetch_pinned(self, target: _Target, addresses: list[IPAddress], deadline: float) -> Fetched:
        import httpx

        if self._async_transport is not None:
            transport = self._async_transport()
        else:
            transport = httpx.AsyncHTTPTransport(verify=self._tls(), retries=0)
        last = "the connection failed"
        async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False) as client:
            for address in addresses:
                try:
                    response = await client.send(self._request(target, address), stream=True)
                    try:
                        self._check_head(response)
                        body = bytearray()
                        async for chunk in response.aiter_raw():
                            self._take(body, chunk, deadline)
                        return self._fetched(response, body)
                    finally:
                        await response.aclose()
                except httpx.ConnectError as exc:
                    last = self._failure(exc, deadline)
                    continue
                except httpx.HTTPError as exc:
                    raise self._broken(exc, deadline) from None
        raise _Refused(last)
