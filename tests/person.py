"""The person in an interop test: a tiny browser that signs in and approves (or denies).

Given an authorization URL, :meth:`Person.authorize` does what someone at a browser does: opens
it, fills whatever sign-in form the server shows (every input of the form is sent, hidden ones
included, so CSRF tokens and tickets travel as a browser would send them), presses Approve on
the consent form, and follows the redirects; the last redirect leaves the authorization server
for the client's redirect URI, which is fetched like a browser would, so the client's own
listener receives the code. The server's pages are parsed generically, not by their markup
details: any ``<form>``, its inputs, and the submit button whose value is the decision.
"""

from __future__ import annotations

import contextlib
from html.parser import HTMLParser
from urllib.parse import urlencode, urljoin, urlsplit

import attrs
import httpx


@attrs.define
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = attrs.Factory(list)
    """Inputs a browser submits as they stand: hidden, text, password, ticked checkboxes."""
    buttons: list[tuple[str, str]] = attrs.Factory(list)
    """Named submit buttons (name, value): only the pressed one is sent."""
    names: set[str] = attrs.Factory(set)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs_}
        if tag == "form":
            self.forms.append(Form(action=a.get("action", ""), method=(a.get("method") or "get").lower()))
            return
        if not self.forms:
            return
        form = self.forms[-1]
        name = a.get("name")
        if tag == "button" and name:
            if a.get("type", "submit").lower() == "submit":
                form.buttons.append((name, a.get("value", "")))
        elif tag == "input" and name:
            kind = a.get("type", "text").lower()
            form.names.add(name)
            if kind in ("submit", "image"):
                form.buttons.append((name, a.get("value", "")))
            elif kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields.append((name, a.get("value", "on")))
            elif kind not in ("button", "reset", "file"):
                form.fields.append((name, a.get("value", "")))


def forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class PersonError(AssertionError):
    """The server showed something a person could not get past; the message says what."""


class Person:
    """One browser (its own cookie jar) of a person with a username and a password."""

    def __init__(self, username: str, password: str, *, timeout: float = 15.0, max_steps: int = 12) -> None:
        self.username = username
        self.password = password
        self.max_steps = max_steps
        self.http = httpx.Client(follow_redirects=False, timeout=timeout)
        self.pages: list[str] = []
        """URL of every page shown, in order (for assertions and failure messages)."""

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Person:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorize(self, url: str, decision: str = "approve", *, form: list[tuple[str, str]] | None = None) -> str:
        """Run the authorization at ``url`` to its end; return the URL the person was finally
        redirected to on the client's side (it carries ``code`` or ``error``), after fetching it.
        With ``form``, the authorization request is those parameters sent to ``url`` by POST, as a
        page of the client's would submit them (OAuth 2.1 §4.1.1)."""
        server = urlsplit(url).netloc
        response = self.http.get(url) if form is None else self.http.post(url, data=dict(form))
        for _ in range(self.max_steps):
            if response.status_code in (301, 302, 303, 307, 308):
                target = urljoin(str(response.url), response.headers["location"])
                if urlsplit(target).netloc != server:
                    # Leaving the authorization server: the client's redirect URI. A browser
                    # would load it, which hands the code to the client's listener.
                    with contextlib.suppress(httpx.HTTPError):
                        self.http.get(target)
                    return target
                response = self.http.get(target)
                continue
            self.pages.append(str(response.url))
            if response.status_code != 200:
                raise PersonError(f"{response.url} answered {response.status_code}: {response.text[:500]}")
            found = [f for f in forms(response.text) if f.method == "post"]
            if not found:
                raise PersonError(f"{response.url} shows no form to continue with: {response.text[:500]}")
            response = self._submit(str(response.url), found[0], decision)
        raise PersonError(f"still on the authorization server after {self.max_steps} pages: {self.pages}")

    def _submit(self, page_url: str, form: Form, decision: str) -> httpx.Response:
        data = list(form.fields)
        if "password" in form.names:
            data = [(k, v) for k, v in data if k not in ("username", "password")]
            data += [("username", self.username), ("password", self.password)]
        signing_in = "password" in form.names  # the sign-in form: its default button (Cancel is a decision)
        pressed = [] if signing_in else [b for b in form.buttons if b[1] == decision]
        if form.buttons and not pressed and not signing_in:
            raise PersonError(f"{page_url}: no {decision!r} button among {form.buttons}")
        data += pressed[:1]
        return self.http.post(
            urljoin(page_url, form.action or page_url),
            content=urlencode(data).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
