"""The SSRF-safe client metadata document fetcher (CM-02), sync and async.

Network rule: nothing here sends a packet to a non-loopback address. Refusals of private and
metadata-service addresses are proven to happen before any connection: the resolver and the
transport factory are injected and record every call. Documents that are fetched come from
:mod:`document_host` on 127.0.0.1, with the loopback development switch on and the test CA
trusted; host names are pinned to 127.0.0.1 by the injected resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import certifi
import httpx
import pytest
from document_host import Answer, DocumentHost, document_host, silent_host
from kavach.fetcher import DocumentFetcher, FetchPolicy, address_problem, max_age, tls_context
from kavach.server import AuthorizationServer

from kavach_core.client_documents import NOT_FETCHED
from kavach_core.effects import Fetched, FetchRefused
from kavach_core.http import HttpRequest
from kavach_core.memory_store import MemoryStore


class Recorder:
    """An injected resolver (answers from ``table``, default 127.0.0.1) and transport factories."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.resolved: list[str] = []
        self.connections = 0

    def resolve(self, host: str, port: int) -> Sequence[str]:
        self.resolved.append(host)
        return self.table.get(host, ["127.0.0.1"])

    def transport(self) -> httpx.BaseTransport:
        self.connections += 1
        raise AssertionError("a connection was about to be made")

    def async_transport(self) -> httpx.AsyncBaseTransport:
        self.connections += 1
        raise AssertionError("a connection was about to be made")


def both(fetcher: DocumentFetcher, url: str) -> list[Fetched | FetchRefused]:
    """The sync and the async answer for ``url``."""
    return [fetcher.fetch(url), asyncio.run(fetcher.afetch(url))]


def recording(
    policy: FetchPolicy | None = None, table: dict[str, list[str]] | None = None
) -> tuple[DocumentFetcher, Recorder]:
    """A fetcher with the recorder injected; refusals are not remembered unless ``policy`` says so."""
    rec = Recorder(table)
    policy = policy or FetchPolicy(refusal_ttl=0)
    fetcher = DocumentFetcher(
        policy, resolver=rec.resolve, transport=rec.transport, async_transport=rec.async_transport
    )
    return fetcher, rec


def public(name: str, port: int) -> list[str]:
    """A resolver answering one public address for every name (mock transports only: no packet goes there)."""
    return ["93.184.216.34"]


def json_document(request: httpx.Request | None = None) -> httpx.Response:
    """``{}`` as ``application/json``, a body the sync and the async transport can both read."""
    return httpx.Response(200, headers={"Content-Type": "application/json"}, stream=httpx.ByteStream(b"{}"))


def mocked(
    policy: FetchPolicy,
    handler: Any = json_document,
    ahandler: Any = None,
    resolver: Any = public,
) -> DocumentFetcher:
    """A fetcher whose names resolve through ``resolver`` and whose requests ``handler`` answers
    (``ahandler`` on an event loop, if given): mock transports, no connection is ever made."""
    return DocumentFetcher(
        policy,
        resolver=resolver,
        transport=lambda: httpx.MockTransport(handler),
        async_transport=lambda: httpx.MockTransport(ahandler or handler),
    )


# -- addresses -------------------------------------------------------------------------------

REFUSED_ADDRESSES = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.0.0.1": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "100.64.0.1": "shared",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "240.0.0.1": "",
    "255.255.255.255": "",
    "192.0.2.1": "",
    "fc00::1": "private",
    "fec0::1": "site-local",
    "::ffff:127.0.0.1": "IPv4-mapped",
    "::ffff:8.8.8.8": "IPv4-mapped",
    "::127.0.0.1": "IPv4-compatible",
    "::10.0.0.1": "IPv4-compatible",
    "::200.1.2.3": "IPv4-compatible",  # the IPv4 address's top bit set: all 32 low bits are its
    "64:ff9b::a00:1": "NAT64",
    "64:ff9b:1::a00:1": "NAT64",
    "::ffff:0:a00:1": "IPv4-translated",
    "2002:a00:1::1": "6to4",
    "2002:7f00:1::1": "6to4",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "2001:db8::1": "",
    # IANA special-purpose registries (RFC 6890): refused whatever the Python release's ipaddress says.
    "192.0.0.1": "IETF protocol assignment",
    "192.0.0.8": "IETF protocol assignment",
    "192.0.0.9": "IETF protocol assignment",
    "192.0.0.170": "IETF protocol assignment",
    "192.88.99.1": "6to4 relay anycast",
    "198.18.0.1": "benchmarking",
    "198.19.255.254": "benchmarking",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "3fff::1": "documentation",
    "3fff:fff:ffff::1": "documentation",
    "100::1": "discard-only",
    "100:0:0:1::1": "dummy",
    "2001:1::1": "IETF protocol assignment",
    "2001:2::1": "benchmarking",
    "2001:10::1": "IETF protocol assignment",
    "2001:1ff::1": "IETF protocol assignment",
    "5f00::1": "segment routing",
    "fd00:ec2::254": "private",
    # A zone index (RFC 4007 §11) picks an interface: refused even on an otherwise public address.
    "2606:4700:4700::1111%1": "scoped IPv6",
}


@pytest.mark.parametrize("text", sorted(REFUSED_ADDRESSES))
def test_cm_02_non_public_addresses_are_refused(text: str) -> None:
    problem = address_problem(ipaddress.ip_address(text))
    assert problem is not None
    assert REFUSED_ADDRESSES[text] in problem


PUBLIC_ADDRESSES = [
    "93.184.216.34",
    "8.8.8.8",
    "2606:4700:4700::1111",
    "2002:5db8:d822::1",
    # Globally reachable per the registries, though Python before 3.11.10 / 3.12.4 says private.
    "192.31.196.1",
    "192.52.193.1",
    "192.175.48.1",
    "2001:3::1",
    "2001:4:112::1",
    "2001:20::1",
    "2001:30::1",
    "2620:4f:8000::1",
]


@pytest.mark.parametrize("text", PUBLIC_ADDRESSES)
def test_cm_02_public_addresses_pass(text: str) -> None:
    assert address_problem(ipaddress.ip_address(text)) is None


