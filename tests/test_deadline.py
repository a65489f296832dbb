"""The whole-exchange deadline kept at the socket (:mod:`kavach.deadline`): the clock arithmetic of
:class:`Deadline`, and an httpx client on :func:`transport` against the real HTTPS server of
:mod:`document_host`, whose answers can trickle a byte at a time.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest
from document_host import Answer, DocumentHost, document_host
from kavach.deadline import Deadline, transport

BODY = json.dumps({"client_id": "https://app.example/client.json"}).encode()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[DocumentHost]:
    with document_host(tmp_path, names=("127.0.0.1",)) as running:
        yield running


def _trusting(host: DocumentHost) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(host.ca_file))


def test_without_a_deadline_each_step_keeps_its_own_timeout() -> None:
    deadline = Deadline()
    assert deadline.at is None and deadline.received == 0
    assert deadline.bound(7.5, httpcore.ReadTimeout) == 7.5
    assert deadline.bound(None, httpcore.ReadTimeout) is None, "no timeout and no deadline: no limit"


def test_a_step_gets_the_shorter_of_its_timeout_and_the_time_left() -> None:
    deadline = Deadline()
    deadline.start(60)
    assert deadline.at is not None and deadline.received == 0
    assert deadline.bound(1.0, httpcore.ReadTimeout) == 1.0, "a timeout shorter than the time left is kept"
    left = deadline.bound(None, httpcore.ReadTimeout)
    assert left is not None and 0 < left <= 60, "no timeout of its own: the time left"
    cut = deadline.bound(3600.0, httpcore.ReadTimeout)
    assert cut is not None and 0 < cut <= 60, "a longer timeout is cut to the time left"
    deadline.clear()
    assert deadline.at is None and deadline.bound(3600.0, httpcore.ReadTimeout) == 3600.0


@pytest.mark.parametrize("late", [httpcore.ReadTimeout, httpcore.WriteTimeout, httpcore.ConnectTimeout])
def test_once_the_deadline_has_passed_every_step_fails_with_the_timeout_of_that_step(late: type[Exception]) -> None:
    deadline = Deadline(time.monotonic() - 0.5)  # half a second late
    with pytest.raises(late, match="deadline has passed"):
        deadline.bound(30.0, late)
    with pytest.raises(late):
        deadline.bound(None, late)


def test_a_whole_answer_within_the_deadline_is_read_and_its_bytes_are_counted(host: DocumentHost) -> None:
    """``received`` counts the bytes of the answer read since :meth:`Deadline.start` (the kit tells
    a late answer that had begun, "still sending", by it); ``start`` begins a new count."""
    host.answers["/doc.json"] = Answer(body=BODY)
    deadline = Deadline()
    with httpx.Client(transport=transport(deadline, verify=_trusting(host)), trust_env=False) as client:
        deadline.start(30)
        response = client.get(host.url("/doc.json"))
        assert response.status_code == 200 and response.content == BODY
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        assert deadline.received == len(head) + len(BODY)
        stream = response.extensions["network_stream"]  # what the connection reports passes through
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", host.port)
        assert stream.get_extra_info("ssl_object") is not None
        deadline.start(30)
        assert deadline.received == 0
        deadline.clear()
        assert client.get(host.url("/doc.json")).content == BODY, "no deadline: the exchange is unbounded"


def test_a_head_sent_a_byte_at_a_time_ends_at_the_deadline(host: DocumentHost) -> None:
    """Every byte arrives well within the per-read timeout, so only the deadline ends the exchange;
    the head would be whole after some seconds (a client ignoring the deadline gets a 200)."""
    padding = [("X-Padding", "." * 40)]
    host.answers["/slow.json"] = Answer(body=BODY, headers=padding, trickle_head=0.05)
    deadline = Deadline()
    with httpx.Client(transport=transport(deadline, verify=_trusting(host)), timeout=10.0, trust_env=False) as client:
        deadline.start(0.5)
        with pytest.raises(httpx.ReadTimeout):
            client.get(host.url("/slow.json"))
    assert deadline.received > 0, "the head had begun: the bytes read are counted"


def test_the_transport_checks_the_server_certificate_by_default(host: DocumentHost) -> None:
    """The conformance kit builds its transport without ``verify``: a certificate no trusted
    authority issued (the test CA's) is refused."""
    host.answers["/doc.json"] = Answer(body=BODY)
    client = httpx.Client(transport=transport(Deadline()), trust_env=False)
    with client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(host.url("/doc.json"))
    assert host.requests == []


def test_a_refused_connection_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport makes one connection attempt (no retries): a retry would spend the time left
    on a host that already said no."""
    attempts: list[int] = []
    real = httpcore.SyncBackend.connect_tcp

    def counted(self: httpcore.SyncBackend, host: str, port: int, *args: object, **kwargs: object) -> object:
        attempts.append(port)
        return real(self, host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", counted)
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        deadline = Deadline()
        deadline.start(30)
        client = httpx.Client(transport=transport(deadline), trust_env=False)
        with client, pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")
    assert attempts == [port]
