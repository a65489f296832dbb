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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from kavach_conformance import KitOptions, Report, run_kit
from kavach_conformance.report import FAIL, NA, PASS
from kavach_conformance.rules import OBSERVABLE
from kavach_serve import Served, free_port, kavach_command, serve

LAUNCHER = Path(__file__).with_name("conformance_defects.py")
USER, PASSWORD = "alice", "conformance-pw-1"

# Under an http issuer (kavach serve's default) a sign-in is good for one authorization only, so
# the kit's person signs in at every authorization, and kavach counts successful sign-ins against
# its per-address limit (by default 50 per 15 minutes, then 429). A kit run signs in 29 times (30
# with /other-mcp); the stateful test once per authorize step, hypothesis's shrinking replays
# included: from about 50 to several hundred in the tests below (some 560 in one token_html run). Every
# server started here allows far more; none of these tests is about the sign-in limit.
SIGN_IN = """
[sign_in]
per_address = 10000
"""


@contextmanager
def defective(defect: str) -> Iterator[Served]:
    """``kavach serve`` with ``defect`` injected, on a free port with a temporary database."""
    with serve(command=[sys.executable, str(LAUNCHER), defect], config_toml=SIGN_IN) as served:
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
    with serve(config_toml=SIGN_IN) as served:
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
    # The callable's post step took the authorization request sent by POST to its end: a code,
    # not only the POST's first answer (tests/conformance_person.py).
    checks = [c for r in report["rules"] for c in r["checks"]]
    [by_post] = [c for c in checks if c["name"] == "valid request by POST proceeds as by GET"]
    assert by_post["status"] == PASS and "'code'" in by_post["reason"], by_post


def test_kit_baseline_with_a_second_resource_passes_everything() -> None:
    """The launcher without a defect: every observable rule passes, RS-04 included."""
    with defective("none") as served:
        report = run_kit(kit(served))
    assert [r.rule for r in report.rules() if r.rule in OBSERVABLE and r.status != PASS] == [], report.table()


def test_with_indicator_only_the_rules_checked_at_the_resource_are_not_applicable() -> None:
    """``--indicator-only``: ``--resource`` names a resource indicator and nothing is served there, so
    its metadata (MD-03) and the guard's rules (RS-02) are n/a, not failures and not passes; the
    authorization server's own rules are checked as ever."""
    with defective("none") as served:
        report = run_kit(quick(served, resource_served=False))
    assert (report.status("MD-03"), report.status("RS-02")) == (NA, NA), report.table()
    assert report.failed() == [] and report.status("TK-03") == PASS, report.table()


