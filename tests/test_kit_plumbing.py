"""The conformance kit's plumbing, each part on its own and fast: the HTTP client (its origin
allow-list, no redirects followed, the size limit, the deadline, how errors are named, the
exchange log), the report (folding checks into rules, the table, the JSON) and the command line
(options refused in one line, exit statuses). The client talks to real loopback servers
(``raw_server`` of tests/test_conformance_kit.py); the whole kit against real authorization
servers is tests/test_conformance_kit.py's.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kavach_conformance import KitOptions, cli
from kavach_conformance.checks import Record
from kavach_conformance.http import Http, KitError, NoAnswer, RateLimited, origin, short
from kavach_conformance.person import FormPerson
from kavach_conformance.report import FAIL, NA, PASS, Check, Report, format_table, one_line
from kavach_conformance.rules import OBSERVABLE, RULES
from kavach_conformance.session import Session, Skip
from kavach_serve import free_port
from test_conformance_kit import encoded_answer, raw_server, send_json

Answer = Callable[[socket.socket, int], None]


def answering(heard: list[bytes], status: str, headers: list[tuple[str, str]], body: bytes = b"") -> Answer:
    """A raw server's answer: ``status``, ``headers`` and ``body``; each request's bytes kept in ``heard``."""

    def answer(conn: socket.socket, port: int) -> None:
        with conn:
            try:
                heard.append(whole_request(conn))
                head = "".join(f"{name}: {value}\r\n" for name, value in headers)
                head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                conn.sendall(f"HTTP/1.1 {status}\r\n{head}".encode() + body)
            except OSError:
                pass

    return answer


def whole_request(conn: socket.socket) -> bytes:
    """One request's bytes, its body as long as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
    length = int({name.strip().lower(): value for name, value in fields.items()}.get(b"content-length", b"0"))
    while len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def silent(conn: socket.socket, port: int) -> None:
    """Reads the request and never answers (the connection stays open until the client leaves)."""
    with conn:
        try:
            whole_request(conn)
            conn.recv(1)  # until the client hangs up
        except OSError:
            pass


# -- the HTTP client -------------------------------------------------------------------------


def test_an_origin_is_scheme_host_and_port_in_lowercase() -> None:
    assert origin("HTTP://LocalHost:8080/a?b=c") == "http://localhost:8080"
    assert origin("https://as.example") == "https://as.example"
    for bad in ("http://[::1", "http://127.0.0.1:99999/"):
        with pytest.raises(KitError, match="is not a valid URL"):
            origin(bad)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("abcdefghijklm", "abcdefghijklm"), ("abcdefghijklmn", "abcdefghij..."), (12345678901234, "1234567890...")],
)
def test_short_keeps_up_to_three_characters_more_than_it_would_drop(value: object, shown: str) -> None:
    """``short`` keeps 10 characters and adds ``...``: a text at most 13 long is shown whole."""
    assert short(value) == shown


def test_only_the_origins_given_are_contacted() -> None:
    """Another port, host or scheme than the servers given is refused before anything is sent; the
    origin is compared without regard to case."""
    heard: list[bytes] = []
    with raw_server(answering(heard, "200 OK", [("Content-Type", "application/json")], b"{}")) as base:
        port = base.rsplit(":", 1)[1]
        with Http([base + "/issuer"], timeout=5) as http:
            for elsewhere in (
                f"http://127.0.0.1:{free_port()}/",
                f"http://localhost:{port}/",
                f"https://127.0.0.1:{port}/",
            ):
                with pytest.raises(KitError, match=f"refusing to contact {elsewhere}: not one of the servers given"):
                    http.request("GET", elsewhere)
            assert heard == [] and http.log == []
            assert http.request("GET", f"HTTP://127.0.0.1:{port}/x").status_code == 200
    assert len(heard) == 1 and heard[0].startswith(b"GET /x HTTP/1.1\r\n"), heard


