"""A small HTTPS server on loopback that publishes client ID metadata documents for tests.

Its certificate comes from a test certificate authority made with ``trustme``; the CA's PEM is
written to a file so a fetcher (or ``kavach serve --document-ca-bundle``) can be told to trust
it. Each path answers with a :class:`Answer`; every request is recorded.
"""

from __future__ import annotations

import json
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


class DocumentHost:
    """The running server: ``url(path)``, ``answers[path]``, ``requests`` (paths, in order)."""

    def __init__(self, server: ThreadingHTTPServer, ca_file: Path, name: str) -> None:
        self.server = server
        self.ca_file = ca_file
        self.name = name
        self.port = int(server.server_address[1])
        self.answers: dict[str, Answer] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def url(self, path: str, host: str | None = None) -> str:
        return f"https://{host or self.name}:{self.port}{path}"

    def publish(self, path: str, document: dict[str, Any], **kwargs: Any) -> str:
        """Serve ``document`` as JSON at ``path``; returns its URL on this host."""
        self.answers[path] = Answer(body=json.dumps(document).encode(), **kwargs)
        return self.url(path)

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


def _handler(host: DocumentHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            host.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            answer = host.answers.get(self.path, Answer(404, b"{}"))
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            try:
                if answer.trickle:
                    for i in range(len(answer.body)):
                        self.wfile.write(answer.body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(answer.trickle)
                else:
                    self.wfile.write(answer.body)
            except OSError:
                pass

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