def test_cm_02_the_decision_does_not_depend_on_what_ipaddress_thinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry table decides: with the module claiming every address is global and none
    private or reserved (as an older or newer release might for some blocks), nothing changes."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        monkeypatch.setattr(cls, "is_global", property(lambda self: True))
        monkeypatch.setattr(cls, "is_private", property(lambda self: False))
        monkeypatch.setattr(cls, "is_reserved", property(lambda self: False))
    for text, what in REFUSED_ADDRESSES.items():
        problem = address_problem(ipaddress.ip_address(text))
        assert problem is not None and what in problem, (text, problem)
    for text in PUBLIC_ADDRESSES:
        assert address_problem(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize("text", ["4000::1", "8000::1", "e000::1", "fe00::1"])
def test_cm_02_an_address_outside_the_registry_tables_is_left_to_the_modules_checks(text: str) -> None:
    """The tables list the special-purpose blocks only; an address in none of them that the
    ``ipaddress`` module holds reserved (IPv6 space not allocated for unicast) is refused too,
    for being reserved, whether the switch for loopback is on or off."""
    for allow_loopback in (False, True):
        problem = address_problem(ipaddress.ip_address(text), allow_loopback=allow_loopback)
        assert problem is not None and "reserved" in problem, (text, problem)


@pytest.mark.parametrize(
    ("check", "verdict", "reason"),
    [
        ("is_unspecified", True, "unspecified"),
        ("is_link_local", True, "link-local"),
        ("is_multicast", True, "multicast"),
        ("is_private", True, "private"),
        ("is_global", False, "not publicly routable"),
    ],
)
def test_cm_02_every_check_of_the_module_applies_to_what_the_tables_do_not_list(
    monkeypatch: pytest.MonkeyPatch, check: str, verdict: bool, reason: str
) -> None:
    """All of the ``ipaddress`` module's checks, not only ``is_reserved``, still apply to an
    address the registry tables do not list: a block a later release holds unspecified,
    link-local, multicast, private or not global is refused for that, IPv4 and IPv6 alike (here
    the module is made to say so of every address, the public ones included)."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        monkeypatch.setattr(cls, check, property(lambda self: verdict))
    for text in ("93.184.216.34", "2606:4700:4700::1111"):
        problem = address_problem(ipaddress.ip_address(text))
        assert problem is not None and reason in problem, (text, problem)


def test_cm_02_the_loopback_switch_permits_only_loopback() -> None:
    assert address_problem(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert address_problem(ipaddress.ip_address("::1"), allow_loopback=True) is None
    for text in ("10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "0.0.0.0"):
        assert address_problem(ipaddress.ip_address(text), allow_loopback=True) is not None


# -- refused before any connection -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/client.json", "loopback"),
        ("https://10.0.0.1/client.json", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://[::1]/client.json", "loopback"),
        ("https://[::ffff:127.0.0.1]/client.json", "IPv4-mapped"),
        ("https://[::ffff:a9fe:a9fe]/client.json", "IPv4-mapped"),
        ("https://[64:ff9b::a9fe:a9fe]/client.json", "NAT64"),
        ("http://client.example.com/client.json", "must use https"),
        ("https://user:pw@client.example.com/client.json", "user information"),
        ("https://client.example.com:99999/client.json", "not a valid URL"),
        ("https://client.example.com:0/client.json", "port must be a number from 1 to 65535"),
        ("https://client.example.com:/client.json", "port must be a number from 1 to 65535"),
        ("https://[v1.x]/client.json", "not an IPv6 address"),
        ("https://[v1.x]:8443/client.json", "not an IPv6 address"),
        ("https://client.ex%61mple.com/client.json", "percent-encoded"),
        ("https://client.example.com/a/%2e%2e/client.json", ". or .. path segments"),
        ("https://client.example.com/a/.%2E/client.json", ". or .. path segments"),
        ("https://client.example.com/%2E/client.json", ". or .. path segments"),
        ("https://" + "a" * 64 + ".example.com/client.json", "the host name is not valid"),  # IDNA: labels <= 63
    ],
)
def test_cm_02_refused_without_resolving_or_connecting(url: str, reason: str) -> None:
    fetcher, rec = recording()
    for answer in both(fetcher, url):
        assert isinstance(answer, FetchRefused), answer
        assert reason in answer.reason
    assert rec.resolved == [] and rec.connections == 0


@pytest.mark.parametrize(
    "addresses",
    [["10.1.2.3"], ["169.254.169.254"], ["93.184.216.34", "10.0.0.1"], ["::ffff:10.0.0.1"], ["fd00::1"], []],
    ids=["private", "metadata", "one-of-several", "mapped", "ula", "none"],
)
def test_cm_02_a_name_resolving_to_a_private_address_is_refused_before_connecting(addresses: list[str]) -> None:
    fetcher, rec = recording(table={"client.example.com": addresses})
    for answer in both(fetcher, "https://client.example.com/client.json"):
        assert isinstance(answer, FetchRefused), answer
        assert "client.example.com" in answer.reason
    assert rec.resolved == ["client.example.com", "client.example.com"]
    assert rec.connections == 0


@pytest.mark.parametrize("error", [OSError("no such host"), UnicodeError("label too long"), ValueError("odd")])
def test_cm_02_resolution_failure_is_a_refusal(error: Exception) -> None:
    """What the resolver raises for a name it cannot look up (getaddrinfo's OSError, or the
    UnicodeError of a name IDNA cannot encode) is a refusal, never an error out of the fetch."""

    def broken(host: str, port: int) -> Sequence[str]:
        raise error

    fetcher = DocumentFetcher(FetchPolicy(refusal_ttl=0), resolver=broken)
    for answer in both(fetcher, "https://nowhere.example.com/client.json"):
        assert isinstance(answer, FetchRefused) and "does not resolve" in answer.reason


def test_cm_02_a_resolver_answer_that_is_not_an_address_is_a_refusal() -> None:
    fetcher, rec = recording(table={"odd.example.com": ["not-an-address"]})
    answer = FetchRefused("odd.example.com resolved to something that is not an address")
    assert both(fetcher, "https://odd.example.com/client.json") == [answer, answer]
    assert rec.connections == 0


@pytest.mark.parametrize(
    ("policy", "host", "reason"),
    [
        (FetchPolicy(deny_hosts=["client.example.com"]), "client.example.com", "deny list"),
        (FetchPolicy(deny_hosts=[".example.com"]), "a.b.example.com", "deny list"),
        (FetchPolicy(deny_hosts=["*.example.com"]), "a.example.com", "deny list"),
        (FetchPolicy(allow_hosts=["trusted.example.org"]), "client.example.com", "allow list"),
        (FetchPolicy(allow_hosts=[".example.org"], deny_hosts=["bad.example.org"]), "bad.example.org", "deny list"),
    ],
)
def test_cm_02_host_lists(policy: FetchPolicy, host: str, reason: str) -> None:
    fetcher, rec = recording(policy)
    for answer in both(fetcher, f"https://{host}/client.json"):
        assert isinstance(answer, FetchRefused) and reason in answer.reason
    assert rec.resolved == [] and rec.connections == 0


@pytest.mark.parametrize(
    ("entries", "host", "listed"),
    [
        (["example.com"], "example.com", True),
        (["example.com"], "a.example.com", False),  # a bare name is that name only
        (["example.com"], "badexample.com", False),
        ([".example.com"], "a.example.com", True),
        ([".example.com"], "badexample.com", False),  # a suffix matches at a label boundary only
        (["*.example.com"], "a.b.example.com", True),
        (["*.example.com"], "example.com", False),  # the wildcard needs a label before the suffix
        (["other.test", "*.example.com"], "a.example.com", True),  # any entry of the list
        (["client.example.com"], "Client.Example.COM.", True),  # case and a final dot do not evade a list
    ],
)
def test_cm_02_host_list_entries_match_names_exactly_or_at_a_label_boundary(
    entries: list[str], host: str, listed: bool
) -> None:
    """A deny-list entry refuses exactly the names it covers, and the same entry in the allow list
    lets exactly those through; every name here resolves to 10.0.0.1, so a name the lists let
    through is looked up and then refused for its address, never connected to."""
    table = {host.lower().rstrip("."): ["10.0.0.1"]}
    for kind in ("deny", "allow"):
        policy = FetchPolicy(refusal_ttl=0, **{f"{kind}_hosts": entries})  # type: ignore[arg-type]
        fetcher, rec = recording(policy, table)
        for answer in both(fetcher, f"https://{host}/client.json"):
            assert isinstance(answer, FetchRefused), answer
            stopped_by_list = f"{kind} list" in answer.reason
            assert stopped_by_list == (listed if kind == "deny" else not listed), (kind, answer.reason)
            assert stopped_by_list or "resolves to 10.0.0.1" in answer.reason
        assert rec.connections == 0


def test_cm_02_a_url_refused_before_any_lookup_does_not_push_remembered_refusals_out() -> None:
    """Refusals of the URL itself (its form, the host lists) are decided again at no cost and are
    not remembered: a stream of such URLs cannot evict the refusals that spare a lookup."""
    dns = CountingDNS()
    fetcher = DocumentFetcher(
        FetchPolicy(deny_hosts=["denied.example.test"], refusal_ttl=60, refusal_cache_entries=1), resolver=dns
    )
    private = "https://private.example.test/c.json"
    first = fetcher.fetch(private)
    assert isinstance(first, FetchRefused) and "10.0.0.1" in first.reason
    for url in ("http://private.example.test/c.json", "https://denied.example.test/c.json"):
        for answer in both(fetcher, url):
            assert isinstance(answer, FetchRefused) and "10.0.0.1" not in answer.reason
    assert both(fetcher, private) == [first, first]
    assert dns.lookups == ["private.example.test"]


@pytest.mark.parametrize(
    "entry", ["93.184.216.34", "93.184.216.0/24", "93.184.216.7/24", "2606:2800:220:1::/64", "[2606:2800:220:1::7]"]
)
def test_cm_02_an_address_on_the_deny_list_refuses_every_name_resolving_to_it(entry: str) -> None:
    """An address or a network on the deny list is not reached through a host name either: a
    name resolving to it (among other, public addresses) is refused after resolution, before
    any connection. Before, the list matched the URL's host text only, so only a URL naming the
    address itself was refused."""
    table = {"docs.example.com": ["1.1.1.1", "93.184.216.34"], "v6.example.com": ["2606:2800:220:1::7"]}
    fetcher, rec = recording(FetchPolicy(deny_hosts=[entry], refusal_ttl=0), table)
    host = "v6.example.com" if ":" in entry else "docs.example.com"
    for answer in both(fetcher, f"https://{host}/client.json"):
        assert isinstance(answer, FetchRefused) and "deny list" in answer.reason, answer
    assert rec.resolved == [host, host] and rec.connections == 0
    allowed, rec = recording(FetchPolicy(deny_hosts=[entry], refusal_ttl=0), {"other.example.com": ["8.8.8.8"]})
    with pytest.raises(AssertionError, match="a connection was about to be made"):  # the rest is fetched as before
        allowed.fetch("https://other.example.com/client.json")


def test_cm_02_a_url_longer_than_a_client_id_is_refused_not_raised() -> None:
    """``fetch`` and ``afetch`` called with a URL longer than any client ID looked up answer
    FetchRefused before resolving anything; before, one over 64 KiB raised httpx's InvalidURL."""
    fetcher, rec = recording()
    for length in (2049, 70_000):
        for answer in both(fetcher, "https://docs.example.com/" + "a" * length):
            assert isinstance(answer, FetchRefused) and "longer than 2048" in answer.reason, answer
    assert rec.resolved == [] and rec.connections == 0


# -- against a real HTTPS server on loopback -----------------------------------------------------

DOC = {"client_id": "x", "redirect_uris": ["http://127.0.0.1/cb"]}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DocumentHost]:
    with document_host(tmp_path, names=("docs.example.test", "localhost", "127.0.0.1")) as running:
        yield running


LOOPBACK_ISSUER = "http://127.0.0.1:8000"
"""An issuer on loopback: the loopback switch is refused for any other (draft §8.6)."""


def _as(store: Any, fetcher: Any) -> AuthorizationServer:
    """An authorization server on ``LOOPBACK_ISSUER`` with ``fetcher``, everyone signed in as alice."""
    from conftest import make_config

    config = make_config(issuer=LOOPBACK_ISSUER)
    return AuthorizationServer(config, store, identify=lambda req: "alice", fetcher=fetcher)


def dev(host: DocumentHost, **kwargs: Any) -> DocumentFetcher:
    """The development switch on, the test CA trusted, every name pinned to 127.0.0.1; refusals
    are not remembered unless ``refusal_ttl`` is given."""
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(host.ca_file), **{"refusal_ttl": 0, **kwargs})
    return DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.1"])


def test_cm_02_fetches_over_tls_pinned_to_the_vetted_address_with_the_host_name_kept(host: DocumentHost) -> None:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "max-age=120")]
    url = host.publish("/c.json", DOC, headers=headers)
    for answer in both(dev(host), url):
        assert answer == Fetched(json.dumps(DOC).encode(), "application/json", 120)
    assert [h["host"] for _, h in host.requests] == [f"docs.example.test:{host.port}"] * 2
    assert all(h["accept-encoding"] == "identity" for _, h in host.requests)


def test_cm_02_the_certificate_is_checked_against_the_host_name(host: DocumentHost) -> None:
    host.publish("/c.json", DOC)
    for answer in both(dev(host), host.url("/c.json", "other.example.test")):
        assert isinstance(answer, FetchRefused) and "certificate" in answer.reason
    untrusted = DocumentFetcher(
        FetchPolicy(allow_loopback=True, refusal_ttl=0), resolver=lambda name, port: ["127.0.0.1"]
    )
    for answer in both(untrusted, host.url("/c.json")):
        assert isinstance(answer, FetchRefused) and "certificate" in answer.reason
    assert host.requests == []


def test_cm_02_loopback_is_refused_without_the_switch(host: DocumentHost) -> None:
    host.publish("/c.json", DOC)
    fetcher = DocumentFetcher(FetchPolicy(ca_bundle=str(host.ca_file), refusal_ttl=0))
    for url in (host.url("/c.json", "127.0.0.1"), host.url("/c.json", "localhost")):
        for answer in both(fetcher, url):
            assert isinstance(answer, FetchRefused) and "loopback" in answer.reason
    assert host.requests == []


