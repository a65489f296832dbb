"""The person's step of an authorization: sign in and approve, ending at the client's redirect URI.

:class:`FormPerson` is a generic HTML form filler: it opens the authorization URL, follows
redirects that stay on the authorization server, and on every page submits the first POST form,
putting the username into the text field and the password into the password field, pressing
the approving submit button (or the only one). When the form it put the password in comes back,
the server refused the username or password: :class:`SignInRefused` stops the run, rather than spend
the account's sign-in limit on every later authorization. It stops, without following, at the first
redirect that leaves the server: that Location is the final redirect URL (it carries ``code``
or ``error``). An error page that does not redirect but links to the client's redirect URI (a
server declining to redirect on its own to a URI it does not trust, RFC 9700 §4.11.2) ends the
same way: the person follows that link, and its URL is the final one. A callable
``(authorization_url, redirect_uri) -> final_redirect_url`` may replace it (``--person module:callable``);
one that also has a method ``post(endpoint, params, redirect_uri) -> final_redirect_url`` is given
authorization requests sent by POST too (:func:`person_post`), as the built-in person is.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import attrs
import httpx

from .http import Http, KitError, Stop, origin

PersonStep = Callable[[str, str], str]
PostStep = Callable[[str, list[tuple[str, str]], str], str]
"""``(authorization_endpoint, form_parameters, redirect_uri) -> final_redirect_url``."""


def person_post(person: PersonStep) -> PostStep | None:
    """The person's step for an authorization request sent by POST (OAuth 2.1 §4.1.1), when it has
    one: its ``post`` method. ``None`` for a person that takes URLs only."""
    post = getattr(person, "post", None)
    return post if callable(post) else None


_APPROVE = re.compile(r"approve|allow|accept|authori[sz]e|consent|continue|confirm|yes|grant|sign.?in|log.?in|submit")
_REFUSE = re.compile(r"deny|reject|cancel|abort|refuse|decline|\bno\b|\bdon.?t\b|\bdo not\b")
_USER = re.compile(r"user|login|email|name|account|id", re.IGNORECASE)


class PersonError(KitError):
    """The person could not get past a page; the authorization ended on the server."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SignInRefused(Stop):
    """The built-in person's username and password were refused: every later authorization would
    be refused alike, and each try would count against the account's sign-in limit."""


class UnreadablePage(KitError):
    """A page the built-in person cannot parse: an answer the kit cannot read (the check stops), not
    an authorization that stayed on the server (such a page may send a browser on all the same)."""


@attrs.define
class _Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = attrs.Factory(list)
    text_inputs: list[str] = attrs.Factory(list)
    password_inputs: list[str] = attrs.Factory(list)
    buttons: list[tuple[str | None, str, str]] = attrs.Factory(list)
    """(name, value, label) of each submit control."""


