"""Run the real ``kavach`` command for a test: ``kavach serve`` on a free loopback port with a
temporary database, plus the one-shot ``kavach users add`` / ``kavach clients add`` commands,
and :class:`Cli` to run any command and check its outcome (``ok``: exit 0; ``bad``: exit 2).

Every process is started with a timeout and always stopped (terminate, then kill) when the
``with`` block ends, pass or fail; its output is kept for failure messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kavach_command() -> list[str]:
    """The ``kavach`` console script of this interpreter's environment (or its module)."""
    script = Path(sys.executable).with_name("kavach")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kavach"]


def run_kavach(
    args: Sequence[str], *, env: dict[str, str], stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``kavach`` command to completion, whatever its exit status."""
    return subprocess.run(
        [*kavach_command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=COMMAND_TIMEOUT,
        check=False,
        cwd=cwd,
    )


def kavach(args: Sequence[str], *, env: dict[str, str], stdin: str | None = None) -> str:
    """Run one ``kavach`` command to completion; its stdout, or an AssertionError with both streams."""
    proc = run_kavach(args, env=env, stdin=stdin)
    if proc.returncode != 0:
        raise AssertionError(f"kavach {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Cli:
    """``kavach`` commands run in ``default_env()`` unless given ``env=``, checked by outcome."""

    def __init__(self, default_env: Callable[[], dict[str, str]]) -> None:
        self.default_env = default_env

    def run(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run_kavach(args, env=env if env is not None else self.default_env(), stdin=stdin, cwd=cwd)

    def ok(self, args: Sequence[str], **kwargs: Any) -> str:
        """Success: exit 0, no traceback; the stdout."""
        proc = self.run(args, **kwargs)
        assert proc.returncode == 0, f"kavach {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        return proc.stdout

    def bad(self, args: Sequence[str], expect: str, **kwargs: Any) -> str:
        """Bad input: exit 2, one line on stderr containing ``expect``, no traceback; that line."""
        proc = self.run(args, **kwargs)
        assert proc.returncode == 2, f"kavach {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
        assert "Traceback" not in proc.stderr
        assert expect.lower() in lines[0].lower(), lines[0]
        return lines[0]


class Served:
    """A running ``kavach serve``."""

    def __init__(self, port: int, db: str, env: dict[str, str], proc: subprocess.Popen[str], log: Path) -> None:
        self.port = port
        self.db = db
        self.env = env
        self.proc = proc
        self.log = log
        self.issuer = f"http://127.0.0.1:{port}"
        self.mcp_url = f"{self.issuer}/mcp"

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def add_user(self, name: str, password: str) -> None:
        kavach(["users", "add", name, "--db", self.db, "--password-stdin"], env=self.env, stdin=password + "\n")

    def add_public_client(self, name: str, redirect_uri: str) -> str:
        """Pre-register a public client; its client_id (the last word ``kavach clients add`` prints
        on the line naming it, or its only output)."""
        out = kavach(["clients", "add", "--db", self.db, "--name", name, "--redirect-uri", redirect_uri], env=self.env)
        return parse_client_id(out)


def parse_client_id(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        lowered = line.lower()
        if "client_id" in lowered or "client id" in lowered:
            return line.replace("=", " ").replace(":", " ").split()[-1].strip("'\"")
    if len(lines) == 1 and len(lines[0].split()) == 1:
        return lines[0]
    raise AssertionError(f"cannot find the client_id in `kavach clients add` output:\n{output}")


@contextmanager
def serve(
    tmp: Path | None = None,
    *,
    config_toml: str | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> Iterator[Served]:
    """``kavach serve --port <free> --db <tmp>/kavach.db`` until the block ends; ``command``
    replaces ``kavach`` (a launcher that patches it first, say)."""
    with tempfile.TemporaryDirectory(prefix="kavach-serve-", dir=tmp) as work:
        workdir = Path(work)
        db = str(workdir / "kavach.db")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAVACH_")}
        env.update(extra_env or {})
        if config_toml is not None:
            config = workdir / "kavach.toml"
            config.write_text(config_toml)
            env["KAVACH_CONFIG"] = str(config)
        log = workdir / "serve.log"
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = free_port()
            with open(log, "w") as sink:
                proc = subprocess.Popen(
                    [*(command or kavach_command()), "serve", "--port", str(port), "--db", db, *extra_args],
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                    text=True,
                )
            served = Served(port, db, env, proc, log)
            try:
                if wait_ready(proc, served.issuer):
                    yield served
                    return
                last_error = served.output()
            finally:
                stop(proc)
        raise AssertionError(f"kavach serve did not start:\n{last_error}")


def wait_ready(proc: subprocess.Popen[str], base: str) -> bool:
    """Whether ``kavach serve`` at ``base`` answers its metadata before it exits or times out."""
    deadline = time.monotonic() + START_TIMEOUT
    url = f"{base}/.well-known/oauth-authorization-server"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@contextmanager
def mcp_upstream(tmp: Path) -> Iterator[tuple[str, Path]]:
    """tests/mcp_upstream.py (an MCP SDK server) on a free loopback port until the block ends: its
    URL, and the file where it logs each request it receives (emptied once it answers)."""
    seen = tmp / "upstream-requests.log"
    log = tmp / "upstream.log"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("mcp_upstream.py")), str(port), str(seen)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the upstream MCP server exited:\n{log.read_text()}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the upstream MCP server did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        seen.write_text("")
        yield url, seen
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a server process: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