def test_a_redirect_is_never_followed_and_its_target_is_logged_without_query() -> None:
    heard: list[bytes] = []
    error = "unsupported_response_type"  # long enough to be cut, were it a code
    target = f"https://client.example/cb?code=abcdefghijklmnopq&error={error}&iss=https%3A%2F%2Fas&state=1&aud="
    request = {"response_type": "code", "client_id": "kit", "redirect_uri": "https://client.example/cb"}
    request |= {"resource": "https://mcp.example/", "code_challenge_method": "S256", "prompt": "login"}
    with raw_server(answering(heard, "302 Found", [("Location", target)])) as base, Http([base], timeout=5) as http:
        mark = http.mark()
        response = http.request("GET", base + "/authorize", params=request)
        lines = http.since(mark)
    assert response.status_code == 302 and len(heard) == 1, heard
    assert heard[0].startswith(b"GET /authorize?response_type=code&client_id=kit&redirect_uri="), heard
    assert lines == [
        f"GET {base}/authorize [response_type=code client_id=kit redirect_uri=https://client.example/cb "
        "resource=https://mcp.example/ code_challenge_method=S256] => 302 -> https://client.example/cb "
        f"code=abcdefghij... error={error} iss=https://as aud="
    ], lines


def test_proxy_settings_of_the_environment_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit connects to the servers given, never through a proxy named in the environment."""
    heard: list[bytes] = []
    proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with raw_server(answering(heard, "204 No Content", [])) as base, Http([base], timeout=5) as http:
        assert http.request("GET", base + "/direct").status_code == 204
    assert heard[0].startswith(b"GET /direct HTTP/1.1\r\n"), heard


def test_what_is_sent_is_logged_with_secrets_shortened_and_json_answers_summarised() -> None:
    """The exchange log: the parameters that matter (a code, verifier, refresh token or token
    shortened), the answer's members that matter, an access token only as issued."""
    heard: list[bytes] = []
    answer = {"access_token": "a" * 40, "refresh_token": "r" * 40, "scope": "tools:list tools:call", "active": True}
    answer["token_type"] = "Bearer"
    body = json.dumps(answer).encode()
    headers = [("Content-Type", "application/json; charset=utf-8")]
    with raw_server(answering(heard, "200 OK", headers, body)) as base, Http([base], timeout=5) as http:
        form = [("grant_type", "authorization_code"), ("code", "c" * 30), ("code_verifier", "v" * 43), ("x", "1")]
        http.request("POST", base + "/token", params={"client_id": "kit"}, data=form, headers={"X-Kit": "1"})
        http.request("POST", base + "/token", json_body={"grant_type": "refresh_token"})
        http.request(
            "GET",
            base
            + "/token?token="
            + "t" * 20
            + "&state=s&scope=&token_type_hint=refresh_token&refresh_token="
            + "r" * 20,
        )
    sent, hint = "code=cccccccccc... code_verifier=vvvvvvvvvv...", "token_type_hint=refresh_token"
    got = "active=true scope=tools:list tools:call token_type=Bearer refresh_token=rrrrrrrrrr... access_token=(issued)"
    assert http.since(0) == [
        f"POST {base}/token [client_id=kit grant_type=authorization_code {sent}] => 200 {got}",
        f"POST {base}/token [] => 200 {got}",
        f"GET {base}/token [token=tttttttttt... state=s scope= {hint} refresh_token=rrrrrrrrrr...] => 200 {got}",
    ], http.since(0)
    form_request, json_request = heard[0].lower(), heard[1].lower()
    assert b"content-type: application/x-www-form-urlencoded\r\n" in form_request and b"x-kit: 1\r\n" in form_request
    assert form_request.endswith(
        b"grant_type=authorization_code&code=" + b"c" * 30 + b"&code_verifier=" + b"v" * 43 + b"&x=1"
    )
    assert b"content-type: application/json\r\n" in json_request
    assert json_request.endswith(b'{"grant_type": "refresh_token"}')
    assert all(b"\r\naccept-encoding: identity\r\n" in request.lower() for request in heard), heard


def test_a_caller_s_content_type_is_kept() -> None:
    heard: list[bytes] = []
    with raw_server(answering(heard, "204 No Content", [])) as base, Http([base], timeout=5) as http:
        http.request("POST", base + "/r", data={"a": "b"}, headers={"Content-Type": "text/plain"})
        http.request("POST", base + "/r", json_body=[1], headers={"Content-Type": "application/x-kit"})
    assert b"content-type: text/plain\r\n" in heard[0].lower() and b"urlencoded" not in heard[0].lower(), heard
    assert b"content-type: application/x-kit\r\n" in heard[1].lower(), heard


