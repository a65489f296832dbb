"""A person step for ``kavach conformance --person conformance_person:step`` (run with tests/ on
PYTHONPATH): the interop tests' own browser (tests/person.py) signing in as the conformance
tests' user and approving. It shows the kit's person step is pluggable. One browser serves every
call, as a person's would. Under an https issuer its session cookie is reused after the first
sign-in; under an http one (``kavach serve``'s default, as in these tests) kavach ends the session
at the redirect back to the client, so every authorization signs in again (and counts toward the
server's ``[sign_in] per_address`` limit)."""

from __future__ import annotations

from person import Person

USER, PASSWORD = "alice", "conformance-pw-1"
_browser: list[Person] = []


def step(authorization_url: str, redirect_uri: str) -> str:
    """Sign in if needed, approve, and return the URL the server finally redirected to."""
    if not _browser:
        _browser.append(Person(USER, PASSWORD))
    return _browser[0].authorize(authorization_url)
