"""``kavach serve --trusted-proxies``: whose ``X-Forwarded-For`` names the client.

Behind a load balancer every connection comes from the balancer, so a per-address limit
(registration, sign-in) would count all clients as one. The balancers named in
``trusted_proxies`` are believed about the client's address; nobody else is, and with none
named (the default) no ``X-Forwarded-For`` is read at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from kavach.settings import SettingsError, resolve
from kavach_serve import serve

LIMITED = "[registration]\nrate_limit = 2\n"
TRUSTING_OTHERS = 'trusted_proxies = ["10.0.0.0/8"]\n' + LIMITED
METADATA = {
    "client_name": "proxy test",
    "redirect_uris": ["http://127.0.0.1:9/cb"],
    "token_endpoint_auth_method": "none",
}


def _register(issuer: str, forwarded_for: str) -> int:
    response = httpx.post(f"{issuer}/register", json=METADATA, headers={"X-Forwarded-For": forwarded_for}, timeout=10)
    return response.status_code


def test_a_trusted_proxy_names_the_client_for_the_per_address_limit(tmp_path: Path) -> None:
    with serve(tmp_path, config_toml=LIMITED, extra_args=["--trusted-proxies", "127.0.0.1"]) as served:
        assert "X-Forwarded-For of:      127.0.0.1" in served.output(), "the banner says whose header is believed"
        assert [_register(served.issuer, "203.0.113.7") for _ in range(3)] == [201, 201, 429]
        assert _register(served.issuer, "203.0.113.8") == 201, "another client behind the proxy has its own count"
        # the proxy appends the peer it saw: the right-most address not a trusted proxy is the client
        assert _register(served.issuer, "198.51.100.1, 203.0.113.7") == 429


def test_a_dual_stack_listener_still_recognises_an_ipv4_proxy(tmp_path: Path) -> None:
    """``--host ::`` sees an IPv4 balancer as ``::ffff:127.0.0.1`` (RFC 4291 §2.5.5.2): it is the
    same proxy, so its X-Forwarded-For still names each client."""
    args = ["--host", "::", "--trusted-proxies", "127.0.0.1"]
    with serve(tmp_path, config_toml=LIMITED, extra_args=args) as served:
        issuer = f"http://127.0.0.1:{served.port}"
        assert [_register(issuer, f"203.0.113.{i}") for i in range(1, 5)] == [201] * 4
        assert _register(issuer, "203.0.113.1") == 201
        assert _register(issuer, "203.0.113.1") == 429


def test_forwarded_allow_ips_adds_the_mapped_form_of_ipv4_entries() -> None:
    from kavach.cli import forwarded_allow_ips

    given = ("10.0.0.5", "10.1.0.0/16", "192.0.2.7/32", "::1", "2001:db8::/32")
    assert forwarded_allow_ips(given) == [
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "10.1.0.0/16",
        "::ffff:10.1.0.0/112",
        "192.0.2.7/32",
        "::ffff:192.0.2.7/128",
        "::1",
        "2001:db8::/32",
    ]


def test_without_trusted_proxies_the_header_is_ignored(tmp_path: Path) -> None:
    with serve(tmp_path, config_toml=LIMITED) as served:
        assert "X-Forwarded-For" not in served.output()
        assert [_register(served.issuer, f"203.0.113.{i}") for i in range(1, 4)] == [201, 201, 429]


def test_a_peer_that_is_not_a_trusted_proxy_cannot_choose_its_address(tmp_path: Path) -> None:
    with serve(tmp_path, config_toml=TRUSTING_OTHERS) as served:
        assert [_register(served.issuer, f"203.0.113.{i}") for i in range(1, 4)] == [201, 201, 429]


@pytest.mark.parametrize(
    ("given", "expect"),
    [("10.0.0.5, 10.1.2.3/16 ::1", ("10.0.0.5", "10.1.0.0/16", "::1")), ("", ()), ("192.0.2.1", ("192.0.2.1",))],
)
def test_trusted_proxies_from_flag_environment_and_file(tmp_path: Path, given: str, expect: tuple[str, ...]) -> None:
    assert resolve({"trusted_proxies": given}, {}).trusted_proxies == expect
    assert resolve({}, {"KAVACH_TRUSTED_PROXIES": given}).trusted_proxies == expect
    toml = tmp_path / "k.toml"
    toml.write_text(f"trusted_proxies = {json.dumps(given.replace(',', ' ').split())}\n")  # a TOML array too
    assert resolve({"config": str(toml)}, {}).trusted_proxies == expect


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ("*", "cannot be '\\*'"),
        ("proxy.internal", "'proxy.internal' is not an IP address"),
        ("10.0.0.0/33", "not an IP address or network"),
    ],
)
def test_bad_trusted_proxies_are_one_clear_error(given: str, expect: str) -> None:
    with pytest.raises(SettingsError, match=expect):
        resolve({"trusted_proxies": given}, {})
    with pytest.raises(SettingsError, match=f"KAVACH_TRUSTED_PROXIES.*{expect}"):
        resolve({}, {"KAVACH_TRUSTED_PROXIES": given})


def test_a_file_value_that_is_not_a_list_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "k.toml"
    toml.write_text("trusted_proxies = 5\n")
    with pytest.raises(SettingsError, match="trusted_proxies must be a list"):
        resolve({"config": str(toml)}, {})