@pytest.mark.parametrize("answer", [b"[1, 2]", b"{not json", b"[" * 100_000 + b"]" * 100_000])
def test_a_json_answer_that_is_no_object_is_logged_without_members(answer: bytes) -> None:
    with (
        raw_server(lambda conn, port: send_json(conn, answer, b"400 Bad Request")) as base,
        Http([base], timeout=5) as http,
    ):
        assert http.request("GET", base + "/m").content == answer
    assert http.since(0) == [f"GET {base}/m [] => 400"], http.since(0)


def test_json_nested_too_deeply_for_the_decoder_is_not_json_to_read() -> None:
    import httpx
    from kavach_conformance.http import parse_json

    with pytest.raises(ValueError, match=r"^JSON nested too deeply to read$"):
        parse_json(httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000))
    assert parse_json(httpx.Response(200, content=b'{"a": [1]}')) == {"a": [1]}


@pytest.mark.parametrize("size", [1000, 1001])
def test_the_size_limit_holds_to_the_byte(size: int) -> None:
    """An answer of ``max_bytes`` is read; one byte more is no answer, and nothing is logged."""
    body = b"x" * size
    with (
        raw_server(answering([], "200 OK", [("Content-Type", "text/plain")], body)) as base,
        Http([base], timeout=5, max_bytes=1000) as http,
    ):
        if size <= 1000:
            assert http.request("GET", base + "/big").content == body
        else:
            with pytest.raises(NoAnswer, match=rf"^answer larger than 1000 bytes: GET {base}/big$"):
                http.request("GET", base + "/big?q=1")
    assert len(http.log) == (size <= 1000)


@pytest.mark.parametrize("size", [1 << 20, (1 << 20) + 1])
def test_the_kit_reads_answers_of_up_to_one_mebibyte(size: int) -> None:
    """docs/conformance.md: every answer must be at most 1 MiB (once decoded)."""
    body = b"x" * size
    with (
        raw_server(answering([], "200 OK", [("Content-Type", "text/plain")], body)) as base,
        Http([base], timeout=10) as http,
    ):
        if size <= 1 << 20:
            assert http.request("GET", base + "/big").content == body
        else:
            with pytest.raises(NoAnswer, match=rf"^answer larger than {1 << 20} bytes: GET {base}/big$"):
                http.request("GET", base + "/big")


@pytest.mark.parametrize("coding", ["x-gzip", "GZip", "identity, gzip", " , gzip ,"])
def test_one_gzip_coding_is_read_however_it_is_named(coding: str) -> None:
    """RFC 9110 §8.4.1: codings are case-insensitive, ``x-gzip`` is ``gzip``, ``identity`` (and an
    empty list element) adds no coding."""
    doc = json.dumps({"issuer": "https://as.example"}).encode()
    with raw_server(encoded_answer(gzip.compress(doc), coding, [])) as base, Http([base], timeout=5) as http:
        assert http.request("GET", base + "/meta").content == doc


def test_a_gzip_answer_arriving_in_many_reads_is_decoded_whole() -> None:
    """300 kB that gzip cannot shrink (the coded body comes in several reads, each decoded in turn),
    then a 20 kB block repeated, which gzip codes as references up to its 32 kB window back."""
    noise = random.Random(0).randbytes(320_000)
    doc = noise[:300_000] + noise[300_000:] * 5
    with raw_server(encoded_answer(gzip.compress(doc), "gzip", [])) as base, Http([base], timeout=5) as http:
        assert http.request("GET", base + "/meta").content == doc


def test_no_answer_in_time_is_no_answer_naming_the_request_without_its_query() -> None:
    with (
        raw_server(silent) as base,
        Http([base], timeout=0.5) as http,
        pytest.raises(NoAnswer, match=rf"^no answer within 0.5 s \(ReadTimeout\): POST {base}/token$"),
    ):
        http.request("POST", base + "/token?secret=1", data={"code": "c"})
    assert http.log == []


def test_a_refused_connection_is_no_answer_naming_the_request() -> None:
    url = f"http://127.0.0.1:{free_port()}/.well-known/x"
    with Http([url], timeout=5) as http, pytest.raises(NoAnswer, match=rf"^ConnectError: .*: GET {url}$"):
        http.request("GET", url + "?a=b")
    assert http.client.is_closed  # left as a context manager, on an error too


