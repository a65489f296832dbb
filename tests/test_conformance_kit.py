"""The conformance kit (conformance/, ``kavach conformance``) against kavach and against kavach
with one defect injected each: every applicable rule passes on the real server, and each defect
is reported under the rule id it breaks.

The defective servers are the real ``kavach serve`` started through tests/conformance_defects.py,
which monkeypatches one core function in the server process and adds a second protected resource
(``/other-mcp``) so tokens minted for another resource exist (RS-04).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kavach_conformance import KitOptions, run_kit
from kavach_conformance.report import FAIL, NA, PASS
from kavach_conformance.rules import OBSERVABLE
from kavach_serve import Served, free_port, kavach_command, serve

LAUNCHER = Path(__file__).with_name("conformance_defects.py")
USER, PASSWORD = "alice", "conformance-pw-1"


@contextmanager
def defective(defect: str) -> Iterator[Served]:
    """``kavach serve`` with ``defect`` injected, on a free port with a temporary database."""
    with serve(command=[sys.executable, str(LAUNCHER), defect]) as served:
        served.add_user(USER, PASSWORD)
        yield served


def kit(served: Served, *, other: bool = True, stateful: int = 0) -> KitOptions:
    return KitOptions(
        issuer=served.issuer,
        resource=served.mcp_url,
        other_resource=served.issuer + "/other-mcp" if other else None,
        register=True,
        username=USER,
        password=PASSWORD,
        redirect_port=free_port(),
        stateful_examples=stateful,
        stateful_steps=8,
    )


def test_kit_command_passes_every_applicable_rule_against_kavach_serve(tmp_path: Path) -> None:
    """CI gate: ``kavach conformance`` against ``kavach serve``: every observable rule passes
    (RS-04 needs a second resource, which plain ``kavach serve`` does not have), and so does the
    stateful test. The person step here is a callable (``--person``, tests/conformance_person.py);
    the other tests use the kit's built-in form filler."""
    report_path = tmp_path / "report.json"
    with serve() as served:
        served.add_user(USER, PASSWORD)
        proc = subprocess.run(
            [
                *kavach_command(),
                "conformance",
                "--issuer",
                served.issuer,
                "--resource",
                served.mcp_url,
                "--register",
                "--person",
                "conformance_person:step",
                "--redirect-port",
                str(free_port()),
                "--stateful",
                "4",
                "--json",
                str(report_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
            check=False,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stateful: pass" in proc.stdout
    report = json.loads(report_path.read_text())
    statuses = {r["rule"]: r["status"] for r in report["rules"]}
    assert statuses["RS-04"] == NA
    assert {rule for rule in OBSERVABLE if statuses[rule] != PASS} == {"RS-04"}, proc.stdout
    assert report["stateful"]["status"] == PASS


def test_kit_baseline_with_a_second_resource_passes_everything() -> None:
    """The launcher without a defect: every observable rule passes, RS-04 included."""
    with defective("none") as served:
        report = run_kit(kit(served))
    assert [r.rule for r in report.rules() if r.rule in OBSERVABLE and r.status != PASS] == [], report.table()


DEFECTS = [
    ("pkce_unchecked", "TK-03"),
    ("redirect_prefix", "AZ-03"),
    ("refresh_not_rotated", "TK-07"),
    ("code_reusable", "TK-04"),
    ("wrong_audience", "TK-06"),
    ("audience_ignored", "RS-04"),
    ("iss_missing", "AZ-08"),
]


@pytest.mark.parametrize(("defect", "rule"), DEFECTS, ids=[d for d, _ in DEFECTS])
def test_kit_reports_an_injected_defect_under_its_rule(defect: str, rule: str) -> None:
    with defective(defect) as served:
        report = run_kit(kit(served))
    assert report.status(rule) == FAIL, report.table()


@pytest.mark.parametrize(("defect", "rule"), [("code_reusable", "TK-04"), ("refresh_not_rotated", "TK-07")])
def test_stateful_test_finds_and_shrinks_a_defect(defect: str, rule: str) -> None:
    """The hypothesis state machine alone finds the defect and reports a short HTTP sequence."""
    from kavach_conformance.runner import make_session
    from kavach_conformance.stateful import run_stateful

    with defective(defect) as served:
        session = make_session(kit(served))
        try:
            result = run_stateful(session, examples=40, steps=8, derandomize=True)
        finally:
            session.http.close()
    assert result["status"] == FAIL, result
    assert rule in result["rules"], result
    assert 0 < len(result["exchanges"]) <= 20, result["exchanges"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--issuer", "http://[::1"], "'http://[::1' is not a valid URL"),
        (["--issuer", ""], "'' is not an http(s) URL"),
        (["--issuer", "http://127.0.0.1:9", "--resource", "http://[x/mcp"], "is not a valid URL"),
        (["--issuer", "http://127.0.0.1:9", "--json", "/nonexistent-dir/report.json"], "--json"),
        (["--issuer", "http://127.0.0.1:9", "--json", "/tmp"], "--json"),
        (["--issuer", "http://127.0.0.1:9", "--stateful", "1", "--stateful-steps", "0"], "--stateful-steps"),
        (["--issuer", "http://127.0.0.1:9", "--redirect-port", "99999"], "--redirect-port 99999"),
        (["--issuer", "http://127.0.0.1:9", "--person", "no_such_module_here:step"], "no_such_module_here"),
    ],
)
def test_kit_options_it_cannot_use_are_one_line_before_any_request(args: list[str], expect: str) -> None:
    """Checked before the kit contacts anything (port 9 would refuse the connection otherwise)."""
    proc = subprocess.run(
        [*kavach_command(), "conformance", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert expect in proc.stderr, proc.stderr