@pytest.mark.parametrize(
    ("write", "expect"),
    [
        (None, "cannot be read: No such file"),
        ("dir", "cannot be read: Is a directory"),
        (b"root:x:0:0:root:/root:/bin/bash\n", "holds no readable PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "holds no readable PEM certificate"),
        ("", "must name a PEM file"),
    ],
)
def test_a_ca_bundle_that_cannot_be_used_is_refused_when_the_policy_is_made(
    tmp_path: Path, write: bytes | str | None, expect: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if write == "dir":
        bundle.mkdir()
    elif isinstance(write, bytes):
        bundle.write_bytes(write)
    path = "" if write == "" else str(bundle)
    with pytest.raises(ValueError, match=expect):
        FetchPolicy(ca_bundle=path)


def test_without_a_ca_bundle_the_certifi_authorities_are_trusted_not_the_systems() -> None:
    def subjects(context: Any) -> list[Any]:
        return sorted(str(cert["subject"]) for cert in context.get_ca_certs())

    assert subjects(tls_context()) == subjects(tls_context(certifi.where()))


def test_a_ca_bundle_gone_after_start_up_refuses_every_fetch(
    host: DocumentHost, caplog: pytest.LogCaptureFixture
) -> None:
    url = host.publish("/c.json", DOC)
    bundle = host.ca_file.parent / "moved-ca.pem"
    bundle.write_bytes(host.ca_file.read_bytes())
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(bundle), refusal_ttl=0)
    fetcher = DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.1"])
    bundle.unlink()
    with caplog.at_level(logging.ERROR, logger="kavach.fetcher"):
        answers = both(fetcher, url)
    assert answers == [FetchRefused("the server cannot check TLS certificates")] * 2
    assert host.requests == []
    assert "moved-ca.pem" in caplog.text and "cannot be read" in caplog.text


def test_the_tls_context_is_made_once_per_fetcher(host: DocumentHost) -> None:
    """The CA bundle is read into a TLS context by a fetcher's first fetch and kept, not read
    again for every fetch: with the bundle gone after that first fetch, later fetches (in
    threads and on event loops) still check certificates against it and succeed."""
    url = host.publish("/c.json", DOC)
    bundle = host.ca_file.parent / "read-once-ca.pem"
    bundle.write_bytes(host.ca_file.read_bytes())
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(bundle), refusal_ttl=0)
    fetcher = DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.1"])
    assert isinstance(fetcher.fetch(url), Fetched)
    bundle.unlink()
    for answer in both(fetcher, url):
        assert isinstance(answer, Fetched) and json.loads(answer.body) == DOC, answer


def test_cm_02_the_switch_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kavach.fetcher"):
        DocumentFetcher(FetchPolicy())
        assert not caplog.records
        DocumentFetcher(FetchPolicy(allow_loopback=True))
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "DEVELOPMENT SWITCH ON" in caplog.records[0].getMessage()


def test_cm_02_a_redirect_toward_a_private_address_is_not_followed(host: DocumentHost) -> None:
    host.answers["/moved"] = Answer(302, b"", [("Location", "https://10.0.0.1/client.json")])
    host.answers["/moved-local"] = Answer(307, b"", [("Location", host.url("/c.json"))])
    host.publish("/c.json", DOC)
    for path in ("/moved", "/moved-local"):
        for answer in both(dev(host), host.url(path)):
            assert isinstance(answer, FetchRefused) and "redirects are not followed" in answer.reason
    assert [p for p, _ in host.requests] == ["/moved", "/moved", "/moved-local", "/moved-local"]


def test_cm_02_a_body_over_the_cap_is_refused(host: DocumentHost) -> None:
    host.publish("/big.json", {"client_id": "x", "pad": "a" * 5000})
    for answer in both(dev(host, max_bytes=4096), host.url("/big.json")):
        assert isinstance(answer, FetchRefused) and "larger than 4096 bytes" in answer.reason


def test_cm_02_a_body_over_the_cap_without_a_declared_length_is_cut_off() -> None:
    chunks = [b"{" + b" " * 1000] * 10

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=iter(chunks))

    fetcher = mocked(FetchPolicy(max_bytes=4096), handler)
    answer = fetcher.fetch("https://client.example.com/client.json")
    assert isinstance(answer, FetchRefused) and "larger than 4096 bytes" in answer.reason


def test_cm_02_a_body_that_trickles_past_the_deadline_is_refused(host: DocumentHost) -> None:
    host.answers["/slow.json"] = Answer(body=b'{"client_id": "x", "padding": "........"}', trickle=0.1)
    fetcher = dev(host, deadline=1.0, read_timeout=0.5)
    for answer in both(fetcher, host.url("/slow.json")):
        assert answer == FetchRefused("the fetch took longer than its 1-second limit")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(body=b"<html></html>", headers=[("Content-Type", "text/html")]), "not application/json"),
        (Answer(body=b"{}", headers=[]), "missing"),
        (Answer(404, b"{}"), "status 404"),
        (Answer(body=b"{}", headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]), "encoded"),
        (Answer(300, b"{}"), "redirects are not followed"),  # the 3xx range, both ends
        (Answer(308, b"{}"), "redirects are not followed"),
        (Answer(400, b"{}"), "status 400"),
        (Answer(204, b""), "status 204"),  # only 200 carries a document
    ],
    ids=["html", "no-type", "404", "gzip", "300", "308", "400", "204"],
)
def test_cm_02_unusable_answers(host: DocumentHost, answer: Answer, reason: str) -> None:
    host.answers["/x.json"] = answer
    for got in both(dev(host), host.url("/x.json")):
        assert isinstance(got, FetchRefused) and reason in got.reason


def test_cm_02_json_variants_are_accepted(host: DocumentHost) -> None:
    host.answers["/x.json"] = Answer(body=b"{}", headers=[("Content-Type", "application/json; charset=utf-8")])
    host.answers["/y.json"] = Answer(body=b"{}", headers=[("Content-Type", "application/vnd.example+json")])
    for path in ("/x.json", "/y.json"):
        for got in both(dev(host), host.url(path)):
            assert isinstance(got, Fetched) and got.body == b"{}"


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("Application/JSON", True),
        ("application/jwk-set+json", True),
        ("text/x+json", False),  # +json names a JSON type only under application/
        ("application/jsonp", False),
        ("application/json-seq", False),
    ],
)
def test_cm_02_the_media_type_is_matched_whole_and_without_regard_to_case(
    host: DocumentHost, content_type: str, accepted: bool
) -> None:
    host.answers["/x.json"] = Answer(body=b"{}", headers=[("Content-Type", content_type)])
    for got in both(dev(host), host.url("/x.json")):
        assert isinstance(got, Fetched) == accepted, got


def test_cm_02_a_body_of_exactly_max_bytes_is_accepted(host: DocumentHost) -> None:
    """The cap is inclusive: ``max_bytes`` bytes are a document, one more is refused."""
    at_cap = b'{"p": "' + b"a" * (4096 - 9) + b'"}'
    assert len(at_cap) == 4096
    host.answers["/cap.json"] = Answer(body=at_cap)
    host.answers["/over.json"] = Answer(body=at_cap + b" ")
    fetcher = dev(host, max_bytes=4096)
    for got in both(fetcher, host.url("/cap.json")):
        assert isinstance(got, Fetched) and got.body == at_cap
    for got in both(fetcher, host.url("/over.json")):
        assert isinstance(got, FetchRefused) and "larger than 4096 bytes" in got.reason


def test_cm_02_a_declared_length_over_the_cap_is_refused_before_the_body_is_read() -> None:
    """A ``Content-Length`` over ``max_bytes`` is refused on the head alone: a host that declares a
    huge body and sends a small one is refused all the same, not read."""
    read: list[bytes] = []
    headers = {"Content-Type": "application/json", "Content-Length": "5000"}

    def body() -> Iterator[bytes]:
        read.append(b"{}")
        yield b"{}"

    async def abody() -> AsyncIterator[bytes]:
        read.append(b"{}")
        yield b"{}"

    fetcher = mocked(
        FetchPolicy(max_bytes=4096, refusal_ttl=0),
        lambda _: httpx.Response(200, headers=headers, content=body()),
        lambda _: httpx.Response(200, headers=headers, content=abody()),
    )
    for answer in both(fetcher, "https://client.example.com/client.json"):
        assert answer == FetchRefused("it is larger than 4096 bytes")
    assert read == []


def test_cm_02_the_query_of_a_client_id_url_is_sent(host: DocumentHost) -> None:
    host.answers["/c.json?v=2"] = Answer(body=b'{"v": 2}')
    for got in both(dev(host), host.url("/c.json?v=2")):
        assert isinstance(got, Fetched) and got.body == b'{"v": 2}'
    assert [p for p, _ in host.requests] == ["/c.json?v=2"] * 2


