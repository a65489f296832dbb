"""The SSRF-safe fetcher of client ID metadata documents (CM-02), on httpx.

The authorization server fetches a URL a stranger chose, so every step that could reach
somewhere it should not is closed (draft-ietf-oauth-client-id-metadata-document §6, "Server-Side
Request Forgery"; MCP 2025-11-25 authorization, "Client ID Metadata Documents", security
considerations):

- ``https`` only; no user information; the host checked against the deny list, then the allow
  list when one is configured (``example.com`` matches that host, ``.example.com`` its
  subdomains).
- The host is resolved here, and **every** address it resolves to must be public: loopback,
  private, link-local, shared (100.64/10), multicast, unspecified, reserved and documentation
  ranges are refused, as are IPv6 forms that embed IPv4 (IPv4-mapped ``::ffff:0:0/96``,
  IPv4-compatible ``::/96``, IPv4-translated ``::ffff:0:0:0/96``, NAT64 ``64:ff9b::/96`` and
  ``64:ff9b:1::/48``, Teredo, and 6to4 around a non-public IPv4). An IP literal in the URL is
  checked the same way, before anything is sent anywhere.
- The connection goes to a vetted address (pinned: no second resolution an attacker could
  answer differently) while TLS SNI, certificate verification and ``Host`` use the host name.
- No proxies from the environment; no redirects (a 3xx is a refusal); connect and read time
  limits and a total deadline, so a body that trickles in is refused; a size cap enforced while
  streaming; ``Accept-Encoding: identity`` (no decompression bombs); ``Content-Type`` must be
  JSON; ``Cache-Control`` (``max-age``, ``no-store``, ``no-cache``, minus ``Age``) gives
  ``max_age`` for the core's cache bounds.
- ``allow_loopback`` is a development switch for documents served on this machine: off by
  default, and a WARNING in the log whenever a fetcher is built with it on.

:meth:`DocumentFetcher.fetch` serves threads, :meth:`DocumentFetcher.afetch` event loops; both
return the core's :class:`~kavach_core.effects.Fetched` or :class:`~kavach_core.effects.FetchRefused`
and never raise for anything the remote side does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from kavach_core.effects import Fetched, FetchRefused

log = logging.getLogger("kavach.fetcher")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; blocking (the async path runs it in a worker thread)."""

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_EMBEDDING = (
    (ipaddress.ip_network("64:ff9b::/96"), "a NAT64 address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a NAT64 address"),
    (ipaddress.ip_network("::ffff:0:0:0/96"), "an IPv4-translated IPv6 address"),
)
_JSON = "application/json"
USER_AGENT = "kavachOS-client-metadata-fetcher"


