"""The examples run as real programs (issue 2: a host without HTTP)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_host_runs_the_whole_flow_without_http() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded_host.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for step in (
        "client registered",
        "code redeemed",
        "tools/call delete refused: insufficient_scope",
        "refresh rotated",
        "access token of the revoked grant refused",
    ):
        assert f"ok   {step}" in done.stdout
    assert "embedded flow complete" in done.stdout
