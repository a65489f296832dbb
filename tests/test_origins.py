"""``kavach serve``'s check of the ``Origin`` of browser pages (MCP 2025-11-25 transports,
"Security Warning"), and the ``allowed_origins`` setting that widens it. The check against a
running server is in ``tests/test_cli.py``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kavach.origins import OriginPolicy, origin_of, require_origin, serialise
from kavach.settings import SettingsError, resolve


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("HTTPS://App.Example.COM:443", "https://app.example.com"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("http://app.example.com:8080", "http://app.example.com:8080"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("null", None),
        ("", None),
        ("file://", None),
        ("ftp://app.example.com", None),
        ("https://app.example.com/", None),
        ("https://app.example.com/x", None),
        ("https://u@app.example.com", None),
        ("https://app.example.com?x", None),
        ("https://app.example.com#x", None),
        ("https://app.example.com?", None),
        ("https://app.example.com#", None),
        ("https://app.example.com:99999", None),
        (" https://app.example.com", None),
        ("https://äpp.example.com", None),
        ("https://", None),
    ],
)
def test_origins_are_compared_in_their_serialisation(given: str, expect: str | None) -> None:
    """RFC 6454 §6.2: scheme and host lower-cased, the default port dropped; anything that is no
    origin (the opaque ``null`` above all) serialises to nothing, so it matches no allowed origin."""
    assert serialise(given) == expect


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("https://AS.example:443/tenant/mcp?x=1", "https://as.example"),
        ("http://127.0.0.1:8000/mcp", "http://127.0.0.1:8000"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("ftp://as.example/x", None),
        ("https://user@as.example/x", None),
    ],
)
def test_the_origin_of_a_url_is_its_scheme_host_and_port_serialised(url: str, expect: str | None) -> None:
    """RFC 6454 §4: a URL's origin is its scheme, host and port; what the issuer and a resource are
    compared by (the Starlette guard answers the server's own paths on a shared origin)."""
    assert origin_of(url) == expect


def test_the_policy_allows_the_issuer_loopback_and_the_named_origins_only() -> None:
    policy = OriginPolicy("https://auth.example.com", ("https://inspector.example",))
    for origin in (
        "https://auth.example.com",
        "https://AUTH.example.com:443",
        "https://inspector.example",
        "http://localhost:6274",
        "https://127.0.0.1",
        "http://[::1]:1",
        "http://127.9.9.9:80",
    ):
        assert policy.allows(origin), origin
    for origin in (
        "http://auth.example.com",
        "https://auth.example.com:8443",
        "https://inspector.example.com",
        "https://evil.example",
        "null",
        "http://127.attacker.example",
        "http://localhost.evil",
        "",
    ):
        assert not policy.allows(origin), origin
    assert OriginPolicy("https://auth.example.com", ("*",)).allows("null")


def _answer(policy: OriginPolicy, headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    reached: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    asyncio.run(require_origin(app, policy)(scope, receive, send))
    body = json.loads(sent[1]["body"])
    assert bool(reached) == (sent[0]["status"] == 200)
    return sent[0]["status"], body


def test_a_refused_origin_never_reaches_the_app() -> None:
    policy = OriginPolicy("http://127.0.0.1:8000")
    assert _answer(policy, [])[0] == 200
    assert _answer(policy, [(b"origin", b"http://localhost:3000")])[0] == 200
    status, body = _answer(policy, [(b"Origin", b"https://evil.example")])
    assert status == 403 and body["error"] == "origin_not_allowed"
    assert "allowed_origins" in body["error_description"], "the refusal names the setting that widens it"
    assert _answer(policy, [(b"origin", b"http://localhost:3000"), (b"origin", b"https://evil.example")])[0] == 403


def test_what_is_no_http_request_reaches_the_app_unchecked() -> None:
    """Only HTTP requests carry an ``Origin`` to check; any other ASGI scope (``lifespan``, which
    has no headers at all) goes to the app as it came."""
    reached: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        raise AssertionError(f"nothing is answered: {message}")

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    asyncio.run(require_origin(app, OriginPolicy("http://127.0.0.1:8000"))(scope, receive, send))
    assert reached == [scope]


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ("https://a.example, HTTP://B.example:8080/", ("https://a.example", "http://b.example:8080")),
        ("", ()),
        ("*", ("*",)),
    ],
)
def test_allowed_origins_from_flag_environment_and_file(tmp_path: Path, given: str, expect: tuple[str, ...]) -> None:
    assert resolve({"allowed_origins": given}, {}).allowed_origins == expect
    assert resolve({}, {"KAVACH_ALLOWED_ORIGINS": given}).allowed_origins == expect
    toml = tmp_path / "k.toml"
    toml.write_text(f"allowed_origins = {json.dumps(given.replace(',', ' ').split())}\n")
    assert resolve({"config": str(toml)}, {}).allowed_origins == expect


@pytest.mark.parametrize("given", ["app.example.com", "https://app.example.com/path", "null", "ws://a.example"])
def test_bad_allowed_origins_are_one_clear_error(given: str) -> None:
    with pytest.raises(SettingsError, match="is not an origin"):
        resolve({"allowed_origins": given}, {})


def test_allowed_origins_of_the_wrong_type_in_a_file_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "k.toml"
    toml.write_text("allowed_origins = 3\n")
    with pytest.raises(SettingsError, match="must be a list of origins"):
        resolve({"config": str(toml)}, {})