@pytest.mark.parametrize(
    ("url", "address", "port", "host_header", "sni"),
    [
        ("https://docs.example.com/c.json", "93.184.216.34", 443, "docs.example.com", "docs.example.com"),
        ("https://docs.example.com:8443/c.json", "93.184.216.34", 8443, "docs.example.com:8443", "docs.example.com"),
        ("https://93.184.216.34/c.json", "93.184.216.34", 443, "93.184.216.34", None),
        ("https://[2606:4700:4700::1111]/c.json", "2606:4700:4700::1111", 443, "[2606:4700:4700::1111]", None),
        (
            "https://[2606:4700:4700::1111]:8443/c.json",
            "2606:4700:4700::1111",
            8443,
            "[2606:4700:4700::1111]:8443",
            None,
        ),
    ],
)
def test_cm_02_the_request_goes_to_the_vetted_address_on_the_urls_port_naming_the_urls_host(
    url: str, address: str, port: int, host_header: str, sni: str | None
) -> None:
    """The request is sent to the vetted address on the URL's port (443 when it names none),
    while ``Host`` names the URL's host as HTTP writes it (no port for 443, an IPv6 address in
    brackets) and TLS is told the host name (an address has no name to give)."""
    seen: list[tuple[str, int, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent = (request.url.host, request.url.port or 443, request.headers["host"])
        seen.append((*sent, request.extensions.get("sni_hostname")))
        return json_document()

    fetcher = mocked(FetchPolicy(refusal_ttl=0), handler)
    assert both(fetcher, url) == [DOC_FETCHED, DOC_FETCHED]
    assert seen == [(address, port, host_header, sni)] * 2


def test_cm_02_an_address_that_refuses_the_connection_is_followed_by_the_next_vetted_one(host: DocumentHost) -> None:
    """A name's addresses are tried in resolver order, each vetted, until one connects: here
    127.0.0.2 (nothing listens there) and then 127.0.0.1, the document's host."""
    host.publish("/c.json", DOC)
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(host.ca_file), refusal_ttl=0)
    fetcher = DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.2", "127.0.0.1"])
    for got in both(fetcher, host.url("/c.json")):
        assert isinstance(got, Fetched) and json.loads(got.body) == DOC
    assert host.hits("/c.json") == 2


def test_cm_02_no_further_address_is_tried_once_the_deadline_has_passed() -> None:
    """A name's addresses are tried in turn only while the fetch has time left: when the
    connection to the first fails after the deadline, the second is not contacted and the fetch
    is refused as too long."""
    tried: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if len(tried) == 1:
            time.sleep(0.3)
            raise httpx.ConnectError("connection refused", request=request)
        return json_document(request)

    fetcher = mocked(
        FetchPolicy(deadline=0.2, refusal_ttl=0), handler, resolver=lambda name, port: ["93.184.216.34", "1.1.1.1"]
    )
    assert fetcher.fetch("https://docs.example.com/c.json") == FetchRefused(
        "the fetch took longer than its 0.2-second limit"
    )
    assert tried == ["93.184.216.34"]


def test_cm_02_an_address_the_resolver_repeats_is_tried_once() -> None:
    import socket

    sent: list[str] = []
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        fetcher = DocumentFetcher(
            FetchPolicy(allow_loopback=True, refusal_ttl=0),
            resolver=lambda name, port: ["127.0.0.1", "127.0.0.1", "127.0.0.1"],
            transport=lambda: CountingTransport(sent),
            async_transport=lambda: CountingAsyncTransport(sent),
        )
        assert both(fetcher, f"https://docs.example.test:{port}/c.json") == [FetchRefused("the connection failed")] * 2
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"cache-control": "max-age=300"}, 300),
        ({"cache-control": "public, max-age=300", "age": "100"}, 200),
        ({"cache-control": "max-age=30", "age": "100"}, 0),
        ({"cache-control": "no-store"}, 0),
        ({"cache-control": "no-cache, max-age=300"}, 0),
        ({"cache-control": 'max-age="60"'}, 60),
        ({"cache-control": "max-age=soon"}, 0),
        ({"cache-control": "private"}, None),
        ({"cache-control": "max-age=300", "age": "-100"}, 300),  # a negative Age adds no freshness
        ({"cache-control": "max-age=300", "age": "soon"}, 300),  # an unreadable Age is no age
        ({"cache-control": "max-age=60, max-age=3600"}, 60),  # the first of a repeated directive counts
        ({"cache-control": "Max-Age=60"}, 60),  # directive names are case-insensitive
        ({"cache-control": "max-age=-5"}, 0),
        ([("cache-control", "max-age=300"), ("cache-control", "no-store")], 0),  # every Cache-Control field
    ],
)
def test_cm_01_cache_control(headers: dict[str, str] | list[tuple[str, str]], expected: int | None) -> None:
    assert max_age(httpx.Headers(headers)) == expected


# -- the deadline bounds the whole fetch, on both paths ------------------------------------

HANG_GUARD = 15.0
"""Seconds after which a fetch under a 1-second deadline counts as hung: a guard against a fetch
that nothing stops, fifteen times the deadline so that no slow machine reaches it, not a measure
of speed. What these tests check is the answer: refused, and refused for running out of time."""


def both_timed(fetcher: DocumentFetcher, url: str) -> list[tuple[Fetched | FetchRefused, float]]:
    """:func:`both`, each answer with the seconds it took (for the hang guard)."""
    out = []
    for call in (lambda: fetcher.fetch(url), lambda: asyncio.run(fetcher.afetch(url))):
        started = time.monotonic()
        answer = call()
        out.append((answer, time.monotonic() - started))
    return out


TOO_LONG = FetchRefused("the fetch took longer than its 1-second limit")


@pytest.mark.parametrize(
    "answer",
    [Answer(body=json.dumps(DOC).encode(), trickle_head=0.2), Answer(early_hints=0.2)],
    ids=["headers-byte-by-byte", "endless-103-early-hints"],
)
def test_cm_02_the_deadline_bounds_a_response_head_that_never_ends(host: DocumentHost, answer: Answer) -> None:
    """Each byte (or each ``103``) comes well within ``read_timeout``; only the deadline ends it."""
    host.answers["/slow.json"] = answer
    for got, took in both_timed(dev(host, deadline=1.0, read_timeout=0.8), host.url("/slow.json")):
        assert got == TOO_LONG
        assert took < HANG_GUARD, "hung: the deadline did not end the fetch"


def test_cm_02_the_deadline_bounds_a_tls_handshake_that_never_ends() -> None:
    with silent_host() as port:
        policy = FetchPolicy(allow_loopback=True, connect_timeout=30, deadline=1.0, refusal_ttl=0)
        fetcher = DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.1"])
        for got, took in both_timed(fetcher, f"https://docs.example.test:{port}/c.json"):
            assert got == TOO_LONG  # not the 30-second connect_timeout's refusal
            assert took < HANG_GUARD, "hung: the deadline did not end the handshake"


def test_cm_02_the_deadline_bounds_a_resolver_that_hangs() -> None:
    release = threading.Event()

    def stuck(host: str, port: int) -> Sequence[str]:
        release.wait(30)
        return ["93.184.216.34"]

    rec = Recorder()
    fetcher = DocumentFetcher(
        FetchPolicy(deadline=1.0, refusal_ttl=0),
        resolver=stuck,
        transport=rec.transport,
        async_transport=rec.async_transport,
    )
    try:
        for got, took in both_timed(fetcher, "https://slow-dns.example.com/c.json"):
            assert got == FetchRefused("resolving slow-dns.example.com took longer than the fetch's limit (1 s)")
            assert took < HANG_GUARD, "hung: the deadline did not end the wait for the lookup"
    finally:
        release.set()
    assert rec.connections == 0


def test_cm_02_a_refusal_says_which_limit_was_reached(host: DocumentHost) -> None:
    host.answers["/late.json"] = Answer(body=b"{}", delay=2.0)
    for got in both(dev(host, read_timeout=0.5), host.url("/late.json")):
        assert got == FetchRefused("it sent nothing for 0.5 seconds")
    with silent_host() as port:
        fetcher = dev(host, connect_timeout=0.5)
        for got in both(fetcher, f"https://docs.example.test:{port}/c.json"):
            assert got == FetchRefused("the connection and TLS handshake took longer than 0.5 seconds")


def test_cm_02_a_request_not_sent_in_time_is_refused_as_such() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.WriteTimeout("timed out", request=request)

    fetcher = mocked(FetchPolicy(connect_timeout=0.5, refusal_ttl=0), handler)
    answers = both(fetcher, "https://client.example.com/client.json")
    assert answers == [FetchRefused("sending the request took longer than 0.5 seconds")] * 2


# -- load: one fetch per URL at a time, bounded fetches, remembered refusals ------------------


def test_fetch_policy_load_defaults_and_their_checks() -> None:
    policy = FetchPolicy()
    assert (policy.max_fetches, policy.max_fetches_per_host) == (16, 4)
    assert (policy.refusal_ttl, policy.refusal_cache_entries) == (30.0, 1024)
    assert (policy.connect_timeout, policy.read_timeout, policy.deadline) == (3.0, 3.0, 5.0)
    for bad in ({"max_fetches": 0}, {"max_fetches_per_host": 0}, {"refusal_cache_entries": 0}, {"refusal_ttl": -1}):
        with pytest.raises(ValueError, match="must"):
            FetchPolicy(**bad)


@pytest.mark.parametrize(
    ("setting", "lowest", "below", "highest", "above"),
    [
        ("max_bytes", 1, 0, 1024 * 1024, 1024 * 1024 + 1),
        ("connect_timeout", 0.001, 0.0, 60.0, 60.001),
        ("read_timeout", 0.001, 0.0, 60.0, 60.001),
        ("deadline", 0.001, 0.0, 60.0, 60.001),
        ("refusal_ttl", 0.0, -0.001, 86400.0, 86400.001),
        ("max_fetches", 1, 0, None, None),
        ("max_fetches_per_host", 1, 0, None, None),
        ("refusal_cache_entries", 1, 0, None, None),
    ],
)
def test_cm_02_each_policy_bound_admits_its_own_end_and_nothing_past_it(
    setting: str, lowest: float, below: float, highest: float | None, above: float | None
) -> None:
    """The documented ranges (a body of 1 byte to 1 MiB, time limits above 0 up to 60 seconds,
    refusals remembered from 0 to 86400 seconds, at least one fetch, slot and remembered URL)
    include their ends: a policy at an end is made, one just past it is refused."""
    for admitted in (lowest, highest):
        if admitted is not None:
            assert getattr(FetchPolicy(**{setting: admitted}), setting) == admitted
    for past in (below, above):
        if past is not None:
            with pytest.raises(ValueError, match="must"):
                FetchPolicy(**{setting: past})


def test_cm_02_one_slot_in_all_and_one_per_host_is_enough_for_a_fetch() -> None:
    """The slot bounds are counts of fetches already running: with at most one fetch at once and
    one per host, a fetch to a host nobody is fetching from gets the slot, every time."""
    fetcher = mocked(FetchPolicy(max_fetches=1, max_fetches_per_host=1, deadline=0.5, refusal_ttl=0))
    for host in ("a.example.com", "b.example.com", "a.example.com"):
        assert both(fetcher, f"https://{host}/c.json") == [DOC_FETCHED, DOC_FETCHED]


def test_cm_02_concurrent_fetches_of_one_url_share_one_fetch(host: DocumentHost) -> None:
    url = host.publish("/c.json", DOC, delay=0.5)
    fetcher = dev(host)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: fetcher.fetch(url), range(12)))
    assert isinstance(answers[0], Fetched) and answers == [answers[0]] * 12
    assert host.hits("/c.json") == 1

    async def many() -> list[Fetched | FetchRefused]:
        return await asyncio.gather(*(fetcher.afetch(url) for _ in range(12)))

    assert asyncio.run(many()) == answers
    assert host.hits("/c.json") == 2, "a document that was fetched is not kept here (the core's store caches it)"


