"""Every benchmark runs once at tiny size, so none of them rots. No timing assertions: only that
each produces well-formed results (the keys are there, the numbers are positive)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import __main__ as bench  # noqa: E402


def _positive_spread(value: dict[str, float]) -> None:
    assert set(value) == {"median", "min", "max"}
    assert 0 < value["min"] <= value["median"] <= value["max"]


def _timed(result: dict[str, Any], variants: set[str]) -> None:
    assert variants <= set(result)
    for entry in result.values():
        _positive_spread(entry["seconds"])
        _positive_spread(entry["ratio"])
        assert entry["ops_per_s"] > 0


def test_verification_and_flows_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "a,b,c", "--out", str(tmp_path)])
    assert set(results["first_sight"]) == {"ES256", "RS256", "EdDSA"}
    for per_alg in results["first_sight"].values():
        _timed(per_alg, {"raw cryptography", "kavach", "pyjwt", "joserfc"})
    _timed(results["repeat_sight"]["ES256"], {"pyjwt.decode", "cache hit", "cache hit + revocation check"})
    _timed(results["as_flows"], {"kavach", "Authlib (Flask integration)", "MCP SDK handlers"})
    assert all(r["flows_per_s"] > 0 for r in results["as_flows"].values())
    written = json.loads((tmp_path / "quick.json").read_text())
    assert written["machine"]["nproc"] >= 1 and written["table"]


def test_http_at_tiny_size(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        message = "wrk is not installed (tests/setup_system_packages.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    results = bench.main(["--quick", "--only", "d", "--out", str(tmp_path)])
    assert set(results["http"]["workers"]) == {"1", "2"}
    for summary in results["http"]["workers"].values():
        assert "no guard (ceiling)" in summary and "kavach, repeat token" in summary
        for entry in summary.values():
            _positive_spread(entry["rps"])
            assert entry["requests"] > 0
        assert summary["kavach, repeat token"]["non_2xx"] == 0


def test_scale_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "e", "--out", str(tmp_path)])
    scale = results["scale"]
    assert scale["large"] > scale["small"] > 0
    for backend in ("sqlite", "postgres"):
        data = scale[backend]
        if "skipped" in data:
            assert backend == "postgres"
            continue
        assert data["bytes_per_grant"] > 0
        for kind in ("verify", "verify, first sight", "refresh"):
            _timed(data["latency"][kind], {"small", "large"})


def test_protocol_at_tiny_size(tmp_path: Path) -> None:
    results = bench.main(["--quick", "--only", "f", "--out", str(tmp_path)])
    part = results["protocol"]
    assert part["protocol"].startswith("uvicorn.protocols.http.")
    apps = part["apps"]
    _timed(apps, {"no guard (ceiling)", "kavach, repeat token", "kavach, first-sight tokens"})
    for entry in apps.values():
        _positive_spread(entry["throughput_ratio"])
        assert entry["non_2xx"] == 0  # every guard let the valid token through
        assert entry["responses"] == part["batch"] * 3  # one warm-up batch and two rounds, each answered
    assert apps["no guard (ceiling)"]["throughput_ratio"]["median"] == 1.0
