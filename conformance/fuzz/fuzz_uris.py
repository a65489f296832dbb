"""Fuzz target: redirect URIs (kavach_core.redirect_uris, AZ-03, RG-01) and resource indicators
(kavach_core.resource_indicators, AZ-06, RS-05).

``registration_problem``, ``matches`` and ``find_match`` must never raise; ``parse_resource``
raises only ``KavachError``; ``canonical_resource`` raises only ``ValueError`` (its documented
contract; callers turn that into ``invalid_target``), and canonicalising is idempotent.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from kavach_core.redirect_uris import find_match, is_loopback, matches, registration_problem
    from kavach_core.resource_indicators import canonical_resource, metadata_url, parse_resource

from common import expect_kavach_error, run

PREFIXES = ["", "https://", "http://127.0.0.1:", "http://[::1]", "http://localhost", "com.example.app:/", "HTTPS://"]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    first = fdp.PickValueInList(PREFIXES) + fdp.ConsumeUnicode(80)
    second = fdp.PickValueInList(PREFIXES) + fdp.ConsumeUnicode(80)
    registration_problem(first)
    is_loopback(first)
    if matches(first, second) and first != second:
        assert is_loopback(first) and is_loopback(second), (first, second)
    find_match(first, (second, first))
    canonical = expect_kavach_error(parse_resource, first)
    try:
        again = canonical_resource(first)
    except ValueError:
        again = None
    if canonical is not None:
        assert canonical == again, (first, canonical, again)
    if again is not None:
        assert canonical_resource(again) == again, (first, again)
        metadata_url(again)


if __name__ == "__main__":
    run(test_one_input)