def test_a_429_stops_the_kit_and_is_logged() -> None:
    with (
        raw_server(answering([], "429 Too Many Requests", [("Retry-After", "60")])) as base,
        Http([base], timeout=5) as http,
        pytest.raises(RateLimited, match=rf"^POST {base}/register answered 429: the server rate-limits"),
    ):
        http.request("POST", base + "/register", json_body={})
    assert http.since(0) == [f"POST {base}/register [] => 429"]


# -- the report --------------------------------------------------------------------------------


def check(rule: str, status: str, reason: str = "why", *, name: str = "a check", stopped: bool = False) -> Check:
    return Check(rule, name, status, reason, [f"GET /{rule}"], stopped=stopped)


def test_a_rule_fails_on_any_failed_check_stopped_ones_first() -> None:
    report = Report("https://as.example", None)
    report.add(check("TK-01", PASS))
    report.add(check("TK-01", FAIL, "200", name="GET refused"))
    report.add(check("TK-01", FAIL, "stopped: no answer", name="group", stopped=True))
    report.add(check("TK-01", NA, "no client"))
    [tk01] = [r for r in report.rules() if r.rule == "TK-01"]
    assert (tk01.status, tk01.reason) == (FAIL, "group: stopped: no answer; GET refused: 200")
    assert tk01.title == RULES["TK-01"] and len(tk01.checks) == 4
    assert report.failed() == ["TK-01"] and report.status("TK-01") == FAIL


def test_a_rule_passes_when_a_check_passed_and_none_failed_and_is_na_otherwise() -> None:
    report = Report("https://as.example", None)
    for status in (PASS, NA, PASS):
        report.add(check("AZ-05", status))
    report.add(check("AZ-06", NA, "no resource"))
    report.add(check("AZ-06", NA, "no client"))
    reasons = {r.rule: (r.status, r.reason) for r in report.rules()}
    assert reasons["AZ-05"] == (PASS, "2 check(s) passed")
    assert reasons["AZ-06"] == (NA, "no resource; no client")
    assert reasons["AZ-07"] == (NA, "not checked") and reasons["AZ-09"] == (NA, "not observable over HTTP")
    assert report.failed() == [] and report.status("AZ-05") == PASS
    with pytest.raises(KeyError):
        report.status("XX-01")


def test_every_rule_is_reported_in_checklist_order_and_a_check_of_another_rule_after_them() -> None:
    """The checklist's ids are of the form ``XX-NN`` with a title each; the observable ones are among them."""
    assert set(RULES) >= OBSERVABLE
    assert all(len(rule) == 5 and rule[2] == "-" and title for rule, title in RULES.items())
    report = Report("https://as.example", None)
    report.add(check("ZZ-01", FAIL))
    assert [r.rule for r in report.rules()] == [*RULES, "ZZ-01"]
    assert report.failed() == ["ZZ-01"]


def test_the_json_report_has_every_rule_and_check(tmp_path: Path) -> None:
    report = Report("https://as.example", "https://mcp.example/mcp", meta={"client": "c1"})
    report.add(Check("MD-01", "a check", FAIL, "\x1b[2J", ["GET /MD-01"]))  # not stopped unless said
    report.stateful = {"status": PASS, "reason": "ok"}
    path = tmp_path / "report.json"
    report.write_json(str(path))
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text == json.dumps(report.to_json(), indent=2) + "\n"
    data = json.loads(text)
    assert (data["issuer"], data["resource"], data["meta"], data["stateful"]) == (
        "https://as.example",
        "https://mcp.example/mcp",
        {"client": "c1"},
        {"status": PASS, "reason": "ok"},
    )
    assert [r["rule"] for r in data["rules"]] == list(RULES)
    [md01] = [r for r in data["rules"] if r["rule"] == "MD-01"]
    assert md01 == {
        "rule": "MD-01",
        "title": RULES["MD-01"],
        "status": FAIL,
        "reason": "a check: \x1b[2J",
        "checks": [
            {
                "rule": "MD-01",
                "name": "a check",
                "status": FAIL,
                "reason": "\x1b[2J",
                "exchanges": ["GET /MD-01"],
                "stopped": False,
            }
        ],
    }


