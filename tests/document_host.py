"""A small HTTPS server on loopback that publishes client ID metadata documents for tests.

Its certificate comes from a test certificate authority made with ``trustme``; the CA's PEM is
written to a file so a fetcher (or ``kavach serve --document-ca-bundle``) can be told to trust
it. Each path answers with a :class:`Answer` (which can also be slow in the ways a hostile host
is: late, a byte at a time, or ``103 Early Hints`` forever); every request is recorded, and so is
the most requests it was answering at once. :func:`silent_host` accepts connections and never
says anything, not even its half of the TLS handshake.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import trustme


@attrs.define
class Answer:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = attrs.Factory(lambda: [("Content-Type", "application/json")])
    trickle: float = 0.0
    """Seconds between single bytes of the body (a slow sender)."""
    delay: float = 0.0
    """Seconds before the status line (a slow host)."""
    trickle_head: float = 0.0
    """Seconds between single bytes of the status line and headers."""
    early_hints: float = 0.0
    """When set, a ``103 Early Hints`` every so many seconds and never a final answer."""


class DocumentHost:
    """The running server: ``url(path)``, ``answers[path]``, ``requests`` (paths, in order);
    ``peak``: the most requests answered at once, ``peak_by_name`` the same per ``Host`` name."""

    def __init__(self, server: ThreadingHTTPServer, ca_file: Path, name: str) -> None:
        self.server = server
        self.ca_file = ca_file
        self.name = name
        self.port = int(server.server_address[1])
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.peak = 0
        self.peak_by_name: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def url(self, path: str, host: str | None = None) -> str:
        return f"https://{host or self.name}:{self.port}{path}"

    def publish(self, path: str, document: dict[str, Any], **kwargs: Any) -> str:
        """Serve ``document`` as JSON at ``path``; returns its URL on this host."""
        self.answers[path] = Answer(body=json.dumps(document).encode(), **kwargs)
        return self.url(path)

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    @contextmanager
    def answering(self, name: str) -> Iterator[None]:
        """Counts one request in progress for the ``Host`` name ``name``."""
        with self._lock:
            self._busy[name] = self._busy.get(name, 0) + 1
            self.peak = max(self.peak, sum(self._busy.values()))
            self.peak_by_name[name] = max(self.peak_by_name.get(name, 0), self._busy[name])
        try:
            yield
        finally:
            with self._lock:
                self._busy[name] -= 1


def _slowly(out: Any, data: bytes, pause: float) -> None:
    for i in range(len(data)):
        out.write(data[i : i + 1])
        out.flush()
        time.sleep(pause)


def _handler(host: DocumentHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            host.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            answer = host.answers.get(self.path, Answer(404, b"{}"))
            name = self.headers.get("host", "").rpartition(":")[0]
            with host.answering(name), contextlib.suppress(OSError):  # OSError: the fetcher hung up
                self._answer(answer)

        def _answer(self, answer: Answer) -> None:
            time.sleep(answer.delay)
            if answer.early_hints:
                for _ in range(1000):
                    self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
                    self.wfile.flush()
                    time.sleep(answer.early_hints)
                return
            lines = [f"HTTP/1.1 {answer.status} {self.responses.get(answer.status, ('Other',))[0]}"]
            lines += [f"{name}: {value}" for name, value in answer.headers]
            lines.append(f"Content-Length: {len(answer.body)}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if answer.trickle_head:
                _slowly(self.wfile, head, answer.trickle_head)
            else:
                self.wfile.write(head)
            if answer.trickle:
                _slowly(self.wfile, answer.body, answer.trickle)
            else:
                self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def document_host(tmp: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> Iterator[DocumentHost]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``names`` from a fresh test CA."""
    ca = trustme.CA()
    cert = ca.issue_cert(*names)
    ca_file = tmp / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    host = DocumentHost(server, ca_file, names[0] if ":" not in names[0] else f"[{names[0]}]")
    server.RequestHandlerClass = _handler(host)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def silent_host() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that takes connections (the kernel completes them) and never sends
    a byte: a TLS handshake with it never ends. Yields the port."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield int(listener.getsockname()[1])
