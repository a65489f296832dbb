"""Start the independent servers the conformance kit is compared with: the Authlib peer
(tests/peers/authlib_server.py) and node-oidc-provider (tests/peers/oidc_provider/, pinned by its
package-lock.json, installed with ``npm ci`` on the project-local Node 22 of tests/node_env.py).

Used by tests/test_conformance_peers.py and conformance/compare.py. Each server listens on a free
loopback port and is always stopped when the ``with`` block ends.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import node_env
from kavach_serve import free_port

PEERS = Path(__file__).resolve().parent / "peers"
OIDC_PROJECT = PEERS / "oidc_provider"
_OIDC_STAMP = OIDC_PROJECT / "node_modules" / ".kavach-lock-sha256"


@contextmanager
def _process(cmd: list[str], issuer: str, env: dict[str, str], log: Path) -> Iterator[str]:
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(issuer + "/.well-known/openid-configuration", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{cmd} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield issuer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def authlib_server(workdir: Path) -> Iterator[str]:
    """The Authlib peer; yields its issuer."""
    port = free_port()
    env = dict(os.environ, AUTHLIB_INSECURE_TRANSPORT="1")
    cmd = [sys.executable, str(PEERS / "authlib_server.py"), "--port", str(port)]
    with _process(cmd, f"http://127.0.0.1:{port}", env, workdir / "authlib.log") as issuer:
        yield issuer


def ensure_oidc_provider() -> dict[str, str]:
    """Node 22 and ``npm ci`` of tests/peers/oidc_provider (skipped when already done)."""
    node_env.ensure_node()
    environ = node_env.env()
    with node_env._locked():
        digest = hashlib.sha256((OIDC_PROJECT / "package-lock.json").read_bytes()).hexdigest()
        if not (_OIDC_STAMP.exists() and _OIDC_STAMP.read_text().strip() == digest):
            node_env._run([node_env.npm(), "ci", "--no-audit", "--no-fund"], OIDC_PROJECT, environ)
            _OIDC_STAMP.write_text(digest + "\n")
    return environ


@contextmanager
def oidc_provider(workdir: Path, environ: dict[str, str]) -> Iterator[str]:
    """node-oidc-provider; yields its issuer (its resource indicator is ``<issuer>/mcp``)."""
    port = free_port()
    cmd = [node_env.node(), str(OIDC_PROJECT / "server.mjs"), str(port)]
    with _process(cmd, f"http://127.0.0.1:{port}", environ, workdir / "oidc-provider.log") as issuer:
        yield issuer


def oidc_provider_version() -> str:
    import json

    return str(json.loads((OIDC_PROJECT / "node_modules" / "oidc-provider" / "package.json").read_text())["version"])