def test_cm_02_threads_and_event_loops_share_one_fetch_too(host: DocumentHost) -> None:
    url = host.publish("/c.json", DOC, delay=0.5)
    fetcher = dev(host)

    async def on_a_loop() -> list[Fetched | FetchRefused]:
        return await asyncio.gather(*(fetcher.afetch(url) for _ in range(4)))

    with ThreadPoolExecutor(6) as pool:
        loops = [pool.submit(asyncio.run, on_a_loop()) for _ in range(2)]
        threads = [pool.submit(fetcher.fetch, url) for _ in range(4)]
        answers = [a for loop in loops for a in loop.result()] + [t.result() for t in threads]
    assert len(answers) == 12 and all(isinstance(a, Fetched) for a in answers)
    assert host.hits("/c.json") == 1


def test_cm_02_when_the_fetching_caller_is_cancelled_a_waiting_one_fetches(host: DocumentHost) -> None:
    url = host.publish("/c.json", DOC, delay=0.5)
    fetcher = dev(host)

    async def cancel_the_first() -> Fetched | FetchRefused:
        first = asyncio.create_task(fetcher.afetch(url))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(asyncio.to_thread(fetcher.fetch, url))
        await asyncio.sleep(0.1)
        first.cancel()
        return await waiting

    assert isinstance(asyncio.run(cancel_the_first()), Fetched)
    assert host.hits("/c.json") == 2


def test_cm_02_a_caller_waiting_for_a_fetch_that_outlasts_its_deadline_is_refused_as_too_long() -> None:
    """A caller that finds the URL being fetched waits for that fetch no longer than its own deadline."""
    started, release = threading.Event(), threading.Event()

    def stuck_transport() -> httpx.BaseTransport:
        started.set()
        release.wait(10)
        return httpx.MockTransport(lambda request: httpx.Response(200, json=DOC))

    policy = FetchPolicy(allow_loopback=True, deadline=0.3, refusal_ttl=0)
    fetcher = DocumentFetcher(policy, resolver=lambda name, port: ["127.0.0.1"], transport=stuck_transport)
    url = "https://docs.example.test/c.json"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(fetcher.fetch, url)
        assert started.wait(5)
        waited = [fetcher.fetch(url), asyncio.run(fetcher.afetch(url))]
        release.set()
    assert waited == [FetchRefused("the fetch took longer than its 0.3-second limit")] * 2


@pytest.mark.parametrize("waiter", ["thread", "coroutine"])
def test_cm_02_a_caller_refused_for_outwaiting_a_fetch_leaves_nothing_remembered(waiter: str) -> None:
    """That refusal says how long the other fetch ran, nothing about the URL: once that fetch
    ends (here with an answer, past its own deadline, from a transport that ignores it), the
    next caller fetches the document instead of being refused again for ``refusal_ttl``."""
    started, release = threading.Event(), threading.Event()

    def stuck(request: httpx.Request) -> httpx.Response:
        if not release.is_set():
            started.set()
            release.wait(10)
        empty = httpx.ByteStream(b"")  # no body: nothing is read past the deadline
        return httpx.Response(200, headers={"Content-Type": "application/json"}, stream=empty)

    fetcher = mocked(FetchPolicy(deadline=0.3, refusal_ttl=600), stuck)
    url = "https://docs.example.com/c.json"
    answer = Fetched(b"", "application/json", None)
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(fetcher.fetch, url)
        assert started.wait(5)
        waited = fetcher.fetch(url) if waiter == "thread" else asyncio.run(fetcher.afetch(url))
        release.set()
        assert leader.result(10) == answer
    assert waited == FetchRefused("the fetch took longer than its 0.3-second limit")
    assert fetcher.fetch(url) == answer


def test_cm_02_concurrent_authorizations_fetch_an_uncached_document_once(host: DocumentHost) -> None:
    from conftest import RESOURCE

    doc = {"client_id": host.url("/doc.json"), "redirect_uris": ["http://127.0.0.1/cb"]}
    url = host.publish("/doc.json", doc, delay=0.5)
    server = _as(MemoryStore(), dev(host))
    query = [
        ("client_id", url),
        ("redirect_uri", "http://127.0.0.1/cb"),
        ("response_type", "code"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
    ]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: server.handle(HttpRequest("GET", "/authorize", query)).status, range(20)))
    assert statuses == [200] * 20
    assert host.hits("/doc.json") == 1


def test_cm_02_at_most_max_fetches_per_host_reach_one_host(host: DocumentHost) -> None:
    urls = [host.publish(f"/c{i}.json", DOC, delay=0.3) for i in range(10)]
    fetcher = dev(host, max_fetches_per_host=2)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(fetcher.fetch, urls))
    assert all(isinstance(a, Fetched) for a in answers), answers
    assert host.peak == 2
    host.peak = 0

    async def all_at_once() -> list[Fetched | FetchRefused]:
        return await asyncio.gather(*(fetcher.afetch(url) for url in urls))

    assert all(isinstance(a, Fetched) for a in asyncio.run(all_at_once()))
    assert host.peak == 2


def test_cm_02_at_most_max_fetches_run_at_once(tmp_path: Path) -> None:
    names = ("a.example.test", "b.example.test", "c.example.test")
    with document_host(tmp_path, names=names) as host:
        for i in range(4):
            host.answers[f"/c{i}.json"] = Answer(body=b"{}", delay=0.3)
        urls = [host.url(f"/c{i}.json", name) for name in names for i in range(4)]
        fetcher = dev(host, max_fetches=3, max_fetches_per_host=2)
        with ThreadPoolExecutor(len(urls)) as pool:
            answers = list(pool.map(fetcher.fetch, urls))
        assert all(isinstance(a, Fetched) for a in answers), answers
        assert host.peak == 3 and sorted(host.peak_by_name) == list(names)
        assert max(host.peak_by_name.values()) <= 2
        host.peak = 0
        host.peak_by_name.clear()

        async def all_at_once() -> list[Fetched | FetchRefused]:
            return await asyncio.gather(*(fetcher.afetch(url) for url in urls))

        assert all(isinstance(a, Fetched) for a in asyncio.run(all_at_once()))
        assert host.peak == 3 and max(host.peak_by_name.values()) <= 2


def test_cm_02_callers_queued_behind_a_hanging_host_never_connect_to_it(host: DocumentHost) -> None:
    """The first two fetches hold the host's slots until the deadline; the others stop waiting
    while a tenth of their deadline is left, rather than each opening a connection at the last
    moment: the host sees two requests in all, whatever the number of callers."""
    urls = [host.publish(f"/hang{i}.json", DOC, delay=10) for i in range(12)]
    fetcher = dev(host, deadline=1.0, read_timeout=5, max_fetches_per_host=2)
    together = threading.Barrier(len(urls))  # all callers at once: a late one may rightly get a freed slot

    def fetch(url: str) -> Fetched | FetchRefused:
        together.wait(10)
        return fetcher.fetch(url)

    with ThreadPoolExecutor(len(urls)) as pool:
        answers = list(pool.map(fetch, urls))
    assert sorted(a.reason for a in answers if isinstance(a, FetchRefused)) == sorted(
        [TOO_LONG.reason] * 2 + ["no fetch slot came free in time (16 at once, 2 per host)"] * 10
    )
    assert len(host.requests) == 2

    async def all_at_once() -> list[Fetched | FetchRefused]:
        return await asyncio.gather(*(fetcher.afetch(url) for url in urls))

    assert len(asyncio.run(all_at_once())) == 12
    assert len(host.requests) == 4


def test_cm_02_a_fetch_that_gets_no_slot_before_its_deadline_is_refused_and_not_remembered() -> None:
    holding = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow.json":  # a transport that ignores the deadline holds the one slot
            holding.set()
            time.sleep(2.5)
        return json_document()

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=0.5), handler)
    busy = FetchRefused("no fetch slot came free in time (1 at once, 4 per host)")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(fetcher.fetch, "https://a.example.com/slow.json")
        assert holding.wait(5)
        assert both(fetcher, "https://b.example.com/c.json") == [busy, busy]
        slow.result()
    assert fetcher.fetch("https://b.example.com/c.json") == Fetched(b"{}", "application/json", None)


def test_cm_02_a_fetch_slot_is_given_back_on_every_way_a_fetch_ends() -> None:
    """With one slot, each fetch below ends a different way (a document, a status, no connection,
    an address refused after the lookup, a lookup that fails, an error out of the transport):
    the slot is given back each time, so the next fetch gets it at once, never a busy refusal."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/refused.json":
            raise httpx.ConnectError("Connection refused", request=request)
        if request.url.path == "/odd.json":
            raise RuntimeError("a transport with a bug")
        status = 500 if request.url.path == "/500.json" else 200
        return httpx.Response(status, headers={"Content-Type": "application/json"}, stream=httpx.ByteStream(b"{}"))

    def resolve(name: str, port: int) -> list[str]:
        if name == "gone.example.com":
            raise OSError("no such host")
        return ["10.0.0.1"] if name == "private.example.com" else ["93.184.216.34"]

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=0.5, refusal_ttl=0), handler, resolver=resolve)
    endings = {
        "https://93.184.216.34/c.json": DOC_FETCHED,
        "https://docs.example.com/c.json": DOC_FETCHED,
        "https://93.184.216.34/500.json": FetchRefused("it answered with HTTP status 500"),
        "https://docs.example.com/refused.json": FetchRefused("the connection failed"),
        "https://10.0.0.1/c.json": FetchRefused("the address 10.0.0.1 is a private address (RFC 1918)"),
        "https://private.example.com/c.json": FetchRefused(
            "private.example.com resolves to 10.0.0.1, a private address (RFC 1918)"
        ),
        "https://gone.example.com/c.json": FetchRefused("gone.example.com does not resolve"),
    }
    for _ in range(2):
        for url, expected in endings.items():
            assert both(fetcher, url) == [expected, expected], url
        with pytest.raises(RuntimeError, match="a transport with a bug"):
            fetcher.fetch("https://docs.example.com/odd.json")
        with pytest.raises(RuntimeError, match="a transport with a bug"):
            asyncio.run(fetcher.afetch("https://93.184.216.34/odd.json"))


def test_cm_02_a_fetch_that_raised_leaves_no_fetch_behind_for_the_next_caller() -> None:
    """A fetch ended by an error out of the transport is over at once, not when its traceback is
    let go: a caller asking for the URL while that error is still held fetches anew."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        if len(sent) % 2:
            raise RuntimeError("a transport with a bug")
        return json_document()

    fetcher = mocked(FetchPolicy(deadline=0.5, refusal_ttl=0), handler)
    url = "https://docs.example.com/c.json"
    for fetch in (fetcher.fetch, lambda url: asyncio.run(fetcher.afetch(url))):
        with pytest.raises(RuntimeError, match="a transport with a bug") as raised:
            fetch(url)
        assert fetch(url) == DOC_FETCHED, raised.value
    assert len(sent) == 4