def test_the_table_is_one_line_per_rule_escaped_and_cut_to_width() -> None:
    report = Report("https://as.example", None)
    report.add(check("AZ-01", FAIL, "x" * 200, name="n"))
    report.add(check("AZ-02", FAIL, "evil\x1b[2J\nAZ-03   pass    injected", name="n"))
    report.add(check("AZ-04", PASS))
    lines = report.table(only_observable=True).splitlines()
    assert lines[:2] == ["rule    result  reason", "------  ------  " + "-" * 40]
    assert len(lines) == 2 + len(OBSERVABLE)
    assert lines[2] == "AZ-01   fail    n: " + "x" * 94 + "..." and len(lines[2]) == 16 + 100
    assert lines[3] == "AZ-02   fail    n: evil\\x1b[2J\\nAZ-03   pass    injected"
    assert lines[4:6] == ["AZ-03   n/a     not checked", "AZ-04   pass    1 check(s) passed"]
    assert len(report.table().splitlines()) == 2 + len(RULES)
    [az01] = [r for r in report.rules() if r.rule == "AZ-01"]
    assert format_table([az01], width=203).endswith("  n: " + "x" * 200)
    assert format_table([az01], width=202).endswith("  n: " + "x" * 196 + "...")


def test_one_line_escapes_what_a_terminal_would_act_on() -> None:
    assert one_line("a\tb\r\nc\x1b[0m\x7f\u2028é") == "a\\tb\\r\\nc\\x1b[0m\\x7f\\u2028é"


# -- the run: check groups folded into the report ------------------------------------------------

Group = tuple[str, tuple[str, ...], Callable[[Session, Record], None]]


