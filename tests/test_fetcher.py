"""The SSRF-safe client metadata document fetcher (CM-02), sync and async.

Network rule: nothing here sends a packet to a non-loopback address. Refusals of private and
metadata-service addresses are proven to happen before any connection: the resolver and the
transport factory are injected and record every call. Documents that are fetched come from
:mod:`document_host` on 127.0.0.1, with the loopback development switch on and the test CA
trusted; host names are pinned to 127.0.0.1 by the injected resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from document_host import Answer, DocumentHost, document_host
from kavach.fetcher import DocumentFetcher, FetchPolicy, address_problem, max_age
from kavach.server import AuthorizationServer

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


def recording(policy: FetchPolicy | None = None, table: dict[str, list[str]] | None = None) -> tuple[
    DocumentFetcher, Recorder
]:
    rec = Recorder(table)
    fetcher = DocumentFetcher(
        policy, resolver=rec.resolve, transport=rec.transport, async_transport=rec.async_transport
    )
    return fetcher, rec


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
    "64:ff9b::a00:1": "NAT64",
    "64:ff9b:1::a00:1": "NAT64",
    "::ffff:0:a00:1": "IPv4-translated",
    "2002:a00:1::1": "6to4",
    "2002:7f00:1::1": "6to4",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo",
    "2001:db8::1": "",
}


@pytest.mark.parametrize("text", sorted(REFUSED_ADDRESSES))
def test_cm_02_non_public_addresses_are_refused(text: str) -> None:
    problem = address_problem(ipaddress.ip_address(text))
    assert problem is not None
    assert REFUSED_ADDRESSES[text] in problem


@pytest.mark.parametrize("text", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2002:5db8:d822::1"])
def test_cm_02_public_addresses_pass(text: str) -> None:
    assert address_problem(ipaddress.ip_address(text)) is None


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
        ("http://client.example.com/client.json", "only https"),
        ("https://user:pw@client.example.com/client.json", "user information"),
        ("https://client.example.com:99999/client.json", "not valid"),
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


def test_cm_02_resolution_failure_is_a_refusal() -> None:
    def broken(host: str, port: int) -> Sequence[str]:
        raise OSError("no such host")

    fetcher = DocumentFetcher(resolver=broken)
    for answer in both(fetcher, "https://nowhere.example.com/client.json"):
        assert isinstance(answer, FetchRefused) and "does not resolve" in answer.reason


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


# -- against a real HTTPS server on loopback -----------------------------------------------------

DOC = {"client_id": "x", "redirect_uris": ["http://127.0.0.1/cb"]}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DocumentHost]:
    with document_host(tmp_path, names=("docs.example.test", "localhost", "127.0.0.1")) as running:
        yield running


def dev(host: DocumentHost, **kwargs: Any) -> DocumentFetcher:
    """The development switch on, the test CA trusted, every name pinned to 127.0.0.1."""
    policy = FetchPolicy(allow_loopback=True, ca_bundle=str(host.ca_file), **kwargs)
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
    untrusted = DocumentFetcher(FetchPolicy(allow_loopback=True), resolver=lambda name, port: ["127.0.0.1"])
    for answer in both(untrusted, host.url("/c.json")):
        assert isinstance(answer, FetchRefused) and "certificate" in answer.reason
    assert host.requests == []


def test_cm_02_loopback_is_refused_without_the_switch(host: DocumentHost) -> None:
    host.publish("/c.json", DOC)
    fetcher = DocumentFetcher(FetchPolicy(ca_bundle=str(host.ca_file)))
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


def test_a_ca_bundle_gone_after_start_up_refuses_every_fetch(
    host: DocumentHost, caplog: pytest.LogCaptureFixture
) -> None:
    url = host.publish("/c.json", DOC)
    bundle = host.ca_file.parent / "moved-ca.pem"
    bundle.write_bytes(host.ca_file.read_bytes())
    fetcher = DocumentFetcher(
        FetchPolicy(allow_loopback=True, ca_bundle=str(bundle)), resolver=lambda name, port: ["127.0.0.1"]
    )
    bundle.unlink()
    with caplog.at_level(logging.ERROR, logger="kavach.fetcher"):
        answers = both(fetcher, url)
    assert answers == [FetchRefused("the server cannot check TLS certificates")] * 2
    assert host.requests == []
    assert "moved-ca.pem" in caplog.text and "cannot be read" in caplog.text


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

    fetcher = DocumentFetcher(
        FetchPolicy(max_bytes=4096),
        resolver=lambda name, port: ["93.184.216.34"],
        transport=lambda: httpx.MockTransport(handler),
    )
    answer = fetcher.fetch("https://client.example.com/client.json")
    assert isinstance(answer, FetchRefused) and "larger than 4096 bytes" in answer.reason


def test_cm_02_a_body_that_trickles_past_the_deadline_is_refused(host: DocumentHost) -> None:
    host.answers["/slow.json"] = Answer(body=b'{"client_id": "x", "padding": "........"}', trickle=0.1)
    fetcher = dev(host, deadline=1.0, read_timeout=0.5)
    for answer in both(fetcher, host.url("/slow.json")):
        assert isinstance(answer, FetchRefused), answer
        assert "1 seconds" in answer.reason


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(body=b"<html></html>", headers=[("Content-Type", "text/html")]), "not application/json"),
        (Answer(body=b"{}", headers=[]), "missing"),
        (Answer(404, b"{}"), "status 404"),
        (Answer(body=b"{}", headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]), "encoded"),
    ],
    ids=["html", "no-type", "404", "gzip"],
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
    ],
)
def test_cm_01_cache_control(headers: dict[str, str], expected: int | None) -> None:
    assert max_age(httpx.Headers(headers)) == expected


# -- through the authorization server: refused, and nothing stored ---------------------------


def _authorize(server: AuthorizationServer, client_id: str) -> Any:
    query = [
        ("client_id", client_id), ("redirect_uri", "http://127.0.0.1/cb"), ("response_type", "code"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"), ("code_challenge_method", "S256"),
    ]
    return server.handle(HttpRequest("GET", "/authorize", query, [], b""))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/client.json", "loopback address"),
        ("https://10.0.0.1/client.json", "private address"),
        ("https://169.254.169.254/client.json", "link-local address"),
        ("https://[::1]/client.json", "loopback address"),
        ("https://[::ffff:127.0.0.1]/client.json", "IPv4-mapped"),
        ("https://private.example.com/client.json", "private.example.com resolves to 10.9.8.7"),
        ("http://client.example.com/client.json", "must use https"),
    ],
)
def test_cm_02_the_server_shows_the_refusal_and_stores_nothing(url: str, reason: str) -> None:
    from conftest import make_config

    fetcher, rec = recording(table={"private.example.com": ["10.9.8.7"]})
    store = MemoryStore()
    server = AuthorizationServer(make_config(), store, identify=lambda req: "alice", fetcher=fetcher)
    resp = _authorize(server, url)
    assert resp.status == 400 and resp.header("location") is None
    text = resp.body.decode()
    assert "metadata document" in text and reason in text, text
    assert store.clients == {} and store.pending == {}
    assert rec.connections == 0


def test_cm_02_the_server_fetches_with_the_async_path_too(host: DocumentHost) -> None:
    from conftest import RESOURCE, make_config

    doc = {"client_id": host.url("/doc.json"), "client_name": "Async Doc", "redirect_uris": ["http://127.0.0.1/cb"]}
    url = host.publish("/doc.json", doc)
    store = MemoryStore()
    server = AuthorizationServer(make_config(), store, identify=lambda req: "alice", fetcher=dev(host))
    query = [
        ("client_id", url), ("redirect_uri", "http://127.0.0.1/cb"), ("response_type", "code"),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"), ("code_challenge_method", "S256"),
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