def test_cm_02_no_thread_to_resolve_in_is_a_refusal_that_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    fetcher = mocked(FetchPolicy(deadline=0.5))
    url = "https://docs.example.com/c.json"
    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", no_thread)
        refused = fetcher.fetch(url)
    assert refused == FetchRefused("no thread was free to resolve the host in")
    assert fetcher.fetch(url) == DOC_FETCHED


def test_cm_02_a_refusal_is_remembered_after_a_wait_for_a_slot_that_left_time_enough() -> None:
    """Only running out of time after a late slot goes unremembered: a fetch that waited for its
    slot and was then refused for the address its host resolves to is remembered as usual."""
    holding = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        holding.set()  # a transport that ignores the deadline holds the one slot for a while
        time.sleep(0.5)
        return json_document()

    lookups: list[str] = []

    def resolve(name: str, port: int) -> list[str]:
        lookups.append(name)
        return ["10.0.0.1"] if name.startswith("private") else ["93.184.216.34"]

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=5.0, refusal_ttl=60), handler, resolver=resolve)
    private = "https://private.example.test/c.json"
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fetcher.fetch, "https://a.example.test/hold.json")
        assert holding.wait(5)
        refused = fetcher.fetch(private)  # waits for the slot, then is refused for 10.0.0.1
        assert held.result() == DOC_FETCHED
    assert isinstance(refused, FetchRefused) and "10.0.0.1" in refused.reason
    assert both(fetcher, private) == [refused, refused]
    assert lookups.count("private.example.test") == 1


def test_cm_02_a_coroutine_cancelled_while_it_waits_for_a_slot_is_cancelled_and_takes_none() -> None:
    """Cancelling a caller queued for a fetch slot cancels it (it does not carry on to a busy
    refusal), and leaves no slot taken: the next fetch runs once the held one is done."""
    holding = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hold.json":  # a transport that ignores the deadline holds the one slot
            holding.set()
            time.sleep(0.5)
        return json_document()

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=5.0, refusal_ttl=0), handler)

    async def cancel_a_queued_caller() -> bool:
        queued = asyncio.create_task(fetcher.afetch("https://b.example.com/c.json"))
        await asyncio.sleep(0.1)
        queued.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queued
        return queued.cancelled()

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fetcher.fetch, "https://a.example.com/hold.json")
        assert holding.wait(5)
        assert asyncio.run(cancel_a_queued_caller())
        assert held.result() == DOC_FETCHED
    assert both(fetcher, "https://b.example.com/c.json") == [DOC_FETCHED] * 2


class CountingDNS:
    """Every name resolves to 127.0.0.1 except those starting ``private``: 10.0.0.1, an address
    the fetcher refuses (a refusal it remembers); each lookup is counted by name."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    def __call__(self, name: str, port: int) -> list[str]:
        self.lookups.append(name)
        return ["10.0.0.1"] if name.startswith("private") else ["127.0.0.1"]


def counting(host: DocumentHost, dns: CountingDNS, **kwargs: Any) -> DocumentFetcher:
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(host.ca_file), **kwargs)
    return DocumentFetcher(policy, resolver=dns)


def test_cm_02_a_refusal_of_this_servers_policy_is_remembered_for_refusal_ttl_seconds(host: DocumentHost) -> None:
    dns = CountingDNS()
    fetcher = counting(host, dns, refusal_ttl=0.5)
    url = host.url("/c.json", "private.example.test")
    answers = [fetcher.fetch(url), asyncio.run(fetcher.afetch(url)), fetcher.fetch(url)]
    assert len(set(answers)) == 1 and "10.0.0.1" in answers[0].reason  # type: ignore[union-attr]
    assert dns.lookups == ["private.example.test"]
    time.sleep(0.6)
    assert fetcher.fetch(url) == answers[0]
    assert dns.lookups == ["private.example.test"] * 2


@pytest.mark.parametrize(
    ("path", "answer", "reason"),
    [
        ("/missing.json", None, "it answered with HTTP status 404"),
        ("/broken.json", Answer(503, b"{}"), "it answered with HTTP status 503"),
        ("/moved.json", Answer(302, b"", headers=[("Location", "/c.json")]), "redirects are not followed"),
        ("/html.json", Answer(200, b"<html>", headers=[("Content-Type", "text/html")]), "not application/json"),
        (  # an answer HTTP cannot read: answered all the same, so asked again too
            "/malformed.json",
            Answer(200, b"{}", headers=[("Content-Type", "application/json"), ("Bad Header", "x")]),
            "the fetch failed (RemoteProtocolError)",
        ),
    ],
)
def test_cm_02_what_the_documents_host_answered_is_never_remembered(
    host: DocumentHost, path: str, answer: Answer | None, reason: str
) -> None:
    """The draft forbids caching error responses (draft-ietf-oauth-client-id-metadata-document-02
    §5.2): a client's host answering 503 now may answer 200 a moment later, and is asked again."""
    if answer is not None:
        host.answers[path] = answer
    fetcher = dev(host, refusal_ttl=30)
    for attempt in range(1, 4):
        refused = fetcher.fetch(host.url(path)) if attempt % 2 else asyncio.run(fetcher.afetch(host.url(path)))
        assert isinstance(refused, FetchRefused) and reason in refused.reason
        assert host.hits(path) == attempt
    host.publish(path, DOC)
    assert isinstance(fetcher.fetch(host.url(path)), Fetched)


class CountingTransport(httpx.HTTPTransport):
    """A real transport that records the URL of each request it is asked to send (each one a
    connection attempt, as the fetcher's transports serve one request each)."""

    def __init__(self, sent: list[str]) -> None:
        super().__init__()
        self.sent = sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        return super().handle_request(request)


class CountingAsyncTransport(httpx.AsyncHTTPTransport):
    """:class:`CountingTransport` for the async path."""

    def __init__(self, sent: list[str]) -> None:
        super().__init__()
        self.sent = sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        return await super().handle_async_request(request)


def connection_attempts(url: str, refusal_ttl: float) -> list[int]:
    """Fetch ``url`` sync, async and sync again with a fresh fetcher (every name pinned to
    127.0.0.1); the connection attempts made so far after each fetch, each answered "the
    connection failed"."""
    sent: list[str] = []
    fetcher = DocumentFetcher(
        FetchPolicy(allow_loopback=True, refusal_ttl=refusal_ttl),
        resolver=lambda name, port: ["127.0.0.1"],
        transport=lambda: CountingTransport(sent),
        async_transport=lambda: CountingAsyncTransport(sent),
    )
    counts = []
    for answer in (lambda: fetcher.fetch(url), lambda: asyncio.run(fetcher.afetch(url)), lambda: fetcher.fetch(url)):
        assert answer() == FetchRefused("the connection failed")
        counts.append(len(sent))
    assert set(sent) <= {url.replace("docs.example.test", "127.0.0.1")}
    return counts