_REFRESH = re.compile(
    r"^\s*(?P<delay>\d*+)(?P<fraction>\.[\d.]*)?\s*[;,]?\s*(?:url\s*=\s*)?(?P<q>['\"]?)(?P<url>[^'\"]+)(?P=q)",
    re.IGNORECASE,
)
"""The delay and URL of ``<meta http-equiv="refresh" content="0; url=...">`` (HTML Living Standard
§4.2.5.3: the delay in whole seconds, a fraction ignored, so ``.5`` is 0)."""
_SCRIPT_NAVIGATION = re.compile(
    r"""(?:window\.|document\.|self\.|top\.)?location(?:\.href)?\s*=\s*(['"])(?P<a>[^'"]+)\1"""
    r"""|location\.(?:replace|assign)\(\s*(['"])(?P<b>[^'"]+)\3\s*\)"""
)
"""The obvious script navigations: ``location = "..."``, ``location.href = ...``, ``location.replace(...)``."""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.links: list[str] = []
        self.navigations: list[tuple[int | None, str]] = []
        """Where the page sends a browser on its own, and after how many seconds: a meta refresh
        (its delay), a script setting the location (``None``: when, or whether, it runs is unknown)."""
        self._button: list[str] | None = None
        self._button_attrs: dict[str, str] = {}
        self._script: list[str] | None = None

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs_}
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            m = _REFRESH.match(a.get("content", ""))
            if m and m.group("url").strip():
                delay = int(m.group("delay") or 0) if m.group("delay") or m.group("fraction") else None
                self.navigations.append((delay, m.group("url").strip()))
        if tag == "script":
            self._script = []
        if tag == "form":
            self.forms.append(_Form(a.get("action", ""), (a.get("method") or "get").lower()))
            return
        if not self.forms:
            return
        form = self.forms[-1]
        name = a.get("name")
        if tag == "button" and a.get("type", "submit").lower() == "submit":
            self._button = []
            self._button_attrs = a
        elif tag == "input":
            kind = a.get("type", "text").lower()
            if kind in ("submit", "image"):
                form.buttons.append((name, a.get("value", ""), a.get("value", "")))
            elif not name:
                return
            elif kind == "password":
                form.password_inputs.append(name)
            elif kind in ("text", "email", "") and not a.get("value"):
                form.text_inputs.append(name)
            elif kind in ("checkbox", "radio"):
                if "checked" in a:
                    form.fields.append((name, a.get("value", "on")))
            elif kind not in ("button", "reset", "file"):
                form.fields.append((name, a.get("value", "")))

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            for m in _SCRIPT_NAVIGATION.finditer("".join(self._script)):
                self.navigations.append((None, m.group("a") or m.group("b")))
            self._script = None
        if tag == "button" and self._button is not None and self.forms:
            a = self._button_attrs
            label = " ".join("".join(self._button).split())
            self.forms[-1].buttons.append((a.get("name") or None, a.get("value", ""), label))
            self._button = None

    def close(self) -> None:
        """The end of the page: a ``<script>`` still open there runs in a browser all the same (and
        Python's parser, before 3.13, keeps its text unread)."""
        super().close()
        if self._script is not None:
            self._script.append(self.rawdata)
            self.handle_endtag("script")


def _parsed(page: httpx.Response) -> _Parser:
    """The page parsed to its end; :class:`UnreadablePage` when Python's parser gives up on it (an
    ``AssertionError`` on ``<![x]>``, which a browser skips as a comment and goes on)."""
    parser = _Parser()
    try:
        parser.feed(page.text)
        parser.close()
    except Exception as exc:
        where = str(page.url).split("?", 1)[0]
        raise UnreadablePage(f"a page the kit cannot parse: {type(exc).__name__}: {exc}: {where}") from None
    return parser


def _link_back(page: httpx.Response, redirect_uri: str) -> str | None:
    """The one link of an error page (4xx) to ``redirect_uri`` (its query may differ), if any."""
    if not 400 <= page.status_code < 500:
        return None
    back = {urljoin(str(page.url), href) for href in _parsed(page).links}
    found = [url for url in back if url.split("?", 1)[0] == redirect_uri.split("?", 1)[0]]
    return found[0] if len(found) == 1 else None


def _navigation(page: httpx.Response, redirect_uri: str) -> str | None:
    """Where a page that is not a redirect still sends the browser on its own, so the person goes
    too: a meta refresh without delay; a later one, or a script setting ``location``, only to
    ``redirect_uri`` or with a ``code`` or ``error``. An error page may refresh to the operator's
    home page after a while, or hold a navigation in a script function it never calls: the kit runs
    no script and does not wait, and a person reads such a page where it is."""
    if "html" not in page.headers.get("content-type", "html"):
        return None
    for delay, target in _parsed(page).navigations:
        url = urljoin(str(page.url), target)
        if delay == 0 or url.startswith(redirect_uri) or _carries_result(url):
            return url
    return None


def _carries_result(url: str) -> bool:
    """Whether ``url`` carries an authorization response: a ``code`` or ``error`` (or a token in its fragment)."""
    return not {"code", "error", "#code", "#error", "#access_token"}.isdisjoint(redirect_params(url))


def _pick_button(form: _Form) -> tuple[str | None, str, str] | None:
    if not form.buttons:
        return None
    for button in form.buttons:
        words = f"{button[1]} {button[2]} {button[0] or ''}".lower()
        if _APPROVE.search(words) and not _REFUSE.search(words):
            return button
    safe = [b for b in form.buttons if not _REFUSE.search(f"{b[1]} {b[2]} {b[0] or ''}".lower())]
    return safe[0] if safe else None