DEFECTS = [
    ("pkce_unchecked", "TK-03"),
    ("redirect_prefix", "AZ-03"),
    ("refresh_not_rotated", "TK-07"),
    ("code_reusable", "TK-04"),
    ("wrong_audience", "TK-06"),
    ("audience_ignored", "RS-04"),
    ("iss_missing", "AZ-08"),
    ("auth_bypass", "TK-02"),
    ("redirect_nocase", "AZ-03"),
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
        (["--issuer", "http://127.0.0.1:9", "--stateful-shrink", "-1"], "--stateful-shrink -1 is not"),
        (["--issuer", "http://127.0.0.1:9", "--stateful-shrink", "3601"], "--stateful-shrink 3601 is not"),
        (["--issuer", "http://127.0.0.1:9", "--person", "no_such_module_here:step"], "no_such_module_here"),
        (["--issuer", "http://127.0.0.1:9", "--redirect-uri", "callback"], "--redirect-uri 'callback' is not"),
        (["--issuer", "http://127.0.0.1:9", "--redirect-uri", "http://127.0.0.1/cb#f"], "is not an absolute URI"),
        (["--issuer", "http://127.0.0.1:9", "--redirect-uri", "https:///cb"], "--redirect-uri 'https:///cb' is not"),
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


# -- a server that misbehaves on the wire (tests/kit_defects.py) --------------------------------

KIT_DEFECTS = Path(__file__).with_name("kit_defects.py")


@contextmanager
def misbehaving(defect: str) -> Iterator[Served]:
    """``kavach serve`` answering some requests wrongly (``defect``, see tests/kit_defects.py)."""
    with serve(command=[sys.executable, str(KIT_DEFECTS), defect], config_toml=SIGN_IN) as served:
        served.add_user(USER, PASSWORD)
        yield served


HANG = 1.0
"""The kit's timeout in the tests about answers that never come, or come too slowly: each costs this long."""
STEADY = 5.0
"""The kit's timeout in the others. Every authorization signs in (an scrypt check: about 0.4 s here, over
1 s on a busy machine), and a sign-in answered later than the timeout would stop the checks it is part of."""


def quick(served: Served, *, timeout: float = STEADY, **changes: Any) -> KitOptions:
    """The kit's options for ``served`` with a short timeout (``HANG`` where the test waits out hangs)."""
    return attrs.evolve(kit(served, other=False), timeout=timeout, **changes)


def kit_command(served: Served, *args: str, timeout: float = STEADY) -> subprocess.CompletedProcess[str]:
    """``kavach conformance`` against ``served`` with a short timeout, to its end."""
    command = [*kavach_command(), "conformance", "--issuer", served.issuer, "--resource", served.mcp_url]
    command += ["--register", "--username", USER, "--password", PASSWORD, "--redirect-port", str(free_port())]
    command += ["--timeout", f"{timeout:g}", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def reason(report: Report, rule: str) -> str:
    return next(r.reason for r in report.rules() if r.rule == rule)


@pytest.mark.parametrize(("defect", "rule"), [("hang_plain", "AZ-05"), ("hang_token_replay", "TK-04")])
def test_no_answer_in_time_fails_the_rule_checked_and_says_so(defect: str, rule: str) -> None:
    with misbehaving(defect) as served:
        report = run_kit(quick(served, timeout=HANG))
    assert report.status(rule) == FAIL, report.table()
    shown = next(line for line in report.table().splitlines() if line.startswith(rule))
    assert ": stopped: no answer within 1 s (ReadTimeout)" in shown, report.table()


@pytest.mark.parametrize(("defect", "why"), [("reg_html", "no JSON object"), ("reg_noid", "no client_id")])
def test_a_registration_without_a_usable_record_fails_rg02(defect: str, why: str) -> None:
    """No client: RG-02 fails (every registration is shown), the checks needing a client are n/a."""
    with misbehaving(defect) as served:
        proc = kit_command(served)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rg02 = next(line for line in proc.stdout.splitlines() if line.startswith("RG-02"))
    assert "fail" in rg02 and "client_id missing" in rg02, proc.stdout
    assert "AZ-02   n/a     no client: its registration failed" in proc.stdout


def test_a_malformed_token_answer_fails_the_stateful_test() -> None:
    with misbehaving("token_html") as served:
        report = run_kit(quick(served, stateful_examples=10))
    assert report.stateful is not None and report.stateful["status"] == FAIL, report.stateful
    assert report.stateful["reason"].startswith("TK-01: a 200 token response without an access_token")
    assert report.status("TK-01") == FAIL


def test_a_random_refresh_answer_is_a_stateful_failure_not_a_flaky_error() -> None:
    """The server refuses a current refresh token at random, one time in two. 100 sequences: 20
    rotated as few as 0 times in some runs (no refresh of a live grant drawn at all, so nothing to
    find); 100 rotated 25 to 74 times against a correct server."""
    with misbehaving("refresh_flaky") as served:
        report = run_kit(quick(served, stateful_examples=100))
    assert report.stateful is not None and report.stateful["status"] == FAIL, report.stateful
    assert "TK-07" in report.stateful["rules"], report.stateful
    assert report.status("TK-07") == FAIL


def test_a_hang_in_the_stateful_test_keeps_the_report(tmp_path: Path) -> None:
    """The run stops at the first request without an answer (no shrinking replays of it); the
    table and the JSON report of every check group are still written."""
    report_path = tmp_path / "report.json"
    with misbehaving("hang_refresh") as served:
        proc = kit_command(served, "--stateful", "20", "--json", str(report_path), timeout=HANG)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stateful: fail: stopped: no answer within 1 s (ReadTimeout): POST" in proc.stdout, proc.stdout
    report = json.loads(report_path.read_text())
    # Stopped at once: shrinking would replay the hang (and every sign-in before it) many times.
    # A single pass takes 10 to 30 s here, most of it the sign-in of every authorization (an scrypt
    # check each, under an http issuer), so the bound is loose, and well under the replays' cost.
    assert report["stateful"]["status"] == FAIL and report["stateful"]["seconds"] < 90, report["stateful"]
    assert {r["rule"]: r["status"] for r in report["rules"]}["TK-03"] == PASS


def test_tk07_is_credited_by_the_stateful_test_only_after_a_rotation() -> None:
    with misbehaving("no_refresh") as served:
        report = run_kit(quick(served, stateful_examples=2))
    assert report.stateful is not None and report.stateful["status"] == PASS, report.stateful
    assert report.status("TK-07") == NA, report.table()


def test_a_person_step_that_fails_decides_no_redirect_rule() -> None:
    """A person who cannot get a code for a valid request proves nothing by not getting one for a
    bad request: AZ-01..AZ-04 are n/a, not passed. This one fails the first authorization only (the
    redirect checks' valid request); later ones end at the redirect URI with a code of sorts, as a
    run where no authorization ever ends with a code stops the kit instead."""
    calls: list[str] = []

    def person(url: str, redirect_uri: str) -> str:
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("cannot sign in")
        return redirect_uri + "?code=conformance-not-a-code"

    with defective("none") as served:
        report = run_kit(quick(served, person=person))
    for rule in ("AZ-02", "AZ-03"):
        assert report.status(rule) == NA, report.table()
        assert "could not complete the person step" in reason(report, rule)


def test_no_authorization_ending_with_a_code_stops_the_kit() -> None:
    """A person step that never ends with a code (a sign-in that never works) made every check needing
    a code n/a, and the run ended 0 as if it had passed: the kit stops with one line saying why. The
    checks that need no code still decide their rules (TK-08 here, its group run alone)."""
    from kavach_conformance.checks import check_token_endpoint
    from kavach_conformance.http import KitError
    from kavach_conformance.runner import make_session
    from kavach_conformance.session import Skip

    def person(url: str, redirect_uri: str) -> str:
        raise RuntimeError("cannot sign in")

    with serve(config_toml=SIGN_IN) as served:
        served.add_user(USER, PASSWORD)
        with pytest.raises(KitError) as stopped:
            run_kit(quick(served, person=person))
        session = make_session(quick(served, person=person))
        checks: list[tuple[str, str, bool | None, str]] = []
        try:
            with pytest.raises(Skip, match="could not obtain a code"):
                check_token_endpoint(session, lambda *check: checks.append(check))
        finally:
            session.http.close()
    expect = "could not complete any authorization: stayed on the server (RuntimeError: cannot sign in)"
    assert str(stopped.value) == expect
    tk08 = [check for check in checks if check[0] == "TK-08"]
    assert len(tk08) == 4 and all(check[2] is True for check in tk08), checks


def test_a_refused_sign_in_stops_the_kit_at_its_first_try() -> None:
    """A wrong password: the built-in person sent the sign-in form again each time it came back (6 times
    an authorization, its 12 pages), so kavach's per-account limit (10 in 15 minutes) answered 429 within
    the run and kept the account locked. It stops when the form it sent the password in comes back: one
    failed sign-in a run, one line saying so, and the right password then signs in and ends with a code."""
    from kavach_conformance.runner import make_session

    wrong = "not-" + PASSWORD
    with serve(config_toml=SIGN_IN) as served:  # the default per-account limit
        served.add_user(USER, PASSWORD)
        for _ in range(3):
            proc = kit_command(served, "--password", wrong)
            assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
            assert proc.stderr == (
                "kavach conformance: the sign-in was refused, its form shown again:"
                f" {served.issuer}/authorize/consent (check --username and --password)\n"
            ), proc.stderr
        session = make_session(quick(served))
        try:
            _, _, outcome = session.code(session.client())
        finally:
            session.http.close()
    assert outcome.one("code") and session.authorized, outcome.describe()


def test_rate_limiting_of_any_registration_stops_the_kit() -> None:
    with misbehaving("reg_429_third") as served:
        proc = kit_command(served)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "/register answered 429" in proc.stderr, proc.stderr


def test_server_text_cannot_reach_the_terminal_raw(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    with misbehaving("escape") as served:
        proc = kit_command(served, "--json", str(report_path))
    assert "\x1b" not in proc.stdout and "\\x1b[2J" in proc.stdout, proc.stdout
    assert not any(line.startswith("AZ-02   pass    injected") for line in proc.stdout.splitlines())
    assert "\x1b[2J" in report_path.read_text(encoding="utf-8").encode().decode("unicode_escape")


@pytest.mark.parametrize(
    ("defect", "expect"), [("huge_meta", "answer larger than 1048576 bytes"), ("trickle_meta", "no whole answer")]
)
def test_an_answer_too_large_or_too_slow_is_not_read_whole(defect: str, expect: str) -> None:
    """The RFC 8414 document (the kit goes on with OIDC discovery's): MD-01 fails, its reason saying the
    answer was cut off at the size bound or at the kit's deadline for the whole exchange."""
    with misbehaving(defect) as served:
        report = run_kit(quick(served, timeout=HANG))
    assert report.status("MD-01") == FAIL and expect in reason(report, "MD-01"), report.table()


def test_an_unreachable_issuer_says_why() -> None:
    proc = subprocess.run(
        [*kavach_command(), "conformance", "--issuer", f"http://127.0.0.1:{free_port()}", "--register"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "ConnectError" in proc.stderr, proc.stderr
    assert proc.stderr.count("/.well-known/oauth-authorization-server") == 1, proc.stderr


def test_person_module_in_the_current_directory_and_module_run(tmp_path: Path) -> None:
    """``--person mod:fn`` finds mod.py in the current directory; ``python -m kavach_conformance``
    runs the kit (here both stop at the unreachable issuer, after loading the person)."""
    (tmp_path / "kit_person_here.py").write_text("def step(url, redirect_uri):\n    return redirect_uri\n")
    issuer = f"http://127.0.0.1:{free_port()}"
    for command in ([*kavach_command(), "conformance"], [sys.executable, "-m", "kavach_conformance"]):
        proc = subprocess.run(
            [*command, "--issuer", issuer, "--person", "kit_person_here:step"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=tmp_path,
        )
        assert proc.returncode == 2 and "no authorization server metadata found" in proc.stderr, proc.stderr


def test_an_abbreviated_option_is_not_taken_for_the_option_it_begins() -> None:
    """``--issue URL`` is no ``--issuer URL`` to either command: the kit says --issuer is missing and never
    asks the URL for metadata."""
    issuer = f"http://127.0.0.1:{free_port()}"
    for command in ([*kavach_command(), "conformance"], [sys.executable, "-m", "kavach_conformance"]):
        proc = subprocess.run([*command, "--issue", issuer], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and "required: --issuer" in proc.stderr, proc.stderr
        assert "metadata" not in proc.stderr


# -- answers the kit could not read, and defects it used to pass ---------------------------------


@contextmanager
def raw_server(answer: Callable[[socket.socket, int], None]) -> Iterator[str]:
    """A loopback TCP server running ``answer(connection, port)`` for each connection; its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn, port), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def send_json(conn: socket.socket, body: bytes, status: bytes = b"200 OK") -> None:
    with conn:
        try:
            conn.recv(65536)
            head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
            conn.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        except OSError:
            pass


def trickle_headers(conn: socket.socket, port: int) -> None:
    """A status line, then header lines one byte every 0.2 s, never ending."""
    with conn:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while True:
                for byte in b"X-Pad: a\r\n":
                    conn.sendall(bytes([byte]))
                    time.sleep(0.2)
        except OSError:
            pass


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kavach_command(), "conformance", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_headers_trickled_past_the_timeout_are_no_answer() -> None:
    """The deadline covers connecting, the headers and the body: headers arriving a byte at a time
    (each read well within the timeout) end the exchange at --timeout (here two discovery URLs)."""
    with raw_server(trickle_headers) as base:
        started = time.monotonic()
        proc = run_cli("--issuer", base, "--register", "--timeout", "1", timeout=30)
    assert time.monotonic() - started < 15
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.count("no whole answer within 1 s (still sending)") == 2, proc.stderr


def encoded_answer(body: bytes, coding: str, heard: list[bytes]) -> Callable[[socket.socket, int], None]:
    """A raw server's answer: ``body`` sent as ``Content-Encoding: coding``; each request kept in ``heard``."""

    def answer(conn: socket.socket, port: int) -> None:
        with conn:
            try:
                heard.append(conn.recv(65536))
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: {coding}\r\n"
                conn.sendall(head.encode() + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            except OSError:
                pass

    return answer


def test_a_compressed_answer_is_held_to_the_size_limit_once_decoded() -> None:
    """The 1 MiB limit holds for what an answer decodes to: 64 kB of gzip decoding to 64 MiB is
    refused having decoded little more than 1 MiB (httpx's own decoding inflates each chunk it reads
    whole). The kit asks for no coding; one gzip or deflate is read all the same, stacked or unknown
    codings (with a body to decode) are no answer."""
    import gzip
    import tracemalloc
    import zlib

    from kavach_conformance.http import Http, NoAnswer

    doc = json.dumps({"issuer": "https://as.example"}).encode()
    bomb = gzip.compress(b"\0" * (64 << 20), 9)
    cases: list[tuple[str, bytes, bytes | str]] = [
        ("gzip", gzip.compress(doc), doc),
        ("deflate", zlib.compress(doc), doc),
        ("br", b"", b""),  # nothing to decode
        ("gzip", bomb, "answer larger than 1048576 bytes"),
        ("gzip, gzip", gzip.compress(gzip.compress(doc)), "Content-Encoding 'gzip, gzip', which the kit does not"),
        ("br", doc, "Content-Encoding 'br'"),
        ("gzip", doc, "answer not readable as gzip"),
    ]
    for coding, body, expect in cases:
        heard: list[bytes] = []
        with raw_server(encoded_answer(body, coding, heard)) as base:
            http = Http([base], timeout=5)
            tracemalloc.start()
            try:
                if isinstance(expect, bytes):
                    assert http.request("GET", base + "/meta").content == expect, coding
                else:
                    with pytest.raises(NoAnswer, match=expect):
                        http.request("GET", base + "/meta")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                http.close()
        assert peak < 8 << 20, f"{coding}: {peak} bytes allocated"
        assert b"\r\naccept-encoding: identity\r\n" in heard[0].lower(), heard


def test_basic_credentials_are_form_urlencoded_in_every_basic_request() -> None:
    """TK-02, IN-01 (RFC 6749 §2.3.1): client_id and secret are form-urlencoded before Basic, so a
    secret with ``+``, ``%`` or ``:`` reaches a server decoding them as the RFC says unchanged."""
    import base64

    from kavach_conformance.http import Http
    from kavach_conformance.session import Client, Session

    heard: list[bytes] = []
    client = Client("kit:client é", "http://127.0.0.1:9/cb", "s+c%2B/r=t: x", "client_secret_basic")
    with raw_server(encoded_answer(b"{}", "identity", heard)) as base:
        http = Http([base], timeout=5)
        session = Session(http, issuer=base, resource=None, other_resource=None, person=lambda u, r: r, redirect_uri="")
        session.meta = {f"{name}_endpoint": f"{base}/{name}" for name in ("token", "revocation", "introspection")}
        session.confidential = client
        try:
            session.token_request(client, {"grant_type": "refresh_token", "refresh_token": "r"})
            session.revoke(client, "t")
            session.introspection("t")
        finally:
            http.close()
    sent = [line for request in heard for line in request.split(b"\r\n") if line.lower().startswith(b"authorization:")]
    decoded = {base64.b64decode(line.split()[-1]).decode() for line in sent}
    assert len(sent) == 3 and decoded == {"kit%3Aclient+%C3%A9:s%2Bc%252B%2Fr%3Dt%3A+x"}, sent


@pytest.mark.parametrize("status", [b"401 Unauthorized", b"403 Forbidden"])
def test_introspection_kept_for_resource_servers_is_not_applicable(status: bytes) -> None:
    """IN-01: RFC 7662 §4 lets a server decide who may introspect; one refusing the kit's own
    authenticated client (keeping introspection for its resource servers) is n/a, not a failure."""
    from kavach_conformance.checks import check_introspection
    from kavach_conformance.http import Http
    from kavach_conformance.session import Client, Session, Skip

    refusal = json.dumps({"error": "invalid_client"}).encode()
    with raw_server(lambda conn, port: send_json(conn, refusal, status)) as base:
        http = Http([base], timeout=5)
        session = Session(http, issuer=base, resource=None, other_resource=None, person=lambda u, r: r, redirect_uri="")
        session.meta = {"introspection_endpoint": base + "/introspect"}
        session.confidential = Client("kit", "http://127.0.0.1:9/cb", "secret", "client_secret_basic")
        checks: list[tuple[str, str, bool | None, str]] = []
        try:
            with pytest.raises(Skip, match=r"refused the kit's own authenticated client \(4.*RFC 7662 §4"):
                check_introspection(session, lambda *check: checks.append(check))
        finally:
            http.close()
    assert checks == []


def test_json_nested_too_deeply_is_unreadable_not_a_traceback() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with raw_server(lambda conn, port: send_json(conn, deep)) as base:
        proc = run_cli("--issuer", base, "--register", "--timeout", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "not a JSON object" in proc.stderr, proc.stderr


DEEP = [("deep_meta", "MD-01", "200, no JSON"), ("deep_register", "RG-02", "201, client_id missing")]


@pytest.mark.parametrize(("defect", "rule", "why"), DEEP)
def test_deeply_nested_answers_fail_the_rule_checked(defect: str, rule: str, why: str) -> None:
    with misbehaving(defect) as served:
        proc = kit_command(served)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith(rule))
    assert "fail" in line and why in line, proc.stdout


def test_an_unexpected_exception_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kavach_conformance import cli

    def broken(options: KitOptions) -> Report:
        raise RuntimeError("kit defect\nsecond line")

    monkeypatch.setattr(cli, "run_kit", broken)
    assert cli.main(["--issuer", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err == "kavach conformance: the kit stopped unexpectedly: RuntimeError: kit defect\\nsecond line\n", err


def test_register_with_unusable_metadata_says_what_is_wrong() -> None:
    def meta(conn: socket.socket, port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        doc = {"issuer": base, "authorization_endpoint": base + "/a", "token_endpoint": 5, "registration_endpoint": [1]}
        send_json(conn, json.dumps(doc).encode())

    with raw_server(meta) as base:
        proc = run_cli("--issuer", base, "--register", "--timeout", "2")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "registration_endpoint that is not a URL" in proc.stderr, proc.stderr
    assert "token_endpoint is not an http(s) URL" in proc.stderr and "no client" not in proc.stderr, proc.stderr


def test_a_refresh_token_that_is_not_a_string_fails_tk01_and_tk07_with_a_report() -> None:
    """The command prints its whole report (no traceback) and fails TK-01; the stateful test,
    made reproducible here, charges it to TK-01/TK-07 (the command's random sequences may not
    reach a refresh, so its stateful line is not asserted)."""
    from kavach_conformance.runner import make_session
    from kavach_conformance.stateful import run_stateful

    with misbehaving("refresh_int") as served:
        proc = kit_command(served, "--stateful", "3", "--stateful-shrink", "5")
        session = make_session(attrs.evolve(kit(served, other=False), timeout=5.0))
        try:
            result = run_stateful(session, examples=10, steps=8, derandomize=True)
        finally:
            session.http.close()
    assert proc.returncode == 1 and "\nstateful: " in proc.stdout, proc.stdout + proc.stderr
    assert "Hypothesis" not in proc.stdout + proc.stderr, proc.stdout
    lines = {line[:5]: line for line in proc.stdout.splitlines() if line[:3] in ("TK-", "RS-")}
    assert "fail" in lines["TK-01"] and "fail" not in lines["RS-01"], proc.stdout
    assert result["status"] == FAIL, result
    assert result["reason"].startswith("TK-01/TK-07: the token response's refresh_token is not a string"), result


def test_an_unexpected_exception_in_the_stateful_test_is_a_stopped_failure() -> None:
    from kavach_conformance.runner import make_session
    from kavach_conformance.stateful import run_stateful

    def refresh(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("unusable answer")

    with defective("none") as served:
        session = make_session(quick(served))
        session.refresh = refresh  # type: ignore[method-assign]
        try:
            result = run_stateful(session, examples=30, steps=8, derandomize=True)
        finally:
            session.http.close()
    assert result["status"] == FAIL and result["reason"] == "stopped: TypeError: unusable answer", result


PROTOCOL_DEFECTS = [
    ("token_get_json", "TK-01", "GET refused (with a valid code): 200"),
    ("pkce_default_plain", "AZ-05", "redeemed with code_verifier == code_challenge"),
    ("html_redirect", "AZ-02", "unregistered redirect_uri: redirected to https://attacker"),
    ("no_post_authorize", "AZ-01", "valid request by POST proceeds as by GET: stayed on the server (405)"),
    ("meta_types", "MD-02", "jwks_uri is not an http(s) URL"),
    ("introspect_revoked", "RV-01", "access token of a revoked grant inactive"),
    ("introspect_revoked", "IN-01", "revoked token: active false"),
    ("scope_widened", "AZ-07", "granted 'tools:list tools:call"),
    ("second_rotation_refused", "TK-07", "second rotation: 400 error=invalid_grant"),
]


@pytest.mark.parametrize(("defect", "rule", "why"), PROTOCOL_DEFECTS, ids=[f"{d}-{r}" for d, r, _ in PROTOCOL_DEFECTS])
def test_kit_reports_a_protocol_defect_it_once_passed(defect: str, rule: str, why: str) -> None:
    with misbehaving(defect) as served:
        report = run_kit(quick(served))
    assert report.status(rule) == FAIL and why in reason(report, rule), report.table()


INJECTED_TOGETHER = [
    (
        "revoke_access_ignored",
        "RV-01",
        "revoked access token inactive: revocation 200; then introspection: active=True",
    ),
    ("introspect_public", "IN-01", "public client's client_id alone refused: 200, members ['active', 'client_id'"),
    ("cc_public", "TK-08", "grant_type=client_credentials for a public client: 200 error=None"),
    ("uris_unchecked", "RG-01", "logo_uri javascript scheme: 201"),
    ("uris_unchecked", "RG-01", "tos_uri over http: 201"),
    ("uris_unchecked", "RG-01", "policy_uri javascript scheme: 201"),
    ("no_cors_rest", "MD-04", "preflight registration endpoint: 204, Access-Control-Allow-Origin None"),
    ("no_cors_rest", "MD-04", "preflight revocation endpoint: 204, Access-Control-Allow-Origin None"),
    ("no_cors_rest", "MD-04", "preflight introspection endpoint: 204, Access-Control-Allow-Origin None"),
    ("no_cors_rest", "MD-04", "preflight JWKS: 204, Access-Control-Allow-Origin None"),
    ("challenge_no_scope", "RS-02", "no token: the challenge names the scope: scope=None"),
    ("token_text_html", "TK-01", "success is application/json: 200, Content-Type 'text/html; charset=utf-8'"),
    ("token_text_html", "TK-01", "error is application/json: 400, Content-Type 'text/html; charset=utf-8'"),
    ("revoke_any_client", "RV-01", "another client's refresh token not revoked: revoked by the second client: 200"),
    ("introspect_any_secret", "IN-01", "wrong Basic secret: 401 invalid_client: 200, members ['active'"),
    ("forbidden_no_metadata", "RS-03", "403 insufficient_scope, scope, resource_metadata: token scope"),
    ("refresh_any_client", "TK-07", "bound to the client: 200 error=None"),
    ("cors_authorize", "MD-04", "no CORS on authorize: Access-Control-Allow-Origin '*'"),
    ("iss_flag_off", "MD-02", "iss parameter flag: False"),
    ("iss_flag_off", "AZ-08", "metadata advertises iss: False"),
    ("token_cacheable", "TK-01", "success has Cache-Control: no-store: 200, Cache-Control None"),
    ("token_cacheable", "TK-01", "error has Cache-Control: no-store: Cache-Control None"),
    ("fragment_dropped", "RG-01", "redirect fragment: 201"),
    ("prm_query_bearer", "MD-03", "bearer_methods_supported: ['header', 'query'] (expected ['header'])"),
    ("query_token", "RS-01", "token in the query string ignored: "),
    ("revoke_unknown_refused", "RV-01", "unknown token: 200: 400"),
    ("prm_slash", "MD-03", "resource exact: resource "),
    ("oidc_slash", "MD-01", "openid-configuration issuer: issuer "),
    ("introspect_unknown", "IN-01", "unknown token: active false: 200 {'active': True}"),
    ("iss_dropped", "AZ-08", "iss on an error redirect: iss=None"),
    ("iss_dropped", "AZ-08", "iss on success: iss=None"),
    ("error_state_dropped", "AZ-08", "state on an error redirect: state=None"),
    ("state_decoded_twice", "AZ-08", "state verbatim: state='kit state/é %&=x'"),
    ("revoke_refresh_refused", "RV-01", "revoke refresh token: 200: 400"),
    ("revoke_refresh_refused", "RV-01", "revoke the confidential client's refresh token: 400"),
    ("unauthorized_no_metadata", "RS-02", "no token: 401 Bearer resource_metadata: 401"),
    ("unauthorized_no_metadata", "RS-02", "bad token: 401 invalid_token, resource_metadata, scope: 401"),
    ("token_no_challenge", "TK-02", "bad Basic secret: WWW-Authenticate Basic: WWW-Authenticate ''"),
    ("unknown_code_error", "TK-01", "error is JSON with an RFC 6749 code: 400 content-type"),
    ("error_crlf", "TK-01", "no CR/LF in error values: checked"),
    ("no_oidc", "MD-01", "openid-configuration: no OIDC discovery document"),
    ("revoke_refresh_ignored", "RV-01", "revoked refresh token refused: 200 error=None"),
    ("duplicates_ignored", "AZ-01", "parameter given twice: a code or token was issued"),
    ("loopback_port_fixed", "AZ-03", "loopback port may vary: stayed on the server (400)"),
    ("token_resource_ignored", "TK-06", "token resource outside the grant: 200 error=None"),
    ("unknown_scope_dropped", "AZ-07", "unknown scope: a code or token was issued"),
    ("replay_refused_only", "TK-04", "access token revoked after reuse: still active: True"),
    ("replay_refused_only", "TK-04", "refresh token revoked after reuse: 200 error=None"),
    ("refresh_scope_widened", "TK-07", "scope cannot widen: 200 error=None"),
    ("refresh_replay_refused_only", "TK-07", "reuse revokes the family: 200 error=None"),
    ("basic_wrong_400", "TK-02", "bad Basic secret: 401: 400 error=invalid_client"),
    ("meta_issuer_slash", "MD-01", "rfc8414 issuer: issuer "),
    ("introspect_open", "IN-01", "unauthenticated caller refused: 200"),
    ("secret_post_unchecked", "TK-02", "wrong client_secret_post secret refused: 200 error=None"),
    ("token_get_json", "TK-01", "JSON body refused (with a valid code): 200"),
    ("secret_post_unaccepted", "TK-02", "client_secret_post accepted: 401 error=invalid_client"),
    ("refresh_scope_ignored", "TK-07", "scope can narrow: 200 scope=['tools:list', "),
    ("prm_types", "MD-03", "authorization_servers: ['https://attacker"),
    ("prm_types", "MD-03", "scopes_supported: 'tools:list'"),
    ("prm_missing", "MD-03", "document: GET http://127.0.0.1"),
    ("superseded_accepted", "TK-07", "superseded token refused: 200 error=None"),
    ("introspect_inactive", "IN-01", "own fresh token: active true: active=False"),
    ("valid_token_refused", "RS-02", "valid token accepted: 403"),
    ("refresh_not_rotated_wire", "TK-07", "rotated on use: same token"),
    ("refresh_not_rotated_wire", "TK-07", "used refresh token refused: 200 on a second use"),
    ("token_as_code", "AZ-04", "response_type=token: a code or token was issued"),
    ("wrong_redirect_error", "AZ-04", "unknown response_type: redirected to http://127.0.0.1"),
    ("resource_unchecked", "AZ-06", "resource not protected here: a code or token was issued"),
    ("resource_unchecked", "AZ-06", "resource with a fragment: a code or token was issued"),
    ("resource_unchecked", "AZ-06", "relative resource: a code or token was issued"),
    ("verifier_optional", "TK-03", "code_verifier missing: 200 error=None"),
    ("redirect_uri_unchecked", "TK-03", "redirect_uri differs from the authorization request: 200 error=None"),
    ("pkce_optional", "TK-03", "verifier without a stored challenge: 200 error=None"),
    ("pkce_optional", "AZ-05", "code_challenge missing: a code or token was issued"),
    ("code_any_client", "TK-05", "another client's code: 200 error=None"),
    ("password_grant", "TK-08", "grant_type=password: 200 error=None"),
    ("auth_method_unchecked", "RG-02", "unknown token_endpoint_auth_method: 201"),
    ("response_types_unchecked", "RG-02", "inconsistent grant_types/response_types: 201"),
    ("secret_post_refused", "RG-02", "register a client_secret_post client: registration of a client_secret_post"),
    ("implicit_invalid_grant", "TK-08", "grant_type=implicit: 400 error=invalid_grant"),
    ("unknown_grant_500", "TK-08", "grant_type=urn:conformance:unknown-grant: 500 error=unsupported_grant_type"),
    ("unknown_client_redirected", "AZ-02", "unknown client_id: redirected"),
    ("unknown_client_redirected", "AZ-02", "missing client_id: redirected"),
    ("plain_accepted", "AZ-05", "code_challenge_method=plain: a code or token was issued"),
    ("challenge_echoed", "AZ-05", "challenge not echoed: echoed in the redirect"),
    ("iss_repeated", "AZ-08", "no repeated parameters: repeated ['iss']"),
    ("meta_lists_more", "MD-02", "response_types_supported: ['code', 'token']"),
    ("meta_lists_more", "MD-02", "code_challenge_methods_supported: ['S256', 'plain']"),
    (
        "meta_members_missing",
        "MD-02",
        "required members: missing ['jwks_uri', 'authorization_response_iss_parameter_supported']",
    ),
]
"""Protocol defects the kit once passed (tests/kit_defects.py), each reported under its rule by the
check made for it. Each touches no other's checks, so several share one server and one kit run
(four runs: RS-03 is n/a without a scope in the 401 challenge, so ``forbidden_no_metadata`` cannot
share one with ``challenge_no_scope``; defects answering the same request differently, such as
``revoke_refresh_refused`` and ``revoke_refresh_ignored``, are in different runs; the fourth's
defects break what most checks need: a fresh token active, a valid token accepted, a refresh)."""
TOGETHER = [
    "revoke_access_ignored+introspect_public+cc_public+uris_unchecked+no_cors_rest+challenge_no_scope"
    "+refresh_any_client+cors_authorize+iss_flag_off+prm_query_bearer+query_token+prm_slash+oidc_slash"
    "+introspect_unknown+revoke_refresh_refused+secret_post_unchecked",
    "token_text_html+revoke_any_client+introspect_any_secret+forbidden_no_metadata+token_cacheable+fragment_dropped"
    "+revoke_unknown_refused+iss_dropped+error_state_dropped+state_decoded_twice+unauthorized_no_metadata"
    "+token_no_challenge+token_get_json+secret_post_unaccepted+refresh_scope_ignored"
    "+prm_missing+superseded_accepted",
    "token_as_code+wrong_redirect_error+resource_unchecked+verifier_optional+redirect_uri_unchecked+pkce_optional+code_any_client"
    "+password_grant+auth_method_unchecked+response_types_unchecked+secret_post_refused+implicit_invalid_grant"
    "+unknown_grant_500+unknown_client_redirected+plain_accepted+challenge_echoed+iss_repeated+meta_lists_more"
    "+meta_members_missing+unknown_code_error+error_crlf+no_oidc+revoke_refresh_ignored+duplicates_ignored+prm_types"
    "+loopback_port_fixed+token_resource_ignored+unknown_scope_dropped+replay_refused_only+refresh_scope_widened"
    "+introspect_open+refresh_replay_refused_only+basic_wrong_400+meta_issuer_slash",
    "introspect_inactive+valid_token_refused+refresh_not_rotated_wire",
]


@pytest.mark.parametrize("defects", TOGETHER, ids=["first", "second", "third", "fourth"])
def test_kit_reports_protocol_defects_injected_together(defects: str) -> None:
    with misbehaving(defects) as served:
        report = run_kit(quick(served))
    expected = [(rule, why) for defect, rule, why in INJECTED_TOGETHER if defect in defects.split("+")]
    missed = [(rule, why) for rule, why in expected if report.status(rule) != FAIL or why not in reason(report, rule)]
    assert not missed, (missed, {rule: reason(report, rule) for rule, _ in missed})


def test_stateful_introspection_of_a_revoked_token_is_charged_to_in01() -> None:
    from kavach_conformance.runner import make_session
    from kavach_conformance.stateful import run_stateful

    with misbehaving("introspect_revoked") as served:
        session = make_session(quick(served))
        try:
            result = run_stateful(session, examples=40, steps=8, derandomize=True)
        finally:
            session.http.close()
    assert result["status"] == FAIL and "IN-01" in result["rules"], result


@pytest.mark.parametrize(
    ("page", "goes"),
    [
        (
            '<meta http-equiv="refresh" content="0;url=https://a.example/cb?code=1&amp;s=2">',
            "https://a.example/cb?code=1&s=2",
        ),
        ('<meta http-equiv="refresh" content=".5; url=https://a.example/">', "https://a.example/"),  # 0 s
        # A later refresh, or a script, counts only when it goes to the redirect URI or carries a
        # code or error: an error page may refresh to the operator's home page after a while, or
        # keep a navigation in a function it never calls (so these two no longer count).
        ("<meta http-equiv=Refresh content=\"5; URL='/next'\">", None),
        ("<script>location.replace('https://d.example/')</script>", None),
        ('<meta http-equiv="refresh" content="10;url=https://www.operator.example/">', None),
        ('<script>function help() { location.href = "https://docs.example/errors"; }</script>', None),
        ("<meta http-equiv=Refresh content=\"5; URL='/cb?error=x'\">", "http://as.example/cb?error=x"),
        ('<meta http-equiv="refresh" content="5">', None),
        ('<script>window.location.href = "https://c.example/cb";</script>', "https://c.example/cb"),
        ("<script>location.replace('https://d.example/?code=1')</script>", "https://d.example/?code=1"),
        ('<p>location = "https://e.example/?code=1"</p>', None),
        ("<body>One moment...<script>location.replace('https://e.example/?code=1')", "https://e.example/?code=1"),
    ],
)
def test_the_form_person_sees_pages_that_navigate_on_their_own(page: str, goes: str | None) -> None:
    """AZ-02, AZ-03: where a page sends a browser on its own (its redirect URI here: https://c.example/cb).
    A ``<script>`` left open at the end of the page runs all the same."""
    import httpx
    from kavach_conformance.person import _navigation

    response = httpx.Response(200, html=page, request=httpx.Request("GET", "http://as.example/authorize"))
    assert _navigation(response, "https://c.example/cb") == goes


def test_a_page_the_person_cannot_parse_stops_the_check_and_never_stays() -> None:
    """AZ-02: Python's HTML parser gives up on ``<![x]>`` (a browser skips it and follows the meta
    refresh after it, with a code to an unregistered URI): the authorization did not stay on the
    server, the kit cannot tell where it went, so the check stops (and fails)."""
    from kavach_conformance.http import Http
    from kavach_conformance.person import FormPerson, UnreadablePage
    from kavach_conformance.session import Session

    attacker = "https://attacker.example/cb"
    page = f'<html><body><![x]><meta http-equiv="refresh" content="0;url={attacker}?code=LEAKED"></body></html>'

    def answer(conn: socket.socket, port: int) -> None:
        with conn:
            try:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(page) + page.encode())
            except OSError:
                pass

    with raw_server(answer) as base:
        http = Http([base], timeout=5)
        person = FormPerson(http, USER, PASSWORD)
        session = Session(http, issuer=base, resource=None, other_resource=None, person=person, redirect_uri="")
        session.meta = {"authorization_endpoint": base + "/authorize"}
        try:
            with pytest.raises(UnreadablePage, match="cannot parse: AssertionError"):
                session.attempt({"client_id": "x", "redirect_uri": attacker})
        finally:
            person.close()
            http.close()


def test_redirect_uri_case_variants() -> None:
    from kavach_conformance.checks import case_variants

    assert case_variants("http://127.0.0.1:8976/callback") == {"path case only": "http://127.0.0.1:8976/CALLBACK"}
    assert case_variants("http://[::1]:8976/callback") == {"path case only": "http://[::1]:8976/CALLBACK"}
    assert case_variants("https://app.example/Cb") == {
        "path case only": "https://app.example/cB",
        "scheme and host case only": "HTTPS://APP.EXAMPLE/Cb",
    }


@pytest.mark.parametrize(
    ("uri", "variants"),
    [
        ("http://127.0.0.1:8976/", {}),
        ("https://app.example/1", {"scheme and host case only": "HTTPS://APP.EXAMPLE/1"}),
        ("HTTPS://APP.EXAMPLE/1", {}),
    ],
)
def test_no_case_variant_is_the_registered_uri_itself(uri: str, variants: dict[str, str]) -> None:
    """AZ-03: a path without letters, or a scheme and host already in upper case, has no variant of
    that kind: the kit would send the registered URI itself as a mismatch and fail a correct server."""
    from kavach_conformance.checks import case_variants

    assert case_variants(uri) == variants
    assert uri not in case_variants(uri).values()


@pytest.mark.parametrize(
    ("fields", "bearer"),
    [
        (['Bearer resource_metadata="https://r/x", error=x'], {"resource_metadata": "https://r/x", "error": "x"}),
        (['DPoP algs="ES256", Bearer error="invalid_token", scope="a b"'], {"error": "invalid_token", "scope": "a b"}),
        (['DPoP algs="ES256"', "Bearer scope=a, error=bad_scope"], {"error": "bad_scope", "scope": "a"}),
        (['Basic realm="x", bearer  Error = "invalid_token" ,, '], {"error": "invalid_token"}),
        (['Bearer error_description="say \\"no\\" \\\\ again"'], {"error_description": 'say "no" \\ again'}),
        (["Negotiate abc==, Bearer"], {}),
        (['DPoP algs="ES256"'], {}),
        (['Bearer realm="never closed'], {}),
        ([], {}),
    ],
)
def test_the_bearer_challenge_is_read_among_all_challenges(fields: list[str], bearer: dict[str, str]) -> None:
    """RS-02, RS-03: RFC 9110 §11.6.1 (a list of challenges in one field line or several), §11.2
    (auth-params valued by token or quoted-string, quoted-pairs unescaped), RFC 9449 §7.1 (DPoP and
    Bearer challenges side by side)."""
    import httpx
    from kavach_conformance.checks import _challenge

    response = httpx.Response(401, headers=[("WWW-Authenticate", field) for field in fields])
    assert _challenge(response) == bearer


def test_challenges_are_parsed_as_rfc_9110_has_them() -> None:
    from kavach_conformance.http import challenges

    field = 'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple", Negotiate abc==, DPoP'
    assert challenges(field) == [
        ("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),  # RFC 9110 §11.6.1's example
        ("basic", {"realm": "simple"}),
        ("negotiate", {"": "abc=="}),
        ("dpop", {}),
    ]
    assert challenges("") == [] and challenges("=x") == [] and challenges('Bearer a="1" b') == [("bearer", {})]


def test_metadata_member_types() -> None:
    """MD-02: the members RFC 8414 §2 and OIDC Discovery §3 define are of their type; members of other
    specifications ending alike are not theirs to judge (OIDC Identity Assurance 1.0's boolean
    ``verified_claims_supported``, OpenID4VCI's ``pre-authorized_grant_anonymous_access_supported``)."""
    from kavach_conformance.session import mistyped_members

    good = {"token_endpoint": "https://as.example/t", "scopes_supported": ["a"], "request_parameter_supported": True}
    others = {
        "client_id_metadata_document_supported": True,
        "verified_claims_supported": True,
        "pre-authorized_grant_anonymous_access_supported": False,
        "x_parameter_supported": "1",
    }
    assert mistyped_members({**good, **others}) == []
    bad = {"jwks_uri": None, "grant_types_supported": "a b", "claims_supported": 3, "request_parameter_supported": "1"}
    wrong = mistyped_members({**good, **bad})
    assert {w.split(" ", 1)[0] for w in wrong} == set(bad), wrong


def test_auth_methods_of_the_wrong_type_are_md02s_not_the_token_endpoints() -> None:
    """A ``token_endpoint_auth_methods_supported`` that is not an array fails MD-02 only: TK-01,
    TK-02 and TK-08 are checked as usual (a number stopped them, a string matched a substring)."""
    from kavach_conformance.checks import check_token_endpoint
    from kavach_conformance.person import FormPerson
    from kavach_conformance.runner import make_session

    with defective("none") as served:
        session = make_session(quick(served))
        checks: list[tuple[str, str, bool | None, str]] = []
        try:
            for listed in (3, "none client_secret_post"):
                session.meta["token_endpoint_auth_methods_supported"] = listed
                checks.clear()
                check_token_endpoint(session, lambda *check: checks.append(check))
                assert not [c for c in checks if c[2] is not True], checks
                assert {c[0] for c in checks} == {"TK-01", "TK-02", "TK-08"}, checks
                assert "client_secret_post accepted" not in {c[1] for c in checks}, checks
        finally:
            assert isinstance(session.person, FormPerson)
            session.person.close()
            session.http.close()


def test_the_kits_secrets_may_come_from_the_environment_and_a_flag_wins() -> None:
    """A password or client secret on the command line is readable by every user of the machine
    in the process list for the whole run: the kit also takes them from the environment."""
    import argparse

    from kavach_conformance.cli import CLIENT_SECRET_VAR, PASSWORD_VAR, add_arguments, options_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    environ = {PASSWORD_VAR: "from-the-environment", CLIENT_SECRET_VAR: "secret-from-the-environment"}
    plain = parser.parse_args(["--issuer", "https://as.example", "--username", "alice"])
    options = options_from(plain, environ)
    assert (options.password, options.client_secret) == ("from-the-environment", "secret-from-the-environment")
    flagged = parser.parse_args(["--issuer", "https://as.example", "--password", "p", "--client-secret", "s"])
    assert (options_from(flagged, environ).password, options_from(flagged, environ).client_secret) == ("p", "s")
    assert (options_from(plain, {}).password, options_from(plain, {PASSWORD_VAR: ""}).password) == (None, None)


def test_shrinking_a_stateful_failure_stops_when_its_budget_is_spent(capsys: pytest.CaptureFixture[str]) -> None:
    """With no time to shrink, the sequences after the first failure are only hypothesis's replays
    of it (at most two), where a full shrink tries many; nothing of hypothesis's is printed."""
    from kavach_conformance.runner import make_session
    from kavach_conformance.stateful import run_stateful

    failing = "refresh_token=1234567890..."  # the int token, as an exchange shows it: one per failing sequence
    with misbehaving("refresh_int") as served:
        counts = []
        for budget in (0, 300):
            session = make_session(quick(served))
            try:
                result = run_stateful(session, examples=10, steps=8, derandomize=True, shrink_seconds=budget)
                counts.append(sum(failing in line for line in session.http.since(0)))
            finally:
                session.http.close()
            assert result["status"] == FAIL and result["rules"] == ["TK-01", "TK-07"], result
            assert result["reason"].startswith("TK-01/TK-07: the token response's refresh_token is not a"), result
            assert failing in result["exchanges"][-1] and "/authorize" in result["exchanges"][0], result
    assert 1 <= counts[0] <= 3 < counts[1], counts
    assert capsys.readouterr().out == ""