def test_cm_02_a_host_that_gave_no_answer_is_remembered() -> None:
    """No connection: no response to cache, and asking again at once would hold a fetch slot for
    nothing, so the refusal is remembered for ``refusal_ttl``: the next fetches of the URL, sync
    and async, answer it again without a connection attempt. With ``refusal_ttl=0`` each fetch
    tries again (the count does see every attempt)."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        url = f"https://docs.example.test:{port}/c.json"
        assert connection_attempts(url, refusal_ttl=30) == [1, 1, 1], "answered from memory, not by connecting again"
        assert connection_attempts(url, refusal_ttl=0) == [1, 2, 3]


@pytest.mark.parametrize(
    ("error", "remembered"),
    [
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), True),
        (httpx.RemoteProtocolError("illegal header line: bytearray(b'Bad Header: x')"), False),
        (httpx.RemoteProtocolError("peer closed connection without sending complete message body"), False),
    ],
    ids=["closed-before-answering", "reset", "malformed-head", "body-cut-short"],
)
def test_cm_02_a_host_that_closed_without_answering_is_remembered_and_a_malformed_answer_is_not(
    error: httpx.HTTPError, remembered: bool
) -> None:
    """A connection closed or reset before any response gave no answer: remembered, like no
    connection at all. An answer HTTP cannot read was an answer: asked again next time."""
    sent: list[str] = []

    def fail(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        error.request = request
        raise error

    fetcher = mocked(FetchPolicy(refusal_ttl=30), fail)
    for _ in range(3):
        assert isinstance(fetcher.fetch("https://docs.example.com/c.json"), FetchRefused)
    assert len(sent) == (1 if remembered else 3)


def test_cm_02_many_callers_of_one_bad_url_at_once_cause_one_fetch(host: DocumentHost) -> None:
    host.answers["/broken.json"] = Answer(500, b"{}", delay=1.0)
    fetcher = dev(host, refusal_ttl=30)
    together = threading.Barrier(20)

    def fetch(_: int) -> Any:
        together.wait()
        return fetcher.fetch(host.url("/broken.json"))

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(fetch, range(20)))
    assert answers == [FetchRefused("it answered with HTTP status 500")] * 20
    assert host.hits("/broken.json") == 1


def test_cm_02_remembered_refusals_are_bounded(host: DocumentHost) -> None:
    dns = CountingDNS()
    fetcher = counting(host, dns, refusal_ttl=60, refusal_cache_entries=2)
    urls = [host.url("/c.json", f"private{i}.example.test") for i in range(3)]
    for url in urls:
        fetcher.fetch(url)
    fetcher.fetch(urls[2])
    fetcher.fetch(urls[0])
    assert [dns.lookups.count(f"private{i}.example.test") for i in range(3)] == [2, 1, 1]


def test_cm_02_as_many_refusals_as_refusal_cache_entries_are_remembered_at_once() -> None:
    """Remembering a refusal drops only what is out of time or over the bound: with room for two,
    two refused URLs are both answered from memory, and a third drops only the oldest."""
    dns = CountingDNS()
    fetcher = DocumentFetcher(FetchPolicy(refusal_ttl=60, refusal_cache_entries=2), resolver=dns)
    urls = [f"https://private{i}.example.test/c.json" for i in range(3)]
    for url in urls[:2] * 2 + [urls[2], urls[1], urls[0]]:
        answer = fetcher.fetch(url)
        assert isinstance(answer, FetchRefused) and "10.0.0.1" in answer.reason
    assert dns.lookups == [f"private{i}.example.test" for i in (0, 1, 2, 0)]


class HangingDNS:
    """A resolver that does not answer for the names in ``bad`` until ``release`` is set (as an
    authoritative server that never answers); every other name resolves at once."""

    def __init__(self, *bad: str) -> None:
        self.bad = set(bad)
        self.release = threading.Event()
        self.lookups: list[str] = []
        self.hung = self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> Sequence[str]:
        with self._lock:
            self.lookups.append(host)
        if host in self.bad or host.startswith("hung"):
            with self._lock:
                self.hung += 1
                self.peak = max(self.peak, self.hung)
            self.release.wait(30)
            with self._lock:
                self.hung -= 1
        return ["93.184.216.34"]


DOC_FETCHED = Fetched(b"{}", "application/json", None)


def test_cm_02_hung_lookups_of_one_host_do_not_starve_the_others() -> None:
    """A lookup that outlives its fetch keeps that fetch's slot until it returns: one host's hung
    lookups hold at most its share of the slots, the other hosts are fetched, and nothing refused
    for want of time or a slot is remembered."""
    dns = HangingDNS("bad.example")
    fetcher = mocked(FetchPolicy(deadline=1.0, max_fetches=4, max_fetches_per_host=2, refusal_ttl=30), resolver=dns)
    bad = [f"https://bad.example/c{i}.json" for i in range(8)]
    try:
        with ThreadPoolExecutor(len(bad)) as pool:
            assert not any(isinstance(a, Fetched) for a in pool.map(fetcher.fetch, bad))

        async def all_at_once() -> list[Fetched | FetchRefused]:
            return await asyncio.gather(*(fetcher.afetch(url) for url in bad))

        assert not any(isinstance(a, Fetched) for a in asyncio.run(all_at_once()))
        assert dns.lookups.count("bad.example") == 2 and dns.peak == 2
        assert both(fetcher, "https://good.example/c.json") == [DOC_FETCHED] * 2  # not refused for want of a slot
    finally:
        dns.release.set()
    assert [fetcher.fetch(bad[0]), asyncio.run(fetcher.afetch(bad[1]))] == [DOC_FETCHED] * 2


def test_cm_02_lookup_threads_never_outnumber_the_slots() -> None:
    """Hung lookups of many names hold the slots, so no more lookups start (none queues behind
    them), and the fetches refused meanwhile are not remembered."""
    dns = HangingDNS()
    fetcher = mocked(FetchPolicy(deadline=0.5, max_fetches=3, refusal_ttl=30), resolver=dns)
    urls = [f"https://hung{i}.example/c.json" for i in range(12)]
    try:
        with ThreadPoolExecutor(len(urls)) as pool:
            assert not any(isinstance(a, Fetched) for a in pool.map(fetcher.fetch, urls))
        assert len(dns.lookups) == 3 and dns.peak == 3
        assert sum(t.name == "kavach-resolve" for t in threading.enumerate()) <= 3
    finally:
        dns.release.set()
    dns.bad = set()
    dns.lookups.clear()
    with ThreadPoolExecutor(len(urls)) as pool:
        answers = list(pool.map(fetcher.fetch, [url.replace("hung", "fine") for url in urls]))
    assert answers == [DOC_FETCHED] * len(urls)


@pytest.mark.parametrize("path", ["sync", "async"])
def test_cm_02_a_lookup_that_timed_out_is_not_remembered(path: str) -> None:
    dns = HangingDNS("slow.example")
    fetcher = mocked(FetchPolicy(deadline=0.5, refusal_ttl=30), resolver=dns)
    url = "https://slow.example/c.json"

    def fetch() -> Fetched | FetchRefused:
        return fetcher.fetch(url) if path == "sync" else asyncio.run(fetcher.afetch(url))

    try:
        assert fetch() == FetchRefused("resolving slow.example took longer than the fetch's limit (0.5 s)")
    finally:
        dns.release.set()
    assert fetch() == DOC_FETCHED
    assert dns.lookups == ["slow.example"] * 2


def test_cm_02_a_time_out_after_a_slot_that_came_late_is_not_remembered() -> None:
    """The slot came free with little of the deadline left: running out of time then says nothing
    about the URL, so the next fetch tries again."""
    holding = threading.Event()
    slow_once = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hold.json":  # a transport that ignores the deadline holds the one slot
            holding.set()
            time.sleep(0.7)
        elif slow_once.pop() if slow_once else False:
            time.sleep(0.5)
        return json_document()

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=1.0, refusal_ttl=30), handler)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fetcher.fetch, "https://a.example.com/hold.json")
        assert holding.wait(5)
        assert fetcher.fetch("https://b.example.com/c.json") == TOO_LONG
        assert held.result() == DOC_FETCHED
    assert fetcher.fetch("https://b.example.com/c.json") == DOC_FETCHED


def test_cm_02_an_awaited_time_out_after_a_slot_that_came_late_is_not_remembered() -> None:
    """The same on an event loop: the slot, held by a fetch on a thread, came free with little of
    the deadline left, so running out of time is not held against the URL."""
    holding = threading.Event()
    slow_once = [True]

    def holder(request: httpx.Request) -> httpx.Response:  # a transport that ignores the deadline
        holding.set()
        time.sleep(0.7)
        return json_document()

    async def handler(request: httpx.Request) -> httpx.Response:
        if slow_once.pop() if slow_once else False:
            await asyncio.sleep(0.5)
        return json_document()

    fetcher = mocked(FetchPolicy(max_fetches=1, deadline=1.0, refusal_ttl=30), holder, handler)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(fetcher.fetch, "https://a.example.com/hold.json")
        assert holding.wait(5)
        assert asyncio.run(fetcher.afetch("https://b.example.com/c.json")) == TOO_LONG
        assert held.result() == DOC_FETCHED
    assert asyncio.run(fetcher.afetch("https://b.example.com/c.json")) == DOC_FETCHED


def test_cm_02_a_time_out_with_the_slot_taken_at_once_is_remembered() -> None:
    """A fetch that had its slot at once, and so the whole deadline, and still ran out of time
    says the URL answers too slowly: the refusal is remembered like any other, on a thread and on
    an event loop, and the next caller is refused without a request."""
    sent: list[str] = []

    def slow(request: httpx.Request) -> httpx.Response:
        sent.append("thread")
        time.sleep(1.2)
        return json_document()

    async def aslow(request: httpx.Request) -> httpx.Response:
        sent.append("loop")
        await asyncio.sleep(1.2)
        return json_document()

    on_a_thread, on_a_loop = (mocked(FetchPolicy(deadline=1.0, refusal_ttl=30), slow, aslow) for _ in range(2))
    url = "https://b.example.com/c.json"
    assert [on_a_thread.fetch(url), on_a_thread.fetch(url)] == [TOO_LONG] * 2
    assert [asyncio.run(on_a_loop.afetch(url)) for _ in range(2)] == [TOO_LONG] * 2
    assert sent == ["thread", "loop"]


def test_a_closed_fetcher_fetches_nothing_and_a_hung_lookup_does_not_hold_the_exit() -> None:
    script = """if True:
        import asyncio, time
        from kavach.fetcher import DocumentFetcher, FetchPolicy
        fetcher = DocumentFetcher(FetchPolicy(deadline=0.3), resolver=lambda h, p: time.sleep(60) or ["93.184.216.34"])
        print(fetcher.fetch("https://hang.example/c.json").reason)
        asyncio.run(fetcher.aclose())
        print(fetcher.fetch("https://other.example/c.json").reason)
        fetcher.close()
        print(asyncio.run(fetcher.afetch("https://hang.example/c.json")).reason)
    """
    try:  # the lookup sleeps 60 seconds: an exit that waits for it ends only after this timeout
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as timed_out:
        pytest.fail(f"the interpreter did not exit while the lookup hung (printed {timed_out.stdout!r})")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "resolving hang.example took longer than the fetch's limit (0.3 s)",
        "the fetcher is closed",
        "the fetcher is closed",
    ]


# -- through the authorization server: refused, and nothing stored ---------------------------


def _authorize(server: AuthorizationServer, client_id: str) -> Any:
    query = [
        ("client_id", client_id),
        ("redirect_uri", "http://127.0.0.1/cb"),
        ("response_type", "code"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
    ]
    return server.handle(HttpRequest("GET", "/authorize", query, [], b""))


def _token(server: AuthorizationServer, client_id: str) -> Any:
    form = urlencode(
        {
            "grant_type": "authorization_code",
            "code": "x" * 43,
            "code_verifier": "v" * 43,
            "client_id": client_id,
            "redirect_uri": "http://127.0.0.1/cb",
        }
    )
    headers = [("content-type", "application/x-www-form-urlencoded")]
    return server.handle(HttpRequest("POST", "/token", [], headers, form.encode()))


def _assert_told_nothing(server: AuthorizationServer, store: MemoryStore, url: str, *hidden: str) -> None:
    """The authorization page and the token endpoint say only that the document could not be
    fetched: none of ``hidden`` (the log's reason, addresses, status codes, TLS words) reaches them."""
    page = _authorize(server, url)
    assert page.status == 400 and page.header("location") is None
    told = [page.body.decode()]
    token = _token(server, url)
    assert token.status == 401 and token.json()["error"] == "invalid_client"
    assert token.json()["error_description"] == f"client metadata document refused: {NOT_FETCHED}"
    told.append(token.body.decode())
    assert NOT_FETCHED in told[0]
    for text in told:
        for word in hidden:
            assert word not in text, (word, text)
    assert store.clients == {} and store.pending == {}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/client.json", "the address 127.0.0.1 is a loopback address"),
        ("https://10.0.0.1/client.json", "the address 10.0.0.1 is a private address"),
        ("https://169.254.169.254/client.json", "the address 169.254.169.254 is a link-local address"),
        ("https://[::1]/client.json", "the address ::1 is a loopback address"),
        ("https://[::ffff:127.0.0.1]/client.json", "is an IPv4-mapped IPv6 address"),
        ("https://private.example.com/client.json", "private.example.com resolves to 10.9.8.7, a private address"),
        ("https://gone.example.com/client.json", "gone.example.com does not resolve to any address"),
    ],
)
def test_cm_02_why_an_address_was_refused_is_logged_never_told_to_the_client(
    url: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:

    fetcher, rec = recording(table={"private.example.com": ["10.9.8.7"], "gone.example.com": []})
    store = MemoryStore()
    server = _as(store, fetcher)
    with caplog.at_level(logging.WARNING, logger="kavach.fetcher"):
        _assert_told_nothing(server, store, url, reason, "10.9.8.7", "address", "resolve", "loopback")
    assert reason in caplog.text
    assert rec.connections == 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("status", "it answered with HTTP status 404"),
        ("redirect", "it answered with a redirect (302)"),
        ("type", "its Content-Type is text/html"),
        ("tls", "its TLS certificate could not be verified"),
        ("closed", "the connection failed"),
    ],
)
def test_cm_02_status_codes_and_tls_failures_reach_only_the_log(
    host: DocumentHost, fault: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:

    host.answers["/moved.json"] = Answer(302, b"", [("Location", "https://10.0.0.1/x")])
    host.answers["/page.json"] = Answer(body=b"<html></html>", headers=[("Content-Type", "text/html")])
    url = {
        "status": host.url("/missing.json"),
        "redirect": host.url("/moved.json"),
        "type": host.url("/page.json"),
        "tls": host.publish("/c.json", DOC),
        "closed": "https://docs.example.test:1/c.json",
    }[fault]
    fetcher = dev(host)
    if fault == "tls":
        fetcher = DocumentFetcher(FetchPolicy(allow_loopback=True), resolver=lambda name, port: ["127.0.0.1"])
    store = MemoryStore()
    server = _as(store, fetcher)
    hidden = (reason, "404", "302", "text/html", "certificate", "TLS", "SSL", "connection", "10.0.0.1")
    with caplog.at_level(logging.WARNING, logger="kavach.fetcher"):
        _assert_told_nothing(server, store, url, *hidden)
    assert reason in caplog.text


def test_cm_02_a_plain_http_server_at_the_url_is_a_failed_handshake_not_a_bad_certificate(host: DocumentHost) -> None:
    """A server at the document's port that speaks no TLS (plain HTTP answering the ClientHello)
    presented no certificate at all: the refusal the log gets says the handshake failed, so the
    operator does not go looking for a certificate problem."""
    import http.server

    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://docs.example.test:{plain.server_address[1]}/c.json"
        assert both(dev(host), url) == [FetchRefused("the TLS handshake failed")] * 2
    finally:
        plain.shutdown()
        plain.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://client.example.com/client.json", "must use https"),
        ("https://client.example.com:0/client.json", "port must be a number from 1 to 65535"),
        ("https://client.example.com/a/%2E%2e/client.json", ". or .. path segments"),
    ],
)
def test_cm_01_a_malformed_client_id_url_is_explained_to_the_client(url: str, reason: str) -> None:
    """What is wrong with the URL itself is the client's own business, and nothing was looked up."""

    fetcher, rec = recording()
    store = MemoryStore()
    server = _as(store, fetcher)
    resp = _authorize(server, url)
    assert resp.status == 400 and reason in resp.body.decode()
    assert reason in _token(server, url).json()["error_description"]
    assert rec.resolved == [] and rec.connections == 0


