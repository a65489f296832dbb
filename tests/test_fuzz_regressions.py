"""Inputs the atheris fuzz targets (conformance/fuzz/, docs/fuzzing.md) found, kept as tests."""

from __future__ import annotations

import pytest

from kavach_core.errors import OAuthError
from kavach_core.resource_indicators import canonical_resource, parse_resource


@pytest.mark.parametrize(
    "uri",
    [
        # fuzz_uris.py: urlsplit took "v270.!\x7fo\x7f\x7fD11[v" as the host of this authority, and
        # the "canonical" form it produced no longer parsed (canonicalising was not idempotent).
        "https://]!M1D11[v270.!\x7fo\x7f\x7fD11[v",
        "https://]x[y/mcp",
        "https://[::1/mcp",
        "https://[not-ipv6]/mcp",
        "https://ho\x7fst/mcp",
        "https://hōst.example/mcp",
        "https://a[b]/mcp",
        "https://[::1]x/mcp",
    ],
)
def test_rs_05_az_06_resource_with_a_malformed_host_is_refused(uri: str) -> None:
    """RS-05 / AZ-06: a resource whose authority is not an RFC 3986 host is not a resource URI."""
    with pytest.raises(ValueError):
        canonical_resource(uri)
    with pytest.raises(OAuthError) as caught:
        parse_resource(uri)
    assert caught.value.error == "invalid_target"


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("HTTPS://MCP.Example.COM:443/mcp/", "https://mcp.example.com/mcp"),
        ("http://[::1]:8000/mcp", "http://[::1]:8000/mcp"),
        ("https://[2001:DB8::1]/", "https://[2001:db8::1]"),
        ("https://xn--hst-vna.example/mcp", "https://xn--hst-vna.example/mcp"),
        ("https://mcp.example.com/a-b?x=%201", "https://mcp.example.com/a-b?x=%201"),
    ],
)
def test_rs_05_canonical_resource_is_idempotent(uri: str, canonical: str) -> None:
    assert canonical_resource(uri) == canonical
    assert canonical_resource(canonical) == canonical


@pytest.mark.parametrize("uri", ["https://[::1]x/cb", "https://app.example.com]/cb", "https://a\x7fb.example/cb"])
def test_rg_01_redirect_uri_host_must_be_a_uri_host(uri: str) -> None:
    """Registration applies the same RFC 3986 host rule as resource indicators (RG-01)."""
    from kavach_core.redirect_uris import registration_problem

    assert registration_problem(uri) is not None