@contextmanager
def metadata_server() -> Iterator[str]:
    """A loopback server answering every request with RFC 8414 metadata naming only an authorization
    endpoint: enough for the kit to start (with ``--client-id``), nothing for a real check."""

    def answer(conn: socket.socket, port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        send_json(conn, json.dumps({"issuer": base, "authorization_endpoint": base + "/authorize"}).encode())

    with raw_server(answer) as base:
        yield base


def run_groups(monkeypatch: pytest.MonkeyPatch, base: str, groups: list[Group], **options: Any) -> Report:
    """``run_kit`` against ``base`` with ``groups`` in place of the kit's check groups."""
    from kavach_conformance import runner

    monkeypatch.setattr(runner, "ALL_CHECKS", groups)
    return runner.run_kit(KitOptions(base, client_id="kit", scopes=("a", "b"), timeout=5, **options))


def requests(session: Session, n: int) -> list[str]:
    """``n`` requests to the server; the exchanges a check shows of them (the last eight)."""
    for i in range(n):
        session.http.request("GET", f"{session.issuer}/r{i}")
    return [f"GET {session.issuer}/r{i} [] => 200" for i in range(n)][-8:]


def test_each_observation_is_a_check_with_the_last_eight_exchanges_of_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown: list[list[str]] = []
    sessions: list[Session] = []

    def observing(session: Session, record: Record) -> None:
        sessions.append(session)
        shown.append(requests(session, 10))
        record("AZ-01", "ten requests", True, "fine")
        record("AZ-02", "undecided", None, "cannot tell")
        shown.append(requests(session, 2))
        record("AZ-03", "two more", False, "wrong")

    with metadata_server() as base:
        groups: list[Group] = [("observing", ("AZ-01", "AZ-02", "AZ-03"), observing)]
        report = run_groups(monkeypatch, base, groups, resource_served=False)
    ten, two = shown[0], shown[0][2:] + shown[1]
    assert report.checks == [
        Check("AZ-01", "ten requests", PASS, "fine", ten),
        Check("AZ-02", "undecided", NA, "cannot tell", ten),
        Check("AZ-03", "two more", FAIL, "wrong", two),
    ]
    assert report.meta == {
        "metadata": base + "/.well-known/oauth-authorization-server",
        "client": "kit",
        "second_client": False,
        "confidential_client": False,
        "scopes": ["a", "b"],
    }
    assert (report.issuer, report.resource, report.stateful) == (base, None, None)
    assert sessions[0].resource_served is False


def test_a_group_that_cannot_decide_leaves_its_rules_na_and_one_that_stops_fails_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Skip``: the rules of the group not yet decided are n/a with its reason. Any other exception
    (no answer, one the kit cannot read) fails every rule of the group, marked stopped, and the run
    goes on with the next group."""
    shown: list[list[str]] = []

    def skipping(session: Session, record: Record) -> None:
        record("AZ-04", "one", True, "decided")
        raise Skip("the metadata lists no token_endpoint")

    def stopping(session: Session, record: Record) -> None:
        shown.append(requests(session, 9))
        raise ValueError("unreadable\nanswer")

    def going_on(session: Session, record: Record) -> None:
        record("TK-04", "after", True, "still run")

    groups: list[Group] = [("skipping", ("AZ-04", "AZ-05"), skipping), ("stopping", ("TK-01", "TK-02"), stopping)]
    with metadata_server() as base:
        report = run_groups(monkeypatch, base, [*groups, ("going on", ("TK-04",), going_on)], client_secret="s")
    stopped = "stopped: ValueError: unreadable\nanswer"
    assert report.checks == [
        Check("AZ-04", "one", PASS, "decided", []),
        Check("AZ-05", "skipping", NA, "the metadata lists no token_endpoint"),
        Check("TK-01", "stopping", FAIL, stopped, shown[0], stopped=True),
        Check("TK-02", "stopping", FAIL, stopped, shown[0], stopped=True),
        Check("TK-04", "after", PASS, "still run", []),
    ]
    assert report.meta["confidential_client"] is True


def test_a_429_or_no_authorization_at_all_stops_the_run_and_the_clients_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions: list[Session] = []

    def limited(session: Session, record: Record) -> None:
        sessions.append(session)
        raise RateLimited("POST /token answered 429")

    def never_authorized(session: Session, record: Record) -> None:
        sessions.append(session)
        session.unauthorized = "stayed on the server (200)"

    def authorized_later(session: Session, record: Record) -> None:
        never_authorized(session, record)
        session.authorized = True
        record("AZ-01", "valid request", True, "a code")

    with metadata_server() as base:
        with pytest.raises(RateLimited, match=r"^POST /token answered 429$"):
            run_groups(monkeypatch, base, [("limited", ("TK-01",), limited)], username="u", password="p")
        with pytest.raises(KitError, match=r"^could not complete any authorization: stayed on the server \(200\)$"):
            run_groups(monkeypatch, base, [("never", ("AZ-01",), never_authorized)], username="u", password="p")
        report = run_groups(monkeypatch, base, [("later", ("AZ-01",), authorized_later)])
    assert report.status("AZ-01") == PASS
    for session in sessions[:2]:
        assert isinstance(session.person, FormPerson) and session.person.jar.is_closed
        assert session.http.client.is_closed


@pytest.mark.parametrize(
    ("stateful", "checks"),
    [
        ({"status": FAIL, "rules": ["TK-04", "TK-07"], "reason": "reused", "exchanges": ["POST /token"]}, 2),
        ({"status": PASS, "reason": "3 rotations", "rotations": 3}, 1),
        ({"status": PASS, "reason": "no refresh drawn", "rotations": 0}, 0),
    ],
)
def test_the_stateful_result_is_charged_to_its_rules(
    monkeypatch: pytest.MonkeyPatch, stateful: dict[str, Any], checks: int
) -> None:
    """A failure fails each rule it names; a pass credits TK-07 only when a refresh token rotated."""
    from kavach_conformance import stateful as stateful_test

    calls: list[tuple[int, int, int]] = []

    def run_stateful(session: Session, examples: int, steps: int, *, shrink_seconds: int) -> dict[str, Any]:
        calls.append((examples, steps, shrink_seconds))
        return stateful

    monkeypatch.setattr(stateful_test, "run_stateful", run_stateful)
    with metadata_server() as base:
        report = run_groups(monkeypatch, base, [], stateful_examples=0)
        assert (report.stateful, calls) == (None, [])
        report = run_groups(monkeypatch, base, [], stateful_examples=1, stateful_steps=4, stateful_shrink_seconds=5)
    assert report.stateful == stateful and calls == [(1, 4, 5)]
    expected = [Check(rule, "stateful", FAIL, "reused", ["POST /token"]) for rule in stateful.get("rules", [])]
    if stateful.get("rotations"):
        expected = [Check("TK-07", "stateful", PASS, "3 rotations")]
    assert report.checks == expected and len(expected) == checks


# -- the command line --------------------------------------------------------------------------


def unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--redirect-port", "0"], "--redirect-port 0 is not a port (1-65535)"),
        (["--redirect-port", "65536"], "--redirect-port 65536 is not a port (1-65535)"),
        (["--stateful", "-1"], "--stateful needs 0 or more examples and --stateful-steps 1 or more steps"),
        (["--stateful-steps", "0"], "--stateful needs 0 or more examples and --stateful-steps 1 or more steps"),
        (["--stateful-shrink", "-1"], "--stateful-shrink -1 is not a number of seconds (0-3600)"),
        (["--timeout", "0"], "--timeout 0 is not a number of seconds (0-3600)"),
        (["--timeout", "3600.5"], "--timeout 3600.5 is not a number of seconds (0-3600)"),
    ],
)
def test_an_option_out_of_range_is_refused_in_one_line(
    args: list[str], refused: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--issuer", unreachable(), *args]) == 2
    assert capsys.readouterr() == ("", f"kavach conformance: {refused}\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--redirect-port", "1"],
        ["--redirect-port", "65535"],
        ["--stateful", "0", "--stateful-steps", "1"],
        ["--stateful-shrink", "0"],
        ["--stateful-shrink", "3600"],
        ["--timeout", "3600"],
        ["--timeout", "0.01"],
        ["--json", "report.json"],
    ],
)
def test_an_option_at_the_edge_of_its_range_is_used(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Accepted: the kit goes on to the issuer (here nothing listens there, so it stops at that)."""
    monkeypatch.chdir(tmp_path)
    issuer = unreachable()
    assert cli.main(["--issuer", issuer, *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"kavach conformance: no authorization server metadata found for {issuer}: ")
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == [], err


def test_a_json_report_needs_a_file_in_an_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for target in (tmp_path, tmp_path / "missing" / "report.json"):
        assert cli.main(["--issuer", unreachable(), "--json", str(target)]) == 2
        refused = f"kavach conformance: --json {target}: not a file in an existing folder\n"
        assert capsys.readouterr() == ("", refused)


@pytest.mark.parametrize("option", ["--issuer", "--resource", "--other-resource"])
@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http:///path", "mailto:kit@example.com"])
def test_a_server_that_is_not_http_is_refused_before_any_request(option: str, url: str) -> None:
    from kavach_conformance import run_kit

    urls = {"--issuer": unreachable(), option: url}
    options = KitOptions(urls["--issuer"], resource=urls.get("--resource"), other_resource=urls.get("--other-resource"))
    with pytest.raises(KitError, match=f"^{url!r} is not an http\\(s\\) URL$"):
        run_kit(options)


def test_an_https_server_is_contacted() -> None:
    from kavach_conformance import run_kit

    issuer = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(KitError, match=f"^no authorization server metadata found for {issuer}: "):
        run_kit(KitOptions(issuer, resource=issuer + "/mcp", other_resource=issuer + "/other", timeout=5))


def test_every_flag_reaches_the_kits_options() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = "--issuer https://as.example --resource https://mcp.example/mcp --other-resource https://o.example/mcp"
    flags += " --indicator-only --client-id c1 --client-secret s1 --register --username u --password p"
    flags += " --person mod:fn --redirect-port 9000 --redirect-uri http://127.0.0.1:1/cb --scope a:b,c"
    flags += " --stateful 3 --stateful-steps 4 --stateful-shrink 5 --timeout 6.5"
    assert cli.options_from(parser.parse_args([*flags.split(), "--scope", " a  b "]), {}) == KitOptions(
        issuer="https://as.example",
        resource="https://mcp.example/mcp",
        other_resource="https://o.example/mcp",
        resource_served=False,
        client_id="c1",
        client_secret="s1",
        register=True,
        username="u",
        password="p",
        person="mod:fn",
        redirect_port=9000,
        redirect_uri="http://127.0.0.1:1/cb",
        scopes=("a", "b"),
        stateful_examples=3,
        stateful_steps=4,
        stateful_shrink_seconds=5,
        timeout=6.5,
    )
    defaults = cli.options_from(parser.parse_args(["--issuer", "https://as.example"]), {})
    assert defaults == KitOptions("https://as.example")
    assert defaults.callback() == "http://127.0.0.1:8976/callback"


def test_the_documented_secret_variables_are_read() -> None:
    """docs/conformance.md names them: ``KAVACH_CONFORMANCE_PASSWORD``, ``KAVACH_CONFORMANCE_CLIENT_SECRET``."""
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    environ = {"KAVACH_CONFORMANCE_PASSWORD": "pw", "KAVACH_CONFORMANCE_CLIENT_SECRET": "cs", "": "neither"}
    options = cli.options_from(parser.parse_args(["--issuer", "https://as.example"]), environ)
    assert (options.password, options.client_secret) == ("pw", "cs")


def test_the_issuer_is_required_and_help_states_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.main(["--register"])
    out, err = capsys.readouterr()
    assert refused.value.code == 2 and out == "" and "the following arguments are required: --issuer" in err, err
    with pytest.raises(SystemExit) as helped:
        cli.main(["--help"])
    out, err = capsys.readouterr()
    assert helped.value.code == 0 and err == "" and out.startswith("usage: python -m kavach_conformance "), out
    words = " ".join(out.split())  # as wrapped to the terminal's width
    assert "Exit status: 0 when no rule failed, 1 when one did" in words and "2 when the kit could not run" in words


def finished(status: str, stateful: dict[str, Any] | None = None) -> Callable[[object], Report]:
    """A stand-in for ``run_kit``: a run whose one check ended ``status``."""

    def run_kit(options: object) -> Report:
        report = Report("https://as.example", None, stateful=stateful)
        report.add(check("TK-04", status, "code reused\x1b"))
        return report

    return run_kit


@pytest.mark.parametrize(("status", "code"), [(PASS, 0), (NA, 0), (FAIL, 1)])
def test_the_exit_status_is_1_only_when_a_rule_failed(
    status: str, code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "run_kit", finished(status))
    assert cli.main(["--issuer", "https://as.example"]) == code
    out, err = capsys.readouterr()
    assert err == "" and out.count("\n") == 2 + len(OBSERVABLE) and "stateful" not in out, out
    shown = (
        "a check: code reused\\x1b" if status == FAIL else "1 check(s) passed" if status == PASS else "code reused\\x1b"
    )
    assert f"\nTK-04   {status:<6}  {shown}\n" in out, out


def test_the_stateful_result_and_the_json_report_are_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stateful = {"status": FAIL, "reason": "TK-04:\nreplayed", "exchanges": ["POST /token\x1b", "GET /x"]}
    monkeypatch.setattr(cli, "run_kit", finished(PASS, stateful))
    path = tmp_path / "report.json"
    assert cli.main(["--issuer", "https://as.example", "--all-rules", "--json", str(path)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and len(lines) == 2 + len(RULES) + 6, out
    assert lines[-6:] == [
        "",
        "stateful: fail: TK-04:\\nreplayed",
        "  POST /token\\x1b",
        "  GET /x",
        "",
        f"report written to {path}",
    ], out
    assert json.loads(path.read_text())["stateful"] == stateful


def test_a_report_that_cannot_be_written_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "run_kit", finished(PASS))
    assert cli.main(["--issuer", "https://as.example", "--json", "/dev/full"]) == 2
    out, err = capsys.readouterr()
    assert err == "kavach conformance: cannot write /dev/full: No space left on device\n", err
    assert "report written" not in out


@contextmanager
def unwritable(where: str) -> Iterator[Any]:
    """A standard output that cannot be written: a full disk, or a pipe whose reader has gone."""
    if where == "full disk":
        with open("/dev/full", "w") as full:
            yield full
        return
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as gone:
        yield gone


@pytest.mark.parametrize(("where", "code", "said"), [
    ("full disk", 2, "kavach conformance: cannot write the output: No space left on device\n"),
    ("reader gone", 141, ""),
])  # fmt: skip
@pytest.mark.parametrize("words", [["--help"], ["--issuer", "https://as.example"]])
def test_output_that_cannot_be_written_ends_the_kit_in_one_line(
    where: str,
    code: int,
    said: str,
    words: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--help`` or the report to a stdout that cannot take them: one line and status 2 on a full
    disk, status 141 and nothing said to a reader that went away (as ``kavach`` ends), never
    Python's "Exception ignored" at exit (status 120) for the text left buffered."""
    monkeypatch.setattr(cli, "run_kit", finished(PASS))
    with unwritable(where) as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert cli.main(words) == code
        monkeypatch.undo()
    assert capsys.readouterr().err == said


def test_a_kit_error_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def stops(options: object) -> Report:
        raise KitError("no metadata\nat all\x1b[2J")

    monkeypatch.setattr(cli, "run_kit", stops)
    assert cli.main(["--issuer", "https://as.example"]) == 2
    assert capsys.readouterr() == ("", "kavach conformance: no metadata\\nat all\\x1b[2J\n")
