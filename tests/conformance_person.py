"""A person step for ``kavach conformance --person conformance_person:step`` (run with tests/ on
PYTHONPATH): the interop tests' own browser (tests/person.py) signing in as the conformance
tests' user and approving. It shows the kit's person step is pluggable, for authorization
requests sent by GET (a URL) and by POST (``step.post``). One browser serves every call, as a
person's would. Under an https issuer its session cookie is reused after the first sign-in; under
an http one (``kavach serve``'s default, as in these tests) kavach ends the session at the redirect
back to the client, so every authorization signs in again (and counts toward the server's
``[sign_in] per_address`` limit)."""

from __future__ import annotations

from person import Person

USER, PASSWORD = "alice", "conformance-pw-1"


class _Step:
    """``(authorization_url, redirect_uri) -> final URL``, and the same for a POST request."""

    def __init__(self) -> None:
        self.browser: Person | None = None
        self.posts = 0
        """How many authorization requests came by POST (the kit's tests read it)."""

    def _person(self) -> Person:
        if self.browser is None:
            self.browser = Person(USER, PASSWORD)
        return self.browser

    def __call__(self, authorization_url: str, redirect_uri: str) -> str:
        """Sign in if needed, approve, and return the URL the server finally redirected to."""
        return self._person().authorize(authorization_url)

    def post(self, endpoint: str, params: list[tuple[str, str]], redirect_uri: str) -> str:
        """The same, for the authorization request ``params`` sent to ``endpoint`` by POST."""
        self.posts += 1
        return self._person().authorize(endpoint, form=params)


step = _Step()