class FormPerson:
    """A person with a username and password, filling whatever forms the server shows."""

    def __init__(self, http: Http, username: str | None, password: str | None, *, max_steps: int = 12) -> None:
        self.http = http
        self.username = username or ""
        self.password = password or ""
        self.max_steps = max_steps
        # One browser: cookies are kept, as a person's browser keeps them. A server may reuse the
        # session of a sign-in for later authorizations (kavach does under https); under http
        # kavach ends it at each redirect back to the client, so every authorization signs in.
        self.jar = self.http.new_client()

    def close(self) -> None:
        self.jar.close()

    def __call__(self, authorization_url: str, redirect_uri: str) -> str:
        response = self.http.request("GET", authorization_url, client=self.jar)
        return self._walk(response, origin(authorization_url), redirect_uri)

    def post(self, endpoint: str, params: list[tuple[str, str]], redirect_uri: str) -> str:
        """The same step for an authorization request sent by POST, form-encoded (OAuth 2.1 §4.1.1,
        OIDC Core §3.1.2.1: the authorization endpoint supports GET and POST)."""
        response = self.http.request("POST", endpoint, data=params, client=self.jar)
        return self._walk(response, origin(endpoint), redirect_uri)

    def _walk(self, response: httpx.Response, server: str, redirect_uri: str) -> str:
        jar = self.jar
        signed: tuple[str, ...] | None = None
        """The form the password went into (where it posts, its fields): shown again, it refused them."""
        for _ in range(self.max_steps):
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                target = urljoin(str(response.url), response.headers["location"])
                if origin(target) != server or target.startswith(redirect_uri):
                    return target
                response = self.http.request("GET", target, client=jar)
                continue
            navigation = _navigation(response, redirect_uri)
            if navigation is not None and (origin(navigation) != server or navigation.startswith(redirect_uri)):
                return navigation  # a page that redirects the browser all the same (AZ-02)
            if response.status_code != 200:
                back = _link_back(response, redirect_uri)
                if back is not None:
                    return back
                raise PersonError(f"{response.url} answered {response.status_code}", response.status_code)
            found = [f for f in _parsed(response).forms if f.method == "post"]
            if not found:
                raise PersonError(f"{response.url} shows no form to submit", response.status_code)
            form, page = found[0], str(response.url)
            if form.password_inputs:
                shape = (urljoin(page, form.action or page), *form.text_inputs, *form.password_inputs)
                if shape == signed:
                    where = page.split("?", 1)[0]
                    raise SignInRefused(
                        f"the sign-in was refused, its form shown again: {where} (check --username and --password)"
                    )
                signed = shape
            response = self._submit(jar, page, form)
        raise PersonError(f"still on the authorization server after {self.max_steps} pages")

    def _submit(self, jar: httpx.Client, page: str, form: _Form) -> httpx.Response:
        data = list(form.fields)
        if form.password_inputs:
            users = [n for n in form.text_inputs if _USER.search(n)] or form.text_inputs[:1]
            data += [(n, self.username) for n in users[:1]]
            data += [(n, self.password) for n in form.password_inputs[:1]]
        button = _pick_button(form)
        if form.buttons and button is None:
            raise PersonError(f"{page}: no approving button among {[b[2] for b in form.buttons]}")
        if button is not None and button[0]:
            data.append((button[0], button[1]))
        return self.http.request("POST", urljoin(page, form.action or page), data=data, client=jar)


def load_callable(spec: str) -> PersonStep:
    """``module:callable`` -> the callable (``--person``); the module may be in the current directory
    (a console script's import path starts with its own folder, not the current one)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise KitError(f"--person wants module:callable, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise KitError(f"--person {spec}: {exc}") from None
    if not callable(target):
        raise KitError(f"{spec} is not callable")
    return target


def redirect_params(url: str) -> dict[str, list[str]]:
    """The query parameters of a final redirect URL (every value, to see repeats)."""
    from urllib.parse import parse_qs

    parts = urlsplit(url)
    out = parse_qs(parts.query, keep_blank_values=True)
    if parts.fragment:
        for key, values in parse_qs(parts.fragment, keep_blank_values=True).items():
            out.setdefault("#" + key, []).extend(values)
    return out