def _lower_hosts(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(h.strip().lower().rstrip(".") for h in value if h.strip())


def _hosts(value: Iterable[str]) -> tuple[str, ...]:
    return _lower_hosts(value) or ()


@attrs.frozen
class FetchPolicy:
    """What the fetcher may fetch, and for how long and how much.

    ``allow_hosts``: when set, only these hosts (``.example.com``: any subdomain).
    ``deny_hosts``: never these hosts (same matching; checked first).
    ``allow_loopback``: development only; permits 127.0.0.0/8 and ``::1`` (nothing else).
    ``ca_bundle``: a PEM file of the certificate authorities to trust instead of the system's.
    """

    allow_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_lower_hosts)
    deny_hosts: tuple[str, ...] = attrs.field(default=(), converter=_hosts)
    allow_loopback: bool = False
    ca_bundle: str | None = None
    max_bytes: int = 16 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 3.0
    deadline: float = 5.0
    """Seconds for the whole fetch: resolution, connection, headers and body."""

    def __attrs_post_init__(self) -> None:
        if self.max_bytes < 1 or min(self.connect_timeout, self.read_timeout, self.deadline) <= 0:
            raise ValueError("max_bytes and every time limit must be positive")
        if self.ca_bundle is not None:
            tls_context(self.ca_bundle)  # a bundle that cannot be used fails here, at start-up


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


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def address_problem(addr: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why the fetcher must not connect to ``addr``, or ``None`` when it is public (CM-02)."""
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
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_multicast:
        return "a multicast address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return "a site-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_reserved:
        return "a reserved address"
    if not addr.is_global:
        return "an address that is not publicly routable"
    return None


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


class DocumentFetcher:
    """Fetches client ID metadata documents under a :class:`FetchPolicy` (CM-02).

    ``resolver``, ``transport`` and ``async_transport`` are injectable (tests record them to
    prove that a refused address is never connected to); the defaults are the system resolver
    and httpx's own transports with the policy's TLS context and no environment proxies.
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
        self.resolver = resolver
        self._transport = transport
        self._async_transport = async_transport
        self._ssl: ssl.SSLContext | None = None
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

    def _target(self, url: str) -> _Target:
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError:
            raise _Refused("the URL is not valid") from None
        if parts.scheme.lower() != "https":
            raise _Refused("only https URLs are fetched")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise _Refused("the URL carries user information")
        raw = (parts.hostname or "").rstrip(".")
        if not raw:
            raise _Refused("the URL has no host")
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
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return _Target(host, port, path, literal)

    def _vet(self, target: _Target, found: Sequence[str]) -> list[IPAddress]:
        """Every address must be acceptable; the vetted ones in resolver order."""
        vetted: list[IPAddress] = []
        for text in found:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                raise _Refused(f"{target.host} resolved to something that is not an address") from None
            problem = address_problem(addr, allow_loopback=self.policy.allow_loopback)
            if problem is not None:
                if target.literal is not None:
                    raise _Refused(f"the address {addr} is {problem}")
                raise _Refused(f"{target.host} resolves to {addr}, {problem}")
            if addr not in vetted:
                vetted.append(addr)
        if not vetted:
            raise _Refused(f"{target.host} does not resolve to any address")
        return vetted

    def _request(self, target: _Target, address: IPAddress, remaining: float) -> Any:
        import httpx

        policy = self.policy
        extensions: dict[str, Any] = {
            "timeout": {
                "connect": min(policy.connect_timeout, remaining),
                "read": min(policy.read_timeout, remaining),
                "write": min(policy.connect_timeout, remaining),
                "pool": min(policy.connect_timeout, remaining),
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
            raise _Refused(f"it answered with a redirect ({status}); redirects are not followed")
        if status != 200:
            raise _Refused(f"it answered with HTTP status {status}")
        media = (response.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media != _JSON and not (media.startswith("application/") and media.endswith("+json")):
            raise _Refused(f"its Content-Type is {media or 'missing'}, not application/json")
        encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise _Refused("it is content-encoded; only identity is accepted")
        length = response.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.policy.max_bytes:
            raise _Refused(f"it is larger than {self.policy.max_bytes} bytes")

    def _take(self, body: bytearray, chunk: bytes, started: float) -> None:
        body.extend(chunk)
        if len(body) > self.policy.max_bytes:
            raise _Refused(f"it is larger than {self.policy.max_bytes} bytes")
        if time.monotonic() - started > self.policy.deadline:
            raise _Refused(f"it took longer than {self.policy.deadline:g} seconds")

    def _fetched(self, response: Any, body: bytearray) -> Fetched:
        return Fetched(bytes(body), response.headers.get("content-type", ""), max_age(response.headers))

    @staticmethod
    def _failure(exc: BaseException, deadline: float) -> str:
        import httpx

        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return f"it did not answer within the time limit ({deadline:g} seconds)"
        if isinstance(exc, httpx.ConnectError):
            detail = str(exc)
            if "CERTIFICATE" in detail.upper() or "SSL" in detail.upper() or "TLS" in detail.upper():
                return "its TLS certificate could not be verified"
            return "the connection failed"
        return f"the fetch failed ({type(exc).__name__})"

    # -- threads ---------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched | FetchRefused:
        """Fetch ``url`` in this thread."""
        started = time.monotonic()
        try:
            target = self._target(url)
            if target.literal is not None:
                addresses = self._vet(target, [target.host])
            else:
                try:
                    found = self.resolver(target.host, target.port)
                except OSError:
                    raise _Refused(f"{target.host} does not resolve") from None
                addresses = self._vet(target, found)
            return self._fetch_pinned(target, addresses, started)
        except _Refused as refused:
            log.info("client metadata document %s refused: %s", url, refused.reason)
            return FetchRefused(refused.reason)

    def _fetch_pinned(self, target: _Target, addresses: list[IPAddress], started: float) -> Fetched:
        import httpx

        transport = self._transport() if self._transport else httpx.HTTPTransport(verify=self._tls(), retries=0)
        last = "the connection failed"
        with httpx.Client(transport=transport, trust_env=False, follow_redirects=False) as client:
            for address in addresses:
                remaining = self.policy.deadline - (time.monotonic() - started)
                if remaining <= 0:
                    raise _Refused(f"it took longer than {self.policy.deadline:g} seconds")
                try:
                    response = client.send(self._request(target, address, remaining), stream=True)
                    try:
                        self._check_head(response)
                        body = bytearray()
                        for chunk in response.iter_raw():
                            self._take(body, chunk, started)
                        return self._fetched(response, body)
                    finally:
                        response.close()
                except httpx.ConnectError as exc:
                    last = self._failure(exc, self.policy.deadline)
                    continue
                except httpx.HTTPError as exc:
                    raise _Refused(self._failure(exc, self.policy.deadline)) from None
        raise _Refused(last)

    # -- event loops ---------------------------------------------------------------------------

    async def afetch(self, url: str) -> Fetched | FetchRefused:
        """Fetch ``url`` on an event loop (resolution in a worker thread); the deadline is exact."""
        started = time.monotonic()
        try:
            target = self._target(url)
            async with asyncio.timeout(self.policy.deadline):
                if target.literal is not None:
                    addresses = self._vet(target, [target.host])
                else:
                    try:
                        found = await asyncio.to_thread(self.resolver, target.host, target.port)
                    except OSError:
                        raise _Refused(f"{target.host} does not resolve") from None
                    addresses = self._vet(target, found)
                return await self._afetch_pinned(target, addresses, started)
        except TimeoutError:
            reason = f"it took longer than {self.policy.deadline:g} seconds"
            log.info("client metadata document %s refused: %s", url, reason)
            return FetchRefused(reason)
        except _Refused as refused:
            log.info("client metadata document %s refused: %s", url, refused.reason)
            return FetchRefused(refused.reason)

    async def _afetch_pinned(self, target: _Target, addresses: list[IPAddress], started: float) -> Fetched:
        import httpx

        if self._async_transport is not None:
            transport = self._async_transport()
        else:
            transport = httpx.AsyncHTTPTransport(verify=self._tls(), retries=0)
        last = "the connection failed"
        async with httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False) as client:
            for address in addresses:
                remaining = self.policy.deadline - (time.monotonic() - started)
                request = self._request(target, address, max(remaining, 0.001))
                try:
                    response = await client.send(request, stream=True)
                    try:
                        self._check_head(response)
                        body = bytearray()
                        async for chunk in response.aiter_raw():
                            self._take(body, chunk, started)
                        return self._fetched(response, body)
                    finally:
                        await response.aclose()
                except httpx.ConnectError as exc:
                    last = self._failure(exc, self.policy.deadline)
                    continue
                except httpx.HTTPError as exc:
                    raise _Refused(self._failure(exc, self.policy.deadline)) from None
        raise _Refused(last)