def test_cm_02_the_server_fetches_with_the_async_path_too(host: DocumentHost) -> None:
    from conftest import RESOURCE

    doc = {"client_id": host.url("/doc.json"), "client_name": "Async Doc", "redirect_uris": ["http://127.0.0.1/cb"]}
    url = host.publish("/doc.json", doc)
    store = MemoryStore()
    server = _as(store, dev(host))
    query = [
        ("client_id", url),
        ("redirect_uri", "http://127.0.0.1/cb"),
        ("response_type", "code"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
    ]
    resp = asyncio.run(server.ahandle(HttpRequest("GET", "/authorize", query, [], b"")))
    assert resp.status == 200, resp.body
    assert b"Async Doc" in resp.body and b"docs.example.test" in resp.body
    assert store.clients[url].kind == "document"


def test_settings_documents_table_and_environment(tmp_path: Path) -> None:
    import certifi
    from kavach.settings import SettingsError, resolve

    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    toml = tmp_path / "kavach.toml"
    toml.write_text('[documents]\nallow_hosts = ["a.example.com"]\nca_bundle = "ca.pem"\n')
    settings = resolve({"config": str(toml)}, environ={"KAVACH_DOCUMENT_ALLOW_LOOPBACK": "1"})
    policy = settings.fetch_policy()
    assert policy.allow_hosts == ("a.example.com",) and policy.allow_loopback is True
    assert policy.ca_bundle == str(tmp_path / "ca.pem")
    flags = resolve({"documents": {"deny_hosts": ["b.example.com"]}}, environ={}).fetch_policy()
    assert flags.deny_hosts == ("b.example.com",) and flags.allow_loopback is False
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(SettingsError, match=r"documents: ca_bundle '.*/ca\.pem' cannot be read"):
        settings.fetch_policy()
    toml.write_text("[documents]\nsurprise = 1\n")
    with pytest.raises(SettingsError, match="surprise"):
        resolve({"config": str(toml)}, environ={})
    # Networks are for the deny list, from the file, the environment and flags alike.
    toml.write_text('[documents]\ndeny_hosts = ["203.0.113.0/24", "b.example.com"]\n')
    denied = resolve({"config": str(toml)}, environ={"KAVACH_DOCUMENT_DENY_HOSTS": "2001:db8::/32"}).fetch_policy()
    assert [str(n) for n in denied.denied_networks] == ["2001:db8::/32"]  # the environment's list wins the file's
    flagged = resolve({"documents": {"deny_hosts": ["198.51.100.0/24"]}}, environ={}).fetch_policy()
    assert [str(n) for n in flagged.denied_networks] == ["198.51.100.0/24"]
    assert [str(n) for n in resolve({"config": str(toml)}, environ={}).fetch_policy().denied_networks] == [
        "203.0.113.0/24"
    ]
    for where in ({"config": str(toml)}, {}):
        toml.write_text('[documents]\nallow_hosts = ["203.0.113.0/24"]\n')
        environ = {} if where else {"KAVACH_DOCUMENT_ALLOW_HOSTS": "203.0.113.0/24"}
        with pytest.raises(SettingsError, match="is not a host name"):
            resolve(where, environ=environ)


def test_a_failed_lookup_leaves_no_unread_error_on_the_event_loop() -> None:
    """A lookup's error is read on the event-loop path too, whether it came in time or after the
    fetch gave up: asyncio logs a future whose error nobody read ("Future exception was never
    retrieved", with a traceback) when it is collected, which put a resolver's gaierror in the
    server's log for every unresolvable client ID document."""
    reported: list[str] = []

    def broken(host: str, port: int) -> Sequence[str]:
        raise OSError("no such host")

    def late(host: str, port: int) -> Sequence[str]:
        time.sleep(0.4)
        raise OSError("no such host, after a while")

    async def main() -> list[str]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context["message"]))
        answers = [
            (
                await DocumentFetcher(FetchPolicy(refusal_ttl=0), resolver=broken).afetch(
                    "https://nowhere.example.com/client.json"
                )
            ).reason,
            (
                await DocumentFetcher(FetchPolicy(deadline=0.1, refusal_ttl=0), resolver=late).afetch(
                    "https://nowhere.example.com/client.json"
                )
            ).reason,
        ]
        await asyncio.sleep(0.6)  # the late lookup has failed by now, its error handed to the loop
        gc.collect()
        await asyncio.sleep(0.05)
        return answers

    answers = asyncio.run(main())
    assert "does not resolve" in answers[0] and "took longer than the fetch's limit" in answers[1]
    assert reported == []


@pytest.mark.parametrize(
    ("issuer", "allowed"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("https://auth.example.com", False),
        ("https://10.0.0.5", False),
        ("https://127.attacker.example", False),
        ("https://127.0.0.1.nip.io", False),
    ],
)
def test_the_loopback_switch_is_only_for_an_authorization_server_on_loopback(issuer: str, allowed: bool) -> None:
    """draft-ietf-oauth-client-id-metadata-document-02 §8.6: fetching from loopback addresses only
    when the authorization server runs on loopback too; refused at construction otherwise, by the
    library and by ``kavach serve`` alike (before anything is written)."""
    from kavach.settings import SettingsError, resolve
    from kavach.users import MemoryUsers, Users

    from kavach_core.config import Config, ProtectedResource

    config = Config(
        issuer=issuer,
        resources=[ProtectedResource("https://mcp.example.com/mcp")],
        secret=b"k" * 32,
        client_id_metadata_documents=True,
        allow_insecure_http=True,
    )
    fetcher = DocumentFetcher(FetchPolicy(allow_loopback=True))
    users = Users(MemoryUsers(), log_n=10)
    settings = resolve({"issuer": issuer, "documents": {"allow_loopback": True}}, environ={})
    listening_widely = resolve({"issuer": issuer, "host": "0.0.0.0", "documents": {"allow_loopback": True}}, environ={})
    with pytest.raises(SettingsError, match=r"not one listening on 0\.0\.0\.0|not the issuer"):
        listening_widely.fetch_policy()
    if allowed:
        assert AuthorizationServer(config, MemoryStore(), users=users, fetcher=fetcher).fetcher is fetcher
        assert settings.fetch_policy().allow_loopback is True
    else:
        with pytest.raises(ValueError, match="only for an authorization server on loopback"):
            AuthorizationServer(config, MemoryStore(), users=users, fetcher=fetcher)
        with pytest.raises(SettingsError, match="--document-allow-loopback"):
            settings.fetch_policy()
    plain = DocumentFetcher(FetchPolicy())
    assert AuthorizationServer(config, MemoryStore(), users=users, fetcher=plain).fetcher is plain
